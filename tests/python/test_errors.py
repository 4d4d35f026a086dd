"""The exception hierarchy and every error path through the binding."""

import pytest

import mqstore

HIERARCHY = {
    # class: (status, builtin base or None)
    mqstore.InvalidArgument: (1, ValueError),
    mqstore.ConfigError: (2, ValueError),
    mqstore.ShardNotFound: (3, LookupError),
    mqstore.ShardExists: (4, None),
    mqstore.RecordTooLarge: (5, ValueError),
    mqstore.OffsetOutOfRange: (6, LookupError),
    mqstore.InvalidHandle: (7, None),
    mqstore.StoreClosed: (8, None),
    mqstore.CorruptionError: (9, None),
    mqstore.StorageIOError: (10, OSError),
    mqstore.WouldBlock: (11, BlockingIOError),
    mqstore.Unsupported: (12, NotImplementedError),
    mqstore.Poisoned: (13, None),
    mqstore.InternalError: (14, None),
    mqstore.Locked: (15, None),
    mqstore.ProducerFenced: (16, None),
    mqstore.OutOfOrderSequence: (17, None),
    mqstore.DuplicateSequence: (18, None),
}


def test_hierarchy():
    assert issubclass(mqstore.MqsError, Exception)
    assert set(HIERARCHY) == set(mqstore.MqsError.__subclasses__())
    for cls, (status, builtin) in HIERARCHY.items():
        assert issubclass(cls, mqstore.MqsError), cls
        assert cls.status == status, cls
        assert isinstance(cls.status, mqstore.Status)
        assert mqstore.Status(status) is cls.status
        assert cls.__module__ == "mqstore"
        assert cls.__doc__
        if builtin is not None:
            assert issubclass(cls, builtin), cls
    # Statuses are distinct and cover every non-OK code.
    assert sorted(s for s, _ in HIERARCHY.values()) == list(range(1, 19))
    assert not issubclass(mqstore.ShardNotFound, KeyError)


def test_exceptions_can_be_raised_from_python():
    with pytest.raises(mqstore.ShardNotFound) as info:
        raise mqstore.ShardNotFound("custom")
    assert str(info.value) == "custom"
    assert info.value.status == mqstore.Status.SHARD_NOT_FOUND


def test_unknown_shard(store):
    for call in (
        lambda: store.append("nope", b"v"),
        lambda: store.append_batch("nope", [b"v"]),
        lambda: store.read("nope", 0),
        lambda: store.read_by_keys("nope", [b"k"]),
        lambda: store.read_by_tag("nope", "t"),
        lambda: store.offset_for_timestamp("nope", 0),
        lambda: store.delete_records_before("nope", 0),
        lambda: store.delete_by_keys("nope", [b"k"]),
        lambda: store.delete_by_offsets("nope", [0]),
        lambda: store.plan_transfer("nope", 0, 100),
        lambda: store.shard_info("nope"),
        lambda: store.delete_shard("nope"),
        lambda: store.commit_offset("g", "nope", 0),
        lambda: store.committed_offset("g", "nope"),
        lambda: store.stats("nope"),
    ):
        with pytest.raises(mqstore.ShardNotFound) as info:
            call()
        assert info.value.status == 3
        assert str(info.value) == "shard not found: 'nope'"
        assert isinstance(info.value, LookupError)


def test_shard_exists(store, shard):
    with pytest.raises(mqstore.ShardExists, match="shard already exists: 's'"):
        store.create_shard(shard)


@pytest.mark.parametrize("name", ["", "x" * 256, "bad\nname"])
def test_invalid_shard_name(store, name):
    with pytest.raises(mqstore.InvalidArgument) as info:
        store.create_shard(name)
    assert isinstance(info.value, ValueError)


def test_record_too_large(tmp_path):
    with mqstore.Store(tmp_path, "[store]\nmax_record_bytes = 1024\n") as store:
        store.create_shard("s")
        store.append("s", b"x" * 900)
        with pytest.raises(mqstore.RecordTooLarge) as info:
            store.append("s", b"x" * 2000)
        assert "exceeds the limit of 1024 bytes" in str(info.value)
        assert isinstance(info.value, ValueError)
        with pytest.raises(mqstore.RecordTooLarge):
            store.append_batch("s", [b"ok", b"x" * 2000])
        # Atomic: nothing of the failed batch was stored.
        assert store.shard_info("s").next_offset == 1


def test_batch_too_large(tmp_path):
    config = "[store]\nmax_record_bytes = 1024\nmax_batch_bytes = 4096\n"
    with mqstore.Store(tmp_path, config) as store:
        store.create_shard("s")
        with pytest.raises(mqstore.RecordTooLarge, match="4096"):
            store.append_batch("s", [b"x" * 1000] * 10)


@pytest.mark.parametrize(
    "config, key",
    [
        ("[store]\nmax_recod_bytes = 10\n", "max_recod_bytes"),
        ('[shard]\ndurability = "sometimes"\n', "durability"),
        ('[shard]\ncompression = "brotli"\n', "shard.compression"),
        ("[store]\nmax_record_bytes = 0\n", "store.max_record_bytes"),
        ("colour = 1\n", "colour"),
        ("not toml at all [", "store configuration"),
    ],
)
def test_bad_config_names_the_key(tmp_path, config, key):
    with pytest.raises(mqstore.ConfigError) as info:
        mqstore.Store(tmp_path, config)
    assert key in str(info.value)
    assert info.value.status == 2
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"compression": "brotli"}, "compression"),
        ({"engine": "floppy"}, "floppy"),
        ({"durability": "sometimes"}, "sometimes"),
        ({"segment_bytes": 10}, "segment_bytes"),
        ({"retention_ms": -5}, "retention_ms"),
        ({"options": "colour = 1"}, "colour"),
        ({"compression": 'lz4"\nengine = "s3'}, "compression"),  # quoted, never injected
    ],
)
def test_bad_shard_options_name_the_key(store, kwargs, key):
    with pytest.raises(mqstore.ConfigError) as info:
        store.create_shard("s", **kwargs)
    assert key in str(info.value)
    assert store.list_shards() == []


def test_durability_fsync_on_memory_engine(store):
    with pytest.raises(mqstore.ConfigError, match="durability") as info:
        store.create_shard("s", engine="memory", durability="fsync")
    assert "memory engine" in str(info.value)


# Every engine the product knows. The default build has them all, so the
# refusals below run in builds without some (the edge build's Rust test,
# registry::an_engine_not_in_the_build_is_unsupported, covers them there).
KNOWN_ENGINES = ["memory", "journal", "file", "rocksdb", "mysql", "redis", "s3", "hybrid"]


@pytest.mark.parametrize("engine", KNOWN_ENGINES)
def test_unavailable_engine_is_unsupported(store, engine):
    if engine in mqstore.engines():
        assert store.create_shard("s", engine=engine).engine == engine
        return
    with pytest.raises(mqstore.Unsupported) as info:
        store.create_shard("s", engine=engine)
    assert isinstance(info.value, NotImplementedError)
    assert engine in str(info.value)
    assert store.list_shards() == []


@pytest.mark.parametrize("engine", KNOWN_ENGINES)
def test_unbuilt_default_engine_is_unsupported(tmp_path, engine):
    config = f'[shard]\nengine = "{engine}"\n'
    if engine in mqstore.engines():
        with mqstore.Store(tmp_path, config) as store:
            assert store.create_shard("s").engine == engine
        return
    with pytest.raises(mqstore.Unsupported, match=engine):
        mqstore.Store(tmp_path, config)
    # Failing to open leaves nothing locked.
    mqstore.Store(tmp_path).close()


def test_streaming_preset_opens_on_the_journal(tmp_path):
    with mqstore.Store(tmp_path, 'preset = "streaming"\n') as store:
        info = store.create_shard("s")
        assert info.engine == "journal"
        assert info.durability == "fsync"
        assert store.append("s", b"durable") == 0


def test_second_open_is_locked(tmp_path):
    with mqstore.Store(tmp_path):
        with pytest.raises(mqstore.Locked) as info:
            mqstore.Store(tmp_path)
        assert info.value.status == 15
        assert str(tmp_path) in str(info.value)
    # Released by close.
    mqstore.Store(tmp_path).close()


def test_closed_store(tmp_path):
    store = mqstore.Store(tmp_path)
    store.create_shard("s")
    store.close()
    for call in (
        lambda: store.create_shard("t"),
        lambda: store.list_shards(),
        lambda: store.append("s", b"v"),
        lambda: store.read("s", 0),
        lambda: store.delete_group("g"),
        lambda: store.stats(),
        lambda: store.plan_transfer("s", 0, 10),
    ):
        with pytest.raises(mqstore.StoreClosed, match="store is closed"):
            call()
    store.close()  # still idempotent


def test_reserved_header_prefix(store, shard):
    with pytest.raises(mqstore.InvalidArgument, match=r"__mqs\.tag"):
        store.append(shard, b"v", headers=[("__mqs.tag", b"x")])
    with pytest.raises(mqstore.InvalidArgument, match="record 1"):
        store.append_batch(shard, [b"ok", {"value": b"v", "headers": {"__mqs.anything": None}}])
    assert store.shard_info(shard).next_offset == 0


def test_offset_out_of_range(store, shard):
    store.append_batch(shard, [b"a", b"b"])
    for offset in (-1, 3, 100):
        with pytest.raises(mqstore.OffsetOutOfRange) as info:
            store.read(shard, offset)
        assert "valid: 0..=2" in str(info.value)
        assert isinstance(info.value, LookupError)


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.read("s", 0, max_records=0),
        lambda s: s.read("s", 0, max_records=-1),
        lambda s: s.read("s", 0, max_bytes=-1),
        lambda s: s.read_by_tag("s", "t", max_records=0),
        lambda s: s.append_batch("s", []),
        lambda s: s.append("s", b"v", timestamp_ms=-5),
        lambda s: s.offset_for_timestamp("s", -3),
        lambda s: s.delete_records_before("s", -1),
        lambda s: s.commit_offset("", "s", 0),
        lambda s: s.commit_offset("g", "s", -1),
        lambda s: s.sendfile_to_fd("s", 0, 100, -1),
    ],
)
def test_invalid_arguments(store, shard, call):
    with pytest.raises(mqstore.InvalidArgument) as info:
        call(store)
    assert str(info.value).startswith("invalid argument: ")


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda s: s.append("s", "text"), "value must be a bytes-like object, not 'str'"),
        (lambda s: s.append("s", b"v", key=5), "key must be a bytes-like object, not 'int'"),
        (lambda s: s.append("s", b"v", tags="eu"), "tags must be a list of str"),
        (lambda s: s.append("s", b"v", tags=[b"eu"]), "tag 0 must be a str"),
        (lambda s: s.append("s", b"v", headers=[("h",)]), "header 0 must be a (name, value) pair"),
        (lambda s: s.append("s", b"v", headers=[(1, b"x")]), "header 0 name must be a str"),
        (lambda s: s.append("s", b"v", headers={"h": "text"}), "header 0 ('h') value must be a bytes-like"),
        (lambda s: s.append("s", b"v", headers=b"raw"), "headers must be a dict"),
        (lambda s: s.append_batch("s", [b"ok", 5]), "record 1 must be a bytes-like object, a dict"),
        (lambda s: s.append_batch("s", [{"vaule": b"x"}]), "record 0: dict: unexpected key 'vaule'"),
        (lambda s: s.append_batch("s", [{"key": b"x"}]), "record 0: value is missing"),
        (lambda s: s.append_batch("s", [{"value": b"x", "timestamp_ms": 1.5}]), "timestamp_ms must be an int"),
        (lambda s: s.append_batch("s", b"abc"), "records must be an iterable of records"),
        (lambda s: s.append_batch("s", {"value": b"x"}), "use append() for a single record"),
        (lambda s: s.read_by_keys("s", b"k"), "keys must be an iterable of bytes-like"),
        (lambda s: s.read_by_keys("s", ["k"]), "key 0 must be a bytes-like object, not 'str'"),
        (lambda s: s.sendfile_to_fd("s", 0, 10, "x"), "fd must be an int or an object with fileno()"),
    ],
)
def test_wrong_types_are_type_errors(store, shard, call, message):
    with pytest.raises(TypeError) as info:
        call(store)
    assert not isinstance(info.value, mqstore.MqsError)
    assert message in str(info.value)
    assert store.shard_info(shard).next_offset == 0


def test_io_error_carries_errno(store, shard):
    store.append(shard, b"v")
    with pytest.raises(mqstore.StorageIOError) as info:
        store.sendfile_to_fd(shard, 0, 100, 987654)  # not an open descriptor
    assert info.value.errno == 9  # EBADF
    assert isinstance(info.value, OSError)
    assert str(info.value).startswith("I/O error: ")


def test_a_read_only_store_reads_and_refuses_changes(tmp_path):
    path = tmp_path / "store"
    small = "[journal]\nsegment_bytes = 1048576\n"
    with mqstore.Store(path, small) as writer:
        writer.create_shard("s")
        writer.append_batch("s", [b"a", b"b", b"c"])
    files = {p: p.read_bytes() for p in path.rglob("*") if p.is_file()}
    read_only = "[store]\nread_only = true\n" + small
    with mqstore.Store(path, read_only) as first, mqstore.Store(path, read_only) as second:
        assert [bytes(r.value) for r in first.read("s", 0)] == [b"a", b"b", b"c"]
        assert second.shard_info("s").next_offset == 3
        for change in (
            lambda: first.append_batch("s", [b"d"]),
            lambda: first.create_shard("t"),
            lambda: first.delete_records_before("s", 1),
            lambda: first.commit_offset("g", "s", 1),
        ):
            with pytest.raises(mqstore.Unsupported, match="read-only"):
                change()
        with pytest.raises(mqstore.Locked):
            mqstore.Store(path, small)
    assert {p: p.read_bytes() for p in path.rglob("*") if p.is_file()} == files
    with pytest.raises(mqstore.InvalidArgument, match="not a store"):
        mqstore.Store(tmp_path / "none", read_only)
