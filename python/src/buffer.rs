//! Zero-copy bytes in both directions.
//!
//! Out: [`Buffer`] exports a `bytes::Bytes` through the buffer protocol, so
//! `memoryview(Buffer)` reads the stored batch memory itself. The memoryview
//! holds a reference to the `Buffer`, which holds the `Bytes`, which keeps the
//! batch buffer alive: views outlive `close()` and the store itself.
//!
//! In: [`Arena`] borrows the memory of `bytes` objects (and of any other
//! read-only bytes-like object, through `PyObject_GetBuffer`) for the
//! duration of one call, holding a reference to each owner so that another
//! thread mutating the caller's list while the GIL is released cannot free
//! it. A buffer another thread could write to while the GIL is released (a
//! bytearray, a writable memoryview, an array; also a read-only view of
//! one) is copied first, while the GIL is held: Rust reading memory that
//! Python code writes at the same time would be a data race.
//!
//! Into the caller's memory: [`WritableView`] exports a writable buffer
//! (`Transfer.read_into`), and [`stays_put_while_exported`] tells whether
//! it may be written with the GIL released.

use std::cell::RefCell;
use std::ffi::{c_int, c_void};
use std::mem::MaybeUninit;

use bytes::Bytes;
use pyo3::exceptions::{PyBufferError, PyTypeError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView, PyString, PyType};

/// Read-only buffer over stored bytes (the object behind `Record.value` and
/// friends; `memoryview.obj` returns it).
#[pyclass(module = "mqstore", name = "Buffer", frozen)]
pub struct Buffer {
    data: Bytes,
}

impl Buffer {
    /// `memoryview(Buffer(data))`: a zero-copy view of `data`.
    pub fn memoryview(py: Python<'_>, data: Bytes) -> PyResult<Bound<'_, PyMemoryView>> {
        let buffer = Bound::new(py, Buffer { data })?;
        PyMemoryView::from(buffer.as_any())
    }
}

#[pymethods]
impl Buffer {
    /// # Safety
    /// Called by CPython with a valid `view` to fill.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        if view.is_null() {
            return Err(PyBufferError::new_err("view is NULL"));
        }
        let data = &slf.get().data;
        // SAFETY: `view` is valid (checked non-NULL, provided by CPython);
        // the memory belongs to `data`, which lives as long as the exporter,
        // and PyBuffer_FillInfo stores a new reference to the exporter in
        // view->obj. readonly = 1, so a PyBUF_WRITABLE request fails.
        let rc = unsafe {
            ffi::PyBuffer_FillInfo(
                view,
                slf.as_ptr(),
                data.as_ptr() as *mut c_void,
                data.len() as ffi::Py_ssize_t,
                1,
                flags,
            )
        };
        if rc != 0 {
            return Err(PyErr::fetch(slf.py()));
        }
        Ok(())
    }

    /// # Safety
    /// Called by CPython; nothing to free (view->obj keeps `self` alive).
    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {}

    fn __len__(&self) -> usize {
        self.data.len()
    }

    fn __bytes__<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.data)
    }

    fn __repr__(&self) -> String {
        format!("<mqstore.Buffer of {} bytes>", self.data.len())
    }

    /// Address of the first byte (for tests proving reads are zero-copy).
    #[getter]
    fn _address(&self) -> usize {
        self.data.as_ptr() as usize
    }
}

/// One exported buffer, released on drop. It lives only while the GIL is
/// held: it is created and dropped by code holding the GIL, and as it holds
/// raw pointers it is not `Send`, so it cannot enter `py.detach`.
struct HeldView(Box<ffi::Py_buffer>);

impl HeldView {
    /// `obj`'s buffer, or `None` when it exports none (the pending Python
    /// error is cleared).
    fn get(obj: &Bound<'_, PyAny>) -> Option<HeldView> {
        let mut view = Box::new(ffi::Py_buffer::new());
        // SAFETY: `view` is a valid, writable Py_buffer; the GIL is held.
        let rc = unsafe { ffi::PyObject_GetBuffer(obj.as_ptr(), &mut *view, ffi::PyBUF_SIMPLE) };
        if rc != 0 {
            drop(PyErr::take(obj.py()));
            return None;
        }
        Some(HeldView(view))
    }

    /// The exported bytes, valid while `self` is.
    fn bytes(&self) -> &[u8] {
        if self.0.len == 0 {
            return &[];
        }
        // SAFETY: PyBUF_SIMPLE guarantees `len` contiguous bytes at `buf`,
        // kept alive (and not resized) until PyBuffer_Release in Drop.
        unsafe { std::slice::from_raw_parts(self.0.buf as *const u8, self.0.len as usize) }
    }
}

impl Drop for HeldView {
    fn drop(&mut self) {
        // SAFETY: filled by a successful PyObject_GetBuffer and released
        // exactly once, with the GIL held (see the type's comment).
        unsafe { ffi::PyBuffer_Release(&mut *self.0) };
    }
}

/// A writable, C-contiguous buffer exported by the caller's object,
/// released on drop (with the GIL held, like [`HeldView`]).
pub struct WritableView(HeldView);

impl WritableView {
    /// `obj`'s writable buffer; a `TypeError` naming the type when it has
    /// none (read-only, not contiguous, not a buffer at all).
    pub fn get(obj: &Bound<'_, PyAny>) -> PyResult<WritableView> {
        let mut view = Box::new(ffi::Py_buffer::new());
        // SAFETY: `view` is a valid, writable Py_buffer; the GIL is held.
        // PyBUF_WRITABLE without PyBUF_ND asks for one contiguous run of
        // bytes, which exporters refuse unless they can give it.
        let rc = unsafe { ffi::PyObject_GetBuffer(obj.as_ptr(), &mut *view, ffi::PyBUF_WRITABLE) };
        if rc != 0 {
            let cause = PyErr::fetch(obj.py());
            let error = PyTypeError::new_err(format!(
                "buffer must be a writable, contiguous bytes-like object, not '{}'",
                type_name(obj)
            ));
            error.set_cause(obj.py(), Some(cause));
            return Err(error);
        }
        Ok(WritableView(HeldView(view)))
    }

    /// Address and length of the exported bytes.
    pub fn raw(&self) -> (usize, usize) {
        (self.0 .0.buf as usize, self.0 .0.len as usize)
    }

    /// The exported bytes, to be written; valid while `self` is.
    pub fn as_uninit_mut(&mut self) -> &mut [MaybeUninit<u8>] {
        let (ptr, len) = self.raw();
        if len == 0 {
            return &mut [];
        }
        // SAFETY: a PyBUF_WRITABLE export guarantees `len` contiguous,
        // writable bytes at `buf`, kept alive until PyBuffer_Release in
        // Drop; `&mut self` makes this the only Rust view of them.
        unsafe { std::slice::from_raw_parts_mut(ptr as *mut MaybeUninit<u8>, len) }
    }
}

static ARRAY_TYPE: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static MMAP_TYPE: PyOnceLock<Py<PyType>> = PyOnceLock::new();

/// Whether the memory `obj` exports stays allocated, in place and of the
/// same size for as long as the export is held, whatever other Python
/// threads do meanwhile — so that it may be written with the GIL released.
/// True only for exact `bytearray`, `array.array` and `mmap.mmap` objects,
/// and memoryviews of them: each refuses to resize, close or free its
/// memory while an export exists (BufferError). Other exporters may not
/// (`ndarray.resize(refcheck=False)`, `ctypes.resize`, third-party types),
/// so they are written with the GIL held throughout.
pub fn stays_put_while_exported(obj: &Bound<'_, PyAny>) -> PyResult<bool> {
    let py = obj.py();
    let base = match obj.cast::<PyMemoryView>() {
        Ok(memoryview) => memoryview.getattr("obj")?,
        Err(_) => obj.clone(),
    };
    if base.is_exact_instance_of::<PyByteArray>() {
        return Ok(true);
    }
    let kind = base.get_type();
    Ok(kind.is(ARRAY_TYPE.import(py, "array", "array")?)
        || kind.is(MMAP_TYPE.import(py, "mmap", "mmap")?))
}

/// Whether the bytes `view` exports from `obj` stay unchanged while the
/// GIL is released: the exporter says they are read-only, and for a
/// memoryview so is the object it views (a read-only view of a bytearray
/// still changes with the bytearray). When in doubt, no.
fn unchanging(obj: &Bound<'_, PyAny>, view: &HeldView) -> bool {
    if view.0.readonly == 0 {
        return false;
    }
    let Ok(memoryview) = obj.cast::<PyMemoryView>() else {
        return true;
    };
    match memoryview.getattr("obj") {
        Ok(base) if base.is_instance_of::<PyBytes>() => true,
        Ok(base) if !base.is_none() && !base.is_instance_of::<PyMemoryView>() => {
            HeldView::get(&base).is_some_and(|v| v.0.readonly != 0)
        }
        _ => false,
    }
}

/// Owners of borrowed memory for one call. Everything borrowed through it
/// stays valid and unchanged until it is dropped.
pub struct Arena<'py> {
    objects: RefCell<Vec<Bound<'py, PyAny>>>,
    views: RefCell<Vec<HeldView>>,
    /// Copies of buffers that could change during the call.
    copies: RefCell<Vec<Box<[u8]>>>,
}

impl<'py> Arena<'py> {
    pub fn new() -> Self {
        Arena {
            objects: RefCell::new(Vec::new()),
            views: RefCell::new(Vec::new()),
            copies: RefCell::new(Vec::new()),
        }
    }

    /// Keeps `obj` alive as long as the arena.
    pub fn hold(&self, obj: Bound<'py, PyAny>) {
        self.objects.borrow_mut().push(obj);
    }

    /// The bytes of a bytes-like object: borrowed when read-only, else a
    /// copy taken now (see [`unchanging`]). `None` when `obj` does not
    /// export a contiguous buffer (the "a bytes-like object is required"
    /// error is discarded; callers raise a `TypeError` naming the argument).
    pub fn bytes<'a>(&'a self, obj: &Bound<'py, PyAny>) -> Option<&'a [u8]> {
        if let Ok(bytes) = obj.cast::<PyBytes>() {
            return Some(self.bytes_of(bytes));
        }
        let view = HeldView::get(obj)?;
        let (ptr, len) = if unchanging(obj, &view) {
            let bytes = view.bytes();
            let borrowed = (bytes.as_ptr(), bytes.len());
            self.views.borrow_mut().push(view);
            borrowed
        } else {
            let copy: Box<[u8]> = view.bytes().into();
            let copied = (copy.as_ptr(), copy.len());
            self.copies.borrow_mut().push(copy);
            copied
        };
        // SAFETY: the bytes are either the held view's (alive and unchanged
        // until the arena releases it) or a boxed copy the arena owns (its
        // heap block never moves, and is never changed or freed before the
        // arena is dropped).
        Some(unsafe { std::slice::from_raw_parts(ptr, len) })
    }

    /// The contents of a `bytes` object (the fast path of [`Arena::bytes`]).
    pub fn bytes_of<'a>(&'a self, bytes: &Bound<'py, PyBytes>) -> &'a [u8] {
        let slice = bytes.as_bytes();
        let (ptr, len) = (slice.as_ptr(), slice.len());
        self.hold(bytes.clone().into_any());
        // SAFETY: a bytes object's contents never change and live as long
        // as the object, which the arena now holds a reference to.
        unsafe { std::slice::from_raw_parts(ptr, len) }
    }

    /// The contents of a `bytes` object the arena already holds a reference
    /// to, directly or through a container it holds (no reference taken).
    ///
    /// # Safety
    /// `bytes` must stay alive as long as the arena: it is held by the arena
    /// or by an immutable container (a tuple) that the arena holds.
    pub unsafe fn held_bytes_of<'a>(&'a self, bytes: &Bound<'py, PyBytes>) -> &'a [u8] {
        let slice = bytes.as_bytes();
        // SAFETY: per the contract, the object outlives the arena borrow,
        // and a bytes object's contents never change.
        unsafe { std::slice::from_raw_parts(slice.as_ptr(), slice.len()) }
    }

    /// The UTF-8 of a `str`, without copying. `None` when `obj` is not a str.
    pub fn str<'a>(&'a self, obj: &Bound<'py, PyAny>) -> PyResult<Option<&'a str>> {
        let Ok(string) = obj.cast::<PyString>() else {
            return Ok(None);
        };
        let text = string.to_str()?;
        let (ptr, len) = (text.as_ptr(), text.len());
        self.hold(obj.clone());
        // SAFETY: the UTF-8 form is cached in the str object, immutable and
        // alive as long as the object, which the arena now holds.
        Ok(Some(unsafe {
            std::str::from_utf8_unchecked(std::slice::from_raw_parts(ptr, len))
        }))
    }

    /// Like [`Arena::bytes`], raising `TypeError` naming `what` on failure.
    pub fn require_bytes<'a>(
        &'a self,
        obj: &Bound<'py, PyAny>,
        what: &dyn Fn() -> String,
    ) -> PyResult<&'a [u8]> {
        self.bytes(obj).ok_or_else(|| {
            PyTypeError::new_err(format!(
                "{} must be a bytes-like object, not '{}'",
                what(),
                type_name(obj)
            ))
        })
    }

    /// Like [`Arena::str`], raising `TypeError` naming `what` on failure.
    pub fn require_str<'a>(
        &'a self,
        obj: &Bound<'py, PyAny>,
        what: &dyn Fn() -> String,
    ) -> PyResult<&'a str> {
        self.str(obj)?.ok_or_else(|| {
            PyTypeError::new_err(format!(
                "{} must be a str, not '{}'",
                what(),
                type_name(obj)
            ))
        })
    }
}

/// The type name of `obj`, for error messages.
pub fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".to_string())
}
