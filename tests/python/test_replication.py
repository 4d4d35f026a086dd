"""A follower copies its leader byte for byte: two processes, the follower
pulling with transfers over a socket and storing with append_replica; each
side is killed with SIGKILL mid-stream and restarted; at the end both hold
identical batch bytes up to the follower's end.

The leader serves only acknowledged (fsynced) batches: it answers fetches
between its own appends, in one thread, so nothing it sends can be lost by
its crash (a follower ahead of a restarted leader would need truncation)."""

import signal
import socket
import struct
import subprocess
import sys
import textwrap

import pytest

import mqstore

LEADER = textwrap.dedent(
    r"""
    import select, socket, struct, sys
    import mqstore
    path, stop_after = sys.argv[1], int(sys.argv[2])
    store = mqstore.Store(path)
    if "s" not in store.list_shards():
        store.create_shard("s")
    listener = socket.create_server(("127.0.0.1", 0))
    print(listener.getsockname()[1], flush=True)
    i = store.shard_info("s").next_offset
    while True:
        if i < stop_after:
            store.append_batch("s", [b"record-%08d-" % (i + n) + bytes(200) for n in range(4)])
            i += 4
        ready, _, _ = select.select([listener], [], [], 0 if i < stop_after else 0.05)
        if ready:
            conn, _ = listener.accept()
            with conn:
                request = conn.recv(8, socket.MSG_WAITALL)
                if len(request) < 8:
                    continue  # a follower killed before it asked
                (offset,) = struct.unpack(">q", request)
                end = store.shard_info("s").next_offset
                data = b""
                if offset < end:
                    data = store.plan_transfer("s", offset, 16 << 10).bytes()
                try:
                    conn.sendall(struct.pack(">q", end) + struct.pack(">I", len(data)) + data)
                except OSError:
                    pass  # nor one killed while it was answered
    """
)

FOLLOWER = textwrap.dedent(
    r"""
    import socket, struct, sys, time
    import mqstore
    path, port, target = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    store = mqstore.Store(path)
    if "s" not in store.list_shards():
        store.create_shard("s")
    def fetch(offset):
        with socket.create_connection(("127.0.0.1", port)) as conn:
            conn.sendall(struct.pack(">q", offset))
            head = conn.recv(12, socket.MSG_WAITALL)
            end, size = struct.unpack(">qI", head)
            data = b""
            while len(data) < size:
                chunk = conn.recv(size - len(data))
                if not chunk:
                    raise ConnectionError("leader went away")
                data += chunk
            return end, data
    nxt = store.shard_info("s").next_offset
    # A leader unreachable this long is dead for good: fail, never hang.
    last_contact = time.monotonic()
    while nxt < target:
        try:
            end, data = fetch(nxt)
            last_contact = time.monotonic()
        except (OSError, struct.error):
            if time.monotonic() - last_contact > 60:
                sys.exit("no leader for 60 s")
            continue
        if data:
            nxt = store.append_replica("s", data)
            print(nxt, flush=True)
    store.close()
    """
)


def _start(script, *args):
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], stdout=subprocess.PIPE, text=True)


def _port(leader):
    line = leader.stdout.readline()
    assert line, f"the leader died before listening (exit {leader.wait()})"
    return int(line)


def _follower_reaches(follower, offset):
    """Reads the follower's progress lines until it reports `offset` or more."""
    for line in follower.stdout:
        if int(line) >= offset:
            return
    raise AssertionError(f"the follower stopped before offset {offset} (exit {follower.wait()})")


def _bytes(path):
    with mqstore.Store(path) as store:
        end = store.shard_info("s").next_offset
        data = store.plan_transfer("s", 0, 1 << 40).bytes() if end else b""
        return end, data


def test_follower_survives_kill9_of_either_side(tmp_path):
    leader_dir, follower_dir = str(tmp_path / "leader"), str(tmp_path / "follower")
    total = 1200
    leader = _start(LEADER, leader_dir, total)
    follower = None
    try:
        port = _port(leader)
        follower = _start(FOLLOWER, follower_dir, port, total)
        _follower_reaches(follower, 240)
        follower.send_signal(signal.SIGKILL)
        follower.wait()
        follower = _start(FOLLOWER, follower_dir, port, total)
        _follower_reaches(follower, 480)
        # The leader dies mid-stream; the follower retries until it is back.
        leader.send_signal(signal.SIGKILL)
        leader.wait()
        leader = _start(LEADER, leader_dir, total)
        new_port = _port(leader)
        follower.send_signal(signal.SIGKILL)
        follower.wait()
        follower = _start(FOLLOWER, follower_dir, new_port, total)
        _follower_reaches(follower, total)
        assert follower.wait() == 0
    finally:
        for process in (leader, follower):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait()
    leader_end, leader_bytes = _bytes(leader_dir)
    follower_end, follower_bytes = _bytes(follower_dir)
    assert follower_end >= total and leader_end >= follower_end
    assert leader_bytes[: len(follower_bytes)] == follower_bytes
    assert struct.unpack(">q", follower_bytes[:8])[0] == 0


def test_truncate_to_cuts_a_diverged_tail(tmp_path):
    """A follower that took batches a new leader never had cuts them and
    continues from the leader's log."""
    with mqstore.Store(tmp_path / "f") as follower:
        follower.create_shard("p")
        for i in range(3):
            follower.append_batch("p", [b"r%d-%d" % (i, j) for j in range(4)])
        with pytest.raises(mqstore.InvalidArgument, match="batch boundary"):
            follower.truncate_to("p", 6)
        with pytest.raises(mqstore.OffsetOutOfRange):
            follower.truncate_to("p", 13)
        follower.truncate_to("p", 8)
        assert follower.shard_info("p").next_offset == 8
        assert [bytes(r.value) for r in follower.read("p", 0)][-1] == b"r1-3"
        assert follower.append_batch("p", [b"new"]) == 8


def test_appends_carry_the_leader_epoch(tmp_path):
    with mqstore.Store(tmp_path / "l") as leader:
        leader.create_shard("p")
        leader.append_batch("p", [b"a"])
        leader.set_leader_epoch("p", 4)
        leader.append_batch("p", [b"b"])
        with pytest.raises(mqstore.InvalidArgument, match="older"):
            leader.set_leader_epoch("p", 3)
        data = leader.plan_transfer("p", 0, 1 << 20).bytes()
        # partitionLeaderEpoch: bytes 12..16 of each batch header.
        first_len = 12 + struct.unpack(">i", data[8:12])[0]
        epochs = [struct.unpack(">i", data[at + 12 : at + 16])[0] for at in (0, first_len)]
        assert epochs == [-1, 4]
