//! Durability notifications for event loops: an eventfd to poll, pipelined
//! appends and watches that complete through it, and a non-blocking poll
//! of the completions (`Store::durable_fd` and friends).

use std::ffi::{c_char, c_int};

use super::convert::{array_arg, out_arg, records_arg, str_arg};
use super::guard::{status, FfiError};
use super::store::STORES;
use super::types::{mqs_record_in, mqs_status, mqs_store};

/// A watched offset that became durable (`status` = `MQS_OK`: the
/// acknowledgement), or failed to (`MQS_POISONED` after a failed fsync,
/// `MQS_CLOSED`, ...; the batch is then not acknowledged).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct mqs_completion {
    /// The token given to `mqs_append_batch_notify` / `mqs_watch_durable`.
    pub token: u64,
    /// The watched offset: the batch's base offset for
    /// `mqs_append_batch_notify`.
    pub offset: i64,
    pub status: mqs_status,
}

/// Sets `*out_fd` to the store's durability descriptor: an eventfd that is
/// readable while completions wait for `mqs_poll_durable`. Add it to an
/// epoll set, `poll(2)` or an event loop, for reading; never read, write or
/// close it yourself. It is the same descriptor on every call, created by
/// the first (with the store's `mqs-durable` thread, which waits for
/// watched offsets in watch order so that no thread of yours has to), and
/// valid until `mqs_store_close` returns: remove it from your event loop
/// before closing the store.
///
/// # Safety
/// `out_fd` is valid for writing.
#[no_mangle]
pub unsafe extern "C" fn mqs_durable_fd(store: *mut mqs_store, out_fd: *mut c_int) -> mqs_status {
    status(|| {
        let store = STORES.get(store, "store")?;
        out_arg(out_fd, "out_fd")?;
        let fd = store.durable_fd()?;
        // SAFETY: checked non-NULL; writable per the caller contract.
        unsafe { out_fd.write(fd) };
        Ok(())
    })
}

/// `mqs_append_batch_nowait`, plus a completion carrying `token` once the
/// batch is as durable as the shard's mode promises: its acknowledgement,
/// delivered through `mqs_durable_fd` and `mqs_poll_durable` instead of a
/// blocking `mqs_wait_durable`. The batch is readable at once;
/// `*out_base_offset` is its base offset (and the completion's offset).
/// Completions arrive in the order of the calls (across shards too). On
/// failure nothing is watched (and, as for any failed append, the batch is
/// not acknowledged).
///
/// # Safety
/// As for `mqs_append_batch_nowait`.
#[no_mangle]
pub unsafe extern "C" fn mqs_append_batch_notify(
    store: *mut mqs_store,
    shard: *const c_char,
    records: *const mqs_record_in,
    count: usize,
    token: u64,
    out_base_offset: *mut i64,
) -> mqs_status {
    status(|| {
        let store = STORES.get(store, "store")?;
        // SAFETY: NUL-terminated string (caller contract).
        let shard = unsafe { str_arg(shard, "shard") }?;
        // SAFETY: `records` holds `count` records (caller contract).
        let input = unsafe { array_arg(records, count, "records") }?;
        // SAFETY: the records' slices and arrays are valid (caller contract).
        let records = unsafe { records_arg(input, "records") }?;
        out_arg(out_base_offset, "out_base_offset")?;
        let offset = store.append_batch_notify(shard, &records, token)?;
        // SAFETY: checked non-NULL; writable per the caller contract.
        unsafe { out_base_offset.write(offset) };
        Ok(())
    })
}

/// Asks for a completion carrying `token` once the record at `offset` of
/// `shard`, and every earlier one, is durable: `mqs_wait_durable` without
/// blocking. Fails at once (nothing watched) with `MQS_OFFSET_OUT_OF_RANGE`
/// when `offset` was not appended, `MQS_SHARD_NOT_FOUND`, or `MQS_CLOSED`.
///
/// # Safety
/// `shard` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn mqs_watch_durable(
    store: *mut mqs_store,
    shard: *const c_char,
    offset: i64,
    token: u64,
) -> mqs_status {
    status(|| {
        let store = STORES.get(store, "store")?;
        // SAFETY: NUL-terminated string (caller contract).
        let shard = unsafe { str_arg(shard, "shard") }?;
        store.watch_durable(shard, offset, token)?;
        Ok(())
    })
}

/// Copies up to `capacity` completions, oldest first, into `out` and sets
/// `*out_count` to how many; never blocks (0 when none is ready). The
/// descriptor stays readable while more are queued, so a level-triggered
/// loop calls again; an edge-triggered one calls until fewer than
/// `capacity` come back. `capacity` 0 or a NULL `out` is
/// `MQS_INVALID_ARGUMENT` (nothing is taken). Any thread may call it.
///
/// # Safety
/// `out` has room for `capacity` completions; `out_count` is valid for
/// writing.
#[no_mangle]
pub unsafe extern "C" fn mqs_poll_durable(
    store: *mut mqs_store,
    out: *mut mqs_completion,
    capacity: usize,
    out_count: *mut usize,
) -> mqs_status {
    status(|| {
        let store = STORES.get(store, "store")?;
        out_arg(out_count, "out_count")?;
        if capacity == 0 {
            return Err(FfiError::from(crate::Error::InvalidArgument(
                "capacity must be at least 1".into(),
            )));
        }
        out_arg(out, "out")?;
        let completions = store.poll_durable(capacity);
        for (i, c) in completions.iter().enumerate() {
            let status = match &c.result {
                Ok(()) => mqs_status::MQS_OK,
                Err(e) => e.status().into(),
            };
            // SAFETY: `out` has room for `capacity` >= len entries (caller
            // contract); a plain Copy struct is written, nothing dropped.
            unsafe {
                out.add(i).write(mqs_completion {
                    token: c.token,
                    offset: c.offset,
                    status,
                })
            };
        }
        // SAFETY: checked non-NULL; writable per the caller contract.
        unsafe { out_count.write(completions.len()) };
        Ok(())
    })
}
