//! Fault injection through the writer's `FileOps` seam: a failed write or
//! fdatasync poisons the journal for good, on the pwrite and the io_uring
//! path; a filesystem refusing O_DIRECT is written through the page cache.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;

use super::{FileOps, JournalEngine, PlainOps, UringOps};
use crate::config::{Durability, EngineKind, JournalConfig, ShardOptions};
use crate::engine::{Engine, ReadLimits, Shard};
use crate::record::Record;
use crate::Status;

const OK: u8 = 0;
const FAIL_WRITE: u8 = 1;
const FAIL_SYNC: u8 = 2;

#[derive(Default)]
struct Faulty(AtomicU8);

impl FileOps for Faulty {
    fn write_at(&self, file: &File, buf: &[u8], pos: u64) -> io::Result<()> {
        if self.0.load(Ordering::SeqCst) == FAIL_WRITE {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        std::os::unix::fs::FileExt::write_all_at(file, buf, pos)
    }

    fn sync_data(&self, file: &File) -> io::Result<()> {
        if self.0.load(Ordering::SeqCst) == FAIL_SYNC {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        file.sync_data()
    }
}

fn options(durability: Durability) -> ShardOptions {
    ShardOptions {
        engine: EngineKind::Journal,
        durability,
        ..ShardOptions::default()
    }
}

fn config() -> JournalConfig {
    JournalConfig {
        segment_bytes: 1 << 20,
        ..JournalConfig::default()
    }
}

fn poisons_on(mode: u8, durability: Durability) {
    let ops = Arc::new(Faulty::default());
    let set = ops.clone();
    poisons_with(
        ops,
        move |m| set.0.store(m, Ordering::SeqCst),
        mode,
        durability,
    );
}

fn poisons_with(ops: Arc<dyn FileOps>, set_fault: impl Fn(u8), mode: u8, durability: Durability) {
    let dir = tempfile::tempdir().unwrap();
    let engine = JournalEngine::with_ops(dir.path(), config(), ops);
    let shard = engine.create_shard("s", &options(durability)).unwrap();
    let other = engine
        .create_shard("t", &options(Durability::Fsync))
        .unwrap();
    assert_eq!(shard.append(&[Record::new(b"before")]).unwrap(), 0);
    set_fault(mode);
    // Durability os never syncs by itself: let an fsync shard hit the fault.
    let failing = if mode == FAIL_SYNC && durability != Durability::Fsync {
        &other
    } else {
        &shard
    };
    let err = failing.append(&[Record::new(b"lost")]).unwrap_err();
    assert_eq!(err.status(), Status::Poisoned, "{err}");
    let cause = if mode == FAIL_SYNC {
        "fdatasync"
    } else {
        "writing"
    };
    assert!(err.to_string().contains(cause), "{err}");
    // The disk "recovers": nothing is retried, everything stays refused.
    set_fault(OK);
    for target in [&shard, &other] {
        let err = target.append(&[Record::new(b"after")]).unwrap_err();
        assert_eq!(err.status(), Status::Poisoned);
    }
    let Err(err) = engine.create_shard("u", &options(Durability::Os)) else {
        panic!("a poisoned journal created a shard");
    };
    assert_eq!(err.status(), Status::Poisoned);
    assert_eq!(engine.close().unwrap_err().status(), Status::Poisoned);
    drop((shard, other, engine));

    // What was acknowledged before the failure is there after reopening.
    let engine = JournalEngine::new(dir.path(), config());
    let shards = engine.recover().unwrap();
    let (_, _, s) = shards.iter().find(|(n, _, _)| n == "s").unwrap();
    let limits = ReadLimits {
        max_records: 10,
        max_bytes: usize::MAX,
    };
    let r = s.read(0, limits).unwrap();
    assert_eq!(r.records[0].value_bytes(), b"before");
    assert!(r.records.iter().all(|r| r.value_bytes() != b"after"));
}

#[test]
fn failed_fsync_poisons() {
    poisons_on(FAIL_SYNC, Durability::Fsync);
    poisons_on(FAIL_SYNC, Durability::Os);
}

#[test]
fn failed_write_poisons() {
    poisons_on(FAIL_WRITE, Durability::Fsync);
    poisons_on(FAIL_WRITE, Durability::Os);
}

/// Whether a test needing io_uring runs: io_uring must work here, unless
/// `MQS_EXPECT_NO_URING=1` declares a machine without it; the declaration
/// is checked, and the test then reports itself skipped.
fn uring_expected(test: &str) -> bool {
    let declared_absent = std::env::var("MQS_EXPECT_NO_URING").as_deref() == Ok("1");
    match UringOps::new() {
        Ok(_) if declared_absent => panic!(
            "MQS_EXPECT_NO_URING=1 declares no io_uring, yet it works here: \
             unset it so that {test} runs"
        ),
        Ok(_) => true,
        Err(e) if declared_absent => {
            // Past the harness's output capture, which hides a passing
            // test's output.
            let line = format!("SKIPPED: {test}: io_uring is unavailable here ({e})\n");
            let _ = io::Write::write_all(&mut io::stderr(), line.as_bytes());
            false
        }
        Err(e) => panic!(
            "io_uring is unavailable here ({e}), so {test} cannot run; on a machine \
             without io_uring, set MQS_EXPECT_NO_URING=1 to skip it"
        ),
    }
}

/// The same through io_uring: the failures come back in completions.
#[test]
fn failed_uring_requests_poison() {
    if !uring_expected("failed_uring_requests_poison") {
        return;
    }
    for (mode, durability) in [
        (FAIL_WRITE, Durability::Fsync),
        (FAIL_WRITE, Durability::Os),
        (FAIL_SYNC, Durability::Fsync),
        (FAIL_SYNC, Durability::Os),
    ] {
        let ops = Arc::new(UringOps::new().unwrap());
        let set = ops.clone();
        poisons_with(
            ops,
            move |m| set.fault.store(m, Ordering::SeqCst),
            mode,
            durability,
        );
    }
}

/// Refuses O_DIRECT (EINVAL, as tmpfs before Linux 6.6 does) from the
/// `allow`-th open on.
struct NoDirect {
    allow: usize,
    opens: AtomicUsize,
}

impl FileOps for NoDirect {
    fn open_direct(&self, path: &Path) -> io::Result<File> {
        if self.opens.fetch_add(1, Ordering::SeqCst) >= self.allow {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        PlainOps.open_direct(path)
    }
}

#[test]
fn o_direct_refused_falls_back_to_the_page_cache() {
    // 0: refused from the start; 1: only later segments are refused.
    for allow in [0, 1] {
        let dir = tempfile::tempdir().unwrap();
        let ops = Arc::new(NoDirect {
            allow,
            opens: AtomicUsize::new(0),
        });
        let config = JournalConfig {
            segment_bytes: 65536 + 1000,
            ..JournalConfig::default()
        };
        let engine = JournalEngine::with_ops(dir.path(), config.clone(), ops);
        let shard = engine
            .create_shard("s", &options(Durability::Fsync))
            .unwrap();
        let io = &shard.stats().unwrap()["journal"]["io"];
        assert_eq!(
            io,
            if allow == 0 {
                "pwrite"
            } else {
                "pwrite+direct"
            }
        );
        let values: Vec<Vec<u8>> = (0..200).map(|i| vec![i as u8; 700 + i % 1000]).collect();
        for (i, v) in values.iter().enumerate() {
            assert_eq!(shard.append(&[Record::new(v)]).unwrap(), i as i64);
        }
        assert!(
            shard.stats().unwrap()["journal"]["segments"]
                .as_u64()
                .unwrap()
                > 2
        );
        engine.close().unwrap();
        drop((shard, engine));
        let engine = JournalEngine::new(dir.path(), config);
        let shards = engine.recover().unwrap();
        let limits = ReadLimits {
            max_records: usize::MAX,
            max_bytes: usize::MAX,
        };
        let r = shards[0].2.read(0, limits).unwrap();
        let got: Vec<&[u8]> = r.records.iter().map(|r| r.value_bytes()).collect();
        let want: Vec<&[u8]> = values.iter().map(|v| &v[..]).collect();
        assert_eq!(got, want);
    }
}

#[test]
fn recovery_of_an_empty_journal_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join(super::JOURNAL_DIR)).unwrap();
    let engine = JournalEngine::new(dir.path(), config());
    assert!(engine.recover().unwrap().is_empty());
    let shard = engine
        .create_shard("s", &options(Durability::Fsync))
        .unwrap();
    assert_eq!(shard.append(&[Record::new(b"x")]).unwrap(), 0);
    engine.close().unwrap();
}

/// fdatasync blocks while the gate is closed, after announcing itself.
#[derive(Default)]
struct Gated {
    closed: parking_lot::Mutex<bool>,
    opened: parking_lot::Condvar,
    entered: parking_lot::Mutex<Option<std::sync::mpsc::Sender<()>>>,
    /// fdatasyncs started.
    calls: AtomicU64,
}

impl FileOps for Gated {
    fn sync_data(&self, file: &File) -> io::Result<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut closed = self.closed.lock();
        if *closed {
            if let Some(tx) = self.entered.lock().take() {
                tx.send(()).unwrap();
            }
            while *closed {
                self.opened.wait(&mut closed);
            }
        }
        drop(closed);
        file.sync_data()
    }
}

impl Gated {
    fn open(&self) {
        *self.closed.lock() = false;
        self.opened.notify_all();
    }
}

/// A journal whose fdatasyncs are held at a closed gate, with one `fsync`
/// shard "s"; `entered` hears the first fdatasync reach the gate.
struct HeldJournal {
    gated: Arc<Gated>,
    engine: JournalEngine,
    log: Arc<super::Log>,
    shard: Arc<dyn Shard>,
    entered: std::sync::mpsc::Receiver<()>,
}

fn held_fsync_journal(dir: &Path) -> HeldJournal {
    let gated = Arc::new(Gated::default());
    let engine = JournalEngine::with_ops(dir, config(), gated.clone());
    let shard = engine
        .create_shard("s", &options(Durability::Fsync))
        .unwrap();
    let (entered_tx, entered) = std::sync::mpsc::channel();
    *gated.entered.lock() = Some(entered_tx);
    *gated.closed.lock() = true;
    let log = engine.log.lock().clone().unwrap();
    HeldJournal {
        gated,
        engine,
        log,
        shard,
        entered,
    }
}

/// Opens the gate when dropped, so a failed assertion cannot leave a
/// thread blocked at it (and the test hanging instead of failing).
struct OpenOnDrop<'a>(&'a Gated);

impl Drop for OpenOnDrop<'_> {
    fn drop(&mut self) {
        self.0.open();
    }
}

/// Runs `wait` on a thread of `scope` and checks that it has not returned
/// 200 ms later: the gate holds the fdatasync it needs. `held` says what
/// returning early would mean.
fn spawn_held<'scope, T: Send + 'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    wait: impl FnOnce() -> T + Send + 'scope,
    held: &str,
) -> std::thread::ScopedJoinHandle<'scope, T> {
    let (done_tx, done) = std::sync::mpsc::channel();
    let waiter = scope.spawn(move || {
        let result = wait();
        // Nobody listens once the check below is over.
        let _ = done_tx.send(());
        result
    });
    assert_eq!(
        done.recv_timeout(std::time::Duration::from_millis(200)),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout),
        "{held}"
    );
    waiter
}

/// While one leader's fdatasync is in flight (its write phase over, so the
/// next leader may write), a waiter for data that flush covers must wait
/// for it, not lead a flush of its own: the segments are no longer in the
/// dirty set, and an empty flush would report durability too early.
#[test]
fn a_flush_in_flight_is_waited_for_not_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let HeldJournal {
        gated,
        log,
        shard,
        entered,
        ..
    } = held_fsync_journal(dir.path());
    std::thread::scope(|scope| {
        let gate = OpenOnDrop(&gated);
        let appender = scope.spawn(|| shard.append(&[Record::new(b"durable?")]));
        entered.recv().unwrap();
        // The appender's write is done and its flush is held at the gate.
        let end = log.writer.written();
        let waiter = spawn_held(
            scope,
            move || log.writer.commit(end, true),
            "commit returned while the flush covering its data was held",
        );
        drop(gate);
        assert_eq!(appender.join().unwrap().unwrap(), 0);
        waiter.join().unwrap().unwrap();
    });
}

/// While a flush is in flight, the next group is written (its write
/// overlaps the flush) but not flushed: one flush at a time, and the next
/// one covers every group written meanwhile.
#[test]
fn a_group_written_during_a_flush_waits_for_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    let held = held_fsync_journal(dir.path());
    let (gated, log, shard) = (&*held.gated, &held.log, &held.shard);
    assert!(
        log.writer.io_name().ends_with("+direct"),
        "a flush after the write phase needs O_DIRECT"
    );
    // Counted from here: the shard's creation was flushed before.
    let before = gated.calls.load(Ordering::SeqCst);
    let flushes = || gated.calls.load(Ordering::SeqCst) - before;
    std::thread::scope(|scope| {
        let gate = OpenOnDrop(gated);
        let first = scope.spawn(|| shard.append(&[Record::new(b"first")]));
        held.entered.recv().unwrap();
        let end = log.writer.written();
        let second = spawn_held(
            scope,
            move || shard.append(&[Record::new(b"second")]),
            "an append was acknowledged while no flush had covered it",
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while log.writer.written() <= end {
            assert!(
                std::time::Instant::now() < deadline,
                "the second group was never written"
            );
            std::thread::yield_now();
        }
        assert_eq!(
            flushes(),
            1,
            "a second flush started while the first was in flight"
        );
        drop(gate);
        assert_eq!(first.join().unwrap().unwrap(), 0);
        assert_eq!(second.join().unwrap().unwrap(), 1);
    });
    assert_eq!(flushes(), 2, "one flush per group");
}

/// A pipelined append returns before its fdatasync (here held at the gate)
/// and a flusher thread issues that fdatasync by itself; `wait_durable`
/// returns only once it completed.
#[test]
fn pipelined_appends_are_synced_by_the_flusher() {
    let dir = tempfile::tempdir().unwrap();
    let HeldJournal {
        gated,
        engine,
        shard,
        entered,
        ..
    } = held_fsync_journal(dir.path());
    std::thread::scope(|scope| {
        let gate = OpenOnDrop(&gated);
        assert_eq!(shard.append_nowait(&[Record::new(b"a")]).unwrap(), 0);
        assert_eq!(shard.append_nowait(&[Record::new(b"b")]).unwrap(), 1);
        // Nobody waits: the flusher reached the fdatasync on its own.
        entered.recv().unwrap();
        let shard = &shard;
        let waiter = spawn_held(
            scope,
            move || shard.wait_durable(1),
            "wait_durable returned while the fdatasync was held",
        );
        drop(gate);
        waiter.join().unwrap().unwrap();
    });
    let stats = shard.stats().unwrap();
    assert!(
        stats["journal"]["fdatasyncs"].as_u64().unwrap() >= 1,
        "{stats}"
    );
    engine.close().unwrap();
}

#[test]
fn a_failed_fsync_in_the_flusher_reaches_wait_durable() {
    let dir = tempfile::tempdir().unwrap();
    let ops = Arc::new(Faulty::default());
    let engine = JournalEngine::with_ops(dir.path(), config(), ops.clone());
    let shard = engine
        .create_shard("s", &options(Durability::Fsync))
        .unwrap();
    ops.0.store(FAIL_SYNC, Ordering::SeqCst);
    // The append itself may or may not see the poison yet (the flusher
    // races it); its acknowledgement must not succeed.
    let offset = match shard.append_nowait(&[Record::new(b"lost")]) {
        Ok(offset) => offset,
        Err(err) => panic!("the first pipelined append failed early: {err}"),
    };
    let err = shard.wait_durable(offset).unwrap_err();
    assert_eq!(err.status(), Status::Poisoned, "{err}");
    assert!(err.to_string().contains("fdatasync"), "{err}");
    ops.0.store(OK, Ordering::SeqCst);
    let err = shard.append_nowait(&[Record::new(b"after")]).unwrap_err();
    assert_eq!(err.status(), Status::Poisoned);
    assert_eq!(
        shard.wait_durable(offset).unwrap_err().status(),
        Status::Poisoned
    );
}

/// What pipelined appends left unacknowledged is made durable by a clean
/// close, like everything else.
#[test]
fn close_persists_pipelined_appends() {
    let dir = tempfile::tempdir().unwrap();
    for durability in [Durability::Os, Durability::Fsync] {
        let engine = JournalEngine::new(dir.path(), config());
        engine.recover().unwrap();
        let name = format!("{durability:?}");
        let shard = engine.create_shard(&name, &options(durability)).unwrap();
        for i in 0..100u32 {
            shard
                .append_nowait(&[Record::new(&i.to_le_bytes())])
                .unwrap();
        }
        drop(shard);
        engine.close().unwrap();
    }
    let engine = JournalEngine::new(dir.path(), config());
    let shards = engine.recover().unwrap();
    assert_eq!(shards.len(), 2);
    let limits = ReadLimits {
        max_records: 1000,
        max_bytes: usize::MAX,
    };
    for (name, _, shard) in shards {
        let values: Vec<Vec<u8>> = shard
            .read(0, limits)
            .unwrap()
            .records
            .iter()
            .map(|r| r.value_bytes().to_vec())
            .collect();
        let want: Vec<Vec<u8>> = (0..100u32).map(|i| i.to_le_bytes().to_vec()).collect();
        assert_eq!(values, want, "{name}");
    }
}

/// A producer that never waits is held to the disk's pace: the bytes
/// buffered and not yet being written stay bounded.
#[test]
fn pipelined_appends_that_are_never_awaited_stay_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let config = JournalConfig {
        segment_bytes: 64 << 20,
        ..JournalConfig::default()
    };
    let engine = JournalEngine::new(dir.path(), config);
    engine.recover().unwrap();
    let shard = engine.create_shard("s", &options(Durability::Os)).unwrap();
    let log = engine.log.lock().clone().unwrap();
    let value = vec![3u8; 64 << 10];
    let mut most = 0;
    for _ in 0..512 {
        shard.append_nowait(&[Record::new(&value)]).unwrap();
        most = most.max(log.writer.pending_bytes());
    }
    let limit = super::shard::PIPELINE_BYTES + (64 << 10) + 4096;
    assert!(most <= limit, "{most} bytes buffered, limit {limit}");
    shard.wait_durable(511).unwrap();
    assert!(log.writer.written() >= 512 * (64 << 10));
    drop(shard);
    engine.close().unwrap();
}

/// Runs `f` on a thread and fails if it has not returned within 20 s: a
/// call that waits forever must fail the test, not hang it.
fn returns<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("{what} never returned"))
}

/// After the leader's I/O failed without a completion to say which request
/// did (io_uring_enter failed once the kernel took the requests, or the
/// submission panicked): the journal is poisoned, and every later append
/// and the close fail at once instead of waiting for a write phase that
/// never ends. What was acknowledged before is there after reopening.
fn failed_submission_poisons(ops: Arc<dyn FileOps>, fail: impl Fn(bool), cause: &str) {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(JournalEngine::with_ops(dir.path(), config(), ops));
    let shard = engine
        .create_shard("s", &options(Durability::Fsync))
        .unwrap();
    assert_eq!(shard.append(&[Record::new(b"before")]).unwrap(), 0);
    fail(true);
    let err = shard.append(&[Record::new(b"lost")]).unwrap_err();
    assert_eq!(err.status(), Status::Poisoned, "{err}");
    assert!(err.to_string().contains(cause), "{err}");
    fail(false);
    let (s, e) = (shard.clone(), engine.clone());
    let (append, close) = returns("an append or close after the failure", move || {
        (s.append(&[Record::new(b"after")]), e.close())
    });
    assert_eq!(append.unwrap_err().status(), Status::Poisoned);
    assert_eq!(close.unwrap_err().status(), Status::Poisoned);
    drop((shard, engine));
    let engine = JournalEngine::new(dir.path(), config());
    let shards = engine.recover().unwrap();
    let limits = ReadLimits {
        max_records: 10,
        max_bytes: usize::MAX,
    };
    let r = shards[0].2.read(0, limits).unwrap();
    assert_eq!(r.records[0].value_bytes(), b"before");
}

#[test]
fn a_failed_uring_enter_with_requests_in_flight_poisons() {
    if !uring_expected("a_failed_uring_enter_with_requests_in_flight_poisons") {
        return;
    }
    let ops = Arc::new(UringOps::new().unwrap());
    let set = ops.clone();
    let fail = move |on: bool| set.fault.store(if on { 3 } else { OK }, Ordering::SeqCst);
    failed_submission_poisons(ops, fail, "submitting journal writes");
}

/// Panics in `submit` while set.
#[derive(Default)]
struct Panicking(std::sync::atomic::AtomicBool);

impl FileOps for Panicking {
    fn submit(
        &self,
        writes: &[super::writer::WriteOp<'_>],
        syncs: &[&File],
    ) -> Result<(), super::writer::IoFailure> {
        assert!(!self.0.load(Ordering::SeqCst), "injected submission panic");
        PlainOps.submit(writes, syncs)
    }
}

#[test]
fn a_panic_in_the_writers_io_poisons_instead_of_wedging_the_journal() {
    let ops = Arc::new(Panicking::default());
    let set = ops.clone();
    let fail = move |on: bool| set.0.store(on, Ordering::SeqCst);
    failed_submission_poisons(ops, fail, "injected submission panic");
}

/// fdatasync blocks for one file (the journal's first segment, by inode)
/// while the gate is closed, after announcing itself; other files sync.
struct GatedFile {
    inode: std::sync::atomic::AtomicU64,
    gate: Gated,
}

impl FileOps for GatedFile {
    fn sync_data(&self, file: &File) -> io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        if file.metadata()?.ino() == self.inode.load(Ordering::SeqCst) {
            return self.gate.sync_data(file);
        }
        file.sync_data()
    }
}

/// A group written at the end of one segment has its fdatasync in flight
/// when the next group, after a roll, is written and synced in the next
/// segment. That later flush covers only the new segment: neither its
/// appender nor a waiter for the earlier group may be acknowledged before
/// the earlier segment's own fdatasync finished.
#[test]
fn a_flush_of_the_next_segment_does_not_acknowledge_the_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    let ops = Arc::new(GatedFile {
        inode: Default::default(),
        gate: Gated::default(),
    });
    let config = JournalConfig {
        segment_bytes: 64 << 10,
        ..JournalConfig::default()
    };
    let engine = JournalEngine::with_ops(dir.path(), config, ops.clone());
    let shard = engine
        .create_shard("s", &options(Durability::Fsync))
        .unwrap();
    let log = engine.log.lock().clone().unwrap();
    assert!(
        log.writer.io_name().ends_with("+direct"),
        "the overlapping flushes need O_DIRECT"
    );
    let first = std::fs::metadata(
        dir.path()
            .join("journal")
            .join(super::segment::file_name(0)),
    );
    ops.inode.store(
        std::os::unix::fs::MetadataExt::ino(&first.unwrap()),
        Ordering::SeqCst,
    );
    let (entered_tx, entered) = std::sync::mpsc::channel();
    *ops.gate.entered.lock() = Some(entered_tx);
    *ops.gate.closed.lock() = true;
    std::thread::scope(|scope| {
        let gate = OpenOnDrop(&ops.gate);
        let first = scope.spawn(|| shard.append(&[Record::new(b"first segment")]));
        entered.recv().unwrap();
        let end = log.writer.written();
        // Too large for the rest of the first segment: a roll.
        let big = vec![7u8; 64 << 10];
        let shard = &shard;
        let second = spawn_held(
            scope,
            move || shard.append(&[Record::new(&big)]),
            "an append in the next segment was acknowledged before the previous \
             segment's fdatasync finished",
        );
        let log = &log;
        let waiter = spawn_held(
            scope,
            move || log.writer.commit(end, true),
            "a group was acknowledged before its own segment's fdatasync finished",
        );
        drop(gate);
        assert_eq!(first.join().unwrap().unwrap(), 0);
        assert_eq!(second.join().unwrap().unwrap(), 1);
        waiter.join().unwrap().unwrap();
    });
    drop(shard);
    engine.close().unwrap();
}

/// A creation that reaches the engine after its close (a `create_shard`
/// racing `Store::close`) must not start a second journal: that one would
/// begin a new segment 0 (beside later segments, where earlier ones were
/// removed) and hand out shard ids from 1 again.
#[test]
fn a_shard_created_after_close_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let engine = JournalEngine::new(dir.path(), config());
    engine.recover().unwrap();
    engine
        .create_shard("s", &options(Durability::Fsync))
        .unwrap();
    engine.close().unwrap();
    let files = std::fs::read_dir(dir.path().join(super::JOURNAL_DIR))
        .unwrap()
        .count();
    let Err(err) = engine.create_shard("late", &options(Durability::Fsync)) else {
        panic!("a closed engine created a shard");
    };
    assert_eq!(err.status(), Status::Closed, "{err}");
    let after = std::fs::read_dir(dir.path().join(super::JOURNAL_DIR))
        .unwrap()
        .count();
    assert_eq!(after, files, "no file created after the close");
}

/// A shard deletion whose entry cannot be made durable (the fdatasync
/// fails, poisoning the journal) is refused and leaves the shard whole:
/// readable and still registered, not gone now and back after a restart.
#[test]
fn a_deletion_that_cannot_be_synced_leaves_the_shard() {
    let dir = tempfile::tempdir().unwrap();
    let ops = Arc::new(Faulty::default());
    let engine = JournalEngine::with_ops(dir.path(), config(), ops.clone());
    let shard = engine
        .create_shard("s", &options(Durability::Fsync))
        .unwrap();
    shard.append(&[Record::new(b"kept")]).unwrap();
    ops.0.store(FAIL_SYNC, Ordering::SeqCst);
    let err = engine.remove_shard("s", &shard).unwrap_err();
    assert_eq!(err.status(), Status::Poisoned, "{err}");
    let limits = ReadLimits {
        max_records: 10,
        max_bytes: usize::MAX,
    };
    let r = shard.read(0, limits).unwrap();
    assert_eq!(r.records[0].value_bytes(), b"kept");
    assert_eq!(shard.info().unwrap().records, 1);
    let log = engine.log.lock().clone().unwrap();
    assert!(log.shards.lock().contains_key("s"), "still registered");
}

/// A process that dies without closing: nothing buffered reaches the
/// disk. The engine's threads are stopped first so that none writes
/// behind the next open's back.
fn crash(engine: JournalEngine, shards: Vec<Arc<dyn Shard>>) {
    let log = engine.log.lock().clone().unwrap();
    log.writer.stop_prefill();
    std::mem::forget(shards);
    std::mem::forget(log);
    std::mem::forget(engine);
}

/// A delete's rewrite moves a batch out of an old segment before the
/// rewrite is durable (durability `none`): the segment must not be removed
/// until it is, or a crash loses the batch's surviving records.
#[test]
fn a_segment_outlives_the_unsynced_rewrite_that_moved_its_last_batch() {
    let dir = tempfile::tempdir().unwrap();
    let engine = JournalEngine::new(dir.path(), config());
    engine.recover().unwrap();
    let kept = engine
        .create_shard("kept", &options(Durability::None))
        .unwrap();
    let filler = engine
        .create_shard("filler", &options(Durability::Fsync))
        .unwrap();
    kept.append(&[Record::new(b"dropped")]).unwrap();
    kept.append(&[Record::new(b"a"), Record::new(b"b"), Record::new(b"c")])
        .unwrap();
    // The first segment fills up with the filler's batches and rolls.
    let big = vec![7u8; 256 << 10];
    for _ in 0..6 {
        filler.append(&[Record::new(&big)]).unwrap();
    }
    let log = engine.log.lock().clone().unwrap();
    let first = *log.segments.read().keys().next().unwrap();
    assert_ne!(first, log.writer.active_base(), "the journal rolled");
    // The kept shard's catalogue record moves to the active segment, and
    // the filler's batches leave the first one: only "a b c" pins it.
    kept.delete_records_before(1).unwrap();
    engine.remove_shard("filler", &filler).unwrap();
    drop(filler);
    assert!(log.segments.read().contains_key(&first), "still pinned");
    let deleted = kept
        .delete_where(0..i64::MAX, &mut |r| r.value_bytes() == b"b")
        .unwrap();
    assert_eq!(deleted, 1);
    crash(engine, vec![kept]);

    let engine = JournalEngine::new(dir.path(), config());
    let shards = engine.recover().unwrap();
    let (_, _, kept) = shards.into_iter().find(|(n, _, _)| n == "kept").unwrap();
    let limits = ReadLimits {
        max_records: 10,
        max_bytes: usize::MAX,
    };
    let values: Vec<Vec<u8>> = kept
        .read(1, limits)
        .unwrap()
        .records
        .iter()
        .map(|r| r.value_bytes().to_vec())
        .collect();
    assert!(
        values == [b"a".to_vec(), b"c".to_vec()]
            || values == [b"a".to_vec(), b"b".to_vec(), b"c".to_vec()],
        "{values:?}"
    );
}

/// Bytes of every file in the journal directory.
fn journal_disk_bytes(store_dir: &Path) -> u64 {
    std::fs::read_dir(store_dir.join(super::JOURNAL_DIR))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

/// The journal's files (but the active and the prefilled segment) over
/// the bytes its shards retain, measured between cleaning passes.
fn disk_per_retained(
    log: &super::Log,
    dir: &Path,
    idle: &Arc<dyn Shard>,
    busy: &[Arc<dyn Shard>],
) -> f64 {
    let _between_passes = log.cleaning.lock();
    let retained: u64 = std::iter::once(idle)
        .chain(busy)
        .map(|s| s.info().unwrap().bytes)
        .sum();
    let segment = log.config.segment_bytes;
    let disk = journal_disk_bytes(dir).saturating_sub(2 * segment);
    disk as f64 / retained as f64
}

/// One idle shard with old, retained data while busy shards write 20× its
/// size under byte retention: the cleaner relocates the idle shard's
/// batches, so the journal's files stay within 1.5× what the shards
/// retain plus the active and the prefilled segment, and every record of
/// the idle shard stays readable, before and after a reopen.
#[test]
fn the_cleaner_bounds_disk_use_behind_an_idle_shard() {
    const SEGMENT: u64 = 256 << 10;
    const RECORD: usize = 4 << 10;
    let dir = tempfile::tempdir().unwrap();
    let config = JournalConfig {
        segment_bytes: SEGMENT,
        ..JournalConfig::default()
    };
    let engine = JournalEngine::new(dir.path(), config.clone());
    engine.recover().unwrap();
    let idle = engine
        .create_shard("idle", &options(Durability::Fsync))
        .unwrap();
    let value = |shard: usize, i: usize| vec![(shard * 31 + i) as u8; RECORD];
    for i in 0..128 {
        idle.append(&[Record::new(&value(0, i))]).unwrap();
    }
    let idle_bytes = idle.info().unwrap().bytes;
    let busy_options = ShardOptions {
        retention_bytes: 128 << 10,
        ..options(Durability::Os)
    };
    let busy: Vec<_> = (1..=4)
        .map(|s| {
            engine
                .create_shard(&format!("busy{s}"), &busy_options)
                .unwrap()
        })
        .collect();
    let log = engine.log.lock().clone().unwrap();
    let mut worst = 0f64;
    for i in 0..(20 * 128) {
        busy[i % 4]
            .append(&[Record::new(&value(1 + i % 4, i))])
            .unwrap();
        if i % 64 == 63 {
            worst = worst.max(disk_per_retained(&log, dir.path(), &idle, &busy));
            log.clean().unwrap();
        }
    }
    worst = worst.max(disk_per_retained(&log, dir.path(), &idle, &busy));
    let stats = log.stats();
    assert!(
        stats["relocated_bytes"].as_u64().unwrap() >= idle_bytes,
        "{stats}"
    );
    eprintln!("disk / retained at most {worst:.3}");
    assert!(worst <= 1.5, "disk / retained reached {worst:.2}: {stats}");
    let check = |shard: &Arc<dyn Shard>| {
        let limits = ReadLimits {
            max_records: 1000,
            max_bytes: usize::MAX,
        };
        let got = shard.read(0, limits).unwrap().records;
        assert_eq!(got.len(), 128);
        for (i, record) in got.iter().enumerate() {
            assert_eq!(record.offset, i as i64);
            assert_eq!(record.value_bytes(), value(0, i), "idle@{i}");
        }
    };
    check(&idle);
    drop((idle, busy));
    drop(log);
    engine.close().unwrap();

    let engine = JournalEngine::new(dir.path(), config);
    let shards = engine.recover().unwrap();
    let (_, _, idle) = shards.into_iter().find(|(n, _, _)| n == "idle").unwrap();
    check(&idle);
}

/// A shard that drains steadily (byte retention of two segments) is not
/// copied by the cleaner, but for a few batches while the first passes
/// learn its pace: its oldest batches leave within a few passes anyway.
/// (Before the cleaner told leaving batches apart, it copied more than half
/// of what this shard wrote.) Its journal files stay within a few segments
/// of what it retains all the same.
#[test]
fn the_cleaner_leaves_a_draining_shards_batches_in_place() {
    const SEGMENT: u64 = CLEANED_SEGMENT;
    let dir = tempfile::tempdir().unwrap();
    let (_engine, shard, log) = draining_shard(dir.path(), 2 * SEGMENT);
    let value = vec![5u8; 4 << 10];
    let mut most = 0;
    for i in 0..1024 {
        shard.append(&[Record::new(&value)]).unwrap();
        if i % 16 == 15 {
            log.clean().unwrap();
            most = most.max(journal_disk_bytes(dir.path()));
        }
    }
    let stats = log.stats();
    let written = 1024 * value.len() as u64;
    let relocated = stats["relocated_bytes"].as_u64().unwrap();
    assert!(relocated * 100 < written, "{stats}");
    assert!(stats["removed_segments"].as_u64().unwrap() > 8, "{stats}");
    // Retained, plus the partly dead oldest segment, the active and the
    // prefilled one.
    assert!(most <= 5 * SEGMENT, "{most} bytes of journal files");
}

/// A new shard whose retention already drops batches when the cleaner
/// first looks is not copied: the first passes take its front's movement
/// since it was created for its pace. (They used to count it as idle and
/// copy what it retained in closed segments: up to its whole retention
/// after each of its first two segment rolls.) An idle shard's front
/// never moved, so its batches are copied on the first pass as before
/// (`the_cleaner_bounds_disk_use_behind_an_idle_shard`).
#[test]
fn a_new_draining_shard_is_not_copied_on_the_first_pass() {
    let dir = tempfile::tempdir().unwrap();
    let (_engine, shard, log) = draining_shard(dir.path(), 160 << 10);
    let value = vec![5u8; 4 << 10];
    // Four segment rolls, then a few batches: the last closed segment
    // holds most of what the retention keeps, and is mostly dead.
    let rolls = || log.stats()["segment_rolls"].as_u64().unwrap();
    while rolls() < 4 {
        shard.append(&[Record::new(&value)]).unwrap();
    }
    for _ in 0..8 {
        shard.append(&[Record::new(&value)]).unwrap();
    }
    let pass = log.clean().unwrap();
    assert!(pass.segments > 0, "a mostly dead prefix: {pass:?}");
    assert_eq!(pass.relocated_bytes, 0);
}

/// The segment size of the cleaner tests' journals.
const CLEANED_SEGMENT: u64 = 256 << 10;

/// A journal of `CLEANED_SEGMENT`s whose cleaner runs only when the test
/// calls `clean`, with one new `os` shard that keeps `retention_bytes`.
fn draining_shard(
    dir: &Path,
    retention_bytes: u64,
) -> (JournalEngine, Arc<dyn Shard>, Arc<super::Log>) {
    let config = JournalConfig {
        segment_bytes: CLEANED_SEGMENT,
        cleaner: false,
        ..JournalConfig::default()
    };
    let engine = JournalEngine::new(dir, config);
    engine.recover().unwrap();
    let draining = ShardOptions {
        retention_bytes,
        ..options(Durability::Os)
    };
    let shard = engine.create_shard("draining", &draining).unwrap();
    let log = engine.log.lock().clone().unwrap();
    (engine, shard, log)
}

/// The values of every record the shard retains.
fn values(shard: &Arc<dyn Shard>) -> Vec<Vec<u8>> {
    let limits = ReadLimits {
        max_records: usize::MAX,
        max_bytes: usize::MAX,
    };
    let first = shard.info().unwrap().first_offset;
    let read = shard.read(first, limits).unwrap();
    read.records
        .iter()
        .map(|r| r.value_bytes().to_vec())
        .collect()
}

fn recycling_config() -> JournalConfig {
    JournalConfig {
        segment_bytes: 256 << 10,
        // Every reopen replays (and so scans) the whole journal.
        checkpoint_bytes: 0,
        recycle_segments: 4,
        ..config()
    }
}

/// A journal whose segments after the first live in recycled files: a
/// shard fills six segments and is deleted (its files go to the pool),
/// then `new` rolls into the pool twice. Returns `new`'s values.
fn journal_in_recycled_files(engine: &JournalEngine) -> (Arc<dyn Shard>, Vec<Vec<u8>>) {
    fill_and_delete(engine);
    let new = engine
        .create_shard("new", &options(Durability::Fsync))
        .unwrap();
    let mut expected = Vec::new();
    for i in 0..40 {
        let value = format!("new-{i:02}-").repeat(1500).into_bytes();
        new.append(&[Record::new(&value)]).unwrap();
        expected.push(value);
    }
    let log = engine.log.lock().clone().unwrap();
    let stats = log.stats();
    assert!(stats["recycled_segments"].as_u64().unwrap() >= 2, "{stats}");
    assert!(stats["free_segments"].as_u64().unwrap() >= 1, "{stats}");
    (new, expected)
}

/// A shard fills six segments and is deleted: its segments are reclaimed.
fn fill_and_delete(engine: &JournalEngine) {
    engine.recover().unwrap();
    let old = engine
        .create_shard("old", &options(Durability::Fsync))
        .unwrap();
    let filler = vec![b'o'; 16 << 10];
    for _ in 0..6 * 16 {
        old.append(&[Record::new(&filler)]).unwrap();
    }
    engine.remove_shard("old", &old).unwrap();
}

#[test]
fn without_recycling_reclaimed_files_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let config = JournalConfig {
        recycle_segments: 0,
        ..recycling_config()
    };
    let engine = JournalEngine::new(dir.path(), config);
    fill_and_delete(&engine);
    let new = engine
        .create_shard("new", &options(Durability::Fsync))
        .unwrap();
    let big = vec![b'n'; 100 << 10];
    for _ in 0..6 {
        new.append(&[Record::new(&big)]).unwrap();
    }
    let log = engine.log.lock().clone().unwrap();
    let stats = log.stats();
    assert!(stats["removed_segments"].as_u64().unwrap() >= 5, "{stats}");
    assert_eq!(stats["recycled_segments"], 0, "{stats}");
    assert_eq!(stats["free_segments"], 0, "{stats}");
    let journal = dir.path().join(super::JOURNAL_DIR);
    for item in std::fs::read_dir(journal).unwrap() {
        let name = item.unwrap().file_name().into_string().unwrap();
        assert!(!name.ends_with(".free"), "{name}");
    }
}

/// The global position where the entries of the segment at `base` end.
fn data_end(data: &[u8], base: u64) -> u64 {
    let mut pos = 0u64;
    while let super::entry::Parsed::Valid(h) = super::entry::parse(&data[pos as usize..], base) {
        pos += h.entry_len();
    }
    pos
}

#[test]
fn a_recycled_segment_never_replays_its_earlier_entries() {
    let dir = tempfile::tempdir().unwrap();
    let engine = JournalEngine::new(dir.path(), recycling_config());
    let (new, expected) = journal_in_recycled_files(&engine);
    let log = engine.log.lock().clone().unwrap();
    let active = log.segments.read().values().last().unwrap().clone();
    let tail = (log.writer.end_position() - active.base) as usize;
    // Past the writer, the file still holds the deleted shard's entries,
    // intact: what recovery must take for stale, not for data.
    let file = std::fs::read(&active.path).unwrap();
    assert!(
        file[tail..].windows(64).any(|w| w == [b'o'; 64]),
        "the active segment holds no earlier entries past its data"
    );
    drop(log);
    crash(engine, vec![new]);

    let engine = JournalEngine::new(dir.path(), recycling_config());
    let shards = engine.recover().unwrap();
    let names: Vec<&str> = shards.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(names, ["new"], "the deleted shard came back");
    assert_eq!(values(&shards[0].2), expected);
    let log = engine.log.lock().clone().unwrap();
    assert_eq!(log.stats()["truncated_bytes"], 0, "{}", log.stats());
    drop(log);
    let new = shards.into_iter().next().unwrap().2;
    new.append(&[Record::new(b"after")]).unwrap();
    crash(engine, vec![new]);

    let engine = JournalEngine::new(dir.path(), recycling_config());
    let shards = engine.recover().unwrap();
    let mut with_after = expected;
    with_after.push(b"after".to_vec());
    assert_eq!(values(&shards[0].2), with_after);
}

/// A crash between taking a free file as the next segment (the rename)
/// and writing to it leaves a last segment of stale entries only: an
/// empty segment, which appends then fill.
#[test]
fn a_free_file_renamed_into_place_before_any_write_is_an_empty_segment() {
    let dir = tempfile::tempdir().unwrap();
    let engine = JournalEngine::new(dir.path(), recycling_config());
    let (new, expected) = journal_in_recycled_files(&engine);
    engine.close().unwrap();
    drop((new, engine));
    let journal = dir.path().join(super::JOURNAL_DIR);
    let names = || -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&journal)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    };
    let last = names().into_iter().rfind(|n| n.ends_with(".log")).unwrap();
    let last_base: u64 = last.trim_end_matches(".log").parse().unwrap();
    let free = names().into_iter().find(|n| n.ends_with(".free")).unwrap();
    let next = super::segment::file_name(last_base + (256 << 10));
    std::fs::rename(journal.join(&free), journal.join(&next)).unwrap();
    // The crash came before the clean close's mark: replay everything.
    let _ = std::fs::remove_file(journal.join("index.ckpt"));

    let engine = JournalEngine::new(dir.path(), recycling_config());
    let shards = engine.recover().unwrap();
    assert_eq!(values(&shards[0].2), expected);
    let new = shards.into_iter().next().unwrap().2;
    let big = vec![b'n'; 100 << 10];
    for _ in 0..6 {
        new.append(&[Record::new(&big)]).unwrap();
    }
    engine.close().unwrap();
    drop((new, engine));
    let engine = JournalEngine::new(dir.path(), recycling_config());
    let shards = engine.recover().unwrap();
    let got = values(&shards[0].2);
    assert_eq!(got.len(), expected.len() + 6);
    assert_eq!(got[..expected.len()], expected[..]);
}

/// What a crash left past the data of a segment that is not the last (an
/// earlier use's entry, before the roll's zeros reached the disk) is
/// zeroed by recovery, so the file never holds two earlier uses' entries.
#[test]
fn recovery_zeroes_an_earlier_use_past_the_data_of_a_closed_segment() {
    let dir = tempfile::tempdir().unwrap();
    let engine = JournalEngine::new(dir.path(), recycling_config());
    let (new, expected) = journal_in_recycled_files(&engine);
    let log = engine.log.lock().clone().unwrap();
    let closed = log.segments.read().values().next().unwrap().clone();
    drop(log);
    crash(engine, vec![new]);

    let mut file = std::fs::read(&closed.path).unwrap();
    let end = data_end(&file, closed.base) as usize;
    assert!(end < file.len() - 64, "the segment has an unused end");
    let earlier = super::entry::place(
        &super::entry::header(super::entry::Kind::Synced, 0, 1, &[]),
        closed.base.wrapping_sub(1 << 30),
    );
    file[end..end + 32].copy_from_slice(&earlier);
    std::fs::write(&closed.path, &file).unwrap();

    let engine = JournalEngine::new(dir.path(), recycling_config());
    let shards = engine.recover().unwrap();
    assert_eq!(values(&shards[0].2), expected);
    let file = std::fs::read(&closed.path).unwrap();
    assert!(
        file[end..].iter().all(|&b| b == 0),
        "the residue is still there"
    );
}

/// A journal written before entries carried tags (mqstore 0.2.0) opens and
/// takes appends; its segment, untagged, is deleted when reclaimed, never
/// recycled (its entries would be valid anywhere).
#[test]
fn a_journal_of_untagged_entries_opens_and_its_file_is_never_recycled() {
    use super::entry::{self, Parsed};
    let dir = tempfile::tempdir().unwrap();
    let engine = JournalEngine::new(dir.path(), recycling_config());
    engine.recover().unwrap();
    let old = engine
        .create_shard("old", &options(Durability::Fsync))
        .unwrap();
    let mut expected = Vec::new();
    for i in 0..10 {
        let value = format!("old-{i}").into_bytes();
        old.append(&[Record::new(&value)]).unwrap();
        expected.push(value);
    }
    engine.close().unwrap();
    drop((old, engine));
    // As 0.2.0 wrote it: every entry untagged, no index checkpoint.
    let journal = dir.path().join(super::JOURNAL_DIR);
    let first = journal.join(super::segment::file_name(0));
    let mut data = std::fs::read(&first).unwrap();
    let mut pos = 0;
    while let Parsed::Valid(h) = entry::parse(&data[pos..], 0) {
        let end = pos + entry::HEADER_LEN + h.payload_len as usize;
        let header = data[pos..pos + entry::HEADER_LEN].try_into().unwrap();
        let untagged = entry::untagged(&header, &data[pos + entry::HEADER_LEN..end]);
        data[pos..pos + entry::HEADER_LEN].copy_from_slice(&untagged);
        pos += h.entry_len() as usize;
    }
    assert!(matches!(entry::parse(&data, 0), Parsed::Valid(h) if !h.tagged));
    std::fs::write(&first, &data).unwrap();
    std::fs::remove_file(journal.join("index.ckpt")).unwrap();

    let engine = JournalEngine::new(dir.path(), recycling_config());
    let shards = engine.recover().unwrap();
    let (_, _, old) = shards.into_iter().find(|(n, _, _)| n == "old").unwrap();
    assert_eq!(values(&old), expected);
    engine.remove_shard("old", &old).unwrap();
    drop(old);
    let retained = ShardOptions {
        retention_bytes: 256 << 10,
        ..options(Durability::Fsync)
    };
    let new = engine.create_shard("new", &retained).unwrap();
    let big = vec![b'n'; 100 << 10];
    // A file kept is named after its last segment, and taken at a roll,
    // the earliest in the append after the one whose reclaim kept it.
    let kept_untagged = journal.join("00000000000000000000.free");
    for _ in 0..12 {
        new.append(&[Record::new(&big)]).unwrap();
        assert!(!kept_untagged.exists(), "the untagged file was kept");
    }
    assert!(!first.exists(), "the untagged segment was not reclaimed");
    let log = engine.log.lock().clone().unwrap();
    let stats = log.stats();
    assert!(
        stats["kept_free_segments"].as_u64().unwrap() >= 1,
        "{stats}"
    );
    drop(log);
    let kept = values(&new);
    crash(engine, vec![new]);
    let engine = JournalEngine::new(dir.path(), recycling_config());
    let shards = engine.recover().unwrap();
    let names: Vec<&str> = shards.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(names, ["new"]);
    assert_eq!(values(&shards[0].2), kept);
}
