//! Recovery's peak RSS does not grow with the journal it replays: a fresh
//! process replays a 160 MiB journal (no index checkpoint) and its peak
//! resident set stays far below that. In its own test binary, like the
//! crash tests: it spawns a process that must measure only itself.

use std::process::Command;

use mqstore::{Record, Store};

const CHILD_ENV: &str = "MQS_RSS_CHILD_DIR";
const JOURNAL_BYTES: u64 = 160 << 20;
const RECORD_BYTES: usize = 4096;
const BATCH_RECORDS: usize = 16;

fn config() -> &'static str {
    "[shard]\nengine = \"journal\"\ndurability = \"none\"\n"
}

/// The peak resident set of this process so far, KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/self/status");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The child: opens the store (a full replay), reads one record from each
/// end, and prints its peak RSS and the record count.
#[test]
#[ignore = "the child process of the recovery RSS test, which runs it"]
fn recovery_rss_child() {
    let dir = std::env::var(CHILD_ENV).expect("run by the recovery RSS test");
    let store = Store::open_with_toml(&dir, Some(config())).unwrap();
    let info = store.shard_info("s").unwrap();
    let last = store
        .read("s", info.next_offset - 1, 1, usize::MAX)
        .unwrap();
    assert_eq!(last.records[0].value_bytes().len(), RECORD_BYTES);
    let stats = store.shard_stats("s").unwrap();
    let journal = &stats["engine_stats"]["journal"];
    assert_eq!(journal["checkpoint_used"], false, "{journal}");
    println!("PEAK_RSS_KIB {} RECORDS {}", peak_rss_kib(), info.records);
}

#[test]
fn replaying_a_journal_takes_far_less_memory_than_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with_toml(dir.path(), Some(config())).unwrap();
    store.create_shard("s", None).unwrap();
    let value = vec![b'r'; RECORD_BYTES];
    let batch: Vec<Record<'_>> = (0..BATCH_RECORDS).map(|_| Record::new(&value)).collect();
    let batches = JOURNAL_BYTES / (RECORD_BYTES * BATCH_RECORDS) as u64;
    for _ in 0..batches {
        store.append_batch("s", &batch).unwrap();
    }
    store.close().unwrap();
    // Without the index checkpoint a clean close leaves, the open replays
    // the whole journal.
    std::fs::remove_file(dir.path().join("journal").join("index.ckpt")).unwrap();

    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "recovery_rss_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "child failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.split("PEAK_RSS_KIB ").nth(1))
        .unwrap_or_else(|| panic!("no report from the child: {stdout}"));
    let mut fields = line.split_whitespace();
    let peak_kib: u64 = fields.next().unwrap().parse().unwrap();
    let records: u64 = fields.nth(1).unwrap().parse().unwrap();
    assert_eq!(
        records,
        batches * BATCH_RECORDS as u64,
        "everything replayed"
    );
    let journal_kib = JOURNAL_BYTES >> 10;
    eprintln!("replayed {journal_kib} KiB of journal with a peak RSS of {peak_kib} KiB");
    assert!(
        peak_kib < journal_kib / 2,
        "peak RSS {peak_kib} KiB while replaying {journal_kib} KiB of journal"
    );
}
