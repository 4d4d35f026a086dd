//! A RocksDB shard: the shared in-memory batch index (`engine::index`),
//! each entry standing for the key `shard id ‖ base offset`, and the
//! batches themselves in the store's database.
//!
//! Locking: appends hold the state's upgradable lock while RocksDB writes
//! (and syncs) the new batch, so readers go on meanwhile (nothing they
//! can see changes: the new key is not indexed yet), and upgrade it only
//! to index the batch. Everything that removes or rewrites stored batches
//! (deletes, retention) holds the write lock across its RocksDB write, so
//! a reader never finds a key of its index gone.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut, Range};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ::rocksdb::{ColumnFamily, DBRawIteratorWithThreadMode, ReadOptions, WriteBatch, DB};
use bytes::Bytes;
use parking_lot::{Mutex, RwLock, RwLockUpgradableReadGuard};

use super::keys::{self, batch_key, shard_prefix, IndexValue, ShardMeta};
use super::plan::{self, PlannedBatch};
use super::{cf, db_error, Db, CF_BATCHES, CF_GROUPS, CF_INDEX, CF_SHARDS};
use crate::config::{Config, Durability, EngineKind, ShardOptions};
use crate::engine::index::{BatchEntry, BatchIndex, Held};
use crate::engine::keyfilter;
use crate::engine::scan::{self, ScanBatch};
use crate::engine::{
    NewBatch, ReadLimits, ReadResult, Shard, ShardInfo, TIMESTAMP_EARLIEST, TIMESTAMP_LATEST,
};
use crate::format;
use crate::io::TransferPlan;
use crate::record::RecordView;
use crate::time::now_ms;
use crate::{Error, Result};

/// An indexed batch: its key is the shard id and its base offset. Its
/// `loc` is the syncer sequence number of the pipelined write that stored
/// it, which `wait_durable` waits for (0: synced when written, or found
/// at open).
type Entry = BatchEntry<u64>;
type Index = BatchIndex<u64>;

/// Dropping more batches than this at once writes a range tombstone per
/// column family instead of a point tombstone per batch (many range
/// tombstones slow RocksDB's reads down; many point ones its writes).
const RANGE_DELETE_FROM: usize = 16;

#[derive(Default)]
struct ShardState {
    index: Index,
    /// The shard's deletion is written: every later call fails.
    deleted: bool,
}

impl Deref for ShardState {
    type Target = Index;

    fn deref(&self) -> &Index {
        &self.index
    }
}

impl DerefMut for ShardState {
    fn deref_mut(&mut self) -> &mut Index {
        &mut self.index
    }
}

/// The column families a shard writes.
struct Families<'a> {
    batches: &'a ColumnFamily,
    index: &'a ColumnFamily,
    shards: &'a ColumnFamily,
}

impl<'a> Families<'a> {
    fn of(db: &'a DB) -> Result<Families<'a>> {
        Ok(Families {
            batches: cf(db, CF_BATCHES)?,
            index: cf(db, CF_INDEX)?,
            shards: cf(db, CF_SHARDS)?,
        })
    }
}

pub struct RocksShard {
    id: u64,
    name: String,
    options: ShardOptions,
    db: Arc<Db>,
    state: RwLock<ShardState>,
    /// Group offsets found at open, until the store reads them.
    recovered_groups: Mutex<Vec<(String, i64)>>,
    /// The newest pipelined write of the shard not known to be synced
    /// (a `Db::write` sequence number; 0: none).
    unsynced: AtomicU64,
    appended_records: AtomicU64,
    appended_bytes: AtomicU64,
    read_records: AtomicU64,
}

impl RocksShard {
    fn new(id: u64, name: &str, options: ShardOptions, db: Arc<Db>, index: Index) -> Self {
        RocksShard {
            id,
            name: name.to_string(),
            options,
            db,
            state: RwLock::new(ShardState {
                index,
                deleted: false,
            }),
            recovered_groups: Mutex::new(Vec::new()),
            unsynced: AtomicU64::new(0),
            appended_records: AtomicU64::new(0),
            appended_bytes: AtomicU64::new(0),
            read_records: AtomicU64::new(0),
        }
    }

    /// Creates the shard: its catalogue entry, as durable as its data
    /// will be.
    /// New empty shards, their catalogue entries written in one
    /// WriteBatch (atomically, one WAL write and sync for all).
    pub(super) fn create_all(
        ids: impl Iterator<Item = u64>,
        names: &[&str],
        options: &ShardOptions,
        db: &Arc<Db>,
    ) -> Result<Vec<Self>> {
        let mut batch = WriteBatch::default();
        let shards = ids
            .zip(names)
            .map(|(id, name)| {
                let shard =
                    RocksShard::new(id, name, options.clone(), db.clone(), Index::default());
                shard.put_meta(&mut batch, 0, 0)?;
                Ok(shard)
            })
            .collect::<Result<Vec<_>>>()?;
        db.write(batch, options.durability, false)?;
        Ok(shards)
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn check_live(&self, state: &ShardState) -> Result<()> {
        if state.deleted {
            return Err(Error::ShardNotFound(self.name.clone()));
        }
        Ok(())
    }

    /// Adds the shard's catalogue entry, with these watermarks, to `batch`.
    fn put_meta(&self, batch: &mut WriteBatch, low_watermark: i64, next_offset: i64) -> Result<()> {
        let meta = ShardMeta {
            name: self.name.clone(),
            options: self.options.to_toml(),
            low_watermark,
            next_offset,
        };
        let db = self.db.get()?;
        batch.put_cf(cf(&db, CF_SHARDS)?, shard_prefix(self.id), meta.encode());
        Ok(())
    }

    /// Adds the removal of `dropped` (consecutive batches) to `batch`.
    fn delete_batches<'e>(
        &self,
        batch: &mut WriteBatch,
        dropped: impl ExactSizeIterator<Item = &'e Entry> + Clone,
    ) -> Result<()> {
        let db = self.db.get()?;
        let cfs = Families::of(&db)?;
        if dropped.len() >= RANGE_DELETE_FROM {
            let first = dropped.clone().next().expect("not empty").base_offset;
            let end = dropped.last().expect("not empty").last_offset + 1;
            for family in [cfs.batches, cfs.index] {
                batch.delete_range_cf(family, batch_key(self.id, first), batch_key(self.id, end));
            }
            return Ok(());
        }
        for entry in dropped {
            let key = batch_key(self.id, entry.base_offset);
            batch.delete_cf(cfs.batches, key);
            batch.delete_cf(cfs.index, key);
        }
        Ok(())
    }

    /// Adds to `batch` the stored form of batch `old` after a delete:
    /// `bytes` in its place, or nothing. Returns its new index entry.
    fn rewrite(
        &self,
        batch: &mut WriteBatch,
        old: &Entry,
        bytes: Option<Bytes>,
        records: u32,
    ) -> Result<Option<Entry>> {
        let db = self.db.get()?;
        let cfs = Families::of(&db)?;
        let key = batch_key(self.id, old.base_offset);
        let Some(bytes) = bytes else {
            batch.delete_cf(cfs.batches, key);
            batch.delete_cf(cfs.index, key);
            return Ok(None);
        };
        let value = IndexValue {
            last_offset: old.last_offset,
            max_timestamp: old.max_timestamp,
            records,
            len: bytes.len() as u32,
        };
        batch.put_cf(cfs.batches, key, &bytes);
        batch.put_cf(cfs.index, key, value.encode());
        let (base, last, max_ts) = (old.base_offset, old.last_offset, old.max_timestamp);
        Ok(Some(Entry::new(
            old.loc,
            bytes.len(),
            base,
            last,
            max_ts,
            records,
        )))
    }

    /// Durability of writes nobody waits for (retention): the WAL, unless
    /// the shard has none. A crash that loses one re-applies it at open.
    fn background_durability(&self) -> Durability {
        match self.options.durability {
            Durability::None => Durability::None,
            Durability::Os | Durability::Fsync => Durability::Os,
        }
    }

    /// Applies retention: the dropped batches and the raised watermark in
    /// one WriteBatch, then in the index. Called under the write lock.
    fn apply_retention(&self, state: &mut ShardState, now: i64) -> Result<()> {
        let count = state.retention_drops(&self.options, now);
        if count == 0 || self.db.read_only {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        self.delete_batches(&mut batch, state.batches.range(..count))?;
        let low = state
            .low_watermark
            .max(state.batches[count - 1].last_offset + 1);
        self.put_meta(&mut batch, low, state.next_offset)?;
        self.db.write(batch, self.background_durability(), false)?;
        state.drop_front(count);
        Ok(())
    }

    /// Age retention also applies to shards nobody appends to any more.
    fn expire_idle(&self, now: i64) -> Result<()> {
        if !self.state.read().is_stale(&self.options, now) {
            return Ok(());
        }
        let mut state = self.state.write();
        if state.deleted {
            return Ok(());
        }
        self.apply_retention(&mut state, now)
    }

    /// Stores `batches` at consecutive offsets in one WriteBatch (with
    /// their index records): all or none survive a crash. For `fsync`
    /// shards, `pipelined` leaves the WAL sync to `wait_durable`.
    fn store_batches(&self, batches: Vec<NewBatch>, pipelined: bool) -> Result<i64> {
        let now = now_ms();
        // Readers go on while RocksDB writes: nothing they can see changes
        // until the entries are indexed under the write lock.
        let state = self.state.upgradable_read();
        self.check_live(&state)?;
        let first = state.next_offset;
        let mut write = WriteBatch::default();
        let mut entries = Vec::with_capacity(batches.len());
        {
            let db = self.db.get()?;
            let cfs = Families::of(&db)?;
            let mut base = first;
            for mut batch in batches {
                let mut bytes = std::mem::take(&mut batch.bytes);
                format::set_base_offset(&mut bytes, base);
                let last = batch.last_offset(base);
                let value = IndexValue {
                    last_offset: last,
                    max_timestamp: batch.max_timestamp,
                    records: batch.records,
                    len: bytes.len() as u32,
                };
                let key = batch_key(self.id, base);
                write.put_cf(cfs.batches, key, &bytes);
                write.put_cf(cfs.index, key, value.encode());
                let entry = Entry::new(
                    0,
                    bytes.len(),
                    base,
                    last,
                    batch.max_timestamp,
                    batch.records,
                )
                .with_keys(batch.keys);
                entries.push(entry);
                base = last + 1;
            }
        }
        // Retention the append causes goes in the same write: one WAL
        // record per append, not a second write for the drop.
        let incoming = Held {
            batches: entries.len() as u64,
            records: entries.iter().map(|e| u64::from(e.records)).sum(),
            bytes: entries.iter().map(|e| e.len as u64).sum(),
        };
        let dropped = match self.db.read_only {
            true => 0,
            false => state.retention_drops_with(&self.options, now, incoming),
        };
        if dropped > 0 {
            self.delete_batches(&mut write, state.batches.range(..dropped))?;
            let low = state
                .low_watermark
                .max(state.batches[dropped - 1].last_offset + 1);
            let next = entries.last().map_or(first, |e| e.last_offset + 1);
            self.put_meta(&mut write, low, next)?;
        }
        let seq = self.db.write(write, self.options.durability, pipelined)?;
        self.unsynced.fetch_max(seq, Ordering::AcqRel);

        let mut state = RwLockUpgradableReadGuard::upgrade(state);
        state.drop_front(dropped);
        let (mut records, mut bytes) = (0u64, 0u64);
        for mut entry in entries {
            entry.loc = seq;
            records += u64::from(entry.records);
            bytes += entry.len as u64;
            state.push(entry);
        }
        self.apply_retention(&mut state, now)?;
        drop(state);
        self.appended_records.fetch_add(records, Ordering::Relaxed);
        self.appended_bytes.fetch_add(bytes, Ordering::Relaxed);
        Ok(first)
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
    shard: &'a RocksShard,
    iter: Option<DBRawIteratorWithThreadMode<'a, DB>>,
    /// The offset the call starts from: the first seek looks for the
    /// batch holding it.
    from: Option<i64>,
    /// The first failure; the scan stops there and `finish` reports it.
    error: Option<Error>,
}

impl<'a> Fetcher<'a> {
    fn new(db: &'a DB, shard: &'a RocksShard) -> Result<Fetcher<'a>> {
        Ok(Fetcher {
            db,
            family: cf(db, CF_BATCHES)?,
            shard,
            iter: None,
            from: None,
            error: None,
        })
    }

    /// A fetcher whose first seek finds the batch holding `from`.
    fn starting_at(db: &'a DB, shard: &'a RocksShard, from: i64) -> Result<Fetcher<'a>> {
        Ok(Fetcher {
            from: Some(from),
            ..Fetcher::new(db, shard)?
        })
    }

    fn missing(&self, entry: &Entry) -> Error {
        Error::corruption(format!(
            "RocksDB holds no batch at offset {} of shard '{}' (id {}), which its index lists",
            entry.base_offset, self.shard.name, self.shard.id
        ))
    }

    fn bytes(&mut self, entry: &Entry) -> Result<Bytes> {
        let key = batch_key(self.shard.id, entry.base_offset);
        let (db, family, id) = (self.db, self.family, self.shard.id);
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

    fn fetch(&mut self, entry: &Entry) -> Option<Bytes> {
        match self.bytes(entry) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                self.error = Some(e);
                None
            }
        }
    }

    /// The batch as a scan wants it; `None` (ending the scan) after a
    /// failure.
    fn scan(&mut self, entry: &Entry) -> Option<ScanBatch> {
        let bytes = self.fetch(entry)?;
        Some(entry.scan(bytes))
    }

    /// For key and tag lookups: `Some(None)` for a batch whose key filter
    /// rules out every hash of `wanted` (computed here when missing).
    fn scan_matching(&mut self, entry: &Entry, wanted: &[u32]) -> Option<Option<ScanBatch>> {
        match entry.may_match(wanted) {
            Some(false) => Some(None),
            Some(true) => self.scan(entry).map(Some),
            None => {
                let bytes = self.fetch(entry)?;
                let hit = entry.learn_filter(&bytes, wanted);
                Some(hit.then(|| entry.scan(bytes)))
            }
        }
    }

    fn finish<T>(self, result: Result<T>) -> Result<T> {
        match self.error {
            Some(e) => Err(e),
            None => result,
        }
    }
}

impl Shard for RocksShard {
    fn kind(&self) -> EngineKind {
        EngineKind::Rocksdb
    }

    fn info(&self) -> Result<ShardInfo> {
        self.expire_idle(now_ms())?;
        let state = self.state.read();
        Ok(ShardInfo {
            name: self.name.clone(),
            engine: EngineKind::Rocksdb,
            first_offset: state.low_watermark,
            next_offset: state.next_offset,
            records: state.records,
            bytes: state.bytes,
            options: self.options.clone(),
        })
    }

    fn expire(&self, now_ms: i64) -> Result<()> {
        self.expire_idle(now_ms)
    }

    fn options(&self) -> &ShardOptions {
        &self.options
    }

    fn append_batches(&self, batches: Vec<NewBatch>, pipelined: bool) -> Result<i64> {
        self.store_batches(batches, pipelined)
    }

    /// Waits for the sync covering the write that stored `offset`: a sync
    /// covers every write completed before it started, so every earlier
    /// batch too, while later writes go on (a producer waiting on its
    /// oldest batch does not wait for its newest).
    fn wait_durable(&self, offset: i64) -> Result<()> {
        let seq = {
            let state = self.state.read();
            self.check_live(&state)?;
            scan::check_appended(&self.name, offset, state.next_offset)?;
            if offset < state.low_watermark {
                0
            } else {
                // The batch holding it, or (deleted since) the next one's
                // write, which covers it; none left: the newest write.
                match state.batches.get(state.batch_index(offset)) {
                    Some(entry) => entry.loc,
                    None => self.unsynced.load(Ordering::Acquire),
                }
            }
        };
        match seq {
            0 => Ok(()),
            seq => self.db.wait_synced(seq),
        }
    }

    fn read(&self, from: i64, limits: ReadLimits) -> Result<ReadResult> {
        let now = now_ms();
        self.expire_idle(now)?;
        let state = self.state.read();
        state.check_range(&self.name, from)?;
        let db = self.db.get()?;
        let mut fetcher = Fetcher::starting_at(&db, self, from)?;
        let batches = state
            .batches
            .range(state.batch_index(from)..)
            .map_while(|b| fetcher.scan(b));
        let result = scan::read(batches, from, limits, now, state.next_offset);
        let result = fetcher.finish(result)?;
        self.read_records
            .fetch_add(result.records.len() as u64, Ordering::Relaxed);
        Ok(result)
    }

    fn read_by_keys(&self, keys: &[&[u8]], max_records: usize) -> Result<Vec<RecordView>> {
        let now = now_ms();
        self.expire_idle(now)?;
        let state = self.state.read();
        let wanted: Vec<u32> = keys.iter().map(|k| keyfilter::key_hash(k)).collect();
        let db = self.db.get()?;
        let mut fetcher = Fetcher::new(&db, self)?;
        let batches = state
            .batches
            .iter()
            .map_while(|b| fetcher.scan_matching(b, &wanted))
            .flatten();
        let result = scan::read_by_keys(batches, keys, max_records, now);
        fetcher.finish(result)
    }

    fn read_by_tag(&self, tag: &[u8], from: i64, max_records: usize) -> Result<ReadResult> {
        let now = now_ms();
        self.expire_idle(now)?;
        let state = self.state.read();
        state.check_range(&self.name, from)?;
        let wanted = [keyfilter::tag_hash(tag)];
        let db = self.db.get()?;
        let mut fetcher = Fetcher::starting_at(&db, self, from)?;
        let batches = state
            .batches
            .range(state.batch_index(from)..)
            .map_while(|b| fetcher.scan_matching(b, &wanted))
            .flatten();
        let result = scan::read_by_tag(batches, tag, from, max_records, now, state.next_offset);
        fetcher.finish(result)
    }

    fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<i64>> {
        self.expire_idle(now_ms())?;
        let state = self.state.read();
        match timestamp_ms {
            TIMESTAMP_EARLIEST => return Ok(Some(state.low_watermark)),
            TIMESTAMP_LATEST => return Ok(Some(state.next_offset)),
            _ => {}
        }
        let db = self.db.get()?;
        let mut fetcher = Fetcher::new(&db, self)?;
        let batches = state
            .batches
            .range(state.timestamp_start(timestamp_ms)..)
            .map_while(|b| fetcher.scan(b));
        let result = scan::offset_for_timestamp(batches, timestamp_ms);
        fetcher.finish(result)
    }

    /// The dropped batches, the cut one rewritten without its records
    /// below `offset` (so transfers never send them) and the new watermark
    /// in one WriteBatch: a crash leaves the delete done or not done.
    fn delete_records_before(&self, offset: i64) -> Result<i64> {
        let mut state = self.state.write();
        self.check_live(&state)?;
        let target = offset.min(state.next_offset);
        if target <= state.low_watermark {
            // Retention may have got there first with a write nobody
            // synced: acknowledged as this delete, it must be as durable.
            let low = state.low_watermark;
            drop(state);
            if self.options.durability == Durability::Fsync {
                self.db.sync_wal()?;
            }
            return Ok(low);
        }
        let dropped = state.batch_index(target);
        let mut batch = WriteBatch::default();
        self.delete_batches(&mut batch, state.batches.range(..dropped))?;
        let cut = match state.batches.get(dropped) {
            Some(b) if b.base_offset < target => {
                let bytes = Fetcher::new(&*self.db.get()?, self)?.bytes(b)?;
                let cut = scan::cut_below(&bytes, target)?;
                Some(self.rewrite(&mut batch, b, cut.bytes, cut.records)?)
            }
            _ => None,
        };
        self.put_meta(&mut batch, target, state.next_offset)?;
        self.db.write(batch, self.options.durability, false)?;
        state.raise_low(target);
        if let Some(entry) = cut {
            state.replace(0, entry);
        }
        Ok(target)
    }

    /// Deletes the cut batches and lowers the next offset in one
    /// WriteBatch: the truncation is atomic.
    fn truncate_to(&self, offset: i64) -> Result<()> {
        let mut state = self.state.write();
        self.check_live(&state)?;
        state.check_truncation(&self.name, offset)?;
        if offset < state.next_offset {
            let keep = state.batch_index(offset);
            let mut batch = WriteBatch::default();
            self.delete_batches(&mut batch, state.batches.range(keep..))?;
            self.put_meta(&mut batch, state.low_watermark, offset)?;
            self.db.write(batch, self.options.durability, false)?;
            state.truncate(offset);
        }
        Ok(())
    }

    /// Rewrites every batch holding a record `matches` selects, all in one
    /// WriteBatch with the catalogue entry: the delete is atomic.
    fn delete_where(
        &self,
        within: Range<i64>,
        matches: &mut dyn FnMut(&RecordView) -> bool,
    ) -> Result<u64> {
        let mut state = self.state.write();
        self.check_live(&state)?;
        let mut batch = WriteBatch::default();
        let mut changes: Vec<(usize, Option<Entry>)> = Vec::new();
        let mut deleted = 0u64;
        {
            let db = self.db.get()?;
            let mut fetcher = Fetcher::new(&db, self)?;
            let first = state.batch_index(within.start);
            let touched = state.batches.range(first..);
            for (i, entry) in (first..).zip(touched) {
                if entry.base_offset >= within.end {
                    break;
                }
                let bytes = fetcher.bytes(entry)?;
                let Some(rewritten) = scan::rewrite_where(&bytes, matches)? else {
                    continue;
                };
                deleted += rewritten.deleted as u64;
                let new = self.rewrite(&mut batch, entry, rewritten.bytes, rewritten.records)?;
                changes.push((i, new));
            }
        }
        if changes.is_empty() {
            return Ok(0);
        }
        // The next offset survives the newest batch's removal.
        self.put_meta(&mut batch, state.low_watermark, state.next_offset)?;
        self.db.write(batch, self.options.durability, false)?;
        for (i, new) in changes.into_iter().rev() {
            state.replace(i, new);
        }
        Ok(deleted)
    }

    /// Whole batches from the one holding `from`, as one lazy chunk read
    /// from a snapshot taken now (`plan`): the plan holds no batch
    /// bytes until they are sent, and sends them as they were planned.
    fn plan_transfer(&self, from: i64, max_bytes: usize) -> Result<TransferPlan> {
        self.expire_idle(now_ms())?;
        let state = self.state.read();
        state.check_range(&self.name, from)?;
        let mut batches = Vec::new();
        let mut total = 0u64;
        let mut next_offset = state.next_offset;
        for entry in state.batches.range(state.batch_index(from)..) {
            let len = entry.len as u64;
            if !batches.is_empty() && total + len > max_bytes as u64 {
                next_offset = entry.base_offset;
                break;
            }
            batches.push(PlannedBatch {
                start: total,
                len,
                base_offset: entry.base_offset,
            });
            total += len;
        }
        if batches.is_empty() {
            return Ok(TransferPlan::new(Vec::new(), next_offset));
        }
        // The snapshot is taken under the shard's read lock: no delete of
        // these batches comes between the index and it.
        let chunk = plan::chunk(&self.db, self.id, batches)?;
        Ok(TransferPlan::new(vec![chunk], next_offset))
    }

    /// One put (or delete) in the `groups` column family, as durable as
    /// the shard's appends.
    fn save_group_offset(&self, group: &str, offset: Option<i64>) -> Result<bool> {
        let state = self.state.read();
        self.check_live(&state)?;
        let mut batch = WriteBatch::default();
        {
            let db = self.db.get()?;
            let family = cf(&db, CF_GROUPS)?;
            let key = keys::group_key(self.id, group);
            match offset {
                Some(offset) => batch.put_cf(family, key, offset.to_be_bytes()),
                None => batch.delete_cf(family, key),
            }
        }
        self.db.write(batch, self.options.durability, false)?;
        Ok(true)
    }

    fn saved_group_offsets(&self) -> Result<Vec<(String, i64)>> {
        Ok(std::mem::take(&mut *self.recovered_groups.lock()))
    }

    fn stats(&self) -> Result<serde_json::Value> {
        let batches = self.state.read().batches.len();
        Ok(serde_json::json!({
            "id": self.id,
            "batches": batches,
            "appended_records": self.appended_records.load(Ordering::Relaxed),
            "appended_bytes": self.appended_bytes.load(Ordering::Relaxed),
            "read_records": self.read_records.load(Ordering::Relaxed),
            "rocksdb": self.db.stats()?,
        }))
    }
}

impl RocksShard {
    /// Removes the shard: its batches and group offsets (a range
    /// tombstone over its key prefix in each column family) and its
    /// catalogue entry in one WriteBatch, as durable as its data.
    pub(super) fn delete(&self) -> Result<()> {
        let mut state = self.state.write();
        self.check_live(&state)?;
        let mut batch = WriteBatch::default();
        {
            let db = self.db.get()?;
            let cfs = Families::of(&db)?;
            let (start, end) = (shard_prefix(self.id), shard_prefix(self.id + 1));
            batch.delete_range_cf(cfs.batches, start, end);
            batch.delete_range_cf(cfs.index, start, end);
            batch.delete_range_cf(cf(&db, CF_GROUPS)?, start, end);
            batch.delete_cf(cfs.shards, start);
        }
        self.db.write(batch, self.options.durability, false)?;
        state.deleted = true;
        state.index = Index::default();
        Ok(())
    }
}

/// Every shard stored in `db`, its index rebuilt from the `index` column
/// family (no batch is read) and retention applied as of now.
pub(super) fn recover_all(db: &Arc<Db>) -> Result<Vec<RocksShard>> {
    let mut shards = load_catalogue(db)?;
    load_index(db, &mut shards)?;
    let mut groups = load_groups(db)?;
    let now = now_ms();
    let mut out = Vec::with_capacity(shards.len());
    for (id, (meta, index)) in shards {
        let options = Config::default()
            .shard_options(Some(&meta.options))
            .map_err(|e| {
                Error::corruption(format!(
                    "RocksDB catalogue entry of shard id {id} ('{}'): {e}",
                    meta.name
                ))
            })?;
        let shard = RocksShard::new(id, &meta.name, options, db.clone(), index);
        *shard.recovered_groups.lock() = groups.remove(&id).unwrap_or_default();
        shard.apply_retention(&mut shard.state.write(), now)?;
        out.push(shard);
    }
    Ok(out)
}

type Loaded = std::collections::BTreeMap<u64, (ShardMeta, Index)>;

fn load_catalogue(db: &Db) -> Result<Loaded> {
    let db = db.get()?;
    let mut iter = db.raw_iterator_cf(cf(&db, CF_SHARDS)?);
    iter.seek_to_first();
    let mut shards = Loaded::new();
    while let Some((key, value)) = iter.item() {
        let id = keys::parse_shard_key(key).ok_or_else(|| {
            Error::corruption(format!(
                "RocksDB catalogue key {key:02x?} is not a shard id"
            ))
        })?;
        let meta = ShardMeta::decode(id, value)?;
        let index = BatchIndex {
            low_watermark: meta.low_watermark,
            next_offset: meta.next_offset,
            ..Index::default()
        };
        shards.insert(id, (meta, index));
        iter.next();
    }
    iter.status()
        .map_err(|e| db_error("reading the shard catalogue", e))?;
    Ok(shards)
}

fn load_index(db: &Db, shards: &mut Loaded) -> Result<()> {
    let db = db.get()?;
    let mut options = ReadOptions::default();
    options.set_total_order_seek(true);
    let mut iter = db.raw_iterator_cf_opt(cf(&db, CF_INDEX)?, options);
    iter.seek_to_first();
    while let Some((key, value)) = iter.item() {
        let bad =
            |what: &str| Error::corruption(format!("RocksDB index record {key:02x?}: {what}"));
        let (id, base) = keys::parse_batch_key(key).ok_or_else(|| bad("not a batch key"))?;
        let value = IndexValue::decode(value).ok_or_else(|| bad("malformed value"))?;
        let (_, index) = shards
            .get_mut(&id)
            .ok_or_else(|| bad("its shard has no catalogue entry"))?;
        let follows = index.batches.back().map_or(true, |b| b.last_offset < base);
        // A batch a delete cut keeps its key below the watermark.
        if value.last_offset < base || !follows || value.last_offset < index.low_watermark {
            return Err(bad("offsets out of order"));
        }
        let len = value.len as usize;
        index.push(Entry::new(
            0,
            len,
            base,
            value.last_offset,
            value.max_timestamp,
            value.records,
        ));
        iter.next();
    }
    iter.status()
        .map_err(|e| db_error("reading the batch index", e))
}

/// Every saved group offset, by shard id.
fn load_groups(db: &Db) -> Result<HashMap<u64, Vec<(String, i64)>>> {
    let db = db.get()?;
    let mut options = ReadOptions::default();
    options.set_total_order_seek(true);
    let mut iter = db.raw_iterator_cf_opt(cf(&db, CF_GROUPS)?, options);
    iter.seek_to_first();
    let mut out: HashMap<u64, Vec<(String, i64)>> = HashMap::new();
    while let Some((key, value)) = iter.item() {
        let bad = || Error::corruption(format!("RocksDB group offset record {key:02x?}"));
        let (id, group) = keys::parse_group_key(key).ok_or_else(bad)?;
        let offset = i64::from_be_bytes(value.try_into().map_err(|_| bad())?);
        out.entry(id).or_default().push((group, offset));
        iter.next();
    }
    iter.status()
        .map_err(|e| db_error("reading the group offsets", e))?;
    Ok(out)
}
