//! The kill -9 crash test of the journal engine. In its own test binary: it
//! spawns processes, and a child between fork and exec briefly shares the
//! parent's descriptors (the store's flock included), which would make
//! other tests' reopen of a store fail with `Locked` now and then.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use mqstore::{Config, Record, Store};

mod common;
use common::Rng;

const CHILD_ENV: &str = "MQS_CRASH_CHILD_DIR";
/// The journal I/O path of the child: `default` (io = "auto", direct),
/// `uring-buffered`, or `pwrite` / `pwrite-buffered` for the fallbacks.
const IO_ENV: &str = "MQS_CRASH_IO";
const CRASH_SHARDS: usize = 3;

fn crash_config(io: &str) -> Config {
    let keys = match io {
        "default" => "",
        "pwrite" => "io = \"pwrite\"\n",
        "pwrite-buffered" => "io = \"pwrite\"\ndirect = false\n",
        "uring-buffered" => "io = \"uring\"\ndirect = false\n",
        other => panic!("unknown {IO_ENV} {other}"),
    };
    // Small segments and frequent periodic checkpoints: kills land during
    // segment rolls and checkpoint writes, and reopen replays from a
    // checkpoint of the running journal most of the time.
    Config::from_toml_str(&format!(
        "[shard]\nengine = \"journal\"\ndurability = \"fsync\"\n[journal]\nsegment_bytes = 131072\n\
         checkpoint_bytes = 16384\n{keys}"
    ))
    .unwrap()
}

/// The child side of the crash test: appends forever from several threads
/// and reports every acknowledged batch on stdout. A no-op in a normal run.
#[test]
fn crash_writer_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let io = std::env::var(IO_ENV).unwrap_or_else(|_| "default".into());
    let store = Arc::new(Store::open(&dir, crash_config(&io)).unwrap());
    for s in 0..CRASH_SHARDS {
        let name = format!("c{s}");
        if store.shard_info(&name).is_err() {
            // Shards keep only their newest records: old batches are dropped
            // and segments reclaimed while the writers run and get killed.
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

/// On every I/O path: the default (io_uring + O_DIRECT where available),
/// io_uring through the page cache, then the pwrite fallback with O_DIRECT
/// and through the page cache (`MQS_CRASH_MODES=a,b` picks some). One
/// after the other in one test: tests running in parallel would share
/// their store locks with each other's children between fork and exec.
#[test]
fn kill_9_loses_no_acknowledged_record() {
    let modes = std::env::var("MQS_CRASH_MODES")
        .unwrap_or_else(|_| "default,uring-buffered,pwrite,pwrite-buffered".into());
    for io in modes.split(',') {
        if io.starts_with("uring")
            && mqstore::Store::open_with_toml(
                tempfile::tempdir().unwrap().path(),
                Some("[shard]\nengine = \"journal\"\n[journal]\nio = \"uring\"\n"),
            )
            .and_then(|s| s.create_shard("probe", None).map(|_| ()))
            .is_err()
        {
            // tests/journal_io.rs asserts the fallback and the error.
            eprintln!("{io}: io_uring unavailable here, path not run");
            continue;
        }
        kill_9_cycles(io);
    }
}

fn kill_9_cycles(io: &str) {
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
    let mut clean_ckpt: Option<Vec<u8>> = None;
    let mut from_periodic = 0usize;
    for cycle in 0..cycles {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash_writer_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .env(IO_ENV, io)
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
                panic!("child exited early in cycle {cycle}");
            }
            if record(&line, &mut acked) {
                seen += 1;
            }
        }
        // SAFETY-free kill: SIGKILL by pid, the child we spawned.
        child.kill().unwrap();
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

        // A checkpoint other than the one the last clean close left was
        // written by the child's checkpointer while it appended.
        let ckpt_file = dir.path().join("journal").join("index.ckpt");
        let periodic = std::fs::read(&ckpt_file).ok() != clean_ckpt;
        let store = Store::open(dir.path(), crash_config(io)).unwrap();
        if let Some((shard, _)) = acked.iter().next() {
            let stats = store.shard_stats(shard).unwrap();
            let path = stats["engine_stats"]["journal"]["io"].as_str().unwrap();
            assert_eq!(
                path.ends_with("+direct"),
                !io.ends_with("buffered"),
                "{path}"
            );
            if io != "default" {
                assert!(path.starts_with(io.split('-').next().unwrap()), "{path}");
            }
        }
        for (shard, records) in &acked {
            let info = store.shard_info(shard).unwrap();
            let last = *records.keys().last().unwrap();
            assert!(
                info.next_offset > last,
                "cycle {cycle}: {shard} lost its tail"
            );
            let first = info.first_offset;
            assert!(
                info.next_offset - first >= info.next_offset.min(297),
                "cycle {cycle}: {shard} retention kept too little: {info:?}"
            );
            let got = store.read(shard, first, usize::MAX, usize::MAX).unwrap();
            let offsets: Vec<i64> = got.records.iter().map(|r| r.offset).collect();
            assert_eq!(
                offsets,
                (first..info.next_offset).collect::<Vec<_>>(),
                "cycle {cycle}: {shard} offsets dense and in order"
            );
            for (offset, value) in records {
                if *offset < first {
                    continue; // dropped by retention
                }
                let r = &got.records[(*offset - first) as usize];
                assert_eq!(
                    std::str::from_utf8(&r.value).unwrap(),
                    value,
                    "cycle {cycle}: {shard}@{offset}"
                );
            }
        }
        let shard = store.list_shards().unwrap()[0].clone();
        let journal = &store.shard_stats(&shard).unwrap()["engine_stats"]["journal"];
        if periodic && journal["checkpoint_used"] == true {
            from_periodic += 1;
        }
        store.close().unwrap();
        clean_ckpt = std::fs::read(&ckpt_file).ok();
    }
    assert!(
        from_periodic > 0,
        "{io}: no reopen replayed from a periodic checkpoint in {cycles} cycles"
    );
    let mut segments: Vec<String> = std::fs::read_dir(dir.path().join("journal"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    segments.sort();
    eprintln!(
        "{io}: {cycles} kill -9 cycles, {total_acks} acknowledged batches verified, \
         {from_periodic} reopens from a periodic checkpoint; segments left: {segments:?}"
    );
}
