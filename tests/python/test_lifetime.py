"""Reads are zero-copy views of the stored bytes, and those views stay valid
for as long as Python references them: after close, after the store object
is gone, after the shard is deleted."""

import ctypes
import gc
import weakref

import pytest

import mqstore


def _fill(store, shard="s", n=50):
    store.create_shard(shard)
    values = [bytes([i]) * (100 + i) for i in range(n)]
    store.append_batch(
        shard,
        [{"value": v, "key": b"k%d" % i, "headers": {"h": b"x%d" % i}} for i, v in enumerate(values)],
    )
    return values


def _snapshot(records):
    return [
        (bytes(r.value), bytes(r.key), [(n, bytes(v)) for n, v in r.headers]) for r in records
    ]


def test_memoryviews_valid_after_close(tmp_path):
    store = mqstore.Store(tmp_path)
    values = _fill(store)
    records = store.read("s", 0).records
    views = [r.value for r in records]
    keys = [r.key for r in records]
    headers = [r.headers for r in records]
    store.close()
    assert [bytes(v) for v in views] == values
    assert [bytes(k) for k in keys] == [b"k%d" % i for i in range(50)]
    assert [bytes(h[0][1]) for h in headers] == [b"x%d" % i for i in range(50)]
    # New views from the records still work too.
    assert [bytes(r.value) for r in records] == values


def test_memoryviews_valid_after_store_is_collected(tmp_path):
    store = mqstore.Store(tmp_path)
    values = _fill(store)
    views = [r.value for r in store.read("s", 0)]
    ref = weakref.ref(store)
    del store
    gc.collect()
    assert ref() is None
    # The directory lock was released when the store was dropped.
    mqstore.Store(tmp_path).close()
    # Churn the allocator so freed memory would be reused and overwritten.
    junk = [bytearray(b"\xee" * 1000) for _ in range(2000)]
    assert [bytes(v) for v in views] == values
    del junk


def test_memoryviews_valid_after_shard_is_deleted(store):
    values = _fill(store)
    views = [r.value for r in store.read("s", 0)]
    store.delete_shard("s")
    _fill(store)  # a new shard of the same name
    store.delete_records_before("s", 50)
    assert [bytes(v) for v in views] == values


def test_memoryviews_valid_after_records_are_deleted_or_retained(tmp_path):
    with mqstore.Store(tmp_path, "[shard]\nretention_records = 10\n") as store:
        values = _fill(store, n=10)
        views = [r.value for r in store.read("s", 0)]
        store.delete_by_offsets("s", list(range(5)))
        store.append_batch("s", [b"new"] * 40)  # retention drops the old batch
        assert store.shard_info("s").first_offset > 0
        assert [bytes(v) for v in views] == values


def test_memoryviews_are_read_only(store):
    _fill(store)
    (record,) = store.read("s", 0, max_records=1)
    view = record.value
    assert view.readonly
    with pytest.raises(TypeError):
        view[0] = 1
    with pytest.raises(TypeError):
        memoryview(view.obj)[0] = 1
    with pytest.raises(TypeError, match="not writable"):
        ctypes.c_char.from_buffer(view.obj)  # asks for a writable buffer


def test_memoryview_outlives_its_record_and_buffer(store):
    values = _fill(store)
    view = store.read("s", 0).records[3].value
    gc.collect()
    assert bytes(view) == values[3]
    assert len(view.obj) == len(values[3])
    assert bytes(view.obj) == values[3]
    assert view.format == "B" and view.itemsize == 1 and view.ndim == 1
    assert view.tobytes() == values[3]
    assert view[:3].tobytes() == values[3][:3]


def test_reads_are_zero_copy(store):
    values = _fill(store)
    first = store.read("s", 0).records
    second = store.read("s", 0).records
    for a, b, value in zip(first, second, values):
        # Two reads expose the same memory: the stored batch itself.
        assert a.value.obj._address == b.value.obj._address
        assert a.key.obj._address == b.key.obj._address
        assert a.headers[0][1].obj._address == b.headers[0][1].obj._address
        assert bytes(a.value) == value
    # Records of one batch are slices of one buffer, laid out in order.
    addresses = [r.value.obj._address for r in first]
    assert addresses == sorted(addresses)
    span = addresses[-1] + len(values[-1]) - addresses[0]
    assert span < sum(map(len, values)) * 2


def test_lookups_share_the_same_memory(store):
    _fill(store)
    (by_key,) = store.read_by_keys("s", [b"k7"])
    (by_offset,) = store.read("s", 7, max_records=1)
    assert by_key.value.obj._address == by_offset.value.obj._address


def test_transfer_outlives_store(tmp_path):
    store = mqstore.Store(tmp_path)
    _fill(store)
    plan = store.plan_transfer("s", 0, 1 << 20)
    expected = plan.bytes()
    store.delete_shard("s")
    store.close()
    del store
    gc.collect()
    assert plan.bytes() == expected
    assert plan.total_bytes == len(expected)
