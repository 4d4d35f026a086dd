//! kill -9 of a follower while it appends and cuts its tail: a child
//! process appends batches and truncates to random batch boundaries, one
//! operation at a time, printing each one before it starts and once it
//! returned; the parent kills it at a random point, reopens the store and
//! checks that the shard holds exactly what the finished operations left,
//! or that plus the one in flight (for the file engine's cut in flight,
//! any prefix between the two). Then the next child goes on from there.

use std::ffi::OsStr;

use mqstore::{Config, Record, Store};

mod common;
use common::Rng;

const CHILD_DIR: &str = "MQS_TRUNCATE_CRASH_DIR";
const CHILD_ENGINE: &str = "MQS_TRUNCATE_CRASH_ENGINE";
const CHILD_SEED: &str = "MQS_TRUNCATE_CRASH_SEED";

fn config(engine: &str) -> Config {
    Config::from_toml_str(&format!(
        "[shard]\nengine = \"{engine}\"\ndurability = \"fsync\"\nsegment_bytes = 65536\n\
         [journal]\nsegment_bytes = 1048576\n"
    ))
    .unwrap()
}

/// The value stored at `offset` by the child numbered `generation`.
fn value(generation: u64, offset: i64) -> String {
    format!("g{generation}-o{offset}-{}", "v".repeat(200))
}

/// The shard as (offset, value) pairs.
fn contents(store: &Store) -> Vec<(i64, String)> {
    let info = store.shard_info("s").unwrap();
    let mut out = Vec::new();
    let mut offset = info.first_offset;
    while offset < info.next_offset {
        let read = store.read("s", offset, 1000, usize::MAX).unwrap();
        for r in &read.records {
            out.push((
                r.offset,
                String::from_utf8(r.value_bytes().to_vec()).unwrap(),
            ));
        }
        offset = read.next_offset;
    }
    out
}

/// The child: appends batches of 1-8 records and now and then cuts the
/// tail at a random batch boundary, forever. Each operation is printed as
/// `begin …` before it starts and `done` once it returned.
#[test]
#[ignore = "the child process of the kill -9 test, which runs it"]
fn truncate_child() {
    let dir = std::env::var(CHILD_DIR).expect("run by the crash test");
    let engine = std::env::var(CHILD_ENGINE).unwrap();
    let seed: u64 = std::env::var(CHILD_SEED).unwrap().parse().unwrap();
    let mut rng = Rng::new(seed);
    let store = Store::open(&dir, config(&engine)).unwrap();
    if store.list_shards().unwrap().is_empty() {
        store.create_shard("s", None).unwrap();
    }
    // Batch boundaries: every batch this child appended, and the shard's
    // start (boundaries left by earlier children are not known here).
    let mut boundaries = vec![store.shard_info("s").unwrap().next_offset];
    loop {
        let next = store.shard_info("s").unwrap().next_offset;
        if rng.below(5) == 0 && boundaries.len() > 1 {
            let cut = boundaries[rng.below(boundaries.len() as u64) as usize];
            println!("begin truncate {cut}");
            store.truncate_to("s", cut).unwrap();
            boundaries.retain(|&b| b <= cut);
        } else {
            let count = 1 + rng.below(8) as i64;
            let values: Vec<String> = (next..next + count).map(|o| value(seed, o)).collect();
            println!("begin append {next} {count}");
            let records: Vec<Record<'_>> =
                values.iter().map(|v| Record::new(v.as_bytes())).collect();
            store.append_batch("s", &records).unwrap();
            boundaries.push(next + count);
        }
        println!("done");
    }
}

enum Op {
    Append { base: i64, count: i64 },
    Truncate { offset: i64 },
}

fn parse(line: &str) -> Op {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words[..] {
        ["begin", "append", base, count] => Op::Append {
            base: base.parse().unwrap(),
            count: count.parse().unwrap(),
        },
        ["begin", "truncate", offset] => Op::Truncate {
            offset: offset.parse().unwrap(),
        },
        _ => panic!("unexpected child output {line:?}"),
    }
}

fn apply(state: &mut Vec<(i64, String)>, op: &Op, generation: u64) {
    match *op {
        Op::Append { base, count } => {
            state.extend((base..base + count).map(|o| (o, value(generation, o))));
        }
        Op::Truncate { offset } => state.retain(|(o, _)| *o < offset),
    }
}

#[test]
fn kill_9_during_appends_and_cuts() {
    let engines = common::persistent_engines();
    let cycles = common::crash::cycles();
    let mut rng = Rng::seeded();
    for engine in engines {
        let dir = tempfile::tempdir().unwrap();
        let mut state: Vec<(i64, String)> = Vec::new();
        for cycle in 0..cycles {
            let generation = rng.next() >> 1;
            let seed = generation.to_string();
            let envs: [(&str, &OsStr); 3] = [
                (CHILD_DIR, dir.path().as_os_str()),
                (CHILD_ENGINE, OsStr::new(engine)),
                (CHILD_SEED, OsStr::new(&seed)),
            ];
            let mut in_flight: Option<Op> = None;
            let target = 1 + rng.below(60);
            common::crash::run_until_killed("truncate_child", &envs, target, |line| {
                // The harness's "test truncate_child ... " may precede the
                // first line.
                if let Some(at) = line.find("begin ") {
                    in_flight = Some(parse(&line[at..]));
                } else if line.trim() == "done" {
                    let op = in_flight.take().expect("begin before done");
                    apply(&mut state, &op, generation);
                    return true;
                }
                false
            });

            let store = Store::open(dir.path(), config(engine)).unwrap();
            let got = contents(&store);
            let mut with_op = state.clone();
            if let Some(op) = &in_flight {
                apply(&mut with_op, op, generation);
            }
            let partial_cut = engine == "file"
                && matches!(in_flight, Some(Op::Truncate { .. }))
                && got.len() >= with_op.len()
                && state.starts_with(&got);
            assert!(
                got == state || got == with_op || partial_cut,
                "{engine}, cycle {cycle}: the shard holds {} records ({:?}..), the finished \
                 operations left {}, with the one in flight {}",
                got.len(),
                got.first().map(|r| r.0),
                state.len(),
                with_op.len()
            );
            state = got;
            store.close().unwrap();
        }
    }
}
