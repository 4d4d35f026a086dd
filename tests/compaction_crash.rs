//! kill -9 while a compacted shard is written and cleaned: a child process
//! appends keyed records (fsync), runs the cleaner now and then, moves the
//! low watermark at times, and has the store's timer clean in the
//! background too; it prints every append once acknowledged. The parent
//! kills it at a random point, reopens the store and checks that the
//! newest acknowledged record of every key is there (or a newer one of
//! that key, in flight at the kill), unless the low watermark passed it,
//! and that every record there is one the children appended. Then the
//! next child goes on from there.

use std::collections::BTreeMap;
use std::ffi::OsStr;

use mqstore::{Config, Record, Store};

mod common;
use common::Rng;

const CHILD_DIR: &str = "MQS_COMPACTION_CRASH_DIR";
const CHILD_ENGINE: &str = "MQS_COMPACTION_CRASH_ENGINE";
const CHILD_SEED: &str = "MQS_COMPACTION_CRASH_SEED";
const KEYS: u64 = 12;

fn config(engine: &str) -> Config {
    Config::from_toml_str(&format!(
        "[store]\nretention_check_ms = 10\ncompaction_bytes_per_s = 200000\n\
         [shard]\nengine = \"{engine}\"\ndurability = \"fsync\"\nsegment_bytes = 65536\n\
         [journal]\nsegment_bytes = 1048576\n"
    ))
    .unwrap()
}

/// The value the child numbered `generation` stores for `key` at `offset`.
fn value(generation: u64, key: &str, offset: i64) -> String {
    format!("{key}:g{generation}-o{offset}-{}", "v".repeat(100))
}

/// The child: appends batches of 1-4 keyed records, compacts after about
/// one batch in six, moves the low watermark after one in forty; prints
/// `acked <offset> <key> <generation>` per record once its append
/// returned, and `low <offset>` before moving the low watermark.
#[test]
#[ignore = "the child process of the kill -9 test, which runs it"]
fn compaction_child() {
    let dir = std::env::var(CHILD_DIR).expect("run by the crash test");
    let engine = std::env::var(CHILD_ENGINE).unwrap();
    let seed: u64 = std::env::var(CHILD_SEED).unwrap().parse().unwrap();
    let mut rng = Rng::new(seed);
    let store = Store::open(&dir, config(&engine)).unwrap();
    if store.list_shards().unwrap().is_empty() {
        store
            .create_shard("s", Some("cleanup_policy = \"compact\""))
            .unwrap();
    }
    loop {
        match rng.below(40) {
            0 => {
                let info = store.shard_info("s").unwrap();
                let span = (info.next_offset - info.first_offset) as u64;
                let low = info.first_offset + rng.below(span / 4 + 1) as i64;
                // Printed first: the parent counts it as maybe done.
                println!("low {low}");
                store.delete_records_before("s", low).unwrap();
            }
            1..=6 => {
                store.compact("s").unwrap();
            }
            _ => {
                let next = store.shard_info("s").unwrap().next_offset;
                let count = 1 + rng.below(4) as i64;
                let keys: Vec<String> = (0..count)
                    .map(|_| format!("k{}", rng.below(KEYS)))
                    .collect();
                let values: Vec<String> = (0..count)
                    .map(|i| value(seed, &keys[i as usize], next + i))
                    .collect();
                let records: Vec<Record<'_>> = keys
                    .iter()
                    .zip(&values)
                    .map(|(k, v)| Record::new(v.as_bytes()).with_key(k.as_bytes()))
                    .collect();
                let base = store.append_batch("s", &records).unwrap();
                assert_eq!(base, next, "one writer");
                for (i, key) in keys.iter().enumerate() {
                    println!("acked {} {key} {seed}", base + i as i64);
                }
            }
        }
    }
}

/// What the children had acknowledged.
#[derive(Default)]
struct Acked {
    /// Newest acknowledged offset of each key, with its generation.
    newest: BTreeMap<String, (i64, u64)>,
    low: i64,
}

impl Acked {
    /// Takes one line of a child's output; true for an acknowledged record.
    fn take(&mut self, line: &str) -> bool {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words[..] {
            ["acked", offset, key, generation] => {
                let offset = offset.parse().unwrap();
                self.newest
                    .insert(key.to_string(), (offset, generation.parse().unwrap()));
                true
            }
            ["low", low] => {
                self.low = self.low.max(low.parse().unwrap());
                false
            }
            _ => false,
        }
    }
}

/// Checks the shard against `acked`; returns how many records it holds.
fn check(store: &Store, acked: &Acked, label: &str) -> usize {
    let info = store.shard_info("s").unwrap();
    let mut present: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut offset = info.first_offset;
    while offset < info.next_offset {
        let read = store.read("s", offset, 1000, usize::MAX).unwrap();
        for r in &read.records {
            let key = String::from_utf8(r.key.as_ref().unwrap().to_vec()).unwrap();
            let text = String::from_utf8(r.value_bytes().to_vec()).unwrap();
            let suffix = format!("-o{}-", r.offset);
            assert!(
                text.starts_with(&format!("{key}:g")) && text.contains(&suffix),
                "{label}: offset {} holds {text:?}, which was never appended there",
                r.offset
            );
            present.entry(key).or_default().push(r.offset);
        }
        offset = read.next_offset;
    }
    for (key, &(newest, generation)) in &acked.newest {
        if newest < acked.low.max(info.first_offset) {
            continue;
        }
        let offsets = present.get(key).map(Vec::as_slice).unwrap_or_default();
        assert!(
            offsets.iter().any(|&o| o >= newest),
            "{label}: key {key}: its newest acknowledged record (offset {newest}, child \
             {generation}) is gone; the shard holds {offsets:?} of it"
        );
    }
    present.values().map(Vec::len).sum()
}

#[test]
fn kill_9_while_compacting() {
    let engines = common::persistent_engines();
    let cycles = common::crash::cycles();
    let mut rng = Rng::seeded();
    for engine in engines {
        let dir = tempfile::tempdir().unwrap();
        let mut acked = Acked::default();
        for cycle in 0..cycles {
            let generation = rng.next() >> 1;
            let seed = generation.to_string();
            let envs: [(&str, &OsStr); 3] = [
                (CHILD_DIR, dir.path().as_os_str()),
                (CHILD_ENGINE, OsStr::new(engine)),
                (CHILD_SEED, OsStr::new(&seed)),
            ];
            let target = 1 + rng.below(200);
            common::crash::run_until_killed("compaction_child", &envs, target, |line| {
                acked.take(line)
            });
            let store = Store::open(dir.path(), config(engine)).unwrap();
            check(&store, &acked, &format!("{engine}, cycle {cycle}"));
            let compaction = store.compact("s").unwrap();
            let left = check(
                &store,
                &acked,
                &format!("{engine}, cycle {cycle}, compacted"),
            );
            assert!(!compaction.pending);
            // One record per key, but for the newest batch (never cleaned).
            assert!(
                left <= KEYS as usize + 4,
                "{engine}: {left} records after compaction"
            );
            store.close().unwrap();
        }
    }
}
