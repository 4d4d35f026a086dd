//! Durability notifications for brokers built on an event loop (epoll,
//! asyncio): a pipelined append is *watched* instead of waited for, and its
//! acknowledgement arrives as a completion in a queue whose readiness an
//! eventfd signals, so one thread can keep thousands of batches in flight
//! without parking a thread per batch.
//!
//! One thread per store (`mqs-durable`, started by the first watch) waits
//! for the watched offsets in the order they were watched, through the same
//! `Shard::wait_durable` a blocking caller uses: the engines need no hook,
//! and a completion means exactly what `wait_durable` returning means.
//! Batches of one group commit complete together: after the wait for the
//! first returns, the waits for the others find them durable at once.
//!
//! The eventfd is readable exactly while completions are queued: the first
//! completion queued after an empty queue writes it, and the poll that
//! empties the queue reads it back to zero, both under the queue's lock.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex};

use crate::engine::Shard;
use crate::{Error, Result};

/// A watched offset that became durable, or failed to.
#[derive(Debug)]
pub struct Completion {
    /// The caller's token, given when watching.
    pub token: u64,
    /// The watched offset (an appended batch's base offset).
    pub offset: i64,
    /// `Ok` once the offset and every earlier one of its shard are as
    /// durable as the shard's mode promises; the error `wait_durable` would
    /// have returned otherwise (e.g. `Poisoned`, `Closed`).
    pub result: Result<()>,
}

struct Watch {
    shard: Arc<dyn Shard>,
    offset: i64,
    token: u64,
}

#[derive(Default)]
struct Pending {
    watches: VecDeque<Watch>,
    stopping: bool,
    /// The thread is parked on `wake` (a watch must notify it).
    idle: bool,
}

struct Inner {
    pending: Mutex<Pending>,
    wake: Condvar,
    /// Completions not yet polled.
    done: Mutex<VecDeque<Completion>>,
    event: OwnedFd,
}

impl Inner {
    fn complete(&self, completion: Completion) {
        let mut done = self.done.lock();
        if done.is_empty() {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to an eventfd we own.
            // It cannot fail: the counter is 0 whenever the queue is empty.
            unsafe {
                libc::write(
                    self.event.as_raw_fd(),
                    (&one as *const u64).cast(),
                    std::mem::size_of::<u64>(),
                )
            };
        }
        done.push_back(completion);
    }

    fn run(&self) {
        loop {
            let watch = {
                let mut pending = self.pending.lock();
                loop {
                    if let Some(watch) = pending.watches.pop_front() {
                        break watch;
                    }
                    if pending.stopping {
                        return;
                    }
                    pending.idle = true;
                    self.wake.wait(&mut pending);
                    pending.idle = false;
                }
            };
            // A panic in an engine must not end the thread: every later
            // watch would then never complete.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                watch.shard.wait_durable(watch.offset)
            }))
            .unwrap_or_else(|_| {
                Err(Error::Internal(format!(
                    "waiting for offset {} panicked",
                    watch.offset
                )))
            });
            self.complete(Completion {
                token: watch.token,
                offset: watch.offset,
                result,
            });
        }
    }
}

/// The store's notifier: the watch queue, its thread and the eventfd.
pub(crate) struct Notifier {
    inner: Arc<Inner>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Notifier {
    pub(crate) fn new() -> Result<Notifier> {
        // SAFETY: plain system call; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(Error::io(
                "creating the durability eventfd",
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        let event = unsafe { OwnedFd::from_raw_fd(fd) };
        let inner = Arc::new(Inner {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            done: Mutex::new(VecDeque::new()),
            event,
        });
        let worker = inner.clone();
        let thread = crate::thread::spawn("mqs-durable", move || worker.run())?;
        Ok(Notifier {
            inner,
            thread: Mutex::new(Some(thread)),
        })
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.inner.event.as_raw_fd()
    }

    /// Queues a watch; its completion follows every earlier watch's.
    pub(crate) fn watch(&self, shard: Arc<dyn Shard>, offset: i64, token: u64) -> Result<()> {
        let mut pending = self.inner.pending.lock();
        if pending.stopping {
            return Err(Error::Closed);
        }
        pending.watches.push_back(Watch {
            shard,
            offset,
            token,
        });
        if pending.idle {
            self.inner.wake.notify_one();
        }
        Ok(())
    }

    /// Takes up to `max` completions, oldest first, without blocking.
    pub(crate) fn poll(&self, max: usize) -> Vec<Completion> {
        let mut done = self.inner.done.lock();
        let take = done.len().min(max);
        let out: Vec<Completion> = done.drain(..take).collect();
        if done.is_empty() && !out.is_empty() {
            let mut counter: u64 = 0;
            // SAFETY: reads 8 bytes into a live u64 from an eventfd we own;
            // non-blocking, and the counter is non-zero (queue was not empty).
            unsafe {
                libc::read(
                    self.inner.event.as_raw_fd(),
                    (&mut counter as *mut u64).cast(),
                    std::mem::size_of::<u64>(),
                )
            };
        }
        out
    }

    /// Completions queued and not yet polled.
    pub(crate) fn ready(&self) -> usize {
        self.inner.done.lock().len()
    }

    /// Refuses new watches, lets the thread finish every queued one (their
    /// completions stay pollable) and joins it. Called while the engines are
    /// still open, so every wait ends.
    pub(crate) fn stop(&self) {
        self.inner.pending.lock().stopping = true;
        self.inner.wake.notify_one();
        if let Some(thread) = self.thread.lock().take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        self.stop();
    }
}
