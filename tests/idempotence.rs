//! Idempotent producers through `Store::append_raw`: retries answered with
//! their original offsets and stored once, fencing, sequence gaps, and a
//! producer state that survives a clean restart (snapshot) and a crash
//! (rebuilt from the log).

use mqstore::format::{
    encode_batch, ATTRIBUTES_OFFSET, BASE_SEQUENCE_OFFSET, CRC_OFFSET, PRODUCER_EPOCH_OFFSET,
    PRODUCER_ID_OFFSET,
};
use mqstore::{Compression, Error, Record, Status, Store};

mod common;

/// A batch of `count` records from producer `pid`, epoch `epoch`, first
/// sequence `seq`.
fn batch(pid: i64, epoch: i16, seq: i32, count: usize) -> Vec<u8> {
    let values: Vec<Vec<u8>> = (0..count)
        .map(|i| format!("p{pid}-s{}", seq as usize + i).into_bytes())
        .collect();
    let records: Vec<Record<'_>> = values.iter().map(|v| Record::new(v)).collect();
    let mut b = encode_batch(&records, Compression::None, 1_700_000_000_000)
        .unwrap()
        .bytes;
    b[PRODUCER_ID_OFFSET..PRODUCER_ID_OFFSET + 8].copy_from_slice(&pid.to_be_bytes());
    b[PRODUCER_EPOCH_OFFSET..PRODUCER_EPOCH_OFFSET + 2].copy_from_slice(&epoch.to_be_bytes());
    b[BASE_SEQUENCE_OFFSET..BASE_SEQUENCE_OFFSET + 4].copy_from_slice(&seq.to_be_bytes());
    let crc = crc32c::crc32c(&b[ATTRIBUTES_OFFSET..]);
    b[CRC_OFFSET..ATTRIBUTES_OFFSET].copy_from_slice(&crc.to_be_bytes());
    b
}

fn open(dir: &std::path::Path, engine: &str) -> Store {
    let config = format!("[shard]\nengine = \"{engine}\"\n");
    Store::open_with_toml(dir, Some(&config)).unwrap()
}

/// The original offsets a retry is answered with.
fn duplicate_offsets(result: mqstore::Result<Vec<i64>>) -> Vec<i64> {
    match result {
        Err(Error::DuplicateSequence { base_offsets, .. }) => base_offsets,
        other => panic!("expected a duplicate, got {other:?}"),
    }
}

#[test]
fn retries_fencing_and_gaps_on_every_engine() {
    for engine in ["memory", "journal", "file"] {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), engine);
        store.create_shard("t", None).unwrap();
        assert_eq!(store.append_raw("t", &batch(7, 0, 0, 3)).unwrap(), vec![0]);
        assert_eq!(store.append_raw("t", &batch(8, 0, 0, 1)).unwrap(), vec![3]);
        assert_eq!(store.append_raw("t", &batch(7, 0, 3, 2)).unwrap(), vec![4]);
        // A retry of either batch: its offsets, nothing stored.
        let retry = store.append_raw("t", &batch(7, 0, 0, 3));
        assert_eq!(
            retry.as_ref().unwrap_err().status(),
            Status::DuplicateSequence
        );
        assert_eq!(duplicate_offsets(retry), vec![0], "{engine}");
        assert_eq!(
            duplicate_offsets(store.append_raw_nowait("t", &batch(7, 0, 3, 2))),
            vec![4]
        );
        assert_eq!(store.shard_info("t").unwrap().next_offset, 6, "{engine}");
        // A gap, a stale epoch, a new epoch not at 0: refused, nothing stored.
        for (bad, status) in [
            (batch(7, 0, 9, 1), Status::OutOfOrderSequence),
            (batch(7, 1, 5, 1), Status::OutOfOrderSequence),
        ] {
            let err = store.append_raw("t", &bad).unwrap_err();
            assert_eq!(err.status(), status, "{engine}: {err}");
        }
        assert_eq!(store.append_raw("t", &batch(7, 1, 0, 1)).unwrap(), vec![6]);
        let err = store.append_raw("t", &batch(7, 0, 5, 1)).unwrap_err();
        assert_eq!(err.status(), Status::ProducerFenced, "{engine}: {err}");
        assert!(
            err.to_string()
                .contains("epoch 0 is older than its current epoch 1"),
            "{err}"
        );
        assert_eq!(store.shard_info("t").unwrap().next_offset, 7, "{engine}");
        // Several batches of one producer in one request, then its retry.
        let pair = [batch(9, 0, 0, 2), batch(9, 0, 2, 2)].concat();
        assert_eq!(store.append_raw("t", &pair).unwrap(), vec![7, 9]);
        assert_eq!(duplicate_offsets(store.append_raw("t", &pair)), vec![7, 9]);
        // Records without a producer id are never checked.
        store.append_batch("t", &[Record::new(b"plain")]).unwrap();
        assert_eq!(store.shard_info("t").unwrap().next_offset, 12, "{engine}");
    }
}

#[test]
fn producer_state_survives_a_clean_restart_and_a_crash() {
    for engine in ["journal", "file"] {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(dir.path(), engine);
            store.create_shard("t", None).unwrap();
            store.append_raw("t", &batch(1, 0, 0, 2)).unwrap();
            store.append_raw("t", &batch(1, 0, 2, 2)).unwrap();
            store.close().unwrap();
        }
        let store = open(dir.path(), engine);
        // From the snapshot the clean close wrote.
        assert_eq!(
            duplicate_offsets(store.append_raw("t", &batch(1, 0, 2, 2))),
            vec![2]
        );
        assert_eq!(store.append_raw("t", &batch(1, 0, 4, 1)).unwrap(), vec![4]);
        store.append_raw("t", &batch(2, 3, 0, 1)).unwrap();
        // A crash: the copy has no snapshot, the state comes from the log.
        let crashed = common::crash_copy(dir.path());
        assert!(!crashed.path().join("producers.json").exists());
        let store = open(crashed.path(), engine);
        assert_eq!(
            duplicate_offsets(store.append_raw("t", &batch(1, 0, 4, 1))),
            vec![4]
        );
        assert_eq!(
            duplicate_offsets(store.append_raw("t", &batch(2, 3, 0, 1))),
            vec![5]
        );
        let err = store.append_raw("t", &batch(1, 0, 7, 1)).unwrap_err();
        assert_eq!(err.status(), Status::OutOfOrderSequence, "{engine}");
        assert_eq!(store.shard_info("t").unwrap().next_offset, 6);
    }
}

#[test]
fn a_deleted_shard_takes_its_producers_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), "journal");
    store.create_shard("t", None).unwrap();
    store.append_raw("t", &batch(5, 0, 0, 1)).unwrap();
    store.delete_shard("t").unwrap();
    store.create_shard("t", None).unwrap();
    // The old batch is new to the new shard.
    assert_eq!(store.append_raw("t", &batch(5, 0, 0, 1)).unwrap(), vec![0]);
    store.close().unwrap();
}

#[test]
fn idle_producers_are_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let config = "[store]\nproducer_expiry_ms = 1\n[shard]\nengine = \"memory\"\n";
    let store = Store::open_with_toml(dir.path(), Some(config)).unwrap();
    store.create_shard("t", None).unwrap();
    store.append_raw("t", &batch(5, 0, 0, 1)).unwrap();
    assert_eq!(
        store
            .append_raw("t", &batch(5, 0, 9, 1))
            .unwrap_err()
            .status(),
        Status::OutOfOrderSequence
    );
    // Once the clock has moved past the expiry, producer 5 is unknown and
    // may start anywhere.
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    };
    let start = now();
    while now() < start + 3 {
        std::hint::spin_loop();
    }
    assert_eq!(store.append_raw("t", &batch(5, 0, 9, 1)).unwrap(), vec![1]);
    let err = Store::open_with_toml(
        tempfile::tempdir().unwrap().path(),
        Some("[store]\nproducer_expiry_ms = 0\n"),
    )
    .unwrap_err();
    assert_eq!(err.status(), Status::InvalidConfig);
}
