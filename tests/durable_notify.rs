//! Durability notifications (`append_batch_notify`, `watch_durable`,
//! `durable_fd`, `poll_durable`): one thread keeps thousands of batches in
//! flight and learns of their acknowledgements through the eventfd, in
//! order, on every engine.

use std::os::fd::RawFd;

use mqstore::{Config, Record, Status, Store};

/// Blocks until `fd` is readable (or `timeout_ms` passes; -1 = forever).
fn readable(fd: RawFd, timeout_ms: i32) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    assert!(n >= 0, "poll: {}", std::io::Error::last_os_error());
    n == 1 && pfd.revents & libc::POLLIN != 0
}

/// The tests run one at a time: one of them counts the process's threads.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The process's threads, without the kernel's io_uring workers (iou-*),
/// which the kernel starts and stops as it sees fit.
fn threads() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .filter(|name| !name.starts_with("iou-"))
        .collect()
}

/// Appends `batches` batches to `shard` without waiting, then runs an event
/// loop until every one is acknowledged; returns (token, offset) in the
/// order the completions arrived.
fn event_loop(store: &Store, shard: &str, batches: u64) -> Vec<(u64, i64)> {
    let fd = store.durable_fd().unwrap();
    let values: Vec<Vec<u8>> = (0..4).map(|i| vec![b'a' + i; 100]).collect();
    let records: Vec<Record<'_>> = values.iter().map(|v| Record::new(v)).collect();
    let mut bases = Vec::new();
    for token in 0..batches {
        bases.push(store.append_batch_notify(shard, &records, token).unwrap());
    }
    let mut seen = Vec::new();
    while (seen.len() as u64) < batches {
        assert!(readable(fd, 60_000), "no completion within a minute");
        let completions = store.poll_durable(256);
        assert!(!completions.is_empty(), "readable with nothing to poll");
        for c in completions {
            c.result.unwrap();
            assert_eq!(bases[c.token as usize], c.offset);
            seen.push((c.token, c.offset));
        }
    }
    // Everything polled: the descriptor is no longer readable.
    assert!(!readable(fd, 0));
    assert!(store.poll_durable(16).is_empty());
    seen
}

fn assert_in_order(seen: &[(u64, i64)], batches: u64) {
    let tokens: Vec<u64> = seen.iter().map(|(t, _)| *t).collect();
    assert_eq!(tokens, (0..batches).collect::<Vec<_>>());
    assert!(seen.windows(2).all(|w| w[0].1 + 4 == w[1].1));
}

#[test]
fn thousands_of_journal_batches_in_flight_are_acknowledged_in_order() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Config::default()).unwrap();
    store.create_shard("s", None).unwrap(); // journal, fsync
    store.append("s", &Record::new(b"warm")).unwrap();
    let before = threads();
    let seen = event_loop(&store, "s", 5000);
    assert_in_order(&seen, 5000);
    // No thread per batch: the notifier and the journal's two flushers.
    let after = threads();
    assert!(after.len() <= before.len() + 3, "{before:?} -> {after:?}");
    let fsyncs = store.shard_stats("s").unwrap()["engine_stats"]["journal"]["fdatasyncs"]
        .as_u64()
        .unwrap();
    assert!(
        fsyncs < 5000,
        "group commit: {fsyncs} fdatasyncs for 5000 batches"
    );
    store.close().unwrap();
    // Acknowledged means durable: all there after a reopen.
    let store = Store::open(dir.path(), Config::default()).unwrap();
    assert_eq!(store.shard_info("s").unwrap().next_offset, 1 + 5000 * 4);
    store.close().unwrap();
}

#[test]
fn memory_file_and_rocksdb_engines_complete_in_order_too() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Config::default()).unwrap();
    store
        .create_shard("m", Some("engine = \"memory\""))
        .unwrap();
    store
        .create_shard("f", Some("engine = \"file\"\ndurability = \"fsync\""))
        .unwrap();
    assert_in_order(&event_loop(&store, "m", 2000), 2000);
    assert_in_order(&event_loop(&store, "f", 500), 500);
    if mqstore::EngineKind::Rocksdb.is_available() {
        store
            .create_shard("r", Some("engine = \"rocksdb\"\ndurability = \"fsync\""))
            .unwrap();
        assert_in_order(&event_loop(&store, "r", 500), 500);
        let stats = store.shard_stats("r").unwrap();
        let syncs = stats["engine_stats"]["rocksdb"]["wal_syncs"]
            .as_u64()
            .unwrap();
        assert!(
            syncs > 0,
            "pipelined fsync appends are acknowledged by WAL syncs"
        );
    }
    store.close().unwrap();
}

/// Watches across shards complete in the order they were made, and
/// `watch_durable` acknowledges offsets appended by other calls.
#[test]
fn watches_complete_in_watch_order_across_shards() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Config::default()).unwrap();
    store.create_shard("a", None).unwrap();
    store
        .create_shard("b", Some("durability = \"os\""))
        .unwrap();
    let fd = store.durable_fd().unwrap();
    let mut expected = Vec::new();
    for i in 0..300u64 {
        let shard = if i % 3 == 0 { "b" } else { "a" };
        let offset = store
            .append_batch_nowait(shard, &[Record::new(b"x")])
            .unwrap();
        store.watch_durable(shard, offset, i).unwrap();
        expected.push((i, offset));
    }
    let mut seen = Vec::new();
    while seen.len() < expected.len() {
        assert!(readable(fd, 60_000));
        seen.extend(store.poll_durable(7).into_iter().map(|c| {
            c.result.unwrap();
            (c.token, c.offset)
        }));
    }
    assert_eq!(seen, expected);
    store.close().unwrap();
}

#[test]
fn bad_watches_fail_at_once() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Config::default()).unwrap();
    store.create_shard("s", None).unwrap();
    store.append("s", &Record::new(b"x")).unwrap();
    let status = |r: mqstore::Result<()>| r.unwrap_err().status();
    assert_eq!(
        status(store.watch_durable("nope", 0, 1)),
        Status::ShardNotFound
    );
    assert_eq!(
        status(store.watch_durable("s", 1, 1)),
        Status::OffsetOutOfRange
    );
    assert_eq!(
        status(store.watch_durable("s", -1, 1)),
        Status::OffsetOutOfRange
    );
    let err = store.append_batch_notify("s", &[], 1).unwrap_err();
    assert_eq!(err.status(), Status::InvalidArgument);
    assert!(store.poll_durable(8).is_empty());
    store.close().unwrap();
    assert_eq!(status(store.watch_durable("s", 0, 1)), Status::Closed);
    assert_eq!(store.durable_fd().unwrap_err().status(), Status::Closed);
}

/// Close completes every watch first; their completions are still polled.
#[test]
fn close_completes_pending_watches() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Config::default()).unwrap();
    store.create_shard("s", None).unwrap();
    let fd = store.durable_fd().unwrap();
    for token in 0..200 {
        store
            .append_batch_notify("s", &[Record::new(b"late")], token)
            .unwrap();
    }
    store.close().unwrap();
    assert!(readable(fd, 0));
    let done = store.poll_durable(1000);
    assert_eq!(done.len(), 200);
    assert!(done.iter().all(|c| c.result.is_ok()));
    assert!(!readable(fd, 0));
}
