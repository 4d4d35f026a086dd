//! Kafka RecordBatch v2 (magic 2), byte for byte.
//!
//! ```text
//! baseOffset i64 | batchLength i32 | partitionLeaderEpoch i32 | magic i8 |
//! crc u32 | attributes i16 | lastOffsetDelta i32 | baseTimestamp i64 |
//! maxTimestamp i64 | producerId i64 | producerEpoch i16 | baseSequence i32 |
//! recordCount i32 | records...
//! ```
//!
//! All integers are big-endian. `batchLength` counts the bytes after itself;
//! the CRC-32C covers everything from `attributes` to the end, so the base
//! offset and leader epoch can be rewritten without touching the CRC.
//!
//! mqstore's tags and expire-at travel as reserved headers (`__mqs.tag`,
//! `__mqs.expire_at`) written after the user headers, so a plain Kafka client
//! sees them as ordinary headers and nothing is lost.

use bytes::Bytes;

use super::compression::{self, Compression};
use super::varint::{
    put_varint, put_varlong, read_varint, read_varlong, size_prefixed_len, unsigned_varint_len,
    varint_len, varlong_len,
};
use crate::error::{Error, Result};
use crate::record::{
    HeaderView, Record, RecordView, EXPIRE_AT_HEADER, RESERVED_HEADER_PREFIX, TAG_HEADER,
};

/// The only batch format mqstore reads and writes.
pub const MAGIC_V2: i8 = 2;

pub const BASE_OFFSET_OFFSET: usize = 0;
pub const BATCH_LENGTH_OFFSET: usize = 8;
pub const PARTITION_LEADER_EPOCH_OFFSET: usize = 12;
pub const MAGIC_OFFSET: usize = 16;
pub const CRC_OFFSET: usize = 17;
pub const ATTRIBUTES_OFFSET: usize = 21;
pub const LAST_OFFSET_DELTA_OFFSET: usize = 23;
pub const BASE_TIMESTAMP_OFFSET: usize = 27;
pub const MAX_TIMESTAMP_OFFSET: usize = 35;
pub const PRODUCER_ID_OFFSET: usize = 43;
pub const PRODUCER_EPOCH_OFFSET: usize = 51;
pub const BASE_SEQUENCE_OFFSET: usize = 53;
pub const RECORD_COUNT_OFFSET: usize = 57;
pub const RECORDS_OFFSET: usize = 61;
/// Size of the fixed batch header; the records follow it.
pub const BATCH_HEADER_LEN: usize = 61;
/// baseOffset plus batchLength: the bytes not counted by batchLength.
pub const LOG_OVERHEAD: usize = 12;
/// Smallest valid batchLength: a header with no records.
pub const MIN_BATCH_LENGTH: i32 = (BATCH_HEADER_LEN - LOG_OVERHEAD) as i32;
/// Largest batch the i32 batchLength can describe.
pub const MAX_BATCH_LEN: usize = LOG_OVERHEAD + i32::MAX as usize;
/// Largest records section (before compression) encoded or decoded; matches
/// what an uncompressed batch could hold, and bounds decompression output.
pub const MAX_RECORDS_LEN: usize = MAX_BATCH_LEN - BATCH_HEADER_LEN;

/// Attribute bit 3: timestamps are LogAppendTime (every record takes maxTimestamp).
pub const TIMESTAMP_TYPE_MASK: i16 = 0x08;
/// Attribute bit 4: the batch is part of a transaction.
pub const TRANSACTIONAL_MASK: i16 = 0x10;
/// Attribute bit 5: the batch holds control records (transaction markers).
pub const CONTROL_MASK: i16 = 0x20;

pub const NO_PARTITION_LEADER_EPOCH: i32 = -1;
pub const NO_PRODUCER_ID: i64 = -1;
pub const NO_PRODUCER_EPOCH: i16 = -1;
pub const NO_SEQUENCE: i32 = -1;

/// Smallest possible record: length, attributes, timestampDelta, offsetDelta,
/// keyLength, valueLength and headerCount, one byte each. Bounds how many
/// records a section of a given size can hold, against hostile counts.
const MIN_RECORD_LEN: usize = 7;

/// The fixed 61-byte header of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

#[inline]
fn array_at<const N: usize>(buf: &[u8], at: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&buf[at..at + N]);
    a
}

impl BatchHeader {
    /// Parses the header at the start of `buf`. Checks only what the header
    /// itself can tell: enough bytes, magic 2, a batchLength that covers at
    /// least the header. The CRC is not checked here.
    pub fn parse(buf: &[u8]) -> Result<BatchHeader> {
        if buf.len() < BATCH_HEADER_LEN {
            return Err(Error::corruption(format!(
                "batch header needs {BATCH_HEADER_LEN} bytes, only {} available",
                buf.len()
            )));
        }
        let magic = buf[MAGIC_OFFSET] as i8;
        if magic != MAGIC_V2 {
            return Err(Error::corruption(format!(
                "unsupported batch magic {magic} (expected {MAGIC_V2})"
            )));
        }
        let batch_length = i32::from_be_bytes(array_at(buf, BATCH_LENGTH_OFFSET));
        if batch_length < MIN_BATCH_LENGTH {
            return Err(Error::corruption(format!(
                "batch length {batch_length} is smaller than the minimum {MIN_BATCH_LENGTH}"
            )));
        }
        Ok(BatchHeader {
            base_offset: i64::from_be_bytes(array_at(buf, BASE_OFFSET_OFFSET)),
            batch_length,
            partition_leader_epoch: i32::from_be_bytes(array_at(
                buf,
                PARTITION_LEADER_EPOCH_OFFSET,
            )),
            magic,
            crc: u32::from_be_bytes(array_at(buf, CRC_OFFSET)),
            attributes: i16::from_be_bytes(array_at(buf, ATTRIBUTES_OFFSET)),
            last_offset_delta: i32::from_be_bytes(array_at(buf, LAST_OFFSET_DELTA_OFFSET)),
            base_timestamp: i64::from_be_bytes(array_at(buf, BASE_TIMESTAMP_OFFSET)),
            max_timestamp: i64::from_be_bytes(array_at(buf, MAX_TIMESTAMP_OFFSET)),
            producer_id: i64::from_be_bytes(array_at(buf, PRODUCER_ID_OFFSET)),
            producer_epoch: i16::from_be_bytes(array_at(buf, PRODUCER_EPOCH_OFFSET)),
            base_sequence: i32::from_be_bytes(array_at(buf, BASE_SEQUENCE_OFFSET)),
            record_count: i32::from_be_bytes(array_at(buf, RECORD_COUNT_OFFSET)),
        })
    }

    /// Serializes the header, exactly as [`BatchHeader::parse`] reads it.
    pub fn to_bytes(&self) -> [u8; BATCH_HEADER_LEN] {
        let mut b = [0u8; BATCH_HEADER_LEN];
        self.write_to(&mut b);
        b
    }

    fn write_to(&self, b: &mut [u8]) {
        b[BASE_OFFSET_OFFSET..BATCH_LENGTH_OFFSET].copy_from_slice(&self.base_offset.to_be_bytes());
        b[BATCH_LENGTH_OFFSET..PARTITION_LEADER_EPOCH_OFFSET]
            .copy_from_slice(&self.batch_length.to_be_bytes());
        b[PARTITION_LEADER_EPOCH_OFFSET..MAGIC_OFFSET]
            .copy_from_slice(&self.partition_leader_epoch.to_be_bytes());
        b[MAGIC_OFFSET] = self.magic as u8;
        b[CRC_OFFSET..ATTRIBUTES_OFFSET].copy_from_slice(&self.crc.to_be_bytes());
        b[ATTRIBUTES_OFFSET..LAST_OFFSET_DELTA_OFFSET]
            .copy_from_slice(&self.attributes.to_be_bytes());
        b[LAST_OFFSET_DELTA_OFFSET..BASE_TIMESTAMP_OFFSET]
            .copy_from_slice(&self.last_offset_delta.to_be_bytes());
        b[BASE_TIMESTAMP_OFFSET..MAX_TIMESTAMP_OFFSET]
            .copy_from_slice(&self.base_timestamp.to_be_bytes());
        b[MAX_TIMESTAMP_OFFSET..PRODUCER_ID_OFFSET]
            .copy_from_slice(&self.max_timestamp.to_be_bytes());
        b[PRODUCER_ID_OFFSET..PRODUCER_EPOCH_OFFSET]
            .copy_from_slice(&self.producer_id.to_be_bytes());
        b[PRODUCER_EPOCH_OFFSET..BASE_SEQUENCE_OFFSET]
            .copy_from_slice(&self.producer_epoch.to_be_bytes());
        b[BASE_SEQUENCE_OFFSET..RECORD_COUNT_OFFSET]
            .copy_from_slice(&self.base_sequence.to_be_bytes());
        b[RECORD_COUNT_OFFSET..RECORDS_OFFSET].copy_from_slice(&self.record_count.to_be_bytes());
    }

    /// Bytes the whole batch occupies, baseOffset and batchLength included.
    pub fn total_len(&self) -> usize {
        LOG_OVERHEAD + self.batch_length.max(0) as usize
    }

    /// Offset of the last record the batch was written with (compaction may
    /// have removed it since; the value stays).
    pub fn last_offset(&self) -> i64 {
        self.base_offset
            .wrapping_add(i64::from(self.last_offset_delta))
    }

    /// The offset a batch appended after this one starts at.
    pub fn next_offset(&self) -> i64 {
        self.last_offset().wrapping_add(1)
    }

    /// The codec of the records section.
    pub fn compression(&self) -> Result<Compression> {
        Compression::from_attributes(self.attributes)
    }

    /// Whether timestamps are LogAppendTime rather than CreateTime.
    pub fn is_log_append_time(&self) -> bool {
        self.attributes & TIMESTAMP_TYPE_MASK != 0
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & TRANSACTIONAL_MASK != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes & CONTROL_MASK != 0
    }
}

/// A freshly encoded batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedBatch {
    /// The whole batch, exactly `total_len` bytes, base offset 0.
    pub bytes: Vec<u8>,
    pub record_count: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    /// Size of the records section before compression.
    pub uncompressed_records_len: usize,
}

#[inline]
fn effective_timestamp(record: &Record<'_>, now_ms: i64) -> i64 {
    if record.timestamp_ms == 0 {
        now_ms
    } else {
        record.timestamp_ms
    }
}

/// Bytes of a record after its length prefix.
fn record_body_len(record: &Record<'_>, offset_delta: i32, timestamp_delta: i64) -> usize {
    let mut len = 1 // attributes
        + varlong_len(timestamp_delta)
        + varint_len(offset_delta)
        + record.key.map_or(1, |k| size_prefixed_len(k.len()))
        + record.value.map_or(1, |v| size_prefixed_len(v.len()));
    let header_count =
        record.headers.len() + record.tags.len() + usize::from(record.expire_at_ms.is_some());
    len += unsigned_varint_len((header_count as u64).saturating_mul(2));
    for h in &record.headers {
        len += size_prefixed_len(h.key.len()) + h.value.map_or(1, |v| size_prefixed_len(v.len()));
    }
    let tag_key_len = size_prefixed_len(TAG_HEADER.len());
    for t in &record.tags {
        len += tag_key_len + size_prefixed_len(t.len());
    }
    if record.expire_at_ms.is_some() {
        len += size_prefixed_len(EXPIRE_AT_HEADER.len()) + size_prefixed_len(8);
    }
    len
}

/// Size a single record occupies in an uncompressed batch, length prefix
/// included.
pub fn encoded_record_len(record: &Record<'_>, offset_delta: i32, timestamp_delta: i64) -> usize {
    let body = record_body_len(record, offset_delta, timestamp_delta);
    size_prefixed_len(body)
}

fn check_reserved_headers(record: &Record<'_>) -> Result<()> {
    for h in &record.headers {
        if h.key.starts_with(RESERVED_HEADER_PREFIX) {
            return Err(Error::InvalidArgument(format!(
                "header key '{}' uses the reserved prefix '{RESERVED_HEADER_PREFIX}'",
                h.key
            )));
        }
    }
    Ok(())
}

#[inline]
fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    // Lengths were checked against i32::MAX when the record size was.
    put_varint(out, bytes.len() as i32);
    out.extend_from_slice(bytes);
}

#[inline]
fn put_nullable_bytes(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        Some(b) => put_bytes(out, b),
        None => put_varint(out, -1),
    }
}

fn write_record(
    out: &mut Vec<u8>,
    record: &Record<'_>,
    body_len: usize,
    offset_delta: i32,
    timestamp_delta: i64,
) {
    put_varint(out, body_len as i32);
    out.push(0); // record attributes: unused in v2
    put_varlong(out, timestamp_delta);
    put_varint(out, offset_delta);
    put_nullable_bytes(out, record.key);
    put_nullable_bytes(out, record.value);
    let header_count =
        record.headers.len() + record.tags.len() + usize::from(record.expire_at_ms.is_some());
    put_varint(out, header_count as i32);
    for h in &record.headers {
        put_bytes(out, h.key.as_bytes());
        put_nullable_bytes(out, h.value);
    }
    for t in &record.tags {
        put_bytes(out, TAG_HEADER.as_bytes());
        put_bytes(out, t.as_bytes());
    }
    if let Some(at) = record.expire_at_ms {
        put_bytes(out, EXPIRE_AT_HEADER.as_bytes());
        put_bytes(out, &at.to_be_bytes());
    }
}

/// Writes the header into `batch[..61]` and computes the CRC over the rest.
fn finish_batch(batch: &mut [u8], mut header: BatchHeader) {
    header.batch_length = (batch.len() - LOG_OVERHEAD) as i32;
    header.crc = 0;
    header.write_to(&mut batch[..BATCH_HEADER_LEN]);
    let crc = crc32c::crc32c(&batch[ATTRIBUTES_OFFSET..]);
    batch[CRC_OFFSET..ATTRIBUTES_OFFSET].copy_from_slice(&crc.to_be_bytes());
}

/// A batch without records, with `template`'s header but for the record
/// count, length, codec and CRC: it spans `template`'s offsets and keeps
/// its producer fields. Kafka's cleaner leaves such batches (a producer's
/// last batch, emptied), and a follower stores one where its leader's log
/// has a gap between batches.
pub fn empty_batch(template: &BatchHeader) -> Vec<u8> {
    let header = BatchHeader {
        record_count: 0,
        attributes: template.attributes & !crate::format::compression::COMPRESSION_CODEC_MASK,
        ..*template
    };
    let mut bytes = vec![0u8; BATCH_HEADER_LEN];
    finish_batch(&mut bytes, header);
    bytes
}

/// Builds a batch around an uncompressed records section by compressing it
/// after a header placeholder.
fn assemble_compressed(
    records: &[u8],
    compression: Compression,
    header: BatchHeader,
) -> Result<Vec<u8>> {
    let mut out = vec![0u8; BATCH_HEADER_LEN];
    compression::compress_into(compression, records, &mut out)?;
    compression::trim_excess(&mut out);
    if out.len() > MAX_BATCH_LEN {
        return Err(Error::RecordTooLarge {
            size: out.len(),
            limit: MAX_BATCH_LEN,
        });
    }
    finish_batch(&mut out, header);
    Ok(out)
}

/// Encodes records into one batch. `now_ms` replaces timestamp 0. The base
/// offset is written as 0: it lies outside the CRC and is set by
/// [`set_base_offset`] once the log assigns offsets.
///
/// As Kafka's producer does, baseTimestamp is the first record's timestamp,
/// so later records may carry negative deltas; deltas wrap, which round-trips
/// any pair of i64 timestamps.
pub fn encode_batch(
    records: &[Record<'_>],
    compression: Compression,
    now_ms: i64,
) -> Result<EncodedBatch> {
    if records.is_empty() {
        return Err(Error::InvalidArgument(
            "cannot encode an empty batch".into(),
        ));
    }
    let record_count = i32::try_from(records.len()).map_err(|_| {
        Error::InvalidArgument(format!(
            "{} records exceed the batch maximum of {}",
            records.len(),
            i32::MAX
        ))
    })?;
    compression.check_available()?;

    let base_timestamp = effective_timestamp(&records[0], now_ms);
    let mut max_timestamp = base_timestamp;
    let mut records_len = 0usize;
    for (i, record) in records.iter().enumerate() {
        check_reserved_headers(record)?;
        let ts = effective_timestamp(record, now_ms);
        max_timestamp = max_timestamp.max(ts);
        let body = record_body_len(record, i as i32, ts.wrapping_sub(base_timestamp));
        if body > i32::MAX as usize {
            return Err(Error::RecordTooLarge {
                size: body,
                limit: i32::MAX as usize,
            });
        }
        records_len = records_len.saturating_add(size_prefixed_len(body));
    }
    if records_len > MAX_RECORDS_LEN {
        return Err(Error::RecordTooLarge {
            size: records_len.saturating_add(BATCH_HEADER_LEN),
            limit: MAX_BATCH_LEN,
        });
    }

    let header = BatchHeader {
        base_offset: 0,
        batch_length: 0,
        partition_leader_epoch: NO_PARTITION_LEADER_EPOCH,
        magic: MAGIC_V2,
        crc: 0,
        attributes: compression.attribute_bits(),
        last_offset_delta: record_count - 1,
        base_timestamp,
        max_timestamp,
        producer_id: NO_PRODUCER_ID,
        producer_epoch: NO_PRODUCER_EPOCH,
        base_sequence: NO_SEQUENCE,
        record_count,
    };

    let write_all = |out: &mut Vec<u8>| {
        for (i, record) in records.iter().enumerate() {
            let ts_delta = effective_timestamp(record, now_ms).wrapping_sub(base_timestamp);
            let body = record_body_len(record, i as i32, ts_delta);
            write_record(out, record, body, i as i32, ts_delta);
        }
    };

    let bytes = if compression == Compression::None {
        let mut out = Vec::with_capacity(BATCH_HEADER_LEN + records_len);
        out.resize(BATCH_HEADER_LEN, 0);
        write_all(&mut out);
        debug_assert_eq!(out.len(), BATCH_HEADER_LEN + records_len);
        finish_batch(&mut out, header);
        out
    } else {
        let mut section = Vec::with_capacity(records_len);
        write_all(&mut section);
        debug_assert_eq!(section.len(), records_len);
        assemble_compressed(&section, compression, header)?
    };

    Ok(EncodedBatch {
        bytes,
        record_count,
        base_timestamp,
        max_timestamp,
        uncompressed_records_len: records_len,
    })
}

/// Rewrites the base offset in place. It lies outside the CRC, so the batch
/// stays valid.
///
/// # Panics
/// If `batch` is shorter than 8 bytes.
pub fn set_base_offset(batch: &mut [u8], base_offset: i64) {
    batch[BASE_OFFSET_OFFSET..BATCH_LENGTH_OFFSET].copy_from_slice(&base_offset.to_be_bytes());
}

/// Sets the partition leader epoch of an encoded batch (outside the CRC,
/// which starts at the attributes).
pub fn set_partition_leader_epoch(batch: &mut [u8], epoch: i32) {
    batch[PARTITION_LEADER_EPOCH_OFFSET..MAGIC_OFFSET].copy_from_slice(&epoch.to_be_bytes());
}

/// Parses the header and checks the buffer holds the whole batch.
fn parse_whole(buf: &[u8]) -> Result<BatchHeader> {
    let header = BatchHeader::parse(buf)?;
    let total = header.total_len();
    if buf.len() < total {
        return Err(Error::corruption(format!(
            "truncated batch at base offset {}: header says {total} bytes, only {} available",
            header.base_offset,
            buf.len()
        )));
    }
    Ok(header)
}

fn check_crc_of(buf: &[u8], header: &BatchHeader) -> Result<()> {
    let actual = crc32c::crc32c(&buf[ATTRIBUTES_OFFSET..header.total_len()]);
    if actual != header.crc {
        return Err(Error::corruption(format!(
            "batch CRC mismatch at base offset {}: expected {:#010x}, actual {actual:#010x}",
            header.base_offset, header.crc
        )));
    }
    Ok(())
}

/// Verifies the CRC-32C of the batch at the start of `buf` (exactly one batch
/// long, or longer: only the first batch is checked).
pub fn verify_crc(buf: &[u8]) -> Result<()> {
    let header = parse_whole(buf)?;
    check_crc_of(buf, &header)
}

/// A batch's records section, uncompressed: either a range of the batch
/// itself (zero-copy) or a freshly decompressed buffer.
struct Section {
    header: BatchHeader,
    data: Bytes,
    start: usize,
    end: usize,
}

fn open_batch(batch: &Bytes, check_crc: bool) -> Result<Section> {
    open_batch_limited(batch, check_crc, MAX_RECORDS_LEN)
}

/// `open_batch` refusing a records section that decompresses to more than
/// `max_records_len` bytes.
fn open_batch_limited(batch: &Bytes, check_crc: bool, max_records_len: usize) -> Result<Section> {
    let header = parse_whole(batch)?;
    if check_crc {
        check_crc_of(batch, &header)?;
    }
    if header.record_count < 0 {
        return Err(Error::corruption(format!(
            "negative record count {} in batch at base offset {}",
            header.record_count, header.base_offset
        )));
    }
    let total = header.total_len();
    match header.compression()? {
        Compression::None => Ok(Section {
            header,
            data: batch.clone(),
            start: BATCH_HEADER_LEN,
            end: total,
        }),
        codec => {
            let plain =
                compression::decompress(codec, &batch[BATCH_HEADER_LEN..total], max_records_len)
                    .map_err(|e| match e {
                        Error::Corruption(m) => Error::corruption(format!(
                            "batch at base offset {}: {m}",
                            header.base_offset
                        )),
                        other => other,
                    })?;
            let end = plain.len();
            Ok(Section {
                header,
                data: Bytes::from(plain),
                start: 0,
                end,
            })
        }
    }
}

/// A record field, for error messages.
#[derive(Clone, Copy, Debug)]
enum Field {
    Length,
    Attributes,
    TimestampDelta,
    OffsetDelta,
    Key,
    Value,
    HeaderCount,
    HeaderKey,
    HeaderValue,
}

impl Field {
    fn name(self) -> &'static str {
        match self {
            Field::Length => "record length",
            Field::Attributes => "record attributes",
            Field::TimestampDelta => "timestamp delta",
            Field::OffsetDelta => "offset delta",
            Field::Key => "key",
            Field::Value => "value",
            Field::HeaderCount => "header count",
            Field::HeaderKey => "header key",
            Field::HeaderValue => "header value",
        }
    }
}

/// What is wrong with a record. Small and `Copy` so the parsing hot path
/// passes it in registers; it becomes a descriptive `Error` only on failure.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Truncated or overlong varint.
    Varint(Field),
    /// A field of this length runs past the end of the record.
    Truncated(Field, i32),
    /// A negative length or count other than the null marker.
    Negative(Field, i32),
    /// The record length exceeds what is left of the section.
    RecordLength(i32),
    /// An offset delta that is negative, not increasing, or past lastOffsetDelta.
    OffsetDelta(i32),
    /// Declared record length versus the bytes its fields took.
    SizeMismatch(i32, i32),
    NullTag,
    BadExpireAt,
}

impl Fault {
    #[cold]
    fn into_error(self, index: usize, header: &BatchHeader) -> Error {
        let what = match self {
            Fault::Varint(f) => format!("malformed varint in {}", f.name()),
            Fault::Truncated(f, len) => {
                format!(
                    "{} of {len} bytes runs past the end of the record",
                    f.name()
                )
            }
            Fault::Negative(f, v) => format!("invalid {} {v}", f.name()),
            Fault::RecordLength(len) => {
                format!("record length {len} runs past the end of the batch")
            }
            Fault::OffsetDelta(d) => format!(
                "offset delta {d} is out of order or beyond last offset delta {}",
                header.last_offset_delta
            ),
            Fault::SizeMismatch(declared, used) => {
                format!("record declares {declared} bytes but its fields take {used}")
            }
            Fault::NullTag => "tag header with a null value".to_string(),
            Fault::BadExpireAt => "expire-at header value is not 8 bytes".to_string(),
        };
        Error::corruption(format!(
            "batch at base offset {}, record {index}: {what}",
            header.base_offset
        ))
    }
}

type FaultResult<T> = std::result::Result<T, Fault>;

/// Reads fields of one record. Positions are indices into the whole section
/// buffer so values can be sliced out of it directly; `buf` ends where the
/// record does, so no field can reach into the next one.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    #[inline(always)]
    fn varint(&mut self, field: Field) -> FaultResult<i32> {
        read_varint(self.buf, &mut self.pos).ok_or(Fault::Varint(field))
    }

    #[inline(always)]
    fn varlong(&mut self, field: Field) -> FaultResult<i64> {
        read_varlong(self.buf, &mut self.pos).ok_or(Fault::Varint(field))
    }

    #[inline(always)]
    fn skip_byte(&mut self, field: Field) -> FaultResult<()> {
        if self.pos < self.buf.len() {
            self.pos += 1;
            Ok(())
        } else {
            Err(Fault::Truncated(field, 1))
        }
    }

    /// `len` must be non-negative.
    #[inline(always)]
    fn take(&mut self, len: i32, field: Field) -> FaultResult<(usize, usize)> {
        let n = len as usize;
        if self.buf.len() - self.pos < n {
            return Err(Fault::Truncated(field, len));
        }
        let start = self.pos;
        self.pos += n;
        Ok((start, self.pos))
    }

    /// A length-prefixed field that must not be null.
    #[inline(always)]
    fn bytes(&mut self, field: Field) -> FaultResult<(usize, usize)> {
        match self.varint(field)? {
            len if len < 0 => Err(Fault::Negative(field, len)),
            len => self.take(len, field),
        }
    }

    /// A length-prefixed field: `None` for length -1.
    #[inline(always)]
    fn nullable(&mut self, field: Field) -> FaultResult<Option<(usize, usize)>> {
        match self.varint(field)? {
            -1 => Ok(None),
            len if len < 0 => Err(Fault::Negative(field, len)),
            len => self.take(len, field).map(Some),
        }
    }
}

/// The fixed part of a record, up to its header count.
struct RecordPrefix {
    /// Where the record, length prefix included, starts and ends.
    start: usize,
    end: usize,
    timestamp_delta: i64,
    offset_delta: i32,
    key: Option<(usize, usize)>,
    value: Option<(usize, usize)>,
    header_count: i32,
}

/// Walks the records of a section in order, enforcing the invariants that
/// hold for every batch Kafka or mqstore writes.
struct RecordWalker<'a> {
    header: &'a BatchHeader,
    buf: &'a [u8],
    pos: usize,
    index: usize,
    count: usize,
    /// Smallest offset delta the next record may have.
    min_offset_delta: i32,
}

impl<'a> RecordWalker<'a> {
    fn new(section: &'a Section) -> Self {
        RecordWalker {
            header: &section.header,
            buf: &section.data[..section.end],
            pos: section.start,
            index: 0,
            count: section.header.record_count as usize,
            min_offset_delta: 0,
        }
    }

    /// Parses the next record up to its headers, leaving the cursor at the
    /// first header. `None` once `record_count` records have been read.
    #[inline]
    fn next_prefix(&mut self) -> Result<Option<(RecordPrefix, Cursor<'a>)>> {
        if self.index == self.count {
            if self.pos != self.buf.len() {
                return Err(self.leftover_error());
            }
            return Ok(None);
        }
        match self.parse_prefix() {
            Ok(p) => Ok(Some(p)),
            Err(f) => Err(f.into_error(self.index, self.header)),
        }
    }

    #[cold]
    fn leftover_error(&self) -> Error {
        Error::corruption(format!(
            "batch at base offset {}: {} bytes left over after the last of {} records",
            self.header.base_offset,
            self.buf.len() - self.pos,
            self.count
        ))
    }

    #[inline(always)]
    fn parse_prefix(&mut self) -> FaultResult<(RecordPrefix, Cursor<'a>)> {
        let start = self.pos;
        let mut pos = start;
        let len = read_varint(self.buf, &mut pos).ok_or(Fault::Varint(Field::Length))?;
        if len < 0 || len as usize > self.buf.len() - pos {
            return Err(Fault::RecordLength(len));
        }
        let end = pos + len as usize;
        let mut cur = Cursor {
            buf: &self.buf[..end],
            pos,
        };
        cur.skip_byte(Field::Attributes)?; // unused in v2
        let timestamp_delta = cur.varlong(Field::TimestampDelta)?;
        let offset_delta = cur.varint(Field::OffsetDelta)?;
        if offset_delta < self.min_offset_delta || offset_delta > self.header.last_offset_delta {
            return Err(Fault::OffsetDelta(offset_delta));
        }
        // Cannot overflow: offset_delta <= last_offset_delta <= i32::MAX, and
        // a delta of i32::MAX leaves no room for another record anyway.
        self.min_offset_delta = offset_delta.saturating_add(1);
        let key = cur.nullable(Field::Key)?;
        let value = cur.nullable(Field::Value)?;
        let header_count = cur.varint(Field::HeaderCount)?;
        if header_count < 0 {
            return Err(Fault::Negative(Field::HeaderCount, header_count));
        }
        Ok((
            RecordPrefix {
                start,
                end,
                timestamp_delta,
                offset_delta,
                key,
                value,
                header_count,
            },
            cur,
        ))
    }

    /// Reads the record's headers, handing each to `on_header`, and moves to
    /// the next record.
    #[inline(always)]
    fn finish(
        &mut self,
        prefix: &RecordPrefix,
        mut cur: Cursor<'a>,
        mut on_header: impl FnMut((usize, usize), Option<(usize, usize)>) -> FaultResult<()>,
    ) -> Result<()> {
        let mut read_headers = || {
            for _ in 0..prefix.header_count {
                let key = cur.bytes(Field::HeaderKey)?;
                let value = cur.nullable(Field::HeaderValue)?;
                on_header(key, value)?;
            }
            if cur.pos != prefix.end {
                return Err(Fault::SizeMismatch(
                    (prefix.end - prefix.start) as i32,
                    (cur.pos - prefix.start) as i32,
                ));
            }
            Ok(())
        };
        if let Err(f) = read_headers() {
            return Err(f.into_error(self.index, self.header));
        }
        self.pos = prefix.end;
        self.index += 1;
        Ok(())
    }

    /// Skips the record's headers (still validating them).
    #[inline]
    fn skip(&mut self, prefix: &RecordPrefix, cur: Cursor<'a>) -> Result<()> {
        self.finish(prefix, cur, |_, _| Ok(()))
    }
}

#[inline]
fn build_view<'a>(
    section: &'a Section,
    walker: &mut RecordWalker<'a>,
    prefix: &RecordPrefix,
    cur: Cursor<'a>,
    offset: i64,
) -> Result<RecordView> {
    let data = &section.data;
    let bytes: &[u8] = data;
    let slice = |(s, e): (usize, usize)| data.slice(s..e);
    let mut headers = Vec::new();
    let mut tags = Vec::new();
    let mut expire_at_ms = None;
    if prefix.header_count > 0 {
        walker.finish(prefix, cur, |(ks, ke), value| {
            let key = &bytes[ks..ke];
            if !key.starts_with(RESERVED_HEADER_PREFIX.as_bytes()) {
                headers.push(HeaderView {
                    key: slice((ks, ke)),
                    value: value.map(slice),
                });
            } else if key == TAG_HEADER.as_bytes() {
                tags.push(slice(value.ok_or(Fault::NullTag)?));
            } else if key == EXPIRE_AT_HEADER.as_bytes() {
                let (s, e) = value.ok_or(Fault::BadExpireAt)?;
                let v: [u8; 8] = bytes[s..e].try_into().map_err(|_| Fault::BadExpireAt)?;
                expire_at_ms = Some(i64::from_be_bytes(v));
            }
            // Other reserved names belong to future mqstore versions: not user data.
            Ok(())
        })?;
    } else {
        walker.skip(prefix, cur)?;
    }
    let header = &section.header;
    let timestamp_ms = if header.is_log_append_time() {
        header.max_timestamp
    } else {
        header.base_timestamp.wrapping_add(prefix.timestamp_delta)
    };
    Ok(RecordView {
        offset,
        timestamp_ms,
        key: prefix.key.map(slice),
        value: prefix.value.map(slice),
        headers,
        tags,
        expire_at_ms,
    })
}

/// Like [`for_each_record`], but records with an offset below `min_offset`
/// are only validated, never materialized: no slices, no header vectors.
pub fn for_each_record_from(
    batch: &Bytes,
    check_crc: bool,
    min_offset: i64,
    mut visit: impl FnMut(RecordView) -> bool,
) -> Result<()> {
    let section = open_batch(batch, check_crc)?;
    let mut walker = RecordWalker::new(&section);
    while let Some((prefix, cur)) = walker.next_prefix()? {
        let offset = section
            .header
            .base_offset
            .wrapping_add(i64::from(prefix.offset_delta));
        if offset < min_offset {
            walker.skip(&prefix, cur)?;
            continue;
        }
        let view = build_view(&section, &mut walker, &prefix, cur, offset)?;
        if !visit(view) {
            return Ok(());
        }
    }
    Ok(())
}

/// Decodes the records of one batch in order and hands each to `visit`,
/// stopping early when it returns false.
pub fn for_each_record(
    batch: &Bytes,
    check_crc: bool,
    visit: impl FnMut(RecordView) -> bool,
) -> Result<()> {
    for_each_record_from(batch, check_crc, i64::MIN, visit)
}

/// Decodes all records of the batch at the start of `batch` (bytes after it
/// are ignored). Uncompressed batches yield slices of `batch` itself;
/// compressed ones are decompressed once and yield slices of that buffer.
pub fn decode_batch(batch: &Bytes, check_crc: bool) -> Result<Vec<RecordView>> {
    let section = open_batch(batch, check_crc)?;
    let cap =
        (section.header.record_count as usize).min((section.end - section.start) / MIN_RECORD_LEN);
    let mut out = Vec::with_capacity(cap);
    let mut walker = RecordWalker::new(&section);
    while let Some((prefix, cur)) = walker.next_prefix()? {
        let offset = section
            .header
            .base_offset
            .wrapping_add(i64::from(prefix.offset_delta));
        out.push(build_view(&section, &mut walker, &prefix, cur, offset)?);
    }
    Ok(out)
}

/// Decodes every record of the batch at the start of `batch` (decompressed
/// if need be) as a read would, so that a batch that passes reads back, and
/// hands each record's offset delta and encoded length (length prefix
/// included) to `check`. The CRC is not checked here.
pub(crate) fn walk_records(
    batch: &Bytes,
    max_records_len: usize,
    mut check: impl FnMut(i32, usize) -> Result<()>,
) -> Result<()> {
    let section = open_batch_limited(batch, false, max_records_len)?;
    let mut walker = RecordWalker::new(&section);
    while let Some((prefix, cur)) = walker.next_prefix()? {
        check(prefix.offset_delta, prefix.end - prefix.start)?;
        let offset = i64::from(prefix.offset_delta);
        build_view(&section, &mut walker, &prefix, cur, offset)?;
    }
    Ok(())
}

/// Marks the batch's timestamps LogAppendTime with `now_ms` as its max
/// timestamp (what every record then reads as) and recomputes the CRC, as
/// a Kafka broker does for a topic with `LogAppendTime`.
///
/// # Panics
/// If `batch` is shorter than its header says.
pub fn set_log_append_time(batch: &mut [u8], now_ms: i64) {
    let mut header = BatchHeader::parse(batch).expect("a validated batch");
    header.attributes |= TIMESTAMP_TYPE_MASK;
    header.max_timestamp = now_ms;
    header.write_to(&mut batch[..BATCH_HEADER_LEN]);
    let crc = crc32c::crc32c(&batch[ATTRIBUTES_OFFSET..header.total_len()]);
    batch[CRC_OFFSET..ATTRIBUTES_OFFSET].copy_from_slice(&crc.to_be_bytes());
}

/// Re-encodes `batch` keeping only the records for which `keep(offset)` is
/// true, as Kafka log compaction does: the header fields (base offset, last
/// offset delta, timestamps, attributes, producer fields, leader epoch) and
/// each kept record's bytes stay exactly as they were; only the record count,
/// length and CRC change, and a compressed batch is recompressed with the same
/// codec. The CRC is always verified first, so corruption is never hidden
/// under a fresh CRC. Returns `None` if nothing is kept and the batch itself
/// (a zero-copy clone) if everything is.
pub fn retain_records(batch: &Bytes, mut keep: impl FnMut(i64) -> bool) -> Result<Option<Bytes>> {
    let section = open_batch(batch, true)?;
    let header = section.header;
    let mut kept: Vec<(usize, usize)> = Vec::new();
    let mut kept_count = 0i32;
    let mut kept_len = 0usize;
    let mut walker = RecordWalker::new(&section);
    while let Some((prefix, cur)) = walker.next_prefix()? {
        let start = prefix.start;
        let offset = header
            .base_offset
            .wrapping_add(i64::from(prefix.offset_delta));
        walker.skip(&prefix, cur)?;
        if keep(offset) {
            // Adjacent kept records are copied as one run.
            match kept.last_mut() {
                Some(run) if run.1 == start => run.1 = prefix.end,
                _ => kept.push((start, prefix.end)),
            }
            kept_count += 1;
            kept_len += prefix.end - start;
        }
    }
    if kept_count == 0 {
        return Ok(None);
    }
    if kept_count == header.record_count {
        return Ok(Some(batch.slice(..header.total_len())));
    }
    let compression = header.compression()?;
    let new_header = BatchHeader {
        record_count: kept_count,
        ..header
    };
    let copy_runs = |out: &mut Vec<u8>| {
        for &(s, e) in &kept {
            out.extend_from_slice(&section.data[s..e]);
        }
    };
    let bytes = if compression == Compression::None {
        let mut out = Vec::with_capacity(BATCH_HEADER_LEN + kept_len);
        out.resize(BATCH_HEADER_LEN, 0);
        copy_runs(&mut out);
        finish_batch(&mut out, new_header);
        out
    } else {
        let mut records = Vec::with_capacity(kept_len);
        copy_runs(&mut records);
        assemble_compressed(&records, compression, new_header)?
    };
    Ok(Some(Bytes::from(bytes)))
}

/// Splits concatenated batches into per-batch zero-copy slices, checking each
/// header and that each batch fits. CRCs are not checked. A partial batch at
/// the end (a torn write) is `Corruption`, naming the byte position.
pub fn split_batches(buf: &Bytes) -> Result<Vec<Bytes>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let rest = &buf[pos..];
        let header = BatchHeader::parse(rest)
            .map_err(|e| Error::corruption(format!("batch at byte {pos}: {e}")))?;
        let total = header.total_len();
        if total > rest.len() {
            return Err(Error::corruption(format!(
                "torn batch at byte {pos}: header says {total} bytes, only {} available",
                rest.len()
            )));
        }
        out.push(buf.slice(pos..pos + total));
        pos += total;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Header;
    use proptest::prelude::*;

    /// Bitwise CRC-32C (Castagnoli, reflected 0x82F63B78), independent of
    /// the `crc32c` crate the code under test uses.
    fn reference_crc32c(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0x82F6_3B78
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    fn fix_crc(batch: &mut [u8]) {
        let crc = reference_crc32c(&batch[ATTRIBUTES_OFFSET..]);
        batch[CRC_OFFSET..ATTRIBUTES_OFFSET].copy_from_slice(&crc.to_be_bytes());
    }

    fn codecs() -> Vec<Compression> {
        [Compression::None, Compression::Lz4, Compression::Zstd]
            .into_iter()
            .filter(|c| c.is_available())
            .collect()
    }

    fn is_corruption<T: std::fmt::Debug>(r: Result<T>) -> bool {
        matches!(r, Err(Error::Corruption(_)))
    }

    const TS: i64 = 1_700_000_000_000;

    #[test]
    fn crc_reference_is_crc32c() {
        assert_eq!(reference_crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn golden_single_record() {
        let rec = Record {
            timestamp_ms: TS,
            ..Record::new(b"v").with_key(b"k")
        };
        let enc = encode_batch(&[rec], Compression::None, 42).unwrap();
        #[rustfmt::skip]
        let expected: Vec<u8> = [
            &[0u8, 0, 0, 0, 0, 0, 0, 0][..],          // baseOffset 0
            &[0, 0, 0, 0x3a],                         // batchLength 58 = 70 - 12
            &[0xff, 0xff, 0xff, 0xff],                // partitionLeaderEpoch -1
            &[0x02],                                  // magic
            &[0xe9, 0x9b, 0x8d, 0xd8],                // crc
            &[0, 0],                                  // attributes
            &[0, 0, 0, 0],                            // lastOffsetDelta 0
            &[0, 0, 0x01, 0x8b, 0xcf, 0xe5, 0x68, 0], // baseTimestamp 1.7e12
            &[0, 0, 0x01, 0x8b, 0xcf, 0xe5, 0x68, 0], // maxTimestamp
            &[0xff; 8],                               // producerId -1
            &[0xff, 0xff],                            // producerEpoch -1
            &[0xff; 4],                               // baseSequence -1
            &[0, 0, 0, 1],                            // recordCount 1
            // record: length 8 (zigzag 16), attributes, tsDelta 0, offsetDelta 0,
            // keyLength 1 (zigzag 2) "k", valueLength 1 "v", headerCount 0
            &[0x10, 0x00, 0x00, 0x00, 0x02, b'k', 0x02, b'v', 0x00],
        ]
        .concat();
        assert_eq!(enc.bytes, expected);
        assert_eq!(enc.bytes.len(), 70);
        assert_eq!(enc.record_count, 1);
        assert_eq!(enc.base_timestamp, TS);
        assert_eq!(enc.max_timestamp, TS);
        assert_eq!(enc.uncompressed_records_len, 9);
        assert_eq!(
            reference_crc32c(&enc.bytes[ATTRIBUTES_OFFSET..]),
            0xe99b_8dd8
        );

        let h = BatchHeader::parse(&enc.bytes).unwrap();
        assert_eq!(
            h,
            BatchHeader {
                base_offset: 0,
                batch_length: 58,
                partition_leader_epoch: -1,
                magic: 2,
                crc: 0xe99b_8dd8,
                attributes: 0,
                last_offset_delta: 0,
                base_timestamp: TS,
                max_timestamp: TS,
                producer_id: -1,
                producer_epoch: -1,
                base_sequence: -1,
                record_count: 1,
            }
        );
        assert_eq!(h.to_bytes()[..], enc.bytes[..BATCH_HEADER_LEN]);
        assert_eq!(h.total_len(), 70);
        assert_eq!(h.last_offset(), 0);
        assert_eq!(h.compression().unwrap(), Compression::None);
        assert_eq!(
            encoded_record_len(&Record::new(b"v").with_key(b"k"), 0, 0),
            9
        );
    }

    #[test]
    fn golden_reserved_headers_and_negative_delta() {
        let a = Record {
            timestamp_ms: 1000,
            ..Record::new(b"a")
        };
        let b = Record {
            timestamp_ms: 990,
            headers: vec![Header {
                key: "h",
                value: None,
            }],
            tags: vec!["t"],
            expire_at_ms: Some(5),
            ..Record::new(b"b")
        };
        let enc = encode_batch(&[a.clone(), b.clone()], Compression::None, 0).unwrap();
        #[rustfmt::skip]
        let records: Vec<u8> = [
            // length 7, attrs, tsDelta 0, offsetDelta 0, key null, "a", no headers
            &[0x0e, 0x00, 0x00, 0x00, 0x01, 0x02, b'a', 0x00][..],
            // length 47, attrs, tsDelta -10 (zigzag 19), offsetDelta 1, key null,
            // "b", 3 headers
            &[0x5e, 0x00, 0x13, 0x02, 0x01, 0x02, b'b', 0x06],
            &[0x02, b'h', 0x01],                      // "h" = null
            &[0x12], b"__mqs.tag", &[0x02, b't'],     // tag "t"
            &[0x1e], b"__mqs.expire_at", &[0x10, 0, 0, 0, 0, 0, 0, 0, 5],
        ]
        .concat();
        assert_eq!(&enc.bytes[RECORDS_OFFSET..], &records[..]);
        let h = BatchHeader::parse(&enc.bytes).unwrap();
        assert_eq!(h.last_offset_delta, 1);
        assert_eq!(
            h.base_timestamp, 1000,
            "Kafka takes the first record's timestamp"
        );
        assert_eq!(h.max_timestamp, 1000);
        assert_eq!(h.record_count, 2);
        assert_eq!(h.crc, reference_crc32c(&enc.bytes[ATTRIBUTES_OFFSET..]));
        assert_eq!(encoded_record_len(&a, 0, 0), 8);
        assert_eq!(encoded_record_len(&b, 1, -10), 48);

        let views = decode_batch(&Bytes::from(enc.bytes), true).unwrap();
        assert_eq!(views[1].timestamp_ms, 990);
        assert_eq!(views[1].headers.len(), 1);
        assert_eq!(views[1].headers[0].value, None);
        assert_eq!(views[1].tags, vec![Bytes::from_static(b"t")]);
        assert_eq!(views[1].expire_at_ms, Some(5));
    }

    /// Owned inputs for building `Record`s in tests.
    #[derive(Clone, Debug)]
    struct Spec {
        key: Option<Vec<u8>>,
        value: Vec<u8>,
        headers: Vec<(String, Option<Vec<u8>>)>,
        tags: Vec<String>,
        timestamp_ms: i64,
        expire_at_ms: Option<i64>,
    }

    impl Spec {
        fn record(&self) -> Record<'_> {
            Record {
                key: self.key.as_deref(),
                value: Some(&self.value),
                headers: self
                    .headers
                    .iter()
                    .map(|(k, v)| Header {
                        key: k,
                        value: v.as_deref(),
                    })
                    .collect(),
                tags: self.tags.iter().map(String::as_str).collect(),
                timestamp_ms: self.timestamp_ms,
                expire_at_ms: self.expire_at_ms,
            }
        }

        fn check(&self, view: &RecordView, offset: i64, now_ms: i64) {
            assert_eq!(view.offset, offset);
            let ts = if self.timestamp_ms == 0 {
                now_ms
            } else {
                self.timestamp_ms
            };
            assert_eq!(view.timestamp_ms, ts);
            assert_eq!(view.key.as_deref(), self.key.as_deref());
            assert_eq!(view.value_bytes(), &self.value[..]);
            assert_eq!(view.headers.len(), self.headers.len());
            for (hv, (k, v)) in view.headers.iter().zip(&self.headers) {
                assert_eq!(hv.key.as_ref(), k.as_bytes());
                assert_eq!(hv.value.as_deref(), v.as_deref());
            }
            let tags: Vec<&[u8]> = view.tags.iter().map(|t| t.as_ref()).collect();
            let want: Vec<&[u8]> = self.tags.iter().map(|t| t.as_bytes()).collect();
            assert_eq!(tags, want);
            assert_eq!(view.expire_at_ms, self.expire_at_ms);
        }
    }

    fn sample_specs(n: usize) -> Vec<Spec> {
        (0..n)
            .map(|i| Spec {
                key: (i % 3 != 0).then(|| format!("key-{i}").into_bytes()),
                value: format!("value number {i} ").repeat(i % 7 + 1).into_bytes(),
                headers: (0..i % 4)
                    .map(|j| {
                        (
                            format!("h{j}"),
                            (j % 2 == 0).then(|| format!("hv{i}.{j}").into_bytes()),
                        )
                    })
                    .collect(),
                tags: (0..i % 3).map(|j| format!("tag{j}")).collect(),
                timestamp_ms: if i % 5 == 4 {
                    0
                } else {
                    TS + (i as i64 % 11) - 5
                },
                expire_at_ms: (i % 2 == 1).then_some(TS + 60_000 + i as i64),
            })
            .collect()
    }

    fn encode_specs(specs: &[Spec], c: Compression, now: i64) -> EncodedBatch {
        let records: Vec<Record<'_>> = specs.iter().map(Spec::record).collect();
        encode_batch(&records, c, now).unwrap()
    }

    #[test]
    fn round_trips_every_codec() {
        let now = TS + 123;
        let specs = sample_specs(40);
        for c in codecs() {
            let mut enc = encode_specs(&specs, c, now);
            assert_eq!(enc.record_count, 40);
            let want_max = specs
                .iter()
                .map(|s| {
                    if s.timestamp_ms == 0 {
                        now
                    } else {
                        s.timestamp_ms
                    }
                })
                .max()
                .unwrap();
            assert_eq!(enc.max_timestamp, want_max);
            assert_eq!(enc.base_timestamp, specs[0].timestamp_ms);
            set_base_offset(&mut enc.bytes, 1000);
            verify_crc(&enc.bytes).unwrap();
            let h = BatchHeader::parse(&enc.bytes).unwrap();
            assert_eq!(h.compression().unwrap(), c);
            assert_eq!(h.attributes, c.attribute_bits());
            assert_eq!(h.total_len(), enc.bytes.len());
            assert_eq!(h.last_offset(), 1039);
            assert_eq!(h.next_offset(), 1040);
            assert_eq!(
                (h.producer_id, h.producer_epoch, h.base_sequence),
                (-1, -1, -1)
            );
            if c == Compression::None {
                assert_eq!(
                    enc.uncompressed_records_len,
                    enc.bytes.len() - BATCH_HEADER_LEN
                );
            } else {
                assert!(enc.bytes.len() - BATCH_HEADER_LEN < enc.uncompressed_records_len);
            }
            let views = decode_batch(&Bytes::from(enc.bytes), true).unwrap();
            assert_eq!(views.len(), specs.len());
            for (i, (v, s)) in views.iter().zip(&specs).enumerate() {
                s.check(v, 1000 + i as i64, now);
            }
        }
    }

    #[test]
    fn sizes_match_encoding() {
        let specs = sample_specs(12);
        let enc = encode_specs(&specs, Compression::None, TS);
        let mut sum = 0;
        for (i, s) in specs.iter().enumerate() {
            let ts = if s.timestamp_ms == 0 {
                TS
            } else {
                s.timestamp_ms
            };
            sum += encoded_record_len(&s.record(), i as i32, ts - enc.base_timestamp);
        }
        assert_eq!(sum, enc.uncompressed_records_len);
        assert_eq!(BATCH_HEADER_LEN + sum, enc.bytes.len());
    }

    #[test]
    fn multi_block_lz4_and_large_values() {
        let big = vec![7u8; 200_000];
        let noisy: Vec<u8> = (0..150_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
            .collect();
        let records = [
            Record::new(&big),
            Record::new(&noisy).with_key(b"n"),
            Record::new(b""),
        ];
        for c in codecs() {
            let enc = encode_batch(&records, c, TS).unwrap();
            let views = decode_batch(&Bytes::from(enc.bytes), true).unwrap();
            assert_eq!(views[0].value_bytes(), &big[..]);
            assert_eq!(views[1].value_bytes(), &noisy[..]);
            assert_eq!(views[2].value.as_deref(), Some(&[][..]));
        }
    }

    #[test]
    fn uncompressed_decode_is_zero_copy() {
        let specs = sample_specs(5);
        let batch = Bytes::from(encode_specs(&specs, Compression::None, TS).bytes);
        let range = batch.as_ptr() as usize..batch.as_ptr() as usize + batch.len();
        let inside = |b: &Bytes| b.is_empty() || range.contains(&(b.as_ptr() as usize));
        for v in decode_batch(&batch, true).unwrap() {
            assert!(v.value.as_ref().is_none_or(inside));
            assert!(v.key.as_ref().is_none_or(inside));
            assert!(v.tags.iter().all(inside));
            for h in &v.headers {
                assert!(inside(&h.key));
                assert!(h.value.as_ref().is_none_or(inside));
            }
        }
    }

    #[test]
    fn timestamp_zero_means_now() {
        let enc = encode_batch(
            &[Record::new(b"x"), Record::new(b"y")],
            Compression::None,
            777,
        )
        .unwrap();
        assert_eq!((enc.base_timestamp, enc.max_timestamp), (777, 777));
        let views = decode_batch(&Bytes::from(enc.bytes), true).unwrap();
        assert!(views.iter().all(|v| v.timestamp_ms == 777));
    }

    #[test]
    fn extreme_timestamps_round_trip() {
        let recs = [
            Record {
                timestamp_ms: i64::MAX,
                ..Record::new(b"a")
            },
            Record {
                timestamp_ms: i64::MIN,
                ..Record::new(b"b")
            },
            Record {
                timestamp_ms: -1,
                expire_at_ms: Some(i64::MIN),
                ..Record::new(b"c")
            },
        ];
        let enc = encode_batch(&recs, Compression::None, 1).unwrap();
        assert_eq!(enc.max_timestamp, i64::MAX);
        let views = decode_batch(&Bytes::from(enc.bytes), true).unwrap();
        let ts: Vec<i64> = views.iter().map(|v| v.timestamp_ms).collect();
        assert_eq!(ts, [i64::MAX, i64::MIN, -1]);
        assert_eq!(views[2].expire_at_ms, Some(i64::MIN));
    }

    #[test]
    fn rejects_invalid_input() {
        assert!(matches!(
            encode_batch(&[], Compression::None, 0),
            Err(Error::InvalidArgument(_))
        ));
        for key in ["__mqs.tag", "__mqs.expire_at", "__mqs.anything"] {
            let rec = Record {
                headers: vec![
                    Header {
                        key: "fine",
                        value: None,
                    },
                    Header {
                        key,
                        value: Some(b"x"),
                    },
                ],
                ..Record::new(b"v")
            };
            match encode_batch(&[Record::new(b"ok"), rec], Compression::None, 0) {
                Err(Error::InvalidArgument(msg)) => assert!(msg.contains(key), "{msg}"),
                other => panic!("expected InvalidArgument, got {other:?}"),
            }
        }
        // Only the prefix is reserved.
        let rec = Record {
            headers: vec![Header {
                key: "_mqs.tag",
                value: None,
            }],
            ..Record::new(b"v")
        };
        encode_batch(&[rec], Compression::None, 0).unwrap();
    }

    #[cfg(not(feature = "zstd"))]
    #[test]
    fn zstd_unsupported_without_feature() {
        assert!(matches!(
            encode_batch(&[Record::new(b"v")], Compression::Zstd, 0),
            Err(Error::Unsupported(_))
        ));
    }

    #[test]
    fn every_flipped_bit_under_the_crc_is_caught() {
        for c in codecs() {
            let enc = encode_specs(&sample_specs(4), c, TS).bytes;
            for pos in BATCH_LENGTH_OFFSET..enc.len() {
                if (PARTITION_LEADER_EPOCH_OFFSET..MAGIC_OFFSET).contains(&pos) {
                    continue; // outside the CRC by design
                }
                for bit in 0..8 {
                    let mut bad = enc.clone();
                    bad[pos] ^= 1 << bit;
                    let bad = Bytes::from(bad);
                    assert!(is_corruption(verify_crc(&bad)), "{c} byte {pos} bit {bit}");
                    assert!(
                        is_corruption(decode_batch(&bad, true)),
                        "{c} byte {pos} bit {bit}"
                    );
                    assert!(is_corruption(retain_records(&bad, |_| true)));
                }
            }
        }
    }

    #[test]
    fn crc_error_names_both_values() {
        let mut b = encode_batch(&[Record::new(b"v")], Compression::None, 1)
            .unwrap()
            .bytes;
        let last = b.len() - 1;
        b[last] ^= 0x40;
        let Err(Error::Corruption(msg)) = verify_crc(&b) else {
            panic!("expected corruption")
        };
        assert!(msg.contains("expected") && msg.contains("actual"), "{msg}");
    }

    #[test]
    fn truncation_is_caught() {
        for c in codecs() {
            let enc = encode_specs(&sample_specs(3), c, TS).bytes;
            for len in 0..enc.len() {
                let cut = Bytes::copy_from_slice(&enc[..len]);
                assert!(is_corruption(decode_batch(&cut, false)), "{c} len {len}");
                assert!(is_corruption(verify_crc(&cut)), "{c} len {len}");
                if len > 0 {
                    assert!(is_corruption(split_batches(&cut)), "{c} len {len}");
                }
            }
        }
    }

    #[test]
    fn trailing_bytes_after_one_batch_are_ignored() {
        let one = encode_batch(&[Record::new(b"v")], Compression::None, 1)
            .unwrap()
            .bytes;
        let mut two = one.clone();
        two.extend_from_slice(&[0xde, 0xad]);
        verify_crc(&two).unwrap();
        let two = Bytes::from(two);
        assert_eq!(decode_batch(&two, true).unwrap().len(), 1);
        let all = retain_records(&two, |_| true).unwrap().unwrap();
        assert_eq!(all.as_ref(), &one[..]);
    }

    #[test]
    fn base_offset_and_leader_epoch_are_outside_the_crc() {
        let mut b = encode_batch(&[Record::new(b"v")], Compression::None, 1)
            .unwrap()
            .bytes;
        set_base_offset(&mut b, i64::MAX - 5);
        b[PARTITION_LEADER_EPOCH_OFFSET..MAGIC_OFFSET].copy_from_slice(&7i32.to_be_bytes());
        verify_crc(&b).unwrap();
        let h = BatchHeader::parse(&b).unwrap();
        assert_eq!(h.base_offset, i64::MAX - 5);
        assert_eq!(h.partition_leader_epoch, 7);
        assert_eq!(
            decode_batch(&Bytes::from(b), true).unwrap()[0].offset,
            i64::MAX - 5
        );
    }

    #[test]
    fn header_parse_rejections() {
        let good = encode_batch(&[Record::new(b"v")], Compression::None, 1)
            .unwrap()
            .bytes;
        assert!(is_corruption(BatchHeader::parse(&good[..60])));
        let mut bad = good.clone();
        bad[MAGIC_OFFSET] = 1;
        assert!(is_corruption(BatchHeader::parse(&bad)));
        let mut bad = good.clone();
        bad[BATCH_LENGTH_OFFSET..PARTITION_LEADER_EPOCH_OFFSET]
            .copy_from_slice(&48i32.to_be_bytes());
        assert!(is_corruption(BatchHeader::parse(&bad)));
        let mut ok = good;
        ok[BATCH_LENGTH_OFFSET..PARTITION_LEADER_EPOCH_OFFSET]
            .copy_from_slice(&49i32.to_be_bytes());
        assert_eq!(
            BatchHeader::parse(&ok).unwrap().total_len(),
            BATCH_HEADER_LEN
        );
    }

    /// A batch from a hand-written records section, with a valid CRC.
    fn raw_batch(
        attributes: i16,
        last_offset_delta: i32,
        record_count: i32,
        records: &[u8],
    ) -> Bytes {
        let header = BatchHeader {
            base_offset: 100,
            batch_length: 0,
            partition_leader_epoch: 3,
            magic: MAGIC_V2,
            crc: 0,
            attributes,
            last_offset_delta,
            base_timestamp: 50,
            max_timestamp: 60,
            producer_id: 9,
            producer_epoch: 1,
            base_sequence: 0,
            record_count,
        };
        let mut b = header.to_bytes().to_vec();
        b.extend_from_slice(records);
        let len = (b.len() - LOG_OVERHEAD) as i32;
        b[BATCH_LENGTH_OFFSET..PARTITION_LEADER_EPOCH_OFFSET].copy_from_slice(&len.to_be_bytes());
        fix_crc(&mut b);
        Bytes::from(b)
    }

    #[test]
    fn kafka_features_we_do_not_write() {
        // A tombstone (null value) and LogAppendTime.
        let rec = [0x0e, 0x00, 0x02, 0x00, 0x02, b'k', 0x01, 0x00];
        let b = raw_batch(TIMESTAMP_TYPE_MASK, 0, 1, &rec);
        let v = decode_batch(&b, true).unwrap();
        assert_eq!(v[0].offset, 100);
        assert_eq!(v[0].key.as_deref(), Some(&b"k"[..]));
        assert_eq!(v[0].value, None, "a tombstone reads as null, not empty");
        assert_eq!(v[0].timestamp_ms, 60, "LogAppendTime uses maxTimestamp");

        let b = raw_batch(0, 0, 1, &rec);
        assert_eq!(decode_batch(&b, true).unwrap()[0].timestamp_ms, 51);

        // Empty batch (what compaction leaves for producer state).
        let b = raw_batch(0, 5, 0, &[]);
        assert!(decode_batch(&b, true).unwrap().is_empty());
        assert_eq!(BatchHeader::parse(&b).unwrap().last_offset(), 105);

        // Unknown reserved headers are dropped, not shown as user headers.
        let mut rec = vec![0x00, 0x00, 0x00, 0x01, 0x00, 0x04];
        rec.push(0x18);
        rec.extend_from_slice(b"__mqs.future");
        rec.push(0x01);
        rec.push(0x02);
        rec.push(b'u');
        rec.push(0x01);
        let mut full = vec![(rec.len() * 2) as u8];
        full.extend_from_slice(&rec);
        let v = decode_batch(&raw_batch(0, 0, 1, &full), true).unwrap();
        assert_eq!(v[0].headers.len(), 1);
        assert_eq!(v[0].headers[0].key.as_ref(), b"u");

        // Flags are readable.
        let b = raw_batch(TRANSACTIONAL_MASK | CONTROL_MASK, 0, 0, &[]);
        let h = BatchHeader::parse(&b).unwrap();
        assert!(h.is_transactional() && h.is_control() && !h.is_log_append_time());

        // gzip and snappy batches as Kafka producers send them.
        let ok = [0x0e, 0x00, 0x00, 0x00, 0x01, 0x02, b'v', 0x00];
        for codec in [Compression::Gzip, Compression::Snappy] {
            let mut packed = Vec::new();
            compression::compress_into(codec, &ok, &mut packed).unwrap();
            let b = raw_batch(codec.attribute_bits(), 0, 1, &packed);
            let records = decode_batch(&b, true).unwrap();
            assert_eq!(records[0].value_bytes(), b"v", "{codec}");
            assert!(matches!(
                decode_batch(&raw_batch(codec.attribute_bits(), 0, 1, &[0; 8]), true),
                Err(Error::Corruption(_))
            ));
        }
    }

    #[test]
    fn malformed_records_are_corruption() {
        let ok = [0x0e, 0x00, 0x00, 0x00, 0x01, 0x02, b'v', 0x00];
        assert_eq!(
            decode_batch(&raw_batch(0, 0, 1, &ok), true).unwrap().len(),
            1
        );
        let cases: Vec<(&str, i32, i32, Vec<u8>)> = vec![
            ("count too high", 1, 2, ok.to_vec()),
            ("count too low", 0, 0, ok.to_vec()),
            ("negative count", 0, -1, ok.to_vec()),
            ("hostile count", i32::MAX, i32::MAX, ok.to_vec()),
            ("length too long", 0, 1, [&[0x10][..], &ok[1..]].concat()),
            ("length too short", 0, 1, [&[0x0c][..], &ok[1..]].concat()),
            (
                "length too short",
                0,
                1,
                [&[0x0c][..], &ok[1..], &[0]].concat(),
            ),
            (
                "record longer than its fields",
                0,
                1,
                [&[0x10][..], &ok[1..], &[0]].concat(),
            ),
            ("negative length", 0, 1, [&[0x01][..], &ok[1..]].concat()),
            (
                "key length -2",
                0,
                1,
                vec![0x0e, 0x00, 0x00, 0x00, 0x03, 0x02, b'v', 0x00],
            ),
            (
                "value past end",
                0,
                1,
                vec![0x0e, 0x00, 0x00, 0x00, 0x01, 0x04, b'v', 0x00],
            ),
            (
                "negative header count",
                0,
                1,
                vec![0x0e, 0x00, 0x00, 0x00, 0x01, 0x02, b'v', 0x01],
            ),
            (
                "offset delta beyond last",
                0,
                1,
                vec![0x0e, 0x00, 0x00, 0x02, 0x01, 0x02, b'v', 0x00],
            ),
            (
                "negative offset delta",
                0,
                1,
                vec![0x0e, 0x00, 0x00, 0x01, 0x01, 0x02, b'v', 0x00],
            ),
            ("repeated offset delta", 1, 2, [&ok[..], &ok[..]].concat()),
            (
                "overlong varint",
                0,
                1,
                vec![
                    0x16, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0x7f, 0x01, 0x02, b'v', 0x00,
                ],
            ),
            (
                "tag with null value",
                0,
                1,
                [
                    &[0x24, 0x00, 0x00, 0x00, 0x01, 0x02, b'v', 0x02, 0x12][..],
                    b"__mqs.tag",
                    &[0x01],
                ]
                .concat(),
            ),
            (
                "short expire-at",
                0,
                1,
                [
                    &[0x32, 0x00, 0x00, 0x00, 0x01, 0x02, b'v', 0x02, 0x1e][..],
                    b"__mqs.expire_at",
                    &[0x02, 0x05],
                ]
                .concat(),
            ),
        ];
        for (what, last_delta, count, records) in cases {
            let r = decode_batch(&raw_batch(0, last_delta, count, &records), true);
            assert!(is_corruption(r), "{what}");
        }
    }

    #[test]
    fn for_each_record_stops_and_skips() {
        let specs = sample_specs(10);
        for c in codecs() {
            let mut enc = encode_specs(&specs, c, TS).bytes;
            set_base_offset(&mut enc, 50);
            let b = Bytes::from(enc);
            let mut seen = Vec::new();
            for_each_record(&b, true, |v| {
                seen.push(v.offset);
                v.offset < 53
            })
            .unwrap();
            assert_eq!(seen, [50, 51, 52, 53]);
            let mut seen = Vec::new();
            for_each_record_from(&b, true, 57, |v| {
                seen.push(v.offset);
                true
            })
            .unwrap();
            assert_eq!(seen, [57, 58, 59]);
            let all = decode_batch(&b, true).unwrap();
            let mut again = Vec::new();
            for_each_record_from(&b, true, 55, |v| {
                again.push(v);
                true
            })
            .unwrap();
            assert_eq!(again, all[5..]);
        }
    }

    #[test]
    fn retain_records_like_compaction() {
        let specs = sample_specs(20);
        for c in codecs() {
            let mut enc = encode_specs(&specs, c, TS).bytes;
            set_base_offset(&mut enc, 1000);
            // A leader epoch other than -1 must survive too.
            enc[PARTITION_LEADER_EPOCH_OFFSET..MAGIC_OFFSET].copy_from_slice(&4i32.to_be_bytes());
            let batch = Bytes::from(enc);
            let before = BatchHeader::parse(&batch).unwrap();
            let all = decode_batch(&batch, true).unwrap();

            assert_eq!(retain_records(&batch, |_| false).unwrap(), None);
            let same = retain_records(&batch, |_| true).unwrap().unwrap();
            assert_eq!(same, batch);
            assert_eq!(
                same.as_ptr(),
                batch.as_ptr(),
                "everything kept is a zero-copy clone"
            );

            let keep = |o: i64| o % 3 == 0 || o == 1019;
            let kept = retain_records(&batch, keep).unwrap().unwrap();
            verify_crc(&kept).unwrap();
            let after = BatchHeader::parse(&kept).unwrap();
            assert_eq!(after.total_len(), kept.len());
            assert_eq!(
                after,
                BatchHeader {
                    batch_length: after.batch_length,
                    crc: after.crc,
                    record_count: 7,
                    ..before
                }
            );
            assert_eq!(after.last_offset(), 1019);
            let views = decode_batch(&kept, true).unwrap();
            let want: Vec<RecordView> = all.iter().filter(|v| keep(v.offset)).cloned().collect();
            assert_eq!(views, want);

            // Compacting a compacted batch (offset gaps) keeps working.
            let again = retain_records(&kept, |o| o > 1010).unwrap().unwrap();
            let offsets: Vec<i64> = decode_batch(&again, true)
                .unwrap()
                .iter()
                .map(|v| v.offset)
                .collect();
            assert_eq!(offsets, [1011, 1014, 1017, 1019]);
            assert_eq!(BatchHeader::parse(&again).unwrap().last_offset(), 1019);
        }
    }

    #[test]
    fn retain_keeps_records_byte_exact() {
        let specs = sample_specs(6);
        let batch = Bytes::from(encode_specs(&specs, Compression::None, TS).bytes);
        let kept = retain_records(&batch, |o| o == 1 || o == 4)
            .unwrap()
            .unwrap();
        let r0 = encoded_record_len(&specs[0].record(), 0, specs[0].timestamp_ms - TS + 5);
        // Record 1 and 4 must appear verbatim, reserved headers included.
        let original = &batch[RECORDS_OFFSET..];
        let rec1_len = encoded_record_len(
            &specs[1].record(),
            1,
            specs[1].timestamp_ms - specs[0].timestamp_ms,
        );
        let rec1 = &original[r0..r0 + rec1_len];
        assert!(kept[RECORDS_OFFSET..].starts_with(rec1));
        assert_eq!(decode_batch(&kept, true).unwrap()[1].offset, 4);
    }

    #[test]
    fn split_batches_concatenations_and_torn_tails() {
        assert!(split_batches(&Bytes::new()).unwrap().is_empty());
        let mut parts = Vec::new();
        for (i, c) in codecs().into_iter().cycle().take(5).enumerate() {
            let mut b = encode_specs(&sample_specs(i + 1), c, TS).bytes;
            set_base_offset(&mut b, i as i64 * 100);
            parts.push(b);
        }
        let joined = Bytes::from(parts.concat());
        let split = split_batches(&joined).unwrap();
        assert_eq!(split.len(), parts.len());
        for (s, p) in split.iter().zip(&parts) {
            assert_eq!(s.as_ref(), &p[..]);
            verify_crc(s).unwrap();
        }
        let base = joined.as_ptr() as usize;
        assert!(split
            .iter()
            .all(|s| (s.as_ptr() as usize) >= base && (s.as_ptr() as usize) < base + joined.len()));

        let boundaries: Vec<usize> = parts
            .iter()
            .scan(0, |acc, p| {
                *acc += p.len();
                Some(*acc)
            })
            .collect();
        for cut in 1..joined.len() {
            let r = split_batches(&joined.slice(..cut));
            if boundaries.contains(&cut) {
                assert_eq!(
                    r.unwrap().len(),
                    boundaries.iter().position(|&b| b == cut).unwrap() + 1
                );
            } else {
                match r {
                    Err(Error::Corruption(msg)) => assert!(msg.contains("byte"), "{msg}"),
                    other => panic!("cut {cut}: expected corruption, got {other:?}"),
                }
            }
        }
        // Garbage after a good batch.
        let mut bad = parts[0].clone();
        bad.extend_from_slice(&[0u8; 70]);
        assert!(is_corruption(split_batches(&Bytes::from(bad))));
    }

    fn spec_strategy() -> impl Strategy<Value = Spec> {
        let bytes = |n| proptest::collection::vec(any::<u8>(), 0..n);
        (
            proptest::option::of(bytes(40)),
            bytes(300),
            proptest::collection::vec(("[a-z_.]{0,12}", proptest::option::of(bytes(20))), 0..4),
            proptest::collection::vec("\\PC{0,8}", 0..3),
            prop_oneof![Just(0i64), any::<i64>(), TS - 1000..TS + 1000],
            proptest::option::of(any::<i64>()),
        )
            .prop_map(
                |(key, value, headers, tags, timestamp_ms, expire_at_ms)| Spec {
                    key,
                    value,
                    headers: headers
                        .into_iter()
                        .filter(|(k, _)| !k.starts_with(RESERVED_HEADER_PREFIX))
                        .collect(),
                    tags,
                    timestamp_ms,
                    expire_at_ms,
                },
            )
    }

    fn codec_strategy() -> impl Strategy<Value = Compression> {
        prop_oneof![
            Just(Compression::None),
            Just(Compression::Lz4),
            Just(Compression::Zstd)
        ]
        .prop_filter("codec compiled in", |c| c.is_available())
    }

    proptest! {
        #[test]
        fn prop_round_trip(
            specs in proptest::collection::vec(spec_strategy(), 1..12),
            c in codec_strategy(),
            base in any::<i64>(),
            now in any::<i64>(),
        ) {
            let mut enc = encode_specs(&specs, c, now);
            set_base_offset(&mut enc.bytes, base);
            let views = decode_batch(&Bytes::from(enc.bytes), true).unwrap();
            prop_assert_eq!(views.len(), specs.len());
            for (i, (v, s)) in views.iter().zip(&specs).enumerate() {
                s.check(v, base.wrapping_add(i as i64), now);
            }
        }

        #[test]
        fn prop_retain_matches_filter(
            specs in proptest::collection::vec(spec_strategy(), 1..12),
            c in codec_strategy(),
            mask in any::<u16>(),
        ) {
            let batch = Bytes::from(encode_specs(&specs, c, TS).bytes);
            let keep = |o: i64| mask & (1 << o) != 0;
            let all = decode_batch(&batch, true).unwrap();
            let want: Vec<RecordView> = all.iter().filter(|v| keep(v.offset)).cloned().collect();
            match retain_records(&batch, keep).unwrap() {
                None => prop_assert!(want.is_empty()),
                Some(kept) => {
                    prop_assert_eq!(decode_batch(&kept, true).unwrap(), want);
                    let (a, b) = (BatchHeader::parse(&kept).unwrap(), BatchHeader::parse(&batch).unwrap());
                    prop_assert_eq!(a.last_offset_delta, b.last_offset_delta);
                    prop_assert_eq!(a.max_timestamp, b.max_timestamp);
                    prop_assert_eq!(a.attributes, b.attributes);
                }
            }
        }

        #[test]
        fn prop_random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            let b = Bytes::from(data);
            let _ = BatchHeader::parse(&b);
            let _ = verify_crc(&b);
            let _ = decode_batch(&b, false);
            let _ = decode_batch(&b, true);
            let _ = for_each_record_from(&b, false, 3, |_| true);
            let _ = retain_records(&b, |o| o % 2 == 0);
            let _ = split_batches(&b);
        }

        #[test]
        fn prop_plausible_batches_never_panic(
            attributes in prop_oneof![Just(0i16), Just(3), Just(4), Just(8), any::<i16>()],
            last_delta in prop_oneof![0i32..20, any::<i32>()],
            count in prop_oneof![0i32..20, any::<i32>()],
            records in proptest::collection::vec(any::<u8>(), 0..400),
        ) {
            // A valid header and CRC around random records, so the record
            // parser and decompressors see the garbage.
            let b = raw_batch(attributes, last_delta, count, &records);
            let _ = decode_batch(&b, true);
            let _ = retain_records(&b, |o| o % 2 == 0);
            let _ = for_each_record_from(&b, true, 105, |_| true);
        }

        #[test]
        fn prop_mutated_batches_never_panic(
            specs in proptest::collection::vec(spec_strategy(), 1..6),
            c in codec_strategy(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
            cut in any::<prop::sample::Index>(),
            truncate in any::<bool>(),
        ) {
            let mut bytes = encode_specs(&specs, c, TS).bytes;
            // Leave the header mostly alone so mutations reach the records.
            for (i, x) in flips {
                let pos = i.index(bytes.len());
                bytes[pos] ^= x;
            }
            if truncate {
                bytes.truncate(cut.index(bytes.len() + 1));
            }
            if bytes.len() >= BATCH_HEADER_LEN {
                fix_crc(&mut bytes);
            }
            let b = Bytes::from(bytes);
            let _ = decode_batch(&b, true);
            let _ = decode_batch(&b, false);
            let _ = retain_records(&b, |o| o % 2 == 1);
            let _ = split_batches(&b);
        }
    }
}
