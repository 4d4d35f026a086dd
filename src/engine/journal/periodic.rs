//! The checkpointer thread: writes an index checkpoint (`ckpt`) each time
//! the journal has grown by `[journal] checkpoint_bytes` since the last one,
//! so that opening after a crash replays at most about that much of the
//! journal instead of all of it (reading a cold journal runs at disk speed:
//! about 1 GB/s here, so a 10 GiB journal would take 10 s). Kafka keeps a
//! recovery-point checkpoint for the same reason.
//!
//! The thread sleeps until an append notices the threshold was crossed
//! (`Log::maybe_checkpoint`: two atomic loads per append), so an idle store
//! costs nothing. It holds only a weak reference to the log, so it never
//! keeps a closed journal alive.

use std::cell::Cell;
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex};

use super::Log;

thread_local! {
    /// Set on checkpointer threads. Checked instead of comparing
    /// `thread::current()` ids: that would allocate a thread handle on a
    /// C caller's thread which is never freed (valgrind reports it).
    static ON_CHECKPOINTER: Cell<bool> = const { Cell::new(false) };
}

#[derive(Default)]
struct State {
    wanted: bool,
    stop: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    cond: Condvar,
}

pub struct Checkpointer {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Checkpointer {
    pub fn start(log: Weak<Log>) -> Checkpointer {
        let shared = Arc::new(Shared::default());
        let worker = shared.clone();
        // Without the thread, checkpoints happen at clean close only.
        let thread = std::thread::Builder::new()
            .name("mqs-journal-ckpt".into())
            .spawn(move || worker.run(log))
            .ok();
        Checkpointer {
            shared,
            thread: Mutex::new(thread),
        }
    }

    /// Asks for a checkpoint (the thread checks whether one is due).
    pub fn poke(&self) {
        self.shared.state.lock().wanted = true;
        self.shared.cond.notify_one();
    }

    /// Stops the thread and waits for a checkpoint in progress to end.
    pub fn stop(&self) {
        self.shared.state.lock().stop = true;
        self.shared.cond.notify_one();
        let Some(thread) = self.thread.lock().take() else {
            return;
        };
        // The thread itself may drop the last reference to the log (it
        // upgrades its weak one while it works): it must not join itself.
        if !ON_CHECKPOINTER.with(Cell::get) {
            let _ = thread.join();
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Shared {
    fn run(&self, log: Weak<Log>) {
        ON_CHECKPOINTER.with(|on| on.set(true));
        loop {
            {
                let mut st = self.state.lock();
                while !st.wanted && !st.stop {
                    self.cond.wait(&mut st);
                }
                if st.stop {
                    return;
                }
                st.wanted = false;
            }
            let Some(log) = log.upgrade() else {
                return;
            };
            if log.checkpoint_due() {
                // A failed checkpoint loses nothing: the previous one (or
                // the full replay) still recovers everything.
                let _ = log.checkpoint();
            }
        }
    }
}
