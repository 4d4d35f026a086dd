"""Every Store method through the Python binding: round trips, limits,
lookups, deletes, group offsets and statistics."""

import array
import pathlib
import time

import pytest

import mqstore

# ------------------------------------------------------------------ module


def test_version_and_constants():
    assert isinstance(mqstore.__version__, str) and mqstore.__version__
    assert mqstore.version() == mqstore.__version__
    assert mqstore.EARLIEST == -2
    assert mqstore.LATEST == -1
    for name in mqstore.__all__:
        assert hasattr(mqstore, name), name


# ------------------------------------------------------------ store basics


def test_open_with_str_and_pathlike(tmp_path):
    with mqstore.Store(str(tmp_path / "a")) as a:
        assert a.path == tmp_path / "a"
        assert isinstance(a.path, pathlib.Path)
    with mqstore.Store(tmp_path / "b") as b:
        assert (tmp_path / "b" / "LOCK").exists()
        assert "open" in repr(b)


def test_context_manager_closes_and_close_is_idempotent(tmp_path):
    with mqstore.Store(tmp_path) as store:
        assert not store.closed
    assert store.closed
    assert "closed" in repr(store)
    store.close()  # a second close is a no-op, like file.close()
    assert store.closed


def test_context_manager_closes_on_exception(tmp_path):
    with pytest.raises(RuntimeError):
        with mqstore.Store(tmp_path) as store:
            raise RuntimeError("boom")
    assert store.closed
    # The directory lock was released: the directory can be opened again.
    mqstore.Store(tmp_path).close()


def test_config_text_and_dict(tmp_path):
    config = '[store]\nmax_record_bytes = 4096\n[shard]\ncompression = "lz4"\nretention_records = 9\n'
    with mqstore.Store(tmp_path, config) as store:
        resolved = store.config
        assert resolved["max_record_bytes"] == 4096
        assert resolved["shard_defaults"]["compression"] == "lz4"
        info = store.create_shard("s")
        assert info.compression == "lz4"
        assert info.retention_records == 9


def test_from_config_file(tmp_path):
    path = tmp_path / "storage.toml"
    path.write_text('preset = "financial"\n[shard]\nretention_bytes = 5000\n')
    with mqstore.Store.from_config_file(tmp_path / "store", path) as store:
        assert store.config["preset"] == "financial"
        assert store.create_shard("s").retention_bytes == 5000


def test_from_config_file_missing_is_an_io_error(tmp_path):
    with pytest.raises(mqstore.StorageIOError) as info:
        mqstore.Store.from_config_file(tmp_path, tmp_path / "missing.toml")
    assert info.value.errno == 2
    assert "missing.toml" in str(info.value)


# ------------------------------------------------------------------ shards


def test_create_list_info_delete(store):
    info = store.create_shard("orders")
    assert isinstance(info, mqstore.ShardInfo)
    assert (info.name, info.engine, info.durability, info.compression) == (
        "orders",
        "journal",
        "fsync",
        "none",
    )
    assert (info.first_offset, info.next_offset, info.records, info.bytes) == (0, 0, 0, 0)
    store.create_shard("audit")
    assert store.list_shards() == ["audit", "orders"]
    assert store.shard_info("orders") == info
    assert "orders" in repr(info)
    store.delete_shard("orders")
    assert store.list_shards() == ["audit"]


def test_create_shard_keyword_options(store):
    info = store.create_shard(
        "s",
        compression="zstd",
        durability="none",
        engine="memory",
        segment_bytes=1 << 20,
        retention_ms=60_000,
        retention_bytes=1 << 30,
        retention_records=100,
    )
    assert info.compression == "zstd"
    assert info.segment_bytes == 1 << 20
    assert info.retention_ms == 60_000
    assert info.retention_bytes == 1 << 30
    assert info.retention_records == 100


def test_create_shard_options_text_overridden_by_keywords(store):
    info = store.create_shard("s", options='compression = "lz4"\nretention_records = 5', retention_records=7)
    assert info.compression == "lz4"
    assert info.retention_records == 7


def test_shard_info_tracks_appends(store, shard):
    store.append_batch(shard, [b"a" * 10, b"b" * 10, b"c" * 10])
    info = store.shard_info(shard)
    assert (info.first_offset, info.next_offset, info.records) == (0, 3, 3)
    assert info.bytes > 30


# ----------------------------------------------------------------- appends


def test_append_round_trip_every_field(store, shard):
    offset = store.append(
        shard,
        b"value",
        key=b"key",
        headers=[("h1", b"v1"), ("h2", None), ("h1", b"again")],
        tags=["eu", "vip"],
        timestamp_ms=1_700_000_000_123,
        expire_at_ms=4_000_000_000_000,
    )
    assert offset == 0
    (record,) = store.read(shard, 0).records
    assert isinstance(record, mqstore.Record)
    assert record.offset == 0
    assert record.timestamp_ms == 1_700_000_000_123
    assert isinstance(record.value, memoryview) and record.value.readonly
    assert bytes(record.value) == b"value"
    assert bytes(record.key) == b"key"
    assert [(name, None if v is None else bytes(v)) for name, v in record.headers] == [
        ("h1", b"v1"),
        ("h2", None),
        ("h1", b"again"),
    ]
    assert record.tags == ["eu", "vip"]
    assert record.expire_at_ms == 4_000_000_000_000
    assert "offset=0" in repr(record)


def test_append_defaults(store, shard):
    before = int(time.time() * 1000)
    store.append(shard, b"v")
    after = int(time.time() * 1000)
    (record,) = store.read(shard, 0)
    assert record.key is None
    assert record.headers == []
    assert record.tags == []
    assert record.expire_at_ms is None
    # timestamp_ms=0 means "now".
    assert before - 1000 <= record.timestamp_ms <= after + 1000


def test_append_headers_as_dict(store, shard):
    store.append(shard, b"v", headers={"a": b"1", "b": None, "c": memoryview(b"3")})
    (record,) = store.read(shard, 0)
    assert [(n, v if v is None else bytes(v)) for n, v in record.headers] == [
        ("a", b"1"),
        ("b", None),
        ("c", b"3"),
    ]


@pytest.mark.parametrize(
    "value",
    [b"abc", bytearray(b"abc"), memoryview(b"xabcx")[1:4], array.array("B", b"abc")],
    ids=["bytes", "bytearray", "memoryview-slice", "array"],
)
def test_append_accepts_any_bytes_like(store, shard, value):
    store.append(shard, value, key=value, headers=[("h", value)])
    (record,) = store.read(shard, 0)
    assert bytes(record.value) == b"abc"
    assert bytes(record.key) == b"abc"
    assert bytes(record.headers[0][1]) == b"abc"


def test_append_empty_value_and_key(store, shard):
    store.append(shard, b"", key=b"")
    (record,) = store.read(shard, 0)
    assert bytes(record.value) == b""
    assert record.key is not None and bytes(record.key) == b""


def test_append_returns_dense_offsets(store, shard):
    assert [store.append(shard, b"%d" % i) for i in range(5)] == [0, 1, 2, 3, 4]


def test_append_batch_of_bytes(store, shard):
    values = [b"v%d" % i for i in range(100)]
    assert store.append_batch(shard, values) == 0
    assert store.append_batch(shard, values[:10]) == 100
    result = store.read(shard, 0, max_records=1000)
    assert [bytes(r.value) for r in result] == values + values[:10]
    assert [r.offset for r in result] == list(range(110))
    assert result.next_offset == 110


def test_append_batch_mixed_items(store, shard):
    base = store.append_batch(
        shard,
        [
            b"plain",
            bytearray(b"bytearray"),
            {"value": b"dict", "key": b"k", "headers": {"h": b"v"}, "tags": ["t"], "timestamp_ms": 5},
            {"value": memoryview(b"dict2"), "expire_at_ms": 4_000_000_000_000, "key": None},
            mqstore.Message(b"message", key=b"mk", headers=[("x", None)], tags=["a", "b"], timestamp_ms=7),
        ],
    )
    assert base == 0
    records = store.read(shard, 0).records
    assert [bytes(r.value) for r in records] == [b"plain", b"bytearray", b"dict", b"dict2", b"message"]
    assert bytes(records[2].key) == b"k"
    assert records[2].tags == ["t"]
    assert records[2].timestamp_ms == 5
    assert records[3].key is None
    assert records[3].expire_at_ms == 4_000_000_000_000
    assert bytes(records[4].key) == b"mk"
    assert records[4].headers[0][0] == "x" and records[4].headers[0][1] is None
    assert records[4].tags == ["a", "b"]
    assert records[4].timestamp_ms == 7


def test_append_batch_accepts_any_iterable(store, shard):
    assert store.append_batch(shard, (b"a", b"b")) == 0
    assert store.append_batch(shard, (bytes([i]) for i in range(3))) == 2
    assert store.shard_info(shard).next_offset == 5


def test_records_can_be_reappended(store, shard):
    store.append(shard, b"v", key=b"k", headers=[("h", b"x"), ("n", None)], tags=["t"], timestamp_ms=42)
    store.create_shard("copy")
    store.append_batch("copy", store.read(shard, 0).records)
    (copied,) = store.read("copy", 0)
    assert (bytes(copied.value), bytes(copied.key), copied.tags, copied.timestamp_ms) == (
        b"v",
        b"k",
        ["t"],
        42,
    )
    assert [(n, v if v is None else bytes(v)) for n, v in copied.headers] == [("h", b"x"), ("n", None)]


def test_message_attributes():
    message = mqstore.Message(b"v", key=b"k", tags=["t"], timestamp_ms=3)
    assert message.value == b"v" and message.key == b"k" and message.tags == ["t"]
    assert message.headers is None and message.expire_at_ms is None
    assert message.timestamp_ms == 3
    assert "Message(" in repr(message)


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_compressed_round_trip(store, codec):
    store.create_shard("c", compression=codec)
    values = [bytes([i % 7]) * 200 for i in range(50)]
    store.append_batch("c", [{"value": v, "key": b"k%d" % i, "tags": ["x"]} for i, v in enumerate(values)])
    result = store.read("c", 0)
    assert [bytes(r.value) for r in result] == values
    assert [bytes(r.key) for r in result] == [b"k%d" % i for i in range(50)]
    if codec != "none":
        assert store.shard_info("c").bytes < sum(map(len, values))


# ------------------------------------------------------------------- reads


def test_read_limits_and_next_offset(store, shard):
    store.append_batch(shard, [b"x" * 100 for _ in range(20)])
    result = store.read(shard, 0, max_records=5)
    assert [r.offset for r in result] == [0, 1, 2, 3, 4]
    assert result.next_offset == 5
    assert len(result) == 5
    result = store.read(shard, result.next_offset, max_records=100, max_bytes=350)
    assert 1 <= len(result) <= 4
    assert result.next_offset == 5 + len(result)
    # The first record is returned even when it alone exceeds max_bytes.
    result = store.read(shard, 7, max_bytes=1)
    assert [r.offset for r in result] == [7]
    assert result.next_offset == 8
    # Reading at the high watermark returns nothing and stays there.
    result = store.read(shard, 20)
    assert result.records == [] and result.next_offset == 20
    assert "next_offset=20" in repr(result)


def test_read_result_is_iterable_and_keeps_records(store, shard):
    store.append_batch(shard, [b"a", b"b"])
    result = store.read(shard, 0)
    assert [bytes(r.value) for r in result] == [b"a", b"b"]
    assert result.records is result.records  # one list, built once


def test_consume_everything_in_pages(store, shard):
    for i in range(10):
        store.append_batch(shard, [b"%d-%d" % (i, j) for j in range(7)])
    offset, seen = 0, []
    while True:
        page = store.read(shard, offset, max_records=4)
        if not page.records:
            break
        seen += [r.offset for r in page]
        offset = page.next_offset
    assert seen == list(range(70))


def test_read_by_keys(store, shard):
    for i in range(10):
        store.append(shard, b"v%d" % i, key=b"k%d" % (i % 3))
    records = store.read_by_keys(shard, [b"k1", bytearray(b"k2")])
    assert [r.offset for r in records] == [1, 2, 4, 5, 7, 8]
    assert store.read_by_keys(shard, [b"k0"], max_records=2)[1].offset == 3
    assert store.read_by_keys(shard, [b"missing"]) == []
    assert store.read_by_keys(shard, []) == []


def test_read_by_tag(store, shard):
    for i in range(10):
        store.append(shard, b"v%d" % i, tags=["even"] if i % 2 == 0 else ["odd", "x"])
    result = store.read_by_tag(shard, "even")
    assert [r.offset for r in result] == [0, 2, 4, 6, 8]
    result = store.read_by_tag(shard, "odd", from_offset=4, max_records=2)
    assert [r.offset for r in result] == [5, 7]
    assert 7 < result.next_offset <= 10
    assert store.read_by_tag(shard, "none").records == []


def test_offset_for_timestamp(store, shard):
    for i, ts in enumerate([1000, 2000, 3000, 4000]):
        store.append(shard, b"%d" % i, timestamp_ms=ts)
    assert store.offset_for_timestamp(shard, 0) == 0
    assert store.offset_for_timestamp(shard, 2000) == 1
    assert store.offset_for_timestamp(shard, 2500) == 2
    assert store.offset_for_timestamp(shard, 4000) == 3
    assert store.offset_for_timestamp(shard, 4001) is None
    assert store.offset_for_timestamp(shard, mqstore.EARLIEST) == 0
    assert store.offset_for_timestamp(shard, mqstore.LATEST) == 4


def test_expired_records_are_skipped(store, shard):
    store.append(shard, b"gone", expire_at_ms=1)
    store.append(shard, b"kept", expire_at_ms=4_000_000_000_000)
    store.append(shard, b"forever")
    result = store.read(shard, 0)
    assert [bytes(r.value) for r in result] == [b"kept", b"forever"]
    assert result.next_offset == 3


# ----------------------------------------------------------------- deletes


def test_delete_records_before(store, shard):
    store.append_batch(shard, [b"%d" % i for i in range(10)])
    assert store.delete_records_before(shard, 4) == 4
    assert store.shard_info(shard).first_offset == 4
    assert [r.offset for r in store.read(shard, 4)] == list(range(4, 10))
    with pytest.raises(mqstore.OffsetOutOfRange):
        store.read(shard, 3)
    assert store.offset_for_timestamp(shard, mqstore.EARLIEST) == 4
    # Clamped to the high watermark.
    assert store.delete_records_before(shard, 100) == 10
    assert store.read(shard, 10).records == []


def test_delete_by_keys(store, shard):
    for i in range(9):
        store.append(shard, b"v", key=b"k%d" % (i % 3))
    assert store.delete_by_keys(shard, [b"k0", memoryview(b"k2")]) == 6
    assert [r.offset for r in store.read(shard, 0)] == [1, 4, 7]
    assert store.delete_by_keys(shard, [b"k0"]) == 0
    assert store.read_by_keys(shard, [b"k0"]) == []


def test_delete_by_offsets(store, shard):
    store.append_batch(shard, [b"%d" % i for i in range(6)])
    assert store.delete_by_offsets(shard, [1, 3, 99]) == 2
    assert [r.offset for r in store.read(shard, 0)] == [0, 2, 4, 5]
    assert store.delete_by_offsets(shard, (1,)) == 0
    assert store.shard_info(shard).records == 4


# ------------------------------------------------------------------ groups


def test_group_offsets(store, shard):
    store.create_shard("other")
    assert store.committed_offset("g", shard) is None
    store.commit_offset("g", shard, 5)
    store.commit_offset("g", "other", 1)
    store.commit_offset("h", shard, 2)
    assert store.committed_offset("g", shard) == 5
    store.commit_offset("g", shard, 7)
    assert store.committed_offset("g", shard) == 7
    assert store.delete_group("g") == 2
    assert store.committed_offset("g", shard) is None
    assert store.committed_offset("h", shard) == 2
    assert store.delete_group("nobody") == 0


def test_delete_shard_forgets_its_group_offsets(store, shard):
    store.commit_offset("g", shard, 3)
    store.delete_shard(shard)
    store.create_shard(shard)
    assert store.committed_offset("g", shard) is None


# ------------------------------------------------------------------- stats


def test_stats(store, shard):
    store.append_batch(shard, [b"a", b"b", b"c"])
    store.commit_offset("g", shard, 1)
    stats = store.stats()
    assert isinstance(stats, dict)
    assert stats["shard_count"] == 1
    assert stats["group_offsets"] == 1
    assert stats["engines"]["journal"]["records"] == 3
    assert stats["shards"][shard]["next_offset"] == 3
    one = store.stats(shard)
    assert one["name"] == shard
    assert one["records"] == 3
    assert one["options"]["compression"] == "none"
    assert "engine_stats" in one


def test_shards_created_together_all_or_none(store):
    store.create_shards(["a", "b", "c"], 'retention_records = 3')
    assert store.list_shards() == ["a", "b", "c"]
    assert store.shard_info("c").retention_records == 3
    with pytest.raises(mqstore.ShardExists, match="'a'"):
        store.create_shards(["d", "a"])
    with pytest.raises(mqstore.InvalidArgument, match="given twice"):
        store.create_shards(["e", "e"])
    assert store.list_shards() == ["a", "b", "c"]
