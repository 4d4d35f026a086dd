//! `S3Db`: the S3 engine's `Database`. Commits change the shards' states
//! in memory (`shard::State`); a flush stores a shard's next write: its
//! new and rewritten objects first, then its manifest with a conditional
//! PUT. Batches are acknowledged by durability mode (see the module
//! above); a background flusher uploads what `os` and `none` shards
//! leave waiting.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use object_store::path::Path;
use object_store::PutPayload;
use parking_lot::{Condvar, Mutex, RwLock};

use super::cache::{BlockCache, BlockKey};
use super::client::{Client, Mode, Put};
use super::manifest::{Manifest, ObjectRef};
use super::object;
use super::plan::{self, Located, Pins};
use super::shard::{Loc, Place, Plan, State, Stored};
use crate::config::{Durability, EngineKind, S3Config};
use crate::engine::database::{BatchReader, Change, Database, Entry, Found, PlannedBatch};
use crate::io::TransferChunk;
use crate::log::{self, Level};
use crate::{Error, Result};

/// A shard found at open: its id, manifest and the manifest as stored.
type LoadedShard = (u64, Manifest, Stored);

/// Where the store's objects are: `<prefix>/shards/<id>/manifest` and
/// `<prefix>/shards/<id>/<seq, 20 digits>.obj`.
pub struct Layout {
    pub prefix: String,
}

impl Layout {
    fn shards(&self) -> Path {
        Path::from(format!("{}/shards", self.prefix))
    }

    fn dir(&self, shard: u64) -> Path {
        Path::from(format!("{}/shards/{shard}", self.prefix))
    }

    pub fn manifest(&self, shard: u64) -> Path {
        Path::from(format!("{}/shards/{shard}/manifest", self.prefix))
    }

    pub fn object(&self, shard: u64, seq: u64) -> Path {
        Path::from(format!("{}/shards/{shard}/{seq:020}.obj", self.prefix))
    }

    /// The shard id and object seq a listed path names (`None` for a
    /// manifest or anything else).
    fn parse_object(&self, path: &Path) -> Option<(u64, u64)> {
        let mut parts = path.as_ref().rsplit('/');
        let seq = parts.next()?.strip_suffix(".obj")?.parse().ok()?;
        let shard = parts.next()?.parse().ok()?;
        Some((shard, seq))
    }
}

/// The sizes and times the engine works with.
pub struct Settings {
    pub object_bytes: u64,
    pub block_bytes: u64,
    pub readahead_blocks: u64,
    pub flush_interval: Duration,
    pub buffer_bytes: u64,
}

impl Settings {
    pub fn of(config: &S3Config) -> Settings {
        Settings {
            object_bytes: config.object_bytes,
            block_bytes: config.block_bytes,
            readahead_blocks: config.readahead_blocks as u64,
            flush_interval: Duration::from_millis(config.flush_interval_ms),
            buffer_bytes: config.buffer_bytes,
        }
    }
}

/// One shard: its state, and the lock that lets one write of it run at a
/// time (appends go on meanwhile, under `state`).
pub struct ShardSlot {
    id: u64,
    writing: Mutex<()>,
    state: Mutex<State>,
}

/// Wakes the background flusher, and stops it.
#[derive(Default)]
struct Wake {
    stop: Mutex<bool>,
    signal: Condvar,
}

#[derive(Default)]
struct Counters {
    objects_written: AtomicU64,
    objects_rewritten: AtomicU64,
    /// Objects made of merged small ones.
    objects_merged: AtomicU64,
    manifests_written: AtomicU64,
    flush_failures: AtomicU64,
    unresolved_writes: AtomicU64,
    backpressure_flushes: AtomicU64,
}

/// Blocks being read ahead in the background.
#[derive(Default)]
struct ReadAhead {
    fetching: Mutex<HashSet<BlockKey>>,
    /// Signalled when a read-ahead ends.
    ended: Condvar,
}

impl ReadAhead {
    /// Waits while any of `keys` is being read ahead: the read that needs
    /// it then finds it cached (or fetches it itself if that failed).
    fn wait_for(&self, keys: impl Iterator<Item = BlockKey> + Clone) {
        let mut fetching = self.fetching.lock();
        while keys.clone().any(|key| fetching.contains(&key)) {
            self.ended.wait(&mut fetching);
        }
    }
}

pub(crate) struct S3Db {
    /// Itself, for the transfer plans it makes (they fetch their bytes
    /// later, possibly after a close).
    me: Weak<S3Db>,
    client: Client,
    layout: Layout,
    settings: Settings,
    shards: RwLock<HashMap<u64, Arc<ShardSlot>>>,
    cache: Arc<BlockCache>,
    read_ahead: Arc<ReadAhead>,
    /// Objects transfer plans list: deleted only once no plan does.
    pub(super) pins: Pins,
    /// Ticket of a pipelined commit not yet stored → its shard.
    tickets: Mutex<HashMap<u64, u64>>,
    next_ticket: AtomicU64,
    /// Bytes of batches waiting for upload, all shards together.
    buffered: AtomicU64,
    read_only: bool,
    closed: AtomicBool,
    wake: Arc<Wake>,
    flusher: Mutex<Option<JoinHandle<()>>>,
    counters: Counters,
}

impl S3Db {
    pub fn new(client: Client, layout: Layout, config: &S3Config, read_only: bool) -> Arc<S3Db> {
        Arc::new_cyclic(|me| S3Db {
            me: me.clone(),
            client,
            layout,
            settings: Settings::of(config),
            shards: RwLock::new(HashMap::new()),
            cache: Arc::new(BlockCache::new(config.cache_bytes)),
            read_ahead: Arc::default(),
            pins: Pins::default(),
            tickets: Mutex::new(HashMap::new()),
            next_ticket: AtomicU64::new(1),
            buffered: AtomicU64::new(0),
            read_only,
            closed: AtomicBool::new(false),
            wake: Arc::default(),
            flusher: Mutex::new(None),
            counters: Counters::default(),
        })
    }

    /// Starts the thread that uploads what `os` and `none` shards leave
    /// waiting (after `flush_interval`, or once an object's worth waits).
    pub fn start_flusher(self: &Arc<Self>) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        let (db, wake) = (Arc::downgrade(self), self.wake.clone());
        let tick = (self.settings.flush_interval / 4)
            .clamp(Duration::from_millis(1), Duration::from_millis(250));
        let handle = crate::thread::spawn("mqs-s3-flush", move || flusher(db, wake, tick))?;
        *self.flusher.lock() = Some(handle);
        Ok(())
    }

    fn check_open(&self) -> Result<()> {
        match self.closed.load(Ordering::Acquire) {
            true => Err(Error::Closed),
            false => Ok(()),
        }
    }

    fn slot(&self, shard: u64) -> Option<Arc<ShardSlot>> {
        self.shards.read().get(&shard).cloned()
    }

    fn slots(&self) -> Vec<Arc<ShardSlot>> {
        self.shards.read().values().cloned().collect()
    }

    /// The shard's slot, and whether this call created it (a catalogue
    /// entry of an unknown shard does).
    fn slot_for(&self, shard: u64, changes: &[Change]) -> Result<(Arc<ShardSlot>, bool)> {
        if let Some(slot) = self.slot(shard) {
            return Ok((slot, false));
        }
        let meta = changes.iter().find_map(|c| match c {
            Change::PutShard { meta, .. } => Some(meta.clone()),
            _ => None,
        });
        let meta = meta.ok_or_else(|| {
            Error::Internal(format!(
                "a write to shard id {shard}, which the S3 engine does not hold"
            ))
        })?;
        let slot = Arc::new(ShardSlot {
            id: shard,
            writing: Mutex::new(()),
            state: Mutex::new(State::new(Manifest::new(meta), None)),
        });
        Ok((
            self.shards.write().entry(shard).or_insert(slot).clone(),
            true,
        ))
    }

    /// Forgets shards a failed commit was creating: the caller was told
    /// they do not exist. Their manifests are deleted if the store can be
    /// reached; one left behind (the store being down) makes the shard
    /// appear at the next open, unless the name was created again since
    /// (`load_all` keeps the newest shard of a name).
    fn forget_created(&self, created: &[Arc<ShardSlot>]) {
        for slot in created {
            let pending = {
                let mut state = slot.state.lock();
                state.unresolved = None;
                state.pending.clear();
                std::mem::take(&mut state.pending_bytes)
            };
            self.account(pending, 0);
            self.shards.write().remove(&slot.id);
            self.tickets.lock().retain(|_, shard| *shard != slot.id);
            let _ = self.client.delete(vec![self.layout.manifest(slot.id)]);
        }
    }

    /// Applies one shard's changes and stores them as `durability` asks.
    fn commit_shard(
        &self,
        slot: &ShardSlot,
        changes: Vec<Change>,
        durability: Durability,
        pipelined: bool,
        ticket: u64,
    ) -> Result<()> {
        let store_now = self.apply(slot, changes, ticket)?;
        let full = slot.state.lock().pending_bytes >= self.settings.object_bytes;
        if store_now || (durability == Durability::Fsync && !pipelined) {
            self.flush(slot)?;
        } else if self.buffered.load(Ordering::Acquire) > self.settings.buffer_bytes {
            self.counters
                .backpressure_flushes
                .fetch_add(1, Ordering::Relaxed);
            self.flush(slot)?;
        } else if full {
            self.wake.signal.notify_one();
        }
        Ok(())
    }

    /// Applies one shard's changes; returns whether they must be stored
    /// before the commit returns, whatever the durability (anything but
    /// appended batches: deletes, catalogue entries, group offsets).
    fn apply(&self, slot: &ShardSlot, changes: Vec<Change>, ticket: u64) -> Result<bool> {
        let mut state = slot.state.lock();
        if let Some(why) = &state.fenced {
            return Err(Error::Locked(why.clone()));
        }
        let before = state.pending_bytes;
        let mut store_now = false;
        for change in changes {
            store_now |= !matches!(change, Change::PutBatch { .. });
            state.apply(change, ticket);
        }
        let after = state.pending_bytes;
        drop(state);
        self.account(before, after);
        if ticket != 0 {
            self.tickets.lock().insert(ticket, slot.id);
        }
        Ok(store_now)
    }

    fn account(&self, before: u64, after: u64) {
        if after >= before {
            self.buffered.fetch_add(after - before, Ordering::AcqRel);
        } else {
            self.buffered.fetch_sub(before - after, Ordering::AcqRel);
        }
    }

    /// Stores the shard's next write (and first whatever an earlier write
    /// left unresolved), then deletes what its manifest no longer lists.
    fn flush(&self, slot: &ShardSlot) -> Result<()> {
        self.write(slot, false)
    }

    /// `flush`, merging one run of small objects too when `merge`: only
    /// the background flusher merges, so that no append waits for it.
    fn write(&self, slot: &ShardSlot, merge: bool) -> Result<()> {
        let _writing = slot.writing.lock();
        self.resolve(slot)?;
        let plan = {
            let mut state = slot.state.lock();
            if let Some(why) = &state.fenced {
                return Err(Error::Locked(why.clone()));
            }
            if state.removed {
                drop(state);
                return self.remove(slot);
            }
            let object_bytes = self.settings.object_bytes;
            let merge = merge && state.merge_due(object_bytes);
            if !state.has_work() && !merge {
                return Ok(());
            }
            let before = state.pending_bytes;
            let plan = state.take_plan(merge.then_some(object_bytes));
            drop(state);
            self.account(before, 0);
            plan
        };
        match self.store(slot, &plan) {
            Ok(stored) => {
                self.installed(slot, plan, stored);
                Ok(())
            }
            Err(Failure::NotStored(e)) => {
                self.counters.flush_failures.fetch_add(1, Ordering::Relaxed);
                self.put_back(slot, plan);
                Err(e)
            }
            Err(Failure::Unknown(e)) => {
                self.counters
                    .unresolved_writes
                    .fetch_add(1, Ordering::Relaxed);
                slot.state.lock().unresolved = Some(plan);
                Err(e)
            }
            Err(Failure::Fenced(e)) => {
                let why = e.to_string();
                slot.state.lock().fenced = Some(why);
                self.put_back(slot, plan);
                Err(e)
            }
        }
    }

    fn put_back(&self, slot: &ShardSlot, plan: Plan) {
        let mut state = slot.state.lock();
        let before = state.pending_bytes;
        state.restore(plan);
        let after = state.pending_bytes;
        drop(state);
        self.account(before, after);
    }

    fn installed(&self, slot: &ShardSlot, plan: Plan, stored: Stored) {
        slot.state.lock().install(&plan, stored);
        {
            let mut tickets = self.tickets.lock();
            for ticket in plan.tickets() {
                tickets.remove(&ticket);
            }
        }
        let garbage = plan.garbage.iter().map(|&seq| (slot.id, seq)).collect();
        self.delete_objects(self.pins.deletable(garbage));
    }

    /// Deletes objects no manifest lists; one left behind (an error, a
    /// crash) is deleted at the next open.
    fn delete_objects(&self, objects: Vec<plan::ObjectId>) {
        let paths = objects
            .into_iter()
            .map(|(shard, seq)| self.layout.object(shard, seq))
            .collect();
        if let Err(e) = self.client.delete(paths) {
            log::emit(
                Level::Warn,
                &format!("s3: deleting objects no longer listed: {e}"),
            );
        }
    }

    /// Learns whether a write whose answer was lost was applied, from the
    /// manifest stored now.
    fn resolve(&self, slot: &ShardSlot) -> Result<()> {
        let Some(plan) = slot.state.lock().unresolved.take() else {
            return Ok(());
        };
        let before = slot.state.lock().stored.clone();
        match self.check_stored(slot.id, &plan, before.as_ref()) {
            Ok(Some(stored)) => {
                self.installed(slot, plan, stored);
                Ok(())
            }
            Ok(None) => {
                self.put_back(slot, plan);
                Ok(())
            }
            Err(Failure::Unknown(e)) => {
                slot.state.lock().unresolved = Some(plan);
                Err(e)
            }
            Err(Failure::Fenced(e) | Failure::NotStored(e)) => {
                slot.state.lock().fenced = Some(e.to_string());
                self.put_back(slot, plan);
                Err(e)
            }
        }
    }

    /// Uploads the plan's objects, then its manifest.
    fn store(&self, slot: &ShardSlot, plan: &Plan) -> std::result::Result<Stored, Failure> {
        let shard = slot.id;
        for rewrite in &plan.rewrites {
            let mut parts = Vec::with_capacity(rewrite.kept.len());
            // The kept batches of one old object are neighbours.
            for run in rewrite.kept.chunk_by(|a, b| a.2 == b.2) {
                let ranges = run
                    .iter()
                    .map(|(_, meta, _, pos)| *pos..*pos + meta.len as u64)
                    .collect();
                let object = self.layout.object(shard, run[0].2);
                let fetched = self
                    .client
                    .get_ranges(&object, ranges)
                    .map_err(Failure::NotStored)?;
                parts.extend(fetched);
            }
            self.upload(shard, &rewrite.new, parts, plan)?;
            let counter = match rewrite.stale {
                true => &self.counters.objects_rewritten,
                false => &self.counters.objects_merged,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        if let Some((object, batches)) = &plan.fresh {
            let parts = batches.iter().map(|b| b.bytes.clone()).collect();
            self.upload(shard, object, parts, plan)?;
            self.counters
                .objects_written
                .fetch_add(1, Ordering::Relaxed);
        }
        let before = slot.state.lock().stored.clone();
        let mode = match &before {
            Some(stored) => Mode::Update(stored.e_tag.clone()),
            None => Mode::Create,
        };
        let path = self.layout.manifest(shard);
        let payload = PutPayload::from_bytes(plan.manifest_bytes.clone());
        match self.client.put(&path, payload, mode) {
            Ok(Put::Stored(e_tag)) => {
                self.counters
                    .manifests_written
                    .fetch_add(1, Ordering::Relaxed);
                Ok(Stored {
                    e_tag,
                    bytes: plan.manifest_bytes.clone(),
                    generation: plan.manifest.generation,
                })
            }
            // A retried PUT whose first try was applied fails its
            // condition: the manifest read back tells.
            Ok(Put::Conflict(message)) => match self.check_stored(shard, plan, before.as_ref())? {
                Some(stored) => Ok(stored),
                None => Err(Failure::NotStored(Error::io(
                    format!("S3 PUT {path} ({})", self.client.place()),
                    std::io::Error::other(format!("the manifest write was not applied: {message}")),
                ))),
            },
            Err(e) => match self.check_stored(shard, plan, before.as_ref()) {
                Ok(Some(stored)) => Ok(stored),
                Ok(None) => Err(Failure::NotStored(e)),
                // The failure the caller hears of is the write's own.
                Err(Failure::Unknown(_)) => Err(Failure::Unknown(e)),
                Err(other) => Err(other),
            },
        }
    }

    fn upload(
        &self,
        shard: u64,
        object: &ObjectRef,
        mut parts: Vec<Bytes>,
        plan: &Plan,
    ) -> std::result::Result<(), Failure> {
        parts.push(plan.footers[&object.seq].clone());
        let path = self.layout.object(shard, object.seq);
        match self
            .client
            .put(&path, parts.into_iter().collect(), Mode::Create)
        {
            Ok(Put::Stored(_)) => Ok(()),
            // Names are never reused: someone else writes this shard.
            Ok(Put::Conflict(message)) => Err(Failure::Fenced(self.fenced(shard, &path, &message))),
            Err(e) => Err(Failure::NotStored(e)),
        }
    }

    fn fenced(&self, shard: u64, path: &Path, message: &str) -> Error {
        Error::Locked(format!(
            "S3 {path} ({}) was changed by another writer ({message}); the store no longer \
             writes shard id {shard}: make sure one store alone uses the prefix, and reopen it",
            self.client.place()
        ))
    }

    /// Reads the manifest stored now: `Some` if it is `plan`'s, `None` if
    /// it is still `before`; anything else was written by someone else.
    fn check_stored(
        &self,
        shard: u64,
        plan: &Plan,
        before: Option<&Stored>,
    ) -> std::result::Result<Option<Stored>, Failure> {
        let path = self.layout.manifest(shard);
        let found = self.client.get(&path).map_err(Failure::Unknown)?;
        match found {
            Some((bytes, e_tag)) if bytes == plan.manifest_bytes => Ok(Some(Stored {
                e_tag,
                bytes,
                generation: plan.manifest.generation,
            })),
            Some((bytes, _)) if before.is_some_and(|b| b.bytes == bytes) => Ok(None),
            None if before.is_none() => Ok(None),
            _ => Err(Failure::Fenced(self.fenced(
                shard,
                &path,
                "its manifest is not the one this store wrote last",
            ))),
        }
    }

    /// Deletes a removed shard: its manifest first (the shard is gone),
    /// then its objects but those a transfer plan still lists, which go
    /// when the last such plan does (any left are deleted at the next
    /// open).
    fn remove(&self, slot: &ShardSlot) -> Result<()> {
        self.client.delete(vec![self.layout.manifest(slot.id)])?;
        self.shards.write().remove(&slot.id);
        self.tickets.lock().retain(|_, shard| *shard != slot.id);
        let before = {
            let mut state = slot.state.lock();
            state.pending.clear();
            std::mem::take(&mut state.pending_bytes)
        };
        self.account(before, 0);
        let (mut objects, mut others) = (Vec::new(), Vec::new());
        for path in self.client.list(&self.layout.dir(slot.id))? {
            match self.layout.parse_object(&path) {
                Some(object) => objects.push(object),
                None => others.push(path),
            }
        }
        let free = self.pins.deletable(objects);
        let paths = free
            .into_iter()
            .map(|(shard, seq)| self.layout.object(shard, seq));
        self.client.delete(paths.chain(others).collect())
    }

    /// Stores every shard's waiting batches and changes.
    fn flush_all(&self) -> Result<()> {
        let mut first_error = None;
        for slot in self.slots() {
            if let Err(e) = self.flush(&slot) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The flusher's round: shards whose batches waited long enough, that
    /// hold an object's worth or whose small objects are due for a merge;
    /// then objects no manifest and no transfer plan lists any more.
    pub(super) fn flush_due(&self) {
        self.delete_objects(self.pins.take_released());
        for slot in self.slots() {
            let due = {
                let state = slot.state.lock();
                let object_bytes = self.settings.object_bytes;
                let full = state.pending_bytes >= object_bytes;
                let old = state
                    .pending_since
                    .is_some_and(|t| t.elapsed() >= self.settings.flush_interval);
                let merge = !self.read_only && state.merge_due(object_bytes);
                (full || old || merge) && state.fenced.is_none()
            };
            if due {
                if let Err(e) = self.write(&slot, true) {
                    log::emit(
                        Level::Warn,
                        &format!(
                            "s3: uploading shard id {}: {e} (tried again later)",
                            slot.id
                        ),
                    );
                }
            }
        }
    }

    /// The bytes `[pos, pos + len)` of object `seq` (`data_len` data
    /// bytes), through the block cache; a miss fetches the blocks needed
    /// and `readahead_blocks` more in one request.
    pub(super) fn read(
        &self,
        shard: u64,
        seq: u64,
        data_len: u64,
        pos: u64,
        len: u64,
    ) -> Result<Bytes> {
        let size = self.settings.block_bytes;
        let (first, last) = (pos / size, (pos + len - 1) / size);
        self.read_ahead
            .wait_for((first..=last).map(|b| (shard, seq, b)));
        let mut blocks: Vec<Option<Bytes>> = (first..=last)
            .map(|b| self.cache.get((shard, seq, b)))
            .collect();
        if blocks.iter().any(Option::is_none) {
            let total = data_len.div_ceil(size);
            let wanted: Vec<u64> = (first..=last)
                .filter(|b| blocks[(b - first) as usize].is_none())
                .chain((last + 1..total).take(self.settings.readahead_blocks as usize))
                .collect();
            let ranges = wanted
                .iter()
                .map(|&b| block_range(b, size, data_len))
                .collect();
            let fetched = self
                .client
                .get_ranges(&self.layout.object(shard, seq), ranges)?;
            for (block, bytes) in wanted.into_iter().zip(fetched) {
                if block <= last {
                    blocks[(block - first) as usize] = Some(bytes.clone());
                }
                self.cache.insert((shard, seq, block), bytes);
            }
        }
        self.start_read_ahead(shard, seq, data_len, last);
        let start = (pos - first * size) as usize;
        if first == last {
            let block = blocks.pop().flatten().expect("fetched");
            return slice(&block, start, len as usize, shard, seq);
        }
        let mut out = BytesMut::with_capacity(len as usize);
        for block in blocks.into_iter().flatten() {
            out.extend_from_slice(&block);
        }
        slice(&out.freeze(), start, len as usize, shard, seq)
    }

    /// Keeps the `readahead_blocks` blocks after `last` of object `seq`
    /// coming: if one of them is neither cached nor on its way, the next
    /// `readahead_blocks` from it are fetched in the background, so that
    /// a sequential reader finds its blocks cached instead of waiting for
    /// a GET per window.
    fn start_read_ahead(&self, shard: u64, seq: u64, data_len: u64, last: u64) {
        let (size, window) = (self.settings.block_bytes, self.settings.readahead_blocks);
        let total = data_len.div_ceil(size);
        let wanted: Vec<u64> = {
            let mut fetching = self.read_ahead.fetching.lock();
            let absent = |b: &u64| {
                let key = (shard, seq, *b);
                !fetching.contains(&key) && !self.cache.contains(key)
            };
            let Some(from) = (last + 1..total).take(window as usize).find(absent) else {
                return;
            };
            let wanted: Vec<u64> = (from..total.min(from + window)).filter(absent).collect();
            fetching.extend(wanted.iter().map(|&b| (shard, seq, b)));
            wanted
        };
        let ranges = wanted
            .iter()
            .map(|&b| block_range(b, size, data_len))
            .collect();
        // The callback holds the cache and the read-ahead state, not the
        // engine: it must never be the one to drop the client's runtime.
        let (cache, read_ahead) = (self.cache.clone(), self.read_ahead.clone());
        let path = self.layout.object(shard, seq);
        self.client
            .get_ranges_in_background(&path, ranges, move |parts| {
                for (block, bytes) in wanted.iter().zip(parts.into_iter().flatten()) {
                    cache.insert((shard, seq, *block), bytes);
                }
                let mut fetching = read_ahead.fetching.lock();
                for block in &wanted {
                    fetching.remove(&(shard, seq, *block));
                }
                read_ahead.ended.notify_all();
            });
    }

    /// Waits until no read-ahead is under way.
    #[cfg(test)]
    pub fn wait_read_ahead(&self) {
        let mut fetching = self.read_ahead.fetching.lock();
        while !fetching.is_empty() {
            self.read_ahead.ended.wait(&mut fetching);
        }
    }

    /// Reads every shard's manifest and its objects' footers.
    fn load_all(&self) -> Result<()> {
        let mut ids = Vec::new();
        for dir in self.client.list_dirs(&self.layout.shards())? {
            if let Some(id) = dir.filename().and_then(|name| name.parse::<u64>().ok()) {
                ids.push(id);
            }
        }
        let mut loaded = Vec::new();
        for id in ids {
            if let Some(shard) = self.load_manifest(id)? {
                loaded.push(shard);
            }
        }
        let loaded = self.newest_of_each_name(loaded)?;
        let mut reads = Vec::new();
        for (id, manifest, _) in &loaded {
            for o in &manifest.objects {
                let footer = o.data_len..o.data_len + o.footer_len;
                reads.push((self.layout.object(*id, o.seq), footer));
            }
        }
        let mut footers = self
            .client
            .get_many("reading object footers", reads)?
            .into_iter();
        let mut slots = Vec::new();
        let mut listed = HashMap::new();
        for (id, manifest, stored) in loaded {
            let mut objects = Vec::new();
            for o in &manifest.objects {
                let bytes = footers.next().expect("one footer per object");
                let name = self.layout.object(id, o.seq).to_string();
                objects.push((o.seq, object::parse_footer(&name, &bytes, o.data_len)?));
            }
            listed.insert(
                id,
                objects
                    .iter()
                    .map(|(seq, _)| *seq)
                    .collect::<HashSet<u64>>(),
            );
            let state = State::found(manifest, stored, &objects);
            slots.push(ShardSlot {
                id,
                writing: Mutex::new(()),
                state: Mutex::new(state),
            });
        }
        // Before the shards are published: the flusher writes (merges)
        // only published shards, and an object it uploads is listed only
        // once its manifest is stored.
        if !self.read_only {
            self.delete_unlisted(&listed)?;
        }
        let mut shards = self.shards.write();
        shards.extend(slots.into_iter().map(|slot| (slot.id, Arc::new(slot))));
        Ok(())
    }

    /// Keeps the newest (largest id) shard of each name: an older one is
    /// a creation that failed (or a removal that did) while its outcome
    /// could not be known, the name having been created again since.
    fn newest_of_each_name(&self, mut loaded: Vec<LoadedShard>) -> Result<Vec<LoadedShard>> {
        loaded.sort_by_key(|(id, ..)| std::cmp::Reverse(*id));
        let mut names = std::collections::HashSet::new();
        let (kept, older): (Vec<_>, Vec<_>) = loaded
            .into_iter()
            .partition(|(_, manifest, _)| names.insert(manifest.meta.name.clone()));
        if !self.read_only {
            let manifests = older
                .iter()
                .map(|(id, ..)| self.layout.manifest(*id))
                .collect();
            self.client.delete(manifests)?;
        }
        Ok(kept.into_iter().rev().collect())
    }

    fn load_manifest(&self, id: u64) -> Result<Option<LoadedShard>> {
        let Some((bytes, e_tag)) = self.client.get(&self.layout.manifest(id))? else {
            return Ok(None);
        };
        let manifest = Manifest::decode(id, &bytes)?;
        let stored = Stored {
            e_tag,
            bytes,
            generation: manifest.generation,
        };
        Ok(Some((id, manifest, stored)))
    }

    /// Deletes objects no manifest lists: uploaded by a write that did not
    /// finish, replaced by a rewrite, or of a removed shard.
    fn delete_unlisted(&self, listed: &HashMap<u64, HashSet<u64>>) -> Result<()> {
        let unlisted = self
            .client
            .list(&self.layout.shards())?
            .into_iter()
            .filter(|path| match self.layout.parse_object(path) {
                Some((shard, seq)) => !listed.get(&shard).is_some_and(|seqs| seqs.contains(&seq)),
                None => false,
            })
            .collect();
        self.client.delete(unlisted)
    }

    fn emit(
        &self,
        slots: &[Arc<ShardSlot>],
        found: &mut dyn FnMut(Found) -> Result<()>,
    ) -> Result<()> {
        for slot in slots {
            let meta = slot.state.lock().manifest.meta.clone();
            found(Found::Shard(slot.id, meta))?;
        }
        for slot in slots {
            let batches: Vec<_> = slot
                .state
                .lock()
                .locs
                .iter()
                .map(|(b, loc)| (*b, loc.meta, loc.keys.clone()))
                .collect();
            for (base, meta, keys) in batches {
                found(Found::Batch(slot.id, base, meta))?;
                if let Some(keys) = keys {
                    found(Found::Keys(slot.id, base, keys))?;
                }
            }
        }
        for slot in slots {
            let groups = slot.state.lock().manifest.groups.clone();
            for (group, offset) in groups {
                found(Found::Group(slot.id, group, offset))?;
            }
        }
        Ok(())
    }
}

/// The bytes of block `block` (of `size` bytes) in an object of
/// `data_len` data bytes.
fn block_range(block: u64, size: u64, data_len: u64) -> std::ops::Range<u64> {
    block * size..((block + 1) * size).min(data_len)
}

fn slice(block: &Bytes, start: usize, len: usize, shard: u64, seq: u64) -> Result<Bytes> {
    if start + len > block.len() {
        return Err(Error::corruption(format!(
            "S3 object {seq} of shard id {shard} is shorter than its footer says"
        )));
    }
    Ok(block.slice(start..start + len))
}

/// How a write failed.
enum Failure {
    /// Nothing of it is in the manifest: its batches wait again.
    NotStored(Error),
    /// Its manifest PUT's outcome is unknown.
    Unknown(Error),
    /// Someone else changed the shard's objects.
    Fenced(Error),
}

impl From<Failure> for Error {
    fn from(failure: Failure) -> Error {
        match failure {
            Failure::NotStored(e) | Failure::Unknown(e) | Failure::Fenced(e) => e,
        }
    }
}

fn flusher(db: Weak<S3Db>, wake: Arc<Wake>, tick: Duration) {
    loop {
        {
            let mut stop = wake.stop.lock();
            if *stop {
                return;
            }
            wake.signal.wait_for(&mut stop, tick);
            if *stop {
                return;
            }
        }
        let Some(db) = db.upgrade() else {
            return;
        };
        db.flush_due();
    }
}

impl Database for S3Db {
    const KIND: EngineKind = EngineKind::S3;

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn commit(&self, changes: Vec<Change>, durability: Durability, pipelined: bool) -> Result<u64> {
        self.check_open()?;
        let mut by_shard: Vec<(u64, Vec<Change>)> = Vec::new();
        for change in changes {
            let shard = change.shard();
            match by_shard.iter_mut().find(|(id, _)| *id == shard) {
                Some((_, list)) => list.push(change),
                None => by_shard.push((shard, vec![change])),
            }
        }
        let waits = durability == Durability::Fsync && pipelined;
        let (mut ticket, mut created) = (0, Vec::new());
        for (shard, changes) in by_shard {
            let mine = match waits {
                true => self.next_ticket.fetch_add(1, Ordering::Relaxed),
                false => 0,
            };
            let outcome = self.slot_for(shard, &changes).and_then(|(slot, new)| {
                if new {
                    created.push(slot.clone());
                }
                self.commit_shard(&slot, changes, durability, pipelined, mine)
            });
            if let Err(e) = outcome {
                self.forget_created(&created);
                return Err(e);
            }
            ticket = ticket.max(mine);
        }
        Ok(ticket)
    }

    fn wait_synced(&self, ticket: u64) -> Result<()> {
        let Some(shard) = self.tickets.lock().get(&ticket).copied() else {
            return Ok(());
        };
        let Some(slot) = self.slot(shard) else {
            return Ok(());
        };
        self.flush(&slot)?;
        match self.tickets.lock().contains_key(&ticket) {
            // A write that began before the ticket's commit was running.
            true => self.flush(&slot),
            false => Ok(()),
        }
    }

    fn sync(&self) -> Result<()> {
        self.check_open()?;
        self.flush_all()
    }

    fn sync_shard(&self, shard: u64) -> Result<()> {
        self.check_open()?;
        match self.slot(shard) {
            Some(slot) => self.flush(&slot),
            None => Ok(()),
        }
    }

    fn with_reader<R>(
        &self,
        shard: u64,
        _from: Option<i64>,
        f: impl FnOnce(&mut dyn BatchReader) -> R,
    ) -> Result<R> {
        self.check_open()?;
        let slot = self
            .slot(shard)
            .ok_or_else(|| Error::corruption(format!("S3 holds no shard id {shard}")))?;
        Ok(f(&mut Reader { db: self, slot }))
    }

    /// A lazy chunk: the plan fetches the batches as it sends them.
    fn plan(&self, shard: u64, batches: &[(&Entry, PlannedBatch)]) -> Result<TransferChunk> {
        self.check_open()?;
        let (slot, db) = match (self.slot(shard), self.me.upgrade()) {
            (Some(slot), Some(db)) => (slot, db),
            _ => return Err(Error::corruption(format!("S3 holds no shard id {shard}"))),
        };
        let state = slot.state.lock();
        let located = batches
            .iter()
            .map(|(entry, batch)| {
                let (loc, data_len) = state
                    .place_of(entry.base_offset)
                    .ok_or_else(|| missing(entry.base_offset, shard))?;
                Ok(Located {
                    batch: *batch,
                    place: loc.place,
                    data_len,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(plan::chunk(db, shard, located))
    }

    fn load(&self, found: &mut dyn FnMut(Found) -> Result<()>) -> Result<()> {
        self.check_open()?;
        self.load_all()?;
        let mut slots = self.slots();
        slots.sort_by_key(|slot| slot.id);
        self.emit(&slots, found)
    }

    /// The shard as the engine holds it: stored, and waiting for upload.
    fn load_shard(&self, shard: u64, found: &mut dyn FnMut(Found) -> Result<()>) -> Result<()> {
        self.check_open()?;
        let Some(slot) = self.slot(shard) else {
            return Ok(());
        };
        if let Some(why) = &slot.state.lock().fenced {
            return Err(Error::Locked(why.clone()));
        }
        self.emit(&[slot], found)
    }

    fn stats(&self) -> Result<serde_json::Value> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let c = &self.counters;
        Ok(serde_json::json!({
            "place": self.client.place(),
            "prefix": self.layout.prefix,
            "shards": self.shards.read().len(),
            "buffered_bytes": self.buffered.load(Ordering::Relaxed),
            "objects_written": get(&c.objects_written),
            "objects_rewritten": get(&c.objects_rewritten),
            "objects_merged": get(&c.objects_merged),
            "manifests_written": get(&c.manifests_written),
            "flush_failures": get(&c.flush_failures),
            "unresolved_writes": get(&c.unresolved_writes),
            "backpressure_flushes": get(&c.backpressure_flushes),
            "requests": self.client.counters.to_json(),
            "cache": self.cache.to_json(),
        }))
    }

    fn close(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Ok(());
        }
        *self.wake.stop.lock() = true;
        self.wake.signal.notify_all();
        if let Some(handle) = self.flusher.lock().take() {
            let _ = handle.join();
        }
        let flushed = if self.read_only {
            Ok(())
        } else {
            self.flush_all()
        };
        self.closed.store(true, Ordering::Release);
        flushed
    }
}

/// Reads one call's batches: from memory while they wait for upload,
/// else through the block cache.
struct Reader<'a> {
    db: &'a S3Db,
    slot: Arc<ShardSlot>,
}

impl BatchReader for Reader<'_> {
    fn batch(&mut self, entry: &Entry) -> Result<Bytes> {
        match self.try_batch(entry) {
            // A rewrite may have replaced (and deleted) the object the
            // batch was in since it was looked up: look again.
            Err(e) if matches!(&e, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound) => {
                self.try_batch(entry)
            }
            other => other,
        }
    }
}

impl Reader<'_> {
    fn try_batch(&mut self, entry: &Entry) -> Result<Bytes> {
        let shard = self.slot.id;
        let found = self.slot.state.lock().place_of(entry.base_offset);
        match found.ok_or_else(|| missing(entry.base_offset, shard))? {
            (
                Loc {
                    place: Place::Memory(bytes),
                    ..
                },
                _,
            ) => Ok(bytes),
            (
                Loc {
                    meta,
                    place: Place::Object { seq, pos },
                    ..
                },
                data_len,
            ) => self.db.read(shard, seq, data_len, pos, meta.len as u64),
        }
    }
}

fn missing(base_offset: i64, shard: u64) -> Error {
    Error::corruption(format!(
        "S3 holds no batch at offset {base_offset} of shard id {shard}, which its index lists"
    ))
}
