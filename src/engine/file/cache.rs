//! The engine's bounded cache of mapped segments (LRU by bytes mapped).
//!
//! Reads are zero-copy slices of read-only maps. A map costs address space
//! and, once touched, resident memory, so only the most recently used ones
//! stay mapped, within the budget `max_memory_mb` gives them. Evicting a map
//! does not invalidate views already handed out: each view holds the map
//! (`Arc<Mmap>`) it slices, and the pages go once the last view does.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use memmap2::{Mmap, MmapOptions};
use parking_lot::Mutex;

use crate::{Error, Result};

/// (shard id, segment base offset).
pub type Key = (u64, i64);

struct Slot {
    map: Arc<Mmap>,
    tick: u64,
}

#[derive(Default)]
struct Inner {
    maps: HashMap<Key, Slot>,
    mapped: u64,
    tick: u64,
    hits: u64,
    misses: u64,
    evictions: u64,
}

pub struct MapCache {
    budget: u64,
    inner: Mutex<Inner>,
}

pub use crate::io::map_slice as slice;

impl MapCache {
    pub fn new(budget: u64) -> MapCache {
        MapCache {
            budget,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// A map of the segment file at `path` covering at least `need` bytes.
    /// `map_len` (≥ `need`) is what a new map covers: the active segment is
    /// mapped at its capacity so that appends do not force a remap.
    pub fn get(&self, key: Key, path: &Path, need: u64, map_len: u64) -> Result<Arc<Mmap>> {
        {
            let mut inner = self.inner.lock();
            inner.tick += 1;
            let tick = inner.tick;
            if let Some(slot) = inner.maps.get_mut(&key) {
                if slot.map.len() as u64 >= need {
                    slot.tick = tick;
                    let map = slot.map.clone();
                    inner.hits += 1;
                    return Ok(map);
                }
            }
            inner.misses += 1;
        }
        // Mapped outside the lock: opening and mapping a file must not stall
        // every other shard's reads.
        let file =
            File::open(path).map_err(|e| Error::io(format!("opening '{}'", path.display()), e))?;
        let len = map_len.max(need).max(1);
        // SAFETY: a read-only shared map. Segment files are append-only: the
        // engine never rewrites a byte it has written (deletes write a new
        // file and rename it over the old, which leaves this inode and its
        // pages as they were), and truncates only in recovery, before any
        // map exists. Slices are only ever made of written bytes, so none
        // can change or vanish under a reader; the part past EOF of an
        // active segment's map is never touched.
        let map = unsafe { MmapOptions::new().len(len as usize).map(&file) }
            .map_err(|e| Error::io(format!("mapping '{}'", path.display()), e))?;
        let map = Arc::new(map);
        let mut inner = self.inner.lock();
        inner.tick += 1;
        let tick = inner.tick;
        if let Some(old) = inner.maps.insert(
            key,
            Slot {
                map: map.clone(),
                tick,
            },
        ) {
            inner.mapped -= old.map.len() as u64;
        }
        inner.mapped += len;
        self.evict(&mut inner, key);
        Ok(map)
    }

    /// Unmaps least recently used maps until the budget holds (the one just
    /// mapped stays, even if it alone is larger).
    fn evict(&self, inner: &mut Inner, keep: Key) {
        while inner.mapped > self.budget && inner.maps.len() > 1 {
            let Some((&oldest, _)) = inner
                .maps
                .iter()
                .filter(|(k, _)| **k != keep)
                .min_by_key(|(_, s)| s.tick)
            else {
                return;
            };
            if let Some(slot) = inner.maps.remove(&oldest) {
                inner.mapped -= slot.map.len() as u64;
                inner.evictions += 1;
            }
        }
    }

    /// Forgets a segment's map (its file was rewritten or removed).
    pub fn forget(&self, key: Key) {
        let mut inner = self.inner.lock();
        if let Some(slot) = inner.maps.remove(&key) {
            inner.mapped -= slot.map.len() as u64;
        }
    }

    /// Forgets every map of a shard.
    pub fn forget_shard(&self, shard: u64) {
        let mut inner = self.inner.lock();
        let doomed: Vec<Key> = inner
            .maps
            .keys()
            .filter(|k| k.0 == shard)
            .copied()
            .collect();
        for key in doomed {
            if let Some(slot) = inner.maps.remove(&key) {
                inner.mapped -= slot.map.len() as u64;
            }
        }
    }

    pub fn clear(&self) {
        let mut inner = self.inner.lock();
        inner.maps.clear();
        inner.mapped = 0;
    }

    pub fn stats(&self) -> serde_json::Value {
        let inner = self.inner.lock();
        serde_json::json!({
            "maps": inner.maps.len(),
            "mapped_bytes": inner.mapped,
            "map_budget_bytes": self.budget,
            "hits": inner.hits,
            "misses": inner.misses,
            "evictions": inner.evictions,
        })
    }
}
