"""Exploration policies for data collection, and the reactive follow-the-gap controller.

Every policy has the same small interface, called at the control rate by the episode runner
(:mod:`train.collect`) or, later, by an evaluation loop::

    policy = make_policy("gap", {}, robot, control_hz=50.0)
    policy.reset(seed=7, goal_xy_m=(12.0, 3.0))   # goal in the odometry frame (the start pose); optional
    v_mps, omega_radps = policy(readings, t_s)    # readings: every sim.sensors.Reading since the last call

Commands are always finite and within the base's limits (``|v| <= max_v_mps``, ``|omega| <= max_omega_radps``).
A policy owns its random stream, seeded by :meth:`Policy.reset`, so the same seed and the same readings give
the same commands.

Policies (``POLICIES``, by config name):

- ``ou``: smooth random commands, an Ornstein-Uhlenbeck process per channel (v, omega): exponentially
  correlated noise with time constant ``time_constant_s``, exactly discretised at the control period.
- ``pink``: colored noise with a power spectrum ~ 1/f^beta (beta = 1: pink), per channel; more low-frequency
  content than OU at the same variance, so it visits more distinct motions (long arcs, reversals).
- ``gap``: follow-the-gap on the LiDAR scan: scores every candidate heading by the free distance a disc of the
  footprint radius plus a margin could travel along it, prefers the middle of open sectors, forward headings
  and the direction it has been travelling, slows down or turns in place when the way ahead closes, backs out
  of dead ends, and follows a wall for a while when it finds itself trapped. Reactive, sensor-only (LiDAR,
  plus odometry between scans); with a goal it also leans toward the goal bearing. Our navigation baseline.
- ``mixture``: switches between component policies in segments of random duration (weights set in config).

For a gymnasium adapter (:mod:`sim.gym_adapter`), :class:`ActionNoisePolicy` draws smooth random actions in the
env's action box from the same noise processes (``ou`` or ``pink``, :class:`UnitNoise`).

Each ``*Params`` class is a frozen, validated dataclass; :func:`policy_params_from_dict` builds one from a YAML
mapping with errors naming the field.
"""

from __future__ import annotations

import collections
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from robots.description import (
    DescriptionError,
    RobotDescription,
    SensorDescription,
    build,
    check_choice,
    check_number,
    number_field,
)
from sim.sensors import Reading

__all__ = [
    "ACTION_NOISES",
    "POLICIES",
    "ActionNoiseParams",
    "ActionNoisePolicy",
    "ColoredNoiseParams",
    "FollowGap",
    "GapParams",
    "MixtureParams",
    "MixturePolicy",
    "NoisePolicy",
    "OUParams",
    "Policy",
    "UnitNoise",
    "make_policy",
    "policy_params_from_dict",
]


def _wrap(angle: float) -> float:
    """``angle`` wrapped to [-pi, pi)."""
    return (angle + math.pi) % (2.0 * math.pi) - math.pi


def _angle_off(headings: np.ndarray, bearing: float) -> np.ndarray:
    """|headings - bearing| wrapped to [0, pi] (rad), elementwise."""
    return np.abs((headings - bearing + math.pi) % (2.0 * math.pi) - math.pi)


class Policy:
    """Base of the policies: maps the readings of one control period to a command ``(v_mps, omega_radps)``.

    Subclasses implement :meth:`reset` and :meth:`__call__`. ``name`` is the config name; ``params`` the
    validated parameters (recorded in each episode's metadata).
    """

    name: str = ""

    def __init__(self, robot: RobotDescription, control_hz: float, params: Any) -> None:
        if not (isinstance(control_hz, (int, float)) and 0 < control_hz <= 1000):
            raise DescriptionError("control_hz", control_hz, "must be a number in (0, 1000]")
        self.params = params
        self.dt_s = 1.0 / control_hz
        self.max_v_mps = robot.base.max_v_mps
        self.max_omega_radps = robot.base.max_omega_radps

    def reset(self, seed: int, goal_xy_m: tuple[float, float] | None = None) -> None:
        """Start an episode: seed the policy's random stream; ``goal_xy_m`` is the goal in the odometry frame
        (x forward, y left of the start pose, m), or None when the task has no goal."""
        raise NotImplementedError

    def __call__(self, readings: Sequence[Reading], t_s: float) -> tuple[float, float]:
        """The command for the control period starting at ``t_s`` (s since reset), given every reading
        stamped since the previous call (in time order): ``(v_mps, omega_radps)``, finite and in limits."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Name and parameters, JSON-ready (for the log's metadata)."""
        return {"name": self.name, "params": asdict(self.params)}

    def episode_summary(self) -> dict[str, Any]:
        """What the policy did this episode beyond its parameters (JSON-ready); empty unless a policy has state
        worth recording (the mixture's schedule)."""
        return {}

    def _clip(self, v: float, omega: float) -> tuple[float, float]:
        return (
            min(max(v, -self.max_v_mps), self.max_v_mps),
            min(max(omega, -self.max_omega_radps), self.max_omega_radps),
        )


# --------------------------------------------------------------------------------------------------------------
# Clearance from a LiDAR scan, shared by the shield of the noise policies and by follow-the-gap.


class ScanPoints:
    """A planar LiDAR's returns as points in the base frame (m).

    The scan is taken at the sensor's mount (planar part: x, y, yaw); clearance is judged about the base
    centre, so every return is moved into the base frame. Beam directions are computed once per scan layout.
    """

    def __init__(self, lidar: SensorDescription) -> None:
        self.topic = lidar.topic
        (mx, my, _), (_, _, myaw) = lidar.mount.xyz_m, lidar.mount.rpy_rad
        self._mount = (mx, my, myaw)
        self._offset_m = math.hypot(mx, my)
        self._dirs: dict[tuple[int, float, float], np.ndarray] = {}

    def points(self, data: Mapping[str, Any], reach_m: float) -> np.ndarray:
        """(N, 2) returns of a ``sensor.lidar`` data map within ``reach_m`` of the base centre (a return
        farther away cannot limit a free distance that short; dropping them, most of a hallway's walls, halves
        the cost). Beams at ``range_max_m`` are "no return" and dropped."""
        ranges = np.asarray(data["ranges_m"], dtype=np.float64)
        key = (len(ranges), float(data["angle_min_rad"]), float(data["angle_increment_rad"]))
        dirs = self._dirs.get(key)
        if dirs is None:
            angles = key[1] + np.arange(key[0]) * key[2] + self._mount[2]
            dirs = self._dirs[key] = np.stack([np.cos(angles), np.sin(angles)], 1)
        valid = np.isfinite(ranges) & (ranges < min(float(data["range_max_m"]), reach_m + self._offset_m))
        points = dirs[valid] * ranges[valid, None]
        points[:, 0] += self._mount[0]
        points[:, 1] += self._mount[1]
        return points


def swept_free_distances(points: np.ndarray, headings_rad: np.ndarray, clear_m: float, cap_m: float) -> np.ndarray:
    """(H,) how far (m, in ``[0, cap_m]``) a disc of radius ``clear_m`` centred on the base travels along each
    heading (rad, base frame) before it touches one of ``points`` (N, 2)."""
    if len(points) == 0:
        return np.full(len(headings_rad), cap_m)
    along = np.cos(headings_rad)[:, None] * points[:, 0] + np.sin(headings_rad)[:, None] * points[:, 1]  # (H, N)
    lateral = -np.sin(headings_rad)[:, None] * points[:, 0] + np.cos(headings_rad)[:, None] * points[:, 1]
    half_chord2 = clear_m * clear_m - lateral * lateral
    # A point blocks a heading if it lies ahead and within the disc's swept width; the disc touches it when its
    # centre is sqrt(r^2 - lateral^2) short of the point's along-track distance.
    blocking = (along > 0.0) & (half_chord2 > 0.0)
    hit = np.where(blocking, along - np.sqrt(np.maximum(half_chord2, 0.0)), np.inf)
    return np.clip(hit.min(axis=1), 0.0, cap_m)


# --------------------------------------------------------------------------------------------------------------
# Smooth random commands.


@dataclass(frozen=True)
class NoiseCommandParams:
    """How a unit-variance noise source maps to commands (fractions of the base's limits) and its LiDAR shield.

    Shared by :class:`OUParams` and :class:`ColoredNoiseParams`; see :class:`OUParams` for the mapping.
    """

    v_mean_frac: float = 0.5
    v_std_frac: float = 0.4
    v_min_frac: float = -0.3
    omega_std_frac: float = 0.5
    shield_m: float = 0.15

    def __post_init__(self) -> None:
        number_field(self, "v_mean_frac", -1, 1)
        number_field(self, "v_std_frac", 0, 2)
        number_field(self, "v_min_frac", -1, 1)
        number_field(self, "omega_std_frac", 0, 2)
        number_field(self, "shield_m", 0, 5)


@dataclass(frozen=True)
class OUParams(NoiseCommandParams):
    """An Ornstein-Uhlenbeck process per channel, as fractions of the base's limits.

    ``v = v_mean_frac * max_v + v_std_frac * max_v * x_v`` and ``omega = omega_std_frac * max_omega * x_w``,
    where ``x_v``, ``x_w`` are unit-variance OU processes with correlation time ``time_constant_s`` (their
    autocorrelation at lag ``tau`` is ``exp(-tau / time_constant_s)``). ``v`` is then clipped to
    ``[v_min_frac * max_v, max_v]`` (a little reversing is allowed, mostly the robot goes forward and sees
    the hallway) and ``omega`` to its limit.

    ``shield_m`` (0: off): the speed is set to 0 when, on the latest LiDAR scan, the footprint could travel
    less than ``shield_m`` in the direction it would move (turning is never blocked). Without it, noise
    drives the robot into a wall and keeps it pinned there for the rest of a segment: long stretches of
    the same contact that teach a world model little. Contacts still happen (sideways, in turns).
    """

    time_constant_s: float = 1.0

    def __post_init__(self) -> None:
        number_field(self, "time_constant_s", 0.01, 100)
        super().__post_init__()


@dataclass(frozen=True)
class ColoredNoiseParams(NoiseCommandParams):
    """Colored noise per channel: power spectral density ~ 1/f^beta (0: white, 1: pink, 2: red/Brownian).

    Generated in blocks of ``block_s`` seconds by spectral shaping of white Gaussian noise (Timmer & Koenig
    1995), normalised to unit variance; the lowest frequency present is 1 / ``block_s``. Mapped to commands,
    and shielded, as in :class:`OUParams`.
    """

    beta: float = 1.0
    block_s: float = 60.0

    def __post_init__(self) -> None:
        number_field(self, "beta", 0, 3)
        number_field(self, "block_s", 1, 3600)
        super().__post_init__()


class NoisePolicy(Policy):
    """Smooth random commands from a two-channel unit-variance noise source (OU or colored); readings are used
    only by the shield (the robot's first LiDAR)."""

    def __init__(self, robot: RobotDescription, control_hz: float, params: OUParams | ColoredNoiseParams) -> None:
        super().__init__(robot, control_hz, params)
        self.name = "ou" if isinstance(params, OUParams) else "pink"
        self._scan: ScanPoints | None = None
        if params.shield_m > 0:
            lidars = robot.sensors_of_kind("lidar")
            if not lidars:
                raise DescriptionError("shield_m", params.shield_m, "needs a lidar on the robot; 0 turns it off")
            self._scan = ScanPoints(lidars[0])
        self._radius_m = robot.base.radius_m
        self._free = (math.inf, math.inf)  # m the footprint can move (forward, back) on the latest scan
        if isinstance(params, OUParams):
            self._noise = UnitNoise(2, self.dt_s, time_constant_s=params.time_constant_s)
        else:
            self._noise = UnitNoise(2, self.dt_s, beta=params.beta, block_s=params.block_s)

    def reset(self, seed: int, goal_xy_m: tuple[float, float] | None = None) -> None:
        self._noise.reset(seed)
        self._free = (math.inf, math.inf)

    def __call__(self, readings: Sequence[Reading], t_s: float) -> tuple[float, float]:
        p = self.params
        if self._scan is not None:
            for reading in readings:
                if reading.topic == self._scan.topic:
                    points = self._scan.points(reading.data, p.shield_m + self._radius_m)
                    fwd, back = swept_free_distances(points, _AHEAD_BACK, self._radius_m, p.shield_m)
                    self._free = (float(fwd), float(back))
        noise_v, noise_w = self._noise.next()
        v = self.max_v_mps * (p.v_mean_frac + p.v_std_frac * float(noise_v))
        v = min(max(v, p.v_min_frac * self.max_v_mps), self.max_v_mps)
        if (v > 0 and self._free[0] < p.shield_m) or (v < 0 and self._free[1] < p.shield_m):
            v = 0.0
        return self._clip(v, self.max_omega_radps * p.omega_std_frac * float(noise_w))


_AHEAD_BACK = np.array([0.0, math.pi])


class UnitNoise:
    """``dim`` independent zero-mean, unit-variance Gaussian noise channels sampled every ``dt_s`` seconds.

    With ``time_constant_s``: an Ornstein-Uhlenbeck process, exactly discretised (autocorrelation at lag ``tau``
    is ``exp(-tau / time_constant_s)``), started in its stationary distribution. Without: colored noise with
    power spectral density ~ 1/f^``beta``, generated in blocks of ``block_s`` seconds (:func:`_colored_noise`).
    """

    def __init__(self, dim: int, dt_s: float, *, time_constant_s: float | None = None, beta: float = 1.0,
                 block_s: float = 60.0) -> None:
        self.dim = dim
        self._ou = time_constant_s is not None
        self._decay = math.exp(-dt_s / time_constant_s) if time_constant_s is not None else 0.0
        self._kick = math.sqrt(1.0 - self._decay**2)  # keeps the stationary variance at 1
        self._beta = beta
        self._block_len = max(2, round(block_s / dt_s))
        self.reset(0)

    def reset(self, seed: int) -> None:
        """Reseed the stream and restart the process."""
        self._rng = np.random.default_rng(seed)
        self._x = self._rng.standard_normal(self.dim)  # OU: start in the stationary distribution
        self._block = np.zeros((0, self.dim))
        self._row = 0

    def next(self) -> np.ndarray:
        """The next sample, (dim,) float64 (a view: copy it to keep it)."""
        if self._ou:
            self._x = self._decay * self._x + self._kick * self._rng.standard_normal(self.dim)
            return self._x
        if self._row >= len(self._block):
            self._block = np.stack(
                [_colored_noise(self._beta, self._block_len, self._rng) for _ in range(self.dim)], 1
            )
            self._row = 0
        self._row += 1
        return self._block[self._row - 1]


@dataclass(frozen=True)
class ActionNoiseParams:
    """Smooth random actions in a box (the gymnasium adapter's exploration): per action dimension,
    ``a = centre + std_frac * half_width * x`` clipped to ``[low, high]``, where ``x`` is unit-variance noise:
    an OU process with correlation time ``time_constant_s`` (policy ``ou``) or colored noise ~ 1/f^``beta`` in
    blocks of ``block_s`` seconds (policy ``pink``)."""

    time_constant_s: float = 0.2
    beta: float = 1.0
    block_s: float = 20.0
    std_frac: float = 0.6

    def __post_init__(self) -> None:
        number_field(self, "time_constant_s", 0.001, 100)
        number_field(self, "beta", 0, 3)
        number_field(self, "block_s", 0.1, 3600)
        number_field(self, "std_frac", 0, 10)


#: Names of the action-box noise processes (:class:`ActionNoisePolicy`).
ACTION_NOISES = ("ou", "pink")


class ActionNoisePolicy:
    """Smooth random actions in the box ``[low, high]`` ((A,) each) at ``control_hz``: :class:`ActionNoiseParams`
    with noise ``name`` (``ou`` or ``pink``). Readings are not used; actions are finite and inside the box."""

    def __init__(self, name: str, low: np.ndarray, high: np.ndarray, control_hz: float,
                 params: ActionNoiseParams) -> None:
        check_choice("policy", name, ACTION_NOISES)
        self.name = name
        self.params = params
        self.low = np.asarray(low, dtype=np.float64)
        self.high = np.asarray(high, dtype=np.float64)
        finite = bool(np.all(np.isfinite(self.low)) and np.all(np.isfinite(self.high)))
        if self.low.shape != self.high.shape or self.low.ndim != 1 or not finite:
            raise DescriptionError("action box", (low, high), "needs finite (A,) bounds")
        self._centre = (self.low + self.high) / 2.0
        self._scale = params.std_frac * (self.high - self.low) / 2.0
        dt_s = 1.0 / control_hz
        if name == "ou":
            self._noise = UnitNoise(len(self.low), dt_s, time_constant_s=params.time_constant_s)
        else:
            self._noise = UnitNoise(len(self.low), dt_s, beta=params.beta, block_s=params.block_s)

    def reset(self, seed: int) -> None:
        """Start an episode: seed the noise."""
        self._noise.reset(seed)

    def __call__(self) -> np.ndarray:
        """The next action, (A,) float64 in the box."""
        return np.clip(self._centre + self._scale * self._noise.next(), self.low, self.high)

    def describe(self) -> dict[str, Any]:
        """Name and parameters, JSON-ready (for the log's metadata)."""
        return {"name": self.name, "params": asdict(self.params)}


def _colored_noise(beta: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n,) zero-mean, unit-variance Gaussian noise with power spectral density ~ 1/f^beta.

    Random Gaussian Fourier amplitudes scaled by f^(-beta/2) (the DC term is dropped, the lowest frequency
    1/n takes its place so the scaling stays finite), then normalised by the exact expected variance so every
    block has unit variance in expectation rather than a per-block rescale that would distort the spectrum.
    """
    freqs = np.fft.rfftfreq(n)
    freqs[0] = freqs[1]
    scale = freqs ** (-beta / 2.0)
    scale[0] = 0.0
    spectrum = scale * (rng.standard_normal(len(freqs)) + 1j * rng.standard_normal(len(freqs)))
    if n % 2 == 0:  # the Nyquist term of a real signal is real
        spectrum[-1] = scale[-1] * rng.standard_normal() * math.sqrt(2.0)
    signal = np.fft.irfft(spectrum, n)
    # Var of irfft output: sum over bins of |scale|^2 * E|z|^2 (= 2), each non-edge bin counted twice, over n^2.
    weights = np.full(len(freqs), 2.0)
    if n % 2 == 0:
        weights[-1] = 1.0
    variance = float(np.sum(weights * 2.0 * scale**2)) / n**2
    return signal / math.sqrt(variance)


# --------------------------------------------------------------------------------------------------------------
# Follow-the-gap.


@dataclass(frozen=True)
class GapParams:
    """Follow-the-gap on a planar LiDAR scan.

    Clearance: the robot is a disc of the footprint radius plus a margin; the free distance of a heading is how
    far that disc can travel along it from the base centre before it touches a LiDAR return (capped at
    ``lookahead_m``). Two margins are used: ``margin_m``, the clearance the controller prefers, and
    ``min_margin_m``, the least it will pass with, so it keeps away from obstacles where it can and still
    squeezes through a narrow gap where it must. A heading is feasible when its free distance at
    ``min_margin_m`` is at least ``commit_distance_m``: a heading that leads only a few centimetres (into a
    gap narrower than the robot) is not worth turning to, and refusing it keeps the robot from pushing
    into such a gap again and again.

    Choice: among feasible headings within ``+-fov_deg / 2`` of the robot's heading, every ``heading_step_deg``,
    the score is the openness (the mean of the two free distances over ``lookahead_m``, min-filtered over
    ``+-gap_halfwidth_deg`` so the middle of an open sector beats its edge) minus ``turn_weight`` * |heading| /
    pi, minus ``switch_weight`` * |change from the previous choice| / pi, minus ``progress_weight`` times how
    far beyond ``progress_free_deg`` the heading points from the travel direction (as a fraction of the rest
    of the half turn: 0 up to ``progress_free_deg``, 1 straight back), minus ``goal_weight`` * |angle to the
    goal| / pi when a goal is known. The travel direction is the direction the robot has been moving in,
    averaged over the last ``memory_m`` metres of odometry (initially its heading at reset): it is what keeps a
    reactive controller going down a hallway instead of turning back into the open corridor behind it when the
    way ahead looks blocked for a moment. A goal's straight-line bearing points through the walls of a winding
    hallway, so its default weight is small.

    Motion: ``omega = turn_gain * heading error``. Forward speed is ``cruise_frac * max_v`` scaled down
    linearly as the free distance straight ahead (at ``min_margin_m``) falls from ``slow_distance_m`` to
    ``stop_distance_m`` (but at least ``creep_frac * max_v`` while it is above it, so the robot never
    creeps toward an obstacle forever), and to zero as the heading error grows to ``turn_in_place_deg`` (it
    then turns in place). Boxed in (no feasible heading), it backs up at ``reverse_frac * max_v`` for
    ``reverse_s`` while turning toward the most open heading, if the way back is free, else turns in place;
    for the next ``tabu_s`` it then avoids headings within ``tabu_halfwidth_deg`` of the one that was blocked
    (score minus ``tabu_weight``), or it would drive straight back into the same spot once it had backed out.

    Recovery: a reactive rule has local minima (a cluttered corner it leaves the way it came, a dead end it
    keeps returning to). When odometry shows the robot has stayed within ``recover_distance_m`` of one place
    for ``recover_window_s``, it follows the wall on its ``wall_side`` for ``wall_follow_s``: the same
    machinery, scoring the feasible headings (at ``margin_m``) by how far they turn toward that side. Wall
    following moves along the boundary of the free space instead of back and forth across it, which is what
    usually breaks the loop.

    Measured with the shipped robot, no goal given: on hallways of 10-12 m with one turn and the default
    clutter, 18 of seeds 0-23 reach the end within 60 s; on the preset's 20-40 m hallways, 7 of seeds 0-11
    within 240 s; no collision in any of these runs. It is a reactive baseline, not a planner.
    """

    lidar: str = "lidar"
    margin_m: float = 0.15
    min_margin_m: float = 0.03
    lookahead_m: float = 3.0
    fov_deg: float = 200.0
    heading_step_deg: float = 3.0
    gap_halfwidth_deg: float = 9.0
    turn_weight: float = 0.25
    switch_weight: float = 0.15
    progress_weight: float = 1.0
    progress_free_deg: float = 60.0
    memory_m: float = 2.0
    goal_weight: float = 0.1
    turn_gain: float = 2.0
    cruise_frac: float = 1.0
    creep_frac: float = 0.15
    slow_distance_m: float = 1.2
    stop_distance_m: float = 0.1
    commit_distance_m: float = 0.5
    turn_in_place_deg: float = 70.0
    reverse_frac: float = 0.3
    reverse_s: float = 1.0
    tabu_s: float = 6.0
    tabu_halfwidth_deg: float = 35.0
    tabu_weight: float = 1.0
    recover_window_s: float = 30.0
    recover_distance_m: float = 3.0
    wall_follow_s: float = 30.0
    wall_side: str = "right"

    def __post_init__(self) -> None:
        if not isinstance(self.lidar, str) or not self.lidar:
            raise DescriptionError("lidar", self.lidar, "must be the name of a lidar sensor of the robot")
        number_field(self, "margin_m", 0, 2)
        number_field(self, "min_margin_m", 0, self.margin_m)
        number_field(self, "lookahead_m", 0.2, 50)
        number_field(self, "fov_deg", 10, 359)
        number_field(self, "heading_step_deg", 0.25, 30)
        number_field(self, "gap_halfwidth_deg", 0, 90)
        number_field(self, "turn_weight", 0, 10)
        number_field(self, "switch_weight", 0, 10)
        number_field(self, "progress_weight", 0, 10)
        number_field(self, "progress_free_deg", 0, 179)
        number_field(self, "memory_m", 0.01, 100)
        number_field(self, "goal_weight", 0, 10)
        number_field(self, "turn_gain", 0, 50, lo_open=True)
        number_field(self, "cruise_frac", 0, 1, lo_open=True)
        number_field(self, "creep_frac", 0, self.cruise_frac)
        number_field(self, "stop_distance_m", 0, 5)
        number_field(self, "slow_distance_m", self.stop_distance_m, 50, lo_open=True)
        number_field(self, "commit_distance_m", self.stop_distance_m, self.lookahead_m)
        number_field(self, "turn_in_place_deg", 1, 180)
        number_field(self, "reverse_frac", 0, 1)
        number_field(self, "reverse_s", 0, 10)
        number_field(self, "tabu_s", 0, 3600)
        number_field(self, "tabu_halfwidth_deg", 0, 180)
        number_field(self, "tabu_weight", 0, 10)
        number_field(self, "recover_window_s", 0, 3600)
        number_field(self, "recover_distance_m", 0, 100)
        number_field(self, "wall_follow_s", 0, 3600)
        check_choice("wall_side", self.wall_side, ("right", "left"))


class FollowGap(Policy):
    """Reactive follow-the-gap controller (see :class:`GapParams` for the rule and its parameters).

    Replans on every new scan of the ``lidar`` sensor (its topic, from the description). Between scans it
    steers toward the chosen heading using the odometry yaw (if the robot has odometry), so the 50 Hz
    commands stay smooth at a 10 Hz scan rate. Before the first scan it stands still. Deterministic: it has
    no random stream (the seed of :meth:`reset` is accepted for the common interface).
    """

    name = "gap"

    def __init__(self, robot: RobotDescription, control_hz: float, params: GapParams) -> None:
        super().__init__(robot, control_hz, params)
        try:
            lidar = robot.sensor(params.lidar)
        except KeyError as exc:
            raise DescriptionError("lidar", params.lidar, str(exc)) from None
        if lidar.kind != "lidar":
            raise DescriptionError("lidar", params.lidar, f"is a {lidar.kind} sensor, not a lidar")
        odoms = robot.sensors_of_kind("odom")
        self._scan = ScanPoints(lidar)
        self._odom_topic = odoms[0].topic if odoms else None
        self._radius_m = robot.base.radius_m
        half = math.radians(params.fov_deg) / 2.0
        step = math.radians(params.heading_step_deg)
        count = int(math.floor(half / step))
        # Candidates within the field of view, then straight back (used only to check the way to reverse).
        self._headings = np.append(np.arange(-count, count + 1) * step, math.pi)  # (C + 1,) rad
        self._choices = 2 * count + 1
        self._straight = count  # index of heading 0
        self._window = int(round(params.gap_halfwidth_deg / params.heading_step_deg))
        self._goal: tuple[float, float] | None = None
        self.reset(0)

    def reset(self, seed: int, goal_xy_m: tuple[float, float] | None = None) -> None:
        self._goal = None if goal_xy_m is None else (float(goal_xy_m[0]), float(goal_xy_m[1]))
        self._odom = (0.0, 0.0, 0.0)
        self._travel = [1.0, 0.0]  # travel direction in the odometry frame (not normalised)
        self._target_yaw = 0.0  # chosen heading, in the odometry frame
        self._prev_choice = 0.0  # chosen heading relative to the robot at the last scan
        self._free_ahead = 0.0  # m, at the least margin
        self._free_back = 0.0
        self._reverse_until_s = -1.0
        self._tabu_until_s = -1.0
        self._tabu_yaw = 0.0  # blocked heading, in the odometry frame
        self._wall_until_s = -1.0
        self._marks: collections.deque[tuple[float, float, float]] = collections.deque()
        self.recoveries = 0
        self._boxed = False
        self._have_scan = False

    @property
    def headings_rad(self) -> np.ndarray:
        """(C,) candidate headings (rad, relative to the robot's heading, counter-clockwise)."""
        return self._headings[: self._choices]

    def free_distances(self, scan_data: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """Free distance (m, in ``[0, lookahead_m]``) of each candidate heading (:attr:`headings_rad`, then
        straight back) in one ``sensor.lidar`` data map, at ``margin_m`` and at ``min_margin_m``: two (C + 1,)
        arrays (see :func:`swept_free_distances`)."""
        p = self.params
        points = self._scan.points(scan_data, p.lookahead_m + self._radius_m + p.margin_m)
        return tuple(  # type: ignore[return-value]
            swept_free_distances(points, self._headings, self._radius_m + margin, p.lookahead_m)
            for margin in (p.margin_m, p.min_margin_m)
        )

    def choose(self, free_m: np.ndarray, free_min_m: np.ndarray, travel_bearing_rad: float,
               goal_bearing_rad: float | None = None, tabu_bearing_rad: float | None = None) -> tuple[int, bool]:
        """``(index, feasible)``: the index into :attr:`headings_rad` of the best feasible heading given the
        free distances at the preferred and the least margin, and the bearings (relative to the robot's
        heading) of the travel direction, the goal and the recently blocked heading (see :class:`GapParams`).
        When no heading is feasible,
        the most open one at the least margin (the way to turn while backing out) and False."""
        p = self.params
        free_m, free_min_m = free_m[: self._choices], free_min_m[: self._choices]
        feasible = free_min_m >= p.commit_distance_m
        openness = (free_m + free_min_m) / (2.0 * p.lookahead_m)
        if self._window > 0:
            # Min-filter over neighbouring headings: a heading is as open as the narrowest one beside it.
            padded = np.pad(openness, self._window, mode="edge")
            openness = np.lib.stride_tricks.sliding_window_view(padded, 2 * self._window + 1).min(axis=1)
        headings = self._headings[: self._choices]
        score = openness - p.turn_weight * np.abs(headings) / math.pi
        score -= p.switch_weight * np.abs(headings - self._prev_choice) / math.pi
        backward = np.maximum(_angle_off(headings, travel_bearing_rad) - math.radians(p.progress_free_deg), 0.0)
        score -= p.progress_weight * backward / (math.pi - math.radians(p.progress_free_deg))
        if goal_bearing_rad is not None:
            score -= p.goal_weight * _angle_off(headings, goal_bearing_rad) / math.pi
        if tabu_bearing_rad is not None:
            score[_angle_off(headings, tabu_bearing_rad) <= math.radians(p.tabu_halfwidth_deg)] -= p.tabu_weight
        if not feasible.any():
            return int(np.argmax(free_min_m)), False
        score[~feasible] = -np.inf
        return int(np.argmax(score)), True

    def follow_wall(self, free_m: np.ndarray, free_min_m: np.ndarray) -> tuple[int, bool]:
        """``(index, feasible)`` like :meth:`choose`, for wall following: the feasible heading turned farthest
        toward ``wall_side`` (feasible at ``margin_m`` if any is, else at ``min_margin_m``)."""
        p = self.params
        headings = self._headings[: self._choices]
        toward = -headings if p.wall_side == "right" else headings
        for free in (free_m[: self._choices], free_min_m[: self._choices]):
            feasible = free >= p.commit_distance_m
            if feasible.any():
                return int(np.argmax(np.where(feasible, toward, -np.inf))), True
        return int(np.argmax(free_min_m[: self._choices])), False

    def _trapped(self, t_s: float) -> bool:
        """Whether the robot stayed within ``recover_distance_m`` of its odometry position for the last
        ``recover_window_s`` (positions sampled at 1 Hz), outside wall following."""
        p = self.params
        if p.recover_window_s <= 0 or t_s < self._wall_until_s:
            return False
        x, y, _ = self._odom
        if not self._marks or t_s - self._marks[-1][0] >= 1.0:
            self._marks.append((t_s, x, y))
            while t_s - self._marks[0][0] > p.recover_window_s + 1e-9:
                self._marks.popleft()
        if t_s - self._marks[0][0] < p.recover_window_s - 1.0:
            return False
        return all(math.hypot(mx - x, my - y) < p.recover_distance_m for _, mx, my in self._marks)

    def episode_summary(self) -> dict[str, Any]:
        """``recoveries``: how often the robot was trapped and switched to wall following."""
        return {"recoveries": self.recoveries}

    def _plan(self, scan: Reading, t_s: float) -> None:
        free, free_min = self.free_distances(scan.data)
        x, y, yaw = self._odom
        travel_bearing = _wrap(math.atan2(self._travel[1], self._travel[0]) - yaw)
        goal_bearing = None
        if self._goal is not None:
            goal_bearing = _wrap(math.atan2(self._goal[1] - y, self._goal[0] - x) - yaw)
        if self._trapped(t_s):
            self._wall_until_s = t_s + self.params.wall_follow_s
            self._marks.clear()
            self.recoveries += 1
        if t_s < self._wall_until_s:
            best, feasible = self.follow_wall(free, free_min)
        else:
            tabu = _wrap(self._tabu_yaw - yaw) if t_s < self._tabu_until_s else None
            best, feasible = self.choose(free, free_min, travel_bearing, goal_bearing, tabu)
        self._boxed = not feasible
        if not feasible:
            self._reverse_until_s = t_s + self.params.reverse_s
            self._tabu_until_s = self._reverse_until_s + self.params.tabu_s
            self._tabu_yaw = yaw
        heading = float(self._headings[best])
        self._prev_choice = heading
        self._target_yaw = self._odom[2] + heading
        self._free_ahead = float(free_min[self._straight])
        self._free_back = float(free_min[-1])
        self._have_scan = True

    def _update_odom(self, x: float, y: float, yaw: float) -> None:
        """Take an odometry pose; fold the motion since the last one into the travel direction (an average
        of unit motion directions, each weighted by its length over ``memory_m``)."""
        dx, dy = x - self._odom[0], y - self._odom[1]
        step = math.hypot(dx, dy)
        if step > 0.0:
            w = min(1.0, step / self.params.memory_m)
            self._travel[0] += w * (dx / step - self._travel[0])
            self._travel[1] += w * (dy / step - self._travel[1])
        self._odom = (x, y, yaw)

    def __call__(self, readings: Sequence[Reading], t_s: float) -> tuple[float, float]:
        scan = None
        for reading in readings:
            if reading.topic == self._scan.topic:
                scan = reading
            elif reading.topic == self._odom_topic:
                d = reading.data
                self._update_odom(float(d["x_m"]), float(d["y_m"]), float(d["yaw_rad"]))
        # While backing out, keep going for reverse_s: replanning at once would drive straight back in.
        if scan is not None and t_s >= self._reverse_until_s:
            self._plan(scan, t_s)
        if not self._have_scan:
            return 0.0, 0.0
        p = self.params
        # Without odometry the yaw never changes and the error stays the scan's choice until the next scan.
        error = _wrap(self._target_yaw - self._odom[2])
        omega = p.turn_gain * error
        if t_s < self._reverse_until_s:
            v = -p.reverse_frac * self.max_v_mps if self._free_back > p.stop_distance_m else 0.0
            return self._clip(v, omega)
        if self._free_ahead <= p.stop_distance_m:
            return self._clip(0.0, omega)
        ahead = (self._free_ahead - p.stop_distance_m) / (p.slow_distance_m - p.stop_distance_m)
        v = max(p.cruise_frac * min(1.0, ahead), p.creep_frac) * self.max_v_mps
        v *= max(0.0, 1.0 - abs(error) / math.radians(p.turn_in_place_deg))
        return self._clip(v, omega)


# --------------------------------------------------------------------------------------------------------------
# Mixtures.


@dataclass(frozen=True)
class MixtureParams:
    """Switch between component policies: each segment lasts a uniform random ``[segment_min_s,
    segment_max_s]`` seconds and runs one component drawn with probability proportional to its weight.
    ``components`` maps policy names (not ``mixture``) to weights; each component takes its parameters from
    the ``policies`` section of the config."""

    components: Mapping[str, float] = field(default_factory=lambda: {"gap": 0.5, "ou": 0.25, "pink": 0.25})
    segment_min_s: float = 2.0
    segment_max_s: float = 8.0

    def __post_init__(self) -> None:
        if not isinstance(self.components, Mapping) or not self.components:
            raise DescriptionError("components", self.components, "must map policy names to weights")
        weights = {}
        for name, weight in self.components.items():
            check_choice(f"components.{name}", name, tuple(n for n in POLICIES if n != "mixture"))
            weights[name] = check_number(f"components.{name}", weight, 0, 1e6)
        if sum(weights.values()) <= 0:
            raise DescriptionError("components", dict(self.components), "needs a positive total weight")
        object.__setattr__(self, "components", weights)
        number_field(self, "segment_min_s", 0.02, 3600)
        number_field(self, "segment_max_s", self.segment_min_s, 3600)


class MixturePolicy(Policy):
    """Runs one component policy per segment (see :class:`MixtureParams`).

    Every component sees every reading and is called every period (its command is discarded while inactive),
    so a component that becomes active has current state: the gap follower its latest scan, the noise its
    running process. Each component gets its own seed derived from the mixture's.
    """

    name = "mixture"

    def __init__(self, robot: RobotDescription, control_hz: float, params: MixtureParams,
                 components: Mapping[str, Policy]) -> None:
        super().__init__(robot, control_hz, params)
        self._names = list(params.components)
        self._components = [components[n] for n in self._names]
        weights = np.array([params.components[n] for n in self._names])
        self._probs = weights / weights.sum()
        self._rng = np.random.default_rng(0)
        self._active = 0
        self._until_s = -1.0
        self._segments: list[tuple[float, str]] = []

    def reset(self, seed: int, goal_xy_m: tuple[float, float] | None = None) -> None:
        seeds = np.random.SeedSequence(seed).spawn(len(self._components) + 1)
        self._rng = np.random.default_rng(seeds[0])
        for component, child in zip(self._components, seeds[1:]):
            component.reset(int(child.generate_state(1)[0]), goal_xy_m)
        self._until_s = -1.0
        self._segments = []

    def __call__(self, readings: Sequence[Reading], t_s: float) -> tuple[float, float]:
        if t_s >= self._until_s:
            p = self.params
            self._active = int(self._rng.choice(len(self._components), p=self._probs))
            self._until_s = t_s + float(self._rng.uniform(p.segment_min_s, p.segment_max_s))
            self._segments.append((round(t_s, 6), self._names[self._active]))
        commands = [component(readings, t_s) for component in self._components]
        return commands[self._active]

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "params": asdict(self.params),
            "components": {n: c.describe() for n, c in zip(self._names, self._components)},
        }

    def episode_summary(self) -> dict[str, Any]:
        """``segments``: ``[t_s, component]`` at each switch (the component runs until the next entry)."""
        return {"segments": [list(s) for s in self._segments]}


# --------------------------------------------------------------------------------------------------------------
# Registry.

#: Config name -> (parameter class, builder(robot, control_hz, params, policies_config)).
POLICIES: dict[str, tuple[type, Callable[..., Policy]]] = {
    "ou": (OUParams, lambda robot, hz, params, _cfg: NoisePolicy(robot, hz, params)),
    "pink": (ColoredNoiseParams, lambda robot, hz, params, _cfg: NoisePolicy(robot, hz, params)),
    "gap": (GapParams, lambda robot, hz, params, _cfg: FollowGap(robot, hz, params)),
    "mixture": (
        MixtureParams,
        lambda robot, hz, params, cfg: MixturePolicy(
            robot, hz, params, {n: make_policy(n, cfg, robot, hz) for n in params.components}
        ),
    ),
}


def policy_params_from_dict(name: str, raw: Mapping[str, Any] | None, path: str = "policies") -> Any:
    """The validated parameters of policy ``name`` from a YAML mapping (missing keys take the defaults);
    errors name the field (``policies.gap.margin_m = -1: must be in [0, 2]``)."""
    check_choice("policy", name, tuple(POLICIES))
    return build(POLICIES[name][0], raw, f"{path}.{name}")


def make_policy(name: str, policies: Mapping[str, Mapping[str, Any]] | None, robot: RobotDescription,
                control_hz: float) -> Policy:
    """Build policy ``name`` for ``robot`` at ``control_hz``; ``policies`` maps policy names to their
    parameter mappings (the config's ``policies`` section; absent names take the defaults)."""
    policies = policies or {}
    params = policy_params_from_dict(name, policies.get(name))
    return POLICIES[name][1](robot, control_hz, params, policies)
