//! Transfers of stored batches to a file descriptor (a consumer's socket).
//!
//! A broker must write a Fetch response's length before the record bytes, so
//! a transfer is planned first (which batches, how many bytes, up to which
//! offset) and then sent. The plan holds its own references to the bytes
//! (shared buffers, or open files), so appends, retention or deletes that
//! happen in between change nothing it sends.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;

use crate::{Error, Result};

/// Linux caps one writev/sendmsg at IOV_MAX (1024) segments.
const MAX_IOVECS: usize = 1024;

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
}

impl TransferChunk {
    fn len(&self) -> u64 {
        match self {
            TransferChunk::Memory(bytes) => bytes.len() as u64,
            TransferChunk::File { len, .. } => *len,
        }
    }
}

/// A planned transfer: exactly `total_bytes()` bytes of whole RecordBatches,
/// covering offsets up to `next_offset() - 1`. Sending may take several calls
/// on a non-blocking descriptor; progress is kept between them.
#[derive(Clone, Debug)]
pub struct TransferPlan {
    chunks: Vec<TransferChunk>,
    total: u64,
    next_offset: i64,
    sent: u64,
    /// Set once `sendmsg` reports the descriptor is not a socket.
    use_writev: bool,
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
        }
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

    /// Bytes already sent.
    pub fn sent_bytes(&self) -> u64 {
        self.sent
    }

    pub fn is_complete(&self) -> bool {
        self.sent == self.total
    }

    /// The planned bytes, concatenated (for tests and non-fd consumers).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.total as usize);
        for chunk in &self.chunks {
            match chunk {
                TransferChunk::Memory(bytes) => out.extend_from_slice(bytes),
                TransferChunk::File { file, offset, len } => {
                    let start = out.len();
                    out.resize(start + *len as usize, 0);
                    if let Err(e) = file.read_exact_at(&mut out[start..], *offset) {
                        // A planned file range always exists (the plan holds
                        // the file open and stored bytes are never truncated);
                        // failing here means the disk failed under us.
                        panic!("reading planned file range: {e}");
                    }
                }
            }
        }
        out
    }

    /// Writes as much of the remaining plan to `fd` as it accepts. On a
    /// non-blocking descriptor that fills up, returns with `complete == false`
    /// and keeps the position, so the next call resumes exactly there.
    /// SIGPIPE is never delivered: memory chunks go out with MSG_NOSIGNAL,
    /// file chunks with sendfile(2) while SIGPIPE is blocked for the calling
    /// thread (see `SigpipeBlock`); a closed peer is an `Io` error (EPIPE).
    pub fn send_to_fd(&mut self, fd: RawFd) -> Result<SendProgress> {
        let mut written = 0u64;
        while self.sent < self.total {
            match self.write_some(fd) {
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

    /// One write of the unsent bytes starting where the previous call
    /// stopped: a file chunk goes out with sendfile(2), a run of memory
    /// chunks with one gathered write.
    fn write_some(&mut self, fd: RawFd) -> io::Result<u64> {
        let mut skip = self.sent;
        for chunk in &self.chunks {
            let len = chunk.len();
            if skip >= len {
                skip -= len;
                continue;
            }
            if let TransferChunk::File { file, offset, len } = chunk {
                return send_file_range(fd, file, offset + skip, len - skip);
            }
            break;
        }
        let mut skip = self.sent;
        let mut iovecs: Vec<libc::iovec> = Vec::with_capacity(self.chunks.len().min(MAX_IOVECS));
        for chunk in &self.chunks {
            let len = chunk.len();
            if skip >= len {
                skip -= len;
                continue;
            }
            let TransferChunk::Memory(bytes) = chunk else {
                // A file chunk after memory ones: sent by the next call.
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
        if !self.use_writev {
            // SAFETY: msghdr is plain data; zeroed is a valid empty header.
            let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
            message.msg_iov = iovecs.as_mut_ptr();
            message.msg_iovlen = iovecs.len() as _;
            // SAFETY: every iovec points into a Bytes owned by self.chunks,
            // alive and unmodified for the duration of the call.
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
        assert_eq!(p.to_vec(), b"<hello file>");
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
