//! Journal engine: persistence across reopen, torn tails, corruption, group
//! commit and kill -9 crash recovery.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use mqstore::{Config, Record, Status, Store};

mod common;
use common::{segment_files, values_of, Rng};

/// Small segments so that tests roll and reclaim them; `journal` adds keys
/// to the `[journal]` section.
fn config(journal: &str) -> Config {
    Config::from_toml_str(&format!(
        "[shard]\nengine = \"journal\"\ndurability = \"os\"\n[journal]\nsegment_bytes = 65536\n{journal}"
    ))
    .unwrap()
}

fn open(dir: &Path, extra: &str) -> Store {
    Store::open(dir, config(extra)).unwrap()
}

/// Walks a segment file by the documented entry layout: (kind, start, end
/// of payload). Padding after the payload carries nothing (and no CRC).
fn walk_entries(data: &[u8]) -> Vec<(u8, usize, usize)> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos + 32 <= data.len() && data[pos..pos + 4] == *b"MQJ1" {
        let len = u32::from_le_bytes(data[pos + 8..pos + 12].try_into().unwrap()) as usize;
        out.push((data[pos + 4], pos, pos + 32 + len));
        pos += (32 + len).next_multiple_of(8);
    }
    out
}

#[test]
fn reopen_after_clean_close_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), "");
    store.create_shard("a", None).unwrap();
    store
        .create_shard("b", Some("durability = \"fsync\"\ncompression = \"lz4\""))
        .unwrap();
    store.create_shard("gone", None).unwrap();
    store
        .create_shard("kept", Some("retention_records = 30"))
        .unwrap();
    let big = vec![b'x'; 3000];
    for i in 0..100 {
        let key = format!("k{}", i % 4);
        let value = format!("a-{i}");
        store
            .append_batch(
                "a",
                &[
                    Record {
                        key: Some(key.as_bytes()),
                        ..Record::new(value.as_bytes())
                    },
                    Record::new(&big),
                ],
            )
            .unwrap();
        store
            .append("b", &Record::new(format!("b-{i}").as_bytes()))
            .unwrap();
        store
            .append("kept", &Record::new(format!("r-{i}").as_bytes()))
            .unwrap();
        store.append("gone", &Record::new(b"doomed")).unwrap();
    }
    assert_eq!(store.delete_records_before("a", 21).unwrap(), 21);
    assert_eq!(store.delete_by_keys("a", &[b"k1"]).unwrap(), 22);
    assert_eq!(store.delete_by_offsets("b", &[3, 4, 99]).unwrap(), 3);
    store.delete_shard("gone").unwrap();
    store.create_shard("gone", None).unwrap();
    store.append("gone", &Record::new(b"reborn")).unwrap();
    let mut before: BTreeMap<String, _> = ["a", "b", "gone", "kept"]
        .iter()
        .map(|s| {
            (
                s.to_string(),
                (store.shard_info(s).unwrap(), values_of(&store, s)),
            )
        })
        .collect();
    store.close().unwrap();
    drop(store);
    assert!(segment_files(dir.path()).len() > 3, "segments rolled");

    for round in 0..2 {
        let store = open(dir.path(), "");
        assert_eq!(store.list_shards().unwrap(), vec!["a", "b", "gone", "kept"]);
        for (name, (info, values)) in &before {
            assert_eq!(
                &store.shard_info(name).unwrap(),
                info,
                "{name} round {round}"
            );
            assert_eq!(&values_of(&store, name), values, "{name} round {round}");
        }
        assert_eq!(store.shard_info("a").unwrap().first_offset, 21);
        assert_eq!(values_of(&store, "gone"), vec![(0, b"reborn".to_vec())]);
        // Offsets continue, never reused.
        assert_eq!(
            store.append("b", &Record::new(b"more")).unwrap(),
            100 + round
        );
        let mut before_b = before["b"].1.clone();
        before_b.push((100 + round, b"more".to_vec()));
        assert_eq!(values_of(&store, "b"), before_b);
        before.insert(
            "b".into(),
            (store.shard_info("b").unwrap(), values_of(&store, "b")),
        );
        store.close().unwrap();
    }
}

#[test]
fn segments_are_reclaimed_and_recovery_still_sees_every_shard() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), "");
    store.create_shard("quiet", None).unwrap();
    store.append("quiet", &Record::new(b"q0")).unwrap();
    store.delete_records_before("quiet", 1).unwrap();
    store
        .create_shard("busy", Some("retention_records = 70"))
        .unwrap();
    let value = vec![7u8; 2000];
    for _ in 0..400 {
        store.append("busy", &Record::new(&value)).unwrap();
    }
    let stats = store.shard_stats("busy").unwrap();
    let journal = &stats["engine_stats"]["journal"];
    assert!(
        journal["removed_segments"].as_u64().unwrap() > 5,
        "{journal}"
    );
    assert!(segment_files(dir.path()).len() <= 5, "{journal}");
    let busy_before = store.shard_info("busy").unwrap();
    store.close().unwrap();
    drop(store);
    let store = open(dir.path(), "");
    let quiet = store.shard_info("quiet").unwrap();
    assert_eq!((quiet.first_offset, quiet.next_offset), (1, 1));
    // The low watermark retention reached survives even though the batches
    // it dropped (and their segments) are gone.
    let busy = store.shard_info("busy").unwrap();
    assert_eq!(busy, busy_before);
    assert_eq!(busy.next_offset, 400);
    assert_eq!(store.append("quiet", &Record::new(b"q1")).unwrap(), 1);
    assert_eq!(store.append("busy", &Record::new(b"b")).unwrap(), 400);
}

/// Writes `n` single-record batches to shard "s" and closes.
fn fill(dir: &Path, n: usize) {
    let store = open(dir, "");
    store.create_shard("s", None).unwrap();
    for i in 0..n {
        store
            .append("s", &Record::new(format!("value-{i:05}").as_bytes()))
            .unwrap();
    }
    store.close().unwrap();
}

#[test]
fn torn_tail_is_truncated_at_any_cut() {
    let mut rng = Rng::seeded();
    let template = tempfile::tempdir().unwrap();
    fill(template.path(), 200);
    let files = segment_files(template.path());
    assert_eq!(files.len(), 1);
    let data = std::fs::read(&files[0]).unwrap();
    let entries = walk_entries(&data);
    let kinds: Vec<u8> = entries.iter().map(|e| e.0).collect();
    let mut expected_kinds = vec![2u8];
    expected_kinds.extend([1u8; 200]);
    expected_kinds.push(6);
    assert_eq!(
        kinds, expected_kinds,
        "a checkpoint, 200 batches and the Synced entry of the close"
    );
    let written = entries.last().unwrap().2;
    for round in 0..40 {
        let cut = 1 + rng.below(written as u64 - 1) as usize;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("journal")).unwrap();
        let path = dir
            .path()
            .join("journal")
            .join(files[0].file_name().unwrap());
        let mut damaged = data[..cut].to_vec();
        match round % 3 {
            0 => {}                             // the file ends at the cut
            1 => damaged.resize(data.len(), 0), // zeros after the cut
            _ => {
                // Garbage after the cut, as a torn multi-page write leaves.
                damaged.extend((0..(written - cut).min(300)).map(|_| rng.next() as u8 | 1));
                damaged.resize(data.len(), 0);
            }
        }
        std::fs::write(&path, &damaged).unwrap();
        // Entries wholly before the cut survive; so does one the cut only
        // clipped trailing zero bytes from (a record ends with headerCount
        // 0) when zeros were written back: its bytes are intact.
        let whole = entries
            .iter()
            .take_while(|e| damaged.get(e.1..e.2) == Some(&data[e.1..e.2]))
            .count();
        let store = open(dir.path(), "");
        if whole == 0 {
            assert!(store.list_shards().unwrap().is_empty(), "cut {cut}");
            continue;
        }
        let batches = entries[..whole].iter().filter(|e| e.0 == 1).count();
        let expected: Vec<(i64, Vec<u8>)> = (0..batches)
            .map(|i| (i as i64, format!("value-{i:05}").into_bytes()))
            .collect();
        assert_eq!(values_of(&store, "s"), expected, "cut {cut}");
        // Appends continue right after the truncated tail.
        let next = expected.len() as i64;
        assert_eq!(store.append("s", &Record::new(b"after")).unwrap(), next);
        store.close().unwrap();
        drop(store);
        let store = open(dir.path(), "");
        let values = values_of(&store, "s");
        assert_eq!(values.len(), expected.len() + 1, "cut {cut}");
        assert_eq!(values.last().unwrap(), &(next, b"after".to_vec()));
    }
}

#[test]
fn bit_flip_in_the_middle_is_corruption() {
    let mut rng = Rng::seeded();
    let template = tempfile::tempdir().unwrap();
    fill(template.path(), 50);
    let file = segment_files(template.path()).remove(0);
    let data = std::fs::read(&file).unwrap();
    let entries = walk_entries(&data);
    for _ in 0..10 {
        // Any entry but the last: valid entries follow it.
        let (_, start, end) = entries[rng.below(entries.len() as u64 - 1) as usize];
        let bit = start * 8 + rng.below(((end - start) * 8) as u64) as usize;
        let mut damaged = data.clone();
        damaged[bit / 8] ^= 1 << (bit % 8);
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("journal")).unwrap();
        std::fs::write(
            dir.path().join("journal").join(file.file_name().unwrap()),
            &damaged,
        )
        .unwrap();
        let err = Store::open(dir.path(), config("")).unwrap_err();
        assert_eq!(err.status(), Status::Corruption, "bit {bit}: {err}");
        assert!(err.to_string().contains("skip_corrupt"), "{err}");
        let before = std::fs::read(dir.path().join("journal").join(file.file_name().unwrap()));
        assert_eq!(before.unwrap(), damaged, "a refused open changes nothing");
        // skip_corrupt opens, losing only the damaged entry.
        let store = open(dir.path(), "recovery_mode = \"skip_corrupt\"\n");
        if start == 0 {
            assert!(store.list_shards().unwrap().is_empty());
            continue;
        }
        let values = values_of(&store, "s");
        assert_eq!(values.len(), 49, "bit {bit}");
    }
}

#[test]
fn group_commit_shares_fdatasyncs() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(dir.path(), ""));
    let shards = 8;
    for s in 0..shards {
        store
            .create_shard(&format!("s{s}"), Some("durability = \"fsync\""))
            .unwrap();
    }
    let syncs_before = store.shard_stats("s0").unwrap()["engine_stats"]["journal"]["fdatasyncs"]
        .as_u64()
        .unwrap();
    let threads = 16;
    let per_thread = 100;
    std::thread::scope(|scope| {
        for t in 0..threads {
            let store = store.clone();
            scope.spawn(move || {
                for i in 0..per_thread {
                    let shard = format!("s{}", (t + i) % shards);
                    store
                        .append(&shard, &Record::new(format!("{t}-{i}").as_bytes()))
                        .unwrap();
                }
            });
        }
    });
    let journal = store.shard_stats("s0").unwrap()["engine_stats"]["journal"].clone();
    let syncs = journal["fdatasyncs"].as_u64().unwrap() - syncs_before;
    let appends = (threads * per_thread) as u64;
    eprintln!("{appends} fsync appends, {syncs} fdatasyncs: {journal}");
    assert!(syncs < appends, "{syncs} fdatasyncs for {appends} appends");
    let total: usize = (0..shards)
        .map(|s| values_of(&store, &format!("s{s}")).len())
        .sum();
    assert_eq!(total, threads * per_thread);
}

#[test]
fn durability_none_reads_its_own_writes_and_survives_clean_close() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), "buffer_bytes = 1000000\n");
    store
        .create_shard("n", Some("durability = \"none\""))
        .unwrap();
    for i in 0..20 {
        store
            .append("n", &Record::new(format!("v{i}").as_bytes()))
            .unwrap();
    }
    assert_eq!(values_of(&store, "n").len(), 20);
    let plan = store.plan_transfer("n", 0, 1 << 20).unwrap();
    assert_eq!(plan.next_offset(), 20);
    store.close().unwrap();
    drop(store);
    let store = open(dir.path(), "");
    assert_eq!(values_of(&store, "n").len(), 20);
}

#[test]
fn group_offsets_of_journal_shards_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), "");
    store.create_shard("j", None).unwrap();
    store.create_shard("k", None).unwrap();
    store
        .create_shard("m", Some("engine = \"memory\"\ndurability = \"none\""))
        .unwrap();
    store.commit_offset("g", "j", 5).unwrap();
    store.commit_offset("g", "k", 6).unwrap();
    store.commit_offset("h", "j", 7).unwrap();
    store.commit_offset("g", "m", 8).unwrap();
    store.commit_offset("g", "j", 9).unwrap();
    assert_eq!(store.delete_group("h").unwrap(), 1);
    store.close().unwrap();
    drop(store);
    let store = open(dir.path(), "");
    assert_eq!(store.committed_offset("g", "j").unwrap(), Some(9));
    assert_eq!(store.committed_offset("g", "k").unwrap(), Some(6));
    assert_eq!(store.committed_offset("h", "j").unwrap(), None);
    assert!(
        store.shard_info("m").is_err(),
        "memory shards do not survive"
    );
    store.delete_shard("k").unwrap();
    store.create_shard("k", None).unwrap();
    drop(store);
    let store = open(dir.path(), "");
    assert_eq!(store.committed_offset("g", "k").unwrap(), None);
    assert_eq!(store.committed_offset("g", "j").unwrap(), Some(9));
}

#[test]
fn sendfile_from_the_journal_to_a_file_and_a_pipe() {
    use std::io::{Read, Seek};
    use std::os::fd::AsRawFd;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), "");
    store.create_shard("s", None).unwrap();
    store.create_shard("other", None).unwrap();
    for i in 0..50 {
        let values: Vec<String> = (0..5).map(|j| format!("v{i}-{j}")).collect();
        let records: Vec<Record<'_>> = values.iter().map(|v| Record::new(v.as_bytes())).collect();
        store.append_batch("s", &records).unwrap();
        store.append("other", &Record::new(b"interleaved")).unwrap();
    }
    let expected = store
        .plan_transfer("s", 0, usize::MAX)
        .unwrap()
        .to_vec()
        .unwrap();
    let batches = mqstore::format::split_batches(&expected.clone().into()).unwrap();
    assert_eq!(batches.len(), 50);

    let mut file = tempfile::tempfile().unwrap();
    let result = store
        .sendfile_to_fd("s", 0, usize::MAX, file.as_raw_fd())
        .unwrap();
    assert_eq!(result.next_offset, 250);
    file.rewind().unwrap();
    let mut got = Vec::new();
    file.read_to_end(&mut got).unwrap();
    assert_eq!(got, expected);

    let mut fds = [0; 2];
    // SAFETY: pipe(2) fills two descriptors that we own and close below.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let (read_fd, write_fd) = (fds[0], fds[1]);
    let reader = std::thread::spawn(move || {
        // SAFETY: read_fd is an open pipe end owned by this thread from now on.
        let mut f = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(read_fd) };
        let mut got = Vec::new();
        f.read_to_end(&mut got).unwrap();
        got
    });
    let result = store
        .sendfile_to_fd("s", 100, usize::MAX, write_fd)
        .unwrap();
    // SAFETY: closing our write end so the reader sees EOF.
    unsafe { libc::close(write_fd) };
    let got = reader.join().unwrap();
    assert_eq!(got.len() as u64, result.bytes_written);
    let mut offsets = Vec::new();
    for batch in mqstore::format::split_batches(&got.into()).unwrap() {
        for r in mqstore::format::decode_batch(&batch, true).unwrap() {
            offsets.push(r.offset);
        }
    }
    assert_eq!(offsets, (100..250).collect::<Vec<_>>());
}

#[test]
fn a_shard_whose_creation_segment_is_reclaimed_keeps_its_older_batches() {
    // The shard's creation record sits in segment 0, its data in later
    // segments; reclaiming segment 0 re-checkpoints the shard into the
    // newest segment, behind its batches. Replay must still index them.
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), "");
    store.create_shard("early", None).unwrap();
    store
        .create_shard("churn", Some("retention_records = 1"))
        .unwrap();
    let filler = vec![1u8; 4000];
    for _ in 0..20 {
        store.append("churn", &Record::new(&filler)).unwrap();
    }
    for i in 0..10 {
        store
            .append("early", &Record::new(format!("e{i}").as_bytes()))
            .unwrap();
    }
    for _ in 0..60 {
        store.append("churn", &Record::new(&filler)).unwrap();
    }
    let files = segment_files(dir.path());
    assert!(
        !files[0].ends_with("00000000000000000000.log"),
        "segment 0 was reclaimed: {files:?}"
    );
    let expected = values_of(&store, "early");
    assert_eq!(expected.len(), 10);
    store.close().unwrap();
    drop(store);
    let store = open(dir.path(), "");
    assert_eq!(values_of(&store, "early"), expected);
    assert_eq!(store.append("early", &Record::new(b"next")).unwrap(), 10);
}

#[test]
fn offsets_are_not_reused_after_deleted_batches_and_their_segments_are_gone() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), "");
    store
        .create_shard("churn", Some("retention_records = 1"))
        .unwrap();
    let filler = vec![1u8; 4000];
    for _ in 0..20 {
        store.append("churn", &Record::new(&filler)).unwrap();
    }
    // Created in a later segment; then every record of it deleted.
    store.create_shard("d", None).unwrap();
    store
        .append_batch("d", &[Record::new(b"x"), Record::new(b"y")])
        .unwrap();
    store.delete_by_offsets("d", &[0, 1]).unwrap();
    store
        .create_shard("aged", Some("retention_ms = 60000"))
        .unwrap();
    store
        .append(
            "aged",
            &Record {
                timestamp_ms: 1_000,
                ..Record::new(b"old")
            },
        )
        .unwrap();
    for _ in 0..80 {
        store.append("churn", &Record::new(&filler)).unwrap();
    }
    let before: Vec<_> = ["d", "aged"]
        .iter()
        .map(|s| store.shard_info(s).unwrap())
        .collect();
    assert_eq!((before[0].next_offset, before[0].records), (2, 0));
    assert_eq!((before[1].first_offset, before[1].next_offset), (1, 1));
    store.close().unwrap();
    drop(store);
    let store = open(dir.path(), "");
    let after: Vec<_> = ["d", "aged"]
        .iter()
        .map(|s| store.shard_info(s).unwrap())
        .collect();
    assert_eq!(after, before);
    assert_eq!(store.append("d", &Record::new(b"z")).unwrap(), 2);
    assert_eq!(store.append("aged", &Record::new(b"new")).unwrap(), 1);
}

#[test]
fn a_default_store_takes_disk_as_it_fills_not_a_whole_segment() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Config::default()).unwrap();
    store.create_shard("s", None).unwrap();
    let value = vec![7u8; 1000];
    for _ in 0..10 {
        store.append("s", &Record::new(&value)).unwrap();
    }
    let stats = store.shard_stats("s").unwrap();
    assert_eq!(stats["engine_stats"]["journal"]["prefill"]["mode"], "zeros");
    store.close().unwrap();
    let mut size = 0;
    let mut allocated = 0;
    for path in segment_files(dir.path()) {
        let meta = std::fs::metadata(&path).unwrap();
        size += meta.len();
        allocated += meta.blocks() * 512;
    }
    // The default segment is 1 GiB long, but only the written part and the
    // space prepared just ahead of it (MIN_AHEAD, 1 MiB, early on) hold
    // blocks: test directories and small stores stay small.
    assert_eq!(size, 1 << 30);
    assert!(allocated <= 4 << 20, "{allocated} bytes allocated");
    let store = Store::open(dir.path(), Config::default()).unwrap();
    assert_eq!(store.shard_info("s").unwrap().next_offset, 10);
}

#[test]
fn cold_segments_are_read_with_pread_and_match_the_mapped_reads() {
    let dir = tempfile::tempdir().unwrap();
    let expected: Vec<Vec<u8>> = (0..400)
        .map(|i| format!("value-{i:04}-{}", "x".repeat(200 + i % 700)).into_bytes())
        .collect();
    {
        let store = open(dir.path(), "");
        store.create_shard("s", None).unwrap();
        store.create_shard("other", None).unwrap();
        for (i, chunk) in expected.chunks(4).enumerate() {
            let key = format!("k{}", i % 5);
            let records: Vec<Record<'_>> = chunk
                .iter()
                .map(|v| Record::new(v).with_key(key.as_bytes()))
                .collect();
            store.append_batch("s", &records).unwrap();
            // Another shard's entries interleave with ours in the journal.
            store.append("other", &Record::new(b"noise")).unwrap();
        }
        store.close().unwrap();
    }
    type Seen = (Vec<Vec<u8>>, Vec<i64>, Option<i64>, u64);
    let read_all = |journal: &str| -> Seen {
        let store = open(dir.path(), journal);
        let segments = segment_files(dir.path());
        assert!(segments.len() >= 3, "{segments:?}");
        let mut values = Vec::new();
        let mut from = 0;
        while from < 400 {
            // 10 fetches of 10 batches; within one, later batches come from
            // the read-ahead window.
            let r = store.read("s", from, 40, usize::MAX).unwrap();
            values.extend(r.records.iter().map(|r| r.value_bytes().to_vec()));
            from = r.next_offset;
        }
        let keyed = store
            .read_by_keys("s", &[b"k3"], usize::MAX)
            .unwrap()
            .iter()
            .map(|r| r.offset)
            .collect();
        let first_ts = store.read("s", 0, 1, usize::MAX).unwrap().records[0].timestamp_ms;
        let by_time = store.offset_for_timestamp("s", first_ts).unwrap();
        let stats = store.shard_stats("s").unwrap()["engine_stats"]["journal"].clone();
        (
            values,
            keyed,
            by_time,
            stats["cold_reads"].as_u64().unwrap(),
        )
    };
    // Without the tail cache, which would serve every read of this small
    // journal from memory.
    let (cold_values, cold_keyed, cold_time, cold_reads) =
        read_all("hot_segments = 1\ntail_cache_bytes = 0\n");
    let (hot_values, hot_keyed, hot_time, hot_reads) = read_all("hot_segments = 1000\n");
    assert_eq!(cold_values, expected);
    assert_eq!(hot_values, expected);
    assert_eq!(cold_keyed, hot_keyed);
    assert_eq!(cold_keyed.len(), 80);
    assert_eq!((cold_time, hot_time), (Some(0), Some(0)));
    assert!(cold_reads > 0);
    // Read-ahead: at most one pread per cold segment a fetch touches (10
    // fetches, a few lookups), against 100 batches read.
    assert!(cold_reads <= 30, "{cold_reads} preads");
    assert_eq!(hot_reads, 0);

    let err = Config::from_toml_str("[journal]\nhot_segments = 0\n").unwrap_err();
    assert_eq!(err.status(), Status::InvalidConfig);
    assert!(err.to_string().contains("hot_segments"), "{err}");
}

#[test]
fn concurrent_creations_race_cleanly_and_all_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let config = || Config::from_toml_str("[journal]\nsegment_bytes = 65536\n").unwrap();
    let store = Store::open(dir.path(), config()).unwrap();
    let winners: usize = std::thread::scope(|scope| {
        let racers: Vec<_> = (0..8)
            .map(|_| scope.spawn(|| store.create_shard("same", None)))
            .collect();
        let makers: Vec<_> = (0..4)
            .map(|t| {
                let store = &store;
                scope.spawn(move || {
                    for i in 0..25 {
                        store.create_shard(&format!("t{t}-{i}"), None).unwrap();
                    }
                })
            })
            .collect();
        makers.into_iter().for_each(|m| m.join().unwrap());
        racers
            .into_iter()
            .map(|r| match r.join().unwrap() {
                Ok(_) => 1,
                Err(e) => {
                    assert_eq!(e.status(), Status::ShardExists, "{e}");
                    0
                }
            })
            .sum()
    });
    assert_eq!(winners, 1);
    assert_eq!(store.list_shards().unwrap().len(), 101);
    store.append("same", &Record::new(b"x")).unwrap();
    drop(store);
    let store = Store::open(dir.path(), config()).unwrap();
    assert_eq!(store.list_shards().unwrap().len(), 101);
    assert_eq!(store.shard_info("same").unwrap().next_offset, 1);
}

#[test]
fn the_newest_batches_are_read_and_sent_from_memory() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), "tail_cache_bytes = 65536\n");
    store.create_shard("s", None).unwrap();
    let values: Vec<Vec<u8>> = (0..300).map(|i| vec![(i % 251) as u8; 700]).collect();
    for chunk in values.chunks(3) {
        let records: Vec<Record<'_>> = chunk.iter().map(|v| Record::new(v)).collect();
        store.append_batch("s", &records).unwrap();
    }
    let journal = || store.shard_stats("s").unwrap()["engine_stats"]["journal"].clone();
    let cached = journal()["tail_cache_bytes"].as_u64().unwrap();
    assert!(cached > 0 && cached <= 65536, "{cached}");
    // Everything reads back alike, whether from the cache or the files.
    let got: Vec<Vec<u8>> = values_of(&store, "s").into_iter().map(|r| r.1).collect();
    assert_eq!(got, values);
    // A transfer mixes memory (the newest) and sendfile (older) chunks and
    // still yields the stored batches byte for byte.
    let (mut rx, tx) = std::os::unix::net::UnixStream::pair().unwrap();
    let reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        rx.read_to_end(&mut bytes).unwrap();
        bytes
    });
    let sent = store
        .sendfile_to_fd("s", 0, usize::MAX, std::os::fd::AsRawFd::as_raw_fd(&tx))
        .unwrap();
    drop(tx);
    let bytes = reader.join().unwrap();
    assert_eq!(bytes.len() as u64, sent.bytes_written);
    let batches = mqstore::format::split_batches(&bytes::Bytes::from(bytes)).unwrap();
    assert_eq!(batches.len(), 100);
    let mut offset = 0;
    for batch in batches {
        mqstore::format::for_each_record(&batch, true, |r| {
            assert_eq!(r.offset, offset);
            assert_eq!(r.value_bytes(), &values[offset as usize][..]);
            offset += 1;
            true
        })
        .unwrap();
    }
    assert_eq!(offset, 300);
}

/// Appends a batch of ten records to a fresh shard `x`, makes the segment
/// holding it reclaimable by filling later segments from a shard that
/// retains one record, runs `delete` on `x` (which rewrites the batch),
/// fills more so that the batch's segment is reclaimed, and returns what
/// a kill -9 at that point would leave.
fn rewrite_then_reclaim(delete: impl Fn(&Store)) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::from_toml_str(
        "[shard]\nengine = \"journal\"\ndurability = \"fsync\"\n\
         [journal]\nsegment_bytes = 1048576\n",
    )
    .unwrap();
    let store = Store::open(dir.path(), config.clone()).unwrap();
    store.create_shard("x", None).unwrap();
    let values: Vec<Vec<u8>> = (0..10).map(|i| format!("v{i}").into_bytes()).collect();
    let keys: Vec<Vec<u8>> = (0..10).map(|i| format!("k{i}").into_bytes()).collect();
    let records: Vec<Record<'_>> = values
        .iter()
        .zip(&keys)
        .map(|(v, k)| Record {
            key: Some(k),
            ..Record::new(v)
        })
        .collect();
    store.append_batch("x", &records).unwrap();
    store
        .create_shard("churn", Some("retention_records = 1"))
        .unwrap();
    let filler = vec![b'z'; 60_000];
    for _ in 0..60 {
        store.append("churn", &Record::new(&filler)).unwrap();
    }
    delete(&store);
    for _ in 0..30 {
        store.append("churn", &Record::new(&filler)).unwrap();
    }
    let segments = store.shard_stats("x").unwrap()["engine_stats"]["journal"]["removed_segments"]
        .as_u64()
        .unwrap();
    assert!(segments > 0, "the batch's segment must be reclaimed");
    let copy = common::crash_copy(dir.path());
    drop(store);
    let store = Store::open(copy.path(), config).unwrap();
    (copy, store)
}

fn values_after(store: &Store) -> Vec<(i64, String)> {
    values_of(store, "x")
        .into_iter()
        .map(|(o, v)| (o, String::from_utf8(v).unwrap()))
        .collect()
}

fn expected(offsets: impl Iterator<Item = i64>) -> Vec<(i64, String)> {
    offsets.map(|o| (o, format!("v{o}"))).collect()
}

#[test]
fn a_mid_batch_delete_survives_the_reclaim_of_the_batch_and_a_crash() {
    let (_dir, store) = rewrite_then_reclaim(|s| {
        assert_eq!(s.delete_records_before("x", 5).unwrap(), 5);
    });
    let info = store.shard_info("x").unwrap();
    assert_eq!((info.first_offset, info.next_offset), (5, 10));
    assert_eq!(values_after(&store), expected(5..10));
}

#[test]
fn deletes_by_key_and_offset_survive_the_reclaim_of_the_batch_and_a_crash() {
    let (_dir, store) = rewrite_then_reclaim(|s| {
        assert_eq!(s.delete_by_offsets("x", &[2]).unwrap(), 1);
        assert_eq!(s.delete_by_keys("x", &[b"k7"]).unwrap(), 1);
    });
    assert_eq!(
        values_after(&store),
        expected((0..10).filter(|o| ![2, 7].contains(o)))
    );
    assert_eq!(store.shard_info("x").unwrap().next_offset, 10);
}

/// A second rewrite of the same batch logged after the low watermark moved
/// into it: its base offset is below the watermark, its records are not.
#[test]
fn a_batch_rewritten_twice_across_a_watermark_survives_a_crash() {
    let (_dir, store) = rewrite_then_reclaim(|s| {
        assert_eq!(s.delete_records_before("x", 3).unwrap(), 3);
        assert_eq!(s.delete_by_offsets("x", &[6]).unwrap(), 1);
    });
    let info = store.shard_info("x").unwrap();
    assert_eq!((info.first_offset, info.next_offset), (3, 10));
    assert_eq!(values_after(&store), expected((3..10).filter(|&o| o != 6)));
}

/// A journal left as a kill -9 leaves it: its store directory, its one
/// segment's path, bytes and entries, and the newest position a `Synced`
/// entry proves durable.
struct Crashed {
    dir: tempfile::TempDir,
    file: std::path::PathBuf,
    data: Vec<u8>,
    entries: Vec<(u8, usize, usize)>,
    proven: usize,
}

/// Twenty `fsync` batches (each synced, the `Synced` entry of each sync
/// logged with the next write), then thirty `os` batches (written, never
/// synced), crashed.
fn synced_then_unsynced() -> Crashed {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), "");
    store
        .create_shard("durable", Some("durability = \"fsync\""))
        .unwrap();
    store
        .create_shard("loose", Some("durability = \"os\""))
        .unwrap();
    for i in 0..20 {
        let value = format!("durable-{i:03}-{}", "d".repeat(300));
        store
            .append("durable", &Record::new(value.as_bytes()))
            .unwrap();
    }
    for i in 0..30 {
        let value = format!("loose-{i:03}-{}", "l".repeat(300));
        store
            .append("loose", &Record::new(value.as_bytes()))
            .unwrap();
    }
    let copy = common::crash_copy(dir.path());
    drop(store);
    let file = segment_files(copy.path()).remove(0);
    let data = std::fs::read(&file).unwrap();
    let entries = walk_entries(&data);
    let proven = entries
        .iter()
        .filter(|e| e.0 == 6)
        .map(|e| u64::from_le_bytes(data[e.1 + 24..e.1 + 32].try_into().unwrap()) as usize)
        .max()
        .unwrap();
    Crashed {
        dir: copy,
        file,
        data,
        entries,
        proven,
    }
}

/// Zeroes the 512-byte sector holding byte `at`, as a power cut that kept
/// later sectors of a write but not this one leaves it.
fn lose_sector(file: &Path, data: &[u8], at: usize) -> usize {
    let sector = at & !511;
    let mut damaged = data.to_vec();
    damaged[sector..sector + 512].fill(0);
    std::fs::write(file, damaged).unwrap();
    sector
}

/// A power cut while unsynced writes were in flight can keep later blocks
/// of them and lose earlier ones. Nothing there was acknowledged as
/// durable, so recovery cuts the journal where the damage starts (with the
/// default recovery mode) and keeps everything a `Synced` entry proves.
#[test]
fn a_torn_unsynced_tail_is_cut_not_refused() {
    let crashed = synced_then_unsynced();
    let (dir, file, data) = (&crashed.dir, &crashed.file, &crashed.data);
    let (entries, proven) = (&crashed.entries, crashed.proven);
    let loose: Vec<&(u8, usize, usize)> = entries
        .iter()
        .filter(|e| e.0 == 1 && e.1 >= proven)
        .collect();
    assert!(loose.len() >= 25, "the os batches lie past the proof");
    let sector = lose_sector(file, data, loose[10].1 + 40);
    static EVENTS: std::sync::Mutex<Vec<(mqstore::log::Level, String)>> =
        std::sync::Mutex::new(Vec::new());
    mqstore::log::set_handler(Some(std::sync::Arc::new(|level, message: &str| {
        EVENTS.lock().unwrap().push((level, message.to_string()))
    })))
    .unwrap();
    let store = open(dir.path(), "");
    // Replacing the handler delivers what is queued: the cut is reported.
    mqstore::log::set_handler(None).unwrap();
    let where_ = dir.path().display().to_string();
    let reported: Vec<_> = EVENTS
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, m)| m.contains(&where_) && m.contains("torn tail"))
        .cloned()
        .collect();
    assert_eq!(reported.len(), 1, "{reported:?}");
    assert_eq!(reported[0].0, mqstore::log::Level::Warn);
    assert!(store.stats().unwrap()["log"]["warnings"].as_u64().unwrap() >= 1);
    let durable = values_of(&store, "durable");
    assert_eq!(durable.len(), 20, "every fsync-acknowledged batch survives");
    let kept = values_of(&store, "loose");
    let whole = entries
        .iter()
        .filter(|e| e.0 == 1 && e.2 <= sector && e.1 >= proven)
        .count();
    assert!(kept.len() < 30 && !kept.is_empty());
    assert_eq!(
        kept.len(),
        whole + (30 - loose.len()),
        "cut where the damage starts"
    );
    for (i, (offset, value)) in kept.iter().enumerate() {
        assert_eq!(*offset, i as i64);
        assert!(value.starts_with(format!("loose-{i:03}-").as_bytes()));
    }
    let stats = store.shard_stats("loose").unwrap();
    assert!(
        stats["engine_stats"]["journal"]["truncated_bytes"]
            .as_u64()
            .unwrap()
            > 0
    );
    // Appends go on after the cut.
    let next = kept.len() as i64;
    assert_eq!(store.append("loose", &Record::new(b"after")).unwrap(), next);
}

/// The same damage inside what a `Synced` entry proves durable is
/// corruption: the open is refused and changes nothing.
#[test]
fn damage_before_a_synced_entry_is_corruption() {
    let crashed = synced_then_unsynced();
    let (dir, file, data) = (&crashed.dir, &crashed.file, &crashed.data);
    let (entries, proven) = (&crashed.entries, crashed.proven);
    let synced: Vec<&(u8, usize, usize)> = entries
        .iter()
        .filter(|e| e.0 == 1 && e.2 + 512 < proven)
        .collect();
    let sector = lose_sector(file, data, synced[synced.len() / 2].1 + 40);
    assert!(sector + 512 <= proven);
    let err = Store::open(dir.path(), config("")).unwrap_err();
    assert_eq!(err.status(), Status::Corruption, "{err}");
    let mut damaged = data.clone();
    damaged[sector..sector + 512].fill(0);
    assert_eq!(
        std::fs::read(file).unwrap(),
        damaged,
        "a refused open changes nothing"
    );
}

/// Any subset of the sectors written past the proven position may be lost
/// (reordered device writes, torn at 512 bytes): the open never fails,
/// keeps every `fsync`-acknowledged batch, and keeps `os` batches only as
/// a dense prefix.
#[test]
fn random_sector_loss_past_the_proof_never_refuses_the_open() {
    let mut rng = Rng::seeded();
    let crashed = synced_then_unsynced();
    let end = crashed.entries.last().unwrap().2;
    for round in 0..30 {
        let dir = tempfile::tempdir().unwrap();
        common::copy_dir(crashed.dir.path(), dir.path());
        let file = dir
            .path()
            .join("journal")
            .join(crashed.file.file_name().unwrap());
        let mut damaged = crashed.data.clone();
        let first = crashed.proven.next_multiple_of(512);
        for sector in (first..end).step_by(512) {
            if rng.below(3) == 0 {
                damaged[sector..sector + 512].fill(0);
            }
        }
        std::fs::write(&file, &damaged).unwrap();
        let store = open(dir.path(), "");
        assert_eq!(values_of(&store, "durable").len(), 20, "round {round}");
        for (i, (offset, value)) in values_of(&store, "loose").iter().enumerate() {
            assert_eq!(*offset, i as i64, "round {round}");
            assert!(value.starts_with(format!("loose-{i:03}-").as_bytes()));
        }
    }
}

/// A `delete_records_before` inside a batch logs two entries (the new
/// watermark, the batch rewritten without the records below it). A crash
/// that keeps only the first of them must leave the delete done or not
/// done, never records gone above the watermark recovery finds.
#[test]
fn a_mid_batch_delete_cut_short_by_a_crash_is_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), "");
    store
        .create_shard("x", Some("durability = \"fsync\""))
        .unwrap();
    let values: Vec<Vec<u8>> = (0..10).map(|i| format!("v{i}").into_bytes()).collect();
    let records: Vec<Record<'_>> = values.iter().map(|v| Record::new(v)).collect();
    store.append_batch("x", &records).unwrap();
    assert_eq!(store.delete_records_before("x", 5).unwrap(), 5);
    let copy = common::crash_copy(dir.path());
    drop(store);
    let file = segment_files(copy.path()).remove(0);
    let mut data = std::fs::read(&file).unwrap();
    let entries = walk_entries(&data);
    // The delete's entries are the last two shard entries (a Synced entry
    // may follow); keep the first, lose everything from the second on.
    let shard_entries: Vec<&(u8, usize, usize)> = entries.iter().filter(|e| e.0 != 6).collect();
    let second = shard_entries[shard_entries.len() - 1].1;
    let end = entries.last().unwrap().2;
    data[second..end].fill(0);
    std::fs::write(&file, &data).unwrap();
    let store = open(copy.path(), "");
    let info = store.shard_info("x").unwrap();
    let got: Vec<i64> = values_of(&store, "x").iter().map(|(o, _)| *o).collect();
    let expected: Vec<i64> = (info.first_offset..10).collect();
    assert!(info.first_offset == 0 || info.first_offset == 5, "{info:?}");
    assert_eq!(
        got, expected,
        "every record at or above the watermark ({info:?})"
    );
}

/// Journal shards keep group offsets in the journal, not in `groups.json`:
/// one entry per commit, found again by replay after a crash and after
/// the segments holding the commits were reclaimed (each catalogue record
/// the shard logs again carries them).
#[test]
fn group_offsets_live_in_the_journal_across_crashes_and_reclaim() {
    let dir = tempfile::tempdir().unwrap();
    let small = "";
    let store = open(dir.path(), small);
    store.create_shard("j", None).unwrap();
    store.create_shard("busy", None).unwrap();
    store.commit_offset("g", "j", 3).unwrap();
    store.commit_offset("h", "j", 4).unwrap();
    store.commit_offset("gone", "j", 1).unwrap();
    assert_eq!(store.delete_group("gone").unwrap(), 1);
    assert!(
        !dir.path().join("groups.json").exists(),
        "no file for journal shards"
    );
    // A crash: the offsets come back from the replayed journal.
    let image = common::crash_copy(dir.path());
    let crashed = open(image.path(), small);
    assert_eq!(crashed.committed_offset("g", "j").unwrap(), Some(3));
    assert_eq!(crashed.committed_offset("h", "j").unwrap(), Some(4));
    assert_eq!(crashed.committed_offset("gone", "j").unwrap(), None);
    drop(crashed);
    // Enough traffic on another shard, trimmed as it goes, for the
    // segments holding the commits to be reclaimed.
    let value = vec![7u8; 4000];
    for _ in 0..200 {
        let offset = store.append("busy", &Record::new(&value)).unwrap();
        store.delete_records_before("busy", offset).unwrap();
    }
    let first_segment = segment_files(dir.path())[0].clone();
    assert!(
        !first_segment.ends_with("00000000000000000000.log"),
        "the oldest segment was reclaimed"
    );
    store.commit_offset("g", "j", 30).unwrap();
    let image = common::crash_copy(dir.path());
    let crashed = open(image.path(), small);
    assert_eq!(crashed.committed_offset("g", "j").unwrap(), Some(30));
    assert_eq!(crashed.committed_offset("h", "j").unwrap(), Some(4));
    assert_eq!(crashed.committed_offset("gone", "j").unwrap(), None);
    drop(crashed);
    // And through the index checkpoint of a clean close.
    store.close().unwrap();
    let store = open(dir.path(), small);
    assert_eq!(store.committed_offset("g", "j").unwrap(), Some(30));
    assert_eq!(store.committed_offset("h", "j").unwrap(), Some(4));
}

/// A store whose journal shards' offsets are in `groups.json` (written by
/// an older version) moves them into the journal at open.
#[test]
fn group_offsets_in_groups_json_move_into_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), "");
    store.create_shard("j", None).unwrap();
    store.close().unwrap();
    std::fs::write(
        dir.path().join("groups.json"),
        r#"[{"group":"old","shard":"j","offset":12},{"group":"x","shard":"deleted","offset":1}]"#,
    )
    .unwrap();
    let store = open(dir.path(), "");
    assert_eq!(store.committed_offset("old", "j").unwrap(), Some(12));
    let file = std::fs::read_to_string(dir.path().join("groups.json")).unwrap();
    assert_eq!(file.trim(), "[]", "moved into the journal");
    store.commit_offset("old", "j", 13).unwrap();
    drop(store);
    let image = common::crash_copy(dir.path());
    let store = open(image.path(), "");
    assert_eq!(store.committed_offset("old", "j").unwrap(), Some(13));
}
