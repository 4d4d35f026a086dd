//! The Journal engine's suite, run when the build has the engine: the
//! persistent-engine workloads of `engine::Persistent` (appends per
//! durability mode and the one-factor matrix, latency, tail/hot/cold reads,
//! sendfile_to_fd, reopen after a clean close and after kill -9, a million
//! shards). Every store lives under --dir, so the journal writes to the
//! filesystem the raw baselines measured.

use std::io;
use std::path::Path;
use std::time::Duration;

use mqstore::{Config, Durability, EngineKind, ShardOptions, Store};
use serde_json::json;

use crate::engine::{
    self, headline_workloads, AppendSpec, BenchStore, LatencyStore, Persistent,
    APPEND_RETENTION_BYTES,
};
use crate::{util, Plan, Results};

/// The journal metrics the issue names (reported absent without the engine).
pub const ISSUE_METRICS: [(&str, &str); 18] = [
    ("journal.append_1k_batch64_fsync.msgs_per_s", "msgs/s"),
    (
        "journal.append_1k_batch64_fsync_pipelined.msgs_per_s",
        "msgs/s",
    ),
    (
        "journal.append_1k_batch64_fsync_eventloop.msgs_per_s",
        "msgs/s",
    ),
    ("journal.append_100b_batch1024_fsync.msgs_per_s", "msgs/s"),
    (
        "journal.append_100b_batch1024_fsync_pipelined.msgs_per_s",
        "msgs/s",
    ),
    (
        "journal.append_1k_single_fsync_4threads.open_loop_p99_us",
        "us",
    ),
    ("journal.shards_1m.rss_mb", "MiB"),
    ("journal.shards_1m.append_msgs_per_s", "msgs/s"),
    ("journal.create_1m_shards.s", "s"),
    ("journal.shards_1m.checkpoint_mb", "MiB"),
    ("journal.group_commit_offsets.ops_per_s", "ops/s"),
    ("journal.skewed_retention.disk_bytes_ratio", "ratio"),
    ("journal.read_tail_1k.gbps", "GB/s"),
    ("journal.read_hot_1k.gbps", "GB/s"),
    ("journal.read_cold_1k.gbps", "GB/s"),
    ("journal.sendfile_1k.gbps", "GB/s"),
    ("journal.reopen_clean.s", "s"),
    ("journal.reopen_crash.s", "s"),
];

/// The journal as a persistent engine under test.
pub const JOURNAL: Persistent = Persistent {
    kind: EngineKind::Journal,
    prefix: "journal",
};

/// Runs one workload group of the journal's suite (see
/// `engine::PERSISTENT_GROUPS`).
pub fn run_group(group: &str, base: &Path, plan: &Plan, results: &mut Results) {
    println!("== journal engine: {group}");
    JOURNAL.run_group(group, base, plan, results);
    match group {
        "append" => recycled_appends(base, plan, results),
        "latency" => recycled_latency(base, plan, results),
        _ => {}
    }
}

/// The four-producer `fsync` latency point in steady state
/// (`journal.append_1k_single_fsync_4threads_recycled.*`): one store that
/// has reclaimed segments (`steady_store`), every repetition on a new
/// shard of it, deleted after it.
fn recycled_latency(base: &Path, plan: &Plan, results: &mut Results) {
    let prefix = "journal.append_1k_single_fsync_4threads_recycled";
    match steady_store(base) {
        Ok(bench) => JOURNAL.latency_point(
            LatencyStore::Shared(&bench.store),
            "_recycled",
            plan,
            results,
            Durability::Fsync,
            4,
        ),
        Err(e) => results.failed(&format!("{prefix}.open_loop_p99_us"), "us", &e.to_string()),
    }
}

/// The headline workloads measured again in steady state.
const RECYCLED: [&str; 4] = [
    "append_1k_batch64_fsync.msgs_per_s",
    "append_1k_batch64_fsync_t4_s4.msgs_per_s",
    "append_1k_batch64_fsync_t16_s16.msgs_per_s",
    "append_1k_batch64_fsync_pipelined.msgs_per_s",
];

/// The durable headline appends of a journal in steady state, as a broker
/// runs it once its first segments were reclaimed: the run writes into a
/// recycled segment file (`[journal] recycle_segments`, default config),
/// whose blocks are written already. The other rows measure a fresh
/// store, whose first segment is new space (zeroed ahead of the writer,
/// or converted from unwritten extents by each fdatasync).
fn recycled_appends(base: &Path, plan: &Plan, results: &mut Results) {
    let secs = Duration::from_secs_f64(plan.headline_secs);
    for workload in headline_workloads() {
        if !RECYCLED.contains(&workload.suffix.as_str()) {
            continue;
        }
        let options = engine::options(
            EngineKind::Journal,
            workload.durability,
            APPEND_RETENTION_BYTES,
        );
        let mut p = workload.spec.params(&options);
        p["seconds_per_rep"] = json!(plan.headline_secs);
        p["mode"] = json!(workload.mode());
        p["state"] = json!(
            "steady state: one store per row, in which a shard first wrote 3 segments and \
             was deleted; each repetition then writes new shards into recycled files \
             (deleted after it)"
        );
        let name = workload
            .suffix
            .replace(".msgs_per_s", "_recycled.msgs_per_s");
        let row = recycled_row(base, &options, workload.spec, secs, plan.reps);
        if let Ok((_, counters)) = &row {
            p["journal"] = counters.clone();
        }
        results.stats_or_failed(&format!("journal.{name}"), row.map(|r| r.0), "msgs/s", p);
    }
}

/// The repetitions of one steady-state row in one store, with the
/// journal's counters over them: segments started in recycled files, and
/// bytes zeroed ahead of the writer (none while it writes recycled files).
fn recycled_row(
    base: &Path,
    options: &ShardOptions,
    spec: AppendSpec,
    duration: Duration,
    reps: usize,
) -> io::Result<(util::Stats, serde_json::Value)> {
    let bench = steady_store(base)?;
    let store = &bench.store;
    let mut first = None;
    let mut last = None;
    let stats = util::repeat(reps, || {
        let names = engine::create_append_shards(store, options, spec.shards)?;
        let before = journal_counters(store, &names[0])?;
        first.get_or_insert(before.clone());
        let rate = engine::append_run(store, &names, spec, duration, u64::MAX)?;
        last = Some(journal_counters(store, &names[0])?);
        for name in &names {
            store.delete_shard(name).map_err(engine::to_io)?;
        }
        Ok(rate)
    })?;
    let counter = |key: &str| {
        let at = |c: &Option<serde_json::Value>| c.as_ref().and_then(|c| c[key].as_u64());
        at(&last).zip(at(&first)).map(|(l, f)| l - f)
    };
    Ok((
        stats,
        json!({
            "recycled_segments_before": first.as_ref().map(|c| c["recycled_segments"].clone()),
            "recycled_segments_during": counter("recycled_segments"),
            "zeroed_bytes_during": counter("zeroed_bytes"),
        }),
    ))
}

/// A journal store (default config) in steady state: a shard with
/// durability `none` and the append rows' retention wrote 3 segments and
/// 64 MiB, then was deleted, so the journal rolled through its segments,
/// reclaimed them into its pool of free files and writes a recycled one.
fn steady_store(base: &Path) -> io::Result<BenchStore> {
    let bench = BenchStore::open(base)?;
    let store = &bench.store;
    let warm = engine::options(
        EngineKind::Journal,
        Durability::None,
        APPEND_RETENTION_BYTES,
    );
    store
        .create_shard_with("warm", warm)
        .map_err(engine::to_io)?;
    let data = engine::payload(16 << 10, 64, 7);
    let batch = engine::records(&data, 16 << 10);
    let bytes = 3 * Config::default().journal.segment_bytes + (64 << 20);
    let mut written = 0;
    while written < bytes {
        store.append_batch("warm", &batch).map_err(engine::to_io)?;
        written += data.len() as u64;
    }
    store.delete_shard("warm").map_err(engine::to_io)?;
    Ok(bench)
}

fn journal_counters(store: &Store, shard: &str) -> io::Result<serde_json::Value> {
    let stats = store.shard_stats(shard).map_err(engine::to_io)?;
    let journal = &stats["engine_stats"]["journal"];
    Ok(json!({
        "recycled_segments": journal["recycled_segments"],
        "zeroed_bytes": journal["prefill"]["zeroed_bytes"],
    }))
}

/// Journal metrics compared, as payload GB/s, with the raw write ceiling
/// (the best O_DIRECT write of the run): the durable appends.
pub const VS_CEILING: [&str; 10] = [
    "journal.append_1k_batch64_fsync.msgs_per_s",
    "journal.append_1k_batch64_fsync_t4_s4.msgs_per_s",
    "journal.append_1k_batch64_fsync_t16_s16.msgs_per_s",
    "journal.append_1k_batch64_fsync_pipelined.msgs_per_s",
    "journal.append_1k_batch64_fsync_recycled.msgs_per_s",
    "journal.append_1k_batch64_fsync_t4_s4_recycled.msgs_per_s",
    "journal.append_1k_batch64_fsync_t16_s16_recycled.msgs_per_s",
    "journal.append_1k_batch64_fsync_pipelined_recycled.msgs_per_s",
    "journal.append_1k_batch64_fsync_eventloop.msgs_per_s",
    "journal.append_100b_batch1024_fsync_pipelined.msgs_per_s",
];

pub fn compare(results: &mut Results) {
    // Reads touch every byte they count: compared with one core reading and
    // summing a large buffer with the same loop.
    for name in ["journal.read_tail_1k.gbps", "journal.read_hot_1k.gbps"] {
        results.compare(name, "raw.mem_read_gbps", 1.0, "bytes touched, GB/s");
    }
    results.compare("journal.sendfile_1k.gbps", "raw.sendfile_gbps", 1.0, "GB/s");
    for name in VS_CEILING {
        let record_bytes = if name.contains("_100b_") {
            100.0
        } else {
            1024.0
        };
        results.compare(
            name,
            crate::disk::CEILING,
            record_bytes / 1e9,
            "payload GB/s vs the best raw O_DIRECT write",
        );
    }
    // Like with like: every RocksDB figure beside the journal's same
    // workload, and the journal / RocksDB ratio as a metric of its own.
    for workload in crate::engine::headline_workloads() {
        let journal = format!("journal.{}", workload.suffix);
        let rocksdb = format!("{}.{}", crate::rocksdb_peer::PREFIX, workload.suffix);
        if results.get(&journal).is_none() && results.get(&rocksdb).is_none() {
            continue; // neither section ran
        }
        results.compare(&rocksdb, &journal, 1.0, "RocksDB / journal, same workload");
        let ratio_name = format!(
            "journal_vs_rocksdb.{}.ratio",
            workload.suffix.trim_end_matches(".msgs_per_s")
        );
        let p = serde_json::json!({
            "journal": journal, "rocksdb": rocksdb, "mode": workload.mode(),
            "durability": workload.durability.name(),
            "measured": "journal msgs/s / RocksDB msgs/s, medians of the same run",
        });
        match (results.value_of(&journal), results.value_of(&rocksdb)) {
            (Some(j), Some(r)) if r > 0.0 => {
                let mut p = p;
                p["note"] = serde_json::json!(format!(
                    "{} vs {} msgs/s",
                    crate::results::human(j),
                    crate::results::human(r)
                ));
                results.value(&ratio_name, j / r, "x", p)
            }
            _ => {
                let missing = if results.value_of(&journal).is_none() {
                    &journal
                } else {
                    &rocksdb
                };
                results.absent(&ratio_name, "x", &format!("{missing} was not measured"));
            }
        }
    }
    group_commit_ratios(results);
}

/// How group commit scales, and how close one blocking producer comes to
/// the device: more producers over one producer, and one producer over
/// the bound of one batch per O_DIRECT 64 KiB write + fdatasync (p50), all
/// measured in this run.
/// The same for the steady-state rows (`_recycled`).
fn group_commit_ratios(results: &mut Results) {
    let mut ratios = Vec::new();
    for state in ["", "_recycled"] {
        let one = format!("journal.append_1k_batch64_fsync{state}.msgs_per_s");
        for producers in [4, 16] {
            let many = format!(
                "journal.append_1k_batch64_fsync_t{producers}_s{producers}{state}.msgs_per_s"
            );
            ratios.push((
                format!("journal.group_commit_t{producers}_s{producers}_vs_t1{state}.ratio"),
                results
                    .value_of(&many)
                    .zip(results.value_of(&one))
                    .map(|(m, o)| m / o),
                format!("{many} / {one}"),
            ));
        }
        let bound = results
            .value_of("raw.odirect_commit_64k_p50_us")
            .filter(|us| *us > 0.0)
            .map(|us| 64.0 * 1e6 / us);
        ratios.push((
            format!("journal.append_1k_batch64_fsync{state}.vs_commit_bound.ratio"),
            results.value_of(&one).zip(bound).map(|(o, b)| o / b),
            format!("{one} / (64 records per raw.odirect_commit_64k_p50_us)"),
        ));
    }
    for (name, ratio, measured) in ratios {
        match ratio {
            Some(ratio) => results.value(
                &name,
                ratio,
                "x",
                serde_json::json!({ "measured": measured }),
            ),
            None => results.absent(&name, "x", &format!("not measured in this run: {measured}")),
        }
    }
}
