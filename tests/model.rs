//! Property test: an engine against a trivially correct model, under random
//! operation sequences. Any engine can be checked by adding it to `ENGINES`.
//!
//! Values are sometimes kilobytes long and segments small (64 KiB), so
//! segments roll and, once retention and deletes empty them, are
//! reclaimed; one shard keeps only its newest `RETAINED` records. Besides
//! clean reopens, a case may crash: the store's files as a kill -9 would
//! leave them are copied and the copy opened in its place. Every
//! acknowledged record that no delete or retention removed must be there.

use std::collections::BTreeMap;
use std::path::Path;

use mqstore::{Config, Record, Status, Store};
use proptest::prelude::*;

mod common;

use common::{ENGINES, SERVER_ENGINES};
const SHARDS: &[&str] = &["a", "b"];
const KEYS: &[&[u8]] = &[b"k0", b"k1", b"k2"];
/// Shard "b" keeps at least its newest this many records (whole batches go).
const RETAINED: usize = 12;

#[derive(Clone, Debug)]
enum Op {
    Append {
        shard: usize,
        records: Vec<(Option<usize>, Vec<u8>)>,
    },
    Read {
        shard: usize,
        offset: i64,
        max_records: usize,
    },
    ReadByKey {
        shard: usize,
        key: usize,
    },
    DeleteBefore {
        shard: usize,
        offset: i64,
    },
    DeleteByKey {
        shard: usize,
        key: usize,
    },
    DeleteOffsets {
        shard: usize,
        offsets: Vec<i64>,
    },
    Transfer {
        shard: usize,
        offset: i64,
        max_bytes: usize,
    },
    /// Cut the shard's tail at the `pick`-th of its batch boundaries
    /// (the bases of batches with live records at or above the low
    /// watermark, and the next offset), modulo their number.
    Truncate {
        shard: usize,
        pick: usize,
    },
    /// Close and reopen the store (persistent engines only: the model keeps
    /// everything, so every engine but memory must too).
    Reopen,
    /// Reopen what a kill -9 now would leave (persistent engines only).
    Crash,
    /// Delete the shard and create one of the same name.
    Recreate {
        shard: usize,
    },
}

/// A value: mostly short, sometimes a few KiB so that segments fill.
fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => proptest::collection::vec(any::<u8>(), 0..40),
        2 => (any::<u8>(), 1000usize..12000).prop_map(|(byte, len)| {
            (0..len).map(|i| byte.wrapping_add(i as u8)).collect()
        }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let shard = 0..SHARDS.len();
    let record = (proptest::option::of(0..KEYS.len()), value());
    prop_oneof![
        4 => (shard.clone(), proptest::collection::vec(record, 1..8))
            .prop_map(|(shard, records)| Op::Append { shard, records }),
        2 => (shard.clone(), 0i64..60, 1usize..10)
            .prop_map(|(shard, offset, max_records)| Op::Read { shard, offset, max_records }),
        1 => (shard.clone(), 0..KEYS.len()).prop_map(|(shard, key)| Op::ReadByKey { shard, key }),
        2 => (shard.clone(), 0i64..80).prop_map(|(shard, offset)| Op::DeleteBefore { shard, offset }),
        1 => (shard.clone(), 0..KEYS.len()).prop_map(|(shard, key)| Op::DeleteByKey { shard, key }),
        1 => (shard.clone(), proptest::collection::vec(0i64..60, 0..5))
            .prop_map(|(shard, offsets)| Op::DeleteOffsets { shard, offsets }),
        1 => (shard.clone(), 0i64..60, 1usize..400)
            .prop_map(|(shard, offset, max_bytes)| Op::Transfer { shard, offset, max_bytes }),
        1 => (shard.clone(), 0usize..8).prop_map(|(shard, pick)| Op::Truncate { shard, pick }),
        1 => Just(Op::Reopen),
        3 => Just(Op::Crash),
        1 => shard.prop_map(|shard| Op::Recreate { shard }),
    ]
}

/// The model: live records by offset, the batches they came in (those
/// with a live record left), the low and the high watermark.
#[derive(Default)]
struct ModelShard {
    live: BTreeMap<i64, (Option<Vec<u8>>, Vec<u8>)>,
    batches: std::collections::VecDeque<(i64, i64)>,
    low: i64,
    next: i64,
    /// Keeps at least this many records, dropping whole batches from the
    /// front beyond it, but never the newest batch (0: everything).
    retained: usize,
}

impl ModelShard {
    fn new(index: usize) -> ModelShard {
        ModelShard {
            retained: if index == 1 { RETAINED } else { 0 },
            ..ModelShard::default()
        }
    }

    fn options(&self) -> String {
        format!("retention_records = {}", self.retained)
    }

    /// Forgets batches left without live records, as the engines do.
    fn drop_empty_batches(&mut self) {
        let live = &self.live;
        self.batches
            .retain(|&(base, last)| live.range(base..=last).next().is_some());
    }

    fn enforce_retention(&mut self) {
        while self.retained > 0 && self.batches.len() > 1 && self.live.len() > self.retained {
            let (_, last) = self.batches.pop_front().unwrap();
            self.low = self.low.max(last + 1);
            self.live = self.live.split_off(&self.low);
        }
    }
}

/// The store's configuration for `engine`: small segments (journal and
/// file) so that rolls and reclaims happen, frequent periodic index
/// checkpoints (journal), 1 MiB memtables (RocksDB) so that flushes to
/// SST files and compactions happen, small objects (S3), a hybrid engine
/// moving everything to its cold tier as soon as it can, and the case's
/// durability.
fn config(engine: &str, durability: &str) -> Config {
    let durability = if engine == "memory" {
        "none"
    } else {
        durability
    };
    Config::from_toml_str(&format!(
        "[shard]\nengine = \"{engine}\"\ndurability = \"{durability}\"\nsegment_bytes = 65536\n\
         [journal]\nsegment_bytes = 65536\ncheckpoint_bytes = 16384\n\
         [rocksdb]\nwrite_buffer_mb = 1\n\
         [s3]\nobject_bytes = 65536\n\
         [hybrid]\nhot_duration_ms = 0\ntier_interval_ms = 1\ntier_chunk_bytes = 65536\n"
    ))
    .unwrap()
}

fn open(dir: &Path, config: &Config) -> Store {
    Store::open(dir, config.clone()).unwrap()
}

/// A directory for one case's store: in memory (tmpfs) where there is
/// one, since the model is about what the engines keep, not about the
/// device (tests/*_crash.rs kill real processes on the real disk), and
/// thousands of fsyncs per run would otherwise dominate its time.
fn case_dir() -> tempfile::TempDir {
    common::memory_tempdir()
}

fn check(engine: &str, durability: &str, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut dir = case_dir();
    let config = config(engine, durability);
    let mut store = open(dir.path(), &config);
    let mut model: Vec<ModelShard> = (0..SHARDS.len()).map(ModelShard::new).collect();
    for (name, m) in SHARDS.iter().zip(&model) {
        store.create_shard(name, Some(&m.options())).unwrap();
    }
    for op in ops {
        match op {
            Op::Reopen => {
                if engine != "memory" {
                    store.close().unwrap();
                    drop(store);
                    store = open(dir.path(), &config);
                    check_shards(&store, &model)?;
                }
            }
            Op::Crash => {
                if engine != "memory" {
                    let copy = common::crash_copy(dir.path());
                    drop(store);
                    dir = copy;
                    store = open(dir.path(), &config);
                    check_shards(&store, &model)?;
                }
            }
            Op::Recreate { shard } => {
                store.delete_shard(SHARDS[*shard]).unwrap();
                model[*shard] = ModelShard::new(*shard);
                store
                    .create_shard(SHARDS[*shard], Some(&model[*shard].options()))
                    .unwrap();
            }
            Op::Append { shard, records } => {
                let batch: Vec<Record<'_>> = records
                    .iter()
                    .map(|(key, value)| Record {
                        key: key.map(|k| KEYS[k]),
                        ..Record::new(value)
                    })
                    .collect();
                let base = store.append_batch(SHARDS[*shard], &batch).unwrap();
                let m = &mut model[*shard];
                prop_assert_eq!(base, m.next);
                for (key, value) in records {
                    m.live
                        .insert(m.next, (key.map(|k| KEYS[k].to_vec()), value.clone()));
                    m.next += 1;
                }
                m.batches.push_back((base, m.next - 1));
                m.enforce_retention();
            }
            Op::Read {
                shard,
                offset,
                max_records,
            } => {
                let m = &model[*shard];
                let result = store.read(SHARDS[*shard], *offset, *max_records, usize::MAX);
                if *offset < m.low || *offset > m.next {
                    prop_assert_eq!(result.unwrap_err().status(), Status::OffsetOutOfRange);
                    continue;
                }
                let result = result.unwrap();
                let expected: Vec<(i64, Option<Vec<u8>>, Vec<u8>)> = m
                    .live
                    .range(*offset..)
                    .take(*max_records)
                    .map(|(o, (k, v))| (*o, k.clone(), v.clone()))
                    .collect();
                let got: Vec<(i64, Option<Vec<u8>>, Vec<u8>)> = result
                    .records
                    .iter()
                    .map(|r| {
                        (
                            r.offset,
                            r.key.as_ref().map(|k| k.to_vec()),
                            r.value_bytes().to_vec(),
                        )
                    })
                    .collect();
                prop_assert_eq!(&got, &expected);
                // The contract: no live record is skipped (next_offset is at
                // most the next live offset), and progress is made. Deleted
                // gaps may be skipped, or not.
                let after_last = expected.last().map_or(*offset, |(last, _, _)| last + 1);
                let next_live = m
                    .live
                    .range(after_last..)
                    .next()
                    .map_or(m.next, |(o, _)| *o);
                prop_assert!(
                    (after_last..=next_live).contains(&result.next_offset),
                    "next_offset {} not in {}..={}",
                    result.next_offset,
                    after_last,
                    next_live
                );
            }
            Op::ReadByKey { shard, key } => {
                let got: Vec<i64> = store
                    .read_by_keys(SHARDS[*shard], &[KEYS[*key]], usize::MAX)
                    .unwrap()
                    .iter()
                    .map(|r| r.offset)
                    .collect();
                let expected: Vec<i64> = model[*shard]
                    .live
                    .iter()
                    .filter(|(_, (k, _))| k.as_deref() == Some(KEYS[*key]))
                    .map(|(o, _)| *o)
                    .collect();
                prop_assert_eq!(got, expected);
            }
            Op::DeleteBefore { shard, offset } => {
                let m = &mut model[*shard];
                let low = store
                    .delete_records_before(SHARDS[*shard], *offset)
                    .unwrap();
                m.low = m.low.max((*offset).min(m.next));
                m.live = m.live.split_off(&m.low);
                m.drop_empty_batches();
                prop_assert_eq!(low, m.low);
            }
            Op::Truncate { shard, pick } => {
                let m = &mut model[*shard];
                let mut boundaries: Vec<i64> = m
                    .batches
                    .iter()
                    .map(|&(base, _)| base)
                    .filter(|&base| base >= m.low)
                    .collect();
                boundaries.push(m.next);
                let offset = boundaries[pick % boundaries.len()];
                store.truncate_to(SHARDS[*shard], offset).unwrap();
                m.live.split_off(&offset);
                m.batches.retain(|&(base, _)| base < offset);
                m.next = offset;
                prop_assert_eq!(
                    store.shard_info(SHARDS[*shard]).unwrap().next_offset,
                    m.next
                );
            }
            Op::DeleteByKey { shard, key } => {
                let m = &mut model[*shard];
                let before = m.live.len();
                m.live.retain(|_, (k, _)| k.as_deref() != Some(KEYS[*key]));
                m.drop_empty_batches();
                let deleted = store.delete_by_keys(SHARDS[*shard], &[KEYS[*key]]).unwrap();
                prop_assert_eq!(deleted as usize, before - m.live.len());
            }
            Op::DeleteOffsets { shard, offsets } => {
                let m = &mut model[*shard];
                let before = m.live.len();
                for o in offsets {
                    m.live.remove(o);
                }
                m.drop_empty_batches();
                let deleted = store.delete_by_offsets(SHARDS[*shard], offsets).unwrap();
                prop_assert_eq!(deleted as usize, before - m.live.len());
            }
            Op::Transfer {
                shard,
                offset,
                max_bytes,
            } => {
                let m = &model[*shard];
                let plan = store.plan_transfer(SHARDS[*shard], *offset, *max_bytes);
                if *offset < m.low || *offset > m.next {
                    prop_assert_eq!(plan.unwrap_err().status(), Status::OffsetOutOfRange);
                    continue;
                }
                let plan = plan.unwrap();
                let bytes = bytes::Bytes::from(plan.to_vec().unwrap());
                prop_assert_eq!(bytes.len() as u64, plan.total_bytes());
                let mut offsets = Vec::new();
                for batch in mqstore::format::split_batches(&bytes).unwrap() {
                    for record in mqstore::format::decode_batch(&batch, true).unwrap() {
                        offsets.push(record.offset);
                    }
                }
                // Whole batches: may start before `offset`, and cover exactly
                // the live records up to next_offset.
                let expected: Vec<i64> = m
                    .live
                    .range(..plan.next_offset())
                    .map(|(o, _)| *o)
                    .filter(|o| offsets.first().is_some_and(|first| o >= first))
                    .collect();
                prop_assert_eq!(&offsets, &expected);
                if let Some((first_live, _)) = m.live.range(*offset..).next() {
                    prop_assert!(plan.next_offset() > *offset, "progress is guaranteed");
                    prop_assert!(plan.next_offset() <= m.next);
                    if plan.next_offset() > *first_live {
                        prop_assert!(offsets.contains(first_live), "no live record is skipped");
                    }
                } else {
                    // Nothing live is left from `offset` on: the plan ends
                    // at the shard's end, or earlier at a batch that lost
                    // all its records (the file engine keeps such batches
                    // empty, and a small plan may stop before one), as
                    // long as it makes progress.
                    prop_assert!(plan.next_offset() <= m.next);
                    prop_assert!(
                        plan.next_offset() > *offset || plan.next_offset() == m.next,
                        "progress is guaranteed"
                    );
                }
            }
        }
    }
    check_shards(&store, &model)
}

/// Watermarks, record counts and every live record of every shard.
fn check_shards(store: &Store, model: &[ModelShard]) -> Result<(), TestCaseError> {
    for (m, name) in model.iter().zip(SHARDS) {
        let info = store.shard_info(name).unwrap();
        prop_assert_eq!(info.next_offset, m.next, "{} next offset", name);
        prop_assert_eq!(info.first_offset, m.low, "{} low watermark", name);
        prop_assert_eq!(info.records, m.live.len() as u64, "{} records", name);
        let got: Vec<(i64, Vec<u8>)> = store
            .read(name, m.low, usize::MAX, usize::MAX)
            .unwrap()
            .records
            .iter()
            .map(|r| (r.offset, r.value_bytes().to_vec()))
            .collect();
        let expected: Vec<(i64, Vec<u8>)> =
            m.live.iter().map(|(o, (_, v))| (*o, v.clone())).collect();
        prop_assert!(got == expected, "{}: live records differ", name);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: common::model_cases(500), ..ProptestConfig::default() })]

    #[test]
    fn engines_match_the_model(
        ops in proptest::collection::vec(op(), 1..80),
        durability in prop_oneof![Just("os")],
    ) {
        for engine in ENGINES.iter().filter(|e| !SERVER_ENGINES.contains(e)) {
            check(engine, durability, &ops)?;
        }
    }
}

// The server engines: every operation is a round trip (and a commit) to a
// server on loopback, so fewer cases fit the suite's time.
proptest! {
    #![proptest_config(ProptestConfig { cases: common::model_cases(60), ..ProptestConfig::default() })]

    #[test]
    fn server_engines_match_the_model(
        ops in proptest::collection::vec(op(), 1..80),
        durability in prop_oneof![Just("os")],
    ) {
        for engine in SERVER_ENGINES.iter().filter(|e| **e != "hybrid") {
            common::require_servers(engine);
            check(engine, durability, &ops)?;
        }
    }

    /// The hybrid engine moving everything to its cold tier as soon as it
    /// can, while the operations run.
    #[test]
    fn hybrid_engine_matches_the_model(
        ops in proptest::collection::vec(op(), 1..80),
        durability in prop_oneof![Just("os")],
    ) {
        common::require_servers("hybrid");
        check("hybrid", durability, &ops)?;
    }
}
