//! Workloads run through the Rust API against any engine: append throughput,
//! paced single-append latency, tail reads, sendfile_to_fd, many shards.
//! Each takes the shard options it runs with, so an engine that lands later
//! (journal, file) reuses them with its own engine and durability.

use std::io;
use std::path::Path;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mqstore::{Config, Durability, EngineKind, Record, ShardOptions, Store};
use serde_json::json;

use crate::util::{self, gb_per_s, LoopbackSink, Stats};
use crate::Results;

/// Retention of every shard the append workloads write to. Memory-engine
/// shards keep everything by default; a broker bounds them, and so does the
/// harness, or a 10M msgs/s run would fill the machine in seconds. Old
/// batches are dropped from the front as new ones arrive (steady state).
pub const APPEND_RETENTION_BYTES: u64 = 64 << 20;
/// Kafka's default per-partition fetch size: what one read or transfer asks for.
const FETCH_BYTES: usize = 1 << 20;

pub fn to_io(e: mqstore::Error) -> io::Error {
    io::Error::other(e.to_string())
}

/// A store in a fresh directory under `base`, removed when dropped (after
/// the store closes: fields drop in declaration order).
pub struct BenchStore {
    pub store: Store,
    _dir: tempfile::TempDir,
}

impl BenchStore {
    pub fn open(base: &Path) -> io::Result<Self> {
        let dir = tempfile::Builder::new().prefix("store-").tempdir_in(base)?;
        let store = Store::open(dir.path(), Config::default()).map_err(to_io)?;
        Ok(BenchStore { store, _dir: dir })
    }
}

/// Shard options for an engine and durability with the harness's retention.
pub fn options(engine: EngineKind, durability: Durability, retention_bytes: u64) -> ShardOptions {
    ShardOptions {
        engine,
        durability,
        retention_bytes,
        ..ShardOptions::default()
    }
}

/// One point of the append matrix.
#[derive(Clone, Copy, Debug)]
pub struct AppendSpec {
    pub record_size: usize,
    pub batch: usize,
    pub threads: usize,
    pub shards: usize,
}

impl AppendSpec {
    pub fn params(&self, options: &ShardOptions) -> serde_json::Value {
        json!({
            "record_bytes": self.record_size, "batch": self.batch, "threads": self.threads,
            "shards": self.shards, "engine": options.engine.name(),
            "durability": options.durability.name(), "retention_bytes": options.retention_bytes,
            "key": "none", "api": "Store::append_batch",
        })
    }
}

/// Record values: `count` distinct slices of one pseudo-random buffer.
fn payload(record_size: usize, count: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; record_size * count];
    util::fill_pseudo_random(&mut data, seed);
    data
}

fn records(data: &[u8], record_size: usize) -> Vec<Record<'_>> {
    data.chunks(record_size).map(Record::new).collect()
}

/// Appends for `duration` (or until `budget_bytes` of payload, whichever
/// comes first) from `spec.threads` threads; returns msgs/s. Thread `t`
/// writes shards t, t + threads, ... in turn; with fewer shards than
/// threads, threads share shards (and contend on their locks, as a broker's
/// would).
pub fn append_once(
    base: &Path,
    options: &ShardOptions,
    spec: AppendSpec,
    duration: Duration,
    budget_bytes: u64,
) -> io::Result<f64> {
    let bench = BenchStore::open(base)?;
    let store = &bench.store;
    let names: Vec<String> = (0..spec.shards).map(|i| format!("bench-{i}")).collect();
    for name in &names {
        store
            .create_shard_with(name, options.clone())
            .map_err(to_io)?;
    }
    // Check the clock about every 1,024 records, so reading it costs little
    // even for single-record appends.
    let appends_per_check = (1024 / spec.batch).max(1);
    let budget_msgs = (budget_bytes / spec.record_size as u64 / spec.threads as u64).max(1);
    let barrier = Barrier::new(spec.threads + 1);
    let outcome = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..spec.threads)
            .map(|t| {
                let names = &names;
                let barrier = &barrier;
                scope.spawn(move || -> io::Result<(u64, Instant)> {
                    let mine: Vec<&str> = if spec.shards >= spec.threads {
                        names
                            .iter()
                            .skip(t)
                            .step_by(spec.threads)
                            .map(String::as_str)
                            .collect()
                    } else {
                        vec![names[t % spec.shards].as_str()]
                    };
                    let data = payload(spec.record_size, spec.batch, t as u64 + 1);
                    let batch = records(&data, spec.record_size);
                    barrier.wait();
                    let start = Instant::now();
                    let mut sent = 0u64;
                    let mut next = 0usize;
                    loop {
                        for _ in 0..appends_per_check {
                            store.append_batch(mine[next], &batch).map_err(to_io)?;
                            next += 1;
                            if next == mine.len() {
                                next = 0;
                            }
                        }
                        sent += (appends_per_check * spec.batch) as u64;
                        if sent >= budget_msgs || start.elapsed() >= duration {
                            return Ok((sent, Instant::now()));
                        }
                    }
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let mut total = 0u64;
        let mut end = start;
        for worker in workers {
            let (sent, finished) = worker
                .join()
                .map_err(|_| io::Error::other("append thread panicked"))??;
            total += sent;
            end = end.max(finished);
        }
        Ok::<_, io::Error>(total as f64 / (end - start).as_secs_f64())
    });
    outcome
}

/// The append matrix point repeated `reps` times.
pub fn append_throughput(
    base: &Path,
    options: &ShardOptions,
    spec: AppendSpec,
    duration: Duration,
    budget_bytes: u64,
    reps: usize,
) -> io::Result<Stats> {
    util::repeat(reps, || {
        append_once(base, options, spec, duration, budget_bytes)
    })
}

/// Latency percentiles of single appends at a fixed offered load.
pub struct Latency {
    /// Completion minus *intended* start: includes any wait behind a slow
    /// predecessor, so a stall is charged to every append it delayed
    /// (no coordinated omission).
    pub response: Histogram<u64>,
    /// Completion minus actual start: the call's own duration.
    pub service: Histogram<u64>,
    /// Times the scheduler took the core away from the measuring thread
    /// during the run: on a shared machine, what most tail latency is made of.
    pub preempted: i64,
}

/// Involuntary context switches of the calling thread so far.
fn involuntary_switches() -> i64 {
    // SAFETY: rusage is plain data, filled by the call.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: usage is writable; RUSAGE_THREAD reads the calling thread.
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) } == 0 {
        usage.ru_nivcsw
    } else {
        0
    }
}

fn histogram() -> io::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).map_err(io::Error::other)
}

/// Single appends of `record_size` bytes paced at `rate` per second by a
/// busy-wait on the monotonic clock, for `duration`. The shard is first
/// filled to its retention limit so every measured append runs in steady
/// state (including dropping old batches).
pub fn paced_latency(
    base: &Path,
    options: &ShardOptions,
    record_size: usize,
    rate: f64,
    duration: Duration,
) -> io::Result<Latency> {
    let bench = BenchStore::open(base)?;
    let store = &bench.store;
    store
        .create_shard_with("lat", options.clone())
        .map_err(to_io)?;
    let data = payload(record_size, 1, 99);
    let record = Record::new(&data);
    if options.retention_bytes > 0 {
        // Steady state is reached once retention first drops a batch (the
        // low watermark moves); the appended-bytes bound covers an engine
        // that drops in coarser units (whole segments) later than that.
        let mut appended = 0u64;
        while store.shard_info("lat").map_err(to_io)?.first_offset == 0
            && appended < 2 * options.retention_bytes
        {
            for _ in 0..1024 {
                store.append("lat", &record).map_err(to_io)?;
            }
            appended += 1024 * record_size as u64;
        }
    }
    let mut latency = Latency {
        response: histogram()?,
        service: histogram()?,
        preempted: 0,
    };
    let switches_before = involuntary_switches();
    let interval_ns = 1e9 / rate;
    let count = (duration.as_secs_f64() * rate) as u64;
    let start = Instant::now();
    for i in 0..count {
        let intended = start + Duration::from_nanos((i as f64 * interval_ns) as u64);
        util::spin_until(intended);
        let began = Instant::now();
        store.append("lat", &record).map_err(to_io)?;
        let done = Instant::now();
        latency
            .response
            .saturating_record((done - intended).as_nanos() as u64);
        latency
            .service
            .saturating_record((done - began).as_nanos() as u64);
    }
    latency.preempted = involuntary_switches() - switches_before;
    Ok(latency)
}

/// Records the median over repetitions of p50/p99/p999/max of the response
/// time as `{prefix}.p50_{unit}` etc., and of the service time as
/// `{prefix}.service_p50_{unit}`. `scale` converts nanoseconds to the unit.
pub fn report_latency(
    results: &mut Results,
    prefix: &str,
    runs: &[Latency],
    unit: &str,
    scale: f64,
    params: serde_json::Value,
) {
    let preempted: Vec<i64> = runs.iter().map(|l| l.preempted).collect();
    for (suffix, quantile) in [("p50", 0.5), ("p99", 0.99), ("p999", 0.999), ("max", 1.0)] {
        let pick = |h: &Histogram<u64>| {
            if quantile >= 1.0 {
                h.max() as f64 / scale
            } else {
                h.value_at_quantile(quantile) as f64 / scale
            }
        };
        let mut p = params.clone();
        p["samples_per_rep"] = json!(runs[0].response.len());
        p["involuntary_context_switches_per_rep"] = json!(preempted);
        let response = Stats::new(runs.iter().map(|l| pick(&l.response)).collect());
        p["measured"] = json!("completion minus intended start (coordinated-omission free)");
        results.stats(
            &format!("{prefix}.{suffix}_{unit}"),
            &response,
            unit,
            p.clone(),
        );
        let service = Stats::new(runs.iter().map(|l| pick(&l.service)).collect());
        p["measured"] = json!("completion minus actual start: the call alone, queueing excluded");
        results.stats(
            &format!("{prefix}.service_{suffix}_{unit}"),
            &service,
            unit,
            p,
        );
    }
}

/// Appends `bytes` of `record_size` records in batches of `batch` to one
/// new shard (no retention), for the read and transfer workloads; returns
/// the store and the shard's next offset.
pub fn prefilled(
    base: &Path,
    options: &ShardOptions,
    record_size: usize,
    batch: usize,
    bytes: u64,
) -> io::Result<(BenchStore, i64)> {
    let bench = BenchStore::open(base)?;
    let mut options = options.clone();
    options.retention_bytes = 0;
    bench
        .store
        .create_shard_with("data", options)
        .map_err(to_io)?;
    let data = payload(record_size, batch, 5);
    let batch_records = records(&data, record_size);
    let mut written = 0;
    while written < bytes {
        bench
            .store
            .append_batch("data", &batch_records)
            .map_err(to_io)?;
        written += (record_size * batch) as u64;
    }
    let end = bench.store.shard_info("data").map_err(to_io)?.next_offset;
    Ok((bench, end))
}

/// Reads the whole prefilled shard front to back, 1 MiB per read, the way a
/// consumer that is caught up with the producers reads what was just
/// written. Returns GB/s of record values handed out (the views are
/// zero-copy: the bytes themselves are not touched).
pub fn read_all(store: &Store, end: i64) -> io::Result<f64> {
    let start = Instant::now();
    let mut offset = 0;
    let mut bytes = 0u64;
    while offset < end {
        let result = store
            .read("data", offset, usize::MAX, FETCH_BYTES)
            .map_err(to_io)?;
        bytes += result
            .records
            .iter()
            .map(|r| r.value.len() as u64)
            .sum::<u64>();
        offset = result.next_offset;
    }
    Ok(gb_per_s(bytes, start.elapsed()))
}

/// Sends the whole prefilled shard to a loopback TCP socket with
/// `sendfile_to_fd`, 1 MiB per call, timed until the reader received every
/// byte. Returns GB/s of bytes sent (whole Kafka batches).
pub fn sendfile_all(store: &Store, end: i64) -> io::Result<f64> {
    use std::os::fd::AsRawFd;
    let sink = LoopbackSink::new()?;
    let fd = sink.sender.as_raw_fd();
    let start = Instant::now();
    let mut offset = 0;
    let mut sent = 0u64;
    while offset < end {
        let result = store
            .sendfile_to_fd("data", offset, FETCH_BYTES, fd)
            .map_err(to_io)?;
        sent += result.bytes_written;
        offset = result.next_offset;
    }
    let received = sink.finish()?;
    let elapsed = start.elapsed();
    if received != sent {
        return Err(io::Error::other(format!(
            "reader got {received} of {sent} bytes"
        )));
    }
    Ok(gb_per_s(sent, elapsed))
}

/// What creating and using many shards costs.
pub struct ManyShards {
    pub create: Duration,
    /// Heap growth from creating the shards (bytes): what they cost.
    pub heap_bytes: u64,
    /// RSS growth from creating the shards (KiB), after returning freed
    /// memory to the kernel first; lower than `heap_bytes` when the process
    /// reuses pages an earlier workload left resident.
    pub rss_kib: u64,
    pub rss_total_kib: u64,
    /// msgs/s of single-record appends to every shard in turn, per pass
    /// (a pass stops early at the time limit; the rate covers what it did).
    pub append: Stats,
}

pub fn many_shards(
    base: &Path,
    options: &ShardOptions,
    count: usize,
    record_size: usize,
    passes: usize,
    pass_limit: Duration,
) -> io::Result<ManyShards> {
    // Names are built before the baseline reading: the harness's own copy is
    // not the store's cost (the store keeps its own).
    let names: Vec<String> = (0..count).map(|i| format!("topic-{i:07}/0")).collect();
    let bench = BenchStore::open(base)?;
    util::trim_heap();
    let before = util::proc_status_kib("VmRSS").unwrap_or(0);
    let heap_before = util::heap_in_use_bytes();
    let start = Instant::now();
    for name in &names {
        bench
            .store
            .create_shard_with(name, options.clone())
            .map_err(to_io)?;
    }
    let create = start.elapsed();
    let after = util::proc_status_kib("VmRSS").unwrap_or(0);
    let heap_bytes = util::heap_in_use_bytes().saturating_sub(heap_before);
    let data = payload(record_size, 1, 17);
    let record = Record::new(&data);
    let append = util::repeat(passes, || {
        let start = Instant::now();
        let mut appended = 0u64;
        for chunk in names.chunks(1024) {
            for name in chunk {
                bench.store.append(name, &record).map_err(to_io)?;
            }
            appended += chunk.len() as u64;
            if start.elapsed() >= pass_limit {
                break;
            }
        }
        Ok(appended as f64 / start.elapsed().as_secs_f64())
    })?;
    Ok(ManyShards {
        create,
        heap_bytes,
        rss_kib: after.saturating_sub(before),
        rss_total_kib: after,
        append,
    })
}

/// Whether `engine` accepts shards with `durability`: Ok(()) or the store's
/// own explanation of why not.
pub fn accepts(
    base: &Path,
    engine: EngineKind,
    durability: Durability,
) -> io::Result<Result<(), String>> {
    let bench = BenchStore::open(base)?;
    Ok(bench
        .store
        .create_shard_with("probe", options(engine, durability, 0))
        .map(|_| ())
        .map_err(|e| e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory() -> ShardOptions {
        options(EngineKind::Memory, Durability::None, 1 << 20)
    }

    #[test]
    fn append_counts_messages() {
        let dir = tempfile::tempdir().unwrap();
        let spec = AppendSpec {
            record_size: 100,
            batch: 64,
            threads: 2,
            shards: 3,
        };
        let rate = append_once(
            dir.path(),
            &memory(),
            spec,
            Duration::from_millis(20),
            u64::MAX,
        )
        .unwrap();
        assert!(rate > 0.0);
    }

    #[test]
    fn byte_budget_stops_early() {
        let dir = tempfile::tempdir().unwrap();
        let spec = AppendSpec {
            record_size: 1000,
            batch: 1,
            threads: 1,
            shards: 1,
        };
        let start = Instant::now();
        append_once(
            dir.path(),
            &memory(),
            spec,
            Duration::from_secs(30),
            100_000,
        )
        .unwrap();
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn reads_and_sends_everything() {
        let dir = tempfile::tempdir().unwrap();
        let (bench, end) = prefilled(dir.path(), &memory(), 1024, 64, 4 << 20).unwrap();
        assert_eq!(end, 4096);
        assert!(read_all(&bench.store, end).unwrap() > 0.0);
        assert!(sendfile_all(&bench.store, end).unwrap() > 0.0);
    }

    #[test]
    fn paced_latency_records_every_append() {
        let dir = tempfile::tempdir().unwrap();
        let lat = paced_latency(
            dir.path(),
            &memory(),
            100,
            100_000.0,
            Duration::from_millis(50),
        )
        .unwrap();
        assert_eq!(lat.response.len(), 5000);
        assert!(lat.response.value_at_quantile(0.5) >= lat.service.value_at_quantile(0.5) / 2);
    }

    #[test]
    fn memory_refuses_fsync() {
        let dir = tempfile::tempdir().unwrap();
        let answer = accepts(dir.path(), EngineKind::Memory, Durability::Fsync).unwrap();
        assert!(answer.unwrap_err().contains("durability"));
    }
}
