//! The edge footprint workload as a test, to run by hand under
//! `/usr/bin/time -v` (the benchmark harness runs the same workload in a
//! forked child and reports its ru_maxrss as file.edge_1000shards.peak_rss_mb):
//!
//!   cargo test -p mqstore --release --test file_edge --no-run
//!   MQS_EDGE_BYTES=5368709120 /usr/bin/time -v target/release/deps/file_edge-* \
//!       --ignored --exact edge_1000_shards_append_and_read_back --nocapture
//!
//! Ignored in normal runs: 5 GiB is a benchmark, not a unit test (`make
//! test` covers the budgets in file_recovery.rs).

use mqstore::{Config, Preset, Record, Store};

#[test]
#[ignore]
fn edge_1000_shards_append_and_read_back() {
    let total: u64 = std::env::var("MQS_EDGE_BYTES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256 << 20);
    let parent = std::env::var("MQS_EDGE_DIR").unwrap_or_else(|_| ".".into());
    let dir = tempfile::tempdir_in(parent).unwrap();
    let store = Store::open(dir.path(), Config::preset(Preset::Edge)).unwrap();
    let names: Vec<String> = (0..1000).map(|i| format!("edge-{i:04}")).collect();
    for name in &names {
        store.create_shard(name, None).unwrap();
    }
    let data: Vec<u8> = (0..64 * 1024u32)
        .map(|i| (i * 7 + i / 1024) as u8)
        .collect();
    let batch: Vec<Record<'_>> = data.chunks(1024).map(Record::new).collect();
    let started = std::time::Instant::now();
    let mut written = 0u64;
    let mut round = 0;
    while written < total {
        store.append_batch(&names[round % 1000], &batch).unwrap();
        written += data.len() as u64;
        round += 1;
    }
    let append_s = started.elapsed().as_secs_f64();
    let started = std::time::Instant::now();
    let mut records = 0u64;
    let mut touched = 0u8;
    for name in &names {
        let end = store.shard_info(name).unwrap().next_offset;
        let mut offset = 0;
        while offset < end {
            let result = store.read(name, offset, usize::MAX, 1 << 20).unwrap();
            for record in &result.records {
                touched ^= record.value_bytes()[record.value_bytes().len() / 2];
            }
            records += result.records.len() as u64;
            offset = result.next_offset;
        }
    }
    let read_s = started.elapsed().as_secs_f64();
    assert_eq!(records, written / 1024);
    let maps = store.shard_stats("edge-0000").unwrap()["engine_stats"]["engine"]["maps"].clone();
    store.close().unwrap();
    eprintln!(
        "edge: {written} bytes over 1000 shards appended in {append_s:.1} s ({:.2} GB/s), \
         read back in {read_s:.1} s ({:.2} GB/s); maps {maps}; checksum {touched}",
        written as f64 / append_s / 1e9,
        written as f64 / read_s / 1e9
    );
}
