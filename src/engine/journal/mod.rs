//! The Journal engine: the brief's durable streaming engine.
//!
//! One append-only journal per store (`<store>/journal/`), shared by every
//! journal shard, so the number of files does not grow with the number of
//! shards. Each entry frames one Kafka batch (or a catalogue record) with its
//! shard id and a CRC-32C (see `entry` and docs/FORMAT.md). Appends from all
//! threads and shards are group-committed by `writer::Writer` (O_DIRECT
//! from aligned buffers, submitted through io_uring or pwrite — see
//! `writer` and `uring`, and `[journal] io` / `direct`); each shard
//! keeps a small in-memory index of its batches' positions (`index`), and
//! reads are zero-copy views of the segments' read-only mappings; transfers
//! sendfile(2) straight from the segment files. Opening replays the journal
//! (`recovery`) from the index checkpoint a clean close leaves (`ckpt`),
//! or from the start when there is none. Segment files are removed from
//! the oldest on, once no shard has live data in them (the shards whose
//! catalogue record lives in such a segment are checkpointed into the
//! active one first).

mod ckpt;
mod cleaner;
mod cold;
mod commit;
mod entry;
mod index;
mod prefill;
mod recovery;
mod recycle;
mod runbuf;
mod segment;
mod shard;
mod tail;
mod uring;
mod worker;
mod writer;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use parking_lot::{Mutex, RwLock};

use crate::config::{EngineKind, IoMode, JournalConfig, ShardOptions};
use crate::engine::{Engine, RecoveredShard, Shard};
use crate::{Error, Result};

use index::ShardState;
use recycle::Recycler;
use segment::Segment;
pub use shard::JournalShard;
pub(crate) use uring::UringOps;
pub(crate) use writer::{FileOps, PlainOps};
use writer::{SegmentMap, Writer};

/// Name of the journal's directory inside the store directory.
pub const JOURNAL_DIR: &str = "journal";

/// The shared journal of one store.
pub(crate) struct Log {
    pub config: JournalConfig,
    pub writer: Writer,
    dir: PathBuf,
    segments: SegmentMap,
    /// Live shards by name (for catalogue checkpoints before a segment is
    /// removed, and the index checkpoint at close). Strong references: the
    /// index checkpoint at close needs every shard, and the store drops its
    /// handles before closing the engine. The cycle (each shard holds the
    /// log) is broken by `JournalEngine::close`, or its drop without one.
    shards: Mutex<HashMap<String, Arc<JournalShard>>>,
    /// An index checkpoint file may exist (see `maybe_reclaim`).
    index_ckpt: std::sync::atomic::AtomicBool,
    next_id: AtomicU64,
    reclaim: Mutex<()>,
    removed_segments: AtomicU64,
    /// Cold reads (pread) and the bytes they fetched.
    cold_reads: AtomicU64,
    cold_read_bytes: AtomicU64,
    recovered_entries: u64,
    truncated_bytes: u64,
    skipped_bytes: u64,
    /// End position of the index checkpoint recovery started from.
    checkpoint_end: Option<u64>,
    /// A periodic checkpoint is due once the log has been written up to
    /// here (`u64::MAX`: never, `checkpoint_bytes` = 0).
    next_checkpoint_at: AtomicU64,
    checkpoints: AtomicU64,
    checkpointer: Option<worker::Worker>,
    /// Relocates the live batches of mostly dead old segments (`cleaner`),
    /// woken after segment rolls.
    cleaner: Option<worker::Worker>,
    /// Segment rolls the cleaner was last woken for.
    cleaner_rolls: AtomicU64,
    /// One cleaning pass at a time (the worker's, or a caller's).
    cleaning: Mutex<()>,
    cleaning_passes: AtomicU64,
    relocated_bytes: AtomicU64,
    /// Writes what pipelined appends buffered; started by the first one.
    flushers: OnceLock<[worker::Worker; 2]>,
    me: Weak<Log>,
    /// Opened read-only: no segment is ever removed, no checkpoint written.
    read_only: bool,
}

impl Log {
    /// Removes the oldest segments that no shard has live data in (never
    /// the active one). Only a prefix of the journal is ever removed, so
    /// replay always sees a shard's entries in their original order.
    /// Failures leave the files in place (and poison the journal when an
    /// fsync failed); nothing is lost by not removing a segment.
    pub fn maybe_reclaim(&self) {
        if self.read_only {
            return;
        }
        let active = self.writer.active_base();
        let candidates: Vec<Arc<Segment>> = {
            let map = self.segments.read();
            map.values()
                .take_while(|s| s.base != active && s.live() == 0)
                .cloned()
                .collect()
        };
        if candidates.is_empty() {
            return;
        }
        let Some(_guard) = self.reclaim.try_lock() else {
            return;
        };
        let bases: HashSet<u64> = candidates.iter().map(|s| s.base).collect();
        let shards: Vec<Arc<JournalShard>> = self.shards.lock().values().cloned().collect();
        // Shards whose latest catalogue record is in a doomed segment get a
        // fresh one, durable before the old file goes; so do shards whose low
        // watermark retention moved since their last checkpoint (the dropped
        // batches that replay would recompute it from may be in the doomed
        // segments).
        let mut end = 0;
        for shard in shards {
            let mut state = shard.state.write();
            if bases.contains(&state.anchor) || state.low_dirty {
                match shard.checkpoint(&mut state) {
                    Ok(e) => end = end.max(e),
                    Err(_) => return,
                }
            }
        }
        // Everything logged so far is made durable before a file goes, not
        // only these checkpoints: a batch moved out of a doomed segment (a
        // delete's rewrite, a relocation) left it when its index entry
        // moved, possibly before its new copy reached the disk (durability
        // `none`, or its appender still waiting), and the old copy may be
        // the only one a crash would leave.
        let end = end.max(self.writer.end_position());
        if self.writer.commit(end, true).is_err() {
            return;
        }
        // The index checkpoint may point into the doomed segments. A
        // checkpoint naming a missing segment is ignored on open anyway, but
        // deleting it first (durably) means no open ever has to rely on that
        // check: after a crash from here on, recovery replays the whole
        // journal, which is what it did before checkpoints existed.
        let ckpt_removed = self.index_ckpt.load(Ordering::Acquire);
        if ckpt_removed {
            if ckpt::remove(&self.dir).is_err() {
                return;
            }
            self.index_ckpt.store(false, Ordering::Release);
        }
        {
            let mut map = self.segments.write();
            for s in &candidates {
                map.remove(&s.base);
            }
        }
        if ckpt_removed {
            self.reschedule_checkpoint();
        }
        let count = candidates.len() as u64;
        if self.writer.retire_files(candidates).is_ok() {
            self.removed_segments.fetch_add(count, Ordering::Relaxed);
        }
    }

    /// Called after appends: wakes the checkpointer once the journal has
    /// grown by `checkpoint_bytes` since the last checkpoint, and the
    /// cleaner once a segment rolled.
    pub fn maybe_checkpoint(&self) {
        if self.checkpoint_due() {
            if let Some(checkpointer) = &self.checkpointer {
                checkpointer.poke();
            }
        }
        let rolls = self.writer.counters.rolls.load(Ordering::Relaxed);
        if self.cleaner_rolls.load(Ordering::Relaxed) != rolls {
            self.cleaner_rolls.store(rolls, Ordering::Relaxed);
            if let Some(cleaner) = &self.cleaner {
                cleaner.poke();
            }
        }
    }

    /// After a reclaim deleted the index checkpoint, a crash replays the
    /// journal from its oldest segment: with periodic checkpoints, a fresh
    /// one is due as soon as that replay would be longer than
    /// `checkpoint_bytes` (at once, if it already is). A journal smaller
    /// than that, such as a hybrid store's, is not checkpointed per reclaim.
    fn reschedule_checkpoint(&self) {
        let Some(checkpointer) = &self.checkpointer else {
            return;
        };
        let oldest = self.segments.read().keys().next().copied().unwrap_or(0);
        let due = oldest.saturating_add(self.config.checkpoint_bytes);
        self.next_checkpoint_at.fetch_min(due, Ordering::Relaxed);
        if self.checkpoint_due() {
            checkpointer.poke();
        }
    }

    fn checkpoint_if_due(&self) {
        if self.checkpoint_due() {
            // A failed checkpoint loses nothing: the previous one (or the
            // full replay) still recovers everything.
            let _ = self.checkpoint();
        }
    }

    /// Hands the entries before `end` to the flusher threads, to be written
    /// (and fdatasynced when `sync`) without the caller waiting; returns the
    /// bytes buffered and not yet being written.
    pub fn flush_in_background(&self, end: u64, sync: bool) -> Result<u64> {
        // Started before the request: one that failed to start leaves no
        // request behind that no thread would serve.
        let flushers = self.flushers()?;
        let (poke, pending) = self.writer.request_background(end, sync)?;
        if poke {
            for flusher in flushers {
                flusher.poke();
            }
        }
        Ok(pending)
    }

    /// The flusher threads, started on first use. Two: with O_DIRECT a
    /// leader's fdatasync runs outside the write phase, so the other can
    /// lead the write of a newer group meanwhile (one pipelining producer:
    /// +16-18 % measured).
    fn flushers(&self) -> Result<&[worker::Worker; 2]> {
        if let Some(flushers) = self.flushers.get() {
            return Ok(flushers);
        }
        let start = || {
            worker::Worker::start("mqs-journal-flush", self.me.clone(), |log| {
                log.writer.serve_background()
            })
        };
        // Two callers may race here: the loser's threads are stopped when
        // `set` hands them back and they are dropped.
        let _ = self.flushers.set([start()?, start()?]);
        Ok(self.flushers.get().expect("set above"))
    }

    fn checkpoint_due(&self) -> bool {
        self.writer.written() >= self.next_checkpoint_at.load(Ordering::Relaxed)
    }

    /// Writes a checkpoint of the running journal (see `ckpt`). Holds the
    /// reclaim lock: a segment removal deletes the checkpoint first, and
    /// must not run between this one's snapshot and its write.
    pub fn checkpoint(&self) -> Result<()> {
        let _guard = self.reclaim.lock();
        let position = self.writer.position();
        let shards: Vec<Arc<JournalShard>> = self.shards.lock().values().cloned().collect();
        // Read after listing the shards: every listed id is below it.
        let next_id = self.next_id.load(Ordering::Acquire);
        ckpt::write_periodic(&self.dir, &self.writer, position, next_id, &shards)?;
        self.index_ckpt.store(true, Ordering::Release);
        if self.config.checkpoint_bytes > 0 {
            self.next_checkpoint_at.store(
                position.0.saturating_add(self.config.checkpoint_bytes),
                Ordering::Relaxed,
            );
        }
        self.checkpoints.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The start of the oldest hot segment: the newest `hot_segments` are
    /// read through their mapping, older ones with pread (see `cold`).
    pub fn hot_from(&self) -> u64 {
        let map = self.segments.read();
        let hot = self.config.hot_segments.max(1) as usize;
        map.keys().rev().nth(hot - 1).copied().unwrap_or(0)
    }

    /// Drops `name` from the registry if it is still the shard `id` (a
    /// shard of the same name may have been created meanwhile).
    fn unregister(&self, name: &str, id: u64) {
        let mut shards = self.shards.lock();
        if shards.get(name).is_some_and(|s| s.id == id) {
            shards.remove(name);
        }
    }

    pub fn stats(&self) -> serde_json::Value {
        serde_json::json!({
            "io": self.writer.io_name(),
            "prefill": self.writer.prefill_stats(),
            "segments": self.segments.read().len(),
            "writes": self.writer.counters.writes.load(Ordering::Relaxed),
            "fdatasyncs": self.writer.counters.syncs.load(Ordering::Relaxed),
            "bytes_written": self.writer.counters.bytes_written.load(Ordering::Relaxed),
            "removed_segments": self.removed_segments.load(Ordering::Relaxed),
            "segment_rolls": self.writer.counters.rolls.load(Ordering::Relaxed),
            "recycled_segments": self.writer.recycler().recycled.load(Ordering::Relaxed),
            "kept_free_segments": self.writer.recycler().kept.load(Ordering::Relaxed),
            "free_segments": self.writer.recycler().free_files(),
            "cleaning_passes": self.cleaning_passes.load(Ordering::Relaxed),
            "relocated_bytes": self.relocated_bytes.load(Ordering::Relaxed),
            "hot_segments": self.config.hot_segments,
            "checkpoints_written": self.checkpoints.load(Ordering::Relaxed),
            "tail_cache_bytes": self.writer.tail.bytes(),
            "cold_reads": self.cold_reads.load(Ordering::Relaxed),
            "cold_read_bytes": self.cold_read_bytes.load(Ordering::Relaxed),
            "recovered_entries": self.recovered_entries,
            "truncated_bytes": self.truncated_bytes,
            "skipped_bytes": self.skipped_bytes,
            "checkpoint_used": self.checkpoint_end.is_some(),
            "checkpoint_end": self.checkpoint_end,
            "poisoned": self.writer.poisoned(),
        })
    }
}

/// Creates journal shards; owns the store's journal once a shard needs it.
pub struct JournalEngine {
    dir: PathBuf,
    config: JournalConfig,
    /// Chosen from `config.io` when the journal is first opened, unless a
    /// test forced one.
    ops: Mutex<Option<Arc<dyn FileOps>>>,
    log: Mutex<Option<Arc<Log>>>,
    /// Set by `close` under the `log` lock: a shard creation racing the
    /// close must not start a new journal (with a fresh segment 0 and shard
    /// ids counting from 1 again) beside the closed one.
    closed: std::sync::atomic::AtomicBool,
    /// Recovery and close change no file; the store refuses every change.
    read_only: bool,
}

/// The submission path for `[journal] io`: `auto` prefers io_uring and
/// falls back to pwrite/fdatasync where it is unavailable (kernels without
/// it, sandboxes that refuse io_uring_setup with ENOSYS or EPERM); `uring`
/// insists on it.
pub(crate) fn select_ops(mode: IoMode) -> Result<Arc<dyn FileOps>> {
    match mode {
        IoMode::Pwrite => Ok(Arc::new(PlainOps)),
        IoMode::Uring => match UringOps::new() {
            Ok(ops) => Ok(Arc::new(ops)),
            Err(e) => Err(Error::Unsupported(format!(
                "journal.io = \"uring\": io_uring is not available on this system ({e}); \
                 set io = \"auto\" to fall back to pwrite/fdatasync, or io = \"pwrite\""
            ))),
        },
        IoMode::Auto => match UringOps::new() {
            Ok(ops) => Ok(Arc::new(ops)),
            Err(_) => Ok(Arc::new(PlainOps)),
        },
    }
}

impl JournalEngine {
    /// An engine for the store in `store_dir`. Touches no file: the journal
    /// directory is read by `recover` and created by the first shard.
    pub fn new(store_dir: &Path, config: JournalConfig) -> JournalEngine {
        JournalEngine {
            dir: store_dir.join(JOURNAL_DIR),
            config,
            ops: Mutex::new(None),
            log: Mutex::new(None),
            closed: std::sync::atomic::AtomicBool::new(false),
            read_only: false,
        }
    }

    /// An engine that only reads the journal: recovery cuts no torn tail
    /// and removes nothing, no thread writes, close writes no checkpoint.
    pub fn read_only(mut self, read_only: bool) -> JournalEngine {
        self.read_only = read_only;
        self
    }

    #[cfg(test)]
    pub(crate) fn with_ops(
        store_dir: &Path,
        config: JournalConfig,
        ops: Arc<dyn FileOps>,
    ) -> JournalEngine {
        let engine = Self::new(store_dir, config);
        *engine.ops.lock() = Some(ops);
        engine
    }

    fn ops(&self) -> Result<Arc<dyn FileOps>> {
        let mut slot = self.ops.lock();
        if let Some(ops) = slot.as_ref() {
            return Ok(ops.clone());
        }
        let ops = select_ops(self.config.io)?;
        *slot = Some(ops.clone());
        Ok(ops)
    }

    fn new_log(
        &self,
        segments: Vec<Arc<Segment>>,
        tail: u64,
        next_id: u64,
        counts: (u64, u64, u64),
        checkpoint_end: Option<u64>,
    ) -> Result<Arc<Log>> {
        let active = segments.last().expect("a journal has a segment").clone();
        let map: BTreeMap<u64, Arc<Segment>> = segments.into_iter().map(|s| (s.base, s)).collect();
        let map: SegmentMap = Arc::new(RwLock::new(map));
        let recycler = Recycler::open(
            &self.dir,
            self.config.recycle_segments,
            self.config.segment_bytes,
            self.read_only,
        )?;
        let writer = Writer::new(
            self.dir.clone(),
            self.config.segment_bytes,
            map.clone(),
            recycler,
            active,
            tail,
            self.ops()?,
            self.config.direct && !self.read_only,
            self.config.prefill_zeros,
            self.config.tail_cache_bytes,
            self.read_only,
        )?;
        let end = writer.end_position();
        let next_checkpoint_at = match self.config.checkpoint_bytes {
            _ if self.read_only => u64::MAX,
            0 => u64::MAX,
            bytes => end.saturating_add(bytes),
        };
        // `new_cyclic` cannot fail: a checkpointer that cannot start is
        // reported once the log is built, and dropping the log stops the
        // threads that did start.
        let mut failed = None;
        let log = Arc::new_cyclic(|weak| Log {
            checkpointer: match self.config.checkpoint_bytes {
                _ if self.read_only => None,
                0 => None,
                _ => {
                    worker::Worker::start("mqs-journal-ckpt", weak.clone(), Log::checkpoint_if_due)
                        .map_err(|e| failed = Some(e))
                        .ok()
                }
            },
            cleaner: match self.read_only || !self.config.cleaner {
                true => None,
                false => {
                    worker::Worker::start("mqs-journal-clean", weak.clone(), Log::clean_after_roll)
                        .map_err(|e| failed = Some(e))
                        .ok()
                }
            },
            cleaner_rolls: AtomicU64::new(0),
            cleaning: Mutex::new(()),
            cleaning_passes: AtomicU64::new(0),
            relocated_bytes: AtomicU64::new(0),
            flushers: OnceLock::new(),
            me: weak.clone(),
            next_checkpoint_at: AtomicU64::new(next_checkpoint_at),
            checkpoints: AtomicU64::new(0),
            config: self.config.clone(),
            writer,
            dir: self.dir.clone(),
            segments: map,
            shards: Mutex::new(HashMap::new()),
            index_ckpt: std::sync::atomic::AtomicBool::new(checkpoint_end.is_some()),
            next_id: AtomicU64::new(next_id),
            reclaim: Mutex::new(()),
            removed_segments: AtomicU64::new(0),
            cold_reads: AtomicU64::new(0),
            cold_read_bytes: AtomicU64::new(0),
            recovered_entries: counts.0,
            truncated_bytes: counts.1,
            skipped_bytes: counts.2,
            checkpoint_end,
            read_only: self.read_only,
        });
        failed.map_or(Ok(log), Err)
    }

    /// The journal, created (directory + first segment) on first use.
    fn log(&self) -> Result<Arc<Log>> {
        let mut slot = self.log.lock();
        if let Some(log) = slot.as_ref() {
            return Ok(log.clone());
        }
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        // Before any file is touched: a strict `io = "uring"` fails here.
        self.ops()?;
        crate::io::create_dir_all_durable(&self.dir)?;
        let first = Segment::create(&self.dir, 0, self.config.segment_bytes)?;
        let path = first.path.clone();
        let log = match self.new_log(vec![Arc::new(first)], 0, 1, (0, 0, 0), None) {
            Ok(log) => log,
            Err(e) => {
                // So that the next shard creates the journal afresh (an
                // empty journal directory is no journal to recovery).
                let _ = crate::io::fs::remove_file(&path);
                return Err(e);
            }
        };
        *slot = Some(log.clone());
        Ok(log)
    }
}

impl Drop for JournalEngine {
    /// Breaks the log ↔ shard cycle when the engine goes without a close
    /// (a failed store open, tests driving the engine directly).
    fn drop(&mut self) {
        if let Some(log) = self.log.get_mut().take() {
            log.shards.lock().clear();
        }
    }
}

impl Engine for JournalEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Journal
    }

    fn create_shard(&self, name: &str, options: &ShardOptions) -> Result<Arc<dyn Shard>> {
        let mut created = self.create_shards(&[name], options)?;
        Ok(created.pop().expect("one shard per name"))
    }

    /// All the catalogue records go into the journal's buffer, then one
    /// wait makes them durable together: a million shards cost one large
    /// write (and one sync for `fsync` shards), not a million.
    fn create_shards(&self, names: &[&str], options: &ShardOptions) -> Result<Vec<Arc<dyn Shard>>> {
        let log = self.log()?;
        let mut created: Vec<Arc<JournalShard>> = Vec::with_capacity(names.len());
        let mut end = 0;
        for name in names {
            let id = log.next_id.fetch_add(1, Ordering::Relaxed);
            let shard = Arc::new(JournalShard::new(
                id,
                name,
                options.clone(),
                log.clone(),
                ShardState::default(),
            ));
            // Registered before its catalogue record is logged, so that a
            // close sealing the log right after that record still
            // checkpoints it.
            log.shards.lock().insert(name.to_string(), shard.clone());
            let logged = {
                let mut state = shard.state.write();
                shard.checkpoint(&mut state)
            };
            created.push(shard);
            match logged {
                Ok(at) => end = end.max(at),
                Err(e) => {
                    for (name, shard) in names.iter().zip(&created) {
                        log.unregister(name, shard.id);
                    }
                    return Err(e);
                }
            }
        }
        if let Some(last) = created.last() {
            // One wait covers every record before `end`.
            last.wait(end)?;
        }
        Ok(created.into_iter().map(|s| s as Arc<dyn Shard>).collect())
    }

    fn remove_shard(&self, name: &str, _shard: &Arc<dyn Shard>) -> Result<()> {
        let Some(log) = self.log.lock().clone() else {
            return Ok(());
        };
        let shard = log.shards.lock().get(name).cloned();
        if let Some(shard) = shard {
            // Logged (and marked in the state) before it leaves the
            // registry: a close in between checkpoints the shard either as
            // live with no deletion logged, or as deleted.
            let end = shard.delete()?;
            // Until the deletion is as durable as the shard's mode asks,
            // the shard stays (appends refused meanwhile): a failure, which
            // poisons the journal, leaves it whole, never gone now and back
            // after a restart.
            if let Err(e) = shard.wait(end) {
                shard.undelete();
                return Err(e);
            }
            log.unregister(name, shard.id);
            shard.release();
            log.maybe_reclaim();
        }
        Ok(())
    }

    fn close(&self) -> Result<()> {
        let taken = {
            let mut slot = self.log.lock();
            self.closed.store(true, Ordering::Release);
            slot.take()
        };
        let Some(log) = taken else {
            return Ok(());
        };
        if let Some(checkpointer) = &log.checkpointer {
            checkpointer.stop();
        }
        if let Some(cleaner) = &log.cleaner {
            cleaner.stop();
        }
        if log.read_only {
            log.shards.lock().clear();
            log.writer.stop_prefill();
            return Ok(());
        }
        // A clean close leaves everything on stable storage, whatever the
        // shards' durability modes. Sealing first means no entry can enter
        // the log after `end`, so the shard states snapshotted below reflect
        // exactly the entries before it (every logged change is made under
        // the shard's lock together with its enqueue).
        // Synced before sealing, so that a `Synced` entry proves the whole
        // journal durable (it is written by the final commit below): a
        // replay without the checkpoint then treats damage anywhere as
        // corruption, not as a torn tail. A failure here shows again below.
        let _ = log.writer.commit(log.writer.end_position(), true);
        let (end, last) = log.writer.seal();
        // Whatever happens next, the shards let go of the log.
        let shards: Vec<Arc<JournalShard>> = log.shards.lock().drain().map(|(_, s)| s).collect();
        log.writer.stop_prefill();
        for flusher in log.flushers.get().into_iter().flatten() {
            flusher.stop();
        }
        log.writer.commit(end, true)?;
        // Only now, with everything before `end` durable, may a checkpoint
        // claim to cover it. It is an optimisation: failing to write it
        // loses nothing (the previous one, if any, is still valid for the
        // shorter prefix it covers, or recovery replays everything).
        let next_id = log.next_id.load(Ordering::Relaxed);
        let _ = ckpt::write(&self.dir, end, last, next_id, &shards);
        Ok(())
    }

    fn recover(&self) -> Result<Vec<RecoveredShard>> {
        if !self.dir.exists() {
            return Ok(Vec::new());
        }
        self.ops()?;
        let recovered = recovery::recover(&self.dir, &self.config, self.read_only)?;
        let (segments, tail) = if recovered.segments.is_empty() {
            if self.read_only {
                return Ok(Vec::new());
            }
            let first = Segment::create(&self.dir, 0, self.config.segment_bytes)?;
            (vec![Arc::new(first)], 0)
        } else {
            (recovered.segments, recovered.tail)
        };
        let log = self.new_log(
            segments,
            tail,
            recovered.next_id,
            (
                recovered.entries,
                recovered.truncated_bytes,
                recovered.skipped_bytes,
            ),
            recovered.checkpoint_end,
        )?;
        report_recovery(
            &self.dir,
            recovered.truncated_bytes,
            recovered.skipped_bytes,
            self.read_only,
        );
        log.writer.set_last(recovered.last);
        let mut out: Vec<RecoveredShard> = Vec::new();
        {
            let mut registry = log.shards.lock();
            for (id, r) in recovered.shards {
                let shard = Arc::new(JournalShard::new(
                    id,
                    &r.name,
                    r.options.clone(),
                    log.clone(),
                    r.state,
                ));
                registry.insert(r.name.clone(), shard.clone());
                out.push((r.name, r.options, shard));
            }
        }
        *self.log.lock() = Some(log.clone());
        // Retention applied during replay may have emptied old segments.
        log.maybe_reclaim();
        Ok(out)
    }
}

/// What recovery gave up to open the journal, for the operator.
fn report_recovery(dir: &Path, truncated: u64, skipped: u64, read_only: bool) {
    use crate::log::{emit, Level};
    if truncated > 0 {
        let done = if read_only {
            "left (read-only) and ignored"
        } else {
            "cut"
        };
        emit(
            Level::Warn,
            &format!(
                "journal recovery in '{}': {done} {truncated} bytes of a torn tail that no \
                 acknowledgement covered",
                dir.display()
            ),
        );
    }
    if skipped > 0 {
        emit(
            Level::Error,
            &format!(
                "journal recovery in '{}': skipped {skipped} damaged bytes \
                 (recovery_mode = \"skip_corrupt\"); the records in them are lost",
                dir.display()
            ),
        );
    }
}
