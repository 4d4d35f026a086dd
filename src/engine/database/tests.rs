//! `DbShard` over an in-memory `Database` that can lose its answers: a
//! write applied by the database but reported failed (a server's reply
//! lost to a timeout) must not leave the shard's index and the database
//! apart.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use super::*;
use crate::config::ShardOptions;
use crate::engine::{Engine, ReadLimits, Shard};
use crate::record::Record;

#[derive(Default)]
struct Tables {
    shards: BTreeMap<u64, ShardMeta>,
    batches: BTreeMap<(u64, i64), (Bytes, BatchMeta)>,
}

/// Applies every write; when `lose_answer` is set, reports the next one
/// failed anyway.
#[derive(Default)]
struct LossyDb {
    tables: Mutex<Tables>,
    lose_answer: AtomicBool,
}

impl Tables {
    fn apply(&mut self, change: Change) {
        match change {
            Change::PutBatch {
                shard,
                base_offset,
                bytes,
                meta,
                ..
            } => {
                self.batches.insert((shard, base_offset), (bytes, meta));
            }
            Change::DeleteBatches {
                shard,
                bases,
                end,
                front,
            } => {
                let first = if front { i64::MIN } else { bases[0] };
                self.batches
                    .retain(|&(s, b), _| s != shard || b < first || b >= end);
            }
            Change::PutShard { shard, meta } => {
                self.shards.insert(shard, meta);
            }
            Change::SaveGroup { .. } => {}
            Change::RemoveShard { shard } => {
                self.shards.remove(&shard);
                self.batches.retain(|&(s, _), _| s != shard);
            }
        }
    }
}

struct MapReader<'a>(&'a Tables, u64);

impl BatchReader for MapReader<'_> {
    fn batch(&mut self, entry: &Entry) -> Result<Bytes> {
        match self.0.batches.get(&(self.1, entry.base_offset)) {
            Some((bytes, _)) => Ok(bytes.clone()),
            None => Err(Error::corruption(format!(
                "no batch at {}",
                entry.base_offset
            ))),
        }
    }
}

impl Database for LossyDb {
    const KIND: EngineKind = EngineKind::Redis;

    fn commit(&self, changes: Vec<Change>, _: Durability, _: bool) -> Result<u64> {
        let mut tables = self.tables.lock();
        for change in changes {
            tables.apply(change);
        }
        if self.lose_answer.swap(false, Ordering::AcqRel) {
            let lost = std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer");
            return Err(Error::io("committing", lost));
        }
        Ok(0)
    }

    fn sync(&self) -> Result<()> {
        Ok(())
    }

    fn with_reader<R>(
        &self,
        shard: u64,
        _from: Option<i64>,
        f: impl FnOnce(&mut dyn BatchReader) -> R,
    ) -> Result<R> {
        let tables = self.tables.lock();
        Ok(f(&mut MapReader(&tables, shard)))
    }

    fn load(&self, found: &mut dyn FnMut(Found) -> Result<()>) -> Result<()> {
        let tables = self.tables.lock();
        for (&id, meta) in &tables.shards {
            found(Found::Shard(id, meta.clone()))?;
        }
        for (&(id, base), (_, meta)) in &tables.batches {
            found(Found::Batch(id, base, *meta))?;
        }
        Ok(())
    }

    fn stats(&self) -> Result<serde_json::Value> {
        Ok(serde_json::Value::Null)
    }

    fn close(&self) -> Result<()> {
        Ok(())
    }
}

struct Shared(Arc<LossyDb>);

impl Connect for Shared {
    type Db = LossyDb;

    fn may_exist(&self) -> bool {
        true
    }

    fn open(&self) -> Result<Arc<LossyDb>> {
        Ok(self.0.clone())
    }
}

fn append(shard: &dyn Shard, values: &[&str]) -> Result<i64> {
    let records: Vec<Record<'_>> = values.iter().map(|v| Record::new(v.as_bytes())).collect();
    shard.append(&records)
}

fn values(shard: &dyn Shard) -> Vec<(i64, String)> {
    let limits = ReadLimits {
        max_records: usize::MAX,
        max_bytes: usize::MAX,
    };
    let from = shard.info().unwrap().first_offset;
    let read = shard.read(from, limits).unwrap();
    read.records
        .iter()
        .map(|r| {
            (
                r.offset,
                String::from_utf8(r.value_bytes().to_vec()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn a_write_applied_without_an_answer_is_found_again_before_the_next_use() {
    let db = Arc::new(LossyDb::default());
    let engine = DbEngine::new(Shared(db.clone()));
    let shard = engine.create_shard("s", &ShardOptions::default()).unwrap();
    append(&*shard, &["a", "b"]).unwrap();

    db.lose_answer.store(true, Ordering::Release);
    let err = append(&*shard, &["c", "d", "e"]).unwrap_err();
    assert_eq!(err.status(), crate::Status::Io, "{err}");
    // The batch the database kept is served, and the next append goes
    // after it instead of overwriting its first offset.
    assert_eq!(shard.info().unwrap().next_offset, 5);
    assert_eq!(append(&*shard, &["f"]).unwrap(), 5);

    db.lose_answer.store(true, Ordering::Release);
    assert!(shard.delete_records_before(3).is_err());
    assert_eq!(shard.info().unwrap().first_offset, 3);
    let expected = [(3, "d"), (4, "e"), (5, "f")];
    let expected: Vec<(i64, String)> = expected.iter().map(|&(o, v)| (o, v.into())).collect();
    assert_eq!(values(&*shard), expected);
    assert_eq!(shard.stats().unwrap()["resyncs"], 2);

    // What a reopen finds is what the shard serves.
    let reopened = DbEngine::new(Shared(db));
    let recovered = reopened.recover().unwrap();
    assert_eq!(values(&*recovered[0].2), expected);
}

#[test]
fn metadata_round_trips_and_damage_is_named() {
    let meta = BatchMeta {
        last_offset: -3,
        max_timestamp: i64::MAX,
        records: 7,
        len: 1 << 20,
    };
    assert_eq!(BatchMeta::decode(&meta.encode()), Some(meta));
    assert_eq!(BatchMeta::decode(&meta.encode()[1..]), None);
    let shard = ShardMeta {
        name: "orders".into(),
        options: "engine = \"mysql\"\n".into(),
        low_watermark: 5,
        next_offset: 9,
    };
    let encoded = shard.encode();
    assert_eq!(ShardMeta::decode(1, &encoded).unwrap(), shard);
    let err = ShardMeta::decode(7, &encoded[..encoded.len() - 1]).unwrap_err();
    assert!(err.to_string().contains("shard id 7"), "{err}");
    assert!(err.to_string().contains("truncated"), "{err}");
}
