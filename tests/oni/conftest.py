"""Shared fixtures for the ONI tests: real sockets on loopback, with timeouts, torn down with linger 0."""

from __future__ import annotations

import math
import time
from typing import Callable, Iterator

import numpy as np
import pytest
import zmq

from oni.transport import Publisher, Subscriber


def lidar_data(n: int = 360, value: float = 1.0) -> dict:
    """A valid ``sensor.lidar`` data map with ``n`` beams all at ``value`` metres."""
    return {
        "ranges_m": np.full(n, value, dtype=np.float32),
        "angle_min_rad": -math.pi,
        "angle_increment_rad": 2 * math.pi / n,
        "range_min_m": 0.15,
        "range_max_m": 12.0,
    }


def wait_for(predicate: Callable[[], bool], timeout_s: float = 5.0, step_s: float = 0.01) -> bool:
    """Poll ``predicate`` until it is true or ``timeout_s`` passes; returns its last value."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step_s)
    return predicate()


def connect_and_settle(pub: Publisher, sub: Subscriber, topic: str, data: dict, timeout_s: float = 5.0) -> None:
    """Connect ``sub`` to ``pub`` and publish probes until one arrives (subscriptions propagate asynchronously).

    Probes received are discarded and stats reset, so tests start from a connected, empty state.
    """
    sub.connect(pub.endpoint)
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        pub.publish(topic, data)
        if sub.recv(timeout_ms=50) is not None:
            while sub.recv(timeout_ms=20) is not None:
                pass
            sub._subs[topic].stats = type(sub._subs[topic].stats)()
            return
    raise AssertionError(f"subscriber never received {topic} from {pub.endpoint}")


@pytest.fixture
def context() -> Iterator[zmq.Context]:
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)
