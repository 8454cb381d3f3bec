"""Entry point: `python -m bench [NAME [ARGS...]]`."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

import bench


def available() -> dict[str, str]:
    """Benchmark name -> first line of its docstring."""
    found = {}
    for info in pkgutil.iter_modules([str(Path(bench.__file__).parent)]):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"bench.{info.name}")
        if hasattr(module, "main"):
            found[info.name] = (module.__doc__ or "").strip().splitlines()[0] if module.__doc__ else ""
    return found


def main(argv: list[str]) -> int:
    names = available()
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m bench NAME [ARGS...]\n\nbenchmarks:")
        for name, doc in sorted(names.items()):
            print(f"  {name:<12} {doc}")
        return 0
    name = argv[0]
    if name not in names:
        print(f"unknown benchmark {name!r}; available: {', '.join(sorted(names))}", file=sys.stderr)
        return 2
    ratio = importlib.import_module(f"bench.{name}").main(argv[1:])
    print(f"ratio: {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
