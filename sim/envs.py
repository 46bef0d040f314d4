"""Gymnasium environments over the simulator. Importing this module registers them; ``oni/Hallway-v0`` is a
TurtleBot 4 class robot driving procedural, cluttered hallways (:class:`HallwayEnv`).

Example::

    import gymnasium
    import numpy as np
    import sim.envs  # registers the oni/ ids (or: gymnasium.make("sim.envs:oni/Hallway-v0"))

    env = gymnasium.make("oni/Hallway-v0")                     # configs/hallway.yaml, 50 Hz control
    obs, info = env.reset(seed=3)                              # the hallway of HallwayParams(seed=3)
    obs, reward, terminated, truncated, info = env.step(np.array([0.3, 0.0], dtype=np.float32))
    obs["lidar_ranges_m"].shape                                # (360,)
    info["readings"]                                           # every sensor reading of the step, for loggers

**Action**: ``[v_mps, omega_radps]`` float32 in physical units, bounded by the robot's ``max_v_mps`` and
``max_omega_radps`` (both signs). Each :meth:`HallwayEnv.step` commands it and advances the sim
``1 / control_hz`` s. Out-of-range actions are clipped and non-finite ones rejected (the base stops) by the
simulator, which counts both (``info["stats"]``); nothing invalid reaches MuJoCo.

**Observation**: a flat ``Dict`` (flat so that common RL libraries take it), float32 everywhere, holding per
sensor of the robot description (keys prefixed by the sensor's name) its latest data and its age:

=========================  ===========  =========================================================================
key (TurtleBot 4 names)    shape        content
=========================  ===========  =========================================================================
``lidar_ranges_m``         (N,)         latest scan (m) in ``[range_min_m, range_max_m]``; no return = max
``depth_z_m``              (H, W)       latest z-depth image (m) in ``[0, range_max_m]``, 0 = no return
``imu_accel_mps2``         (K, 3)       the K latest IMU samples, oldest first: specific force (m/s^2)
``imu_gyro_radps``         (K, 3)       the same samples' angular velocity (rad/s)
``odom_state``             (5,)         latest odometry ``[x_m, y_m, yaw_rad, v_mps, omega_radps]``
``<sensor>_age_s``         (1,)         time since that sensor's latest sample (s)
=========================  ===========  =========================================================================

``K = ceil(imu_rate / control_hz)`` (4 at 200 Hz and 50 Hz): every IMU sample reaches the policy once, as the
architecture's encoder takes them. At reset the window holds copies of the first sample. Depth noise can
carry a pixel slightly past ``range_max_m``; the observation clips it to the sensor's range (the readings
in ``info`` are untouched).

**Reward**: ``progress_reward_per_m`` x the metres of progress along the corridor centreline this step (the
arc length of the base's nearest centreline point; negative when driving back), minus ``collision_penalty``
per collision (contact onset) this step. **Terminated** when the base centre is within ``goal_radius_m`` of
the goal; **truncated** after ``max_episode_s`` of sim time.

**Seeds**: an episode seed ``e`` seeds the sensor noise (``RobotSim.reset(e)``) and, with the default
``world_seeds: episode``, the world (``HallwayParams(seed=e)``), so each episode is a new hallway and
``reset(seed=e)`` always replays the same one. ``e`` is the ``seed`` given to ``reset``, else drawn from the
env's ``np_random`` (seeded by the last seeded reset, as gymnasium specifies). ``world_seeds: fixed`` keeps the
preset's ``world.seed`` for every episode; ``reset(options={"world_seed": w})`` picks the world of one episode.
A seed whose world cannot be generated raises :class:`sim.hallway.ImpossibleWorld`.

**Info** (reset and step): ``readings`` (list of :class:`~sim.sensors.Reading`, every reading stamped in the
step, in time order), ``ground_truth`` (:class:`~sim.robot_sim.GroundTruth`), ``progress_m`` (centreline arc
length reached), ``goal_distance_m``, ``stats`` (the sim's command and collision counters this episode),
``episode_seed``, ``world_seed``. Ground truth is for rewards and evaluation, never a model input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

import gymnasium
import numpy as np
from gymnasium import spaces

from robots import robot_path
from robots.description import (
    DescriptionError,
    RobotDescription,
    SensorDescription,
    build,
    check_choice,
    check_int,
    number_field,
)
from sim.config import SimConfig, SimSettings, sim_config_from_dict
from sim.hallway import HallwayParams, generate_hallway
from sim.robot_sim import GroundTruth, RobotSim
from sim.sensors import Reading

__all__ = [
    "HALLWAY_ID",
    "HallwayEnv",
    "HallwayEnvConfig",
    "HallwayEnvSettings",
    "default_config_path",
    "hallway_env_config",
]

#: The gymnasium id of the hallway env (namespace ``oni``).
HALLWAY_ID = "oni/Hallway-v0"
#: World seed policies: a new world per episode seed, or the preset's world for every episode.
WORLD_SEEDS = ("episode", "fixed")
_MAX_SEED = 2**63 - 1
_NS_PER_S = 1_000_000_000


@dataclass(frozen=True)
class HallwayEnvSettings:
    """How ``oni/Hallway-v0`` runs: the ``env`` section of a preset (every field optional).

    ``control_hz``: actions per simulated second; ``1 / control_hz`` must be a whole number of physics steps.
    ``max_episode_s``: sim time (s) after which an episode is truncated. ``world_seeds``: ``episode`` (each
    episode's world from its episode seed) or ``fixed`` (the preset's ``world.seed`` always).
    ``goal_radius_m``: distance from the goal (m) at which the episode terminates. ``progress_reward_per_m``:
    reward per metre of centreline progress. ``collision_penalty``: reward subtracted per collision.
    """

    control_hz: float = 50.0
    max_episode_s: float = 120.0
    world_seeds: str = "episode"
    goal_radius_m: float = 0.5
    progress_reward_per_m: float = 1.0
    collision_penalty: float = 1.0

    def __post_init__(self) -> None:
        number_field(self, "control_hz", 0, 1000, lo_open=True)
        number_field(self, "max_episode_s", 0, 1e6, lo_open=True)
        check_choice("world_seeds", self.world_seeds, WORLD_SEEDS)
        number_field(self, "goal_radius_m", 0, 100, lo_open=True)
        number_field(self, "progress_reward_per_m", 0, 1e6)
        number_field(self, "collision_penalty", 0, 1e6)

    @property
    def max_episode_steps(self) -> int:
        """Steps after which an episode is truncated (at least 1)."""
        return max(1, round(self.max_episode_s * self.control_hz))


@dataclass(frozen=True)
class HallwayEnvConfig:
    """Everything a :class:`HallwayEnv` is built from: the simulator's part of the preset and the env settings."""

    sim: SimConfig
    env: HallwayEnvSettings


def default_config_path() -> Path | None:
    """The shipped preset ``configs/hallway.yaml`` of a source checkout (the package is installed editable),
    or ``None`` where it is absent (an installed wheel): then the built-in defaults apply, which equal it."""
    path = Path(__file__).resolve().parents[1] / "configs" / "hallway.yaml"
    return path if path.is_file() else None


def hallway_env_config(
    config_path: str | Path | None = None,
    *,
    world: HallwayParams | None = None,
    sim: SimSettings | None = None,
    **env_settings: Any,
) -> HallwayEnvConfig:
    """The env's config: the preset at ``config_path`` (default :func:`default_config_path`; without one, the
    TurtleBot 4 with default :class:`HallwayParams` and :class:`SimSettings`), with ``world``, ``sim`` and
    the :class:`HallwayEnvSettings` fields in ``env_settings`` replacing the preset's. Errors name the field
    (``env.control_hz = 0: ...``)."""
    path = Path(config_path) if config_path is not None else default_config_path()
    if path is None:
        raw: Mapping[str, Any] = {}
        sim_config = SimConfig(robot_path("turtlebot4"), HallwayParams(), SimSettings())
    else:
        raw = _read_preset(path)
        sim_config = sim_config_from_dict(raw, path.parent)
    section = raw.get("env") or {}
    if not isinstance(section, Mapping):
        raise DescriptionError("env", section, "must be a mapping of HallwayEnvSettings fields")
    settings = build(HallwayEnvSettings, {**section, **env_settings}, "env")
    if world is not None:
        sim_config = replace(sim_config, world=world)
    if sim is not None:
        sim_config = replace(sim_config, sim=sim)
    return HallwayEnvConfig(sim_config, settings)


def _read_preset(path: Path) -> Mapping[str, Any]:
    try:
        import yaml
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError("reading presets needs PyYAML: pip install 'oni-worldmodel[sim]'") from exc
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, Mapping):
        raise DescriptionError("<preset>", raw, f"{path} must hold a mapping with keys 'robot', 'world', 'sim', 'env'")
    return raw


class HallwayEnv(gymnasium.Env[dict[str, np.ndarray], np.ndarray]):
    """``oni/Hallway-v0``: drive a robot from the start to the goal of a procedural hallway (module docstring).

    ``config_path``: a preset YAML (robot, world, sim and the optional ``env`` section); ``world`` and ``sim``
    replace its world parameters and simulator settings; ``settings`` are :class:`HallwayEnvSettings` fields
    (``control_hz=25``, ``world_seeds="fixed"``, ...). ``robot_sim`` is the current episode's simulator.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        config_path: str | Path | None = None,
        *,
        world: HallwayParams | None = None,
        sim: SimSettings | None = None,
        **settings: Any,
    ) -> None:
        self.config = hallway_env_config(config_path, world=world, sim=sim, **settings)
        self.robot = self.config.sim.load_robot()
        env = self.config.env
        physics_hz = self.config.sim.sim.physics_hz
        ratio = physics_hz / env.control_hz
        if abs(ratio - round(ratio)) > 1e-9:
            rates = ", ".join(str(h) for h in range(10, 201) if physics_hz % h == 0)
            raise DescriptionError(
                "env.control_hz", env.control_hz,
                f"must divide sim.physics_hz = {physics_hz} into whole physics steps (e.g. {rates})",
            )
        #: Sim time one step advances (s): a whole number of physics steps.
        self.dt_s = round(ratio) / physics_hz
        self.max_episode_steps = env.max_episode_steps
        base = self.robot.base
        high = np.array([_float32_within(base.max_v_mps), _float32_within(base.max_omega_radps)], dtype=np.float32)
        self.action_space = spaces.Box(-high, high, dtype=np.float32)
        self._obs = _ObservationBuffers(self.robot, env.control_hz)
        self.observation_space = self._obs.space
        self.robot_sim: RobotSim | None = None
        self._world_seed: int | None = None
        self._centreline: _Centreline | None = None
        self._goal_xy = (0.0, 0.0)
        self._episode_seed = 0
        self._steps = 0
        self._arc_m = 0.0
        self._collisions = 0

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start an episode (seeds: module docstring). ``options``: ``{"world_seed": int}`` at most."""
        super().reset(seed=seed)
        options = dict(options or {})
        world_seed = options.pop("world_seed", None)
        if options:
            raise ValueError(f"unknown reset options {sorted(options)}; known: ['world_seed']")
        episode_seed = seed if seed is not None else int(self.np_random.integers(0, _MAX_SEED, endpoint=True))
        if world_seed is not None:
            world_seed = check_int("options.world_seed", world_seed, 0, _MAX_SEED)
        elif self.config.env.world_seeds == "episode":
            world_seed = episode_seed
        else:
            world_seed = self.config.sim.world.seed
        if world_seed != self._world_seed or self.robot_sim is None:
            world = generate_hallway(replace(self.config.sim.world, seed=world_seed), self.robot.base.radius_m)
            # The compiled model is kept while the world is: a fixed world costs one compilation per env.
            self.robot_sim = RobotSim(self.robot, world, self.config.sim.sim, seed=episode_seed)
            self._centreline = _Centreline(world.centerline_xy_m)
            self._goal_xy = world.goal_xy_m
            self._world_seed = world_seed
        readings = self.robot_sim.reset(episode_seed)
        self._episode_seed = episode_seed
        self._steps = 0
        self._obs.reset()
        self._obs.put(readings)
        truth = self.robot_sim.ground_truth()
        self._arc_m = self._centreline.arc_length_m(truth.x_m, truth.y_m)
        self._collisions = truth.collisions
        return self._obs.observation(self.robot_sim.sim_time_ns), self._info(readings, truth)

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Command ``action`` = ``[v_mps, omega_radps]`` (shape (2,)) and advance ``dt_s``."""
        sim = self.robot_sim
        if sim is None:
            raise RuntimeError("call reset() before step()")
        command = np.asarray(action)
        if command.shape != (2,):
            raise ValueError(f"action must have shape (2,) = [v_mps, omega_radps], got shape {command.shape}")
        sim.set_command(command[0], command[1])
        readings = sim.advance(self.dt_s)
        self._steps += 1
        self._obs.put(readings)
        truth = sim.ground_truth()
        arc = self._centreline.arc_length_m(truth.x_m, truth.y_m)
        env = self.config.env
        progress = arc - self._arc_m
        reward = env.progress_reward_per_m * progress - env.collision_penalty * (truth.collisions - self._collisions)
        self._arc_m = arc
        self._collisions = truth.collisions
        terminated = self._goal_distance_m(truth) <= env.goal_radius_m
        truncated = not terminated and self._steps >= self.max_episode_steps
        return self._obs.observation(sim.sim_time_ns), float(reward), terminated, truncated, self._info(readings, truth)

    def _goal_distance_m(self, truth: GroundTruth) -> float:
        return math.hypot(truth.x_m - self._goal_xy[0], truth.y_m - self._goal_xy[1])

    def _info(self, readings: list[Reading], truth: GroundTruth) -> dict[str, Any]:
        stats = self.robot_sim.stats
        return {
            "readings": readings,
            "ground_truth": truth,
            "progress_m": self._arc_m,
            "goal_distance_m": self._goal_distance_m(truth),
            # Counters only: the wall-time fields of SimStats differ between identical runs.
            "stats": {
                "commands": stats.commands,
                "clipped_commands": stats.clipped_commands,
                "rejected_commands": stats.rejected_commands,
                "command_timeouts": stats.command_timeouts,
                "collisions": stats.collisions,
            },
            "episode_seed": self._episode_seed,
            "world_seed": self._world_seed,
        }


def _float32_within(limit: float) -> np.float32:
    """The float32 nearest ``limit`` that is not larger in magnitude: a float32 bound every value of which the
    simulator's float64 limit admits (so an in-space action is never counted as clipped)."""
    value = np.float32(limit)
    if abs(float(value)) > abs(limit):
        value = np.nextafter(value, np.float32(0.0))
    return value


class _Centreline:
    """Arc length (m) along a polyline, the corridor's centreline, of the polyline point nearest a position.

    Within the corridor the nearest segment is the one the robot is in: the hallway generator keeps
    non-adjacent segments apart by more than their half widths.
    """

    def __init__(self, points_xy_m: np.ndarray) -> None:
        points = np.asarray(points_xy_m, dtype=np.float64)  # (K, 2)
        seg = np.diff(points, axis=0)
        length = np.hypot(seg[:, 0], seg[:, 1])
        keep = length > 0
        self._start = points[:-1][keep]  # (S, 2)
        self._length = length[keep]  # (S,)
        self._dir = seg[keep] / self._length[:, None]  # (S, 2) unit
        self._s0 = np.concatenate(([0.0], np.cumsum(self._length)[:-1]))  # (S,) arc length at each start
        self._point = np.empty(2)
        self._rel = np.empty_like(self._start)
        self._t = np.empty_like(self._length)
        self._off = np.empty_like(self._start)
        self._d2 = np.empty_like(self._length)

    def arc_length_m(self, x_m: float, y_m: float) -> float:
        if not len(self._length):
            return 0.0
        self._point[0], self._point[1] = x_m, y_m
        rel, t, off = self._rel, self._t, self._off
        np.subtract(self._point, self._start, out=rel)
        np.einsum("ij,ij->i", rel, self._dir, out=t)
        np.clip(t, 0.0, self._length, out=t)
        np.multiply(self._dir, t[:, None], out=off)
        np.subtract(rel, off, out=off)
        np.einsum("ij,ij->i", off, off, out=self._d2)
        k = int(np.argmin(self._d2))
        return float(self._s0[k] + t[k])


class _Slot:
    """One sensor's part of the observation: its spaces, its buffers, and the latest sample's stamp."""

    def __init__(self, desc: SensorDescription) -> None:
        self.age_key = f"{desc.name}_age_s"
        self.stamp_ns = 0
        self.spaces: dict[str, spaces.Box] = {}

    def reset(self) -> None:
        self.stamp_ns = 0

    def put(self, data: Mapping[str, Any]) -> None:
        """Take one reading's ``data`` map (the topic's ONI fields)."""
        raise NotImplementedError

    def write(self, obs: dict[str, np.ndarray]) -> None:
        """Add fresh copies of this sensor's arrays to ``obs``."""
        raise NotImplementedError


class _LidarSlot(_Slot):
    def __init__(self, desc: SensorDescription) -> None:
        super().__init__(desc)
        p = desc.params
        self._key = f"{desc.name}_ranges_m"
        self.spaces[self._key] = spaces.Box(p.range_min_m, p.range_max_m, (p.beams,), np.float32)
        self._ranges = np.full(p.beams, p.range_max_m, dtype=np.float32)

    def put(self, data: Mapping[str, Any]) -> None:
        np.copyto(self._ranges, data["ranges_m"])

    def write(self, obs: dict[str, np.ndarray]) -> None:
        obs[self._key] = self._ranges.copy()


class _DepthSlot(_Slot):
    def __init__(self, desc: SensorDescription) -> None:
        super().__init__(desc)
        p = desc.params
        self._key = f"{desc.name}_z_m"
        self._max = np.float32(p.range_max_m)
        self.spaces[self._key] = spaces.Box(0.0, p.range_max_m, (p.height, p.width), np.float32)
        self._depth = np.zeros((p.height, p.width), dtype=np.float32)

    def put(self, data: Mapping[str, Any]) -> None:
        np.clip(data["depth"], np.float32(0.0), self._max, out=self._depth)

    def write(self, obs: dict[str, np.ndarray]) -> None:
        obs[self._key] = self._depth.copy()


class _ImuSlot(_Slot):
    """The K latest IMU samples, in a ring; written out oldest first."""

    def __init__(self, desc: SensorDescription, window: int) -> None:
        super().__init__(desc)
        p = desc.params
        self._accel_key = f"{desc.name}_accel_mps2"
        self._gyro_key = f"{desc.name}_gyro_radps"
        self.spaces[self._accel_key] = spaces.Box(-p.accel_range_mps2, p.accel_range_mps2, (window, 3), np.float32)
        self.spaces[self._gyro_key] = spaces.Box(-p.gyro_range_radps, p.gyro_range_radps, (window, 3), np.float32)
        self._accel = np.zeros((window, 3), dtype=np.float32)
        self._gyro = np.zeros((window, 3), dtype=np.float32)
        # Row orders oldest-first for each ring position, built once so that write() only gathers.
        self._orders = [np.roll(np.arange(window), -k) for k in range(window)]
        self._next = 0
        self._empty = True

    def reset(self) -> None:
        super().reset()
        self._next = 0
        self._empty = True

    def put(self, data: Mapping[str, Any]) -> None:
        if self._empty:
            self._accel[:] = data["accel_mps2"]
            self._gyro[:] = data["gyro_radps"]
            self._empty = False
            return
        k = self._next
        self._accel[k] = data["accel_mps2"]
        self._gyro[k] = data["gyro_radps"]
        self._next = (k + 1) % len(self._accel)

    def write(self, obs: dict[str, np.ndarray]) -> None:
        order = self._orders[self._next]
        obs[self._accel_key] = self._accel[order]
        obs[self._gyro_key] = self._gyro[order]


class _OdomSlot(_Slot):
    _FIELDS = ("x_m", "y_m", "yaw_rad", "v_mps", "omega_radps")

    def __init__(self, desc: SensorDescription) -> None:
        super().__init__(desc)
        self._key = f"{desc.name}_state"
        inf = np.inf
        self.spaces[self._key] = spaces.Box(
            np.array([-inf, -inf, -np.pi, -inf, -inf], dtype=np.float32),
            np.array([inf, inf, np.pi, inf, inf], dtype=np.float32),
            (5,),
            np.float32,
        )
        self._state = np.zeros(5, dtype=np.float32)

    def put(self, data: Mapping[str, Any]) -> None:
        state = self._state
        for i, name in enumerate(self._FIELDS):
            state[i] = data[name]

    def write(self, obs: dict[str, np.ndarray]) -> None:
        obs[self._key] = self._state.copy()


class _ObservationBuffers:
    """The observation ``Dict`` of a robot: its space, and per sensor the latest data routed in by topic."""

    def __init__(self, robot: RobotDescription, control_hz: float) -> None:
        self._slots: dict[str, _Slot] = {}
        items: dict[str, spaces.Box] = {}
        for desc in robot.sensors:
            if desc.kind == "lidar":
                slot: _Slot = _LidarSlot(desc)
            elif desc.kind == "depth":
                slot = _DepthSlot(desc)
            elif desc.kind == "imu":
                slot = _ImuSlot(desc, math.ceil(desc.rate_hz / control_hz - 1e-9))
            else:
                slot = _OdomSlot(desc)
            self._slots[desc.topic] = slot
            items.update(slot.spaces)
            items[slot.age_key] = spaces.Box(0.0, np.inf, (1,), np.float32)
        self.space = spaces.Dict(items)
        self._ages = np.zeros(len(self._slots), dtype=np.float32)

    def reset(self) -> None:
        for slot in self._slots.values():
            slot.reset()

    def put(self, readings: list[Reading]) -> None:
        slots = self._slots
        for reading in readings:
            slot = slots[reading.topic]
            slot.put(reading.data)
            slot.stamp_ns = reading.stamp_ns

    def observation(self, now_ns: int) -> dict[str, np.ndarray]:
        """Fresh arrays (the caller keeps them) in the order of the space's keys."""
        obs: dict[str, np.ndarray] = {}
        for i, slot in enumerate(self._slots.values()):
            slot.write(obs)
            self._ages[i] = (now_ns - slot.stamp_ns) / _NS_PER_S
            obs[slot.age_key] = self._ages[i : i + 1].copy()
        return {key: obs[key] for key in self.space.keys()}


gymnasium.register(id=HALLWAY_ID, entry_point="sim.envs:HallwayEnv")
