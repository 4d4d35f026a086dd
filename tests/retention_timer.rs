//! The store's retention timer frees the space of shards nobody uses:
//! their expired batches go (and with them journal segments and file
//! segments) without any call touching the shard. The tests only look at
//! the directory, which does not apply retention.

use std::path::Path;
use std::time::{Duration, Instant};

use mqstore::{Record, Store};

/// Files under `dir` (recursively) whose name ends in `suffix`.
fn count_files(dir: &Path, suffix: &str) -> usize {
    let Ok(items) = std::fs::read_dir(dir) else {
        return 0;
    };
    items
        .flatten()
        .map(|item| {
            let path = item.path();
            if path.is_dir() {
                count_files(&path, suffix)
            } else {
                usize::from(path.to_string_lossy().ends_with(suffix))
            }
        })
        .sum()
}

/// Polls `condition` until it holds; fails after 20 s (the timer runs
/// every 10 ms in these tests).
fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Fills shard "idle" (age retention of `retention_ms`) with 1 MiB in
/// 16 KiB records; returns the store.
fn fill_idle_shard(dir: &Path, config: &str, retention_ms: u64) -> Store {
    let store = Store::open_with_toml(dir, Some(config)).unwrap();
    store
        .create_shard("idle", Some(&format!("retention_ms = {retention_ms}")))
        .unwrap();
    let value = vec![7u8; 16 << 10];
    for _ in 0..64 {
        store.append("idle", &Record::new(&value)).unwrap();
    }
    store
}

#[test]
fn an_idle_file_shard_loses_its_expired_segments() {
    let dir = tempfile::tempdir().unwrap();
    let config = "[store]\nretention_check_ms = 10\n\
                  [shard]\nengine = \"file\"\ndurability = \"os\"\nsegment_bytes = 65536\n";
    // Long enough that appends, which apply retention too, leave most
    // segments to the timer even on a loaded machine.
    let store = fill_idle_shard(dir.path(), config, 2000);
    let before = count_files(dir.path(), ".log");
    assert!(before >= 3, "{before} segments");
    wait_until("the expired segments are removed", || {
        count_files(dir.path(), ".log") <= 1
    });
    let info = store.shard_info("idle").unwrap();
    assert_eq!(info.records, 0);
    assert_eq!(info.first_offset, 64);
    assert!(
        store.stats().unwrap()["retention"]["passes"]
            .as_u64()
            .unwrap()
            > 0
    );
}

#[test]
fn an_idle_journal_shard_frees_the_journal_segments_it_pinned() {
    let dir = tempfile::tempdir().unwrap();
    let config = "[store]\nretention_check_ms = 10\n\
                  [shard]\nengine = \"journal\"\ndurability = \"os\"\n\
                  [journal]\nsegment_bytes = 65536\n";
    let store = fill_idle_shard(dir.path(), config, 2000);
    let before = count_files(dir.path(), ".log");
    assert!(before >= 4, "{before} segments");
    wait_until("the journal frees the idle shard's segments", || {
        count_files(dir.path(), ".log") <= 2
    });
    // The segments go with the older batches; the newest expire a little
    // later, as long after them as the fill took.
    wait_until("every batch has expired", || {
        store.shard_info("idle").unwrap().records == 0
    });
}

#[test]
fn shards_recovered_with_age_retention_are_watched_again() {
    let dir = tempfile::tempdir().unwrap();
    let config = "[store]\nretention_check_ms = 10\n\
                  [shard]\nengine = \"file\"\ndurability = \"os\"\nsegment_bytes = 65536\n";
    // A day of retention now; the reopened store's timer finds nothing to
    // do but must watch the shard.
    fill_idle_shard(dir.path(), config, 86_400_000)
        .close()
        .unwrap();
    let store = Store::open_with_toml(dir.path(), Some(config)).unwrap();
    let stats = store.stats().unwrap();
    assert_eq!(stats["retention"]["watched_shards"], 1);
    assert_eq!(stats["retention"]["running"], true);
    store.delete_shard("idle").unwrap();
    assert_eq!(store.stats().unwrap()["retention"]["watched_shards"], 0);
}

#[test]
fn a_bad_check_interval_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err =
        Store::open_with_toml(dir.path(), Some("[store]\nretention_check_ms = 5\n")).unwrap_err();
    assert_eq!(err.status(), mqstore::Status::InvalidConfig);
    assert!(
        err.to_string().contains("store.retention_check_ms"),
        "{err}"
    );
}
