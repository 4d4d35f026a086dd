//! File engine flush policies and threads, in one test so that no other
//! test's store starts or stops a flusher thread while this one counts them.

use std::time::{Duration, Instant};

use mqstore::{Config, Record, Store};

fn flusher_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).ok())
        .filter(|name| name.trim() == "mqs-file-flush")
        .count()
}

/// Waits (bounded) until `flusher_threads()` is `n`: a thread names itself
/// after it starts, and its /proc entry goes just after it is joined.
fn expect_flushers(n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while flusher_threads() != n {
        assert!(
            Instant::now() < deadline,
            "{} flusher threads, expected {n}",
            flusher_threads()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn open(dir: &std::path::Path, durability: &str, file: &str) -> Store {
    let toml = format!("[shard]\nengine = \"file\"\ndurability = \"{durability}\"\n[file]\n{file}");
    Store::open(dir, Config::from_toml_str(&toml).unwrap()).unwrap()
}

fn engine(store: &Store, shard: &str) -> serde_json::Value {
    store.shard_stats(shard).unwrap()["engine_stats"].clone()
}

#[test]
fn flush_policies_and_the_flusher_thread() {
    // never: no thread; durability none stays in the shard's buffer until a
    // read needs it.
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), "none", "flush = \"never\"\n");
    store.create_shard("s", None).unwrap();
    store.append("s", &Record::new(b"buffered")).unwrap();
    assert_eq!(flusher_threads(), 0);
    let stats = engine(&store, "s");
    assert!(stats["buffered_bytes"].as_u64().unwrap() > 0, "{stats}");
    assert_eq!(stats["engine"]["writes"], 0, "{stats}");
    let r = store.read("s", 0, 10, 1 << 20).unwrap();
    assert_eq!(r.records[0].value_bytes(), b"buffered");
    assert_eq!(engine(&store, "s")["buffered_bytes"], 0);
    store.close().unwrap();
    let store = open(dir.path(), "none", "");
    assert_eq!(store.read("s", 0, 10, 1 << 20).unwrap().records.len(), 1);
    store.close().unwrap();

    // os + never: written before the ack, fdatasynced only at close.
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), "os", "");
    store.create_shard("s", None).unwrap();
    for _ in 0..5 {
        store.append("s", &Record::new(b"x")).unwrap();
    }
    let stats = engine(&store, "s");
    assert_eq!(stats["engine"]["writes"], 5, "{stats}");
    assert_eq!(stats["engine"]["fdatasyncs"], 0, "{stats}");
    store.close().unwrap();

    // fsync, and os + append: one fdatasync per append from one thread.
    for (durability, file) in [("fsync", ""), ("os", "flush = \"append\"\n")] {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), durability, file);
        store.create_shard("s", None).unwrap();
        for _ in 0..5 {
            store.append("s", &Record::new(b"x")).unwrap();
        }
        let stats = engine(&store, "s");
        assert_eq!(
            stats["engine"]["fdatasyncs"], 5,
            "{durability} {file}: {stats}"
        );
        assert_eq!(flusher_threads(), 0);
        store.close().unwrap();
    }

    // interval: one flusher thread for the store, started with the first
    // shard, which writes and fdatasyncs buffered appends on its own.
    let dir = tempfile::tempdir().unwrap();
    let store = open(
        dir.path(),
        "none",
        "flush = \"interval\"\nflush_interval_ms = 5\n",
    );
    assert_eq!(flusher_threads(), 0, "no shard yet, no thread");
    store.create_shard("a", None).unwrap();
    store.create_shard("b", None).unwrap();
    expect_flushers(1);
    store.append("a", &Record::new(b"later")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stats = engine(&store, "a");
        if stats["buffered_bytes"] == 0 && stats["engine"]["fdatasyncs"].as_u64().unwrap() > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the flusher never ran: {stats}");
        std::thread::sleep(Duration::from_millis(1));
    }
    store.close().unwrap();
    expect_flushers(0);
}
