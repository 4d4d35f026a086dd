//! The newest journal bytes, kept in memory after they were written.
//!
//! Why: the journal writes with O_DIRECT, so what it just wrote is not in
//! the page cache, and a consumer at the tail (the common case: a follower
//! or a live subscriber reading what was appended a moment ago) would read
//! it back from the disk through the mapping. The writer hands each
//! written run of entries to this cache instead of recycling its buffer;
//! reads and transfers of batches that lie in it use zero-copy slices of
//! those buffers. The oldest runs are dropped once the cache holds more
//! than `[journal] tail_cache_bytes`.

use std::collections::VecDeque;

use bytes::Bytes;
use parking_lot::RwLock;

use super::index::IndexEntry;

#[derive(Default)]
struct Inner {
    /// (global journal position of the first byte, bytes, bytes charged
    /// to the budget: the allocation), in log order.
    runs: VecDeque<(u64, Bytes, u64)>,
    bytes: u64,
}

pub struct TailCache {
    capacity: u64,
    inner: RwLock<Inner>,
}

impl TailCache {
    pub fn new(capacity: u64) -> TailCache {
        TailCache {
            capacity,
            inner: RwLock::new(Inner::default()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.capacity > 0
    }

    /// Keeps `data`, written at global position `start`.
    pub fn push(&self, start: u64, mut data: Vec<u8>) {
        if !self.enabled() || data.is_empty() {
            return;
        }
        // The budget is memory, so it counts the allocation: a run in a
        // buffer much larger than itself (a lone catalogue record in one
        // sized for a large flush, or a run that just doubled its buffer)
        // is moved to one of its own size first.
        if data.capacity() > data.len() + data.len() / 8 {
            data.shrink_to_fit();
        }
        let charged = data.capacity() as u64;
        let mut inner = self.inner.write();
        inner.bytes += charged;
        inner.runs.push_back((start, Bytes::from(data), charged));
        while inner.bytes > self.capacity {
            let Some((_, _, old)) = inner.runs.pop_front() else {
                break;
            };
            inner.bytes -= old;
        }
    }

    /// The bytes of `batch`, if they are cached.
    pub fn batch(&self, batch: &IndexEntry) -> Option<Bytes> {
        self.get(batch.global_pos(), batch.len as u64)
    }

    /// The `len` bytes at global position `pos`, if they are cached.
    fn get(&self, pos: u64, len: u64) -> Option<Bytes> {
        if !self.enabled() {
            return None;
        }
        let inner = self.inner.read();
        let after = inner.runs.partition_point(|(start, _, _)| *start <= pos);
        let (start, run, _) = inner.runs.get(after.checked_sub(1)?)?;
        let at = (pos - start) as usize;
        (at + len as usize <= run.len()).then(|| run.slice(at..at + len as usize))
    }

    pub fn bytes(&self) -> u64 {
        self.inner.read().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_what_it_holds_and_drops_the_oldest() {
        let cache = TailCache::new(250);
        cache.push(1000, vec![1; 100]);
        let mut oversized = Vec::with_capacity(4096);
        oversized.extend_from_slice(&[2; 100]);
        cache.push(1100, oversized);
        assert_eq!(cache.get(1000, 100).unwrap(), vec![1u8; 100]);
        assert_eq!(cache.get(1150, 50).unwrap(), vec![2u8; 50]);
        assert_eq!(cache.get(1050, 100), None, "spans two runs");
        assert_eq!(cache.get(900, 10), None);
        cache.push(1200, vec![3; 100]);
        assert_eq!(cache.get(1000, 10), None, "oldest run dropped");
        assert_eq!(cache.get(1210, 10).unwrap(), vec![3u8; 10]);
        assert_eq!(cache.bytes(), 200);
        let off = TailCache::new(0);
        off.push(0, vec![1; 10]);
        assert_eq!(off.get(0, 10), None);
    }
}
