"""Latent dynamics core: a recurrent state-space model conditioned on the action and on the elapsed time dt.

State: a deterministic recurrent part ``deter`` (B, D) and a Gaussian stochastic part ``stoch`` (B, Z). One step
from t - 1 to t: ``deter_t = GRU(deter_{t-1}, [stoch_{t-1}, action_{t-1}, f(dt_t)])``; then the prior
``p(stoch_t | deter_t)`` (imagination) or the posterior ``q(stoch_t | deter_t, embed_t)`` (observation). dt enters
as ``[dt / dt_ref, log(dt / dt_ref)]``, so one network serves the control rate and coarser imagination steps.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from worldmodel.model.config import ModelConfig, derive
from worldmodel.model.encoders import mlp

__all__ = ["LatentDist", "LayerNormGRUCell", "RSSM", "State", "DT_FLOOR_S"]

#: dt below this (s) is treated as this: a zero-length step is not meaningful and log(0) is not finite.
DT_FLOOR_S = 1e-4


class State(NamedTuple):
    """The belief: ``deter`` (..., D) and ``stoch`` (..., Z). Leading dims: (B,) for one tick, (B, T) or (B, H)
    for a sequence or an imagined trajectory."""

    deter: Tensor
    stoch: Tensor


class LatentDist(NamedTuple):
    """A diagonal Gaussian over the stochastic latent: ``mean`` and ``std``, (..., Z)."""

    mean: Tensor
    std: Tensor


class LayerNormGRUCell(nn.Module):
    """A GRU cell with one fused matmul and LayerNorm on the gates (as in DreamerV3); the update gate is biased
    towards keeping the state (``sigmoid(u - 1)``), which steadies long rollouts. Plain Linear/sigmoid/tanh ops, so
    it exports to ONNX and TensorRT without a recurrent op."""

    def __init__(self, inp: int, hidden: int) -> None:
        super().__init__()
        self.linear = nn.Linear(inp + hidden, 3 * hidden, bias=False)
        self.norm = nn.LayerNorm(3 * hidden)

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        """``x`` (B, inp), ``h`` (B, hidden) -> new h (B, hidden)."""
        reset, cand, update = self.norm(self.linear(torch.cat([x, h], dim=-1))).chunk(3, dim=-1)
        reset = torch.sigmoid(reset)
        cand = torch.tanh(reset * cand)
        update = torch.sigmoid(update - 1.0)
        return update * cand + (1.0 - update) * h


class RSSM(nn.Module):
    """The dynamics core's networks; :class:`worldmodel.model.WorldModel` drives them."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        # [stoch, action, dt features] go straight into the gates: an input layer would add a matmul and three
        # ops per step to the planner's hot loop for little gain, as the gates are nonlinear already.
        self.gru = LayerNormGRUCell(derive(cfg).transition_in, cfg.deter)
        self.prior_net = mlp(cfg.deter, cfg.hidden, 2 * cfg.stoch)
        self.post_net = mlp(cfg.deter + cfg.embed, cfg.hidden, 2 * cfg.stoch)

    def dt_features(self, dt: Tensor) -> Tensor:
        """``dt`` (...) s -> (..., 2)."""
        r = dt.clamp_min(DT_FLOOR_S) / self.cfg.dt_ref_s
        return torch.stack([r, torch.log(r)], dim=-1)

    def transition(self, state: State, action_n: Tensor, dt: Tensor) -> Tensor:
        """The next ``deter`` (B, D) from ``state``, the normalized action applied (B, A) and dt (B,) s."""
        return self.gru(torch.cat([state.stoch, action_n, self.dt_features(dt)], dim=-1), state.deter)

    def _dist(self, raw: Tensor) -> LatentDist:
        mean, std = raw.chunk(2, dim=-1)
        return LatentDist(mean, F.softplus(std) + self.cfg.min_std)

    def prior_mean(self, deter: Tensor) -> Tensor:
        """The prior's mean alone (..., Z): what deterministic imagination follows."""
        return self.prior_net(deter)[..., : self.cfg.stoch]

    def posterior_mean(self, deter: Tensor, embed: Tensor) -> Tensor:
        """The posterior's mean alone (..., Z): the belief update's output."""
        return self.post_net(torch.cat([deter, embed], dim=-1))[..., : self.cfg.stoch]

    def prior(self, deter: Tensor) -> LatentDist:
        """``p(stoch | deter)``: (..., D) -> (..., Z) mean and std."""
        return self._dist(self.prior_net(deter))

    def posterior(self, deter: Tensor, embed: Tensor) -> LatentDist:
        """``q(stoch | deter, embed)``: (..., D), (..., E) -> (..., Z) mean and std."""
        return self._dist(self.post_net(torch.cat([deter, embed], dim=-1)))
