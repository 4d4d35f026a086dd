//! The journal writer: one append log for the whole store, with group
//! commit.
//!
//! Appenders copy their framed entry into a shared buffer under one mutex
//! (the entry's log position is fixed there, in the order entries enter the
//! log). Then, depending on durability, an appender waits until the log is
//! `written` (os) or `synced` (fsync) past its entry's end. Who leads the
//! I/O and who waits for what is the group-commit core's (`commit`); this
//! module is its `Leader`: a leader's group is the whole buffer, written
//! with one pwrite per segment run, and a flush is one fdatasync per dirty
//! segment. Leader/follower keeps the latency of a lone appender at one
//! write + one fsync (no hand-off to a thread), while throughput grows with
//! concurrency, as each fsync covers every entry written during the
//! previous one.
//!
//! The leader's I/O goes through `FileOps`: io_uring (`uring::UringOps`,
//! writes and fdatasyncs as one linked chain) or plain pwrite/fdatasync
//! (`PlainOps`, the fallback when io_uring is unavailable), and tests inject
//! failures there.
//!
//! With `direct` (the default), writes use O_DIRECT straight from the
//! runs' 4 KiB-aligned buffers (`runbuf`): the page cache is bypassed, so
//! the journal does not evict readers' hot pages and fdatasync has no
//! dirty pages to write back.
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

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use super::commit::{self, GroupCommit, Guard, Leader};
use super::entry;
use super::prefill::Prefill;
use super::recycle::Recycler;
use super::runbuf::RunBuf;
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
    data: RunBuf,
}

/// Emptied run buffers kept for new runs, at most, and the largest kept:
/// enough for a few groups in flight, so that steady appending reuses
/// buffers whose pages are mapped instead of faulting in fresh ones.
const SPARE_RUNS: usize = 4;
const SPARE_RUN_BYTES: usize = 8 << 20;
/// The room a new run's buffer starts with: a typical group, one 64 KiB
/// batch with its entry header after a `Synced` entry, fits whatever the
/// head, so its buffer neither grows nor is trimmed by the tail cache.
const NEW_RUN_BYTES: usize = (64 << 10) + 2 * BLOCK as usize;

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

/// Where the bytes of one write come from, in `runs[Piece::run].data`.
enum Source {
    /// The block-aligned bytes made ready for O_DIRECT.
    Direct,
    /// The entries from this byte on, through the page cache.
    Entries(usize),
}

struct Piece {
    file: Arc<File>,
    source: Source,
    pos: u64,
    run: usize,
}

/// The writer's buffers and bookkeeping, under the group-commit lock with
/// the marks (`commit::Core`).
pub struct State {
    runs: Vec<Run>,
    pending_bytes: u64,
    active: Arc<Segment>,
    /// Next free position in `active`.
    tail: u64,
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
    spare: Vec<RunBuf>,
    /// Global position and header of the newest entry (for the index
    /// checkpoint's check that the journal still holds it).
    last: Option<(u64, [u8; entry::HEADER_LEN])>,
    /// Set by a clean close: no entry may enter the log after the index
    /// checkpoint's end position.
    sealed: bool,
    /// The `synced` position the newest `Synced` entry records.
    marked: u64,
}

impl State {
    /// The run ending at the tail of the active segment, started (with
    /// room for `need` bytes) if the last run ends elsewhere.
    fn run_at_tail(&mut self, need: usize) -> &mut Run {
        let (active, pos) = (&self.active, self.tail);
        let extend = matches!(self.runs.last(), Some(run)
            if Arc::ptr_eq(&run.segment, active)
                && run.pos + run.data.entries().len() as u64 == pos);
        if !extend {
            let head = (pos % BLOCK) as usize;
            let data = match self.spare.pop() {
                Some(mut spare) => {
                    spare.reset(head);
                    spare.reserve(need);
                    spare
                }
                None => RunBuf::new(head, need.max(NEW_RUN_BYTES)),
            };
            self.runs.push(Run {
                segment: active.clone(),
                pos,
                data,
            });
        }
        self.runs.last_mut().expect("a run was just ensured")
    }
}

type Core = commit::Core<State>;

/// What a leader took: the runs to write, and the segments to fdatasync
/// inside the write phase (through the page cache; see `Leader::overlap`).
pub struct Group {
    runs: Vec<Run>,
    to_sync: Vec<Arc<Segment>>,
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
    commit: GroupCommit<State>,
    ops: Arc<dyn FileOps>,
    io: Mutex<IoState>,
    direct: AtomicBool,
    dir: PathBuf,
    segment_bytes: u64,
    segments: SegmentMap,
    /// Where reclaimed segment files go, and rolls take them from.
    recycler: Recycler,
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
        recycler: Recycler,
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
            commit: GroupCommit::new(
                end,
                State {
                    runs: Vec::new(),
                    pending_bytes: 0,
                    active,
                    tail,
                    background_written: 0,
                    background_synced: 0,
                    flusher_busy: false,
                    dirty: Vec::new(),
                    spare: Vec::new(),
                    last: None,
                    sealed: false,
                    marked: end,
                },
            ),
            ops,
            io: Mutex::new(io),
            direct: AtomicBool::new(direct),
            dir,
            segment_bytes,
            segments,
            recycler,
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

    pub fn poisoned(&self) -> Option<String> {
        self.commit.lock().poisoned().map(str::to_string)
    }

    /// Frames nothing itself: copies `header` + `payload` (+ padding) into
    /// the log buffer and returns where it will live. Called under the
    /// owning shard's lock, so a shard's entries enter the log in the order
    /// of its state changes.
    pub fn enqueue(&self, header: &[u8; entry::HEADER_LEN], payload: &[u8]) -> Result<Placement> {
        let mut core = self.commit.lock();
        core.check_poisoned()?;
        if core.state.sealed {
            return Err(Error::Closed);
        }
        self.enqueue_locked(&mut core, header, payload)
    }

    /// Logs a `Synced` entry recording the synced position, once it moved
    /// past the last one recorded. It goes out with the next group: a
    /// power cut can tear that group, but every `Synced` entry that
    /// survives proves the journal intact up to its position (see
    /// `recovery`). Nothing waits for it.
    fn mark_synced(&self, core: &mut Core) {
        let synced = core.marks.synced();
        if synced <= core.state.marked || core.state.sealed || core.poisoned().is_some() {
            return;
        }
        core.state.marked = synced;
        let header = entry::header(entry::Kind::Synced, 0, synced, &[]);
        // A failure (creating a segment) poisoned the journal already.
        let _ = self.enqueue_locked(core, &header, &[]);
    }

    fn enqueue_locked(
        &self,
        core: &mut Core,
        header: &[u8; entry::HEADER_LEN],
        payload: &[u8],
    ) -> Result<Placement> {
        let len = entry::entry_len(payload.len());
        if core.state.tail + len > core.state.active.len {
            if let Err(e) = self.roll(&mut core.state, len) {
                core.poison(format!("starting a segment failed: {e}"));
                return Err(e);
            }
        }
        let st = &mut core.state;
        let pos = st.tail;
        let active = st.active.clone();
        let header = entry::place(header, active.base);
        st.last = Some((active.base + pos, header));
        let padding = len as usize - entry::HEADER_LEN - payload.len();
        st.run_at_tail(len as usize)
            .data
            .push(&[&header, payload], padding);
        st.tail += len;
        st.pending_bytes += len;
        let end = active.base + st.tail;
        core.marks.append(end);
        active.add_live();
        Ok(Placement {
            segment: active,
            pos,
            end,
        })
    }

    /// Starts the next segment, for an entry of `len` bytes that does not
    /// fit in the active one: in a recycled file when the pool has one,
    /// else a new file. Done under the lock, which stalls appenders for one
    /// rename or create + directory fsync per segment (every 1 GiB by
    /// default); it keeps positions assigned strictly in order.
    fn roll(&self, st: &mut State, len: u64) -> Result<()> {
        // The unused end may hold an earlier use's entries (a recycled
        // file); zeroed, so that a file holds one use's entries alone once
        // it is recycled again (see `recycle`). At most one entry's size.
        // (A file recovery found cut short may end inside its last entry's
        // padding: nothing is unused then.)
        if st.tail < st.active.len {
            let unused = (st.active.len - st.tail) as usize;
            st.run_at_tail(unused).data.push(&[], unused);
            st.tail = st.active.len;
            st.pending_bytes += unused as u64;
        }
        let base = st.active.base + st.active.len;
        let size = self.segment_bytes.max(len);
        let segment = match self.recycler.take(base, size) {
            Some(recycled) => recycled?,
            None => Segment::create(&self.dir, base, size)?,
        };
        let segment = Arc::new(segment);
        self.segments.write().insert(base, segment.clone());
        st.active = segment;
        st.tail = 0;
        self.counters.rolls.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Bytes enqueued and not yet written.
    pub fn pending_bytes(&self) -> u64 {
        self.commit.lock().state.pending_bytes
    }

    /// The global position everything before which is written.
    pub fn written(&self) -> u64 {
        self.written_hint.load(Ordering::Acquire)
    }

    /// Records the newest entry found by recovery (before any append).
    pub fn set_last(&self, last: Option<(u64, [u8; entry::HEADER_LEN])>) {
        self.commit.lock().state.last = last;
    }

    /// Refuses every later enqueue (with `Closed`) and returns the end of
    /// the log and its newest entry: nothing can be logged past them any
    /// more, so a checkpoint taken afterwards of the shards' states covers
    /// exactly the entries before that end.
    pub fn seal(&self) -> (u64, Option<(u64, [u8; entry::HEADER_LEN])>) {
        let mut core = self.commit.lock();
        core.state.sealed = true;
        (core.marks.appended(), core.state.last)
    }

    /// The end of the log and its newest entry, without sealing (a periodic
    /// checkpoint's replay start).
    pub fn position(&self) -> (u64, Option<(u64, [u8; entry::HEADER_LEN])>) {
        let core = self.commit.lock();
        (core.marks.appended(), core.state.last)
    }

    /// The end of the log: the position the next entry starts at (or
    /// where the next segment begins).
    pub fn end_position(&self) -> u64 {
        self.commit.lock().marks.appended()
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
        let mut core = self.commit.lock();
        core.check_poisoned()?;
        if core.marks.covers(end, sync) {
            return Ok((false, core.state.pending_bytes));
        }
        let st = &mut core.state;
        if sync {
            st.background_synced = st.background_synced.max(end);
        } else {
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
                let mut core = self.commit.lock();
                let (synced, written) = (core.marks.synced(), core.marks.written());
                let poisoned = core.poisoned().is_some();
                let st = &mut core.state;
                if poisoned {
                    st.flusher_busy = false;
                    return;
                }
                if synced < st.background_synced {
                    (st.background_synced.max(st.background_written), true)
                } else if written < st.background_written {
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
        self.commit.commit(self, end, sync)
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
    fn do_io(&self, runs: &mut [Run], to_sync: &[Arc<Segment>]) -> Result<()> {
        let mut guard = self.io.lock();
        let io = &mut *guard;
        if runs.is_empty() {
            return self.write_runs(io, runs, to_sync);
        }
        let mut by_segment = runs
            .chunk_by_mut(|a, b| a.segment.base == b.segment.base)
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

    fn write_runs(
        &self,
        io: &mut IoState,
        runs: &mut [Run],
        to_sync: &[Arc<Segment>],
    ) -> Result<()> {
        let mut pieces: Vec<Piece> = Vec::with_capacity(runs.len() + 1);
        let mut tail = io.tail.take();
        for (r, run) in runs.iter_mut().enumerate() {
            let segment = &run.segment;
            let end = run.pos + run.data.entries().len() as u64;
            self.prefill.before_write(segment, end);
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
                    source: Source::Entries(0),
                    pos: run.pos,
                    run: r,
                });
                continue;
            };
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
            run.data
                .prepare_direct(prefix, (direct_end - start) as usize);
            let tail_start = end & !(BLOCK - 1);
            let entries = run.data.entries();
            let mut bytes = Vec::with_capacity((end - tail_start) as usize);
            if tail_start < run.pos {
                bytes.extend_from_slice(&prefix[(tail_start - start) as usize..]);
                bytes.extend_from_slice(entries);
            } else {
                bytes.extend_from_slice(&entries[(tail_start - run.pos) as usize..]);
            }
            pieces.push(Piece {
                file,
                source: Source::Direct,
                pos: start,
                run: r,
            });
            if end > direct_end {
                // The bytes in the file's partial last block, through the
                // page cache.
                pieces.push(Piece {
                    file: segment.file.clone(),
                    source: Source::Entries((direct_end - run.pos) as usize),
                    pos: direct_end,
                    run: r,
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
                    Source::Direct => runs[p.run].data.direct(),
                    Source::Entries(from) => &runs[p.run].data.entries()[from..],
                },
                pos: p.pos,
            })
            .collect();
        let syncs: Vec<&File> = to_sync.iter().map(|s| &*s.file).collect();
        let result = self.ops.submit(&writes, &syncs);
        drop(writes);
        match result {
            Ok(()) => {
                io.tail = tail;
                let counters = &self.counters;
                counters
                    .writes
                    .fetch_add(runs.len() as u64, Ordering::Relaxed);
                let bytes: usize = runs.iter().map(|r| r.data.entries().len()).sum();
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
                let path = &runs[pieces[i].run].segment.path;
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
        self.commit.lock().state.active.base
    }

    /// Retires segment files (already dropped from the segment map) into
    /// the recycling pool or deletes them, oldest first, fsyncing the
    /// directory after each: whatever a power cut keeps of the changes is
    /// a prefix, so the journal left is contiguous. (A filesystem may
    /// persist unsynced unlinks and renames in any order; a lost one
    /// between kept ones would leave a hole that replay refuses.) A failed
    /// rename or unlink leaves the file as it was; a failed directory fsync
    /// poisons the journal. A file renamed into the pool joins it only once
    /// the rename is durable.
    pub fn retire_files(&self, segments: Vec<Arc<Segment>>) -> Result<()> {
        for segment in segments {
            let kept = self.recycler.set_aside(segment)?;
            if let Err(e) = sync_dir(&self.dir) {
                self.commit.lock().poison(e.to_string());
                return Err(e);
            }
            if let Some(base) = kept {
                self.recycler.keep(base);
            }
        }
        Ok(())
    }

    pub fn recycler(&self) -> &Recycler {
        &self.recycler
    }
}

impl Leader for Writer {
    type State = State;
    type Group = Group;
    type Dirty = Vec<Arc<Segment>>;

    /// With O_DIRECT, the fdatasync runs after the write phase is
    /// released, so the next leader writes while this one waits for the
    /// device flush. Through the page cache it stays inside the write
    /// phase: two overlapping fdatasyncs of buffered data could let one
    /// report success for pages whose writeback error the other consumed.
    fn overlap(&self) -> bool {
        self.direct.load(Ordering::Relaxed)
    }

    fn take(&self, core: &mut Core, sync_inline: bool) -> Group {
        let st = &mut core.state;
        let runs = std::mem::take(&mut st.runs);
        let mut to_sync = Vec::new();
        if sync_inline {
            to_sync = std::mem::take(&mut st.dirty);
            add_segments(&mut to_sync, &runs);
        }
        st.pending_bytes = 0;
        Group { runs, to_sync }
    }

    fn write(&self, group: &mut Group) -> Result<()> {
        self.do_io(&mut group.runs, &group.to_sync)
    }

    fn written(&self, core: &mut Core, group: &Group, synced_inline: bool) {
        self.written_hint
            .store(core.marks.written(), Ordering::Release);
        if !synced_inline {
            add_segments(&mut core.state.dirty, &group.runs);
        }
    }

    /// A sync phase flushes only the segments written since the previous
    /// phase took its own: every byte before its target was written (the
    /// O_DIRECT write completed) before its fdatasync starts.
    fn take_dirty(&self, core: &mut Core) -> Vec<Arc<Segment>> {
        std::mem::take(&mut core.state.dirty)
    }

    fn sync(&self, dirty: &Vec<Arc<Segment>>) -> Result<()> {
        self.do_sync(dirty)
    }

    /// The flush may have covered nothing: the segments go back for
    /// whoever looks at `dirty` (nobody, once poisoned).
    fn sync_failed(&self, core: &mut Core, dirty: Vec<Arc<Segment>>) {
        core.state.dirty.extend(dirty);
    }

    fn synced(&self, core: &mut Core) {
        self.mark_synced(core);
    }

    /// Hands the written runs to the tail cache, and keeps a few emptied
    /// buffers for new runs.
    fn finish(&self, core: &mut Guard<'_, Core>, group: Group, written: bool) {
        let reusable = if written && self.tail.enabled() {
            // Only after the fdatasync and off the lock: the cache may
            // shrink the runs and free older ones (a few hundred µs for
            // megabytes), which would otherwise delay the device flush and
            // stall appenders. Until then readers of these bytes use the
            // mapping.
            commit::unlocked(core, || {
                group
                    .runs
                    .into_iter()
                    .flat_map(|run| self.tail.push(run.segment.base + run.pos, run.data))
                    .collect()
            })
        } else {
            group
                .runs
                .into_iter()
                .map(|run| run.data)
                .collect::<Vec<_>>()
        };
        let spare = &mut core.state.spare;
        for data in reusable {
            if spare.len() < SPARE_RUNS && data.capacity() <= SPARE_RUN_BYTES {
                spare.push(data);
            }
        }
    }
}

/// Adds the segments of `runs` missing from `segments`.
fn add_segments(segments: &mut Vec<Arc<Segment>>, runs: &[Run]) {
    for run in runs {
        if !segments.iter().any(|s| Arc::ptr_eq(s, &run.segment)) {
            segments.push(run.segment.clone());
        }
    }
}
