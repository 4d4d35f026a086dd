//! The kill -9 crash test of the MySQL, Redis, S3 and hybrid engines (the shared
//! harness of `common::crash`: appends from four threads, deletes by
//! point, offsets and keys, retention). The process dies; the server does
//! not: every append acknowledged before the kill must be read back,
//! exactly once, by the next open. In its own test binary: it spawns
//! processes (see rocksdb_crash.rs).
#![cfg(any(feature = "mysql", feature = "redis", feature = "s3"))]

use mqstore::{Config, Store};

mod common;
use common::{crash, Rng, SERVER_ENGINES};

const CHILD_ENV: &str = "MQS_SERVER_CRASH_CHILD_DIR";
const ENGINE_ENV: &str = "MQS_SERVER_CRASH_ENGINE";
/// `blocking` appends, or `pipelined` ones acknowledged by `wait_durable`
/// (Redis sends a producer's window as one pipeline).
const MODE_ENV: &str = "MQS_SERVER_CRASH_MODE";
const CRASH_SHARDS: usize = 4;

/// The hybrid engine moves everything to its cold tier as soon as it can,
/// in small objects, so kills land at every point of the copy lifecycle.
fn crash_config(engine: &str) -> Config {
    Config::from_toml_str(&format!(
        "[shard]\nengine = \"{engine}\"\ndurability = \"fsync\"\n\
         [s3]\nobject_bytes = 65536\n\
         [hybrid]\nhot_duration_ms = 0\ntier_interval_ms = 1\ntier_chunk_bytes = 65536\n"
    ))
    .unwrap()
}

/// The child side of the crash test (see `common::crash`): ignored in a
/// normal run, run by the crash test itself in the processes it kills.
#[test]
#[ignore = "the child process of the kill -9 test, which runs it"]
fn crash_writer_child() {
    let dir = std::env::var(CHILD_ENV).expect("run by the crash test, which sets the store");
    let engine = std::env::var(ENGINE_ENV).unwrap();
    let appends = match std::env::var(MODE_ENV).as_deref() {
        Ok("pipelined") => crash::Appends::Pipelined,
        _ => crash::Appends::Blocking,
    };
    let store = Store::open(&dir, crash_config(&engine)).unwrap();
    crash::append_and_ack_forever(store, CRASH_SHARDS, appends);
}

/// Each server engine in turn but the hybrid one (its own test, below, runs
/// beside this one); `MQS_SERVER_CRASH_ENGINES=a,b` picks some.
#[test]
fn kill_9_loses_no_acknowledged_record() {
    let engines = std::env::var("MQS_SERVER_CRASH_ENGINES").unwrap_or_else(|_| {
        let engines = SERVER_ENGINES.iter().filter(|e| **e != "hybrid");
        engines.copied().collect::<Vec<_>>().join(",")
    });
    for engine in engines.split(',') {
        common::require_servers(engine);
        for mode in ["blocking", "pipelined"] {
            kill_9_cycles(engine, mode);
        }
    }
}

/// The hybrid engine moving everything to its cold tier as soon as it can,
/// killed at any point of the copy lifecycle.
#[cfg(feature = "s3")]
#[test]
fn hybrid_kill_9_while_tiering_loses_no_acknowledged_record() {
    common::require_servers("hybrid");
    for mode in ["blocking", "pipelined"] {
        kill_9_cycles("hybrid", mode);
    }
}

fn kill_9_cycles(engine: &str, mode: &str) {
    let cycles = crash::cycles();
    let mut rng = Rng::seeded();
    let dir = tempfile::tempdir().unwrap();
    let mut acked = crash::Acked::new();
    let mut total_acks = 0usize;
    for cycle in 0..cycles {
        let label = format!("{engine} {mode} cycle {cycle}");
        let envs = [
            (CHILD_ENV, dir.path().as_os_str()),
            (ENGINE_ENV, std::ffi::OsStr::new(engine)),
            (MODE_ENV, std::ffi::OsStr::new(mode)),
        ];
        total_acks += crash::run_child_and_kill(&mut rng, &envs, &mut acked, &label);
        let store = Store::open(dir.path(), crash_config(engine)).unwrap();
        crash::verify(&store, &acked, &label);
        store.close().unwrap();
    }
    assert!(
        total_acks > 0,
        "{engine} {mode}: no append was acknowledged"
    );
    eprintln!(
        "{engine} {mode}: {cycles} kill -9 cycles, {total_acks} acknowledged batches verified"
    );
}
