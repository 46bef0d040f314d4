"""Robot descriptions: the shipped robot meets the spec; bad input is rejected naming the field and the range."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import yaml

from robots import ROBOTS_DIR, load_robot, robot_path
from robots.description import (
    DepthParams,
    DescriptionError,
    LidarParams,
    RobotDescription,
    robot_from_dict,
    robot_mjcf,
)


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(robot_path("turtlebot4").read_text())["robot"]


@pytest.fixture(scope="module")
def robot() -> RobotDescription:
    return load_robot(robot_path("turtlebot4"))


def _with(raw: dict, path: tuple, value) -> dict:
    """A deep copy of ``raw`` with the value at ``path`` (keys and list indices) replaced."""
    out = copy.deepcopy(raw)
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


def test_shipped_robot_meets_the_spec(robot):
    base = robot.base
    assert base.kind == "diff_drive"
    assert 0.15 <= base.radius_m <= 0.2  # TurtleBot 4 class footprint
    lidar = robot.sensor("lidar")
    assert lidar.kind == "lidar" and lidar.topic == "sensor.lidar" and lidar.schema == "sensor.lidar"
    assert lidar.params.beams >= 180
    assert lidar.params.fov_deg == 360.0
    assert lidar.rate_hz == 10
    assert (lidar.params.range_min_m, lidar.params.range_max_m) == (0.15, 12.0)
    imu = robot.sensor("imu")
    assert imu.rate_hz == 200 and imu.topic == "sensor.imu"
    assert imu.noise.accel_std_mps2 > 0 and imu.noise.gyro_std_radps > 0
    assert imu.noise.accel_bias_std_mps2 > 0 and imu.noise.gyro_bias_walk_radps > 0
    odom = robot.sensor("odom")
    assert odom.rate_hz == 50 and odom.topic == "sensor.odom"
    depth = robot.sensor("depth")
    assert depth.params.width >= 64 and depth.params.height >= 48 and depth.rate_hz == 15
    assert robot.drive.topic == "actuator.cmd"


def test_shipped_robots_are_found_by_name():
    assert robot_path("turtlebot4") == ROBOTS_DIR / "turtlebot4" / "robot.yaml"
    with pytest.raises(FileNotFoundError, match="turtlebot4"):
        robot_path("no_such_robot")


def test_numbers_are_stored_as_floats(robot):
    assert isinstance(robot.sensor("lidar").rate_hz, float)
    assert isinstance(robot.sensor("lidar").params.fov_deg, float)


@pytest.mark.parametrize(
    "path, value, message",
    [
        (("base", "max_v_mps"), -1, "robot.base.max_v_mps = -1: must be in (0, 5]"),
        (("base", "max_omega_radps"), float("nan"), "robot.base.max_omega_radps = nan: must be a number in (0, 20]"),
        (("base", "mass_kg"), "heavy", "robot.base.mass_kg = 'heavy': must be a number in (0, 500]"),
        (("base", "track_width_m"), 0.5, "robot.base.track_width_m = 0.5: must be in (0, 0.342]"),
        (("base", "kind"), "omni", "robot.base.kind = 'omni': must be one of ['diff_drive']"),
        (("sensors", 0, "params", "beams"), 0, "robot.sensors[lidar].params.beams = 0: must be an integer in [1, 8192]"),
        (("sensors", 0, "params", "range_max_m"), 0.1, "robot.sensors[lidar].params.range_max_m = 0.1: must be in (0.15, 200]"),
        (("sensors", 0, "noise", "dropout_prob"), 1.5, "robot.sensors[lidar].noise.dropout_prob = 1.5: must be in [0, 1)"),
        (("sensors", 1, "rate_hz"), 0, "robot.sensors[imu].rate_hz = 0: must be in (0, 1000]"),
        (("sensors", 1, "noise", "gyro_std_radps"), -0.1, "robot.sensors[imu].noise.gyro_std_radps = -0.1: must be in [0, 10]"),
        (("sensors", 3, "params", "width"), 4, "robot.sensors[depth].params.width = 4: must be an integer in [8, 1024]"),
        (("sensors", 3, "kind"), "radar", "robot.sensors[depth].kind = 'radar': must be one of ['lidar', 'depth', 'imu', 'odom']"),
        (("sensors", 0, "mount", "xyz_m"), [0, 0], "robot.sensors[lidar].mount.xyz_m = (0, 0): must be a list of 3 numbers"),
        (("actuators", 0, "command_timeout_s"), 0, "robot.actuators[0].command_timeout_s = 0: must be in (0, 10]"),
    ],
)
def test_bad_values_name_the_field_and_the_range(raw, path, value, message):
    with pytest.raises(DescriptionError) as info:
        robot_from_dict(_with(raw, path, value))
    assert str(info.value) == message
    assert info.value.field == message.split(" = ")[0]


def test_unknown_fields_are_rejected_with_the_known_ones(raw):
    with pytest.raises(DescriptionError, match=r"robot\.base\.max_speed .*unknown field; known: .*max_v_mps"):
        robot_from_dict(_with(raw, ("base", "max_speed"), 1.0))
    with pytest.raises(DescriptionError, match=r"robot\.sensors\[lidar\]\.params\.beam_count"):
        robot_from_dict(_with(raw, ("sensors", 0, "params", "beam_count"), 360))


def test_missing_fields_are_reported(raw):
    broken = copy.deepcopy(raw)
    del broken["base"]["wheel_radius_m"]
    with pytest.raises(DescriptionError, match=r"robot\.base\.wheel_radius_m = None: is required"):
        robot_from_dict(broken)
    broken = copy.deepcopy(raw)
    del broken["sensors"][0]["topic"]
    with pytest.raises(DescriptionError, match=r"robot\.sensors\[lidar\]\.topic = None: is required"):
        robot_from_dict(broken)


def test_duplicate_topics_and_missing_drive_are_rejected(raw):
    with pytest.raises(DescriptionError, match=r"robot\.sensors\[imu\]\.topic = 'sensor\.lidar': must be unique"):
        robot_from_dict(_with(raw, ("sensors", 1, "topic"), "sensor.lidar"))
    with pytest.raises(DescriptionError, match=r"robot\.actuators = None: must be a non-empty list"):
        robot_from_dict(_with(raw, ("actuators",), None))


def test_load_robot_reads_a_file_and_reports_a_bad_one(tmp_path, raw):
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"robot": _with(raw, ("name",), "copy")}))
    assert load_robot(good).name == "copy"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"robot": _with(raw, ("base", "max_v_mps"), 9)}))
    with pytest.raises(DescriptionError, match=r"robot\.base\.max_v_mps = 9: must be in \(0, 5\]"):
        load_robot(bad)
    with pytest.raises(DescriptionError, match="top-level 'robot' key"):
        (tmp_path / "empty.yaml").write_text("name: x\n")
        load_robot(tmp_path / "empty.yaml")


def test_descriptions_are_immutable_and_without_noise_is_a_copy(robot):
    with pytest.raises(dataclasses.FrozenInstanceError):
        robot.base.max_v_mps = 1.0  # type: ignore[misc]
    quiet = robot.without_noise()
    assert quiet.sensor("lidar").noise.range_std_m == 0.0
    assert quiet.sensor("imu").noise.accel_bias_std_mps2 == 0.0
    assert robot.sensor("lidar").noise.range_std_m > 0.0
    assert quiet.sensor("lidar").params == robot.sensor("lidar").params


def test_derived_values():
    lidar = LidarParams(beams=360, range_min_m=0.15, range_max_m=12.0)
    assert lidar.angle_min_rad == pytest.approx(-math.pi)
    assert lidar.angle_increment_rad == pytest.approx(2 * math.pi / 360)
    partial = LidarParams(beams=181, range_min_m=0.1, range_max_m=10.0, fov_deg=180.0)
    assert partial.angle_min_rad + 180 * partial.angle_increment_rad == pytest.approx(math.pi / 2)
    fx, fy, cx, cy = DepthParams(width=64, height=48, hfov_deg=90.0, range_min_m=0.2, range_max_m=6.0).intrinsics
    assert fx == pytest.approx(32.0) and fy == fx and (cx, cy) == (31.5, 23.5)


def test_mjcf_names_every_sensor_site(robot):
    xml = robot_mjcf(robot)
    for sensor in robot.sensors:
        assert f'name="sensor_{sensor.name}"' in xml
    assert 'name="imu_accel"' in xml and 'name="imu_gyro"' in xml
