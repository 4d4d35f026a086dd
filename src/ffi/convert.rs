//! Turning C arguments into Rust values without copying payloads: strings,
//! arrays, slices and input records all borrow the caller's memory for the
//! duration of the call.

use std::ffi::{c_char, CStr};
use std::fmt::Display;

use super::guard::FfiError;
use super::types::{mqs_header, mqs_record_in, mqs_slice};
use crate::record::{Header, Record};

/// A required NUL-terminated UTF-8 string argument.
///
/// # Safety
/// `ptr` is NULL or points to a NUL-terminated string that stays valid and
/// unmodified during `'a`.
pub(crate) unsafe fn str_arg<'a>(ptr: *const c_char, param: &str) -> Result<&'a str, FfiError> {
    if ptr.is_null() {
        return Err(FfiError::null(param));
    }
    // SAFETY: non-NULL and NUL-terminated per the caller's contract.
    let text = unsafe { CStr::from_ptr(ptr) };
    text.to_str()
        .map_err(|e| FfiError::invalid_argument(format_args!("`{param}` is not valid UTF-8: {e}")))
}

/// An optional string argument: NULL is `None`.
///
/// # Safety
/// As for [`str_arg`].
pub(crate) unsafe fn opt_str_arg<'a>(
    ptr: *const c_char,
    param: &str,
) -> Result<Option<&'a str>, FfiError> {
    if ptr.is_null() {
        Ok(None)
    } else {
        // SAFETY: forwarded contract.
        unsafe { str_arg(ptr, param) }.map(Some)
    }
}

/// An array argument of `count` elements; NULL is accepted only when `count`
/// is 0.
///
/// # Safety
/// When `count > 0`, `ptr` points to `count` initialized, aligned `T`s that
/// stay valid and unmodified during `'a`.
pub(crate) unsafe fn array_arg<'a, T>(
    ptr: *const T,
    count: usize,
    param: &str,
) -> Result<&'a [T], FfiError> {
    // SAFETY: forwarded caller contract.
    unsafe { array_arg_named(ptr, count, || param.to_string()) }
}

/// Like `array_arg`, but the parameter's name is built only on failure: the
/// per-record arrays of a batch append are checked on the hot path.
///
/// # Safety
/// As for `array_arg`.
pub(crate) unsafe fn array_arg_named<'a, T>(
    ptr: *const T,
    count: usize,
    param: impl FnOnce() -> String,
) -> Result<&'a [T], FfiError> {
    if count == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(FfiError::invalid_argument(format_args!(
            "`{}` is NULL but its count is {count}",
            param()
        )));
    }
    if count > isize::MAX as usize / std::mem::size_of::<T>().max(1) {
        return Err(FfiError::invalid_argument(format_args!(
            "count {count} of `{}` is too large",
            param()
        )));
    }
    // SAFETY: non-NULL, and the caller guarantees `count` valid elements;
    // the total size fits in isize (checked above).
    Ok(unsafe { std::slice::from_raw_parts(ptr, count) })
}

/// The bytes of an `mqs_slice`: `None` for `{NULL, 0}`. `what` names the
/// slice in error messages.
///
/// # Safety
/// When `data` is non-NULL it points to `len` bytes that stay valid and
/// unmodified during `'a`.
pub(crate) unsafe fn slice_bytes<'a>(
    slice: &mqs_slice,
    what: impl Fn() -> String,
) -> Result<Option<&'a [u8]>, FfiError> {
    if slice.data.is_null() {
        if slice.len == 0 {
            return Ok(None);
        }
        return Err(FfiError::invalid_argument(format_args!(
            "{}: data is NULL but len is {}",
            what(),
            slice.len
        )));
    }
    if slice.len > isize::MAX as usize {
        return Err(FfiError::invalid_argument(format_args!(
            "{}: len {} is too large",
            what(),
            slice.len
        )));
    }
    // SAFETY: non-NULL, and the caller guarantees `len` readable bytes.
    Ok(Some(unsafe {
        std::slice::from_raw_parts(slice.data, slice.len)
    }))
}

/// A slice that must be present and UTF-8 (header keys, tags).
///
/// # Safety
/// As for [`slice_bytes`].
unsafe fn slice_str<'a>(slice: &mqs_slice, what: impl Fn() -> String) -> Result<&'a str, FfiError> {
    // SAFETY: forwarded contract.
    let bytes = unsafe { slice_bytes(slice, &what) }?
        .ok_or_else(|| FfiError::invalid_argument(format_args!("{} is NULL", what())))?;
    std::str::from_utf8(bytes)
        .map_err(|e| FfiError::invalid_argument(format_args!("{} is not valid UTF-8: {e}", what())))
}

/// Keys of `read_by_keys` / `delete_by_keys`: each must be present.
///
/// # Safety
/// Every non-NULL `data` of `keys` points to `len` valid bytes during `'a`.
pub(crate) unsafe fn keys_arg<'a>(
    keys: &'a [mqs_slice],
    param: &str,
) -> Result<Vec<&'a [u8]>, FfiError> {
    keys.iter()
        .enumerate()
        .map(|(index, key)| {
            let what = || format!("`{param}[{index}]`");
            // SAFETY: forwarded contract.
            unsafe { slice_bytes(key, what) }?.ok_or_else(|| {
                FfiError::invalid_argument(format_args!(
                    "`{param}[{index}]` is NULL (records without a key cannot be selected by key)"
                ))
            })
        })
        .collect()
}

/// Converts C input records into borrowed `Record`s: no payload is copied.
/// Header keys and tags are checked to be UTF-8; errors name the record index
/// and the field.
///
/// # Safety
/// Every pointer inside `records` (slices, header and tag arrays) is NULL or
/// valid for its stated length, unmodified during `'a`.
pub(crate) unsafe fn records_arg<'a>(
    records: &'a [mqs_record_in],
    param: &str,
) -> Result<Vec<Record<'a>>, FfiError> {
    let mut out = Vec::with_capacity(records.len());
    for (index, record) in records.iter().enumerate() {
        let field = |name: &dyn Display| format!("`{param}[{index}].{name}`");
        // SAFETY: the caller guarantees the slices of `record` are valid.
        let key = unsafe { slice_bytes(&record.key, || field(&"key")) }?;
        // SAFETY: as above.
        let value = unsafe { slice_bytes(&record.value, || field(&"value")) }?.unwrap_or_default();
        // SAFETY: the caller guarantees `headers` holds `header_count` headers.
        let headers: &[mqs_header] =
            unsafe { array_arg_named(record.headers, record.header_count, || field(&"headers")) }?;
        let headers = headers
            .iter()
            .enumerate()
            .map(|(h, header)| {
                let key_name = || field(&format_args!("headers[{h}].key"));
                // SAFETY: the caller guarantees the header's slices are valid.
                let key = unsafe { slice_str(&header.key, key_name) }?;
                let value_name = || field(&format_args!("headers[{h}].value"));
                // SAFETY: as above.
                let value = unsafe { slice_bytes(&header.value, value_name) }?;
                Ok(Header { key, value })
            })
            .collect::<Result<Vec<_>, FfiError>>()?;
        // SAFETY: the caller guarantees `tags` holds `tag_count` slices.
        let tags: &[mqs_slice] =
            unsafe { array_arg_named(record.tags, record.tag_count, || field(&"tags")) }?;
        let tags = tags
            .iter()
            .enumerate()
            .map(|(t, tag)| {
                // SAFETY: the caller guarantees every tag slice is valid.
                unsafe { slice_str(tag, || field(&format_args!("tags[{t}]"))) }
            })
            .collect::<Result<Vec<_>, FfiError>>()?;
        out.push(Record {
            key,
            value,
            headers,
            tags,
            timestamp_ms: record.timestamp_ms,
            expire_at_ms: (record.expire_at_ms != 0).then_some(record.expire_at_ms),
        });
    }
    Ok(out)
}

/// Checks that a required output pointer is non-NULL.
pub(crate) fn out_arg<T>(ptr: *mut T, param: &str) -> Result<(), FfiError> {
    if ptr.is_null() {
        Err(FfiError::null(param))
    } else {
        Ok(())
    }
}

/// Sets `*ptr = NULL` for an output handle, when `ptr` itself is non-NULL,
/// so that the handle is NULL whatever happens next.
///
/// # Safety
/// `ptr` is NULL or valid for writing one pointer.
pub(crate) unsafe fn clear_out_handle<T>(ptr: *mut *mut T) {
    if !ptr.is_null() {
        // SAFETY: non-NULL and writable per the caller's contract.
        unsafe { ptr.write(std::ptr::null_mut()) };
    }
}
