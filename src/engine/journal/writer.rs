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
//! next leader in one write and one fdatasync. Leader/follower keeps the
//! latency of a lone appender at one write + one fsync (no hand-off to a
//! thread), while throughput grows with concurrency, as each fsync covers
//! every entry that arrived during the previous one.
//!
//! The I/O goes through `FileOps` so that O_DIRECT or io_uring submission
//! can replace plain pwrite/fdatasync later, and tests can inject failures.
//!
//! Any failed write or fsync POISONS the journal: after a failed fsync the
//! kernel may have dropped the dirty pages, so retrying it could report
//! success for data that never reached the disk. Every later append, and
//! every read that would need unwritten data, fails with `Poisoned`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex, RwLock};

use super::entry;
use super::segment::{sync_dir, Segment};
use crate::{Error, Result};

/// The file operations of the write path (a seam for O_DIRECT/io_uring and
/// for fault injection in tests).
pub trait FileOps: Send + Sync {
    fn write_at(&self, file: &File, buf: &[u8], pos: u64) -> io::Result<()> {
        file.write_all_at(buf, pos)
    }

    fn sync_data(&self, file: &File) -> io::Result<()> {
        file.sync_data()
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
    /// A leader is doing I/O (without the lock).
    writing: bool,
    /// Segments written to since the last fdatasync.
    dirty: Vec<Arc<Segment>>,
    poisoned: Option<String>,
    spare: Vec<Vec<u8>>,
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
    dir: PathBuf,
    segment_bytes: u64,
    segments: SegmentMap,
    written_hint: AtomicU64,
    pub writes: AtomicU64,
    pub syncs: AtomicU64,
    pub bytes_written: AtomicU64,
}

impl Writer {
    /// A writer appending to `active` from `tail` on (everything before is
    /// already on disk).
    pub fn new(
        dir: PathBuf,
        segment_bytes: u64,
        segments: SegmentMap,
        active: Arc<Segment>,
        tail: u64,
        ops: Arc<dyn FileOps>,
    ) -> Writer {
        let end = active.base + tail;
        Writer {
            state: Mutex::new(State {
                runs: Vec::new(),
                pending_bytes: 0,
                active,
                tail,
                end,
                written: end,
                synced: end,
                sync_wanted: 0,
                writing: false,
                dirty: Vec::new(),
                poisoned: None,
                spare: Vec::new(),
            }),
            cond: Condvar::new(),
            ops,
            dir,
            segment_bytes,
            segments,
            written_hint: AtomicU64::new(end),
            writes: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
        }
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
        let len = entry::entry_len(payload.len());
        let mut st = self.state.lock();
        if let Some(reason) = &st.poisoned {
            return Err(Self::poisoned_error(reason));
        }
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
                }
                Err(e) => {
                    st.poisoned = Some(format!("creating a segment failed: {e}"));
                    self.cond.notify_all();
                    return Err(e);
                }
            }
        }
        let pos = st.tail;
        let active = st.active.clone();
        let extend = matches!(st.runs.last(), Some(run)
            if Arc::ptr_eq(&run.segment, &active) && run.pos + run.data.len() as u64 == pos);
        if !extend {
            let data = st.spare.pop().unwrap_or_default();
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

    /// The global position after the last enqueued entry.
    pub fn end(&self) -> u64 {
        self.state.lock().end
    }

    /// Makes sure everything before `end` is written to the kernel.
    pub fn ensure_written(&self, end: u64) -> Result<()> {
        if self.written() >= end {
            return Ok(());
        }
        self.commit(end, false)
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
            }
            if st.writing {
                self.cond.wait(&mut st);
                continue;
            }
            // Lead: take everything buffered, write and maybe sync it.
            let runs = std::mem::take(&mut st.runs);
            let target = st.end;
            let do_sync = st.sync_wanted > st.synced;
            let mut to_sync = Vec::new();
            if do_sync {
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

            let result = self.do_io(&runs, &to_sync);

            st = self.state.lock();
            st.writing = false;
            match result {
                Ok(()) => {
                    st.written = target;
                    self.written_hint.store(target, Ordering::Release);
                    if do_sync {
                        st.synced = target;
                    } else {
                        for run in &runs {
                            if !st.dirty.iter().any(|s| Arc::ptr_eq(s, &run.segment)) {
                                st.dirty.push(run.segment.clone());
                            }
                        }
                    }
                }
                Err(e) => {
                    st.poisoned = Some(e.to_string());
                }
            }
            for mut run in runs {
                if st.spare.len() < 4 && run.data.capacity() <= 4 << 20 {
                    run.data.clear();
                    st.spare.push(run.data);
                }
            }
            self.cond.notify_all();
        }
    }

    fn do_io(&self, runs: &[Run], to_sync: &[Arc<Segment>]) -> Result<()> {
        for run in runs {
            self.ops
                .write_at(&run.segment.file, &run.data, run.pos)
                .map_err(|e| {
                    Error::io(format!("writing to '{}'", run.segment.path.display()), e)
                })?;
            self.writes.fetch_add(1, Ordering::Relaxed);
            self.bytes_written
                .fetch_add(run.data.len() as u64, Ordering::Relaxed);
        }
        for segment in to_sync {
            self.ops
                .sync_data(&segment.file)
                .map_err(|e| Error::io(format!("fdatasync of '{}'", segment.path.display()), e))?;
            self.syncs.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// The active segment (never removed).
    pub fn active_base(&self) -> u64 {
        self.state.lock().active.base
    }

    /// Removes segment files (already dropped from the segment map) and
    /// fsyncs the directory.
    pub fn remove_files(&self, segments: &[Arc<Segment>]) -> Result<()> {
        for segment in segments {
            std::fs::remove_file(&segment.path)
                .map_err(|e| Error::io(format!("removing '{}'", segment.path.display()), e))?;
        }
        if let Err(e) = sync_dir(&self.dir) {
            self.state.lock().poisoned = Some(e.to_string());
            return Err(e);
        }
        Ok(())
    }
}
