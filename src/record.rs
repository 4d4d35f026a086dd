//! Records as the API sees them: borrowed input for appends (`Record`) and
//! zero-copy views for reads (`RecordView`).

use bytes::Bytes;

/// Header names starting with this prefix are reserved for mqstore's own
/// fields (tags, expire-at) and rejected in user headers.
pub const RESERVED_HEADER_PREFIX: &str = "__mqs.";
/// One header per tag; the value is the tag's UTF-8 bytes.
pub const TAG_HEADER: &str = "__mqs.tag";
/// Expire-at time in milliseconds since the Unix epoch, 8 bytes big-endian.
pub const EXPIRE_AT_HEADER: &str = "__mqs.expire_at";

/// A user header on input. Kafka header keys are strings; values may be null.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header<'a> {
    pub key: &'a str,
    pub value: Option<&'a [u8]>,
}

/// A record to append. Nothing here is copied until the batch is encoded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record<'a> {
    pub key: Option<&'a [u8]>,
    /// `None` is a null value (a Kafka tombstone), distinct from an empty
    /// one.
    pub value: Option<&'a [u8]>,
    pub headers: Vec<Header<'a>>,
    pub tags: Vec<&'a str>,
    /// Milliseconds since the Unix epoch; 0 means "now" at append time.
    pub timestamp_ms: i64,
    /// Milliseconds since the Unix epoch after which reads skip the record.
    pub expire_at_ms: Option<i64>,
}

impl<'a> Record<'a> {
    /// A record with only a value.
    pub fn new(value: &'a [u8]) -> Self {
        Record {
            value: Some(value),
            ..Default::default()
        }
    }

    /// A tombstone: `key` with a null value (what log compaction keeps
    /// for a while, then removes with the key's earlier records).
    pub fn tombstone(key: &'a [u8]) -> Self {
        Record {
            key: Some(key),
            ..Default::default()
        }
    }

    /// Sets the key.
    pub fn with_key(mut self, key: &'a [u8]) -> Self {
        self.key = Some(key);
        self
    }
}

/// A header of a stored record. `key` is UTF-8 (checked when written).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderView {
    pub key: Bytes,
    pub value: Option<Bytes>,
}

/// A stored record. Every `Bytes` is a slice of the stored (or, for compressed
/// batches, decompressed) batch buffer: cloning or holding one copies nothing
/// and keeps the buffer alive, independent of the store's lifetime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordView {
    pub offset: i64,
    pub timestamp_ms: i64,
    pub key: Option<Bytes>,
    /// `None` for a null value (a tombstone).
    pub value: Option<Bytes>,
    /// User headers, in order, without mqstore's reserved headers.
    pub headers: Vec<HeaderView>,
    /// Tags (UTF-8), decoded from the reserved tag headers.
    pub tags: Vec<Bytes>,
    pub expire_at_ms: Option<i64>,
}

impl RecordView {
    /// The value's bytes, empty for a null value.
    pub fn value_bytes(&self) -> &[u8] {
        self.value.as_deref().unwrap_or_default()
    }

    /// Whether the record has expired at `now_ms`.
    pub fn is_expired(&self, now_ms: i64) -> bool {
        self.expire_at_ms.is_some_and(|at| at <= now_ms)
    }

    /// Whether the record carries `tag`.
    pub fn has_tag(&self, tag: &[u8]) -> bool {
        self.tags.iter().any(|t| t.as_ref() == tag)
    }
}
