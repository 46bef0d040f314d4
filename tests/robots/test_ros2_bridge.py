"""``oniwm ros2-bridge`` against an independent ROS 2 peer over real DDS on loopback, both real processes.

The peer (tests/robots/ros2_peer.py) has its own DDS types, generated from rosbags' ROS 2 definitions, and sends
and receives raw CDR through rosbags: it publishes scans (one of them with 720 beams), IMU, odometry, depth and a
goal, and receives cmd_vel, the predicted scan and path and diagnostics. The bridge runs the hallway preset's
robot with an untrained tiny model (torch backend) at 50 Hz."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("cyclonedds", reason="cyclonedds (the 'ros2' extra) is not installed")
rosbags_typesys = pytest.importorskip("rosbags.typesys", reason="rosbags (the 'ros2' extra) is not installed")

pytestmark = pytest.mark.timeout(120)

ONIWM = [sys.executable, "-m", "worldmodel.cli"]
PEER = Path(__file__).with_name("ros2_peer.py")
#: CycloneDDS on loopback only: no multicast, the peers found by unicast on 127.0.0.1.
LOOPBACK = ("<CycloneDDS><Domain><General><Interfaces><NetworkInterface name='lo'/></Interfaces>"
            "<AllowMulticast>false</AllowMulticast></General><Discovery><Peers><Peer address='127.0.0.1'/></Peers>"
            "<ParticipantIndex>auto</ParticipantIndex><MaxAutoParticipantIndex>20</MaxAutoParticipantIndex>"
            "</Discovery></Domain></CycloneDDS>")


def test_the_bridge_drives_an_independent_ros2_peer_over_dds(runtime_preset, tmp_path):
    preset, checkpoint = runtime_preset
    env = {**os.environ, "CYCLONEDDS_URI": LOOPBACK}
    domain = 1 + os.getpid() % 200  # one domain per test run: concurrent runs never see each other
    bridge = subprocess.Popen([*ONIWM, "ros2-bridge", "--config", str(preset), "--model", str(checkpoint), "--backend",
                               "torch", "--control", "--domain-id", str(domain), "--duration", "90", "--json",
                               str(tmp_path / "report.json"), "--quiet"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        peer = subprocess.run([sys.executable, str(PEER), "--domain", str(domain), "--stop-pid", str(bridge.pid),
                               "--drive-s", "3", "--linger-s", "2", "--timeout-s", "80"],
                              env=env, capture_output=True, text=True, timeout=100)
        _, err = bridge.communicate(timeout=20)
    finally:
        bridge.kill()
    assert peer.returncode == 0, peer.stderr[-3000:]
    assert bridge.returncode == 0, err[-3000:]
    seen = json.loads(peer.stdout)
    assert seen["error"] is None and seen["bad_scan_sent"]

    # cmd_vel: plain CDR (little-endian encapsulation 00 01), which rosbags decoded as geometry_msgs/msg/Twist.
    assert all(raw.startswith("00010000") and len(raw) == 2 * (4 + 48) for raw in seen["twist_bytes"])
    assert len(seen["twists"]) > 50
    assert any(v != 0.0 or omega != 0.0 for v, omega in seen["twists"])  # it drove toward the goal
    assert seen["after_stop"] and seen["after_stop"][-1] == [0.0, 0.0]  # and stopped the robot as it ended
    assert seen["predicted_scan"] == {"beams": 90, "frame_id": "rplidar_link", "angle_increment": pytest.approx(0.0698132),
                                      "range_max": 12.0}
    assert seen["predicted_path"]["poses"] == 4 and seen["predicted_path"]["frame_id"] == "base_link"
    assert seen["diagnostics"]["name"] == "oniwm_node: world-model runtime"
    assert {"tick_us", "deadline_misses", "stage_us.plan", "/scan.refused"} <= set(seen["diagnostics"]["keys"])

    report = json.loads((tmp_path / "report.json").read_text())
    scan = report["inputs"]["/scan"]
    assert scan["refused"] == {"refused": 1} and scan["forwarded"] == scan["received"] - 1 > 10
    assert scan["refusals"]["refused"] == ("sensor_msgs/msg/LaserScan: 720 beams, but the robot's LiDAR 'lidar' has 360 "
                                           "(params.beams): refused, never reshaped")
    for topic in ("/imu", "/odom", "/camera/depth/image_raw", "/goal_pose"):
        assert report["inputs"][topic]["forwarded"] == report["inputs"][topic]["received"] > 0, topic
    runtime = report["runtime"]
    assert runtime["error"] is None and runtime["ticks"] > 100 and runtime["plans"] > 0 and runtime["refused"] == {}
    assert report["outputs"]["/cmd_vel"]["published"] >= len(seen["twists"])


def test_the_bridge_refuses_to_start_with_a_model_that_does_not_fit_the_robot_at_that_rate(runtime_preset, tmp_path):
    preset, checkpoint = runtime_preset
    result = subprocess.run([*ONIWM, "ros2-bridge", "--config", str(preset), "--model", str(checkpoint), "--backend",
                             "torch", "--rate", "20", "--domain-id", str(1 + os.getpid() % 200), "--quiet"],
                            env={**os.environ, "CYCLONEDDS_URI": LOOPBACK}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr[-3000:]
    # 200 Hz IMU at 20 Hz ticks is 10 samples a tick; the model was built for 50 Hz (4).
    assert "the model takes imu (4, 6), the robot gives imu (10, 6)" in result.stderr
    bad = tmp_path / "bad.params.yaml"
    bad.write_text("oniwm_node:\n  ros__parameters:\n    scan_topic: scan\n")
    result = subprocess.run([*ONIWM, "ros2-bridge", "--params", str(bad), "--quiet"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2 and "scan_topic = 'scan': an absolute ROS topic name, e.g. /scan" in result.stderr


def test_the_bridge_view_flags_start_the_foxglove_server_on_that_port(runtime_preset):
    pytest.importorskip("foxglove", reason="--view needs foxglove-sdk, the view extra: pip install 'oni-worldmodel[view]'")
    preset, checkpoint = runtime_preset
    with socket.socket() as taken:  # the port is taken: the bridge must try it, and say so
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([*ONIWM, "ros2-bridge", "--config", str(preset), "--model", str(checkpoint), "--backend",
                                 "torch", "--view", "--view-port", str(port), "--domain-id", str(1 + os.getpid() % 200),
                                 "--quiet"],
                                env={**os.environ, "CYCLONEDDS_URI": LOOPBACK}, capture_output=True, text=True,
                                timeout=60)
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"cannot start the Foxglove WebSocket server on 127.0.0.1:{port}" in result.stderr
