//! The `mqstore` tool, run as a program against stores this test builds
//! with the library: each command's output and exit code, a store held by
//! another open (refused, or waited for), and damaged stores.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use mqstore::{Config, Record, Store};

fn tool() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mqstore"))
}

fn run(args: &[&str]) -> Output {
    tool().args(args).output().expect("the tool runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        stdout(out),
        stderr(out)
    );
}

/// The library's defaults but 1 MiB journal segments: the tests read and
/// damage segment files whole.
fn small_config() -> Config {
    Config::from_toml_str("[journal]\nsegment_bytes = 1048576\n").unwrap()
}

/// A journal shard "orders" (30 batches of 10, offsets 3 and 4 deleted) and
/// a file shard "events" (20 single records with a header and a tag).
fn sample_store(dir: &Path) {
    let store = Store::open(dir, small_config()).unwrap();
    store.create_shard("orders", None).unwrap();
    store
        .create_shard("events", Some("engine = \"file\"\ndurability = \"os\"\n"))
        .unwrap();
    for i in 0..30 {
        let values: Vec<String> = (0..10).map(|j| format!("order-{i:03}-{j}")).collect();
        let records: Vec<Record<'_>> = values
            .iter()
            .map(|v| Record::new(v.as_bytes()).with_key(b"k"))
            .collect();
        store.append_batch("orders", &records).unwrap();
    }
    for i in 0..20 {
        let value = format!("event-{i}");
        let mut record = Record::new(value.as_bytes());
        record.headers.push(mqstore::Header {
            key: "trace",
            value: Some(b"abc"),
        });
        record.tags.push("eu");
        store.append("events", &record).unwrap();
    }
    assert_eq!(store.delete_by_offsets("orders", &[3, 4]).unwrap(), 2);
    store.close().unwrap();
}

#[test]
fn info_lists_shards_watermarks_and_engines() {
    let dir = tempfile::tempdir().unwrap();
    sample_store(dir.path());
    let path = dir.path().to_str().unwrap();
    let out = run(&["info", path]);
    assert_exit(&out, 0);
    let text = stdout(&out);
    assert!(
        text.contains("engines in this build: memory, journal, file"),
        "{text}"
    );
    let orders = text.lines().find(|l| l.starts_with("orders")).unwrap();
    let fields: Vec<&str> = orders.split_whitespace().collect();
    assert_eq!(
        fields[..6],
        ["orders", "journal", "fsync", "0", "300", "298"]
    );

    let out = run(&["info", path, "--json"]);
    assert_exit(&out, 0);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["version"], mqstore::VERSION);
    let events = &json["shards"][0];
    assert_eq!(events["name"], "events");
    assert_eq!(events["engine"], "file");
    assert_eq!(events["next_offset"], 20);
    assert_eq!(events["records"], 20);
    assert!(events["bytes"].as_u64().unwrap() > 0);
}

#[test]
fn stats_prints_the_store_or_one_shard_as_json() {
    let dir = tempfile::tempdir().unwrap();
    sample_store(dir.path());
    let path = dir.path().to_str().unwrap();
    let out = run(&["stats", path]);
    assert_exit(&out, 0);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["shard_count"], 2);
    assert_eq!(json["engines"]["journal"]["records"], 298);
    let out = run(&["stats", path, "events"]);
    assert_exit(&out, 0);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["records"], 20);
    let out = run(&["stats", path, "nope"]);
    assert_exit(&out, 1);
    assert!(stderr(&out).contains("nope"), "{}", stderr(&out));
}

#[test]
fn dump_shows_batches_and_records_as_stored() {
    let dir = tempfile::tempdir().unwrap();
    sample_store(dir.path());
    let path = dir.path().to_str().unwrap();
    let out = run(&["dump", path, "orders", "--json", "--values"]);
    assert_exit(&out, 0);
    let batches: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(batches.len(), 30);
    // The first batch was rewritten without the two deleted records.
    assert_eq!(batches[0]["base_offset"], 0);
    assert_eq!(batches[0]["last_offset"], 9);
    assert_eq!(batches[0]["count"], 8);
    let offsets: Vec<i64> = batches[0]["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["offset"].as_i64().unwrap())
        .collect();
    assert_eq!(offsets, [0, 1, 2, 5, 6, 7, 8, 9]);
    assert!(batches
        .iter()
        .all(|b| b["crc_valid"] == true && b["magic"] == 2));
    assert_eq!(batches[29]["records"][9]["value"], "order-029-9");
    assert_eq!(batches[29]["records"][9]["key"], "k");

    // From an offset, at most N records, the text form.
    let out = run(&[
        "dump",
        path,
        "events",
        "--from",
        "5",
        "--max-records",
        "2",
        "--values",
    ]);
    assert_exit(&out, 0);
    let text = stdout(&out);
    let records: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("| offset:"))
        .collect();
    assert_eq!(records.len(), 2, "{text}");
    assert!(records[0].starts_with("| offset: 5 "), "{text}");
    assert!(records[0].contains("headerKeys: [trace]") && records[0].contains("tags: [eu]"));
    assert!(records[1].contains("payload: event-6"), "{text}");
    assert!(text.contains("isValid: true"));
}

#[test]
fn verify_passes_a_sound_store_and_shows_progress() {
    let dir = tempfile::tempdir().unwrap();
    sample_store(dir.path());
    let out = run(&["verify", dir.path().to_str().unwrap(), "--progress"]);
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("verify: OK: 2 shard(s), 50 batches, 318 records"),
        "{}",
        stdout(&out)
    );
    assert!(stderr(&out).contains("verify: 100.0%"), "{}", stderr(&out));
}

/// Flips one byte of the first occurrence of `needle` in `file`, in place.
fn damage(file: &Path, needle: &[u8]) {
    use std::os::unix::fs::FileExt;
    let bytes = std::fs::read(file).unwrap();
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("{needle:?} is not in {}", file.display()));
    let file = std::fs::OpenOptions::new().write(true).open(file).unwrap();
    file.write_all_at(&[bytes[at] ^ 0xff], at as u64).unwrap();
}

/// Every file under `dir` with its bytes and modification time.
fn snapshot(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>, std::time::SystemTime)> {
    let mut out = Vec::new();
    for item in std::fs::read_dir(dir).unwrap() {
        let item = item.unwrap();
        let meta = item.metadata().unwrap();
        if meta.is_dir() {
            out.extend(snapshot(&item.path()));
        } else {
            let bytes = std::fs::read(item.path()).unwrap();
            out.push((item.path(), bytes, meta.modified().unwrap()));
        }
    }
    out.sort();
    out
}

/// The inspecting commands open the store read-only: they change no file,
/// and run beside another reader (the shared lock) but not a writer.
#[test]
fn inspections_change_no_file_and_share_the_store_with_readers() {
    let dir = tempfile::tempdir().unwrap();
    sample_store(dir.path());
    let path = dir.path().to_str().unwrap();
    let before = snapshot(dir.path());
    let mut reader_config = small_config();
    reader_config.read_only = true;
    let reader = Store::open(dir.path(), reader_config).unwrap();
    for command in [
        vec!["info", path],
        vec!["stats", path],
        vec!["dump", path, "orders"],
        vec!["verify", path],
    ] {
        let out = run(&command);
        assert_exit(&out, 0);
    }
    reader.close().unwrap();
    let after = snapshot(dir.path());
    assert_eq!(
        before.iter().map(|f| &f.0).collect::<Vec<_>>(),
        after.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    for (was, now) in before.iter().zip(&after) {
        assert!(was == now, "'{}' changed", was.0.display());
    }
}

fn journal_segment(dir: &Path) -> std::path::PathBuf {
    dir.join("journal").join(format!("{:020}.log", 0))
}

/// A batch damaged after a clean close: the store opens (its checkpoint
/// spares the replay), but verify reads every batch and fails, naming the
/// shard and the batch; dump marks the batch invalid and fails too.
#[test]
fn verify_fails_on_a_damaged_batch() {
    let dir = tempfile::tempdir().unwrap();
    sample_store(dir.path());
    damage(&journal_segment(dir.path()), b"order-017-3");
    let path = dir.path().to_str().unwrap();
    let out = run(&["verify", path]);
    assert_exit(&out, 1);
    let text = stdout(&out);
    assert!(
        text.contains("shard 'orders': batch at offset 170"),
        "{text}"
    );
    assert!(text.to_lowercase().contains("crc"), "{text}");
    assert!(
        stderr(&out).contains("verify: FAILED: 1 problem(s)"),
        "{}",
        stderr(&out)
    );

    let out = run(&[
        "dump",
        path,
        "orders",
        "--from",
        "170",
        "--max-records",
        "1",
    ]);
    assert_exit(&out, 1);
    assert!(stdout(&out).contains("baseOffset: 170 lastOffset: 179"));
    assert!(stdout(&out).contains("isValid: false"), "{}", stdout(&out));
}

#[test]
fn a_store_open_elsewhere_is_refused_or_waited_for() {
    let dir = tempfile::tempdir().unwrap();
    sample_store(dir.path());
    let path = dir.path().to_str().unwrap();
    let held = Store::open(dir.path(), small_config()).unwrap();
    let out = run(&["info", path]);
    assert_exit(&out, 3);
    assert!(stderr(&out).contains("--wait"), "{}", stderr(&out));

    let mut child = tool()
        .args(["info", path, "--json", "--wait"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The tool says it waits before it blocks on the lock.
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(line.contains("waiting for it to close"), "{line}");
    held.append("events", &Record::new(b"while waiting"))
        .unwrap();
    held.close().unwrap();
    let out = child.wait_with_output().unwrap();
    assert_exit(&out, 0);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["shards"][0]["next_offset"], 21);
}

#[test]
fn bad_arguments_and_directories() {
    let out = run(&["info"]);
    assert_exit(&out, 2);
    let out = run(&["frobnicate"]);
    assert_exit(&out, 2);
    let out = run(&["dump", "x", "y", "--from", "seven"]);
    assert_exit(&out, 2);
    let empty = tempfile::tempdir().unwrap();
    let out = run(&["verify", empty.path().to_str().unwrap()]);
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains("not a store directory"),
        "{}",
        stderr(&out)
    );
    // Refusing a directory that is not a store must not make it one.
    assert!(!empty.path().join("LOCK").exists());
    let out = run(&["--version"]);
    assert_exit(&out, 0);
    assert_eq!(stdout(&out).trim(), format!("mqstore {}", mqstore::VERSION));
}

const CHILD_ENV: &str = "MQSTORE_CLI_TEST_CHILD";

/// Run as a child process by `repair_recovers_a_journal_that_refuses_to_open`:
/// appends with fsync, then exits without closing the store, as a crash
/// would leave it (no checkpoint: the next open replays the journal).
#[test]
fn child_appends_and_dies() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let store = Store::open(&dir, small_config()).unwrap();
    store.create_shard("s", None).unwrap();
    for i in 0..20 {
        let value = format!("rec-{i:04}");
        store.append("s", &Record::new(value.as_bytes())).unwrap();
    }
    // SAFETY: ends the process at once, as kill -9 would; nothing runs after.
    unsafe { libc::_exit(0) };
}

#[test]
fn repair_recovers_a_journal_that_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_appends_and_dies", "--nocapture"])
        .env(CHILD_ENV, dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    // Damage to acknowledged (synced) data in the middle of the journal.
    damage(&journal_segment(dir.path()), b"rec-0005");
    let path = dir.path().to_str().unwrap();

    let out = run(&["verify", path]);
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains("does not open") && stderr(&out).contains("corruption"),
        "{}",
        stderr(&out)
    );
    let out = run(&["repair", path]);
    assert_exit(&out, 0);
    let text = stdout(&out);
    assert!(text.contains("refuses to open"), "{text}");
    assert!(text.contains("repair: done"), "{text}");
    let skipped: u64 = text
        .split("skipped ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no skipped byte count in {text}"));
    assert!(skipped > 0, "{text}");

    let out = run(&["verify", path]);
    assert_exit(&out, 0);
    let out = run(&["dump", path, "s", "--json", "--values"]);
    assert_exit(&out, 0);
    let values: Vec<String> = stdout(&out)
        .lines()
        .flat_map(|l| {
            let batch: serde_json::Value = serde_json::from_str(l).unwrap();
            batch["records"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["value"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    let expected: Vec<String> = (0..20)
        .filter(|i| *i != 5)
        .map(|i| format!("rec-{i:04}"))
        .collect();
    assert_eq!(values, expected);

    // A second repair finds nothing to do.
    let out = run(&["repair", path]);
    assert_exit(&out, 0);
    assert!(stdout(&out).contains("nothing to repair"));
}

#[test]
fn bench_measures_the_disk_and_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&["bench", dir.path().to_str().unwrap(), "--mb", "8", "--json"]);
    assert_exit(&out, 0);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    for key in ["write_gbps", "read_gbps", "write_64k_fdatasync_per_s"] {
        assert!(json["raw"][key].as_f64().unwrap() > 0.0, "{json}");
    }
    for key in [
        "append_1k_batch64_fsync_msgs_per_s",
        "append_1k_batch64_fsync_pipelined_msgs_per_s",
        "read_1k_gbps",
    ] {
        assert!(json["journal"][key].as_f64().unwrap() > 0.0, "{json}");
    }
    // Its scratch directory is gone.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
