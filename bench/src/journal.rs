//! The Journal engine's suite, run when the build has the engine: appends
//! per durability mode, closed-loop fsync latency from four threads, tail
//! reads, sendfile_to_fd, and reopen time after a clean close and after
//! kill -9. Every store lives under --dir, so the journal writes to the
//! filesystem the raw baselines measured.

use std::io::{self, BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mqstore::{Config, Durability, EngineKind, Record, Store};
use serde_json::json;

use crate::engine::{self, to_io, AppendSpec, Latency, APPEND_RETENTION_BYTES};
use crate::util::{self, Stats};
use crate::{Plan, Results};

/// The journal metrics the issue names (reported absent without the engine).
pub const ISSUE_METRICS: [(&str, &str); 9] = [
    ("journal.append_1k_batch64_fsync.msgs_per_s", "msgs/s"),
    ("journal.append_100b_batch1024_fsync.msgs_per_s", "msgs/s"),
    ("journal.append_1k_single_fsync_4threads.p99_us", "µs"),
    ("journal.shards_1m.rss_mb", "MiB"),
    ("journal.shards_1m.append_msgs_per_s", "msgs/s"),
    ("journal.read_tail_1k.gbps", "GB/s"),
    ("journal.sendfile_1k.gbps", "GB/s"),
    ("journal.reopen_clean.s", "s"),
    ("journal.reopen_crash.s", "s"),
];

/// Closed-loop latency: `threads` producers each append one record, wait
/// for the acknowledgement, and append the next. With fsync durability the
/// offered load is the concurrency itself, so there is no backlog to omit:
/// every acknowledgement is one sample.
fn closed_loop_latency(
    base: &Path,
    durability: Durability,
    record_size: usize,
    threads: usize,
    duration: Duration,
) -> io::Result<Latency> {
    let bench = engine::BenchStore::open(base)?;
    let store = &bench.store;
    let options = engine::options(EngineKind::Journal, durability, APPEND_RETENTION_BYTES);
    store.create_shard_with("lat", options).map_err(to_io)?;
    let barrier = Barrier::new(threads);
    let histograms = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let barrier = &barrier;
                scope.spawn(move || -> io::Result<Histogram<u64>> {
                    let mut data = vec![0u8; record_size];
                    util::fill_pseudo_random(&mut data, t as u64 + 31);
                    let record = Record::new(&data);
                    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
                        .map_err(io::Error::other)?;
                    barrier.wait();
                    let start = Instant::now();
                    while start.elapsed() < duration {
                        let began = Instant::now();
                        store.append("lat", &record).map_err(to_io)?;
                        histogram.saturating_record(began.elapsed().as_nanos() as u64);
                    }
                    Ok(histogram)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .map_err(|_| io::Error::other("latency thread panicked"))?
            })
            .collect::<io::Result<Vec<_>>>()
    })?;
    let mut merged = histograms[0].clone();
    for h in &histograms[1..] {
        merged.add(h).map_err(io::Error::other)?;
    }
    Ok(Latency {
        response: merged.clone(),
        service: merged,
        preempted: 0,
    })
}

/// Shard options for the reopen workloads: `os` durability, since a killed
/// process loses nothing the kernel already has and fsync would only slow
/// the filling down.
fn reopen_options() -> mqstore::ShardOptions {
    engine::options(EngineKind::Journal, Durability::Os, 0)
}

fn fill(store: &Store, bytes: u64) -> io::Result<i64> {
    let mut data = vec![0u8; 1024 * 64];
    util::fill_pseudo_random(&mut data, 41);
    let batch: Vec<Record<'_>> = data.chunks(1024).map(Record::new).collect();
    let mut written = 0;
    while written < bytes {
        store.append_batch("data", &batch).map_err(to_io)?;
        written += data.len() as u64;
    }
    Ok(store.shard_info("data").map_err(to_io)?.next_offset)
}

/// Time to open a store holding `bytes` of 1 KiB records after a clean close.
fn reopen_clean(base: &Path, bytes: u64) -> io::Result<(f64, i64)> {
    let dir = tempfile::Builder::new()
        .prefix("reopen-")
        .tempdir_in(base)?;
    let end = {
        let store = Store::open(dir.path(), Config::default()).map_err(to_io)?;
        store
            .create_shard_with("data", reopen_options())
            .map_err(to_io)?;
        let end = fill(&store, bytes)?;
        store.close().map_err(to_io)?;
        end
    };
    let start = Instant::now();
    let store = Store::open(dir.path(), Config::default()).map_err(to_io)?;
    let elapsed = start.elapsed().as_secs_f64();
    let recovered = store.shard_info("data").map_err(to_io)?.next_offset;
    if recovered != end {
        return Err(io::Error::other(format!(
            "reopened with next_offset {recovered}, closed at {end}"
        )));
    }
    Ok((elapsed, recovered))
}

/// The child side of `reopen_crash`: fills the store, says "ready" with the
/// offset reached, then keeps appending until it is killed mid-write.
pub fn child_append(dir: &Path, bytes: u64) -> io::Result<()> {
    use std::io::Write;
    let store = Store::open(dir, Config::default()).map_err(to_io)?;
    store
        .create_shard_with("data", reopen_options())
        .map_err(to_io)?;
    let end = fill(&store, bytes)?;
    let mut stdout = io::stdout();
    writeln!(stdout, "ready {end}")?;
    stdout.flush()?;
    loop {
        fill(&store, 1 << 20)?;
    }
}

/// Time to open a store whose writer was killed with SIGKILL while
/// appending: replay must find the torn tail and recover every
/// acknowledged batch.
fn reopen_crash(base: &Path, bytes: u64) -> io::Result<(f64, i64, i64)> {
    let dir = tempfile::Builder::new().prefix("crash-").tempdir_in(base)?;
    let mut child = Command::new(std::env::current_exe()?)
        .arg("--child-append")
        .arg(dir.path())
        .arg(bytes.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut line = String::new();
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| io::Error::other("no child stdout"))?;
    BufReader::new(stdout).read_line(&mut line)?;
    let acknowledged: i64 = match line.trim().strip_prefix("ready ") {
        Some(n) => n.parse().map_err(io::Error::other)?,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::other(format!("child said {line:?}, not ready")));
        }
    };
    // Let it get well into further appends so the kill lands mid-write.
    std::thread::sleep(Duration::from_millis(200));
    child.kill()?; // SIGKILL: no destructor, no flush, no close
    child.wait()?;
    let start = Instant::now();
    let store = Store::open(dir.path(), Config::default()).map_err(to_io)?;
    let elapsed = start.elapsed().as_secs_f64();
    let recovered = store.shard_info("data").map_err(to_io)?.next_offset;
    if recovered < acknowledged {
        return Err(io::Error::other(format!(
            "recovered next_offset {recovered}, but {acknowledged} were acknowledged"
        )));
    }
    Ok((elapsed, acknowledged, recovered))
}

pub fn run(base: &Path, plan: &Plan, results: &mut Results) {
    println!("== journal engine");
    let secs = Duration::from_secs_f64(plan.headline_secs);
    let points: [(usize, usize, &[Durability]); 2] = [
        (
            1024,
            64,
            &[Durability::None, Durability::Os, Durability::Fsync],
        ),
        (
            100,
            1024,
            &[Durability::None, Durability::Os, Durability::Fsync],
        ),
    ];
    for (record_size, batch, modes) in points {
        for &durability in modes {
            let options = engine::options(EngineKind::Journal, durability, APPEND_RETENTION_BYTES);
            let name = format!(
                "journal.append_{}_batch{batch}_{}.msgs_per_s",
                crate::memory::size_label(record_size),
                durability.name()
            );
            let spec = AppendSpec {
                record_size,
                batch,
                threads: 1,
                shards: 1,
            };
            let mut p = spec.params(&options);
            p["seconds_per_rep"] = json!(plan.headline_secs);
            results.stats_or_failed(
                &name,
                engine::append_throughput(base, &options, spec, secs, u64::MAX, plan.reps),
                "msgs/s",
                p,
            );
        }
    }
    // Group commit: four producers on four shards, fsync per batch.
    let options = engine::options(
        EngineKind::Journal,
        Durability::Fsync,
        APPEND_RETENTION_BYTES,
    );
    let spec = AppendSpec {
        record_size: 1024,
        batch: 64,
        threads: 4,
        shards: 4,
    };
    results.stats_or_failed(
        "journal.append_1k_batch64_fsync_t4_s4.msgs_per_s",
        engine::append_throughput(base, &options, spec, secs, u64::MAX, plan.reps),
        "msgs/s",
        spec.params(&options),
    );

    let mut runs = Vec::new();
    let mut failure = None;
    for _ in 0..plan.reps {
        match closed_loop_latency(base, Durability::Fsync, 1024, 4, secs) {
            Ok(latency) => runs.push(latency),
            Err(e) => {
                failure = Some(e.to_string());
                break;
            }
        }
    }
    match failure {
        None => {
            let p = json!({
                "record_bytes": 1024, "threads": 4, "shards": 1, "durability": "fsync",
                "load": "closed loop: each thread appends, waits for the ack, appends again",
                "seconds_per_rep": plan.headline_secs,
            });
            // Closed loop: response and service are the same samples, so only
            // the response names are kept.
            for (suffix, quantile) in [("p50", 0.5), ("p99", 0.99), ("p999", 0.999)] {
                let stats = Stats::new(
                    runs.iter()
                        .map(|l| l.response.value_at_quantile(quantile) as f64 / 1000.0)
                        .collect(),
                );
                let mut p = p.clone();
                p["samples_per_rep"] = json!(runs[0].response.len());
                results.stats(
                    &format!("journal.append_1k_single_fsync_4threads.{suffix}_us"),
                    &stats,
                    "µs",
                    p,
                );
            }
        }
        Some(e) => results.failed("journal.append_1k_single_fsync_4threads.p99_us", "µs", &e),
    }

    let read_options = engine::options(EngineKind::Journal, Durability::Os, 0);
    let p = json!({
        "record_bytes": 1024, "written_in_batches_of": 64, "shard_bytes": plan.read_bytes,
        "request_bytes": 1 << 20, "durability_when_written": "os",
    });
    match engine::prefilled(base, &read_options, 1024, 64, plan.read_bytes) {
        Ok((bench, end)) => {
            results.stats_or_failed(
                "journal.read_tail_1k.gbps",
                util::repeat(plan.reps, || engine::read_all(&bench.store, end)),
                "GB/s",
                p.clone(),
            );
            results.stats_or_failed(
                "journal.sendfile_1k.gbps",
                util::repeat(plan.reps, || engine::sendfile_all(&bench.store, end)),
                "GB/s",
                p.clone(),
            );
        }
        Err(e) => {
            results.failed("journal.read_tail_1k.gbps", "GB/s", &e.to_string());
            results.failed("journal.sendfile_1k.gbps", "GB/s", &e.to_string());
        }
    }

    let p = json!({ "store_bytes": plan.read_bytes, "record_bytes": 1024, "batch": 64 });
    let clean = util::repeat(plan.reps.min(3), || {
        reopen_clean(base, plan.read_bytes).map(|r| r.0)
    });
    results.stats_or_failed("journal.reopen_clean.s", clean, "s", p.clone());
    let mut crash_p = p.clone();
    crash_p["kill"] = json!("SIGKILL while appending, 200 ms after the fill");
    let crash = util::repeat(plan.reps.min(3), || {
        reopen_crash(base, plan.read_bytes).map(|r| r.0)
    });
    results.stats_or_failed("journal.reopen_crash.s", crash, "s", crash_p);

    million_shards(base, plan, results);
}

/// A million journal shards, if creating them fits in the run: 10,000 are
/// created first and the time for all is extrapolated from them.
fn million_shards(base: &Path, plan: &Plan, results: &mut Results) {
    let options = engine::options(EngineKind::Journal, Durability::Os, 0);
    let names = [
        ("journal.shards_1m.rss_mb", "MiB"),
        ("journal.shards_1m.append_msgs_per_s", "msgs/s"),
    ];
    let probe_count = 10_000;
    let limit = Duration::from_secs_f64(plan.many_shard_pass_secs);
    let probe = match engine::many_shards(base, &options, probe_count, 100, 1, limit) {
        Ok(probe) => probe,
        Err(e) => {
            for (name, unit) in names {
                results.failed(name, unit, &e.to_string());
            }
            return;
        }
    };
    let projected = probe.create.as_secs_f64() * plan.many_shards as f64 / probe_count as f64;
    let allowed = if plan.quick { 20.0 } else { 120.0 };
    if projected > allowed {
        let reason = format!(
            "skipped: creating {probe_count} journal shards took {:.2} s, so {} would take \
             about {projected:.0} s (this run allows {allowed:.0} s)",
            probe.create.as_secs_f64(),
            plan.many_shards
        );
        for (name, unit) in names {
            results.absent(name, unit, &reason);
        }
        return;
    }
    let p = json!({ "shards": plan.many_shards, "record_bytes": 100, "threads": 1,
                    "durability": "os",
                    "append": "one single-record append to every shard in turn, per rep",
                    "pass_time_limit_s": plan.many_shard_pass_secs });
    match engine::many_shards(
        base,
        &options,
        plan.many_shards,
        100,
        plan.reps.min(3),
        limit,
    ) {
        Ok(many) => {
            results.value(
                "journal.shards_1m.create_s",
                many.create.as_secs_f64(),
                "s",
                p.clone(),
            );
            let mut rss_p = p.clone();
            rss_p["measured"] =
                json!("heap growth (glibc mallinfo2) from creating the empty shards");
            rss_p["rss_growth_mb"] = json!(util::mib(many.rss_kib));
            rss_p["process_rss_mb"] = json!(util::mib(many.rss_total_kib));
            rss_p["bytes_per_shard"] = json!(many.heap_bytes as f64 / plan.many_shards as f64);
            results.value(
                "journal.shards_1m.rss_mb",
                many.heap_bytes as f64 / (1u64 << 20) as f64,
                "MiB",
                rss_p,
            );
            results.stats(
                "journal.shards_1m.append_msgs_per_s",
                &many.append,
                "msgs/s",
                p,
            );
        }
        Err(e) => {
            for (name, unit) in names {
                results.failed(name, unit, &e.to_string());
            }
        }
    }
}

pub fn compare(results: &mut Results) {
    results.compare("journal.read_tail_1k.gbps", "raw.memcpy_gbps", 1.0, "GB/s");
    results.compare("journal.sendfile_1k.gbps", "raw.sendfile_gbps", 1.0, "GB/s");
    // One comparison per metric is kept: RocksDB's when it was measured
    // (the issue's target), else the raw fdatasync bandwidth.
    results.compare(
        "journal.append_1k_batch64_fsync.msgs_per_s",
        "raw.buffered_fdatasync_write_gbps",
        1024.0 / 1e9,
        "payload GB/s vs buffered write+fdatasync",
    );
    results.compare(
        "journal.append_1k_batch64_fsync.msgs_per_s",
        "rocksdb.append_1k_batch64_sync.msgs_per_s",
        1.0,
        "vs RocksDB, WAL synced, same records",
    );
}
