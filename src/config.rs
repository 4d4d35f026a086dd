//! Store and shard configuration: one TOML schema (the `storage.toml` file,
//! also accepted as a string through every binding), presets for the brief's
//! scenarios, and strict validation — an unknown key or a bad value is an
//! error that names the key, never silently ignored.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::format::Compression;
use crate::{Error, Result};

/// Storage engines a shard can live on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EngineKind {
    Memory,
    Journal,
    File,
    Rocksdb,
    S3,
    Hybrid,
    Mysql,
    Redis,
}

impl EngineKind {
    /// The name in configurations and every API (from the engine registry).
    pub fn name(self) -> &'static str {
        crate::engine::registry::spec(self).name
    }

    /// Whether this build has the engine.
    pub fn is_available(self) -> bool {
        crate::engine::registry::spec(self).available()
    }
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// When an append is acknowledged. See README "Durability" for the exact
/// contract per engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Acknowledged once the batch is in the engine's memory.
    None,
    /// Acknowledged once handed to the kernel (survives a process crash, not a power loss).
    Os,
    /// Acknowledged only after the bytes are on stable storage (fdatasync).
    #[default]
    Fsync,
}

impl Durability {
    pub fn name(self) -> &'static str {
        match self {
            Durability::None => "none",
            Durability::Os => "os",
            Durability::Fsync => "fsync",
        }
    }
}

/// Which time a batch's timestamps are (Kafka's `message.timestamp.type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestampType {
    /// As the producer (or the record API's caller) set them.
    #[default]
    CreateTime,
    /// The time of the append: a batch's max timestamp is set to it and the
    /// batch marked LogAppendTime (its CRC recomputed), so every record
    /// reads with that time, as a Kafka broker does.
    LogAppendTime,
}

impl TimestampType {
    pub fn name(self) -> &'static str {
        match self {
            TimestampType::CreateTime => "create_time",
            TimestampType::LogAppendTime => "log_append_time",
        }
    }
}

/// What happens to a shard's old records (Kafka's `cleanup.policy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum CleanupPolicy {
    /// Retention (`retention_ms`, `_bytes`, `_records`) removes whole old
    /// batches.
    #[default]
    #[serde(rename = "delete")]
    Delete,
    /// A background cleaner keeps the newest record of each key; records
    /// need a key. No retention limits.
    #[serde(rename = "compact")]
    Compact,
    /// Both: the cleaner compacts, and retention removes old batches.
    #[serde(rename = "compact,delete")]
    CompactDelete,
}

impl CleanupPolicy {
    pub fn name(self) -> &'static str {
        match self {
            CleanupPolicy::Delete => "delete",
            CleanupPolicy::Compact => "compact",
            CleanupPolicy::CompactDelete => "compact,delete",
        }
    }

    /// Whether the cleaner compacts the shard.
    pub fn compacts(self) -> bool {
        self != CleanupPolicy::Delete
    }
}

/// Kafka's `delete.retention.ms` default: a day.
pub const DEFAULT_DELETE_RETENTION_MS: u64 = 86_400_000;

/// The scenario presets from the product brief.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    /// Ultra-low latency, loss tolerated: Memory engine, no persistence.
    Financial,
    /// Durable streaming (the brief's default): Journal engine with fsync.
    Streaming,
    /// Hot journal tier over an object-store cold tier, compressed.
    BigData,
    /// Small footprint: File engine within 100 MB of memory.
    Edge,
}

/// Resolved options of one shard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ShardOptions {
    pub engine: EngineKind,
    pub durability: Durability,
    #[serde(serialize_with = "serialize_compression")]
    pub compression: Compression,
    /// Segment size for file-backed engines (bytes).
    pub segment_bytes: u64,
    /// Delete whole batches whose newest timestamp is older than this (ms); 0 = keep forever.
    pub retention_ms: u64,
    /// Keep at most this many stored bytes; 0 = unlimited.
    pub retention_bytes: u64,
    /// Keep at most this many records; 0 = unlimited.
    pub retention_records: u64,
    pub timestamp_type: TimestampType,
    pub cleanup_policy: CleanupPolicy,
    /// Compacted shards: a tombstone (null value) older than this (by its
    /// timestamp) is removed with the key's earlier records.
    pub delete_retention_ms: u64,
    /// Compacted shards: records younger than this are not compacted.
    pub min_compaction_lag_ms: u64,
}

fn serialize_compression<S: serde::Serializer>(
    c: &Compression,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(c.name())
}

impl ShardOptions {
    /// The options as `[shard]` TOML keys: what the persistent engines
    /// store, read back with `Config::shard_options`.
    pub fn to_toml(&self) -> String {
        let mut text = format!(
            "engine = \"{}\"\ndurability = \"{}\"\ncompression = \"{}\"\nsegment_bytes = {}\n\
             retention_ms = {}\nretention_bytes = {}\nretention_records = {}\n\
             timestamp_type = \"{}\"\n",
            self.engine.name(),
            self.durability.name(),
            self.compression.name(),
            self.segment_bytes,
            self.retention_ms,
            self.retention_bytes,
            self.retention_records,
            self.timestamp_type.name()
        );
        // Only compacted shards carry their compaction keys: a million
        // catalogue records stay as small as they were.
        if self.cleanup_policy.compacts() {
            text += &format!(
                "cleanup_policy = \"{}\"\ndelete_retention_ms = {}\nmin_compaction_lag_ms = {}\n",
                self.cleanup_policy.name(),
                self.delete_retention_ms,
                self.min_compaction_lag_ms
            );
        }
        text
    }

    /// Refuses option combinations no shard can honour.
    pub fn check(&self) -> Result<()> {
        let limited =
            self.retention_ms > 0 || self.retention_bytes > 0 || self.retention_records > 0;
        if self.cleanup_policy == CleanupPolicy::Compact && limited {
            return Err(Error::InvalidConfig(
                "cleanup_policy: 'compact' keeps the newest record of every key, so retention_ms, \
                 retention_bytes and retention_records must be 0; use 'compact,delete' for both"
                    .into(),
            ));
        }
        Ok(())
    }
}

impl Default for ShardOptions {
    fn default() -> Self {
        // The brief's default scenario (streaming): durable journal shards,
        // acknowledged only once fsynced. Faster, weaker modes are opt-in.
        ShardOptions {
            engine: EngineKind::Journal,
            durability: Durability::Fsync,
            compression: Compression::None,
            segment_bytes: 1 << 30,
            retention_ms: 0,
            retention_bytes: 0,
            retention_records: 0,
            timestamp_type: TimestampType::CreateTime,
            cleanup_policy: CleanupPolicy::Delete,
            delete_retention_ms: DEFAULT_DELETE_RETENTION_MS,
            min_compaction_lag_ms: 0,
        }
    }
}

/// What the journal engine does, on open, with an entry that fails
/// validation (bad magic, bad CRC, truncated).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecoveryMode {
    /// An invalid entry with nothing valid after it is a torn tail (a crash
    /// mid-write): it is truncated. An invalid entry followed by any valid
    /// entry is corruption in the middle of the log: open fails.
    #[default]
    TolerateTail,
    /// Like `tolerate_tail`, but invalid entries in the middle are skipped
    /// (the journal resynchronises on the next valid entry) instead of
    /// failing the open. Data in the skipped range is lost.
    SkipCorrupt,
}

/// How the journal submits its writes and fdatasyncs (`[journal] io`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IoMode {
    /// io_uring when the system provides it, else pwrite/fdatasync.
    #[default]
    Auto,
    /// io_uring; opening the journal fails if it is unavailable.
    Uring,
    /// pwrite(2) + fdatasync(2).
    Pwrite,
}

/// Store-wide settings of the journal engine (the `[journal]` section).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct JournalConfig {
    /// Size of one journal segment file (all shards share the segments).
    pub segment_bytes: u64,
    /// Appends with durability `none` are buffered up to this many bytes
    /// before the buffer is handed to the kernel.
    pub buffer_bytes: u64,
    pub recovery_mode: RecoveryMode,
    /// Submission path of the journal's I/O.
    pub io: IoMode,
    /// Write with O_DIRECT from aligned buffers (bypassing the page cache);
    /// filesystems that refuse O_DIRECT (tmpfs) are written through the
    /// page cache anyway.
    pub direct: bool,
    /// Write zeros just ahead of the log, so appends overwrite initialised
    /// blocks and an fdatasync flushes data without a filesystem-journal
    /// commit (about twice as fast on ext4); costs writing every byte
    /// twice. When false, the space ahead is only fallocated.
    pub prefill_zeros: bool,
    /// The newest this many segments are read through their mapping;
    /// older ones with pread and read-ahead (at least 1).
    pub hot_segments: u32,
    /// Write an index checkpoint each time the journal grows by this much,
    /// bounding the replay after a crash; 0 = only at clean close.
    pub checkpoint_bytes: u64,
    /// The newest this many written journal bytes stay in memory for tail
    /// reads and transfers (O_DIRECT writes bypass the page cache); 0 = off.
    pub tail_cache_bytes: u64,
    /// Relocate the live batches of mostly dead old segments after each
    /// segment roll, so that disk use follows retention (the journal
    /// cleaner); false leaves segments pinned by old live batches.
    pub cleaner: bool,
    /// Reclaimed segment files kept for reuse as later segments (their
    /// blocks are written already, so appends into them need neither zeros
    /// ahead nor extent conversions); 0 = delete them.
    pub recycle_segments: u32,
}

/// Free segment files a journal keeps at most.
const MAX_RECYCLE_SEGMENTS: u32 = 64;

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            segment_bytes: 1 << 30,
            buffer_bytes: 256 << 10,
            recovery_mode: RecoveryMode::default(),
            io: IoMode::default(),
            direct: true,
            prefill_zeros: true,
            hot_segments: 3,
            checkpoint_bytes: 1 << 30,
            tail_cache_bytes: 64 << 20,
            cleaner: true,
            recycle_segments: 2,
        }
    }
}

/// When the File engine hands buffered bytes to the kernel and fdatasyncs
/// them, beyond what each shard's durability mode demands (`[file] flush`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlushPolicy {
    /// The OS decides when dirty pages reach the disk; fdatasync only at
    /// segment roll and clean close (Kafka's default).
    #[default]
    Never,
    /// A flusher thread writes and fdatasyncs every `flush_interval_ms`.
    Interval,
    /// Every append is written and fdatasynced before it is acknowledged.
    Append,
}

impl FlushPolicy {
    pub fn name(self) -> &'static str {
        match self {
            FlushPolicy::Never => "never",
            FlushPolicy::Interval => "interval",
            FlushPolicy::Append => "append",
        }
    }
}

/// Store-wide settings of the File engine (the `[file]` section).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FileConfig {
    /// Memory budget of the engine: mapped segments, write buffers and
    /// open files are kept within it (see README, "File engine").
    pub max_memory_mb: u64,
    pub flush: FlushPolicy,
    /// Period of the flusher thread when `flush = "interval"`.
    pub flush_interval_ms: u64,
    /// Segment files held open for appending, across all file shards.
    pub max_open_files: u64,
}

impl Default for FileConfig {
    fn default() -> Self {
        FileConfig {
            max_memory_mb: 256,
            flush: FlushPolicy::Never,
            flush_interval_ms: 1000,
            max_open_files: 256,
        }
    }
}

/// Default period of the retention timer: a pass costs a read lock and a
/// look at the oldest batch per shard with age retention (about 50 ms at
/// 1 M such shards), so 1 % of a core at the largest scale.
pub const DEFAULT_RETENTION_CHECK_MS: u64 = 5_000;
const MIN_RETENTION_CHECK_MS: u64 = 10;
/// Default I/O budget of the compaction cleaner (Kafka's is unlimited; a
/// cleaner that reads at most this leaves the disk to the appends).
pub const DEFAULT_COMPACTION_BYTES_PER_S: u64 = 64 << 20;
const MAX_RETENTION_CHECK_MS: u64 = 86_400_000;

/// Store-wide settings of the RocksDB engine (the `[rocksdb]` section):
/// one database per store, shared by every RocksDB shard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RocksdbConfig {
    /// Memtable size of the column family holding the batches; a full
    /// memtable is flushed to an SST file (with the small column families,
    /// atomically).
    pub write_buffer_mb: u64,
    /// LRU cache of SST blocks, shared by the column families.
    pub block_cache_mb: u64,
    /// Flush and compaction threads.
    pub max_background_jobs: u32,
}

impl Default for RocksdbConfig {
    fn default() -> Self {
        RocksdbConfig {
            write_buffer_mb: 64,
            block_cache_mb: 64,
            max_background_jobs: 2,
        }
    }
}

/// Settings of a server the store connects to (the `[mysql]` and
/// `[redis]` sections). The URL may carry credentials: it is never
/// serialized (stats show `server_address()` instead) nor put in errors.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct ServerConfig {
    /// `mysql://user@host:port/database` or `redis://host:port/db`; `None`:
    /// the engine is not configured, and its shards are refused.
    #[serde(skip)]
    pub url: Option<String>,
    /// Connections kept open.
    pub pool_size: u32,
    /// How long opening a connection may take.
    pub connect_timeout_ms: u64,
    /// How long one request may wait for the server's answer.
    pub io_timeout_ms: u64,
    /// Redis: every key of the store starts with it (several stores may
    /// share one server); MySQL: the tables' name prefix. Empty (the
    /// default): one derived from the store's id (`store.id` in its
    /// directory), so stores sharing a server never share data.
    pub key_prefix: String,
}

impl ServerConfig {
    fn new() -> ServerConfig {
        ServerConfig {
            url: None,
            pool_size: 8,
            connect_timeout_ms: 5_000,
            io_timeout_ms: 10_000,
            key_prefix: String::new(),
        }
    }

    /// The URL without user, password, path or query: for messages.
    pub fn server_address(&self) -> String {
        let Some(url) = &self.url else {
            return "(no url)".to_string();
        };
        let rest = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
        let host = rest.split(['/', '?']).next().unwrap_or("");
        host.rsplit_once('@')
            .map_or(host, |(_, host)| host)
            .to_string()
    }
}

impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfig")
            .field("server", &self.server_address())
            .field("pool_size", &self.pool_size)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("io_timeout_ms", &self.io_timeout_ms)
            .field("key_prefix", &self.key_prefix)
            .finish()
    }
}

/// The object store of the S3 engine (the `[s3]` section). What it leaves
/// unset comes from the usual variables (`AWS_ENDPOINT`, `AWS_BUCKET`,
/// `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// `AWS_SESSION_TOKEN`, `AWS_ALLOW_HTTP`). Credentials are never
/// serialized nor put in errors.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct S3Config {
    /// `http(s)://host:port` of an S3-compatible service; `None`: AWS (or
    /// `AWS_ENDPOINT`). An `http://` endpoint allows plain HTTP.
    pub endpoint: Option<String>,
    pub bucket: Option<String>,
    pub region: Option<String>,
    #[serde(skip)]
    pub access_key_id: Option<String>,
    #[serde(skip)]
    pub secret_access_key: Option<String>,
    /// `bucket.host` requests instead of path-style `host/bucket`.
    pub virtual_hosted_style: bool,
    /// Requests are signed without a SHA-256 of their body (SigV4
    /// `UNSIGNED-PAYLOAD`): a third more upload throughput where the
    /// client's CPU is the limit. Bodies are still checked end to end by
    /// the CRC-32C of every batch, footer and manifest, and TLS protects
    /// them in transit on `https://` endpoints; the default (`false`)
    /// signs them.
    pub unsigned_payload: bool,
    /// Every object of the store is under it (several stores may share a
    /// bucket). Empty (the default): `mqs-<store id>`.
    pub prefix: String,
    /// An object is closed and uploaded once it holds this many bytes.
    pub object_bytes: u64,
    /// The read cache's unit: one ranged GET fetches a block.
    pub block_bytes: u64,
    /// The read cache's size.
    pub cache_bytes: u64,
    /// Blocks fetched after a missed one, in the same request; as many
    /// are kept coming in the background ahead of each read.
    pub readahead_blocks: u32,
    /// Batches of `os` and `none` shards wait at most this long in memory
    /// before their object is uploaded.
    pub flush_interval_ms: u64,
    /// Batches waiting for upload, all shards together; an append beyond
    /// it uploads its shard's batches before it returns (back-pressure).
    pub buffer_bytes: u64,
    pub connect_timeout_ms: u64,
    /// How long one request may take.
    pub io_timeout_ms: u64,
    /// How often a failed request (5xx, throttling, a broken connection)
    /// is tried again, with backoff, before the call fails.
    pub retries: u32,
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            endpoint: None,
            bucket: None,
            region: None,
            access_key_id: None,
            secret_access_key: None,
            virtual_hosted_style: false,
            unsigned_payload: false,
            prefix: String::new(),
            object_bytes: 16 << 20,
            block_bytes: 4 << 20,
            cache_bytes: 256 << 20,
            readahead_blocks: 2,
            flush_interval_ms: 1_000,
            buffer_bytes: 256 << 20,
            connect_timeout_ms: 5_000,
            io_timeout_ms: 30_000,
            retries: 3,
        }
    }
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("credentials", &self.access_key_id.as_ref().map(|_| "(set)"))
            .field("prefix", &self.prefix)
            .field("unsigned_payload", &self.unsigned_payload)
            .field("object_bytes", &self.object_bytes)
            .field("block_bytes", &self.block_bytes)
            .field("cache_bytes", &self.cache_bytes)
            .finish_non_exhaustive()
    }
}

/// The hybrid engine (the `[hybrid]` section): hot data in a local engine,
/// moved to objects (the `[s3]` store) once sealed and old or big enough.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HybridConfig {
    /// The local tier: `journal` (the default) or `file`.
    pub local: EngineKind,
    /// Batches older than this move to the cold tier.
    pub hot_duration_ms: u64,
    /// A shard's local bytes beyond this move to the cold tier, oldest
    /// first, whatever their age (0: no size limit).
    pub hot_bytes: u64,
    /// How often the tierer looks for data to move.
    pub tier_interval_ms: u64,
    /// At most this much is copied per object (the cold tier's objects).
    pub tier_chunk_bytes: u64,
}

impl Default for HybridConfig {
    fn default() -> Self {
        HybridConfig {
            local: EngineKind::Journal,
            hot_duration_ms: 24 * 3_600_000,
            hot_bytes: 1 << 30,
            tier_interval_ms: 1_000,
            tier_chunk_bytes: 16 << 20,
        }
    }
}

/// Store-wide configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Config {
    pub preset: Option<Preset>,
    /// Largest encoded record accepted by append (bytes).
    pub max_record_bytes: usize,
    /// Largest encoded batch accepted by append_batch (bytes).
    pub max_batch_bytes: usize,
    /// How often the store's retention timer applies age retention
    /// (`retention_ms`) to shards nobody appends to or reads, freeing their
    /// space; 0 = no timer (age retention then applies only when a shard
    /// is used).
    pub retention_check_ms: u64,
    /// An idempotent producer whose last batch is older than this is
    /// forgotten (its next batch may start at any sequence), as Kafka's
    /// `producer.id.expiration.ms`.
    pub producer_expiry_ms: u64,
    /// The compaction cleaner's I/O budget: bytes it reads per second,
    /// spread over the timer's passes (`retention_check_ms`).
    pub compaction_bytes_per_s: u64,
    /// Opens an existing store for reading only: nothing in its directory
    /// is created, changed or removed (no torn tail cut, no retention, no
    /// checkpoint at close), other read-only opens may share it, and every
    /// call that would change it fails with `Unsupported`. For inspection
    /// and backup tools; a writer holds the store alone.
    pub read_only: bool,
    /// Defaults for shards created without explicit options.
    pub shard_defaults: ShardOptions,
    /// Settings of the journal engine.
    pub journal: JournalConfig,
    /// Settings of the File engine.
    pub file: FileConfig,
    /// Settings of the RocksDB engine.
    pub rocksdb: RocksdbConfig,
    /// The MySQL (or MariaDB) server of the MySQL engine.
    pub mysql: ServerConfig,
    /// The Redis server of the Redis engine.
    pub redis: ServerConfig,
    /// The object store of the S3 engine (and of the hybrid engine's
    /// cold tier).
    pub s3: S3Config,
    /// The hybrid engine's tiers.
    pub hybrid: HybridConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            preset: None,
            max_record_bytes: 1 << 20,
            max_batch_bytes: 64 << 20,
            retention_check_ms: DEFAULT_RETENTION_CHECK_MS,
            producer_expiry_ms: 86_400_000,
            compaction_bytes_per_s: DEFAULT_COMPACTION_BYTES_PER_S,
            read_only: false,
            shard_defaults: ShardOptions::default(),
            journal: JournalConfig::default(),
            file: FileConfig::default(),
            rocksdb: RocksdbConfig::default(),
            mysql: ServerConfig::new(),
            redis: ServerConfig::new(),
            s3: S3Config::default(),
            hybrid: HybridConfig::default(),
        }
    }
}

// ---- the TOML schema: every field optional so that presets and defaults
// ---- can be overlaid; `deny_unknown_fields` turns typos into errors.

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    preset: Option<Preset>,
    store: Option<StoreSection>,
    shard: Option<ShardSection>,
    journal: Option<JournalSection>,
    file: Option<FileSection>,
    rocksdb: Option<RocksdbSection>,
    mysql: Option<ServerSection>,
    redis: Option<ServerSection>,
    s3: Option<S3Section>,
    hybrid: Option<HybridSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerSection {
    url: Option<String>,
    pool_size: Option<u32>,
    connect_timeout_ms: Option<u64>,
    io_timeout_ms: Option<u64>,
    key_prefix: Option<String>,
}

impl ServerSection {
    fn apply_to(self, section: &str, config: &mut ServerConfig) -> Result<()> {
        if let Some(url) = self.url {
            let scheme = if section == "mysql" {
                "mysql://"
            } else {
                "redis://"
            };
            if !url.starts_with(scheme) {
                return Err(Error::InvalidConfig(format!(
                    "{section}.url must start with {scheme}"
                )));
            }
            config.url = Some(url);
        }
        if let Some(size) = self.pool_size {
            check_range(&format!("{section}.pool_size"), size as u64, 1, 1024)?;
            config.pool_size = size;
        }
        if let Some(ms) = self.connect_timeout_ms {
            check_range(&format!("{section}.connect_timeout_ms"), ms, 1, 600_000)?;
            config.connect_timeout_ms = ms;
        }
        if let Some(ms) = self.io_timeout_ms {
            check_range(&format!("{section}.io_timeout_ms"), ms, 1, 600_000)?;
            config.io_timeout_ms = ms;
        }
        if let Some(prefix) = self.key_prefix {
            let table_safe = prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if prefix.len() > 32 || (section == "mysql" && !table_safe) {
                return Err(Error::InvalidConfig(format!(
                    "{section}.key_prefix: at most 32 characters{}",
                    if section == "mysql" {
                        ", letters, digits and _ only"
                    } else {
                        ""
                    }
                )));
            }
            config.key_prefix = prefix;
        }
        Ok(())
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HybridSection {
    local: Option<EngineKind>,
    hot_duration_ms: Option<u64>,
    hot_bytes: Option<u64>,
    tier_interval_ms: Option<u64>,
    tier_chunk_bytes: Option<u64>,
}

impl HybridSection {
    fn apply_to(self, config: &mut HybridConfig) -> Result<()> {
        if let Some(local) = self.local {
            if !matches!(local, EngineKind::Journal | EngineKind::File) {
                return Err(Error::InvalidConfig(format!(
                    "hybrid.local: '{local}' cannot be the local tier (journal or file)"
                )));
            }
            config.local = local;
        }
        if let Some(ms) = self.hot_duration_ms {
            check_range("hybrid.hot_duration_ms", ms, 0, 10 * 365 * 86_400_000)?;
            config.hot_duration_ms = ms;
        }
        if let Some(bytes) = self.hot_bytes {
            config.hot_bytes = bytes;
        }
        if let Some(ms) = self.tier_interval_ms {
            check_range("hybrid.tier_interval_ms", ms, 1, 3_600_000)?;
            config.tier_interval_ms = ms;
        }
        if let Some(bytes) = self.tier_chunk_bytes {
            check_range("hybrid.tier_chunk_bytes", bytes, 64 << 10, 1 << 30)?;
            config.tier_chunk_bytes = bytes;
        }
        Ok(())
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct S3Section {
    endpoint: Option<String>,
    bucket: Option<String>,
    region: Option<String>,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    virtual_hosted_style: Option<bool>,
    unsigned_payload: Option<bool>,
    prefix: Option<String>,
    object_bytes: Option<u64>,
    block_bytes: Option<u64>,
    cache_bytes: Option<u64>,
    readahead_blocks: Option<u32>,
    flush_interval_ms: Option<u64>,
    buffer_bytes: Option<u64>,
    connect_timeout_ms: Option<u64>,
    io_timeout_ms: Option<u64>,
    retries: Option<u32>,
}

impl S3Section {
    fn apply_to(self, config: &mut S3Config) -> Result<()> {
        if let Some(endpoint) = self.endpoint {
            if !endpoint.starts_with("http://") && !endpoint.starts_with("https://") {
                return Err(Error::InvalidConfig(
                    "s3.endpoint must start with http:// or https://".into(),
                ));
            }
            config.endpoint = Some(endpoint);
        }
        if let Some(bucket) = self.bucket {
            check_range("s3.bucket's length", bucket.len() as u64, 3, 63)?;
            config.bucket = Some(bucket);
        }
        if let Some(prefix) = self.prefix {
            let safe = prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b));
            if prefix.len() > 256 || !safe || prefix.starts_with('/') || prefix.contains("//") {
                return Err(Error::InvalidConfig(
                    "s3.prefix: at most 256 characters of letters, digits and -_./, \
                     not starting with / nor holding //"
                        .into(),
                ));
            }
            config.prefix = prefix.trim_end_matches('/').to_string();
        }
        config.region = self.region.or(config.region.take());
        config.access_key_id = self.access_key_id.or(config.access_key_id.take());
        config.secret_access_key = self.secret_access_key.or(config.secret_access_key.take());
        if let Some(virtual_hosted) = self.virtual_hosted_style {
            config.virtual_hosted_style = virtual_hosted;
        }
        if let Some(unsigned) = self.unsigned_payload {
            config.unsigned_payload = unsigned;
        }
        let sizes = [
            (
                "s3.object_bytes",
                self.object_bytes,
                64 << 10,
                1 << 30,
                &mut config.object_bytes,
            ),
            (
                "s3.block_bytes",
                self.block_bytes,
                4 << 10,
                64 << 20,
                &mut config.block_bytes,
            ),
            (
                "s3.cache_bytes",
                self.cache_bytes,
                0,
                1 << 40,
                &mut config.cache_bytes,
            ),
            (
                "s3.buffer_bytes",
                self.buffer_bytes,
                64 << 10,
                1 << 40,
                &mut config.buffer_bytes,
            ),
            (
                "s3.flush_interval_ms",
                self.flush_interval_ms,
                1,
                3_600_000,
                &mut config.flush_interval_ms,
            ),
            (
                "s3.connect_timeout_ms",
                self.connect_timeout_ms,
                1,
                600_000,
                &mut config.connect_timeout_ms,
            ),
            (
                "s3.io_timeout_ms",
                self.io_timeout_ms,
                1,
                600_000,
                &mut config.io_timeout_ms,
            ),
        ];
        for (key, value, min, max, slot) in sizes {
            if let Some(value) = value {
                check_range(key, value, min, max)?;
                *slot = value;
            }
        }
        if let Some(blocks) = self.readahead_blocks {
            check_range("s3.readahead_blocks", blocks as u64, 0, 64)?;
            config.readahead_blocks = blocks;
        }
        if let Some(retries) = self.retries {
            check_range("s3.retries", retries as u64, 0, 100)?;
            config.retries = retries;
        }
        Ok(())
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RocksdbSection {
    write_buffer_mb: Option<u64>,
    block_cache_mb: Option<u64>,
    max_background_jobs: Option<u32>,
}

impl RocksdbSection {
    fn apply_to(self, config: &mut RocksdbConfig) -> Result<()> {
        if let Some(mb) = self.write_buffer_mb {
            check_range("rocksdb.write_buffer_mb", mb, 1, 4096)?;
            config.write_buffer_mb = mb;
        }
        if let Some(mb) = self.block_cache_mb {
            check_range("rocksdb.block_cache_mb", mb, 0, 1 << 20)?;
            config.block_cache_mb = mb;
        }
        if let Some(jobs) = self.max_background_jobs {
            check_range("rocksdb.max_background_jobs", jobs as u64, 1, 64)?;
            config.max_background_jobs = jobs;
        }
        Ok(())
    }
}

fn check_range(key: &str, value: u64, min: u64, max: u64) -> Result<()> {
    if !(min..=max).contains(&value) {
        return Err(Error::InvalidConfig(format!(
            "{key}: {value} must be between {min} and {max}"
        )));
    }
    Ok(())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSection {
    max_memory_mb: Option<u64>,
    flush: Option<FlushPolicy>,
    flush_interval_ms: Option<u64>,
    max_open_files: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct JournalSection {
    segment_bytes: Option<u64>,
    buffer_bytes: Option<u64>,
    recovery_mode: Option<RecoveryMode>,
    io: Option<IoMode>,
    direct: Option<bool>,
    prefill_zeros: Option<bool>,
    hot_segments: Option<u32>,
    checkpoint_bytes: Option<u64>,
    tail_cache_bytes: Option<u64>,
    cleaner: Option<bool>,
    recycle_segments: Option<u32>,
}

/// Journal segments hold positions as u32 file offsets in places.
const MAX_JOURNAL_SEGMENT_BYTES: u64 = 1 << 31;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreSection {
    max_record_bytes: Option<u64>,
    max_batch_bytes: Option<u64>,
    retention_check_ms: Option<u64>,
    producer_expiry_ms: Option<u64>,
    read_only: Option<bool>,
    compaction_bytes_per_s: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShardSection {
    engine: Option<EngineKind>,
    durability: Option<Durability>,
    compression: Option<String>,
    segment_bytes: Option<u64>,
    retention_ms: Option<u64>,
    retention_bytes: Option<u64>,
    retention_records: Option<u64>,
    timestamp_type: Option<TimestampType>,
    cleanup_policy: Option<CleanupPolicy>,
    delete_retention_ms: Option<u64>,
    min_compaction_lag_ms: Option<u64>,
}

const MIN_SEGMENT_BYTES: u64 = 64 << 10;
const MAX_RECORD_LIMIT: u64 = 1 << 30;

impl ShardSection {
    fn apply_to(self, options: &mut ShardOptions, key_prefix: &str) -> Result<()> {
        if let Some(engine) = self.engine {
            options.engine = engine;
            // Naming an engine without a durability must not inherit a
            // default it cannot honour (the memory engine's only mode is
            // `none`) and then be refused.
            let caps = crate::engine::registry::spec(engine).capabilities();
            if let Some(caps) = caps.filter(|_| self.durability.is_none()) {
                if !caps.durability.contains(&options.durability) {
                    options.durability = caps.default_durability;
                }
            }
        }
        if let Some(durability) = self.durability {
            options.durability = durability;
        }
        if let Some(name) = self.compression {
            options.compression = Compression::parse(&name).ok_or_else(|| {
                Error::InvalidConfig(format!(
                    "{key_prefix}compression: unknown codec '{name}' (expected none, gzip, snappy, lz4 or zstd)"
                ))
            })?;
        }
        if let Some(bytes) = self.segment_bytes {
            if bytes < MIN_SEGMENT_BYTES {
                return Err(Error::InvalidConfig(format!(
                    "{key_prefix}segment_bytes: {bytes} is below the minimum of {MIN_SEGMENT_BYTES}"
                )));
            }
            options.segment_bytes = bytes;
        }
        if let Some(ms) = self.retention_ms {
            options.retention_ms = ms;
        }
        if let Some(bytes) = self.retention_bytes {
            options.retention_bytes = bytes;
        }
        if let Some(records) = self.retention_records {
            options.retention_records = records;
        }
        if let Some(kind) = self.timestamp_type {
            options.timestamp_type = kind;
        }
        if let Some(policy) = self.cleanup_policy {
            options.cleanup_policy = policy;
        }
        if let Some(ms) = self.delete_retention_ms {
            options.delete_retention_ms = ms;
        }
        if let Some(ms) = self.min_compaction_lag_ms {
            options.min_compaction_lag_ms = ms;
        }
        options.check().map_err(|e| match e {
            Error::InvalidConfig(message) => Error::InvalidConfig(format!("{key_prefix}{message}")),
            other => other,
        })
    }
}

fn parse_toml<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> Result<T> {
    toml::from_str(text).map_err(|e| {
        // toml's message spans several lines with a source excerpt; keep it,
        // but lead with what was being parsed.
        Error::InvalidConfig(format!("{what}: {}", e.to_string().trim_end()))
    })
}

impl Config {
    /// The configuration of a preset, before any explicit keys are applied.
    pub fn preset(preset: Preset) -> Config {
        let mut config = Config {
            preset: Some(preset),
            ..Config::default()
        };
        let shard = &mut config.shard_defaults;
        match preset {
            Preset::Financial => {
                shard.engine = EngineKind::Memory;
                shard.durability = Durability::None;
            }
            Preset::Streaming => {
                shard.engine = EngineKind::Journal;
                shard.durability = Durability::Fsync;
            }
            Preset::BigData => {
                shard.engine = EngineKind::Hybrid;
                shard.durability = Durability::Fsync;
                shard.compression = Compression::Zstd;
                shard.retention_ms = 24 * 3600 * 1000;
            }
            Preset::Edge => {
                shard.engine = EngineKind::File;
                shard.durability = Durability::Os;
                config.file.max_memory_mb = 100;
            }
        }
        config
    }

    /// Parses the `storage.toml` schema. Keys: top-level `preset`; `[store]`
    /// max_record_bytes, max_batch_bytes, retention_check_ms (0 or
    /// 10 … 86 400 000), producer_expiry_ms (> 0), read_only (bool),
    /// compaction_bytes_per_s (> 0); `[shard]` defaults
    /// (engine, durability, compression, segment_bytes, retention_ms,
    /// retention_bytes, retention_records, timestamp_type, cleanup_policy,
    /// delete_retention_ms, min_compaction_lag_ms); `[journal]` segment_bytes,
    /// buffer_bytes, recovery_mode (`tolerate_tail` or `skip_corrupt`), io
    /// (`auto`, `uring` or `pwrite`), direct (bool), prefill_zeros (bool), hot_segments (≥ 1),
    /// checkpoint_bytes (0 = at clean close only), tail_cache_bytes (0 = off),
    /// cleaner (bool), recycle_segments (0 … 64, 0 = off);
    /// `[rocksdb]` write_buffer_mb (1 … 4096), block_cache_mb (0 … 2^20),
    /// max_background_jobs (1 … 64).
    pub fn from_toml_str(text: &str) -> Result<Config> {
        let file: ConfigFile = parse_toml(text, "store configuration")?;
        let mut config = match file.preset {
            Some(preset) => Config::preset(preset),
            None => Config::default(),
        };
        if let Some(store) = file.store {
            if let Some(limit) = store.max_record_bytes {
                if limit == 0 || limit > MAX_RECORD_LIMIT {
                    return Err(Error::InvalidConfig(format!(
                        "store.max_record_bytes: {limit} must be between 1 and {MAX_RECORD_LIMIT}"
                    )));
                }
                config.max_record_bytes = limit as usize;
            }
            if let Some(limit) = store.max_batch_bytes {
                if limit == 0 || limit > i32::MAX as u64 {
                    return Err(Error::InvalidConfig(format!(
                        "store.max_batch_bytes: {limit} must be between 1 and {}",
                        i32::MAX
                    )));
                }
                config.max_batch_bytes = limit as usize;
            }
            if let Some(ms) = store.retention_check_ms {
                if ms != 0 && !(MIN_RETENTION_CHECK_MS..=MAX_RETENTION_CHECK_MS).contains(&ms) {
                    return Err(Error::InvalidConfig(format!(
                        "store.retention_check_ms: {ms} must be 0 (no timer) or between \
                         {MIN_RETENTION_CHECK_MS} and {MAX_RETENTION_CHECK_MS}"
                    )));
                }
                config.retention_check_ms = ms;
            }
            if let Some(ms) = store.producer_expiry_ms {
                if ms == 0 {
                    return Err(Error::InvalidConfig(
                        "store.producer_expiry_ms: 0 would forget every producer at once".into(),
                    ));
                }
                config.producer_expiry_ms = ms;
            }
            if let Some(read_only) = store.read_only {
                config.read_only = read_only;
            }
            if let Some(rate) = store.compaction_bytes_per_s {
                if rate == 0 {
                    return Err(Error::InvalidConfig(
                        "store.compaction_bytes_per_s: 0 would never compact".into(),
                    ));
                }
                config.compaction_bytes_per_s = rate;
            }
        }
        if let Some(shard) = file.shard {
            shard.apply_to(&mut config.shard_defaults, "shard.")?;
        }
        if let Some(journal) = file.journal {
            if let Some(bytes) = journal.segment_bytes {
                if !(MIN_SEGMENT_BYTES..=MAX_JOURNAL_SEGMENT_BYTES).contains(&bytes) {
                    return Err(Error::InvalidConfig(format!(
                        "journal.segment_bytes: {bytes} must be between {MIN_SEGMENT_BYTES} and {MAX_JOURNAL_SEGMENT_BYTES}"
                    )));
                }
                config.journal.segment_bytes = bytes;
            }
            if let Some(bytes) = journal.buffer_bytes {
                if bytes == 0 || bytes > 1 << 30 {
                    return Err(Error::InvalidConfig(format!(
                        "journal.buffer_bytes: {bytes} must be between 1 and {}",
                        1u64 << 30
                    )));
                }
                config.journal.buffer_bytes = bytes;
            }
            if let Some(mode) = journal.recovery_mode {
                config.journal.recovery_mode = mode;
            }
            if let Some(io) = journal.io {
                config.journal.io = io;
            }
            if let Some(direct) = journal.direct {
                config.journal.direct = direct;
            }
            if let Some(prefill) = journal.prefill_zeros {
                config.journal.prefill_zeros = prefill;
            }
            if let Some(cleaner) = journal.cleaner {
                config.journal.cleaner = cleaner;
            }
            if let Some(hot) = journal.hot_segments {
                if hot == 0 {
                    return Err(Error::InvalidConfig(
                        "journal.hot_segments: must be at least 1 (the segment being written is always hot)"
                            .into(),
                    ));
                }
                config.journal.hot_segments = hot;
            }
            if let Some(bytes) = journal.checkpoint_bytes {
                config.journal.checkpoint_bytes = bytes;
            }
            if let Some(bytes) = journal.tail_cache_bytes {
                config.journal.tail_cache_bytes = bytes;
            }
            if let Some(files) = journal.recycle_segments {
                if files > MAX_RECYCLE_SEGMENTS {
                    return Err(Error::InvalidConfig(format!(
                        "journal.recycle_segments: {files} is above the maximum of {MAX_RECYCLE_SEGMENTS}"
                    )));
                }
                config.journal.recycle_segments = files;
            }
        }
        if let Some(file) = file.file {
            if let Some(mb) = file.max_memory_mb {
                if !(16..=1 << 20).contains(&mb) {
                    return Err(Error::InvalidConfig(format!(
                        "file.max_memory_mb: {mb} must be between 16 and {}",
                        1u64 << 20
                    )));
                }
                config.file.max_memory_mb = mb;
            }
            if let Some(flush) = file.flush {
                config.file.flush = flush;
            }
            if let Some(ms) = file.flush_interval_ms {
                if !(1..=3_600_000).contains(&ms) {
                    return Err(Error::InvalidConfig(format!(
                        "file.flush_interval_ms: {ms} must be between 1 and 3600000"
                    )));
                }
                config.file.flush_interval_ms = ms;
            }
            if let Some(n) = file.max_open_files {
                if !(4..=1 << 20).contains(&n) {
                    return Err(Error::InvalidConfig(format!(
                        "file.max_open_files: {n} must be between 4 and {}",
                        1u64 << 20
                    )));
                }
                config.file.max_open_files = n;
            }
        }
        if let Some(rocksdb) = file.rocksdb {
            rocksdb.apply_to(&mut config.rocksdb)?;
        }
        if let Some(mysql) = file.mysql {
            mysql.apply_to("mysql", &mut config.mysql)?;
        }
        if let Some(redis) = file.redis {
            redis.apply_to("redis", &mut config.redis)?;
        }
        if let Some(s3) = file.s3 {
            s3.apply_to(&mut config.s3)?;
        }
        if let Some(hybrid) = file.hybrid {
            hybrid.apply_to(&mut config.hybrid)?;
        }
        if config.max_record_bytes > config.max_batch_bytes {
            return Err(Error::InvalidConfig(format!(
                "store.max_record_bytes ({}) exceeds store.max_batch_bytes ({})",
                config.max_record_bytes, config.max_batch_bytes
            )));
        }
        Ok(config)
    }

    /// Reads and parses a `storage.toml` file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Config> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading config '{}'", path.display()), e))?;
        Config::from_toml_str(&text)
    }

    /// Resolves shard options: the store's defaults overlaid with `text`,
    /// which uses the keys of the `[shard]` section (without the header).
    pub fn shard_options(&self, text: Option<&str>) -> Result<ShardOptions> {
        let mut options = self.shard_defaults.clone();
        if let Some(text) = text {
            let section: ShardSection = parse_toml(text, "shard options")?;
            section.apply_to(&mut options, "")?;
        }
        Ok(options)
    }

    /// The configuration as JSON (for stats and diagnostics).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_durable_journal_shards() {
        let config = Config::from_toml_str("").unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(config.shard_defaults.engine, EngineKind::Journal);
        assert_eq!(config.shard_defaults.durability, Durability::Fsync);
        // The default is the streaming preset's shard without naming it.
        assert_eq!(
            config.shard_defaults,
            Config::preset(Preset::Streaming).shard_defaults
        );
    }

    #[test]
    fn naming_the_memory_engine_implies_its_only_durability() {
        let config = Config::default();
        let memory = config.shard_options(Some("engine = \"memory\"")).unwrap();
        assert_eq!(memory.durability, Durability::None);
        let journal = config.shard_options(Some("engine = \"journal\"")).unwrap();
        assert_eq!(journal.durability, Durability::Fsync);
        let explicit = config
            .shard_options(Some("engine = \"memory\"\ndurability = \"os\""))
            .unwrap();
        assert_eq!(explicit.durability, Durability::Os, "explicit keys win");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_toml_str("[store]\nmax_recod_bytes = 10\n").unwrap_err();
        assert_eq!(err.status(), crate::Status::InvalidConfig);
        assert!(err.to_string().contains("max_recod_bytes"), "{err}");
    }

    #[test]
    fn bad_value_is_named() {
        let err = Config::from_toml_str("[shard]\ndurability = \"sometimes\"\n").unwrap_err();
        let message = err.to_string();
        assert!(message.contains("durability"), "{message}");
        assert!(message.contains("sometimes"), "{message}");
        let err = Config::from_toml_str("[shard]\ncompression = \"brotli\"\n").unwrap_err();
        assert!(err.to_string().contains("shard.compression"), "{err}");
        let err = Config::from_toml_str("[store]\nmax_record_bytes = 0\n").unwrap_err();
        assert!(err.to_string().contains("store.max_record_bytes"), "{err}");
    }

    #[test]
    fn preset_then_overrides() {
        let config = Config::from_toml_str(
            "preset = \"financial\"\n[shard]\nretention_records = 100\ncompression = \"lz4\"\n",
        )
        .unwrap();
        assert_eq!(config.preset, Some(Preset::Financial));
        assert_eq!(config.shard_defaults.retention_records, 100);
        assert_eq!(config.shard_defaults.compression, Compression::Lz4);
        let edge = Config::from_toml_str("preset = \"edge\"").unwrap();
        assert_eq!(edge.shard_defaults.engine, EngineKind::File);
    }

    #[test]
    fn shard_options_overlay_defaults() {
        let config = Config::from_toml_str("[shard]\nretention_bytes = 5000\n").unwrap();
        let options = config
            .shard_options(Some("retention_records = 7\nsegment_bytes = 1048576"))
            .unwrap();
        assert_eq!(options.retention_bytes, 5000);
        assert_eq!(options.retention_records, 7);
        assert_eq!(options.segment_bytes, 1 << 20);
        let err = config
            .shard_options(Some("segment_bytes = 10"))
            .unwrap_err();
        assert!(err.to_string().contains("segment_bytes"), "{err}");
        let err = config.shard_options(Some("colour = 1")).unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
    }

    #[test]
    fn journal_section() {
        let config = Config::from_toml_str(
            "[journal]\nsegment_bytes = 1048576\nbuffer_bytes = 4096\nrecovery_mode = \"skip_corrupt\"\n",
        )
        .unwrap();
        assert_eq!(config.journal.segment_bytes, 1 << 20);
        assert_eq!(config.journal.buffer_bytes, 4096);
        assert_eq!(config.journal.recovery_mode, RecoveryMode::SkipCorrupt);
        assert_eq!(
            Config::default().journal.recovery_mode,
            RecoveryMode::TolerateTail
        );
        let err = Config::from_toml_str("[journal]\nsegment_bytes = 10\n").unwrap_err();
        assert!(err.to_string().contains("journal.segment_bytes"), "{err}");
        let err = Config::from_toml_str("[journal]\nrecovery_mode = \"yolo\"\n").unwrap_err();
        assert!(err.to_string().contains("yolo"), "{err}");
        let err = Config::from_toml_str("[journal]\nsegmentbytes = 1\n").unwrap_err();
        assert!(err.to_string().contains("segmentbytes"), "{err}");
    }

    #[test]
    fn journal_recycle_segments() {
        assert_eq!(Config::default().journal.recycle_segments, 2);
        for files in [0, 64] {
            let text = format!("[journal]\nrecycle_segments = {files}\n");
            let config = Config::from_toml_str(&text).unwrap();
            assert_eq!(config.journal.recycle_segments, files);
        }
        let err = Config::from_toml_str("[journal]\nrecycle_segments = 65\n").unwrap_err();
        assert_eq!(err.status(), crate::Status::InvalidConfig);
        assert!(
            err.to_string().contains("journal.recycle_segments: 65"),
            "{err}"
        );
        let err = Config::from_toml_str("[journal]\nrecycle_segments = -1\n").unwrap_err();
        assert!(err.to_string().contains("recycle_segments"), "{err}");
    }

    #[test]
    fn journal_io_keys() {
        let defaults = Config::default().journal;
        assert_eq!(defaults.io, IoMode::Auto);
        assert!(defaults.direct);
        for (text, io) in [
            ("auto", IoMode::Auto),
            ("uring", IoMode::Uring),
            ("pwrite", IoMode::Pwrite),
        ] {
            let config =
                Config::from_toml_str(&format!("[journal]\nio = \"{text}\"\ndirect = false\n"))
                    .unwrap();
            assert_eq!(config.journal.io, io);
            assert!(!config.journal.direct);
        }
        let err = Config::from_toml_str("[journal]\nio = \"aio\"\n").unwrap_err();
        assert_eq!(err.status(), crate::Status::InvalidConfig);
        assert!(err.to_string().contains("aio"), "{err}");
        let err = Config::from_toml_str("[journal]\ndirect = \"yes\"\n").unwrap_err();
        assert!(err.to_string().contains("direct"), "{err}");
        let err = Config::from_toml_str("[journal]\no_direct = true\n").unwrap_err();
        assert!(err.to_string().contains("o_direct"), "{err}");
        let json = Config::default().to_json();
        assert_eq!(json["journal"]["io"], "auto");
        assert_eq!(json["journal"]["direct"], true);
        assert_eq!(json["journal"]["cleaner"], true);
        let config = Config::from_toml_str("[journal]\ncleaner = false\n").unwrap();
        assert!(!config.journal.cleaner);
    }

    #[test]
    fn rocksdb_section() {
        let config = Config::from_toml_str(
            "[rocksdb]\nwrite_buffer_mb = 8\nblock_cache_mb = 0\nmax_background_jobs = 4\n",
        )
        .unwrap();
        assert_eq!(
            config.rocksdb,
            RocksdbConfig {
                write_buffer_mb: 8,
                block_cache_mb: 0,
                max_background_jobs: 4
            }
        );
        assert_eq!(Config::default().rocksdb.write_buffer_mb, 64);
        for (text, key) in [
            ("write_buffer_mb = 0", "rocksdb.write_buffer_mb"),
            ("max_background_jobs = 65", "rocksdb.max_background_jobs"),
            ("block_cache = 1", "block_cache"),
        ] {
            let err = Config::from_toml_str(&format!("[rocksdb]\n{text}\n")).unwrap_err();
            assert_eq!(err.status(), crate::Status::InvalidConfig);
            assert!(err.to_string().contains(key), "{err}");
        }
    }
}
