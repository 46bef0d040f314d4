"""The simulation core: a robot description in a world, stepped in MuJoCo, each sensor sampled at its own rate.

Typical use::

    robot = load_robot(robot_path("turtlebot4"))
    world = generate_hallway(HallwayParams(seed=3), robot.base.radius_m)
    sim = RobotSim(robot, world, SimSettings(), seed=3)
    readings = sim.reset()                 # one reading per sensor at t = 0
    sim.set_command(0.3, 0.2)              # v (m/s), omega (rad/s)
    readings = sim.advance(0.02)           # every reading stamped in (t, t + 0.02 s], in time order
    truth = sim.ground_truth()             # for evaluation only, never a model input

Clock: the sim clock counts physics steps; ``sim_time_ns = step * 1e9 // physics_hz`` (integer ns). Sensor
``k`` of rate ``f`` samples at step ``k * physics_hz / f`` (an integer: :class:`~sim.config.SimSettings`
requires every rate to divide ``physics_hz``), so its stamps are exactly ``k * 1e9 // f`` ns. Physics
advances with ``mj_step(..., nstep=k)`` between events (samples, command timeouts), and MuJoCo's derived
quantities are brought up to the event's state with ``mj_forward`` before sampling, so a reading stamped
``t`` is the state at ``t``.

Commands: ``set_command(v, omega)`` clips to the base limits (counted) and rejects non-finite values
(counted; the base is commanded to stop, the safe action), so nothing invalid reaches MuJoCo. The drive's
response time and acceleration limits are in the MJCF (see :func:`robots.description.robot_mjcf`). When no
command arrives for the drive's ``command_timeout_s``, the base stops by itself (counted).
"""

from __future__ import annotations

import math
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import mujoco
import numpy as np

from robots import robot_path
from robots.description import (
    DescriptionError,
    MjcfNames,
    RobotDescription,
    SensorDescription,
    load_robot,
    robot_mjcf,
)
from sim.config import SimSettings
from sim.hallway import HallwayParams, World, generate_hallway
from sim.sensors import DepthSim, ImuSim, LidarSim, OdomSim, Reading, SensorSim

__all__ = ["GroundTruth", "RobotSim", "SimStats", "measure_speed", "scene_mjcf"]

_NS_PER_S = 1_000_000_000


@dataclass(frozen=True, slots=True)
class GroundTruth:
    """The true state of the base at ``stamp_ns``: for evaluation and debugging, never a model input.

    Pose in the world frame (m, rad in [-pi, pi)); ``v_mps`` forward and ``lateral_mps`` leftward velocity
    in the base frame; ``omega_radps`` yaw rate. ``in_collision`` is whether the base touched a wall or
    obstacle at the last sensor event (at most one IMU period ago); ``collisions`` counts contact onsets
    since reset.
    """

    stamp_ns: int
    x_m: float
    y_m: float
    yaw_rad: float
    v_mps: float
    lateral_mps: float
    omega_radps: float
    in_collision: bool
    collisions: int


@dataclass
class SimStats:
    """Counters since the last reset, and where the wall time went (for :func:`measure_speed`).

    ``commands``: calls to ``set_command``; ``rejected_commands``: non-finite ones (the base was stopped);
    ``clipped_commands``: finite ones outside the limits; ``command_timeouts``: times the drive stopped for lack
    of commands; ``collisions``: contact onsets between the robot and the world, checked at every sensor event
    (every IMU period at most apart); ``readings``: per topic. ``physics_wall_s`` and ``sensor_wall_s`` (per
    topic) are wall-clock seconds spent stepping and sampling.
    """

    steps: int = 0
    commands: int = 0
    rejected_commands: int = 0
    clipped_commands: int = 0
    command_timeouts: int = 0
    collisions: int = 0
    readings: dict[str, int] = field(default_factory=dict)
    physics_wall_s: float = 0.0
    sensor_wall_s: dict[str, float] = field(default_factory=dict)


def scene_mjcf(world: World, robot: RobotDescription, physics_hz: int) -> str:
    """The full MJCF: the world's static geoms plus the robot's MJCF, with the physics options of the sim.

    Sections of the robot model (worldbody, actuator, sensor) are appended to the world's; the compiler
    settings and options are set here, once, for both.
    """
    scene = ET.fromstring(world.to_mjcf())
    part = ET.fromstring(robot_mjcf(robot))
    for root in (scene, part):
        for element in root.findall("compiler") + root.findall("option"):
            root.remove(element)
    for section in part:
        target = scene.find(section.tag)
        if target is None:
            target = ET.SubElement(scene, section.tag)
        target.extend(list(section))
    # Angles are radians; "XYZ" (extrinsic) makes euler="r p y" the ROS roll-pitch-yaw of the descriptions.
    scene.insert(0, ET.Element("compiler", {"angle": "radian", "eulerseq": "XYZ"}))
    # Semi-implicit Euler: with it, qacc (and so the accelerometer) is the acceleration the state really
    # undergoes. The implicit integrators would fold the drive servos' damping into the update but report the
    # undamped qacc, biasing the IMU by a factor (1 + dt * kv / m). The servos' time constants (>= 5 ms) are
    # well inside Euler's stability limit (2 x timestep).
    scene.insert(1, ET.Element("option", {"timestep": repr(1.0 / physics_hz), "integrator": "Euler"}))
    scene.set("model", f"{robot.name}_in_world")
    return ET.tostring(scene, encoding="unicode")


class RobotSim:
    """One robot in one world, simulated in MuJoCo, with every sensor of its description at its own rate.

    ``robot``: the description (with ``settings.sensor_noise`` false, its noise-free copy is used).
    ``world``: static geometry and the start pose. ``seed``: seeds the noise of the first episode (the
    constructor resets to it); each later ``reset()`` without a seed draws the next episode's seed from it,
    so a run is reproducible.

    ``model`` and ``data`` are the MuJoCo objects (for viewers and renderers; do not step them directly).
    """

    def __init__(self, robot: RobotDescription, world: World, settings: SimSettings = SimSettings(), seed: int = 0) -> None:
        self.robot = robot if settings.sensor_noise else robot.without_noise()
        self.world = world
        self.settings = settings
        self.physics_hz = settings.physics_hz
        self._period_steps = _sensor_periods(self.robot, settings.physics_hz)
        self.model = mujoco.MjModel.from_xml_string(scene_mjcf(world, self.robot, settings.physics_hz))
        self.data = mujoco.MjData(self.model)
        names = MjcfNames()
        m = self.model
        self._body = m.body(names.body).id
        self._qpos = tuple(int(m.jnt_qposadr[m.joint(j).id]) for j in (names.joint_x, names.joint_y, names.joint_yaw))
        self._qvel = tuple(int(m.jnt_dofadr[m.joint(j).id]) for j in (names.joint_x, names.joint_y, names.joint_yaw))
        self._act_v = m.actuator(names.act_forward).id
        self._act_omega = m.actuator(names.act_yaw).id
        self._sensors: list[SensorSim] = [self._make_sensor(s, names) for s in self.robot.sensors]
        self._topics = [s.desc.topic for s in self._sensors]
        self._frames = [s.desc.frame_id for s in self._sensors]
        base = self.robot.base
        self._max_v, self._max_omega = base.max_v_mps, base.max_omega_radps
        self._timeout_steps = max(1, math.ceil(self.robot.drive.command_timeout_s * settings.physics_hz))
        self._episodes = np.random.SeedSequence(seed)
        self._next_seed = seed
        self._step = 0
        self._next = [0] * len(self._sensors)
        self._next_event = 0
        self._cmd_step = 0
        self._cmd_active = False
        self._in_contact = False
        self.stats = SimStats()
        self.reset(seed)

    def _make_sensor(self, desc: SensorDescription, names: MjcfNames) -> SensorSim:
        m, d = self.model, self.data
        site = m.site(names.site(desc)).id
        if desc.kind == "lidar":
            return LidarSim(desc, m, d, site, self._body)
        if desc.kind == "depth":
            return DepthSim(desc, m, d, site, self._body)
        if desc.kind == "imu":
            accel, gyro = names.imu_sensors(desc)
            return ImuSim(desc, m, d, int(m.sensor_adr[m.sensor(accel).id]), int(m.sensor_adr[m.sensor(gyro).id]))
        return OdomSim(desc, m, d, self.robot, self._qpos)

    # ----------------------------------------------------------------------------------------------------------

    @property
    def sim_time_ns(self) -> int:
        """Simulated time since reset (ns)."""
        return self._step * _NS_PER_S // self.physics_hz

    @property
    def timestep_s(self) -> float:
        return 1.0 / self.physics_hz

    def reset(self, seed: int | None = None) -> list[Reading]:
        """Start an episode at the world's start pose, at rest, with no command; returns one reading per sensor
        at t = 0. ``seed`` seeds the sensor noise (biases, scale errors, white noise). Without one, the first
        call uses the construction seed (so ``RobotSim(..., seed=s).reset()`` is episode ``s``) and later calls
        draw the next seed from a stream derived from it."""
        if seed is None:
            seed = self._next_seed
            self._next_seed = int(self._episodes.spawn(1)[0].generate_state(1)[0])
        streams = np.random.SeedSequence(seed).spawn(len(self._sensors))
        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        start = self.world.start
        d.qpos[self._qpos[0]] = start.x_m
        d.qpos[self._qpos[1]] = start.y_m
        d.qpos[self._qpos[2]] = start.yaw_rad
        mujoco.mj_forward(m, d)
        self._step = 0
        self._cmd_active = False
        self._in_contact = False
        self.stats = SimStats(
            readings={t: 0 for t in self._topics},
            sensor_wall_s={t: 0.0 for t in self._topics},
        )
        for sensor, stream in zip(self._sensors, streams):
            sensor.reset(np.random.default_rng(stream))
        self._next = [0] * len(self._sensors)
        readings: list[Reading] = []
        self._sample_due(readings)
        return readings

    def set_command(self, v_mps: float, omega_radps: float) -> None:
        """Command forward velocity (m/s) and yaw rate (rad/s) from now until the next command or the timeout.

        Finite values beyond ``+-max_v_mps`` / ``+-max_omega_radps`` are clipped (``stats.clipped_commands``);
        non-finite or non-numeric values are rejected (``stats.rejected_commands``) and the base is commanded
        to stop instead.
        """
        stats = self.stats
        stats.commands += 1
        try:
            v, omega = float(v_mps), float(omega_radps)
        except (TypeError, ValueError):
            v = omega = math.nan
        if not (math.isfinite(v) and math.isfinite(omega)):
            stats.rejected_commands += 1
            v = omega = 0.0
        else:
            cv = min(max(v, -self._max_v), self._max_v)
            comega = min(max(omega, -self._max_omega), self._max_omega)
            if cv != v or comega != omega:
                stats.clipped_commands += 1
            v, omega = cv, comega
        self.data.ctrl[self._act_v] = v
        self.data.ctrl[self._act_omega] = omega
        self._cmd_step = self._step
        self._cmd_active = True

    def advance(self, dt_s: float) -> list[Reading]:
        """Simulate ``dt_s`` seconds (a whole number of physics steps); return every reading stamped in
        ``(t, t + dt_s]``, in time order (readings with equal stamps in description order)."""
        steps = dt_s * self.physics_hz
        n = round(steps) if math.isfinite(steps) else -1
        if n < 0 or abs(steps - n) > 1e-6:
            raise DescriptionError(
                "dt_s", dt_s, f"must be a non-negative multiple of the physics timestep 1/{self.physics_hz} s"
            )
        target = self._step + n
        readings: list[Reading] = []
        m, d = self.model, self.data
        stats = self.stats
        while self._step < target:
            stop = min(self._next_event, target)
            timeout_at = self._cmd_step + self._timeout_steps
            if self._cmd_active and timeout_at < stop:
                stop = timeout_at
            t0 = time.perf_counter()
            mujoco.mj_step(m, d, stop - self._step)
            stats.physics_wall_s += time.perf_counter() - t0
            stats.steps += stop - self._step
            self._step = stop
            if self._cmd_active and self._step >= timeout_at:
                d.ctrl[self._act_v] = 0.0
                d.ctrl[self._act_omega] = 0.0
                self._cmd_active = False
                stats.command_timeouts += 1
            if self._step == self._next_event:
                self._sample_due(readings)
        if not np.isfinite(d.qpos).all():
            raise RuntimeError(f"simulation diverged at t = {self.sim_time_ns} ns (non-finite state)")
        return readings

    def _sample_due(self, readings: list[Reading]) -> None:
        """Sample every sensor due at the current step (after bringing MuJoCo's derived state up to it)."""
        m, d = self.model, self.data
        stats = self.stats
        t0 = time.perf_counter()
        mujoco.mj_forward(m, d)
        stats.physics_wall_s += time.perf_counter() - t0
        in_contact = d.ncon > 0
        if in_contact and not self._in_contact:
            stats.collisions += 1
        self._in_contact = in_contact
        stamp = self.sim_time_ns
        for i, sensor in enumerate(self._sensors):
            if self._next[i] != self._step:
                continue
            t0 = time.perf_counter()
            data = sensor.sample()
            topic = self._topics[i]
            stats.sensor_wall_s[topic] += time.perf_counter() - t0
            stats.readings[topic] += 1
            readings.append(Reading(topic, stamp, self._frames[i], data))
            self._next[i] += self._period_steps[i]
        self._next_event = min(self._next)

    def ground_truth(self) -> GroundTruth:
        """The true pose, velocities and collision state now (evaluation only)."""
        q, v = self.data.qpos, self.data.qvel
        yaw = float(q[self._qpos[2]])
        vx, vy = float(v[self._qvel[0]]), float(v[self._qvel[1]])
        c, s = math.cos(yaw), math.sin(yaw)
        return GroundTruth(
            stamp_ns=self.sim_time_ns,
            x_m=float(q[self._qpos[0]]),
            y_m=float(q[self._qpos[1]]),
            yaw_rad=(yaw + math.pi) % (2 * math.pi) - math.pi,
            v_mps=c * vx + s * vy,
            lateral_mps=-s * vx + c * vy,
            omega_radps=float(v[self._qvel[2]]),
            in_collision=self._in_contact,
            collisions=self.stats.collisions,
        )


def _sensor_periods(robot: RobotDescription, physics_hz: int) -> list[int]:
    """Physics steps between samples of each sensor; every rate must divide ``physics_hz``."""
    rates = {s.name: Fraction(s.rate_hz).limit_denominator(1000) for s in robot.sensors}
    off = [name for name, rate in rates.items() if (Fraction(physics_hz) / rate).denominator != 1]
    if off:
        lcm = Fraction(math.lcm(*(r.numerator for r in rates.values())), math.gcd(*(r.denominator for r in rates.values())))
        raise DescriptionError(
            "sim.physics_hz", physics_hz,
            "must be a multiple of every sensor rate (not of "
            + ", ".join(f"{name!r} at {float(rates[name]):g} Hz" for name in off)
            + f"); allowed: multiples of {float(lcm):g} in [500, 20000]",
        )
    return [int(Fraction(physics_hz) / rate) for rate in rates.values()]


def measure_speed(seconds: float = 20.0, seed: int = 0, robot: RobotDescription | None = None,
                  world: HallwayParams | None = None, settings: SimSettings = SimSettings(),
                  control_hz: float = 50.0) -> dict[str, Any]:
    """Simulated seconds per wall-clock second with the full sensor suite, on one core.

    Builds a hallway (``world``, default :class:`HallwayParams` with ``seed``) and the robot (default the
    shipped TurtleBot 4), drives a weaving pattern commanded at ``control_hz`` for ``seconds`` of sim time,
    and reports ``sim_s_per_wall_s`` plus the wall time per simulated second spent in physics
    (``physics_ms_per_sim_s``), in each sensor (``sensor_ms_per_sim_s``, by topic) and in the rest
    (``other_ms_per_sim_s``: scheduling, commands, reading objects). World generation and model compilation
    are excluded.
    """
    robot = robot or load_robot(robot_path("turtlebot4"))
    params = world or HallwayParams(seed=seed)
    sim = RobotSim(robot, generate_hallway(params, robot.base.radius_m), settings, seed=seed)
    sim.reset(seed)
    dt = 1.0 / control_hz
    steps = int(round(seconds * control_hz))
    t0 = time.perf_counter()
    for k in range(steps):
        t = k * dt
        sim.set_command(0.35, 0.9 * math.sin(0.7 * t))
        sim.advance(dt)
    wall = time.perf_counter() - t0
    sim_s = sim.sim_time_ns / _NS_PER_S
    stats = sim.stats
    sensor_ms = {topic: 1e3 * s / sim_s for topic, s in stats.sensor_wall_s.items()}
    physics_ms = 1e3 * stats.physics_wall_s / sim_s
    return {
        "sim_s": sim_s,
        "wall_s": wall,
        "sim_s_per_wall_s": sim_s / wall,
        "physics_hz": sim.physics_hz,
        "physics_ms_per_sim_s": physics_ms,
        "sensor_ms_per_sim_s": sensor_ms,
        "other_ms_per_sim_s": 1e3 * wall / sim_s - physics_ms - sum(sensor_ms.values()),
        "readings": dict(stats.readings),
        "collisions": stats.collisions,
    }
