//! Opening a file shard: summarise its segments from their index files,
//! and scan (validating every batch's CRC-32C) what the index files do not
//! vouch for.
//!
//! Damage rules, the Journal engine's (docs/FORMAT.md, "Recovery"): an
//! invalid batch with nothing valid after it — in its segment or any later
//! one — is a torn tail: the file is cut there (ftruncate + fdatasync) and
//! later segments are removed. An invalid batch followed by a valid one is
//! damage in the middle: the open fails with `Corruption`. The segment
//! format differs from the journal's (bare Kafka batches, no entry
//! framing), so what is shared is the batch validation of `src/format`.
//!
//! What is scanned: a segment whose `.index`/`.timeindex` is missing,
//! damaged or covers a different length than the log (behind or ahead);
//! and, unless the last close was clean, the last segment always (the one
//! a crash can have left half-written). Sealed segments were fdatasynced
//! with their indexes when they rolled.

use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use memmap2::Mmap;

use super::groups::GroupLog;
use super::segment::{self, SegmentMeta};
use super::shard::{FileShard, Meta, State, Writer, META_FILE};
use super::Shared;
use crate::config::{Config, Durability, ShardOptions};
use crate::io::fs;
use crate::{Error, Result};

fn read_meta(dir: &Path) -> Result<Meta> {
    let path = dir.join(META_FILE);
    let bytes =
        std::fs::read(&path).map_err(|e| Error::io(format!("reading '{}'", path.display()), e))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::corruption(format!("'{}' is not valid: {e}", path.display())))
}

/// The segments' base offsets; a `read_only` listing leaves the leftovers
/// of interrupted rewrites in place.
fn list_segments(dir: &Path, read_only: bool) -> Result<Vec<i64>> {
    let mut bases = Vec::new();
    let entries =
        std::fs::read_dir(dir).map_err(|e| Error::io(format!("listing '{}'", dir.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(format!("listing '{}'", dir.display()), e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".cleaned") || name.ends_with(".tmp") {
            if read_only {
                continue;
            }
            // A rewrite or metadata update a crash interrupted before its
            // rename: the old file is still in place and complete.
            let path = entry.path();
            fs::remove_file(&path)
                .map_err(|e| Error::io(format!("removing '{}'", path.display()), e))?;
        } else if let Some(base) = segment::parse_log_name(&name) {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

/// A read-only map of a whole file (none for an empty one).
fn map_file(path: &Path) -> Result<Option<Mmap>> {
    let file = std::fs::File::open(path)
        .map_err(|e| Error::io(format!("opening '{}'", path.display()), e))?;
    let len = file
        .metadata()
        .map_err(|e| Error::io(format!("stat '{}'", path.display()), e))?
        .len();
    if len == 0 {
        return Ok(None);
    }
    // SAFETY: read-only, during recovery, before any writer or reader of
    // this shard exists; the map is dropped before the file is truncated.
    let map = unsafe { Mmap::map(&file) }
        .map_err(|e| Error::io(format!("mapping '{}'", path.display()), e))?;
    Ok(Some(map))
}

fn has_valid_batch(path: &Path) -> Result<bool> {
    Ok(map_file(path)?.is_some_and(|data| {
        segment::valid_batch_at(&data, 0, i64::MIN).is_ok()
            || segment::valid_batch_after(&data, 0, i64::MIN).is_some()
    }))
}

/// The outcome of scanning one segment.
struct Scanned {
    meta: SegmentMeta,
    /// Where the valid batches end, if something invalid follows.
    torn_at: Option<u64>,
}

/// Where the segment at `base` stops being known durable, if anywhere:
/// damage from there on is a torn write (a power cut keeps any subset of
/// the writes no completed fdatasync covered), cut even with valid
/// batches after it. Sealed segments were fdatasynced when they rolled.
/// Nothing in an `os` or `none` shard's active segment was promised to
/// survive a power cut; an `fsync` shard's is trusted up to its
/// synced-position record (none: the older rule, all of it trusted).
fn unproven_from(dir: &Path, base: i64, last: bool, options: &ShardOptions) -> Option<u64> {
    if !last {
        return None;
    }
    if options.durability != Durability::Fsync {
        return Some(0);
    }
    segment::load_synced(dir, base)
}

/// Scans the segment at `base`. Damage followed by a valid batch is
/// corruption, unless it lies at or past `unproven`: then the segment is
/// cut there like at a torn tail.
fn scan(dir: &Path, base: i64, unproven: Option<u64>) -> Result<Scanned> {
    let path = dir.join(segment::log_name(base));
    let mut meta = SegmentMeta::new(base);
    let Some(data) = map_file(&path)? else {
        return Ok(Scanned {
            meta,
            torn_at: None,
        });
    };
    let mut pos = 0u64;
    let mut floor = base;
    while pos < data.len() as u64 {
        // Offsets are dense within and across segments (compaction leaves
        // empty batches), so a batch must start exactly where the previous
        // one ended: the only check on a base offset, which the CRC does
        // not cover.
        let checked = segment::valid_batch_at(&data, pos, floor).and_then(|batch| {
            if batch.base_offset == floor {
                Ok(batch)
            } else {
                Err(Error::corruption(format!(
                    "batch base offset {} where {floor} was expected",
                    batch.base_offset
                )))
            }
        });
        match checked {
            Ok(batch) => {
                meta.push(&batch);
                floor = batch.last_offset + 1;
                pos = batch.end();
            }
            Err(e) => {
                let torn = unproven.is_some_and(|from| pos >= from);
                let after = (!torn)
                    .then(|| segment::valid_batch_after(&data, pos, floor))
                    .flatten();
                if let Some(next) = after {
                    return Err(Error::corruption(format!(
                        "file segment '{}' at byte {pos}: {e}, but a valid batch follows at \
                         byte {next}",
                        path.display()
                    )));
                }
                return Ok(Scanned {
                    meta,
                    torn_at: Some(pos),
                });
            }
        }
    }
    Ok(Scanned {
        meta,
        torn_at: None,
    })
}

pub fn open_shard(
    shared: &Arc<Shared>,
    id: u64,
    dir: PathBuf,
    clean: bool,
) -> Result<Arc<FileShard>> {
    let meta = read_meta(&dir)?;
    let options = Config::default().shard_options(Some(&meta.options))?;
    let read_only = shared.read_only;
    let bases = list_segments(&dir, read_only)?;
    let mut segments: VecDeque<SegmentMeta> = VecDeque::new();
    let mut next = i64::MIN;
    // Whether the last segment's index files match it as it is.
    let mut active_indexed = false;
    for (i, &base) in bases.iter().enumerate() {
        let path = dir.join(segment::log_name(base));
        if i > 0 && base != next {
            return Err(Error::corruption(format!(
                "file segment '{}' starts at offset {base}, but the previous segment \
                 ends at {next}",
                path.display()
            )));
        }
        let last = i + 1 == bases.len();
        let len = std::fs::metadata(&path)
            .map_err(|e| Error::io(format!("stat '{}'", path.display()), e))?
            .len();
        let loaded = SegmentMeta::load_indexes(&dir, base, len);
        let seg = match loaded {
            Some(seg) if clean || !last => {
                active_indexed = last;
                seg
            }
            _ => {
                let scanned = scan(&dir, base, unproven_from(&dir, base, last, &options))?;
                if let Some(torn) = scanned.torn_at {
                    for &later in &bases[i + 1..] {
                        let later_path = dir.join(segment::log_name(later));
                        if has_valid_batch(&later_path)? {
                            return Err(Error::corruption(format!(
                                "file segment '{}' is damaged at byte {torn}, but segment '{}' \
                                 after it holds valid batches",
                                path.display(),
                                later_path.display()
                            )));
                        }
                    }
                    if read_only {
                        report_torn_tail(shared, &path, len - torn, "left (read-only) and ignored");
                        segments.push_back(scanned.meta);
                        break;
                    }
                    // A torn tail: cut, and later (empty or garbage)
                    // segments removed.
                    let file = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(|e| Error::io(format!("opening '{}'", path.display()), e))?;
                    fs::set_len(&file, torn)
                        .and_then(|()| fs::sync_data(&file))
                        .map_err(|e| Error::io(format!("truncating '{}'", path.display()), e))?;
                    report_torn_tail(shared, &path, len - torn, "cut");
                    for &later in &bases[i + 1..] {
                        segment::remove_files(&dir, later)?;
                    }
                    segment::sync_dir(&dir)?;
                }
                shared.rebuilt_indexes.fetch_add(1, Ordering::Relaxed);
                let seg = scanned.meta;
                if scanned.torn_at.is_none() && !last && !read_only {
                    // Rebuilt indexes of a sealed segment are written back,
                    // so the next open need not scan it again.
                    seg.write_indexes(&dir)?;
                }
                if scanned.torn_at.is_some() {
                    segments.push_back(seg);
                    break;
                }
                seg
            }
        };
        next = seg.next;
        segments.push_back(seg);
    }
    if segments.is_empty() {
        // Every segment was removed (or a crash left none): start a fresh
        // active segment where the offsets continue (created by the first
        // append when read-only: it holds nothing to read).
        let base = meta.next.max(meta.low).max(0);
        segments.push_back(SegmentMeta::new(base));
    }
    if bases.is_empty() && !read_only {
        let base = segments[0].base;
        let path = dir.join(segment::log_name(base));
        fs::open_creating(
            OpenOptions::new().write(true).create(true).truncate(false),
            &path,
        )
        .map_err(|e| Error::io(format!("creating '{}'", path.display()), e))?;
        segment::sync_dir(&dir)?;
    }
    if !read_only && !dir.join(segment::SYNCED_FILE).exists() {
        // A shard from before synced-position records: from now on its
        // recovery can tell a torn write from damage too.
        let active = segments.back().expect("at least one segment");
        segment::record_synced(&dir, active.base, 0);
        segment::sync_dir(&dir)?;
    }
    let next_offset = meta.next.max(segments.back().map_or(0, |s| s.next));
    let low = meta.low.max(segments[0].base).min(next_offset);
    let active = segments.back().expect("at least one segment");
    let writer = Writer {
        file: None,
        base: active.base,
        written: active.size,
        indexed: active_indexed.then_some(active.size),
        ..Writer::default()
    };
    let state = State::new(segments, low, next_offset);
    let torn_anywhere = options.durability != Durability::Fsync;
    let mut groups = GroupLog::open(&dir, shared.read_only, torn_anywhere)?;
    if !read_only && torn_anywhere {
        // The offsets are in a file of their own: a power cut can keep an
        // `os` or `none` shard's commit and lose the appends before it. An
        // offset past the shard's end would make its group skip what gets
        // those offsets next. (An `fsync` shard's commits and appends are
        // each durable before the next: one past its end was meant.)
        for (group, offset) in groups.offsets() {
            if offset > next_offset {
                groups.save(&group, Some(next_offset), Durability::Fsync)?;
            }
        }
    }
    let shard = Arc::new(
        FileShard::new(id, &meta.name, options, dir, shared.clone(), state, writer)
            .with_groups(groups),
    );
    shard.after_recovery()?;
    Ok(shard)
}

/// Counts and logs `bytes` of a torn tail of `path` that recovery `done`.
fn report_torn_tail(shared: &Shared, path: &Path, bytes: u64, done: &str) {
    shared.truncated_bytes.fetch_add(bytes, Ordering::Relaxed);
    crate::log::emit(
        crate::log::Level::Warn,
        &format!(
            "file engine recovery: {done} a torn tail of {bytes} bytes of '{}'",
            path.display()
        ),
    );
}
