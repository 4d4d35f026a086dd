//! The RocksDB database as a `Database`: each `Change` list becomes one
//! WriteBatch, batches are read through one iterator per call, and
//! `load` walks the catalogue, index and group column families.

use std::path::PathBuf;
use std::sync::{Arc, Weak};

use ::rocksdb::{ColumnFamily, DBRawIteratorWithThreadMode, ReadOptions, WriteBatch, DB};
use bytes::Bytes;

use super::keys::{self, batch_key, shard_prefix};
use super::{cf, db_error, plan, Db, CF_BATCHES, CF_GROUPS, CF_INDEX, CF_SHARDS};
use crate::config::{Durability, EngineKind, RocksdbConfig};
use crate::engine::database::{
    BatchMeta, BatchReader, Change, Connect, Database, Entry, Found, PlannedBatch, ShardMeta,
};
use crate::io::TransferChunk;
use crate::{Error, Result};

/// Dropping more batches than this at once writes a range tombstone per
/// column family instead of a point tombstone per batch (many range
/// tombstones slow RocksDB's reads down; many point ones its writes).
const RANGE_DELETE_FROM: usize = 16;

/// Opens the store's database in `<store>/rocksdb/`.
pub(crate) struct RocksConnect {
    pub dir: PathBuf,
    pub config: RocksdbConfig,
    /// Opens the database read-only: RocksDB replays its WAL into memory
    /// and writes nothing; retention drops nothing.
    pub read_only: bool,
}

impl Connect for RocksConnect {
    type Db = Db;

    fn may_exist(&self) -> bool {
        self.dir.exists()
    }

    fn open(&self) -> Result<Arc<Db>> {
        let db = Arc::new(Db::open(&self.dir, &self.config, self.read_only)?);
        let _ = db.me.set(Arc::downgrade(&db));
        Ok(db)
    }
}

/// The column families a write touches.
struct Families<'a> {
    batches: &'a ColumnFamily,
    index: &'a ColumnFamily,
    shards: &'a ColumnFamily,
    groups: &'a ColumnFamily,
}

impl<'a> Families<'a> {
    fn of(db: &'a DB) -> Result<Families<'a>> {
        Ok(Families {
            batches: cf(db, CF_BATCHES)?,
            index: cf(db, CF_INDEX)?,
            shards: cf(db, CF_SHARDS)?,
            groups: cf(db, CF_GROUPS)?,
        })
    }

    fn add(&self, batch: &mut WriteBatch, change: Change) {
        match change {
            Change::PutBatch {
                shard,
                base_offset,
                bytes,
                meta,
                ..
            } => {
                let key = batch_key(shard, base_offset);
                batch.put_cf(self.batches, key, &bytes);
                batch.put_cf(self.index, key, meta.encode());
            }
            Change::DeleteBatches {
                shard, bases, end, ..
            } => self.delete_batches(batch, shard, &bases, end),
            Change::PutShard { shard, meta } => {
                batch.put_cf(self.shards, shard_prefix(shard), meta.encode())
            }
            Change::SaveGroup {
                shard,
                group,
                offset,
            } => {
                let key = keys::group_key(shard, &group);
                match offset {
                    Some(offset) => batch.put_cf(self.groups, key, offset.to_be_bytes()),
                    None => batch.delete_cf(self.groups, key),
                }
            }
            Change::RemoveShard { shard } => {
                let (start, end) = (shard_prefix(shard), shard_prefix(shard + 1));
                for family in [self.batches, self.index, self.groups] {
                    batch.delete_range_cf(family, start, end);
                }
                batch.delete_cf(self.shards, start);
            }
        }
    }

    fn delete_batches(&self, batch: &mut WriteBatch, shard: u64, bases: &[i64], end: i64) {
        if bases.len() >= RANGE_DELETE_FROM {
            let (first, end) = (batch_key(shard, bases[0]), batch_key(shard, end));
            for family in [self.batches, self.index] {
                batch.delete_range_cf(family, first, end);
            }
            return;
        }
        for &base in bases {
            let key = batch_key(shard, base);
            batch.delete_cf(self.batches, key);
            batch.delete_cf(self.index, key);
        }
    }
}

impl Database for Db {
    const KIND: EngineKind = EngineKind::Rocksdb;

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn commit(&self, changes: Vec<Change>, durability: Durability, pipelined: bool) -> Result<u64> {
        let mut batch = WriteBatch::default();
        {
            let db = self.get()?;
            let families = Families::of(&db)?;
            for change in changes {
                families.add(&mut batch, change);
            }
        }
        self.write(batch, durability, pipelined)
    }

    fn wait_synced(&self, ticket: u64) -> Result<()> {
        Db::wait_synced(self, ticket)
    }

    fn sync(&self) -> Result<()> {
        self.sync_wal()
    }

    fn with_reader<R>(
        &self,
        shard: u64,
        from: Option<i64>,
        f: impl FnOnce(&mut dyn BatchReader) -> R,
    ) -> Result<R> {
        let db = self.get()?;
        let mut fetcher = Fetcher {
            db: &db,
            family: cf(&db, CF_BATCHES)?,
            shard,
            iter: None,
            from,
        };
        Ok(f(&mut fetcher))
    }

    /// One lazy chunk read from a snapshot taken now (`plan`): the plan
    /// holds no batch bytes until they are sent.
    fn plan(&self, shard: u64, batches: &[(&Entry, PlannedBatch)]) -> Result<TransferChunk> {
        let planned = batches.iter().map(|(_, b)| *b).collect();
        let me = self.me.get().and_then(Weak::upgrade).ok_or(Error::Closed)?;
        plan::chunk(&me, shard, planned)
    }

    fn load(&self, found: &mut dyn FnMut(Found) -> Result<()>) -> Result<()> {
        let db = self.get()?;
        load_catalogue(&db, found)?;
        load_index(&db, found)?;
        load_groups(&db, found)
    }

    fn stats(&self) -> Result<serde_json::Value> {
        Db::stats(self)
    }

    fn close(&self) -> Result<()> {
        Db::close(self)
    }
}

/// Reads a shard's batches for one call through one iterator: the first
/// batch found with `seek_for_prev` (the last key at or before the
/// batch's), the ones after it with `next`, skipped ones with a seek. Each
/// batch is copied once, from RocksDB's memtable or block into a `Bytes`
/// that the record views then share: RocksDB lends its bytes only until the
/// iterator moves, and the crate's pinned slices borrow the database,
/// which views must outlive.
struct Fetcher<'a> {
    db: &'a DB,
    family: &'a ColumnFamily,
    shard: u64,
    iter: Option<DBRawIteratorWithThreadMode<'a, DB>>,
    /// The offset the call starts from: the first seek looks for the
    /// batch holding it.
    from: Option<i64>,
}

impl Fetcher<'_> {
    fn missing(&self, entry: &Entry) -> Error {
        Error::corruption(format!(
            "RocksDB holds no batch at offset {} of shard id {}, which its index lists",
            entry.base_offset, self.shard
        ))
    }
}

impl BatchReader for Fetcher<'_> {
    fn batch(&mut self, entry: &Entry) -> Result<Bytes> {
        let id = self.shard;
        let key = batch_key(id, entry.base_offset);
        let (db, family) = (self.db, self.family);
        let iter = self.iter.get_or_insert_with(|| {
            let mut options = ReadOptions::default();
            options.set_iterate_lower_bound(shard_prefix(id));
            options.set_iterate_upper_bound(shard_prefix(id + 1));
            options.set_prefix_same_as_start(true);
            db.raw_iterator_cf_opt(family, options)
        });
        if iter.valid() {
            iter.next();
        }
        if iter.key() != Some(&key[..]) {
            // The last key at or before the offset: its batch holds it.
            let target = match self.from.take() {
                Some(from) if (entry.base_offset..=entry.last_offset).contains(&from) => from,
                _ => entry.base_offset,
            };
            iter.seek_for_prev(batch_key(id, target));
        }
        match iter.item() {
            Some((k, value)) if k == key => Ok(Bytes::copy_from_slice(value)),
            _ => {
                iter.status().map_err(|e| db_error("reading batches", e))?;
                Err(self.missing(entry))
            }
        }
    }
}

fn load_catalogue(db: &DB, found: &mut dyn FnMut(Found) -> Result<()>) -> Result<()> {
    let mut iter = db.raw_iterator_cf(cf(db, CF_SHARDS)?);
    iter.seek_to_first();
    while let Some((key, value)) = iter.item() {
        let id = keys::parse_shard_key(key).ok_or_else(|| {
            Error::corruption(format!(
                "RocksDB catalogue key {key:02x?} is not a shard id"
            ))
        })?;
        let meta =
            ShardMeta::decode(id, value).map_err(|e| Error::corruption(format!("RocksDB {e}")))?;
        found(Found::Shard(id, meta))?;
        iter.next();
    }
    iter.status()
        .map_err(|e| db_error("reading the shard catalogue", e))
}

fn load_index(db: &DB, found: &mut dyn FnMut(Found) -> Result<()>) -> Result<()> {
    let mut options = ReadOptions::default();
    options.set_total_order_seek(true);
    let mut iter = db.raw_iterator_cf_opt(cf(db, CF_INDEX)?, options);
    iter.seek_to_first();
    while let Some((key, value)) = iter.item() {
        let bad =
            |what: &str| Error::corruption(format!("RocksDB index record {key:02x?}: {what}"));
        let (id, base) = keys::parse_batch_key(key).ok_or_else(|| bad("not a batch key"))?;
        let meta = BatchMeta::decode(value).ok_or_else(|| bad("malformed value"))?;
        found(Found::Batch(id, base, meta)).map_err(|e| bad(&e.to_string()))?;
        iter.next();
    }
    iter.status()
        .map_err(|e| db_error("reading the batch index", e))
}

fn load_groups(db: &DB, found: &mut dyn FnMut(Found) -> Result<()>) -> Result<()> {
    let mut options = ReadOptions::default();
    options.set_total_order_seek(true);
    let mut iter = db.raw_iterator_cf_opt(cf(db, CF_GROUPS)?, options);
    iter.seek_to_first();
    while let Some((key, value)) = iter.item() {
        let bad = || Error::corruption(format!("RocksDB group offset record {key:02x?}"));
        let (id, group) = keys::parse_group_key(key).ok_or_else(bad)?;
        let offset = i64::from_be_bytes(value.try_into().map_err(|_| bad())?);
        found(Found::Group(id, group, offset))?;
        iter.next();
    }
    iter.status()
        .map_err(|e| db_error("reading the group offsets", e))
}
