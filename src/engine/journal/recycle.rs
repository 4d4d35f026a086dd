//! Recycled segment files: a reclaimed segment's file is kept (renamed
//! `<its start position>.free`) and taken as a later segment instead of
//! creating a new one.
//!
//! Why: a new file's blocks are either zeroed ahead of the writer (written
//! twice, see `prefill`) or converted from unwritten extents by the
//! fdatasync after each group commit (a filesystem-journal commit each).
//! A recycled file's blocks are all written already, so appends overwrite
//! them and an fdatasync flushes data alone, as in RocksDB
//! (`recycle_log_file_num`) and raft-engine (`enable-log-recycle`).
//!
//! Correctness: the file still holds its previous use's entries past the
//! new writer's position, each intact. Entries carry their segment's tag
//! and a CRC over the segment's start position (`entry::place`), so those
//! parse as `Stale` for the new segment. That is exact only if a file holds
//! entries of one earlier use alone, with a tag other than the new one:
//! - a file is recycled only when its entries are tagged
//!   (`Segment::tagged`), and nothing past its data is left from an
//!   earlier use: the writer zeroes a segment's unused end when it rolls,
//!   and recovery zeroes whatever lies past the data of a segment that is
//!   not the last (a crash before that zeroing reached the disk);
//! - a free file is taken only for a segment whose tag differs from the
//!   file's previous one (tags repeat every 1 TiB of log; such a file is
//!   passed over);
//! - a file still mapped by a reader (a zero-copy view or a transfer) is
//!   deleted, never overwritten: its readers keep the bytes they hold.
//!
//! Crash safety: renames are fsynced in the directory one at a time, as
//! removals are. A crash that loses the rename into the pool leaves the
//! old segment in place (like a lost unlink); one that keeps a rename out
//! of it leaves a last segment holding only stale entries: an empty one.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::entry::segment_tag;
use super::segment::{sync_dir, Segment};
use crate::io::fs;
use crate::{Error, Result};

/// The name of a free file whose last use was the segment at `base`.
fn free_name(base: u64) -> String {
    format!("{base:020}.free")
}

fn parse_free_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".free")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// The pool of free segment files of one journal.
pub struct Recycler {
    dir: PathBuf,
    /// Free files kept at most; 0 turns recycling off.
    capacity: usize,
    /// Only files of exactly this size are kept (the size new segments get).
    segment_bytes: u64,
    /// Previous start positions of the free files, oldest first.
    free: Mutex<VecDeque<u64>>,
    /// Segments started in a recycled file since the journal opened.
    pub recycled: AtomicU64,
    /// Reclaimed files kept in the pool since the journal opened.
    pub kept: AtomicU64,
}

impl Recycler {
    /// The pool of `dir` as a previous run left it. Files beyond
    /// `capacity` or of another size than `segment_bytes` are deleted,
    /// unless `read_only` (which takes none: it never rolls).
    pub fn open(dir: &Path, capacity: u32, segment_bytes: u64, read_only: bool) -> Result<Self> {
        let recycler = Recycler {
            dir: dir.to_path_buf(),
            capacity: capacity as usize,
            segment_bytes,
            free: Mutex::new(VecDeque::new()),
            recycled: AtomicU64::new(0),
            kept: AtomicU64::new(0),
        };
        if read_only {
            return Ok(recycler);
        }
        let mut found = Vec::new();
        let listing = std::fs::read_dir(dir)
            .map_err(|e| Error::io(format!("listing '{}'", dir.display()), e))?;
        for item in listing {
            let item = item.map_err(|e| Error::io(format!("listing '{}'", dir.display()), e))?;
            if let Some(base) = item.file_name().to_str().and_then(parse_free_name) {
                let len = item.metadata().map(|m| m.len()).ok();
                found.push((base, len));
            }
        }
        found.sort();
        let mut free = recycler.free.lock();
        for (base, len) in found {
            if free.len() < recycler.capacity && len == Some(segment_bytes) {
                free.push_back(base);
            } else {
                remove(&dir.join(free_name(base)))?;
                sync_dir(dir)?;
            }
        }
        drop(free);
        Ok(recycler)
    }

    /// Free files in the pool now.
    pub fn free_files(&self) -> usize {
        self.free.lock().len()
    }

    /// A segment at `base` of `len` bytes in a free file, if the pool has
    /// one that may take it (`None`: create a new file).
    pub fn take(&self, base: u64, len: u64) -> Option<Result<Segment>> {
        if len != self.segment_bytes {
            return None;
        }
        let previous = {
            let mut free = self.free.lock();
            let at = free
                .iter()
                .position(|&old| segment_tag(old) != segment_tag(base))?;
            free.remove(at).expect("position found")
        };
        let from = self.dir.join(free_name(previous));
        let segment = Segment::recycle(&self.dir, &from, base, len);
        if segment.is_ok() {
            self.recycled.fetch_add(1, Ordering::Relaxed);
        }
        Some(segment)
    }

    /// Sets a reclaimed segment (already out of the segment map) aside:
    /// renamed into the pool when it may be recycled and the pool has
    /// room (its previous start is returned, for `keep` once the rename
    /// is durable), else deleted. The directory is not fsynced.
    pub fn set_aside(&self, segment: Arc<Segment>) -> Result<Option<u64>> {
        let path = segment.path.clone();
        let keep = match Arc::try_unwrap(segment) {
            Ok(segment) => {
                let fits = segment.unshared()
                    && segment.tagged()
                    && segment.len == self.segment_bytes
                    && self.free.lock().len() < self.capacity;
                fits.then_some(segment.base)
            }
            Err(_) => None,
        };
        let Some(base) = keep else {
            remove(&path)?;
            return Ok(None);
        };
        let to = self.dir.join(free_name(base));
        fs::rename(&path, &to).map_err(|e| {
            Error::io(
                format!("keeping '{}' as '{}'", path.display(), to.display()),
                e,
            )
        })?;
        Ok(Some(base))
    }

    /// Adds the file `set_aside` renamed into the pool, once the rename is
    /// durable: only then may a roll take it.
    pub fn keep(&self, base: u64) {
        self.free.lock().push_back(base);
        self.kept.fetch_add(1, Ordering::Relaxed);
    }
}

fn remove(path: &Path) -> Result<()> {
    fs::remove_file(path).map_err(|e| Error::io(format!("removing '{}'", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::super::entry;
    use super::*;

    #[test]
    fn free_names_round_trip_and_are_not_segment_names() {
        assert_eq!(parse_free_name(&free_name(42)), Some(42));
        assert_eq!(super::super::segment::parse_name(&free_name(42)), None);
        assert_eq!(parse_free_name("00000000000000000042.log"), None);
        assert_eq!(parse_free_name("42.free"), None);
    }

    /// A segment holding one entry, written with its tag (`tagged`) or
    /// as versions before tags wrote it.
    fn segment(dir: &Path, base: u64, len: u64, tagged: bool) -> Arc<Segment> {
        let segment = Segment::create(dir, base, len).unwrap();
        let mut header = entry::header(entry::Kind::Synced, 0, base, &[]);
        if tagged {
            header = entry::place(&header, base);
        }
        fs::write_at(&segment.file, &header, 0).unwrap();
        Arc::new(segment)
    }

    /// As `Writer::retire_files` retires one segment.
    fn retire(recycler: &Recycler, segment: Arc<Segment>) {
        let kept = recycler.set_aside(segment).unwrap();
        sync_dir(&recycler.dir).unwrap();
        if let Some(base) = kept {
            recycler.keep(base);
        }
    }

    #[test]
    fn a_shared_odd_sized_or_untagged_file_is_deleted_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let recycler = Recycler::open(dir.path(), 2, 1 << 20, false).unwrap();
        let make = |base: u64, len: u64| segment(dir.path(), base, len, true);

        let viewed = make(0, 1 << 20);
        let view = viewed.bytes(0, 8);
        retire(&recycler, viewed);
        let odd = make(1 << 20, 2 << 20);
        retire(&recycler, odd);
        let untagged = segment(dir.path(), 3 << 20, 1 << 20, false);
        retire(&recycler, untagged);
        let empty = Arc::new(Segment::create(dir.path(), 8 << 20, 1 << 20).unwrap());
        retire(&recycler, empty);
        assert_eq!(recycler.free_files(), 0);
        assert_eq!(view.len(), 8, "the view outlives the deleted file");

        for base in [4u64 << 20, 5 << 20, 6 << 20] {
            retire(&recycler, make(base, 1 << 20));
        }
        assert_eq!(recycler.free_files(), 2, "kept up to the capacity");
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, [free_name(4 << 20), free_name(5 << 20)]);

        let reopened = Recycler::open(dir.path(), 1, 1 << 20, false).unwrap();
        assert_eq!(reopened.free_files(), 1, "the surplus is deleted on open");
        let segment = reopened.take(7 << 20, 1 << 20).unwrap().unwrap();
        assert!(segment.prepared);
        assert_eq!(segment.path, dir.path().join("00000000000007340032.log"));
        assert!(
            reopened.take(8 << 20, 1 << 20).is_none(),
            "the pool is empty"
        );
    }

    #[test]
    fn a_file_is_not_taken_for_a_segment_with_its_old_tag() {
        let dir = tempfile::tempdir().unwrap();
        let recycler = Recycler::open(dir.path(), 1, 1 << 20, false).unwrap();
        retire(&recycler, segment(dir.path(), 0, 1 << 20, true));
        let same_tag = ((1u64 << 24) - 1) << 16;
        assert_eq!(segment_tag(same_tag), segment_tag(0));
        assert!(recycler.take(same_tag, 1 << 20).is_none());
        assert!(recycler.take(same_tag + (1 << 20), 1 << 20).is_some());
    }
}
