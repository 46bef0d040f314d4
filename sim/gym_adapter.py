"""Any gymnasium environment as an ONI source, so the pipeline (collection, logs, training, evaluation) also runs
on the public MuJoCo benchmarks: HalfCheetah-v5, Hopper-v5, Walker2d-v5, Ant-v5, or any env with Box spaces.

:class:`GymAdapter` drives the env the way :class:`sim.robot_sim.RobotSim` drives the robot: ``reset(seed)``
returns readings, an action is held until the next one, ``advance(dt_s)`` returns every reading stamped in
``(t, t + dt_s]``, and ``ground_truth()`` gives the true state for evaluation. Example::

    adapter = GymAdapter(load_adapter_config("configs/hopper.yaml"))
    readings = adapter.reset()                  # [env.observation at t = 0]
    readings = adapter.step(np.zeros(3))        # [env.action at t, env.observation at t + dt]
    adapter.done                                # the episode ended (terminated or truncated): reset next

The mapping onto ONI:

- topic ``env.observation`` (schema ``env.observation`` v1), one reading per env step plus one at reset:
  ``observation`` float32 (D,), the env's observation flattened; ``reward``, the reward of the transition into
  it (0.0 at reset); ``terminated`` and ``truncated`` as gymnasium returns them; ``episode_step`` (0 at reset).
- topic ``env.action`` (schema ``env.action`` v1), one reading per :meth:`GymAdapter.set_action`: ``action``
  float32 (A,) as applied, ``clipped`` and ``rejected`` flags.
- clock: ``stamp_ns = episode_step x round(env.unwrapped.dt x 1e9)``, sim time since reset (as RobotSim's).
  An action is stamped when it takes effect, so it precedes the observation it leads to.
- ``frame_id``: the env id (the vector has no single coordinate frame; the id keeps benchmarks apart in logs).

Actions: finite values outside the action space are clipped into it (``stats.clipped_actions``); non-finite,
non-numeric or wrongly shaped ones are rejected (``stats.rejected_actions``) and the safe action applied
instead: zero (no torque for the MuJoCo benchmarks) clipped into the bounds. Nothing invalid reaches the env.
Control rate: each :meth:`GymAdapter.step` holds its action for ``env rate / control_hz`` env steps (action
repeat; 1 by default).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import gymnasium
import numpy as np
from gymnasium import spaces

from robots.description import (
    DescriptionError,
    build,
    check_int,
    check_name,
    number_field,
)
from sim.sensors import Reading

__all__ = [
    "ACTION_TOPIC",
    "OBSERVATION_TOPIC",
    "AdapterStats",
    "EnvState",
    "GymAdapter",
    "GymAdapterConfig",
    "adapter_config_from_dict",
    "load_adapter_config",
]

#: ONI topics (and schema names) of the adapter's readings.
OBSERVATION_TOPIC = "env.observation"
ACTION_TOPIC = "env.action"
_NS_PER_S = 1_000_000_000


@dataclass(frozen=True)
class GymAdapterConfig:
    """Which env to run and how: the ``gym`` section of a preset such as ``configs/hopper.yaml``.

    ``env_id``: a registered gymnasium id. ``env_kwargs``: keyword arguments for ``gymnasium.make`` (e.g.
    ``frame_skip``, reward weights); not to be mutated. ``control_hz``: actions per simulated second; the env's
    rate (``1 / env.unwrapped.dt``) must be a whole multiple of it; ``None`` is the env's rate.
    ``max_episode_steps``: env steps before truncation; ``None`` keeps the id's registered limit. ``seed``: the
    first episode's seed, from which later episodes' seeds are drawn.
    """

    env_id: str
    env_kwargs: Mapping[str, Any] = field(default_factory=dict)
    control_hz: float | None = None
    max_episode_steps: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        check_name("env_id", self.env_id)
        if not isinstance(self.env_kwargs, Mapping) or not all(isinstance(k, str) for k in self.env_kwargs):
            raise DescriptionError(
                "env_kwargs", self.env_kwargs, "must be a mapping of gymnasium.make keyword arguments"
            )
        object.__setattr__(self, "env_kwargs", dict(self.env_kwargs))
        if self.control_hz is not None:
            number_field(self, "control_hz", 0, 100_000, lo_open=True)
        if self.max_episode_steps is not None:
            check_int("max_episode_steps", self.max_episode_steps, 1, 10**9)
        check_int("seed", self.seed, 0, 2**63 - 1)


def adapter_config_from_dict(raw: Mapping[str, Any]) -> GymAdapterConfig:
    """:class:`GymAdapterConfig` from a parsed preset's ``gym`` section; errors name the field (``gym.seed``)."""
    if not isinstance(raw, Mapping) or "gym" not in raw:
        raise DescriptionError("gym", None, "a gym adapter preset needs a 'gym' section with at least env_id")
    return build(GymAdapterConfig, raw["gym"], "gym")


def load_adapter_config(path: str | Path) -> GymAdapterConfig:
    """Read the ``gym`` section of a preset YAML file (``configs/halfcheetah.yaml`` ...)."""
    try:
        import yaml
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError("reading presets needs PyYAML: pip install 'oni-worldmodel[sim]'") from exc
    return adapter_config_from_dict(yaml.safe_load(Path(path).read_text()))


@dataclass
class AdapterStats:
    """Counters since the last reset: env ``steps``, ``actions`` set, of which ``clipped_actions`` (finite, out of
    the space) and ``rejected_actions`` (non-finite or malformed: the safe action was applied), and ``readings``
    per topic."""

    steps: int = 0
    actions: int = 0
    clipped_actions: int = 0
    rejected_actions: int = 0
    readings: dict[str, int] = field(default_factory=lambda: {OBSERVATION_TOPIC: 0, ACTION_TOPIC: 0})


@dataclass(frozen=True)
class EnvState:
    """The env's true state at ``stamp_ns``, the analogue of :class:`sim.robot_sim.GroundTruth`: for evaluation,
    never a model input.

    ``qpos`` (nq,) and ``qvel`` (nv,) are copies of MuJoCo's generalised positions and velocities (``None`` for
    an env without MuJoCo data); ``episode_return`` sums the rewards since reset; ``info`` is the info of the
    last reset or step (the benchmarks' ``x_position``, reward terms, ...).
    """

    stamp_ns: int
    episode_seed: int
    episode_step: int
    episode_return: float
    qpos: np.ndarray | None
    qvel: np.ndarray | None
    info: dict[str, Any]


class GymAdapter:
    """A gymnasium env (built from ``config``, or from an id with defaults) run as an ONI source (module docstring).

    ``seed`` replaces ``config.seed``: the first :meth:`reset` without a seed uses it, later ones draw the next
    episode seed from a stream derived from it, so a run is reproducible (as with RobotSim). ``env`` is the
    gymnasium env (with gymnasium's wrappers, time limit included); step it only through the adapter.
    """

    def __init__(self, config: GymAdapterConfig | str, seed: int | None = None) -> None:
        self.config = GymAdapterConfig(config) if isinstance(config, str) else config
        cfg = self.config
        self.env = gymnasium.make(cfg.env_id, max_episode_steps=cfg.max_episode_steps, **cfg.env_kwargs)
        obs_space, act_space = self.env.observation_space, self.env.action_space
        if not (isinstance(obs_space, spaces.Box) and isinstance(act_space, spaces.Box) and len(act_space.shape) == 1):
            raise DescriptionError(
                "gym.env_id", cfg.env_id,
                f"needs a Box observation space and a 1-D Box action space; it has {obs_space} and {act_space}",
            )
        dt = getattr(self.env.unwrapped, "dt", None)
        if not isinstance(dt, (int, float)) or not dt > 0:
            raise DescriptionError("gym.env_id", cfg.env_id, "needs a step duration env.unwrapped.dt > 0 (s)")
        #: Sim time of one env step (s), and the same in integer ns (the stamp increment).
        self.env_dt_s = float(dt)
        self.env_dt_ns = round(self.env_dt_s * _NS_PER_S)
        repeat = 1.0 if cfg.control_hz is None else 1.0 / (cfg.control_hz * self.env_dt_s)
        if round(repeat) < 1 or abs(repeat - round(repeat)) > 1e-6 * repeat:
            raise DescriptionError(
                "gym.control_hz", cfg.control_hz,
                f"must divide the env's rate {1.0 / self.env_dt_s:g} Hz (dt {self.env_dt_s:g} s) evenly",
            )
        #: Env steps per control step (action repeat), and the control period (s).
        self.action_repeat = round(repeat)
        self.control_dt_s = self.action_repeat * self.env_dt_s
        self.frame_id = self.env.spec.id if self.env.spec is not None else cfg.env_id
        self.observation_dim = int(np.prod(obs_space.shape))
        self.action_dim = int(act_space.shape[0])
        #: Action bounds, (A,) float64 (the space's float32 values).
        self.action_low = np.asarray(act_space.low, dtype=np.float64)
        self.action_high = np.asarray(act_space.high, dtype=np.float64)
        self._safe = np.clip(np.zeros(self.action_dim), self.action_low, self.action_high).astype(act_space.dtype)
        self._action = self._safe.copy()
        self._request = np.empty(self.action_dim)
        self._clipped = np.empty(self.action_dim)
        self._obs = np.empty(self.observation_dim, dtype=np.float32)
        self._episodes = np.random.SeedSequence(cfg.seed if seed is None else seed)
        self._next_seed = cfg.seed if seed is None else seed
        self._episode_seed = self._next_seed
        self._step = 0
        self._return = 0.0
        self._info: dict[str, Any] = {}
        self._done = True
        self.stats = AdapterStats()

    # ----------------------------------------------------------------------------------------------------------

    @property
    def sim_time_ns(self) -> int:
        """Sim time since reset (ns)."""
        return self._step * self.env_dt_ns

    @property
    def done(self) -> bool:
        """Whether the episode has ended (or none has started): :meth:`reset` before stepping again."""
        return self._done

    def reset(self, seed: int | None = None) -> list[Reading]:
        """Start an episode seeded with ``seed`` (or the next seed of the stream); returns its first observation
        at t = 0. The held action becomes the safe action."""
        if seed is None:
            seed = self._next_seed
            self._next_seed = int(self._episodes.spawn(1)[0].generate_state(1)[0])
        obs, info = self.env.reset(seed=seed)
        self._episode_seed = seed
        self._step = 0
        self._return = 0.0
        self._info = dict(info)
        self._done = False
        np.copyto(self._action, self._safe)
        self.stats = AdapterStats()
        return [self._observation_reading(obs, 0.0, False, False)]

    def set_action(self, action: Any) -> Reading:
        """Hold ``action`` ((A,), the env's units) from now until the next one; returns the ``env.action``
        reading of what is applied (clipped, or the safe action if rejected: module docstring)."""
        stats = self.stats
        stats.actions += 1
        clipped = rejected = False
        try:
            valid = np.shape(action) == (self.action_dim,)
            if valid:
                np.copyto(self._request, action, casting="unsafe")
                valid = bool(np.isfinite(self._request).all())
        except (TypeError, ValueError):  # not numeric, or ragged
            valid = False
        if valid:
            np.clip(self._request, self.action_low, self.action_high, out=self._clipped)
            clipped = not np.array_equal(self._clipped, self._request)
            if clipped:
                stats.clipped_actions += 1
            np.copyto(self._action, self._clipped, casting="unsafe")
        else:
            rejected = True
            stats.rejected_actions += 1
            np.copyto(self._action, self._safe)
        stats.readings[ACTION_TOPIC] += 1
        data = {"action": self._action.astype(np.float32), "clipped": clipped, "rejected": rejected}
        return Reading(ACTION_TOPIC, self.sim_time_ns, self.frame_id, data)

    def advance(self, dt_s: float) -> list[Reading]:
        """Step the env with the held action for ``dt_s`` (a whole number of env steps); returns one
        ``env.observation`` reading per env step, in time order. Stops early when the episode ends."""
        steps = dt_s / self.env_dt_s
        n = round(steps) if math.isfinite(steps) else -1
        if n < 0 or abs(steps - n) > 1e-6:
            raise DescriptionError("dt_s", dt_s, f"must be a non-negative multiple of the env step {self.env_dt_s:g} s")
        if n and self._done:
            raise RuntimeError("the episode has ended (or not begun): call reset() first")
        readings: list[Reading] = []
        for _ in range(n):
            obs, reward, terminated, truncated, info = self.env.step(self._action)
            self._step += 1
            self.stats.steps += 1
            reward = float(reward)
            if not math.isfinite(reward):
                raise RuntimeError(f"{self.frame_id} returned reward {reward} at step {self._step}")
            self._return += reward
            self._info = dict(info)
            readings.append(self._observation_reading(obs, reward, bool(terminated), bool(truncated)))
            if terminated or truncated:
                self._done = True
                break
        return readings

    def step(self, action: Any) -> list[Reading]:
        """:meth:`set_action` then :meth:`advance` one control period: ``[env.action, env.observation x repeat]``
        (fewer observations if the episode ends)."""
        if self._done:
            raise RuntimeError("the episode has ended (or not begun): call reset() first")
        return [self.set_action(action), *self.advance(self.control_dt_s)]

    def ground_truth(self) -> EnvState:
        """The env's true state now (evaluation only)."""
        data = getattr(self.env.unwrapped, "data", None)
        qpos = getattr(data, "qpos", None)
        qvel = getattr(data, "qvel", None)
        return EnvState(
            stamp_ns=self.sim_time_ns,
            episode_seed=self._episode_seed,
            episode_step=self._step,
            episode_return=self._return,
            qpos=None if qpos is None else np.array(qpos),
            qvel=None if qvel is None else np.array(qvel),
            info=dict(self._info),
        )

    def close(self) -> None:
        """Close the env (and its renderer, if any)."""
        self.env.close()

    def _observation_reading(self, obs: Any, reward: float, terminated: bool, truncated: bool) -> Reading:
        np.copyto(self._obs, np.ravel(obs), casting="unsafe")
        if not np.isfinite(self._obs).all():
            raise RuntimeError(f"{self.frame_id} diverged at step {self._step}: non-finite observation (as float32)")
        self.stats.readings[OBSERVATION_TOPIC] += 1
        data = {
            "observation": self._obs.copy(),
            "reward": reward,
            "terminated": terminated,
            "truncated": truncated,
            "episode_step": self._step,
        }
        return Reading(OBSERVATION_TOPIC, self.sim_time_ns, self.frame_id, data)
