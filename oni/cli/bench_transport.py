"""``oniwm bench transport``: one-way latency and throughput of ONI against raw pyzmq, zenoh and cyclonedds.

Payloads of 64 B, 1 KB, 100 KB, 1 MB and 4 MB between two processes; ONI over ipc, tcp and shared memory,
raw pyzmq + msgpack over ipc and tcp, and the reference peers on loopback. Writes a JSON report (``results``,
``soak``, ``targets``, ``machine``) and prints a table. ``--quick`` finishes within 60 s and skips the soak
checks; a full run adds them (about 4 minutes). How things are measured: :mod:`oni.bench.measure`.

Example::

    oniwm bench transport --json bench-transport.json --quick
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import logging
import sys
import time

log = logging.getLogger("oni.bench")


def _csv_ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated byte counts, got {text!r}") from None


def _csv_names(text: str) -> tuple[str, ...]:
    return tuple(part for part in text.split(",") if part)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``transport`` to ``oniwm bench``."""
    parser = subparsers.add_parser(
        "transport",
        help="ONI transport latency/throughput vs raw pyzmq, zenoh and cyclonedds",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--json", required=True, metavar="FILE", help="write the JSON report here (atomically)")
    parser.add_argument("--quick", action="store_true", help="fewer messages, no soak checks; finishes within 60 s")
    # Narrowing knobs for tests and investigations; a run with them is not a complete report.
    parser.add_argument("--sizes", type=_csv_ints, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--messages", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--impls", type=_csv_names, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--transports", type=_csv_names, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--soak-seconds", type=float, default=None, help=argparse.SUPPRESS)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; 0 when every link ran (targets are reported, not enforced), 1 when one failed."""
    from oni.bench import measure, report
    from oni.files import write_json

    try:
        plan = measure.make_plan(args.quick, args.sizes, args.messages, args.impls, args.soak_seconds, args.transports)
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    started = time.monotonic()
    started_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    results = measure.run_matrix(plan)
    soak = {}
    if plan.soak_s > 0:
        soak["reliable_1khz_1kb"] = measure.soak_reliable(plan.soak_s)
    if plan.fanout_s > 0:
        soak["fanout_4mb_30hz_3subs"] = measure.soak_fanout(plan.fanout_s)
    elapsed = time.monotonic() - started
    document = {
        "bench": "transport",
        "mode": "quick" if args.quick else "full",
        "started_at": started_at,
        "elapsed_s": round(elapsed, 2),
        "machine": report.machine_info(),
        "method": report.METHOD,
        "plan": {
            "sizes": [dataclasses.asdict(size) for size in plan.sizes],
            "peer_sizes": list(plan.peer_sizes),
            "impls": list(plan.impls),
            "warmup": plan.warmup,
        },
        "results": results,
        "soak": soak,
        "targets": report.evaluate_targets(results, soak, args.quick, elapsed),
    }
    write_json(args.json, document)
    sys.stdout.write(report.format_table(document) + "\n")
    failed = [r for r in results if r["status"] == "failed"] + [s for s in soak.values() if s.get("status") != "ok"]
    return 1 if failed else 0
