//! The newest journal bytes, kept in memory after they were written.
//!
//! Why: the journal writes with O_DIRECT, so what it just wrote is not in
//! the page cache, and a consumer at the tail (the common case: a follower
//! or a live subscriber reading what was appended a moment ago) would read
//! it back from the disk through the mapping. The writer hands each
//! written run of entries to this cache instead of recycling its buffer;
//! reads and transfers of batches that lie in it use zero-copy views of
//! those buffers. The oldest runs are dropped once the cache holds more
//! than `[journal] tail_cache_bytes`.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::RwLock;

use super::index::IndexEntry;
use super::runbuf::RunBuf;

#[derive(Default)]
struct Inner {
    /// In log order.
    runs: VecDeque<Cached>,
    bytes: u64,
}

struct Cached {
    /// Global journal position of the first entry byte.
    start: u64,
    /// The run's entries, sliced for readers: a slice costs a reference
    /// count, no allocation.
    entries: Bytes,
    /// The run's buffer, which `entries` holds a reference to as well: a
    /// dropped run whose buffer is held by nothing else is reused.
    run: Arc<RunBuf>,
}

impl Cached {
    /// Bytes charged to the budget: the allocation (fixed once cached).
    fn charged(&self) -> u64 {
        self.run.capacity() as u64
    }
}

/// The owner of a cached run's `Bytes`.
struct Shared(Arc<RunBuf>);

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        self.0.entries()
    }
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

    /// Keeps `data`, written at global position `start`. Returns the
    /// buffers of the runs it dropped that no reader still holds, emptied,
    /// for the writer to reuse: their pages are already mapped, while a
    /// fresh buffer page-faults on every 4 KiB the appenders fill (a fifth
    /// of a pipelining producer's time with 16 MiB in flight).
    pub fn push(&self, start: u64, run: RunBuf) -> Vec<RunBuf> {
        if !self.enabled() || run.is_empty() {
            return vec![run];
        }
        // The budget is memory, so it counts the allocation: a run in a
        // buffer much larger than itself (a lone catalogue record in a
        // reused one sized for a large flush) is moved to one of its own
        // size first.
        let run = Arc::new(run.trimmed());
        let cached = Cached {
            start,
            entries: Bytes::from_owner(Shared(run.clone())),
            run,
        };
        let mut evicted = Vec::new();
        let mut inner = self.inner.write();
        // Two flushers finish in either order: keep the runs sorted by
        // position for `get` (almost always this is the back).
        let at = inner.runs.partition_point(|cached| cached.start < start);
        inner.bytes += cached.charged();
        inner.runs.insert(at, cached);
        while inner.bytes > self.capacity {
            let Some(cached) = inner.runs.pop_front() else {
                break;
            };
            inner.bytes -= cached.charged();
            evicted.push(cached);
        }
        // Outside the lock: freeing megabytes (buffers still shared with
        // readers, or surplus) takes a while.
        drop(inner);
        evicted
            .into_iter()
            .filter_map(|cached| {
                // The cache's own view first: then only readers' views
                // still hold the buffer.
                drop(cached.entries);
                Arc::try_unwrap(cached.run).ok()
            })
            .collect()
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
        let after = inner.runs.partition_point(|cached| cached.start <= pos);
        let cached = inner.runs.get(after.checked_sub(1)?)?;
        let at = (pos - cached.start) as usize;
        let end = at + len as usize;
        (end <= cached.entries.len()).then(|| cached.entries.slice(at..end))
    }

    pub fn bytes(&self) -> u64 {
        self.inner.read().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::super::writer::BLOCK;
    use super::*;

    fn filled(byte: u8, len: usize) -> RunBuf {
        let mut run = RunBuf::new(0, len);
        run.push(&[&vec![byte; len]], 0);
        run
    }

    /// A run below charges one block, a trimmed one two (its entries and
    /// room for a head).
    const B: u64 = BLOCK;

    #[test]
    fn serves_what_it_holds_and_drops_the_oldest() {
        let cache = TailCache::new(3 * B + B / 2);
        cache.push(1000, filled(1, 100));
        let mut oversized = RunBuf::new(0, 16 * B as usize);
        oversized.push(&[&[2; 100]], 0);
        cache.push(1100, oversized);
        assert_eq!(cache.bytes(), 3 * B, "the oversized run was trimmed");
        assert_eq!(cache.get(1000, 100).unwrap(), vec![1u8; 100]);
        assert_eq!(cache.get(1150, 50).unwrap(), vec![2u8; 50]);
        assert_eq!(cache.get(1050, 100), None, "spans two runs");
        assert_eq!(cache.get(900, 10), None);
        cache.push(1200, filled(3, 100));
        assert_eq!(cache.get(1000, 10), None, "oldest run dropped");
        assert_eq!(cache.get(1210, 10).unwrap(), vec![3u8; 10]);
        assert_eq!(cache.bytes(), 3 * B);
        let off = TailCache::new(0);
        assert_eq!(off.push(0, filled(1, 10)).len(), 1, "back for reuse");
        assert_eq!(off.get(0, 10), None);
    }

    #[test]
    fn dropped_runs_come_back_for_reuse_unless_a_reader_holds_them() {
        let cache = TailCache::new(3 * B);
        assert!(cache.push(0, filled(1, 100)).is_empty());
        assert!(cache.push(100, filled(2, 100)).is_empty());
        let held = cache.get(100, 10).unwrap();
        assert!(
            cache.push(200, filled(3, 100)).is_empty(),
            "nothing dropped yet"
        );
        let reusable = cache.push(300, filled(4, 100));
        assert_eq!(cache.get(310, 10).unwrap(), vec![4u8; 10]);
        assert_eq!(reusable.len(), 1, "the first run, which nobody reads");
        assert_eq!(reusable[0].entries(), &[1; 100][..]);
        assert!(cache.push(400, filled(5, 100)).is_empty(), "the held run");
        assert_eq!(held, vec![2u8; 10], "a reader's view outlives the cache");
    }

    #[test]
    fn runs_pushed_out_of_order_are_found() {
        let cache = TailCache::new(10 * B);
        cache.push(0, filled(1, 100));
        cache.push(200, filled(3, 100));
        cache.push(100, filled(2, 100));
        for (pos, byte) in [(0u64, 1u8), (150, 2), (299, 3)] {
            assert_eq!(cache.get(pos, 1).unwrap(), vec![byte], "at {pos}");
        }
        assert_eq!(cache.get(300, 1), None);
    }
}
