"""Running the transport benchmark: links between processes, latency and burst runs, soak checks.

A *link* is one publisher process and one or more subscriber processes of one implementation over one
transport (:mod:`oni.bench.worker`). For each payload size a link does two runs:

- *latency*: messages paced at a fixed rate (deadline-scheduled), low enough that nothing queues; one-way
  latency per message is ``recv_ns - pub_ns`` (both ``time.time_ns()`` on this host), reported as p50/p99.
- *burst*: messages sent as fast as the reliable link accepts them; ``msgs_per_s`` is the messages received
  divided by the time from the first measured publish to the last receive.

Warm-up messages precede both runs and are not counted. ``lost`` is messages the publisher tried to send
minus distinct measured messages received, over both runs (and every subscriber).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import secrets
import socket
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Callable

import numpy as np

from oni.bench.peers import PEER_MODULES, TRANSPORTS, MissingExtra, PeerSpec, require
from oni.bench.worker import Recording, RunReport, publisher_main, subscriber_main

log = logging.getLogger("oni.bench")

KIB = 1024
MIB = 1024 * 1024
#: Payload sizes of the issue: 64 B, 1 KB, 100 KB, 1 MB, 4 MB.
SIZES: tuple[int, ...] = (64, KIB, 100 * KIB, MIB, 4 * MIB)
_START_TIMEOUT_S = 30.0  # a process to start and import its peer library
_SYNC_TIMEOUT_S = 15.0  # a subscriber to get its first message (connection, discovery)
_PING_PERIOD_S = 0.01
_GRACE_S = 1.0  # how long a subscriber waits, idle, for stragglers after the publisher is done
_CLOSE_TIMEOUT_S = 5.0


class LinkError(RuntimeError):
    """A link failed (a process died, timed out or reported an error); the message says which and why."""


@dataclass(frozen=True)
class SizePlan:
    """How one payload size is measured: ``latency_count`` messages at ``rate_hz``, then a burst."""

    nbytes: int
    latency_count: int
    rate_hz: float
    burst_count: int


@dataclass(frozen=True)
class Plan:
    """What one benchmark run measures.

    ``peer_sizes``: the payload sizes measured for zenoh and cyclonedds (all of ``sizes`` in full mode).
    ``transports``: only these transports (None: each implementation's all). ``soak_s``: duration of the
    reliable 1 kHz x 1 KB soak (s); ``fanout_s``: of 4 MB at 30 Hz to three subscribers; 0 skips a soak.
    ``warmup``: messages sent before each run and not counted.
    """

    quick: bool
    sizes: tuple[SizePlan, ...]
    peer_sizes: tuple[int, ...]
    impls: tuple[str, ...]
    transports: tuple[str, ...] | None
    warmup: int
    soak_s: float
    fanout_s: float


#: Per standard size: (latency messages, latency rate in Hz, burst messages). Rates leave each message's
#: period well above its latency, so the latency run measures latency, not queueing.
_FULL = {
    64: (2000, 1000.0, 20000),
    KIB: (2000, 1000.0, 20000),
    100 * KIB: (1000, 500.0, 2000),
    MIB: (300, 100.0, 300),
    4 * MIB: (100, 30.0, 100),
}
_QUICK = {
    64: (200, 1000.0, 2000),
    KIB: (300, 1000.0, 2000),
    100 * KIB: (100, 500.0, 200),
    MIB: (40, 100.0, 40),
    4 * MIB: (20, 30.0, 20),
}
#: In --quick, the reference peers are measured at the sizes the targets need and one large one.
_QUICK_PEER_SIZES = (KIB, MIB)


def make_plan(
    quick: bool,
    sizes: tuple[int, ...] | None = None,
    messages: int | None = None,
    impls: tuple[str, ...] | None = None,
    soak_s: float | None = None,
    transports: tuple[str, ...] | None = None,
) -> Plan:
    """The plan for ``--quick`` or a full run; the other arguments narrow or override it.

    ``messages`` sets both the latency and the burst message count of every size. Sizes outside the
    issue's five take the pacing of the next larger standard size.
    """
    table = _QUICK if quick else _FULL
    chosen = sizes or SIZES
    unknown = [name for name in (impls or ()) if name not in TRANSPORTS]
    if unknown:
        raise ValueError(f"unknown implementation(s) {unknown}; choose from {list(TRANSPORTS)}")
    known = {t for ts in TRANSPORTS.values() for t in ts}
    if transports is not None and not set(transports) <= known:
        raise ValueError(f"unknown transport(s) {sorted(set(transports) - known)}; choose from {sorted(known)}")
    plans = []
    for nbytes in chosen:
        if nbytes < 1:
            raise ValueError(f"payload sizes are >= 1 byte, got {nbytes}")
        standard = next((s for s in SIZES if s >= nbytes), SIZES[-1])
        count, rate, burst = table[standard]
        if messages is not None:
            count = burst = messages
        plans.append(SizePlan(nbytes, count, rate, burst))
    peer_sizes = tuple(n for n in chosen if n in _QUICK_PEER_SIZES) if quick and sizes is None else tuple(chosen)
    soak = 0.0 if quick else 60.0
    fanout = 0.0 if quick else 10.0
    if soak_s is not None:
        soak = fanout = soak_s
    warmup = 20 if quick else 50
    return Plan(quick, tuple(plans), peer_sizes, impls or tuple(TRANSPORTS), transports, warmup, soak, fanout)


def _free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def endpoint_for(impl: str, transport: str) -> str:
    """A fresh loopback endpoint for one link (ipc socket path, tcp port, or DDS domain id)."""
    if impl == "zenoh":
        return f"tcp/127.0.0.1:{_free_tcp_port()}"
    if impl == "cyclonedds":
        return str(1 + secrets.randbelow(200))  # a private domain, away from other DDS users on this host
    if transport in ("ipc", "shm"):
        return f"ipc://{tempfile.gettempdir()}/oni-bench-{os.getpid()}-{secrets.token_hex(4)}.sock"
    return "tcp://127.0.0.1:*"


@dataclass
class Measurement:
    """One run of a link: the publisher's report and each subscriber's recording."""

    report: RunReport
    recordings: list[Recording]

    def received(self) -> list[int]:
        """Distinct measured messages each subscriber received."""
        return [int(np.unique(rec.seq[self._mask(rec)]).size) for rec in self.recordings]

    def lost(self) -> int:
        """Messages tried minus received, summed over subscribers."""
        return sum(max(self.report.attempted - n, 0) for n in self.received())

    def latencies_us(self) -> np.ndarray:
        """One-way latency (us) of every distinct measured message at every subscriber."""
        parts = []
        for rec in self.recordings:
            mask = self._mask(rec)
            _, first = np.unique(rec.seq[mask], return_index=True)
            parts.append((rec.recv_ns[mask][first] - rec.pub_ns[mask][first]) / 1e3)
        return np.concatenate(parts) if parts else np.zeros(0)

    def msgs_per_s(self) -> float | None:
        """Received messages per second, first measured publish to last receive (slowest subscriber)."""
        rates = []
        for rec in self.recordings:
            mask = self._mask(rec)
            if mask.sum() < 2:
                return None
            span_ns = int(rec.recv_ns[mask].max() - rec.pub_ns[mask].min())
            rates.append(int(np.unique(rec.seq[mask]).size) * 1e9 / max(span_ns, 1))
        return min(rates) if rates else None

    def counters(self) -> dict[str, int]:
        """Receive-side counters summed over subscribers."""
        total: dict[str, int] = {}
        for rec in self.recordings:
            for key, value in rec.counters.items():
                total[key] = total.get(key, 0) + value
        return total

    def _mask(self, rec: Recording) -> np.ndarray:
        first, last = self.report.first_seq, self.report.last_seq
        return (rec.seq >= first) & (rec.seq <= last) if first >= 0 else np.zeros(rec.seq.shape, bool)


def _expect(conn: Connection, kind: str, timeout_s: float, who: str) -> tuple[Any, ...]:
    if not conn.poll(timeout_s):
        raise LinkError(f"{who}: no {kind!r} within {timeout_s:.0f} s")
    try:
        message = conn.recv()
    except EOFError:
        raise LinkError(f"{who}: the process exited before sending {kind!r}") from None
    if message[0] == "error":
        raise LinkError(message[1])
    if message[0] != kind:
        raise LinkError(f"{who}: expected {kind!r}, got {message[0]!r}")
    return message


class Link:
    """A publisher process and ``subscribers`` subscriber processes of one implementation and transport."""

    def __init__(self, spec: PeerSpec, subscribers: int = 1) -> None:
        self.spec = spec
        context = multiprocessing.get_context("spawn")
        self._procs: list[multiprocessing.process.BaseProcess] = []
        self._pub, child = context.Pipe()
        self._start(context, publisher_main, child)
        self._subs: list[Connection] = []
        for _ in range(subscribers):
            parent, child = context.Pipe()
            self._subs.append(parent)
            self._start(context, subscriber_main, child)
        try:
            endpoint = _expect(self._pub, "ready", _START_TIMEOUT_S, "publisher")[1]
            for conn in self._subs:
                conn.send(("connect", endpoint))
            for conn in self._subs:
                _expect(conn, "ready", _START_TIMEOUT_S, "subscriber")
        except LinkError:
            self.close()
            raise

    def _start(self, context: Any, target: Callable[..., None], conn: Connection) -> None:
        process = context.Process(target=target, args=(self.spec, conn), daemon=True)
        process.start()
        conn.close()  # the child holds its end; EOF on ours then means the child is gone
        self._procs.append(process)

    def measure(self, nbytes: int, warmup: int, count: int, rate_hz: float) -> Measurement:
        """One run: prepare both ends, wait until every subscriber receives, then send and record."""
        for conn in (self._pub, *self._subs):
            conn.send(("prepare", nbytes))
        for conn in (self._pub, *self._subs):
            _expect(conn, "ok", _START_TIMEOUT_S, "prepare")
        for conn in self._subs:
            conn.send(("collect",))
        self._pub.send(("ping", _PING_PERIOD_S))
        for conn in self._subs:
            _expect(conn, "synced", _SYNC_TIMEOUT_S, "subscriber (first message)")
        self._pub.send(("run", warmup, count, rate_hz))
        expected_s = (warmup + count) / rate_hz if rate_hz > 0 else (warmup + count) * (nbytes / 20e6 + 1e-4)
        report: RunReport = _expect(self._pub, "done", 3 * expected_s + 30.0, "publisher (run)")[1]
        for conn in self._subs:
            conn.send(("end", report.last_seq, _GRACE_S))
        recordings = [_expect(conn, "result", 3 * _GRACE_S + 30.0, "subscriber (result)")[1] for conn in self._subs]
        return Measurement(report, recordings)

    def close(self) -> None:
        """Ask every process to end; terminate those that do not."""
        for conn in (self._pub, *self._subs):
            try:
                conn.send(("close",))
            except (BrokenPipeError, OSError):
                pass  # already gone
        deadline = time.monotonic() + _CLOSE_TIMEOUT_S
        for process in self._procs:
            process.join(max(deadline - time.monotonic(), 0.0))
            if process.is_alive():
                process.terminate()
                process.join(1.0)
        for conn in (self._pub, *self._subs):
            conn.close()

    def __enter__(self) -> "Link":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _stats(values_us: np.ndarray) -> tuple[float | None, float | None]:
    if values_us.size == 0:
        return None, None
    return round(float(np.percentile(values_us, 50)), 1), round(float(np.percentile(values_us, 99)), 1)


def _row(impl: str, transport: str, nbytes: int, status: str = "ok", reason: str = "") -> dict[str, Any]:
    return {
        "impl": impl,
        "transport": transport,
        "payload_bytes": nbytes,
        "p50_us": None,
        "p99_us": None,
        "msgs_per_s": None,
        "lost": None,
        "status": status,
        "reason": reason,
    }


def measure_size(link: Link, size: SizePlan, warmup: int) -> dict[str, Any]:
    """The result row of one payload size on one link: a latency run, then a burst run."""
    spec = link.spec
    latency = link.measure(size.nbytes, warmup, size.latency_count, size.rate_hz)
    burst = link.measure(size.nbytes, warmup, size.burst_count, 0.0)
    p50, p99 = _stats(latency.latencies_us())
    rate = burst.msgs_per_s()
    before = latency.counters()
    counters = {key: before.get(key, 0) + value for key, value in burst.counters().items()}
    row = _row(spec.impl, spec.transport, size.nbytes)
    row.update(
        p50_us=p50,
        p99_us=p99,
        msgs_per_s=round(rate, 1) if rate is not None else None,
        lost=latency.lost() + burst.lost(),
        latency_run={
            "messages": size.latency_count,
            "rate_hz": size.rate_hz,
            "received": latency.received()[0],
            "lost": latency.lost(),
            "late_sends": latency.report.late,
        },
        burst_run={
            "messages": size.burst_count,
            "received": burst.received()[0],
            "lost": burst.lost(),
            "publisher_msgs_per_s": round(burst.report.sent / max(burst.report.elapsed_s, 1e-9), 1),
        },
        counters=counters,
    )
    return row


def measure_link(impl: str, transport: str, sizes: tuple[SizePlan, ...], warmup: int) -> list[dict[str, Any]]:
    """Rows for every size on one implementation and transport; a failure marks the remaining sizes."""
    if impl in PEER_MODULES:
        try:
            require(PEER_MODULES[impl])
        except MissingExtra as exc:
            log.warning("%s: skipped: %s", impl, exc)
            return [_row(impl, transport, s.nbytes, "skipped", str(exc)) for s in sizes]
    spec = PeerSpec(impl, transport, endpoint_for(impl, transport), max(s.nbytes for s in sizes))
    rows: list[dict[str, Any]] = []
    try:
        with Link(spec) as link:
            for size in sizes:
                log.info("%s/%s: %d B", impl, transport, size.nbytes)
                rows.append(measure_size(link, size, warmup))
    except LinkError as exc:
        log.error("%s/%s failed: %s", impl, transport, exc)
        rows.extend(_row(impl, transport, s.nbytes, "failed", str(exc)) for s in sizes[len(rows):])
    return rows


def run_matrix(plan: Plan) -> list[dict[str, Any]]:
    """Every implementation on each of its transports at the plan's sizes, one link at a time."""
    rows: list[dict[str, Any]] = []
    for impl in plan.impls:
        sizes = plan.sizes if impl not in PEER_MODULES else tuple(s for s in plan.sizes if s.nbytes in plan.peer_sizes)
        if not sizes:
            continue
        for transport in TRANSPORTS[impl]:
            if plan.transports is not None and transport not in plan.transports:
                continue
            rows.extend(measure_link(impl, transport, sizes, plan.warmup))
    return rows


def soak_reliable(seconds: float, rate_hz: float = 1000.0, nbytes: int = KIB) -> dict[str, Any]:
    """A ``reliable`` ONI topic over ipc at ``rate_hz`` x ``nbytes`` for ``seconds``: passes if nothing is lost.

    Loss is judged on the subscriber's own accounting too: seq gaps and rejected messages must be 0.
    """
    spec = PeerSpec("oni", "ipc", endpoint_for("oni", "ipc"), nbytes)
    count = int(seconds * rate_hz)
    result: dict[str, Any] = {
        "impl": "oni",
        "transport": "ipc",
        "qos": "reliable",
        "payload_bytes": nbytes,
        "rate_hz": rate_hz,
        "seconds": seconds,
        "subscribers": 1,
    }
    return _soak(spec, 1, nbytes, count, rate_hz, result)


def soak_fanout(seconds: float, subscribers: int = 3, rate_hz: float = 30.0, nbytes: int = 4 * MIB) -> dict[str, Any]:
    """4 MB scans at 30 Hz over ONI shared memory (``shm``) to three subscriber processes: passes if none
    loses a message and none finds its shared-memory view overwritten (stale)."""
    spec = PeerSpec("oni", "shm", endpoint_for("oni", "shm"), nbytes)
    result: dict[str, Any] = {
        "impl": "oni",
        "transport": "shm",
        "qos": "reliable",
        "payload_bytes": nbytes,
        "rate_hz": rate_hz,
        "seconds": seconds,
        "subscribers": subscribers,
    }
    return _soak(spec, subscribers, nbytes, int(seconds * rate_hz), rate_hz, result)


def _soak(
    spec: PeerSpec, subscribers: int, nbytes: int, count: int, rate_hz: float, result: dict[str, Any]
) -> dict[str, Any]:
    """One paced run of ``count`` messages on a fresh link; fills ``result`` with what was lost and why."""
    what = f"{spec.impl}/{spec.transport} {nbytes} B at {rate_hz:g} Hz x {count} to {subscribers} subscriber(s)"
    log.info("soak: %s", what)
    try:
        with Link(spec, subscribers) as link:
            run = link.measure(nbytes, 10, count, rate_hz)
    except LinkError as exc:
        result.update(status="failed", reason=str(exc), passed=False)
        return result
    p50, p99 = _stats(run.latencies_us())
    counters = run.counters()
    lost = run.lost()
    result.update(
        status="ok",
        sent=run.report.sent,
        attempted=run.report.attempted,
        received_per_subscriber=run.received(),
        lost=lost,
        gaps=counters.get("gaps", 0),
        rejects=counters.get("rejects", 0),
        stale=counters.get("stale", 0),
        late_sends=run.report.late,
        p50_us=p50,
        p99_us=p99,
        passed=lost == 0 and not any(counters.get(k, 0) for k in ("gaps", "rejects", "stale")),
    )
    return result
