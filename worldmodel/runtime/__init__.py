"""The control-rate runtime: the world model driving a robot over ONI (see :mod:`worldmodel.runtime.loop`).

The only part of ``worldmodel`` that imports ``oni``. ``robots.node`` builds a :class:`Runtime` for a robot
description and connects it to the robot's bridge; :func:`bench_tick` gives ``oniwm bench latency`` one full tick.
"""

from __future__ import annotations

import itertools
import time
from typing import Any, Callable

import numpy as np

from worldmodel.runtime.config import (
    RuntimeConfig,
    RuntimeConfigError,
    runtime_config_from_dict,
)
from worldmodel.runtime.loop import (
    STAGES,
    Carry,
    Runtime,
    RuntimeSetupError,
    check_model_matches,
)

__all__ = [
    "STAGES",
    "Carry",
    "Runtime",
    "RuntimeConfig",
    "RuntimeConfigError",
    "RuntimeSetupError",
    "bench_tick",
    "check_model_matches",
    "realtime_scheduling",
    "runtime_config_from_dict",
]

_bench_ids = itertools.count()


def bench_tick(backend: Any, planner: Any) -> Callable[[], None]:
    """One full tick of a :class:`Runtime` around ``backend`` and ``planner`` (ingest from an idle subscriber,
    belief update, command, plan, publishing every output over in-process sockets), as a callable; for
    ``oniwm bench latency``'s ``full_tick`` stage. A straight 20 m route; no sensor is critical, so every tick plans."""
    from oni.transport import Publisher, Subscriber
    from worldmodel.observation import ObservationSpec
    from worldmodel.runtime.loop import COMMAND_TOPIC, OUTPUT_TOPICS, ROUTE_TOPIC

    shapes = dict(backend.io.obs)
    spec = ObservationSpec(
        lidar_beams=shapes.get("lidar", (0,))[0], depth_height=shapes.get("depth", (0, 0))[0],
        depth_width=shapes.get("depth", (0, 0))[1], imu_samples=shapes.get("imu", (0,))[0], odom="odom" in shapes,
        action_dim=backend.io.action_dim)
    config = RuntimeConfig(critical_sensors={}, trigger="", horizons_s=(planner.config.horizon * planner.config.step_dt_s,))
    n = next(_bench_ids)
    commands = Publisher(f"inproc://bench-tick-cmd-{n}", {COMMAND_TOPIC: "control"}, source="bench")
    outputs = Publisher(f"inproc://bench-tick-out-{n}", {t: "diagnostic" for t in OUTPUT_TOPICS}, source="bench")
    sensors = Subscriber()
    for topic in (*(spec.topics[m] for m in spec.modalities), ROUTE_TOPIC):
        sensors.subscribe(topic, "sensor")
    runtime = Runtime(config, backend, planner, spec, planner.cost.geometry, sensors, commands, outputs,
                      action_timeout_s=0.5)
    runtime.set_route(np.array([[0.0, 0.0], [20.0, 0.0]]), 0.5)

    def tick() -> None:
        runtime.tick(time.time_ns())

    return tick
