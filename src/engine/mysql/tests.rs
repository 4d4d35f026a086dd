//! The backend against a real server: `MQS_TEST_MYSQL_URL` names it (start
//! one with `scripts/servers/mariadb.sh start DIR`). Each test owns the
//! tables of its own key prefix, dropped when it starts. The tests that
//! misconfigure, kill or impersonate a server start their own.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mysql::prelude::Queryable;

use super::*;
use crate::engine::database::{BatchMeta, Entry, ShardMeta};
use crate::record::Record;
use crate::store::Store;
use crate::Status;

fn test_url() -> String {
    match std::env::var("MQS_TEST_MYSQL_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "MQS_TEST_MYSQL_URL is not set: run `scripts/servers/mariadb.sh start DIR` and \
             export the line it writes to DIR/env"
        ),
    }
}

fn server_config(url: &str, prefix: &str) -> ServerConfig {
    let mut config = Config::default().mysql;
    config.url = Some(url.to_string());
    config.key_prefix = prefix.to_string();
    config.pool_size = 4;
    config.connect_timeout_ms = 2_000;
    config.io_timeout_ms = 10_000;
    config
}

fn open_db(config: &ServerConfig, max_batch_bytes: usize) -> Result<MysqlDb> {
    MysqlDb::open(config, max_batch_bytes, false)
}

/// Drops the tables of `prefix` (the database may not exist yet).
fn drop_tables(url: &str, prefix: &str) {
    let opts = mysql::Opts::from_url(url).expect("test URL");
    let mut conn = match mysql::Conn::new(opts) {
        Ok(conn) => conn,
        Err(mysql::Error::MySqlError(e)) if e.code == code::BAD_DB => return,
        Err(e) => panic!("connecting to the test server: {e}"),
    };
    for role in ["meta", "shards", "batches", "groups"] {
        conn.query_drop(format!("DROP TABLE IF EXISTS `{prefix}{role}`"))
            .expect("dropping a test table");
    }
}

/// The test server's database for `prefix`, empty.
fn fresh(prefix: &str) -> MysqlDb {
    let url = test_url();
    drop_tables(&url, prefix);
    open_db(&server_config(&url, prefix), 1 << 20).expect("opening the test database")
}

fn put(shard: u64, base: i64, bytes: &[u8]) -> Change {
    Change::PutBatch {
        shard,
        base_offset: base,
        bytes: Bytes::copy_from_slice(bytes),
        meta: meta(base, bytes.len()),
        keys: None,
    }
}

/// Every test batch spans 10 offsets.
fn meta(base: i64, len: usize) -> BatchMeta {
    BatchMeta {
        last_offset: base + 9,
        max_timestamp: 1_000 + base,
        records: 10,
        len: len as u32,
    }
}

fn entry(base: i64, len: usize) -> Entry {
    Entry::new(0, len, base, base + 9, 1_000 + base, 10)
}

fn put_shard(shard: u64, name: &str) -> Change {
    Change::PutShard {
        shard,
        meta: ShardMeta {
            name: name.to_string(),
            options: "engine = \"mysql\"\n".to_string(),
            low_watermark: 0,
            next_offset: 0,
        },
    }
}

fn payload(seed: i64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as i64 * 31 + seed) as u8).collect()
}

/// What `load` lists, as text lines.
fn listed(db: &MysqlDb) -> Vec<String> {
    listed_of(db, None)
}

/// What `load` (or, for `Some`, `load_shard`) lists, as text.
fn listed_of(db: &MysqlDb, shard: Option<u64>) -> Vec<String> {
    let mut out = Vec::new();
    let mut list = |found| {
        out.push(match found {
            Found::Shard(id, meta) => format!(
                "shard {id} {} {} {}",
                meta.name, meta.low_watermark, meta.next_offset
            ),
            Found::Batch(id, base, meta) => {
                format!("batch {id} {base} {} {}", meta.last_offset, meta.len)
            }
            Found::Keys(id, base, _) => format!("keys {id} {base}"),
            Found::Group(id, group, offset) => format!("group {id} {group} {offset}"),
        });
        Ok(())
    };
    match shard {
        Some(shard) => db.load_shard(shard, &mut list),
        None => db.load(&mut list),
    }
    .expect("load");
    out
}

fn read(db: &MysqlDb, shard: u64, entries: &[Entry]) -> Vec<Bytes> {
    db.with_reader(shard, entries.first().map(|e| e.base_offset), |reader| {
        entries
            .iter()
            .map(|e| reader.batch(e))
            .collect::<Result<Vec<_>>>()
    })
    .expect("with_reader")
    .expect("reading batches")
}

fn stat(db: &MysqlDb, name: &str) -> u64 {
    db.stats().expect("stats")[name].as_u64().unwrap_or(0)
}

#[test]
fn schema_is_created_and_a_newer_one_refused() {
    let prefix = "ut_schema_";
    let db = fresh(prefix);
    db.close().unwrap();
    let url = test_url();
    let mut conn = mysql::Conn::new(mysql::Opts::from_url(&url).unwrap()).unwrap();
    let tables: Vec<String> = conn.query(format!("SHOW TABLES LIKE '{prefix}%'")).unwrap();
    assert_eq!(tables.len(), 4, "{tables:?}");
    let version: Option<i64> = conn
        .query_first(format!(
            "SELECT value FROM `{prefix}meta` WHERE name = 'schema_version'"
        ))
        .unwrap();
    assert_eq!(version, Some(schema::SCHEMA_VERSION));

    // Opening again keeps the tables.
    open_db(&server_config(&url, prefix), 1 << 20).unwrap();
    conn.query_drop(format!(
        "UPDATE `{prefix}meta` SET value = 99 WHERE name = 'schema_version'"
    ))
    .unwrap();
    let err = open_db(&server_config(&url, prefix), 1 << 20)
        .err()
        .expect("a newer schema is refused");
    assert_eq!(err.status(), Status::Unsupported, "{err}");
    assert!(err.to_string().contains("schema version 99"), "{err}");
}

#[test]
fn a_read_only_open_creates_nothing() {
    let url = test_url();
    let (base, _) = url.rsplit_once('/').unwrap();
    let config = server_config(&format!("{base}/mqstore_test_never_created"), "ut_ro_");
    let db = MysqlDb::open(&config, 1 << 20, true).unwrap();
    assert!(db.read_only());
    assert!(listed(&db).is_empty());

    let prefix = "ut_ro_";
    drop_tables(&url, prefix);
    let db = MysqlDb::open(&server_config(&url, prefix), 1 << 20, true).unwrap();
    assert!(listed(&db).is_empty());
    let mut conn = mysql::Conn::new(mysql::Opts::from_url(&url).unwrap()).unwrap();
    let tables: Vec<String> = conn.query(format!("SHOW TABLES LIKE '{prefix}%'")).unwrap();
    assert!(tables.is_empty(), "{tables:?}");
    let databases: Vec<String> = conn
        .query("SHOW DATABASES LIKE 'mqstore_test_never_created'")
        .unwrap();
    assert!(databases.is_empty(), "{databases:?}");

    let writer = fresh(prefix);
    writer
        .commit(vec![put_shard(1, "a")], Durability::Fsync, false)
        .unwrap();
    let db = MysqlDb::open(&server_config(&url, prefix), 1 << 20, true).unwrap();
    assert_eq!(listed(&db), ["shard 1 a 0 0"]);
}

#[test]
fn the_table_prefix_defaults_to_the_store_id() {
    let url = test_url();
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.mysql.url = Some(url.clone());
    let first = engine(dir.path(), &config).unwrap();
    assert!(
        first.recover().unwrap().is_empty(),
        "a new store has no id yet"
    );
    first
        .create_shard("a", &crate::config::ShardOptions::default())
        .unwrap();
    first.close().unwrap();
    let id = server::store_id(dir.path(), true).unwrap();
    let prefix = format!("mqs_{id}_");
    let mut conn = mysql::Conn::new(mysql::Opts::from_url(&url).unwrap()).unwrap();
    let tables: Vec<String> = conn.query(format!("SHOW TABLES LIKE '{prefix}%'")).unwrap();
    assert_eq!(tables.len(), 4, "{tables:?}");
    let reopened = engine(dir.path(), &config).unwrap();
    let recovered = reopened.recover().unwrap();
    assert_eq!(recovered.len(), 1);
    assert_eq!(recovered[0].0, "a");
    reopened.close().unwrap();
    drop_tables(&url, &prefix);
}

#[test]
fn the_database_is_created_when_missing() {
    let url = test_url();
    let (base, _) = url.rsplit_once('/').unwrap();
    let db_name = "mqstore_test_created";
    let mut conn = mysql::Conn::new(mysql::Opts::from_url(&format!("{base}/")).unwrap()).unwrap();
    conn.query_drop(format!("DROP DATABASE IF EXISTS `{db_name}`"))
        .unwrap();
    let config = server_config(&format!("{base}/{db_name}"), "ut_created_");
    let db = open_db(&config, 1 << 20).unwrap();
    db.commit(vec![put_shard(1, "a")], Durability::Fsync, false)
        .unwrap();
    assert_eq!(listed(&db), ["shard 1 a 0 0"]);
    conn.query_drop(format!("DROP DATABASE `{db_name}`"))
        .unwrap();
}

#[test]
fn commits_round_trip_through_load_and_reads() {
    let db = fresh("ut_trip_");
    let sizes = [1usize, 100, 70_000, 1 << 20];
    let mut changes = vec![put_shard(1, "one"), put_shard(2, "two")];
    for (i, &len) in sizes.iter().enumerate() {
        changes.push(put(1, i as i64 * 10, &payload(i as i64, len)));
    }
    changes.push(put(2, 0, b"other shard"));
    changes.push(Change::SaveGroup {
        shard: 1,
        group: "g1".into(),
        offset: Some(7),
    });
    db.commit(changes, Durability::Fsync, false).unwrap();
    db.commit(
        vec![Change::SaveGroup {
            shard: 2,
            group: "g2".into(),
            offset: Some(3),
        }],
        Durability::Fsync,
        false,
    )
    .unwrap();
    let expected = [
        "shard 1 one 0 0",
        "shard 2 two 0 0",
        "batch 1 0 9 1",
        "batch 1 10 19 100",
        "batch 1 20 29 70000",
        "batch 1 30 39 1048576",
        "batch 2 0 9 11",
        "group 1 g1 7",
        "group 2 g2 3",
    ];
    assert_eq!(listed(&db), expected);
    assert_eq!(
        listed_of(&db, Some(2)),
        ["shard 2 two 0 0", "batch 2 0 9 11", "group 2 g2 3"]
    );
    let entries: Vec<Entry> = sizes
        .iter()
        .enumerate()
        .map(|(i, &len)| entry(i as i64 * 10, len))
        .collect();
    let got = read(&db, 1, &entries);
    for (i, bytes) in got.iter().enumerate() {
        assert_eq!(bytes.as_ref(), payload(i as i64, sizes[i]), "batch {i}");
    }
    assert_eq!(read(&db, 2, &[entry(0, 11)])[0].as_ref(), b"other shard");

    // A rewrite replaces the batch at its base offset; a group is forgotten.
    let rewrite = put(1, 10, b"rewritten");
    let forget = Change::SaveGroup {
        shard: 1,
        group: "g1".into(),
        offset: None,
    };
    db.commit(vec![rewrite, forget], Durability::Fsync, false)
        .unwrap();
    assert_eq!(read(&db, 1, &[entry(10, 9)])[0].as_ref(), b"rewritten");
    db.close().unwrap();

    let again = open_db(&server_config(&test_url(), "ut_trip_"), 1 << 20).unwrap();
    let listed = listed(&again);
    assert!(
        listed.contains(&"batch 1 10 19 9".to_string()),
        "{listed:?}"
    );
    assert!(
        !listed.iter().any(|l| l.starts_with("group 1")),
        "{listed:?}"
    );

    // A batch the index lists but the table lacks, or of another length.
    let err = read_err(&again, 1, entry(40, 5));
    assert_eq!(err.status(), Status::Corruption, "{err}");
    let err = read_err(&again, 1, entry(0, 2));
    assert_eq!(err.status(), Status::Corruption, "{err}");
}

fn read_err(db: &MysqlDb, shard: u64, entry: Entry) -> Error {
    db.with_reader(shard, None, |reader| reader.batch(&entry))
        .unwrap()
        .expect_err("a missing or different batch")
}

#[test]
fn a_failing_write_leaves_nothing() {
    let db = fresh("ut_atomic_");
    db.commit(vec![put_shard(1, "kept")], Durability::Fsync, false)
        .unwrap();
    // The second catalogue entry's name overflows its column: the server
    // fails the write after the first two changes were applied.
    let bad = || put_shard(2, &"n".repeat(2_000));
    let err = db
        .commit(
            vec![put(1, 0, b"batch"), put_shard(3, "x"), bad()],
            Durability::Fsync,
            false,
        )
        .expect_err("a too long name fails");
    assert_eq!(err.status(), Status::Io, "{err}");
    assert_eq!(listed(&db), ["shard 1 kept 0 0"]);

    // In one round, only the list that fails fails.
    let lists = vec![
        vec![put(1, 0, b"first")],
        vec![bad()],
        vec![put(1, 10, b"second")],
    ];
    let outcomes = db.round(&lists);
    assert!(outcomes[0].is_ok() && outcomes[2].is_ok(), "{outcomes:?}");
    assert!(outcomes[1].is_err(), "{outcomes:?}");
    assert_eq!(
        listed(&db),
        ["shard 1 kept 0 0", "batch 1 0 9 5", "batch 1 10 19 6"]
    );

    // Refused before anything is sent.
    let long_group = Change::SaveGroup {
        shard: 1,
        group: "g".repeat(schema::MAX_GROUP_NAME + 1),
        offset: Some(1),
    };
    let err = db
        .commit(vec![put(1, 20, b"x"), long_group], Durability::Fsync, false)
        .unwrap_err();
    assert_eq!(err.status(), Status::InvalidArgument, "{err}");
    assert_eq!(listed(&db).len(), 3);
}

#[test]
fn deletes_remove_ranges_fronts_and_shards() {
    let db = fresh("ut_delete_");
    let mut changes = vec![put_shard(1, "a"), put_shard(2, "b")];
    for base in (0..100).step_by(10) {
        changes.push(put(1, base, b"a"));
        changes.push(put(2, base, b"b"));
    }
    changes.push(Change::SaveGroup {
        shard: 2,
        group: "g".into(),
        offset: Some(5),
    });
    db.commit(changes, Durability::Fsync, false).unwrap();
    db.commit(
        vec![
            Change::DeleteBatches {
                shard: 1,
                bases: vec![0, 10],
                end: 20,
                front: true,
            },
            Change::DeleteBatches {
                shard: 1,
                bases: vec![70, 80, 90],
                end: 100,
                front: false,
            },
            Change::RemoveShard { shard: 2 },
        ],
        Durability::Fsync,
        false,
    )
    .unwrap();
    let bases: Vec<String> = (20..70)
        .step_by(10)
        .map(|b| format!("batch 1 {b} {} 1", b + 9))
        .collect();
    let mut expected = vec!["shard 1 a 0 0".to_string()];
    expected.extend(bases);
    assert_eq!(listed(&db), expected);

    // A put then a delete of the same batch in one round, and the reverse.
    let lists = vec![
        vec![put(1, 100, b"gone")],
        vec![Change::DeleteBatches {
            shard: 1,
            bases: vec![100],
            end: 110,
            front: false,
        }],
        vec![put(1, 110, b"kept")],
    ];
    assert!(db.round(&lists).iter().all(|o| o.is_ok()));
    let listed = listed(&db);
    assert!(
        !listed.iter().any(|l| l.starts_with("batch 1 100 ")),
        "{listed:?}"
    );
    assert!(
        listed.contains(&"batch 1 110 119 4".to_string()),
        "{listed:?}"
    );
}

#[test]
fn reads_fetch_ahead_in_ranges_bounded_by_bytes() {
    let db = fresh("ut_prefetch_");
    let mut changes = vec![put_shard(1, "small"), put_shard(2, "large")];
    for i in 0..200 {
        changes.push(put(1, i * 10, &payload(i, 10_000)));
    }
    for i in 0..8 {
        changes.push(put(2, i * 10, &payload(i, 3 << 20)));
    }
    db.commit(changes, Durability::Fsync, false).unwrap();

    let entries: Vec<Entry> = (0..200).map(|i| entry(i * 10, 10_000)).collect();
    let before = stat(&db, "fetches");
    let got = read(&db, 1, &entries);
    let fetches = stat(&db, "fetches") - before;
    assert!(got
        .iter()
        .enumerate()
        .all(|(i, b)| b.as_ref() == payload(i as i64, 10_000)));
    // 8, 16, 32, 64, 80 batches: a round trip per range, not per batch.
    assert!(fetches <= 6, "{fetches} fetches for 200 batches");

    // Skipping batches (a key lookup) reads the ones asked for.
    let some = [
        entry(30, 10_000),
        entry(1_200, 10_000),
        entry(1_990, 10_000),
    ];
    let got = read(&db, 1, &some);
    assert_eq!(got[1].as_ref(), payload(120, 10_000));
    assert_eq!(got[2].as_ref(), payload(199, 10_000));

    // A call that wants one large batch fetches that one only.
    let before = stat(&db, "bytes_read");
    read(&db, 2, &[entry(0, 3 << 20)]);
    assert_eq!(stat(&db, "bytes_read") - before, 3 << 20);
    let large: Vec<Entry> = (0..8).map(|i| entry(i * 10, 3 << 20)).collect();
    let got = read(&db, 2, &large);
    assert!(got
        .iter()
        .enumerate()
        .all(|(i, b)| b.as_ref() == payload(i as i64, 3 << 20)));
}

#[test]
fn concurrent_commits_share_transactions() {
    let db = Arc::new(fresh("ut_group_"));
    let threads = 8;
    let per_thread = 40;
    let shards: Vec<Change> = (0..threads).map(|t| put_shard(t, "s")).collect();
    db.commit(shards, Durability::Fsync, false).unwrap();
    let (commits, transactions) = (stat(&db, "commits"), stat(&db, "transactions"));
    let started = Instant::now();
    std::thread::scope(|scope| {
        for t in 0..threads {
            let db = &db;
            scope.spawn(move || {
                for i in 0..per_thread {
                    let change = put(t, i * 10, &payload(i, 1_000));
                    db.commit(vec![change], Durability::Fsync, false).unwrap();
                }
            });
        }
    });
    let elapsed = started.elapsed();
    let commits = stat(&db, "commits") - commits;
    let transactions = stat(&db, "transactions") - transactions;
    assert_eq!(commits, threads * per_thread as u64);
    eprintln!(
        "{commits} commits from {threads} threads in {transactions} transactions \
         ({:.1} per transaction), {:.0} commits/s",
        commits as f64 / transactions as f64,
        commits as f64 / elapsed.as_secs_f64()
    );
    assert!(transactions < commits, "{transactions} transactions");
    let batches = listed(&db)
        .iter()
        .filter(|l| l.starts_with("batch"))
        .count();
    assert_eq!(batches as u64, commits);
}

#[test]
fn a_64_mib_batch_fits() {
    let url = test_url();
    let prefix = "ut_large_";
    drop_tables(&url, prefix);
    let db = open_db(&server_config(&url, prefix), 64 << 20).unwrap();
    let big = payload(5, 64 << 20);
    db.commit(
        vec![put_shard(1, "big"), put(1, 0, &big)],
        Durability::Fsync,
        false,
    )
    .unwrap();
    let got = read(&db, 1, &[entry(0, big.len())]);
    assert!(got[0].as_ref() == big.as_slice());
    // Over the server's packet limit: refused before sending, naming it.
    let err = precheck(&[put(1, 10, b"x")], 1024, "server").unwrap_err();
    assert!(err.to_string().contains("max_allowed_packet"), "{err}");
}

#[test]
fn calls_after_close_fail_with_closed() {
    let db = fresh("ut_closed_");
    db.close().unwrap();
    let err = db
        .commit(vec![put_shard(1, "a")], Durability::Fsync, false)
        .unwrap_err();
    assert_eq!(err.status(), Status::Closed);
    assert_eq!(
        db.with_reader(1, None, |_| ()).unwrap_err().status(),
        Status::Closed
    );
}

#[test]
fn a_wrong_password_is_refused_at_open() {
    let url = test_url();
    let (head, rest) = url.split_once('@').unwrap();
    let (user_part, password) = head.rsplit_once(':').unwrap();
    let wrong = format!("{user_part}:not-the-password-x7@{rest}");
    let err = open_db(&server_config(&wrong, "ut_password_"), 1 << 20)
        .err()
        .expect("a wrong password is refused");
    assert_eq!(err.status(), Status::InvalidConfig, "{err}");
    let message = err.to_string();
    assert!(message.contains("Access denied"), "{message}");
    assert!(message.contains("password"), "{message}");
    assert!(!message.contains("not-the-password-x7"), "{message}");
    assert!(!message.contains(password), "{message}");

    // The password may come from the environment instead.
    std::env::set_var("MQS_MYSQL_PASSWORD", password);
    let without = format!("{user_part}@{rest}");
    let opened = open_db(&server_config(&without, "ut_password_"), 1 << 20);
    std::env::remove_var("MQS_MYSQL_PASSWORD");
    opened.expect("the password from MQS_MYSQL_PASSWORD");
}

#[test]
fn unreachable_and_silent_servers_fail_within_the_timeouts() {
    // Nobody listens.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("mysql://mqs:secret-pw@127.0.0.1:{port}/db");
    let err = open_db(&server_config(&url, "ut_"), 1 << 20)
        .err()
        .expect("nobody listens");
    assert_eq!(err.status(), Status::Io, "{err}");
    let message = err.to_string();
    assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
    assert!(!message.contains("secret-pw"), "{message}");

    // Accepts connections and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            keep.lock().unwrap().push(stream);
        }
    });
    let mut config = server_config(&format!("mysql://mqs:secret-pw@127.0.0.1:{port}/db"), "ut_");
    config.connect_timeout_ms = 500;
    config.io_timeout_ms = 500;
    let started = Instant::now();
    let err = open_db(&config, 1 << 20).err().expect("a silent server");
    let took = started.elapsed();
    assert_eq!(err.status(), Status::Io, "{err}");
    let message = err.to_string();
    assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
    assert!(message.contains("io_timeout_ms"), "{message}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert!(!held.lock().unwrap().is_empty());
}

/// A server of the test's own, in a temporary directory, stopped when
/// dropped.
struct OwnServer {
    dir: tempfile::TempDir,
    url: String,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/servers/mariadb.sh")
}

impl OwnServer {
    fn start(args: &[&str]) -> OwnServer {
        let dir = tempfile::tempdir().unwrap();
        let url = Self::run_start(dir.path(), args);
        OwnServer { dir, url }
    }

    fn run_start(dir: &Path, args: &[&str]) -> String {
        let out = Command::new(script())
            .arg("start")
            .arg(dir)
            .args(args)
            .output()
            .expect("running scripts/servers/mariadb.sh");
        assert!(
            out.status.success(),
            "mariadb.sh start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let env = std::fs::read_to_string(dir.join("env")).unwrap();
        env.trim()
            .strip_prefix("MQS_TEST_MYSQL_URL=")
            .expect("env line")
            .to_string()
    }

    fn kill(&self) {
        let pid = std::fs::read_to_string(self.dir.path().join("mariadb.pid")).unwrap();
        let pid = pid.trim();
        let status = Command::new("kill").args(["-9", pid]).status().unwrap();
        assert!(status.success());
        let proc = PathBuf::from(format!("/proc/{pid}/stat"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::fs::read_to_string(&proc).is_ok_and(|s| !s.contains(") Z ")) {
            assert!(Instant::now() < deadline, "mariadbd {pid} survived kill -9");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn restart(&self) {
        Self::run_start(self.dir.path(), &[]);
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = Command::new(script())
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}

#[test]
fn durability_and_packet_size_are_checked_against_the_server() {
    let db = fresh("ut_durable_");
    for mode in [Durability::Fsync, Durability::Os, Durability::None] {
        db.check_durability(mode).unwrap();
    }
    let lax = OwnServer::start(&[
        "--innodb-flush-log-at-trx-commit=2",
        "--max-allowed-packet=16M",
    ]);
    let config = server_config(&lax.url, "ut_lax_");
    let err = open_db(&config, 64 << 20)
        .err()
        .expect("16 MiB packets cannot carry 64 MiB batches");
    assert_eq!(err.status(), Status::InvalidConfig, "{err}");
    assert!(err.to_string().contains("max_allowed_packet"), "{err}");

    let db = open_db(&config, 1 << 20).unwrap();
    let err = db.check_durability(Durability::Fsync).unwrap_err();
    assert_eq!(err.status(), Status::InvalidConfig, "{err}");
    assert!(
        err.to_string()
            .contains("innodb_flush_log_at_trx_commit = 1"),
        "{err}"
    );
    db.check_durability(Durability::Os).unwrap();
    db.check_durability(Durability::None).unwrap();

    // Changed at run time: asked again at each check.
    let mut conn = mysql::Conn::new(mysql::Opts::from_url(&lax.url).unwrap()).unwrap();
    conn.query_drop("SET GLOBAL innodb_flush_log_at_trx_commit = 0")
        .unwrap();
    std::thread::sleep(VARS_FRESH);
    let err = db.check_durability(Durability::Os).unwrap_err();
    assert!(err.to_string().contains("1 or 2"), "{err}");
    db.check_durability(Durability::None).unwrap();
}

#[test]
fn a_server_killed_mid_producer_loses_and_repeats_nothing() {
    let server = OwnServer::start(&[]);
    let mut config = server_config(&server.url, "ut_restart_");
    config.io_timeout_ms = 3_000;
    config.connect_timeout_ms = 1_000;
    let db = Arc::new(open_db(&config, 1 << 20).unwrap());
    db.commit(vec![put_shard(1, "p")], Durability::Fsync, false)
        .unwrap();
    let target = 400usize;
    let acked = Arc::new(Mutex::new(Vec::<i64>::new()));
    let failures = Arc::new(Mutex::new(0usize));
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (db, acked, failures, stop) =
            (db.clone(), acked.clone(), failures.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut base = 0i64;
            while acked.lock().unwrap().len() < target && !stop.load(Ordering::Relaxed) {
                // A failed append is retried at the same offset, as the
                // shard does.
                match db.commit(
                    vec![put(1, base, &payload(base, 2_000))],
                    Durability::Fsync,
                    false,
                ) {
                    Ok(_) => {
                        acked.lock().unwrap().push(base);
                        base += 10;
                    }
                    Err(e) => {
                        assert_eq!(e.status(), Status::Io, "{e}");
                        *failures.lock().unwrap() += 1;
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < 100 {
        assert!(Instant::now() < deadline, "the producer made no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    server.kill();
    std::thread::sleep(Duration::from_millis(300));
    server.restart();
    while !producer.is_finished() {
        if Instant::now() > deadline {
            stop.store(true, Ordering::Relaxed);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    producer.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    assert_eq!(
        acked.len(),
        target,
        "the producer did not finish after the restart"
    );
    let failures = *failures.lock().unwrap();
    assert!(failures > 0, "the outage was not noticed");
    eprintln!(
        "{target} batches acknowledged across a kill -9 and restart ({failures} failed tries)"
    );

    let listed = listed(&db);
    let stored: Vec<i64> = listed
        .iter()
        .filter_map(|l| l.strip_prefix("batch 1 "))
        .map(|l| l.split(' ').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(
        stored, acked,
        "every acknowledged batch, each once, and nothing else"
    );
    let entries: Vec<Entry> = acked.iter().map(|&b| entry(b, 2_000)).collect();
    let got = read(&db, 1, &entries);
    assert!(got
        .iter()
        .zip(&acked)
        .all(|(b, &base)| b.as_ref() == payload(base, 2_000)));
}

#[test]
fn a_store_runs_shards_on_mysql() {
    let url = test_url();
    let prefix = "ut_store_";
    drop_tables(&url, prefix);
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[shard]\nengine = \"mysql\"\n[mysql]\nurl = \"{url}\"\nkey_prefix = \"{prefix}\"\n"
    );
    let store = Store::open_with_toml(dir.path(), Some(&toml)).unwrap();
    store.create_shard("orders", None).unwrap();
    for i in 0..50u32 {
        let value = format!("order {i}");
        store
            .append("orders", &Record::new(value.as_bytes()))
            .unwrap();
    }
    store.commit_offset("billing", "orders", 20).unwrap();
    assert_eq!(store.delete_records_before("orders", 10).unwrap(), 10);
    let stats = store.shard_stats("orders").unwrap();
    assert!(
        !stats.to_string().contains(url.split('@').next().unwrap()),
        "{stats}"
    );
    store.close().unwrap();

    let store = Store::open_with_toml(dir.path(), Some(&toml)).unwrap();
    let read = store.read("orders", 10, 100, 1 << 20).unwrap();
    assert_eq!(read.records.len(), 40);
    assert_eq!(read.records[0].offset, 10);
    assert_eq!(read.records[0].value.as_deref(), Some(&b"order 10"[..]));
    assert_eq!(read.next_offset, 50);
    assert_eq!(
        store.committed_offset("billing", "orders").unwrap(),
        Some(20)
    );
    store.close().unwrap();
}
