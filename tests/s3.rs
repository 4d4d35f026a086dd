//! The S3 engine's requests against the real server (scripts/with-servers.sh
//! starts it): what the objects' footers and the lazy transfer plans save.
//! The block cache is off, so every batch read is a GET the test counts.
#![cfg(feature = "s3")]

use mqstore::{Config, Record, Store};

mod common;

const SHARD: &str = "k";
const BATCHES: usize = 20;
const RECORDS: usize = 4;

fn config() -> Config {
    Config::from_toml_str(
        "[shard]\nengine = \"s3\"\n\
         [s3]\nobject_bytes = 65536\nblock_bytes = 4096\nreadahead_blocks = 0\ncache_bytes = 0\n",
    )
    .unwrap()
}

/// A store holding `BATCHES` batches of `RECORDS` keyed records (one
/// object each: blocking `fsync` appends), reopened so that nothing is in
/// memory. Each object holds over half of `object_bytes`, so the flusher
/// never merges them (which would add GETs to the counts).
fn reopened_store(dir: &std::path::Path) -> Store {
    let store = Store::open(dir, config()).unwrap();
    store.create_shard(SHARD, None).unwrap();
    for b in 0..BATCHES {
        let keys: Vec<String> = (0..RECORDS).map(|r| format!("key-{b}-{r}")).collect();
        let value = vec![b as u8; 9000];
        let batch: Vec<Record<'_>> = keys
            .iter()
            .map(|k| Record::new(&value).with_key(k.as_bytes()))
            .collect();
        store.append_batch(SHARD, &batch).unwrap();
    }
    store.close().unwrap();
    Store::open(dir, config()).unwrap()
}

/// The S3 GETs the store made so far.
fn gets(store: &Store) -> u64 {
    fn find(value: &serde_json::Value) -> Option<u64> {
        match value {
            serde_json::Value::Object(map) => map
                .get("requests")
                .and_then(|r| r["gets"].as_u64())
                .or_else(|| map.values().find_map(find)),
            _ => None,
        }
    }
    find(&store.shard_stats(SHARD).unwrap()).expect("the S3 request counters")
}

#[test]
fn key_lookups_after_an_open_fetch_only_the_batches_their_footer_filters_allow() {
    common::require_servers("s3");
    let dir = tempfile::tempdir().unwrap();
    let store = reopened_store(dir.path());
    let before = gets(&store);
    let found = store
        .read_by_keys(SHARD, &[b"key-7-2"], usize::MAX)
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].offset, (7 * RECORDS + 2) as i64);
    let fetched = gets(&store) - before;
    // Without the footers' filters every one of the 20 batches is fetched.
    assert!(
        fetched <= 2,
        "{fetched} GETs for one key: the batches the filters rule out were fetched"
    );
    let none = store
        .read_by_keys(SHARD, &[b"no-such-key"], usize::MAX)
        .unwrap();
    assert!(none.is_empty());
    assert_eq!(
        gets(&store) - before,
        fetched,
        "a key no filter holds fetches nothing"
    );
}

#[test]
fn a_transfer_of_cold_batches_fetches_them_while_it_is_read_and_outlives_their_deletion() {
    common::require_servers("s3");
    let dir = tempfile::tempdir().unwrap();
    let store = reopened_store(dir.path());
    let expected: Vec<Vec<u8>> = store
        .read(SHARD, 0, usize::MAX, usize::MAX)
        .unwrap()
        .records
        .iter()
        .map(|r| r.value_bytes().to_vec())
        .collect();
    assert_eq!(expected.len(), BATCHES * RECORDS);
    let before = gets(&store);
    let plan = store.plan_transfer(SHARD, 0, usize::MAX).unwrap();
    assert_eq!(gets(&store), before, "planning fetches nothing");
    // Retention drops every object the plan lists before it is sent.
    let next = store.shard_info(SHARD).unwrap().next_offset;
    store.delete_records_before(SHARD, next).unwrap();
    let bytes = bytes::Bytes::from(plan.to_vec().unwrap());
    assert_eq!(bytes.len() as u64, plan.total_bytes());
    assert!(gets(&store) > before, "fetched while read");
    let mut values = Vec::new();
    for batch in mqstore::format::split_batches(&bytes).unwrap() {
        for record in mqstore::format::decode_batch(&batch, true).unwrap() {
            values.push(record.value_bytes().to_vec());
        }
    }
    assert_eq!(values, expected);
}

/// `unsigned_payload`: requests signed without a hash of their body are
/// accepted by the server (it checks the signature), and what they stored
/// reads back after a reopen.
#[test]
fn unsigned_payloads_store_and_read_back() {
    common::require_servers("s3");
    let dir = tempfile::tempdir().unwrap();
    let config = || {
        Config::from_toml_str("[shard]\nengine = \"s3\"\n[s3]\nunsigned_payload = true\n").unwrap()
    };
    assert!(config().s3.unsigned_payload);
    let store = Store::open(dir.path(), config()).unwrap();
    store.create_shard(SHARD, None).unwrap();
    let values: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 5000]).collect();
    for value in &values {
        store.append(SHARD, &Record::new(value)).unwrap();
    }
    store.close().unwrap();
    let store = Store::open(dir.path(), config()).unwrap();
    let got = store.read(SHARD, 0, usize::MAX, usize::MAX).unwrap();
    let read: Vec<Vec<u8>> = got
        .records
        .iter()
        .map(|r| r.value_bytes().to_vec())
        .collect();
    assert_eq!(read, values);
}
