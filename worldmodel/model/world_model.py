"""The world model: public verbs over the encoder, the dynamics core and the heads.

Verbs (shapes: B batch, T ticks, H imagined steps, A action dims; physical units at the boundary):

- :meth:`WorldModel.initial_state` ``(B) -> State``: the belief before any data (zeros).
- :meth:`WorldModel.observe` ``(state, obs, prev_action, dt) -> State``: the belief update at one tick (posterior
  mean). :meth:`WorldModel.observe_step` also returns the prior, posterior and embedding.
- :meth:`WorldModel.imagine` ``(state, actions (B, H, A), dt (B, H) or float) -> State (B, H, ...)``: prior rollout.
- :meth:`WorldModel.predict` ``(states (..., D), dt, names) -> {name: Gaussian}``: decoded predictions in physical
  units; :func:`relative_trajectory` chains the pose head's per-step motion into a trajectory with variance.
- :meth:`WorldModel.observe_sequence`, :meth:`WorldModel.decode`, :meth:`WorldModel.targets`: the training path.

One tick's ``obs`` maps, per modality ``name``: ``name`` (B, *shape) raw values, ``name_mask`` (B,) 1 = a new
sample arrived this tick (IMU: (B, K), one per sample), ``name_age`` (B,) seconds since its acquisition. A missing
``_mask`` means always present, a missing ``_age`` means 0. Depth 0 means "no return" (per pixel), and so does a
range at or above ``config.no_return_m`` (per beam): the encoder is told, the likelihood skips them, and a
prediction for such a beam is the range a return would have.

Example::

    model = WorldModel(cfg, norm)
    state = model.initial_state(1)
    state = model.observe(state, obs, prev_action, dt)                 # every tick
    traj = model.imagine(state, actions, 0.1)                         # (B, H, ...) at 0.1 s steps
    pred = model.predict(traj, 0.1, ("lidar", "pose"))
    pose_mean, pose_var = relative_trajectory(pred["pose"])           # (B, H, 3) each
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from worldmodel.model.config import ModalitySpec, ModelConfig
from worldmodel.model.encoders import FusionEncoder
from worldmodel.model.geometry import integrate_deltas
from worldmodel.model.heads import POSE, Gaussian, Heads
from worldmodel.model.normalization import Normalizer, odom_rates, pose_rates, required_keys
from worldmodel.model.rssm import RSSM, LatentDist, State

__all__ = ["ObserveOutput", "SequenceOutput", "Target", "WorldModel", "parameter_count", "relative_trajectory"]

#: Modality kinds that arrive at a fraction of the tick rate and are costly to encode: the training path encodes
#: only their present ticks.
_SPARSE_KINDS = ("ranges", "image")


class ObserveOutput(NamedTuple):
    """One belief update: the new ``state``, the ``prior`` and ``post`` (posterior) over the stochastic latent
    (B, Z), and the fused observation embedding ``embed`` (B, E)."""

    state: State
    prior: LatentDist
    post: LatentDist
    embed: Tensor


class SequenceOutput(NamedTuple):
    """The filter over a sequence: ``states`` (B, T, ...) (stochastic part sampled when asked), ``prior`` and
    ``post`` (B, T, Z), ``embed`` (B, T, E)."""

    states: State
    prior: LatentDist
    post: LatentDist
    embed: Tensor


class Target(NamedTuple):
    """A head's target in normalized units and its mask (1 = counts), both (B, T, *head shape)."""

    value: Tensor
    mask: Tensor


def relative_trajectory(pose: Gaussian) -> tuple[Tensor, Tensor]:
    """Chain per-step pose predictions (``predict(...)["pose"]``, (B, H, 3) motion per step in the frame of the
    step's start) into poses relative to the pose at imagination start: ``(mean, var)``, each (B, H, 3) as
    ``[x m, y m, yaw rad]`` (yaw not wrapped) and the propagated variance (steps treated as independent)."""
    return integrate_deltas(pose.mean, torch.exp(2.0 * pose.log_std))


class WorldModel(nn.Module):
    """Sensor-fusion encoder + RSSM dynamics core + Gaussian prediction heads, with its normalization statistics.

    ``norm``: statistics for every :func:`worldmodel.model.normalization.required_keys` key (stored as buffers,
    so ``state_dict`` is self-contained). ``device``: where parameters live (default CPU).
    """

    def __init__(self, config: ModelConfig, norm: Mapping[str, Mapping[str, object]], device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.config = config
        self.norm = Normalizer(required_keys(config), norm)
        self.encoder = FusionEncoder(config)
        self.rssm = RSSM(config)
        self.head = Heads(config)
        self._specs: tuple[ModalitySpec, ...] = config.modalities
        self.to(device)

    # ------------------------------------------------------------------------------------------------------------
    # Belief.

    @property
    def device(self) -> torch.device:
        return self.norm.action_mean.device

    def initial_state(self, batch_size: int) -> State:
        """The belief before any observation: zeros, (B, D) and (B, Z)."""
        return State(torch.zeros(batch_size, self.config.deter, device=self.device),
                     torch.zeros(batch_size, self.config.stoch, device=self.device))

    @staticmethod
    def latent(state: State) -> Tensor:
        """The latent vector ``[deter, stoch]`` (..., D + Z): the heads' input and the consistency metric's."""
        return torch.cat([state.deter, state.stoch], dim=-1)

    def _prepare(self, obs: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
        """Raw one-tick inputs (N, ...) -> normalized encoder inputs, tick masks (N,), ages (N,) s."""
        inputs: dict[str, Tensor] = {}
        masks: dict[str, Tensor] = {}
        ages: dict[str, Tensor] = {}
        for spec in self._specs:
            x = obs[spec.name]
            lead = x.shape[: x.dim() - len(spec.shape)]
            mask = obs.get(f"{spec.name}_mask")
            if spec.kind in ("image", "ranges"):
                valid = self._returns(spec, x)
                inputs[f"{spec.name}_valid"] = valid
                inputs[spec.name] = self.norm.normalize(spec.name, x) * valid
            else:
                inputs[spec.name] = self.norm.normalize(spec.name, x)
            if spec.has_sample_mask:
                sample_mask = mask if mask is not None else x.new_ones(*lead, spec.shape[0])
                inputs[f"{spec.name}_mask"] = sample_mask
                masks[spec.name] = sample_mask.amax(dim=-1)
            else:
                masks[spec.name] = mask if mask is not None else x.new_ones(lead)
            age = obs.get(f"{spec.name}_age")
            ages[spec.name] = age if age is not None else x.new_zeros(lead)
        return inputs, masks, ages

    def _returns(self, spec: ModalitySpec, x: Tensor) -> Tensor:
        """1 where a range or depth value is a return: depth > 0; range below ``no_return_m`` (when set)."""
        if spec.kind == "image":
            return (x > 0).to(x.dtype)
        if self.config.no_return_m > 0:
            return (x < self.config.no_return_m - 1e-3).to(x.dtype)
        return torch.ones_like(x)

    def encode(self, obs: Mapping[str, Tensor]) -> Tensor:
        """One tick's observations (see the module docstring), leading dims (N,) -> fused embedding (N, E)."""
        return self.encoder(*self._prepare(obs))

    def observe_step(self, state: State, obs: Mapping[str, Tensor], prev_action: Tensor, dt: Tensor | float,
                     sample: bool = False) -> ObserveOutput:
        """Belief update at one tick: the transition with ``prev_action`` (B, A) over ``dt`` (B,) s (or a float),
        then the posterior given ``obs``. ``sample``: draw the stochastic part (training) instead of its mean."""
        dt = self._dt(dt, state.deter.shape[:1])
        deter = self.rssm.transition(state, self.norm.normalize("action", prev_action), dt)
        embed = self.encode(obs)
        post = self.rssm.posterior(deter, embed)
        stoch = post.mean + post.std * torch.randn_like(post.std) if sample else post.mean
        return ObserveOutput(State(deter, stoch), self.rssm.prior(deter), post, embed)

    def observe(self, state: State, obs: Mapping[str, Tensor], prev_action: Tensor, dt: Tensor | float) -> State:
        """The belief update at one tick (posterior mean); see :meth:`observe_step`."""
        dt = self._dt(dt, state.deter.shape[:1])
        deter = self.rssm.transition(state, self.norm.normalize("action", prev_action), dt)
        return State(deter, self.rssm.posterior_mean(deter, self.encode(obs)))

    def imagine_step(self, state: State, action: Tensor, dt: Tensor | float, sample: bool = False) -> State:
        """One prior step: ``action`` (B, A) applied for ``dt`` (B,) s or a float."""
        return self._prior_step(state, self.norm.normalize("action", action), self._dt(dt, state.deter.shape[:1]), sample)

    def _prior_step(self, state: State, action_n: Tensor, dt: Tensor, sample: bool) -> State:
        deter = self.rssm.transition(state, action_n, dt)
        if not sample:
            return State(deter, self.rssm.prior_mean(deter))
        prior = self.rssm.prior(deter)
        return State(deter, prior.mean + prior.std * torch.randn_like(prior.std))

    def imagine(self, state: State, actions: Tensor, dt: Tensor | float, sample: bool = False) -> State:
        """Prior rollout from ``state`` (B, ...) under ``actions`` (B, H, A), step ``h`` lasting ``dt[:, h]``
        seconds ((B, H) or one float for all). Returns the states after each step, (B, H, D) and (B, H, Z).
        ``sample=False`` (default) follows the prior mean: deterministic, as the heads' uncertainty expects."""
        horizon = actions.shape[1]
        dt = self._dt(dt, actions.shape[:2])
        actions_n = self.norm.normalize("action", actions)
        deters, stochs = [], []
        for h in range(horizon):
            state = self._prior_step(state, actions_n[:, h], dt[:, h], sample)
            deters.append(state.deter)
            stochs.append(state.stoch)
        return State(torch.stack(deters, dim=1), torch.stack(stochs, dim=1))

    def _dt(self, dt: Tensor | float, shape: tuple[int, ...] | torch.Size) -> Tensor:
        if isinstance(dt, Tensor):
            return dt.to(self.device, torch.float32).expand(shape)
        return torch.full(tuple(shape), float(dt), device=self.device)

    # ------------------------------------------------------------------------------------------------------------
    # Predictions.

    def decode(self, states: State, names: tuple[str, ...] | None = None) -> dict[str, Gaussian]:
        """Head outputs in normalized units for ``states`` with any leading dims; ``names`` default: all heads
        (each modality name, plus ``pose``)."""
        return self.head(self.latent(states), names)

    def to_physical(self, preds: Mapping[str, Gaussian], dt: Tensor | float) -> dict[str, Gaussian]:
        """Normalized head outputs -> physical units. ``dt`` (s): the step each prediction ends, broadcast to the
        predictions' leading dims; it turns rates into motion over the step (odom deltas, pose)."""
        out: dict[str, Gaussian] = {}
        for name, g in preds.items():
            if name == POSE:
                out[name] = self._rates_to_deltas(self._denorm("pose_rate", g), dt, 0)
                continue
            spec = self.config.modality(name)
            if spec.kind == "odom":
                out[name] = self._rates_to_deltas(self._denorm(f"{name}_rate", g), dt, 2)
            elif spec.kind == "image":
                mean, std = self._pooled_stats(name)
                out[name] = Gaussian(g.mean * std + mean, g.log_std + torch.log(std))
            else:
                out[name] = self._denorm(name, g)
        return out

    def predict(self, states: State, dt: Tensor | float, names: tuple[str, ...] | None = None) -> dict[str, Gaussian]:
        """Predictions in physical units for ``states`` (leading dims e.g. (B, H)), each a :class:`Gaussian`:

        - ranges (e.g. ``lidar``) (..., N) m; IMU (..., K, C); vectors (..., D); depth (..., H/f, W/f) m at the
          reduced resolution ``config.image_decode_factor`` (block means over valid pixels);
        - ``odom`` (..., 5) ``[v m/s, omega rad/s, dx m, dy m, dyaw rad]``, deltas over the step of length dt;
        - ``pose`` (..., 3) ``[dx, dy, dyaw]``: the motion over the step ending at each state, in the frame of the
          step's start (chain with :func:`relative_trajectory`).
        """
        return self.to_physical(self.decode(states, names), dt)

    def _denorm(self, key: str, g: Gaussian) -> Gaussian:
        std = self.norm.std(key)
        return Gaussian(g.mean * std + self.norm.mean(key), g.log_std + torch.log(std))

    def _rates_to_deltas(self, g: Gaussian, dt: Tensor | float, first: int) -> Gaussian:
        """Entries ``first:`` of ``g`` are rates: times dt they become the motion over the step (means scale by
        dt, log-stds shift by log dt); entries before ``first`` pass through."""
        dt_t = dt.to(g.mean).unsqueeze(-1) if isinstance(dt, Tensor) else g.mean.new_tensor(float(dt))
        is_rate = (torch.arange(g.mean.shape[-1], device=g.mean.device) >= first).to(g.mean.dtype)
        return Gaussian(g.mean * (1.0 + is_rate * (dt_t - 1.0)), g.log_std + is_rate * torch.log(dt_t.clamp_min(1e-9)))

    def _pooled_stats(self, name: str) -> tuple[Tensor, Tensor]:
        """An image's mean/std at the decoded resolution ((H/f, W/f) block averages of the full-resolution ones)."""
        f = self.config.image_decode_factor
        mean = F.avg_pool2d(self.norm.mean(name)[None, None], f)[0, 0]
        std = F.avg_pool2d(self.norm.std(name)[None, None], f)[0, 0]
        return mean, std

    # ------------------------------------------------------------------------------------------------------------
    # Training path.

    def observe_sequence(self, batch: Mapping[str, Tensor], state: State | None = None, prev_action: Tensor | None = None,
                         sample: bool = True) -> SequenceOutput:
        """Run the filter over a batch of sequences (the batch contract: (B, T, ...) tensors, ``action[:, t]``
        applied from t to t + 1, ``dt[:, t]`` s since tick t - 1), from ``state`` (default: the initial one)
        with ``prev_action`` (B, A) leading into tick 0 (default: zeros); pass the last state and action of one
        chunk to continue a long episode with the next. Observations are encoded for all ticks at once (present
        ticks only for sparse modalities), then the recurrence runs over T. ``sample=False`` gives exactly the
        states :meth:`observe` would (evaluation)."""
        b, t_len = batch["dt"].shape
        embed = self._encode_sequence(batch, b, t_len)
        state = state if state is not None else self.initial_state(b)
        actions_n = self.norm.normalize("action", batch["action"])
        prev = self.norm.normalize("action", prev_action if prev_action is not None else torch.zeros_like(batch["action"][:, 0]))
        dt = batch["dt"]
        deters, stochs, means, stds = [], [], [], []
        for t in range(t_len):
            deter = self.rssm.transition(state, prev, dt[:, t])
            post = self.rssm.posterior(deter, embed[:, t])
            stoch = post.mean + post.std * torch.randn_like(post.std) if sample else post.mean
            state = State(deter, stoch)
            prev = actions_n[:, t]
            deters.append(deter)
            stochs.append(stoch)
            means.append(post.mean)
            stds.append(post.std)
        deter_seq = torch.stack(deters, dim=1)
        prior = self.rssm.prior(deter_seq)  # batched: the prior does not feed back into the filter
        return SequenceOutput(State(deter_seq, torch.stack(stochs, dim=1)), prior,
                              LatentDist(torch.stack(means, dim=1), torch.stack(stds, dim=1)), embed)

    def _encode_sequence(self, batch: Mapping[str, Tensor], b: int, t_len: int) -> Tensor:
        flat = {}
        for spec in self._specs:
            for key in (spec.name, f"{spec.name}_mask", f"{spec.name}_age"):
                if key in batch:
                    v = batch[key]
                    flat[key] = v.reshape(b * t_len, *v.shape[2:])
        inputs, masks, ages = self._prepare(flat)
        embeddings = {}
        for spec in self._specs:
            if spec.kind not in _SPARSE_KINDS:
                embeddings[spec.name] = self.encoder.encode_modality(spec, inputs)
                continue
            idx = torch.nonzero(masks[spec.name] > 0).squeeze(-1)
            if idx.numel() == 0:
                # Encode one (masked-out) tick anyway so every parameter is in the graph (DDP needs them all).
                idx = torch.zeros(1, dtype=torch.long, device=idx.device)
            sub = {k: v.index_select(0, idx) for k, v in inputs.items() if k.startswith(spec.name)}
            e = self.encoder.encode_modality(spec, sub)
            embeddings[spec.name] = e.new_zeros(b * t_len, e.shape[-1]).index_copy(0, idx, e)
        return self.encoder.fuse_embeddings(embeddings, masks, ages).reshape(b, t_len, -1)

    def targets(self, batch: Mapping[str, Tensor]) -> dict[str, Target]:
        """Every head's target at every tick (normalized, (B, T, *head shape)) with its mask (modality mask x
        ``valid``; depth also per pooled pixel; pose where this and the previous tick have a pose)."""
        valid = batch["valid"].float() if "valid" in batch else torch.ones_like(batch["dt"])
        dt = batch["dt"]
        out: dict[str, Target] = {}
        for spec in self._specs:
            x = batch[spec.name]
            mask_key = f"{spec.name}_mask"
            tick_mask = (batch[mask_key] if mask_key in batch else torch.ones_like(valid))
            if spec.has_sample_mask:
                value = self.norm.normalize(spec.name, x)
                mask = (tick_mask * valid.unsqueeze(-1)).unsqueeze(-1).expand_as(value)
            elif spec.kind == "image":
                value, pixel_mask = self._pooled_depth_target(spec.name, x)
                mask = (tick_mask * valid)[..., None, None] * pixel_mask
            elif spec.kind == "ranges":
                value = self.norm.normalize(spec.name, x)
                mask = (tick_mask * valid).unsqueeze(-1) * self._returns(spec, x)
            elif spec.kind == "odom":
                value = self.norm.normalize(f"{spec.name}_rate", odom_rates(x, dt))
                mask = (tick_mask * valid).unsqueeze(-1).expand_as(value)
            else:
                value = self.norm.normalize(spec.name, x)
                mask = (tick_mask * valid).unsqueeze(-1).expand_as(value)
            out[spec.name] = Target(value, mask)
        if self.config.pose_head:
            value = self.norm.normalize("pose_rate", pose_rates(batch["pose"], dt))
            pm = batch["pose_mask"] * valid
            pair = torch.cat([torch.zeros_like(pm[:, :1]), pm[:, 1:] * pm[:, :-1]], dim=1)
            out[POSE] = Target(value, pair.unsqueeze(-1).expand_as(value))
        return out

    def _pooled_depth_target(self, name: str, depth: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T, H, W) raw depth -> normalized block means over valid pixels and the block mask, (B, T, h, w)."""
        f = self.config.image_decode_factor
        lead = depth.shape[:-2]
        flat = depth.reshape(-1, 1, *depth.shape[-2:])
        valid = (flat > 0).to(flat.dtype)
        total = F.avg_pool2d(flat * valid, f)
        count = F.avg_pool2d(valid, f)
        pooled = total / count.clamp_min(1e-6)
        mean, std = self._pooled_stats(name)
        value = ((pooled - mean) / std) * (count > 0)
        return value.reshape(*lead, *value.shape[-2:]), (count > 0).to(flat.dtype).reshape(*lead, *value.shape[-2:])

    def extra_repr(self) -> str:
        n = sum(p.numel() for p in self.parameters())
        return f"params={n}, modalities={[m.name for m in self._specs]}, deter={self.config.deter}, stoch={self.config.stoch}"


def parameter_count(model: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
