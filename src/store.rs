//! The storage adapter: a `Store` owns shards, routes each to the engine
//! chosen when it was created, validates every request once (so engines get
//! well-formed input), and keeps consumer-group offsets.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};

use crate::compaction::{CompactionReport, ShardCleaner};
use crate::config::{Config, EngineKind, ShardOptions};
use crate::engine::{
    registry, Engine, NewBatch, ReadLimits, ReadResult, Shard, ShardInfo, TIMESTAMP_EARLIEST,
};
use crate::format::{self, validate};
use crate::io::{create_dir_all_durable, replace_file_durably, TransferPlan};
use crate::notify::{Completion, Notifier};
use crate::producer::{self, Producers};
use crate::record::{Record, RecordView, RESERVED_HEADER_PREFIX};
use crate::retention::{RetentionTimer, ShardTask};
use crate::{Error, Result};

/// Longest shard name accepted, in bytes (Kafka allows 249 for topics).
pub const MAX_SHARD_NAME_LEN: usize = 255;

/// The result of `Store::sendfile_to_fd`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendfileResult {
    pub bytes_written: u64,
    pub next_offset: i64,
}

/// An open store. Every method takes `&self`; a `Store` is `Send + Sync` and
/// meant to be shared (e.g. in an `Arc`) by all threads of a broker.
pub struct Store {
    dir: PathBuf,
    config: Config,
    engines: HashMap<EngineKind, Arc<dyn Engine>>,
    shards: RwLock<HashMap<String, Arc<dyn Shard>>>,
    /// Names whose creation is in progress outside the `shards` lock.
    creating: Mutex<HashSet<String>>,
    /// (group, shard) → (committed offset, whether it is saved in
    /// `groups.json`: persistent shards whose engine keeps no offsets).
    group_offsets: Mutex<BTreeMap<(String, String), (i64, bool)>>,
    /// Orders the commits of each (group, shard) (striped by hash).
    commit_order: [Mutex<()>; COMMIT_STRIPES],
    /// `groups.json` may still hold offsets of a deleted shard (rewriting
    /// it after the deletion failed); the next rewrite drops them.
    groups_stale: AtomicBool,
    closed: AtomicBool,
    /// Applies age retention to idle shards.
    retention: RetentionTimer,
    /// Durability notifications for event loops, created by their first use.
    notifier: Mutex<Option<Arc<Notifier>>>,
    /// Idempotent producers' sequences per shard.
    producers: Arc<Producers>,
    /// The compaction cleaners of compacted shards, by shard.
    cleaners: Mutex<HashMap<String, Arc<ShardCleaner>>>,
    /// Holds the exclusive flock on `<dir>/LOCK` while the store is open.
    lock_file: Mutex<Option<File>>,
    /// Partition leader epochs set by `set_leader_epoch`, by shard.
    leader_epochs: RwLock<HashMap<String, i32>>,
    /// Some shard has a leader epoch (`leader_epochs` is worth a look).
    leader_epochs_set: AtomicBool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.dir)
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Takes the store's directory lock: exclusive for a writer, shared for a
/// read-only open (readers may share a store, never with a writer). A
/// read-only open requires the lock file: without it, `dir` is no store.
fn lock_directory(dir: &Path, read_only: bool) -> Result<File> {
    let path = dir.join("LOCK");
    let file = if read_only {
        OpenOptions::new().read(true).open(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::InvalidArgument(format!(
                    "'{}' is not a store (it has no LOCK file); a read-only open creates nothing",
                    dir.display()
                ))
            } else {
                Error::io(format!("opening lock file '{}'", path.display()), e)
            }
        })?
    } else {
        crate::io::fs::open_creating(
            OpenOptions::new().create(true).truncate(false).write(true),
            &path,
        )
        .map_err(|e| Error::io(format!("opening lock file '{}'", path.display()), e))?
    };
    let mode = if read_only {
        libc::LOCK_SH
    } else {
        libc::LOCK_EX
    };
    // SAFETY: flock on a descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), mode | libc::LOCK_NB) };
    if rc != 0 {
        let error = std::io::Error::last_os_error();
        if error.kind() == std::io::ErrorKind::WouldBlock {
            return Err(Error::Locked(dir.display().to_string()));
        }
        return Err(Error::io(format!("locking '{}'", path.display()), error));
    }
    Ok(file)
}

/// Locks ordering offset commits: commits of different groups or shards
/// rarely share one.
const COMMIT_STRIPES: usize = 64;

fn commit_stripe(group: &str, shard: &str) -> usize {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (group, shard).hash(&mut hasher);
    hasher.finish() as usize % COMMIT_STRIPES
}

/// File holding the committed offsets of persistent shards.
const GROUPS_FILE: &str = "groups.json";

#[derive(serde::Serialize, serde::Deserialize)]
struct SavedOffset {
    group: String,
    shard: String,
    offset: i64,
}

/// Engines whose shards survive a restart (their group offsets are saved).
fn is_persistent(kind: EngineKind) -> bool {
    registry::spec(kind)
        .capabilities()
        .is_some_and(|caps| caps.persistent)
}

/// Reads `groups.json` (absent: none saved).
/// Every committed offset at open: those the engines keep, then those of
/// `groups.json`. An entry of the file whose shard's engine keeps offsets
/// itself (a store written by a version that kept journal offsets in the
/// file) moves into the engine, and the file is rewritten without it; one
/// the engine already has is stale. Entries of shards that were not
/// recovered (deleted before a crash) are dropped.
fn open_group_offsets(
    dir: &Path,
    shards: &HashMap<String, Arc<dyn Shard>>,
    read_only: bool,
) -> Result<BTreeMap<(String, String), (i64, bool)>> {
    let mut offsets = BTreeMap::new();
    for (name, shard) in shards {
        for (group, offset) in shard.saved_group_offsets()? {
            offsets.insert((group, name.clone()), (offset, false));
        }
    }
    let saved = load_group_offsets(dir)?;
    let mut changed = false;
    for entry in saved {
        let Some(shard) = shards.get(&entry.shard) else {
            changed = true;
            continue;
        };
        let key = (entry.group, entry.shard);
        if offsets.contains_key(&key) {
            changed = true;
            continue;
        }
        let moved = !read_only && shard.save_group_offset(&key.0, Some(entry.offset))?;
        changed |= moved;
        offsets.insert(key, (entry.offset, !moved));
    }
    if changed && !read_only {
        save_group_offsets(dir, &offsets)?;
    }
    Ok(offsets)
}

fn load_group_offsets(dir: &Path) -> Result<Vec<SavedOffset>> {
    let path = dir.join(GROUPS_FILE);
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| Error::corruption(format!("'{}' is not valid: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Error::io(format!("reading '{}'", path.display()), e)),
    }
}

/// Replaces `groups.json` atomically (`replace_file_durably`).
fn save_group_offsets(dir: &Path, offsets: &BTreeMap<(String, String), (i64, bool)>) -> Result<()> {
    let saved: Vec<SavedOffset> = offsets
        .iter()
        .filter(|(_, (_, persistent))| *persistent)
        .map(|((group, shard), (offset, _))| SavedOffset {
            group: group.clone(),
            shard: shard.clone(),
            offset: *offset,
        })
        .collect();
    let json = serde_json::to_vec(&saved).map_err(|e| Error::Internal(e.to_string()))?;
    replace_file_durably(dir, GROUPS_FILE, &json)
}

fn validate_shard_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_SHARD_NAME_LEN {
        return Err(Error::InvalidArgument(format!(
            "shard name must be 1 to {MAX_SHARD_NAME_LEN} bytes, got {}",
            name.len()
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::InvalidArgument(format!(
            "shard name {name:?} contains a control character"
        )));
    }
    Ok(())
}

impl Store {
    /// Opens (creating if needed) the store in `dir`. Only one open store
    /// may use a directory at a time, across processes: a second open fails
    /// with `Locked`.
    pub fn open(dir: impl AsRef<Path>, config: Config) -> Result<Store> {
        let dir = dir.as_ref().to_path_buf();
        // Fail before touching the disk when the default engine cannot
        // exist or cannot honour the default options.
        let default_spec = registry::spec(config.shard_defaults.engine);
        default_spec.check(&config.shard_defaults)?;
        let default_engine = default_spec.build(&dir, &config)?;
        if !config.read_only {
            // A store created for `fsync` appends must not vanish with them.
            create_dir_all_durable(&dir)?;
        }
        let lock_file = lock_directory(&dir, config.read_only)?;
        let mut engines = HashMap::new();
        engines.insert(config.shard_defaults.engine, default_engine);
        for spec in registry::available() {
            if let std::collections::hash_map::Entry::Vacant(slot) = engines.entry(spec.kind) {
                slot.insert(spec.build(&dir, &config)?);
            }
        }
        // Only now, under the directory lock, may engines read their files.
        let mut shards = HashMap::new();
        let retention = RetentionTimer::new(Duration::from_millis(config.retention_check_ms));
        let producers = Arc::new(Producers::open(
            &dir,
            config.producer_expiry_ms,
            config.read_only,
        )?);
        let mut cleaners = HashMap::new();
        for engine in engines.values() {
            for (name, options, shard) in engine.recover()? {
                if needs_timer(&options, &config) {
                    retention.ensure_running()?;
                    let maintained = Maintained::new(&name, &options, &producers);
                    maintained.watch(&retention, &shard, &config);
                    if let Some(cleaner) = maintained.cleaner {
                        cleaners.insert(name.clone(), cleaner);
                    }
                }
                if shards.insert(name.clone(), shard).is_some() {
                    return Err(Error::corruption(format!(
                        "shard '{name}' was recovered twice (by two engines)"
                    )));
                }
            }
        }
        let group_offsets = open_group_offsets(&dir, &shards, config.read_only)?;
        Ok(Store {
            producers,
            cleaners: Mutex::new(cleaners),
            dir,
            config,
            engines,
            shards: RwLock::new(shards),
            creating: Mutex::new(HashSet::new()),
            group_offsets: Mutex::new(group_offsets),
            commit_order: std::array::from_fn(|_| Mutex::new(())),
            groups_stale: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            retention,
            notifier: Mutex::new(None),
            lock_file: Mutex::new(Some(lock_file)),
            leader_epochs: RwLock::new(HashMap::new()),
            leader_epochs_set: AtomicBool::new(false),
        })
    }

    /// Opens with a configuration given as TOML text (`None` = defaults).
    pub fn open_with_toml(dir: impl AsRef<Path>, toml: Option<&str>) -> Result<Store> {
        let config = match toml {
            Some(text) => Config::from_toml_str(text)?,
            None => Config::default(),
        };
        Store::open(dir, config)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Closes the store: engines flush and release their files, the directory
    /// lock is released. Later calls fail with `Closed`. Views and transfer
    /// plans already handed out stay valid. Closing twice is an error.
    pub fn close(&self) -> Result<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Err(Error::Closed);
        }
        // Before the engines close, so that every watched offset completes
        // (its completion stays pollable), and the timer touches shards.
        let notifier = self.notifier.lock().clone();
        if let Some(notifier) = notifier {
            notifier.stop();
        }
        self.retention.stop();
        let persistent: Vec<String> = self
            .shards
            .write()
            .drain()
            .filter(|(_, shard)| is_persistent(shard.kind()))
            .map(|(name, _)| name)
            .collect();
        let mut first_error = None;
        for engine in self.engines.values() {
            if let Err(e) = engine.close() {
                first_error.get_or_insert(e);
            }
        }
        // Only once every batch it covers is durable.
        if first_error.is_none() && !self.config.read_only {
            if let Err(e) = self.producers.save(&persistent) {
                first_error = Some(e);
            }
        }
        self.lock_file.lock().take();
        first_error.map_or(Ok(()), Err)
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn check_open(&self) -> Result<()> {
        if self.is_closed() {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    /// Refuses `what` on a store opened read-only.
    fn check_writable(&self, what: &str) -> Result<()> {
        self.check_open()?;
        if self.config.read_only {
            return Err(Error::Unsupported(format!(
                "{what}: the store '{}' is open read-only (store.read_only = true)",
                self.dir.display()
            )));
        }
        Ok(())
    }

    /// A shard that `what` is about to change.
    fn writable_shard(&self, name: &str, what: &str) -> Result<Arc<dyn Shard>> {
        self.check_writable(what)?;
        self.shard(name)
    }

    fn shard(&self, name: &str) -> Result<Arc<dyn Shard>> {
        self.check_open()?;
        let found = self.shards.read().get(name).cloned();
        // A close racing with this call clears the map after setting the
        // flag: report that as Closed, not as a missing shard.
        found.ok_or_else(|| {
            if self.is_closed() {
                Error::Closed
            } else {
                Error::ShardNotFound(name.to_string())
            }
        })
    }

    // ---------------------------------------------------------------- shards

    /// Creates a shard with the store's default options overlaid with
    /// `options` (TOML with the keys of the config's `[shard]` section).
    pub fn create_shard(&self, name: &str, options: Option<&str>) -> Result<ShardInfo> {
        let options = self.config.shard_options(options)?;
        self.create_shard_with(name, options)
    }

    /// Creates a shard with fully resolved options.
    pub fn create_shard_with(&self, name: &str, options: ShardOptions) -> Result<ShardInfo> {
        let created = self.create(&[name], options, "create_shard")?;
        created[0].info()
    }

    /// Creates the shards `names` (distinct, none existing) with the
    /// store's default options overlaid with `options`, all or none. The
    /// journal logs their catalogue records together and waits once, so a
    /// broker creating a million partitions takes seconds, not minutes.
    pub fn create_shards(&self, names: &[&str], options: Option<&str>) -> Result<()> {
        let options = self.config.shard_options(options)?;
        self.create(names, options, "create_shards").map(drop)
    }

    fn create(
        &self,
        names: &[&str],
        options: ShardOptions,
        what: &str,
    ) -> Result<Vec<Arc<dyn Shard>>> {
        self.check_writable(what)?;
        let mut distinct = HashSet::with_capacity(names.len());
        for name in names {
            validate_shard_name(name)?;
            if !distinct.insert(*name) {
                return Err(Error::InvalidArgument(format!(
                    "shard name '{name}' is given twice"
                )));
            }
        }
        let spec = registry::spec(options.engine);
        spec.check(&options)?;
        options.check()?;
        if self.groups_stale.load(Ordering::Acquire) {
            // A deleted shard's offsets may still be in `groups.json`; a
            // new shard of its name must not inherit them at the next open.
            self.save_groups(&self.group_offsets.lock())?;
        }
        // Every engine of the build was built at open.
        let engine = self
            .engines
            .get(&options.engine)
            .cloned()
            .map_or_else(|| spec.build(&self.dir, &self.config), Ok)?;
        if needs_timer(&options, &self.config) {
            self.retention.ensure_running()?;
        }
        self.reserve(names)?;
        // The engine may wait for the shards' catalogue records to be
        // durable (one fdatasync for journal shards): the store-wide lock
        // is not held meanwhile, so appends and reads of other shards go
        // on, and concurrent creations share one flush.
        let created = engine.create_shards(names, &options);
        let mut shards = self.shards.write();
        {
            let mut creating = self.creating.lock();
            for name in names {
                creating.remove(*name);
            }
        }
        let created = created?;
        for (name, shard) in names.iter().zip(&created) {
            shards.insert(name.to_string(), shard.clone());
            self.producers.created(name);
        }
        drop(shards);
        if needs_timer(&options, &self.config) {
            for (name, shard) in names.iter().zip(&created) {
                let maintained = Maintained::new(name, &options, &self.producers);
                maintained.watch(&self.retention, shard, &self.config);
                if let Some(cleaner) = maintained.cleaner {
                    self.cleaners.lock().insert(name.to_string(), cleaner);
                }
            }
        }
        Ok(created)
    }

    /// Marks `names` as being created, unless one exists or is being
    /// created already (`ShardExists`, and none is marked).
    fn reserve(&self, names: &[&str]) -> Result<()> {
        let shards = self.shards.write();
        let mut creating = self.creating.lock();
        if let Some(taken) = names
            .iter()
            .find(|name| shards.contains_key(**name) || creating.contains(**name))
        {
            return Err(Error::ShardExists(taken.to_string()));
        }
        creating.extend(names.iter().map(|name| name.to_string()));
        Ok(())
    }

    /// Rewrites `groups.json` from `offsets`; clears the stale mark.
    fn save_groups(&self, offsets: &BTreeMap<(String, String), (i64, bool)>) -> Result<()> {
        save_group_offsets(&self.dir, offsets)?;
        self.groups_stale.store(false, Ordering::Release);
        Ok(())
    }

    /// Deletes a shard, its data and its committed group offsets. The
    /// engine's removal is the commit point: until it succeeded the shard
    /// stays listed (a creation of its name still finds it), and when it
    /// fails nothing changed, so a failure never leaves a shard that is
    /// gone now and back after a restart.
    pub fn delete_shard(&self, name: &str) -> Result<()> {
        let shard = self.writable_shard(name, "delete_shard")?;
        match self.engines.get(&shard.kind()) {
            Some(engine) => engine.remove_shard(name, &shard)?,
            None => {
                return Err(Error::Internal(format!(
                    "shard '{name}' has no engine in this store"
                )))
            }
        }
        {
            let mut shards = self.shards.write();
            if shards.get(name).is_some_and(|s| Arc::ptr_eq(s, &shard)) {
                shards.remove(name);
            }
        }
        self.retention.forget(&shard);
        self.cleaners.lock().remove(name);
        self.producers.forget(name);
        self.leader_epochs.write().remove(name);
        let mut offsets = self.group_offsets.lock();
        let before = offsets.len();
        let persistent = offsets
            .iter()
            .any(|((_, s), (_, persistent))| s == name && *persistent);
        offsets.retain(|(_, s), _| s != name);
        if persistent && offsets.len() != before && self.save_groups(&offsets).is_err() {
            // The shard is gone for good; its offsets left in the file are
            // dropped at the next open (no shard of that name), or by the
            // next rewrite, which a creation of the name forces first.
            self.groups_stale.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// Names of all shards, sorted.
    pub fn list_shards(&self) -> Result<Vec<String>> {
        self.check_open()?;
        let mut names: Vec<String> = self.shards.read().keys().cloned().collect();
        names.sort_unstable();
        Ok(names)
    }

    pub fn shard_info(&self, name: &str) -> Result<ShardInfo> {
        self.shard(name)?.info()
    }

    // --------------------------------------------------------------- appends

    fn validate_records(&self, records: &[Record<'_>]) -> Result<()> {
        if records.is_empty() {
            return Err(Error::InvalidArgument(
                "append_batch needs at least one record".into(),
            ));
        }
        let mut total = format::BATCH_HEADER_LEN;
        for (index, record) in records.iter().enumerate() {
            for header in &record.headers {
                if header.key.starts_with(RESERVED_HEADER_PREFIX) {
                    return Err(Error::InvalidArgument(format!(
                        "record {index}: header name '{}' uses the reserved prefix '{RESERVED_HEADER_PREFIX}'",
                        header.key
                    )));
                }
            }
            if record.timestamp_ms < 0 {
                return Err(Error::InvalidArgument(format!(
                    "record {index}: timestamp {} is negative",
                    record.timestamp_ms
                )));
            }
            let size = format::encoded_record_len(record, index as i32, 0);
            if size > self.config.max_record_bytes {
                return Err(Error::RecordTooLarge {
                    size,
                    limit: self.config.max_record_bytes,
                });
            }
            total += size;
        }
        if total > self.config.max_batch_bytes {
            return Err(Error::RecordTooLarge {
                size: total,
                limit: self.config.max_batch_bytes,
            });
        }
        Ok(())
    }

    /// Appends one record; returns its offset.
    pub fn append(&self, shard: &str, record: &Record<'_>) -> Result<i64> {
        self.append_batch(shard, std::slice::from_ref(record))
    }

    /// Appends records as one batch (atomically: all or none); returns the
    /// offset of the first. Acknowledged per the shard's durability mode.
    pub fn append_batch(&self, shard: &str, records: &[Record<'_>]) -> Result<i64> {
        let handle = self.writable_shard(shard, "append")?;
        let batch = self.new_batch(shard, handle.as_ref(), records)?;
        handle.append_batches(vec![batch], false)
    }

    /// `records` checked and encoded as one batch for `shard`, stamped
    /// with its leader epoch.
    fn new_batch(&self, name: &str, shard: &dyn Shard, records: &[Record<'_>]) -> Result<NewBatch> {
        self.validate_records(records)?;
        if shard.options().cleanup_policy.compacts() {
            if let Some(index) = records.iter().position(|r| r.key.is_none()) {
                return Err(keyless(name, format!("record {index}")));
            }
        }
        let mut batch = NewBatch::encode(records, shard.options(), crate::time::now_ms())?;
        self.stamp_leader_epoch(name, &mut batch.bytes);
        Ok(batch)
    }

    fn stamp_leader_epoch(&self, shard: &str, batch: &mut [u8]) {
        // Appends of a store whose broker sets no epochs touch no shared lock.
        if !self.leader_epochs_set.load(Ordering::Acquire) {
            return;
        }
        if let Some(&epoch) = self.leader_epochs.read().get(shard) {
            format::set_partition_leader_epoch(batch, epoch);
        }
    }

    /// Sets the partition leader epoch that appends to `shard` write into
    /// each batch from now on (Kafka's leader does the same; replicas keep
    /// the leader's). Epochs never go back (`InvalidArgument`). Kept in
    /// memory only: a broker sets it after every open, when it becomes
    /// the shard's leader; until then batches carry -1 (none).
    pub fn set_leader_epoch(&self, shard: &str, epoch: i32) -> Result<()> {
        self.shard(shard)?;
        if epoch < 0 {
            return Err(Error::InvalidArgument(format!(
                "shard '{shard}': leader epoch {epoch} is negative"
            )));
        }
        let mut epochs = self.leader_epochs.write();
        match epochs.get(shard) {
            Some(&current) if current > epoch => Err(Error::InvalidArgument(format!(
                "shard '{shard}': leader epoch {epoch} is older than the current {current}"
            ))),
            _ => {
                epochs.insert(shard.to_string(), epoch);
                self.leader_epochs_set.store(true, Ordering::Release);
                Ok(())
            }
        }
    }

    /// The leader epoch `set_leader_epoch` set for `shard`, if any.
    pub fn leader_epoch(&self, shard: &str) -> Result<Option<i32>> {
        self.shard(shard)?;
        Ok(self.leader_epochs.read().get(shard).copied())
    }

    /// Appends records as one batch like `append_batch`, but returns once
    /// the batch has its offsets (it is readable from then on) without
    /// waiting for the shard's durability mode: the journal's flusher
    /// threads write and sync it while the caller goes on. The batch is
    /// acknowledged only when `wait_durable` for its offsets returns. This
    /// lets one producer keep several batches in flight, as Kafka producers
    /// do. Other engines return once the batch is acknowledged.
    pub fn append_batch_nowait(&self, shard: &str, records: &[Record<'_>]) -> Result<i64> {
        let handle = self.writable_shard(shard, "append")?;
        let batch = self.new_batch(shard, handle.as_ref(), records)?;
        handle.append_batches(vec![batch], true)
    }

    /// Appends RecordBatch v2 bytes as a producer sent them: one or more
    /// batches back to back, checked as Kafka's log validator checks client
    /// batches (`format::validate`; nothing is stored when any batch is
    /// refused), then stored byte for byte but for the base offset, at
    /// consecutive offsets. Returns each batch's base offset. Acknowledged
    /// as `append_batch` is, once for all the batches.
    pub fn append_raw(&self, shard: &str, batches: &[u8]) -> Result<Vec<i64>> {
        self.append_raw_with(shard, batches, false)
    }

    /// `append_raw` that may return before the batches are durable, like
    /// `append_batch_nowait`; `wait_durable` for the last batch's last
    /// offset acknowledges them all.
    pub fn append_raw_nowait(&self, shard: &str, batches: &[u8]) -> Result<Vec<i64>> {
        self.append_raw_with(shard, batches, true)
    }

    /// Appends a leader's batches to a follower's shard, byte for byte,
    /// at the offsets they carry (what `plan_transfer` on the leader sent):
    /// they must continue the shard, or leave a gap where a compacted
    /// leader dropped whole batches (an empty batch fills it, so the
    /// shard's batches stay contiguous). Checked for damage (CRC,
    /// lengths, records) but not by the producer rules: control batches and
    /// any producer's batches are copied as the leader stored them, and the
    /// producers' state follows, so the follower can become leader. Returns
    /// the shard's next offset, once the batches are as durable as its mode
    /// requires. The follower's shard must have no other writer.
    pub fn append_replica(&self, name: &str, batches: &[u8]) -> Result<i64> {
        let shard = self.writable_shard(name, "append_replica")?;
        let validated =
            validate::validate_batches(batches, self.limits(), validate::Origin::Replica)?;
        let headers: Vec<format::BatchHeader> = validated.iter().map(|b| b.header).collect();
        let batches = validated.into_iter().map(NewBatch::from_sent).collect();
        self.producers
            .append_replica(name, shard.as_ref(), &headers, batches)
    }

    /// Cuts a follower's diverged tail: every batch at or after `offset`
    /// goes and the next append (or `append_replica`) gets `offset`.
    /// `offset` must lie within the watermarks and at a batch boundary
    /// (`InvalidArgument` names the batch it falls in). The producers'
    /// state is rebuilt from the batches that remain. Durable as the
    /// shard's mode makes appends durable.
    pub fn truncate_to(&self, name: &str, offset: i64) -> Result<()> {
        let shard = self.writable_shard(name, "truncate_to")?;
        let cut = || self.producers.truncate_to(name, shard.as_ref(), offset);
        let cleaner = self.cleaners.lock().get(name).cloned();
        match cleaner {
            Some(cleaner) => cleaner.truncate_with(offset, cut),
            None => cut(),
        }
    }

    /// Runs a compacted shard's cleaner now, to the end of a whole pass
    /// and without its I/O budget: whatever is cleanable (older than
    /// `min_compaction_lag_ms`, before the newest batch) keeps only the
    /// newest record of each key; tombstones older than
    /// `delete_retention_ms` go. The store's timer does the same in the
    /// background, within `compaction_bytes_per_s`.
    pub fn compact(&self, name: &str) -> Result<CompactionReport> {
        let shard = self.writable_shard(name, "compact")?;
        let cleaner = self.cleaners.lock().get(name).cloned().ok_or_else(|| {
            Error::InvalidArgument(format!(
                "shard '{name}' is not compacted (its cleanup_policy is '{}')",
                shard.options().cleanup_policy.name()
            ))
        })?;
        let protected = || self.producers.last_batches(name, shard.as_ref());
        cleaner.run_to_end(shard.as_ref(), &protected, crate::time::now_ms())
    }

    fn limits(&self) -> validate::Limits {
        validate::Limits {
            max_batch_bytes: self.config.max_batch_bytes,
            max_record_bytes: self.config.max_record_bytes,
        }
    }

    fn append_raw_with(&self, name: &str, batches: &[u8], pipelined: bool) -> Result<Vec<i64>> {
        let shard = self.writable_shard(name, "append_raw")?;
        let validated = validate::validate_producer_batches(batches, self.limits())?;
        if shard.options().cleanup_policy.compacts() {
            refuse_keyless_batches(name, &validated)?;
        }
        let headers: Vec<format::BatchHeader> = validated.iter().map(|b| b.header).collect();
        let now = crate::time::now_ms();
        let batches = validated
            .into_iter()
            .map(|b| {
                let mut batch = NewBatch::from_sent(b);
                batch.stamp(shard.options(), now);
                self.stamp_leader_epoch(name, &mut batch.bytes);
                batch
            })
            .collect();
        if headers
            .iter()
            .any(|h| h.producer_id != format::NO_PRODUCER_ID)
        {
            return self
                .producers
                .append(name, shard.as_ref(), &headers, batches, pipelined);
        }
        let first = shard.append_batches(batches, pipelined)?;
        Ok(producer::consecutive_bases(first, &headers))
    }

    /// Waits until the record at `offset` of `shard`, and every earlier
    /// one, is as durable as the shard's durability mode promises: the
    /// acknowledgement of pipelined appends (`append_batch_nowait`).
    /// `offset` must be below the shard's next offset; records deleted
    /// meanwhile count as acknowledged.
    pub fn wait_durable(&self, shard: &str, offset: i64) -> Result<()> {
        self.shard(shard)?.wait_durable(offset)
    }

    // ------------------------------------------------ event-loop notifications

    fn notifier(&self) -> Result<Arc<Notifier>> {
        let mut slot = self.notifier.lock();
        if let Some(notifier) = slot.as_ref() {
            return Ok(notifier.clone());
        }
        self.check_open()?;
        let notifier = Arc::new(Notifier::new()?);
        *slot = Some(notifier.clone());
        Ok(notifier)
    }

    /// An eventfd that is readable while completions of watched offsets
    /// wait to be polled (`poll_durable`): register it with epoll/poll or an
    /// event loop. It belongs to the store and stays valid until the store
    /// is dropped (also after `close`, so the last completions can be
    /// polled); do not close or read it.
    pub fn durable_fd(&self) -> Result<RawFd> {
        self.check_open()?;
        Ok(self.notifier()?.fd())
    }

    /// Asks for a completion carrying `token` once the record at `offset`
    /// of `shard` and every earlier one are as durable as the shard's mode
    /// promises — `wait_durable` without blocking the caller. Completions
    /// come in the order of the watches (across shards too). `offset` must
    /// have been appended.
    pub fn watch_durable(&self, shard: &str, offset: i64, token: u64) -> Result<()> {
        let handle = self.shard(shard)?;
        let next = handle.info()?.next_offset;
        crate::engine::scan::check_appended(shard, offset, next)?;
        self.notifier()?.watch(handle, offset, token)
    }

    /// `append_batch_nowait`, then `watch_durable` for the batch with
    /// `token`: the batch is acknowledged by its completion (whose offset is
    /// the base offset returned here).
    pub fn append_batch_notify(
        &self,
        shard: &str,
        records: &[Record<'_>],
        token: u64,
    ) -> Result<i64> {
        self.check_writable("append")?;
        // Started first: a batch appended must not miss its completion.
        let notifier = self.notifier()?;
        let handle = self.shard(shard)?;
        let batch = self.new_batch(shard, handle.as_ref(), records)?;
        let base = handle.append_batches(vec![batch], true)?;
        notifier.watch(handle, base, token)?;
        Ok(base)
    }

    /// Takes up to `max` completions, oldest first, without blocking; empty
    /// when none is ready. Works after `close` too (close completes every
    /// watch first).
    pub fn poll_durable(&self, max: usize) -> Vec<Completion> {
        let notifier = self.notifier.lock().clone();
        notifier.map_or_else(Vec::new, |n| n.poll(max))
    }

    /// Completions ready to be polled.
    pub fn durable_ready(&self) -> usize {
        let notifier = self.notifier.lock().clone();
        notifier.map_or(0, |n| n.ready())
    }

    // ----------------------------------------------------------------- reads

    /// Reads up to `max_records` records (and about `max_bytes` of key, value
    /// and header bytes, at least one record) from `offset` on.
    pub fn read(
        &self,
        shard: &str,
        offset: i64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<ReadResult> {
        if max_records == 0 {
            return Err(Error::InvalidArgument(
                "max_records must be at least 1".into(),
            ));
        }
        self.shard(shard)?.read(
            offset,
            ReadLimits {
                max_records,
                max_bytes,
            },
        )
    }

    pub fn read_by_keys(
        &self,
        shard: &str,
        keys: &[&[u8]],
        max_records: usize,
    ) -> Result<Vec<RecordView>> {
        if max_records == 0 {
            return Err(Error::InvalidArgument(
                "max_records must be at least 1".into(),
            ));
        }
        self.shard(shard)?.read_by_keys(keys, max_records)
    }

    pub fn read_by_tag(
        &self,
        shard: &str,
        tag: &str,
        from_offset: i64,
        max_records: usize,
    ) -> Result<ReadResult> {
        if max_records == 0 {
            return Err(Error::InvalidArgument(
                "max_records must be at least 1".into(),
            ));
        }
        self.shard(shard)?
            .read_by_tag(tag.as_bytes(), from_offset, max_records)
    }

    /// First offset with timestamp ≥ `timestamp_ms`; `-2` (earliest) and `-1`
    /// (latest) return the low and high watermarks. `None` when no record is
    /// that recent.
    pub fn offset_for_timestamp(&self, shard: &str, timestamp_ms: i64) -> Result<Option<i64>> {
        if timestamp_ms < TIMESTAMP_EARLIEST {
            return Err(Error::InvalidArgument(format!(
                "timestamp {timestamp_ms} is negative (use -2 for earliest, -1 for latest)"
            )));
        }
        self.shard(shard)?.offset_for_timestamp(timestamp_ms)
    }

    // --------------------------------------------------------------- deletes

    /// Moves the low watermark up to `offset`; returns the new low watermark.
    pub fn delete_records_before(&self, shard: &str, offset: i64) -> Result<i64> {
        if offset < 0 {
            return Err(Error::InvalidArgument(format!(
                "offset {offset} is negative"
            )));
        }
        self.writable_shard(shard, "delete_records_before")?
            .delete_records_before(offset)
    }

    pub fn delete_by_keys(&self, shard: &str, keys: &[&[u8]]) -> Result<u64> {
        self.writable_shard(shard, "delete_by_keys")?
            .delete_by_keys(keys)
    }

    pub fn delete_by_offsets(&self, shard: &str, offsets: &[i64]) -> Result<u64> {
        self.writable_shard(shard, "delete_by_offsets")?
            .delete_by_offsets(offsets)
    }

    // ------------------------------------------------------------- transfers

    /// Plans a transfer of whole batches from `offset`: at most `max_bytes`,
    /// but at least one batch when any is stored. The plan's
    /// `total_bytes()`/`next_offset()` are exact, and sending it writes
    /// exactly those bytes whatever happens to the shard meanwhile.
    pub fn plan_transfer(
        &self,
        shard: &str,
        offset: i64,
        max_bytes: usize,
    ) -> Result<TransferPlan> {
        self.shard(shard)?.plan_transfer(offset, max_bytes)
    }

    /// Plans and sends in one call, waiting (poll) when a non-blocking `fd`
    /// is full, so the stream is never cut mid-batch.
    pub fn sendfile_to_fd(
        &self,
        shard: &str,
        offset: i64,
        max_bytes: usize,
        fd: RawFd,
    ) -> Result<SendfileResult> {
        if fd < 0 {
            return Err(Error::InvalidArgument(format!(
                "file descriptor {fd} is invalid"
            )));
        }
        let mut plan = self.plan_transfer(shard, offset, max_bytes)?;
        let bytes_written = plan.send_all_to_fd(fd)?;
        Ok(SendfileResult {
            bytes_written,
            next_offset: plan.next_offset(),
        })
    }

    // --------------------------------------------------------- group offsets

    /// Records that `group` has consumed `shard` up to (not including) `offset`.
    pub fn commit_offset(&self, group: &str, shard: &str, offset: i64) -> Result<()> {
        if group.is_empty() {
            return Err(Error::InvalidArgument("group name is empty".into()));
        }
        if offset < 0 {
            return Err(Error::InvalidArgument(format!(
                "offset {offset} is negative"
            )));
        }
        let handle = self.writable_shard(shard, "commit_offset")?;
        // Commits of one (group, shard) are applied in order; others go on
        // meanwhile: the engine's durable write happens outside the map's
        // lock, which only guards the in-memory update.
        let _in_order = self.commit_order[commit_stripe(group, shard)].lock();
        let in_engine =
            is_persistent(handle.kind()) && handle.save_group_offset(group, Some(offset))?;
        // Kept in `groups.json` when the shard outlives the process and its
        // engine has no place of its own.
        let persistent = is_persistent(handle.kind()) && !in_engine;
        let mut offsets = self.group_offsets.lock();
        let key = (group.to_string(), shard.to_string());
        let previous = offsets.insert(key.clone(), (offset, persistent));
        if persistent && previous != Some((offset, persistent)) {
            // Durable before acknowledged, like the shard it belongs to.
            if let Err(e) = self.save_groups(&offsets) {
                match previous {
                    Some(old) => offsets.insert(key, old),
                    None => offsets.remove(&key),
                };
                return Err(e);
            }
        }
        Ok(())
    }

    /// The offset `group` committed for `shard`, if any.
    pub fn committed_offset(&self, group: &str, shard: &str) -> Result<Option<i64>> {
        self.shard(shard)?;
        Ok(self
            .group_offsets
            .lock()
            .get(&(group.to_string(), shard.to_string()))
            .map(|(offset, _)| *offset))
    }

    /// Forgets every offset of `group`; returns how many were removed.
    pub fn delete_group(&self, group: &str) -> Result<u64> {
        self.check_writable("delete_group")?;
        let shards: Vec<String> = self
            .group_offsets
            .lock()
            .keys()
            .filter(|(g, _)| g == group)
            .map(|(_, shard)| shard.clone())
            .collect();
        let (mut removed, mut rewrite) = (0u64, false);
        for shard in shards {
            // In order with the commits of this (group, shard).
            let _in_order = self.commit_order[commit_stripe(group, &shard)].lock();
            let handle = self.shards.read().get(&shard).cloned();
            if let Some(handle) = handle {
                handle.save_group_offset(group, None)?;
            }
            let key = (group.to_string(), shard);
            if let Some((_, persistent)) = self.group_offsets.lock().remove(&key) {
                removed += 1;
                rewrite |= persistent;
            }
        }
        if rewrite {
            save_group_offsets(&self.dir, &self.group_offsets.lock())?;
        }
        Ok(removed)
    }

    // ----------------------------------------------------------------- stats

    /// Store-wide statistics as JSON: totals per engine and per shard.
    pub fn stats(&self) -> Result<serde_json::Value> {
        self.check_open()?;
        // Snapshot the map: an engine may take its time answering (a
        // remote one), and must not hold up shard creation meanwhile.
        let mut shards: Vec<(String, Arc<dyn Shard>)> = self
            .shards
            .read()
            .iter()
            .map(|(name, shard)| (name.clone(), shard.clone()))
            .collect();
        shards.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let cleaners = self.cleaners.lock().clone();
        let mut per_engine: BTreeMap<&'static str, (u64, u64, u64)> = BTreeMap::new();
        let mut shard_stats = serde_json::Map::new();
        for (name, shard) in shards {
            let entry = per_engine.entry(shard.kind().name()).or_default();
            entry.0 += 1;
            // One shard that cannot answer does not hide the others.
            let cleaner = cleaners.get(&name).map(Arc::as_ref);
            let stats = shard_json(shard.as_ref(), cleaner).unwrap_or_else(
                |e| serde_json::json!({"error": e.to_string(), "status": e.status().as_str()}),
            );
            entry.1 += stats["records"].as_u64().unwrap_or(0);
            entry.2 += stats["bytes"].as_u64().unwrap_or(0);
            shard_stats.insert(name, stats);
        }
        let engines: serde_json::Map<String, serde_json::Value> = per_engine
            .into_iter()
            .map(|(name, (count, records, bytes))| {
                (
                    name.to_string(),
                    serde_json::json!({"shards": count, "records": records, "bytes": bytes}),
                )
            })
            .collect();
        Ok(serde_json::json!({
            "dir": self.dir.display().to_string(),
            "shard_count": shard_stats.len(),
            "engines": engines,
            "capabilities": registry::to_json(),
            "group_offsets": self.group_offsets.lock().len(),
            "retention": self.retention.stats(),
            "log": crate::log::counts(),
            "shards": shard_stats,
        }))
    }

    /// One shard's statistics as JSON.
    pub fn shard_stats(&self, name: &str) -> Result<serde_json::Value> {
        let shard = self.shard(name)?;
        let cleaner = self.cleaners.lock().get(name).cloned();
        shard_json(shard.as_ref(), cleaner.as_deref())
    }
}

/// Whether the store's timer has work on a shard with `options`: age
/// retention or compaction (never in a read-only store).
fn needs_timer(options: &ShardOptions, config: &Config) -> bool {
    !config.read_only && (options.retention_ms > 0 || options.cleanup_policy.compacts())
}

/// A shard's work for the timer: its cleaner when it is compacted.
struct Maintained {
    cleaner: Option<Arc<ShardCleaner>>,
    task: Option<ShardTask>,
}

impl Maintained {
    fn new(name: &str, options: &ShardOptions, producers: &Arc<Producers>) -> Maintained {
        if !options.cleanup_policy.compacts() {
            return Maintained {
                cleaner: None,
                task: None,
            };
        }
        let cleaner = Arc::new(ShardCleaner::default());
        let (name, producers, runner) = (name.to_string(), producers.clone(), cleaner.clone());
        let task: ShardTask = Arc::new(move |shard: &dyn Shard, now_ms: i64| {
            let protected = || producers.last_batches(&name, shard);
            let budget = runner.budget.load(Ordering::Relaxed);
            runner
                .run(shard, &protected, now_ms, Some(budget))
                .map(drop)
        });
        Maintained {
            cleaner: Some(cleaner),
            task: Some(task),
        }
    }

    /// Has `timer` visit `shard` with the cleaner, whose budget per visit
    /// is the store's compaction rate over the timer's period.
    fn watch(&self, timer: &RetentionTimer, shard: &Arc<dyn Shard>, config: &Config) {
        if let Some(cleaner) = &self.cleaner {
            let per_visit =
                config.compaction_bytes_per_s as u128 * timer.interval().as_millis() / 1000;
            cleaner.budget.store(
                per_visit.clamp(1, u64::MAX as u128) as u64,
                Ordering::Relaxed,
            );
        }
        timer.watch(shard, self.task.clone());
    }
}

fn keyless(shard: &str, which: String) -> Error {
    Error::InvalidArgument(format!(
        "shard '{shard}' is compacted: {which} has no key; compaction keeps the newest \
         record of each key, so every record needs one"
    ))
}

/// Refuses producer batches holding a record without a key, as Kafka's
/// log validator does for a compacted topic (this decodes the records).
fn refuse_keyless_batches(shard: &str, batches: &[validate::ProducerBatch]) -> Result<()> {
    for (index, batch) in batches.iter().enumerate() {
        let mut keyless_delta = None;
        format::for_each_record(&batch.bytes, false, |record| {
            if record.key.is_none() {
                keyless_delta = Some(record.offset - batch.header.base_offset);
                return false;
            }
            true
        })?;
        if let Some(delta) = keyless_delta {
            return Err(keyless(
                shard,
                format!("batch {index}, record at offset delta {delta},"),
            ));
        }
    }
    Ok(())
}

fn shard_json(shard: &dyn Shard, cleaner: Option<&ShardCleaner>) -> Result<serde_json::Value> {
    let mut value = serde_json::to_value(shard.info()?).unwrap_or_default();
    if let Some(object) = value.as_object_mut() {
        object.insert("engine_stats".into(), shard.stats()?);
        if let Some(cleaner) = cleaner {
            object.insert("compaction".into(), cleaner.stats());
        }
    }
    Ok(value)
}

impl Drop for Store {
    fn drop(&mut self) {
        if !self.is_closed() {
            let _ = self.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::take_synced_dirs;
    use crate::thread::failpoint::fail_spawn;
    use crate::Status;

    fn memory_config() -> Config {
        Config::from_toml_str("[shard]\nengine = \"memory\"\n").unwrap()
    }

    /// Where `dir` is in the list of fsynced directories (it must be).
    fn synced_at(synced: &[PathBuf], dir: &Path) -> usize {
        synced
            .iter()
            .position(|d| d == dir)
            .unwrap_or_else(|| panic!("'{}' was not fsynced; fsynced: {synced:?}", dir.display()))
    }

    /// A directory entry is durable only once its parent is fsynced: open
    /// fsyncs the parent of every directory it creates, from the top down.
    #[test]
    fn open_makes_every_directory_it_creates_durable() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a").join("b").join("store");
        take_synced_dirs();
        let store = Store::open(&dir, memory_config()).unwrap();
        let synced = take_synced_dirs();
        let parents = [
            root.path().to_path_buf(),
            root.path().join("a"),
            root.path().join("a").join("b"),
        ];
        let order: Vec<usize> = parents.iter().map(|p| synced_at(&synced, p)).collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{synced:?}");
        store.close().unwrap();

        // Reopening creates nothing, so it fsyncs no parent.
        take_synced_dirs();
        Store::open(&dir, memory_config()).unwrap().close().unwrap();
        let synced = take_synced_dirs();
        assert!(!synced.iter().any(|d| parents.contains(d)), "{synced:?}");
    }

    /// The engines' own directories (`file/`, `journal/`) are as durable.
    #[test]
    fn engine_directories_are_durable() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path(), memory_config()).unwrap();
        let mut engines = vec![("f", "file")];
        if cfg!(feature = "journal") {
            engines.push(("j", "journal"));
        }
        for (name, engine) in engines {
            take_synced_dirs();
            let options = format!("engine = \"{engine}\"\ndurability = \"os\"\n");
            store.create_shard(name, Some(&options)).unwrap();
            assert!(root.path().join(engine).is_dir());
            synced_at(&take_synced_dirs(), root.path());
        }
        store.close().unwrap();
    }

    fn values(store: &Store, shard: &str) -> Vec<Vec<u8>> {
        let read = store.read(shard, 0, usize::MAX, usize::MAX).unwrap();
        read.records
            .iter()
            .map(|r| r.value_bytes().to_vec())
            .collect()
    }

    /// A background thread that failed to start: an I/O error naming it.
    fn assert_thread_failed(err: &Error, thread: &str) {
        assert_eq!(err.status(), Status::Io, "{err}");
        let message = err.to_string();
        assert!(message.contains(&format!("'{thread}'")), "{message}");
    }

    #[cfg(feature = "journal")]
    const JOURNAL: &str = "[shard]\nengine = \"journal\"\n[journal]\nsegment_bytes = 1048576\n";

    /// Opening a journal that needs a thread which cannot start fails,
    /// naming the thread, and leaves the store as it found it: unlocked,
    /// its data intact.
    #[cfg(feature = "journal")]
    #[test]
    fn open_fails_when_a_journal_thread_cannot_start() {
        let dir = tempfile::tempdir().unwrap();
        let config = || Config::from_toml_str(JOURNAL).unwrap();
        let store = Store::open(dir.path(), config()).unwrap();
        store.create_shard("s", None).unwrap();
        store.append("s", &Record::new(b"kept")).unwrap();
        store.close().unwrap();
        for thread in ["mqs-journal-ckpt", "mqs-journal-prefill"] {
            let _failing = fail_spawn(thread);
            let err = Store::open(dir.path(), config()).unwrap_err();
            assert_thread_failed(&err, thread);
        }
        let store = Store::open(dir.path(), config()).unwrap();
        assert_eq!(values(&store, "s"), [b"kept".to_vec()]);
        store.close().unwrap();
    }

    /// The journal is created by the first journal shard; when its threads
    /// cannot start, that creation fails and can be retried.
    #[cfg(feature = "journal")]
    #[test]
    fn creating_the_journal_fails_when_its_threads_cannot_start() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Config::from_toml_str(JOURNAL).unwrap()).unwrap();
        for thread in ["mqs-journal-ckpt", "mqs-journal-prefill"] {
            let _failing = fail_spawn(thread);
            let err = store.create_shard("s", None).unwrap_err();
            assert_thread_failed(&err, thread);
            assert!(store.list_shards().unwrap().is_empty());
        }
        store.create_shard("s", None).unwrap();
        store.append("s", &Record::new(b"v")).unwrap();
        assert_eq!(values(&store, "s"), [b"v".to_vec()]);
        store.close().unwrap();
    }

    /// The first pipelined append starts the journal's flushers: when they
    /// cannot start, it fails naming them (its batch, logged already, is
    /// unacknowledged like that of any failed append), and the next one
    /// starts them.
    #[cfg(feature = "journal")]
    #[test]
    fn a_pipelined_append_fails_when_the_flushers_cannot_start() {
        let dir = tempfile::tempdir().unwrap();
        let config = || Config::from_toml_str(JOURNAL).unwrap();
        let store = Store::open(dir.path(), config()).unwrap();
        store.create_shard("s", None).unwrap();
        {
            let _failing = fail_spawn("mqs-journal-flush");
            let err = store
                .append_batch_nowait("s", &[Record::new(b"first")])
                .unwrap_err();
            assert_thread_failed(&err, "mqs-journal-flush");
        }
        let offset = store
            .append_batch_nowait("s", &[Record::new(b"second")])
            .unwrap();
        store.wait_durable("s", offset).unwrap();
        store.close().unwrap();
        let store = Store::open(dir.path(), config()).unwrap();
        assert_eq!(values(&store, "s"), [b"first".to_vec(), b"second".to_vec()]);
        store.close().unwrap();
    }

    const FILE_INTERVAL: &str =
        "[shard]\nengine = \"file\"\ndurability = \"os\"\n[file]\nflush = \"interval\"\n";

    /// The File engine's flusher (`flush = "interval"`): the first file
    /// shard's creation or the open of a store with file shards fails when
    /// it cannot start, and the failed open leaves the files untouched (a
    /// clean close's marker stays, so the next open need not scan).
    #[test]
    fn file_engine_calls_fail_when_its_flusher_cannot_start() {
        let dir = tempfile::tempdir().unwrap();
        let config = || Config::from_toml_str(FILE_INTERVAL).unwrap();
        let store = Store::open(dir.path(), config()).unwrap();
        {
            let _failing = fail_spawn("mqs-file-flush");
            let err = store.create_shard("s", None).unwrap_err();
            assert_thread_failed(&err, "mqs-file-flush");
            assert!(store.list_shards().unwrap().is_empty());
        }
        store.create_shard("s", None).unwrap();
        store.append("s", &Record::new(b"kept")).unwrap();
        store.close().unwrap();
        let marker = dir.path().join("file").join("CLEAN");
        assert!(marker.exists());
        {
            let _failing = fail_spawn("mqs-file-flush");
            let err = Store::open(dir.path(), config()).unwrap_err();
            assert_thread_failed(&err, "mqs-file-flush");
        }
        assert!(marker.exists());
        let store = Store::open(dir.path(), config()).unwrap();
        assert_eq!(values(&store, "s"), [b"kept".to_vec()]);
        store.close().unwrap();
    }

    /// A shard whose engine cannot answer (a remote engine whose server is
    /// unreachable), wrapping a working one for everything else: `info`
    /// and `stats` fail unless `answers_info`, transfers always fail.
    struct Unreachable(Arc<dyn Shard>, bool);

    fn unreachable() -> Error {
        Error::io(
            "asking the engine's server",
            std::io::Error::from_raw_os_error(libc::ECONNREFUSED),
        )
    }

    impl Shard for Unreachable {
        fn kind(&self) -> EngineKind {
            self.0.kind()
        }
        fn info(&self) -> Result<ShardInfo> {
            if self.1 {
                return self.0.info();
            }
            Err(unreachable())
        }
        fn expire(&self, now_ms: i64) -> Result<()> {
            self.0.expire(now_ms)
        }
        fn stats(&self) -> Result<serde_json::Value> {
            if self.1 {
                return self.0.stats();
            }
            Err(unreachable())
        }
        fn options(&self) -> &ShardOptions {
            self.0.options()
        }
        fn append_batches(&self, batches: Vec<NewBatch>, pipelined: bool) -> Result<i64> {
            self.0.append_batches(batches, pipelined)
        }
        fn read(&self, from: i64, limits: ReadLimits) -> Result<ReadResult> {
            self.0.read(from, limits)
        }
        fn read_by_keys(&self, keys: &[&[u8]], max: usize) -> Result<Vec<RecordView>> {
            self.0.read_by_keys(keys, max)
        }
        fn read_by_tag(&self, tag: &[u8], from: i64, max: usize) -> Result<ReadResult> {
            self.0.read_by_tag(tag, from, max)
        }
        fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<i64>> {
            self.0.offset_for_timestamp(timestamp_ms)
        }
        fn delete_records_before(&self, offset: i64) -> Result<i64> {
            self.0.delete_records_before(offset)
        }
        fn delete_where(
            &self,
            within: std::ops::Range<i64>,
            matches: &mut dyn FnMut(&RecordView) -> bool,
        ) -> Result<u64> {
            self.0.delete_where(within, matches)
        }
        fn truncate_to(&self, offset: i64) -> Result<()> {
            self.0.truncate_to(offset)
        }
        fn plan_transfer(&self, _: i64, _: usize) -> Result<TransferPlan> {
            Err(unreachable())
        }
    }

    /// A producer batch: id 7, epoch 0, base sequence 0, one record.
    fn producer_batch() -> Vec<u8> {
        use crate::format::{
            encode_batch, ATTRIBUTES_OFFSET, BASE_SEQUENCE_OFFSET, CRC_OFFSET,
            PRODUCER_EPOCH_OFFSET, PRODUCER_ID_OFFSET,
        };
        let mut b = encode_batch(&[Record::new(b"p")], crate::Compression::None, 1_000)
            .unwrap()
            .bytes;
        b[PRODUCER_ID_OFFSET..PRODUCER_ID_OFFSET + 8].copy_from_slice(&7i64.to_be_bytes());
        b[PRODUCER_EPOCH_OFFSET..PRODUCER_EPOCH_OFFSET + 2].copy_from_slice(&0i16.to_be_bytes());
        b[BASE_SEQUENCE_OFFSET..BASE_SEQUENCE_OFFSET + 4].copy_from_slice(&0i32.to_be_bytes());
        let crc = crc32c::crc32c(&b[ATTRIBUTES_OFFSET..]);
        b[CRC_OFFSET..ATTRIBUTES_OFFSET].copy_from_slice(&crc.to_be_bytes());
        b
    }

    /// A truncation whose rebuild of the producers' state fails (here its
    /// scan of the shard) leaves the next producer append to rebuild it,
    /// even in a store opened after a clean close (which otherwise takes a
    /// shard without saved state for one without producers).
    #[test]
    fn a_failed_producer_rebuild_after_a_truncation_is_redone() {
        let dir = tempfile::tempdir().unwrap();
        Store::open(dir.path(), memory_config())
            .unwrap()
            .close()
            .unwrap();
        let store = Store::open(dir.path(), memory_config()).unwrap();
        store.create_shard("s", None).unwrap();
        let batch = producer_batch();
        assert_eq!(store.append_raw("s", &batch).unwrap(), [0]);
        store.append("s", &Record::new(b"cut")).unwrap();
        let inner = store.shards.read()["s"].clone();
        store
            .shards
            .write()
            .insert("s".into(), Arc::new(Unreachable(inner.clone(), true)));
        let err = store.truncate_to("s", 1).unwrap_err();
        assert_eq!(err.status(), Status::Io, "{err}");
        store.shards.write().insert("s".into(), inner);
        assert_eq!(store.shard_info("s").unwrap().next_offset, 1);
        let retry = store.append_raw("s", &batch).unwrap_err();
        assert_eq!(retry.status(), Status::DuplicateSequence, "{retry}");
        store.close().unwrap();
    }

    /// `info` and `stats` failing reach the caller of the shard's calls as
    /// that error; the store-wide stats still report every other shard.
    #[test]
    fn a_shard_that_cannot_answer_is_reported_not_hidden() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), memory_config()).unwrap();
        store.create_shard("down", None).unwrap();
        store.create_shard("up", None).unwrap();
        store.append("up", &Record::new(b"x")).unwrap();
        {
            let mut shards = store.shards.write();
            let inner = shards["down"].clone();
            shards.insert("down".into(), Arc::new(Unreachable(inner, false)));
        }
        for err in [
            store.shard_info("down").unwrap_err(),
            store.shard_stats("down").unwrap_err(),
        ] {
            assert_eq!(err.status(), Status::Io, "{err}");
            assert!(err.to_string().contains("server"), "{err}");
        }
        let stats = store.stats().unwrap();
        assert_eq!(stats["shards"]["down"]["status"], "I/O error");
        assert!(stats["shards"]["down"]["error"]
            .as_str()
            .unwrap()
            .contains("server"));
        assert_eq!(stats["shards"]["up"]["records"], 1);
        assert_eq!(stats["engines"]["memory"]["shards"], 2);
        assert_eq!(stats["capabilities"]["memory"]["persistent"], false);
        assert_eq!(stats["capabilities"]["journal"]["pipelined"], true);
    }
}
