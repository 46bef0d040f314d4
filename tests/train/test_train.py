"""Training: the objective, the loop (metrics, checkpoints, exact resume, non-finite stop) and DDP over torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from train.losses import LossConfig, drop_modalities, openloop_steps, world_model_loss
from train.synthetic import SyntheticCorridor, SyntheticSpec
from train.train import TrainConfig, _step_seed, lidar_no_return_m, train, train_config_from_dict
from worldmodel.checkpoint import latest_checkpoint, load_checkpoint
from worldmodel.model import WorldModel, compute_normalization, model_config, modalities_from_batch

ROOT = Path(__file__).resolve().parents[2]
SEQ = 48
LOSS = {"max_steps": 6, "burn_in": 5, "starts": 2, "strides": [3, 1]}
SMALL = dict(batch_size=3, seq_len=SEQ, log_every=1, checkpoint_every=2, norm_batches=2, warmup_steps=1, threads=1, loss=LOSS)


@pytest.fixture(scope="module")
def dataset() -> SyntheticCorridor:
    return SyntheticCorridor(SyntheticSpec(episodes=2, duration_s=3.0, depth_shape=(16, 16), beams=48), SEQ)


def batch_of(dataset, n: int = 3) -> dict[str, torch.Tensor]:
    return {k: torch.stack([dataset[i][k] for i in range(n)]) for k in dataset[0]}


def tiny_model(batch) -> WorldModel:
    cfg = model_config("tiny", modalities_from_batch(batch), 2, True)
    torch.manual_seed(0)
    return WorldModel(cfg, compute_normalization([batch], cfg))


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------------------------------------------
# The objective.


@pytest.mark.parametrize("stride", [1, 3])
def test_loss_is_finite_and_reaches_every_parameter(dataset, stride):
    batch = batch_of(dataset)
    model = tiny_model(batch)
    torch.manual_seed(1)
    loss, terms = world_model_loss(model, batch, LossConfig(**LOSS), stride)
    assert torch.isfinite(loss) and all(torch.isfinite(v) for v in terms.values())
    assert {"recon_lidar", "recon_depth", "recon_pose", "kl", "ol_lidar", "ol_pose", "trajectory", "consistency"} <= set(terms)
    loss.backward()
    # DDP runs without find_unused_parameters: every parameter must get a gradient at every step.
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


def test_modality_dropout_touches_input_masks_only(dataset):
    batch = batch_of(dataset)
    model = tiny_model(batch)
    torch.manual_seed(0)
    dropped = drop_modalities(batch, LossConfig(dropout_sequence=0.5, dropout_tick=0.5), model.config)
    assert float(dropped["lidar_mask"].sum()) < float(batch["lidar_mask"].sum())
    assert bool((dropped["imu_mask"] <= batch["imu_mask"]).all())
    assert torch.equal(dropped["lidar"], batch["lidar"]) and dropped["lidar_mask"] is not batch["lidar_mask"]


def test_openloop_steps_reach_the_horizon_within_the_sequence():
    cfg = LossConfig(horizon_s=2.0, max_steps=20, burn_in=15)
    assert openloop_steps(cfg, 5, 128, 0.02) == 20     # 2 s at 0.1 s steps
    assert openloop_steps(cfg, 1, 128, 0.02) == 20     # capped by max_steps
    assert openloop_steps(cfg, 5, 60, 0.02) == 8       # capped by what fits after the burn-in
    with pytest.raises(ValueError, match="seq_len"):
        openloop_steps(cfg, 5, 18, 0.02)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="unknown fields"):
        train_config_from_dict({"batch": 3})
    with pytest.raises(ValueError, match="train.loss.dropout_tick"):
        train_config_from_dict({"loss": {"dropout_tick": 1.5}})
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="linear")
    cfg = TrainConfig(steps=100, warmup_steps=10, lr=1e-3, lr_min_frac=0.1)
    assert cfg.lr_at(0) == pytest.approx(1e-4) and cfg.lr_at(10) == pytest.approx(1e-3) and cfg.lr_at(100) == pytest.approx(1e-4)


def test_no_return_range_comes_from_the_robot_description(tmp_path):
    assert lidar_no_return_m({"robot": "turtlebot4"}, ROOT / "configs") == 12.0
    assert lidar_no_return_m({"gym": {"env_id": "Hopper-v5"}}, ROOT / "configs") == 0.0


def test_each_rank_and_step_draws_its_own_seed():
    seeds = {_step_seed(0, r, s) for r in range(2) for s in range(50)}
    assert len(seeds) == 100 and _step_seed(0, 1, 3) == _step_seed(0, 1, 3)


# ----------------------------------------------------------------------------------------------------------------
# The loop.


def test_train_writes_metrics_and_checkpoints_and_resumes_exactly(dataset, tmp_path):
    cfg = TrainConfig(steps=4, schedule="constant", **SMALL)
    whole = train(cfg, {"preset": "tiny"}, dataset, tmp_path / "whole", progress=False)
    assert whole.status == "done" and whole.step == 4 and whole.checkpoint.name == "step_00000004"
    lines = metrics(tmp_path / "whole")
    steps = [m for m in lines if "event" not in m]
    assert [m["step"] for m in steps] == [1, 2, 3, 4]
    assert all(m["seq_per_s"] > 0 and "loss" in m and ("ol_lidar_rmse_m_s1" in m or "ol_lidar_rmse_m_s3" in m) for m in steps)
    assert lines[0]["event"] == "start" and lines[-1]["event"] == "end" and lines[-1]["replicas_in_sync"]
    model, info = load_checkpoint(tmp_path / "whole")
    assert info.step == 4 and model.config.dt_ref_s == pytest.approx(0.02, rel=1e-3)

    half = train(TrainConfig(steps=2, schedule="constant", **SMALL), {"preset": "tiny"}, dataset, tmp_path / "split", progress=False)
    assert half.step == 2
    with pytest.raises(ValueError, match="--resume"):
        train(cfg, {"preset": "tiny"}, dataset, tmp_path / "split", progress=False)
    with pytest.raises(ValueError, match="lr"):
        train(TrainConfig(steps=4, schedule="constant", **{**SMALL, "lr": 1e-3}), {"preset": "tiny"}, dataset,
              tmp_path / "split", resume=True, progress=False)
    resumed = train(cfg, {"preset": "tiny"}, dataset, tmp_path / "split", resume=True, progress=False)
    assert resumed.step == 4
    end_whole, end_split = metrics(tmp_path / "whole")[-1], metrics(tmp_path / "split")[-1]
    assert end_split["param_checksums"] == end_whole["param_checksums"]  # bit-identical to the uninterrupted run


class _VectorEnvData:
    """Windows of a gym-like log: a damped linear system driven by its actions (keys of the gym batch contract)."""

    def __init__(self, windows: int = 6, t: int = 40) -> None:
        g = torch.Generator().manual_seed(3)
        self.items = []
        for _ in range(windows):
            action = torch.rand(t, 3, generator=g) * 2 - 1
            obs = torch.zeros(t, 11)
            for i in range(1, t):
                obs[i] = 0.9 * obs[i - 1] + 0.1 * action[i - 1].repeat(4)[:11]
            self.items.append({"obs": obs, "obs_mask": torch.ones(t), "obs_age": torch.zeros(t), "action": action,
                               "reward": torch.zeros(t), "done": torch.zeros(t), "dt": torch.full((t,), 0.008), "valid": torch.ones(t)})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_train_on_gym_vector_observations(tmp_path):
    cfg = TrainConfig(steps=2, **{**SMALL, "seq_len": 40, "loss": {**LOSS, "strides": [1]}})
    result = train(cfg, {"preset": "tiny"}, _VectorEnvData(), tmp_path, progress=False)
    assert result.status == "done"
    model, _ = load_checkpoint(tmp_path)
    assert [m.name for m in model.config.modalities] == ["obs"] and not model.config.pose_head
    assert model.config.dt_ref_s == pytest.approx(0.008)


class _PoisonedAfter:
    """A dataset whose items turn non-finite after ``n`` reads (a corrupt shard met mid-run)."""

    def __init__(self, inner, n: int) -> None:
        self.inner, self.n, self.reads = inner, n, 0

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i):
        self.reads += 1
        item = dict(self.inner[i])
        if self.reads > self.n:
            item["lidar"] = torch.full_like(item["lidar"], float("nan"))
        return item


def test_non_finite_loss_stops_naming_the_step_and_terms_and_keeps_the_checkpoint(dataset, tmp_path):
    cfg = TrainConfig(steps=6, **SMALL)
    # 1 read for the config, 2 x 3 for the statistics, then 3 per step: poisoned from the 3rd step (step index 2).
    result = train(cfg, {"preset": "tiny"}, _PoisonedAfter(dataset, 1 + 6 + 6), tmp_path, progress=False)
    assert result.status == "nonfinite" and result.step == 2
    event = [m for m in metrics(tmp_path) if m.get("event") == "nonfinite"][0]
    assert event["step"] == 2 and "recon_lidar" in event["terms"][0] and "loss" in event["terms"][0]
    assert latest_checkpoint(tmp_path).name == "step_00000002"
    assert all(torch.isfinite(p).all() for p in load_checkpoint(tmp_path)[0].parameters())


# ----------------------------------------------------------------------------------------------------------------
# torchrun + DDP (gloo on CPU).


def test_torchrun_two_processes_keep_replicas_in_sync(tmp_path):
    preset = tmp_path / "preset.yaml"
    preset.write_text(yaml.safe_dump({"model": {"preset": "tiny"},
                                      "train": {**SMALL, "steps": 3, "checkpoint_every": 100, "seq_len": 64, "threads": 1}}))
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", "2",
           "-m", "train.train", "--config", str(preset), "--synthetic", "2", "--out", str(run), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = metrics(run)
    assert lines[0]["world_size"] == 2
    end = lines[-1]
    assert end["event"] == "end" and end["status"] == "done" and end["step"] == 3
    # The ranks drew different batches (seeded by rank), yet their parameters are identical: gradients were averaged.
    assert len(end["param_checksums"]) == 2 and end["replicas_in_sync"]
    steps = [m for m in lines if "event" not in m]
    assert [m["step"] for m in steps] == [1, 2, 3] and all(m["seq_per_s"] > 0 for m in steps)
    ckpt = latest_checkpoint(run)
    assert ckpt is not None and ckpt.name == "step_00000003"
    load_checkpoint(ckpt)
