"""mqstore: the storage engine that message brokers embed.

Records are stored as Kafka RecordBatch v2; reads return zero-copy views of
the stored bytes and transfers write whole batches straight to a socket.

    import mqstore

    with mqstore.Store("/var/lib/broker") as store:
        store.create_shard("orders")
        offset = store.append("orders", b"payload", key=b"id-1", tags=["eu"])
        for record in store.read("orders", offset):
            print(record.offset, bytes(record.value))

Every error raised by the store is a :class:`MqsError` carrying the numeric
``status`` shared with the C ABI (see :class:`Status`); argument type errors
stay :class:`TypeError`.
"""

from __future__ import annotations

import atexit
import enum
import json
import logging

from ._mqstore import (
    EARLIEST,
    LATEST,
    Buffer,
    ConfigError,
    CorruptionError,
    DuplicateSequence,
    InternalError,
    InvalidArgument,
    InvalidHandle,
    Locked,
    Message,
    MqsError,
    OffsetOutOfRange,
    OutOfOrderSequence,
    Poisoned,
    ProducerFenced,
    ReadResult,
    Record,
    RecordTooLarge,
    ShardExists,
    ShardInfo,
    ShardNotFound,
    StorageIOError,
    Store,
    StoreClosed,
    Transfer,
    Unsupported,
    WouldBlock,
    __version__,
    engines_json,
    set_log_handler,
    version,
)


def engines() -> dict[str, dict]:
    """The engines compiled into this build, by the name the configuration
    uses, with their declared capabilities (durability modes, persistence,
    pipelining, transfer path)."""
    return json.loads(engines_json())


_LEVELS = {1: logging.ERROR, 2: logging.WARNING, 3: logging.INFO}


def enable_logging(logger: logging.Logger | None = None) -> None:
    """Sends mqstore's logged events (background failures, what recovery
    gave up to open a store) to ``logger`` (default: the ``mqstore``
    logger), at ERROR, WARNING or INFO. Removed again at exit, before the
    interpreter shuts down."""
    target = logger or logging.getLogger("mqstore")
    set_log_handler(lambda level, message: target.log(_LEVELS.get(level, logging.INFO), "%s", message))


def disable_logging() -> None:
    """Stops sending mqstore's events to Python logging (``enable_logging``)."""
    set_log_handler(None)


# The logging thread must not call into an interpreter that is shutting down.
atexit.register(disable_logging)


class Status(enum.IntEnum):
    """Status codes, identical to the C ABI's ``mqs_status`` and Rust's ``Status``."""

    OK = 0
    INVALID_ARGUMENT = 1
    INVALID_CONFIG = 2
    SHARD_NOT_FOUND = 3
    SHARD_EXISTS = 4
    RECORD_TOO_LARGE = 5
    OFFSET_OUT_OF_RANGE = 6
    INVALID_HANDLE = 7
    CLOSED = 8
    CORRUPTION = 9
    IO = 10
    WOULD_BLOCK = 11
    UNSUPPORTED = 12
    POISONED = 13
    INTERNAL = 14
    LOCKED = 15
    PRODUCER_FENCED = 16
    OUT_OF_ORDER_SEQUENCE = 17
    DUPLICATE_SEQUENCE = 18


# The extension sets `status` as a plain int on each class; make it the enum
# member (still an int, so comparisons with numbers keep working).
_errors: list[type[MqsError]] = [MqsError, *MqsError.__subclasses__()]
for _cls in _errors:
    _cls.status = Status(_cls.status)
del _cls, _errors

__all__ = [
    "EARLIEST",
    "LATEST",
    "Buffer",
    "ConfigError",
    "CorruptionError",
    "DuplicateSequence",
    "InternalError",
    "InvalidArgument",
    "InvalidHandle",
    "Locked",
    "Message",
    "MqsError",
    "OffsetOutOfRange",
    "OutOfOrderSequence",
    "Poisoned",
    "ProducerFenced",
    "ReadResult",
    "Record",
    "RecordTooLarge",
    "ShardExists",
    "ShardInfo",
    "ShardNotFound",
    "Status",
    "StorageIOError",
    "Store",
    "StoreClosed",
    "Transfer",
    "Unsupported",
    "WouldBlock",
    "__version__",
    "disable_logging",
    "enable_logging",
    "engines",
    "set_log_handler",
    "version",
]
