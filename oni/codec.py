"""Encoding and decoding ONI v1 messages (docs/oni-v1.md, "Wire format").

A message on the bus is a ZeroMQ multipart message::

    frame 0      topic, UTF-8
    frame 1      body: msgpack map {"oni": 1, "header": {...}, "data": {...}}
    frames 2..   tensor bytes, referenced from descriptors in "data" by {"frame": k} (k = 0 for frame 2)

Small tensors travel inline in their descriptor (``"data": <bin>``); large ones in their own frame, sent and
received without a copy. The *packed* form (MCAP records, golden files) is the body alone with every tensor
inline. Decoding validates in a fixed order and raises the matching :class:`~oni.errors.RejectedMessage`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import msgpack
import numpy as np

from oni.errors import (
    EncodeError,
    MalformedFrame,
    NonFiniteValue,
    PayloadTooLarge,
    RejectedMessage,
    SchemaViolation,
    TensorMismatch,
    UnsupportedVersion,
)
from oni.message import HEADER_FIELDS, WIRE_VERSION, Header, Message
from oni.schema import CompiledSchema, SchemaRegistry, parse_version
from oni.shm import ShmDescriptor
from oni.tensor import (
    FLOAT_DTYPES,
    Png,
    Quantized,
    check_descriptor,
    decode_tensor,
    encode_tensor,
)

#: Tensors below this many bytes go inline in the body; larger ones get their own zero-copy frame.
INLINE_MAX_BYTES = 2048
#: Default receive limit for a whole message (all frames).
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024

_HEADER_TYPES = (str, str, int, str, int, int, str, str)
_TENSOR_WRAPPERS = (Quantized, Png)
_TRACE_ID = re.compile("[0-9a-f]{32}")
_SCHEMA_NAME = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+")
_SCHEMA_VERSION = re.compile(r"[0-9]{1,4}\.[0-9]{1,4}")
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_UINT64_MAX = (1 << 64) - 1
_VERSION_CACHE_MAX = 4096


@dataclass(frozen=True)
class DecodeLimits:
    """Receiver-side limits. ``max_message_bytes`` bounds the sum of all frames."""

    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES


#: Resolves a shared-memory descriptor to ``(array, lease)``; supplied by a subscriber that reads shm.
ShmResolver = Callable[[Mapping[str, Any], Mapping[str, Any], str], tuple[np.ndarray, Any]]


def _pack_value(key: str, value: Any, frames: list[Any] | None, inline_max: int) -> Any:
    kind = type(value)
    if kind is float or kind is int or kind is str or kind is bool:  # the common case first: it runs per field
        return value
    if kind is np.ndarray or isinstance(value, (np.ndarray, *_TENSOR_WRAPPERS)):
        desc, buf = encode_tensor(value)
        if frames is None or memoryview(buf).nbytes < inline_max:
            desc["data"] = buf
        else:
            desc["frame"] = len(frames)
            frames.append(buf)
        return desc
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)) and all(isinstance(v, (bool, int, float, str)) for v in value):
        return list(value)
    if isinstance(value, ShmDescriptor):
        if frames is None:
            raise EncodeError(f"field {key!r}: a shared-memory tensor cannot be packed; copy it into an array first")
        return value
    raise EncodeError(
        f"field {key!r}: ONI data fields are scalars, strings, lists of scalars or tensors, got {type(value).__name__}"
    )


def _body(header: Header, data: Mapping[str, Any], frames: list[Any] | None, inline_max: int) -> bytes:
    packed = {key: _pack_value(key, value, frames, inline_max) for key, value in data.items()}
    return msgpack.packb({"oni": WIRE_VERSION, "header": header.to_dict(), "data": packed}, use_bin_type=True)


def encode(topic: str, header: Header, data: Mapping[str, Any], inline_max: int = INLINE_MAX_BYTES) -> list[Any]:
    """Encode to wire frames ``[topic, body, *tensor_buffers]``. Tensor buffers are not copied."""
    frames: list[Any] = []
    body = _body(header, data, frames, inline_max)
    return [topic.encode(), body, *frames]


def pack(header: Header, data: Mapping[str, Any]) -> bytes:
    """Encode to the packed single-buffer form (every tensor inline)."""
    return _body(header, data, None, 0)


def _header(raw: Any, topic: str) -> Header:
    """Check the header against oni.common.v1.json's definition (in code: it runs on every message).

    The ``schema`` and ``schema_version`` patterns are checked by :func:`_lookup_schema`.
    """
    if type(raw) is not dict:
        raise MalformedFrame("header is not a map", topic=topic)
    try:
        schema, version, seq = raw["schema"], raw["schema_version"], raw["seq"]
        source, stamp_ns, pub_ns = raw["source"], raw["stamp_ns"], raw["pub_ns"]
        frame_id, trace_id = raw["frame_id"], raw["trace_id"]
    except KeyError as exc:
        raise SchemaViolation(f"header is missing field {exc.args[0]!r}", topic=topic) from None
    if (
        type(schema) is not str
        or type(version) is not str
        or type(seq) is not int
        or type(source) is not str
        or type(stamp_ns) is not int
        or type(pub_ns) is not int
        or type(frame_id) is not str
        or type(trace_id) is not str
    ):
        for name, kind in zip(HEADER_FIELDS, _HEADER_TYPES):
            if type(raw[name]) is not kind:
                raise SchemaViolation(
                    f"header field {name!r} must be {kind.__name__}, got {type(raw[name]).__name__}", topic=topic
                )
    if not 0 <= seq <= _UINT64_MAX:
        raise SchemaViolation(f"header seq {seq} is outside uint64", topic=topic)
    if not (_INT64_MIN <= stamp_ns <= _INT64_MAX and _INT64_MIN <= pub_ns <= _INT64_MAX):
        raise SchemaViolation("header stamp_ns/pub_ns must fit in int64", topic=topic)
    if len(trace_id) != 32 or _TRACE_ID.fullmatch(trace_id) is None:
        raise SchemaViolation(f"header trace_id {trace_id[:40]!r} is not 32 lowercase hex digits", topic=topic)
    if len(source) > 256 or len(frame_id) > 256:
        raise SchemaViolation("header source and frame_id are at most 256 characters", topic=topic)
    return Header(schema, version, seq, source, stamp_ns, pub_ns, frame_id, trace_id)


def _lookup_schema(registry: SchemaRegistry, header: Header, topic: str) -> CompiledSchema:
    """The schema a header names, checking the name and version patterns on a registry cache miss only.

    A (name, version) pair in the cache was valid and registered when first seen, so later messages skip the
    pattern checks; only pairs the registry resolved are cached.
    """
    key = (header.schema, header.schema_version)
    schema = registry.by_version.get(key)
    if schema is not None:
        return schema
    if _SCHEMA_NAME.fullmatch(header.schema) is None or len(header.schema) > 128:
        raise SchemaViolation(f"header schema {header.schema[:40]!r} is not a dotted lowercase type name", topic=topic)
    if _SCHEMA_VERSION.fullmatch(header.schema_version) is None:
        raise SchemaViolation(f"header schema_version {header.schema_version[:40]!r} is not 'MAJOR.MINOR'", topic=topic)
    major, _minor = parse_version(header.schema_version)
    schema = registry.get(header.schema, major, topic=topic)
    if len(registry.by_version) < _VERSION_CACHE_MAX:
        registry.by_version[key] = schema
    return schema


def decode_body(
    body: Any,
    tensor_frames: Sequence[Any],
    topic: str,
    registry: SchemaRegistry,
    shm: ShmResolver | None = None,
) -> Message:
    """Validate a msgpack-decoded body and build the :class:`Message`; tensors come from ``tensor_frames``."""
    if not isinstance(body, dict) or "header" not in body or "data" not in body:
        raise MalformedFrame("body is not a map with 'oni', 'header' and 'data'", topic=topic)
    if type(body.get("oni")) is not int or body["oni"] != WIRE_VERSION:
        raise UnsupportedVersion(f"wire version {body.get('oni')!r} is not supported (this is ONI v{WIRE_VERSION})", topic=topic)
    header = _header(body["header"], topic)
    schema = _lookup_schema(registry, header, topic)
    raw_data = body["data"]
    if not isinstance(raw_data, dict):
        raise MalformedFrame("'data' is not a map", topic=topic)
    schema.validate_data(raw_data, topic=topic)
    rules = schema.tensor_rules
    known = schema.document["properties"]["data"]["properties"]
    data: dict[str, Any] = {}
    leases: list[Any] = []
    used: set[int] = set()
    for key, value in raw_data.items():
        if key not in known:
            # A field a later minor version added: receivers ignore what they do not know, scalar or tensor
            # alike. A tensor frame it refers to still counts as referenced, so the frame accounting holds.
            if isinstance(value, dict) and "frame" in value:
                _claim_frame(key, value["frame"], len(tensor_frames), used, topic)
            continue
        if key in rules:  # validate_data has checked a tensor field's value is a map
            try:
                array = _decode_tensor_field(key, value, rules[key], tensor_frames, used, shm, leases)
            except RejectedMessage as exc:
                if exc.topic is not None:
                    raise
                raise type(exc)(str(exc), topic=topic) from None
            # Shared-memory tensors were checked by their producer (see oni.transport.Publisher._to_shm).
            if value["dtype"] in FLOAT_DTYPES and key not in schema.nonfinite_ok and array.size and "shm" not in value:
                check_finite_array(array, key, topic)
            data[key] = array
        else:
            if isinstance(value, float) and not math.isfinite(value) and key not in schema.nonfinite_ok:
                raise NonFiniteValue(f"field {key!r} is {value}", topic=topic)
            if isinstance(value, list):
                for item in value:
                    if isinstance(item, float) and not math.isfinite(item) and key not in schema.nonfinite_ok:
                        raise NonFiniteValue(f"field {key!r} holds {item}", topic=topic)
            data[key] = value
    if len(used) != len(tensor_frames):
        raise MalformedFrame(f"{len(tensor_frames) - len(used)} tensor frame(s) are not referenced by any field", topic=topic)
    return Message(topic=topic, header=header, data=data, shm_leases=leases)


def _claim_frame(key: str, index: Any, count: int, used: set[int], topic: str | None) -> int:
    """Check a descriptor's ``frame`` index refers to a tensor frame no other field took, and take it."""
    if type(index) is not int or not 0 <= index < count or index in used:
        reason = "is already used by another field" if type(index) is int and index in used else "does not exist"
        raise TensorMismatch(
            f"field {key!r} refers to tensor frame {index!r}, which {reason} (the message has {count})", topic=topic
        )
    used.add(index)
    return index


def _decode_tensor_field(
    key: str,
    value: dict[str, Any],
    rule: Any,
    tensor_frames: Sequence[Any],
    used: set[int],
    shm: ShmResolver | None,
    leases: list[Any],
) -> np.ndarray:
    """Check one tensor descriptor against its schema rule and rebuild its array from a frame, inline or shm."""
    check_descriptor(value, rule, key)
    if "frame" in value:
        index = _claim_frame(key, value["frame"], len(tensor_frames), used, None)
        return decode_tensor(value, tensor_frames[index], field=key)
    if "data" in value:
        if not isinstance(value["data"], (bytes, bytearray, memoryview)):
            raise MalformedFrame(f"field {key!r}: inline tensor data must be bytes")
        return decode_tensor(value, value["data"], field=key)
    if shm is None:
        raise TensorMismatch(f"field {key!r} is in shared memory, which this receiver cannot map")
    array, lease = shm(value, value["shm"], key)
    leases.append(lease)
    return array


def check_finite_array(array: np.ndarray, key: str, topic: str) -> None:
    """Raise :class:`NonFiniteValue` naming ``key`` if ``array`` (a float tensor) holds NaN or Inf."""
    # numpy's vectorised isfinite makes the exact test the fastest for float32 (4-7x a float64 sum on a
    # 1-4 MB tensor, numpy 2.x) and float64 (even). float16 has no vectorised isfinite; there a float64
    # sum, NaN/Inf iff some element is (float16 values cannot overflow it), stays faster.
    if array.dtype.itemsize == 2:
        finite = math.isfinite(float(array.sum(dtype=np.float64)))
    else:
        finite = bool(np.isfinite(array).all())
    if not finite:
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise NonFiniteValue(f"tensor {key!r} holds {bad} NaN/Inf value(s)", topic=topic)


def _unpack_body(body: Any, topic: str) -> Any:
    try:
        return msgpack.unpackb(body, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types for corrupt input
        raise MalformedFrame(f"body is not valid msgpack: {type(exc).__name__}: {exc}", topic=topic) from None


def decode(
    frames: Sequence[Any],
    registry: SchemaRegistry | None = None,
    limits: DecodeLimits = DecodeLimits(),
    shm: ShmResolver | None = None,
) -> Message:
    """Decode wire frames (bytes or buffers) into a validated :class:`Message`."""
    if len(frames) < 2:
        raise MalformedFrame(f"an ONI message has at least 2 frames (topic, body), got {len(frames)}")
    total = sum(memoryview(f).nbytes for f in frames)
    try:
        topic = bytes(frames[0]).decode()
    except UnicodeDecodeError:
        raise MalformedFrame("topic frame is not UTF-8") from None
    if total > limits.max_message_bytes:
        raise PayloadTooLarge(f"message is {total} bytes, limit is {limits.max_message_bytes}", topic=topic)
    body = _unpack_body(frames[1], topic)
    return decode_body(body, frames[2:], topic, registry or SchemaRegistry.default(), shm)


def unpack(buf: bytes | memoryview, topic: str, registry: SchemaRegistry | None = None) -> Message:
    """Decode the packed single-buffer form (as stored in MCAP records and golden files)."""
    return decode_body(_unpack_body(buf, topic), (), topic, registry or SchemaRegistry.default())
