"""The RocksDB engine through the Python binding: pipelined appends in every
durability mode surviving a reopen, transfer plans (lazy chunks read from a
snapshot) sent and read into buffers, group offsets, and a locked or damaged
database directory failing the open with a clear error."""

import os
import socket
import subprocess
import sys

import pytest

import mqstore
from test_pipelined import _check_contents, _pipeline
from test_transfer import _read_all, _reader, _recv_exactly

ROCKSDB = '[shard]\nengine = "rocksdb"\n'


@pytest.fixture
def rstore(tmp_path):
    with mqstore.Store(tmp_path / "store", ROCKSDB) as s:
        yield s


@pytest.mark.parametrize("durability", ["fsync", "os", "none"])
def test_pipeline_survives_reopen(tmp_path, durability):
    path = tmp_path / "store"
    with mqstore.Store(path, ROCKSDB) as store:
        info = store.create_shard("r", durability=durability)
        assert (info.engine, info.durability) == ("rocksdb", durability)
        appended = _pipeline(store, "r")
        _check_contents(store, "r", appended)
        stats = store.stats("r")["engine_stats"]
        if durability == "fsync":
            # Pipelined fsync appends are acknowledged by WAL syncs.
            assert stats["rocksdb"]["wal_syncs"] > 0, stats
        store.commit_offset("g", "r", 7)
    with mqstore.Store(path, ROCKSDB) as store:
        info = store.shard_info("r")
        assert (info.engine, info.durability) == ("rocksdb", durability)
        assert (info.first_offset, info.next_offset) == (0, sum(len(v) for _, v in appended))
        _check_contents(store, "r", appended)
        assert store.committed_offset("g", "r") == 7
        more = _pipeline(store, "r", batches=10, window=3)
        assert more[0][0] == info.next_offset


def _received(store, shard, plan):
    a, b = socket.socketpair()
    with a, b:
        result = _reader(b, plan.total_bytes)
        assert plan.send_all(a) == plan.total_bytes
        return result()


def test_plan_sends_the_batches_as_planned(rstore):
    rstore.create_shard("s")
    for i in range(6):
        rstore.append_batch("s", [b"%d-%d" % (i, j) * 30 for j in range(10)])
    plan = rstore.plan_transfer("s", 15, 1 << 20)
    expected = plan.bytes()
    assert plan.next_offset == 60
    # Deletes, retention and appends after planning change nothing sent.
    rstore.delete_records_before("s", 40)
    rstore.delete_by_offsets("s", [45, 46])
    rstore.append_batch("s", [b"later"] * 5)
    assert _received(rstore, "s", plan) == expected
    again = rstore.plan_transfer("s", 40, 1 << 20)
    assert again.total_bytes < len(expected)
    for size in (1, 7, 4096):
        plan = rstore.plan_transfer("s", 40, 1 << 20)
        whole = plan.bytes()
        plan = rstore.plan_transfer("s", 40, 1 << 20)
        assert _read_all(plan, bytearray(size)) == whole
        assert plan.complete


def test_big_plan_sent_until_full_then_read(rstore):
    rstore.create_shard("big")
    value = bytes(range(256)) * 256
    for _ in range(40):
        rstore.append_batch("big", [value, value])
    plan = rstore.plan_transfer("big", 0, 1 << 30)
    expected = plan.bytes()
    assert len(expected) > 5 << 20
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        written = plan.send(a)
        assert 0 < written < len(expected)
        a.close()
        head = _recv_exactly(b, written)
    assert head + _read_all(plan, bytearray(1 << 16)) == expected


def test_plans_outlive_the_store(tmp_path):
    """Plans still held when the store closes are read into memory first:
    they send what was planned, also once the directory is reopened and
    the shard deleted."""
    store = mqstore.Store(tmp_path / "store", ROCKSDB)
    store.create_shard("s")
    store.append_batch("s", [b"v%d" % i for i in range(30)])
    plan = store.plan_transfer("s", 0, 1 << 20)
    untouched = store.plan_transfer("s", 0, 1 << 20)
    head = bytearray(10)
    assert plan.read_into(head) == 10
    store.close()
    with mqstore.Store(tmp_path / "store", ROCKSDB) as again:
        again.delete_shard("s")
    rest = _read_all(plan, bytearray(7))
    assert bytes(head) + rest == untouched.bytes()
    assert len(rest) == plan.total_bytes - 10


HOLDER = """
import sys, mqstore
store = mqstore.Store(sys.argv[1], '[shard]\\nengine = "rocksdb"\\n')
print("holding", flush=True)
sys.stdin.read()
store.close()
"""


def test_locked_database_fails_the_open(tmp_path):
    """A database directory another process holds open: a second store
    whose rocksdb/ is a symlink to the first one's, opened while a helper
    process holds the first."""
    with mqstore.Store(tmp_path / "a", ROCKSDB) as store:
        store.create_shard("s")
        store.append("s", b"kept")
    (tmp_path / "b").mkdir()
    os.symlink(tmp_path / "a" / "rocksdb", tmp_path / "b" / "rocksdb")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path / "a")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "holding\n"
        with pytest.raises(mqstore.Locked) as info:
            mqstore.Store(tmp_path / "b", ROCKSDB)
        assert "rocksdb" in str(info.value)
        assert "is locked" in str(info.value)
    finally:
        holder.stdin.close()
        assert holder.wait(timeout=60) == 0
    with mqstore.Store(tmp_path / "b", ROCKSDB) as store:
        assert [bytes(r.value) for r in store.read("s", 0)] == [b"kept"]


def test_damaged_database_fails_the_open(tmp_path):
    path = tmp_path / "store"
    with mqstore.Store(path, ROCKSDB) as store:
        store.create_shard("s")
        store.append("s", b"v")
    (path / "rocksdb" / "CURRENT").write_text("MANIFEST-999999\n")
    with pytest.raises(mqstore.CorruptionError) as info:
        mqstore.Store(path, ROCKSDB)
    assert "rocksdb" in str(info.value)
    # The failed open left the store directory unlocked.
    with pytest.raises(mqstore.CorruptionError):
        mqstore.Store(path, ROCKSDB)
