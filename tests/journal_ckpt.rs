//! Journal engine: the index checkpoint (`journal/index.ckpt`) — reopen
//! after a clean close replays nothing, a damaged or stale checkpoint falls
//! back to the full replay, and a checkpoint behind the journal (after a
//! crash) is completed by replaying only what follows it.
//!
//! "Crash images" are copies of the store directory taken while the store is
//! open: every acknowledged append (`os` durability) is in the files, nothing
//! of the clean close is — what a kill -9 leaves (tests/journal_ckpt_crash.rs
//! does the real kill).

use std::path::{Path, PathBuf};

use mqstore::{Config, Record, ShardInfo, Store};

mod common;
use common::{copy_dir, segment_files};

fn config() -> Config {
    Config::from_toml_str(
        "[shard]\nengine = \"journal\"\ndurability = \"os\"\n[journal]\nsegment_bytes = 65536\n",
    )
    .unwrap()
}

fn open(dir: &Path) -> Store {
    Store::open(dir, config()).unwrap()
}

fn ckpt_path(dir: &Path) -> PathBuf {
    dir.join("journal").join("index.ckpt")
}

/// The journal engine's stats (through any shard).
fn journal_stats(store: &Store) -> serde_json::Value {
    let shards = store.list_shards().unwrap();
    let stats = store.shard_stats(&shards[0]).unwrap();
    stats["engine_stats"]["journal"].clone()
}

fn used_checkpoint(store: &Store) -> bool {
    journal_stats(store)["checkpoint_used"].as_bool().unwrap()
}

fn replayed(store: &Store) -> u64 {
    journal_stats(store)["recovered_entries"].as_u64().unwrap()
}

type Snapshot = Vec<(
    ShardInfo,
    Vec<(i64, Option<Vec<u8>>, Vec<u8>)>,
    Vec<Vec<i64>>,
)>;

/// The offsets each key (k0..k7, k7 absent) and the tag `even` find: the
/// key filters come from the checkpoint, from appends, or are computed on
/// the first lookup after a replay, and must all answer alike.
fn lookups(store: &Store, name: &str, first: i64) -> Vec<Vec<i64>> {
    let mut out: Vec<Vec<i64>> = (0..8)
        .map(|k| {
            let key = format!("k{k}");
            store
                .read_by_keys(name, &[key.as_bytes()], usize::MAX)
                .unwrap()
                .iter()
                .map(|r| r.offset)
                .collect()
        })
        .collect();
    let tagged = store.read_by_tag(name, "even", first, usize::MAX).unwrap();
    out.push(tagged.records.iter().map(|r| r.offset).collect());
    out
}

/// Every shard's info and records.
fn snapshot(store: &Store) -> Snapshot {
    let mut names = store.list_shards().unwrap();
    names.sort();
    names
        .iter()
        .map(|name| {
            let info = store.shard_info(name).unwrap();
            let records = store
                .read(name, info.first_offset, usize::MAX, usize::MAX)
                .unwrap()
                .records
                .iter()
                .map(|r| {
                    (
                        r.offset,
                        r.key.as_ref().map(|k| k.to_vec()),
                        r.value_bytes().to_vec(),
                    )
                })
                .collect();
            let lookups = lookups(store, name, info.first_offset);
            (info, records, lookups)
        })
        .collect()
}

/// Shards with several segments' worth of batches, retention, deleted
/// records (rewritten and dropped batches) and a deleted shard.
fn populate(store: &Store, round: usize) {
    if round == 0 {
        store.create_shard("a", None).unwrap();
        store
            .create_shard("b", Some("retention_records = 120"))
            .unwrap();
        store.create_shard("gone", None).unwrap();
        store.create_shard("quiet", None).unwrap();
        store.append("quiet", &Record::new(b"q")).unwrap();
    }
    let value = vec![b'v'; 700];
    for i in 0..150 {
        let key = format!("k{}", i % 7);
        let v = format!("{round}-{i}");
        let tags = if i % 2 == 0 { vec!["even"] } else { vec![] };
        let records = [
            Record {
                tags,
                ..Record::new(v.as_bytes()).with_key(key.as_bytes())
            },
            Record::new(&value),
        ];
        store.append_batch("a", &records).unwrap();
        store.append("b", &Record::new(v.as_bytes())).unwrap();
        if round == 0 {
            store.append("gone", &Record::new(b"x")).unwrap();
        }
    }
    store.delete_by_keys("a", &[b"k3"]).unwrap();
    store.delete_by_offsets("a", &[1, 5, 9]).unwrap();
    store.delete_records_before("a", 20 + round as i64).unwrap();
    if round == 0 {
        store.delete_shard("gone").unwrap();
    }
}

#[test]
fn clean_reopen_loads_the_checkpoint_and_replays_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    populate(&store, 0);
    let before = snapshot(&store);
    assert!(segment_files(dir.path()).len() > 2);
    store.close().unwrap();
    drop(store);
    assert!(ckpt_path(dir.path()).exists());

    let store = open(dir.path());
    assert!(used_checkpoint(&store));
    assert_eq!(replayed(&store), 0);
    assert_eq!(snapshot(&store), before);
    assert!(store.shard_info("gone").is_err());
    // Appends continue at the right offsets; another round trip.
    populate(&store, 1);
    let before = snapshot(&store);
    store.close().unwrap();
    drop(store);
    let store = open(dir.path());
    assert!(used_checkpoint(&store));
    assert_eq!(replayed(&store), 0);
    assert_eq!(snapshot(&store), before);
    store.close().unwrap();
    drop(store);

    // The full replay, without the checkpoint, agrees.
    std::fs::remove_file(ckpt_path(dir.path())).unwrap();
    let store = open(dir.path());
    assert!(!used_checkpoint(&store));
    // Over 400 live batches (the journal cleaner may have relocated some
    // and removed the segments they were in, so not every entry ever
    // logged is still there).
    assert!(replayed(&store) > 400, "{}", journal_stats(&store));
    assert_eq!(snapshot(&store), before);
}

#[test]
fn a_damaged_checkpoint_is_ignored_and_removed() {
    let template = tempfile::tempdir().unwrap();
    let store = open(template.path());
    populate(&store, 0);
    let before = snapshot(&store);
    store.close().unwrap();
    drop(store);
    let good = std::fs::read(ckpt_path(template.path())).unwrap();
    type Damage = Box<dyn Fn(&mut Vec<u8>)>;
    let damages: Vec<(&str, Damage)> = vec![
        ("bit flip in the body", Box::new(|d| d[100] ^= 0x10)),
        (
            "bit flip in the last byte",
            Box::new(|d| *d.last_mut().unwrap() ^= 1),
        ),
        ("truncated", Box::new(|d| d.truncate(d.len() - 9))),
        ("header only", Box::new(|d| d.truncate(32))),
        ("empty", Box::new(|d| d.clear())),
        ("an older version", Box::new(|d| d[4] = 1)),
        ("bad magic", Box::new(|d| d[0] = b'X')),
    ];
    for (what, damage) in damages {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(template.path(), dir.path());
        let mut bytes = good.clone();
        damage(&mut bytes);
        std::fs::write(ckpt_path(dir.path()), &bytes).unwrap();
        let store = open(dir.path());
        assert!(!used_checkpoint(&store), "{what}");
        assert!(replayed(&store) > 300, "{what}");
        assert_eq!(snapshot(&store), before, "{what}");
        assert!(!ckpt_path(dir.path()).exists(), "{what}: left in place");
        store.close().unwrap();
        drop(store);
        let store = open(dir.path());
        assert!(used_checkpoint(&store), "{what}: rewritten at close");
        assert_eq!(snapshot(&store), before, "{what}");
    }
}

#[test]
fn a_checkpoint_ahead_of_the_journal_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    populate(&store, 0);
    let old = snapshot(&store);
    let image = tempfile::tempdir().unwrap();
    copy_dir(&dir.path().join("journal"), image.path());
    populate(&store, 1);
    store.close().unwrap();
    drop(store);
    // The journal goes back to the older image (say, restored from a
    // backup); the checkpoint of the newer one stays.
    for file in segment_files(dir.path()) {
        std::fs::remove_file(file).unwrap();
    }
    for item in std::fs::read_dir(image.path()).unwrap() {
        let item = item.unwrap();
        if item.path().extension().is_some_and(|e| e == "log") {
            std::fs::copy(
                item.path(),
                dir.path().join("journal").join(item.file_name()),
            )
            .unwrap();
        }
    }
    let store = open(dir.path());
    assert!(!used_checkpoint(&store));
    assert_eq!(snapshot(&store), old);
}

#[test]
fn after_a_crash_only_the_entries_after_the_checkpoint_are_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    populate(&store, 0);
    store.close().unwrap();
    drop(store);

    let store = open(dir.path());
    assert!(used_checkpoint(&store));
    let end = journal_stats(&store)["checkpoint_end"].as_u64().unwrap();
    let at_checkpoint = snapshot(&store);
    // After the checkpoint: appends, deletes, a shard deleted and one of the
    // same name created, a brand new shard.
    for i in 0..20 {
        store
            .append("a", &Record::new(format!("after-{i}").as_bytes()))
            .unwrap();
    }
    store.delete_by_keys("a", &[b"k4"]).unwrap();
    store.delete_shard("quiet").unwrap();
    store.create_shard("quiet", None).unwrap();
    store.append("quiet", &Record::new(b"new quiet")).unwrap();
    store.delete_shard("b").unwrap();
    store.create_shard("fresh", None).unwrap();
    store.append("fresh", &Record::new(b"f")).unwrap();
    let expected = snapshot(&store);
    let crashed = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), crashed.path());

    // A hole right at the checkpoint's end, with valid entries after it:
    // nothing after the end was synced (`os` durability), so this is the
    // torn tail a power cut can leave, and the journal is cut there. (A
    // hole before a `Synced` entry's position is corruption: see
    // tests/journal.rs.)
    let hole = tempfile::tempdir().unwrap();
    copy_dir(crashed.path(), hole.path());
    let segment = segment_files(hole.path())
        .into_iter()
        .rev()
        .find(|p| {
            let base: u64 = p.file_stem().unwrap().to_str().unwrap().parse().unwrap();
            base <= end
        })
        .unwrap();
    let base: u64 = segment
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let mut data = std::fs::read(&segment).unwrap();
    let at = (end - base) as usize;
    assert_ne!(&data[at..at + 32], &[0u8; 32], "appends went after the end");
    data[at..at + 32].fill(0);
    std::fs::write(&segment, &data).unwrap();
    let store = open(hole.path());
    assert_eq!(snapshot(&store), at_checkpoint);
    assert!(journal_stats(&store)["truncated_bytes"].as_u64().unwrap() > 0);
    drop(store);

    let store = open(crashed.path());
    assert!(used_checkpoint(&store));
    let n = replayed(&store);
    assert!(n > 20 && n < 60, "replayed {n} entries");
    assert_eq!(snapshot(&store), expected);
    assert!(
        store.shard_info("b").is_err(),
        "a deleted shard stays deleted"
    );
    let quiet = store.read("quiet", 0, 10, usize::MAX).unwrap();
    assert_eq!(quiet.records.len(), 1);
    assert_eq!(quiet.records[0].value_bytes(), b"new quiet");
    // And it keeps going: append, clean close, reopen.
    store.append("a", &Record::new(b"later")).unwrap();
    let expected = snapshot(&store);
    store.close().unwrap();
    drop(store);
    let store = open(crashed.path());
    assert_eq!(replayed(&store), 0);
    assert_eq!(snapshot(&store), expected);
}

/// Without periodic checkpoints (with them, a reclaim reschedules the
/// next one, see the next test) the checkpoint stays deleted.
#[test]
fn removing_a_segment_after_reopen_removes_the_checkpoint_first() {
    let open = |dir: &Path| {
        let mut config = config();
        config.journal.checkpoint_bytes = 0;
        Store::open(dir, config).unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .create_shard("r", Some("retention_records = 40"))
        .unwrap();
    store.create_shard("keep", None).unwrap();
    let value = vec![3u8; 1500];
    for _ in 0..30 {
        store.append("r", &Record::new(&value)).unwrap();
    }
    store.close().unwrap();
    drop(store);

    let store = open(dir.path());
    assert!(used_checkpoint(&store));
    assert!(ckpt_path(dir.path()).exists());
    for _ in 0..300 {
        store.append("r", &Record::new(&value)).unwrap();
    }
    store.append("keep", &Record::new(b"kept")).unwrap();
    let stats = journal_stats(&store);
    assert!(stats["removed_segments"].as_u64().unwrap() > 0, "{stats}");
    assert!(!ckpt_path(dir.path()).exists());
    let expected = snapshot(&store);
    let crashed = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), crashed.path());
    store.close().unwrap();
    drop(store);

    let store = open(crashed.path());
    assert!(!used_checkpoint(&store));
    assert_eq!(snapshot(&store), expected);
    drop(store);
    let store = open(dir.path());
    assert!(used_checkpoint(&store));
    assert_eq!(replayed(&store), 0);
    assert_eq!(snapshot(&store), expected);
}

/// Polls `condition` until it holds; fails with `failure()` after 30 s.
fn wait_until(mut condition: impl FnMut() -> bool, failure: impl Fn() -> String) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !condition() {
        assert!(std::time::Instant::now() < deadline, "{}", failure());
        std::thread::yield_now();
    }
}

/// Waits until the store's checkpointer has written `n` checkpoints.
fn wait_for_checkpoints(store: &Store, n: u64) {
    wait_until(
        || {
            journal_stats(store)["checkpoints_written"]
                .as_u64()
                .unwrap()
                >= n
        },
        || format!("no periodic checkpoint: {}", journal_stats(store)),
    );
}

/// Waits until the store in `dir` has a checkpoint file.
fn wait_for_checkpoint_file(dir: &Path) {
    wait_until(
        || ckpt_path(dir).exists(),
        || "no checkpoint file".to_string(),
    );
}

#[test]
fn periodic_checkpoints_bound_the_replay_after_a_crash() {
    let config = || {
        Config::from_toml_str(
            "[shard]\nengine = \"journal\"\ndurability = \"os\"\n\
             [journal]\nsegment_bytes = 65536\ncheckpoint_bytes = 131072\n",
        )
        .unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config()).unwrap();
    populate(&store, 0);
    wait_for_checkpoints(&store, 1);
    // Appends, deletes, rewrites and a new shard after it, while the
    // checkpointer may run again.
    populate(&store, 1);
    store.create_shard("late", None).unwrap();
    store.append("late", &Record::new(b"after")).unwrap();
    let before = snapshot(&store);
    // A segment reclaim deletes the checkpoint; a fresh one is due at once
    // here (the journal is longer than checkpoint_bytes). The image is
    // taken with one in place.
    wait_for_checkpoint_file(dir.path());
    // A crash image: the files as they are, no clean close.
    let image = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), image.path());
    let full = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), full.path());
    std::fs::remove_file(ckpt_path(full.path())).unwrap();
    drop(store);

    let recovered = Store::open(image.path(), config()).unwrap();
    assert!(used_checkpoint(&recovered));
    assert_eq!(snapshot(&recovered), before);
    let replayed_with = replayed(&recovered);
    let replayed_all = replayed(&Store::open(full.path(), config()).unwrap());
    assert!(
        replayed_with * 2 < replayed_all,
        "replayed {replayed_with} of {replayed_all} entries"
    );
}

/// Shards share their options in the checkpoint: a thousand shards with
/// one option set cost a few dozen bytes each, and each shard reopens
/// with its own options from the checkpoint.
#[test]
fn shards_share_their_options_in_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let names: Vec<String> = (0..1000).map(|i| format!("p{i:04}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    store
        .create_shards(&refs, Some("retention_records = 7"))
        .unwrap();
    store
        .create_shard("other", Some("compression = \"zstd\""))
        .unwrap();
    store.close().unwrap();
    let size = std::fs::metadata(ckpt_path(dir.path())).unwrap().len();
    // Per shard: id, covered, watermarks, anchor, flags, name, option set,
    // batch count, group count (62 bytes here); two option texts once.
    assert!(size < 1001 * 70 + 1024, "checkpoint of {size} bytes");
    let store = open(dir.path());
    assert!(used_checkpoint(&store));
    assert_eq!(replayed(&store), 0);
    assert_eq!(
        store.shard_info("p0999").unwrap().options.retention_records,
        7
    );
    assert_eq!(
        store.shard_info("p0000").unwrap().options.retention_records,
        7
    );
    let other = store.shard_info("other").unwrap().options;
    assert_eq!(
        (other.compression.name(), other.retention_records),
        ("zstd", 0)
    );
}
