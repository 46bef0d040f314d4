"""``oniwm demo``: two processes talking ONI, with live latency and drop statistics.

The parent process subscribes; a child process (``oniwm demo --role publisher``) streams sensor-like
messages at robot rates: LiDAR 360 beams at 10 Hz, IMU at 200 Hz, odometry at 50 Hz, a 64x48 depth image
at 15 Hz (PNG-encoded). ``make run`` runs this until the robot runtime replaces it.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

from oni import qos
from oni.tensor import Png
from oni.transport import Publisher, Subscriber

#: topic -> rate (Hz)
RATES_HZ = {"sensor.lidar": 10.0, "sensor.imu": 200.0, "sensor.odom": 50.0, "sensor.depth": 15.0}


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("demo", help="ONI demonstration: a publisher process and a live-statistics subscriber")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds to run (default 10)")
    parser.add_argument("--endpoint", default=None, help="endpoint (default: an ipc socket in a temp dir)")
    parser.add_argument("--role", choices=("both", "publisher"), default="both", help=argparse.SUPPRESS)
    parser.set_defaults(func=run)


def _publish(endpoint: str, duration_s: float) -> int:
    """Stream the sensor topics until ``duration_s`` passes or SIGTERM. Deadline-scheduled per topic."""
    rng = np.random.default_rng(0)
    pub = Publisher(endpoint, {topic: qos.SENSOR for topic in RATES_HZ}, source="demo-robot")
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    angles = np.linspace(-math.pi, math.pi, 360, endpoint=False)
    ranges = np.empty(360, dtype=np.float32)
    depth = np.empty((48, 64), dtype=np.uint16)
    start = time.monotonic()
    ticks = {topic: 0 for topic in RATES_HZ}
    while not stop and time.monotonic() - start < duration_s:
        # Publish every topic whose next deadline has passed; sleep until the earliest next one.
        now = time.monotonic()
        for topic, rate in RATES_HZ.items():
            due = start + ticks[topic] / rate
            if now < due:
                continue
            ticks[topic] += 1
            t = now - start
            if topic == "sensor.lidar":
                np.multiply(2.0 + np.cos(angles + t), 1.0, out=ranges, casting="unsafe")
                pub.publish(topic, {"ranges_m": ranges, "angle_min_rad": -math.pi, "angle_increment_rad": 2 * math.pi / 360,
                                    "range_min_m": 0.15, "range_max_m": 12.0, "scan_time_s": 0.1}, frame_id="laser")
            elif topic == "sensor.imu":
                pub.publish(topic, {"accel_mps2": np.array([0.1 * math.sin(t), 0.0, 9.81], dtype=np.float32),
                                    "gyro_radps": np.array([0.0, 0.0, 0.2], dtype=np.float32)}, frame_id="imu")
            elif topic == "sensor.odom":
                pub.publish(topic, {"x_m": 0.3 * t, "y_m": 0.0, "yaw_rad": 0.2 * t, "v_mps": 0.3, "omega_radps": 0.2},
                            frame_id="odom")
            else:
                depth[:] = rng.integers(300, 5000, size=depth.shape, dtype=np.uint16)
                pub.publish(topic, {"depth": Png(depth), "depth_scale_m": 0.001, "fx": 60.0, "fy": 60.0, "cx": 32.0,
                                    "cy": 24.0, "range_max_m": 8.0}, frame_id="camera")
        next_due = min(start + ticks[t] / r for t, r in RATES_HZ.items())
        time.sleep(max(0.0, next_due - time.monotonic()))
    pub.close()
    return 0


def _status_line(sub: Subscriber) -> str:
    parts = []
    for topic, stats in sub.stats.items():
        name = topic.split(".")[-1]
        parts.append(
            f"{name} {stats.rate_hz:6.1f} Hz p50 {stats.latency_us(0.5):6.0f} us p99 {stats.latency_us(0.99):6.0f} us "
            f"drop {stats.drops} rej {stats.rejected}"
        )
    return " | ".join(parts)


def run(args: argparse.Namespace) -> int:
    if args.role == "publisher":
        return _publish(args.endpoint, args.duration)
    tmp = None
    endpoint = args.endpoint
    if endpoint is None:
        tmp = tempfile.TemporaryDirectory(prefix="oni-demo-")
        endpoint = f"ipc://{tmp.name}/demo.sock"
    sub = Subscriber()
    for topic in RATES_HZ:
        sub.subscribe(topic, qos.SENSOR)
    sub.connect(endpoint)
    child = subprocess.Popen(
        [sys.executable, "-m", "worldmodel.cli", "demo", "--role", "publisher", "--endpoint", endpoint,
         "--duration", str(args.duration)],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    print(f"ONI demo: publisher pid {child.pid} on {endpoint}, subscriber pid {os.getpid()}; {args.duration:.0f} s",
          file=sys.stderr, flush=True)
    start = time.monotonic()
    last_print = start
    try:
        while child.poll() is None or sub.poll(0):
            sub.poll(50)
            for topic in RATES_HZ:
                sub.take(topic)
            if time.monotonic() - last_print >= 1.0:
                last_print = time.monotonic()
                print(f"[{last_print - start:5.1f} s] {_status_line(sub)}", file=sys.stderr)
    except KeyboardInterrupt:
        child.terminate()
    child.wait(timeout=10)
    sys.stderr.flush()
    print("\nfinal statistics (publish -> receive latency through ONI):")
    print(f"{'topic':<14}{'received':>9}{'rate Hz':>9}{'p50 us':>9}{'p99 us':>9}{'gaps':>6}{'overrun':>8}{'rejects':>8}")
    for topic, stats in sub.stats.items():
        print(f"{topic:<14}{stats.received:>9}{stats.rate_hz:>9.1f}{stats.latency_us(0.5):>9.0f}{stats.latency_us(0.99):>9.0f}"
              f"{stats.gaps:>6}{stats.overrun:>8}{stats.rejected:>8}")
    sub.close()
    if tmp is not None:
        tmp.cleanup()
    return 0 if all(s.received > 0 for s in sub.stats.values()) else 1
