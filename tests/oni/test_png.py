"""oni.png against Pillow, an independent PNG encoder and decoder, plus corrupt and mutated input.

Pillow's encoder picks a filter per row (None, Sub, Up, Average, Paeth); ours writes Up only. A reference
encoder here applies each filter type by the letter of the PNG spec, so every filter is decoded even if
Pillow's heuristics change.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oni.errors import TensorMismatch
from oni.png import PngError, decode_png, encode_png
from oni.tensor import decode_tensor

Image = pytest.importorskip("PIL.Image", reason="Pillow is in the dev extra: pip install oni-worldmodel[dev]")

SIGNATURE = b"\x89PNG\r\n\x1a\n"
COLOR_TYPE = {1: 0, 2: 4, 3: 2, 4: 6}


def chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """``(kind, body)`` of each chunk of a well-formed PNG."""
    out, pos = [], len(SIGNATURE)
    while pos < len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        out.append((data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return out


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def row_filters(data: bytes) -> set[int]:
    """The filter type byte of every row of a non-interlaced PNG."""
    parts = chunks(data)
    width, height, depth, color = struct.unpack(">IIBB", parts[0][1][:10])
    stride = width * {0: 1, 4: 2, 2: 3, 6: 4}[color] * depth // 8
    raw = zlib.decompress(b"".join(body for kind, body in parts if kind == b"IDAT"))
    return {raw[y * (stride + 1)] for y in range(height)}


def paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def reference_png(image: np.ndarray, filters: list[int]) -> bytes:
    """Encode ``image`` with row ``y`` filtered by ``filters[y % len(filters)]``, byte by byte as the spec says."""
    channels = 1 if image.ndim == 2 else image.shape[2]
    height, width = image.shape[:2]
    bpp = channels * image.dtype.itemsize
    rows = np.ascontiguousarray(image, dtype=image.dtype.newbyteorder(">")).view(np.uint8).reshape(height, -1)
    out = bytearray()
    prev = [0] * rows.shape[1]
    for y in range(height):
        kind = filters[y % len(filters)]
        line = [int(v) for v in rows[y]]
        out.append(kind)
        for x, value in enumerate(line):
            a = line[x - bpp] if x >= bpp else 0
            b = prev[x]
            c = prev[x - bpp] if x >= bpp else 0
            predictor = (0, a, b, (a + b) // 2, paeth(a, b, c))[kind]
            out.append((value - predictor) % 256)
        prev = line
    ihdr = struct.pack(">IIBBBBB", width, height, 8 * image.dtype.itemsize, COLOR_TYPE[channels], 0, 0, 0)
    return SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(out))) + chunk(b"IEND", b"")


def pillow_encode(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def pillow_decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def test_image(rng: np.random.Generator, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """Half smooth gradient, half noise: encoders pick different filters for each."""
    info = np.iinfo(np.dtype(dtype))
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    smooth = (xx * 37 + yy * 11) % (int(info.max) + 1)
    if len(shape) == 3:
        smooth = np.stack([(smooth + 50 * k) % (int(info.max) + 1) for k in range(shape[2])], axis=-1)
    noise = rng.integers(0, int(info.max), size=shape, endpoint=True)
    image = np.where((yy // 4 % 2 == 0)[..., None] if len(shape) == 3 else (yy // 4 % 2 == 0), smooth, noise)
    return image.astype(dtype)


test_image.__test__ = False  # a helper, not a test

PILLOW_CASES = [("uint8", (24, 33)), ("uint8", (20, 17, 2)), ("uint8", (24, 31, 3)), ("uint8", (16, 9, 4)), ("uint16", (24, 29))]


@pytest.mark.parametrize("dtype, shape", PILLOW_CASES, ids=str)
def test_pillow_png_decodes_exactly(dtype, shape):
    image = test_image(np.random.default_rng(len(shape)), dtype, shape)
    data = pillow_encode(image)
    np.testing.assert_array_equal(pillow_decode(data), image)  # Pillow itself round-trips this mode
    out = decode_png(data)
    assert out.dtype == image.dtype and out.shape == image.shape
    np.testing.assert_array_equal(out, image)


def test_pillow_corpus_uses_every_filter_type():
    used: set[int] = set()
    for dtype, shape in PILLOW_CASES:
        used |= row_filters(pillow_encode(test_image(np.random.default_rng(len(shape)), dtype, shape)))
    assert used >= {1, 2, 3, 4}, f"Pillow used only filters {sorted(used)}: the cases no longer cover all of them"


@pytest.mark.parametrize("dtype, shape", PILLOW_CASES + [("uint16", (7, 5, 3)), ("uint16", (6, 5, 4))], ids=str)
def test_every_filter_type_decodes_exactly(dtype, shape):
    image = test_image(np.random.default_rng(9), dtype, shape)
    for filters in ([0], [1], [2], [3], [4], [4, 3, 2, 1, 0]):
        data = reference_png(image, filters)
        assert row_filters(data) == set(filters)
        if dtype == "uint8" or len(shape) == 2:
            np.testing.assert_array_equal(pillow_decode(data), image)  # the reference encoder is right
        np.testing.assert_array_equal(decode_png(data), image)


@pytest.mark.parametrize("dtype, shape", PILLOW_CASES, ids=str)
def test_our_png_decodes_exactly_in_pillow(dtype, shape):
    image = test_image(np.random.default_rng(2), dtype, shape)
    for level in (0, 6, 9):
        data = encode_png(image, level)
        decoded = pillow_decode(data)
        assert decoded.shape == image.shape
        np.testing.assert_array_equal(decoded, image)
        np.testing.assert_array_equal(decode_png(data), image)


def test_grey_16_bit_full_range():
    image = np.array([[0, 1, 255, 256], [32767, 32768, 65534, 65535]], dtype=np.uint16)
    data = encode_png(image)
    assert struct.unpack(">IIBB", chunks(data)[0][1][:10]) == (4, 2, 16, 0)
    np.testing.assert_array_equal(decode_png(data), image)
    np.testing.assert_array_equal(pillow_decode(data), image)
    np.testing.assert_array_equal(decode_png(pillow_encode(image)), image)
    assert decode_png(data).dtype == np.uint16


def test_grey_image_matches_an_h_w_1_descriptor():
    image = np.arange(12, dtype=np.uint8).reshape(3, 4)
    data = encode_png(image[..., None])
    assert decode_png(data).shape == (3, 4)
    assert decode_png(data, shape=(3, 4, 1), dtype=np.uint8).shape == (3, 4)
    with pytest.raises(PngError, match=r"png holds uint8\[3, 4\], descriptor says uint8\[4, 3\]"):
        decode_png(data, shape=(4, 3), dtype=np.uint8)
    with pytest.raises(PngError, match="descriptor says uint16"):
        decode_png(data, shape=(3, 4), dtype=np.uint16)


def test_ancillary_chunks_and_split_idat_are_read():
    image = test_image(np.random.default_rng(4), "uint8", (10, 12, 3))
    parts = chunks(encode_png(image))
    idat = parts[1][1]
    data = (
        SIGNATURE
        + chunk(b"IHDR", parts[0][1])
        + chunk(b"tEXt", b"Comment\x00hello")
        + chunk(b"IDAT", idat[:5])
        + chunk(b"IDAT", idat[5:])
        + chunk(b"IEND", b"")
    )
    np.testing.assert_array_equal(decode_png(data), image)


# -- corrupt input ------------------------------------------------------------------------------------------

GOOD = encode_png(np.arange(48, dtype=np.uint8).reshape(4, 4, 3))


def _replace_chunk(data: bytes, kind: bytes, body: bytes) -> bytes:
    return SIGNATURE + b"".join(chunk(k, body if k == kind else b) for k, b in chunks(data))


@pytest.mark.parametrize(
    "data, words",
    [
        (b"GIF89a" + GOOD[6:], "bad signature"),
        (b"", "bad signature"),
        (GOOD[:-7], "truncated"),
        (GOOD[:40], "truncated"),
        (GOOD[:8], "truncated"),
        (GOOD[:33], "truncated"),
        (GOOD[:33] + chunk(b"IEND", b""), "no IHDR or no IDAT"),
        (GOOD[:20] + bytes([GOOD[20] ^ 0x01]) + GOOD[21:], "fails its CRC"),
        (GOOD[:-5] + b"\x00" + GOOD[-4:], "fails its CRC"),
        (_replace_chunk(GOOD, b"IDAT", b"not zlib at all"), "does not inflate"),
        (_replace_chunk(GOOD, b"IDAT", zlib.compress(b"\x00" * 10)), "image data is"),
        (_replace_chunk(GOOD, b"IDAT", zlib.compress(b"\x05" + b"\x00" * 51)), "unknown filter type 5"),
        (_replace_chunk(GOOD, b"IHDR", struct.pack(">IIBBBBB", 4, 4, 8, 3, 0, 0, 0)), "colour type 3"),
        (_replace_chunk(GOOD, b"IHDR", struct.pack(">IIBBBBB", 4, 4, 4, 0, 0, 0, 0)), "depth 4"),
        (_replace_chunk(GOOD, b"IHDR", struct.pack(">IIBBBBB", 4, 4, 8, 2, 0, 0, 1)), "interlace 1"),
        (_replace_chunk(GOOD, b"IHDR", struct.pack(">IIBBBBB", 0, 4, 8, 2, 0, 0, 0)), "out of range"),
        (_replace_chunk(GOOD, b"IHDR", struct.pack(">IIBBBBB", 1 << 20, 1 << 20, 8, 2, 0, 0, 0)), "out of range"),
        (_replace_chunk(GOOD, b"IHDR", b"\x00" * 12), "IHDR must be 13 bytes"),
    ],
    ids=[
        "signature", "empty", "truncated-end", "truncated-chunk", "signature-only", "no-idat", "no-idat-ended", "crc-ihdr",
        "crc-iend", "not-zlib", "short-data", "bad-filter", "palette", "depth-4", "interlaced", "zero-width", "huge",
        "short-ihdr",
    ],
)
def test_corrupt_png_raises_png_error(data, words):
    with pytest.raises(PngError, match=words):
        decode_png(data)


def test_a_small_idat_cannot_inflate_past_what_the_header_promises():
    # 1x1 grey needs 2 bytes; 50 MB of zeros compress to ~50 kB. Inflation stops at the promise.
    bomb = _replace_chunk(GOOD, b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
    bomb = _replace_chunk(bomb, b"IDAT", zlib.compress(b"\x00" * 50_000_000, 9))
    with pytest.raises(PngError, match="image data is over bytes, expected 2"):
        decode_png(bomb)


def test_descriptor_is_checked_before_inflating():
    big = _replace_chunk(GOOD, b"IHDR", struct.pack(">IIBBBBB", 8000, 8000, 16, 6, 0, 0, 0))
    with pytest.raises(PngError, match=r"png holds uint16\[8000, 8000, 4\], descriptor says uint8\[4, 4, 3\]"):
        decode_png(big, shape=(4, 4, 3), dtype=np.uint8)


# -- fuzz ---------------------------------------------------------------------------------------------------

_SEEDS = [
    encode_png(np.arange(48, dtype=np.uint8).reshape(4, 4, 3)),
    encode_png(np.arange(30, dtype=np.uint16).reshape(5, 6) * 999),
    pillow_encode(test_image(np.random.default_rng(5), "uint8", (6, 7, 3))),
    pillow_encode(test_image(np.random.default_rng(6), "uint8", (5, 4, 2))),
    reference_png(test_image(np.random.default_rng(7), "uint8", (5, 6, 4)), [0, 1, 2, 3, 4]),
]


@st.composite
def mutated_png(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(_SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "byte", "cut", "insert", "rechunk"]))
        if op == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte" and data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        elif op == "cut":
            data = data[: draw(st.integers(0, len(data)))]
        elif op == "insert":
            i = draw(st.integers(0, len(data)))
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif op == "rechunk" and data.startswith(SIGNATURE):
            # Keep CRCs valid so the corruption reaches IHDR parsing, inflation and unfiltering.
            try:
                parts = chunks(bytes(data))
            except struct.error:
                continue
            if not parts:
                continue
            k = draw(st.integers(0, len(parts) - 1))
            body = bytearray(parts[k][1])
            if parts[k][0] == b"IDAT" and draw(st.booleans()):
                try:  # corrupt the filtered rows themselves (filter types, pixel bytes) behind a valid zlib stream
                    rows = bytearray(zlib.decompress(bytes(body)))
                except zlib.error:
                    continue
                if rows:
                    rows[draw(st.integers(0, len(rows) - 1))] = draw(st.integers(0, 255))
                body = bytearray(zlib.compress(bytes(rows)))
            elif body:
                body[draw(st.integers(0, len(body) - 1))] = draw(st.integers(0, 255))
            parts[k] = (parts[k][0], bytes(body))
            data = bytearray(SIGNATURE + b"".join(chunk(kind, b) for kind, b in parts))
    return bytes(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=mutated_png())
def test_fuzz_png_decoder_raises_only_png_error(data):
    try:
        image = decode_png(data)
    except PngError:
        return
    assert image.dtype in (np.uint8, np.uint16) and image.ndim in (2, 3) and image.size > 0


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=mutated_png(), dtype=st.sampled_from(["uint8", "uint16"]), shape=st.sampled_from([[4, 4, 3], [5, 6], [6, 7, 3]]))
def test_fuzz_png_tensor_raises_only_tensor_mismatch(data, dtype, shape):
    desc = {"dtype": dtype, "shape": shape, "encoding": "png"}
    try:
        image = decode_tensor(desc, data, field="depth")
    except TensorMismatch as exc:
        assert "field 'depth'" in str(exc)
        return
    assert list(image.shape) == shape and image.dtype == np.dtype(dtype)
