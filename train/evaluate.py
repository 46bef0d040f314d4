"""``oniwm eval``: the world model side by side with three baselines on held-out episodes of unseen worlds.

::

    oniwm eval --checkpoint runs/hallway --data data/hallway/cache --json eval.json --plots eval_plots
    oniwm eval --checkpoint runs/cheetah --data data/cheetah/cache --json cheetah.json --plots cheetah_plots

**Windows.** From every episode of the ``eval`` split (world seeds never seen in training), a start tick ``s``
every ``window_every_s`` (robot: moved forward to the next tick with a fresh LiDAR scan and a ground-truth pose)
with ``context_s`` of past and (robot) the whole longest horizon of future inside the episode; gym: every
``gym_window_every`` steps after ``gym_context_steps``, with at least one future step (a step past the end of an
episode is not scored). Every model is scored on exactly these windows with exactly these inputs: the
observations of ticks ``<= s`` and the true actions after ``s``.

**Models.** The world model filters the context (``observe_sequence`` with posterior means, from a zero belief
``context_s`` before ``s``) and imagines ``H`` steps of ``step`` ticks from its belief at ``s`` under the true
actions (a step's action: the mean over its ticks; its dt: their sum), decoding each step's observation and pose
change (:mod:`worldmodel.model`). The baselines (:mod:`train.baselines`: ``last_value``, ``linear``,
``mlp_ensemble``) are fitted on the ``train`` split (``val``: model selection) and predict the same steps.
Robot: ``step`` = ``step_s`` (0.1 s) of ticks, ``H`` = the longest horizon; gym: ``step`` = one env step, ``H`` = 50.

**Metrics** (exact definitions in the JSON's ``method`` section): RMSE of LiDAR ranges and of depth (at the world
model's depth resolution: block means over valid pixels), mean position and heading error of the pose relative
to the start, at the horizons; variance-normalized MSE per step; latent consistency (world model only);
coverage of the 1 and 2 sigma intervals (models with uncertainty); and the same metrics with 5% of sensor
messages dropped (a copy of the eval episodes built with ``drop_prob``: same ticks, same windows, same clean
targets). The JSON also evaluates the project's targets (``targets``); a table goes to stdout, plots to
``--plots``: error against horizon, predicted against true scan at 1 s, calibration.

Exit status: 0 done (whether or not targets pass), 2 bad command line, data or checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    Any,
    Iterable,
    Iterator,
    Mapping,
    NamedTuple,
    Protocol,
    Sequence,
)

import numpy as np

from oni.files import atomic_write, write_json

if TYPE_CHECKING:
    from train.baselines import (
        Baseline,
        BaselineConfig,
        EpisodeFeatures,
        FeatureConfig,
        Featurizer,
        Forecast,
        History,
    )
    from train.dataset import EpisodeArrays
    from worldmodel.model import WorldModel

log = logging.getLogger("train.evaluate")

__all__ = [
    "EVAL_FORMAT",
    "EvalConfig",
    "Forecaster",
    "Targets",
    "WindowBatch",
    "WorldModelForecaster",
    "coverage",
    "cosine_similarity",
    "evaluate",
    "normalized_mse",
    "register",
    "rmse",
    "run",
]

EVAL_FORMAT = "oniwm.eval/1"
#: The world model's name in reports, then the baselines'.
WORLD_MODEL = "worldmodel"
#: Edges of the |error| / sigma histogram kept for calibration (the last bin takes everything beyond).
_Z_EDGES = np.concatenate([np.arange(0.0, 5.0001, 0.05), [np.inf]])
# A target channel whose training variance is below this is constant: it is left out of the normalized MSE.
_MIN_VAR = 1e-10


# --------------------------------------------------------------------------------------------------------------
# Configuration.


@dataclass(frozen=True)
class EvalConfig:
    """Settings of an evaluation (see the module docstring). Times in seconds; ``gym_*`` in env steps.

    ``drop_prob``: sensor message loss of the robustness run (0: skip it). ``max_windows``: evenly spaced subset
    of the windows (None: all). ``features`` / ``baselines``: :mod:`train.baselines` settings (``features.
    depth_factor`` is replaced by the world model's ``image_decode_factor`` when a model is evaluated).
    """

    horizons_s: tuple[float, ...] = (0.5, 1.0, 2.0)
    step_s: float = 0.1
    context_s: float = 1.0
    window_every_s: float = 0.5
    gym_steps: tuple[int, ...] = (1, 5, 10, 25, 50)
    gym_context_steps: int = 10
    gym_window_every: int = 10
    drop_prob: float = 0.05
    batch_size: int = 32
    max_windows: int | None = None
    features: FeatureConfig | None = None      # None: the defaults
    baselines: BaselineConfig | None = None    # None: the defaults

    def __post_init__(self) -> None:
        from train.baselines import BaselineConfig, FeatureConfig

        object.__setattr__(self, "horizons_s", tuple(sorted(float(h) for h in self.horizons_s)))
        object.__setattr__(self, "gym_steps", tuple(sorted(int(k) for k in self.gym_steps)))
        if self.features is None:
            object.__setattr__(self, "features", FeatureConfig())
        if self.baselines is None:
            object.__setattr__(self, "baselines", BaselineConfig())
        if not self.horizons_s or min(self.horizons_s) <= 0 or not self.gym_steps or min(self.gym_steps) < 1:
            raise ValueError(f"eval: horizons_s must be > 0 and gym_steps >= 1, got {self.horizons_s}, {self.gym_steps}")
        for name in ("step_s", "context_s", "window_every_s"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"eval.{name} must be a number > 0, got {getattr(self, name)}")
        if self.gym_context_steps < 1 or self.gym_window_every < 1 or self.batch_size < 1:
            raise ValueError("eval: gym_context_steps, gym_window_every and batch_size must be >= 1")
        if not 0.0 <= self.drop_prob < 1.0:
            raise ValueError(f"eval.drop_prob is a probability in [0, 1), got {self.drop_prob}")
        if self.max_windows is not None and self.max_windows < 1:
            raise ValueError(f"eval.max_windows must be >= 1 or None, got {self.max_windows}")

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("features", "baselines")}
        out["features"] = dataclasses.asdict(self.features)
        out["baselines"] = self.baselines.to_dict()
        return json.loads(json.dumps(out))


# --------------------------------------------------------------------------------------------------------------
# What a model gets and what it is scored against.


class WindowBatch(NamedTuple):
    """The inputs of B windows (identical for every model).

    ``ticks``: per-tick arrays (B, T, ...) of ticks ``s - context ... s + H * step`` (zero-padded past the end of
    an episode): the world model filters ticks ``<= s`` (index ``start``) to predict; the later ticks are there
    only to compute the posterior for latent consistency and never reach a prediction. ``step``: ticks per
    imagined step; ``actions`` (B, H, A): each step's action (mean over its ticks); ``dt`` (B, H) s: each step's
    duration; ``history``: the baselines' inputs at ``s`` (:class:`train.baselines.History`); ``future`` (B, H)
    bool: the step ends inside the episode.
    """

    ticks: dict[str, np.ndarray]
    start: int
    step: int
    actions: np.ndarray
    dt: np.ndarray
    history: History
    future: np.ndarray


class Targets(NamedTuple):
    """The truth at each step's end tick, with masks (B, H) of where it counts: ``lidar`` (B, H, N) m where a new
    scan arrived at that tick; ``depth`` (B, H, h, w) m (evaluation resolution) with ``depth_mask`` per block:
    a new frame at that tick and the block has a valid pixel; ``pose`` (B, H, 3) relative to the start pose
    (``[x m, y m, yaw rad]`` in the start frame) where both poses are known; ``obs`` (B, H, D) (gym);
    ``lidar_return`` (B, H, N): the beam's true reading is a return (below the maximum range seen in training), not
    a miss or a dropped beam, which read the maximum range."""

    lidar: np.ndarray | None
    lidar_mask: np.ndarray | None
    depth: np.ndarray | None
    depth_mask: np.ndarray | None
    pose: np.ndarray | None
    pose_mask: np.ndarray | None
    obs: np.ndarray | None
    obs_mask: np.ndarray | None
    lidar_return: np.ndarray | None = None


class Forecaster(Protocol):
    """What the evaluator needs of a model: ``keys``, the per-tick arrays it reads from :attr:`WindowBatch.ticks`,
    and ``forecast(batch) -> (Forecast, latent cosine (B, H) or None)`` (:class:`train.baselines.Forecast`)."""

    keys: tuple[str, ...]
    depth_factor: int | None

    def forecast(self, batch: WindowBatch) -> tuple[Forecast, np.ndarray | None]: ...


class WorldModelForecaster:
    """:class:`worldmodel.model.WorldModel` as a :class:`Forecaster`.

    The filter runs over the whole window (posterior means); the belief at the start tick is imagined forward
    under the step actions; the posterior at each step's end tick gives the latent-consistency reference.
    """

    def __init__(self, model: WorldModel) -> None:
        self.model = model.eval()
        cfg = model.config
        keys = []
        for spec in cfg.modalities:
            keys += [spec.name, f"{spec.name}_mask", f"{spec.name}_age"]
        self.keys = (*keys, "action", "dt")
        self.names = tuple(spec.name for spec in cfg.modalities if spec.name in ("lidar", "depth", "obs"))
        self.depth_factor = cfg.image_decode_factor if any(s.kind == "image" for s in cfg.modalities) else None

    def forecast(self, batch: WindowBatch) -> tuple[Forecast, np.ndarray]:
        import torch

        from train.baselines import Forecast
        from worldmodel.model import POSE, State, relative_trajectory

        model = self.model
        with torch.no_grad():
            inputs = {k: torch.from_numpy(np.ascontiguousarray(batch.ticks[k], dtype=np.float32)) for k in self.keys}
            seq = model.observe_sequence(inputs, sample=False)
            c = batch.start
            belief = State(seq.states.deter[:, c], seq.states.stoch[:, c])
            dt = torch.from_numpy(batch.dt.astype(np.float32))
            imagined = model.imagine(belief, torch.from_numpy(batch.actions.astype(np.float32)), dt)
            names = self.names + ((POSE,) if model.config.pose_head else ())
            pred = model.predict(imagined, dt, names)
            mean = {n: pred[n].mean.numpy() for n in self.names}
            std = {n: pred[n].std.numpy() for n in self.names}
            if model.config.pose_head:
                pose_mean, pose_var = relative_trajectory(pred[POSE])
                mean["pose"], std["pose"] = pose_mean.numpy(), pose_var.clamp_min(0.0).sqrt().numpy()
            ends = c + batch.step * torch.arange(1, batch.actions.shape[1] + 1)
            posterior = model.latent(State(seq.states.deter[:, ends], seq.states.stoch[:, ends]))
            cos = torch.nn.functional.cosine_similarity(model.latent(imagined), posterior, dim=-1).numpy()
        return Forecast(mean, std), cos


class _BaselineForecaster:
    """A fitted :class:`train.baselines.Baseline` as a :class:`Forecaster` (it reads only the history)."""

    keys: tuple[str, ...] = ()
    depth_factor = None

    def __init__(self, baseline: Baseline) -> None:
        self.baseline = baseline

    def forecast(self, batch: WindowBatch) -> tuple[Forecast, None]:
        return self.baseline.predict(batch.history, batch.actions), None


# --------------------------------------------------------------------------------------------------------------
# Metric math (pure functions; the accumulators below sum their parts).


def rmse(squared_error_sum: float, count: float) -> float:
    """Root mean squared error from a sum of squared errors over ``count`` elements (NaN when there are none)."""
    return math.sqrt(squared_error_sum / count) if count > 0 else math.nan


def normalized_mse(squared_error_sum: np.ndarray, count: np.ndarray, variance: np.ndarray) -> float:
    """Variance-normalized MSE: per channel ``c``, ``MSE_c / var_c`` (``MSE_c = squared_error_sum[c] / count[c]``,
    ``var_c`` the training split's variance of that target channel), averaged over the channels that have data
    (``count > 0``) and are not constant in training (``var > 1e-10``). NaN when no channel qualifies."""
    use = (count > 0) & (variance > _MIN_VAR)
    if not use.any():
        return math.nan
    return float(np.mean(squared_error_sum[use] / count[use] / variance[use]))


def coverage(z_counts: np.ndarray, sigmas: float, edges: np.ndarray = _Z_EDGES) -> float:
    """Fraction of errors below ``sigmas`` predicted standard deviations, from a histogram ``z_counts`` of
    ``|error| / sigma`` over ``edges`` (``sigmas`` must be one of the edges). NaN for an empty histogram."""
    total = z_counts.sum()
    if total <= 0:
        return math.nan
    index = int(np.flatnonzero(np.isclose(edges, sigmas))[0])
    return float(z_counts[:index].sum() / total)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of ``a`` and ``b`` (..., D) along the last axis (0 where either is the zero vector)."""
    num = (a * b).sum(axis=-1)
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)


class _Scores:
    """Sums for every metric of one model under one condition, per step k = 1..H."""

    def __init__(self, horizon: int, channels: Mapping[str, int]) -> None:
        self.horizon = horizon
        # Squared error sums and element counts; "lidar_returns": LiDAR beams whose truth is a return.
        names = [*channels, *(["lidar_returns"] if "lidar" in channels else [])]
        self.sq = {q: np.zeros(horizon) for q in names}
        self.n = {q: np.zeros(horizon) for q in names}
        self.chan_sq = {q: np.zeros((horizon, c)) for q, c in channels.items()}
        self.chan_n = {q: np.zeros((horizon, c)) for q, c in channels.items()}
        self.pos = np.zeros(horizon)
        self.head = np.zeros(horizon)
        self.pose_n = np.zeros(horizon)
        self.z: dict[str, np.ndarray] = {}
        self.cos = np.zeros(horizon)
        self.cos_n = np.zeros(horizon)

    def _z(self, name: str, err: np.ndarray, std: np.ndarray) -> None:
        counts = np.histogram(np.abs(err) / np.maximum(std, 1e-12), bins=_Z_EDGES)[0]
        self.z[name] = self.z.get(name, np.zeros(len(_Z_EDGES) - 1)) + counts

    def add(self, forecast: Forecast, targets: Targets, cos: np.ndarray | None, future: np.ndarray) -> None:
        from train.baselines import wrap_angle

        for q, truth, mask in (("lidar", targets.lidar, targets.lidar_mask), ("depth", targets.depth, targets.depth_mask),
                               ("obs", targets.obs, targets.obs_mask)):
            if truth is None or q not in forecast.mean:
                continue
            b, horizon = truth.shape[:2]
            pred = forecast.mean[q].reshape(b, horizon, -1)
            err = pred - truth.reshape(b, horizon, -1)
            m = (mask.reshape(b, horizon, -1) * np.ones_like(err)) > 0
            sq = np.where(m, err * err, 0.0)
            self.chan_sq[q] += sq.sum(axis=0)
            self.chan_n[q] += m.sum(axis=0)
            self.sq[q] += sq.sum(axis=(0, 2))
            self.n[q] += m.sum(axis=(0, 2))
            if q in forecast.std:
                self._z(q, err[m], forecast.std[q].reshape(b, horizon, -1)[m])
            if q == "lidar" and targets.lidar_return is not None:
                r = m & targets.lidar_return
                self.sq["lidar_returns"] += np.where(r, err * err, 0.0).sum(axis=(0, 2))
                self.n["lidar_returns"] += r.sum(axis=(0, 2))
        if targets.pose is not None and "pose" in forecast.mean:
            m = targets.pose_mask > 0
            err = forecast.mean["pose"] - targets.pose
            err[..., 2] = wrap_angle(err[..., 2])
            self.pos += np.where(m, np.linalg.norm(err[..., :2], axis=-1), 0.0).sum(axis=0)
            self.head += np.where(m, np.abs(err[..., 2]), 0.0).sum(axis=0)
            self.pose_n += m.sum(axis=0)
            if "pose" in forecast.std:
                std = forecast.std["pose"]
                self._z("position", err[m][:, :2].reshape(-1), std[m][:, :2].reshape(-1))
                self._z("heading", err[m][:, 2], std[m][:, 2])
        if cos is not None:
            self.cos += np.where(future, cos, 0.0).sum(axis=0)
            self.cos_n += future.sum(axis=0)


# --------------------------------------------------------------------------------------------------------------
# Episodes and windows.


@dataclass
class _EvalEpisode:
    """An eval episode with what windows need: its baseline features, and its LiDAR and evaluation-resolution depth
    messages (``(values, index)`` as in :class:`train.dataset.EpisodeArrays`)."""

    ep: EpisodeArrays
    featurizer: Featurizer
    features: EpisodeFeatures
    lidar: tuple[np.ndarray, np.ndarray] | None = None
    depth: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None   # pooled, count, index


def _prepare(ep: EpisodeArrays, featurizer: Featurizer) -> _EvalEpisode:
    from train.baselines import held_frames

    item = _EvalEpisode(ep, featurizer, featurizer.features(ep))
    if "lidar" in featurizer.slices:
        item.lidar = held_frames(ep, "lidar")
    if "depth" in featurizer.slices:
        pooled, count, index = featurizer.depth_frames(ep)
        item.depth = (pooled, count, index)
    return item


class _Layout(NamedTuple):
    """The window geometry: ``step`` ticks per step, ``horizon`` steps H, ``context`` ticks before the start,
    ``history`` baseline states, and the step index (1-based) of each reported horizon."""

    gym: bool
    step: int
    horizon: int
    context: int
    history: int
    report_steps: tuple[int, ...]
    control_hz: float


def _layout(ep: EpisodeArrays, cfg: EvalConfig, history: int) -> _Layout:
    hz = float(ep.meta["control_hz"])
    if ep.spec.obs_dim:
        ctx = max(cfg.gym_context_steps, history - 1)
        return _Layout(True, 1, max(cfg.gym_steps), ctx, history, cfg.gym_steps, hz)
    step = max(1, int(round(cfg.step_s * hz)))
    steps = tuple(max(1, int(round(h * hz / step))) for h in cfg.horizons_s)
    ctx = max(int(round(cfg.context_s * hz)), (history - 1) * step)
    return _Layout(False, step, max(steps), ctx, history, steps, hz)


def _windows(eps: Sequence[_EvalEpisode], lay: _Layout, cfg: EvalConfig) -> list[tuple[int, int]]:
    """(episode index, start tick) of every window, in episode order; an evenly spaced subset of
    ``max_windows`` when asked."""
    out: list[tuple[int, int]] = []
    for i, item in enumerate(eps):
        ep, t_len = item.ep, len(item.ep)
        ready = item.features.ready
        if lay.gym:
            for s in range(lay.context, t_len - 1, cfg.gym_window_every):
                if ready[s - (lay.history - 1)]:
                    out.append((i, s))
            continue
        every = max(1, int(round(cfg.window_every_s * lay.control_hz)))
        last = t_len - 1 - lay.horizon * lay.step
        good = ready.copy()
        if "lidar" in ep:
            good &= ep["lidar_mask"] > 0
        if item.features.pose_mask is not None:
            good &= item.features.pose_mask
        for s0 in range(lay.context, last + 1, every):
            hits = np.flatnonzero(good[s0: min(s0 + every, last + 1)])
            if len(hits):
                out.append((i, s0 + int(hits[0])))
    if cfg.max_windows is not None and len(out) > cfg.max_windows:
        pick = np.linspace(0, len(out) - 1, cfg.max_windows).round().astype(int)
        out = [out[j] for j in pick]
    return out


def _step_inputs(ep: EpisodeArrays, s: int, lay: _Layout) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Step actions (H, A), durations (H,) s and in-episode flags (H,) of the window at ``s``: step k covers ticks
    ``[s + (k-1) * step, s + k * step)``, its action the mean over them, its dt the sum of ``dt`` over
    ``(begin, end]`` (as the world model is trained); steps past the episode's end: zero action, nominal dt."""
    t_len = len(ep)
    action, dt = ep["action"], ep["dt"]
    acts = np.zeros((lay.horizon, action.shape[1]), np.float32)
    dts = np.full(lay.horizon, lay.step / lay.control_hz, np.float32)
    future = np.zeros(lay.horizon, bool)
    for k in range(lay.horizon):
        begin, end = s + k * lay.step, s + (k + 1) * lay.step
        if end >= t_len:
            break
        acts[k] = action[begin:end].mean(axis=0)
        dts[k] = dt[begin + 1: end + 1].sum()
        future[k] = True
    return acts, dts, future


def _batch(eps: Sequence[_EvalEpisode], windows: Sequence[tuple[int, int]], lay: _Layout, keys: Sequence[str]) -> WindowBatch:
    """Inputs of ``windows`` from ``eps`` (the clean or the lossy copy of the eval episodes)."""
    from train.baselines import stack_histories

    length = lay.context + lay.horizon * lay.step + 1
    ticks: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    acts, dts, futures, histories = [], [], [], []
    for i, s in windows:
        item = eps[i]
        ep = item.ep
        begin, stop = s - lay.context, min(s + lay.horizon * lay.step + 1, len(ep))
        window = ep.window(begin, stop, keys)
        for k in keys:
            v = window[k]
            if len(v) < length:
                v = np.concatenate([v, np.zeros((length - len(v), *v.shape[1:]), v.dtype)])
            ticks[k].append(v)
        a, d, f = _step_inputs(ep, s, lay)
        acts.append(a)
        dts.append(d)
        futures.append(f)
        histories.append(item.featurizer.history(item.features, ep, s, lay.step, lay.history))
    return WindowBatch({k: np.stack(v) for k, v in ticks.items()}, lay.context, lay.step, np.stack(acts),
                       np.stack(dts), stack_histories(histories), np.stack(futures))


def _targets(eps: Sequence[_EvalEpisode], windows: Sequence[tuple[int, int]], lay: _Layout) -> Targets:
    """The clean truth at each step's end tick (see :class:`Targets`)."""
    from train.baselines import relative_pose

    parts: dict[str, list[np.ndarray]] = {}

    def put(name: str, value: np.ndarray) -> None:
        parts.setdefault(name, []).append(value)

    for i, s in windows:
        item = eps[i]
        ep, t_len = item.ep, len(item.ep)
        ends = s + lay.step * np.arange(1, lay.horizon + 1)
        inside = ends < t_len
        e = np.minimum(ends, t_len - 1)
        valid = inside & (ep["valid"][e] > 0)
        if item.lidar is not None:
            frames, index = item.lidar
            scans = np.where(index[e, None] >= 0, frames[np.maximum(index[e], 0)], 0.0)
            put("lidar", scans)
            put("lidar_mask", valid & (ep["lidar_mask"][e] > 0) & (index[e] >= 0))
            put("lidar_return", scans < item.featurizer.lidar_hi - 1e-3)
        if item.depth is not None:
            pooled, count, index = item.depth
            fresh = valid & (ep["depth_mask"][e] > 0) & (index[e] >= 0)
            put("depth", pooled[np.maximum(index[e], 0)])
            put("depth_mask", fresh[:, None, None] & (count[np.maximum(index[e], 0)] > 0))
        if item.features.pose is not None:
            pose, pm = item.features.pose, item.features.pose_mask
            put("pose", relative_pose(pose[s][None], pose[e]))
            put("pose_mask", valid & pm[e] & pm[s])
        if "obs" in ep:
            put("obs", ep["obs"][e])
            put("obs_mask", valid & (ep["obs_mask"][e] > 0))
    stacked = {k: np.stack(v) for k, v in parts.items()}
    return Targets(*(stacked.get(f) for f in Targets._fields))


# --------------------------------------------------------------------------------------------------------------
# Target variances (the normalized MSE's denominators), from the training split.


class _TargetVariance:
    """Per-channel variance of each evaluated target over the training split: LiDAR per beam (each scan once),
    depth per evaluation-resolution block (each frame once, blocks with a valid pixel), gym observations per
    element (ticks with a new observation)."""

    def __init__(self, featurizer: Featurizer) -> None:
        self.featurizer = featurizer
        self.sums: dict[str, list[np.ndarray]] = {}

    def _add(self, name: str, values: np.ndarray, weight: np.ndarray) -> None:
        v = values.astype(np.float64)
        w = weight.astype(np.float64)
        part = [w.sum(axis=0), (w * v).sum(axis=0), (w * v * v).sum(axis=0)]
        if name in self.sums:
            self.sums[name] = [a + b for a, b in zip(self.sums[name], part)]
        else:
            self.sums[name] = part

    def visit(self, ep: EpisodeArrays) -> None:
        from train.baselines import held_frames

        f = self.featurizer
        if f.gym:
            mask = ep["obs_mask"] > 0
            self._add("obs", ep["obs"][mask], np.ones((int(mask.sum()), ep.spec.obs_dim)))
            return
        if "lidar" in f.slices:
            frames, _ = held_frames(ep, "lidar")
            self._add("lidar", frames, np.ones_like(frames))
        if "depth" in f.slices:
            pooled, count, _ = f.depth_frames(ep)
            m = len(pooled)
            self._add("depth", pooled.reshape(m, -1), (count > 0).reshape(m, -1))

    def result(self) -> dict[str, np.ndarray]:
        out = {}
        for name, (n, s, ss) in self.sums.items():
            mean = s / np.maximum(n, 1.0)
            out[name] = np.where(n > 1, ss / np.maximum(n, 1.0) - mean * mean, 0.0).clip(min=0.0)
        return out


# --------------------------------------------------------------------------------------------------------------
# The evaluation.


def _depth_fill(ep: EpisodeArrays) -> float:
    """Depth (m) of a block with no return: the camera's range from the robot description in the log, else the
    largest depth in this (training) episode."""
    text = ep.meta.get("robot_description") or ""
    if text:
        import yaml

        from robots.description import DescriptionError, robot_from_dict

        try:
            robot = robot_from_dict(yaml.safe_load(text)["robot"])
            cameras = robot.sensors_of_kind("depth")
            if cameras:
                return float(cameras[0].params.range_max_m)
        except (DescriptionError, KeyError, TypeError, ValueError) as exc:
            log.warning("robot description of %s unreadable (%s): depth fill from the data", ep.meta.get("file"), exc)
    from train.baselines import held_frames

    frames, _ = held_frames(ep, "depth")
    return float(frames.max()) if frames.size else 1.0


def _fit_key(train_ids: Sequence[str], lay: _Layout, cfg: EvalConfig, features: FeatureConfig) -> str:
    doc = {"train": sorted(train_ids), "step": lay.step, "horizon": lay.horizon, "history": lay.history,
           "features": dataclasses.asdict(features), "baselines": cfg.baselines.to_dict(), "version": 1}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def evaluate(
    eval_episodes: Sequence[EpisodeArrays],
    train_episodes: Iterable[EpisodeArrays],
    val_episodes: Sequence[EpisodeArrays],
    model: Forecaster | None,
    config: EvalConfig | None = None,
    lossy_episodes: Sequence[EpisodeArrays] | None = None,
    plots_dir: str | os.PathLike[str] | None = None,
    baselines_file: str | os.PathLike[str] | None = None,
    train_ids: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` (a :class:`Forecaster`, or None for the baselines alone) and the baselines on windows of
    ``eval_episodes``; returns the report (the JSON document). Baselines are fitted on ``train_episodes`` (read
    once, one at a time) with ``val_episodes`` for model selection, or loaded from ``baselines_file`` when it holds
    a fit of the same training data (``train_ids``, e.g. cache file names) and settings; a new fit is saved there.
    ``lossy_episodes``: the eval episodes with dropped messages (same order and ticks) for the robustness metric.
    ``plots_dir``: where the PNGs go (None: no plots). ``config`` None: :class:`EvalConfig` defaults."""
    from train.baselines import (
        BASELINES,
        Featurizer,
        load_baselines,
        make_baselines,
        save_baselines,
    )

    config = config if config is not None else EvalConfig()
    t_start = time.perf_counter()
    if not eval_episodes:
        raise ValueError("no eval episodes: the eval split is empty (more episodes, or set dataset.eval_seeds)")
    if lossy_episodes is not None and (len(lossy_episodes) != len(eval_episodes) or any(
            not np.array_equal(a.ticks_ns, b.ticks_ns) for a, b in zip(eval_episodes, lossy_episodes))):
        raise ValueError("the lossy eval episodes do not match the clean ones tick for tick (rebuild the lossy copy)")
    first = eval_episodes[0]
    spec = first.spec
    features_cfg = config.features
    if model is not None and model.depth_factor is not None:
        features_cfg = dataclasses.replace(features_cfg, depth_factor=model.depth_factor)
    train_iter = iter(train_episodes)
    try:
        first_train = next(train_iter)
    except StopIteration:
        raise ValueError("no train episodes: the baselines need the train split") from None
    fill = _depth_fill(first_train) if spec.depth_height else 1.0
    featurizer = Featurizer(spec, features_cfg, fill)
    baselines = make_baselines(featurizer, config.baselines)
    history = max(b.history_steps for b in baselines.values())
    lay = _layout(first, config, history)
    variance = _TargetVariance(featurizer)
    train_list = _chain(first_train, train_iter)
    key = None if train_ids is None else _fit_key(train_ids, lay, config, features_cfg)

    t_fit = time.perf_counter()
    train_feats = featurizer.fit(train_list, lay.step, lay.horizon, visit=variance.visit)
    loaded = baselines_file is not None and key is not None and load_baselines(baselines_file, baselines, key)
    if not loaded:
        val_feats = [featurizer.features(ep) for ep in val_episodes]
        for b in baselines.values():
            b.fit(train_feats, val_feats, lay.step)
        if baselines_file is not None and key is not None:
            save_baselines(baselines_file, baselines, key)
    del train_feats
    fit_s = time.perf_counter() - t_fit
    target_var = variance.result()

    clean = [_prepare(ep, featurizer) for ep in eval_episodes]
    conditions: dict[str, list[_EvalEpisode]] = {"clean": clean}
    if lossy_episodes is not None and config.drop_prob > 0:
        conditions["dropout"] = [_prepare(ep, featurizer) for ep in lossy_episodes]
    windows = _windows(clean, lay, config)
    if not windows:
        raise ValueError(f"no eval window: episodes shorter than {lay.context + lay.horizon * lay.step + 1} ticks")
    forecasters: dict[str, Any] = {}
    if model is not None:
        forecasters[WORLD_MODEL] = model
    forecasters.update({name: _BaselineForecaster(baselines[name]) for name in BASELINES})
    keys = sorted({k for f in forecasters.values() for k in f.keys})
    channels = _channels(clean[0], featurizer)
    scores = {c: {m: _Scores(lay.horizon, channels) for m in forecasters} for c in conditions}
    example = _Example(lay)
    t_eval = time.perf_counter()
    for b0 in range(0, len(windows), config.batch_size):
        chunk = windows[b0: b0 + config.batch_size]
        targets = _targets(clean, chunk, lay)
        for cond, items in conditions.items():
            batch = _batch(items, chunk, lay, keys)
            for name, forecaster in forecasters.items():
                forecast, cos = forecaster.forecast(batch)
                scores[cond][name].add(forecast, targets, cos, batch.future)
                if cond == "clean":
                    example.offer(name, forecast, targets, b0)
        log.info("evaluated %d / %d windows", min(b0 + config.batch_size, len(windows)), len(windows))
    eval_s = time.perf_counter() - t_eval

    doc = _report(scores, lay, config, target_var, first, windows, eval_episodes, baselines, loaded)
    doc["config"]["features"] = json.loads(json.dumps(dataclasses.asdict(featurizer.config)))  # as used
    doc["timing_s"] = {"fit_baselines": round(fit_s, 2), "evaluate": round(eval_s, 2),
                       "total": round(time.perf_counter() - t_start, 2)}
    if plots_dir is not None:
        doc["plots"] = _plots(Path(plots_dir), scores["clean"], lay, example, target_var)
    return doc


def _chain(first: EpisodeArrays, rest: Iterator[EpisodeArrays]) -> Iterator[EpisodeArrays]:
    yield first
    yield from rest


def _channels(item: _EvalEpisode, featurizer: Featurizer) -> dict[str, int]:
    out = {}
    if item.lidar is not None:
        out["lidar"] = item.lidar[0].shape[-1]
    if item.depth is not None:
        out["depth"] = int(np.prod(item.depth[0].shape[-2:]))
    if featurizer.gym:
        out["obs"] = featurizer.spec.obs_dim
    return out


class _Example:
    """One window kept for the scan plot: the first with a new scan at the step nearest 1 s."""

    def __init__(self, lay: _Layout) -> None:
        self.k = _report_index(lay, 1.0)
        self.truth: np.ndarray | None = None
        self.where: tuple[int, int] | None = None     # (first window of its batch, index in the batch)
        self.mean: dict[str, np.ndarray] = {}
        self.std: dict[str, np.ndarray] = {}

    def offer(self, name: str, forecast: Forecast, targets: Targets, batch_start: int) -> None:
        """Keep model ``name``'s prediction of the chosen window, choosing it in the first batch that has one."""
        if targets.lidar is None or "lidar" not in forecast.mean:
            return
        if self.where is None:
            hits = np.flatnonzero(targets.lidar_mask[:, self.k])
            if not len(hits):
                return
            self.where = (batch_start, int(hits[0]))
            self.truth = targets.lidar[self.where[1], self.k]
        if batch_start != self.where[0]:
            return
        self.mean[name] = forecast.mean["lidar"][self.where[1], self.k]
        if "lidar" in forecast.std:
            self.std[name] = forecast.std["lidar"][self.where[1], self.k]


def _report_index(lay: _Layout, seconds: float) -> int:
    """0-based step index of the reported horizon nearest to ``seconds`` (robot) or of that many steps (gym)."""
    steps = np.array(lay.report_steps)
    if lay.gym:
        return int(steps[np.argmin(np.abs(steps - seconds))]) - 1
    times = steps * lay.step / lay.control_hz
    return int(steps[np.argmin(np.abs(times - seconds))]) - 1


# --------------------------------------------------------------------------------------------------------------
# The report.


def _num(x: float) -> float | None:
    """JSON-safe number: NaN (no data) becomes null."""
    return None if x is None or not math.isfinite(x) else float(x)


def _model_metrics(s: _Scores, lay: _Layout, target_var: Mapping[str, np.ndarray]) -> dict[str, Any]:
    idx = [k - 1 for k in lay.report_steps]
    out: dict[str, Any] = {}
    if lay.gym:
        nmse = [normalized_mse(s.chan_sq["obs"][k], s.chan_n["obs"][k], target_var["obs"]) for k in range(lay.horizon)]
        out["nmse_at_k"] = {str(k + 1): _num(nmse[k]) for k in idx}
        out["obs_rmse"] = [_num(rmse(s.sq["obs"][k], s.n["obs"][k])) for k in idx]
        out["nmse_per_step"] = {"obs": [_num(v) for v in nmse]}
        out["counts"] = {"obs": [int(s.n["obs"][k] / max(target_var["obs"].size, 1)) for k in idx]}
    else:
        for q, key in (("lidar", "lidar_rmse_m"), ("lidar_returns", "lidar_rmse_returns_m"), ("depth", "depth_rmse_m")):
            if q in s.sq:
                out[key] = [_num(rmse(s.sq[q][k], s.n[q][k])) for k in idx]
        out["position_error_m"] = [_num(s.pos[k] / s.pose_n[k]) if s.pose_n[k] else None for k in idx]
        out["heading_error_rad"] = [_num(s.head[k] / s.pose_n[k]) if s.pose_n[k] else None for k in idx]
        out["nmse_per_step"] = {q: [_num(normalized_mse(s.chan_sq[q][k], s.chan_n[q][k], target_var[q])) for k in range(lay.horizon)]
                                for q in s.chan_sq}
        out["per_step"] = {
            **{f"{q}_rmse_m": [_num(rmse(s.sq[q][k], s.n[q][k])) for k in range(lay.horizon)] for q in s.sq},
            "position_error_m": [_num(s.pos[k] / s.pose_n[k]) if s.pose_n[k] else None for k in range(lay.horizon)],
            "heading_error_rad": [_num(s.head[k] / s.pose_n[k]) if s.pose_n[k] else None for k in range(lay.horizon)],
        }
        out["counts"] = {"pose_windows": [int(s.pose_n[k]) for k in idx]}
        if "lidar" in s.chan_n:
            out["counts"]["lidar_windows"] = [int(s.chan_n["lidar"][k].max()) for k in idx]
        if "depth" in s.chan_n:
            out["counts"]["depth_blocks"] = [int(s.n["depth"][k]) for k in idx]
    if s.cos_n.sum() > 0:
        out["latent_consistency"] = _num(s.cos.sum() / s.cos_n.sum())
        out["latent_consistency_per_step"] = [_num(s.cos[k] / s.cos_n[k]) if s.cos_n[k] else None for k in range(lay.horizon)]
    else:
        out["latent_consistency"] = None
    if s.z:
        cov = {q: {"1sigma": _num(coverage(z, 1.0)), "2sigma": _num(coverage(z, 2.0)), "count": int(z.sum())} for q, z in s.z.items()}
        out["coverage"] = cov
        ones = [c["1sigma"] for c in cov.values() if c["1sigma"] is not None]
        twos = [c["2sigma"] for c in cov.values() if c["2sigma"] is not None]
        out["coverage_1sigma"] = _num(float(np.mean(ones))) if ones else None
        out["coverage_2sigma"] = _num(float(np.mean(twos))) if twos else None
    else:
        out["coverage_1sigma"] = out["coverage_2sigma"] = None
    return out


def _report(scores: Mapping[str, Mapping[str, _Scores]], lay: _Layout, cfg: EvalConfig, target_var: Mapping[str, np.ndarray],
            first: EpisodeArrays, windows: Sequence[tuple[int, int]], eval_eps: Sequence[EpisodeArrays],
            baselines: Mapping[str, Baseline], loaded: bool) -> dict[str, Any]:
    models: dict[str, Any] = {}
    for name, s in scores["clean"].items():
        m = _model_metrics(s, lay, target_var)
        if "dropout" in scores:
            lossy = _model_metrics(scores["dropout"][name], lay, target_var)
            increase = {}
            for key in ("lidar_rmse_m", "depth_rmse_m", "position_error_m", "heading_error_rad", "obs_rmse"):
                if key in m:
                    increase[key] = [_num(b / a - 1.0) if a and b is not None else None for a, b in zip(m[key], lossy[key])]
            rel = [v for v in increase["obs_rmse" if lay.gym else ("lidar_rmse_m" if "lidar_rmse_m" in increase else "position_error_m")] if v is not None]
            m["dropout_rmse_increase"] = _num(float(np.mean(rel))) if rel else None
            m["dropout"] = {"drop_prob": cfg.drop_prob, "relative_increase": increase,
                            **{k: lossy[k] for k in increase}, "latent_consistency": lossy["latent_consistency"]}
        else:
            m["dropout_rmse_increase"] = None
        models[name] = m
    seconds = [k * lay.step / lay.control_hz for k in lay.report_steps]
    doc: dict[str, Any] = {
        "format": EVAL_FORMAT,
        "kind": "gym" if lay.gym else "robot",
        "env": first.meta.get("robot", ""),
        "horizons_s": [round(t, 6) for t in seconds],
        "step_s": lay.step / lay.control_hz,
        "steps": lay.horizon,
        "windows": {"count": len(windows), "episodes": len({i for i, _ in windows}),
                    "seeds": sorted({eval_eps[i].meta.get("seed") for i, _ in windows if eval_eps[i].meta.get("seed") is not None}),
                    "context_s": lay.context / lay.control_hz},
        "models": models,
        "baselines": {name: {"report": b.report, "loaded": loaded} for name, b in baselines.items()},
        "config": cfg.to_dict(),
        "method": _method(lay),
    }
    if lay.gym:
        doc["steps_k"] = list(lay.report_steps)
    doc["targets"] = _evaluate_targets(models, lay)
    return doc


def _method(lay: _Layout) -> dict[str, str]:
    return {
        "windows": "start ticks every window_every_s (robot: moved to the next tick with a new LiDAR scan and a "
                   "ground-truth pose) in eval-split episodes (world seeds unseen in training), with context_s of "
                   "past and the longest horizon of future; identical windows and inputs (observations up to the "
                   "start, true actions after it) for every model",
        "steps": f"one step = {lay.step} ticks ({lay.step / lay.control_hz:g} s); its action is the mean of the tick "
                 "actions over it, its dt the sum of their dts; horizon h is scored at the end of step "
                 "round(h / step_s)",
        "lidar_rmse_m": "sqrt(mean over windows whose step-end tick has a new scan, and over beams, of (predicted - "
                        "true range)^2); true = that scan",
        "lidar_rmse_returns_m": "as lidar_rmse_m over the beams whose true reading is a return (below the maximum "
                                "range seen in training): leaves out misses and dropped beams (which read the maximum "
                                "range at random and set a noise floor under lidar_rmse_m)",
        "depth_rmse_m": "as lidar_rmse_m over depth blocks at the world model's decode resolution (block means over "
                        "valid pixels), windows whose step-end tick has a new frame, blocks with a valid pixel",
        "position_error_m": "mean Euclidean distance between predicted and true (x, y) relative to the start pose, "
                            "in the start frame (ground truth from the dataset's pose)",
        "heading_error_rad": "mean |wrap(predicted yaw - true yaw)|, yaw relative to the start",
        "nmse_per_step": "for step k = 1..H: per target channel c (LiDAR beam, depth block, gym observation "
                         "element), MSE_k,c / var_c with var_c the variance of that channel's values over the train "
                         "split (each scan/frame once; depth over valid blocks); averaged over channels with data "
                         "and var_c > 1e-10",
        "latent_consistency": "cosine similarity between the imagined latent [deter, stoch] after k steps under the "
                              "known actions and the filter's posterior-mean latent at the same tick, averaged over "
                              "steps k = 1..H and windows (world model only)",
        "coverage": "fraction of |true - predicted mean| < 1 (2) predicted std, per quantity (LiDAR beams, depth "
                    "blocks, position x and y, heading; gym: observation elements) over every step k = 1..H; "
                    "coverage_1sigma / coverage_2sigma average the quantities (ideal: 0.683 / 0.954)",
        "dropout_rmse_increase": "with sensor messages dropped at drop_prob (same episodes, ticks, windows and clean "
                                 "targets), relative increase of the LiDAR RMSE (gym: observation RMSE), "
                                 "lossy / clean - 1, averaged over the horizons",
        "baselines": "last_value: hold the latest observations, no motion. linear: ridge least squares on the "
                     "compact state's history (latest state and step differences) and the step action -> state "
                     "change and motion, rolled out. mlp_ensemble: PETS, 5 bootstrapped probabilistic MLPs on "
                     "(compact state, action) -> Gaussian over (state change, motion), trajectory sampling TS-inf "
                     "with 20 particles; prediction = particle mean, std = particle spread plus the variance the "
                     "compact state cannot represent. Robot predictions = last observation + spread predicted "
                     "change of the compact state (LiDAR sector medians, depth block means, odometry v and omega); "
                     "see train/baselines.py",
    }


def _evaluate_targets(models: Mapping[str, Any], lay: _Layout) -> dict[str, Any]:
    wm = models.get(WORLD_MODEL)
    base = {n: m for n, m in models.items() if n != WORLD_MODEL}
    out: dict[str, Any] = {}

    def verdict(ok: bool | None, value: Any, threshold: str) -> dict[str, Any]:
        return {"pass": ok, "value": value, "threshold": threshold}

    if lay.gym:
        ks = [k for k in lay.report_steps if k >= 10]
        if wm is None:
            out["nmse_below_mlp_ensemble_k_ge_10"] = verdict(None, None, "worldmodel < mlp_ensemble at every k >= 10")
            return out
        values = {str(k): {"worldmodel": wm["nmse_at_k"][str(k)], "mlp_ensemble": base["mlp_ensemble"]["nmse_at_k"][str(k)]} for k in ks}
        ok = all(v["worldmodel"] is not None and v["mlp_ensemble"] is not None and v["worldmodel"] < v["mlp_ensemble"]
                 for v in values.values())
        out["nmse_below_mlp_ensemble_k_ge_10"] = verdict(ok if ks else None, values, "worldmodel < mlp_ensemble at every k >= 10")
        return out
    i1 = lay.report_steps.index(_report_index(lay, 1.0) + 1)
    for key, label in (("lidar_rmse_m", "lidar"), ("position_error_m", "position")):
        if wm is None or key not in wm:
            out[f"beats_every_baseline_{label}"] = verdict(None, None, "worldmodel < every baseline at every horizon")
            out[f"margin_1s_{label}"] = verdict(None, None, ">= 0.25 below the best baseline at 1 s")
            continue
        best = [min((m[key][i] for m in base.values() if m[key][i] is not None), default=None) for i in range(len(lay.report_steps))]
        ok = all(w is not None and b is not None and w < b for w, b in zip(wm[key], best))
        out[f"beats_every_baseline_{label}"] = verdict(ok, {"worldmodel": wm[key], "best_baseline": best},
                                                       "worldmodel < every baseline at every horizon")
        w1, b1 = wm[key][i1], best[i1]
        margin = _num(1.0 - w1 / b1) if w1 is not None and b1 else None
        out[f"margin_1s_{label}"] = verdict(None if margin is None else margin >= 0.25, margin,
                                            ">= 0.25 below the best baseline at 1 s (1 - worldmodel / best)")
    depth = wm.get("depth_rmse_m") if wm else None
    d1 = depth[i1] if depth else None
    out["depth_rmse_1s_m"] = verdict(None if d1 is None else d1 < 0.05, d1, "< 0.05 m at 1 s")
    cons = wm.get("latent_consistency") if wm else None
    out["latent_consistency"] = verdict(None if cons is None else cons > 0.95, cons, "> 0.95")
    drop = wm.get("dropout_rmse_increase") if wm else None
    out["dropout_rmse_increase"] = verdict(None if drop is None else drop < 0.02, drop, "< 0.02 at 5% message loss")
    cov = wm.get("coverage_1sigma") if wm else None
    out["coverage_1sigma"] = verdict(None if cov is None else 0.58 <= cov <= 0.78, cov, "within [0.58, 0.78]")
    return out


def table(doc: Mapping[str, Any]) -> str:
    """The report as a fixed-width table for people."""
    lines = []
    models = doc["models"]
    if doc["kind"] == "gym":
        ks = doc["steps_k"]
        lines.append(f"{doc['env']}: normalized MSE at k = {', '.join(map(str, ks))} ({doc['windows']['count']} windows)")
        lines.append(f"{'model':<14}" + "".join(f"{'k=' + str(k):>10}" for k in ks) + f"{'cov1s':>9}{'cons':>9}")
        for name, m in models.items():
            row = "".join(f" {_fmt(m['nmse_at_k'][str(k)]):>9}" for k in ks)
            lines.append(f"{name:<14}{row} {_fmt(m['coverage_1sigma']):>8} {_fmt(m['latent_consistency']):>8}")
    else:
        hs = "/".join(f"{h:g}" for h in doc["horizons_s"])
        lines.append(f"{doc['env']}: errors at {hs} s ({doc['windows']['count']} windows, "
                     f"{doc['windows']['episodes']} episodes)")
        cols = [("lidar_rmse_m", "lidar RMSE m"), ("depth_rmse_m", "depth RMSE m"), ("position_error_m", "position m"),
                ("heading_error_rad", "heading rad")]
        cols = [c for c in cols if any(c[0] in m for m in models.values())]
        width = 9 * len(doc["horizons_s"]) + 2
        lines.append(f"{'model':<14}" + "".join(f"{label:>{width}}" for _, label in cols) + f"{'cov1s':>9}{'cons':>9}{'drop+':>9}")
        for name, m in models.items():
            row = "".join("  " + "".join(f" {_fmt(v):>8}" for v in m.get(key, [None] * len(doc["horizons_s"]))) for key, _ in cols)
            lines.append(f"{name:<14}{row} {_fmt(m['coverage_1sigma']):>8} {_fmt(m['latent_consistency']):>8}"
                         f" {_fmt(m['dropout_rmse_increase']):>8}")
    lines.append("targets:")
    for name, t in doc["targets"].items():
        state = {True: "PASS", False: "FAIL", None: "n/a"}[t["pass"]]
        lines.append(f"  {state:<5} {name}: {_short(t['value'])} ({t['threshold']})")
    return "\n".join(lines) + "\n"


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return json.dumps(value, default=str) if value is not None else "-"


# --------------------------------------------------------------------------------------------------------------
# Plots.


def _plots(out: Path, scores: Mapping[str, _Scores], lay: _Layout, example: _Example,
           target_var: Mapping[str, np.ndarray]) -> dict[str, str]:
    """Error against horizon, predicted against true scan at 1 s (robot), calibration; returns name -> path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, str] = {}
    steps = np.arange(1, lay.horizon + 1)

    if lay.gym:
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, s in scores.items():
            ax.plot(steps, [normalized_mse(s.chan_sq["obs"][k], s.chan_n["obs"][k], target_var["obs"]) for k in range(lay.horizon)],
                    label=name)
        ax.set_yscale("log")
        ax.set_xlabel("step k")
        ax.set_ylabel("normalized MSE")
        ax.legend()
        ax.grid(alpha=0.3)
        paths["error_vs_horizon"] = _save(fig, out / "error_vs_horizon.png")
    else:
        t = steps * lay.step / lay.control_hz
        panels = [(q, f"{q} RMSE (m)") for q in ("lidar", "depth") if q in next(iter(scores.values())).sq]
        panels += [("position", "position error (m)"), ("heading", "heading error (rad)")]
        fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.5))
        for ax, (q, label) in zip(np.atleast_1d(axes), panels):
            for name, s in scores.items():
                if q in ("lidar", "depth"):
                    y = [rmse(s.sq[q][k], s.n[q][k]) for k in range(lay.horizon)]
                else:
                    total = s.pos if q == "position" else s.head
                    y = [total[k] / s.pose_n[k] if s.pose_n[k] else math.nan for k in range(lay.horizon)]
                ax.plot(t, y, marker=".", label=name)
            ax.set_xlabel("horizon (s)")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
        np.atleast_1d(axes)[0].legend()
        paths["error_vs_horizon"] = _save(fig, out / "error_vs_horizon.png")
        if example.truth is not None:
            fig, ax = plt.subplots(figsize=(8, 4))
            beams = np.arange(len(example.truth))
            angle = np.degrees(-np.pi + 2 * np.pi * beams / len(beams))
            ax.plot(angle, example.truth, color="k", lw=2, label="true")
            for name, mean in example.mean.items():
                ax.plot(angle, mean, lw=1, label=name)
                if name == WORLD_MODEL and name in example.std:
                    ax.fill_between(angle, mean - example.std[name], mean + example.std[name], alpha=0.2)
            ax.set_xlabel("beam angle (deg)")
            ax.set_ylabel("range (m)")
            ax.set_title(f"scan at {(example.k + 1) * lay.step / lay.control_hz:g} s")
            ax.legend()
            ax.grid(alpha=0.3)
            paths["scan_1s"] = _save(fig, out / "scan_1s.png")

    with_std = {name: s.z for name, s in scores.items() if s.z}
    fig, ax = plt.subplots(figsize=(5, 5))
    nominal = np.array([math.erf(e / math.sqrt(2.0)) for e in _Z_EDGES[1:-1]])
    ax.plot([0, 1], [0, 1], color="k", lw=1, ls="--", label="ideal")
    for name, zs in with_std.items():
        for q, counts in zs.items():
            observed = np.cumsum(counts)[:-1] / max(counts.sum(), 1)
            ax.plot(nominal, observed, label=f"{name} {q}")
    ax.set_xlabel("nominal coverage")
    ax.set_ylabel("observed coverage")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    paths["calibration"] = _save(fig, out / "calibration.png")
    return paths


def _save(fig: Any, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
    return str(path)


# --------------------------------------------------------------------------------------------------------------
# Command line.


def _cache_dir(data: Path, dataset_section: Mapping[str, Any] | None) -> Path:
    """``data`` itself when it is a dataset cache; for a folder of MCAP logs, its ``cache`` subfolder, brought up to
    date with the logs there now (as ``oniwm train`` does: episodes whose log is unchanged are reused, new logs
    are added), with the preset's dataset section."""
    from train.dataset import REPORT, build_dataset, dataset_config_from_dict

    if (data / REPORT).exists():
        return data
    if not any(data.glob("*.mcap")):
        raise ValueError(f"--data {data}: neither a dataset cache ({REPORT}) nor a folder of .mcap logs")
    cache = data / "cache"
    build_dataset(data, cache, dataset_config_from_dict(dataset_section))
    return cache


def _entries(cache: Path, split: str) -> list[dict[str, Any]]:
    from train.dataset import load_report

    return [e for e in load_report(cache)["episodes"] if e.get("status") in ("ok", "partial") and e["split"] == split]


def _load(cache: Path, entries: Sequence[Mapping[str, Any]]) -> Iterator[EpisodeArrays]:
    """Episodes of ``entries``, loaded one at a time."""
    from train.dataset import load_episode

    for entry in entries:
        yield load_episode(cache / entry["cache"])


def _lossy_episodes(cache: Path, entries: Sequence[Mapping[str, Any]], lossy_dir: Path, drop_prob: float) -> list[EpisodeArrays] | None:
    """The eval episodes rebuilt from their logs with ``drop_prob`` message loss into ``lossy_dir`` (reused when
    already built there), in the order of ``entries``; None (with a warning) when a log is gone."""
    from train.dataset import (
        build_dataset,
        dataset_config_from_dict,
        load_episode,
        load_report,
    )

    report = load_report(cache)
    logs = [Path(e["file"]) for e in entries]
    missing = [str(p) for p in logs if not p.is_file()]
    if missing:
        log.warning("dropout run skipped: logs of eval episodes are gone (%s)", ", ".join(missing[:3]))
        return None
    config = dataclasses.replace(dataset_config_from_dict(report["config"]), drop_prob=drop_prob)
    spec = None
    if report.get("spec"):
        from worldmodel.observation import ObservationSpec

        spec = ObservationSpec.from_dict(report["spec"])
    log.info("building the eval episodes with %.0f%% message loss in %s (no train split there: expected)", 100 * drop_prob, lossy_dir)
    lossy = build_dataset(logs, lossy_dir, config, spec)
    by_name = {e["name"]: e for e in lossy["episodes"] if e.get("status") in ("ok", "partial")}
    out = []
    for entry in entries:
        found = by_name.get(entry["name"])
        if found is None:
            log.warning("dropout run skipped: %s did not rebuild with message loss", entry["name"])
            return None
        out.append(load_episode(lossy_dir / found["cache"]))
    return out


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``eval`` to ``oniwm``."""
    parser = subparsers.add_parser("eval", help="evaluate a world model against baselines on held-out episodes",
                                   description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", metavar="RUN", help="run folder or checkpoint folder (omit: baselines only)")
    parser.add_argument("--data", required=True, metavar="DIR", help="dataset cache (or folder of logs with cache/)")
    parser.add_argument("--json", required=True, metavar="FILE", help="report (JSON), written atomically")
    parser.add_argument("--plots", metavar="DIR", help="folder for the PNG plots")
    parser.add_argument("--config", metavar="YAML", help="preset: its 'eval' section (EvalConfig fields) and 'dataset'")
    parser.add_argument("--dropout-data", metavar="DIR", help="cache of the eval episodes with message loss "
                        "(default: DATA.drop<percent>; built from the logs when missing)")
    parser.add_argument("--no-dropout", action="store_true", help="skip the message-loss run")
    parser.add_argument("--baselines", metavar="FILE", help="fitted baselines (.npz): reused when fitted on the same "
                        "training data and settings, else refitted and saved (default: DATA/baselines.npz)")
    parser.add_argument("--max-windows", type=int, metavar="N", help="evaluate N evenly spaced windows")
    parser.add_argument("--epochs", type=int, metavar="N", help="MLP ensemble epochs (default 40)")
    parser.add_argument("--threads", type=int, default=1, metavar="N",
                        help="torch threads (default 1: the batches are small, and a second thread mostly waits on a "
                             "busy core; 0: torch's default)")
    parser.set_defaults(func=run)


def _eval_config(args: argparse.Namespace) -> tuple[EvalConfig, dict[str, Any]]:
    """The EvalConfig from the preset's ``eval`` section and the command line; also the preset's dataset section."""
    from train.baselines import BaselineConfig, EnsembleConfig, FeatureConfig

    raw: dict[str, Any] = {}
    dataset_section: dict[str, Any] = {}
    if args.config:
        import yaml

        doc = yaml.safe_load(Path(args.config).read_text()) or {}
        raw = dict(doc.get("eval") or {})
        dataset_section = dict(doc.get("dataset") or {})
    known = {f.name for f in dataclasses.fields(EvalConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"eval: unknown fields {unknown}; known: {sorted(known)}")
    features = FeatureConfig(**raw.pop("features", {}) or {})
    base_raw = dict(raw.pop("baselines", {}) or {})
    ens_raw = dict(base_raw.pop("ensemble", {}) or {})
    if args.epochs is not None:
        ens_raw["epochs"] = args.epochs
    baselines = BaselineConfig(**base_raw, ensemble=EnsembleConfig(**ens_raw))
    if args.max_windows is not None:
        raw["max_windows"] = args.max_windows
    if args.no_dropout:
        raw["drop_prob"] = 0.0
    return EvalConfig(**raw, features=features, baselines=baselines), dataset_section


def run(args: argparse.Namespace) -> int:
    """Run the evaluation; see the module docstring for the exit status."""
    import torch

    from worldmodel.checkpoint import CheckpointError, load_checkpoint

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        cfg, dataset_section = _eval_config(args)
        cache = _cache_dir(Path(args.data), dataset_section)
        eval_entries, train_entries = _entries(cache, "eval"), _entries(cache, "train")
        val_entries = _entries(cache, "val")
        if not eval_entries or not train_entries:
            raise ValueError(f"--data {cache}: needs train and eval episodes (has {len(train_entries)} train, "
                             f"{len(eval_entries)} eval)")
        forecaster = None
        step = None
        if args.checkpoint:
            model, info = load_checkpoint(args.checkpoint)
            forecaster, step = WorldModelForecaster(model), info.step
            log.info("world model from %s (step %d)", info.path, info.step)
        else:
            log.warning("no --checkpoint: evaluating the baselines only")
    except (OSError, ValueError, TypeError, CheckpointError) as exc:
        log.error("%s", exc)
        return 2
    eval_eps = list(_load(cache, eval_entries))
    lossy = None
    if cfg.drop_prob > 0:
        lossy_dir = Path(args.dropout_data) if args.dropout_data else cache.with_name(f"{cache.name}.drop{round(cfg.drop_prob * 100):02d}")
        lossy = _lossy_episodes(cache, eval_entries, lossy_dir, cfg.drop_prob)
    baselines_file = Path(args.baselines) if args.baselines else cache / "baselines.npz"
    try:
        doc = evaluate(eval_eps, _load(cache, train_entries), list(_load(cache, val_entries)), forecaster, cfg,
                       lossy_episodes=lossy, plots_dir=args.plots, baselines_file=baselines_file,
                       train_ids=[e["cache"] for e in train_entries] + [f"val:{e['cache']}" for e in val_entries])
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    doc["checkpoint"] = {"path": args.checkpoint, "step": step}
    doc["data"] = str(cache)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    write_json(args.json, doc)
    sys.stdout.write(table(doc))
    log.info("report in %s", args.json)
    return 0
