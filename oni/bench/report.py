"""The transport benchmark's report: machine facts, the issue's targets judged from one run, a table, JSON."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from typing import Any, Callable

import zmq

from oni.bench.measure import KIB, MIB

#: ONI at 1 KB over ipc may be at most this many times raw pyzmq's p50.
RAW_P50_RATIO_MAX = 1.25
#: Shared memory must be at least this many times faster (p50) than ONI over ipc at 1 MB and 4 MB.
SHM_SPEEDUP_MIN = 3.0
QUICK_BUDGET_S = 60.0

METHOD = {
    "latency": "one-way, recv_ns - pub_ns with time.time_ns() on one host; recv_ns once the application holds the "
    "decoded message and has read its payload's first and last element; paced, deadline-scheduled sends",
    "throughput": "burst as fast as the reliable link accepts; msgs_per_s = received / (last receive - first publish)",
    "lost": "messages the publisher tried to send minus distinct messages received, latency and burst runs together",
    "qos": "reliable everywhere: ONI reliable QoS; raw_zmq the same blocking no-drop XPUB socket as ONI; zenoh "
    "RELIABLE + CongestionControl.BLOCK (express); cyclonedds reliable, KeepAll",
    "producer": "every message, the publisher first writes a fresh payload into the buffer it publishes "
    "(a copy of a fixed source; a loaned slot over shm), before the publish time is taken",
    "oni_payload": "sensor.lidar with a float32 ranges_m tensor of payload_bytes bytes (the size is the tensor's)",
    "shm": "ONI over ipc with a shared-memory ring; tensors >= 64 KiB are written into a loaned slot, smaller ones "
    "travel in the message as over ipc; subscribers read the data and check Message.valid()",
    "peers": "zenoh: peer mode, tcp/127.0.0.1, multicast scouting off; cyclonedds: interface lo, multicast off, "
    "peer 127.0.0.1, private domain, octet[N] payload (transport 'udp')",
}


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """The facts a reader needs to compare runs: CPUs, OS, Python and library versions."""
    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "pyzmq": zmq.pyzmq_version(),
        "libzmq": zmq.zmq_version(),
        "msgpack": _version("msgpack"),
        "numpy": _version("numpy"),
        "eclipse-zenoh": _version("eclipse-zenoh"),
        "cyclonedds": _version("cyclonedds"),
    }


def _p50(results: list[dict[str, Any]], impl: str, transport: str, nbytes: int) -> float | None:
    for row in results:
        if row["impl"] == impl and row["transport"] == transport and row["payload_bytes"] == nbytes:
            return row["p50_us"]
    return None


def _target(
    name: str, description: str, value: float | None, threshold: float, passed: bool | None, detail: str
) -> dict[str, Any]:
    return {
        "name": name,
        "description": description,
        "value": None if value is None else round(value, 3),
        "threshold": threshold,
        "passed": passed,
        "detail": detail,
    }


def _ratio_target(
    name: str,
    description: str,
    num: float | None,
    den: float | None,
    threshold: float,
    passes: Callable[[float], bool],
    what: str,
) -> dict[str, Any]:
    """A target on ``num / den``; not judged (None) when either side was not measured."""
    if num is None or den is None or den <= 0:
        return _target(name, description, None, threshold, None, f"not measured in this run ({what})")
    ratio = num / den
    return _target(name, description, ratio, threshold, passes(ratio), f"{what}: {num:.1f} us / {den:.1f} us")


def evaluate_targets(
    results: list[dict[str, Any]], soak: dict[str, Any], quick: bool, elapsed_s: float
) -> list[dict[str, Any]]:
    """The issue's targets, each with its measured value, threshold and pass (None: not measured)."""
    oni_ipc_1k = _p50(results, "oni", "ipc", KIB)
    targets = [
        _ratio_target(
            "oni_vs_raw_zmq_1kb_ipc",
            "ONI 1 KB over ipc: p50 within 1.25x of raw pyzmq + msgpack (value: ONI p50 / raw p50)",
            oni_ipc_1k,
            _p50(results, "raw_zmq", "ipc", KIB),
            RAW_P50_RATIO_MAX,
            lambda ratio: ratio <= RAW_P50_RATIO_MAX,
            "oni/ipc p50 / raw_zmq/ipc p50",
        )
    ]
    for peer, transport in (("zenoh", "tcp"), ("cyclonedds", "udp")):
        targets.append(
            _ratio_target(
                f"oni_vs_{peer}_1kb",
                f"ONI 1 KB over ipc faster (p50) than {peer} (value: ONI p50 / {peer} p50, must be < 1)",
                oni_ipc_1k,
                _p50(results, peer, transport, KIB),
                1.0,
                lambda ratio: ratio < 1.0,
                f"oni/ipc p50 / {peer}/{transport} p50",
            )
        )
    for nbytes, label in ((MIB, "1mb"), (4 * MIB, "4mb")):
        targets.append(
            _ratio_target(
                f"shm_vs_ipc_{label}",
                f"shared memory at {label.upper()} at least 3x faster (p50) than ONI over ipc "
                "(value: ipc p50 / shm p50)",
                _p50(results, "oni", "ipc", nbytes),
                _p50(results, "oni", "shm", nbytes),
                SHM_SPEEDUP_MIN,
                lambda ratio: ratio >= SHM_SPEEDUP_MIN,
                "oni/ipc p50 / oni/shm p50",
            )
        )
    for key, name, description in (
        ("reliable_1khz_1kb", "reliable_1khz_1kb_60s_lossless", "a reliable topic at 1 kHz x 1 KB for 60 s: no loss"),
        ("fanout_4mb_30hz_3subs", "fanout_4mb_30hz_3subs_lossless", "4 MB at 30 Hz to three subscribers loses nothing"),
    ):
        entry = soak.get(key)
        if entry is None or entry.get("status") != "ok":
            if entry is None:
                why = "not run (soak checks run in a full run)"
            else:
                why = f"{entry.get('status')}: {entry.get('reason', '')}"
            targets.append(_target(name, description, None, 0, None if entry is None else False, why))
            continue
        detail = (
            f"{entry['seconds']:.0f} s; lost {entry['lost']}, gaps {entry['gaps']}, rejects {entry['rejects']}, "
            f"stale {entry['stale']}"
        )
        targets.append(_target(name, description, float(entry["lost"]), 0, bool(entry["passed"]), detail))
    if quick:
        targets.append(
            _target(
                "quick_under_60s",
                "--quick finishes within 60 s (value: elapsed s)",
                elapsed_s,
                QUICK_BUDGET_S,
                elapsed_s <= QUICK_BUDGET_S,
                "wall time of the whole run, process start-up included",
            )
        )
    return targets


def _size(nbytes: int) -> str:
    if nbytes >= MIB and nbytes % MIB == 0:
        return f"{nbytes // MIB} MB"
    if nbytes >= KIB and nbytes % KIB == 0:
        return f"{nbytes // KIB} KB"
    return f"{nbytes} B"


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def format_table(report: dict[str, Any]) -> str:
    """The report for people: results, soak checks and targets."""
    lines = [
        f"{'impl':<11} {'transport':<9} {'payload':>8} {'p50 us':>10} {'p99 us':>10} {'msgs/s':>12} {'lost':>6}  note",
    ]
    for row in report["results"]:
        if row["status"] != "ok":
            note = f"{row['status']}: {row['reason'][:70]}"
        else:
            note = ", ".join(f"{k} {v}" for k, v in row["counters"].items() if v)  # why a message was lost
        lost = "-" if row["lost"] is None else str(row["lost"])
        lines.append(
            f"{row['impl']:<11} {row['transport']:<9} {_size(row['payload_bytes']):>8} {_num(row['p50_us']):>10} "
            f"{_num(row['p99_us']):>10} {_num(row['msgs_per_s'], 0):>12} {lost:>6}  {note}"
        )
    if report["soak"]:
        lines.append("")
        lines.append("soak checks")
        for name, entry in report["soak"].items():
            if entry.get("status") != "ok":
                lines.append(f"  {name:<24} FAIL  {entry.get('status')}: {entry.get('reason', '')}")
                continue
            lines.append(
                f"  {name:<24} {'PASS' if entry['passed'] else 'FAIL'}  {entry['transport']}, "
                f"{entry['subscribers']} sub(s), {entry['attempted']} msgs: lost {entry['lost']}, "
                f"gaps {entry['gaps']}, rejects {entry['rejects']}, stale {entry['stale']}, "
                f"p50 {_num(entry['p50_us'])} us, p99 {_num(entry['p99_us'])} us"
            )
    lines.append("")
    lines.append("targets")
    for target in report["targets"]:
        verdict = {True: "PASS", False: "FAIL", None: "n/a "}[target["passed"]]
        value = "-" if target["value"] is None else f"{target['value']:.3g}"
        threshold = f"(threshold {target['threshold']:g})"
        lines.append(f"  {verdict}  {target['name']:<32} {value:>8} {threshold}  {target['detail']}")
    lines.append(f"\n{report['mode']} run, {report['elapsed_s']:.1f} s, {report['machine']['cpu_count']} CPUs")
    return "\n".join(lines)


