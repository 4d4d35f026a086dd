//! Helpers shared by the persistent engines' test binaries. Each binary
//! uses a subset, so the others are not dead code there.
#![allow(dead_code)]

pub mod crash;

use std::path::{Path, PathBuf};

use mqstore::Store;

/// A tiny deterministic PRNG (xorshift64*), so tests need no crate.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    pub fn seeded() -> Rng {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        let seed = std::env::var("MQS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(nanos);
        eprintln!("seed {seed}");
        Rng::new(seed)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

pub fn values_of(store: &Store, shard: &str) -> Vec<(i64, Vec<u8>)> {
    let info = store.shard_info(shard).unwrap();
    let r = store
        .read(shard, info.first_offset, usize::MAX, usize::MAX)
        .unwrap();
    r.records
        .iter()
        .map(|r| (r.offset, r.value.to_vec()))
        .collect()
}

pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("journal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for item in std::fs::read_dir(from).unwrap() {
        let item = item.unwrap();
        let target = to.join(item.file_name());
        if item.file_type().unwrap().is_dir() {
            copy_dir(&item.path(), &target);
        } else {
            std::fs::copy(item.path(), target).unwrap();
        }
    }
}
