"""The tick assembler: exact alignment on hand-made stamps (mask, age, hold, IMU packing, odometry deltas, action
hold), validation counters, the late-message rule, and no allocation per tick."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest

from worldmodel.observation import NormStats, ObservationSpec, TickAssembler

MS = 1_000_000  # ns
SPEC = ObservationSpec(lidar_beams=4, depth_height=2, depth_width=3, imu_samples=4, odom=True)


def _assembler(spec: ObservationSpec = SPEC, max_age_s: float = 1.0, **kwargs) -> TickAssembler:
    return TickAssembler(spec, 50.0, max_age_s, **kwargs)


def _ranges(value: float) -> np.ndarray:
    return np.full(4, value, np.float32)


# ------------------------------------------------------------------------------------------------------------------
# The spec.


def test_spec_round_trips_and_derives_topics():
    spec = ObservationSpec.from_dict(SPEC.to_dict())
    assert spec == SPEC
    assert spec.modalities == ("lidar", "depth", "imu", "odom")
    assert spec.shape("imu") == (4, 6) and spec.shape("depth") == (2, 3) and spec.shape("action") == (2,)
    assert spec.kind_of_topic["actuator.cmd"] == "action" and spec.kind_of_topic["sensor.lidar"] == "lidar"
    gym = ObservationSpec(obs_dim=17, action_dim=6)
    assert gym.modalities == ("obs",) and gym.topics == {"obs": "env.observation", "action": "env.action"}


@pytest.mark.parametrize("raw, words", [
    ({"depth_height": 4}, "both 0"),
    ({}, "at least one modality"),
    ({"lidar_beams": -1}, "lidar_beams"),
    ({"lidar_beams": 4, "topics": {"radar": "x"}}, "radar"),
    ({"lidar_beams": 4, "lidar_range": 3}, "unknown"),
    ({"lidar_beams": 4, "imu_samples": 2, "topics": {"imu": "sensor.lidar"}}, "own topic"),
])
def test_spec_rejects_bad_values_naming_them(raw, words):
    with pytest.raises(ValueError, match=words):
        ObservationSpec.from_dict(raw)


# ------------------------------------------------------------------------------------------------------------------
# Alignment.


def test_held_modality_mask_age_and_hold_on_exact_stamps():
    asm = _assembler(max_age_s=0.07)
    got = []
    for k in range(8):
        t = 20 * MS * k
        if t in (0, 100 * MS):
            asm.add_lidar(t, _ranges(1.0 + t / (100 * MS)))
        if t == 60 * MS:
            asm.add_lidar(45 * MS, _ranges(7.0))  # between ticks: belongs to (40, 60] ms
        out = asm.tick(t)
        got.append((float(out["lidar_mask"]), round(float(out["lidar_age"]), 6), float(out["lidar"][0])))
    assert got == [
        (1.0, 0.0, 1.0),
        (0.0, 0.02, 1.0),
        (0.0, 0.04, 1.0),
        (1.0, 0.015, 7.0),
        (0.0, 0.035, 7.0),
        (1.0, 0.0, 2.0),
        (0.0, 0.02, 2.0),
        (0.0, 0.04, 2.0),
    ]
    assert [float(v) for v in asm.out["dt"].reshape(1)] == [pytest.approx(0.02)]


def test_before_any_message_values_are_zero_and_ages_max_then_clipped():
    asm = _assembler(max_age_s=0.05)
    out = asm.tick(0)
    for m in ("lidar", "depth", "imu", "odom"):
        assert float(out[f"{m}_age"]) == pytest.approx(0.05)
        assert not out[m].any() and not out[f"{m}_mask"].any()
    asm.add_lidar(10 * MS, _ranges(2.0))
    assert float(asm.tick(20 * MS)["lidar_age"]) == pytest.approx(0.01)
    assert float(asm.tick(200 * MS)["lidar_age"]) == pytest.approx(0.05)  # clipped, value still held
    assert asm.out["lidar"][0] == 2.0


def test_imu_samples_packed_oldest_first_padded_and_overflow_keeps_newest():
    asm = _assembler()
    for i in range(1, 5):  # 5, 10, 15, 20 ms: the four samples of (0, 20] ms
        asm.add_imu(5 * MS * i, np.full(3, i, np.float32), np.full(3, -i, np.float32))
    out = asm.tick(20 * MS)
    assert out["imu"][:, 0].tolist() == [1, 2, 3, 4] and out["imu"][:, 3].tolist() == [-1, -2, -3, -4]
    assert out["imu_mask"].tolist() == [1, 1, 1, 1] and float(out["imu_age"]) == 0.0
    asm.add_imu(25 * MS, np.full(3, 5.0), np.zeros(3))
    asm.add_imu(30 * MS, np.full(3, 6.0), np.zeros(3))
    out = asm.tick(40 * MS)
    assert out["imu"][:, 0].tolist() == [5, 6, 0, 0] and out["imu_mask"].tolist() == [1, 1, 0, 0]
    assert float(out["imu_age"]) == pytest.approx(0.01)
    out = asm.tick(60 * MS)
    assert not out["imu_mask"].any() and not out["imu"].any()
    # A batched message (k, 3), the last sample at the stamp, plus more than K waiting: the newest K are kept.
    accel = np.arange(6 * 3, dtype=np.float32).reshape(6, 3)
    assert asm.add_imu(80 * MS, accel, accel, sample_dt_s=0.003)
    out = asm.tick(80 * MS)
    assert out["imu"][:, 0].tolist() == [6, 9, 12, 15] and out["imu_mask"].all()
    assert asm.stats["imu"].overflow == 2


def test_imu_batch_overlapping_held_samples_keeps_only_newer_ones():
    asm = _assembler()
    asm.add_imu(10 * MS, np.ones(3), np.ones(3))
    # Samples at 5, 10, 15 ms: the first two are not newer than the held 10 ms sample.
    asm.add_imu(15 * MS, np.arange(9.0).reshape(3, 3), np.zeros((3, 3)), sample_dt_s=0.005)
    out = asm.tick(20 * MS)
    assert out["imu"][:, 0].tolist() == [1, 6, 0, 0]


def test_odom_deltas_in_previous_robot_frame_including_rotated_and_wrapped():
    asm = _assembler()
    asm.add_odom(0, 1.0, 2.0, math.pi / 2, 0.5, 0.1)
    out = asm.tick(0)
    assert out["odom"].tolist() == pytest.approx([0.5, 0.1, 0, 0, 0]) and out["odom_mask"] == 1
    # Facing +y: +1 m along world y is 1 m forward, and -0.5 m along world x is 0.5 m to the robot's left.
    asm.add_odom(20 * MS, 0.5, 3.0, math.pi / 2 + 0.1, 0.6, 0.2)
    out = asm.tick(20 * MS)
    assert out["odom"].tolist() == pytest.approx([0.6, 0.2, 1.0, 0.5, 0.1], abs=1e-6)
    # No message: deltas 0, velocities held, mask 0.
    out = asm.tick(40 * MS)
    assert out["odom"].tolist() == pytest.approx([0.6, 0.2, 0, 0, 0]) and out["odom_mask"] == 0
    # The next message's delta covers the whole motion since the last pose used, across the yaw wrap.
    yaw0 = math.pi / 2 + 0.1
    asm.add_odom(60 * MS, 0.5 + 2 * math.cos(yaw0), 3.0 + 2 * math.sin(yaw0), 3.1, 0.0, 0.0)
    asm.tick(60 * MS)
    asm.add_odom(80 * MS, 0.5 + 2 * math.cos(yaw0), 3.0 + 2 * math.sin(yaw0), -3.1, 0.0, 0.0)
    out = asm.tick(80 * MS)
    assert out["odom"][4] == pytest.approx(2 * math.pi - 6.2, abs=1e-6)


def test_odom_deltas_are_translation_and_rotation_invariant():
    def deltas(x0: float, y0: float, yaw0: float) -> list[float]:
        asm = _assembler()
        asm.add_odom(0, x0, y0, yaw0, 0, 0)
        asm.tick(0)
        c, s = math.cos(yaw0), math.sin(yaw0)
        asm.add_odom(20 * MS, x0 + 0.3 * c - 0.1 * s, y0 + 0.3 * s + 0.1 * c, yaw0 + 0.05, 0, 0)
        return asm.tick(20 * MS)["odom"][2:].tolist()

    for pose in ((0, 0, 0), (5, -3, 2.0), (-1, 7, -2.9)):
        assert deltas(*pose) == pytest.approx([0.3, 0.1, 0.05], abs=1e-5)


def test_action_held_stop_and_timeout():
    asm = _assembler(action_timeout_s=0.05)
    assert asm.tick(0)["action"].tolist() == [0, 0]  # before the first command
    asm.set_command(10 * MS, 0.3, -0.2)
    assert asm.tick(20 * MS)["action"].tolist() == pytest.approx([0.3, -0.2])
    assert asm.tick(40 * MS)["action"].tolist() == pytest.approx([0.3, -0.2])  # held
    assert asm.tick(80 * MS)["action"].tolist() == [0, 0]  # 70 ms old: past the drive's timeout
    asm.set_command(90 * MS, 0.3, 0.1, stop=True)
    assert asm.tick(100 * MS)["action"].tolist() == [0, 0]
    assert asm.add("action", 110 * MS, {"v_mps": 0.1, "omega_radps": 0.2})
    assert asm.tick(120 * MS)["action"].tolist() == pytest.approx([0.1, 0.2])


def test_missing_modality_keeps_masks_zero_and_ages_max():
    asm = _assembler()
    for k in range(5):
        asm.add_lidar(20 * MS * k, _ranges(1.0))
        out = asm.tick(20 * MS * k)
        assert not out["depth_mask"].any() and not out["imu_mask"].any() and out["odom_mask"] == 0
        assert out["depth_age"] == out["imu_age"] == out["odom_age"] == 1.0


# ------------------------------------------------------------------------------------------------------------------
# Validation and the late rule.


def test_nonfinite_and_wrong_shape_rejected_counted_and_never_stored():
    asm = _assembler()
    asm.add_lidar(0, _ranges(1.0))
    asm.tick(0)
    bad = _ranges(5.0)
    bad[2] = np.nan
    assert not asm.add_lidar(10 * MS, bad)
    assert not asm.add_lidar(11 * MS, np.ones(5, np.float32))
    assert not asm.add_lidar(12 * MS, np.array([1, np.inf, 1, 1], np.float64))
    assert not asm.add_depth(10 * MS, np.full((2, 3), np.nan, np.float32))
    assert not asm.add_depth(10 * MS, np.ones((2, 3)), depth_scale_m=float("nan"))
    imu = np.ones((3, 3))
    imu[2, 1] = np.inf  # one bad sample: the whole message goes
    assert not asm.add_imu(10 * MS, imu, np.ones((3, 3)), 0.005)
    assert not asm.add_imu(10 * MS, np.ones(3), np.ones(2))
    assert not asm.add_odom(10 * MS, 0, 0, float("nan"), 0, 0)
    assert not asm.add_odom(10 * MS, 0, 0, "east", 0, 0)
    assert not asm.set_command(10 * MS, float("inf"), 0)
    assert not asm.set_action(10 * MS, np.ones(3))
    assert not asm.add("lidar", 10 * MS, {"ranges": _ranges(1.0)})  # a missing field
    out = asm.tick(20 * MS)
    assert out["lidar"].tolist() == [1, 1, 1, 1] and out["lidar_mask"] == 0
    assert np.isfinite(out["depth"]).all() and not out["imu_mask"].any() and out["odom_mask"] == 0
    assert out["action"].tolist() == [0, 0]
    s = asm.stats
    assert (s["lidar"].non_finite, s["lidar"].malformed, s["lidar"].accepted) == (2, 2, 1)
    assert (s["depth"].non_finite, s["depth"].malformed) == (1, 1)
    assert (s["imu"].non_finite, s["imu"].malformed) == (1, 1)
    assert (s["odom"].non_finite, s["odom"].malformed) == (1, 1)
    assert (s["action"].non_finite, s["action"].malformed) == (1, 1)


def test_late_message_applied_at_next_tick_only_if_fresher():
    asm = _assembler()
    asm.add_lidar(0, _ranges(1.0))
    asm.tick(0)
    asm.tick(40 * MS)
    # Stamped 30 ms, arriving after the 40 ms tick: late, but fresher than the held 0 ms scan.
    assert asm.add_lidar(30 * MS, _ranges(3.0))
    out = asm.tick(60 * MS)
    assert out["lidar_mask"] == 1 and out["lidar"][0] == 3.0 and float(out["lidar_age"]) == pytest.approx(0.03)
    # Stamped 10 ms: late and older than what is held: dropped.
    assert not asm.add_lidar(10 * MS, _ranges(9.0))
    out = asm.tick(80 * MS)
    assert out["lidar_mask"] == 0 and out["lidar"][0] == 3.0
    assert (asm.stats["lidar"].late, asm.stats["lidar"].stale, asm.stats["lidar"].accepted) == (2, 1, 2)
    # A duplicate stamp is not fresher either.
    asm.add_lidar(90 * MS, _ranges(4.0))
    assert not asm.add_lidar(90 * MS, _ranges(5.0))
    assert asm.tick(100 * MS)["lidar"][0] == 4.0


def test_tick_times_must_increase_and_dt_follows_them():
    asm = _assembler()
    assert float(asm.tick(0)["dt"]) == pytest.approx(0.02)
    assert float(asm.tick(50 * MS)["dt"]) == pytest.approx(0.05)
    with pytest.raises(ValueError, match="increase"):
        asm.tick(50 * MS)


def test_generic_add_decodes_oni_data_maps():
    asm = _assembler()
    assert asm.add("lidar", 0, {"ranges_m": _ranges(2.0), "range_max_m": 12.0})
    assert asm.add("depth", 0, {"depth": np.array([[1000, 0, 2500]] * 2, np.uint16), "depth_scale_m": 0.001})
    assert asm.add("imu", 0, {"accel_mps2": np.zeros(3, np.float32), "gyro_radps": np.ones(3, np.float32)})
    assert asm.add("odom", 0, {"x_m": 0.0, "y_m": 0.0, "yaw_rad": 0.0, "v_mps": 0.2, "omega_radps": 0.0})
    assert asm.add("action", 0, {"v_mps": 0.2, "omega_radps": 0.1, "stop": False})
    out = asm.tick(0)
    assert out["depth"][0].tolist() == pytest.approx([1.0, 0.0, 2.5])
    assert out["imu"][0].tolist() == [0, 0, 0, 1, 1, 1] and out["odom"][0] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="not a modality"):
        asm.add("obs", 0, {"observation": np.zeros(3)})
    gym = TickAssembler(ObservationSpec(obs_dim=3, action_dim=2), 125.0)
    assert gym.add("obs", 0, {"observation": np.arange(3, dtype=np.float32)})
    assert gym.add("action", 0, {"action": np.array([0.5, -0.5], np.float32)})
    out = gym.tick(0)
    assert out["obs"].tolist() == [0, 1, 2] and out["action"].tolist() == [0.5, -0.5]
    assert float(out["dt"]) == pytest.approx(0.008)


def test_reset_forgets_everything():
    asm = _assembler()
    asm.add_lidar(0, _ranges(1.0))
    asm.add_odom(0, 1, 1, 0, 1, 0)
    asm.tick(0)
    asm.reset()
    out = asm.tick(0)  # the same time again is fine after a reset
    assert not out["lidar"].any() and out["lidar_age"] == 1.0 and asm.stats["lidar"].accepted == 0


def test_tick_returns_the_same_preallocated_arrays_and_allocates_nothing():
    spec = ObservationSpec(lidar_beams=20_000, imu_samples=4, odom=True)
    asm = TickAssembler(spec, 50.0)
    ranges = np.ones(20_000, np.float32)
    accel = np.ones(3, np.float32)
    first = asm.tick(0)
    views = {k: v for k, v in first.items()}

    def run(k0: int, n: int) -> None:
        for k in range(k0, k0 + n):
            t = 20 * MS * k
            asm.add_lidar(t, ranges)
            for j in range(4):
                asm.add_imu(t - 5 * MS * (3 - j), accel, accel)
            asm.add_odom(t, 0.01 * k, 0, 0, 0.5, 0)
            asm.set_command(t, 0.2, 0.0)
            out = asm.tick(t)
            assert all(out[key] is views[key] for key in views)

    run(1, 5)  # warm-up: first-call caches
    tracemalloc.start()
    tracemalloc.reset_peak()
    base, _ = tracemalloc.get_traced_memory()
    run(10, 200)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # One ranges array is 80 kB: a copy per tick or message would show; Python floats and ints are tiny.
    assert peak - base < 20_000


# ------------------------------------------------------------------------------------------------------------------
# Normalization statistics.


def test_norm_stats_round_trip_and_broadcast():
    stats = NormStats({"lidar": np.array([2.0], np.float32), "imu": np.arange(6, dtype=np.float32)},
                      {"lidar": np.array([0.5], np.float32), "imu": np.ones(6, np.float32)},
                      {"lidar": 10, "imu": 4})
    again = NormStats.from_dict(stats.to_dict())
    assert again.to_dict() == stats.to_dict()
    assert again.normalize("lidar", np.full((2, 3, 5), 3.0)).tolist() == np.full((2, 3, 5), 2.0).tolist()
    assert again.normalize("imu", np.zeros((7, 4, 6)))[0, 0].tolist() == [0, -1, -2, -3, -4, -5]
    with pytest.raises(ValueError, match="std > 0"):
        NormStats({"x": np.zeros(1)}, {"x": np.zeros(1)}, {"x": 1})
