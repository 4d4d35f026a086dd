//! The Memory engine's suite: the append matrix, the headline batch figure,
//! paced single-append latency, tail reads, sendfile_to_fd, a million shards
//! and peak RSS. Durability modes other than `none` are reported as n/a with
//! the store's own refusal, since the engine keeps nothing across a crash.

use std::path::Path;
use std::time::Duration;

use mqstore::{Durability, EngineKind};
use serde_json::json;

use crate::engine::{self, AppendSpec, APPEND_RETENTION_BYTES};
use crate::util;
use crate::{Plan, Results};

pub const RECORD_SIZES: [usize; 3] = [100, 1024, 16 << 10];
pub const BATCHES: [usize; 3] = [1, 64, 1024];
pub const THREADS: [usize; 3] = [1, 2, 4];
pub const SHARDS: [usize; 2] = [1, 1000];

/// The size as it appears in metric names: 100b, 1k, 16k.
pub fn size_label(bytes: usize) -> String {
    if bytes >= 1024 && bytes.is_multiple_of(1024) {
        format!("{}k", bytes / 1024)
    } else {
        format!("{bytes}b")
    }
}

pub const HEADLINE: &str = "memory.append_100b_batch1024.msgs_per_s";
pub const HEADLINE_SPEC: AppendSpec = AppendSpec {
    record_size: 100,
    batch: 1024,
    threads: 1,
    shards: 1,
    window: 0,
};

pub fn matrix_name(spec: &AppendSpec) -> String {
    format!(
        "memory.append_{}_batch{}_t{}_s{}.msgs_per_s",
        size_label(spec.record_size),
        spec.batch,
        spec.threads,
        spec.shards
    )
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// The memory engine's workload groups, each run in a child process of its
/// own (`bench --only memory --group NAME`), so each has its own peak RSS.
pub const GROUPS: [&str; 4] = ["append", "latency", "read", "shards"];

/// Metrics that need no measurement: modes and workloads the engine does
/// not have (recorded by the parent process).
pub fn not_applicable(base: &Path, plan: &Plan, results: &mut Results) {
    for durability in [Durability::Os, Durability::Fsync] {
        let name = format!("memory.append_1k_batch64_{}.msgs_per_s", durability.name());
        match engine::accepts(base, EngineKind::Memory, durability) {
            Ok(Err(refusal)) => results.not_applicable(&name, "msgs/s", &refusal),
            Ok(Ok(())) => {
                // The engine gained this mode: measure it like the rest.
                let options =
                    engine::options(EngineKind::Memory, durability, APPEND_RETENTION_BYTES);
                let spec = engine::MATRIX_BASE;
                results.stats_or_failed(
                    &name,
                    engine::append_throughput(
                        base,
                        &options,
                        spec,
                        secs(plan.headline_secs),
                        u64::MAX,
                        plan.reps,
                    ),
                    "msgs/s",
                    spec.params(&options),
                );
            }
            Err(e) => results.failed(&name, "msgs/s", &e.to_string()),
        }
    }
    for name in ["memory.reopen_clean.s", "memory.reopen_crash.s"] {
        results.not_applicable(
            name,
            "s",
            "the memory engine keeps nothing across close or crash: nothing to reopen",
        );
    }
    results.not_applicable(
        "memory.read_cold_1k.gbps",
        "GB/s",
        "the memory engine has no cold tier: every read is a hot read (see read_tail)",
    );
}

/// Runs one of `GROUPS`.
pub fn run_group(group: &str, base: &Path, plan: &Plan, results: &mut Results) {
    println!("== memory engine: {group}");
    let options = engine::options(EngineKind::Memory, Durability::None, APPEND_RETENTION_BYTES);
    match group {
        "append" => appends(base, plan, results, &options),
        "latency" => single_append_latency(base, plan, results, &options),
        "read" => reads(base, plan, results, &options),
        "shards" => million_shards(base, plan, results, &options),
        other => results.failed(
            &format!("memory.{other}.peak_rss_mb"),
            "MiB",
            &format!("unknown workload group '{other}'"),
        ),
    }
}

fn appends(base: &Path, plan: &Plan, results: &mut Results, options: &mqstore::ShardOptions) {
    let options = options.clone();
    // The headline: one thread, one shard, 100 B records in batches of 1,024
    // (the brief's 10M msgs/s target). Longer and more repetitions than the
    // matrix; the FFI drivers repeat exactly this workload.
    let mut p = HEADLINE_SPEC.params(&options);
    p["seconds_per_rep"] = json!(plan.headline_secs);
    results.stats_or_failed(
        HEADLINE,
        engine::append_throughput(
            base,
            &options,
            HEADLINE_SPEC,
            secs(plan.headline_secs),
            u64::MAX,
            plan.reps,
        ),
        "msgs/s",
        p,
    );

    engine::append_raw_row(
        results,
        base,
        plan,
        &options,
        (100, 1024),
        ("memory.append_raw_100b_batch1024.msgs_per_s", HEADLINE),
    );

    // The matrix. Single-shard runs are bounded by retention; many-shard runs
    // would each keep their own retention's worth, so they stop at a byte
    // budget too (params say which limit ended a run: seconds or budget).
    for &record_size in &RECORD_SIZES {
        for &batch in &BATCHES {
            for &threads in &THREADS {
                for &shards in &SHARDS {
                    let spec = AppendSpec {
                        record_size,
                        batch,
                        threads,
                        shards,
                        window: 0,
                    };
                    let budget = if shards == 1 {
                        u64::MAX
                    } else {
                        plan.many_shard_budget
                    };
                    let mut p = spec.params(&options);
                    p["seconds_per_rep"] = json!(plan.matrix_secs);
                    if shards > 1 {
                        p["budget_payload_bytes"] = json!(budget);
                    }
                    results.stats_or_failed(
                        &matrix_name(&spec),
                        engine::append_throughput(
                            base,
                            &options,
                            spec,
                            secs(plan.matrix_secs),
                            budget,
                            plan.matrix_reps,
                        ),
                        "msgs/s",
                        p,
                    );
                }
            }
        }
    }
}

/// Finds the highest single-append rate, then offers half of it, paced, and
/// records latency from each append's intended start.
fn single_append_latency(
    base: &Path,
    plan: &Plan,
    results: &mut Results,
    options: &mqstore::ShardOptions,
) {
    let spec = AppendSpec {
        record_size: 100,
        batch: 1,
        threads: 1,
        shards: 1,
        window: 0,
    };
    let max = match engine::append_throughput(
        base,
        options,
        spec,
        secs(plan.calibrate_secs),
        u64::MAX,
        plan.reps,
    ) {
        Ok(stats) => stats,
        Err(e) => {
            results.failed(
                "memory.append_100b_single.msgs_per_s",
                "msgs/s",
                &e.to_string(),
            );
            return;
        }
    };
    let mut p = spec.params(options);
    p["seconds_per_rep"] = json!(plan.calibrate_secs);
    results.stats("memory.append_100b_single.msgs_per_s", &max, "msgs/s", p);

    let rate = max.median() * plan.offered_load;
    let mut runs = Vec::new();
    for _ in 0..plan.reps {
        match engine::paced_latency(
            engine::LatencyStore::Fresh(base),
            options,
            100,
            1,
            rate,
            secs(plan.latency_secs),
            engine::Pacing::Spin,
        ) {
            Ok(latency) => runs.push(latency),
            Err(e) => {
                for s in ["p50", "p99", "p999", "max"] {
                    for kind in ["open_loop_", "service_"] {
                        let name = format!("memory.append_100b_single.{kind}{s}_ns");
                        results.failed(&name, "ns", &e.to_string());
                    }
                }
                return;
            }
        }
    }
    engine::report_latency(
        results,
        "memory.append_100b_single",
        &runs,
        "ns",
        1.0,
        rate,
        json!({
            "record_bytes": 100, "threads": 1, "shards": 1,
            "offered_fraction_of_max": plan.offered_load,
            "seconds_per_rep": plan.latency_secs,
            "pacing": engine::Pacing::Spin.describe(),
            "retention_bytes": options.retention_bytes,
        }),
    );
}

/// Tail and hot reads and sendfile_to_fd over a prefilled shard of 1 KiB
/// records: tail is the first read of a fresh shard right after it was
/// written (one per repetition), hot the same shard read again; in memory
/// both are reads of the same heap, so they differ only by cache warmth.
fn reads(base: &Path, plan: &Plan, results: &mut Results, options: &mqstore::ShardOptions) {
    let p = json!({
        "record_bytes": 1024, "written_in_batches_of": 64, "shard_bytes": plan.read_bytes,
        "request_bytes": engine::FETCH_BYTES,
        "measured": engine::READ_MEASURED,
    });
    let names = [
        "memory.read_tail_1k.gbps",
        "memory.read_hot_1k.gbps",
        "memory.read_hot_1k.views_per_s",
        "memory.sendfile_1k.gbps",
    ];
    let mut tail = Vec::new();
    let mut kept = None;
    for rep in 0..plan.reps {
        // One store at a time: the previous one is dropped before the next fill.
        kept = None;
        let outcome = engine::prefilled(base, options, 1024, 64, plan.read_bytes)
            .and_then(|(bench, end)| Ok((engine::read_all(&bench.store, end)?, bench, end)));
        match outcome {
            Ok((gbps, bench, end)) => {
                tail.push(gbps);
                if rep + 1 == plan.reps {
                    kept = Some((bench, end));
                }
            }
            Err(e) => {
                for name in names {
                    let unit = if name.ends_with("views_per_s") {
                        "views/s"
                    } else {
                        "GB/s"
                    };
                    results.failed(name, unit, &e.to_string());
                }
                return;
            }
        }
    }
    let Some((bench, end)) = kept else {
        return;
    };
    let mut tail_p = p.clone();
    tail_p["fresh_store_per_rep"] = json!(true);
    results.stats(names[0], &util::Stats::new(tail), "GB/s", tail_p);
    engine::hot_read_and_sendfile(
        results,
        plan,
        &bench.store,
        end,
        [names[1], names[2], names[3]],
        &p,
    );
}

fn million_shards(
    base: &Path,
    plan: &Plan,
    results: &mut Results,
    options: &mqstore::ShardOptions,
) {
    let count = plan.many_shards;
    let p = json!({ "shards": count, "record_bytes": 100, "threads": 1,
                    "append": "one single-record append to every shard in turn, per rep",
                    "pass_time_limit_s": plan.many_shard_pass_secs });
    let limit = secs(plan.many_shard_pass_secs);
    match engine::many_shards(base, options, count, 100, plan.reps, limit) {
        Ok(many) => {
            results.value(
                "memory.shards_1m.create_s",
                many.create.as_secs_f64(),
                "s",
                p.clone(),
            );
            engine::report_shard_memory(results, "memory", &many, count, &p);
            let mut one_p = p.clone();
            one_p["append"] = json!("the same single-record appends, all to one shard");
            results.stats(
                "memory.shards_1m.one_shard_append_msgs_per_s",
                &many.one_shard,
                "msgs/s",
                one_p,
            );
            results.stats(
                "memory.shards_1m.append_msgs_per_s",
                &many.append,
                "msgs/s",
                p,
            );
            results.compare(
                "memory.shards_1m.append_msgs_per_s",
                "memory.shards_1m.one_shard_append_msgs_per_s",
                1.0,
                "vs one shard, same appends",
            );
        }
        Err(e) => {
            for (name, unit) in [
                ("memory.shards_1m.create_s", "s"),
                ("memory.shards_1m.rss_mb", "MiB"),
                ("memory.shards_1m.rss_growth_mb", "MiB"),
                ("memory.shards_1m.heap_mb", "MiB"),
                ("memory.shards_1m.append_msgs_per_s", "msgs/s"),
            ] {
                results.failed(name, unit, &e.to_string());
            }
        }
    }
}

/// Ratios printed beside the memory metrics: payload bandwidth against one
/// core's memcpy, transfers against raw sendfile.
pub fn compare(results: &mut Results) {
    let mut names: Vec<(String, usize)> = vec![(HEADLINE.to_string(), 100)];
    for &record_size in &RECORD_SIZES {
        for &batch in &BATCHES {
            for &threads in &THREADS {
                for &shards in &SHARDS {
                    let spec = AppendSpec {
                        record_size,
                        batch,
                        threads,
                        shards,
                        window: 0,
                    };
                    names.push((matrix_name(&spec), record_size));
                }
            }
        }
    }
    for (name, size) in names {
        results.compare(
            &name,
            "raw.memcpy_gbps",
            size as f64 / 1e9,
            "payload GB/s vs memcpy",
        );
    }
    // Reads touch every byte they count: compared with one core reading and
    // summing a large buffer with the same loop.
    for name in ["memory.read_tail_1k.gbps", "memory.read_hot_1k.gbps"] {
        results.compare(name, "raw.mem_read_gbps", 1.0, "bytes touched, GB/s");
    }
    // Memory holds no file: its transfers are bounded by user-memory socket
    // writes, not by sendfile(2) (file-backed engines compare with that).
    results.compare(
        "memory.sendfile_1k.gbps",
        "raw.socket_write_gbps",
        1.0,
        "GB/s",
    );
}
