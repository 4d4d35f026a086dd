//! Appends and deletes.

use std::ffi::c_char;

use super::convert::{array_arg, keys_arg, out_arg, records_arg, str_arg};
use super::guard::{status, FfiError};
use super::store::STORES;
use super::types::{mqs_record_in, mqs_slice, mqs_status, mqs_store};
use crate::{Error, Record, Store};

/// Appends one record to `shard`; `*out_offset` is its offset. The record's
/// memory is only borrowed during the call. Fails with
/// `MQS_RECORD_TOO_LARGE` above the store's `max_record_bytes`, and with
/// `MQS_INVALID_ARGUMENT` for a header key or tag that is not UTF-8 (the
/// message names the field).
///
/// # Safety
/// `shard` is a NUL-terminated string; `record` points to a valid
/// `mqs_record_in` whose slices and arrays are valid for their lengths;
/// `out_offset` is valid for writing.
#[no_mangle]
pub unsafe extern "C" fn mqs_append(
    store: *mut mqs_store,
    shard: *const c_char,
    record: *const mqs_record_in,
    out_offset: *mut i64,
) -> mqs_status {
    status(|| {
        let store = STORES.get(store, "store")?;
        // SAFETY: NUL-terminated string (caller contract).
        let shard = unsafe { str_arg(shard, "shard") }?;
        if record.is_null() {
            return Err(FfiError::null("record"));
        }
        // SAFETY: `record` is non-NULL and points to one valid record.
        let input = unsafe { array_arg(record, 1, "record") }?;
        // SAFETY: the record's slices and arrays are valid (caller contract).
        let records = unsafe { records_arg(input, "record") }?;
        out_arg(out_offset, "out_offset")?;
        let offset = store.append(shard, &records[0])?;
        // SAFETY: checked non-NULL; writable per the caller contract.
        unsafe { out_offset.write(offset) };
        Ok(())
    })
}

/// Appends `count` records (at least 1) to `shard` as one batch, atomically:
/// all or none. `*out_base_offset` is the offset of the first; the others
/// follow densely.
///
/// # Safety
/// `shard` is a NUL-terminated string; `records` points to `count` valid
/// `mqs_record_in`s whose slices and arrays are valid for their lengths;
/// `out_base_offset` is valid for writing.
#[no_mangle]
pub unsafe extern "C" fn mqs_append_batch(
    store: *mut mqs_store,
    shard: *const c_char,
    records: *const mqs_record_in,
    count: usize,
    out_base_offset: *mut i64,
) -> mqs_status {
    // SAFETY: forwarded caller contract.
    unsafe {
        append_batch_with(
            store,
            shard,
            records,
            count,
            out_base_offset,
            Store::append_batch,
        )
    }
}

/// Appends `count` records (at least 1) to `shard` as one batch, atomically,
/// like `mqs_append_batch` (the same argument checks and the same errors),
/// but returns as soon as the batch has its offsets, without waiting for the
/// shard's durability mode. `*out_base_offset` is the offset of the first
/// record; the others follow densely.
///
/// Readers see the batch immediately (`mqs_read`, transfers, ...), but it is
/// NOT acknowledged yet: on the journal engine a background flusher thread
/// writes it (durability `os`) and fdatasyncs it (`fsync`) while the caller
/// goes on, and a crash before that may lose it. The batch is acknowledged
/// only when `mqs_wait_durable` returns `MQS_OK` for an offset at or after
/// it: any of its own offsets (the base offset will do; a batch becomes
/// durable as a whole) or a later one of the same shard. This lets one
/// producer keep several batches in flight, like Kafka's
/// `max.in.flight.requests.per.connection`: a producer typically keeps a
/// window of N batches, and when the window is full calls `mqs_wait_durable`
/// on the oldest batch's base offset before appending the next one; one
/// wait acknowledges every earlier batch of the shard too. On the memory
/// and file engines the call returns once the batch is already
/// acknowledged, as `mqs_append_batch` does.
///
/// # Safety
/// `shard` is a NUL-terminated string; `records` points to `count` valid
/// `mqs_record_in`s whose slices and arrays are valid for their lengths;
/// `out_base_offset` is valid for writing.
#[no_mangle]
pub unsafe extern "C" fn mqs_append_batch_nowait(
    store: *mut mqs_store,
    shard: *const c_char,
    records: *const mqs_record_in,
    count: usize,
    out_base_offset: *mut i64,
) -> mqs_status {
    // SAFETY: forwarded caller contract.
    unsafe {
        append_batch_with(
            store,
            shard,
            records,
            count,
            out_base_offset,
            Store::append_batch_nowait,
        )
    }
}

/// Appends RecordBatch v2 bytes as a Kafka producer sent them (`len` bytes:
/// one or more batches back to back, e.g. a partition's records of a
/// ProduceRequest) to `shard`, stored byte for byte but for the base
/// offset, at consecutive offsets: `*out_base_offset` is the first batch's
/// base offset, and each later batch starts where the previous one's
/// records end (base offset + record count). `*out_batch_count` (may be
/// NULL) is the number of batches. Acknowledged per the shard's durability
/// mode, once for all the batches.
///
/// Every batch is checked first, as Kafka's log validator checks client
/// batches, and nothing is stored when one is refused: `MQS_CORRUPTION`
/// (truncated, CRC-32C mismatch, records that do not parse, unknown codec),
/// `MQS_INVALID_ARGUMENT` (empty input, magic other than 2, a control
/// batch, no records, lastOffsetDelta + 1 not the record count, a producer
/// id without a sequence, transactional without a producer id),
/// `MQS_RECORD_TOO_LARGE` (a batch over `max_batch_bytes` or a record over
/// `max_record_bytes`), `MQS_UNSUPPORTED` (a codec not in the build); the
/// message names the batch's index and byte range.
///
/// Batches with a producer id (idempotent producers) are checked against
/// the producer's state on the shard, as a Kafka broker does:
/// `MQS_PRODUCER_FENCED` for an epoch older than the producer's current
/// one, `MQS_OUT_OF_ORDER_SEQUENCE` for a sequence that does not follow
/// its last one (or a new epoch not starting at 0), and
/// `MQS_DUPLICATE_SEQUENCE` for a retry of batches among the producer's
/// last five: nothing is stored again, and `*out_base_offset` and
/// `*out_batch_count` are those of the original.
///
/// # Safety
/// `shard` is a NUL-terminated string; `data` points to `len` readable
/// bytes (or is NULL with `len` 0); `out_base_offset` is valid for writing,
/// and `out_batch_count` too unless NULL.
#[no_mangle]
pub unsafe extern "C" fn mqs_append_raw(
    store: *mut mqs_store,
    shard: *const c_char,
    data: *const u8,
    len: usize,
    out_base_offset: *mut i64,
    out_batch_count: *mut usize,
) -> mqs_status {
    // SAFETY: forwarded caller contract.
    unsafe {
        append_raw_with(
            store,
            shard,
            (data, len),
            (out_base_offset, out_batch_count),
            Store::append_raw,
        )
    }
}

/// `mqs_append_raw` that returns once the batches have their offsets,
/// without waiting for the shard's durability mode, as
/// `mqs_append_batch_nowait` does; `mqs_wait_durable` on the last batch's
/// last offset (or any later one) acknowledges them.
///
/// # Safety
/// As for `mqs_append_raw`.
#[no_mangle]
pub unsafe extern "C" fn mqs_append_raw_nowait(
    store: *mut mqs_store,
    shard: *const c_char,
    data: *const u8,
    len: usize,
    out_base_offset: *mut i64,
    out_batch_count: *mut usize,
) -> mqs_status {
    // SAFETY: forwarded caller contract.
    unsafe {
        append_raw_with(
            store,
            shard,
            (data, len),
            (out_base_offset, out_batch_count),
            Store::append_raw_nowait,
        )
    }
}

/// Appends a leader's batches to a follower's shard (`len` bytes, what a
/// transfer of the leader's shard sent), byte for byte at the offsets they
/// carry, which must continue the shard (a gap a compacted leader left
/// between batches is filled with an empty batch): `MQS_INVALID_ARGUMENT`
/// names the expected offset otherwise, and nothing is stored. Checked for damage
/// (`MQS_CORRUPTION`) but not by producer rules: control batches and
/// idempotent producers' batches are copied as they are, and the
/// producers' state follows. `*out_next_offset` is the shard's next offset
/// once the batches are as durable as its mode requires. The follower's
/// shard must have no other writer.
///
/// # Safety
/// `shard` is a NUL-terminated string; `data` points to `len` readable
/// bytes (or is NULL with `len` 0); `out_next_offset` is valid for writing.
#[no_mangle]
pub unsafe extern "C" fn mqs_append_replica(
    store: *mut mqs_store,
    shard: *const c_char,
    data: *const u8,
    len: usize,
    out_next_offset: *mut i64,
) -> mqs_status {
    status(|| {
        let store = STORES.get(store, "store")?;
        // SAFETY: NUL-terminated string (caller contract).
        let shard = unsafe { str_arg(shard, "shard") }?;
        // SAFETY: `data` holds `len` bytes (caller contract).
        let bytes = unsafe { array_arg(data, len, "data") }?;
        out_arg(out_next_offset, "out_next_offset")?;
        let next = store.append_replica(shard, bytes)?;
        // SAFETY: checked non-NULL; writable per the caller contract.
        unsafe { out_next_offset.write(next) };
        Ok(())
    })
}

/// Cuts a follower's diverged tail: every batch at or after `offset`
/// goes and the next append gets `offset`. `offset` must lie within the
/// shard's watermarks (`MQS_OFFSET_OUT_OF_RANGE`) and at a batch boundary
/// (`MQS_INVALID_ARGUMENT` names the batch it falls in). The producers'
/// state is rebuilt from the batches that remain. Returns once the cut is
/// as durable as the shard's mode makes appends.
///
/// # Safety
/// `shard` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn mqs_truncate_to(
    store: *mut mqs_store,
    shard: *const c_char,
    offset: i64,
) -> mqs_status {
    status(|| {
        let store = STORES.get(store, "store")?;
        // SAFETY: NUL-terminated string (caller contract).
        let shard = unsafe { str_arg(shard, "shard") }?;
        Ok(store.truncate_to(shard, offset)?)
    })
}

/// Sets the partition leader epoch that appends to `shard` write into
/// each batch from now on (`append_replica` keeps the leader's). Epochs
/// never go back (`MQS_INVALID_ARGUMENT`). Kept in memory only: set it
/// after every open, when the broker becomes the shard's leader; until
/// then batches carry -1.
///
/// # Safety
/// `shard` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn mqs_set_leader_epoch(
    store: *mut mqs_store,
    shard: *const c_char,
    epoch: i32,
) -> mqs_status {
    status(|| {
        let store = STORES.get(store, "store")?;
        // SAFETY: NUL-terminated string (caller contract).
        let shard = unsafe { str_arg(shard, "shard") }?;
        Ok(store.set_leader_epoch(shard, epoch)?)
    })
}

type RawAppend = fn(&Store, &str, &[u8]) -> crate::Result<Vec<i64>>;

/// The body of `mqs_append_raw` and `mqs_append_raw_nowait`.
///
/// # Safety
/// As for `mqs_append_raw`.
unsafe fn append_raw_with(
    store: *mut mqs_store,
    shard: *const c_char,
    (data, len): (*const u8, usize),
    (out_base_offset, out_batch_count): (*mut i64, *mut usize),
    append: RawAppend,
) -> mqs_status {
    status(|| {
        let store = STORES.get(store, "store")?;
        // SAFETY: NUL-terminated string (caller contract).
        let shard = unsafe { str_arg(shard, "shard") }?;
        // SAFETY: `data` holds `len` bytes (caller contract).
        let bytes = unsafe { array_arg(data, len, "data") }?;
        out_arg(out_base_offset, "out_base_offset")?;
        let bases = match append(&store, shard, bytes) {
            Ok(bases) => bases,
            // A producer's retry: the original offsets go out with the status.
            Err(Error::DuplicateSequence {
                base_offsets,
                shard,
            }) => {
                // SAFETY: checked non-NULL; writable per the caller contract.
                unsafe { out_base_offset.write(base_offsets[0]) };
                if !out_batch_count.is_null() {
                    // SAFETY: non-NULL, writable per the caller contract.
                    unsafe { out_batch_count.write(base_offsets.len()) };
                }
                return Err(Error::DuplicateSequence {
                    shard,
                    base_offsets,
                }
                .into());
            }
            Err(e) => return Err(e.into()),
        };
        // SAFETY: checked non-NULL; writable per the caller contract.
        unsafe { out_base_offset.write(bases[0]) };
        if !out_batch_count.is_null() {
            // SAFETY: non-NULL, writable per the caller contract.
            unsafe { out_batch_count.write(bases.len()) };
        }
        Ok(())
    })
}

/// The body of `mqs_append_batch` and `mqs_append_batch_nowait`: the same
/// checks and conversions, then `append`.
///
/// # Safety
/// As for `mqs_append_batch`.
unsafe fn append_batch_with(
    store: *mut mqs_store,
    shard: *const c_char,
    records: *const mqs_record_in,
    count: usize,
    out_base_offset: *mut i64,
    append: fn(&Store, &str, &[Record<'_>]) -> crate::Result<i64>,
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
        let offset = append(&store, shard, &records)?;
        // SAFETY: checked non-NULL; writable per the caller contract.
        unsafe { out_base_offset.write(offset) };
        Ok(())
    })
}

/// Blocks until the record at `offset` of `shard`, and every earlier record
/// of the shard, is as durable as the shard's durability mode promises
/// (`none`: buffered; `os`: handed to the kernel; `fsync`: fdatasynced).
/// Returning `MQS_OK` is the acknowledgement of every batch appended with
/// `mqs_append_batch_nowait` up to and including the one holding `offset`.
/// Records deleted meanwhile (e.g. by `mqs_delete_records_before`) count as
/// durable. Returns at once for records appended with `mqs_append` or
/// `mqs_append_batch` (already acknowledged) and on the memory and file
/// engines.
///
/// Fails with `MQS_OFFSET_OUT_OF_RANGE` when `offset` is negative or not yet
/// appended (at or past the shard's next offset), `MQS_SHARD_NOT_FOUND`,
/// `MQS_INVALID_HANDLE` for a closed store handle (`MQS_CLOSED` when a close
/// races with the call), and `MQS_POISONED` after a failed fsync (the batch
/// is then not acknowledged).
///
/// # Safety
/// `shard` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn mqs_wait_durable(
    store: *mut mqs_store,
    shard: *const c_char,
    offset: i64,
) -> mqs_status {
    status(|| {
        let store = STORES.get(store, "store")?;
        // SAFETY: NUL-terminated string (caller contract).
        let shard = unsafe { str_arg(shard, "shard") }?;
        store.wait_durable(shard, offset)?;
        Ok(())
    })
}

/// Deletes every record before `offset` (moves the low watermark up to it,
/// clamped to the high watermark); `*out_low_watermark` is the new low
/// watermark.
///
/// # Safety
/// `shard` is a NUL-terminated string; `out_low_watermark` is valid for
/// writing.
#[no_mangle]
pub unsafe extern "C" fn mqs_delete_records_before(
    store: *mut mqs_store,
    shard: *const c_char,
    offset: i64,
    out_low_watermark: *mut i64,
) -> mqs_status {
    status(|| {
        let store = STORES.get(store, "store")?;
        // SAFETY: NUL-terminated string (caller contract).
        let shard = unsafe { str_arg(shard, "shard") }?;
        out_arg(out_low_watermark, "out_low_watermark")?;
        let low = store.delete_records_before(shard, offset)?;
        // SAFETY: checked non-NULL; writable per the caller contract.
        unsafe { out_low_watermark.write(low) };
        Ok(())
    })
}

/// Runs a compacted shard's cleaner now, without its I/O budget: of the
/// records older than `min_compaction_lag_ms` and before the newest batch,
/// only the newest of each key stays, and tombstones older than
/// `delete_retention_ms` go. `*out_removed` is how many records went. A
/// shard whose `cleanup_policy` does not compact: `MQS_INVALID_ARGUMENT`.
///
/// # Safety
/// `shard` is a NUL-terminated string; `out_removed` is valid for writing.
#[no_mangle]
pub unsafe extern "C" fn mqs_compact(
    store: *mut mqs_store,
    shard: *const c_char,
    out_removed: *mut u64,
) -> mqs_status {
    status(|| {
        let store = STORES.get(store, "store")?;
        // SAFETY: NUL-terminated string (caller contract).
        let shard = unsafe { str_arg(shard, "shard") }?;
        out_arg(out_removed, "out_removed")?;
        let report = store.compact(shard)?;
        // SAFETY: checked non-NULL; writable per the caller contract.
        unsafe { out_removed.write(report.removed) };
        Ok(())
    })
}

/// Deletes every record whose key equals one of the `key_count` keys (each
/// present: `data` non-NULL); `*out_deleted` is how many were deleted.
///
/// # Safety
/// `shard` is a NUL-terminated string; `keys` points to `key_count` slices
/// valid for their lengths; `out_deleted` is valid for writing.
#[no_mangle]
pub unsafe extern "C" fn mqs_delete_by_keys(
    store: *mut mqs_store,
    shard: *const c_char,
    keys: *const mqs_slice,
    key_count: usize,
    out_deleted: *mut u64,
) -> mqs_status {
    status(|| {
        let store = STORES.get(store, "store")?;
        // SAFETY: NUL-terminated string (caller contract).
        let shard = unsafe { str_arg(shard, "shard") }?;
        // SAFETY: `keys` holds `key_count` slices (caller contract).
        let keys = unsafe { array_arg(keys, key_count, "keys") }?;
        // SAFETY: every slice is valid for its length (caller contract).
        let keys = unsafe { keys_arg(keys, "keys") }?;
        out_arg(out_deleted, "out_deleted")?;
        let deleted = store.delete_by_keys(shard, &keys)?;
        // SAFETY: checked non-NULL; writable per the caller contract.
        unsafe { out_deleted.write(deleted) };
        Ok(())
    })
}

/// Deletes the records at the `offset_count` given offsets (absent ones are
/// ignored); `*out_deleted` is how many were deleted.
///
/// # Safety
/// `shard` is a NUL-terminated string; `offsets` points to `offset_count`
/// offsets; `out_deleted` is valid for writing.
#[no_mangle]
pub unsafe extern "C" fn mqs_delete_by_offsets(
    store: *mut mqs_store,
    shard: *const c_char,
    offsets: *const i64,
    offset_count: usize,
    out_deleted: *mut u64,
) -> mqs_status {
    status(|| {
        let store = STORES.get(store, "store")?;
        // SAFETY: NUL-terminated string (caller contract).
        let shard = unsafe { str_arg(shard, "shard") }?;
        // SAFETY: `offsets` holds `offset_count` offsets (caller contract).
        let offsets = unsafe { array_arg(offsets, offset_count, "offsets") }?;
        out_arg(out_deleted, "out_deleted")?;
        let deleted = store.delete_by_offsets(shard, offsets)?;
        // SAFETY: checked non-NULL; writable per the caller contract.
        unsafe { out_deleted.write(deleted) };
        Ok(())
    })
}
