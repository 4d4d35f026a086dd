//! The kill -9 crash test of the File engine (the Journal's, on per-shard
//! segment files). In its own test binary: it spawns processes, and a child
//! between fork and exec briefly shares the parent's descriptors (the
//! store's flock included), which would make other tests' reopen of a store
//! fail with `Locked` now and then.

use mqstore::{Config, Store};

mod common;
use common::{crash, Rng};

const CHILD_ENV: &str = "MQS_FILE_CRASH_CHILD_DIR";
/// The child's configuration: `fsync`, `os` (acknowledged after write(2),
/// which a killed process cannot lose), `os-interval` (the flusher thread
/// fdatasyncing underneath) or `os-evict` (more shards than open files, so
/// descriptors are closed and reopened while appends run).
const MODE_ENV: &str = "MQS_FILE_CRASH_MODE";
const CRASH_SHARDS: usize = 6;

fn crash_config(mode: &str) -> Config {
    let (durability, file) = match mode {
        "fsync" => ("fsync", ""),
        "os" => ("os", ""),
        "os-interval" => ("os", "flush = \"interval\"\nflush_interval_ms = 2\n"),
        "os-evict" => ("os", "max_open_files = 4\n"),
        other => panic!("unknown {MODE_ENV} {other}"),
    };
    Config::from_toml_str(&format!(
        "[shard]\nengine = \"file\"\ndurability = \"{durability}\"\nsegment_bytes = 65536\n\
         [file]\n{file}"
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
    crash::append_and_ack_forever(
        Store::open(&dir, crash_config(&mode)).unwrap(),
        CRASH_SHARDS,
        crash::Appends::Blocking,
    );
}

/// Every mode, one after the other in one test (`MQS_FILE_CRASH_MODES=a,b`
/// picks some): tests running in parallel would share their store locks
/// with each other's children between fork and exec.
#[test]
fn kill_9_loses_no_acknowledged_record() {
    let modes = std::env::var("MQS_FILE_CRASH_MODES")
        .unwrap_or_else(|_| "fsync,os,os-interval,os-evict".into());
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
    let mut truncated = 0u64;
    for cycle in 0..cycles {
        let label = format!("{mode} cycle {cycle}");
        let envs = [
            (CHILD_ENV, dir.path().as_os_str()),
            (MODE_ENV, std::ffi::OsStr::new(mode)),
        ];
        total_acks += crash::run_child_and_kill(&mut rng, &envs, &mut acked, &label);
        let store = Store::open(dir.path(), crash_config(mode)).unwrap();
        for shard in acked.shards.keys() {
            let stats = store.shard_stats(shard).unwrap();
            let cut = &stats["engine_stats"]["engine"]["truncated_bytes"];
            truncated = truncated.max(cut.as_u64().unwrap());
        }
        crash::verify(&store, &acked, &label);
        store.close().unwrap();
    }
    eprintln!(
        "{mode}: {cycles} kill -9 cycles, {total_acks} acknowledged batches verified \
         (largest torn tail cut in one open: {truncated} bytes)"
    );
}
