//! mqstore: the storage engine that message brokers embed.
//!
//! Layers, top to bottom: [`ffi`] (the C ABI) → [`store`] (the storage
//! adapter: shards, routing, validation, group offsets) → [`engine`] (one
//! module per engine) → [`format`] (Kafka RecordBatch v2) and [`io`]
//! (zero-copy transfers). See docs/ARCHITECTURE.md.

pub mod compaction;
pub mod config;
pub mod engine;
pub mod error;
pub mod ffi;
pub mod format;
pub mod io;
pub mod log;
pub mod notify;
pub mod producer;
pub mod record;
mod retention;
pub mod store;
mod thread;
mod time;

pub use compaction::CompactionReport;
pub use config::{
    CleanupPolicy, Config, Durability, EngineKind, Preset, ShardOptions, TimestampType,
};
pub use engine::{ReadResult, ShardInfo, TIMESTAMP_EARLIEST, TIMESTAMP_LATEST};
pub use error::{Error, Result, Status};
pub use format::Compression;
pub use io::TransferPlan;
pub use notify::Completion;
pub use record::{Header, HeaderView, Record, RecordView};
pub use store::{SendfileResult, Store};

/// The library version, from Cargo.toml.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
