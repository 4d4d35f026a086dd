"""The MySQL, Redis, S3 and hybrid engines through the Python binding,
against the servers scripts/with-servers.sh starts (MQS_MYSQL_URL,
MQS_REDIS_URL, and MQS_TEST_S3_ENDPOINT with the AWS_* variables the S3
engine and the hybrid engine's cold tier read): pipelined appends in every
durability mode surviving a reopen, group offsets, transfers (the hybrid
engine's after its data moved to the cold tier), and an unreachable server
reported as StorageIOError naming the server's address but never the
password (S3's secret key)."""

import os
import socket

import pytest

import mqstore
from hybrid_helpers import HYBRID_TIERING, wait_tiered
from test_pipelined import _check_contents, _pipeline
from test_transfer import _reader

SERVER_VARS = {
    "mysql": "MQS_MYSQL_URL",
    "redis": "MQS_REDIS_URL",
    "s3": "MQS_TEST_S3_ENDPOINT",
    "hybrid": "MQS_TEST_S3_ENDPOINT",
}


def _config(engine):
    """The store's configuration: `engine` by default (a hybrid store's data
    moves to the cold tier within milliseconds)."""
    return f'[shard]\nengine = "{engine}"\n' + (HYBRID_TIERING if engine == "hybrid" else "")


@pytest.fixture(params=["mysql", "redis", "s3", "hybrid"])
def engine(request):
    var = SERVER_VARS[request.param]
    # Never skipped: the suite runs through `make test-python`, which
    # starts the servers.
    assert os.environ.get(var), f"{var} is not set: run through `make test-python`"
    return request.param


@pytest.mark.parametrize("durability", ["fsync", "os", "none"])
def test_pipeline_survives_reopen(tmp_path, engine, durability):
    path = tmp_path / "store"
    config = _config(engine)
    with mqstore.Store(path, config) as store:
        info = store.create_shard("s", durability=durability)
        assert (info.engine, info.durability) == (engine, durability)
        appended = _pipeline(store, "s", batches=40, window=4)
        _check_contents(store, "s", appended)
        store.commit_offset("g", "s", 7)
        next_offset = store.shard_info("s").next_offset
        if engine == "hybrid":
            # Everything moves to the cold tier, and reads the same there.
            assert wait_tiered(store, "s", next_offset) == next_offset
            _check_contents(store, "s", appended)
    with mqstore.Store(path, config) as store:
        info = store.shard_info("s")
        assert (info.engine, info.durability) == (engine, durability)
        assert (info.first_offset, info.next_offset) == (0, sum(len(v) for _, v in appended))
        if engine == "hybrid":
            assert store.stats("s")["engine_stats"]["boundary"] == next_offset
        _check_contents(store, "s", appended)
        assert store.committed_offset("g", "s") == 7


def test_transfer_sends_the_stored_batches(tmp_path, engine):
    with mqstore.Store(tmp_path / "store", _config(engine)) as store:
        store.create_shard("s")
        for i in range(6):
            store.append_batch("s", [b"%d-%d" % (i, j) * 30 for j in range(10)])
        if engine == "hybrid":
            assert wait_tiered(store, "s", 60) == 60  # planned from the cold tier
        plan = store.plan_transfer("s", 0, 1 << 20)
        a, b = socket.socketpair()
        with a, b:
            result = _reader(b, plan.total_bytes)
            assert plan.send_all(a) == plan.total_bytes
            sent = result()
        assert len(sent) == plan.total_bytes > 6 * 10 * 30
        assert plan.next_offset == 60
        assert store.read("s", 0, 100).records[-1].value == b"5-9" * 30


SERVER_TIMEOUT = "connect_timeout_ms = 2000\n"
UNREACHABLE_S3 = (
    '[s3]\nendpoint = "http://127.0.0.1:1"\nbucket = "mqstore"\n'
    'access_key_id = "AK"\nsecret_access_key = "secret-pw"\n'
    "connect_timeout_ms = 500\nio_timeout_ms = 500\nretries = 0\n"
)


# The hybrid engine appends to a local journal, but creating a shard stores
# its cold tier's manifest on S3: it fails like the S3 engine.
@pytest.mark.parametrize(
    "engine, section",
    [
        ("mysql", '[mysql]\nurl = "mysql://mqs:secret-pw@127.0.0.1:1/db"\n' + SERVER_TIMEOUT),
        ("redis", '[redis]\nurl = "redis://:secret-pw@127.0.0.1:1/"\n' + SERVER_TIMEOUT),
        ("s3", UNREACHABLE_S3),
        ("hybrid", UNREACHABLE_S3),
    ],
    ids=["mysql", "redis", "s3", "hybrid"],
)
def test_unreachable_server_is_an_io_error_without_the_password(tmp_path, engine, section):
    with mqstore.Store(tmp_path / "store", section) as store:
        with pytest.raises(mqstore.StorageIOError) as raised:
            store.create_shard("s", engine=engine)
        message = str(raised.value)
        assert "127.0.0.1:1" in message and "secret-pw" not in message, message
        assert store.list_shards() == []
        store.create_shard("j")
        assert store.append("j", b"still serving") == 0
