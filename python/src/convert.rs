//! Python values → Rust inputs (records, keys, descriptors) and Rust outputs
//! (JSON) → Python values.

use mqstore::{Header, Record};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyByteArray, PyBytes, PyDict, PyFloat, PyList, PyString, PyTuple};

use crate::buffer::{type_name, Arena};
use crate::types::{PyMessage, PyRecord};

/// Where an input sits, for error messages ("record 3: key", "value").
#[derive(Clone, Copy)]
pub struct Ctx(pub Option<usize>);

impl Ctx {
    fn name(self, field: &str) -> String {
        match self.0 {
            Some(index) => format!("record {index}: {field}"),
            None => field.to_string(),
        }
    }
}

/// The fields of one record as Python objects, before borrowing.
#[derive(Default)]
pub struct Fields<'py> {
    pub value: Option<Bound<'py, PyAny>>,
    pub key: Option<Bound<'py, PyAny>>,
    pub headers: Option<Bound<'py, PyAny>>,
    pub tags: Option<Bound<'py, PyAny>>,
    pub timestamp_ms: i64,
    pub expire_at_ms: Option<i64>,
}

fn not_none<'py>(obj: Option<Bound<'py, PyAny>>) -> Option<Bound<'py, PyAny>> {
    obj.filter(|o| !o.is_none())
}

impl<'py> Fields<'py> {
    /// Borrows every field through `arena` into a `Record`.
    pub fn borrow<'a>(self, arena: &'a Arena<'py>, ctx: Ctx) -> PyResult<Record<'a>> {
        let value = self
            .value
            .ok_or_else(|| PyTypeError::new_err(format!("{} is missing", ctx.name("value"))))?;
        // None is a null value (a tombstone), not an empty one.
        let value = match not_none(Some(value)) {
            Some(value) => Some(arena.require_bytes(&value, &|| ctx.name("value"))?),
            None => None,
        };
        let key = match not_none(self.key) {
            Some(key) => Some(arena.require_bytes(&key, &|| ctx.name("key"))?),
            None => None,
        };
        let headers = match not_none(self.headers) {
            Some(headers) => borrow_headers(arena, headers, ctx)?,
            None => Vec::new(),
        };
        let tags = match not_none(self.tags) {
            Some(tags) => borrow_tags(arena, tags, ctx)?,
            None => Vec::new(),
        };
        Ok(Record {
            key,
            value,
            headers,
            tags,
            timestamp_ms: self.timestamp_ms,
            expire_at_ms: self.expire_at_ms,
        })
    }
}

fn reject_scalar(
    obj: &Bound<'_, PyAny>,
    what: &dyn Fn() -> String,
    expected: &str,
) -> PyResult<()> {
    if obj.is_instance_of::<PyString>()
        || obj.is_instance_of::<PyBytes>()
        || obj.is_instance_of::<PyByteArray>()
    {
        return Err(PyTypeError::new_err(format!(
            "{} must be {expected}, not '{}'",
            what(),
            type_name(obj)
        )));
    }
    Ok(())
}

fn borrow_header<'a, 'py>(
    arena: &'a Arena<'py>,
    name: Bound<'py, PyAny>,
    value: Bound<'py, PyAny>,
    ctx: Ctx,
    index: usize,
) -> PyResult<Header<'a>> {
    let what = || ctx.name(&format!("header {index}"));
    let key = arena.require_str(&name, &|| format!("{} name", what()))?;
    let value = if value.is_none() {
        None
    } else {
        Some(arena.require_bytes(&value, &|| format!("{} ('{key}') value", what()))?)
    };
    Ok(Header { key, value })
}

/// Headers from a dict `{name: value}` or an iterable of `(name, value)`
/// pairs; values are bytes-like or None.
fn borrow_headers<'a, 'py>(
    arena: &'a Arena<'py>,
    headers: Bound<'py, PyAny>,
    ctx: Ctx,
) -> PyResult<Vec<Header<'a>>> {
    let what = || ctx.name("headers");
    let mut out = Vec::new();
    if let Ok(dict) = headers.cast::<PyDict>() {
        for (index, (name, value)) in dict.iter().enumerate() {
            out.push(borrow_header(arena, name, value, ctx, index)?);
        }
        return Ok(out);
    }
    reject_scalar(
        &headers,
        &what,
        "a dict or a list of (str, bytes | None) pairs",
    )?;
    for (index, pair) in headers.try_iter()?.enumerate() {
        let pair = pair?;
        let (name, value) = match pair.cast::<PyTuple>() {
            Ok(tuple) if tuple.len() == 2 => (tuple.get_item(0)?, tuple.get_item(1)?),
            _ => {
                let items: Vec<Bound<'py, PyAny>> = match pair.extract() {
                    Ok(items) if !pair.is_instance_of::<PyString>() => items,
                    _ => Vec::new(),
                };
                let [name, value]: [Bound<'py, PyAny>; 2] = items.try_into().map_err(|_| {
                    PyTypeError::new_err(format!(
                        "{} must be a (name, value) pair, not '{}'",
                        ctx.name(&format!("header {index}")),
                        type_name(&pair)
                    ))
                })?;
                (name, value)
            }
        };
        out.push(borrow_header(arena, name, value, ctx, index)?);
    }
    Ok(out)
}

fn borrow_tags<'a, 'py>(
    arena: &'a Arena<'py>,
    tags: Bound<'py, PyAny>,
    ctx: Ctx,
) -> PyResult<Vec<&'a str>> {
    let what = || ctx.name("tags");
    reject_scalar(&tags, &what, "a list of str")?;
    let mut out = Vec::new();
    for (index, tag) in tags.try_iter()?.enumerate() {
        out.push(arena.require_str(&tag?, &|| ctx.name(&format!("tag {index}")))?);
    }
    Ok(out)
}

const DICT_KEYS: &str = "value, key, headers, tags, timestamp_ms, expire_at_ms";

fn fields_from_dict<'py>(dict: &Bound<'py, PyDict>, ctx: Ctx) -> PyResult<Fields<'py>> {
    let mut fields = Fields::default();
    for (name, item) in dict.iter() {
        let name_str = match name.cast::<PyString>() {
            Ok(s) => Some(s.to_str()?),
            Err(_) => None,
        };
        match name_str {
            Some("value") => fields.value = Some(item),
            Some("key") => fields.key = Some(item),
            Some("headers") => fields.headers = Some(item),
            Some("tags") => fields.tags = Some(item),
            Some("timestamp_ms") => {
                if !item.is_none() {
                    fields.timestamp_ms = extract_int(&item, &|| ctx.name("timestamp_ms"))?;
                }
            }
            Some("expire_at_ms") => {
                if !item.is_none() {
                    fields.expire_at_ms = Some(extract_int(&item, &|| ctx.name("expire_at_ms"))?);
                }
            }
            _ => {
                return Err(PyTypeError::new_err(format!(
                    "{}: unexpected key {} (allowed: {DICT_KEYS})",
                    ctx.name("dict"),
                    name.repr()?
                )))
            }
        }
    }
    Ok(fields)
}

fn extract_int(obj: &Bound<'_, PyAny>, what: &dyn Fn() -> String) -> PyResult<i64> {
    if obj.is_instance_of::<PyBool>() || obj.is_instance_of::<PyFloat>() {
        return Err(PyTypeError::new_err(format!(
            "{} must be an int, not '{}'",
            what(),
            type_name(obj)
        )));
    }
    obj.extract::<i64>().map_err(|e| {
        if e.is_instance_of::<PyTypeError>(obj.py()) {
            PyTypeError::new_err(format!(
                "{} must be an int, not '{}'",
                what(),
                type_name(obj)
            ))
        } else {
            e
        }
    })
}

/// Re-appending a record read from a store: its bytes are borrowed from the
/// stored batch, not copied.
fn record_from_view<'a, 'py>(
    arena: &'a Arena<'py>,
    record: Bound<'py, PyRecord>,
    ctx: Ctx,
) -> PyResult<Record<'a>> {
    let view: *const mqstore::RecordView = &record.get().view;
    arena.hold(record.into_any());
    // SAFETY: `PyRecord` is frozen, so its view never changes or moves while
    // the object lives, and the arena holds a reference to the object.
    let view: &'a mqstore::RecordView = unsafe { &*view };
    let utf8 = |bytes: &'a [u8], what: &str| -> PyResult<&'a str> {
        std::str::from_utf8(bytes)
            .map_err(|_| PyValueError::new_err(format!("{} is not valid UTF-8", ctx.name(what))))
    };
    let headers = view
        .headers
        .iter()
        .map(|h| {
            Ok(Header {
                key: utf8(&h.key, "header name")?,
                value: h.value.as_deref(),
            })
        })
        .collect::<PyResult<Vec<_>>>()?;
    let tags = view
        .tags
        .iter()
        .map(|t| utf8(t, "tag"))
        .collect::<PyResult<Vec<_>>>()?;
    Ok(Record {
        key: view.key.as_deref(),
        value: view.value.as_deref(),
        headers,
        tags,
        timestamp_ms: view.timestamp_ms,
        expire_at_ms: view.expire_at_ms,
    })
}

/// One item of `append_batch`: a bytes-like value, a dict, a `Message` or a
/// `Record` read earlier.
pub fn record_from_item<'a, 'py>(
    arena: &'a Arena<'py>,
    item: Bound<'py, PyAny>,
    index: usize,
) -> PyResult<Record<'a>> {
    let ctx = Ctx(Some(index));
    if let Ok(bytes) = item.cast::<PyBytes>() {
        // The hot path: a list of bytes values.
        return Ok(Record::new(arena.bytes_of(bytes)));
    }
    if let Ok(dict) = item.cast::<PyDict>() {
        return fields_from_dict(dict, ctx)?.borrow(arena, ctx);
    }
    if item.is_none() {
        // A null value without a key.
        return Ok(Record::default());
    }
    if let Ok(message) = item.cast::<PyMessage>() {
        let py = item.py();
        let m = message.get();
        let fields = Fields {
            value: Some(m.value.bind(py).clone()),
            key: m.key.as_ref().map(|o| o.bind(py).clone()),
            headers: m.headers.as_ref().map(|o| o.bind(py).clone()),
            tags: m.tags.as_ref().map(|o| o.bind(py).clone()),
            timestamp_ms: m.timestamp_ms,
            expire_at_ms: m.expire_at_ms,
        };
        return fields.borrow(arena, ctx);
    }
    if let Ok(record) = item.cast::<PyRecord>() {
        return record_from_view(arena, record.clone(), ctx);
    }
    match arena.bytes(&item) {
        Some(value) => Ok(Record::new(value)),
        None => Err(PyTypeError::new_err(format!(
            "record {index} must be a bytes-like object, a dict, a Message or a Record, not '{}'",
            type_name(&item)
        ))),
    }
}

/// All items of `append_batch`'s argument.
pub fn records_from_iterable<'a, 'py>(
    arena: &'a Arena<'py>,
    records: &Bound<'py, PyAny>,
) -> PyResult<Vec<Record<'a>>> {
    // The hot path: a list (or tuple). A list is snapshotted by one C call
    // into a tuple holding a reference to every item, so no other thread
    // can free an item while the GIL is released; items are then borrowed.
    let tuple = match records.cast::<PyList>() {
        Ok(list) => Some(list.to_tuple()),
        Err(_) => records.cast::<PyTuple>().ok().cloned(),
    };
    if let Some(tuple) = tuple {
        arena.hold(tuple.clone().into_any());
        let mut out = Vec::with_capacity(tuple.len());
        for (index, item) in tuple.iter_borrowed().enumerate() {
            if let Ok(bytes) = item.cast::<PyBytes>() {
                // SAFETY: the item lives in `tuple` (immutable), held above.
                out.push(Record::new(unsafe { arena.held_bytes_of(&bytes) }));
            } else {
                out.push(record_from_item(arena, item.to_owned(), index)?);
            }
        }
        return Ok(out);
    }
    reject_scalar(records, &|| "records".to_string(), "an iterable of records")?;
    if records.is_instance_of::<PyDict>() || records.cast::<PyMessage>().is_ok() {
        return Err(PyTypeError::new_err(
            "records must be an iterable of records; use append() for a single record",
        ));
    }
    let mut out = Vec::with_capacity(records.len().unwrap_or(0));
    for (index, item) in records.try_iter()?.enumerate() {
        out.push(record_from_item(arena, item?, index)?);
    }
    Ok(out)
}

/// A list of keys (bytes-like objects).
pub fn keys_from_iterable<'a, 'py>(
    arena: &'a Arena<'py>,
    keys: &Bound<'py, PyAny>,
) -> PyResult<Vec<&'a [u8]>> {
    reject_scalar(
        keys,
        &|| "keys".to_string(),
        "an iterable of bytes-like objects",
    )?;
    let mut out = Vec::with_capacity(keys.len().unwrap_or(0));
    for (index, key) in keys.try_iter()?.enumerate() {
        out.push(arena.require_bytes(&key?, &|| format!("key {index}"))?);
    }
    Ok(out)
}

/// A descriptor: an int or an object with `fileno()` (socket, file).
pub fn extract_fd(obj: &Bound<'_, PyAny>) -> PyResult<i32> {
    if obj.is_instance_of::<PyBool>() {
        return Err(PyTypeError::new_err(
            "fd must be an int or have fileno(), not 'bool'",
        ));
    }
    if let Ok(fd) = obj.extract::<i32>() {
        return Ok(fd);
    }
    if obj.hasattr("fileno")? {
        return obj.call_method0("fileno")?.extract::<i32>();
    }
    Err(PyTypeError::new_err(format!(
        "fd must be an int or an object with fileno(), not '{}'",
        type_name(obj)
    )))
}

/// A JSON value as plain Python objects.
pub fn json_to_py<'py>(py: Python<'py>, value: &serde_json::Value) -> PyResult<Bound<'py, PyAny>> {
    use serde_json::Value;
    Ok(match value {
        Value::Null => py.None().into_bound(py),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.into_pyobject(py)?.into_any()
            } else if let Some(u) = n.as_u64() {
                u.into_pyobject(py)?.into_any()
            } else {
                n.as_f64().unwrap_or(f64::NAN).into_pyobject(py)?.into_any()
            }
        }
        Value::String(s) => PyString::new(py, s).into_any(),
        Value::Array(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(json_to_py(py, item)?)?;
            }
            list.into_any()
        }
        Value::Object(map) => {
            let dict = PyDict::new(py);
            for (key, item) in map {
                dict.set_item(key, json_to_py(py, item)?)?;
            }
            dict.into_any()
        }
    })
}
