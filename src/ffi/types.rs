//! The `#[repr(C)]` types and constants of the C ABI. cbindgen copies them,
//! with these doc comments, into `include/mqstore.h`.

use std::ffi::c_int;

use crate::Status;

/// The library's major version; `mqs_version()` is "MAJOR.MINOR.PATCH".
pub const MQS_VERSION_MAJOR: u32 = 0;
/// The library's minor version.
pub const MQS_VERSION_MINOR: u32 = 2;
/// The library's patch version.
pub const MQS_VERSION_PATCH: u32 = 0;

/// `mqs_offset_for_timestamp`: the low watermark (Kafka's ListOffsets -2).
pub const MQS_TIMESTAMP_EARLIEST: i64 = -2;
/// `mqs_offset_for_timestamp`: the high watermark (Kafka's ListOffsets -1).
pub const MQS_TIMESTAMP_LATEST: i64 = -1;

const _: () = assert!(MQS_TIMESTAMP_EARLIEST == crate::TIMESTAMP_EARLIEST);
const _: () = assert!(MQS_TIMESTAMP_LATEST == crate::TIMESTAMP_LATEST);

/// Parses a decimal version component at compile time.
const fn parse_version_component(text: &str) -> u32 {
    let bytes = text.as_bytes();
    assert!(!bytes.is_empty(), "empty version component");
    let mut value = 0u32;
    let mut index = 0;
    while index < bytes.len() {
        let digit = bytes[index];
        assert!(digit.is_ascii_digit(), "version component is not a number");
        value = value * 10 + (digit - b'0') as u32;
        index += 1;
    }
    value
}

// cbindgen only emits literal constants, so the version is written as
// literals above; these assertions keep them equal to Cargo.toml's version
// (and tests/header.rs checks the generated header's macros).
const _: () = assert!(
    MQS_VERSION_MAJOR == parse_version_component(env!("CARGO_PKG_VERSION_MAJOR")),
    "MQS_VERSION_MAJOR differs from Cargo.toml"
);
const _: () = assert!(
    MQS_VERSION_MINOR == parse_version_component(env!("CARGO_PKG_VERSION_MINOR")),
    "MQS_VERSION_MINOR differs from Cargo.toml"
);
const _: () = assert!(
    MQS_VERSION_PATCH == parse_version_component(env!("CARGO_PKG_VERSION_PATCH")),
    "MQS_VERSION_PATCH differs from Cargo.toml"
);

/// The result of every fallible call. `MQS_OK` is 0; the numbers are part of
/// the ABI and never change meaning. On any other value,
/// `mqs_last_error_message()` describes the failure.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum mqs_status {
    /// Success.
    MQS_OK = 0,
    /// A required pointer was NULL, a string was not UTF-8, or an argument is
    /// out of its allowed range.
    MQS_INVALID_ARGUMENT = 1,
    /// The configuration (store or shard options) is malformed or names an
    /// unknown key or an invalid value.
    MQS_INVALID_CONFIG = 2,
    /// No shard with that name exists.
    MQS_SHARD_NOT_FOUND = 3,
    /// A shard with that name already exists.
    MQS_SHARD_EXISTS = 4,
    /// A record or batch exceeds `max_record_bytes` / `max_batch_bytes`.
    MQS_RECORD_TOO_LARGE = 5,
    /// The offset lies outside `[first_offset, next_offset]` of the shard.
    MQS_OFFSET_OUT_OF_RANGE = 6,
    /// The handle was already closed or freed, or is not a handle at all.
    MQS_INVALID_HANDLE = 7,
    /// The store was closed; no further operation is possible.
    MQS_CLOSED = 8,
    /// Stored bytes failed validation (CRC mismatch, truncated batch, bad magic).
    MQS_CORRUPTION = 9,
    /// An operating-system I/O call failed; the message carries errno's text.
    MQS_IO = 10,
    /// A non-blocking descriptor would block; the transfer keeps its progress
    /// and can be resumed.
    MQS_WOULD_BLOCK = 11,
    /// The requested engine is not compiled into this build or not
    /// implemented yet, or the call would change a store opened read-only.
    MQS_UNSUPPORTED = 12,
    /// A previous unrecoverable failure (such as a failed fsync) poisoned the store.
    MQS_POISONED = 13,
    /// A bug in mqstore: a Rust panic caught at the C boundary.
    MQS_INTERNAL = 14,
    /// The store directory is locked by another open store (this or another process).
    MQS_LOCKED = 15,
    /// An idempotent producer's batch has an epoch older than the
    /// producer's current one (a newer instance took over); nothing stored.
    MQS_PRODUCER_FENCED = 16,
    /// An idempotent producer's batch does not continue its sequence;
    /// nothing stored.
    MQS_OUT_OF_ORDER_SEQUENCE = 17,
    /// A producer's retry of batches already stored: nothing stored again;
    /// the original base offset is returned.
    MQS_DUPLICATE_SEQUENCE = 18,
}

impl From<Status> for mqs_status {
    fn from(status: Status) -> Self {
        match status {
            Status::Ok => mqs_status::MQS_OK,
            Status::InvalidArgument => mqs_status::MQS_INVALID_ARGUMENT,
            Status::InvalidConfig => mqs_status::MQS_INVALID_CONFIG,
            Status::ShardNotFound => mqs_status::MQS_SHARD_NOT_FOUND,
            Status::ShardExists => mqs_status::MQS_SHARD_EXISTS,
            Status::RecordTooLarge => mqs_status::MQS_RECORD_TOO_LARGE,
            Status::OffsetOutOfRange => mqs_status::MQS_OFFSET_OUT_OF_RANGE,
            Status::InvalidHandle => mqs_status::MQS_INVALID_HANDLE,
            Status::Closed => mqs_status::MQS_CLOSED,
            Status::Corruption => mqs_status::MQS_CORRUPTION,
            Status::Io => mqs_status::MQS_IO,
            Status::WouldBlock => mqs_status::MQS_WOULD_BLOCK,
            Status::Unsupported => mqs_status::MQS_UNSUPPORTED,
            Status::Poisoned => mqs_status::MQS_POISONED,
            Status::Internal => mqs_status::MQS_INTERNAL,
            Status::Locked => mqs_status::MQS_LOCKED,
            Status::ProducerFenced => mqs_status::MQS_PRODUCER_FENCED,
            Status::OutOfOrderSequence => mqs_status::MQS_OUT_OF_ORDER_SEQUENCE,
            Status::DuplicateSequence => mqs_status::MQS_DUPLICATE_SEQUENCE,
        }
    }
}

impl From<mqs_status> for Status {
    fn from(status: mqs_status) -> Self {
        match status {
            mqs_status::MQS_OK => Status::Ok,
            mqs_status::MQS_INVALID_ARGUMENT => Status::InvalidArgument,
            mqs_status::MQS_INVALID_CONFIG => Status::InvalidConfig,
            mqs_status::MQS_SHARD_NOT_FOUND => Status::ShardNotFound,
            mqs_status::MQS_SHARD_EXISTS => Status::ShardExists,
            mqs_status::MQS_RECORD_TOO_LARGE => Status::RecordTooLarge,
            mqs_status::MQS_OFFSET_OUT_OF_RANGE => Status::OffsetOutOfRange,
            mqs_status::MQS_INVALID_HANDLE => Status::InvalidHandle,
            mqs_status::MQS_CLOSED => Status::Closed,
            mqs_status::MQS_CORRUPTION => Status::Corruption,
            mqs_status::MQS_IO => Status::Io,
            mqs_status::MQS_WOULD_BLOCK => Status::WouldBlock,
            mqs_status::MQS_UNSUPPORTED => Status::Unsupported,
            mqs_status::MQS_POISONED => Status::Poisoned,
            mqs_status::MQS_INTERNAL => Status::Internal,
            mqs_status::MQS_LOCKED => Status::Locked,
            mqs_status::MQS_PRODUCER_FENCED => Status::ProducerFenced,
            mqs_status::MQS_OUT_OF_ORDER_SEQUENCE => Status::OutOfOrderSequence,
            mqs_status::MQS_DUPLICATE_SEQUENCE => Status::DuplicateSequence,
        }
    }
}

/// A status as it arrives from C: any `int`, valid or not. The header names it
/// `mqs_status` (cbindgen.toml renames it and suppresses its typedef), while
/// Rust reads it as a plain integer so that an out-of-range value is not UB.
pub type mqs_status_arg = c_int;

/// A borrowed byte string. `data == NULL` means absent (no key, null header
/// value); `data == NULL` with `len > 0` is `MQS_INVALID_ARGUMENT`. On output
/// a present but empty key or value has a non-NULL `data` and `len == 0`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct mqs_slice {
    pub data: *const u8,
    pub len: usize,
}

impl mqs_slice {
    /// The absent slice: `{NULL, 0}`.
    pub const NULL: mqs_slice = mqs_slice {
        data: std::ptr::null(),
        len: 0,
    };
}

/// A record header. The key must be UTF-8 and present (non-NULL `data`); a
/// NULL `value.data` is a null value.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct mqs_header {
    pub key: mqs_slice,
    pub value: mqs_slice,
}

/// A record to append. Every pointer is borrowed for the duration of the call
/// only; nothing is retained, and payloads are not copied before encoding.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct mqs_record_in {
    /// `data == NULL`: the record has no key.
    pub key: mqs_slice,
    /// The value; `{NULL, 0}` is stored as an empty value (see
    /// `value_is_null`).
    pub value: mqs_slice,
    /// `header_count` headers (may be NULL when `header_count` is 0).
    pub headers: *const mqs_header,
    pub header_count: usize,
    /// `tag_count` tags, each present and UTF-8 (may be NULL when `tag_count` is 0).
    pub tags: *const mqs_slice,
    pub tag_count: usize,
    /// Milliseconds since the Unix epoch; 0 = now.
    pub timestamp_ms: i64,
    /// Milliseconds since the Unix epoch after which reads skip the record; 0 = never.
    pub expire_at_ms: i64,
    /// true: the value is null (a Kafka tombstone), which is not an empty
    /// value; `value` must then be `{NULL, 0}`. A zero-initialised record
    /// has a value.
    pub value_is_null: bool,
}

/// A stored record, as returned inside an `mqs_batch`. Every pointer is
/// borrowed from the batch and valid until `mqs_batch_free` (even after the
/// store is closed or the shard deleted). `headers`/`tags` are NULL when the
/// respective count is 0.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct mqs_record {
    pub offset: i64,
    pub timestamp_ms: i64,
    /// 0 = never expires.
    pub expire_at_ms: i64,
    pub key: mqs_slice,
    /// `{NULL, 0}` when `value_is_null`.
    pub value: mqs_slice,
    pub headers: *const mqs_header,
    pub header_count: usize,
    pub tags: *const mqs_slice,
    pub tag_count: usize,
    /// true: the value is null (a Kafka tombstone), as opposed to empty.
    pub value_is_null: bool,
}

/// A snapshot of one shard's state, filled by `mqs_shard_get_info`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct mqs_shard_info {
    /// Low watermark: the smallest offset that may still be read.
    pub first_offset: i64,
    /// High watermark: the offset the next append receives.
    pub next_offset: i64,
    /// Records currently stored.
    pub records: u64,
    /// Bytes of stored batches.
    pub bytes: u64,
    /// The engine's name, e.g. "memory": a static string, never freed.
    pub engine: *const std::ffi::c_char,
}

/// An open store (`mqs_store_open`). Thread-safe: share one handle freely
/// between threads; every call on it may run concurrently with any other,
/// including `mqs_store_close` (calls racing with the close either complete
/// or fail with `MQS_CLOSED` / `MQS_INVALID_HANDLE`, never touch freed
/// memory). After `mqs_store_close` the handle is invalid.
pub struct mqs_store {
    /// Gives every live handle its own address; the registry maps it to the store.
    _token: u64,
}

impl mqs_store {
    pub(crate) fn new() -> Self {
        mqs_store { _token: 0 }
    }
}
