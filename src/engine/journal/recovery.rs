//! Opening a journal: load the index checkpoint when one matches the
//! journal (`ckpt`), then scan the segments in order from its end position
//! (from the start without one), validate every entry's CRC, and replay the
//! entries into shard indexes.
//!
//! Damage rules (docs/FORMAT.md, "Recovery"):
//! - an invalid entry (bad magic, kind, length or CRC) with no valid entry
//!   anywhere after it is a torn tail — a crash during a write. It is
//!   truncated (zeroed with pwrite + fdatasync; later segments holding
//!   nothing valid are removed) and the journal continues from there;
//! - an invalid entry, or a hole of zeros, followed by a valid entry is
//!   corruption in the middle: `tolerate_tail` (the default) refuses to open
//!   with `Corruption`; `skip_corrupt` skips to the next valid entry.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use super::ckpt;
use super::entry::{self, Checkpoint, Kind, Parsed, HEADER_LEN};
use super::index::{IndexEntry, ShardState};
use super::segment::{self, sync_dir, Segment};
use crate::config::{Config, JournalConfig, RecoveryMode, ShardOptions};
use crate::engine::index::BatchIndex;
use crate::format::BatchHeader;
use crate::io::fs;
use crate::time::now_ms;
use crate::{Error, Result};

pub struct RecoveredShard {
    pub name: String,
    pub options: ShardOptions,
    pub state: ShardState,
}

pub struct Recovered {
    /// Segments in log order; the last one is where appends continue.
    pub segments: Vec<Arc<Segment>>,
    /// Position in the last segment after its last valid entry.
    pub tail: u64,
    pub shards: BTreeMap<u64, RecoveredShard>,
    pub next_id: u64,
    pub entries: u64,
    pub truncated_bytes: u64,
    pub skipped_bytes: u64,
    /// The newest valid entry (global position, header bytes).
    pub last: Option<(u64, [u8; HEADER_LEN])>,
    /// End position of the index checkpoint replay started from.
    pub checkpoint_end: Option<u64>,
}

fn corruption_here(segment: &Segment, pos: u64, what: &str, next_valid: &str) -> Error {
    Error::corruption(format!(
        "journal segment '{}' at byte {pos}: {what}, but valid entries follow ({next_valid}); \
         set [journal] recovery_mode = \"skip_corrupt\" to open anyway and lose the damaged range",
        segment.path.display()
    ))
}

/// Lists `*.log` segments of `dir` in order.
fn list_segments(dir: &Path) -> Result<Vec<(u64, std::path::PathBuf)>> {
    let mut found = Vec::new();
    let entries =
        std::fs::read_dir(dir).map_err(|e| Error::io(format!("listing '{}'", dir.display()), e))?;
    for item in entries {
        let item = item.map_err(|e| Error::io(format!("listing '{}'", dir.display()), e))?;
        let name = item.file_name();
        if let Some(base) = name.to_str().and_then(segment::parse_name) {
            found.push((base, item.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// Bytes from `from` to the end of the data written into `data`.
fn written_from(data: &[u8], from: u64) -> u64 {
    data[from as usize..]
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |last| last as u64 + 1)
}

/// Where the bytes of a cut at `from` end: the end of the written data,
/// but in a recycled file no further than the first entry of its earlier
/// use after every valid entry (the rest is that use's, parsed as stale).
fn cut_end(segment: &Segment, from: u64) -> u64 {
    let data = segment.data();
    let written = from + written_from(data, from);
    // No entry starts in the zeros past the written data: the scan stops
    // there rather than read the rest of a fresh segment again.
    let mut live = from;
    while let Some(found) = find_valid_until(segment, live, written) {
        let Parsed::Valid(header) = entry::parse(&data[found as usize..], segment.base) else {
            unreachable!("find_valid found a valid entry");
        };
        live = found + header.entry_len();
    }
    let end = entry::find_stale_before(data, segment.base, live, written).unwrap_or(written);
    segment.release_range(live, end);
    end
}

/// Zeroes `[from, cut_end)` of a torn segment.
fn zero_tail(segment: &Segment, from: u64) -> Result<u64> {
    let len = cut_end(segment, from) - from;
    zero_range(segment, from, len)
}

/// Writes `len` zeros at `from` and fdatasyncs them.
fn zero_range(segment: &Segment, from: u64, len: u64) -> Result<u64> {
    if len == 0 {
        return Ok(0);
    }
    let zeros = vec![0u8; 1 << 20];
    let mut pos = from;
    while pos < from + len {
        let n = (from + len - pos).min(zeros.len() as u64) as usize;
        fs::write_at(&segment.file, &zeros[..n], pos)
            .map_err(|e| Error::io(format!("truncating '{}'", segment.path.display()), e))?;
        pos += n as u64;
    }
    fs::sync_data(&segment.file)
        .map_err(|e| Error::io(format!("fdatasync of '{}'", segment.path.display()), e))?;
    Ok(len)
}

/// Whether damage at `pos` of `segments[index]` lies in the journal's
/// unsynced tail: at or past every position proven durable, by the
/// entries before it (`proven`) and by the `Synced` entries after it. A
/// power cut may persist any subset of the blocks written since the last
/// completed fdatasync, so an invalid entry there followed by valid ones
/// is a torn group nobody was told is durable, not corruption; so is an
/// invalid entry with nothing valid after it anywhere.
fn unsynced_tail(segments: &[Arc<Segment>], index: usize, pos: u64, proven: u64) -> bool {
    let mut proven = proven;
    let mut valid_after = false;
    for (i, segment) in segments.iter().enumerate().skip(index) {
        let data = segment.data();
        let mut at = if i == index { pos + entry::ALIGN } else { 0 };
        while let Some(found) = find_valid(segment, at) {
            valid_after = true;
            let Parsed::Valid(header) = entry::parse(&data[found as usize..], segment.base) else {
                unreachable!("find_valid found a valid entry");
            };
            if header.kind == Kind::Synced {
                proven = proven.max(header.aux);
            }
            at = found + header.entry_len();
        }
    }
    !valid_after || segments[index].base + pos >= proven
}

/// Cuts the journal at `pos` of `segments[index]`: removes the later
/// segments, newest first, each removal made durable before the next, then
/// zeroes the rest of that segment's data. A power cut in between leaves
/// the torn tail as it was, followed by a prefix of the later segments,
/// and the next open makes the same cut; zeroing first could leave a
/// later segment behind a zeroed tail, which replay would take for the
/// next part of the journal. A `read_only` recovery only leaves them out
/// of the journal it opens, and counts the bytes.
fn cut_tail(
    dir: &Path,
    segments: &mut Vec<Arc<Segment>>,
    index: usize,
    pos: u64,
    out: &mut Recovered,
    read_only: bool,
) -> Result<()> {
    let doomed: Vec<Arc<Segment>> = segments.drain(index + 1..).collect();
    for later in doomed.iter().rev() {
        out.truncated_bytes += cut_end(later, 0);
        if read_only {
            continue;
        }
        fs::remove_file(&later.path)
            .map_err(|e| Error::io(format!("removing '{}'", later.path.display()), e))?;
        sync_dir(dir)?;
    }
    out.truncated_bytes += if read_only {
        cut_end(&segments[index], pos) - pos
    } else {
        zero_tail(&segments[index], pos)?
    };
    Ok(())
}

/// Replays the journal in `dir`. A `read_only` replay changes no file: a
/// torn tail is left in place (and out of the result), a stale checkpoint
/// is ignored rather than removed.
pub fn recover(dir: &Path, config: &JournalConfig, read_only: bool) -> Result<Recovered> {
    let mut segments = Vec::new();
    for (base, path) in list_segments(dir)? {
        let segment = Segment::open(path, base, HEADER_LEN as u64, read_only)?;
        if let Some(prev) = segments.last() {
            let prev: &Arc<Segment> = prev;
            if prev.base + prev.len > base {
                return Err(Error::corruption(format!(
                    "journal segments '{}' and '{}' overlap",
                    prev.path.display(),
                    segment.path.display()
                )));
            }
        }
        segments.push(Arc::new(segment));
    }
    let mut out = Recovered {
        segments: Vec::new(),
        tail: 0,
        shards: BTreeMap::new(),
        next_id: 1,
        entries: 0,
        truncated_bytes: 0,
        skipped_bytes: 0,
        last: None,
        checkpoint_end: None,
    };
    let now = now_ms();
    // A checkpoint that matches the journal replaces the replay of
    // everything before its end; one that does not is deleted, so that it
    // cannot come to match later (e.g. by a journal growing past its end).
    let loaded = ckpt::load(dir, &segments);
    let mut index = 0;
    let mut resume = 0u64;
    // (segment index, position) of a clean checkpoint's end.
    let mut clean_end = None;
    // Shard id → position below which its entries are in the checkpoint.
    let mut covered = std::collections::HashMap::new();
    match loaded {
        Some(loaded) => {
            index = segments
                .iter()
                .rposition(|s| s.base <= loaded.end)
                .expect("ckpt::load checked the end's segment");
            resume = loaded.end - segments[index].base;
            if loaded.clean {
                clean_end = Some((index, resume));
            }
            out.segments.extend(segments[..index].iter().cloned());
            out.shards = loaded.shards;
            for shard in out.shards.values_mut() {
                shard.state.enforce_retention(&shard.options, now);
            }
            out.next_id = loaded.next_id;
            out.last = loaded.last;
            out.checkpoint_end = Some(loaded.end);
            covered = loaded.covered;
        }
        None if read_only => {}
        None => ckpt::remove(dir)?,
    }
    let skip = config.recovery_mode == RecoveryMode::SkipCorrupt;
    // Everything before this global position is known to have been on
    // stable storage: a checkpoint only covers synced entries, and each
    // `Synced` entry records a position.
    let mut proven = out.checkpoint_end.unwrap_or(0);
    let mut catalogue = Catalogue::default();
    let mut valid: Vec<(Arc<Segment>, u64, entry::EntryHeader)> = Vec::new();
    let mut released = PageReleaser::default();
    'segments: while index < segments.len() {
        let segment = segments[index].clone();
        let data = segment.data();
        let mut pos = std::mem::take(&mut resume);
        loop {
            released.at(&segment, pos);
            // `pos` may lie past the end when a truncated file ends inside
            // the last entry's padding.
            let parsed = entry::parse(data.get(pos as usize..).unwrap_or(&[]), segment.base);
            match parsed {
                Parsed::Valid(header) => {
                    if header.kind == Kind::Synced {
                        proven = proven.max(header.aux);
                    }
                    let payload_start = pos as usize + HEADER_LEN;
                    let payload = &data[payload_start..payload_start + header.payload_len as usize];
                    catalogue.note(&header, payload)?;
                    let header_bytes = data[pos as usize..payload_start].try_into();
                    out.last = Some((segment.base + pos, header_bytes.expect("32 bytes")));
                    valid.push((segment.clone(), pos, header));
                    out.entries += 1;
                    pos += header.entry_len();
                }
                // An entry of the file's earlier use: the end of this
                // segment's data, as zeros are.
                Parsed::Empty | Parsed::Stale => {
                    // At a clean checkpoint's end in the last segment the
                    // close sealed the log and nothing was appended since
                    // (opening clears the mark before any write): the rest
                    // is unused preallocated space, not worth scanning (up
                    // to `segment_bytes`) for a valid entry.
                    if clean_end == Some((index, pos)) && index + 1 == segments.len() {
                        break;
                    }
                    // Normally the end of this segment's data. Valid entries
                    // after a zeroed header mean a hole in the middle, or
                    // the torn, unsynced tail a power cut leaves.
                    if let Some(next) = find_valid(&segment, pos + entry::ALIGN) {
                        if unsynced_tail(&segments, index, pos, proven) {
                            cut_tail(dir, &mut segments, index, pos, &mut out, read_only)?;
                            break;
                        }
                        if !skip {
                            return Err(corruption_here(
                                &segment,
                                pos,
                                "zeroed entry header",
                                &format!("at byte {next}"),
                            ));
                        }
                        out.skipped_bytes += next - pos;
                        pos = next;
                        continue;
                    }
                    break;
                }
                Parsed::Invalid(reason) => {
                    let valid_after = find_valid(&segment, pos + entry::ALIGN);
                    if unsynced_tail(&segments, index, pos, proven) {
                        cut_tail(dir, &mut segments, index, pos, &mut out, read_only)?;
                        break;
                    }
                    if let Some(next) = valid_after {
                        if !skip {
                            return Err(corruption_here(
                                &segment,
                                pos,
                                &reason,
                                &format!("at byte {next}"),
                            ));
                        }
                        out.skipped_bytes += next - pos;
                        pos = next;
                        continue;
                    }
                    let later = segments[index + 1..]
                        .iter()
                        .find(|s| find_valid(s, 0).is_some());
                    if let Some(later) = later {
                        if !skip {
                            return Err(corruption_here(
                                &segment,
                                pos,
                                &reason,
                                &format!("in '{}'", later.path.display()),
                            ));
                        }
                        out.skipped_bytes += segment.len - pos;
                        out.segments.push(segment);
                        index += 1;
                        continue 'segments;
                    }
                    unreachable!("a damaged entry with nothing valid after it is a torn tail");
                }
            }
        }
        if index + 1 < segments.len() && !read_only && pos < segment.len {
            // A segment's unused end is zeroed when the log rolls past it;
            // what a crash left there (an earlier use's entries) goes now,
            // or the file could later be recycled holding two uses'.
            let residue = written_from(data, pos);
            segment.release_range(pos, segment.len);
            zero_range(&segment, pos, residue)?;
        }
        out.tail = pos;
        out.segments.push(segment);
        index += 1;
    }
    // Shards the checkpoint holds whose deletion was logged after it
    // (`apply` ignores every entry of a deleted id, the deletion included).
    out.shards.retain(|id, _| !catalogue.deleted.contains(id));
    released.finish();
    // Second pass: replay, now that every shard's catalogue is known.
    for (segment, pos, header) in valid {
        released.at(&segment, pos);
        let start = pos as usize + HEADER_LEN;
        let payload = &segment.data()[start..start + header.payload_len as usize];
        // A periodic checkpoint snapshotted this shard after this entry.
        if covered
            .get(&header.shard_id)
            .is_some_and(|&c| segment.base + pos < c)
        {
            out.next_id = out.next_id.max(header.shard_id + 1);
            continue;
        }
        apply(&mut out, &catalogue, &segment, pos, &header, payload, now)?;
    }
    for shard in out.shards.values_mut() {
        shard.state.recompute_running_max();
    }
    released.finish();
    if clean_end.is_none() && !read_only {
        sync_after_crash(&out.segments)?;
    }
    if clean_end.is_some() && !read_only {
        // Appends may follow from now on: a later open must no longer
        // assume the journal ends at the checkpoint's end. Cleared only
        // once the open succeeds (a refused open changes nothing), and
        // before any append.
        ckpt::mark_dirty(dir)?;
    }
    Ok(out)
}

/// After a crash of the process (not of the machine) the journal's last
/// writes may still be only in the page cache. They are made durable
/// before anything new is written, so that no new fdatasync can make later
/// entries durable while earlier ones may still be lost to a power cut.
fn sync_after_crash(segments: &[Arc<Segment>]) -> Result<()> {
    for segment in segments {
        fs::sync_data(&segment.file)
            .map_err(|e| Error::io(format!("fdatasync of '{}'", segment.path.display()), e))?;
    }
    Ok(())
}

/// `entry::find_valid` over a whole segment, a window at a time, each
/// window's page mappings dropped once scanned: looking past a zeroed
/// header reads the rest of the segment (up to `segment_bytes` of unused,
/// preallocated space), which must not stay in the process's RSS.
fn find_valid(segment: &Segment, from: u64) -> Option<u64> {
    find_valid_until(segment, from, segment.data().len() as u64)
}

/// `find_valid` for entries starting before `to`.
fn find_valid_until(segment: &Segment, from: u64, to: u64) -> Option<u64> {
    let data = segment.data();
    let mut start = from;
    while start < to {
        let end = (start + RELEASE_EVERY).min(to);
        let found = entry::find_valid_before(data, segment.base, start, end);
        segment.release_range(start, end);
        if found.is_some() {
            return found;
        }
        start = end;
    }
    None
}

/// Drops the page mappings behind recovery's scans as they advance: they
/// touch every page of the journal, and a process's mapped file pages count
/// in its RSS, so without this the peak RSS of an open would be the size of
/// the journal replayed (up to `segment_bytes` per segment). The pages stay
/// in the page cache.
#[derive(Default)]
struct PageReleaser {
    current: Option<Arc<Segment>>,
    from: u64,
}

/// Bytes a scan may leave mapped behind it.
const RELEASE_EVERY: u64 = 32 << 20;

impl PageReleaser {
    /// The scan is at `pos` of `segment`.
    fn at(&mut self, segment: &Arc<Segment>, pos: u64) {
        match &self.current {
            Some(current) if Arc::ptr_eq(current, segment) => {
                if pos >= self.from + RELEASE_EVERY {
                    current.release_range(self.from, pos);
                    self.from = pos;
                }
            }
            _ => {
                self.finish();
                self.current = Some(segment.clone());
                self.from = pos;
            }
        }
    }

    /// Releases the segment the scan was in.
    fn finish(&mut self) {
        if let Some(segment) = self.current.take() {
            segment.release_pages();
        }
    }
}

/// What the first pass learns about shard ids from the whole journal.
///
/// Replay needs it because a shard's surviving catalogue record can come
/// AFTER some of its batches: when the segment holding a shard's creation
/// record is removed, a fresh checkpoint is written into the newest segment,
/// behind batches of the shard that sit in older, still present segments.
#[derive(Default)]
struct Catalogue {
    /// id → (name, options TOML) from any of its checkpoints.
    shards: std::collections::HashMap<u64, (String, String)>,
    /// Ids whose deletion is in the journal: everything about them is
    /// ignored (ids are never reused).
    deleted: std::collections::HashSet<u64>,
}

impl Catalogue {
    fn note(&mut self, header: &entry::EntryHeader, payload: &[u8]) -> Result<()> {
        match header.kind {
            Kind::Checkpoint => {
                let c = Checkpoint::decode(payload)?;
                self.shards.insert(header.shard_id, (c.name, c.options));
            }
            Kind::DeleteShard => {
                self.deleted.insert(header.shard_id);
            }
            _ => {}
        }
        Ok(())
    }
}

fn parse_options(text: &str, where_: &str) -> Result<ShardOptions> {
    Config::default()
        .shard_options(Some(text))
        .map_err(|e| Error::corruption(format!("{where_}: {e}")))
}

fn batch_entry(
    segment: &Arc<Segment>,
    pos: u64,
    payload: &[u8],
    where_: &str,
) -> Result<(IndexEntry, i64)> {
    let header = BatchHeader::parse(payload)?;
    if header.total_len() != payload.len() {
        return Err(Error::corruption(format!(
            "{where_}: batch length {} does not match its entry ({} bytes)",
            header.total_len(),
            payload.len()
        )));
    }
    let entry = IndexEntry::in_segment(
        segment.clone(),
        pos + HEADER_LEN as u64,
        payload.len(),
        header.base_offset,
        header.last_offset(),
        header.max_timestamp,
        header.record_count.max(0) as u32,
    );
    Ok((entry, header.base_offset))
}

fn apply(
    out: &mut Recovered,
    catalogue: &Catalogue,
    segment: &Arc<Segment>,
    pos: u64,
    header: &entry::EntryHeader,
    payload: &[u8],
    now: i64,
) -> Result<()> {
    let id = header.shard_id;
    let where_ = || format!("journal segment '{}' at byte {pos}", segment.path.display());
    out.next_id = out.next_id.max(id + 1);
    if catalogue.deleted.contains(&id) {
        return Ok(());
    }
    if header.kind != Kind::Checkpoint && !out.shards.contains_key(&id) {
        // Batches ahead of the shard's surviving checkpoint (see
        // `Catalogue`): the shard exists from here on; the checkpoint
        // further on sets its watermarks.
        let Some((name, options)) = catalogue.shards.get(&id) else {
            return Ok(()); // no catalogue record survives: a removed shard
        };
        let options = parse_options(options, &where_())?;
        out.shards.retain(|_, s| &s.name != name);
        out.shards.insert(
            id,
            RecoveredShard {
                name: name.clone(),
                options,
                state: ShardState {
                    anchor: segment.base,
                    ..ShardState::default()
                },
            },
        );
    }
    match header.kind {
        Kind::Checkpoint => {
            let c = Checkpoint::decode(payload)?;
            match out.shards.get_mut(&id) {
                Some(shard) => {
                    shard.state.next_offset = shard.state.next_offset.max(c.next);
                    shard.state.raise_low(c.low);
                    shard.state.anchor = segment.base;
                    shard.state.low_dirty = false;
                }
                None => {
                    let options = parse_options(&c.options, &where_())?;
                    // A name belongs to one live shard; a newer id wins.
                    out.shards.retain(|_, s| s.name != c.name);
                    let state = ShardState {
                        index: BatchIndex {
                            low_watermark: c.low,
                            next_offset: c.next,
                            ..BatchIndex::default()
                        },
                        anchor: segment.base,
                        ..ShardState::default()
                    };
                    out.shards.insert(
                        id,
                        RecoveredShard {
                            name: c.name,
                            options,
                            state,
                        },
                    );
                }
            }
        }
        Kind::DeleteShard => {
            out.shards.remove(&id);
        }
        Kind::Batch => {
            let Some(shard) = out.shards.get_mut(&id) else {
                return Ok(());
            };
            let (entry, base) = batch_entry(segment, pos, payload, &where_())?;
            if base != header.aux as i64 || base < shard.state.next_offset {
                return Err(Error::corruption(format!(
                    "{}: batch at offset {base} for shard '{}' whose next offset is {}",
                    where_(),
                    shard.name,
                    shard.state.next_offset
                )));
            }
            shard.state.push(entry);
            shard.state.enforce_retention(&shard.options, now);
        }
        Kind::Rewrite => {
            let Some(shard) = out.shards.get_mut(&id) else {
                return Ok(());
            };
            let (entry, base) = batch_entry(segment, pos, payload, &where_())?;
            let state = &mut shard.state;
            match state.position_of(base) {
                Ok(i) => state.replace(i, Some(entry)),
                // The original's segment is gone: the rewrite is the batch.
                // Only a batch was ever rewritten that was live then, so
                // nothing earlier in the log can have dropped it; what
                // dropped it later follows in the log. Its base may lie
                // below the low watermark (rewritten again after a delete
                // moved the watermark into it), its records do not.
                Err(i) if entry.last_offset >= state.low_watermark => state.insert(i, entry),
                Err(_) => {}
            }
        }
        Kind::Synced => {}
        Kind::Truncate => {
            // Replay may know less than the live shard did (its older
            // segments removed, its watermarks in a checkpoint further on):
            // the cut is applied as logged.
            if let Some(shard) = out.shards.get_mut(&id) {
                shard.state.truncate(header.aux as i64);
            }
        }
        Kind::DropBatch => {
            if let Some(shard) = out.shards.get_mut(&id) {
                if let Ok(i) = shard.state.position_of(header.aux as i64) {
                    shard.state.replace(i, None);
                }
            }
        }
        Kind::GroupOffset => {
            if let Some(shard) = out.shards.get_mut(&id) {
                let group = std::str::from_utf8(payload).map_err(|_| {
                    Error::corruption(format!("{}: a group name that is not UTF-8", where_()))
                })?;
                match header.aux {
                    entry::FORGET_GROUP => shard.state.groups.remove(group),
                    offset => shard.state.groups.insert(group.to_string(), offset as i64),
                };
            }
        }
    }
    Ok(())
}
