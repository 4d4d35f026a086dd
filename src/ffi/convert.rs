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

/// Input records converted for one call, borrowed from the caller's memory.
pub(crate) struct Records<'a> {
    records: Vec<Record<'a>>,
    /// Every record came from the fast path: none holds a header or tag
    /// vector, so none owns a heap allocation.
    plain: bool,
}

impl<'a> std::ops::Deref for Records<'a> {
    type Target = [Record<'a>];

    fn deref(&self) -> &[Record<'a>] {
        &self.records
    }
}

impl Drop for Records<'_> {
    fn drop(&mut self) {
        if self.plain {
            // Dropping a thousand records one by one only to find that none
            // owns anything costs about 2% of a small-record append.
            // SAFETY: plain records hold borrowed slices, integers and empty
            // `Vec::new()`s, which own no allocation: forgetting them leaks
            // nothing, and a length of 0 is always valid.
            unsafe { self.records.set_len(0) };
        }
    }
}

/// Converts C input records into borrowed `Record`s: no payload is copied.
/// Header keys and tags are checked to be UTF-8; errors name the record index
/// and the field.
///
/// This runs for every appended record, so the common batch (records with a
/// key and a value only) is checked and converted in one pass, without
/// building error context. Any other batch, including every invalid one, goes record by record through [`record_arg`], which
/// checks each field and names the one that failed: the same checks, only
/// the error message needs the slow path.
///
/// # Safety
/// Every pointer inside `records` (slices, header and tag arrays) is NULL or
/// valid for its stated length, unmodified during `'a`.
pub(crate) unsafe fn records_arg<'a>(
    records: &'a [mqs_record_in],
    param: &str,
) -> Result<Records<'a>, FfiError> {
    // One pass: each record is checked and converted together (its fields
    // are read once); a record that fails the check is converted to a
    // placeholder that borrows nothing, and the batch is then redone below.
    let mut plain = true;
    let converted: Vec<Record<'a>> = records
        .iter()
        .map(|record| {
            let ok = is_plain(record);
            plain &= ok;
            // SAFETY: `ok` says whether `is_plain` accepted the record; the
            // caller guarantees its slices are valid.
            unsafe { plain_record(record, ok) }
        })
        .collect();
    if plain {
        return Ok(Records {
            records: converted,
            plain: true,
        });
    }
    let mut out = converted;
    out.clear();
    for (index, record) in records.iter().enumerate() {
        let converted = if is_plain(record) {
            // SAFETY: checked plain; the caller guarantees valid slices.
            unsafe { plain_record(record, true) }
        } else {
            // SAFETY: the caller guarantees the record's slices and arrays.
            unsafe { record_arg(record, index, param) }?
        };
        out.push(converted);
    }
    Ok(Records {
        records: out,
        plain: false,
    })
}

/// What [`slice_bytes`] accepts: `{NULL, 0}` or a non-NULL `data` with a
/// length that fits in `isize`. Bitwise, not short-circuit: no branches.
#[inline(always)]
fn valid_slice(slice: &mqs_slice) -> bool {
    (slice.len <= isize::MAX as usize) & (!slice.data.is_null() | (slice.len == 0))
}

/// A record without headers or tags whose key and value are valid slices
/// (and whose value, when null, is `{NULL, 0}`).
#[inline(always)]
fn is_plain(record: &mqs_record_in) -> bool {
    ((record.header_count | record.tag_count) == 0)
        & valid_slice(&record.key)
        & valid_slice(&record.value)
        & (!record.value_is_null | (record.value.data.is_null() & (record.value.len == 0)))
}

/// Converts a record that [`is_plain`] accepted (`ok`); for one it did not,
/// an empty record that borrows nothing (to be discarded).
///
/// # Safety
/// `ok` is `is_plain(record)`, and the record's non-NULL slices point to
/// `len` readable bytes, unmodified during `'a`.
#[inline(always)]
unsafe fn plain_record<'a>(record: &mqs_record_in, ok: bool) -> Record<'a> {
    let key = (ok & !record.key.data.is_null()).then(|| {
        // SAFETY: non-NULL, valid (is_plain) and readable (caller contract).
        unsafe { std::slice::from_raw_parts(record.key.data, record.key.len) }
    });
    let value: &[u8] = if ok & !record.value.data.is_null() {
        // SAFETY: as above.
        unsafe { std::slice::from_raw_parts(record.value.data, record.value.len) }
    } else {
        &[]
    };
    let value = (!record.value_is_null).then_some(value);
    Record {
        key,
        value,
        headers: Vec::new(),
        tags: Vec::new(),
        timestamp_ms: record.timestamp_ms,
        expire_at_ms: (record.expire_at_ms != 0).then_some(record.expire_at_ms),
    }
}

/// One record, every field checked, errors naming `param[index].field`.
///
/// # Safety
/// As for [`records_arg`], for this one record.
#[cold]
unsafe fn record_arg<'a>(
    record: &'a mqs_record_in,
    index: usize,
    param: &str,
) -> Result<Record<'a>, FfiError> {
    let field = |name: &dyn Display| format!("`{param}[{index}].{name}`");
    // SAFETY: the caller guarantees the slices of `record` are valid.
    let key = unsafe { slice_bytes(&record.key, || field(&"key")) }?;
    // SAFETY: as above.
    let value = unsafe { slice_bytes(&record.value, || field(&"value")) }?;
    let value = match (record.value_is_null, value) {
        (true, None) => None,
        (true, Some(_)) => {
            return Err(FfiError::invalid_argument(format_args!(
                "{} is set but {} is not {{NULL, 0}}",
                field(&"value_is_null"),
                field(&"value")
            )))
        }
        (false, value) => Some(value.unwrap_or_default()),
    };
    // SAFETY: the caller guarantees `headers` holds `header_count` headers.
    // (The name goes unquoted: array_arg_named quotes it.)
    let headers: &[mqs_header] = unsafe {
        array_arg_named(record.headers, record.header_count, || {
            format!("{param}[{index}].headers")
        })
    }?;
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
    let tags: &[mqs_slice] = unsafe {
        array_arg_named(record.tags, record.tag_count, || {
            format!("{param}[{index}].tags")
        })
    }?;
    let tags = tags
        .iter()
        .enumerate()
        .map(|(t, tag)| {
            // SAFETY: the caller guarantees every tag slice is valid.
            unsafe { slice_str(tag, || field(&format_args!("tags[{t}]"))) }
        })
        .collect::<Result<Vec<_>, FfiError>>()?;
    Ok(Record {
        key,
        value,
        headers,
        tags,
        timestamp_ms: record.timestamp_ms,
        expire_at_ms: (record.expire_at_ms != 0).then_some(record.expire_at_ms),
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffi::types::mqs_status;

    fn slice(bytes: &[u8]) -> mqs_slice {
        mqs_slice {
            data: bytes.as_ptr(),
            len: bytes.len(),
        }
    }

    fn value_only(value: mqs_slice) -> mqs_record_in {
        mqs_record_in {
            key: mqs_slice::NULL,
            value,
            headers: std::ptr::null(),
            header_count: 0,
            tags: std::ptr::null(),
            tag_count: 0,
            timestamp_ms: 0,
            expire_at_ms: 0,
            value_is_null: false,
        }
    }

    fn convert(records: &[mqs_record_in]) -> Result<Vec<Record<'_>>, FfiError> {
        // SAFETY: every slice in the tests points into live test data.
        unsafe { records_arg(records, "records") }.map(|r| r.to_vec())
    }

    #[test]
    fn plain_batch_keeps_every_field() {
        let key = *b"k";
        let values = [*b"one", *b"two"];
        let mut records = [value_only(slice(&values[0])), value_only(slice(&values[1]))];
        records[0].key = slice(&key);
        records[1].timestamp_ms = 7;
        records[1].expire_at_ms = 9;
        let out = convert(&records).unwrap();
        assert_eq!(out[0].key, Some(&b"k"[..]));
        assert_eq!(out[0].value, Some(&b"one"[..]));
        assert_eq!(out[0].expire_at_ms, None);
        assert_eq!(out[1].key, None);
        assert_eq!((out[1].timestamp_ms, out[1].expire_at_ms), (7, Some(9)));
    }

    #[test]
    fn absent_value_is_empty_and_a_null_value_is_null() {
        let records = [value_only(mqs_slice::NULL)];
        let out = convert(&records).unwrap();
        assert_eq!(out[0].value, Some(&b""[..]));
        let mut tombstone = value_only(mqs_slice::NULL);
        tombstone.value_is_null = true;
        let mut tagged = tombstone;
        let tag = *b"t";
        let tags = [slice(&tag)];
        tagged.tags = tags.as_ptr();
        tagged.tag_count = 1;
        // The plain (fast) path and the checked one agree.
        let both = [tombstone, tagged];
        let out = convert(&both).unwrap();
        assert_eq!((out[0].value, out[1].value), (None, None));
        let value = *b"v";
        for mut bad in [tombstone, tagged] {
            bad.value = slice(&value);
            let err = convert(&[bad]).unwrap_err();
            assert!(err.message.contains("value_is_null"), "{}", err.message);
        }
    }

    #[test]
    fn mixed_batch_converts_in_order() {
        let values = [*b"a", *b"b", *b"c"];
        let tag = *b"red";
        let tags = [slice(&tag)];
        let mut records: Vec<_> = values.iter().map(|v| value_only(slice(v))).collect();
        records[1].tags = tags.as_ptr();
        records[1].tag_count = 1;
        let out = convert(&records).unwrap();
        let got: Vec<&[u8]> = out.iter().map(|r| r.value.unwrap()).collect();
        assert_eq!(got, [&b"a"[..], b"b", b"c"]);
        assert_eq!(out[1].tags, ["red"]);
        assert!(out[0].tags.is_empty() && out[2].tags.is_empty());
    }

    #[test]
    fn bad_slices_are_rejected_with_their_index() {
        let ok = *b"ok";
        let cases = [
            (
                mqs_slice {
                    data: std::ptr::null(),
                    len: 3,
                },
                "`records[1].value`: data is NULL but len is 3",
            ),
            (
                mqs_slice {
                    data: ok.as_ptr(),
                    len: usize::MAX,
                },
                "`records[1].value`: len",
            ),
        ];
        for (bad, expected) in cases {
            let records = [value_only(slice(&ok)), value_only(bad)];
            let error = convert(&records).unwrap_err();
            assert_eq!(error.status, mqs_status::MQS_INVALID_ARGUMENT);
            assert!(error.message.contains(expected), "{}", error.message);
            let mut keyed = [value_only(slice(&ok)), value_only(slice(&ok))];
            keyed[1].key = bad;
            let error = convert(&keyed).unwrap_err();
            assert!(
                error.message.contains("`records[1].key`"),
                "{}",
                error.message
            );
        }
    }

    #[test]
    fn header_array_null_with_count_is_rejected() {
        let ok = *b"ok";
        let mut records = [value_only(slice(&ok))];
        records[0].header_count = 1;
        let error = convert(&records).unwrap_err();
        assert!(
            error
                .message
                .contains("`records[0].headers` is NULL but its count is 1"),
            "{}",
            error.message
        );
    }
}
