//! Unit tests of the Redis backend against a real server: the one named by
//! `MQS_TEST_REDIS_URL` (`scripts/servers/redis.sh start DIR` writes it to
//! DIR/env), and private ones started with the same script where a test
//! changes or kills its server. Every test uses its own key prefix.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;
use crate::engine::database::{BatchMeta, Entry, ShardMeta};
use crate::Status;

fn shared_url() -> String {
    std::env::var("MQS_TEST_REDIS_URL").unwrap_or_else(|_| {
        panic!(
            "MQS_TEST_REDIS_URL is not set: run `scripts/servers/redis.sh start DIR` and \
             export the line it writes to DIR/env"
        )
    })
}

/// A key prefix no other test (or run) uses.
fn prefix(test: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let n = N.fetch_add(1, Ordering::Relaxed);
    let test = &test[..test.len().min(8)];
    format!(
        "t:{test}:{}:{n}:{}:",
        nanos % 1_000_000_000,
        std::process::id()
    )
}

fn server_config(url: &str, prefix: &str) -> ServerConfig {
    let mut config = Config::default().redis;
    config.url = Some(url.to_string());
    config.key_prefix = prefix.to_string();
    config.pool_size = 4;
    config.connect_timeout_ms = 2_000;
    config.io_timeout_ms = 2_000;
    config
}

fn open(test: &str) -> RedisDb {
    RedisDb::open(&server_config(&shared_url(), &prefix(test)), false).unwrap()
}

/// A server of its own, stopped when dropped.
struct Private {
    dir: tempfile::TempDir,
    url: String,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/servers/redis.sh")
}

fn run_script(args: &[&str]) {
    let status = Command::new("bash")
        .arg(script())
        .args(args)
        .status()
        .unwrap();
    assert!(status.success(), "redis.sh {args:?} failed");
}

impl Private {
    fn start(appendfsync: &str) -> Private {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_str().unwrap().to_string();
        run_script(&["start", &path, appendfsync]);
        let env = std::fs::read_to_string(dir.path().join("env")).unwrap();
        let url = env.trim().strip_prefix("MQS_TEST_REDIS_URL=").unwrap();
        Private {
            url: url.to_string(),
            dir,
        }
    }

    fn path(&self) -> &str {
        self.dir.path().to_str().unwrap()
    }
}

impl Drop for Private {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .args(["stop", self.path()])
            .status();
    }
}

fn meta_of(base: i64, bytes: &[u8], span: i64) -> BatchMeta {
    BatchMeta {
        last_offset: base + span - 1,
        max_timestamp: 1_000 + base,
        records: span as u32,
        len: bytes.len() as u32,
    }
}

/// A batch of `span` offsets at `base` (the backend never parses it).
fn put(shard: u64, base: i64, span: i64) -> Change {
    let bytes = Bytes::from(format!("batch {base} of shard {shard}").into_bytes());
    Change::PutBatch {
        shard,
        base_offset: base,
        meta: meta_of(base, &bytes, span),
        bytes,
        keys: None,
    }
}

fn put_shard(shard: u64, low: i64, next: i64) -> Change {
    Change::PutShard {
        shard,
        meta: ShardMeta {
            name: format!("s{shard}"),
            options: "engine = \"redis\"\n".into(),
            low_watermark: low,
            next_offset: next,
        },
    }
}

fn commit(db: &RedisDb, changes: Vec<Change>) {
    db.commit(changes, Durability::Fsync, false).unwrap();
}

fn loaded(db: &RedisDb) -> Vec<String> {
    let mut out = Vec::new();
    db.load(&mut |found| {
        out.push(match found {
            Found::Shard(id, meta) => {
                format!("shard {id} {} {}", meta.low_watermark, meta.next_offset)
            }
            Found::Batch(id, base, meta) => format!("batch {id} {base}..={}", meta.last_offset),
            Found::Keys(id, base, _) => format!("keys {id} {base}"),
            Found::Group(id, group, offset) => format!("group {id} {group} {offset}"),
        });
        Ok(())
    })
    .unwrap();
    out
}

/// The batch entries `load` lists for `shard`.
fn entries(db: &RedisDb, shard: u64) -> Vec<Entry> {
    let mut out = Vec::new();
    db.load(&mut |found| {
        if let Found::Batch(id, base, m) = found {
            if id == shard {
                out.push(Entry::new(
                    0,
                    m.len as usize,
                    base,
                    m.last_offset,
                    0,
                    m.records,
                ));
            }
        }
        Ok(())
    })
    .unwrap();
    out
}

/// The stored bytes of every batch of `shard`, read in order.
fn read_all(db: &RedisDb, shard: u64) -> Vec<String> {
    let list = entries(db, shard);
    db.with_reader(shard, None, |reader| {
        list.iter()
            .map(|e| String::from_utf8(reader.batch(e).unwrap().to_vec()).unwrap())
            .collect()
    })
    .unwrap()
}

/// A raw connection, to look at the keys themselves.
fn raw(url: &str) -> Connection {
    ::redis::Client::open(url)
        .unwrap()
        .get_connection()
        .unwrap()
}

fn query(con: &mut Connection, args: &[&str]) -> Value {
    let mut cmd = ::redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query(con).unwrap()
}

#[test]
fn commit_and_load_round_trip() {
    let db = open("round_trip");
    commit(&db, vec![put_shard(1, 0, 0), put_shard(2, 0, 0)]);
    commit(&db, vec![put(1, 0, 3), put(1, 3, 1)]);
    commit(&db, vec![put(2, 0, 2)]);
    commit(&db, vec![put(1, 4, 2)]);
    let group = |offset| Change::SaveGroup {
        shard: 1,
        group: "g é".into(),
        offset,
    };
    commit(&db, vec![group(Some(4))]);
    commit(
        &db,
        vec![Change::SaveGroup {
            shard: 2,
            group: "h".into(),
            offset: Some(1),
        }],
    );
    assert_eq!(
        loaded(&db),
        [
            "shard 1 0 0",
            "shard 2 0 0",
            "batch 1 0..=2",
            "batch 1 3..=3",
            "batch 1 4..=5",
            "batch 2 0..=1",
            "group 1 g é 4",
            "group 2 h 1",
        ]
    );
    assert_eq!(
        read_all(&db, 1),
        [
            "batch 0 of shard 1",
            "batch 3 of shard 1",
            "batch 4 of shard 1"
        ]
    );
    commit(&db, vec![group(None), Change::RemoveShard { shard: 2 }]);
    let left = loaded(&db);
    assert_eq!(left.last().unwrap(), "batch 1 4..=5", "{left:?}");
    assert!(!left.iter().any(|l| l.contains(" 2 ")), "{left:?}");
    db.close().unwrap();
    assert!(matches!(db.load(&mut |_| Ok(())), Err(Error::Closed)));
}

#[test]
fn a_multi_change_write_is_all_or_nothing() {
    let db = open("atomic");
    commit(&db, vec![put_shard(1, 0, 0), put_shard(2, 0, 0)]);
    // Refused before anything is sent: nothing of it is stored.
    let bad = vec![put(1, 0, 1), put(2, 0, 1), put(2, -5, 1)];
    let err = db.commit(bad, Durability::Fsync, false).unwrap_err();
    assert_eq!(err.status(), Status::InvalidArgument, "{err}");
    assert!(err.to_string().contains("-5"), "{err}");
    assert_eq!(loaded(&db), ["shard 1 0 0", "shard 2 0 0"]);
    // Two shards, their batches and catalogue entries in one script run.
    commit(
        &db,
        vec![
            put(1, 0, 1),
            put(2, 0, 1),
            put_shard(1, 0, 1),
            put_shard(2, 0, 1),
        ],
    );
    assert_eq!(
        loaded(&db),
        [
            "shard 1 0 1",
            "shard 2 0 1",
            "batch 1 0..=0",
            "batch 2 0..=0"
        ]
    );
}

#[test]
fn deletes_front_middle_and_suffix() {
    let db = open("deletes");
    let mut con = raw(&shared_url());
    let log = db.keys.log(1);
    commit(&db, vec![put_shard(1, 0, 0)]);
    commit(&db, (0..8).map(|i| put(1, i * 2, 2)).collect());
    // The front: two batches go, the third is cut (rewritten at its base).
    let front = Change::DeleteBatches {
        shard: 1,
        bases: vec![0, 2],
        end: 4,
        front: true,
    };
    let cut = Bytes::from_static(b"batch 4, cut");
    let rewrite = Change::PutBatch {
        shard: 1,
        base_offset: 4,
        meta: meta_of(4, &cut, 2),
        bytes: cut,
        keys: None,
    };
    commit(&db, vec![front, rewrite, put_shard(1, 5, 0)]);
    assert_eq!(
        query(&mut con, &["XLEN", &log]),
        Value::Int(5),
        "trimmed, and the cut batch moved out"
    );
    // The middle: batch 8 goes.
    let middle = Change::DeleteBatches {
        shard: 1,
        bases: vec![8],
        end: 10,
        front: false,
    };
    commit(&db, vec![middle]);
    // The suffix: 12 and 14 go, then the shard appends again from 12.
    let suffix = Change::DeleteBatches {
        shard: 1,
        bases: vec![12, 14],
        end: 16,
        front: false,
    };
    commit(&db, vec![suffix, put_shard(1, 5, 12)]);
    commit(&db, vec![put(1, 12, 3)]);
    assert_eq!(
        loaded(&db),
        [
            "shard 1 5 12",
            "batch 1 4..=5",
            "batch 1 6..=7",
            "batch 1 10..=11",
            "batch 1 12..=14"
        ]
    );
    assert_eq!(
        read_all(&db, 1),
        [
            "batch 4, cut",
            "batch 6 of shard 1",
            "batch 10 of shard 1",
            "batch 12 of shard 1"
        ]
    );
    // A front delete reaches the rewritten batches too.
    let front = Change::DeleteBatches {
        shard: 1,
        bases: vec![4, 6, 10, 12],
        end: 15,
        front: true,
    };
    commit(&db, vec![front]);
    assert_eq!(loaded(&db), ["shard 1 5 12"]);
    assert_eq!(query(&mut con, &["XLEN", &log]), Value::Int(0));
    assert_eq!(
        query(&mut con, &["ZCARD", &db.keys.rewritten(1)]),
        Value::Int(0)
    );
}

#[test]
fn sequential_reads_are_prefetched() {
    let db = open("prefetch");
    commit(&db, vec![put_shard(1, 0, 0)]);
    for chunk in (0..300).collect::<Vec<i64>>().chunks(100) {
        commit(&db, chunk.iter().map(|&i| put(1, i, 1)).collect());
    }
    // One batch in the middle was rewritten: it comes from the other set.
    let bytes = Bytes::from_static(b"rewritten 150");
    let change = Change::PutBatch {
        shard: 1,
        base_offset: 150,
        meta: meta_of(150, &bytes, 1),
        bytes,
        keys: None,
    };
    commit(&db, vec![change]);
    let before = db.read_round_trips.load(Ordering::Relaxed);
    let read = read_all(&db, 1);
    let trips = db.read_round_trips.load(Ordering::Relaxed) - before;
    assert_eq!(read.len(), 300);
    assert_eq!(read[150], "rewritten 150");
    assert_eq!(read[299], "batch 299 of shard 1");
    assert!(trips <= 3, "300 batches read in {trips} round trips");
    // A reader asked for a batch that is not there says so.
    let ghost = Entry::new(0, 10, 1_000, 1_000, 0, 1);
    let err = db
        .with_reader(1, None, |r| r.batch(&ghost))
        .unwrap()
        .unwrap_err();
    assert_eq!(err.status(), Status::Corruption, "{err}");
}

#[test]
fn concurrent_commits_share_round_trips() {
    let db = Arc::new(open("group_commit"));
    commit(&db, (1..=8).map(|s| put_shard(s, 0, 0)).collect());
    let start = Instant::now();
    let threads: Vec<_> = (1..=8u64)
        .map(|shard| {
            let db = db.clone();
            std::thread::spawn(move || {
                for i in 0..200 {
                    commit(&db, vec![put(shard, i, 1)]);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let elapsed = start.elapsed();
    let stats = db.stats().unwrap();
    let per_trip = stats["commits_per_round_trip"].as_f64().unwrap();
    eprintln!("1600 commits from 8 threads in {elapsed:?}: {stats}");
    assert!(per_trip > 1.5, "{stats}");
    for shard in 1..=8 {
        assert_eq!(entries(&db, shard).len(), 200);
    }
}

#[test]
fn durability_is_checked_against_the_servers_settings() {
    let db = open("durability");
    for mode in [Durability::None, Durability::Os, Durability::Fsync] {
        db.check_durability(mode).unwrap();
    }
    let everysec = Private::start("everysec");
    let config = server_config(&everysec.url, &prefix("durability"));
    let db = RedisDb::open(&config, false).unwrap();
    db.check_durability(Durability::None).unwrap();
    db.check_durability(Durability::Os).unwrap();
    let err = db.check_durability(Durability::Fsync).unwrap_err();
    assert_eq!(err.status(), Status::InvalidConfig, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("appendfsync always") && text.contains("everysec"),
        "{text}"
    );
    assert!(!text.contains(&everysec.url), "{text}");
    let mut con = raw(&everysec.url);
    query(&mut con, &["CONFIG", "SET", "appendonly", "no"]);
    let err = db.check_durability(Durability::Os).unwrap_err();
    assert!(err.to_string().contains("appendonly no"), "{err}");
    db.check_durability(Durability::None).unwrap();
}

#[test]
fn a_wrong_password_is_refused_at_open() {
    let url = shared_url();
    let (head, tail) = url.split_once('@').expect("the test server has a password");
    let password = head.rsplit(':').next().unwrap();
    let wrong = format!("redis://:not-{password}@{tail}");
    let err = RedisDb::open(&server_config(&wrong, &prefix("password")), false)
        .err()
        .unwrap();
    let text = err.to_string();
    assert_eq!(err.status(), Status::InvalidConfig, "{text}");
    assert!(
        text.contains("credentials") && text.contains(tail.trim_end_matches('/')),
        "{text}"
    );
    assert!(!text.contains(password), "{text}");
}

#[test]
fn a_server_that_never_answers_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    // Accepts and holds connections, never writing a byte.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    let mut config = server_config(&format!("redis://{address}/"), &prefix("silent"));
    config.connect_timeout_ms = 300;
    config.io_timeout_ms = 300;
    let start = Instant::now();
    let err = RedisDb::open(&config, false).err().unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(err.status(), Status::Io, "{err}");
    assert!(err.to_string().contains(&address.to_string()), "{err}");
}

#[test]
fn an_unreachable_server_is_an_io_error_naming_it() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    let config = server_config(&format!("redis://:secret@{address}/"), &prefix("refused"));
    let err = RedisDb::open(&config, false).err().unwrap();
    let text = err.to_string();
    assert_eq!(err.status(), Status::Io, "{text}");
    assert!(
        text.contains(&address.to_string()) && !text.contains("secret"),
        "{text}"
    );
}

#[test]
fn a_newer_format_version_is_refused() {
    let prefix = prefix("version");
    let mut con = raw(&shared_url());
    query(&mut con, &["SET", &format!("{prefix}version"), "99"]);
    let err = RedisDb::open(&server_config(&shared_url(), &prefix), false)
        .err()
        .unwrap();
    assert_eq!(err.status(), Status::Unsupported, "{err}");
    assert!(err.to_string().contains("version 99"), "{err}");
}

/// A producer commits batch after batch (retrying a failed one at the same
/// offset) while the server is killed and restarted: every acknowledged
/// batch is there afterwards, once.
#[test]
fn a_killed_and_restarted_server_loses_no_acknowledged_batch() {
    let server = Private::start("always");
    let db =
        Arc::new(RedisDb::open(&server_config(&server.url, &prefix("restart")), false).unwrap());
    commit(&db, vec![put_shard(1, 0, 0)]);
    let acked = Arc::new(AtomicU64::new(0));
    let producer = {
        let (db, acked) = (db.clone(), acked.clone());
        std::thread::spawn(move || {
            let mut errors = Vec::new();
            let mut base = 0;
            while base < 400 {
                match db.commit(vec![put(1, base, 1)], Durability::Fsync, false) {
                    Ok(_) => {
                        base += 1;
                        acked.store(base as u64, Ordering::Release);
                    }
                    Err(e) => {
                        errors.push(e);
                        std::thread::sleep(Duration::from_millis(20));
                        // As a shard does after a failed write: the
                        // server's state first, then the next try.
                        let _ = db.load_shard(1, &mut |_| Ok(()));
                    }
                }
            }
            errors
        })
    };
    let wait_for = |n: u64| {
        while acked.load(Ordering::Acquire) < n {
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    wait_for(100);
    run_script(&["kill", server.path()]);
    let at_kill = acked.load(Ordering::Acquire);
    run_script(&["start", server.path()]);
    wait_for(at_kill + 100);
    run_script(&["kill", server.path()]);
    run_script(&["start", server.path()]);
    let errors = producer.join().unwrap();
    for e in &errors {
        assert_eq!(e.status(), Status::Io, "{e}");
        let address = server.url.rsplit('@').next().unwrap().trim_end_matches('/');
        assert!(e.to_string().contains(address), "{e}");
    }
    eprintln!("{} failed commits while the server was down", errors.len());
    let bases: Vec<i64> = entries(&db, 1).iter().map(|e| e.base_offset).collect();
    assert_eq!(bases, (0..400).collect::<Vec<_>>());
    let read = read_all(&db, 1);
    assert_eq!(read[399], "batch 399 of shard 1");
}

/// A window of pipelined commits goes out as one pipeline when its newest
/// is waited for. A failed pipeline fails what was queued behind it, and
/// the shard gets no new commit (one fails at once) until it has reloaded
/// what the server holds: no later write is ever applied after an earlier
/// one that failed.
#[test]
fn pipelined_commits_share_a_round_trip_and_a_failure_stops_the_shard() {
    let server = Private::start("always");
    let db = RedisDb::open(&server_config(&server.url, &prefix("window")), false).unwrap();
    commit(&db, vec![put_shard(1, 0, 0), put_shard(2, 0, 0)]);
    let trips = || db.committer.round_trips.load(Ordering::Relaxed);
    let before = trips();
    let pipelined = |base: i64| {
        db.commit(vec![put(1, base, 1)], Durability::Fsync, true)
            .unwrap()
    };
    let window: Vec<u64> = (0..16).map(pipelined).collect();
    assert_eq!(trips(), before, "nothing is sent before a wait");
    db.wait_synced(window[15]).unwrap();
    assert_eq!(trips(), before + 1);
    assert_eq!(entries(&db, 1).len(), 16);

    let queued: Vec<u64> = (16..20).map(pipelined).collect();
    run_script(&["kill", server.path()]);
    let err = db.wait_synced(queued[0]).unwrap_err();
    assert_eq!(err.status(), Status::Io, "{err}");
    assert!(db.wait_synced(queued[3]).is_err());
    run_script(&["start", server.path()]);
    let err = db
        .commit(vec![put(1, 16, 1)], Durability::Fsync, false)
        .unwrap_err();
    assert_eq!(err.status(), Status::Io, "{err}");
    commit(&db, vec![put(2, 0, 1)]);

    let mut bases = Vec::new();
    db.load_shard(1, &mut |found| {
        if let Found::Batch(_, base, _) = found {
            bases.push(base);
        }
        Ok(())
    })
    .unwrap();
    assert_eq!(
        bases,
        (0..16).collect::<Vec<_>>(),
        "the failed window left nothing"
    );
    commit(&db, vec![put(1, 16, 1)]);
    assert_eq!(entries(&db, 1).len(), 17);
}

#[test]
fn an_interrupted_request_is_sent_again_on_a_new_connection() {
    let interrupted =
        redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::Interrupted));
    assert!(conn::retryable(&interrupted, false));
    let reset = redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
    assert!(conn::retryable(&reset, true) && !conn::retryable(&reset, false));
    let timeout = redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut));
    assert!(!conn::retryable(&timeout, true));
}

#[test]
fn the_store_runs_on_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[shard]\nengine = \"redis\"\n[redis]\nurl = \"{}\"\nkey_prefix = \"{}\"\n",
        shared_url(),
        prefix("store")
    );
    let store = crate::Store::open_with_toml(dir.path(), Some(&toml)).unwrap();
    store.create_shard("orders", None).unwrap();
    for i in 0..50 {
        let value = format!("order {i}");
        let records = [crate::record::Record::new(value.as_bytes()).with_key(b"k")];
        store.append_batch("orders", &records).unwrap();
    }
    store.commit_offset("g", "orders", 20).unwrap();
    assert_eq!(store.delete_records_before("orders", 10).unwrap(), 10);
    let read = store.read("orders", 10, 100, 1 << 20).unwrap();
    assert_eq!(read.records.len(), 40);
    assert_eq!(read.records[0].value_bytes(), b"order 10");
    store.truncate_to("orders", 45).unwrap();
    store.close().unwrap();

    let store = crate::Store::open_with_toml(dir.path(), Some(&toml)).unwrap();
    let info = store.shard_info("orders").unwrap();
    assert_eq!((info.first_offset, info.next_offset), (10, 45));
    let read = store.read("orders", 40, 100, 1 << 20).unwrap();
    assert_eq!(read.records.len(), 5);
    assert_eq!(read.records[4].value_bytes(), b"order 44");
    let records = [crate::record::Record::new(b"again")];
    assert_eq!(store.append_batch("orders", &records).unwrap(), 45);
    let read = store.read("orders", 45, 10, 1 << 20).unwrap();
    assert_eq!(read.records[0].value_bytes(), b"again");
    store.delete_shard("orders").unwrap();
    store.close().unwrap();
}
