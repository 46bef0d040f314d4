"""The ROS 2 node: its logic (robots.ros2.core) driving the real runtime from ROS messages (rosbags' classes, as the
node gets rclpy's), its parameters file, the colcon package, and the rclpy node itself where ROS 2 is installed."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from robots.ros2.core import (
    NodeParams,
    NodeParamsError,
    RosRuntime,
    load_params,
    params_from_dict,
)

pytestmark = pytest.mark.timeout(120)

PACKAGE = Path("robots/ros2")
NS = 1_000_000_000


class RosSide:
    """Builds the robot's ROS messages with ``types`` (ROS type name -> constructor; default: rosbags' classes of the
    standard types, which also serialize what the node sends)."""

    def __init__(self, types=None) -> None:
        typesys = pytest.importorskip("rosbags.typesys", reason="rosbags (the 'bags' extra) is not installed")
        self.store = typesys.get_typestore(typesys.Stores.ROS2_HUMBLE)
        self.T = types or self.store.types

    def header(self, t_ns: int, frame: str):
        sec, nanosec = divmod(t_ns, NS)
        return self.T["std_msgs/msg/Header"](stamp=self.T["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec),
                                             frame_id=frame)

    def scan(self, t_ns: int, beams: int = 360):
        return self.T["sensor_msgs/msg/LaserScan"](
            header=self.header(t_ns, "rplidar_link"), angle_min=-math.pi, angle_max=math.pi - 2 * math.pi / beams,
            angle_increment=2 * math.pi / beams, time_increment=0.0, scan_time=0.1, range_min=0.15, range_max=12.0,
            ranges=np.full(beams, 2.0, np.float32), intensities=np.zeros(0, np.float32))

    def odom(self, t_ns: int, x: float):
        T = self.T
        pose = T["geometry_msgs/msg/Pose"](position=T["geometry_msgs/msg/Point"](x=x, y=0.0, z=0.0),
                                           orientation=T["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0))
        zero = T["geometry_msgs/msg/Vector3"](x=0.0, y=0.0, z=0.0)
        return T["nav_msgs/msg/Odometry"](
            header=self.header(t_ns, "odom"), child_frame_id="base_link",
            pose=T["geometry_msgs/msg/PoseWithCovariance"](pose=pose, covariance=np.zeros(36)),
            twist=T["geometry_msgs/msg/TwistWithCovariance"](twist=T["geometry_msgs/msg/Twist"](linear=zero, angular=zero),
                                                            covariance=np.zeros(36)))

    def imu(self, t_ns: int):
        T = self.T
        vector = T["geometry_msgs/msg/Vector3"]
        return T["sensor_msgs/msg/Imu"](
            header=self.header(t_ns, "imu_link"), orientation=T["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0),
            orientation_covariance=np.zeros(9), angular_velocity=vector(x=0.0, y=0.0, z=0.0),
            angular_velocity_covariance=np.zeros(9), linear_acceleration=vector(x=0.0, y=0.0, z=9.81),
            linear_acceleration_covariance=np.zeros(9))

    def goal(self, t_ns: int, x: float, frame: str = "odom"):
        T = self.T
        return T["geometry_msgs/msg/PoseStamped"](header=self.header(t_ns, frame), pose=T["geometry_msgs/msg/Pose"](
            position=T["geometry_msgs/msg/Point"](x=x, y=0.0, z=0.0),
            orientation=T["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0)))


def test_the_node_drives_the_runtime_from_ros_messages_and_refuses_what_does_not_fit(runtime_preset):
    preset, checkpoint = runtime_preset
    ros = RosSide()
    sent: list[tuple[str, object]] = []
    lock = threading.Lock()

    def publish(name, msg):
        with lock:
            sent.append((name, msg))

    params = params_from_dict(None, config=str(preset), model=str(checkpoint), backend="torch", control_enabled=True)
    core = RosRuntime(params, publish, ros.T)
    assert core.subscriptions == [("lidar", "/scan", "sensor_msgs/msg/LaserScan"),
                                  ("depth", "/camera/depth/image_raw", "sensor_msgs/msg/Image"),
                                  ("imu", "/imu", "sensor_msgs/msg/Imu"), ("odom", "/odom", "nav_msgs/msg/Odometry"),
                                  ("goal", "/goal_pose", "geometry_msgs/msg/PoseStamped")]
    core.start()
    assert not core.receive("goal", ros.goal(time.time_ns(), 5.0))  # no odometry yet: no start for the route
    start = time.monotonic()
    step = 0
    while time.monotonic() - start < 2.0:
        now = time.time_ns()
        core.receive("imu", ros.imu(now))
        if step % 2 == 0:
            core.receive("odom", ros.odom(now, 0.001 * step))
        if step % 10 == 0:
            core.receive("lidar", ros.scan(now))
        if step == 20:
            assert not core.receive("goal", ros.goal(now, 5.0, frame="map"))
            assert core.receive("goal", ros.goal(now, 5.0))
        if step == 40:
            assert not core.receive("lidar", ros.scan(now, beams=720))
            assert not core.receive("lidar", ros.scan(0))
        step += 1
        time.sleep(max(0.0, start + step * 0.01 - time.monotonic()))
    report = core.close()
    assert core.running is False and report["error"] is None

    names = [name for name, _ in sent]
    assert names[-1] == "cmd_vel" and {"predicted_scan", "predicted_path", "diagnostics"} <= set(names)
    last = sent[-1][1]
    assert (last.linear.x, last.linear.y, last.linear.z, last.angular.x, last.angular.y, last.angular.z) == (0.0,) * 6
    commands = [msg for name, msg in sent if name == "cmd_vel"]
    assert any(m.linear.x != 0.0 or m.angular.z != 0.0 for m in commands)  # it drove once it had a route
    for name, msg in sent:  # every output is a valid standard message
        ros_type = {"cmd_vel": "geometry_msgs/msg/Twist", "predicted_scan": "sensor_msgs/msg/LaserScan",
                    "predicted_path": "nav_msgs/msg/Path", "diagnostics": "diagnostic_msgs/msg/DiagnosticArray"}[name]
        ros.store.deserialize_cdr(ros.store.serialize_cdr(msg, ros_type), ros_type)
    scan = next(msg for name, msg in sent if name == "predicted_scan")
    assert len(scan.ranges) == 90 and scan.header.frame_id == "rplidar_link"

    inputs = report["inputs"]
    assert inputs["/scan"]["refused"] == {"refused": 1, "unstamped": 1}
    assert "720 beams, but the robot's LiDAR 'lidar' has 360 (params.beams): refused, never reshaped" in \
        inputs["/scan"]["refusals"]["refused"]
    assert "header stamp 0" in inputs["/scan"]["refusals"]["unstamped"]
    assert inputs["/goal_pose"]["refused"] == {"no_odometry": 1, "refused": 1}
    assert "goal in frame 'map', but the odometry is in 'odom'" in inputs["/goal_pose"]["refusals"]["refused"]
    assert inputs["/goal_pose"]["forwarded"] == 1 and inputs["/odom"]["forwarded"] == inputs["/odom"]["received"] > 50
    runtime = report["runtime"]
    assert runtime["routes"] == 1 and runtime["plans"] > 0 and runtime["refused"] == {}
    assert report["outputs"]["/cmd_vel"]["published"] == len(commands)


def test_without_control_the_node_predicts_but_never_commands(runtime_preset):
    preset, checkpoint = runtime_preset
    ros = RosSide()
    core = RosRuntime(params_from_dict(None, config=str(preset), model=str(checkpoint), backend="torch"),
                      lambda name, msg: None, ros.T)
    assert "cmd_vel" not in core.publications and set(core.publications) == {"predicted_scan", "predicted_path",
                                                                             "diagnostics"}
    core.start()
    report = core.close()
    assert report["control_enabled"] is False and "/cmd_vel" not in report["outputs"]


def test_the_view_parameter_streams_the_inputs_and_predictions_to_foxglove(runtime_preset):
    pytest.importorskip("foxglove", reason="the view parameter needs foxglove-sdk, the view extra: "
                                           "pip install 'oni-worldmodel[view]'")
    pytest.importorskip("google.protobuf", reason="decoding the scans needs protobuf")
    client = pytest.importorskip("websockets.sync.client", reason="the WebSocket client is in the dev extra")
    from tests.robots.test_foxglove_view import _decoder

    preset, checkpoint = runtime_preset
    ros = RosSide()
    params = params_from_dict(None, config=str(preset), model=str(checkpoint), backend="torch", view=True, view_port=0)
    core = RosRuntime(params, lambda name, msg: None, ros.T)
    url = core.view_url
    assert url.startswith("ws://127.0.0.1:") and not url.endswith(":0")
    # The scan and the route come from the inputs (the view's own subscriber), the rest from the runtime's outputs.
    wanted = {"/sensor/lidar", "/nav/route", "/prediction/lidar/0.5s", "/prediction/lidar/2s/band", "/prediction/pose",
              "/tf", "/diag/runtime"}
    advertised: dict[str, dict] = {}
    received: dict[str, bytes] = {}
    by_sub: dict[int, dict] = {}
    core.start()
    try:
        with client.connect(url, subprotocols=["foxglove.sdk.v1"], open_timeout=5) as ws:
            start, step = time.monotonic(), 0
            while time.monotonic() - start < 60 and not wanted <= set(received):
                now = time.time_ns()
                core.receive("imu", ros.imu(now))
                if step % 2 == 0:
                    core.receive("odom", ros.odom(now, 0.001 * step))
                if step % 10 == 0:
                    core.receive("lidar", ros.scan(now))
                if step % 50 == 20:
                    core.receive("goal", ros.goal(now, 5.0))  # predictions come with plans, plans with a route
                step += 1
                try:
                    while True:
                        frame = ws.recv(timeout=0.01)
                        if isinstance(frame, str):
                            op = json.loads(frame)
                            if op["op"] == "advertise":
                                advertised.update({c["topic"]: c for c in op["channels"]})
                        elif frame[0] == 1:  # message data
                            sub, _log_time = struct.unpack_from("<IQ", frame, 1)
                            received[by_sub[sub]["topic"]] = frame[13:]
                except TimeoutError:
                    pass
                if not by_sub and wanted <= set(advertised):
                    by_sub.update(enumerate(advertised[t] for t in sorted(wanted)))
                    ws.send(json.dumps({"op": "subscribe", "subscriptions": [{"id": i, "channelId": c["id"]}
                                                                             for i, c in by_sub.items()]}))
    finally:
        report = core.close()
    assert wanted <= set(advertised), sorted(advertised)
    assert wanted <= set(received), sorted(received)
    scan = _decoder(advertised["/sensor/lidar"])(received["/sensor/lidar"])
    assert scan.frame_id == "rplidar_link" and len(scan.ranges) == 360 and scan.ranges[0] == pytest.approx(2.0)
    predicted = _decoder(advertised["/prediction/lidar/0.5s"])(received["/prediction/lidar/0.5s"])
    assert predicted.frame_id == "prediction/0.5s" and len(predicted.ranges) == 90 == len(predicted.intensities)
    assert json.loads(received["/diag/runtime"])["tick"] > 0
    assert report["view"] == url and report["error"] is None and report["runtime"]["plans"] > 0
    with pytest.raises(OSError):  # the server is stopped
        client.connect(url, subprotocols=["foxglove.sdk.v1"], open_timeout=2)


def test_the_parameters_file_declares_every_parameter_with_its_default():
    raw = load_params(PACKAGE / "config/oniwm.params.yaml")
    assert params_from_dict(raw) == NodeParams()
    assert sorted(raw) == sorted(f for f in NodeParams.__dataclass_fields__)


@pytest.mark.parametrize(("values", "message"), [
    ({"backend": "jax"}, "backend = 'jax': one of ['torch', 'onnxruntime', 'tensorrt']"),
    ({"scan_topic": "scan"}, "scan_topic = 'scan': an absolute ROS topic name, e.g. /scan"),
    ({"imu_topic": "/scan"}, "two topic parameters name the same topic"),
    ({"control_enabled": "yes"}, "control_enabled = 'yes': true or false"),
    ({"rate_hz": -5}, "rate_hz = -5: a number >= 0"),
    ({"stamps": "bag"}, "stamps = 'bag': one of ['header', 'receive']"),
    ({"goal_radius_m": 0}, "goal_radius_m = 0.0: a distance > 0 (m)"),
    ({"viewer": True}, "viewer: not a parameter of oniwm_node"),
    ({"view": "yes"}, "view = 'yes': true or false"),
    ({"view_port": 70000}, "view_port = 70000: a TCP port, 0 to 65535 (0: any free one)"),
    ({"view_port": 8765.0}, "view_port = 8765.0: an integer >= 0"),
])
def test_bad_parameters_are_refused_by_name(values, message):
    with pytest.raises(NodeParamsError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")
                       .replace(")", r"\)")):
        params_from_dict(values)


def test_a_horizon_the_runtime_does_not_predict_is_refused(runtime_preset):
    preset, checkpoint = runtime_preset
    ros = RosSide()
    params = params_from_dict(None, config=str(preset), model=str(checkpoint), backend="torch",
                              predicted_scan_horizon_s=0.7)
    with pytest.raises(NodeParamsError, match=r"predicted_scan_horizon_s = 0.7: one of runtime.horizons_s \[0.5, 1.0, 2.0\]"):
        RosRuntime(params, lambda name, msg: None, ros.T)


def test_the_colcon_package_installs_the_node_launch_file_and_parameters(tmp_path):
    manifest = ET.parse(PACKAGE / "package.xml").getroot()
    assert manifest.get("format") == "3" and manifest.findtext("name") == "oniwm"
    assert manifest.findtext("export/build_type") == "ament_python"
    depends = {e.text for e in manifest.iter("exec_depend")}
    assert {"rclpy", "sensor_msgs", "nav_msgs", "geometry_msgs", "diagnostic_msgs", "launch_ros"} <= depends
    # What colcon's ament_python build runs: setuptools on the package's setup.py (in a copy: builds leave files).
    package = tmp_path / "oniwm"
    shutil.copytree(PACKAGE, package, ignore=shutil.ignore_patterns("*.py[co]", "__pycache__"))
    result = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                             "--no-compile", "--prefix", str(tmp_path / "install"), str(package)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    share = tmp_path / "install/share"
    assert (share / "ament_index/resource_index/packages/oniwm").is_file()
    assert (share / "oniwm/package.xml").is_file() and (share / "oniwm/launch/oniwm.launch.py").is_file()
    assert load_params(share / "oniwm/config/oniwm.params.yaml") == load_params(PACKAGE / "config/oniwm.params.yaml")
    script = (tmp_path / "install/bin/oniwm_node").read_text()
    assert "from robots.ros2.oniwm_node import main" in script
    compile((PACKAGE / "launch/oniwm.launch.py").read_text(), "oniwm.launch.py", "exec")
    assert "[install]\ninstall_scripts=$base/lib/oniwm" in (PACKAGE / "setup.cfg").read_text()  # where `ros2 run` looks


def test_the_rclpy_node_commands_the_robot_and_stops_it_on_shutdown(runtime_preset, monkeypatch):
    rclpy = pytest.importorskip("rclpy", reason="rclpy is not installed: it comes with ROS 2 (source "
                                "/opt/ros/<distro>/setup.bash); the node's logic is tested above without it, and over "
                                "DDS in test_ros2_bridge.py")
    from geometry_msgs.msg import PoseStamped, Twist
    from nav_msgs.msg import Odometry
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Imu, LaserScan

    from robots.ros2.oniwm_node import rclpy_types

    preset, checkpoint = runtime_preset
    ros = RosSide(rclpy_types())
    monkeypatch.setenv("ROS_DOMAIN_ID", str(1 + os.getpid() % 200))  # the node (a child) and this side
    node_proc = subprocess.Popen([sys.executable, "-m", "robots.ros2.oniwm_node", "--ros-args", "-p", f"config:={preset}",
                                  "-p", f"model:={checkpoint}", "-p", "backend:=torch", "-p", "control_enabled:=true"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rclpy.init()
    node = rclpy.create_node("robot")
    twists: list[tuple[float, float]] = []
    node.create_subscription(Twist, "/cmd_vel", lambda m: twists.append((m.linear.x, m.angular.z)), 10)
    scans = node.create_publisher(LaserScan, "/scan", qos_profile_sensor_data)
    imus = node.create_publisher(Imu, "/imu", qos_profile_sensor_data)
    odoms = node.create_publisher(Odometry, "/odom", qos_profile_sensor_data)
    goals = node.create_publisher(PoseStamped, "/goal_pose", 10)
    try:
        start, step, stopped_at = time.monotonic(), 0, None
        while time.monotonic() - start < 60 and (stopped_at is None or time.monotonic() - stopped_at < 3):
            now = time.time_ns()
            imus.publish(ros.imu(now))
            if step % 2 == 0:
                odoms.publish(ros.odom(now, 0.0))
            if step % 10 == 0:
                scans.publish(ros.scan(now))
            if step % 50 == 25:
                goals.publish(ros.goal(now, 5.0))
            rclpy.spin_once(node, timeout_sec=0.0)
            if stopped_at is None and len(twists) > 100:
                node_proc.send_signal(signal.SIGINT)
                stopped_at = time.monotonic()
            step += 1
            time.sleep(0.01)
        out, err = node_proc.communicate(timeout=20)
    finally:
        node_proc.kill()
        node.destroy_node()
        rclpy.try_shutdown()
    assert node_proc.returncode == 0, err[-3000:]
    assert any(v != 0.0 or w != 0.0 for v, w in twists) and twists[-1] == (0.0, 0.0)
    report = json.loads(out.strip().splitlines()[-1])
    assert report["error"] is None and report["inputs"]["/scan"]["forwarded"] > 10
