//! What happens where no caller sees it: background failures (the
//! retention timer, the flushers, the prefill thread), and what recovery
//! did to open a store (a torn tail cut, a damaged range skipped). Each
//! event is counted (`counts`, in `Store::stats`) and handed to the
//! process's log handler, if one is installed (`set_handler`; C
//! `mqs_set_log_callback`, C++ `mqstore::set_log_callback`, Python
//! `mqstore.enable_logging`). Without a handler nothing is printed: a
//! library does not write to its host's stderr.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

/// How bad an event is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Data was lost or a background task failed: an operator should act.
    Error = 1,
    /// Something unusual was handled (an unacknowledged torn tail cut at
    /// open, a background retry).
    Warn = 2,
    /// Worth knowing, nothing to do.
    Info = 3,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
        }
    }
}

/// Receives events, one at a time and in order, on the store's logging
/// thread (`mqs-log`): never under any lock of the store, so it may call
/// into the store, but not `set_handler`.
pub type Handler = Arc<dyn Fn(Level, &str) + Send + Sync>;

/// Events waiting beyond this are dropped (and counted): a stuck handler
/// must not make the store's memory grow.
const QUEUE_LIMIT: usize = 4096;

struct State {
    handler: Option<Handler>,
    queue: VecDeque<(Level, String)>,
    delivering: bool,
    /// The logging thread, while a handler is installed.
    thread: Option<std::thread::JoinHandle<()>>,
}

static STATE: Mutex<State> = Mutex::new(State {
    handler: None,
    queue: VecDeque::new(),
    delivering: false,
    thread: None,
});
static CHANGED: Condvar = Condvar::new();
static COUNTS: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Installs `handler` for the whole process (`None` removes it, and ends
/// the logging thread), after every event already queued reached the
/// previous one: replacing the handler also flushes the queue.
pub fn set_handler(handler: Option<Handler>) -> crate::Result<()> {
    let mut state = STATE.lock();
    while !state.queue.is_empty() || state.delivering {
        CHANGED.wait(&mut state);
    }
    if handler.is_some() && state.thread.is_none() {
        state.thread = Some(crate::thread::spawn("mqs-log", deliver)?);
    }
    let stopping = if handler.is_none() {
        state.thread.take()
    } else {
        None
    };
    state.handler = handler;
    CHANGED.notify_all();
    drop(state);
    if let Some(thread) = stopping {
        // It sees no handler and an empty queue, and returns.
        let _ = thread.join();
    }
    Ok(())
}

/// The logging thread: hands queued events to the handler, lock released.
fn deliver() {
    let mut state = STATE.lock();
    loop {
        let Some((level, message)) = state.queue.pop_front() else {
            if state.handler.is_none() {
                return;
            }
            CHANGED.wait(&mut state);
            continue;
        };
        let handler = state.handler.clone();
        state.delivering = true;
        drop(state);
        if let Some(handler) = handler {
            // A panicking handler must not end the logging thread.
            let _ =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler(level, &message)));
        }
        state = STATE.lock();
        state.delivering = false;
        CHANGED.notify_all();
    }
}

/// Counts an event and queues it for the handler, if one is installed.
/// Never blocks on the handler: callable under any lock.
pub fn emit(level: Level, message: &str) {
    COUNTS[level as usize - 1].fetch_add(1, Ordering::Relaxed);
    let mut state = STATE.lock();
    if state.handler.is_none() {
        return;
    }
    if state.queue.len() >= QUEUE_LIMIT {
        DROPPED.fetch_add(1, Ordering::Relaxed);
        return;
    }
    state.queue.push_back((level, message.to_string()));
    CHANGED.notify_all();
}

/// Events so far in this process, by level.
pub fn counts() -> serde_json::Value {
    let count = |level: Level| COUNTS[level as usize - 1].load(Ordering::Relaxed);
    serde_json::json!({
        "errors": count(Level::Error),
        "warnings": count(Level::Warn),
        "infos": count(Level::Info),
        "dropped": DROPPED.load(Ordering::Relaxed),
    })
}

#[cfg(test)]
pub(crate) mod capture {
    //! Tests run in parallel: a capture keeps the events whose message
    //! holds its marker, whichever test's handler is installed.
    use super::*;

    static EVENTS: Mutex<Vec<(Level, String)>> = Mutex::new(Vec::new());

    /// Installs the capturing handler (idempotent).
    pub fn install() {
        set_handler(Some(Arc::new(|level, message: &str| {
            EVENTS.lock().push((level, message.to_string()))
        })))
        .unwrap();
    }

    /// Captured events whose message contains `marker`, once every event
    /// emitted so far was delivered.
    pub fn events_with(marker: &str) -> Vec<(Level, String)> {
        install();
        EVENTS
            .lock()
            .iter()
            .filter(|(_, m)| m.contains(marker))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_counted_and_delivered() {
        capture::install();
        let before = counts()["warnings"].as_u64().unwrap();
        emit(Level::Warn, "marker-7f3a something odd");
        assert_eq!(
            capture::events_with("marker-7f3a"),
            vec![(Level::Warn, "marker-7f3a something odd".to_string())]
        );
        assert!(counts()["warnings"].as_u64().unwrap() > before);
    }
}
