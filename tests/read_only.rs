//! Read-only opens (`store.read_only = true`): every engine's store opens
//! and reads as it is, changes no file (not after a clean close, not after
//! a crash that left a torn tail, not with retention due), refuses every
//! change with `Unsupported`, and shares the directory lock with other
//! readers but never with a writer.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use mqstore::{Config, Record, Status, Store};

mod common;
use common::{copy_dir, local_engines as engines, segment_files, values_of};

fn config(engine: &str, read_only: bool) -> Config {
    Config::from_toml_str(&format!(
        "[store]\nread_only = {read_only}\n[shard]\nengine = \"{engine}\"\ndurability = \"fsync\"\n\
         [journal]\nsegment_bytes = 1048576\n"
    ))
    .unwrap()
}

/// Every file under `dir`: its bytes and modification time. Two equal
/// snapshots mean nothing was created, removed, written or truncated.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, i64, i64)> {
    let mut out = BTreeMap::new();
    for item in std::fs::read_dir(dir).unwrap() {
        let item = item.unwrap();
        let meta = item.metadata().unwrap();
        if meta.is_dir() {
            out.extend(snapshot(&item.path()));
        } else {
            let bytes = std::fs::read(item.path()).unwrap();
            out.insert(item.path(), (bytes, meta.mtime(), meta.mtime_nsec()));
        }
    }
    out
}

fn assert_unchanged(before: &BTreeMap<PathBuf, (Vec<u8>, i64, i64)>, dir: &Path, engine: &str) {
    let after = snapshot(dir);
    let names = |s: &BTreeMap<PathBuf, (Vec<u8>, i64, i64)>| s.keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        names(before),
        names(&after),
        "{engine}: files appeared or vanished"
    );
    for (path, (bytes, secs, nanos)) in before {
        let (now, now_secs, now_nanos) = &after[path];
        let first_change = bytes.iter().zip(now).position(|(a, b)| a != b);
        assert!(
            first_change.is_none() && bytes.len() == now.len(),
            "{engine}: '{}' was written: {} bytes, now {}, first change at byte {first_change:?}",
            path.display(),
            bytes.len(),
            now.len()
        );
        assert_eq!(
            (secs, nanos),
            (now_secs, now_nanos),
            "{engine}: '{}' was touched",
            path.display()
        );
    }
}

fn values(count: usize, tag: &str) -> Vec<String> {
    (0..count)
        .map(|i| format!("{tag}-{i:04}-{}", "v".repeat(100)))
        .collect()
}

fn append(store: &Store, shard: &str, values: &[String], timestamp_ms: Option<i64>) {
    for chunk in values.chunks(10) {
        let records: Vec<Record<'_>> = chunk
            .iter()
            .map(|v| {
                let mut record = Record::new(v.as_bytes()).with_key(&v.as_bytes()[..6]);
                if let Some(ts) = timestamp_ms {
                    record.timestamp_ms = ts;
                }
                record
            })
            .collect();
        store.append_batch(shard, &records).unwrap();
    }
}

/// A store of `engine` closed cleanly: a shard with a mid-batch delete and
/// a group offset, and a shard whose age retention is long overdue.
fn build(dir: &Path, engine: &str) -> Vec<(i64, Vec<u8>)> {
    let store = Store::open(dir, config(engine, false)).unwrap();
    store.create_shard("orders", None).unwrap();
    append(&store, "orders", &values(200, "order"), None);
    store.delete_records_before("orders", 35).unwrap();
    store.commit_offset("billing", "orders", 120).unwrap();
    store
        .create_shard("aged", Some("retention_ms = 60000"))
        .unwrap();
    append(&store, "aged", &values(30, "aged"), Some(1_000));
    let kept = values_of(&store, "orders");
    store.close().unwrap();
    kept
}

fn expect_unsupported<T: std::fmt::Debug>(result: mqstore::Result<T>, what: &str) {
    let error = result.expect_err(what);
    assert_eq!(error.status(), Status::Unsupported, "{what}: {error}");
    assert!(error.to_string().contains("read-only"), "{what}: {error}");
}

#[test]
fn a_read_only_open_reads_everything_and_changes_no_file() {
    for engine in engines() {
        let dir = tempfile::tempdir().unwrap();
        let kept = build(dir.path(), engine);
        let before = snapshot(dir.path());

        let store = Store::open(dir.path(), config(engine, true)).unwrap();
        assert_eq!(store.list_shards().unwrap(), ["aged", "orders"], "{engine}");
        assert_eq!(values_of(&store, "orders"), kept, "{engine}");
        let info = store.shard_info("orders").unwrap();
        assert_eq!((info.first_offset, info.next_offset), (35, 200), "{engine}");
        assert_eq!(
            store.committed_offset("billing", "orders").unwrap(),
            Some(120)
        );
        let keyed = store.read_by_keys("orders", &[b"order-"], 1000).unwrap();
        assert_eq!(keyed.len(), kept.len(), "{engine}");
        let plan = store.plan_transfer("orders", 35, 1 << 20).unwrap();
        assert_eq!(plan.next_offset(), 200, "{engine}");
        store.stats().unwrap();

        let record = Record::new(b"x");
        expect_unsupported(store.append("orders", &record), "append");
        expect_unsupported(
            store.append_batch_nowait("orders", std::slice::from_ref(&record)),
            "nowait",
        );
        expect_unsupported(store.create_shard("new", None), "create_shard");
        expect_unsupported(store.delete_shard("orders"), "delete_shard");
        expect_unsupported(store.delete_records_before("orders", 50), "delete_before");
        expect_unsupported(
            store.delete_by_keys("orders", &[b"order-"]),
            "delete_by_keys",
        );
        expect_unsupported(
            store.delete_by_offsets("orders", &[40]),
            "delete_by_offsets",
        );
        expect_unsupported(
            store.commit_offset("billing", "orders", 150),
            "commit_offset",
        );
        expect_unsupported(store.delete_group("billing"), "delete_group");
        // An unknown shard is still reported as such first.
        assert_eq!(
            store.shard_info("missing").unwrap_err().status(),
            Status::ShardNotFound
        );
        store.close().unwrap();
        assert_unchanged(&before, dir.path(), engine);

        // A writer then finds the store as it was, and applies retention.
        let store = Store::open(dir.path(), config(engine, false)).unwrap();
        assert_eq!(values_of(&store, "orders"), kept, "{engine}");
        assert_eq!(store.shard_info("aged").unwrap().records, 0, "{engine}");
        store.close().unwrap();
    }
}

#[test]
fn readers_share_a_store_and_exclude_writers() {
    for engine in engines() {
        let dir = tempfile::tempdir().unwrap();
        build(dir.path(), engine);
        let first = Store::open(dir.path(), config(engine, true)).unwrap();
        let second = Store::open(dir.path(), config(engine, true)).unwrap();
        assert_eq!(values_of(&first, "orders"), values_of(&second, "orders"));
        let writer = Store::open(dir.path(), config(engine, false)).unwrap_err();
        assert_eq!(writer.status(), Status::Locked, "{engine}: {writer}");
        first.close().unwrap();
        second.close().unwrap();

        let writer = Store::open(dir.path(), config(engine, false)).unwrap();
        let reader = Store::open(dir.path(), config(engine, true)).unwrap_err();
        assert_eq!(reader.status(), Status::Locked, "{engine}: {reader}");
        writer.close().unwrap();
    }
}

#[test]
fn a_read_only_open_creates_no_store() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothing-here");
    let error = Store::open(&missing, config("journal", true)).unwrap_err();
    assert_eq!(error.status(), Status::InvalidArgument, "{error}");
    assert!(error.to_string().contains("not a store"), "{error}");
    assert!(!missing.exists());
    let error = Store::open(dir.path(), config("journal", true)).unwrap_err();
    assert_eq!(error.status(), Status::InvalidArgument, "{error}");
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
}

fn truncated_bytes(store: &Store, shard: &str, engine: &str) -> u64 {
    let key = if engine == "journal" {
        "journal"
    } else {
        "engine"
    };
    store.shard_stats(shard).unwrap()["engine_stats"][key]["truncated_bytes"]
        .as_u64()
        .unwrap()
}

/// Overwrites the last `len` bytes of data in `file` (before its zeroed,
/// preallocated end) with garbage: what a torn write leaves.
fn tear(file: &Path, len: usize) {
    let mut bytes = std::fs::read(file).unwrap();
    let end = bytes.iter().rposition(|&b| b != 0).unwrap() + 1;
    bytes[end - len..end].fill(0xAB);
    std::fs::write(file, bytes).unwrap();
}

/// A crash image with a torn last write: the reader leaves the tail where
/// it is and reads what precedes it; the writer's open then cuts it.
#[test]
fn a_torn_tail_is_left_in_place_by_a_reader() {
    let engines: Vec<&str> = engines().into_iter().filter(|e| *e != "rocksdb").collect();
    for engine in engines {
        let dir = tempfile::tempdir().unwrap();
        let crashed = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), config(engine, false)).unwrap();
        store.create_shard("s", None).unwrap();
        append(&store, "s", &values(100, "rec"), None);
        copy_dir(dir.path(), crashed.path());
        store.close().unwrap();
        let last = if engine == "journal" {
            segment_files(crashed.path()).pop().unwrap()
        } else {
            let shard_dir = std::fs::read_dir(crashed.path().join("file"))
                .unwrap()
                .map(|e| e.unwrap().path())
                .find(|p| p.is_dir())
                .unwrap();
            let mut logs: Vec<PathBuf> = std::fs::read_dir(shard_dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "log"))
                .collect();
            logs.sort();
            logs.pop().unwrap()
        };
        tear(&last, 100);
        let before = snapshot(crashed.path());

        let reader = Store::open(crashed.path(), config(engine, true)).unwrap();
        assert!(truncated_bytes(&reader, "s", engine) > 0, "{engine}");
        let read = values_of(&reader, "s");
        assert_eq!(read.len(), 90, "{engine}: the torn last batch is not read");
        reader.close().unwrap();
        assert_unchanged(&before, crashed.path(), engine);

        let writer = Store::open(crashed.path(), config(engine, false)).unwrap();
        assert_eq!(values_of(&writer, "s"), read, "{engine}");
        writer.close().unwrap();
        assert_ne!(
            std::fs::read(&last).unwrap(),
            before[&last].0,
            "{engine}: cut"
        );
    }
}
