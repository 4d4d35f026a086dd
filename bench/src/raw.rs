//! Raw baselines: what the machine itself can do, measured in the same run
//! and on the same filesystem as the engines, so every engine figure can be
//! read as a fraction of a physical limit instead of an absolute number.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;

use crate::disk::{fdatasync, preallocate};
use crate::util::{self, gb_per_s, AlignedBuf, LoopbackSink, Stats};
use crate::{Plan, Results};

/// Write size of the buffered fdatasync baseline.
pub const BUFFERED_WRITE: usize = 256 << 10;

/// Writes `len` bytes sequentially in `buf`-sized writes, then fdatasync:
/// one pass, timed including the final flush. The first 8 bytes of each
/// write carry its offset so no two blocks are identical (a deduplicating
/// layer must not be able to skip work).
fn sequential_pass(
    file: &File,
    buf: &mut AlignedBuf,
    len: u64,
    sync_each: bool,
) -> io::Result<Duration> {
    let step = buf.as_slice().len() as u64;
    let start = Instant::now();
    let mut offset = 0;
    while offset < len {
        buf.as_mut_slice()[..8].copy_from_slice(&offset.to_le_bytes());
        file.write_all_at(buf.as_slice(), offset)?;
        if sync_each {
            fdatasync(file)?;
        }
        offset += step;
    }
    fdatasync(file)?;
    Ok(start.elapsed())
}

/// A preallocated file written once in full (untimed for the reps), so the
/// timed passes overwrite allocated, initialised blocks.
struct TestFile {
    file: File,
    path: std::path::PathBuf,
    len: u64,
}

impl TestFile {
    /// A buffered (page cache) file.
    fn create(dir: &Path, name: &str, len: u64) -> io::Result<(TestFile, AlignedBuf)> {
        let path = dir.join(name);
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("opening {}: {e}", path.display())))?;
        preallocate(&file, len)?;
        let mut buf = AlignedBuf::new(BUFFERED_WRITE, 4096);
        util::fill_pseudo_random(buf.as_mut_slice(), 0x5eed);
        sequential_pass(&file, &mut buf, len, false)?;
        Ok((TestFile { file, path, len }, buf))
    }
}

impl Drop for TestFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn buffered_fdatasync_write(dir: &Path, plan: &Plan) -> io::Result<Stats> {
    let (test, mut buf) = TestFile::create(dir, "raw-buffered.dat", plan.fdatasync_write_bytes)?;
    util::repeat(plan.reps, || {
        Ok(gb_per_s(
            test.len,
            sequential_pass(&test.file, &mut buf, test.len, true)?,
        ))
    })
}

/// Latency of a 4 KiB write followed by fdatasync: the cost of the smallest
/// durable commit. One histogram per repetition.
fn fdatasync_latency(dir: &Path, plan: &Plan) -> io::Result<Vec<Histogram<u64>>> {
    let block = 4096u64;
    let len = plan.fdatasync_samples as u64 * block;
    let (test, _) = TestFile::create(dir, "raw-fdatasync.dat", len.max(BUFFERED_WRITE as u64))?;
    let mut buf = vec![0u8; block as usize];
    util::fill_pseudo_random(&mut buf, 7);
    let mut histograms = Vec::new();
    for _ in 0..plan.reps {
        let mut histogram =
            Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).map_err(io::Error::other)?;
        for i in 0..plan.fdatasync_samples as u64 {
            buf[..8].copy_from_slice(&i.to_le_bytes());
            let start = Instant::now();
            test.file.write_all_at(&buf, i * block)?;
            fdatasync(&test.file)?;
            histogram.saturating_record(start.elapsed().as_nanos() as u64);
        }
        histograms.push(histogram);
    }
    Ok(histograms)
}

/// sendfile(2) of a plain file, already in the page cache, to a loopback TCP
/// socket: the kernel's own zero-copy path, the ceiling for any engine's
/// `sendfile_to_fd` on this machine.
fn sendfile(dir: &Path, plan: &Plan) -> io::Result<Stats> {
    let path = dir.join("raw-sendfile.dat");
    let mut data = vec![0u8; 1 << 20];
    util::fill_pseudo_random(&mut data, 11);
    {
        let file = File::create(&path)?;
        let mut offset = 0;
        while offset < plan.sendfile_bytes {
            file.write_all_at(&data, offset)?;
            offset += data.len() as u64;
        }
    }
    let result = (|| {
        let mut file = File::open(&path)?;
        let len = file.metadata()?.len();
        // Read once so every rep sends from the page cache.
        while file.read(&mut data)? > 0 {}
        util::repeat(plan.reps, || {
            let sink = LoopbackSink::new()?;
            let start = Instant::now();
            let mut offset: libc::off_t = 0;
            while (offset as u64) < len {
                let remaining = (len - offset as u64).min(1 << 30) as usize;
                // SAFETY: both descriptors are open; offset is a valid pointer.
                let n = unsafe {
                    libc::sendfile(
                        sink.sender.as_raw_fd(),
                        file.as_raw_fd(),
                        &mut offset,
                        remaining,
                    )
                };
                if n < 0 {
                    let error = io::Error::last_os_error();
                    if error.kind() != io::ErrorKind::Interrupted {
                        return Err(error);
                    }
                }
            }
            let received = sink.finish()?;
            let elapsed = start.elapsed();
            if received != len {
                return Err(io::Error::other(format!(
                    "reader got {received} of {len} bytes"
                )));
            }
            Ok(gb_per_s(len, elapsed))
        })
    })();
    let _ = std::fs::remove_file(&path);
    result
}

/// write(2) of a 1 MiB user-space buffer to a loopback TCP socket, same
/// total as `sendfile`: the ceiling for transfers of data that lives in
/// process memory (the memory engine's sendfile_to_fd uses sendmsg with
/// iovecs pointing at its stored batches: no file, so no sendfile(2)).
fn socket_write(plan: &Plan) -> io::Result<Stats> {
    use std::io::Write;
    let mut data = vec![0u8; 1 << 20];
    util::fill_pseudo_random(&mut data, 13);
    util::repeat(plan.reps, || {
        let mut sink = LoopbackSink::new()?;
        let start = Instant::now();
        let mut sent = 0u64;
        while sent < plan.sendfile_bytes {
            sink.sender.write_all(&data)?;
            sent += data.len() as u64;
        }
        let received = sink.finish()?;
        let elapsed = start.elapsed();
        if received != sent {
            return Err(io::Error::other(format!(
                "reader got {received} of {sent} bytes"
            )));
        }
        Ok(gb_per_s(sent, elapsed))
    })
}

/// Single-threaded memcpy between two buffers far larger than any cache:
/// the memory bandwidth one core sees, the ceiling for in-memory appends and
/// reads. Counts bytes copied (each is read once and written once).
fn memcpy(plan: &Plan) -> Stats {
    let len = plan.memcpy_bytes;
    let mut src = vec![0u8; len];
    util::fill_pseudo_random(&mut src, 3);
    // Touch every page of the destination first: page faults are not copies.
    let mut dst = vec![1u8; len];
    let rounds = 4;
    let samples = (0..plan.reps)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..rounds {
                dst.copy_from_slice(std::hint::black_box(&src));
                std::hint::black_box(&mut dst);
            }
            gb_per_s((len * rounds) as u64, start.elapsed())
        })
        .collect();
    Stats::new(samples)
}

/// Single-threaded read of a buffer far larger than any cache, every byte
/// summed with `util::touch`, in 1 KiB pieces like the 1 KiB record values
/// the read workloads touch: the ceiling for a reader that looks at what it
/// reads.
fn mem_read(plan: &Plan) -> Stats {
    let mut src = vec![0u8; plan.memcpy_bytes];
    util::fill_pseudo_random(&mut src, 5);
    let rounds = 4;
    let samples = (0..plan.reps)
        .map(|_| {
            let start = Instant::now();
            let mut sum = 0u64;
            for _ in 0..rounds {
                for piece in std::hint::black_box(&src).chunks(1024) {
                    sum = sum.wrapping_add(util::touch(piece));
                }
            }
            std::hint::black_box(sum);
            gb_per_s((src.len() * rounds) as u64, start.elapsed())
        })
        .collect();
    Stats::new(samples)
}

/// hdrhistogram percentiles reported for every latency (max as 1.0).
pub const PERCENTILES: [(&str, f64); 4] =
    [("p50", 0.5), ("p99", 0.99), ("p999", 0.999), ("max", 1.0)];

pub fn run(dir: &Path, plan: &Plan, results: &mut Results) {
    println!("== raw baselines (on {})", dir.display());
    crate::disk::write_matrix(dir, plan, results);
    results.stats_or_failed(
        "raw.buffered_fdatasync_write_gbps",
        buffered_fdatasync_write(dir, plan),
        "GB/s",
        json!({
            "write_bytes": BUFFERED_WRITE, "file_bytes": plan.fdatasync_write_bytes,
            "sync": "fdatasync after every write",
        }),
    );
    match fdatasync_latency(dir, plan) {
        Ok(histograms) => {
            let p = json!({
                "write_bytes": 4096, "samples_per_rep": plan.fdatasync_samples,
                "measured": "pwrite of 4 KiB + fdatasync, in µs",
            });
            for (suffix, quantile) in PERCENTILES {
                let stats = Stats::new(
                    histograms
                        .iter()
                        .map(|h| util::percentile(h, quantile) / 1000.0)
                        .collect(),
                );
                results.stats(
                    &format!("raw.fdatasync_{suffix}_us"),
                    &stats,
                    "µs",
                    p.clone(),
                );
            }
        }
        Err(e) => {
            for (suffix, _) in PERCENTILES {
                results.failed(&format!("raw.fdatasync_{suffix}_us"), "µs", &e.to_string());
            }
        }
    }
    for (block, label) in [(4096, "4k"), (64 << 10, "64k")] {
        odirect_commits(dir, plan, block, label, results);
    }
    results.stats_or_failed(
        "raw.sendfile_gbps",
        sendfile(dir, plan),
        "GB/s",
        json!({ "file_bytes": plan.sendfile_bytes, "to": "loopback TCP, reader thread draining",
                "page_cache": "warm" }),
    );
    results.stats_or_failed(
        "raw.socket_write_gbps",
        socket_write(plan),
        "GB/s",
        json!({ "total_bytes": plan.sendfile_bytes, "write_bytes": 1 << 20,
                "to": "loopback TCP, reader thread draining" }),
    );
    results.stats(
        "raw.memcpy_gbps",
        &memcpy(plan),
        "GB/s",
        json!({ "buffer_bytes": plan.memcpy_bytes, "threads": 1 }),
    );
    results.stats(
        "raw.mem_read_gbps",
        &mem_read(plan),
        "GB/s",
        json!({ "buffer_bytes": plan.memcpy_bytes, "threads": 1,
                "measured": "bytes read and summed by util::touch, the loop every read \
                             throughput metric runs over the bytes it counts" }),
    );
}

/// `raw.odirect_commit_{label}_*_us`: O_DIRECT overwrites of `block` bytes,
/// each followed by an fdatasync, at the percentiles of `PERCENTILES`. The
/// 64 KiB figure bounds one blocking producer of 64 × 1 KiB batches: it can
/// commit at most one batch per such write + fdatasync.
fn odirect_commits(dir: &Path, plan: &Plan, block: u64, label: &str, results: &mut Results) {
    match crate::disk::odirect_commit_latency(dir, plan, block) {
        Ok(runs) => {
            for (suffix, quantile) in PERCENTILES {
                let pick = |h: &Histogram<u64>| util::percentile(h, quantile) / 1000.0;
                let p = json!({
                    "write_bytes": block, "samples_per_rep": plan.fdatasync_samples,
                    "file": "preallocated and written once: O_DIRECT overwrites",
                    "measured": format!("O_DIRECT pwrite of {label} + fdatasync, in µs"),
                    "fdatasync_alone_us": runs.iter().map(|r| pick(&r.fdatasync)).collect::<Vec<_>>(),
                });
                let stats = Stats::new(runs.iter().map(|r| pick(&r.total)).collect());
                results.stats(
                    &format!("raw.odirect_commit_{label}_{suffix}_us"),
                    &stats,
                    "µs",
                    p,
                );
            }
        }
        Err(e) => {
            for (suffix, _) in PERCENTILES {
                let name = format!("raw.odirect_commit_{label}_{suffix}_us");
                results.failed(&name, "µs", &e.to_string());
            }
        }
    }
}
