//! The buffer a run of entries collects in, laid out for O_DIRECT.
//!
//! A run's entries start at some position `pos` of a segment, rarely on a
//! block boundary. The buffer's first byte stands for the boundary at or
//! before `pos` and its allocation is aligned to `BLOCK`, so the leader can
//! hand it to an O_DIRECT write as it is: it fills the head (the block's
//! bytes before `pos`, already written by an earlier group) and zeros the
//! rest of the last block in place. Without this layout every write first
//! copied the whole run into an aligned buffer. The same buffer then
//! serves tail reads from the tail cache (`tail`), shared by `Arc`.

use std::alloc::Layout;
use std::ptr::NonNull;

use super::writer::BLOCK;

/// Growable, `BLOCK`-aligned bytes: `head` bytes of room for the start of
/// the first block, then the run's entries.
pub struct RunBuf {
    ptr: NonNull<u8>,
    /// A non-zero multiple of `BLOCK`.
    cap: usize,
    /// Bytes in use, the head included.
    len: usize,
    head: usize,
    /// The length of the block-aligned bytes `prepare_direct` made ready
    /// for an O_DIRECT write; 0 when not ready.
    direct_len: usize,
}

// SAFETY: a RunBuf owns its allocation like a Vec<u8> does, and `&RunBuf`
// only reads it.
unsafe impl Send for RunBuf {}
// SAFETY: as above; no interior mutability.
unsafe impl Sync for RunBuf {}

fn layout(cap: usize) -> Layout {
    Layout::from_size_align(cap, BLOCK as usize).expect("a valid run buffer layout")
}

fn allocate(cap: usize) -> NonNull<u8> {
    // SAFETY: `cap` is non-zero (a multiple of BLOCK, at least BLOCK).
    let ptr = unsafe { std::alloc::alloc(layout(cap)) };
    NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(layout(cap)))
}

impl RunBuf {
    /// An empty run whose entries start `head` bytes into their first
    /// block, with room for at least `entries` bytes of them.
    pub fn new(head: usize, entries: usize) -> RunBuf {
        assert!(head < BLOCK as usize, "a head is part of one block");
        let cap = (head + entries).max(1).next_multiple_of(BLOCK as usize);
        RunBuf {
            ptr: allocate(cap),
            cap,
            len: head,
            head,
            direct_len: 0,
        }
    }

    /// Empties the buffer for a run starting `head` bytes into its first
    /// block, keeping the allocation (and its mapped pages).
    pub fn reset(&mut self, head: usize) {
        assert!(head < BLOCK as usize, "a head is part of one block");
        self.head = head;
        self.len = head;
        self.direct_len = 0;
    }

    /// The bytes the allocation holds.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// The run's entries.
    pub fn entries(&self) -> &[u8] {
        // SAFETY: `[head, len)` lies inside the allocation and `push`
        // initialised it (the head before it may not be: only
        // `prepare_direct` fills it).
        unsafe {
            std::slice::from_raw_parts(self.ptr.as_ptr().add(self.head), self.len - self.head)
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len == self.head
    }

    /// Appends `parts`, then `zeros` zero bytes.
    pub fn push(&mut self, parts: &[&[u8]], zeros: usize) {
        let extra = parts.iter().map(|p| p.len()).sum::<usize>() + zeros;
        self.reserve(extra);
        // Growing moved only the bytes in use, not the zeros after them.
        self.direct_len = 0;
        for part in parts {
            // SAFETY: `reserve` made room for `extra` bytes past `len`, and
            // `part` is another allocation (a shared borrow cannot alias
            // this owned buffer).
            unsafe {
                std::ptr::copy_nonoverlapping(
                    part.as_ptr(),
                    self.ptr.as_ptr().add(self.len),
                    part.len(),
                )
            };
            self.len += part.len();
        }
        // SAFETY: inside the room `reserve` made.
        unsafe { std::ptr::write_bytes(self.ptr.as_ptr().add(self.len), 0, zeros) };
        self.len += zeros;
    }

    /// Makes room for `extra` more bytes. Grows by moving the bytes in use
    /// into a new allocation at least twice as large: realloc would copy
    /// the whole old allocation, used or not, and cannot keep the
    /// alignment anyway.
    pub fn reserve(&mut self, extra: usize) {
        let need = self.len + extra;
        if need <= self.cap {
            return;
        }
        let cap = need.max(2 * self.cap).next_multiple_of(BLOCK as usize);
        let ptr = allocate(cap);
        // SAFETY: both allocations hold at least `len` bytes and are
        // distinct; the old one was allocated with `layout(self.cap)`. The
        // head is not copied: only `prepare_direct` fills it.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.ptr.as_ptr().add(self.head),
                ptr.as_ptr().add(self.head),
                self.len - self.head,
            );
            std::alloc::dealloc(self.ptr.as_ptr(), layout(self.cap));
        }
        self.ptr = ptr;
        self.cap = cap;
    }

    /// Makes the first `upto` bytes what an O_DIRECT write sends (see
    /// `direct`): `prefix` (the first block's bytes before the entries)
    /// copied into the head, and zeros from the end of the entries up to
    /// `upto`, at most the end of the last block.
    pub fn prepare_direct(&mut self, prefix: &[u8], upto: usize) {
        assert_eq!(prefix.len(), self.head, "the prefix fills the head");
        assert!(
            self.head <= upto && upto <= self.len.next_multiple_of(BLOCK as usize),
            "a write covers the head and ends with the last block"
        );
        // SAFETY: `head <= len <= cap`, and `prefix` is another allocation.
        unsafe { std::ptr::copy_nonoverlapping(prefix.as_ptr(), self.ptr.as_ptr(), self.head) };
        if upto > self.len {
            // SAFETY: `upto` ends with the last block of `len` bytes, which
            // lies inside the allocation (`cap` is a multiple of BLOCK).
            unsafe { std::ptr::write_bytes(self.ptr.as_ptr().add(self.len), 0, upto - self.len) };
        }
        self.direct_len = upto;
    }

    /// The bytes `prepare_direct` made ready, starting on a block boundary
    /// of the file and of memory (empty if it was not called since the
    /// last change).
    pub fn direct(&self) -> &[u8] {
        // SAFETY: `prepare_direct` initialised `[0, direct_len)` (the head,
        // the entries, the zeros) and nothing changed it since: `push` and
        // `reset` set `direct_len` to 0.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.direct_len) }
    }

    /// The buffer, moved to an allocation of about its own size when more
    /// than an eighth of the current one would be unused (a small run in a
    /// reused large buffer, or one that just doubled): a cache of runs
    /// charges the allocation. Room for any head is kept, so that a buffer
    /// reused for a run of the same size never grows.
    pub fn trimmed(self) -> RunBuf {
        let needed = (self.len - self.head + BLOCK as usize).next_multiple_of(BLOCK as usize);
        if self.cap <= needed + needed / 8 {
            return self;
        }
        let mut trimmed = RunBuf::new(0, needed);
        trimmed.reset(self.head);
        trimmed.push(&[self.entries()], 0);
        trimmed
    }
}

impl Drop for RunBuf {
    fn drop(&mut self) {
        // SAFETY: allocated by `allocate` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout(self.cap)) };
    }
}

impl AsRef<[u8]> for RunBuf {
    fn as_ref(&self) -> &[u8] {
        self.entries()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_grow_in_an_aligned_buffer_behind_the_head() {
        let mut run = RunBuf::new(100, 10);
        assert!(run.is_empty() && run.capacity() == BLOCK as usize);
        run.push(&[b"abc", b"de"], 3);
        assert_eq!(run.entries(), b"abcde\0\0\0");
        let big = vec![7u8; 3 * BLOCK as usize];
        run.push(&[&big], 0);
        assert_eq!(run.entries().len(), 8 + big.len());
        assert_eq!(&run.entries()[..5], b"abcde", "moved when it grew");
        assert_eq!(run.capacity() % BLOCK as usize, 0);
        run.prepare_direct(&[9u8; 100], run.len.next_multiple_of(BLOCK as usize));
        let direct = run.direct();
        assert_eq!(direct.as_ptr() as usize % BLOCK as usize, 0, "aligned");
        assert_eq!(direct.len(), 4 * BLOCK as usize);
        assert_eq!(&direct[..100], &[9u8; 100][..]);
        assert_eq!(&direct[100..105], b"abcde");
        assert!(direct[100 + 8 + big.len()..].iter().all(|&b| b == 0));
        run.push(&[b"f"], 0);
        assert!(run.direct().is_empty(), "changed since");
        run.reset(0);
        assert!(run.is_empty() && run.entries().is_empty());
    }

    #[test]
    fn trimming_moves_only_a_mostly_empty_buffer() {
        let block = BLOCK as usize;
        let mut small = RunBuf::new(0, 64 * block);
        small.push(&[b"x"], 0);
        let mut trimmed = small.trimmed();
        assert_eq!(trimmed.capacity(), 2 * block, "the entries and a head");
        assert_eq!(trimmed.entries(), b"x");
        trimmed.reset(block - 1);
        trimmed.reserve(1);
        assert_eq!(trimmed.capacity(), 2 * block, "any head fits");
        let mut full = RunBuf::new(8, 2 * block);
        full.push(&[&vec![1u8; 2 * block]], 0);
        let cap = full.capacity();
        let kept = full.trimmed();
        assert_eq!(kept.capacity(), cap, "full: kept as it is");
        assert_eq!(kept.entries(), &vec![1u8; 2 * block][..]);
    }

    #[test]
    #[should_panic(expected = "the prefix fills the head")]
    fn a_prefix_must_fill_the_head() {
        RunBuf::new(10, 10).prepare_direct(&[0; 3], 10);
    }
}
