#!/usr/bin/env python3
"""The C ABI of libmqstore, as a sorted list of lines, against a committed copy.

    abi.py check LIB HEADER ABI_FILE   # fails when they differ
    abi.py bless LIB HEADER ABI_FILE   # rewrites ABI_FILE

Lines cover what a program compiled against the header depends on: every
symbol the library exports (nm -D --defined-only), every function prototype,
struct (fields in order, with types), enum (constants with values), typedef
and #define of the header, except the version numbers. A removed or changed
line breaks programs built before (a new ABI series); an added line is a
compatible addition (a new minor version). Both fail the check until the
list is blessed, so neither happens by accident.
"""
from __future__ import annotations

import re
import subprocess
import sys

IGNORED_DEFINES = {"MQS_VERSION_MAJOR", "MQS_VERSION_MINOR", "MQS_VERSION_PATCH"}


def exported_symbols(lib: str) -> list[str]:
    out = subprocess.run(
        ["nm", "-D", "--defined-only", lib], check=True, capture_output=True, text=True
    ).stdout
    lines = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3:
            kind = "function" if parts[1] in "Tt" else "data"
            lines.append(f"symbol {parts[2]} ({kind})")
    return lines


def norm(text: str) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"\s*([*(),;{}\[\]])\s*", r"\1", text)
    text = re.sub(r"\s*(\*+)\s*", r" \1", text.replace(",", ", "))
    return re.sub(r" +", " ", text).replace("( ", "(").replace(" )", ")")


def header_items(path: str) -> list[str]:
    src = open(path, encoding="utf-8").read()
    src = re.sub(r"/\*.*?\*/", " ", src, flags=re.S)
    src = re.sub(r"//[^\n]*", " ", src)
    lines = []
    body = []
    for line in src.splitlines():
        if line.lstrip().startswith("#"):
            m = re.match(r"\s*#\s*define\s+(MQS_\w+)\s+(.+)$", line)
            if m and m.group(1) not in IGNORED_DEFINES:
                lines.append(f"define {m.group(1)} {m.group(2).strip()}")
            continue
        body.append(line)
    text = " ".join(body)
    text = re.sub(r'extern\s*"C"\s*\{', " ", text)
    # Top-level declarations end at a ';' outside braces.
    depth, start = 0, 0
    decls = []
    for i, ch in enumerate(text):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth = max(depth - 1, 0)
        elif ch == ";" and depth == 0:
            decls.append(text[start:i].strip())
            start = i + 1
    for decl in decls:
        decl = decl.strip().lstrip("}").strip()
        if not decl:
            continue
        m = re.match(r"typedef enum (\w+)\s*\{(.*)\}\s*(\w+)$", decl, re.S)
        if m:
            value = -1
            for item in filter(None, (p.strip() for p in m.group(2).split(","))):
                name, _, explicit = item.partition("=")
                value = int(explicit.strip(), 0) if explicit.strip() else value + 1
                lines.append(f"enum {m.group(1)} {name.strip()} = {value}")
            continue
        m = re.match(r"typedef struct (\w+)\s*\{(.*)\}\s*(\w+)$", decl, re.S)
        if m:
            fields = [norm(f) for f in m.group(2).split(";") if f.strip()]
            lines.append(f"struct {m.group(1)} {{ {'; '.join(fields)}; }}")
            continue
        if "(" in decl and not decl.startswith("typedef"):
            lines.append(f"function {norm(decl)}")
            continue
        lines.append(norm(decl))
    return lines


def current(lib: str, header: str) -> list[str]:
    items = exported_symbols(lib) + header_items(header)
    functions = {re.search(r"(\w+)\(", l).group(1) for l in items if l.startswith("function ")}
    exported = {l.split()[1] for l in items if l.startswith("symbol ")}
    for name in sorted(functions - exported):
        raise SystemExit(f"abi: the header declares {name}, which the library does not export")
    for name in sorted(exported - functions):
        raise SystemExit(f"abi: the library exports {name}, which the header does not declare")
    return sorted(set(items))


def main() -> int:
    if len(sys.argv) != 5 or sys.argv[1] not in ("check", "bless"):
        print(__doc__, file=sys.stderr)
        return 2
    action, lib, header, abi_file = sys.argv[1:]
    now = current(lib, header)
    if action == "bless":
        with open(abi_file, "w", encoding="utf-8") as f:
            f.write("# The C ABI of libmqstore: make abi-bless rewrites this file (scripts/abi.py).\n")
            f.write("\n".join(now) + "\n")
        print(f"abi: {abi_file} blessed ({len(now)} lines)")
        return 0
    try:
        with open(abi_file, encoding="utf-8") as f:
            committed = [l.rstrip("\n") for l in f if l.strip() and not l.startswith("#")]
    except FileNotFoundError:
        print(f"abi: {abi_file} is missing; create it with make abi-bless", file=sys.stderr)
        return 1
    removed = sorted(set(committed) - set(now))
    added = sorted(set(now) - set(committed))
    if not removed and not added:
        print(f"abi: unchanged ({len(now)} lines match {abi_file})")
        return 0
    for line in removed:
        print(f"  - {line}", file=sys.stderr)
    for line in added:
        print(f"  + {line}", file=sys.stderr)
    if removed:
        print(
            "abi: BREAKING change (lines removed or changed): programs built against the "
            "committed ABI would break. If intended, bump the ABI series (the major "
            "version; the minor one before 1.0) and run make abi-bless.",
            file=sys.stderr,
        )
    else:
        print(
            "abi: compatible additions: bump the minor version if a release has shipped "
            "without them, and run make abi-bless.",
            file=sys.stderr,
        )
    return 1


if __name__ == "__main__":
    sys.exit(main())
