//! `Store` and `Transfer`: thin wrappers over `mqstore::Store` and
//! `mqstore::TransferPlan`. Every call that does I/O or touches shard data
//! runs with the GIL released (`py.detach`).

use std::mem::MaybeUninit;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use mqstore::{Config, Record, TransferPlan};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple, PyType};

use crate::buffer::{stays_put_while_exported, Arena, WritableView};
use crate::convert::{self, Ctx, Fields};
use crate::errors::{invalid_argument, to_pyerr, OrRaise};
use crate::types::{records_list, PyReadResult, PyShardInfo};

/// `(token, offset, error or None)`: one completion of `poll_durable`.
type PyCompletion = (u64, i64, Option<Py<PyAny>>);

fn limit(py: Python<'_>, name: &str, value: i64) -> PyResult<usize> {
    usize::try_from(value)
        .map_err(|_| invalid_argument(py, format!("{name} must not be negative, got {value}")))
}

/// An open store. All methods are thread-safe and release the GIL while
/// they work, so threads appending to or reading from a store run in
/// parallel.
///
/// `close()` is idempotent, like `file.close()`: closing a closed store does
/// nothing; any other call on a closed store raises `StoreClosed`.
#[pyclass(module = "mqstore", name = "Store", frozen, weakref)]
pub struct PyStore {
    inner: mqstore::Store,
}

impl PyStore {
    fn open(py: Python<'_>, path: PathBuf, config: Config) -> PyResult<Self> {
        let inner = py
            .detach(|| mqstore::Store::open(&path, config))
            .or_raise(py)?;
        Ok(PyStore { inner })
    }

    /// The body of `append_batch` and `append_batch_nowait`: the same
    /// conversion, then `append` with the GIL released.
    fn append_raw_with<'py>(
        &self,
        py: Python<'py>,
        shard: &str,
        data: &Bound<'py, PyAny>,
        append: fn(&mqstore::Store, &str, &[u8]) -> mqstore::Result<Vec<i64>>,
    ) -> PyResult<Vec<i64>> {
        let arena = Arena::new();
        let bytes = arena.require_bytes(data, &|| "data".to_string())?;
        py.detach(|| append(&self.inner, shard, bytes)).or_raise(py)
    }

    fn append_batch_with<'py>(
        &self,
        py: Python<'py>,
        shard: &str,
        records: &Bound<'py, PyAny>,
        append: fn(&mqstore::Store, &str, &[Record<'_>]) -> mqstore::Result<i64>,
    ) -> PyResult<i64> {
        let arena = Arena::new();
        let records: Vec<Record<'_>> = convert::records_from_iterable(&arena, records)?;
        py.detach(|| append(&self.inner, shard, &records))
            .or_raise(py)
    }
}

#[pymethods]
impl PyStore {
    /// Opens (creating if needed) the store in `path`. `config` is TOML text
    /// in the storage.toml schema (None = defaults).
    #[new]
    #[pyo3(signature = (path, config=None))]
    fn new(py: Python<'_>, path: PathBuf, config: Option<&str>) -> PyResult<Self> {
        let config = match config {
            Some(text) => Config::from_toml_str(text).or_raise(py)?,
            None => Config::default(),
        };
        Self::open(py, path, config)
    }

    /// Opens the store in `path` with the configuration file `config_path`.
    #[classmethod]
    fn from_config_file(
        _cls: &Bound<'_, PyType>,
        py: Python<'_>,
        path: PathBuf,
        config_path: PathBuf,
    ) -> PyResult<Self> {
        let config = Config::from_file(&config_path).or_raise(py)?;
        Self::open(py, path, config)
    }

    /// The store directory.
    #[getter]
    fn path(&self) -> PathBuf {
        self.inner.dir().to_path_buf()
    }

    /// The resolved configuration, as a dict.
    #[getter]
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        convert::json_to_py(py, &self.inner.config().to_json())
    }

    #[getter]
    fn closed(&self) -> bool {
        self.inner.is_closed()
    }

    /// Closes the store and releases the directory lock. Records, memoryviews
    /// and transfers already handed out stay valid. Idempotent.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        match py.detach(|| self.inner.close()) {
            Err(mqstore::Error::Closed) | Ok(()) => Ok(()),
            Err(e) => Err(to_pyerr(py, e)),
        }
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, PyTuple>) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        format!(
            "<mqstore.Store path='{}' {}>",
            self.inner.dir().display(),
            if self.inner.is_closed() {
                "closed"
            } else {
                "open"
            }
        )
    }

    // ------------------------------------------------------------ shards

    /// Creates a shard. Options left as None take the store's `[shard]`
    /// defaults; `options` is TOML text with the same keys, overridden by
    /// the keyword arguments.
    #[pyo3(signature = (name, *, options=None, engine=None, durability=None, compression=None,
                        segment_bytes=None, retention_ms=None, retention_bytes=None, retention_records=None,
                        timestamp_type=None, cleanup_policy=None, delete_retention_ms=None,
                        min_compaction_lag_ms=None))]
    #[allow(clippy::too_many_arguments)]
    fn create_shard(
        &self,
        py: Python<'_>,
        name: &str,
        options: Option<&str>,
        engine: Option<&str>,
        durability: Option<&str>,
        compression: Option<&str>,
        segment_bytes: Option<i64>,
        retention_ms: Option<i64>,
        retention_bytes: Option<i64>,
        retention_records: Option<i64>,
        timestamp_type: Option<&str>,
        cleanup_policy: Option<&str>,
        delete_retention_ms: Option<i64>,
        min_compaction_lag_ms: Option<i64>,
    ) -> PyResult<PyShardInfo> {
        // The options go through the same TOML parser as storage.toml, so
        // values are validated and errors worded exactly as in the config
        // file (the `toml` crate quotes the strings, so nothing is injected).
        let config = self.inner.config();
        let mut table = match options {
            Some(text) => {
                config.shard_options(Some(text)).or_raise(py)?;
                toml::from_str::<toml::Table>(text).map_err(|e| {
                    to_pyerr(
                        py,
                        mqstore::Error::InvalidConfig(format!("shard options: {e}")),
                    )
                })?
            }
            None => toml::Table::new(),
        };
        let strings = [
            ("engine", engine),
            ("durability", durability),
            ("compression", compression),
            ("timestamp_type", timestamp_type),
            ("cleanup_policy", cleanup_policy),
        ];
        for (key, value) in strings {
            if let Some(value) = value {
                table.insert(key.into(), toml::Value::String(value.into()));
            }
        }
        let numbers = [
            ("segment_bytes", segment_bytes),
            ("retention_ms", retention_ms),
            ("retention_bytes", retention_bytes),
            ("retention_records", retention_records),
            ("delete_retention_ms", delete_retention_ms),
            ("min_compaction_lag_ms", min_compaction_lag_ms),
        ];
        for (key, value) in numbers {
            if let Some(value) = value {
                table.insert(key.into(), toml::Value::Integer(value));
            }
        }
        let resolved = if table.is_empty() {
            config.shard_options(None)
        } else {
            let text = toml::to_string(&table)
                .map_err(|e| to_pyerr(py, mqstore::Error::Internal(e.to_string())))?;
            config.shard_options(Some(&text))
        }
        .or_raise(py)?;
        let info = py
            .detach(|| self.inner.create_shard_with(name, resolved))
            .or_raise(py)?;
        Ok(info.into())
    }

    /// Creates the shards `names` (distinct, none existing), all with the
    /// store's defaults overlaid with `options` (TOML text of `[shard]`
    /// keys), all or none. The journal makes them durable with one write.
    #[pyo3(signature = (names, options=None))]
    fn create_shards(
        &self,
        py: Python<'_>,
        names: Vec<String>,
        options: Option<&str>,
    ) -> PyResult<()> {
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        py.detach(|| self.inner.create_shards(&names, options))
            .or_raise(py)
    }

    /// Deletes a shard, its records and its committed group offsets.
    fn delete_shard(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        py.detach(|| self.inner.delete_shard(name)).or_raise(py)
    }

    /// Names of all shards, sorted.
    fn list_shards(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        self.inner.list_shards().or_raise(py)
    }

    fn shard_info(&self, py: Python<'_>, name: &str) -> PyResult<PyShardInfo> {
        Ok(py
            .detach(|| self.inner.shard_info(name))
            .or_raise(py)?
            .into())
    }

    // ----------------------------------------------------------- appends

    /// Appends one record; returns its offset.
    #[pyo3(signature = (shard, value, *, key=None, headers=None, tags=None, timestamp_ms=0, expire_at_ms=None))]
    #[allow(clippy::too_many_arguments)]
    fn append<'py>(
        &self,
        py: Python<'py>,
        shard: &str,
        value: Bound<'py, PyAny>,
        key: Option<Bound<'py, PyAny>>,
        headers: Option<Bound<'py, PyAny>>,
        tags: Option<Bound<'py, PyAny>>,
        timestamp_ms: i64,
        expire_at_ms: Option<i64>,
    ) -> PyResult<i64> {
        let arena = Arena::new();
        let record = Fields {
            value: Some(value),
            key,
            headers,
            tags,
            timestamp_ms,
            expire_at_ms,
        }
        .borrow(&arena, Ctx(None))?;
        py.detach(|| self.inner.append(shard, &record)).or_raise(py)
    }

    /// Appends records as one atomic batch; returns the offset of the first.
    /// Each item is a bytes-like value, a dict (keys value, key, headers,
    /// tags, timestamp_ms, expire_at_ms), a Message or a Record.
    fn append_batch<'py>(
        &self,
        py: Python<'py>,
        shard: &str,
        records: &Bound<'py, PyAny>,
    ) -> PyResult<i64> {
        self.append_batch_with(py, shard, records, mqstore::Store::append_batch)
    }

    /// Appends records as one atomic batch like `append_batch` (same items,
    /// same validation) and returns the offset of the first as soon as the
    /// batch has its offsets — readers see it at once — without waiting for
    /// the shard's durability mode. The batch is acknowledged only when
    /// `wait_durable` returns for one of its offsets or a later one; keep a
    /// window of batches in flight and wait on the oldest.
    fn append_batch_nowait<'py>(
        &self,
        py: Python<'py>,
        shard: &str,
        records: &Bound<'py, PyAny>,
    ) -> PyResult<i64> {
        self.append_batch_with(py, shard, records, mqstore::Store::append_batch_nowait)
    }

    /// Appends RecordBatch v2 bytes as a Kafka producer sent them (one or
    /// more batches back to back): each is checked as Kafka's log validator
    /// checks client batches, nothing is stored when one is refused, and
    /// the batches are stored byte for byte but for the base offset, at
    /// consecutive offsets. Returns each batch's base offset. Acknowledged
    /// per the shard's durability mode, once for all of them.
    fn append_raw<'py>(
        &self,
        py: Python<'py>,
        shard: &str,
        data: &Bound<'py, PyAny>,
    ) -> PyResult<Vec<i64>> {
        self.append_raw_with(py, shard, data, mqstore::Store::append_raw)
    }

    /// `append_raw` that returns once the batches have their offsets, like
    /// `append_batch_nowait`; `wait_durable` on the last batch's last offset
    /// acknowledges them.
    fn append_raw_nowait<'py>(
        &self,
        py: Python<'py>,
        shard: &str,
        data: &Bound<'py, PyAny>,
    ) -> PyResult<Vec<i64>> {
        self.append_raw_with(py, shard, data, mqstore::Store::append_raw_nowait)
    }

    /// Appends a leader's batches (what a transfer of the leader's shard
    /// sent) to this follower's shard, byte for byte at the offsets they
    /// carry, which must continue the shard (or leave a compacted leader's
    /// gap, filled with an empty batch); control batches and producers'
    /// batches are copied as they are, and the producers' state follows.
    /// Returns the shard's next offset. The shard must have no other writer.
    fn append_replica<'py>(
        &self,
        py: Python<'py>,
        shard: &str,
        data: &Bound<'py, PyAny>,
    ) -> PyResult<i64> {
        let arena = Arena::new();
        let bytes = arena.require_bytes(data, &|| "data".to_string())?;
        py.detach(|| self.inner.append_replica(shard, bytes))
            .or_raise(py)
    }

    /// Cuts a follower's diverged tail: every batch at or after `offset`
    /// goes and the next append gets `offset` (within the watermarks, at a
    /// batch boundary). The producers' state follows.
    fn truncate_to(&self, py: Python<'_>, shard: &str, offset: i64) -> PyResult<()> {
        py.detach(|| self.inner.truncate_to(shard, offset))
            .or_raise(py)
    }

    /// Sets the partition leader epoch appends to `shard` write into each
    /// batch from now on (never lower than before). In memory only.
    fn set_leader_epoch(&self, py: Python<'_>, shard: &str, epoch: i32) -> PyResult<()> {
        py.detach(|| self.inner.set_leader_epoch(shard, epoch))
            .or_raise(py)
    }

    /// Blocks until the record at `offset` and every earlier record of
    /// `shard` is as durable as the shard's durability mode promises (none:
    /// buffered; os: handed to the kernel; fsync: fdatasynced). `offset`
    /// must be below the shard's next offset; deleted records count as
    /// durable.
    fn wait_durable(&self, py: Python<'_>, shard: &str, offset: i64) -> PyResult<()> {
        py.detach(|| self.inner.wait_durable(shard, offset))
            .or_raise(py)
    }

    // ------------------------------------------- event-loop notifications

    /// The store's durability descriptor (an eventfd), readable while
    /// completions wait for `poll_durable`. For event loops: asyncio users
    /// call `append_batch_async` / `wait_durable_async`, which use it.
    /// Never read or close it; it stays valid while the Store object lives.
    fn durable_fd(&self, py: Python<'_>) -> PyResult<i32> {
        py.detach(|| self.inner.durable_fd()).or_raise(py)
    }

    /// `append_batch_nowait`, plus a completion carrying `token` (an int
    /// of 64 bits) once the batch is durable; returns the base offset.
    fn append_batch_notify<'py>(
        &self,
        py: Python<'py>,
        shard: &str,
        records: &Bound<'py, PyAny>,
        token: u64,
    ) -> PyResult<i64> {
        let arena = Arena::new();
        let records: Vec<Record<'_>> = convert::records_from_iterable(&arena, records)?;
        py.detach(|| self.inner.append_batch_notify(shard, &records, token))
            .or_raise(py)
    }

    /// A completion carrying `token` once `offset` of `shard` (and every
    /// earlier record) is durable: `wait_durable` without blocking.
    fn watch_durable(&self, py: Python<'_>, shard: &str, offset: i64, token: u64) -> PyResult<()> {
        py.detach(|| self.inner.watch_durable(shard, offset, token))
            .or_raise(py)
    }

    /// Up to `max` ready completions, oldest first, as `(token, offset,
    /// error)` tuples (`error` is None for an acknowledgement, else the
    /// MqsError the wait would have raised). Never blocks.
    #[pyo3(signature = (max=1024))]
    fn poll_durable(&self, py: Python<'_>, max: i64) -> PyResult<Vec<PyCompletion>> {
        let max = limit(py, "max", max)?;
        if max == 0 {
            return Err(invalid_argument(py, "max must be at least 1".to_string()));
        }
        Ok(self
            .inner
            .poll_durable(max)
            .into_iter()
            .map(|c| {
                let error = c
                    .result
                    .err()
                    .map(|e| to_pyerr(py, e).into_value(py).into_any());
                (c.token, c.offset, error)
            })
            .collect())
    }

    /// `await store.append_batch_async(shard, records)`: appends like
    /// `append_batch_nowait` and resolves to the base offset once the batch
    /// is acknowledged (as durable as the shard's mode promises), without a
    /// thread per call: the running asyncio loop watches `durable_fd`.
    /// Batches resolve in the order they were appended.
    fn append_batch_async<'py>(
        slf: &Bound<'py, Self>,
        shard: &str,
        records: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let aio = slf.py().import("mqstore._aio")?;
        aio.call_method1("append_batch_async", (slf, shard, records))
    }

    /// `await store.wait_durable_async(shard, offset)`: `wait_durable` on
    /// the running asyncio loop, without blocking it or a thread.
    fn wait_durable_async<'py>(
        slf: &Bound<'py, Self>,
        shard: &str,
        offset: i64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let aio = slf.py().import("mqstore._aio")?;
        aio.call_method1("wait_durable_async", (slf, shard, offset))
    }

    // ------------------------------------------------------------- reads

    /// Reads up to `max_records` records (and about `max_bytes` of key,
    /// value and header bytes, at least one record) from `offset` on.
    #[pyo3(signature = (shard, offset, max_records=1000, max_bytes=1_048_576))]
    fn read(
        &self,
        py: Python<'_>,
        shard: &str,
        offset: i64,
        max_records: i64,
        max_bytes: i64,
    ) -> PyResult<PyReadResult> {
        let max_records = limit(py, "max_records", max_records)?;
        let max_bytes = limit(py, "max_bytes", max_bytes)?;
        let result = py
            .detach(|| self.inner.read(shard, offset, max_records, max_bytes))
            .or_raise(py)?;
        PyReadResult::new(py, result)
    }

    /// Live records whose key is one of `keys`, in offset order.
    #[pyo3(signature = (shard, keys, max_records=1000))]
    fn read_by_keys<'py>(
        &self,
        py: Python<'py>,
        shard: &str,
        keys: &Bound<'py, PyAny>,
        max_records: i64,
    ) -> PyResult<Bound<'py, PyList>> {
        let max_records = limit(py, "max_records", max_records)?;
        let arena = Arena::new();
        let keys = convert::keys_from_iterable(&arena, keys)?;
        let views = py
            .detach(|| self.inner.read_by_keys(shard, &keys, max_records))
            .or_raise(py)?;
        records_list(py, views)
    }

    /// Live records carrying `tag` with offset >= `from_offset`.
    #[pyo3(signature = (shard, tag, from_offset=0, max_records=1000))]
    fn read_by_tag(
        &self,
        py: Python<'_>,
        shard: &str,
        tag: &str,
        from_offset: i64,
        max_records: i64,
    ) -> PyResult<PyReadResult> {
        let max_records = limit(py, "max_records", max_records)?;
        let result = py
            .detach(|| self.inner.read_by_tag(shard, tag, from_offset, max_records))
            .or_raise(py)?;
        PyReadResult::new(py, result)
    }

    /// First offset whose timestamp is >= `timestamp_ms`; EARLIEST (-2) and
    /// LATEST (-1) give the low and high watermarks. None when no record is
    /// that recent.
    fn offset_for_timestamp(
        &self,
        py: Python<'_>,
        shard: &str,
        timestamp_ms: i64,
    ) -> PyResult<Option<i64>> {
        py.detach(|| self.inner.offset_for_timestamp(shard, timestamp_ms))
            .or_raise(py)
    }

    // ----------------------------------------------------------- deletes

    /// Moves the low watermark up to `offset`; returns the new low watermark.
    fn delete_records_before(&self, py: Python<'_>, shard: &str, offset: i64) -> PyResult<i64> {
        py.detach(|| self.inner.delete_records_before(shard, offset))
            .or_raise(py)
    }

    /// Runs a compacted shard's cleaner now (no I/O budget): below the
    /// lag and the newest batch only the newest record of each key stays,
    /// old tombstones go. Returns how many records went.
    fn compact(&self, py: Python<'_>, shard: &str) -> PyResult<u64> {
        py.detach(|| self.inner.compact(shard).map(|report| report.removed))
            .or_raise(py)
    }

    /// Deletes every record whose key is one of `keys`; returns the count.
    fn delete_by_keys<'py>(
        &self,
        py: Python<'py>,
        shard: &str,
        keys: &Bound<'py, PyAny>,
    ) -> PyResult<u64> {
        let arena = Arena::new();
        let keys = convert::keys_from_iterable(&arena, keys)?;
        py.detach(|| self.inner.delete_by_keys(shard, &keys))
            .or_raise(py)
    }

    /// Deletes the given offsets (absent ones are ignored); returns the count.
    fn delete_by_offsets(&self, py: Python<'_>, shard: &str, offsets: Vec<i64>) -> PyResult<u64> {
        py.detach(|| self.inner.delete_by_offsets(shard, &offsets))
            .or_raise(py)
    }

    // --------------------------------------------------------- transfers

    /// Plans a transfer of whole batches from `offset` (at most `max_bytes`,
    /// but at least one batch when any is stored).
    fn plan_transfer(
        &self,
        py: Python<'_>,
        shard: &str,
        offset: i64,
        max_bytes: i64,
    ) -> PyResult<PyTransfer> {
        let max_bytes = limit(py, "max_bytes", max_bytes)?;
        let plan = py
            .detach(|| self.inner.plan_transfer(shard, offset, max_bytes))
            .or_raise(py)?;
        Ok(PyTransfer::new(plan))
    }

    /// Plans and sends in one call, waiting while a non-blocking descriptor
    /// is full. Returns `(bytes_written, next_offset)`.
    fn sendfile_to_fd(
        &self,
        py: Python<'_>,
        shard: &str,
        offset: i64,
        max_bytes: i64,
        fd: &Bound<'_, PyAny>,
    ) -> PyResult<(u64, i64)> {
        let max_bytes = limit(py, "max_bytes", max_bytes)?;
        let fd = convert::extract_fd(fd)?;
        let result = py
            .detach(|| self.inner.sendfile_to_fd(shard, offset, max_bytes, fd))
            .or_raise(py)?;
        Ok((result.bytes_written, result.next_offset))
    }

    // ----------------------------------------------------- group offsets

    /// Records that `group` has consumed `shard` up to (not including) `offset`.
    fn commit_offset(&self, py: Python<'_>, group: &str, shard: &str, offset: i64) -> PyResult<()> {
        self.inner.commit_offset(group, shard, offset).or_raise(py)
    }

    /// The offset `group` committed for `shard`, or None.
    fn committed_offset(&self, py: Python<'_>, group: &str, shard: &str) -> PyResult<Option<i64>> {
        self.inner.committed_offset(group, shard).or_raise(py)
    }

    /// Forgets every offset of `group`; returns how many were removed.
    fn delete_group(&self, py: Python<'_>, group: &str) -> PyResult<u64> {
        self.inner.delete_group(group).or_raise(py)
    }

    // ------------------------------------------------------------- stats

    /// Store-wide statistics, or one shard's when `shard` is given.
    #[pyo3(signature = (shard=None))]
    fn stats<'py>(&self, py: Python<'py>, shard: Option<&str>) -> PyResult<Bound<'py, PyDict>> {
        let value = py
            .detach(|| match shard {
                Some(name) => self.inner.shard_stats(name),
                None => self.inner.stats(),
            })
            .or_raise(py)?;
        Ok(convert::json_to_py(py, &value)?.cast_into::<PyDict>()?)
    }
}

/// A planned transfer: exactly `total_bytes` bytes of whole Kafka
/// RecordBatches, covering offsets up to `next_offset - 1`, sent to a
/// descriptor or read into buffers (one progress for both). It holds its own
/// references to the bytes, so later appends, deletes or closing the store
/// change nothing it sends.
#[pyclass(module = "mqstore", name = "Transfer", frozen)]
pub struct PyTransfer {
    /// Locked only with the GIL released, so a blocked send never holds the
    /// GIL and a thread holding the GIL never waits for the lock.
    plan: Mutex<TransferPlan>,
    /// An unsent copy (the chunks are shared, not copied) for `bytes()`.
    snapshot: TransferPlan,
    sent: AtomicU64,
}

impl PyTransfer {
    fn new(plan: TransferPlan) -> Self {
        PyTransfer {
            snapshot: plan.clone(),
            plan: Mutex::new(plan),
            sent: AtomicU64::new(0),
        }
    }

    /// The plan, for one call. Only ever waited for with the GIL released.
    fn lock(&self) -> MutexGuard<'_, TransferPlan> {
        self.plan.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `step` on the locked plan, then publishes its progress.
    fn step<T>(
        &self,
        plan: &mut TransferPlan,
        step: impl FnOnce(&mut TransferPlan) -> mqstore::Result<T>,
    ) -> mqstore::Result<T> {
        let result = step(plan);
        self.sent.store(plan.sent_bytes(), Ordering::Release);
        result
    }

    fn run<T: Send>(
        &self,
        py: Python<'_>,
        fd: &Bound<'_, PyAny>,
        send: impl FnOnce(&mut TransferPlan, i32) -> mqstore::Result<T> + Send,
    ) -> PyResult<T> {
        let fd = convert::extract_fd(fd)?;
        if fd < 0 {
            return Err(invalid_argument(
                py,
                format!("file descriptor {fd} is invalid"),
            ));
        }
        py.detach(|| self.step(&mut self.lock(), |plan| send(plan, fd)))
            .or_raise(py)
    }

    /// `read_into` for a target that stays put while exported: the export
    /// taken here pins it, so the copy runs with the GIL released.
    fn read_into_released(&self, py: Python<'_>, target: WritableView) -> PyResult<usize> {
        let (address, len) = target.raw();
        let read = py.detach(|| {
            let buf: &mut [MaybeUninit<u8>] = if len == 0 {
                &mut []
            } else {
                // SAFETY: `target`, alive until this function returns, holds
                // the export, and the exporter keeps these `len` bytes
                // allocated and in place while it is held
                // (`stays_put_while_exported`); no other Rust code refers
                // to them.
                unsafe { std::slice::from_raw_parts_mut(address as *mut MaybeUninit<u8>, len) }
            };
            self.step(&mut self.lock(), |plan| plan.read_into_uninit(buf))
        });
        drop(target);
        read.or_raise(py)
    }

    /// `read_into` for any other target: written with the GIL held from
    /// its export to the end of the copy, so no Python code can free or
    /// move its memory meanwhile. The plan's lock is still waited for with
    /// the GIL released, then the GIL is taken back.
    fn read_into_holding_gil(&self, py: Python<'_>, target: &Bound<'_, PyAny>) -> PyResult<usize> {
        let target = target.as_unbound();
        py.detach(|| {
            let mut plan = self.lock();
            Python::attach(|py| {
                let mut view = WritableView::get(target.bind(py))?;
                self.step(&mut plan, |plan| {
                    plan.read_into_uninit(view.as_uninit_mut())
                })
                .or_raise(py)
            })
        })
    }
}

#[pymethods]
impl PyTransfer {
    #[getter]
    fn total_bytes(&self) -> u64 {
        self.snapshot.total_bytes()
    }

    /// The offset a consumer continues from after this transfer.
    #[getter]
    fn next_offset(&self) -> i64 {
        self.snapshot.next_offset()
    }

    #[getter]
    fn sent_bytes(&self) -> u64 {
        self.sent.load(Ordering::Acquire)
    }

    #[getter]
    fn complete(&self) -> bool {
        self.sent_bytes() == self.total_bytes()
    }

    /// Writes as much of the rest as `fd` accepts; returns the bytes written
    /// by this call. On a non-blocking descriptor that fills up it returns
    /// early with `complete` still False: call again when it is writable.
    fn send(&self, py: Python<'_>, fd: &Bound<'_, PyAny>) -> PyResult<u64> {
        self.run(py, fd, |plan, fd| plan.send_to_fd(fd).map(|p| p.written))
    }

    /// Sends the rest, waiting (poll) while a non-blocking `fd` is full;
    /// returns the bytes written by this call.
    fn send_all(&self, py: Python<'_>, fd: &Bound<'_, PyAny>) -> PyResult<u64> {
        self.run(py, fd, |plan, fd| plan.send_all_to_fd(fd))
    }

    /// Copies the next bytes of the transfer into `buffer` (any writable,
    /// contiguous buffer) and returns how many: as many as fit unless the
    /// transfer ends first, 0 only once it is complete. Shares progress
    /// with `send`. The GIL is released while copying into a bytearray,
    /// array.array or mmap.mmap (or a memoryview of one); any other buffer
    /// is written with the GIL held.
    fn read_into(&self, py: Python<'_>, buffer: &Bound<'_, PyAny>) -> PyResult<usize> {
        let target = WritableView::get(buffer)?;
        if stays_put_while_exported(buffer)? {
            self.read_into_released(py, target)
        } else {
            drop(target);
            self.read_into_holding_gil(py, buffer)
        }
    }

    /// Whether `read_into(buffer)` copies with the GIL released (for tests).
    #[staticmethod]
    fn _releases_gil_for(buffer: &Bound<'_, PyAny>) -> PyResult<bool> {
        stays_put_while_exported(buffer)
    }

    /// The planned bytes (all of them, whatever was sent), as `bytes`.
    fn bytes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let data = py.detach(|| self.snapshot.to_vec()).or_raise(py)?;
        Ok(PyBytes::new(py, &data))
    }

    fn __repr__(&self) -> String {
        format!(
            "<mqstore.Transfer {}/{} bytes sent, next_offset={}>",
            self.sent_bytes(),
            self.total_bytes(),
            self.next_offset()
        )
    }
}
