"""The world model: config validation, the verbs' shapes and units, and that the training path (observe_sequence)
computes exactly what the runtime's belief update (observe) computes."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys

import pytest
import torch

from worldmodel.model import (
    POSE,
    PRESETS,
    ConfigError,
    ModalitySpec,
    ModelConfig,
    State,
    WorldModel,
    compute_normalization,
    derive,
    integrate_deltas,
    model_config,
    model_config_from_dict,
    modalities_from_batch,
    parameter_count,
    pose_deltas,
    relative_poses,
    relative_trajectory,
    required_keys,
)
from worldmodel.model.geometry import compose, unwrap_yaw, wrap_angle

B, T, N, K = 3, 12, 36, 4
DEPTH = (16, 16)


def hallway_batch(b: int = B, t: int = T, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random batch in the contract, with sparse lidar/depth masks like the real rates."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.rand(*s, generator=g)  # noqa: E731
    batch = {
        "lidar": 0.2 + 5 * r(b, t, N), "lidar_mask": (r(b, t) < 0.3).float(), "lidar_age": 0.05 * r(b, t),
        "depth": 3 * r(b, t, *DEPTH) * (r(b, t, *DEPTH) > 0.1), "depth_mask": (r(b, t) < 0.4).float(), "depth_age": 0.05 * r(b, t),
        "imu": torch.randn(b, t, K, 6, generator=g), "imu_mask": (r(b, t, K) < 0.9).float(), "imu_age": torch.zeros(b, t),
        "odom": 0.1 * torch.randn(b, t, 5, generator=g), "odom_mask": torch.ones(b, t), "odom_age": 0.01 * r(b, t),
        "action": torch.stack([0.4 * r(b, t), 2 * r(b, t) - 1], -1), "dt": 0.02 + 0.002 * r(b, t),
        "pose": torch.cumsum(0.01 * torch.randn(b, t, 3, generator=g), 1), "pose_mask": torch.ones(b, t), "valid": torch.ones(b, t),
    }
    batch["lidar_mask"][:, 0] = 1.0  # at least one scan per sequence
    return batch


def make_model(preset: str = "tiny", batch: dict | None = None, **overrides) -> WorldModel:
    batch = batch or hallway_batch()
    cfg = model_config(preset, modalities_from_batch(batch), 2, True, image_decode_factor=2, **overrides)
    torch.manual_seed(0)
    return WorldModel(cfg, compute_normalization([batch], cfg)).eval()


def tick(batch: dict, t: int) -> dict[str, torch.Tensor]:
    return {k: v[:, t] for k, v in batch.items() if k.split("_")[0] in ("lidar", "depth", "imu", "odom", "obs")}


# ----------------------------------------------------------------------------------------------------------------
# Config.


def test_modalities_come_from_the_batch_shapes():
    specs = modalities_from_batch(hallway_batch())
    assert [(s.name, s.kind, s.shape) for s in specs] == [
        ("lidar", "ranges", (N,)), ("depth", "image", DEPTH), ("imu", "samples", (K, 6)), ("odom", "odom", (5,))]


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_builds_a_valid_config(preset):
    cfg = model_config(preset, (ModalitySpec("lidar", "ranges", (360,)), ModalitySpec("depth", "image", (48, 64))), 2, True)
    assert derive(cfg).feat == cfg.deter + cfg.stoch


@pytest.mark.parametrize("bad, message", [
    (dict(deter=0), "deter"),
    (dict(image_patches=(5, 2)), "image_patches"),
    (dict(ranges_patches=(2, 2), ranges_channels=(4,)), "ranges_patches"),
    (dict(log_std_min=1.0, log_std_max=0.0), "log_std_min"),
    (dict(min_std=0.0), "min_std"),
    (dict(image_decode_factor=3), "image_decode_factor"),
    (dict(widht=3), "unknown fields"),
])
def test_bad_config_values_are_rejected_by_name(bad, message):
    with pytest.raises(ConfigError, match=message):
        model_config("tiny", (ModalitySpec("lidar", "ranges", (360,)), ModalitySpec("depth", "image", (48, 64))), 2, True, **bad)


def test_bad_modalities_and_presets_are_rejected():
    with pytest.raises(ConfigError, match="kind"):
        ModalitySpec("lidar", "sonar", (3,))
    with pytest.raises(ConfigError, match="odom"):
        ModalitySpec("odom", "odom", (4,))
    with pytest.raises(ConfigError, match="duplicate"):
        ModelConfig((ModalitySpec("a", "vector", (3,)), ModalitySpec("a", "vector", (3,))), 2)
    with pytest.raises(ConfigError, match="preset"):
        model_config_from_dict({"preset": "huge"}, (ModalitySpec("a", "vector", (3,)),), 2, False)
    with pytest.raises(ConfigError, match="come from the data"):
        model_config_from_dict({"action_dim": 3}, (ModalitySpec("a", "vector", (3,)),), 2, False)


def test_config_is_frozen_and_round_trips_through_a_dict():
    cfg = model_config("default", modalities_from_batch(hallway_batch()), 2, True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.deter = 3  # type: ignore[misc]
    again = ModelConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.differences(cfg) == []
    assert model_config("default", cfg.modalities, 2, True, deter=64).differences(cfg) == ["deter: 64 != 128"]
    assert PRESETS["default"] == {}  # building configs never mutates a preset


def test_scan_not_a_multiple_of_the_patches_is_wrapped_around():
    cfg = model_config("tiny", (ModalitySpec("lidar", "ranges", (541,)),), 2, False)
    assert derive(cfg).ranges_pad["lidar"] == 552 - 541  # 552: the next multiple of 4 * 2 * 3
    batch = {"lidar": torch.rand(2, 541) + 1.0}
    model = WorldModel(cfg, {"lidar": {"mean": 1.5, "std": 0.3}, "action": {"mean": [0, 0], "std": [1, 1]}})
    assert model.encode(batch).shape == (2, cfg.embed)


# ----------------------------------------------------------------------------------------------------------------
# Verbs.


def test_observe_imagine_predict_shapes_and_units():
    batch = hallway_batch()
    model = make_model()
    cfg = model.config
    state = model.observe(model.initial_state(B), tick(batch, 0), torch.zeros(B, 2), batch["dt"][:, 0])
    assert state.deter.shape == (B, cfg.deter) and state.stoch.shape == (B, cfg.stoch)
    traj = model.imagine(state, torch.zeros(B, 7, 2), 0.1)
    assert traj.deter.shape == (B, 7, cfg.deter) and traj.stoch.shape == (B, 7, cfg.stoch)
    pred = model.predict(traj, 0.1)
    assert set(pred) == {"lidar", "depth", "imu", "odom", POSE}
    assert pred["lidar"].mean.shape == (B, 7, N)
    assert pred["depth"].mean.shape == (B, 7, DEPTH[0] // 2, DEPTH[1] // 2)  # reduced resolution
    assert pred["imu"].mean.shape == (B, 7, K, 6)
    assert pred["odom"].mean.shape == (B, 7, 5) and pred[POSE].mean.shape == (B, 7, 3)
    # Physical units: lidar around the data's scale, log-std shifted by log(std of the data).
    assert 0.0 < float(pred["lidar"].mean.detach().mean()) < 10.0
    assert torch.allclose(pred["lidar"].log_std - model.decode(traj, ("lidar",))["lidar"].log_std,
                          torch.log(model.norm.std("lidar")).expand(B, 7, N))
    # The pose over a step is a rate times dt: half the step, half the motion and log-std lower by log 2.
    half = model.predict(traj, 0.05, (POSE,))[POSE]
    assert torch.allclose(half.mean * 2, pred[POSE].mean, atol=1e-6)
    assert torch.allclose(half.log_std + math.log(2.0), pred[POSE].log_std, atol=1e-5)
    mean, var = relative_trajectory(pred[POSE])
    assert mean.shape == var.shape == (B, 7, 3) and bool((var[:, 1:] >= var[:, :-1]).all())


def test_float_and_tensor_dt_agree_and_planner_batch_works():
    model = make_model()
    state = State(torch.randn(256, model.config.deter), torch.randn(256, model.config.stoch))
    actions = torch.rand(256, 10, 2)
    a = model.imagine(state, actions, 0.1)
    b = model.imagine(state, actions, torch.full((256, 10), 0.1))
    assert torch.equal(a.deter, b.deter) and a.deter.shape == (256, 10, model.config.deter)
    steps, s = [], state
    for h in range(10):
        s = model.imagine_step(s, actions[:, h], 0.1)
        steps.append(s.deter)
    assert torch.allclose(torch.stack(steps, 1), a.deter, atol=1e-6)


def test_observe_sequence_is_the_belief_update_repeated():
    """The training path (all ticks encoded at once, sparse modalities gathered) equals observe() tick by tick."""
    batch = hallway_batch()
    model = make_model()
    with torch.no_grad():
        seq = model.observe_sequence(batch, sample=False)
        state, prev = model.initial_state(B), torch.zeros(B, 2)
        for t in range(T):
            out = model.observe_step(state, tick(batch, t), prev, batch["dt"][:, t])
            state, prev = out.state, batch["action"][:, t]
            assert torch.allclose(seq.states.deter[:, t], state.deter, atol=1e-5)
            assert torch.allclose(seq.states.stoch[:, t], state.stoch, atol=1e-5)
            assert torch.allclose(seq.prior.mean[:, t], out.prior.mean, atol=1e-5)
            assert torch.allclose(model.observe(*_prev_args(model, seq, batch, t)).stoch, state.stoch, atol=1e-5)


def _prev_args(model, seq, batch, t):
    prev_state = model.initial_state(B) if t == 0 else State(seq.states.deter[:, t - 1], seq.states.stoch[:, t - 1])
    prev_action = torch.zeros(B, 2) if t == 0 else batch["action"][:, t - 1]
    return prev_state, tick(batch, t), prev_action, batch["dt"][:, t]


def test_a_masked_modality_is_ignored_and_the_batch_rows_are_independent():
    batch = hallway_batch()
    model = make_model()
    obs = tick(batch, 1)
    obs["lidar_mask"] = torch.zeros(B)
    state = State(torch.randn(B, model.config.deter), torch.randn(B, model.config.stoch))
    a = model.observe(state, obs, batch["action"][:, 0], batch["dt"][:, 1])
    obs2 = dict(obs, lidar=obs["lidar"] * 3.0 + 1.0)
    b = model.observe(state, obs2, batch["action"][:, 0], batch["dt"][:, 1])
    assert torch.allclose(a.stoch, b.stoch, atol=1e-6)  # the value behind a zero mask does not matter
    obs3 = dict(obs, lidar_mask=torch.ones(B))
    c = model.observe(state, obs3, batch["action"][:, 0], batch["dt"][:, 1])
    assert not torch.allclose(a.stoch, c.stoch)  # a present scan does
    one = model.observe(State(state.deter[1:2], state.stoch[1:2]), {k: v[1:2] for k, v in obs.items()},
                        batch["action"][1:2, 0], batch["dt"][1:2, 1])
    assert torch.allclose(one.stoch, a.stoch[1:2], atol=1e-6)


def test_no_return_beams_are_flagged_and_left_out_of_the_likelihood():
    batch = hallway_batch()
    model = make_model(no_return_m=5.0)
    far = batch["lidar"] >= 5.0 - 1e-3
    assert bool(far.any())
    targets = model.targets(batch)
    assert float(targets["lidar"].mask[far].sum()) == 0.0
    assert torch.equal(targets["lidar"].mask[~far], batch["lidar_mask"].unsqueeze(-1).expand_as(far)[~far])
    # What a "no return" beam reports (the sensor's maximum, or anything above) does not reach the belief.
    obs = tick(batch, 0)
    other = dict(obs, lidar=torch.where(obs["lidar"] >= 5.0, torch.full_like(obs["lidar"], 12.0), obs["lidar"]))
    state = model.initial_state(B)
    a = model.observe(state, obs, torch.zeros(B, 2), 0.02)
    b = model.observe(state, other, torch.zeros(B, 2), 0.02)
    assert torch.allclose(a.stoch, b.stoch, atol=1e-6)


def test_gym_vector_observations_without_masks():
    g = torch.Generator().manual_seed(1)
    batch = {"obs": torch.randn(2, 8, 11, generator=g), "action": torch.rand(2, 8, 3, generator=g), "dt": torch.full((2, 8), 0.008),
             "valid": torch.ones(2, 8)}
    cfg = model_config("tiny", modalities_from_batch(batch), 3, False, dt_ref_s=0.008)
    model = WorldModel(cfg, compute_normalization([batch], cfg))
    assert set(required_keys(cfg)) == {"obs", "action"}
    seq = model.observe_sequence(batch, sample=False)
    pred = model.predict(model.imagine(State(seq.states.deter[:, -1], seq.states.stoch[:, -1]), torch.zeros(2, 5, 3), 0.008), 0.008)
    assert set(pred) == {"obs"} and pred["obs"].mean.shape == (2, 5, 11)
    assert set(model.targets(batch)) == {"obs"}


def test_targets_cover_every_head_with_masks():
    batch = hallway_batch()
    model = make_model()
    targets = model.targets(batch)
    assert set(targets) == set(model.decode(model.initial_state(B))) == {"lidar", "depth", "imu", "odom", POSE}
    assert torch.equal(targets["lidar"].mask[..., 0], batch["lidar_mask"])
    assert float(targets[POSE].mask[:, 0].sum()) == 0.0  # no motion into the first tick
    # Depth blocks with no valid pixel are masked out.
    batch["depth"][:, :, :2, :2] = 0.0
    assert float(model.targets(batch)["depth"].mask[:, :, 0, 0].sum()) == 0.0


def test_default_model_is_small_enough_to_ship():
    cfg = model_config("default", (ModalitySpec("lidar", "ranges", (360,)), ModalitySpec("depth", "image", (48, 64)),
                                   ModalitySpec("imu", "samples", (4, 6)), ModalitySpec("odom", "odom", (5,))), 2, True)
    stats = {k: {"mean": 0.0, "std": 1.0} for k in required_keys(cfg)}
    n = parameter_count(WorldModel(cfg, stats))
    assert n * 4 < 5 * 2**20  # float32 weights well under the 20 MB budget


def test_normalizer_rejects_missing_and_bad_statistics():
    cfg = model_config("tiny", (ModalitySpec("obs", "vector", (3,)),), 1, False)
    with pytest.raises(ConfigError, match="missing"):
        WorldModel(cfg, {"obs": {"mean": 0.0, "std": 1.0}})
    with pytest.raises(ConfigError, match="std"):
        WorldModel(cfg, {"obs": {"mean": 0.0, "std": [1.0, 0.0, 1.0]}, "action": {"mean": 0.0, "std": 1.0}})
    with pytest.raises(ConfigError, match="broadcast"):
        WorldModel(cfg, {"obs": {"mean": [0.0, 0.0], "std": 1.0}, "action": {"mean": 0.0, "std": 1.0}})


def test_model_package_imports_without_zmq_or_oni():
    code = "import sys, worldmodel.model, worldmodel.checkpoint; assert 'zmq' not in sys.modules and 'oni' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ----------------------------------------------------------------------------------------------------------------
# Geometry.


def test_pose_deltas_integrate_back_to_the_relative_trajectory():
    g = torch.Generator().manual_seed(2)
    steps = torch.stack([0.1 * torch.rand(20, generator=g), 0.01 * torch.randn(20, generator=g), 0.3 * torch.randn(20, generator=g)], -1)
    poses = [torch.tensor([1.0, -2.0, 3.0])]
    for d in steps:
        poses.append(compose(poses[-1], d))
    pose = torch.stack(poses)
    pose_wrapped = torch.cat([pose[:, :2], wrap_angle(pose[:, 2:])], -1)
    deltas = pose_deltas(pose_wrapped)[1:]
    assert torch.allclose(deltas, steps, atol=1e-5)
    mean, var = integrate_deltas(deltas, torch.full_like(deltas, 1e-4))
    assert torch.allclose(mean, relative_poses(pose[0], unwrap_yaw(pose_wrapped)[1:]), atol=1e-4)
    assert bool((var[1:] >= var[:-1] - 1e-9).all())
