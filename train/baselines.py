"""Baselines for the world model's evaluation: last value, linear least squares, and a PETS-style MLP ensemble.

Every baseline sees what the world model sees: the observations up to a start tick ``s`` and the true actions
after it. Each predicts, for ``H`` future steps of ``step`` ticks, the observation at the tick each step ends and
the robot's pose relative to its pose at ``s`` (``[x m, y m, yaw rad]`` in the robot frame at ``s``):

- ``last_value`` -- zero-order hold: the latest observation of each modality for every future step, no motion.
- ``linear`` -- ridge least squares from a short history of the compact state (``history_steps`` states, one
  step apart) and the step's action to the change of the compact state over the step and the robot's motion over
  it (in the frame of the step's start); rolled out step by step. The ridge weight is picked from a grid by the
  one-step error on the validation split.
- ``mlp_ensemble`` -- PETS (Chua et al., 2018): ``members`` probabilistic MLPs (SiLU, a Gaussian mean and a
  soft-bounded log-variance per output), each trained by Gaussian NLL on its own bootstrap resample of the training
  transitions, mapping the compact state and the step's action to the one-step change of the state and the motion;
  early stopping on the validation MSE. Rolled out with **TS-inf** trajectory sampling: ``particles`` particles per
  window, particle ``p`` bound to member ``p % members`` for the whole rollout, each step drawn from that member's
  Gaussian. The prediction is the particle mean, its uncertainty the particle spread.

**Compact state** (:class:`Featurizer`). Robot: the LiDAR scan's median over each of ``lidar_sectors`` sectors, the
depth image averaged (over valid pixels) over ``depth_blocks`` blocks, odometry ``v`` and ``omega``; gym: the
observation vector. A robot prediction at full resolution is the last observation plus the predicted change of
the compact state, each sector's (block's) change spread over its beams (pixels): a zero predicted change is
exactly the last value, so a learned baseline only has to learn how the scene changes. Depth is predicted at the
evaluation resolution ``(H / depth_factor, W / depth_factor)`` (block means over valid pixels, the world model's
depth target); a block with no valid pixel takes its compact block's value, or ``depth_fill_m``. Predicted states
are clipped to the range seen in training widened by half of it on each side (a guard against diverging
rollouts), and full-resolution LiDAR ranges to the range seen in training, for both learned baselines alike.

**Steps**: a step is ``step`` ticks; its action is the mean of the tick actions over it, exactly as the world model
is rolled out in evaluation. The grid is assumed regular (the control rate of the data).

Example::

    feat = Featurizer(spec, FeatureConfig(), depth_fill_m=6.0)
    train = feat.fit(train_episodes, step=5, horizon=20)            # per-episode compact features
    val = [feat.features(ep) for ep in val_episodes]
    baselines = make_baselines(feat, BaselineConfig())
    for b in baselines.values():
        b.fit(train, val, step=5)
    history = feat.history(val[0], ep=val_episodes[0], start=100, step=5, steps=3)
    forecast = baselines["mlp_ensemble"].predict(stack_histories([history]), actions)   # actions (1, H, A)
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, NamedTuple, Sequence

import numpy as np
import torch
from torch import nn

from oni.files import atomic_write
from train.dataset import EpisodeArrays
from worldmodel.observation import ObservationSpec

log = logging.getLogger("train.baselines")

__all__ = [
    "BASELINES",
    "Baseline",
    "BaselineConfig",
    "EnsembleConfig",
    "EpisodeFeatures",
    "FeatureConfig",
    "Featurizer",
    "Forecast",
    "History",
    "LastValueModel",
    "LinearModel",
    "MLPEnsembleModel",
    "Rollout",
    "Transitions",
    "build_transitions",
    "chain_motion",
    "held_frames",
    "load_baselines",
    "make_baselines",
    "pool_depth",
    "relative_pose",
    "save_baselines",
    "stack_histories",
    "wrap_angle",
]

#: Baseline names, in report order.
BASELINES = ("last_value", "linear", "mlp_ensemble")
# A channel whose spread is below this is constant: standardizing divides by 1 instead (no noise amplification).
_MIN_STD = 1e-8
# Rolled-out compact states are clipped to the training range widened by this fraction of it on each side.
_CLIP_SLACK = 0.5


# --------------------------------------------------------------------------------------------------------------
# Geometry (numpy).


def wrap_angle(a: np.ndarray) -> np.ndarray:
    """Angles (rad) wrapped into [-pi, pi)."""
    return np.remainder(a + np.pi, 2.0 * np.pi) - np.pi


def relative_pose(origin: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """``pose`` (..., 3) in the frame of ``origin`` (..., 3): ``[x m, y m, yaw rad]``, yaw difference wrapped."""
    c, s = np.cos(origin[..., 2]), np.sin(origin[..., 2])
    dx, dy = pose[..., 0] - origin[..., 0], pose[..., 1] - origin[..., 1]
    return np.stack([c * dx + s * dy, -s * dx + c * dy, wrap_angle(pose[..., 2] - origin[..., 2])], axis=-1)


def chain_motion(deltas: np.ndarray) -> np.ndarray:
    """Per-step motions (..., H, 3), each in the frame of its step's start, chained into poses relative to the
    start (..., H, 3) (yaw not wrapped)."""
    pose = np.zeros((*deltas.shape[:-2], 3), deltas.dtype)
    out = np.empty_like(deltas)
    for k in range(deltas.shape[-2]):
        d = deltas[..., k, :]
        c, s = np.cos(pose[..., 2]), np.sin(pose[..., 2])
        pose = np.stack([pose[..., 0] + c * d[..., 0] - s * d[..., 1],
                         pose[..., 1] + s * d[..., 0] + c * d[..., 1],
                         pose[..., 2] + d[..., 2]], axis=-1)
        out[..., k, :] = pose
    return out


def pool_depth(depth: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Depth (..., H, W) m (0 = no return) -> block means over valid pixels and valid-pixel counts, each
    (..., H / factor, W / factor); a block without a valid pixel is 0 with count 0 (the world model's target)."""
    *lead, h, w = depth.shape
    if h % factor or w % factor:
        raise ValueError(f"depth factor {factor} must divide the image size {h} x {w}")
    valid = (depth > 0).astype(np.float32)
    shape = (*lead, h // factor, factor, w // factor, factor)
    total = (depth * valid).reshape(shape).sum(axis=(-3, -1))
    count = valid.reshape(shape).sum(axis=(-3, -1))
    return np.where(count > 0, total / np.maximum(count, 1.0), 0.0).astype(np.float32), count.astype(np.float32)


def _assignment(n: int, parts: int) -> np.ndarray:
    """(n, parts) 0/1 matrix assigning n consecutive items to ``parts`` near-equal contiguous groups."""
    group = np.concatenate([np.full(len(chunk), i) for i, chunk in enumerate(np.array_split(np.arange(n), parts))])
    out = np.zeros((n, parts), np.float32)
    out[np.arange(n), group] = 1.0
    return out


# --------------------------------------------------------------------------------------------------------------
# Features.


@dataclass(frozen=True)
class FeatureConfig:
    """The compact state: ``lidar_sectors`` LiDAR sector medians, ``depth_blocks`` (rows, cols) depth block means at the
    evaluation resolution, odometry ``v``/``omega`` when ``odom``; ``depth_factor``: the evaluation resolution of
    depth is (H / f, W / f) (the world model's ``image_decode_factor``)."""

    lidar_sectors: int = 36
    depth_blocks: tuple[int, int] = (6, 8)
    depth_factor: int = 2
    odom: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "depth_blocks", tuple(int(b) for b in self.depth_blocks))
        if self.lidar_sectors < 1 or len(self.depth_blocks) != 2 or min(self.depth_blocks) < 1 or self.depth_factor < 1:
            raise ValueError(f"FeatureConfig: lidar_sectors, depth_blocks (2 numbers) and depth_factor must be >= 1, got {self}")


class EpisodeFeatures(NamedTuple):
    """One episode's per-tick inputs of the baselines (T ticks).

    ``state`` (T, C) float32 compact state; ``action`` (T, A); ``ready`` (T,) bool: every held modality has had a
    message (the compact state is meaningful); ``pose`` (T, 3) and ``pose_mask`` (T,) ground truth (robot; None
    for gym); ``valid`` (T,).
    """

    state: np.ndarray
    action: np.ndarray
    ready: np.ndarray
    pose: np.ndarray | None
    pose_mask: np.ndarray | None
    valid: np.ndarray


class History(NamedTuple):
    """The inputs of a batch of B windows at their start ticks.

    ``state`` (B, L, C): compact states at ticks ``s - (L-1)*step ... s`` (oldest first); ``lidar`` (B, N) m: the
    scan held at ``s``; ``depth`` (B, h, w) m: the frame held at ``s`` at the evaluation resolution, empty blocks
    filled (None where the robot lacks the modality, and for gym).
    """

    state: np.ndarray
    lidar: np.ndarray | None
    depth: np.ndarray | None


def stack_histories(items: Sequence[History]) -> History:
    """One :class:`History` of B windows from B histories of one window each (leading dim 1)."""
    def cat(name: str) -> np.ndarray | None:
        values = [getattr(h, name) for h in items]
        return None if values[0] is None else np.concatenate(values, axis=0)

    return History(cat("state"), cat("lidar"), cat("depth"))


class Rollout(NamedTuple):
    """A step model's rollout of B windows over H steps: ``state`` (B, H, C) compact state after each step (mean)
    and ``state_std`` (B, H, C) or None; ``pose`` (B, H, 3) relative to the start and ``pose_var`` (B, H, 3) or
    None (pose None for gym)."""

    state: np.ndarray
    state_std: np.ndarray | None
    pose: np.ndarray | None
    pose_var: np.ndarray | None


class Forecast(NamedTuple):
    """Predictions of B windows over H steps in physical units: ``mean[name]`` and, for models with uncertainty,
    ``std[name]`` (empty dict otherwise), for ``lidar`` (B, H, N) m, ``depth`` (B, H, h, w) m at the evaluation
    resolution, ``obs`` (B, H, D) and ``pose`` (B, H, 3) ``[x m, y m, yaw rad]`` relative to the start pose."""

    mean: dict[str, np.ndarray]
    std: dict[str, np.ndarray]


class Featurizer:
    """Compact state of episodes, windows' histories, and the decoding of compact rollouts to full predictions.

    ``spec``: the data's observation spec (robot: LiDAR, depth, odometry are used; gym: ``obs``).
    ``depth_fill_m``: depth of a block without any valid pixel (no return: far), e.g. the camera's range.
    :meth:`fit` must run on the training episodes before :meth:`decode` (it measures clip ranges and the variance
    of what the compact state cannot represent, for calibrated uncertainty).
    """

    def __init__(self, spec: ObservationSpec, config: FeatureConfig = FeatureConfig(), depth_fill_m: float = 6.0) -> None:
        self.spec = spec
        self.config = config
        self.gym = spec.obs_dim > 0
        self.depth_fill_m = float(depth_fill_m)
        self.slices: dict[str, slice] = {}
        width = 0
        if self.gym:
            self.slices["obs"] = slice(0, spec.obs_dim)
            width = spec.obs_dim
        else:
            if spec.lidar_beams:
                sectors = min(config.lidar_sectors, spec.lidar_beams)
                self._lidar_assign = _assignment(spec.lidar_beams, sectors)           # (N, S)
                bounds = np.concatenate([[0], np.cumsum(self._lidar_assign.sum(axis=0)).astype(int)])
                self._lidar_groups = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
                self.slices["lidar"] = slice(width, width + sectors)
                width += sectors
            if spec.depth_height:
                f = config.depth_factor
                if spec.depth_height % f or spec.depth_width % f:
                    raise ValueError(f"depth_factor {f} must divide the depth image {spec.depth_height} x {spec.depth_width}")
                h, w = spec.depth_height // f, spec.depth_width // f
                rows, cols = min(config.depth_blocks[0], h), min(config.depth_blocks[1], w)
                a_r, a_c = _assignment(h, rows), _assignment(w, cols)
                # (h*w, rows*cols): evaluation-resolution block -> compact block, row-major both.
                self._depth_assign = np.einsum("ir,jc->ijrc", a_r, a_c).reshape(h * w, rows * cols)
                self.depth_shape = (h, w)
                self.slices["depth"] = slice(width, width + rows * cols)
                width += rows * cols
            if spec.odom and config.odom:
                self.slices["odom"] = slice(width, width + 2)
                width += 2
        self.width = width
        self.state_lo = np.full(width, -np.inf, np.float32)
        self.state_hi = np.full(width, np.inf, np.float32)
        self.lidar_lo, self.lidar_hi = 0.0, np.inf
        # Per step k = 1..H: mean squared change at full (evaluation) resolution the compact change misses.
        self.residual_var: dict[str, np.ndarray] = {}

    # -- per-frame pooling --------------------------------------------------------------------------------------

    def _lidar_compact(self, scans: np.ndarray) -> np.ndarray:
        """(M, N) m -> (M, S) sector medians. A median, not a mean: a dropped beam reads the maximum range, and in
        a mean it would move its sector by a metre at random, drowning the scene's motion in noise."""
        return np.stack([np.median(scans[:, sl], axis=1) for sl in self._lidar_groups], axis=1).astype(np.float32)

    def _depth_compact(self, pooled: np.ndarray, count: np.ndarray) -> np.ndarray:
        """Evaluation-resolution frames (M, h, w) and valid counts -> (M, B) compact block means over valid pixels."""
        m = pooled.shape[0]
        total = (pooled * count).reshape(m, -1) @ self._depth_assign
        n = count.reshape(m, -1) @ self._depth_assign
        return np.where(n > 0, total / np.maximum(n, 1.0), self.depth_fill_m).astype(np.float32)

    def _fill_depth(self, pooled: np.ndarray, count: np.ndarray, compact: np.ndarray) -> np.ndarray:
        """Evaluation-resolution frames (M, h, w) with empty blocks replaced by their compact block's value."""
        spread = (compact @ self._depth_assign.T).reshape(pooled.shape)
        return np.where(count > 0, pooled, spread).astype(np.float32)

    def depth_frames(self, ep: EpisodeArrays) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The episode's depth messages at the evaluation resolution: ``(pooled, count, index)``: block means over
        valid pixels and valid-pixel counts (M, h, w), and ``index`` (T,) the frame held at each tick (-1 before the
        first)."""
        frames, index = held_frames(ep, "depth")
        pooled, count = pool_depth(frames, self.config.depth_factor)
        return pooled, count, index

    # -- episodes -----------------------------------------------------------------------------------------------

    def features(self, ep: EpisodeArrays) -> EpisodeFeatures:
        """The compact state of every tick of ``ep`` (held values: the latest message of each modality)."""
        t_len = len(ep)
        state = np.zeros((t_len, self.width), np.float32)
        ready = np.ones(t_len, bool)
        if self.gym:
            state[:] = ep["obs"]
            seen = np.cumsum(ep["obs_mask"]) > 0
            ready &= seen
        else:
            if "lidar" in self.slices:
                frames, index = held_frames(ep, "lidar")
                compact = self._lidar_compact(frames)
                state[:, self.slices["lidar"]] = np.where(index[:, None] >= 0, compact[np.maximum(index, 0)], 0.0) \
                    if len(frames) else 0.0
                ready &= index >= 0
            if "depth" in self.slices:
                pooled, count, index = self.depth_frames(ep)
                compact = self._depth_compact(pooled, count)
                state[:, self.slices["depth"]] = np.where(index[:, None] >= 0, compact[np.maximum(index, 0)], 0.0) \
                    if len(pooled) else 0.0
                ready &= index >= 0
            if "odom" in self.slices:
                state[:, self.slices["odom"]] = ep["odom"][:, :2]
                ready &= np.cumsum(ep["odom_mask"]) > 0
        pose = None if self.gym or "pose" not in ep else ep["pose"].astype(np.float32)
        pose_mask = None if pose is None else ep["pose_mask"] > 0
        valid = ep["valid"] > 0 if "valid" in ep else np.ones(t_len, bool)
        return EpisodeFeatures(state, ep["action"].astype(np.float32), ready, pose, pose_mask, valid)

    def fit(self, episodes: Iterable[EpisodeArrays], step: int, horizon: int,
            visit: Callable[[EpisodeArrays], None] | None = None) -> list[EpisodeFeatures]:
        """One pass over the training episodes: their features (returned), the clip ranges of the compact state and
        of LiDAR ranges, and the residual variance per step k = 1..``horizon`` (full-resolution change minus the
        spread compact change, squared, averaged over beams / valid blocks and start ticks with fresh data at both
        ends). ``visit(ep)`` is called on each episode while it is loaded (one pass for the caller's statistics)."""
        out: list[EpisodeFeatures] = []
        lo = np.full(self.width, np.inf, np.float32)
        hi = np.full(self.width, -np.inf, np.float32)
        sums = {name: np.zeros(horizon) for name in ("lidar", "depth") if name in self.slices}
        counts = {name: np.zeros(horizon) for name in sums}
        lidar_lo, lidar_hi = np.inf, -np.inf
        for ep in episodes:
            if visit is not None:
                visit(ep)
            f = self.features(ep)
            out.append(f)
            seen = f.state[f.ready]
            if len(seen):
                lo, hi = np.minimum(lo, seen.min(axis=0)), np.maximum(hi, seen.max(axis=0))
            if "lidar" in sums:
                frames, _ = held_frames(ep, "lidar")
                if len(frames):
                    lidar_lo, lidar_hi = min(lidar_lo, float(frames.min())), max(lidar_hi, float(frames.max()))
                self._residual(ep, f, "lidar", step, sums["lidar"], counts["lidar"])
            if "depth" in sums:
                self._residual(ep, f, "depth", step, sums["depth"], counts["depth"])
        if not out:
            raise ValueError("no training episodes to fit the baselines on")
        # Half the training range of slack on each side: the clip only stops a diverging rollout, it must not bite
        # a state merely beyond what the training worlds happened to show.
        slack = np.where(np.isfinite(hi - lo), _CLIP_SLACK * (hi - lo), 0.0)
        self.state_lo = np.where(np.isfinite(lo), lo - slack, -np.inf).astype(np.float32)
        self.state_hi = np.where(np.isfinite(hi), hi + slack, np.inf).astype(np.float32)
        if np.isfinite(lidar_lo):
            self.lidar_lo, self.lidar_hi = lidar_lo, lidar_hi
        self.residual_var = {name: (sums[name] / np.maximum(counts[name], 1.0)).astype(np.float32) for name in sums}
        return out

    def _residual(self, ep: EpisodeArrays, f: EpisodeFeatures, name: str, step: int, sums: np.ndarray,
                  counts: np.ndarray) -> None:
        """Accumulate the squared full-resolution change the compact change misses, per step k, from start ticks
        with a fresh message (every 5th such tick: neighbouring starts say nearly the same)."""
        mask = ep[f"{name}_mask"] > 0
        starts = np.flatnonzero(mask & f.ready)[::5]
        sl = self.slices[name]
        if name == "lidar":
            frames, index = held_frames(ep, "lidar")
            values, weights = frames, None
        else:
            pooled, count, index = self.depth_frames(ep)
            values, weights = pooled, (count > 0).astype(np.float32)
        spread = self._lidar_assign.T if name == "lidar" else self._depth_assign.T
        for k in range(1, len(sums) + 1):
            s = starts[starts + k * step < len(ep)]
            e = s + k * step
            s, e = s[mask[e]], e[mask[e]]
            if not len(s):
                continue
            a, b = values[index[s]].reshape(len(s), -1), values[index[e]].reshape(len(s), -1)
            miss = (b - a) - (f.state[e, sl] - f.state[s, sl]) @ spread
            w = np.ones_like(miss) if weights is None else (weights[index[s]] * weights[index[e]]).reshape(len(s), -1)
            sums[k - 1] += float((w * miss * miss).sum())
            counts[k - 1] += float(w.sum())

    # -- windows ------------------------------------------------------------------------------------------------

    def history(self, features: EpisodeFeatures, ep: EpisodeArrays, start: int, step: int, steps: int) -> History:
        """The inputs of the window starting at tick ``start``: ``steps`` compact states one step apart, ending at
        ``start``, and the observations held at ``start`` (leading dim 1; :func:`stack_histories` batches)."""
        ticks = start - step * np.arange(steps - 1, -1, -1)
        if ticks[0] < 0:
            raise ValueError(f"window at tick {start}: a history of {steps} steps of {step} ticks starts before the episode")
        lidar = depth = None
        if not self.gym and "lidar" in self.slices:
            lidar = ep.window(start, start + 1, ["lidar"])["lidar"]
        if not self.gym and "depth" in self.slices:
            raw = ep.window(start, start + 1, ["depth"])["depth"]
            pooled, count = pool_depth(raw, self.config.depth_factor)
            depth = self._fill_depth(pooled, count, self._depth_compact(pooled, count))
        return History(features.state[ticks][None], lidar, depth)

    def decode(self, rollout: Rollout, history: History) -> Forecast:
        """Full predictions from a compact rollout: robot observations are the ones held at the start plus the
        spread predicted change (clipped to the ranges seen in training); gym observations are the state."""
        mean: dict[str, np.ndarray] = {}
        std: dict[str, np.ndarray] = {}
        if self.gym:
            mean["obs"] = rollout.state
            if rollout.state_std is not None:
                std["obs"] = rollout.state_std
            return Forecast(mean, std)
        current = history.state[:, -1]
        if history.lidar is not None:
            sl = self.slices["lidar"]
            change = (rollout.state[..., sl] - current[:, None, sl]) @ self._lidar_assign.T
            mean["lidar"] = np.clip(history.lidar[:, None] + change, self.lidar_lo, self.lidar_hi).astype(np.float32)
            if rollout.state_std is not None:
                var = rollout.state_std[..., sl] ** 2 @ self._lidar_assign.T
                std["lidar"] = np.sqrt(var + self._residual_var("lidar", var.shape[1])[:, None]).astype(np.float32)
        if history.depth is not None:
            sl = self.slices["depth"]
            b, horizon = rollout.state.shape[:2]
            change = ((rollout.state[..., sl] - current[:, None, sl]) @ self._depth_assign.T).reshape(b, horizon, *self.depth_shape)
            mean["depth"] = np.clip(history.depth[:, None] + change, 0.0, self.depth_fill_m).astype(np.float32)
            if rollout.state_std is not None:
                var = (rollout.state_std[..., sl] ** 2 @ self._depth_assign.T).reshape(b, horizon, *self.depth_shape)
                std["depth"] = np.sqrt(var + self._residual_var("depth", horizon)[:, None, None]).astype(np.float32)
        if rollout.pose is not None:
            mean["pose"] = rollout.pose.astype(np.float32)
            if rollout.pose_var is not None:
                std["pose"] = np.sqrt(rollout.pose_var).astype(np.float32)
        return Forecast(mean, std)

    def output_groups(self) -> list[slice]:
        """Column groups of a step model's targets ``[state change, motion]``: one per modality, then the motion."""
        groups = list(self.slices.values())
        if not self.gym:
            groups.append(slice(self.width, self.width + 3))
        return groups

    def _residual_var(self, name: str, horizon: int) -> np.ndarray:
        """The residual variance of steps 1..horizon (the last fitted step's value beyond the fitted horizon)."""
        var = self.residual_var.get(name)
        if var is None or not len(var):
            return np.zeros(horizon, np.float32)
        return np.concatenate([var, np.full(max(0, horizon - len(var)), var[-1], np.float32)])[:horizon]


def held_frames(ep: EpisodeArrays, key: str) -> tuple[np.ndarray, np.ndarray]:
    """A held modality's ``(frames (M, ...), index (T,))``: from the cache's per-message storage, or (episodes
    built as plain per-tick arrays) every tick a frame of its own."""
    if key in ep.held:
        frames, index = ep.held[key]
        return frames.astype(np.float32, copy=False), index.astype(np.int64)
    values = ep[key]
    index = np.where(np.cumsum(ep[f"{key}_mask"]) > 0, np.arange(len(ep)), -1)
    return values.astype(np.float32, copy=False), index


# --------------------------------------------------------------------------------------------------------------
# Transitions.


class Transitions(NamedTuple):
    """Training pairs at the coarse step: ``history`` (N, L, C) compact states one step apart ending at tick t,
    ``action`` (N, A) the mean action over ``[t, t + step)``, ``delta`` (N, C) the state's change from t to
    t + step, ``motion`` (N, 3) the ground-truth motion over the step in the frame at t (N, 0 for gym)."""

    history: np.ndarray
    action: np.ndarray
    delta: np.ndarray
    motion: np.ndarray

    def __len__(self) -> int:
        return int(self.action.shape[0])


def build_transitions(features: Sequence[EpisodeFeatures], step: int, steps: int, max_count: int | None = None,
                      seed: int = 0) -> Transitions:
    """Every transition of ``features`` (starting at every tick) whose history is ready, valid and (robot) has a
    ground-truth pose at both ends; a random subset of ``max_count`` when there are more."""
    parts: list[tuple[int, np.ndarray]] = []
    for i, f in enumerate(features):
        t_len = len(f.state)
        t = np.arange((steps - 1) * step, t_len - step)
        if not len(t):
            continue
        ok = f.ready[t - (steps - 1) * step] & f.valid[t] & f.valid[t + step]
        if f.pose_mask is not None:
            ok &= f.pose_mask[t] & f.pose_mask[t + step]
        parts.append((i, t[ok]))
    total = sum(len(t) for _, t in parts)
    keep = None
    if max_count is not None and total > max_count:
        keep = np.zeros(total, bool)
        keep[np.random.default_rng(seed).choice(total, max_count, replace=False)] = True
    histories, actions, deltas, motions = [], [], [], []
    offset = 0
    for i, t in parts:
        if keep is not None:
            t, offset = t[keep[offset: offset + len(t)]], offset + len(t)
        f = features[i]
        idx = t[:, None] - step * np.arange(steps - 1, -1, -1)[None]
        histories.append(f.state[idx])
        cum = np.concatenate([np.zeros((1, f.action.shape[1]), np.float64), np.cumsum(f.action, axis=0, dtype=np.float64)])
        actions.append(((cum[t + step] - cum[t]) / step).astype(np.float32))
        deltas.append(f.state[t + step] - f.state[t])
        if f.pose is not None:
            motions.append(relative_pose(f.pose[t], f.pose[t + step]).astype(np.float32))
        else:
            motions.append(np.zeros((len(t), 0), np.float32))
    if not histories:
        raise ValueError(f"no transitions: every episode is shorter than {steps} steps of {step} ticks plus one")
    return Transitions(np.concatenate(histories), np.concatenate(actions), np.concatenate(deltas), np.concatenate(motions))


class _Scaler(NamedTuple):
    """Per-column mean and std (std of constant columns is 1)."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def of(cls, x: np.ndarray) -> _Scaler:
        mean = x.mean(axis=0, dtype=np.float64)
        std = x.std(axis=0, dtype=np.float64)
        return cls(mean.astype(np.float32), np.where(std < _MIN_STD, 1.0, std).astype(np.float32))

    def forward(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.std

    def inverse(self, x: np.ndarray) -> np.ndarray:
        return x * self.std + self.mean


# --------------------------------------------------------------------------------------------------------------
# Step models.


class LastValueModel:
    """Zero-order hold: the state stays, the robot does not move. Needs no fitting."""

    history_steps = 1

    def fit(self, train: Transitions, val: Transitions | None) -> dict[str, Any]:
        return {}

    def rollout(self, history: np.ndarray, actions: np.ndarray, with_pose: bool) -> Rollout:
        """``history`` (B, L, C), ``actions`` (B, H, A) -> the start state repeated H times, zero pose."""
        b, horizon = actions.shape[:2]
        state = np.repeat(history[:, -1:], horizon, axis=1)
        pose = np.zeros((b, horizon, 3), np.float32) if with_pose else None
        return Rollout(state, None, pose, None)


def _history_features(history: np.ndarray, action: np.ndarray) -> np.ndarray:
    """(N, L, C), (N, A) -> (N, L*C + A): the latest state, its L - 1 step differences (newest first), the action."""
    diffs = [history[:, -1 - j] - history[:, -2 - j] for j in range(history.shape[1] - 1)]
    return np.concatenate([history[:, -1], *diffs, action], axis=1)


class LinearModel:
    """Ridge least squares ``[c_t, c_t - c_(t-1), ..., a_t] -> [c_(t+1) - c_t, motion]`` on standardized
    features and targets; the ridge weight (times the sample count) is chosen from ``ridge_grid`` by the
    validation split's one-step MSE (standardized units); 0 is plain least squares (minimum-norm solution)."""

    def __init__(self, history_steps: int = 3, ridge_grid: Sequence[float] = (0.0, 1e-6, 1e-4, 1e-2, 1.0)) -> None:
        if history_steps < 1:
            raise ValueError(f"history_steps must be >= 1, got {history_steps}")
        self.history_steps = history_steps
        self.ridge_grid = tuple(float(r) for r in ridge_grid)
        self.weights: np.ndarray | None = None
        self.ridge = math.nan
        self.state_lo: np.ndarray | None = None
        self.state_hi: np.ndarray | None = None

    def fit(self, train: Transitions, val: Transitions | None) -> dict[str, Any]:
        x = _history_features(train.history, train.action)
        y = np.concatenate([train.delta, train.motion], axis=1)
        self._x, self._y = _Scaler.of(x), _Scaler.of(y)
        xs = self._x.forward(x).astype(np.float64)
        ys = self._y.forward(y).astype(np.float64)
        gram, cross = xs.T @ xs, xs.T @ ys
        if val is not None and len(val):
            xv = self._x.forward(_history_features(val.history, val.action)).astype(np.float64)
            yv = self._y.forward(np.concatenate([val.delta, val.motion], axis=1)).astype(np.float64)
        else:  # no validation split: judge on the training data (the smallest ridge then wins)
            xv, yv = xs, ys
        scores = {}
        best = None
        for ridge in self.ridge_grid:
            if ridge == 0.0:
                # The minimum-norm least-squares solution, from the normal equations: (F x F) instead of (N x F).
                w = np.linalg.lstsq(gram, cross, rcond=None)[0]
            else:
                w = np.linalg.solve(gram + ridge * len(xs) * np.eye(len(gram)), cross)
            scores[ridge] = float(np.mean((xv @ w - yv) ** 2))
            if best is None or scores[ridge] < scores[best[0]]:
                best = (ridge, w)
        assert best is not None
        self.ridge, self.weights = best
        self.channels = train.delta.shape[1]
        return {"ridge": self.ridge, "val_mse_standardized": scores, "features": int(x.shape[1]), "samples": len(train)}

    def set_bounds(self, lo: np.ndarray, hi: np.ndarray) -> None:
        """Clip range of rolled-out states (the training range)."""
        self.state_lo, self.state_hi = lo, hi

    def arrays(self) -> dict[str, np.ndarray]:
        """Everything fitted, as named arrays (for saving without pickle)."""
        if self.weights is None:
            raise RuntimeError("LinearModel.arrays before fit")
        return {"weights": self.weights, "x.mean": self._x.mean, "x.std": self._x.std, "y.mean": self._y.mean,
                "y.std": self._y.std, "channels": np.array(self.channels), "ridge": np.array(self.ridge)}

    def load_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Restore what :meth:`arrays` gave."""
        self.weights = np.asarray(arrays["weights"])
        self._x = _Scaler(np.asarray(arrays["x.mean"]), np.asarray(arrays["x.std"]))
        self._y = _Scaler(np.asarray(arrays["y.mean"]), np.asarray(arrays["y.std"]))
        self.channels = int(arrays["channels"])
        self.ridge = float(arrays["ridge"])

    def step(self, history: np.ndarray, action: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One step: ``history`` (N, L, C), ``action`` (N, A) -> (state change (N, C), motion (N, M))."""
        if self.weights is None:
            raise RuntimeError("LinearModel.step before fit")
        out = self._y.inverse((self._x.forward(_history_features(history, action)) @ self.weights).astype(np.float32))
        return out[:, : self.channels], out[:, self.channels:]

    def rollout(self, history: np.ndarray, actions: np.ndarray, with_pose: bool) -> Rollout:
        """Deterministic rollout of ``history`` (B, L, C) under ``actions`` (B, H, A)."""
        hist = history[:, -self.history_steps:].astype(np.float32)
        states, motions = [], []
        for k in range(actions.shape[1]):
            delta, motion = self.step(hist, actions[:, k])
            nxt = hist[:, -1] + delta
            if self.state_lo is not None:
                nxt = np.clip(nxt, self.state_lo, self.state_hi)
            hist = np.concatenate([hist[:, 1:], nxt[:, None]], axis=1)
            states.append(nxt)
            motions.append(motion)
        pose = chain_motion(np.stack(motions, axis=1)) if with_pose else None
        return Rollout(np.stack(states, axis=1), None, pose, None)


@dataclass(frozen=True)
class EnsembleConfig:
    """The PETS ensemble: ``members`` MLPs of ``layers`` hidden layers of ``hidden`` units (SiLU); Adam at ``lr``
    with ``weight_decay``, batches of ``batch_size``, at most ``epochs`` epochs, early stopping after ``patience``
    epochs without a better validation MSE, and at most ``max_fit_s`` seconds of training; ``particles`` for TS-inf
    (a multiple of ``members``); ``max_transitions``: a random subset of the training transitions when there are
    more; ``seed`` seeds bootstraps, initialization and sampling; ``threads``: torch threads while fitting and
    rolling out (the matrices are small: one thread avoids synchronization stalls on a busy machine). ``beta``:
    beta-NLL (Seitzer et al., 2022; 0 is the plain Gaussian NLL of PETS), which keeps the few hard outputs from
    being given up on by inflating their variance. ``history_steps``: states in the input (1: the Markov state of
    PETS; 2 adds the last step's change, the scene's apparent motion, which the linear baseline also gets).
    """

    members: int = 5
    hidden: int = 200
    layers: int = 3
    lr: float = 1e-3
    weight_decay: float = 1e-5
    batch_size: int = 256
    epochs: int = 40
    patience: int = 5
    max_fit_s: float = 900.0
    particles: int = 20
    max_transitions: int = 200_000
    seed: int = 0
    threads: int = 1
    beta: float = 0.5
    history_steps: int = 2

    def __post_init__(self) -> None:
        if min(self.members, self.threads, self.history_steps, self.hidden, self.layers, self.batch_size, self.epochs, self.patience, self.particles) < 1:
            raise ValueError(f"EnsembleConfig: sizes and counts must be >= 1, got {self}")
        if self.particles % self.members:
            raise ValueError(f"EnsembleConfig: particles ({self.particles}) must be a multiple of members ({self.members})")
        if not (self.lr > 0 and self.max_fit_s > 0 and self.weight_decay >= 0):
            raise ValueError(f"EnsembleConfig: lr and max_fit_s must be > 0, weight_decay >= 0, got {self}")


class MLPEnsembleModel:
    """PETS: probabilistic MLP ensemble on ``[c_t, c_t - c_(t-1), ..., a_t]`` (``history_steps`` states) -> Gaussian
    over ``[c_(t+1) - c_t, motion]`` (standardized), bootstrapped, rolled out with TS-inf. See :class:`EnsembleConfig`."""

    def __init__(self, config: EnsembleConfig = EnsembleConfig(), output_groups: Sequence[slice] = ()) -> None:
        """``output_groups``: column groups of the targets ``[delta, motion]`` (e.g. LiDAR sectors, depth blocks,
        odometry, motion) whose losses count equally, however many columns each has (none: every column alike)."""
        self.config = config
        self.output_groups = tuple(output_groups)
        self.net: _EnsembleNet | None = None
        self.state_lo: np.ndarray | None = None
        self.state_hi: np.ndarray | None = None

    @property
    def history_steps(self) -> int:
        return self.config.history_steps

    def set_bounds(self, lo: np.ndarray, hi: np.ndarray) -> None:
        """Clip range of rolled-out states (the training range)."""
        self.state_lo, self.state_hi = lo, hi

    def fit(self, train: Transitions, val: Transitions | None) -> dict[str, Any]:
        with _torch_threads(self.config.threads):
            return self._fit(train, val)

    def _fit(self, train: Transitions, val: Transitions | None) -> dict[str, Any]:
        cfg = self.config
        gen = torch.Generator().manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        steps = self.history_steps
        x = _history_features(train.history[:, -steps:], train.action)
        y = np.concatenate([train.delta, train.motion], axis=1)
        self._x, self._y = _Scaler.of(x), _Scaler.of(y)
        self.channels = train.delta.shape[1]
        # Outputs constant in training are predicted as that constant and left out of the network: their NLL would
        # push the log-variance onto its bound, where vanishing gradients turn into denormals that slow the CPU ~3x.
        self._out = np.flatnonzero(y.std(axis=0) >= _MIN_STD)
        # Each group weighs the same: dozens of noisy perception columns must not drown the few of odometry and
        # motion in the shared network's gradient (without this the ensemble does not learn the motion at all).
        column_weight = np.ones(y.shape[1])
        for group in self.output_groups:
            column_weight[group] = 1.0 / max(len(column_weight[group]), 1)
        weight_out = column_weight[self._out] / column_weight[self._out].mean()
        group_weight = torch.from_numpy(weight_out.astype(np.float32))
        xt = torch.from_numpy(self._x.forward(x).astype(np.float32))
        yt = torch.from_numpy(self._y.forward(y)[:, self._out].astype(np.float32))
        if val is not None and len(val):
            xv = torch.from_numpy(self._x.forward(_history_features(val.history[:, -steps:], val.action)).astype(np.float32))
            yv = torch.from_numpy(self._y.forward(np.concatenate([val.delta, val.motion], axis=1))[:, self._out].astype(np.float32))
        else:  # hold out 10% of the training transitions instead
            held = rng.permutation(len(xt))[: max(1, len(xt) // 10)]
            xv, yv = xt[held], yt[held]
        self.net = _EnsembleNet(cfg.members, xt.shape[1], yt.shape[1], cfg.hidden, cfg.layers, gen)
        opt = torch.optim.AdamW(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        n = len(xt)
        boot = torch.from_numpy(rng.integers(0, n, (cfg.members, n)))  # each member's bootstrap resample
        best_mse, best_state, best_epoch, since = math.inf, copy.deepcopy(self.net.state_dict()), 0, 0
        history: list[dict[str, float]] = []
        t0 = time.monotonic()
        for epoch in range(cfg.epochs):
            self.net.train()
            order = boot[:, torch.randperm(n, generator=gen)]
            total = 0.0
            for i in range(0, n, cfg.batch_size):
                idx = order[:, i: i + cfg.batch_size]                   # (E, b)
                mean, logvar = self.net(xt[idx])
                elementwise = 0.5 * ((mean - yt[idx]) ** 2 * torch.exp(-logvar) + logvar)
                nll = elementwise.mean()
                # beta-NLL: each element's NLL weighted by its (constant) predicted variance ** beta.
                weight = group_weight * torch.exp(cfg.beta * logvar.detach()) if cfg.beta else group_weight
                # PETS: keep the soft log-variance bounds tight, or they drift apart unboundedly.
                loss = (weight * elementwise).mean() + 0.01 * (self.net.max_logvar.sum() - self.net.min_logvar.sum()) / yt.shape[1]
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += nll.item() * idx.shape[1]
            val_nll, val_mse = self._score(xv, yv)
            history.append({"epoch": epoch + 1, "train_nll": total / n, "val_nll": val_nll, "val_mse": val_mse})
            log.info("mlp_ensemble epoch %d: train nll %.4f, val nll %.4f, val mse %.4f", epoch + 1, total / n, val_nll, val_mse)
            # Early stopping on the held-out MSE (as PETS): on unseen worlds the NLL of a few over-confident outputs
            # can climb while the predictions themselves still improve.
            if val_mse < best_mse - 1e-4:
                best_mse, best_state, best_epoch, since = val_mse, copy.deepcopy(self.net.state_dict()), epoch + 1, 0
            else:
                since += 1
            if since >= cfg.patience or time.monotonic() - t0 > cfg.max_fit_s:
                break
        self.net.load_state_dict(best_state)
        self.net.eval()
        return {"epochs": len(history), "best_epoch": best_epoch, "val_mse": best_mse, "samples": n,
                "fit_s": round(time.monotonic() - t0, 2), "history": history}

    def _score(self, x: Any, y: Any) -> tuple[float, float]:
        """Validation NLL and MSE (standardized units), each member on all of ``x``, averaged over members."""
        self.net.eval()
        nll = mse = 0.0
        with torch.no_grad():
            for i in range(0, len(x), 8192):
                xb = x[i: i + 8192].unsqueeze(0).expand(self.config.members, -1, -1)
                mean, logvar = self.net(xb)
                err = (mean - y[i: i + 8192]) ** 2
                nll += float((0.5 * (err * torch.exp(-logvar) + logvar)).mean(dim=(0, 2)).sum())
                mse += float(err.mean(dim=(0, 2)).sum())
        return nll / len(x), mse / len(x)

    def rollout(self, history: np.ndarray, actions: np.ndarray, with_pose: bool) -> Rollout:
        """TS-inf rollout of ``history`` (B, L, C) under ``actions`` (B, H, A): mean and std over particles."""
        with _torch_threads(self.config.threads):
            return self._rollout(history, actions, with_pose)

    def _rollout(self, history: np.ndarray, actions: np.ndarray, with_pose: bool) -> Rollout:
        if self.net is None:
            raise RuntimeError("MLPEnsembleModel.rollout before fit")
        cfg = self.config
        e, q = cfg.members, cfg.particles // cfg.members
        b, horizon = actions.shape[:2]
        gen = torch.Generator().manual_seed(cfg.seed + 1)
        lo = torch.from_numpy(self.state_lo) if self.state_lo is not None else None
        hi = torch.from_numpy(self.state_hi) if self.state_hi is not None else None
        x_mean, x_std = torch.from_numpy(self._x.mean), torch.from_numpy(self._x.std)
        y_mean, y_std = torch.from_numpy(self._y.mean), torch.from_numpy(self._y.std)
        out_index = torch.from_numpy(self._out)
        # Particles (E, B * Q): member e carries Q particles of every window for the whole rollout (TS-inf).
        steps = self.history_steps
        hist = torch.from_numpy(history[:, -steps:].astype(np.float32)).repeat_interleave(q, 0).unsqueeze(0).repeat(e, 1, 1, 1)
        acts = torch.from_numpy(actions.astype(np.float32)).repeat_interleave(q, 0)
        states, motions = [], []
        with torch.no_grad():
            for k in range(horizon):
                state = hist[:, :, -1]
                diffs = [hist[:, :, -1 - j] - hist[:, :, -2 - j] for j in range(steps - 1)]
                inp = (torch.cat([state, *diffs, acts[:, k].unsqueeze(0).expand(e, -1, -1)], dim=-1) - x_mean) / x_std
                mean, logvar = self.net(inp)
                draw = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=gen)
                out = y_mean.expand(e, mean.shape[1], -1).clone()
                out[..., out_index] = draw * y_std[out_index] + y_mean[out_index]
                state = state + out[..., : self.channels]
                if lo is not None:
                    state = torch.maximum(torch.minimum(state, hi), lo)
                hist = torch.cat([hist[:, :, 1:], state.unsqueeze(2)], dim=2)
                states.append(state)
                motions.append(out[..., self.channels:])
        traj = torch.stack(states, dim=2).reshape(e, b, q, horizon, -1).permute(1, 0, 2, 3, 4).reshape(b, e * q, horizon, -1)
        traj = traj.numpy()
        pose = pose_var = None
        if with_pose:
            motion = torch.stack(motions, dim=2).reshape(e, b, q, horizon, -1).permute(1, 0, 2, 3, 4)
            poses = chain_motion(motion.reshape(b, e * q, horizon, -1).numpy().astype(np.float64))
            pose, pose_var = poses.mean(axis=1).astype(np.float32), poses.var(axis=1).astype(np.float32)
        return Rollout(traj.mean(axis=1), traj.std(axis=1), pose, pose_var)

    def arrays(self) -> dict[str, np.ndarray]:
        """Everything fitted, as named arrays (for saving without pickle)."""
        if self.net is None:
            raise RuntimeError("MLPEnsembleModel.arrays before fit")
        out = {f"net.{k}": v.detach().numpy() for k, v in self.net.state_dict().items()}
        out.update({"x.mean": self._x.mean, "x.std": self._x.std, "y.mean": self._y.mean, "y.std": self._y.std,
                    "channels": np.array(self.channels), "outputs": self._out})
        return out

    def load_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Restore what :meth:`arrays` gave."""
        cfg = self.config
        inputs, outputs = len(arrays["x.mean"]), len(arrays["outputs"])
        self.net = _EnsembleNet(cfg.members, inputs, outputs, cfg.hidden, cfg.layers, torch.Generator().manual_seed(0))
        self.net.load_state_dict({k[4:]: torch.from_numpy(np.array(v)) for k, v in arrays.items() if k.startswith("net.")})
        self.net.eval()
        self._x = _Scaler(np.asarray(arrays["x.mean"]), np.asarray(arrays["x.std"]))
        self._y = _Scaler(np.asarray(arrays["y.mean"]), np.asarray(arrays["y.std"]))
        self.channels = int(arrays["channels"])
        self._out = np.asarray(arrays["outputs"])


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads, then restore the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _EnsembleLinear(nn.Module):
    """``members`` independent linear layers applied to (E, N, in) at once."""

    def __init__(self, members: int, fan_in: int, fan_out: int, gen: torch.Generator) -> None:
        super().__init__()
        # PETS initialization: truncated normal, std 1 / (2 sqrt(fan_in)), cut at 2 std.
        std = 1.0 / (2.0 * math.sqrt(fan_in))
        w = torch.empty(members, fan_in, fan_out)
        nn.init.trunc_normal_(w, std=std, a=-2.0 * std, b=2.0 * std, generator=gen)
        self.weight = nn.Parameter(w)
        self.bias = nn.Parameter(torch.zeros(members, 1, fan_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.bmm(x, self.weight) + self.bias  # (baddbmm with a broadcast bias is ~20x slower on CPU)


class _EnsembleNet(nn.Module):
    """(E, N, inputs) -> Gaussian mean and soft-bounded log-variance, each (E, N, outputs)."""

    def __init__(self, members: int, inputs: int, outputs: int, hidden: int, layers: int, gen: torch.Generator) -> None:
        super().__init__()
        sizes = [inputs] + [hidden] * layers
        self.hidden = nn.ModuleList(_EnsembleLinear(members, a, b, gen) for a, b in zip(sizes[:-1], sizes[1:]))
        self.out = _EnsembleLinear(members, hidden, 2 * outputs, gen)
        self.max_logvar = nn.Parameter(torch.full((1, 1, outputs), 0.5))
        self.min_logvar = nn.Parameter(torch.full((1, 1, outputs), -10.0))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for layer in self.hidden:
            x = nn.functional.silu(layer(x))
        mean, raw = self.out(x).chunk(2, dim=-1)
        # Soft bounds (PETS): differentiable, so the bounds themselves are learned.
        logvar = self.max_logvar - nn.functional.softplus(self.max_logvar - raw)
        logvar = self.min_logvar + nn.functional.softplus(logvar - self.min_logvar)
        return mean, logvar


# --------------------------------------------------------------------------------------------------------------
# Baselines: a step model with the shared featurizer.


@dataclass(frozen=True)
class BaselineConfig:
    """Settings of the three baselines: ``history_steps`` of the linear model, its ``ridge_grid``, ``max_transitions``
    for the linear fit, and the ensemble's :class:`EnsembleConfig`."""

    history_steps: int = 3
    ridge_grid: tuple[float, ...] = (0.0, 1e-6, 1e-4, 1e-2, 1.0)
    max_transitions: int = 200_000
    ensemble: EnsembleConfig = EnsembleConfig()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Baseline:
    """A named predictor: ``fit(train, val, step)`` on episode features, ``predict(history, actions)`` -> Forecast.

    ``model``: the step model (:class:`LastValueModel`, :class:`LinearModel` or :class:`MLPEnsembleModel`);
    ``featurizer``: shared by all baselines, already fitted on the training episodes.
    """

    def __init__(self, name: str, model: Any, featurizer: Featurizer, max_transitions: int = 200_000, seed: int = 0) -> None:
        self.name = name
        self.model = model
        self.featurizer = featurizer
        self.max_transitions = max_transitions
        self.seed = seed
        self.report: dict[str, Any] = {}

    @property
    def history_steps(self) -> int:
        return int(self.model.history_steps)

    def fit(self, train: Sequence[EpisodeFeatures], val: Sequence[EpisodeFeatures], step: int) -> dict[str, Any]:
        """Fit on the training episodes' transitions (validation: early stopping / model selection)."""
        if isinstance(self.model, LastValueModel):
            return {}
        t0 = time.monotonic()
        steps = self.history_steps
        train_t = build_transitions(train, step, steps, self.max_transitions, self.seed)
        val_t = build_transitions(val, step, steps, self.max_transitions // 10, self.seed + 1) if val else None
        self.model.set_bounds(self.featurizer.state_lo, self.featurizer.state_hi)
        self.report = {**self.model.fit(train_t, val_t), "train_transitions": len(train_t),
                       "val_transitions": 0 if val_t is None else len(val_t), "fit_total_s": round(time.monotonic() - t0, 2)}
        log.info("%s fitted on %d transitions in %.1f s", self.name, len(train_t), time.monotonic() - t0)
        return self.report

    def predict(self, history: History, actions: np.ndarray) -> Forecast:
        """Predictions for B windows: ``history`` (see :class:`History`), ``actions`` (B, H, A) the step actions."""
        rollout = self.model.rollout(history.state, actions, with_pose=not self.featurizer.gym)
        return self.featurizer.decode(rollout, history)


def make_baselines(featurizer: Featurizer, config: BaselineConfig = BaselineConfig()) -> dict[str, Baseline]:
    """The three baselines, unfitted, in :data:`BASELINES` order."""
    return {
        "last_value": Baseline("last_value", LastValueModel(), featurizer),
        "linear": Baseline("linear", LinearModel(config.history_steps, config.ridge_grid), featurizer,
                           config.max_transitions, config.ensemble.seed),
        "mlp_ensemble": Baseline("mlp_ensemble", MLPEnsembleModel(config.ensemble, featurizer.output_groups()), featurizer,
                                 config.ensemble.max_transitions, config.ensemble.seed),
    }


# --------------------------------------------------------------------------------------------------------------
# Saving fitted baselines (numpy arrays and JSON; no pickle).


def save_baselines(path: str | os.PathLike[str], baselines: Mapping[str, Baseline], key: str) -> None:
    """Write the fitted ``baselines`` (and their shared featurizer's fitted values) to ``path`` (.npz), atomically.
    ``key`` identifies what they were fitted on (data, settings); :func:`load_baselines` checks it."""
    featurizer = next(iter(baselines.values())).featurizer
    arrays: dict[str, np.ndarray] = {
        "featurizer.state_lo": featurizer.state_lo,
        "featurizer.state_hi": featurizer.state_hi,
        "featurizer.lidar_range": np.array([featurizer.lidar_lo, featurizer.lidar_hi]),
        "featurizer.depth_fill_m": np.array(featurizer.depth_fill_m),
    }
    arrays.update({f"featurizer.residual.{k}": v for k, v in featurizer.residual_var.items()})
    for name, b in baselines.items():
        if hasattr(b.model, "arrays"):
            arrays.update({f"{name}.{k}": v for k, v in b.model.arrays().items()})
    meta = {"key": key, "reports": {name: b.report for name, b in baselines.items()}}
    arrays["meta"] = np.array(json.dumps(meta))
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, lambda f: np.savez(f, **arrays))


def load_baselines(path: str | os.PathLike[str], baselines: Mapping[str, Baseline], key: str) -> bool:
    """Restore ``baselines`` (made by :func:`make_baselines` with the same settings) from ``path`` if it exists and
    was saved with ``key``; returns whether it did. A file of another key is left alone (the caller refits)."""
    target = Path(path)
    if not target.is_file():
        return False
    with np.load(target, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    meta = json.loads(str(arrays.pop("meta")))
    if meta.get("key") != key:
        log.info("%s: fitted for other data or settings; refitting", target)
        return False
    featurizer = next(iter(baselines.values())).featurizer
    featurizer.state_lo, featurizer.state_hi = arrays["featurizer.state_lo"], arrays["featurizer.state_hi"]
    featurizer.lidar_lo, featurizer.lidar_hi = (float(v) for v in arrays["featurizer.lidar_range"])
    featurizer.depth_fill_m = float(arrays["featurizer.depth_fill_m"])
    prefix = "featurizer.residual."
    featurizer.residual_var = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
    for name, b in baselines.items():
        if hasattr(b.model, "load_arrays"):
            b.model.load_arrays({k[len(name) + 1:]: v for k, v in arrays.items() if k.startswith(f"{name}.")})
            b.model.set_bounds(featurizer.state_lo, featurizer.state_hi)
        b.report = {**meta["reports"].get(name, {}), "loaded_from": str(target)}
    return True
