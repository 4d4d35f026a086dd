"""Type stubs of the compiled extension ``mqstore._mqstore``.

Everything here is re-exported by ``mqstore``; import from there.
"""

import os
import pathlib
import sys
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, Final, Protocol, TypedDict, final

if sys.version_info >= (3, 12):
    from collections.abc import Buffer as _BufferLike
else:
    from typing_extensions import Buffer as _BufferLike

from typing_extensions import NotRequired, Self, TypeAlias

__all__ = [
    "__version__",
    "engines_json",
    "set_log_handler",
    "EARLIEST",
    "LATEST",
    "version",
    "Store",
    "Transfer",
    "Record",
    "ReadResult",
    "ShardInfo",
    "Message",
    "Buffer",
    "MqsError",
    "InvalidArgument",
    "ConfigError",
    "ShardNotFound",
    "ShardExists",
    "RecordTooLarge",
    "OffsetOutOfRange",
    "InvalidHandle",
    "StoreClosed",
    "CorruptionError",
    "StorageIOError",
    "WouldBlock",
    "Unsupported",
    "Poisoned",
    "InternalError",
    "Locked",
    "ProducerFenced",
    "OutOfOrderSequence",
    "DuplicateSequence",
]

__version__: Final[str]
EARLIEST: Final[int]  # -2: offset_for_timestamp returns the low watermark
LATEST: Final[int]  # -1: offset_for_timestamp returns the high watermark

def engines_json() -> str: ...
def set_log_handler(handler: Callable[[int, str], object] | None) -> None:
    """Installs ``handler(level, message)`` for mqstore's logged events
    (None removes it); it runs on mqstore's logging thread."""
def version() -> str:
    """The version of the Rust core the extension was built with."""

class _HasFileno(Protocol):
    def fileno(self) -> int: ...

_BytesLike: TypeAlias = bytes | bytearray | memoryview | _BufferLike
_Fd: TypeAlias = int | _HasFileno
_StrPath: TypeAlias = str | os.PathLike[str]
_Headers: TypeAlias = Mapping[str, _BytesLike | None] | Iterable[tuple[str, _BytesLike | None]]

class _RecordDict(TypedDict):
    """The dict form of a record accepted by ``Store.append_batch``."""

    value: _BytesLike | None
    key: NotRequired[_BytesLike | None]
    headers: NotRequired[_Headers | None]
    tags: NotRequired[Iterable[str] | None]
    timestamp_ms: NotRequired[int]
    expire_at_ms: NotRequired[int | None]

# ----------------------------------------------------------------- errors

class MqsError(Exception):
    """Base class of every mqstore error."""

    status: ClassVar[int]

class InvalidArgument(MqsError, ValueError): ...
class ConfigError(MqsError, ValueError): ...
class ShardNotFound(MqsError, LookupError): ...
class ShardExists(MqsError): ...
class RecordTooLarge(MqsError, ValueError): ...
class OffsetOutOfRange(MqsError, LookupError): ...
class InvalidHandle(MqsError): ...
class StoreClosed(MqsError): ...
class CorruptionError(MqsError): ...
class StorageIOError(MqsError, OSError): ...
class WouldBlock(MqsError, BlockingIOError): ...
class Unsupported(MqsError, NotImplementedError): ...
class Poisoned(MqsError): ...
class InternalError(MqsError): ...
class Locked(MqsError): ...
class ProducerFenced(MqsError): ...
class OutOfOrderSequence(MqsError): ...

class DuplicateSequence(MqsError):
    """A producer's retry of batches already stored: nothing was stored
    again."""

    base_offsets: list[int]

# ---------------------------------------------------------------- classes

@final
class Buffer:
    """Read-only, zero-copy buffer over stored bytes (``memoryview.obj`` of
    ``Record.value``, ``Record.key`` and header values)."""

    if sys.version_info >= (3, 12):
        def __buffer__(self, flags: int, /) -> memoryview: ...
    def __len__(self) -> int: ...
    def __bytes__(self) -> bytes: ...
    @property
    def _address(self) -> int:
        """Address of the first byte (tests use it to prove zero-copy reads)."""

@final
class Record:
    """A stored record. ``key``, ``value`` and header values are zero-copy,
    read-only memoryviews, valid as long as they are referenced (also after
    the store is closed); each access returns a new memoryview."""

    @property
    def offset(self) -> int: ...
    @property
    def timestamp_ms(self) -> int: ...
    @property
    def key(self) -> memoryview | None: ...
    @property
    def value(self) -> memoryview | None:
        """The value, or None for a null value (a Kafka tombstone), which
        is not the same as an empty value."""
    @property
    def headers(self) -> list[tuple[str, memoryview | None]]: ...
    @property
    def tags(self) -> list[str]: ...
    @property
    def expire_at_ms(self) -> int | None: ...

@final
class ReadResult:
    """Records of a read plus the offset the next read starts at. Iterating
    or ``len()`` work on ``records``."""

    @property
    def records(self) -> list[Record]: ...
    @property
    def next_offset(self) -> int: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[Record]: ...

@final
class ShardInfo:
    """A snapshot of one shard's state and resolved options."""

    @property
    def name(self) -> str: ...
    @property
    def engine(self) -> str: ...
    @property
    def first_offset(self) -> int:
        """Low watermark: the smallest offset that may still be read."""
    @property
    def next_offset(self) -> int:
        """High watermark: the offset the next append receives."""
    @property
    def records(self) -> int: ...
    @property
    def bytes(self) -> int: ...
    @property
    def durability(self) -> str: ...
    @property
    def compression(self) -> str: ...
    @property
    def segment_bytes(self) -> int: ...
    @property
    def retention_ms(self) -> int: ...
    @property
    def retention_bytes(self) -> int: ...
    @property
    def retention_records(self) -> int: ...
    @property
    def timestamp_type(self) -> str: ...
    @property
    def cleanup_policy(self) -> str: ...
    @property
    def delete_retention_ms(self) -> int: ...
    @property
    def min_compaction_lag_ms(self) -> int: ...
    def __eq__(self, value: object, /) -> bool: ...

@final
class Message:
    """A record to append with ``Store.append_batch``."""

    def __new__(
        cls,
        value: _BytesLike | None,
        *,
        key: _BytesLike | None = None,
        headers: _Headers | None = None,
        tags: Iterable[str] | None = None,
        timestamp_ms: int = 0,
        expire_at_ms: int | None = None,
    ) -> Self: ...
    @property
    def value(self) -> _BytesLike | None: ...
    @property
    def key(self) -> _BytesLike | None: ...
    @property
    def headers(self) -> _Headers | None: ...
    @property
    def tags(self) -> Iterable[str] | None: ...
    @property
    def timestamp_ms(self) -> int: ...
    @property
    def expire_at_ms(self) -> int | None: ...

@final
class Transfer:
    """A planned transfer of whole Kafka RecordBatches (``total_bytes`` bytes,
    up to offset ``next_offset - 1``). Holds its own references to the bytes.
    ``send``/``send_all`` (to a descriptor) and ``read_into`` (into a buffer)
    advance one progress and may be mixed."""

    @property
    def total_bytes(self) -> int: ...
    @property
    def next_offset(self) -> int: ...
    @property
    def sent_bytes(self) -> int:
        """Bytes already sent or read."""
    @property
    def complete(self) -> bool: ...
    def send(self, fd: _Fd) -> int:
        """Writes as much as ``fd`` accepts; returns the bytes written by this
        call. On a full non-blocking descriptor it returns early and
        ``complete`` stays False: call again."""
    def send_all(self, fd: _Fd) -> int:
        """Sends the rest, waiting while a non-blocking ``fd`` is full."""
    def read_into(self, buffer: _BufferLike) -> int:
        """Copies the next bytes into ``buffer`` (any writable, contiguous
        buffer: bytearray, memoryview, array, mmap, numpy array, ctypes
        array) and returns how many: as many as fit unless the transfer ends
        first, 0 only once ``complete``. For TLS or a broker's own framing.

        The GIL is released while copying into a ``bytearray``,
        ``array.array`` or ``mmap.mmap`` (or a memoryview of one), which
        cannot free or move their memory while it is exported; any other
        buffer is written with the GIL held. Do not use the buffer from
        another thread during the call. A read-only or non-contiguous buffer
        raises ``TypeError``, an empty one ``InvalidArgument``."""
    @staticmethod
    def _releases_gil_for(buffer: _BufferLike) -> bool:
        """Whether ``read_into(buffer)`` copies with the GIL released (tests)."""
    def bytes(self) -> bytes:
        """All planned bytes (for tests and non-descriptor consumers)."""

@final
class Store:
    """An open store; thread-safe, and every call releases the GIL while it
    works. ``close()`` is idempotent; other calls on a closed store raise
    ``StoreClosed``. Usable as a context manager (closes on exit).

    Bytes-like arguments (values, keys, header values, lookup keys): ``bytes``
    and other read-only buffers are read in place, without a copy, while the
    GIL is released, so they must not change during the call. Buffers that
    another thread could write to meanwhile (``bytearray``, writable
    ``memoryview``, ``array``, writable ``mmap``, and read-only views of
    them) are copied when the call takes them: the call stores what they
    held then."""

    def __new__(cls, path: _StrPath, config: str | None = None) -> Self:
        """Opens (creating if needed) the store in ``path``; ``config`` is
        TOML text in the storage.toml schema."""
    @classmethod
    def from_config_file(cls, path: _StrPath, config_path: _StrPath) -> Self: ...
    @property
    def path(self) -> pathlib.Path: ...
    @property
    def config(self) -> dict[str, Any]: ...
    @property
    def closed(self) -> bool: ...
    def close(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(self, *args: object) -> bool: ...

    # shards
    def create_shard(
        self,
        name: str,
        *,
        options: str | None = None,
        engine: str | None = None,
        durability: str | None = None,
        compression: str | None = None,
        segment_bytes: int | None = None,
        retention_ms: int | None = None,
        retention_bytes: int | None = None,
        retention_records: int | None = None,
        timestamp_type: str | None = None,
        cleanup_policy: str | None = None,
        delete_retention_ms: int | None = None,
        min_compaction_lag_ms: int | None = None,
    ) -> ShardInfo: ...
    def create_shards(self, names: Sequence[str], options: str | None = None) -> None: ...
    def delete_shard(self, name: str) -> None: ...
    def list_shards(self) -> list[str]: ...
    def shard_info(self, name: str) -> ShardInfo: ...

    # appends
    def append(
        self,
        shard: str,
        value: _BytesLike | None,
        *,
        key: _BytesLike | None = None,
        headers: _Headers | None = None,
        tags: Iterable[str] | None = None,
        timestamp_ms: int = 0,
        expire_at_ms: int | None = None,
    ) -> int: ...
    def append_batch(
        self, shard: str, records: Iterable[_BytesLike | None | _RecordDict | Message | Record]
    ) -> int: ...
    def append_batch_nowait(
        self, shard: str, records: Iterable[_BytesLike | None | _RecordDict | Message | Record]
    ) -> int:
        """Appends ``records`` as one atomic batch, like ``append_batch``
        (same items, same validation), and returns the offset of the first as
        soon as the batch has its offsets: readers see it at once. It does not
        wait for the shard's durability mode; the batch is acknowledged only
        once ``wait_durable`` returns for one of its offsets or a later one.
        Typical use: keep a window of N batches in flight, waiting on the
        oldest when the window is full."""
    def append_raw(self, shard: str, data: _BytesLike) -> list[int]:
        """Appends RecordBatch v2 bytes as a Kafka producer sent them (one
        or more batches back to back). Every batch is checked as Kafka's log
        validator checks client batches and nothing is stored when one is
        refused (CorruptionError, InvalidArgument, RecordTooLarge or
        Unsupported, naming the batch); the batches are stored byte for
        byte but for the base offset, at consecutive offsets. Returns each
        batch's base offset."""
    def append_raw_nowait(self, shard: str, data: _BytesLike) -> list[int]:
        """``append_raw`` that returns once the batches have their offsets;
        ``wait_durable`` on the last batch's last offset acknowledges them."""
    def durable_fd(self) -> int:
        """The store's durability descriptor (an eventfd), readable while
        completions wait for ``poll_durable``. Never read or close it."""
    def append_batch_notify(self, shard: str, records: Iterable[_BytesLike | _RecordDict | Message | Record], token: int) -> int:
        """``append_batch_nowait`` plus a completion carrying ``token`` once
        the batch is durable; returns the base offset."""
    def watch_durable(self, shard: str, offset: int, token: int) -> None:
        """A completion carrying ``token`` once ``offset`` is durable."""
    def poll_durable(self, max: int = 1024) -> list[tuple[int, int, MqsError | None]]:
        """Up to ``max`` ready completions ``(token, offset, error)``, oldest
        first; never blocks."""
    def append_batch_async(self, shard: str, records: Iterable[_BytesLike | _RecordDict | Message | Record]) -> Coroutine[Any, Any, int]:
        """``await`` it: the base offset, once the batch is acknowledged."""
    def wait_durable_async(self, shard: str, offset: int) -> Coroutine[Any, Any, None]:
        """``await`` it: returns once ``offset`` is durable."""
    def append_replica(self, shard: str, data: _BytesLike) -> int:
        """Appends a leader's batches (what a transfer of the leader's shard
        sent) byte for byte at the offsets they carry, which must continue
        the shard (a compacted leader's gap is filled with an empty batch);
        returns the shard's next offset."""
    def truncate_to(self, shard: str, offset: int) -> None:
        """Cuts a follower's diverged tail: every batch at or after
        ``offset`` goes and the next append gets ``offset``, which must lie
        within the watermarks (else ``OffsetOutOfRange``) and at a batch
        boundary (else ``InvalidArgument``). The producers' state follows."""
    def set_leader_epoch(self, shard: str, epoch: int) -> None:
        """Sets the partition leader epoch appends to ``shard`` write into
        each batch from now on (``append_replica`` keeps the leader's);
        never lower than before (``InvalidArgument``). Kept in memory only:
        set it after every open, when the broker becomes the leader."""
    def wait_durable(self, shard: str, offset: int) -> None:
        """Blocks (with the GIL released) until the record at ``offset`` and
        every earlier record of ``shard`` is as durable as the shard's
        durability mode promises (none: buffered; os: handed to the kernel;
        fsync: fdatasynced). Deleted records count as durable. Raises
        ``OffsetOutOfRange`` unless ``0 <= offset < next_offset``,
        ``ShardNotFound``, ``StoreClosed``, or ``Poisoned`` after a failed
        fsync."""

    # reads
    def read(
        self, shard: str, offset: int, max_records: int = 1000, max_bytes: int = 1048576
    ) -> ReadResult: ...
    def read_by_keys(
        self, shard: str, keys: Iterable[_BytesLike], max_records: int = 1000
    ) -> list[Record]: ...
    def read_by_tag(
        self, shard: str, tag: str, from_offset: int = 0, max_records: int = 1000
    ) -> ReadResult: ...
    def offset_for_timestamp(self, shard: str, timestamp_ms: int) -> int | None: ...

    # deletes
    def delete_records_before(self, shard: str, offset: int) -> int: ...
    def delete_by_keys(self, shard: str, keys: Iterable[_BytesLike]) -> int: ...
    def delete_by_offsets(self, shard: str, offsets: Sequence[int]) -> int: ...
    def compact(self, shard: str) -> int: ...

    # transfers
    def plan_transfer(self, shard: str, offset: int, max_bytes: int) -> Transfer: ...
    def sendfile_to_fd(
        self, shard: str, offset: int, max_bytes: int, fd: _Fd
    ) -> tuple[int, int]:
        """Plans and sends; returns ``(bytes_written, next_offset)``."""

    # group offsets
    def commit_offset(self, group: str, shard: str, offset: int) -> None: ...
    def committed_offset(self, group: str, shard: str) -> int | None: ...
    def delete_group(self, group: str) -> int: ...

    # stats
    def stats(self, shard: str | None = None) -> dict[str, Any]: ...
