//! A journal shard's in-memory index: the shared batch index
//! (`engine::index`), each entry pointing at the batch's bytes in a
//! journal segment, plus what the journal tracks per shard.

use std::collections::BTreeMap;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use bytes::Bytes;

use super::segment::Segment;
use crate::engine::index::{BatchEntry, BatchIndex};

/// Where a batch's bytes are: holding it keeps the segment's live count
/// up, so a segment file is removed only once no index entry points into
/// it.
pub struct JournalPos {
    pub segment: Arc<Segment>,
    /// Position of the batch bytes (after the entry header) in the segment.
    pub pos: u64,
}

impl Drop for JournalPos {
    fn drop(&mut self) {
        self.segment.sub_live();
    }
}

/// One stored batch of a journal shard.
pub type IndexEntry = BatchEntry<JournalPos>;

impl BatchEntry<JournalPos> {
    pub fn in_segment(
        segment: Arc<Segment>,
        pos: u64,
        len: usize,
        base_offset: i64,
        last_offset: i64,
        max_timestamp: i64,
        records: u32,
    ) -> IndexEntry {
        segment.add_live();
        let loc = JournalPos { segment, pos };
        BatchEntry::new(loc, len, base_offset, last_offset, max_timestamp, records)
    }

    /// Global journal position of the batch bytes.
    pub fn global_pos(&self) -> u64 {
        self.loc.segment.base + self.loc.pos
    }

    /// Zero-copy view of the batch (the caller made sure it is written).
    pub fn bytes(&self) -> Bytes {
        self.loc.segment.bytes(self.loc.pos, self.len as u64)
    }

    /// Global journal position just past the batch.
    pub fn end(&self) -> u64 {
        self.global_pos() + self.len as u64
    }
}

/// The state of one shard: its batches and watermarks (the shared index,
/// which this derefs to), and the journal's own bookkeeping.
#[derive(Default)]
pub struct ShardState {
    pub index: BatchIndex<JournalPos>,
    /// Segment holding the shard's latest checkpoint entry.
    pub anchor: u64,
    /// Global end of the newest entry this index points to (reads make sure
    /// the writer got this far before looking at the bytes).
    pub last_end: u64,
    /// The shard's deletion is logged: an index checkpoint leaves it out.
    pub deleted: bool,
    /// Consumer groups' committed offsets of this shard.
    pub groups: BTreeMap<String, i64>,
    /// Global end of the newest entry logged for this shard (0: none since
    /// the journal opened). A call that finds its work already done by
    /// another (a delete below the watermark, nothing left to delete)
    /// waits for this before reporting the state it saw: that state may
    /// come from an entry still on its way to the disk.
    pub logged_end: u64,
}

// `index.low_dirty`: batches were dropped (by retention, which raises the
// low watermark, or by deletes) since the last checkpoint. Retention is not
// logged: replay recomputes it from the batches, which it cannot once their
// segment is removed; and a dropped newest batch was the only record of the
// next offset. So such a shard is checkpointed before any segment is
// removed.

impl Deref for ShardState {
    type Target = BatchIndex<JournalPos>;

    fn deref(&self) -> &BatchIndex<JournalPos> {
        &self.index
    }
}

impl DerefMut for ShardState {
    fn deref_mut(&mut self) -> &mut BatchIndex<JournalPos> {
        &mut self.index
    }
}

impl ShardState {
    pub fn push(&mut self, entry: IndexEntry) {
        self.last_end = self.last_end.max(entry.end());
        self.index.push(entry);
    }

    /// Puts a batch recovered from a rewrite at `index` (its position by
    /// base offset) when the original's segment is gone.
    pub fn insert(&mut self, index: usize, entry: IndexEntry) {
        self.last_end = self.last_end.max(entry.end());
        self.index.insert(index, entry);
    }

    /// Replaces batch `index` by a rewritten one (or removes it: its
    /// removal is logged, but the entry may go with its segment while the
    /// shard's next offset still depends on it, hence `low_dirty`).
    pub fn replace(&mut self, index: usize, entry: Option<IndexEntry>) {
        if let Some(entry) = &entry {
            self.last_end = self.last_end.max(entry.end());
        }
        self.index.replace(index, entry);
    }
}
