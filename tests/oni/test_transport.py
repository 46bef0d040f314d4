"""Publisher/subscriber over real ZeroMQ sockets: tcp, ipc and inproc on loopback."""

from __future__ import annotations

import numpy as np
import pytest
import zmq

from oni import qos
from oni.errors import OniError
from oni.transport import Publisher, Subscriber, TopicSpec
from tests.oni.conftest import connect_and_settle, lidar_data


@pytest.mark.parametrize("kind", ["tcp", "ipc", "inproc"])
def test_messages_arrive_intact_over_each_transport(kind, tmp_path, context):
    endpoint = {"tcp": "tcp://127.0.0.1:*", "ipc": f"ipc://{tmp_path}/s.sock", "inproc": "inproc://oni-test"}[kind]
    with Publisher(endpoint, {"sensor.lidar": qos.SENSOR}, source="lidar0", context=context) as pub, Subscriber(
        context=context
    ) as sub:
        sub.subscribe("sensor.lidar", qos.SENSOR)
        connect_and_settle(pub, sub, "sensor.lidar", lidar_data())
        ranges = np.linspace(0.2, 11.0, 360, dtype=np.float32)
        sent = pub.publish("sensor.lidar", {**lidar_data(), "ranges_m": ranges}, stamp_ns=123, frame_id="laser")
        msg = sub.recv(timeout_ms=2000)
        assert msg is not None
        assert msg.topic == "sensor.lidar"
        assert msg.header == sent
        assert msg.header.stamp_ns == 123 and msg.header.frame_id == "laser" and msg.header.source == "lidar0"
        np.testing.assert_array_equal(msg.data["ranges_m"], ranges)
        assert msg.data["range_max_m"] == 12.0
        assert msg.recv_ns >= msg.header.pub_ns
        stats = sub.stats["sensor.lidar"]
        assert stats.received == 1 and stats.latency_us(0.5) >= 0


def test_large_tensor_is_a_zero_copy_frame(context):
    with Publisher("tcp://127.0.0.1:*", {"sensor.lidar": qos.SENSOR}, source="l", context=context) as pub, Subscriber(
        context=context
    ) as sub:
        sub.subscribe("sensor.lidar", qos.SENSOR)
        connect_and_settle(pub, sub, "sensor.lidar", lidar_data())
        big = np.arange(100_000, dtype=np.float32)
        pub.publish("sensor.lidar", {**lidar_data(), "ranges_m": big})
        msg = sub.recv(timeout_ms=2000)
        ranges = msg.data["ranges_m"]
        np.testing.assert_array_equal(ranges, big)
        # A view of the received ZeroMQ frame, not a copy: it owns no memory and is read-only.
        assert not ranges.flags.owndata and not ranges.flags.writeable


def test_topics_match_exactly_and_trace_ids_follow_parents(context):
    topics = {"sensor.lidar": qos.SENSOR, "sensor.lidar.rear": TopicSpec(qos.SENSOR, schema="sensor.lidar")}
    with Publisher("tcp://127.0.0.1:*", topics, source="l", context=context) as pub, Subscriber(context=context) as sub:
        sub.subscribe("sensor.lidar", qos.SENSOR)
        connect_and_settle(pub, sub, "sensor.lidar", lidar_data())
        rear = pub.publish("sensor.lidar.rear", lidar_data(value=5.0))
        front = pub.publish("sensor.lidar", lidar_data(value=2.0), parent=rear)
        msg = sub.recv(timeout_ms=2000)
        assert msg.topic == "sensor.lidar" and msg.data["ranges_m"][0] == 2.0
        assert sub.recv(timeout_ms=100) is None  # the prefix-sharing topic is not delivered
        assert front.trace_id == rear.trace_id == msg.header.trace_id


def test_publish_refuses_undeclared_topic(context):
    with Publisher("tcp://127.0.0.1:*", {"sensor.lidar": qos.SENSOR}, source="l", context=context) as pub:
        with pytest.raises(OniError, match="not declared"):
            pub.publish("sensor.imu", {})


def test_schema_mismatch_on_a_topic_is_rejected(context):
    topics = {"sensor.lidar": qos.SENSOR, "odd": TopicSpec(qos.SENSOR, schema="sensor.lidar")}
    with Publisher("tcp://127.0.0.1:*", topics, source="l", context=context) as pub, Subscriber(context=context) as sub:
        sub.subscribe("odd", qos.SENSOR, schema="sensor.odom")
        sub.subscribe("sensor.lidar", qos.SENSOR)
        connect_and_settle(pub, sub, "sensor.lidar", lidar_data())
        pub.publish("odd", lidar_data())
        pub.publish("sensor.lidar", lidar_data())
        assert sub.recv(timeout_ms=2000).topic == "sensor.lidar"
        assert sub.stats["odd"].rejects == {"wrong_type": 1}
        assert "sensor.odom" in sub.stats["odd"].last_reject


def test_unknown_endpoint_scheme_is_a_clear_error(context):
    with pytest.raises(zmq.ZMQError):
        Publisher("bogus://x", {"sensor.lidar": qos.SENSOR}, source="l", context=context)
