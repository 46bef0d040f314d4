"""The simulation core: sensor rates and stamps on the sim clock, reproducibility, command handling, contacts,
and the preset loader."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import mujoco
import numpy as np
import pytest

from robots import load_robot, robot_path
from robots.description import DescriptionError, RobotDescription, robot_mjcf
from sim.config import SimSettings, load_sim_config, sim_config_from_dict
from sim.hallway import HallwayParams, Pose2, generate_hallway, square_room
from sim.robot_sim import RobotSim, measure_speed, scene_mjcf

REPO = Path(__file__).resolve().parents[2]
RATES = {"sensor.lidar": 10, "sensor.imu": 200, "sensor.odom": 50, "sensor.depth": 15}


@pytest.fixture(scope="module")
def robot() -> RobotDescription:
    return load_robot(robot_path("turtlebot4"))


@pytest.fixture(scope="module")
def hallway(robot):
    return generate_hallway(HallwayParams(seed=5), robot.base.radius_m)


def _drive(sim: RobotSim, seconds: float, v: float = 0.3, control_hz: float = 50.0) -> list:
    readings = []
    for k in range(int(round(seconds * control_hz))):
        sim.set_command(v, 0.6 * math.sin(0.5 * k / control_hz))
        readings += sim.advance(1.0 / control_hz)
    return readings


def test_robot_mjcf_compiles_standalone(robot):
    model = mujoco.MjModel.from_xml_string(robot_mjcf(robot))
    assert model.nu == 3 and model.njnt == 3
    assert model.body("base").mass[0] == pytest.approx(robot.base.mass_kg)


def test_scene_uses_the_asked_timestep(robot, hallway):
    model = mujoco.MjModel.from_xml_string(scene_mjcf(hallway, robot, 600))
    assert model.opt.timestep == pytest.approx(1 / 600)
    assert model.ngeom == 1 + len(hallway.walls) + len(hallway.obstacles) + 2  # floor, world, robot geoms


def test_each_sensor_runs_at_its_rate_with_exact_stamps(robot, hallway):
    sim = RobotSim(robot, hallway, seed=1)
    first = sim.reset()
    assert sorted(r.topic for r in first) == sorted(RATES) and all(r.stamp_ns == 0 for r in first)
    readings = _drive(sim, 2.0)
    assert sim.sim_time_ns == 2_000_000_000
    for topic, rate in RATES.items():
        stamps = [r.stamp_ns for r in readings if r.topic == topic]
        assert len(stamps) == rate * 2
        assert stamps == [k * 1_000_000_000 // rate for k in range(1, rate * 2 + 1)]  # multiples of the period
        assert all(b > a for a, b in zip(stamps, stamps[1:]))
    all_stamps = [r.stamp_ns for r in readings]
    assert all_stamps == sorted(all_stamps)  # one stream in time order
    assert sim.stats.readings == {t: 1 + 2 * r for t, r in RATES.items()}


def test_readings_fall_in_the_advanced_interval(robot):
    sim = RobotSim(robot, square_room(4.0))
    sim.reset()
    for _ in range(7):
        before = sim.sim_time_ns
        readings = sim.advance(0.035)  # 21 steps: not aligned with any sensor period
        assert all(before < r.stamp_ns <= sim.sim_time_ns for r in readings)
    assert sim.sim_time_ns == 7 * 35_000_000


def _equal(a: list, b: list) -> bool:
    if len(a) != len(b):
        return False
    for ra, rb in zip(a, b):
        if (ra.topic, ra.stamp_ns, ra.frame_id) != (rb.topic, rb.stamp_ns, rb.frame_id) or ra.data.keys() != rb.data.keys():
            return False
        for key, value in ra.data.items():
            if not np.array_equal(value, rb.data[key]):
                return False
    return True


def test_same_seed_same_data_and_different_seed_different_data(robot, hallway):
    runs = []
    for seed in (7, 7, 8):
        sim = RobotSim(robot, hallway, seed=seed)
        runs.append(sim.reset() + _drive(sim, 0.5))
    assert _equal(runs[0], runs[1])
    assert not _equal(runs[0], runs[2])
    # reset(seed) on a used simulator replays the same episode; reset() moves on to a new one
    sim = RobotSim(robot, hallway, seed=0)
    _drive(sim, 0.3)
    assert _equal(sim.reset(7) + _drive(sim, 0.5), runs[0])
    assert not _equal(sim.reset() + _drive(sim, 0.5), runs[0])


def test_nan_commands_are_rejected_and_stop_the_base(robot):
    sim = RobotSim(robot, square_room(6.0), SimSettings(sensor_noise=False))
    sim.reset()
    _drive(sim, 0.5)
    assert sim.ground_truth().v_mps > 0.2
    for bad in ((math.nan, 0.1), (0.1, math.inf), (-math.inf, math.nan), ("fast", 0.0), (None, 0.0)):
        sim.set_command(*bad)
        assert np.isfinite(sim.data.ctrl).all() and not sim.data.ctrl[:2].any()
    sim.advance(1.0)
    assert sim.stats.rejected_commands == 5
    assert abs(sim.ground_truth().v_mps) < 1e-3


def test_out_of_range_commands_are_clipped_and_counted(robot):
    sim = RobotSim(robot, square_room(12.0, start=Pose2(-5.0, 0.0, 0.0)), SimSettings(sensor_noise=False))
    sim.reset()
    for _ in range(100):
        sim.set_command(10.0, 0.0)
        sim.advance(0.02)
    assert sim.stats.clipped_commands == 100
    assert sim.ground_truth().v_mps == pytest.approx(robot.base.max_v_mps, abs=0.01)
    sim.set_command(0.0, -50.0)
    assert sim.data.ctrl[1] == -robot.base.max_omega_radps
    assert sim.stats.clipped_commands == 101


def test_acceleration_is_limited(robot):
    sim = RobotSim(robot, square_room(6.0), SimSettings(sensor_noise=False))
    sim.reset()
    sim.set_command(robot.base.max_v_mps, 0.0)
    sim.advance(0.1)
    assert 0.5 * robot.base.max_accel_mps2 * 0.1 < sim.ground_truth().v_mps <= robot.base.max_accel_mps2 * 0.1 + 1e-6
    sim.set_command(0.0, robot.base.max_omega_radps)
    sim.advance(0.1)
    assert abs(sim.ground_truth().omega_radps) <= robot.base.max_alpha_radps2 * 0.1 + 1e-6


def test_the_base_stops_when_commands_stop(robot):
    sim = RobotSim(robot, square_room(6.0), SimSettings(sensor_noise=False))
    sim.reset()
    sim.set_command(0.3, 0.0)
    sim.advance(robot.drive.command_timeout_s - 0.1)
    assert sim.ground_truth().v_mps > 0.25 and sim.stats.command_timeouts == 0
    sim.advance(1.0)
    assert sim.stats.command_timeouts == 1
    assert abs(sim.ground_truth().v_mps) < 1e-3


def test_driving_into_a_wall_collides_and_does_not_pass_through(robot):
    sim = RobotSim(robot, square_room(4.0, start=Pose2(0.0, 0.0, 0.0)), SimSettings(sensor_noise=False))
    sim.reset()
    assert sim.stats.collisions == 0
    readings = []
    for _ in range(250):  # 5 s at full speed: the wall is 2 m ahead
        sim.set_command(robot.base.max_v_mps, 0.0)
        readings += sim.advance(0.02)
        assert sim.ground_truth().x_m < 2.0 - robot.base.radius_m + 0.01
    truth = sim.ground_truth()
    assert truth.in_collision and truth.collisions == 1 and sim.stats.collisions == 1
    assert truth.x_m == pytest.approx(2.0 - robot.base.radius_m, abs=0.01)
    assert abs(truth.v_mps) < 0.01
    # pushing into the wall, the LiDAR's forward beam sees it at the footprint distance (less the mount offset)
    scan = [r for r in readings if r.topic == "sensor.lidar"][-1].data["ranges_m"]
    assert scan[180] == pytest.approx(robot.base.radius_m - robot.sensor("lidar").mount.xyz_m[0], abs=0.01)


def test_bad_settings_and_steps_are_rejected(robot):
    with pytest.raises(DescriptionError, match=r"sim\.physics_hz = 500: must be a multiple of every sensor rate \(not of 'imu' at 200 Hz, 'depth' at 15 Hz\); allowed: multiples of 600"):
        RobotSim(robot, square_room(4.0), SimSettings(physics_hz=500))
    with pytest.raises(DescriptionError, match=r"^physics_hz = 100: must be an integer in \[500, 20000\]$"):
        SimSettings(physics_hz=100)
    sim = RobotSim(robot, square_room(4.0))
    for dt in (0.0011, -0.1, math.nan):
        with pytest.raises(DescriptionError, match="dt_s"):
            sim.advance(dt)
    assert sim.advance(0.0) == []


def test_ground_truth_follows_the_motion(robot):
    sim = RobotSim(robot, square_room(12.0, start=Pose2(-4.0, -1.0, 0.5)), SimSettings(sensor_noise=False))
    sim.reset()
    for _ in range(100):
        sim.set_command(0.3, 0.0)
        sim.advance(0.02)
    truth = sim.ground_truth()
    travelled = math.hypot(truth.x_m + 4.0, truth.y_m + 1.0)
    assert travelled == pytest.approx(0.3 * 2.0 - 0.5 * 0.3**2 / robot.base.max_accel_mps2, abs=0.03)
    assert math.atan2(truth.y_m + 1.0, truth.x_m + 4.0) == pytest.approx(0.5, abs=1e-3)
    assert truth.yaw_rad == pytest.approx(0.5, abs=1e-6) and abs(truth.lateral_mps) < 1e-6
    assert truth.stamp_ns == sim.sim_time_ns == 2_000_000_000


def test_hallway_preset_loads(robot):
    config = load_sim_config(REPO / "configs" / "hallway.yaml")
    assert config.robot_path == robot_path("turtlebot4")
    assert config.load_robot() == robot
    assert config.sim == SimSettings(physics_hz=600, sensor_noise=True)
    assert config.world == HallwayParams()


def test_preset_errors_name_the_field(tmp_path):
    with pytest.raises(DescriptionError, match=r"^sim\.physics_hz = 100: must be an integer in \[500, 20000\]$"):
        sim_config_from_dict({"robot": "turtlebot4", "sim": {"physics_hz": 100}})
    with pytest.raises(DescriptionError, match=r"^world\.width_min_m = -1: must be in \[0\.1, 20\]$"):
        sim_config_from_dict({"robot": "turtlebot4", "world": {"width_min_m": -1}})
    with pytest.raises(DescriptionError, match=r"^robot = 'hal9000': .*shipped: \['turtlebot4'\]"):
        sim_config_from_dict({"robot": "hal9000"})
    with pytest.raises(DescriptionError, match=r"^robot = 'robots/none\.yaml': no such file"):
        sim_config_from_dict({"robot": "robots/none.yaml"}, tmp_path)
    with pytest.raises(DescriptionError, match=r"^sim\.sensor_noise = 'yes': must be true or false$"):
        sim_config_from_dict({"robot": "turtlebot4", "sim": {"sensor_noise": "yes"}})


def test_preset_robot_paths_resolve_against_the_preset(tmp_path):
    preset = tmp_path / "preset.yaml"
    preset.write_text(f"robot: {robot_path('turtlebot4')}\nworld: {{seed: 3}}\nmodel: {{ignored: true}}\n")
    config = load_sim_config(preset)
    assert config.robot_path == robot_path("turtlebot4") and config.world.seed == 3


def test_measure_speed_reports_the_breakdown(robot):
    report = measure_speed(seconds=1.0, seed=0, robot=robot)
    assert report["sim_s"] == pytest.approx(1.0)
    assert report["sim_s_per_wall_s"] > 0
    assert set(report["sensor_ms_per_sim_s"]) == set(RATES)
    assert report["readings"] == {t: 1 + r for t, r in RATES.items()}


def test_descriptions_are_not_mutated_by_the_sim(robot):
    before = dataclasses.asdict(robot)
    RobotSim(robot, square_room(4.0), SimSettings(sensor_noise=False))
    assert dataclasses.asdict(robot) == before
