//! Small shared pieces: repetition statistics, loopback sockets with a
//! draining reader, aligned buffers, process memory readings.

use std::alloc::{self, Layout};
use std::io::{self, Read};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Decimal gigabytes per second (1 GB = 10^9 bytes), the unit of every
/// `*_gbps` metric: disks and NICs are specified in decimal units.
pub fn gb_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / elapsed.as_secs_f64() / 1e9
}

/// Median, minimum and maximum of the repetitions of one measurement. The
/// machine is shared and noisy, so the median is the reported value and the
/// spread is kept beside it for anyone judging how far to trust it.
#[derive(Clone, Debug)]
pub struct Stats {
    pub samples: Vec<f64>,
}

impl Stats {
    pub fn new(samples: Vec<f64>) -> Self {
        assert!(
            !samples.is_empty(),
            "a measurement needs at least one sample"
        );
        Stats { samples }
    }

    fn sorted(&self) -> Vec<f64> {
        let mut sorted = self.samples.clone();
        sorted.sort_by(f64::total_cmp);
        sorted
    }

    /// The middle sample; for an even count, the mean of the two middle ones.
    pub fn median(&self) -> f64 {
        let sorted = self.sorted();
        let mid = sorted.len() / 2;
        if sorted.len() % 2 == 1 {
            sorted[mid]
        } else {
            (sorted[mid - 1] + sorted[mid]) / 2.0
        }
    }

    pub fn min(&self) -> f64 {
        self.sorted()[0]
    }

    pub fn max(&self) -> f64 {
        *self.sorted().last().expect("non-empty")
    }
}

/// Runs `measure` `reps` times and collects what each run returns.
pub fn repeat(reps: usize, mut measure: impl FnMut() -> io::Result<f64>) -> io::Result<Stats> {
    let mut samples = Vec::with_capacity(reps);
    for _ in 0..reps {
        samples.push(measure()?);
    }
    Ok(Stats::new(samples))
}

/// A connected loopback TCP socket whose peer is drained by a reader thread,
/// so a sender is limited by the kernel's send path and not by a slow reader.
pub struct LoopbackSink {
    pub sender: TcpStream,
    reader: JoinHandle<io::Result<u64>>,
}

impl LoopbackSink {
    pub fn new() -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let sender = TcpStream::connect(listener.local_addr()?)?;
        let (mut receiver, _) = listener.accept()?;
        let reader = std::thread::spawn(move || -> io::Result<u64> {
            let mut buffer = vec![0u8; 1 << 20];
            let mut total = 0u64;
            loop {
                match receiver.read(&mut buffer) {
                    Ok(0) => return Ok(total),
                    Ok(n) => total += n as u64,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        });
        Ok(LoopbackSink { sender, reader })
    }

    /// Closes the sending side and waits until the reader has received
    /// everything; returns the bytes it received. Timing a transfer up to
    /// this point counts delivery, not just handing bytes to the kernel.
    pub fn finish(self) -> io::Result<u64> {
        self.sender.shutdown(Shutdown::Write)?;
        drop(self.sender);
        self.reader
            .join()
            .map_err(|_| io::Error::other("loopback reader thread panicked"))?
    }
}

/// A zeroed heap buffer with a chosen alignment, for O_DIRECT (which needs
/// buffers, offsets and lengths aligned to the device's logical block).
pub struct AlignedBuf {
    ptr: *mut u8,
    layout: Layout,
}

// SAFETY: an AlignedBuf owns its allocation exclusively (like a Box<[u8]>);
// moving it to another thread moves that ownership.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    pub fn new(len: usize, align: usize) -> Self {
        let layout = Layout::from_size_align(len, align).expect("valid buffer layout");
        assert!(len > 0, "aligned buffer must not be empty");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            alloc::handle_alloc_error(layout);
        }
        AlignedBuf { ptr, layout }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: ptr is a live allocation of layout.size() bytes owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: as above, shared.
        unsafe { std::slice::from_raw_parts(self.ptr, self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with exactly this layout.
        unsafe { alloc::dealloc(self.ptr, self.layout) }
    }
}

/// Fills `buf` with bytes that neither compress nor repeat within a page
/// (xorshift), so no layer (device, filesystem, codec) can shortcut them.
pub fn fill_pseudo_random(buf: &mut [u8], seed: u64) {
    let mut state = seed | 1;
    for chunk in buf.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let bytes = state.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}

/// Reads every byte of `bytes` and returns their sum as little-endian
/// u64 words (wrapping): the minimum work of a consumer that looks at what
/// it read. Every read throughput metric runs this over each byte it counts,
/// so a zero-copy view that was never looked at (or a mapped page never
/// faulted in) cannot count as read.
#[inline]
pub fn touch(bytes: &[u8]) -> u64 {
    let mut lanes = [0u64; 4];
    let mut chunks = bytes.chunks_exact(32);
    for chunk in &mut chunks {
        for (lane, word) in lanes.iter_mut().zip(chunk.chunks_exact(8)) {
            *lane = lane.wrapping_add(u64::from_le_bytes(word.try_into().expect("8 bytes")));
        }
    }
    let mut sum = lanes.iter().fold(0u64, |a, &b| a.wrapping_add(b));
    for &byte in chunks.remainder() {
        sum = sum.wrapping_add(byte as u64);
    }
    sum
}

/// A percentile of an hdrhistogram (`quantile` 1.0 = the maximum), as f64.
/// Starts the clock once every worker has passed `barrier` (they wait
/// there, ready), then joins them: the operations per second of them all,
/// from that start to the last one's finish.
pub fn joined_rate(
    barrier: &std::sync::Barrier,
    workers: Vec<std::thread::ScopedJoinHandle<'_, io::Result<(u64, Instant)>>>,
) -> io::Result<f64> {
    barrier.wait();
    let start = Instant::now();
    let mut total = 0u64;
    let mut end = start;
    for worker in workers {
        let (ops, finished) = worker
            .join()
            .map_err(|_| io::Error::other("a worker thread panicked"))??;
        total += ops;
        end = end.max(finished);
    }
    Ok(total as f64 / (end - start).as_secs_f64())
}

pub fn percentile(histogram: &hdrhistogram::Histogram<u64>, quantile: f64) -> f64 {
    if quantile >= 1.0 {
        histogram.max() as f64
    } else {
        histogram.value_at_quantile(quantile) as f64
    }
}

/// Sleeps until shortly before `deadline`, then spins to it: pacing for
/// intervals of many microseconds, where spinning all the way would take a
/// core from the engine under test (the machine has two). Latency is
/// measured from the deadline, so a late wake-up is charged to the
/// measurement, never hidden. Call `precise_timer_slack` once per thread.
pub fn sleep_until(deadline: Instant) {
    const SPIN: Duration = Duration::from_micros(60);
    let now = Instant::now();
    if deadline > now + SPIN {
        std::thread::sleep(deadline - now - SPIN);
    }
    spin_until(deadline);
}

/// Sets the calling thread's timer slack to 1 µs (the default 50 µs lets
/// the kernel wake a sleeper that much late).
pub fn precise_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK only changes this thread's timer slack.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong, 0, 0, 0);
    }
}

/// A field of /proc/self/status in KiB (VmRSS, VmHWM, ...).
pub fn proc_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Bytes the allocator has handed out and not had back (glibc's mallinfo2:
/// in-use arena bytes plus mmapped chunks). Unlike RSS, this grows when a
/// workload allocates even if the process reuses memory an earlier workload
/// freed, so it measures what a data structure costs.
pub fn heap_in_use_bytes() -> u64 {
    // SAFETY: mallinfo2 only reads the allocator's counters.
    let info = unsafe { libc::mallinfo2() };
    (info.uordblks + info.hblkhd) as u64
}

/// Returns freed heap memory to the kernel, so that RSS readings after it
/// start from what is actually in use.
pub fn trim_heap() {
    // SAFETY: malloc_trim only releases free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// How much of a directory's files is in the page cache.
#[derive(Clone, Copy, Debug, Default)]
pub struct Residency {
    pub files: u64,
    pub pages: u64,
    pub resident_pages: u64,
}

impl Residency {
    pub fn fraction(&self) -> f64 {
        if self.pages == 0 {
            0.0
        } else {
            self.resident_pages as f64 / self.pages as f64
        }
    }
}

/// Every regular file under `dir`, recursively.
fn files_under(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            files_under(&entry.path(), out)?;
        } else if kind.is_file() {
            out.push(entry.path());
        }
    }
    Ok(())
}

fn page_size() -> u64 {
    // SAFETY: sysconf only reads a system constant.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 {
        size as u64
    } else {
        4096
    }
}

/// Counts the pages of the files under `dir` that are in the page cache,
/// with mincore(2) on a fresh read-only mapping (which faults nothing in).
pub fn page_cache_residency(dir: &Path) -> io::Result<Residency> {
    use std::os::fd::AsRawFd;
    let mut files = Vec::new();
    files_under(dir, &mut files)?;
    let page = page_size();
    let mut total = Residency::default();
    for path in files {
        let file = std::fs::File::open(&path)?;
        let len = file.metadata()?.len();
        total.files += 1;
        if len == 0 {
            continue;
        }
        let pages = len.div_ceil(page);
        // SAFETY: a new private read-only mapping of the whole file; it is
        // only passed to mincore and unmapped below, never dereferenced.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mut vec = vec![0u8; pages as usize];
        // SAFETY: `addr` maps `len` bytes; `vec` has one byte per page.
        let rc = unsafe { libc::mincore(addr, len as usize, vec.as_mut_ptr()) };
        let error = io::Error::last_os_error();
        // SAFETY: unmapping the mapping made above, exactly once.
        unsafe { libc::munmap(addr, len as usize) };
        if rc != 0 {
            return Err(error);
        }
        total.pages += pages;
        total.resident_pages += vec.iter().filter(|&&b| b & 1 == 1).count() as u64;
    }
    Ok(total)
}

/// Evicts the files under `dir` from the page cache, unprivileged: each is
/// fdatasynced (only clean pages can be dropped) and then dropped with
/// posix_fadvise(POSIX_FADV_DONTNEED). Returns the residency afterwards,
/// so the caller can check that it worked.
pub fn evict_from_page_cache(dir: &Path) -> io::Result<Residency> {
    use std::os::fd::AsRawFd;
    let mut files = Vec::new();
    files_under(dir, &mut files)?;
    for path in files {
        let file = std::fs::OpenOptions::new().read(true).open(&path)?;
        file.sync_data()?;
        // SAFETY: a valid descriptor; the advice only affects the cache.
        let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
    }
    page_cache_residency(dir)
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Spins until `deadline`. Sleeping would hand the core to the scheduler and
/// wake up tens of microseconds late, which a sub-microsecond pacing
/// interval cannot tolerate.
#[inline]
pub fn spin_until(deadline: Instant) {
    while Instant::now() < deadline {
        std::hint::spin_loop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(Stats::new(vec![3.0, 1.0, 2.0]).median(), 2.0);
        assert_eq!(Stats::new(vec![4.0, 1.0, 3.0, 2.0]).median(), 2.5);
        let s = Stats::new(vec![5.0, 9.0, 1.0]);
        assert_eq!((s.min(), s.max()), (1.0, 9.0));
    }

    #[test]
    fn loopback_sink_counts_every_byte() {
        use std::io::Write;
        let mut sink = LoopbackSink::new().unwrap();
        sink.sender.write_all(&[7u8; 300_000]).unwrap();
        assert_eq!(sink.finish().unwrap(), 300_000);
    }

    #[test]
    fn aligned_buffer_is_aligned() {
        let mut buf = AlignedBuf::new(1 << 16, 4096);
        assert_eq!(buf.as_slice().as_ptr() as usize % 4096, 0);
        fill_pseudo_random(buf.as_mut_slice(), 42);
        assert!(buf.as_slice().iter().any(|&b| b != 0));
    }

    #[test]
    fn touch_sums_every_byte() {
        let bytes: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        let mut expected = 0u64;
        let words = bytes.len() / 32 * 32;
        for word in bytes[..words].chunks_exact(8) {
            expected = expected.wrapping_add(u64::from_le_bytes(word.try_into().unwrap()));
        }
        for &b in &bytes[words..] {
            expected = expected.wrapping_add(b as u64);
        }
        assert_eq!(touch(&bytes), expected);
        let mut changed = bytes.clone();
        changed[999] ^= 1;
        assert_ne!(touch(&changed), touch(&bytes));
    }

    #[test]
    fn reads_own_rss() {
        assert!(proc_status_kib("VmRSS").unwrap() > 0);
    }

    #[test]
    fn eviction_empties_the_page_cache() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let mut file = std::fs::File::create(dir.path().join("sub/data")).unwrap();
        file.write_all(&vec![1u8; 4 << 20]).unwrap();
        let before = page_cache_residency(dir.path()).unwrap();
        assert_eq!((before.files, before.pages), (1, (4 << 20) / page_size()));
        let after = evict_from_page_cache(dir.path()).unwrap();
        // tmpfs cannot drop its pages (they are the file): only check where
        // the filesystem is a real one.
        if before.fraction() > 0.0 && after.fraction() < 1.0 {
            assert!(after.fraction() < 0.1, "{after:?}");
        }
    }

    #[test]
    fn heap_in_use_grows_with_allocation() {
        // The counters are process-wide and tests run in parallel: another
        // test freeing memory between the two readings can hide the growth,
        // so a few attempts are allowed.
        let grew = (0..5).any(|_| {
            let before = heap_in_use_bytes();
            let block = std::hint::black_box(vec![1u8; 8 << 20]);
            let after = heap_in_use_bytes();
            drop(block);
            after >= before + (8 << 20)
        });
        assert!(grew);
    }
}
