//! The kill -9 crash test, shared by the persistent engines' test binaries:
//! a child process (the test binary re-run on its ignored
//! `crash_writer_child` test) appends from several threads, deletes now
//! and then, and prints every acknowledged batch and delete; the parent
//! kills it at a random ack, reopens the store and checks that every
//! acknowledged record that no delete or retention removed is there,
//! intact and in order, and that no acknowledged delete came undone.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use mqstore::{Record, Store};

use super::Rng;

/// Retention of the child's shards: old batches are dropped (and their
/// files or segments removed) while the writers run and get killed.
pub const RETAINED_RECORDS: i64 = 300;

/// What the parent learned of one shard from the child's output.
#[derive(Default)]
pub struct ShardLog {
    /// Acknowledged records: offset → value.
    pub records: BTreeMap<i64, String>,
    /// The highest acknowledged `delete_records_before` point.
    pub deleted_before: i64,
    /// The highest point of a `delete_records_before` that was started
    /// (acknowledged or not): records below it may be gone.
    pub maybe_deleted_before: i64,
    /// Offsets of acknowledged `delete_by_offsets` / `delete_by_keys`.
    pub deleted: BTreeSet<i64>,
    /// Offsets of such deletes that were started, acknowledged or not.
    pub maybe_deleted: BTreeSet<i64>,
}

/// One consumer group's commits of one shard, as the child printed them
/// (one child thread commits for each group, one commit at a time).
#[derive(Default)]
struct CommitLog {
    /// The last acknowledged commit.
    acked: Option<i64>,
    /// Commits started since, each maybe done.
    maybe: Vec<i64>,
}

/// Everything acknowledged so far, by shard.
#[derive(Default)]
pub struct Acked {
    pub shards: BTreeMap<String, ShardLog>,
    /// Consumer-group commits by (group, shard).
    commits: BTreeMap<(String, String), CommitLog>,
    /// Deletes started and not (yet) acknowledged: id → (shard, what).
    started: BTreeMap<u64, (String, Delete)>,
}

impl Acked {
    pub fn new() -> Acked {
        Acked::default()
    }

    /// Notes an acknowledged record (for writes the parent made itself).
    pub fn record(&mut self, shard: &str, offset: i64, value: String) {
        let log = self.shards.entry(shard.to_string()).or_default();
        let previous = log.records.insert(offset, value);
        assert!(previous.is_none(), "offset {offset} acknowledged twice");
    }
}

/// Kill cycles per mode: `MQS_CRASH_CYCLES`, 20 by default (`make
/// crash-long` asks for 500).
pub fn cycles() -> usize {
    std::env::var("MQS_CRASH_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20)
}

/// How the child's threads append.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Appends {
    /// `append_batch`: acknowledged when it returns.
    Blocking,
    /// `append_batch_nowait` with up to `PIPELINE_WINDOW` batches in
    /// flight per thread: a batch is acknowledged (printed) only once
    /// `wait_durable` on its last offset returned.
    Pipelined,
}

const PIPELINE_WINDOW: usize = 8;

/// A delete the child runs, as printed: `before <offset>` or
/// `offsets <o1,o2,…>` (by offset, or by the keys of those records).
#[derive(Clone, Debug)]
enum Delete {
    Before(i64),
    Offsets(Vec<i64>),
}

/// A batch of the child: its shard, base offset and (key, value) records.
type Batch = (String, i64, Vec<(String, String)>);

/// One child thread: appends batches of 1–4 records (each keyed by its
/// unique id) to random shards and, every few batches, deletes a little
/// behind the head of the shard it just wrote: records before a point, or
/// a few of its own acknowledged records by offset or by key.
struct ChildThread {
    store: Arc<Store>,
    shards: usize,
    appends: Appends,
    rng: Rng,
    ids: Arc<AtomicU64>,
    /// Acknowledged records of this thread: (shard, offset, key).
    recent: Vec<(String, i64, String)>,
    /// Pipelined batches not acknowledged yet.
    in_flight: std::collections::VecDeque<Batch>,
    /// The consumer group this thread commits for.
    group: String,
}

fn print_line(line: String) {
    let mut out = std::io::stdout().lock();
    out.write_all(line.as_bytes()).unwrap();
    out.flush().unwrap();
}

impl ChildThread {
    fn run(mut self) {
        loop {
            let shard = format!("c{}", self.rng.below(self.shards as u64));
            self.append(&shard);
            if self.rng.below(3) == 0 {
                self.delete(&shard);
            }
            if self.rng.below(4) == 0 {
                self.commit(&shard);
            }
        }
    }

    /// Commits the shard's head as this thread's group's offset, printing
    /// `COMMIT <group> <shard> <offset>` before and `COMMITTED …` after.
    fn commit(&mut self, shard: &str) {
        let offset = self.store.shard_info(shard).unwrap().next_offset;
        let what = format!("{} {shard} {offset}", self.group);
        print_line(format!("COMMIT {what}\n"));
        self.store
            .commit_offset(&self.group, shard, offset)
            .unwrap();
        print_line(format!("COMMITTED {what}\n"));
    }

    fn append(&mut self, shard: &str) {
        let pid = std::process::id();
        let n = 1 + self.rng.below(4) as usize;
        let records: Vec<(String, String)> = (0..n)
            .map(|_| {
                let id = self.ids.fetch_add(1, Ordering::Relaxed);
                let pad = "p".repeat(self.rng.below(600) as usize);
                (format!("k{pid}.{id}"), format!("{pid}.{id}.{pad}"))
            })
            .collect();
        let batch: Vec<Record<'_>> = records
            .iter()
            .map(|(k, v)| Record {
                key: Some(k.as_bytes()),
                ..Record::new(v.as_bytes())
            })
            .collect();
        if self.appends == Appends::Blocking {
            let base = self.store.append_batch(shard, &batch).unwrap();
            self.ack(shard.to_string(), base, records);
            return;
        }
        let base = self.store.append_batch_nowait(shard, &batch).unwrap();
        self.in_flight.push_back((shard.to_string(), base, records));
        if self.in_flight.len() > PIPELINE_WINDOW {
            let (shard, base, records) = self.in_flight.pop_front().unwrap();
            let last = base + records.len() as i64 - 1;
            self.store.wait_durable(&shard, last).unwrap();
            self.ack(shard, base, records);
        }
    }

    fn ack(&mut self, shard: String, base: i64, records: Vec<(String, String)>) {
        let values: Vec<&str> = records.iter().map(|(_, v)| v.as_str()).collect();
        print_line(format!("ACK {shard} {base} {}\n", values.join(" ")));
        for (i, (key, _)) in records.into_iter().enumerate() {
            self.recent.push((shard.clone(), base + i as i64, key));
        }
        if self.recent.len() > 64 {
            self.recent.drain(..32);
        }
    }

    fn delete(&mut self, shard: &str) {
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        let own: Vec<(i64, String)> = self
            .recent
            .iter()
            .filter(|(s, _, _)| s == shard)
            .map(|(_, o, k)| (*o, k.clone()))
            .collect();
        let kind = self.rng.below(3);
        let picked: Vec<(i64, String)> = own
            .iter()
            .filter(|_| self.rng.below(4) == 0)
            .cloned()
            .collect();
        if kind == 0 || picked.is_empty() {
            // A little behind the head: usually inside a retained batch.
            let head = self.store.shard_info(shard).unwrap().next_offset;
            let point = (head - 20 - self.rng.below(60) as i64).max(0);
            print_line(format!("DEL {id} {shard} before {point}\n"));
            self.store.delete_records_before(shard, point).unwrap();
        } else {
            let offsets: Vec<i64> = picked.iter().map(|(o, _)| *o).collect();
            let list: Vec<String> = offsets.iter().map(|o| o.to_string()).collect();
            print_line(format!("DEL {id} {shard} offsets {}\n", list.join(",")));
            if kind == 1 {
                self.store.delete_by_offsets(shard, &offsets).unwrap();
            } else {
                let keys: Vec<&[u8]> = picked.iter().map(|(_, k)| k.as_bytes()).collect();
                self.store.delete_by_keys(shard, &keys).unwrap();
            }
            self.recent
                .retain(|(s, o, _)| s != shard || !offsets.contains(o));
        }
        print_line(format!("DELETED {id}\n"));
    }
}

/// The child's side: creates shards `c0` … `c{shards - 1}` if needed, then
/// appends, deletes and commits group offsets forever from 4 threads,
/// printing `ACK <shard> <base> <values…>` per acknowledged batch, `DEL
/// <id> <shard> <what>` before and `DELETED <id>` after each delete, and
/// `COMMIT` / `COMMITTED <group> <shard> <offset>` around each commit.
pub fn append_and_ack_forever(store: Store, shards: usize, appends: Appends) {
    let store = Arc::new(store);
    for s in 0..shards {
        let name = format!("c{s}");
        if store.shard_info(&name).is_err() {
            let options = format!("retention_records = {RETAINED_RECORDS}");
            store.create_shard(&name, Some(&options)).unwrap();
        }
    }
    // Ends the line the test harness started with the test's name.
    print_line("\n".into());
    fill_idle_shard(&store);
    let pid = std::process::id();
    let ids = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let child = ChildThread {
                store: store.clone(),
                shards,
                appends,
                rng: Rng::new(pid as u64 * 31 + t),
                ids: ids.clone(),
                recent: Vec::new(),
                in_flight: Default::default(),
                group: format!("g{t}"),
            };
            std::thread::spawn(move || child.run())
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

/// The shard nobody writes to after the first child: its old batches pin
/// the oldest segments of a shared journal while the other shards churn,
/// so the journal's cleaner relocates them, and kills land mid-relocation.
pub const IDLE_SHARD: &str = "idle";

fn fill_idle_shard(store: &Store) {
    if store.shard_info(IDLE_SHARD).is_ok() {
        return;
    }
    store.create_shard(IDLE_SHARD, None).unwrap();
    for i in 0..32 {
        let values: Vec<String> = (0..3)
            .map(|r| format!("idle.{i}.{r}.{}", "i".repeat(500)))
            .collect();
        let keys: Vec<String> = (0..3).map(|r| format!("idle{i}.{r}")).collect();
        let batch: Vec<Record<'_>> = values
            .iter()
            .zip(&keys)
            .map(|(v, k)| Record {
                key: Some(k.as_bytes()),
                ..Record::new(v.as_bytes())
            })
            .collect();
        let base = store.append_batch(IDLE_SHARD, &batch).unwrap();
        print_line(format!("ACK {IDLE_SHARD} {base} {}\n", values.join(" ")));
    }
}

/// Records one complete line; returns whether it was a batch
/// acknowledgement (a line cut off by the kill acknowledges nothing).
fn record(line: &str, acked: &mut Acked) -> bool {
    if !line.ends_with('\n') {
        return false;
    }
    let mut parts = line.split_whitespace();
    match parts.next() {
        Some("ACK") => {
            let shard = parts.next().unwrap().to_string();
            let base: i64 = parts.next().unwrap().parse().unwrap();
            for (i, value) in parts.enumerate() {
                acked.record(&shard, base + i as i64, value.to_string());
            }
            true
        }
        Some("DEL") => {
            let id: u64 = parts.next().unwrap().parse().unwrap();
            let shard = parts.next().unwrap().to_string();
            let what = match (parts.next().unwrap(), parts.next().unwrap()) {
                ("before", point) => Delete::Before(point.parse().unwrap()),
                ("offsets", list) => {
                    Delete::Offsets(list.split(',').map(|o| o.parse().unwrap()).collect())
                }
                other => panic!("unknown delete {other:?}"),
            };
            let log = acked.shards.entry(shard.clone()).or_default();
            match &what {
                Delete::Before(point) => {
                    log.maybe_deleted_before = log.maybe_deleted_before.max(*point)
                }
                Delete::Offsets(offsets) => log.maybe_deleted.extend(offsets),
            }
            acked.started.insert(id, (shard, what));
            false
        }
        Some(kind @ ("COMMIT" | "COMMITTED")) => {
            let group = parts.next().unwrap().to_string();
            let shard = parts.next().unwrap().to_string();
            let offset: i64 = parts.next().unwrap().parse().unwrap();
            let log = acked.commits.entry((group, shard)).or_default();
            if kind == "COMMIT" {
                log.maybe.push(offset);
            } else {
                log.acked = Some(offset);
                log.maybe.clear();
            }
            false
        }
        Some("DELETED") => {
            let id: u64 = parts.next().unwrap().parse().unwrap();
            let (shard, what) = acked.started.remove(&id).expect("a started delete");
            let log = acked.shards.get_mut(&shard).unwrap();
            match what {
                Delete::Before(point) => log.deleted_before = log.deleted_before.max(point),
                Delete::Offsets(offsets) => log.deleted.extend(offsets),
            }
            false
        }
        _ => false,
    }
}

/// Runs the ignored test `child` of this binary in a child process with
/// `envs`, hands each line it prints to `take` until `take` said true
/// `target` times, SIGKILLs it (no destructor, no flush, no close) and
/// hands over what it printed before it died. Fails if the child dies
/// first.
pub fn run_until_killed(
    child: &str,
    envs: &[(&str, &OsStr)],
    target: u64,
    mut take: impl FnMut(&str) -> bool,
) {
    let mut process = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            child,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(process.stdout.take().unwrap());
    let mut seen = 0;
    let mut line = String::new();
    while seen < target {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "{child}: the child died"
        );
        seen += u64::from(take(&line));
    }
    process.kill().unwrap();
    process.wait().unwrap();
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap() == 0 {
            return;
        }
        take(&line);
    }
}

/// Runs one child (`envs` tell it the store and its mode) until it has
/// acknowledged a random number of batches, SIGKILLs it, and collects every
/// ack it printed before dying. Returns how many batches it acknowledged.
pub fn run_child_and_kill(
    rng: &mut Rng,
    envs: &[(&str, &OsStr)],
    acked: &mut Acked,
    label: &str,
) -> usize {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_writer_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // Delete ids are the child's own: one left unfinished by an earlier
    // child (already counted as maybe done) must not meet a new one.
    acked.started.clear();
    let target = 1 + rng.below(150) as usize;
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut seen = 0;
    let mut line = String::new();
    while seen < target {
        line.clear();
        if reader.read_line(&mut line).unwrap() == 0 {
            panic!("{label}: child exited early");
        }
        if record(&line, acked) {
            seen += 1;
        }
    }
    child.kill().unwrap(); // SIGKILL: no destructor, no flush, no close
    child.wait().unwrap();
    // What was printed before death is acknowledged too.
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if record(&line, acked) {
            seen += 1;
        }
    }
    seen
}

/// Every group's committed offset is its last acknowledged commit or one
/// started after it.
fn verify_commits(store: &Store, acked: &Acked, label: &str) {
    for ((group, shard), log) in &acked.commits {
        let got = store.committed_offset(group, shard).unwrap();
        let allowed = got == log.acked || got.is_some_and(|o| log.maybe.contains(&o));
        assert!(
            allowed,
            "{label}: group {group} of {shard} has {got:?}; acknowledged {:?}, started since {:?}",
            log.acked, log.maybe
        );
    }
}

/// Every acknowledged record that neither retention nor a delete removed
/// is in `store`, intact and in order; every record an acknowledged delete
/// removed stays removed; what the store returns was appended (in flight
/// at the kill, or acknowledged).
pub fn verify(store: &Store, acked: &Acked, label: &str) {
    verify_commits(store, acked, label);
    for (shard, log) in &acked.shards {
        let Some(last) = log.records.keys().last().copied() else {
            continue;
        };
        let info = store.shard_info(shard).unwrap();
        assert!(
            info.next_offset > last,
            "{label}: {shard} lost its tail ({info:?}, last ack {last})"
        );
        let first = info.first_offset;
        assert!(
            first >= log.deleted_before.min(info.next_offset),
            "{label}: {shard} undid an acknowledged delete before {} ({info:?}) {}",
            log.deleted_before,
            store
                .shard_stats(shard)
                .map(|s| s.to_string())
                .unwrap_or_default()
        );
        // Retention drops whole batches (of at most 4 records) while more
        // than RETAINED_RECORDS live records remain; deletes only lower the
        // count, so at least RETAINED - 3 offsets after the newest delete
        // point survive.
        let floor = log.maybe_deleted_before.clamp(0, info.next_offset);
        let kept = (info.next_offset - floor).min(RETAINED_RECORDS - 3);
        assert!(
            info.next_offset - first >= kept,
            "{label}: {shard} retention kept too little: {info:?} (deletes before {} acknowledged, {} started; engine stats {})",
            log.deleted_before, log.maybe_deleted_before, store.shard_stats(shard).unwrap()
        );
        let got = store.read(shard, first, usize::MAX, usize::MAX).unwrap();
        let mut expected = log
            .records
            .range(first..)
            .filter(|(o, _)| !log.maybe_deleted.contains(o))
            .peekable();
        for record in &got.records {
            let offset = record.offset;
            assert!(
                offset >= first && offset < info.next_offset,
                "{label}: {shard}@{offset} outside {first}..{}",
                info.next_offset
            );
            assert!(
                !log.deleted.contains(&offset),
                "{label}: {shard}@{offset} was deleted (acknowledged) and came back"
            );
            if let Some((&o, _)) = expected.peek().filter(|(&o, _)| o < offset) {
                panic!("{label}: {shard}@{o} acknowledged, never deleted, and missing ({info:?})");
            }
            if let Some(value) = log.records.get(&offset) {
                assert_eq!(
                    std::str::from_utf8(record.value_bytes()).unwrap(),
                    value,
                    "{label}: {shard}@{offset}"
                );
                if expected.peek().is_some_and(|(&o, _)| o == offset) {
                    expected.next();
                }
            }
        }
        if let Some((&o, _)) = expected.next() {
            panic!("{label}: {shard}@{o} acknowledged, never deleted, and missing ({info:?})");
        }
    }
}
