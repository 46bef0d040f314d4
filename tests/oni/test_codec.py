"""The ONI v1 message codec: encode -> decode round trips, tensor encodings and placement, every schema.

Tensors of any dtype and shape go through a test schema whose tensor fields allow everything
(``test.any``); the packaged schemas are each exercised with a valid message of their own.
"""

from __future__ import annotations

import json

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from oni import codec
from oni.errors import EncodeError, TensorMismatch
from oni.message import Header, Message
from oni.schema import SchemaRegistry
from oni.tensor import DTYPES, FLOAT_DTYPES, QUANT_DTYPES, Png, Quantized

TRACE = "0123456789abcdef0123456789abcdef"
STAMP_NS = 1_700_000_000_123_456_789

ANY_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "x-oni-schema": "test.any",
    "x-oni-version": "1.0",
    "type": "object",
    "required": ["oni", "header", "data"],
    "properties": {
        "oni": {"const": 1},
        "header": {"$ref": "#/$defs/header"},
        "data": {
            "type": "object",
            "properties": {
                "t": {"$ref": "#/$defs/tensor"},
                "u": {"$ref": "#/$defs/tensor"},
                "x": {"type": "number"},
                "name": {"type": "string"},
                "flag": {"type": "boolean"},
                "tags": {"type": "array", "items": {"type": "string"}},
            },
        },
    },
}

CORE_TOPICS = (
    "sensor.lidar",
    "sensor.imu",
    "sensor.odom",
    "sensor.depth",
    "actuator.cmd",
    "model.latent_state",
    "prediction.lidar",
    "prediction.pose",
    "diag.runtime",
    "sim.ground_truth",
    "env.observation",
    "env.action",
    "nav.route",
)


@pytest.fixture(scope="module")
def registry() -> SchemaRegistry:
    reg = SchemaRegistry()
    reg.load_packaged()
    reg.register(ANY_SCHEMA)
    return reg


def header(schema: str = "test.any", seq: int = 1, version: str = "1.0") -> Header:
    return Header(schema, version, seq, "unit-test", STAMP_NS, STAMP_NS + 1000, "base_link", TRACE)


def roundtrip(data: dict, registry: SchemaRegistry, *, schema: str = "test.any", inline_max: int = codec.INLINE_MAX_BYTES):
    """Encode to frames and back; returns ``(message, frames)``."""
    frames = codec.encode(schema, header(schema), data, inline_max)
    return codec.decode(frames, registry), frames


def random_array(rng: np.random.Generator, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    dt = DTYPES[dtype]
    if dtype == "bool":
        values = rng.integers(0, 2, size=shape).astype(bool)
    elif dt.kind in "iu":
        info = np.iinfo(dt)
        values = rng.integers(info.min, info.max, size=shape, dtype=dt, endpoint=True)
    else:
        values = (rng.standard_normal(size=shape) * 1000).astype(dt)
    return np.asarray(values)  # 0-d results of numpy arithmetic are scalars, not arrays


# -- raw tensors --------------------------------------------------------------------------------------------

SHAPES = [(), (0,), (1,), (7,), (3, 5), (0, 4), (4, 0), (2, 0, 3), (2, 3, 4), (1, 1, 1, 1, 1, 1, 1, 3), (700,)]


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_raw_roundtrip_every_dtype_and_shape(registry, dtype, shape):
    array = random_array(np.random.default_rng(len(shape) * 31 + len(dtype)), dtype, shape)
    msg, _ = roundtrip({"t": array}, registry)
    out = msg.data["t"]
    assert out.dtype == np.dtype(dtype)
    assert out.shape == shape
    np.testing.assert_array_equal(out, array)
    assert not out.flags.writeable, "decoded raw tensors are read-only views"
    packed = codec.unpack(codec.pack(header(), {"t": array}), "test.any", registry)
    np.testing.assert_array_equal(packed.data["t"], array)
    assert packed.data["t"].shape == shape


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_raw_bytes_on_the_wire_are_little_endian_c_order(registry, dtype):
    array = random_array(np.random.default_rng(1), dtype, (3, 4))
    strided = np.repeat(array, 2, axis=1)[:, ::2]  # a non-contiguous view with the same values
    for variant in (array, array.astype(array.dtype.newbyteorder(">")), np.asfortranarray(array), strided):
        body = msgpack.unpackb(codec.pack(header(), {"t": variant}))
        desc = body["data"]["t"]
        assert desc == {"dtype": dtype, "shape": [3, 4], "encoding": "raw", "data": desc["data"]}
        assert desc["data"] == array.astype(DTYPES[dtype]).tobytes(order="C")
        np.testing.assert_array_equal(codec.unpack(codec.pack(header(), {"t": variant}), "test.any", registry).data["t"], array)


def test_non_contiguous_views_are_encoded_by_value(registry):
    base = np.arange(200, dtype=np.int32).reshape(10, 20)
    view = base[::2, 3::3]
    msg, _ = roundtrip({"t": view}, registry)
    np.testing.assert_array_equal(msg.data["t"], view)


def test_unsupported_values_raise_encode_error():
    for bad in (np.zeros(3, dtype=np.complex64), np.array(["a"]), np.zeros(2, dtype="datetime64[s]")):
        with pytest.raises(EncodeError, match="not an ONI tensor dtype"):
            codec.encode("test.any", header(), {"t": bad})
    for bad in ({"a": 1}, object(), [[1, 2]], b"bytes"):
        with pytest.raises(EncodeError, match="field 'x'"):
            codec.pack(header(), {"x": bad})


# -- placement: inline vs own frame -------------------------------------------------------------------------


def test_small_tensors_go_inline_and_large_ones_get_their_own_frame(registry):
    limit = codec.INLINE_MAX_BYTES
    below = np.arange(limit - 1, dtype=np.uint8)
    at = np.arange(limit, dtype=np.uint8)
    frames = codec.encode("test.any", header(), {"t": below, "u": at})
    assert len(frames) == 3
    body = msgpack.unpackb(frames[1])
    assert "data" in body["data"]["t"] and "frame" not in body["data"]["t"]
    assert body["data"]["u"]["frame"] == 0 and "data" not in body["data"]["u"]
    msg = codec.decode(frames, registry)
    np.testing.assert_array_equal(msg.data["t"], below)
    np.testing.assert_array_equal(msg.data["u"], at)


def test_frames_follow_field_order_and_inline_max_is_respected(registry):
    a = np.arange(1000, dtype=np.float64)
    b = np.arange(600, dtype=np.int32)
    frames = codec.encode("test.any", header(), {"t": a, "u": b}, inline_max=64)
    body = msgpack.unpackb(frames[1])
    assert (body["data"]["t"]["frame"], body["data"]["u"]["frame"]) == (0, 1)
    assert bytes(frames[2]) == a.tobytes() and bytes(frames[3]) == b.tobytes()
    everything_inline = codec.encode("test.any", header(), {"t": a, "u": b}, inline_max=1 << 30)
    assert len(everything_inline) == 2


def test_large_tensor_frames_are_not_copied_on_encode_or_decode(registry):
    array = np.random.default_rng(0).standard_normal(4096).astype(np.float32)
    frames = codec.encode("test.any", header(), {"t": array})
    assert len(frames) == 3
    assert isinstance(frames[2], memoryview)
    assert np.shares_memory(np.asarray(frames[2]), array), "encode must hand the array's own buffer to zmq"
    msg = codec.decode(frames, registry)
    assert np.shares_memory(msg.data["t"], array), "decode must view the frame, not copy it"
    assert not msg.data["t"].flags.writeable


def test_quantized_frames_hold_the_codes(registry):
    array = np.linspace(-5, 5, 5000, dtype=np.float32)
    frames = codec.encode("test.any", header(), {"t": Quantized(array, "uint8")})
    assert len(frames) == 3 and memoryview(frames[2]).nbytes == 5000
    np.testing.assert_allclose(codec.decode(frames, registry).data["t"], array, atol=10 / 255 / 2 + 1e-6)


def test_pack_puts_every_tensor_inline(registry):
    big = np.arange(100_000, dtype=np.int64)
    buf = codec.pack(header(), {"t": big, "x": 1.5})
    assert isinstance(buf, bytes)
    body = msgpack.unpackb(buf)
    assert body["data"]["t"]["data"] == big.tobytes() and "frame" not in body["data"]["t"]
    msg = codec.unpack(buf, "test.any", registry)
    np.testing.assert_array_equal(msg.data["t"], big)
    assert msg.data["x"] == 1.5 and msg.topic == "test.any"


def test_wire_body_layout(registry):
    frames = codec.encode("test.any", header(seq=9), {"x": 2.5, "name": "n"})
    assert frames[0] == b"test.any"
    body = msgpack.unpackb(frames[1])
    assert list(body) == ["oni", "header", "data"]
    assert body["oni"] == 1
    assert body["header"] == header(seq=9).to_dict()
    assert body["data"] == {"x": 2.5, "name": "n"}


# -- header and scalars -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "seq, stamp_ns", [(0, 0), ((1 << 64) - 1, (1 << 63) - 1), (12, -(1 << 63)), (5, STAMP_NS)], ids=str
)
def test_header_round_trips_exactly(registry, seq, stamp_ns):
    sent = Header("test.any", "1.0", seq, "src-é", stamp_ns, stamp_ns, "frame/ü", TRACE)
    msg = codec.decode(codec.encode("test.any", sent, {}), registry)
    assert msg.header == sent
    assert msg.topic == "test.any"


def test_scalars_strings_and_lists_round_trip(registry):
    data = {"x": -0.1, "name": "héllo", "flag": True, "tags": ["a", "b"]}
    msg, _ = roundtrip(data, registry)
    assert msg.data == data
    assert type(msg.data["flag"]) is bool
    msg, _ = roundtrip({"x": np.float32(1.5), "tags": ("c",)}, registry)
    assert msg.data == {"x": 1.5, "tags": ["c"]} and type(msg.data["x"]) is float


def test_to_json_is_json_ready(registry):
    msg, _ = roundtrip({"t": np.array([[1, 2]], dtype=np.uint16), "x": 0.25}, registry)
    view = msg.to_json()
    assert view["data"]["t"] == {"dtype": "uint16", "shape": [1, 2], "values": [[1, 2]]}
    assert json.loads(json.dumps(view, allow_nan=False)) == view


# -- quantized ----------------------------------------------------------------------------------------------


def _quant_tolerance(array: np.ndarray, scale: float) -> np.ndarray:
    """Half a quantisation step, plus the rounding of the decoded value to the tensor's own float dtype."""
    return scale / 2 * (1 + 1e-9) + np.abs(array.astype(np.float64)) * np.finfo(array.dtype).eps


@pytest.mark.parametrize("qdtype", QUANT_DTYPES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_quantized_fitted_error_is_at_most_half_a_step(registry, dtype, qdtype):
    rng = np.random.default_rng(QUANT_DTYPES.index(qdtype))
    array = np.concatenate([rng.uniform(-3.0, 7.0, 997), [0.0, -3.0, 7.0]]).astype(dtype)
    msg, frames = roundtrip({"t": Quantized(array, qdtype)}, registry, inline_max=1 << 30)
    desc = msgpack.unpackb(frames[1])["data"]["t"]
    assert desc["encoding"] == "quantized" and desc["qdtype"] == qdtype and desc["dtype"] == dtype
    info = np.iinfo(np.dtype(qdtype))
    lo, hi = float(array.min()), float(array.max())
    assert desc["scale"] == pytest.approx((hi - lo) / (int(info.max) - int(info.min)), rel=1e-12)
    out = msg.data["t"]
    assert out.dtype == np.dtype(dtype) and out.shape == array.shape
    err = np.abs(out.astype(np.float64) - array.astype(np.float64))
    assert np.all(err <= _quant_tolerance(array, desc["scale"]))
    assert out[array == 0].tolist() == [0.0], "0 is exactly representable"
    codes = np.frombuffer(desc["data"], dtype=np.dtype(qdtype)).astype(int)
    assert codes.max() - codes.min() >= int(info.max) - int(info.min) - 1, "the fitted range uses the codes"


@pytest.mark.parametrize("qdtype", QUANT_DTYPES)
def test_quantized_explicit_scale_and_zero_point(registry, qdtype):
    info = np.iinfo(np.dtype(qdtype))
    zero_point = int(info.min) + 3
    array = np.array([0.0, 0.01, 0.049, 0.051, 0.1, -0.02], dtype=np.float32)
    frames = codec.encode("test.any", header(), {"t": Quantized(array, qdtype, scale=0.1, zero_point=zero_point)})
    desc = msgpack.unpackb(frames[1])["data"]["t"]
    assert (desc["scale"], desc["zero_point"]) == (0.1, zero_point)
    codes = np.frombuffer(desc["data"], dtype=np.dtype(qdtype)).astype(int) - zero_point
    assert codes.tolist() == [0, 0, 0, 1, 1, 0]
    out = codec.decode(frames, registry).data["t"]
    np.testing.assert_allclose(out, np.array([0, 0, 0, 0.1, 0.1, 0]), atol=1e-7)


def test_quantized_values_outside_the_code_range_saturate(registry):
    array = np.array([-100.0, 0.0, 100.0], dtype=np.float32)
    msg, _ = roundtrip({"t": Quantized(array, "int8", scale=0.5, zero_point=0)}, registry)
    assert msg.data["t"].tolist() == [-64.0, 0.0, 63.5]


@pytest.mark.parametrize(
    "array",
    [np.zeros(5), np.full(4, 3.25), np.array([-1e308, 1e308]), np.array([0.0, 5e-324]), np.zeros((0, 3))],
    ids=["zeros", "constant", "float64-extremes", "subnormal", "empty"],
)
def test_quantized_fitting_handles_degenerate_ranges(registry, array):
    msg, frames = roundtrip({"t": Quantized(array, "uint16")}, registry)
    scale = msgpack.unpackb(frames[1])["data"]["t"]["scale"]
    assert np.isfinite(scale) and scale > 0
    assert msg.data["t"].shape == array.shape
    assert np.all(np.abs(msg.data["t"] - array) <= _quant_tolerance(array, scale))


def test_quantized_refuses_what_it_cannot_carry():
    f = np.ones(3, dtype=np.float32)
    cases = [
        (Quantized(np.ones(3, dtype=np.int32)), "float tensor"),
        (Quantized(f, "int32"), "qdtype"),
        (Quantized(np.array([1.0, np.nan])), "finite"),
        (Quantized(np.array([1.0, np.inf])), "finite"),
        (Quantized(f, scale=0.0, zero_point=0), "scale"),
        (Quantized(f, scale=float("nan"), zero_point=0), "scale"),
        (Quantized(f, scale=0.1), "both scale and zero_point"),
        (Quantized(f, zero_point=3), "both scale and zero_point"),
    ]
    for value, words in cases:
        with pytest.raises(EncodeError, match=words):
            codec.pack(header(), {"t": value})


# -- png ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (5, 7, 1), (4, 6, 2), (3, 9, 3), (6, 2, 4), (64, 48)], ids=str)
def test_png_round_trips_exactly(registry, dtype, shape):
    image = random_array(np.random.default_rng(sum(shape)), dtype, shape)
    msg, frames = roundtrip({"t": Png(image)}, registry)
    desc = msgpack.unpackb(frames[1])["data"]["t"]
    assert desc["encoding"] == "png" and desc["shape"] == list(shape) and desc["dtype"] == dtype
    png_bytes = desc["data"] if "data" in desc else bytes(frames[2])
    assert png_bytes.startswith(b"\x89PNG\r\n\x1a\n")
    out = msg.data["t"]
    assert out.dtype == np.dtype(dtype) and out.shape == shape
    np.testing.assert_array_equal(out, image)


def test_png_compresses_smooth_depth(registry):
    yy, xx = np.mgrid[0:120, 0:160]
    depth = (1000 + 3 * xx + 2 * yy).astype(np.uint16)
    desc = msgpack.unpackb(codec.pack(header(), {"t": Png(depth)}))["data"]["t"]
    assert len(desc["data"]) < depth.nbytes // 10
    np.testing.assert_array_equal(codec.unpack(codec.pack(header(), {"t": Png(depth)}), "test.any", registry).data["t"], depth)


def test_large_png_goes_to_its_own_frame(registry):
    depth = np.random.default_rng(3).integers(300, 5000, (48, 64), dtype=np.uint16)
    data = {"depth": Png(depth), "depth_scale_m": 0.001, "fx": 60.0, "fy": 60.0, "cx": 32.0, "cy": 24.0}
    frames = codec.encode("sensor.depth", header("sensor.depth"), data)
    assert len(frames) == 3 and msgpack.unpackb(frames[1])["data"]["depth"]["frame"] == 0
    assert bytes(frames[2]).startswith(b"\x89PNG")
    np.testing.assert_array_equal(codec.decode(frames, registry).data["depth"], depth)


@pytest.mark.parametrize(
    "image, words",
    [
        (np.zeros((4, 4), dtype=np.int16), "uint8 or uint16"),
        (np.zeros((4, 4), dtype=np.float32), "uint8 or uint16"),
        (np.zeros((4, 4, 5), dtype=np.uint8), "C in 1..4"),
        (np.zeros((4,), dtype=np.uint8), "C in 1..4"),
        (np.zeros((0, 4), dtype=np.uint8), "empty"),
    ],
    ids=["int16", "float32", "5-channels", "1-d", "empty"],
)
def test_png_refuses_what_it_cannot_carry(image, words):
    with pytest.raises(EncodeError, match=words):
        codec.pack(header(), {"t": Png(image)})


def test_png_descriptor_must_match_the_image(registry):
    image = np.arange(8, dtype=np.uint8).reshape(2, 2, 2)
    body = msgpack.unpackb(codec.pack(header(), {"t": Png(image)}))
    body["data"]["t"]["shape"] = [4, 2]  # same element count, different shape
    with pytest.raises(TensorMismatch, match=r"png holds uint8\[2, 2, 2\], descriptor says uint8\[4, 2\]"):
        codec.unpack(msgpack.packb(body), "test.any", registry)
    body["data"]["t"]["shape"], body["data"]["t"]["dtype"] = [2, 2, 2], "uint16"
    with pytest.raises(TensorMismatch, match="descriptor says uint16"):
        codec.unpack(msgpack.packb(body), "test.any", registry)


# -- every packaged schema ----------------------------------------------------------------------------------

rng0 = np.random.default_rng(7)
SAMPLES: dict[str, dict] = {
    "sensor.lidar": {
        "ranges_m": rng0.uniform(0.1, 12.0, 720).astype(np.float32),
        "intensities": Quantized(rng0.uniform(0, 100, 720).astype(np.float32), "uint8"),
        "angle_min_rad": -3.14159,
        "angle_increment_rad": 0.00872665,
        "range_min_m": 0.1,
        "range_max_m": 12.0,
        "scan_time_s": 0.1,
    },
    "sensor.imu": {
        "accel_mps2": rng0.standard_normal((20, 3)),
        "gyro_radps": rng0.standard_normal((20, 3)).astype(np.float32),
        "sample_dt_s": 0.005,
        "orientation_xyzw": np.array([0, 0, 0, 1], dtype=np.float32),
    },
    "sensor.odom": {
        "x_m": 1.5, "y_m": -0.25, "yaw_rad": 0.1, "v_mps": 0.3, "omega_radps": -0.05,
        "wheel_vel_radps": np.array([2.0, 2.1], dtype=np.float64),
    },
    "sensor.depth": {
        "depth": Png(rng0.integers(300, 5000, (48, 64), dtype=np.uint16)),
        "depth_scale_m": 0.001, "fx": 60.0, "fy": 60.0, "cx": 32.0, "cy": 24.0, "range_max_m": 8.0,
    },
    "actuator.cmd": {"v_mps": 0.5, "omega_radps": -0.2, "stop": False, "reason": ""},
    "model.latent_state": {
        "deter": rng0.standard_normal(512).astype(np.float32),
        "stoch": Quantized(rng0.standard_normal(32).astype(np.float16), "int8"),
        "tick": 42,
        "model_id": "rssm-test",
    },
    "prediction.lidar": {
        "horizons_s": np.array([0.5, 1.0, 2.0], dtype=np.float32),
        "ranges_m": rng0.uniform(0.1, 12.0, (3, 360)).astype(np.float32),
        "ranges_std_m": Quantized(rng0.uniform(0, 1, (3, 360)).astype(np.float32), "uint16"),
        "angle_min_rad": -3.14159,
        "angle_increment_rad": 0.0174533,
    },
    "prediction.pose": {
        "horizons_s": np.array([0.5, 1.0, 2.0], dtype=np.float32),
        "pose": rng0.standard_normal((3, 3)),
        "pose_std": np.abs(rng0.standard_normal((3, 3))).astype(np.float32),
    },
    "diag.runtime": {
        "tick": 42, "stages": ["ingest", "encode", "plan"],
        "stage_us": np.array([120.0, 900.5, 3000.25], dtype=np.float32),
        "tick_us": 4100.0, "deadline_misses": 0, "stale_sensors": [], "stopped": False, "stop_reason": "",
    },
    "sim.ground_truth": {
        "x_m": 1.5, "y_m": -0.25, "yaw_rad": 0.5, "v_mps": 0.3, "lateral_mps": 0.0, "omega_radps": 0.1,
        "in_collision": False, "collisions": 0, "goal_distance_m": 12.5,
    },
    "env.observation": {"observation": rng0.normal(0.0, 1.0, 17).astype(np.float32), "reward": -0.25,
                        "terminated": False, "truncated": True, "episode_step": 1000},
    "env.action": {"action": np.array([0.5, -1.0, 0.0, 1.0, 0.25, -0.75], np.float32), "clipped": True, "rejected": False},
    "nav.route": {"waypoints_m": np.array([[0.0, 0.0], [4.0, 0.0], [4.0, 3.5]]), "goal_radius_m": 0.5},
}


def test_every_packaged_schema_has_a_sample():
    assert sorted(name for name, _ in SchemaRegistry.default().names()) == sorted(CORE_TOPICS) == sorted(SAMPLES)


def _expected(value):
    return value.array if isinstance(value, (Quantized, Png)) else value


@pytest.mark.parametrize("topic", CORE_TOPICS)
def test_every_core_topic_round_trips_and_satisfies_its_full_schema(registry, topic):
    data = SAMPLES[topic]
    for frames in (codec.encode(topic, header(topic), data), [topic.encode(), codec.pack(header(topic), data)]):
        body = msgpack.unpackb(frames[1])
        registry.get(topic, 1).validate(body)  # the whole JSON Schema document accepts what we send
        msg = codec.decode(frames, registry)
        assert isinstance(msg, Message) and msg.topic == topic and msg.header == header(topic)
        assert sorted(msg.data) == sorted(data)
        for key, value in data.items():
            got = msg.data[key]
            if isinstance(value, Quantized):
                scale = body["data"][key]["scale"]
                assert got.dtype == value.array.dtype
                assert np.all(np.abs(got - value.array) <= _quant_tolerance(value.array, scale))
            elif isinstance(value, (np.ndarray, Png)):
                np.testing.assert_array_equal(got, _expected(value))
                assert got.dtype == _expected(value).dtype
            else:
                assert got == value


# -- forward compatibility: a 1.1 sender, a 1.0 receiver ----------------------------------------------------


def _odom_1_1() -> dict:
    doc = json.loads(json.dumps(SchemaRegistry.default().get("sensor.odom", 1).document))
    doc["x-oni-version"] = "1.1"
    del doc["$defs"]  # the loader bundles the common definitions again
    props = doc["properties"]["data"]["properties"]
    props["quality"] = {"type": "number", "minimum": 0}
    props["covariance"] = {"allOf": [{"$ref": "#/$defs/tensor"}]}
    return doc


def test_a_newer_minor_version_with_extra_fields_decodes_and_the_extras_are_ignored(registry):
    newer = SchemaRegistry()
    newer.load_packaged()
    assert newer.register(_odom_1_1()).version == "1.1"
    base = {key: value for key, value in SAMPLES["sensor.odom"].items()}
    for cov in (np.eye(3).ravel(), np.zeros(1000)):  # inline, and in its own frame
        data = {**base, "quality": 0.9, "covariance": cov}
        frames = codec.encode("sensor.odom", header("sensor.odom", version="1.1"), data)
        assert len(frames) == (3 if cov.nbytes >= codec.INLINE_MAX_BYTES else 2)
        old = codec.decode(frames, registry)
        assert old.header.schema_version == "1.1"
        assert "quality" not in old.data and "covariance" not in old.data, "a 1.0 receiver drops unknown fields"
        assert sorted(old.data) == sorted(base)
        new = codec.decode(frames, newer)
        assert new.data["quality"] == 0.9
        np.testing.assert_array_equal(new.data["covariance"], cov)


def test_unknown_fields_are_ignored_whatever_they_hold(registry):
    data = dict(SAMPLES["actuator.cmd"])
    frames = codec.encode("actuator.cmd", header("actuator.cmd", version="1.7"), data)
    body = msgpack.unpackb(frames[1])
    body["data"].update({"future_nan": float("nan"), "future_blob": b"\x00\x01", "future_map": {"a": [1, {"b": None}]}})
    msg = codec.decode([frames[0], msgpack.packb(body)], registry)
    assert msg.data == data
    # ...but a frame an unknown field points at must exist, and no frame may be left over.
    body["data"]["future_t"] = {"dtype": "float32", "shape": [1], "encoding": "raw", "frame": 3}
    with pytest.raises(TensorMismatch, match="field 'future_t' refers to tensor frame 3"):
        codec.decode([frames[0], msgpack.packb(body), b"\x00" * 4], registry)


def test_an_older_minor_version_decodes_on_a_newer_receiver():
    newer = SchemaRegistry()
    newer.load_packaged()
    newer.register(_odom_1_1())
    frames = codec.encode("sensor.odom", header("sensor.odom", version="1.0"), SAMPLES["sensor.odom"])
    msg = codec.decode(frames, newer)
    assert msg.data["x_m"] == 1.5 and "quality" not in msg.data


# -- properties ---------------------------------------------------------------------------------------------

_dtypes = st.sampled_from(sorted(DTYPES))
_shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6)


@st.composite
def _arrays(draw: st.DrawFn) -> np.ndarray:
    dtype = DTYPES[draw(_dtypes)]
    elements = st.floats(allow_nan=False, allow_infinity=False, width=8 * dtype.itemsize) if dtype.kind == "f" else None
    array = draw(hnp.arrays(dtype, draw(_shapes), elements=elements))
    if draw(st.booleans()):
        array = array.astype(array.dtype.newbyteorder(">"))
    return array


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(array=_arrays(), inline_max=st.sampled_from([0, 16, codec.INLINE_MAX_BYTES]))
def test_property_raw_round_trip(registry, array, inline_max):
    msg, _ = roundtrip({"t": array}, registry, inline_max=inline_max)
    out = msg.data["t"]
    assert out.shape == array.shape and out.dtype == array.dtype.newbyteorder("=")
    assert out.tobytes() == array.astype(out.dtype).tobytes()  # bit-exact, -0.0 included
    assert codec.unpack(codec.pack(header(), {"t": array}), "test.any", registry).data["t"].tobytes() == out.tobytes()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    dtype=st.sampled_from(FLOAT_DTYPES),
    qdtype=st.sampled_from(QUANT_DTYPES),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=8),
    data=st.data(),
)
def test_property_quantized_error_bound(registry, dtype, qdtype, shape, data):
    bound = float(np.finfo(np.dtype(dtype)).max) / 4
    elements = st.floats(-bound, bound, allow_nan=False, width=8 * np.dtype(dtype).itemsize)
    array = data.draw(hnp.arrays(np.dtype(dtype), shape, elements=elements))
    msg, frames = roundtrip({"t": Quantized(array, qdtype)}, registry, inline_max=1 << 30)
    scale = msgpack.unpackb(frames[1])["data"]["t"]["scale"]
    out = msg.data["t"]
    assert out.shape == array.shape and out.dtype == array.dtype
    assert np.all(np.abs(out.astype(np.float64) - array.astype(np.float64)) <= _quant_tolerance(array, scale))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    dtype=st.sampled_from(["uint8", "uint16"]),
    shape=st.tuples(st.integers(1, 12), st.integers(1, 12)) | st.tuples(st.integers(1, 8), st.integers(1, 8), st.integers(1, 4)),
    level=st.integers(0, 9),
    data=st.data(),
)
def test_property_png_round_trip(registry, dtype, shape, level, data):
    image = data.draw(hnp.arrays(np.dtype(dtype), shape))
    msg, _ = roundtrip({"t": Png(image, level)}, registry)
    assert msg.data["t"].shape == image.shape and msg.data["t"].dtype == image.dtype
    np.testing.assert_array_equal(msg.data["t"], image)
