"""``oniwm eval``: the metric math on hand-made numbers, the evaluator with a perfect stand-in model (every metric
and target at its known value), the real world model on gym-style and simulated robot data, and the command line
end to end on MCAP logs (report fields, plots, the message-loss copy, reuse of fitted baselines)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from oni.mcap_log import LogWriter
from oni.message import Header, Message
from train.baselines import BaselineConfig, EnsembleConfig, Forecast, pool_depth, relative_pose
from train.evaluate import (
    EvalConfig,
    Targets,
    WindowBatch,
    WorldModelForecaster,
    _Scores,
    coverage,
    cosine_similarity,
    evaluate,
    normalized_mse,
    rmse,
    table,
)
from train.synthetic import SyntheticSpec, synthetic_episode
from worldmodel.observation import ObservationSpec
from tests.train.test_baselines import GYM_A, GYM_B, episode_from_arrays, gym_episode

FAST = BaselineConfig(ensemble=EnsembleConfig(hidden=32, layers=2, epochs=3, particles=5))


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models on a shared machine: one thread avoids stalls waiting for a busy second core."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------------------------------
# Metric math.


def test_rmse_and_normalized_mse_by_hand():
    assert rmse(8.0, 2) == 2.0 and math.isnan(rmse(0.0, 0))
    # Channel 0: MSE 4 over var 2 -> 2; channel 1: MSE 1 over var 4 -> 0.25; channel 2 constant, channel 3 no data.
    sq = np.array([8.0, 3.0, 5.0, 0.0])
    n = np.array([2.0, 3.0, 1.0, 0.0])
    var = np.array([2.0, 4.0, 0.0, 1.0])
    assert normalized_mse(sq, n, var) == pytest.approx((2.0 + 0.25) / 2)
    assert math.isnan(normalized_mse(sq, np.zeros(4), var))


def test_coverage_counts_errors_within_sigma():
    from train.evaluate import _Z_EDGES

    z = np.array([0.2, 0.99, 1.01, 1.5, 2.5, 7.0])
    counts = np.histogram(z, bins=_Z_EDGES)[0]
    assert coverage(counts, 1.0) == pytest.approx(2 / 6)
    assert coverage(counts, 2.0) == pytest.approx(4 / 6)
    assert math.isnan(coverage(np.zeros_like(counts), 1.0))


def test_cosine_similarity():
    a = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    b = np.array([[2.0, 0.0], [-1.0, -1.0], [1.0, 0.0]])
    assert np.allclose(cosine_similarity(a, b), [1.0, -1.0, 0.0])


def test_scores_count_only_masked_targets():
    # B = 2 windows, H = 2 steps, 2 beams; window 1 has no new scan at step 1.
    truth = np.array([[[1.0, 2.0], [1.0, 2.0]], [[3.0, 3.0], [9.0, 9.0]]])
    pred = truth + np.array([[[0.5, -0.5], [0.0, 2.0]], [[0.0, 0.0], [5.0, 5.0]]])
    mask = np.array([[True, True], [True, False]])
    pose_t = np.zeros((2, 2, 3))
    pose_p = np.array([[[3.0, 4.0, 0.1], [0.0, 0.0, 2 * math.pi - 0.2]], [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]])
    targets = Targets(truth, mask, None, None, pose_t, np.ones((2, 2), bool), None, None)
    s = _Scores(2, {"lidar": 2})
    s.add(Forecast({"lidar": pred, "pose": pose_p}, {"lidar": np.ones_like(pred)}), targets, np.ones((2, 2)), np.ones((2, 2), bool))
    assert rmse(s.sq["lidar"][0], s.n["lidar"][0]) == pytest.approx(math.sqrt(0.5 / 4))
    assert rmse(s.sq["lidar"][1], s.n["lidar"][1]) == pytest.approx(math.sqrt(4 / 2))   # window 1 not counted
    assert s.pos.tolist() == pytest.approx([5.0, 1.0]) and s.head.tolist() == pytest.approx([0.1, 0.2])
    assert coverage(s.z["lidar"], 1.0) == pytest.approx(5 / 6)     # |err| < 1 sigma everywhere except the 2
    assert s.cos.tolist() == [2.0, 2.0]


# ------------------------------------------------------------------------------------------------------------------
# The evaluator with a perfect stand-in model.


def _synthetic_robot(n: int, seed: int, duration_s: float = 8.0) -> list:
    # 96 beams: the synthetic policy looks at beams 30-90 on each side.
    spec = SyntheticSpec(episodes=n, duration_s=duration_s, beams=96, depth_shape=(16, 16), seed=seed)
    out = []
    for i in range(n):
        data = synthetic_episode(spec, i)
        obs_spec = ObservationSpec(lidar_beams=96, depth_height=16, depth_width=16, imu_samples=data["imu"].shape[1], odom=True)
        out.append(episode_from_arrays(data, obs_spec, seed + i))
    return out


@pytest.fixture(scope="module")
def robot_data():
    return {"train": _synthetic_robot(3, 0), "val": _synthetic_robot(1, 10), "eval": _synthetic_robot(2, 20)}


class Oracle:
    """A stand-in that implements the evaluator's model protocol and returns the truth (read from the ticks after
    the start, which a real model never uses for its predictions) with unit uncertainty."""

    keys = ("lidar", "depth", "pose")
    depth_factor = 2

    def forecast(self, batch: WindowBatch) -> tuple[Forecast, np.ndarray]:
        horizon = batch.actions.shape[1]
        ends = batch.start + batch.step * np.arange(1, horizon + 1)
        ticks = batch.ticks
        mean = {"lidar": ticks["lidar"][:, ends], "depth": pool_depth(ticks["depth"][:, ends], 2)[0],
                "pose": relative_pose(ticks["pose"][:, batch.start, None], ticks["pose"][:, ends])}
        std = {k: np.ones_like(v) for k, v in mean.items()}
        return Forecast(mean, std), np.ones(batch.actions.shape[:2])


def _drop_scans(ep: Any) -> Any:
    """A copy of ``ep`` that lost four of every five LiDAR scans: mask 0 there, the previous scan held on."""
    from train.dataset import EpisodeArrays

    data = {k: v.copy() for k, v in ep.data.items()}
    fresh = np.flatnonzero(data["lidar_mask"] > 0)
    data["lidar_mask"][np.setdiff1d(fresh, fresh[2::5])] = 0.0
    kept = data["lidar_mask"] > 0
    data["lidar"] = data["lidar"][np.maximum.accumulate(np.where(kept, np.arange(len(kept)), 0))]
    return EpisodeArrays(ep.ticks_ns, data, {}, dict(ep.meta))


def test_perfect_model_scores_zero_and_the_report_is_complete(robot_data, tmp_path):
    cfg = EvalConfig(baselines=FAST)
    lossy = [_drop_scans(ep) for ep in robot_data["eval"]]
    doc = evaluate(robot_data["eval"], iter(robot_data["train"]), robot_data["val"], Oracle(), cfg,
                   lossy_episodes=lossy, plots_dir=tmp_path / "plots")
    assert doc["kind"] == "robot" and doc["horizons_s"] == [0.5, 1.0, 2.0] and doc["steps"] == 20
    assert doc["windows"]["count"] == 2 * 10 and doc["windows"]["episodes"] == 2
    assert set(doc["models"]) == {"worldmodel", "last_value", "linear", "mlp_ensemble"}
    for m in doc["models"].values():
        for key in ("lidar_rmse_m", "depth_rmse_m", "position_error_m", "heading_error_rad"):
            assert len(m[key]) == 3
        assert len(m["nmse_per_step"]["lidar"]) == 20 and len(m["nmse_per_step"]["depth"]) == 20
        assert {"latent_consistency", "coverage_1sigma", "dropout_rmse_increase"} <= set(m)
        assert len(m["dropout"]["relative_increase"]["lidar_rmse_m"]) == 3
    wm = doc["models"]["worldmodel"]
    assert wm["lidar_rmse_m"] == [0.0] * 3 and wm["depth_rmse_m"] == [0.0] * 3 and wm["lidar_rmse_returns_m"] == [0.0] * 3
    assert max(wm["position_error_m"]) < 1e-6 and wm["nmse_per_step"]["lidar"][0] == 0.0
    assert wm["latent_consistency"] == pytest.approx(1.0) and wm["coverage_1sigma"] == 1.0
    assert doc["models"]["last_value"]["coverage_1sigma"] is None and doc["models"]["last_value"]["latent_consistency"] is None
    ens = doc["models"]["mlp_ensemble"]
    assert 0.0 < ens["coverage_1sigma"] <= 1.0 and set(ens["coverage"]) == {"lidar", "depth", "position", "heading"}
    last = doc["models"]["last_value"]
    assert all(v > 0 for v in last["lidar_rmse_m"]) and last["nmse_per_step"]["lidar"][-1] > 0
    # Most start scans lost: holding a scan 0.3 s older is worse at 0.5 s; the oracle's 0 error has no
    # relative increase.
    assert last["dropout"]["lidar_rmse_m"][0] > last["lidar_rmse_m"][0] and last["dropout"]["relative_increase"]["lidar_rmse_m"][0] > 0
    assert wm["dropout_rmse_increase"] is None
    t = doc["targets"]
    assert t["beats_every_baseline_lidar"]["pass"] and t["beats_every_baseline_position"]["pass"]
    assert t["margin_1s_lidar"]["pass"] and t["margin_1s_lidar"]["value"] == 1.0
    assert t["depth_rmse_1s_m"]["pass"] and t["latent_consistency"]["pass"] and t["dropout_rmse_increase"]["pass"] is None
    assert t["coverage_1sigma"]["pass"] is False           # unit sigma on exact predictions: far too wide
    assert {"lidar_rmse_m", "nmse_per_step", "latent_consistency", "coverage"} <= set(doc["method"])
    json.dumps(doc, allow_nan=False)                       # strict JSON: no NaN anywhere
    for name in ("error_vs_horizon", "scan_1s", "calibration"):
        assert Path(doc["plots"][name]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "worldmodel" in table(doc) and "PASS" in table(doc)


def test_lossy_episodes_must_match_tick_for_tick(robot_data):
    with pytest.raises(ValueError, match="tick for tick"):
        evaluate(robot_data["eval"], iter(robot_data["train"]), [], None, EvalConfig(baselines=FAST),
                 lossy_episodes=robot_data["eval"][:1])


# ------------------------------------------------------------------------------------------------------------------
# The real world model.


def _tiny_model(batch: dict[str, Any], pose_head: bool, **overrides: Any) -> Any:
    from worldmodel.model import WorldModel, compute_normalization, model_config, modalities_from_batch

    cfg = model_config("tiny", modalities_from_batch(batch), batch["action"].shape[-1], pose_head, **overrides)
    torch.manual_seed(0)
    return WorldModel(cfg, compute_normalization([batch], cfg))


def test_real_world_model_on_gym_vectors(tmp_path):
    train = [gym_episode(150, i, GYM_A, GYM_B) for i in range(3)]
    evals = [gym_episode(150, 20 + i, GYM_A, GYM_B) for i in range(2)]
    batch = {k: torch.from_numpy(np.stack([ep[k] for ep in train])) for k in ("obs", "obs_mask", "obs_age", "action", "dt", "valid")}
    model = _tiny_model(batch, pose_head=False)
    doc = evaluate(evals, iter(train), [], WorldModelForecaster(model), EvalConfig(baselines=FAST), plots_dir=tmp_path)
    assert doc["kind"] == "gym" and doc["steps_k"] == [1, 5, 10, 25, 50] and doc["horizons_s"][0] == pytest.approx(0.05)
    models = doc["models"]
    assert set(models["worldmodel"]["nmse_at_k"]) == {"1", "5", "10", "25", "50"}
    # The data is a linear system: least squares finds it (up to the rollout clip, which the eval episodes' initial
    # states beyond the three training episodes' range touch now and then).
    for k in ("5", "10", "25", "50"):
        assert models["linear"]["nmse_at_k"][k] < 0.01 * models["last_value"]["nmse_at_k"][k]
    assert 0.0 < models["worldmodel"]["latent_consistency"] <= 1.0
    assert len(models["worldmodel"]["nmse_per_step"]["obs"]) == 50
    assert doc["targets"]["nmse_below_mlp_ensemble_k_ge_10"]["pass"] in (True, False)
    assert Path(doc["plots"]["error_vs_horizon"]).exists() and Path(doc["plots"]["calibration"]).exists()


# ------------------------------------------------------------------------------------------------------------------
# The command line on simulated MCAP logs.


def _robot_yaml() -> str:
    from robots import robot_path

    doc = yaml.safe_load(robot_path("turtlebot4").read_text())
    for sensor in doc["robot"]["sensors"]:
        if sensor["kind"] == "lidar":
            sensor["params"]["beams"] = 24
        if sensor["kind"] == "depth":
            sensor["params"].update(width=16, height=16)
    return yaml.safe_dump(doc)


def _simulate(path: Path, seed: int, ticks: int, robot_yaml: str) -> None:
    """One RobotSim episode of ``ticks`` control ticks under a smooth random command, as an ONI MCAP log."""
    from robots.description import robot_from_dict
    from sim.config import SimSettings
    from sim.hallway import HallwayParams, generate_hallway
    from sim.robot_sim import RobotSim

    robot = robot_from_dict(yaml.safe_load(robot_yaml)["robot"])
    sim = RobotSim(robot, generate_hallway(HallwayParams(seed=seed), robot.base.radius_m), SimSettings(), seed=seed)
    rng = np.random.default_rng(seed)
    phase, speed = rng.uniform(0, 2 * math.pi), rng.uniform(0.15, 0.4)
    meta = {"robot": {"name": robot.name, "description_yaml": robot_yaml},
            "episode": {"seed": str(seed), "world_seed": str(seed), "control_hz": "50.0", "policy": "sine"}}
    seqs: dict[str, int] = {}

    def put(writer: LogWriter, topic: str, stamp: int, data: dict[str, Any]) -> None:
        seqs[topic] = seqs.get(topic, -1) + 1
        writer.write(Message(topic, Header(topic, "1.0", seqs[topic], "sim", stamp, stamp, "f", "0" * 32), data), log_time_ns=stamp)

    readings = sim.reset()
    with LogWriter(path, meta) as writer:
        for tick in range(ticks):
            t = sim.sim_time_ns
            for r in readings:
                put(writer, r.topic, r.stamp_ns, r.data)
            gt = sim.ground_truth()
            put(writer, "sim.ground_truth", gt.stamp_ns, {"x_m": gt.x_m, "y_m": gt.y_m, "yaw_rad": gt.yaw_rad, "v_mps": gt.v_mps,
                                                           "omega_radps": gt.omega_radps, "in_collision": gt.in_collision,
                                                           "collisions": gt.collisions})
            command = (speed * (1 + 0.5 * math.sin(tick / 30 + phase)), 0.9 * math.sin(tick / 20 + phase))
            put(writer, "actuator.cmd", t, {"v_mps": command[0], "omega_radps": command[1]})
            sim.set_command(*command)
            readings = sim.advance(0.02)


def test_command_line_end_to_end_with_a_checkpoint(tmp_path, capsys):
    from train.dataset import DatasetConfig, SequenceDataset, build_dataset
    from worldmodel.checkpoint import save_checkpoint
    from worldmodel.cli import build_parser

    logs = tmp_path / "logs"
    logs.mkdir()
    robot_yaml = _robot_yaml()
    for seed in range(5):
        _simulate(logs / f"episode_{seed:05d}.mcap", seed, 225, robot_yaml)
    cache = tmp_path / "cache"
    build_dataset(logs, cache, DatasetConfig(eval_seeds=(3,), val_seeds=(4,)))
    item = SequenceDataset(cache, seq_len=64)[0]
    batch = {k: v[None] for k, v in item.items() if k not in ("episode", "start")}
    run = tmp_path / "run"
    save_checkpoint(run, _tiny_model(batch, pose_head=True), step=7)
    preset = tmp_path / "eval.yaml"
    preset.write_text(yaml.safe_dump({"eval": {"baselines": {"ensemble": {"hidden": 32, "layers": 2, "particles": 5}}}}))

    argv = ["eval", "--checkpoint", str(run), "--data", str(cache), "--json", str(tmp_path / "eval.json"),
            "--plots", str(tmp_path / "plots"), "--config", str(preset), "--epochs", "2"]
    args = build_parser(argv).parse_args(argv)
    assert args.func(args) == 0
    doc = json.loads((tmp_path / "eval.json").read_text())
    assert doc["checkpoint"]["step"] == 7 and doc["kind"] == "robot" and doc["env"] == "turtlebot4"
    assert doc["windows"]["seeds"] == [3] and doc["windows"]["count"] >= 3
    wm = doc["models"]["worldmodel"]
    assert all(v is not None and v > 0 for v in wm["lidar_rmse_m"] + wm["position_error_m"])
    assert wm["depth_rmse_m"][1] is not None and 0.0 < wm["coverage_1sigma"] < 1.0
    assert wm["dropout_rmse_increase"] is not None and wm["dropout"]["drop_prob"] == 0.05
    assert -1.0 <= wm["latent_consistency"] <= 1.0
    assert (tmp_path / "cache.drop05" / "dataset.json").exists() and (cache / "baselines.npz").exists()
    assert {p.name for p in (tmp_path / "plots").iterdir()} == {"error_vs_horizon.png", "scan_1s.png", "calibration.png"}
    out = capsys.readouterr().out
    assert "lidar RMSE m" in out and "mlp_ensemble" in out and "targets:" in out
    # Again, without the message-loss run: the fitted baselines are reused.
    argv = ["eval", "--checkpoint", str(run), "--data", str(cache), "--json", str(tmp_path / "again.json"), "--no-dropout",
            "--config", str(preset), "--epochs", "2", "--max-windows", "2"]
    args = build_parser(argv).parse_args(argv)
    assert args.func(args) == 0
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["baselines"]["mlp_ensemble"]["loaded"] and again["windows"]["count"] == 2
    assert again["models"]["worldmodel"]["dropout_rmse_increase"] is None
    bad = ["eval", "--checkpoint", str(tmp_path / "nothing"), "--data", str(cache), "--json", str(tmp_path / "x.json")]
    args = build_parser(bad).parse_args(bad)
    assert args.func(args) == 2


def test_command_line_on_gym_adapter_logs(tmp_path, capsys):
    from sim.gym_adapter import GymAdapter, GymAdapterConfig
    from train.dataset import DatasetConfig, build_dataset
    from worldmodel.cli import build_parser

    logs = tmp_path / "logs"
    logs.mkdir()
    for seed in range(5):
        adapter = GymAdapter(GymAdapterConfig("HalfCheetah-v5", max_episode_steps=70), seed=seed)
        rng = np.random.default_rng(seed)
        readings = adapter.reset(seed)
        while not adapter.done:
            readings += [adapter.set_action(rng.uniform(-1, 1, adapter.action_dim)), *adapter.advance(adapter.control_dt_s)]
        adapter.close()
        with LogWriter(logs / f"cheetah_{seed}.mcap", {"episode": {"seed": str(seed)}}) as writer:
            for seq, r in enumerate(readings):
                header = Header(r.topic, "1.0", seq, "sim.gym_adapter", r.stamp_ns, r.stamp_ns, r.frame_id, "0" * 32)
                writer.write(Message(r.topic, header, r.data), log_time_ns=r.stamp_ns)
    build_dataset(logs, tmp_path / "cache", DatasetConfig(eval_seeds=(4,), val_seeds=(3,)))
    argv = ["eval", "--data", str(tmp_path / "cache"), "--json", str(tmp_path / "gym.json"), "--epochs", "2"]
    args = build_parser(argv).parse_args(argv)
    assert args.func(args) == 0
    doc = json.loads((tmp_path / "gym.json").read_text())
    assert doc["kind"] == "gym" and doc["env"] == "HalfCheetah-v5" and doc["windows"]["count"] == 6
    assert set(doc["models"]) == {"last_value", "linear", "mlp_ensemble"}
    assert all(doc["models"][m]["nmse_at_k"]["50"] is not None for m in doc["models"])
    assert doc["models"]["last_value"]["dropout_rmse_increase"] is not None      # the lossy copy was built and used
    assert doc["targets"]["nmse_below_mlp_ensemble_k_ge_10"]["pass"] is None      # no world model: not judged
    assert "k=50" in capsys.readouterr().out
