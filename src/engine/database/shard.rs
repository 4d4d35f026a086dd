//! `DbShard`: a shard whose batches live in a `Database`, indexed in
//! memory by the shared batch index (`engine::index`), each entry standing
//! for the record `shard id ‖ base offset`.
//!
//! Locking: appends hold the state's upgradable lock while the database
//! writes (and syncs) the new batches, so readers go on meanwhile (nothing
//! they can see changes: the new records are not indexed yet), and upgrade
//! it only to index them. Everything that removes or rewrites stored
//! batches (deletes, retention) holds the write lock across its database
//! write, so a reader never finds a record of its index gone.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut, Range};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock, RwLockUpgradableReadGuard};

use super::{BatchMeta, BatchReader, Change, Database, Entry, Found, PlannedBatch, ShardMeta};
use crate::config::{Config, Durability, EngineKind, ShardOptions};
use crate::engine::index::{BatchIndex, Held};
use crate::engine::keyfilter::{self, KeyFilter};
use crate::engine::scan::{self, ScanBatch};
use crate::engine::{
    NewBatch, ReadLimits, ReadResult, Shard, ShardInfo, TIMESTAMP_EARLIEST, TIMESTAMP_LATEST,
};
use crate::format;
use crate::io::TransferPlan;
use crate::record::RecordView;
use crate::time::now_ms;
use crate::{Error, Result};

type Index = BatchIndex<u64>;

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

pub(crate) struct DbShard<D: Database> {
    id: u64,
    name: String,
    options: ShardOptions,
    db: Arc<D>,
    state: RwLock<ShardState>,
    /// Group offsets found at open, until the store reads them.
    recovered_groups: Mutex<Vec<(String, i64)>>,
    /// The newest pipelined write of the shard not known to be synced
    /// (a `Database::commit` ticket; 0: none).
    unsynced: AtomicU64,
    /// A write failed: the database may hold it or not (a server may have
    /// applied a write whose answer was lost), so the index is rebuilt
    /// from the database before the shard is used again.
    stale: AtomicBool,
    resyncs: AtomicU64,
    appended_records: AtomicU64,
    appended_bytes: AtomicU64,
    read_records: AtomicU64,
}

/// The index entry of a batch stored at `base` with `meta`.
fn entry_of(loc: u64, base: i64, meta: &BatchMeta) -> Entry {
    Entry::new(
        loc,
        meta.len as usize,
        base,
        meta.last_offset,
        meta.max_timestamp,
        meta.records,
    )
}

impl<D: Database> DbShard<D> {
    fn new(id: u64, name: &str, options: ShardOptions, db: Arc<D>, index: Index) -> Self {
        DbShard {
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
            stale: AtomicBool::new(false),
            resyncs: AtomicU64::new(0),
            appended_records: AtomicU64::new(0),
            appended_bytes: AtomicU64::new(0),
            read_records: AtomicU64::new(0),
        }
    }

    /// New empty shards, their catalogue entries written in one atomic
    /// write, as durable as their data will be.
    pub(super) fn create_all(
        ids: impl Iterator<Item = u64>,
        names: &[&str],
        options: &ShardOptions,
        db: &Arc<D>,
    ) -> Result<Vec<Self>> {
        db.check_durability(options.durability)?;
        let shards: Vec<Self> = ids
            .zip(names)
            .map(|(id, name)| DbShard::new(id, name, options.clone(), db.clone(), Index::default()))
            .collect();
        let changes = shards.iter().map(|shard| shard.put_meta(0, 0)).collect();
        db.commit(changes, options.durability, false)?;
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

    fn mark_stale(&self) {
        self.stale.store(true, Ordering::Release);
    }

    /// Applies `changes`; a failure leaves the shard stale (see `stale`).
    fn commit(&self, changes: Vec<Change>, durability: Durability, pipelined: bool) -> Result<u64> {
        self.db
            .commit(changes, durability, pipelined)
            .inspect_err(|_| self.mark_stale())
    }

    /// Rebuilds the index from the database after a failed write, so that
    /// what the shard serves and where it appends next match what the
    /// database holds, whichever way the write went.
    fn resync_if_stale(&self) -> Result<()> {
        if !self.stale.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut state = self.state.write();
        if !self.stale.load(Ordering::Acquire) || state.deleted {
            return Ok(());
        }
        let mut loaded = Loaded::default();
        self.db
            .load_shard(self.id, &mut |found| loaded.add(found))?;
        match loaded.shards.remove(&self.id) {
            Some((_, index)) => state.index = index,
            // A removal whose answer was lost took effect.
            None => {
                state.deleted = true;
                state.index = Index::default();
            }
        }
        self.stale.store(false, Ordering::Release);
        self.resyncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The shard's catalogue entry with these watermarks.
    fn put_meta(&self, low_watermark: i64, next_offset: i64) -> Change {
        Change::PutShard {
            shard: self.id,
            meta: ShardMeta {
                name: self.name.clone(),
                options: self.options.to_toml(),
                low_watermark,
                next_offset,
            },
        }
    }

    /// The removal of `dropped` (consecutive batches; `front`: the oldest).
    fn delete_batches<'e>(
        &self,
        dropped: impl Iterator<Item = &'e Entry>,
        front: bool,
    ) -> Option<Change> {
        let mut end = i64::MIN;
        let bases: Vec<i64> = dropped
            .map(|entry| {
                end = entry.last_offset + 1;
                entry.base_offset
            })
            .collect();
        (!bases.is_empty()).then_some(Change::DeleteBatches {
            shard: self.id,
            bases,
            end,
            front,
        })
    }

    /// The stored form of batch `old` after a delete: `bytes` in its
    /// place, or nothing. Returns the change and the new index entry.
    fn rewrite(&self, old: &Entry, bytes: Option<Bytes>, records: u32) -> (Change, Option<Entry>) {
        let Some(bytes) = bytes else {
            let change = Change::DeleteBatches {
                shard: self.id,
                bases: vec![old.base_offset],
                end: old.last_offset + 1,
                front: false,
            };
            return (change, None);
        };
        let meta = BatchMeta {
            last_offset: old.last_offset,
            max_timestamp: old.max_timestamp,
            records,
            len: bytes.len() as u32,
        };
        let entry = entry_of(old.loc, old.base_offset, &meta);
        let change = Change::PutBatch {
            shard: self.id,
            base_offset: old.base_offset,
            bytes,
            meta,
            keys: None,
        };
        (change, Some(entry))
    }

    /// Durability of writes nobody waits for (retention): written, not
    /// synced, unless the shard syncs nothing. A crash that loses one
    /// re-applies it at open.
    fn background_durability(&self) -> Durability {
        match self.options.durability {
            Durability::None => Durability::None,
            Durability::Os | Durability::Fsync => Durability::Os,
        }
    }

    /// The removal of the shard's `count` oldest batches and the raised
    /// watermark (`next_offset` the shard's next offset after the write).
    fn drop_front(&self, state: &ShardState, count: usize, next_offset: i64) -> Vec<Change> {
        let low = state
            .low_watermark
            .max(state.batches[count - 1].last_offset + 1);
        let dropped = self.delete_batches(state.batches.range(..count), true);
        dropped
            .into_iter()
            .chain([self.put_meta(low, next_offset)])
            .collect()
    }

    /// Applies retention: the dropped batches and the raised watermark in
    /// one write, then in the index. Called under the write lock.
    fn apply_retention(&self, state: &mut ShardState, now: i64) -> Result<()> {
        let count = state.retention_drops(&self.options, now);
        if count == 0 || self.db.read_only() {
            return Ok(());
        }
        let changes = self.drop_front(state, count, state.next_offset);
        self.commit(changes, self.background_durability(), false)?;
        state.drop_front(count);
        Ok(())
    }

    /// Age retention also applies to shards nobody appends to any more.
    fn expire_idle(&self, now: i64) -> Result<()> {
        self.resync_if_stale()?;
        if !self.state.read().is_stale(&self.options, now) {
            return Ok(());
        }
        let mut state = self.state.write();
        if state.deleted {
            return Ok(());
        }
        self.apply_retention(&mut state, now)
    }

    /// Stores `batches` at consecutive offsets in one atomic write: all or
    /// none survive a crash. For `fsync` shards, `pipelined` may leave the
    /// sync to `wait_durable`.
    fn store_batches(&self, batches: Vec<NewBatch>, pipelined: bool) -> Result<i64> {
        let now = now_ms();
        self.resync_if_stale()?;
        // Readers go on while the database writes: nothing they can see
        // changes until the entries are indexed under the write lock.
        let state = self.state.upgradable_read();
        self.check_live(&state)?;
        let first = state.next_offset;
        let mut changes = Vec::with_capacity(batches.len() + 2);
        let mut entries = Vec::with_capacity(batches.len());
        let mut base = first;
        for mut batch in batches {
            let mut bytes = std::mem::take(&mut batch.bytes);
            format::set_base_offset(&mut bytes, base);
            let meta = BatchMeta {
                last_offset: batch.last_offset(base),
                max_timestamp: batch.max_timestamp,
                records: batch.records,
                len: bytes.len() as u32,
            };
            changes.push(Change::PutBatch {
                shard: self.id,
                base_offset: base,
                bytes: Bytes::from(bytes),
                meta,
                keys: batch.keys.clone(),
            });
            entries.push(entry_of(0, base, &meta).with_keys(batch.keys));
            base = meta.last_offset + 1;
        }
        // Retention the append causes goes in the same write: one write
        // per append, not a second one for the drop.
        let incoming = Held {
            batches: entries.len() as u64,
            records: entries.iter().map(|e| u64::from(e.records)).sum(),
            bytes: entries.iter().map(|e| e.len as u64).sum(),
        };
        let dropped = match self.db.read_only() {
            true => 0,
            false => state.retention_drops_with(&self.options, now, incoming),
        };
        if dropped > 0 {
            changes.extend(self.drop_front(&state, dropped, base));
        }
        let ticket = self.commit(changes, self.options.durability, pipelined)?;
        self.unsynced.fetch_max(ticket, Ordering::AcqRel);

        let mut state = RwLockUpgradableReadGuard::upgrade(state);
        state.drop_front(dropped);
        for mut entry in entries {
            entry.loc = ticket;
            state.push(entry);
        }
        self.apply_retention(&mut state, now)?;
        drop(state);
        self.appended_records
            .fetch_add(incoming.records, Ordering::Relaxed);
        self.appended_bytes
            .fetch_add(incoming.bytes, Ordering::Relaxed);
        Ok(first)
    }

    /// Runs `f` with a fetcher of this shard's batches, starting at `from`.
    fn with_fetcher<R>(
        &self,
        from: Option<i64>,
        f: impl FnOnce(&mut Fetcher<'_>) -> Result<R>,
    ) -> Result<R> {
        // A reader that cannot start may stand for a pipelined write that
        // failed (a backend sends those before reading).
        let read = self.db.with_reader(self.id, from, |reader| {
            let mut fetcher = Fetcher {
                reader,
                error: None,
            };
            let result = f(&mut fetcher);
            fetcher.finish(result)
        });
        read.inspect_err(|_| self.mark_stale())?
    }
}

/// A call's reader, turning a failed fetch into the end of the scan it
/// feeds and reporting the failure afterwards.
struct Fetcher<'a> {
    reader: &'a mut dyn BatchReader,
    /// The first failure; the scan stops there and `finish` reports it.
    error: Option<Error>,
}

impl Fetcher<'_> {
    fn fetch(&mut self, entry: &Entry) -> Option<Bytes> {
        match self.reader.batch(entry) {
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

    fn finish<T>(&mut self, result: Result<T>) -> Result<T> {
        match self.error.take() {
            Some(e) => Err(e),
            None => result,
        }
    }
}

impl<D: Database> Shard for DbShard<D> {
    fn kind(&self) -> EngineKind {
        D::KIND
    }

    fn info(&self) -> Result<ShardInfo> {
        self.expire_idle(now_ms())?;
        let state = self.state.read();
        Ok(ShardInfo {
            name: self.name.clone(),
            engine: D::KIND,
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
        let ticket = {
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
        match ticket {
            0 => Ok(()),
            ticket => self
                .db
                .wait_synced(ticket)
                .inspect_err(|_| self.mark_stale()),
        }
    }

    fn sync(&self) -> Result<()> {
        self.check_live(&self.state.read())?;
        self.db
            .sync_shard(self.id)
            .inspect_err(|_| self.mark_stale())
    }

    fn read(&self, from: i64, limits: ReadLimits) -> Result<ReadResult> {
        let now = now_ms();
        self.expire_idle(now)?;
        let state = self.state.read();
        state.check_range(&self.name, from)?;
        let result = self.with_fetcher(Some(from), |fetcher| {
            let batches = state
                .batches
                .range(state.batch_index(from)..)
                .map_while(|b| fetcher.scan(b));
            scan::read(batches, from, limits, now, state.next_offset)
        })?;
        self.read_records
            .fetch_add(result.records.len() as u64, Ordering::Relaxed);
        Ok(result)
    }

    fn read_by_keys(&self, keys: &[&[u8]], max_records: usize) -> Result<Vec<RecordView>> {
        let now = now_ms();
        self.expire_idle(now)?;
        let state = self.state.read();
        let wanted: Vec<u32> = keys.iter().map(|k| keyfilter::key_hash(k)).collect();
        self.with_fetcher(None, |fetcher| {
            let batches = state
                .batches
                .iter()
                .map_while(|b| fetcher.scan_matching(b, &wanted))
                .flatten();
            scan::read_by_keys(batches, keys, max_records, now)
        })
    }

    fn read_by_tag(&self, tag: &[u8], from: i64, max_records: usize) -> Result<ReadResult> {
        let now = now_ms();
        self.expire_idle(now)?;
        let state = self.state.read();
        state.check_range(&self.name, from)?;
        let wanted = [keyfilter::tag_hash(tag)];
        self.with_fetcher(Some(from), |fetcher| {
            let batches = state
                .batches
                .range(state.batch_index(from)..)
                .map_while(|b| fetcher.scan_matching(b, &wanted))
                .flatten();
            scan::read_by_tag(batches, tag, from, max_records, now, state.next_offset)
        })
    }

    fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<i64>> {
        self.expire_idle(now_ms())?;
        let state = self.state.read();
        match timestamp_ms {
            TIMESTAMP_EARLIEST => return Ok(Some(state.low_watermark)),
            TIMESTAMP_LATEST => return Ok(Some(state.next_offset)),
            _ => {}
        }
        let start = state.timestamp_start(timestamp_ms);
        let from = state.batches.get(start).map(|b| b.base_offset);
        self.with_fetcher(from, |fetcher| {
            let batches = state.batches.range(start..).map_while(|b| fetcher.scan(b));
            scan::offset_for_timestamp(batches, timestamp_ms)
        })
    }

    /// The dropped batches, the cut one rewritten without its records
    /// below `offset` (so transfers never send them) and the new watermark
    /// in one write: a crash leaves the delete done or not done.
    fn delete_records_before(&self, offset: i64) -> Result<i64> {
        self.resync_if_stale()?;
        let mut state = self.state.write();
        self.check_live(&state)?;
        let target = offset.min(state.next_offset);
        if target <= state.low_watermark {
            // Retention may have got there first with a write nobody
            // synced: acknowledged as this delete, it must be as durable.
            let low = state.low_watermark;
            drop(state);
            if self.options.durability == Durability::Fsync {
                self.db.sync()?;
            }
            return Ok(low);
        }
        let dropped = state.batch_index(target);
        let mut changes: Vec<Change> = self
            .delete_batches(state.batches.range(..dropped), true)
            .into_iter()
            .collect();
        let cut = match state.batches.get(dropped) {
            Some(b) if b.base_offset < target => {
                let bytes = self.with_fetcher(Some(b.base_offset), |f| f.reader.batch(b))?;
                let cut = scan::cut_below(&bytes, target)?;
                let (change, entry) = self.rewrite(b, cut.bytes, cut.records);
                changes.push(change);
                Some(entry)
            }
            _ => None,
        };
        changes.push(self.put_meta(target, state.next_offset));
        self.commit(changes, self.options.durability, false)?;
        state.raise_low(target);
        if let Some(entry) = cut {
            state.replace(0, entry);
        }
        Ok(target)
    }

    /// Deletes the cut batches and lowers the next offset in one write:
    /// the truncation is atomic.
    fn truncate_to(&self, offset: i64) -> Result<()> {
        self.resync_if_stale()?;
        let mut state = self.state.write();
        self.check_live(&state)?;
        state.check_truncation(&self.name, offset)?;
        if offset < state.next_offset {
            let keep = state.batch_index(offset);
            let mut changes: Vec<Change> = self
                .delete_batches(state.batches.range(keep..), false)
                .into_iter()
                .collect();
            changes.push(self.put_meta(state.low_watermark, offset));
            self.commit(changes, self.options.durability, false)?;
            state.truncate(offset);
        }
        Ok(())
    }

    /// Rewrites every batch holding a record `matches` selects, all in one
    /// write with the catalogue entry: the delete is atomic.
    fn delete_where(
        &self,
        within: Range<i64>,
        matches: &mut dyn FnMut(&RecordView) -> bool,
    ) -> Result<u64> {
        self.resync_if_stale()?;
        let mut state = self.state.write();
        self.check_live(&state)?;
        let first = state.batch_index(within.start);
        let from = state.batches.get(first).map(|b| b.base_offset);
        let (mut changes, updates, deleted) = self.with_fetcher(from, |fetcher| {
            let mut changes = Vec::new();
            let mut updates: Vec<(usize, Option<Entry>)> = Vec::new();
            let mut deleted = 0u64;
            let touched = state.batches.range(first..);
            for (i, entry) in (first..).zip(touched) {
                if entry.base_offset >= within.end {
                    break;
                }
                let bytes = fetcher.reader.batch(entry)?;
                let Some(rewritten) = scan::rewrite_where(&bytes, matches)? else {
                    continue;
                };
                deleted += rewritten.deleted as u64;
                let (change, new) = self.rewrite(entry, rewritten.bytes, rewritten.records);
                changes.push(change);
                updates.push((i, new));
            }
            Ok((changes, updates, deleted))
        })?;
        if changes.is_empty() {
            return Ok(0);
        }
        // The next offset survives the newest batch's removal.
        changes.push(self.put_meta(state.low_watermark, state.next_offset));
        self.commit(changes, self.options.durability, false)?;
        for (i, new) in updates.into_iter().rev() {
            state.replace(i, new);
        }
        Ok(deleted)
    }

    /// Whole batches from the one holding `from`, as one chunk the
    /// database makes (`Database::plan`): it sends them as they were
    /// planned, whatever changes later.
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
            let planned = PlannedBatch {
                start: total,
                len,
                base_offset: entry.base_offset,
            };
            batches.push((entry, planned));
            total += len;
        }
        if batches.is_empty() {
            return Ok(TransferPlan::new(Vec::new(), next_offset));
        }
        // Made under the shard's read lock: no delete of these batches
        // comes between the index and the chunk.
        let chunk = self.db.plan(self.id, &batches)?;
        Ok(TransferPlan::new(vec![chunk], next_offset))
    }

    /// One write, as durable as the shard's appends.
    fn save_group_offset(&self, group: &str, offset: Option<i64>) -> Result<bool> {
        self.resync_if_stale()?;
        let state = self.state.read();
        self.check_live(&state)?;
        let change = Change::SaveGroup {
            shard: self.id,
            group: group.to_string(),
            offset,
        };
        self.commit(vec![change], self.options.durability, false)?;
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
            "resyncs": self.resyncs.load(Ordering::Relaxed),
            D::KIND.name(): self.db.stats()?,
        }))
    }
}

impl<D: Database> DbShard<D> {
    /// Removes the shard (its batches, group offsets and catalogue entry)
    /// in one write, as durable as its data.
    pub(super) fn delete(&self) -> Result<()> {
        self.resync_if_stale()?;
        let mut state = self.state.write();
        self.check_live(&state)?;
        let change = Change::RemoveShard { shard: self.id };
        self.commit(vec![change], self.options.durability, false)?;
        state.deleted = true;
        state.index = Index::default();
        Ok(())
    }
}

/// What `load` found, by shard id.
#[derive(Default)]
struct Loaded {
    shards: std::collections::BTreeMap<u64, (ShardMeta, Index)>,
    groups: HashMap<u64, Vec<(String, i64)>>,
}

impl Loaded {
    fn add(&mut self, found: Found) -> Result<()> {
        match found {
            Found::Shard(id, meta) => {
                let index = Index {
                    low_watermark: meta.low_watermark,
                    next_offset: meta.next_offset,
                    ..Index::default()
                };
                self.shards.insert(id, (meta, index));
            }
            Found::Batch(id, base, meta) => self.add_batch(id, base, meta)?,
            Found::Keys(id, base, keys) => self.add_keys(id, base, keys),
            Found::Group(id, group, offset) => {
                self.groups.entry(id).or_default().push((group, offset));
            }
        }
        Ok(())
    }

    fn add_batch(&mut self, id: u64, base: i64, meta: BatchMeta) -> Result<()> {
        let bad = |what: &str| {
            Error::corruption(format!(
                "index record of shard id {id}, offset {base}: {what}"
            ))
        };
        let (_, index) = self
            .shards
            .get_mut(&id)
            .ok_or_else(|| bad("its shard has no catalogue entry"))?;
        let follows = index.batches.back().is_none_or(|b| b.last_offset < base);
        // A batch a delete cut keeps its base offset below the watermark.
        if meta.last_offset < base || !follows || meta.last_offset < index.low_watermark {
            return Err(bad("offsets out of order"));
        }
        index.push(entry_of(0, base, &meta));
        Ok(())
    }

    /// A filter the database kept: lookups need not fetch the batch to
    /// learn it.
    fn add_keys(&mut self, id: u64, base: i64, keys: KeyFilter) {
        let batch = self
            .shards
            .get_mut(&id)
            .and_then(|(_, index)| index.batches.back());
        if let Some(batch) = batch.filter(|b| b.base_offset == base) {
            let _ = batch.keys.set(keys);
        }
    }
}

/// Every shard stored in `db`, its index rebuilt from what `load` lists
/// (no batch is read) and retention applied as of now.
pub(super) fn recover_all<D: Database>(db: &Arc<D>) -> Result<Vec<DbShard<D>>> {
    let mut loaded = Loaded::default();
    db.load(&mut |found| loaded.add(found))?;
    let now = now_ms();
    let mut out = Vec::with_capacity(loaded.shards.len());
    // Asking a server for its settings is a round trip: once per mode.
    let mut checked = Vec::new();
    for (id, (meta, index)) in loaded.shards {
        let options = Config::default()
            .shard_options(Some(&meta.options))
            .map_err(|e| {
                Error::corruption(format!(
                    "catalogue entry of shard id {id} ('{}'): {e}",
                    meta.name
                ))
            })?;
        if !checked.contains(&options.durability) {
            db.check_durability(options.durability)?;
            checked.push(options.durability);
        }
        let shard = DbShard::new(id, &meta.name, options, db.clone(), index);
        *shard.recovered_groups.lock() = loaded.groups.remove(&id).unwrap_or_default();
        shard.apply_retention(&mut shard.state.write(), now)?;
        out.push(shard);
    }
    Ok(out)
}
