"""append_raw stores RecordBatches exactly as a Kafka client built them:
kafka-python's own producer batch builder (idempotent, every codec) makes
the bytes, mqstore stores them byte for byte but for the base offset, reads
decode them, and a consumer's transfer gives them back unchanged."""

import socket
import struct

import pytest

from kafka.record.default_records import DefaultRecordBatchBuilder

import mqstore

CODECS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
ENGINES = ["journal", "memory", "file"]


def producer_batch(codec, values, producer_id=-1, sequence=-1, timestamp=1_700_000_000_000):
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=CODECS[codec],
        is_transactional=False,
        producer_id=producer_id,
        producer_epoch=0 if producer_id >= 0 else -1,
        base_sequence=sequence,
        batch_size=1 << 20,
    )
    for i, value in enumerate(values):
        builder.append(i, timestamp=timestamp + i, key=b"key-%d" % i, value=value, headers=[("h", b"v")])
    return bytes(builder.build())


def transfer_bytes(store, shard, offset):
    a, b = socket.socketpair()
    with a, b:
        written, _ = store.sendfile_to_fd(shard, offset, 1 << 30, a)
        a.shutdown(socket.SHUT_WR)
        data = bytearray()
        while chunk := b.recv(1 << 20):
            data += chunk
    assert len(data) == written
    return bytes(data)


@pytest.fixture(params=ENGINES)
def engine_store(request, tmp_path):
    store = mqstore.Store(str(tmp_path / "s"), f'[shard]\nengine = "{request.param}"\n')
    yield store
    store.close()


def test_client_batches_of_every_codec_round_trip(engine_store):
    store = engine_store
    store.create_shard("t")
    store.append_batch("t", [b"first"])
    sent = [
        producer_batch(codec, [b"%s-%d" % (codec.encode(), i) * 20 for i in range(5)], producer_id=9, sequence=5 * n)
        for n, codec in enumerate(CODECS)
    ]
    bases = store.append_raw("t", b"".join(sent))
    assert bases == [1 + 5 * n for n in range(len(sent))]

    records = list(store.read("t", 1, max_records=1000))
    assert [bytes(r.value) for r in records] == [
        b"%s-%d" % (codec.encode(), i) * 20 for codec in CODECS for i in range(5)
    ]
    assert [r.offset for r in records] == list(range(1, 1 + 5 * len(sent)))
    assert bytes(records[0].key) == b"key-0"
    assert records[1].timestamp_ms == 1_700_000_000_001
    assert [bytes(r.key) for r in store.read_by_keys("t", [b"key-3"])] == [b"key-3"] * len(sent)

    stream = transfer_bytes(store, "t", 1)
    pos = 0
    for batch, base in zip(sent, bases):
        stored = stream[pos : pos + len(batch)]
        assert struct.unpack(">q", stored[:8])[0] == base
        assert stored[8:] == batch[8:], "stored byte for byte"
        pos += len(batch)
    assert pos == len(stream)


def test_a_bad_batch_stores_nothing_and_names_itself(engine_store):
    store = engine_store
    store.create_shard("t")
    good = producer_batch("lz4", [b"a", b"b"])
    damaged = bytearray(producer_batch("none", [b"c"]))
    damaged[-1] ^= 0x01
    with pytest.raises(mqstore.CorruptionError, match="batch 1"):
        store.append_raw("t", good + bytes(damaged))
    control = bytearray(good)
    control[22] |= 0x20  # the control bit, in the attributes' low byte
    with pytest.raises(mqstore.CorruptionError, match="CRC"):
        store.append_raw("t", bytes(control))
    with pytest.raises(mqstore.InvalidArgument, match="empty"):
        store.append_raw("t", b"")
    with pytest.raises(TypeError, match="data"):
        store.append_raw("t", "not bytes")
    with pytest.raises(mqstore.ShardNotFound):
        store.append_raw("nope", good)
    assert store.shard_info("t").next_offset == 0

    bases = store.append_raw_nowait("t", memoryview(good))
    assert bases == [0]
    store.wait_durable("t", 1)
    assert [bytes(r.value) for r in store.read("t", 0)] == [b"a", b"b"]


def test_producer_batches_survive_a_reopen(tmp_path):
    path = str(tmp_path / "s")
    batch = producer_batch("gzip", [b"x" * 100, b"y" * 100], producer_id=3, sequence=0)
    with mqstore.Store(path) as store:
        store.create_shard("t")
        assert store.append_raw("t", batch * 1) == [0]
    with mqstore.Store(path) as store:
        stored = transfer_bytes(store, "t", 0)
        assert stored == batch
        assert [bytes(r.value) for r in store.read("t", 0)] == [b"x" * 100, b"y" * 100]


def test_null_values_are_not_empty_values(engine_store):
    """Tombstones through the record API: null and empty round-trip
    distinctly, and Kafka clients see a null value."""
    from kafka.record import MemoryRecords

    store = engine_store
    store.create_shard("t")
    store.append("t", None, key=b"gone")
    store.append_batch("t", [b"", None, {"value": None, "key": b"k"}, mqstore.Message(None, key=b"m")])
    values = [None if r.value is None else bytes(r.value) for r in store.read("t", 0)]
    assert values == [None, b"", None, None, None]
    assert "value=None" in repr(next(iter(store.read("t", 0))))
    (tombstone,) = store.read_by_keys("t", [b"gone"])
    assert tombstone.value is None and bytes(tombstone.key) == b"gone"
    decoded = []
    batches = MemoryRecords(transfer_bytes(store, "t", 0))
    while (batch := batches.next_batch()) is not None:
        decoded += [(r.key, r.value) for r in batch]
    assert decoded == [(b"gone", None), (None, b""), (None, None), (b"k", None), (b"m", None)]
    # A producer's tombstone, stored raw, reads back as null too.
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=False,
                                        producer_id=-1, producer_epoch=-1, base_sequence=-1, batch_size=1 << 20)
    builder.append(0, timestamp=1, key=b"raw", value=None, headers=[])
    (base,) = store.append_raw("t", bytes(builder.build()))
    assert next(iter(store.read("t", base))).value is None


def test_log_append_time_shards_stamp_every_batch(engine_store):
    store = engine_store
    info = store.create_shard("t", timestamp_type="log_append_time")
    assert info.timestamp_type == "log_append_time"
    assert store.create_shard("c").timestamp_type == "create_time"
    store.append("t", b"old", timestamp_ms=1000)
    store.append_raw("t", producer_batch("snappy", [b"raw"], timestamp=2000))
    assert all(r.timestamp_ms > 1_700_000_000_000 for r in store.read("t", 0))
    with pytest.raises(mqstore.ConfigError, match="timestamp_type"):
        store.create_shard("bad", timestamp_type="sometimes")


def test_idempotent_producer_retries_are_answered_with_their_offsets(tmp_path):
    path = str(tmp_path / "s")
    with mqstore.Store(path) as store:
        store.create_shard("t")
        first = producer_batch("gzip", [b"a", b"b"], producer_id=11, sequence=0)
        second = producer_batch("zstd", [b"c"], producer_id=11, sequence=2)
        assert store.append_raw("t", first) == [0]
        assert store.append_raw("t", second) == [2]
        with pytest.raises(mqstore.DuplicateSequence) as retry:
            store.append_raw("t", first)
        assert retry.value.base_offsets == [0]
        assert retry.value.status == mqstore.Status.DUPLICATE_SEQUENCE
        with pytest.raises(mqstore.OutOfOrderSequence, match="sequence 9 after 2"):
            store.append_raw("t", producer_batch("none", [b"x"], producer_id=11, sequence=9))
        assert store.shard_info("t").next_offset == 3
    # After a restart the retry is still recognised.
    with mqstore.Store(path) as store:
        with pytest.raises(mqstore.DuplicateSequence) as retry:
            store.append_raw("t", second)
        assert retry.value.base_offsets == [2]
        assert store.shard_info("t").next_offset == 3


def test_recovery_events_reach_python_logging(tmp_path, caplog):
    """A torn tail cut at open is logged as a warning on the mqstore logger."""
    path = tmp_path / "s"
    config = '[shard]\nengine = "file"\ndurability = "os"\n'
    with mqstore.Store(str(path), config) as store:
        store.create_shard("f")
        store.append_batch("f", [b"x" * 50] * 5)
    segment = path / "file" / "00000000000000000001" / "00000000000000000000.log"
    with open(segment, "ab") as f:
        f.write(b"half a batch")
    mqstore.enable_logging()
    try:
        with caplog.at_level("WARNING", logger="mqstore"):
            with mqstore.Store(str(path), config) as store:
                mqstore.disable_logging()  # delivers what was queued
                assert store.shard_info("f").next_offset == 5
    finally:
        mqstore.disable_logging()
    warnings = [r for r in caplog.records if r.name == "mqstore" and "torn tail" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelname == "WARNING"
