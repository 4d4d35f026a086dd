//! The C ABI: `include/mqstore.h` is generated from this module tree by
//! cbindgen (`make header`; `tests/header.rs` checks it is up to date).
//!
//! Conventions, common to every function:
//! - Every fallible function returns `mqs_status`; out-parameters come last.
//!   On failure they are left untouched, except output handles, which are set
//!   to NULL, and `mqs_last_error_message()` describes the failure.
//! - Every pointer argument is checked: NULL (where not documented as
//!   allowed) is `MQS_INVALID_ARGUMENT` with a message naming the parameter;
//!   strings must be UTF-8; an array with a count > 0 must not be NULL.
//! - Every entry point catches Rust panics and returns `MQS_INTERNAL`.
//! - Handles are checked against a registry of live handles: closed or freed
//!   ones are rejected with `MQS_INVALID_HANDLE` (double close, double free,
//!   use after close) instead of being dereferenced.
//!
//! Layout: `types` holds the `#[repr(C)]` types; `guard` the error,
//! last-error and panic plumbing; `registry` the handle registries;
//! `convert` the argument conversions; `store`, `write`, `read` and
//! `transfer` the functions.

#![allow(non_camel_case_types)]

// Plumbing.
mod convert;
mod guard;
mod registry;
mod types;

// The functions, one group per module; cbindgen emits them in this order.
mod store;

mod write;

mod notify;

mod read;

mod transfer;

mod log;

use std::ffi::{c_char, CStr};

pub use self::log::*;
pub use self::notify::*;
pub use self::read::*;
pub use self::store::*;
pub use self::transfer::*;
pub use self::types::*;
pub use self::write::*;

use self::guard::guard;

/// "0.2.0": the crate version, NUL-terminated at compile time.
const VERSION: &CStr =
    match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
        Ok(version) => version,
        Err(_) => panic!("the crate version contains a NUL byte"),
    };

/// The library version as a static string, e.g. "0.2.0" (equal to
/// `MQS_VERSION_MAJOR.MQS_VERSION_MINOR.MQS_VERSION_PATCH`).
#[no_mangle]
pub extern "C" fn mqs_version() -> *const c_char {
    guard(|_| VERSION.as_ptr(), || Ok(VERSION.as_ptr()))
}

/// A static, human-readable name for `status`; never NULL. Values that are
/// not an `mqs_status` give "unknown status".
#[no_mangle]
pub extern "C" fn mqs_status_str(status: mqs_status_arg) -> *const c_char {
    guard(
        |_| c"unknown status".as_ptr(),
        || Ok(status_text(status).as_ptr()),
    )
}

fn status_text(status: mqs_status_arg) -> &'static CStr {
    match status {
        0 => c"ok",
        1 => c"invalid argument",
        2 => c"invalid configuration",
        3 => c"shard not found",
        4 => c"shard already exists",
        5 => c"record too large",
        6 => c"offset out of range",
        7 => c"invalid handle",
        8 => c"store closed",
        9 => c"corruption",
        10 => c"I/O error",
        11 => c"operation would block",
        12 => c"unsupported",
        13 => c"store poisoned",
        14 => c"internal error",
        15 => c"store directory locked",
        16 => c"producer fenced",
        17 => c"out-of-order sequence",
        18 => c"duplicate sequence",
        _ => c"unknown status",
    }
}

/// The message of this thread's last failed call ("" if none has failed).
/// Never NULL. The string is owned by the library and valid until the next
/// failing `mqs_` call on this thread; copy it to keep it longer.
#[no_mangle]
pub extern "C" fn mqs_last_error_message() -> *const c_char {
    guard(|_| c"".as_ptr(), || Ok(guard::last_error_ptr()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Status;

    #[test]
    fn status_text_matches_the_rust_names() {
        for code in 0..=18 {
            let text = status_text(code).to_str().unwrap();
            let status = ALL_STATUSES[code as usize];
            assert_eq!(status as i32, code);
            assert_eq!(text, Status::from(status).as_str(), "status {code}");
            assert_eq!(mqs_status::from(Status::from(status)), status);
        }
        assert_eq!(status_text(19).to_str().unwrap(), "unknown status");
        assert_eq!(status_text(-1).to_str().unwrap(), "unknown status");
    }

    const ALL_STATUSES: [mqs_status; 19] = [
        mqs_status::MQS_OK,
        mqs_status::MQS_INVALID_ARGUMENT,
        mqs_status::MQS_INVALID_CONFIG,
        mqs_status::MQS_SHARD_NOT_FOUND,
        mqs_status::MQS_SHARD_EXISTS,
        mqs_status::MQS_RECORD_TOO_LARGE,
        mqs_status::MQS_OFFSET_OUT_OF_RANGE,
        mqs_status::MQS_INVALID_HANDLE,
        mqs_status::MQS_CLOSED,
        mqs_status::MQS_CORRUPTION,
        mqs_status::MQS_IO,
        mqs_status::MQS_WOULD_BLOCK,
        mqs_status::MQS_UNSUPPORTED,
        mqs_status::MQS_POISONED,
        mqs_status::MQS_INTERNAL,
        mqs_status::MQS_LOCKED,
        mqs_status::MQS_PRODUCER_FENCED,
        mqs_status::MQS_OUT_OF_ORDER_SEQUENCE,
        mqs_status::MQS_DUPLICATE_SEQUENCE,
    ];

    #[test]
    fn version_matches_cargo() {
        // SAFETY: mqs_version returns a static NUL-terminated string.
        let version = unsafe { CStr::from_ptr(mqs_version()) };
        assert_eq!(version.to_str().unwrap(), crate::VERSION);
        assert_eq!(
            format!("{MQS_VERSION_MAJOR}.{MQS_VERSION_MINOR}.{MQS_VERSION_PATCH}"),
            crate::VERSION
        );
    }
}
