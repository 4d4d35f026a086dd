//! The journal's group-commit core: the log's watermarks, their
//! transitions, and who waits for what. The I/O is not here: a `Leader`
//! (the writer, or the model in the loom test) takes the buffered group,
//! writes and syncs it; this module decides who leads, and wakes each
//! waiter exactly when its own position is covered.
//!
//! There is no writer thread. An appender (or a flusher thread) that needs
//! its entry written or synced and finds no write phase running becomes the
//! leader: it takes everything buffered, writes it and, if anyone asked for
//! it, fdatasyncs. Everyone who enqueued meanwhile waits and is served by
//! the next leader in one write and one fdatasync. With `overlap`, the
//! fdatasync is a sync phase of its own after the write phase is released,
//! so the next group's write overlaps this group's device flush. One flush
//! is in flight at a time: the next one covers every group written
//! meanwhile.
//!
//! Waiters sleep on a condvar of their own, kept in order of the position
//! they need, so a phase's end wakes the covered prefix and one candidate
//! leader, never the crowd.

use std::collections::BTreeMap;

use crate::{Error, Result};

/// The locks of the core: parking_lot's, or loom's under the model checker
/// (the `loom` feature, for `cargo test --features loom commit::model`).
#[cfg(not(feature = "loom"))]
mod sync {
    pub use parking_lot::{Condvar, Mutex, MutexGuard as Guard};
    pub use std::sync::Arc;

    pub fn wait<T>(cond: &Condvar, guard: &mut Guard<'_, T>) {
        cond.wait(guard);
    }

    pub fn unlocked<T, R>(guard: &mut Guard<'_, T>, f: impl FnOnce() -> R) -> R {
        Guard::unlocked(guard, f)
    }
}

#[cfg(feature = "loom")]
mod sync {
    pub use loom::sync::{Arc, Condvar};
    use std::ops::{Deref, DerefMut};

    pub struct Mutex<T>(loom::sync::Mutex<T>);

    /// A guard that can be given up and taken back in place, as
    /// parking_lot's can.
    pub struct Guard<'a, T> {
        mutex: &'a loom::sync::Mutex<T>,
        inner: Option<loom::sync::MutexGuard<'a, T>>,
    }

    impl<T> Mutex<T> {
        pub fn new(value: T) -> Self {
            Mutex(loom::sync::Mutex::new(value))
        }

        pub fn lock(&self) -> Guard<'_, T> {
            Guard {
                mutex: &self.0,
                inner: Some(self.0.lock().expect("no poisoning in the model")),
            }
        }
    }

    impl<T> Deref for Guard<'_, T> {
        type Target = T;
        fn deref(&self) -> &T {
            self.inner.as_ref().expect("held")
        }
    }

    impl<T> DerefMut for Guard<'_, T> {
        fn deref_mut(&mut self) -> &mut T {
            self.inner.as_mut().expect("held")
        }
    }

    pub fn wait<T>(cond: &Condvar, guard: &mut Guard<'_, T>) {
        let inner = guard.inner.take().expect("held");
        guard.inner = Some(cond.wait(inner).expect("no poisoning in the model"));
    }

    pub fn unlocked<T, R>(guard: &mut Guard<'_, T>, f: impl FnOnce() -> R) -> R {
        drop(guard.inner.take());
        let result = f();
        guard.inner = Some(guard.mutex.lock().expect("no poisoning in the model"));
        result
    }
}

pub use sync::{unlocked, Guard};
use sync::{Arc, Condvar, Mutex};

/// The log's watermarks (global log positions) and the phases in flight.
/// Invariants (checked after every transition in debug builds):
/// `synced <= sync_started <= written <= appended`, a flush in flight is
/// of `sync_started`, and a write phase's target lies in
/// `[written, appended]`.
#[derive(Debug)]
pub struct Marks {
    appended: u64,
    written: u64,
    synced: u64,
    /// The highest position an fsync waiter needs synced.
    sync_wanted: u64,
    /// The highest target of a sync phase started: everything before it
    /// is covered by a flush in flight or done.
    sync_started: u64,
    /// The target of the sync phase in flight.
    flushing: Option<u64>,
    /// The target of the write phase in progress.
    writing: Option<u64>,
}

/// What a leader's write phase covers.
#[derive(Clone, Copy, Debug)]
pub struct WritePhase {
    /// The log end when the group was taken.
    pub target: u64,
    /// Whether a waiter asked for a sync the group must include.
    pub sync: bool,
}

impl Marks {
    /// Marks of a log whose first `end` bytes are on stable storage.
    pub fn new(end: u64) -> Marks {
        Marks {
            appended: end,
            written: end,
            synced: end,
            sync_wanted: 0,
            sync_started: end,
            flushing: None,
            writing: None,
        }
    }

    pub fn appended(&self) -> u64 {
        self.appended
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    pub fn synced(&self) -> u64 {
        self.synced
    }

    /// An entry ending at `end` entered the log.
    pub fn append(&mut self, end: u64) {
        debug_assert!(end >= self.appended, "the log only grows");
        self.appended = end;
    }

    pub fn covers(&self, need: u64, sync: bool) -> bool {
        if sync {
            self.synced >= need
        } else {
            self.written >= need
        }
    }

    /// Whether a waiter for `need` may lead now: no write phase runs, and
    /// a sync waiter has something to do: to write its entry, or to flush
    /// it when no flush is in flight (see `sync_leaders_above`).
    pub fn may_lead(&self, need: u64, sync: bool) -> bool {
        self.writing.is_none() && (!sync || need > self.sync_leaders_above())
    }

    /// Sync waiters needing more than this may lead. Not those a flush in
    /// flight covers: leading another would find their segments already
    /// taken from the dirty list and could report durability before that
    /// flush ends. And while a flush is in flight, only those whose entry
    /// is still to be written: one flush at a time, so that the next one
    /// covers every group written meanwhile, rather than each group
    /// queueing a device flush of its own.
    fn sync_leaders_above(&self) -> u64 {
        if self.flushing() {
            self.written
        } else {
            self.sync_started
        }
    }

    /// Whether a sync phase is in flight.
    pub fn flushing(&self) -> bool {
        self.flushing.is_some()
    }

    pub fn want_sync(&mut self, need: u64) {
        self.sync_wanted = self.sync_wanted.max(need);
    }

    /// Starts a write phase over everything appended.
    pub fn begin_write(&mut self) -> WritePhase {
        debug_assert!(self.writing.is_none(), "one write phase at a time");
        self.writing = Some(self.appended);
        self.check();
        WritePhase {
            target: self.appended,
            sync: self.sync_wanted > self.synced,
        }
    }

    pub fn end_write(&mut self, phase: WritePhase) {
        debug_assert_eq!(self.writing, Some(phase.target), "ends the phase it began");
        self.writing = None;
        self.written = phase.target;
        self.check();
    }

    /// A write phase failed (the journal is poisoned).
    pub fn abort_write(&mut self) {
        self.writing = None;
    }

    /// A flush of everything written before `target` starts.
    pub fn begin_sync(&mut self, target: u64) {
        debug_assert!(target <= self.written, "only written bytes are synced");
        debug_assert!(self.flushing.is_none(), "one flush at a time");
        debug_assert!(target >= self.sync_started, "flushes in log order");
        self.sync_started = target;
        self.flushing = Some(target);
        self.check();
    }

    /// The flush of `target` succeeded.
    pub fn end_sync(&mut self, target: u64) {
        debug_assert_eq!(self.flushing, Some(target), "ends the flush in flight");
        self.flushing = None;
        self.synced = self.synced.max(target);
        self.check();
    }

    fn check(&self) {
        debug_assert!(self.synced <= self.written, "{self:?}");
        debug_assert!(self.written <= self.appended, "{self:?}");
        debug_assert!(self.synced <= self.sync_started, "{self:?}");
        debug_assert!(self.sync_started <= self.written, "{self:?}");
        debug_assert!(
            self.flushing.is_none_or(|t| t == self.sync_started),
            "{self:?}"
        );
        debug_assert!(
            self.writing
                .is_none_or(|t| self.written <= t && t <= self.appended),
            "{self:?}"
        );
    }
}

/// Sleeping waiters in order of the position they need: (need, arrival).
#[derive(Default)]
struct Waiters {
    writes: BTreeMap<(u64, u64), Arc<Condvar>>,
    syncs: BTreeMap<(u64, u64), Arc<Condvar>>,
    arrivals: u64,
}

impl Waiters {
    fn queue(&mut self, sync: bool) -> &mut BTreeMap<(u64, u64), Arc<Condvar>> {
        if sync {
            &mut self.syncs
        } else {
            &mut self.writes
        }
    }

    /// Wakes every waiter `marks` covers, and, when no write phase runs,
    /// the first waiter that may lead (so a group is never left without a
    /// leader while someone waits).
    fn wake(&mut self, marks: &Marks) {
        wake_below(&mut self.writes, marks.written);
        wake_below(&mut self.syncs, marks.synced);
        if marks.writing.is_some() {
            return;
        }
        // Every write waiter left may lead; among the sync waiters, see
        // `Marks::sync_leaders_above`.
        let sync_key = self
            .syncs
            .range((marks.sync_leaders_above() + 1, 0)..)
            .next()
            .map(|(&key, _)| key);
        let candidate = match sync_key {
            Some(key) => self.syncs.remove(&key),
            None => self.writes.pop_first().map(|(_, cond)| cond),
        };
        if let Some(cond) = candidate {
            cond.notify_one();
        }
    }

    fn wake_all(&mut self) {
        for (_, cond) in std::mem::take(&mut self.writes)
            .into_iter()
            .chain(std::mem::take(&mut self.syncs))
        {
            cond.notify_one();
        }
    }
}

fn wake_below(queue: &mut BTreeMap<(u64, u64), Arc<Condvar>>, covered: u64) {
    while let Some(entry) = queue.first_entry() {
        if entry.key().0 > covered {
            break;
        }
        entry.remove().notify_one();
    }
}

/// Everything under the journal's one lock: the marks, the waiters, the
/// poison, and the writer's own state `S` (its buffers).
pub struct Core<S> {
    pub marks: Marks,
    waiters: Waiters,
    poisoned: Option<String>,
    pub state: S,
}

impl<S> Core<S> {
    pub fn poisoned(&self) -> Option<&str> {
        self.poisoned.as_deref()
    }

    /// The error an operation gets once the journal is poisoned.
    pub fn check_poisoned(&self) -> Result<()> {
        match &self.poisoned {
            Some(reason) => Err(Error::Poisoned(format!("journal: {reason}"))),
            None => Ok(()),
        }
    }

    fn wake(&mut self) {
        self.waiters.wake(&self.marks);
    }

    /// Poisons the journal (the first reason stays), reports it and wakes
    /// every waiter: from now on appends fail, and an operator should know
    /// why.
    pub fn poison(&mut self, reason: String) {
        if self.poisoned.is_none() {
            crate::log::emit(
                crate::log::Level::Error,
                &format!("journal poisoned, appends fail until it is reopened: {reason}"),
            );
            self.poisoned = Some(reason);
        }
        self.waiters.wake_all();
    }
}

/// The I/O side of group commit. Methods taking `Core` run under the lock;
/// `write` and `sync` run without it.
pub trait Leader {
    type State;
    /// What a leader took to write.
    type Group;
    /// What a sync phase flushes.
    type Dirty;

    /// Whether the fdatasync runs as a phase of its own after the write
    /// phase is released (true), or inside it.
    fn overlap(&self) -> bool;
    /// Takes everything buffered (and, with `sync_inline`, what the write
    /// phase must fdatasync after writing it).
    fn take(&self, core: &mut Core<Self::State>, sync_inline: bool) -> Self::Group;
    fn write(&self, group: &mut Self::Group) -> Result<()>;
    /// After a successful write phase.
    fn written(&self, core: &mut Core<Self::State>, group: &Self::Group, synced_inline: bool);
    fn take_dirty(&self, core: &mut Core<Self::State>) -> Self::Dirty;
    fn sync(&self, dirty: &Self::Dirty) -> Result<()>;
    fn sync_failed(&self, core: &mut Core<Self::State>, dirty: Self::Dirty);
    /// After `synced` moved.
    fn synced(&self, core: &mut Core<Self::State>);
    /// The group's end, after its phases (it may unlock).
    fn finish(&self, core: &mut Guard<'_, Core<Self::State>>, group: Self::Group, written: bool);
}

/// The core under its lock.
pub struct GroupCommit<S> {
    core: Mutex<Core<S>>,
}

impl<S> GroupCommit<S> {
    pub fn new(end: u64, state: S) -> GroupCommit<S> {
        GroupCommit {
            core: Mutex::new(Core {
                marks: Marks::new(end),
                waiters: Waiters::default(),
                poisoned: None,
                state,
            }),
        }
    }

    pub fn lock(&self) -> Guard<'_, Core<S>> {
        self.core.lock()
    }

    /// Waits until everything before `need` is written (and synced when
    /// `sync`), leading the I/O when nobody else is.
    pub fn commit<L: Leader<State = S>>(&self, leader: &L, need: u64, sync: bool) -> Result<()> {
        let mut core = self.core.lock();
        loop {
            core.check_poisoned()?;
            if core.marks.covers(need, sync) {
                return Ok(());
            }
            if sync {
                core.marks.want_sync(need);
            }
            if core.marks.may_lead(need, sync) {
                self.lead(&mut core, leader);
            } else {
                sleep(&mut core, need, sync);
            }
        }
    }

    fn lead<L: Leader<State = S>>(&self, core: &mut Guard<'_, Core<S>>, leader: &L) {
        let overlap = leader.overlap();
        let phase = core.marks.begin_write();
        let inline = phase.sync && !overlap;
        let mut group = leader.take(core, inline);
        let result = sync::unlocked(core, || guarded(|| leader.write(&mut group)));
        let written = result.is_ok();
        match result {
            Ok(()) => {
                core.marks.end_write(phase);
                leader.written(core, &group, inline);
                if inline {
                    core.marks.begin_sync(phase.target);
                    core.marks.end_sync(phase.target);
                    leader.synced(core);
                }
            }
            Err(e) => {
                core.marks.abort_write();
                core.poison(e.to_string());
            }
        }
        // The next group's leader is woken only after this group's flush
        // counts as started, so that it is picked among the waiters the
        // flush does not cover.
        let flush_now = phase.sync && overlap && written && !core.marks.flushing();
        let flush = (flush_now && core.poisoned.is_none()).then(|| {
            let dirty = leader.take_dirty(core);
            core.marks.begin_sync(phase.target);
            dirty
        });
        core.wake();
        if let Some(dirty) = flush {
            self.sync_phase(core, leader, phase.target, dirty);
        }
        leader.finish(core, group, written);
    }

    /// Flushes what was written up to `target` (a phase begun by
    /// `Marks::begin_sync`) without holding the write phase. A failure
    /// poisons the journal: after a failed fdatasync the kernel may have
    /// dropped the dirty pages, so no later flush could vouch for them.
    fn sync_phase<L: Leader<State = S>>(
        &self,
        core: &mut Guard<'_, Core<S>>,
        leader: &L,
        target: u64,
        dirty: L::Dirty,
    ) {
        match sync::unlocked(core, || guarded(|| leader.sync(&dirty))) {
            Ok(()) => {
                core.marks.end_sync(target);
                leader.synced(core);
            }
            Err(e) => {
                leader.sync_failed(core, dirty);
                core.poison(e.to_string());
            }
        }
        core.wake();
    }
}

/// Sleeps until woken by a phase's end (or a poison); the caller checks
/// the marks again.
fn sleep<S>(core: &mut Guard<'_, Core<S>>, need: u64, sync: bool) {
    let waiters = &mut core.waiters;
    waiters.arrivals += 1;
    let key = (need, waiters.arrivals);
    let cond = Arc::new(Condvar::new());
    waiters.queue(sync).insert(key, cond.clone());
    sync::wait(&cond, core);
    // Whoever woke us took our entry; after a spurious wakeup it is ours
    // to remove.
    core.waiters.queue(sync).remove(&key);
}

/// Runs a leader's I/O, turning a panic into an error: the caller then
/// poisons the journal and wakes every waiter, instead of unwinding with
/// the write phase still marked as taken (which would leave every later
/// append and the close waiting forever).
fn guarded(io: impl FnOnce() -> Result<()>) -> Result<()> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(io)) {
        Ok(result) => result,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            Err(Error::Internal(format!("journal I/O failed: {what}")))
        }
    }
}

/// Unit tests of the rules, in the library's own build: under the `loom`
/// feature the core's condvars exist only inside a model.
#[cfg(all(test, not(feature = "loom")))]
mod tests {
    use super::*;

    #[test]
    fn a_flush_in_flight_keeps_the_waiters_it_covers_from_leading() {
        let mut marks = Marks::new(0);
        marks.append(100);
        marks.want_sync(100);
        let phase = marks.begin_write();
        assert!(phase.sync);
        assert!(!marks.may_lead(100, false), "one write phase at a time");
        marks.end_write(phase);
        marks.begin_sync(phase.target);
        assert!(marks.covers(100, false) && !marks.covers(100, true));
        // Covered by the flush in flight: waits for it.
        assert!(!marks.may_lead(100, true));
        // Entries appended meanwhile are written, but not flushed, while
        // that flush runs: the next flush covers them all.
        marks.append(200);
        assert!(marks.may_lead(200, true));
        let next = marks.begin_write();
        marks.end_write(next);
        assert!(!marks.may_lead(200, true), "one flush at a time");
        marks.end_sync(phase.target);
        assert!(marks.covers(100, true) && !marks.covers(200, true));
        assert!(marks.may_lead(200, true));
    }

    #[test]
    fn a_phase_wakes_the_waiters_it_covers_and_one_next_leader() {
        let mut marks = Marks::new(0);
        let mut waiters = Waiters::default();
        let conds: Vec<_> = (0..4).map(|_| Arc::new(Condvar::new())).collect();
        waiters.writes.insert((100, 1), conds[0].clone());
        waiters.writes.insert((200, 2), conds[1].clone());
        waiters.syncs.insert((100, 3), conds[2].clone());
        waiters.syncs.insert((300, 4), conds[3].clone());
        marks.append(150);
        let first = marks.begin_write();
        marks.end_write(first);
        marks.append(300);
        let phase = marks.begin_write();
        waiters.wake(&marks);
        // Only the write waiter at 100 is covered; with a write phase
        // running, nobody else is woken to lead.
        assert_eq!(waiters.writes.len(), 1);
        assert_eq!(waiters.syncs.len(), 2);
        marks.end_write(phase);
        waiters.wake(&marks);
        // Both write waiters are covered now, and one sync waiter (the
        // first one) is woken to lead the flush.
        assert!(waiters.writes.is_empty());
        assert_eq!(waiters.syncs.keys().collect::<Vec<_>>(), [&(300, 4)]);
    }
}

/// The protocol under loom: every interleaving (up to a preemption bound)
/// of appenders that write and sync through a model of the device, which
/// checks that one write phase runs at a time, in log order, and that no
/// appender returns before its entry is written (or synced) on it.
#[cfg(all(test, feature = "loom"))]
mod model {
    use loom::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};

    use super::*;

    /// Log positions per segment: a position `p` lives in segment
    /// `p / SEGMENT`, so a model run rolls over a segment.
    const SEGMENT: u64 = 2;
    const SEGMENTS: usize = 3;

    /// The device: per segment, the end of what was written and of what
    /// an fdatasync made durable.
    #[derive(Default)]
    struct Device {
        written: [AtomicU64; SEGMENTS],
        durable: [AtomicU64; SEGMENTS],
        write_end: AtomicU64,
        writing: AtomicBool,
    }

    struct Model {
        device: Device,
        overlap: bool,
    }

    /// The model's buffers: where the next group starts, and the segments
    /// written since the last sync phase took them.
    #[derive(Default)]
    struct Buffers {
        taken: u64,
        dirty: u8,
    }

    struct Taken {
        from: u64,
        to: u64,
        sync: u8,
    }

    fn segments(from: u64, to: u64) -> u8 {
        (from..to).fold(0, |mask, p| mask | 1 << (p / SEGMENT))
    }

    impl Device {
        fn sync(&self, mask: u8) {
            for s in 0..SEGMENTS {
                if mask & 1 << s != 0 {
                    let written = self.written[s].load(SeqCst);
                    self.durable[s].fetch_max(written, SeqCst);
                }
            }
        }

        /// Whether every position before `need` is in `ends` (written or
        /// durable ends per segment).
        fn covers(ends: &[AtomicU64; SEGMENTS], need: u64) -> bool {
            (0..need).all(|p| ends[(p / SEGMENT) as usize].load(SeqCst) > p)
        }
    }

    impl Leader for Model {
        type State = Buffers;
        type Group = Taken;
        type Dirty = u8;

        fn overlap(&self) -> bool {
            self.overlap
        }

        fn take(&self, core: &mut Core<Buffers>, sync_inline: bool) -> Taken {
            let (from, to) = (core.state.taken, core.marks.appended());
            core.state.taken = to;
            let mut sync = 0;
            if sync_inline {
                sync = std::mem::take(&mut core.state.dirty) | segments(from, to);
            }
            Taken { from, to, sync }
        }

        fn write(&self, group: &mut Taken) -> Result<()> {
            let device = &self.device;
            assert!(
                !device.writing.swap(true, SeqCst),
                "two write phases at once"
            );
            assert_eq!(
                device.write_end.load(SeqCst),
                group.from,
                "writes in log order"
            );
            for p in group.from..group.to {
                device.written[(p / SEGMENT) as usize].store(p + 1, SeqCst);
            }
            device.write_end.store(group.to, SeqCst);
            device.sync(group.sync);
            device.writing.store(false, SeqCst);
            Ok(())
        }

        fn written(&self, core: &mut Core<Buffers>, group: &Taken, synced_inline: bool) {
            if !synced_inline {
                core.state.dirty |= segments(group.from, group.to);
            }
        }

        fn take_dirty(&self, core: &mut Core<Buffers>) -> u8 {
            std::mem::take(&mut core.state.dirty)
        }

        fn sync(&self, dirty: &u8) -> Result<()> {
            self.device.sync(*dirty);
            Ok(())
        }

        fn sync_failed(&self, _: &mut Core<Buffers>, _: u8) {
            unreachable!("the model's device does not fail")
        }

        fn synced(&self, _: &mut Core<Buffers>) {}

        fn finish(&self, _: &mut Guard<'_, Core<Buffers>>, _: Taken, _: bool) {}
    }

    /// Appenders, each appending one position (two where `twice`) and
    /// committing it with its own durability.
    fn run(overlap: bool, syncs: &'static [bool], twice: bool) {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(2);
        builder.check(move || {
            let model = Arc::new((
                GroupCommit::new(0, Buffers::default()),
                Model {
                    device: Device::default(),
                    overlap,
                },
            ));
            let appender = |sync: bool| {
                let model = model.clone();
                move || {
                    let (commit, leader) = &*model;
                    for _ in 0..if twice { 2 } else { 1 } {
                        let end = {
                            let mut core = commit.lock();
                            let end = core.marks.appended() + 1;
                            core.marks.append(end);
                            end
                        };
                        commit.commit(leader, end, sync).expect("no failures");
                        let ends = if sync {
                            &leader.device.durable
                        } else {
                            &leader.device.written
                        };
                        assert!(Device::covers(ends, end), "acknowledged early: {end}");
                    }
                }
            };
            let threads: Vec<_> = syncs[1..]
                .iter()
                .map(|&sync| loom::thread::spawn(appender(sync)))
                .collect();
            appender(syncs[0])();
            for thread in threads {
                thread.join().expect("an appender panicked");
            }
        });
    }

    #[test]
    fn three_syncing_appenders() {
        run(true, &[true, true, true], false);
    }

    #[test]
    fn syncing_and_writing_appenders() {
        run(true, &[true, false, true], false);
    }

    #[test]
    fn two_appenders_twice_across_segments() {
        run(true, &[true, true], true);
    }

    #[test]
    fn flushes_inside_the_write_phase() {
        run(false, &[true, false, true], false);
    }
}
