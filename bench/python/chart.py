"""Charts of a benchmark run: reads results.json, writes throughput.png and
latency.png next to it (or into --out-dir).

    python bench/python/chart.py target/bench/results.json [--out-dir DIR]

Every bar is a median over repetitions with its min..max drawn as an error
bar. Metrics whose engine is not built (status "absent") or that do not
apply ("n/a") are drawn as labelled gaps, never as zero.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

import matplotlib

matplotlib.use("Agg")  # files only; no display on a build machine
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402

SIZES = [("100b", "100 B"), ("1k", "1 KiB"), ("16k", "16 KiB")]
SIZE_BYTES = {"100b": 100, "1k": 1024, "16k": 16384}
BATCHES = [1, 64, 1024]
COLORS = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860"]
GAP_COLOR = "#BBBBBB"


def load(path):
    with open(path) as f:
        doc = json.load(f)
    return doc, {m["name"]: m for m in doc["metrics"]}


def value(metrics, name):
    m = metrics.get(name)
    return m["value"] if m and m.get("status") == "ok" else None


def spread(metrics, name):
    """(lower, upper) error-bar lengths from the repetitions' min and max."""
    m = metrics.get(name)
    if not m or m.get("status") != "ok":
        return (0, 0)
    p = m.get("params", {})
    v = m["value"]
    return (max(0, v - p.get("min", v)), max(0, p.get("max", v) - v))


def status_label(metrics, name):
    m = metrics.get(name)
    if m is None:
        return "not run"
    return {"absent": "absent", "n/a": "n/a", "failed": "failed"}.get(m["status"], "")


def human(x, _pos=None):
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suffix}"
    return f"{x:.3g}"


def duration_ns(x, _pos=None):
    for div, suffix in ((1e9, "s"), (1e6, "ms"), (1e3, "µs")):
        if abs(x) >= div:
            return f"{x / div:.3g} {suffix}"
    return f"{x:.3g} ns"


def bars(ax, metrics, names, labels, colors=None, scale=1.0, log=True, annotate=True,
         fmt=human):
    """One bar per metric name; gaps for metrics without a value."""
    xs = range(len(names))
    vals = [value(metrics, n) for n in names]
    present = [v for v in vals if v is not None]
    floor = min(present) * scale / 10 if present and log else 0
    for i, (name, v) in enumerate(zip(names, vals)):
        color = (colors or COLORS)[i % len(colors or COLORS)]
        if v is None:
            ax.bar(i, 0, color=GAP_COLOR)
            ax.text(i, floor if log and floor > 0 else 0, status_label(metrics, name),
                    ha="center", va="bottom", rotation=90, fontsize=8, color="#555555")
            continue
        lo, hi = spread(metrics, name)
        ax.bar(i, v * scale, color=color, yerr=[[lo * scale], [hi * scale]], capsize=3,
               ecolor="#333333")
        if annotate:
            ax.text(i, v * scale, fmt(v * scale), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels, fontsize=8)
    if log and present:
        ax.set_yscale("log")
        ax.set_ylim(bottom=floor)
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_formatter(FuncFormatter(fmt))
    if not present:
        # Nothing measured: an empty frame with the gap labels, no fake scale.
        ax.set_ylim(0, 1)
        ax.set_yticks([])


def matrix_engines(metrics):
    """Engines with an append matrix (engine.append_<size>_batch<b>_t1_s1...)."""
    found = []
    for name, m in metrics.items():
        hit = re.match(r"(\w+)\.append_\w+_batch\d+_t1_s1\.msgs_per_s$", name)
        if hit and m.get("status") == "ok" and hit.group(1) not in found:
            found.append(hit.group(1))
    return found


def grouped(ax, metrics, engine, title, per_byte=False, raw_lines=()):
    """Append throughput by record size (groups) and batch size (bars)."""
    width = 0.26
    lowest = None
    for j, batch in enumerate(BATCHES):
        xs, ys, errs = [], [], [[], []]
        for i, (size, _) in enumerate(SIZES):
            name = f"{engine}.append_{size}_batch{batch}_t1_s1.msgs_per_s"
            v = value(metrics, name)
            if v is None:
                continue
            scale = SIZE_BYTES[size] / 1e9 if per_byte else 1.0
            lo, hi = spread(metrics, name)
            xs.append(i + (j - 1) * width)
            ys.append(v * scale)
            errs[0].append(lo * scale)
            errs[1].append(hi * scale)
        lowest = min([lowest, *ys]) if lowest is not None else min(ys, default=None)
        ax.bar(xs, ys, width, label=f"batch {batch}", color=COLORS[j], yerr=errs, capsize=2,
               ecolor="#333333")
        for x, y in zip(xs, ys):
            ax.text(x, y, human(y), ha="center", va="bottom", fontsize=6.5)
    ax.set_xticks(range(len(SIZES)))
    ax.set_xticklabels([label for _, label in SIZES])
    ax.set_xlabel("record size (1 thread, 1 shard)")
    ax.set_yscale("log")
    if lowest:
        # Log-scale bars start at the axis bottom: keep the shortest visible.
        ax.set_ylim(bottom=lowest / 3)
    ax.yaxis.set_major_formatter(FuncFormatter(human))
    ax.yaxis.set_minor_formatter(NullFormatter())
    for name, label, style in raw_lines:
        v = value(metrics, name)
        if v is not None:
            # Keep the limit inside the frame, with room for its label.
            bottom, top = ax.get_ylim()
            ax.set_ylim(bottom, max(top, v * 1.5))
            ax.axhline(v, linestyle=style, color="#444444", linewidth=1)
            ax.text(2.45, v, f" {label} {human(v)}", va="bottom", ha="right", fontsize=7)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower left")


def transfers(ax, metrics):
    """Reads and transfers beside the raw limits they are bounded by."""
    names = [
        "raw.memcpy_gbps", "memory.read_tail_1k.gbps", "journal.read_tail_1k.gbps",
        "raw.sendfile_gbps", "memory.sendfile_1k.gbps", "journal.sendfile_1k.gbps",
    ]
    labels = ["raw\nmemcpy", "memory\nread", "journal\nread", "raw\nsendfile",
              "memory\nsendfile", "journal\nsendfile"]
    bars(ax, metrics, names, labels, log=False,
         colors=["#444444", COLORS[0], COLORS[1], "#444444", COLORS[0], COLORS[1]])
    ax.set_title("reads (1 KiB records) and transfers to loopback TCP", fontsize=10)
    ax.set_ylabel("GB/s (10^9 B/s)")


def throughput_chart(doc, metrics, out):
    engines = matrix_engines(metrics) or ["memory"]
    cols = max(3, 2 * len(engines) + 1)
    fig, axes = plt.subplots(2, cols, figsize=(5.2 * cols, 9.5), squeeze=False)
    top = axes[0]
    for k, engine in enumerate(engines):
        ax = top[2 * k]
        grouped(ax, metrics, engine, f"{engine}: append msgs/s")
        if engine == "memory":
            ax.axhline(10e6, color="#C44E52", linestyle=":", linewidth=1)
            ax.text(2.45, 10e6, "10M msgs/s target", va="bottom", ha="right", fontsize=7,
                    color="#C44E52")
        ax.set_ylabel("messages / s")
        grouped(top[2 * k + 1], metrics, engine, f"{engine}: append payload GB/s",
                per_byte=True,
                raw_lines=[("raw.memcpy_gbps", "memcpy", "--"),
                           ("raw.odirect_write_gbps", "O_DIRECT write", ":")])
        top[2 * k + 1].set_ylabel("GB/s (10^9 B/s) of record values")
    transfers(top[2 * len(engines)], metrics)
    for ax in top[2 * len(engines) + 1:]:
        ax.axis("off")

    bottom = axes[1]
    # Scaling of the headline workload with threads and shards.
    names, labels = [], []
    for shards in (1, 1000):
        for threads in (1, 2, 4):
            names.append(f"memory.append_100b_batch1024_t{threads}_s{shards}.msgs_per_s")
            labels.append(f"{threads}t\n{shards}s")
    bars(bottom[0], metrics, names, labels,
         colors=[COLORS[0]] * 3 + [COLORS[1]] * 3)
    bottom[0].set_title("memory: 100 B × 1024, threads (t) × shards (s)", fontsize=10)
    bottom[0].set_ylabel("messages / s")

    # Engines and the peer at the same records: 1 KiB in batches of 64.
    names = [
        "memory.append_1k_batch64_t1_s1.msgs_per_s",
        "journal.append_1k_batch64_fsync.msgs_per_s",
        "file.append_1k_batch64_os.msgs_per_s",
        "rocksdb.append_1k_batch64_sync.msgs_per_s",
        "rocksdb.append_1k_batch64_nosync.msgs_per_s",
    ]
    labels = ["memory\nnone", "journal\nfsync", "file\nos", "RocksDB\nWAL sync", "RocksDB\nno sync"]
    bars(bottom[1], metrics, names, labels)
    bottom[1].set_title("1 KiB × 64 per engine (durability below)", fontsize=10)
    bottom[1].set_ylabel("messages / s")

    # FFI: the same workload from Rust, C and Python.
    names = [
        "memory.append_100b_batch1024.msgs_per_s",
        "ffi_c.append_100b_batch1024.msgs_per_s",
        "ffi_python.append_100b_batch1024.msgs_per_s",
    ]
    bars(bottom[2], metrics, names, ["Rust API", "C ABI", "Python"], log=False)
    rust = value(metrics, names[0])
    for i, name in enumerate(names[1:], start=1):
        v = value(metrics, name)
        if rust and v:
            bottom[2].text(i, v / 2, f"{100 * v / rust:.0f}%\nof Rust", ha="center",
                           fontsize=8, color="white", fontweight="bold")
    bottom[2].set_title("FFI: memory, 100 B × 1024, 1 thread", fontsize=10)
    bottom[2].set_ylabel("messages / s")

    for ax in bottom[3:]:
        ax.axis("off")

    machine = doc.get("machine", {})
    fs = machine.get("filesystem", {})
    fig.suptitle(
        f"mqstore {doc.get('mqstore_version', '')} throughput — "
        f"{'QUICK' if doc.get('quick') else 'full'} run {doc.get('started_at', '')}\n"
        f"{machine.get('cores', '?')} cores {machine.get('cpu_model', '')}, "
        f"{machine.get('memory_mb', '?')} MB RAM, kernel {machine.get('kernel', '')}, "
        f"{fs.get('type', '?')} on {fs.get('source', '?')}; bars: median, whiskers: min..max",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(out, dpi=110)
    plt.close(fig)


def latency_chart(doc, metrics, out):
    fig, axes = plt.subplots(1, 3, figsize=(16, 5.2))
    pct = ["p50", "p99", "p999", "max"]

    ax = axes[0]
    width = 0.38
    for j, (kind, label) in enumerate((("", "response (from intended start)"),
                                        ("service_", "service (the call alone)"))):
        names = [f"memory.append_100b_single.{kind}{p}_ns" for p in pct]
        for i, name in enumerate(names):
            v = value(metrics, name)
            x = i + (j - 0.5) * width
            if v is None:
                ax.text(x, 1, status_label(metrics, name), rotation=90, fontsize=7,
                        ha="center", va="bottom")
                continue
            lo, hi = spread(metrics, name)
            ax.bar(x, v, width, color=COLORS[j], yerr=[[lo], [hi]], capsize=2,
                   ecolor="#333333", label=label if i == 0 else None)
            ax.text(x, v, duration_ns(v), ha="center", va="bottom", fontsize=6.5)
    ax.set_xticks(range(len(pct)))
    ax.set_xticklabels(pct)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(duration_ns))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.axhline(1000, color="#C44E52", linestyle=":", linewidth=1)
    ax.text(3.6, 1000, "1 µs p99 target", va="bottom", ha="right", fontsize=7,
            color="#C44E52")
    ax.legend(fontsize=7, loc="upper left")
    m = metrics.get("memory.append_100b_single.p99_ns", {})
    params = m.get("params", {})
    offered = params.get("offered_msgs_per_s")
    switches = params.get("involuntary_context_switches_per_rep")
    sub = f"\noffered {human(offered)} msgs/s, paced" if offered else ""
    if switches:
        sub += f"; preempted {switches} times per rep"
    ax.set_title(f"memory: single 100 B append latency{sub}", fontsize=10)
    ax.set_ylabel("latency")

    names = [f"journal.append_1k_single_fsync_4threads.{p}_us" for p in ("p50", "p99", "p999")]
    bars(axes[1], metrics, names, ["p50", "p99", "p999"], scale=1e3, fmt=duration_ns)
    axes[1].set_title("journal: single 1 KiB appends, fsync, 4 threads (closed loop)", fontsize=10)
    axes[1].set_ylabel("latency")

    names = [f"raw.fdatasync_{p}_us" for p in ("p50", "p99", "p999")]
    bars(axes[2], metrics, names, ["p50", "p99", "p999"], scale=1e3, fmt=duration_ns)
    axes[2].set_title("raw: 4 KiB write + fdatasync", fontsize=10)
    axes[2].set_ylabel("latency")

    fig.suptitle(
        f"mqstore latency percentiles — {'QUICK' if doc.get('quick') else 'full'} run "
        f"{doc.get('started_at', '')}; bars: median of reps, whiskers: min..max",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description="Draw the benchmark charts.")
    parser.add_argument("results", help="results.json written by the bench harness")
    parser.add_argument("--out-dir", help="where to write the PNGs (default: beside results)")
    args = parser.parse_args()
    doc, metrics = load(args.results)
    out_dir = args.out_dir or os.path.dirname(os.path.abspath(args.results))
    os.makedirs(out_dir, exist_ok=True)
    throughput = os.path.join(out_dir, "throughput.png")
    latency = os.path.join(out_dir, "latency.png")
    throughput_chart(doc, metrics, throughput)
    latency_chart(doc, metrics, latency)
    print(f"wrote {throughput} and {latency}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
