//! The RocksDB engine's bad input from outside the store: its database
//! directory locked by another process (RocksDB's own LOCK, e.g. a RocksDB
//! tool left running), and damaged or missing RocksDB files. In its own
//! test binary: it spawns a process.
#![cfg(feature = "rocksdb")]

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use mqstore::{Config, Record, Status, Store};

const CHILD_ENV: &str = "MQS_ROCKSDB_LOCK_CHILD_DIR";
const CONFIG: &str = "[shard]\nengine = \"rocksdb\"\n";

fn open(dir: &std::path::Path) -> mqstore::Result<Store> {
    Store::open(dir, Config::from_toml_str(CONFIG).unwrap())
}

/// The child: opens the store's database directly with the rocksdb crate,
/// as a RocksDB tool would, says so, and holds it until its stdin closes.
#[test]
#[ignore = "the child process of the lock test, which runs it"]
fn lock_holder_child() {
    let dir = std::env::var(CHILD_ENV).expect("run by the lock test");
    let path = std::path::Path::new(&dir).join("rocksdb");
    let options = rocksdb::Options::default();
    let families = rocksdb::DB::list_cf(&options, &path).unwrap();
    let db = rocksdb::DB::open_cf(&options, &path, families).unwrap();
    println!("\nHOLDING");
    std::io::stdout().flush().unwrap();
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    drop(db);
}

#[test]
fn a_database_locked_by_another_process_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).unwrap();
    store.create_shard("s", None).unwrap();
    store.append("s", &Record::new(b"kept")).unwrap();
    store.close().unwrap();

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "lock_holder_child", "--ignored", "--nocapture"])
        .env(CHILD_ENV, dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(
        lines.any(|l| l.unwrap() == "HOLDING"),
        "the child did not open the database"
    );
    let err = open(dir.path()).unwrap_err();
    assert_eq!(err.status(), Status::Locked, "{err}");
    let message = err.to_string();
    assert!(message.contains("rocksdb"), "{message}");
    assert!(message.contains("is locked"), "{message}");
    // The failed open left the store unlocked and its data intact.
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    let store = open(dir.path()).unwrap();
    let read = store.read("s", 0, 10, 1 << 20).unwrap();
    assert_eq!(read.records[0].value.as_deref(), Some(&b"kept"[..]));
    store.close().unwrap();
}

/// RocksDB files gone or damaged: a clear error at open, never a crash.
#[test]
fn missing_or_damaged_rocksdb_files_fail_the_open() {
    type Damage = fn(&std::path::Path);
    let damages: [(&str, Damage, Status); 3] = [
        (
            "CURRENT names a missing MANIFEST",
            |db| std::fs::write(db.join("CURRENT"), "MANIFEST-999999\n").unwrap(),
            Status::Corruption,
        ),
        (
            // A MANIFEST cut short, or damaged in its last record, is a
            // torn tail RocksDB recovers from (a crash in its last write
            // leaves one); one with no valid record is damage.
            "MANIFEST overwritten",
            |db| {
                for e in std::fs::read_dir(db).unwrap() {
                    let path = e.unwrap().path();
                    let name = path.file_name().unwrap().to_string_lossy().into_owned();
                    if name.starts_with("MANIFEST-") {
                        let len = std::fs::metadata(&path).unwrap().len() as usize;
                        std::fs::write(&path, vec![0x5a; len]).unwrap();
                    }
                }
            },
            Status::Corruption,
        ),
        (
            "a table file gone",
            |db| {
                for e in std::fs::read_dir(db).unwrap() {
                    let path = e.unwrap().path();
                    if path.extension().is_some_and(|x| x == "sst") {
                        std::fs::remove_file(path).unwrap();
                    }
                }
            },
            Status::Corruption,
        ),
    ];
    for (what, damage, status) in damages {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path()).unwrap();
        // `none` shards are flushed to table files by a clean close.
        store
            .create_shard("s", Some("durability = \"none\""))
            .unwrap();
        store.append("s", &Record::new(b"v")).unwrap();
        store.close().unwrap();
        damage(&dir.path().join("rocksdb"));
        let err = open(dir.path())
            .err()
            .unwrap_or_else(|| panic!("{what}: opened"));
        assert_eq!(err.status(), status, "{what}: {err}");
        assert!(err.to_string().contains("rocksdb"), "{what}: {err}");
    }
}
