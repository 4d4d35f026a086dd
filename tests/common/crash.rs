//! The kill -9 crash test, shared by the persistent engines' test binaries:
//! a child process (the test binary re-run on its `crash_writer_child`
//! test) appends from several threads and prints every acknowledged batch;
//! the parent kills it at a random ack, reopens the store and checks that
//! every acknowledged record is there, intact, with offsets dense.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use mqstore::{Record, Store};

use super::Rng;

/// Every acknowledged record so far: shard → offset → value.
pub type Acked = BTreeMap<String, BTreeMap<i64, String>>;

/// Retention of the child's shards: old batches are dropped (and their
/// files or segments removed) while the writers run and get killed.
pub const RETAINED_RECORDS: i64 = 300;

/// Kill cycles per mode: `MQS_CRASH_CYCLES`, 20 by default (`make
/// crash-long` asks for 500).
pub fn cycles() -> usize {
    std::env::var("MQS_CRASH_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20)
}

/// How the child's threads append.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Appends {
    /// `append_batch`: acknowledged when it returns.
    Blocking,
    /// `append_batch_nowait` with up to `PIPELINE_WINDOW` batches in
    /// flight per thread: a batch is acknowledged (printed) only once
    /// `wait_durable` on its last offset returned.
    Pipelined,
}

const PIPELINE_WINDOW: usize = 8;

/// The child's side: creates shards `c0` … `c{shards - 1}` if needed, then
/// appends forever from 4 threads, printing `ACK <shard> <base> <values…>`
/// per acknowledged batch.
pub fn append_and_ack_forever(store: Store, shards: usize, appends: Appends) {
    let store = Arc::new(store);
    for s in 0..shards {
        let name = format!("c{s}");
        if store.shard_info(&name).is_err() {
            let options = format!("retention_records = {RETAINED_RECORDS}");
            store.create_shard(&name, Some(&options)).unwrap();
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
                let ack = |shard: &str, base: i64, values: &[String]| {
                    let line = format!("ACK {shard} {base} {}\n", values.join(" "));
                    let mut out = std::io::stdout().lock();
                    out.write_all(line.as_bytes()).unwrap();
                    out.flush().unwrap();
                };
                let mut in_flight = std::collections::VecDeque::new();
                loop {
                    let shard = format!("c{}", rng.below(shards as u64));
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
                    if appends == Appends::Blocking {
                        let base = store.append_batch(&shard, &records).unwrap();
                        ack(&shard, base, &values);
                        continue;
                    }
                    if in_flight.len() == PIPELINE_WINDOW {
                        let (shard, base, values): (String, i64, Vec<String>) =
                            in_flight.pop_front().unwrap();
                        let last = base + values.len() as i64 - 1;
                        store.wait_durable(&shard, last).unwrap();
                        ack(&shard, base, &values);
                    }
                    let base = store.append_batch_nowait(&shard, &records).unwrap();
                    in_flight.push_back((shard, base, values));
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

/// Records one complete `ACK` line; false for anything else (a line cut
/// off by the kill is not an acknowledgement the child finished printing).
fn record(line: &str, acked: &mut Acked) -> bool {
    let Some(rest) = line.strip_prefix("ACK ") else {
        return false;
    };
    if !line.ends_with('\n') {
        return false;
    }
    let mut parts = rest.split_whitespace();
    let shard = parts.next().unwrap().to_string();
    let base: i64 = parts.next().unwrap().parse().unwrap();
    let map = acked.entry(shard).or_default();
    for (i, value) in parts.enumerate() {
        let offset = base + i as i64;
        let previous = map.insert(offset, value.to_string());
        assert!(previous.is_none(), "offset {offset} acknowledged twice");
    }
    true
}

/// Runs one child (`envs` tell it the store and its mode) until it has
/// acknowledged a random number of batches, SIGKILLs it, and collects every
/// ack it printed before dying. Returns how many batches it acknowledged.
pub fn run_child_and_kill(
    rng: &mut Rng,
    envs: &[(&str, &OsStr)],
    acked: &mut Acked,
    label: &str,
) -> usize {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_writer_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let target = 1 + rng.below(150) as usize;
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut seen = 0;
    let mut line = String::new();
    while seen < target {
        line.clear();
        if reader.read_line(&mut line).unwrap() == 0 {
            panic!("{label}: child exited early");
        }
        if record(&line, acked) {
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
        if record(&line, acked) {
            seen += 1;
        }
    }
    seen
}

/// Every acknowledged record that retention kept is in `store`, intact
/// and in order, and each shard's offsets are dense.
pub fn verify(store: &Store, acked: &Acked, label: &str) {
    for (shard, records) in acked {
        let info = store.shard_info(shard).unwrap();
        let last = *records.keys().last().unwrap();
        assert!(
            info.next_offset > last,
            "{label}: {shard} lost its tail ({info:?}, last ack {last})"
        );
        let first = info.first_offset;
        // Retention drops whole batches (of at most 4 records).
        let kept = info.next_offset.min(RETAINED_RECORDS - 3);
        assert!(
            info.next_offset - first >= kept,
            "{label}: {shard} retention kept too little: {info:?}"
        );
        let got = store.read(shard, first, usize::MAX, usize::MAX).unwrap();
        let offsets: Vec<i64> = got.records.iter().map(|r| r.offset).collect();
        assert_eq!(
            offsets,
            (first..info.next_offset).collect::<Vec<_>>(),
            "{label}: {shard} offsets dense and in order"
        );
        for (offset, value) in records {
            if *offset < first {
                continue; // dropped by retention
            }
            let r = &got.records[(*offset - first) as usize];
            assert_eq!(
                std::str::from_utf8(&r.value).unwrap(),
                value,
                "{label}: {shard}@{offset}"
            );
        }
    }
}
