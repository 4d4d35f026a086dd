"""Threads sharing one Store: concurrent appends get dense, unique offsets;
readers see consistent data; close() races cleanly; and appends and reads
release the GIL."""

import threading
from collections import defaultdict

import pytest

import mqstore
from thread_helpers import main_thread_ran_while_worker_busy, run_threads

THREADS = 8
SHARDS = ["s0", "s1", "s2", "s3"]


def test_concurrent_appends_get_dense_unique_offsets(store):
    for name in SHARDS:
        store.create_shard(name)
    written = defaultdict(dict)  # shard -> offset -> value
    lock = threading.Lock()

    def worker(tid):
        mine = []
        for i in range(150):
            shard = SHARDS[(tid + i) % len(SHARDS)]
            if i % 3 == 0:
                value = b"t%d-i%d" % (tid, i)
                offset = store.append(shard, value, key=b"t%d" % tid)
                mine.append((shard, offset, [value]))
            else:
                values = [b"t%d-i%d-%d" % (tid, i, j) for j in range(1 + i % 7)]
                base = store.append_batch(shard, values)
                mine.append((shard, base, values))
        with lock:
            for shard, base, values in mine:
                for j, value in enumerate(values):
                    assert base + j not in written[shard], "offset handed out twice"
                    written[shard][base + j] = value

    run_threads(worker, THREADS)

    for shard in SHARDS:
        offsets = sorted(written[shard])
        info = store.shard_info(shard)
        assert offsets == list(range(info.next_offset)), "offsets must be dense"
        assert info.records == len(offsets)
        stored = {}
        offset = 0
        while offset < info.next_offset:
            page = store.read(shard, offset, max_records=500)
            stored.update((r.offset, bytes(r.value)) for r in page)
            offset = page.next_offset
        assert stored == written[shard]


def test_batches_stay_contiguous_under_contention(store, shard):
    bases = []
    lock = threading.Lock()

    def worker(tid):
        for _ in range(100):
            base = store.append_batch(shard, [bytes([tid])] * 10)
            with lock:
                bases.append((base, tid))

    run_threads(worker, THREADS)
    # Each batch is atomic: its 10 records are consecutive and all its own.
    result = {}
    offset = 0
    while True:
        page = store.read(shard, offset, max_records=1000)
        if not page.records:
            break
        result.update((r.offset, bytes(r.value)) for r in page)
        offset = page.next_offset
    assert len(result) == THREADS * 100 * 10
    for base, tid in bases:
        assert base % 10 == 0
        assert all(result[base + j] == bytes([tid]) for j in range(10))


def test_readers_and_writers_together(store, shard):
    writers_done = threading.Event()

    def writer(_):
        for i in range(300):
            store.append_batch(shard, [b"%d" % i] * 3)

    def reader(_):
        offset = 0
        while True:
            finished = writers_done.is_set()
            page = store.read(shard, offset, max_records=64)
            offsets = [r.offset for r in page]
            assert offsets == list(range(offset, offset + len(offsets))), "gap in a read"
            offset = page.next_offset
            if finished and not page.records:
                break
        assert offset == store.shard_info(shard).next_offset

    writers = threading.Thread(target=lambda: (run_threads(writer, 4), writers_done.set()))
    writers.start()
    try:
        run_threads(reader, 3)
    finally:
        writers.join()
    assert store.shard_info(shard).next_offset == 4 * 300 * 3


def test_close_while_threads_work(tmp_path):
    store = mqstore.Store(tmp_path)
    for name in SHARDS:
        store.create_shard(name)
    started = threading.Barrier(THREADS + 1)
    outcomes = defaultdict(int)
    lock = threading.Lock()

    def worker(tid):
        started.wait()
        n = 0
        while True:
            try:
                store.append_batch(SHARDS[tid % len(SHARDS)], [b"x"] * 8)
                store.read(SHARDS[tid % len(SHARDS)], 0, max_records=16)
                n += 1
            except mqstore.StoreClosed:
                break
        with lock:
            outcomes["calls"] += n

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    started.wait()
    store.close()
    for t in threads:
        t.join(timeout=60)
        assert not t.is_alive()
    assert store.closed
    store.close()


def test_concurrent_shard_lifecycle(store):
    def worker(tid):
        for round_ in range(30):
            name = "t%d-r%d" % (tid, round_)
            store.create_shard(name)
            store.append_batch(name, [b"v"] * 5)
            store.commit_offset("g%d" % tid, name, 5)
            assert store.committed_offset("g%d" % tid, name) == 5
            if round_ % 2 == 0:
                store.delete_shard(name)

    run_threads(worker, THREADS)
    assert len(store.list_shards()) == THREADS * 15


def test_append_batch_while_another_thread_mutates_the_list(store, shard):
    # append_batch borrows the items' memory while the GIL is released; a
    # thread replacing the list's items (freeing the old ones) meanwhile
    # must not corrupt what is stored.
    values = [bytes([i]) * 4096 for i in range(64)]
    shared = list(values)
    stop = threading.Event()

    def mutator():
        while not stop.is_set():
            fresh = [bytes(bytearray(v)) for v in values]  # new objects
            shared[:] = fresh
            del fresh
            shared.reverse()

    thread = threading.Thread(target=mutator)
    thread.start()
    try:
        for _ in range(300):
            store.append_batch(shard, shared)
    finally:
        stop.set()
        thread.join()
    allowed = set(values)
    offset = 0
    while True:
        page = store.read(shard, offset, max_records=1000, max_bytes=1 << 30)
        if not page.records:
            break
        assert all(bytes(r.value) in allowed for r in page)
        offset = page.next_offset
    assert offset == 300 * 64


# The probe needs calls that work for milliseconds with the GIL released,
# so that the waiting main thread is surely scheduled meanwhile: zstd
# compression of an 8 MiB batch, and its decompression on read.
BIG_BATCH = [bytes(range(256)) * 4] * 8192


def test_append_batch_releases_the_gil(store):
    store.create_shard("z", compression="zstd")
    assert main_thread_ran_while_worker_busy(lambda: store.append_batch("z", BIG_BATCH), calls=5) < 5


def test_read_releases_the_gil(store):
    store.create_shard("z", compression="zstd")
    store.append_batch("z", BIG_BATCH)
    assert main_thread_ran_while_worker_busy(lambda: store.read("z", 0, max_records=1), calls=5) < 5


def test_gil_probe_controls():
    # The probe above distinguishes the two cases: a call that keeps the GIL
    # (pure-Python work) never lets the main thread in before the worker
    # ends; a call that releases it (a timed lock wait) does.
    assert main_thread_ran_while_worker_busy(lambda: sum(range(20000))) == 20
    never = threading.Semaphore(0)
    assert main_thread_ran_while_worker_busy(lambda: never.acquire(timeout=0.005)) < 20
