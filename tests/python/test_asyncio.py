"""asyncio: ``append_batch_async`` / ``wait_durable_async`` on one thread,
thousands of batches in flight, acknowledged in order through the store's
durability descriptor, with no thread per call."""

import asyncio
import os

import pytest

import mqstore


def os_threads():
    """The process's threads, without the kernel's io_uring workers."""
    names = []
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/comm") as f:
                names.append(f.read().strip())
        except FileNotFoundError:
            pass
    return [n for n in names if not n.startswith("iou-")]


@pytest.mark.parametrize("options", [{}, {"engine": "memory"}, {"engine": "file", "durability": "fsync"}])
def test_thousands_in_flight_are_acknowledged_in_order(store, options):
    store.create_shard("s", **options)
    store.append("s", b"warm")  # starts the engine's own threads first
    batches = 3000 if not options else 1000
    acked = []
    in_flight = 0
    peak = 0

    async def produce(i):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        base = await store.append_batch_async("s", [b"x" * 100, b"y" * 100, {"value": b"z", "key": b"k%d" % i}])
        in_flight -= 1
        acked.append((i, base))

    async def main():
        before = os_threads()
        await asyncio.gather(*(produce(i) for i in range(batches)))
        return before, os_threads()

    before, after = asyncio.run(main())
    assert [i for i, _ in acked] == list(range(batches))
    assert [base for _, base in acked] == [1 + 3 * i for i in range(batches)]
    assert peak == batches  # every batch was in flight at once
    # The store's notifier (and the journal's flushers) at most: no thread per call.
    assert len(after) <= len(before) + 3, (before, after)
    assert store.shard_info("s").next_offset == 1 + 3 * batches


def test_wait_durable_async_and_mixing_with_blocking_calls(store, shard):
    first = store.append_batch_nowait(shard, [b"a"])
    second = store.append_batch_nowait(shard, [b"b"])

    async def main():
        order = []

        async def wait(offset):
            await store.wait_durable_async(shard, offset)
            order.append(offset)

        await asyncio.gather(wait(second), wait(first))
        return order

    assert asyncio.run(main()) == [second, first]  # watch order


def test_errors_are_raised_by_the_awaiting_call(store, shard):
    store.append(shard, b"v")

    async def main():
        with pytest.raises(mqstore.ShardNotFound):
            await store.append_batch_async("nope", [b"v"])
        with pytest.raises(mqstore.OffsetOutOfRange):
            await store.wait_durable_async(shard, 5)
        with pytest.raises(mqstore.InvalidArgument):
            await store.append_batch_async(shard, [])
        with pytest.raises(TypeError):
            await store.append_batch_async(shard, [object()])
        # Still usable afterwards, and nothing is left registered.
        return await store.append_batch_async(shard, [b"after"])

    assert asyncio.run(main()) == 1


def test_cancelled_calls_do_not_disturb_the_others(store, shard):
    async def main():
        tasks = [asyncio.ensure_future(store.append_batch_async(shard, [b"%d" % i])) for i in range(50)]
        # One loop iteration: asyncio runs the ready tasks in order, each up
        # to its await, so every batch is appended and waits.
        await asyncio.sleep(0)
        for t in tasks[::2]:
            t.cancel()
        done = await asyncio.gather(*tasks, return_exceptions=True)
        return done

    done = asyncio.run(main())
    kept = [d for d in done[1::2]]
    assert kept == list(range(1, 50, 2))
    assert all(isinstance(d, asyncio.CancelledError) for d in done[::2])
    assert store.shard_info(shard).next_offset == 50


def test_close_acknowledges_what_was_in_flight(tmp_path):
    store = mqstore.Store(tmp_path / "store")
    store.create_shard("s")

    async def main():
        tasks = [asyncio.ensure_future(store.append_batch_async("s", [b"v"])) for _ in range(100)]
        await asyncio.sleep(0)  # as above: every task has appended
        store.close()
        return await asyncio.gather(*tasks)

    assert asyncio.run(main()) == list(range(100))
    with pytest.raises(mqstore.StoreClosed):
        store.durable_fd()


def test_low_level_poll(store, shard):
    import select

    fd = store.durable_fd()
    assert store.poll_durable() == []
    base = store.append_batch_notify(shard, [b"a", b"b"], 7)
    store.watch_durable(shard, base + 1, 8)
    got = []
    while len(got) < 2:
        select.select([fd], [], [], 60)
        got += store.poll_durable(1)
    assert got == [(7, base, None), (8, base + 1, None)]
    assert select.select([fd], [], [], 0)[0] == []
    with pytest.raises(mqstore.InvalidArgument):
        store.poll_durable(0)
