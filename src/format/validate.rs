//! Validation of RecordBatches as a producer sent them, before they are
//! stored unchanged: the checks Kafka's `LogValidator` makes on batches
//! from clients. Every batch of a request is checked before any is stored,
//! so a bad request stores nothing.
//!
//! What is refused, and as what:
//! - damage (a truncated batch, a length that is not the batch's, a CRC-32C
//!   mismatch, records that do not parse or whose offset deltas do not run
//!   0, 1, 2…, a codec code that does not exist): `Corruption`;
//! - batches a client may not send (magic other than 2, a control batch,
//!   no records, `lastOffsetDelta + 1` not the record count, a producer id
//!   with a negative base sequence, a transactional batch without a
//!   producer id): `InvalidArgument`;
//! - a batch or record over the store's limits: `RecordTooLarge` (a
//!   compressed batch whose records would decompress beyond
//!   `max_batch_bytes` is refused as `Corruption` before it is inflated
//!   further);
//! - a codec this build lacks (zstd in the edge build): `Unsupported`.
//!
//! Every message names the batch's index in the request and its byte range.

use std::ops::Range;

use bytes::Bytes;

use super::batch::{walk_records, BatchHeader};
use super::{
    BATCH_HEADER_LEN, BATCH_LENGTH_OFFSET, LOG_OVERHEAD, MAGIC_OFFSET, MAGIC_V2, MIN_BATCH_LENGTH,
    NO_PRODUCER_ID,
};
use crate::error::{Error, Result};

/// The store's size limits, applied to producer batches as to encoded ones.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_batch_bytes: usize,
    pub max_record_bytes: usize,
}

/// One batch of a request: where it lay in the request, its header and a
/// copy of its bytes (the one copy a store makes of what it stores).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProducerBatch {
    pub range: Range<usize>,
    pub header: BatchHeader,
    pub bytes: Bytes,
}

/// Who sent the batches: client rules apply to producers only; a
/// follower copies what its leader stored, control batches included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Producer,
    Replica,
}

/// Checks every batch of `request` (one or more batches back to back) and
/// returns where each lies. An empty request is `InvalidArgument`.
pub fn validate_producer_batches(request: &[u8], limits: Limits) -> Result<Vec<ProducerBatch>> {
    validate_batches(request, limits, Origin::Producer)
}

/// `validate_producer_batches` for batches from `origin`.
pub fn validate_batches(
    request: &[u8],
    limits: Limits,
    origin: Origin,
) -> Result<Vec<ProducerBatch>> {
    if request.is_empty() {
        return Err(Error::InvalidArgument(
            "no batches: the request is empty".into(),
        ));
    }
    let mut batches = Vec::new();
    let mut pos = 0;
    while pos < request.len() {
        let index = batches.len();
        let batch = validate_one(request, pos, index, limits, origin)?;
        pos = batch.range.end;
        batches.push(batch);
    }
    Ok(batches)
}

/// Why batch `index` (at `range` of the request) is refused.
fn reason(index: usize, range: &Range<usize>, what: impl std::fmt::Display) -> String {
    format!(
        "batch {index} (bytes {}..{}): {what}",
        range.start, range.end
    )
}

fn validate_one(
    request: &[u8],
    start: usize,
    index: usize,
    limits: Limits,
    origin: Origin,
) -> Result<ProducerBatch> {
    let rest = &request[start..];
    let whole = start..request.len();
    let corrupt =
        |range: &Range<usize>, what: String| Error::corruption(reason(index, range, what));
    let invalid =
        |range: &Range<usize>, what: String| Error::InvalidArgument(reason(index, range, what));
    if rest.len() < BATCH_HEADER_LEN {
        return Err(corrupt(
            &whole,
            format!(
                "truncated: {} bytes, a batch header needs {BATCH_HEADER_LEN}",
                rest.len()
            ),
        ));
    }
    let magic = rest[MAGIC_OFFSET] as i8;
    if magic != MAGIC_V2 {
        return Err(invalid(
            &whole,
            format!(
                "magic {magic}: only RecordBatch v2 (magic 2, Kafka 0.11 and later) is accepted"
            ),
        ));
    }
    let length = i32::from_be_bytes(
        rest[BATCH_LENGTH_OFFSET..BATCH_LENGTH_OFFSET + 4]
            .try_into()
            .expect("4 bytes"),
    );
    if length < MIN_BATCH_LENGTH {
        return Err(corrupt(
            &whole,
            format!("batch length {length} is below the minimum {MIN_BATCH_LENGTH}"),
        ));
    }
    let total = LOG_OVERHEAD + length as usize;
    if total > limits.max_batch_bytes {
        return Err(Error::BatchTooLarge {
            index,
            what: "the batch",
            size: total,
            limit: limits.max_batch_bytes,
        });
    }
    if total > rest.len() {
        return Err(corrupt(
            &whole,
            format!(
                "truncated: the batch length says {total} bytes, {} remain",
                rest.len()
            ),
        ));
    }
    let range = start..start + total;
    let bytes = Bytes::copy_from_slice(&request[range.clone()]);
    let header = BatchHeader::parse(&bytes).map_err(|e| corrupt(&range, e.to_string()))?;
    super::verify_crc(&bytes).map_err(|e| corrupt(&range, e.to_string()))?;
    match origin {
        Origin::Producer => check_client_rules(&header),
        Origin::Replica => check_span(&header),
    }
    .map_err(|what| invalid(&range, what))?;
    check_records(&bytes, &header, index, limits, origin).map_err(|e| match e {
        Error::Corruption(what) => corrupt(&range, what),
        Error::InvalidArgument(what) => invalid(&range, what),
        Error::Unsupported(what) => Error::Unsupported(reason(index, &range, what)),
        other => other,
    })?;
    Ok(ProducerBatch {
        range,
        header,
        bytes,
    })
}

/// The header rules for batches from clients.
fn check_client_rules(header: &BatchHeader) -> std::result::Result<(), String> {
    if header.is_control() {
        return Err("clients may not write control batches".into());
    }
    check_dense(header)?;
    let has_producer = header.producer_id != NO_PRODUCER_ID;
    if has_producer && header.base_sequence < 0 {
        return Err(format!(
            "producer id {} with base sequence {} (an idempotent batch needs a sequence ≥ 0)",
            header.producer_id, header.base_sequence
        ));
    }
    if header.is_transactional() && !has_producer {
        return Err("a transactional batch without a producer id".into());
    }
    Ok(())
}

/// A leader's batch may have gaps (compaction removed records) or no
/// record at all (what compaction leaves of a producer's last batch), but
/// never more records than offsets.
fn check_span(header: &BatchHeader) -> std::result::Result<(), String> {
    let span = i64::from(header.last_offset_delta) + 1;
    if header.last_offset_delta < 0
        || header.record_count < 0
        || i64::from(header.record_count) > span
    {
        return Err(format!(
            "record count {} does not fit lastOffsetDelta {}",
            header.record_count, header.last_offset_delta
        ));
    }
    Ok(())
}

/// At least one record, each offset of the batch's range holding one:
/// what a client sends.
fn check_dense(header: &BatchHeader) -> std::result::Result<(), String> {
    if header.record_count <= 0 {
        return Err(format!(
            "record count {} (a batch holds at least one record)",
            header.record_count
        ));
    }
    if i64::from(header.last_offset_delta) + 1 != i64::from(header.record_count) {
        return Err(format!(
            "lastOffsetDelta {} does not match the record count {}",
            header.last_offset_delta, header.record_count
        ));
    }
    Ok(())
}

/// Every record parses, no record is over the limit, and offset deltas
/// run 0, 1, 2… (from a producer) or rise within lastOffsetDelta (from a
/// leader, whose compaction leaves gaps).
fn check_records(
    bytes: &Bytes,
    header: &BatchHeader,
    index: usize,
    limits: Limits,
    origin: Origin,
) -> Result<()> {
    header.compression()?.check_available()?;
    let mut expected = 0i32;
    let mut count = 0i32;
    // A batch may not decompress to more than the store takes uncompressed:
    // a small compressed bomb cannot make validation allocate gigabytes.
    let max_records_len = limits.max_batch_bytes.saturating_sub(BATCH_HEADER_LEN);
    walk_records(bytes, max_records_len, |offset_delta, len| {
        let in_order = match origin {
            Origin::Producer => offset_delta == expected,
            Origin::Replica => offset_delta >= expected && offset_delta <= header.last_offset_delta,
        };
        if !in_order {
            return Err(Error::InvalidArgument(format!(
                "record {count} has offset delta {offset_delta} (deltas must run 0, 1, 2…{})",
                match origin {
                    Origin::Producer => "",
                    Origin::Replica => ", or rise with gaps up to lastOffsetDelta",
                }
            )));
        }
        count += 1;
        expected = offset_delta + 1;
        if len > limits.max_record_bytes {
            return Err(Error::BatchTooLarge {
                index,
                what: "a record",
                size: len,
                limit: limits.max_record_bytes,
            });
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{
        self, Compression, ALL_CODECS, ATTRIBUTES_OFFSET, BASE_SEQUENCE_OFFSET, CONTROL_MASK,
        CRC_OFFSET, LAST_OFFSET_DELTA_OFFSET, PRODUCER_ID_OFFSET, RECORD_COUNT_OFFSET,
        TRANSACTIONAL_MASK,
    };
    use crate::record::Record;
    use crate::Status;

    const LIMITS: Limits = Limits {
        max_batch_bytes: 1 << 20,
        max_record_bytes: 1 << 16,
    };

    fn batch(values: &[&[u8]], codec: Compression) -> Vec<u8> {
        let records: Vec<Record<'_>> = values.iter().map(|v| Record::new(v)).collect();
        format::encode_batch(&records, codec, 1_700_000_000_000)
            .unwrap()
            .bytes
    }

    /// Rewrites header fields and fixes the CRC, as a producer would have
    /// written them.
    fn patched(mut b: Vec<u8>, patch: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        patch(&mut b);
        let crc = crc32c::crc32c(&b[ATTRIBUTES_OFFSET..]);
        b[CRC_OFFSET..ATTRIBUTES_OFFSET].copy_from_slice(&crc.to_be_bytes());
        b
    }

    fn put_i16(b: &mut [u8], at: usize, v: i16) {
        b[at..at + 2].copy_from_slice(&v.to_be_bytes());
    }
    fn put_i32(b: &mut [u8], at: usize, v: i32) {
        b[at..at + 4].copy_from_slice(&v.to_be_bytes());
    }
    fn put_i64(b: &mut [u8], at: usize, v: i64) {
        b[at..at + 8].copy_from_slice(&v.to_be_bytes());
    }

    fn check(request: Vec<u8>) -> Result<Vec<ProducerBatch>> {
        validate_producer_batches(&request, LIMITS)
    }

    #[test]
    fn good_batches_of_every_codec_are_found_in_order() {
        let mut request = Vec::new();
        let mut ends = Vec::new();
        for codec in ALL_CODECS {
            if !codec.is_available() {
                continue;
            }
            request.extend(batch(&[b"a", b"bb", b"ccc"], codec));
            ends.push(request.len());
        }
        let batches = check(request).unwrap();
        assert_eq!(
            batches.iter().map(|b| b.range.end).collect::<Vec<_>>(),
            ends
        );
        assert_eq!(batches[0].range.start, 0);
        assert!(batches.iter().all(|b| b.header.record_count == 3));
    }

    #[test]
    fn an_idempotent_batch_with_a_sequence_passes() {
        let b = patched(batch(&[b"x"], Compression::None), |b| {
            put_i64(b, PRODUCER_ID_OFFSET, 42);
            put_i32(b, BASE_SEQUENCE_OFFSET, 0);
            put_i16(b, ATTRIBUTES_OFFSET, TRANSACTIONAL_MASK);
        });
        assert_eq!(check(b).unwrap()[0].header.producer_id, 42);
    }

    /// (what, request, status, words the message must hold)
    fn refused() -> Vec<(&'static str, Vec<u8>, Status, &'static str)> {
        let good = batch(&[b"one", b"two"], Compression::None);
        let mut bit_flip = good.clone();
        *bit_flip.last_mut().unwrap() ^= 1;
        let mut long_length = good.clone();
        put_i32(&mut long_length, BATCH_LENGTH_OFFSET, good.len() as i32);
        let mut bad_codec = good.clone();
        bad_codec[ATTRIBUTES_OFFSET + 1] |= 6;
        let bad_codec = patched(bad_codec, |_| {});
        vec![
            ("empty request", vec![], Status::InvalidArgument, "empty"),
            (
                "short header",
                good[..40].to_vec(),
                Status::Corruption,
                "truncated",
            ),
            (
                "cut batch",
                good[..good.len() - 1].to_vec(),
                Status::Corruption,
                "truncated",
            ),
            (
                "length past the end",
                long_length,
                Status::Corruption,
                "truncated",
            ),
            ("bit flip", bit_flip, Status::Corruption, "CRC"),
            (
                "magic 1",
                patched(good.clone(), |b| b[MAGIC_OFFSET] = 1),
                Status::InvalidArgument,
                "magic 1",
            ),
            (
                "control batch",
                patched(good.clone(), |b| {
                    put_i16(b, ATTRIBUTES_OFFSET, CONTROL_MASK)
                }),
                Status::InvalidArgument,
                "control",
            ),
            (
                "offset delta off",
                patched(good.clone(), |b| put_i32(b, LAST_OFFSET_DELTA_OFFSET, 5)),
                Status::InvalidArgument,
                "lastOffsetDelta 5",
            ),
            (
                "no records",
                patched(good.clone(), |b| {
                    put_i32(b, RECORD_COUNT_OFFSET, 0);
                    put_i32(b, LAST_OFFSET_DELTA_OFFSET, -1);
                }),
                Status::InvalidArgument,
                "record count 0",
            ),
            (
                "count says three",
                patched(good.clone(), |b| {
                    put_i32(b, RECORD_COUNT_OFFSET, 3);
                    put_i32(b, LAST_OFFSET_DELTA_OFFSET, 2);
                }),
                Status::Corruption,
                "",
            ),
            (
                "producer without sequence",
                patched(good.clone(), |b| put_i64(b, PRODUCER_ID_OFFSET, 7)),
                Status::InvalidArgument,
                "base sequence -1",
            ),
            (
                "transactional without producer",
                patched(good.clone(), |b| {
                    put_i16(b, ATTRIBUTES_OFFSET, TRANSACTIONAL_MASK)
                }),
                Status::InvalidArgument,
                "transactional",
            ),
            ("codec 6", bad_codec, Status::Corruption, "codec 6"),
        ]
    }

    #[test]
    fn bad_batches_are_refused_naming_the_batch_and_the_reason() {
        let first = batch(&[b"fine"], Compression::None);
        for (what, bad, status, words) in refused() {
            let mut request = if bad.is_empty() {
                vec![]
            } else {
                first.clone()
            };
            request.extend_from_slice(&bad);
            let err = check(request).unwrap_err();
            assert_eq!(err.status(), status, "{what}: {err}");
            let message = err.to_string();
            assert!(message.contains(words), "{what}: {message}");
            if !bad.is_empty() {
                assert!(message.contains("batch 1"), "{what}: {message}");
            }
        }
    }

    /// A one-record batch around `record` (its bytes after the length).
    fn hand_made(record: &[u8]) -> Vec<u8> {
        let mut b = batch(&[b""], Compression::None);
        b.truncate(BATCH_HEADER_LEN);
        b.push((record.len() * 2) as u8);
        b.extend_from_slice(record);
        let length = (b.len() - LOG_OVERHEAD) as i32;
        patched(b, |b| put_i32(b, BATCH_LENGTH_OFFSET, length))
    }

    #[test]
    fn records_that_would_not_read_back_are_refused() {
        let mut fine = vec![0, 0, 0, 0x01, 0x02, b'v', 0x02, 0x02, b'h', 0x01];
        check(hand_made(&fine)).unwrap();
        // The same record with a null `__mqs.tag` header, which reads fail on.
        fine.truncate(6);
        fine.extend_from_slice(&[0x02, 0x12]);
        fine.extend_from_slice(b"__mqs.tag");
        fine.push(0x01);
        let err = check(hand_made(&fine)).unwrap_err();
        assert_eq!(err.status(), Status::Corruption, "{err}");
        assert!(err.to_string().contains("batch 0"), "{err}");
    }

    #[test]
    fn inner_offset_deltas_must_count_from_zero() {
        // Two records whose offset deltas are 0 and 2 (lastOffsetDelta 1).
        let b = batch(&[b"r0", b"r1"], Compression::None);
        let header_len = BATCH_HEADER_LEN;
        // The second record starts after the first: length prefix, then
        // attributes, timestamp delta, offset delta (zigzag 1 = 0x02).
        let first_len = (b[header_len] >> 1) as usize + 1;
        let delta_at = header_len + first_len + 3;
        assert_eq!(b[delta_at], 0x02);
        let b = patched(b, |b| b[delta_at] = 0x04);
        let err = check(b).unwrap_err();
        assert_eq!(err.status(), Status::Corruption, "{err}");
        assert!(err.to_string().contains("offset delta 2"), "{err}");
    }

    #[test]
    fn limits_apply_to_batches_and_records() {
        let big = vec![9u8; 5000];
        let b = Bytes::from(batch(&[&big], Compression::Lz4));
        let tight = Limits {
            max_batch_bytes: b.len() - 1,
            ..LIMITS
        };
        let err = validate_producer_batches(&b, tight).unwrap_err();
        assert_eq!(err.status(), Status::RecordTooLarge);
        assert!(err.to_string().contains("batch 0"), "{err}");
        // A compressed batch small on the wire still holds a 5 KB record.
        let tight = Limits {
            max_record_bytes: 4096,
            ..LIMITS
        };
        let err = validate_producer_batches(&b, tight).unwrap_err();
        assert_eq!(err.status(), Status::RecordTooLarge, "{err}");
        assert!(err.to_string().contains("a record"), "{err}");
    }

    #[test]
    fn a_leaders_control_batch_is_a_replicas_but_never_a_producers() {
        let control = patched(batch(&[b"marker"], Compression::None), |b| {
            put_i16(b, ATTRIBUTES_OFFSET, CONTROL_MASK | TRANSACTIONAL_MASK);
            put_i64(b, PRODUCER_ID_OFFSET, 4);
            put_i32(b, BASE_SEQUENCE_OFFSET, -1);
        });
        let err = validate_batches(&control, LIMITS, Origin::Producer).unwrap_err();
        assert!(err.to_string().contains("control"), "{err}");
        let ok = validate_batches(&control, LIMITS, Origin::Replica).unwrap();
        assert!(ok[0].header.is_control());
        // Damage is refused whoever sends it.
        let mut damaged = control.clone();
        *damaged.last_mut().unwrap() ^= 1;
        assert!(validate_batches(&damaged, LIMITS, Origin::Replica).is_err());
    }

    #[test]
    fn a_decompression_bomb_is_refused_at_the_batch_limit() {
        let zeros = vec![0u8; 60_000];
        let values: Vec<&[u8]> = (0..20).map(|_| &zeros[..]).collect();
        let bomb = batch(&values, Compression::Gzip);
        assert!(bomb.len() < 20_000, "{} bytes", bomb.len());
        let tight = Limits {
            max_batch_bytes: 200_000,
            max_record_bytes: 1 << 20,
        };
        let err = validate_producer_batches(&bomb, tight).unwrap_err();
        assert!(err.to_string().contains("limit"), "{err}");
        validate_producer_batches(
            &bomb,
            Limits {
                max_batch_bytes: 2 << 20,
                ..tight
            },
        )
        .unwrap();
    }

    #[test]
    fn log_append_time_sets_the_max_timestamp_and_a_valid_crc() {
        let mut b = batch(&[b"a", b"b"], Compression::Lz4);
        format::set_log_append_time(&mut b, 1_800_000_000_000);
        let b = Bytes::from(b);
        let header = BatchHeader::parse(&b).unwrap();
        assert!(header.is_log_append_time());
        assert_eq!(header.max_timestamp, 1_800_000_000_000);
        let records = format::decode_batch(&b, true).unwrap();
        assert!(records.iter().all(|r| r.timestamp_ms == 1_800_000_000_000));
        validate_producer_batches(&b, LIMITS).unwrap();
    }

    proptest::proptest! {
        /// Whatever the damage, validation answers without panicking, and
        /// every batch it accepts decodes in full.
        #[test]
        fn accepted_batches_always_decode(
            flips in proptest::collection::vec((0usize..400, 0u8..8), 0..4),
            cut in 0usize..400,
            codec in 0usize..5,
        ) {
            let codec = ALL_CODECS[codec];
            proptest::prop_assume!(codec.is_available());
            let mut request = batch(&[b"alpha", b"beta", b"gamma"], codec);
            request.extend(batch(&[b"delta"], Compression::None));
            for (at, bit) in flips {
                let at = at % request.len();
                request[at] ^= 1 << bit;
            }
            request.truncate(request.len().saturating_sub(cut % 8));
            if let Ok(batches) = validate_producer_batches(&request, LIMITS) {
                for b in batches {
                    proptest::prop_assert_eq!(&b.bytes[..], &request[b.range.clone()]);
                    let records = format::decode_batch(&b.bytes, true).unwrap();
                    proptest::prop_assert_eq!(records.len() as i32, b.header.record_count);
                }
            }
        }
    }
}
