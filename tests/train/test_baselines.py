"""The evaluation baselines: pose algebra, depth pooling, the compact state, transitions, and each baseline on data
where its answer is known (last value on a static scene, linear on constant velocity, the ensemble learning it),
the gym (vector) variants, and saving fitted baselines."""

from __future__ import annotations

import math

import numpy as np
import pytest

from train.baselines import (
    BaselineConfig,
    EnsembleConfig,
    FeatureConfig,
    Featurizer,
    build_transitions,
    chain_motion,
    load_baselines,
    make_baselines,
    pool_depth,
    relative_pose,
    save_baselines,
    stack_histories,
)
from train.dataset import EpisodeArrays
from worldmodel.observation import ObservationSpec

DT = 0.02
STEP = 5
BEAMS = 8
ANGLES = -math.pi + 2 * math.pi * np.arange(BEAMS) / BEAMS
ROBOT_SPEC = ObservationSpec(lidar_beams=BEAMS, depth_height=4, depth_width=4, imu_samples=1, odom=True)


def episode_from_arrays(data: dict[str, np.ndarray], spec: ObservationSpec, seed: int, hz: float = 50.0) -> EpisodeArrays:
    """An :class:`EpisodeArrays` of plain per-tick arrays (nothing stored per message)."""
    n = len(data["dt"])
    meta = {"spec": spec.to_dict(), "control_hz": hz, "seed": seed, "file": f"ep{seed}", "robot": "test"}
    return EpisodeArrays(np.arange(n, dtype=np.int64) * int(1e9 / hz), {k: v.astype(np.float32) for k, v in data.items()}, {}, meta)


def _ranges(x: np.ndarray, front_m: float = 20.0, back_m: float = 5.0, side_m: float = 30.0) -> np.ndarray:
    """(T,) robot x on the line y = 0, heading +x, in a box -> (T, BEAMS) ranges: straight-ahead and diagonal beams
    hit the front or back wall (linear in x), the two side beams the far side walls (constant)."""
    c = np.cos(ANGLES)
    out = np.empty((len(x), BEAMS))
    for i, ci in enumerate(c):
        if abs(ci) < 1e-9:
            out[:, i] = side_m
        elif ci > 0:
            out[:, i] = (front_m - x) / ci
        else:
            out[:, i] = (x + back_m) / -ci
    return out


def robot_episode(v: float, x0: float, ticks: int, seed: int) -> EpisodeArrays:
    """A robot driving straight along +x at constant ``v`` (m/s) toward a wall: every range and depth is linear in
    time. LiDAR and depth at 10 Hz (every 5th tick, held between), odometry every tick."""
    t = np.arange(ticks)
    x = x0 + v * DT * t
    fresh = (t % STEP == 0).astype(np.float32)
    held = t - t % STEP                      # the tick of the held scan/frame
    ranges = _ranges(x)[held]
    depth = np.broadcast_to((20.0 - x[held] - 0.1)[:, None, None], (ticks, 4, 4)).copy()
    data = {
        "lidar": ranges, "lidar_mask": fresh, "lidar_age": DT * (t % STEP),
        "depth": depth, "depth_mask": fresh, "depth_age": DT * (t % STEP),
        "imu": np.zeros((ticks, 1, 6)), "imu_mask": np.ones((ticks, 1)), "imu_age": np.zeros(ticks),
        "odom": np.stack([np.full(ticks, v), np.zeros(ticks), np.full(ticks, v * DT), np.zeros(ticks), np.zeros(ticks)], 1),
        "odom_mask": np.ones(ticks), "odom_age": np.zeros(ticks),
        "action": np.stack([np.full(ticks, v), np.zeros(ticks)], 1), "dt": np.full(ticks, DT), "valid": np.ones(ticks),
        "pose": np.stack([x, np.zeros(ticks), np.zeros(ticks)], 1), "pose_mask": np.ones(ticks),
    }
    return episode_from_arrays(data, ROBOT_SPEC, seed)


def gym_episode(ticks: int, seed: int, a: np.ndarray, b: np.ndarray) -> EpisodeArrays:
    """A linear system ``x' = a x + b u`` with random actions, as a gym adapter episode."""
    rng = np.random.default_rng(seed)
    d, m = b.shape
    u = rng.uniform(-1, 1, (ticks, m))
    x = np.zeros((ticks, d))
    x[0] = rng.normal(size=d)
    for i in range(ticks - 1):
        x[i + 1] = a @ x[i] + b @ u[i]
    data = {"obs": x, "obs_mask": np.ones(ticks), "obs_age": np.zeros(ticks), "action": u, "dt": np.full(ticks, 0.05),
            "valid": np.ones(ticks), "reward": np.zeros(ticks), "done": np.zeros(ticks), "truncated": np.zeros(ticks)}
    return episode_from_arrays(data, ObservationSpec(obs_dim=d, action_dim=m), seed, hz=20.0)


GYM_A = np.array([[0.95, 0.1, 0.0], [-0.1, 0.95, 0.0], [0.0, 0.0, 0.9]])
GYM_B = np.array([[0.1, 0.0], [0.0, 0.1], [0.05, -0.05]])


def _windows_truth(ep: EpisodeArrays, s: int, horizon: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ends = s + STEP * np.arange(1, horizon + 1)
    return ep["lidar"][ends], ep["depth"][ends][:, ::2, ::2], relative_pose(ep["pose"][s], ep["pose"][ends])


def _step_actions(ep: EpisodeArrays, s: int, horizon: int, step: int = STEP) -> np.ndarray:
    return np.stack([ep["action"][s + k * step: s + (k + 1) * step].mean(axis=0) for k in range(horizon)])[None]


# ------------------------------------------------------------------------------------------------------------------
# Geometry, pooling, features.


def test_chain_motion_and_relative_pose_agree_on_a_circle():
    # Constant forward speed and turn rate: the chained pose lies on the circle of radius v / omega.
    v, omega, dt, n = 0.4, 0.8, 0.1, 30
    delta = np.array([math.sin(omega * dt) * v / omega, (1 - math.cos(omega * dt)) * v / omega, omega * dt])
    poses = chain_motion(np.tile(delta, (n, 1))[None])[0]
    t = dt * np.arange(1, n + 1)
    r = v / omega
    assert np.allclose(poses[:, 0], r * np.sin(omega * t), atol=1e-9)
    assert np.allclose(poses[:, 1], r * (1 - np.cos(omega * t)), atol=1e-9)
    assert np.allclose(poses[:, 2], omega * t)
    # relative_pose inverts the chain: each pose in the frame of the previous one is the step delta.
    rel = relative_pose(poses[:-1], poses[1:])
    assert np.allclose(rel, delta, atol=1e-9)


def test_pool_depth_means_valid_pixels_per_block():
    depth = np.array([[1.0, 3.0, 0.0, 0.0],
                      [0.0, 2.0, 0.0, 0.0],
                      [4.0, 4.0, 5.0, 0.0],
                      [4.0, 4.0, 0.0, 7.0]], np.float32)
    pooled, count = pool_depth(depth[None], 2)
    assert pooled[0].tolist() == [[2.0, 0.0], [4.0, 6.0]]
    assert count[0].tolist() == [[3.0, 0.0], [4.0, 2.0]]
    with pytest.raises(ValueError, match="must divide"):
        pool_depth(np.zeros((3, 5)), 2)


def test_compact_state_layout_and_values():
    ep = robot_episode(0.2, 0.0, 60, 0)
    feat = Featurizer(ROBOT_SPEC, FeatureConfig(lidar_sectors=4, depth_blocks=(1, 2), depth_factor=2), depth_fill_m=6.0)
    f = feat.features(ep)
    assert feat.slices == {"lidar": slice(0, 4), "depth": slice(4, 6), "odom": slice(6, 8)}
    assert f.state.shape == (60, 8) and f.ready.all()
    ranges = ep["lidar"]
    assert np.allclose(f.state[:, 0], ranges[:, :2].mean(axis=1))          # sector 0 = beams 0, 1
    assert np.allclose(f.state[:, 4], ep["depth"][:, 0, 0])                  # a flat wall: every block alike
    assert np.allclose(f.state[:, 6:], [0.2, 0.0])
    # An empty depth block takes the fill value in the compact state, and its compact block's value when decoded.
    ep.data["depth"][:, :, :2] = 0.0
    f = feat.features(ep)
    assert np.allclose(f.state[:, 4], 6.0)
    h = feat.history(f, ep, 20, STEP, 1)
    assert h.depth.shape == (1, 2, 2) and np.allclose(h.depth[0, :, 0], 6.0) and np.allclose(h.depth[0, :, 1], ep["depth"][20, 0, 3])


def test_transitions_use_step_mean_actions_and_true_motion():
    ep = robot_episode(0.3, 1.0, 40, 0)
    ep.data["action"][:, 1] = np.arange(40)                                   # a ramp: step means are checkable
    feat = Featurizer(ROBOT_SPEC, FeatureConfig(lidar_sectors=BEAMS, depth_blocks=(2, 2)))
    f = feat.features(ep)
    tr = build_transitions([f], STEP, 3)
    first = 2 * STEP                                                          # history of 3 states needs 10 ticks
    assert len(tr) == 40 - STEP - first
    assert np.allclose(tr.action[0], [0.3, np.mean(np.arange(first, first + STEP))])
    assert np.allclose(tr.history[0], f.state[[0, 5, 10]])
    assert np.allclose(tr.delta[0], f.state[first + STEP] - f.state[first])
    assert np.allclose(tr.motion, [0.3 * DT * STEP, 0.0, 0.0], atol=1e-6)
    assert len(build_transitions([f], STEP, 3, max_count=7)) == 7


# ------------------------------------------------------------------------------------------------------------------
# The baselines on known answers.


def _fitted(train: list[EpisodeArrays], val: list[EpisodeArrays], spec: ObservationSpec, features: FeatureConfig,
            ensemble: EnsembleConfig, horizon: int = 10, step: int = STEP) -> dict:
    feat = Featurizer(spec, features, depth_fill_m=30.0)
    train_f = feat.fit(train, step, horizon)
    val_f = [feat.features(ep) for ep in val]
    baselines = make_baselines(feat, BaselineConfig(ensemble=ensemble))
    for b in baselines.values():
        b.fit(train_f, val_f, step)
    return baselines


SMALL_ENSEMBLE = EnsembleConfig(hidden=64, layers=2, epochs=60, patience=10, batch_size=64, lr=3e-3, particles=10)
EXACT = FeatureConfig(lidar_sectors=BEAMS, depth_blocks=(2, 2))


@pytest.fixture(scope="module")
def moving():
    train = [robot_episode(v, 0.0, 300, i) for i, v in enumerate((0.1, 0.2, 0.3, 0.4))]
    val = [robot_episode(0.15, 0.5, 300, 10)]
    return _fitted(train, val, ROBOT_SPEC, EXACT, SMALL_ENSEMBLE)


def test_last_value_is_exact_on_a_static_scene(moving):
    ep = robot_episode(0.0, 1.0, 200, 20)
    b = moving["last_value"]
    f = b.featurizer.features(ep)
    s, horizon = 50, 10
    forecast = b.predict(b.featurizer.history(f, ep, s, STEP, 3), _step_actions(ep, s, horizon))
    lidar, depth, pose = _windows_truth(ep, s, horizon)
    assert forecast.mean["lidar"].shape == (1, horizon, BEAMS) and forecast.mean["depth"].shape == (1, horizon, 2, 2)
    assert np.array_equal(forecast.mean["lidar"][0], lidar)
    assert np.array_equal(forecast.mean["depth"][0], depth)
    assert np.array_equal(forecast.mean["pose"][0], pose)
    assert forecast.std == {}


def test_linear_is_exact_on_constant_velocity(moving):
    ep = robot_episode(0.25, 0.3, 300, 30)
    b = moving["linear"]
    assert b.report["ridge"] == 0.0 and b.report["train_transitions"] > 1000
    f = b.featurizer.features(ep)
    histories, actions, truths = [], [], []
    for s in (50, 100, 150):
        histories.append(b.featurizer.history(f, ep, s, STEP, 3))
        actions.append(_step_actions(ep, s, 10))
        truths.append(_windows_truth(ep, s, 10))
    forecast = b.predict(stack_histories(histories), np.concatenate(actions))
    for i, (lidar, depth, pose) in enumerate(truths):
        assert np.allclose(forecast.mean["lidar"][i], lidar, atol=2e-3)
        assert np.allclose(forecast.mean["depth"][i], depth, atol=2e-3)
        assert np.allclose(forecast.mean["pose"][i], pose, atol=1e-3)
    assert abs(forecast.mean["pose"][0, -1, 0] - 0.25) < 1e-3                # 1 s at 0.25 m/s


def test_mlp_ensemble_learns_the_motion_and_reports_uncertainty(moving):
    ep = robot_episode(0.25, 0.3, 300, 30)
    ens, last = moving["mlp_ensemble"], moving["last_value"]
    assert ens.report["epochs"] >= 1 and ens.report["best_epoch"] >= 1
    f = ens.featurizer.features(ep)
    s, horizon = 100, 10
    history = ens.featurizer.history(f, ep, s, STEP, 3)
    actions = _step_actions(ep, s, horizon)
    forecast = ens.predict(history, actions)
    lidar, _, pose = _windows_truth(ep, s, horizon)
    assert set(forecast.std) == {"lidar", "depth", "pose"}
    # Spread where the data moves; none where training never saw a change (clipped to the training range).
    assert (forecast.std["lidar"][0, :, 4] > 0).all() and (forecast.std["pose"][0, :, 0] > 0).all()
    assert (forecast.std["lidar"][0, :, 2] == 0).all()                      # a side beam: constant in training
    err = np.abs(forecast.mean["lidar"][0] - lidar).mean()
    err_last = np.abs(last.predict(history, actions).mean["lidar"][0] - lidar).mean()
    assert err < 0.3 * err_last, (err, err_last)
    assert abs(forecast.mean["pose"][0, -1, 0] - pose[-1, 0]) < 0.05
    again = ens.predict(history, actions)
    assert np.array_equal(again.mean["lidar"], forecast.mean["lidar"])       # seeded sampling: reproducible


def test_gym_variants_predict_observation_vectors():
    train = [gym_episode(200, i, GYM_A, GYM_B) for i in range(4)]
    val = [gym_episode(200, 9, GYM_A, GYM_B)]
    spec = train[0].spec
    baselines = _fitted(train, val, spec, FeatureConfig(), EnsembleConfig(hidden=32, layers=2, epochs=5, particles=5),
                        horizon=20, step=1)
    ep = gym_episode(200, 20, GYM_A, GYM_B)
    b = baselines["linear"]
    f = b.featurizer.features(ep)
    s = 50
    history = b.featurizer.history(f, ep, s, 1, 3)
    actions = ep["action"][s: s + 20][None]
    forecast = b.predict(history, actions)
    assert np.allclose(forecast.mean["obs"][0], ep["obs"][s + 1: s + 21], atol=1e-3)      # a linear system: exact
    assert set(forecast.mean) == {"obs"}
    ens = baselines["mlp_ensemble"].predict(history, actions)
    assert ens.mean["obs"].shape == (1, 20, 3) and ens.std["obs"].shape == (1, 20, 3)
    held = baselines["last_value"].predict(history, actions)
    assert np.array_equal(held.mean["obs"][0], np.repeat(ep["obs"][s][None], 20, axis=0))


def test_fitted_baselines_save_and_load(tmp_path, moving):
    path = tmp_path / "fit.npz"
    save_baselines(path, moving, "key-1")
    feat = Featurizer(ROBOT_SPEC, EXACT, depth_fill_m=30.0)
    fresh = make_baselines(feat, BaselineConfig(ensemble=SMALL_ENSEMBLE))
    assert not load_baselines(path, fresh, "another-key")
    assert load_baselines(path, fresh, "key-1")
    assert fresh["linear"].report["ridge"] == 0.0 and "loaded_from" in fresh["mlp_ensemble"].report
    ep = robot_episode(0.25, 0.3, 300, 30)
    f = feat.features(ep)
    history = feat.history(f, ep, 100, STEP, 3)
    actions = _step_actions(ep, 100, 10)
    for name in ("linear", "mlp_ensemble"):
        a, b = moving[name].predict(history, actions), fresh[name].predict(history, actions)
        for key in a.mean:
            assert np.allclose(a.mean[key], b.mean[key], atol=1e-5), (name, key)
