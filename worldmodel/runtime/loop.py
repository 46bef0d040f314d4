"""The control-rate loop: ingest, belief update, command, plan, publish, every tick, on a deadline schedule.

One :meth:`Runtime.tick` runs five stages (:data:`STAGES`):

1. **ingest**: every message that arrived since the last tick, per sensor topic of the robot's
   :class:`~worldmodel.observation.ObservationSpec`, into the :class:`~worldmodel.observation.TickAssembler`
   (value, mask and age per modality, as in training). The subscriber has already refused malformed messages and
   NaN/Inf (counted per topic); the assembler refuses a value of the wrong shape (counted per modality): neither
   reaches the model. ``nav.route`` messages replace the route.
2. **observe**: the backend's belief update with the action that was in effect over the interval that just ended.
3. **act**: the command for the coming interval, from the plan made at the previous tick (the step of it the time
   since planning falls in), or a stop when one is due (below); published on ``actuator.cmd`` with the trace id
   of the newest sensor message consumed, so the robot can measure sensor-to-command latency. Acting before
   planning keeps that latency to ingest + belief update; the plan the command came from is one tick old.
4. **plan**: the sampling planner, warm-started, from the new belief toward the goal point along the route
   (:class:`~worldmodel.planner.route.RouteGoal`, fed the odometry pose); its plan drives the next ticks. A
   stopped tick plans too (predictions keep flowing), except before a route or after deadline misses.
5. **publish**: ``model.latent_state``, ``prediction.lidar`` and ``prediction.pose`` (the plan's predictions at
   ``horizons_s``, with their std) and ``diag.runtime`` (per-stage latency, deadline misses, stale sensors, stop
   state).

**Stops.** The runtime commands a stop (``actuator.cmd`` with ``stop: true`` and the reason) while a critical
sensor is staler than its limit (or has not been heard from), after ``max_consecutive_misses`` deadline misses in
a row (held until ``recover_s`` of on-time ticks), before a route has arrived, and once the goal is reached.
An exception inside a tick publishes a stop before anything else, then ends the loop; :meth:`Runtime.run`
reports it.

**Schedule.** Tick k is due at ``start + k * period`` (never ``sleep(period)``); a tick that ends after the next
one is due is a deadline miss, and due times already past are skipped (each counted as a miss). With a
``trigger`` modality the schedule's phase follows that sensor's messages, so each tick starts
``trigger_margin_ms`` after the reading it answers was published.

**Carry.** Everything that flows from one tick to the next is in :class:`Carry` (belief, plan, action, tick
times); every array is allocated in the constructor.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from oni.message import Header
from oni.transport import Publisher, Subscriber
from worldmodel.backends.base import Backend, BeliefState
from worldmodel.observation import ObservationSpec, TickAssembler
from worldmodel.planner import PlanResult, RobotGeometry, SamplingPlanner
from worldmodel.planner.route import Route, RouteGoal
from worldmodel.runtime.config import RuntimeConfig

__all__ = ["STAGES", "Carry", "Runtime", "RuntimeSetupError", "check_model_matches", "realtime_scheduling"]

log = logging.getLogger("worldmodel.runtime")

#: The stages of a tick, in order (``diag.runtime``'s ``stages``).
STAGES = ("ingest", "observe", "act", "plan", "publish")
ROUTE_TOPIC = "nav.route"
COMMAND_TOPIC = "actuator.cmd"
OUTPUT_TOPICS = ("model.latent_state", "prediction.lidar", "prediction.pose", "diag.runtime")
_NS = 1_000_000_000
_NO_ROUTE = f"no route yet ({ROUTE_TOPIC})"
_MISSES = "deadline misses"
#: Ticks whose stage latencies are kept for the report (the latest; 22 min at 50 Hz).
_WINDOW = 1 << 16


def realtime_scheduling(priority: int) -> str:
    """Switch this process to ``SCHED_FIFO`` at ``priority`` (1-99); the scheduler in effect afterwards
    (``SCHED_FIFO``, or ``SCHED_OTHER`` when refused, with a warning naming why: it needs CAP_SYS_NICE)."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
        return "SCHED_FIFO"
    except (AttributeError, PermissionError, OSError) as exc:
        log.warning("could not switch to SCHED_FIFO priority %d (%s); running at normal priority", priority, exc)
        return "SCHED_OTHER"


class RuntimeSetupError(ValueError):
    """The model, planner and robot do not fit together; the message names the mismatch."""


def check_model_matches(io: Any, spec: ObservationSpec, geometry: RobotGeometry, planner: SamplingPlanner,
                        horizons_s: tuple[float, ...]) -> None:
    """Raise :class:`RuntimeSetupError` naming the first mismatch between the backend's tensor layout ``io``
    (:class:`~worldmodel.backends.base.IOSpec`) and the robot's observation ``spec``, the planner's LiDAR
    ``geometry`` and its sizes, or a horizon the plan does not reach."""
    model = {name: tuple(shape) for name, shape in io.obs if not name.endswith(("_mask", "_age"))}
    robot = {m: tuple(spec.shape(m)) for m in spec.modalities}
    wrong = []
    for name in sorted(set(model) | set(robot)):
        if model.get(name) != robot.get(name):
            mine = f"{name} {model[name]}" if name in model else f"no {name}"
            theirs = f"{name} {robot[name]}" if name in robot else f"no {name}"
            wrong.append(f"the model takes {mine}, the robot gives {theirs}")
    if wrong:
        raise RuntimeSetupError("; ".join(wrong) + ": use a model trained on this robot's sensors")
    if io.action_dim != spec.action_dim:
        raise RuntimeSetupError(f"the model takes {io.action_dim} action dimensions, the robot's command has {spec.action_dim}")
    if io.beams != geometry.beams:
        raise RuntimeSetupError(f"the rollout decodes {io.beams} LiDAR beams (every {io.beam_stride}th), the planner's "
                                f"geometry has {geometry.beams}; build both with the same beam stride")
    cfg = planner.config
    if cfg.horizon != io.horizon or cfg.samples > io.max_samples:
        raise RuntimeSetupError(f"the planner runs {cfg.samples} x {cfg.horizon} steps, the backend was built for up to "
                                f"{io.max_samples} x {io.horizon}")
    reach = cfg.horizon * cfg.step_dt_s
    if horizons_s[-1] > reach + 1e-9:
        raise RuntimeSetupError(f"runtime.horizons_s reaches {horizons_s[-1]:g} s; the plan covers {reach:g} s "
                                f"({cfg.horizon} x {cfg.step_dt_s:g} s)")


@dataclass
class Carry:
    """What one tick hands the next: the belief, the plan being played (``plan`` (H, A), made at ``planned_ns``),
    the action in effect (A,), the tick count and the time of the last tick (ns, ONI clock)."""

    belief: BeliefState
    plan: np.ndarray
    planned_ns: int
    action: np.ndarray
    tick: int = 0
    last_tick_ns: int = 0


class _Interp:
    """Linear interpolation of per-step predictions (step h ends at (h + 1) * dt) at fixed horizons."""

    def __init__(self, horizons_s: tuple[float, ...], step_dt_s: float, steps: int) -> None:
        f = np.asarray(horizons_s) / step_dt_s - 1.0
        self.lo = np.clip(np.floor(f), 0, steps - 1).astype(np.intp)
        self.hi = np.minimum(self.lo + 1, steps - 1)
        self.w = np.clip(f - self.lo, 0.0, 1.0).astype(np.float32)[:, None]

    def __call__(self, per_step: np.ndarray, out: np.ndarray) -> np.ndarray:
        np.subtract(per_step[self.hi], per_step[self.lo], out=out)
        out *= self.w
        out += per_step[self.lo]
        return out


class Runtime:
    """The world-model control loop for one robot (module docstring).

    ``backend``: the model (its rollout is ``planner``'s). ``spec``: the robot's observation spec (topics and
    shapes). ``geometry``: the planner's LiDAR geometry (for ``prediction.lidar``'s beam angles). ``sensors``: a
    subscriber of ``spec``'s sensor topics and ``nav.route``, connected. ``commands``: a publisher of
    ``actuator.cmd``, connected to the robot. ``outputs``: a publisher of :data:`OUTPUT_TOPICS` (None: not
    published). ``action_timeout_s``: how long a command holds on the robot. ``no_return_m``: LiDAR ranges at or
    beyond this are "no return" (the planner's ``scan_collision`` term ignores them). Raises
    :class:`RuntimeSetupError` when the model and the robot do not match.
    """

    def __init__(self, config: RuntimeConfig, backend: Backend, planner: SamplingPlanner, spec: ObservationSpec,
                 geometry: RobotGeometry, sensors: Subscriber, commands: Publisher, outputs: Publisher | None, *,
                 action_timeout_s: float, model_id: str = "", no_return_m: float = math.inf) -> None:
        check_model_matches(backend.io, spec, geometry, planner, config.horizons_s)
        for kind in config.critical_sensors:
            if kind not in spec.modalities:
                raise RuntimeSetupError(f"runtime.critical_sensors names {kind}; the robot has {list(spec.modalities)}")
        if config.trigger and config.trigger not in spec.modalities:
            raise RuntimeSetupError(f"runtime.trigger is {config.trigger}; the robot has {list(spec.modalities)}")
        missing = [t for t in (*(spec.topics[m] for m in spec.modalities), ROUTE_TOPIC) if t not in sensors.stats]
        if missing:
            raise RuntimeSetupError(f"the sensor subscriber is not subscribed to {missing}")
        self.config = config
        self.backend = backend
        self.planner = planner
        self.spec = spec
        self.sensors = sensors
        self.commands = commands
        self.outputs = outputs
        self.model_id = model_id
        timeout = config.action_timeout_s if config.action_timeout_s is not None else action_timeout_s
        self.assembler = TickAssembler(spec, config.rate_hz, config.max_age_s, action_timeout_s=timeout)
        self._sensor_topics = [(spec.topics[m], m) for m in spec.modalities]
        # The latest scan on the planner's beams (a view of the assembler's buffer, updated in place).
        self._scan = self.assembler.out["lidar"][::backend.io.beam_stride] if "lidar" in spec.modalities else None
        self._no_return_m = no_return_m
        self._critical = [(m, spec.topics[m], round(limit * _NS)) for m, limit in config.critical_sensors.items()]
        self._last_stamp_ns = {m: 0 for m in spec.modalities}  # 0: never heard
        pcfg = planner.config
        self._step_ns = round(pcfg.step_dt_s * _NS)
        self.carry = Carry(backend.initial_state(), np.zeros((pcfg.horizon, pcfg.action_dim), np.float32), 0,
                           np.zeros(pcfg.action_dim, np.float32))
        self._odom = [0.0, 0.0, 0.0]
        self._goal: RouteGoal | None = None
        self._route_points = np.zeros((0, 2))
        self._goal_xy = np.zeros(2)
        self._goal_radius_m = 0.0
        self._start_ns = 0
        # Outputs, preallocated and refilled in place.
        k, b = len(config.horizons_s), geometry.beams
        self._interp = _Interp(config.horizons_s, pcfg.step_dt_s, pcfg.horizon)
        horizons = np.asarray(config.horizons_s, np.float32)
        self._cmd = {"v_mps": 0.0, "omega_radps": 0.0, "stop": False, "reason": ""}
        self._latent = {"deter": np.zeros(backend.io.deter, np.float32), "stoch": np.zeros(backend.io.stoch, np.float32),
                        "tick": 0, "model_id": model_id}
        self._pred_lidar = {"horizons_s": horizons, "ranges_m": np.zeros((k, b), np.float32),
                            "ranges_std_m": np.zeros((k, b), np.float32),
                            "angle_min_rad": geometry.lidar_yaw_rad + geometry.angle_min_rad,
                            "angle_increment_rad": geometry.angle_increment_rad}
        self._pred_pose = {"horizons_s": horizons, "pose": np.zeros((k, 3), np.float32),
                           "pose_std": np.zeros((k, 3), np.float32)}
        self._stage_us = np.zeros(len(STAGES), np.float32)
        self._diag = {"tick": 0, "stages": list(STAGES), "stage_us": self._stage_us, "tick_us": 0.0,
                      "deadline_misses": 0, "stale_sensors": [], "stopped": True, "stop_reason": ""}
        # Statistics.
        self._stage_ns = np.zeros((_WINDOW, len(STAGES)), np.int64)
        self._tick_ns = np.zeros(_WINDOW, np.int64)
        self._plan_ms = np.zeros(_WINDOW, np.float32)
        self._plans = 0
        self._iterations = 0
        self.deadline_misses = 0
        self.consecutive_misses = 0
        self.max_consecutive_misses = 0
        self._miss_stop_until_ns = 0
        self._stop_reason = ""
        self._stop_kind = ""
        self.stops: dict[str, int] = {}
        self.stopped_ticks = 0
        self.routes = 0
        self.routes_rejected = 0
        self.reached_goal = False
        self.error: str | None = None
        self._trigger_pub_ns = 0
        self._trigger_new = False
        self._trigger_lag_ns = np.zeros(_WINDOW, np.int64)
        self._trigger_count = 0
        self._stop_requested = False
        self._wall_offset = 0
        self.scheduler = "SCHED_OTHER"

    # ------------------------------------------------------------------------------------------------------------
    # One tick.

    def tick(self, t_ns: int) -> None:
        """Run the five stages for the tick at ``t_ns`` (ns since the Unix epoch, the ONI clock; increasing)."""
        carry, clock = self.carry, time.perf_counter_ns
        s0 = clock()
        newest = self._ingest()
        s1 = clock()
        out = self.assembler.tick(t_ns)
        carry.belief = self.backend.observe(carry.belief, out, out["action"], float(out["dt"]))
        s2 = clock()
        reason = self._check_stop(t_ns)
        self._act(t_ns, reason, newest)
        s3 = clock()
        # Stopped, the tick still plans (predictions keep flowing, the load stays that of driving), except when
        # it cannot (no route) or must shed load (deadline misses).
        result = None if self._goal is None or self._stop_kind == _MISSES else self._plan(t_ns)
        s4 = clock()
        self._publish(t_ns, result, reason, s4 - s0, (s1 - s0, s2 - s1, s3 - s2, s4 - s3))
        s5 = clock()
        i = carry.tick % _WINDOW
        row = self._stage_ns[i]
        row[0], row[1], row[2], row[3], row[4] = s1 - s0, s2 - s1, s3 - s2, s4 - s3, s5 - s4
        self._tick_ns[i] = s5 - s0
        carry.tick += 1
        carry.last_tick_ns = t_ns

    def _ingest(self) -> Header | None:
        """Move what arrived into the assembler; the header of the newest sensor message consumed (None: none)."""
        sensors, assembler, last = self.sensors, self.assembler, self._last_stamp_ns
        sensors.poll()
        newest: Header | None = None
        for topic, kind in self._sensor_topics:
            for msg in sensors.take(topic):
                header = msg.header
                if not assembler.add(kind, header.stamp_ns, msg.data):
                    continue
                if header.stamp_ns > last[kind]:
                    last[kind] = header.stamp_ns
                if newest is None or header.pub_ns > newest.pub_ns:
                    newest = header
                if kind == "odom":
                    data = msg.data
                    self._odom[0], self._odom[1], self._odom[2] = data["x_m"], data["y_m"], data["yaw_rad"]
                if kind == self.config.trigger:
                    self._trigger_pub_ns = header.pub_ns
                    self._trigger_new = True
        for msg in sensors.take(ROUTE_TOPIC):
            self.set_route(msg.data["waypoints_m"], msg.data["goal_radius_m"])
        return newest

    def set_route(self, waypoints_m: Any, goal_radius_m: float) -> bool:
        """Follow ``waypoints_m`` (K, 2) m in the odometry frame, the last one the goal, reached within
        ``goal_radius_m``; False (counted, the old route kept) when they are not K >= 1 finite points."""
        waypoints = np.asarray(waypoints_m, np.float64)
        if waypoints.ndim != 2 or waypoints.shape[1] != 2 or len(waypoints) < 1 or not np.isfinite(waypoints).all():
            self.routes_rejected += 1
            log.warning("nav.route refused: waypoints of shape %s (need (K, 2), finite)", waypoints.shape)
            return False
        self.routes += 1
        if self._goal is not None and np.array_equal(waypoints, self._route_points):
            return True  # the same route again (it is republished for late joiners)
        self._route_points = waypoints
        self._goal = RouteGoal(Route(waypoints), self.config.route)
        self._goal_xy[:] = waypoints[-1]
        self._goal_radius_m = float(goal_radius_m)
        self.planner.reset()
        return True

    def _check_stop(self, t_ns: int) -> str:
        """Why the robot must stop now ("" when it may drive); :attr:`stops` counts each kind as it begins."""
        kind, reason = "", ""
        stale = self._diag["stale_sensors"]
        stale.clear()
        for modality, topic, limit_ns in self._critical:
            last = self._last_stamp_ns[modality]
            if last == 0 or t_ns - last > limit_ns:
                stale.append(topic)
                if not kind:
                    kind = f"stale {topic}"
                    reason = f"{topic}: no message yet" if last == 0 else \
                        f"{topic} stale: {(t_ns - last) / _NS:.2f} s > {limit_ns / _NS:.2f} s"
        if t_ns < self._miss_stop_until_ns:
            kind, reason = _MISSES, f"{self.config.max_consecutive_misses} deadline misses in a row"
        elif not kind and self._goal is None:
            kind = reason = _NO_ROUTE
        elif not kind and math.hypot(self._goal_xy[0] - self._odom[0],
                                     self._goal_xy[1] - self._odom[1]) <= self._goal_radius_m:
            self.reached_goal = True
            kind = reason = "goal reached"
        if kind and kind != self._stop_kind:
            self.stops[kind] = self.stops.get(kind, 0) + 1
            log.warning("stop: %s", reason)
        elif not kind and self._stop_kind:
            log.info("driving again (was: %s)", self._stop_kind)
        self._stop_kind = kind
        return reason

    def _act(self, t_ns: int, reason: str, parent: Header | None) -> None:
        carry, cmd = self.carry, self._cmd
        if reason:
            v = omega = 0.0
            self.stopped_ticks += 1
        else:
            k = min(max(t_ns - carry.planned_ns, 0) // self._step_ns, len(carry.plan) - 1) if carry.planned_ns else 0
            v, omega = float(carry.plan[k, 0]), float(carry.plan[k, 1])
        self._stop_reason = reason
        cmd["v_mps"], cmd["omega_radps"], cmd["stop"], cmd["reason"] = v, omega, bool(reason), reason
        self.commands.publish(COMMAND_TOPIC, cmd, stamp_ns=t_ns, parent=parent)
        carry.action[0], carry.action[1] = v, omega
        self.assembler.set_command(t_ns, v, omega)

    def _plan(self, t_ns: int) -> PlanResult | None:
        carry, route_goal = self.carry, self._goal
        assert route_goal is not None  # tick() plans only once a route has come
        if self._scan is not None and self._last_stamp_ns["lidar"]:
            self.planner.cost.set_scan(self._scan, self._no_return_m)
        x, y, yaw = self._odom
        goal = route_goal((t_ns - self._start_ns) / _NS, x, y, yaw)
        elapsed = (t_ns - carry.planned_ns) / _NS if carry.planned_ns else None
        result = self.planner.plan(carry.belief, goal, carry.action, elapsed)
        np.copyto(carry.plan, result.plan)
        carry.planned_ns = t_ns
        self._plan_ms[self._plans % _WINDOW] = result.elapsed_ms
        self._plans += 1
        self._iterations += result.iterations
        return result

    def _publish(self, t_ns: int, result: PlanResult | None, reason: str, tick_ns: int,
                 stages: tuple[int, int, int, int]) -> None:
        if result is None:
            self.carry.planned_ns = 0  # no plan this tick: driving resumes from a fresh one
        pub = self.outputs
        if pub is None:
            return
        tick = self.carry.tick
        belief = self.carry.belief
        latent = self._latent
        np.copyto(latent["deter"], belief.deter[0])
        np.copyto(latent["stoch"], belief.stoch[0])
        latent["tick"] = tick
        pub.publish("model.latent_state", latent, stamp_ns=t_ns)
        if result is not None:
            p = result.predictions
            self._interp(p.lidar_mean_m, self._pred_lidar["ranges_m"])
            self._interp(p.lidar_std_m, self._pred_lidar["ranges_std_m"])
            self._interp(p.pose_mean, self._pred_pose["pose"])
            self._interp(p.pose_std, self._pred_pose["pose_std"])
            pub.publish("prediction.lidar", self._pred_lidar, stamp_ns=t_ns)
            pub.publish("prediction.pose", self._pred_pose, stamp_ns=t_ns)
        diag, us = self._diag, self._stage_us
        for i, ns in enumerate(stages):
            us[i] = ns / 1e3
        us[4] = self._stage_ns[(tick - 1) % _WINDOW, 4] / 1e3  # publish: the previous tick's (this one is running)
        diag["tick"] = tick
        diag["tick_us"] = tick_ns / 1e3
        diag["deadline_misses"] = self.deadline_misses
        diag["stopped"] = bool(reason)
        diag["stop_reason"] = reason
        pub.publish("diag.runtime", diag, stamp_ns=t_ns)

    def emergency_stop(self, reason: str) -> None:
        """Publish a stop now (first thing on an exception; also at shutdown)."""
        cmd = self._cmd
        cmd["v_mps"], cmd["omega_radps"], cmd["stop"], cmd["reason"] = 0.0, 0.0, True, reason[:256]
        try:
            self.commands.publish(COMMAND_TOPIC, cmd)
        except Exception as exc:  # the stop must be attempted; what failed is logged, the original error reported
            log.error("could not publish the stop (%s)", exc)

    # ------------------------------------------------------------------------------------------------------------
    # The loop.

    def request_stop(self) -> None:
        """End :meth:`run` after the current tick (from a signal handler or another thread)."""
        self._stop_requested = True

    def run(self, duration_s: float | None = None, on_status: Callable[[dict[str, Any]], None] | None = None
            ) -> dict[str, Any]:
        """Tick at ``rate_hz`` until ``duration_s`` (wall seconds; None: until :meth:`request_stop`); a stop is
        commanded when the loop ends. Returns :meth:`report`; an exception in a tick is in ``report()["error"]``."""
        cfg = self.config
        if cfg.realtime_priority:
            self.scheduler = realtime_scheduling(cfg.realtime_priority)
        period = cfg.period_ns
        margin = round(cfg.trigger_margin_ms * 1e6)
        status_ns = round(cfg.status_interval_s * _NS)
        start = time.monotonic_ns()
        self._wall_offset = wall_offset = time.time_ns() - start  # ONI clock (wall) = monotonic + offset
        self._start_ns = start + wall_offset
        end = None if duration_s is None else start + round(duration_s * _NS)
        next_status = start + status_ns
        phase = 0
        k = 0
        while not self._stop_requested:
            due = start + phase + k * period
            now = time.monotonic_ns()
            if end is not None and due >= end:
                break
            if now < due:
                time.sleep((due - now) / _NS)
                now = time.monotonic_ns()
            try:
                self.tick(now + wall_offset)
            except Exception as exc:  # the robot stops first; the error is reported, the loop ends
                self.error = f"exception in tick {self.carry.tick}: {type(exc).__name__}: {exc}"
                self.emergency_stop(self.error)
                log.exception("%s; robot stopped", self.error)
                break
            done = time.monotonic_ns()
            deadline = due + period
            if done > deadline:
                skipped = (done - deadline) // period  # due times that passed during this tick
                self._missed(1 + skipped, done)
                k += 1 + skipped
            else:
                self.consecutive_misses = 0
                k += 1
            if cfg.trigger and self._trigger_new:
                self._trigger_new = False
                # Phase lock: move the schedule so ticks start `margin` after the trigger sensor's messages are
                # published (the publisher's clock: same host, or a synchronised one).
                lag = now + wall_offset - self._trigger_pub_ns
                self._trigger_lag_ns[self._trigger_count % _WINDOW] = lag
                self._trigger_count += 1
                err = (lag - margin + period // 2) % period - period // 2
                phase -= err // 4
            if on_status is not None and done >= next_status:
                next_status = done + status_ns
                on_status(self.report())
        if self.error is None:
            self.emergency_stop("runtime stopped")
        return self.report()

    def _missed(self, count: int, now_ns: int) -> None:
        self.deadline_misses += count
        self.consecutive_misses += count
        self.max_consecutive_misses = max(self.max_consecutive_misses, self.consecutive_misses)
        if self.consecutive_misses >= self.config.max_consecutive_misses:
            self._miss_stop_until_ns = now_ns + self._wall_offset + round(self.config.recover_s * _NS)

    # ------------------------------------------------------------------------------------------------------------
    # Report.

    def report(self) -> dict[str, Any]:
        """Where the runtime stands (JSON-ready): ticks, latency per stage (p50/p99/max us), deadline misses, stops
        and their reasons, plans, inputs refused, the phase lock's lag."""
        n = min(self.carry.tick, _WINDOW)
        stages = {name: _quantiles_us(self._stage_ns[:n, i]) for i, name in enumerate(STAGES)}
        plans = min(self._plans, _WINDOW)
        sub_stats = self.sensors.stats
        refused = {topic: dict(s.rejects) for topic, s in sub_stats.items() if s.rejects}
        for kind, st in self.assembler.stats.items():
            bad = {"malformed": st.malformed, "non_finite": st.non_finite}
            if any(bad.values()):
                refused[f"assembler.{kind}"] = {k: v for k, v in bad.items() if v}
        lags = self._trigger_lag_ns[:min(self._trigger_count, _WINDOW)]
        return {
            "ticks": self.carry.tick,
            "rate_hz": self.config.rate_hz,
            "tick_latency_us": _quantiles_us(self._tick_ns[:n]),
            "stages_us": stages,
            "deadline_misses": self.deadline_misses,
            "max_consecutive_misses": self.max_consecutive_misses,
            "stopped": bool(self._stop_reason),
            "stop_reason": self._stop_reason,
            "stops": dict(self.stops),
            "stopped_ticks": self.stopped_ticks,
            "reached_goal": self.reached_goal,
            "plans": self._plans,
            "plan_ms": {"p50": float(np.percentile(self._plan_ms[:plans], 50)) if plans else None,
                        "p99": float(np.percentile(self._plan_ms[:plans], 99)) if plans else None},
            "iterations_mean": self._iterations / self._plans if self._plans else None,
            "routes": self.routes,
            "routes_rejected": self.routes_rejected,
            "inputs": {topic: {"received": s.received, "gaps": s.gaps, "overrun": s.overrun}
                       for topic, s in sub_stats.items()},
            "refused": refused,
            "trigger_lag_ms": {"p50": float(np.percentile(lags, 50)) / 1e6 if len(lags) else None,
                               "p99": float(np.percentile(lags, 99)) / 1e6 if len(lags) else None},
            "scheduler": self.scheduler,
            "error": self.error,
        }


def _quantiles_us(ns: np.ndarray) -> dict[str, float | None]:
    if not len(ns):
        return {"p50": None, "p99": None, "max": None}
    return {"p50": float(np.percentile(ns, 50)) / 1e3, "p99": float(np.percentile(ns, 99)) / 1e3,
            "max": float(ns.max()) / 1e3}
