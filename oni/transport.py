"""Publishers and subscribers over ZeroMQ (``tcp://``, ``ipc://``, ``inproc://``) and shared memory.

One API over every transport::

    pub = Publisher("ipc:///tmp/robot.sock", {"sensor.lidar": qos.SENSOR}, source="lidar0")
    pub.publish("sensor.lidar", {"ranges_m": ranges, ...}, stamp_ns=t)

    sub = Subscriber()
    sub.subscribe("sensor.lidar", qos.SENSOR)
    sub.connect("ipc:///tmp/robot.sock")
    msg = sub.recv(timeout_ms=100)      # one message, or None
    sub.poll(); sub.take("sensor.lidar")  # or: drain into per-topic histories, then take them

A publisher announces its topics, schema versions and QoS in a *hello* that ZeroMQ delivers to each
subscriber as it connects (XPUB welcome message); the subscriber checks compatibility per publisher and
refuses an incompatible one loudly, naming the policy. Bad messages are rejected, counted per topic and
kind, and never stop a subscriber. See docs/oni-v1.md.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import msgpack
import numpy as np
import zmq

from oni import qos as qos_mod
from oni.codec import (
    DEFAULT_MAX_MESSAGE_BYTES,
    INLINE_MAX_BYTES,
    DecodeLimits,
    _unpack_body,
    check_finite_array,
    decode_body,
    encode,
)
from oni.errors import (
    BackpressureTimeout,
    DuplicateSeq,
    Expired,
    IncompatibleQos,
    MalformedFrame,
    OniError,
    OutOfOrderSeq,
    PayloadTooLarge,
    RejectedMessage,
    SecurityError,
    WrongType,
)
from oni.message import Header, Message, new_trace_id, now_ns
from oni.qos import QosProfile
from oni.schema import SchemaRegistry
from oni.security import (
    PRIVILEGED_TOPICS,
    ClientSecurity,
    HandshakeMonitor,
    Security,
    ServerSecurity,
    apply,
    handshake_error,
)
from oni.shm import ShmConfig, ShmReader, ShmRing

log = logging.getLogger("oni.transport")

HELLO_PREFIX = b"\x00oni.hello"
#: Default ZeroMQ queue bound per peer, in messages (each side). Memory use is up to this many messages.
DEFAULT_HWM = 1000
_LATENCY_WINDOW = 1024
_EMPTY = object()  # Subscriber._recv_one: the socket had nothing


@dataclass(frozen=True)
class TopicSpec:
    """A topic a publisher offers: its schema type (default: the topic name) and QoS."""

    qos: QosProfile
    schema: str | None = None


def _spec(topic: str, value: TopicSpec | QosProfile | str) -> TopicSpec:
    if isinstance(value, TopicSpec):
        return value if value.schema else TopicSpec(value.qos, topic)
    if isinstance(value, str):
        return TopicSpec(qos_mod.preset(value), topic)
    return TopicSpec(value, topic)


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode()
    except UnicodeDecodeError:
        return False
    return True


def _same_host(endpoint: str) -> bool:
    """True for endpoints that can only reach this host (where shared-memory descriptors resolve)."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    host = endpoint.removeprefix("tcp://").rsplit(":", 1)[0]
    return host in ("localhost", "[::1]", "::1", "lo") or host.startswith("127.")


def _default_context() -> zmq.Context:
    return zmq.Context.instance()


@dataclass
class PublisherTopicStats:
    """What a publisher did on one topic."""

    sent: int = 0
    dropped: int = 0  # best_effort messages that could not be queued
    blocked_timeouts: int = 0  # reliable messages refused after max_blocking_ms
    shm: int = 0  # tensors sent through shared memory
    last_seq: int = -1


class Publisher:
    """Publishes ONI messages on one endpoint, for a fixed set of topics.

    ``source`` names this publisher in every header (keep it unique per process). ``bind`` (the default)
    makes this side listen; a publisher may instead connect to a subscriber that binds (used for privileged
    topics, where the receiver holds the allow-list). ``shm`` enables shared memory for large tensors.
    ``hwm`` bounds the queue per subscriber (messages); past it ``best_effort`` drops and ``reliable`` waits.
    """

    def __init__(
        self,
        endpoint: str,
        topics: Mapping[str, TopicSpec | QosProfile | str],
        *,
        source: str,
        bind: bool = True,
        context: zmq.Context | None = None,
        security: Security | None = None,
        shm: ShmConfig | None = None,
        registry: SchemaRegistry | None = None,
        inline_max: int = INLINE_MAX_BYTES,
        hwm: int = DEFAULT_HWM,
    ) -> None:
        if not topics:
            raise ValueError("a publisher needs at least one topic")
        self.source = source
        self._registry = registry or SchemaRegistry.default()
        self._specs = {topic: _spec(topic, value) for topic, value in topics.items()}
        self._versions = {t: self._registry.latest(s.schema).version for t, s in self._specs.items()}
        self._seq = {topic: 0 for topic in self._specs}
        self._topic_frames = {topic: topic.encode() for topic in self._specs}
        self._inline_max = inline_max
        self.stats = {topic: PublisherTopicStats() for topic in self._specs}
        self._context = context or _default_context()
        self._socket = self._context.socket(zmq.XPUB)
        self._socket.linger = 0
        self._socket.sndhwm = hwm
        self._socket.setsockopt(zmq.XPUB_NODROP, 1)
        # Every (un)subscription reaches us, so subscribers can be counted by their hello subscription.
        self._socket.setsockopt(zmq.XPUB_VERBOSER, 1)
        self._subscribers = 0
        self._allow = apply(self._socket, security)
        self._security = security
        self._bound = bind
        self._socket.setsockopt(zmq.XPUB_WELCOME_MSG, HELLO_PREFIX + msgpack.packb(self._hello(security), use_bin_type=True))
        self._monitor = HandshakeMonitor(self._socket)
        if shm is not None and not _same_host(endpoint):
            raise ValueError(f"shared memory needs publisher and subscribers on one host: use ipc://, inproc:// "
                             f"or tcp://127.0.0.1, not {endpoint}")
        self._ring = ShmRing(shm, prefix=f"oni-{source}") if shm is not None else None
        self._poller = zmq.Poller()
        self._poller.register(self._socket, zmq.POLLOUT)
        self._publishes = 0
        if bind:
            self._socket.bind(endpoint)
        else:
            self._socket.connect(endpoint)
        self.endpoint = self._socket.getsockopt_string(zmq.LAST_ENDPOINT) if bind else endpoint

    def _hello(self, security: Security | None) -> dict[str, Any]:
        return {
            "oni": 1,
            "source": self.source,
            "secured": security is not None,
            "topics": {
                topic: {"schema": spec.schema, "version": self._versions[topic], "qos": spec.qos.to_dict()}
                for topic, spec in self._specs.items()
            },
        }

    @property
    def denied_keys(self) -> dict[str, int]:
        """Client keys this (server) publisher refused, with counts."""
        return dict(self._allow.denied) if self._allow else {}

    @property
    def shm_segment(self) -> str | None:
        """Name of this publisher's shared-memory segment (a file in :data:`oni.shm.SHM_DIR`), if any."""
        return self._ring.name if self._ring is not None else None

    def security_failures(self) -> list[tuple[int, int, str]]:
        """Failed handshakes seen on this socket: ``(zmq event, detail, endpoint)``."""
        self._monitor.drain()
        return list(self._monitor.failures)

    def loan(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """A writable array in a shared-memory slot; fill it, then pass it in ``publish``'s data (no copy)."""
        if self._ring is None:
            raise OniError("this publisher has no shared memory: construct it with shm=ShmConfig(...)")
        return self._ring.loan(tuple(shape), dtype)

    def publish(
        self,
        topic: str,
        data: Mapping[str, Any],
        *,
        stamp_ns: int | None = None,
        frame_id: str = "",
        trace_id: str | None = None,
        parent: Header | None = None,
    ) -> Header:
        """Send one message on ``topic`` and return its header.

        ``stamp_ns`` (acquisition time) defaults to now. ``trace_id`` defaults to ``parent``'s (the input this
        output derives from), else a new one. ``best_effort`` topics never block: a message that cannot be
        queued is dropped and counted. ``reliable`` topics wait up to ``max_blocking_ms`` for queue space and
        then raise :class:`BackpressureTimeout`.
        """
        spec = self._specs.get(topic)
        if spec is None:
            raise OniError(f"topic {topic!r} was not declared by this publisher (declared: {sorted(self._specs)})")
        if self._ring is not None:
            data = self._to_shm(topic, data)
        seq = self._seq[topic]
        pub = time.time_ns()
        header = Header(
            spec.schema,
            self._versions[topic],
            seq,
            self.source,
            pub if stamp_ns is None else stamp_ns,
            pub,
            frame_id,
            trace_id or (parent.trace_id if parent is not None else new_trace_id()),
        )
        frames = encode(topic, header, data, self._inline_max)
        frames[0] = self._topic_frames[topic]
        stats = self.stats[topic]
        if self._send(frames, spec.qos):
            self._seq[topic] = seq + 1
            stats.sent += 1
            stats.last_seq = seq
        elif spec.qos.reliability == "best_effort":
            # The seq is consumed, so subscribers see the loss as a gap.
            self._seq[topic] = seq + 1
            stats.dropped += 1
        else:
            stats.blocked_timeouts += 1
            raise BackpressureTimeout(
                f"{topic}: reliable publish could not be queued within {spec.qos.max_blocking_ms} ms (slow subscriber)"
            )
        self._publishes += 1
        if self._publishes % 256 == 0:
            self._housekeeping()
        return header

    def _to_shm(self, topic: str, data: Mapping[str, Any]) -> Mapping[str, Any]:
        """Replace loaned (and large) arrays by shared-memory descriptors.

        Float tensors are checked for NaN/Inf here, by the producer, and a bad one is refused with
        :class:`NonFiniteValue`: a receiver cannot usefully check memory its producer still owns (it could be
        written after any check), so for shared memory the finiteness rule is the producer's, and receivers
        skip the scan of the whole tensor (docs/oni-v1.md, "Shared memory").
        """
        ring = self._ring
        nonfinite_ok = self._registry.latest(self._specs[topic].schema).nonfinite_ok
        out = None
        for key, value in data.items():
            if isinstance(value, np.ndarray) and (ring.is_loaned(value) or value.nbytes >= ring.config.min_bytes):
                if not ring.is_loaned(value) and value.nbytes > ring.config.slot_bytes:
                    continue  # too large for a slot: travels as a frame
                if value.dtype.kind == "f" and key not in nonfinite_ok and value.size:
                    check_finite_array(value, key, topic)
                if out is None:
                    out = dict(data)
                out[key] = ring.commit(value) if ring.is_loaned(value) else ring.copy_in(value)
                self.stats[topic].shm += 1
        return data if out is None else out

    def _send_now(self, frames: list[Any]) -> None:
        """Send without waiting; raises ``zmq.Again`` when the queue is full.

        Part by part rather than send_multipart: the topic and body are small bytes, sent by copy (a zero-copy
        Frame costs more than copying them), and only tensor frames go zero-copy. ZeroMQ checks the queue on
        the first part only, so once it is accepted the rest of the message is too.
        """
        sock = self._socket
        last = len(frames) - 1
        sock.send(frames[0], zmq.NOBLOCK | zmq.SNDMORE)
        sock.send(frames[1], zmq.NOBLOCK | (zmq.SNDMORE if last > 1 else 0))
        for i in range(2, last + 1):
            sock.send(frames[i], zmq.NOBLOCK | (zmq.SNDMORE if i < last else 0), copy=False)

    def _send(self, frames: list[Any], qos: QosProfile) -> bool:
        try:
            self._send_now(frames)
            return True
        except zmq.Again:
            if qos.reliability == "best_effort" or qos.max_blocking_ms <= 0:
                return False
        deadline = time.monotonic() + qos.max_blocking_ms / 1000.0
        while (left := deadline - time.monotonic()) > 0:
            if self._poller.poll(left * 1000.0):
                try:
                    self._send_now(frames)
                    return True
                except zmq.Again:
                    continue
        return False

    def _read_subscriptions(self) -> None:
        # Subscription notices queue up on an XPUB socket; read them so they never fill its buffer. Each
        # subscriber subscribes to the hello prefix exactly once, so those notices count subscribers.
        while self._socket.poll(0, zmq.POLLIN):
            notice = self._socket.recv(zmq.NOBLOCK)
            if notice[1:] == HELLO_PREFIX:
                self._subscribers += notice[:1] == b"\x01"

    @property
    def subscribers(self) -> int:
        """ONI subscribers that have joined since this publisher started.

        libzmq reports a subscriber's arrival but not its departure, so this never goes down on a disconnect.
        """
        self._read_subscriptions()
        return self._subscribers

    def wait_for_subscribers(self, count: int = 1, timeout_s: float = 5.0) -> bool:
        """Wait until at least ``count`` subscribers have joined; False if ``timeout_s`` passes first.

        ZeroMQ connects asynchronously: messages published before a subscriber's subscription arrives are
        not delivered to it. Waiting here is how a publisher avoids losing its first messages.
        """
        deadline = time.monotonic() + timeout_s
        while self.subscribers < count:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._socket.poll(min(left, 0.05) * 1000.0, zmq.POLLIN)
        return True

    def _housekeeping(self) -> None:
        self._read_subscriptions()
        failures = self._monitor.drain()
        if failures:
            # The newest failure stands for the burst: a misconfigured peer retries every 100 ms.
            event, value, endpoint = failures[-1]
            error = handshake_error(event, value, endpoint, self._security, bound=self._bound)
            log.error("%s (%d failed handshakes since the last report)", error, len(failures))

    def close(self) -> None:
        self._monitor.close()
        self._socket.close(linger=0)
        if self._allow is not None:
            self._allow.release()
        if self._ring is not None:
            self._ring.close()

    def __enter__(self) -> "Publisher":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@dataclass
class TopicStats:
    """A subscriber's view of one topic. Latency is publish (``pub_ns``) to receive, in microseconds."""

    received: int = 0  # accepted and delivered
    gaps: int = 0  # messages missing according to seq (lost between publisher and us)
    overrun: int = 0  # delivered into history but overwritten before being taken (depth exceeded)
    expired: int = 0  # older than lifespan at delivery
    deadline_missed: int = 0
    rejects: dict[str, int] = field(default_factory=dict)
    last_reject: str = ""
    last_recv_ns: int = 0
    publishers: int = 0
    _latency_us: np.ndarray = field(default_factory=lambda: np.zeros(_LATENCY_WINDOW))
    _recv_ns: np.ndarray = field(default_factory=lambda: np.zeros(_LATENCY_WINDOW, dtype=np.int64))
    _n: int = 0

    def record(self, latency_us: float, recv_ns: int) -> None:
        i = self._n % _LATENCY_WINDOW
        self._latency_us[i] = latency_us
        self._recv_ns[i] = recv_ns
        self._n += 1

    @property
    def rejected(self) -> int:
        return sum(self.rejects.values())

    @property
    def drops(self) -> int:
        """Everything lost on the way to the user: gaps, overruns and expiries."""
        return self.gaps + self.overrun + self.expired

    def latency_us(self, q: float) -> float:
        """Quantile ``q`` (0..1) of the latest publish-to-receive latencies (us); NaN before any message."""
        n = min(self._n, _LATENCY_WINDOW)
        return float(np.quantile(self._latency_us[:n], q)) if n else float("nan")

    @property
    def rate_hz(self) -> float:
        """Arrival rate over the latest messages (Hz)."""
        n = min(self._n, _LATENCY_WINDOW)
        if n < 2:
            return 0.0
        newest = self._recv_ns[(self._n - 1) % _LATENCY_WINDOW]
        oldest = self._recv_ns[self._n % _LATENCY_WINDOW] if self._n > _LATENCY_WINDOW else self._recv_ns[0]
        return (n - 1) * 1e9 / max(int(newest - oldest), 1)

    def summary(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "rate_hz": round(self.rate_hz, 3),
            "latency_p50_us": round(self.latency_us(0.5), 1),
            "latency_p99_us": round(self.latency_us(0.99), 1),
            "gaps": self.gaps,
            "overrun": self.overrun,
            "expired": self.expired,
            "deadline_missed": self.deadline_missed,
            "rejects": dict(self.rejects),
        }


@dataclass
class _Subscription:
    topic: str
    qos: QosProfile
    schema: str
    history: deque
    stats: TopicStats
    deadline_ns: int | None
    lifespan_ns: int | None
    next_deadline_ns: int = 0


EventCallback = Callable[[str, str, str], None]


class Subscriber:
    """Receives ONI messages from any number of publishers, for the topics it subscribes.

    Every message is validated (framing, schema and version, size, tensors, finiteness, ``seq`` order,
    QoS); a bad one raises nothing out of :meth:`recv`/:meth:`poll`: it is counted in
    ``stats[topic].rejects[kind]``. ``on_event(topic, event, detail)`` is called for ``deadline_missed``,
    ``incompatible_qos`` and ``reject`` events. Deadlines are checked whenever :meth:`recv` or :meth:`poll`
    runs.
    """

    def __init__(
        self,
        *,
        context: zmq.Context | None = None,
        registry: SchemaRegistry | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        security: Security | None = None,
        on_event: EventCallback | None = None,
        hwm: int = DEFAULT_HWM,
    ) -> None:
        self._registry = registry or SchemaRegistry.default()
        self._limits = DecodeLimits(max_message_bytes)
        self._context = context or _default_context()
        self._socket = self._context.socket(zmq.SUB)
        self._socket.linger = 0
        self._socket.rcvhwm = hwm
        self._allow = apply(self._socket, security)
        self._security = security
        self._socket.setsockopt(zmq.SUBSCRIBE, HELLO_PREFIX)
        self._monitor = HandshakeMonitor(self._socket)
        self._subs: dict[str, _Subscription] = {}
        self._subs_by_frame: dict[bytes, _Subscription] = {}  # keyed by the topic frame: no decode per message
        self._last_seq: dict[tuple[str, str], int] = {}
        self._publisher_qos: dict[tuple[str, str], tuple[str, QosProfile]] = {}
        self._refused: set[tuple[str, str]] = set()
        self._on_event = on_event
        self._shm = ShmReader()
        self.unattributed_rejects = 0
        self.endpoints: list[str] = []
        self._connected: set[str] = set()
        self.peer_handshake_failures = 0  # peers that failed to connect to our bound endpoints

    # -- wiring ------------------------------------------------------------------------------------------
    def subscribe(self, topic: str, qos: QosProfile | str, schema: str | None = None) -> None:
        """Receive ``topic`` (whose messages must have schema ``schema``, default the topic name)."""
        profile = qos_mod.preset(qos) if isinstance(qos, str) else qos
        if topic in PRIVILEGED_TOPICS and not (
            isinstance(self._security, ServerSecurity) and self._security.allowed_clients is not None
            or isinstance(self._security, ClientSecurity)
        ):
            raise SecurityError(
                f"{topic} is privileged: subscribe to it with security=ServerSecurity(keys, allowed_clients=...) "
                "(or ClientSecurity with the publisher's key), so only known keys can command the robot"
            )
        self._subs[topic] = _Subscription(
            topic,
            profile,
            schema or topic,
            deque(maxlen=profile.depth),
            TopicStats(),
            int(profile.deadline_ms * 1e6) if profile.deadline_ms else None,
            int(profile.lifespan_ms * 1e6) if profile.lifespan_ms else None,
            now_ns() + int(profile.deadline_ms * 1e6) if profile.deadline_ms else 0,
        )
        self._subs_by_frame[topic.encode()] = self._subs[topic]
        self._socket.setsockopt(zmq.SUBSCRIBE, topic.encode())
        for key in [k for k in self._publisher_qos if k[0] == topic]:
            self._check_offer(key)  # publishers that said hello before this subscription existed

    def connect(self, endpoint: str) -> None:
        self._socket.connect(endpoint)
        self.endpoints.append(endpoint)
        self._connected.add(endpoint)

    def bind(self, endpoint: str) -> str:
        """Listen (publishers connect to us); returns the bound endpoint (with the port picked for ``:*``)."""
        self._socket.bind(endpoint)
        bound = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.endpoints.append(bound)
        return bound

    @property
    def stats(self) -> dict[str, TopicStats]:
        return {topic: sub.stats for topic, sub in self._subs.items()}

    @property
    def denied_keys(self) -> dict[str, int]:
        """Client keys this (server) subscriber refused, with counts."""
        return dict(self._allow.denied) if self._allow else {}

    # -- receiving ---------------------------------------------------------------------------------------
    def recv(self, timeout_ms: float | None = None) -> Message | None:
        """The next accepted message, or None after ``timeout_ms`` (None: wait forever).

        Raises :class:`SecurityError` if the connection's security handshake failed (instead of waiting in
        silence); bad messages are counted, never raised.
        """
        deadline = None if timeout_ms is None else time.monotonic() + timeout_ms / 1000.0
        while True:
            msg = self._recv_one(zmq.NOBLOCK)
            if msg is not _EMPTY:
                if msg is not None:
                    return msg
                continue  # a hello or a rejected message was consumed: more may be queued behind it
            self._check_deadlines()
            self._check_security()
            left = None if deadline is None else (deadline - time.monotonic()) * 1000.0
            if left is not None and left <= 0:
                return None
            # Wake at least every 100 ms to notice deadlines and failed handshakes.
            wait = 100.0 if left is None else min(left, 100.0)
            if not self._socket.poll(wait, zmq.POLLIN):
                continue

    def poll(self, timeout_ms: float = 0.0) -> int:
        """Move everything that has arrived into the per-topic histories; returns how many were accepted."""
        count = 0
        if timeout_ms > 0 and not self._socket.poll(timeout_ms, zmq.POLLIN):
            self._check_deadlines()
            self._check_security()
            return 0
        while (msg := self._recv_one(zmq.NOBLOCK)) is not _EMPTY:
            if msg is None:
                continue
            sub = self._subs[msg.topic]
            if len(sub.history) == sub.history.maxlen:
                sub.stats.overrun += 1
            sub.history.append(msg)
            count += 1
        self._check_deadlines()
        self._check_security()
        return count

    def take(self, topic: str) -> list[Message]:
        """The messages in ``topic``'s history (oldest first), emptied; expired ones are dropped and counted."""
        sub = self._subs[topic]
        out = list(sub.history)
        sub.history.clear()
        if sub.lifespan_ns is not None and out:
            now = now_ns()
            fresh = [m for m in out if now - m.header.pub_ns <= sub.lifespan_ns]
            sub.stats.expired += len(out) - len(fresh)
            out = fresh
        return out

    def _recv_one(self, flags: int) -> Message | None | object:
        """One message off the socket: the accepted Message, None if it was consumed but not delivered (a
        hello, a reject, another topic), or ``_EMPTY`` when nothing was waiting."""
        sock = self._socket
        try:
            first = sock.recv(flags)
        except zmq.Again:
            return _EMPTY
        # getsockopt, not .rcvmore: pyzmq's attribute lookup costs ~2 us. The body is small (large tensors
        # have their own frames), so it is received as bytes: cheaper than a zero-copy Frame object.
        body = sock.recv() if sock.getsockopt(zmq.RCVMORE) else None
        tensors: list[Any] = []
        while sock.getsockopt(zmq.RCVMORE):
            tensors.append(sock.recv(copy=False).buffer)
        recv_ns = time.time_ns()
        sub = self._subs_by_frame.get(first)
        if sub is None:
            if body is None and first.startswith(HELLO_PREFIX):
                self._hello(first[len(HELLO_PREFIX):])
            elif body is None or not _is_utf8(first):
                self.unattributed_rejects += 1  # junk that names none of our topics
            return None  # else a topic sharing a subscribed prefix: not ours
        try:
            if body is None:
                raise MalformedFrame("an ONI message has at least 2 frames (topic, body), got 1")
            msg = self._accept(sub, first, body, tensors, recv_ns)
        except RejectedMessage as exc:
            self._reject(sub, exc)
            return None
        return msg

    def _accept(self, sub: _Subscription, first: bytes, body: bytes, tensors: list[Any], recv_ns: int) -> Message:
        total = len(first) + len(body)
        for buf in tensors:
            total += buf.nbytes
        if total > self._limits.max_message_bytes:
            raise PayloadTooLarge(f"message is {total} bytes, limit is {self._limits.max_message_bytes}")
        msg = decode_body(_unpack_body(body, sub.topic), tensors, sub.topic, self._registry, self._shm.resolve)
        header = msg.header
        if header.schema != sub.schema:
            raise WrongType(f"carries schema {header.schema!r}, this subscription expects {sub.schema!r}")
        key = (sub.topic, header.source)
        if key in self._refused:
            raise IncompatibleQos(f"publisher {header.source!r} has an incompatible QoS", policy="qos")
        last = self._last_seq.get(key)
        if last is None:
            sub.stats.publishers += 1
        elif header.seq != last + 1:
            if header.seq == last:
                raise DuplicateSeq(f"seq {header.seq} from {header.source!r} was already delivered")
            if header.seq < last:
                raise OutOfOrderSeq(f"seq {header.seq} from {header.source!r} arrived after seq {last}")
            sub.stats.gaps += header.seq - last - 1
        self._last_seq[key] = header.seq
        if sub.lifespan_ns is not None and recv_ns - header.pub_ns > sub.lifespan_ns:
            sub.stats.expired += 1
            raise Expired(f"{(recv_ns - header.pub_ns) / 1e6:.1f} ms old, lifespan is {sub.qos.lifespan_ms} ms")
        msg.recv_ns = recv_ns
        stats = sub.stats
        stats.received += 1
        stats.last_recv_ns = recv_ns
        stats.record((recv_ns - header.pub_ns) / 1e3, recv_ns)
        if sub.deadline_ns is not None:
            sub.next_deadline_ns = recv_ns + sub.deadline_ns
        return msg

    def _reject(self, sub: _Subscription, exc: RejectedMessage) -> None:
        if isinstance(exc, Expired):
            return  # counted as `expired`, a QoS drop rather than a fault of the message
        stats = sub.stats
        stats.rejects[exc.kind] = stats.rejects.get(exc.kind, 0) + 1
        stats.last_reject = str(exc)
        if stats.rejects[exc.kind] & (stats.rejects[exc.kind] - 1) == 0:  # log the 1st, 2nd, 4th, 8th... only
            log.warning("%s: rejected (%s, %d so far): %s", sub.topic, exc.kind, stats.rejects[exc.kind], exc)
        if self._on_event:
            self._on_event(sub.topic, "reject", str(exc))

    def _hello(self, payload: bytes) -> None:
        try:
            hello = msgpack.unpackb(payload, raw=False)
            source = hello["source"]
            offered = {t: (info["schema"], QosProfile.from_dict(info["qos"])) for t, info in hello["topics"].items()}
        except Exception as exc:  # a hello we cannot read must not stop the subscriber
            self.unattributed_rejects += 1
            log.warning("unreadable publisher hello: %s: %s", type(exc).__name__, exc)
            return
        for topic, offer in offered.items():
            key = (topic, source)
            self._publisher_qos[key] = offer
            self._last_seq.pop(key, None)  # a (re)connecting publisher starts a new seq run
            if topic in self._subs:
                self._check_offer(key)

    def _check_offer(self, key: tuple[str, str]) -> None:
        """Refuse (loudly) or accept the publisher ``key = (topic, source)`` for our subscription's QoS."""
        topic, source = key
        problems = qos_mod.check_compatible(self._publisher_qos[key][1], self._subs[topic].qos)
        if not problems:
            self._refused.discard(key)
            return
        self._refused.add(key)
        detail = "; ".join(f"{policy}: {why}" for policy, why in problems)
        log.error("%s: publisher %r has incompatible QoS (%s); its messages will be refused", topic, source, detail)
        if self._on_event:
            self._on_event(topic, "incompatible_qos", detail)

    def incompatibilities(self) -> dict[tuple[str, str], list[tuple[str, str]]]:
        """For each refused ``(topic, source)``, the ``(policy, reason)`` pairs of the QoS mismatch."""
        return {
            key: qos_mod.check_compatible(self._publisher_qos[key][1], self._subs[key[0]].qos) for key in self._refused
        }

    def _check_deadlines(self) -> None:
        now = 0
        for sub in self._subs.values():
            if sub.deadline_ns is None:
                continue
            now = now or now_ns()
            if now > sub.next_deadline_ns:
                sub.stats.deadline_missed += 1
                sub.next_deadline_ns = now + sub.deadline_ns
                if self._on_event:
                    self._on_event(sub.topic, "deadline_missed", f"no message for {sub.qos.deadline_ms} ms")

    def _check_security(self) -> None:
        raised = None
        for event, value, endpoint in self._monitor.drain():
            # Monitor events name the endpoint we connected to as we spelled it; anything else is a peer that
            # connected to one of our bound endpoints. That peer is misconfigured (or hostile): report it, but
            # never let it make our recv() fail.
            error = handshake_error(event, value, endpoint, self._security, bound=endpoint not in self._connected)
            if not error.bound:
                raised = error
                continue
            self.peer_handshake_failures += 1
            if self.peer_handshake_failures & (self.peer_handshake_failures - 1) == 0:
                log.warning("%s (%d so far)", error, self.peer_handshake_failures)
        if raised is not None:
            raise raised

    def close(self) -> None:
        self._monitor.close()
        self._socket.close(linger=0)
        if self._allow is not None:
            self._allow.release()
        self._shm.close()

    def __enter__(self) -> "Subscriber":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
