"""A single-node Kafka broker on mqstore: real Kafka clients (librdkafka,
kafka-python) produce to it and consume from it.

    python examples/kafka_broker/broker.py --data DIR [--port 9092] [--partitions 1]

It prints ``listening on 127.0.0.1:PORT`` once it accepts connections
(``--port 0`` picks a free port), and closes the store cleanly on SIGTERM or
SIGINT.

What it shows: a Kafka front end on mqstore re-encodes nothing. Producer
batches go to ``Store.append_raw`` exactly as the client sent them (checked
as Kafka's log validator checks them, idempotence enforced by the store);
Fetch responses carry the stored batches through ``Transfer.send_all``,
from the store to the socket unchanged (sendfile for file-backed shards);
committed offsets are the store's group offsets.

Protocol coverage (non-flexible versions only, which every client still
negotiates): ApiVersions 0-2 (a v3+ request is answered as Kafka answers
an unsupported version, with the ranges below), Metadata 1-6, Produce
3-7, Fetch 4-6, ListOffsets 1-3, FindCoordinator 0-2, OffsetCommit 2-7,
OffsetFetch 1-5, InitProducerId 0-1. Partition P of topic T is the shard
``T-P``; topics are created on first Metadata request with
``--partitions`` partitions. No consumer-group membership (JoinGroup and
friends): consumers ``assign()`` partitions and commit offsets as simple
consumers do. No transactions, no replication, no SASL/TLS.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import socketserver
import struct
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

import mqstore

NODE_ID = 0
CLUSTER_ID = "mqstore-example"

# Kafka error codes used here.
NONE = 0
OFFSET_OUT_OF_RANGE = 1
CORRUPT_MESSAGE = 2
UNKNOWN_TOPIC_OR_PARTITION = 3
MESSAGE_TOO_LARGE = 10
INVALID_TOPIC_EXCEPTION = 17
INVALID_REQUIRED_ACKS = 21
UNSUPPORTED_VERSION = 35
OUT_OF_ORDER_SEQUENCE_NUMBER = 45
INVALID_PRODUCER_EPOCH = 47
KAFKA_STORAGE_ERROR = 56
UNSUPPORTED_COMPRESSION_TYPE = 76
INVALID_RECORD = 87
UNKNOWN_SERVER_ERROR = -1

TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


# ------------------------------------------------------------------ codec


class Reader:
    """Decodes the primitive types of Kafka's (non-flexible) protocol."""

    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.pos = 0

    def _take(self, fmt: str) -> int:
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def int8(self) -> int:
        return self._take(">b")

    def int16(self) -> int:
        return self._take(">h")

    def int32(self) -> int:
        return self._take(">i")

    def int64(self) -> int:
        return self._take(">q")

    def string(self) -> Optional[str]:
        length = self.int16()
        if length < 0:
            return None
        value = bytes(self.data[self.pos : self.pos + length]).decode()
        self.pos += length
        return value

    def bytes_(self) -> Optional[memoryview]:
        length = self.int32()
        if length < 0:
            return None
        value = self.data[self.pos : self.pos + length]
        self.pos += length
        return value

    def array(self, item: Callable[["Reader"], object]) -> Optional[list]:
        count = self.int32()
        if count < 0:
            return None
        return [item(self) for _ in range(count)]


class Writer:
    """Encodes a response body; `plans` are transfers sent after their
    length prefix without passing through Python."""

    def __init__(self) -> None:
        self.parts: list = [bytearray()]

    @property
    def _tail(self) -> bytearray:
        return self.parts[-1]

    def int8(self, v: int) -> "Writer":
        self._tail.extend(struct.pack(">b", v))
        return self

    def int16(self, v: int) -> "Writer":
        self._tail.extend(struct.pack(">h", v))
        return self

    def int32(self, v: int) -> "Writer":
        self._tail.extend(struct.pack(">i", v))
        return self

    def int64(self, v: int) -> "Writer":
        self._tail.extend(struct.pack(">q", v))
        return self

    def string(self, v: Optional[str]) -> "Writer":
        if v is None:
            return self.int16(-1)
        raw = v.encode()
        self.int16(len(raw))
        self._tail.extend(raw)
        return self

    def array(self, items: list, item: Callable[["Writer", object], object]) -> "Writer":
        self.int32(len(items))
        for value in items:
            item(self, value)
        return self

    def int32_array(self, values: list) -> "Writer":
        return self.array(values, Writer.int32)

    def transfer(self, plan: Optional[mqstore.Transfer]) -> "Writer":
        """Kafka's `records` field: the planned batches, length-prefixed."""
        if plan is None or plan.total_bytes == 0:
            return self.int32(0)
        self.int32(plan.total_bytes)
        self.parts.append(plan)
        self.parts.append(bytearray())
        return self

    def size(self) -> int:
        return sum(p.total_bytes if isinstance(p, mqstore.Transfer) else len(p) for p in self.parts)

    def send(self, sock: socket.socket, correlation_id: int) -> None:
        sock.sendall(struct.pack(">ii", self.size() + 4, correlation_id))
        for part in self.parts:
            if isinstance(part, mqstore.Transfer):
                part.send_all(sock.fileno())
            elif part:
                sock.sendall(part)


# ----------------------------------------------------------------- broker


@dataclass
class Partition:
    topic: str
    index: int

    @property
    def shard(self) -> str:
        return f"{self.topic}-{self.index}"


class ProducerIds:
    """Producer ids handed out by InitProducerId, never reused across
    restarts: the next one is on disk (written and fsynced, then renamed)
    before an id is returned, since the store keeps each id's sequences."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.Lock()
        try:
            with open(path) as f:
                self.next = int(f.read())
        except FileNotFoundError:
            self.next = 1000

    def allocate(self) -> int:
        with self.lock:
            allocated = self.next
            temp = self.path + ".tmp"
            with open(temp, "w") as f:
                f.write(str(allocated + 1))
                f.flush()
                os.fsync(f.fileno())
            os.rename(temp, self.path)
            directory = os.open(os.path.dirname(self.path), os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
            self.next = allocated + 1
            return allocated


class Broker:
    def __init__(self, store: mqstore.Store, data: str, partitions: int, port: int) -> None:
        self.store = store
        self.default_partitions = partitions
        self.port = port
        self.producer_ids = ProducerIds(os.path.join(data, "producer-ids"))
        self.topics: dict[str, int] = {}
        self.topics_lock = threading.Lock()
        # Fetches waiting for data wake on every append.
        self.appended = threading.Condition()
        for shard in store.list_shards():
            topic, _, index = shard.rpartition("-")
            if topic and index.isdigit():
                self.topics[topic] = max(self.topics.get(topic, 0), int(index) + 1)

    # -- topics

    def partition_count(self, topic: str, create: bool) -> int:
        """Partitions of `topic`; 0 when it does not exist (and `create`
        is false, or the name is not a legal topic name)."""
        with self.topics_lock:
            count = self.topics.get(topic, 0)
            if count or not create or not TOPIC_NAME.match(topic):
                return count
            for index in range(self.default_partitions):
                try:
                    self.store.create_shard(f"{topic}-{index}")
                except mqstore.ShardExists:
                    pass
            self.topics[topic] = self.default_partitions
            return self.default_partitions

    def exists(self, topic: str, index: int) -> bool:
        return 0 <= index < self.partition_count(topic, create=False)

    # -- requests

    def api_versions(self, version: int, r: Reader, w: Writer) -> None:
        w.int16(NONE if version <= 2 else UNSUPPORTED_VERSION)
        w.array(
            sorted(HANDLERS.items()),
            lambda w, kv: w.int16(kv[0]).int16(kv[1][0]).int16(kv[1][1]),
        )
        if 1 <= version <= 2:
            w.int32(0)

    def metadata(self, version: int, r: Reader, w: Writer) -> None:
        requested = r.array(Reader.string)
        allow_create = r.int8() != 0 if version >= 4 else True
        if requested is None:
            with self.topics_lock:
                names = sorted(self.topics)
        else:
            names = requested
        if version >= 3:
            w.int32(0)
        w.array(
            [NODE_ID],
            lambda w, node: w.int32(node).string("127.0.0.1").int32(self.port).string(None),
        )
        if version >= 2:
            w.string(CLUSTER_ID)
        w.int32(NODE_ID)

        def topic(w: Writer, name: str) -> None:
            count = self.partition_count(name, create=allow_create)
            error = NONE if count else (
                UNKNOWN_TOPIC_OR_PARTITION if TOPIC_NAME.match(name) else INVALID_TOPIC_EXCEPTION
            )
            w.int16(error).string(name).int8(0)

            def partition(w: Writer, index: int) -> None:
                w.int16(NONE).int32(index).int32(NODE_ID)
                w.int32_array([NODE_ID]).int32_array([NODE_ID])
                if version >= 5:
                    w.int32_array([])

            w.array(list(range(count)), partition)

        w.array(names, topic)

    def init_producer_id(self, version: int, r: Reader, w: Writer) -> None:
        transactional_id = r.string()
        r.int32()  # transaction timeout
        if transactional_id is not None:
            # Transactions are not part of this example.
            w.int32(0).int16(UNSUPPORTED_VERSION).int64(-1).int16(-1)
            return
        w.int32(0).int16(NONE).int64(self.producer_ids.allocate()).int16(0)

    def produce(self, version: int, r: Reader, w: Writer) -> bool:
        r.string()  # transactional id
        acks = r.int16()
        r.int32()  # timeout
        topics = r.array(
            lambda r: (r.string(), r.array(lambda r: (r.int32(), r.bytes_())))
        )
        results = []
        for name, partitions in topics:
            results.append((name, [self.produce_partition(name, i, data) for i, data in partitions]))
        with self.appended:
            self.appended.notify_all()
        if acks == 0:
            return False

        def partition(w: Writer, result: tuple) -> None:
            index, error, base, start = result
            w.int32(index).int16(error).int64(base).int64(-1)
            if version >= 5:
                w.int64(start)

        w.array(results, lambda w, t: w.string(t[0]).array(t[1], partition))
        w.int32(0)
        return True

    def produce_partition(self, topic: str, index: int, data: Optional[memoryview]) -> tuple:
        """(index, error, base offset, log start offset) of one partition's batches."""
        if not self.exists(topic, index):
            return (index, UNKNOWN_TOPIC_OR_PARTITION, -1, -1)
        shard = Partition(topic, index).shard
        try:
            base = self.store.append_raw(shard, data)[0]
            error = NONE
        except mqstore.DuplicateSequence as retry:
            # A retry of batches already stored: acknowledged again, with
            # the offsets they were stored at, as Kafka does.
            base, error = retry.base_offsets[0], NONE
        except mqstore.MqsError as e:
            print(f"produce to {shard}: {e}", file=sys.stderr)
            return (index, kafka_error(e), -1, -1)
        return (index, error, base, self.store.shard_info(shard).first_offset)

    def list_offsets(self, version: int, r: Reader, w: Writer) -> None:
        r.int32()  # replica id
        if version >= 2:
            r.int8()  # isolation level
        topics = r.array(lambda r: (r.string(), r.array(lambda r: (r.int32(), r.int64()))))
        if version >= 2:
            w.int32(0)

        def partition(w: Writer, topic: str, index: int, timestamp: int) -> None:
            if not self.exists(topic, index):
                w.int32(index).int16(UNKNOWN_TOPIC_OR_PARTITION).int64(-1).int64(-1)
                return
            # -1 (latest) and -2 (earliest) are the watermarks; a time, the
            # first offset at or after it (-1 when there is none).
            found = self.store.offset_for_timestamp(Partition(topic, index).shard, timestamp)
            offset = -1 if found is None else found
            w.int32(index).int16(NONE).int64(-1).int64(offset)

        w.array(
            topics,
            lambda w, t: w.string(t[0]).array(t[1], lambda w, p: partition(w, t[0], p[0], p[1])),
        )

    def fetch(self, version: int, r: Reader, w: Writer) -> None:
        r.int32()  # replica id
        max_wait_ms = r.int32()
        r.int32()  # min bytes: any data answers
        budget = r.int32()
        r.int8()  # isolation level: no transactions, so both levels read the same

        def partition(r: Reader) -> tuple:
            index, offset = r.int32(), r.int64()
            if version >= 5:
                r.int64()  # the follower's log start offset
            return (index, offset, r.int32())

        topics = r.array(lambda r: (r.string(), r.array(partition)))
        wanted = [(name, p) for name, partitions in topics for p in partitions]
        self.wait_for_data(wanted, max_wait_ms)
        answers = {}
        for name, (index, offset, limit) in wanted:
            answers[(name, index)] = self.fetch_partition(name, index, offset, min(limit, max(budget, 1)))
            plan = answers[(name, index)][-1]
            if plan is not None:
                budget -= plan.total_bytes
        w.int32(0)

        def out(w: Writer, name: str, index: int) -> None:
            error, high, start, plan = answers[(name, index)]
            w.int32(index).int16(error).int64(high).int64(high)
            if version >= 5:
                w.int64(start)
            w.int32(0)  # no aborted transactions
            w.transfer(plan)

        w.array(
            topics,
            lambda w, t: w.string(t[0]).array(t[1], lambda w, p: out(w, t[0], p[0])),
        )

    def wait_for_data(self, wanted: list, max_wait_ms: int) -> None:
        """Long poll: returns once a wanted partition has records at or past
        its fetch offset, or after `max_wait_ms`."""

        def ready() -> bool:
            for name, (index, offset, _) in wanted:
                if not self.exists(name, index):
                    return True
                if self.store.shard_info(Partition(name, index).shard).next_offset > offset:
                    return True
            return False

        deadline = time.monotonic() + max_wait_ms / 1000
        with self.appended:
            while not ready():
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self.appended.wait(left)

    def fetch_partition(self, topic: str, index: int, offset: int, limit: int) -> tuple:
        """(error, high watermark, log start offset, transfer or None)."""
        if not self.exists(topic, index):
            return (UNKNOWN_TOPIC_OR_PARTITION, -1, -1, None)
        shard = Partition(topic, index).shard
        info = self.store.shard_info(shard)
        if offset < info.first_offset or offset > info.next_offset:
            return (OFFSET_OUT_OF_RANGE, info.next_offset, info.first_offset, None)
        if offset == info.next_offset:
            return (NONE, info.next_offset, info.first_offset, None)
        plan = self.store.plan_transfer(shard, offset, limit)
        return (NONE, info.next_offset, info.first_offset, plan)

    def find_coordinator(self, version: int, r: Reader, w: Writer) -> None:
        r.string()
        if version >= 1:
            r.int8()
            w.int32(0)
        w.int16(NONE)
        if version >= 1:
            w.string(None)
        w.int32(NODE_ID).string("127.0.0.1").int32(self.port)

    def offset_commit(self, version: int, r: Reader, w: Writer) -> None:
        group = r.string()
        r.int32()  # generation: simple consumers send -1
        r.string()  # member id
        if version <= 4:
            r.int64()  # retention time
        if version >= 7:
            r.string()  # group instance id

        def partition(r: Reader) -> tuple:
            index, offset = r.int32(), r.int64()
            if version >= 6:
                r.int32()  # leader epoch
            r.string()  # metadata
            return (index, offset)

        topics = r.array(lambda r: (r.string(), r.array(partition)))
        if version >= 3:
            w.int32(0)

        def commit(w: Writer, topic: str, index: int, offset: int) -> None:
            error = NONE
            if not self.exists(topic, index):
                error = UNKNOWN_TOPIC_OR_PARTITION
            else:
                try:
                    self.store.commit_offset(group, Partition(topic, index).shard, offset)
                except mqstore.MqsError as e:
                    error = kafka_error(e)
            w.int32(index).int16(error)

        w.array(
            topics,
            lambda w, t: w.string(t[0]).array(t[1], lambda w, p: commit(w, t[0], *p)),
        )

    def offset_fetch(self, version: int, r: Reader, w: Writer) -> None:
        group = r.string()
        topics = r.array(lambda r: (r.string(), r.array(Reader.int32)))
        if topics is None:
            with self.topics_lock:
                topics = [(name, list(range(count))) for name, count in sorted(self.topics.items())]
        if version >= 3:
            w.int32(0)

        def fetched(w: Writer, topic: str, index: int) -> None:
            offset, error = -1, NONE
            if self.exists(topic, index):
                committed = self.store.committed_offset(group, Partition(topic, index).shard)
                offset = -1 if committed is None else committed
            else:
                error = UNKNOWN_TOPIC_OR_PARTITION
            w.int32(index).int64(offset)
            if version >= 5:
                w.int32(-1)
            w.string("").int16(error)

        w.array(
            topics,
            lambda w, t: w.string(t[0]).array(t[1], lambda w, i: fetched(w, t[0], i)),
        )
        if version >= 2:
            w.int16(NONE)


def kafka_error(e: mqstore.MqsError) -> int:
    """The Kafka error code a producer or consumer understands for `e`."""
    if isinstance(e, mqstore.OutOfOrderSequence):
        return OUT_OF_ORDER_SEQUENCE_NUMBER
    if isinstance(e, mqstore.ProducerFenced):
        return INVALID_PRODUCER_EPOCH
    if isinstance(e, mqstore.CorruptionError):
        return CORRUPT_MESSAGE
    if isinstance(e, mqstore.RecordTooLarge):
        return MESSAGE_TOO_LARGE
    if isinstance(e, mqstore.Unsupported):
        return UNSUPPORTED_COMPRESSION_TYPE
    if isinstance(e, mqstore.InvalidArgument):
        return INVALID_RECORD
    if isinstance(e, (mqstore.StorageIOError, mqstore.Poisoned)):
        return KAFKA_STORAGE_ERROR
    return UNKNOWN_SERVER_ERROR


# api key -> (min version, max version, handler); a handler returning False
# sends no response (Produce with acks = 0).
HANDLERS: dict[int, tuple[int, int, Callable]] = {
    0: (3, 7, Broker.produce),
    1: (4, 6, Broker.fetch),
    2: (1, 3, Broker.list_offsets),
    3: (1, 6, Broker.metadata),
    8: (2, 7, Broker.offset_commit),
    9: (1, 5, Broker.offset_fetch),
    10: (0, 2, Broker.find_coordinator),
    18: (0, 2, Broker.api_versions),
    22: (0, 1, Broker.init_producer_id),
}


class Connection(socketserver.BaseRequestHandler):
    """One client connection: requests answered in order, one at a time."""

    def handle(self) -> None:
        broker: Broker = self.server.broker  # type: ignore[attr-defined]
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self.serve(broker, sock)
        except (OSError, mqstore.StoreClosed):
            pass  # the client went away, or the broker is shutting down
        except (struct.error, ValueError, TypeError, IndexError) as e:
            # A request that does not parse: Kafka closes the connection.
            print(f"malformed request from {self.client_address}: {e!r}", file=sys.stderr)

    def serve(self, broker: "Broker", sock: socket.socket) -> None:
        while True:
            size = recv_exactly(sock, 4)
            if size is None:
                return
            (length,) = struct.unpack(">i", size)
            request = recv_exactly(sock, length)
            if request is None:
                return
            r = Reader(request)
            api_key, version, correlation_id = r.int16(), r.int16(), r.int32()
            r.string()  # client id
            known = HANDLERS.get(api_key)
            if known is None or (api_key != 18 and not known[0] <= version <= known[1]):
                # Kafka closes the connection on a request it cannot parse.
                print(f"unsupported request: api {api_key} v{version}", file=sys.stderr)
                return
            w = Writer()
            if known[2](broker, version, r, w) is False:
                continue
            w.send(sock, correlation_id)


def recv_exactly(sock: socket.socket, length: int) -> Optional[bytes]:
    buf = bytearray()
    while len(buf) < length:
        chunk = sock.recv(length - len(buf))
        if not chunk:
            return None
        buf.extend(chunk)
    return bytes(buf)


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="the store directory")
    parser.add_argument("--port", type=int, default=9092, help="0 picks a free port")
    parser.add_argument("--partitions", type=int, default=1, help="partitions of a new topic")
    parser.add_argument("--config", default=None, help="storage.toml for the store")
    args = parser.parse_args(argv)
    os.makedirs(args.data, exist_ok=True)
    config = None
    if args.config:
        with open(args.config) as f:
            config = f.read()
    store = mqstore.Store(os.path.join(args.data, "store"), config)
    server = Server(("127.0.0.1", args.port), Connection)
    port = server.server_address[1]
    server.broker = Broker(store, args.data, args.partitions, port)  # type: ignore[attr-defined]
    stop = threading.Event()

    def shutdown(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    thread = threading.Thread(target=server.serve_forever, name="accept", daemon=True)
    thread.start()
    print(f"listening on 127.0.0.1:{port}", flush=True)
    stop.wait()
    server.shutdown()
    server.server_close()
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
