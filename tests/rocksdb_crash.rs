//! The kill -9 crash test of the RocksDB engine (the shared harness of
//! `common::crash`: appends from four threads, deletes by point, offsets
//! and keys, retention). In its own test binary: it spawns processes, and a
//! child between fork and exec briefly shares the parent's descriptors
//! (the store's flock included), which would make other tests' reopen of a
//! store fail with `Locked` now and then.
#![cfg(feature = "rocksdb")]

use mqstore::{Config, Store};

mod common;
use common::{crash, Rng};

const CHILD_ENV: &str = "MQS_ROCKSDB_CRASH_CHILD_DIR";
/// The child's mode: `fsync` (blocking appends, the WAL synced per write
/// group), `pipelined` (`fsync` shards, pipelined appends acknowledged by
/// `wait_durable`'s WAL sync), `os` (the WAL written, not synced: a killed
/// process loses nothing), `os-flush` (`os` with 1 MiB memtables, so
/// flushes to SST files and compactions run while the kills land).
const MODE_ENV: &str = "MQS_ROCKSDB_CRASH_MODE";
const CRASH_SHARDS: usize = 4;

fn crash_config(mode: &str) -> Config {
    let (durability, rocksdb) = match mode {
        "fsync" | "pipelined" => ("fsync", ""),
        "os" => ("os", ""),
        "os-flush" => ("os", "write_buffer_mb = 1\n"),
        other => panic!("unknown {MODE_ENV} {other}"),
    };
    Config::from_toml_str(&format!(
        "[shard]\nengine = \"rocksdb\"\ndurability = \"{durability}\"\n[rocksdb]\n{rocksdb}"
    ))
    .unwrap()
}

/// The child side of the crash test (see `common::crash`): ignored in a
/// normal run, run by the crash test itself in the processes it kills.
#[test]
#[ignore = "the child process of the kill -9 test, which runs it"]
fn crash_writer_child() {
    let dir = std::env::var(CHILD_ENV).expect("run by the crash test, which sets the store");
    let mode = std::env::var(MODE_ENV).unwrap_or_else(|_| "fsync".into());
    let appends = if mode == "pipelined" {
        crash::Appends::Pipelined
    } else {
        crash::Appends::Blocking
    };
    let store = Store::open(&dir, crash_config(&mode)).unwrap();
    crash::append_and_ack_forever(store, CRASH_SHARDS, appends);
}

/// Every mode, one after the other in one test
/// (`MQS_ROCKSDB_CRASH_MODES=a,b` picks some): tests running in parallel
/// would share their store locks with each other's children between fork
/// and exec. Durability `none` is allowed to lose what a crash catches in
/// the memtable, so it has nothing to check here.
#[test]
fn kill_9_loses_no_acknowledged_record() {
    let modes = std::env::var("MQS_ROCKSDB_CRASH_MODES")
        .unwrap_or_else(|_| "fsync,pipelined,os,os-flush".into());
    for mode in modes.split(',') {
        kill_9_cycles(mode);
    }
}

fn kill_9_cycles(mode: &str) {
    let cycles = crash::cycles();
    let mut rng = Rng::seeded();
    let dir = tempfile::tempdir().unwrap();
    let mut acked = crash::Acked::new();
    let mut total_acks = 0usize;
    let mut sst_bytes = 0u64;
    for cycle in 0..cycles {
        let label = format!("{mode} cycle {cycle}");
        let envs = [
            (CHILD_ENV, dir.path().as_os_str()),
            (MODE_ENV, std::ffi::OsStr::new(mode)),
        ];
        total_acks += crash::run_child_and_kill(&mut rng, &envs, &mut acked, &label);
        let store = Store::open(dir.path(), crash_config(mode)).unwrap();
        if let Some(shard) = acked.shards.keys().next() {
            let stats = store.shard_stats(shard).unwrap();
            let live = &stats["engine_stats"]["rocksdb"]["live_sst_bytes"];
            sst_bytes = sst_bytes.max(live.as_u64().unwrap());
        }
        crash::verify(&store, &acked, &label);
        store.close().unwrap();
    }
    if mode == "os-flush" {
        assert!(sst_bytes > 0, "{mode}: no memtable was ever flushed");
    }
    eprintln!(
        "{mode}: {cycles} kill -9 cycles, {total_acks} acknowledged batches verified \
         (largest live SST size seen: {sst_bytes} bytes)"
    );
}
