//! The peer: RocksDB, the engine the brief lists as done and the one RobustMQ
//! stores messages in today. It runs the journal's headline workloads
//! (`engine::headline_workloads`) under the same names, so `journal.X` and
//! `rocksdb.X` are the same records, batch size, producers, shards,
//! in-flight window and durability:
//!
//! | journal durability | RocksDB write |
//! |---|---|
//! | `none` (acknowledged in memory, lost on a crash) | WAL disabled (`WriteOptions::disable_wal`) |
//! | `os` (written to the file, survives kill -9) | WAL written, not synced |
//! | `fsync`, blocking (acknowledged after an fdatasync) | WAL synced per write (`set_sync(true)`: fdatasync, `use_fsync` false) |
//! | `fsync`, pipelined (a window of batches in flight, each acknowledged by an fdatasync that started after it was written) | WAL written unsynced; a sync thread calls `FlushWAL(sync = true)` (SyncWAL) over and over, each covering every write completed before it started; the producer keeps at most the same window of batches unacknowledged |
//!
//! Records are keyed by shard (u32 big-endian) + offset (u64 big-endian), so
//! keys sort in log order; compression off; default options otherwise; a
//! fresh database per repetition. Built only with the `rocksdb` feature;
//! without it the metrics are absent.

use std::path::Path;

use crate::engine::headline_workloads;
use crate::{Plan, Results};

pub const PREFIX: &str = "rocksdb";

#[cfg(feature = "rocksdb")]
mod imp {
    use std::collections::VecDeque;
    use std::io;
    use std::path::Path;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Barrier, Condvar, Mutex};
    use std::time::{Duration, Instant};

    use mqstore::Durability;
    use rocksdb::{DBCompressionType, Options, WriteBatch, WriteOptions, DB};

    use crate::engine::AppendSpec;
    use crate::util;

    fn to_io(e: rocksdb::Error) -> io::Error {
        io::Error::other(e.to_string())
    }

    /// Write sequence numbers of a pipelined run: batches written (WAL
    /// unsynced) and batches covered by a completed WAL sync.
    #[derive(Default)]
    struct Progress {
        written: u64,
        synced: u64,
        stop: bool,
    }

    struct Syncer {
        progress: Mutex<Progress>,
        changed: Condvar,
    }

    impl Syncer {
        /// The sync thread: waits for unsynced writes, notes how many were
        /// written, syncs the WAL, and acknowledges that many.
        fn run(&self, db: &DB) -> io::Result<()> {
            loop {
                let target = {
                    let mut progress = self.progress.lock().expect("sync state");
                    while progress.synced == progress.written && !progress.stop {
                        progress = self.changed.wait(progress).expect("sync state");
                    }
                    if progress.synced == progress.written {
                        return Ok(());
                    }
                    progress.written
                };
                // Started after the `target` writes completed: covers them.
                let synced = db.flush_wal(true).map_err(to_io);
                let mut progress = self.progress.lock().expect("sync state");
                if let Err(e) = synced {
                    progress.stop = true;
                    self.changed.notify_all();
                    return Err(e);
                }
                progress.synced = target;
                self.changed.notify_all();
            }
        }

        /// Notes one more written batch; returns its sequence number.
        fn written(&self) -> u64 {
            let mut progress = self.progress.lock().expect("sync state");
            progress.written += 1;
            self.changed.notify_all();
            progress.written
        }

        /// Waits until batch `seq` is covered by a completed sync.
        fn wait(&self, seq: u64) -> io::Result<()> {
            let mut progress = self.progress.lock().expect("sync state");
            while progress.synced < seq {
                if progress.stop {
                    return Err(io::Error::other("the WAL sync thread failed"));
                }
                progress = self.changed.wait(progress).expect("sync state");
            }
            Ok(())
        }

        fn stop(&self) {
            self.progress.lock().expect("sync state").stop = true;
            self.changed.notify_all();
        }
    }

    /// One repetition of a workload on a fresh database: msgs/s over
    /// `duration`, counting only acknowledged messages (a pipelined
    /// producer's window is drained before its clock stops), like
    /// `engine::append_once`.
    pub fn append_once(
        base: &Path,
        spec: AppendSpec,
        durability: Durability,
        duration: Duration,
    ) -> io::Result<f64> {
        let dir = tempfile::Builder::new()
            .prefix("rocksdb-")
            .tempdir_in(base)?;
        let mut options = Options::default();
        options.create_if_missing(true);
        // Stored uncompressed, like the mqstore workloads it is compared with.
        options.set_compression_type(DBCompressionType::None);
        let db = DB::open(&options, dir.path()).map_err(to_io)?;
        let pipelined = spec.window > 0;
        if pipelined && durability != Durability::Fsync {
            return Err(io::Error::other("a pipelined peer workload needs fsync"));
        }
        let mut write_options = WriteOptions::default();
        write_options.disable_wal(durability == Durability::None);
        write_options.set_sync(durability == Durability::Fsync && !pipelined);
        let syncer = Syncer {
            progress: Mutex::new(Progress::default()),
            changed: Condvar::new(),
        };
        // Next offset of each shard (shared when threads share a shard).
        let offsets: Vec<AtomicU64> = (0..spec.shards).map(|_| AtomicU64::new(0)).collect();
        let appends_per_check = (1024 / spec.batch).max(1);
        let barrier = Barrier::new(spec.threads + 1);
        std::thread::scope(|scope| {
            let sync_thread = pipelined.then(|| scope.spawn(|| syncer.run(&db)));
            let workers: Vec<_> = (0..spec.threads)
                .map(|t| {
                    let (db, syncer, offsets, barrier) = (&db, &syncer, &offsets, &barrier);
                    let write_options = &write_options;
                    scope.spawn(move || -> io::Result<(u64, Instant)> {
                        let mine: Vec<usize> = if spec.shards >= spec.threads {
                            (t..spec.shards).step_by(spec.threads).collect()
                        } else {
                            vec![t % spec.shards]
                        };
                        let mut data = vec![0u8; spec.record_size * spec.batch];
                        util::fill_pseudo_random(&mut data, t as u64 + 21);
                        let mut in_flight: VecDeque<u64> = VecDeque::new();
                        let mut key = [0u8; 12];
                        barrier.wait();
                        let start = Instant::now();
                        let mut sent = 0u64;
                        let mut next = 0usize;
                        loop {
                            for _ in 0..appends_per_check {
                                let shard = mine[next];
                                next = (next + 1) % mine.len();
                                if pipelined && in_flight.len() == spec.window {
                                    syncer.wait(in_flight.pop_front().expect("full"))?;
                                }
                                key[..4].copy_from_slice(&(shard as u32).to_be_bytes());
                                let base =
                                    offsets[shard].fetch_add(spec.batch as u64, Ordering::Relaxed);
                                let mut batch = WriteBatch::default();
                                for (i, value) in data.chunks(spec.record_size).enumerate() {
                                    key[4..].copy_from_slice(&(base + i as u64).to_be_bytes());
                                    batch.put(key, value);
                                }
                                db.write_opt(batch, write_options).map_err(to_io)?;
                                if pipelined {
                                    in_flight.push_back(syncer.written());
                                }
                            }
                            sent += (appends_per_check * spec.batch) as u64;
                            if start.elapsed() >= duration {
                                // Only acknowledged messages count.
                                if let Some(&last) = in_flight.back() {
                                    syncer.wait(last)?;
                                }
                                return Ok((sent, Instant::now()));
                            }
                        }
                    })
                })
                .collect();
            barrier.wait();
            let start = Instant::now();
            let mut total = 0u64;
            let mut end = start;
            let mut failure = None;
            for worker in workers {
                match worker.join() {
                    Ok(Ok((sent, finished))) => {
                        total += sent;
                        end = end.max(finished);
                    }
                    Ok(Err(e)) => failure = failure.or(Some(e)),
                    Err(_) => {
                        failure = failure.or(Some(io::Error::other("append thread panicked")))
                    }
                }
            }
            syncer.stop();
            if let Some(thread) = sync_thread {
                match thread.join() {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => failure = failure.or(Some(e)),
                    Err(_) => failure = failure.or(Some(io::Error::other("sync thread panicked"))),
                }
            }
            match failure {
                Some(e) => Err(e),
                None => Ok(total as f64 / (end - start).as_secs_f64()),
            }
        })
    }
}

/// What the RocksDB side of a workload does, for its params.
fn wal(durability: mqstore::Durability, pipelined: bool) -> &'static str {
    use mqstore::Durability;
    match (durability, pipelined) {
        (Durability::None, _) => {
            "disabled (WriteOptions::disable_wal): acknowledged in the memtable"
        }
        (Durability::Os, _) => "written, not synced (survives kill -9, not a power loss)",
        (Durability::Fsync, false) => "synced per write (set_sync(true): fdatasync)",
        (Durability::Fsync, true) => {
            "written unsynced; a sync thread runs FlushWAL(sync = true) back to back, each \
             acknowledging the writes completed before it started"
        }
    }
}

pub fn run(base: &Path, plan: &Plan, results: &mut Results) {
    println!("== peer: RocksDB");
    for workload in headline_workloads() {
        let name = format!("{PREFIX}.{}", workload.suffix);
        #[cfg(feature = "rocksdb")]
        {
            let spec = workload.spec;
            let p = serde_json::json!({
                "record_bytes": spec.record_size, "batch": spec.batch, "threads": spec.threads,
                "shards": spec.shards, "window": spec.window, "mode": workload.mode(),
                "durability": workload.durability.name(),
                "wal": wal(workload.durability, spec.window > 0),
                "key": "shard u32 BE + offset u64 BE", "compression": "none",
                "options": "defaults otherwise; a fresh database per rep",
                "seconds_per_rep": plan.headline_secs,
                "same_workload_as": format!("journal.{}", workload.suffix),
                "crate": "rocksdb 0.25 (bundled librocksdb-sys)",
            });
            results.stats_or_failed(
                &name,
                crate::util::repeat(plan.reps, || {
                    imp::append_once(
                        base,
                        spec,
                        workload.durability,
                        std::time::Duration::from_secs_f64(plan.headline_secs),
                    )
                }),
                "msgs/s",
                p,
            );
        }
        #[cfg(not(feature = "rocksdb"))]
        {
            let _ = (base, plan, wal);
            results.absent(
                &name,
                "msgs/s",
                "built without the `rocksdb` feature (cargo run -p mqstore-bench --release \
                 --features rocksdb)",
            );
        }
    }
}
