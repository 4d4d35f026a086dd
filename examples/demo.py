"""mqstore demo, Python side: a store on the default engine in a temporary
directory, messages appended across several shards, read back and checked,
and one shard streamed over a loopback TCP socket with sendfile_to_fd and
decoded on the other side by kafka-python's RecordBatch parser (CRC checked).
Prints the throughput of each step."""

import socket
import tempfile
import threading
import time

from kafka.record.memory_records import MemoryRecords

import mqstore

SHARDS = 4
MESSAGES_PER_SHARD = 50_000
BATCH = 1024
VALUE_SIZE = 100


def value_of(shard: int, seq: int) -> bytes:
    return (f"{shard}:{seq}:".encode() * VALUE_SIZE)[:VALUE_SIZE]


def rate(count: float, seconds: float) -> str:
    return f"{count / seconds:12,.0f}/s"


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="mqstore-demo-py-") as path:
        print(f"mqstore {mqstore.__version__} — Python demo, store in {path} (default engine)")
        with mqstore.Store(path) as store:
            names = [f"events-{s}" for s in range(SHARDS)]
            for name in names:
                store.create_shard(name)

            # 1. Append batches of 1,024 × 100 B.
            t0 = time.perf_counter()
            for base in range(0, MESSAGES_PER_SHARD, BATCH):
                for s, name in enumerate(names):
                    batch = [value_of(s, base + i) for i in range(min(BATCH, MESSAGES_PER_SHARD - base))]
                    assert store.append_batch(name, batch) == base
            elapsed = time.perf_counter() - t0
            total = SHARDS * MESSAGES_PER_SHARD
            print(f"append   {total:9,} msgs in {elapsed:6.3f} s  {rate(total, elapsed)} msgs (incl. building values in Python)")

            # 2. Read back and verify every value (memoryviews, zero-copy).
            t0 = time.perf_counter()
            verified = 0
            for s, name in enumerate(names):
                offset = 0
                while offset < MESSAGES_PER_SHARD:
                    result = store.read(name, offset, max_records=8192, max_bytes=8 << 20)
                    for record in result.records:
                        assert record.value == value_of(s, record.offset), record.offset
                    verified += len(result.records)
                    offset = result.next_offset
            elapsed = time.perf_counter() - t0
            print(f"read     {verified:9,} msgs in {elapsed:6.3f} s  {rate(verified, elapsed)} msgs (all verified)")

            # 3. Stream shard 0 over loopback TCP; decode with kafka-python.
            listener = socket.create_server(("127.0.0.1", 0))
            decoded = {"records": 0, "batches": 0, "last_offset": -1, "bytes": 0, "seconds": 0.0}

            def consume() -> None:
                conn, _ = listener.accept()
                chunks = []
                while data := conn.recv(1 << 20):
                    chunks.append(data)
                conn.close()
                t_decode = time.perf_counter()
                payload = b"".join(chunks)
                decoded["bytes"] = len(payload)
                records = MemoryRecords(payload)
                expected_offset = 0
                while (batch := records.next_batch()) is not None:
                    assert batch.validate_crc(), "CRC mismatch"
                    decoded["batches"] += 1
                    for record in batch:
                        assert record.offset == expected_offset
                        assert record.value == value_of(0, record.offset)
                        expected_offset += 1
                        decoded["records"] += 1
                        decoded["last_offset"] = record.offset
                decoded["seconds"] = time.perf_counter() - t_decode

            reader = threading.Thread(target=consume)
            reader.start()
            sender = socket.create_connection(listener.getsockname())
            t0 = time.perf_counter()
            offset, sent = 0, 0
            while offset < MESSAGES_PER_SHARD:
                written, offset = store.sendfile_to_fd(names[0], offset, 1 << 20, sender)
                sent += written
            sender.close()
            elapsed = time.perf_counter() - t0
            reader.join()
            listener.close()
            print(
                f"sendfile {sent:9,} bytes in {elapsed:6.3f} s  {sent / elapsed / 1e6:9.1f} MB/s"
                f" -> {decoded['batches']} batches, {decoded['records']:,} records decoded by"
                f" kafka-python in {decoded['seconds']:.2f} s ({rate(decoded['records'], decoded['seconds'])})"
            )
            assert decoded["bytes"] == sent
            assert decoded["records"] == MESSAGES_PER_SHARD
            assert decoded["last_offset"] == MESSAGES_PER_SHARD - 1
            print(f"stats: {store.stats()['engines']}")
    print("Python demo OK")


if __name__ == "__main__":
    main()
