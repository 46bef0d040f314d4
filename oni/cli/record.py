"""``oniwm record`` and ``oniwm replay``: ONI topics to an MCAP log, and a log back onto the bus.

::

    oniwm record --endpoint tcp://robot:5555 --topics sensor.lidar sensor.imu --out run1.mcap [--duration S]
    oniwm replay run1.mcap --endpoint tcp://127.0.0.1:5555 [--topics ...] [--rate 1.0 | --fast] [--loop]

The recorder writes until SIGINT/SIGTERM (closing the log cleanly) or ``--duration``; a recorder that is
killed leaves a log readable up to its last chunk (see :class:`oni.mcap_log.LogWriter`). ``TOPIC=TYPE``
records a topic whose ONI type is not its name. Recording the privileged ``actuator.cmd`` needs CURVE keys:
``--keys FILE`` plus either ``--server-key KEY`` (connect to a secured publisher) or ``--bind E --allow
KEYS`` (publishers connect to the recorder, which admits only those keys).

Replay publishes with the log's topics and QoS presets by topic family (``sensor.*``: sensor,
``actuator.*``: control, others: diagnostic; ``--qos`` forces one), at recorded timing or ``--fast``.
Replayed messages keep their ``stamp_ns``, ``frame_id`` and ``trace_id``; ``seq``, ``pub_ns`` and
``source`` are the replaying publisher's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TextIO

import zmq

from oni import qos
from oni.cli import on_stop_signals
from oni.errors import BackpressureTimeout, OniError, SecurityError
from oni.mcap_log import (
    DEFAULT_CHUNK_BYTES,
    DEFAULT_FLUSH_MS,
    LogReader,
    LogWriter,
    paced,
)
from oni.message import now_ns
from oni.security import (
    ClientSecurity,
    KeyPair,
    Security,
    ServerSecurity,
    load_public_keys,
)
from oni.transport import Publisher, Subscriber, TopicSpec

#: After the last replayed message, time for ZeroMQ's I/O thread to send what is queued: a publisher
#: closes with linger 0, which drops anything still in its queue.
_DRAIN_S = 0.5


class _UsageError(Exception):
    """A command line that cannot work; the message says what to change."""


def register(sub: argparse._SubParsersAction) -> None:
    rec = sub.add_parser("record", help="record ONI topics to an MCAP log")
    rec.add_argument("--endpoint", action="append", default=[], metavar="E", help="connect to a publisher (repeatable)")
    rec.add_argument(
        "--bind", action="append", default=[], metavar="E", help="listen for publishers that connect (repeatable)"
    )
    rec.add_argument("--topics", nargs="+", required=True, metavar="TOPIC[=TYPE]", help="topics to record")
    rec.add_argument("--out", required=True, metavar="FILE.mcap", help="log to write (refused if it exists)")
    rec.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    rec.add_argument("--duration", type=float, default=None, metavar="S", help="stop after S seconds")
    rec.add_argument("--qos", default="sensor", choices=sorted(qos.PRESETS), help="subscription QoS (default sensor)")
    rec.add_argument("--compression", default="zstd", choices=("zstd", "lz4", "none"), help="chunk compression")
    rec.add_argument("--chunk-kib", type=int, default=DEFAULT_CHUNK_BYTES // 1024, help="chunk size bound (KiB)")
    rec.add_argument("--flush-ms", type=float, default=DEFAULT_FLUSH_MS, help="longest a message waits unwritten (ms)")
    _add_security_args(rec, "CURVE security (needed to record actuator.cmd)")
    rec.set_defaults(func=run_record)

    rep = sub.add_parser("replay", help="publish an MCAP log over ONI")
    rep.add_argument("log", metavar="LOG", help="the .mcap log")
    rep.add_argument("--endpoint", default="tcp://127.0.0.1:*", metavar="E", help="endpoint (default: a free port)")
    rep.add_argument("--connect", action="store_true", help="connect to --endpoint (a subscriber binds) instead of binding")
    rep.add_argument("--topics", nargs="+", default=None, metavar="TOPIC", help="replay only these topics")
    pace = rep.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=float, default=1.0, help="speed factor on recorded timing (default 1.0)")
    pace.add_argument("--fast", action="store_true", help="as fast as possible")
    rep.add_argument("--loop", action="store_true", help="start over at the end, until interrupted")
    rep.add_argument("--qos", default=None, choices=sorted(qos.PRESETS), help="one QoS for every topic (e.g. record)")
    rep.add_argument("--source", default="oniwm-replay", help="publisher name in the replayed headers")
    rep.add_argument(
        "--wait", type=float, default=5.0, metavar="S",
        help="wait up to S seconds for a subscriber to join before starting (default 5; 0: start at once)"
    )
    _add_security_args(rep, "CURVE security (for subscribers that require it)")
    rep.set_defaults(func=run_replay)


def _add_security_args(parser: argparse.ArgumentParser, title: str) -> None:
    group = parser.add_argument_group(title)
    group.add_argument("--keys", metavar="FILE", help="this side's key pair (NAME.key_secret, see `oniwm keys`)")
    group.add_argument("--server-key", metavar="KEY|FILE", help="be a CURVE client of the peer holding this public key")
    group.add_argument(
        "--allow", nargs="+", metavar="KEY|FILE|DIR", help="be a CURVE server admitting only these public keys"
    )


def _security(args: argparse.Namespace) -> Security | None:
    if args.keys is None:
        if args.server_key or args.allow:
            raise _UsageError("--server-key and --allow need --keys FILE (this side's key pair)")
        return None
    keys = KeyPair.load(args.keys)
    if args.server_key:
        if args.allow:
            raise _UsageError("--server-key (be a client) and --allow (be a server) exclude each other")
        server = load_public_keys([args.server_key])
        if len(server) != 1:
            raise _UsageError(f"--server-key {args.server_key!r} must name exactly one public key, found {len(server)}")
        return ClientSecurity(keys, next(iter(server)))
    return ServerSecurity(keys, load_public_keys(args.allow) if args.allow else None)


def _topics(specs: list[str]) -> dict[str, str | None]:
    """``TOPIC`` or ``TOPIC=TYPE`` -> {topic: type or None (the topic's own name)}."""
    out: dict[str, str | None] = {}
    for spec in specs:
        topic, _, schema = spec.partition("=")
        if not topic:
            raise _UsageError(f"bad topic {spec!r}: expected TOPIC or TOPIC=TYPE")
        out[topic] = schema or None
    return out


def default_qos(topic: str) -> str:
    """The QoS preset replay uses for ``topic``: by its family (``sensor.*``, ``actuator.*``, others)."""
    if topic.startswith("sensor."):
        return "sensor"
    if topic.startswith("actuator."):
        return "control"
    return "diagnostic"


class _Stop:
    """Set by SIGINT or SIGTERM (instead of KeyboardInterrupt), so a command can close its log cleanly.

    The handler only sets a flag: it may run while the main thread holds any lock, so it must take none.
    """

    def __init__(self) -> None:
        self.requested = False

    def sleep(self, seconds: float) -> None:
        """Sleep ``seconds``, returning early (within 50 ms) once a stop is requested."""
        end = time.monotonic() + seconds
        while not self.requested and (left := end - time.monotonic()) > 0:
            time.sleep(min(left, 0.05))


@contextmanager
def _stop_on_signals() -> Iterator[_Stop]:
    stop = _Stop()
    with on_stop_signals(lambda: setattr(stop, "requested", True)):
        yield stop


class _StatusLine:
    """A live one-line status on stderr: rewritten in place at 2 Hz on a terminal, a line every 5 s otherwise."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stderr
        self._tty = self._stream.isatty()
        self._interval_s = 0.5 if self._tty else 5.0
        self._next = time.monotonic() + self._interval_s
        self._shown = False

    def update(self, text: Callable[[], str]) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self._interval_s
        self._stream.write(f"\r{text()}\x1b[K" if self._tty else f"{text()}\n")
        self._stream.flush()
        self._shown = True

    def end(self) -> None:
        if self._tty and self._shown:
            self._stream.write("\n")


def _table(header: list[str], rows: list[list[Any]]) -> str:
    cells = [header] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in cells)
    return "\n".join(lines)


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")


def run_record(args: argparse.Namespace) -> int:
    """``oniwm record``: 0 on a clean stop, 1 if a security handshake failed, 2 for a bad command line."""
    try:
        if not args.endpoint and not args.bind:
            raise _UsageError("give at least one --endpoint (connect) or --bind (listen)")
        topics = _topics(args.topics)
        security = _security(args)
    except (_UsageError, SecurityError) as exc:
        _err(f"oniwm record: {exc}")
        return 2
    sub = Subscriber(security=security)
    try:
        for topic, schema in topics.items():
            sub.subscribe(topic, args.qos, schema)
    except SecurityError as exc:
        sub.close()
        _err(
            f"oniwm record: {exc}\n  to record it, give --keys FILE and either --server-key KEY (connect to a secured "
            "publisher) or --bind E --allow KEYS (publishers connect to this recorder)"
        )
        return 2
    try:
        writer = LogWriter(
            args.out,
            chunk_bytes=args.chunk_kib * 1024,
            flush_ms=args.flush_ms,
            compression=args.compression,
            validate=False,  # the subscriber validated every message it delivers
            overwrite=args.overwrite,
        )
    except FileExistsError:
        sub.close()
        _err(f"oniwm record: {args.out} exists; pass --overwrite to replace it")
        return 2
    try:
        try:
            for endpoint in args.bind:
                _err(f"recording: listening on {sub.bind(endpoint)}")
            for endpoint in args.endpoint:
                sub.connect(endpoint)
        except zmq.ZMQError as exc:
            _err(f"oniwm record: {endpoint}: {exc}")
            return 2
        return _record_loop(args, sub, writer, list(topics))
    finally:
        writer.close()
        sub.close()


def _record_loop(args: argparse.Namespace, sub: Subscriber, writer: LogWriter, topics: list[str]) -> int:
    started_ns, start = now_ns(), time.monotonic()
    end = None if args.duration is None else start + args.duration
    status = _StatusLine()
    code = 0

    def line() -> str:
        counts = "  ".join(f"{t} {writer.stats.written.get(t, 0)}" for t in topics)
        rejected = sum(s.rejected for s in sub.stats.values()) + sum(writer.stats.rejected.values())
        return (
            f"recording {time.monotonic() - start:6.1f} s  {counts}  rejected {rejected}  stale {writer.stats.stale}  "
            f"{writer.stats.data_bytes / 2**20:.1f} MiB"
        )

    with _stop_on_signals() as stop:
        while not stop.requested:
            left_ms = 100.0 if end is None else min(100.0, (end - time.monotonic()) * 1000.0)
            if left_ms <= 0:
                break
            try:
                msg = sub.recv(timeout_ms=left_ms)
            except SecurityError as exc:
                _err(f"oniwm record: {exc}")
                code = 1
                break
            if msg is not None:
                writer.write(msg)
            writer.flush_if_due()
            status.update(line)
    status.end()
    per_topic = {
        t: {
            "written": writer.stats.written.get(t, 0),
            "received": s.received,
            "rejects": dict(s.rejects),
            "gaps": s.gaps,
            "expired": s.expired,
        }
        for t, s in sub.stats.items()
    }
    writer.add_metadata(
        "oni.record",
        {
            "started_ns": str(started_ns),
            "stopped_ns": str(now_ns()),
            "endpoints": json.dumps(sub.endpoints),
            "qos": args.qos,
            "stats": json.dumps(per_topic),
            "stale_skipped": str(writer.stats.stale),
        },
    )
    rows = [
        [t, v["written"], sum(v["rejects"].values()), v["gaps"], v["expired"]] for t, v in per_topic.items()
    ]
    _err(_table(["topic", "written", "rejected", "gaps", "expired"], rows))
    _err(
        f"recorded {writer.stats.total} messages in {time.monotonic() - start:.1f} s to {args.out} "
        f"({writer.stats.data_bytes / 2**20:.2f} MiB before compression); stale shared-memory skipped: "
        f"{writer.stats.stale}"
    )
    for t, s in sub.stats.items():
        if s.last_reject:
            _err(f"  last reject on {t}: {s.last_reject}")
    return code


def run_replay(args: argparse.Namespace) -> int:
    """``oniwm replay``: 0 when every message was handed to the transport, 1 if some reliable ones could not
    be queued, 2 for a bad command line or log."""
    reader = LogReader(args.log)
    try:
        info = reader.info()
        channels: dict[str, str] = {}
        for channel in info.channels:
            if not channel.is_oni:
                continue
            if channels.setdefault(channel.topic, channel.schema) != channel.schema:
                raise _UsageError(
                    f"topic {channel.topic} carries two types ({channels[channel.topic]}, {channel.schema})"
                )
        if not channels:
            raise _UsageError(f"{args.log} holds no ONI messages")
        topics = args.topics or sorted(channels)
        missing = sorted(set(topics) - set(channels))
        if missing:
            raise _UsageError(f"topics {missing} are not in the log; it has {sorted(channels)}")
        if not args.fast and not args.rate > 0:
            raise _UsageError(f"--rate must be > 0, got {args.rate}")
        security = _security(args)
    except (_UsageError, OniError, OSError) as exc:
        _err(f"oniwm replay: {exc}")
        return 2
    specs = {t: TopicSpec(qos.preset(args.qos or default_qos(t)), channels[t]) for t in topics}
    try:
        pub = Publisher(args.endpoint, specs, source=args.source, bind=not args.connect, security=security)
    except zmq.ZMQError as exc:
        _err(f"oniwm replay: {args.endpoint}: {exc}")
        return 2
    _err(
        f"replay: {info.message_count} messages, {info.duration_s:.1f} s of log, {len(topics)} topics on {pub.endpoint}"
        + ("" if info.complete else f" (log not closed cleanly: {info.unreadable_bytes} bytes at the end unreadable)")
    )
    blocked = dict.fromkeys(topics, 0)
    status = _StatusLine()
    sent = passes = 0
    start = time.monotonic()
    try:
        with _stop_on_signals() as stop:
            if args.wait > 0 and not pub.wait_for_subscribers(1, args.wait):
                _err(f"replay: no subscriber joined within {args.wait:g} s; publishing anyway")
            while not stop.requested:
                passes += 1
                for msg in paced(reader.messages(topics), None if args.fast else args.rate, sleep=stop.sleep):
                    if stop.requested:
                        break
                    header = msg.header
                    try:
                        pub.publish(
                            msg.topic, msg.data, stamp_ns=header.stamp_ns, frame_id=header.frame_id, trace_id=header.trace_id
                        )
                    except BackpressureTimeout:
                        blocked[msg.topic] += 1
                    sent += 1
                    status.update(lambda: f"replay pass {passes}  {sent} messages  {time.monotonic() - start:6.1f} s")
                if not args.loop:
                    break
            status.end()
            stop.sleep(_DRAIN_S)
        rows = [[t, s.sent, s.dropped, blocked[t]] for t, s in pub.stats.items()]
    finally:
        pub.close()
    _err(_table(["topic", "sent", "dropped", "not_queued"], rows))
    _err(f"replayed {sent} messages in {time.monotonic() - start:.1f} s ({passes} pass(es))")
    if reader.rejected:
        _err(f"  skipped invalid stored messages: {reader.rejected}")
    return 1 if any(blocked.values()) else 0
