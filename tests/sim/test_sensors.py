"""Simulated sensors against analytic answers in worlds with known geometry, and against the ONI schemas."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from oni.codec import pack, unpack
from oni.message import Header
from robots import load_robot, robot_path
from robots.description import RobotDescription
from sim.config import SimSettings
from sim.hallway import Cylinder, Pose2, square_room
from sim.robot_sim import RobotSim
from sim.sensors import Reading

NOISE_FREE = SimSettings(sensor_noise=False)


@pytest.fixture(scope="module")
def robot() -> RobotDescription:
    return load_robot(robot_path("turtlebot4"))


def _by_topic(readings: list[Reading]) -> dict[str, Reading]:
    return {r.topic: r for r in readings}


def _sensor_origin(sim: RobotSim, name: str) -> tuple[float, float, float, float]:
    """World (x, y, z, yaw) of a sensor mounted with zero roll and pitch, from the ground-truth pose."""
    truth = sim.ground_truth()
    mx, my, mz = sim.robot.sensor(name).mount.xyz_m
    c, s = math.cos(truth.yaw_rad), math.sin(truth.yaw_rad)
    yaw = truth.yaw_rad + sim.robot.sensor(name).mount.rpy_rad[2]
    return truth.x_m + c * mx - s * my, truth.y_m + s * mx + c * my, mz, yaw


def _square_ranges(ox: float, oy: float, angles: np.ndarray, half: float) -> np.ndarray:
    c, s = np.cos(angles), np.sin(angles)
    with np.errstate(divide="ignore", invalid="ignore"):
        tx = np.where(c > 0, (half - ox) / c, np.where(c < 0, (-half - ox) / c, np.inf))
        ty = np.where(s > 0, (half - oy) / s, np.where(s < 0, (-half - oy) / s, np.inf))
    return np.minimum(tx, ty)


def _circle_ranges(ox: float, oy: float, angles: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    dx, dy = np.cos(angles), np.sin(angles)
    fx, fy = ox - cx, oy - cy
    b = fx * dx + fy * dy
    disc = b * b - (fx * fx + fy * fy - r * r)
    t = -b - np.sqrt(np.maximum(disc, 0.0))
    return np.where((disc >= 0) & (t > 0), t, np.inf)


@pytest.mark.parametrize("pose", [Pose2(0.0, 0.0, 0.0), Pose2(0.7, -0.4, 0.9), Pose2(-1.1, 0.8, -2.5)])
def test_lidar_ranges_equal_analytic_distances_in_a_room(robot, pose):
    pillar = Cylinder((1.2, 1.1), 0.3, 1.0)
    room = square_room(4.0, start=pose, obstacles=[pillar])
    sim = RobotSim(robot, room, NOISE_FREE)
    scan = _by_topic(sim.reset())["sensor.lidar"].data
    ox, oy, _, yaw = _sensor_origin(sim, "lidar")
    n = len(scan["ranges_m"])
    angles = yaw + scan["angle_min_rad"] + np.arange(n) * scan["angle_increment_rad"]
    expected = np.minimum(_square_ranges(ox, oy, angles, 2.0), _circle_ranges(ox, oy, angles, 1.2, 1.1, 0.3))
    assert scan["ranges_m"].dtype == np.float32 and scan["ranges_m"].shape == (360,)
    np.testing.assert_allclose(scan["ranges_m"], expected, atol=1e-5)
    assert (expected < 1.9).any()  # the pillar is in view of some beams


def test_lidar_beams_without_a_return_carry_range_max(robot):
    sim = RobotSim(robot, square_room(30.0), NOISE_FREE)
    scan = _by_topic(sim.reset())["sensor.lidar"].data
    assert np.all(scan["ranges_m"] == np.float32(12.0))
    assert scan["range_min_m"] == 0.15 and scan["range_max_m"] == 12.0 and scan["scan_time_s"] == pytest.approx(0.1)


def test_lidar_noise_and_dropout_follow_the_model(robot):
    room = square_room(4.0, start=Pose2(0.3, 0.2, 0.4))
    sim = RobotSim(robot, room, SimSettings(sensor_noise=True), seed=1)
    readings = sim.reset() + sim.advance(3.0)
    scans = np.stack([r.data["ranges_m"] for r in readings if r.topic == "sensor.lidar"])
    ox, oy, _, yaw = _sensor_origin(sim, "lidar")
    first = readings[0].data
    angles = yaw + first["angle_min_rad"] + np.arange(scans.shape[1]) * first["angle_increment_rad"]
    expected = _square_ranges(ox, oy, angles, 2.0)
    dropped = scans == np.float32(12.0)
    noise = robot.sensor("lidar").noise
    assert dropped.mean() == pytest.approx(noise.dropout_prob, abs=0.004)
    residual = (scans - expected)[~dropped]
    assert residual.std() == pytest.approx(noise.range_std_m, rel=0.1)
    assert abs(residual.mean()) < 0.002


def test_depth_is_z_depth_of_the_wall_and_floor_in_front(robot):
    # Tall walls so every upper row sees the wall; the robot faces the +x wall from the room centre.
    room = square_room(4.0, wall_height_m=3.0)
    sim = RobotSim(robot, room, NOISE_FREE)
    frame = _by_topic(sim.reset())["sensor.depth"].data
    depth = frame["depth"]
    params = robot.sensor("depth").params
    assert depth.shape == (params.height, params.width) and depth.dtype == np.float32
    ox, _, oz, _ = _sensor_origin(sim, "depth")
    fy, cy = frame["fy"], frame["cy"]
    rows = np.arange(params.height)
    wall = 2.0 - ox  # z-depth of a fronto-parallel wall is the same for every pixel
    with np.errstate(divide="ignore"):
        floor = np.where(rows > cy, oz * fy / (rows - cy), np.inf)
    expected_rows = np.minimum(wall, floor)
    np.testing.assert_allclose(depth, np.repeat(expected_rows[:, None], params.width, axis=1), atol=1e-5)
    assert depth[0, 0] == pytest.approx(wall, abs=1e-5)
    assert depth[-1, params.width // 2] < wall  # bottom rows see the floor first
    assert (frame["fx"], frame["cx"], frame["depth_scale_m"]) == (pytest.approx(params.intrinsics[0]), 31.5, 1.0)


def test_depth_follows_the_mount_rotation(robot):
    # Camera pitched down 0.4 rad and yawed 0.3 rad (ROS roll-pitch-yaw): every pixel's z-depth, computed
    # from the rotation built here independently, against the floor and the walls of a tall room.
    depth_desc = robot.sensor("depth")
    mount = dataclasses.replace(depth_desc.mount, rpy_rad=(0.0, 0.4, 0.3))
    tilted = dataclasses.replace(robot, sensors=tuple(dataclasses.replace(s, mount=mount) if s.name == "depth" else s for s in robot.sensors))
    sim = RobotSim(tilted, square_room(4.0, wall_height_m=3.0), NOISE_FREE)
    frame = _by_topic(sim.reset())["sensor.depth"].data
    fx, fy, cx, cy = frame["fx"], frame["fy"], frame["cx"], frame["cy"]
    p, y = 0.4, 0.3
    rot = np.array([[math.cos(y), -math.sin(y), 0], [math.sin(y), math.cos(y), 0], [0, 0, 1]]) @ np.array(
        [[math.cos(p), 0, math.sin(p)], [0, 1, 0], [-math.sin(p), 0, math.cos(p)]]
    )
    v, u = np.mgrid[0 : depth_desc.params.height, 0 : depth_desc.params.width]
    rays = np.stack([np.ones(u.shape), -(u - cx) / fx, -(v - cy) / fy], axis=-1) @ rot.T  # unit optical-axis component
    ox, oy, oz = depth_desc.mount.xyz_m
    with np.errstate(divide="ignore", invalid="ignore"):
        hits = [np.where(rays[..., 2] < 0, oz / -rays[..., 2], np.inf)]
        for axis, origin in ((0, ox), (1, oy)):
            d = rays[..., axis]
            hits.append(np.where(d > 0, (2.0 - origin) / d, np.where(d < 0, (-2.0 - origin) / d, np.inf)))
    expected = np.min(hits, axis=0)
    expected = np.where(expected <= depth_desc.params.range_max_m, expected, 0.0)
    np.testing.assert_allclose(frame["depth"], expected, atol=1e-5)
    assert (frame["depth"] < 1.0).sum() > 100  # the pitched camera sees the floor close by


def test_depth_without_a_return_is_zero(robot):
    # Low walls and a far room: upper rows see nothing, lower rows see the floor within range.
    sim = RobotSim(robot, square_room(30.0, wall_height_m=0.1), NOISE_FREE)
    depth = _by_topic(sim.reset())["sensor.depth"].data["depth"]
    assert np.all(depth[:24] == 0.0)
    assert np.all(depth[-1] > 0.0) and np.all(depth <= 6.0)


def test_imu_at_rest_reads_gravity_and_no_rotation(robot):
    sim = RobotSim(robot, square_room(4.0), NOISE_FREE)
    imu = _by_topic(sim.reset() + sim.advance(0.1))["sensor.imu"].data
    np.testing.assert_allclose(imu["accel_mps2"], [0.0, 0.0, 9.81], atol=1e-4)
    np.testing.assert_allclose(imu["gyro_radps"], [0.0, 0.0, 0.0], atol=1e-6)
    assert imu["accel_mps2"].dtype == np.float32 and imu["accel_mps2"].shape == (3,)


def test_imu_gyro_and_centripetal_acceleration_while_turning(robot):
    sim = RobotSim(robot, square_room(8.0), NOISE_FREE)
    sim.reset()
    readings = []
    for _ in range(20):  # re-sent within the drive's command timeout
        sim.set_command(0.3, 0.5)
        readings += sim.advance(0.1)
    imu = [r for r in readings if r.topic == "sensor.imu"][-1].data
    assert imu["gyro_radps"][2] == pytest.approx(0.5, abs=0.01)
    # Centripetal acceleration points left (+y) with magnitude v * omega at the IMU (mounted at the centre).
    assert imu["accel_mps2"][1] == pytest.approx(0.3 * 0.5, abs=0.01)


def test_imu_noise_has_bias_and_white_noise(robot):
    sim = RobotSim(robot, square_room(4.0), SimSettings(sensor_noise=True), seed=4)
    readings = sim.reset() + sim.advance(2.0)
    gyro = np.stack([r.data["gyro_radps"] for r in readings if r.topic == "sensor.imu"])
    noise = robot.sensor("imu").noise
    assert gyro.std(axis=0) == pytest.approx(np.full(3, noise.gyro_std_radps), rel=0.15)
    assert np.abs(gyro.mean(axis=0)).max() > 3 * noise.gyro_std_radps / math.sqrt(len(gyro))  # a bias is there


def _odom_error(robot: RobotDescription, settings: SimSettings, seed: int = 0) -> tuple[float, list[dict]]:
    """Drive an arc for 2.8 s; return the odometry position error (m) against the truth in the start frame, and
    the odometry samples."""
    sim = RobotSim(robot, square_room(10.0, start=Pose2(-2.0, -2.0, 0.3)), settings, seed=seed)
    sim.reset()
    sim.set_command(0.4, 0.4)
    odom = [r for r in sim.advance(0.4) if r.topic == "sensor.odom"]
    for _ in range(6):
        sim.set_command(0.4, 0.4)
        odom += [r for r in sim.advance(0.4) if r.topic == "sensor.odom"]
    truth = sim.ground_truth()
    start = sim.world.start
    c, s = math.cos(start.yaw_rad), math.sin(start.yaw_rad)
    dx, dy = truth.x_m - start.x_m, truth.y_m - start.y_m
    local = (c * dx + s * dy, -s * dx + c * dy)
    last = odom[-1].data
    return math.hypot(last["x_m"] - local[0], last["y_m"] - local[1]), [r.data for r in odom]


def test_odometry_tracks_the_base_without_noise(robot):
    error, samples = _odom_error(robot, NOISE_FREE)
    assert error < 0.01
    # Velocities come from whole encoder ticks per 20 ms (about 0.1 rad/s of yaw rate per tick), so average.
    recent = samples[-20:]
    assert np.mean([s["v_mps"] for s in recent]) == pytest.approx(0.4, abs=0.01)
    assert np.mean([s["omega_radps"] for s in recent]) == pytest.approx(0.4, abs=0.02)
    wheels = samples[-1]["wheel_vel_radps"]
    assert wheels.shape == (2,) and wheels[1] > wheels[0]


def test_odometry_drifts_with_noise(robot):
    errors = [_odom_error(robot, SimSettings(sensor_noise=True), seed)[0] for seed in range(3)]
    assert max(errors) > 0.005
    assert max(errors) < 0.5


def test_every_reading_is_a_valid_oni_message(robot):
    room = square_room(4.0, start=Pose2(0.2, 0.1, 0.3))
    sim = RobotSim(robot, room, SimSettings(sensor_noise=True), seed=2)
    readings = sim.reset()
    sim.set_command(0.2, 0.3)
    readings += sim.advance(0.2)
    assert {r.topic for r in readings} == {"sensor.lidar", "sensor.imu", "sensor.odom", "sensor.depth"}
    for seq, reading in enumerate(readings):
        schema = robot.sensors[[s.topic for s in robot.sensors].index(reading.topic)].schema
        header = Header(schema, "1.0", seq, "sim", reading.stamp_ns, reading.stamp_ns, reading.frame_id, "0" * 32)
        message = unpack(pack(header, reading.data), reading.topic)  # validates against the packaged schema
        assert set(message.data) == set(reading.data)


def test_robot_sees_only_the_world_not_itself(robot):
    # The LiDAR and camera sit inside the robot's collision capsule; rays must pass through their own body.
    sim = RobotSim(robot, square_room(4.0, wall_height_m=3.0), NOISE_FREE)
    readings = _by_topic(sim.reset())
    assert readings["sensor.lidar"].data["ranges_m"].min() > 1.8
    assert readings["sensor.depth"].data["depth"][:24].min() > 1.8
