"""The implementations the transport benchmark measures, behind one sender/receiver interface.

- ``oni``: ONI messages (``sensor.lidar`` with a float32 ``ranges_m`` tensor of the payload size) through
  :class:`oni.transport.Publisher`/:class:`~oni.transport.Subscriber`, over ``ipc``, ``tcp``, or ``shm``
  (``ipc`` plus a shared-memory ring on the publisher; tensors of 64 KiB and more travel through loaned
  slots, smaller ones in the message as over ``ipc``).
- ``raw_zmq``: pyzmq plus msgpack with no ONI layer: one msgpack map ``{"seq", "pub_ns", "data"}`` per
  message, over ``ipc`` and ``tcp``, with the same socket settings as ONI (XPUB, no-drop, same HWM).
- ``zenoh`` (eclipse-zenoh): peer mode on loopback TCP, multicast scouting off; ``transport`` is ``tcp``.
- ``cyclonedds``: DDS on interface ``lo`` with multicast off and 127.0.0.1 as the only peer; one IDL struct
  ``{int64 seq; int64 pub_ns; octet data[N]}`` per payload size; ``transport`` is ``udp``.

Every message, the publisher first writes a fresh payload into the buffer it publishes (as a driver writes
a new scan), then publishes. Every implementation runs *reliable*: ONI with a ``reliable`` QoS, raw ZeroMQ
with the same blocking no-drop XPUB, zenoh with ``Reliability.RELIABLE`` and ``CongestionControl.BLOCK``, DDS
with reliable QoS and KeepAll history. A message carries its sequence number and its publish time
(``time.time_ns()``, taken as the publish call starts; for ONI, ``header.pub_ns``). A receiver returns
``(seq, pub_ns, recv_ns)`` where ``recv_ns`` is taken once the application holds the decoded message and
has read the first and last element of its payload, so decoding is part of the latency for everyone.

zenoh and cyclonedds are optional (the ``bench`` extra) and imported only here, inside the classes that use
them; :func:`require` turns their absence into :class:`MissingExtra`, naming the extra.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import queue
import struct
import time
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, Protocol

import msgpack
import numpy as np
import zmq

from oni.shm import ShmConfig

#: Implementations, in report order, with the transports each is measured on.
TRANSPORTS: dict[str, tuple[str, ...]] = {
    "oni": ("ipc", "tcp", "shm"),
    "raw_zmq": ("ipc", "tcp"),
    "zenoh": ("tcp",),
    "cyclonedds": ("udp",),
}
#: The optional module each reference peer needs.
PEER_MODULES: dict[str, str] = {"zenoh": "zenoh", "cyclonedds": "cyclonedds"}
EXTRA_HINT = "pip install 'oni-worldmodel[bench]'"

ONI_TOPIC = "sensor.lidar"
RAW_TOPIC = b"bench"
ZENOH_KEY = "oni/bench/payload"
#: Queue bound (messages, each side) of every ZeroMQ socket here, ONI's and raw ZeroMQ's alike.
ZMQ_HWM = 10_000
#: Tensors of at least this many bytes go through the shared-memory ring when the transport is ``shm``.
SHM_MIN_BYTES = 64 * 1024
#: Slots of the benchmark's shared-memory ring: ONI's default.
SHM_SLOTS = ShmConfig().slots
#: How long a reliable publish may wait for queue space before it counts as not sent (ms).
MAX_BLOCKING_MS = 5000.0
#: Header of the zenoh payload: seq, pub_ns (little-endian int64).
_ZENOH_HEAD = struct.Struct("<qq")

#: ``(seq, pub_ns, recv_ns)`` of one received message.
Sample = tuple[int, int, int]


class MissingExtra(RuntimeError):
    """An optional benchmark peer is not installed; the message names the extra that provides it."""


def require(module: str) -> ModuleType:
    """Import an optional peer module, or raise :class:`MissingExtra` naming the ``bench`` extra."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtra(f"{module} is not installed ({exc}); install the reference peers: {EXTRA_HINT}") from None


@dataclass(frozen=True)
class PeerSpec:
    """What both ends of one measured link agree on.

    ``endpoint``: a ZeroMQ endpoint (``ipc://...``, ``tcp://127.0.0.1:*``: the publisher binds it and reports
    the bound address), a zenoh locator (``tcp/127.0.0.1:PORT``, where the publisher listens), or, for
    cyclonedds, the DDS domain id. ``max_bytes`` is the largest payload the link will carry (sizes the
    shared-memory slots).
    """

    impl: str
    transport: str
    endpoint: str
    max_bytes: int


class Sender(Protocol):
    """The publishing end of a link."""

    endpoint: str

    def prepare(self, nbytes: int) -> None:
        """Build the payload of ``nbytes`` bytes (and per-size entities); not timed."""

    def send(self) -> int | None:
        """Publish one message now; its seq, or None if it could not be queued (counted as lost)."""

    def close(self) -> None:
        """Release sockets and sessions."""


class Receiver(Protocol):
    """The subscribing end of a link."""

    def prepare(self, nbytes: int) -> None:
        """Get ready for payloads of ``nbytes`` bytes (per-size entities); not timed."""

    def recv(self, timeout_s: float) -> Sample | None:
        """The next message as ``(seq, pub_ns, recv_ns)``, or None after ``timeout_s`` seconds."""

    def counters(self) -> dict[str, int]:
        """Cumulative receive-side counters (ONI: gaps, rejects, stale shm views); empty for the peers."""

    def close(self) -> None:
        """Release sockets and sessions."""


def open_sender(spec: PeerSpec) -> Sender:
    """The publishing end of ``spec`` (binds or listens where it must)."""
    if spec.impl not in SENDERS:
        raise ValueError(f"unknown implementation {spec.impl!r}; known: {sorted(SENDERS)}")
    return SENDERS[spec.impl](spec)


def open_receiver(spec: PeerSpec, endpoint: str) -> Receiver:
    """The subscribing end of ``spec``, connected to ``endpoint`` (the sender's reported endpoint)."""
    if spec.impl not in RECEIVERS:
        raise ValueError(f"unknown implementation {spec.impl!r}; known: {sorted(RECEIVERS)}")
    return RECEIVERS[spec.impl](spec, endpoint)


class Payload:
    """A producer's message buffer: ``head`` bytes of room for the peer's own header, then the payload.

    :meth:`fill` writes this message's payload (a copy of a fixed random source), as a driver writes a
    fresh scan every time; it runs before the publish time is taken, for every implementation alike.
    """

    def __init__(self, nbytes: int, head: int = 0) -> None:
        self._source = np.random.default_rng(nbytes).integers(0, 256, nbytes, dtype=np.uint8).tobytes()
        self.buffer = bytearray(head + nbytes)
        self._head = head

    def fill(self) -> bytearray:
        self.buffer[self._head :] = self._source
        return self.buffer


# -- ONI ---------------------------------------------------------------------------------------------------
def oni_qos() -> Any:
    """The QoS of the benchmark topic: ``reliable``; a full queue makes the publisher wait up to MAX_BLOCKING_MS."""
    from oni.qos import QosProfile

    return QosProfile("reliable", depth=ZMQ_HWM, max_blocking_ms=MAX_BLOCKING_MS)


class OniSender:
    """ONI publisher of ``sensor.lidar`` scans whose ``ranges_m`` (float32) is the payload.

    Every message the producer writes its scan (a copy of a fixed source) before :meth:`Publisher.publish`
    stamps ``pub_ns``: into its own array over ``ipc``/``tcp``, and over ``shm``, for scans of at least
    :data:`SHM_MIN_BYTES`, straight into a loaned slot (the zero-copy producer path).
    """

    def __init__(self, spec: PeerSpec) -> None:
        from oni.transport import Publisher

        shm = None
        if spec.transport == "shm":
            shm = ShmConfig(slots=SHM_SLOTS, slot_bytes=max(spec.max_bytes, SHM_MIN_BYTES), min_bytes=SHM_MIN_BYTES)
        self._pub = Publisher(
            _zmq_bind_endpoint(spec),
            {ONI_TOPIC: oni_qos()},
            source=f"bench-{os.getpid()}",
            shm=shm,
            hwm=ZMQ_HWM,
        )
        self._loan = shm is not None
        self.endpoint = self._pub.endpoint
        self._source = self._scan = np.zeros(0, np.float32)
        self._scalars: dict[str, float] = {}

    def prepare(self, nbytes: int) -> None:
        beams = max(nbytes // 4, 1)
        self._source = np.random.default_rng(beams).uniform(0.1, 30.0, beams).astype(np.float32)
        self._scan = np.empty_like(self._source)
        self._scalars = {
            "angle_min_rad": -math.pi,
            "angle_increment_rad": 2 * math.pi / beams,
            "range_min_m": 0.05,
            "range_max_m": 30.0,
        }

    def send(self) -> int | None:
        from oni.errors import BackpressureTimeout

        if self._loan and self._source.nbytes >= SHM_MIN_BYTES:
            scan = self._pub.loan(self._source.shape, np.float32)
        else:
            scan = self._scan
        np.copyto(scan, self._source)  # the producer writes this message's scan
        try:
            return self._pub.publish(ONI_TOPIC, {"ranges_m": scan, **self._scalars}).seq
        except BackpressureTimeout:
            return None

    def close(self) -> None:
        self._pub.close()
        _remove_ipc_path(self.endpoint)


class OniReceiver:
    """ONI subscriber; reads ``ranges_m[0]`` and ``ranges_m[-1]`` and checks :meth:`Message.valid`."""

    def __init__(self, spec: PeerSpec, endpoint: str) -> None:
        from oni.transport import Subscriber

        self._sub = Subscriber(hwm=ZMQ_HWM)
        self._sub.subscribe(ONI_TOPIC, oni_qos())
        self._sub.connect(endpoint)
        self._stale = 0

    def prepare(self, nbytes: int) -> None:
        """Nothing per size: one topic carries every payload size."""

    def recv(self, timeout_s: float) -> Sample | None:
        msg = self._sub.recv(timeout_ms=timeout_s * 1e3)
        if msg is None:
            return None
        ranges = msg.data["ranges_m"]
        ranges[0], ranges[-1]  # the application reads its payload (from shared memory, over shm)
        if not msg.valid():
            self._stale += 1
            return None
        return msg.header.seq, msg.header.pub_ns, time.time_ns()

    def counters(self) -> dict[str, int]:
        """Seq gaps, shared-memory views overwritten before they were read, and other rejected messages."""
        stats = self._sub.stats[ONI_TOPIC]
        stale = stats.rejects.get("stale_shm", 0)
        return {"gaps": stats.gaps, "stale": self._stale + stale, "rejects": stats.rejected - stale}

    def close(self) -> None:
        self._sub.close()


def _zmq_bind_endpoint(spec: PeerSpec) -> str:
    if spec.transport in ("ipc", "shm", "tcp"):
        return spec.endpoint
    raise ValueError(f"{spec.impl} runs over ipc, tcp or shm, not {spec.transport!r}")


def _remove_ipc_path(endpoint: str) -> None:
    """Remove a bound ``ipc://`` socket file (libzmq may not have unlinked it when the process exits)."""
    if endpoint.startswith("ipc://"):
        try:
            os.unlink(endpoint[len("ipc://") :])
        except FileNotFoundError:
            pass


# -- raw ZeroMQ --------------------------------------------------------------------------------------------
class RawZmqSender:
    """pyzmq + msgpack with no ONI layer; the socket is set up as ONI's (XPUB, no-drop, HWM, blocking)."""

    def __init__(self, spec: PeerSpec) -> None:
        self._socket = zmq.Context.instance().socket(zmq.XPUB)
        self._socket.linger = 0
        self._socket.sndhwm = ZMQ_HWM
        self._socket.setsockopt(zmq.XPUB_NODROP, 1)
        self._socket.sndtimeo = int(MAX_BLOCKING_MS)
        self._socket.bind(_zmq_bind_endpoint(spec))
        self.endpoint = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self._payload = Payload(0)
        self._seq = 0
        self._sent = 0

    def prepare(self, nbytes: int) -> None:
        self._payload = Payload(nbytes)

    def send(self) -> int | None:
        seq = self._seq
        data = self._payload.fill()
        body = msgpack.packb({"seq": seq, "pub_ns": time.time_ns(), "data": data}, use_bin_type=True)
        try:
            self._socket.send_multipart((RAW_TOPIC, body))
        except zmq.Again:
            return None
        self._seq = seq + 1
        self._sent += 1
        if self._sent % 256 == 0:
            # An XPUB socket queues subscription notices; read them so they never fill its buffer (as ONI does).
            while self._socket.poll(0, zmq.POLLIN):
                self._socket.recv(zmq.NOBLOCK)
        return seq

    def close(self) -> None:
        self._socket.close(linger=0)
        _remove_ipc_path(self.endpoint)


class RawZmqReceiver:
    """A SUB socket; unpacks the msgpack map and reads the payload's first and last byte."""

    def __init__(self, spec: PeerSpec, endpoint: str) -> None:
        self._socket = zmq.Context.instance().socket(zmq.SUB)
        self._socket.linger = 0
        self._socket.rcvhwm = ZMQ_HWM
        self._socket.setsockopt(zmq.SUBSCRIBE, RAW_TOPIC)
        self._socket.connect(endpoint)

    def prepare(self, nbytes: int) -> None:
        """Nothing per size."""

    def recv(self, timeout_s: float) -> Sample | None:
        try:
            frames = self._socket.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            if not self._socket.poll(timeout_s * 1e3, zmq.POLLIN):
                return None
            frames = self._socket.recv_multipart()
        body = msgpack.unpackb(frames[1], raw=False)
        data = body["data"]
        data[0], data[-1]
        return body["seq"], body["pub_ns"], time.time_ns()

    def counters(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        self._socket.close(linger=0)


# -- zenoh -------------------------------------------------------------------------------------------------
def zenoh_config(listen: str | None = None, connect: str | None = None) -> Any:
    """A zenoh peer config on loopback TCP only: explicit endpoints, multicast scouting, gossip and zenoh's
    own shared-memory transport off (so ``tcp`` is what is measured)."""
    zenoh = require("zenoh")
    config = zenoh.Config()
    config.insert_json5("mode", '"peer"')
    config.insert_json5("scouting/multicast/enabled", "false")
    config.insert_json5("scouting/gossip/enabled", "false")
    config.insert_json5("transport/shared_memory/enabled", "false")
    config.insert_json5("listen/endpoints", json.dumps([listen] if listen else []))
    config.insert_json5("connect/endpoints", json.dumps([connect] if connect else []))
    return config


class ZenohSender:
    """A zenoh publisher (reliable, blocking congestion control, ``express`` for lowest latency)."""

    def __init__(self, spec: PeerSpec) -> None:
        zenoh = require("zenoh")
        self.endpoint = spec.endpoint
        self._session = zenoh.open(zenoh_config(listen=spec.endpoint))
        self._pub = self._session.declare_publisher(
            ZENOH_KEY,
            congestion_control=zenoh.CongestionControl.BLOCK,
            reliability=zenoh.Reliability.RELIABLE,
            express=True,
        )
        self._payload = Payload(0, _ZENOH_HEAD.size)
        self._seq = 0

    def prepare(self, nbytes: int) -> None:
        self._payload = Payload(nbytes, _ZENOH_HEAD.size)

    def send(self) -> int | None:
        seq = self._seq
        buffer = self._payload.fill()
        _ZENOH_HEAD.pack_into(buffer, 0, seq, time.time_ns())
        self._pub.put(buffer)  # zenoh copies a bytearray into its own ZBytes
        self._seq = seq + 1
        return seq

    def close(self) -> None:
        self._pub.undeclare()
        self._session.close()


class ZenohReceiver:
    """A zenoh subscriber; the callback (on zenoh's thread) copies the payload out, reads it and stamps it."""

    def __init__(self, spec: PeerSpec, endpoint: str) -> None:
        zenoh = require("zenoh")
        self._queue: queue.SimpleQueue[Sample] = queue.SimpleQueue()
        self._session = zenoh.open(zenoh_config(connect=endpoint))
        self._sub = self._session.declare_subscriber(ZENOH_KEY, self._on_sample)

    def _on_sample(self, sample: Any) -> None:
        data = sample.payload.to_bytes()  # zenoh-python offers no buffer view of a payload
        seq, pub_ns = _ZENOH_HEAD.unpack_from(data)
        data[_ZENOH_HEAD.size], data[-1]
        self._queue.put((seq, pub_ns, time.time_ns()))

    def prepare(self, nbytes: int) -> None:
        """Nothing per size."""

    def recv(self, timeout_s: float) -> Sample | None:
        try:
            return self._queue.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def counters(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        self._sub.undeclare()
        self._session.close()


# -- cyclonedds --------------------------------------------------------------------------------------------
def cyclonedds_config(domain_id: int) -> str:
    """CYCLONEDDS_URI content: interface ``lo``, multicast off, unicast discovery of 127.0.0.1 only."""
    return (
        f'<CycloneDDS><Domain id="{domain_id}">'
        '<General><Interfaces><NetworkInterface name="lo"/></Interfaces>'
        "<AllowMulticast>false</AllowMulticast></General>"
        "<Discovery><ParticipantIndex>auto</ParticipantIndex><MaxAutoParticipantIndex>32</MaxAutoParticipantIndex>"
        '<Peers><Peer address="127.0.0.1"/></Peers></Discovery>'
        "</Domain></CycloneDDS>"
    )


class _Cyclone:
    """A DDS participant on the benchmark domain, with one topic (and IDL type) per payload size."""

    def __init__(self, spec: PeerSpec) -> None:
        domain_id = int(spec.endpoint)
        # Read by the DDS library when the domain is created: set before the first participant.
        os.environ["CYCLONEDDS_URI"] = cyclonedds_config(domain_id)
        require("cyclonedds")
        from cyclonedds.core import Policy, Qos
        from cyclonedds.domain import DomainParticipant
        from cyclonedds.util import duration

        self.participant = DomainParticipant(domain_id)
        self.qos = Qos(
            Policy.Reliability.Reliable(duration(milliseconds=MAX_BLOCKING_MS)),
            Policy.History.KeepAll,
        )
        #: The reader or writer of the current payload size. Earlier ones stay until the process exits
        #: (this binding deletes entities only from ``__del__``, at exit): an idle one costs nothing.
        self.entity: Any = None

    def topic(self, nbytes: int) -> tuple[Any, type]:
        """The topic and struct type ``{int64 seq; int64 pub_ns; octet data[nbytes]}`` for one size.

        A fixed-size octet array is serialized as one block; a ``sequence<octet>`` would go element by
        element through Python in this binding, which would measure the binding rather than DDS.
        """
        import dataclasses

        from cyclonedds.idl import IdlStruct
        from cyclonedds.idl import types as idl
        from cyclonedds.topic import Topic

        namespace = {"__annotations__": {"seq": idl.int64, "pub_ns": idl.int64, "data": idl.array[idl.uint8, nbytes]}}
        struct_type = dataclasses.dataclass(
            type(f"Payload{nbytes}", (IdlStruct,), namespace, typename=f"oni_bench::Payload{nbytes}")
        )
        return Topic(self.participant, f"oni_bench_{nbytes}", struct_type), struct_type


class CycloneSender:
    """A DDS writer (reliable, KeepAll history: a full queue blocks the writer); one topic per payload size."""

    def __init__(self, spec: PeerSpec) -> None:
        self._dds = _Cyclone(spec)
        self.endpoint = spec.endpoint
        self._type: type | None = None
        self._payload = Payload(0)
        self._seq = 0

    def prepare(self, nbytes: int) -> None:
        from cyclonedds.pub import DataWriter

        topic, self._type = self._dds.topic(nbytes)
        self._dds.entity = DataWriter(self._dds.participant, topic, qos=self._dds.qos)
        self._payload = Payload(nbytes)

    def send(self) -> int | None:
        from cyclonedds.core import DDSException

        seq = self._seq
        data = self._payload.fill()
        try:
            self._dds.entity.write(self._type(seq=seq, pub_ns=time.time_ns(), data=data))
        except DDSException:
            return None  # the reliable write timed out
        self._seq = seq + 1
        return seq

    def close(self) -> None:
        """Nothing to release early: DDS entities go when the process exits."""


class CycloneReceiver:
    """A DDS reader; takes samples in batches after a wait set wakes it, reads each payload's ends.

    ``endpoint`` is the domain id, as in ``spec``: DDS discovers the writer by itself.
    """

    def __init__(self, spec: PeerSpec, endpoint: str) -> None:
        self._dds = _Cyclone(spec)
        self._waitset: Any = None
        self._pending: list[Sample] = []

    def prepare(self, nbytes: int) -> None:
        from cyclonedds.core import (
            InstanceState,
            ReadCondition,
            SampleState,
            ViewState,
            WaitSet,
        )
        from cyclonedds.sub import DataReader

        topic, _type = self._dds.topic(nbytes)
        reader = DataReader(self._dds.participant, topic, qos=self._dds.qos)
        self._dds.entity = reader
        self._waitset = WaitSet(self._dds.participant)
        self._waitset.attach(ReadCondition(reader, ViewState.Any | InstanceState.Any | SampleState.Any))
        self._pending = []

    def recv(self, timeout_s: float) -> Sample | None:
        from cyclonedds.util import duration

        if not self._pending:
            samples = self._dds.entity.take(N=256)
            if not samples:
                self._waitset.wait(duration(microseconds=int(timeout_s * 1e6)))
                samples = self._dds.entity.take(N=256)
            now = time.time_ns()
            for sample in samples:
                sample.data[0], sample.data[-1]
                self._pending.append((sample.seq, sample.pub_ns, now))
            self._pending.reverse()
        return self._pending.pop() if self._pending else None

    def counters(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        """Nothing to release early: DDS entities go when the process exits."""


#: Implementation name -> its publishing and subscribing ends.
SENDERS: dict[str, Callable[[PeerSpec], Sender]] = {
    "oni": OniSender,
    "raw_zmq": RawZmqSender,
    "zenoh": ZenohSender,
    "cyclonedds": CycloneSender,
}
RECEIVERS: dict[str, Callable[[PeerSpec, str], Receiver]] = {
    "oni": OniReceiver,
    "raw_zmq": RawZmqReceiver,
    "zenoh": ZenohReceiver,
    "cyclonedds": CycloneReceiver,
}
