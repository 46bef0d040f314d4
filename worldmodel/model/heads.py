"""Prediction heads: from a latent feature ``[deter, stoch]`` to a Gaussian (mean, log-std) per output element.

One head per modality and one for the pose, each a small MLP, so a caller decodes only what it needs (a planner
asks for ``lidar`` and ``pose``, not the image). Heads work in normalized units; ``WorldModel.predict`` converts
to physical ones. Targets per kind: ranges (N,); image (H/f, W/f), the depth averaged over valid pixels of each
f x f block; samples (K, C); odom ``[v, omega, dx/dt, dy/dt, dyaw/dt]`` (rates, so valid at any dt); vector (D,);
pose ``[dx/dt, dy/dt, dyaw/dt]``, the body-frame velocity over the step.
"""

from __future__ import annotations

import copy
import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from worldmodel.model.config import ModalitySpec, ModelConfig, derive
from worldmodel.model.encoders import mlp

__all__ = ["Gaussian", "GaussianHead", "Heads", "POSE", "head_shape"]

#: The key of the pose head in head outputs and predictions.
POSE = "pose"


class Gaussian(NamedTuple):
    """An independent Gaussian per element: ``mean`` and ``log_std`` of one shape."""

    mean: Tensor
    log_std: Tensor

    @property
    def std(self) -> Tensor:
        return torch.exp(self.log_std)


def head_shape(spec: ModalitySpec, cfg: ModelConfig) -> tuple[int, ...]:
    """The per-tick shape a modality's head predicts."""
    if spec.kind == "image":
        return derive(cfg).image_decode_shapes[spec.name]
    return spec.shape


class GaussianHead(nn.Module):
    """feat (..., F) -> :class:`Gaussian` of ``shape``; log-std squashed into [log_std_min, log_std_max] and
    initialized at 0 (unit std in normalized units)."""

    def __init__(self, cfg: ModelConfig, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.lo, self.hi = cfg.log_std_min, cfg.log_std_max
        size = math.prod(self.shape)
        self.net = mlp(derive(cfg).feat, cfg.hidden, 2 * size, cfg.head_layers)
        # Squash offset that maps a raw 0 to log_std 0: sigmoid(offset) = -lo / (hi - lo).
        p = -self.lo / (self.hi - self.lo)
        self.offset = math.log(p / (1.0 - p)) if 0.0 < p < 1.0 else 0.0

    def strided(self, stride: int) -> GaussianHead:
        """A head of a 1-D output that computes elements 0, k, 2k, ... only (k = ``stride``): the same layers,
        the last one cut to those elements' rows, so its outputs equal the full head's at those elements."""
        if len(self.shape) != 1 or stride < 1:
            raise ValueError(f"strided({stride}): only a 1-D head (this one is {self.shape}) with stride >= 1")
        size = self.shape[0]
        keep = torch.arange(0, size, stride)
        rows = torch.cat([keep, keep + size])
        head = copy.deepcopy(self)
        last = head.net[-1]
        cut = nn.Linear(last.in_features, rows.numel())
        with torch.no_grad():
            cut.weight.copy_(last.weight[rows])
            cut.bias.copy_(last.bias[rows])
        head.net[-1] = cut
        head.shape = (int(keep.numel()),)
        return head

    def forward(self, feat: Tensor) -> Gaussian:
        mean, raw = self.net(feat).chunk(2, dim=-1)
        log_std = self.lo + (self.hi - self.lo) * torch.sigmoid(raw + self.offset)
        lead = feat.shape[:-1]
        return Gaussian(mean.reshape(*lead, *self.shape), log_std.reshape(*lead, *self.shape))


class Heads(nn.Module):
    """All heads: one per modality (by name) plus ``pose`` when the config has a pose head."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        heads = {spec.name: GaussianHead(cfg, head_shape(spec, cfg)) for spec in cfg.modalities}
        if cfg.pose_head:
            heads[POSE] = GaussianHead(cfg, (3,))
        self.heads = nn.ModuleDict(heads)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.heads.keys())

    def forward(self, feat: Tensor, names: tuple[str, ...] | None = None) -> dict[str, Gaussian]:
        """``feat`` (..., F) -> ``{name: Gaussian}`` in normalized units, for ``names`` (default: all)."""
        return {n: self.heads[n](feat) for n in (names if names is not None else self.names)}
