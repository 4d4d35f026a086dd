//! Idempotent producers: Kafka's producer state per shard (what its
//! `ProducerStateManager` keeps), so that a producer's retried batch is
//! answered with its original offsets instead of being stored twice, a
//! zombie producer of an older epoch is fenced, and a gap in the sequence
//! is refused.
//!
//! Rules, for a batch with producer id `p`, epoch `e`, sequences
//! `first..=last` (wrapping at `i32::MAX`):
//! - `e` below `p`'s epoch: `ProducerFenced`;
//! - `e` above it: the batch must start at sequence 0 (a new epoch), else
//!   `OutOfOrderSequence`;
//! - the same epoch: a batch equal to one of `p`'s last five is a
//!   duplicate (`DuplicateSequence`, with its original base offset);
//!   otherwise `first` must follow `p`'s last sequence, else
//!   `OutOfOrderSequence`;
//! - an unknown producer (never seen, or its state expired) may start at
//!   any sequence, as in Kafka since the state can be lost to retention.
//!
//! The state of a persistent shard is rebuilt from its batches (the tail
//! after the snapshot a clean close wrote), so it survives restarts and
//! crashes: a batch is in the state exactly when it is in the log.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::engine::{NewBatch, Shard};
use crate::format::{split_batches, BatchHeader, NO_PRODUCER_ID};
use crate::io::{remove_file_durably, replace_file_durably};
use crate::time::now_ms;
use crate::{Error, Result};

/// Batches remembered per producer for duplicate detection (Kafka's 5:
/// the most a producer keeps in flight).
pub const REMEMBERED_BATCHES: usize = 5;

/// One remembered batch of a producer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchSeq {
    pub first_seq: i32,
    pub last_seq: i32,
    pub base_offset: i64,
}

/// What is known of one producer on one shard.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerEntry {
    pub epoch: i16,
    /// Oldest first, at most `REMEMBERED_BATCHES`.
    pub batches: VecDeque<BatchSeq>,
    /// Time of the producer's last batch (ms since the epoch), for expiry.
    pub last_seen_ms: i64,
}

/// The producers of one shard, and how far the log has been applied.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardProducers {
    pub producers: HashMap<i64, ProducerEntry>,
    /// Every batch below this offset has been applied.
    pub applied_to: i64,
    /// When idle producers were last looked for.
    #[serde(skip)]
    pub last_sweep_ms: i64,
}

/// The outcome of checking a request's batches.
#[derive(Debug, PartialEq, Eq)]
pub enum Check {
    /// Store them; `apply` afterwards with their base offsets.
    Append,
    /// Every batch was stored before: these are their base offsets.
    Duplicate(Vec<i64>),
}

fn last_seq_of(header: &BatchHeader) -> i32 {
    // Sequences wrap at i32::MAX, as in Kafka.
    let delta = header.last_offset_delta as i64;
    ((header.base_sequence as i64 + delta) % (i32::MAX as i64 + 1)) as i32
}

fn follows(last: i32, next: i32) -> bool {
    if last == i32::MAX {
        next == 0
    } else {
        next == last + 1
    }
}

impl ShardProducers {
    /// Checks `headers` (a request's batches, in order) against the state;
    /// nothing changes. Batches without a producer id pass.
    pub fn check(&self, shard: &str, headers: &[BatchHeader]) -> Result<Check> {
        let mut duplicates = Vec::new();
        // The state as the earlier batches of the request would leave it.
        let mut pending: HashMap<i64, (i16, i32)> = HashMap::new();
        for (index, header) in headers.iter().enumerate() {
            if header.producer_id == NO_PRODUCER_ID {
                continue;
            }
            let known = self.producers.get(&header.producer_id);
            if let Some(original) = known.and_then(|entry| duplicate_of(entry, header)) {
                duplicates.push(original);
                continue;
            }
            let last = pending
                .get(&header.producer_id)
                .copied()
                .or_else(|| known.map(|e| (e.epoch, e.batches.back().map_or(-1, |b| b.last_seq))));
            check_sequence(shard, index, header, last)?;
            pending.insert(
                header.producer_id,
                (header.producer_epoch, last_seq_of(header)),
            );
        }
        match (duplicates.len(), pending.is_empty()) {
            (0, _) => Ok(Check::Append),
            (n, true) if n == headers.len() => Ok(Check::Duplicate(duplicates)),
            _ => Err(Error::OutOfOrderSequence(format!(
                "shard '{shard}': a request mixes {} already stored batches with new ones",
                duplicates.len()
            ))),
        }
    }

    /// Records stored batches (`headers` with their base offsets), at
    /// `now_ms`; `end` is the offset after the last of them.
    pub fn apply(&mut self, headers: &[BatchHeader], bases: &[i64], end: i64, now_ms: i64) {
        for (header, &base_offset) in headers.iter().zip(bases) {
            if header.producer_id == NO_PRODUCER_ID {
                continue;
            }
            let entry = self.producers.entry(header.producer_id).or_default();
            if entry.epoch != header.producer_epoch {
                entry.batches.clear();
                entry.epoch = header.producer_epoch;
            }
            if entry.batches.len() == REMEMBERED_BATCHES {
                entry.batches.pop_front();
            }
            entry.batches.push_back(BatchSeq {
                first_seq: header.base_sequence,
                last_seq: last_seq_of(header),
                base_offset,
            });
            entry.last_seen_ms = now_ms;
        }
        self.applied_to = self.applied_to.max(end);
    }

    /// Forgets producers idle for longer than `expiry_ms` at `now_ms`.
    pub fn expire(&mut self, now_ms: i64, expiry_ms: u64) {
        let cutoff = now_ms.saturating_sub(expiry_ms as i64);
        self.producers
            .retain(|_, entry| entry.last_seen_ms >= cutoff);
    }
}

/// The original base offset when `header` repeats one of the producer's
/// remembered batches.
fn duplicate_of(entry: &ProducerEntry, header: &BatchHeader) -> Option<i64> {
    if entry.epoch != header.producer_epoch {
        return None;
    }
    let last = last_seq_of(header);
    entry
        .batches
        .iter()
        .find(|b| b.first_seq == header.base_sequence && b.last_seq == last)
        .map(|b| b.base_offset)
}

/// The epoch and sequence rules for batch `index`; `last` is the
/// producer's (epoch, last sequence) when known.
fn check_sequence(
    shard: &str,
    index: usize,
    header: &BatchHeader,
    last: Option<(i16, i32)>,
) -> Result<()> {
    let producer = header.producer_id;
    let (epoch, first) = (header.producer_epoch, header.base_sequence);
    let Some((known_epoch, last_seq)) = last else {
        return Ok(());
    };
    if epoch < known_epoch {
        return Err(Error::ProducerFenced(format!(
            "shard '{shard}', batch {index}: producer {producer} epoch {epoch} is older than \
             its current epoch {known_epoch}"
        )));
    }
    if epoch > known_epoch {
        if first != 0 {
            return Err(Error::OutOfOrderSequence(format!(
                "shard '{shard}', batch {index}: producer {producer} starts epoch {epoch} at \
                 sequence {first} (a new epoch starts at 0)"
            )));
        }
        return Ok(());
    }
    if !follows(last_seq, first) {
        return Err(Error::OutOfOrderSequence(format!(
            "shard '{shard}', batch {index}: producer {producer} epoch {epoch} sent sequence \
             {first} after {last_seq}"
        )));
    }
    Ok(())
}

/// File of the snapshot a clean close writes; read and removed at open.
pub const SNAPSHOT_FILE: &str = "producers.json";
/// How often a shard's idle producers are looked for.
const EXPIRY_SWEEP_MS: i64 = 60_000;
/// Bytes of a shard read at a time when its state is rebuilt.
const SCAN_BYTES: usize = 8 << 20;

/// Empty batches spanning the offsets from `from` up to `next`'s base,
/// which a leader's compaction left without a batch: a follower's log
/// stays dense (each batch starts where the one before ended), as every
/// engine keeps it. They carry no producer and `next`'s timestamps, so
/// retention and timestamp lookups treat them as `next`.
pub(crate) fn gap_fillers(from: i64, next: &BatchHeader) -> Vec<NewBatch> {
    let mut fillers = Vec::new();
    let mut base = from;
    while base < next.base_offset {
        let span = (next.base_offset - base).min(i64::from(i32::MAX));
        let header = BatchHeader {
            base_offset: base,
            last_offset_delta: (span - 1) as i32,
            producer_id: NO_PRODUCER_ID,
            producer_epoch: crate::format::NO_PRODUCER_EPOCH,
            base_sequence: crate::format::NO_SEQUENCE,
            attributes: 0,
            base_timestamp: next.max_timestamp,
            ..*next
        };
        fillers.push(NewBatch {
            bytes: crate::format::empty_batch(&header),
            records: 0,
            last_offset_delta: header.last_offset_delta,
            max_timestamp: next.max_timestamp,
            keys: None,
        });
        base += span;
    }
    fillers
}

/// One shard's state: `None` until first needed (then rebuilt from the
/// snapshot and the log).
type Slot = Arc<Mutex<Option<ShardProducers>>>;

/// The producer state of every shard of a store.
pub(crate) struct Producers {
    dir: PathBuf,
    expiry_ms: u64,
    shards: Mutex<HashMap<String, Slot>>,
    /// What the last clean close saved, consumed shard by shard.
    snapshot: Mutex<HashMap<String, ShardProducers>>,
    /// The store was closed cleanly last time: a shard missing from the
    /// snapshot had no producers then (saved snapshots leave such shards
    /// out, so that a million producer-less shards cost nothing).
    clean: bool,
}

impl Producers {
    /// Reads the snapshot a clean close left in `dir` and removes it
    /// durably: after a crash the state is rebuilt from the log, never
    /// taken from a snapshot that predates what the log holds. A
    /// `read_only` open leaves it: it appends nothing the snapshot misses.
    pub fn open(dir: &Path, expiry_ms: u64, read_only: bool) -> Result<Producers> {
        let path = dir.join(SNAPSHOT_FILE);
        let (snapshot, clean) = match std::fs::read(&path) {
            Ok(bytes) => {
                let snapshot = serde_json::from_slice(&bytes).map_err(|e| {
                    Error::corruption(format!("'{}' is not valid: {e}", path.display()))
                })?;
                (snapshot, true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (HashMap::new(), false),
            Err(e) => return Err(Error::io(format!("reading '{}'", path.display()), e)),
        };
        if !read_only {
            remove_file_durably(dir, SNAPSHOT_FILE)?;
        }
        Ok(Producers {
            dir: dir.to_path_buf(),
            expiry_ms,
            shards: Mutex::new(HashMap::new()),
            snapshot: Mutex::new(snapshot),
            clean,
        })
    }

    /// Stores `batches` (whose headers are `headers`) on `shard` after the
    /// producer checks, and records them; a request that repeats stored
    /// batches stores nothing and fails with `DuplicateSequence` carrying
    /// their offsets. The state is held from the check until the batches
    /// have their offsets, so that two requests of one producer cannot
    /// both pass; the durability wait happens after, outside it.
    pub fn append(
        &self,
        name: &str,
        shard: &dyn Shard,
        headers: &[BatchHeader],
        batches: Vec<NewBatch>,
        pipelined: bool,
    ) -> Result<Vec<i64>> {
        let slot = self.slot(name);
        let mut guard = slot.lock();
        let state = match guard.as_mut() {
            Some(state) => state,
            None => guard.insert(self.load(name, shard)?),
        };
        let now = now_ms();
        if now - state.last_sweep_ms >= EXPIRY_SWEEP_MS.min(self.expiry_ms as i64) {
            state.expire(now, self.expiry_ms);
            state.last_sweep_ms = now;
        }
        if let Check::Duplicate(base_offsets) = state.check(name, headers)? {
            drop(guard);
            // The original may still be on its way to disk (a pipelined
            // request): the retry is answered as it would have been.
            if let (Some(base), Some(header)) = (base_offsets.last(), headers.last()) {
                shard.wait_durable(base + i64::from(header.record_count) - 1)?;
            }
            return Err(Error::DuplicateSequence {
                shard: name.to_string(),
                base_offsets,
            });
        }
        let first = shard.append_batches(batches, true)?;
        let bases = consecutive_bases(first, headers);
        let end = bases.last().copied().unwrap_or(first)
            + headers.last().map_or(0, |h| i64::from(h.record_count));
        state.apply(headers, &bases, end, now);
        drop(guard);
        if !pipelined {
            shard.wait_durable(end - 1)?;
        }
        Ok(bases)
    }

    /// Stores a leader's batches on a follower's `shard` at the offsets they
    /// carry, which must continue the shard exactly, and records their
    /// producers without checks (the leader made them), so that the
    /// follower can take over as leader. Returns the shard's next offset.
    /// A follower's shard has no other writer.
    pub fn append_replica(
        &self,
        name: &str,
        shard: &dyn Shard,
        headers: &[BatchHeader],
        batches: Vec<NewBatch>,
    ) -> Result<i64> {
        let slot = self.slot(name);
        let mut guard = slot.lock();
        let state = match guard.as_mut() {
            Some(state) => state,
            None => guard.insert(self.load(name, shard)?),
        };
        let next = shard.info()?.next_offset;
        let mut expected = next;
        let mut stored = Vec::with_capacity(batches.len());
        for (index, (header, batch)) in headers.iter().zip(batches).enumerate() {
            if header.base_offset < expected {
                return Err(Error::InvalidArgument(format!(
                    "shard '{name}': replica batch {index} starts at offset {}, the follower \
                     expects {expected} (fetch from its next offset, or truncate a diverged tail)",
                    header.base_offset
                )));
            }
            // The leader's compaction removed whole batches there.
            stored.extend(gap_fillers(expected, header));
            stored.push(batch);
            expected = header.next_offset();
        }
        let first = shard.append_batches(stored, true)?;
        if first != next {
            return Err(Error::Internal(format!(
                "shard '{name}': a replica's batches landed at {first}, not {next}: another \
                 writer appended to the follower's shard"
            )));
        }
        let bases: Vec<i64> = headers.iter().map(|h| h.base_offset).collect();
        state.apply(headers, &bases, expected, now_ms());
        drop(guard);
        if expected > next {
            shard.wait_durable(expected - 1)?;
        }
        Ok(expected)
    }

    /// Cuts `shard` at `offset` (`Shard::truncate_to`) and rebuilds its
    /// producers' state from the batches that remain, as Kafka does after
    /// a follower's truncation: a sequence cut away may be sent again.
    pub fn truncate_to(&self, name: &str, shard: &dyn Shard, offset: i64) -> Result<()> {
        let slot = self.slot(name);
        let mut guard = slot.lock();
        shard.truncate_to(offset)?;
        // A snapshot that applied nothing makes `load` scan the whole shard.
        *guard = None;
        self.snapshot
            .lock()
            .insert(name.to_string(), ShardProducers::default());
        match self.load(name, shard) {
            Ok(rebuilt) => {
                *guard = Some(rebuilt);
                Ok(())
            }
            Err(e) => {
                // `load` took the placeholder: put it back, so the next
                // append scans again rather than assume no producers.
                self.snapshot
                    .lock()
                    .insert(name.to_string(), ShardProducers::default());
                Err(e)
            }
        }
    }

    /// The base offset of each known producer's last batch on `shard`:
    /// the batches compaction keeps whole, so that a rebuild from the log
    /// finds every producer where it stands.
    pub fn last_batches(&self, name: &str, shard: &dyn Shard) -> Result<HashSet<i64>> {
        let slot = self.slot(name);
        let mut guard = slot.lock();
        let state = match guard.as_mut() {
            Some(state) => state,
            None => guard.insert(self.load(name, shard)?),
        };
        Ok(state
            .producers
            .values()
            .filter_map(|producer| producer.batches.back().map(|b| b.base_offset))
            .collect())
    }

    fn slot(&self, name: &str) -> Slot {
        self.shards
            .lock()
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    /// A shard's state: its snapshot, then every batch after it.
    fn load(&self, name: &str, shard: &dyn Shard) -> Result<ShardProducers> {
        let info = shard.info()?;
        let mut state = match self.snapshot.lock().remove(name) {
            // A snapshot beyond the shard's end is not this shard's.
            Some(saved) if saved.applied_to <= info.next_offset => saved,
            Some(_) => ShardProducers::default(),
            // Only producer batches are this code's business, and since
            // the open every one went through it.
            None if self.clean => ShardProducers {
                applied_to: info.next_offset,
                ..ShardProducers::default()
            },
            None => ShardProducers::default(),
        };
        let mut offset = state.applied_to.max(info.first_offset);
        // The log keeps no append times: producers found in it count as
        // seen now, so a rebuild never expires what was live before it.
        let now = now_ms();
        while offset < info.next_offset {
            let plan = shard.plan_transfer(offset, SCAN_BYTES)?;
            if plan.next_offset() <= offset {
                break;
            }
            for batch in split_batches(&Bytes::from(plan.to_vec()?))? {
                let header = BatchHeader::parse(&batch)?;
                if header.producer_id != NO_PRODUCER_ID {
                    let end = header.next_offset();
                    state.apply(&[header], &[header.base_offset], end, now);
                }
            }
            offset = plan.next_offset();
        }
        state.applied_to = info.next_offset;
        Ok(state)
    }

    /// A shard created now has no producers yet (nothing to rebuild).
    pub fn created(&self, name: &str) {
        self.snapshot.lock().remove(name);
        let fresh = Arc::new(Mutex::new(Some(ShardProducers::default())));
        self.shards.lock().insert(name.to_string(), fresh);
    }

    /// Forgets a deleted shard's producers.
    pub fn forget(&self, name: &str) {
        self.shards.lock().remove(name);
        self.snapshot.lock().remove(name);
    }

    /// Saves the state of `persistent` shards (all that a clean close
    /// left), for the next open to start from.
    pub fn save(&self, persistent: &[String]) -> Result<()> {
        let mut saved = std::mem::take(&mut *self.snapshot.lock());
        for (name, slot) in self.shards.lock().iter() {
            if let Some(state) = slot.lock().clone() {
                saved.insert(name.clone(), state);
            }
        }
        let persistent: std::collections::HashSet<&String> = persistent.iter().collect();
        saved.retain(|name, state| !state.producers.is_empty() && persistent.contains(name));
        // Written even when empty: its presence says the close was clean.
        let json = serde_json::to_vec(&saved).map_err(|e| Error::Internal(e.to_string()))?;
        replace_file_durably(&self.dir, SNAPSHOT_FILE, &json)
    }
}

/// Base offsets of batches stored at consecutive offsets from `first`.
pub fn consecutive_bases(first: i64, headers: &[BatchHeader]) -> Vec<i64> {
    let mut next = first;
    headers
        .iter()
        .map(|h| {
            let base = next;
            next += i64::from(h.record_count);
            base
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{BatchHeader, MAGIC_V2};
    use crate::Status;

    fn header(producer_id: i64, epoch: i16, first_seq: i32, records: i32) -> BatchHeader {
        BatchHeader {
            base_offset: 0,
            batch_length: 0,
            partition_leader_epoch: -1,
            magic: MAGIC_V2,
            crc: 0,
            attributes: 0,
            last_offset_delta: records - 1,
            base_timestamp: 0,
            max_timestamp: 0,
            producer_id,
            producer_epoch: epoch,
            base_sequence: first_seq,
            record_count: records,
        }
    }

    /// Checks then applies one batch at `base`; the check's outcome.
    fn send(state: &mut ShardProducers, h: BatchHeader, base: i64) -> Result<Check> {
        let check = state.check("s", &[h])?;
        if check == Check::Append {
            state.apply(&[h], &[base], base + h.record_count as i64, 1000);
        }
        Ok(check)
    }

    #[test]
    fn sequences_follow_each_other_and_retries_get_their_offsets() {
        let mut state = ShardProducers::default();
        assert_eq!(
            send(&mut state, header(7, 0, 0, 3), 0).unwrap(),
            Check::Append
        );
        assert_eq!(
            send(&mut state, header(7, 0, 3, 2), 3).unwrap(),
            Check::Append
        );
        assert_eq!(
            send(&mut state, header(7, 0, 0, 3), 99).unwrap(),
            Check::Duplicate(vec![0])
        );
        assert_eq!(
            send(&mut state, header(7, 0, 3, 2), 99).unwrap(),
            Check::Duplicate(vec![3])
        );
        let gap = send(&mut state, header(7, 0, 6, 1), 5).unwrap_err();
        assert_eq!(gap.status(), Status::OutOfOrderSequence);
        assert!(gap.to_string().contains("sequence 6 after 4"), "{gap}");
        assert_eq!(state.applied_to, 5);
    }

    #[test]
    fn only_the_last_five_batches_are_remembered() {
        let mut state = ShardProducers::default();
        for i in 0..7 {
            send(&mut state, header(1, 0, i, 1), i as i64).unwrap();
        }
        assert_eq!(state.producers[&1].batches.len(), REMEMBERED_BATCHES);
        assert_eq!(
            send(&mut state, header(1, 0, 2, 1), 50).unwrap(),
            Check::Duplicate(vec![2])
        );
        // Older than the window: neither a duplicate nor in sequence.
        let err = send(&mut state, header(1, 0, 1, 1), 50).unwrap_err();
        assert_eq!(err.status(), Status::OutOfOrderSequence);
    }

    #[test]
    fn epochs_fence_and_restart_sequences() {
        let mut state = ShardProducers::default();
        send(&mut state, header(3, 5, 0, 1), 0).unwrap();
        let fenced = send(&mut state, header(3, 4, 1, 1), 1).unwrap_err();
        assert_eq!(fenced.status(), Status::ProducerFenced);
        let bad_start = send(&mut state, header(3, 6, 1, 1), 1).unwrap_err();
        assert_eq!(bad_start.status(), Status::OutOfOrderSequence);
        assert_eq!(
            send(&mut state, header(3, 6, 0, 1), 1).unwrap(),
            Check::Append
        );
        // The old epoch's batch is no longer a duplicate: fenced.
        let old = send(&mut state, header(3, 5, 0, 1), 2).unwrap_err();
        assert_eq!(old.status(), Status::ProducerFenced);
    }

    #[test]
    fn sequences_wrap_and_unknown_producers_start_anywhere() {
        let mut state = ShardProducers::default();
        let near_end = i32::MAX - 1;
        assert_eq!(
            send(&mut state, header(9, 0, near_end, 2), 0).unwrap(),
            Check::Append
        );
        assert_eq!(state.producers[&9].batches[0].last_seq, i32::MAX);
        assert_eq!(
            send(&mut state, header(9, 0, 0, 1), 2).unwrap(),
            Check::Append
        );
        // A batch crossing the wrap ends at a small sequence.
        assert_eq!(last_seq_of(&header(9, 0, i32::MAX, 3)), 1);
        // Non-idempotent batches pass untouched.
        assert_eq!(
            send(&mut state, header(NO_PRODUCER_ID, -1, -1, 4), 3).unwrap(),
            Check::Append
        );
        assert_eq!(state.producers.len(), 1);
    }

    #[test]
    fn a_request_checks_its_batches_in_order_and_may_not_mix_retries() {
        let mut state = ShardProducers::default();
        let request = [header(1, 0, 0, 2), header(1, 0, 2, 2)];
        assert_eq!(state.check("s", &request).unwrap(), Check::Append);
        state.apply(&request, &[0, 2], 4, 1000);
        assert_eq!(
            state.check("s", &request).unwrap(),
            Check::Duplicate(vec![0, 2])
        );
        let mixed = [header(1, 0, 2, 2), header(1, 0, 4, 1)];
        let err = state.check("s", &mixed).unwrap_err();
        assert_eq!(err.status(), Status::OutOfOrderSequence);
        let gap_inside = [header(1, 0, 4, 1), header(1, 0, 6, 1)];
        assert!(state.check("s", &gap_inside).is_err());
    }

    #[test]
    fn idle_producers_expire() {
        let mut state = ShardProducers::default();
        send(&mut state, header(1, 0, 0, 1), 0).unwrap();
        state.expire(1000 + 500, 1000);
        assert_eq!(state.producers.len(), 1);
        state.expire(1000 + 1001, 1000);
        assert!(state.producers.is_empty());
        // Forgotten: any sequence is accepted again.
        assert_eq!(
            send(&mut state, header(1, 0, 40, 1), 1).unwrap(),
            Check::Append
        );
    }
}
