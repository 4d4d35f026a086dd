//! The Memory engine: the brief's ultra-low-latency engine, loss tolerated.
//!
//! Each batch is encoded once into a buffer that is then shared, never copied:
//! reads hand out `Bytes` slices of it and transfers write it straight from
//! memory. A shard is a deque of batches behind its own lock, so appends to
//! different shards run in parallel. Memory is bounded by per-shard retention
//! (age, bytes, records); whole batches are dropped from the front.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::RwLock;

use crate::config::{EngineKind, ShardOptions};
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

#[derive(Debug)]
struct StoredBatch {
    base_offset: i64,
    last_offset: i64,
    /// Newest record timestamp in this batch (retention by age).
    max_timestamp: i64,
    /// Newest timestamp in this and every earlier batch: monotonic, so a
    /// timestamp lookup can binary-search it even when producers send
    /// timestamps out of order.
    running_max_timestamp: i64,
    /// Records physically present (deletes re-encode the batch).
    records: u64,
    bytes: Bytes,
}

#[derive(Debug, Default)]
struct ShardState {
    batches: VecDeque<StoredBatch>,
    low_watermark: i64,
    next_offset: i64,
    bytes: u64,
    records: u64,
}

impl ShardState {
    /// Index of the first batch that may hold `offset` or a later one.
    fn batch_index(&self, offset: i64) -> usize {
        self.batches.partition_point(|b| b.last_offset < offset)
    }

    fn pop_front(&mut self) {
        if let Some(batch) = self.batches.pop_front() {
            self.bytes -= batch.bytes.len() as u64;
            self.records -= batch.records;
            self.low_watermark = self.low_watermark.max(batch.last_offset + 1);
        }
    }

    /// Replaces batch `index` by a re-encoded one (or removes it when empty).
    fn replace(&mut self, index: usize, bytes: Option<Bytes>, records: u64) {
        let batch = &mut self.batches[index];
        self.bytes -= batch.bytes.len() as u64;
        self.records -= batch.records;
        match bytes {
            Some(bytes) => {
                self.bytes += bytes.len() as u64;
                self.records += records;
                batch.bytes = bytes;
                batch.records = records;
            }
            None => {
                self.batches.remove(index);
            }
        }
    }

    fn check_range(&self, shard: &str, offset: i64) -> Result<()> {
        scan::check_range(shard, offset, self.low_watermark, self.next_offset)
    }
}

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

    fn retention_cutoff(&self, now: i64) -> Option<i64> {
        (self.options.retention_ms > 0)
            .then(|| now.saturating_sub(self.options.retention_ms as i64))
    }

    /// Drops whole batches from the front while a retention limit is
    /// exceeded. Size limits always keep the newest batch (a batch larger than
    /// the limit is still readable once); age drops everything too old.
    fn enforce_retention(&self, state: &mut ShardState, now: i64) {
        let cutoff = self.retention_cutoff(now);
        while let Some(front) = state.batches.front() {
            let too_old = cutoff.is_some_and(|c| front.max_timestamp < c);
            let keeps_newest = state.batches.len() > 1;
            let too_big =
                self.options.retention_bytes > 0 && state.bytes > self.options.retention_bytes;
            let too_many = self.options.retention_records > 0
                && state.records > self.options.retention_records;
            if too_old || (keeps_newest && (too_big || too_many)) {
                state.pop_front();
            } else {
                break;
            }
        }
    }

    /// Age retention also applies to shards nobody appends to any more.
    fn expire_idle(&self, now: i64) {
        let Some(cutoff) = self.retention_cutoff(now) else {
            return;
        };
        let stale = {
            let state = self.state.read();
            state
                .batches
                .front()
                .is_some_and(|b| b.max_timestamp < cutoff)
        };
        if stale {
            self.enforce_retention(&mut self.state.write(), now);
        }
    }

    /// Offsets of records in `batch` for which `matches` holds.
    fn matching_offsets(
        batch: &StoredBatch,
        mut matches: impl FnMut(&RecordView) -> bool,
    ) -> Result<Vec<i64>> {
        let mut offsets = Vec::new();
        format::for_each_record(&batch.bytes, false, |record| {
            if matches(&record) {
                offsets.push(record.offset);
            }
            true
        })?;
        Ok(offsets)
    }
}

fn scan_batch(batch: &StoredBatch) -> ScanBatch {
    ScanBatch {
        bytes: batch.bytes.clone(),
        last_offset: batch.last_offset,
        max_timestamp: batch.max_timestamp,
    }
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
        for batch in batches {
            // Only the offset is assigned under the lock (baseOffset lies
            // outside the CRC, so patching it is free).
            let mut buffer = batch.bytes;
            let base_offset = state.next_offset;
            format::set_base_offset(&mut buffer, base_offset);
            let running_max_timestamp = state.batches.back().map_or(batch.max_timestamp, |b| {
                b.running_max_timestamp.max(batch.max_timestamp)
            });
            let count = u64::from(batch.records);
            let len = buffer.len() as u64;
            state.batches.push_back(StoredBatch {
                base_offset,
                last_offset: base_offset + count as i64 - 1,
                max_timestamp: batch.max_timestamp,
                running_max_timestamp,
                records: count,
                bytes: Bytes::from(buffer),
            });
            state.next_offset += count as i64;
            state.bytes += len;
            state.records += count;
            records += count;
            bytes += len;
        }
        self.enforce_retention(&mut state, now);
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
        let start = state
            .batches
            .partition_point(|b| b.running_max_timestamp < timestamp_ms);
        scan::offset_for_timestamp(state.batches.range(start..).map(scan_batch), timestamp_ms)
    }

    fn delete_records_before(&self, offset: i64) -> Result<i64> {
        let mut state = self.state.write();
        let target = offset.min(state.next_offset);
        if target <= state.low_watermark {
            return Ok(state.low_watermark);
        }
        while state
            .batches
            .front()
            .is_some_and(|b| b.last_offset < target)
        {
            state.pop_front();
        }
        if let Some(front) = state.batches.front() {
            if front.base_offset < target {
                let kept_records = Self::matching_offsets(front, |r| r.offset >= target)?.len();
                let kept = format::retain_records(&front.bytes, |o| o >= target)?;
                state.replace(0, kept, kept_records as u64);
            }
        }
        state.low_watermark = target;
        Ok(target)
    }

    /// Deletes, batch by batch, the records `matches` selects; re-encodes each
    /// affected batch as Kafka's log compaction does (offsets keep their gaps).
    fn delete_where(&self, matches: &mut dyn FnMut(&RecordView) -> bool) -> Result<u64> {
        let mut state = self.state.write();
        let mut deleted = 0u64;
        let mut index = 0;
        while index < state.batches.len() {
            let batch = &state.batches[index];
            let doomed = Self::matching_offsets(batch, &mut *matches)?;
            if doomed.is_empty() {
                index += 1;
                continue;
            }
            let doomed: HashSet<i64> = doomed.into_iter().collect();
            let kept_records = batch.records - doomed.len() as u64;
            let kept = format::retain_records(&batch.bytes, |offset| !doomed.contains(&offset))?;
            deleted += doomed.len() as u64;
            let removed = kept.is_none();
            state.replace(index, kept, kept_records);
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
            let len = batch.bytes.len();
            if !chunks.is_empty() && total + len > max_bytes {
                next_offset = batch.base_offset;
                break;
            }
            debug_assert_eq!(
                BatchHeader::parse(&batch.bytes).map(|h| h.base_offset).ok(),
                Some(batch.base_offset)
            );
            total += len;
            chunks.push(TransferChunk::Memory(batch.bytes.clone()));
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
