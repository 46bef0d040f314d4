"""World-model training objective: reconstruction likelihood, balanced KL with free nats, open-loop prediction.

One call of :func:`world_model_loss` on a batch of the contract ((B, T, ...) tensors at the control rate):

1. **Modality dropout** (:func:`drop_modalities`): the *inputs'* masks are zeroed for whole sequences (a dead
   sensor) and single ticks (a lost message); the targets keep the true masks, so a dropped reading is still
   predicted, from the belief.
2. **Filter** over the sequence with sampled posteriors; **reconstruction**: Gaussian NLL of every head at
   every tick where its target is present (normalized units), summed over the observation's elements and
   averaged over ticks: the ELBO's scale, so an observation's information is weighed against the KL in nats.
3. **KL balancing** (DreamerV3): ``kl_dyn * max(free, KL(sg(post) || prior)) + kl_rep * max(free,
   KL(post || sg(prior)))``, per tick, summed over latent dims.
4. **Open loop**: from ``starts`` random posterior states per sequence (after ``burn_in`` ticks; scan ticks
   favoured, so that coarse steps end on scans), the prior is
   rolled ``H`` steps of ``stride`` ticks (dt = the sum of their dts, action = their mean) under the logged
   actions, and every head is scored (NLL) against the observations at the tick each step ends, the pose head
   against the true motion over the step. ``H = min(max_steps, horizon_s / (stride * dt_ref))``, so the coarse
   stride reaches the longest evaluated horizon cheaply and stride 1 trains the control-rate step.
   **Trajectory**: NLL of the chained pose (relative to the start, with the propagated variance) against the
   true relative pose, so the uncertainty of positions, not only of steps, is calibrated.
   **Consistency**: ``1 - cos(imagined latent, sg(posterior-mean latent))`` at the same tick.
"""

from __future__ import annotations

import math
import types
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

import torch
from torch import Tensor

from worldmodel.model import (
    POSE,
    Gaussian,
    LatentDist,
    ModelConfig,
    State,
    WorldModel,
    relative_poses,
    relative_trajectory,
    unwrap_yaw,
)

__all__ = ["LossConfig", "LossModule", "drop_modalities", "gaussian_nll", "kl_divergence", "openloop_steps", "world_model_loss"]


@dataclass(frozen=True)
class LossConfig:
    """Weights and settings of the objective (see the module docstring). ``head_weights``: per head name
    (modality names, ``pose``), default 1. ``burn_in``: ticks of filtering before an open-loop start."""

    kl_free_nats: float = 1.0
    kl_dyn: float = 0.5
    kl_rep: float = 0.1
    recon: float = 1.0
    openloop: float = 1.0
    trajectory: float = 0.2
    consistency: float = 100.0
    head_weights: Mapping[str, float] = field(default_factory=dict)
    horizon_s: float = 2.0
    strides: tuple[int, ...] = (5, 1)
    max_steps: int = 20
    starts: int = 4
    burn_in: int = 15
    dropout_sequence: float = 0.1
    dropout_tick: float = 0.05

    def __post_init__(self) -> None:
        object.__setattr__(self, "head_weights", types.MappingProxyType(dict(self.head_weights)))
        object.__setattr__(self, "strides", tuple(int(s) for s in self.strides))
        for name in ("kl_free_nats", "kl_dyn", "kl_rep", "recon", "openloop", "trajectory", "consistency"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"train.loss.{name} must be a finite number >= 0, got {value}")
        if any(not (math.isfinite(w) and w >= 0) for w in self.head_weights.values()):
            raise ValueError(f"train.loss.head_weights must be finite numbers >= 0, got {dict(self.head_weights)}")
        if not self.strides or min(self.strides) < 1:
            raise ValueError(f"train.loss.strides must be a non-empty list of ticks >= 1, got {self.strides}")
        if self.horizon_s <= 0 or self.max_steps < 1 or self.starts < 1 or self.burn_in < 0:
            raise ValueError("train.loss: horizon_s > 0, max_steps >= 1, starts >= 1 and burn_in >= 0 are required")
        for name in ("dropout_sequence", "dropout_tick"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"train.loss.{name} is a probability in [0, 1), got {getattr(self, name)}")

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> LossConfig:
        raw = dict(raw or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"train.loss: unknown fields {unknown}; known: {sorted(known)}")
        return cls(**raw)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (dict(v) if isinstance(v := getattr(self, f.name), Mapping) else list(v) if isinstance(v, tuple) else v)
                for f in fields(self)}


class LossModule(torch.nn.Module):
    """The world model and its objective as one module, so DistributedDataParallel's forward hooks cover the
    whole training step (the loss calls several of the model's verbs, not only ``forward``)."""

    def __init__(self, model: WorldModel, cfg: LossConfig) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg

    def forward(self, batch: Mapping[str, Tensor], stride: int) -> tuple[Tensor, dict[str, Tensor]]:
        return world_model_loss(self.model, batch, self.cfg, stride)


def openloop_steps(cfg: LossConfig, stride: int, seq_len: int, dt_ref_s: float) -> int:
    """Imagined steps for ``stride``: enough to reach ``horizon_s``, capped by ``max_steps`` and by what fits in a
    sequence after the burn-in. Raises ``ValueError`` when not even one step fits."""
    fits = (seq_len - 1 - cfg.burn_in) // stride
    if fits < 1:
        raise ValueError(f"train: seq_len {seq_len} leaves no open-loop step of stride {stride} after burn_in {cfg.burn_in}; "
                         f"raise seq_len or lower train.loss.burn_in")
    return max(1, min(cfg.max_steps, math.ceil(cfg.horizon_s / (stride * dt_ref_s) - 1e-9), fits))


def gaussian_nll(pred: Gaussian, target: Tensor) -> Tensor:
    """Elementwise negative log-likelihood without the constant ``0.5 log(2 pi)``."""
    return 0.5 * ((target - pred.mean) * torch.exp(-pred.log_std)) ** 2 + pred.log_std


def kl_divergence(p: LatentDist, q: LatentDist) -> Tensor:
    """KL(p || q) of diagonal Gaussians, summed over the last dim."""
    var_ratio = (p.std / q.std) ** 2
    return 0.5 * (var_ratio + ((p.mean - q.mean) / q.std) ** 2 - 1.0 - torch.log(var_ratio)).sum(-1)


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    return (x * mask).sum() / mask.sum().clamp_min(1.0)


def _per_tick(x: Tensor, mask: Tensor, lead: int = 2) -> Tensor:
    """Sum of ``x * mask`` over each tick's elements, averaged over the ticks with any element present.

    This is the ELBO's scale: a 360-beam scan counts as 360 likelihood terms against the KL's nats. A mean per
    element would make a scan worth a fraction of a nat, and the posterior would rationally ignore it.
    """
    ticks = mask.reshape(*mask.shape[:lead], -1).amax(-1).sum().clamp_min(1.0)
    return (x * mask).sum() / ticks


def drop_modalities(batch: Mapping[str, Tensor], cfg: LossConfig, model_cfg: ModelConfig) -> dict[str, Tensor]:
    """A shallow copy of ``batch`` whose modality masks are zeroed for random whole sequences
    (``dropout_sequence``) and ticks (``dropout_tick``), independently per modality. Uses the global torch RNG."""
    out = dict(batch)
    b, t_len = batch["dt"].shape
    for spec in model_cfg.modalities:
        keep = (torch.rand(b, 1, device=batch["dt"].device) >= cfg.dropout_sequence) \
            & (torch.rand(b, t_len, device=batch["dt"].device) >= cfg.dropout_tick)
        keep = keep.to(batch["dt"].dtype)
        key = f"{spec.name}_mask"
        if spec.has_sample_mask:
            current = batch.get(key, torch.ones(b, t_len, spec.shape[0], device=keep.device))
            out[key] = current * keep.unsqueeze(-1)
        else:
            out[key] = batch.get(key, torch.ones_like(keep)) * keep
    return out


def _gather_time(x: Tensor, idx: Tensor) -> Tensor:
    """``x`` (B, T, ...) at ticks ``idx`` (B, S, H) -> (B, S, H, ...)."""
    b, s, h = idx.shape
    flat = idx.reshape(b, s * h)
    view = flat.reshape(b, s * h, *([1] * (x.dim() - 2))).expand(b, s * h, *x.shape[2:])
    return torch.gather(x, 1, view).reshape(b, s, h, *x.shape[2:])


def world_model_loss(model: WorldModel, batch: Mapping[str, Tensor], cfg: LossConfig, stride: int) -> tuple[Tensor, dict[str, Tensor]]:
    """The total loss (a scalar) and its terms (detached scalars, for logging and NaN diagnosis).

    ``stride``: the open-loop step in ticks for this batch (one of ``cfg.strides``).
    """
    mcfg = model.config
    weight = lambda name: cfg.head_weights.get(name, 1.0)  # noqa: E731 - a local lookup, read at each use
    terms: dict[str, Tensor] = {}
    targets = model.targets(batch)
    seq = model.observe_sequence(drop_modalities(batch, cfg, mcfg), sample=True)
    valid = batch["valid"] if "valid" in batch else torch.ones_like(batch["dt"])

    preds = model.decode(seq.states)
    recon_terms = {n: _per_tick(gaussian_nll(preds[n], targets[n].value), targets[n].mask) for n in preds}
    recon = sum(weight(n) * v for n, v in recon_terms.items())
    terms.update({f"recon_{n}": v.detach() for n, v in recon_terms.items()})

    sg = lambda d: LatentDist(d.mean.detach(), d.std.detach())  # noqa: E731
    kl_dyn = kl_divergence(sg(seq.post), seq.prior)
    kl_rep = kl_divergence(seq.post, sg(seq.prior))
    kl = cfg.kl_dyn * _masked_mean(kl_dyn.clamp_min(cfg.kl_free_nats), valid) \
        + cfg.kl_rep * _masked_mean(kl_rep.clamp_min(cfg.kl_free_nats), valid)
    terms["kl"] = _masked_mean(kl_dyn, valid).detach()

    ol, traj, cons, ol_terms = _openloop(model, batch, seq, targets, cfg, stride, valid)
    terms.update(ol_terms)
    openloop = sum(weight(n) * v for n, v in ol.items())
    total = cfg.recon * recon + kl + cfg.openloop * openloop + cfg.trajectory * traj + cfg.consistency * cons
    terms.update({"recon": recon.detach(), "openloop": openloop.detach(), "trajectory": traj.detach(),
                  "consistency": cons.detach(), "loss": total.detach()})
    return total, terms


def _openloop(model: WorldModel, batch: Mapping[str, Tensor], seq: Any, targets: Mapping[str, Any], cfg: LossConfig,
              stride: int, valid: Tensor) -> tuple[dict[str, Tensor], Tensor, Tensor, dict[str, Tensor]]:
    b, t_len = batch["dt"].shape
    dev = batch["dt"].device
    horizon = openloop_steps(cfg, stride, t_len, model.config.dt_ref_s)
    last_start = t_len - 1 - stride * horizon
    first = min(cfg.burn_in, last_start)
    # Starts at a scan tick are 5x as likely as others: with a scan every `stride` ticks (10 Hz LiDAR, 0.1 s
    # steps) every step of such a rollout then ends on a scan, which multiplies the LiDAR targets per batch.
    weight = torch.ones(b, last_start + 1 - first, device=dev)
    for spec in model.config.modalities:
        if spec.kind == "ranges" and f"{spec.name}_mask" in batch:
            weight = weight + 4.0 * batch[f"{spec.name}_mask"][:, first: last_start + 1]
    starts = first + torch.multinomial(weight, cfg.starts, replacement=True)
    k = torch.arange(1, horizon + 1, device=dev)
    ends = starts.unsqueeze(-1) + stride * k            # (B, S, H): the tick each step ends at
    begins = ends - stride                              # the tick each step starts from
    # Coarse steps from cumulative sums: action = mean of actions applied in [begin, end); dt = sum over (begin, end].
    act_cum = torch.cat([torch.zeros_like(batch["action"][:, :1]), torch.cumsum(batch["action"], dim=1)], dim=1)
    dt_cum = torch.cat([torch.zeros_like(batch["dt"][:, :1]), torch.cumsum(batch["dt"], dim=1)], dim=1)
    actions = (_gather_time(act_cum, ends) - _gather_time(act_cum, begins)) / stride
    dts = _gather_time(dt_cum.unsqueeze(-1), ends + 1)[..., 0] - _gather_time(dt_cum.unsqueeze(-1), begins + 1)[..., 0]
    s_flat = starts.reshape(b, cfg.starts, 1)
    start_state = State(_gather_time(seq.states.deter, s_flat)[:, :, 0], _gather_time(seq.states.stoch, s_flat)[:, :, 0])
    n = b * cfg.starts
    imagined = model.imagine(State(start_state.deter.reshape(n, -1), start_state.stoch.reshape(n, -1)),
                             actions.reshape(n, horizon, -1), dts.reshape(n, horizon))
    preds = model.decode(imagined)
    valid_end = _gather_time(valid.unsqueeze(-1), ends)[..., 0].reshape(n, horizon)

    losses: dict[str, Tensor] = {}
    logs: dict[str, Tensor] = {}
    for name, pred in preds.items():
        if name == POSE:
            continue
        tgt = targets[name]
        value = _gather_time(tgt.value, ends).reshape(n, horizon, *tgt.value.shape[2:])
        mask = _gather_time(tgt.mask, ends).reshape(n, horizon, *tgt.mask.shape[2:])
        losses[name] = _per_tick(gaussian_nll(pred, value), mask)
        logs[f"ol_{name}"] = losses[name].detach()
        if model.config.modality(name).kind == "ranges":
            std = model.norm.std(name)
            logs[f"ol_{name}_rmse_m"] = torch.sqrt(_masked_mean(((pred.mean - value) * std) ** 2, mask)).detach()

    traj = torch.zeros((), device=dev)
    if model.config.pose_head:
        pose = unwrap_yaw(batch["pose"])
        pm = batch["pose_mask"] * valid
        p_begin, p_end = _gather_time(pose, begins), _gather_time(pose, ends)
        step_mask = (_gather_time(pm.unsqueeze(-1), begins) * _gather_time(pm.unsqueeze(-1), ends)).reshape(n, horizon, 1)
        rate = relative_poses(p_begin, p_end) / dts.clamp_min(1e-4).unsqueeze(-1)
        rate_n = model.norm.normalize("pose_rate", rate).reshape(n, horizon, 3)
        losses[POSE] = _per_tick(gaussian_nll(preds[POSE], rate_n), step_mask.expand_as(rate_n))
        logs[f"ol_{POSE}"] = losses[POSE].detach()
        # The chained trajectory against the true pose relative to the start.
        p_start = _gather_time(pose, s_flat)            # (B, S, 1, 3)
        rel = relative_poses(p_start, p_end).reshape(n, horizon, 3)
        start_mask = _gather_time(pm.unsqueeze(-1), s_flat)
        traj_mask = (start_mask * _gather_time(pm.unsqueeze(-1), ends)).reshape(n, horizon, 1).expand(n, horizon, 3)
        physical = model.to_physical({POSE: preds[POSE]}, dts.reshape(n, horizon))[POSE]
        mean, var = relative_trajectory(physical)
        traj = _per_tick(0.5 * (rel - mean) ** 2 / var + 0.5 * torch.log(var), traj_mask)
        err = torch.linalg.vector_norm(rel[..., :2] - mean[..., :2], dim=-1)
        logs["ol_position_err_m"] = _masked_mean(err, traj_mask[..., 0]).detach()

    post_latent = torch.cat([_gather_time(seq.states.deter, ends), _gather_time(seq.post.mean, ends)], dim=-1).reshape(n, horizon, -1)
    cos = torch.nn.functional.cosine_similarity(model.latent(imagined), post_latent.detach(), dim=-1)
    cons = _masked_mean(1.0 - cos, valid_end)
    logs["ol_cosine"] = _masked_mean(cos, valid_end).detach()
    return losses, traj, cons, logs
