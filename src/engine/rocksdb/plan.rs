//! Transfer plans of RocksDB shards: one lazy chunk per plan, its batches
//! read from a RocksDB snapshot taken when the plan was made, so deletes,
//! retention and a shard's removal after planning change nothing it sends
//! (the snapshot keeps RocksDB from discarding those versions meanwhile).
//! A plan still held when the store closes is read into memory first, so
//! it stays valid after the close like every engine's plans.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use ::rocksdb::{ReadOptions, SnapshotWithThreadMode, DB};
use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;

use super::keys::batch_key;
use super::{cf, db_error, Db, CF_BATCHES};
use crate::engine::database::PlannedBatch;
use crate::io::{ChunkFetcher, TransferChunk};
use crate::{Error, Result};

type Snapshot = SnapshotWithThreadMode<'static, DB>;

/// The snapshots of the plans of one database, by plan id.
#[derive(Default)]
pub(super) struct Plans {
    next_id: AtomicU64,
    live: Mutex<HashMap<u64, (Snapshot, Weak<PlanSource>)>>,
}

impl Plans {
    /// Reads every plan still held into memory and releases every
    /// snapshot; called by `Db::close` under its write lock, with the
    /// database about to be dropped. Returns the plans, to be dropped
    /// after that lock (their drop takes it).
    pub(super) fn detach_all(&self, db: &DB) -> Vec<Arc<PlanSource>> {
        let live = std::mem::take(&mut *self.live.lock());
        let mut kept = Vec::new();
        for (_, (snapshot, source)) in live {
            if let Some(source) = source.upgrade() {
                let mut options = ReadOptions::default();
                options.set_snapshot(&snapshot);
                // A plan that cannot be read now fails with `Closed` later.
                if let Ok(all) = source.read(db, &options, 0, source.len() as usize) {
                    let _ = source.detached.set(all);
                }
                kept.push(source);
            }
            drop(snapshot);
        }
        kept
    }
}

/// Supplies a plan's bytes, filling each piece with as many consecutive
/// batches as fit.
pub(super) struct PlanSource {
    db: Arc<Db>,
    id: u64,
    shard: u64,
    batches: Vec<PlannedBatch>,
    /// The whole chunk, once the database closed with the plan held.
    detached: OnceLock<Bytes>,
}

/// The lazy chunk of `batches` (consecutive, `start` counting from 0) of
/// shard `shard`, as they are now.
pub(super) fn chunk(db: &Arc<Db>, shard: u64, batches: Vec<PlannedBatch>) -> Result<TransferChunk> {
    let open = db.get()?;
    let id = db.plans.next_id.fetch_add(1, Ordering::Relaxed);
    let source = Arc::new(PlanSource {
        db: db.clone(),
        id,
        shard,
        batches,
        detached: OnceLock::new(),
    });
    // SAFETY: the snapshot refers to the boxed DB, which stays at its
    // address until `Db::close` drops it, and `close` first releases every
    // snapshot in `live` (holding the write lock, so no reader uses one
    // meanwhile). A plan's drop releases its own under the read lock,
    // only while the database is open (after a close it is gone already).
    let open: &'static DB = unsafe { &*(&*open as *const DB) };
    let snapshot = open.snapshot();
    db.plans
        .live
        .lock()
        .insert(id, (snapshot, Arc::downgrade(&source)));
    Ok(TransferChunk::Lazy {
        len: source.len(),
        fetcher: source,
    })
}

impl PlanSource {
    fn len(&self) -> u64 {
        self.batches.last().map_or(0, |b| b.start + b.len)
    }

    fn detached_range(&self, offset: u64, max: usize) -> Option<Bytes> {
        let all = self.detached.get()?;
        let end = (offset as usize + max).min(all.len());
        Some(all.slice(offset as usize..end))
    }

    /// Up to `max` bytes from `offset` on, read with `options` (which name
    /// the snapshot). The one copy of a RocksDB transfer: from RocksDB's
    /// pinned block or memtable entry into the piece the plan sends.
    fn read(&self, db: &DB, options: &ReadOptions, offset: u64, max: usize) -> Result<Bytes> {
        let family = cf(db, CF_BATCHES)?;
        let mut index = self.batches.partition_point(|b| b.start + b.len <= offset);
        let mut out = BytesMut::with_capacity(max);
        while out.len() < max && index < self.batches.len() {
            let batch = &self.batches[index];
            let skip = (offset + out.len() as u64 - batch.start) as usize;
            let take = (batch.len as usize - skip).min(max - out.len());
            let value = db
                .get_pinned_cf_opt(family, batch_key(self.shard, batch.base_offset), options)
                .map_err(|e| db_error("reading a planned batch", e))?;
            match value.as_deref() {
                Some(v) if v.len() as u64 == batch.len => {
                    out.extend_from_slice(&v[skip..skip + take])
                }
                _ => return Err(self.missing(batch)),
            }
            index += 1;
        }
        Ok(out.freeze())
    }

    fn missing(&self, batch: &PlannedBatch) -> Error {
        Error::corruption(format!(
            "RocksDB's snapshot holds no batch of {} bytes at offset {} of shard id {}, \
             which the plan lists",
            batch.len, batch.base_offset, self.shard
        ))
    }
}

impl ChunkFetcher for PlanSource {
    fn fetch(&self, offset: u64, max: usize) -> Result<Bytes> {
        if let Some(bytes) = self.detached_range(offset, max) {
            return Ok(bytes);
        }
        let db = match self.db.get() {
            Ok(db) => db,
            // Closed since the check above: detached by the close.
            Err(e) => return self.detached_range(offset, max).ok_or(e),
        };
        let mut options = ReadOptions::default();
        {
            let live = self.db.plans.live.lock();
            // Removed only by the close (which waits for `db`, held here)
            // and by this plan's drop.
            let (snapshot, _) = live.get(&self.id).ok_or(Error::Closed)?;
            options.set_snapshot(snapshot);
        }
        self.read(&db, &options, offset, max)
    }
}

impl Drop for PlanSource {
    fn drop(&mut self) {
        // Under the read lock: the database cannot go while the snapshot
        // is released (after a close, the snapshot is gone already).
        let _open = self.db.db.read_recursive();
        let snapshot = self.db.plans.live.lock().remove(&self.id);
        drop(snapshot);
    }
}
