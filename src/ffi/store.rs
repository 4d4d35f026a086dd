//! Store lifecycle, shards, name lists, consumer-group offsets and stats.

use std::ffi::{c_char, CStr, CString};

use super::convert::{array_arg, clear_out_handle, opt_str_arg, out_arg, str_arg};
use super::guard::{guard, status, FfiError};
use super::registry::{Registry, StoreRegistry, StringRegistry};
use super::types::{mqs_shard_info, mqs_status, mqs_store};
use crate::{EngineKind, Error, Store};

pub(crate) static STORES: StoreRegistry = StoreRegistry::new();
static NAMES: Registry<mqs_names> = Registry::new("mqs_names");
static STRINGS: StringRegistry = StringRegistry::new();

/// A list of strings (`mqs_shard_list`), owned by the handle: each string is
/// valid until `mqs_names_free`. Use from one thread at a time.
pub struct mqs_names {
    names: Vec<CString>,
}

fn engine_name(kind: EngineKind) -> &'static CStr {
    crate::engine::registry::spec(kind).c_name
}

/// Opens (creating if needed) the store in directory `dir`, configured by
/// `config_toml` (the `storage.toml` schema as text; NULL = defaults), and
/// sets `*out_store` to its handle. Only one open store may use a directory at
/// a time, across processes: a second open fails with `MQS_LOCKED`. A bad
/// configuration fails with `MQS_INVALID_CONFIG` and a message naming the key;
/// an engine not in this build fails with `MQS_UNSUPPORTED`.
///
/// On failure `*out_store` is set to NULL. Close the handle with
/// `mqs_store_close`.
///
/// # Safety
/// `dir` and `config_toml` (if not NULL) are NUL-terminated strings;
/// `out_store` is valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn mqs_store_open(
    dir: *const c_char,
    config_toml: *const c_char,
    out_store: *mut *mut mqs_store,
) -> mqs_status {
    status(|| {
        // SAFETY: `out_store` is NULL or writable (caller contract).
        unsafe { clear_out_handle(out_store) };
        out_arg(out_store, "out_store")?;
        // SAFETY: NUL-terminated strings (caller contract).
        let dir = unsafe { str_arg(dir, "dir") }?;
        // SAFETY: as above.
        let config = unsafe { opt_str_arg(config_toml, "config_toml") }?;
        let store = Store::open_with_toml(dir, config)?;
        let handle = STORES.register(store);
        // SAFETY: checked non-NULL above; writable per the caller contract.
        unsafe { out_store.write(handle) };
        Ok(())
    })
}

/// Closes the store and frees the handle: engines flush and release their
/// files and the directory lock is released. Batches, transfers and name
/// lists obtained earlier stay valid until freed. Calls racing on other
/// threads finish safely (they see `MQS_CLOSED` or `MQS_INVALID_HANDLE`).
///
/// The handle is freed even when closing reports an error. NULL is
/// `MQS_INVALID_ARGUMENT`; a handle already closed is `MQS_INVALID_HANDLE`.
#[no_mangle]
pub extern "C" fn mqs_store_close(store: *mut mqs_store) -> mqs_status {
    status(|| {
        let store = STORES.remove(store, "store")?;
        store.close()?;
        Ok(())
    })
}

/// Creates shard `name` with the store's default shard options overlaid by
/// `options_toml` (keys of the config's `[shard]` section, without the
/// header; NULL = defaults). Fails with `MQS_SHARD_EXISTS` if it exists, and
/// `MQS_INVALID_CONFIG` for bad options (e.g. durability "fsync" on the
/// memory engine).
///
/// # Safety
/// `name` and `options_toml` (if not NULL) are NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn mqs_shard_create(
    store: *mut mqs_store,
    name: *const c_char,
    options_toml: *const c_char,
) -> mqs_status {
    status(|| {
        let store = STORES.get(store, "store")?;
        // SAFETY: NUL-terminated strings (caller contract).
        let name = unsafe { str_arg(name, "name") }?;
        // SAFETY: as above.
        let options = unsafe { opt_str_arg(options_toml, "options_toml") }?;
        store.create_shard(name, options)?;
        Ok(())
    })
}

/// Creates the `count` shards `names` (distinct, none existing), all with
/// the store's default options overlaid by `options_toml` (NULL =
/// defaults), all or none: `MQS_SHARD_EXISTS` names one that exists,
/// `MQS_INVALID_ARGUMENT` a bad or repeated name, and nothing is created.
/// The journal makes them durable with one write (and one sync): a
/// million shards take seconds.
///
/// # Safety
/// `names` points to `count` NUL-terminated strings (may be NULL when
/// `count` is 0); `options_toml` (if not NULL) is NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn mqs_shards_create(
    store: *mut mqs_store,
    names: *const *const c_char,
    count: usize,
    options_toml: *const c_char,
) -> mqs_status {
    status(|| {
        let store = STORES.get(store, "store")?;
        // SAFETY: `count` pointers (caller contract).
        let pointers = unsafe { array_arg(names, count, "names") }?;
        let names = pointers
            .iter()
            .enumerate()
            // SAFETY: each a NUL-terminated string (caller contract).
            .map(|(i, &name)| unsafe { str_arg(name, &format!("names[{i}]")) })
            .collect::<Result<Vec<&str>, _>>()?;
        // SAFETY: as above.
        let options = unsafe { opt_str_arg(options_toml, "options_toml") }?;
        store.create_shards(&names, options)?;
        Ok(())
    })
}

/// Deletes shard `name`, its records and its committed group offsets.
/// Batches and transfers already obtained from it stay valid.
///
/// # Safety
/// `name` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn mqs_shard_delete(
    store: *mut mqs_store,
    name: *const c_char,
) -> mqs_status {
    status(|| {
        let store = STORES.get(store, "store")?;
        // SAFETY: NUL-terminated string (caller contract).
        let name = unsafe { str_arg(name, "name") }?;
        store.delete_shard(name)?;
        Ok(())
    })
}

/// Fills `*out_info` with a snapshot of shard `name`.
///
/// # Safety
/// `name` is a NUL-terminated string; `out_info` is valid for writing.
#[no_mangle]
pub unsafe extern "C" fn mqs_shard_get_info(
    store: *mut mqs_store,
    name: *const c_char,
    out_info: *mut mqs_shard_info,
) -> mqs_status {
    status(|| {
        let store = STORES.get(store, "store")?;
        // SAFETY: NUL-terminated string (caller contract).
        let name = unsafe { str_arg(name, "name") }?;
        out_arg(out_info, "out_info")?;
        let info = store.shard_info(name)?;
        let info = mqs_shard_info {
            first_offset: info.first_offset,
            next_offset: info.next_offset,
            records: info.records,
            bytes: info.bytes,
            engine: engine_name(info.engine).as_ptr(),
        };
        // SAFETY: checked non-NULL; writable per the caller contract.
        unsafe { out_info.write(info) };
        Ok(())
    })
}

/// Sets `*out_names` to a new list of the names of all shards, sorted. Free
/// it with `mqs_names_free`. On failure `*out_names` is set to NULL.
///
/// # Safety
/// `out_names` is valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn mqs_shard_list(
    store: *mut mqs_store,
    out_names: *mut *mut mqs_names,
) -> mqs_status {
    status(|| {
        // SAFETY: `out_names` is NULL or writable (caller contract).
        unsafe { clear_out_handle(out_names) };
        let store = STORES.get(store, "store")?;
        out_arg(out_names, "out_names")?;
        let names = store
            .list_shards()?
            .into_iter()
            .map(|name| {
                CString::new(name).map_err(|e| {
                    FfiError::from(Error::Internal(format!("shard name contains NUL: {e}")))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let handle = NAMES.register(mqs_names { names });
        // SAFETY: checked non-NULL; writable per the caller contract.
        unsafe { out_names.write(handle) };
        Ok(())
    })
}

/// Sets `*out_names` to a new list of the engines compiled into this build
/// (e.g. "memory", "journal", "file"), in the registry's order; the
/// configuration names them the same way. Free it with `mqs_names_free`.
/// On failure `*out_names` is set to NULL.
///
/// # Safety
/// `out_names` is valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn mqs_engines(out_names: *mut *mut mqs_names) -> mqs_status {
    status(|| {
        // SAFETY: `out_names` is NULL or writable (caller contract).
        unsafe { clear_out_handle(out_names) };
        out_arg(out_names, "out_names")?;
        let names = crate::engine::registry::available()
            .map(|spec| spec.c_name.to_owned())
            .collect();
        let handle = NAMES.register(mqs_names { names });
        // SAFETY: checked non-NULL; writable per the caller contract.
        unsafe { out_names.write(handle) };
        Ok(())
    })
}

/// The number of strings in `names`; 0 for NULL or a freed handle.
///
/// # Safety
/// `names` is not freed by another thread during the call.
#[no_mangle]
pub unsafe extern "C" fn mqs_names_count(names: *const mqs_names) -> usize {
    guard(
        |_| 0,
        || {
            if !NAMES.is_live(names) {
                return Ok(0);
            }
            // SAFETY: live, and not freed concurrently (caller contract).
            let names = unsafe { NAMES.get(names, "names") }?;
            Ok(names.names.len())
        },
    )
}

/// String `index` of `names`, valid until `mqs_names_free`; NULL when
/// `index` is out of range or `names` is NULL or freed.
///
/// # Safety
/// `names` is not freed by another thread during the call.
#[no_mangle]
pub unsafe extern "C" fn mqs_names_get(names: *const mqs_names, index: usize) -> *const c_char {
    guard(
        |_| std::ptr::null(),
        || {
            if !NAMES.is_live(names) {
                return Ok(std::ptr::null());
            }
            // SAFETY: live, and not freed concurrently (caller contract).
            let names = unsafe { NAMES.get(names, "names") }?;
            Ok(names
                .names
                .get(index)
                .map_or(std::ptr::null(), |name| name.as_ptr()))
        },
    )
}

/// Frees a name list and its strings. NULL is a no-op (`MQS_OK`); a list
/// already freed is `MQS_INVALID_HANDLE`.
#[no_mangle]
pub extern "C" fn mqs_names_free(names: *mut mqs_names) -> mqs_status {
    status(|| NAMES.free(names, "names"))
}

/// Records that consumer group `group` has consumed shard `shard` up to (not
/// including) `offset`.
///
/// # Safety
/// `group` and `shard` are NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn mqs_group_commit(
    store: *mut mqs_store,
    group: *const c_char,
    shard: *const c_char,
    offset: i64,
) -> mqs_status {
    status(|| {
        let store = STORES.get(store, "store")?;
        // SAFETY: NUL-terminated strings (caller contract).
        let group = unsafe { str_arg(group, "group") }?;
        // SAFETY: as above.
        let shard = unsafe { str_arg(shard, "shard") }?;
        store.commit_offset(group, shard, offset)?;
        Ok(())
    })
}

/// The offset `group` committed for `shard`: `*out_found` tells whether there
/// is one; when there is none `*out_offset` is set to -1.
///
/// # Safety
/// `group` and `shard` are NUL-terminated strings; the out pointers are
/// valid for writing.
#[no_mangle]
pub unsafe extern "C" fn mqs_group_get(
    store: *mut mqs_store,
    group: *const c_char,
    shard: *const c_char,
    out_offset: *mut i64,
    out_found: *mut bool,
) -> mqs_status {
    status(|| {
        let store = STORES.get(store, "store")?;
        // SAFETY: NUL-terminated strings (caller contract).
        let group = unsafe { str_arg(group, "group") }?;
        // SAFETY: as above.
        let shard = unsafe { str_arg(shard, "shard") }?;
        out_arg(out_offset, "out_offset")?;
        out_arg(out_found, "out_found")?;
        let offset = store.committed_offset(group, shard)?;
        // SAFETY: both checked non-NULL; writable per the caller contract.
        unsafe {
            out_offset.write(offset.unwrap_or(-1));
            out_found.write(offset.is_some());
        }
        Ok(())
    })
}

/// Forgets every committed offset of `group`; `*out_removed` is how many
/// there were.
///
/// # Safety
/// `group` is a NUL-terminated string; `out_removed` is valid for writing.
#[no_mangle]
pub unsafe extern "C" fn mqs_group_delete(
    store: *mut mqs_store,
    group: *const c_char,
    out_removed: *mut u64,
) -> mqs_status {
    status(|| {
        let store = STORES.get(store, "store")?;
        // SAFETY: NUL-terminated string (caller contract).
        let group = unsafe { str_arg(group, "group") }?;
        out_arg(out_removed, "out_removed")?;
        let removed = store.delete_group(group)?;
        // SAFETY: checked non-NULL; writable per the caller contract.
        unsafe { out_removed.write(removed) };
        Ok(())
    })
}

/// Statistics as a JSON object: of the whole store when `shard` is NULL,
/// else of that shard. `*out_json` is a new NUL-terminated string; free it
/// with `mqs_string_free`. On failure `*out_json` is set to NULL.
///
/// # Safety
/// `shard` is NULL or a NUL-terminated string; `out_json` is valid for
/// writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn mqs_stats(
    store: *mut mqs_store,
    shard: *const c_char,
    out_json: *mut *mut c_char,
) -> mqs_status {
    status(|| {
        // SAFETY: `out_json` is NULL or writable (caller contract).
        unsafe { clear_out_handle(out_json) };
        let store = STORES.get(store, "store")?;
        // SAFETY: NULL or a NUL-terminated string (caller contract).
        let shard = unsafe { opt_str_arg(shard, "shard") }?;
        out_arg(out_json, "out_json")?;
        let value = match shard {
            Some(name) => store.shard_stats(name)?,
            None => store.stats()?,
        };
        let json = CString::new(value.to_string()).map_err(|e| {
            FfiError::from(Error::Internal(format!("stats JSON contains NUL: {e}")))
        })?;
        let handle = STRINGS.register(json);
        // SAFETY: checked non-NULL; writable per the caller contract.
        unsafe { out_json.write(handle) };
        Ok(())
    })
}

/// Frees a string returned by `mqs_stats`. NULL is a no-op (`MQS_OK`); a
/// string already freed, or not from mqstore, is `MQS_INVALID_HANDLE`.
#[no_mangle]
pub extern "C" fn mqs_string_free(string: *mut c_char) -> mqs_status {
    status(|| STRINGS.free(string, "string"))
}
