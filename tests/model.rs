//! Property test: an engine against a trivially correct model, under random
//! operation sequences. Any engine can be checked by adding it to `ENGINES`.

use std::collections::BTreeMap;

use mqstore::{Config, Record, Status, Store};
use proptest::prelude::*;

const ENGINES: &[&str] = &["memory", "journal", "file"];
const SHARDS: &[&str] = &["a", "b"];
const KEYS: &[&[u8]] = &[b"k0", b"k1", b"k2"];

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
    /// Close and reopen the store (persistent engines only: the model keeps
    /// everything, so every engine but memory must too).
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    let shard = 0..SHARDS.len();
    let record = (
        proptest::option::of(0..KEYS.len()),
        proptest::collection::vec(any::<u8>(), 0..40),
    );
    prop_oneof![
        4 => (shard.clone(), proptest::collection::vec(record, 1..8))
            .prop_map(|(shard, records)| Op::Append { shard, records }),
        2 => (shard.clone(), 0i64..60, 1usize..10)
            .prop_map(|(shard, offset, max_records)| Op::Read { shard, offset, max_records }),
        1 => (shard.clone(), 0..KEYS.len()).prop_map(|(shard, key)| Op::ReadByKey { shard, key }),
        1 => (shard.clone(), 0i64..60).prop_map(|(shard, offset)| Op::DeleteBefore { shard, offset }),
        1 => (shard.clone(), 0..KEYS.len()).prop_map(|(shard, key)| Op::DeleteByKey { shard, key }),
        1 => (shard.clone(), proptest::collection::vec(0i64..60, 0..5))
            .prop_map(|(shard, offsets)| Op::DeleteOffsets { shard, offsets }),
        1 => (shard, 0i64..60, 1usize..400)
            .prop_map(|(shard, offset, max_bytes)| Op::Transfer { shard, offset, max_bytes }),
        1 => Just(Op::Reopen),
    ]
}

/// The model: live records by offset, the low and the high watermark.
#[derive(Default)]
struct ModelShard {
    live: BTreeMap<i64, (Option<Vec<u8>>, Vec<u8>)>,
    low: i64,
    next: i64,
}

fn check(engine: &str, ops: &[Op]) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    // Small journal segments, so that rolls and reclaims happen too.
    let config = Config::from_toml_str(&format!(
        "[shard]\nengine = \"{engine}\"\n[journal]\nsegment_bytes = 65536\n"
    ))
    .unwrap();
    let mut store = Store::open(dir.path(), config.clone()).unwrap();
    let mut model: Vec<ModelShard> = SHARDS.iter().map(|_| ModelShard::default()).collect();
    for name in SHARDS {
        store.create_shard(name, None).unwrap();
    }
    for op in ops {
        match op {
            Op::Reopen => {
                if engine != "memory" {
                    store.close().unwrap();
                    drop(store);
                    store = Store::open(dir.path(), config.clone()).unwrap();
                }
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
                            r.value.to_vec(),
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
                prop_assert_eq!(low, m.low);
            }
            Op::DeleteByKey { shard, key } => {
                let m = &mut model[*shard];
                let before = m.live.len();
                m.live.retain(|_, (k, _)| k.as_deref() != Some(KEYS[*key]));
                let deleted = store.delete_by_keys(SHARDS[*shard], &[KEYS[*key]]).unwrap();
                prop_assert_eq!(deleted as usize, before - m.live.len());
            }
            Op::DeleteOffsets { shard, offsets } => {
                let m = &mut model[*shard];
                let before = m.live.len();
                for o in offsets {
                    m.live.remove(o);
                }
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
                let bytes = bytes::Bytes::from(plan.to_vec());
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
                    prop_assert_eq!(plan.next_offset(), m.next);
                }
            }
        }
    }
    for (index, name) in SHARDS.iter().enumerate() {
        let info = store.shard_info(name).unwrap();
        prop_assert_eq!(info.next_offset, model[index].next);
        prop_assert_eq!(info.first_offset, model[index].low);
        prop_assert_eq!(info.records, model[index].live.len() as u64);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn engines_match_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        for engine in ENGINES {
            check(engine, &ops)?;
        }
    }
}
