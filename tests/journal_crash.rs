//! The kill -9 crash test of the journal engine. In its own test binary: it
//! spawns processes, and a child between fork and exec briefly shares the
//! parent's descriptors (the store's flock included), which would make
//! other tests' reopen of a store fail with `Locked` now and then.

use mqstore::{Config, Store};

mod common;
use common::{crash, Rng};

const CHILD_ENV: &str = "MQS_CRASH_CHILD_DIR";
/// The journal I/O path of the child: `default` (io = "auto", direct),
/// `uring-buffered`, or `pwrite` / `pwrite-buffered` for the fallbacks;
/// `pipelined` is the default path with pipelined appends.
const IO_ENV: &str = "MQS_CRASH_IO";
const CRASH_SHARDS: usize = 3;

fn crash_config(io: &str) -> Config {
    let keys = match io {
        "default" | "pipelined" => "",
        "pwrite" => "io = \"pwrite\"\n",
        "pwrite-buffered" => "io = \"pwrite\"\ndirect = false\n",
        "uring-buffered" => "io = \"uring\"\ndirect = false\n",
        other => panic!("unknown {IO_ENV} {other}"),
    };
    // Small segments and frequent periodic checkpoints: kills land during
    // segment rolls and checkpoint writes, and reopen replays from a
    // checkpoint of the running journal most of the time.
    Config::from_toml_str(&format!(
        "[shard]\nengine = \"journal\"\ndurability = \"fsync\"\n[journal]\nsegment_bytes = 131072\n\
         checkpoint_bytes = 16384\n{keys}"
    ))
    .unwrap()
}

/// The child side of the crash test (see `common::crash`): ignored in a
/// normal run, run by the crash test itself in the processes it kills.
#[test]
#[ignore = "the child process of the kill -9 test, which runs it"]
fn crash_writer_child() {
    let dir = std::env::var(CHILD_ENV).expect("run by the crash test, which sets the store");
    let io = std::env::var(IO_ENV).unwrap_or_else(|_| "default".into());
    let appends = if io == "pipelined" {
        crash::Appends::Pipelined
    } else {
        crash::Appends::Blocking
    };
    let store = Store::open(&dir, crash_config(&io)).unwrap();
    crash::append_and_ack_forever(store, CRASH_SHARDS, appends);
}

/// On every I/O path: the default (io_uring + O_DIRECT where available),
/// with blocking and with pipelined appends, io_uring through the page
/// cache, then the pwrite fallback with O_DIRECT and through the page cache
/// (`MQS_CRASH_MODES=a,b` picks some). One
/// after the other in one test: tests running in parallel would share
/// their store locks with each other's children between fork and exec.
#[test]
fn kill_9_loses_no_acknowledged_record() {
    let modes = std::env::var("MQS_CRASH_MODES")
        .unwrap_or_else(|_| "default,pipelined,uring-buffered,pwrite,pwrite-buffered".into());
    for io in modes.split(',') {
        if io.starts_with("uring")
            && mqstore::Store::open_with_toml(
                tempfile::tempdir().unwrap().path(),
                Some("[shard]\nengine = \"journal\"\n[journal]\nio = \"uring\"\n"),
            )
            .and_then(|s| s.create_shard("probe", None).map(|_| ()))
            .is_err()
        {
            // tests/journal_io.rs asserts the fallback and the error.
            assert!(
                std::env::var("MQS_EXPECT_NO_URING").is_ok_and(|v| v == "1"),
                "{io}: io_uring is unavailable here, so this path cannot be tested; \
                 set MQS_EXPECT_NO_URING=1 to declare a machine without it"
            );
            eprintln!("SKIPPED: {io}: io_uring unavailable (MQS_EXPECT_NO_URING=1)");
            continue;
        }
        kill_9_cycles(io);
    }
}

fn kill_9_cycles(io: &str) {
    let cycles = crash::cycles();
    let mut rng = Rng::seeded();
    let dir = tempfile::tempdir().unwrap();
    let mut acked = crash::Acked::new();
    let mut total_acks = 0usize;
    let mut clean_ckpt: Option<Vec<u8>> = None;
    let mut from_periodic = 0usize;
    let mut files = RecycledFiles::default();
    for cycle in 0..cycles {
        let label = format!("{io} cycle {cycle}");
        let envs = [
            (CHILD_ENV, dir.path().as_os_str()),
            (IO_ENV, std::ffi::OsStr::new(io)),
        ];
        total_acks += crash::run_child_and_kill(&mut rng, &envs, &mut acked, &label);
        files.look(&dir.path().join("journal"));

        // A checkpoint other than the one the last clean close left was
        // written by the child's checkpointer while it appended.
        let ckpt_file = dir.path().join("journal").join("index.ckpt");
        let periodic = std::fs::read(&ckpt_file).ok() != clean_ckpt;
        let store = Store::open(dir.path(), crash_config(io)).unwrap();
        if let Some(shard) = acked.shards.keys().next() {
            let stats = store.shard_stats(shard).unwrap();
            let path = stats["engine_stats"]["journal"]["io"].as_str().unwrap();
            assert_eq!(
                path.ends_with("+direct"),
                !io.ends_with("buffered"),
                "{path}"
            );
            if !matches!(io, "default" | "pipelined") {
                assert!(path.starts_with(io.split('-').next().unwrap()), "{path}");
            }
        }
        crash::verify(&store, &acked, &label);
        let shard = store.list_shards().unwrap()[0].clone();
        let journal = &store.shard_stats(&shard).unwrap()["engine_stats"]["journal"];
        if periodic && journal["checkpoint_used"] == true {
            from_periodic += 1;
        }
        store.close().unwrap();
        files.look(&dir.path().join("journal"));
        clean_ckpt = std::fs::read(&ckpt_file).ok();
    }
    assert!(
        from_periodic > 0,
        "{io}: no reopen replayed from a periodic checkpoint in {cycles} cycles"
    );
    assert!(
        !files.recycled.is_empty(),
        "{io}: no segment file was recycled in {cycles} cycles"
    );
    let mut segments: Vec<String> = std::fs::read_dir(dir.path().join("journal"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    segments.sort();
    eprintln!(
        "{io}: {cycles} kill -9 cycles, {total_acks} acknowledged batches verified, \
         {from_periodic} reopens from a periodic checkpoint, {} segments seen in recycled \
         files; segments left: {segments:?}",
        files.recycled.len()
    );
}

/// Segment files seen taken from the journal's pool of free files: a
/// segment (`.log`) that was seen before as a free file (`.free`). A file
/// is its inode and its creation time: a deleted file's inode number may
/// be reused by a new one.
#[derive(Default)]
struct RecycledFiles {
    free: std::collections::HashSet<(u64, std::time::SystemTime)>,
    recycled: std::collections::HashSet<String>,
}

impl RecycledFiles {
    fn look(&mut self, journal: &std::path::Path) {
        use std::os::unix::fs::MetadataExt;
        for item in std::fs::read_dir(journal).unwrap() {
            let item = item.unwrap();
            let name = item.file_name().to_string_lossy().into_owned();
            let Ok(meta) = item.metadata() else { continue };
            let file = (meta.ino(), meta.created().expect("file creation times"));
            if name.ends_with(".free") {
                self.free.insert(file);
            } else if name.ends_with(".log") && self.free.contains(&file) {
                self.recycled.insert(name);
            }
        }
    }
}
