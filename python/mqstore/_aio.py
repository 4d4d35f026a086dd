"""asyncio on top of the store's durability descriptor.

``Store.append_batch_async`` and ``Store.wait_durable_async`` give each call
a token and a future, and watch the batch (``append_batch_notify`` /
``watch_durable``); the running loop reads ``durable_fd()`` with
``loop.add_reader`` and resolves the futures from ``poll_durable()`` in the
order the completions come, which is the order of the calls. No thread is
started per call: the store's one notifier thread does the waiting.

A store's async calls run on one loop at a time (the loop of the first call
while any is pending).
"""

from __future__ import annotations

import asyncio
import itertools
import weakref
from typing import Any

# Completions taken per wake-up of the reader.
_POLL_MAX = 4096


class _Dispatcher:
    def __init__(self, store: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._store = weakref.ref(store)
        self.loop = loop
        self._fd = store.durable_fd()
        self._tokens = itertools.count()
        self.futures: dict[int, asyncio.Future[Any]] = {}
        self._reading = False

    def watch(self) -> tuple[int, asyncio.Future[Any]]:
        token = next(self._tokens)
        future = self.loop.create_future()
        self.futures[token] = future
        if not self._reading:
            self.loop.add_reader(self._fd, self._ready)
            self._reading = True
        return token, future

    def forget(self, token: int) -> None:
        self.futures.pop(token, None)
        self._idle()

    def _ready(self) -> None:
        store = self._store()
        if store is None:
            self._fail_all(RuntimeError("mqstore: the store was garbage-collected"))
            return
        for token, offset, error in store.poll_durable(_POLL_MAX):
            future = self.futures.pop(token, None)
            if future is None or future.done():  # cancelled meanwhile
                continue
            if error is None:
                future.set_result(offset)
            else:
                future.set_exception(error)
        self._idle()

    def _fail_all(self, error: BaseException) -> None:
        futures, self.futures = self.futures, {}
        for future in futures.values():
            if not future.done():
                future.set_exception(error)
        self._idle()

    def _idle(self) -> None:
        # With nothing pending the loop stops watching the descriptor;
        # completions of cancelled calls are drained at the next wake-up.
        if not self.futures and self._reading:
            self.loop.remove_reader(self._fd)
            self._reading = False


_dispatchers: weakref.WeakKeyDictionary[Any, _Dispatcher] = weakref.WeakKeyDictionary()


def _dispatcher(store: Any) -> _Dispatcher:
    loop = asyncio.get_running_loop()
    current = _dispatchers.get(store)
    if current is not None and current.loop is not loop:
        if current.futures and not current.loop.is_closed():
            raise RuntimeError(
                "mqstore: this store has async calls pending on another event loop; "
                "use one loop at a time per store"
            )
        current = None
    if current is None:
        current = _Dispatcher(store, loop)
        _dispatchers[store] = current
    return current


async def append_batch_async(store: Any, shard: str, records: Any) -> int:
    dispatcher = _dispatcher(store)
    # The future exists before the append: its completion may come at once.
    token, future = dispatcher.watch()
    try:
        store.append_batch_notify(shard, records, token)
    except BaseException:
        dispatcher.forget(token)
        raise
    return await future


async def wait_durable_async(store: Any, shard: str, offset: int) -> None:
    dispatcher = _dispatcher(store)
    token, future = dispatcher.watch()
    try:
        store.watch_durable(shard, offset, token)
    except BaseException:
        dispatcher.forget(token)
        raise
    await future
