//! Log compaction (`cleanup_policy = "compact"`): keeps the newest record
//! of each key, as Kafka's cleaner does, for every engine at once. It is a
//! client of the `Shard` contract only: it reads batches as a transfer
//! would and removes records with `delete_where`, so offsets keep their
//! gaps and every engine's read paths already handle them.
//!
//! A pass has two phases, resumable across the timer's ticks so that each
//! tick reads at most its I/O budget:
//! - **map**: the dirty part (from where the last pass ended up to the
//!   cleanable horizon) is read and the newest offset of each key noted;
//! - **sweep**: the shard is read from its low watermark up to the end of
//!   the map, and every record whose key has a newer offset in the map is
//!   deleted, as are tombstones older than `delete_retention_ms`.
//!
//! The horizon stops before the shard's newest batch and before the first
//! batch holding a record newer than `min_compaction_lag_ms`; nothing at or
//! after it is touched. Unlike Kafka's cleaner it does not wait for a
//! segment to roll: every engine rewrites batches under the shard's lock,
//! the File engine's active segment included, so a compacted shard smaller
//! than one segment is compacted too (its newest batch always stays).
//!
//! A producer's last batch is kept whole: rebuilding the producers' state
//! from the log needs it (Kafka keeps its header only).

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::atomic::AtomicU64;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::config::ShardOptions;
use crate::engine::Shard;
use crate::format::{self, BatchHeader};
use crate::record::RecordView;
use crate::Result;

/// Most batch bytes read per transfer while compacting.
const READ_BYTES: usize = 1 << 20;

/// A shard is cleaned again once this share of its bytes is new since the
/// last pass (Kafka's `min.cleanable.dirty.ratio` default), so that a busy
/// shard is not swept whole at every tick.
const MIN_DIRTY_RATIO: f64 = 0.5;

/// Key bytes the map of one pass may hold; a pass whose dirty part has
/// more distinct keys cleans up to where the map filled, the next pass
/// goes on from there.
pub(crate) const MAP_KEY_BYTES: usize = 64 << 20;

/// What one call of `ShardCleaner::run` did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompactionReport {
    /// Records removed.
    pub removed: u64,
    /// Batch bytes read.
    pub bytes_read: u64,
    /// Whether more is left to clean: a pass whose budget ran out, or
    /// whose map could not hold every key up to the cleanable end.
    pub pending: bool,
}

impl CompactionReport {
    /// Adds what a further run did.
    fn add(&mut self, more: CompactionReport) {
        self.removed += more.removed;
        self.bytes_read += more.bytes_read;
        self.pending = more.pending;
    }
}

/// One shard's cleaner: where the last pass ended and the pass under way.
#[derive(Default)]
pub(crate) struct ShardCleaner {
    state: Mutex<CleanerState>,
    /// Bytes one timer visit may read.
    pub budget: AtomicU64,
}

#[derive(Default)]
struct CleanerState {
    /// Every record below this was swept with a map that covered it.
    cleaned_to: i64,
    /// When the oldest tombstone kept by the last sweep may go.
    tombstone_due_ms: Option<i64>,
    /// The shard's bytes when the last pass ended.
    clean_bytes: u64,
    /// The last pass's map filled (or its budget ran out) before the
    /// cleanable end: the next pass goes on at once.
    backlog: bool,
    pass: Option<Pass>,
    removed_total: u64,
    read_total: u64,
    passes: u64,
}

impl CleanerState {
    /// A new pass, when one is worth it: enough of the shard is new since
    /// the last one (any of it when `forced`), or a kept tombstone is due.
    fn start_pass(
        &self,
        shard: &dyn Shard,
        now_ms: i64,
        forced: bool,
        budget: u64,
        report: &mut CompactionReport,
    ) -> Result<Option<Pass>> {
        let info = shard.info()?;
        let from = self.cleaned_to.max(info.first_offset);
        let tombstone_due = self.tombstone_due_ms.is_some_and(|due| due <= now_ms);
        let dirty_bytes = info.bytes.saturating_sub(self.clean_bytes);
        let dirty_enough = if forced || self.passes == 0 || self.backlog {
            from < info.next_offset
        } else {
            dirty_bytes as f64 >= MIN_DIRTY_RATIO * info.bytes as f64 && dirty_bytes > 0
        };
        if !dirty_enough && !tombstone_due {
            return Ok(None);
        }
        let options = shard.options();
        let pass = map_dirty(
            shard,
            options,
            from,
            info.next_offset,
            now_ms,
            budget,
            report,
        )?;
        if pass.end <= info.first_offset && !tombstone_due {
            // Nothing cleanable yet (the lag, or only the newest batch).
            return Ok(None);
        }
        Ok(Some(Pass {
            swept_to: info.first_offset,
            ..pass
        }))
    }
}

/// A pass under way: its map of newest offsets by key, and how far its
/// sweep got.
struct Pass {
    newest: HashMap<Box<[u8]>, i64>,
    /// The map covers the dirty offsets up to here; the sweep stops here.
    end: i64,
    swept_to: i64,
    /// When the oldest tombstone the sweep kept may go.
    tombstone_due_ms: Option<i64>,
    /// The map got to the cleanable end (not stopped by its size or the
    /// budget).
    reached_horizon: bool,
}

/// Stored batches, as they are read for compaction.
struct StoredBatch {
    header: BatchHeader,
    bytes: Bytes,
}

impl StoredBatch {
    fn base(&self) -> i64 {
        self.header.base_offset
    }
}

/// The batches of `shard` from the one holding `from`, at most `READ_BYTES`
/// or what is left of the budget (but at least one when any is left), and
/// where the next read goes.
fn read_batches(
    shard: &dyn Shard,
    from: i64,
    budget: u64,
    report: &CompactionReport,
) -> Result<(Vec<StoredBatch>, i64)> {
    let room = budget
        .saturating_sub(report.bytes_read)
        .min(READ_BYTES as u64);
    let plan = shard.plan_transfer(from, room as usize)?;
    let bytes = Bytes::from(plan.to_vec()?);
    let batches = format::split_batches(&bytes)?
        .into_iter()
        .map(|bytes| {
            let header = BatchHeader::parse(&bytes)?;
            Ok(StoredBatch { header, bytes })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((batches, plan.next_offset()))
}

impl ShardCleaner {
    /// Runs the cleaner on `shard` until the pass under way (or a new one,
    /// when enough is dirty or a tombstone is due) is done or `budget`
    /// bytes were read. `None` is a forced pass without limit: it starts
    /// whenever anything is dirty. `protected` gives the base offsets of
    /// the batches to keep whole; it is asked once the pass's map is made,
    /// so that every batch it does not know of lies beyond the map.
    pub fn run(
        &self,
        shard: &dyn Shard,
        protected: &dyn Fn() -> Result<HashSet<i64>>,
        now_ms: i64,
        budget: Option<u64>,
    ) -> Result<CompactionReport> {
        let mut state = self.state.lock();
        let mut report = CompactionReport::default();
        let forced = budget.is_none();
        let budget = budget.unwrap_or(u64::MAX);
        if state.pass.is_none() {
            let Some(pass) = state.start_pass(shard, now_ms, forced, budget, &mut report)? else {
                return Ok(report);
            };
            state.pass = Some(pass);
        }
        let options = shard.options().clone();
        let protected = protected()?;
        let state = &mut *state;
        let pass = state.pass.as_mut().expect("a pass is under way");
        while pass.swept_to < pass.end && report.bytes_read < budget {
            let from = pass.swept_to.max(shard.info()?.first_offset);
            let (batches, next) = read_batches(shard, from, budget, &report)?;
            if next <= from || batches.is_empty() {
                pass.swept_to = pass.end;
                break;
            }
            let doomed = sweep(&batches, pass, &protected, &options, now_ms)?;
            report.bytes_read += batches.iter().map(|b| b.bytes.len() as u64).sum::<u64>();
            let range = batches[0].base()..next.min(pass.end);
            report.removed += delete_offsets(shard, range, &doomed)?;
            pass.swept_to = next;
        }
        state.removed_total += report.removed;
        state.read_total += report.bytes_read;
        let swept = pass.swept_to >= pass.end;
        report.pending = !swept || !pass.reached_horizon;
        if swept {
            state.cleaned_to = pass.end;
            state.tombstone_due_ms = pass.tombstone_due_ms;
            state.backlog = !pass.reached_horizon;
            state.clean_bytes = shard.info()?.bytes;
            state.pass = None;
            state.passes += 1;
        }
        Ok(report)
    }

    /// Forced passes until nothing is left to clean (a pass's map may
    /// fill before the cleanable end).
    pub fn run_to_end(
        &self,
        shard: &dyn Shard,
        protected: &dyn Fn() -> Result<HashSet<i64>>,
        now_ms: i64,
    ) -> Result<CompactionReport> {
        let mut report = self.run(shard, protected, now_ms, None)?;
        while report.pending {
            report.add(self.run(shard, protected, now_ms, None)?);
        }
        Ok(report)
    }

    /// Runs `cut`, a truncation of the shard at `offset`, with no pass
    /// step in progress (a sweep must not delete by a map naming offsets
    /// the cut removed), then forgets the pass under way and what was
    /// cleaned at or after `offset`.
    pub fn truncate_with(&self, offset: i64, cut: impl FnOnce() -> Result<()>) -> Result<()> {
        let mut state = self.state.lock();
        let result = cut();
        state.pass = None;
        state.cleaned_to = state.cleaned_to.min(offset);
        state.tombstone_due_ms = None;
        result
    }

    pub fn stats(&self) -> serde_json::Value {
        let state = self.state.lock();
        serde_json::json!({
            "cleaned_to": state.cleaned_to,
            "passes": state.passes,
            "pass_pending": state.pass.is_some(),
            "removed_records": state.removed_total,
            "read_bytes": state.read_total,
        })
    }
}

/// Reads the dirty batches from `from` up to the cleanable horizon and maps
/// each key to its newest offset there.
fn map_dirty(
    shard: &dyn Shard,
    options: &ShardOptions,
    from: i64,
    next_offset: i64,
    now_ms: i64,
    budget: u64,
    report: &mut CompactionReport,
) -> Result<Pass> {
    let lag_cutoff = now_ms.saturating_sub(options.min_compaction_lag_ms as i64);
    let mut newest: HashMap<Box<[u8]>, i64> = HashMap::new();
    let mut key_bytes = 0usize;
    let mut at = from;
    let mut reached_horizon = true;
    'read: while at < next_offset {
        // Retention may have moved the low watermark meanwhile.
        at = at.max(shard.info()?.first_offset);
        let (batches, next) = read_batches(shard, at, budget, report)?;
        if next <= at || batches.is_empty() {
            break;
        }
        for batch in &batches {
            let newest_batch = batch.header.next_offset() >= next_offset;
            let full = key_bytes >= MAP_KEY_BYTES || (report.bytes_read >= budget && at > from);
            if newest_batch || batch.header.max_timestamp > lag_cutoff || full {
                reached_horizon = !full;
                at = batch.base().max(at);
                break 'read;
            }
            report.bytes_read += batch.bytes.len() as u64;
            format::for_each_record(&batch.bytes, false, |record| {
                if let Some(key) = record.key {
                    let fresh = newest.insert(Box::from(key.as_ref()), record.offset);
                    if fresh.is_none() {
                        key_bytes += key.len();
                    }
                }
                true
            })?;
            at = batch.header.next_offset();
        }
        at = at.max(next);
    }
    Ok(Pass {
        newest,
        end: at.min(next_offset),
        swept_to: from,
        tombstone_due_ms: None,
        reached_horizon,
    })
}

/// The offsets of `batches` (below the pass's end) the pass removes:
/// records with a newer offset for their key, and tombstones older than
/// `delete_retention_ms`. The pass learns when the oldest tombstone it
/// keeps becomes due.
fn sweep(
    batches: &[StoredBatch],
    pass: &mut Pass,
    protected: &HashSet<i64>,
    options: &ShardOptions,
    now_ms: i64,
) -> Result<Vec<i64>> {
    let tombstone_cutoff = now_ms.saturating_sub(options.delete_retention_ms as i64);
    let mut doomed = Vec::new();
    for batch in batches {
        if batch.base() >= pass.end {
            break;
        }
        if protected.contains(&batch.base()) {
            continue;
        }
        format::for_each_record(&batch.bytes, false, |record| {
            if record.offset >= pass.end {
                return false;
            }
            if removable(&record, &pass.newest, tombstone_cutoff) {
                doomed.push(record.offset);
            } else if record.key.is_some() && record.value.is_none() {
                let due = record
                    .timestamp_ms
                    .saturating_add(options.delete_retention_ms as i64);
                pass.tombstone_due_ms = Some(pass.tombstone_due_ms.map_or(due, |d| d.min(due)));
            }
            true
        })?;
    }
    Ok(doomed)
}

fn removable(record: &RecordView, newest: &HashMap<Box<[u8]>, i64>, tombstone_cutoff: i64) -> bool {
    let Some(key) = &record.key else {
        return false;
    };
    let superseded = newest
        .get(key.as_ref())
        .is_some_and(|&newest| newest > record.offset);
    superseded || (record.value.is_none() && record.timestamp_ms < tombstone_cutoff)
}

/// Deletes `offsets` (sorted, within `range`) from `shard`.
fn delete_offsets(shard: &dyn Shard, range: Range<i64>, offsets: &[i64]) -> Result<u64> {
    if offsets.is_empty() {
        return Ok(0);
    }
    let doomed: HashSet<i64> = offsets.iter().copied().collect();
    shard.delete_where(range, &mut |record| doomed.contains(&record.offset))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::{CleanupPolicy, Durability, EngineKind};
    use crate::engine::memory::MemoryEngine;
    use crate::engine::{Engine, ReadLimits};
    use crate::record::Record;

    const OLD: i64 = 1_000;
    const NOW: i64 = 10_000_000;

    fn shard() -> Arc<dyn Shard> {
        let options = ShardOptions {
            engine: EngineKind::Memory,
            durability: Durability::None,
            cleanup_policy: CleanupPolicy::Compact,
            ..ShardOptions::default()
        };
        MemoryEngine.create_shard("c", &options).unwrap()
    }

    /// `count` single-record batches cycling over `keys` keys, then one
    /// batch of another key (the newest batch, never cleaned).
    fn fill(shard: &dyn Shard, count: usize, keys: usize) {
        for i in 0..count {
            let key = format!("k{}", i % keys);
            let record = Record {
                key: Some(key.as_bytes()),
                value: Some(b"v"),
                timestamp_ms: OLD,
                ..Default::default()
            };
            shard.append(&[record]).unwrap();
        }
        shard
            .append(&[Record::new(b"end").with_key(b"end")])
            .unwrap();
    }

    fn offsets(shard: &dyn Shard) -> Vec<i64> {
        let limits = ReadLimits {
            max_records: usize::MAX,
            max_bytes: usize::MAX,
        };
        let from = shard.info().unwrap().first_offset;
        let read = shard.read(from, limits).unwrap();
        read.records.iter().map(|r| r.offset).collect()
    }

    fn nothing_protected() -> Result<HashSet<i64>> {
        Ok(HashSet::new())
    }

    #[test]
    fn a_pass_with_a_budget_goes_on_where_the_last_visit_stopped() {
        let (budgeted, forced) = (shard(), shard());
        fill(budgeted.as_ref(), 200, 3);
        fill(forced.as_ref(), 200, 3);
        let cleaner = ShardCleaner::default();
        let mut visits = 0;
        loop {
            let report = cleaner
                .run(budgeted.as_ref(), &nothing_protected, NOW, Some(1_000))
                .unwrap();
            visits += 1;
            // A visit reads about its budget: whole batches, the last one
            // may end past it.
            assert!(report.bytes_read < 1_000 + 200, "{report:?}");
            if !report.pending {
                break;
            }
        }
        assert!(visits > 3, "{visits} visits");
        ShardCleaner::default()
            .run(forced.as_ref(), &nothing_protected, NOW, None)
            .unwrap();
        assert_eq!(offsets(budgeted.as_ref()), offsets(forced.as_ref()));
        assert_eq!(offsets(forced.as_ref()), [197, 198, 199, 200]);
    }

    #[test]
    fn a_truncation_during_a_pass_drops_its_map() {
        let shard = shard();
        fill(shard.as_ref(), 40, 2);
        let cleaner = ShardCleaner::default();
        // A budget of the map (40 batches of 71 bytes) and a little more:
        // the map says k0's newest is 38; the sweep is under way.
        let first = cleaner
            .run(shard.as_ref(), &nothing_protected, NOW, Some(2_900))
            .unwrap();
        assert!(first.pending && first.bytes_read >= 2_840, "{first:?}");
        // The tail from 30 on goes: k0's newest is now 28, k1's 29.
        cleaner.truncate_with(30, || shard.truncate_to(30)).unwrap();
        shard
            .append(&[Record::new(b"end").with_key(b"end")])
            .unwrap();
        while cleaner
            .run(shard.as_ref(), &nothing_protected, NOW, Some(100))
            .unwrap()
            .pending
        {}
        let left = offsets(shard.as_ref());
        assert!(left.contains(&28) && left.contains(&29), "{left:?}");
    }

    #[test]
    fn nothing_is_read_again_until_enough_is_dirty() {
        let shard = shard();
        fill(shard.as_ref(), 100, 2);
        let cleaner = ShardCleaner::default();
        let first = cleaner
            .run(shard.as_ref(), &nothing_protected, NOW, Some(u64::MAX))
            .unwrap();
        assert!(first.removed > 0);
        // One more batch is far below half of the shard's bytes.
        shard.append(&[Record::new(b"x").with_key(b"k0")]).unwrap();
        let idle = cleaner
            .run(shard.as_ref(), &nothing_protected, NOW, Some(u64::MAX))
            .unwrap();
        assert_eq!(idle, CompactionReport::default());
        // A forced pass cleans what there is.
        let forced = cleaner
            .run(shard.as_ref(), &nothing_protected, NOW, None)
            .unwrap();
        assert!(forced.bytes_read > 0);
    }
}
