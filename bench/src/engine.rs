//! Workloads run through the Rust API against any engine: append throughput,
//! paced single-append latency, tail reads, sendfile_to_fd, many shards.
//! Each takes the shard options it runs with, so an engine that lands later
//! (journal, file) reuses them with its own engine and durability.

use std::collections::VecDeque;
use std::io;
use std::path::Path;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mqstore::{Config, Durability, EngineKind, Record, ShardOptions, Store};
use serde_json::json;

use crate::util::{self, gb_per_s, LoopbackSink, Stats};
use crate::{Plan, Results};

/// Retention of every shard the append workloads write to. Memory-engine
/// shards keep everything by default; a broker bounds them, and so does the
/// harness, or a 10M msgs/s run would fill the machine in seconds. Old
/// batches are dropped from the front as new ones arrive (steady state).
pub const APPEND_RETENTION_BYTES: u64 = 64 << 20;
/// Kafka's default per-partition fetch size: what one read or transfer asks for.
pub const FETCH_BYTES: usize = 1 << 20;
/// What a consumer keeping up with its producers reads right after they
/// wrote it: within the journal's default tail cache (64 MiB).
pub const TAIL_WINDOW_BYTES: u64 = 48 << 20;

pub fn to_io(e: mqstore::Error) -> io::Error {
    io::Error::other(e.to_string())
}

/// A store in a fresh directory under `base`, removed when dropped (after
/// the store closes: fields drop in declaration order).
pub struct BenchStore {
    pub store: Store,
    _dir: tempfile::TempDir,
    config: Config,
}

impl BenchStore {
    pub fn open(base: &Path) -> io::Result<Self> {
        Self::open_with(base, Config::default())
    }

    /// With a configuration of its own: the server engines' URL and key
    /// prefix (servers.rs).
    pub fn open_with(base: &Path, config: Config) -> io::Result<Self> {
        let dir = tempfile::Builder::new().prefix("store-").tempdir_in(base)?;
        let store = Store::open(dir.path(), config.clone()).map_err(to_io)?;
        Ok(BenchStore {
            store,
            _dir: dir,
            config,
        })
    }

    pub fn path(&self) -> &Path {
        self._dir.path()
    }

    /// Closes the store cleanly, runs `between` on its closed directory
    /// (evicting its files from the page cache, say) and opens it again.
    pub fn reopen(&mut self, between: impl FnOnce(&Path) -> io::Result<()>) -> io::Result<()> {
        self.store.close().map_err(to_io)?;
        between(self._dir.path())?;
        let store = Store::open(self._dir.path(), self.config.clone()).map_err(to_io)?;
        // The old store is closed: dropping it releases nothing twice.
        drop(std::mem::replace(&mut self.store, store));
        Ok(())
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
    /// 0: each thread appends with `append_batch` (acknowledged when it
    /// returns). N: pipelined, with `append_batch_nowait` and up to N
    /// batches per thread in flight, each acknowledged by `wait_durable`
    /// (on the oldest, when the window is full).
    pub window: usize,
}

impl AppendSpec {
    pub fn params(&self, options: &ShardOptions) -> serde_json::Value {
        let api = if self.window == 0 {
            "Store::append_batch".to_string()
        } else {
            format!(
                "Store::append_batch_nowait + wait_durable, {} batches in flight per thread",
                self.window
            )
        };
        json!({
            "record_bytes": self.record_size, "batch": self.batch, "threads": self.threads,
            "shards": self.shards, "engine": options.engine.name(),
            "durability": options.durability.name(), "retention_bytes": options.retention_bytes,
            "key": "none", "api": api,
        })
    }
}

/// Record values: `count` distinct slices of one pseudo-random buffer.
pub fn payload(record_size: usize, count: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; record_size * count];
    util::fill_pseudo_random(&mut data, seed);
    data
}

pub fn records(data: &[u8], record_size: usize) -> Vec<Record<'_>> {
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
    let names = create_append_shards(&bench.store, options, spec.shards)?;
    append_run(&bench.store, &names, spec, duration, budget_bytes)
}

/// The shards `append_run` writes to: `bench-0`, `bench-1`, ...
pub fn create_append_shards(
    store: &Store,
    options: &ShardOptions,
    shards: usize,
) -> io::Result<Vec<String>> {
    let names: Vec<String> = (0..shards).map(|i| format!("bench-{i}")).collect();
    for name in &names {
        store
            .create_shard_with(name, options.clone())
            .map_err(to_io)?;
    }
    Ok(names)
}

/// The timed part of `append_once`, on shards `names` of `store` created
/// beforehand (so that a caller can read counters around it alone).
pub fn append_run(
    store: &Store,
    names: &[String],
    spec: AppendSpec,
    duration: Duration,
    budget_bytes: u64,
) -> io::Result<f64> {
    // Check the clock about every 1,024 records, so reading it costs little
    // even for single-record appends.
    let appends_per_check = (1024 / spec.batch).max(1);
    let budget_msgs = (budget_bytes / spec.record_size as u64 / spec.threads as u64).max(1);
    let barrier = Barrier::new(spec.threads + 1);
    let outcome = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..spec.threads)
            .map(|t| {
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
                    // Pipelined: (shard, last offset) of each batch in flight.
                    let mut in_flight: VecDeque<(&str, i64)> = VecDeque::new();
                    let last = spec.batch as i64 - 1;
                    barrier.wait();
                    let start = Instant::now();
                    let mut sent = 0u64;
                    let mut next = 0usize;
                    loop {
                        for _ in 0..appends_per_check {
                            let shard = mine[next];
                            if spec.window == 0 {
                                store.append_batch(shard, &batch).map_err(to_io)?;
                            } else {
                                if in_flight.len() == spec.window {
                                    let (shard, offset) = in_flight.pop_front().expect("full");
                                    store.wait_durable(shard, offset).map_err(to_io)?;
                                }
                                let base = store.append_batch_nowait(shard, &batch);
                                in_flight.push_back((shard, base.map_err(to_io)? + last));
                            }
                            next += 1;
                            if next == mine.len() {
                                next = 0;
                            }
                        }
                        sent += (appends_per_check * spec.batch) as u64;
                        if sent >= budget_msgs || start.elapsed() >= duration {
                            // Only acknowledged messages count.
                            for (shard, offset) in in_flight.drain(..) {
                                store.wait_durable(shard, offset).map_err(to_io)?;
                            }
                            return Ok((sent, Instant::now()));
                        }
                    }
                })
            })
            .collect();
        util::joined_rate(&barrier, workers)
    });
    outcome
}

/// One producer appending, on one shard, the same producer batch (a
/// Kafka v2 batch of `batch` records of `record_size` bytes, encoded once
/// beforehand as a producer would) with `Store::append_raw`, blocking, for
/// `duration`; returns msgs/s. What the record API's figure of the same
/// workload spends on encoding, this one does not.
pub fn append_raw_once(
    base: &Path,
    options: &ShardOptions,
    record_size: usize,
    batch: usize,
    duration: Duration,
) -> io::Result<f64> {
    let bench = BenchStore::open(base)?;
    let store = &bench.store;
    store
        .create_shard_with("raw", options.clone())
        .map_err(to_io)?;
    let data = payload(record_size, batch, 1);
    let encoded =
        mqstore::format::encode_batch(&records(&data, record_size), options.compression, 1)
            .map_err(to_io)?
            .bytes;
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < duration {
        store.append_raw("raw", &encoded).map_err(to_io)?;
        sent += batch as u64;
    }
    Ok(sent as f64 / start.elapsed().as_secs_f64())
}

/// `{prefix}.append_raw_{size}_batch{batch}[_{durability}].msgs_per_s`,
/// compared with the record API's figure of the same workload.
pub fn append_raw_row(
    results: &mut Results,
    base: &Path,
    plan: &Plan,
    options: &ShardOptions,
    (record_size, batch): (usize, usize),
    (name, record_api): (&str, &str),
) {
    let secs = Duration::from_secs_f64(plan.headline_secs);
    let measured = util::repeat(plan.reps, || {
        append_raw_once(base, options, record_size, batch, secs)
    });
    let p = json!({
        "record_bytes": record_size, "batch": batch, "threads": 1, "shards": 1,
        "engine": options.engine.name(), "durability": options.durability.name(),
        "api": "Store::append_raw of one pre-encoded producer batch (no producer id), blocking",
        "seconds_per_rep": plan.headline_secs,
    });
    results.stats_or_failed(name, measured, "msgs/s", p);
    results.compare(
        name,
        record_api,
        1.0,
        "raw producer batches / the record API, same workload",
    );
}

/// One producer on an event loop: `append_batch_notify` keeps
/// `spec.window` batches in flight on one shard, and the same thread
/// poll(2)s the store's `durable_fd` and takes acknowledgements with
/// `poll_durable`, refilling the window as they come (no thread waits in
/// `wait_durable`). Returns acknowledged msgs/s.
pub fn append_eventloop_once(
    base: &Path,
    options: &ShardOptions,
    spec: AppendSpec,
    duration: Duration,
) -> io::Result<f64> {
    let bench = BenchStore::open(base)?;
    let store = &bench.store;
    store
        .create_shard_with("bench-0", options.clone())
        .map_err(to_io)?;
    let data = payload(spec.record_size, spec.batch, 1);
    let batch = records(&data, spec.record_size);
    let fd = store.durable_fd().map_err(to_io)?;
    let window = spec.window.max(1);
    let start = Instant::now();
    let mut token = 0u64;
    let mut in_flight = 0usize;
    let mut acked = 0u64;
    let mut stopping = false;
    loop {
        while !stopping && in_flight < window {
            store
                .append_batch_notify("bench-0", &batch, token)
                .map_err(to_io)?;
            token += 1;
            in_flight += 1;
        }
        if in_flight == 0 {
            break;
        }
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        if unsafe { libc::poll(&mut pfd, 1, -1) } < 0 {
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(error);
            }
        }
        for completion in store.poll_durable(window) {
            completion.result.map_err(to_io)?;
            in_flight -= 1;
            acked += spec.batch as u64;
        }
        stopping = stopping || start.elapsed() >= duration;
    }
    Ok(acked as f64 / start.elapsed().as_secs_f64())
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

/// How a paced producer waits for an append's intended start.
#[derive(Clone, Copy, Debug)]
pub enum Pacing {
    /// Busy-wait on the monotonic clock: sub-microsecond intervals (memory).
    Spin,
    /// Sleep to 60 µs before, then spin (`util::sleep_until`): intervals of
    /// many microseconds, with producers that must not each keep a core busy.
    Sleep,
}

impl Pacing {
    pub fn describe(self) -> &'static str {
        match self {
            Pacing::Spin => "busy-wait on the monotonic clock",
            Pacing::Sleep => {
                "sleep (timer slack 1 µs) to 60 µs before the intended start, then busy-wait"
            }
        }
    }
}

/// Single appends of `record_size` bytes offered open loop at `rate` per
/// second in total by `threads` producers on one shard, for `duration`:
/// producer t makes appends t, t + threads, t + 2 × threads, ... of one
/// fixed schedule (intended start of append i: i / rate after the start),
/// so the offered load does not depend on how fast appends complete — an
/// append that stalls makes every later one of its producer late, and that
/// lateness is charged to them (coordinated omission corrected). The shard
/// is first filled to its retention limit so every measured append runs in
/// steady state (including dropping old batches).
pub fn paced_latency(
    at: LatencyStore<'_>,
    options: &ShardOptions,
    record_size: usize,
    threads: usize,
    rate: f64,
    duration: Duration,
    pacing: Pacing,
) -> io::Result<Latency> {
    at.with_shard(options, |store| {
        if options.retention_bytes > 0 {
            let data = payload(record_size, 1, 99);
            let record = Record::new(&data);
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
        let interval_ns = 1e9 / rate;
        let count = (duration.as_secs_f64() * rate) as u64;
        let barrier = Barrier::new(threads);
        let per_thread = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|t| {
                    let barrier = &barrier;
                    scope.spawn(move || -> io::Result<Latency> {
                        if matches!(pacing, Pacing::Sleep) {
                            util::precise_timer_slack();
                        }
                        let data = payload(record_size, 1, 99 + t as u64);
                        let record = Record::new(&data);
                        let mut latency = Latency {
                            response: histogram()?,
                            service: histogram()?,
                            preempted: 0,
                        };
                        barrier.wait();
                        let switches_before = involuntary_switches();
                        let start = Instant::now();
                        let mut i = t as u64;
                        while i < count {
                            let intended =
                                start + Duration::from_nanos((i as f64 * interval_ns) as u64);
                            match pacing {
                                Pacing::Spin => util::spin_until(intended),
                                Pacing::Sleep => util::sleep_until(intended),
                            }
                            let began = Instant::now();
                            store.append("lat", &record).map_err(to_io)?;
                            let done = Instant::now();
                            latency
                                .response
                                .saturating_record((done - intended).as_nanos() as u64);
                            latency
                                .service
                                .saturating_record((done - began).as_nanos() as u64);
                            i += threads as u64;
                        }
                        latency.preempted = involuntary_switches() - switches_before;
                        Ok(latency)
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
        let mut merged = Latency {
            response: histogram()?,
            service: histogram()?,
            preempted: 0,
        };
        for latency in per_thread {
            merged
                .response
                .add(&latency.response)
                .map_err(io::Error::other)?;
            merged
                .service
                .add(&latency.service)
                .map_err(io::Error::other)?;
            merged.preempted += latency.preempted;
        }
        Ok(merged)
    })
}

/// Where a latency repetition runs.
#[derive(Clone, Copy)]
pub enum LatencyStore<'a> {
    /// A store of its own under this directory, removed after it.
    Fresh(&'a Path),
    /// A shard of this store, deleted after it (a store in steady state).
    Shared(&'a Store),
}

impl LatencyStore<'_> {
    /// Runs `measure` with a new shard `lat` of `options`.
    fn with_shard<T>(
        self,
        options: &ShardOptions,
        measure: impl FnOnce(&Store) -> io::Result<T>,
    ) -> io::Result<T> {
        let bench;
        let store = match self {
            LatencyStore::Fresh(base) => {
                bench = BenchStore::open(base)?;
                &bench.store
            }
            LatencyStore::Shared(store) => store,
        };
        store
            .create_shard_with("lat", options.clone())
            .map_err(to_io)?;
        let out = measure(store)?;
        if matches!(self, LatencyStore::Shared(_)) {
            store.delete_shard("lat").map_err(to_io)?;
        }
        Ok(out)
    }
}

/// Records the median over repetitions of p50/p99/p999/max of the
/// open-loop response time (from each append's intended start) as
/// `{prefix}.open_loop_p50_{unit}` etc., and of the service time (from its
/// actual start) as `{prefix}.service_p50_{unit}`. `scale` converts
/// nanoseconds to the unit; `rate` is the offered load, printed beside
/// every figure (a latency means nothing without the rate it was taken at).
pub fn report_latency(
    results: &mut Results,
    prefix: &str,
    runs: &[Latency],
    unit: &str,
    scale: f64,
    rate: f64,
    params: serde_json::Value,
) {
    let preempted: Vec<i64> = runs.iter().map(|l| l.preempted).collect();
    for (suffix, quantile) in crate::raw::PERCENTILES {
        let pick = |h: &Histogram<u64>| util::percentile(h, quantile) / scale;
        let mut p = params.clone();
        p["offered_msgs_per_s"] = json!(rate);
        p["samples_per_rep"] = json!(runs[0].response.len());
        p["involuntary_context_switches_per_rep"] = json!(preempted);
        p["note"] = json!(format!(
            "open loop at {} msgs/s",
            crate::results::human(rate)
        ));
        let response = Stats::new(runs.iter().map(|l| pick(&l.response)).collect());
        p["measured"] = json!(
            "completion minus intended start on a fixed schedule: queueing behind a stall \
             counts (coordinated omission corrected)"
        );
        results.stats(
            &format!("{prefix}.open_loop_{suffix}_{unit}"),
            &response,
            unit,
            p.clone(),
        );
        let service = Stats::new(runs.iter().map(|l| pick(&l.service)).collect());
        p["measured"] = json!("completion minus actual start: the call alone, queueing excluded");
        p["note"] = json!(format!(
            "service time at {} msgs/s",
            crate::results::human(rate)
        ));
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

/// The hot read (`names[0]`: GB/s of value bytes touched), the same pass
/// without touching the bytes (`names[1]`: zero-copy record views handed
/// out per second) and the sendfile (`names[2]`) of a filled shard `end`
/// records long, `plan.reps` times each, with parameters `p`.
pub fn hot_read_and_sendfile(
    results: &mut Results,
    plan: &Plan,
    store: &Store,
    end: i64,
    names: [&str; 3],
    p: &serde_json::Value,
) {
    results.stats_or_failed(
        names[0],
        util::repeat(plan.reps, || read_all(store, end)),
        "GB/s",
        p.clone(),
    );
    let mut views_p = p.clone();
    views_p["measured"] = json!(
        "record views returned by Store::read per second, the bytes not touched: the cost \
         of the zero-copy API, not a read throughput (see the .gbps metric beside it)"
    );
    results.stats_or_failed(
        names[1],
        util::repeat(plan.reps, || {
            read_range(store, 0, end, false).map(|pass| pass.views_per_s())
        }),
        "views/s",
        views_p,
    );
    let mut send_p = p.clone();
    send_p["measured"] =
        json!("batch bytes sent by Store::sendfile_to_fd to loopback TCP, until received");
    results.stats_or_failed(
        names[2],
        util::repeat(plan.reps, || sendfile_all(store, end)),
        "GB/s",
        send_p,
    );
}

/// What every read throughput metric's params say it measured.
pub const READ_MEASURED: &str =
    "record value bytes returned by Store::read and read by the consumer (every byte summed \
     with util::touch), per second";

/// One pass of reads over part of the prefilled shard.
pub struct ReadPass {
    /// Record value bytes (touched when the pass touched them).
    pub bytes: u64,
    pub records: u64,
    pub elapsed: Duration,
}

impl ReadPass {
    pub fn gbps(&self) -> f64 {
        gb_per_s(self.bytes, self.elapsed)
    }

    pub fn views_per_s(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64()
    }
}

/// GB/s of value bytes read and touched, the whole shard.
pub fn read_all(store: &Store, end: i64) -> io::Result<f64> {
    read_from(store, 0, end)
}

/// GB/s of value bytes read and touched, from `from` to `end`.
pub fn read_from(store: &Store, from: i64, end: i64) -> io::Result<f64> {
    read_range(store, from, end, true).map(|pass| pass.gbps())
}

/// Reads the prefilled shard from `from` to `end` in 1 MiB requests, the
/// way a consumer reads, and with `touch` reads every byte of every value
/// (`util::touch`): a zero-copy view's bytes, or a mapped segment's pages,
/// are only read when someone looks at them.
pub fn read_range(store: &Store, from: i64, end: i64, touch: bool) -> io::Result<ReadPass> {
    let start = Instant::now();
    let mut offset = from;
    let mut bytes = 0u64;
    let mut records = 0u64;
    let mut sum = 0u64;
    while offset < end {
        let result = store
            .read("data", offset, usize::MAX, FETCH_BYTES)
            .map_err(to_io)?;
        for record in &result.records {
            bytes += record.value_bytes().len() as u64;
            if touch {
                sum = sum.wrapping_add(util::touch(record.value_bytes()));
            }
        }
        records += result.records.len() as u64;
        offset = result.next_offset;
    }
    std::hint::black_box(sum);
    Ok(ReadPass {
        bytes,
        records,
        elapsed: start.elapsed(),
    })
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
    /// Size of the journal's index checkpoint after a clean close (`None`
    /// for other engines).
    pub checkpoint_bytes: Option<u64>,
    /// Heap growth from creating the shards (bytes, glibc mallinfo2).
    pub heap_bytes: u64,
    /// VmRSS of the process (KiB) when it starts, once the harness's own
    /// list of shard names is built and the store is open, and once the
    /// shards are created.
    pub rss_start_kib: u64,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    /// msgs/s of the same appends all to one shard of the same store, per
    /// pass: the single-shard figure the many-shard rate is judged against.
    pub one_shard: Stats,
    /// msgs/s of single-record appends to every shard in turn, per pass
    /// (a pass stops early at the time limit; the rate covers what it did).
    pub append: Stats,
}

/// Threads committing group offsets in `group_commits` (1,000 groups
/// shared out among them).
const GROUP_COMMIT_THREADS: usize = 4;

/// Shards per `create_shards` call in the many-shard workloads.
pub const CREATE_CHUNK: usize = 10_000;

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
    let rss_start_kib = util::proc_status_kib("VmRSS").unwrap_or(0);
    let names: Vec<String> = (0..count).map(|i| format!("topic-{i:07}/0")).collect();
    let bench = BenchStore::open(base)?;
    util::trim_heap();
    let before = util::proc_status_kib("VmRSS").unwrap_or(0);
    let heap_before = util::heap_in_use_bytes();
    // A broker creates partitions a request at a time: 10,000 per call of
    // the bulk API (one durable catalogue write each on the journal).
    let options_toml = options.to_toml();
    let start = Instant::now();
    for chunk in names.chunks(CREATE_CHUNK) {
        let chunk: Vec<&str> = chunk.iter().map(String::as_str).collect();
        bench
            .store
            .create_shards(&chunk, Some(&options_toml))
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
    let one_shard = util::repeat(passes, || {
        let start = Instant::now();
        let mut appended = 0u64;
        while appended < count as u64 {
            for _ in 0..1024.min(count) {
                bench.store.append(&names[0], &record).map_err(to_io)?;
            }
            appended += 1024.min(count) as u64;
            if start.elapsed() >= pass_limit {
                break;
            }
        }
        Ok(appended as f64 / start.elapsed().as_secs_f64())
    })?;
    let dir = bench.store.dir().to_path_buf();
    bench.store.close().map_err(to_io)?;
    // The journal's index checkpoint, written by the clean close.
    let checkpoint_bytes = std::fs::metadata(dir.join("journal").join("index.ckpt"))
        .map(|m| m.len())
        .ok();
    Ok(ManyShards {
        one_shard,
        checkpoint_bytes,
        create,
        heap_bytes,
        rss_start_kib,
        rss_before_kib: before,
        rss_after_kib: after,
        append,
    })
}

/// The memory a million empty shards take, each figure named for what it
/// is: `{prefix}.shards_1m.rss_mb` (VmRSS of the whole process once they
/// exist: the store, plus the harness's own list of their names, whose size
/// params give), `.rss_growth_mb` (VmRSS growth while creating them) and
/// `.heap_mb` (allocator bytes in use, glibc mallinfo2, grown while creating
/// them: what the data structures cost, whether or not their pages were
/// resident before).
pub fn report_shard_memory(
    results: &mut Results,
    prefix: &str,
    many: &ManyShards,
    count: usize,
    p: &serde_json::Value,
) {
    let mut rss_p = p.clone();
    rss_p["measured"] = json!(
        "VmRSS (/proc/self/status) of the process holding the store with every shard \
         created, in its own process (workload group 'shards')"
    );
    rss_p["rss_at_process_start_mb"] = json!(util::mib(many.rss_start_kib));
    rss_p["rss_before_create_mb"] = json!(util::mib(many.rss_before_kib));
    rss_p["harness_name_list_approx_mb"] = json!(util::mib(
        many.rss_before_kib.saturating_sub(many.rss_start_kib)
    ));
    results.value(
        &format!("{prefix}.shards_1m.rss_mb"),
        util::mib(many.rss_after_kib),
        "MiB",
        rss_p,
    );
    let mut growth_p = p.clone();
    growth_p["measured"] = json!("VmRSS after creating the shards minus VmRSS before (store open)");
    results.value(
        &format!("{prefix}.shards_1m.rss_growth_mb"),
        util::mib(many.rss_after_kib.saturating_sub(many.rss_before_kib)),
        "MiB",
        growth_p,
    );
    let mut heap_p = p.clone();
    heap_p["measured"] = json!(
        "heap growth (glibc mallinfo2: in-use arena + mmapped chunks) from creating the shards"
    );
    heap_p["bytes_per_shard"] = json!(many.heap_bytes as f64 / count as f64);
    results.value(
        &format!("{prefix}.shards_1m.heap_mb"),
        many.heap_bytes as f64 / (1u64 << 20) as f64,
        "MiB",
        heap_p,
    );
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

// ------------------------------------------------------ persistent engines
//
// The suite every engine with files runs (journal now, file when it lands:
// bench/src/file.rs calls these with `EngineKind::File` and prefix "file").
// Each `Persistent` method is one workload group, run by the harness in a
// child process of its own so its peak RSS is its own (see main.rs).

/// Durability modes, in the order the table lists them.
pub const DURABILITIES: [Durability; 3] = [Durability::None, Durability::Os, Durability::Fsync];

/// The centre of the persistent engines' append matrix: 1 KiB records in
/// batches of 64, one thread, one shard (the headline shape).
/// Bytes a pipelined producer keeps in flight (as batches): 4 MiB, e.g.
/// 64 batches of 64 × 1 KiB, like a Kafka producer with a deep
/// `max.in.flight` window or a broker with many connections.
const PIPELINED_BYTES: usize = 4 << 20;

pub const MATRIX_BASE: AppendSpec = AppendSpec {
    record_size: 1024,
    batch: 64,
    threads: 1,
    shards: 1,
    window: 0,
};

/// The persistent engines' append matrix, one dimension at a time around
/// `MATRIX_BASE`: record size 100 B / 1 KiB / 16 KiB, batch 1 / 64 / 1,024,
/// threads 1 / 2 / 4, shards 1 / 1,000 (1,000,000 shards is the
/// `shards_1m` workload: creating them alone takes a minute or more). The
/// full cross product per durability (54 points, 3 s each) would take
/// longer than the rest of the run together, while each dimension's effect
/// is what a reader compares.
pub fn one_factor_points() -> Vec<AppendSpec> {
    let mut points = vec![MATRIX_BASE];
    for record_size in [100, 16 << 10] {
        points.push(AppendSpec {
            record_size,
            ..MATRIX_BASE
        });
    }
    for batch in [1, 1024] {
        points.push(AppendSpec {
            batch,
            ..MATRIX_BASE
        });
    }
    for threads in [2, 4] {
        points.push(AppendSpec {
            threads,
            ..MATRIX_BASE
        });
    }
    points.push(AppendSpec {
        shards: 1000,
        ..MATRIX_BASE
    });
    points
}

/// `{prefix}.append_1k_batch64_t1_s1_fsync.msgs_per_s` and so on.
pub fn matrix_name(prefix: &str, spec: &AppendSpec, durability: Durability) -> String {
    format!(
        "{prefix}.append_{}_batch{}_t{}_s{}_{}.msgs_per_s",
        crate::memory::size_label(spec.record_size),
        spec.batch,
        spec.threads,
        spec.shards,
        durability.name()
    )
}

/// A headline append workload: what it is and its metric name after the
/// engine's prefix. The journal and the RocksDB peer run every one of them
/// with the same records, batches, producers, shards, window and
/// durability, so `journal.X` and `rocksdb.X` compare like with like.
#[derive(Clone, Debug)]
pub struct Workload {
    /// `append_1k_batch64_fsync.msgs_per_s` and so on.
    pub suffix: String,
    pub spec: AppendSpec,
    pub durability: Durability,
}

impl Workload {
    /// How producers wait, in words: blocking or pipelined.
    pub fn mode(&self) -> String {
        let producers = if self.spec.threads == 1 {
            "one producer".to_string()
        } else {
            format!(
                "{} producers on {} shards",
                self.spec.threads, self.spec.shards
            )
        };
        if self.spec.window == 0 {
            format!("blocking: {producers}, each batch acknowledged before the next is sent")
        } else {
            format!(
                "pipelined: {producers}, {} batches in flight, each acknowledged by a sync \
                 that started after it was written",
                self.spec.window
            )
        }
    }
}

/// The headline workloads: 1 KiB x 64 and 100 B x 1,024 blocking in every
/// durability mode, four blocking producers on four shards with fsync, and
/// one pipelining producer with fsync (about `PIPELINED_BYTES` in flight).
pub fn headline_workloads() -> Vec<Workload> {
    let label = crate::memory::size_label;
    let mut out = Vec::new();
    for (record_size, batch) in [(1024, 64), (100, 1024)] {
        for durability in DURABILITIES {
            out.push(Workload {
                suffix: format!(
                    "append_{}_batch{batch}_{}.msgs_per_s",
                    label(record_size),
                    durability.name()
                ),
                spec: AppendSpec {
                    record_size,
                    batch,
                    ..MATRIX_BASE
                },
                durability,
            });
        }
    }
    // Group commit: 4 and 16 blocking producers, each on its own shard,
    // fsync per batch.
    for producers in [4, 16] {
        out.push(Workload {
            suffix: format!("append_1k_batch64_fsync_t{producers}_s{producers}.msgs_per_s"),
            spec: AppendSpec {
                threads: producers,
                shards: producers,
                ..MATRIX_BASE
            },
            durability: Durability::Fsync,
        });
    }
    // Pipelined: one producer with about `PIPELINED_BYTES` in flight.
    for (record_size, batch) in [(1024, 64), (100, 1024)] {
        out.push(Workload {
            suffix: format!(
                "append_{}_batch{batch}_fsync_pipelined.msgs_per_s",
                label(record_size)
            ),
            spec: AppendSpec {
                record_size,
                batch,
                window: (PIPELINED_BYTES / (record_size * batch)).max(2),
                ..MATRIX_BASE
            },
            durability: Durability::Fsync,
        });
    }
    out
}

/// The workload groups of a persistent engine, each run in its own child
/// process (`bench --group NAME`).
pub const PERSISTENT_GROUPS: [&str; 5] = ["append", "latency", "read", "reopen", "shards"];

/// A persistent engine under test and the prefix of its metric names.
#[derive(Clone, Copy)]
pub struct Persistent {
    pub kind: EngineKind,
    pub prefix: &'static str,
}

impl Persistent {
    fn name(&self, rest: &str) -> String {
        format!("{}.{rest}", self.prefix)
    }

    fn options(&self, durability: Durability, retention_bytes: u64) -> ShardOptions {
        options(self.kind, durability, retention_bytes)
    }

    /// Runs one group (`PERSISTENT_GROUPS`).
    pub fn run_group(&self, group: &str, base: &Path, plan: &Plan, results: &mut Results) {
        match group {
            "append" => self.appends(base, plan, results),
            "latency" => self.latency(base, plan, results),
            "read" => self.reads(base, plan, results),
            "reopen" => {
                self.reopen(base, plan, results);
                if self.kind == EngineKind::Journal {
                    self.skewed_retention(base, plan, results);
                }
            }
            "shards" => {
                self.group_commits(base, plan, results);
                self.million_shards(base, plan, results);
            }
            other => results.failed(
                &self.name(&format!("{other}.peak_rss_mb")),
                "MiB",
                &format!("unknown workload group '{other}'"),
            ),
        }
    }

    /// Headline appends (longer, more repetitions) and the matrix, in
    /// every durability mode.
    pub fn appends(&self, base: &Path, plan: &Plan, results: &mut Results) {
        // The headline workloads, which the RocksDB peer runs too, under
        // the same names (rocksdb_peer.rs).
        let secs = Duration::from_secs_f64(plan.headline_secs);
        for workload in headline_workloads() {
            let options = self.options(workload.durability, APPEND_RETENTION_BYTES);
            let mut p = workload.spec.params(&options);
            p["seconds_per_rep"] = json!(plan.headline_secs);
            p["mode"] = json!(workload.mode());
            results.stats_or_failed(
                &self.name(&workload.suffix),
                append_throughput(base, &options, workload.spec, secs, u64::MAX, plan.reps),
                "msgs/s",
                p,
            );
        }

        append_raw_row(
            results,
            base,
            plan,
            &self.options(Durability::Fsync, APPEND_RETENTION_BYTES),
            (1024, 64),
            (
                &self.name("append_raw_1k_batch64_fsync.msgs_per_s"),
                &self.name("append_1k_batch64_fsync.msgs_per_s"),
            ),
        );

        // The pipelined 1 KiB x 64 workload again, driven by one thread's
        // event loop (durable_fd + poll_durable) instead of wait_durable.
        if let Some(pipelined) = headline_workloads()
            .into_iter()
            .find(|w| w.suffix == "append_1k_batch64_fsync_pipelined.msgs_per_s")
        {
            let options = self.options(pipelined.durability, APPEND_RETENTION_BYTES);
            let mut p = pipelined.spec.params(&options);
            p["api"] = json!(format!(
                "Store::append_batch_notify + poll(2) on durable_fd + poll_durable, \
                 {} batches in flight, one thread",
                pipelined.spec.window
            ));
            p["seconds_per_rep"] = json!(plan.headline_secs);
            p["beside"] = json!(self.name(&pipelined.suffix));
            results.stats_or_failed(
                &self.name("append_1k_batch64_fsync_eventloop.msgs_per_s"),
                util::repeat(plan.reps, || {
                    append_eventloop_once(base, &options, pipelined.spec, secs)
                }),
                "msgs/s",
                p,
            );
        }

        let secs = Duration::from_secs_f64(plan.matrix_secs);
        for durability in DURABILITIES {
            let options = self.options(durability, APPEND_RETENTION_BYTES);
            for spec in one_factor_points() {
                // Every shard keeps its retention's worth: many-shard runs
                // also stop at a byte budget, or they would fill the disk.
                let budget = if spec.shards > 1 {
                    plan.many_shard_budget
                } else {
                    u64::MAX
                };
                let mut p = spec.params(&options);
                p["seconds_per_rep"] = json!(plan.matrix_secs);
                p["design"] = json!("one dimension varied around 1k x 64 x 1 thread x 1 shard");
                if spec.shards > 1 {
                    p["budget_payload_bytes"] = json!(budget);
                }
                results.stats_or_failed(
                    &matrix_name(self.prefix, &spec, durability),
                    append_throughput(base, &options, spec, secs, budget, plan.matrix_reps),
                    "msgs/s",
                    p,
                );
            }
        }
    }

    /// Single 1 KiB appends: four producers with fsync, and one producer
    /// with `os` and with `fsync` (`latency_point`).
    pub fn latency(&self, base: &Path, plan: &Plan, results: &mut Results) {
        let fresh = LatencyStore::Fresh(base);
        self.latency_point(fresh, "", plan, results, Durability::Fsync, 4);
        for durability in [Durability::Os, Durability::Fsync] {
            self.latency_point(fresh, "", plan, results, durability, 1);
        }
    }

    /// `{prefix}.append_1k_single_{durability}[_4threads]`: first closed
    /// loop (each producer appends, waits for the acknowledgement, appends
    /// again) for the rate `threads` blocking producers sustain
    /// (`.msgs_per_s`, with the closed-loop percentiles in its params), then
    /// open loop at `plan.offered_load` of that rate on a fixed schedule:
    /// `.open_loop_{p50,p99,p999,max}_us` from each append's intended start
    /// (what a target such as "p99 under 10 ms at N msgs/s" is judged by)
    /// and `.service_*_us` from its actual start. Every repetition runs in
    /// a fresh store, or in one shared store (`at`); `state` ends the
    /// metric names (e.g. `_recycled`).
    pub fn latency_point(
        &self,
        at: LatencyStore<'_>,
        state: &str,
        plan: &Plan,
        results: &mut Results,
        durability: Durability,
        threads: usize,
    ) {
        let reps = plan.reps.min(3);
        // No retention and no prefill: files grow, nothing is dropped while
        // measuring (unlike the memory engine's steady state).
        let options = self.options(durability, 0);
        let suffix = if threads > 1 {
            format!("_{threads}threads")
        } else {
            String::new()
        };
        let prefix = self.name(&format!(
            "append_1k_single_{}{suffix}{state}",
            durability.name()
        ));
        let calibrate = Duration::from_secs_f64(plan.calibrate_secs);
        let closed: io::Result<Vec<(Latency, f64)>> = (0..reps)
            .map(|_| closed_loop_latency(at, &options, 1024, threads, calibrate))
            .collect();
        let closed = match closed {
            Ok(closed) => closed,
            Err(e) => {
                results.failed(&format!("{prefix}.msgs_per_s"), "msgs/s", &e.to_string());
                results.failed(&format!("{prefix}.open_loop_p99_us"), "us", &e.to_string());
                return;
            }
        };
        let max = Stats::new(closed.iter().map(|(_, rate)| *rate).collect());
        let mut closed_latency = serde_json::Map::new();
        for (suffix, quantile) in crate::raw::PERCENTILES {
            let median = Stats::new(
                closed
                    .iter()
                    .map(|(l, _)| util::percentile(&l.response, quantile) / 1000.0)
                    .collect(),
            )
            .median();
            closed_latency.insert(suffix.to_string(), json!(median));
        }
        let p = json!({
            "record_bytes": 1024, "threads": threads, "shards": 1,
            "durability": durability.name(), "api": "Store::append (one record, blocking)",
            "load": "closed loop: each producer appends, waits for the acknowledgement, appends again",
            "seconds_per_rep": plan.calibrate_secs,
            "closed_loop_latency_us": closed_latency,
        });
        results.stats(&format!("{prefix}.msgs_per_s"), &max, "msgs/s", p);

        let rate = max.median() * plan.offered_load;
        let runs: io::Result<Vec<Latency>> = (0..reps)
            .map(|_| {
                paced_latency(
                    at,
                    &options,
                    1024,
                    threads,
                    rate,
                    Duration::from_secs_f64(plan.latency_secs),
                    Pacing::Sleep,
                )
            })
            .collect();
        match runs {
            Ok(runs) => report_latency(
                results,
                &prefix,
                &runs,
                "us",
                1000.0,
                rate,
                json!({
                    "record_bytes": 1024, "threads": threads, "shards": 1,
                    "durability": durability.name(),
                    "offered_fraction_of_max": plan.offered_load,
                    "offered_as": format!(
                        "{threads} producer(s) on one fixed schedule, producer t making appends \
                         t, t+{threads}, ..."
                    ),
                    "seconds_per_rep": plan.latency_secs,
                    "pacing": Pacing::Sleep.describe(),
                }),
            ),
            Err(e) => results.failed(&format!("{prefix}.open_loop_p99_us"), "us", &e.to_string()),
        }
    }

    /// Tail, hot and cold reads and sendfile_to_fd of one shard of 1 KiB
    /// records (written in batches of 64 with `os` durability).
    ///
    /// - tail: a fresh store per repetition; right after it was written, its
    ///   newest `TAIL_WINDOW_BYTES` are read, as a consumer that keeps up with
    ///   the producers reads them (within the journal's 64 MiB tail cache).
    /// - catchup: the whole store read front to back right after it was
    ///   written, as a consumer that fell a whole store behind.
    /// - hot: the last of those stores read again (page cache / mappings
    ///   warm from the tail pass).
    /// - sendfile: the same warm shard to a loopback socket.
    /// - cold: per repetition, the store is closed cleanly, its files are
    ///   fdatasynced and dropped from the page cache
    ///   (posix_fadvise(POSIX_FADV_DONTNEED)), it is reopened and read once.
    ///   mincore(2) checks the eviction; the resident fraction after the
    ///   eviction and after the reopen go into params.
    pub fn reads(&self, base: &Path, plan: &Plan, results: &mut Results) {
        let names = [
            "read_tail_1k.gbps",
            "read_hot_1k.gbps",
            "sendfile_1k.gbps",
            "read_cold_1k.gbps",
            "read_catchup_1k.gbps",
            "read_hot_1k.views_per_s",
        ]
        .map(|n| self.name(n));
        let fail_all = |results: &mut Results, e: &io::Error| {
            for name in &names {
                let unit = if name.ends_with("views_per_s") {
                    "views/s"
                } else {
                    "GB/s"
                };
                results.failed(name, unit, &e.to_string());
            }
        };
        let options = self.options(Durability::Os, 0);
        let p = json!({
            "record_bytes": 1024, "written_in_batches_of": 64, "shard_bytes": plan.read_bytes,
            "request_bytes": FETCH_BYTES, "durability_when_written": "os",
            "measured": READ_MEASURED,
        });
        let mut tail = Vec::new();
        let mut catchup = Vec::new();
        let mut kept = None;
        for _ in 0..plan.reps {
            // One store at a time: the previous one goes before the next fill.
            drop(kept.take());
            let window = (TAIL_WINDOW_BYTES / 1024) as i64;
            let outcome =
                prefilled(base, &options, 1024, 64, plan.read_bytes).and_then(|(bench, end)| {
                    let newest = read_from(&bench.store, (end - window).max(0), end)?;
                    Ok((newest, read_all(&bench.store, end)?, bench, end))
                });
            match outcome {
                Ok((newest, all, bench, end)) => {
                    tail.push(newest);
                    catchup.push(all);
                    kept = Some((bench, end));
                }
                Err(e) => return fail_all(results, &e),
            }
        }
        let Some((mut bench, end)) = kept else {
            return;
        };
        let mut tail_p = p.clone();
        tail_p["fresh_store_per_rep"] = json!(true);
        tail_p["read_bytes"] = json!(TAIL_WINDOW_BYTES);
        tail_p["what"] = json!("the newest bytes, read right after the fill");
        results.stats(&names[0], &Stats::new(tail), "GB/s", tail_p);
        let mut catchup_p = p.clone();
        catchup_p["fresh_store_per_rep"] = json!(true);
        catchup_p["what"] = json!("the whole shard, read right after the fill");
        results.stats(&names[4], &Stats::new(catchup), "GB/s", catchup_p);
        hot_read_and_sendfile(
            results,
            plan,
            &bench.store,
            end,
            [&names[1], &names[5], &names[2]],
            &p,
        );
        let mut after_evict = Vec::new();
        let mut after_open = Vec::new();
        let cold = util::repeat(plan.reps, || {
            bench.reopen(|dir| {
                after_evict.push(util::evict_from_page_cache(dir)?.fraction());
                Ok(())
            })?;
            after_open.push(util::page_cache_residency(bench.path())?.fraction());
            read_all(&bench.store, end)
        });
        let mut cold_p = p.clone();
        cold_p["eviction"] = json!(
            "clean close, fdatasync + posix_fadvise(DONTNEED) on every file, reopen; \
             residency by mincore(2)"
        );
        cold_p["resident_fraction_after_evict"] = json!(after_evict);
        cold_p["resident_fraction_after_reopen"] = json!(after_open);
        results.stats_or_failed(&names[3], cold, "GB/s", cold_p);
    }

    /// Open time after a clean close and after kill -9, with a store of
    /// `plan.read_bytes` of 1 KiB records.
    pub fn reopen(&self, base: &Path, plan: &Plan, results: &mut Results) {
        let p = json!({ "store_bytes": plan.read_bytes, "record_bytes": 1024, "batch": 64,
                        "durability": "os" });
        let clean = util::repeat(plan.reps.min(3), || {
            reopen_clean(base, self.kind, plan.read_bytes).map(|r| r.0)
        });
        results.stats_or_failed(&self.name("reopen_clean.s"), clean, "s", p.clone());
        let mut crash_p = p.clone();
        crash_p["kill"] = json!("SIGKILL while appending, 200 ms after the fill");
        let crash = util::repeat(plan.reps.min(3), || {
            reopen_crash(base, self.kind, plan.read_bytes).map(|r| r.0)
        });
        results.stats_or_failed(&self.name("reopen_crash.s"), crash, "s", crash_p);
    }

    /// Consumer-group offset commits: 1,000 groups × 100 shards (`fsync`),
    /// `GROUP_COMMIT_THREADS` threads each committing its own groups'
    /// offsets round the shards, as a broker's coordinator does for many
    /// consumers at once.
    pub fn group_commits(&self, base: &Path, plan: &Plan, results: &mut Results) {
        let name = self.name("group_commit_offsets.ops_per_s");
        let p = json!({ "groups": 1000, "shards": 100, "threads": GROUP_COMMIT_THREADS,
                        "durability": "fsync",
                        "commit": "each thread commits its groups' offsets, shard after shard" });
        let measured = (|| -> io::Result<Stats> {
            let bench = BenchStore::open(base)?;
            let shards: Vec<String> = (0..100).map(|i| format!("p{i:03}")).collect();
            let names: Vec<&str> = shards.iter().map(String::as_str).collect();
            let options = self.options(Durability::Fsync, 0).to_toml();
            bench
                .store
                .create_shards(&names, Some(&options))
                .map_err(to_io)?;
            let store = &bench.store;
            let shards = &shards;
            util::repeat(plan.reps, || {
                let limit = Duration::from_secs_f64(plan.headline_secs);
                let start = Instant::now();
                let done: io::Result<u64> = std::thread::scope(|scope| {
                    let workers: Vec<_> = (0..GROUP_COMMIT_THREADS)
                        .map(|t| {
                            scope.spawn(move || -> io::Result<u64> {
                                let mut commits = 0u64;
                                while start.elapsed() < limit {
                                    let group = format!(
                                        "g{}",
                                        t + GROUP_COMMIT_THREADS * (commits as usize % 250)
                                    );
                                    let shard = &shards[commits as usize % shards.len()];
                                    store
                                        .commit_offset(&group, shard, commits as i64)
                                        .map_err(to_io)?;
                                    commits += 1;
                                }
                                Ok(commits)
                            })
                        })
                        .collect();
                    workers
                        .into_iter()
                        .map(|w| w.join().expect("no panic"))
                        .sum()
                });
                Ok(done? as f64 / start.elapsed().as_secs_f64())
            })
        })();
        match measured {
            Ok(stats) => results.stats(&name, &stats, "ops/s", p),
            Err(e) => results.failed(&name, "ops/s", &e.to_string()),
        }
    }

    /// One idle shard with old, retained data (32 MiB) while 8 busy shards,
    /// each retaining 4 MiB, write 20× its size: the journal's files over
    /// the bytes the shards retain, right after the last append (the
    /// cleaner runs in the background, as in production). Segments of 8 MiB
    /// so that a run stays short; the files counted include the active and
    /// the prefilled segment.
    pub fn skewed_retention(&self, base: &Path, plan: &Plan, results: &mut Results) {
        let name = self.name("skewed_retention.disk_bytes_ratio");
        let mut p = json!({
            "idle_shard_mb": SKEW_IDLE_BYTES >> 20, "busy_shards": SKEW_BUSY_SHARDS,
            "busy_retention_mb": SKEW_BUSY_RETENTION >> 20,
            "busy_written_mb": 20 * (SKEW_IDLE_BYTES >> 20),
            "segment_mb": SKEW_SEGMENT_BYTES >> 20, "record_bytes": 1024, "batch": 64,
            "durability": "os",
            "measured": "bytes of every file in the journal directory / the shards' retained bytes, \
                         after the last append",
        });
        let mut extra = Vec::new();
        let measured = util::repeat(plan.reps, || {
            let (ratio, details) = skewed_run(base)?;
            extra.push(details);
            Ok(ratio)
        });
        p["runs"] = json!(extra);
        match measured {
            Ok(stats) => results.stats(&name, &stats, "ratio", p),
            Err(e) => results.failed(&name, "ratio", &e.to_string()),
        }
    }

    /// A million shards, if creating them fits in the run: 10,000 are
    /// created first and the time for all is extrapolated from them.
    pub fn million_shards(&self, base: &Path, plan: &Plan, results: &mut Results) {
        let options = self.options(Durability::Os, 0);
        let mut names = vec![
            (self.name("shards_1m.create_s"), "s"),
            (self.name("shards_1m.append_msgs_per_s"), "msgs/s"),
            (self.name("shards_1m.rss_mb"), "MiB"),
            (self.name("shards_1m.rss_growth_mb"), "MiB"),
            (self.name("shards_1m.heap_mb"), "MiB"),
        ];
        if self.prefix == "journal" {
            names.push(("journal.create_1m_shards.s".to_string(), "s"));
            names.push(("journal.shards_1m.checkpoint_mb".to_string(), "MiB"));
        }
        let probe_count = 10_000;
        let limit = Duration::from_secs_f64(plan.many_shard_pass_secs);
        let probe = match many_shards(base, &options, probe_count, 100, 1, limit) {
            Ok(probe) => probe,
            Err(e) => {
                for (name, unit) in &names {
                    results.failed(name, unit, &e.to_string());
                }
                return;
            }
        };
        let projected = probe.create.as_secs_f64() * plan.many_shards as f64 / probe_count as f64;
        let allowed = if plan.quick { 20.0 } else { 120.0 };
        if projected > allowed {
            let reason = format!(
                "skipped: creating {probe_count} {} shards took {:.2} s, so {} would take \
                 about {projected:.0} s (this run allows {allowed:.0} s)",
                self.prefix,
                probe.create.as_secs_f64(),
                plan.many_shards
            );
            for (name, unit) in &names {
                results.absent(name, unit, &reason);
            }
            return;
        }
        let p = json!({ "shards": plan.many_shards, "record_bytes": 100, "threads": 1,
                        "durability": "os",
                        "create": format!("create_shards, {CREATE_CHUNK} names per call"),
                        "append": "one single-record append to every shard in turn, per rep",
                        "pass_time_limit_s": plan.many_shard_pass_secs });
        match many_shards(
            base,
            &options,
            plan.many_shards,
            100,
            plan.reps.min(3),
            limit,
        ) {
            Ok(many) => {
                results.value(&names[0].0, many.create.as_secs_f64(), "s", p.clone());
                if self.prefix == "journal" {
                    let mut same = p.clone();
                    same["note"] = json!("the figure of journal.shards_1m.create_s");
                    results.value(
                        "journal.create_1m_shards.s",
                        many.create.as_secs_f64(),
                        "s",
                        same,
                    );
                    if let Some(bytes) = many.checkpoint_bytes {
                        let mut ckpt = p.clone();
                        ckpt["file"] = json!("journal/index.ckpt after the clean close");
                        results.value(
                            "journal.shards_1m.checkpoint_mb",
                            bytes as f64 / (1u64 << 20) as f64,
                            "MiB",
                            ckpt,
                        );
                    }
                }
                report_shard_memory(results, self.prefix, &many, plan.many_shards, &p);
                let mut one_p = p.clone();
                one_p["append"] =
                    json!("the same single-record appends, all to one shard of the same store");
                let one_name = self.name("shards_1m.one_shard_append_msgs_per_s");
                results.stats(&one_name, &many.one_shard, "msgs/s", one_p);
                results.stats(&names[1].0, &many.append, "msgs/s", p);
                results.compare(
                    &names[1].0,
                    &one_name,
                    1.0,
                    "vs one shard, same appends, same store",
                );
            }
            Err(e) => {
                for (name, unit) in &names {
                    results.failed(name, unit, &e.to_string());
                }
            }
        }
    }
}

/// Closed-loop latency: `threads` producers each append one record, wait
/// for the acknowledgement, and append the next; every acknowledgement is
/// a sample (response and service are the same here). Returns the samples
/// and the rate achieved, msgs/s: what that many blocking producers sustain.
fn closed_loop_latency(
    at: LatencyStore<'_>,
    options: &ShardOptions,
    record_size: usize,
    threads: usize,
    duration: Duration,
) -> io::Result<(Latency, f64)> {
    at.with_shard(options, |store| {
        closed_loop_latency_on(store, record_size, threads, duration)
    })
}

/// `closed_loop_latency` on the shard `lat` of `store`.
fn closed_loop_latency_on(
    store: &Store,
    record_size: usize,
    threads: usize,
    duration: Duration,
) -> io::Result<(Latency, f64)> {
    let barrier = Barrier::new(threads + 1);
    let (histograms, elapsed) = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let barrier = &barrier;
                scope.spawn(move || -> io::Result<Histogram<u64>> {
                    let data = payload(record_size, 1, t as u64 + 31);
                    let record = Record::new(&data);
                    let mut histogram = histogram()?;
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
        barrier.wait();
        let start = Instant::now();
        let histograms = workers
            .into_iter()
            .map(|w| {
                w.join()
                    .map_err(|_| io::Error::other("latency thread panicked"))?
            })
            .collect::<io::Result<Vec<_>>>();
        histograms.map(|h| (h, start.elapsed()))
    })?;
    let mut merged = histogram()?;
    for h in &histograms {
        merged.add(h).map_err(io::Error::other)?;
    }
    let rate = merged.len() as f64 / elapsed.as_secs_f64();
    Ok((
        Latency {
            response: merged.clone(),
            service: merged,
            preempted: 0,
        },
        rate,
    ))
}

/// Shard options for the reopen workloads: `os` durability, since a killed
/// process loses nothing the kernel already has and fsync would only slow
/// the filling down.
fn reopen_options(kind: EngineKind) -> ShardOptions {
    options(kind, Durability::Os, 0)
}

fn fill(store: &Store, bytes: u64) -> io::Result<i64> {
    let data = payload(1024, 64, 41);
    let batch = records(&data, 1024);
    let mut written = 0;
    while written < bytes {
        store.append_batch("data", &batch).map_err(to_io)?;
        written += data.len() as u64;
    }
    Ok(store.shard_info("data").map_err(to_io)?.next_offset)
}

/// Time to open a store holding `bytes` of 1 KiB records after a clean close.
fn reopen_clean(base: &Path, kind: EngineKind, bytes: u64) -> io::Result<(f64, i64)> {
    let dir = tempfile::Builder::new()
        .prefix("reopen-")
        .tempdir_in(base)?;
    let end = {
        let store = Store::open(dir.path(), Config::default()).map_err(to_io)?;
        store
            .create_shard_with("data", reopen_options(kind))
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

/// The child side of `reopen_crash` (`bench --child-append DIR BYTES
/// ENGINE`): fills the store, says "ready" with the offset reached, then
/// keeps appending until it is killed mid-write.
pub fn child_append(dir: &Path, bytes: u64, engine: &str) -> io::Result<()> {
    use std::io::Write;
    let kind = mqstore::engine::registry::available()
        .find(|spec| spec.name == engine)
        .map(|spec| spec.kind)
        .ok_or_else(|| io::Error::other(format!("engine '{engine}' is not in this build")))?;
    let store = Store::open(dir, Config::default()).map_err(to_io)?;
    store
        .create_shard_with("data", reopen_options(kind))
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
fn reopen_crash(base: &Path, kind: EngineKind, bytes: u64) -> io::Result<(f64, i64, i64)> {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let dir = tempfile::Builder::new().prefix("crash-").tempdir_in(base)?;
    let mut child = Command::new(std::env::current_exe()?)
        .arg("--child-append")
        .arg(dir.path())
        .arg(bytes.to_string())
        .arg(kind.name())
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

const SKEW_IDLE_BYTES: u64 = 32 << 20;
const SKEW_BUSY_SHARDS: usize = 8;
const SKEW_BUSY_RETENTION: u64 = 4 << 20;
const SKEW_SEGMENT_BYTES: u64 = 8 << 20;

/// Bytes of every file in `dir`.
fn dir_bytes(dir: &Path) -> io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        total += entry?.metadata()?.len();
    }
    Ok(total)
}

/// One run of `skewed_retention`: the final ratio, and what else it saw.
fn skewed_run(base: &Path) -> io::Result<(f64, serde_json::Value)> {
    let dir = tempfile::Builder::new()
        .prefix("skewed-")
        .tempdir_in(base)?;
    let config = Config::from_toml_str(&format!(
        "[shard]\nengine = \"journal\"\ndurability = \"os\"\n\
         [journal]\nsegment_bytes = {SKEW_SEGMENT_BYTES}\n"
    ))
    .map_err(to_io)?;
    let store = Store::open(dir.path(), config).map_err(to_io)?;
    let journal = dir.path().join("journal");
    let value = vec![b'v'; 1024];
    let batch: Vec<Record<'_>> = (0..64).map(|_| Record::new(&value)).collect();
    let batch_bytes = 64 * 1024;
    store.create_shard("idle", None).map_err(to_io)?;
    for _ in 0..SKEW_IDLE_BYTES / batch_bytes {
        store.append_batch("idle", &batch).map_err(to_io)?;
    }
    let busy: Vec<String> = (0..SKEW_BUSY_SHARDS).map(|i| format!("busy{i}")).collect();
    let options = format!("retention_bytes = {SKEW_BUSY_RETENTION}");
    for name in &busy {
        store.create_shard(name, Some(&options)).map_err(to_io)?;
    }
    let retained = |store: &Store| -> io::Result<u64> {
        let mut bytes = 0;
        for name in busy.iter().map(String::as_str).chain(["idle"]) {
            bytes += store.shard_info(name).map_err(to_io)?.bytes;
        }
        Ok(bytes)
    };
    let mut worst: f64 = 0.0;
    let batches = 20 * SKEW_IDLE_BYTES / batch_bytes;
    for i in 0..batches {
        store
            .append_batch(&busy[i as usize % busy.len()], &batch)
            .map_err(to_io)?;
        if i % 128 == 127 {
            worst = worst.max(dir_bytes(&journal)? as f64 / retained(&store)? as f64);
        }
    }
    let ratio = dir_bytes(&journal)? as f64 / retained(&store)? as f64;
    let stats = store.shard_stats("idle").map_err(to_io)?;
    let journal_stats = &stats["engine_stats"]["journal"];
    let relocated = journal_stats["relocated_bytes"].as_u64().unwrap_or(0);
    let details = json!({
        "ratio": ratio,
        "worst_sampled_ratio": worst,
        "relocated_mb": relocated as f64 / (1 << 20) as f64,
        "relocated_per_busy_byte": relocated as f64 / (batches * batch_bytes) as f64,
        "cleaning_passes": journal_stats["cleaning_passes"],
        "segments": journal_stats["segments"],
    });
    store.close().map_err(to_io)?;
    Ok((ratio, details))
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
        for window in [0, 4] {
            let spec = AppendSpec {
                record_size: 100,
                batch: 64,
                threads: 2,
                shards: 3,
                window,
            };
            let rate = append_once(
                dir.path(),
                &memory(),
                spec,
                Duration::from_millis(20),
                u64::MAX,
            )
            .unwrap();
            assert!(rate > 0.0, "window {window}");
        }
    }

    #[test]
    fn byte_budget_stops_early() {
        let dir = tempfile::tempdir().unwrap();
        let spec = AppendSpec {
            record_size: 1000,
            batch: 1,
            threads: 1,
            shards: 1,
            window: 0,
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
            LatencyStore::Fresh(dir.path()),
            &memory(),
            100,
            1,
            100_000.0,
            Duration::from_millis(50),
            Pacing::Spin,
        )
        .unwrap();
        assert_eq!(lat.response.len(), 5000);
        assert!(lat.response.value_at_quantile(0.5) >= lat.service.value_at_quantile(0.5) / 2);
        // Several producers share one schedule: every append is made once.
        let lat = paced_latency(
            LatencyStore::Fresh(dir.path()),
            &memory(),
            100,
            3,
            20_000.0,
            Duration::from_millis(50),
            Pacing::Sleep,
        )
        .unwrap();
        assert_eq!(lat.response.len(), 1000);
        assert!(lat.response.min() >= lat.service.min());
    }

    #[test]
    fn reads_touch_what_they_count() {
        let dir = tempfile::tempdir().unwrap();
        let (bench, end) = prefilled(dir.path(), &memory(), 1024, 64, 1 << 20).unwrap();
        let touched = read_range(&bench.store, 0, end, true).unwrap();
        let views = read_range(&bench.store, 0, end, false).unwrap();
        assert_eq!((touched.bytes, touched.records), (1 << 20, 1024));
        assert_eq!((views.bytes, views.records), (1 << 20, 1024));
    }

    #[test]
    fn memory_refuses_fsync() {
        let dir = tempfile::tempdir().unwrap();
        let answer = accepts(dir.path(), EngineKind::Memory, Durability::Fsync).unwrap();
        assert!(answer.unwrap_err().contains("durability"));
    }
}
