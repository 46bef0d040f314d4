"""The main job as real processes: `oniwm run` starts the sim bridge and the runtime (`oniwm node`), which talk only
ONI; the report, the MCAP log and the PNG are checked. And `oniwm node` refusing a model that does not fit the
robot before it waits for one."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from oni.mcap_log import LogReader
from worldmodel.bench_latency import preset_model
from worldmodel.checkpoint import save_checkpoint
from worldmodel.export.onnx_export import export_onnx

pytestmark = pytest.mark.timeout(300)

ONIWM = [sys.executable, "-m", "worldmodel.cli"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """An untrained tiny model with the hallway robot's sensors, laid out as a shipped model (checkpoint + export)."""
    root = tmp_path_factory.mktemp("model")
    shutil.copytree(save_checkpoint(root / "run", preset_model("tiny"), 0), root / "checkpoint")
    export_onnx(root / "checkpoint", root / "export", horizon=10, max_samples=256, beam_stride=4)
    return root


def test_oniwm_run_drives_over_oni_and_writes_report_log_and_plot(model_dir, tmp_path):
    out = tmp_path / "run"
    result = subprocess.run([*ONIWM, "run", "--config", "configs/hallway.yaml", "--model", str(model_dir), "--duration", "4",
                             "--out", str(out), "--no-status", "--json", str(tmp_path / "r.json")],
                            capture_output=True, text=True, timeout=240)
    assert result.returncode in (0, 1), result.stderr[-3000:]  # 1: an untrained model does not reach the goal in 4 s
    report = json.loads((tmp_path / "r.json").read_text())
    assert report == json.loads((out / "report.json").read_text())
    assert report["end_reason"] in ("duration", "goal") and report["time_s"] >= 4.0
    assert isinstance(report["reached_goal"], bool) and isinstance(report["collisions"], int)
    assert report["runtime_error"] is None and report["backend"] == "onnxruntime"
    assert 0 < report["tick_latency_us"]["p50"] <= report["tick_latency_us"]["p99"]
    assert isinstance(report["deadline_misses"], int)
    assert report["e2e_latency_ms"]["count"] > 50 and 0 < report["e2e_latency_ms"]["p50"] <= report["e2e_latency_ms"]["p99"]
    assert report["horizons_s"] == [0.5, 1.0, 2.0] and len(report["prediction_rmse_m"]) == 3
    assert report["prediction_rmse_m"][0] is not None and report["predictions_scored"][0] > 0
    assert "reached goal" in result.stdout and "sensor->command" in result.stdout
    topics = {r.channel.topic for r in LogReader(out / "run.mcap").records()}
    assert {"sensor.lidar", "sensor.odom", "sim.ground_truth", "nav.route", "prediction.pose", "prediction.lidar",
            "model.latent_state", "diag.runtime"} <= topics
    assert (out / "run.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_oniwm_node_refuses_a_model_for_another_robot_before_waiting_for_one(tmp_path):
    import torch

    from worldmodel.model import ModalitySpec, WorldModel, model_config

    mods = (ModalitySpec("lidar", "ranges", (180,)), ModalitySpec("odom", "odom", (5,)))
    cfg = model_config("tiny", mods, 2, True, no_return_m=12.0)
    stats = {"lidar": {"mean": 3.0, "std": 2.0}, "odom": {"mean": 0.0, "std": 1.0}, "odom_rate": {"mean": 0.0, "std": 1.0},
             "action": {"mean": 0.0, "std": 1.0}, "pose_rate": {"mean": 0.0, "std": 1.0}}
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "other", WorldModel(cfg, stats), 0)
    result = subprocess.run([*ONIWM, "node", "--config", "configs/hallway.yaml", "--model", str(tmp_path / "other"),
                             "--backend", "torch", "--bridge-info", str(tmp_path / "none.json"), "--wait", "0"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "the model takes no depth, the robot gives depth (48, 64)" in result.stderr
    assert "the model takes lidar (180,), the robot gives lidar (360,)" in result.stderr
