//! The store's retention timer: a background thread that applies age
//! retention to shards nobody uses, and runs the compaction cleaner of
//! compacted shards. Appends and reads apply retention to the shard they
//! touch; without the timer an idle shard's expired batches would hold
//! their memory, journal segments or files forever.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use crate::engine::Shard;
use crate::time::now_ms;
use crate::Result;

/// Name of the timer's thread.
pub(crate) const THREAD_NAME: &str = "mqs-retention";

/// Runs age retention over the registered shards every `interval`.
pub(crate) struct RetentionTimer {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

struct Shared {
    interval: Duration,
    state: Mutex<State>,
    wake: Condvar,
    passes: AtomicU64,
    errors: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// Work the timer does on a shard after its retention: a compacted
/// shard's cleaner step, given the shard and the time.
pub(crate) type ShardTask = Arc<dyn Fn(&dyn Shard, i64) -> Result<()> + Send + Sync>;

/// A shard the timer visits. Weak: a deleted or dropped shard is forgotten
/// by the next pass.
struct Watched {
    shard: Weak<dyn Shard>,
    task: Option<ShardTask>,
}

/// A watched shard still alive at a pass, with its task.
type LiveShard = (Arc<dyn Shard>, Option<ShardTask>);

#[derive(Default)]
struct State {
    shards: Vec<Watched>,
    stopped: bool,
}

impl RetentionTimer {
    /// A timer that has no thread yet: `watch` starts it with the first
    /// shard that has age retention.
    pub fn new(interval: Duration) -> RetentionTimer {
        RetentionTimer {
            shared: Arc::new(Shared {
                interval,
                state: Mutex::new(State::default()),
                wake: Condvar::new(),
                passes: AtomicU64::new(0),
                errors: AtomicU64::new(0),
                last_error: Mutex::new(None),
            }),
            thread: Mutex::new(None),
        }
    }

    /// Starts the thread unless it runs (or the timer is off or stopped).
    /// Called before a shard with age retention is created, so that a
    /// thread that cannot start fails the creation, not the retention.
    pub fn ensure_running(&self) -> Result<()> {
        let mut thread = self.thread.lock();
        if thread.is_some() || self.shared.interval.is_zero() || self.shared.state.lock().stopped {
            return Ok(());
        }
        let shared = self.shared.clone();
        *thread = Some(crate::thread::spawn(THREAD_NAME, move || shared.run())?);
        Ok(())
    }

    /// The timer's period: the cleaner's I/O budget is spread over it.
    pub fn interval(&self) -> Duration {
        self.shared.interval
    }

    /// Applies retention to `shard`, then runs `task` on it (if any), at
    /// every pass from now on.
    pub fn watch(&self, shard: &Arc<dyn Shard>, task: Option<ShardTask>) {
        if !self.shared.interval.is_zero() {
            self.shared.state.lock().shards.push(Watched {
                shard: Arc::downgrade(shard),
                task,
            });
        }
    }

    /// Stops watching `shard` (being deleted).
    pub fn forget(&self, shard: &Arc<dyn Shard>) {
        let target = Arc::as_ptr(shard) as *const ();
        self.shared
            .state
            .lock()
            .shards
            .retain(|s| s.shard.as_ptr() as *const () != target);
    }

    /// Stops the thread and waits for a pass in progress: after this no
    /// shard is touched by the timer (the engines may close).
    pub fn stop(&self) {
        self.shared.state.lock().stopped = true;
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.lock().take() {
            // A panic in a pass is already counted as an error there.
            let _ = thread.join();
        }
    }

    pub fn stats(&self) -> serde_json::Value {
        let shared = &self.shared;
        serde_json::json!({
            "check_ms": shared.interval.as_millis() as u64,
            "running": self.thread.lock().is_some(),
            "watched_shards": shared.state.lock().shards.len(),
            "passes": shared.passes.load(Ordering::Relaxed),
            "errors": shared.errors.load(Ordering::Relaxed),
            "last_error": *shared.last_error.lock(),
        })
    }
}

impl Shared {
    fn run(&self) {
        while let Some(shards) = self.next_pass() {
            for (shard, task) in shards {
                self.visit(shard.as_ref(), task.as_ref());
            }
            self.passes.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Waits one interval; the live shards to visit, or `None` once
    /// stopped. Dead shards are dropped from the list here.
    fn next_pass(&self) -> Option<Vec<LiveShard>> {
        let mut state = self.state.lock();
        if !state.stopped {
            // A spurious or early wake-up only makes a pass come sooner.
            self.wake.wait_for(&mut state, self.interval);
        }
        if state.stopped {
            return None;
        }
        let mut live = Vec::with_capacity(state.shards.len());
        state
            .shards
            .retain(|watched| match watched.shard.upgrade() {
                Some(shard) => {
                    live.push((shard, watched.task.clone()));
                    true
                }
                None => false,
            });
        Some(live)
    }

    /// One shard's retention and task; a failure (or a panic) is counted
    /// and kept for the stats, and the other shards go on.
    fn visit(&self, shard: &dyn Shard, task: Option<&ShardTask>) {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let now = now_ms();
            shard.expire(now)?;
            task.map_or(Ok(()), |task| task(shard, now))
        }));
        let error = match outcome {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(_) => "panicked while applying retention or compaction".to_string(),
        };
        self.errors.fetch_add(1, Ordering::Relaxed);
        let name = shard
            .info()
            .map_or_else(|_| "?".to_string(), |info| info.name);
        crate::log::emit(
            crate::log::Level::Warn,
            &format!("retention timer: shard '{name}': {error}"),
        );
        *self.last_error.lock() = Some(error);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;
    use crate::config::{EngineKind, ShardOptions};
    use crate::engine::{NewBatch, ReadLimits, ReadResult, ShardInfo};
    use crate::io::TransferPlan;
    use crate::record::RecordView;
    use crate::Error;

    /// A shard that reports each `expire` call on a channel and may fail it.
    struct Probe {
        calls: Mutex<mpsc::Sender<i64>>,
        fails: bool,
        options: ShardOptions,
    }

    fn probe(fails: bool) -> (Arc<dyn Shard>, mpsc::Receiver<i64>) {
        let (tx, rx) = mpsc::channel();
        let shard: Arc<dyn Shard> = Arc::new(Probe {
            calls: Mutex::new(tx),
            fails,
            options: ShardOptions::default(),
        });
        (shard, rx)
    }

    fn unused<T>() -> Result<T> {
        Err(Error::Unsupported("not part of the probe".into()))
    }

    impl Shard for Probe {
        fn kind(&self) -> EngineKind {
            EngineKind::Memory
        }
        fn info(&self) -> Result<ShardInfo> {
            unused()
        }
        fn expire(&self, now_ms: i64) -> Result<()> {
            let _ = self.calls.lock().send(now_ms);
            if self.fails {
                return Err(Error::Internal("disk on fire".into()));
            }
            Ok(())
        }
        fn options(&self) -> &ShardOptions {
            &self.options
        }
        fn append_batches(&self, _: Vec<NewBatch>, _: bool) -> Result<i64> {
            unused()
        }
        fn read(&self, _: i64, _: ReadLimits) -> Result<ReadResult> {
            unused()
        }
        fn read_by_keys(&self, _: &[&[u8]], _: usize) -> Result<Vec<RecordView>> {
            unused()
        }
        fn read_by_tag(&self, _: &[u8], _: i64, _: usize) -> Result<ReadResult> {
            unused()
        }
        fn offset_for_timestamp(&self, _: i64) -> Result<Option<i64>> {
            unused()
        }
        fn delete_records_before(&self, _: i64) -> Result<i64> {
            unused()
        }
        fn delete_where(
            &self,
            _: std::ops::Range<i64>,
            _: &mut dyn FnMut(&RecordView) -> bool,
        ) -> Result<u64> {
            unused()
        }
        fn plan_transfer(&self, _: i64, _: usize) -> Result<TransferPlan> {
            unused()
        }
        fn truncate_to(&self, _: i64) -> Result<()> {
            unused()
        }
        fn stats(&self) -> Result<serde_json::Value> {
            unused()
        }
    }

    const WAIT: Duration = Duration::from_secs(10);

    #[test]
    fn every_watched_shard_is_expired_at_every_pass_with_the_current_time() {
        let timer = RetentionTimer::new(Duration::from_millis(10));
        let (a, a_calls) = probe(false);
        let (b, b_calls) = probe(false);
        timer.watch(&a, None);
        timer.watch(&b, None);
        timer.ensure_running().unwrap();
        let before = now_ms();
        for _ in 0..3 {
            let at = a_calls.recv_timeout(WAIT).expect("a pass expires a");
            assert!(at >= before);
            b_calls.recv_timeout(WAIT).expect("and b");
        }
        timer.stop();
        assert!(timer.stats()["passes"].as_u64().unwrap() >= 2);
        assert_eq!(timer.stats()["running"], false);
    }

    #[test]
    fn forgotten_and_dropped_shards_are_not_visited() {
        let timer = RetentionTimer::new(Duration::from_millis(10));
        let (kept, kept_calls) = probe(false);
        let (forgotten, forgotten_calls) = probe(false);
        let (dropped, dropped_calls) = probe(false);
        for shard in [&kept, &forgotten, &dropped] {
            timer.watch(shard, None);
        }
        timer.forget(&forgotten);
        drop(dropped);
        timer.ensure_running().unwrap();
        kept_calls.recv_timeout(WAIT).unwrap();
        kept_calls.recv_timeout(WAIT).unwrap();
        timer.stop();
        assert!(forgotten_calls.try_recv().is_err());
        assert!(dropped_calls.try_recv().is_err());
        assert_eq!(timer.stats()["watched_shards"], 1);
    }

    #[test]
    fn a_failing_shard_is_counted_and_the_others_go_on() {
        crate::log::capture::install();
        let timer = RetentionTimer::new(Duration::from_millis(10));
        let (bad, bad_calls) = probe(true);
        let (good, good_calls) = probe(false);
        timer.watch(&bad, None);
        timer.watch(&good, None);
        timer.ensure_running().unwrap();
        bad_calls.recv_timeout(WAIT).unwrap();
        good_calls.recv_timeout(WAIT).unwrap();
        // The second pass started after the first one's error was counted.
        bad_calls.recv_timeout(WAIT).unwrap();
        timer.stop();
        let stats = timer.stats();
        assert!(stats["errors"].as_u64().unwrap() >= 1);
        assert!(stats["last_error"]
            .as_str()
            .unwrap()
            .contains("disk on fire"));
        let reported = crate::log::capture::events_with("disk on fire");
        assert!(!reported.is_empty());
        assert!(reported
            .iter()
            .all(|(level, _)| *level == crate::log::Level::Warn));
    }

    #[test]
    fn a_shards_task_runs_after_its_retention_at_every_pass() {
        let timer = RetentionTimer::new(Duration::from_millis(10));
        let (shard, expired) = probe(false);
        let (tx, tasks) = mpsc::channel();
        let tx = Mutex::new(tx);
        let task: ShardTask = Arc::new(move |_: &dyn Shard, now_ms: i64| {
            let _ = tx.lock().send(now_ms);
            Ok(())
        });
        timer.watch(&shard, Some(task));
        timer.ensure_running().unwrap();
        for _ in 0..2 {
            let expired_at = expired.recv_timeout(WAIT).unwrap();
            // The same pass, with the same time.
            assert_eq!(tasks.recv_timeout(WAIT).unwrap(), expired_at);
        }
        timer.stop();
    }

    #[test]
    fn an_interval_of_zero_starts_no_thread() {
        let timer = RetentionTimer::new(Duration::ZERO);
        let (shard, calls) = probe(false);
        timer.watch(&shard, None);
        timer.ensure_running().unwrap();
        assert_eq!(timer.stats()["running"], false);
        assert_eq!(timer.stats()["watched_shards"], 0);
        timer.stop();
        assert!(calls.try_recv().is_err());
    }

    #[test]
    fn a_timer_whose_thread_cannot_start_says_so() {
        let timer = RetentionTimer::new(Duration::from_millis(10));
        let _failing = crate::thread::failpoint::fail_spawn(THREAD_NAME);
        let err = timer.ensure_running().unwrap_err();
        assert!(err.to_string().contains(THREAD_NAME), "{err}");
        assert_eq!(timer.stats()["running"], false);
    }
}
