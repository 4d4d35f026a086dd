//! Record scans shared by every engine that keeps an ordered list of stored
//! batches: the read, key, tag and timestamp lookups walk batches the same
//! way whatever holds their bytes (shared memory buffers, mapped segments).
//! An engine only says which batches to walk, starting where.

use std::collections::HashSet;

use bytes::Bytes;

use crate::engine::{ReadLimits, ReadResult};
use crate::format;
use crate::record::RecordView;
use crate::{Error, Result};

/// What a scan needs of one stored batch.
pub(crate) struct ScanBatch {
    pub bytes: Bytes,
    pub last_offset: i64,
    pub max_timestamp: i64,
}

/// Checks that `offset` was appended to the shard (`wait_durable`'s
/// argument; offsets removed since still count).
pub(crate) fn check_appended(shard: &str, offset: i64, next_offset: i64) -> Result<()> {
    if (0..next_offset).contains(&offset) {
        return Ok(());
    }
    Err(Error::NotAppended {
        shard: shard.to_string(),
        offset,
        next: next_offset,
    })
}

/// Reads and transfers start in `[low_watermark, high_watermark]`.
pub(crate) fn check_range(
    shard: &str,
    offset: i64,
    low_watermark: i64,
    high_watermark: i64,
) -> Result<()> {
    if offset < low_watermark || offset > high_watermark {
        return Err(Error::OffsetOutOfRange {
            shard: shard.to_string(),
            offset,
            first: low_watermark,
            next: high_watermark,
        });
    }
    Ok(())
}

/// A shard's tail may be cut at `offset` (`Shard::truncate_to`) when it
/// lies within the watermarks and inside no batch: `containing` is the
/// (base, last) offsets of the first batch ending at or after it.
pub(crate) fn check_truncation(
    shard: &str,
    offset: i64,
    low_watermark: i64,
    next_offset: i64,
    containing: Option<(i64, i64)>,
) -> Result<()> {
    check_range(shard, offset, low_watermark, next_offset)?;
    match containing {
        Some((base, last)) if base < offset => Err(Error::InvalidArgument(format!(
            "shard '{shard}': offset {offset} is inside the batch of offsets {base}..={last}; \
             truncate to a batch boundary"
        ))),
        _ => Ok(()),
    }
}

/// Key + value + header bytes of a record: what `max_bytes` limits.
pub(crate) fn record_size(record: &RecordView) -> usize {
    record.key.as_ref().map_or(0, Bytes::len)
        + record.value.as_ref().map_or(0, Bytes::len)
        + record
            .headers
            .iter()
            .map(|h| h.key.len() + h.value.as_ref().map_or(0, Bytes::len))
            .sum::<usize>()
}

/// Records from `from` on, within `limits`, skipping expired ones.
/// `batches` starts at the batch holding `from`; `high_watermark` is the
/// shard's next offset (where a scan that ran out of batches continues).
pub(crate) fn read(
    batches: impl Iterator<Item = ScanBatch>,
    from: i64,
    limits: ReadLimits,
    now_ms: i64,
    high_watermark: i64,
) -> Result<ReadResult> {
    let mut records = Vec::new();
    let mut bytes = 0usize;
    let mut next_offset = from;
    let mut full = false;
    let mut batches = batches.into_iter();
    loop {
        // Full already: the next batch is not fetched (a RocksDB engine
        // would read it from the database for nothing).
        if records.len() >= limits.max_records {
            full = true;
            break;
        }
        let Some(batch) = batches.next() else {
            break;
        };
        format::for_each_record_from(&batch.bytes, false, from, |record| {
            if record.is_expired(now_ms) {
                next_offset = record.offset + 1;
                return true;
            }
            let size = record_size(&record);
            if records.len() >= limits.max_records
                || (!records.is_empty() && bytes + size > limits.max_bytes)
            {
                full = true;
                return false;
            }
            bytes += size;
            next_offset = record.offset + 1;
            records.push(record);
            true
        })?;
        if full {
            break;
        }
        // Deleted records leave gaps up to the batch's last offset.
        next_offset = next_offset.max(batch.last_offset + 1);
    }
    if !full {
        next_offset = high_watermark;
    }
    Ok(ReadResult {
        records,
        next_offset,
    })
}

/// Live records whose key is one of `keys`, in offset order.
pub(crate) fn read_by_keys(
    batches: impl Iterator<Item = ScanBatch>,
    keys: &[&[u8]],
    max_records: usize,
    now_ms: i64,
) -> Result<Vec<RecordView>> {
    let wanted: HashSet<&[u8]> = keys.iter().copied().collect();
    let mut records = Vec::new();
    for batch in batches {
        if records.len() >= max_records {
            break;
        }
        format::for_each_record(&batch.bytes, false, |record| {
            let hit = record
                .key
                .as_ref()
                .is_some_and(|k| wanted.contains(k.as_ref()));
            if hit && !record.is_expired(now_ms) {
                records.push(record);
            }
            records.len() < max_records
        })?;
    }
    Ok(records)
}

/// Live records carrying `tag` from `from` on; `batches` as for `read`.
pub(crate) fn read_by_tag(
    batches: impl Iterator<Item = ScanBatch>,
    tag: &[u8],
    from: i64,
    max_records: usize,
    now_ms: i64,
    high_watermark: i64,
) -> Result<ReadResult> {
    let mut records = Vec::new();
    let mut full = false;
    let mut next_offset = from;
    for batch in batches {
        format::for_each_record_from(&batch.bytes, false, from, |record| {
            if !record.has_tag(tag) || record.is_expired(now_ms) {
                return true;
            }
            if records.len() >= max_records {
                full = true;
                return false;
            }
            next_offset = record.offset + 1;
            records.push(record);
            true
        })?;
        if full {
            break;
        }
    }
    if !full {
        next_offset = high_watermark;
    }
    Ok(ReadResult {
        records,
        next_offset,
    })
}

/// The first offset whose timestamp is ≥ `timestamp_ms`. `batches` starts at
/// the first batch whose running maximum timestamp reaches it.
pub(crate) fn offset_for_timestamp(
    batches: impl Iterator<Item = ScanBatch>,
    timestamp_ms: i64,
) -> Result<Option<i64>> {
    for batch in batches {
        if batch.max_timestamp < timestamp_ms {
            continue;
        }
        let mut found = None;
        format::for_each_record(&batch.bytes, false, |record| {
            if record.timestamp_ms >= timestamp_ms {
                found = Some(record.offset);
                return false;
            }
            true
        })?;
        if found.is_some() {
            return Ok(found);
        }
    }
    Ok(None)
}

/// A stored batch after a delete, re-encoded as Kafka's log compaction
/// does (offsets keep their gaps).
pub(crate) struct Rewritten {
    /// The batch without the deleted records; `None` when none is left.
    pub bytes: Option<Bytes>,
    /// Records left in it.
    pub records: u32,
    /// Records the delete removed from it.
    pub deleted: u32,
}

/// `batch` without the records `matches` selects; `None` when it selects
/// none (the batch stays as it is).
pub(crate) fn rewrite_where(
    batch: &Bytes,
    matches: &mut dyn FnMut(&RecordView) -> bool,
) -> Result<Option<Rewritten>> {
    let mut doomed = HashSet::new();
    let mut present = 0u32;
    format::for_each_record(batch, false, |record| {
        present += 1;
        if matches(&record) {
            doomed.insert(record.offset);
        }
        true
    })?;
    if doomed.is_empty() {
        return Ok(None);
    }
    let bytes = format::retain_records(batch, |offset| !doomed.contains(&offset))?;
    let deleted = doomed.len() as u32;
    Ok(Some(Rewritten {
        bytes,
        records: present - deleted,
        deleted,
    }))
}

/// `batch` without its records below `low`: the batch a
/// `delete_records_before` cuts, so that transfers never send records
/// below the low watermark.
pub(crate) fn cut_below(batch: &Bytes, low: i64) -> Result<Rewritten> {
    let (mut present, mut kept) = (0u32, 0u32);
    format::for_each_record(batch, false, |record| {
        present += 1;
        kept += u32::from(record.offset >= low);
        true
    })?;
    Ok(Rewritten {
        bytes: format::retain_records(batch, |offset| offset >= low)?,
        records: kept,
        deleted: present - kept,
    })
}
