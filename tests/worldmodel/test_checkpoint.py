"""Checkpoints: round trip, atomic replacement of ``latest``, pruning, and refusal of mismatches by name."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from worldmodel.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    code_version,
    latest_checkpoint,
    load_checkpoint,
    load_trainer_state,
    save_checkpoint,
)
from worldmodel.model import ModalitySpec, WorldModel, model_config

CFG = model_config("tiny", (ModalitySpec("lidar", "ranges", (48,)), ModalitySpec("odom", "odom", (5,))), 2, True)
STATS = {"lidar": {"mean": 2.0, "std": 1.5}, "odom": {"mean": [0.1] * 5, "std": [0.2] * 5},
         "odom_rate": {"mean": 0.0, "std": 0.5}, "action": {"mean": [0.2, 0.0], "std": [0.1, 0.5]},
         "pose_rate": {"mean": 0.0, "std": [0.2, 0.01, 0.5]}}


def make_model(seed: int = 0) -> WorldModel:
    torch.manual_seed(seed)
    return WorldModel(CFG, STATS)


def outputs(model: WorldModel) -> torch.Tensor:
    obs = {"lidar": torch.linspace(0.5, 4.0, 48).expand(2, 48), "odom": torch.ones(2, 5) * 0.1}
    state = model.observe(model.initial_state(2), obs, torch.ones(2, 2) * 0.1, 0.02)
    return model.predict(model.imagine(state, torch.ones(2, 3, 2) * 0.2, 0.1), 0.1)["lidar"].mean


def rehash(ckpt: Path, name: str) -> None:
    meta = json.loads((ckpt / "meta.json").read_text())
    meta["sha256"][name] = hashlib.sha256((ckpt / name).read_bytes()).hexdigest()
    (ckpt / "meta.json").write_text(json.dumps(meta))


def test_round_trip_gives_the_same_model(tmp_path):
    model = make_model()
    path = save_checkpoint(tmp_path, model, 7, trainer_tensors={"0.exp_avg": torch.ones(3)}, trainer_json={"step": 7})
    assert path == tmp_path / "checkpoints" / "step_00000007" and latest_checkpoint(tmp_path) == path
    loaded, info = load_checkpoint(tmp_path)
    assert info.step == 7 and info.config == CFG and info.code_version == code_version()
    assert torch.equal(outputs(loaded), outputs(model))
    tensors, extra = load_trainer_state(path)
    assert torch.equal(tensors["0.exp_avg"], torch.ones(3)) and extra == {"step": 7}
    meta = json.loads((path / "meta.json").read_text())
    assert meta["format"] == FORMAT_VERSION and set(meta["sha256"]) >= {"model.safetensors", "config.json", "normalization.json"}
    assert json.loads((path / "normalization.json").read_text())["lidar"] == {"mean": 2.0, "std": 1.5}


def test_latest_moves_forward_and_old_checkpoints_are_pruned(tmp_path):
    model = make_model()
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, model, step, keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["latest", "step_00000003", "step_00000004"]
    assert latest_checkpoint(tmp_path).name == "step_00000004"
    save_checkpoint(tmp_path, make_model(1), 4, keep=2)  # re-saving a step replaces it whole
    assert torch.equal(outputs(load_checkpoint(tmp_path)[0]), outputs(make_model(1)))


def test_a_leftover_temporary_directory_does_not_count(tmp_path):
    save_checkpoint(tmp_path, make_model(), 1)
    crashed = tmp_path / "checkpoints" / ".tmp-step_00000002-999"
    crashed.mkdir()
    (crashed / "model.safetensors").write_bytes(b"partial")
    assert latest_checkpoint(tmp_path).name == "step_00000001"
    assert load_checkpoint(tmp_path)[1].step == 1


def test_corrupt_weights_are_refused_naming_the_file(tmp_path):
    path = save_checkpoint(tmp_path, make_model(), 1)
    data = bytearray((path / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model.safetensors: sha256 mismatch"):
        load_checkpoint(path)


def test_other_format_is_refused(tmp_path):
    path = save_checkpoint(tmp_path, make_model(), 1)
    meta = json.loads((path / "meta.json").read_text())
    meta["format"] = FORMAT_VERSION + 1
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=f"format {FORMAT_VERSION + 1}"):
        load_checkpoint(path)


def test_expected_config_and_code_version_mismatches_are_named(tmp_path):
    path = save_checkpoint(tmp_path, make_model(), 1)
    other = model_config("tiny", CFG.modalities, 2, True, deter=16)
    with pytest.raises(CheckpointError, match="deter: 32 != 16"):
        load_checkpoint(path, expect_config=other)
    with pytest.raises(CheckpointError, match="expected 0.0.0-other"):
        load_checkpoint(path, expect_code_version="0.0.0-other")


def test_weights_that_do_not_fit_the_config_are_named(tmp_path):
    path = save_checkpoint(tmp_path, make_model(), 1)
    raw = json.loads((path / "config.json").read_text())
    raw["hidden"] = 40
    (path / "config.json").write_text(json.dumps(raw))
    rehash(path, "config.json")
    with pytest.raises(CheckpointError, match=r"tensor \S+ has shape"):
        load_checkpoint(path)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path)
    assert latest_checkpoint(tmp_path) is None
