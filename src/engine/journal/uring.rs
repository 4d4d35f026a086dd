//! io_uring submission of the writer's I/O: the leader's writes and the
//! fdatasyncs that follow them go to the kernel as one chain of linked
//! requests (IOSQE_IO_LINK: each starts only after the previous one
//! completed successfully, so every fdatasync runs after the writes before
//! it) in one io_uring_enter, instead of one pwrite and one fdatasync
//! syscall each. Writes with nothing to chain them to are plain pwrites
//! (see `write_directly`).
//!
//! Two rings per journal, each behind a mutex: one for the leader's writes
//! (and the write + fdatasync chains of buffered mode), one for the
//! fdatasync-only submissions of O_DIRECT mode's sync phase, so a leader
//! waiting for a device flush does not hold up the next leader's writes.
//! The caller waits for every completion before returning, so buffers
//! outlive their requests, also when io_uring_enter fails with requests
//! in flight (`settle`); such a failure is reported as a submission
//! failure, which poisons the journal, and the ring is never used again.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use io_uring::{opcode, squeue, types, IoUring};
use parking_lot::Mutex;

use super::writer::{FileOps, IoFailure, WriteOp};
use crate::io::fs::{self, SyncReport};

/// Ring size: a leader's batch is a few writes and fdatasyncs (one per
/// segment touched); longer batches go in several chains.
const ENTRIES: u32 = 32;

/// The largest single write request (a longer write is continued like a
/// short write).
const MAX_WRITE: usize = 1 << 30;

pub struct UringOps {
    ring: Mutex<Ring>,
    sync_ring: Mutex<Ring>,
    /// Test hook: 1 makes writes, 2 makes fdatasyncs target an invalid
    /// descriptor, so the kernel fails them (EBADF) through the ring; 3
    /// makes io_uring_enter fail (EIO) once the kernel took the requests.
    #[cfg(test)]
    pub fault: std::sync::atomic::AtomicU8,
}

struct Ring {
    ring: IoUring,
    /// Why the ring may not be entered again: a failed submission can
    /// leave entries in the queue that the next io_uring_enter would
    /// submit, pointing into buffers long gone.
    broken: Option<String>,
}

/// How long requests may stay in flight after io_uring_enter failed before
/// the process is aborted (see `settle`).
const SETTLE_LIMIT: Duration = Duration::from_secs(30);

/// One request; `file` is what the filesystem layer is told about once it
/// completed (`fd` is its descriptor, or an invalid one in fault tests).
enum Op<'a> {
    Write {
        index: usize,
        file: &'a File,
        fd: RawFd,
        ptr: *const u8,
        len: usize,
        pos: u64,
    },
    Sync {
        index: usize,
        file: &'a File,
        fd: RawFd,
        /// Started before submission when no write precedes the sync in
        /// its chain; otherwise started on completion, after the chain's
        /// writes were reported (the link ran them before the sync).
        report: Option<SyncReport>,
    },
}

impl Op<'_> {
    /// Reports a request that completed with `res` to the filesystem
    /// layer; false if it failed (or wrote nothing).
    fn report(&mut self, res: i32) -> bool {
        if res < 0 {
            return false;
        }
        match self {
            Op::Write {
                file,
                ptr,
                len,
                pos,
                ..
            } => {
                let n = (res as usize).min(*len);
                if n == 0 {
                    return false;
                }
                // SAFETY: the caller's buffer of `len` bytes at `ptr` is
                // borrowed for the whole submission, and n <= len.
                fs::report_write(file, unsafe { std::slice::from_raw_parts(*ptr, n) }, *pos);
            }
            Op::Sync { file, report, .. } => match report.take() {
                Some(report) => report.done(),
                None => SyncReport::start(file).done(),
            },
        }
        true
    }
}

fn transient(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::Interrupted
        || matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EBUSY))
}

/// Collects the completions in the ring into `results` (by request index).
fn reap(ring: &mut IoUring, results: &mut [Option<i32>], pending: &mut usize) {
    for cqe in ring.completion() {
        if let Some(slot) = results.get_mut(cqe.user_data() as usize) {
            if slot.replace(cqe.result()).is_none() {
                *pending -= 1;
            }
        }
    }
}

/// After io_uring_enter failed: waits until no request of the chunk is in
/// the kernel's hands any more, since the caller frees their buffers on
/// return. Requests the kernel never took stay queued (the ring is then
/// marked broken, so nothing submits them). Completions keep arriving
/// after a failed enter (the kernel runs completion work on the way back
/// from any system call); if they stop, returning could let the kernel
/// read freed memory into the journal, so the process is aborted instead.
fn settle(ring: &mut IoUring, results: &mut [Option<i32>], pending: &mut usize) {
    let started = Instant::now();
    loop {
        reap(ring, results, pending);
        let queued = {
            let mut sq = ring.submission();
            sq.sync();
            sq.len()
        };
        if *pending <= queued {
            return;
        }
        if started.elapsed() > SETTLE_LIMIT {
            eprintln!(
                "mqstore: io_uring requests still in flight {}s after io_uring_enter failed; \
                 aborting, as returning would free memory the kernel may still read",
                SETTLE_LIMIT.as_secs()
            );
            std::process::abort();
        }
        if ring.submit_and_wait(1).is_err() {
            std::thread::yield_now();
        }
    }
}

impl UringOps {
    /// Sets up a ring and checks that it really executes requests (a
    /// sandbox may refuse io_uring_setup with ENOSYS or EPERM, or block
    /// io_uring_enter).
    pub fn new() -> io::Result<UringOps> {
        let ring = |ring| Ring { ring, broken: None };
        Ok(UringOps {
            ring: Mutex::new(ring(Self::checked_ring()?)),
            sync_ring: Mutex::new(ring(Self::checked_ring()?)),
            #[cfg(test)]
            fault: std::sync::atomic::AtomicU8::new(0),
        })
    }

    fn checked_ring() -> io::Result<IoUring> {
        let mut ring = IoUring::new(ENTRIES)?;
        let nop = opcode::Nop::new().build().user_data(0);
        // SAFETY: a NOP references no memory.
        unsafe { ring.submission().push(&nop) }
            .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        ring.submit_and_wait(1)?;
        let cqe = ring
            .completion()
            .next()
            .ok_or_else(|| io::Error::other("io_uring returned no completion for a NOP"))?;
        if cqe.result() < 0 {
            return Err(io::Error::from_raw_os_error(-cqe.result()));
        }
        Ok(ring)
    }

    fn fault(&self) -> u8 {
        #[cfg(test)]
        return self.fault.load(std::sync::atomic::Ordering::SeqCst);
        #[cfg(not(test))]
        0
    }

    /// io_uring_enter: submits what is queued and waits for `want`
    /// completions.
    fn enter(&self, ring: &mut IoUring, want: usize) -> io::Result<usize> {
        if self.fault() == 3 {
            ring.submit()?;
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        ring.submit_and_wait(want)
    }

    /// Runs `ops` on `ring` unless an earlier failure broke it; a failed
    /// submission breaks it.
    fn run(&self, ring: &mut Ring, ops: Vec<Op<'_>>) -> Result<(), IoFailure> {
        if let Some(why) = &ring.broken {
            return Err(IoFailure::Submission(io::Error::other(format!(
                "io_uring is unusable after an earlier failure ({why})"
            ))));
        }
        let result = self.run_chains(&mut ring.ring, ops);
        if let Err(IoFailure::Submission(e)) = &result {
            ring.broken = Some(e.to_string());
        }
        result
    }

    /// Runs `ops` in order as linked chains; a short write is continued
    /// and the requests after it (cancelled by the kernel) are resubmitted.
    /// Every request that completed is reported to the filesystem layer
    /// (`Op::report`), in chain order, before this returns.
    fn run_chains(&self, ring: &mut IoUring, mut ops: Vec<Op<'_>>) -> Result<(), IoFailure> {
        let capacity = ring.submission().capacity().min(ENTRIES as usize);
        let mut done = 0;
        while done < ops.len() {
            let count = capacity.min(ops.len() - done);
            let chunk = &ops[done..done + count];
            let mut results = vec![None; count];
            for (i, op) in chunk.iter().enumerate() {
                let entry = match *op {
                    Op::Write {
                        fd, ptr, len, pos, ..
                    } => opcode::Write::new(types::Fd(fd), ptr, len.min(MAX_WRITE) as u32)
                        .offset(pos)
                        .build(),
                    Op::Sync { fd, .. } => opcode::Fsync::new(types::Fd(fd))
                        .flags(types::FsyncFlags::DATASYNC)
                        .build(),
                };
                // ASYNC for fdatasyncs: they always block, so trying them
                // inline first only adds a failed non-blocking attempt;
                // the io-wq worker runs them right after the linked write
                // completes. Writes are issued inline: they overwrite space
                // `prefill` zeroed, which O_DIRECT completes without
                // blocking (forcing them to a worker as well cost a third
                // of single-appender fsync throughput when measured).
                let flags = match op {
                    Op::Sync { .. } => squeue::Flags::ASYNC,
                    Op::Write { .. } => squeue::Flags::empty(),
                };
                let mut entry = entry.user_data(i as u64).flags(flags);
                if i + 1 < count {
                    entry = entry.flags(squeue::Flags::IO_LINK);
                }
                // SAFETY: every buffer is borrowed by the caller for the
                // whole call, and this function does not return while the
                // kernel holds a request it pushed (see `settle`).
                if unsafe { ring.submission().push(&entry) }.is_err() {
                    return Err(IoFailure::Submission(io::Error::other(
                        "io_uring submission queue full",
                    )));
                }
            }
            let mut pending = count;
            while pending > 0 {
                match self.enter(ring, pending) {
                    Ok(_) => reap(ring, &mut results, &mut pending),
                    Err(e) if transient(&e) => std::thread::yield_now(),
                    Err(e) => {
                        settle(ring, &mut results, &mut pending);
                        // Report what the kernel did complete: the prefix
                        // of the chain that succeeded.
                        for (op, res) in ops[done..].iter_mut().zip(&results) {
                            if !res.is_some_and(|res| op.report(res)) {
                                break;
                            }
                        }
                        return Err(IoFailure::Submission(e));
                    }
                }
            }
            for (i, res) in results.into_iter().enumerate() {
                let res = res.expect("every request completed");
                let op = &mut ops[done + i];
                if !op.report(res) {
                    return Err(match *op {
                        Op::Write { index, .. } if res < 0 => {
                            IoFailure::Write(index, io::Error::from_raw_os_error(-res))
                        }
                        Op::Write { index, .. } => IoFailure::Write(
                            index,
                            io::Error::new(io::ErrorKind::WriteZero, "write returned 0"),
                        ),
                        Op::Sync { index, .. } => {
                            IoFailure::Sync(index, io::Error::from_raw_os_error(-res))
                        }
                    });
                }
                if let Op::Write {
                    index,
                    file,
                    fd,
                    ptr,
                    len,
                    pos,
                } = *op
                {
                    let n = res as usize;
                    if n < len {
                        // Short write: the rest of the chain was
                        // cancelled; continue from here.
                        let at = done + i;
                        ops[at] = Op::Write {
                            index,
                            file,
                            fd,
                            // SAFETY: n < len, so still inside the buffer.
                            ptr: unsafe { ptr.add(n) },
                            len: len - n,
                            pos: pos + n as u64,
                        };
                        ops.drain(..at);
                        return self.run_chains(ring, ops);
                    }
                }
            }
            done += count;
        }
        Ok(())
    }
}

impl UringOps {
    /// Writes with no fdatasync to chain them to (`os` and `none`
    /// durability) go out as pwrite(2) on the calling thread. Through the
    /// ring, an O_DIRECT write that cannot complete without blocking (into
    /// unwritten extents, which is what these modes write into: the prefill
    /// thread zeroes ahead only for small synced groups) is handed to an
    /// io-wq worker, and under CPU contention every group then waits for
    /// that worker to be scheduled: 1 KiB x 64 `os` appends fell from 276 k
    /// to 17 k msgs/s with two busy loops on a 2-core machine, against 276 k
    /// this way.
    fn write_directly(&self, writes: &[WriteOp<'_>], fault: u8) -> Result<(), IoFailure> {
        for (index, w) in writes.iter().enumerate() {
            let written = if fault == 1 {
                Err(io::Error::from_raw_os_error(libc::EBADF))
            } else {
                self.write_at(w.file, w.buf, w.pos)
            };
            written.map_err(|e| IoFailure::Write(index, e))?;
        }
        Ok(())
    }
}

impl FileOps for UringOps {
    fn name(&self) -> &'static str {
        "uring"
    }

    fn submit(&self, writes: &[WriteOp<'_>], syncs: &[&File]) -> Result<(), IoFailure> {
        let fault = self.fault();
        if syncs.is_empty() && fault != 3 {
            return self.write_directly(writes, fault);
        }
        let bad = |fd: RawFd, when: u8| if fault == when { -1 } else { fd };
        let mut ops = Vec::with_capacity(writes.len() + syncs.len());
        for (index, w) in writes.iter().enumerate() {
            ops.push(Op::Write {
                index,
                file: w.file,
                fd: bad(w.file.as_raw_fd(), 1),
                ptr: w.buf.as_ptr(),
                len: w.buf.len(),
                pos: w.pos,
            });
        }
        for (index, file) in syncs.iter().enumerate() {
            ops.push(Op::Sync {
                index,
                file,
                fd: bad(file.as_raw_fd(), 2),
                // A sync after writes in the chain covers them: it is
                // reported as started once they were (`Op::report`).
                report: writes.is_empty().then(|| SyncReport::start(file)),
            });
        }
        let ring = if writes.is_empty() {
            &self.sync_ring
        } else {
            &self.ring
        };
        self.run(&mut ring.lock(), ops)
    }
}
