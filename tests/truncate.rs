//! `truncate_to` on the persistent engines across segments, and what a
//! crash right after it leaves: the cut is durable once it returned, and
//! appends after it continue from the cut in the crash image too.

use std::path::Path;

use mqstore::{Config, Record, Store};

mod common;
use common::{crash_copy, values_of};

fn config(engine: &str) -> Config {
    Config::from_toml_str(&format!(
        "[shard]\nengine = \"{engine}\"\ndurability = \"fsync\"\nsegment_bytes = 65536\n\
         [journal]\nsegment_bytes = 1048576\n"
    ))
    .unwrap()
}

/// `batches` batches of 10 records of about 300 bytes: a 64 KiB file
/// segment holds about 20 of them.
fn fill(store: &Store, shard: &str, batches: usize, tag: &str) {
    for b in 0..batches {
        let values: Vec<String> = (0..10)
            .map(|i| format!("{tag}-{b:04}-{i}-{}", "x".repeat(280)))
            .collect();
        let records: Vec<Record<'_>> = values.iter().map(|v| Record::new(v.as_bytes())).collect();
        store.append_batch(shard, &records).unwrap();
    }
}

fn file_segments(store_dir: &Path) -> usize {
    let shard_dir = std::fs::read_dir(store_dir.join("file"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .unwrap();
    std::fs::read_dir(shard_dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "log")
        })
        .count()
}

#[test]
fn a_cut_across_segments_survives_a_crash_and_a_restart() {
    let mut engines = vec!["file"];
    if cfg!(feature = "journal") {
        engines.push("journal");
    }
    for engine in engines {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), config(engine)).unwrap();
        store.create_shard("s", None).unwrap();
        fill(&store, "s", 100, "old");
        if engine == "file" {
            assert!(file_segments(dir.path()) >= 4, "the shard spans segments");
        }
        let kept: Vec<(i64, Vec<u8>)> = values_of(&store, "s")
            .into_iter()
            .filter(|(offset, _)| *offset < 230)
            .collect();
        store.truncate_to("s", 230).unwrap();
        if engine == "file" {
            assert!(file_segments(dir.path()) <= 2, "later segments removed");
        }
        assert_eq!(values_of(&store, "s"), kept, "{engine}");
        fill(&store, "s", 3, "new");
        let expected = values_of(&store, "s");
        assert_eq!(expected.len(), 260, "{engine}");
        assert!(expected[230].1.starts_with(b"new-0000-0"), "{engine}");

        // A crash now: the cut and the appends after it were acknowledged.
        let crashed = crash_copy(dir.path());
        let after_crash = Store::open(crashed.path(), config(engine)).unwrap();
        assert_eq!(
            values_of(&after_crash, "s"),
            expected,
            "{engine}: after a crash"
        );
        after_crash.close().unwrap();

        store.close().unwrap();
        let reopened = Store::open(dir.path(), config(engine)).unwrap();
        assert_eq!(
            values_of(&reopened, "s"),
            expected,
            "{engine}: after a restart"
        );
        reopened.truncate_to("s", 0).unwrap();
        reopened.close().unwrap();
        let reopened = Store::open(dir.path(), config(engine)).unwrap();
        let info = reopened.shard_info("s").unwrap();
        assert_eq!((info.next_offset, info.records), (0, 0), "{engine}");
        reopened.close().unwrap();
    }
}

/// Transfer plans and views taken before a cut keep their bytes: the file
/// engine replaces the segment it cuts with a new file instead of
/// truncating the one readers may have mapped.
#[test]
fn plans_taken_before_a_cut_still_send_their_bytes() {
    for engine in ["file", "journal"] {
        if engine == "journal" && !cfg!(feature = "journal") {
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), config(engine)).unwrap();
        store.create_shard("s", None).unwrap();
        fill(&store, "s", 50, "old");
        let plan = store.plan_transfer("s", 0, usize::MAX).unwrap();
        let before = plan.to_vec().unwrap();
        let read = store.read("s", 400, 100, usize::MAX).unwrap();
        store.truncate_to("s", 100).unwrap();
        fill(&store, "s", 50, "new");
        assert_eq!(plan.to_vec().unwrap(), before, "{engine}");
        assert!(
            read.records[0].value_bytes().starts_with(b"old-0040-0"),
            "{engine}"
        );
        store.close().unwrap();
    }
}
