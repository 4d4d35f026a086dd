//! The S3 engine (`engine = "s3"`): shards kept as objects in an
//! S3-compatible object store (`[s3]`, else the `AWS_*` variables),
//! through the shared database layer (`engine::database`): `DbShard`
//! keeps the index, offsets and policy; this backend stores batches in
//! objects and lists them at open.
//!
//! Objects (`object`): one shard's consecutive batches, byte for byte,
//! `s3.object_bytes` of them (16 MiB by default), closed by a footer that
//! indexes them. Each shard has one manifest (`manifest`) listing its
//! objects, its catalogue entry, the offset below which everything is
//! gone and its group offsets, replaced with a conditional PUT on its
//! ETag: an object counts once the manifest listing it is stored, and two
//! writers can never both win (the loser's shard refuses further writes
//! with `MQS_LOCKED`). Retention and `delete_records_before` move the
//! manifest's start, and objects wholly below it are deleted; other
//! deletes (`truncate_to`, compaction) rewrite the objects concerned.
//! Reads go through a block cache (`s3.block_bytes` blocks, LRU,
//! `s3.cache_bytes`), a miss fetching `s3.readahead_blocks` more blocks
//! in the same request for sequential consumers.
//!
//! Durability. Objects and manifests are durable once the object store
//! answered their PUT (S3's guarantee; a local server's own, e.g. s3s-fs
//! writes files without fsync).
//!
//! | mode | an append is acknowledged when | lost by a crash of the process |
//! |---|---|---|
//! | `fsync` | its object and the manifest listing it are stored: two PUTs in a row per commit (about 2 round trips plus the upload; tens of ms on AWS). `append_nowait` windows, or large batches, share one object and one manifest write among many batches | nothing acknowledged |
//! | `os`, `none` | it is in the engine's memory; it is uploaded within `s3.flush_interval_ms`, or once `s3.object_bytes` wait | what waited for upload: at most the last `flush_interval_ms` of appends (and `buffer_bytes`) |
//!
//! Deletes, catalogue changes and group offsets are stored before the
//! call returns, in every mode. An append that finds more than
//! `s3.buffer_bytes` waiting (all shards) uploads its shard before it
//! returns (back-pressure), so memory stays bounded while the store is
//! slow or down; a failed upload leaves the batches waiting and is tried
//! again. Creating several shards at once stores one manifest per shard:
//! a crash in the middle may leave some of them created.

mod cache;
mod client;
mod db;
mod manifest;
mod object;
mod plan;
mod shard;
#[cfg(test)]
pub(crate) mod tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use self::client::Client;
use self::db::{Layout, S3Db};
use super::database::{server, Connect, DbEngine};
use crate::config::{Config, Durability, S3Config};
use crate::engine::registry::{Capabilities, TransferPath};
use crate::engine::Engine;
use crate::Result;

pub(crate) const CAPABILITIES: Capabilities = Capabilities {
    durability: &[Durability::None, Durability::Os, Durability::Fsync],
    default_durability: Durability::Fsync,
    durability_limit: "",
    persistent: true,
    native_key_index: false,
    // `append_nowait` on an fsync shard leaves the batch waiting; the
    // producer's wait uploads the window as one object.
    pipelined: true,
    transfer: TransferPath::Fetched,
};

/// Opens the store's objects: under the configured prefix, else one
/// derived from the store's id.
struct S3Connect {
    config: S3Config,
    dir: PathBuf,
    read_only: bool,
    /// The hybrid engine's cold tier: its shards are under the prefix +
    /// `/hybrid`, apart from the S3 engine's, and its client's threads do
    /// background work (`thread::lower_priority`).
    cold_tier: bool,
    /// An object store to use instead of the S3 client (tests).
    store: Option<Arc<dyn object_store::ObjectStore>>,
}

impl S3Connect {
    /// Whether the store may already hold objects: a prefix is configured
    /// or the store has an id (written with its first S3 shard).
    fn has_prefix(&self) -> bool {
        !self.config.prefix.is_empty() || self.dir.join(server::STORE_ID_FILE).exists()
    }
}

impl Connect for S3Connect {
    type Db = S3Db;

    fn may_exist(&self) -> bool {
        let bucket = self.config.bucket.is_some() || std::env::var_os("AWS_BUCKET").is_some();
        self.has_prefix() && (bucket || self.store.is_some())
    }

    fn open(&self) -> Result<Arc<S3Db>> {
        let prefix = match self.config.prefix.is_empty() {
            true => format!("mqs-{}", server::store_id(&self.dir, self.read_only)?),
            false => self.config.prefix.clone(),
        } + if self.cold_tier { "/hybrid" } else { "" };
        let client = match &self.store {
            Some(store) => Client::with_store(
                store.clone(),
                "injected".into(),
                std::time::Duration::from_secs(30),
                self.cold_tier,
            )?,
            None => Client::new(&self.config, self.cold_tier)?,
        };
        let db = S3Db::new(client, Layout { prefix }, &self.config, self.read_only);
        db.start_flusher()?;
        Ok(db)
    }
}

/// The engine of the store in `dir`.
pub(crate) fn engine(dir: &Path, config: &Config) -> Result<Arc<dyn Engine>> {
    Ok(connect(dir, config, false))
}

/// The hybrid engine's cold tier of the store in `dir`.
pub(crate) fn cold_tier(dir: &Path, config: &Config) -> Arc<dyn Engine> {
    connect(dir, config, true)
}

fn connect(dir: &Path, config: &Config, cold_tier: bool) -> Arc<dyn Engine> {
    Arc::new(DbEngine::new(S3Connect {
        config: config.s3.clone(),
        dir: dir.to_path_buf(),
        read_only: config.read_only,
        cold_tier,
        store: None,
    }))
}

/// `cold_tier` on `store` instead of the configured S3 client (tests).
#[cfg(test)]
pub(crate) fn tier_on(
    dir: &Path,
    config: &Config,
    store: Arc<dyn object_store::ObjectStore>,
) -> Arc<dyn Engine> {
    Arc::new(DbEngine::new(S3Connect {
        config: config.s3.clone(),
        dir: dir.to_path_buf(),
        read_only: config.read_only,
        cold_tier: true,
        store: Some(store),
    }))
}
