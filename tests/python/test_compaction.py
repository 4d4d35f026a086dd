"""Compacted shards (cleanup_policy = "compact") through the Python binding."""

import time

import pytest

import mqstore
from hybrid_helpers import HYBRID_TIERING, wait_tiered

COMPACT = {"cleanup_policy": "compact", "delete_retention_ms": 60000}


@pytest.mark.parametrize(
    "engine", ["memory", "journal", "file", "rocksdb", "mysql", "redis", "s3", "hybrid"]
)
def test_compaction_keeps_the_newest_value_of_each_key(tmp_path, engine):
    # A hybrid shard compacts records its cold tier holds.
    with mqstore.Store(tmp_path / "store", HYBRID_TIERING) as store:
        store.create_shard("c", engine=engine, **COMPACT)
        hour_ago = int(time.time() * 1000) - 3_600_000
        for key, value in [(b"a", b"1"), (b"b", b"1"), (b"a", b"2"), (b"b", None), (b"z", b"end")]:
            store.append("c", value, key=key, timestamp_ms=hour_ago)
        if engine == "hybrid":
            assert wait_tiered(store, "c", 5) == 5
        # "a"@0 superseded; "b"@1 superseded by its tombstone, which is
        # older than delete_retention_ms and goes too.
        assert store.compact("c") == 3
        left = [(r.offset, bytes(r.key), r.value and bytes(r.value)) for r in store.read("c", 0)]
        assert left == [(2, b"a", b"2"), (4, b"z", b"end")]
        assert store.read_by_keys("c", [b"b"]) == []
        assert store.stats("c")["compaction"]["removed_records"] == 3


def test_records_without_a_key_are_refused(store):
    info = store.create_shard("c", **COMPACT)
    assert (info.cleanup_policy, info.delete_retention_ms, info.min_compaction_lag_ms) == (
        "compact",
        60000,
        0,
    )
    with pytest.raises(mqstore.InvalidArgument, match="has no key"):
        store.append("c", b"v")
    with pytest.raises(mqstore.InvalidArgument, match="record 1 has no key"):
        store.append_batch("c", [{"key": b"k", "value": b"v"}, b"keyless"])
    assert store.shard_info("c").next_offset == 0


def test_bad_compaction_options_and_plain_shards(store):
    with pytest.raises(mqstore.ConfigError, match="compact,delete"):
        store.create_shard("c", options='cleanup_policy = "compact"\nretention_bytes = 10')
    store.create_shard("plain")
    with pytest.raises(mqstore.InvalidArgument, match="not compacted"):
        store.compact("plain")
    with pytest.raises(mqstore.ShardNotFound):
        store.compact("nope")
