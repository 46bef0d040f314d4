"""The two ends of a measured link, each run in its own process, driven by the parent over a pipe.

Protocol (parent -> worker, then the worker's reply):

- publisher: starts, replies ``("ready", endpoint)``. ``("prepare", nbytes)`` -> ``("ok",)``.
  ``("ping", period_s)``: sends a message every ``period_s`` until the next command arrives (lets a
  subscriber connect and discover before anything is measured; no reply). ``("run", warmup, count,
  rate_hz)``: sends ``warmup`` then ``count`` messages, deadline-scheduled at ``rate_hz`` (message k at
  ``start + k / rate_hz``; 0: as fast as possible) -> ``("done", RunReport)``.
- subscriber: ``("connect", endpoint)`` -> ``("ready",)``. ``("prepare", nbytes)`` -> ``("ok",)``.
  ``("collect",)``: records every message (seq, pub_ns, recv_ns), replies ``("synced",)`` at the first one,
  and stops after ``("end", last_seq, grace_s)`` once it has seen ``last_seq`` or nothing came for
  ``grace_s`` -> ``("result", Recording)``.
- both: ``("close",)`` ends the process. Any failure is reported as ``("error", text)`` and ends it.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

import numpy as np

from oni.bench.peers import PeerSpec, Receiver, Sender, open_receiver, open_sender

#: The subscriber checks its pipe after this many messages in a row (and whenever a receive times out).
_CHECK_EVERY = 32
_RECV_TIMEOUT_S = 0.02


@dataclass(frozen=True)
class RunReport:
    """What a publisher did in one run. Seqs are those of the measured (post-warm-up) messages."""

    first_seq: int  # -1 when no measured message could be sent
    last_seq: int
    attempted: int  # measured messages the publisher tried to send
    sent: int  # ... and that were queued
    late: int  # sends more than one period behind their scheduled time
    elapsed_s: float


@dataclass
class Recording:
    """What one subscriber received in one run: parallel int64 arrays, and counter deltas for the run."""

    seq: np.ndarray
    pub_ns: np.ndarray
    recv_ns: np.ndarray
    counters: dict[str, int] = field(default_factory=dict)


def _log_setup(role: str) -> None:
    """Warnings of a worker (ONI's reject counters, peers' errors) go to stderr, tagged with its role."""
    log_format = f"%(asctime)s %(levelname)s %(name)s [bench {role}]: %(message)s"
    logging.basicConfig(level=logging.WARNING, format=log_format, stream=sys.stderr)


def publisher_main(spec: PeerSpec, conn: Connection) -> None:
    """Process entry point of the publishing end."""
    _log_setup("publisher")
    sender: Sender | None = None
    try:
        sender = open_sender(spec)
        conn.send(("ready", sender.endpoint))
        while True:
            command = conn.recv()
            if command[0] == "prepare":
                sender.prepare(command[1])
                conn.send(("ok",))
            elif command[0] == "ping":
                while not conn.poll(command[1]):
                    sender.send()
            elif command[0] == "run":
                conn.send(("done", run(sender, *command[1:])))
            elif command[0] == "close":
                return
            else:
                raise ValueError(f"unknown publisher command {command[0]!r}")
    except Exception as exc:  # report any failure to the parent, which records it for this link
        conn.send(("error", f"publisher: {type(exc).__name__}: {exc}"))
    finally:
        if sender is not None:
            sender.close()


def run(sender: Sender, warmup: int, count: int, rate_hz: float) -> RunReport:
    """Send ``warmup`` + ``count`` messages, message k at ``start + k / rate_hz`` (never sleep(period))."""
    period_ns = int(1e9 / rate_hz) if rate_hz > 0 else 0
    first_seq = last_seq = -1
    sent = late = 0
    start = time.perf_counter_ns()
    measured_start = start
    for k in range(warmup + count):
        if period_ns:
            ahead = start + k * period_ns - time.perf_counter_ns()
            if ahead > 0:
                time.sleep(ahead / 1e9)
            elif ahead < -period_ns:
                late += 1
        if k == warmup:
            measured_start = time.perf_counter_ns()
        seq = sender.send()
        if k >= warmup and seq is not None:
            sent += 1
            last_seq = seq
            if first_seq < 0:
                first_seq = seq
    return RunReport(first_seq, last_seq, count, sent, late, (time.perf_counter_ns() - measured_start) / 1e9)


def subscriber_main(spec: PeerSpec, conn: Connection) -> None:
    """Process entry point of a subscribing end."""
    _log_setup("subscriber")
    receiver: Receiver | None = None
    try:
        while True:
            command = conn.recv()
            if command[0] == "connect":
                receiver = open_receiver(spec, command[1])
                conn.send(("ready",))
            elif command[0] == "prepare":
                receiver.prepare(command[1])
                conn.send(("ok",))
            elif command[0] == "collect":
                conn.send(("result", collect(receiver, conn)))
            elif command[0] == "close":
                return
            else:
                raise ValueError(f"unknown subscriber command {command[0]!r}")
    except Exception as exc:  # report any failure to the parent, which records it for this link
        conn.send(("error", f"subscriber: {type(exc).__name__}: {exc}"))
    finally:
        if receiver is not None:
            receiver.close()


def collect(receiver: Receiver, conn: Connection) -> Recording:
    """Record messages until the parent's ``end`` command and the last seq (or an idle ``grace_s``)."""
    before = receiver.counters()
    seqs: list[int] = []
    pubs: list[int] = []
    recvs: list[int] = []
    synced = False
    last_seq: int | None = None
    highest = -1
    idle_until = 0.0
    grace_s = 0.0
    streak = 0
    while True:
        sample = receiver.recv(_RECV_TIMEOUT_S)
        if sample is not None:
            seqs.append(sample[0])
            pubs.append(sample[1])
            recvs.append(sample[2])
            highest = max(highest, sample[0])
            if not synced:
                conn.send(("synced",))
                synced = True
            if last_seq is not None:
                if highest >= last_seq:
                    break
                idle_until = time.monotonic() + grace_s
            streak += 1
            if streak < _CHECK_EVERY:
                continue
        streak = 0
        if last_seq is None and conn.poll():
            command = conn.recv()
            if command[0] != "end":
                raise ValueError(f"subscriber expected 'end' while collecting, got {command[0]!r}")
            last_seq, grace_s = command[1], command[2]
            idle_until = time.monotonic() + grace_s
            if highest >= last_seq:
                break
        elif last_seq is not None and time.monotonic() > idle_until:
            break
    after = receiver.counters()
    return Recording(
        np.asarray(seqs, dtype=np.int64),
        np.asarray(pubs, dtype=np.int64),
        np.asarray(recvs, dtype=np.int64),
        {key: after[key] - before.get(key, 0) for key in after},
    )
