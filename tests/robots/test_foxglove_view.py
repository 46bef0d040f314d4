"""The Foxglove view: a real WebSocket client sees every channel and decodes what arrives; the log export is an
MCAP the ``mcap`` library reads with Foxglove schemas; the shipped layout matches the feed's topics."""

from __future__ import annotations

import base64
import json
import struct
import sys
import time
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest

from oni.message import Header, Message
from robots.foxglove_view import band_points, layout, no_return_to_inf

NEEDS_FOXGLOVE = pytest.mark.skipif(find_spec("foxglove") is None,
                                    reason="the Foxglove view is the view extra: pip install 'oni-worldmodel[view]'")
LAYOUT_FILE = Path(__file__).resolve().parents[2] / "docs" / "foxglove" / "oniwm-layout.json"
T0 = 1_700_000_000_000_000_000
HORIZONS = (0.5, 1.0, 2.0)
#: Every Foxglove topic one message of each shown ONI type produces.
EXPECTED = {
    "/sensor/lidar": ("foxglove.LaserScan", "protobuf"),
    **{f"/prediction/lidar/{h:g}s": ("foxglove.LaserScan", "protobuf") for h in HORIZONS},
    **{f"/prediction/lidar/{h:g}s/band": ("foxglove.PointCloud", "protobuf") for h in HORIZONS},
    "/prediction/pose": ("foxglove.SceneUpdate", "protobuf"),
    "/tf": ("foxglove.FrameTransforms", "protobuf"),
    "/path/odom": ("foxglove.SceneUpdate", "protobuf"),
    "/path/ground_truth": ("foxglove.SceneUpdate", "protobuf"),
    "/nav/route": ("foxglove.SceneUpdate", "protobuf"),
    "/sim/ground_truth": ("sim.ground_truth", "json"),
    "/diag/runtime": ("diag.runtime", "json"),
}


def _msg(topic: str, stamp_ns: int, frame_id: str, data: dict, pub_ns: int | None = None) -> Message:
    header = Header(topic, "1.0", 0, "test", stamp_ns, stamp_ns if pub_ns is None else pub_ns, frame_id, "0" * 32)
    return Message(topic, header, data, recv_ns=stamp_ns + 1000)


def one_of_each(t: int) -> list[Message]:
    """One message of every type the view shows (plus an IMU message it ignores), stamped ``t``."""
    ranges = np.full(360, 3.0, np.float32)
    ranges[:10] = 12.0  # no return
    k, n = len(HORIZONS), 90
    return [
        _msg("sensor.imu", t, "imu_link", {"accel_mps2": np.zeros(3, np.float32), "gyro_radps": np.zeros(3, np.float32)}, pub_ns=t - 500_000),
        _msg("sensor.odom", t, "odom", {"x_m": 1.0, "y_m": 0.5, "yaw_rad": 0.3, "v_mps": 0.2, "omega_radps": 0.0},
             pub_ns=t - 3_000_000),
        _msg("sim.ground_truth", t, "world", {"x_m": 2.0, "y_m": 1.0, "yaw_rad": 0.4, "v_mps": 0.2, "omega_radps": 0.0,
                                              "in_collision": False, "collisions": 0, "goal_distance_m": 5.0}),
        _msg("sensor.lidar", t, "rplidar_link", {"ranges_m": ranges, "angle_min_rad": -np.pi,
                                                 "angle_increment_rad": 2 * np.pi / 360, "range_min_m": 0.15,
                                                 "range_max_m": 12.0}, pub_ns=t - 4_000_000),
        _msg("nav.route", t, "odom", {"waypoints_m": np.array([[0.0, 0.0], [3.0, 0.0], [6.0, 1.0]]),
                                      "goal_radius_m": 0.5}),
        _msg("prediction.lidar", t, "", {"horizons_s": np.array(HORIZONS, np.float32),
                                         "ranges_m": np.full((k, n), 2.0, np.float32),
                                         "ranges_std_m": np.full((k, n), 0.1, np.float32),
                                         "angle_min_rad": -np.pi, "angle_increment_rad": 2 * np.pi / n}),
        _msg("prediction.pose", t, "", {"horizons_s": np.array(HORIZONS, np.float32),
                                        "pose": np.array([[0.1, 0, 0], [0.2, 0, 0], [0.4, 0.05, 0.1]], np.float32),
                                        "pose_std": np.full((k, 3), 0.02, np.float32)}),
        _msg("diag.runtime", t, "", {"tick": 7, "tick_us": 900.0, "deadline_misses": 1,
                                     "stages": ["ingest", "observe", "act", "plan", "publish"],
                                     "stage_us": np.array([100.0, 200.0, 50.0, 500.0, 40.0], np.float32),
                                     "stale_sensors": [], "stopped": False, "stop_reason": ""}),
    ]


@pytest.fixture(scope="module")
def robot():
    pytest.importorskip("yaml", reason="robot descriptions need PyYAML: pip install 'oni-worldmodel[sim]'")
    from robots import load_robot, robot_path

    return load_robot(robot_path("turtlebot4"))


def test_no_return_and_band_points():
    assert no_return_to_inf(np.array([1.0, 12.0, 13.0], np.float32), 12.0).tolist() == [1.0, np.inf, np.inf]
    points = band_points(np.array([2.0, 12.0]), np.array([0.5, 0.1]), 0.0, np.pi / 2, 12.0, z_m=0.2)
    assert points.dtype == np.float32 and points.shape == (2, 4)  # the no-return beam has no band
    np.testing.assert_allclose(points, [[1.5, 0.0, 0.2, 0.5], [2.5, 0.0, 0.2, 0.5]], atol=1e-6)


def test_missing_extra_is_named(monkeypatch):
    from robots.foxglove_view import LiveView

    monkeypatch.setitem(sys.modules, "foxglove", None)
    with pytest.raises(ImportError, match=r"oni-worldmodel\[view\]"):
        LiveView(0)


def _decoder(advertised: dict):
    """A function bytes -> decoded message for one advertised channel (protobuf from its descriptor set)."""
    if advertised["encoding"] == "json":
        return json.loads
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    files = descriptor_pb2.FileDescriptorSet.FromString(base64.b64decode(advertised["schema"]))
    pool = descriptor_pool.DescriptorPool()
    for f in files.file:
        pool.Add(f)
    cls = message_factory.GetMessageClass(pool.FindMessageTypeByName(advertised["schemaName"]))
    return cls.FromString


@NEEDS_FOXGLOVE
def test_live_view_streams_every_topic_to_a_websocket_client(robot):
    pytest.importorskip("google.protobuf", reason="decoding the scans needs protobuf")
    client = pytest.importorskip("websockets.sync.client", reason="the WebSocket client is in the dev extra")
    from robots.foxglove_view import LiveView

    with LiveView(0, robot=robot) as view:
        for msg in one_of_each(T0):
            view.on_message(msg)  # creates (advertises) the channels; no client yet, so nothing is converted
        assert view.feed.counts == {}
        with client.connect(view.url, subprotocols=["foxglove.sdk.v1"], open_timeout=5) as ws:
            advertised: dict[str, dict] = {}
            deadline = time.monotonic() + 5
            while set(advertised) != set(EXPECTED) and time.monotonic() < deadline:
                frame = json.loads(ws.recv(timeout=5))
                if frame["op"] == "advertise":
                    advertised.update({c["topic"]: c for c in frame["channels"]})
            assert set(advertised) == set(EXPECTED)  # and nothing for the IMU
            for topic, (schema, encoding) in EXPECTED.items():
                assert (advertised[topic]["schemaName"], advertised[topic]["encoding"]) == (schema, encoding), topic
            by_sub = {i: c for i, c in enumerate(advertised.values())}
            ws.send(json.dumps({"op": "subscribe", "subscriptions": [{"id": i, "channelId": c["id"]}
                                                                     for i, c in by_sub.items()]}))
            received: dict[str, list] = {}
            t = T0
            deadline = time.monotonic() + 10
            while set(received) != set(EXPECTED) and time.monotonic() < deadline:
                t += 1_000_000_000  # past every rate limit
                for msg in one_of_each(t):
                    view.on_message(msg)
                try:
                    while True:
                        frame = ws.recv(timeout=0.2)
                        if isinstance(frame, bytes) and frame[0] == 1:  # message data
                            sub, _log_time = struct.unpack_from("<IQ", frame, 1)
                            channel = by_sub[sub]
                            received.setdefault(channel["topic"], []).append(_decoder(channel)(frame[13:]))
                except TimeoutError:
                    pass
        assert set(received) == set(EXPECTED)
    scan = received["/sensor/lidar"][-1]
    assert scan.frame_id == "rplidar_link" and len(scan.ranges) == 360 and np.isinf(scan.ranges[:10]).all()
    predicted = received["/prediction/lidar/1s"][-1]
    assert predicted.frame_id == "prediction/1s" and len(predicted.ranges) == 90
    assert predicted.intensities[0] == pytest.approx(0.1)  # the predicted std
    assert predicted.pose.position.x == pytest.approx(-0.04)  # the LiDAR's mount on the predicted base
    frames = {(tf.parent_frame_id, tf.child_frame_id) for m in received["/tf"] for tf in m.transforms}
    assert {("odom", "base_link"), ("base_link", "rplidar_link"), ("world", "odom"),
            ("base_link", "prediction/2s")} <= frames
    diag = received["/diag/runtime"][-1]
    assert diag["tick_us"] == 900.0 and diag["stage_us"]["plan"] == 500.0
    # Newest sensor published 0.5 ms before the tick (the IMU), plus ingest + observe + act = 0.35 ms.
    assert diag["sensor_to_command_est_ms"] == pytest.approx(0.85)


@NEEDS_FOXGLOVE
def test_export_log_writes_foxglove_schemas(tmp_path, robot):
    from mcap.reader import make_reader

    from oni.mcap_log import LogWriter
    from robots.foxglove_view import export_log

    log_path, out = tmp_path / "run.mcap", tmp_path / "foxglove.mcap"
    sent = []
    with LogWriter(log_path, {"run": {"robot": "turtlebot4", "seed": "3"}}) as writer:
        first_diag = one_of_each(T0 - 1_000_000_000)[-1]  # before any sensor message: no latency estimate
        writer.write(first_diag)
        sent.append(first_diag)
        for i in range(5):
            for msg in one_of_each(T0 + i * 100_000_000):  # 10 Hz: paths and the route are rate-limited
                writer.write(msg)
                sent.append(msg)
    summary = export_log(log_path, out)
    assert summary["robot"] == "turtlebot4" and summary["oni_messages"] == len(sent)
    assert summary["horizons_s"] == list(HORIZONS)
    counts = summary["foxglove_messages"]
    assert counts["/sensor/lidar"] == 5 and counts["/prediction/lidar/2s/band"] == 5  # every prediction
    assert counts["/diag/runtime"] == 6
    assert counts["/path/odom"] == 1 and counts["/nav/route"] == 1  # 2 Hz and 1 Hz over 0.4 s of stamps
    with open(out, "rb") as f:
        reader = make_reader(f)
        summary_section = reader.get_summary()
        channels = {c.topic: c for c in summary_section.channels.values()}
        assert set(channels) == set(EXPECTED)
        for topic, (schema, encoding) in EXPECTED.items():
            assert summary_section.schemas[channels[topic].schema_id].name == schema
            assert channels[topic].message_encoding == encoding
        stored: dict[str, int] = {}
        log_times, estimates = [], []
        for _schema, channel, message in reader.iter_messages():
            stored[channel.topic] = stored.get(channel.topic, 0) + 1
            if channel.topic == "/diag/runtime":
                log_times.append(message.log_time)
                estimates.append(json.loads(message.data)["sensor_to_command_est_ms"])
        assert stored == counts
        assert log_times == [m.recv_ns for m in sent if m.topic == "diag.runtime"]  # the recorded receive times
        assert estimates == [None] + [pytest.approx(0.85)] * 5
        assert {m.name for m in reader.iter_metadata()} == {"run"}


@NEEDS_FOXGLOVE
def test_shipped_layout_shows_the_feeds_topics():
    assert json.loads(LAYOUT_FILE.read_text()) == layout(HORIZONS)
    doc = layout(HORIZONS)
    shown = set(doc["configById"]["3D!oniwm"]["topics"])
    shown |= {p["value"].split(".")[0] for p in doc["configById"]["Plot!oniwm"]["paths"]}
    shown.add(doc["configById"]["RawMessages!oniwm"]["topicPath"])
    assert shown <= set(EXPECTED)
