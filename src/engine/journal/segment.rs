//! Journal segment files: `journal/<start position, 20 digits>.log`, each
//! created at its full size (sparse: blocks are allocated, and zeroed, just
//! ahead of the writer by `prefill`, so a small store takes little disk)
//! or taken from the pool of reclaimed files (`recycle`), and mapped
//! read-only once, so reads are zero-copy views of the page cache and
//! transfers can sendfile(2) from it.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use memmap2::{Mmap, MmapOptions};

use super::entry::{self, Parsed};
use crate::io::{create_new, fs};
use crate::{Error, Result};

pub fn file_name(base: u64) -> String {
    format!("{base:020}.log")
}

/// Parses a segment file name back into its start position.
pub fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".log")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

pub use crate::io::sync_dir;

/// One segment. Its bytes at positions the writer has not reached yet are
/// never looked at through the map (they are zeros or in flight).
pub struct Segment {
    /// Global journal position of the segment's first byte.
    pub base: u64,
    /// File size (the segment's capacity).
    pub len: u64,
    pub path: PathBuf,
    pub file: Arc<File>,
    map: Arc<Mmap>,
    /// Index entries (batches of live shards) that point into this segment.
    /// The segment is removed once this is 0 and it is not the active one.
    live: AtomicU64,
    /// Every block of the file holds written data (a recycled file): no
    /// space ahead needs preparing.
    pub prepared: bool,
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("base", &self.base)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// Waits until no direct I/O is in flight on the file, before recovery
/// reads it.
///
/// A process killed with io_uring O_DIRECT writes in flight is reaped
/// before those writes complete: they can land after the next process
/// opened the journal — making recovery see a later block written and an
/// earlier one not yet (a hole, refused as corruption), or overwriting
/// what the new process wrote after the torn tail was cut. The kill -9 test
/// (tests/journal_crash.rs) hit this in 2-4 of 10 runs of 20 cycles, and
/// in none of 45 runs with this wait. fallocate(2) waits for the inode's
/// direct I/O to drain before it does anything (ext4, XFS and btrfs call
/// inode_dio_wait), and with KEEP_SIZE over an allocated block it changes
/// nothing. Filesystems without fallocate have no such
/// wait; pwrite direct writes are waited for by the dying writer itself.
fn wait_for_direct_io(file: &File, len: u64) {
    if len == 0 {
        return;
    }
    let probe = len.min(4096);
    // Over the file's first block, without changing its size; the result
    // is deliberately ignored (see above: no fallocate, no wait, nothing
    // else to do).
    let _ = fs::fallocate(file, libc::FALLOC_FL_KEEP_SIZE, 0, probe);
}

impl Segment {
    /// Creates (at full size, sparse) and maps a new segment, then fsyncs
    /// the directory so the file's existence is durable before anything in
    /// it is acknowledged. The size is part of what is durable: it places
    /// the next segment, and the directory fsync covers the inode.
    pub fn create(dir: &Path, base: u64, len: u64) -> Result<Segment> {
        let path = dir.join(file_name(base));
        let file = create_new(&path, "segment ")?;
        fs::set_len(&file, len)
            .map_err(|e| Error::io(format!("sizing segment '{}'", path.display()), e))?;
        fs::sync_all(&file)
            .map_err(|e| Error::io(format!("fsyncing segment '{}'", path.display()), e))?;
        sync_dir(dir)?;
        Self::map(path, base, file, len)
    }

    /// Takes the free file `from` (a reclaimed segment, fully written) as
    /// the new segment at `base`: renames it, fsyncs the directory (before
    /// anything in it is acknowledged) and maps it. Its old entries stay
    /// until overwritten; they carry another tag (`entry::Parsed::Stale`).
    pub fn recycle(dir: &Path, from: &Path, base: u64, len: u64) -> Result<Segment> {
        let path = dir.join(file_name(base));
        fs::rename(from, &path).map_err(|e| {
            Error::io(
                format!("recycling '{}' as '{}'", from.display(), path.display()),
                e,
            )
        })?;
        sync_dir(dir)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(format!("opening segment '{}'", path.display()), e))?;
        let mut segment = Self::map(path, base, file, len)?;
        segment.prepared = true;
        Ok(segment)
    }

    /// Opens an existing segment (recovery). A file shorter than `min_len`
    /// (a crash between create and sizing it) is extended with zeros. A
    /// `read_only` open changes nothing, not even the file's times: it
    /// neither extends the file nor waits for a dead writer's direct I/O
    /// (should some land meanwhile, the reader sees a hole and reports
    /// corruption; a writer's open then recovers the store).
    pub fn open(path: PathBuf, base: u64, min_len: u64, read_only: bool) -> Result<Segment> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(&path)
            .map_err(|e| Error::io(format!("opening segment '{}'", path.display()), e))?;
        let mut len = file
            .metadata()
            .map_err(|e| Error::io(format!("stat '{}'", path.display()), e))?
            .len();
        if read_only {
            return Self::map(path, base, file, len);
        }
        if len < min_len {
            fs::set_len(&file, min_len)
                .map_err(|e| Error::io(format!("extending '{}'", path.display()), e))?;
            len = min_len;
        }
        wait_for_direct_io(&file, len);
        Self::map(path, base, file, len)
    }

    fn map(path: PathBuf, base: u64, file: File, len: u64) -> Result<Segment> {
        // SAFETY: the mapping is read-only and the file is never truncated
        // (recovery zeroes a torn tail with pwrite instead). Slices are only
        // made of positions already written, which are never written again
        // while any slice of the file exists (the torn bytes recovery zeroes
        // are never handed out, and a file is recycled only once nothing
        // holds its mapping, `Recycler::set_aside`), so no slice ever changes
        // under its reader.
        let map = unsafe { MmapOptions::new().len(len as usize).map(&file) }
            .map_err(|e| Error::io(format!("mapping segment '{}'", path.display()), e))?;
        Ok(Segment {
            base,
            len,
            path,
            file: Arc::new(file),
            map: Arc::new(map),
            live: AtomicU64::new(0),
            prepared: false,
        })
    }

    /// Whether the segment's entries carry its tag: true when its first
    /// one does (the version that starts a segment writes all of it; older
    /// versions wrote no tags, and newer entries are unreadable to them).
    pub fn tagged(&self) -> bool {
        matches!(entry::parse(self.data(), self.base), Parsed::Valid(h) if h.tagged)
    }

    /// Whether nothing but `self` refers to the file or its mapping: no
    /// zero-copy view, transfer or writer holds any, so its bytes may be
    /// overwritten.
    pub fn unshared(&self) -> bool {
        Arc::strong_count(&self.map) == 1 && Arc::strong_count(&self.file) == 1
    }

    /// Zero-copy view of `len` bytes at `pos` (already written).
    pub fn bytes(&self, pos: u64, len: u64) -> Bytes {
        crate::io::map_slice(&self.map, pos, len)
    }

    /// Drops this process's page mappings of the segment (the pages stay in
    /// the page cache): recovery touches every page of the journal once,
    /// which would otherwise stay counted in the process's RSS, up to the
    /// journal's size.
    pub fn release_pages(&self) {
        // SAFETY: MADV_DONTNEED on a shared, read-only file mapping only
        // drops page table entries; the next access faults the same file
        // bytes back in, so no slice handed out can observe a change.
        let _ = unsafe {
            self.map
                .unchecked_advise(memmap2::UncheckedAdvice::DontNeed)
        };
    }

    /// Drops this process's page mappings of the bytes from `from` to `to`
    /// (whole pages only: the page holding `to` stays mapped), as
    /// `release_pages` does for the whole segment.
    pub fn release_range(&self, from: u64, to: u64) {
        const PAGE: u64 = 4096;
        let (start, end) = (from / PAGE * PAGE, to.min(self.len) / PAGE * PAGE);
        if end <= start {
            return;
        }
        // SAFETY: as in `release_pages`; the range lies inside the mapping
        // and starts on a page boundary.
        let _ = unsafe {
            self.map.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                start as usize,
                (end - start) as usize,
            )
        };
    }

    /// The whole mapping (recovery scans it before any write).
    pub fn data(&self) -> &[u8] {
        &self.map
    }

    pub fn live(&self) -> u64 {
        self.live.load(Ordering::Acquire)
    }

    pub fn add_live(&self) {
        self.live.fetch_add(1, Ordering::AcqRel);
    }

    pub fn sub_live(&self) {
        self.live.fetch_sub(1, Ordering::AcqRel);
    }
}
