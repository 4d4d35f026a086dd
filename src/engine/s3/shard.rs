//! What the engine knows of one shard: its manifest as stored and as the
//! next write will store it, where each batch is (an object, or memory
//! while it waits for upload) and the batches waiting. Changes are
//! applied here under the shard's lock; `Plan` is the next write, taken
//! out so that the upload runs without the lock while appends go on.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use bytes::Bytes;

use super::manifest::{Manifest, ObjectRef};
use super::object::{self, Slot};
use crate::engine::database::{BatchMeta, Change, ShardMeta};
use crate::engine::KeyFilter;

/// Where a batch is.
#[derive(Clone, Debug)]
pub enum Place {
    /// Waiting for upload (or being uploaded).
    Memory(Bytes),
    /// In object `seq`, `pos` bytes from its start.
    Object { seq: u64, pos: u64 },
}

#[derive(Clone, Debug)]
pub struct Loc {
    pub meta: BatchMeta,
    pub place: Place,
    /// The batch's key and tag filter, when known: written in the footer
    /// of each object holding it.
    pub keys: Option<KeyFilter>,
}

/// A batch waiting for upload.
pub struct Pending {
    pub base: i64,
    pub meta: BatchMeta,
    pub bytes: Bytes,
    /// The commit's sync ticket (0: nobody waits for it).
    pub ticket: u64,
}

/// The manifest as stored.
#[derive(Clone)]
pub struct Stored {
    pub e_tag: String,
    pub bytes: Bytes,
    pub generation: u64,
}

/// A batch an object rewrite keeps: base offset, meta, and where it is
/// (the old object's sequence number, the position in it).
pub type Kept = (i64, BatchMeta, u64, u64);

/// A new object holding the live batches of old ones: one object without
/// its dead batches, or a run of small neighbours merged.
pub struct Rewrite {
    pub olds: Vec<ObjectRef>,
    pub new: ObjectRef,
    /// The batches kept, in offset order.
    pub kept: Vec<Kept>,
    /// The old objects held dead batches: a failed write leaves them due
    /// for a rewrite again (a merge is simply planned again).
    pub stale: bool,
}

/// Objects below this fraction of `object_bytes` are small: runs of
/// neighbouring small objects are merged.
const SMALL_FRACTION: u64 = 2;
/// A run of this many small objects is merged even if the result stays
/// small, so that a slow shard's objects do not grow without bound in
/// number.
const MERGE_COUNT: usize = 64;

/// The next write of a shard: new objects, then the manifest listing them.
pub struct Plan {
    /// The batches of a new object, from those waiting.
    pub fresh: Option<(ObjectRef, Vec<Pending>)>,
    /// Objects rewritten (without batches no longer live) or merged.
    pub rewrites: Vec<Rewrite>,
    pub manifest: Manifest,
    pub manifest_bytes: Bytes,
    /// The footer of each new object, by sequence number.
    pub footers: BTreeMap<u64, Bytes>,
    /// Objects the manifest no longer lists: deleted once it is stored.
    pub garbage: Vec<u64>,
}

impl Plan {
    pub fn tickets(&self) -> impl Iterator<Item = u64> + '_ {
        self.fresh
            .iter()
            .flat_map(|(_, batches)| batches.iter().map(|b| b.ticket))
            .filter(|&ticket| ticket != 0)
    }
}

pub struct State {
    /// What the next write stores (its `objects` are those stored).
    pub manifest: Manifest,
    /// `None`: no manifest stored yet.
    pub stored: Option<Stored>,
    /// The manifest has changes not stored yet.
    pub dirty: bool,
    pub locs: BTreeMap<i64, Loc>,
    pub pending: Vec<Pending>,
    pub pending_bytes: u64,
    pub pending_since: Option<Instant>,
    /// Objects holding a batch that is no longer live (deleted, or
    /// replaced by a rewrite): the next write rewrites them.
    pub rewrite: BTreeSet<u64>,
    pub removed: bool,
    /// A write whose outcome is unknown (its answer was lost): the next
    /// write first reads the manifest to learn whether it was applied.
    pub unresolved: Option<Plan>,
    /// Set when the stored manifest was changed by another writer: the
    /// shard takes no more writes.
    pub fenced: Option<String>,
}

impl State {
    pub fn new(manifest: Manifest, stored: Option<Stored>) -> State {
        State {
            manifest,
            stored,
            dirty: false,
            locs: BTreeMap::new(),
            pending: Vec::new(),
            pending_bytes: 0,
            pending_since: None,
            rewrite: BTreeSet::new(),
            removed: false,
            unresolved: None,
            fenced: None,
        }
    }

    /// Where the batch at `base` is, with its object's data length
    /// (`Place::Object`; 0 for a batch in memory).
    pub fn place_of(&self, base: i64) -> Option<(Loc, u64)> {
        let loc = self.locs.get(&base)?.clone();
        let data_len = match &loc.place {
            Place::Object { seq, .. } => self
                .manifest
                .objects
                .iter()
                .find(|o| o.seq == *seq)
                .map_or(0, |o| o.data_len),
            Place::Memory(_) => 0,
        };
        Some((loc, data_len))
    }

    /// A shard found at open: its batches are where the footers say.
    pub fn found(manifest: Manifest, stored: Stored, objects: &[(u64, Vec<Slot>)]) -> State {
        let mut state = State::new(manifest, Some(stored));
        for (seq, slots) in objects {
            for slot in slots
                .iter()
                .filter(|s| s.base_offset >= state.manifest.start)
            {
                let place = Place::Object {
                    seq: *seq,
                    pos: slot.pos,
                };
                let loc = Loc {
                    meta: slot.meta,
                    place,
                    keys: slot.keys.clone(),
                };
                if let Some(old) = state.locs.insert(slot.base_offset, loc) {
                    // Two objects hold the batch (a crash between a
                    // rewrite's upload and the old object's delete cannot
                    // cause it: the manifest lists one of them): keep the
                    // newer and rewrite the older without it.
                    if let Place::Object { seq: old_seq, .. } = old.place {
                        state.rewrite.insert(old_seq.min(*seq));
                    }
                }
            }
        }
        state
    }

    /// Applies one change of a commit whose ticket is `ticket`.
    pub fn apply(&mut self, change: Change, ticket: u64) {
        match change {
            Change::PutBatch {
                base_offset,
                bytes,
                meta,
                keys,
                ..
            } => self.put_batch(base_offset, meta, bytes, keys, ticket),
            Change::DeleteBatches {
                bases, end, front, ..
            } => match front {
                true => self.trim_front(end),
                false => bases.iter().for_each(|&base| self.drop_batch(base)),
            },
            Change::PutShard { meta, .. } => self.set_meta(meta),
            Change::SaveGroup { group, offset, .. } => {
                match offset {
                    Some(offset) => self.manifest.groups.insert(group, offset),
                    None => self.manifest.groups.remove(&group),
                };
                self.dirty = true;
            }
            Change::RemoveShard { .. } => self.removed = true,
        }
    }

    pub fn set_meta(&mut self, meta: ShardMeta) {
        self.manifest.meta = meta;
        self.dirty = true;
    }

    fn put_batch(
        &mut self,
        base: i64,
        meta: BatchMeta,
        bytes: Bytes,
        keys: Option<KeyFilter>,
        ticket: u64,
    ) {
        self.drop_batch(base);
        let loc = Loc {
            meta,
            place: Place::Memory(bytes.clone()),
            keys,
        };
        self.locs.insert(base, loc);
        self.pending_bytes += bytes.len() as u64;
        self.pending_since.get_or_insert_with(Instant::now);
        self.pending.push(Pending {
            base,
            meta,
            bytes,
            ticket,
        });
    }

    /// Forgets the batch at `base`, wherever it is.
    fn drop_batch(&mut self, base: i64) {
        match self.locs.remove(&base).map(|loc| loc.place) {
            Some(Place::Object { seq, .. }) => {
                self.rewrite.insert(seq);
            }
            Some(Place::Memory(_)) => self.forget_pending(|b| b == base),
            None => {}
        }
    }

    fn forget_pending(&mut self, gone: impl Fn(i64) -> bool) {
        let mut freed = 0;
        self.pending.retain(|p| {
            let keep = !gone(p.base);
            if !keep {
                freed += p.bytes.len() as u64;
            }
            keep
        });
        self.pending_bytes -= freed;
        if self.pending.is_empty() {
            self.pending_since = None;
        }
    }

    /// Every batch below `end` goes: at once from memory, from objects by
    /// the manifest's `start` (an object wholly below it is deleted).
    fn trim_front(&mut self, end: i64) {
        if end <= self.manifest.start {
            return;
        }
        self.manifest.start = end;
        self.dirty = true;
        let kept = self.locs.split_off(&end);
        self.locs = kept;
        self.forget_pending(|base| base < end);
    }

    /// Whether the next write has anything to store.
    pub fn has_work(&self) -> bool {
        self.removed
            || self.dirty
            || self.stored.is_none()
            || !self.pending.is_empty()
            || !self.rewrite.is_empty()
            || self
                .manifest
                .objects
                .iter()
                .any(|o| o.end <= self.manifest.start)
    }

    /// Whether neighbouring small objects are due for a merge (see
    /// `take_plan`).
    pub fn merge_due(&self, object_bytes: u64) -> bool {
        !merge_run(&self.manifest.objects, object_bytes).is_empty()
    }

    /// Takes the next write out: the batches waiting, the rewrites due and
    /// the manifest listing their objects; with `merge` (objects of about
    /// `object_bytes`), also one run of neighbouring small objects merged.
    /// Object names are used once, a failed write's too (`next_seq` moves
    /// on for good).
    pub fn take_plan(&mut self, merge: Option<u64>) -> Plan {
        let mut manifest = self.manifest.clone();
        let start = manifest.start;
        let mut garbage = Vec::new();
        manifest.objects.retain(|o| {
            let keep = o.end > start;
            if !keep {
                garbage.push(o.seq);
            }
            keep
        });
        let mut rewrites = Vec::new();
        let mut footers = BTreeMap::new();
        for seq in std::mem::take(&mut self.rewrite) {
            let Some(at) = manifest.objects.iter().position(|o| o.seq == seq) else {
                continue;
            };
            let old = manifest.objects.remove(at);
            rewrites.extend(self.rewrite_of(vec![old], true, &mut manifest, &mut footers));
            garbage.push(seq);
        }
        if let Some(object_bytes) = merge {
            // Only objects already stored: not those this write uploads.
            let stored: Vec<ObjectRef> = manifest
                .objects
                .iter()
                .filter(|o| !rewrites.iter().any(|r| r.new.seq == o.seq))
                .copied()
                .collect();
            let run = merge_run(&stored, object_bytes);
            if !run.is_empty() {
                manifest
                    .objects
                    .retain(|o| !run.iter().any(|r| r.seq == o.seq));
                garbage.extend(run.iter().map(|o| o.seq));
                rewrites.extend(self.rewrite_of(run, false, &mut manifest, &mut footers));
            }
        }
        let batches = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        self.pending_since = None;
        let listed = batches
            .iter()
            .map(|b| (b.base, b.meta, self.keys_of(b.base)));
        let fresh = new_object(&mut manifest.next_seq, listed).map(|(object, footer)| {
            footers.insert(object.seq, footer);
            manifest.objects.push(object);
            object
        });
        let fresh = fresh.map(|object| (object, batches));
        manifest.objects.sort_by_key(|o| o.seq);
        manifest.generation = self.stored.as_ref().map_or(0, |s| s.generation) + 1;
        self.manifest.next_seq = manifest.next_seq;
        self.dirty = false;
        let manifest_bytes = manifest.encode();
        Plan {
            fresh,
            rewrites,
            manifest,
            manifest_bytes,
            footers,
            garbage,
        }
    }

    /// The object replacing `olds` (taken out of `manifest`) with their
    /// live batches, added to `manifest`; `None` when none is live.
    fn rewrite_of(
        &self,
        olds: Vec<ObjectRef>,
        stale: bool,
        manifest: &mut Manifest,
        footers: &mut BTreeMap<u64, Bytes>,
    ) -> Option<Rewrite> {
        let kept: Vec<Kept> = olds.iter().flat_map(|o| self.batches_in(o)).collect();
        let listed = kept.iter().map(|k| (k.0, k.1, self.keys_of(k.0)));
        let (new, footer) = new_object(&mut manifest.next_seq, listed)?;
        footers.insert(new.seq, footer);
        manifest.objects.push(new);
        Some(Rewrite {
            olds,
            new,
            kept,
            stale,
        })
    }

    /// The filter of the batch at `base`, when known.
    pub fn keys_of(&self, base: i64) -> Option<&KeyFilter> {
        self.locs.get(&base)?.keys.as_ref()
    }

    /// The live batches of a stored object, by base offset.
    fn batches_in(&self, object: &ObjectRef) -> Vec<Kept> {
        self.locs
            .range(object.first_base..object.end)
            .filter_map(|(&base, loc)| match loc.place {
                Place::Object { seq, pos } if seq == object.seq => Some((base, loc.meta, seq, pos)),
                _ => None,
            })
            .collect()
    }

    /// Puts a plan that was not stored back: its batches wait again
    /// (those still live), its rewrites are due again.
    pub fn restore(&mut self, plan: Plan) {
        self.dirty = true;
        let stale = plan.rewrites.iter().filter(|r| r.stale);
        self.rewrite
            .extend(stale.flat_map(|r| r.olds.iter().map(|o| o.seq)));
        if let Some((_, mut batches)) = plan.fresh {
            batches.retain(|b| self.holds_in_memory(b.base, &b.bytes));
            self.pending_bytes += batches.iter().map(|b| b.bytes.len() as u64).sum::<u64>();
            batches.append(&mut self.pending);
            self.pending = batches;
            if !self.pending.is_empty() {
                self.pending_since.get_or_insert_with(Instant::now);
            }
        }
    }

    fn holds_in_memory(&self, base: i64, bytes: &Bytes) -> bool {
        matches!(self.locs.get(&base), Some(Loc { place: Place::Memory(b), .. })
            if b.as_ptr() == bytes.as_ptr() && b.len() == bytes.len())
    }

    /// The plan is stored: its batches are found in its objects from now
    /// on. A batch deleted or replaced meanwhile makes its new object due
    /// for a rewrite.
    pub fn install(&mut self, plan: &Plan, stored: Stored) {
        self.stored = Some(stored);
        self.manifest.objects = plan.manifest.objects.clone();
        if let Some((object, batches)) = &plan.fresh {
            let mut pos = 0;
            for batch in batches {
                if self.holds_in_memory(batch.base, &batch.bytes) {
                    let loc = self.locs.get_mut(&batch.base).expect("held");
                    loc.place = Place::Object {
                        seq: object.seq,
                        pos,
                    };
                } else if batch.base >= self.manifest.start {
                    self.rewrite.insert(object.seq);
                }
                pos += batch.meta.len as u64;
            }
        }
        for rewrite in &plan.rewrites {
            let mut pos = 0;
            for (base, meta, old, _) in &rewrite.kept {
                match self.locs.get_mut(base) {
                    Some(Loc {
                        place: Place::Object { seq, pos: at },
                        ..
                    }) if seq == old => (*seq, *at) = (rewrite.new.seq, pos),
                    _ if *base >= self.manifest.start => {
                        self.rewrite.insert(rewrite.new.seq);
                    }
                    _ => {}
                }
                pos += meta.len as u64;
            }
        }
    }
}

/// The first run of neighbouring small objects (in offset order) worth
/// merging: one that makes an object that is no longer small (and, its
/// parts being small, at most `object_bytes`), or `MERGE_COUNT` objects.
/// Each byte is then copied about once on its way to a full-sized object.
fn merge_run(objects: &[ObjectRef], object_bytes: u64) -> Vec<ObjectRef> {
    let small = object_bytes / SMALL_FRACTION;
    // The flusher asks every round for every shard: most have no two
    // small objects, and are answered without a copy and a sort.
    if objects
        .iter()
        .filter(|o| o.data_len < small)
        .nth(1)
        .is_none()
    {
        return Vec::new();
    }
    let mut sorted = objects.to_vec();
    sorted.sort_by_key(|o| o.first_base);
    let mut run: Vec<ObjectRef> = Vec::new();
    let mut bytes = 0;
    for object in sorted {
        if object.data_len >= small {
            run.clear();
            bytes = 0;
            continue;
        }
        run.push(object);
        bytes += object.data_len;
        if run.len() >= 2 && (bytes >= small || run.len() >= MERGE_COUNT) {
            return run;
        }
    }
    Vec::new()
}

/// The entry of a new object holding `batches` (in order), named with the
/// next sequence number, and its footer; `None` for no batches.
fn new_object<'a>(
    next_seq: &mut u64,
    batches: impl Iterator<Item = object::Listed<'a>> + Clone,
) -> Option<(ObjectRef, Bytes)> {
    let mut object: Option<ObjectRef> = None;
    for (base, meta, _) in batches.clone() {
        let o = object.get_or_insert(ObjectRef {
            seq: *next_seq,
            first_base: base,
            end: base,
            data_len: 0,
            count: 0,
            footer_len: 0,
        });
        o.first_base = o.first_base.min(base);
        o.end = o.end.max(meta.last_offset + 1);
        o.data_len += meta.len as u64;
        o.count += 1;
    }
    let mut object = object?;
    *next_seq += 1;
    let footer = object::footer(batches);
    object.footer_len = footer.len() as u64;
    Some((object, footer))
}
