//! A shard's in-memory batch index, shared by the engines that keep one
//! small entry per stored batch (memory, journal, RocksDB): offsets,
//! timestamps and their running maximum, record and byte counts, key
//! filters, watermarks and retention. Generic over where a batch's bytes
//! live (`L`): a shared buffer, a position in a journal segment, a RocksDB
//! key. The policy (which batches retention drops, how a lookup by
//! timestamp starts) is decided here once; engines only store and fetch.

// Key filters and recovery's helpers serve the persistent engines, which
// the edge build leaves out but for the File engine (its own index).
#![cfg_attr(not(any(feature = "journal", feature = "rocksdb")), allow(dead_code))]

use std::collections::VecDeque;
use std::sync::OnceLock;

use bytes::Bytes;

use crate::config::ShardOptions;
use crate::engine::keyfilter::KeyFilter;
use crate::engine::scan::ScanBatch;
use crate::Result;

/// One stored batch.
pub struct BatchEntry<L> {
    pub base_offset: i64,
    pub last_offset: i64,
    /// Newest record timestamp in this batch (retention by age).
    pub max_timestamp: i64,
    /// Newest timestamp in this and every earlier batch (monotonic, so a
    /// timestamp lookup can binary-search it even when producers send
    /// timestamps out of order).
    pub running_max_timestamp: i64,
    /// Records physically present in the stored bytes.
    pub records: u32,
    /// Batch length in bytes.
    pub len: u32,
    /// Hashes of the batch's keys and tags: set at append or when loaded,
    /// computed on the first key or tag lookup otherwise (batches found
    /// again at open, or rewritten by a delete), so opening decodes no
    /// records.
    pub keys: OnceLock<KeyFilter>,
    /// Where the bytes are.
    pub loc: L,
}

impl<L> BatchEntry<L> {
    pub fn new(
        loc: L,
        len: usize,
        base_offset: i64,
        last_offset: i64,
        max_timestamp: i64,
        records: u32,
    ) -> BatchEntry<L> {
        BatchEntry {
            base_offset,
            last_offset,
            max_timestamp,
            running_max_timestamp: max_timestamp,
            records,
            len: len as u32,
            keys: OnceLock::new(),
            loc,
        }
    }

    /// The entry with the key filter its appender computed, when it has
    /// one; without, the filter is learned at the first key lookup.
    pub fn with_keys(self, keys: Option<KeyFilter>) -> BatchEntry<L> {
        if let Some(keys) = keys {
            let _ = self.keys.set(keys);
        }
        self
    }

    /// The batch as the shared scans want it.
    pub fn scan(&self, bytes: Bytes) -> ScanBatch {
        ScanBatch {
            bytes,
            last_offset: self.last_offset,
            max_timestamp: self.max_timestamp,
        }
    }

    /// For key and tag lookups, before fetching the bytes: `Some(false)`
    /// when the batch's filter rules out every hash of `wanted`, `None`
    /// when it has no filter yet (see `learn_filter`).
    pub fn may_match(&self, wanted: &[u32]) -> Option<bool> {
        self.keys.get().map(|filter| filter.may_contain_any(wanted))
    }

    /// Computes the missing filter from the fetched `bytes` and says
    /// whether the batch may hold a hash of `wanted`. A batch that does not
    /// decode cannot be ruled out: the scan then reports its error.
    pub fn learn_filter(&self, bytes: &Bytes, wanted: &[u32]) -> bool {
        match KeyFilter::from_batch(bytes) {
            Ok(filter) => {
                let hit = filter.may_contain_any(wanted);
                // A racing lookup may have set it first: same content.
                let _ = self.keys.set(filter);
                hit
            }
            Err(_) => true,
        }
    }
}

/// The batches of one shard and its watermarks.
pub struct BatchIndex<L> {
    pub batches: VecDeque<BatchEntry<L>>,
    pub low_watermark: i64,
    pub next_offset: i64,
    pub bytes: u64,
    pub records: u64,
    /// Batches left the index (retention, deletes) since the owner last
    /// cleared it: an engine that records its watermarks only now and then
    /// (the journal) must record them before the evidence is gone.
    pub low_dirty: bool,
}

impl<L> Default for BatchIndex<L> {
    fn default() -> Self {
        BatchIndex {
            batches: VecDeque::new(),
            low_watermark: 0,
            next_offset: 0,
            bytes: 0,
            records: 0,
            low_dirty: false,
        }
    }
}

/// Timestamps older than this are beyond the shard's age retention.
pub fn retention_cutoff(options: &ShardOptions, now: i64) -> Option<i64> {
    (options.retention_ms > 0).then(|| now.saturating_sub(options.retention_ms as i64))
}

/// What a shard holds: batches, records and bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Held {
    pub batches: u64,
    pub records: u64,
    pub bytes: u64,
}

/// The one retention rule every engine applies, oldest batch first:
/// while a limit is exceeded, size limits keep the newest batch (a batch
/// larger than the limit is still readable once) and age drops everything
/// too old. Engines with a batch index ask it through `BatchIndex`; the
/// file engine, which indexes segments sparsely, asks it batch by batch.
pub struct RetentionRule {
    cutoff: Option<i64>,
    max_bytes: u64,
    max_records: u64,
}

impl RetentionRule {
    /// The rule as of `now`; `None` when the shard has no retention limit.
    pub fn new(options: &ShardOptions, now: i64) -> Option<RetentionRule> {
        let rule = RetentionRule {
            cutoff: retention_cutoff(options, now),
            max_bytes: options.retention_bytes,
            max_records: options.retention_records,
        };
        (rule.cutoff.is_some() || rule.max_bytes > 0 || rule.max_records > 0).then_some(rule)
    }

    /// Whether the size limits alone drop the oldest batch of `held`.
    pub fn over_size(&self, held: Held) -> bool {
        let too_big = self.max_bytes > 0 && held.bytes > self.max_bytes;
        let too_many = self.max_records > 0 && held.records > self.max_records;
        held.batches > 1 && (too_big || too_many)
    }

    /// Whether the oldest batch might go: false means none goes, without
    /// looking at any batch.
    pub fn may_drop(&self, held: Held) -> bool {
        held.batches > 0 && (self.cutoff.is_some() || self.over_size(held))
    }

    /// Whether the oldest batch of `held`, whose newest record is
    /// `max_timestamp`, goes.
    pub fn drops(&self, held: Held, max_timestamp: i64) -> bool {
        let too_old = self.cutoff.is_some_and(|c| max_timestamp < c);
        held.batches > 0 && (too_old || self.over_size(held))
    }
}

impl<L> BatchIndex<L> {
    /// Index of the first batch that may hold `offset` or a later one.
    pub fn batch_index(&self, offset: i64) -> usize {
        self.batches.partition_point(|b| b.last_offset < offset)
    }

    /// Where the batch with `base_offset` is (or would go).
    pub fn position_of(&self, base_offset: i64) -> std::result::Result<usize, usize> {
        self.batches
            .binary_search_by_key(&base_offset, |b| b.base_offset)
    }

    /// Index of the first batch whose running maximum timestamp reaches
    /// `timestamp_ms`: no record before it is that recent.
    pub fn timestamp_start(&self, timestamp_ms: i64) -> usize {
        self.batches
            .partition_point(|b| b.running_max_timestamp < timestamp_ms)
    }

    pub fn push(&mut self, mut entry: BatchEntry<L>) {
        entry.running_max_timestamp = self.batches.back().map_or(entry.max_timestamp, |b| {
            b.running_max_timestamp.max(entry.max_timestamp)
        });
        self.bytes += entry.len as u64;
        self.records += entry.records as u64;
        self.next_offset = self.next_offset.max(entry.last_offset + 1);
        self.batches.push_back(entry);
    }

    /// Puts a batch at `index` (its position by base offset), for recovery
    /// that finds batches out of order; `recompute_running_max` after.
    pub fn insert(&mut self, index: usize, entry: BatchEntry<L>) {
        self.bytes += entry.len as u64;
        self.records += entry.records as u64;
        self.next_offset = self.next_offset.max(entry.last_offset + 1);
        self.batches.insert(index, entry);
    }

    /// Drops the oldest batch, raising the low watermark past it.
    pub fn pop_front(&mut self) -> Option<BatchEntry<L>> {
        let batch = self.batches.pop_front()?;
        self.bytes -= batch.len as u64;
        self.records -= batch.records as u64;
        self.low_watermark = self.low_watermark.max(batch.last_offset + 1);
        self.low_dirty = true;
        Some(batch)
    }

    /// Replaces batch `index` by a rewritten one (or removes it); returns
    /// the old one.
    pub fn replace(&mut self, index: usize, entry: Option<BatchEntry<L>>) -> BatchEntry<L> {
        let old = &self.batches[index];
        self.bytes -= old.len as u64;
        self.records -= old.records as u64;
        match entry {
            Some(mut entry) => {
                self.bytes += entry.len as u64;
                self.records += entry.records as u64;
                entry.running_max_timestamp = old.running_max_timestamp;
                std::mem::replace(&mut self.batches[index], entry)
            }
            None => {
                // An engine that records its next offset only now and then
                // may have had it in this batch alone.
                self.low_dirty = true;
                self.batches.remove(index).expect("index is in range")
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

    /// What the index holds.
    pub fn held(&self) -> Held {
        Held {
            batches: self.batches.len() as u64,
            records: self.records,
            bytes: self.bytes,
        }
    }

    /// How many batches, from the front, `RetentionRule` drops now.
    /// Decided without changing anything, so an engine can make the drop
    /// durable before applying it (`drop_front`).
    pub fn retention_drops(&self, options: &ShardOptions, now: i64) -> usize {
        self.retention_drops_with(options, now, Held::default())
    }

    /// How many of the batches held now `RetentionRule` drops once batches
    /// holding `incoming` are appended: an engine can then remove them in
    /// the append's own write. Batches the rule would drop among the
    /// incoming ones (too old already) are left to `retention_drops` after
    /// the append.
    pub fn retention_drops_with(&self, options: &ShardOptions, now: i64, incoming: Held) -> usize {
        let Some(rule) = RetentionRule::new(options, now) else {
            return 0;
        };
        let mut held = self.held();
        held.batches += incoming.batches;
        held.records += incoming.records;
        held.bytes += incoming.bytes;
        let mut dropped = 0;
        for front in &self.batches {
            if !rule.drops(held, front.max_timestamp) {
                break;
            }
            held.batches -= 1;
            held.bytes -= front.len as u64;
            held.records -= front.records as u64;
            dropped += 1;
        }
        dropped
    }

    /// Drops the `count` oldest batches.
    pub fn drop_front(&mut self, count: usize) {
        for _ in 0..count {
            self.pop_front();
        }
    }

    /// Applies retention (`retention_drops`); returns whether any went.
    pub fn enforce_retention(&mut self, options: &ShardOptions, now: i64) -> bool {
        let count = self.retention_drops(options, now);
        self.drop_front(count);
        count > 0
    }

    /// Whether age retention has something to drop: shards nobody appends
    /// to any more expire too, checked under a read lock first.
    pub fn is_stale(&self, options: &ShardOptions, now: i64) -> bool {
        let front = self.batches.front();
        retention_cutoff(options, now).is_some_and(|c| front.is_some_and(|b| b.max_timestamp < c))
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

    /// Checks that the tail from `offset` on may be cut (`truncate`):
    /// `offset` lies within the watermarks and inside no batch.
    pub fn check_truncation(&self, shard: &str, offset: i64) -> Result<()> {
        crate::engine::scan::check_truncation(
            shard,
            offset,
            self.low_watermark,
            self.next_offset,
            self.batches
                .get(self.batch_index(offset))
                .map(|b| (b.base_offset, b.last_offset)),
        )
    }

    /// Cuts every batch at or after `offset` (checked by
    /// `check_truncation`): the next append gets `offset`. Returns the
    /// batches cut, oldest first.
    pub fn truncate(&mut self, offset: i64) -> Vec<BatchEntry<L>> {
        let keep = self.batch_index(offset);
        let cut: Vec<BatchEntry<L>> = self.batches.drain(keep..).collect();
        for batch in &cut {
            self.bytes -= batch.len as u64;
            self.records -= batch.records as u64;
        }
        self.next_offset = offset;
        // A replay may hold less than the live shard did (its older
        // batches' segments gone, retention by age applied since): the
        // watermarks still end at the cut.
        self.low_watermark = self.low_watermark.min(offset);
        // Only the log's own record of the cut says where the shard ends.
        self.low_dirty = true;
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(base: i64, records: u32, len: usize, max_ts: i64) -> BatchEntry<()> {
        BatchEntry::new((), len, base, base + records as i64 - 1, max_ts, records)
    }

    fn index(batches: &[(u32, usize, i64)]) -> BatchIndex<()> {
        let mut index = BatchIndex::default();
        for &(records, len, ts) in batches {
            let base = index.next_offset;
            index.push(entry(base, records, len, ts));
        }
        index
    }

    fn options(bytes: u64, records: u64, ms: u64) -> ShardOptions {
        ShardOptions {
            retention_bytes: bytes,
            retention_records: records,
            retention_ms: ms,
            ..ShardOptions::default()
        }
    }

    #[test]
    fn truncation_cuts_whole_batches_from_a_boundary() {
        let mut idx = index(&[(10, 100, 1), (5, 50, 2), (5, 50, 3)]);
        idx.raise_low(3);
        assert!(
            idx.check_truncation("s", 12).is_err(),
            "inside the second batch"
        );
        assert!(
            idx.check_truncation("s", 2).is_err(),
            "below the low watermark"
        );
        assert!(
            idx.check_truncation("s", 21).is_err(),
            "past the next offset"
        );
        idx.check_truncation("s", 20).unwrap();
        idx.check_truncation("s", 10).unwrap();
        let cut = idx.truncate(10);
        assert_eq!(
            cut.iter().map(|b| b.base_offset).collect::<Vec<_>>(),
            [10, 15]
        );
        assert_eq!((idx.next_offset, idx.records, idx.bytes), (10, 10, 100));
        assert!(idx.low_dirty);
    }

    #[test]
    fn size_limits_keep_the_newest_batch_and_age_drops_all() {
        let idx = index(&[(2, 100, 10), (2, 100, 20), (2, 100, 30)]);
        assert_eq!(idx.retention_drops(&options(150, 0, 0), 0), 2);
        assert_eq!(idx.retention_drops(&options(0, 4, 0), 0), 1);
        assert_eq!(idx.retention_drops(&options(1, 1, 0), 0), 2, "newest stays");
        assert_eq!(idx.retention_drops(&options(0, 0, 100), 125), 2);
        assert_eq!(idx.retention_drops(&options(0, 0, 100), 1000), 3);
        assert_eq!(idx.retention_drops(&options(0, 0, 0), 1000), 0);
        assert!(idx.is_stale(&options(0, 0, 100), 115));
        assert!(!idx.is_stale(&options(0, 0, 100), 105));
        let mut idx = idx;
        assert!(idx.enforce_retention(&options(150, 0, 0), 0));
        assert_eq!((idx.low_watermark, idx.bytes, idx.records), (4, 100, 2));
        assert!(idx.low_dirty);
    }

    #[test]
    fn the_rule_reads_no_batch_when_no_limit_can_drop_one() {
        let held = |batches, records, bytes| Held {
            batches,
            records,
            bytes,
        };
        assert!(RetentionRule::new(&options(0, 0, 0), 0).is_none());
        let size = RetentionRule::new(&options(100, 0, 0), 0).unwrap();
        assert!(!size.may_drop(held(3, 3, 100)), "at the limit");
        assert!(size.may_drop(held(3, 3, 101)));
        assert!(!size.may_drop(held(1, 1, 1000)), "the newest batch stays");
        assert!(!size.may_drop(held(0, 0, 0)));
        let age = RetentionRule::new(&options(0, 0, 100), 1000).unwrap();
        assert!(age.may_drop(held(1, 1, 10)), "age needs the timestamp");
        assert!(age.drops(held(1, 1, 10), 899));
        assert!(!age.drops(held(1, 1, 10), 900));
    }

    #[test]
    fn running_max_orders_timestamp_lookups_and_survives_rewrites() {
        let mut idx = index(&[(1, 10, 50), (1, 10, 20), (1, 10, 70)]);
        let running: Vec<i64> = idx
            .batches
            .iter()
            .map(|b| b.running_max_timestamp)
            .collect();
        assert_eq!(running, [50, 50, 70]);
        assert_eq!(idx.timestamp_start(30), 0);
        assert_eq!(idx.timestamp_start(60), 2);
        let old = idx.replace(1, Some(entry(1, 1, 5, 20)));
        assert_eq!(old.len, 10);
        assert_eq!(idx.batches[1].running_max_timestamp, 50);
        assert_eq!(idx.bytes, 25);
        idx.replace(1, None);
        assert_eq!((idx.batches.len(), idx.records, idx.next_offset), (2, 2, 3));
        idx.raise_low(1);
        assert_eq!((idx.low_watermark, idx.batches.len()), (1, 1));
    }
}
