//! The value classes: `Record`, `ReadResult`, `ShardInfo`, `Message`.

use mqstore::RecordView;
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyMemoryView, PyString, PyTuple};
use pyo3::PyTraverseError;

use crate::buffer::Buffer;

/// A stored record. `key`, `value` and header values are zero-copy
/// memoryviews of the stored bytes, valid for as long as they are referenced
/// (also after the store is closed); each attribute access returns a new
/// memoryview over the same memory.
#[pyclass(module = "mqstore", name = "Record", frozen)]
pub struct PyRecord {
    pub view: RecordView,
}

fn utf8_lossy<'py>(py: Python<'py>, bytes: &[u8]) -> Bound<'py, PyString> {
    match std::str::from_utf8(bytes) {
        Ok(text) => PyString::new(py, text),
        Err(_) => PyString::new(py, &String::from_utf8_lossy(bytes)),
    }
}

#[pymethods]
impl PyRecord {
    #[getter]
    fn offset(&self) -> i64 {
        self.view.offset
    }

    #[getter]
    fn timestamp_ms(&self) -> i64 {
        self.view.timestamp_ms
    }

    #[getter]
    fn key<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyMemoryView>>> {
        self.view
            .key
            .clone()
            .map(|key| Buffer::memoryview(py, key))
            .transpose()
    }

    #[getter]
    fn value<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyMemoryView>>> {
        self.view
            .value
            .clone()
            .map(|value| Buffer::memoryview(py, value))
            .transpose()
    }

    /// User headers in order: `(name, memoryview | None)` tuples.
    #[getter]
    fn headers<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let list = PyList::empty(py);
        for header in &self.view.headers {
            let value = match &header.value {
                Some(value) => Buffer::memoryview(py, value.clone())?.into_any(),
                None => py.None().into_bound(py),
            };
            list.append(PyTuple::new(
                py,
                [utf8_lossy(py, &header.key).into_any(), value],
            )?)?;
        }
        Ok(list)
    }

    #[getter]
    fn tags<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        PyList::new(py, self.view.tags.iter().map(|t| utf8_lossy(py, t)))
    }

    #[getter]
    fn expire_at_ms(&self) -> Option<i64> {
        self.view.expire_at_ms
    }

    fn __repr__(&self) -> String {
        let v = &self.view;
        let mut out = format!(
            "Record(offset={}, timestamp_ms={}, key={}, value={}",
            v.offset,
            v.timestamp_ms,
            v.key
                .as_ref()
                .map_or("None".to_string(), |k| format!("<{} bytes>", k.len())),
            v.value
                .as_ref()
                .map_or("None".to_string(), |v| format!("<{} bytes>", v.len()))
        );
        if !v.headers.is_empty() {
            out += &format!(", headers=<{}>", v.headers.len());
        }
        if !v.tags.is_empty() {
            let tags: Vec<String> = v
                .tags
                .iter()
                .map(|t| format!("{:?}", String::from_utf8_lossy(t)))
                .collect();
            out += &format!(", tags=[{}]", tags.join(", "));
        }
        if let Some(at) = v.expire_at_ms {
            out += &format!(", expire_at_ms={at}");
        }
        out + ")"
    }
}

pub fn records_list(py: Python<'_>, views: Vec<RecordView>) -> PyResult<Bound<'_, PyList>> {
    let items = views
        .into_iter()
        .map(|view| Bound::new(py, PyRecord { view }))
        .collect::<PyResult<Vec<_>>>()?;
    PyList::new(py, items)
}

/// Records from a read plus the offset the next read should start at.
/// Iterable and sized like its `records` list.
#[pyclass(module = "mqstore", name = "ReadResult", frozen)]
pub struct PyReadResult {
    records: Py<PyList>,
    #[pyo3(get)]
    next_offset: i64,
}

impl PyReadResult {
    pub fn new(py: Python<'_>, result: mqstore::ReadResult) -> PyResult<Self> {
        Ok(PyReadResult {
            records: records_list(py, result.records)?.unbind(),
            next_offset: result.next_offset,
        })
    }
}

#[pymethods]
impl PyReadResult {
    #[getter]
    fn records<'py>(&self, py: Python<'py>) -> Bound<'py, PyList> {
        self.records.bind(py).clone()
    }

    fn __len__(&self, py: Python<'_>) -> usize {
        self.records.bind(py).len()
    }

    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(self.records.bind(py).try_iter()?.into_any())
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "ReadResult(<{} records>, next_offset={})",
            self.records.bind(py).len(),
            self.next_offset
        )
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.records)
    }
}

/// A snapshot of one shard's state and options.
#[pyclass(module = "mqstore", name = "ShardInfo", frozen, get_all, eq)]
#[derive(PartialEq)]
pub struct PyShardInfo {
    name: String,
    engine: String,
    /// Low watermark: the smallest offset that may still be read.
    first_offset: i64,
    /// High watermark: the offset the next append receives.
    next_offset: i64,
    records: u64,
    bytes: u64,
    durability: String,
    compression: String,
    segment_bytes: u64,
    retention_ms: u64,
    retention_bytes: u64,
    retention_records: u64,
    /// "create_time" or "log_append_time".
    timestamp_type: String,
    /// "delete", "compact" or "compact,delete".
    cleanup_policy: String,
    delete_retention_ms: u64,
    min_compaction_lag_ms: u64,
}

impl From<mqstore::ShardInfo> for PyShardInfo {
    fn from(info: mqstore::ShardInfo) -> Self {
        let o = &info.options;
        PyShardInfo {
            engine: info.engine.name().to_string(),
            first_offset: info.first_offset,
            next_offset: info.next_offset,
            records: info.records,
            bytes: info.bytes,
            durability: o.durability.name().to_string(),
            compression: o.compression.name().to_string(),
            segment_bytes: o.segment_bytes,
            retention_ms: o.retention_ms,
            retention_bytes: o.retention_bytes,
            retention_records: o.retention_records,
            timestamp_type: o.timestamp_type.name().to_string(),
            cleanup_policy: o.cleanup_policy.name().to_string(),
            delete_retention_ms: o.delete_retention_ms,
            min_compaction_lag_ms: o.min_compaction_lag_ms,
            name: info.name,
        }
    }
}

#[pymethods]
impl PyShardInfo {
    fn __repr__(&self) -> String {
        format!(
            "ShardInfo(name='{}', engine='{}', first_offset={}, next_offset={}, records={}, \
             bytes={}, durability='{}', compression='{}')",
            self.name,
            self.engine,
            self.first_offset,
            self.next_offset,
            self.records,
            self.bytes,
            self.durability,
            self.compression
        )
    }
}

/// A record to append with `Store.append_batch` (a dict with the same keys
/// works too). Nothing is validated or copied until it is appended.
#[pyclass(module = "mqstore", name = "Message", frozen, get_all)]
pub struct PyMessage {
    pub value: Py<PyAny>,
    pub key: Option<Py<PyAny>>,
    pub headers: Option<Py<PyAny>>,
    pub tags: Option<Py<PyAny>>,
    pub timestamp_ms: i64,
    pub expire_at_ms: Option<i64>,
}

#[pymethods]
impl PyMessage {
    #[new]
    #[pyo3(signature = (value, *, key=None, headers=None, tags=None, timestamp_ms=0, expire_at_ms=None))]
    fn new(
        value: Py<PyAny>,
        key: Option<Py<PyAny>>,
        headers: Option<Py<PyAny>>,
        tags: Option<Py<PyAny>>,
        timestamp_ms: i64,
        expire_at_ms: Option<i64>,
    ) -> Self {
        PyMessage {
            value,
            key,
            headers,
            tags,
            timestamp_ms,
            expire_at_ms,
        }
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let repr = |obj: &Option<Py<PyAny>>| -> PyResult<String> {
            match obj {
                Some(obj) => Ok(obj.bind(py).repr()?.to_string()),
                None => Ok("None".to_string()),
            }
        };
        Ok(format!(
            "Message({}, key={}, headers={}, tags={}, timestamp_ms={}, expire_at_ms={})",
            self.value.bind(py).repr()?,
            repr(&self.key)?,
            repr(&self.headers)?,
            repr(&self.tags)?,
            self.timestamp_ms,
            self.expire_at_ms
                .map_or("None".to_string(), |v| v.to_string())
        ))
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.value)?;
        visit.call(&self.key)?;
        visit.call(&self.headers)?;
        visit.call(&self.tags)?;
        Ok(())
    }
}
