//! The journal writer: one append log for the whole store, with group
//! commit.
//!
//! Appenders copy their framed entry into a shared buffer under one mutex
//! (the entry's log position is fixed there, in the order entries enter the
//! log). Then, depending on durability, an appender waits until the writer
//! has `written` (os) or `synced` (fsync) past its entry's end. There is no
//! writer thread: the first waiter that finds no I/O in progress becomes the
//! leader, takes the whole buffer, writes it (one pwrite per segment run)
//! and, if anyone asked for it, issues one fdatasync per dirty segment;
//! everyone who enqueued meanwhile waits on the condvar and is served by the
//! next leader in one write and one fdatasync. With O_DIRECT the fdatasync
//! is a phase of its own (`sync_after_write`): the write phase is released
//! first, so the next group's write overlaps this group's device flush.
//! Leader/follower keeps the latency of a lone appender at one write + one
//! fsync (no hand-off to a thread), while throughput grows with
//! concurrency, as each fsync covers every entry that arrived during the
//! previous one.
//!
//! The leader's I/O goes through `FileOps`: io_uring (`uring::UringOps`,
//! writes and fdatasyncs as one linked chain) or plain pwrite/fdatasync
//! (`PlainOps`, the fallback when io_uring is unavailable), and tests inject
//! failures there.
//!
//! With `direct` (the default), writes use O_DIRECT from 4 KiB-aligned
//! buffers: the page cache is bypassed, so the journal does not evict
//! readers' hot pages and fdatasync has no dirty pages to write back.
//! O_DIRECT needs the buffer address, file offset and length aligned to the
//! logical block size; `BLOCK` = 4096 is a multiple of every usual one. A
//! flush rarely ends on a block boundary, so the writer keeps the bytes of
//! the last, partial block (`Tail`) and the next flush rewrites that block
//! with the new data appended; the rest of the last block is written as
//! zeros, which is what unwritten journal space is anyway. Rewriting a block
//! puts the same bytes over its already written part, so a crash that tears
//! the rewrite leaves those bytes intact either way. Where O_DIRECT is
//! refused (EINVAL: tmpfs and some other filesystems) the journal writes
//! through the page cache instead; the file content is the same.
//!
//! Readers map the segments and sendfile from them: a direct write
//! invalidates the page-cache range it covers, so mappings (including ones
//! made before the write) and sendfile see the new bytes.
//!
//! Any failed write or fsync POISONS the journal: after a failed fsync the
//! kernel may have dropped the dirty pages, so retrying it could report
//! success for data that never reached the disk. Every later append, and
//! every read that would need unwritten data, fails with `Poisoned`.

use std::alloc::Layout;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex, MutexGuard, RwLock};

use super::entry;
use super::prefill::Prefill;
use super::segment::{sync_dir, Segment};
use super::tail::TailCache;
use crate::io::fs;
use crate::{Error, Result};

/// The alignment of O_DIRECT writes: buffer address, file offset and
/// length. Logical block sizes are 512 or 4096 bytes; 4096 suits both.
pub const BLOCK: u64 = 4096;

/// One write of a leader's batch.
pub struct WriteOp<'a> {
    pub file: &'a File,
    pub buf: &'a [u8],
    pub pos: u64,
}

/// Which request of a batch failed (its index in `writes` or `syncs`).
#[derive(Debug)]
pub enum IoFailure {
    Write(usize, io::Error),
    Sync(usize, io::Error),
    /// The requests could not be handed to the kernel or waited for
    /// (io_uring_enter failed): which of them ran is unknown.
    Submission(io::Error),
}

/// The file operations of the write path: io_uring or pwrite/fdatasync,
/// and a seam for fault injection in tests.
pub trait FileOps: Send + Sync {
    fn write_at(&self, file: &File, buf: &[u8], pos: u64) -> io::Result<()> {
        fs::write_at(file, buf, pos)
    }

    fn sync_data(&self, file: &File) -> io::Result<()> {
        fs::sync_data(file)
    }

    /// Opens `path` for O_DIRECT writes.
    fn open_direct(&self, path: &Path) -> io::Result<File> {
        OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
    }

    /// Shown in stats (`"io"`).
    fn name(&self) -> &'static str {
        "pwrite"
    }

    /// Performs every write, then fdatasyncs every file of `syncs` (after
    /// all the writes completed); stops at the first failure.
    fn submit(&self, writes: &[WriteOp<'_>], syncs: &[&File]) -> Result<(), IoFailure> {
        for (i, w) in writes.iter().enumerate() {
            self.write_at(w.file, w.buf, w.pos)
                .map_err(|e| IoFailure::Write(i, e))?;
        }
        for (i, file) in syncs.iter().enumerate() {
            self.sync_data(file).map_err(|e| IoFailure::Sync(i, e))?;
        }
        Ok(())
    }
}

/// Plain pwrite(2) + fdatasync(2).
pub struct PlainOps;

impl FileOps for PlainOps {}

pub type SegmentMap = Arc<RwLock<BTreeMap<u64, Arc<Segment>>>>;

/// Entries waiting to be written to one segment, contiguous from `pos`.
struct Run {
    segment: Arc<Segment>,
    pos: u64,
    data: Vec<u8>,
}

/// Emptied run buffers kept for new runs, at most, and the largest kept:
/// enough for a few groups in flight, so that steady appending reuses
/// buffers whose pages are mapped instead of faulting in fresh ones.
const SPARE_RUNS: usize = 4;
const SPARE_RUN_BYTES: usize = 8 << 20;

/// A heap buffer aligned to `BLOCK`, as O_DIRECT requires of the memory
/// it transfers.
struct AlignedBuf {
    ptr: NonNull<u8>,
    cap: usize,
    len: usize,
}

// SAFETY: the buffer is plain owned memory, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    fn new() -> AlignedBuf {
        AlignedBuf {
            ptr: NonNull::dangling(),
            cap: 0,
            len: 0,
        }
    }

    fn layout(cap: usize) -> Layout {
        Layout::from_size_align(cap, BLOCK as usize).expect("a valid buffer layout")
    }

    /// Makes the buffer `parts` concatenated, then zeros up to `len`.
    fn fill(&mut self, parts: &[&[u8]], len: usize) {
        if len > self.cap {
            self.release();
            let cap = len.next_multiple_of(BLOCK as usize);
            // SAFETY: `cap` is non-zero (len > cap >= 0) and the layout valid.
            let ptr = unsafe { std::alloc::alloc(Self::layout(cap)) };
            let Some(ptr) = NonNull::new(ptr) else {
                std::alloc::handle_alloc_error(Self::layout(cap));
            };
            self.ptr = ptr;
            self.cap = cap;
        }
        let mut at = 0;
        for part in parts {
            assert!(at + part.len() <= len, "parts exceed the buffer");
            // SAFETY: `at + part.len() <= len <= cap`, and `part` is another
            // allocation (a shared borrow cannot alias this owned buffer).
            unsafe {
                std::ptr::copy_nonoverlapping(part.as_ptr(), self.ptr.as_ptr().add(at), part.len())
            };
            at += part.len();
        }
        // SAFETY: `[at, len)` lies inside the allocation.
        unsafe { std::ptr::write_bytes(self.ptr.as_ptr().add(at), 0, len - at) };
        self.len = len;
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: the first `len` bytes were initialised by `fill` (and a
        // zero-length slice of a dangling pointer is valid).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    fn release(&mut self) {
        if self.cap > 0 {
            // SAFETY: allocated by `fill` with this layout.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.cap)) };
            // Field by field: assigning `*self` would drop (free) it again.
            self.ptr = NonNull::dangling();
            self.cap = 0;
            self.len = 0;
        }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        self.release();
    }
}

/// The written bytes of the last, partial block of the journal: the next
/// direct write to the segment starts with them (see the module comment).
struct Tail {
    /// Segment base.
    base: u64,
    /// Block-aligned position of the block in its segment.
    start: u64,
    /// The block's bytes up to the end of the written data.
    bytes: Vec<u8>,
}

/// What the leader alone touches while writing.
struct IoState {
    /// O_DIRECT writes (false when not asked for or refused by the
    /// filesystem).
    direct: bool,
    /// The O_DIRECT descriptor of the newest segment written to (base,
    /// file); `None` where the filesystem refused O_DIRECT.
    files: Vec<(u64, Option<Arc<File>>)>,
    tail: Option<Tail>,
    bufs: Vec<AlignedBuf>,
    /// The newest segment written to; it is fdatasynced before the next
    /// one gets a byte (see `Writer::seal_before`).
    last_segment: Option<Arc<Segment>>,
}

/// Opens `path` for O_DIRECT writes; `None` if the filesystem does not
/// support O_DIRECT (EINVAL).
fn open_direct(ops: &dyn FileOps, path: &Path) -> Result<Option<File>> {
    match ops.open_direct(path) {
        Ok(file) => Ok(Some(file)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(None),
        Err(e) => Err(Error::io(
            format!("opening '{}' with O_DIRECT", path.display()),
            e,
        )),
    }
}

impl IoState {
    /// The O_DIRECT descriptor of `segment`, opened on first use. Only the
    /// newest segment's is kept: writes only move forward, and an old
    /// descriptor would keep a reclaimed segment's disk space allocated.
    fn direct_file(&mut self, ops: &dyn FileOps, segment: &Segment) -> Result<Option<Arc<File>>> {
        if let Some((_, file)) = self.files.iter().find(|(base, _)| *base == segment.base) {
            return Ok(file.clone());
        }
        let file = open_direct(ops, &segment.path)?.map(Arc::new);
        self.files.retain(|(base, _)| *base > segment.base);
        self.files.push((segment.base, file.clone()));
        Ok(file)
    }
}

/// Where the bytes of one write come from.
enum Source {
    /// `IoState::bufs[i]`.
    Aligned(usize),
    /// `runs[i].data[from..]`.
    Run(usize, usize),
}

struct Piece {
    file: Arc<File>,
    source: Source,
    pos: u64,
    segment: usize,
}

struct State {
    runs: Vec<Run>,
    pending_bytes: u64,
    active: Arc<Segment>,
    /// Next free position in `active`.
    tail: u64,
    /// Global position just past the last enqueued entry.
    end: u64,
    /// Everything before this global position was handed to the kernel.
    written: u64,
    /// Everything before this global position is on stable storage.
    synced: u64,
    /// The highest position an fsync waiter needs synced.
    sync_wanted: u64,
    /// The highest target of an fdatasync started in a sync phase
    /// (`sync_after_write`): everything before it is covered by a flush
    /// that is in flight or done.
    sync_started: u64,
    /// Sync phases in flight, in the order they started: (target, done).
    /// `synced` only moves past a target once every phase before it is
    /// done too: a later phase may sync only the newer segment after a
    /// roll, while the older segment's flush is still running.
    syncs: std::collections::VecDeque<(u64, bool)>,
    /// A leader is doing I/O (without the lock).
    writing: bool,
    /// What pipelined appends asked the flusher threads to write and to
    /// sync (global positions; see `request_background`).
    background_written: u64,
    background_synced: u64,
    /// The flushers were poked and none has found all of the above done
    /// since (one may still be serving after another cleared it: a spare
    /// poke then is harmless, and no request goes without one).
    flusher_busy: bool,
    /// Segments written to since the last fdatasync.
    dirty: Vec<Arc<Segment>>,
    poisoned: Option<String>,
    spare: Vec<Vec<u8>>,
    /// Global position and header of the newest entry (for the index
    /// checkpoint's check that the journal still holds it).
    last: Option<(u64, [u8; entry::HEADER_LEN])>,
    /// Set by a clean close: no entry may enter the log after the index
    /// checkpoint's end position.
    sealed: bool,
    /// The `synced` position the newest `Synced` entry records.
    marked: u64,
}

/// Poisons the journal (the first reason stays) and reports it: from now
/// on appends fail, and an operator should know why.
fn poison(st: &mut State, reason: String) {
    if st.poisoned.is_none() {
        crate::log::emit(
            crate::log::Level::Error,
            &format!("journal poisoned, appends fail until it is reopened: {reason}"),
        );
        st.poisoned = Some(reason);
    }
}

impl State {
    /// Marks the sync phase of `target` done and moves `synced` past every
    /// phase that is done with none before it still in flight.
    fn sync_done(&mut self, target: u64) {
        if let Some(phase) = self
            .syncs
            .iter_mut()
            .find(|(t, done)| *t == target && !done)
        {
            phase.1 = true;
        }
        while let Some(&(t, true)) = self.syncs.front() {
            self.synced = self.synced.max(t);
            self.syncs.pop_front();
        }
    }
}

/// Runs a leader's I/O, turning a panic into an error: the caller then
/// poisons the journal and wakes every waiter, instead of unwinding with
/// the write phase still marked as taken (which would leave every later
/// append and the close waiting forever).
fn guarded(io: impl FnOnce() -> Result<()>) -> Result<()> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(io)) {
        Ok(result) => result,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            Err(Error::Internal(format!("journal I/O failed: {what}")))
        }
    }
}

/// Where an enqueued entry landed. While it exists it counts as a live
/// reference to its segment, so the segment cannot be reclaimed between the
/// enqueue and the moment the caller's index entry takes over (the segment
/// may stop being the active one in between).
pub struct Placement {
    pub segment: Arc<Segment>,
    /// Position of the entry (its header) in the segment.
    pub pos: u64,
    /// Global position just past the entry.
    pub end: u64,
}

impl Drop for Placement {
    fn drop(&mut self) {
        self.segment.sub_live();
    }
}

pub struct Writer {
    state: Mutex<State>,
    cond: Condvar,
    ops: Arc<dyn FileOps>,
    io: Mutex<IoState>,
    direct: AtomicBool,
    dir: PathBuf,
    segment_bytes: u64,
    segments: SegmentMap,
    written_hint: AtomicU64,
    prefill: Prefill,
    /// The newest written runs, for tail reads (see `tail`).
    pub tail: TailCache,
    /// Shared with `prefill`, which decides from them whether zeroing the
    /// space ahead pays.
    pub counters: Arc<IoCounters>,
}

/// What the writer has done since the journal opened.
#[derive(Default)]
pub struct IoCounters {
    /// Segments started after the one the journal opened with.
    pub rolls: AtomicU64,
    pub writes: AtomicU64,
    pub syncs: AtomicU64,
    pub bytes_written: AtomicU64,
}

impl Writer {
    /// A writer appending to `active` from `tail` on (everything before is
    /// already on disk), with O_DIRECT if `direct` and the filesystem
    /// supports it, and the space ahead prepared with zeros if
    /// `prefill_zeros` (see `prefill`). A `read_only` writer prepares
    /// no space ahead (it is never asked to write).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        dir: PathBuf,
        segment_bytes: u64,
        segments: SegmentMap,
        active: Arc<Segment>,
        tail: u64,
        ops: Arc<dyn FileOps>,
        direct: bool,
        prefill_zeros: bool,
        tail_cache_bytes: u64,
        read_only: bool,
    ) -> Result<Writer> {
        let end = active.base + tail;
        let mut io = IoState {
            direct: false,
            files: Vec::new(),
            tail: None,
            bufs: Vec::new(),
            last_segment: None,
        };
        if direct {
            // Probe once: a filesystem without O_DIRECT refuses the open.
            if let Some(file) = open_direct(&*ops, &active.path)? {
                io.files.push((active.base, Some(Arc::new(file))));
                io.direct = true;
            }
        }
        let direct = io.direct;
        // Zeros are written with O_DIRECT; where the filesystem refuses it
        // (tmpfs) writing them would only fill the page cache.
        let counters = Arc::new(IoCounters::default());
        let zeros = prefill_zeros && direct;
        let prefill = if read_only {
            Prefill::idle(active.clone(), tail, zeros, counters.clone())
        } else {
            Prefill::start(active.clone(), tail, zeros, counters.clone())?
        };
        Ok(Writer {
            state: Mutex::new(State {
                runs: Vec::new(),
                pending_bytes: 0,
                active,
                tail,
                end,
                written: end,
                synced: end,
                sync_wanted: 0,
                sync_started: 0,
                syncs: std::collections::VecDeque::new(),
                writing: false,
                background_written: 0,
                background_synced: 0,
                flusher_busy: false,
                dirty: Vec::new(),
                poisoned: None,
                spare: Vec::new(),
                last: None,
                sealed: false,
                marked: end,
            }),
            cond: Condvar::new(),
            ops,
            io: Mutex::new(io),
            direct: AtomicBool::new(direct),
            dir,
            segment_bytes,
            segments,
            written_hint: AtomicU64::new(end),
            prefill,
            tail: TailCache::new(tail_cache_bytes),
            counters,
        })
    }

    /// The I/O path in use, e.g. `uring+direct` or `pwrite`.
    pub fn io_name(&self) -> String {
        let direct = if self.direct.load(Ordering::Relaxed) {
            "+direct"
        } else {
            ""
        };
        format!("{}{direct}", self.ops.name())
    }

    fn poisoned_error(reason: &str) -> Error {
        Error::Poisoned(format!("journal: {reason}"))
    }

    pub fn poisoned(&self) -> Option<String> {
        self.state.lock().poisoned.clone()
    }

    /// Frames nothing itself: copies `header` + `payload` (+ padding) into
    /// the log buffer and returns where it will live. Called under the
    /// owning shard's lock, so a shard's entries enter the log in the order
    /// of its state changes.
    pub fn enqueue(&self, header: &[u8; entry::HEADER_LEN], payload: &[u8]) -> Result<Placement> {
        let mut st = self.state.lock();
        if let Some(reason) = &st.poisoned {
            return Err(Self::poisoned_error(reason));
        }
        if st.sealed {
            return Err(Error::Closed);
        }
        self.enqueue_locked(&mut st, header, payload)
    }

    /// Logs a `Synced` entry recording the synced position, once it moved
    /// past the last one recorded. It goes out with the next group: a
    /// power cut can tear that group, but every `Synced` entry that
    /// survives proves the journal intact up to its position (see
    /// `recovery`). Nothing waits for it.
    fn mark_synced(&self, st: &mut State) {
        if st.synced <= st.marked || st.sealed || st.poisoned.is_some() {
            return;
        }
        st.marked = st.synced;
        let header = entry::header(entry::Kind::Synced, 0, st.synced, &[]);
        // A failure (creating a segment) poisoned the journal already.
        let _ = self.enqueue_locked(st, &header, &[]);
    }

    fn enqueue_locked(
        &self,
        st: &mut State,
        header: &[u8; entry::HEADER_LEN],
        payload: &[u8],
    ) -> Result<Placement> {
        let len = entry::entry_len(payload.len());
        if st.tail + len > st.active.len {
            // Roll. Creating the file under the lock stalls appenders for one
            // create + fallocate + directory fsync per segment (every 1 GiB
            // by default); it keeps positions assigned strictly in order.
            let base = st.active.base + st.active.len;
            let size = self.segment_bytes.max(len);
            match Segment::create(&self.dir, base, size) {
                Ok(segment) => {
                    let segment = Arc::new(segment);
                    self.segments.write().insert(base, segment.clone());
                    st.active = segment;
                    st.tail = 0;
                    self.counters.rolls.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    poison(st, format!("creating a segment failed: {e}"));
                    self.cond.notify_all();
                    return Err(e);
                }
            }
        }
        let pos = st.tail;
        let active = st.active.clone();
        st.last = Some((active.base + pos, *header));
        let extend = matches!(st.runs.last(), Some(run)
            if Arc::ptr_eq(&run.segment, &active) && run.pos + run.data.len() as u64 == pos);
        if !extend {
            // Runs go to the tail cache after their write (when it is on),
            // so size a new one for a typical flush up front.
            let data = st
                .spare
                .pop()
                .unwrap_or_else(|| Vec::with_capacity(64 << 10));
            st.runs.push(Run {
                segment: active.clone(),
                pos,
                data,
            });
        }
        let run = st.runs.last_mut().expect("a run was just ensured");
        run.data.extend_from_slice(header);
        run.data.extend_from_slice(payload);
        let padded = run.data.len() + (len as usize - entry::HEADER_LEN - payload.len());
        run.data.resize(padded, 0);
        st.tail += len;
        st.pending_bytes += len;
        st.end = active.base + st.tail;
        active.add_live();
        Ok(Placement {
            segment: active,
            pos,
            end: st.end,
        })
    }

    /// Bytes enqueued and not yet written.
    pub fn pending_bytes(&self) -> u64 {
        self.state.lock().pending_bytes
    }

    /// The global position everything before which is written.
    pub fn written(&self) -> u64 {
        self.written_hint.load(Ordering::Acquire)
    }

    /// Records the newest entry found by recovery (before any append).
    pub fn set_last(&self, last: Option<(u64, [u8; entry::HEADER_LEN])>) {
        self.state.lock().last = last;
    }

    /// Refuses every later enqueue (with `Closed`) and returns the end of
    /// the log and its newest entry: nothing can be logged past them any
    /// more, so a checkpoint taken afterwards of the shards' states covers
    /// exactly the entries before that end.
    pub fn seal(&self) -> (u64, Option<(u64, [u8; entry::HEADER_LEN])>) {
        let mut st = self.state.lock();
        st.sealed = true;
        (st.end, st.last)
    }

    /// The end of the log and its newest entry, without sealing (a periodic
    /// checkpoint's replay start).
    pub fn position(&self) -> (u64, Option<(u64, [u8; entry::HEADER_LEN])>) {
        let st = self.state.lock();
        (st.end, st.last)
    }

    /// The end of the log: the position the next entry starts at (or
    /// where the next segment begins).
    pub fn end_position(&self) -> u64 {
        self.state.lock().end
    }

    /// Makes sure everything before `end` is written to the kernel.
    pub fn ensure_written(&self, end: u64) -> Result<()> {
        if self.written() >= end {
            return Ok(());
        }
        self.commit(end, false)
    }

    /// Asks for everything before `end` to be written (and synced when
    /// `sync`) by the flusher threads, without waiting; returns whether the
    /// flushers must be poked (they are not busy with earlier requests) and the
    /// bytes buffered and not yet being written.
    pub fn request_background(&self, end: u64, sync: bool) -> Result<(bool, u64)> {
        let mut st = self.state.lock();
        if let Some(reason) = &st.poisoned {
            return Err(Self::poisoned_error(reason));
        }
        if sync {
            if st.synced >= end {
                return Ok((false, st.pending_bytes));
            }
            st.background_synced = st.background_synced.max(end);
        } else {
            if st.written >= end {
                return Ok((false, st.pending_bytes));
            }
            st.background_written = st.background_written.max(end);
        }
        let poke = !std::mem::replace(&mut st.flusher_busy, true);
        Ok((poke, st.pending_bytes))
    }

    /// A flusher thread's task: leads commits until every background
    /// request is served (or the journal is poisoned: the waiters see that
    /// themselves). Each commit takes everything buffered, so while one is
    /// writing or syncing, the producers' next batches pile up into the
    /// next, larger group.
    pub fn serve_background(&self) {
        loop {
            let (target, sync) = {
                let mut st = self.state.lock();
                if st.poisoned.is_some() {
                    st.flusher_busy = false;
                    return;
                }
                if st.synced < st.background_synced {
                    (st.background_synced.max(st.background_written), true)
                } else if st.written < st.background_written {
                    (st.background_written, false)
                } else {
                    st.flusher_busy = false;
                    return;
                }
            };
            // A failure poisons the journal; the next round sees it.
            let _ = self.commit(target, sync);
        }
    }

    /// Waits until everything before `end` is written (and synced when
    /// `sync`), leading the I/O when nobody else is.
    pub fn commit(&self, end: u64, sync: bool) -> Result<()> {
        let mut st = self.state.lock();
        loop {
            if let Some(reason) = &st.poisoned {
                return Err(Self::poisoned_error(reason));
            }
            let done = if sync {
                st.synced >= end
            } else {
                st.written >= end
            };
            if done {
                return Ok(());
            }
            if sync {
                st.sync_wanted = st.sync_wanted.max(end);
                if st.sync_started >= end {
                    // A flush in flight covers this entry; leading another
                    // would find its segments already taken from `dirty`
                    // and could report durability before that flush ends.
                    self.cond.wait(&mut st);
                    continue;
                }
            }
            if st.writing {
                self.cond.wait(&mut st);
                continue;
            }
            // Lead: take everything buffered, write and maybe sync it.
            let runs = std::mem::take(&mut st.runs);
            let target = st.end;
            let do_sync = st.sync_wanted > st.synced;
            // With O_DIRECT, the fdatasync runs after the write phase is
            // released, so the next leader writes while this one waits for
            // the device flush (see `sync_after_write`). Through the page
            // cache it stays inside the write phase: two overlapping
            // fdatasyncs of buffered data could let one report success for
            // pages whose writeback error the other consumed.
            let overlap = self.direct.load(Ordering::Relaxed);
            let mut to_sync = Vec::new();
            if do_sync && !overlap {
                to_sync = std::mem::take(&mut st.dirty);
                for run in &runs {
                    if !to_sync.iter().any(|s| Arc::ptr_eq(s, &run.segment)) {
                        to_sync.push(run.segment.clone());
                    }
                }
            }
            st.pending_bytes = 0;
            st.writing = true;
            drop(st);

            let result = guarded(|| self.do_io(&runs, &to_sync));
            let written = result.is_ok();

            st = self.state.lock();
            st.writing = false;
            match result {
                Ok(()) => {
                    st.written = target;
                    self.written_hint.store(target, Ordering::Release);
                    if do_sync && !overlap {
                        st.syncs.push_back((target, false));
                        st.sync_done(target);
                        self.mark_synced(&mut st);
                    } else {
                        for run in &runs {
                            if !st.dirty.iter().any(|s| Arc::ptr_eq(s, &run.segment)) {
                                st.dirty.push(run.segment.clone());
                            }
                        }
                    }
                }
                Err(e) => poison(&mut st, e.to_string()),
            }
            self.cond.notify_all();
            if do_sync && overlap && st.poisoned.is_none() {
                self.sync_after_write(&mut st, target);
            }
            let reusable = if written && self.tail.enabled() {
                // Only after the fdatasync and off the lock: the cache may
                // shrink the runs and free older ones (a few hundred µs
                // for megabytes), which would otherwise delay the device
                // flush and stall appenders. Until then readers of these
                // bytes use the mapping.
                MutexGuard::unlocked(&mut st, || {
                    runs.into_iter()
                        .flat_map(|run| self.tail.push(run.segment.base + run.pos, run.data))
                        .collect()
                })
            } else {
                runs.into_iter().map(|run| run.data).collect::<Vec<_>>()
            };
            for mut data in reusable {
                if st.spare.len() < SPARE_RUNS && data.capacity() <= SPARE_RUN_BYTES {
                    data.clear();
                    st.spare.push(data);
                }
            }
        }
    }

    /// The sync phase of a leader whose write phase is over (O_DIRECT
    /// only): fdatasyncs every dirty segment without holding the write
    /// phase, so the next group's write overlaps this device flush — group
    /// commit then pays max(write, flush) per group instead of their sum.
    ///
    /// Every byte before `target` was written (the O_DIRECT write
    /// completed) before this fdatasync started, but this phase syncs only
    /// the segments written since the previous phase took its own: after a
    /// roll, an older phase may still be flushing the previous segment.
    /// So `synced` reaches `target` only once every earlier phase is done
    /// too (`State::syncs`). A failure poisons the journal, whatever
    /// another flush reported.
    fn sync_after_write(&self, st: &mut MutexGuard<'_, State>, target: u64) {
        let to_sync = std::mem::take(&mut st.dirty);
        st.sync_started = st.sync_started.max(target);
        st.syncs.push_back((target, false));
        let result = MutexGuard::unlocked(st, || guarded(|| self.do_sync(&to_sync)));
        match result {
            Ok(()) => {
                st.sync_done(target);
                self.mark_synced(st);
            }
            Err(e) => {
                // The flush may have covered nothing: put the segments back
                // for whoever looks at `dirty` (nobody, once poisoned).
                st.dirty.extend(to_sync);
                poison(st, e.to_string());
            }
        }
        self.cond.notify_all();
    }

    fn do_sync(&self, to_sync: &[Arc<Segment>]) -> Result<()> {
        let syncs: Vec<&File> = to_sync.iter().map(|s| &*s.file).collect();
        match self.ops.submit(&[], &syncs) {
            Ok(()) => {
                self.counters
                    .syncs
                    .fetch_add(syncs.len() as u64, Ordering::Relaxed);
                Ok(())
            }
            Err(IoFailure::Sync(i, e)) | Err(IoFailure::Write(i, e)) => Err(Error::io(
                format!("fdatasync of '{}'", to_sync[i].path.display()),
                e,
            )),
            Err(IoFailure::Submission(e)) => Err(Error::io("submitting fdatasyncs", e)),
        }
    }

    /// Writes `runs` (in log order), then fdatasyncs `to_sync`. A group
    /// that reaches a new segment is written segment by segment, each
    /// earlier one sealed first.
    fn do_io(&self, runs: &[Run], to_sync: &[Arc<Segment>]) -> Result<()> {
        let mut guard = self.io.lock();
        let io = &mut *guard;
        if runs.is_empty() {
            return self.write_runs(io, runs, to_sync);
        }
        let mut by_segment = runs
            .chunk_by(|a, b| a.segment.base == b.segment.base)
            .peekable();
        while let Some(same_segment) = by_segment.next() {
            self.seal_before(io, &same_segment[0].segment)?;
            let syncs = if by_segment.peek().is_none() {
                to_sync
            } else {
                &[]
            };
            self.write_runs(io, same_segment, syncs)?;
        }
        Ok(())
    }

    /// Before the first write into `segment`, fdatasyncs the segment
    /// written before it, whatever the durability asked for. Recovery
    /// takes zeros at the end of a segment followed by a newer segment for
    /// its unused tail; a power cut keeping some blocks of the newer
    /// segment but losing unsynced ones at the end of the older would
    /// otherwise drop entries from the middle of the journal unnoticed.
    /// One fdatasync per segment roll.
    fn seal_before(&self, io: &mut IoState, segment: &Arc<Segment>) -> Result<()> {
        if let Some(previous) = &io.last_segment {
            if previous.base >= segment.base {
                return Ok(());
            }
            self.do_sync(std::slice::from_ref(previous))?;
        }
        io.last_segment = Some(segment.clone());
        Ok(())
    }

    fn write_runs(&self, io: &mut IoState, runs: &[Run], to_sync: &[Arc<Segment>]) -> Result<()> {
        let mut pieces: Vec<Piece> = Vec::with_capacity(runs.len() + 1);
        let mut aligned = 0;
        let mut tail = io.tail.take();
        for (r, run) in runs.iter().enumerate() {
            let segment = &run.segment;
            self.prefill
                .before_write(segment, run.pos + run.data.len() as u64);
            let file = if io.direct {
                io.direct_file(&*self.ops, segment)?
            } else {
                None
            };
            let start = run.pos & !(BLOCK - 1);
            // The end of the segment's last whole block: a file whose size
            // is not a multiple of BLOCK ends with a partial block that
            // O_DIRECT cannot write without growing the file, and the file
            // size places the next segment.
            let limit = segment.len & !(BLOCK - 1);
            let Some(file) = file.filter(|_| start < limit) else {
                pieces.push(Piece {
                    file: segment.file.clone(),
                    source: Source::Run(r, 0),
                    pos: run.pos,
                    segment: r,
                });
                continue;
            };
            let end = run.pos + run.data.len() as u64;
            // The written head of the first block: kept from the previous
            // flush, or (first write after opening) read back from the map.
            let prefix: &[u8] = match &tail {
                Some(t)
                    if t.base == segment.base
                        && t.start == start
                        && t.start + t.bytes.len() as u64 == run.pos =>
                {
                    &t.bytes
                }
                _ => &segment.data()[start as usize..run.pos as usize],
            };
            let direct_end = end.next_multiple_of(BLOCK).min(limit);
            let in_direct = (direct_end.min(end) - run.pos) as usize;
            if io.bufs.len() <= aligned {
                io.bufs.push(AlignedBuf::new());
            }
            io.bufs[aligned].fill(
                &[prefix, &run.data[..in_direct]],
                (direct_end - start) as usize,
            );
            let tail_start = end & !(BLOCK - 1);
            let mut bytes = Vec::with_capacity((end - tail_start) as usize);
            if tail_start < run.pos {
                bytes.extend_from_slice(&prefix[(tail_start - start) as usize..]);
                bytes.extend_from_slice(&run.data);
            } else {
                bytes.extend_from_slice(&run.data[(tail_start - run.pos) as usize..]);
            }
            pieces.push(Piece {
                file,
                source: Source::Aligned(aligned),
                pos: start,
                segment: r,
            });
            aligned += 1;
            if end > direct_end {
                // The bytes in the file's partial last block, through the
                // page cache.
                pieces.push(Piece {
                    file: segment.file.clone(),
                    source: Source::Run(r, in_direct),
                    pos: direct_end,
                    segment: r,
                });
            }
            tail = Some(Tail {
                base: segment.base,
                start: tail_start,
                bytes,
            });
        }
        let writes: Vec<WriteOp<'_>> = pieces
            .iter()
            .map(|p| WriteOp {
                file: &p.file,
                buf: match p.source {
                    Source::Aligned(i) => io.bufs[i].as_slice(),
                    Source::Run(r, from) => &runs[r].data[from..],
                },
                pos: p.pos,
            })
            .collect();
        let syncs: Vec<&File> = to_sync.iter().map(|s| &*s.file).collect();
        let result = self.ops.submit(&writes, &syncs);
        drop(writes);
        // Keep memory bounded after an unusually large batch.
        for buf in &mut io.bufs {
            if buf.cap > 4 << 20 {
                buf.release();
            }
        }
        match result {
            Ok(()) => {
                io.tail = tail;
                let counters = &self.counters;
                counters
                    .writes
                    .fetch_add(runs.len() as u64, Ordering::Relaxed);
                let bytes: usize = runs.iter().map(|r| r.data.len()).sum();
                counters
                    .bytes_written
                    .fetch_add(bytes as u64, Ordering::Relaxed);
                if !syncs.is_empty() {
                    counters
                        .syncs
                        .fetch_add(syncs.len() as u64, Ordering::Relaxed);
                }
                Ok(())
            }
            Err(IoFailure::Write(i, e)) => {
                let path = &runs[pieces[i].segment].segment.path;
                Err(Error::io(format!("writing to '{}'", path.display()), e))
            }
            Err(IoFailure::Sync(i, e)) => Err(Error::io(
                format!("fdatasync of '{}'", to_sync[i].path.display()),
                e,
            )),
            Err(IoFailure::Submission(e)) => Err(Error::io("submitting journal writes", e)),
        }
    }

    /// Stops preparing space ahead (at close: nothing more is appended).
    pub fn stop_prefill(&self) {
        self.prefill.stop();
    }

    pub fn prefill_stats(&self) -> serde_json::Value {
        self.prefill.stats()
    }

    /// The active segment (never removed).
    pub fn active_base(&self) -> u64 {
        self.state.lock().active.base
    }

    /// Removes segment files (already dropped from the segment map), oldest
    /// first, fsyncing the directory after each: whatever a power cut keeps
    /// of the removals is a prefix, so the journal left is contiguous. (A
    /// filesystem may persist unsynced unlinks in any order; a lost unlink
    /// between kept ones would leave a hole that replay refuses.)
    pub fn remove_files(&self, segments: &[Arc<Segment>]) -> Result<()> {
        for segment in segments {
            fs::remove_file(&segment.path)
                .map_err(|e| Error::io(format!("removing '{}'", segment.path.display()), e))?;
            if let Err(e) = sync_dir(&self.dir) {
                poison(&mut self.state.lock(), e.to_string());
                return Err(e);
            }
        }
        Ok(())
    }
}
