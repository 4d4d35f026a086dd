//! Power-cut simulation of the journal and file engines (see
//! `power_cut/sim.rs` for the disk model). Each workload runs a store on
//! the real disk with every filesystem change recorded: three shards, one
//! per durability mode, driven by two threads with appends, deletes
//! (before an offset, by offsets), truncations and consumer-group commits,
//! plus one `fsync` shard both threads append to (group commit within a
//! shard); small segments make rolls, reclaim, the journal's cleaner and
//! its checkpoints part of it. Then, for many cut points and draws of what
//! the disk kept, the crash state is written to a fresh directory and the
//! store reopened from it. The contract checked, per shard:
//! - the reopen succeeds;
//! - the shard is exactly what some prefix of its operations made it: same
//!   watermarks, records and committed offsets, nothing torn, reordered or
//!   missing from the middle (`matches_prefix` says which operations may be
//!   half done, `check_offsets_alone` how an `os`/`none` file shard's
//!   offsets are checked);
//! - for `fsync`, that prefix holds every operation acknowledged before the
//!   cut; `os` and `none` may lose any suffix;
//! - and the store reopened takes a new append that survives a clean close.
//!
//! `MQS_POWER_CUTS` sets the cuts per engine (default 2500; `make
//! crash-long` runs more); `MQS_SEED` replays a seed. A failing cut's state
//! is kept under the temporary directory, with its event trace (`TRACE`),
//! and named in the failure.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use mqstore::io::set_fs_observer;
use mqstore::{Config, Record, Status, Store};

mod common;
use common::Rng;

#[path = "power_cut/sim.rs"]
mod sim;
use sim::Recorder;

/// Cuts drawn from one recorded workload.
const CUTS_PER_WORKLOAD: usize = 100;
/// Operations per shard in one workload.
const OPS_PER_SHARD: usize = 60;
const SHARDS: [(&str, &str); 4] = [("f", "fsync"), ("o", "os"), ("n", "none"), ("s", "fsync")];
/// The shard of `SHARDS` both threads append to.
const SHARED: usize = 3;
/// Failures reported in detail before the test gives up.
const MAX_FAILURES: usize = 5;

/// The observer is process-wide: one workload records at a time.
static RECORDING: Mutex<()> = Mutex::new(());

fn config(engine: &str) -> Config {
    config_with_io(engine, "auto")
}

/// `io` is the journal's write path: `auto` (io_uring here) or `pwrite`;
/// workloads alternate between them.
fn config_with_io(engine: &str, io: &str) -> Config {
    Config::from_toml_str(&format!(
        "[shard]\nengine = \"{engine}\"\nsegment_bytes = 65536\n\
         [journal]\nsegment_bytes = 65536\ncheckpoint_bytes = 16384\nio = \"{io}\"\n"
    ))
    .unwrap()
}

fn cuts_per_engine() -> usize {
    std::env::var("MQS_POWER_CUTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2500)
}

#[derive(Clone)]
enum Op {
    Create,
    Append {
        base: i64,
        values: Vec<Vec<u8>>,
    },
    /// `delete_records_before`, with the low watermark it returned.
    Delete {
        low: i64,
    },
    DeleteOffsets {
        offsets: Vec<i64>,
    },
    Truncate {
        offset: i64,
    },
    /// `commit_offset` of consumer group `GROUPS[group]`.
    Commit {
        group: usize,
        offset: i64,
    },
}

/// The consumer groups that commit offsets.
const GROUPS: [&str; 2] = ["g0", "g1"];

/// One shard's operations, each with the recorder's event count when it
/// was acknowledged.
struct ShardLog {
    name: &'static str,
    durability: &'static str,
    ops: Vec<(Op, usize)>,
}

/// A shard as a prefix of its operations leaves it: low and high
/// watermarks, and the records by offset.
#[derive(Debug, PartialEq)]
struct ShardState<'a> {
    low: i64,
    next: i64,
    records: BTreeMap<i64, &'a [u8]>,
    /// Committed offsets by group (index in `GROUPS`).
    groups: BTreeMap<usize, i64>,
}

/// The shard after its first `k` operations (`None`: not created).
fn model(ops: &[(Op, usize)], k: usize) -> Option<ShardState<'_>> {
    let mut state: Option<ShardState> = None;
    for (op, _) in &ops[..k] {
        if let Op::Create = op {
            state = Some(ShardState {
                low: 0,
                next: 0,
                records: BTreeMap::new(),
                groups: BTreeMap::new(),
            });
            continue;
        }
        let shard = state.as_mut().expect("operations follow the create");
        match op {
            Op::Create => {}
            Op::Append { base, values } => {
                for (i, v) in values.iter().enumerate() {
                    shard.records.insert(base + i as i64, v.as_slice());
                }
                shard.next = base + values.len() as i64;
            }
            Op::Delete { low } => {
                shard.low = shard.low.max(*low);
                shard.records.retain(|o, _| *o >= *low);
            }
            Op::DeleteOffsets { offsets } => {
                for o in offsets {
                    shard.records.remove(o);
                }
            }
            Op::Truncate { offset } => {
                shard.records.retain(|o, _| o < offset);
                shard.next = *offset;
            }
            Op::Commit { group, offset } => {
                shard.groups.insert(*group, *offset);
            }
        }
    }
    state
}

/// Whether `found` is the shard after its first `k` operations, or after
/// those and part of the next one where that one is not atomic until
/// acknowledged: a delete by offsets rewrites each batch it touches with an
/// entry or file of its own (atomic per batch), and a file shard's
/// truncation removes segment files newest first before cutting the one
/// holding the offset (it may stop at any segment boundary above it).
fn matches_prefix(
    ops: &[(Op, usize)],
    k: usize,
    found: Option<&ShardState>,
    without_offsets: bool,
) -> bool {
    let mut expected = model(ops, k);
    if let (true, Some(expected)) = (without_offsets, expected.as_mut()) {
        expected.groups.clear();
    }
    if expected.as_ref() == found {
        return true;
    }
    let (Some(expected), Some(found), Some((next_op, _))) = (expected, found, ops.get(k)) else {
        return false;
    };
    let kept_records_match = found
        .records
        .iter()
        .all(|(o, v)| expected.records.get(o) == Some(v));
    if expected.low != found.low || expected.groups != found.groups || !kept_records_match {
        return false;
    }
    match next_op {
        Op::DeleteOffsets { offsets } => {
            expected.next == found.next
                && expected
                    .records
                    .keys()
                    .all(|o| found.records.contains_key(o) || offsets.contains(o))
        }
        Op::Truncate { offset } => {
            (*offset..=expected.next).contains(&found.next)
                && expected
                    .records
                    .range(..found.next)
                    .all(|(o, _)| found.records.contains_key(o))
        }
        _ => false,
    }
}

fn value(rng: &mut Rng, shard: &str, seq: usize) -> Vec<u8> {
    let mut v = format!("{shard}:{seq}:").into_bytes();
    let filler = rng.below(2000) as usize;
    v.extend((0..filler).map(|i| b'a' + ((seq + i) % 26) as u8));
    v
}

/// Appends 1-6 records to `shard`; returns the operation.
fn append(store: &Store, rng: &mut Rng, shard: &str, seq: &mut usize) -> Op {
    let count = 1 + rng.below(6) as usize;
    let values: Vec<Vec<u8>> = (0..count)
        .map(|_| {
            *seq += 1;
            value(rng, shard, *seq)
        })
        .collect();
    let records: Vec<Record> = values.iter().map(|v| Record::new(v)).collect();
    let base = store.append_batch(shard, &records).unwrap();
    Op::Append { base, values }
}

/// Each group's recovered offset is one it committed, or the shard's end
/// where recovery lowered one past it (its records lost), or none.
fn check_offsets_alone(log: &ShardLog, state: &ShardState) -> Result<(), String> {
    for (&group, &offset) in &state.groups {
        let committed: Vec<i64> = log
            .ops
            .iter()
            .filter_map(|(op, _)| match op {
                Op::Commit { group: g, offset } if *g == group => Some(*offset),
                _ => None,
            })
            .collect();
        let lowered = offset == state.next && committed.iter().any(|&c| c > state.next);
        if !committed.contains(&offset) && !lowered {
            return Err(format!(
                "shard {}: group {} has offset {offset}, which it never committed \
                 (commits {committed:?}, shard end {})",
                log.name, GROUPS[group], state.next
            ));
        }
    }
    Ok(())
}

/// A batch boundary at or above `low` to truncate at: the base of an
/// append no truncation removed since.
fn truncation_point(shard: &ShardLog, low: i64, rng: &mut Rng) -> Option<i64> {
    let mut bases: Vec<i64> = Vec::new();
    for (op, _) in &shard.ops {
        match op {
            Op::Append { base, .. } => bases.push(*base),
            Op::Truncate { offset } => bases.retain(|b| b < offset),
            _ => {}
        }
    }
    bases.retain(|b| *b >= low);
    (!bases.is_empty()).then(|| bases[rng.below(bases.len() as u64) as usize])
}

/// Runs one thread's shards: creates them, then appends and deletes at
/// random, logging each acknowledgement; a quarter of its appends go to
/// the shared shard.
fn drive(
    store: &Store,
    recorder: &Recorder,
    shards: &mut [ShardLog],
    shared: &Mutex<ShardLog>,
    seed: u64,
) {
    let mut rng = Rng::new(seed);
    for shard in shards.iter_mut() {
        let options = format!("durability = \"{}\"", shard.durability);
        store.create_shard(shard.name, Some(&options)).unwrap();
        shard.ops.push((Op::Create, recorder.now()));
    }
    let mut seq = seed as usize % 1000 * 100_000;
    for _ in 0..OPS_PER_SHARD * shards.len() {
        if rng.below(4) == 0 {
            let op = append(store, &mut rng, SHARDS[SHARED].0, &mut seq);
            shared.lock().unwrap().ops.push((op, recorder.now()));
            continue;
        }
        let shard = &mut shards[rng.below(shards.len() as u64) as usize];
        let info = store.shard_info(shard.name).unwrap();
        let span = (info.next_offset - info.first_offset) as u64;
        let op = match rng.below(24) {
            0 | 1 if span > 0 => {
                let to = info.first_offset + 1 + rng.below(span) as i64;
                let low = store.delete_records_before(shard.name, to).unwrap();
                Op::Delete { low }
            }
            2 if span > 0 => {
                let offsets: Vec<i64> = (0..1 + rng.below(3))
                    .map(|_| info.first_offset + rng.below(span) as i64)
                    .collect();
                store.delete_by_offsets(shard.name, &offsets).unwrap();
                Op::DeleteOffsets { offsets }
            }
            4 | 5 => {
                let group = rng.below(GROUPS.len() as u64) as usize;
                let offset = info.first_offset + rng.below(span + 1) as i64;
                store
                    .commit_offset(GROUPS[group], shard.name, offset)
                    .unwrap();
                Op::Commit { group, offset }
            }
            3 => match truncation_point(shard, info.first_offset, &mut rng) {
                // Refused where no batch starts any more (a delete
                // emptied it): nothing changed, nothing to log.
                Some(offset) if store.truncate_to(shard.name, offset).is_ok() => {
                    Op::Truncate { offset }
                }
                _ => continue,
            },
            _ => append(store, &mut rng, shard.name, &mut seq),
        };
        shard.ops.push((op, recorder.now()));
    }
}

/// Records one workload in `dir`; returns the recorder and the shards'
/// operation logs.
fn record_workload(engine: &str, dir: &Path, seed: u64) -> (Arc<Recorder>, Vec<ShardLog>) {
    let recorder = Arc::new(Recorder::new(dir));
    set_fs_observer(Some(recorder.clone()));
    let io = if seed.is_multiple_of(2) {
        "auto"
    } else {
        "pwrite"
    };
    let store = Store::open(dir, config_with_io(engine, io)).unwrap();
    let logs = |picked: &[usize]| -> Vec<ShardLog> {
        picked
            .iter()
            .map(|&i| ShardLog {
                name: SHARDS[i].0,
                durability: SHARDS[i].1,
                ops: Vec::new(),
            })
            .collect()
    };
    let (mut first, mut second) = (logs(&[0, 2]), logs(&[1]));
    let mut shared = logs(&[SHARED]).pop().unwrap();
    let options = format!("durability = \"{}\"", shared.durability);
    store.create_shard(shared.name, Some(&options)).unwrap();
    shared.ops.push((Op::Create, recorder.now()));
    let shared = Mutex::new(shared);
    std::thread::scope(|s| {
        s.spawn(|| drive(&store, &recorder, &mut first, &shared, seed));
        s.spawn(|| drive(&store, &recorder, &mut second, &shared, seed ^ 0x5eed));
    });
    // No clean close: the recording ends while the store runs, as a power
    // cut would find it. Background threads stop reporting with the
    // observer gone.
    set_fs_observer(None);
    drop(store);
    // The shared shard's appends in offset order: its history.
    let mut shared = shared.into_inner().unwrap();
    shared.ops.sort_by_key(|(op, _)| match op {
        Op::Create => -1,
        Op::Append { base, .. } => *base,
        _ => unreachable!("the shared shard only takes appends"),
    });
    first.extend(second);
    first.push(shared);
    (recorder, first)
}

/// A shard as the reopened store has it.
struct Recovered {
    low: i64,
    next: i64,
    /// In the order reads returned them.
    records: Vec<(i64, Vec<u8>)>,
    groups: BTreeMap<usize, i64>,
}

impl Recovered {
    fn state(&self) -> ShardState<'_> {
        ShardState {
            low: self.low,
            next: self.next,
            records: self
                .records
                .iter()
                .map(|(o, v)| (*o, v.as_slice()))
                .collect(),
            groups: self.groups.clone(),
        }
    }
}

/// The shard as the reopened store has it (`None`: it does not exist).
fn recovered(store: &Store, name: &str) -> Result<Option<Recovered>, String> {
    let info = match store.shard_info(name) {
        Ok(info) => info,
        Err(e) if e.status() == Status::ShardNotFound => return Ok(None),
        Err(e) => return Err(format!("shard_info: {e}")),
    };
    let mut records = Vec::new();
    let mut at = info.first_offset;
    while at < info.next_offset {
        let read = store
            .read(name, at, usize::MAX, usize::MAX)
            .map_err(|e| format!("reading at {at}: {e}"))?;
        records.extend(
            read.records
                .iter()
                .map(|r| (r.offset, r.value_bytes().to_vec())),
        );
        if read.next_offset <= at {
            return Err(format!("a read at {at} made no progress"));
        }
        at = read.next_offset;
    }
    let mut groups = BTreeMap::new();
    for (i, group) in GROUPS.iter().enumerate() {
        let committed = store
            .committed_offset(group, name)
            .map_err(|e| format!("committed offset of {group}: {e}"))?;
        if let Some(offset) = committed {
            groups.insert(i, offset);
        }
    }
    Ok(Some(Recovered {
        low: info.first_offset,
        next: info.next_offset,
        records,
        groups,
    }))
}

/// Checks one shard of a reopened store against the contract.
fn check_shard(engine: &str, store: &Store, log: &ShardLog, cut: usize) -> Result<(), String> {
    // A shard's state after a power cut is a prefix of its history, so one
    // durable operation makes every earlier one durable too (the shared
    // shard's appends are acknowledged out of offset order).
    let acked = log
        .ops
        .iter()
        .rposition(|(_, at)| *at <= cut)
        .map_or(0, |i| i + 1);
    let must_keep = if log.durability == "fsync" { acked } else { 0 };
    let found = recovered(store, log.name)?;
    let mut state = found.as_ref().map(Recovered::state);
    // A file shard keeps its group offsets in a file of their own, which an
    // `os` or `none` shard never syncs: each group's offset is checked
    // against that group's own commits, and the prefix without them.
    let separate_offsets = engine == "file" && log.durability != "fsync";
    if let (true, Some(state)) = (separate_offsets, state.as_mut()) {
        check_offsets_alone(log, state)?;
        state.groups.clear();
    }
    if let (Some(found), Some(state)) = (&found, &state) {
        if found.records.len() != state.records.len() {
            return Err(format!("shard {}: an offset read back twice", log.name));
        }
    }
    let matches = |k: usize| matches_prefix(&log.ops, k, state.as_ref(), separate_offsets);
    if (must_keep..=log.ops.len()).any(matches) {
        return Ok(());
    }
    Err(describe_mismatch(log, must_keep, state.as_ref()))
}

/// What differs between `state` and the shard's history, for a failure:
/// the nearest prefix by watermarks and the history itself.
fn describe_mismatch(log: &ShardLog, must_keep: usize, state: Option<&ShardState>) -> String {
    // The nearest prefix by watermarks, to say what differs.
    let near = (must_keep..=log.ops.len())
        .map(|k| (k, model(&log.ops, k)))
        .find(|(_, m)| m.as_ref().map(|m| (m.low, m.next)) == state.map(|s| (s.low, s.next)));
    let what = match (state, near) {
        (Some(s), Some((k, Some(m)))) => {
            let missing: Vec<i64> = m
                .records
                .keys()
                .filter(|o| !s.records.contains_key(o))
                .copied()
                .collect();
            let wrong: Vec<i64> = s
                .records
                .iter()
                .filter(|(o, v)| m.records.get(o) != Some(v))
                .map(|(o, _)| *o)
                .collect();
            format!(
                "prefix {k} has its watermarks [{}, {}), but records {missing:?} are \
                 missing and {wrong:?} differ or should be gone; offsets {:?}, expected {:?}",
                s.low, s.next, s.groups, m.groups
            )
        }
        _ => format!(
            "watermarks {:?} match no prefix",
            state.map(|s| (s.low, s.next))
        ),
    };
    let history: Vec<String> = log
        .ops
        .iter()
        .enumerate()
        .map(|(i, (op, at))| {
            let op = match op {
                Op::Create => "create".to_string(),
                Op::Append { base, values } => {
                    format!("append {base}..{}", base + values.len() as i64)
                }
                Op::Delete { low } => format!("delete<{low}"),
                Op::DeleteOffsets { offsets } => format!("delete{offsets:?}"),
                Op::Truncate { offset } => format!("truncate@{offset}"),
                Op::Commit { group, offset } => format!("commit {}={offset}", GROUPS[*group]),
            };
            format!("{i}:{op}@{at}")
        })
        .collect();
    format!(
        "shard {} ({}), {} operations, the first {must_keep} acknowledged: {what}; \
         history {}",
        log.name,
        log.durability,
        log.ops.len(),
        history.join(" ")
    )
}

/// Appends one record to each shard present, closes cleanly, reopens and
/// finds each where it went.
fn check_writable(dir: &Path, engine: &str, store: Store) -> Result<(), String> {
    let mut appended = Vec::new();
    for (name, _) in SHARDS {
        if store.shard_info(name).is_ok() {
            let offset = store
                .append(name, &Record::new(b"after the cut"))
                .map_err(|e| format!("append to {name} after the cut: {e}"))?;
            appended.push((name, offset));
        }
    }
    store
        .close()
        .map_err(|e| format!("close after the cut: {e}"))?;
    drop(store);
    let store = Store::open(dir, config(engine)).map_err(|e| format!("second reopen: {e}"))?;
    for (name, offset) in appended {
        let read = store
            .read(name, offset, 1, usize::MAX)
            .map_err(|e| format!("reading back {name}@{offset}: {e}"))?;
        match read.records.first() {
            Some(r) if r.offset == offset && r.value_bytes() == b"after the cut" => {}
            _ => return Err(format!("the append to {name} at {offset} is gone")),
        }
    }
    store.close().map_err(|e| format!("final close: {e}"))
}

/// Builds the state of one cut in `dir`, reopens it, checks every shard.
fn check_cut(
    engine: &str,
    recorder: &Recorder,
    logs: &[ShardLog],
    cut: usize,
    rng: &mut Rng,
    dir: &Path,
) -> Result<(), String> {
    let state = recorder.crash_state(cut, rng, dir);
    let describe = |e: String| {
        format!(
            "{e} [{} entry changes lost ({}: {:?}), {} writes lost or torn]",
            state.lost_entries.len(),
            if state.ordered_metadata {
                "in order"
            } else {
                "any subset"
            },
            state.lost_entries,
            state.lost_or_torn_writes
        )
    };
    let store = Store::open(dir, config(engine)).map_err(|e| describe(format!("reopen: {e}")))?;
    for log in logs {
        check_shard(engine, &store, log, cut).map_err(describe)?;
    }
    check_writable(dir, engine, store).map_err(describe)
}

/// A cut point: half of them right after an acknowledgement (the sharpest
/// test of `fsync`), half anywhere.
fn pick_cut(rng: &mut Rng, logs: &[ShardLog], events: usize) -> usize {
    if rng.below(2) == 0 {
        let acks: Vec<usize> = logs
            .iter()
            .flat_map(|l| l.ops.iter().map(|(_, at)| *at))
            .collect();
        acks[rng.below(acks.len() as u64) as usize]
    } else {
        rng.below(events as u64 + 1) as usize
    }
}

fn power_cuts(engine: &str) {
    let _recording = RECORDING.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = Rng::seeded();
    let total = cuts_per_engine();
    // Crash states go to memory where it can: thousands are written and
    // reopened.
    let scratch = common::memory_tempdir();
    let mut failures: Vec<String> = Vec::new();
    let mut done = 0;
    // Segments the journal started in a recycled file, over all workloads.
    let mut recycled = 0;
    while done < total && failures.len() < MAX_FAILURES {
        let work = tempfile::tempdir().unwrap();
        let store_dir = work.path().join("store");
        let (recorder, logs) = record_workload(engine, &store_dir, rng.next());
        let events = recorder.now();
        let extension = |p: &Path, e: &str| p.extension().is_some_and(|x| x == e);
        recycled += recorder.renames(|from, to| extension(from, "free") && extension(to, "log"));
        for _ in 0..CUTS_PER_WORKLOAD.min(total - done) {
            let cut = pick_cut(&mut rng, &logs, events);
            let dir: PathBuf = scratch.path().join(format!("cut-{done}"));
            if let Err(e) = check_cut(engine, &recorder, &logs, cut, &mut rng, &dir) {
                let kept = std::env::temp_dir().join(format!(
                    "mqs-power-cut-{engine}-{}-{done}",
                    std::process::id()
                ));
                common::copy_dir(&dir, &kept);
                std::fs::write(kept.join("TRACE"), recorder.dump(cut)).unwrap();
                failures.push(format!(
                    "cut {cut} of {events} events: {e} (state kept in {})",
                    kept.display()
                ));
            }
            let _ = std::fs::remove_dir_all(&dir);
            done += 1;
            if failures.len() >= MAX_FAILURES {
                break;
            }
        }
    }
    eprintln!(
        "{engine}: {done} power cuts, {} contract violations, {recycled} segments started in \
         recycled files",
        failures.len()
    );
    if engine == "journal" {
        assert!(recycled > 0, "no workload recycled a segment file");
    }
    assert!(
        failures.is_empty(),
        "{engine}: {} of {done} power cuts broke the contract:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[cfg(feature = "journal")]
#[test]
fn journal_power_cuts_keep_the_durability_contract() {
    power_cuts("journal");
}

#[test]
fn file_power_cuts_keep_the_durability_contract() {
    power_cuts("file");
}
