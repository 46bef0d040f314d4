"""Normalization statistics: what the model needs, how they are computed from data, and the module that holds them.

Statistics are a mapping ``key -> {"mean": number or nested list, "std": ...}`` (the JSON the dataset builder
writes). The model stores them as buffers broadcast to each key's full per-tick shape, so a checkpoint is
self-contained and its tensor shapes depend on the config only. Keys (:func:`required_keys`): each modality name
(raw inputs, in the units of the batch contract), ``action``, ``pose_rate`` (the pose head's target: body-frame
velocity ``[dx/dt, dy/dt, dyaw/dt]``) and ``<odom>_rate`` per odometry modality (``[v, omega, dx/dt, dy/dt,
dyaw/dt]``, the odometry head's target, valid at any dt).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import torch
from torch import Tensor, nn

from worldmodel.model.config import ConfigError, ModelConfig
from worldmodel.model.geometry import pose_deltas

__all__ = ["Normalizer", "compute_normalization", "odom_rates", "pose_rates", "required_keys", "STD_FLOOR"]

#: Smallest std a statistic may have: a near-constant channel must not blow up its normalized values.
STD_FLOOR = 1e-3
#: Smallest dt used when dividing by dt (s): guards padding ticks with dt = 0.
_DT_FLOOR_S = 1e-4


def required_keys(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Each statistic the model needs -> the per-tick shape it is broadcast to."""
    keys: dict[str, tuple[int, ...]] = {}
    for m in cfg.modalities:
        keys[m.name] = m.shape
        if m.kind == "odom":
            keys[f"{m.name}_rate"] = (5,)
    keys["action"] = (cfg.action_dim,)
    if cfg.pose_head:
        keys["pose_rate"] = (3,)
    return keys


def pose_rates(pose: Tensor, dt: Tensor) -> Tensor:
    """Body-frame velocity over each tick, (..., T, 3) from ``pose`` (..., T, 3) and ``dt`` (..., T) s: the motion
    from tick t - 1 to t in the frame of t - 1, divided by dt[t] (entry 0 is 0)."""
    return pose_deltas(pose) / dt.clamp_min(_DT_FLOOR_S).unsqueeze(-1)


def odom_rates(odom: Tensor, dt: Tensor) -> Tensor:
    """``[v, omega, dx/dt, dy/dt, dyaw/dt]`` from odometry ``[v, omega, dx, dy, dyaw]`` (..., 5) and dt (...)."""
    return torch.cat([odom[..., :2], odom[..., 2:] / dt.clamp_min(_DT_FLOOR_S).unsqueeze(-1)], dim=-1)


class _Moments:
    """Masked running sums in float64; ``reduce`` = the dims (of the per-tick shape) pooled into one statistic."""

    def __init__(self) -> None:
        self.n: Tensor | float = 0.0
        self.s: Tensor | float = 0.0
        self.ss: Tensor | float = 0.0

    def add(self, x: Tensor, w: Tensor, reduce_dims: tuple[int, ...]) -> None:
        x, w = x.double(), w.double().expand_as(x)
        x = torch.where(w > 0, x, torch.zeros_like(x))  # masked entries may hold anything, NaN included
        self.n = self.n + w.sum(dim=reduce_dims)
        self.s = self.s + (w * x).sum(dim=reduce_dims)
        self.ss = self.ss + (w * x * x).sum(dim=reduce_dims)

    def stats(self, key: str) -> dict[str, Any]:
        n = torch.as_tensor(self.n)
        if bool((n <= 0).any()):
            raise ConfigError(f"normalization: no valid samples of {key!r} in the data (all masked)")
        mean = torch.as_tensor(self.s) / n
        var = (torch.as_tensor(self.ss) / n - mean * mean).clamp_min(0.0)
        std = var.sqrt().clamp_min(STD_FLOOR)
        return {"mean": mean.float().tolist(), "std": std.float().tolist()}


def compute_normalization(batches: Iterable[Mapping[str, Tensor]], cfg: ModelConfig) -> dict[str, dict[str, Any]]:
    """Statistics of every :func:`required_keys` key over ``batches`` of the contract ((B, T, ...) tensors).

    Pooling: a ranges scan and a depth image get one scalar (every return alike, so the statistics do not
    depend on heading; "no return" beams and pixels are skipped); IMU samples one per channel; vectors one per element. Masked and
    invalid ticks are skipped.
    """
    acc: dict[str, _Moments] = {k: _Moments() for k in required_keys(cfg)}
    for batch in batches:
        valid = batch["valid"].float() if "valid" in batch else torch.ones(batch["dt"].shape)
        for m in cfg.modalities:
            x = batch[m.name].float()
            mask = batch[f"{m.name}_mask"].float() * (valid.unsqueeze(-1) if m.has_sample_mask else valid) \
                if f"{m.name}_mask" in batch else valid
            if m.kind == "ranges":
                returns = (x < cfg.no_return_m - 1e-3) if cfg.no_return_m > 0 else torch.ones_like(x, dtype=torch.bool)
                acc[m.name].add(x, mask[..., None] * returns, tuple(range(x.dim())))
            elif m.kind == "image":
                acc[m.name].add(x, mask[..., None, None] * (x > 0), tuple(range(x.dim())))
            else:  # samples: one statistic per channel; odom and vectors: one per element
                acc[m.name].add(x, mask[..., None], tuple(range(x.dim() - 1)))
            if m.kind == "odom":
                acc[f"{m.name}_rate"].add(odom_rates(x, batch["dt"].float()), mask[..., None], tuple(range(x.dim() - 1)))
        action = batch["action"].float()
        acc["action"].add(action, valid[..., None], tuple(range(action.dim() - 1)))
        if cfg.pose_head:
            pm = batch["pose_mask"].float() * valid
            pair = torch.cat([torch.zeros_like(pm[..., :1]), pm[..., 1:] * pm[..., :-1]], dim=-1)
            rates = pose_rates(batch["pose"].float(), batch["dt"].float())
            acc["pose_rate"].add(rates, pair[..., None], tuple(range(rates.dim() - 1)))
    return {k: a.stats(k) for k, a in acc.items()}


class Normalizer(nn.Module):
    """Per-key mean/std buffers (``<key>_mean``, ``<key>_std``), each of the key's full per-tick shape."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], stats: Mapping[str, Mapping[str, Any]]) -> None:
        super().__init__()
        missing = sorted(set(shapes) - set(stats))
        if missing:
            raise ConfigError(f"normalization: statistics missing for {missing} (compute them with compute_normalization)")
        self._keys = tuple(shapes)
        # The statistics as given (e.g. one scalar for a whole scan): what to_stats returns, compact and readable.
        self._given: dict[str, dict[str, Any]] = {}
        for key, shape in shapes.items():
            for part in ("mean", "std"):
                if part not in stats[key]:
                    raise ConfigError(f"normalization: {key!r} has no {part!r}")
                value = torch.as_tensor(stats[key][part], dtype=torch.float32)
                try:
                    value = value.broadcast_to(shape).clone()
                except RuntimeError:
                    raise ConfigError(f"normalization: {key}.{part} of shape {tuple(value.shape)} does not broadcast to {shape}") from None
                if not bool(torch.isfinite(value).all()) or (part == "std" and bool((value <= 0).any())):
                    raise ConfigError(f"normalization: {key}.{part} must be finite{' and > 0' if part == 'std' else ''}")
                self.register_buffer(f"{key}_{part}", value)
            self._given[key] = {part: torch.as_tensor(stats[key][part], dtype=torch.float32).tolist() for part in ("mean", "std")}

    @property
    def keys(self) -> tuple[str, ...]:
        return self._keys

    def mean(self, key: str) -> Tensor:
        return getattr(self, f"{key}_mean")

    def std(self, key: str) -> Tensor:
        return getattr(self, f"{key}_std")

    def normalize(self, key: str, x: Tensor) -> Tensor:
        """``(x - mean) / std``, broadcasting over leading dims."""
        return (x - self.mean(key)) / self.std(key)

    def denormalize(self, key: str, x: Tensor) -> Tensor:
        return x * self.std(key) + self.mean(key)

    def to_stats(self) -> dict[str, dict[str, Any]]:
        """The statistics as given to the constructor (JSON-able, before broadcasting), e.g. for a checkpoint;
        ``Normalizer(shapes, n.to_stats())`` rebuilds the same buffers."""
        return {k: dict(v) for k, v in self._given.items()}
