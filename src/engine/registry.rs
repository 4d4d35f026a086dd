//! The engine registry: every engine the product knows, what each one can
//! honour, and how to build the ones in this build. The store, the C API
//! and the bindings look engines up here instead of matching on
//! `EngineKind`, so a new engine is one entry (and its module).

use std::ffi::CStr;
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use super::Engine;
use crate::config::{Config, Durability, EngineKind, ShardOptions};
use crate::{Error, Result};

/// How an engine's transfers reach a descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferPath {
    /// Buffers the engine holds, gathered into sendmsg(2)/writev(2).
    Memory,
    /// Ranges of the engine's files, sent with sendfile(2) (the newest
    /// batches may come from memory).
    Sendfile,
    /// Lazy chunks: bytes fetched from the engine while the plan is sent,
    /// at most 1 MiB at a time, each piece written with one write.
    Fetched,
}

/// What an engine can honour, declared once.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Capabilities {
    /// The durability modes it can acknowledge with.
    pub durability: &'static [Durability],
    /// The mode a shard gets when it names the engine without a mode and
    /// the store's default is one the engine cannot honour.
    pub default_durability: Durability,
    /// Why the modes it lacks are missing (completes the refusal message).
    #[serde(skip)]
    pub durability_limit: &'static str,
    /// Shards survive a restart (so their consumer-group offsets are saved).
    pub persistent: bool,
    /// Looks keys up in an index of its own instead of testing every
    /// batch's key filter.
    pub native_key_index: bool,
    /// `append_nowait` returns before the batch is durable (otherwise it
    /// acknowledges like `append`).
    pub pipelined: bool,
    pub transfer: TransferPath,
}

type Build = fn(&Path, &Config) -> Result<Arc<dyn Engine>>;

/// One engine of the product.
pub struct EngineSpec {
    pub kind: EngineKind,
    pub name: &'static str,
    pub c_name: &'static CStr,
    /// `None`: not in this build (planned, or compiled out).
    build: Option<(Capabilities, Build)>,
}

impl EngineSpec {
    pub fn available(&self) -> bool {
        self.build.is_some()
    }

    pub fn capabilities(&self) -> Option<&Capabilities> {
        self.build.as_ref().map(|(caps, _)| caps)
    }

    /// Builds the engine for the store in `dir`. Persistent engines only
    /// read here; they create their files when the first shard needs them.
    pub fn build(&self, dir: &Path, config: &Config) -> Result<Arc<dyn Engine>> {
        match &self.build {
            Some((_, build)) => build(dir, config),
            None => Err(Error::Unsupported(format!(
                "engine '{}' is not available in this build (available: {})",
                self.name,
                available()
                    .map(|spec| spec.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// Refuses options the engine cannot honour, naming the engine and what
    /// it lacks.
    pub fn check(&self, options: &ShardOptions) -> Result<()> {
        let Some(caps) = self.capabilities() else {
            return self.build(Path::new(""), &Config::default()).map(|_| ());
        };
        if !caps.durability.contains(&options.durability) {
            let honoured: Vec<&str> = caps.durability.iter().map(|d| d.name()).collect();
            return Err(Error::InvalidConfig(format!(
                "durability: engine '{}' cannot acknowledge with '{}' ({}); it honours: {}",
                self.name,
                options.durability.name(),
                caps.durability_limit,
                honoured.join(", ")
            )));
        }
        Ok(())
    }
}

const ALL_DURABILITY: &[Durability] = &[Durability::None, Durability::Os, Durability::Fsync];

fn build_memory(_dir: &Path, _config: &Config) -> Result<Arc<dyn Engine>> {
    Ok(Arc::new(super::memory::MemoryEngine))
}

#[cfg(feature = "journal")]
fn build_journal(dir: &Path, config: &Config) -> Result<Arc<dyn Engine>> {
    Ok(Arc::new(
        super::journal::JournalEngine::new(dir, config.journal.clone()).read_only(config.read_only),
    ))
}

fn build_file(dir: &Path, config: &Config) -> Result<Arc<dyn Engine>> {
    Ok(Arc::new(
        super::file::FileEngine::new(dir, config.file.clone()).read_only(config.read_only),
    ))
}

#[cfg(feature = "rocksdb")]
fn build_rocksdb(dir: &Path, config: &Config) -> Result<Arc<dyn Engine>> {
    let connect = super::rocksdb::RocksConnect {
        dir: dir.join(super::rocksdb::ROCKSDB_DIR),
        config: config.rocksdb.clone(),
        read_only: config.read_only,
    };
    Ok(Arc::new(super::rocksdb::RocksdbEngine::new(connect)))
}

#[cfg(feature = "mysql")]
fn build_mysql(dir: &Path, config: &Config) -> Result<Arc<dyn Engine>> {
    super::mysql::engine(dir, config)
}

#[cfg(feature = "redis")]
fn build_redis(dir: &Path, config: &Config) -> Result<Arc<dyn Engine>> {
    super::redis::engine(dir, config)
}

#[cfg(feature = "s3")]
fn build_s3(dir: &Path, config: &Config) -> Result<Arc<dyn Engine>> {
    super::s3::engine(dir, config)
}

#[cfg(feature = "s3")]
fn build_hybrid(dir: &Path, config: &Config) -> Result<Arc<dyn Engine>> {
    super::hybrid::engine(dir, config)
}

static ENGINES: &[EngineSpec] = &[
    EngineSpec {
        kind: EngineKind::Memory,
        name: "memory",
        c_name: c"memory",
        build: Some((
            Capabilities {
                durability: &[Durability::None],
                default_durability: Durability::None,
                durability_limit: "the memory engine keeps nothing across a crash; \
                                   use a persistent engine for os or fsync",
                persistent: false,
                native_key_index: false,
                pipelined: false,
                transfer: TransferPath::Memory,
            },
            build_memory,
        )),
    },
    EngineSpec {
        kind: EngineKind::Journal,
        name: "journal",
        c_name: c"journal",
        #[cfg(feature = "journal")]
        build: Some((
            Capabilities {
                durability: ALL_DURABILITY,
                default_durability: Durability::Fsync,
                durability_limit: "",
                persistent: true,
                native_key_index: false,
                pipelined: true,
                transfer: TransferPath::Sendfile,
            },
            build_journal,
        )),
        #[cfg(not(feature = "journal"))]
        build: None,
    },
    EngineSpec {
        kind: EngineKind::File,
        name: "file",
        c_name: c"file",
        build: Some((
            Capabilities {
                durability: ALL_DURABILITY,
                default_durability: Durability::Fsync,
                durability_limit: "",
                persistent: true,
                native_key_index: false,
                pipelined: false,
                transfer: TransferPath::Sendfile,
            },
            build_file,
        )),
    },
    EngineSpec {
        kind: EngineKind::Rocksdb,
        name: "rocksdb",
        c_name: c"rocksdb",
        #[cfg(feature = "rocksdb")]
        build: Some((
            Capabilities {
                durability: ALL_DURABILITY,
                default_durability: Durability::Fsync,
                durability_limit: "",
                persistent: true,
                // Keys are found through the shared index's key filters,
                // like the journal's; RocksDB's keys are offsets.
                native_key_index: false,
                // `append_nowait` on an fsync shard writes the WAL unsynced;
                // `wait_durable` syncs it once for every waiter.
                pipelined: true,
                transfer: TransferPath::Fetched,
            },
            build_rocksdb,
        )),
        #[cfg(not(feature = "rocksdb"))]
        build: None,
    },
    EngineSpec {
        kind: EngineKind::S3,
        name: "s3",
        c_name: c"s3",
        #[cfg(feature = "s3")]
        build: Some((super::s3::CAPABILITIES, build_s3)),
        #[cfg(not(feature = "s3"))]
        build: None,
    },
    EngineSpec {
        kind: EngineKind::Hybrid,
        name: "hybrid",
        c_name: c"hybrid",
        #[cfg(feature = "s3")]
        build: Some((super::hybrid::CAPABILITIES, build_hybrid)),
        #[cfg(not(feature = "s3"))]
        build: None,
    },
    EngineSpec {
        kind: EngineKind::Mysql,
        name: "mysql",
        c_name: c"mysql",
        #[cfg(feature = "mysql")]
        build: Some((super::mysql::CAPABILITIES, build_mysql)),
        #[cfg(not(feature = "mysql"))]
        build: None,
    },
    EngineSpec {
        kind: EngineKind::Redis,
        name: "redis",
        c_name: c"redis",
        #[cfg(feature = "redis")]
        build: Some((super::redis::CAPABILITIES, build_redis)),
        #[cfg(not(feature = "redis"))]
        build: None,
    },
];

/// Every engine the product knows, available in this build or not.
pub fn all() -> &'static [EngineSpec] {
    ENGINES
}

/// The engines compiled into this build.
pub fn available() -> impl Iterator<Item = &'static EngineSpec> {
    ENGINES.iter().filter(|spec| spec.available())
}

pub fn spec(kind: EngineKind) -> &'static EngineSpec {
    ENGINES
        .iter()
        .find(|spec| spec.kind == kind)
        .expect("every engine kind has a registry entry")
}

/// The engines of this build and their capabilities, as JSON (stats).
pub fn to_json() -> serde_json::Value {
    available()
        .map(|spec| {
            let caps = serde_json::to_value(spec.capabilities()).unwrap_or_default();
            (spec.name.to_string(), caps)
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_one_entry_named_as_the_config_names_it() {
        for spec in all() {
            assert_eq!(spec.kind.name(), spec.name);
            assert_eq!(spec.c_name.to_str().unwrap(), spec.name);
            assert_eq!(all().iter().filter(|s| s.kind == spec.kind).count(), 1);
        }
    }

    #[test]
    fn an_engine_asked_for_what_it_cannot_honour_is_refused_by_name() {
        let options = ShardOptions {
            engine: EngineKind::Memory,
            durability: Durability::Fsync,
            ..ShardOptions::default()
        };
        let err = spec(EngineKind::Memory).check(&options).unwrap_err();
        assert_eq!(err.status(), crate::Status::InvalidConfig);
        let message = err.to_string();
        assert!(message.contains("engine 'memory'"), "{message}");
        assert!(message.contains("'fsync'"), "{message}");
        assert!(message.contains("it honours: none"), "{message}");
    }

    // Every engine is in the default build; the edge build (no default
    // features) runs this.
    #[cfg(not(feature = "s3"))]
    #[test]
    fn an_engine_not_in_the_build_is_unsupported() {
        let options = ShardOptions {
            engine: EngineKind::Hybrid,
            ..ShardOptions::default()
        };
        let err = spec(EngineKind::Hybrid).check(&options).unwrap_err();
        assert_eq!(err.status(), crate::Status::Unsupported);
        assert!(err.to_string().contains("engine 'hybrid'"), "{err}");
    }
}
