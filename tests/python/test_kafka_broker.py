"""The example Kafka broker (examples/kafka_broker/broker.py) against real
clients: confluent-kafka (librdkafka) producing with idempotence and lz4,
gzip and zstd, confluent-kafka and kafka-python consuming, across clean and
crash restarts. Every record must come back exactly as it was produced:
key, value (null too), headers, timestamp, order and offset."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import confluent_kafka
import kafka
import pytest

BROKER = Path(__file__).resolve().parents[2] / "examples" / "kafka_broker" / "broker.py"
PARTITIONS = 2
# How long a client may take for one step before the test fails.
STEP_SECONDS = 30


class Broker:
    """The broker in a child process, on a port of its choosing at first
    start and the same port after a restart (clients keep their address)."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.port = 0
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(BROKER), "--data", str(self.data), "--port", str(self.port),
             "--partitions", str(PARTITIONS)],
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.process.stdout.readline()
        assert line.startswith("listening on 127.0.0.1:"), line
        self.port = int(line.rsplit(":", 1)[1])

    def stop(self, sig: int = signal.SIGTERM) -> None:
        assert self.process is not None
        self.process.send_signal(sig)
        code = self.process.wait(timeout=STEP_SECONDS)
        assert code == (0 if sig == signal.SIGTERM else -sig), code
        self.process = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path / "broker")
    b.start()
    yield b
    if b.process is not None:
        b.stop()


def messages(topic: str, count: int, start: int = 0) -> list[dict]:
    """Records with every feature a Kafka record has: keys (and a null key),
    values of many sizes (and null values: tombstones), headers, explicit
    create timestamps."""
    out = []
    for i in range(start, start + count):
        value = None if i % 97 == 5 else (f"{topic}-{i}-".encode() * (1 + i % 40))
        key = None if i % 89 == 7 else f"key-{i % 13}".encode()
        headers = [("seq", str(i).encode()), ("empty", b"")] if i % 3 else None
        out.append({
            "key": key,
            "value": value,
            "headers": headers,
            "timestamp": 1_700_000_000_000 + i,
            "partition": i % PARTITIONS,
        })
    return out


def produce(address: str, topic: str, records: list[dict], codec: str, producer=None):
    """Produces `records` with an idempotent librdkafka producer; returns
    each record's acknowledged (partition, offset) and the producer."""
    if producer is None:
        producer = confluent_kafka.Producer({
            "bootstrap.servers": address,
            "enable.idempotence": True,
            "compression.type": codec,
            "linger.ms": 5,
        })
    acked: list = [None] * len(records)

    def delivered(index):
        def callback(error, message):
            assert error is None, error
            acked[index] = (message.partition(), message.offset())
        return callback

    for index, r in enumerate(records):
        producer.produce(
            topic, value=r["value"], key=r["key"], headers=r["headers"],
            timestamp=r["timestamp"], partition=r["partition"], on_delivery=delivered(index),
        )
        producer.poll(0)
    assert producer.flush(STEP_SECONDS) == 0
    assert None not in acked
    return acked, producer


def expected_by_partition(records: list[dict], acked: list) -> dict:
    """partition -> [(offset, key, value, headers, timestamp)] in offset order."""
    out: dict = {p: [] for p in range(PARTITIONS)}
    for r, (partition, offset) in zip(records, acked):
        assert partition == r["partition"]
        out[partition].append((offset, r["key"], r["value"], r["headers"] or [], r["timestamp"]))
    for rows in out.values():
        rows.sort()
    return out


def consume_confluent(address: str, topic: str, counts: dict, group: str) -> dict:
    consumer = confluent_kafka.Consumer({
        "bootstrap.servers": address,
        "group.id": group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
    })
    consumer.assign([confluent_kafka.TopicPartition(topic, p, 0) for p in counts])
    got: dict = {p: [] for p in counts}
    deadline = time.monotonic() + STEP_SECONDS
    while any(len(got[p]) < counts[p] for p in counts):
        assert time.monotonic() < deadline, {p: len(v) for p, v in got.items()}
        m = consumer.poll(0.5)
        if m is None:
            continue
        assert m.error() is None, m.error()
        kind, ts = m.timestamp()
        assert kind == confluent_kafka.TIMESTAMP_CREATE_TIME
        got[m.partition()].append((m.offset(), m.key(), m.value(), m.headers() or [], ts))
    consumer.commit(asynchronous=False)
    consumer.close()
    return got


def consume_kafka_python(address: str, topic: str, counts: dict, group: str) -> dict:
    consumer = kafka.KafkaConsumer(
        bootstrap_servers=address,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    partitions = [kafka.TopicPartition(topic, p) for p in counts]
    consumer.assign(partitions)
    got: dict = {p: [] for p in counts}
    deadline = time.monotonic() + STEP_SECONDS
    while any(len(got[p]) < counts[p] for p in counts):
        assert time.monotonic() < deadline, {p: len(v) for p, v in got.items()}
        for tp, batch in consumer.poll(timeout_ms=500).items():
            for m in batch:
                headers = [(k, v) for k, v in m.headers]
                got[tp.partition].append((m.offset, m.key, m.value, headers, m.timestamp))
    consumer.close()
    return got


@pytest.mark.parametrize("codec", ["lz4", "gzip", "zstd"])
def test_records_come_back_exactly_through_both_consumers(broker, codec):
    topic = f"orders-{codec}"
    records = messages(topic, 3000)
    acked, _ = produce(broker.address, topic, records, codec)
    expected = expected_by_partition(records, acked)
    counts = {p: len(rows) for p, rows in expected.items()}
    assert all(rows[i][0] == i for rows in expected.values() for i in range(len(rows))), \
        "offsets start at 0 and have no gaps"
    assert consume_confluent(broker.address, topic, counts, "g1") == expected
    assert consume_kafka_python(broker.address, topic, counts, "g2") == expected
    # The confluent consumer's commit is the store's group offset.
    consumer = kafka.KafkaConsumer(bootstrap_servers=broker.address, group_id="g1")
    for p, n in counts.items():
        assert consumer.committed(kafka.TopicPartition(topic, p)) == n
    consumer.close()


def test_restarts_lose_and_duplicate_nothing(broker):
    topic = "events"
    first = messages(topic, 1000)
    acked_first, producer = produce(broker.address, topic, first, "lz4")
    # A clean restart under a live idempotent producer: its sequences go on
    # from the producer state the store saved at close.
    broker.stop(signal.SIGTERM)
    broker.start()
    second = messages(topic, 1000, start=1000)
    acked_second, _ = produce(broker.address, topic, second, "lz4", producer)
    # A crash: every acknowledged record survives (the store acknowledged
    # each produce once it was fsynced); a new producer continues after it.
    broker.stop(signal.SIGKILL)
    broker.start()
    third = messages(topic, 1000, start=2000)
    acked_third, _ = produce(broker.address, topic, third, "zstd")

    records = first + second + third
    expected = expected_by_partition(records, acked_first + acked_second + acked_third)
    counts = {p: len(rows) for p, rows in expected.items()}
    for rows in expected.values():
        assert [row[0] for row in rows] == list(range(len(rows))), "no duplicates, no gaps"
    assert consume_confluent(broker.address, topic, counts, "after-restarts") == expected
    assert consume_kafka_python(broker.address, topic, counts, "kp") == expected


def test_list_offsets_and_unknown_partitions(broker):
    topic = "times"
    records = messages(topic, 100)
    produce(broker.address, topic, records, "gzip")
    consumer = kafka.KafkaConsumer(bootstrap_servers=broker.address)
    tp = kafka.TopicPartition(topic, 1)
    assert consumer.beginning_offsets([tp]) == {tp: 0}
    assert consumer.end_offsets([tp]) == {tp: 50}
    # Partition 1 holds the odd records: 1_700_000_000_051 is record 51,
    # its 26th record (offset 25).
    found = consumer.offsets_for_times({tp: 1_700_000_000_051})[tp]
    assert found.offset == 25
    assert consumer.offsets_for_times({tp: 1_800_000_000_000})[tp] is None
    assert consumer.partitions_for_topic(topic) == {0, 1}
    consumer.close()
    producer = confluent_kafka.Producer({"bootstrap.servers": broker.address})
    errors = []
    producer.produce(topic, b"x", partition=7, on_delivery=lambda e, m: errors.append(e))
    producer.flush(STEP_SECONDS)
    assert errors and errors[0] is not None


def test_a_malformed_request_closes_only_its_connection(broker):
    import socket
    import struct

    with socket.create_connection(("127.0.0.1", broker.port), timeout=STEP_SECONDS) as bad:
        # Metadata v1 whose topic array claims more bytes than were sent.
        body = struct.pack(">hhih", 3, 1, 7, -1) + struct.pack(">i", 5)
        bad.sendall(struct.pack(">i", len(body)) + body)
        assert bad.recv(1) == b"", "the broker closes the connection"
    produce(broker.address, "after-bad", messages("after-bad", 10), "gzip")
