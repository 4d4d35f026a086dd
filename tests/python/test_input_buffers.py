"""Calls read the caller's buffers with the GIL released, so a buffer
another thread could change meanwhile (a bytearray, a writable memoryview,
an array, a writable mmap, a read-only view of any of them) is copied while
the call still holds the GIL: what is stored is what the buffer held when
the call took it. Here the change comes from the caller's own generator,
after the call took the buffer and before it releases the GIL to append:
deterministic, where another thread would be a race."""

import array
import mmap

import pytest

ORIGINAL = b"AAAA"
CHANGED = b"BBBB"


def _bytearray():
    buf = bytearray(ORIGINAL)
    return buf, lambda: buf.__setitem__(slice(None), CHANGED)


def _memoryview():
    base = bytearray(ORIGINAL)
    return memoryview(base), lambda: base.__setitem__(slice(None), CHANGED)


def _memoryview_slice():
    base = bytearray(b"x" + ORIGINAL + b"x")
    return memoryview(base)[1:5], lambda: base.__setitem__(slice(1, 5), CHANGED)


def _read_only_view():
    base = bytearray(ORIGINAL)
    return memoryview(base).toreadonly(), lambda: base.__setitem__(slice(None), CHANGED)


def _array():
    buf = array.array("B", ORIGINAL)
    return buf, lambda: buf.__setitem__(slice(None), array.array("B", CHANGED))


def _mmap():
    buf = mmap.mmap(-1, len(ORIGINAL))
    buf[:] = ORIGINAL
    return buf, lambda: buf.__setitem__(slice(None), CHANGED)


MUTABLE = [_bytearray, _memoryview, _memoryview_slice, _read_only_view, _array, _mmap]
IDS = ["bytearray", "memoryview", "memoryview-slice", "readonly-view", "array", "mmap"]


def _taken_then_changed(buf, change, tail):
    """Yields `buf`, changes it once the call has taken it, then `tail`."""
    yield buf
    change()
    yield tail


@pytest.mark.parametrize("make", MUTABLE, ids=IDS)
def test_a_mutable_value_is_stored_as_it_was_when_taken(store, shard, make):
    buf, change = make()
    store.append_batch(shard, _taken_then_changed(buf, change, b"next"))
    values = [bytes(r.value) for r in store.read(shard, 0).records]
    assert values == [ORIGINAL, b"next"]


@pytest.mark.parametrize("make", MUTABLE, ids=IDS)
def test_keys_and_header_values_are_taken_the_same_way(store, shard, make):
    key, change_key = make()
    header, change_header = make()

    def records():
        yield {"value": b"v", "key": key, "headers": [("h", header)]}
        change_key()
        change_header()
        yield b"next"

    store.append_batch(shard, records())
    record = store.read(shard, 0).records[0]
    assert bytes(record.key) == ORIGINAL
    assert bytes(record.headers[0][1]) == ORIGINAL


@pytest.mark.parametrize("make", MUTABLE, ids=IDS)
def test_lookup_keys_are_taken_the_same_way(store, shard, make):
    store.append(shard, b"v", key=ORIGINAL)
    store.append(shard, b"w", key=CHANGED)
    key, change = make()
    found = store.read_by_keys(shard, _taken_then_changed(key, change, b"absent"))
    assert [bytes(r.value) for r in found] == [b"v"]


def test_bytes_values_are_stored_unchanged(store, shard):
    values = [b"a" * 100, memoryview(b"xbcx")[1:3]]
    store.append_batch(shard, values)
    assert [bytes(r.value) for r in store.read(shard, 0).records] == [b"a" * 100, b"bc"]


def test_read_only_exporters_are_borrowed_not_copied(tmp_path, store, shard):
    # A read-only mapping of a file changes when the file does: that it
    # is borrowed shows as the store reading the change, made here (with
    # the GIL held) after the call took the buffer.
    path = tmp_path / "data"
    path.write_bytes(ORIGINAL)
    with open(path, "r+b") as file:
        reader = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        writer = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_WRITE)
    change = lambda: writer.__setitem__(slice(None), CHANGED)  # noqa: E731
    store.append_batch(shard, _taken_then_changed(reader, change, b"next"))
    assert bytes(store.read(shard, 0).records[0].value) == CHANGED
