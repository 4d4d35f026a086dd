//! The log callback: background failures and what recovery gave up,
//! delivered to the embedding program.

use std::ffi::{c_char, c_int, c_void, CString};
use std::sync::Arc;

use super::guard::status;
use super::types::mqs_status;
use crate::log::{set_handler, Level};

/// The level of a logged event.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum mqs_log_level {
    /// Data was lost or a background task failed: an operator should act.
    MQS_LOG_ERROR = 1,
    /// Something unusual was handled (a torn tail cut at open, say).
    MQS_LOG_WARN = 2,
    /// Worth knowing, nothing to do.
    MQS_LOG_INFO = 3,
}

/// A log callback: `user` as given to `mqs_set_log_callback`, the event's
/// `mqs_log_level` and its message (NUL-terminated UTF-8, valid during the
/// call only).
pub type mqs_log_fn =
    Option<unsafe extern "C" fn(user: *mut c_void, level: c_int, message: *const c_char)>;

/// The caller's `user` pointer, handed back on the logging thread.
struct UserData(*mut c_void);
// SAFETY: mqstore never dereferences it; the caller's contract
// (`mqs_set_log_callback`) is that the callback may use it from the
// logging thread.
unsafe impl Send for UserData {}
// SAFETY: as above; only the callback, one call at a time, receives it.
unsafe impl Sync for UserData {}

impl UserData {
    /// Through a method, so closures capture the whole (Send) wrapper.
    fn get(&self) -> *mut c_void {
        self.0
    }
}

/// Installs `callback` for the whole process (NULL removes it). Events —
/// background failures (a poisoned journal or file shard, a failed prefill
/// or retention pass) and what recovery gave up to open a store (a torn
/// tail cut, a damaged range skipped) — are counted in `mqs_store_stats`
/// ("log") and delivered to the callback one at a time, in order, on
/// mqstore's logging thread, never under a store lock: the callback may
/// call mqstore functions, but not `mqs_set_log_callback`. Before the new
/// callback takes over, every event already queued reaches the old one,
/// so after this call returns the old callback and its `user` are no
/// longer used. Events are dropped (and counted) beyond 4,096 waiting.
///
/// # Safety
/// `callback`, if not NULL, must be safe to call from another thread with
/// `user` until it is replaced.
#[no_mangle]
pub unsafe extern "C" fn mqs_set_log_callback(
    callback: mqs_log_fn,
    user: *mut c_void,
) -> mqs_status {
    status(|| {
        let handler = callback.map(|callback| {
            let user = UserData(user);
            Arc::new(move |level: Level, message: &str| {
                let text = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
                // SAFETY: the caller guarantees the callback may run here
                // with `user`; `text` outlives the call.
                unsafe { callback(user.get(), level as c_int, text.as_ptr()) };
            }) as crate::log::Handler
        });
        set_handler(handler)?;
        Ok(())
    })
}
