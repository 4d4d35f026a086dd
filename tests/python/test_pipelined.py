"""Pipelined appends: Store.append_batch_nowait keeps many batches in flight,
Store.wait_durable acknowledges them. Covers every built engine, reopening,
concurrent producers, the error paths and the release of the GIL."""

import os
from collections import deque

import pytest

import mqstore
from hybrid_helpers import HYBRID_TIERING
from thread_helpers import main_thread_ran_while_worker_busy, run_threads

BATCHES = 50
WINDOW = 8


def _values(shard, batch):
    """The values of batch `batch` of `shard`: 1 to 7 records of varied size."""
    return [f"{shard}-{batch:03d}-{i}-".encode() + bytes([batch % 251]) * (batch * 13 + i) for i in range(1 + batch % 7)]


def _pipeline(store, shard, batches=BATCHES, window=WINDOW):
    """Appends `batches` batches with at most `window` unacknowledged,
    waiting on the oldest when the window is full, then on the rest.
    Checks that each batch is readable as soon as the call returns and
    returns the list of (base offset, values)."""
    start = store.shard_info(shard).next_offset
    in_flight = deque()  # last offset of each unacknowledged batch
    appended = []
    for b in range(batches):
        if len(in_flight) == window:
            assert store.wait_durable(shard, in_flight.popleft()) is None
        values = _values(shard, b)
        base = store.append_batch_nowait(shard, values)
        assert isinstance(base, int)
        # Readable at once, acknowledged or not.
        page = store.read(shard, base, max_records=len(values), max_bytes=1 << 30)
        assert [bytes(r.value) for r in page] == values
        assert [r.offset for r in page] == list(range(base, base + len(values)))
        appended.append((base, values))
        in_flight.append(base + len(values) - 1)
        assert len(in_flight) <= window
    while in_flight:
        store.wait_durable(shard, in_flight.popleft())
    # Dense and increasing: each batch starts where the previous one ended.
    expected = start
    for base, values in appended:
        assert base == expected
        expected += len(values)
    assert store.shard_info(shard).next_offset == expected
    return appended


def _check_contents(store, shard, appended):
    first = appended[0][0]
    want = [(base + i, v) for base, values in appended for i, v in enumerate(values)]
    got = []
    offset = first
    while True:
        page = store.read(shard, offset, max_records=1000, max_bytes=1 << 30)
        if not page.records:
            break
        got.extend((r.offset, bytes(r.value)) for r in page)
        offset = page.next_offset
    assert got == want


@pytest.mark.parametrize("durability", ["fsync", "os", "none"])
def test_journal_pipeline_survives_reopen(tmp_path, durability):
    path = tmp_path / "store"
    with mqstore.Store(path) as store:
        info = store.create_shard("j", durability=durability)
        assert (info.engine, info.durability) == ("journal", durability)
        appended = _pipeline(store, "j")
        _check_contents(store, "j", appended)
        if durability == "fsync":
            stats = store.stats("j")["engine_stats"]["journal"]
            assert stats["fdatasyncs"] > 0, stats
        # Every offset is acknowledged now; waiting again returns at once.
        for base, values in appended:
            store.wait_durable("j", base)
            store.wait_durable("j", base + len(values) - 1)
    with mqstore.Store(path) as store:
        info = store.shard_info("j")
        assert (info.first_offset, info.next_offset) == (0, sum(len(v) for _, v in appended))
        _check_contents(store, "j", appended)
        # Appends continue after the recovered records.
        more = _pipeline(store, "j", batches=10, window=3)
        assert more[0][0] == info.next_offset
        _check_contents(store, "j", appended + more)


def test_default_shard_is_pipelined_journal_with_fsync(store, shard):
    info = store.shard_info(shard)
    assert (info.engine, info.durability) == ("journal", "fsync")
    _check_contents(store, shard, _pipeline(store, shard))


def test_memory_pipeline(store):
    info = store.create_shard("m", engine="memory")
    assert (info.engine, info.durability) == ("memory", "none")
    appended = _pipeline(store, "m")
    _check_contents(store, "m", appended)


@pytest.mark.parametrize("durability", ["fsync", "os", "none"])
def test_file_engine_pipeline_survives_reopen(tmp_path, durability):
    path = tmp_path / "edge"
    with mqstore.Store(path, 'preset = "edge"') as store:
        info = store.create_shard("f", segment_bytes=65536, durability=durability)
        assert (info.engine, info.durability) == ("file", durability)
        appended = _pipeline(store, "f")
        _check_contents(store, "f", appended)
        assert store.stats("f")["engine_stats"]["segments"] > 1
    with mqstore.Store(path, 'preset = "edge"') as store:
        assert store.shard_info("f").next_offset == sum(len(v) for _, v in appended)
        _check_contents(store, "f", appended)
        more = _pipeline(store, "f", batches=5, window=2)
        _check_contents(store, "f", appended + more)


def test_nowait_and_blocking_appends_interleave(store, shard):
    # append_batch on a shard with batches in flight takes the next offsets
    # and waits for its own durability; the earlier nowait batches are
    # readable and acknowledged by a wait on the last offset.
    a = store.append_batch_nowait(shard, [b"a0", b"a1"])
    b = store.append_batch(shard, [b"b0"])
    c = store.append_batch_nowait(shard, [b"c0", b"c1", b"c2"])
    assert (a, b, c) == (0, 2, 3)
    store.wait_durable(shard, 5)
    assert [bytes(r.value) for r in store.read(shard, 0)] == [b"a0", b"a1", b"b0", b"c0", b"c1", b"c2"]


def test_nowait_accepts_every_record_form(store, shard):
    records = [
        b"plain",
        bytearray(b"ba"),
        memoryview(b"xmvx")[1:3],
        {"value": b"d", "key": b"k", "headers": [("h", b"1")], "tags": ["eu"], "timestamp_ms": 7},
        mqstore.Message(b"m", key=b"mk", expire_at_ms=4_102_444_800_000),
    ]
    base = store.append_batch_nowait(shard, records)
    store.wait_durable(shard, base + len(records) - 1)
    got = store.read(shard, base).records
    assert [bytes(r.value) for r in got] == [b"plain", b"ba", b"mv", b"d", b"m"]
    assert bytes(got[3].key) == b"k" and got[3].tags == ["eu"] and got[3].timestamp_ms == 7
    assert [(k, bytes(v)) for k, v in got[3].headers] == [("h", b"1")]
    assert bytes(got[4].key) == b"mk" and got[4].expire_at_ms == 4_102_444_800_000
    # A stored Record is accepted too, as by append_batch.
    again = store.append_batch_nowait(shard, [got[3]])
    store.wait_durable(shard, again)
    copy = store.read(shard, again).records[0]
    assert (bytes(copy.value), bytes(copy.key), copy.tags) == (b"d", b"k", ["eu"])


# ---------------------------------------------------------------- threads


def test_threads_pipeline_into_their_own_shards(tmp_path):
    threads_count = 4
    path = tmp_path / "store"
    results = {}
    with mqstore.Store(path) as store:
        names = [f"t{i}" for i in range(threads_count)]
        for name in names:
            store.create_shard(name)

        def worker(index):
            results[names[index]] = _pipeline(store, names[index], batches=30)

        run_threads(worker, threads_count)
        assert sorted(results) == names
        for name in names:
            _check_contents(store, name, results[name])
    with mqstore.Store(path) as store:
        for name in names:
            _check_contents(store, name, results[name])


def test_threads_pipeline_into_one_shard(store, shard):
    # Concurrent producers on one shard: every batch gets its own dense
    # range, and each producer's waits acknowledge its batches.
    threads_count = 4
    bases = {i: [] for i in range(threads_count)}

    def worker(tid):
        in_flight = deque()
        for b in range(25):
            values = [f"{tid}-{b}-{i}".encode() for i in range(3)]
            base = store.append_batch_nowait(shard, values)
            bases[tid].append(base)
            in_flight.append(base + 2)
            if len(in_flight) > WINDOW:
                store.wait_durable(shard, in_flight.popleft())
        while in_flight:
            store.wait_durable(shard, in_flight.popleft())

    run_threads(worker, threads_count)
    all_bases = sorted(b for lst in bases.values() for b in lst)
    assert all_bases == list(range(0, threads_count * 25 * 3, 3))
    for tid, lst in bases.items():
        assert lst == sorted(lst)
        for b, base in enumerate(lst):
            page = store.read(shard, base, max_records=3)
            assert [bytes(r.value) for r in page] == [f"{tid}-{b}-{i}".encode() for i in range(3)]


def test_append_batch_nowait_releases_the_gil(store):
    # zstd compression of an 8 MiB batch keeps each call busy for
    # milliseconds with the GIL released.
    store.create_shard("z", compression="zstd")
    big = [bytes(range(256)) * 4] * 8192
    assert main_thread_ran_while_worker_busy(lambda: store.append_batch_nowait("z", big), calls=5) < 5


def test_wait_durable_releases_the_gil(store):
    # A 7 MiB batch of random bytes takes the flushers milliseconds to write
    # and fdatasync; the worker waits for it from its first instruction. (It
    # stays under the journal's 8 MiB pipelining bound: past it the append
    # writes the buffer itself and only the fdatasync is left to wait for.)
    # A wait that kept the GIL would never let the main thread in first, so
    # a retry cannot hide that; it only absorbs a flusher fast enough to
    # finish before the worker thread started.
    store.create_shard("w")
    for _ in range(20):
        values = [os.urandom(512 * 1024) for _ in range(14)]
        base = store.append_batch_nowait("w", values)
        last = base + len(values) - 1
        if main_thread_ran_while_worker_busy(lambda: store.wait_durable("w", last), calls=1) == 0:
            break
    else:
        pytest.fail("the main thread never ran while wait_durable was waiting")


# ----------------------------------------------------------------- errors


def test_unknown_shard(store):
    for call in (
        lambda: store.append_batch_nowait("nope", [b"v"]),
        lambda: store.wait_durable("nope", 0),
    ):
        with pytest.raises(mqstore.ShardNotFound) as info:
            call()
        assert info.value.status == mqstore.Status.SHARD_NOT_FOUND
        assert str(info.value) == "shard not found: 'nope'"
        assert isinstance(info.value, LookupError)


def test_record_and_batch_too_large(tmp_path):
    config = "[store]\nmax_record_bytes = 1024\nmax_batch_bytes = 4096\n"
    with mqstore.Store(tmp_path, config) as store:
        store.create_shard("s")
        with pytest.raises(mqstore.RecordTooLarge) as info:
            store.append_batch_nowait("s", [b"ok", b"x" * 2000])
        assert "exceeds the limit of 1024 bytes" in str(info.value)
        assert isinstance(info.value, ValueError)
        with pytest.raises(mqstore.RecordTooLarge, match="4096"):
            store.append_batch_nowait("s", [b"x" * 1000] * 10)
        # Atomic: nothing of the failed batches was stored.
        assert store.shard_info("s").next_offset == 0
        assert store.append_batch_nowait("s", [b"x" * 900]) == 0


def test_empty_batch_is_refused_as_by_append_batch(store, shard):
    with pytest.raises(mqstore.InvalidArgument) as blocking:
        store.append_batch(shard, [])
    with pytest.raises(mqstore.InvalidArgument) as nowait:
        store.append_batch_nowait(shard, [])
    assert str(nowait.value) == str(blocking.value)
    assert "at least one record" in str(nowait.value)
    assert store.shard_info(shard).next_offset == 0


def test_wrong_argument_types(store, shard):
    with pytest.raises(TypeError):
        store.append_batch_nowait(shard, 5)
    with pytest.raises(TypeError):
        store.append_batch_nowait(shard, [b"ok", 5])
    with pytest.raises(TypeError):
        store.wait_durable(shard, "0")
    assert store.shard_info(shard).next_offset == 0


def test_reserved_header_is_refused(store, shard):
    with pytest.raises(mqstore.InvalidArgument, match="record 1"):
        store.append_batch_nowait(shard, [b"ok", {"value": b"v", "headers": {"__mqs.x": None}}])
    assert store.shard_info(shard).next_offset == 0


ENGINES = ["journal", "memory", "file", "rocksdb", "mysql", "redis", "s3", "hybrid"]


@pytest.fixture
def tiering_store(tmp_path):
    """A store whose hybrid shards move their data to the cold tier within
    milliseconds (the other engines ignore the section)."""
    with mqstore.Store(tmp_path / "store", HYBRID_TIERING) as s:
        yield s


@pytest.mark.parametrize("engine", ENGINES)
def test_wait_durable_offset_out_of_range(tiering_store, engine):
    store = tiering_store
    store.create_shard("s", engine=engine)
    # An empty shard has no offset to wait for.
    with pytest.raises(mqstore.OffsetOutOfRange) as empty:
        store.wait_durable("s", 0)
    assert "offset 0 was never appended to shard 's' (its next offset is 0)" in str(empty.value)
    base = store.append_batch_nowait("s", [b"a", b"b", b"c"])
    assert base == 0
    # The class of the other out-of-range errors (read).
    with pytest.raises(mqstore.OffsetOutOfRange) as read_error:
        store.read("s", 4)
    for offset in (-1, 3, 100):
        with pytest.raises(mqstore.OffsetOutOfRange) as info:
            store.wait_durable("s", offset)
        assert type(info.value) is type(read_error.value)
        assert info.value.status == mqstore.Status.OFFSET_OUT_OF_RANGE
        assert isinstance(info.value, LookupError)
        assert f"offset {offset} was never appended to shard 's' (its next offset is 3)" in str(
            info.value
        )
    store.wait_durable("s", 2)


@pytest.mark.parametrize("engine", ENGINES)
def test_wait_durable_on_deleted_offsets(tiering_store, engine):
    store = tiering_store
    store.create_shard("s", engine=engine)
    for b in range(4):
        assert store.append_batch_nowait("s", [b"v%d" % b] * 5) == b * 5
    assert store.delete_records_before("s", 12) == 12
    for offset in (0, 4, 5, 11):
        assert store.wait_durable("s", offset) is None
    assert store.delete_by_offsets("s", [13]) == 1
    store.wait_durable("s", 13)
    store.wait_durable("s", 19)
    with pytest.raises(mqstore.OffsetOutOfRange):
        store.wait_durable("s", 20)
    assert [r.offset for r in store.read("s", 12)] == [12, 14, 15, 16, 17, 18, 19]


def test_closed_store(tmp_path):
    store = mqstore.Store(tmp_path)
    store.create_shard("s")
    base = store.append_batch_nowait("s", [b"v"])
    store.close()  # flushes what is in flight
    for call in (
        lambda: store.append_batch_nowait("s", [b"v"]),
        lambda: store.wait_durable("s", base),
    ):
        with pytest.raises(mqstore.StoreClosed, match="store is closed") as info:
            call()
        assert info.value.status == mqstore.Status.CLOSED
    with mqstore.Store(tmp_path) as reopened:
        assert [bytes(r.value) for r in reopened.read("s", 0)] == [b"v"]
