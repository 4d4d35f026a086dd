//! Fault injection through the writer's `FileOps` seam: a failed write or
//! fdatasync poisons the journal for good.

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use super::{FileOps, JournalEngine};
use crate::config::{Durability, EngineKind, JournalConfig, ShardOptions};
use crate::engine::{Engine, ReadLimits};
use crate::record::Record;
use crate::Status;

const OK: u8 = 0;
const FAIL_WRITE: u8 = 1;
const FAIL_SYNC: u8 = 2;

#[derive(Default)]
struct Faulty(AtomicU8);

impl FileOps for Faulty {
    fn write_at(&self, file: &File, buf: &[u8], pos: u64) -> io::Result<()> {
        if self.0.load(Ordering::SeqCst) == FAIL_WRITE {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        std::os::unix::fs::FileExt::write_all_at(file, buf, pos)
    }

    fn sync_data(&self, file: &File) -> io::Result<()> {
        if self.0.load(Ordering::SeqCst) == FAIL_SYNC {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        file.sync_data()
    }
}

fn options(durability: Durability) -> ShardOptions {
    ShardOptions {
        engine: EngineKind::Journal,
        durability,
        ..ShardOptions::default()
    }
}

fn config() -> JournalConfig {
    JournalConfig {
        segment_bytes: 1 << 20,
        ..JournalConfig::default()
    }
}

fn poisons_on(mode: u8, durability: Durability) {
    let dir = tempfile::tempdir().unwrap();
    let ops = Arc::new(Faulty::default());
    let engine = JournalEngine::with_ops(dir.path(), config(), ops.clone());
    let shard = engine.create_shard("s", &options(durability)).unwrap();
    let other = engine
        .create_shard("t", &options(Durability::Fsync))
        .unwrap();
    assert_eq!(shard.append(&[Record::new(b"before")]).unwrap(), 0);
    ops.0.store(mode, Ordering::SeqCst);
    // Durability os never syncs by itself: let an fsync shard hit the fault.
    let failing = if mode == FAIL_SYNC && durability != Durability::Fsync {
        &other
    } else {
        &shard
    };
    let err = failing.append(&[Record::new(b"lost")]).unwrap_err();
    assert_eq!(err.status(), Status::Poisoned, "{err}");
    let cause = if mode == FAIL_SYNC {
        "fdatasync"
    } else {
        "writing"
    };
    assert!(err.to_string().contains(cause), "{err}");
    // The disk "recovers": nothing is retried, everything stays refused.
    ops.0.store(OK, Ordering::SeqCst);
    for target in [&shard, &other] {
        let err = target.append(&[Record::new(b"after")]).unwrap_err();
        assert_eq!(err.status(), Status::Poisoned);
    }
    let Err(err) = engine.create_shard("u", &options(Durability::Os)) else {
        panic!("a poisoned journal created a shard");
    };
    assert_eq!(err.status(), Status::Poisoned);
    assert_eq!(engine.close().unwrap_err().status(), Status::Poisoned);
    drop((shard, other, engine));

    // What was acknowledged before the failure is there after reopening.
    let engine = JournalEngine::new(dir.path(), config());
    let shards = engine.recover().unwrap();
    let (_, _, s) = shards.iter().find(|(n, _, _)| n == "s").unwrap();
    let limits = ReadLimits {
        max_records: 10,
        max_bytes: usize::MAX,
    };
    let r = s.read(0, limits).unwrap();
    assert_eq!(&r.records[0].value[..], b"before");
    assert!(r.records.iter().all(|r| &r.value[..] != b"after"));
}

#[test]
fn failed_fsync_poisons() {
    poisons_on(FAIL_SYNC, Durability::Fsync);
    poisons_on(FAIL_SYNC, Durability::Os);
}

#[test]
fn failed_write_poisons() {
    poisons_on(FAIL_WRITE, Durability::Fsync);
    poisons_on(FAIL_WRITE, Durability::Os);
}

#[test]
fn recovery_of_an_empty_journal_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join(super::JOURNAL_DIR)).unwrap();
    let engine = JournalEngine::new(dir.path(), config());
    assert!(engine.recover().unwrap().is_empty());
    let shard = engine
        .create_shard("s", &options(Durability::Fsync))
        .unwrap();
    assert_eq!(shard.append(&[Record::new(b"x")]).unwrap(), 0);
    engine.close().unwrap();
}
