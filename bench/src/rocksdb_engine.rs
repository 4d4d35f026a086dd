//! The RocksDB engine's suite (`engine = "rocksdb"`), run when the build has
//! the engine: the persistent-engine workloads of `engine::Persistent`
//! under the prefix `rocksdb_engine`, so that each headline append sits
//! beside the raw RocksDB peer's same workload (`rocksdb.X`, the crate
//! driven directly, rocksdb_peer.rs): the ratio is what the engine's layer
//! (index, encoding, locking) costs over RocksDB itself.

use std::path::Path;

use mqstore::EngineKind;

use crate::engine::Persistent;
use crate::{Plan, Results};

pub const PREFIX: &str = "rocksdb_engine";

/// The metrics the issue names (reported absent without the engine).
pub const ISSUE_METRICS: [(&str, &str); 5] = [
    (
        "rocksdb_engine.append_1k_batch64_fsync.msgs_per_s",
        "msgs/s",
    ),
    (
        "rocksdb_engine.append_100b_batch1024_fsync.msgs_per_s",
        "msgs/s",
    ),
    ("rocksdb_engine.shards_1m.rss_mb", "MiB"),
    ("rocksdb_engine.shards_1m.append_msgs_per_s", "msgs/s"),
    ("rocksdb_engine.read_tail_1k.gbps", "GB/s"),
];

/// Appends (headline workloads and the matrix), reads, a million shards.
pub const GROUPS: [&str; 3] = ["append", "read", "shards"];

pub const ROCKSDB_ENGINE: Persistent = Persistent {
    kind: EngineKind::Rocksdb,
    prefix: PREFIX,
};

pub fn run_group(group: &str, base: &Path, plan: &Plan, results: &mut Results) {
    println!("== rocksdb engine: {group}");
    ROCKSDB_ENGINE.run_group(group, base, plan, results);
}

/// Every headline append beside the raw peer's, and the engine / peer
/// ratio as a metric of its own (the issue's target: at least 0.9).
pub fn compare(results: &mut Results) {
    results.compare(
        "rocksdb_engine.read_tail_1k.gbps",
        "raw.mem_read_gbps",
        1.0,
        "bytes touched, GB/s",
    );
    for workload in crate::engine::headline_workloads() {
        let engine = format!("{PREFIX}.{}", workload.suffix);
        let peer = format!("{}.{}", crate::rocksdb_peer::PREFIX, workload.suffix);
        if results.get(&engine).is_none() && results.get(&peer).is_none() {
            continue; // neither section ran
        }
        results.compare(&engine, &peer, 1.0, "engine / raw RocksDB, same workload");
        let ratio_name = format!(
            "rocksdb_engine_vs_rocksdb.{}.ratio",
            workload.suffix.trim_end_matches(".msgs_per_s")
        );
        match (results.value_of(&engine), results.value_of(&peer)) {
            (Some(e), Some(r)) if r > 0.0 => {
                let p = serde_json::json!({
                    "engine": engine, "rocksdb": peer, "mode": workload.mode(),
                    "durability": workload.durability.name(),
                    "measured": "engine msgs/s / raw RocksDB msgs/s, medians of the same run",
                    "target": "at least 0.9",
                    "note": format!(
                        "{} vs {} msgs/s",
                        crate::results::human(e),
                        crate::results::human(r)
                    ),
                });
                results.value(&ratio_name, e / r, "x", p)
            }
            _ => {
                let missing = if results.value_of(&engine).is_none() {
                    &engine
                } else {
                    &peer
                };
                results.absent(&ratio_name, "x", &format!("{missing} was not measured"));
            }
        }
    }
}
