//! The journal cleaner: keeps the journal's disk use near what its shards
//! retain.
//!
//! Segments are removed only from the front, and only once no index entry
//! points into them (`Log::maybe_reclaim`), so that replay always meets a
//! shard's entries in their order. One idle shard with old, retained data
//! would then pin every later segment, however dead, and disk use would
//! grow without bound. After each segment roll the cleaner measures the
//! live bytes of every closed segment (one pass over the shards' indexes)
//! and picks, among the prefixes of the journal whose live bytes are at
//! most `LIVE_FRACTION` of their size, the one with the smallest live
//! fraction. It relocates the live batches there to
//! the head of the log (`JournalShard::relocate_below`: `Rewrite` entries
//! with the batches' own bytes), and the prefix goes the usual way.
//!
//! Only batches that would stay are worth a copy. A shard whose front
//! moves (retention, deletes, a hybrid shard's tierer) will drop its
//! oldest batches soon anyway: a batch its front would reach within the
//! next `LEAVING_PASSES` passes, at the pace it moved over the last two
//! (over its first two: since it was created or opened), counts as dead
//! and stays in place. Copying it would double the disk writes of a
//! steadily draining shard for nothing; an idle shard's front does not
//! move, so its batches are relocated as before.
//!
//! Crash safety comes from the entries, not from ordering tricks: a
//! relocated batch is a `Rewrite` entry, which replay puts in the place of
//! the original when the original is still there and inserts when its
//! segment is gone; and `maybe_reclaim` makes every entry logged before a
//! removal durable before any file goes. A crash at any point finds each
//! batch in the old segment, in the new entry, or in both.
//!
//! The cost: each relocated byte is written once more, and data that
//! stays live (an idle shard's) is relocated again each time the log has
//! moved on past its copy and enough around it died: with `LIVE_FRACTION`
//! at 2/3, at most two relocated bytes per byte freed, and the journal
//! holds at most half as much dead data as live data.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{entry, JournalShard, Log};
use crate::Result;

/// A prefix of the journal is relocated once its live bytes are at most
/// this fraction of its size: its dead bytes then are at most half its
/// live ones, which bounds the journal's files to 1.5× the live bytes
/// (plus the active and the prefilled segment), at the price of at most
/// two relocated bytes per byte freed. As numerator / denominator.
const LIVE_FRACTION: (u64, u64) = (2, 3);

/// Batches their shard's front reaches within this many passes (segment
/// rolls, about) are leaving and not relocated. Leaving them costs at most
/// that many segments of disk beyond the bound above; a shard that drains
/// its data within a few segments of journal growth (byte retention, a
/// hybrid shard's tierer) is then never copied.
const LEAVING_PASSES: i64 = 4;

/// What one cleaning pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CleanPass {
    /// Segments in the prefix relocated (removed by the reclaim that
    /// followed, unless a shard pinned them again meanwhile).
    pub segments: usize,
    /// Batch bytes relocated.
    pub relocated_bytes: u64,
}

/// How many of `segments` (size, live bytes; oldest first) to clean (0:
/// none): among the prefixes whose live bytes are at most `LIVE_FRACTION`
/// of their size, the one with the smallest live fraction (the longer one
/// on a tie). It frees the most per byte relocated: a longer prefix would
/// reach into young segments whose data is mostly still live and would
/// soon die where it is.
pub(super) fn prefix_to_clean(segments: &[(u64, u64)]) -> usize {
    let (mut size, mut live) = (0u64, 0u64);
    let mut best: Option<(usize, u64, u64)> = None;
    for (i, &(segment_size, segment_live)) in segments.iter().enumerate() {
        size += segment_size;
        live += segment_live;
        if live * LIVE_FRACTION.1 > size * LIVE_FRACTION.0 {
            continue;
        }
        // live / size <= best_live / best_size, without division.
        let better = match best {
            None => true,
            Some((_, l, s)) => u128::from(live) * u128::from(s) <= u128::from(l) * u128::from(size),
        };
        if better {
            best = Some((i + 1, live, size));
        }
    }
    best.map_or(0, |(count, _, _)| count)
}

impl Log {
    /// The cleaner worker's task, after a segment roll. A failed pass
    /// loses nothing (the segments stay); it is reported.
    pub(super) fn clean_after_roll(&self) {
        if let Err(e) = self.clean() {
            crate::log::emit(
                crate::log::Level::Error,
                &format!("journal cleaner: a relocation pass failed: {e}"),
            );
        }
    }

    /// One cleaning pass (see the module's documentation).
    pub fn clean(&self) -> Result<CleanPass> {
        if self.read_only {
            return Ok(CleanPass::default());
        }
        let _pass = self.cleaning.lock();

        let active = self.writer.active_base();
        let closed: Vec<(u64, u64)> = {
            let map = self.segments.read();
            map.values()
                .filter(|s| s.base < active)
                .map(|s| (s.base, s.len))
                .collect()
        };
        let shards: Vec<Arc<JournalShard>> = self.shards.lock().values().cloned().collect();
        let (live, movable) = live_bytes(&shards, active);
        let sizes: Vec<(u64, u64)> = closed
            .iter()
            .map(|&(base, len)| (len, live.get(&base).copied().unwrap_or(0)))
            .collect();
        let count = prefix_to_clean(&sizes);
        let Some(&(last_base, last_len)) = count.checked_sub(1).and_then(|i| closed.get(i)) else {
            return Ok(CleanPass::default());
        };
        let end = last_base + last_len;
        let mut relocated_bytes = 0;
        for (shard, from) in shards.iter().zip(movable) {
            if from.position < end {
                relocated_bytes += shard.relocate_below(end, from.offset)?;
            }
        }
        self.relocated_bytes
            .fetch_add(relocated_bytes, Ordering::Relaxed);
        self.cleaning_passes.fetch_add(1, Ordering::Relaxed);
        self.maybe_reclaim();
        Ok(CleanPass {
            segments: count,
            relocated_bytes,
        })
    }
}

/// A shard's batches the cleaner would relocate: from `offset` on (the
/// older ones are leaving), the oldest of them in a closed segment at
/// global `position` (`u64::MAX`: none).
struct Movable {
    offset: i64,
    position: u64,
}

/// Live entry bytes per closed segment (base → bytes), leaving batches
/// not counted, and each shard's movable batches.
fn live_bytes(shards: &[Arc<JournalShard>], active: u64) -> (BTreeMap<u64, u64>, Vec<Movable>) {
    let mut live = BTreeMap::new();
    let mut movable = Vec::with_capacity(shards.len());
    for shard in shards {
        let state = shard.state.read();
        let offset = leaving_end(shard, state.low_watermark);
        let mut position = u64::MAX;
        for batch in state.batches.range(state.batch_index(offset)..) {
            let base = batch.loc.segment.base;
            if base < active {
                // The whole entry, header and padding included: only what
                // a relocation would free counts as dead.
                *live.entry(base).or_insert(0) += entry::entry_len(batch.len as usize);
                position = position.min(batch.global_pos());
            }
        }
        movable.push(Movable { offset, position });
    }
    (live, movable)
}

/// The offset below which `shard`'s batches are leaving: those its front
/// reaches within `LEAVING_PASSES` passes, at the pace it moved over the
/// last two (since it was created or opened, in its first two). Notes
/// `low`, its low watermark, for the next pass.
fn leaving_end(shard: &JournalShard, low: i64) -> i64 {
    let [last, before] = &shard.fronts_seen;
    let per_two_passes = low.saturating_sub(before.load(Ordering::Relaxed)).max(0);
    before.store(last.load(Ordering::Relaxed), Ordering::Relaxed);
    last.store(low, Ordering::Relaxed);
    low.saturating_add(per_two_passes.saturating_mul(LEAVING_PASSES / 2))
}

#[cfg(test)]
mod tests {
    use super::prefix_to_clean;

    #[test]
    fn the_mostly_dead_prefix_that_frees_most_per_byte_moved_is_cleaned() {
        assert_eq!(prefix_to_clean(&[]), 0);
        assert_eq!(prefix_to_clean(&[(300, 201)]), 0, "mostly live");
        assert_eq!(prefix_to_clean(&[(300, 200)]), 1, "a third dead");
        assert_eq!(
            prefix_to_clean(&[(100, 100), (100, 0), (100, 0), (100, 90)]),
            3,
            "a live segment goes with the dead ones behind it, not the young one after"
        );
        assert_eq!(prefix_to_clean(&[(100, 100), (100, 10), (100, 0)]), 3);
        assert_eq!(prefix_to_clean(&[(100, 0), (100, 100), (100, 100)]), 1);
        assert_eq!(
            prefix_to_clean(&[(100, 0), (100, 0)]),
            2,
            "ties: the longer"
        );
    }
}
