"""What sendfile_to_fd writes is Kafka RecordBatch v2: kafka-python's own
record parser decodes it, CRCs verify, and every field matches what was
appended, for each compression codec. mqstore's tags and expire-at arrive as
headers `__mqs.tag` (UTF-8 tag) and `__mqs.expire_at` (8-byte big-endian ms)
after the user headers."""

import socket
import struct

import pytest

from kafka.record import MemoryRecords
from kafka.record.default_records import DefaultRecordBatch

import mqstore

CODECS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


def _expected_batches():
    """Batches to append: lists of dicts in the append_batch dict form."""
    mixed = [
        {
            "value": b"order-1",
            "key": b"customer-7",
            "headers": [("trace", b"abc"), ("empty", b""), ("null", None)],
            "tags": ["eu", "vip"],
            "timestamp_ms": 1_700_000_000_500,
            "expire_at_ms": 4_102_444_800_000,
        },
        # Out-of-order timestamp: a negative timestampDelta.
        {"value": b"order-2", "key": None, "timestamp_ms": 1_700_000_000_100},
        {"value": b"", "key": b"", "tags": ["only-tag"], "timestamp_ms": 1_700_000_000_900},
        {"value": bytes(range(256)) * 40, "headers": {"bin": bytes(range(256))}, "timestamp_ms": 1_700_000_001_000},
    ]
    compressible = [{"value": b"x%04d" % i * 50, "key": b"k%d" % (i % 5), "timestamp_ms": 1_700_000_002_000 + i} for i in range(200)]
    single = [{"value": "ünïcödé".encode(), "headers": [("ключ", "значение".encode())], "timestamp_ms": 1_700_000_003_000}]
    return [mixed, compressible, single]


def _send_and_receive(store, shard, offset=0):
    a, b = socket.socketpair()
    with a, b:
        total = store.plan_transfer(shard, offset, 1 << 30).total_bytes
        written, next_offset = store.sendfile_to_fd(shard, offset, 1 << 30, a)
        assert written == total
        a.shutdown(socket.SHUT_WR)
        data = bytearray()
        while True:
            chunk = b.recv(1 << 20)
            if not chunk:
                break
            data += chunk
    assert len(data) == written
    return bytes(data), next_offset


def _decode(data, codec):
    """All records of `data` via kafka-python, checking each batch's CRC."""
    records = MemoryRecords(data)
    batches, decoded = 0, []
    while records.has_next():
        batch = records.next_batch()
        assert isinstance(batch, DefaultRecordBatch)
        assert batch.magic == 2
        assert batch.validate_crc(), "CRC-32C mismatch"
        assert batch.compression_type == CODECS[codec]
        assert not batch.is_transactional and not batch.is_control_batch
        batch_records = list(batch)
        assert len(batch_records) == batch.records_count
        assert batch.max_timestamp == max(r.timestamp for r in batch_records)
        decoded += batch_records
        batches += 1
    assert records.valid_bytes() == len(data)  # no partial batch at the end
    return batches, decoded


def _split_headers(headers):
    """(user headers, tags, expire_at) from a Kafka record's headers."""
    user = [(k, v) for k, v in headers if not k.startswith("__mqs.")]
    reserved = [(k, v) for k, v in headers if k.startswith("__mqs.")]
    # Reserved headers come after every user header.
    assert headers == user + reserved
    tags = [v.decode() for k, v in reserved if k == "__mqs.tag"]
    expires = [v for k, v in reserved if k == "__mqs.expire_at"]
    assert {k for k, _ in reserved} <= {"__mqs.tag", "__mqs.expire_at"}
    assert len(expires) <= 1
    expire_at = None
    if expires:
        assert len(expires[0]) == 8
        (expire_at,) = struct.unpack(">q", expires[0])
    return user, tags, expire_at


def _normalized_headers(headers):
    if headers is None:
        return []
    items = headers.items() if isinstance(headers, dict) else headers
    return [(k, None if v is None else bytes(v)) for k, v in items]


@pytest.mark.parametrize("codec", list(CODECS))
def test_kafka_python_decodes_sendfile_output(store, codec):
    store.create_shard("s", compression=codec)
    batches = _expected_batches()
    expected = []
    for batch in batches:
        base = store.append_batch("s", batch)
        expected += [(base + i, item) for i, item in enumerate(batch)]

    data, next_offset = _send_and_receive(store, "s")
    assert next_offset == len(expected)
    batch_count, decoded = _decode(data, codec)
    assert batch_count == len(batches)
    assert len(decoded) == len(expected)

    for record, (offset, item) in zip(decoded, expected):
        assert record.offset == offset
        assert record.timestamp == item["timestamp_ms"]
        assert record.key == item.get("key")
        assert record.value == item["value"]
        user, tags, expire_at = _split_headers(record.headers)
        assert user == _normalized_headers(item.get("headers"))
        assert tags == item.get("tags", [])
        assert expire_at == item.get("expire_at_ms")

    # And mqstore's own read agrees with kafka-python.
    stored = store.read("s", 0, max_records=10_000).records
    assert [(r.offset, r.timestamp_ms, bytes(r.value)) for r in stored] == [
        (r.offset, r.timestamp, r.value) for r in decoded
    ]


@pytest.mark.parametrize("codec", list(CODECS))
def test_kafka_python_decodes_after_deletes(store, codec):
    store.create_shard("s", compression=codec)
    store.append_batch("s", [{"value": b"v%d" % i, "key": b"k%d" % (i % 4), "timestamp_ms": 1000 + i} for i in range(40)])
    store.append_batch("s", [{"value": b"w%d" % i, "timestamp_ms": 5000 + i} for i in range(10)])
    store.delete_by_keys("s", [b"k1"])
    store.delete_by_offsets("s", [0, 2, 45])
    live = [r.offset for r in store.read("s", 0, max_records=1000)]
    assert 0 not in live and 45 not in live

    data, next_offset = _send_and_receive(store, "s")
    assert next_offset == 50
    _, decoded = _decode(data, codec)
    assert [r.offset for r in decoded] == live
    for r in decoded:
        if r.offset < 40:
            assert r.value == b"v%d" % r.offset
            assert r.key == b"k%d" % (r.offset % 4)
            assert r.timestamp == 1000 + r.offset
        else:
            assert r.value == b"w%d" % (r.offset - 40)
            assert r.timestamp == 5000 + r.offset - 40


@pytest.mark.parametrize("codec", list(CODECS))
def test_transfer_from_middle_offset(store, codec):
    store.create_shard("s", compression=codec)
    for i in range(5):
        store.append_batch("s", [{"value": b"%d-%d" % (i, j), "timestamp_ms": 10 * i + j} for j in range(3)])
    # A transfer starts at the batch holding the offset; the consumer skips
    # the records before it, as Kafka consumers do.
    data, next_offset = _send_and_receive(store, "s", offset=7)
    assert next_offset == 15
    _, decoded = _decode(data, codec)
    assert decoded[0].offset <= 7
    assert [r.offset for r in decoded if r.offset >= 7] == list(range(7, 15))
    assert decoded[-1].value == b"4-2"
