//! The read cache: fixed-size blocks of objects, least recently used
//! evicted first, bounded in bytes. Objects never change once written
//! (a rewrite is a new object with a new name), so a cached block is
//! never stale.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;

/// (shard id, object seq, block number).
pub type BlockKey = (u64, u64, u64);

pub struct BlockCache {
    capacity: u64,
    inner: Mutex<Lru>,
    hits: AtomicU64,
    misses: AtomicU64,
}

#[derive(Default)]
struct Lru {
    blocks: HashMap<BlockKey, (Bytes, u64)>,
    /// Use stamp → block, oldest first.
    order: BTreeMap<u64, BlockKey>,
    stamp: u64,
    bytes: u64,
}

impl BlockCache {
    pub fn new(capacity: u64) -> BlockCache {
        BlockCache {
            capacity,
            inner: Mutex::new(Lru::default()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    pub fn get(&self, key: BlockKey) -> Option<Bytes> {
        let mut lru = self.inner.lock();
        let lru = &mut *lru;
        lru.stamp += 1;
        let stamp = lru.stamp;
        let Some((bytes, used)) = lru.blocks.get_mut(&key) else {
            self.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        lru.order.remove(used);
        *used = stamp;
        lru.order.insert(stamp, key);
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(bytes.clone())
    }

    /// Whether `key` is cached, without counting a hit or a miss or
    /// refreshing it.
    pub fn contains(&self, key: BlockKey) -> bool {
        self.inner.lock().blocks.contains_key(&key)
    }

    pub fn insert(&self, key: BlockKey, block: Bytes) {
        let len = block.len() as u64;
        if len > self.capacity {
            return;
        }
        let mut lru = self.inner.lock();
        lru.stamp += 1;
        let stamp = lru.stamp;
        if let Some((old, used)) = lru.blocks.insert(key, (block, stamp)) {
            lru.order.remove(&used);
            lru.bytes -= old.len() as u64;
        }
        lru.order.insert(stamp, key);
        lru.bytes += len;
        while lru.bytes > self.capacity {
            let Some((_, oldest)) = lru.order.pop_first() else {
                break;
            };
            if let Some((evicted, _)) = lru.blocks.remove(&oldest) {
                lru.bytes -= evicted.len() as u64;
            }
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        let bytes = self.inner.lock().bytes;
        serde_json::json!({
            "capacity_bytes": self.capacity,
            "bytes": bytes,
            "hits": self.hits.load(Ordering::Relaxed),
            "misses": self.misses.load(Ordering::Relaxed),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_block_goes_first_and_the_size_stays_bounded() {
        let cache = BlockCache::new(30);
        for block in 0..3 {
            cache.insert((1, 1, block), Bytes::from(vec![0u8; 10]));
        }
        assert!(cache.get((1, 1, 0)).is_some(), "touch block 0");
        cache.insert((1, 1, 3), Bytes::from(vec![0u8; 10]));
        assert!(cache.get((1, 1, 1)).is_none(), "block 1 was the oldest");
        assert!(cache.get((1, 1, 0)).is_some());
        assert!(cache.get((1, 1, 3)).is_some());
        cache.insert((1, 1, 4), Bytes::from(vec![0u8; 40]));
        assert!(cache.get((1, 1, 4)).is_none(), "larger than the cache");
        assert!(cache.inner.lock().bytes <= 30);
    }
}
