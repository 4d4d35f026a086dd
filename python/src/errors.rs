//! The exception hierarchy: `MqsError(Exception)` and one subclass per Rust
//! `Status`, some also deriving from the builtin exception Python code would
//! naturally catch (`ShardNotFound` is a `LookupError`, `StorageIOError` an
//! `OSError`, ...). The classes are built at import with `type(...)` because
//! `create_exception!` allows a single base only.

use mqstore::{Error, Status};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};

/// One exception class: its name, the status it stands for, the builtin
/// exceptions it also derives from, and its docstring.
struct Spec {
    name: &'static str,
    status: Status,
    builtin_bases: &'static [&'static str],
    doc: &'static str,
}

const SPECS: &[Spec] = &[
    Spec {
        name: "InvalidArgument",
        status: Status::InvalidArgument,
        builtin_bases: &["ValueError"],
        doc: "An argument is out of its allowed range (status 1).",
    },
    Spec {
        name: "ConfigError",
        status: Status::InvalidConfig,
        builtin_bases: &["ValueError"],
        doc: "The store or shard configuration is malformed; the message names the key (status 2).",
    },
    Spec {
        name: "ShardNotFound",
        status: Status::ShardNotFound,
        builtin_bases: &["LookupError"],
        doc: "No shard with that name exists (status 3).",
    },
    Spec {
        name: "ShardExists",
        status: Status::ShardExists,
        builtin_bases: &[],
        doc: "A shard with that name already exists (status 4).",
    },
    Spec {
        name: "RecordTooLarge",
        status: Status::RecordTooLarge,
        builtin_bases: &["ValueError"],
        doc: "A record or batch exceeds max_record_bytes / max_batch_bytes (status 5).",
    },
    Spec {
        name: "OffsetOutOfRange",
        status: Status::OffsetOutOfRange,
        builtin_bases: &["LookupError"],
        doc: "The offset lies outside [first_offset, next_offset] of the shard (status 6).",
    },
    Spec {
        name: "InvalidHandle",
        status: Status::InvalidHandle,
        builtin_bases: &[],
        doc: "The handle was already closed or freed (status 7; C ABI only).",
    },
    Spec {
        name: "StoreClosed",
        status: Status::Closed,
        builtin_bases: &[],
        doc: "The store was closed; no further operation is possible (status 8).",
    },
    Spec {
        name: "CorruptionError",
        status: Status::Corruption,
        builtin_bases: &[],
        doc: "Stored bytes failed validation (status 9).",
    },
    Spec {
        name: "StorageIOError",
        status: Status::Io,
        builtin_bases: &["OSError"],
        doc: "An operating-system I/O call failed; errno is set when known (status 10).",
    },
    Spec {
        name: "WouldBlock",
        status: Status::WouldBlock,
        builtin_bases: &["BlockingIOError"],
        doc: "A non-blocking descriptor would block (status 11).",
    },
    Spec {
        name: "Unsupported",
        status: Status::Unsupported,
        builtin_bases: &["NotImplementedError"],
        doc: "The engine or codec is not available in this build (status 12).",
    },
    Spec {
        name: "Poisoned",
        status: Status::Poisoned,
        builtin_bases: &[],
        doc: "An earlier unrecoverable failure poisoned the store (status 13).",
    },
    Spec {
        name: "InternalError",
        status: Status::Internal,
        builtin_bases: &[],
        doc: "A bug in mqstore (status 14).",
    },
    Spec {
        name: "Locked",
        status: Status::Locked,
        builtin_bases: &[],
        doc: "The store directory is locked by another open store (status 15).",
    },
    Spec {
        name: "ProducerFenced",
        status: Status::ProducerFenced,
        builtin_bases: &[],
        doc: "An idempotent producer's batch has an epoch older than its current one (status 16).",
    },
    Spec {
        name: "OutOfOrderSequence",
        status: Status::OutOfOrderSequence,
        builtin_bases: &[],
        doc: "An idempotent producer's batch does not continue its sequence (status 17).",
    },
    Spec {
        name: "DuplicateSequence",
        status: Status::DuplicateSequence,
        builtin_bases: &[],
        doc: "A producer's retry of stored batches; `base_offsets` are the originals (status 18).",
    },
];

struct Classes {
    base: Py<PyType>,
    /// Indexed by `Status as usize`; index 0 (Ok) holds the base class.
    by_status: Vec<Py<PyType>>,
}

static CLASSES: PyOnceLock<Classes> = PyOnceLock::new();

fn make_class<'py>(
    py: Python<'py>,
    name: &str,
    bases: Bound<'py, PyTuple>,
    doc: &str,
    status: Option<Status>,
) -> PyResult<Bound<'py, PyType>> {
    let dict = PyDict::new(py);
    dict.set_item("__module__", "mqstore")?;
    dict.set_item("__doc__", doc)?;
    if let Some(status) = status {
        dict.set_item("status", status as i32)?;
    }
    let class = py
        .get_type::<PyType>()
        .call1((name, bases, dict))?
        .cast_into::<PyType>()?;
    Ok(class)
}

fn build(py: Python<'_>) -> PyResult<Classes> {
    let builtins = py.import("builtins")?;
    let base = make_class(
        py,
        "MqsError",
        PyTuple::new(py, [builtins.getattr("Exception")?])?,
        "Base class of every mqstore error. `status` is the numeric code shared with the \
         C ABI (see mqstore.Status); str(error) is the message of the Rust error.",
        Some(Status::Internal),
    )?;
    let mut by_status: Vec<Py<PyType>> = (0..=Status::DuplicateSequence as usize)
        .map(|_| base.clone().unbind())
        .collect();
    for spec in SPECS {
        let mut bases = vec![base.clone().into_any()];
        for builtin in spec.builtin_bases {
            bases.push(builtins.getattr(*builtin)?);
        }
        let class = make_class(
            py,
            spec.name,
            PyTuple::new(py, bases)?,
            spec.doc,
            Some(spec.status),
        )?;
        by_status[spec.status as usize] = class.unbind();
    }
    Ok(Classes {
        base: base.unbind(),
        by_status,
    })
}

fn classes(py: Python<'_>) -> PyResult<&'static Classes> {
    CLASSES.get_or_try_init(py, || build(py))
}

/// Adds `MqsError` and its subclasses to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    let classes = classes(py)?;
    m.add("MqsError", classes.base.bind(py))?;
    for spec in SPECS {
        m.add(spec.name, classes.by_status[spec.status as usize].bind(py))?;
    }
    Ok(())
}

/// The Python exception for a Rust error: the class of its status, the
/// message of its Display, and `errno` for I/O errors that carry one.
pub fn to_pyerr(py: Python<'_>, error: Error) -> PyErr {
    let build = || -> PyResult<PyErr> {
        let classes = classes(py)?;
        let class = classes.by_status[error.status() as usize].bind(py);
        let instance = class.call1((error.to_string(),))?;
        if let Error::Io { source, .. } = &error {
            if let Some(errno) = source.raw_os_error() {
                instance.setattr("errno", errno)?;
            }
        }
        if let Error::DuplicateSequence { base_offsets, .. } = &error {
            instance.setattr("base_offsets", base_offsets.clone())?;
        }
        Ok(PyErr::from_value(instance))
    };
    build().unwrap_or_else(|e| e)
}

/// The `InvalidArgument` exception with `message`, for checks the binding
/// makes itself (same class and prefix as the Rust error).
pub fn invalid_argument(py: Python<'_>, message: impl Into<String>) -> PyErr {
    to_pyerr(py, Error::InvalidArgument(message.into()))
}

/// `result.or_raise(py)?` turns a Rust error into its Python exception.
pub trait OrRaise<T> {
    fn or_raise(self, py: Python<'_>) -> PyResult<T>;
}

impl<T> OrRaise<T> for mqstore::Result<T> {
    fn or_raise(self, py: Python<'_>) -> PyResult<T> {
        self.map_err(|e| to_pyerr(py, e))
    }
}
