"""``python -m mqstore``: the version and the engines of this build, to check
what an installation provides (``--json`` for scripts)."""

from __future__ import annotations

import json
import sys

from . import __version__, engines


def main(argv: list[str]) -> int:
    if argv not in ([], ["--json"]):
        print("usage: python -m mqstore [--json]", file=sys.stderr)
        return 2
    built = engines()
    if argv:
        print(json.dumps({"version": __version__, "engines": built}, indent=2))
        return 0
    print(f"mqstore {__version__}")
    print("engines in this build:")
    for name, caps in built.items():
        modes = "/".join(caps["durability"])
        extra = ", ".join(
            word
            for word, on in (("persistent", caps["persistent"]), ("pipelined", caps["pipelined"]))
            if on
        )
        print(f"  {name:<8} durability {modes}; transfers by {caps['transfer']}" + (f"; {extra}" if extra else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
