//! Space ahead of the log, prepared before the writer reaches it.
//!
//! Why: on ext4 and XFS, a write into space that fallocate(2) reserved (or
//! into a hole) lands in an *unwritten* extent, and the next fdatasync must
//! commit the filesystem journal to record the extent as written — a
//! metadata commit and an extra device flush on every group commit. On this
//! project's test machine that doubles the cost of an fdatasync (see
//! docs/BENCHMARKS.md). Writes over blocks that already hold data change no
//! metadata, so their fdatasync only flushes the data. RocksDB
//! (`recycle_log_file_num`) and raft-engine (`prefill-for-recycle`) get the
//! same effect by reusing written files; we write zeros ahead of the log
//! instead, because stale entries in a recycled file would look valid to
//! recovery.
//!
//! One thread per journal keeps up to `AHEAD` bytes past the writer's
//! position zeroed (O_DIRECT writes of `CHUNK` bytes, then one fdatasync per chunk,
//! which commits the extent conversion once per chunk rather than once per
//! append). The cost is writing those bytes twice, which only pays when
//! appends wait for fdatasync in small groups: a chunk is zeroed only if
//! the journal fdatasynced since the previous chunk was prepared, less than
//! `ZERO_BELOW_BYTES_PER_SYNC` per fdatasync on average (`worth_zeroing`);
//! otherwise (pure `none`/`os` traffic, or the large groups of many or of
//! pipelining producers: bound by disk bandwidth, where doubling the writes
//! would halve throughput) it is just fallocated. With `[journal] prefill_zeros =
//! false` (or where O_DIRECT is unavailable) it always only fallocates,
//! which keeps block allocation out of the append path but not the extent
//! conversion.
//!
//! A recycled segment file (`recycle`) needs none of this: its blocks are
//! all written, so the thread leaves it alone.
//!
//! Correctness rests on one rule: the thread never touches a block at or
//! before the highest block the writer has claimed, and the writer never
//! writes into the range the thread is preparing (it waits for it; with the
//! thread ahead, that never happens). Zeros are what unwritten log space
//! holds anyway, so recovery reads prepared and unprepared space alike.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;

use memmap2::MmapMut;
use parking_lot::{Condvar, Mutex};

use super::segment::Segment;
use super::writer::{IoCounters, BLOCK};
use crate::io::fs;

/// How far ahead of the writer the space is kept prepared, at most.
const AHEAD: u64 = 64 << 20;
/// ... and at least: the distance grows with what the writer has written
/// since the journal opened, so a store that holds little takes little
/// disk (a 1 GiB segment is sparse) while a busy one stays well ahead.
const MIN_AHEAD: u64 = 1 << 20;
/// Bytes prepared per write + fdatasync, at most (a multiple of `BLOCK`).
const CHUNK: u64 = 8 << 20;
/// Zero ahead only while the writer fdatasyncs fewer bytes than this per
/// flush on average (see `worth_zeroing`).
const ZERO_BELOW_BYTES_PER_SYNC: u64 = 256 << 10;
/// Size of the zero buffer one prepare write takes from.
const ZERO_BUF: usize = 1 << 20;

struct State {
    /// The segment the writer writes to.
    segment: Option<Arc<Segment>>,
    /// `[.., ready)` of `segment` is prepared (or written by the log).
    ready: u64,
    /// The writer has written, or is writing, every block below this
    /// (block-aligned) position of `segment`.
    claimed: u64,
    /// Bytes the writer has claimed since the journal opened.
    progress: u64,
    /// The range the thread is preparing now: (segment base, start, end).
    busy: Option<(u64, u64, u64)>,
    stop: bool,
    /// The first failure; the thread prepares nothing after it (the
    /// writer's own writes then report the problem, e.g. ENOSPC).
    failed: Option<String>,
    prepared_bytes: u64,
    zeroed_bytes: u64,
}

struct Shared {
    state: Mutex<State>,
    cond: Condvar,
    zeros: bool,
    /// The writer's counters: whether, and how often per byte written, it
    /// fdatasynced since the last chunk decides whether zeroing pays.
    counters: Arc<IoCounters>,
}

pub struct Prefill {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Prefill {
    /// Starts preparing `active` from `tail` on: with zeros if `zeros` and
    /// the writer's `counters` show small synced groups (`worth_zeroing`),
    /// else by fallocate. Fails (naming the thread) when it cannot start.
    pub fn start(
        active: Arc<Segment>,
        tail: u64,
        zeros: bool,
        counters: Arc<IoCounters>,
    ) -> crate::Result<Prefill> {
        let prefill = Self::idle(active, tail, zeros, counters);
        let worker = prefill.shared.clone();
        let thread = crate::thread::spawn("mqs-journal-prefill", move || worker.run())?;
        *prefill.thread.lock() = Some(thread);
        Ok(prefill)
    }

    /// A prefill without its thread, which prepares nothing: for a
    /// journal opened read-only, whose writer never writes.
    pub fn idle(
        active: Arc<Segment>,
        tail: u64,
        zeros: bool,
        counters: Arc<IoCounters>,
    ) -> Prefill {
        let claimed = tail.next_multiple_of(BLOCK);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                segment: Some(active),
                ready: claimed,
                claimed,
                progress: 0,
                busy: None,
                stop: false,
                failed: None,
                prepared_bytes: 0,
                zeroed_bytes: 0,
            }),
            cond: Condvar::new(),
            zeros,
            counters,
        });
        Prefill {
            shared,
            thread: Mutex::new(None),
        }
    }

    /// Called by the writer before it writes `[.., end)` of `segment`
    /// (`end` rounded up to a block): waits while that range is being
    /// prepared, claims it, and wakes the thread if it has fallen behind.
    pub fn before_write(&self, segment: &Arc<Segment>, end: u64) {
        let end = end.next_multiple_of(BLOCK);
        let mut st = self.shared.state.lock();
        let same = matches!(&st.segment, Some(s) if s.base == segment.base);
        if !same {
            st.segment = Some(segment.clone());
            // A recycled file has every block written already.
            st.ready = if segment.prepared { segment.len } else { 0 };
            st.claimed = 0;
        }
        while matches!(st.busy, Some((base, start, _)) if base == segment.base && end > start) {
            self.shared.cond.wait(&mut st);
        }
        if end > st.claimed {
            st.progress += end - st.claimed;
            st.claimed = end;
        }
        if st.ready < st.claimed + ahead(&st) && st.failed.is_none() {
            self.shared.cond.notify_all();
        }
    }

    /// Stops the thread (clean close); appends after it just go unprepared.
    pub fn stop(&self) {
        self.shared.state.lock().stop = true;
        self.shared.cond.notify_all();
        if let Some(thread) = self.thread.lock().take() {
            let _ = thread.join();
        }
    }

    /// Waits until `[.., pos)` of the current segment is prepared (or the
    /// thread failed).
    #[cfg(test)]
    fn wait_ready(&self, pos: u64) {
        let mut st = self.shared.state.lock();
        while st.ready < pos && st.failed.is_none() {
            self.shared.cond.wait(&mut st);
        }
    }

    pub fn stats(&self) -> serde_json::Value {
        let st = self.shared.state.lock();
        serde_json::json!({
            "mode": if self.shared.zeros { "zeros" } else { "allocate" },
            "prepared_bytes": st.prepared_bytes,
            "zeroed_bytes": st.zeroed_bytes,
            "ahead_bytes": st.ready.saturating_sub(st.claimed),
            "target_ahead_bytes": ahead(&st),
            "failed": st.failed,
        })
    }
}

impl Drop for Prefill {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Shared {
    fn run(&self) {
        let mut zeros: Option<MmapMut> = None;
        // The O_DIRECT descriptor of the segment being prepared.
        let mut file: Option<(u64, File)> = None;
        // Zero the first chunk: a new journal's first appends are as likely
        // to be fsynced as not.
        let mut seen: Option<(u64, u64)> = None;
        loop {
            let (segment, start, end) = {
                let mut st = self.state.lock();
                loop {
                    if st.stop {
                        return;
                    }
                    if st.failed.is_none() {
                        if let Some(job) = next_job(&st) {
                            // Marked busy in the same critical section that
                            // chose it: from here on the writer waits
                            // rather than write into the range.
                            st.busy = Some((job.0.base, job.1, job.2));
                            break job;
                        }
                    }
                    self.cond.wait(&mut st);
                }
            };
            let now = (
                self.counters.syncs.load(Ordering::Relaxed),
                self.counters.bytes_written.load(Ordering::Relaxed),
            );
            let zero = self.zeros && seen.is_none_or(|before| worth_zeroing(before, now));
            seen = Some(now);
            let result = self.prepare(&segment, start, end, zero, &mut zeros, &mut file);
            let mut st = self.state.lock();
            st.busy = None;
            match result {
                Ok(()) => {
                    if matches!(&st.segment, Some(s) if s.base == segment.base) {
                        st.ready = end;
                    }
                    st.prepared_bytes += end - start;
                    if zero {
                        st.zeroed_bytes += end - start;
                    }
                }
                Err(e) => {
                    let reason = format!("{}: {e}", segment.path.display());
                    crate::log::emit(
                        crate::log::Level::Error,
                        &format!("journal prefill failed: {reason}"),
                    );
                    st.failed = Some(reason);
                }
            }
            self.cond.notify_all();
        }
    }

    fn prepare(
        &self,
        segment: &Segment,
        start: u64,
        end: u64,
        zero: bool,
        zeros: &mut Option<MmapMut>,
        file: &mut Option<(u64, File)>,
    ) -> std::io::Result<()> {
        if !zero {
            return allocate(&segment.file, start, end);
        }
        if zeros.is_none() {
            // Anonymous memory is page-aligned and zero-filled: what
            // O_DIRECT needs, without an aligned allocator.
            *zeros = Some(MmapMut::map_anon(ZERO_BUF)?);
        }
        let buf = zeros.as_ref().expect("just mapped");
        if !matches!(file, Some((base, _)) if *base == segment.base) {
            let direct = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(&segment.path)?;
            *file = Some((segment.base, direct));
        }
        let (_, direct) = file.as_ref().expect("just opened");
        let mut pos = start;
        while pos < end {
            let len = (end - pos).min(ZERO_BUF as u64) as usize;
            fs::write_at(direct, &buf[..len], pos)?;
            pos += len as u64;
        }
        fs::sync_data(direct)
    }
}

/// Whether the writer's fdatasyncs and bytes written, `(syncs, bytes)`
/// before and now, make zeroing the next chunk pay: it did fdatasync, in
/// groups small enough that the extent conversion each fdatasync would
/// commit costs more than writing the group's bytes a second time. That
/// conversion costs about one extra metadata commit (~100 µs here); at
/// ~2 GB/s the device writes ~200 KiB in that time. Large groups (several
/// producers, or pipelined appends) are bound by bandwidth, which zeroing
/// would halve.
fn worth_zeroing(before: (u64, u64), now: (u64, u64)) -> bool {
    let syncs = now.0.saturating_sub(before.0);
    let bytes = now.1.saturating_sub(before.1);
    syncs > 0 && bytes / syncs < ZERO_BELOW_BYTES_PER_SYNC
}

/// The next range to prepare, if the prepared space ends less than `AHEAD`
/// past the writer's claim.
fn next_job(st: &State) -> Option<(Arc<Segment>, u64, u64)> {
    let segment = st.segment.as_ref()?;
    let start = st.ready.max(st.claimed);
    // The file's partial last block (a size that is not a multiple of the
    // block size) is left alone: O_DIRECT cannot write it.
    let limit = segment.len & !(BLOCK - 1);
    let ahead = ahead(st);
    if start >= st.claimed + ahead || start >= limit {
        return None;
    }
    let chunk = (CHUNK.min(ahead / 2) & !(BLOCK - 1)).max(BLOCK);
    let end = (start + chunk).min(limit);
    Some((segment.clone(), start, end))
}

fn ahead(st: &State) -> u64 {
    st.progress.clamp(MIN_AHEAD, AHEAD)
}

fn allocate(file: &File, start: u64, end: u64) -> std::io::Result<()> {
    // Mode 0 inside the file's size only allocates blocks (reading as
    // zeros).
    match fs::fallocate(file, 0, start, end - start) {
        Ok(()) => Ok(()),
        // Filesystems without fallocate: appends allocate as they go.
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::EINVAL)
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{FileExt, MetadataExt};

    use super::*;

    fn allocated(segment: &Segment) -> u64 {
        std::fs::metadata(&segment.path).unwrap().blocks() * 512
    }

    #[test]
    fn zeros_ahead_of_the_writer_and_never_behind_it() {
        let dir = tempfile::tempdir().unwrap();
        let segment = Arc::new(Segment::create(dir.path(), 0, 32 << 20).unwrap());
        assert!(allocated(&segment) < 64 << 10, "a new segment is sparse");
        let prefill = Prefill::start(segment.clone(), 0, true, Arc::default()).unwrap();
        prefill.wait_ready(MIN_AHEAD);
        assert!(allocated(&segment) >= MIN_AHEAD);
        assert_eq!(prefill.stats()["failed"], serde_json::Value::Null);

        // The writer writes [0, 3 MiB) itself (outrunning the thread), with
        // a pattern the thread must never overwrite.
        let written = 3u64 << 20;
        segment
            .file
            .write_all_at(&vec![0xA5; written as usize], 0)
            .unwrap();
        prefill.before_write(&segment, written - 100);
        prefill.wait_ready(written + MIN_AHEAD);
        prefill.stop();
        let data = std::fs::read(&segment.path).unwrap();
        assert!(data[..written as usize].iter().all(|&b| b == 0xA5));
        let ready = written + MIN_AHEAD;
        assert!(data[written as usize..ready as usize]
            .iter()
            .all(|&b| b == 0));
        assert!(allocated(&segment) >= ready);
        // The distance ahead grew with what the writer wrote.
        assert!(prefill.stats()["target_ahead_bytes"].as_u64().unwrap() >= written);
        assert!(prefill.stats()["prepared_bytes"].as_u64().unwrap() >= MIN_AHEAD);
    }

    #[test]
    fn zeros_only_while_the_writer_fdatasyncs_small_groups() {
        let dir = tempfile::tempdir().unwrap();
        let segment = Arc::new(Segment::create(dir.path(), 0, 64 << 20).unwrap());
        let counters = Arc::new(IoCounters::default());
        let prefill = Prefill::start(segment.clone(), 0, true, counters.clone()).unwrap();
        prefill.wait_ready(MIN_AHEAD);
        let zeroed = |p: &Prefill| p.stats()["zeroed_bytes"].as_u64().unwrap();
        let prepared = |p: &Prefill| p.stats()["prepared_bytes"].as_u64().unwrap();
        // Two chunks of half the distance ahead: the first is zeroed, the
        // second (no fdatasync since) only allocated.
        let first = zeroed(&prefill);
        assert_eq!(first, MIN_AHEAD / 2, "{}", prefill.stats());
        prefill.before_write(&segment, 2 << 20);
        prefill.wait_ready(4 << 20);
        assert_eq!(zeroed(&prefill), first);
        assert!(prepared(&prefill) >= 3 << 20);
        // fdatasyncs of large groups: zeroing would cost more than it saves.
        counters.syncs.fetch_add(2, Ordering::Relaxed);
        counters
            .bytes_written
            .fetch_add(2 * ZERO_BELOW_BYTES_PER_SYNC, Ordering::Relaxed);
        prefill.before_write(&segment, 4 << 20);
        prefill.wait_ready(8 << 20);
        assert_eq!(zeroed(&prefill), first, "{}", prefill.stats());
        // After small synced groups, the next chunk is zeroed.
        counters.syncs.fetch_add(2, Ordering::Relaxed);
        counters.bytes_written.fetch_add(8192, Ordering::Relaxed);
        let before = prepared(&prefill);
        prefill.before_write(&segment, 8 << 20);
        prefill.wait_ready(16 << 20);
        prefill.stop();
        assert!(zeroed(&prefill) > first, "{}", prefill.stats());
        assert!(prepared(&prefill) > before);
    }

    #[test]
    fn zeroing_pays_for_small_synced_groups_only() {
        let small = ZERO_BELOW_BYTES_PER_SYNC - 1;
        assert!(worth_zeroing((10, 0), (11, small)));
        assert!(!worth_zeroing((10, 0), (11, ZERO_BELOW_BYTES_PER_SYNC)));
        assert!(!worth_zeroing((10, 0), (10, 4096)), "no fdatasync");
    }

    #[test]
    fn allocate_mode_reserves_blocks_without_writing() {
        let dir = tempfile::tempdir().unwrap();
        let segment = Arc::new(Segment::create(dir.path(), 0, 8 << 20).unwrap());
        let prefill = Prefill::start(segment.clone(), 0, false, Arc::default()).unwrap();
        prefill.wait_ready(MIN_AHEAD);
        prefill.stop();
        assert!(allocated(&segment) >= MIN_AHEAD);
        assert_eq!(prefill.stats()["mode"], "allocate");
    }

    #[test]
    fn a_new_segment_restarts_from_its_start() {
        let dir = tempfile::tempdir().unwrap();
        let first = Arc::new(Segment::create(dir.path(), 0, 1 << 20).unwrap());
        let second = Arc::new(Segment::create(dir.path(), 1 << 20, 4 << 20).unwrap());
        let prefill = Prefill::start(first.clone(), 0, true, Arc::default()).unwrap();
        prefill.before_write(&second, 4096);
        prefill.wait_ready(4096 + MIN_AHEAD);
        prefill.stop();
        assert!(allocated(&second) >= MIN_AHEAD);
    }
}
