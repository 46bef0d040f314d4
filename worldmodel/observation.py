"""Observations on the tick grid: every modality as (value, mask, age) at each control tick, for training and live.

The same code aligns a log offline (``train.dataset`` feeds a recorded episode through it, tick by tick) and
the runtime's live ONI messages every control tick, so what the model sees in training is what it sees on the
robot. Pure numpy: nothing here imports ``oni``, ``robots`` or torch.

Per tick ``t`` (ns) the :class:`TickAssembler` gives, for each modality of the :class:`ObservationSpec`:

============  ===========================  ====================================================================
key           shape (one tick), float32    meaning
============  ===========================  ====================================================================
``lidar``     (N,)                         ranges (m) of the latest scan (held); zeros before the first
``depth``     (H, W)                       depth (m, 0 = no return) of the latest frame (held); zeros before
``imu``       (K, 6)                       accel xyz (m/s^2), gyro xyz (rad/s) of the samples new since the
                                           last tick, oldest first, zero-padded to K
``odom``      (5,)                         ``[v_mps, omega_radps, dx_m, dy_m, dyaw_rad]``: velocities of the
                                           latest message (held); the pose change since the odometry pose used
                                           at the previous update, in that pose's robot frame (0 if nothing new)
``obs``       (D,)                         a gymnasium env's observation vector (held)
``M_mask``    () (``imu_mask``: (K,))      1.0 if a new message (sample) arrived since the last tick, else 0.0
``M_age``     ()                           seconds from the held value's stamp to ``t``, clipped to
                                           ``[0, max_age_s]``; ``max_age_s`` before any message
``action``    (A,)                         the latest action stamped <= ``t`` (held; zeros before the first,
                                           after a stop command, or once older than ``action_timeout_s``)
``dt``        ()                           seconds since the previous tick (the nominal period at the first)
============  ===========================  ====================================================================

"New since the last tick" is the live form of "stamped in (t - dt, t]": offline, ``train.dataset`` feeds
exactly the messages stamped in that interval before calling :meth:`TickAssembler.tick`, so the two agree.

Validation: a message of the wrong shape, missing a field, or holding a non-finite value is rejected and
counted (:class:`ModalityStats`), never stored: NaN never reaches the model.

Late and out-of-order messages. A message stamped at or before the last assembled tick is *late* (counted).
Any message (late or not) is applied only if it is fresher than what the modality holds (stamp strictly
greater than the held stamp); otherwise it is dropped and counted as *stale*. An applied late message
counts as new at the next tick, with its true (larger) age. IMU samples follow the same rule sample by
sample against the newest sample held, and at most K samples wait for a tick: when more arrive, the oldest
are dropped (counted as *overflow*).

Allocation: everything is preallocated in the constructor; :meth:`TickAssembler.tick` and the ``add_*``
methods allocate no arrays (only Python floats for scalars). The one exception is the generic
:meth:`TickAssembler.add` given a non-array value (a Python list), which numpy must convert.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

import numpy as np

__all__ = [
    "IMU_CHANNELS",
    "MODALITIES",
    "ModalityStats",
    "NormStats",
    "ODOM_CHANNELS",
    "ObservationSpec",
    "TickAssembler",
]

#: Observation modalities, in the order they appear everywhere (spec, tick output, statistics).
MODALITIES = ("lidar", "depth", "imu", "odom", "obs")
#: IMU channels per sample: accel x, y, z (m/s^2), gyro x, y, z (rad/s).
IMU_CHANNELS = 6
#: Odometry channels per tick: v (m/s), omega (rad/s), dx (m), dy (m), dyaw (rad).
ODOM_CHANNELS = 5

#: ONI topic of each modality unless a spec says otherwise; ``action`` is the robot's command topic.
DEFAULT_TOPICS = {
    "lidar": "sensor.lidar",
    "depth": "sensor.depth",
    "imu": "sensor.imu",
    "odom": "sensor.odom",
    "obs": "env.observation",
}
_ROBOT_ACTION_TOPIC = "actuator.cmd"
_GYM_ACTION_TOPIC = "env.action"
_NS = 1_000_000_000


def _check_count(name: str, value: Any, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= hi:
        raise ValueError(f"{name} = {value!r}: must be an integer in [0, {hi}] (0: the modality is absent)")
    return value


@dataclass(frozen=True)
class ObservationSpec:
    """Which modalities a robot (or env) has and their shapes, from plain numbers.

    ``lidar_beams`` N, ``depth_height`` x ``depth_width`` H x W, ``imu_samples`` K (IMU samples per tick:
    ``ceil(imu_rate / control_rate)``), ``odom`` (wheel odometry present), ``obs_dim`` D (a gymnasium env's
    observation vector); 0 / False means absent. ``action_dim`` A: 2 for a base's ``(v_mps, omega_radps)``.
    ``topics`` maps each present modality, and ``action``, to its ONI topic; missing entries take the
    defaults (``sensor.lidar`` ..., ``actuator.cmd``, or ``env.action`` when ``obs_dim`` > 0).

    ``robots.model_spec.observation_spec(robot, control_hz)`` builds one from a robot description.
    """

    lidar_beams: int = 0
    depth_height: int = 0
    depth_width: int = 0
    imu_samples: int = 0
    odom: bool = False
    obs_dim: int = 0
    action_dim: int = 2
    topics: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_count("lidar_beams", self.lidar_beams, 1 << 16)
        _check_count("depth_height", self.depth_height, 1 << 14)
        _check_count("depth_width", self.depth_width, 1 << 14)
        if (self.depth_height == 0) != (self.depth_width == 0):
            raise ValueError(
                f"depth_height x depth_width = {self.depth_height} x {self.depth_width}: both 0 (no depth) or both > 0"
            )
        _check_count("imu_samples", self.imu_samples, 1024)
        if not isinstance(self.odom, bool):
            raise ValueError(f"odom = {self.odom!r}: must be true or false")
        _check_count("obs_dim", self.obs_dim, 1 << 20)
        _check_count("action_dim", self.action_dim, 1 << 12)
        if self.action_dim == 0:
            raise ValueError("action_dim = 0: must be >= 1")
        if not self.modalities:
            raise ValueError("an observation spec needs at least one modality (lidar, depth, imu, odom or obs)")
        if not isinstance(self.topics, Mapping):
            raise ValueError(f"topics = {self.topics!r}: must map modality names to ONI topics")
        unknown = sorted(set(self.topics) - set(MODALITIES) - {"action"})
        if unknown:
            raise ValueError(f"topics.{unknown[0]}: unknown modality; known: {[*MODALITIES, 'action']}")
        topics = {m: self.topics.get(m, DEFAULT_TOPICS[m]) for m in self.modalities}
        topics["action"] = self.topics.get("action", _GYM_ACTION_TOPIC if self.obs_dim else _ROBOT_ACTION_TOPIC)
        if len(set(topics.values())) != len(topics):
            raise ValueError(f"topics = {topics}: each modality needs its own topic")
        object.__setattr__(self, "topics", topics)

    @property
    def modalities(self) -> tuple[str, ...]:
        """The present modalities, in :data:`MODALITIES` order."""
        present = {
            "lidar": self.lidar_beams > 0,
            "depth": self.depth_height > 0,
            "imu": self.imu_samples > 0,
            "odom": self.odom,
            "obs": self.obs_dim > 0,
        }
        return tuple(m for m in MODALITIES if present[m])

    def shape(self, key: str) -> tuple[int, ...]:
        """Per-tick shape of the value ``key`` (a modality or ``action``)."""
        shapes = {
            "lidar": (self.lidar_beams,),
            "depth": (self.depth_height, self.depth_width),
            "imu": (self.imu_samples, IMU_CHANNELS),
            "odom": (ODOM_CHANNELS,),
            "obs": (self.obs_dim,),
            "action": (self.action_dim,),
        }
        return shapes[key]

    @property
    def kind_of_topic(self) -> dict[str, str]:
        """ONI topic -> modality (or ``action``)."""
        return {topic: kind for kind, topic in self.topics.items()}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict that :meth:`from_dict` turns back into an equal spec."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["topics"] = dict(self.topics)
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "ObservationSpec":
        """A spec from a mapping of its field names (unknown keys are an error, naming the known ones)."""
        if not isinstance(raw, Mapping):
            raise ValueError(f"observation spec = {raw!r}: must be a mapping")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"observation spec field {unknown[0]!r} is unknown; known: {sorted(known)}")
        return cls(**dict(raw))


@dataclass
class ModalityStats:
    """What a :class:`TickAssembler` did with one modality's messages since construction or :meth:`reset`.

    ``accepted``: applied. ``malformed``: wrong shape, missing or mistyped field. ``non_finite``: NaN or
    Inf in a value. ``late``: stamped at or before the last assembled tick (applied if still fresher than
    the held value). ``stale``: not fresher than the held value (dropped). ``overflow``: IMU samples dropped
    because more than K waited for one tick.
    """

    accepted: int = 0
    malformed: int = 0
    non_finite: int = 0
    late: int = 0
    stale: int = 0
    overflow: int = 0

    @property
    def rejected(self) -> int:
        """Messages never stored: malformed, non-finite or stale."""
        return self.malformed + self.non_finite + self.stale


class _Held:
    """A held modality (lidar, depth, obs): the staged latest value, its stamp, and whether it is new."""

    __slots__ = ("stage", "finite", "has", "stamp_ns", "new", "value", "mask", "age")

    def __init__(self, shape: tuple[int, ...], out: dict[str, np.ndarray], key: str) -> None:
        self.stage = np.zeros(shape, np.float32)
        self.finite = np.empty(shape, bool)  # scratch for the finiteness check, so it allocates nothing
        self.has = False
        self.stamp_ns = 0
        self.new = False
        self.value, self.mask, self.age = out[key], out[f"{key}_mask"], out[f"{key}_age"]


class TickAssembler:
    """Aligns one robot's (or env's) messages onto control ticks: (value, mask, age) per modality.

    ``spec``: modalities and shapes. ``control_hz``: the nominal tick rate (the first tick's ``dt``).
    ``max_age_s``: ages are clipped to it, and it is the age of a modality before its first message.
    ``action_timeout_s``: an action older than this is reported as zeros (a drive stops by itself when its
    command stream dies; ``inf`` holds the last action forever).

    Feed messages with the ``add_*`` methods, :meth:`set_action` / :meth:`set_command` or the generic
    :meth:`add` (ONI ``data`` maps), then call :meth:`tick` at each control tick. :attr:`out` holds the
    per-tick arrays (module docstring): they are preallocated once and overwritten in place by each
    :meth:`tick`, so a consumer may wrap them once (``torch.from_numpy``) and read them every tick.
    :attr:`stats` counts what happened to each modality's messages. Not thread-safe: one thread feeds and
    ticks.

    At runtime, :meth:`tick` (t) runs before the planner picks the action for ``[t, t + dt)``, so its
    ``action`` is the one still in effect (chosen at the previous tick); offline, ``train.dataset`` feeds the
    command stamped ``t`` first, so a dataset's ``action[t]`` is the one applied from ``t``.
    """

    def __init__(self, spec: ObservationSpec, control_hz: float, max_age_s: float = 1.0,
                 action_timeout_s: float = math.inf) -> None:
        if not (isinstance(control_hz, (int, float)) and math.isfinite(control_hz) and control_hz > 0):
            raise ValueError(f"control_hz = {control_hz!r}: must be a finite number > 0")
        if not (isinstance(max_age_s, (int, float)) and math.isfinite(max_age_s) and max_age_s > 0):
            raise ValueError(f"max_age_s = {max_age_s!r}: must be a finite number > 0")
        if not (isinstance(action_timeout_s, (int, float)) and action_timeout_s > 0):
            raise ValueError(f"action_timeout_s = {action_timeout_s!r}: must be > 0 (inf: never time out)")
        self.spec = spec
        self.control_hz = float(control_hz)
        self.max_age_s = float(max_age_s)
        self.action_timeout_ns = math.inf if math.isinf(action_timeout_s) else int(round(action_timeout_s * _NS))
        self._max_age_ns = int(round(self.max_age_s * _NS))
        self.out: dict[str, np.ndarray] = {}
        for m in spec.modalities:
            self.out[m] = np.zeros(spec.shape(m), np.float32)
            self.out[f"{m}_mask"] = np.zeros(spec.imu_samples if m == "imu" else (), np.float32)
            self.out[f"{m}_age"] = np.full((), self.max_age_s, np.float32)
        self.out["action"] = np.zeros(spec.action_dim, np.float32)
        self.out["dt"] = np.full((), 1.0 / self.control_hz, np.float32)
        self.stats: dict[str, ModalityStats] = {m: ModalityStats() for m in (*spec.modalities, "action")}
        self._held = {m: _Held(spec.shape(m), self.out, m) for m in ("lidar", "depth", "obs") if m in spec.modalities}
        k = spec.imu_samples
        self._imu_ring = np.zeros((max(k, 1), IMU_CHANNELS), np.float32)
        self._imu_sample = np.empty(IMU_CHANNELS, np.float64)
        self._imu_finite = np.empty(IMU_CHANNELS, bool)
        self._odom_pose = [0.0, 0.0, 0.0]  # x_m, y_m, yaw_rad of the latest message
        self._odom_vel = [0.0, 0.0]
        self._action_stage = np.zeros(spec.action_dim, np.float32)
        self._action_finite = np.empty(spec.action_dim, bool)
        self.reset()

    def reset(self) -> None:
        """Forget every message and tick (a new episode); counters restart. Nothing is reallocated."""
        for stats in self.stats.values():
            for f in fields(stats):
                setattr(stats, f.name, 0)
        for held in self._held.values():
            held.has, held.new, held.stamp_ns = False, False, 0
            held.stage.fill(0.0)
        self._imu_count = 0  # samples waiting for the next tick (<= K)
        self._imu_write = 0  # next ring slot
        self._imu_has, self._imu_stamp_ns = False, 0
        self._odom_has, self._odom_new, self._odom_stamp_ns = False, False, 0
        self._odom_ref: tuple[float, float, float] | None = None  # pose used at the last update
        self._action_has, self._action_stamp_ns = False, 0
        self._action_stage.fill(0.0)
        self._last_tick_ns: int | None = None
        for key, array in self.out.items():
            array.fill(self.max_age_s if key.endswith("_age") else 0.0)
        self.out["dt"].fill(1.0 / self.control_hz)

    # ----------------------------------------------------------------------------------------------------------
    # Input.

    def _admit(self, stats: ModalityStats, has: bool, held_ns: int, stamp_ns: int) -> bool:
        """Count a late message; False (counted stale) if it is not fresher than the held value."""
        if self._last_tick_ns is not None and stamp_ns <= self._last_tick_ns:
            stats.late += 1
        if has and stamp_ns <= held_ns:
            stats.stale += 1
            return False
        return True

    def _add_held(self, kind: str, stamp_ns: int, values: Any, scale: float = 1.0) -> bool:
        held = self._held.get(kind)
        if held is None:
            raise ValueError(f"the observation spec has no {kind!r} modality")
        stats = self.stats[kind]
        values = np.asarray(values)
        if values.shape != held.stage.shape or values.dtype.kind not in "fiu":
            stats.malformed += 1
            return False
        if values.dtype.kind == "f" and not np.isfinite(values, out=held.finite).all():
            stats.non_finite += 1
            return False
        if not self._admit(stats, held.has, held.stamp_ns, stamp_ns):
            return False
        if scale == 1.0:
            np.copyto(held.stage, values, casting="unsafe")
        else:  # uint16 depth in units of depth_scale_m: converted straight into the float32 stage
            np.multiply(values, scale, out=held.stage, casting="unsafe")
        held.has, held.new, held.stamp_ns = True, True, stamp_ns
        stats.accepted += 1
        return True

    def add_lidar(self, stamp_ns: int, ranges_m: np.ndarray) -> bool:
        """A scan stamped ``stamp_ns`` (ns): ``ranges_m`` (N,) metres. True if applied (else counted)."""
        return self._add_held("lidar", int(stamp_ns), ranges_m)

    def add_depth(self, stamp_ns: int, depth: np.ndarray, depth_scale_m: float = 1.0) -> bool:
        """A depth frame: ``depth`` (H, W), float metres or integer units of ``depth_scale_m`` (0 = no return)."""
        if not (math.isfinite(depth_scale_m) and depth_scale_m > 0):
            self.stats["depth"].malformed += 1
            return False
        return self._add_held("depth", int(stamp_ns), depth, float(depth_scale_m))

    def add_obs(self, stamp_ns: int, observation: np.ndarray) -> bool:
        """A gymnasium observation vector (D,)."""
        return self._add_held("obs", int(stamp_ns), observation)

    def add_imu(self, stamp_ns: int, accel_mps2: np.ndarray, gyro_radps: np.ndarray, sample_dt_s: float = 0.0) -> bool:
        """IMU samples: ``accel_mps2`` and ``gyro_radps`` (3,) for one sample or (k, 3) for k samples in time
        order, the last at ``stamp_ns`` and the others ``sample_dt_s`` apart. True if any sample was applied."""
        stats = self.stats.get("imu")
        if stats is None:
            raise ValueError("the observation spec has no 'imu' modality")
        stamp_ns = int(stamp_ns)
        accel, gyro = np.asarray(accel_mps2), np.asarray(gyro_radps)
        if (accel.shape != gyro.shape or accel.shape[-1:] != (3,) or accel.ndim not in (1, 2) or accel.size == 0
                or accel.dtype.kind not in "fiu" or gyro.dtype.kind not in "fiu"
                or not (math.isfinite(sample_dt_s) and sample_dt_s >= 0)):
            stats.malformed += 1
            return False
        accel, gyro = accel.reshape(-1, 3), gyro.reshape(-1, 3)
        n = accel.shape[0]
        sample, finite = self._imu_sample, self._imu_finite
        for i in range(n):  # checked in full before any sample is stored: a bad message leaves no trace
            sample[:3], sample[3:] = accel[i], gyro[i]
            if not np.isfinite(sample, out=finite).all():
                stats.non_finite += 1
                return False
        if not self._admit(stats, self._imu_has, self._imu_stamp_ns, stamp_ns):
            return False
        step_ns = int(round(sample_dt_s * _NS))
        k = self.spec.imu_samples
        newest = self._imu_stamp_ns
        for i in range(n):
            sample_ns = stamp_ns - (n - 1 - i) * step_ns
            if self._imu_has and sample_ns <= newest:
                continue  # the older part of a batch that overlaps samples already held
            slot = self._imu_ring[self._imu_write]
            slot[:3], slot[3:] = accel[i], gyro[i]
            self._imu_write = (self._imu_write + 1) % k
            if self._imu_count == k:
                stats.overflow += 1
            else:
                self._imu_count += 1
        self._imu_has, self._imu_stamp_ns = True, stamp_ns
        stats.accepted += 1
        return True

    def add_odom(self, stamp_ns: int, x_m: float, y_m: float, yaw_rad: float, v_mps: float, omega_radps: float) -> bool:
        """Wheel odometry: pose in the odometry frame (m, rad) and velocities (m/s, rad/s)."""
        stats = self.stats.get("odom")
        if stats is None:
            raise ValueError("the observation spec has no 'odom' modality")
        try:
            values = (float(x_m), float(y_m), float(yaw_rad), float(v_mps), float(omega_radps))
        except (TypeError, ValueError):
            stats.malformed += 1
            return False
        if not all(math.isfinite(v) for v in values):
            stats.non_finite += 1
            return False
        stamp_ns = int(stamp_ns)
        if not self._admit(stats, self._odom_has, self._odom_stamp_ns, stamp_ns):
            return False
        self._odom_pose[0], self._odom_pose[1], self._odom_pose[2] = values[0], values[1], values[2]
        self._odom_vel[0], self._odom_vel[1] = values[3], values[4]
        self._odom_has, self._odom_new, self._odom_stamp_ns = True, True, stamp_ns
        stats.accepted += 1
        return True

    def set_action(self, stamp_ns: int, action: np.ndarray) -> bool:
        """The action (A,) in effect from ``stamp_ns`` until the next one (env units; a base's (v, omega))."""
        stats = self.stats["action"]
        action = np.asarray(action)
        if action.shape != self._action_stage.shape or action.dtype.kind not in "fiu":
            stats.malformed += 1
            return False
        if action.dtype.kind == "f" and not np.isfinite(action, out=self._action_finite).all():
            stats.non_finite += 1
            return False
        stamp_ns = int(stamp_ns)
        if not self._admit(stats, self._action_has, self._action_stamp_ns, stamp_ns):
            return False
        np.copyto(self._action_stage, action, casting="unsafe")
        self._action_has, self._action_stamp_ns = True, stamp_ns
        stats.accepted += 1
        return True

    def set_command(self, stamp_ns: int, v_mps: float, omega_radps: float, stop: bool = False) -> bool:
        """A base velocity command (``actuator.cmd``); ``stop`` commands (0, 0)."""
        stats = self.stats["action"]
        if self.spec.action_dim != 2:
            raise ValueError(f"set_command needs action_dim 2 (v, omega); the spec has {self.spec.action_dim}")
        try:
            v, omega = (0.0, 0.0) if stop else (float(v_mps), float(omega_radps))
        except (TypeError, ValueError):
            stats.malformed += 1
            return False
        if not (math.isfinite(v) and math.isfinite(omega)):
            stats.non_finite += 1
            return False
        stamp_ns = int(stamp_ns)
        if not self._admit(stats, self._action_has, self._action_stamp_ns, stamp_ns):
            return False
        self._action_stage[0], self._action_stage[1] = v, omega
        self._action_has, self._action_stamp_ns = True, stamp_ns
        stats.accepted += 1
        return True

    def add(self, kind: str, stamp_ns: int, data: Mapping[str, Any]) -> bool:
        """Apply one ONI message's ``data`` map (field names of ``sensor.*``, ``env.observation``,
        ``actuator.cmd`` or ``env.action``) to the modality ``kind`` (``spec.kind_of_topic[topic]``).

        A map missing a required field or holding one of the wrong type is counted as malformed.
        """
        stats = self.stats.get(kind)
        if stats is None:
            raise ValueError(f"{kind!r} is not a modality of this spec; known: {sorted(self.stats)}")
        try:
            if kind == "lidar":
                return self.add_lidar(stamp_ns, data["ranges_m"])
            if kind == "depth":
                return self.add_depth(stamp_ns, data["depth"], float(data.get("depth_scale_m", 1.0)))
            if kind == "imu":
                return self.add_imu(stamp_ns, data["accel_mps2"], data["gyro_radps"], float(data.get("sample_dt_s", 0.0)))
            if kind == "odom":
                return self.add_odom(stamp_ns, data["x_m"], data["y_m"], data["yaw_rad"], data["v_mps"], data["omega_radps"])
            if kind == "obs":
                return self.add_obs(stamp_ns, data["observation"])
            if "action" in data:  # env.action
                return self.set_action(stamp_ns, data["action"])
            return self.set_command(stamp_ns, data["v_mps"], data["omega_radps"], bool(data.get("stop", False)))
        except (KeyError, TypeError, ValueError):
            stats.malformed += 1
            return False

    # ----------------------------------------------------------------------------------------------------------
    # The tick.

    def _age(self, has: bool, stamp_ns: int, t_ns: int) -> float:
        if not has:
            return self.max_age_s
        return min(max(t_ns - stamp_ns, 0), self._max_age_ns) / _NS

    def tick(self, t_ns: int) -> dict[str, np.ndarray]:
        """Assemble the observation at tick ``t_ns`` (ns, strictly increasing) and return :attr:`out`.

        The arrays are overwritten by the next call; copy what must outlive it.
        """
        t_ns = int(t_ns)
        out = self.out
        if self._last_tick_ns is not None:
            if t_ns <= self._last_tick_ns:
                raise ValueError(f"tick times must increase: {t_ns} ns after {self._last_tick_ns} ns")
            out["dt"][()] = (t_ns - self._last_tick_ns) / _NS
        for held in self._held.values():
            if held.new:
                np.copyto(held.value, held.stage)
                held.mask[()] = 1.0
                held.new = False
            else:
                held.mask[()] = 0.0
            held.age[()] = self._age(held.has, held.stamp_ns, t_ns)
        if self.spec.imu_samples:
            self._tick_imu(t_ns)
        if self.spec.odom:
            self._tick_odom(t_ns)
        action = out["action"]
        if self._action_has and t_ns - self._action_stamp_ns <= self.action_timeout_ns:
            np.copyto(action, self._action_stage)
        else:
            action.fill(0.0)
        self._last_tick_ns = t_ns
        return out

    def _tick_imu(self, t_ns: int) -> None:
        value, mask = self.out["imu"], self.out["imu_mask"]
        k, n = self.spec.imu_samples, self._imu_count
        value.fill(0.0)
        mask.fill(0.0)
        first = (self._imu_write - n) % k
        for i in range(n):  # oldest first: the ring's n newest slots, unrolled
            value[i] = self._imu_ring[(first + i) % k]
        mask[:n] = 1.0
        self._imu_count = 0
        self.out["imu_age"][()] = self._age(self._imu_has, self._imu_stamp_ns, t_ns)

    def _tick_odom(self, t_ns: int) -> None:
        value = self.out["odom"]
        if self._odom_new:
            x, y, yaw = self._odom_pose
            value[0], value[1] = self._odom_vel
            ref = self._odom_ref
            if ref is None:  # the first message: no earlier pose to move from
                value[2:] = 0.0
            else:
                # The motion since the previous pose, in the robot frame of that pose: invariant to where the
                # odometry frame's origin is and to the robot's heading in it.
                dxw, dyw = x - ref[0], y - ref[1]
                c, s = math.cos(ref[2]), math.sin(ref[2])
                value[2] = c * dxw + s * dyw
                value[3] = -s * dxw + c * dyw
                value[4] = (yaw - ref[2] + math.pi) % (2.0 * math.pi) - math.pi
            self._odom_ref = (x, y, yaw)
            self.out["odom_mask"][()] = 1.0
            self._odom_new = False
        else:
            value[2:] = 0.0
            self.out["odom_mask"][()] = 0.0
        self.out["odom_age"][()] = self._age(self._odom_has, self._odom_stamp_ns, t_ns)


@dataclass(frozen=True)
class NormStats:
    """Normalization statistics: per-channel mean and std of each key, stored with a model.

    ``mean[key]`` and ``std[key]`` are float32 arrays over the key's last axis (``imu``: (6,), ``odom``: (5,),
    ``action``: (A,), ``obs``: (D,)) or of shape (1,) for keys normalized as one channel (``lidar``, ``depth``),
    so ``(x - mean) / std`` broadcasts over any leading axes. ``count[key]`` is how many values were seen.
    """

    mean: Mapping[str, np.ndarray]
    std: Mapping[str, np.ndarray]
    count: Mapping[str, int]

    def __post_init__(self) -> None:
        if set(self.mean) != set(self.std) or set(self.mean) != set(self.count):
            raise ValueError(
                f"mean, std and count must have the same keys: {sorted(self.mean)}, {sorted(self.std)}, {sorted(self.count)}"
            )
        for key in self.mean:
            if np.shape(self.mean[key]) != np.shape(self.std[key]) or not np.all(np.asarray(self.std[key]) > 0):
                raise ValueError(f"stats {key!r}: mean and std need the same shape and std > 0")

    def normalize(self, key: str, x: np.ndarray) -> np.ndarray:
        """``(x - mean) / std`` for ``key``, broadcast over leading axes."""
        return (x - self.mean[key]) / self.std[key]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{key: {"mean": [...], "std": [...], "count": n}}``."""
        return {
            key: {
                "mean": np.asarray(self.mean[key]).tolist(),
                "std": np.asarray(self.std[key]).tolist(),
                "count": int(self.count[key]),
            }
            for key in sorted(self.mean)
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Mapping[str, Any]]) -> "NormStats":
        """The inverse of :meth:`to_dict`."""
        mean = {k: np.asarray(v["mean"], np.float32) for k, v in raw.items()}
        std = {k: np.asarray(v["std"], np.float32) for k, v in raw.items()}
        count = {k: int(v["count"]) for k, v in raw.items()}
        return cls(mean, std, count)
