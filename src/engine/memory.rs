//! The Memory engine: the brief's ultra-low-latency engine, loss tolerated.
//!
//! Each batch is encoded once into a buffer that is then shared, never copied:
//! reads hand out `Bytes` slices of it and transfers write it straight from
//! memory. A shard is a deque of batches behind its own lock, so appends to
//! different shards run in parallel. Memory is bounded by per-shard retention
//! (age, bytes, records); whole batches are dropped from the front.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::RwLock;

use crate::config::{EngineKind, ShardOptions};
use crate::engine::index::{BatchEntry, BatchIndex};
use crate::engine::scan::{self, ScanBatch};
use crate::engine::{
    Engine, NewBatch, ReadLimits, ReadResult, Shard, ShardInfo, TIMESTAMP_EARLIEST,
    TIMESTAMP_LATEST,
};
use crate::format::{self, BatchHeader};
use crate::io::{TransferChunk, TransferPlan};
use crate::record::RecordView;
use crate::time::now_ms;
use crate::Result;

/// Creates memory shards. Holds no state of its own: shards own their data.
#[derive(Debug, Default)]
pub struct MemoryEngine;

impl Engine for MemoryEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Memory
    }

    fn create_shard(&self, name: &str, options: &ShardOptions) -> Result<Arc<dyn Shard>> {
        // The registry refused durabilities it cannot honour.
        Ok(Arc::new(MemoryShard::new(name, options.clone())))
    }

    fn remove_shard(&self, _name: &str, _shard: &Arc<dyn Shard>) -> Result<()> {
        // The shard's batches are freed when the last view or plan referring
        // to them is dropped.
        Ok(())
    }

    fn close(&self) -> Result<()> {
        Ok(())
    }
}

/// A stored batch: its bytes are the shared buffer itself.
type StoredBatch = BatchEntry<Bytes>;

/// The memory engine's state of a shard: the shared batch index.
type ShardState = BatchIndex<Bytes>;

/// One memory shard.
pub struct MemoryShard {
    name: String,
    options: ShardOptions,
    state: RwLock<ShardState>,
    appended_records: AtomicU64,
    appended_bytes: AtomicU64,
    read_records: AtomicU64,
}

impl MemoryShard {
    fn new(name: &str, options: ShardOptions) -> Self {
        MemoryShard {
            name: name.to_string(),
            options,
            state: RwLock::new(ShardState::default()),
            appended_records: AtomicU64::new(0),
            appended_bytes: AtomicU64::new(0),
            read_records: AtomicU64::new(0),
        }
    }

    /// Age retention also applies to shards nobody appends to any more.
    fn expire_idle(&self, now: i64) {
        if self.state.read().is_stale(&self.options, now) {
            self.state.write().enforce_retention(&self.options, now);
        }
    }
}

fn scan_batch(batch: &StoredBatch) -> ScanBatch {
    batch.scan(batch.loc.clone())
}

/// The entry of `batch` rewritten by a delete (`None`: nothing left).
fn rewritten_entry(batch: &StoredBatch, bytes: Option<Bytes>, records: u32) -> Option<StoredBatch> {
    bytes.map(|bytes| {
        let len = bytes.len();
        BatchEntry::new(
            bytes,
            len,
            batch.base_offset,
            batch.last_offset,
            batch.max_timestamp,
            records,
        )
    })
}

impl Shard for MemoryShard {
    fn kind(&self) -> EngineKind {
        EngineKind::Memory
    }

    fn expire(&self, now_ms: i64) -> Result<()> {
        self.expire_idle(now_ms);
        Ok(())
    }

    fn info(&self) -> Result<ShardInfo> {
        self.expire_idle(now_ms());
        let state = self.state.read();
        Ok(ShardInfo {
            name: self.name.clone(),
            engine: EngineKind::Memory,
            first_offset: state.low_watermark,
            next_offset: state.next_offset,
            records: state.records,
            bytes: state.bytes,
            options: self.options.clone(),
        })
    }

    fn options(&self) -> &ShardOptions {
        &self.options
    }

    fn append_batches(&self, batches: Vec<NewBatch>, _pipelined: bool) -> Result<i64> {
        let now = now_ms();
        let mut state = self.state.write();
        let first_offset = state.next_offset;
        let (mut records, mut bytes) = (0, 0);
        for mut batch in batches {
            // Only the offset is assigned under the lock (baseOffset lies
            // outside the CRC, so patching it is free).
            let mut buffer = std::mem::take(&mut batch.bytes);
            let base_offset = state.next_offset;
            format::set_base_offset(&mut buffer, base_offset);
            let len = buffer.len();
            let entry = BatchEntry::new(
                Bytes::from(buffer),
                len,
                base_offset,
                batch.last_offset(base_offset),
                batch.max_timestamp,
                batch.records,
            )
            .with_keys(batch.keys);
            state.push(entry);
            records += u64::from(batch.records);
            bytes += len as u64;
        }
        state.enforce_retention(&self.options, now);
        drop(state);

        self.appended_records.fetch_add(records, Ordering::Relaxed);
        self.appended_bytes.fetch_add(bytes, Ordering::Relaxed);
        Ok(first_offset)
    }

    fn read(&self, from: i64, limits: ReadLimits) -> Result<ReadResult> {
        let now = now_ms();
        self.expire_idle(now);
        let state = self.state.read();
        state.check_range(&self.name, from)?;
        let batches = state
            .batches
            .range(state.batch_index(from)..)
            .map(scan_batch);
        let result = scan::read(batches, from, limits, now, state.next_offset)?;
        drop(state);
        self.read_records
            .fetch_add(result.records.len() as u64, Ordering::Relaxed);
        Ok(result)
    }

    fn read_by_keys(&self, keys: &[&[u8]], max_records: usize) -> Result<Vec<RecordView>> {
        let now = now_ms();
        self.expire_idle(now);
        let state = self.state.read();
        scan::read_by_keys(state.batches.iter().map(scan_batch), keys, max_records, now)
    }

    fn read_by_tag(&self, tag: &[u8], from: i64, max_records: usize) -> Result<ReadResult> {
        let now = now_ms();
        self.expire_idle(now);
        let state = self.state.read();
        state.check_range(&self.name, from)?;
        let batches = state
            .batches
            .range(state.batch_index(from)..)
            .map(scan_batch);
        scan::read_by_tag(batches, tag, from, max_records, now, state.next_offset)
    }

    fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<i64>> {
        self.expire_idle(now_ms());
        let state = self.state.read();
        match timestamp_ms {
            TIMESTAMP_EARLIEST => return Ok(Some(state.low_watermark)),
            TIMESTAMP_LATEST => return Ok(Some(state.next_offset)),
            _ => {}
        }
        let start = state.timestamp_start(timestamp_ms);
        scan::offset_for_timestamp(state.batches.range(start..).map(scan_batch), timestamp_ms)
    }

    fn delete_records_before(&self, offset: i64) -> Result<i64> {
        let mut state = self.state.write();
        let target = offset.min(state.next_offset);
        if target <= state.low_watermark {
            return Ok(state.low_watermark);
        }
        // Worked out first: a batch that fails to decode changes nothing.
        let straddling = match state.batches.get(state.batch_index(target)) {
            Some(b) if b.base_offset < target => Some(scan::cut_below(&b.loc, target)?),
            _ => None,
        };
        state.raise_low(target);
        if let Some(cut) = straddling {
            let replacement = rewritten_entry(&state.batches[0], cut.bytes, cut.records);
            state.replace(0, replacement);
        }
        Ok(target)
    }

    fn truncate_to(&self, offset: i64) -> Result<()> {
        let mut state = self.state.write();
        state.check_truncation(&self.name, offset)?;
        state.truncate(offset);
        Ok(())
    }

    /// Deletes, batch by batch, the records `matches` selects; re-encodes each
    /// affected batch as Kafka's log compaction does (offsets keep their gaps).
    fn delete_where(
        &self,
        within: Range<i64>,
        matches: &mut dyn FnMut(&RecordView) -> bool,
    ) -> Result<u64> {
        let mut state = self.state.write();
        let mut deleted = 0u64;
        let mut index = state.batch_index(within.start);
        while index < state.batches.len() && state.batches[index].base_offset < within.end {
            let batch = &state.batches[index];
            let Some(rewritten) = scan::rewrite_where(&batch.loc, matches)? else {
                index += 1;
                continue;
            };
            deleted += rewritten.deleted as u64;
            let replacement = rewritten_entry(batch, rewritten.bytes, rewritten.records);
            let removed = replacement.is_none();
            state.replace(index, replacement);
            if !removed {
                index += 1;
            }
        }
        Ok(deleted)
    }

    fn plan_transfer(&self, from: i64, max_bytes: usize) -> Result<TransferPlan> {
        self.expire_idle(now_ms());
        let state = self.state.read();
        state.check_range(&self.name, from)?;
        let mut chunks = Vec::new();
        let mut total = 0usize;
        let mut next_offset = state.next_offset;
        for batch in state.batches.range(state.batch_index(from)..) {
            let len = batch.len as usize;
            if !chunks.is_empty() && total + len > max_bytes {
                next_offset = batch.base_offset;
                break;
            }
            debug_assert_eq!(
                BatchHeader::parse(&batch.loc).map(|h| h.base_offset).ok(),
                Some(batch.base_offset)
            );
            total += len;
            chunks.push(TransferChunk::Memory(batch.loc.clone()));
        }
        Ok(TransferPlan::new(chunks, next_offset))
    }

    fn stats(&self) -> Result<serde_json::Value> {
        let state = self.state.read();
        Ok(serde_json::json!({
            "batches": state.batches.len(),
            "appended_records": self.appended_records.load(Ordering::Relaxed),
            "appended_bytes": self.appended_bytes.load(Ordering::Relaxed),
            "read_records": self.read_records.load(Ordering::Relaxed),
        }))
    }
}
