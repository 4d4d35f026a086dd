//! The journal's background threads, each a `Worker` that sleeps until
//! poked and then runs its task on the log:
//!
//! - the checkpointer writes an index checkpoint (`ckpt`) each time the
//!   journal has grown by `[journal] checkpoint_bytes` since the last one, so
//!   that opening after a crash replays at most about that much of the
//!   journal instead of all of it (reading a cold journal runs at disk
//!   speed: about 1 GB/s here, so a 10 GiB journal would take 10 s). Kafka
//!   keeps a recovery-point checkpoint for the same reason. Appends poke it
//!   once the threshold is crossed (`Log::maybe_checkpoint`: two atomic
//!   loads per append).
//! - two flushers write and fdatasync what pipelined appends
//!   (`append_nowait`) left in the buffer (`Writer::serve_background`), so
//!   a producer keeps encoding while its earlier batches reach the disk.
//!   They are started by the first pipelined append (`Log::flush_in_background`).
//!
//! An idle worker costs nothing but its sleeping thread. Each holds only a
//! weak reference to the log, so it never keeps a closed journal alive.

use std::cell::Cell;
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex};

use super::Log;

thread_local! {
    /// Set on worker threads. Checked instead of comparing
    /// `thread::current()` ids: that would allocate a thread handle on a
    /// C caller's thread which is never freed (valgrind reports it).
    static ON_WORKER: Cell<bool> = const { Cell::new(false) };
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

pub struct Worker {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Worker {
    /// Starts a thread named `name` that runs `task` after each `poke`;
    /// fails (naming it) when the thread cannot start.
    pub fn start(name: &str, log: Weak<Log>, task: fn(&Log)) -> crate::Result<Worker> {
        let shared = Arc::new(Shared::default());
        let worker = shared.clone();
        let thread = crate::thread::spawn(name, move || worker.run(log, task))?;
        Ok(Worker {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Asks for one more run of the task (pokes while it runs are merged
    /// into one run after it).
    pub fn poke(&self) {
        self.shared.state.lock().wanted = true;
        self.shared.cond.notify_one();
    }

    /// Stops the thread and waits for a run in progress to end.
    pub fn stop(&self) {
        self.shared.state.lock().stop = true;
        self.shared.cond.notify_one();
        let Some(thread) = self.thread.lock().take() else {
            return;
        };
        // A worker may drop the last reference to the log (it upgrades its
        // weak one while it works), and with it every worker: it must not
        // join itself.
        if !ON_WORKER.with(Cell::get) {
            let _ = thread.join();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Shared {
    fn run(&self, log: Weak<Log>, task: fn(&Log)) {
        ON_WORKER.with(|on| on.set(true));
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
            task(&log);
        }
    }
}
