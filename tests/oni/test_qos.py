"""QoS policies, measured on real sockets: reliability, depth, deadline, lifespan, compatibility."""

from __future__ import annotations

import time

import msgpack
import numpy as np
import pytest
import zmq

from oni import qos
from oni.codec import encode
from oni.errors import BackpressureTimeout
from oni.message import Header, new_trace_id, now_ns
from oni.qos import QosProfile, check_compatible
from oni.transport import Publisher, Subscriber
from tests.oni.conftest import connect_and_settle, lidar_data, wait_for


def test_profile_requires_depth_and_validates():
    with pytest.raises(TypeError):
        QosProfile("reliable")  # type: ignore[call-arg]  # no default depth: think about QoS
    with pytest.raises(ValueError, match="depth"):
        QosProfile("reliable", depth=0)
    with pytest.raises(ValueError, match="reliability"):
        QosProfile("sometimes", depth=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="deadline_ms"):
        QosProfile("best_effort", depth=1, deadline_ms=-1)
    with pytest.raises(KeyError, match="presets"):
        qos.preset("nope")
    assert qos.preset("control") is qos.CONTROL


def test_compatibility_names_the_policy():
    reliable = QosProfile("reliable", depth=1)
    best = QosProfile("best_effort", depth=1)
    assert check_compatible(reliable, best) == []
    assert [p for p, _ in check_compatible(best, reliable)] == ["reliability"]
    assert [p for p, _ in check_compatible(QosProfile("reliable", 1, deadline_ms=100), QosProfile("reliable", 1, deadline_ms=50))] == ["deadline"]
    assert [p for p, _ in check_compatible(QosProfile("reliable", 1), QosProfile("reliable", 1, deadline_ms=50))] == ["deadline"]
    assert check_compatible(QosProfile("reliable", 1, deadline_ms=20), QosProfile("reliable", 1, deadline_ms=50)) == []


def test_incompatible_publisher_is_refused_loudly(context):
    events = []
    pub = Publisher("tcp://127.0.0.1:*", {"sensor.lidar": qos.SENSOR}, source="cam", context=context)
    sub = Subscriber(context=context, on_event=lambda t, e, d: events.append((t, e, d)))
    try:
        sub.subscribe("sensor.lidar", QosProfile("reliable", depth=5))
        sub.connect(pub.endpoint)
        for _ in range(100):
            pub.publish("sensor.lidar", lidar_data())
            if sub.recv(timeout_ms=20) is not None:
                pytest.fail("a message from an incompatible publisher was delivered")
            if sub.stats["sensor.lidar"].rejects.get("incompatible_qos"):
                break
        assert sub.stats["sensor.lidar"].rejects.get("incompatible_qos", 0) >= 1
        assert [p for p, _ in sub.incompatibilities()[("sensor.lidar", "cam")]] == ["reliability"]
        assert any(e == "incompatible_qos" and "reliability" in d for _, e, d in events)
    finally:
        pub.close()
        sub.close()


def test_best_effort_never_blocks_and_every_drop_is_counted(context):
    payload = lidar_data(n=50_000)
    with Publisher("tcp://127.0.0.1:*", {"sensor.lidar": qos.SENSOR}, source="l", context=context, hwm=5) as pub, Subscriber(
        context=context, hwm=5
    ) as sub:
        sub.subscribe("sensor.lidar", QosProfile("best_effort", depth=10_000))
        connect_and_settle(pub, sub, "sensor.lidar", lidar_data())
        sent_before = pub.stats["sensor.lidar"].sent
        start = time.monotonic()
        for _ in range(2000):
            pub.publish("sensor.lidar", payload)  # nobody reads meanwhile
        elapsed = time.monotonic() - start
        pstats = pub.stats["sensor.lidar"]
        assert pstats.dropped > 0
        assert elapsed < 10.0  # it never waited for the reader
        seqs = []
        while (msg := sub.recv(timeout_ms=300)) is not None:
            seqs.append(msg.header.seq)
        pub.publish("sensor.lidar", lidar_data(value=7.0))  # queues are empty again: this one goes through
        marker = sub.recv(timeout_ms=2000)
        assert marker is not None and marker.data["ranges_m"][0] == 7.0
        stats = sub.stats["sensor.lidar"]
        # Nothing that was sent is lost on the way, and every drop shows up as a gap.
        assert len(seqs) + 1 == pstats.sent - sent_before
        assert stats.gaps == pstats.dropped


def test_reliable_waits_then_raises_and_loses_nothing(context):
    profile = QosProfile("reliable", depth=10_000, max_blocking_ms=50.0)
    with Publisher("tcp://127.0.0.1:*", {"sensor.lidar": profile}, source="l", context=context, hwm=5) as pub, Subscriber(
        context=context, hwm=5
    ) as sub:
        sub.subscribe("sensor.lidar", profile)
        connect_and_settle(pub, sub, "sensor.lidar", lidar_data())
        payload = lidar_data(n=50_000)
        sent = 0
        with pytest.raises(BackpressureTimeout, match="50.0 ms"):
            for _ in range(5000):
                pub.publish("sensor.lidar", payload)
                sent += 1
        assert pub.stats["sensor.lidar"].blocked_timeouts == 1
        received = 0
        while sub.recv(timeout_ms=500) is not None:
            received += 1
        assert received == sent  # everything accepted for sending was delivered
        assert sub.stats["sensor.lidar"].gaps == 0


def test_reliable_stream_is_lossless_at_1khz(context):
    profile = qos.RECORD
    with Publisher("tcp://127.0.0.1:*", {"sensor.lidar": profile}, source="l", context=context) as pub, Subscriber(
        context=context
    ) as sub:
        sub.subscribe("sensor.lidar", profile)
        connect_and_settle(pub, sub, "sensor.lidar", lidar_data())
        data = lidar_data(n=256)  # 1 KB tensor
        period, start, count = 0.001, time.monotonic(), 1000
        stats = sub.stats["sensor.lidar"]
        for k in range(count):
            pub.publish("sensor.lidar", data)
            sub.poll(0)
            sub.take("sensor.lidar")
            time.sleep(max(0.0, start + (k + 1) * period - time.monotonic()))  # deadline-scheduled
        assert wait_for(lambda: (sub.poll(20), sub.take("sensor.lidar")) and stats.received == count)
        assert stats.gaps == 0 and stats.rejected == 0 and stats.overrun == 0


def test_depth_keeps_latest_and_counts_overrun(context):
    with Publisher("tcp://127.0.0.1:*", {"sensor.lidar": qos.SENSOR}, source="l", context=context) as pub, Subscriber(
        context=context
    ) as sub:
        sub.subscribe("sensor.lidar", QosProfile("best_effort", depth=3))
        connect_and_settle(pub, sub, "sensor.lidar", lidar_data())
        for i in range(10):
            pub.publish("sensor.lidar", lidar_data(value=float(i + 1)))
        assert wait_for(lambda: (sub.poll(10) or True) and sub.stats["sensor.lidar"].received == 10)
        taken = sub.take("sensor.lidar")
        assert [m.data["ranges_m"][0] for m in taken] == [8.0, 9.0, 10.0]
        assert sub.stats["sensor.lidar"].overrun == 7
        assert sub.take("sensor.lidar") == []


def test_deadline_miss_is_an_event(context):
    events = []
    profile = QosProfile("best_effort", depth=1, deadline_ms=30.0)
    with Publisher("tcp://127.0.0.1:*", {"sensor.lidar": profile}, source="l", context=context) as pub, Subscriber(
        context=context, on_event=lambda t, e, d: events.append(e)
    ) as sub:
        sub.subscribe("sensor.lidar", profile)
        connect_and_settle(pub, sub, "sensor.lidar", lidar_data())
        before = sub.stats["sensor.lidar"].deadline_missed
        assert sub.recv(timeout_ms=250) is None  # silence for several deadline periods
        missed = sub.stats["sensor.lidar"].deadline_missed - before
        assert 2 <= missed <= 9
        assert "deadline_missed" in events
        pub.publish("sensor.lidar", lidar_data())
        assert sub.recv(timeout_ms=1000) is not None
        after = sub.stats["sensor.lidar"].deadline_missed
        sub.poll(0)
        assert sub.stats["sensor.lidar"].deadline_missed == after  # a fresh message resets the deadline


def test_lifespan_drops_old_messages_at_delivery(context):
    profile = QosProfile("best_effort", depth=10, lifespan_ms=50.0)
    with Publisher("tcp://127.0.0.1:*", {"sensor.lidar": profile}, source="l", context=context) as pub, Subscriber(
        context=context
    ) as sub:
        sub.subscribe("sensor.lidar", profile)
        connect_and_settle(pub, sub, "sensor.lidar", lidar_data())
        pub.publish("sensor.lidar", lidar_data())
        time.sleep(0.15)  # it waits in the queue past its lifespan
        assert sub.recv(timeout_ms=100) is None
        assert sub.stats["sensor.lidar"].expired == 1
        pub.publish("sensor.lidar", lidar_data())
        assert sub.poll(500) == 1
        time.sleep(0.15)  # delivered into history, but taken too late
        assert sub.take("sensor.lidar") == []
        assert sub.stats["sensor.lidar"].expired == 2


def test_gaps_in_seq_are_counted_per_publisher(context):
    """A hand-made publisher skips seq numbers; the subscriber counts exactly the missing ones."""
    sock = context.socket(zmq.XPUB)
    sock.linger = 0
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    with Subscriber(context=context) as sub:
        sub.subscribe("sensor.lidar", qos.SENSOR)
        sub.connect(f"tcp://127.0.0.1:{port}")
        assert sock.poll(2000)  # the subscription arrived
        sock.recv_multipart()
        trace = new_trace_id()
        for seq in (0, 1, 4, 5, 9):
            header = Header("sensor.lidar", "1.0", seq, "crafted", now_ns(), now_ns(), "", trace)
            sock.send_multipart(encode("sensor.lidar", header, lidar_data()))
        seqs = []
        while (msg := sub.recv(timeout_ms=500)) is not None:
            seqs.append(msg.header.seq)
        assert seqs == [0, 1, 4, 5, 9]
        assert sub.stats["sensor.lidar"].gaps == 2 + 3
    sock.close()
