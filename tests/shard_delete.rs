//! Deleting a shard is all or nothing: when the deletion fails the shard
//! is still there, now and after a restart; when it succeeds it is gone for
//! good, its consumer-group offsets with it.

use std::path::Path;

use mqstore::{Config, Record, Status, Store};

mod common;

fn config(engine: &str) -> Config {
    Config::from_toml_str(&format!(
        "[shard]\nengine = \"{engine}\"\ndurability = \"fsync\"\n"
    ))
    .unwrap()
}

fn values(store: &Store, shard: &str) -> Vec<Vec<u8>> {
    store
        .read(shard, 0, usize::MAX, usize::MAX)
        .unwrap()
        .records
        .iter()
        .map(|r| r.value_bytes().to_vec())
        .collect()
}

/// The shard is listed, readable and appendable.
fn assert_whole(store: &Store, shard: &str, expected: &[&[u8]]) {
    assert_eq!(store.list_shards().unwrap(), [shard]);
    let got = values(store, shard);
    assert_eq!(got, expected, "{shard}");
}

#[test]
fn a_file_shard_whose_files_cannot_be_removed_stays_whole() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config("file")).unwrap();
    store.create_shard("s", None).unwrap();
    store.append("s", &Record::new(b"kept")).unwrap();
    // The directory a deletion renames the shard to is taken (and not
    // empty), so the rename fails before anything changed.
    let shard_dir = std::fs::read_dir(dir.path().join("file"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .unwrap();
    let taken = shard_dir.with_extension("deleted");
    std::fs::create_dir(&taken).unwrap();
    std::fs::write(taken.join("occupied"), b"x").unwrap();

    let err = store.delete_shard("s").unwrap_err();
    assert_eq!(err.status(), Status::Io, "{err}");
    assert_whole(&store, "s", &[b"kept"]);
    store.append("s", &Record::new(b"after")).unwrap();
    store.close().unwrap();
    drop(store);

    std::fs::remove_dir_all(&taken).unwrap();
    let store = Store::open(dir.path(), config("file")).unwrap();
    assert_whole(&store, "s", &[b"kept", b"after"]);
    store.delete_shard("s").unwrap();
    assert!(store.list_shards().unwrap().is_empty());
}

/// A shard's offsets go with it (the engines keep them with the shard): a
/// new shard of its name starts without them, also after a restart and
/// after a crash.
#[test]
fn a_deleted_shards_offsets_never_reach_a_new_shard_of_its_name() {
    for engine in ["journal", "file"] {
        deleted_offsets_stay_deleted(engine);
    }
}

fn deleted_offsets_stay_deleted(engine: &str) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config(engine)).unwrap();
    store.create_shard("s", None).unwrap();
    store.commit_offset("g", "s", 1).unwrap();
    store.delete_shard("s").unwrap();
    store.create_shard("s", None).unwrap();
    assert_eq!(store.committed_offset("g", "s").unwrap(), None);
    let image = common::crash_copy(dir.path());
    store.close().unwrap();
    drop(store);
    for dir in [dir.path(), image.path()] {
        let store = Store::open(dir, config(engine)).unwrap();
        assert_eq!(store.committed_offset("g", "s").unwrap(), None, "{engine}");
        assert!(store.list_shards().unwrap() == ["s"], "{engine}");
    }
}

/// A deletion that succeeded does not come back after a restart.
#[test]
fn a_deleted_shard_stays_deleted_after_reopen() {
    for engine in ["journal", "file"] {
        let dir = tempfile::tempdir().unwrap();
        reopen_after(dir.path(), engine, |store| {
            store.create_shard("gone", None).unwrap();
            store.create_shard("kept", None).unwrap();
            store.append("gone", &Record::new(b"x")).unwrap();
            store.append("kept", &Record::new(b"y")).unwrap();
            store.delete_shard("gone").unwrap();
        });
        let store = Store::open(dir.path(), config(engine)).unwrap();
        assert_whole(&store, "kept", &[b"y"]);
    }
}

fn reopen_after(dir: &Path, engine: &str, work: impl FnOnce(&Store)) {
    let store = Store::open(dir, config(engine)).unwrap();
    work(&store);
    store.close().unwrap();
}
