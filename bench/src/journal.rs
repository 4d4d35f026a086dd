//! The Journal engine's suite, run when the build has the engine: the
//! persistent-engine workloads of `engine::Persistent` (appends per
//! durability mode and the one-factor matrix, latency, tail/hot/cold reads,
//! sendfile_to_fd, reopen after a clean close and after kill -9, a million
//! shards). Every store lives under --dir, so the journal writes to the
//! filesystem the raw baselines measured.

use std::path::Path;

use mqstore::EngineKind;

use crate::engine::Persistent;
use crate::{Plan, Results};

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
}

/// Journal metrics compared, as payload GB/s, with the raw write ceiling
/// (the best O_DIRECT write of the run): the durable appends.
pub const VS_CEILING: [&str; 6] = [
    "journal.append_1k_batch64_fsync.msgs_per_s",
    "journal.append_1k_batch64_fsync_t4_s4.msgs_per_s",
    "journal.append_1k_batch64_fsync_t16_s16.msgs_per_s",
    "journal.append_1k_batch64_fsync_pipelined.msgs_per_s",
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
fn group_commit_ratios(results: &mut Results) {
    let one = "journal.append_1k_batch64_fsync.msgs_per_s";
    let mut ratios = Vec::new();
    for producers in [4, 16] {
        let many = format!("journal.append_1k_batch64_fsync_t{producers}_s{producers}.msgs_per_s");
        ratios.push((
            format!("journal.group_commit_t{producers}_s{producers}_vs_t1.ratio"),
            results
                .value_of(&many)
                .zip(results.value_of(one))
                .map(|(m, o)| m / o),
            format!("{many} / {one}"),
        ));
    }
    let bound = results
        .value_of("raw.odirect_commit_64k_p50_us")
        .filter(|us| *us > 0.0)
        .map(|us| 64.0 * 1e6 / us);
    ratios.push((
        "journal.append_1k_batch64_fsync.vs_commit_bound.ratio".into(),
        results.value_of(one).zip(bound).map(|(o, b)| o / b),
        format!("{one} / (64 records per raw.odirect_commit_64k_p50_us)"),
    ));
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
