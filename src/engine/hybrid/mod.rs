//! The hybrid engine (`engine = "hybrid"`, the `big_data` preset): hot and
//! warm data in a local engine (`[hybrid] local`: the journal, or the file
//! engine), cold data in objects (the S3 engine, under the store's prefix
//! followed by `/hybrid`). Appends, durability and pipelining are the
//! local engine's; a background tierer (`mqs-hybrid-tier`, every
//! `tier_interval_ms`) moves each shard's batches older than
//! `hot_duration_ms`, and the oldest beyond `hot_bytes`, to the cold tier
//! (`shard::HybridShard::tier`: copy, then local delete), so local disk
//! holds the hot window and the local engine frees what moved. Reads,
//! timestamp and key lookups, deletes, retention and transfers route by
//! offset (`shard`). Age retention applies in each tier; the size limits
//! count both (`HybridShard::trim`).
//!
//! The local tier lives in `<store>/hybrid/` (its own journal or file
//! directories), apart from the store's journal and file shards; the
//! hybrid shard `s` is shard `s` of both tiers' engines.

mod shard;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use self::shard::{HybridShard, LocalTier};
use super::registry::{self, Capabilities, TransferPath};
use super::{Engine, RecoveredShard, Shard};
use crate::config::{Config, Durability, EngineKind, HybridConfig, ShardOptions};
use crate::log::{self, Level};
use crate::{Error, Result};

pub(crate) const CAPABILITIES: Capabilities = Capabilities {
    durability: &[Durability::None, Durability::Os, Durability::Fsync],
    default_durability: Durability::Fsync,
    durability_limit: "",
    persistent: true,
    native_key_index: false,
    pipelined: true,
    // Hot data from the local engine's files; cold data read into memory.
    transfer: TransferPath::Sendfile,
};

/// The local tier's directory in the store.
const LOCAL_DIR: &str = "hybrid";

/// In `LOCAL_DIR`: each hybrid shard's own options, name → `[shard]` TOML
/// (its size limits are the hybrid shard's; its tiers do not apply them),
/// replaced durably when a shard is created or removed.
const OPTIONS_FILE: &str = "shards.json";

#[derive(Default)]
struct Wake {
    stop: Mutex<bool>,
    signal: Condvar,
}

pub(crate) struct HybridEngine {
    local: Arc<dyn Engine>,
    cold: Arc<dyn Engine>,
    local_dir: PathBuf,
    settings: HybridConfig,
    config: Config,
    /// `OPTIONS_FILE`'s content, loaded at open.
    options: Mutex<HashMap<String, String>>,
    read_only: bool,
    shards: Arc<Mutex<HashMap<String, Arc<HybridShard>>>>,
    wake: Arc<Wake>,
    tierer: Mutex<Option<JoinHandle<()>>>,
}

/// The engine of the store in `dir`.
pub(crate) fn engine(dir: &Path, config: &Config) -> Result<Arc<dyn Engine>> {
    let local_dir = dir.join(LOCAL_DIR);
    let local = registry::spec(config.hybrid.local).build(&local_dir, config)?;
    let cold = super::s3::cold_tier(dir, config);
    Ok(Arc::new(HybridEngine::new(local, cold, local_dir, config)))
}

impl HybridEngine {
    fn new(
        local: Arc<dyn Engine>,
        cold: Arc<dyn Engine>,
        local_dir: PathBuf,
        config: &Config,
    ) -> HybridEngine {
        HybridEngine {
            local,
            cold,
            local_dir,
            settings: config.hybrid.clone(),
            config: config.clone(),
            options: Mutex::new(HashMap::new()),
            read_only: config.read_only,
            shards: Arc::default(),
            wake: Arc::default(),
            tierer: Mutex::new(None),
        }
    }

    /// The local tier's options: the shard's, with its age retention (a
    /// batch the local tier expires, the cold tier's older ones would
    /// too); the size limits count both tiers and the hybrid shard
    /// applies them (`HybridShard::trim`).
    fn local_options(&self, options: &ShardOptions) -> ShardOptions {
        ShardOptions {
            engine: self.settings.local,
            retention_bytes: 0,
            retention_records: 0,
            ..options.clone()
        }
    }

    /// The cold tier's options: likewise, and `fsync`, so that a copy is
    /// stored before the local batches go.
    fn cold_options(options: &ShardOptions) -> ShardOptions {
        ShardOptions {
            engine: EngineKind::S3,
            durability: Durability::Fsync,
            retention_bytes: 0,
            retention_records: 0,
            ..options.clone()
        }
    }

    fn hybrid(
        &self,
        name: &str,
        options: ShardOptions,
        local: Arc<dyn Shard>,
        cold: Arc<dyn Shard>,
    ) -> Result<Arc<HybridShard>> {
        let local_tier = LocalTier {
            engine: self.local.clone(),
            name: name.to_string(),
            options: self.local_options(&options),
        };
        let shard = HybridShard::new(options, local, local_tier, cold, self.settings.clone())?;
        let shard = Arc::new(shard);
        self.shards.lock().insert(name.to_string(), shard.clone());
        self.start_tierer()?;
        Ok(shard)
    }

    fn load_options(&self) -> Result<HashMap<String, String>> {
        let path = self.local_dir.join(OPTIONS_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| Error::corruption(format!("'{}': {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HashMap::new()),
            Err(e) => Err(Error::io(format!("reading '{}'", path.display()), e)),
        }
    }

    /// Records (`Some`) or forgets a shard's options, durably.
    fn keep_options(&self, name: &str, options: Option<&ShardOptions>) -> Result<()> {
        let mut all = self.options.lock();
        match options {
            Some(options) => all.insert(name.to_string(), options.to_toml()),
            None => all.remove(name),
        };
        std::fs::create_dir_all(&self.local_dir)
            .map_err(|e| Error::io(format!("creating '{}'", self.local_dir.display()), e))?;
        let json = serde_json::to_vec(&*all).expect("a map of strings serializes");
        crate::io::replace_file_durably(&self.local_dir, OPTIONS_FILE, &json)
    }

    fn start_tierer(&self) -> Result<()> {
        let mut slot = self.tierer.lock();
        if slot.is_some() || self.read_only {
            return Ok(());
        }
        let (shards, wake) = (Arc::downgrade(&self.shards), self.wake.clone());
        let interval = Duration::from_millis(self.settings.tier_interval_ms);
        *slot = Some(crate::thread::spawn("mqs-hybrid-tier", move || {
            tierer(shards, wake, interval)
        })?);
        Ok(())
    }

    fn stop_tierer(&self) {
        *self.wake.stop.lock() = true;
        self.wake.signal.notify_all();
        if let Some(handle) = self.tierer.lock().take() {
            let _ = handle.join();
        }
    }
}

fn tierer(
    shards: Weak<Mutex<HashMap<String, Arc<HybridShard>>>>,
    wake: Arc<Wake>,
    interval: Duration,
) {
    crate::thread::lower_priority();
    loop {
        {
            let mut stop = wake.stop.lock();
            if !*stop {
                wake.signal.wait_for(&mut stop, interval);
            }
            if *stop {
                return;
            }
        }
        let Some(shards) = shards.upgrade() else {
            return;
        };
        let all: Vec<(String, Arc<HybridShard>)> = shards
            .lock()
            .iter()
            .map(|(name, shard)| (name.clone(), shard.clone()))
            .collect();
        drop(shards);
        let now = crate::time::now_ms();
        for (name, shard) in all {
            if *wake.stop.lock() {
                return;
            }
            if let Err(e) = shard.tier(now) {
                log::emit(Level::Warn, &format!("hybrid shard '{name}': moving data to the cold tier: {e} (tried again later)"));
            }
        }
    }
}

impl Engine for HybridEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Hybrid
    }

    fn create_shard(&self, name: &str, options: &ShardOptions) -> Result<Arc<dyn Shard>> {
        self.keep_options(name, Some(options))?;
        let created = self
            .local
            .create_shard(name, &self.local_options(options))
            .and_then(
                |local| match self.cold.create_shard(name, &Self::cold_options(options)) {
                    Ok(cold) => Ok((local, cold)),
                    Err(e) => {
                        let _ = self.local.remove_shard(name, &local);
                        Err(e)
                    }
                },
            );
        match created {
            Ok((local, cold)) => Ok(self.hybrid(name, options.clone(), local, cold)?),
            Err(e) => {
                // Best effort: the error reported is the creation's.
                let _ = self.keep_options(name, None);
                Err(e)
            }
        }
    }

    /// The local shard first: a crash in between leaves a cold shard
    /// without its local one, which the next open removes.
    fn remove_shard(&self, name: &str, _shard: &Arc<dyn Shard>) -> Result<()> {
        let Some(shard) = self.shards.lock().get(name).cloned() else {
            return Ok(());
        };
        self.local.remove_shard(name, &shard.local())?;
        self.cold.remove_shard(name, &shard.cold)?;
        self.shards.lock().remove(name);
        self.keep_options(name, None)
    }

    fn close(&self) -> Result<()> {
        self.stop_tierer();
        let local = self.local.close();
        let cold = self.cold.close();
        local.and(cold)
    }

    /// Pairs the tiers' shards by name. A local shard whose cold one is
    /// missing (a crash while it was created) gets an empty one; a cold
    /// shard without its local one (a crash while it was removed) goes.
    fn recover(&self) -> Result<Vec<RecoveredShard>> {
        if !self.local_dir.exists() {
            return Ok(Vec::new());
        }
        let mut options_of = self.load_options()?;
        *self.options.lock() = options_of.clone();
        let local = self.local.recover()?;
        let mut cold: HashMap<String, Arc<dyn Shard>> = self
            .cold
            .recover()?
            .into_iter()
            .map(|(name, _, shard)| (name, shard))
            .collect();
        let mut out = Vec::new();
        for (name, local_options, local_shard) in local {
            let cold_shard = match cold.remove(&name) {
                Some(shard) => shard,
                None if self.read_only => {
                    return Err(Error::corruption(format!(
                        "hybrid shard '{name}' has no cold tier shard (a creation that did not finish)"
                    )));
                }
                None => self
                    .cold
                    .create_shard(&name, &Self::cold_options(&local_options))?,
            };
            let options = match options_of.remove(&name) {
                Some(text) => self.config.shard_options(Some(&text))?,
                None => ShardOptions {
                    engine: EngineKind::Hybrid,
                    ..local_options.clone()
                },
            };
            let shard = self.hybrid(&name, options.clone(), local_shard, cold_shard)?;
            if !self.read_only {
                shard.reconcile()?;
            }
            out.push((name, options, shard as Arc<dyn Shard>));
        }
        for (name, orphan) in cold {
            if !self.read_only {
                self.cold.remove_shard(&name, &orphan)?;
            }
        }
        Ok(out)
    }
}
