"""Shared-memory tensors: loaned slots, zero-copy views, stale-view detection, across real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from oni import qos
from oni.errors import OniError, StaleView
from oni.shm import SHM_DIR, ShmConfig
from oni.transport import Publisher, Subscriber
from tests.oni.conftest import connect_and_settle

H, W = 480, 640  # 1.2 MB float32 depth image


def depth_data(depth) -> dict:
    return {"depth": depth, "depth_scale_m": 1.0, "fx": 500.0, "fy": 500.0, "cx": W / 2, "cy": H / 2}


def small_depth() -> dict:
    return depth_data(np.ones((4, 4), dtype=np.float32))


@pytest.fixture
def pair(tmp_path, context):
    pub = Publisher(f"ipc://{tmp_path}/shm.sock", {"sensor.depth": qos.SENSOR}, source="cam", context=context,
                    shm=ShmConfig(slots=2, slot_bytes=H * W * 4))
    sub = Subscriber(context=context)
    sub.subscribe("sensor.depth", qos.SENSOR)
    connect_and_settle(pub, sub, "sensor.depth", small_depth())
    yield pub, sub
    sub.close()
    pub.close()


def test_loaned_slot_is_received_without_copy(pair):
    pub, sub = pair
    image = pub.loan((H, W), np.float32)
    image[:] = 2.5
    pub.publish("sensor.depth", depth_data(image))
    msg = sub.recv(timeout_ms=2000)
    received = msg.data["depth"]
    assert received.shape == (H, W) and float(received[10, 10]) == 2.5
    assert not received.flags.writeable
    assert pub.stats["sensor.depth"].shm == 1
    # The consumer's array is the producer's memory: a write on one side shows on the other.
    image[10, 10] = 7.0
    assert float(received[10, 10]) == 7.0
    assert msg.valid()


def test_reused_slot_tells_the_reader(pair):
    pub, sub = pair
    first = pub.loan((H, W), np.float32)
    first[:] = 1.0
    pub.publish("sensor.depth", depth_data(first))
    msg = sub.recv(timeout_ms=2000)
    assert msg.valid()
    second = pub.loan((H, W), np.float32)  # slot 1
    pub.publish("sensor.depth", depth_data(second))
    assert msg.valid()  # slot 0 untouched so far
    pub.loan((H, W), np.float32)  # slot 0 again: the first message's view is no longer valid
    assert not msg.valid()
    with pytest.raises(StaleView, match="reused"):
        msg.shm_leases[0].require_valid()


def test_slot_reused_before_delivery_is_rejected_and_counted(pair):
    pub, sub = pair
    for value in (1.0, 2.0, 3.0):  # 3 publishes through 2 slots before the reader looks
        image = pub.loan((H, W), np.float32)
        image[:] = value
        pub.publish("sensor.depth", depth_data(image))
    values = []
    while (msg := sub.recv(timeout_ms=300)) is not None:
        values.append(float(msg.data["depth"][0, 0]))
    assert values == [2.0, 3.0]
    assert sub.stats["sensor.depth"].rejects == {"stale_shm": 1}


def test_large_ordinary_arrays_are_copied_into_slots(pair):
    pub, sub = pair
    image = np.random.default_rng(0).random((H, W), dtype=np.float32)
    pub.publish("sensor.depth", depth_data(image))
    msg = sub.recv(timeout_ms=2000)
    np.testing.assert_array_equal(msg.data["depth"], image)
    assert pub.stats["sensor.depth"].shm == 1


def test_loan_needs_shm_and_fits_a_slot(pair, context):
    pub, _ = pair
    with pytest.raises(ValueError, match="slot size"):
        pub.loan((H + 1, W), np.float32)
    with Publisher("tcp://127.0.0.1:*", {"sensor.depth": qos.SENSOR}, source="x", context=context) as plain:
        with pytest.raises(OniError, match="shm=ShmConfig"):
            plain.loan((2, 2), np.float32)


def test_shared_memory_between_processes(tmp_path):
    endpoint = f"ipc://{tmp_path}/x.sock"
    child = textwrap.dedent(
        f"""
        import sys, time, numpy as np
        from oni import qos
        from oni.shm import ShmConfig
        from oni.transport import Publisher
        pub = Publisher({endpoint!r}, {{"sensor.depth": qos.SENSOR}}, source="child", shm=ShmConfig(slots=4, slot_bytes={H * W * 4}))
        print(pub.shm_segment, flush=True)
        sys.stdin.readline()  # the parent is subscribed
        for k in range(3):
            image = pub.loan(({H}, {W}), np.float32)
            image[:] = np.arange({W}, dtype=np.float32) + k
            pub.publish("sensor.depth", {{"depth": image, "depth_scale_m": 1.0, "fx": 1.0, "fy": 1.0, "cx": 0.0, "cy": 0.0}})
        sys.stdin.readline()  # the parent has read them
        pub.close()
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", child], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            cwd=os.getcwd())
    try:
        segment = proc.stdout.readline().strip()
        assert os.path.exists(os.path.join(SHM_DIR, segment))
        with Subscriber() as sub:
            sub.subscribe("sensor.depth", qos.SENSOR)
            sub.connect(endpoint)
            time.sleep(0.3)  # let the subscription reach the child
            proc.stdin.write("go\n")
            proc.stdin.flush()
            got = []
            while len(got) < 3 and (msg := sub.recv(timeout_ms=5000)) is not None:
                assert msg.valid()
                got.append(msg.data["depth"][5].copy())
            assert len(got) == 3
            for k, row in enumerate(got):
                np.testing.assert_array_equal(row, np.arange(W, dtype=np.float32) + k)
            proc.stdin.write("done\n")
            proc.stdin.flush()
            assert proc.wait(timeout=10) == 0
        assert not os.path.exists(os.path.join(SHM_DIR, segment))  # the producer unlinked its segment
    finally:
        proc.kill()
