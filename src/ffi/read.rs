//! Reads: results are `mqs_batch` handles that own zero-copy views of the
//! stored bytes and expose them as flat C arrays.

use std::ffi::c_char;
use std::ptr::NonNull;

use bytes::Bytes;

use super::convert::{array_arg, clear_out_handle, keys_arg, out_arg, str_arg};
use super::guard::status;
use super::registry::Registry;
use super::store::STORES;
use super::types::{mqs_header, mqs_record, mqs_slice, mqs_status, mqs_store};
use crate::RecordView;

static BATCHES: Registry<mqs_batch> = Registry::new("mqs_batch");

/// A read result: records plus the offset to continue from. The batch owns
/// the records' bytes (shared, reference-counted slices of the stored
/// batches, never copied), so every pointer it hands out stays valid until
/// `mqs_batch_free`, even after the shard is deleted or the store closed.
/// Use a batch from one thread at a time.
pub struct mqs_batch {
    /// Owns the bytes every pointer below refers to.
    _views: Vec<RecordView>,
    records: Vec<mqs_record>,
    /// Every record's headers, concatenated; `records[i].headers` points in.
    _headers: Vec<mqs_header>,
    /// Every record's tags, concatenated; `records[i].tags` points in.
    _tags: Vec<mqs_slice>,
    next_offset: i64,
}

/// A view of `bytes`: never NULL, even when empty (present but empty).
fn present(bytes: &Bytes) -> mqs_slice {
    let data = if bytes.is_empty() {
        NonNull::<u8>::dangling().as_ptr().cast_const()
    } else {
        bytes.as_ptr()
    };
    mqs_slice {
        data,
        len: bytes.len(),
    }
}

fn optional(bytes: Option<&Bytes>) -> mqs_slice {
    bytes.map_or(mqs_slice::NULL, present)
}

impl mqs_batch {
    /// Builds the flat C arrays over `views` once. The heap buffers of the
    /// vectors never move afterwards (they are not grown), and moving the
    /// `Vec`s into the batch does not move them, so the pointers stay valid
    /// for the batch's life.
    fn new(views: Vec<RecordView>, next_offset: i64) -> Self {
        let header_total = views.iter().map(|v| v.headers.len()).sum();
        let tag_total = views.iter().map(|v| v.tags.len()).sum();
        let mut headers = Vec::with_capacity(header_total);
        let mut tags = Vec::with_capacity(tag_total);
        for view in &views {
            headers.extend(view.headers.iter().map(|h| mqs_header {
                key: present(&h.key),
                value: optional(h.value.as_ref()),
            }));
            tags.extend(view.tags.iter().map(present));
        }
        let mut records = Vec::with_capacity(views.len());
        let (mut header_start, mut tag_start) = (0usize, 0usize);
        for view in &views {
            let (header_count, tag_count) = (view.headers.len(), view.tags.len());
            records.push(mqs_record {
                offset: view.offset,
                timestamp_ms: view.timestamp_ms,
                expire_at_ms: view.expire_at_ms.unwrap_or(0),
                key: optional(view.key.as_ref()),
                value: optional(view.value.as_ref()),
                headers: if header_count == 0 {
                    std::ptr::null()
                } else {
                    headers[header_start..].as_ptr()
                },
                header_count,
                tags: if tag_count == 0 {
                    std::ptr::null()
                } else {
                    tags[tag_start..].as_ptr()
                },
                tag_count,
                value_is_null: view.value.is_none(),
            });
            header_start += header_count;
            tag_start += tag_count;
        }
        mqs_batch {
            _views: views,
            records,
            _headers: headers,
            _tags: tags,
            next_offset,
        }
    }
}

/// Registers a new batch and stores its handle in `out`.
///
/// # Safety
/// `out` is non-NULL and writable.
unsafe fn hand_out(out: *mut *mut mqs_batch, views: Vec<RecordView>, next_offset: i64) {
    let handle = BATCHES.register(mqs_batch::new(views, next_offset));
    // SAFETY: non-NULL and writable per the caller's contract.
    unsafe { out.write(handle) };
}

/// Reads up to `max_records` (at least 1) records of `shard` from `offset`
/// on, stopping once their key + value + header bytes reach `max_bytes`
/// (the first record is returned even if larger). Records deleted or expired
/// are skipped. `offset` must lie in `[first_offset, next_offset]`, else
/// `MQS_OFFSET_OUT_OF_RANGE`. `*out_batch` is a new batch (possibly empty;
/// `mqs_batch_next_offset` is where to continue); free it with
/// `mqs_batch_free`. On failure `*out_batch` is set to NULL.
///
/// # Safety
/// `shard` is a NUL-terminated string; `out_batch` is valid for writing a
/// pointer.
#[no_mangle]
pub unsafe extern "C" fn mqs_read(
    store: *mut mqs_store,
    shard: *const c_char,
    offset: i64,
    max_records: usize,
    max_bytes: usize,
    out_batch: *mut *mut mqs_batch,
) -> mqs_status {
    status(|| {
        // SAFETY: `out_batch` is NULL or writable (caller contract).
        unsafe { clear_out_handle(out_batch) };
        let store = STORES.get(store, "store")?;
        // SAFETY: NUL-terminated string (caller contract).
        let shard = unsafe { str_arg(shard, "shard") }?;
        out_arg(out_batch, "out_batch")?;
        let result = store.read(shard, offset, max_records, max_bytes)?;
        // SAFETY: checked non-NULL; writable per the caller contract.
        unsafe { hand_out(out_batch, result.records, result.next_offset) };
        Ok(())
    })
}

/// Reads the live records whose key equals one of the `key_count` keys (each
/// present), in offset order, at most `max_records`. The batch's next offset
/// is -1 (a key lookup has no position). On failure `*out_batch` is set to
/// NULL.
///
/// # Safety
/// `shard` is a NUL-terminated string; `keys` points to `key_count` slices
/// valid for their lengths; `out_batch` is valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn mqs_read_by_keys(
    store: *mut mqs_store,
    shard: *const c_char,
    keys: *const mqs_slice,
    key_count: usize,
    max_records: usize,
    out_batch: *mut *mut mqs_batch,
) -> mqs_status {
    status(|| {
        // SAFETY: `out_batch` is NULL or writable (caller contract).
        unsafe { clear_out_handle(out_batch) };
        let store = STORES.get(store, "store")?;
        // SAFETY: NUL-terminated string (caller contract).
        let shard = unsafe { str_arg(shard, "shard") }?;
        // SAFETY: `keys` holds `key_count` slices (caller contract).
        let keys = unsafe { array_arg(keys, key_count, "keys") }?;
        // SAFETY: every slice is valid for its length (caller contract).
        let keys = unsafe { keys_arg(keys, "keys") }?;
        out_arg(out_batch, "out_batch")?;
        let records = store.read_by_keys(shard, &keys, max_records)?;
        // SAFETY: checked non-NULL; writable per the caller contract.
        unsafe { hand_out(out_batch, records, -1) };
        Ok(())
    })
}

/// Reads up to `max_records` (at least 1) live records carrying `tag`, from
/// `from_offset` on, in offset order. On failure `*out_batch` is set to NULL.
///
/// # Safety
/// `shard` and `tag` are NUL-terminated strings; `out_batch` is valid for
/// writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn mqs_read_by_tag(
    store: *mut mqs_store,
    shard: *const c_char,
    tag: *const c_char,
    from_offset: i64,
    max_records: usize,
    out_batch: *mut *mut mqs_batch,
) -> mqs_status {
    status(|| {
        // SAFETY: `out_batch` is NULL or writable (caller contract).
        unsafe { clear_out_handle(out_batch) };
        let store = STORES.get(store, "store")?;
        // SAFETY: NUL-terminated strings (caller contract).
        let shard = unsafe { str_arg(shard, "shard") }?;
        // SAFETY: as above.
        let tag = unsafe { str_arg(tag, "tag") }?;
        out_arg(out_batch, "out_batch")?;
        let result = store.read_by_tag(shard, tag, from_offset, max_records)?;
        // SAFETY: checked non-NULL; writable per the caller contract.
        unsafe { hand_out(out_batch, result.records, result.next_offset) };
        Ok(())
    })
}

/// The records of `batch`: `*out_records` points to `*out_count` records
/// (NULL when the count is 0), valid until `mqs_batch_free`.
///
/// # Safety
/// `batch` is not freed by another thread during the call; the out pointers
/// are valid for writing.
#[no_mangle]
pub unsafe extern "C" fn mqs_batch_records(
    batch: *const mqs_batch,
    out_records: *mut *const mqs_record,
    out_count: *mut usize,
) -> mqs_status {
    status(|| {
        // SAFETY: not freed concurrently (caller contract).
        let batch = unsafe { BATCHES.get(batch, "batch") }?;
        out_arg(out_records, "out_records")?;
        out_arg(out_count, "out_count")?;
        let records = if batch.records.is_empty() {
            std::ptr::null()
        } else {
            batch.records.as_ptr()
        };
        // SAFETY: both checked non-NULL; writable per the caller contract.
        unsafe {
            out_records.write(records);
            out_count.write(batch.records.len());
        }
        Ok(())
    })
}

/// The offset the next read should start at (-1 for `mqs_read_by_keys`).
///
/// # Safety
/// `batch` is not freed by another thread during the call;
/// `out_next_offset` is valid for writing.
#[no_mangle]
pub unsafe extern "C" fn mqs_batch_next_offset(
    batch: *const mqs_batch,
    out_next_offset: *mut i64,
) -> mqs_status {
    status(|| {
        // SAFETY: not freed concurrently (caller contract).
        let batch = unsafe { BATCHES.get(batch, "batch") }?;
        out_arg(out_next_offset, "out_next_offset")?;
        // SAFETY: checked non-NULL; writable per the caller contract.
        unsafe { out_next_offset.write(batch.next_offset) };
        Ok(())
    })
}

/// Frees a batch and every record, header and tag it handed out. NULL is a
/// no-op (`MQS_OK`); a batch already freed is `MQS_INVALID_HANDLE`.
#[no_mangle]
pub extern "C" fn mqs_batch_free(batch: *mut mqs_batch) -> mqs_status {
    status(|| BATCHES.free(batch, "batch"))
}

/// The first offset whose record timestamp is >= `timestamp_ms`;
/// `MQS_TIMESTAMP_EARLIEST` / `MQS_TIMESTAMP_LATEST` give the low / high
/// watermark. `*out_found` is false (and `*out_offset` -1) when no stored
/// record is that recent.
///
/// # Safety
/// `shard` is a NUL-terminated string; the out pointers are valid for
/// writing.
#[no_mangle]
pub unsafe extern "C" fn mqs_offset_for_timestamp(
    store: *mut mqs_store,
    shard: *const c_char,
    timestamp_ms: i64,
    out_offset: *mut i64,
    out_found: *mut bool,
) -> mqs_status {
    status(|| {
        let store = STORES.get(store, "store")?;
        // SAFETY: NUL-terminated string (caller contract).
        let shard = unsafe { str_arg(shard, "shard") }?;
        out_arg(out_offset, "out_offset")?;
        out_arg(out_found, "out_found")?;
        let offset = store.offset_for_timestamp(shard, timestamp_ms)?;
        // SAFETY: both checked non-NULL; writable per the caller contract.
        unsafe {
            out_offset.write(offset.unwrap_or(-1));
            out_found.write(offset.is_some());
        }
        Ok(())
    })
}
