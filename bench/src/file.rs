//! The File engine's suite, run when the build has the engine: 1 KiB
//! appends with `os` durability, tail reads and sendfile_to_fd beside the
//! raw baselines, and the edge footprint — a child process on the `edge`
//! preset appending across 1,000 shards and reading everything back, whose
//! peak RSS (getrusage of the child) is the figure the issue bounds at
//! 100 MB.
//!
//! `file_engine(results)` in main.rs has no plan or directory to hand over,
//! so both come from the command line the engine suite process was started
//! with (`--isolated-child --dir DIR [--quick]`, see `engines_isolated`).

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mqstore::{Config, Durability, EngineKind, Preset, Record, Store};
use serde_json::json;

use crate::engine::{self, to_io, AppendSpec, APPEND_RETENTION_BYTES, FETCH_BYTES};
use crate::util;
use crate::{Plan, Results};

/// The file metrics the issue names (plus the reads beside them).
pub const ISSUE_METRICS: [(&str, &str); 4] = [
    ("file.append_1k_batch64_os.msgs_per_s", "msgs/s"),
    ("file.edge_1000shards.peak_rss_mb", "MiB"),
    ("file.read_tail_1k.gbps", "GB/s"),
    ("file.sendfile_1k.gbps", "GB/s"),
];

const EDGE_SHARDS: usize = 1000;

/// Entry point from main.rs's `file_engine`.
pub fn run_from_args(results: &mut Results) {
    if !EngineKind::File.is_available() {
        for (name, unit) in ISSUE_METRICS {
            results.absent(name, unit, "engine 'file' is not built");
        }
        return;
    }
    let args: Vec<String> = std::env::args().collect();
    let dir = args
        .iter()
        .position(|a| a == "--dir")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from);
    let (true, Some(dir)) = (args.iter().any(|a| a == "--isolated-child"), dir) else {
        // Only the engine suite process runs the workloads; the parent calls
        // this after that process failed, to name the metrics it lost.
        for (name, unit) in ISSUE_METRICS {
            results.failed(
                name,
                unit,
                "the engine suite process failed before reporting file metrics",
            );
        }
        return;
    };
    let plan = if args.iter().any(|a| a == "--quick") {
        Plan::quick()
    } else {
        Plan::full()
    };
    match tempfile::Builder::new().prefix("file-").tempdir_in(&dir) {
        Ok(base) => run(base.path(), &plan, results),
        Err(e) => {
            for (name, unit) in ISSUE_METRICS {
                results.failed(name, unit, &e.to_string());
            }
        }
    }
}

pub fn run(base: &Path, plan: &Plan, results: &mut Results) {
    let secs = Duration::from_secs_f64(plan.headline_secs);
    for durability in [Durability::Os, Durability::Fsync] {
        let options = engine::options(EngineKind::File, durability, APPEND_RETENTION_BYTES);
        let spec = AppendSpec {
            record_size: 1024,
            batch: 64,
            threads: 1,
            shards: 1,
            window: 0,
        };
        let mut p = spec.params(&options);
        p["seconds_per_rep"] = json!(plan.headline_secs);
        p["flush"] = json!("never");
        results.stats_or_failed(
            &format!("file.append_1k_batch64_{}.msgs_per_s", durability.name()),
            engine::append_throughput(base, &options, spec, secs, u64::MAX, plan.reps),
            "msgs/s",
            p,
        );
    }

    let read_options = engine::options(EngineKind::File, Durability::Os, 0);
    let p = json!({
        "record_bytes": 1024, "written_in_batches_of": 64, "shard_bytes": plan.read_bytes,
        "request_bytes": FETCH_BYTES, "durability_when_written": "os",
        "max_memory_mb": Config::default().file.max_memory_mb,
        "measured": engine::READ_MEASURED,
    });
    match engine::prefilled(base, &read_options, 1024, 64, plan.read_bytes) {
        Ok((bench, end)) => {
            results.stats_or_failed(
                "file.read_tail_1k.gbps",
                util::repeat(plan.reps, || engine::read_all(&bench.store, end)),
                "GB/s",
                p.clone(),
            );
            results.stats_or_failed(
                "file.sendfile_1k.gbps",
                util::repeat(plan.reps, || engine::sendfile_all(&bench.store, end)),
                "GB/s",
                p,
            );
        }
        Err(e) => {
            results.failed("file.read_tail_1k.gbps", "GB/s", &e.to_string());
            results.failed("file.sendfile_1k.gbps", "GB/s", &e.to_string());
        }
    }

    // The full run's 5 GiB is the issue's figure; a quick run writes 256 MiB
    // (marked quick like every quick metric).
    let total = if plan.quick { 256 << 20 } else { 5 << 30 };
    let p = json!({
        "preset": "edge", "max_memory_mb": 100, "shards": EDGE_SHARDS, "record_bytes": 1024,
        "batch": 64, "durability": "os", "bytes_appended": total,
        "workload": "append round-robin over the shards, then read every shard back \
                     (1 MiB reads, every value byte summed with util::touch)",
        "measured": "ru_maxrss of the child process (wait4), which includes the pages \
                     it inherited from the harness at fork",
    });
    match edge_footprint(base, total) {
        Ok(edge) => {
            let mut p = p;
            p["child_rss_at_start_mb"] = json!(edge.start_rss_kib as f64 / 1024.0);
            p["append_s"] = json!(edge.append_s);
            p["read_s"] = json!(edge.read_s);
            p["append_gbps"] = json!(total as f64 / edge.append_s / 1e9);
            p["read_gbps"] = json!(total as f64 / edge.read_s / 1e9);
            results.value(
                "file.edge_1000shards.peak_rss_mb",
                edge.peak_rss_kib as f64 / 1024.0,
                "MiB",
                p,
            );
        }
        Err(e) => results.failed("file.edge_1000shards.peak_rss_mb", "MiB", &e.to_string()),
    }
}

struct Edge {
    peak_rss_kib: u64,
    start_rss_kib: u64,
    append_s: f64,
    read_s: f64,
}

/// Runs `edge_child` in a forked child and returns its peak RSS. A fork,
/// not an exec: main.rs has no entry point for it. That is safe only in a
/// single-threaded process, which is checked first.
fn edge_footprint(base: &Path, total: u64) -> io::Result<Edge> {
    let threads = std::fs::read_dir("/proc/self/task")?.count();
    if threads != 1 {
        return Err(io::Error::other(format!(
            "the harness runs {threads} threads; forking the edge child is only safe with one"
        )));
    }
    let dir = tempfile::Builder::new().prefix("edge-").tempdir_in(base)?;
    let report = dir.path().join("report.json");
    let store_dir = dir.path().join("store");
    util::trim_heap();
    io::stdout().flush()?;
    // SAFETY: the process is single-threaded (checked above), so the child
    // may use the allocator and everything else; it leaves with _exit, never
    // returning into the harness or running its destructors.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        let code = match edge_child(&store_dir, &report, total) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("bench: edge child: {e}");
                1
            }
        };
        // SAFETY: ends the forked child without unwinding into the parent's
        // state.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it for the child we forked.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child; pointers are to live locals.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    if rc != pid {
        return Err(io::Error::last_os_error());
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        return Err(io::Error::other(format!(
            "the edge child failed (wait status {status:#x})"
        )));
    }
    let text = std::fs::read_to_string(&report)?;
    let report: serde_json::Value = serde_json::from_str(&text).map_err(io::Error::other)?;
    Ok(Edge {
        peak_rss_kib: usage.ru_maxrss as u64,
        start_rss_kib: report["start_rss_kib"].as_u64().unwrap_or(0),
        append_s: report["append_s"].as_f64().unwrap_or(0.0),
        read_s: report["read_s"].as_f64().unwrap_or(0.0),
    })
}

/// The edge workload: 1,000 shards on the `edge` preset, `total` bytes of
/// 1 KiB records appended in batches of 64 round-robin, then every shard
/// read back in 1 MiB reads, touching every value. Verifies the counts.
fn edge_child(dir: &Path, report: &Path, total: u64) -> io::Result<()> {
    let start_rss_kib = util::proc_status_kib("VmRSS").unwrap_or(0);
    let store = Store::open(dir, Config::preset(Preset::Edge)).map_err(to_io)?;
    let names: Vec<String> = (0..EDGE_SHARDS).map(|i| format!("edge-{i:04}")).collect();
    for name in &names {
        store.create_shard(name, None).map_err(to_io)?;
    }
    let mut data = vec![0u8; 64 * 1024];
    util::fill_pseudo_random(&mut data, 77);
    let batch: Vec<Record<'_>> = data.chunks(1024).map(Record::new).collect();
    let started = Instant::now();
    let mut written = 0u64;
    let mut round = 0usize;
    while written < total {
        let name = &names[round % EDGE_SHARDS];
        store.append_batch(name, &batch).map_err(to_io)?;
        written += data.len() as u64;
        round += 1;
    }
    let append_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut records = 0u64;
    let mut touched = 0u64;
    for name in &names {
        let end = store.shard_info(name).map_err(to_io)?.next_offset;
        let mut offset = 0;
        while offset < end {
            let result = store
                .read(name, offset, usize::MAX, FETCH_BYTES)
                .map_err(to_io)?;
            for record in &result.records {
                // Every byte read, as a consumer would (and every page of
                // the data mapped in).
                touched = touched.wrapping_add(util::touch(record.value_bytes()));
            }
            records += result.records.len() as u64;
            offset = result.next_offset;
        }
    }
    let read_s = started.elapsed().as_secs_f64();
    if records != written / 1024 {
        return Err(io::Error::other(format!(
            "read back {records} records, appended {}",
            written / 1024
        )));
    }
    store.close().map_err(to_io)?;
    let json = json!({
        "start_rss_kib": start_rss_kib, "append_s": append_s, "read_s": read_s,
        "records": records, "touched": touched,
    });
    std::fs::write(report, json.to_string())
}

/// Ratios printed beside the file engine's reads and transfers.
pub fn compare(results: &mut Results) {
    results.compare(
        "file.read_tail_1k.gbps",
        "raw.mem_read_gbps",
        1.0,
        "bytes touched, GB/s",
    );
    results.compare("file.sendfile_1k.gbps", "raw.sendfile_gbps", 1.0, "GB/s");
}
