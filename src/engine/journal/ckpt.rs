//! The index checkpoint (`journal/index.ckpt`): every shard's catalogue data
//! and batch index as of a journal position, so that opening a store replays
//! only the entries after that position instead of the whole journal.
//! The layout is documented in docs/FORMAT.md ("Index checkpoint").
//!
//! Written on a clean close, after the final fdatasync and with the writer
//! sealed, and periodically while the journal grows (`[journal]
//! checkpoint_bytes`, see `Log::checkpoint`), so that the replay after a
//! crash is bounded by that distance rather than by the journal's size.
//! A periodic checkpoint cannot stop the log: each shard is snapshotted
//! under its own lock together with the log's end at that moment (its
//! *covered* position: every entry of the shard before it is in the
//! snapshot, none after), replay starts at the smallest covered position
//! (the checkpoint's end) and skips a shard's entries below its own
//! covered position. Everything below the largest covered position is
//! fdatasynced before the file is written, so it only covers durable
//! entries too. Everything up to its end
//! position stays valid afterwards: the journal is append-only, and
//! recovery only ever zeroes a torn tail, which lies beyond durable data and
//! so beyond the checkpoint. What it must never survive is the removal of a
//! segment its index points into (see `Log::maybe_reclaim`): the checkpoint
//! is deleted before the first removal after an open, and a checkpoint
//! naming a missing segment is ignored anyway.

use std::collections::{BTreeMap, HashMap};
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::entry::{self, Parsed, HEADER_LEN};
use super::index::{IndexEntry, ShardState};
use super::recovery::RecoveredShard;
use super::segment::{sync_dir, Segment};
use super::shard::JournalShard;
use super::writer::Writer;
use crate::config::Config;
use crate::engine::keyfilter::KeyFilter;
use crate::io::fs;
use crate::{Error, Result};

pub const FILE_NAME: &str = "index.ckpt";
const TEMP_NAME: &str = "index.ckpt.tmp";
/// "MQJI" read as a little-endian u32.
const MAGIC: u32 = u32::from_le_bytes(*b"MQJI");
/// Version 2 added each batch's key filter, version 3 each shard's covered
/// position, version 4 the table of distinct shard options (shards name an
/// entry instead of carrying their own copy) and each shard's consumer
/// group offsets; an older file is ignored
/// (the journal is replayed).
const VERSION: u32 = 4;
/// Key filter count of a batch whose filter was never computed.
const NO_FILTER: u32 = u32::MAX;
const FILE_HEADER_LEN: usize = 32;
/// Offset of the clean marker: outside the CRC, so opening can clear it in
/// place with one small write.
const CLEAN_AT: u64 = 20;
const CLEAN: u32 = u32::from_le_bytes(*b"CLEN");

pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// Serializes the checkpoint body for journal end `end`, the log position
/// of entry `last`'s end. At a clean close the writer is sealed at `end`,
/// and every shard is covered to it (`writer` is `None`). Otherwise each
/// shard's covered position is the writer's end read under the shard's
/// lock, at or after `end`. Returns the body and the largest covered
/// position, which must be durable before the body is written.
fn encode(
    end: u64,
    last: Option<(u64, [u8; HEADER_LEN])>,
    next_id: u64,
    shards: &[Arc<JournalShard>],
    writer: Option<&Writer>,
) -> (Vec<u8>, u64) {
    let mut body = Vec::new();
    body.extend_from_slice(&end.to_le_bytes());
    let (last_pos, last_header) = last.unwrap_or((u64::MAX, [0; HEADER_LEN]));
    body.extend_from_slice(&last_pos.to_le_bytes());
    body.extend_from_slice(&last_header);
    body.extend_from_slice(&next_id.to_le_bytes());
    // Shards mostly share a handful of option sets: a million of them cost
    // a u32 each, and opening parses each set once.
    let mut option_sets: HashMap<String, u32> = HashMap::new();
    let mut option_texts: Vec<String> = Vec::new();
    let mut list = Vec::new();
    let mut count = 0u64;
    let mut max_covered = end;
    for shard in shards {
        let state = shard.state.read();
        if state.deleted {
            continue;
        }
        // Entries of a shard enter the log under its (write) lock, so
        // while this read lock is held none can, and every one before the
        // log's current end is reflected in `state`.
        let covered = writer.map_or(end, |w| w.end_position());
        max_covered = max_covered.max(covered);
        count += 1;
        list.extend_from_slice(&shard.id.to_le_bytes());
        list.extend_from_slice(&covered.to_le_bytes());
        list.extend_from_slice(&state.low_watermark.to_le_bytes());
        list.extend_from_slice(&state.next_offset.to_le_bytes());
        list.extend_from_slice(&state.anchor.to_le_bytes());
        list.push(state.low_dirty as u8);
        list.extend_from_slice(&(shard.name().len() as u32).to_le_bytes());
        list.extend_from_slice(shard.name().as_bytes());
        let options = shard.options.to_toml();
        let next_set = option_texts.len() as u32;
        let set = *option_sets.entry(options).or_insert_with_key(|text| {
            option_texts.push(text.clone());
            next_set
        });
        list.extend_from_slice(&set.to_le_bytes());
        encode_batches(&mut list, &state);
        list.extend_from_slice(&(state.groups.len() as u32).to_le_bytes());
        for (group, offset) in &state.groups {
            list.extend_from_slice(&(group.len() as u32).to_le_bytes());
            list.extend_from_slice(group.as_bytes());
            list.extend_from_slice(&offset.to_le_bytes());
        }
    }
    body.extend_from_slice(&(option_texts.len() as u32).to_le_bytes());
    for text in &option_texts {
        body.extend_from_slice(&(text.len() as u32).to_le_bytes());
        body.extend_from_slice(text.as_bytes());
    }
    body.extend_from_slice(&count.to_le_bytes());
    body.extend_from_slice(&list);
    (body, max_covered)
}

/// A shard's batch index: the count, then each batch.
fn encode_batches(out: &mut Vec<u8>, state: &ShardState) {
    out.extend_from_slice(&(state.batches.len() as u64).to_le_bytes());
    for b in &state.batches {
        out.extend_from_slice(&b.base_offset.to_le_bytes());
        out.extend_from_slice(&b.last_offset.to_le_bytes());
        out.extend_from_slice(&b.max_timestamp.to_le_bytes());
        out.extend_from_slice(&b.records.to_le_bytes());
        out.extend_from_slice(&b.len.to_le_bytes());
        out.extend_from_slice(&b.loc.segment.base.to_le_bytes());
        out.extend_from_slice(&b.loc.pos.to_le_bytes());
        match b.keys.get() {
            Some(filter) => {
                out.extend_from_slice(&(filter.hashes().len() as u32).to_le_bytes());
                for hash in filter.hashes() {
                    out.extend_from_slice(&hash.to_le_bytes());
                }
            }
            None => out.extend_from_slice(&NO_FILTER.to_le_bytes()),
        }
    }
}

/// Writes the clean-close checkpoint: the caller sealed the writer at
/// `end` and synced everything before it.
pub fn write(
    dir: &Path,
    end: u64,
    last: Option<(u64, [u8; HEADER_LEN])>,
    next_id: u64,
    shards: &[Arc<JournalShard>],
) -> Result<()> {
    let (body, _) = encode(end, last, next_id, shards, None);
    write_body(dir, &body, true)
}

/// Writes a checkpoint of the running journal (see the module comment):
/// `end` and `last` are the writer's position read before `shards` were
/// listed, `next_id` read after.
pub fn write_periodic(
    dir: &Path,
    writer: &Writer,
    (end, last): (u64, Option<(u64, [u8; HEADER_LEN])>),
    next_id: u64,
    shards: &[Arc<JournalShard>],
) -> Result<()> {
    let (body, max_covered) = encode(end, last, next_id, shards, Some(writer));
    writer.commit(max_covered, true)?;
    write_body(dir, &body, false)
}

/// Writes the file atomically: temp file, fdatasync, rename, directory
/// fsync. A crash at any point leaves either the old file or the new one,
/// never a mix.
fn write_body(dir: &Path, body: &[u8], clean: bool) -> Result<()> {
    let mut file_bytes = Vec::with_capacity(FILE_HEADER_LEN + body.len());
    file_bytes.extend_from_slice(&MAGIC.to_le_bytes());
    file_bytes.extend_from_slice(&VERSION.to_le_bytes());
    file_bytes.extend_from_slice(&(body.len() as u64).to_le_bytes());
    file_bytes.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
    file_bytes.extend_from_slice(&(if clean { CLEAN } else { 0 }).to_le_bytes());
    file_bytes.extend_from_slice(&[0u8; 8]);
    file_bytes.extend_from_slice(body);
    let temp = dir.join(TEMP_NAME);
    let io = |what: &str, e| Error::io(format!("{what} '{}'", temp.display()), e);
    let file = fs::create(&temp).map_err(|e| io("creating", e))?;
    fs::write_at(&file, &file_bytes, 0).map_err(|e| io("writing", e))?;
    fs::sync_data(&file).map_err(|e| io("fdatasync of", e))?;
    drop(file);
    fs::rename(&temp, &path(dir)).map_err(|e| io("renaming", e))?;
    sync_dir(dir)
}

/// Deletes the checkpoint (if any) durably.
pub fn remove(dir: &Path) -> Result<()> {
    let file = path(dir);
    match fs::remove_file(&file) {
        Ok(()) => sync_dir(dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing '{}'", file.display()), e)),
    }
}

/// Clears the clean marker in place (one 4-byte write + fdatasync): from
/// now on the journal may grow past the checkpoint's end, so recovery must
/// again prove that nothing valid follows the end before trusting it.
pub fn mark_dirty(dir: &Path) -> Result<()> {
    let file = path(dir);
    let io = |what: &str, e| Error::io(format!("{what} '{}'", file.display()), e);
    let f = OpenOptions::new()
        .write(true)
        .open(&file)
        .map_err(|e| io("opening", e))?;
    fs::write_at(&f, &[0u8; 4], CLEAN_AT).map_err(|e| io("writing", e))?;
    fs::sync_data(&f).map_err(|e| io("fdatasync of", e))
}

/// A checkpoint that matched the journal.
pub struct Loaded {
    /// Journal position up to which the checkpoint is complete.
    pub end: u64,
    /// Written by a clean close and nothing was appended since: the journal
    /// ends exactly at `end`.
    pub clean: bool,
    /// The entry ending at `end` (global position, header bytes).
    pub last: Option<(u64, [u8; HEADER_LEN])>,
    pub next_id: u64,
    pub shards: BTreeMap<u64, RecoveredShard>,
    /// Shard id → covered position: replay skips the shard's entries
    /// before it (they are in its state already).
    pub covered: HashMap<u64, u64>,
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let out = self.data.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(out)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn i64(&mut self) -> Option<i64> {
        Some(self.u64()? as i64)
    }
    fn string(&mut self) -> Option<String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
}

/// The segment holding global position `pos` (its end included).
fn segment_at(segments: &BTreeMap<u64, Arc<Segment>>, pos: u64) -> Option<&Arc<Segment>> {
    let (_, s) = segments.range(..=pos).next_back()?;
    (pos - s.base <= s.len).then_some(s)
}

/// Loads the checkpoint if it exists and agrees with `segments`. `None`
/// when it is missing, damaged, of another version or inconsistent with
/// the journal: the caller then replays the whole journal.
pub fn load(dir: &Path, segments: &[Arc<Segment>]) -> Option<Loaded> {
    let data = std::fs::read(path(dir)).ok()?;
    let header = data.get(..FILE_HEADER_LEN)?;
    let word = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().unwrap());
    if word(0) != MAGIC || word(4) != VERSION {
        return None;
    }
    let body_len = u64::from_le_bytes(header[8..16].try_into().unwrap());
    let body = data.get(FILE_HEADER_LEN..)?;
    if body.len() as u64 != body_len || crc32c::crc32c(body) != word(16) {
        return None;
    }
    let clean = word(CLEAN_AT as usize) == CLEAN;
    let map: BTreeMap<u64, Arc<Segment>> = segments.iter().map(|s| (s.base, s.clone())).collect();
    let mut r = Reader { data: body, pos: 0 };
    let end = r.u64()?;
    let last_pos = r.u64()?;
    let last_header: [u8; HEADER_LEN] = r.take(HEADER_LEN)?.try_into().ok()?;
    let next_id = r.u64()?;
    segment_at(&map, end)?;
    // The entry just before the end must be in the journal as it was: this
    // catches a journal replaced, truncated or restored behind our back.
    if last_pos == u64::MAX {
        if end != 0 {
            return None;
        }
    } else {
        let s = segment_at(&map, last_pos)?;
        let at = (last_pos - s.base) as usize;
        let bytes = s.data().get(at..)?;
        if bytes.get(..HEADER_LEN)? != last_header {
            return None;
        }
        let Parsed::Valid(h) = entry::parse(bytes, s.base) else {
            return None;
        };
        if last_pos + h.entry_len() != end {
            return None;
        }
    }
    let option_sets = (0..r.u32()?)
        .map(|_| Config::default().shard_options(Some(&r.string()?)).ok())
        .collect::<Option<Vec<_>>>()?;
    let count = r.u64()?;
    let mut shards = BTreeMap::new();
    let mut names = HashMap::new();
    let mut covered_by_id = HashMap::new();
    for _ in 0..count {
        let id = r.u64()?;
        let covered = r.u64()?;
        // A shard is covered from the end on, and never past the journal.
        segment_at(&map, covered)?;
        if covered < end || (clean && covered != end) {
            return None;
        }
        let low = r.i64()?;
        let next = r.i64()?;
        let anchor = r.u64()?;
        let low_dirty = r.u8()? != 0;
        let name = r.string()?;
        let options = option_sets.get(r.u32()? as usize)?.clone();
        let batches = r.u64()?;
        let mut state = ShardState {
            anchor,
            ..ShardState::default()
        };
        for _ in 0..batches {
            let base = r.i64()?;
            let last = r.i64()?;
            let max_ts = r.i64()?;
            let records = r.u32()?;
            let len = r.u32()?;
            let seg_base = r.u64()?;
            let pos = r.u64()?;
            let filter = match r.u32()? {
                NO_FILTER => None,
                n => {
                    // Bounded by the bytes left, so a damaged count cannot
                    // make us allocate more than the file holds.
                    let raw = r.take((n as usize).checked_mul(4)?)?;
                    let hashes = raw
                        .chunks_exact(4)
                        .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
                        .collect();
                    Some(KeyFilter::from_hashes(hashes)?)
                }
            };
            let segment = map.get(&seg_base)?;
            // The batch lies wholly in its segment and before the shard's
            // covered position.
            if pos.checked_add(len as u64)? > segment.len || seg_base + pos + len as u64 > covered {
                return None;
            }
            if last < base || state.batches.back().is_some_and(|b| b.last_offset >= base) {
                return None;
            }
            let batch = IndexEntry::in_segment(
                segment.clone(),
                pos,
                len as usize,
                base,
                last,
                max_ts,
                records,
            );
            if let Some(filter) = filter {
                let _ = batch.keys.set(filter);
            }
            state.push(batch);
        }
        for _ in 0..r.u32()? {
            let group = r.string()?;
            let offset = r.i64()?;
            state.groups.insert(group, offset);
        }
        state.low_watermark = low;
        state.next_offset = state.next_offset.max(next);
        state.low_dirty = low_dirty;
        if id >= next_id || names.insert(name.clone(), id).is_some() {
            return None;
        }
        covered_by_id.insert(id, covered);
        shards.insert(
            id,
            RecoveredShard {
                name,
                options,
                state,
            },
        );
    }
    if r.pos != body.len() {
        return None;
    }
    Some(Loaded {
        end,
        clean,
        last: (last_pos != u64::MAX).then_some((last_pos, last_header)),
        next_id,
        shards,
        covered: covered_by_id,
    })
}
