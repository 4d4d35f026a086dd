//! The RocksDB engine (`engine = "rocksdb"`): one RocksDB database per
//! store, in `<store>/rocksdb/`, shared by every RocksDB shard.
//!
//! One key per Kafka batch, `shard id ‖ base offset` (`keys`), whose value
//! is the batch exactly as the other engines store it; beside it, in the
//! same WriteBatch, a small index record (offsets, timestamp, counts) so
//! that opening rebuilds every shard's in-memory index (the shared
//! `engine::index`) without reading a batch; and one catalogue record per
//! shard. Every change of a shard is one WriteBatch, so RocksDB applies it
//! whole or not at all, also across a crash. Durability maps onto
//! RocksDB's write options (see `Db::write`); RocksDB's write group
//! commits concurrent writers' WAL records with one fsync.

mod backend;
mod keys;
mod plan;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use ::rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DBCompressionType, ErrorKind,
    Options, SliceTransform, WriteBatch, WriteOptions, DB,
};
use parking_lot::{Condvar, MappedRwLockReadGuard, Mutex, MutexGuard, RwLock, RwLockReadGuard};

use crate::config::{Durability, RocksdbConfig};
use crate::{Error, Result};

pub(crate) use backend::RocksConnect;

/// The RocksDB engine: the shared database engine over `Db`.
pub(crate) type RocksdbEngine = crate::engine::database::DbEngine<RocksConnect>;

/// Name of the engine's directory inside the store directory.
pub const ROCKSDB_DIR: &str = "rocksdb";
/// Batch key → the Kafka batch.
const CF_BATCHES: &str = "batches";
/// Batch key → `keys::IndexValue`.
const CF_INDEX: &str = "index";
/// Shard id → `keys::ShardMeta`.
const CF_SHARDS: &str = "shards";
/// Shard id ‖ group name → the group's committed offset (`keys::group_key`).
const CF_GROUPS: &str = "groups";

/// An error of a RocksDB call made while doing `what`.
fn db_error(what: &str, e: ::rocksdb::Error) -> Error {
    match e.kind() {
        ErrorKind::Corruption => Error::corruption(format!("RocksDB, {what}: {e}")),
        _ => Error::io(
            format!("RocksDB, {what}"),
            std::io::Error::other(e.into_string()),
        ),
    }
}

/// Pipelined `fsync` appends write the WAL without syncing it. A syncer
/// thread (started by the first one) syncs it back to back while unsynced
/// writes exist, each sync covering every write completed before it
/// started, so the producer goes on writing meanwhile; `wait_durable`
/// waits for the sync covering its write (or runs one itself when none is
/// in progress, e.g. once the thread has stopped).
#[derive(Default)]
struct SyncGate {
    state: Mutex<SyncState>,
    changed: Condvar,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

#[derive(Default)]
struct SyncState {
    /// Unsynced writes completed so far (their sequence numbers).
    written: u64,
    /// Every write up to this one is synced.
    synced: u64,
    syncing: bool,
    /// The syncer thread is to exit.
    stop: bool,
    /// A failed WAL sync: nothing later is reported durable.
    failed: Option<String>,
}

impl SyncGate {
    /// Notes a completed unsynced write; returns its sequence number.
    fn written(&self) -> u64 {
        let mut state = self.state.lock();
        state.written += 1;
        self.changed.notify_all();
        state.written
    }

    /// Returns once write `seq` is covered by a completed WAL sync.
    fn wait(&self, seq: u64, sync: impl Fn() -> Result<()>) -> Result<()> {
        let mut state = self.state.lock();
        loop {
            if let Some(reason) = &state.failed {
                return Err(Error::Poisoned(format!("RocksDB WAL sync: {reason}")));
            }
            if state.synced >= seq {
                return Ok(());
            }
            if state.syncing {
                self.changed.wait(&mut state);
                continue;
            }
            state = self.sync_step(state, &sync);
        }
    }

    /// One sync covering every write counted so far (they completed before
    /// it starts); takes and gives back the state's lock.
    fn sync_step<'a>(
        &'a self,
        mut state: MutexGuard<'a, SyncState>,
        sync: &impl Fn() -> Result<()>,
    ) -> MutexGuard<'a, SyncState> {
        let covers = state.written;
        state.syncing = true;
        drop(state);
        let result = sync();
        let mut state = self.state.lock();
        state.syncing = false;
        match result {
            Ok(()) => state.synced = state.synced.max(covers),
            Err(e) => state.failed = Some(e.to_string()),
        }
        self.changed.notify_all();
        state
    }

    /// The syncer thread's loop: syncs while unsynced writes exist, until
    /// stopped or a sync failed.
    fn run(&self, sync: impl Fn() -> Result<()>) {
        let mut state = self.state.lock();
        while !state.stop && state.failed.is_none() {
            if state.syncing || state.synced >= state.written {
                self.changed.wait(&mut state);
            } else {
                state = self.sync_step(state, &sync);
            }
        }
    }

    /// Starts the syncer thread unless it runs (or was stopped).
    fn start(self: &Arc<Self>, db: Weak<Db>) -> Result<()> {
        let mut thread = self.thread.lock();
        if thread.is_some() || self.state.lock().stop {
            return Ok(());
        }
        let gate = self.clone();
        let handle = std::thread::Builder::new()
            .name("mqs-rocksdb-sync".into())
            .spawn(move || {
                gate.run(|| match db.upgrade() {
                    Some(db) => db.sync_wal(),
                    None => Err(Error::Closed),
                })
            })
            .map_err(|e| Error::io("starting the RocksDB WAL syncer thread", e))?;
        *thread = Some(handle);
        Ok(())
    }

    /// Stops the syncer thread; `join` waits for it (never from itself).
    fn stop(&self, join: bool) {
        self.state.lock().stop = true;
        self.changed.notify_all();
        let handle = self.thread.lock().take();
        if let Some(handle) = handle.filter(|_| join) {
            let _ = handle.join();
        }
    }

    /// Records the outcome of the sync of everything (the close's).
    fn all_synced(&self, result: &Result<()>) {
        let mut state = self.state.lock();
        match result {
            Ok(()) => state.synced = state.written,
            Err(e) => {
                state.failed.get_or_insert_with(|| e.to_string());
            }
        }
        self.changed.notify_all();
    }
}

/// The store's database, shared by its RocksDB shards.
pub(crate) struct Db {
    path: PathBuf,
    /// `None` once closed: every call then fails with `Closed`, and the
    /// close waits for the calls in flight before RocksDB lets go of the
    /// directory. Boxed: the snapshots below refer to it, so it must not
    /// move while open.
    db: RwLock<Option<Box<DB>>>,
    /// Opened read-only: nothing is written, flushed or synced.
    pub read_only: bool,
    /// The snapshots transfer plans read from (`plan::Plans`).
    plans: plan::Plans,
    /// A write without WAL happened since the last memtable flush: a
    /// clean close flushes, so that `none` shards survive it.
    unlogged: AtomicBool,
    sync: Arc<SyncGate>,
    /// This database, for the syncer thread (which must not keep it).
    me: std::sync::OnceLock<Weak<Db>>,
    write_none: WriteOptions,
    write_os: WriteOptions,
    write_fsync: WriteOptions,
    writes: AtomicU64,
    wal_syncs: AtomicU64,
}

/// A borrowed open database.
pub(crate) type DbRef<'a> = MappedRwLockReadGuard<'a, DB>;

impl Drop for Db {
    /// A database dropped without `close` (a store whose open failed)
    /// stops its syncer thread, which may be the one dropping it.
    fn drop(&mut self) {
        self.sync.stop(false);
    }
}

/// Column family options: no compression (batches may come compressed
/// from Kafka producers, and are stored as they are), a bloom filter on
/// the shard-id prefix and on whole keys, the shared block cache.
fn cf_options(write_buffer: u64, cache: Option<&Cache>, prefixed: bool) -> Options {
    let mut options = Options::default();
    options.set_compression_type(DBCompressionType::None);
    options.set_write_buffer_size(write_buffer as usize);
    let mut table = BlockBasedOptions::default();
    match cache {
        Some(cache) => table.set_block_cache(cache),
        None => table.disable_cache(),
    }
    if prefixed {
        options.set_prefix_extractor(SliceTransform::create_fixed_prefix(keys::PREFIX_LEN));
        table.set_bloom_filter(10.0, false);
    }
    options.set_block_based_table_factory(&table);
    options
}

fn write_options(disable_wal: bool, sync: bool) -> WriteOptions {
    let mut options = WriteOptions::default();
    options.disable_wal(disable_wal);
    options.set_sync(sync);
    options
}

impl Db {
    fn open(path: &Path, config: &RocksdbConfig, read_only: bool) -> Result<Db> {
        if !read_only {
            crate::io::create_dir_all_durable(path)?;
        }
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        // Writes without WAL (`none` shards) put a batch and its index
        // record in two memtables: flushed together or not at all.
        options.set_atomic_flush(true);
        options.set_max_background_jobs(config.max_background_jobs as i32);
        options.set_keep_log_file_num(2);
        options.set_max_log_file_size(8 << 20);
        options.set_compression_type(DBCompressionType::None);
        let cache = (config.block_cache_mb > 0)
            .then(|| Cache::new_lru_cache((config.block_cache_mb as usize) << 20));
        let buffer = config.write_buffer_mb << 20;
        let small = buffer.min(16 << 20);
        let families = [
            (CF_BATCHES, buffer, true),
            (CF_INDEX, small, true),
            (CF_SHARDS, small, false),
            (CF_GROUPS, small, true),
        ]
        .map(|(name, size, prefixed)| {
            ColumnFamilyDescriptor::new(name, cf_options(size, cache.as_ref(), prefixed))
        });
        let db = if read_only {
            DB::open_cf_descriptors_read_only(&options, path, families, false)
        } else {
            DB::open_cf_descriptors(&options, path, families)
        }
        .map_err(|e| open_error(path, e))?;
        Ok(Db {
            path: path.to_path_buf(),
            db: RwLock::new(Some(Box::new(db))),
            read_only,
            plans: plan::Plans::default(),
            unlogged: AtomicBool::new(false),
            sync: Arc::default(),
            me: std::sync::OnceLock::new(),
            write_none: write_options(true, false),
            write_os: write_options(false, false),
            write_fsync: write_options(false, true),
            writes: AtomicU64::new(0),
            wal_syncs: AtomicU64::new(0),
        })
    }

    /// The open database. Recursive: a call may hold it while taking it
    /// again (a delete reads, then writes), even with a close waiting.
    pub fn get(&self) -> Result<DbRef<'_>> {
        RwLockReadGuard::try_map(self.db.read_recursive(), Option::as_deref)
            .map_err(|_| Error::Closed)
    }

    /// Writes `batch` atomically, acknowledged as `durability` says:
    /// `fsync` once the WAL holding it is synced (fdatasync; RocksDB's
    /// write group shares one among concurrent writers), unless
    /// `pipelined`, which returns after the WAL write and leaves the sync
    /// to `wait_durable` (the returned sequence number); `os` once the
    /// WAL write returned (survives kill -9, not a power loss); `none`
    /// without WAL (in the memtable only: lost on a crash unless a flush
    /// or a clean close wrote it to an SST file).
    pub fn write(&self, batch: WriteBatch, durability: Durability, pipelined: bool) -> Result<u64> {
        let db = self.get()?;
        let options = match durability {
            Durability::None => &self.write_none,
            Durability::Os => &self.write_os,
            Durability::Fsync if pipelined => &self.write_os,
            Durability::Fsync => &self.write_fsync,
        };
        if durability == Durability::None {
            self.unlogged.store(true, Ordering::Release);
        }
        db.write_opt(batch, options)
            .map_err(|e| db_error("writing", e))?;
        self.writes.fetch_add(1, Ordering::Relaxed);
        if durability != Durability::Fsync || !pipelined {
            return Ok(0);
        }
        if let Some(me) = self.me.get() {
            self.sync.start(me.clone())?;
        }
        Ok(self.sync.written())
    }

    /// Waits until the unsynced write `seq` (from `write`) is synced.
    pub fn wait_synced(&self, seq: u64) -> Result<()> {
        self.sync.wait(seq, || self.sync_wal())
    }

    /// Syncs the WAL now (what earlier unsynced writes wrote).
    pub fn sync_wal(&self) -> Result<()> {
        self.wal_syncs.fetch_add(1, Ordering::Relaxed);
        self.get()?
            .flush_wal(true)
            .map_err(|e| db_error("syncing the WAL", e))
    }

    /// Makes everything written durable and closes the database; later
    /// calls fail with `Closed`.
    fn close(&self) -> Result<()> {
        // Before the lock: the syncer's sync in flight needs the database.
        self.sync.stop(true);
        // Dropped after the lock below: a plan dropped last here takes it.
        let _kept;
        let mut slot = self.db.write();
        let Some(db) = slot.take() else {
            return Ok(());
        };
        // Plans still held are read into memory, and every snapshot is
        // released, while the database they belong to is still there.
        _kept = self.plans.detach_all(&db);
        if self.read_only {
            return Ok(());
        }
        let flushed = if self.unlogged.load(Ordering::Acquire) {
            db.flush()
                .map_err(|e| db_error("flushing memtables at close", e))
        } else {
            Ok(())
        };
        let synced = db
            .flush_wal(true)
            .map_err(|e| db_error("syncing the WAL at close", e));
        // Pipelined appends still waiting are acknowledged by this sync.
        self.sync.all_synced(&synced);
        // Dropping the handle waits for background work and releases
        // RocksDB's LOCK.
        drop(db);
        flushed.and(synced)
    }

    /// Counters and RocksDB's own figures; fails once closed or when
    /// RocksDB cannot report a property.
    pub fn stats(&self) -> Result<serde_json::Value> {
        let db = self.get()?;
        let batches = cf(&db, CF_BATCHES)?;
        let property = |name: &str| -> Result<Option<u64>> {
            db.property_int_value_cf(batches, name)
                .map_err(|e| db_error(&format!("reading property {name}"), e))
        };
        Ok(serde_json::json!({
            "dir": self.path.display().to_string(),
            "writes": self.writes.load(Ordering::Relaxed),
            "wal_syncs": self.wal_syncs.load(Ordering::Relaxed),
            "estimated_batches": property("rocksdb.estimate-num-keys")?,
            "memtable_bytes": property("rocksdb.cur-size-all-mem-tables")?,
            "live_sst_bytes": property("rocksdb.live-sst-files-size")?,
            "background_errors": db
                .property_int_value("rocksdb.background-errors")
                .map_err(|e| db_error("reading background errors", e))?,
        }))
    }
}

/// A column family the database was opened with.
fn cf<'a>(db: &'a DB, name: &str) -> Result<&'a ColumnFamily> {
    db.cf_handle(name)
        .ok_or_else(|| Error::Internal(format!("RocksDB column family '{name}' is not open")))
}

/// RocksDB's failure to open `path`: a LOCK held elsewhere is `Locked`;
/// damage, and a file the database's own records name gone missing (the
/// directory exists, so RocksDB only looks for files they name), are
/// `Corruption`; the rest `Io`.
fn open_error(path: &Path, e: ::rocksdb::Error) -> Error {
    let message = e.to_string();
    let io = e.kind() == ErrorKind::IOError;
    if io && message.to_ascii_lowercase().contains("lock") {
        return Error::DbLocked {
            path: path.display().to_string(),
            detail: message,
        };
    }
    if io && message.contains("No such file or directory") {
        return Error::corruption(format!(
            "RocksDB database '{}' is missing a file it names: {message}",
            path.display()
        ));
    }
    db_error(&format!("opening '{}'", path.display()), e)
}
