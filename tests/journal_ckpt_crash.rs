//! Journal engine: kill -9 after reopening from an index checkpoint. The
//! checkpoint of the last clean close is then behind the journal; recovery
//! loads it and replays only what follows, and every acknowledged record
//! must be there. Its own test binary: a child forked while a parallel test
//! holds a store lock would share it until exec (see tests/journal_crash.rs).

use mqstore::{Config, Record, Store};

mod common;
use common::{copy_dir, crash, Rng};

const CHILD_ENV: &str = "MQS_CKPT_CRASH_CHILD";
const SHARDS: usize = 2;

fn config() -> Config {
    // No periodic checkpoints: the one a clean close leaves stays behind
    // the journal, which is what this test is about.
    Config::from_toml_str(
        "[shard]\nengine = \"journal\"\ndurability = \"fsync\"\n\
         [journal]\nsegment_bytes = 4194304\ncheckpoint_bytes = 0\n",
    )
    .unwrap()
}

/// The child (see `common::crash`): ignored in a normal run, run by the
/// crash test itself in the processes it kills.
#[test]
#[ignore = "the child process of the kill -9 test, which runs it"]
fn crash_writer_child() {
    let dir = std::env::var(CHILD_ENV).expect("run by the crash test, which sets the store");
    let store = Store::open(&dir, config()).unwrap();
    crash::append_and_ack_forever(store, SHARDS, crash::Appends::Blocking);
}

#[test]
fn kill_9_after_reopening_from_a_checkpoint_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut acked = crash::Acked::new();
    {
        let store = Store::open(dir.path(), config()).unwrap();
        for s in 0..SHARDS {
            let name = format!("c{s}");
            let options = format!("retention_records = {}", crash::RETAINED_RECORDS);
            store.create_shard(&name, Some(&options)).unwrap();
            for i in 0..200 {
                let value = format!("before.{i}");
                let offset = store.append(&name, &Record::new(value.as_bytes())).unwrap();
                acked.record(&name, offset, value);
            }
        }
        store.close().unwrap();
    }
    let mut rng = Rng::seeded();
    let mut used = 0;
    for cycle in 0..6u64 {
        let label = format!("cycle {cycle}");
        let envs = [(CHILD_ENV, dir.path().as_os_str())];
        crash::run_child_and_kill(&mut rng, &envs, &mut acked, &label);

        // Odd cycles check a copy, so the next child opens the crashed
        // journal itself, with a checkpoint two or more crashes behind;
        // even ones reopen and close it, leaving a fresh checkpoint.
        let copy = tempfile::tempdir().unwrap();
        let path = if cycle % 2 == 1 {
            copy_dir(dir.path(), copy.path());
            copy.path()
        } else {
            dir.path()
        };
        // The child writes no checkpoint, but its segment reclaim deletes
        // the one it started from once the journal has moved past that
        // checkpoint's segments; one still on disk must be loaded.
        let kept = path.join("journal").join("index.ckpt").exists();
        let store = Store::open(path, config()).unwrap();
        let stats = store.shard_stats("c0").unwrap();
        let journal = &stats["engine_stats"]["journal"];
        assert_eq!(journal["checkpoint_used"], kept, "{label}: {journal}");
        if kept {
            used += 1;
            let total: usize = acked.shards.values().map(|s| s.records.len()).sum();
            let replayed = journal["recovered_entries"].as_u64().unwrap() as usize;
            assert!(replayed < total, "{label}: replayed {replayed}");
        }
        crash::verify(&store, &acked, &label);
        store.close().unwrap();
    }
    // 4 MiB segments: a child rarely writes enough to reclaim past the
    // checkpoint it started from, so most cycles recover through one.
    assert!(used >= 3, "only {used} of 6 reopens used a checkpoint");
}
