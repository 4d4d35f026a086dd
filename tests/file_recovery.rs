//! File engine recovery and persistence: clean reopen, torn tails, bit
//! flips in segments and index files, missing and stale indexes, deletes
//! that survive a restart, and the memory and descriptor budgets.

use std::path::{Path, PathBuf};

use mqstore::{Config, Record, Status, Store};

mod common;
use common::copy_dir;

const SMALL: &str = "[shard]\nengine = \"file\"\ndurability = \"os\"\nsegment_bytes = 65536\n";

fn open(dir: &Path) -> Store {
    Store::open(dir, Config::from_toml_str(SMALL).unwrap()).unwrap()
}

/// Appends `batches` batches of 10 records (~200 B each) with keys, tags
/// and increasing timestamps: about 2 KiB a batch, so 64 KiB segments roll.
fn fill(store: &Store, shard: &str, batches: usize) {
    let info = store.shard_info(shard).unwrap();
    let start = info.next_offset;
    for b in 0..batches as i64 {
        let values: Vec<String> = (0..10)
            .map(|i| format!("{shard}-{:06}-{}", start + b * 10 + i, "x".repeat(180)))
            .collect();
        let records: Vec<Record<'_>> = values
            .iter()
            .enumerate()
            .map(|(i, v)| Record {
                key: Some(if i % 2 == 0 { b"even" } else { b"odd" }),
                tags: if i == 3 { vec!["three"] } else { vec![] },
                timestamp_ms: 1_000_000 + (start + b * 10 + i as i64) * 10,
                ..Record::new(v.as_bytes())
            })
            .collect();
        store.append_batch(shard, &records).unwrap();
    }
}

fn shard_dir(store_dir: &Path) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(store_dir.join("file"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs.pop().unwrap()
}

fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    files.sort();
    files
}

fn check_all(store: &Store, shard: &str, first: i64, next: i64) {
    let info = store.shard_info(shard).unwrap();
    assert_eq!((info.first_offset, info.next_offset), (first, next));
    let got = store.read(shard, first, usize::MAX, usize::MAX).unwrap();
    let offsets: Vec<i64> = got.records.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, (first..next).collect::<Vec<_>>());
    for r in &got.records {
        let value = std::str::from_utf8(r.value_bytes()).unwrap();
        assert!(
            value.starts_with(&format!("{shard}-{:06}-", r.offset)),
            "{value}"
        );
        assert_eq!(r.timestamp_ms, 1_000_000 + r.offset * 10);
    }
    // Lookups through the indexes.
    for probe in [first, (first + next) / 2, next - 1] {
        let ts = 1_000_000 + probe * 10;
        assert_eq!(store.offset_for_timestamp(shard, ts).unwrap(), Some(probe));
        let one = store.read(shard, probe, 1, usize::MAX).unwrap();
        assert_eq!(one.records[0].offset, probe);
    }
    let odd = store.read_by_keys(shard, &[b"odd"], usize::MAX).unwrap();
    assert_eq!(odd.len() as i64, (next - first) / 2);
    let tagged = store
        .read_by_tag(shard, "three", first, usize::MAX)
        .unwrap();
    assert!(tagged.records.iter().all(|r| r.offset % 10 == 3));
    assert_eq!(tagged.records.len() as i64, (next - first) / 10);
}

fn engine_stat(store: &Store, shard: &str, key: &str) -> u64 {
    store.shard_stats(shard).unwrap()["engine_stats"]["engine"][key]
        .as_u64()
        .unwrap()
}

#[test]
fn clean_reopen_uses_the_indexes_and_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.create_shard("s", None).unwrap();
    fill(&store, "s", 200);
    store.close().unwrap();
    let sdir = shard_dir(dir.path());
    let logs = files(&sdir, "log");
    assert!(logs.len() > 3, "segments roll at 64 KiB: {logs:?}");
    assert_eq!(files(&sdir, "index").len(), logs.len());
    assert_eq!(files(&sdir, "timeindex").len(), logs.len());
    // Segment files are named by their base offset, zero-padded.
    let first = logs[0].file_name().unwrap().to_str().unwrap();
    assert_eq!(first, "00000000000000000000.log");

    let store = open(dir.path());
    assert_eq!(engine_stat(&store, "s", "rebuilt_indexes"), 0);
    check_all(&store, "s", 0, 2000);
    // An idle shard's close rewrites nothing (its index files still match).
    let stamp = |p: &PathBuf| std::fs::metadata(p).unwrap().modified().unwrap();
    let indexes = files(&sdir, "index");
    let before: Vec<_> = indexes.iter().map(stamp).collect();
    store.close().unwrap();
    assert_eq!(indexes.iter().map(stamp).collect::<Vec<_>>(), before);
    let store = open(dir.path());
    fill(&store, "s", 5);
    check_all(&store, "s", 0, 2050);
    store.close().unwrap();
    let last = indexes.last().unwrap();
    assert_ne!(
        stamp(last),
        *before.last().unwrap(),
        "the active segment's index follows it"
    );
    let store = open(dir.path());
    assert_eq!(engine_stat(&store, "s", "rebuilt_indexes"), 0);
    check_all(&store, "s", 0, 2050);
}

#[test]
fn torn_tail_is_cut_and_appends_continue() {
    let dir = tempfile::tempdir().unwrap();
    let crashed = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.create_shard("s", None).unwrap();
    fill(&store, "s", 50);
    // A copy of a running store is what a crash leaves (no clean close).
    copy_dir(dir.path(), crashed.path());
    drop(store);
    let sdir = shard_dir(crashed.path());
    let last = files(&sdir, "log").pop().unwrap();
    let len = std::fs::metadata(&last).unwrap().len();
    // Half of the last batch written, then garbage after it.
    let file = std::fs::OpenOptions::new().write(true).open(&last).unwrap();
    file.set_len(len - 1000).unwrap();
    use std::os::unix::fs::FileExt;
    file.write_all_at(&[0xAB; 300], len - 1000).unwrap();
    drop(file);

    let store = open(crashed.path());
    assert!(engine_stat(&store, "s", "truncated_bytes") > 0);
    check_all(&store, "s", 0, 490);
    fill(&store, "s", 3);
    check_all(&store, "s", 0, 520);
    store.close().unwrap();
    let store = open(crashed.path());
    check_all(&store, "s", 0, 520);
}

/// Flips one bit of a record in the middle of the active segment of the
/// only shard in `store_dir`.
fn flip_middle_bit(store_dir: &Path) {
    let last = files(&shard_dir(store_dir), "log").pop().unwrap();
    let mut bytes = std::fs::read(&last).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    std::fs::write(&last, &bytes).unwrap();
}

#[test]
fn damage_followed_by_valid_batches_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let crashed = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .create_shard("s", Some("durability = \"fsync\""))
        .unwrap();
    fill(&store, "s", 20);
    let crashed2 = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), crashed.path());
    copy_dir(dir.path(), crashed2.path());
    drop(store);
    flip_middle_bit(crashed.path());
    let err = Store::open(crashed.path(), Config::from_toml_str(SMALL).unwrap()).unwrap_err();
    assert_eq!(err.status(), Status::Corruption, "{err}");
    assert!(err.to_string().contains("valid batch follows"), "{err}");

    // The same flip in the last batch is a torn tail: nothing valid follows.
    let last = files(&shard_dir(crashed2.path()), "log").pop().unwrap();
    let mut bytes = std::fs::read(&last).unwrap();
    let end = bytes.len();
    bytes[end - 10] ^= 0x10;
    std::fs::write(&last, &bytes).unwrap();
    let store = open(crashed2.path());
    let info = store.shard_info("s").unwrap();
    assert_eq!(info.next_offset, 190, "only the damaged last batch is cut");
    check_all(&store, "s", 0, 190);
}

/// An `fsync` shard records how far its active segment was synced
/// (`synced`, written after each fdatasync without one of its own, so it
/// may lag). Damage before that point is corruption; damage past it, valid
/// batches after it or not, is a write a power cut tore before anyone was
/// told it was durable, and is cut.
#[test]
fn damage_past_the_synced_record_is_a_torn_write() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .create_shard("s", Some("durability = \"fsync\""))
        .unwrap();
    fill(&store, "s", 10);
    let sdir = shard_dir(dir.path());
    // The record as a power cut could find it: ten batches behind.
    let lagging = std::fs::read(sdir.join("synced")).unwrap();
    fill(&store, "s", 10);
    let crashed = tempfile::tempdir().unwrap();
    let crashed2 = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), crashed.path());
    copy_dir(dir.path(), crashed2.path());
    drop(store);
    let sdir = shard_dir(crashed.path());
    std::fs::write(sdir.join("synced"), &lagging).unwrap();
    let synced = u64::from_le_bytes(lagging[8..16].try_into().unwrap());
    let last = files(&sdir, "log").pop().unwrap();
    let mut bytes = std::fs::read(&last).unwrap();
    assert!(synced > 0 && synced + 4096 < bytes.len() as u64, "{synced}");
    // Past the record, with valid batches after the damage.
    bytes[synced as usize + 100] ^= 0x10;
    std::fs::write(&last, &bytes).unwrap();
    let store = open(crashed.path());
    assert!(engine_stat(&store, "s", "truncated_bytes") > 0);
    let next = store.shard_info("s").unwrap().next_offset;
    assert!(
        (100..200).contains(&next),
        "cut after the synced batches: {next}"
    );
    check_all(&store, "s", 0, next);
    store.close().unwrap();

    // Before the record: refused, as before.
    let sdir = shard_dir(crashed2.path());
    std::fs::write(sdir.join("synced"), &lagging).unwrap();
    let last = files(&sdir, "log").pop().unwrap();
    let mut bytes = std::fs::read(&last).unwrap();
    bytes[synced as usize / 2] ^= 0x10;
    std::fs::write(&last, &bytes).unwrap();
    let err = Store::open(crashed2.path(), Config::from_toml_str(SMALL).unwrap()).unwrap_err();
    assert_eq!(err.status(), Status::Corruption, "{err}");
}

/// An `os` shard's group offsets live in a file of their own: a power cut
/// may keep a commit and lose the appends it covered. Recovery lowers an
/// offset past the shard's end to the end, so the group does not skip
/// what is appended there next.
#[test]
fn an_offset_past_an_os_shards_recovered_end_is_lowered_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.create_shard("s", None).unwrap();
    fill(&store, "s", 20);
    store.commit_offset("g", "s", 200).unwrap();
    let crashed = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), crashed.path());
    drop(store);
    // The last appends lost, the commit kept.
    let segments = files(&shard_dir(crashed.path()), "log");
    let last = segments
        .iter()
        .rfind(|p| p.file_name().unwrap() != "groups.log")
        .unwrap();
    let len = std::fs::metadata(last).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(last).unwrap();
    file.set_len(len - 1000).unwrap();
    drop(file);
    let store = open(crashed.path());
    let end = store.shard_info("s").unwrap().next_offset;
    assert!(end < 200, "{end}");
    assert_eq!(store.committed_offset("g", "s").unwrap(), Some(end));
    store.close().unwrap();
    let store = open(crashed.path());
    assert_eq!(
        store.committed_offset("g", "s").unwrap(),
        Some(end),
        "durably"
    );
}

/// The active segment of an `os` or `none` shard is never fdatasynced
/// before it rolls, and a power cut keeps any subset of its writes: damage
/// there is cut like a torn tail, valid batches after it or not.
#[test]
fn damage_in_the_active_segment_of_an_os_shard_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let crashed = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.create_shard("s", None).unwrap();
    assert_eq!(
        store.shard_info("s").unwrap().options.durability.name(),
        "os"
    );
    fill(&store, "s", 20);
    copy_dir(dir.path(), crashed.path());
    drop(store);
    flip_middle_bit(crashed.path());
    let store = open(crashed.path());
    assert!(engine_stat(&store, "s", "truncated_bytes") > 0);
    let info = store.shard_info("s").unwrap();
    assert!(
        info.next_offset > 0 && info.next_offset < 200,
        "cut at the damage: {}",
        info.next_offset
    );
    check_all(&store, "s", 0, info.next_offset);
}

#[test]
fn damaged_missing_and_stale_indexes_are_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.create_shard("s", None).unwrap();
    fill(&store, "s", 120);
    store.close().unwrap();
    let sdir = shard_dir(dir.path());
    let indexes = files(&sdir, "index");
    let times = files(&sdir, "timeindex");
    assert!(indexes.len() >= 3);
    // A stale copy of the active segment's indexes, from this close.
    let active_index = std::fs::read(indexes.last().unwrap()).unwrap();
    let active_times = std::fs::read(times.last().unwrap()).unwrap();

    // A flipped bit in one index, another index and a time index missing.
    let mut bytes = std::fs::read(&indexes[0]).unwrap();
    let at = bytes.len() - 6;
    bytes[at] ^= 0x01;
    std::fs::write(&indexes[0], &bytes).unwrap();
    std::fs::remove_file(&indexes[1]).unwrap();
    std::fs::remove_file(&times[2]).unwrap();
    let store = open(dir.path());
    assert_eq!(engine_stat(&store, "s", "rebuilt_indexes"), 3);
    check_all(&store, "s", 0, 1200);
    // Appends to the active segment, clean close, then the stale indexes
    // put back: they cover less of the log than there is (behind).
    fill(&store, "s", 4);
    store.close().unwrap();
    std::fs::write(indexes.last().unwrap(), &active_index).unwrap();
    std::fs::write(times.last().unwrap(), &active_times).unwrap();
    let store = open(dir.path());
    assert_eq!(engine_stat(&store, "s", "rebuilt_indexes"), 1);
    check_all(&store, "s", 0, 1240);
    store.close().unwrap();
    // Rebuilt sealed indexes were written back: the next open scans nothing.
    let store = open(dir.path());
    assert_eq!(engine_stat(&store, "s", "rebuilt_indexes"), 0);
}

#[test]
fn deletes_and_watermarks_survive_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.create_shard("s", None).unwrap();
    fill(&store, "s", 100);
    let views = store.read("s", 0, 5, usize::MAX).unwrap();
    assert_eq!(store.delete_records_before("s", 333).unwrap(), 333);
    assert_eq!(store.delete_by_keys("s", &[b"odd"]).unwrap(), 334);
    // Views read before the rewrite still show their bytes.
    assert!(std::str::from_utf8(views.records[4].value_bytes())
        .unwrap()
        .starts_with("s-000004-"));
    let expect = |store: &Store| {
        let info = store.shard_info("s").unwrap();
        assert_eq!((info.first_offset, info.next_offset), (333, 1000));
        assert_eq!(info.records, 333);
        let got = store.read("s", 333, usize::MAX, usize::MAX).unwrap();
        assert!(got.records.iter().all(|r| r.offset % 2 == 0));
        assert_eq!(got.records.len(), 333);
        assert_eq!(got.records[0].offset, 334);
    };
    expect(&store);
    store.close().unwrap();
    let store = open(dir.path());
    expect(&store);
    // The newest batch deleted entirely: its offsets are not reused.
    let last: Vec<i64> = (990..1000).collect();
    assert_eq!(store.delete_by_offsets("s", &last).unwrap(), 5);
    drop(store); // Drop closes too.
    let store = open(dir.path());
    assert_eq!(store.shard_info("s").unwrap().next_offset, 1000);
    assert_eq!(store.append("s", &Record::new(b"next")).unwrap(), 1000);
    // Everything deleted: the low watermark and next offset stay.
    assert_eq!(store.delete_records_before("s", 5000).unwrap(), 1001);
    store.close().unwrap();
    let store = open(dir.path());
    let info = store.shard_info("s").unwrap();
    assert_eq!(
        (info.first_offset, info.next_offset, info.records),
        (1001, 1001, 0)
    );
    assert_eq!(files(&shard_dir(dir.path()), "log").len(), 1);
    assert_eq!(store.append("s", &Record::new(b"again")).unwrap(), 1001);
}

#[test]
fn group_offsets_and_shard_deletion_persist() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.create_shard("a", None).unwrap();
    store.create_shard("b", None).unwrap();
    fill(&store, "a", 2);
    store.commit_offset("g", "a", 7).unwrap();
    store.delete_shard("b").unwrap();
    store.close().unwrap();
    let store = open(dir.path());
    assert_eq!(store.list_shards().unwrap(), vec!["a"]);
    assert_eq!(store.committed_offset("g", "a").unwrap(), Some(7));
    assert_eq!(store.shard_info("a").unwrap().next_offset, 20);
    // The shard's own groups.log holds them, not the store's groups.json.
    assert!(shard_dir(dir.path()).join("groups.log").exists());
    assert!(!dir.path().join("groups.json").exists());
    store.commit_offset("g", "a", 8).unwrap();
    store.commit_offset("h", "a", 1).unwrap();
    assert_eq!(store.delete_group("h").unwrap(), 1);
    // A crash: the commits are in the log, each written when acknowledged.
    let image = common::crash_copy(dir.path());
    let crashed = open(image.path());
    assert_eq!(crashed.committed_offset("g", "a").unwrap(), Some(8));
    assert_eq!(crashed.committed_offset("h", "a").unwrap(), None);
}

#[test]
fn retention_removes_whole_segment_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .create_shard("r", Some("retention_bytes = 100000"))
        .unwrap();
    fill(&store, "r", 300);
    let info = store.shard_info("r").unwrap();
    assert!(info.bytes <= 100_000, "{info:?}");
    let logs = files(&shard_dir(dir.path()), "log");
    assert!(logs.len() <= 3, "dead segments removed: {logs:?}");
    let first = info.first_offset;
    store.close().unwrap();
    let store = open(dir.path());
    let again = store.shard_info("r").unwrap();
    assert_eq!(again.first_offset, first);
    check_all(&store, "r", first, 3000);
}

#[test]
fn maps_and_descriptors_stay_within_their_budgets() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::from_toml_str(
        "[shard]\nengine = \"file\"\ndurability = \"os\"\n[file]\nmax_memory_mb = 16\nmax_open_files = 4\n",
    )
    .unwrap();
    let store = Store::open(dir.path(), config).unwrap();
    let shards: Vec<String> = (0..12).map(|i| format!("s{i}")).collect();
    for s in &shards {
        store.create_shard(s, None).unwrap();
    }
    let payload = vec![7u8; 1000];
    for round in 0..60 {
        for s in &shards {
            let records: Vec<Record<'_>> = (0..64).map(|_| Record::new(&payload)).collect();
            assert_eq!(store.append_batch(s, &records).unwrap(), round * 64);
        }
    }
    let stats = store.shard_stats("s0").unwrap()["engine_stats"]["engine"].clone();
    assert!(stats["open_files"].as_u64().unwrap() <= 4, "{stats}");
    assert!(stats["evicted_files"].as_u64().unwrap() > 0, "{stats}");
    // Segments roll at an eighth of the budget (2 MiB here), so reading
    // everything back keeps at most the 8 MiB map budget mapped.
    let segments = store.shard_stats("s0").unwrap()["engine_stats"]["segments"]
        .as_u64()
        .unwrap();
    assert!(segments >= 2, "{segments}");
    for s in &shards {
        let mut offset = 0;
        while offset < 60 * 64 {
            let r = store.read(s, offset, 1000, 1 << 20).unwrap();
            assert!(r.records.iter().all(|r| r.value_bytes().len() == 1000));
            offset = r.next_offset;
        }
        let maps = store.shard_stats(s).unwrap()["engine_stats"]["engine"]["maps"].clone();
        assert!(maps["mapped_bytes"].as_u64().unwrap() <= 8 << 20, "{maps}");
    }
    let maps = store.shard_stats("s0").unwrap()["engine_stats"]["engine"]["maps"].clone();
    assert!(maps["evictions"].as_u64().unwrap() > 0, "{maps}");
}

#[test]
fn edge_preset_is_the_file_engine_within_100_mb() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::from_toml_str("preset = \"edge\"").unwrap();
    assert_eq!(config.file.max_memory_mb, 100);
    let store = Store::open(dir.path(), config).unwrap();
    let info = store.create_shard("e", None).unwrap();
    assert_eq!(info.engine.name(), "file");
    assert_eq!(info.options.durability.name(), "os");
    let stats = store.shard_stats("e").unwrap()["engine_stats"].clone();
    assert_eq!(stats["engine"]["max_memory_mb"], 100);
    assert_eq!(
        stats["segment_capacity"].as_u64().unwrap(),
        100 << 20 >> 3,
        "segments roll at an eighth of the budget"
    );
    let err = Config::from_toml_str("[file]\nmax_memory_mb = 1\n").unwrap_err();
    assert_eq!(err.status(), Status::InvalidConfig);
    assert!(err.to_string().contains("file.max_memory_mb"), "{err}");
    let err = Config::from_toml_str("[file]\nflush = \"sometimes\"\n").unwrap_err();
    assert!(err.to_string().contains("sometimes"), "{err}");
    let err = Config::from_toml_str("[file]\nmax_open_file = 3\n").unwrap_err();
    assert!(err.to_string().contains("max_open_file"), "{err}");
}

#[test]
fn interrupted_rewrites_and_creations_are_cleaned_up() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.create_shard("s", None).unwrap();
    fill(&store, "s", 10);
    store.close().unwrap();
    let sdir = shard_dir(dir.path());
    std::fs::write(sdir.join("00000000000000000000.log.cleaned"), b"partial").unwrap();
    let half_made = dir.path().join("file/00000000000000000099.tmp");
    std::fs::create_dir(&half_made).unwrap();
    let store = open(dir.path());
    check_all(&store, "s", 0, 100);
    assert!(!sdir.join("00000000000000000000.log.cleaned").exists());
    assert!(!half_made.exists());
    assert_eq!(store.list_shards().unwrap(), vec!["s"]);
}
