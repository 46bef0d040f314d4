"""Sampling MPC in latent space: MPPI or CEM, warm-started, batched, anytime.

Each :meth:`SamplingPlanner.plan` call runs sampling rounds ("iterations"). A round draws N action sequences of
H steps around the current mean (Gaussian noise per action dimension, AR(1)-correlated along the horizon, clipped
to the action bounds), hands all N to the ``rollout`` callable at once (the world model imagining from the belief,
or any other predictor), scores them with the :class:`~worldmodel.planner.cost.NavigationCost` and moves the mean:

- **MPPI**: the mean becomes the average of the candidates weighted by ``exp(-(cost - min cost) / temperature)``;
  the noise std stays fixed.
- **CEM**: the mean and std become the ``temperature``-weighted mean and std of the ``elites`` best candidates;
  the std restarts from ``noise_std`` at each plan and never falls below ``min_std_fraction`` of it.

Row 0 of every round is the mean itself and, once there is a previous plan, row 1 is that plan (both shifted
forward by the time elapsed since the last plan): the warm start is always evaluated, never only perturbed.

**Anytime**: a round's candidates go to the rollout in chunks of ``chunk`` (0: all N at once), and a chunk is
evaluated only while the time budget allows one more (judged by the last chunk's duration), except in the first
``min_iterations`` rounds, which always run in full, and for the plan's first chunk (which holds the warm start).
The mean update weighs the evaluated candidates only. So a plan on a loaded machine evaluates fewer candidates
rather than overrunning its tick. The result is the best candidate evaluated in any round (lowest cost), so
stopping early returns the best plan found so far, never an unevaluated average. The warm start
for the next call is the last mean; with ``time_budget_ms = 0`` the number of rounds is fixed and a plan is
deterministic given the seed.

Everything the rounds touch is preallocated in the constructor (TD-MPC2 style): the noise and sample tensors,
costs, weights, the mean (updated in place), the best plan.

Example::

    planner = SamplingPlanner(cfg, NavigationCost(cfg.cost, geometry, cfg.samples, cfg.horizon,
                                                  cfg.action_low, cfg.action_high), rollout)
    result = planner.plan(belief, goal_xy_m=np.array([2.0, 0.3]), prev_action=np.zeros(2), elapsed_s=0.1)
    v_mps, omega_radps = result.action
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, NamedTuple, Protocol

import numpy as np

from worldmodel.planner.config import PlannerConfig
from worldmodel.planner.cost import TERMS, NavigationCost

__all__ = ["PlanPredictions", "PlanResult", "Predictions", "Rollout", "SamplingPlanner"]


class Predictions(Protocol):
    """What the cost reads from a rollout (:class:`worldmodel.backends.base.Predictions` is one), numpy arrays over
    N candidates and H steps, after each step: ``lidar_mean_m``/``lidar_std_m`` (N, H, B), the predicted scan (m);
    ``pose_mean``/``pose_std`` (N, H, 3) ``[x m, y m, yaw rad]`` relative to the pose at the start of the rollout,
    and its std."""

    lidar_mean_m: np.ndarray
    lidar_std_m: np.ndarray
    pose_mean: np.ndarray
    pose_std: np.ndarray


#: ``rollout(state, actions (N, H, A) float32, step_dt_s) -> Predictions``: the N candidates applied from the
#: opaque ``state`` (a belief), each step lasting ``step_dt_s`` seconds (``Backend.rollout`` is one).
Rollout = Callable[[Any, np.ndarray, float], Predictions]


class PlanPredictions(NamedTuple):
    """What the rollout predicted for the plan returned, after each of its H steps: ``lidar_mean_m``/``lidar_std_m``
    (H, B) m and ``pose_mean``/``pose_std`` (H, 3) ``[x m, y m, yaw rad]`` relative to the pose at planning time.
    Views of the planner's buffers (valid until the next plan); NaN when no round ran."""

    lidar_mean_m: np.ndarray
    lidar_std_m: np.ndarray
    pose_mean: np.ndarray
    pose_std: np.ndarray


class PlanResult(NamedTuple):
    """One plan. ``action`` (A,): the first action of ``plan`` (H, A), the best candidate evaluated (both views of
    the planner's buffer, valid until the next :meth:`SamplingPlanner.plan`). ``cost``: its total (NaN when no
    round ran), ``terms``: its weighted cost terms. ``iterations``: rounds run; ``elapsed_ms``: wall time.
    ``predictions``: the rollout's predictions for ``plan``."""

    action: np.ndarray
    plan: np.ndarray
    cost: float
    terms: dict[str, float]
    iterations: int
    elapsed_ms: float
    predictions: PlanPredictions


class SamplingPlanner:
    """MPPI / CEM over action sequences scored on predicted outcomes (module docstring).

    ``config``: the sampling settings. ``cost``: built for ``(config.samples, config.horizon)``. ``rollout``: the
    batched predictor. Not thread-safe; one planner per control loop.
    """

    def __init__(self, config: PlannerConfig, cost: NavigationCost, rollout: Rollout) -> None:
        n, h, a = config.samples, config.horizon, config.action_dim
        if cost.shape[:2] != (n, h) or cost.action_dim != a:
            raise ValueError(f"the cost is built for (samples, horizon, actions) = {(*cost.shape[:2], cost.action_dim)}, "
                             f"the planner config has {(n, h, a)}")
        self.config = config
        self.cost = cost
        self.rollout = rollout
        self._low = np.asarray(config.action_low, np.float32)
        self._high = np.asarray(config.action_high, np.float32)
        self._noise_std = np.asarray(config.noise_std, np.float32)
        self._min_std = self._noise_std * np.float32(config.min_std_fraction)
        # The plan a robot at rest starts from: zero action, moved into the bounds if zero is outside them.
        self._initial = np.clip(np.zeros((h, a), np.float32), self._low, self._high)
        self.mean = self._initial.copy()  # (H, A) the warm start, updated in place
        self.std = np.broadcast_to(self._noise_std, (h, a)).copy()  # (H, A)
        self._previous = self._initial.copy()  # (H, A) the last plan returned, shifted with the mean
        self._has_previous = False
        self.samples = np.zeros((n, h, a), np.float32)  # (N, H, A) the last round's candidates
        self.costs = np.zeros(n, np.float64)  # (N,) their costs
        self._noise = np.zeros((n, h, a), np.float32)
        self._carry = np.zeros((n, a), np.float32)
        self._weights = np.zeros(n, np.float64)
        self._weights32 = np.zeros(n, np.float32)
        e = min(config.elites, n)
        self._elites = np.zeros((e, h, a), np.float32)
        self._elite_costs = np.zeros(e, np.float64)
        self._elite_weights = np.zeros(e, np.float32)
        self._best = self._initial.copy()
        beams = cost.shape[2]
        self._best_pred = PlanPredictions(np.full((h, beams), np.nan, np.float32), np.full((h, beams), np.nan, np.float32),
                                          np.full((h, 3), np.nan, np.float32), np.full((h, 3), np.nan, np.float32))
        self._best_terms = {name: math.nan for name in TERMS}
        self._shift_scratch = np.zeros((2, h, a), np.float32)
        self._shift_steps = -1.0
        self._shift_index: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._rng = np.random.default_rng(config.seed)
        # Rollout chunks: (first row, samples view, costs view), the same objects every call (backends check an
        # input array once per object).
        size = config.chunk or n
        self._chunks = [(lo, self.samples[lo:lo + size], self.costs[lo:lo + size]) for lo in range(0, n, size)]
        self.evaluated = 0  # candidates the last plan evaluated

    def reset(self, seed: int | None = None) -> None:
        """Forget the previous plan (a new episode) and reseed the noise (default: the config's seed)."""
        self._rng = np.random.default_rng(self.config.seed if seed is None else seed)
        np.copyto(self.mean, self._initial)
        np.copyto(self._previous, self._initial)
        self._has_previous = False

    def shift(self, steps: float) -> None:
        """Move the warm start ``steps`` (may be fractional, >= 0) steps forward in time: entry h takes the plan
        at h + steps (linearly interpolated); the tail repeats the last action."""
        self._shift(self.mean, steps)
        self._shift(self._previous, steps)

    def _shift(self, buf: np.ndarray, steps: float) -> None:
        if steps <= 0.0:
            return
        if steps != self._shift_steps or self._shift_index is None:
            h = buf.shape[0]
            pos = np.minimum(np.arange(h) + steps, h - 1)
            lo = np.floor(pos).astype(np.intp)
            self._shift_index = (lo, np.minimum(lo + 1, h - 1), (pos - lo).astype(np.float32)[:, None])
            self._shift_steps = steps
        lo, hi, frac = self._shift_index
        a, b = self._shift_scratch
        np.take(buf, lo, axis=0, out=a)
        np.take(buf, hi, axis=0, out=b)
        b -= a
        b *= frac
        np.add(a, b, out=buf)

    def _sample(self) -> None:
        """Fill :attr:`samples`: the mean, the previous plan, then mean + correlated noise; clipped to bounds."""
        cfg = self.config
        eps = self._noise
        self._rng.standard_normal(dtype=np.float32, out=eps)
        rho = cfg.noise_correlation
        if rho > 0.0:
            # AR(1) along the horizon with unit stationary variance: smooth sequences, same per-step spread.
            kick = np.float32(math.sqrt(1.0 - rho * rho))
            for h in range(1, cfg.horizon):
                np.multiply(eps[:, h - 1], np.float32(rho), out=self._carry)
                eps[:, h] *= kick
                eps[:, h] += self._carry
        np.multiply(eps, self.std, out=self.samples)
        self.samples += self.mean
        self.samples[0] = self.mean
        if self._has_previous and cfg.warm_start:
            self.samples[1] = self._previous
        np.clip(self.samples, self._low, self._high, out=self.samples)

    def _update_mppi(self, best_cost: float) -> None:
        w = self._weights
        np.subtract(self.costs, best_cost, out=w)
        w *= -1.0 / self.config.temperature
        np.exp(w, out=w)
        w /= w.sum()
        np.copyto(self._weights32, w)
        np.einsum("n,nha->ha", self._weights32, self.samples, out=self.mean)

    def _update_cem(self) -> None:
        e = self.config.elites
        idx = np.argpartition(self.costs, e - 1)[:e] if e < self.config.samples else np.arange(e)
        np.take(self.samples, idx, axis=0, out=self._elites)
        np.take(self.costs, idx, out=self._elite_costs)
        w = self._elite_costs
        w -= w.min()
        w *= -1.0 / self.config.temperature
        np.exp(w, out=w)
        w /= w.sum()
        np.copyto(self._elite_weights, w)
        np.einsum("e,eha->ha", self._elite_weights, self._elites, out=self.mean)
        self._elites -= self.mean
        np.square(self._elites, out=self._elites)
        np.einsum("e,eha->ha", self._elite_weights, self._elites, out=self.std)
        np.sqrt(self.std, out=self.std)
        np.clip(self.std, self._min_std, self._noise_std, out=self.std)

    def plan(self, state: Any, goal_xy_m: np.ndarray, prev_action: np.ndarray, elapsed_s: float | None = None) -> PlanResult:
        """Plan from ``state`` (passed to the rollout as is) toward ``goal_xy_m`` (2,) m in the robot frame, with
        ``prev_action`` (A,) in effect now; ``elapsed_s``: time since the previous plan, by which the warm start is
        shifted (None: ``config.warm_start_shift`` steps)."""
        cfg = self.config
        t0 = time.perf_counter()
        if cfg.warm_start and self._has_previous:
            self.shift(cfg.warm_start_shift if elapsed_s is None else max(0.0, elapsed_s) / cfg.step_dt_s)
        else:
            np.copyto(self.mean, self._initial)
        if cfg.method == "cem":
            np.copyto(self.std, np.broadcast_to(self._noise_std, self.std.shape))
        budget_s = cfg.time_budget_ms / 1000.0
        deadline = t0 + budget_s
        best_cost = math.inf
        iterations, evaluated, last_chunk_s = 0, 0, 0.0
        while iterations < cfg.iterations:
            guaranteed = iterations < cfg.min_iterations
            if not (guaranteed or evaluated == 0 or budget_s == 0.0 or time.perf_counter() + last_chunk_s <= deadline):
                break
            self._sample()
            self.costs.fill(math.inf)  # candidates left unevaluated when the budget ends weigh nothing
            round_best = math.inf
            for lo, samples, costs in self._chunks:
                start = time.perf_counter()
                if not (guaranteed or evaluated == 0 or budget_s == 0.0 or start + last_chunk_s <= deadline):
                    break
                pred = self.rollout(state, samples, cfg.step_dt_s)
                self.cost(pred.lidar_mean_m, pred.lidar_std_m, pred.pose_mean, samples, goal_xy_m, prev_action, out=costs)
                # A non-finite prediction must not win, nor poison the weights.
                np.nan_to_num(costs, copy=False, nan=math.inf, posinf=math.inf, neginf=math.inf)
                evaluated += len(costs)
                k = int(np.argmin(costs))
                round_best = min(round_best, float(costs[k]))
                if float(costs[k]) < best_cost:
                    best_cost = float(costs[k])
                    np.copyto(self._best, samples[k])
                    for buf, full in zip(self._best_pred, (pred.lidar_mean_m, pred.lidar_std_m, pred.pose_mean, pred.pose_std)):
                        np.copyto(buf, full[k])
                    for name in TERMS:
                        self._best_terms[name] = float(self.cost.terms[name][k])
                last_chunk_s = time.perf_counter() - start
            iterations += 1
            if math.isfinite(round_best):
                if cfg.method == "mppi":
                    self._update_mppi(round_best)
                else:
                    self._update_cem()
        self.evaluated = evaluated
        if not math.isfinite(best_cost):
            # No round ran, or every candidate was non-finite: the warm start, unevaluated.
            np.copyto(self._best, self.mean)
            best_cost = math.nan
            for name in TERMS:
                self._best_terms[name] = math.nan
            for buf in self._best_pred:
                buf.fill(np.nan)
        np.copyto(self._previous, self._best)
        self._has_previous = True
        return PlanResult(self._best[0], self._best, best_cost, dict(self._best_terms), iterations,
                          (time.perf_counter() - t0) * 1000.0, self._best_pred)
