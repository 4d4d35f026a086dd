"""Whether a call releases the GIL: shared by test_threads.py (which also
holds the probe's controls) and test_pipelined.py."""

import sys
import threading
from contextlib import contextmanager


@contextmanager
def no_forced_gil_switches():
    """Makes the interpreter hand the GIL to another thread only when the
    running thread releases it itself (blocking call or py.detach)."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1000.0)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def main_thread_ran_while_worker_busy(call, calls=20):
    """Starts a worker making `calls` calls; returns how many had completed
    when the main thread next got the GIL. Thread.start() waits for the
    worker to start, and with forced switches off the main thread only
    resumes when the worker releases the GIL -- which, in a loop of pure
    store calls, only happens inside a call that detaches."""
    done = []

    def worker():
        for _ in range(calls):
            call()
            done.append(None)

    with no_forced_gil_switches():
        thread = threading.Thread(target=worker)
        thread.start()
        completed_when_main_resumed = len(done)
        thread.join()
    assert len(done) == calls
    return completed_when_main_resumed
