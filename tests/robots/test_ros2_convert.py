"""The conversions the ROS 2 node adds to robots/ros2/convert.py (goal -> nav.route, the runtime's outputs -> ROS),
on rosbags' ROS 2 message classes: every message built serializes as its standard type and reads back field-exact."""

from __future__ import annotations

import array
import math

import numpy as np
import pytest

from robots import load_robot, robot_path
from robots.ros2.convert import (
    ConversionError,
    buffer_sequences,
    diagnostics_to_ros,
    goal_to_route,
    predicted_path_to_ros,
    predicted_scan_to_ros,
)

rosbags_typesys = pytest.importorskip("rosbags.typesys", reason="rosbags (the 'bags' extra) is not installed")
STORE = rosbags_typesys.get_typestore(rosbags_typesys.Stores.ROS2_HUMBLE)
T = STORE.types
T0 = 1_700_000_000_250_000_000
ROBOT = load_robot(robot_path("turtlebot4"))


def round_trip(msg, name):
    """``msg`` serialized as the standard type ``name`` and read back."""
    return STORE.deserialize_cdr(STORE.serialize_cdr(msg, name), name)


def goal(x, y, frame="odom"):
    header = T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=5, nanosec=7), frame_id=frame)
    pose = T["geometry_msgs/msg/Pose"](position=T["geometry_msgs/msg/Point"](x=x, y=y, z=0.0),
                                       orientation=T["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0))
    return T["geometry_msgs/msg/PoseStamped"](header=header, pose=pose)


def test_a_goal_becomes_a_straight_route_from_the_robot_in_the_odometry_frame():
    route = goal_to_route(goal(4.0, -1.5), (0.5, 0.25), "odom", 0.4)
    assert route.stamp_ns == 5 * 1_000_000_000 + 7 and route.frame_id == "odom"
    np.testing.assert_array_equal(route.data["waypoints_m"], [[0.5, 0.25], [4.0, -1.5]])
    assert route.data["waypoints_m"].dtype == np.float64 and route.data["goal_radius_m"] == 0.4
    with pytest.raises(ConversionError, match="goal in frame 'map', but the odometry is in 'odom'"):
        goal_to_route(goal(4.0, 0.0, "map"), (0.0, 0.0), "odom", 0.4)
    with pytest.raises(ConversionError, match="not finite"):
        goal_to_route(goal(math.nan, 0.0), (0.0, 0.0), "odom", 0.4)


def test_the_predicted_scan_is_a_laser_scan_in_the_lidar_frame_with_no_return_as_inf():
    ranges = np.array([[1.0, 2.0, 12.0, 13.5], [0.5, 0.6, 0.7, 0.8]], np.float32)
    data = {"horizons_s": np.array([0.5, 1.0], np.float32), "ranges_m": ranges, "ranges_std_m": np.zeros_like(ranges),
            "angle_min_rad": -math.pi, "angle_increment_rad": math.pi / 2}
    scan = round_trip(predicted_scan_to_ros(T0, data, 0, ROBOT.sensors_of_kind("lidar")[0], T), "sensor_msgs/msg/LaserScan")
    assert scan.header.frame_id == "rplidar_link" and (scan.header.stamp.sec, scan.header.stamp.nanosec) == (1_700_000_000, 250_000_000)
    np.testing.assert_array_equal(scan.ranges, [1.0, 2.0, np.inf, np.inf])  # >= range_max (12 m): no return
    assert scan.range_min == np.float32(0.15) and scan.range_max == np.float32(12.0) and len(scan.intensities) == 0
    assert scan.angle_min == np.float32(-math.pi) and scan.angle_max == np.float32(-math.pi + 3 * math.pi / 2)
    second = predicted_scan_to_ros(T0, data, 1, ROBOT.sensors_of_kind("lidar")[0], T)
    np.testing.assert_array_equal(second.ranges, ranges[1])
    with pytest.raises(ConversionError, match=r"expected \(K, N\) with K > 2"):
        predicted_scan_to_ros(T0, data, 2, ROBOT.sensors_of_kind("lidar")[0], T)


def test_the_predicted_path_starts_at_the_robot_and_stamps_each_pose_at_its_horizon():
    pose = np.array([[0.2, 0.0, 0.1], [0.4, 0.05, 0.3], [0.8, 0.2, -0.5]], np.float32)
    data = {"horizons_s": np.array([0.5, 1.0, 2.0], np.float32), "pose": pose, "pose_std": np.zeros_like(pose)}
    path = round_trip(predicted_path_to_ros(T0, "base_link", data, T), "nav_msgs/msg/Path")
    assert path.header.frame_id == "base_link" and len(path.poses) == 4
    stamps = [p.header.stamp.sec * 1_000_000_000 + p.header.stamp.nanosec for p in path.poses]
    assert stamps == [T0, T0 + 500_000_000, T0 + 1_000_000_000, T0 + 2_000_000_000]
    xy = [(p.pose.position.x, p.pose.position.y) for p in path.poses]
    np.testing.assert_allclose(xy, [(0.0, 0.0), *pose[:, :2].astype(np.float64)])
    yaw = [2 * math.atan2(p.pose.orientation.z, p.pose.orientation.w) for p in path.poses]
    np.testing.assert_allclose(yaw, [0.0, *pose[:, 2].astype(np.float64)], atol=1e-7)
    with pytest.raises(ConversionError, match=r"expected \(K, 3\) and \(K,\)"):
        predicted_path_to_ros(T0, "base_link", {**data, "horizons_s": np.zeros(2)}, T)


def test_diagnostics_say_why_the_robot_is_stopped_with_the_stage_latencies_and_counters():
    diag = {"tick": 42, "stages": ["ingest", "observe", "act", "plan", "publish"],
            "stage_us": np.array([10, 200, 5, 9000, 30], np.float32), "tick_us": 9245.5, "deadline_misses": 3,
            "stale_sensors": ["sensor.lidar"], "stopped": True, "stop_reason": "sensor.lidar stale: 0.61 s > 0.50 s"}
    array_ = round_trip(diagnostics_to_ros(T0, diag, {"/scan.refused": 2}, T, name="oniwm_node: runtime",
                                           hardware_id="turtlebot4"), "diagnostic_msgs/msg/DiagnosticArray")
    (status,) = array_.status
    assert status.level == T["diagnostic_msgs/msg/DiagnosticStatus"].WARN and status.message == diag["stop_reason"]
    assert status.name == "oniwm_node: runtime" and status.hardware_id == "turtlebot4"
    values = {kv.key: kv.value for kv in status.values}
    assert values == {"tick": "42", "tick_us": "9245.5", "deadline_misses": "3", "stale_sensors": "sensor.lidar",
                      "stage_us.ingest": "10.0", "stage_us.observe": "200.0", "stage_us.act": "5.0",
                      "stage_us.plan": "9000.0", "stage_us.publish": "30.0", "/scan.refused": "2"}
    driving = diagnostics_to_ros(T0, {**diag, "stopped": False, "stop_reason": ""}, {}, T, name="n", hardware_id="h")
    assert driving.status[0].level == T["diagnostic_msgs/msg/DiagnosticStatus"].OK and driving.status[0].message == "driving"


def test_buffer_sequences_hands_numpy_arrays_to_sequence_fields_as_typed_arrays():
    made = []
    make = buffer_sequences(lambda **fields: made.append(fields) or fields, {"ranges": "f", "data": "B"})
    make(ranges=np.array([1.5, 2.5], np.float64), data=np.array([1, 2, 255], np.uint8), other=np.zeros(2))
    (fields,) = made
    assert fields["ranges"] == array.array("f", [1.5, 2.5]) and fields["data"] == array.array("B", [1, 2, 255])
    assert isinstance(fields["other"], np.ndarray)  # not a declared sequence: passed through
    with pytest.raises(ValueError, match=r"typecodes \['q'\]"):
        buffer_sequences(dict, {"x": "q"})
