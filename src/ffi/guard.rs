//! The plumbing every entry point goes through: errors as (status, message),
//! the thread-local last-error message, and the guard that turns a Rust
//! panic into `MQS_INTERNAL` instead of unwinding into C.

use std::any::Any;
use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{self, AssertUnwindSafe};

use super::types::mqs_status;
use crate::Error;

/// A failed call: the status returned to C and the message kept for
/// `mqs_last_error_message`.
#[derive(Debug)]
pub(crate) struct FfiError {
    pub(crate) status: mqs_status,
    pub(crate) message: String,
}

impl FfiError {
    pub(crate) fn new(status: mqs_status, message: impl Into<String>) -> Self {
        FfiError {
            status,
            message: message.into(),
        }
    }

    /// `MQS_INVALID_ARGUMENT`, worded like `Error::InvalidArgument`.
    pub(crate) fn invalid_argument(message: impl std::fmt::Display) -> Self {
        Self::from(Error::InvalidArgument(message.to_string()))
    }

    /// A required pointer parameter was NULL.
    pub(crate) fn null(param: &str) -> Self {
        Self::invalid_argument(format_args!("`{param}` is NULL"))
    }

    /// `MQS_INVALID_HANDLE` for parameter `param` of type `kind`.
    pub(crate) fn invalid_handle(param: &str, kind: &str) -> Self {
        Self::new(
            mqs_status::MQS_INVALID_HANDLE,
            format!(
                "invalid handle: `{param}` is not a live {kind} (already closed or freed, \
                 or never returned by mqstore)"
            ),
        )
    }

    fn from_panic(payload: Box<dyn Any + Send>) -> Self {
        let text = if let Some(text) = payload.downcast_ref::<&'static str>() {
            (*text).to_string()
        } else if let Some(text) = payload.downcast_ref::<String>() {
            text.clone()
        } else {
            "non-string panic payload".to_string()
        };
        // The payload's destructor could itself panic; never let that escape.
        let _ = panic::catch_unwind(AssertUnwindSafe(move || drop(payload)));
        Self::from(Error::Internal(format!("panic: {text}")))
    }
}

impl From<Error> for FfiError {
    fn from(error: Error) -> Self {
        FfiError::new(error.status().into(), error.to_string())
    }
}

thread_local! {
    /// This thread's last failure message; "" until a call fails.
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: &str) {
    let message = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    // try_with: during thread teardown the slot may be gone; losing the
    // message then is better than aborting.
    let _ = LAST_ERROR.try_with(|slot| {
        if let Ok(mut slot) = slot.try_borrow_mut() {
            *slot = message;
        }
    });
}

/// This thread's last failure message (a pointer into thread-local storage).
pub(crate) fn last_error_ptr() -> *const c_char {
    static EMPTY: &CStr = c"";
    LAST_ERROR
        .try_with(|slot| slot.try_borrow().map(|s| s.as_ptr()).ok())
        .ok()
        .flatten()
        .unwrap_or(EMPTY.as_ptr())
}

/// The one guard around every entry point: runs `body`, converting a panic
/// into `MQS_INTERNAL`; on failure records the message as this thread's last
/// error and returns `on_error(status)`.
pub(crate) fn guard<T>(
    on_error: impl FnOnce(mqs_status) -> T,
    body: impl FnOnce() -> Result<T, FfiError>,
) -> T {
    // AssertUnwindSafe: after a panic nothing observes `body`'s captures again;
    // shared state behind them (parking_lot locks) does not poison, and the
    // store's own invariants are upheld by its lock-protected updates.
    let result = match panic::catch_unwind(AssertUnwindSafe(body)) {
        Ok(result) => result,
        Err(payload) => Err(FfiError::from_panic(payload)),
    };
    match result {
        Ok(value) => value,
        Err(error) => {
            set_last_error(&error.message);
            on_error(error.status)
        }
    }
}

/// `guard` for the entry points that return only a status.
pub(crate) fn status(body: impl FnOnce() -> Result<(), FfiError>) -> mqs_status {
    guard(|status| status, || body().map(|()| mqs_status::MQS_OK))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last_error() -> String {
        // SAFETY: last_error_ptr returns a NUL-terminated string that lives
        // until the next failure on this thread.
        unsafe { CStr::from_ptr(last_error_ptr()) }
            .to_str()
            .unwrap()
            .to_string()
    }

    #[test]
    fn panic_becomes_internal_with_message() {
        let status = status(|| panic!("boom {}", 42));
        assert_eq!(status, mqs_status::MQS_INTERNAL);
        let message = last_error();
        assert!(message.contains("boom 42"), "{message}");
        let status = status_of_str_panic();
        assert_eq!(status, mqs_status::MQS_INTERNAL);
        assert!(last_error().contains("static text"));
    }

    fn status_of_str_panic() -> mqs_status {
        status(|| std::panic::panic_any("static text"))
    }

    #[test]
    fn failure_sets_message_success_keeps_it() {
        let s = status(|| Err(FfiError::null("store")));
        assert_eq!(s, mqs_status::MQS_INVALID_ARGUMENT);
        assert_eq!(last_error(), "invalid argument: `store` is NULL");
        assert_eq!(status(|| Ok(())), mqs_status::MQS_OK);
        assert_eq!(last_error(), "invalid argument: `store` is NULL");
    }

    #[test]
    fn interior_nul_does_not_lose_the_message() {
        let s = status(|| Err(FfiError::invalid_argument("a\0b")));
        assert_eq!(s, mqs_status::MQS_INVALID_ARGUMENT);
        assert_eq!(last_error(), "invalid argument: a\\0b");
    }

    #[test]
    fn messages_are_per_thread() {
        let _ = status(|| Err(FfiError::null("here")));
        std::thread::spawn(|| assert_eq!(last_error(), ""))
            .join()
            .unwrap();
        assert!(last_error().contains("here"));
    }
}
