"""The hybrid engine's tiering in tests, shared by test_server_engines.py,
test_pipelined.py and test_compaction.py."""

import time

# Tiering as fast as it goes: every batch is due at once and the tierer
# looks every millisecond, so a hybrid shard's data moves to its cold tier
# (S3) within milliseconds. Only hybrid shards read the section.
HYBRID_TIERING = "[hybrid]\nhot_duration_ms = 0\ntier_interval_ms = 1\n"


def wait_tiered(store, shard, at_least, timeout=60.0):
    """Waits until hybrid shard `shard` holds the offsets below `at_least`
    in its cold tier (its stats' ``boundary``); returns the boundary."""
    deadline = time.monotonic() + timeout
    while True:
        boundary = store.stats(shard)["engine_stats"]["boundary"]
        if boundary >= at_least or time.monotonic() > deadline:
            return boundary
        time.sleep(0.005)
