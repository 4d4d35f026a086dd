"""FFI overhead driver: the harness's batch-append workload through the
Python package (``mqstore.Store.append_batch``) instead of the Rust API.

    python ffi_bench.py --dir DIR --record-bytes 100 --batch 1024 \
        --seconds 2 --reps 5 --retention-bytes 67108864

Each repetition opens a fresh store in DIR/rep-N with one shard carrying the
same options as the Rust workload (memory engine, durability none, the given
retention), then appends one prebuilt list of ``bytes`` records until the
time is up. The list is built once, outside the timed loop, exactly as the
Rust and C drivers build their record arrays once: what is measured is the
call, argument conversion and the store, not constructing Python objects.

Prints one JSON line: {"driver": "python", ..., "samples": [msgs/s per rep]}.
The harness (bench/src/ffi.rs) runs this and takes the median.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def pseudo_random(length: int, seed: int) -> bytes:
    """The harness's xorshift fill: values that neither compress nor repeat."""
    mask = (1 << 64) - 1
    state = seed | 1
    out = bytearray()
    while len(out) < length:
        state ^= (state << 13) & mask
        state ^= state >> 7
        state ^= (state << 17) & mask
        out += state.to_bytes(8, "little")
    return bytes(out[:length])


def one_rep(mqstore, path: str, records: list, seconds: float, retention: int) -> float:
    batch = len(records)
    # Clock reads every ~1,024 records, like the Rust and C drivers.
    per_check = max(1, 1024 // batch)
    with mqstore.Store(path) as store:
        store.create_shard(
            "bench-0", engine="memory", durability="none", retention_bytes=retention
        )
        append_batch = store.append_batch  # bound once: attribute lookup is not the FFI
        sent = 0
        start = time.perf_counter()
        while True:
            for _ in range(per_check):
                append_batch("bench-0", records)
            sent += per_check * batch
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                break
    return sent / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", required=True)
    parser.add_argument("--record-bytes", type=int, default=100)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--retention-bytes", type=int, default=64 << 20)
    args = parser.parse_args()

    import mqstore  # imported here so --help works without the package

    data = pseudo_random(args.record_bytes * args.batch, 1)
    records = [
        data[i * args.record_bytes : (i + 1) * args.record_bytes] for i in range(args.batch)
    ]
    samples = []
    for rep in range(args.reps):
        path = os.path.join(args.dir, f"rep-{rep}")
        os.makedirs(path, exist_ok=True)
        samples.append(one_rep(mqstore, path, records, args.seconds, args.retention_bytes))
    print(
        json.dumps(
            {
                "driver": "python",
                "python": sys.version.split()[0],
                "package": os.path.dirname(mqstore.__file__),
                "library_version": mqstore.__version__,
                "record_bytes": args.record_bytes,
                "batch": args.batch,
                "seconds": args.seconds,
                "samples": samples,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
