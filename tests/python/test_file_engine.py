"""The File engine through the Python binding: zero-copy memoryviews of its
maps, sendfile_to_fd output that kafka-python decodes, the edge preset, and
a store reopened from its segment files."""

import os
import tempfile

import pytest
from kafka.record import MemoryRecords

import mqstore


def _fill(store, shard, batches=20, per_batch=10):
    for b in range(batches):
        values = [f"file-{b * per_batch + i:04d}-".encode() + b"v" * 500 for i in range(per_batch)]
        assert store.append_batch(shard, values) == b * per_batch


def _kafka_offsets(data):
    records = MemoryRecords(data)
    offsets = []
    while records.has_next():
        batch = records.next_batch()
        assert batch.validate_crc(), "CRC-32C mismatch"
        offsets.extend(r.offset for r in batch)
    return offsets


def test_file_engine_round_trip_and_reopen(tmp_path):
    path = tmp_path / "edge"
    with mqstore.Store(path, 'preset = "edge"') as store:
        info = store.create_shard("f", segment_bytes=65536, durability="fsync")
        assert info.engine == "file"
        _fill(store, "f")
        result = store.read("f", 0, max_records=1000, max_bytes=1 << 30)
        assert [r.offset for r in result.records] == list(range(200))
        view = result.records[57].value
        assert isinstance(view, memoryview) and view.readonly
        assert bytes(view[:10]) == b"file-0057-"
        with tempfile.TemporaryFile() as out:
            written, next_offset = store.sendfile_to_fd("f", 0, 1 << 30, out.fileno())
            assert next_offset == 200
            assert written == store.shard_info("f").bytes
            out.seek(0)
            data = out.read()
        assert len(data) == written
        assert _kafka_offsets(data) == list(range(200))
        stats = store.stats("f")["engine_stats"]
        assert stats["segments"] > 1, stats
        assert stats["engine"]["max_memory_mb"] == 100
    # The memoryview outlives the store: it holds the mapped segment.
    assert bytes(view[:10]) == b"file-0057-"

    with mqstore.Store(path, 'preset = "edge"') as store:
        info = store.shard_info("f")
        assert (info.first_offset, info.next_offset, info.records) == (0, 200, 200)
        assert bytes(store.read("f", 199, 1).records[0].value[:10]) == b"file-0199-"
        assert store.delete_records_before("f", 150) == 150
        assert store.append("f", b"after") == 200
    with mqstore.Store(path, 'preset = "edge"') as store:
        info = store.shard_info("f")
        assert (info.first_offset, info.next_offset) == (150, 201)
        assert os.path.isdir(path / "file")


def test_file_engine_refuses_bad_config(tmp_path):
    with pytest.raises(mqstore.ConfigError, match="file.max_memory_mb"):
        mqstore.Store(tmp_path / "bad", "[file]\nmax_memory_mb = 0\n")
