//! `mqstore._mqstore`: the Python binding of mqstore, over the Rust API
//! (not the C ABI). The public package is `mqstore` (python/mqstore/), which
//! re-exports everything defined here.
//!
//! Files: `store.rs` (Store, Transfer), `types.rs` (Record, ReadResult,
//! ShardInfo, Message), `buffer.rs` (zero-copy bytes in and out),
//! `convert.rs` (argument parsing), `errors.rs` (exception hierarchy).

use pyo3::prelude::*;

mod buffer;
mod convert;
mod errors;
mod store;
mod types;

/// The mqstore library version (of the Rust core this module was built with).
#[pyfunction]
fn version() -> &'static str {
    mqstore::VERSION
}

/// The engines compiled into this build and their declared capabilities,
/// as JSON (`mqstore.engines()` parses it).
/// Installs `handler(level, message)` for mqstore's logged events (None
/// removes it), after the events already queued reached the previous one.
/// It runs on mqstore's logging thread, holding the GIL only while it runs.
#[pyfunction]
fn set_log_handler(py: Python<'_>, handler: Option<Py<PyAny>>) -> PyResult<()> {
    let handler = handler.map(|handler| {
        std::sync::Arc::new(move |level: mqstore::log::Level, message: &str| {
            Python::attach(|py| {
                if let Err(e) = handler.call1(py, (level as i32, message)) {
                    // Nobody to raise it to: Python reports it as unraisable.
                    e.write_unraisable(py, None);
                }
            })
        }) as mqstore::log::Handler
    });
    // Waiting for the queue to drain needs the logging thread, which may
    // need the GIL for the handler being replaced.
    py.detach(|| mqstore::log::set_handler(handler))
        .map_err(|e| errors::to_pyerr(py, e))
}

#[pyfunction]
fn engines_json() -> String {
    mqstore::engine::registry::to_json().to_string()
}

#[pymodule]
fn _mqstore(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", mqstore::VERSION)?;
    m.add("EARLIEST", mqstore::TIMESTAMP_EARLIEST)?;
    m.add("LATEST", mqstore::TIMESTAMP_LATEST)?;
    m.add_function(wrap_pyfunction!(version, m)?)?;
    m.add_function(wrap_pyfunction!(engines_json, m)?)?;
    m.add_function(wrap_pyfunction!(set_log_handler, m)?)?;
    m.add_class::<store::PyStore>()?;
    m.add_class::<store::PyTransfer>()?;
    m.add_class::<types::PyRecord>()?;
    m.add_class::<types::PyReadResult>()?;
    m.add_class::<types::PyShardInfo>()?;
    m.add_class::<types::PyMessage>()?;
    m.add_class::<buffer::Buffer>()?;
    errors::register(m)?;
    Ok(())
}
