"""Bad input: each kind is refused with its own error type naming what was wrong, counted per topic, and
never stops a subscriber. Then the decoder is fuzzed: arbitrary frames and mutated valid messages may only
ever give a valid message or a :class:`~oni.errors.RejectedMessage`.

``scripts/fuzz_decoder.py`` runs a longer mutation fuzz of the same properties.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any, Callable

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oni import codec
from oni.codec import DecodeLimits
from oni.errors import (
    DuplicateSeq,
    MalformedFrame,
    NonFiniteValue,
    OutOfOrderSeq,
    PayloadTooLarge,
    RejectedMessage,
    SchemaViolation,
    TensorMismatch,
    UnknownSchema,
    UnsupportedVersion,
)
from oni.message import Header, Message, now_ns
from oni.qos import QosProfile
from oni.schema import SchemaRegistry
from oni.shm import ShmReader
from oni.tensor import DTYPES, Png, Quantized
from oni.transport import Publisher, Subscriber
from tests.oni.conftest import connect_and_settle, lidar_data
from tests.oni.test_codec import ANY_SCHEMA, SAMPLES, TRACE

TOPIC = "sensor.lidar"
QOS = QosProfile("best_effort", depth=100)  # no lifespan: crafted messages must not expire on a slow machine
BIG = 50_000  # beams in a "large" scan (200 kB): larger than the receive limit of the size tests


def lidar_header(seq: int, schema: str = TOPIC, version: str = "1.0") -> Header:
    pub = now_ns()
    return Header(schema, version, seq, "crafted", pub, pub, "laser", TRACE)


def lidar_frames(seq: int = 1, **changes: Any) -> list[bytes]:
    """A valid ``sensor.lidar`` message as wire frames (bytes), with ``changes`` applied to its data."""
    data = {**lidar_data(), **changes}
    return [bytes(f) for f in codec.encode(TOPIC, lidar_header(seq), data)]


def edit_body(frames: list[bytes], edit: Callable[[dict], None]) -> list[bytes]:
    """``frames`` with the msgpack body changed in place by ``edit``."""
    body = msgpack.unpackb(frames[1])
    edit(body)
    return [frames[0], msgpack.packb(body), *frames[2:]]


def _set(path: str, value: Any) -> Callable[[dict], None]:
    def edit(body: dict) -> None:
        *parents, last = path.split(".")
        node = body
        for key in parents:
            node = node[key]
        node[last] = value

    return edit


def _delete(path: str) -> Callable[[dict], None]:
    def edit(body: dict) -> None:
        *parents, last = path.split(".")
        node = body
        for key in parents:
            node = node[key]
        del node[last]

    return edit


# (case id, frames for seq, expected error, words the message must contain)
def _big(seq: int) -> list[bytes]:
    return lidar_frames(seq, ranges_m=np.ones(BIG, dtype=np.float32))


def bad_cases() -> list[tuple[str, Callable[[int], list[bytes]], type[RejectedMessage], str]]:
    return [
        ("one-frame", lambda seq: [TOPIC.encode()], MalformedFrame, "at least 2 frames"),
        ("not-msgpack", lambda seq: [TOPIC.encode(), b"\xc1\xc1"], MalformedFrame, "not valid msgpack"),
        ("truncated-body", lambda seq: [lidar_frames(seq)[0], lidar_frames(seq)[1][:-9]], MalformedFrame, "not valid msgpack"),
        ("body-not-a-map", lambda seq: [TOPIC.encode(), msgpack.packb([1, 2])], MalformedFrame, "body is not a map"),
        ("data-not-a-map", lambda seq: edit_body(lidar_frames(seq), _set("data", [1])), MalformedFrame, "'data' is not a map"),
        ("inline-not-bytes", lambda seq: edit_body(lidar_frames(seq), _set("data.ranges_m.data", "text")), MalformedFrame,
         "inline tensor data must be bytes"),
        ("extra-frame", lambda seq: [*lidar_frames(seq), b"\x00" * 8], MalformedFrame, "not referenced"),
        ("unknown-schema", lambda seq: edit_body(lidar_frames(seq), _set("header.schema", "sensor.sonar")), UnknownSchema,
         "unknown schema 'sensor.sonar'"),
        ("major-2", lambda seq: edit_body(lidar_frames(seq), _set("header.schema_version", "2.0")), UnsupportedVersion,
         "'sensor.lidar' major version 2 is not supported"),
        ("wire-2", lambda seq: edit_body(lidar_frames(seq), _set("oni", 2)), UnsupportedVersion, "wire version 2"),
        ("too-large", _big, PayloadTooLarge, "limit is 100000"),
        ("dtype", lambda seq: lidar_frames(seq, ranges_m=np.ones(360)), TensorMismatch,
         "field 'ranges_m': dtype 'float64' is not allowed"),
        ("ndim", lambda seq: lidar_frames(seq, ranges_m=np.ones((2, 180), dtype=np.float32)), TensorMismatch,
         "field 'ranges_m': shape [2, 180] must be a list of 1..1"),
        ("byte-length", lambda seq: edit_body(lidar_frames(seq), _set("data.ranges_m.shape", [361])), TensorMismatch,
         "field 'ranges_m': float32[361] needs 1444 bytes, got 1440"),
        ("frame-index", lambda seq: edit_body(lidar_frames(seq, ranges_m=np.ones(1000, dtype=np.float32)),
                                              _set("data.ranges_m.frame", 3)), TensorMismatch,
         "field 'ranges_m' refers to tensor frame 3"),
        ("nan-tensor", lambda seq: lidar_frames(seq, ranges_m=np.array([1.0, np.nan, 2.0], dtype=np.float32)),
         NonFiniteValue, "tensor 'ranges_m' holds 1 NaN/Inf"),
        ("inf-tensor-frame", lambda seq: lidar_frames(seq, ranges_m=np.r_[np.ones(999), np.inf].astype(np.float32)),
         NonFiniteValue, "tensor 'ranges_m' holds 1 NaN/Inf"),
        ("nan-scalar", lambda seq: lidar_frames(seq, angle_min_rad=float("nan")), NonFiniteValue, "field 'angle_min_rad' is nan"),
        ("inf-scalar", lambda seq: lidar_frames(seq, angle_min_rad=float("inf")), NonFiniteValue, "field 'angle_min_rad' is inf"),
        ("missing-field", lambda seq: edit_body(lidar_frames(seq), _delete("data.range_max_m")), SchemaViolation,
         "range_max_m"),
    ]


CASES = bad_cases()
LIMITS = DecodeLimits(max_message_bytes=100_000)


@pytest.mark.parametrize("name, make, error, words", CASES, ids=[c[0] for c in CASES])
def test_decode_rejects_each_kind_with_its_own_error(name, make, error, words):
    with pytest.raises(RejectedMessage) as info:
        codec.decode(make(1), limits=LIMITS)
    assert type(info.value) is error, f"{type(info.value).__name__}: {info.value}"
    assert words in str(info.value)
    assert info.value.kind == error.kind
    if name != "one-frame":  # with one frame there may not even be a topic
        assert str(info.value).startswith(f"{TOPIC}: "), "the error names its topic"


def test_good_message_decodes_within_the_limit():
    msg = codec.decode(lidar_frames(1), limits=LIMITS)
    assert msg.topic == TOPIC and msg.data["ranges_m"].shape == (360,)


def test_non_utf8_topic_is_malformed():
    with pytest.raises(MalformedFrame, match="topic frame is not UTF-8"):
        codec.decode([b"\xff\xfe", lidar_frames()[1]])


@pytest.mark.parametrize(
    "edit, error, words",
    [
        (_set("oni", True), UnsupportedVersion, "wire version True"),
        (_set("oni", 1.0), UnsupportedVersion, "wire version 1.0"),
        (_set("header.schema_version", "١.٠"), SchemaViolation, "schema_version"),
        (_set("header.schema_version", "1.0\n"), SchemaViolation, "schema_version"),
        (_set("header.seq", True), SchemaViolation, "'seq' must be int"),
        (_set("header.seq", -1), SchemaViolation, "outside uint64"),
        (_set("header.trace_id", "XYZ"), SchemaViolation, "trace_id"),
        (_set("header", [1]), MalformedFrame, "header is not a map"),
        (_delete("header.frame_id"), SchemaViolation, "missing field 'frame_id'"),
        (_set("data.ranges_m.dtype", ["float32"]), TensorMismatch, "dtype ['float32'] is not allowed"),
        (_set("data.ranges_m.encoding", {"raw": 1}), TensorMismatch, "encoding {'raw': 1} is not allowed"),
        (_set("data.ranges_m.frame", True), TensorMismatch, "exactly one of"),
        (_set("data.ranges_m.shape", [-1]), TensorMismatch, "non-negative ints"),
        (_set("data.ranges_m.shape", [1 << 40]), TensorMismatch, "non-negative ints"),
        (_set("data.ranges_m.encoding", "png"), TensorMismatch, "encoding 'png' is not allowed"),
        (_set("data.ranges_m.shm", {"segment": "..", "slot": 0, "gen": 0, "offset": 0}), TensorMismatch, "exactly one of"),
    ],
    ids=["oni-true", "oni-float", "arabic-digits", "newline", "seq-bool", "seq-negative", "trace", "header-list",
         "header-missing", "dtype-list", "encoding-map", "frame-and-data", "negative-dim", "huge-dim", "png-lidar", "shm-and-data"],
)
def test_field_types_are_checked_exactly(edit, error, words):
    with pytest.raises(RejectedMessage) as info:
        codec.decode(edit_body(lidar_frames(), edit))
    assert type(info.value) is error and words in str(info.value), str(info.value)


def test_bool_tensor_bytes_must_be_0_or_1():
    reg = SchemaRegistry()
    reg.register(ANY_SCHEMA)
    frames = codec.encode("test.any", lidar_header(1, "test.any"), {"t": np.array([True, False])})
    good = codec.decode(frames, reg)
    assert good.data["t"].tolist() == [True, False]
    bad = edit_body([bytes(f) for f in frames], _set("data.t.data", b"\x01\x02"))
    with pytest.raises(TensorMismatch, match="field 't': bool tensor bytes must be 0 or 1"):
        codec.decode(bad, reg)


@pytest.mark.parametrize(
    "where, words",
    [
        ({"segment": "..", "slot": 0, "gen": 0, "offset": 0}, "not an ONI ring"),
        ({"segment": ".", "slot": 0, "gen": 0, "offset": 0}, "not an ONI ring"),
        ({"segment": "oni-no-such-segment", "slot": 0, "gen": 0, "offset": 0}, "cannot be opened"),
        ({"segment": "a/b", "slot": 0, "gen": 0, "offset": 0}, "shm must be"),
        ({"segment": 5, "slot": 0, "gen": 0, "offset": 0}, "shm must be"),
        ({"segment": "x", "slot": "0", "gen": 0, "offset": 0}, "shm must be"),
        ({"segment": "x", "slot": 0, "gen": 0}, "shm must be"),
        (7, "shm must be"),
    ],
    ids=["dotdot", "dot", "missing", "slash", "int-name", "str-slot", "no-offset", "not-a-map"],
)
def test_hostile_shared_memory_descriptors_are_tensor_mismatches(where, words):
    desc = {"dtype": "float32", "shape": [4], "encoding": "raw", "shm": where}
    frames = edit_body(lidar_frames(), _set("data.ranges_m", desc))
    reader = ShmReader()
    try:
        with pytest.raises(TensorMismatch, match=words):
            codec.decode(frames, shm=reader.resolve)
    finally:
        reader.close()
    with pytest.raises(TensorMismatch, match="cannot map|shm must be"):
        codec.decode(frames)  # a receiver without shared memory refuses it too


# -- through a real subscriber ------------------------------------------------------------------------------


@pytest.fixture
def raw_pub(context):
    """A bare XPUB socket on a random loopback port, for sending hand-made frames."""
    sock = context.socket(zmq.XPUB)
    sock.linger = 0
    sock.sndtimeo = 2000
    sock.bind("tcp://127.0.0.1:*")
    yield sock
    sock.close(linger=0)


def wait_subscribed(xpub: zmq.Socket, topic: str, timeout_s: float = 5.0) -> None:
    """Block until ``xpub`` has seen the subscription to ``topic`` (so nothing sent after is dropped)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if xpub.poll(100, zmq.POLLIN) and xpub.recv() == b"\x01" + topic.encode():
            return
    raise AssertionError(f"no subscription to {topic!r} arrived")


def test_subscriber_counts_each_kind_and_keeps_going(context, raw_pub):
    texts: list[str] = []
    sub = Subscriber(context=context, max_message_bytes=LIMITS.max_message_bytes,
                     on_event=lambda topic, event, detail: texts.append(detail))
    try:
        sub.subscribe(TOPIC, QOS)
        sub.connect(raw_pub.getsockopt_string(zmq.LAST_ENDPOINT))
        wait_subscribed(raw_pub, TOPIC)
        raw_pub.send_multipart(lidar_frames(5))
        first = sub.recv(timeout_ms=3000)
        assert first is not None and first.header.seq == 5
        for _, make, _, _ in CASES:
            raw_pub.send_multipart(make(6))
        raw_pub.send_multipart(lidar_frames(5))  # duplicate
        raw_pub.send_multipart(lidar_frames(3))  # out of order
        raw_pub.send_multipart([b"sensor.lidar\xff", lidar_frames()[1]])  # cannot be attributed to a topic
        raw_pub.send_multipart(lidar_frames(6, ranges_m=np.full(360, 4.0, dtype=np.float32)))
        good = sub.recv(timeout_ms=3000)
        assert good is not None, f"the subscriber stopped delivering; rejects: {sub.stats[TOPIC].rejects}"
        assert good.header.seq == 6 and float(good.data["ranges_m"][0]) == 4.0
        expected: dict[str, int] = {}
        for _, _, error, _ in CASES:
            expected[error.kind] = expected.get(error.kind, 0) + 1
        expected.update({DuplicateSeq.kind: 1, OutOfOrderSeq.kind: 1})
        stats = sub.stats[TOPIC]
        assert stats.rejects == expected
        assert stats.received == 2 and stats.rejected == len(CASES) + 2
        assert sub.unattributed_rejects == 1
        for (name, _, error, words), text in zip(CASES, texts):
            assert words in text, f"{name}: {text}"
        assert "seq 5 from 'crafted' was already delivered" in texts[-2]
        assert "seq 3 from 'crafted' arrived after seq 5" in texts[-1]
    finally:
        sub.close()


def test_bad_messages_from_a_real_publisher_are_counted_and_good_ones_still_arrive(context):
    texts: list[str] = []
    with Publisher("tcp://127.0.0.1:*", {TOPIC: QOS}, source="driver", context=context) as pub, Subscriber(
        context=context, max_message_bytes=LIMITS.max_message_bytes, on_event=lambda t, e, d: texts.append(d)
    ) as sub:
        sub.subscribe(TOPIC, QOS)
        connect_and_settle(pub, sub, TOPIC, lidar_data())
        bad = [
            ({"ranges_m": np.array([1.0, np.nan], dtype=np.float32)}, "non_finite", "tensor 'ranges_m' holds 1 NaN/Inf"),
            ({"range_max_m": math.inf}, "non_finite", "field 'range_max_m' is inf"),
            ({"ranges_m": np.ones(10, dtype=np.float64)}, "tensor_mismatch", "dtype 'float64' is not allowed"),
            ({"ranges_m": np.ones((2, 5), dtype=np.float32)}, "tensor_mismatch", "shape [2, 5]"),
            ({"ranges_m": np.ones(BIG, dtype=np.float32)}, "too_large", "limit is 100000"),
            ({"range_min_m": -1.0}, "schema", "range_min_m"),
        ]
        for change, _, _ in bad:
            pub.publish(TOPIC, {**lidar_data(), **change})
        pub.publish(TOPIC, lidar_data(value=7.0))
        msg = sub.recv(timeout_ms=3000)
        assert msg is not None and float(msg.data["ranges_m"][0]) == 7.0
        kinds: dict[str, int] = {}
        for _, kind, _ in bad:
            kinds[kind] = kinds.get(kind, 0) + 1
        assert sub.stats[TOPIC].rejects == kinds
        for (_, _, words), text in zip(bad, texts):
            assert words in text, text


# -- fuzzing ------------------------------------------------------------------------------------------------

_SHM = ShmReader()


def _seed_messages() -> list[list[bytes]]:
    """Valid messages of every core topic, inline and with frames, raw, quantized and png."""
    seeds = []
    for topic, data in SAMPLES.items():
        header = Header(topic, "1.0", 7, "seed", 1, 2, "f", TRACE)
        seeds.append([bytes(f) for f in codec.encode(topic, header, data)])
        seeds.append([bytes(f) for f in codec.encode(topic, header, data, inline_max=64)])
    small_png = {**SAMPLES["sensor.depth"], "depth": Png(np.arange(20, dtype=np.uint16).reshape(4, 5))}
    seeds.append([b"sensor.depth", codec.pack(Header("sensor.depth", "1.0", 1, "s", 1, 2, "f", TRACE), small_png)])
    quant = {**lidar_data(8), "ranges_m": Quantized(np.linspace(0.2, 9, 8, dtype=np.float32), "int16")}
    seeds.append([bytes(f) for f in codec.encode(TOPIC, Header(TOPIC, "1.0", 1, "s", 1, 2, "f", TRACE), quant, 0)])
    for seed in seeds:
        codec.decode(seed, shm=_SHM.resolve)  # every seed is valid
    return seeds


SEEDS = _seed_messages()

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(1 << 63), (1 << 64) - 1)
    | st.sampled_from([0, 1, 2, -1, 3, 1 << 31, (1 << 64) - 1])
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(sorted(DTYPES) + ["raw", "quantized", "png", "frame", "data", "shm", "1.0", "2.0", ".."])
    | st.binary(max_size=24)
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8) | st.sampled_from(["dtype", "shape", "encoding", "frame", "data", "shm", "scale", "zero_point", "qdtype"]), inner, max_size=4),
    max_leaves=10,
)


def check_outcome(frames: list[Any]) -> None:
    """The decoder's contract: a valid, JSON-ready message, or a RejectedMessage. Anything else fails."""
    try:
        msg = codec.decode(frames, limits=LIMITS, shm=_SHM.resolve)
    except RejectedMessage as exc:
        assert exc.kind and str(exc)
        return
    assert isinstance(msg, Message)
    for value in msg.data.values():
        if isinstance(value, np.ndarray):
            assert value.dtype.name in DTYPES
            if value.dtype.kind == "f":
                assert np.isfinite(value).all()
    json.dumps(msg.to_json(), allow_nan=False)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=st.lists(st.binary(max_size=64), max_size=5))
def test_fuzz_arbitrary_frames(frames):
    check_outcome(frames)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    topic=st.sampled_from([b"sensor.lidar", b"sensor.depth", b"test", b""]),
    oni=st.sampled_from([1]) | _scalars,
    header=st.just(lidar_header(1).to_dict()) | _values | st.fixed_dictionaries({k: _scalars for k in Header.__slots__}),
    data=st.dictionaries(st.sampled_from(list(lidar_data()) + ["depth", "extra"]), _values, max_size=6),
    extra=st.lists(st.binary(max_size=32), max_size=2),
)
def test_fuzz_structured_bodies(topic, oni, header, data, extra):
    check_outcome([topic, msgpack.packb({"oni": oni, "header": header, "data": data}), *extra])


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a value inside a decoded msgpack body (map keys and list indices)."""
    out = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, prefix + (i,))
    return out


@st.composite
def mutated_message(draw: st.DrawFn) -> list[bytes]:
    frames = [bytearray(f) for f in draw(st.sampled_from(SEEDS))]
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "cut", "frames", "replace", "replace", "delete", "add"]))
        k = draw(st.integers(0, len(frames) - 1)) if frames else 0
        if op == "flip" and frames and frames[k]:
            i = draw(st.integers(0, len(frames[k]) - 1))
            frames[k][i] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut" and frames:
            frames[k] = frames[k][: draw(st.integers(0, len(frames[k])))]
        elif op == "frames":
            action = draw(st.sampled_from(["drop", "dup", "append"]))
            if action == "drop" and frames:
                del frames[k]
            elif action == "dup" and frames:
                frames.insert(k, bytearray(frames[k]))
            else:
                frames.append(bytearray(draw(st.binary(max_size=64))))
        elif len(frames) >= 2:
            try:
                body = msgpack.unpackb(bytes(frames[1]), strict_map_key=False)
            except Exception:  # an earlier mutation broke the body: leave it broken
                continue
            paths = [p for p in _paths(body) if p]
            if not paths and op != "add":
                continue
            if op == "add":
                parents = [p for p in _paths(body) if isinstance(_get(body, p), dict)]
                if not parents:
                    continue
                parent = _get(body, draw(st.sampled_from(parents)))
                parent[draw(st.text(max_size=8) | st.sampled_from(["frame", "shm", "data", "extra"]))] = draw(_values)
            else:
                path = draw(st.sampled_from(paths))
                parent = _get(body, path[:-1])
                if op == "replace":
                    parent[path[-1]] = draw(_values)
                elif isinstance(parent, dict):
                    del parent[path[-1]]
                else:
                    parent.pop(path[-1])
            frames[1] = bytearray(msgpack.packb(body))
    return [bytes(f) for f in frames]


def _get(node: Any, path: tuple) -> Any:
    for key in path:
        node = node[key]
    return node


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(frames=mutated_message())
def test_fuzz_mutated_valid_messages(frames):
    check_outcome(frames)
