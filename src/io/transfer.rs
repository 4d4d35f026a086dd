//! Transfers of stored batches to a file descriptor (a consumer's socket)
//! or into a caller's buffer.
//!
//! A broker must write a Fetch response's length before the record bytes, so
//! a transfer is planned first (which batches, how many bytes, up to which
//! offset) and then sent. The plan holds its own references to the bytes
//! (shared buffers, open files, or fetchers of a backend's bytes), so
//! appends, retention or deletes that happen in between change nothing it
//! sends.

use std::fmt;
use std::fs::File;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;

use crate::{Error, Result};

/// Linux caps one writev/sendmsg at IOV_MAX (1024) segments.
const MAX_IOVECS: usize = 1024;

/// The most a plan asks a lazy chunk's fetcher for at once, and so the most
/// of a lazy chunk it holds in memory: large enough that a remote backend's
/// round trip is paid once per MiB, small enough that many plans in flight
/// stay cheap.
pub const LAZY_PIECE_MAX: usize = 1 << 20;

/// Fetches the bytes of a lazy chunk while its plan is sent or read. An
/// engine whose bytes live elsewhere (an object store, a database) knows
/// each batch's length from its index when it plans, and fetches the bytes
/// only when they are about to go out.
pub trait ChunkFetcher: Send + Sync {
    /// Bytes of the chunk starting `offset` bytes into it (`offset` is less
    /// than the chunk's length): at least one byte and at most `max` (the
    /// plan holds what it gets until it is sent or read), never past the
    /// chunk's end. Called again with the same `offset` after an error, and
    /// never twice for bytes the plan still holds.
    fn fetch(&self, offset: u64, max: usize) -> Result<Bytes>;
}

impl fmt::Debug for dyn ChunkFetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChunkFetcher")
    }
}

/// One contiguous piece of a transfer.
#[derive(Clone, Debug)]
pub enum TransferChunk {
    /// Bytes held in memory (one or more whole batches).
    Memory(Bytes),
    /// `len` bytes of a file from `offset` on, sent with sendfile(2). The
    /// plan holds the file open, so removing the file changes nothing.
    File {
        file: Arc<File>,
        offset: u64,
        len: u64,
    },
    /// `len` bytes whose content `fetcher` supplies, in pieces of at most
    /// [`LAZY_PIECE_MAX`], while the plan is sent or read. `len` must be
    /// exact: the plan's size is announced before any byte is fetched, and
    /// a fetcher that returns more or fewer bytes fails the transfer.
    Lazy {
        len: u64,
        fetcher: Arc<dyn ChunkFetcher>,
    },
}

impl TransferChunk {
    fn len(&self) -> u64 {
        match self {
            TransferChunk::Memory(bytes) => bytes.len() as u64,
            TransferChunk::File { len, .. } | TransferChunk::Lazy { len, .. } => *len,
        }
    }
}

/// The piece of a lazy chunk fetched last, held until it is all sent or
/// read: a partial write, a full socket or a small buffer resume from it
/// instead of fetching the same bytes again.
#[derive(Clone, Debug)]
struct Piece {
    chunk: usize,
    /// Offset of `bytes` in the chunk.
    start: u64,
    bytes: Bytes,
}

/// A planned transfer: exactly `total_bytes()` bytes of whole RecordBatches,
/// covering offsets up to `next_offset() - 1`. Sending may take several calls
/// on a non-blocking descriptor, and reading into buffers several calls;
/// both advance one progress, kept between calls.
#[derive(Clone, Debug)]
pub struct TransferPlan {
    chunks: Vec<TransferChunk>,
    total: u64,
    next_offset: i64,
    sent: u64,
    /// Set once `sendmsg` reports the descriptor is not a socket.
    use_writev: bool,
    piece: Option<Piece>,
}

/// What one `send_to_fd` call achieved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendProgress {
    /// Bytes written by this call.
    pub written: u64,
    /// Whether the whole plan has now been sent.
    pub complete: bool,
}

impl TransferPlan {
    /// A plan over `chunks`, which together end just before `next_offset`.
    pub fn new(chunks: Vec<TransferChunk>, next_offset: i64) -> Self {
        let total = chunks.iter().map(TransferChunk::len).sum();
        TransferPlan {
            chunks,
            total,
            next_offset,
            sent: 0,
            use_writev: false,
            piece: None,
        }
    }

    /// This plan, then `next` (which starts where this one ends): neither
    /// may have been sent from yet. (The hybrid engine joins its tiers'.)
    #[cfg_attr(not(feature = "s3"), allow(dead_code))]
    pub(crate) fn then(mut self, next: TransferPlan) -> TransferPlan {
        debug_assert!(self.sent == 0 && next.sent == 0, "plans not yet sent");
        self.chunks.extend(next.chunks);
        TransferPlan::new(self.chunks, next.next_offset)
    }

    /// An empty plan (nothing stored at or after the offset).
    pub fn empty(next_offset: i64) -> Self {
        Self::new(Vec::new(), next_offset)
    }

    /// Bytes the whole transfer sends.
    pub fn total_bytes(&self) -> u64 {
        self.total
    }

    /// The offset a consumer continues from after this transfer.
    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }

    /// Bytes already sent or read.
    pub fn sent_bytes(&self) -> u64 {
        self.sent
    }

    pub fn is_complete(&self) -> bool {
        self.sent == self.total
    }

    /// The planned bytes, concatenated, whatever was already sent (for tests
    /// and non-fd consumers). Fails when a file cannot be read or a lazy
    /// chunk cannot be fetched.
    pub fn to_vec(&self) -> Result<Vec<u8>> {
        let mut from_start = TransferPlan::new(self.chunks.clone(), self.next_offset);
        let mut out = Vec::with_capacity(self.total as usize);
        while !from_start.is_complete() {
            let n = from_start.read_into_uninit(out.spare_capacity_mut())?;
            // SAFETY: read_into_uninit initialised the first `n` bytes of
            // the spare capacity.
            unsafe { out.set_len(out.len() + n) };
        }
        Ok(out)
    }

    /// Copies the next bytes of the plan into `buf`, advancing the progress
    /// `send_to_fd` uses too (the two can be mixed on one plan). Returns the
    /// bytes copied: as many as fit, unless the plan ends first (or a read
    /// fails, below); 0 only when the plan is complete. File chunks are read with pread(2), lazy chunks
    /// fetched. An empty `buf` is an `InvalidArgument` error (it could never
    /// make progress). A read or fetch failure after some bytes were copied
    /// returns those bytes; the next call retries at the byte it stopped at
    /// and reports the failure if it persists.
    pub fn read_into(&mut self, buf: &mut [u8]) -> Result<usize> {
        // SAFETY: [u8] and [MaybeUninit<u8>] have the same layout, and
        // read_into_uninit only ever writes initialised bytes, so `buf`
        // stays initialised.
        let buf = unsafe { &mut *(buf as *mut [u8] as *mut [MaybeUninit<u8>]) };
        self.read_into_uninit(buf)
    }

    /// [`TransferPlan::read_into`] for a buffer that may be uninitialised
    /// (a C or Python caller's): the returned count of leading bytes are
    /// initialised, the rest are left alone.
    pub fn read_into_uninit(&mut self, buf: &mut [MaybeUninit<u8>]) -> Result<usize> {
        if buf.is_empty() {
            return Err(Error::InvalidArgument(
                "the buffer to read a transfer into is empty (length 0)".into(),
            ));
        }
        let mut filled = 0;
        while filled < buf.len() {
            let Some((index, skip)) = self.cursor() else {
                break;
            };
            match self.copy_out(index, skip, &mut buf[filled..]) {
                Ok(n) => {
                    self.sent += n as u64;
                    filled += n;
                }
                // The caller must learn of the bytes already in its buffer;
                // the failing step is retried by the next call.
                Err(_) if filled > 0 => break,
                Err(e) => return Err(e),
            }
        }
        Ok(filled)
    }

    /// Writes as much of the remaining plan to `fd` as it accepts. On a
    /// non-blocking descriptor that fills up, returns with `complete == false`
    /// and keeps the position, so the next call resumes exactly there.
    /// SIGPIPE is never delivered: memory chunks go out with MSG_NOSIGNAL,
    /// file chunks with sendfile(2) while SIGPIPE is blocked for the calling
    /// thread (see `SigpipeBlock`); a closed peer is an `Io` error (EPIPE).
    /// On an error, `sent_bytes()` tells how far the stream got, and a retry
    /// (a lazy chunk's fetch failing, say) continues from there.
    pub fn send_to_fd(&mut self, fd: RawFd) -> Result<SendProgress> {
        let mut written = 0u64;
        while let Some((index, skip)) = self.cursor() {
            match self.write_some(fd, index, skip)? {
                Ok(0) => {
                    return Err(Error::io(
                        "sending to descriptor",
                        io::Error::new(io::ErrorKind::WriteZero, "descriptor accepted no bytes"),
                    ))
                }
                Ok(n) => {
                    self.sent += n;
                    written += n;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(SendProgress {
                        written,
                        complete: false,
                    })
                }
                Err(e) => return Err(Error::io("sending to descriptor", e)),
            }
        }
        Ok(SendProgress {
            written,
            complete: true,
        })
    }

    /// Sends the rest, waiting with poll(2) whenever a non-blocking descriptor
    /// is full. Returns the bytes written by this call.
    pub fn send_all_to_fd(&mut self, fd: RawFd) -> Result<u64> {
        let mut written = 0;
        loop {
            let progress = self.send_to_fd(fd)?;
            written += progress.written;
            if progress.complete {
                return Ok(written);
            }
            wait_writable(fd)?;
        }
    }

    /// The chunk holding the first unsent byte, and that byte's offset in
    /// it; `None` once the plan is complete.
    fn cursor(&self) -> Option<(usize, u64)> {
        let mut skip = self.sent;
        for (index, chunk) in self.chunks.iter().enumerate() {
            let len = chunk.len();
            if skip < len {
                return Some((index, skip));
            }
            skip -= len;
        }
        None
    }

    /// One write of the unsent bytes starting at byte `skip` of chunk
    /// `index`: a file chunk goes out with sendfile(2), a run of memory
    /// chunks with one gathered write, a lazy chunk's fetched piece with
    /// one write. The outer error is a failed fetch, the inner one the
    /// write's.
    fn write_some(&mut self, fd: RawFd, index: usize, skip: u64) -> Result<io::Result<u64>> {
        match &self.chunks[index] {
            TransferChunk::File { file, offset, len } => {
                Ok(send_file_range(fd, file, offset + skip, len - skip))
            }
            TransferChunk::Memory(_) => {
                let iovecs = self.memory_run(index, skip);
                Ok(self.write_iovecs(fd, &iovecs))
            }
            TransferChunk::Lazy { .. } => {
                let piece = self.lazy_piece(index, skip)?;
                let iovec = libc::iovec {
                    iov_base: piece.as_ptr() as *mut libc::c_void,
                    iov_len: piece.len(),
                };
                Ok(self.write_iovecs(fd, &[iovec]))
            }
        }
    }

    /// The memory chunks from `index` (its first `skip` bytes left out) up
    /// to the next chunk of another kind, as iovecs into their `Bytes`.
    fn memory_run(&self, index: usize, mut skip: u64) -> Vec<libc::iovec> {
        let mut iovecs = Vec::with_capacity((self.chunks.len() - index).min(MAX_IOVECS));
        for chunk in &self.chunks[index..] {
            let TransferChunk::Memory(bytes) = chunk else {
                break;
            };
            let rest = &bytes[skip as usize..];
            skip = 0;
            iovecs.push(libc::iovec {
                iov_base: rest.as_ptr() as *mut libc::c_void,
                iov_len: rest.len(),
            });
            if iovecs.len() == MAX_IOVECS {
                break;
            }
        }
        iovecs
    }

    /// One gathered write: sendmsg(MSG_NOSIGNAL), or writev once the
    /// descriptor turned out not to be a socket. Every iovec must point into
    /// a `Bytes` the caller keeps alive during the call.
    fn write_iovecs(&mut self, fd: RawFd, iovecs: &[libc::iovec]) -> io::Result<u64> {
        if !self.use_writev {
            // SAFETY: msghdr is plain data; zeroed is a valid empty header.
            let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
            message.msg_iov = iovecs.as_ptr() as *mut libc::iovec;
            message.msg_iovlen = iovecs.len() as _;
            // SAFETY: every iovec points into a live, unmodified Bytes (the
            // caller's contract); sendmsg only reads them.
            let n = unsafe { libc::sendmsg(fd, &message, libc::MSG_NOSIGNAL) };
            if n >= 0 {
                return Ok(n as u64);
            }
            let error = io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::ENOTSOCK) {
                return Err(error);
            }
            self.use_writev = true;
        }
        // SAFETY: as above; iovecs.len() <= IOV_MAX.
        let n = unsafe { libc::writev(fd, iovecs.as_ptr(), iovecs.len() as libc::c_int) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as u64)
        }
    }

    /// Copies bytes from byte `skip` of chunk `index` on (that chunk only)
    /// into `dst`; returns how many.
    fn copy_out(&mut self, index: usize, skip: u64, dst: &mut [MaybeUninit<u8>]) -> Result<usize> {
        match &self.chunks[index] {
            TransferChunk::Memory(bytes) => Ok(copy_bytes(&bytes[skip as usize..], dst)),
            TransferChunk::File { file, offset, len } => {
                let want = (len - skip).min(dst.len() as u64) as usize;
                pread_into(file, offset + skip, &mut dst[..want])
            }
            TransferChunk::Lazy { .. } => {
                let piece = self.lazy_piece(index, skip)?;
                Ok(copy_bytes(&piece, dst))
            }
        }
    }

    /// The fetched bytes of lazy chunk `index` from byte `skip` of it on,
    /// from the piece the plan holds or else from a new fetch (which then
    /// replaces the held piece). A failed fetch changes nothing.
    fn lazy_piece(&mut self, index: usize, skip: u64) -> Result<Bytes> {
        if let Some(piece) = &self.piece {
            let end = piece.start + piece.bytes.len() as u64;
            if piece.chunk == index && (piece.start..end).contains(&skip) {
                return Ok(piece.bytes.slice((skip - piece.start) as usize..));
            }
        }
        let TransferChunk::Lazy { len, fetcher } = &self.chunks[index] else {
            unreachable!("lazy_piece is only called for lazy chunks");
        };
        let rest = len - skip;
        let max = rest.min(LAZY_PIECE_MAX as u64) as usize;
        let bytes = fetcher.fetch(skip, max)?;
        if bytes.is_empty() || bytes.len() > max {
            // More bytes than the index promised would make the stream
            // longer than the length already announced to the consumer.
            return Err(Error::corruption(format!(
                "a lazy chunk's fetcher returned {} bytes at offset {skip} of {len} (wanted 1 to {max})",
                bytes.len()
            )));
        }
        self.piece = Some(Piece {
            chunk: index,
            start: skip,
            bytes: bytes.clone(),
        });
        Ok(bytes)
    }
}

/// Copies as much of `src` as fits into `dst`; returns how many bytes.
fn copy_bytes(src: &[u8], dst: &mut [MaybeUninit<u8>]) -> usize {
    let n = src.len().min(dst.len());
    // SAFETY: both ranges are valid for `n` bytes and cannot overlap (`dst`
    // is a unique borrow, `src` a shared one); MaybeUninit<u8> has the
    // layout of u8.
    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst.as_mut_ptr().cast::<u8>(), n) };
    n
}

/// One pread(2) of up to `dst.len()` bytes of `file` at `offset` (retried
/// on EINTR); returns how many bytes it read. The planned range exists (the
/// plan holds the file open and stored bytes are never truncated), so
/// reading none is an error.
fn pread_into(file: &File, offset: u64, dst: &mut [MaybeUninit<u8>]) -> Result<usize> {
    loop {
        // SAFETY: `dst` is valid for writing `dst.len()` bytes; the kernel
        // writes only initialised bytes, and only the count it returns.
        let n = unsafe {
            libc::pread(
                file.as_raw_fd(),
                dst.as_mut_ptr().cast::<libc::c_void>(),
                dst.len(),
                offset as libc::off_t,
            )
        };
        if n > 0 {
            return Ok(n as usize);
        }
        let error = if n == 0 {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "planned file range is shorter than planned",
            )
        } else {
            io::Error::last_os_error()
        };
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(Error::io("reading a planned file range", error));
        }
    }
}

/// Blocks SIGPIPE in the calling thread for its lifetime. sendfile(2) has no
/// MSG_NOSIGNAL, and writing to a socket whose peer is gone raises SIGPIPE,
/// which kills a process that did not ignore it. A library must not change
/// the process-wide disposition, so the signal is blocked for this thread
/// only; a SIGPIPE our own call raised is consumed before unblocking (the
/// caller sees EPIPE), one that was already pending is left alone.
struct SigpipeBlock {
    old: libc::sigset_t,
    was_pending: bool,
}

fn sigpipe_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise the set we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGPIPE);
        set
    }
}

impl SigpipeBlock {
    fn new() -> Self {
        let set = sigpipe_set();
        // SAFETY: valid sigset pointers; pthread_sigmask affects this thread.
        unsafe {
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
            let mut pending: libc::sigset_t = std::mem::zeroed();
            libc::sigpending(&mut pending);
            SigpipeBlock {
                old,
                was_pending: libc::sigismember(&pending, libc::SIGPIPE) == 1,
            }
        }
    }

    /// Consumes the SIGPIPE our write raised, if it is pending now.
    fn consume(&self) {
        if self.was_pending {
            return;
        }
        let set = sigpipe_set();
        let zero = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid set and timeout; returns at once (zero timeout).
        unsafe {
            libc::sigtimedwait(&set, std::ptr::null_mut(), &zero);
        }
    }
}

impl Drop for SigpipeBlock {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved in `new`.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, std::ptr::null_mut());
        }
    }
}

/// One sendfile(2) call of up to `len` bytes of `file` from `offset`. Falls
/// back to pread + write when the kernel refuses sendfile for this pair of
/// descriptors (EINVAL/ENOSYS).
fn send_file_range(fd: RawFd, file: &File, offset: u64, len: u64) -> io::Result<u64> {
    let guard = SigpipeBlock::new();
    let mut off = offset as libc::off_t;
    // The kernel moves at most 0x7ffff000 bytes per call anyway.
    let count = len.min(1 << 30) as usize;
    // SAFETY: both descriptors are open for the duration of the call; `off`
    // is a valid pointer that the kernel updates.
    let n = unsafe { libc::sendfile(fd, file.as_raw_fd(), &mut off, count) };
    if n >= 0 {
        return Ok(n as u64);
    }
    let error = io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::EPIPE) => {
            guard.consume();
            Err(error)
        }
        Some(libc::EINVAL) | Some(libc::ENOSYS) => {
            let mut buf = vec![0u8; count.min(256 << 10)];
            let got = file.read_at(&mut buf, offset)?;
            if got == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "planned file range is shorter than planned",
                ));
            }
            // SAFETY: buf holds `got` initialised bytes.
            let n = unsafe { libc::write(fd, buf.as_ptr() as *const libc::c_void, got) };
            if n < 0 {
                let error = io::Error::last_os_error();
                if error.raw_os_error() == Some(libc::EPIPE) {
                    guard.consume();
                }
                return Err(error);
            }
            Ok(n as u64)
        }
        _ => Err(error),
    }
}

fn wait_writable(fd: RawFd) -> Result<()> {
    let mut pollfd = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd, count 1.
        let rc = unsafe { libc::poll(&mut pollfd, 1, -1) };
        if rc >= 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(Error::io(
                "waiting for descriptor to become writable",
                error,
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    fn plan(parts: &[&'static [u8]]) -> TransferPlan {
        let chunks = parts
            .iter()
            .map(|p| TransferChunk::Memory(Bytes::from_static(p)))
            .collect();
        TransferPlan::new(chunks, 42)
    }

    #[test]
    fn sends_all_chunks_in_order() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut p = plan(&[b"hello ", b"zero ", b"copy"]);
        assert_eq!(p.total_bytes(), 15);
        assert_eq!(p.send_all_to_fd(a.as_raw_fd()).unwrap(), 15);
        drop(a);
        let mut got = Vec::new();
        b.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"hello zero copy");
        assert!(p.is_complete());
        assert_eq!(p.next_offset(), 42);
    }

    #[test]
    fn resumes_after_would_block_without_corrupting() {
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let big: &'static [u8] = Box::leak(
            (0..4 << 20)
                .map(|i| (i % 251) as u8)
                .collect::<Vec<_>>()
                .into_boxed_slice(),
        );
        let mut p = plan(&[&big[..1000], &big[1000..]]);
        let first = p.send_to_fd(a.as_raw_fd()).unwrap();
        assert!(!first.complete, "a 4 MiB send must fill the socket buffer");
        assert_eq!(p.sent_bytes(), first.written);
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            b.read_to_end(&mut got).unwrap();
            got
        });
        p.send_all_to_fd(a.as_raw_fd()).unwrap();
        drop(a);
        assert_eq!(reader.join().unwrap(), big);
    }

    #[test]
    fn closed_peer_is_an_error_not_a_signal() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        let mut p = plan(&[b"data"]);
        let err = p.send_to_fd(a.as_raw_fd()).unwrap_err();
        assert_eq!(err.status(), crate::Status::Io);
    }

    fn file_chunk(data: &[u8], offset: u64, len: u64) -> TransferChunk {
        use std::io::Write;
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(data).unwrap();
        TransferChunk::File {
            file: Arc::new(file),
            offset,
            len,
        }
    }

    #[test]
    fn file_chunks_go_out_with_sendfile_between_memory_chunks() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let chunks = vec![
            TransferChunk::Memory(Bytes::from_static(b"<")),
            file_chunk(b"xxhello fileyy", 2, 10),
            TransferChunk::Memory(Bytes::from_static(b">")),
        ];
        let mut p = TransferPlan::new(chunks, 7);
        assert_eq!(p.to_vec().unwrap(), b"<hello file>");
        assert_eq!(p.send_all_to_fd(a.as_raw_fd()).unwrap(), 12);
        drop(a);
        let mut got = Vec::new();
        b.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"<hello file>");
    }

    #[test]
    fn file_chunk_resumes_after_would_block_and_closed_peer_is_no_signal() {
        let data: Vec<u8> = (0..4 << 20).map(|i| (i % 253) as u8).collect();
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut p = TransferPlan::new(vec![file_chunk(&data, 0, data.len() as u64)], 1);
        let first = p.send_to_fd(a.as_raw_fd()).unwrap();
        assert!(!first.complete);
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            b.read_to_end(&mut got).unwrap();
            got
        });
        p.send_all_to_fd(a.as_raw_fd()).unwrap();
        drop(a);
        assert_eq!(reader.join().unwrap(), data);

        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        let mut p = TransferPlan::new(vec![file_chunk(b"data", 0, 4)], 1);
        let err = p.send_to_fd(a.as_raw_fd()).unwrap_err();
        assert_eq!(err.status(), crate::Status::Io);
    }

    #[test]
    fn writes_to_pipes_and_files_too() {
        let mut file = tempfile::tempfile().unwrap();
        let mut p = plan(&[b"ab", b"cd"]);
        p.send_all_to_fd(file.as_raw_fd()).unwrap();
        use std::io::Seek;
        file.rewind().unwrap();
        let mut got = String::new();
        file.read_to_string(&mut got).unwrap();
        assert_eq!(got, "abcd");
    }
}

#[cfg(test)]
mod lazy_tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::sync::Mutex;

    /// Serves `data` in pieces of at most `piece` bytes, fails the call
    /// numbered `fail_call` (from 0) once, and logs every call's offset.
    struct TestFetcher {
        data: Bytes,
        piece: usize,
        fail_call: Option<usize>,
        calls: Mutex<Vec<u64>>,
    }

    impl TestFetcher {
        fn new(data: Vec<u8>, piece: usize, fail_call: Option<usize>) -> Arc<Self> {
            Arc::new(TestFetcher {
                data: data.into(),
                piece,
                fail_call,
                calls: Mutex::new(Vec::new()),
            })
        }

        fn chunk(self: &Arc<Self>) -> TransferChunk {
            TransferChunk::Lazy {
                len: self.data.len() as u64,
                fetcher: self.clone(),
            }
        }

        fn calls(&self) -> Vec<u64> {
            self.calls.lock().unwrap().clone()
        }
    }

    impl ChunkFetcher for TestFetcher {
        fn fetch(&self, offset: u64, max: usize) -> Result<Bytes> {
            assert!((1..=LAZY_PIECE_MAX).contains(&max), "max {max}");
            let mut calls = self.calls.lock().unwrap();
            let call = calls.len();
            calls.push(offset);
            if self.fail_call == Some(call) {
                let reset = io::Error::new(io::ErrorKind::ConnectionReset, "injected");
                return Err(Error::io("fetching a test chunk", reset));
            }
            let start = offset as usize;
            let end = (start + self.piece.min(max)).min(self.data.len());
            Ok(self.data.slice(start..end))
        }
    }

    /// Returns the same bytes whatever it is asked for.
    struct Fixed(&'static [u8]);

    impl ChunkFetcher for Fixed {
        fn fetch(&self, _offset: u64, _max: usize) -> Result<Bytes> {
            Ok(Bytes::from_static(self.0))
        }
    }

    fn pattern(len: usize, seed: usize) -> Vec<u8> {
        (0..len).map(|i| ((i * 7 + seed) % 251) as u8).collect()
    }

    fn file_chunk(data: &[u8]) -> TransferChunk {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"..").unwrap();
        file.write_all(data).unwrap();
        TransferChunk::File {
            file: Arc::new(file),
            offset: 2,
            len: data.len() as u64,
        }
    }

    /// Offsets a fetcher serving `len` bytes in pieces of `piece` is asked
    /// for when no byte is fetched twice.
    fn each_piece_once(len: usize, piece: usize) -> Vec<u64> {
        (0..len as u64).step_by(piece).collect()
    }

    /// Memory, lazy (short pieces), file and lazy chunks, and the bytes they
    /// stand for.
    fn mixed_plan(piece: usize) -> (TransferPlan, Vec<u8>, Arc<TestFetcher>) {
        let lazy = pattern(10_000, 1);
        let file = pattern(3_000, 2);
        let tail = pattern(17, 3);
        let fetcher = TestFetcher::new(lazy.clone(), piece, None);
        let chunks = vec![
            TransferChunk::Memory(Bytes::from_static(b"<")),
            fetcher.chunk(),
            file_chunk(&file),
            TestFetcher::new(tail.clone(), 1, None).chunk(),
            TransferChunk::Memory(Bytes::from_static(b">")),
        ];
        let expected = [&b"<"[..], &lazy, &file, &tail, b">"].concat();
        (TransferPlan::new(chunks, 9), expected, fetcher)
    }

    fn drain_in_thread(mut b: UnixStream) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut got = Vec::new();
            b.read_to_end(&mut got).unwrap();
            got
        })
    }

    fn read_all(plan: &mut TransferPlan, buf_len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; buf_len];
        let mut out = Vec::new();
        loop {
            let n = plan.read_into(&mut buf).unwrap();
            if n == 0 {
                return out;
            }
            assert!(
                n == buf_len || plan.is_complete(),
                "a short read before the end"
            );
            out.extend_from_slice(&buf[..n]);
        }
    }

    #[test]
    fn lazy_chunks_are_fetched_while_sending_and_sized_up_front() {
        let (mut plan, expected, fetcher) = mixed_plan(333);
        assert_eq!(plan.total_bytes(), expected.len() as u64);
        assert!(fetcher.calls().is_empty(), "planning fetches nothing");
        let (a, b) = UnixStream::pair().unwrap();
        let reader = drain_in_thread(b);
        assert_eq!(
            plan.send_all_to_fd(a.as_raw_fd()).unwrap(),
            plan.total_bytes()
        );
        drop(a);
        assert_eq!(reader.join().unwrap(), expected);
        assert_eq!(fetcher.calls(), each_piece_once(10_000, 333));
        assert!(plan.is_complete());
        assert_eq!(plan.to_vec().unwrap(), expected, "to_vec fetches again");
    }

    #[test]
    fn a_failed_fetch_keeps_progress_and_a_retry_sends_the_same_byte() {
        let data = pattern(1_000, 4);
        let fetcher = TestFetcher::new(data.clone(), 100, Some(2));
        let head = TransferChunk::Memory(Bytes::from_static(b"head"));
        let mut plan = TransferPlan::new(vec![head, fetcher.chunk()], 1);
        let (a, b) = UnixStream::pair().unwrap();
        let err = plan.send_to_fd(a.as_raw_fd()).unwrap_err();
        assert_eq!(err.status(), crate::Status::Io);
        assert!(err.to_string().contains("injected"), "{err}");
        assert_eq!(plan.sent_bytes(), 204, "head and two pieces went out");
        let reader = drain_in_thread(b);
        assert_eq!(plan.send_all_to_fd(a.as_raw_fd()).unwrap(), 800);
        drop(a);
        assert_eq!(reader.join().unwrap(), [&b"head"[..], &data].concat());
        let mut want = each_piece_once(1_000, 100);
        want.insert(2, 200);
        assert_eq!(
            fetcher.calls(),
            want,
            "the failed piece, and only it, is fetched again"
        );
    }

    #[test]
    fn a_failed_fetch_while_reading_returns_the_bytes_copied_then_fails_at_that_byte() {
        let data = pattern(1_000, 5);
        let fetcher = TestFetcher::new(data.clone(), 100, Some(1));
        let head = TransferChunk::Memory(Bytes::from_static(b"head"));
        let mut plan = TransferPlan::new(vec![head, fetcher.chunk()], 1);
        let mut buf = [0u8; 4096];
        assert_eq!(
            plan.read_into(&mut buf).unwrap(),
            104,
            "stops before the failed fetch"
        );
        assert_eq!(plan.sent_bytes(), 104);
        assert_eq!(plan.read_into(&mut buf).unwrap(), 900, "the retry succeeds");
        assert_eq!(&buf[..900], &data[100..]);

        let fetcher = TestFetcher::new(data.clone(), 300, Some(0));
        let mut plan = TransferPlan::new(vec![fetcher.chunk()], 1);
        let err = plan.read_into(&mut buf).unwrap_err();
        assert_eq!(err.status(), crate::Status::Io);
        assert_eq!(plan.sent_bytes(), 0);
        assert_eq!(read_all(&mut plan, 4096), data);
        assert_eq!(fetcher.calls(), vec![0, 0, 300, 600, 900]);
    }

    #[test]
    fn lazy_chunk_resumes_after_partial_sends_and_would_block() {
        let data = pattern(4 << 20, 6);
        let fetcher = TestFetcher::new(data.clone(), 65_537, None);
        let mut plan = TransferPlan::new(vec![fetcher.chunk()], 1);
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let first = plan.send_to_fd(a.as_raw_fd()).unwrap();
        assert!(!first.complete, "4 MiB fill a socketpair");
        assert_eq!(plan.sent_bytes(), first.written);
        let again = plan.send_to_fd(a.as_raw_fd()).unwrap();
        assert_eq!((again.written, again.complete), (0, false), "still full");
        let reader = drain_in_thread(b);
        plan.send_all_to_fd(a.as_raw_fd()).unwrap();
        drop(a);
        assert_eq!(reader.join().unwrap(), data);
        assert_eq!(fetcher.calls(), each_piece_once(4 << 20, 65_537));
    }

    #[test]
    fn reading_into_small_buffers_gives_the_sent_bytes() {
        for buf_len in [1, 7, 4096] {
            let (mut plan, expected, fetcher) = mixed_plan(5);
            assert_eq!(
                read_all(&mut plan, buf_len),
                expected,
                "buffers of {buf_len}"
            );
            assert!(plan.is_complete());
            assert_eq!(plan.sent_bytes(), expected.len() as u64);
            assert_eq!(plan.read_into(&mut [0u8; 3]).unwrap(), 0);
            assert_eq!(fetcher.calls(), each_piece_once(10_000, 5), "{buf_len}");
        }
    }

    #[test]
    fn reads_and_sends_share_one_progress() {
        let (mut plan, expected, _) = mixed_plan(64);
        let mut buf = vec![0u8; 10_003];
        assert_eq!(plan.read_into(&mut buf).unwrap(), 10_003);
        let (a, b) = UnixStream::pair().unwrap();
        let reader = drain_in_thread(b);
        let rest = plan.send_all_to_fd(a.as_raw_fd()).unwrap();
        drop(a);
        assert_eq!(rest + 10_003, expected.len() as u64);
        assert_eq!([buf, reader.join().unwrap()].concat(), expected);

        // Sent until the socket is full, then read.
        let data = pattern(4 << 20, 7);
        let fetcher = TestFetcher::new(data.clone(), 100_000, None);
        let mut plan = TransferPlan::new(vec![fetcher.chunk(), file_chunk(b"end")], 1);
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let sent = plan.send_to_fd(a.as_raw_fd()).unwrap();
        assert!(!sent.complete);
        drop(a);
        let received = drain_in_thread(b).join().unwrap();
        assert_eq!(received.len() as u64, sent.written);
        let rest = read_all(&mut plan, 4096);
        assert_eq!([received, rest].concat(), [&data[..], b"end"].concat());
        assert_eq!(fetcher.calls(), each_piece_once(4 << 20, 100_000));
    }

    #[test]
    fn a_fetcher_breaking_its_contract_fails_the_transfer() {
        for (len, fetcher) in [(3, Fixed(b"abcdef")), (3, Fixed(b""))] {
            let chunk = TransferChunk::Lazy {
                len,
                fetcher: Arc::new(fetcher),
            };
            let mut plan = TransferPlan::new(vec![chunk], 1);
            assert_eq!(plan.total_bytes(), 3);
            let err = plan.read_into(&mut [0u8; 16]).unwrap_err();
            assert_eq!(err.status(), crate::Status::Corruption, "{err}");
            let (a, _b) = UnixStream::pair().unwrap();
            let err = plan.send_to_fd(a.as_raw_fd()).unwrap_err();
            assert_eq!(err.status(), crate::Status::Corruption, "{err}");
            assert_eq!(plan.sent_bytes(), 0);
            assert_eq!(
                plan.to_vec().unwrap_err().status(),
                crate::Status::Corruption
            );
        }
    }

    #[test]
    fn an_empty_buffer_is_refused_and_a_complete_plan_reads_nothing() {
        let (mut plan, expected, _) = mixed_plan(10);
        let err = plan.read_into(&mut []).unwrap_err();
        assert_eq!(err.status(), crate::Status::InvalidArgument);
        assert!(err.to_string().contains("empty"), "{err}");
        assert_eq!(read_all(&mut plan, 1 << 20), expected);
        assert_eq!(plan.read_into(&mut [0u8; 1]).unwrap(), 0);
        assert!(
            plan.read_into(&mut []).is_err(),
            "refused even when complete"
        );
        let mut empty = TransferPlan::empty(5);
        assert_eq!(empty.read_into(&mut [0u8; 8]).unwrap(), 0);
        assert!(empty.is_complete());
    }
}
