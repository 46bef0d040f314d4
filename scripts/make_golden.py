#!/usr/bin/env python3
"""Regenerate the ONI golden files: encoded messages with their expected decoded JSON.

    python scripts/make_golden.py            # write tests/golden/oni/ (atomically; stale files removed)
    python scripts/make_golden.py --check    # exit 1 if the files on disk differ from what the codec makes now

Everything is deterministic: fixed stamps, trace ids (MD5 of the case name) and random seeds, so running this
twice gives identical bytes. tests/golden/README.md describes the formats; tests/oni/test_golden.py checks the
files against the codec.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import msgpack
import numpy as np

from oni import codec
from oni.errors import RejectedMessage
from oni.files import atomic_write
from oni.message import Header
from oni.tensor import Png, Quantized

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "golden" / "oni"
STAMP_NS = 1_700_000_000_000_000_000
#: Extensions this script owns in the output folder; anything else there is left alone.
OWNED = (".bin", ".frames", ".json")


@dataclass(frozen=True)
class GoldenCase:
    """One valid message: ``data`` may hold raw arrays, :class:`Quantized` and :class:`Png` tensors."""

    name: str
    topic: str
    seq: int
    data: dict[str, Any]
    description: str
    header_overrides: dict[str, Any] = field(default_factory=dict)

    def header(self) -> Header:
        fields = {
            "schema": self.topic,
            "schema_version": "1.0",
            "seq": self.seq,
            "source": "golden",
            "stamp_ns": STAMP_NS + self.seq * 1_000_000,
            "pub_ns": STAMP_NS + self.seq * 1_000_000 + 250_000,
            "frame_id": "base_link",
            "trace_id": hashlib.md5(self.name.encode()).hexdigest(),
        }
        fields.update(self.header_overrides)
        return Header(**fields)


@dataclass(frozen=True)
class BadCase:
    """A message every receiver must refuse with reject kind ``kind`` (given ``max_message_bytes``)."""

    name: str
    frames: list[bytes]
    kind: str
    description: str
    max_message_bytes: int = codec.DEFAULT_MAX_MESSAGE_BYTES


def golden_cases() -> list[GoldenCase]:
    """The valid cases: every core topic, every encoding, inline and frame placement, several dtypes."""
    rng = np.random.default_rng(20240601)
    lidar = {"angle_min_rad": -np.pi, "angle_increment_rad": 2 * np.pi / 720, "range_min_m": 0.12, "range_max_m": 12.0}
    yy, xx = np.mgrid[0:24, 0:32]
    return [
        GoldenCase(
            "sensor_lidar_raw_frame",
            "sensor.lidar",
            1,
            {
                "ranges_m": rng.uniform(0.12, 12.0, 720).astype(np.float32),
                "intensities": Quantized(rng.uniform(0.0, 255.0, 720).astype(np.float32), "uint8"),
                **lidar,
                "scan_time_s": 0.1,
            },
            "float32 ranges in their own frame (2880 B), fitted uint8 quantized intensities inline",
        ),
        GoldenCase(
            "sensor_lidar_quantized_frames",
            "sensor.lidar",
            2,
            {
                "ranges_m": Quantized(rng.uniform(0.12, 12.0, 1200).astype(np.float32), "uint16", scale=0.001, zero_point=0),
                "intensities": rng.uniform(0.0, 100.0, 1200).astype(np.float32),
                **lidar,
            },
            "uint16 quantized ranges (explicit scale 0.001, zero point 0) and raw intensities: two tensor frames",
        ),
        GoldenCase(
            "sensor_lidar_empty_scan",
            "sensor.lidar",
            3,
            {"ranges_m": np.zeros(0, dtype=np.float32), **lidar},
            "a scan with no beams: shape [0], zero bytes inline",
        ),
        GoldenCase(
            "sensor_imu_raw_inline",
            "sensor.imu",
            4,
            {
                "accel_mps2": rng.normal(0.0, 0.3, (10, 3)) + np.array([0.0, 0.0, 9.81]),
                "gyro_radps": rng.normal(0.0, 0.05, (10, 3)).astype(np.float32),
                "sample_dt_s": 0.005,
                "orientation_xyzw": np.array([0.0, 0.0, np.sin(0.1), np.cos(0.1)]),
            },
            "float64 and float32 tensors inline, K=10 samples",
        ),
        GoldenCase(
            "sensor_imu_quantized_inline",
            "sensor.imu",
            5,
            {
                "accel_mps2": Quantized(np.array([0.12, -0.03, 9.79], dtype=np.float32), "int16"),
                "gyro_radps": Quantized(np.array([0.01, -0.02, 0.5]), "int8", scale=0.004, zero_point=-3),
            },
            "one sample: fitted int16 (float32) and explicit int8 (float64, zero point -3)",
        ),
        GoldenCase(
            "sensor_odom_scalars",
            "sensor.odom",
            6,
            {
                "x_m": 1.25,
                "y_m": -0.0,
                "yaw_rad": 0.1,
                "v_mps": 0.3,
                "omega_radps": -1e-9,
                "wheel_vel_radps": np.array([2.5, 2.75]),
            },
            "scalars (negative zero, a tiny value) and a small float64 tensor",
        ),
        GoldenCase(
            "sensor_depth_png_inline",
            "sensor.depth",
            7,
            {
                "depth": Png((800 + 7 * xx + 3 * yy).astype(np.uint16)),
                "depth_scale_m": 0.001,
                "fx": 30.0,
                "fy": 30.0,
                "cx": 16.0,
                "cy": 12.0,
                "range_max_m": 8.0,
            },
            "smooth uint16 depth in millimetres, PNG small enough to go inline",
        ),
        GoldenCase(
            "sensor_depth_png_frame",
            "sensor.depth",
            8,
            {
                "depth": Png(rng.integers(300, 5000, (48, 64), dtype=np.uint16)),
                "depth_scale_m": 0.001,
                "fx": 60.0,
                "fy": 60.0,
                "cx": 32.0,
                "cy": 24.0,
            },
            "noisy uint16 depth: the PNG goes in its own frame",
        ),
        GoldenCase(
            "sensor_depth_raw_float32_frame",
            "sensor.depth",
            9,
            {
                "depth": rng.uniform(0.3, 5.0, (32, 40)).astype(np.float32),
                "depth_scale_m": 1.0,
                "fx": 40.0,
                "fy": 40.0,
                "cx": 20.0,
                "cy": 16.0,
            },
            "float32 depth in metres, raw, in its own frame",
        ),
        GoldenCase(
            "sensor_depth_quantized_inline",
            "sensor.depth",
            10,
            {
                "depth": Quantized(rng.uniform(0.3, 5.0, (16, 20)).astype(np.float32), "uint16"),
                "depth_scale_m": 1.0,
                "fx": 20.0,
                "fy": 20.0,
                "cx": 10.0,
                "cy": 8.0,
            },
            "float32 depth, fitted uint16 quantization, inline",
        ),
        GoldenCase(
            "actuator_cmd_stop",
            "actuator.cmd",
            11,
            {"v_mps": 0.0, "omega_radps": 0.0, "stop": True, "reason": "obstacle at 0.2 m"},
            "a stop command: booleans and strings",
        ),
        GoldenCase(
            "actuator_cmd_header_extremes",
            "actuator.cmd",
            (1 << 64) - 1,
            {"v_mps": 0.5, "omega_radps": -0.25},
            "header limits: seq 2^64-1, stamp_ns -2^63, pub_ns 2^63-1, non-ASCII source and frame_id",
            {"stamp_ns": -(1 << 63), "pub_ns": (1 << 63) - 1, "source": "roboter-ä", "frame_id": "base_链接"},
        ),
        GoldenCase(
            "sim_ground_truth",
            "sim.ground_truth",
            13,
            {"x_m": 3.25, "y_m": -1.5, "yaw_rad": 1.0471975511965976, "v_mps": 0.31, "lateral_mps": -0.002,
             "omega_radps": 0.12, "in_collision": False, "collisions": 2, "goal_distance_m": 17.75},
            "simulator ground truth: scalars only",
        ),
        GoldenCase(
            "model_latent_state_inline",
            "model.latent_state",
            12,
            {
                "deter": rng.normal(0.0, 1.0, 256).astype(np.float32),
                "stoch": rng.normal(0.0, 1.0, 32).astype(np.float16),
                "tick": 12,
                "model_id": "rssm-golden",
            },
            "float32 (1024 B) and float16 tensors inline",
        ),
        GoldenCase(
            "model_latent_state_boundary",
            "model.latent_state",
            13,
            {
                "deter": rng.normal(0.0, 1.0, codec.INLINE_MAX_BYTES // 2).astype(np.float16),
                "stoch": Quantized(rng.normal(0.0, 1.0, 32).astype(np.float32), "int8"),
                "tick": 13,
            },
            "float16 deter of exactly INLINE_MAX_BYTES (2048 B) goes to a frame; int8 quantized stoch inline",
        ),
        GoldenCase(
            "prediction_lidar_mixed",
            "prediction.lidar",
            14,
            {
                "horizons_s": np.array([0.5, 1.0, 2.0], dtype=np.float32),
                "ranges_m": rng.uniform(0.12, 12.0, (3, 180)).astype(np.float32),
                "ranges_std_m": Quantized(rng.uniform(0.0, 0.5, (3, 180)).astype(np.float32), "uint8"),
                "angle_min_rad": -np.pi,
                "angle_increment_rad": 2 * np.pi / 180,
            },
            "(K, N) ranges in a frame, quantized uncertainty inline",
        ),
        GoldenCase(
            "prediction_pose",
            "prediction.pose",
            15,
            {
                "horizons_s": np.array([0.5, 1.0, 2.0], dtype=np.float32),
                "pose": np.array([[0.15, 0.0, 0.05], [0.3, 0.01, 0.1], [0.6, 0.04, 0.2]]),
                "pose_std": np.array([[0.01, 0.01, 0.005], [0.02, 0.02, 0.01], [0.05, 0.05, 0.02]], dtype=np.float32),
            },
            "float64 poses, float32 standard deviations",
        ),
        GoldenCase(
            "diag_runtime",
            "diag.runtime",
            16,
            {
                "tick": 16,
                "stages": ["ingest", "encode", "plan", "publish"],
                "stage_us": np.array([110.5, 850.25, 4200.0, 95.0]),
                "tick_us": 5255.75,
                "deadline_misses": 2,
                "stale_sensors": ["sensor.depth"],
                "stopped": True,
                "stop_reason": "sensor.depth stale for 500 ms",
            },
            "lists of strings, a float64 tensor, a stop",
        ),
        GoldenCase(
            "env_observation",
            "env.observation",
            17,
            {"observation": rng.normal(0.0, 1.0, 17).astype(np.float32), "reward": -0.25, "terminated": False,
             "truncated": True, "episode_step": 1000},
            "a gymnasium adapter observation: float32 vector and episode flags",
        ),
        GoldenCase(
            "env_action",
            "env.action",
            18,
            {"action": np.array([0.5, -1.0, 0.0, 1.0, 0.25, -0.75], np.float32), "clipped": True, "rejected": False},
            "a gymnasium adapter action as applied",
        ),
        GoldenCase(
            "nav_route",
            "nav.route",
            19,
            {"waypoints_m": np.array([[0.0, 0.0], [4.0, 0.0], [4.0, 3.5]]), "goal_radius_m": 0.5},
            "a route of three waypoints in the odometry frame (float64 inline tensor)",
        ),
    ]


def _edited(case: GoldenCase, edit: Callable[[dict[str, Any]], None]) -> list[bytes]:
    frames = [bytes(f) for f in codec.encode(case.topic, case.header(), case.data)]
    body = msgpack.unpackb(frames[1])
    edit(body)
    return [frames[0], msgpack.packb(body), *frames[2:]]


def _assign(path: tuple[str, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(body: dict[str, Any]) -> None:
        node = body
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return edit


def bad_cases() -> list[BadCase]:
    """Messages a conforming receiver must refuse, one per reject kind a single message can show."""
    odom = GoldenCase("bad", "sensor.odom", 1, {"x_m": 1.0, "y_m": 2.0, "yaw_rad": 0.0, "v_mps": 0.0, "omega_radps": 0.0}, "")
    lidar = next(c for c in golden_cases() if c.name == "sensor_lidar_raw_frame")
    good = [bytes(f) for f in codec.encode(odom.topic, odom.header(), odom.data)]

    def without_omega(body: dict[str, Any]) -> None:
        del body["data"]["omega_radps"]

    return [
        BadCase("malformed_body", [good[0], b"\xc1" + good[1][1:]], "malformed", "the body is not msgpack"),
        BadCase("malformed_unreferenced_frame", [*good, b"\x00" * 16], "malformed", "a tensor frame no field refers to"),
        BadCase("unknown_schema", _edited(odom, _assign(("header", "schema"), "sensor.sonar")), "unknown_schema",
                "schema sensor.sonar is not registered"),
        BadCase("unsupported_major", _edited(odom, _assign(("header", "schema_version"), "2.0")), "unsupported_version",
                "sensor.odom 2.0: only major version 1 exists"),
        BadCase("unsupported_wire", _edited(odom, _assign(("oni",), 2)), "unsupported_version", "wire version 2"),
        BadCase("schema_missing_field", _edited(odom, without_omega), "schema", "required omega_radps is missing"),
        BadCase("tensor_dtype", _edited(lidar, _assign(("data", "ranges_m", "dtype"), "uint32")), "tensor_mismatch",
                "ranges_m is float32 only"),
        BadCase("tensor_byte_length", _edited(lidar, _assign(("data", "ranges_m", "shape"), [721])), "tensor_mismatch",
                "721 float32 need 2884 bytes, the frame has 2880"),
        BadCase("tensor_frame_index", _edited(lidar, _assign(("data", "ranges_m", "frame"), 1)), "tensor_mismatch",
                "ranges_m refers to tensor frame 1; the message has 1"),
        BadCase("non_finite_tensor", _edited(lidar, _assign(("data", "intensities"), {"dtype": "float32", "shape": [2],
                "encoding": "raw", "data": np.array([1.0, np.nan], dtype="<f4").tobytes()})), "non_finite",
                "intensities holds a NaN"),
        BadCase("non_finite_scalar", _edited(odom, _assign(("data", "v_mps"), float("inf"))), "non_finite", "v_mps is Inf"),
        BadCase("too_large", [bytes(f) for f in codec.encode(lidar.topic, lidar.header(), lidar.data)], "too_large",
                "the message is larger than the receiver's limit of 2048 bytes", max_message_bytes=2048),
    ]


def _json_text(value: Any) -> bytes:
    # Python's float repr is the shortest text that reads back to the same float: values are exact.
    return (json.dumps(value, indent=1, allow_nan=False) + "\n").encode()


def render() -> dict[str, bytes]:
    """Every golden file, by path relative to the output folder."""
    files: dict[str, bytes] = {}
    manifest: dict[str, Any] = {"zlib": zlib.ZLIB_RUNTIME_VERSION, "inline_max_bytes": codec.INLINE_MAX_BYTES, "cases": {}, "bad": {}}
    for case in golden_cases():
        header = case.header()
        packed = codec.pack(header, case.data)
        frames = [bytes(f) for f in codec.encode(case.topic, header, case.data)]
        decoded = codec.unpack(packed, case.topic).to_json()
        if codec.decode(frames).to_json() != decoded:
            raise AssertionError(f"{case.name}: the frame and packed forms decode differently")
        files[f"{case.name}.bin"] = packed
        files[f"{case.name}.frames"] = msgpack.packb(frames)
        files[f"{case.name}.json"] = _json_text(decoded)
        manifest["cases"][case.name] = {
            "topic": case.topic,
            "description": case.description,
            "encodings": sorted({_encoding(v) for v in case.data.values() if _encoding(v)}),
            "tensor_frames": len(frames) - 2,
        }
    for bad in bad_cases():
        try:
            codec.decode(bad.frames, limits=codec.DecodeLimits(bad.max_message_bytes))
        except RejectedMessage as exc:
            if exc.kind != bad.kind:
                raise AssertionError(f"bad/{bad.name}: expected {bad.kind}, the codec says {exc.kind}: {exc}") from None
        else:
            raise AssertionError(f"bad/{bad.name}: the codec accepts it")
        files[f"bad/{bad.name}.frames"] = msgpack.packb(bad.frames)
        files[f"bad/{bad.name}.json"] = _json_text(
            {"reject": bad.kind, "max_message_bytes": bad.max_message_bytes, "description": bad.description}
        )
        manifest["bad"][bad.name] = bad.kind
    files["MANIFEST.json"] = _json_text(manifest)
    return files


def _encoding(value: Any) -> str | None:
    if isinstance(value, Quantized):
        return "quantized"
    if isinstance(value, Png):
        return "png"
    return "raw" if isinstance(value, np.ndarray) else None


def _existing(out: Path) -> dict[str, Path]:
    return {p.relative_to(out).as_posix(): p for p in out.rglob("*") if p.is_file() and p.suffix in OWNED}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"output folder (default: {OUT.relative_to(ROOT)})")
    parser.add_argument("--check", action="store_true", help="compare with the files on disk instead of writing")
    args = parser.parse_args(argv)
    files = render()
    existing = _existing(args.out)
    changed = sorted(name for name, data in files.items() if name not in existing or existing[name].read_bytes() != data)
    stale = sorted(set(existing) - set(files))
    if args.check:
        for name in changed:
            print(f"differs: {name}")
        for name in stale:
            print(f"stale: {name}")
        return 1 if changed or stale else 0
    for name in changed:
        (args.out / name).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(args.out / name, files[name])
    for name in stale:
        existing[name].unlink()
    print(f"{len(files)} golden files in {args.out}: {len(changed)} written, {len(stale)} removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
