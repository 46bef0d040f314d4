"""``oniwm``: the one command-line entry point.

This module is the composition root: the only place that names every package's commands. Each command
lives in a module with ``register(subparsers)``; only the module of the command being run is imported
(all of them for ``--help``), and modules keep heavy imports (torch, mujoco) inside their command
functions, so ``oniwm registry list`` never loads torch. tests/test_cli.py walks every entry.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

#: Top-level command -> module that registers it, in help order.
COMMANDS: dict[str, str] = {
    "demo": "oni.cli.demo",
    "registry": "oni.cli.registry",
    "keys": "oni.cli.keys",
    "record": "oni.cli.record",
    "replay": "oni.cli.record",
    "collect": "train.cli",
    "train": "train.train",
    "sim": "sim.cli",
    "eval": "train.evaluate",
    "eval-nav": "train.eval_nav",
    "export": "worldmodel.export.cli",
    "node": "robots.node",
    "run": "train.run_job",
    "import-bag": "train.rosbag",
    "export-bag": "train.rosbag",
    "ros2-bridge": "robots.ros2.dds_bridge",
    "view-log": "robots.foxglove_view",
}
#: ``oniwm bench NAME`` -> module that registers it.
BENCHES: dict[str, str] = {"transport": "oni.cli.bench_transport", "sim": "sim.bench", "model": "train.bench_model",
                           "latency": "worldmodel.bench_latency"}


def _modules(table: dict[str, str], wanted: str | None) -> list[str]:
    names = [table[wanted]] if wanted in table else list(table.values())
    return list(dict.fromkeys(names))


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The parser, with only the modules that ``argv`` needs registered (all when it names none)."""
    words = [a for a in argv if not a.startswith("-")]
    command = words[0] if words else None
    parser = argparse.ArgumentParser(prog="oniwm", description="oni-worldmodel: real-time world models over ONI.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    if command != "bench":
        for name in _modules(COMMANDS, command):
            importlib.import_module(name).register(sub)
    if command in (None, "bench") or command not in COMMANDS:
        bench = sub.add_parser("bench", help="benchmarks: JSON for machines plus a table for people")
        bench_sub = bench.add_subparsers(dest="bench", required=True, metavar="BENCH")
        for name in _modules(BENCHES, words[1] if len(words) > 1 and command == "bench" else None):
            importlib.import_module(name).register(bench_sub)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    sys.exit(args.func(args) or 0)


if __name__ == "__main__":
    main()
