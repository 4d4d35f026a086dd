//! Appends racing a close: an append either completes before close's final
//! flush (and is durable and present after reopening) or fails with
//! `Closed`; nothing reaches the files after the CLEAN marker.

use std::path::Path;
use std::sync::{Arc, Barrier};

use super::{FileEngine, FileShard};
use crate::config::{Durability, EngineKind, FileConfig, ShardOptions};
use crate::engine::{Engine, ReadLimits, Shard};
use crate::record::Record;
use crate::Status;

fn options(durability: Durability) -> ShardOptions {
    ShardOptions {
        engine: EngineKind::File,
        durability,
        ..ShardOptions::default()
    }
}

fn engine(dir: &Path) -> Arc<FileEngine> {
    Arc::new(FileEngine::new(dir, FileConfig::default()))
}

/// The values of shard `name` after reopening the store in `dir`.
fn values_after_reopen(dir: &Path, name: &str) -> Vec<Vec<u8>> {
    let engine = engine(dir);
    let recovered = engine.recover().unwrap();
    let (_, _, shard) = recovered.iter().find(|(n, _, _)| n == name).unwrap();
    let limits = ReadLimits {
        max_records: usize::MAX,
        max_bytes: usize::MAX,
    };
    let values = shard.read(0, limits).unwrap().records;
    engine.close().unwrap();
    values.iter().map(|r| r.value_bytes().to_vec()).collect()
}

fn log_len(shard: &FileShard) -> u64 {
    std::fs::metadata(shard.dir.join(super::segment::log_name(0)))
        .unwrap()
        .len()
}

/// A caller that looked the shard up before close (as `Store` does)
/// appends after it: refused, and nothing lands after the CLEAN marker.
#[test]
fn an_append_after_close_is_refused() {
    for durability in [Durability::None, Durability::Os, Durability::Fsync] {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine(dir.path());
        let shard = engine.create_shard("s", &options(durability)).unwrap();
        let file_shard = engine.find("s").unwrap();
        shard.append(&[Record::new(b"before")]).unwrap();
        engine.close().unwrap();
        let len = log_len(&file_shard);

        let err = shard.append(&[Record::new(b"late")]).unwrap_err();
        assert_eq!(err.status(), Status::Closed, "{durability:?}: {err}");
        let err = shard.delete_records_before(1).unwrap_err();
        assert_eq!(err.status(), Status::Closed, "{durability:?}: {err}");
        assert_eq!(log_len(&file_shard), len, "{durability:?}");
        assert_eq!(
            file_shard.stats().unwrap()["file_open"],
            false,
            "{durability:?}"
        );
        assert_eq!(
            values_after_reopen(dir.path(), "s"),
            [b"before".to_vec()],
            "{durability:?}"
        );
    }
}

/// An append that wrote its batch before close began and waits for its
/// fdatasync when close runs: close's final flush covers it, so it returns
/// success without reopening the closed file, and the batch survives.
#[test]
fn an_append_in_flight_at_close_completes_before_the_marker() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let shard = engine
        .create_shard("s", &options(Durability::Fsync))
        .unwrap();
    let file_shard = engine.find("s").unwrap();
    let parked = Arc::new(Barrier::new(2));
    let resume = Arc::new(Barrier::new(2));
    let (p, r) = (parked.clone(), resume.clone());
    *file_shard.before_sync.lock() = Some(Box::new(move || {
        p.wait();
        r.wait();
    }));
    let appender = std::thread::spawn(move || shard.append(&[Record::new(b"in flight")]));
    parked.wait();
    engine.close().unwrap();
    resume.wait();
    assert_eq!(appender.join().unwrap().unwrap(), 0);
    assert_eq!(file_shard.stats().unwrap()["file_open"], false);
    assert_eq!(
        values_after_reopen(dir.path(), "s"),
        [b"in flight".to_vec()]
    );
}

/// A creation that reaches the engine after its close (a `create_shard`
/// racing `Store::close`) is refused and leaves no shard behind the CLEAN
/// marker.
#[test]
fn a_shard_created_after_close_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    engine
        .create_shard("s", &options(Durability::Fsync))
        .unwrap();
    engine.close().unwrap();
    let Err(err) = engine.create_shard("late", &options(Durability::Fsync)) else {
        panic!("a closed engine created a shard");
    };
    assert_eq!(err.status(), Status::Closed, "{err}");
    drop(engine);
    let reopened = FileEngine::new(dir.path(), FileConfig::default());
    let recovered = reopened.recover().unwrap();
    let names: Vec<&str> = recovered.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(names, ["s"]);
}
