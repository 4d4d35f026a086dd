"""Thread helpers shared by test_threads.py (which also holds the GIL
probe's controls) and test_pipelined.py."""

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


def run_threads(target, count):
    """Runs target(0) .. target(count - 1) on threads and re-raises the first
    exception any of them raised."""
    errors = []

    def wrapper(index):
        try:
            target(index)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=wrapper, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
        assert not t.is_alive()
    if errors:
        raise errors[0]
