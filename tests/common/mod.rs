//! Helpers shared by the persistent engines' test binaries. Each binary
//! uses a subset, so the others are not dead code there.
#![allow(dead_code)]

pub mod crash;

use std::path::{Path, PathBuf};

use mqstore::Store;

/// Every engine of the build. The MySQL, Redis and S3 engines reach the
/// test servers `scripts/with-servers.sh` starts (`MQS_MYSQL_URL`,
/// `MQS_REDIS_URL`, the `AWS_*` variables); each store keeps its data
/// there under its own key prefix (from its `store.id`).
pub const ENGINES: &[&str] = &[
    "memory",
    "journal",
    "file",
    #[cfg(feature = "rocksdb")]
    "rocksdb",
    #[cfg(feature = "mysql")]
    "mysql",
    #[cfg(feature = "redis")]
    "redis",
    #[cfg(feature = "s3")]
    "s3",
    #[cfg(feature = "s3")]
    "hybrid",
];

/// The engines of the build keeping their shards on a server.
pub const SERVER_ENGINES: &[&str] = &[
    #[cfg(feature = "mysql")]
    "mysql",
    #[cfg(feature = "redis")]
    "redis",
    #[cfg(feature = "s3")]
    "s3",
    #[cfg(feature = "s3")]
    "hybrid",
];

/// The engines of the build whose shards survive a crash in the store's
/// directory (a copy of the directory is a copy of the store).
pub fn local_engines() -> Vec<&'static str> {
    let mut engines = vec!["file"];
    if cfg!(feature = "journal") {
        engines.push("journal");
    }
    if cfg!(feature = "rocksdb") {
        engines.push("rocksdb");
    }
    engines
}

/// The engines of the build whose shards survive a crash.
pub fn persistent_engines() -> Vec<&'static str> {
    let mut engines = local_engines();
    engines.extend(SERVER_ENGINES);
    engines
}

/// Fails (never skips) a test that needs the test servers when they are
/// not up, saying how to start them.
pub fn require_servers(engine: &str) {
    let var = match engine {
        "mysql" => "MQS_MYSQL_URL",
        "redis" => "MQS_REDIS_URL",
        "s3" | "hybrid" => "MQS_TEST_S3_ENDPOINT",
        _ => return,
    };
    assert!(
        std::env::var_os(var).is_some(),
        "the {engine} engine's tests need its test server: run them through \
         `make test-rust` or `scripts/with-servers.sh cargo test` ({var} is not set)"
    );
}

/// Cases per run of a model property test: `MQS_MODEL_CASES`, else
/// `default`.
pub fn model_cases(default: u32) -> u32 {
    std::env::var("MQS_MODEL_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

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

/// A temporary directory in memory (tmpfs) where there is one: for tests
/// about what the engines keep rather than about the device, which write
/// and fsync thousands of stores.
pub fn memory_tempdir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::tempdir_in(shm) {
            return dir;
        }
    }
    tempfile::tempdir().unwrap()
}

pub fn values_of(store: &Store, shard: &str) -> Vec<(i64, Vec<u8>)> {
    let info = store.shard_info(shard).unwrap();
    let r = store
        .read(shard, info.first_offset, usize::MAX, usize::MAX)
        .unwrap();
    r.records
        .iter()
        .map(|r| (r.offset, r.value_bytes().to_vec()))
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

/// What a kill -9 of the process would leave of the open store in `dir`:
/// a copy of its files as the kernel holds them now (no close, no flush;
/// the directory lock is not copied), made next to `dir`, on the same
/// filesystem. The caller must have no calls in flight. Background
/// threads may still write: an index checkpoint is only written after the
/// journal it covers, so it is copied first (a later copy of the journal
/// then holds everything it names), and a file a checkpoint's rename
/// removed meanwhile is left out, as if the kill came before. RocksDB's
/// flushes and compactions create and remove files in an order a copy
/// made file by file cannot follow (a MANIFEST naming a table removed
/// before its turn came): a copy during which any file appeared,
/// disappeared or grew is made again.
pub fn crash_copy(dir: &Path) -> tempfile::TempDir {
    for _ in 0..1000 {
        let before = listing(dir);
        let copy = match dir.parent() {
            Some(parent) => tempfile::tempdir_in(parent).unwrap(),
            None => tempfile::tempdir().unwrap(),
        };
        let is_segment = |p: &Path| p.extension().is_some_and(|e| e == "log");
        copy_files(dir, copy.path(), &|p| !is_segment(p));
        copy_files(dir, copy.path(), &is_segment);
        if listing(dir) == before {
            return copy;
        }
    }
    panic!("'{}' kept changing while it was copied", dir.display());
}

/// Every file under `dir` with its size, but RocksDB's info logs (which
/// background threads append to whatever they do).
fn listing(dir: &Path) -> std::collections::BTreeMap<PathBuf, u64> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(items) = std::fs::read_dir(dir) else {
        return out;
    };
    for item in items.flatten() {
        let path = item.path();
        let Ok(meta) = item.metadata() else {
            continue;
        };
        if meta.is_dir() {
            out.extend(listing(&path));
        } else if !item.file_name().to_string_lossy().starts_with("LOG") {
            out.insert(path, meta.len());
        }
    }
    out
}

fn copy_files(from: &Path, to: &Path, wanted: &dyn Fn(&Path) -> bool) {
    std::fs::create_dir_all(to).unwrap();
    for item in std::fs::read_dir(from).unwrap() {
        let item = item.unwrap();
        let target = to.join(item.file_name());
        if item.file_type().unwrap().is_dir() {
            copy_files(&item.path(), &target, wanted);
        } else if wanted(&item.path()) {
            match std::fs::copy(item.path(), target) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => panic!("copying {}: {e}", item.path().display()),
            }
        }
    }
}
