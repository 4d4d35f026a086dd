//! The kill -9 crash test of the File engine (the Journal's, on per-shard
//! segment files). In its own test binary: it spawns processes, and a child
//! between fork and exec briefly shares the parent's descriptors (the
//! store's flock included), which would make other tests' reopen of a store
//! fail with `Locked` now and then.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use mqstore::{Config, Record, Store};

mod common;
use common::Rng;

const CHILD_ENV: &str = "MQS_FILE_CRASH_CHILD_DIR";
/// The child's configuration: `fsync`, `os` (acknowledged after write(2),
/// which a killed process cannot lose), `os-interval` (the flusher thread
/// fdatasyncing underneath) or `os-evict` (more shards than open files, so
/// descriptors are closed and reopened while appends run).
const MODE_ENV: &str = "MQS_FILE_CRASH_MODE";
const CRASH_SHARDS: usize = 6;

fn crash_config(mode: &str) -> Config {
    let (durability, file) = match mode {
        "fsync" => ("fsync", ""),
        "os" => ("os", ""),
        "os-interval" => ("os", "flush = \"interval\"\nflush_interval_ms = 2\n"),
        "os-evict" => ("os", "max_open_files = 4\n"),
        other => panic!("unknown {MODE_ENV} {other}"),
    };
    Config::from_toml_str(&format!(
        "[shard]\nengine = \"file\"\ndurability = \"{durability}\"\nsegment_bytes = 65536\n\
         [file]\n{file}"
    ))
    .unwrap()
}

/// The child side: appends forever from several threads and reports every
/// acknowledged batch on stdout. A no-op in a normal run.
#[test]
fn crash_writer_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mode = std::env::var(MODE_ENV).unwrap_or_else(|_| "fsync".into());
    let store = Arc::new(Store::open(&dir, crash_config(&mode)).unwrap());
    for s in 0..CRASH_SHARDS {
        let name = format!("c{s}");
        if store.shard_info(&name).is_err() {
            // Shards keep only their newest records: old batches are dropped
            // and segment files removed while the writers run and get killed.
            store
                .create_shard(&name, Some("retention_records = 300"))
                .unwrap();
        }
    }
    let pid = std::process::id();
    let counter = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let store = store.clone();
            let counter = counter.clone();
            std::thread::spawn(move || {
                let mut rng = Rng::new(pid as u64 * 31 + t);
                loop {
                    let shard = format!("c{}", rng.below(CRASH_SHARDS as u64));
                    let n = 1 + rng.below(4) as usize;
                    let values: Vec<String> = (0..n)
                        .map(|_| {
                            let id = counter.fetch_add(1, Ordering::Relaxed);
                            let pad = "p".repeat(rng.below(600) as usize);
                            format!("{pid}.{id}.{pad}")
                        })
                        .collect();
                    let records: Vec<Record<'_>> =
                        values.iter().map(|v| Record::new(v.as_bytes())).collect();
                    let base = store.append_batch(&shard, &records).unwrap();
                    let line = format!("ACK {shard} {base} {}\n", values.join(" "));
                    let mut out = std::io::stdout().lock();
                    out.write_all(line.as_bytes()).unwrap();
                    out.flush().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

/// Every mode, one after the other in one test (`MQS_FILE_CRASH_MODES=a,b`
/// picks some): tests running in parallel would share their store locks
/// with each other's children between fork and exec.
#[test]
fn kill_9_loses_no_acknowledged_record() {
    let modes = std::env::var("MQS_FILE_CRASH_MODES")
        .unwrap_or_else(|_| "fsync,os,os-interval,os-evict".into());
    for mode in modes.split(',') {
        kill_9_cycles(mode);
    }
}

fn kill_9_cycles(mode: &str) {
    let cycles: usize = std::env::var("MQS_CRASH_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let mut rng = Rng::seeded();
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    // shard -> offset -> value, every acknowledged record so far.
    let mut acked: BTreeMap<String, BTreeMap<i64, String>> = BTreeMap::new();
    let mut total_acks = 0usize;
    let mut truncated = 0u64;
    for cycle in 0..cycles {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash_writer_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .env(MODE_ENV, mode)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let target = 1 + rng.below(150) as usize;
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        let mut seen = 0;
        let mut line = String::new();
        let record = |line: &str, acked: &mut BTreeMap<String, BTreeMap<i64, String>>| {
            let Some(rest) = line.strip_prefix("ACK ") else {
                return false;
            };
            if !line.ends_with('\n') {
                return false; // cut off by the kill: not a complete ack
            }
            let mut parts = rest.split_whitespace();
            let shard = parts.next().unwrap().to_string();
            let base: i64 = parts.next().unwrap().parse().unwrap();
            let map = acked.entry(shard).or_default();
            for (i, value) in parts.enumerate() {
                let previous = map.insert(base + i as i64, value.to_string());
                assert!(
                    previous.is_none(),
                    "offset {} acknowledged twice",
                    base + i as i64
                );
            }
            true
        };
        while seen < target {
            line.clear();
            if reader.read_line(&mut line).unwrap() == 0 {
                panic!("{mode}: child exited early in cycle {cycle}");
            }
            if record(&line, &mut acked) {
                seen += 1;
            }
        }
        child.kill().unwrap(); // SIGKILL: no destructor, no flush, no close
        child.wait().unwrap();
        // Acks printed before death are acknowledged too.
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap() == 0 {
                break;
            }
            if record(&line, &mut acked) {
                seen += 1;
            }
        }
        total_acks += seen;

        let store = Store::open(dir.path(), crash_config(mode)).unwrap();
        for (shard, records) in &acked {
            let info = store.shard_info(shard).unwrap();
            let stats = store.shard_stats(shard).unwrap();
            truncated = truncated.max(
                stats["engine_stats"]["engine"]["truncated_bytes"]
                    .as_u64()
                    .unwrap(),
            );
            let last = *records.keys().last().unwrap();
            assert!(
                info.next_offset > last,
                "{mode} cycle {cycle}: {shard} lost its tail ({info:?}, last ack {last})"
            );
            let first = info.first_offset;
            assert!(
                info.next_offset - first >= info.next_offset.min(297),
                "{mode} cycle {cycle}: {shard} retention kept too little: {info:?}"
            );
            let got = store.read(shard, first, usize::MAX, usize::MAX).unwrap();
            let offsets: Vec<i64> = got.records.iter().map(|r| r.offset).collect();
            assert_eq!(
                offsets,
                (first..info.next_offset).collect::<Vec<_>>(),
                "{mode} cycle {cycle}: {shard} offsets dense and in order"
            );
            for (offset, value) in records {
                if *offset < first {
                    continue; // dropped by retention
                }
                let r = &got.records[(*offset - first) as usize];
                assert_eq!(
                    std::str::from_utf8(&r.value).unwrap(),
                    value,
                    "{mode} cycle {cycle}: {shard}@{offset}"
                );
            }
        }
        store.close().unwrap();
    }
    eprintln!(
        "{mode}: {cycles} kill -9 cycles, {total_acks} acknowledged batches verified \
         (largest torn tail cut in one open: {truncated} bytes)"
    );
}
