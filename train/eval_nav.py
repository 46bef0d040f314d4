"""``oniwm eval-nav``: closed-loop navigation on unseen hallways, world-model MPC against reference controllers.

Every episode is a hallway world whose seed is in the dataset's **eval split** (:func:`train.dataset.split_of` with
the preset's ``dataset:`` section, scanning seeds up from ``--seed-start``), so no navigation world was trained on.
Each controller drives the same world with the same sensor-noise seed, in-process on :class:`sim.robot_sim.RobotSim`
at ``control_hz`` (50 Hz), from the start pose until the base centre is within ``goal_radius_m`` of the goal
(success), it has stayed within ``stuck_distance_m`` of one place for ``stuck_s`` (stuck), or ``max_duration_s``.

Controllers (``--controllers``):

- ``wm_mpc``: the world model of ``--checkpoint`` behind a backend (``torch`` eager, or ``onnxruntime`` on an
  export). The belief is updated **every tick (50 Hz)** from the sensor readings through
  :class:`worldmodel.observation.TickAssembler`, exactly as in training; the planner
  (:class:`worldmodel.planner.SamplingPlanner`, the preset's ``planner:`` section) **replans at ``replan_hz``
  (10 Hz)** from the current belief, and between plans the controller plays the plan at the offset of the elapsed
  time. Its goal is the corridor centreline point ``lookahead_m`` ahead of its own pose estimate, the start pose
  composed with the integrated wheel odometry (what a robot with a route map has); ground truth is never used.
  When progress along the route stalls, the goal backs out and detours for a while (:class:`RouteGoal`).
- ``gap``: the reactive follow-the-gap controller (:class:`train.policies.FollowGap`, the preset's
  ``collect.policies.gap`` parameters), given the goal in the odometry frame.
- ``oracle``: the same planner and cost, but every candidate is simulated by MuJoCo itself from the true current
  state (:class:`SimRollout`: ``mujoco.rollout`` of the full physics, then LiDAR rays cast at the true poses, no
  noise), toward the lookahead point of the true pose (the same :class:`RouteGoal`): an upper bound. To keep it
  affordable it samples fewer candidates (``oracle_samples``), casts every ``oracle_beam_stride``-th beam and
  replans at ``oracle_replan_hz`` (its plans are exact, so playing them open loop between replans loses little).
- ``random``: smooth random commands (an Ornstein-Uhlenbeck process, :class:`train.policies.NoisePolicy`, no
  safety shield).

By default the planners run a fixed number of rounds per plan (``planner.iterations``, no time budget), so the
results do not depend on the machine's load; ``--anytime`` applies the preset's ``time_budget_ms`` instead. The
time each plan took is reported either way.

Per controller: success rate, collisions (contact onsets) per episode and the share of collision-free episodes,
time to goal (successful episodes), path length (ground truth), centreline progress, end reasons, and the
planners' timing. Targets: world-model MPC succeeds in at least 90% of episodes, reaches at least 0.9 x the
oracle's success rate, and beats follow-the-gap (a higher success rate; at an equal one, fewer collisions; at equal
collisions too, a shorter mean time to goal). The report is JSON (written atomically) plus a table on stdout.

Example::

    oniwm eval-nav --checkpoint runs/hallway --episodes 20 --json nav.json [--config configs/hallway.yaml]

Exit status: 0 when the report was written, 2 on bad input.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

from robots.model_spec import observation_spec, robot_geometry
from worldmodel.planner.route import Route, RouteGoal, RouteGoalConfig

log = logging.getLogger("train.eval_nav")

__all__ = [
    "CONTROLLERS",
    "NavConfig",
    "OracleMPC",
    "PolicyController",
    "SimRollout",
    "WorldModelMPC",
    "evaluate_navigation",
    "nav_seeds",
    "register",
    "run",
    "run_episode",
    "summarize",
    "table",
    "targets",
]

#: Controllers in report order.
CONTROLLERS = ("wm_mpc", "gap", "oracle", "random")
REPORT_FORMAT = "oniwm.eval_nav/1"
_NS = 1_000_000_000


@dataclass(frozen=True)
class NavConfig:
    """The evaluation's settings (module docstring); the main ones have command-line flags.

    ``episodes``: worlds per controller. ``seed_start``: the first world seed considered (eval-split seeds are
    taken from here up). ``max_duration_s``, ``goal_radius_m``, ``stuck_s`` (0: never), ``stuck_distance_m``: how an
    episode ends. ``control_hz``: the tick rate of every controller. ``replan_hz``: the world-model planner's rate
    (a divisor of ``control_hz``). ``route``: where along the centreline the planners' goal point is, and their
    recovery when progress stalls (:class:`~worldmodel.planner.route.RouteGoalConfig`, as the runtime's).
    ``oracle_samples``, ``oracle_beam_stride``, ``oracle_replan_hz``, ``oracle_threads``: the oracle's reductions
    and its rollout threads. ``anytime``: apply the planner's time budget (else a fixed number of rounds).
    """

    episodes: int = 20
    controllers: tuple[str, ...] = CONTROLLERS
    seed_start: int = 0
    max_duration_s: float = 180.0
    goal_radius_m: float = 0.5
    stuck_s: float = 30.0
    stuck_distance_m: float = 0.3
    control_hz: float = 50.0
    replan_hz: float = 10.0
    route: RouteGoalConfig = field(default_factory=RouteGoalConfig)
    oracle_samples: int = 32
    oracle_beam_stride: int = 4
    oracle_replan_hz: float = 5.0
    oracle_threads: int = 1
    anytime: bool = False

    def __post_init__(self) -> None:
        if self.episodes < 1:
            raise ValueError(f"episodes = {self.episodes}: must be >= 1")
        unknown = sorted(set(self.controllers) - set(CONTROLLERS))
        if unknown or not self.controllers:
            raise ValueError(f"controllers {list(self.controllers)}: choose from {list(CONTROLLERS)}")
        for name in ("max_duration_s", "goal_radius_m", "control_hz", "stuck_distance_m"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} = {value!r}: must be a positive number")
        for name in ("stuck_s",):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"{name} = {getattr(self, name)!r}: must be >= 0 (0: off)")
        for name in ("replan_hz", "oracle_replan_hz"):
            rate = getattr(self, name)
            if not (math.isfinite(rate) and rate > 0 and abs(self.control_hz / rate - round(self.control_hz / rate)) < 1e-9):
                raise ValueError(f"{name} = {rate!r}: must divide control_hz = {self.control_hz:g}")
        for name, least in (("oracle_samples", 2), ("oracle_beam_stride", 1), ("oracle_threads", 1)):
            if getattr(self, name) < least:
                raise ValueError(f"{name} = {getattr(self, name)}: must be >= {least}")


# ----------------------------------------------------------------------------------------------------------------
# Seeds, route and geometry.


def nav_seeds(count: int, dataset_section: Mapping[str, Any] | None, start: int = 0, limit: int = 1_000_000) -> list[int]:
    """The first ``count`` world seeds from ``start`` up whose split is ``eval`` under the preset's ``dataset:``
    section (its explicit ``eval_seeds``, or the hash rule), so no navigation world is a training world."""
    from train.dataset import dataset_config_from_dict, split_of

    config = dataset_config_from_dict(dict(dataset_section or {}))
    seeds: list[int] = []
    seed = start
    while len(seeds) < count and seed < start + limit:
        if split_of(seed, "", config) == "eval":
            seeds.append(seed)
        seed += 1
    if len(seeds) < count:
        raise ValueError(f"only {len(seeds)} eval-split seeds in [{start}, {start + limit}); wanted {count} "
                         "(raise dataset.eval_fraction or list more dataset.eval_seeds)")
    return seeds


def _compose(start: Any, x: float, y: float, yaw: float) -> tuple[float, float, float]:
    """The odometry pose (x, y, yaw), given in the frame of the start pose, in the world frame."""
    c, s = math.cos(start.yaw_rad), math.sin(start.yaw_rad)
    return start.x_m + c * x - s * y, start.y_m + s * x + c * y, start.yaw_rad + yaw


# ----------------------------------------------------------------------------------------------------------------
# Controllers.


@dataclass
class EpisodeContext:
    """What a controller may know of an episode at reset: the seed, the world's start, goal and centreline (the
    route), and the simulator, which only the oracle may read."""

    seed: int
    world: Any
    route: Route
    sim: Any


class Controller(Protocol):
    """One navigation controller: ``reset`` per episode, then one command per control tick from the readings
    stamped since the previous tick; ``stats`` summarises the episode's compute and recoveries (JSON-ready)."""

    name: str

    def reset(self, episode: EpisodeContext) -> None: ...

    def __call__(self, readings: Sequence[Any], t_ns: int) -> tuple[float, float]: ...

    def stats(self) -> dict[str, Any]: ...


def _ms_stats(values: Sequence[float]) -> dict[str, Any]:
    if not values:
        return {"count": 0, "p50": None, "p95": None, "max": None}
    arr = np.asarray(values)
    return {"count": int(arr.size), "p50": float(np.percentile(arr, 50)), "p95": float(np.percentile(arr, 95)),
            "max": float(arr.max())}


class _Player:
    """Plays the latest plan: the action of the plan step the time since planning falls in (the last step
    after its end)."""

    def __init__(self, horizon: int, action_dim: int, step_dt_s: float) -> None:
        self.plan = np.zeros((horizon, action_dim), np.float32)
        self.step_ns = round(step_dt_s * _NS)
        self.planned_ns = 0

    def set(self, plan: np.ndarray, t_ns: int) -> None:
        np.copyto(self.plan, plan)
        self.planned_ns = t_ns

    def action(self, t_ns: int) -> tuple[float, float]:
        k = min((t_ns - self.planned_ns) // self.step_ns, self.plan.shape[0] - 1)
        return float(self.plan[k, 0]), float(self.plan[k, 1])


class WorldModelMPC:
    """World-model MPC (module docstring): a backend's belief update every tick, its batched rollout in the
    planner every ``replan_every`` ticks, odometry dead reckoning for the goal point."""

    name = "wm_mpc"

    def __init__(self, backend: Any, planner_config: Any, robot: Any, nav: NavConfig, max_age_s: float) -> None:
        from worldmodel.observation import TickAssembler
        from worldmodel.planner import NavigationCost, SamplingPlanner

        spec = observation_spec(robot, nav.control_hz)
        geometry = robot_geometry(robot, backend.io.beam_stride)  # the beams the rollout decodes
        if backend.io.beams != geometry.beams:
            raise ValueError(f"the model predicts {backend.io.beams} LiDAR beams, the robot's LiDAR has {geometry.beams}")
        self.backend = backend
        self.nav = nav
        self.assembler = TickAssembler(spec, nav.control_hz, max_age_s, action_timeout_s=robot.drive.command_timeout_s)
        self._kind = spec.kind_of_topic
        self._odom_topic = spec.topics.get("odom")
        cfg = planner_config
        cost = NavigationCost(cfg.cost, geometry, cfg.samples, cfg.horizon, cfg.action_low, cfg.action_high)
        self.planner = SamplingPlanner(cfg, cost, backend.rollout)
        # The latest scan on the planner's beams, for its scan_collision term (as the runtime does).
        self._scan = self.assembler.out["lidar"][::backend.io.beam_stride]
        self._no_return_m = robot.sensors_of_kind("lidar")[0].params.range_max_m
        self._player = _Player(cfg.horizon, cfg.action_dim, cfg.step_dt_s)
        self._replan_every = round(nav.control_hz / nav.replan_hz)
        self._action = np.zeros(cfg.action_dim, np.float32)
        self.state = backend.initial_state()
        self._goal: RouteGoal | None = None
        self._start: Any = None
        self._odom = (0.0, 0.0, 0.0)  # the latest odometry pose (x m, y m, yaw rad), in the start frame
        self._tick = 0
        self._last_plan_ns: int | None = None
        self._plan_ms: list[float] = []
        self._observe_ms: list[float] = []
        self._iterations: list[int] = []

    def reset(self, episode: EpisodeContext) -> None:
        self.assembler.reset()
        self.planner.reset(episode.seed)
        self.state = self.backend.initial_state()
        self._goal = RouteGoal(episode.route, self.nav.route)
        self._start = episode.world.start
        self._odom = (0.0, 0.0, 0.0)
        self._tick = 0
        self._last_plan_ns = None
        self._action.fill(0.0)
        self._plan_ms, self._observe_ms, self._iterations = [], [], []

    def __call__(self, readings: Sequence[Any], t_ns: int) -> tuple[float, float]:
        for reading in readings:
            self.assembler.add(self._kind[reading.topic], reading.stamp_ns, reading.data)
            if reading.topic == self._odom_topic:
                d = reading.data
                self._odom = (float(d["x_m"]), float(d["y_m"]), float(d["yaw_rad"]))
        t0 = time.perf_counter()
        out = self.assembler.tick(t_ns)
        # The action in effect over the interval that just ended leads into this tick, as in training.
        self.state = self.backend.observe(self.state, out, out["action"], float(out["dt"]))
        self._observe_ms.append((time.perf_counter() - t0) * 1e3)
        if self._tick % self._replan_every == 0:
            goal = self._goal(t_ns / _NS, *_compose(self._start, *self._odom))
            elapsed = None if self._last_plan_ns is None else (t_ns - self._last_plan_ns) / _NS
            if self.assembler.stats["lidar"].accepted:
                self.planner.cost.set_scan(self._scan, self._no_return_m)
            result = self.planner.plan(self.state, goal, self._action, elapsed)
            self._player.set(result.plan, t_ns)
            self._last_plan_ns = t_ns
            self._plan_ms.append(result.elapsed_ms)
            self._iterations.append(result.iterations)
        v, omega = self._player.action(t_ns)
        self._action[0], self._action[1] = v, omega
        self.assembler.set_command(t_ns, v, omega)
        self._tick += 1
        return v, omega

    def stats(self) -> dict[str, Any]:
        return {"plan_ms": _ms_stats(self._plan_ms), "observe_ms": _ms_stats(self._observe_ms),
                "iterations_mean": float(np.mean(self._iterations)) if self._iterations else None,
                "recoveries": self._goal.recoveries if self._goal is not None else 0}


class SimRollout:
    """The oracle's rollout: candidates simulated by MuJoCo from the sim's true current state.

    ``rollout(_, actions (N, H, 2), dt_s)``: ``mujoco.rollout`` of the full physics (the drive's servos, limits and
    contacts) for each candidate from the current state, then the LiDAR (every ``beam_stride``-th beam, no noise)
    cast at the true pose after each step; both stds are 0 (the cost adds the sensor's noise). Matches
    :class:`worldmodel.planner.mppi.Predictions`.
    """

    def __init__(self, sim: Any, samples: int, horizon: int, step_dt_s: float, beam_stride: int, threads: int) -> None:
        import mujoco
        import mujoco.rollout

        from robots.description import MjcfNames
        from sim.sensors import WORLD_GEOMGROUP

        steps = step_dt_s * sim.physics_hz
        if abs(steps - round(steps)) > 1e-6 or round(steps) < 1:
            raise ValueError(f"planner.step_dt_s = {step_dt_s}: the oracle needs a whole number of physics steps "
                             f"(1/{sim.physics_hz} s)")
        self.sim = sim
        self.substeps = round(steps)
        m = sim.model
        names = MjcfNames()
        self._act = (m.actuator(names.act_forward).id, m.actuator(names.act_yaw).id)
        qposadr = [int(m.jnt_qposadr[m.joint(j).id]) for j in (names.joint_x, names.joint_y, names.joint_yaw)]
        self._spec = mujoco.mjtState.mjSTATE_FULLPHYSICS
        self._qpos = [1 + a for a in qposadr]  # FULLPHYSICS state: time, then qpos
        self._datas = [mujoco.MjData(m) for _ in range(threads)]
        self._initial = np.zeros((1, mujoco.mj_stateSize(m, self._spec)))
        self._control = np.zeros((samples, horizon * self.substeps, m.nu))
        self._states = np.zeros((samples, horizon * self.substeps, self._initial.shape[1]))
        lidar = sim.robot.sensors_of_kind("lidar")[0]
        params = lidar.params
        self._range_max = params.range_max_m
        angles = params.angle_min_rad + np.arange(0, params.beams, beam_stride) * params.angle_increment_rad
        self._beam_angles = angles + lidar.mount.rpy_rad[2]
        self._mount = lidar.mount.xyz_m
        beams = len(angles)
        # Static world geoms only (the robot's are in another group), so one forward pass places them for good.
        self._ray_data = mujoco.MjData(m)
        mujoco.mj_forward(m, self._ray_data)
        self._vec = np.zeros((beams, 3))
        self._geomid = np.zeros(beams, np.int32)
        self._dist = np.zeros(beams)
        self._group = WORLD_GEOMGROUP
        self.lidar_mean_m = np.zeros((samples, horizon, beams), np.float32)
        self.lidar_std_m = np.zeros((samples, horizon, beams), np.float32)  # exact: the cost adds the sensor noise
        self.pose_mean = np.zeros((samples, horizon, 3), np.float32)
        self.pose_std = np.zeros((samples, horizon, 3), np.float32)
        self._mujoco = mujoco
        self._rollout = mujoco.rollout.rollout

    def __call__(self, _state: Any, actions: np.ndarray, dt_s: float) -> SimRollout:
        mujoco, m, d = self._mujoco, self.sim.model, self.sim.data
        n, h, _ = actions.shape
        sub = self.substeps
        mujoco.mj_getState(m, d, self._initial[0], self._spec)
        control = self._control.reshape(n, h, sub, m.nu)
        control[:] = d.ctrl  # the lateral grip servo keeps its (zero) command
        control[..., self._act[0]] = actions[:, :, None, 0]
        control[..., self._act[1]] = actions[:, :, None, 1]
        self._rollout(m, self._datas, self._initial, self._control, state=self._states)
        ends = self._states[:, sub - 1::sub]  # (N, H, nstate): the state after each plan step
        x, y, yaw = (ends[..., i] for i in self._qpos)
        x0, y0, yaw0 = (float(self._initial[0, i]) for i in self._qpos)
        c0, s0 = math.cos(yaw0), math.sin(yaw0)
        self.pose_mean[..., 0] = c0 * (x - x0) + s0 * (y - y0)
        self.pose_mean[..., 1] = -s0 * (x - x0) + c0 * (y - y0)
        self.pose_mean[..., 2] = yaw - yaw0
        mx, my, mz = self._mount
        cos_yaw, sin_yaw = np.cos(yaw), np.sin(yaw)
        origin = np.stack([x + cos_yaw * mx - sin_yaw * my, y + sin_yaw * mx + cos_yaw * my, np.full_like(x, mz)], -1)
        vec = self._vec
        for i in range(n):
            for k in range(h):
                a = yaw[i, k] + self._beam_angles
                vec[:, 0], vec[:, 1] = np.cos(a), np.sin(a)
                mujoco.mj_multiRay(m, self._ray_data, origin[i, k], vec.reshape(-1), self._group, 1, -1,
                                   self._geomid, self._dist, None, len(self._dist), self._range_max)
                self.lidar_mean_m[i, k] = self._dist
        ranges = self.lidar_mean_m
        ranges[(ranges < 0) | (ranges > self._range_max)] = self._range_max  # no hit (-1) or past the range
        return self


class OracleMPC:
    """The planner with :class:`SimRollout`: the true simulator as the model, the true pose for the goal point."""

    name = "oracle"

    def __init__(self, planner_config: Any, robot: Any, nav: NavConfig) -> None:
        from worldmodel.planner import NavigationCost

        self.config = dataclasses.replace(planner_config, samples=nav.oracle_samples,
                                          elites=min(planner_config.elites, nav.oracle_samples),
                                          chunk=min(planner_config.chunk, nav.oracle_samples))
        self.geometry = robot_geometry(robot, nav.oracle_beam_stride)
        self.nav = nav
        cfg = self.config
        self._cost = NavigationCost(cfg.cost, self.geometry, cfg.samples, cfg.horizon, cfg.action_low, cfg.action_high)
        self._player = _Player(cfg.horizon, cfg.action_dim, cfg.step_dt_s)
        self._replan_every = round(nav.control_hz / nav.oracle_replan_hz)
        self._action = np.zeros(cfg.action_dim, np.float32)
        self.planner: Any = None  # built per world, bound to its simulator
        self._sim: Any = None
        self._goal: RouteGoal | None = None
        self._tick = 0
        self._last_plan_ns: int | None = None
        self._plan_ms: list[float] = []
        self._iterations: list[int] = []

    def reset(self, episode: EpisodeContext) -> None:
        from worldmodel.planner import SamplingPlanner

        if episode.sim is not self._sim:  # a new world: a rollout bound to its simulator
            cfg = self.config
            rollout = SimRollout(episode.sim, cfg.samples, cfg.horizon, cfg.step_dt_s, self.nav.oracle_beam_stride,
                                 self.nav.oracle_threads)
            self.planner = SamplingPlanner(cfg, self._cost, rollout)
            self._sim = episode.sim
        self.planner.reset(episode.seed)
        self._goal = RouteGoal(episode.route, self.nav.route)
        self._tick = 0
        self._last_plan_ns = None
        self._action.fill(0.0)
        self._plan_ms, self._iterations = [], []

    def __call__(self, readings: Sequence[Any], t_ns: int) -> tuple[float, float]:
        if self._tick % self._replan_every == 0:
            truth = self._sim.ground_truth()
            goal = self._goal(t_ns / _NS, truth.x_m, truth.y_m, truth.yaw_rad)
            elapsed = None if self._last_plan_ns is None else (t_ns - self._last_plan_ns) / _NS
            result = self.planner.plan(None, goal, self._action, elapsed)
            self._player.set(result.plan, t_ns)
            self._last_plan_ns = t_ns
            self._plan_ms.append(result.elapsed_ms)
            self._iterations.append(result.iterations)
        v, omega = self._player.action(t_ns)
        self._action[0], self._action[1] = v, omega
        self._tick += 1
        return v, omega

    def stats(self) -> dict[str, Any]:
        return {"plan_ms": _ms_stats(self._plan_ms),
                "iterations_mean": float(np.mean(self._iterations)) if self._iterations else None,
                "recoveries": self._goal.recoveries if self._goal is not None else 0}


class PolicyController:
    """A :class:`train.policies.Policy` (follow-the-gap, OU noise) as a controller; the goal in the odometry frame."""

    def __init__(self, name: str, policy: Any) -> None:
        self.name = name
        self.policy = policy
        self._ms: list[float] = []

    def reset(self, episode: EpisodeContext) -> None:
        start = episode.world.start
        dx, dy = episode.world.goal_xy_m[0] - start.x_m, episode.world.goal_xy_m[1] - start.y_m
        c, s = math.cos(start.yaw_rad), math.sin(start.yaw_rad)
        self.policy.reset(episode.seed, (c * dx + s * dy, -s * dx + c * dy))
        self._ms = []

    def __call__(self, readings: Sequence[Any], t_ns: int) -> tuple[float, float]:
        t0 = time.perf_counter()
        command = self.policy(readings, t_ns / _NS)
        self._ms.append((time.perf_counter() - t0) * 1e3)
        return command

    def stats(self) -> dict[str, Any]:
        return {"step_ms": _ms_stats(self._ms), **self.policy.episode_summary()}


# ----------------------------------------------------------------------------------------------------------------
# Episodes and the report.


class _Stuck:
    """Whether the robot stayed within ``distance_m`` of its position for the last ``window_s`` (marks at 2 Hz)."""

    def __init__(self, window_s: float, distance_m: float) -> None:
        self.window_s, self.distance_m = window_s, distance_m
        self._marks: list[tuple[float, float, float]] = []

    def update(self, t_s: float, x: float, y: float) -> bool:
        if self.window_s <= 0:
            return False
        if not self._marks or t_s - self._marks[-1][0] >= 0.5:
            self._marks.append((t_s, x, y))
            while self._marks[0][0] < t_s - self.window_s - 1e-9:
                self._marks.pop(0)
        if t_s - self._marks[0][0] < self.window_s - 1e-9:
            return False
        return all(math.hypot(mx - x, my - y) < self.distance_m for _, mx, my in self._marks)


def run_episode(controller: Controller, sim: Any, world: Any, route: Route, seed: int, nav: NavConfig) -> dict[str, Any]:
    """One episode of ``controller`` in ``sim`` (reset to ``seed``); its record (JSON-ready)."""
    wall0 = time.perf_counter()
    readings = sim.reset(seed)
    controller.reset(EpisodeContext(seed, world, route, sim))
    dt_s = 1.0 / nav.control_hz
    max_ticks = math.floor(nav.max_duration_s * nav.control_hz + 1e-9)
    stuck = _Stuck(nav.stuck_s, nav.stuck_distance_m)
    gx, gy = world.goal_xy_m
    path_m, last, end = 0.0, None, "time"
    best_arc = 0.0
    for tick in range(max_ticks + 1):
        truth = sim.ground_truth()
        if last is not None:
            path_m += math.hypot(truth.x_m - last[0], truth.y_m - last[1])
        last = (truth.x_m, truth.y_m)
        best_arc = max(best_arc, route.arc_length_m(truth.x_m, truth.y_m))
        t_s = sim.sim_time_ns / _NS
        if math.hypot(gx - truth.x_m, gy - truth.y_m) <= nav.goal_radius_m:
            end = "goal"
            break
        if stuck.update(t_s, truth.x_m, truth.y_m):
            end = "stuck"
            break
        if tick == max_ticks:
            break
        v, omega = controller(readings, sim.sim_time_ns)
        sim.set_command(v, omega)
        readings = sim.advance(dt_s)
    truth = sim.ground_truth()
    return {
        "controller": controller.name,
        "seed": seed,
        "success": end == "goal",
        "end_reason": end,
        "time_s": sim.sim_time_ns / _NS,
        "collisions": int(sim.stats.collisions),
        "path_length_m": path_m,
        "progress": min(1.0, best_arc / route.length_m) if route.length_m > 0 else 1.0,
        "goal_distance_m": math.hypot(gx - truth.x_m, gy - truth.y_m),
        "corridor_length_m": route.length_m,
        "wall_s": time.perf_counter() - wall0,
        "stats": controller.stats(),
    }


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def summarize(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per-controller aggregates of episode records (see the module docstring)."""
    n = len(records)
    wins = [r for r in records if r["success"]]
    reasons: dict[str, int] = {}
    for r in records:
        reasons[r["end_reason"]] = reasons.get(r["end_reason"], 0) + 1
    plan_ms = [r["stats"]["plan_ms"]["p50"] for r in records if r["stats"].get("plan_ms", {}).get("p50") is not None]
    return {
        "episodes": n,
        "successes": len(wins),
        "success_rate": len(wins) / n if n else None,
        "collisions": int(sum(r["collisions"] for r in records)),
        "collisions_per_episode": _mean([r["collisions"] for r in records]),
        "collision_free_rate": _mean([float(r["collisions"] == 0) for r in records]),
        "time_to_goal_s": _mean([r["time_s"] for r in wins]),
        "time_to_goal_median_s": float(np.median([r["time_s"] for r in wins])) if wins else None,
        "path_length_m": _mean([r["path_length_m"] for r in records]),
        "path_length_success_m": _mean([r["path_length_m"] for r in wins]),
        "progress": _mean([r["progress"] for r in records]),
        "end_reasons": reasons,
        "plan_ms_p50": _mean(plan_ms),
        "recoveries": int(sum(r["stats"].get("recoveries", 0) for r in records)),
        "wall_s": float(sum(r["wall_s"] for r in records)),
    }


def _beats(mine: Mapping[str, Any], theirs: Mapping[str, Any]) -> bool:
    """Higher success rate; at an equal one, fewer collisions per episode; then a shorter time to goal."""
    if mine["success_rate"] != theirs["success_rate"]:
        return mine["success_rate"] > theirs["success_rate"]
    if mine["collisions_per_episode"] != theirs["collisions_per_episode"]:
        return mine["collisions_per_episode"] < theirs["collisions_per_episode"]
    a, b = mine["time_to_goal_s"], theirs["time_to_goal_s"]
    return a is not None and (b is None or a < b)


def targets(summary: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The issue's targets as ``{ok, value, threshold}``; ``ok`` is None where a controller was not run."""
    wm, oracle, gap = summary.get("wm_mpc"), summary.get("oracle"), summary.get("gap")
    out: dict[str, Any] = {}
    rate = wm["success_rate"] if wm else None
    out["wm_success_rate"] = {"ok": None if rate is None else rate >= 0.9, "value": rate, "threshold": ">= 0.9"}
    if wm and oracle:
        ratio = rate / oracle["success_rate"] if oracle["success_rate"] else None
        ok = rate >= 0.9 * oracle["success_rate"]
    else:
        ratio, ok = None, None
    out["wm_vs_oracle"] = {"ok": ok, "value": ratio, "threshold": ">= 0.9 x the oracle's success rate"}
    out["wm_beats_gap"] = {
        "ok": _beats(wm, gap) if wm and gap else None,
        "value": {"wm_mpc": rate, "gap": gap["success_rate"]} if wm and gap else None,
        "threshold": "higher success rate (ties: fewer collisions, then shorter time to goal)",
    }
    return out


def table(doc: Mapping[str, Any]) -> str:
    """The report for people."""
    def fmt(v: Any, spec: str = ".2f") -> str:
        return "-" if v is None else format(v, spec)

    lines = [(f"{'controller':<10} {'success':>12} {'coll/ep':>8} {'coll-free':>9} {'t goal s':>9} {'path m':>8} "
              f"{'progress':>8} {'recov':>6} {'plan ms':>8}")]
    for name, s in doc["summary"].items():
        success = f"{s['successes']}/{s['episodes']} {fmt(s['success_rate'], '.0%')}"
        lines.append(f"{name:<10} {success:>12} {fmt(s['collisions_per_episode']):>8} "
                     f"{fmt(s['collision_free_rate'], '.0%'):>9} {fmt(s['time_to_goal_s'], '.1f'):>9} "
                     f"{fmt(s['path_length_m'], '.1f'):>8} {fmt(s['progress'], '.0%'):>8} {s['recoveries']:>6d} "
                     f"{fmt(s['plan_ms_p50'], '.1f'):>8}")
    lines.append("")
    for key, t in doc["targets"].items():
        verdict = "n/a" if t["ok"] is None else ("PASS" if t["ok"] else "FAIL")
        lines.append(f"{key:<16} {verdict:<5} {t['threshold']}  (value: {t['value']})")
    return "\n".join(lines) + "\n"


def evaluate_navigation(preset: Mapping[str, Any], preset_dir: Path, nav: NavConfig, backend_config: Any | None,
                        progress: bool = True) -> dict[str, Any]:
    """Run every controller of ``nav`` over the eval-split worlds; the report (module docstring).

    ``preset``: the parsed YAML (robot, world, sim, dataset, collect.policies, planner). ``backend_config``: the
    world model's :class:`worldmodel.backends.BackendConfig` (its horizon and batch are set here from the planner
    section); None skips ``wm_mpc`` with a warning.
    """
    from sim.config import sim_config_from_dict
    from sim.hallway import ImpossibleWorld, generate_hallway
    from sim.robot_sim import RobotSim
    from train.policies import make_policy
    from worldmodel.planner import planner_config_from_dict

    sim_config = sim_config_from_dict(preset, preset_dir)
    robot = sim_config.load_robot()
    base = robot.base
    overrides = {} if nav.anytime else {"time_budget_ms": 0.0}
    planner_cfg = planner_config_from_dict(preset.get("planner"), action_low=(-base.max_v_mps, -base.max_omega_radps),
                                           action_high=(base.max_v_mps, base.max_omega_radps), **overrides)
    policies = dict((preset.get("collect") or {}).get("policies") or {})
    max_age_s = float((preset.get("dataset") or {}).get("max_age_s", 1.0))
    controllers: list[Controller] = []
    backend_name = None
    for name in nav.controllers:
        if name == "wm_mpc":
            if backend_config is None:
                log.warning("no --checkpoint: skipping the world-model MPC")
                continue
            from worldmodel.backends import create_backend

            stride = int(dict((preset.get("runtime") or {}).get("backend") or {}).get("beam_stride", 1))
            backend = create_backend(dataclasses.replace(backend_config, horizon=planner_cfg.horizon,
                                                         max_samples=planner_cfg.samples, beam_stride=stride))
            backend_name = backend.name
            controllers.append(WorldModelMPC(backend, planner_cfg, robot, nav, max_age_s))
        elif name == "gap":
            controllers.append(PolicyController("gap", make_policy("gap", policies, robot, nav.control_hz)))
        elif name == "oracle":
            controllers.append(OracleMPC(planner_cfg, robot, nav))
        else:
            ou = {"ou": {**dict(policies.get("ou") or {}), "shield_m": 0.0}}
            controllers.append(PolicyController("random", make_policy("ou", ou, robot, nav.control_hz)))

    records: list[dict[str, Any]] = []
    seeds: list[int] = []
    candidates = iter(nav_seeds(nav.episodes * 3, preset.get("dataset"), nav.seed_start))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=nav.episodes * len(controllers), file=sys.stderr, unit="episode", dynamic_ncols=True)
    t0 = time.perf_counter()
    while len(seeds) < nav.episodes:
        seed = next(candidates, None)
        if seed is None:
            raise ValueError("too many eval-split seeds give impossible worlds; check the world section")
        try:
            world = generate_hallway(dataclasses.replace(sim_config.world, seed=seed), base.radius_m)
        except ImpossibleWorld as exc:
            log.info("seed %d skipped: %s", seed, exc)
            continue
        seeds.append(seed)
        sim = RobotSim(robot, world, sim_config.sim, seed=seed)
        route = Route(world.centerline_xy_m)
        for controller in controllers:
            record = run_episode(controller, sim, world, route, seed, nav)
            records.append(record)
            log.debug("%s seed %d: %s after %.1f s, %d collisions", controller.name, seed, record["end_reason"],
                      record["time_s"], record["collisions"])
            if bar is not None:
                bar.update(1)
                bar.set_postfix(seed=seed, last=f"{controller.name}:{record['end_reason']}")
    if bar is not None:
        bar.close()
    summary = {c.name: summarize([r for r in records if r["controller"] == c.name]) for c in controllers}
    return {
        "format": REPORT_FORMAT,
        "nav": {**dataclasses.asdict(nav), "controllers": [c.name for c in controllers]},
        "planner": planner_cfg.to_dict(),
        "oracle": {"samples": nav.oracle_samples, "beam_stride": nav.oracle_beam_stride,
                   "replan_hz": nav.oracle_replan_hz} if "oracle" in nav.controllers else None,
        "method": {
            "seeds": "world seeds of the dataset's eval split (train.dataset.split_of), never trained on",
            "wm_mpc": f"belief updated every tick at {nav.control_hz:g} Hz (TickAssembler), replanning at "
                      f"{nav.replan_hz:g} Hz, goal = centreline point {nav.route.lookahead_m:g} m ahead of the "
                      "odometry pose estimate (no ground truth)",
            "oracle": f"same planner, candidates simulated by MuJoCo from the true state ({nav.oracle_samples} samples, "
                      f"every {nav.oracle_beam_stride}th LiDAR beam, replanning at {nav.oracle_replan_hz:g} Hz)",
            "rounds": "anytime: the preset's time budget" if nav.anytime else
                      f"fixed: {planner_cfg.iterations} rounds per plan (no time budget)",
            "collisions": "contact onsets between the base and the world",
        },
        "world": dataclasses.asdict(sim_config.world),
        "robot": robot.name,
        "backend": backend_name,
        "seeds": seeds,
        "summary": summary,
        "targets": targets(summary),
        "episodes": records,
        "wall_s": time.perf_counter() - t0,
    }


# ----------------------------------------------------------------------------------------------------------------
# Command line.


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``eval-nav`` to ``oniwm``."""
    d = NavConfig()
    parser = subparsers.add_parser("eval-nav", help="closed-loop navigation: world-model MPC vs follow-the-gap, oracle MPC, "
                                   "random", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", metavar="RUN", help="world model: run or checkpoint folder (torch backend; "
                        "without it or --export-dir, wm_mpc is skipped)")
    parser.add_argument("--config", metavar="YAML", help="preset (default: the shipped configs/hallway.yaml)")
    parser.add_argument("--episodes", type=int, default=d.episodes, metavar="N", help=f"worlds (default {d.episodes})")
    parser.add_argument("--json", required=True, metavar="FILE", help="report (JSON), written atomically")
    parser.add_argument("--controllers", default=",".join(d.controllers), metavar="LIST",
                        help=f"comma-separated subset of {','.join(CONTROLLERS)}")
    parser.add_argument("--seed-start", type=int, default=d.seed_start, metavar="S", help="first world seed considered")
    parser.add_argument("--max-duration-s", type=float, default=d.max_duration_s, metavar="S",
                        help=f"episode time limit, sim seconds (default {d.max_duration_s:g})")
    parser.add_argument("--replan-hz", type=float, default=d.replan_hz, metavar="HZ",
                        help=f"world-model planner rate; the belief updates at {d.control_hz:g} Hz (default {d.replan_hz:g})")
    parser.add_argument("--lookahead-m", type=float, default=d.route.lookahead_m, metavar="M",
                        help=f"the planners' goal: this far along the centreline (default {d.route.lookahead_m:g})")
    parser.add_argument("--oracle-samples", type=int, default=d.oracle_samples, metavar="N",
                        help=f"candidates per oracle round (default {d.oracle_samples})")
    parser.add_argument("--oracle-replan-hz", type=float, default=d.oracle_replan_hz, metavar="HZ",
                        help=f"oracle planner rate (default {d.oracle_replan_hz:g})")
    parser.add_argument("--oracle-threads", type=int, default=d.oracle_threads, metavar="N",
                        help="threads of the oracle's MuJoCo rollouts (default 1)")
    parser.add_argument("--backend", default="torch", choices=("torch", "onnxruntime"), help="world-model backend")
    parser.add_argument("--export-dir", metavar="DIR", help="the onnxruntime backend's export (oniwm export)")
    parser.add_argument("--threads", type=int, default=0, metavar="N", help="rollout threads (0: every core)")
    parser.add_argument("--anytime", action="store_true", help="apply the planner's time budget (default: fixed rounds)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``oniwm eval-nav``; see the module docstring for the exit status."""
    import yaml

    from robots.description import DescriptionError
    from sim.envs import default_config_path
    from train.evaluate import write_json
    from worldmodel.backends import BackendConfig, BackendUnavailable, ExportError
    from worldmodel.checkpoint import CheckpointError

    try:
        path = Path(args.config) if args.config else default_config_path()
        if path is None:
            raise ValueError("no --config and no shipped configs/hallway.yaml")
        preset = yaml.safe_load(path.read_text()) or {}
        nav = NavConfig(episodes=args.episodes, controllers=tuple(c for c in args.controllers.split(",") if c),
                        seed_start=args.seed_start, max_duration_s=args.max_duration_s, replan_hz=args.replan_hz,
                        route=RouteGoalConfig(lookahead_m=args.lookahead_m), oracle_samples=args.oracle_samples,
                        oracle_replan_hz=args.oracle_replan_hz, oracle_threads=args.oracle_threads, anytime=args.anytime)
        backend = None
        if args.checkpoint or args.export_dir:
            backend = BackendConfig(name=args.backend, checkpoint=args.checkpoint or "", export_dir=args.export_dir or "",
                                    threads=args.threads)
        doc = evaluate_navigation(preset, path.parent, nav, backend, progress=not args.no_progress)
    except (OSError, ValueError, DescriptionError, CheckpointError, BackendUnavailable, ExportError) as exc:
        log.error("%s", exc)
        return 2
    doc["checkpoint"] = args.checkpoint
    write_json(args.json, doc)
    sys.stdout.write(table(doc))
    log.info("report in %s", args.json)
    return 0
