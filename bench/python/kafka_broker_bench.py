"""Example-broker driver: a confluent-kafka (librdkafka) producer and
consumer against examples/kafka_broker/broker.py on loopback.

    python kafka_broker_bench.py --dir DIR --messages 200000 --reps 3

Each repetition starts the broker on a fresh store in DIR/rep-N (journal,
`fsync`: every produce acknowledged once durable), then
- produce: an idempotent producer (acks=all, lz4 off: the values do not
  compress, linger.ms=5) sends MESSAGES values of 1 KiB to one partition;
  msgs/s from the first produce call until every delivery report arrived;
- fetch: a consumer assigned to that partition reads them all back;
  MB/s of value bytes (10^6) from assign until the last record arrived.
The broker is stopped (SIGTERM, a clean close) after each repetition.

Prints one JSON line: {"produce_samples": [...], "fetch_samples": [...], ...}.
The harness (bench/src/broker.rs) runs this and takes the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time

from confluent_kafka import Consumer, Producer, TopicPartition

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BROKER = os.path.join(ROOT, "examples", "kafka_broker", "broker.py")
VALUE_BYTES = 1024


def values(count: int) -> list[bytes]:
    """Distinct values that do not compress (os.urandom, made once)."""
    pool = os.urandom(VALUE_BYTES * 64)
    return [pool[(i % 63) * VALUE_BYTES:][:VALUE_BYTES - 8] + i.to_bytes(8, "big") for i in range(count)]


def start_broker(data: str) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [sys.executable, BROKER, "--data", data, "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    line = process.stdout.readline()
    if not line.startswith("listening on "):
        raise SystemExit(f"the broker did not start: {line!r}")
    return process, line.split()[-1]


def produce(address: str, records: list[bytes]) -> float:
    producer = Producer({
        "bootstrap.servers": address,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "batch.size": 1 << 20,
        "queue.buffering.max.messages": len(records) + 1,
        "queue.buffering.max.kbytes": 2 << 20,
    })
    failed = []

    def delivered(error, message):
        if error is not None:
            failed.append(error)

    start = time.perf_counter()
    for value in records:
        producer.produce("bench", value, partition=0, on_delivery=delivered)
        producer.poll(0)
    if producer.flush(300) != 0 or failed:
        raise SystemExit(f"produce failed: {failed[:3]}")
    return len(records) / (time.perf_counter() - start)


def fetch(address: str, count: int) -> float:
    consumer = Consumer({
        "bootstrap.servers": address,
        "group.id": "bench",
        "enable.auto.commit": False,
        "fetch.max.bytes": 64 << 20,
        "max.partition.fetch.bytes": 16 << 20,
    })
    start = time.perf_counter()
    consumer.assign([TopicPartition("bench", 0, 0)])
    got = 0
    value_bytes = 0
    deadline = start + 300
    while got < count:
        if time.perf_counter() > deadline:
            raise SystemExit(f"fetch stalled at {got} of {count}")
        for m in consumer.consume(num_messages=10_000, timeout=1.0):
            if m.error() is not None:
                raise SystemExit(f"fetch failed: {m.error()}")
            got += 1
            value_bytes += len(m.value())
    seconds = time.perf_counter() - start
    consumer.close()
    return value_bytes / seconds / 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", required=True)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    records = values(args.messages)
    produce_samples, fetch_samples = [], []
    for rep in range(args.reps):
        process, address = start_broker(os.path.join(args.dir, f"rep-{rep}"))
        try:
            produce_samples.append(produce(address, records))
            fetch_samples.append(fetch(address, len(records)))
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(60)
    print(json.dumps({
        "driver": "confluent-kafka",
        "messages": args.messages,
        "value_bytes": VALUE_BYTES,
        "produce_samples": produce_samples,
        "fetch_samples": fetch_samples,
    }))


if __name__ == "__main__":
    main()
