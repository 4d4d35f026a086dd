//! The peer: RocksDB, the engine the brief lists as done and the one RobustMQ
//! stores messages in today. Records are keyed by shard (u32 big-endian) +
//! offset (u64 big-endian), so keys sort in log order, and written as
//! WriteBatches of 64 × 1 KiB with the WAL synced per batch or not, or
//! pipelined: 64 batches (4 MiB) written unsynced, then one WAL sync
//! (`FlushWAL(true)`) acknowledges them all — RocksDB's counterpart of
//! `append_batch_nowait` + `wait_durable` with the same bytes in flight.
//! Built only with the `rocksdb` feature; without it the metrics are absent.

use std::path::Path;

use crate::{Plan, Results};

pub const SYNC: &str = "rocksdb.append_1k_batch64_sync.msgs_per_s";
pub const NOSYNC: &str = "rocksdb.append_1k_batch64_nosync.msgs_per_s";
pub const PIPELINED: &str = "rocksdb.append_1k_batch64_sync_pipelined.msgs_per_s";

#[cfg(feature = "rocksdb")]
mod imp {
    use std::io;
    use std::path::Path;
    use std::time::{Duration, Instant};

    use rocksdb::{DBCompressionType, Options, WriteBatch, WriteOptions, DB};

    use crate::util;

    pub const RECORD: usize = 1024;
    pub const BATCH: usize = 64;
    /// Batches per WAL sync when pipelined.
    pub const WINDOW: u64 = 64;

    /// How the WAL is made durable.
    #[derive(Clone, Copy)]
    pub enum Sync {
        EveryBatch,
        Never,
        /// One `flush_wal(true)` per `WINDOW` batches.
        PerWindow,
    }

    fn to_io(e: rocksdb::Error) -> io::Error {
        io::Error::other(e.to_string())
    }

    /// One repetition on a fresh database: msgs/s over `duration`.
    pub fn append_once(base: &Path, sync: Sync, duration: Duration) -> io::Result<f64> {
        let dir = tempfile::Builder::new()
            .prefix("rocksdb-")
            .tempdir_in(base)?;
        let mut options = Options::default();
        options.create_if_missing(true);
        // Stored uncompressed, like the mqstore workloads it is compared with.
        options.set_compression_type(DBCompressionType::None);
        let db = DB::open(&options, dir.path()).map_err(to_io)?;
        let mut write_options = WriteOptions::default();
        write_options.set_sync(matches!(sync, Sync::EveryBatch));
        write_options.disable_wal(false);

        let mut data = vec![0u8; RECORD * BATCH];
        util::fill_pseudo_random(&mut data, 21);
        let shard: u32 = 0;
        let mut offset: u64 = 0;
        let mut key = [0u8; 12];
        key[..4].copy_from_slice(&shard.to_be_bytes());
        let start = Instant::now();
        loop {
            let mut batch = WriteBatch::default();
            for value in data.chunks(RECORD) {
                key[4..].copy_from_slice(&offset.to_be_bytes());
                batch.put(key, value);
                offset += 1;
            }
            db.write_opt(batch, &write_options).map_err(to_io)?;
            if matches!(sync, Sync::PerWindow) {
                if offset % (WINDOW * BATCH as u64) != 0 {
                    // Only acknowledged (synced) messages count.
                    continue;
                }
                db.flush_wal(true).map_err(to_io)?;
            }
            let elapsed = start.elapsed();
            if elapsed >= duration {
                return Ok(offset as f64 / elapsed.as_secs_f64());
            }
        }
    }
}

pub fn run(base: &Path, plan: &Plan, results: &mut Results) {
    println!("== peer: RocksDB");
    #[cfg(feature = "rocksdb")]
    {
        use serde_json::json;
        let modes = [
            (SYNC, imp::Sync::EveryBatch, "every batch"),
            (NOSYNC, imp::Sync::Never, "never"),
            (
                PIPELINED,
                imp::Sync::PerWindow,
                "flush_wal(true) per 64 batches",
            ),
        ];
        for (name, sync, wal_sync) in modes {
            results.stats_or_failed(
                name,
                crate::util::repeat(plan.reps, || {
                    imp::append_once(
                        base,
                        sync,
                        std::time::Duration::from_secs_f64(plan.rocksdb_secs),
                    )
                }),
                "msgs/s",
                json!({
                    "record_bytes": imp::RECORD, "batch": imp::BATCH, "threads": 1,
                    "key": "shard u32 BE + offset u64 BE", "wal": true, "wal_sync": wal_sync,
                    "compression": "none", "seconds_per_rep": plan.rocksdb_secs,
                    "crate": "rocksdb 0.25 (bundled librocksdb-sys)",
                }),
            );
        }
    }
    #[cfg(not(feature = "rocksdb"))]
    {
        let _ = (base, plan);
        let reason = "built without the `rocksdb` feature (cargo run -p mqstore-bench \
                      --release --features rocksdb)";
        results.absent(SYNC, "msgs/s", reason);
        results.absent(NOSYNC, "msgs/s", reason);
        results.absent(PIPELINED, "msgs/s", reason);
    }
}
