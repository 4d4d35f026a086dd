//! Zero-copy transfers of stored RecordBatches to a file descriptor, and
//! copies of them into a caller's buffer.

use std::ffi::{c_char, c_int};
use std::mem::MaybeUninit;

use super::convert::{clear_out_handle, out_arg, str_arg};
use super::guard::{status, FfiError};
use super::registry::Registry;
use super::store::STORES;
use super::types::{mqs_status, mqs_store};
use crate::{Error, TransferPlan};

static TRANSFERS: Registry<mqs_transfer> = Registry::new("mqs_transfer");

/// A planned transfer of whole Kafka RecordBatches (`mqs_transfer_plan`): its
/// byte count and next offset are fixed when planned, and it holds its own
/// references to the bytes, so later appends, deletes, a shard deletion or
/// the store's close change nothing it sends. Use from one thread at a time.
pub struct mqs_transfer {
    plan: TransferPlan,
}

fn check_fd(fd: c_int) -> Result<(), FfiError> {
    if fd < 0 {
        return Err(FfiError::invalid_argument(format_args!(
            "file descriptor {fd} is invalid"
        )));
    }
    Ok(())
}

/// Plans a transfer of the stored batches of `shard` from the one holding
/// `offset` on: at most `max_bytes`, but at least one batch when any is
/// stored. Query its size with `mqs_transfer_info` (e.g. to write a Fetch
/// response's length first), send it with `mqs_transfer_send` or copy it
/// into buffers with `mqs_transfer_read_into`, free it with
/// `mqs_transfer_free`. On failure `*out_transfer` is set to NULL.
///
/// The first batch may start before `offset` (batches are sent whole).
///
/// # Safety
/// `shard` is a NUL-terminated string; `out_transfer` is valid for writing a
/// pointer.
#[no_mangle]
pub unsafe extern "C" fn mqs_transfer_plan(
    store: *mut mqs_store,
    shard: *const c_char,
    offset: i64,
    max_bytes: usize,
    out_transfer: *mut *mut mqs_transfer,
) -> mqs_status {
    status(|| {
        // SAFETY: `out_transfer` is NULL or writable (caller contract).
        unsafe { clear_out_handle(out_transfer) };
        let store = STORES.get(store, "store")?;
        // SAFETY: NUL-terminated string (caller contract).
        let shard = unsafe { str_arg(shard, "shard") }?;
        out_arg(out_transfer, "out_transfer")?;
        let plan = store.plan_transfer(shard, offset, max_bytes)?;
        let handle = TRANSFERS.register(mqs_transfer { plan });
        // SAFETY: checked non-NULL; writable per the caller contract.
        unsafe { out_transfer.write(handle) };
        Ok(())
    })
}

/// The transfer's total size in bytes, the offset a consumer continues from
/// after it, and the bytes already sent or read (`mqs_transfer_send` and
/// `mqs_transfer_read_into` advance one progress).
///
/// # Safety
/// `transfer` is not freed by another thread during the call; the out
/// pointers are valid for writing.
#[no_mangle]
pub unsafe extern "C" fn mqs_transfer_info(
    transfer: *const mqs_transfer,
    out_total_bytes: *mut u64,
    out_next_offset: *mut i64,
    out_sent_bytes: *mut u64,
) -> mqs_status {
    status(|| {
        // SAFETY: not freed concurrently (caller contract).
        let transfer = unsafe { TRANSFERS.get(transfer, "transfer") }?;
        out_arg(out_total_bytes, "out_total_bytes")?;
        out_arg(out_next_offset, "out_next_offset")?;
        out_arg(out_sent_bytes, "out_sent_bytes")?;
        let plan = &transfer.plan;
        // SAFETY: all checked non-NULL; writable per the caller contract.
        unsafe {
            out_total_bytes.write(plan.total_bytes());
            out_next_offset.write(plan.next_offset());
            out_sent_bytes.write(plan.sent_bytes());
        }
        Ok(())
    })
}

/// Writes the rest of the transfer to `fd` (a socket, pipe or file).
/// `MQS_OK`: everything is sent. `MQS_WOULD_BLOCK`: `fd` is non-blocking and
/// full; the progress is kept, call again when it is writable and the byte
/// stream continues exactly where it stopped. `*out_written` is set to the
/// bytes written by this call in both cases. SIGPIPE is never raised for
/// sockets: a closed peer is `MQS_IO`.
///
/// # Safety
/// `transfer` is not used by another thread during the call; `out_written`
/// is valid for writing.
#[no_mangle]
pub unsafe extern "C" fn mqs_transfer_send(
    transfer: *mut mqs_transfer,
    fd: c_int,
    out_written: *mut u64,
) -> mqs_status {
    status(|| {
        // SAFETY: not used by another thread during the call (caller contract).
        let transfer = unsafe { TRANSFERS.get_mut(transfer, "transfer") }?;
        check_fd(fd)?;
        out_arg(out_written, "out_written")?;
        let progress = transfer.plan.send_to_fd(fd)?;
        // SAFETY: checked non-NULL; writable per the caller contract.
        unsafe { out_written.write(progress.written) };
        if progress.complete {
            Ok(())
        } else {
            Err(Error::WouldBlock {
                sent: transfer.plan.sent_bytes(),
                total: transfer.plan.total_bytes(),
            }
            .into())
        }
    })
}

/// Copies the next bytes of the transfer into `buf` (at most `len`), for a
/// broker that sends through TLS or its own framing rather than to a
/// descriptor. It continues where the last `mqs_transfer_send` or
/// `mqs_transfer_read_into` stopped, and both calls may be mixed on one
/// transfer. `*out_written` is set to the bytes copied: `len` unless the
/// transfer ends first (or a read fails, below), 0 only when it is already
/// complete.
/// `*out_complete` tells whether the whole transfer has now been sent or
/// read. Bytes held in memory are copied, bytes in files read with pread(2),
/// bytes an engine keeps elsewhere fetched: the call may wait for the disk
/// or the network.
///
/// `buf` NULL with `len` > 0, or `len` 0, is `MQS_INVALID_ARGUMENT`. A read
/// failure after some bytes were copied returns `MQS_OK` with those bytes;
/// the next call retries at the byte where this one stopped and reports the
/// failure (`MQS_IO`, ...) if it persists.
///
/// # Safety
/// `transfer` is not used by another thread during the call; `buf` is NULL
/// or valid for writing `len` bytes (it need not be initialised); the out
/// pointers are valid for writing.
#[no_mangle]
pub unsafe extern "C" fn mqs_transfer_read_into(
    transfer: *mut mqs_transfer,
    buf: *mut u8,
    len: usize,
    out_written: *mut usize,
    out_complete: *mut bool,
) -> mqs_status {
    status(|| {
        // SAFETY: not used by another thread during the call (caller contract).
        let transfer = unsafe { TRANSFERS.get_mut(transfer, "transfer") }?;
        // SAFETY: NULL or valid for writing `len` bytes (caller contract).
        let buf = unsafe { out_buffer(buf, len) }?;
        out_arg(out_written, "out_written")?;
        out_arg(out_complete, "out_complete")?;
        let written = transfer.plan.read_into_uninit(buf)?;
        // SAFETY: both checked non-NULL; writable per the caller contract.
        unsafe {
            out_written.write(written);
            out_complete.write(transfer.plan.is_complete());
        }
        Ok(())
    })
}

/// The caller's output buffer; `{NULL, 0}` is an empty one (which the plan
/// refuses, as it refuses any empty buffer).
///
/// # Safety
/// `buf` is NULL or valid for writing `len` bytes during `'a`, and nothing
/// else accesses them meanwhile.
unsafe fn out_buffer<'a>(buf: *mut u8, len: usize) -> Result<&'a mut [MaybeUninit<u8>], FfiError> {
    if len == 0 {
        return Ok(&mut []);
    }
    if buf.is_null() {
        return Err(FfiError::invalid_argument(format_args!(
            "`buf` is NULL but `len` is {len}"
        )));
    }
    if len > isize::MAX as usize {
        return Err(FfiError::invalid_argument(format_args!(
            "`len` {len} is too large"
        )));
    }
    // SAFETY: non-NULL, valid for `len` bytes and unaliased (caller
    // contract); MaybeUninit<u8> needs no initialisation.
    Ok(unsafe { std::slice::from_raw_parts_mut(buf.cast::<MaybeUninit<u8>>(), len) })
}

/// Frees a transfer (sent or not). NULL is a no-op (`MQS_OK`); a transfer
/// already freed is `MQS_INVALID_HANDLE`.
#[no_mangle]
pub extern "C" fn mqs_transfer_free(transfer: *mut mqs_transfer) -> mqs_status {
    status(|| TRANSFERS.free(transfer, "transfer"))
}

/// Plans and sends in one call (see `mqs_transfer_plan`): whole batches of
/// `shard` from `offset` on, at most `max_bytes` (at least one batch), to
/// `fd`. Waits with poll(2) while a non-blocking `fd` is full, so the stream
/// is never cut mid-batch. `*out_bytes_written` and `*out_next_offset` report
/// the bytes sent and the offset to continue from.
///
/// # Safety
/// `shard` is a NUL-terminated string; the out pointers are valid for
/// writing.
#[no_mangle]
pub unsafe extern "C" fn mqs_sendfile_to_fd(
    store: *mut mqs_store,
    shard: *const c_char,
    offset: i64,
    max_bytes: usize,
    fd: c_int,
    out_bytes_written: *mut u64,
    out_next_offset: *mut i64,
) -> mqs_status {
    status(|| {
        let store = STORES.get(store, "store")?;
        // SAFETY: NUL-terminated string (caller contract).
        let shard = unsafe { str_arg(shard, "shard") }?;
        check_fd(fd)?;
        out_arg(out_bytes_written, "out_bytes_written")?;
        out_arg(out_next_offset, "out_next_offset")?;
        let result = store.sendfile_to_fd(shard, offset, max_bytes, fd)?;
        // SAFETY: both checked non-NULL; writable per the caller contract.
        unsafe {
            out_bytes_written.write(result.bytes_written);
            out_next_offset.write(result.next_offset);
        }
        Ok(())
    })
}
