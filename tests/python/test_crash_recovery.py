"""Acknowledged records survive a kill -9 of the process that wrote them,
after a delete inside a batch whose segment the journal then reclaimed (a
regression: the rewritten batch used to be dropped on replay while the
watermarks still claimed its records)."""

import subprocess
import sys
import textwrap

import mqstore

WRITER = textwrap.dedent(
    """
    import os, signal, sys
    import mqstore

    store = mqstore.Store(sys.argv[1], "[journal]\\nsegment_bytes = 1048576\\n")
    store.create_shard("x")
    store.append_batch("x", [b"v%d" % i for i in range(10)])
    store.create_shard("churn", retention_records=1)
    for _ in range(60):
        store.append_batch("churn", [b"z" * 60000])
    store.delete_records_before("x", {delete_before})
    for _ in range(30):
        store.append_batch("churn", [b"z" * 60000])
    sys.stdout.write("acknowledged\\n")
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def _crash_after(tmp_path, delete_before):
    script = WRITER.format(delete_before=delete_before)
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True
    )
    assert done.stdout == "acknowledged\n", done.stderr
    assert done.returncode == -9


def test_a_mid_batch_delete_survives_segment_reclaim_and_kill_9(tmp_path):
    _crash_after(tmp_path, 5)
    store = mqstore.Store(tmp_path)
    info = store.shard_info("x")
    assert (info.first_offset, info.next_offset) == (5, 10)
    records = store.read("x", 5).records
    assert [(r.offset, bytes(r.value)) for r in records] == [(i, b"v%d" % i) for i in range(5, 10)]
    store.close()
