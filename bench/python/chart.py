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


DURABILITIES = ["none", "os", "fsync"]


def persistent_engines(metrics):
    """Engines with the one-factor matrix (engine.append_..._t1_s1_<durability>)."""
    found = []
    for name, m in metrics.items():
        hit = re.match(r"(\w+)\.append_\w+_batch\d+_t\d+_s\d+_(none|os|fsync)\.msgs_per_s$",
                       name)
        if hit and m.get("status") == "ok" and hit.group(1) not in found:
            found.append(hit.group(1))
    return found


def by_durability(ax, metrics, engine, points, xlabel, title):
    """One-factor matrix: one group per point of the varied dimension, one
    bar per durability mode. `points` is [(label, metric-name-middle)]."""
    width = 0.26
    lowest = None
    for j, durability in enumerate(DURABILITIES):
        xs, ys, errs = [], [], [[], []]
        for i, (_, middle) in enumerate(points):
            name = f"{engine}.append_{middle}_{durability}.msgs_per_s"
            v = value(metrics, name)
            if v is None:
                ax.text(i + (j - 1) * width, 1, status_label(metrics, name), rotation=90,
                        fontsize=6, ha="center", va="bottom", color="#555555")
                continue
            lo, hi = spread(metrics, name)
            xs.append(i + (j - 1) * width)
            ys.append(v)
            errs[0].append(lo)
            errs[1].append(hi)
        if ys:
            lowest = min([lowest, *ys]) if lowest is not None else min(ys)
        ax.bar(xs, ys, width, label=durability, color=COLORS[j], yerr=errs, capsize=2,
               ecolor="#333333")
        for x, y in zip(xs, ys):
            ax.text(x, y, human(y), ha="center", va="bottom", fontsize=6.5)
    ax.set_xticks(range(len(points)))
    ax.set_xticklabels([label for label, _ in points], fontsize=8)
    ax.set_xlabel(xlabel)
    if lowest:
        ax.set_yscale("log")
        ax.set_ylim(bottom=lowest / 3)
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_formatter(FuncFormatter(human))
    ax.set_ylabel("messages / s")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower left", title="durability", title_fontsize=7)


def persistent_row(row, metrics, engine):
    """A persistent engine's matrix: record size, batch size, threads and
    shards, each varied alone around 1 KiB × 64, 1 thread, 1 shard."""
    by_durability(row[0], metrics, engine,
                  [(label, f"{size}_batch64_t1_s1") for size, label in SIZES],
                  "record size (batch 64, 1 thread, 1 shard)",
                  f"{engine}: append msgs/s by record size")
    by_durability(row[1], metrics, engine,
                  [(str(b), f"1k_batch{b}_t1_s1") for b in BATCHES],
                  "records per batch (1 KiB, 1 thread, 1 shard)",
                  f"{engine}: append msgs/s by batch size")
    by_durability(row[2], metrics, engine,
                  [("1t 1s", "1k_batch64_t1_s1"), ("2t 1s", "1k_batch64_t2_s1"),
                   ("4t 1s", "1k_batch64_t4_s1"), ("1t 1000s", "1k_batch64_t1_s1000")],
                  "threads (t) / shards (s) (1 KiB × 64)",
                  f"{engine}: append msgs/s by threads and shards")
    # Payload bandwidth by record size, against the disk's O_DIRECT limit.
    names = [f"{engine}.append_{size}_batch64_t1_s1_{d}.msgs_per_s"
             for size, _ in SIZES for d in DURABILITIES]
    labels = [f"{label}\n{d}" for _, label in SIZES for d in DURABILITIES]
    present = [n for n in names if value(metrics, n) is not None]
    if present:
        xs = range(len(names))
        for i, name in enumerate(names):
            v = value(metrics, name)
            size = name.split(".append_")[1].split("_")[0]
            if v is None:
                continue
            g = v * SIZE_BYTES[size] / 1e9
            row[3].bar(i, g, color=COLORS[i % 3])
            row[3].text(i, g, f"{g:.2g}", ha="center", va="bottom", fontsize=6.5)
        row[3].set_xticks(list(xs))
        row[3].set_xticklabels(labels, fontsize=6.5)
        disk = value(metrics, "raw.write_ceiling_gbps")
        if disk:
            row[3].axhline(disk, linestyle=":", color="#444444", linewidth=1)
            row[3].text(len(names) - 0.5, disk, f" raw write ceiling {disk:.2f}", va="bottom",
                        ha="right", fontsize=7)
        row[3].set_ylabel("GB/s (10^9 B/s) of record values")
        row[3].set_title(f"{engine}: payload GB/s by record size (batch 64)", fontsize=10)
    else:
        row[3].axis("off")


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
    """Reads (tail, hot, cold; every byte touched) and transfers beside the
    raw limits."""
    names, labels, colors = ["raw.mem_read_gbps"], ["raw\nmem read"], ["#444444"]
    for k, engine in enumerate(("memory", "journal", "file")):
        for kind in ("tail", "hot", "cold"):
            name = f"{engine}.read_{kind}_1k.gbps"
            if name in metrics and metrics[name].get("status") != "n/a":
                names.append(name)
                labels.append(f"{engine}\n{kind}")
                colors.append(COLORS[k])
    names.append("raw.sendfile_gbps")
    labels.append("raw\nsendfile")
    colors.append("#444444")
    for k, engine in enumerate(("memory", "journal", "file")):
        name = f"{engine}.sendfile_1k.gbps"
        if name in metrics:
            names.append(name)
            labels.append(f"{engine}\nsendfile")
            colors.append(COLORS[k])
    bars(ax, metrics, names, labels, log=False, colors=colors)
    ax.tick_params(axis="x", labelsize=6.5)
    ax.set_title("reads of 1 KiB records, bytes touched (tail / hot / cold), and transfers "
                 "to loopback TCP", fontsize=10)
    ax.set_ylabel("GB/s (10^9 B/s)")


WRITE_SIZES = ["64k", "256k", "1m", "4m"]


def write_matrix(ax, metrics):
    """The raw O_DIRECT write matrix: write size (groups) by queue depth and
    space (bars), with the ceiling (its best point) as a line."""
    series = [(qd, space) for space in ("unwritten", "overwrite") for qd in (1, 4, 16)]
    width = 0.8 / len(series)
    any_value = False
    for j, (qd, space) in enumerate(series):
        for i, size in enumerate(WRITE_SIZES):
            name = f"raw.odirect_write_{size}_qd{qd}_{space}_gbps"
            v = value(metrics, name)
            if v is None:
                continue
            any_value = True
            lo, hi = spread(metrics, name)
            ax.bar(i - 0.4 + (j + 0.5) * width, v, width, color=COLORS[j % len(COLORS)],
                   hatch="//" if space == "unwritten" else None, yerr=[[lo], [hi]],
                   capsize=1.5, ecolor="#333333",
                   label=f"QD {qd}, {space}" if i == 0 else None)
    if not any_value:
        ax.axis("off")
        return
    ceiling = metrics.get("raw.write_ceiling_gbps", {})
    v = value(metrics, "raw.write_ceiling_gbps")
    if v:
        ax.axhline(v, linestyle=":", color="#444444", linewidth=1)
        best = ceiling.get("params", {}).get("achieved_by", "")
        ax.text(len(WRITE_SIZES) - 0.5, v, f" ceiling {v:.2f} ({best.replace('raw.', '')})",
                va="bottom", ha="right", fontsize=7)
    ax.set_xticks(range(len(WRITE_SIZES)))
    ax.set_xticklabels(WRITE_SIZES)
    ax.set_xlabel("O_DIRECT write size (sequential; one fdatasync per pass)")
    ax.set_ylabel("GB/s (10^9 B/s)")
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    ax.set_title("raw: O_DIRECT writes by size, queue depth and space "
                 "(hatched: fallocated, never written)", fontsize=10)


def peer_pairs(ax, metrics):
    """Journal vs RocksDB, the same workload side by side."""
    pairs = []
    for name in metrics:
        hit = re.match(r"journal_vs_rocksdb\.(\w+)\.ratio$", name)
        if hit:
            pairs.append(hit.group(1))
    if not pairs:
        ax.axis("off")
        return
    width = 0.38
    lowest = None
    for j, (engine, label) in enumerate((("journal", "journal"), ("rocksdb", "RocksDB"))):
        for i, workload in enumerate(pairs):
            name = f"{engine}.{workload}.msgs_per_s"
            v = value(metrics, name)
            x = i + (j - 0.5) * width
            if v is None:
                ax.text(x, 1, status_label(metrics, name), rotation=90, fontsize=6,
                        ha="center", va="bottom", color="#555555")
                continue
            lowest = v if lowest is None else min(lowest, v)
            lo, hi = spread(metrics, name)
            ax.bar(x, v, width, color=COLORS[j], yerr=[[lo], [hi]], capsize=2,
                   ecolor="#333333", label=label if i == 0 else None)
    for i, workload in enumerate(pairs):
        ratio = value(metrics, f"journal_vs_rocksdb.{workload}.ratio")
        j = value(metrics, f"journal.{workload}.msgs_per_s")
        if ratio and j:
            ax.text(i, j, f"{ratio:.2g}x", ha="center", va="bottom", fontsize=7,
                    fontweight="bold")
    ax.set_xticks(range(len(pairs)))
    ax.set_xticklabels([w.replace("append_", "").replace("_", "\n", 2) for w in pairs],
                       fontsize=6.5)
    if lowest:
        ax.set_yscale("log")
        ax.set_ylim(bottom=lowest / 3)
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_formatter(FuncFormatter(human))
    ax.set_ylabel("messages / s")
    ax.legend(fontsize=7, loc="lower left")
    ax.set_title("journal vs RocksDB, same workload (producers, window, durability)",
                 fontsize=10)


def peak_rss(ax, metrics):
    """Peak RSS of each engine's workload groups (one process per group)."""
    names, labels, colors = [], [], []
    for k, engine in enumerate(("memory", "journal", "file")):
        for name in sorted(metrics):
            hit = re.match(rf"{engine}\.(\w+)\.peak_rss_mb$", name)
            if hit:
                names.append(name)
                labels.append(f"{engine}\n{hit.group(1)}")
                colors.append(COLORS[k])
    if not names:
        ax.axis("off")
        return
    bars(ax, metrics, names, labels, log=False, colors=colors)
    ax.tick_params(axis="x", labelsize=6.5)
    ax.set_title("peak RSS per workload group (MiB, own process)", fontsize=10)
    ax.set_ylabel("MiB")


def load_note(doc):
    """The load average the run was measured under, as recorded by the harness."""
    load = doc.get("machine", {}).get("load", {})
    during = load.get("during_1m", {})
    if during.get("min") is None:
        return ""
    start = (load.get("start") or [None])[0]
    return (f"; load avg (1 min) {start if start is not None else '?'} at start, "
            f"{during['min']:.2f}..{during['max']:.2f} during")


def throughput_chart(doc, metrics, out):
    engines = [e for e in matrix_engines(metrics) if e == "memory"] or ["memory"]
    persistent = persistent_engines(metrics)
    cols = 4
    rows = 3 + len(persistent)
    fig, axes = plt.subplots(rows, cols, figsize=(5.4 * cols, 4.8 * rows), squeeze=False)
    top = axes[0]
    for k, engine in enumerate(engines[:1]):
        ax = top[0]
        grouped(ax, metrics, engine, f"{engine}: append msgs/s")
        ax.axhline(10e6, color="#C44E52", linestyle=":", linewidth=1)
        ax.text(2.45, 10e6, "10M msgs/s target", va="bottom", ha="right", fontsize=7,
                color="#C44E52")
        ax.set_ylabel("messages / s")
        grouped(top[1], metrics, engine, f"{engine}: append payload GB/s",
                per_byte=True,
                raw_lines=[("raw.memcpy_gbps", "memcpy", "--"),
                           ("raw.write_ceiling_gbps", "raw write ceiling", ":")])
        top[1].set_ylabel("GB/s (10^9 B/s) of record values")
    # The transfers panel has many bars: let it span the last two columns.
    gs = top[2].get_gridspec()
    top[2].remove()
    top[3].remove()
    transfers(fig.add_subplot(gs[0, 2:]), metrics)

    for r, engine in enumerate(persistent, start=1):
        persistent_row(axes[r], metrics, engine)

    # The raw write matrix and the like-with-like peer comparison.
    row = axes[rows - 2]
    gs = row[0].get_gridspec()
    for ax in row:
        ax.remove()
    write_matrix(fig.add_subplot(gs[rows - 2, 0:2]), metrics)
    peer_pairs(fig.add_subplot(gs[rows - 2, 2:]), metrics)

    bottom = axes[rows - 1]
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
        "journal.append_1k_batch64_none.msgs_per_s",
        "journal.append_1k_batch64_os.msgs_per_s",
        "journal.append_1k_batch64_fsync.msgs_per_s",
        "file.append_1k_batch64_os.msgs_per_s",
        "file.append_1k_batch64_fsync.msgs_per_s",
    ]
    labels = ["memory\nnone", "journal\nnone", "journal\nos", "journal\nfsync", "file\nos",
              "file\nfsync"]
    bars(bottom[1], metrics, names, labels)
    bottom[1].set_title("1 KiB × 64, one blocking producer, per engine", fontsize=10)
    bottom[1].set_ylabel("messages / s")

    # FFI: the same workload from Rust, C and Python.
    rust_name = "ffi_rust.append_100b_batch1024.msgs_per_s"
    if value(metrics, rust_name) is None:
        rust_name = "memory.append_100b_batch1024.msgs_per_s"
    names = [
        rust_name,
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
    bottom[2].set_title("FFI: memory, 100 B × 1024, 1 thread"
                        + (" (reps interleaved)" if rust_name.startswith("ffi_") else ""),
                        fontsize=10)
    bottom[2].set_ylabel("messages / s")

    peak_rss(bottom[3], metrics)

    machine = doc.get("machine", {})
    fs = machine.get("filesystem", {})
    fig.suptitle(
        f"mqstore {doc.get('mqstore_version', '')} throughput — "
        f"{'QUICK' if doc.get('quick') else 'full'} run {doc.get('started_at', '')}\n"
        f"{machine.get('cores', '?')} cores {machine.get('cpu_model', '')}, "
        f"{machine.get('memory_mb', '?')} MB RAM, kernel {machine.get('kernel', '')}, "
        f"{fs.get('type', '?')} on {fs.get('source', '?')}; bars: median, whiskers: min..max"
        f"{load_note(doc)}",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(out, dpi=110)
    plt.close(fig)


def paced_latency(ax, metrics):
    """Persistent engines: single 1 KiB appends offered open loop at a fixed
    rate, per durability and producer count; open-loop (from intended start)
    and service time."""
    groups = []
    for engine in persistent_engines(metrics):
        for durability, suffix, label in (("os", "", ""), ("fsync", "", ""),
                                          ("fsync", "_4threads", " 4 producers")):
            prefix = f"{engine}.append_1k_single_{durability}{suffix}"
            if f"{prefix}.open_loop_p99_us" in metrics:
                groups.append((f"{engine} {durability}{label}", prefix))
    if not groups:
        ax.axis("off")
        return
    pct = ["p50", "p99", "p999", "max"]
    width = 0.8 / (2 * len(groups))
    k = 0
    for g, (label, prefix) in enumerate(groups):
        for kind, what in (("open_loop_", "open loop"), ("service_", "service")):
            for i, p in enumerate(pct):
                name = f"{prefix}.{kind}{p}_us"
                v = value(metrics, name)
                x = i - 0.4 + (k + 0.5) * width
                if v is None:
                    continue
                lo, hi = spread(metrics, name)
                ax.bar(x, v * 1e3, width, color=COLORS[k % len(COLORS)],
                       yerr=[[lo * 1e3], [hi * 1e3]], capsize=1.5, ecolor="#333333",
                       label=f"{label} {what}" if i == 0 else None)
            k += 1
    ax.set_xticks(range(len(pct)))
    ax.set_xticklabels(pct)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(duration_ns))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.legend(fontsize=7, loc="upper left")
    first = metrics.get(f"{groups[0][1]}.open_loop_p99_us", {}).get("params", {})
    frac = first.get("offered_fraction_of_max")
    sub = f" at {100 * frac:.0f}% of the closed-loop maximum" if frac else ""
    rates = []
    for label, prefix in groups:
        rate = metrics.get(f"{prefix}.open_loop_p99_us", {}).get("params", {}).get(
            "offered_msgs_per_s")
        if rate:
            rates.append(f"{label}: {human(rate)}/s")
    ax.set_title(f"single 1 KiB appends, open loop{sub}\n" + ", ".join(rates), fontsize=9)
    ax.set_ylabel("latency")


def latency_chart(doc, metrics, out):
    fig, grid = plt.subplots(2, 2, figsize=(15, 10))
    axes = [grid[0][0], grid[1][0], grid[1][1], grid[0][1]]
    pct = ["p50", "p99", "p999", "max"]

    ax = axes[0]
    width = 0.38
    for j, (kind, label) in enumerate((("open_loop_", "open loop (from intended start)"),
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
    m = metrics.get("memory.append_100b_single.open_loop_p99_ns", {})
    params = m.get("params", {})
    offered = params.get("offered_msgs_per_s")
    switches = params.get("involuntary_context_switches_per_rep")
    sub = f"\noffered {human(offered)} msgs/s, paced" if offered else ""
    if switches:
        sub += f"; preempted {switches} times per rep"
    ax.set_title(f"memory: single 100 B append latency{sub}", fontsize=10)
    ax.set_ylabel("latency")

    names = [f"raw.odirect_commit_4k_{p}_us" for p in pct]
    bars(axes[1], metrics, names, pct, scale=1e3, fmt=duration_ns)
    axes[1].set_title("raw: O_DIRECT 4 KiB overwrite + fdatasync (the smallest journal commit)",
                      fontsize=10)
    axes[1].set_ylabel("latency")

    paced_latency(axes[3], metrics)

    names = [f"raw.fdatasync_{p}_us" for p in pct]
    bars(axes[2], metrics, names, pct, scale=1e3, fmt=duration_ns)
    axes[2].set_title("raw: buffered 4 KiB write + fdatasync", fontsize=10)
    axes[2].set_ylabel("latency")

    fig.suptitle(
        f"mqstore latency percentiles — {'QUICK' if doc.get('quick') else 'full'} run "
        f"{doc.get('started_at', '')}; bars: median of reps, whiskers: min..max{load_note(doc)}",
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
