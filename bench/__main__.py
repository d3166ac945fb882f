"""`make bench`: run every benchmark module in bench/ and write bench/results.md.

Each bench_*.py module's ``main(argv)`` returns its tables (bench/common.py): every
figure beside its aim from issue 23, "misses its aim" where it does. results.md is what
the README's benchmark tables are copied from.

    python -m bench                      full sizes (minutes; a quiet machine, please)
    python -m bench --quick              small sizes: checks the code runs, measures nothing
    python -m bench --only publisher,query --out /tmp/results.md
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from bench.common import CPUS, Table

HERE = Path(__file__).parent


def modules() -> list[str]:
    return sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))


def machine() -> str:
    load = "n/a"
    if hasattr(os, "getloadavg"):
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=HERE,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return (
        f"{platform.machine()}, {CPUS} CPUs, Python {platform.python_version()}, "
        f"load average {load}" + (f", commit {commit}" if commit else "")
    )


def render(
    results: dict[str, list[Table]], quick: bool, seconds: dict[str, float], failed: list[str]
) -> str:
    head = [
        "# Benchmark results",
        "",
        "Written by `make bench` (`python -m bench"
        + (" --quick" if quick else "")
        + "`); copy the tables into README.md's Benchmarks section.",
        "",
        f"Machine: {machine()} at the start.",
    ]
    if quick:
        head += [
            "",
            "**Quick mode: tiny sizes on a machine doing other work. These figures check that "
            "the benchmarks run; they measure nothing.**",
        ]
    misses = [
        f"- {table.title.split(':')[0]}: {miss}"
        for name, tables in results.items()
        for table in tables
        for miss in table.misses
    ]
    head += ["", f"Aims of issue 23 missed in this run: {len(misses)}", *misses]
    body = []
    for name, tables in results.items():
        body += ["", f"## {name} (`python -m bench.bench_{name}`, {seconds[name]:.0f} s)", ""]
        if name in failed:
            body += ["**This benchmark failed in this run; its error is on the console.**", ""]
        body += [t.markdown() for t in tables]
    return "\n".join(head + body).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--only", default="", help=f"comma-separated, of {', '.join(modules())}")
    parser.add_argument("--out", type=Path, default=HERE / "results.md")
    args = parser.parse_args(argv)
    names = modules()
    if args.only:
        wanted = [n.strip().removeprefix("bench_") for n in args.only.split(",") if n.strip()]
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            parser.error(f"unknown benchmark(s) {unknown}; there are {names}")
        names = [n for n in names if n in wanted]
    results: dict[str, list[Table]] = {}
    seconds: dict[str, float] = {}
    failed: list[str] = []
    for name in names:
        module: Any = importlib.import_module(f"bench.bench_{name}")
        print(f"== bench_{name}" + (" (quick)" if args.quick else ""), flush=True)
        started = time.perf_counter()
        try:
            results[name] = module.main(list(module.QUICK) if args.quick else [])
        except Exception as exc:  # one broken bench must not hide the others' tables
            failed.append(name)
            print(f"bench_{name} failed: {exc!r}", file=sys.stderr)
            traceback.print_exc()
            results[name] = []
        seconds[name] = time.perf_counter() - started
        print(f"== bench_{name}: {seconds[name]:.1f} s", flush=True)
    args.out.write_text(render(results, args.quick, seconds, failed))
    print(f"wrote {args.out}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
