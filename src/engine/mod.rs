//! The engine contract. A storage engine creates shards; a shard stores one
//! dense offset sequence of Kafka RecordBatch v2 batches. The `Store` routes
//! each shard to the engine chosen when the shard was created.
//!
//! Engines validate nothing the Store already validated (shard names, record
//! and batch sizes, engine availability): they receive well-formed input.

#[cfg(any(
    feature = "rocksdb",
    feature = "mysql",
    feature = "redis",
    feature = "s3"
))]
pub(crate) mod database;
pub mod file;
#[cfg(feature = "s3")]
pub mod hybrid;
pub(crate) mod index;
#[cfg(feature = "journal")]
pub mod journal;
pub mod keyfilter;
pub mod memory;
#[cfg(feature = "mysql")]
pub mod mysql;
#[cfg(feature = "redis")]
pub mod redis;
pub mod registry;
#[cfg(feature = "rocksdb")]
pub mod rocksdb;
#[cfg(feature = "s3")]
pub mod s3;
pub(crate) mod scan;

use std::collections::HashSet;
use std::ops::Range;
use std::sync::Arc;

use serde::Serialize;

use crate::config::{EngineKind, ShardOptions, TimestampType};
use crate::format;
use crate::io::TransferPlan;
use crate::record::{Record, RecordView};
use crate::time::now_ms;
use crate::Result;

pub use keyfilter::KeyFilter;

/// Kafka's ListOffsets sentinels, accepted by `offset_for_timestamp`.
pub const TIMESTAMP_EARLIEST: i64 = -2;
pub const TIMESTAMP_LATEST: i64 = -1;

/// Every offset a shard can hold: `delete_where` over the whole shard.
pub const ALL_OFFSETS: Range<i64> = i64::MIN..i64::MAX;

/// Limits of one read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadLimits {
    /// At most this many records (at least 1 is enforced by the Store).
    pub max_records: usize,
    /// Stop once the records' key + value + header bytes reach this; the first
    /// record is returned even if it alone is larger, so a consumer always
    /// progresses (Kafka's rule).
    pub max_bytes: usize,
}

/// Records from a read plus the offset the next read should start at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadResult {
    pub records: Vec<RecordView>,
    /// One past the last offset examined: records skipped because they were
    /// deleted or expired are behind it too, so a consumer never re-reads them.
    pub next_offset: i64,
}

/// A snapshot of one shard's state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ShardInfo {
    pub name: String,
    pub engine: EngineKind,
    /// Low watermark: the smallest offset that may still be read.
    pub first_offset: i64,
    /// High watermark: the offset the next append receives.
    pub next_offset: i64,
    /// Records currently stored (retained and not deleted).
    pub records: u64,
    /// Bytes of stored batches.
    pub bytes: u64,
    pub options: ShardOptions,
}

/// A batch ready to be stored: one whole Kafka v2 batch, encoded from
/// records by `Shard::append` or sent by a producer and validated, whose
/// base offset the engine sets. Its CRC matches its bytes: the journal
/// derives its entry's CRC from it.
#[derive(Debug)]
pub struct NewBatch {
    pub bytes: Vec<u8>,
    pub records: u32,
    /// Offsets the batch spans, less one: `records - 1` but for a
    /// leader's compacted batch, whose records have gaps.
    pub last_offset_delta: i32,
    pub max_timestamp: i64,
    /// Hashes of its keys and tags when known without decoding; `None`
    /// leaves them to be learned at the first key or tag lookup.
    pub keys: Option<KeyFilter>,
}

impl NewBatch {
    /// `records` encoded with the shard's compression, timestamps of 0
    /// becoming `now_ms`.
    pub fn encode(records: &[Record<'_>], options: &ShardOptions, now_ms: i64) -> Result<NewBatch> {
        let encoded = format::encode_batch(records, options.compression, now_ms)?;
        let mut batch = NewBatch {
            records: encoded.record_count as u32,
            last_offset_delta: encoded.record_count - 1,
            max_timestamp: encoded.max_timestamp,
            bytes: encoded.bytes,
            keys: Some(KeyFilter::from_records(records)),
        };
        batch.stamp(options, now_ms);
        Ok(batch)
    }

    /// A batch as a producer or a leader sent it (validated), stored as
    /// it is; its key filter is learned at the first key lookup, so nothing
    /// is decoded here.
    pub fn from_sent(batch: format::validate::ProducerBatch) -> NewBatch {
        NewBatch {
            records: batch.header.record_count as u32,
            last_offset_delta: batch.header.last_offset_delta,
            max_timestamp: batch.header.max_timestamp,
            bytes: Vec::from(batch.bytes),
            keys: None,
        }
    }

    /// The batch's last offset once stored at `base_offset`.
    pub fn last_offset(&self, base_offset: i64) -> i64 {
        base_offset + i64::from(self.last_offset_delta)
    }

    /// Applies the shard's timestamp type: with `log_append_time` the
    /// batch's timestamps become the append time, as a Kafka broker sets
    /// them (the CRC is recomputed).
    pub fn stamp(&mut self, options: &ShardOptions, now_ms: i64) {
        if options.timestamp_type == TimestampType::LogAppendTime {
            format::set_log_append_time(&mut self.bytes, now_ms);
            self.max_timestamp = now_ms;
        }
    }
}

/// A shard found again when a store reopens: its name, options and handle.
pub type RecoveredShard = (String, ShardOptions, Arc<dyn Shard>);

/// A storage engine: a factory and owner of shards of one kind.
pub trait Engine: Send + Sync {
    fn kind(&self) -> EngineKind;

    /// Creates an empty shard. The Store guarantees the name is new.
    fn create_shard(&self, name: &str, options: &ShardOptions) -> Result<Arc<dyn Shard>>;

    /// Creates empty shards named `names` (new and distinct, the Store
    /// guarantees) with the same options, all or none: when one fails,
    /// those created before it are removed again. Engines whose creations
    /// can share one durable write (one log append and one sync for all)
    /// override it; this one creates them one by one.
    fn create_shards(&self, names: &[&str], options: &ShardOptions) -> Result<Vec<Arc<dyn Shard>>> {
        let mut created: Vec<Arc<dyn Shard>> = Vec::with_capacity(names.len());
        for name in names {
            match self.create_shard(name, options) {
                Ok(shard) => created.push(shard),
                Err(e) => {
                    for (name, shard) in names.iter().zip(&created) {
                        // Best effort: the error reported is the creation's.
                        let _ = self.remove_shard(name, shard);
                    }
                    return Err(e);
                }
            }
        }
        Ok(created)
    }

    /// Removes a shard and frees what it holds. Views and transfer plans
    /// already handed out stay valid.
    fn remove_shard(&self, name: &str, shard: &Arc<dyn Shard>) -> Result<()>;

    /// Flushes and releases everything; called once by `Store::close`.
    fn close(&self) -> Result<()>;

    /// Shards that survived from an earlier run of the store, with their
    /// names and options; called once by `Store::open`. Engines that keep
    /// nothing across a restart return none.
    fn recover(&self) -> Result<Vec<RecoveredShard>> {
        Ok(Vec::new())
    }
}

/// One shard: a dense sequence of offsets starting at 0, never reused.
pub trait Shard: Send + Sync {
    /// The engine the shard lives on.
    fn kind(&self) -> EngineKind;

    /// The shard's watermarks and sizes. May fail: an engine may have to
    /// ask a server that is unreachable, or finish retention work first.
    fn info(&self) -> Result<ShardInfo>;

    /// Applies age retention (`retention_ms`) as of `now_ms`, for a shard
    /// nobody uses: the store's retention timer calls it so that idle
    /// shards free their space. Size and record limits need no timer (only
    /// appends grow a shard, and they apply them).
    fn expire(&self, now_ms: i64) -> Result<()>;

    /// The options the shard was created with.
    fn options(&self) -> &ShardOptions;

    /// Stores `batches` at consecutive offsets, with no other append's
    /// batch between them, and returns the base offset of the first.
    /// Returns once all are as durable as the shard's mode requires, unless
    /// `pipelined`: then it may return before (a producer keeps several
    /// batches in flight) and `wait_durable` acknowledges them. Engines
    /// without a pipelined path ignore the flag.
    fn append_batches(&self, batches: Vec<NewBatch>, pipelined: bool) -> Result<i64>;

    /// Appends the records as one batch and returns the offset of the first.
    /// Returns once the shard's durability mode is satisfied.
    fn append(&self, records: &[Record<'_>]) -> Result<i64> {
        let batch = NewBatch::encode(records, self.options(), now_ms())?;
        self.append_batches(vec![batch], false)
    }

    /// Appends like `append` but may return before the batch is as durable
    /// as the shard's mode requires; `wait_durable` then acknowledges it.
    fn append_nowait(&self, records: &[Record<'_>]) -> Result<i64> {
        let batch = NewBatch::encode(records, self.options(), now_ms())?;
        self.append_batches(vec![batch], true)
    }

    /// Waits until the record at `offset`, and every earlier one, is as
    /// durable as the shard's mode requires. `offset` must have been
    /// appended (`< next_offset`); records deleted since count as done.
    fn wait_durable(&self, offset: i64) -> Result<()> {
        let info = self.info()?;
        scan::check_appended(&info.name, offset, info.next_offset)
    }

    /// Makes every batch the shard holds as durable as its mode requires,
    /// those a failed write left stored but unacknowledged included (the
    /// hybrid engine's cold tier, before local copies go).
    fn sync(&self) -> Result<()> {
        let info = self.info()?;
        match info.next_offset > info.first_offset {
            true => self.wait_durable(info.next_offset - 1),
            false => Ok(()),
        }
    }

    /// Reads records from `from` on. `from` must lie in
    /// `[first_offset, next_offset]`.
    fn read(&self, from: i64, limits: ReadLimits) -> Result<ReadResult>;

    /// Live records whose key equals one of `keys`, in offset order.
    fn read_by_keys(&self, keys: &[&[u8]], max_records: usize) -> Result<Vec<RecordView>>;

    /// Live records carrying `tag` with offset ≥ `from`, in offset order.
    fn read_by_tag(&self, tag: &[u8], from: i64, max_records: usize) -> Result<ReadResult>;

    /// The first offset whose record timestamp is ≥ `timestamp_ms`, or `None`
    /// when no stored record is that recent. `TIMESTAMP_EARLIEST` and
    /// `TIMESTAMP_LATEST` return the low and high watermarks.
    fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<i64>>;

    /// Moves the low watermark up to `offset` (clamped to the high watermark)
    /// and returns the new low watermark.
    fn delete_records_before(&self, offset: i64) -> Result<i64>;

    /// Deletes every record `matches` selects among the batches that hold
    /// offsets of `within` (the others are not looked at), rewriting each
    /// affected batch as Kafka's log compaction does (offsets keep their
    /// gaps); returns how many were deleted.
    fn delete_where(
        &self,
        within: Range<i64>,
        matches: &mut dyn FnMut(&RecordView) -> bool,
    ) -> Result<u64>;

    /// Deletes every record with one of `keys`; returns how many were deleted.
    fn delete_by_keys(&self, keys: &[&[u8]]) -> Result<u64> {
        let doomed: HashSet<&[u8]> = keys.iter().copied().collect();
        self.delete_where(ALL_OFFSETS, &mut |record| {
            record
                .key
                .as_ref()
                .is_some_and(|k| doomed.contains(k.as_ref()))
        })
    }

    /// Deletes the given offsets (absent ones are ignored); returns how many
    /// were deleted.
    fn delete_by_offsets(&self, offsets: &[i64]) -> Result<u64> {
        let (Some(&first), Some(&last)) = (offsets.iter().min(), offsets.iter().max()) else {
            return Ok(0);
        };
        let doomed: HashSet<i64> = offsets.iter().copied().collect();
        self.delete_where(first..last.saturating_add(1), &mut |record| {
            doomed.contains(&record.offset)
        })
    }

    /// Fixes the whole batches a transfer from `from` covers: at most
    /// `max_bytes`, but always at least one batch when any exists.
    fn plan_transfer(&self, from: i64, max_bytes: usize) -> Result<TransferPlan>;

    /// Cuts every batch at or after `offset` (a batch boundary within the
    /// watermarks): the next append gets `offset`. Durable as the shard's
    /// mode makes appends durable; a crash before that leaves the shard
    /// as it was, or (file engine) cut at a later batch boundary.
    fn truncate_to(&self, offset: i64) -> Result<()>;

    /// Engine-specific counters as JSON. May fail like `info`.
    fn stats(&self) -> Result<serde_json::Value>;

    /// Saves (`Some`) or forgets (`None`) a consumer group's committed
    /// offset of this shard in the engine's own storage, as durable as the
    /// shard's appends, and returns true; an engine without a place of its
    /// own returns false and the store keeps the offset in `groups.json`.
    /// The engine drops a shard's offsets with the shard.
    fn save_group_offset(&self, _group: &str, _offset: Option<i64>) -> Result<bool> {
        Ok(false)
    }

    /// The offsets `save_group_offset` saved, by group; the store reads
    /// them once, at open.
    fn saved_group_offsets(&self) -> Result<Vec<(String, i64)>> {
        Ok(Vec::new())
    }
}
