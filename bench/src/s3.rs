//! The S3 engine (`engine = "s3"`) against the object_store client alone,
//! on the same server (`scripts/with-servers.sh` starts s3s-fs on
//! loopback and exports the `AWS_*` variables both sides read), in the
//! same run, alternating in rounds.
//!
//! | metric | what is measured |
//! |---|---|
//! | `raw.s3_put_gbps` | PUTs of 16 MiB objects, one in flight |
//! | `s3.upload.gbps` | one producer appending 64 × 1 KiB batches to one `fsync` shard with `append_batch_nowait` (a window of 256 batches), from the first append until `wait_durable` of the last returned: objects of `s3.object_bytes` (16 MiB) uploaded in the background as they fill, each with its manifest write |
//! | `raw.s3_get_range_gbps` | ranged GETs of 4 MiB (the engine's block), one in flight, reading 16 MiB objects from start to end |
//! | `s3.read_cold_1k.gbps` | a sequential consumer reading what `s3.upload` stored, with `Store::read` of 1 MiB at a time, from a store opened again (empty cache): blocks of 4 MiB, two read ahead per miss |
//!
//! | `journal.append_1k_batch64_fsync_beside_hybrid.msgs_per_s` | one producer, `Store::append_batch` of 64 × 1 KiB to one journal shard, `fsync` |
//! | `hybrid.append_1k_batch64_fsync.msgs_per_s` | the same to one hybrid shard whose tierer moves everything beyond a 16 MiB hot window to objects while the producer appends (`hot_bytes` 16 MiB, a pass every 100 ms, 16 MiB journal segments) |
//! | `hybrid.local_bytes_ratio` | after the hybrid run (at least 10 × the hot window stored) and the tierer's catching up: the local tier's disk bytes (`du` of `<store>/hybrid`, journal segments as allocated) / the shard's stored bytes |
//!
//! Bytes are payload bytes (record values) on the engine side and object
//! bytes on the raw side. The targets: each S3 engine row ≥ 70 % of its
//! raw row; the hybrid append ≥ 90 % of the journal's, measured in
//! alternating rounds.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mqstore::{Config, Durability, EngineKind};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde_json::json;

use crate::engine::{self, to_io, AppendSpec, BenchStore};
use crate::util::{self, Stats};
use crate::{Plan, Results};

pub const ENDPOINT_ENV: &str = "AWS_ENDPOINT";

pub const METRICS: [(&str, &str); 7] = [
    ("raw.s3_put_gbps", "GB/s"),
    ("s3.upload.gbps", "GB/s"),
    ("raw.s3_get_range_gbps", "GB/s"),
    ("s3.read_cold_1k.gbps", "GB/s"),
    (
        "journal.append_1k_batch64_fsync_beside_hybrid.msgs_per_s",
        "msgs/s",
    ),
    ("hybrid.append_1k_batch64_fsync.msgs_per_s", "msgs/s"),
    ("hybrid.local_bytes_ratio", "x"),
];

/// The hybrid rows' hot window.
const HOT_BYTES: u64 = 16 << 20;

const OBJECT: usize = 16 << 20;
const RANGE: u64 = 4 << 20;
const RECORD: usize = 1024;
const BATCH: usize = 64;
const WINDOW: usize = 256;

/// Payload per round and side: enough objects that the first and last
/// (partly filled) ones weigh little.
fn round_bytes(plan: &Plan) -> u64 {
    if plan.headline_secs < 2.0 {
        64 << 20
    } else {
        256 << 20
    }
}

fn gbps(bytes: u64, took: Duration) -> f64 {
    bytes as f64 / took.as_secs_f64() / 1e9
}

/// The raw side: object_store's S3 client from the `AWS_*` variables.
struct Raw {
    runtime: tokio::runtime::Runtime,
    store: Arc<dyn ObjectStore>,
    prefix: String,
}

impl Raw {
    fn new() -> io::Result<Raw> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let store = AmazonS3Builder::from_env()
            .build()
            .map_err(io::Error::other)?;
        let prefix = format!("mqsb-raw-{}", std::process::id());
        Ok(Raw {
            runtime,
            store: Arc::new(store),
            prefix,
        })
    }

    fn path(&self, round: usize, i: usize) -> ObjectPath {
        ObjectPath::from(format!("{}/{round}/{i:06}", self.prefix))
    }

    fn put_round(&self, round: usize, objects: usize, data: &bytes::Bytes) -> io::Result<f64> {
        let start = Instant::now();
        for i in 0..objects {
            let payload = PutPayload::from_bytes(data.clone());
            self.runtime
                .block_on(self.store.put(&self.path(round, i), payload))
                .map_err(io::Error::other)?;
        }
        Ok(gbps((objects * OBJECT) as u64, start.elapsed()))
    }

    fn get_round(&self, round: usize, objects: usize) -> io::Result<f64> {
        let start = Instant::now();
        let mut read = 0u64;
        for i in 0..objects {
            let path = self.path(round, i);
            for at in (0..OBJECT as u64).step_by(RANGE as usize) {
                let range = at..(at + RANGE).min(OBJECT as u64);
                let bytes = self
                    .runtime
                    .block_on(self.store.get_range(&path, range))
                    .map_err(io::Error::other)?;
                read += bytes.len() as u64;
            }
        }
        Ok(gbps(read, start.elapsed()))
    }

    fn delete_round(&self, round: usize, objects: usize) {
        for i in 0..objects {
            let _ = self
                .runtime
                .block_on(self.store.delete(&self.path(round, i)));
        }
    }
}

fn engine_config() -> Config {
    let mut config = Config::default();
    config.s3.object_bytes = OBJECT as u64;
    config.s3.block_bytes = RANGE;
    config
}

/// Appends `bytes` of payload, pipelined, and waits for the last batch;
/// then reads it back from a store opened again. Returns (upload GB/s,
/// cold read GB/s).
fn engine_round(base: &Path, bytes: u64) -> io::Result<(f64, f64, serde_json::Value)> {
    let mut bench = BenchStore::open_with(base, engine_config())?;
    let spec = AppendSpec {
        record_size: RECORD,
        batch: BATCH,
        threads: 1,
        shards: 1,
        window: WINDOW,
    };
    let options = engine::options(EngineKind::S3, Durability::Fsync, 0);
    let names = engine::create_append_shards(&bench.store, &options, 1)?;
    let start = Instant::now();
    let rate = engine::append_run(&bench.store, &names, spec, Duration::from_secs(3600), bytes)?;
    let took = start.elapsed();
    let appended = (rate * took.as_secs_f64()) as u64 * RECORD as u64;
    let upload = gbps(appended, took);
    let stats = bench.store.shard_stats(&names[0]).map_err(to_io)?;
    bench.reopen(|_| Ok(()))?;
    let start = Instant::now();
    let (mut from, mut read) = (0i64, 0u64);
    loop {
        let got = bench
            .store
            .read(&names[0], from, usize::MAX, 1 << 20)
            .map_err(to_io)?;
        if got.records.is_empty() {
            break;
        }
        read += got
            .records
            .iter()
            .map(|r| r.value_bytes().len() as u64)
            .sum::<u64>();
        from = got.next_offset;
    }
    let cold = gbps(read, start.elapsed());
    let engine_stats = bench.store.shard_stats(&names[0]).map_err(to_io)?;
    let _ = bench.store.delete_shard(&names[0]);
    bench.store.close().map_err(to_io)?;
    Ok((
        upload,
        cold,
        json!({"after_upload": stats, "after_read": engine_stats}),
    ))
}

pub fn group(base: &Path, plan: &Plan, results: &mut Results) -> io::Result<()> {
    if std::env::var_os(ENDPOINT_ENV).is_none() {
        return Err(io::Error::other(format!(
            "{ENDPOINT_ENV} is not set: the s3 group needs a running S3-compatible server; run the \
             bench under scripts/with-servers.sh (make bench and make bench-quick do)"
        )));
    }
    let raw = Raw::new()?;
    let bytes = round_bytes(plan);
    let objects = (bytes as usize).div_ceil(OBJECT);
    let mut data = vec![0u8; OBJECT];
    util::fill_pseudo_random(&mut data, 316);
    let data = bytes::Bytes::from(data);
    let (mut put, mut upload, mut get, mut cold) = (vec![], vec![], vec![], vec![]);
    let mut last_stats = json!(null);
    for round in 0..plan.reps.max(2) {
        put.push(raw.put_round(round, objects, &data)?);
        let (u, c, stats) = engine_round(base, bytes)?;
        upload.push(u);
        get.push(raw.get_round(round, objects)?);
        cold.push(c);
        raw.delete_round(round, objects);
        last_stats = stats;
    }
    let server = json!({
        "endpoint_from": ENDPOINT_ENV,
        "bytes_per_round": bytes,
        "object_bytes": OBJECT,
        "measured": "alternating rounds: raw PUT, engine upload, raw GET, engine cold read",
    });
    let with = |extra: serde_json::Value| {
        let mut p = server.clone();
        for (k, v) in extra.as_object().expect("object") {
            p[k] = v.clone();
        }
        p
    };
    results.stats(
        "raw.s3_put_gbps",
        &Stats::new(put),
        "GB/s",
        with(json!({"api": "ObjectStore::put of a 16 MiB object, one in flight"})),
    );
    results.stats(
        "s3.upload.gbps",
        &Stats::new(upload),
        "GB/s",
        with(json!({
            "api": format!("Store::append_batch_nowait of {BATCH} x {RECORD} B, window {WINDOW}, fsync; until wait_durable of the last"),
            "target": "at least 0.7 x raw.s3_put_gbps",
            "engine_stats_last_rep": last_stats,
        })),
    );
    results.stats(
        "raw.s3_get_range_gbps",
        &Stats::new(get),
        "GB/s",
        with(json!({"api": "ObjectStore::get_range of 4 MiB, one in flight, 16 MiB objects"})),
    );
    results.stats(
        "s3.read_cold_1k.gbps",
        &Stats::new(cold),
        "GB/s",
        with(json!({
            "api": "Store::read of 1 MiB at a time from offset 0, store reopened (empty cache)",
            "target": "at least 0.7 x raw.s3_get_range_gbps",
        })),
    );
    hybrid_rows(base, plan, results)
}

/// Bytes the files under `dir` take on disk (allocated blocks).
fn disk_bytes(dir: &Path) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += match meta.is_dir() {
            true => disk_bytes(&entry.path())?,
            false => meta.blocks() * 512,
        };
    }
    Ok(total)
}

fn hybrid_config() -> Config {
    let mut config = engine_config();
    config.hybrid.hot_bytes = HOT_BYTES;
    config.hybrid.hot_duration_ms = 24 * 3_600_000;
    config.hybrid.tier_interval_ms = 100;
    config.journal.segment_bytes = 16 << 20;
    config
}

/// One producer appending for `secs` to one shard of `kind`; for the
/// hybrid engine also (local disk bytes, stored bytes) once its tierer
/// caught up.
fn append_round(base: &Path, kind: EngineKind, secs: f64) -> io::Result<(f64, Option<(u64, u64)>)> {
    let config = match kind {
        EngineKind::Hybrid => hybrid_config(),
        _ => Config::default(),
    };
    let bench = BenchStore::open_with(base, config)?;
    let spec = AppendSpec {
        record_size: RECORD,
        batch: BATCH,
        threads: 1,
        shards: 1,
        window: 0,
    };
    let options = engine::options(kind, Durability::Fsync, 0);
    let names = engine::create_append_shards(&bench.store, &options, 1)?;
    let rate = engine::append_run(
        &bench.store,
        &names,
        spec,
        Duration::from_secs_f64(secs),
        u64::MAX,
    )?;
    let mut sizes = None;
    if kind == EngineKind::Hybrid {
        // The tierer's passes catch up (every 100 ms): at most a minute.
        let deadline = Instant::now() + Duration::from_secs(60);
        let info = loop {
            let info = bench.store.shard_info(&names[0]).map_err(to_io)?;
            let stats = bench.store.shard_stats(&names[0]).map_err(to_io)?;
            let boundary = stats["engine_stats"]["boundary"].as_i64().unwrap_or(0);
            let local = (info.next_offset - boundary) as u64 * RECORD as u64;
            if local <= 2 * HOT_BYTES || Instant::now() > deadline {
                break info;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        sizes = Some((disk_bytes(&bench.path().join("hybrid"))?, info.bytes));
    }
    let _ = bench.store.delete_shard(&names[0]);
    bench.store.close().map_err(to_io)?;
    Ok((rate, sizes))
}

fn hybrid_rows(base: &Path, plan: &Plan, results: &mut Results) -> io::Result<()> {
    // At least 10 x the hot window per hybrid round at the journal's rate.
    let secs = plan.headline_secs.max(4.0);
    let (mut journal, mut hybrid, mut ratios) = (vec![], vec![], vec![]);
    let mut stored = 0;
    for _ in 0..plan.reps.max(2) {
        journal.push(append_round(base, EngineKind::Journal, secs)?.0);
        let (rate, sizes) = append_round(base, EngineKind::Hybrid, secs)?;
        hybrid.push(rate);
        if let Some((local, total)) = sizes {
            ratios.push(local as f64 / total.max(1) as f64);
            stored = total;
        }
    }
    let p = json!({
        "api": format!("Store::append_batch of {BATCH} x {RECORD} B, one producer, one shard, fsync"),
        "seconds_per_rep": secs,
        "measured": "alternating rounds: journal, hybrid",
    });
    results.stats(
        "journal.append_1k_batch64_fsync_beside_hybrid.msgs_per_s",
        &Stats::new(journal),
        "msgs/s",
        p.clone(),
    );
    let mut hp = p.clone();
    hp["hybrid"] =
        json!({"hot_bytes": HOT_BYTES, "tier_interval_ms": 100, "journal_segment_bytes": 16 << 20});
    hp["target"] = json!("at least 0.9 x journal.append_1k_batch64_fsync_beside_hybrid.msgs_per_s");
    results.stats(
        "hybrid.append_1k_batch64_fsync.msgs_per_s",
        &Stats::new(hybrid),
        "msgs/s",
        hp,
    );
    results.stats(
        "hybrid.local_bytes_ratio",
        &Stats::new(ratios),
        "x",
        json!({
            "measured": "du of <store>/hybrid (journal segments as allocated) / the shard's stored bytes, once the tierer caught up",
            "hot_bytes": HOT_BYTES,
            "stored_bytes_last_rep": stored,
            "hot_windows_stored_last_rep": stored as f64 / HOT_BYTES as f64,
        }),
    );
    Ok(())
}

/// In the parent: each engine row's ratio to its raw row.
pub fn compare(results: &mut Results) {
    results.compare(
        "hybrid.append_1k_batch64_fsync.msgs_per_s",
        "journal.append_1k_batch64_fsync_beside_hybrid.msgs_per_s",
        1.0,
        "hybrid / journal, medians",
    );
    results.compare(
        "s3.upload.gbps",
        "raw.s3_put_gbps",
        1.0,
        "engine / raw, medians",
    );
    results.compare(
        "s3.read_cold_1k.gbps",
        "raw.s3_get_range_gbps",
        1.0,
        "engine / raw, medians",
    );
}
