"""Lossless PNG for ONI image tensors, on zlib and numpy alone.

Encodes ``uint8`` and ``uint16`` images of shape ``(H, W)`` or ``(H, W, C)`` with ``C`` in 1..4
(grey, grey+alpha, RGB, RGBA), non-interlaced, with the ``Up`` filter (vectorised, and good on
smooth depth images). Decodes any non-interlaced PNG of those colour types and bit depths 8 and 16,
with all five filter types, so images from other encoders are read too.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PNG colour type by channel count, and back.
_COLOR_TYPE = {1: 0, 2: 4, 3: 2, 4: 6}
_CHANNELS = {v: k for k, v in _COLOR_TYPE.items()}


class PngError(ValueError):
    """The bytes are not a PNG this codec reads, or the array is not one it writes."""


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(image: np.ndarray, level: int = 6) -> bytes:
    """Encode ``image`` (uint8/uint16, ``(H, W)`` or ``(H, W, C)``, C in 1..4) as PNG bytes."""
    if image.dtype not in (np.uint8, np.uint16):
        raise PngError(f"png encodes uint8 or uint16 images, got dtype {image.dtype}")
    if image.ndim == 2:
        channels = 1
    elif image.ndim == 3 and image.shape[2] in _COLOR_TYPE:
        channels = image.shape[2]
    else:
        raise PngError(f"png encodes shape (H, W) or (H, W, C) with C in 1..4, got {image.shape}")
    height, width = image.shape[:2]
    if height == 0 or width == 0:
        raise PngError(f"png cannot encode an empty image of shape {image.shape}")
    depth = 8 * image.dtype.itemsize
    rows = np.ascontiguousarray(image, dtype=image.dtype.newbyteorder(">")).view(np.uint8)
    rows = rows.reshape(height, width * channels * image.dtype.itemsize)
    filtered = np.empty((height, rows.shape[1] + 1), dtype=np.uint8)
    filtered[:, 0] = 2  # Up: each byte minus the byte above it (mod 256)
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
    ihdr = struct.pack(">IIBBBBB", width, height, depth, _COLOR_TYPE[channels], 0, 0, 0)
    return (
        _SIGNATURE
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(filtered.tobytes(), level))
        + _chunk(b"IEND", b"")
    )


def _unfilter(raw: np.ndarray, height: int, stride: int, bpp: int) -> np.ndarray:
    """Undo PNG per-row filters. ``raw`` is ``(height, 1 + stride)`` uint8; returns ``(height, stride)``."""
    out = np.zeros((height, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.uint8)
    for y in range(height):
        kind = int(raw[y, 0])
        line = raw[y, 1:]
        cur = out[y]
        if kind == 0:
            cur[:] = line
        elif kind == 2:
            np.add(line, prev, out=cur)
        elif kind == 1:
            # Sub is a running sum per byte lane; uint8 arithmetic wraps like the spec's mod 256.
            lanes = line.reshape(-1, bpp)
            cur[:] = np.cumsum(lanes, axis=0, dtype=np.uint8).reshape(-1)
        elif kind in (3, 4):
            left = np.zeros(bpp, dtype=np.int32)
            up_left = np.zeros(bpp, dtype=np.int32)
            up_all = prev.astype(np.int32)
            line32 = line.astype(np.int32)
            res = np.empty(stride, dtype=np.int32)
            for x in range(0, stride, bpp):
                up = up_all[x : x + bpp]
                if kind == 3:
                    val = (line32[x : x + bpp] + (left + up) // 2) & 0xFF
                else:
                    p = left + up - up_left
                    pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - up_left)
                    pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, up_left))
                    val = (line32[x : x + bpp] + pred) & 0xFF
                res[x : x + bpp] = val
                left, up_left = val, up
            cur[:] = res
        else:
            raise PngError(f"png row {y} has unknown filter type {kind}")
        prev = cur
    return out


def decode_png(
    data: bytes | memoryview, shape: tuple[int, ...] | None = None, dtype: np.dtype | None = None
) -> np.ndarray:
    """Decode PNG bytes to ``(H, W)`` (grey) or ``(H, W, C)`` uint8/uint16. Raises :class:`PngError`.

    With ``shape``/``dtype`` (what a tensor descriptor says), an image that disagrees is refused from its
    header, before any pixel data is inflated; a grey image matches ``(H, W)`` and ``(H, W, 1)``.
    """
    buf = bytes(data)
    if not buf.startswith(_SIGNATURE):
        raise PngError("not a PNG: bad signature")
    pos, idat, header = len(_SIGNATURE), [], None
    while True:
        if pos + 12 > len(buf):
            raise PngError("png is truncated: it ends before its IEND chunk")
        (length,) = struct.unpack_from(">I", buf, pos)
        kind = buf[pos + 4 : pos + 8]
        body = buf[pos + 8 : pos + 8 + length]
        if len(body) != length or pos + 12 + length > len(buf):
            raise PngError(f"png chunk {kind!r} is truncated")
        (crc,) = struct.unpack_from(">I", buf, pos + 8 + length)
        if crc != zlib.crc32(kind + body) & 0xFFFFFFFF:
            raise PngError(f"png chunk {kind!r} fails its CRC")
        if kind == b"IHDR":
            if length != 13:
                raise PngError("png IHDR must be 13 bytes")
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        pos += 12 + length
    if header is None or not idat:
        raise PngError("png has no IHDR or no IDAT")
    width, height, depth, color, _comp, _filt, interlace = header
    if color not in _CHANNELS or depth not in (8, 16) or interlace != 0:
        raise PngError(f"png colour type {color} / depth {depth} / interlace {interlace} is not supported")
    if width == 0 or height == 0 or width * height > 1 << 28:
        raise PngError(f"png size {width}x{height} is out of range")
    channels = _CHANNELS[color]
    found = (height, width) if channels == 1 else (height, width, channels)
    found_dtype = np.dtype(np.uint16 if depth == 16 else np.uint8)
    if (shape is not None and tuple(shape) not in (found, (height, width, channels))) or (
        dtype is not None and np.dtype(dtype).newbyteorder("=") != found_dtype
    ):
        raise PngError(
            f"png holds {found_dtype}{list(found)}, descriptor says "
            f"{np.dtype(dtype if dtype is not None else found_dtype).name}{list(shape if shape is not None else found)}"
        )
    bpp = channels * depth // 8
    stride = width * bpp
    expected = height * (stride + 1)
    inflater = zlib.decompressobj()
    try:
        # Bounded: a small, hostile IDAT must not inflate to more than the header promises.
        raw = inflater.decompress(b"".join(idat), expected + 1)
    except zlib.error as exc:
        raise PngError(f"png image data does not inflate: {exc}") from None
    if len(raw) != expected:
        raise PngError(f"png image data is {len(raw) if len(raw) <= expected else 'over'} bytes, expected {expected}")
    rows = _unfilter(np.frombuffer(raw, dtype=np.uint8).reshape(height, stride + 1), height, stride, bpp)
    dtype = np.dtype(">u2") if depth == 16 else np.dtype(np.uint8)
    image = rows.view(dtype).astype(dtype.newbyteorder("="), copy=False).reshape(height, width, channels)
    return image[:, :, 0] if channels == 1 else image
