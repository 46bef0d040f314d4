"""Tensor payloads: the dtypes ONI carries and the ``raw``, ``quantized`` and ``png`` encodings.

A tensor travels as a *descriptor* (a small map in the message body: dtype, shape, encoding and its
parameters) plus its bytes, either in their own ZeroMQ frame (zero-copy) or inline in the descriptor.
Bytes are little-endian, C order. See docs/oni-v1.md, "Tensors".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from oni.errors import EncodeError, TensorMismatch
from oni.png import PngError, decode_png, encode_png

#: Wire name -> numpy dtype (always little-endian on the wire).
DTYPES: dict[str, np.dtype] = {
    name: np.dtype(name).newbyteorder("<")
    for name in (
        "bool",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "float16",
        "float32",
        "float64",
    )
}
_DTYPE_NAMES = {dt.newbyteorder("="): name for name, dt in DTYPES.items()}
QUANT_DTYPES = ("int8", "uint8", "int16", "uint16")
FLOAT_DTYPES = ("float16", "float32", "float64")
ENCODINGS = ("raw", "quantized", "png")
#: A shared-memory segment name, as oni.common.v1.json's tensor descriptor allows it.
_SHM_SEGMENT = re.compile(r"[A-Za-z0-9_.-]{1,200}")
#: Refuse descriptors whose shape alone would allocate absurd memory (a hostile or corrupt message).
MAX_ELEMENTS = 1 << 31


def dtype_name(dtype: np.dtype) -> str:
    """The ONI wire name of a numpy dtype; raises :class:`EncodeError` for one ONI does not carry."""
    name = _DTYPE_NAMES.get(dtype)  # native-order dtypes: one dict lookup (this runs on every tensor sent)
    if name is not None:
        return name
    try:
        return _DTYPE_NAMES[np.dtype(dtype).newbyteorder("=")]
    except KeyError:
        raise EncodeError(f"dtype {dtype} is not an ONI tensor dtype; use one of {sorted(DTYPES)}") from None


@dataclass(frozen=True)
class Quantized:
    """Ask for affine quantisation of a float tensor: ``value = (q - zero_point) * scale``.

    Give both ``scale`` and ``zero_point``, or neither: then both are fitted to the tensor's min/max.
    """

    array: np.ndarray
    qdtype: str = "uint8"
    scale: float | None = None
    zero_point: int | None = None


@dataclass(frozen=True)
class Png:
    """Ask for lossless PNG encoding of a uint8/uint16 image ``(H, W)`` or ``(H, W, C)``."""

    array: np.ndarray
    level: int = 6


TensorLike = np.ndarray | Quantized | Png


def fit_quantization(array: np.ndarray, qdtype: str) -> tuple[float, int]:
    """Scale and zero point mapping ``array``'s [min, max] onto the full range of ``qdtype``."""
    info = np.iinfo(DTYPES[qdtype])
    lo, hi = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
    lo, hi = min(lo, 0.0), max(hi, 0.0)  # keep 0 exactly representable
    span = info.max - info.min
    scale = hi / span - lo / span  # not (hi - lo) / span: that overflows for values near the float64 limits
    if not scale > 0:
        scale = 1.0  # all zeros, or values so small that the scale underflows: everything maps to 0
    zero_point = int(round(info.min - lo / scale))
    return scale, int(np.clip(zero_point, info.min, info.max))


def encode_tensor(value: TensorLike) -> tuple[dict[str, Any], Any]:
    """Split a tensor into its descriptor and its bytes (a buffer; raw tensors are not copied).

    Returns ``(descriptor, buffer)``; the caller places the buffer in a frame or inline.
    """
    if isinstance(value, Quantized):
        array = np.asarray(value.array)
        name = dtype_name(array.dtype)
        if name not in FLOAT_DTYPES:
            raise EncodeError(f"quantized encoding takes a float tensor, got {name}")
        if value.qdtype not in QUANT_DTYPES:
            raise EncodeError(f"qdtype must be one of {QUANT_DTYPES}, got {value.qdtype!r}")
        if not np.isfinite(array).all():
            raise EncodeError("quantized encoding needs finite values")
        if value.scale is None and value.zero_point is None:
            scale, zero_point = fit_quantization(array, value.qdtype)
        elif value.scale is None or value.zero_point is None:
            raise EncodeError("quantized encoding takes both scale and zero_point, or neither (both fitted)")
        else:
            scale, zero_point = float(value.scale), int(value.zero_point)
        if not (np.isfinite(scale) and scale > 0):
            raise EncodeError(f"quantization scale must be finite and > 0, got {scale}")
        info = np.iinfo(DTYPES[value.qdtype])
        # In float64: float16 arithmetic would overflow and round away the low bits of 16-bit codes.
        with np.errstate(over="ignore"):  # values beyond the code range saturate, by design
            q = np.rint(array.astype(np.float64) / scale) + zero_point
        q = np.clip(q, info.min, info.max).astype(DTYPES[value.qdtype])
        desc = {
            "dtype": name,
            "shape": list(array.shape),
            "encoding": "quantized",
            "qdtype": value.qdtype,
            "scale": scale,
            "zero_point": zero_point,
        }
        return desc, q.data if q.flags.c_contiguous else q.tobytes()
    if isinstance(value, Png):
        array = np.asarray(value.array)
        try:
            data = encode_png(array, value.level)
        except PngError as exc:
            raise EncodeError(str(exc)) from None
        return {"dtype": dtype_name(array.dtype), "shape": list(array.shape), "encoding": "png"}, data
    array = np.asarray(value)
    name = dtype_name(array.dtype)
    if array.flags.c_contiguous and array.ndim and array.size and array.dtype.byteorder != ">":
        return {"dtype": name, "shape": list(array.shape), "encoding": "raw"}, array.data.cast("B")
    if array.dtype.byteorder == ">" or not array.flags.c_contiguous:
        array = np.asarray(array, dtype=DTYPES[name], order="C")  # not ascontiguousarray: it makes 0-d 1-d
    buf = array.data.cast("B") if array.ndim and array.size else array.tobytes()  # memoryview cannot cast 0-d/empty
    return {"dtype": name, "shape": list(array.shape), "encoding": "raw"}, buf


def decode_tensor(desc: dict[str, Any], buf: Any, *, field: str) -> np.ndarray:
    """Rebuild the array a descriptor and its bytes stand for. Raw tensors are read-only views of ``buf``.

    Raises :class:`TensorMismatch` naming ``field`` when the bytes disagree with the descriptor.
    """
    dtype = DTYPES[desc["dtype"]]
    shape = tuple(desc["shape"])
    count = 1
    for dim in shape:
        count *= dim
    if count > MAX_ELEMENTS:
        raise TensorMismatch(f"field {field!r}: shape {list(shape)} has more than {MAX_ELEMENTS} elements")
    encoding = desc["encoding"]
    nbytes = memoryview(buf).nbytes
    if encoding == "raw":
        if nbytes != count * dtype.itemsize:
            raise TensorMismatch(
                f"field {field!r}: {desc['dtype']}{list(shape)} needs {count * dtype.itemsize} bytes, got {nbytes}"
            )
        if dtype.kind == "b" and count and np.frombuffer(buf, dtype=np.uint8).max() > 1:
            # numpy would keep other byte values as "true" bools that compare unequal to True
            raise TensorMismatch(f"field {field!r}: bool tensor bytes must be 0 or 1")
        array = np.frombuffer(buf, dtype=dtype).reshape(shape)
        array.flags.writeable = False  # a view of the received frame, shared with whoever holds it
        return array
    if encoding == "quantized":
        qdtype = DTYPES[desc["qdtype"]]
        if nbytes != count * qdtype.itemsize:
            raise TensorMismatch(
                f"field {field!r}: quantized {desc['qdtype']}{list(shape)} needs {count * qdtype.itemsize} bytes, "
                f"got {nbytes}"
            )
        q = np.frombuffer(buf, dtype=qdtype).reshape(shape)
        with np.errstate(over="ignore"):  # out-of-range parameters give Inf, which the finiteness check rejects
            out = (q.astype(np.float64) - desc["zero_point"]) * desc["scale"]
            return out.astype(dtype.newbyteorder("="))
    try:
        image = decode_png(buf, shape=shape, dtype=dtype)
    except PngError as exc:
        raise TensorMismatch(f"field {field!r}: {exc}") from None
    return image.reshape(shape)  # (H, W) grey -> (H, W, 1) when the descriptor says so


def check_descriptor(desc: dict[str, Any], rule: Any, field: str) -> None:
    """Check a received tensor descriptor is well formed and allowed by its schema's ``rule``.

    ``rule`` is a :class:`oni.schema.TensorRule` (dtypes, encodings, ndim range). Raises
    :class:`TensorMismatch` naming ``field`` and what was wrong. Equivalent to the schema's tensor
    definition; kept in code because it runs on every received tensor.
    """
    dtype, shape, encoding = desc.get("dtype"), desc.get("shape"), desc.get("encoding")
    if not isinstance(dtype, str) or dtype not in rule.dtypes:
        raise TensorMismatch(f"field {field!r}: dtype {dtype!r} is not allowed here (allowed: {sorted(rule.dtypes)})")
    if not isinstance(encoding, str) or encoding not in rule.encodings:
        raise TensorMismatch(f"field {field!r}: encoding {encoding!r} is not allowed here (allowed: {sorted(rule.encodings)})")
    if (
        not isinstance(shape, list)
        or not rule.min_ndim <= len(shape) <= rule.max_ndim
        or not all(type(d) is int and 0 <= d <= 2147483647 for d in shape)
    ):
        raise TensorMismatch(
            f"field {field!r}: shape {shape!r} must be a list of {rule.min_ndim}..{rule.max_ndim} non-negative ints"
        )
    if ("frame" in desc) + ("data" in desc) + ("shm" in desc) != 1:
        raise TensorMismatch(f"field {field!r}: a descriptor has exactly one of 'frame', 'data', 'shm'")
    if "shm" in desc:
        where = desc["shm"]
        if (
            not isinstance(where, dict)
            or not isinstance(where.get("segment"), str)
            or _SHM_SEGMENT.fullmatch(where["segment"]) is None
            or not all(type(where.get(k)) is int and where[k] >= 0 for k in ("slot", "gen", "offset"))
        ):
            raise TensorMismatch(f"field {field!r}: shm must be {{segment, slot, gen, offset}}, got {where!r:.200}")
    # The quantization keys are required for `quantized`, and (as in the schema) well typed wherever they appear.
    quantized = encoding == "quantized"
    scale, zero_point, qdtype = desc.get("scale"), desc.get("zero_point"), desc.get("qdtype")
    if quantized and dtype not in FLOAT_DTYPES:
        raise TensorMismatch(f"field {field!r}: quantized needs a float dtype, got {dtype}")
    if (quantized or "qdtype" in desc) and qdtype not in QUANT_DTYPES:
        raise TensorMismatch(f"field {field!r}: qdtype must be one of {QUANT_DTYPES}, got {qdtype!r}")
    if (quantized or "scale" in desc) and (
        not isinstance(scale, (int, float)) or isinstance(scale, bool) or not scale > 0 or scale == float("inf")
    ):
        raise TensorMismatch(f"field {field!r}: quantization scale must be a finite number > 0, got {scale!r}")
    if (quantized or "zero_point" in desc) and type(zero_point) is not int:
        raise TensorMismatch(f"field {field!r}: zero_point must be an integer, got {zero_point!r}")
    if encoding == "png" and (dtype not in ("uint8", "uint16") or len(shape) not in (2, 3)):
        raise TensorMismatch(f"field {field!r}: png carries uint8/uint16 images of 2 or 3 dimensions")
