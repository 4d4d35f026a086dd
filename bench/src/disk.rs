//! The raw write ceiling: O_DIRECT sequential writes at the sizes the
//! journal writes (its group commits range from a few KiB to several MiB),
//! at several queue depths, into freshly preallocated space and into space
//! already written. Every "% of raw" ratio of a durable append uses the best
//! of that matrix (`raw.write_ceiling_gbps`), so the engine is judged against
//! what the device can do at its best, not against one arbitrary setting.
//!
//! Queue depth N keeps N writes in flight at consecutive offsets: with
//! io_uring when the kernel allows it (one ring, N submissions outstanding),
//! else with N threads each issuing pwrite(2) at the next free offset.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use io_uring::{opcode, types, IoUring};
use serde_json::json;

use crate::util::{self, gb_per_s, AlignedBuf, Stats};
use crate::{Plan, Results};

/// Write sizes: the journal's groups, from small blocking commits to the
/// multi-MiB groups a pipelining producer builds.
pub const WRITE_SIZES: [usize; 4] = [64 << 10, 256 << 10, 1 << 20, 4 << 20];
pub const QUEUE_DEPTHS: [usize; 3] = [1, 4, 16];
/// O_DIRECT alignment (covers 512 B and 4 KiB logical-block devices).
pub const DIRECT_ALIGN: usize = 4096;

pub const CEILING: &str = "raw.write_ceiling_gbps";

/// Where the writes land.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Space {
    /// A fresh file, fallocate(2)d and never written: every write converts
    /// unwritten extents, and the closing fdatasync commits that metadata
    /// (what a journal segment costs without zero-prefill).
    Unwritten,
    /// A file written in full once before the timed passes: the writes
    /// replace initialised blocks and the fdatasync flushes data only
    /// (what the journal's prefilled space costs).
    Overwrite,
}

impl Space {
    pub fn name(self) -> &'static str {
        match self {
            Space::Unwritten => "unwritten",
            Space::Overwrite => "overwrite",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Space::Unwritten => {
                "a fresh file per rep, fallocated and never written (extent conversion)"
            }
            Space::Overwrite => "a preallocated file written in full once, before the timed passes",
        }
    }
}

/// `raw.odirect_write_256k_qd4_overwrite_gbps` and so on.
pub fn point_name(write_bytes: usize, queue_depth: usize, space: Space) -> String {
    format!(
        "raw.odirect_write_{}_qd{queue_depth}_{}_gbps",
        size_label(write_bytes),
        space.name()
    )
}

fn size_label(bytes: usize) -> String {
    if bytes >= 1 << 20 {
        format!("{}m", bytes >> 20)
    } else {
        format!("{}k", bytes >> 10)
    }
}

pub fn fdatasync(file: &File) -> io::Result<()> {
    // SAFETY: a plain syscall on a descriptor we own.
    if unsafe { libc::fdatasync(file.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reserves `len` bytes of blocks (unwritten extents). Filesystems without
/// fallocate get a sparse file instead (`Ok(false)`).
pub fn preallocate(file: &File, len: u64) -> io::Result<bool> {
    // SAFETY: a plain syscall on a descriptor we own.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len as libc::off_t) };
    if rc == 0 {
        return Ok(true);
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::EOPNOTSUPP) {
        file.set_len(len)?;
        Ok(false)
    } else {
        Err(error)
    }
}

/// A file under test, removed when dropped.
struct Scratch {
    file: File,
    path: PathBuf,
}

impl Scratch {
    fn create(path: PathBuf, len: u64) -> io::Result<(Scratch, bool)> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("opening {} with O_DIRECT: {e}", path.display()),
                )
            })?;
        let scratch = Scratch { file, path };
        let fallocated = preallocate(&scratch.file, len)?;
        Ok((scratch, fallocated))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// How queue depth > 1 is submitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Submitter {
    Uring,
    Threads,
}

impl Submitter {
    /// io_uring if a ring can be set up and really executes a request (a
    /// sandbox may refuse io_uring_setup or block io_uring_enter).
    pub fn detect() -> Submitter {
        let works = || -> io::Result<()> {
            let mut ring = IoUring::new(4)?;
            let nop = opcode::Nop::new().build().user_data(7);
            // SAFETY: a NOP references no memory.
            unsafe { ring.submission().push(&nop) }.map_err(|_| io::Error::other("queue full"))?;
            ring.submit_and_wait(1)?;
            let result = ring.completion().next().map(|cqe| cqe.result());
            match result {
                Some(result) if result >= 0 => Ok(()),
                _ => Err(io::Error::other("no completion")),
            }
        };
        if works().is_ok() {
            Submitter::Uring
        } else {
            Submitter::Threads
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Submitter::Uring => "io_uring (N writes outstanding on one ring)",
            Submitter::Threads => "N threads, each pwrite(2) at the next free offset",
        }
    }
}

/// Buffers for `depth` writes of `size`, each filled with pseudo-random
/// bytes (distinct per buffer); the first 8 bytes of each write are its
/// offset, so no two written blocks are alike.
fn buffers(size: usize, depth: usize) -> Vec<AlignedBuf> {
    (0..depth)
        .map(|i| {
            let mut buf = AlignedBuf::new(size, DIRECT_ALIGN);
            util::fill_pseudo_random(buf.as_mut_slice(), 0x5eed + i as u64);
            buf
        })
        .collect()
}

/// Writes `len` bytes of `file` sequentially, `size` per write, `depth`
/// writes in flight, then fdatasync; returns the time including the flush.
fn pass(
    file: &File,
    bufs: &mut [AlignedBuf],
    len: u64,
    submitter: Submitter,
) -> io::Result<Duration> {
    let size = bufs[0].as_slice().len() as u64;
    let depth = bufs.len();
    let start = Instant::now();
    if depth == 1 {
        let buf = &mut bufs[0];
        let mut offset = 0;
        while offset < len {
            buf.as_mut_slice()[..8].copy_from_slice(&offset.to_le_bytes());
            file.write_all_at(buf.as_slice(), offset)?;
            offset += size;
        }
    } else {
        match submitter {
            Submitter::Uring => uring_writes(file, bufs, len)?,
            Submitter::Threads => thread_writes(file, bufs, len)?,
        }
    }
    fdatasync(file)?;
    Ok(start.elapsed())
}

fn uring_writes(file: &File, bufs: &mut [AlignedBuf], len: u64) -> io::Result<()> {
    let size = bufs[0].as_slice().len() as u64;
    let depth = bufs.len();
    let mut ring = IoUring::new((depth as u32).next_power_of_two())?;
    let fd = types::Fd(file.as_raw_fd());
    // Offset each buffer's outstanding write covers (for the completion check).
    let mut offsets = vec![0u64; depth];
    let mut next = 0u64;
    let mut in_flight = 0usize;
    let mut submit = |ring: &mut IoUring, index: usize, next: &mut u64, offsets: &mut [u64]| {
        let buf = &mut bufs[index];
        buf.as_mut_slice()[..8].copy_from_slice(&next.to_le_bytes());
        let entry = opcode::Write::new(fd, buf.as_slice().as_ptr(), size as u32)
            .offset(*next)
            .build()
            .user_data(index as u64);
        offsets[index] = *next;
        *next += size;
        // SAFETY: the buffer stays alive and untouched until its completion
        // is reaped below (every submitted write is waited for before this
        // function returns, also on error paths: see the drain loop).
        unsafe { ring.submission().push(&entry) }
            .map_err(|_| io::Error::other("io_uring submission queue full"))
    };
    for index in 0..depth.min(len.div_ceil(size) as usize) {
        submit(&mut ring, index, &mut next, &mut offsets)?;
        in_flight += 1;
    }
    let mut failure: Option<io::Error> = None;
    while in_flight > 0 {
        if let Err(e) = ring.submit_and_wait(1) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // The kernel still owns the buffers of outstanding writes:
            // nothing can be done safely but abort.
            panic!("io_uring_enter failed with writes in flight: {e}");
        }
        let done: Vec<(usize, i32)> = ring
            .completion()
            .map(|cqe| (cqe.user_data() as usize, cqe.result()))
            .collect();
        for (index, result) in done {
            in_flight -= 1;
            if result < 0 {
                failure.get_or_insert(io::Error::from_raw_os_error(-result));
            } else if result as u64 != size {
                failure.get_or_insert(io::Error::other(format!(
                    "short O_DIRECT write at {}: {result} of {size} bytes",
                    offsets[index]
                )));
            }
            if failure.is_none() && next < len {
                submit(&mut ring, index, &mut next, &mut offsets)?;
                in_flight += 1;
            }
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn thread_writes(file: &File, bufs: &mut [AlignedBuf], len: u64) -> io::Result<()> {
    let size = bufs[0].as_slice().len() as u64;
    let next = AtomicU64::new(0);
    std::thread::scope(|scope| {
        let workers: Vec<_> = bufs
            .iter_mut()
            .map(|buf| {
                let next = &next;
                scope.spawn(move || -> io::Result<()> {
                    loop {
                        let offset = next.fetch_add(size, Ordering::Relaxed);
                        if offset >= len {
                            return Ok(());
                        }
                        buf.as_mut_slice()[..8].copy_from_slice(&offset.to_le_bytes());
                        file.write_all_at(buf.as_slice(), offset)?;
                    }
                })
            })
            .collect();
        workers.into_iter().try_for_each(|w| {
            w.join()
                .map_err(|_| io::Error::other("writer thread panicked"))?
        })
    })
}

/// Where and how a matrix point writes.
struct Target<'a> {
    dir: &'a Path,
    /// The file the overwrite points write (already written in full).
    overwrite: &'a Scratch,
    len: u64,
    submitter: Submitter,
}

/// One point of the matrix, `reps` times: GB/s per pass.
fn point(
    target: &Target<'_>,
    size: usize,
    depth: usize,
    space: Space,
    reps: usize,
) -> io::Result<Stats> {
    let Target {
        dir,
        overwrite,
        len,
        submitter,
    } = *target;
    let mut bufs = buffers(size, depth);
    util::repeat(reps, || match space {
        Space::Overwrite => Ok(gb_per_s(
            len,
            pass(&overwrite.file, &mut bufs, len, submitter)?,
        )),
        Space::Unwritten => {
            let (fresh, _) = Scratch::create(dir.join("raw-unwritten.dat"), len)?;
            let elapsed = pass(&fresh.file, &mut bufs, len, submitter)?;
            Ok(gb_per_s(len, elapsed))
        }
    })
}

/// The whole matrix, then its best point as `raw.write_ceiling_gbps`.
pub fn write_matrix(dir: &Path, plan: &Plan, results: &mut Results) {
    let len = plan.disk_bytes;
    let submitter = Submitter::detect();
    let prepared =
        Scratch::create(dir.join("raw-overwrite.dat"), len).and_then(|(file, fallocated)| {
            // Written once in full (untimed): the overwrite points replace
            // initialised blocks.
            let mut bufs = buffers(1 << 20, 1);
            let first = pass(&file.file, &mut bufs, len, submitter)?;
            Ok((file, fallocated, gb_per_s(len, first)))
        });
    let (overwrite, fallocated, first_pass) = match prepared {
        Ok(prepared) => prepared,
        Err(e) => {
            results.failed(CEILING, "GB/s", &e.to_string());
            return;
        }
    };
    let target = Target {
        dir,
        overwrite: &overwrite,
        len,
        submitter,
    };
    let mut best: Option<(String, Stats, serde_json::Value)> = None;
    let mut points = serde_json::Map::new();
    for space in [Space::Unwritten, Space::Overwrite] {
        for size in WRITE_SIZES {
            for depth in QUEUE_DEPTHS {
                let name = point_name(size, depth, space);
                let p = json!({
                    "write_bytes": size, "queue_depth": depth, "space": space.name(),
                    "file": space.describe(), "pass_bytes": len, "align": DIRECT_ALIGN,
                    "fallocate": if fallocated { "yes" } else { "unsupported: sparse file" },
                    "submission": if depth == 1 { "pwrite(2), one at a time" } else { submitter.name() },
                    "timed": "every write of the pass and one fdatasync at its end",
                });
                match point(&target, size, depth, space, plan.matrix_reps) {
                    Ok(stats) => {
                        points.insert(name.clone(), json!(stats.median()));
                        if best
                            .as_ref()
                            .is_none_or(|(_, b, _)| stats.median() > b.median())
                        {
                            best = Some((name.clone(), stats.clone(), p.clone()));
                        }
                        results.stats(&name, &stats, "GB/s", p);
                    }
                    Err(e) => results.failed(&name, "GB/s", &e.to_string()),
                }
            }
        }
    }
    match best {
        Some((name, stats, config)) => {
            let p = json!({
                "best_of": "every raw.odirect_write_* point of this run (median of its reps)",
                "achieved_by": name, "config": config, "points": points,
                "overwrite_file_first_pass_gbps": first_pass,
                "note": format!("best: {name}"),
            });
            results.stats(CEILING, &stats, "GB/s", p);
        }
        None => results.failed(CEILING, "GB/s", "every point of the write matrix failed"),
    }
}

/// Latency of an O_DIRECT overwrite of `block` bytes followed by
/// fdatasync: the journal's smallest blocking commit on prefilled space
/// (4 KiB), or one producer's group of 64 × 1 KiB (64 KiB). One histogram per
/// repetition; the write and the fdatasync are also timed apart.
pub struct Commit {
    pub total: Histogram<u64>,
    pub fdatasync: Histogram<u64>,
}

pub fn odirect_commit_latency(dir: &Path, plan: &Plan, block: u64) -> io::Result<Vec<Commit>> {
    let len = plan.fdatasync_samples as u64 * block;
    let (scratch, _) = Scratch::create(dir.join("raw-commit.dat"), len)?;
    // Written once, so the timed writes overwrite initialised blocks.
    pass(
        &scratch.file,
        &mut buffers(block as usize, 1),
        len,
        Submitter::Threads,
    )?;
    let mut buf = AlignedBuf::new(block as usize, DIRECT_ALIGN);
    util::fill_pseudo_random(buf.as_mut_slice(), 9);
    let mut runs = Vec::new();
    for _ in 0..plan.reps {
        let histogram =
            || Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).map_err(io::Error::other);
        let mut commit = Commit {
            total: histogram()?,
            fdatasync: histogram()?,
        };
        for i in 0..plan.fdatasync_samples as u64 {
            buf.as_mut_slice()[..8].copy_from_slice(&i.to_le_bytes());
            let start = Instant::now();
            scratch.file.write_all_at(buf.as_slice(), i * block)?;
            let written = Instant::now();
            fdatasync(&scratch.file)?;
            let done = Instant::now();
            commit
                .total
                .saturating_record((done - start).as_nanos() as u64);
            commit
                .fdatasync
                .saturating_record((done - written).as_nanos() as u64);
        }
        runs.push(commit);
    }
    Ok(runs)
}
