"""Fixtures shared by the ROS 2 node's tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def runtime_preset(tmp_path_factory):
    """The hallway preset with a light planner, and an untrained tiny model with the hallway robot's sensors."""
    import yaml

    from worldmodel.bench_latency import preset_model
    from worldmodel.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("ros2")
    checkpoint = save_checkpoint(root / "run", preset_model("tiny"), 0)
    preset = yaml.safe_load(Path("configs/hallway.yaml").read_text())
    preset["planner"].update(samples=32, chunk=0, iterations=1, min_iterations=1, time_budget_ms=0.0)
    preset["runtime"]["realtime_priority"] = 0  # a test process shares its cores: no SCHED_FIFO thread in it
    (root / "preset.yaml").write_text(yaml.safe_dump(preset))
    return root / "preset.yaml", checkpoint
