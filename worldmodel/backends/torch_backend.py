"""The ``torch`` backend: the world model in eager PyTorch, the reference every compiled backend is checked against.

:class:`ObserveGraph` and :class:`RolloutGraph` are the two hot-path computations as modules with flat tensor
inputs and outputs in :class:`worldmodel.backends.base.IOSpec` order: the exporter traces exactly these, so the
eager backend and the exported graphs compute the same function by construction, and the parity check compares
like with like. :class:`TorchBackend` runs them under ``torch.inference_mode`` on numpy buffers it wraps once.
"""

from __future__ import annotations

import logging
from typing import Mapping

import numpy as np
import torch
from torch import Tensor, nn

from worldmodel.backends.base import (
    BackendConfig,
    BeliefState,
    IOSpec,
    PredictionBuffers,
    Predictions,
    check_actions,
    float32_input,
    positive_finite,
)
from worldmodel.model import POSE, State, WorldModel, relative_trajectory

__all__ = ["ObserveGraph", "RolloutGraph", "TorchBackend"]

log = logging.getLogger(__name__)


class ObserveGraph(nn.Module):
    """The belief update at batch 1 with flat inputs (:meth:`IOSpec.observe_inputs` order).

    ``deter`` (1, D), ``stoch`` (1, Z), ``prev_action`` (1, A) physical units, ``dt_s`` (1,) seconds, then each
    observation of one tick with a batch dim of 1 (raw values, masks, ages in s) -> ``(deter, stoch)``.
    """

    def __init__(self, model: WorldModel, io: IOSpec) -> None:
        super().__init__()
        self.model = model
        self.names = tuple(name for name, _ in io.obs)

    def forward(self, deter: Tensor, stoch: Tensor, prev_action: Tensor, dt_s: Tensor, *obs: Tensor) -> tuple[Tensor, Tensor]:
        state = self.model.observe(State(deter, stoch), dict(zip(self.names, obs)), prev_action, dt_s)
        return state.deter, state.stoch


class RolloutGraph(nn.Module):
    """The planner's imagination with flat inputs (:meth:`IOSpec.rollout_inputs` order).

    ``deter`` (1, D) and ``stoch`` (1, Z) (the current belief, broadcast to every sample), ``actions`` (N, H, A)
    physical units, ``dt_s`` (1,) the length of every step in seconds -> ``lidar_mean_m``, ``lidar_std_m``
    (N, H, beams) and ``pose_mean``, ``pose_std`` (N, H, 3) (see :class:`worldmodel.backends.base.Predictions`).
    Follows the prior mean (deterministic), as the heads' uncertainty expects. With ``io.beam_stride`` k > 1 the
    LiDAR head computes beams 0, k, 2k, ... only (:meth:`GaussianHead.strided`): the same values, k times cheaper.
    """

    def __init__(self, model: WorldModel, io: IOSpec) -> None:
        super().__init__()
        self.model = model
        stride = io.beam_stride
        head = model.head.heads[io.lidar]
        self.lidar_head = head.strided(stride) if stride > 1 else head
        self.register_buffer("lidar_norm_mean", model.norm.mean(io.lidar)[::stride].clone())
        self.register_buffer("lidar_norm_std", model.norm.std(io.lidar)[::stride].clone())

    def forward(self, deter: Tensor, stoch: Tensor, actions: Tensor, dt_s: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        n = actions.shape[0]
        start = State(deter.expand(n, -1), stoch.expand(n, -1))
        feat = self.model.latent(self.model.imagine(start, actions, dt_s))
        lidar = self.lidar_head(feat)
        pose = self.model.to_physical(self.model.head(feat, (POSE,)), dt_s)[POSE]
        pose_mean, pose_var = relative_trajectory(pose)
        return (lidar.mean * self.lidar_norm_std + self.lidar_norm_mean, lidar.std * self.lidar_norm_std,
                pose_mean, pose_var.sqrt())


class TorchBackend:
    """Eager PyTorch on the CPU: the reference backend. See :class:`worldmodel.backends.base.Backend`.

    ``model``: a :class:`WorldModel` (put in eval mode). ``horizon``/``max_samples``: the rollout's H and largest N,
    which size the output buffers. ``threads``/``observe_threads``: intra-op threads of the rollout and of the
    belief update (None: leave torch's setting). Torch has one process-wide pool, so each call resizes it when it
    differs: the batch-1 update must not run on two threads, whose OpenMP barriers cost more than its ops (on a
    loaded 2-core machine, 100x more).
    """

    name = "torch"

    def __init__(self, model: WorldModel, horizon: int = 10, max_samples: int = 256, threads: int | None = None,
                 observe_threads: int | None = 1, beam_stride: int = 1) -> None:
        self._threads = threads or torch.get_num_threads()
        self._observe_threads = observe_threads or self._threads
        self.model = model.eval()
        self.io = IOSpec.from_model_config(model.config, horizon, max_samples, beam_stride)
        self.observe_graph = ObserveGraph(model, self.io)
        self.rollout_graph = RolloutGraph(model, self.io)
        # Two state buffers alternate, so the state just returned can be passed straight back in.
        self._states = [self.initial_state() for _ in range(2)]
        self._state_t = [(torch.from_numpy(s.deter), torch.from_numpy(s.stoch)) for s in self._states]
        self._dt = torch.zeros(1)
        self._pred = PredictionBuffers(self.io)
        self._pred_t = tuple(torch.from_numpy(a) for a in self._pred.arrays())
        # Tensors wrapping the caller's arrays in place, rebuilt (and checked) only when an array object changes.
        self._wrapped: dict[str, tuple[np.ndarray, Tensor]] = {}

    @classmethod
    def from_config(cls, config: BackendConfig) -> TorchBackend:
        """The backend of ``config.checkpoint`` (a checkpoint or run directory) with its sizes and threads."""
        from worldmodel.checkpoint import load_checkpoint

        if not config.checkpoint:
            raise ValueError("backend torch needs backend.checkpoint (a checkpoint or run directory)")
        model, info = load_checkpoint(config.checkpoint)
        log.info("torch backend: %s (step %d)", info.path, info.step)
        return cls(model, config.horizon, config.max_samples, config.rollout_threads, config.observe_threads,
                   config.beam_stride)

    def initial_state(self) -> BeliefState:
        return BeliefState(np.zeros((1, self.io.deter), np.float32), np.zeros((1, self.io.stoch), np.float32))

    def _tensor(self, key: str, value: np.ndarray, shape: tuple[int, ...], batch: bool = False) -> Tensor:
        """``value`` (of ``shape``) as a tensor sharing its memory, with a leading dim of 1 when ``batch``."""
        cached = self._wrapped.get(key)
        if cached is not None and cached[0] is value:
            return cached[1]
        array = float32_input(value, shape, key)
        tensor = torch.from_numpy(array)
        if batch:
            tensor = tensor.unsqueeze(0)
        if array is value:  # a view of the caller's buffer: later calls read its new values in place
            self._wrapped[key] = (array, tensor)
        return tensor

    def observe(self, state: BeliefState, obs: Mapping[str, np.ndarray], prev_action: np.ndarray, dt_s: float) -> BeliefState:
        if torch.get_num_threads() != self._observe_threads:
            torch.set_num_threads(self._observe_threads)
        self._dt.fill_(positive_finite(dt_s, "dt_s"))
        io = self.io
        inputs = [self._tensor(name, obs[name], shape, batch=True) for name, shape in io.obs]
        action = self._tensor("prev_action", prev_action, (io.action_dim,), batch=True)
        out = 1 if state.deter is self._states[0].deter else 0
        with torch.inference_mode():
            deter, stoch = self.observe_graph(self._tensor("deter", state.deter, (1, io.deter)),
                                              self._tensor("stoch", state.stoch, (1, io.stoch)), action, self._dt, *inputs)
            self._state_t[out][0].copy_(deter)
            self._state_t[out][1].copy_(stoch)
        return self._states[out]

    def rollout(self, state: BeliefState, actions: np.ndarray, dt_s: float) -> Predictions:
        n = check_actions(actions, self.io)
        if torch.get_num_threads() != self._threads:
            torch.set_num_threads(self._threads)
        self._dt.fill_(positive_finite(dt_s, "dt_s"))
        io = self.io
        with torch.inference_mode():
            outputs = self.rollout_graph(self._tensor("rollout_deter", state.deter, (1, io.deter)),
                                         self._tensor("rollout_stoch", state.stoch, (1, io.stoch)),
                                         self._tensor("actions", actions, (n, io.horizon, io.action_dim)), self._dt)
            for buf, value in zip(self._pred_t, outputs):
                buf[:n].copy_(value)
        return self._pred.view(n)
