//! Transfer plans of the S3 engine: lazy chunks whose batches are fetched
//! by ranged GETs (through the block cache) while the plan is sent, so a
//! plan of cold data holds at most one piece in memory, never the whole
//! plan.
//!
//! A plan is a snapshot: objects are never rewritten in place, and an
//! object a plan lists is pinned, so a delete of it (retention, a
//! rewrite, the shard's removal) waits until the last plan listing it is
//! dropped. An object
//! left behind by a crash meanwhile is deleted at the next open, as every
//! object no manifest lists.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use super::db::S3Db;
use super::shard::Place;
use crate::engine::database::PlannedBatch;
use crate::io::{ChunkFetcher, TransferChunk};
use crate::Result;

/// An object: (shard id, sequence number).
pub type ObjectId = (u64, u64);

/// Objects plans still list, and deletes waiting for them.
#[derive(Default)]
pub struct Pins {
    state: Mutex<PinState>,
}

#[derive(Default)]
struct PinState {
    counts: HashMap<ObjectId, usize>,
    /// Pinned objects no manifest lists any more: deleted once unpinned.
    doomed: HashSet<ObjectId>,
    /// Doomed objects no plan lists any more, for the flusher to delete.
    released: Vec<ObjectId>,
}

impl Pins {
    fn pin(&self, objects: &[ObjectId]) {
        let mut state = self.state.lock();
        for object in objects {
            *state.counts.entry(*object).or_default() += 1;
        }
    }

    fn unpin(&self, objects: &[ObjectId]) {
        let mut state = self.state.lock();
        for object in objects {
            let Some(count) = state.counts.get_mut(object) else {
                continue;
            };
            *count -= 1;
            if *count == 0 {
                state.counts.remove(object);
                if state.doomed.remove(object) {
                    state.released.push(*object);
                }
            }
        }
    }

    /// Of `garbage`, the objects to delete now; the pinned ones are
    /// deleted once their last plan is dropped.
    pub fn deletable(&self, garbage: Vec<ObjectId>) -> Vec<ObjectId> {
        let mut state = self.state.lock();
        let (pinned, free): (Vec<_>, Vec<_>) = garbage
            .into_iter()
            .partition(|object| state.counts.contains_key(object));
        state.doomed.extend(pinned);
        free
    }

    /// Doomed objects no plan lists any more.
    pub fn take_released(&self) -> Vec<ObjectId> {
        std::mem::take(&mut self.state.lock().released)
    }
}

/// One contiguous piece of a plan: a batch waiting for upload, or a run of
/// consecutive batches of one object.
struct Piece {
    /// Where it starts in the chunk.
    start: u64,
    len: u64,
    place: Place,
    /// The object's data bytes (`Place::Object`).
    data_len: u64,
}

/// Where a planned batch is, as the shard's state says when the plan is
/// made.
pub struct Located {
    pub batch: PlannedBatch,
    pub place: Place,
    pub data_len: u64,
}

struct PlanSource {
    db: Arc<S3Db>,
    shard: u64,
    pieces: Vec<Piece>,
    pinned: Vec<ObjectId>,
}

/// The lazy chunk of `batches` of shard `shard` (consecutive, `start`
/// counting from 0). Called under the lock of the shard's state, so no
/// delete of their objects comes between the lookup and the pin.
pub fn chunk(db: Arc<S3Db>, shard: u64, batches: Vec<Located>) -> TransferChunk {
    let mut pieces: Vec<Piece> = Vec::new();
    for Located {
        batch,
        place,
        data_len,
    } in batches
    {
        if let (Some(last), Place::Object { seq, pos }) = (pieces.last_mut(), &place) {
            if matches!(last.place, Place::Object { seq: s, pos: p } if s == *seq && p + last.len == *pos)
            {
                last.len += batch.len;
                continue;
            }
        }
        pieces.push(Piece {
            start: batch.start,
            len: batch.len,
            place,
            data_len,
        });
    }
    let mut pinned: Vec<ObjectId> = pieces
        .iter()
        .filter_map(|p| match p.place {
            Place::Object { seq, .. } => Some((shard, seq)),
            Place::Memory(_) => None,
        })
        .collect();
    pinned.sort_unstable();
    pinned.dedup();
    db.pins.pin(&pinned);
    let len = pieces.last().map_or(0, |p| p.start + p.len);
    TransferChunk::Lazy {
        len,
        fetcher: Arc::new(PlanSource {
            db,
            shard,
            pieces,
            pinned,
        }),
    }
}

impl ChunkFetcher for PlanSource {
    /// The rest of the piece holding `offset`, up to `max` bytes: a batch
    /// waiting for upload is sent from memory without a copy; an object's
    /// bytes come from the block cache (a miss reads ahead).
    fn fetch(&self, offset: u64, max: usize) -> Result<Bytes> {
        let index = self.pieces.partition_point(|p| p.start + p.len <= offset);
        let piece = &self.pieces[index];
        let skip = offset - piece.start;
        let take = (piece.len - skip).min(max as u64);
        match &piece.place {
            Place::Memory(bytes) => Ok(bytes.slice(skip as usize..(skip + take) as usize)),
            Place::Object { seq, pos } => {
                self.db
                    .read(self.shard, *seq, piece.data_len, pos + skip, take)
            }
        }
    }
}

impl Drop for PlanSource {
    fn drop(&mut self) {
        // The flusher deletes what this releases at its next round.
        self.db.pins.unpin(&self.pinned);
    }
}
