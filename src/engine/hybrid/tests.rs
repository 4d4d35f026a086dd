//! The hybrid engine on a real journal and the S3 engine over the
//! in-memory object store (with faults on demand); tier passes run
//! directly, not on the tierer's timer. The engine's suites run against a
//! real S3 server.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::HybridEngine;
use crate::config::{Config, Durability, EngineKind, ShardOptions};
use crate::engine::registry;
use crate::engine::s3::tests::Faulty;
use crate::engine::{Engine, ReadLimits, Shard, TIMESTAMP_EARLIEST};
use crate::time::now_ms;
use crate::{Record, Status};

fn config() -> Config {
    let mut config = Config::default();
    config.hybrid.hot_duration_ms = 0;
    config.hybrid.tier_interval_ms = 3_600_000;
    config.hybrid.tier_chunk_bytes = 64 << 10;
    config.s3.object_bytes = 64 << 10;
    config
}

fn engine(dir: &Path, store: &Arc<Faulty>, config: &Config) -> HybridEngine {
    let local_dir = dir.join(super::LOCAL_DIR);
    let local = registry::spec(EngineKind::Journal)
        .build(&local_dir, config)
        .unwrap();
    let cold = crate::engine::s3::tier_on(dir, config, store.clone());
    HybridEngine::new(local, cold, local_dir, config)
}

/// A hybrid engine on a fresh directory and in-memory object store, with
/// one shard `s`.
struct Fixture {
    dir: tempfile::TempDir,
    store: Arc<Faulty>,
    engine: HybridEngine,
    shard: Arc<dyn Shard>,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Faulty::default());
        let engine = engine(dir.path(), &store, &config());
        let shard = engine.create_shard("s", &options()).unwrap();
        Fixture {
            dir,
            store,
            engine,
            shard,
        }
    }
}

/// The engine on the same directory and objects again; its one shard.
fn reopen(dir: &Path, store: &Arc<Faulty>) -> (HybridEngine, Arc<dyn Shard>) {
    let again = engine(dir, store, &config());
    let mut recovered = again.recover().unwrap();
    assert_eq!(recovered.len(), 1);
    let (name, options, shard) = recovered.pop().unwrap();
    assert_eq!((name.as_str(), options.engine), ("s", EngineKind::Hybrid));
    (again, shard)
}

fn options() -> ShardOptions {
    ShardOptions {
        engine: EngineKind::Hybrid,
        durability: Durability::Fsync,
        ..ShardOptions::default()
    }
}

fn append(shard: &dyn Shard, from: usize, to: usize) {
    for i in from..to {
        let value = format!("record {i}");
        assert_eq!(
            shard.append(&[Record::new(value.as_bytes())]).unwrap(),
            i as i64
        );
    }
}

/// Every record from `from` on, read as a consumer would.
fn values(shard: &dyn Shard, mut from: i64) -> Vec<String> {
    let mut out = Vec::new();
    let limits = ReadLimits {
        max_records: 17,
        max_bytes: usize::MAX,
    };
    loop {
        let got = shard.read(from, limits).unwrap();
        if got.records.is_empty() {
            return out;
        }
        for record in &got.records {
            out.push(String::from_utf8(record.value_bytes().to_vec()).unwrap());
        }
        from = got.next_offset;
    }
}

fn expected(from: usize, to: usize) -> Vec<String> {
    (from..to).map(|i| format!("record {i}")).collect()
}

fn stat(shard: &dyn Shard, key: &str) -> i64 {
    shard.stats().unwrap()[key].as_i64().unwrap()
}

#[test]
fn due_batches_move_to_objects_and_reads_route_across_the_tiers() {
    let Fixture {
        dir,
        store,
        engine,
        shard,
    } = Fixture::new();
    append(shard.as_ref(), 0, 50);
    let hybrid = engine.shards.lock()["s"].clone();
    assert_eq!(hybrid.tier(now_ms()).unwrap(), 50);
    assert_eq!(stat(shard.as_ref(), "boundary"), 50);
    let local = hybrid.local().info().unwrap();
    assert_eq!(
        (local.first_offset, local.records),
        (50, 0),
        "the local copies went"
    );
    append(shard.as_ref(), 50, 60);
    assert_eq!(values(shard.as_ref(), 0), expected(0, 60));
    assert_eq!(values(shard.as_ref(), 45), expected(45, 60));
    let info = shard.info().unwrap();
    assert_eq!(
        (info.first_offset, info.next_offset, info.records),
        (0, 60, 60)
    );
    assert_eq!(
        shard.offset_for_timestamp(TIMESTAMP_EARLIEST).unwrap(),
        Some(0)
    );
    let by_key = shard.read_by_keys(&[b"none"], 10).unwrap();
    assert!(by_key.is_empty());
    // Kept across a restart: the tiers are paired again by name.
    engine.close().unwrap();
    let (again, shard) = reopen(dir.path(), &store);
    assert_eq!(values(shard.as_ref(), 0), expected(0, 60));
    again.close().unwrap();
}

#[test]
fn a_copy_that_fails_leaves_the_batches_local_and_the_next_pass_moves_them_once() {
    let Fixture {
        dir,
        store,
        engine,
        shard,
    } = Fixture::new();
    append(shard.as_ref(), 0, 30);
    let hybrid = engine.shards.lock()["s"].clone();
    store.failing_puts.store(1, Ordering::Release);
    let err = hybrid.tier(now_ms()).unwrap_err();
    assert_eq!(err.status(), Status::Io, "{err}");
    assert_eq!(stat(shard.as_ref(), "boundary"), 0, "nothing moved");
    assert_eq!(stat(shard.as_ref(), "tier_failures"), 1);
    assert_eq!(values(shard.as_ref(), 0), expected(0, 30));
    // The failed copy's batches waited in the cold tier for another try:
    // the next pass stores them and counts them as copied.
    hybrid.tier(now_ms()).unwrap();
    assert_eq!(stat(shard.as_ref(), "boundary"), 30);
    assert_eq!(hybrid.local().info().unwrap().records, 0);
    assert_eq!(
        values(shard.as_ref(), 0),
        expected(0, 30),
        "each record once"
    );
    engine.close().unwrap();
    let (again, shard) = reopen(dir.path(), &store);
    assert_eq!(values(shard.as_ref(), 0), expected(0, 30), "stored");
    again.close().unwrap();
}

#[test]
fn a_crash_after_the_copy_before_the_local_delete_serves_each_record_once() {
    let Fixture {
        dir,
        store,
        engine,
        shard,
    } = Fixture::new();
    append(shard.as_ref(), 0, 20);
    let hybrid = engine.shards.lock()["s"].clone();
    // The copy finished (the cold shard holds the batches), the local
    // delete did not happen: what a kill between the two leaves.
    let batches = hybrid.copy_of(0, 20).unwrap();
    let batches = batches.into_iter().map(|(_, batch)| batch).collect();
    hybrid.cold.append_batches(batches, false).unwrap();
    engine.close().unwrap();
    let (again, shard) = reopen(dir.path(), &store);
    assert_eq!(stat(shard.as_ref(), "boundary"), 20);
    let hybrid = again.shards.lock()["s"].clone();
    assert_eq!(
        hybrid.local().info().unwrap().records,
        0,
        "the local copies went at open"
    );
    assert_eq!(values(shard.as_ref(), 0), expected(0, 20));
    again.close().unwrap();
}

#[test]
fn deletes_past_the_boundary_leave_a_gap_the_cold_tier_skips() {
    let Fixture {
        dir,
        store,
        engine,
        shard,
    } = Fixture::new();
    append(shard.as_ref(), 0, 20);
    let hybrid = engine.shards.lock()["s"].clone();
    hybrid.tier(now_ms()).unwrap();
    append(shard.as_ref(), 20, 40);
    assert_eq!(shard.delete_records_before(30).unwrap(), 30);
    assert_eq!(values(shard.as_ref(), 30), expected(30, 40));
    assert_eq!(shard.info().unwrap().first_offset, 30);
    assert_eq!(hybrid.tier(now_ms()).unwrap(), 10);
    assert_eq!(stat(shard.as_ref(), "boundary"), 40);
    assert_eq!(values(shard.as_ref(), 30), expected(30, 40));
    let info = shard.info().unwrap();
    assert_eq!((info.first_offset, info.next_offset), (30, 40));
    append(shard.as_ref(), 40, 45);
    shard.truncate_to(42).unwrap();
    assert_eq!(values(shard.as_ref(), 30), expected(30, 42));
    // Below the boundary: the cold tier is cut and the local one starts
    // again empty at the offset.
    shard.truncate_to(35).unwrap();
    assert_eq!(values(shard.as_ref(), 30), expected(30, 35));
    append(shard.as_ref(), 35, 38);
    assert_eq!(values(shard.as_ref(), 30), expected(30, 38));
    let info = shard.info().unwrap();
    assert_eq!((info.first_offset, info.next_offset), (30, 38));
    engine.close().unwrap();
    let (again, shard) = reopen(dir.path(), &store);
    assert_eq!(values(shard.as_ref(), 30), expected(30, 38));
    again.close().unwrap();
}

#[test]
fn a_low_watermark_where_deletes_left_no_batch_stays_where_the_delete_put_it() {
    let Fixture {
        dir,
        store,
        engine,
        shard,
    } = Fixture::new();
    append(shard.as_ref(), 0, 20);
    let hybrid = engine.shards.lock()["s"].clone();
    hybrid.tier(now_ms()).unwrap();
    append(shard.as_ref(), 20, 30);
    // The local batch of offset 25 loses its record (and goes), then the
    // low watermark moves to 25: no local batch holds it.
    assert_eq!(
        shard.delete_where(25..26, &mut |r| r.offset == 25).unwrap(),
        1
    );
    assert_eq!(shard.delete_records_before(25).unwrap(), 25);
    assert_eq!(hybrid.tier(now_ms()).unwrap(), 4);
    let info = shard.info().unwrap();
    assert_eq!(
        (info.first_offset, info.next_offset, info.records),
        (25, 30, 4)
    );
    assert_eq!(values(shard.as_ref(), 25), expected(26, 30));
    engine.close().unwrap();
    let (again, shard) = reopen(dir.path(), &store);
    assert_eq!(shard.info().unwrap().first_offset, 25);
    assert_eq!(values(shard.as_ref(), 25), expected(26, 30));
    again.close().unwrap();
}

#[test]
fn an_append_whose_size_limit_the_object_store_cannot_apply_still_succeeds() {
    let Fixture {
        store,
        engine,
        dir: _dir,
        ..
    } = Fixture::new();
    let limited = ShardOptions {
        retention_records: 5,
        ..options()
    };
    let shard = engine.create_shard("r", &limited).unwrap();
    append(shard.as_ref(), 0, 10);
    let hybrid = engine.shards.lock()["r"].clone();
    hybrid.tier(now_ms()).unwrap();
    assert_eq!(shard.info().unwrap().first_offset, 5);
    // The oldest records are in objects: dropping them needs the store.
    store.failing_puts.store(u32::MAX, Ordering::Release);
    append(shard.as_ref(), 10, 12);
    assert_eq!(stat(shard.as_ref(), "size_limit_failures"), 2);
    store.failing_puts.store(0, Ordering::Release);
    append(shard.as_ref(), 12, 13);
    let info = shard.info().unwrap();
    assert_eq!((info.first_offset, info.records), (8, 5));
    assert_eq!(values(shard.as_ref(), 8), expected(8, 13));
    engine.close().unwrap();
}
