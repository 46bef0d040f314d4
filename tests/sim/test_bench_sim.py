"""``oniwm bench sim``: a quick run through the real command writes a complete JSON report and a table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from robots import load_robot, robot_path
from sim.bench import TARGET_SIM_S_PER_WALL_S, _percentile, physics_only
from sim.config import SimSettings
from sim.hallway import HallwayParams

REPO = Path(__file__).resolve().parents[2]
TOPICS = {"sensor.lidar", "sensor.imu", "sensor.odom", "sensor.depth"}


def test_quick_run_writes_a_valid_report(tmp_path):
    out = tmp_path / "bench-sim.json"
    result = subprocess.run(
        [sys.executable, "-m", "worldmodel.cli", "bench", "sim", "--json", str(out), "--quick"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["bench"] == "sim" and report["mode"] == "quick"
    res = report["results"]
    assert res["runs"] == len(report["runs"]) == report["plan"]["runs"]
    wall = res["wall_ms_per_sim_s"]
    assert 0 < wall["min"] <= wall["median"] <= wall["p99"] <= wall["max"]
    assert res["sim_s_per_wall_s"] > 0
    assert set(res["sensor_ms_per_sim_s"]) == TOPICS
    # Physics alone is cheaper than physics plus every sensor, in the same run.
    assert res["physics_only"]["wall_ms_per_sim_s"] < wall["median"]
    assert res["full_over_physics_only"] > 1
    for row in report["runs"]:
        assert row["readings"]["sensor.imu"] == 200 * report["plan"]["sim_s_per_run"] + 1
    (target,) = report["targets"]
    assert target["threshold"] == TARGET_SIM_S_PER_WALL_S
    assert target["passed"] == (target["value"] >= TARGET_SIM_S_PER_WALL_S)
    assert "sim s per wall s" in result.stdout and "sim_realtime_factor" in result.stdout
    assert not list(tmp_path.glob(".bench-sim-*"))  # the temporary file was renamed, not left behind


def test_percentile_interpolates_between_order_statistics():
    assert _percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert _percentile([1.0, 2.0], 50) == pytest.approx(1.5)
    assert _percentile([1.0, 2.0, 3.0, 4.0, 5.0], 99) == pytest.approx(4.96)
    assert _percentile([7.0], 99) == 7.0


def test_physics_only_reference_steps_the_asked_sim_time():
    robot = load_robot(robot_path("turtlebot4"))
    ref = physics_only(0.5, 0, robot, HallwayParams(seed=0), SimSettings())
    assert ref["sim_s"] == pytest.approx(0.5)
    assert ref["wall_s"] > 0 and ref["sim_s_per_wall_s"] == pytest.approx(0.5 / ref["wall_s"])
