//! One file shard: its directory of segments, the in-memory summary of
//! them, and the active segment's writer.
//!
//! Locks, always taken in this order: `state` (RwLock: reads share it,
//! appends and deletes hold it exclusively), then `writer` (the active
//! file, its buffer), then the engine's map cache. `sync` (the fdatasync
//! gate) is taken with no other lock of the shard held, and takes `writer`
//! briefly. Other shards' writers are only ever `try_lock`ed (fd eviction),
//! so no two shards wait for each other.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use memmap2::Mmap;
use parking_lot::{Mutex, RwLock};

use super::cache;
use super::groups::GroupLog;
use super::segment::{self, BatchInfo, SegmentMeta};
use super::Shared;
use crate::config::{Durability, EngineKind, FlushPolicy, ShardOptions};
use crate::engine::index::{Held, RetentionRule};
use crate::engine::scan::{self, ScanBatch};
use crate::engine::{
    NewBatch, ReadLimits, ReadResult, Shard, ShardInfo, TIMESTAMP_EARLIEST, TIMESTAMP_LATEST,
};
use crate::format;
use crate::io::fs;
use crate::io::{create_new, TransferChunk, TransferPlan};
use crate::record::RecordView;
use crate::time::now_ms;
use crate::{Error, Result};

/// Name of the per-shard metadata file.
pub const META_FILE: &str = "meta.json";

/// What survives in `meta.json`: the shard's identity and the watermarks
/// its segments cannot tell (a low watermark moved by a delete, a next
/// offset whose batch a delete removed).
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Meta {
    pub name: String,
    /// The shard's options as `[shard]` TOML keys.
    pub options: String,
    pub low: i64,
    pub next: i64,
}

/// Replaces `meta.json` atomically (`io::fs::replace_file`); `durable`
/// adds the directory fsync that makes the new one survive a power loss.
pub fn write_meta(dir: &Path, meta: &Meta, durable: bool) -> Result<()> {
    let json = serde_json::to_vec(meta).map_err(|e| Error::Internal(e.to_string()))?;
    fs::replace_file(dir, META_FILE, &json, durable)
}

/// The shard's segments and watermarks.
pub struct State {
    pub segments: VecDeque<SegmentMeta>,
    pub low: i64,
    pub next_offset: i64,
    /// Position in the first segment of its first live batch: batches
    /// before it are below the low watermark (retention drops whole batches
    /// logically; the file goes once all of it is dead).
    pub front_pos: u64,
    /// Batches, records and bytes before `front_pos` (not counted as stored).
    pub front: (u64, u64, u64),
}

impl State {
    pub fn new(segments: VecDeque<SegmentMeta>, low: i64, next_offset: i64) -> State {
        State {
            segments,
            low,
            next_offset,
            front_pos: 0,
            front: (0, 0, 0),
        }
    }

    fn live(&self) -> Held {
        let (b, r, y) = self.segments.iter().fold((0, 0, 0), |acc, s| {
            (acc.0 + s.batches, acc.1 + s.records, acc.2 + s.size)
        });
        Held {
            batches: b - self.front.0,
            records: r - self.front.1,
            bytes: y - self.front.2,
        }
    }

    fn recompute_running_max(&mut self) {
        let mut max = i64::MIN;
        for s in self.segments.iter_mut() {
            max = max.max(s.max_timestamp);
            s.running_max_timestamp = max;
        }
    }

    /// Where the batch holding `offset` (or the next one) starts.
    fn locate(&self, offset: i64) -> (usize, u64) {
        let i = self.segments.partition_point(|s| s.next <= offset);
        if i >= self.segments.len() {
            return (i, 0);
        }
        let pos = self.segments[i].position_for(offset);
        if i == 0 {
            (0, pos.max(self.front_pos))
        } else {
            (i, pos)
        }
    }

    fn check_range(&self, shard: &str, offset: i64) -> Result<()> {
        scan::check_range(shard, offset, self.low, self.next_offset)
    }
}

/// What a rewrite does with one batch: `None` keeps it, `Some(Some(b))`
/// replaces it by `b`, `Some(None)` empties it.
type Change<'a> = dyn FnMut(&BatchInfo, &Bytes) -> Result<Option<Option<Bytes>>> + 'a;

/// The active segment's file handle and append buffer.
#[derive(Default)]
pub struct Writer {
    /// Closed when idle shards' descriptors were reclaimed (reopened on use).
    pub file: Option<Arc<File>>,
    /// Base of the segment `file` is (or would be) open on.
    pub base: i64,
    /// Bytes of the segment on file (the rest of its size is in `buf`).
    pub written: u64,
    /// Blocks reserved with fallocate up to here.
    pub reserved: u64,
    /// Appends not yet written (durability `none` only).
    pub buf: Vec<u8>,
    /// Appends accepted so far; `sync` records how many are durable.
    pub seq: u64,
    /// Written since the last fdatasync.
    pub dirty: bool,
    /// Length of the active segment its index files on disk describe (a
    /// clean close need not rewrite them when nothing was appended since).
    pub indexed: Option<u64>,
}

pub struct FileShard {
    pub id: u64,
    name: String,
    options: ShardOptions,
    pub dir: PathBuf,
    shared: Arc<Shared>,
    /// Segment size at which the active segment rolls.
    capacity: u64,
    pub state: RwLock<State>,
    pub writer: Mutex<Writer>,
    /// Highest append sequence number known to be fdatasynced.
    sync: Mutex<u64>,
    deleted: AtomicBool,
    /// Set by close under the state's write lock: no append or delete
    /// starts after it, so none can write after close's final flush.
    closed: AtomicBool,
    poisoned: Mutex<Option<String>>,
    pub last_used: AtomicU64,
    appended_records: AtomicU64,
    appended_bytes: AtomicU64,
    read_records: AtomicU64,
    rolls: AtomicU64,
    rewrites: AtomicU64,
    /// Consumer-group offsets of the shard (`groups.log`).
    groups: Mutex<GroupLog>,
    /// Run by an append between writing its batch and its fdatasync, so a
    /// test can hold it there.
    #[cfg(test)]
    pub(super) before_sync: Mutex<Option<Box<dyn Fn() + Send + Sync>>>,
}

/// Walks stored batches from a position on, mapping segments as it goes.
/// A failure (mapping, a damaged header) ends the walk and is kept in
/// `error` for the caller to return.
struct Batches<'a> {
    shard: &'a FileShard,
    state: &'a State,
    seg: usize,
    pos: u64,
    /// Batches whose last offset is below this are skipped unread.
    min_last: i64,
    map: Option<Arc<Mmap>>,
    error: Option<Error>,
}

impl Iterator for Batches<'_> {
    type Item = (BatchInfo, Bytes, usize);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let seg = self.state.segments.get(self.seg)?;
            if self.pos >= seg.size {
                self.seg += 1;
                self.pos = 0;
                self.map = None;
                continue;
            }
            if self.map.is_none() {
                match self.shard.map_segment(self.state, self.seg) {
                    Ok(map) => self.map = Some(map),
                    Err(e) => {
                        self.error = Some(e);
                        return None;
                    }
                }
            }
            let map = self.map.as_ref().expect("mapped above");
            let info = match segment::batch_at(&map[..seg.size as usize], self.pos) {
                Ok(info) => info,
                Err(e) => {
                    self.error = Some(Error::corruption(format!(
                        "file shard '{}', segment {}: {e}",
                        self.shard.name,
                        segment::log_name(seg.base)
                    )));
                    return None;
                }
            };
            self.pos = info.end();
            if info.last_offset < self.min_last {
                continue;
            }
            return Some((info, cache::slice(map, info.pos, info.len), self.seg));
        }
    }
}

fn scan_batch(item: (BatchInfo, Bytes, usize)) -> ScanBatch {
    ScanBatch {
        bytes: item.1,
        last_offset: item.0.last_offset,
        max_timestamp: item.0.max_timestamp,
    }
}

impl FileShard {
    pub(crate) fn new(
        id: u64,
        name: &str,
        options: ShardOptions,
        dir: PathBuf,
        shared: Arc<Shared>,
        state: State,
        writer: Writer,
    ) -> FileShard {
        let capacity = shared.segment_capacity(options.segment_bytes);
        FileShard {
            groups: Mutex::new(GroupLog::empty(&dir)),
            id,
            name: name.to_string(),
            options,
            dir,
            shared,
            capacity,
            state: RwLock::new(state),
            writer: Mutex::new(writer),
            sync: Mutex::new(0),
            deleted: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            poisoned: Mutex::new(None),
            last_used: AtomicU64::new(0),
            appended_records: AtomicU64::new(0),
            appended_bytes: AtomicU64::new(0),
            read_records: AtomicU64::new(0),
            rolls: AtomicU64::new(0),
            rewrites: AtomicU64::new(0),
            #[cfg(test)]
            before_sync: Mutex::new(None),
        }
    }

    /// The shard with the group offsets its directory holds.
    pub(crate) fn with_groups(self, groups: GroupLog) -> FileShard {
        *self.groups.lock() = groups;
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn options(&self) -> &ShardOptions {
        &self.options
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    fn log_path(&self, base: i64) -> PathBuf {
        self.dir.join(segment::log_name(base))
    }

    /// Whether the shard may still change: appends and deletes check it
    /// again under the state's write lock, where close cannot interleave.
    fn check_live(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        if self.deleted.load(Ordering::Acquire) {
            return Err(Error::ShardNotFound(self.name.clone()));
        }
        if let Some(reason) = self.poisoned.lock().as_ref() {
            return Err(Error::Poisoned(format!(
                "file shard '{}': {reason}",
                self.name
            )));
        }
        Ok(())
    }

    /// A failed write or fdatasync leaves the file in an unknown state (and
    /// the kernel may have dropped the dirty pages): later appends fail
    /// rather than build on it or report a retried fsync as success.
    fn poison<T>(&self, error: Error) -> Result<T> {
        let mut poisoned = self.poisoned.lock();
        if poisoned.is_none() {
            crate::log::emit(
                crate::log::Level::Error,
                &format!(
                    "file engine: shard '{}' poisoned, its appends fail until it is reopened: {error}",
                    self.name
                ),
            );
            *poisoned = Some(error.to_string());
        }
        Err(error)
    }

    fn touch(&self) {
        self.last_used.store(
            self.shared.tick.fetch_add(1, Ordering::Relaxed),
            Ordering::Relaxed,
        );
    }

    /// The active file, opened (and registered against the descriptor
    /// budget) if idle shards' descriptors were reclaimed.
    fn file(&self, w: &mut Writer) -> Result<Arc<File>> {
        if let Some(file) = &w.file {
            return Ok(file.clone());
        }
        let path = self.log_path(w.base);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(format!("opening '{}'", path.display()), e))?;
        let file = Arc::new(file);
        if w.reserved < self.capacity {
            segment::preallocate(&file, w.written, self.capacity);
            w.reserved = self.capacity;
        }
        w.file = Some(file.clone());
        self.shared.opened(self.id);
        Ok(file)
    }

    /// Hands buffered appends to the kernel.
    fn flush_buf(&self, w: &mut Writer) -> Result<()> {
        if w.buf.is_empty() {
            return Ok(());
        }
        let file = self.file(w)?;
        if let Err(e) = fs::write_at(&file, &w.buf, w.written) {
            let path = self.log_path(w.base);
            return self.poison(Error::io(format!("writing '{}'", path.display()), e));
        }
        let len = w.buf.len() as u64;
        w.written += len;
        w.dirty = true;
        self.shared.buffered.fetch_sub(len, Ordering::Relaxed);
        self.shared.writes.fetch_add(1, Ordering::Relaxed);
        self.shared.bytes_written.fetch_add(len, Ordering::Relaxed);
        // Idle shards hold no buffer.
        w.buf = Vec::new();
        Ok(())
    }

    fn write_through(&self, w: &mut Writer, bytes: &[u8]) -> Result<()> {
        self.flush_buf(w)?;
        let file = self.file(w)?;
        if let Err(e) = fs::write_at(&file, bytes, w.written) {
            let path = self.log_path(w.base);
            return self.poison(Error::io(format!("writing '{}'", path.display()), e));
        }
        w.written += bytes.len() as u64;
        w.dirty = true;
        self.shared.writes.fetch_add(1, Ordering::Relaxed);
        self.shared
            .bytes_written
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn sync_file(&self, file: &File) -> Result<()> {
        self.shared.syncs.fetch_add(1, Ordering::Relaxed);
        match fs::sync_data(file) {
            Ok(()) => Ok(()),
            Err(e) => self.poison(Error::io(
                format!("fdatasync in '{}'", self.dir.display()),
                e,
            )),
        }
    }

    /// Returns once every append up to sequence number `seq` is on stable
    /// storage. Concurrent callers share one fdatasync: whoever holds the
    /// gate syncs everything written so far, and the others find their
    /// appends already covered.
    fn sync_to(&self, seq: u64) -> Result<()> {
        let mut synced = self.sync.lock();
        if *synced >= seq {
            return Ok(());
        }
        // Not covered: never reopen a closed shard's file, nor retry after
        // a failed fdatasync (the kernel may have dropped the dirty pages,
        // so a second one could report success for lost data).
        self.check_live()?;
        let (file, upto, base, len) = {
            let mut w = self.writer.lock();
            self.flush_buf(&mut w)?;
            let file = self.file(&mut w)?;
            w.dirty = false;
            (file, w.seq, w.base, w.written)
        };
        // Appends before the active segment's were synced when it rolled.
        self.sync_file(&file)?;
        *synced = upto;
        if !self.shared.read_only {
            segment::record_synced(&self.dir, base, len);
        }
        Ok(())
    }

    /// Writes out the buffer and fdatasyncs when anything is unsynced: the
    /// flusher's tick, descriptor reclaim under `interval`, and close.
    pub fn flush(&self, sync: bool) -> Result<()> {
        let mut w = self.writer.lock();
        self.flush_buf(&mut w)?;
        if sync && w.dirty {
            if let Some(file) = w.file.clone() {
                w.dirty = false;
                self.sync_file(&file)?;
            }
        }
        Ok(())
    }

    /// Gives up the active file's descriptor (budget of open files). The
    /// caller holds the writer lock.
    pub fn release_file(&self, w: &mut Writer) -> Result<()> {
        self.flush_buf(w)?;
        if let Some(file) = w.file.take() {
            if w.dirty && self.shared.config.flush != FlushPolicy::Never {
                w.dirty = false;
                self.sync_file(&file)?;
            }
        }
        Ok(())
    }

    /// Clean close: later appends and deletes refused, everything written
    /// and fdatasynced, the active segment's indexes written, its reserved
    /// blocks given back, its descriptor closed.
    pub fn close(&self) -> Result<()> {
        {
            // An append holding the lock has written (or buffered) its
            // batch, which the flush below covers; later ones see `closed`.
            let _state = self.state.write();
            self.closed.store(true, Ordering::Release);
            if self.deleted.load(Ordering::Acquire) || self.shared.read_only {
                return Ok(());
            }
        }
        self.final_sync()?;
        let state = self.state.read();
        let mut w = self.writer.lock();
        let active = state.segments.back().expect("a shard has a segment");
        if w.reserved == 0 && w.indexed == Some(active.size) {
            // Idle since it was opened or last closed: nothing to do, and
            // no descriptor to open for it.
            w.file = None;
            self.shared.closed_file(self.id);
            return Ok(());
        }
        let file = self.file(&mut w)?;
        segment::trim(&file, w.written, w.reserved);
        w.reserved = 0;
        if w.indexed != Some(active.size) {
            active.write_indexes(&self.dir)?;
            w.indexed = Some(active.size);
        }
        w.file = None;
        self.shared.closed_file(self.id);
        Ok(())
    }

    /// Close's flush and fdatasync, at the sync gate: appends that wrote
    /// before close and still wait for their fdatasync find it done (they
    /// never reopen the closed file), and none is reported durable after a
    /// failed fdatasync.
    fn final_sync(&self) -> Result<()> {
        let mut synced = self.sync.lock();
        let mut w = self.writer.lock();
        self.flush_buf(&mut w)?;
        if let Some(reason) = self.poisoned.lock().as_ref() {
            return Err(Error::Poisoned(format!(
                "file shard '{}': {reason}",
                self.name
            )));
        }
        if w.dirty {
            let file = self.file(&mut w)?;
            self.sync_file(&file)?;
            w.dirty = false;
        }
        *synced = w.seq;
        Ok(())
    }

    /// A map of segment `index` covering its written bytes. The caller made
    /// sure buffered appends are on file (`make_readable`).
    fn map_segment(&self, state: &State, index: usize) -> Result<Arc<Mmap>> {
        let seg = &state.segments[index];
        let active = index + 1 == state.segments.len();
        let map_len = if active {
            seg.size.max(self.capacity)
        } else {
            seg.size
        };
        self.shared.cache.get(
            (self.id, seg.base),
            &self.log_path(seg.base),
            seg.size,
            map_len,
        )
    }

    fn make_readable(&self) -> Result<()> {
        let mut w = self.writer.lock();
        self.flush_buf(&mut w)
    }

    fn batches<'a>(&'a self, state: &'a State, seg: usize, pos: u64, min_last: i64) -> Batches<'a> {
        Batches {
            shard: self,
            state,
            seg,
            pos,
            min_last,
            map: None,
            error: None,
        }
    }

    fn batches_from<'a>(&'a self, state: &'a State, offset: i64) -> Batches<'a> {
        let (seg, pos) = state.locate(offset);
        self.batches(state, seg, pos, offset)
    }

    /// The header of the first live batch, if any.
    fn front_batch(&self, state: &State) -> Result<Option<BatchInfo>> {
        let mut walk = self.batches(state, 0, state.front_pos, i64::MIN);
        let first = walk.next();
        match walk.error {
            Some(e) => Err(e),
            None => Ok(first.map(|(info, _, seg)| BatchInfo {
                pos: if seg == 0 { info.pos } else { u64::MAX },
                ..info
            })),
        }
    }

    /// Moves the front past the first live batch, then removes segment
    /// files that hold nothing live any more (never the active one).
    fn drop_front_batch(&self, state: &mut State, batch: &BatchInfo) -> Result<()> {
        while state.front_pos >= state.segments[0].size && state.segments.len() > 1 {
            self.remove_front_segment(state)?;
        }
        debug_assert_eq!(batch.pos, state.front_pos);
        state.front_pos = batch.end();
        state.front.0 += 1;
        state.front.1 += batch.records;
        state.front.2 += batch.len;
        state.low = state.low.max(batch.last_offset + 1);
        while state.front_pos >= state.segments[0].size && state.segments.len() > 1 {
            self.remove_front_segment(state)?;
        }
        Ok(())
    }

    fn remove_front_segment(&self, state: &mut State) -> Result<()> {
        let seg = state.segments.pop_front().expect("more than one segment");
        state.front_pos = 0;
        state.front = (0, 0, 0);
        self.shared.cache.forget((self.id, seg.base));
        if self.shared.read_only {
            return Ok(());
        }
        segment::remove_files(&self.dir, seg.base)?;
        segment::sync_dir(&self.dir)
    }

    /// Drops whole batches from the front while `RetentionRule` says so;
    /// the front batch is read only when the rule needs its timestamp.
    fn enforce_retention(&self, state: &mut State, now: i64) -> Result<()> {
        let Some(rule) = RetentionRule::new(&self.options, now) else {
            return Ok(());
        };
        while rule.may_drop(state.live()) {
            self.make_readable()?;
            let Some(front) = self.front_batch(state)? else {
                return Ok(());
            };
            if !rule.drops(state.live(), front.max_timestamp) {
                return Ok(());
            }
            if front.pos == u64::MAX {
                // The first segment is used up: its successor's first batch.
                while state.front_pos >= state.segments[0].size && state.segments.len() > 1 {
                    self.remove_front_segment(state)?;
                }
                continue;
            }
            self.drop_front_batch(state, &front)?;
        }
        Ok(())
    }

    /// Age retention also applies to shards nobody appends to any more.
    fn expire_idle(&self, now: i64) -> Result<()> {
        if self.shared.read_only {
            return Ok(());
        }
        if self.options.retention_ms > 0 && !self.deleted.load(Ordering::Acquire) {
            let mut state = self.state.write();
            // A read racing close must not remove files after the marker.
            if !self.closed.load(Ordering::Acquire) {
                self.enforce_retention(&mut state, now)?;
            }
        }
        Ok(())
    }

    /// Seals the active segment (written, fdatasynced, indexes written,
    /// reserved blocks returned) and starts a new one at the next offset.
    fn roll(&self, state: &mut State, w: &mut Writer) -> Result<()> {
        self.flush_buf(w)?;
        let file = self.file(w)?;
        self.sync_file(&file)?;
        w.dirty = false;
        segment::trim(&file, w.written, w.reserved);
        let sealed = state.segments.back().expect("a shard has a segment");
        sealed.write_indexes(&self.dir)?;
        let base = state.next_offset;
        let path = self.log_path(base);
        let file = create_new(&path, "segment ")?;
        segment::preallocate(&file, 0, self.capacity);
        // The new file's name must be durable before anything in it is
        // acknowledged as durable.
        segment::sync_dir(&self.dir)?;
        w.file = Some(Arc::new(file));
        w.base = base;
        w.written = 0;
        w.reserved = self.capacity;
        w.indexed = None;
        let mut seg = SegmentMeta::new(base);
        seg.running_max_timestamp = state
            .segments
            .back()
            .map_or(i64::MIN, |s| s.running_max_timestamp);
        state.segments.push_back(seg);
        self.rolls.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Makes the shard's appends so far durable, whatever its durability:
    /// called before `save_meta`, so that a power cut never keeps a delete
    /// or a next offset while losing appends made before it. One
    /// fdatasync of the active segment when it has unsynced writes
    /// (deletes and truncations only; also before a delete's rewrites,
    /// which are durable as soon as they are made).
    fn sync_appends(&self, w: &mut Writer) -> Result<()> {
        self.flush_buf(w)?;
        if w.dirty {
            let file = self.file(w)?;
            self.sync_file(&file)?;
            w.dirty = false;
        }
        Ok(())
    }

    fn save_meta(&self, state: &State) -> Result<()> {
        write_meta(
            &self.dir,
            &Meta {
                name: self.name.clone(),
                options: self.options.to_toml(),
                low: state.low,
                next: state.next_offset,
            },
            true,
        )
    }

    /// Rewrites segment `index` as Kafka's cleaner does: every batch is
    /// kept, replaced or dropped as `change` says (`None`: unchanged), into
    /// a new file that is fdatasynced and renamed over the old one. Views
    /// and transfer plans of the old file keep its inode and bytes. A batch
    /// left with no record stays as an empty batch (`empty_batch_like`), so
    /// offsets stay dense in the file. Returns whether anything changed.
    fn rewrite_segment(
        &self,
        state: &mut State,
        w: &mut Writer,
        index: usize,
        change: &mut Change<'_>,
    ) -> Result<bool> {
        let map = self.map_segment(state, index)?;
        let seg = &state.segments[index];
        let base = seg.base;
        let mut pieces: Vec<Bytes> = Vec::new();
        let mut changed = false;
        let mut pos = 0u64;
        while pos < seg.size {
            let info = segment::batch_at(&map[..seg.size as usize], pos)?;
            let bytes = cache::slice(&map, pos, info.len);
            pos = info.end();
            if info.last_offset < state.low {
                pieces.push(bytes);
                continue;
            }
            match change(&info, &bytes)? {
                None => pieces.push(bytes),
                Some(Some(replacement)) => {
                    changed = true;
                    pieces.push(replacement);
                }
                Some(None) => {
                    changed = true;
                    pieces.push(segment::empty_batch_like(&bytes)?);
                }
            }
        }
        if !changed {
            return Ok(false);
        }
        let active = index + 1 == state.segments.len();
        let mut meta = SegmentMeta::new(base);
        for piece in &pieces {
            let info = segment::batch_at(piece, 0)?;
            meta.push(&BatchInfo {
                pos: meta.size,
                ..info
            });
        }
        let file = self.replace_segment_file(base, &pieces)?;
        self.rewrites.fetch_add(1, Ordering::Relaxed);
        if active {
            // The writer moves to the new inode, synced in full.
            segment::record_synced(&self.dir, base, meta.size);
            w.file = Some(Arc::new(file));
            w.written = meta.size;
            w.reserved = 0;
            w.dirty = false;
            w.indexed = None;
            if w.file.is_some() {
                self.shared.opened(self.id);
            }
        } else {
            meta.write_indexes(&self.dir)?;
        }
        state.segments[index] = meta;
        if index == 0 {
            state.front_pos = 0;
            state.front = (0, 0, 0);
        }
        if !active && state.segments[index].batches == 0 {
            state.segments.remove(index);
            self.shared.cache.forget((self.id, base));
            segment::remove_files(&self.dir, base)?;
            segment::sync_dir(&self.dir)?;
        }
        state.recompute_running_max();
        Ok(true)
    }

    /// Writes `pieces` into a new file that is fdatasynced and renamed over
    /// segment `base` (durably): a crash leaves the old file or the new one.
    /// Views and transfer plans of the old file keep its inode and bytes.
    fn replace_segment_file(&self, base: i64, pieces: &[Bytes]) -> Result<File> {
        let path = self.log_path(base);
        let tmp = self
            .dir
            .join(format!("{}.cleaned", segment::log_name(base)));
        let io = |what: &str, e| Error::io(format!("{what} '{}'", tmp.display()), e);
        let file = fs::create_with(
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true),
            &tmp,
        )
        .map_err(|e| io("creating", e))?;
        let mut pos = 0;
        for piece in pieces {
            fs::write_at(&file, piece, pos).map_err(|e| io("writing", e))?;
            pos += piece.len() as u64;
        }
        fs::sync_data(&file).map_err(|e| io("fdatasync of", e))?;
        fs::rename(&tmp, &path).map_err(|e| io("renaming", e))?;
        segment::sync_dir(&self.dir)?;
        self.shared.cache.forget((self.id, base));
        Ok(file)
    }

    /// Cuts the shard at `offset` (checked by the caller; `w` is the
    /// writer, locked, so the front is recounted after). The order makes
    /// every crash leave a prefix of the old log at least `offset` long:
    /// the metadata's next offset first, then the later segments, newest
    /// first, then the segment holding `offset` replaced by its prefix (a
    /// new file, so maps of the old one stay valid).
    fn cut_tail(&self, state: &mut State, w: &mut Writer, offset: i64) -> Result<()> {
        self.flush_buf(w)?;
        let index = state
            .segments
            .partition_point(|s| s.base <= offset)
            .saturating_sub(1);
        let map = self.map_segment(state, index)?;
        let seg = &state.segments[index];
        let (base, size) = (seg.base, seg.size);
        let mut pos = 0;
        while pos < size {
            let info = segment::batch_at(&map[..size as usize], pos)?;
            if info.base_offset >= offset {
                break;
            }
            pos = info.end();
        }
        let prefix = cache::slice(&map, 0, pos);
        let prefix_meta = SegmentMeta::from_data(base, &prefix)?;
        state.next_offset = offset;
        self.sync_appends(w)?;
        self.save_meta(state)?;
        while state.segments.len() > index + 1 {
            let later = state.segments.pop_back().expect("a later segment");
            self.shared.cache.forget((self.id, later.base));
            segment::remove_files(&self.dir, later.base)?;
            segment::sync_dir(&self.dir)?;
        }
        let file = self.replace_segment_file(base, &[prefix])?;
        for stale in [
            segment::index_path(&self.dir, base),
            segment::time_index_path(&self.dir, base),
        ] {
            match fs::remove_file(&stale) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Error::io(format!("removing '{}'", stale.display()), e))
                }
                _ => {}
            }
        }
        segment::record_synced(&self.dir, base, prefix_meta.size);
        w.file = Some(Arc::new(file));
        w.base = base;
        w.written = prefix_meta.size;
        w.reserved = 0;
        w.dirty = false;
        w.indexed = None;
        self.shared.opened(self.id);
        state.segments[index] = prefix_meta;
        state.recompute_running_max();
        Ok(())
    }

    /// Refuses appends and deletes from now on: a deletion in progress,
    /// which `undelete` takes back if it fails.
    pub fn mark_deleted(&self) {
        let _state = self.state.write();
        self.deleted.store(true, Ordering::Release);
    }

    pub fn undelete(&self) {
        let _state = self.state.write();
        self.deleted.store(false, Ordering::Release);
    }

    /// Lets go of a deleted shard's buffer, file and maps.
    pub fn release(&self) {
        let _state = self.state.write();
        let mut w = self.writer.lock();
        let buffered = w.buf.len() as u64;
        self.shared.buffered.fetch_sub(buffered, Ordering::Relaxed);
        w.buf = Vec::new();
        w.file = None;
        self.shared.closed_file(self.id);
        self.shared.cache.forget_shard(self.id);
    }
    /// Writes (or buffers) one batch at the next offset into the active
    /// segment, rolling first if it would not fit, and indexes it; returns
    /// the write's sequence number for `sync_to`. Under the state lock.
    fn store_batch(&self, state: &mut State, mut batch: NewBatch) -> Result<u64> {
        let mut bytes = std::mem::take(&mut batch.bytes);
        let len = bytes.len() as u64;
        let base_offset = state.next_offset;
        format::set_base_offset(&mut bytes, base_offset);
        let mut w = self.writer.lock();
        let active_size = state.segments.back().map_or(0, |s| s.size);
        if active_size > 0 && active_size + len > self.capacity {
            self.roll(state, &mut w)?;
        }
        let pos = state.segments.back().map_or(0, |s| s.size);
        let buffer_cap = self.shared.buffer_cap(self.capacity);
        let buffered = self.options.durability == Durability::None
            && self.shared.config.flush != FlushPolicy::Append
            && w.buf.len() as u64 + len <= buffer_cap
            && self.shared.reserve_buffer(len);
        if buffered {
            w.buf.extend_from_slice(&bytes);
        } else {
            self.write_through(&mut w, &bytes)?;
        }
        w.seq += 1;
        let seq = w.seq;
        drop(w);
        let info = BatchInfo {
            pos,
            len,
            base_offset,
            last_offset: batch.last_offset(base_offset),
            max_timestamp: batch.max_timestamp,
            records: u64::from(batch.records),
        };
        let before = state
            .segments
            .len()
            .checked_sub(2)
            .map_or(i64::MIN, |i| state.segments[i].running_max_timestamp);
        let active = state.segments.back_mut().expect("a shard has a segment");
        active.push(&info);
        active.running_max_timestamp = before.max(active.max_timestamp);
        state.next_offset = info.last_offset + 1;
        Ok(seq)
    }
}

impl Shard for FileShard {
    fn kind(&self) -> EngineKind {
        EngineKind::File
    }

    fn expire(&self, now_ms: i64) -> Result<()> {
        self.expire_idle(now_ms)
    }

    fn info(&self) -> Result<ShardInfo> {
        self.expire_idle(now_ms())?;
        let state = self.state.read();
        let held = state.live();
        Ok(ShardInfo {
            name: self.name.clone(),
            engine: EngineKind::File,
            first_offset: state.low,
            next_offset: state.next_offset,
            records: held.records,
            bytes: held.bytes,
            options: self.options.clone(),
        })
    }

    fn options(&self) -> &ShardOptions {
        &self.options
    }

    fn append_batches(&self, batches: Vec<NewBatch>, _pipelined: bool) -> Result<i64> {
        self.check_live()?;
        let now = now_ms();
        let durability = self.options.durability;
        let mut state = self.state.write();
        self.check_live()?;
        self.touch();
        let first_offset = state.next_offset;
        let (mut records, mut bytes, mut seq) = (0u64, 0u64, 0u64);
        for batch in batches {
            records += u64::from(batch.records);
            bytes += batch.bytes.len() as u64;
            seq = self.store_batch(&mut state, batch)?;
        }
        self.enforce_retention(&mut state, now)?;
        drop(state);

        #[cfg(test)]
        if let Some(hook) = self.before_sync.lock().as_ref() {
            hook();
        }
        if durability == Durability::Fsync || self.shared.config.flush == FlushPolicy::Append {
            self.sync_to(seq)?;
        }
        self.appended_records.fetch_add(records, Ordering::Relaxed);
        self.appended_bytes.fetch_add(bytes, Ordering::Relaxed);
        Ok(first_offset)
    }

    fn truncate_to(&self, offset: i64) -> Result<()> {
        self.check_live()?;
        let mut state = self.state.write();
        self.check_live()?;
        scan::check_range(&self.name, offset, state.low, state.next_offset)?;
        if offset == state.next_offset {
            return Ok(());
        }
        // Buffered batches are written first: the walk reads the file.
        self.make_readable()?;
        let containing = self
            .batches_from(&state, offset)
            .next()
            .map(|(batch, _, _)| (batch.base_offset, batch.last_offset));
        scan::check_truncation(&self.name, offset, state.low, state.next_offset, containing)?;
        let mut w = self.writer.lock();
        let cut = self.cut_tail(&mut state, &mut w, offset);
        drop(w);
        // The first segment's dead prefix, when the cut was in it (the
        // recount takes the writer's lock).
        match cut.and_then(|()| self.recount_front(&mut state)) {
            Ok(()) => Ok(()),
            Err(e) => self.poison(e),
        }
    }

    fn read(&self, from: i64, limits: ReadLimits) -> Result<ReadResult> {
        let now = now_ms();
        self.expire_idle(now_ms())?;
        let state = self.state.read();
        state.check_range(&self.name, from)?;
        self.make_readable()?;
        self.touch();
        let mut walk = self.batches_from(&state, from);
        let result = scan::read(
            walk.by_ref().map(scan_batch),
            from,
            limits,
            now,
            state.next_offset,
        )?;
        if let Some(e) = walk.error {
            return Err(e);
        }
        drop(state);
        self.read_records
            .fetch_add(result.records.len() as u64, Ordering::Relaxed);
        Ok(result)
    }

    fn read_by_keys(&self, keys: &[&[u8]], max_records: usize) -> Result<Vec<RecordView>> {
        let now = now_ms();
        self.expire_idle(now_ms())?;
        let state = self.state.read();
        self.make_readable()?;
        let mut walk = self.batches(&state, 0, state.front_pos, state.low);
        let result = scan::read_by_keys(walk.by_ref().map(scan_batch), keys, max_records, now)?;
        match walk.error {
            Some(e) => Err(e),
            None => Ok(result),
        }
    }

    fn read_by_tag(&self, tag: &[u8], from: i64, max_records: usize) -> Result<ReadResult> {
        let now = now_ms();
        self.expire_idle(now_ms())?;
        let state = self.state.read();
        state.check_range(&self.name, from)?;
        self.make_readable()?;
        let mut walk = self.batches_from(&state, from);
        let result = scan::read_by_tag(
            walk.by_ref().map(scan_batch),
            tag,
            from,
            max_records,
            now,
            state.next_offset,
        )?;
        match walk.error {
            Some(e) => Err(e),
            None => Ok(result),
        }
    }

    fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<i64>> {
        self.expire_idle(now_ms())?;
        let state = self.state.read();
        match timestamp_ms {
            TIMESTAMP_EARLIEST => return Ok(Some(state.low)),
            TIMESTAMP_LATEST => return Ok(Some(state.next_offset)),
            _ => {}
        }
        self.make_readable()?;
        let seg = state
            .segments
            .partition_point(|s| s.running_max_timestamp < timestamp_ms);
        let Some(segment) = state.segments.get(seg) else {
            return Ok(None);
        };
        let start = segment.offset_for_time(timestamp_ms).max(state.low);
        let mut walk = self.batches_from(&state, start);
        let found = scan::offset_for_timestamp(walk.by_ref().map(scan_batch), timestamp_ms)?;
        match walk.error {
            Some(e) => Err(e),
            None => Ok(found),
        }
    }

    fn delete_records_before(&self, offset: i64) -> Result<i64> {
        let mut state = self.state.write();
        self.check_live()?;
        let target = offset.min(state.next_offset);
        if target <= state.low {
            return Ok(state.low);
        }
        let mut w = self.writer.lock();
        self.flush_buf(&mut w)?;
        // The new watermark is durable before any file changes: a crash
        // from here on finds it and recovery drops what lies below it, so
        // the delete happens whole or not at all (files changed first would
        // lose records above an old watermark a crash left in place).
        let old_low = state.low;
        state.low = target;
        let saved = self
            .sync_appends(&mut w)
            .and_then(|()| self.save_meta(&state));
        if let Err(e) = saved {
            state.low = old_low;
            return Err(e);
        }
        // Whole segments below the target go; a batch straddling it is
        // rewritten without the records below it (so transfers never send
        // them), which also drops the dead batches before it in that file.
        while state.segments.len() > 1 && state.segments[0].next <= target {
            self.remove_front_segment(&mut state)?;
        }
        let straddle = state.locate(target).0;
        if straddle < state.segments.len() {
            self.rewrite_segment(&mut state, &mut w, straddle, &mut |info, bytes| {
                if info.base_offset < target && info.last_offset >= target {
                    Ok(Some(scan::cut_below(bytes, target)?.bytes))
                } else {
                    Ok(None)
                }
            })?;
        }
        drop(w);
        self.recount_front(&mut state)?;
        Ok(target)
    }

    fn delete_where(
        &self,
        within: Range<i64>,
        matches: &mut dyn FnMut(&RecordView) -> bool,
    ) -> Result<u64> {
        let mut state = self.state.write();
        self.check_live()?;
        let mut w = self.writer.lock();
        // The rewrites below are durable at once: the appends before them
        // must be too (see `sync_appends`).
        self.sync_appends(&mut w)?;
        let mut deleted = 0u64;
        let mut any = false;
        let mut index = 0;
        while index < state.segments.len() {
            let segment = &state.segments[index];
            if segment.next <= within.start {
                index += 1;
                continue;
            }
            if segment.base >= within.end {
                break;
            }
            let before = state.segments.len();
            let changed = self.rewrite_segment(&mut state, &mut w, index, &mut |info, bytes| {
                if info.last_offset < within.start || info.base_offset >= within.end {
                    return Ok(None);
                }
                let Some(rewritten) = scan::rewrite_where(bytes, matches)? else {
                    return Ok(None);
                };
                deleted += u64::from(rewritten.deleted);
                Ok(Some(rewritten.bytes))
            })?;
            any |= changed;
            if state.segments.len() == before {
                index += 1;
            }
        }
        drop(w);
        if any {
            self.recount_front(&mut state)?;
            self.save_meta(&state)?;
        }
        Ok(deleted)
    }

    fn plan_transfer(&self, from: i64, max_bytes: usize) -> Result<TransferPlan> {
        self.expire_idle(now_ms())?;
        let state = self.state.read();
        state.check_range(&self.name, from)?;
        self.make_readable()?;
        let mut chunks: Vec<TransferChunk> = Vec::new();
        let mut total = 0u64;
        let mut next_offset = state.next_offset;
        // (segment index, start, end) of the contiguous range being built.
        let mut range: Option<(usize, u64, u64)> = None;
        let mut ranges = Vec::new();
        let mut walk = self.batches_from(&state, from);
        for (info, _, seg) in walk.by_ref() {
            if total > 0 && total + info.len > max_bytes as u64 {
                next_offset = info.base_offset;
                break;
            }
            total += info.len;
            range = match range {
                Some((s, start, end)) if s == seg && end == info.pos => {
                    Some((s, start, info.end()))
                }
                Some(done) => {
                    ranges.push(done);
                    Some((seg, info.pos, info.end()))
                }
                None => Some((seg, info.pos, info.end())),
            };
        }
        if let Some(e) = walk.error {
            return Err(e);
        }
        ranges.extend(range);
        for (seg, start, end) in ranges {
            // The plan holds its own descriptor: sending works after the
            // segment is removed or rewritten, and after the store closes.
            let path = self.log_path(state.segments[seg].base);
            let file = File::open(&path)
                .map_err(|e| Error::io(format!("opening '{}'", path.display()), e))?;
            chunks.push(TransferChunk::File {
                file: Arc::new(file),
                offset: start,
                len: end - start,
            });
        }
        Ok(TransferPlan::new(chunks, next_offset))
    }

    fn save_group_offset(&self, group: &str, offset: Option<i64>) -> Result<bool> {
        self.check_live()?;
        self.groups
            .lock()
            .save(group, offset, self.options.durability)?;
        Ok(true)
    }

    fn saved_group_offsets(&self) -> Result<Vec<(String, i64)>> {
        Ok(self.groups.lock().offsets())
    }

    fn stats(&self) -> Result<serde_json::Value> {
        let state = self.state.read();
        let batches = state.live().batches;
        let w = self.writer.lock();
        Ok(serde_json::json!({
            "segments": state.segments.len(),
            "batches": batches,
            "segment_capacity": self.capacity,
            "buffered_bytes": w.buf.len(),
            "file_open": w.file.is_some(),
            "appended_records": self.appended_records.load(Ordering::Relaxed),
            "appended_bytes": self.appended_bytes.load(Ordering::Relaxed),
            "read_records": self.read_records.load(Ordering::Relaxed),
            "rolls": self.rolls.load(Ordering::Relaxed),
            "rewrites": self.rewrites.load(Ordering::Relaxed),
            "poisoned": self.poisoned.lock().clone(),
            "engine": self.shared.stats(),
        }))
    }
}

impl FileShard {
    /// Completes a recovered shard's state: running timestamp maxima, the
    /// dead prefix below the low watermark, and retention as of now.
    pub fn after_recovery(&self) -> Result<()> {
        let mut state = self.state.write();
        state.recompute_running_max();
        self.recount_front(&mut state)?;
        if self.shared.read_only {
            return Ok(());
        }
        self.enforce_retention(&mut state, now_ms())
    }

    /// Recomputes the first segment's dead prefix (batches wholly below the
    /// low watermark) after the low watermark moved or files changed.
    pub fn recount_front(&self, state: &mut State) -> Result<()> {
        state.front_pos = 0;
        state.front = (0, 0, 0);
        while state.segments.len() > 1 && state.segments[0].next <= state.low {
            self.remove_front_segment(state)?;
        }
        if state.segments[0].size == 0 || state.segments[0].base >= state.low {
            return Ok(());
        }
        self.make_readable()?;
        let map = self.map_segment(state, 0)?;
        let seg = &state.segments[0];
        let mut pos = 0;
        let mut front = (0, 0, 0);
        while pos < seg.size {
            let info = segment::batch_at(&map[..seg.size as usize], pos)?;
            if info.last_offset >= state.low {
                break;
            }
            front = (front.0 + 1, front.1 + info.records, front.2 + info.len);
            pos = info.end();
        }
        state.front_pos = pos;
        state.front = front;
        Ok(())
    }
}
