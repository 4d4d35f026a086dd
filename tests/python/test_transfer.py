"""Transfers of stored batches to descriptors: plans, blocking and
non-blocking sends with resume, sendfile_to_fd, and the GIL being released
while a send blocks. Reads of a plan into writable buffers (read_into):
every kind of target, mixed with sends, errors, and which targets are
written with the GIL released."""

import array
import ctypes
import mmap
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading

import pytest

import mqstore

BIG_VALUE = bytes(range(256)) * 256  # 64 KiB


def _recv_exactly(sock, n):
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(1 << 20, n - got))
        assert chunk, f"peer closed after {got} of {n} bytes"
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _reader(sock, n):
    """Receives n bytes on a thread; returns a function giving them."""
    out = {}
    thread = threading.Thread(target=lambda: out.setdefault("data", _recv_exactly(sock, n)))
    thread.start()

    def result():
        thread.join(timeout=60)
        assert not thread.is_alive()
        return out["data"]

    return result


def _fill_big(store, shard="s", batches=64, per_batch=1):
    """`batches` batches of `per_batch` 64 KiB records (4 MiB by default)."""
    store.create_shard(shard)
    for _ in range(batches):
        store.append_batch(shard, [BIG_VALUE] * per_batch)


def test_plan_and_send_blocking(store, shard):
    store.append_batch(shard, [b"a" * 100, b"b" * 100])
    store.append(shard, b"c", key=b"k")
    plan = store.plan_transfer(shard, 0, 1 << 20)
    assert plan.next_offset == 3
    assert plan.sent_bytes == 0 and not plan.complete
    assert plan.total_bytes == len(plan.bytes()) > 200
    a, b = socket.socketpair()
    with a, b:
        assert plan.send(a) == plan.total_bytes
        assert plan.complete and plan.sent_bytes == plan.total_bytes
        assert _recv_exactly(b, plan.total_bytes) == plan.bytes()
        assert plan.send(a) == 0  # nothing left
    assert "next_offset=3" in repr(plan)


def test_empty_plan(store, shard):
    plan = store.plan_transfer(shard, 0, 1000)
    assert (plan.total_bytes, plan.next_offset, plan.complete) == (0, 0, True)
    assert plan.bytes() == b""
    store.append(shard, b"x")
    plan = store.plan_transfer(shard, 1, 1000)
    assert (plan.total_bytes, plan.next_offset) == (0, 1)
    a, b = socket.socketpair()
    with a, b:
        assert plan.send(a) == 0
        assert store.sendfile_to_fd(shard, 1, 1000, a) == (0, 1)


def test_plans_cover_whole_batches_and_chain(store, shard):
    for i in range(10):
        store.append_batch(shard, [b"%d" % i * 50] * 3)  # batches of 3 records
    full = store.plan_transfer(shard, 0, 1 << 30)
    assert full.next_offset == 30
    pieces, offset = [], 0
    while offset < 30:
        plan = store.plan_transfer(shard, offset, 1)  # at least one batch
        assert plan.next_offset > offset
        assert plan.next_offset % 3 == 0  # whole batches only
        pieces.append(plan.bytes())
        offset = plan.next_offset
    assert b"".join(pieces) == full.bytes()
    # A budget of three batches' bytes fits exactly three batches.
    one = len(pieces[0])
    assert store.plan_transfer(shard, 0, 3 * one).next_offset == 9


def test_plan_is_fixed_at_planning_time(store, shard):
    store.append_batch(shard, [b"x" * 10] * 5)
    plan = store.plan_transfer(shard, 0, 1 << 20)
    expected = plan.bytes()
    store.append_batch(shard, [b"later"] * 5)
    store.delete_by_offsets(shard, [0, 1])
    store.delete_records_before(shard, 4)
    assert plan.total_bytes == len(expected)
    assert plan.next_offset == 5
    a, b = socket.socketpair()
    with a, b:
        plan.send(a.fileno())
        assert _recv_exactly(b, len(expected)) == expected


def test_non_blocking_send_resumes(store):
    _fill_big(store)
    plan = store.plan_transfer("s", 0, 1 << 30)
    expected = plan.bytes()
    assert plan.total_bytes == len(expected) > 4 << 20
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        b.setblocking(False)
        received, partial_sends, calls = bytearray(), 0, 0
        while not plan.complete:
            before = plan.sent_bytes
            written = plan.send(a)
            calls += 1
            assert plan.sent_bytes == before + written
            if not plan.complete:
                partial_sends += 1
            while True:  # drain what arrived so the next send makes progress
                try:
                    chunk = b.recv(1 << 20)
                except BlockingIOError:
                    break
                received += chunk
            assert calls < 100_000
        while len(received) < len(expected):
            received += b.recv(1 << 20)
    assert partial_sends > 0, "a 4 MiB send must fill a socketpair"
    assert plan.sent_bytes == plan.total_bytes
    assert bytes(received) == expected


def test_send_all_on_non_blocking_socket(store):
    _fill_big(store)
    plan = store.plan_transfer("s", 0, 1 << 30)
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        result = _reader(b, plan.total_bytes)
        assert plan.send_all(a) == plan.total_bytes
        assert result() == plan.bytes()
    assert plan.complete


def test_sendfile_to_fd_blocking(store):
    _fill_big(store, batches=16, per_batch=4)
    plan = store.plan_transfer("s", 0, 1 << 30)
    a, b = socket.socketpair()
    with a, b:
        result = _reader(b, plan.total_bytes)
        written, next_offset = store.sendfile_to_fd("s", 0, 1 << 30, a)
        assert (written, next_offset) == (plan.total_bytes, 64)
        assert result() == plan.bytes()


def test_sendfile_to_fd_non_blocking_waits(store):
    _fill_big(store)
    total = store.plan_transfer("s", 0, 1 << 30).total_bytes
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        result = _reader(b, total)
        assert store.sendfile_to_fd("s", 0, 1 << 30, a.fileno()) == (total, 64)
        assert len(result()) == total


def test_sendfile_to_fd_respects_max_bytes(store, shard):
    for _ in range(5):
        store.append_batch(shard, [b"v" * 1000] * 2)
    one_batch = store.plan_transfer(shard, 0, 1).total_bytes
    a, b = socket.socketpair()
    with a, b:
        assert store.sendfile_to_fd(shard, 0, 2 * one_batch, a) == (2 * one_batch, 4)
        assert store.sendfile_to_fd(shard, 4, 1, a) == (one_batch, 6)
        data = _recv_exactly(b, 3 * one_batch)
    assert data == store.plan_transfer(shard, 0, 3 * one_batch).bytes()


def test_send_to_file_and_pipe(store, shard):
    store.append_batch(shard, [b"file contents"] * 3)
    plan = store.plan_transfer(shard, 0, 1 << 20)
    with tempfile.TemporaryFile() as f:
        assert store.sendfile_to_fd(shard, 0, 1 << 20, f)[0] == plan.total_bytes
        f.seek(0)
        assert f.read() == plan.bytes()
    r, w = os.pipe()
    try:
        assert plan.send(w) == plan.total_bytes
        assert os.read(r, plan.total_bytes + 1) == plan.bytes()
    finally:
        os.close(r)
        os.close(w)


def test_closed_peer_is_an_error_not_a_signal(store, shard):
    store.append(shard, b"x")
    a, b = socket.socketpair()
    b.close()
    with a:
        with pytest.raises(mqstore.StorageIOError) as info:
            store.sendfile_to_fd(shard, 0, 100, a)
        assert info.value.errno == 32  # EPIPE
        plan = store.plan_transfer(shard, 0, 100)
        with pytest.raises(mqstore.StorageIOError):
            plan.send(a)
        assert not plan.complete


def test_bad_descriptors(store, shard):
    store.append(shard, b"x")
    plan = store.plan_transfer(shard, 0, 100)
    with pytest.raises(TypeError):
        plan.send("3")
    with pytest.raises(TypeError):
        plan.send(True)
    with pytest.raises(mqstore.InvalidArgument):
        plan.send(-1)
    a, b = socket.socketpair()
    a.close()
    b.close()
    with pytest.raises((ValueError, mqstore.InvalidArgument)):
        plan.send(a)  # a closed socket's fileno() is -1


GIL_SCRIPT = textwrap.dedent(
    """
    import socket, sys, threading, tempfile
    import mqstore

    # The reader is a Python thread: it can only run while the sender has
    # released the GIL. 8 MiB do not fit in a socketpair, so a send that
    # kept the GIL would block forever (and the parent's timeout fires).
    store = mqstore.Store(tempfile.mkdtemp())
    store.create_shard("s")
    for _ in range(128):
        store.append("s", bytes(65536))
    a, b = socket.socketpair()
    total = store.plan_transfer("s", 0, 1 << 30).total_bytes
    received = []
    def read():
        got = 0
        while got < 2 * total:
            chunk = b.recv(1 << 20)
            got += len(chunk)
        received.append(got)
    reader = threading.Thread(target=read)
    reader.start()
    store.sendfile_to_fd("s", 0, 1 << 30, a)
    plan = store.plan_transfer("s", 0, 1 << 30)
    plan.send(a)
    reader.join()
    assert received == [2 * total], received
    print("ok")
    """
)


def test_blocking_sends_release_the_gil():
    result = subprocess.run(
        [sys.executable, "-c", GIL_SCRIPT],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


# ------------------------------------------------------------- read_into


def _received(store, shard):
    """The bytes a socket receives when the whole shard is sent to it."""
    plan = store.plan_transfer(shard, 0, 1 << 30)
    a, b = socket.socketpair()
    with a, b:
        result = _reader(b, plan.total_bytes)
        assert plan.send_all(a) == plan.total_bytes
        return result()


def _read_all(plan, target):
    """Reads the rest of `plan` through `target`, a writable buffer."""
    view = memoryview(target).cast("B")
    out = bytearray()
    while True:
        n = plan.read_into(target)
        if n == 0:
            return bytes(out)
        assert n == len(view) or plan.complete, "short only at the end"
        out += view[:n]


def _fill_batches(store, shard, batches=4):
    for i in range(batches):
        store.append_batch(shard, [b"%d-" % i * 40 + b"%d" % j for j in range(10)])


@pytest.mark.parametrize("size", [1, 7, 4096])
def test_read_into_gives_the_bytes_a_socket_receives(store, shard, size):
    _fill_batches(store, shard)
    expected = _received(store, shard)
    plan = store.plan_transfer(shard, 0, 1 << 30)
    assert _read_all(plan, bytearray(size)) == expected
    assert plan.complete and plan.sent_bytes == plan.total_bytes == len(expected)
    assert plan.read_into(bytearray(size)) == 0
    assert plan.bytes() == expected


def test_read_into_from_files(tmp_path):
    """The file engine's plans hold files: read with pread."""
    with mqstore.Store(tmp_path / "file", '[shard]\nengine = "file"\n') as store:
        store.create_shard("s")
        _fill_big(store, shard="t", batches=8, per_batch=2)
        _fill_batches(store, "s")
        for shard in ("s", "t"):
            expected = _received(store, shard)
            for target in (bytearray(4096), (ctypes.c_char * 7)()):
                plan = store.plan_transfer(shard, 0, 1 << 30)
                assert _read_all(plan, target) == expected


def _targets():
    """Writable buffers of 1,000 bytes, of every standard kind."""
    yield "bytearray", bytearray(1000)
    yield "memoryview slice", memoryview(bytearray(1100))[100:]
    yield "array", array.array("B", bytes(1000))
    yield "array of ints", array.array("i", [0] * 250)
    yield "mmap", mmap.mmap(-1, 1000)
    yield "ctypes", (ctypes.c_char * 1000)()


def test_read_into_every_kind_of_buffer(store, shard):
    _fill_batches(store, shard, batches=8)
    expected = _received(store, shard)
    for kind, target in _targets():
        plan = store.plan_transfer(shard, 0, 1 << 30)
        assert _read_all(plan, target) == expected, kind


def test_read_into_numpy_arrays(store, shard):
    numpy = pytest.importorskip("numpy")
    _fill_batches(store, shard, batches=8)
    expected = _received(store, shard)
    for target in (
        numpy.zeros(1000, dtype=numpy.uint8),
        numpy.empty(125, dtype=numpy.float64),
        numpy.zeros((10, 100), dtype=numpy.uint8),
    ):
        assert not mqstore.Transfer._releases_gil_for(target)
        plan = store.plan_transfer(shard, 0, 1 << 30)
        assert _read_all(plan, target) == expected, target.dtype


def test_targets_written_with_the_gil_released():
    released = {kind: mqstore.Transfer._releases_gil_for(t) for kind, t in _targets()}
    assert released == {
        "bytearray": True,
        "memoryview slice": True,
        "array": True,
        "array of ints": True,
        "mmap": True,
        "ctypes": False,
    }

    class Subclass(bytearray):
        pass

    assert not mqstore.Transfer._releases_gil_for(Subclass(4))
    assert not mqstore.Transfer._releases_gil_for(memoryview((ctypes.c_char * 4)()))


def test_read_part_then_send_the_rest(store, shard):
    _fill_batches(store, shard)
    expected = _received(store, shard)
    plan = store.plan_transfer(shard, 0, 1 << 30)
    head = bytearray(100)
    assert plan.read_into(head) == 100
    assert plan.sent_bytes == 100 and not plan.complete
    a, b = socket.socketpair()
    with a, b:
        assert plan.send(a) == len(expected) - 100
        assert bytes(head) + _recv_exactly(b, len(expected) - 100) == expected
    assert plan.complete
    assert plan.read_into(head) == 0


def test_send_until_full_then_read_the_rest(store):
    _fill_big(store)
    plan = store.plan_transfer("s", 0, 1 << 30)
    expected = plan.bytes()
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        written = plan.send(a)
        assert 0 < written < len(expected) and not plan.complete
        a.close()
        sent = _recv_exactly(b, written)
    rest = _read_all(plan, bytearray(1 << 16))
    assert sent + rest == expected


def test_read_into_errors(store, shard):
    store.append(shard, b"x")
    plan = store.plan_transfer(shard, 0, 1 << 20)
    for target in (b"bytes", memoryview(b"ro"), memoryview(bytearray(4)).toreadonly(), "str", 7, None):
        with pytest.raises(TypeError, match="writable"):
            plan.read_into(target)
    with pytest.raises(mqstore.InvalidArgument, match="empty") as info:
        plan.read_into(bytearray())
    assert info.value.status == mqstore.Status.INVALID_ARGUMENT
    with pytest.raises(mqstore.InvalidArgument, match="empty"):
        plan.read_into(memoryview(bytearray(4))[4:])
    with pytest.raises(mqstore.InvalidArgument, match="empty"):
        plan.read_into((ctypes.c_char * 0)())
    assert plan.sent_bytes == 0, "nothing consumed by refused calls"
    numpy = pytest.importorskip("numpy")
    with pytest.raises(TypeError, match="writable, contiguous"):
        plan.read_into(numpy.zeros(8, dtype=numpy.uint8)[::2])
    assert plan.sent_bytes == 0


READ_WAITS_SCRIPT = textwrap.dedent(
    """
    import ctypes, select, socket, sys, tempfile, threading
    import mqstore

    # A send_all blocks inside the plan (8 MiB do not fit in a socketpair)
    # until a Python thread reads; read_into on the same plan must wait for
    # it without holding the GIL, or the reader never runs and the parent's
    # timeout fires. Both kinds of target: bytearray (copied with the GIL
    # released) and ctypes (copied with the GIL taken back).
    store = mqstore.Store(tempfile.mkdtemp())
    store.create_shard("s")
    for _ in range(128):
        store.append("s", bytes(65536))
    for target in (bytearray(4096), (ctypes.c_char * 4096)()):
        plan = store.plan_transfer("s", 0, 1 << 30)
        a, b = socket.socketpair()
        go = threading.Event()
        received = []
        def read():
            go.wait()
            got = 0
            while chunk := b.recv(1 << 20):
                got += len(chunk)
            received.append(got)
        reader = threading.Thread(target=read)
        reader.start()
        sender = threading.Thread(target=plan.send_all, args=(a,))
        sender.start()
        select.select([b], [], [])  # the sender is inside send_all, blocked
        go.set()
        assert plan.read_into(target) == 0, "the send took every byte"
        sender.join()
        a.close()
        reader.join()
        assert received == [plan.total_bytes], (received, plan.total_bytes)
        b.close()
    print("ok")
    """
)


def test_read_into_waits_for_a_blocked_send_without_the_gil():
    result = subprocess.run(
        [sys.executable, "-c", READ_WAITS_SCRIPT],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
