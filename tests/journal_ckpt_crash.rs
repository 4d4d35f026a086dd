//! Journal engine: kill -9 after reopening from an index checkpoint. The
//! checkpoint of the last clean close is then behind the journal; recovery
//! loads it and replays only what follows, and every acknowledged record
//! must be there. Its own test binary: a child forked while a parallel test
//! holds a store lock would share it until exec (see tests/journal_crash.rs).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use mqstore::{Config, Record, Store};

mod common;
use common::copy_dir;

const CHILD_ENV: &str = "MQS_CKPT_CRASH_CHILD";
const SHARDS: usize = 2;

fn config() -> Config {
    Config::from_toml_str(
        "[shard]\nengine = \"journal\"\ndurability = \"fsync\"\n[journal]\nsegment_bytes = 1048576\n",
    )
    .unwrap()
}

/// The child: appends forever from two threads, printing each acknowledged
/// batch. A no-op in a normal run.
#[test]
fn ckpt_crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let store = Arc::new(Store::open(&dir, config()).unwrap());
    let pid = std::process::id() as u64;
    let counter = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..2)
        .map(|t| {
            let store = store.clone();
            let counter = counter.clone();
            std::thread::spawn(move || loop {
                let shard = format!("k{}", (counter.load(Ordering::Relaxed) + t) % 2);
                let n = 1 + (counter.load(Ordering::Relaxed) % 3) as usize;
                let values: Vec<String> = (0..n)
                    .map(|_| {
                        let id = counter.fetch_add(1, Ordering::Relaxed);
                        format!("{pid}.{id}.{}", "p".repeat((id % 300) as usize))
                    })
                    .collect();
                let records: Vec<Record<'_>> =
                    values.iter().map(|v| Record::new(v.as_bytes())).collect();
                let base = store.append_batch(&shard, &records).unwrap();
                let line = format!("ACK {shard} {base} {}\n", values.join(" "));
                let mut out = std::io::stdout().lock();
                out.write_all(line.as_bytes()).unwrap();
                out.flush().unwrap();
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

type Acked = BTreeMap<String, BTreeMap<i64, String>>;

fn record(line: &str, acked: &mut Acked) -> bool {
    let Some(rest) = line.strip_prefix("ACK ") else {
        return false;
    };
    if !line.ends_with('\n') {
        return false; // cut off by the kill
    }
    let mut parts = rest.split_whitespace();
    let shard = parts.next().unwrap().to_string();
    let base: i64 = parts.next().unwrap().parse().unwrap();
    let map = acked.entry(shard).or_default();
    for (i, value) in parts.enumerate() {
        assert!(map.insert(base + i as i64, value.to_string()).is_none());
    }
    true
}

#[test]
fn kill_9_after_reopening_from_a_checkpoint_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut acked: Acked = BTreeMap::new();
    {
        let store = Store::open(dir.path(), config()).unwrap();
        for s in 0..SHARDS {
            let name = format!("k{s}");
            store.create_shard(&name, None).unwrap();
            let map = acked.entry(name.clone()).or_default();
            for i in 0..200 {
                let value = format!("before.{i}");
                let offset = store.append(&name, &Record::new(value.as_bytes())).unwrap();
                map.insert(offset, value);
            }
        }
        store.close().unwrap();
    }
    let exe = std::env::current_exe().unwrap();
    for cycle in 0..6u64 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "ckpt_crash_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let target = 10 + (cycle * 97) % 300;
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        let mut seen = 0;
        while seen < target {
            line.clear();
            if reader.read_line(&mut line).unwrap() == 0 {
                panic!("child exited early in cycle {cycle}");
            }
            if record(&line, &mut acked) {
                seen += 1;
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap() == 0 {
                break;
            }
            record(&line, &mut acked);
        }

        // Odd cycles check a copy, so the next child opens the crashed
        // journal itself, with a checkpoint two or more crashes behind;
        // even ones reopen and close it, leaving a fresh checkpoint.
        let copy = tempfile::tempdir().unwrap();
        let path = if cycle % 2 == 1 {
            copy_dir(dir.path(), copy.path());
            copy.path()
        } else {
            dir.path()
        };
        let store = Store::open(path, config()).unwrap();
        let stats = store.shard_stats("k0").unwrap();
        let journal = &stats["engine_stats"]["journal"];
        assert_eq!(journal["checkpoint_used"], true, "cycle {cycle}: {journal}");
        let total: usize = acked.values().map(|m| m.len()).sum();
        let replayed = journal["recovered_entries"].as_u64().unwrap() as usize;
        assert!(replayed < total, "cycle {cycle}: replayed {replayed}");
        for (shard, records) in &acked {
            let info = store.shard_info(shard).unwrap();
            assert_eq!(info.first_offset, 0);
            assert!(
                info.next_offset > *records.keys().last().unwrap(),
                "cycle {cycle}: {shard} lost its tail"
            );
            let got = store.read(shard, 0, usize::MAX, usize::MAX).unwrap();
            let offsets: Vec<i64> = got.records.iter().map(|r| r.offset).collect();
            assert_eq!(offsets, (0..info.next_offset).collect::<Vec<_>>());
            for (offset, value) in records {
                let r = &got.records[*offset as usize];
                assert_eq!(
                    std::str::from_utf8(&r.value).unwrap(),
                    value,
                    "cycle {cycle}: {shard}@{offset}"
                );
            }
        }
        store.close().unwrap();
    }
}
