"""rosbag2 import and export: ROS <-> ONI conversions, field-exact round trips through real bags (MCAP and
sqlite3 storage, written by ``rosbags`` from its ROS 2 message definitions), bad-input reports, and training a
tiny model on an imported bag."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from oni.codec import pack, unpack
from oni.mcap_log import LogWriter, read_messages
from oni.message import Header, Message, new_trace_id
from robots import load_robot, robot_path
from robots.ros2.convert import (
    ROS_TYPES,
    ConversionError,
    Converted,
    RosType,
    depth_to_oni,
    depth_to_ros,
    ns_to_stamp,
    scan_to_oni,
    scan_to_ros,
    stamp_to_ns,
)
from train.rosbag import REPORT, export_log, format_table, import_bags, load_mapping

pytest.importorskip("rosbags", reason="rosbag2 support is the bags extra: pip install 'oni-worldmodel[bags]'")
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

ONIWM = [sys.executable, "-m", "worldmodel.cli"]
NS = 1_000_000_000
T0 = 1_700_000_000 * NS      # the recording's clock: ns since the Unix epoch
LATENCY_NS = 3_000_000       # bag receive time = header stamp + 3 ms
BEAMS = 48
DEPTH_HW = (16, 16)
TS = get_typestore(Stores.LATEST)
T = TS.types
SCAN, IMU, ODOM, IMAGE = "sensor_msgs/msg/LaserScan", "sensor_msgs/msg/Imu", "nav_msgs/msg/Odometry", "sensor_msgs/msg/Image"
TWIST, TWIST_STAMPED = "geometry_msgs/msg/Twist", "geometry_msgs/msg/TwistStamped"


def oniwm(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``oniwm ARGS`` in a fresh process; the caller checks the exit status."""
    return subprocess.run([*ONIWM, *map(str, args)], capture_output=True, text=True, timeout=timeout, check=False)


# ----------------------------------------------------------------------------------------------------------------
# ROS messages, from the typestore's real ROS 2 definitions.


def header(ns: int, frame: str) -> Any:
    return T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=ns // NS, nanosec=ns % NS), frame_id=frame)


def vec(x: float, y: float, z: float) -> Any:
    return T["geometry_msgs/msg/Vector3"](x=x, y=y, z=z)


def scan(ns: int, rng: np.random.Generator, beams: int = BEAMS) -> Any:
    ranges = rng.uniform(0.3, 7.5, beams).astype(np.float32)
    ranges[::7] = np.inf  # no return (REP 117)
    angle_min, inc = float(np.float32(-math.pi)), float(np.float32(2 * math.pi / beams))
    return T[SCAN](header=header(ns, "laser"), angle_min=angle_min, angle_max=angle_min + inc * (beams - 1),
                   angle_increment=inc, time_increment=0.0, scan_time=0.1, range_min=0.15, range_max=8.0,
                   ranges=ranges, intensities=rng.uniform(0, 100, beams).astype(np.float32))


def imu(ns: int, rng: np.random.Generator, orientation: bool = True) -> Any:
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    cov = np.zeros(9)
    if not orientation:
        q, cov[0] = np.array([0.0, 0.0, 0.0, 1.0]), -1.0
    accel, gyro = rng.normal(0, 1, 3) + [0, 0, 9.81], rng.normal(0, 0.1, 3)
    return T[IMU](header=header(ns, "imu_link"), orientation=T["geometry_msgs/msg/Quaternion"](*q.tolist()),
                  orientation_covariance=cov, angular_velocity=vec(*gyro.tolist()), angular_velocity_covariance=np.zeros(9),
                  linear_acceleration=vec(*accel.tolist()), linear_acceleration_covariance=np.zeros(9))


def odom(ns: int, t: float) -> Any:
    yaw = math.remainder(0.4 * t, 2 * math.pi)
    pose = T["geometry_msgs/msg/Pose"](
        position=T["geometry_msgs/msg/Point"](x=0.3 * t, y=0.1 * t * t, z=0.0),
        orientation=T["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=math.sin(yaw / 2), w=math.cos(yaw / 2)))
    twist = T[TWIST](linear=vec(0.3 + 0.01 * t, 0.0, 0.0), angular=vec(0.0, 0.0, 0.4))
    return T[ODOM](header=header(ns, "odom"), child_frame_id="base_link",
                   pose=T["geometry_msgs/msg/PoseWithCovariance"](pose=pose, covariance=np.zeros(36)),
                   twist=T["geometry_msgs/msg/TwistWithCovariance"](twist=twist, covariance=np.zeros(36)))


def depth16(ns: int, rng: np.random.Generator, hw: tuple[int, int] = DEPTH_HW) -> Any:
    mm = rng.integers(0, 6000, hw, dtype=np.uint16)
    return T[IMAGE](header=header(ns, "camera"), height=hw[0], width=hw[1], encoding="16UC1", is_bigendian=0,
                    step=hw[1] * 2, data=mm.astype("<u2").view(np.uint8).reshape(-1))


def twist(t: float) -> Any:
    return T[TWIST](linear=vec(0.3 + 0.01 * t, 0.0, 0.0), angular=vec(0.0, 0.0, 0.4 * math.cos(t)))


def twist_stamped(ns: int, t: float) -> Any:
    return T[TWIST_STAMPED](header=header(ns, "base_link"), twist=twist(t))


# ----------------------------------------------------------------------------------------------------------------
# Bags, robots and mapping files.


def small_robot(tmp_path: Path) -> Path:
    """TurtleBot 4 with a 48-beam LiDAR, a 16 x 16 depth camera at 10 Hz and a 100 Hz IMU (a tiny model's sizes)."""
    doc = yaml.safe_load(robot_path("turtlebot4").read_text())
    for sensor in doc["robot"]["sensors"]:
        if sensor["kind"] == "lidar":
            sensor["params"]["beams"] = BEAMS
        elif sensor["kind"] == "depth":
            sensor["params"].update(height=DEPTH_HW[0], width=DEPTH_HW[1])
            sensor["rate_hz"] = 10
        elif sensor["kind"] == "imu":
            sensor["rate_hz"] = 100
    path = tmp_path / "robot.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def mapping_file(tmp_path: Path, **extra: Any) -> Path:
    small_robot(tmp_path)
    path = tmp_path / "bags.yaml"
    path.write_text(yaml.safe_dump({"robot": "robot.yaml", **extra}))
    return path


def write_bag(path: Path, storage: str = "mcap", seconds: float = 4.0, seed: int = 0) -> Path:
    """A recording of the standard topics: /scan 10 Hz, /imu 100 Hz, /odom 50 Hz, depth 10 Hz, /cmd_vel 20 Hz."""
    rng = np.random.default_rng(seed)
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    streams = [("/scan", SCAN, 10, lambda ns, t: scan(ns, rng)), ("/imu", IMU, 100, lambda ns, t: imu(ns, rng)),
               ("/odom", ODOM, 50, odom), ("/camera/depth/image_raw", IMAGE, 10, lambda ns, t: depth16(ns, rng)),
               ("/cmd_vel", TWIST, 20, lambda ns, t: twist(t))]
    events = sorted((round(i * NS / hz), topic, kind, make) for topic, kind, hz, make in streams
                    for i in range(int(seconds * hz)))
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        conns = {topic: writer.add_connection(topic, kind, typestore=TS) for topic, kind, _, _ in streams}
        for offset, topic, kind, make in events:
            ns = T0 + offset
            writer.write(conns[topic], ns + LATENCY_NS, TS.serialize_cdr(make(ns, offset / NS), kind))
    return path


def read_bag(path: Path) -> dict[str, list[tuple[int, Any]]]:
    """Every message of a bag by topic: (bag time ns, message), decoded with the bag's own definitions."""
    out: dict[str, list[tuple[int, Any]]] = {}
    with AnyReader([path]) as reader:
        for conn, ns, raw in reader.messages():
            out.setdefault(conn.topic, []).append((ns, reader.deserialize(raw, conn.msgtype)))
    return out


def differences(a: Any, b: Any, path: str = "", approx: tuple[str, ...] = ()) -> list[str]:
    """Field paths where two ROS messages differ: exactly (arrays: dtype and every bit, NaN equal to NaN), or
    within 1e-12 under the paths in ``approx``."""
    if dataclasses.is_dataclass(a):
        if type(a).__msgtype__ != type(b).__msgtype__:  # type: ignore[union-attr]
            return [f"{path}: {type(a).__msgtype__} vs {type(b).__msgtype__}"]  # type: ignore[union-attr]
        return [d for f in dataclasses.fields(a) if f.name != "__msgtype__"
                for d in differences(getattr(a, f.name), getattr(b, f.name), f"{path}.{f.name}", approx)]
    if isinstance(a, np.ndarray):
        same = a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
        return [] if same else [f"{path}: {a!r} vs {b!r}"]
    if any(path.startswith(p) for p in approx):
        return [] if math.isclose(a, b, abs_tol=1e-12) else [f"{path}: {a!r} vs {b!r}"]
    return [] if a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b)) else [f"{path}: {a!r} vs {b!r}"]


# ----------------------------------------------------------------------------------------------------------------
# The conversions.


def sample_of(type_name: str, rng: np.random.Generator) -> Any:
    return {SCAN: lambda: scan(T0, rng), IMU: lambda: imu(T0, rng), ODOM: lambda: odom(T0, 1.3),
            IMAGE: lambda: depth16(T0, rng), TWIST: lambda: twist(0.5),
            TWIST_STAMPED: lambda: twist_stamped(T0, 0.5)}[type_name]()


@pytest.mark.parametrize("type_name", sorted(ROS_TYPES))
def test_every_conversion_round_trips_through_valid_oni(tmp_path, type_name):
    """Each registry entry: a ROS message (after CDR) -> ONI data that a receiver accepts -> the same ROS message."""
    robot = load_robot(small_robot(tmp_path))
    ros = ROS_TYPES[type_name]
    original = TS.deserialize_cdr(TS.serialize_cdr(sample_of(type_name, np.random.default_rng(1)), type_name), type_name)
    sensor = None if ros.kind == "drive" else robot.sensors_of_kind(ros.kind)[0]
    converted = ros.to_oni(original, sensor)
    stamp = T0 + 7 if converted.stamp_ns is None else converted.stamp_ns
    assert (converted.stamp_ns is None) != ros.stamped
    header_ = Header(ros.schema, "1.0", 0, "test", stamp, stamp, converted.frame_id, new_trace_id())
    decoded = unpack(pack(header_, converted.data), ros.schema)  # raises if a receiver would reject it
    back = ros.to_ros(stamp, converted.frame_id, decoded.data, T)
    back = TS.deserialize_cdr(TS.serialize_cdr(back, type_name), type_name)
    assert differences(original, back, approx=(".pose.pose.orientation",)) == []


def test_scan_no_return_conventions_and_clockwise_scans():
    beams = 6
    msg = scan(T0, np.random.default_rng(0), beams)
    msg.ranges[:] = [1.0, np.inf, np.nan, -np.inf, 9.0, 0.0]  # range 0.15..8
    data = scan_to_oni(msg).data
    assert data["ranges_m"].tolist() == [1.0, 8.0, 8.0, 0.15000000596046448, 8.0, 8.0]
    assert data["ranges_m"].dtype == np.float32
    back = scan_to_ros(T0, "laser", data, T)
    assert back.ranges.tolist() == [1.0, math.inf, math.inf, np.float32(0.15), math.inf, math.inf]
    msg.ranges[:] = np.arange(6, dtype=np.float32) + 1
    clockwise = dataclasses.replace(msg, angle_min=msg.angle_max, angle_max=msg.angle_min, angle_increment=-msg.angle_increment)
    data = scan_to_oni(clockwise).data
    assert data["ranges_m"].tolist() == [6, 5, 4, 3, 2, 1]
    assert data["angle_increment_rad"] > 0 and math.isclose(data["angle_min_rad"], msg.angle_min, abs_tol=1e-6)


def test_unexpected_sizes_are_refused_by_name(tmp_path):
    robot = load_robot(small_robot(tmp_path))
    lidar, depth = robot.sensor("lidar"), robot.sensor("depth")
    rng = np.random.default_rng(0)
    with pytest.raises(ConversionError, match=r"47 beams, but the robot's LiDAR 'lidar' has 48 \(params.beams\): refused"):
        scan_to_oni(scan(T0, rng, beams=47), lidar)
    with pytest.raises(ConversionError, match=r"12 x 16 pixels, but the robot's depth camera 'depth' has 16 x 16"):
        depth_to_oni(depth16(T0, rng, (12, 16)), depth)
    short = depth16(T0, rng)
    short.data = short.data[:-2]
    with pytest.raises(ConversionError, match="510 data bytes with step 32 for 16 rows"):
        depth_to_oni(short, depth)
    with pytest.raises(ConversionError, match="encoding 'rgb8' is not depth"):
        depth_to_oni(dataclasses.replace(depth16(T0, rng), encoding="rgb8"), depth)


def test_depth_big_endian_padded_rows_and_float_metres(tmp_path):
    depth = load_robot(small_robot(tmp_path)).sensor("depth")
    h, w = DEPTH_HW
    mm = np.random.default_rng(2).integers(1, 6000, (h, w), dtype=np.uint16)
    padded = np.zeros((h, w * 2 + 6), np.uint8)  # 6 bytes of padding per row
    padded[:, : w * 2] = mm.astype(">u2").view(np.uint8)
    msg = T[IMAGE](header=header(T0, "camera"), height=h, width=w, encoding="16UC1", is_bigendian=1, step=w * 2 + 6,
                   data=padded.reshape(-1))
    data = depth_to_oni(msg, depth).data
    assert data["depth"].dtype == np.uint16 and np.array_equal(data["depth"], mm) and data["depth_scale_m"] == 0.001
    assert (data["fx"], data["fy"], data["cx"], data["cy"]) == depth.params.intrinsics
    metres = (mm / 1000.0).astype(np.float32)
    metres[0, :3] = [np.nan, np.inf, -np.inf]
    msg = T[IMAGE](header=header(T0, "camera"), height=h, width=w, encoding="32FC1", is_bigendian=0, step=w * 4,
                   data=metres.view(np.uint8).reshape(-1))
    data = depth_to_oni(msg, depth).data
    assert data["depth"].dtype == np.float32 and data["depth"][0, :3].tolist() == [0, 0, 0]
    assert np.array_equal(data["depth"][1:], metres[1:])
    back = depth_to_ros(T0, "camera", data, T)
    assert back.encoding == "32FC1" and np.isnan(back.data.view("<f4")[:3]).all()


# ----------------------------------------------------------------------------------------------------------------
# Bags in and out.


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_bag_round_trips_into_oni_and_back_field_exact(tmp_path, storage):
    bag = write_bag(tmp_path / f"run_{storage}", storage)
    report = import_bags([bag], tmp_path / "oni", load_mapping(mapping_file(tmp_path)))
    entry = report["bags"][0]
    assert entry["status"] == "ok", format_table(report)
    assert entry["storage"] == storage and entry["skipped"] == [] and entry["missing"] == []
    assert json.loads((tmp_path / "oni" / REPORT).read_text()) == report
    log = tmp_path / "oni" / f"run_{storage}.mcap"
    original = read_bag(bag)

    # The ONI log: one message per ROS message, header stamps as stamps, the bag's receive time as the log time.
    messages: dict[str, list[Message]] = {}
    for msg in read_messages(log):
        messages.setdefault(msg.topic, []).append(msg)
    topics = {"/scan": "sensor.lidar", "/imu": "sensor.imu", "/odom": "sensor.odom",
              "/camera/depth/image_raw": "sensor.depth", "/cmd_vel": "actuator.cmd"}
    for ros_topic, oni_topic in topics.items():
        ours = messages[oni_topic]
        assert len(ours) == len(original[ros_topic]) == entry["written"][oni_topic]
        assert [m.recv_ns for m in ours] == [ns for ns, _ in original[ros_topic]]
        assert [m.header.seq for m in ours] == list(range(len(ours)))
        assert all(m.header.source == "rosbag2" and m.header.pub_ns == m.recv_ns for m in ours)
        expected = [ns - LATENCY_NS for ns, _ in original[ros_topic]] if ros_topic != "/cmd_vel" else [m.recv_ns for m in ours]
        assert [m.header.stamp_ns for m in ours] == expected
    first_scan = messages["sensor.lidar"][0].data
    assert first_scan["ranges_m"][0] == 8.0 and first_scan["ranges_m"].shape == (BEAMS,)  # inf -> range_max_m

    # And back to ROS: every message field-exact (the odometry quaternion rebuilt from yaw to 1e-12), at its bag time.
    export = export_log(log, tmp_path / "back")
    back = read_bag(tmp_path / "back")
    assert set(back) == set(original) | {"/camera/depth/camera_info"}
    for topic, msgs in original.items():
        assert [ns for ns, _ in back[topic]] == [ns for ns, _ in msgs]
        diffs = [d for (_, a), (_, b) in zip(msgs, back[topic]) for d in differences(a, b, approx=(".pose.pose.orientation",))]
        assert diffs == [], (topic, diffs[:5])
    info = back["/camera/depth/camera_info"][0][1]
    fx, fy, cx, cy = load_robot(tmp_path / "robot.yaml").sensor("depth").params.intrinsics
    assert info.k.tolist() == [fx, 0, cx, 0, fy, cy, 0, 0, 1] and (info.height, info.width) == DEPTH_HW
    assert export["skipped"] == [] and export["written"]["/scan"] == len(original["/scan"])


def test_export_skips_topics_without_a_ros_type(tmp_path):
    log = tmp_path / "sim.mcap"
    with LogWriter(log) as writer:
        for seq in range(3):
            stamp = seq * 100_000_000
            lidar = {"ranges_m": np.array([1.0, 12.0, 3.0], np.float32), "angle_min_rad": -math.pi,
                     "angle_increment_rad": 2 * math.pi / 3, "range_min_m": 0.15, "range_max_m": 12.0}
            truth = {"x_m": 0.0, "y_m": 0.0, "yaw_rad": 0.0, "v_mps": 0.0, "omega_radps": 0.0, "in_collision": False,
                     "collisions": 0}
            for topic, data in (("sensor.lidar", lidar), ("sim.ground_truth", truth)):
                writer.write(Message(topic, Header(topic, "1.0", seq, "sim", stamp, stamp, "world", new_trace_id()), data),
                             log_time_ns=stamp)
    result = oniwm("export-bag", log, "--out", tmp_path / "bag")
    assert result.returncode == 0, result.stderr
    assert "sim.ground_truth" in result.stdout and "no_ros_type: no mapping entry converts ONI schema 'sim.ground_truth'" in result.stdout
    scans = read_bag(tmp_path / "bag")["/scan"]
    assert [ns for ns, _ in scans] == [0, 100_000_000, 200_000_000]
    assert scans[0][1].ranges.tolist() == [1.0, math.inf, 3.0]  # ONI's no return (range_max_m) as REP 117's +inf
    again = oniwm("export-bag", log, "--out", tmp_path / "bag")
    assert again.returncode == 2 and "exists" in again.stderr


def write_bad_bag(path: Path) -> Path:
    """Good /scan, /imu, /odom and /cmd_vel, plus every kind of bad input the import must survive."""
    rng = np.random.default_rng(5)
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        c = {topic: writer.add_connection(topic, kind, typestore=TS) for topic, kind in (
            ("/scan", SCAN), ("/imu", IMU), ("/odom", ODOM), ("/cmd_vel", TWIST),
            ("/chatter", "std_msgs/msg/String"), ("/scan_rear", SCAN), ("/camera/depth/image_raw", "sensor_msgs/msg/CompressedImage"))}

        def put(topic: str, ns: int, msg: Any) -> None:
            writer.write(c[topic], ns + LATENCY_NS, TS.serialize_cdr(msg, c[topic].msgtype))

        for i in range(20):
            ns = T0 + i * 100_000_000
            put("/scan", ns, scan(ns, rng))
            put("/odom", ns, odom(ns, i * 0.1))
            put("/cmd_vel", ns, twist(i * 0.1))
            put("/imu", ns, imu(ns, rng, orientation=False))
            put("/scan_rear", ns, scan(ns, rng))
            put("/chatter", ns, T["std_msgs/msg/String"](data="hello"))
        end = T0 + 20 * 100_000_000
        put("/scan", end, scan(end, rng, beams=47))                   # refused: another beam count
        put("/scan", end + 1, scan(0, rng))                           # unstamped
        put("/scan", end + 2, scan(end - NS, rng))                    # clock_backwards: 0.9 s before the last good scan
        bad = imu(end, rng)
        bad.linear_acceleration.x = math.nan
        put("/imu", end, bad)                                         # rejected: non-finite
        writer.write(c["/imu"], end + 5, b"\x00\x01\x00\x00\x07")     # undecodable CDR
        put("/camera/depth/image_raw", end, T["sensor_msgs/msg/CompressedImage"](
            header=header(end, "camera"), format="png", data=np.zeros(4, np.uint8)))  # type_mismatch
    return path


def test_bad_input_is_imported_with_a_report_of_what_was_skipped(tmp_path):
    bag = write_bad_bag(tmp_path / "bad")
    result = oniwm("import-bag", bag, "--map", mapping_file(tmp_path), "--out", tmp_path / "oni")
    assert result.returncode == 0, result.stderr
    entry = json.loads((tmp_path / "oni" / REPORT).read_text())["bags"][0]
    assert entry["status"] == "partial" and entry["out"] == str(tmp_path / "oni" / "bad.mcap")
    skipped = {(s["topic"], s["reason"]): s for s in entry["skipped"]}
    assert {k: s["count"] for k, s in skipped.items()} == {
        ("/chatter", "unknown_type"): 20,
        ("/scan_rear", "unmapped_topic"): 20,
        ("/camera/depth/image_raw", "type_mismatch"): 1,
        ("/scan", "refused"): 1,
        ("/scan", "unstamped"): 1,
        ("/scan", "clock_backwards"): 1,
        ("/imu", "rejected"): 1,
        ("/imu", "undecodable"): 1,
    }
    assert "47 beams, but the robot's LiDAR 'lidar' has 48" in skipped[("/scan", "refused")]["detail"]
    assert "0.900000 s before the previous sensor.lidar message" in skipped[("/scan", "clock_backwards")]["detail"]
    assert "non_finite" in skipped[("/imu", "rejected")]["detail"]
    assert "expects sensor_msgs/msg/Image" in skipped[("/camera/depth/image_raw", "type_mismatch")]["detail"]
    assert entry["missing"] == [{"ros_topic": None, "oni_topic": "sensor.depth",
                                 "reason": "robot sensor 'depth' got no message: every one was skipped"}]
    assert entry["written"] == {"sensor.lidar": 20, "sensor.odom": 20, "actuator.cmd": 20, "sensor.imu": 20}
    for line in ("/chatter", "unknown_type", "clock_backwards", "refused", "undecodable", "rejected"):
        assert line in result.stdout
    assert len(list(read_messages(tmp_path / "oni" / "bad.mcap", ["sensor.lidar"]))) == 20


def test_bad_mappings_and_existing_output_are_refused_by_name(tmp_path):
    bag = write_bag(tmp_path / "run", seconds=0.5)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"topics": [{"ros_topic": "scan", "ros_type": SCAN}]}))
    result = oniwm("import-bag", bag, "--map", bad, "--out", tmp_path / "oni")
    assert result.returncode == 2 and "topics[0].ros_topic = 'scan': must be an absolute ROS topic name" in result.stderr
    bad.write_text(yaml.safe_dump({"topics": [{"ros_topic": "/pc", "ros_type": "sensor_msgs/msg/PointCloud2"}]}))
    with pytest.raises(ValueError, match=r"topics\[0\].ros_type .* has no built-in conversion"):
        load_mapping(bad)
    mapping = load_mapping(mapping_file(tmp_path))
    import_bags([bag], tmp_path / "oni", mapping)
    with pytest.raises(FileExistsError, match="--overwrite"):
        import_bags([bag], tmp_path / "oni", mapping)
    assert import_bags([bag], tmp_path / "oni", mapping, overwrite=True)["bags"][0]["status"] == "ok"

    junk = tmp_path / "junk.mcap"  # an unreadable bag fails alone; the others import
    junk.write_bytes(b"\x89MCAP0\r\n" + b"x" * 100)
    result = oniwm("import-bag", junk, bag, "--map", tmp_path / "bags.yaml", "--out", tmp_path / "two")
    assert result.returncode == 1 and "junk.mcap -> no log: failed (cannot read the bag: AnyReaderError" in result.stdout
    assert [b["status"] for b in json.loads((tmp_path / "two" / REPORT).read_text())["bags"]] == ["failed", "ok"]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [REPORT, "run.mcap"]


def _vector_command_to_oni(msg: Any, sensor: Any) -> Converted:
    return Converted(stamp_to_ns(msg.header.stamp), msg.header.frame_id, {"v_mps": msg.vector.x, "omega_radps": msg.vector.z})


def _vector_command_to_ros(stamp_ns: int, frame_id: str, data: Any, types: Any) -> Any:
    header_ = types["std_msgs/msg/Header"](stamp=ns_to_stamp(stamp_ns, types), frame_id=frame_id)
    return types["geometry_msgs/msg/Vector3Stamped"](header=header_, vector=vec(data["v_mps"], 0.0, data["omega_radps"]))


#: A base that takes its commands as Vector3Stamped (x: v, z: omega): a type without a built-in conversion.
VECTOR_COMMAND = RosType("geometry_msgs/msg/Vector3Stamped", "actuator.cmd", "drive", True,
                         _vector_command_to_oni, _vector_command_to_ros)


def test_a_robot_extends_the_mapping_with_its_own_type(tmp_path):
    entry = {"ros_topic": "/base/cmd", "ros_type": "geometry_msgs/msg/Vector3Stamped", "converter": f"{__name__}:VECTOR_COMMAND"}
    mapping = load_mapping(mapping_file(tmp_path, topics=[entry]))
    bag = tmp_path / "custom"
    with Writer(bag, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        conns = {t: writer.add_connection(t, k, typestore=TS) for t, k in (("/base/cmd", entry["ros_type"]), ("/cmd_vel", TWIST))}
        for i in range(5):
            ns = T0 + i * 50_000_000
            command = T[entry["ros_type"]](header=header(ns, "base_link"), vector=vec(0.1 * i, 0.0, -0.2 * i))
            writer.write(conns["/base/cmd"], ns + LATENCY_NS, TS.serialize_cdr(command, entry["ros_type"]))
            writer.write(conns["/cmd_vel"], ns + LATENCY_NS, TS.serialize_cdr(twist(0.0), TWIST))
    entry_report = import_bags([bag], tmp_path / "oni", mapping)["bags"][0]
    assert entry_report["written"] == {"actuator.cmd": 5}  # the robot's own entry took the command topic
    assert {(s["topic"], s["reason"]) for s in entry_report["skipped"]} == {("/cmd_vel", "unmapped_topic")}
    commands = list(read_messages(tmp_path / "oni" / "custom.mcap"))
    assert [m.data["omega_radps"] for m in commands] == [-0.2 * i for i in range(5)]
    export_log(tmp_path / "oni" / "custom.mcap", tmp_path / "back", mapping)
    original, back = read_bag(bag)["/base/cmd"], read_bag(tmp_path / "back")["/base/cmd"]
    assert [d for (_, a), (_, b) in zip(original, back) for d in differences(a, b)] == [] and len(back) == 5


def test_a_tiny_model_trains_on_an_imported_bag(tmp_path):
    bag = write_bag(tmp_path / "run", "sqlite3", seconds=4.0)
    data = tmp_path / "data"
    result = oniwm("import-bag", bag, "--map", mapping_file(tmp_path), "--out", data)
    assert result.returncode == 0, result.stderr
    preset = tmp_path / "preset.yaml"
    preset.write_text(yaml.safe_dump({
        "robot": "robot.yaml",
        "model": {"preset": "tiny"},
        "dataset": {"eval_fraction": 0.0, "val_fraction": 0.0},
        "train": {"batch_size": 2, "seq_len": 48, "steps": 2, "log_every": 1, "checkpoint_every": 100, "norm_batches": 2,
                  "warmup_steps": 1, "threads": 1, "loss": {"max_steps": 6, "burn_in": 5, "starts": 2, "strides": [3, 1]}},
    }))
    run = tmp_path / "run_out"
    result = oniwm("train", "--config", preset, "--data", data, "--out", run, "--no-progress", timeout=600)
    assert result.returncode == 0, result.stderr
    dataset = json.loads((data / "cache" / "dataset.json").read_text())
    episode = dataset["episodes"][0]
    assert episode["status"] == "ok" and episode["split"] == "train" and dataset["spec"]["lidar_beams"] == BEAMS
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if "event" not in line]
    assert [m["step"] for m in steps] == [1, 2] and all(math.isfinite(m["loss"]) for m in steps)
    assert "ol_position_err_m_s1" in steps[0] or "ol_position_err_m_s3" in steps[0]  # the odometry pose is the target
