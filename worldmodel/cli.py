"""``oniwm``: the one command-line entry point.

This module is the composition root: it is the only place that names every package's commands. Each entry
is a module with ``register(subparsers)``; modules keep heavy imports (torch, mujoco) inside their command
functions, so ``oniwm registry list`` never loads torch. tests/test_cli.py walks every entry.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

#: Top-level subcommand modules, in help order.
COMMAND_MODULES: tuple[str, ...] = (
    "oni.cli.demo",
    "oni.cli.registry",
    "oni.cli.keys",
    "oni.cli.record",
)
#: ``oniwm bench <name>`` modules.
BENCH_MODULES: tuple[str, ...] = ("oni.cli.bench_transport",)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="oniwm", description="oni-worldmodel: real-time world models over ONI.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    bench = sub.add_parser("bench", help="benchmarks (JSON plus a table)")
    bench_sub = bench.add_subparsers(dest="bench", required=True, metavar="BENCH")
    for name in BENCH_MODULES:
        importlib.import_module(name).register(bench_sub)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    code = args.func(args)
    sys.exit(code or 0)


if __name__ == "__main__":
    main()
