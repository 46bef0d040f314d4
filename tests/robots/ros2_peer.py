"""An independent ROS 2 peer over DDS, run as its own process by tests/robots/test_ros2_bridge.py.

It plays a robot's ROS 2 side without ROS and without this project's ROS code: its DDS types are generated from
``rosbags``' ROS 2 message definitions (not ``robots.ros2.idl``), and what it sends and receives is raw CDR that
``rosbags`` encodes and decodes, written and taken below the cyclonedds Python types. It publishes ``/scan``
(10 Hz, and once the bridge commands, one scan of another beam count), ``/imu`` (100 Hz), ``/odom`` (50 Hz, integrating the commands it
receives), a depth image (5 Hz) and a goal (2 Hz), in ROS 2's DDS naming (``rt/scan``, ``sensor_msgs::msg::dds_::
LaserScan_``). Once the first ``cmd_vel`` arrives it runs ``--drive-s`` seconds more, sends SIGINT to ``--stop-pid``
(the bridge) and keeps listening ``--linger-s`` seconds for what it sends as it stops. Prints one JSON summary on
stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import time

import numpy as np
from cyclonedds._clayer import ddspy_take, ddspy_write
from cyclonedds.core import InstanceState, SampleState, ViewState
from cyclonedds.domain import DomainParticipant
from cyclonedds.idl import IdlStruct, make_idl_struct
from cyclonedds.idl import types as idl
from cyclonedds.pub import DataWriter
from cyclonedds.qos import Policy, Qos
from cyclonedds.sub import DataReader
from cyclonedds.topic import Topic
from cyclonedds.util import duration
from rosbags.typesys import Stores, get_typestore
from rosbags.typesys.base import Nodetype

TYPESTORE = get_typestore(Stores.ROS2_HUMBLE)
BASE = {"float32": idl.float32, "float64": idl.float64, "int8": idl.int8, "uint8": idl.uint8, "int16": idl.int16,
        "uint16": idl.uint16, "int32": idl.int32, "uint32": idl.uint32, "int64": idl.int64, "uint64": idl.uint64,
        "byte": idl.byte, "bool": bool, "string": str}
ANY = SampleState.Any | ViewState.Any | InstanceState.Any
_classes: dict[str, type[IdlStruct]] = {}


def field_type(node: tuple) -> object:
    kind, arg = node
    if kind == Nodetype.BASE:
        return BASE[arg[0]]
    if kind == Nodetype.NAME:
        return idl_class(arg)
    if kind == Nodetype.ARRAY:
        return idl.array[field_type(arg[0]), arg[1]]
    if kind == Nodetype.SEQUENCE:
        return idl.sequence[field_type(arg[0])]
    raise ValueError(f"unsupported field {node}")


def idl_class(name: str) -> type[IdlStruct]:
    """The DDS type ROS 2 generates for ``name``, from rosbags' definition of it."""
    if name not in _classes:
        package, kind, short = name.split("/")
        fields = {field: field_type(node) for field, node in TYPESTORE.fielddefs[name][1]}
        _classes[name] = make_idl_struct(short + "_", f"{package}::{kind}::dds_::{short}_", fields)
    return _classes[name]


def stamp(types: dict, t_ns: int) -> object:
    sec, nanosec = divmod(t_ns, 1_000_000_000)
    return types["std_msgs/msg/Header"](stamp=types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec),
                                        frame_id="")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--domain", type=int, required=True)
    parser.add_argument("--stop-pid", type=int, required=True)
    parser.add_argument("--drive-s", type=float, default=4.0)
    parser.add_argument("--linger-s", type=float, default=3.0)
    parser.add_argument("--timeout-s", type=float, default=90.0)
    args = parser.parse_args()
    T = TYPESTORE.types
    xcdr1 = Policy.DataRepresentation(use_cdrv0_representation=True)
    sensor_qos = Qos(Policy.Reliability.BestEffort, Policy.History.KeepLast(5), xcdr1)
    reliable = Qos(Policy.Reliability.Reliable(duration(milliseconds=100)), Policy.History.KeepLast(100), xcdr1)
    dp = DomainParticipant(args.domain)

    def writer(topic: str, name: str, qos: Qos) -> DataWriter:
        return DataWriter(dp, Topic(dp, topic, idl_class(name)), qos=qos)

    def reader(topic: str, name: str) -> DataReader:
        return DataReader(dp, Topic(dp, topic, idl_class(name)), qos=reliable)

    out = {
        "scan": ("rt/scan", "sensor_msgs/msg/LaserScan", sensor_qos),
        "imu": ("rt/imu", "sensor_msgs/msg/Imu", sensor_qos),
        "odom": ("rt/odom", "nav_msgs/msg/Odometry", sensor_qos),
        "depth": ("rt/camera/depth/image_raw", "sensor_msgs/msg/Image", sensor_qos),
        "goal": ("rt/goal_pose", "geometry_msgs/msg/PoseStamped", reliable),
    }
    writers = {key: (writer(topic, name, qos), name) for key, (topic, name, qos) in out.items()}
    inputs = {
        "cmd_vel": ("rt/cmd_vel", "geometry_msgs/msg/Twist"),
        "predicted_scan": ("rt/oniwm/predicted_scan", "sensor_msgs/msg/LaserScan"),
        "predicted_path": ("rt/oniwm/predicted_path", "nav_msgs/msg/Path"),
        "diagnostics": ("rt/diagnostics", "diagnostic_msgs/msg/DiagnosticArray"),
    }
    readers = {key: (reader(topic, name), name) for key, (topic, name) in inputs.items()}

    def send(key: str, msg: object) -> None:
        w, name = writers[key]
        raw = bytes(TYPESTORE.serialize_cdr(msg, name))
        ddspy_write(w._ref, raw.ljust((len(raw) + 3) & ~3, b"\0"))  # DDS payloads are padded to 4 bytes

    def take(key: str) -> list[tuple[bytes, object]]:
        r, name = readers[key]
        got = ddspy_take(r._ref, ANY, 64)
        return [(raw, TYPESTORE.deserialize_cdr(raw, name)) for raw, info in got if info.valid_data]

    x = y = yaw = 0.0
    v = omega = 0.0
    summary: dict = {"error": None, "bad_scan_sent": False, "twists": [], "after_stop": [], "twist_bytes": [],
                     "predicted_scan": None, "predicted_path": None,
                     "diagnostics": None, "stopped_at": None}
    first_cmd = stop_sent = None
    start = time.monotonic()
    step = 0
    quaternion, vector = T["geometry_msgs/msg/Quaternion"], T["geometry_msgs/msg/Vector3"]
    while time.monotonic() - start < args.timeout_s:
        now = time.time_ns()
        header = stamp(T, now)
        header.frame_id = "imu_link"
        send("imu", T["sensor_msgs/msg/Imu"](
            header=header, orientation=quaternion(x=0.0, y=0.0, z=0.0, w=1.0), orientation_covariance=np.zeros(9),
            angular_velocity=vector(x=0.0, y=0.0, z=omega), angular_velocity_covariance=np.zeros(9),
            linear_acceleration=vector(x=0.0, y=0.0, z=9.81), linear_acceleration_covariance=np.zeros(9)))
        if step % 2 == 0:
            x, y, yaw = x + 0.02 * v * math.cos(yaw), y + 0.02 * v * math.sin(yaw), yaw + 0.02 * omega
            header = stamp(T, now)
            header.frame_id = "odom"
            pose = T["geometry_msgs/msg/Pose"](position=T["geometry_msgs/msg/Point"](x=x, y=y, z=0.0),
                                               orientation=quaternion(x=0.0, y=0.0, z=math.sin(yaw / 2), w=math.cos(yaw / 2)))
            twist = T["geometry_msgs/msg/Twist"](linear=vector(x=v, y=0.0, z=0.0), angular=vector(x=0.0, y=0.0, z=omega))
            send("odom", T["nav_msgs/msg/Odometry"](
                header=header, child_frame_id="base_link",
                pose=T["geometry_msgs/msg/PoseWithCovariance"](pose=pose, covariance=np.zeros(36)),
                twist=T["geometry_msgs/msg/TwistWithCovariance"](twist=twist, covariance=np.zeros(36))))
        if step % 10 == 0:
            # Once the bridge runs (it has commanded), one scan with another beam count than the robot's LiDAR.
            bad = not summary["bad_scan_sent"] and first_cmd is not None and time.monotonic() - first_cmd > 0.5
            beams = 720 if bad else 360
            summary["bad_scan_sent"] = summary["bad_scan_sent"] or bad
            header = stamp(T, now)
            header.frame_id = "rplidar_link"
            send("scan", T["sensor_msgs/msg/LaserScan"](
                header=header, angle_min=-math.pi, angle_max=math.pi - 2 * math.pi / beams,
                angle_increment=2 * math.pi / beams, time_increment=0.0, scan_time=0.1, range_min=0.15, range_max=12.0,
                ranges=np.full(beams, 2.0, np.float32), intensities=np.zeros(0, np.float32)))
        if step % 20 == 0:
            header = stamp(T, now)
            header.frame_id = "oakd_link"
            send("depth", T["sensor_msgs/msg/Image"](
                header=header, height=48, width=64, encoding="16UC1", is_bigendian=0, step=128,
                data=np.full(48 * 64, 1500, "<u2").view(np.uint8)))
        if step % 50 == 25:
            header = stamp(T, now)
            header.frame_id = "odom"
            send("goal", T["geometry_msgs/msg/PoseStamped"](header=header, pose=T["geometry_msgs/msg/Pose"](
                position=T["geometry_msgs/msg/Point"](x=5.0, y=0.0, z=0.0), orientation=quaternion(x=0.0, y=0.0, z=0.0, w=1.0))))
        for raw, msg in take("cmd_vel"):
            v, omega = msg.linear.x, msg.angular.z
            (summary["after_stop"] if stop_sent else summary["twists"]).append([v, omega])
            if len(summary["twist_bytes"]) < 3:
                summary["twist_bytes"].append(raw.hex())
            first_cmd = first_cmd or time.monotonic()
        for key in ("predicted_scan", "predicted_path", "diagnostics"):
            for _, msg in take(key):
                summary[key] = {
                    "predicted_scan": lambda m: {"beams": len(m.ranges), "frame_id": m.header.frame_id,
                                                 "angle_increment": m.angle_increment, "range_max": m.range_max},
                    "predicted_path": lambda m: {"poses": len(m.poses), "frame_id": m.header.frame_id,
                                                 "last_x": m.poses[-1].pose.position.x},
                    "diagnostics": lambda m: {"name": m.status[0].name, "level": int(m.status[0].level),
                                              "keys": [kv.key for kv in m.status[0].values]},
                }[key](msg)
        if first_cmd and not stop_sent and time.monotonic() - first_cmd > args.drive_s:
            try:
                os.kill(args.stop_pid, signal.SIGINT)
            except ProcessLookupError:
                summary["error"] = "the bridge ended before it was stopped"
                break
            stop_sent = time.monotonic()
            summary["stopped_at"] = len(summary["twists"])
        if stop_sent and time.monotonic() - stop_sent > args.linger_s:
            break
        step += 1
        time.sleep(max(0.0, start + step * 0.01 - time.monotonic()))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
