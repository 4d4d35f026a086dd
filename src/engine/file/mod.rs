//! The File engine: the brief's edge engine (mmap + sendfile, bounded
//! memory, no external dependency).
//!
//! One directory per shard (`<store>/file/<shard id>/`) holding segment
//! files named by their base offset, each a run of Kafka RecordBatch v2
//! batches with a sparse offset index and a time index beside it
//! (`segment`), plus `meta.json` (name, options, watermarks a delete
//! moved). Appends go to the active segment through `pwrite(2)` (or a small
//! buffer for durability `none`); reads are zero-copy slices of maps from
//! a bounded LRU cache (`cache`); transfers sendfile(2) straight from the
//! segment files. Opening a store replays nothing: each shard's segments
//! are summarised from their index files, and only what a crash may have
//! left unfinished is scanned and validated (`recovery`).
//!
//! Memory is bounded by `[file] max_memory_mb`: half of it for maps, an
//! eighth for append buffers; segments roll at a size that lets several
//! maps fit, and at most `max_open_files` active segments stay open (the
//! least recently used shards' descriptors are closed). Threads: none,
//! unless `flush = "interval"`, which starts one flusher for the store.

mod cache;
mod groups;
mod recovery;
mod segment;
mod shard;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use crate::config::{Durability, EngineKind, FileConfig, FlushPolicy, ShardOptions};
use crate::engine::{Engine, RecoveredShard, Shard};
use crate::io::{create_dir_all_durable, create_new, fs};
use crate::{Error, Result};

use cache::MapCache;
use segment::{sync_dir, SegmentMeta};
pub use shard::FileShard;
use shard::{Meta, State, Writer};

/// Name of the engine's directory inside the store directory.
pub const FILE_DIR: &str = "file";
/// Present after a clean close: every shard's indexes match its files.
const CLEAN_MARKER: &str = "CLEAN";

const MIB: u64 = 1 << 20;
/// Largest segment: positions in the index files are 32-bit.
const MAX_SEGMENT: u64 = 1 << 30;
/// Largest append buffer of one shard (durability `none`).
const MAX_SHARD_BUFFER: u64 = 256 << 10;

/// State shared by the engine and its shards.
pub(crate) struct Shared {
    config: FileConfig,
    cache: MapCache,
    /// Bytes in all shards' append buffers, and their budget.
    buffered: AtomicU64,
    buffer_budget: u64,
    /// Logical clock for the least-recently-used choice of descriptors.
    tick: AtomicU64,
    /// Shards whose active segment is open.
    open_files: Mutex<HashSet<u64>>,
    /// Live shards. Strong references: close must reach every shard after
    /// the store dropped its handles (the cycle is broken by close/drop).
    shards: Mutex<HashMap<u64, Arc<FileShard>>>,
    writes: AtomicU64,
    syncs: AtomicU64,
    bytes_written: AtomicU64,
    evicted_files: AtomicU64,
    truncated_bytes: AtomicU64,
    rebuilt_indexes: AtomicU64,
    /// Opened read-only: recovery, retention and close change no file.
    pub read_only: bool,
}

impl Shared {
    fn new(config: FileConfig) -> Shared {
        let budget = config.max_memory_mb * MIB;
        Shared {
            cache: MapCache::new(budget / 2),
            buffered: AtomicU64::new(0),
            buffer_budget: budget / 8,
            tick: AtomicU64::new(1),
            open_files: Mutex::new(HashSet::new()),
            shards: Mutex::new(HashMap::new()),
            writes: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            evicted_files: AtomicU64::new(0),
            truncated_bytes: AtomicU64::new(0),
            rebuilt_indexes: AtomicU64::new(0),
            read_only: false,
            config,
        }
    }

    /// Where a shard's active segment rolls: its `segment_bytes`, but small
    /// enough that four segment maps fit the map budget, so reading never
    /// needs more than the budget (one batch larger than that still gets a
    /// segment of its own).
    fn segment_capacity(&self, segment_bytes: u64) -> u64 {
        segment_bytes
            .min(self.config.max_memory_mb * MIB / 8)
            .min(MAX_SEGMENT)
    }

    fn buffer_cap(&self, capacity: u64) -> u64 {
        MAX_SHARD_BUFFER.min(capacity)
    }

    /// Takes `len` bytes of the append-buffer budget, if that much is left.
    fn reserve_buffer(&self, len: u64) -> bool {
        let mut current = self.buffered.load(Ordering::Relaxed);
        loop {
            if current + len > self.buffer_budget {
                return false;
            }
            match self.buffered.compare_exchange_weak(
                current,
                current + len,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }

    /// Notes that shard `id` opened its active file; over the budget of
    /// open files, closes the least recently used other shards' ones. Their
    /// writers are only `try_lock`ed: a busy one is in use, not idle.
    fn opened(&self, id: u64) {
        let mut open = self.open_files.lock();
        open.insert(id);
        if open.len() as u64 <= self.config.max_open_files {
            return;
        }
        let mut candidates: Vec<Arc<FileShard>> = {
            let shards = self.shards.lock();
            open.iter()
                .filter(|&&other| other != id)
                .filter_map(|other| shards.get(other).cloned())
                .collect()
        };
        candidates.sort_by_key(|s| s.last_used.load(Ordering::Relaxed));
        for shard in candidates {
            if open.len() as u64 <= self.config.max_open_files {
                break;
            }
            let Some(mut w) = shard.writer.try_lock() else {
                continue;
            };
            // A failure poisons that shard (its next append reports it);
            // the descriptor is released either way.
            let _ = shard.release_file(&mut w);
            w.file = None;
            open.remove(&shard.id);
            self.evicted_files.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn closed_file(&self, id: u64) {
        self.open_files.lock().remove(&id);
    }

    fn stats(&self) -> serde_json::Value {
        serde_json::json!({
            "max_memory_mb": self.config.max_memory_mb,
            "flush": self.config.flush.name(),
            "maps": self.cache.stats(),
            "buffered_bytes": self.buffered.load(Ordering::Relaxed),
            "buffer_budget_bytes": self.buffer_budget,
            "open_files": self.open_files.lock().len(),
            "max_open_files": self.config.max_open_files,
            "evicted_files": self.evicted_files.load(Ordering::Relaxed),
            "writes": self.writes.load(Ordering::Relaxed),
            "fdatasyncs": self.syncs.load(Ordering::Relaxed),
            "bytes_written": self.bytes_written.load(Ordering::Relaxed),
            "truncated_bytes": self.truncated_bytes.load(Ordering::Relaxed),
            "rebuilt_indexes": self.rebuilt_indexes.load(Ordering::Relaxed),
        })
    }
}

/// Shard directories by id.
type ShardDirs = Vec<(u64, PathBuf)>;

/// The flusher thread of `flush = "interval"`.
struct Flusher {
    stop: Arc<(Mutex<bool>, Condvar)>,
    handle: JoinHandle<()>,
}

/// Creates file shards and owns the store's `file/` directory.
pub struct FileEngine {
    dir: PathBuf,
    shared: Arc<Shared>,
    next_id: AtomicU64,
    flusher: Mutex<Option<Flusher>>,
    /// Set by `close` under the shard map's lock: a creation racing the
    /// close must not leave a shard behind the CLEAN marker.
    closed: std::sync::atomic::AtomicBool,
}

impl FileEngine {
    /// An engine for the store in `store_dir`. Touches no file: `recover`
    /// reads the directory, the first shard creates it.
    pub fn new(store_dir: &Path, config: FileConfig) -> FileEngine {
        FileEngine {
            dir: store_dir.join(FILE_DIR),
            shared: Arc::new(Shared::new(config)),
            next_id: AtomicU64::new(1),
            flusher: Mutex::new(None),
            closed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// An engine that only reads its files: recovery cuts no torn tail and
    /// removes nothing, retention drops batches from view only, no flusher
    /// runs and close writes nothing.
    pub fn read_only(mut self, read_only: bool) -> FileEngine {
        Arc::get_mut(&mut self.shared)
            .expect("an engine being built shares nothing yet")
            .read_only = read_only;
        self
    }

    /// Removes a deleted shard's files: renamed to `<id>.deleted` and the
    /// directory fsynced (the commit point: recovery finishes the removal
    /// of a `.deleted` directory and never brings the shard back), then
    /// removed. A failure before the commit point renames the files back.
    fn discard(&self, shard: &FileShard) -> Result<()> {
        let doomed = self.dir.join(format!("{:020}.deleted", shard.id));
        fs::rename(&shard.dir, &doomed)
            .map_err(|e| Error::io(format!("removing '{}'", shard.dir.display()), e))?;
        if let Err(e) = sync_dir(&self.dir) {
            // Not durable either way: undo it, so the shard stays whole.
            let _ = fs::rename(&doomed, &shard.dir);
            return Err(e);
        }
        // Past the commit point: what is left is only disk space, which
        // the next open reclaims.
        let _ = fs::remove_dir_all(&doomed);
        Ok(())
    }

    fn shard_dir(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:020}"))
    }

    /// Starts the flusher once, if the policy needs it.
    fn start_flusher(&self) -> Result<()> {
        if self.shared.config.flush != FlushPolicy::Interval {
            return Ok(());
        }
        let mut slot = self.flusher.lock();
        if slot.is_some() {
            return Ok(());
        }
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let shared = self.shared.clone();
        let signal = stop.clone();
        let period = Duration::from_millis(self.shared.config.flush_interval_ms);
        let handle = crate::thread::spawn("mqs-file-flush", move || {
            let (lock, condvar) = &*signal;
            let mut stopped = lock.lock();
            while !*stopped {
                condvar.wait_for(&mut stopped, period);
                if *stopped {
                    break;
                }
                drop(stopped);
                let shards: Vec<Arc<FileShard>> = shared.shards.lock().values().cloned().collect();
                for shard in shards {
                    // A failure poisons the shard; its appends report it.
                    let _ = shard.flush(true);
                }
                stopped = lock.lock();
            }
        })?;
        *slot = Some(Flusher { stop, handle });
        Ok(())
    }

    fn stop_flusher(&self) {
        if let Some(flusher) = self.flusher.lock().take() {
            *flusher.stop.0.lock() = true;
            flusher.stop.1.notify_all();
            let _ = flusher.handle.join();
        }
    }

    /// The shard directories in `file/` (by id, sorted) and the ones a
    /// crash left half-created or half-deleted.
    fn list_dir(&self) -> Result<(ShardDirs, Vec<PathBuf>)> {
        let listing = |e| Error::io(format!("listing '{}'", self.dir.display()), e);
        let mut dirs = Vec::new();
        let mut unfinished = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(listing)? {
            let entry = entry.map_err(listing)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") || name.ends_with(".deleted") {
                unfinished.push(entry.path());
            } else if name.len() == 20 && name.bytes().all(|b| b.is_ascii_digit()) {
                if let Ok(id) = name.parse::<u64>() {
                    dirs.push((id, entry.path()));
                }
            }
        }
        dirs.sort();
        Ok((dirs, unfinished))
    }

    fn find(&self, name: &str) -> Option<Arc<FileShard>> {
        self.shared
            .shards
            .lock()
            .values()
            .find(|s| s.name() == name)
            .cloned()
    }
}

impl Drop for FileEngine {
    fn drop(&mut self) {
        self.stop_flusher();
        self.shared.shards.lock().clear();
    }
}

impl Engine for FileEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::File
    }

    fn create_shard(&self, name: &str, options: &ShardOptions) -> Result<Arc<dyn Shard>> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let durable = options.durability == Durability::Fsync;
        create_dir_all_durable(&self.dir)?;
        self.start_flusher()?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let dir = self.shard_dir(id);
        // Built under a temporary name and renamed into place, so a crash
        // (or a power cut) never leaves a half-made shard that recovery would have to judge.
        let tmp = self.dir.join(format!("{id:020}.tmp"));
        let io = |what: &str, e| Error::io(format!("{what} '{}'", tmp.display()), e);
        fs::create_dir(&tmp).map_err(|e| io("creating", e))?;
        let meta = Meta {
            name: name.to_string(),
            options: options.to_toml(),
            low: 0,
            next: 0,
        };
        let built = (|| {
            shard::write_meta(&tmp, &meta, durable)?;
            // Created with the shard, so its directory entry is durable
            // before any record in it matters.
            segment::record_synced(&tmp, 0, 0);
            let log = tmp.join(segment::log_name(0));
            let file = create_new(&log, "")?;
            // Whatever the durability: without it a power cut could keep
            // the rename but not the entries inside, a shard with no
            // `meta.json` that would stop the store from opening.
            sync_dir(&tmp)?;
            fs::rename(&tmp, &dir).map_err(|e| io("renaming", e))?;
            if durable {
                sync_dir(&self.dir)?;
            }
            Ok(file)
        })();
        let file = match built {
            Ok(file) => file,
            Err(e) => {
                let _ = fs::remove_dir_all(&tmp);
                return Err(e);
            }
        };
        let mut segments = std::collections::VecDeque::new();
        segments.push_back(SegmentMeta::new(0));
        let writer = Writer {
            file: Some(Arc::new(file)),
            ..Writer::default()
        };
        let shard = Arc::new(FileShard::new(
            id,
            name,
            options.clone(),
            dir,
            self.shared.clone(),
            State::new(segments, 0, 0),
            writer,
        ));
        {
            let w = shard.writer.lock();
            if let Some(file) = &w.file {
                segment::preallocate(file, 0, shard.capacity());
            }
        }
        shard.writer.lock().reserved = shard.capacity();
        {
            let mut shards = self.shared.shards.lock();
            if self.closed.load(Ordering::Acquire) {
                drop(shards);
                shard.mark_deleted();
                self.discard(&shard)?;
                shard.release();
                return Err(Error::Closed);
            }
            shards.insert(id, shard.clone());
        }
        self.shared.opened(id);
        Ok(shard)
    }

    fn remove_shard(&self, name: &str, _shard: &Arc<dyn Shard>) -> Result<()> {
        let Some(shard) = self.find(name) else {
            return Ok(());
        };
        // Appends are refused while the files go; a failure before the
        // removal is durable takes that back, so the shard is never gone
        // now and back after a restart.
        shard.mark_deleted();
        if let Err(e) = self.discard(&shard) {
            shard.undelete();
            return Err(e);
        }
        self.shared.shards.lock().remove(&shard.id);
        shard.release();
        Ok(())
    }

    fn close(&self) -> Result<()> {
        self.stop_flusher();
        let shards: Vec<Arc<FileShard>> = {
            let mut shards = self.shared.shards.lock();
            self.closed.store(true, Ordering::Release);
            shards.drain().map(|(_, s)| s).collect()
        };
        let mut first_error = None;
        for shard in &shards {
            if let Err(e) = shard.close() {
                first_error.get_or_insert(e);
            }
        }
        self.shared.cache.clear();
        if let Some(e) = first_error {
            return Err(e);
        }
        if self.shared.read_only || shards.is_empty() && !self.dir.exists() {
            return Ok(());
        }
        // Only a close that got everything on stable storage says so.
        let marker = self.dir.join(CLEAN_MARKER);
        let file = fs::create(&marker)
            .map_err(|e| Error::io(format!("creating '{}'", marker.display()), e))?;
        fs::sync_all(&file)
            .map_err(|e| Error::io(format!("fsyncing '{}'", marker.display()), e))?;
        sync_dir(&self.dir)
    }

    fn recover(&self) -> Result<Vec<RecoveredShard>> {
        if !self.dir.exists() {
            return Ok(Vec::new());
        }
        let (dirs, unfinished) = self.list_dir()?;
        let clean = self.dir.join(CLEAN_MARKER).exists();
        if self.shared.read_only {
            return self.open_shards(dirs, clean);
        }
        if !dirs.is_empty() {
            // Before anything changes on disk: an open that fails here
            // leaves the files (and the clean marker) as it found them.
            self.start_flusher()?;
        }
        let marker = self.dir.join(CLEAN_MARKER);
        if clean {
            // From here on the store may write: the next open must not
            // trust the indexes unless this run closes cleanly too.
            fs::remove_file(&marker)
                .map_err(|e| Error::io(format!("removing '{}'", marker.display()), e))?;
            sync_dir(&self.dir)?;
        }
        for path in unfinished {
            // A creation or deletion a crash interrupted.
            fs::remove_dir_all(&path)
                .map_err(|e| Error::io(format!("removing '{}'", path.display()), e))?;
        }
        self.open_shards(dirs, clean)
    }
}

impl FileEngine {
    /// Opens the shards in `dirs` (their indexes trusted if `clean`).
    fn open_shards(&self, dirs: ShardDirs, clean: bool) -> Result<Vec<RecoveredShard>> {
        let mut recovered = Vec::new();
        let mut max_id = 0;
        for (id, path) in dirs {
            max_id = max_id.max(id);
            let shard = recovery::open_shard(&self.shared, id, path, clean)?;
            self.shared.shards.lock().insert(id, shard.clone());
            recovered.push((
                shard.name().to_string(),
                shard.options().clone(),
                shard as Arc<dyn Shard>,
            ));
        }
        self.next_id.store(max_id + 1, Ordering::Relaxed);
        Ok(recovered)
    }
}
