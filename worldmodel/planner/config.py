"""The planner's typed configuration: sampling settings, cost weights, and the robot geometry the cost needs.

Everything here is frozen and validated at construction; errors are :class:`PlannerConfigError` naming the field
(``planner.samples = 1: ...``) and what to change. Numbers only: this module imports neither torch nor the robot
descriptions, so the caller (the runtime, ``oniwm eval-nav``) supplies what comes from the robot: the action limits
(:func:`planner_config_from_dict`) and the footprint and LiDAR mount (:class:`RobotGeometry`).

Example::

    cfg = planner_config_from_dict(preset["planner"], action_low=(-0.46, -1.9), action_high=(0.46, 1.9))
    geometry = RobotGeometry(radius_m=0.171, lidar_xy_m=(-0.04, 0.0), lidar_yaw_rad=0.0,
                             angle_min_rad=-math.pi, angle_increment_rad=2 * math.pi / 360, beams=360)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

__all__ = [
    "METHODS",
    "CostWeights",
    "PlannerConfig",
    "PlannerConfigError",
    "RobotGeometry",
    "planner_config_from_dict",
]

#: Sampling methods: MPPI (exponentially weighted mean, fixed noise) and CEM (elite mean and std).
METHODS = ("mppi", "cem")


class PlannerConfigError(ValueError):
    """A planner setting is invalid; the message names the field and what to change."""


def _number(path: str, value: Any, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> float:
    bounds = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PlannerConfigError(f"{path} = {value!r}: must be a number in {bounds}")
    if value < lo or value > hi or (lo_open and value == lo) or (hi_open and value == hi):
        raise PlannerConfigError(f"{path} = {value!r}: must be in {bounds}")
    return float(value)


def _integer(path: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise PlannerConfigError(f"{path} = {value!r}: must be an integer in [{lo}, {hi}]")
    return value


def _vector(path: str, value: Any, lo: float, hi: float, *, lo_open: bool = False) -> tuple[float, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
        raise PlannerConfigError(f"{path} = {value!r}: must be a non-empty list of numbers, one per action dimension")
    return tuple(_number(f"{path}[{i}]", v, lo, hi, lo_open=lo_open) for i, v in enumerate(value))


@dataclass(frozen=True)
class CostWeights:
    """The task cost (see :mod:`worldmodel.planner.cost`): one weight per term, and the collision model.

    ``collision``: weight of the collision risk, the probability that the most threatened LiDAR beam's predicted
    range is short of the footprint's edge plus ``safety_distance_m``, summed over the horizon steps.
    ``range_noise_m``: the sensor's range noise std, added to the predicted std (a cheap, conservative stand-in
    for adding variances), so a confident model's risk is a steep sigmoid, not a step. ``progress``: per metre
    of change of the distance to the goal from now to the end of the horizon (negative: closer). ``blocked``:
    the fraction of the way toward the goal, up to ``blocked_reach_m``, that the final predicted scan shows
    blocked for the safety disc from the final predicted pose (a terminal cost-to-go: end the horizon where the
    way on is open). ``heading``: mean ``(1 - cos(heading error to the goal)) / 2``. ``effort``: mean squared
    action, each dimension over its limit. ``smoothness``: mean squared change between consecutive actions (the
    first against the action in effect), each dimension over its limit. ``scan_collision``: per horizon step at
    which the footprint plus ``safety_distance_m``, at the predicted pose, overlaps a return of the latest
    measured scan (:meth:`NavigationCost.set_scan`; the static-world check a robot runs beside the model's
    predicted ranges; 0: off).
    """

    collision: float = 10.0
    safety_distance_m: float = 0.05
    range_noise_m: float = 0.02
    progress: float = 2.0
    blocked: float = 1.0
    blocked_reach_m: float = 2.0
    heading: float = 0.3
    effort: float = 0.05
    smoothness: float = 3.0
    scan_collision: float = 0.0

    def __post_init__(self) -> None:
        for name in ("collision", "progress", "blocked", "heading", "effort", "smoothness", "scan_collision"):
            object.__setattr__(self, name, _number(f"planner.cost.{name}", getattr(self, name), 0.0, 1e6))
        for name, hi, lo_open in (("blocked_reach_m", 100.0, True), ("safety_distance_m", 10.0, False),
                                  ("range_noise_m", 10.0, True)):
            object.__setattr__(self, name, _number(f"planner.cost.{name}", getattr(self, name), 0.0, hi, lo_open=lo_open))


@dataclass(frozen=True)
class PlannerConfig:
    """Sampling MPC settings (:class:`worldmodel.planner.SamplingPlanner`).

    ``action_low``/``action_high`` (A,): the box every sampled action is clipped into (physical units, e.g.
    ``[v_mps, omega_radps]``), normally the robot's limits. ``method``: ``mppi`` or ``cem``. ``samples`` N action
    sequences of ``horizon`` H steps of ``step_dt_s`` seconds each (the model is dt-conditioned, so the step need
    not be the control tick). ``iterations``: the most sampling rounds per plan; ``min_iterations`` rounds always
    run in full (0: only the plan's first chunk is sure to be evaluated); more run while ``time_budget_ms`` allows (0: no budget,
    always ``iterations``, and the plan is deterministic given ``seed``); ``chunk``: candidates per rollout call,
    the budget's granularity (0: all N in one call). ``temperature`` (cost units): MPPI's
    lambda, and CEM's weighting of its ``elites``. ``noise_std`` (A,): sampling std per action dimension (CEM's
    initial std, floored at ``min_std_fraction`` of it); ``noise_correlation``: AR(1) coefficient of the noise
    along the horizon (0: white; near 1: smooth sequences). ``warm_start``: start from the previous plan's mean,
    shifted by the time elapsed since it (``warm_start_shift`` steps when the caller does not say).
    """

    action_low: tuple[float, ...]
    action_high: tuple[float, ...]
    method: str = "mppi"
    samples: int = 256
    horizon: int = 10
    step_dt_s: float = 0.1
    iterations: int = 3
    min_iterations: int = 1
    time_budget_ms: float = 15.0
    chunk: int = 0
    temperature: float = 0.1
    elites: int = 32
    noise_std: tuple[float, ...] = (0.2, 0.8)
    min_std_fraction: float = 0.1
    noise_correlation: float = 0.8
    warm_start: bool = True
    warm_start_shift: float = 1.0
    seed: int = 0
    cost: CostWeights = field(default_factory=CostWeights)

    def __post_init__(self) -> None:
        low = _vector("planner.action_low", self.action_low, -1e6, 1e6)
        high = _vector("planner.action_high", self.action_high, -1e6, 1e6)
        if len(low) != len(high) or any(lo >= hi for lo, hi in zip(low, high)):
            raise PlannerConfigError(f"planner.action_low {list(low)} must be below planner.action_high {list(high)}, "
                                     "entry by entry, with one entry per action dimension")
        object.__setattr__(self, "action_low", low)
        object.__setattr__(self, "action_high", high)
        if self.method not in METHODS:
            raise PlannerConfigError(f"planner.method = {self.method!r}: must be one of {list(METHODS)}")
        _integer("planner.samples", self.samples, 2, 1 << 20)
        _integer("planner.horizon", self.horizon, 1, 10_000)
        object.__setattr__(self, "step_dt_s", _number("planner.step_dt_s", self.step_dt_s, 0.0, 60.0, lo_open=True))
        _integer("planner.iterations", self.iterations, 1, 1000)
        _integer("planner.min_iterations", self.min_iterations, 0, self.iterations)
        object.__setattr__(self, "time_budget_ms", _number("planner.time_budget_ms", self.time_budget_ms, 0.0, 1e6))
        _integer("planner.chunk", self.chunk, 0, self.samples)
        object.__setattr__(self, "temperature", _number("planner.temperature", self.temperature, 0.0, 1e6, lo_open=True))
        # Only CEM reads elites; an MPPI config stays valid when its sample count shrinks (the oracle's).
        _integer("planner.elites", self.elites, 1, self.samples if self.method == "cem" else 1 << 20)
        std = _vector("planner.noise_std", self.noise_std, 0.0, 1e6, lo_open=True)
        if len(std) != len(low):
            raise PlannerConfigError(f"planner.noise_std {list(std)}: needs one entry per action dimension ({len(low)})")
        object.__setattr__(self, "noise_std", std)
        object.__setattr__(self, "min_std_fraction", _number("planner.min_std_fraction", self.min_std_fraction, 0.0, 1.0))
        object.__setattr__(self, "noise_correlation",
                           _number("planner.noise_correlation", self.noise_correlation, 0.0, 1.0, hi_open=True))
        if not isinstance(self.warm_start, bool):
            raise PlannerConfigError(f"planner.warm_start = {self.warm_start!r}: must be true or false")
        object.__setattr__(self, "warm_start_shift",
                           _number("planner.warm_start_shift", self.warm_start_shift, 0.0, float(self.horizon)))
        _integer("planner.seed", self.seed, 0, 2**63 - 1)
        if not isinstance(self.cost, CostWeights):
            raise PlannerConfigError("planner.cost: must be a CostWeights (planner_config_from_dict builds one from a mapping)")

    @property
    def action_dim(self) -> int:
        return len(self.action_low)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (lists for tuples); :func:`planner_config_from_dict` reads it back."""
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        return out


def planner_config_from_dict(section: Mapping[str, Any] | None, *, action_low: Sequence[float],
                             action_high: Sequence[float], **overrides: Any) -> PlannerConfig:
    """A :class:`PlannerConfig` from a preset's ``planner:`` mapping (nested ``cost:`` mapping), the robot's action
    limits, and keyword ``overrides`` of any field (e.g. ``samples=64``; applied last).

    A section may tighten the limits with its own ``action_low``/``action_high``; limits beyond the robot's are
    an error (the robot would clip them anyway, and the planner would plan with actions it cannot have).
    Unknown keys are errors naming the known ones.
    """
    raw = dict(section or {})
    raw.update(overrides)
    known = {f.name for f in dataclasses.fields(PlannerConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise PlannerConfigError(f"planner.{unknown[0]}: unknown field; known: {sorted(known)}")
    robot_low = _vector("robot action_low", action_low, -1e6, 1e6)
    robot_high = _vector("robot action_high", action_high, -1e6, 1e6)
    for name, robot, inside in (("action_low", robot_low, lambda v, r: v >= r), ("action_high", robot_high, lambda v, r: v <= r)):
        if name in raw and raw[name] is not None:
            mine = _vector(f"planner.{name}", raw[name], -1e6, 1e6)
            if len(mine) != len(robot) or not all(inside(v, r) for v, r in zip(mine, robot)):
                raise PlannerConfigError(f"planner.{name} = {list(mine)}: must lie within the robot's limits {list(robot)}")
            raw[name] = mine
        else:
            raw[name] = robot
    cost = raw.get("cost")
    if not isinstance(cost, CostWeights):
        cost = dict(cost or {})
        cost_known = {f.name for f in dataclasses.fields(CostWeights)}
        cost_unknown = sorted(set(cost) - cost_known)
        if cost_unknown:
            raise PlannerConfigError(f"planner.cost.{cost_unknown[0]}: unknown field; known: {sorted(cost_known)}")
        raw["cost"] = CostWeights(**cost)
    return PlannerConfig(**raw)


@dataclass(frozen=True)
class RobotGeometry:
    """What the collision cost needs to know of the robot: a disc footprint of ``radius_m`` about the base centre,
    and a planar LiDAR at ``lidar_xy_m`` (base frame, m) turned by ``lidar_yaw_rad``, whose beam ``i`` points at
    ``angle_min_rad + i * angle_increment_rad`` in the sensor frame (``beams`` beams; predicted ranges are along
    these beams, from the sensor)."""

    radius_m: float
    lidar_xy_m: tuple[float, float]
    lidar_yaw_rad: float
    angle_min_rad: float
    angle_increment_rad: float
    beams: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "radius_m", _number("geometry.radius_m", self.radius_m, 0.0, 100.0, lo_open=True))
        xy = _vector("geometry.lidar_xy_m", self.lidar_xy_m, -100.0, 100.0)
        if len(xy) != 2:
            raise PlannerConfigError(f"geometry.lidar_xy_m = {list(xy)}: must be [x, y]")
        if math.hypot(*xy) >= self.radius_m:
            raise PlannerConfigError(f"geometry.lidar_xy_m = {list(xy)}: the LiDAR must sit inside the footprint "
                                     f"(radius {self.radius_m:g} m) for its ranges to bound the clearance")
        object.__setattr__(self, "lidar_xy_m", xy)
        object.__setattr__(self, "lidar_yaw_rad", _number("geometry.lidar_yaw_rad", self.lidar_yaw_rad, -10.0, 10.0))
        object.__setattr__(self, "angle_min_rad", _number("geometry.angle_min_rad", self.angle_min_rad, -10.0, 10.0))
        object.__setattr__(self, "angle_increment_rad",
                           _number("geometry.angle_increment_rad", self.angle_increment_rad, 0.0, 10.0, lo_open=True))
        _integer("geometry.beams", self.beams, 1, 1 << 16)
