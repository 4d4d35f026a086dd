//! Log compaction (`cleanup_policy = "compact"`) on every engine: a model
//! property test (after a pass, a reader sees exactly the newest record of
//! each key among the cleanable records, through every read path), and the
//! rules around it: keys required, tombstones kept for
//! `delete_retention_ms`, the lag, producers' last batches, the timer.

use std::collections::BTreeMap;

use bytes::Bytes;
use mqstore::format;
use mqstore::{Record, Status, Store};
use proptest::prelude::*;

mod common;

use common::ENGINES;
const KEYS: &[&[u8]] = &[b"k0", b"k1", b"k2", b"k3"];
const HOUR_MS: i64 = 3_600_000;
const LAG_MS: u64 = 600_000;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn open(dir: &std::path::Path, engine: &str) -> Store {
    let durability = if engine == "memory" { "none" } else { "os" };
    let toml = format!(
        "[store]\nretention_check_ms = 0\n[shard]\nengine = \"{engine}\"\ndurability = \"{durability}\"\n\
         segment_bytes = 65536\n"
    );
    Store::open_with_toml(dir, Some(&toml)).unwrap()
}

fn compacted(lag_ms: u64, delete_retention_ms: u64) -> String {
    format!(
        "cleanup_policy = \"compact\"\nmin_compaction_lag_ms = {lag_ms}\n\
         delete_retention_ms = {delete_retention_ms}\n"
    )
}

/// One record as a reader sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    offset: i64,
    key: Vec<u8>,
    value: Option<Vec<u8>>,
    timestamp_ms: i64,
}

fn read_all(store: &Store, shard: &str) -> Vec<Seen> {
    let mut out = Vec::new();
    let mut from = store.shard_info(shard).unwrap().first_offset;
    while from < store.shard_info(shard).unwrap().next_offset {
        let result = store.read(shard, from, 7, 1 << 20).unwrap();
        out.extend(result.records.iter().map(|r| Seen {
            offset: r.offset,
            key: r.key.as_ref().unwrap().to_vec(),
            value: r.value.as_ref().map(|v| v.to_vec()),
            timestamp_ms: r.timestamp_ms,
        }));
        if result.next_offset <= from {
            panic!("read from {from} did not progress");
        }
        from = result.next_offset;
    }
    out
}

/// The records a transfer of the whole shard sends, decoded.
fn transferred(store: &Store, shard: &str) -> Vec<(i64, Vec<u8>)> {
    let info = store.shard_info(shard).unwrap();
    let plan = store
        .plan_transfer(shard, info.first_offset, usize::MAX)
        .unwrap();
    let bytes = Bytes::from(plan.to_vec().unwrap());
    let mut out = Vec::new();
    for batch in format::split_batches(&bytes).unwrap() {
        format::for_each_record(&batch, true, |r| {
            out.push((r.offset, r.key.unwrap().to_vec()));
            true
        })
        .unwrap();
    }
    out
}

/// A batch in the model: its records, all with one timestamp.
#[derive(Clone, Debug)]
struct ModelBatch {
    base: i64,
    last: i64,
    recent: bool,
    records: Vec<Seen>,
}

#[derive(Clone, Debug)]
enum Op {
    /// A batch of (key, value: None = tombstone); `recent` batches are
    /// younger than the lag, the others an hour old.
    Append {
        records: Vec<(usize, Option<u8>)>,
        recent: bool,
    },
    Compact,
    DeleteBefore(i64),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    let record = (0..KEYS.len(), prop::option::weighted(0.8, any::<u8>()));
    prop_oneof![
        6 => (prop::collection::vec(record, 1..5), prop::bool::weighted(0.15))
            .prop_map(|(records, recent)| Op::Append { records, recent }),
        3 => Just(Op::Compact),
        1 => (0i64..40).prop_map(Op::DeleteBefore),
        1 => Just(Op::Reopen),
    ]
}

struct Model {
    batches: Vec<ModelBatch>,
    next: i64,
    low: i64,
}

impl Model {
    /// Where the cleaner stops: the newest batch, or the first batch
    /// younger than the lag, whichever comes first.
    fn horizon(&self) -> i64 {
        let newest = self.batches.last().map_or(self.next, |b| b.base);
        let first_recent = self
            .batches
            .iter()
            .find(|b| b.recent)
            .map_or(self.next, |b| b.base);
        newest.min(first_recent)
    }

    /// What a pass leaves: below the horizon, the newest record of each
    /// key, tombstones only while younger than `tombstone_cutoff`.
    fn compact(&mut self, tombstone_cutoff: i64) {
        let horizon = self.horizon();
        let mut newest: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
        for record in self.records().filter(|r| r.offset < horizon) {
            newest.insert(record.key.clone(), record.offset);
        }
        for batch in &mut self.batches {
            batch.records.retain(|r| {
                r.offset >= horizon
                    || (newest[&r.key] == r.offset
                        && (r.value.is_some() || r.timestamp_ms >= tombstone_cutoff))
            });
        }
    }

    fn records(&self) -> impl Iterator<Item = &Seen> {
        self.batches.iter().flat_map(|b| b.records.iter())
    }

    fn delete_before(&mut self, offset: i64) {
        self.low = self.low.max(offset.min(self.next));
        let low = self.low;
        // Batches wholly below the low watermark are gone.
        self.batches.retain(|b| b.last >= low);
        for batch in &mut self.batches {
            batch.records.retain(|r| r.offset >= low);
        }
    }
}

fn check(store: &Store, model: &Model) {
    let expected: Vec<Seen> = model.records().cloned().collect();
    let info = store.shard_info("c").unwrap();
    assert_eq!(info.next_offset, model.next);
    assert_eq!(read_all(store, "c"), expected, "read");
    let sent: Vec<(i64, Vec<u8>)> = expected.iter().map(|r| (r.offset, r.key.clone())).collect();
    assert_eq!(transferred(store, "c"), sent, "transfer");
    for key in KEYS {
        let found: Vec<i64> = store
            .read_by_keys("c", &[key], 1000)
            .unwrap()
            .iter()
            .map(|r| r.offset)
            .collect();
        let wanted: Vec<i64> = expected
            .iter()
            .filter(|r| r.key == *key)
            .map(|r| r.offset)
            .collect();
        assert_eq!(found, wanted, "read_by_keys {key:?}");
    }
    // Gaps: a timestamp lookup lands on the first record still there.
    for probe in [0, now_ms() - HOUR_MS, now_ms() - HOUR_MS + 1] {
        let found = store.offset_for_timestamp("c", probe).unwrap();
        let wanted = expected
            .iter()
            .find(|r| r.timestamp_ms >= probe)
            .map(|r| r.offset);
        assert_eq!(found, wanted, "offset_for_timestamp {probe}");
    }
}

fn run_model(engine: &str, ops: &[Op], delete_retention_ms: u64) {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), engine);
    store
        .create_shard("c", Some(&compacted(LAG_MS, delete_retention_ms)))
        .unwrap();
    let old = now_ms() - HOUR_MS;
    let mut model = Model {
        batches: Vec::new(),
        next: 0,
        low: 0,
    };
    for op in ops {
        match op {
            Op::Append { records, recent } => {
                let timestamp_ms = if *recent { now_ms() } else { old };
                let values: Vec<Option<[u8; 1]>> =
                    records.iter().map(|(_, v)| v.map(|v| [v])).collect();
                let input: Vec<Record<'_>> = records
                    .iter()
                    .zip(&values)
                    .map(|((key, _), value)| Record {
                        key: Some(KEYS[*key]),
                        value: value.as_ref().map(|v| &v[..]),
                        timestamp_ms,
                        ..Default::default()
                    })
                    .collect();
                let base = store.append_batch("c", &input).unwrap();
                assert_eq!(base, model.next);
                let seen = records
                    .iter()
                    .zip(&values)
                    .enumerate()
                    .map(|(i, ((key, _), value))| Seen {
                        offset: base + i as i64,
                        key: KEYS[*key].to_vec(),
                        value: value.map(|v| v.to_vec()),
                        timestamp_ms,
                    })
                    .collect();
                model.batches.push(ModelBatch {
                    base,
                    last: base + records.len() as i64 - 1,
                    recent: *recent,
                    records: seen,
                });
                model.next = base + records.len() as i64;
            }
            Op::Compact => {
                let report = store.compact("c").unwrap();
                assert!(!report.pending);
                model.compact(now_ms() - delete_retention_ms as i64);
            }
            Op::DeleteBefore(offset) => {
                let offset = (*offset).clamp(model.low, model.next);
                store.delete_records_before("c", offset).unwrap();
                model.delete_before(offset);
            }
            Op::Reopen if engine != "memory" => {
                store.close().unwrap();
                store = open(dir.path(), engine);
            }
            Op::Reopen => {}
        }
        check(&store, &model);
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: common::model_cases(64),
        ..ProptestConfig::default()
    })]

    #[test]
    fn compaction_keeps_the_newest_record_of_each_key(
        ops in prop::collection::vec(op(), 1..40),
        engine in 0..ENGINES.len(),
    ) {
        // Tombstones kept (a day), then removed at once (an hour old > 1 min).
        run_model(ENGINES[engine], &ops, 86_400_000);
        run_model(ENGINES[engine], &ops, 60_000);
    }
}

fn store_with(engine: &str, options: &str) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), engine);
    store.create_shard("c", Some(options)).unwrap();
    (dir, store)
}

fn tombstone(key: &[u8], timestamp_ms: i64) -> Record<'_> {
    Record {
        timestamp_ms,
        ..Record::tombstone(key)
    }
}

fn keyed<'a>(key: &'a [u8], value: &'a [u8], timestamp_ms: i64) -> Record<'a> {
    Record {
        key: Some(key),
        value: Some(value),
        timestamp_ms,
        ..Default::default()
    }
}

#[test]
fn records_without_a_key_are_refused_and_nothing_is_stored() {
    for engine in ENGINES {
        let (_dir, store) = store_with(engine, &compacted(0, 0));
        let batch = [keyed(b"k", b"v", 0), Record::new(b"no key")];
        let err = store.append_batch("c", &batch).unwrap_err();
        assert_eq!(err.status(), Status::InvalidArgument);
        assert!(err.to_string().contains("record 1 has no key"), "{err}");
        // A producer's batch is decoded and refused the same way.
        let raw = format::encode_batch(&batch, mqstore::Compression::Lz4, now_ms()).unwrap();
        let err = store.append_raw("c", &raw.bytes).unwrap_err();
        assert_eq!(err.status(), Status::InvalidArgument);
        assert!(
            err.to_string()
                .contains("batch 0, record at offset delta 1"),
            "{err}"
        );
        assert_eq!(store.shard_info("c").unwrap().next_offset, 0);
        // Keys present: stored.
        store.append_batch("c", &batch[..1]).unwrap();
    }
}

#[test]
fn compact_alone_refuses_retention_limits_and_other_shards_refuse_compact() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), "memory");
    let err = store
        .create_shard(
            "c",
            Some("cleanup_policy = \"compact\"\nretention_ms = 1000"),
        )
        .unwrap_err();
    assert_eq!(err.status(), Status::InvalidConfig);
    assert!(err.to_string().contains("compact,delete"), "{err}");
    let err = store
        .create_shard("c", Some("cleanup_policy = \"compacted\""))
        .unwrap_err();
    assert_eq!(err.status(), Status::InvalidConfig);
    store
        .create_shard(
            "both",
            Some("cleanup_policy = \"compact,delete\"\nretention_ms = 1000"),
        )
        .unwrap();
    store.create_shard("plain", None).unwrap();
    let err = store.compact("plain").unwrap_err();
    assert_eq!(err.status(), Status::InvalidArgument);
    assert!(err.to_string().contains("'delete'"), "{err}");
    // Plain shards take records without keys.
    store.append("plain", &Record::new(b"v")).unwrap();
}

#[test]
fn the_lag_and_the_newest_batch_are_never_compacted() {
    let old = now_ms() - HOUR_MS;
    for engine in ENGINES {
        let (_dir, store) = store_with(engine, &compacted(LAG_MS, 86_400_000));
        store.append("c", &keyed(b"k", b"1", old)).unwrap();
        store.append("c", &keyed(b"k", b"2", old)).unwrap();
        store.append("c", &keyed(b"k", b"3", now_ms())).unwrap();
        store.append("c", &keyed(b"k", b"4", old)).unwrap();
        store.compact("c").unwrap();
        // Offset 0 went (1 is newer); 2 is within the lag, so 1 and
        // everything after it stay.
        let values: Vec<Vec<u8>> = read_all(&store, "c")
            .into_iter()
            .map(|r| r.value.unwrap())
            .collect();
        assert_eq!(
            values,
            [b"2".to_vec(), b"3".to_vec(), b"4".to_vec()],
            "{engine}"
        );
        // The newest batch alone is never touched, however old.
        let (_dir, store) = store_with(engine, &compacted(0, 86_400_000));
        store
            .append_batch("c", &[keyed(b"k", b"1", old), keyed(b"k", b"2", old)])
            .unwrap();
        assert_eq!(store.compact("c").unwrap().removed, 0, "{engine}");
        assert_eq!(read_all(&store, "c").len(), 2);
    }
}

#[test]
fn a_tombstone_outlives_its_key_by_delete_retention_then_goes() {
    for engine in ENGINES {
        let (_dir, store) = store_with(engine, &compacted(0, 60_000));
        let recent = now_ms();
        let old = recent - HOUR_MS;
        store.append("c", &keyed(b"gone", b"v", old)).unwrap();
        store.append("c", &tombstone(b"gone", old)).unwrap();
        store.append("c", &keyed(b"kept", b"v", recent)).unwrap();
        store.append("c", &tombstone(b"kept", recent)).unwrap();
        store.append("c", &keyed(b"last", b"v", recent)).unwrap();
        let report = store.compact("c").unwrap();
        // The old tombstone and its key's value went; the young tombstone
        // removed its key's value and stays.
        assert_eq!(report.removed, 3, "{engine}");
        let left: Vec<(Vec<u8>, bool)> = read_all(&store, "c")
            .into_iter()
            .map(|r| (r.key, r.value.is_none()))
            .collect();
        assert_eq!(
            left,
            [(b"kept".to_vec(), true), (b"last".to_vec(), false)],
            "{engine}"
        );
    }
}

/// A producer batch of `key` → `value` (producer 7, epoch 0).
fn producer_batch(sequence: i32, key: &[u8], value: &[u8]) -> Vec<u8> {
    let record = keyed(key, value, now_ms() - HOUR_MS);
    let mut bytes = format::encode_batch(&[record], mqstore::Compression::None, 0)
        .unwrap()
        .bytes;
    let b = &mut bytes;
    b[format::PRODUCER_ID_OFFSET..][..8].copy_from_slice(&7i64.to_be_bytes());
    b[format::PRODUCER_EPOCH_OFFSET..][..2].copy_from_slice(&0i16.to_be_bytes());
    b[format::BASE_SEQUENCE_OFFSET..][..4].copy_from_slice(&sequence.to_be_bytes());
    let crc = crc32c::crc32c(&bytes[format::ATTRIBUTES_OFFSET..]);
    bytes[format::CRC_OFFSET..format::ATTRIBUTES_OFFSET].copy_from_slice(&crc.to_be_bytes());
    bytes
}

#[test]
fn a_producers_last_batch_is_kept_whole() {
    for engine in ENGINES {
        let (_dir, store) = store_with(engine, &compacted(0, 86_400_000));
        store
            .append_raw("c", &producer_batch(0, b"k", b"1"))
            .unwrap();
        store
            .append_raw("c", &producer_batch(1, b"k", b"2"))
            .unwrap();
        store
            .append("c", &keyed(b"k", b"3", now_ms() - HOUR_MS))
            .unwrap();
        store.append("c", &keyed(b"other", b"x", now_ms())).unwrap();
        store.compact("c").unwrap();
        let offsets: Vec<i64> = read_all(&store, "c").iter().map(|r| r.offset).collect();
        // Offset 0 went; offset 1 is the producer's last batch.
        assert_eq!(offsets, [1, 2, 3], "{engine}");
        // Its state still answers a retry with the original offset.
        let err = store
            .append_raw("c", &producer_batch(1, b"k", b"2"))
            .unwrap_err();
        assert_eq!(err.status(), Status::DuplicateSequence, "{engine}");
    }
}

#[test]
fn the_timer_compacts_without_being_asked() {
    let dir = tempfile::tempdir().unwrap();
    let toml =
        "[store]\nretention_check_ms = 10\n[shard]\nengine = \"journal\"\ndurability = \"os\"\n";
    let store = Store::open_with_toml(dir.path(), Some(toml)).unwrap();
    store
        .create_shard("c", Some(&compacted(0, 86_400_000)))
        .unwrap();
    let old = now_ms() - HOUR_MS;
    for value in [b"1", b"2", b"3"] {
        store.append("c", &keyed(b"k", value, old)).unwrap();
    }
    store.append("c", &keyed(b"end", b"x", old)).unwrap();
    // Polls the timer's result; the bound only turns a hang into a failure.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while read_all(&store, "c").len() > 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the timer never compacted"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let stats = store.shard_stats("c").unwrap();
    assert_eq!(stats["compaction"]["removed_records"], 2);
    assert!(stats["compaction"]["passes"].as_u64().unwrap() >= 1);
}

#[test]
fn a_truncation_below_a_compacted_key_keeps_its_older_value() {
    for engine in ENGINES {
        let (_dir, store) = store_with(engine, &compacted(0, 86_400_000));
        let old = now_ms() - HOUR_MS;
        store.append("c", &keyed(b"k", b"1", old)).unwrap();
        store.append("c", &keyed(b"other", b"x", old)).unwrap();
        store.truncate_to("c", 1).unwrap();
        store.append("c", &keyed(b"k", b"2", old)).unwrap();
        store.append("c", &keyed(b"end", b"x", old)).unwrap();
        store.compact("c").unwrap();
        let left: Vec<(i64, Vec<u8>)> = read_all(&store, "c")
            .into_iter()
            .map(|r| (r.offset, r.value.unwrap()))
            .collect();
        assert_eq!(left, [(1, b"2".to_vec()), (2, b"x".to_vec())], "{engine}");
    }
}

/// Copies what `leader` has beyond `follower`'s end, as a follower's fetch
/// loop does.
fn replicate(leader: &Store, follower: &Store) {
    loop {
        let from = follower.shard_info("c").unwrap().next_offset;
        if from >= leader.shard_info("c").unwrap().next_offset {
            return;
        }
        let plan = leader.plan_transfer("c", from, 300).unwrap();
        let next = follower
            .append_replica("c", &plan.to_vec().unwrap())
            .unwrap();
        assert_eq!(next, plan.next_offset().max(next));
    }
}

#[test]
fn a_follower_copies_a_compacted_leader_with_its_gaps() {
    let old = now_ms() - HOUR_MS;
    for engine in ENGINES {
        let (leader_dir, leader) = store_with(engine, &compacted(0, 86_400_000));
        let follower_dir = tempfile::tempdir().unwrap();
        let mut follower = open(follower_dir.path(), engine);
        follower
            .create_shard("c", Some(&compacted(0, 86_400_000)))
            .unwrap();
        for round in 0..3u8 {
            for i in 0..30u8 {
                let key = [b'k', i % 4];
                let value = [round, i];
                let batch = [keyed(&key, &value, old), keyed(b"x", &value, old)];
                leader
                    .append_batch("c", &batch[..1 + usize::from(i % 2)])
                    .unwrap();
            }
            // Whole batches and records inside batches go: gaps of both kinds.
            assert!(leader.compact("c").unwrap().removed > 0);
            let copied_from = follower.shard_info("c").unwrap().next_offset;
            replicate(&leader, &follower);
            let since = |records: Vec<Seen>| {
                records
                    .into_iter()
                    .filter(|r| r.offset >= copied_from)
                    .collect::<Vec<_>>()
            };
            let copied = since(read_all(&leader, "c"));
            assert_eq!(since(read_all(&follower, "c")), copied, "{engine}");
            if *engine != "memory" {
                follower.close().unwrap();
                follower = open(follower_dir.path(), engine);
                assert_eq!(since(read_all(&follower, "c")), copied, "{engine}");
            }
            // What it copied earlier the follower compacts on its own; then
            // both agree.
            follower.compact("c").unwrap();
            assert_eq!(read_all(&follower, "c"), read_all(&leader, "c"), "{engine}");
        }
        drop(leader_dir);
    }
}
