"""Runs the benchmarks: `python -m tests.benchmarks [name-prefix]` (what `make bench BENCH=...` calls).

Every `bench_*.py` module here declares the figure names it reports in `FIGURES` and an
`async def run(report)`; a module runs when one of its figures starts with the prefix, and each figure
is printed as one line `BENCH <name> <value> <unit>`.
"""

from __future__ import annotations

import asyncio
import importlib
import pkgutil
import sys
import time
from pathlib import Path


def main() -> None:
    prefix = sys.argv[1] if len(sys.argv) > 1 else ""
    modules = sorted(info.name for info in pkgutil.iter_modules([str(Path(__file__).parent)]))
    selected = [
        module
        for module in (
            importlib.import_module(f"tests.benchmarks.{name}") for name in modules if name.startswith("bench_")
        )
        if any(figure.startswith(prefix) for figure in module.FIGURES)
    ]
    if not selected:
        raise SystemExit(f"no benchmark reports a figure starting with {prefix!r}")

    def report(name: str, value: float, unit: str) -> None:
        if name not in FIGURES:
            raise ValueError(f"{name} is not declared in its module's FIGURES")
        if name.startswith(prefix):
            print(f"BENCH {name} {value:.6g} {unit}", flush=True)

    for module in selected:
        FIGURES = set(module.FIGURES)
        started = time.perf_counter()
        asyncio.run(module.run(report))
        print(f"# {module.__name__} took {time.perf_counter() - started:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
