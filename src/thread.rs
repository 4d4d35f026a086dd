//! Starting the store's background threads. Every one of them is needed
//! for what the store promises (pipelined appends reach the disk, crash
//! replay stays bounded, `interval` flushes happen), so a thread that fails
//! to start (e.g. EAGAIN at the process's thread limit) is an error for
//! the call that needed it, never a store running without it.

use std::thread::JoinHandle;

use crate::{Error, Result};

/// Runs `task` on a new thread named `name`; a failure to start it is an
/// `Io` error naming the thread.
pub(crate) fn spawn<T, F>(name: &str, task: F) -> Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let context = || format!("starting the background thread '{name}'");
    #[cfg(test)]
    if failpoint::fails(name) {
        let refused = std::io::Error::from_raw_os_error(libc::EAGAIN);
        return Err(Error::io(context(), refused));
    }
    std::thread::Builder::new()
        .name(name.into())
        .spawn(task)
        .map_err(|e| Error::io(context(), e))
}

/// The nice value of background work (the hybrid tierer and its object
/// store client): below appends and reads, which run at the host's own.
#[cfg(feature = "s3")]
const BACKGROUND_NICE: libc::c_int = 10;

/// Lowers the calling thread's CPU priority to `BACKGROUND_NICE`, so that
/// background work takes the CPU appenders leave (on a small machine the
/// tierer's copies and uploads would otherwise compete with them). Best
/// effort: where the system refuses, the thread runs as it was.
#[cfg(feature = "s3")]
pub(crate) fn lower_priority() {
    // SAFETY: gettid and setpriority take no pointers; setpriority with a
    // thread id changes only that thread's nice value (Linux).
    unsafe {
        let tid = libc::gettid() as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, BACKGROUND_NICE);
    }
}

/// Makes `spawn` fail for chosen thread names, on the calling thread only
/// (the store starts its threads on the thread of the call that needs
/// them), so tests running in parallel do not see each other's failures.
#[cfg(test)]
pub(crate) mod failpoint {
    use std::cell::RefCell;

    thread_local! {
        static FAILING: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
    }

    pub(super) fn fails(name: &str) -> bool {
        FAILING.with(|failing| failing.borrow().iter().any(|n| n == name))
    }

    /// While the guard lives, starting a thread named `name` from this
    /// thread fails.
    #[must_use]
    pub(crate) fn fail_spawn(name: &str) -> Guard {
        FAILING.with(|failing| failing.borrow_mut().push(name.to_string()));
        Guard(name.to_string())
    }

    pub(crate) struct Guard(String);

    impl Drop for Guard {
        fn drop(&mut self) {
            FAILING.with(|failing| failing.borrow_mut().retain(|n| *n != self.0));
        }
    }
}
