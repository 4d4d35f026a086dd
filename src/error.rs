//! One error type for the whole library. Every variant maps to exactly one
//! C status code (`Status`), one Python exception class and one C++ exception
//! code, so a failure reads the same through every binding.

use std::io;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Status codes shared by every binding. `Ok` is 0; the numbers are part of
/// the C ABI and never change meaning once released.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    Ok = 0,
    /// A required pointer was NULL, a string was not UTF-8, or an argument is
    /// out of its allowed range.
    InvalidArgument = 1,
    /// The configuration (store or shard options) is malformed or names an
    /// unknown key or an invalid value.
    InvalidConfig = 2,
    /// No shard with that name exists.
    ShardNotFound = 3,
    /// A shard with that name already exists.
    ShardExists = 4,
    /// A record or batch exceeds `max_record_bytes` / `max_batch_bytes`.
    RecordTooLarge = 5,
    /// The offset lies outside `[first_offset, next_offset]` of the shard.
    OffsetOutOfRange = 6,
    /// The handle was already closed or freed, or is not a handle at all.
    InvalidHandle = 7,
    /// The store was closed; no further operation is possible.
    Closed = 8,
    /// Stored bytes failed validation (CRC mismatch, truncated batch, bad magic).
    Corruption = 9,
    /// An operating-system I/O call failed; the message carries errno's text.
    Io = 10,
    /// A non-blocking descriptor would block; the transfer keeps its progress
    /// and can be resumed.
    WouldBlock = 11,
    /// The requested engine is not compiled into this build or not
    /// implemented yet, or the call would change a store opened read-only.
    Unsupported = 12,
    /// A previous unrecoverable failure (such as a failed fsync) poisoned the store.
    Poisoned = 13,
    /// A bug in mqstore: a Rust panic caught at the FFI boundary.
    Internal = 14,
    /// The store directory is locked by another open store (this or another process).
    Locked = 15,
    /// An idempotent producer's batch carries an epoch older than the
    /// producer's current one: a newer instance of the producer took over.
    ProducerFenced = 16,
    /// An idempotent producer's batch does not continue its sequence (a gap,
    /// or a new epoch not starting at 0); nothing was stored.
    OutOfOrderSequence = 17,
    /// The batches were stored before (a producer's retry): nothing was
    /// stored again, and the original base offsets are returned.
    DuplicateSequence = 18,
}

impl Status {
    /// A static, human-readable name for the status.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::InvalidArgument => "invalid argument",
            Status::InvalidConfig => "invalid configuration",
            Status::ShardNotFound => "shard not found",
            Status::ShardExists => "shard already exists",
            Status::RecordTooLarge => "record too large",
            Status::OffsetOutOfRange => "offset out of range",
            Status::InvalidHandle => "invalid handle",
            Status::Closed => "store closed",
            Status::Corruption => "corruption",
            Status::Io => "I/O error",
            Status::WouldBlock => "operation would block",
            Status::Unsupported => "unsupported",
            Status::Poisoned => "store poisoned",
            Status::Internal => "internal error",
            Status::Locked => "store directory locked",
            Status::ProducerFenced => "producer fenced",
            Status::OutOfOrderSequence => "out-of-order sequence",
            Status::DuplicateSequence => "duplicate sequence",
        }
    }
}

/// The library's error: a status plus a message that names what went wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    #[error("shard not found: '{0}'")]
    ShardNotFound(String),
    #[error("shard already exists: '{0}'")]
    ShardExists(String),
    #[error("record too large: {size} bytes exceeds the limit of {limit} bytes")]
    RecordTooLarge { size: usize, limit: usize },
    /// A producer batch (or one of its records) over the store's limits.
    #[error("batch {index}: {what} of {size} bytes exceeds the limit of {limit} bytes")]
    BatchTooLarge {
        index: usize,
        what: &'static str,
        size: usize,
        limit: usize,
    },
    #[error("offset {offset} out of range for shard '{shard}' (valid: {first}..={next})")]
    OffsetOutOfRange {
        shard: String,
        offset: i64,
        first: i64,
        next: i64,
    },
    /// `wait_durable` for an offset the shard never assigned (reported as
    /// `OffsetOutOfRange`).
    #[error("offset {offset} was never appended to shard '{shard}' (its next offset is {next})")]
    NotAppended {
        shard: String,
        offset: i64,
        next: i64,
    },
    #[error("store is closed")]
    Closed,
    #[error("corruption: {0}")]
    Corruption(String),
    #[error("I/O error: {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("operation would block after {sent} of {total} bytes")]
    WouldBlock { sent: u64, total: u64 },
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("store poisoned by an earlier failure: {0}")]
    Poisoned(String),
    #[error("store directory '{0}' is locked by another open store")]
    Locked(String),
    /// A database directory inside the store (the RocksDB engine's) is
    /// held by another open database: another process (a RocksDB tool) or
    /// another store of this process reaching it through a link.
    #[error(
        "database directory '{path}' is locked: another process or store has it open ({detail})"
    )]
    DbLocked { path: String, detail: String },
    #[error("internal error: {0}")]
    Internal(String),
    #[error("producer fenced: {0}")]
    ProducerFenced(String),
    #[error("out-of-order sequence: {0}")]
    OutOfOrderSequence(String),
    /// A retried request: `base_offsets` are where its batches were stored.
    #[error("duplicate sequence: shard '{shard}': the batches were stored before at base offsets {base_offsets:?}")]
    DuplicateSequence {
        shard: String,
        base_offsets: Vec<i64>,
    },
}

impl Error {
    /// The status code this error is reported as through every binding.
    pub fn status(&self) -> Status {
        match self {
            Error::InvalidArgument(_) => Status::InvalidArgument,
            Error::InvalidConfig(_) => Status::InvalidConfig,
            Error::ShardNotFound(_) => Status::ShardNotFound,
            Error::ShardExists(_) => Status::ShardExists,
            Error::RecordTooLarge { .. } | Error::BatchTooLarge { .. } => Status::RecordTooLarge,
            Error::OffsetOutOfRange { .. } | Error::NotAppended { .. } => Status::OffsetOutOfRange,
            Error::Closed => Status::Closed,
            Error::Corruption(_) => Status::Corruption,
            Error::Io { .. } => Status::Io,
            Error::WouldBlock { .. } => Status::WouldBlock,
            Error::Unsupported(_) => Status::Unsupported,
            Error::Poisoned(_) => Status::Poisoned,
            Error::Locked(_) | Error::DbLocked { .. } => Status::Locked,
            Error::Internal(_) => Status::Internal,
            Error::ProducerFenced(_) => Status::ProducerFenced,
            Error::OutOfOrderSequence(_) => Status::OutOfOrderSequence,
            Error::DuplicateSequence { .. } => Status::DuplicateSequence,
        }
    }

    /// Wraps an `io::Error` with what was being done when it happened.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn corruption(message: impl Into<String>) -> Self {
        Error::Corruption(message.into())
    }

    /// The same failure again, for one more caller of a shared operation
    /// (a group commit's round): `Error` is not `Clone`, its `io::Error`
    /// is kept as kind and message. Variants a shared write cannot fail
    /// with become `Internal`, keeping their message.
    #[cfg(any(feature = "mysql", feature = "redis"))]
    pub(crate) fn duplicate(&self) -> Error {
        match self {
            Error::Io { context, source } => Error::io(
                context.clone(),
                io::Error::new(source.kind(), source.to_string()),
            ),
            Error::InvalidConfig(m) => Error::InvalidConfig(m.clone()),
            Error::InvalidArgument(m) => Error::InvalidArgument(m.clone()),
            Error::Corruption(m) => Error::Corruption(m.clone()),
            Error::Unsupported(m) => Error::Unsupported(m.clone()),
            Error::Poisoned(m) => Error::Poisoned(m.clone()),
            Error::Closed => Error::Closed,
            other => Error::Internal(other.to_string()),
        }
    }
}
