//! A shard's in-memory sparse index: one small entry per stored batch,
//! pointing at the batch's bytes in a journal segment.

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use super::segment::Segment;
use crate::config::ShardOptions;
use crate::engine::keyfilter::KeyFilter;
use crate::Result;

/// One stored batch. Holding it keeps the segment's live count up, so a
/// segment file is removed only once no index entry points into it.
pub struct IndexEntry {
    pub base_offset: i64,
    pub last_offset: i64,
    /// Newest record timestamp in this batch (retention by age).
    pub max_timestamp: i64,
    /// Newest timestamp in this and every earlier batch (monotonic, so a
    /// timestamp lookup can binary-search it).
    pub running_max_timestamp: i64,
    /// Records physically present in the stored bytes.
    pub records: u32,
    /// Batch length in bytes.
    pub len: u32,
    /// Position of the batch bytes (after the entry header) in the segment.
    pub pos: u64,
    pub segment: Arc<Segment>,
    /// Hashes of the batch's keys and tags: set at append and from the
    /// index checkpoint, computed on the first key or tag lookup for
    /// batches replayed from the journal (so replay decodes no records).
    pub keys: OnceLock<KeyFilter>,
}

impl IndexEntry {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        segment: Arc<Segment>,
        pos: u64,
        len: usize,
        base_offset: i64,
        last_offset: i64,
        max_timestamp: i64,
        records: u32,
    ) -> IndexEntry {
        segment.add_live();
        IndexEntry {
            base_offset,
            last_offset,
            max_timestamp,
            running_max_timestamp: max_timestamp,
            records,
            len: len as u32,
            pos,
            segment,
            keys: OnceLock::new(),
        }
    }

    /// Global journal position of the batch bytes.
    pub fn global_pos(&self) -> u64 {
        self.segment.base + self.pos
    }

    /// Zero-copy view of the batch (the caller made sure it is written).
    pub fn bytes(&self) -> Bytes {
        self.segment.bytes(self.pos, self.len as u64)
    }

    /// Global journal position just past the batch.
    pub fn end(&self) -> u64 {
        self.global_pos() + self.len as u64
    }
}

impl Drop for IndexEntry {
    fn drop(&mut self) {
        self.segment.sub_live();
    }
}

/// The state of one shard: its batches and watermarks.
#[derive(Default)]
pub struct ShardState {
    pub batches: VecDeque<IndexEntry>,
    pub low_watermark: i64,
    pub next_offset: i64,
    pub bytes: u64,
    pub records: u64,
    /// Segment holding the shard's latest checkpoint entry.
    pub anchor: u64,
    /// Global end of the newest entry this index points to (reads make sure
    /// the writer got this far before looking at the bytes).
    pub last_end: u64,
    /// Batches were dropped (by retention, which raises the low watermark,
    /// or by deletes) since the last checkpoint. Retention is not logged:
    /// replay recomputes it from the batches, which it cannot once their
    /// segment is removed; and a dropped newest batch was the only record of
    /// the next offset. So such a shard is checkpointed before any segment
    /// is removed.
    pub low_dirty: bool,
    /// The shard's deletion is logged: an index checkpoint leaves it out.
    pub deleted: bool,
    /// Global end of the newest entry logged for this shard (0: none since
    /// the journal opened). A call that finds its work already done by
    /// another (a delete below the watermark, nothing left to delete)
    /// waits for this before reporting the state it saw: that state may
    /// come from an entry still on its way to the disk.
    pub logged_end: u64,
}

impl ShardState {
    /// Index of the first batch that may hold `offset` or a later one.
    pub fn batch_index(&self, offset: i64) -> usize {
        self.batches.partition_point(|b| b.last_offset < offset)
    }

    pub fn position_of(&self, base_offset: i64) -> std::result::Result<usize, usize> {
        self.batches
            .binary_search_by_key(&base_offset, |b| b.base_offset)
    }

    pub fn push(&mut self, mut entry: IndexEntry) {
        entry.running_max_timestamp = self.batches.back().map_or(entry.max_timestamp, |b| {
            b.running_max_timestamp.max(entry.max_timestamp)
        });
        self.bytes += entry.len as u64;
        self.records += entry.records as u64;
        self.last_end = self.last_end.max(entry.end());
        self.next_offset = self.next_offset.max(entry.last_offset + 1);
        self.batches.push_back(entry);
    }

    /// Puts a batch recovered from a rewrite at `index` (its position by
    /// base offset) when the original's segment is gone.
    pub fn insert(&mut self, index: usize, entry: IndexEntry) {
        self.bytes += entry.len as u64;
        self.records += entry.records as u64;
        self.last_end = self.last_end.max(entry.end());
        self.next_offset = self.next_offset.max(entry.last_offset + 1);
        self.batches.insert(index, entry);
    }

    pub fn pop_front(&mut self) {
        if let Some(batch) = self.batches.pop_front() {
            self.bytes -= batch.len as u64;
            self.records -= batch.records as u64;
            self.low_watermark = self.low_watermark.max(batch.last_offset + 1);
            self.low_dirty = true;
        }
    }

    /// Replaces batch `index` by a rewritten one (or removes it).
    pub fn replace(&mut self, index: usize, entry: Option<IndexEntry>) {
        let old = &self.batches[index];
        self.bytes -= old.len as u64;
        self.records -= old.records as u64;
        match entry {
            Some(mut entry) => {
                self.bytes += entry.len as u64;
                self.records += entry.records as u64;
                self.last_end = self.last_end.max(entry.end());
                entry.running_max_timestamp = old.running_max_timestamp;
                self.batches[index] = entry;
            }
            None => {
                // Its removal is logged, but the entry may go with its
                // segment while the shard's next offset still depends on it.
                self.batches.remove(index);
                self.low_dirty = true;
            }
        }
    }

    /// Raises the low watermark to `low`, dropping batches wholly below it.
    pub fn raise_low(&mut self, low: i64) {
        while self.batches.front().is_some_and(|b| b.last_offset < low) {
            self.pop_front();
        }
        self.low_watermark = self.low_watermark.max(low);
    }

    /// Drops whole batches from the front while a retention limit is
    /// exceeded (the memory engine's rule: size limits keep the newest
    /// batch, age drops everything too old). Returns whether any went.
    pub fn enforce_retention(&mut self, options: &ShardOptions, now: i64) -> bool {
        let cutoff =
            (options.retention_ms > 0).then(|| now.saturating_sub(options.retention_ms as i64));
        let mut dropped = false;
        while let Some(front) = self.batches.front() {
            let too_old = cutoff.is_some_and(|c| front.max_timestamp < c);
            let keeps_newest = self.batches.len() > 1;
            let too_big = options.retention_bytes > 0 && self.bytes > options.retention_bytes;
            let too_many =
                options.retention_records > 0 && self.records > options.retention_records;
            if too_old || (keeps_newest && (too_big || too_many)) {
                self.pop_front();
                dropped = true;
            } else {
                break;
            }
        }
        dropped
    }

    /// Recomputes the running maxima (after recovery inserted out of order).
    pub fn recompute_running_max(&mut self) {
        let mut max = i64::MIN;
        for b in self.batches.iter_mut() {
            max = max.max(b.max_timestamp);
            b.running_max_timestamp = max;
        }
    }

    pub fn check_range(&self, shard: &str, offset: i64) -> Result<()> {
        crate::engine::scan::check_range(shard, offset, self.low_watermark, self.next_offset)
    }
}
