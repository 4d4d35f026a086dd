//! Registries of live handles. Every handle given to C is recorded by address
//! when created and forgotten when closed or freed, so a closed, freed or
//! foreign pointer is rejected with `MQS_INVALID_HANDLE` instead of being
//! dereferenced (double close, double free, use after free).
//!
//! The registries are ordered maps/sets rather than hash tables: they are
//! const-constructible, and their nodes are referenced by their start address,
//! whereas a hash table points into the middle of its allocation, which
//! valgrind reports as "possibly lost" when a C program exits.
//!
//! Limit: an address can be reused by a later allocation of the same handle
//! type; a stale pointer that happens to equal a new live handle of the same
//! type is indistinguishable from it.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{c_char, CString};
use std::marker::PhantomData;
use std::sync::Arc;

use parking_lot::{const_rwlock, RwLock};

use super::guard::FfiError;
use super::types::mqs_store;
use crate::Store;

type AddressSet = RwLock<BTreeSet<usize>>;

/// Live boxed handles of type `T` (batches, transfers, name lists). The
/// handle is the `Box<T>`'s address; the registry owns nothing but the set.
pub(crate) struct Registry<T> {
    /// The C type name, for error messages.
    kind: &'static str,
    live: AddressSet,
    _owns: PhantomData<fn() -> T>,
}

impl<T> Registry<T> {
    pub(crate) const fn new(kind: &'static str) -> Self {
        Registry {
            kind,
            live: const_rwlock(BTreeSet::new()),
            _owns: PhantomData,
        }
    }

    /// Moves `value` to the heap, records it as live and returns the handle.
    pub(crate) fn register(&self, value: T) -> *mut T {
        let ptr = Box::into_raw(Box::new(value));
        self.live.write().insert(ptr as usize);
        ptr
    }

    fn check(&self, ptr: *const T, param: &str) -> Result<(), FfiError> {
        if ptr.is_null() {
            return Err(FfiError::null(param));
        }
        if !self.live.read().contains(&(ptr as usize)) {
            return Err(FfiError::invalid_handle(param, self.kind));
        }
        Ok(())
    }

    /// Whether `ptr` is a live handle (false for NULL).
    pub(crate) fn is_live(&self, ptr: *const T) -> bool {
        !ptr.is_null() && self.live.read().contains(&(ptr as usize))
    }

    /// Borrows a live handle.
    ///
    /// # Safety
    /// No other thread may free or mutably use the handle during `'a`
    /// (handles other than the store are used from one thread at a time).
    pub(crate) unsafe fn get<'a>(&self, ptr: *const T, param: &str) -> Result<&'a T, FfiError> {
        self.check(ptr, param)?;
        // SAFETY: `ptr` is live, so it came from Box::into_raw in `register`
        // and has not been freed; the caller guarantees exclusive use.
        Ok(unsafe { &*ptr })
    }

    /// Borrows a live handle mutably.
    ///
    /// # Safety
    /// As for `get`, and no other borrow of the handle may exist during `'a`.
    pub(crate) unsafe fn get_mut<'a>(
        &self,
        ptr: *mut T,
        param: &str,
    ) -> Result<&'a mut T, FfiError> {
        self.check(ptr, param)?;
        // SAFETY: as in `get`; the caller guarantees no other borrow.
        Ok(unsafe { &mut *ptr })
    }

    /// Frees a live handle. NULL is a no-op; a pointer that is not live is
    /// `MQS_INVALID_HANDLE` and left alone.
    pub(crate) fn free(&self, ptr: *mut T, param: &str) -> Result<(), FfiError> {
        if ptr.is_null() {
            return Ok(());
        }
        if !self.live.write().remove(&(ptr as usize)) {
            return Err(FfiError::invalid_handle(param, self.kind));
        }
        // SAFETY: the address was live, so it came from Box::into_raw in
        // `register` and was not freed; removing it under the write lock
        // makes this thread the only one to free it.
        drop(unsafe { Box::from_raw(ptr) });
        Ok(())
    }
}

/// Live strings handed out by `mqs_stats` (freed by `mqs_string_free`).
pub(crate) struct StringRegistry {
    live: AddressSet,
}

impl StringRegistry {
    pub(crate) const fn new() -> Self {
        StringRegistry {
            live: const_rwlock(BTreeSet::new()),
        }
    }

    pub(crate) fn register(&self, string: CString) -> *mut c_char {
        let ptr = string.into_raw();
        self.live.write().insert(ptr as usize);
        ptr
    }

    pub(crate) fn free(&self, ptr: *mut c_char, param: &str) -> Result<(), FfiError> {
        if ptr.is_null() {
            return Ok(());
        }
        if !self.live.write().remove(&(ptr as usize)) {
            return Err(FfiError::invalid_handle(
                param,
                "string returned by mqstore",
            ));
        }
        // SAFETY: the address was live, so it came from CString::into_raw in
        // `register` and was not freed; removing it under the write lock
        // makes this thread the only one to free it.
        drop(unsafe { CString::from_raw(ptr) });
        Ok(())
    }
}

/// Live store handles. The handle is the address of a small boxed token; the
/// registry maps it to the `Arc<Store>`, cloned under the read lock, so a
/// close racing with calls on other threads never frees a store in use: those
/// calls finish on their clone (seeing `MQS_CLOSED` at worst).
pub(crate) struct StoreRegistry {
    live: RwLock<BTreeMap<usize, Arc<Store>>>,
}

impl StoreRegistry {
    pub(crate) const fn new() -> Self {
        StoreRegistry {
            live: const_rwlock(BTreeMap::new()),
        }
    }

    /// Registers `store` under the address of a new token and returns it.
    pub(crate) fn register(&self, store: Store) -> *mut mqs_store {
        let ptr = Box::into_raw(Box::new(mqs_store::new()));
        self.live.write().insert(ptr as usize, Arc::new(store));
        ptr
    }

    /// The store behind a live handle.
    pub(crate) fn get(&self, ptr: *const mqs_store, param: &str) -> Result<Arc<Store>, FfiError> {
        if ptr.is_null() {
            return Err(FfiError::null(param));
        }
        self.live
            .read()
            .get(&(ptr as usize))
            .cloned()
            .ok_or_else(|| FfiError::invalid_handle(param, "mqs_store"))
    }

    /// Unregisters a live handle and frees its token; returns the store.
    pub(crate) fn remove(&self, ptr: *mut mqs_store, param: &str) -> Result<Arc<Store>, FfiError> {
        if ptr.is_null() {
            return Err(FfiError::null(param));
        }
        let store = self
            .live
            .write()
            .remove(&(ptr as usize))
            .ok_or_else(|| FfiError::invalid_handle(param, "mqs_store"))?;
        // SAFETY: the address was live, so it came from Box::into_raw in
        // `register` and was not freed; removing it under the write
        // lock makes this thread the only one to free it.
        drop(unsafe { Box::from_raw(ptr) });
        Ok(store)
    }
}
