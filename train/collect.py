"""Data collection: simulated episodes written as ONI MCAP logs, one per episode, by a pool of worker processes.

An episode (:func:`run_episode`):

1. the world is generated from the episode's seed (``seed = base seed + episode index``; the same seed seeds
   the sensor noise, and independent streams derived from it seed the policy and the trace ids);
2. the robot starts at rest at the world's start pose; every control period (``control_hz``, default 50 Hz)
   the policy gets every reading since the previous period and returns a command, which is applied for the
   next period;
3. the episode ends when the robot is within ``goal_radius_m`` of the goal (``goal``), when it has not moved
   ``stuck_distance_m`` in ``stuck_s`` seconds (``stuck``), or at ``max_duration_s`` (``time``). Collisions do
   not end an episode: contacts are data a world model has to learn, and the simulator handles them
   physically; they are counted and recorded.

Everything goes in-process from the simulator to :class:`oni.mcap_log.LogWriter` (no sockets): every sensor
reading on its topic, every command on ``actuator.cmd`` and the true state on ``sim.ground_truth`` (at
``ground_truth_hz``), each an ONI message with a full header: ``schema`` from the topic, ``schema_version``
from the registry, ``seq`` per topic from 0, ``source = "sim"``, ``stamp_ns = pub_ns`` = the sim time of the
reading (ns since the episode's reset: the log is on the sim clock, which the ``episode`` metadata record
states), and a ``trace_id`` per message: a fresh one for readings and ground truth, and for a command the
trace id of the newest reading the policy saw (the input that triggered it). Trace ids come from a seeded
stream, so an episode is reproducible to the byte in its messages; MCAP ``log_time`` is the stamp and chunks
are cut by size only, so two runs of one seed differ only in the ``oni`` record's ``created_ns``.

Metadata records: ``collect`` (config and its hash), ``world`` (the hallway parameters as strings, with the
world's length, start, goal and centreline), ``robot`` (name and the description YAML), ``sim`` (settings),
all written first, and ``episode`` (seeds, duration, end reason, collisions, policy and what it did), written
last: a log with an ``episode`` record and a footer is a complete episode.

The output folder holds ``episode_00000.mcap`` ... and ``manifest.json`` (episodes, seeds, durations, sizes,
policy, config hash, speed), rewritten atomically as each episode finishes. Running again on the same folder
resumes: complete episodes of the same configuration and seed are kept, incomplete ones are redone.

A gymnasium MuJoCo env (:class:`sim.gym_adapter.GymAdapter`, a preset with a ``gym`` section) is collected by
:func:`collect_gym` into the same layout: one log per episode with ``env.observation`` and ``env.action`` (headers
as above, on the adapter's sim clock), metadata records ``collect``, ``gym`` (env id, kwargs, control rate,
action box) and ``episode`` (seeds, steps, return, end reason ``terminated``/``truncated``; written last), and
the same manifest, resuming and workers (:func:`_run_collection`). Actions are smooth random noise in the action
box (:class:`train.policies.ActionNoisePolicy`, seeded per episode).
"""

from __future__ import annotations

import collections
import concurrent.futures as futures
import dataclasses
import datetime
import hashlib
import json
import logging
import math
import multiprocessing
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from oni.codec import pack, unpack
from oni.files import write_json
from oni.mcap_log import LogError, LogReader, LogWriter
from oni.message import Header, Message
from oni.schema import SchemaRegistry
from robots.description import (
    DescriptionError,
    RobotDescription,
    build,
    check_choice,
    check_int,
    number_field,
)
from sim.config import SimConfig
from sim.hallway import World
from sim.sensors import Reading

log = logging.getLogger("train.collect")

__all__ = [
    "MANIFEST",
    "CollectConfig",
    "EpisodeJob",
    "GymCollectConfig",
    "GymEpisodeJob",
    "SimSource",
    "Source",
    "collect",
    "collect_config_from_dict",
    "collect_gym",
    "config_hash",
    "episode_path",
    "gym_collect_config_from_dict",
    "gym_config_hash",
    "run_episode",
    "run_gym_episode",
]

#: Name of the manifest file in an output folder.
MANIFEST = "manifest.json"
#: Format tag of the manifest.
MANIFEST_FORMAT = "oniwm.collect/1"
#: ``header.source`` of every message a collection writes.
SOURCE_NAME = "sim"
_CMD_TOPIC = "actuator.cmd"
_TRUTH_TOPIC = "sim.ground_truth"
_NS_PER_S = 1_000_000_000
# Independent streams derived from an episode's seed (the seed itself seeds the world and the sensor noise).
_POLICY_STREAM, _TRACE_STREAM = 1, 2


@dataclass(frozen=True)
class CollectConfig:
    """The ``collect`` section of a preset.

    ``episodes``: default count (the CLI's ``--episodes`` wins). ``max_duration_s``: longest episode (sim s).
    ``control_hz``: policy and ``actuator.cmd`` rate; ``ground_truth_hz``: ``sim.ground_truth`` rate (a divisor
    of ``control_hz``). ``goal_radius_m``: reaching the goal ends an episode. ``stuck_s`` /
    ``stuck_distance_m``: an episode ends when the robot stayed within ``stuck_distance_m`` of one place for
    ``stuck_s`` (0 disables). ``compression`` and ``chunk_kib``: MCAP chunks. ``policy``: the policy's name
    (:data:`train.policies.POLICIES`); ``policies``: parameters per policy name (absent ones take defaults).
    """

    episodes: int = 10
    max_duration_s: float = 60.0
    control_hz: float = 50.0
    ground_truth_hz: float = 50.0
    goal_radius_m: float = 0.5
    stuck_s: float = 15.0
    stuck_distance_m: float = 0.3
    compression: str = "zstd"
    chunk_kib: int = 1024
    policy: str = "mixture"
    policies: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from train.policies import POLICIES, policy_params_from_dict

        check_int("episodes", self.episodes, 1, 10_000_000)
        number_field(self, "max_duration_s", 0.02, 24 * 3600)
        number_field(self, "control_hz", 1, 1000)
        number_field(self, "ground_truth_hz", 0.1, self.control_hz)
        ratio = self.control_hz / self.ground_truth_hz
        if abs(ratio - round(ratio)) > 1e-9:
            raise DescriptionError(
                "ground_truth_hz", self.ground_truth_hz, f"must divide control_hz = {self.control_hz:g}"
            )
        number_field(self, "goal_radius_m", 0, 100, lo_open=True)
        number_field(self, "stuck_s", 0, 24 * 3600)
        number_field(self, "stuck_distance_m", 0, 100)
        check_choice("compression", self.compression, ("zstd", "lz4", "none"))
        check_int("chunk_kib", self.chunk_kib, 16, 1 << 20)
        check_choice("policy", self.policy, tuple(POLICIES))
        if not isinstance(self.policies, Mapping):
            raise DescriptionError("policies", self.policies, "must map policy names to parameter mappings")
        for name, raw in self.policies.items():
            check_choice(f"policies.{name}", name, tuple(POLICIES))
            policy_params_from_dict(name, raw)  # validates now, so a typo fails before any episode runs
        object.__setattr__(self, "policies", {k: dict(v or {}) for k, v in self.policies.items()})

    @property
    def ground_truth_every(self) -> int:
        """Control periods between ground-truth messages."""
        return int(round(self.control_hz / self.ground_truth_hz))


def collect_config_from_dict(raw: Mapping[str, Any] | None, path: str = "collect") -> CollectConfig:
    """:class:`CollectConfig` from a preset's ``collect`` mapping; errors name the field (``collect.control_hz``)."""
    return build(CollectConfig, raw, path)


# --------------------------------------------------------------------------------------------------------------
# The data source.


class Source(Protocol):
    """What an episode runs on: reset to a seed, then step with a command; readings on the source's clock.

    :class:`SimSource` is the MuJoCo simulator. A gymnasium adapter steps with an action vector instead and has
    its own episode runner, :func:`run_gym_episode`.
    """

    @property
    def sim_time_ns(self) -> int:
        """Time since reset (ns)."""

    def reset(self, seed: int) -> list[Reading]:
        """Start an episode; the readings at t = 0."""

    def step(self, v_mps: float, omega_radps: float, dt_s: float) -> list[Reading]:
        """Apply the command for ``dt_s``; every reading stamped in (t, t + dt_s], in time order."""

    def ground_truth(self) -> Any:
        """The true state now: a :class:`sim.robot_sim.GroundTruth`."""

    def collisions(self) -> int:
        """Contact onsets since reset."""


class SimSource:
    """:class:`Source` over :class:`sim.robot_sim.RobotSim`."""

    def __init__(self, robot: RobotDescription, world: World, sim_config: SimConfig, seed: int) -> None:
        from sim.robot_sim import RobotSim

        self.sim = RobotSim(robot, world, sim_config.sim, seed=seed)

    @property
    def sim_time_ns(self) -> int:
        return self.sim.sim_time_ns

    def reset(self, seed: int) -> list[Reading]:
        return self.sim.reset(seed)

    def step(self, v_mps: float, omega_radps: float, dt_s: float) -> list[Reading]:
        self.sim.set_command(v_mps, omega_radps)
        return self.sim.advance(dt_s)

    def ground_truth(self) -> Any:
        return self.sim.ground_truth()

    def collisions(self) -> int:
        return self.sim.stats.collisions


# --------------------------------------------------------------------------------------------------------------
# Writing messages.


class _Recorder:
    """Turns readings, commands and ground truth into ONI messages and writes them to one log.

    Headers are built here (not by a publisher): ``seq`` per topic from 0, ``stamp_ns = pub_ns`` (sim time),
    ``source = "sim"``, trace ids from a seeded stream. ``schemas`` maps each topic to its ONI type.
    """

    def __init__(self, path: str, metadata: Mapping[str, Mapping[str, str]], schemas: Mapping[str, str],
                 frames: Mapping[str, str], compression: str, chunk_bytes: int, trace_seed: int) -> None:
        registry = SchemaRegistry.default()
        self._types = {topic: (schema, registry.latest(schema).version) for topic, schema in schemas.items()}
        self._frames = dict(frames)
        self._seq = {topic: 0 for topic in schemas}
        # Python's Mersenne Twister: seeded, the same on every platform, and ~20x cheaper per id than numpy.
        self._trace = random.Random(trace_seed)
        # flush_ms is effectively off: chunks are cut by size only, so a seed gives the same file on any
        # machine. A crash loses at most the open chunk; that episode is redone on resume anyway.
        # Messages are validated once per topic (the first one, here) rather than each one in the writer:
        # they are built by this code from the sim's fixed layouts, and per-message validation would
        # cost a large share of the collection time.
        self.writer = LogWriter(path, metadata, compression=compression, chunk_bytes=chunk_bytes,
                                flush_ms=1e12, validate=False, overwrite=True, registry=registry)
        self._unchecked = set(schemas)
        self._registry = registry

    def new_trace_id(self) -> str:
        """A fresh 128-bit trace id (32 lowercase hex digits) from the episode's trace stream."""
        return f"{self._trace.getrandbits(128):032x}"

    def write(self, topic: str, stamp_ns: int, data: dict[str, Any], trace_id: str | None = None,
              frame_id: str | None = None) -> str:
        """Write one message; returns its trace id (a fresh one unless ``trace_id`` is given)."""
        schema, version = self._types[topic]
        trace = trace_id or self.new_trace_id()
        header = Header(schema, version, self._seq[topic], SOURCE_NAME, stamp_ns, stamp_ns,
                        self._frames[topic] if frame_id is None else frame_id, trace)
        self._seq[topic] += 1
        msg = Message(topic, header, data)
        if topic in self._unchecked:
            unpack(pack(header, msg.data), topic, self._registry)  # raises RejectedMessage naming the problem
            self._unchecked.discard(topic)
        self.writer.write(msg, log_time_ns=stamp_ns)
        return trace

    @property
    def counts(self) -> dict[str, int]:
        return dict(self.writer.stats.written)


# --------------------------------------------------------------------------------------------------------------
# One episode.


@dataclass(frozen=True)
class EpisodeJob:
    """Everything a worker needs to run one episode (picklable, for spawned workers)."""

    index: int
    seed: int
    path: str
    sim: SimConfig
    collect: CollectConfig
    config_hash: str


def episode_path(out_dir: str | os.PathLike[str], index: int) -> Path:
    """The log of episode ``index`` in ``out_dir``: ``episode_00000.mcap`` ..."""
    return Path(out_dir) / f"episode_{index:05d}.mcap"


def _derived_seed(seed: int, stream: int) -> int:
    return int(np.random.SeedSequence([seed, stream]).generate_state(1, np.uint64)[0])


def _goal_in_start_frame(world: World) -> tuple[float, float]:
    """The goal in the odometry frame (the start pose: x forward, y left), m."""
    start = world.start
    dx, dy = world.goal_xy_m[0] - start.x_m, world.goal_xy_m[1] - start.y_m
    c, s = math.cos(start.yaw_rad), math.sin(start.yaw_rad)
    return dx * c + dy * s, -dx * s + dy * c


def _world_record(world: World, params: Any) -> dict[str, str]:
    record = {k: str(v) for k, v in dataclasses.asdict(params).items()}
    record.update(
        kind="hallway",
        length_m=repr(world.length_m),
        start=json.dumps([world.start.x_m, world.start.y_m, world.start.yaw_rad]),
        goal_xy_m=json.dumps(list(world.goal_xy_m)),
        obstacles=str(len(world.obstacles)),
        centerline_xy_m=json.dumps(np.asarray(world.centerline_xy_m).tolist()),
    )
    return record


_ROBOT_CACHE: dict[str, tuple[RobotDescription, str]] = {}


def _robot(path: Path) -> tuple[RobotDescription, str]:
    """The robot description and its YAML text, read once per process."""
    key = str(path)
    if key not in _ROBOT_CACHE:
        from robots.description import load_robot

        _ROBOT_CACHE[key] = (load_robot(path), Path(path).read_text())
    return _ROBOT_CACHE[key]


class _Stuck:
    """Whether the robot stayed within ``distance_m`` of its current position for the last ``window_s``."""

    def __init__(self, window_s: float, distance_m: float) -> None:
        self.window_s, self.distance_m = window_s, distance_m
        self._marks: collections.deque[tuple[float, float, float]] = collections.deque()
        self._next_mark = 0.0

    def update(self, t_s: float, x: float, y: float) -> bool:
        if self.window_s <= 0:
            return False
        # Positions at 2 Hz are plenty to tell "stuck" from "moving" and keep this off the per-tick cost.
        if t_s >= self._next_mark:
            self._marks.append((t_s, x, y))
            self._next_mark = t_s + 0.5
            while self._marks and self._marks[0][0] < t_s - self.window_s - 1e-9:
                self._marks.popleft()
        if not self._marks or t_s - self._marks[0][0] < self.window_s - 1e-9:
            return False
        return all(math.hypot(mx - x, my - y) < self.distance_m for _, mx, my in self._marks)


def run_episode(job: EpisodeJob) -> dict[str, Any]:
    """Run one episode and write its log to ``job.path``; returns its manifest entry (JSON-ready).

    The entry holds the seeds, duration, end reason, collisions, message counts, file size and where the
    wall time went (``setup_s``: world and model; ``sim_s_wall``: stepping; ``policy_s``; ``log_s``:
    building, packing and writing messages, closing the log).
    """
    from sim.hallway import generate_hallway
    from train.policies import make_policy

    wall0 = time.perf_counter()
    cfg = job.collect
    robot, robot_yaml = _robot(job.sim.robot_path)
    params = dataclasses.replace(job.sim.world, seed=job.seed)
    world = generate_hallway(params, robot.base.radius_m)
    source: Source = SimSource(robot, world, job.sim, job.seed)
    policy = make_policy(cfg.policy, cfg.policies, robot, cfg.control_hz)
    policy_seed = _derived_seed(job.seed, _POLICY_STREAM)
    trace_seed = _derived_seed(job.seed, _TRACE_STREAM)
    schemas = {s.topic: s.schema for s in robot.sensors}
    schemas[robot.drive.topic] = _CMD_TOPIC
    schemas[_TRUTH_TOPIC] = _TRUTH_TOPIC
    frames = {s.topic: s.frame_id for s in robot.sensors}
    frames[robot.drive.topic] = "base_link"
    frames[_TRUTH_TOPIC] = "world"
    metadata = {
        "collect": {"config_hash": job.config_hash, "config": json.dumps(dataclasses.asdict(cfg), sort_keys=True)},
        "world": _world_record(world, params),
        "robot": {"name": robot.name, "description_yaml": robot_yaml, "path": str(job.sim.robot_path)},
        "sim": {k: str(v) for k, v in dataclasses.asdict(job.sim.sim).items()},
    }
    recorder = _Recorder(job.path, metadata, schemas, frames, cfg.compression, cfg.chunk_kib * 1024, trace_seed)
    goal = world.goal_xy_m
    dt_s = 1.0 / cfg.control_hz
    max_ticks = int(math.floor(cfg.max_duration_s * cfg.control_hz + 1e-9))
    gt_every = cfg.ground_truth_every
    stuck = _Stuck(cfg.stuck_s, cfg.stuck_distance_m)
    cmd_topic = robot.drive.topic
    t_step = t_policy = 0.0
    setup_s = time.perf_counter() - wall0
    try:
        readings = source.reset(job.seed)
        policy.reset(policy_seed, _goal_in_start_frame(world))
        end_reason, distance_m, last_xy, trace = "time", 0.0, None, None
        tick = 0
        while True:
            t_ns = source.sim_time_ns
            t_s = t_ns / _NS_PER_S
            for reading in readings:
                trace = recorder.write(reading.topic, reading.stamp_ns, reading.data, frame_id=reading.frame_id)
            if tick % gt_every == 0:
                truth = source.ground_truth()
                goal_distance = math.hypot(goal[0] - truth.x_m, goal[1] - truth.y_m)
                recorder.write(_TRUTH_TOPIC, truth.stamp_ns, {
                    "x_m": truth.x_m, "y_m": truth.y_m, "yaw_rad": truth.yaw_rad, "v_mps": truth.v_mps,
                    "lateral_mps": truth.lateral_mps, "omega_radps": truth.omega_radps,
                    "in_collision": truth.in_collision, "collisions": truth.collisions,
                    "goal_distance_m": goal_distance,
                })
                if last_xy is not None:
                    distance_m += math.hypot(truth.x_m - last_xy[0], truth.y_m - last_xy[1])
                last_xy = (truth.x_m, truth.y_m)
                if goal_distance <= cfg.goal_radius_m:
                    end_reason = "goal"
                    break
                if stuck.update(t_s, truth.x_m, truth.y_m):
                    end_reason = "stuck"
                    break
            if tick >= max_ticks:
                break
            t0 = time.perf_counter()
            v, omega = policy(readings, t_s)
            t1 = time.perf_counter()
            if not (math.isfinite(v) and math.isfinite(omega)):
                raise ValueError(f"policy {policy.name!r} commanded ({v}, {omega}) at t = {t_s:.3f} s: not finite")
            # The command derives from the readings the policy just saw: it carries the newest one's trace id.
            recorder.write(cmd_topic, t_ns, {"v_mps": float(v), "omega_radps": float(omega)}, trace_id=trace)
            t2 = time.perf_counter()
            readings = source.step(v, omega, dt_s)
            t_step += time.perf_counter() - t2
            t_policy += t1 - t0
            tick += 1
        sim_s = source.sim_time_ns / _NS_PER_S
        collisions = source.collisions()
        recorder.writer.add_metadata("episode", {
            "index": str(job.index),
            "seed": str(job.seed),
            "world_seed": str(job.seed),
            "sensor_seed": str(job.seed),
            "policy_seed": str(policy_seed),
            "trace_seed": str(trace_seed),
            "duration_s": repr(sim_s),
            "end_reason": end_reason,
            "reached_goal": str(end_reason == "goal").lower(),
            "collisions": str(collisions),
            "distance_m": repr(distance_m),
            "goal_distance_m": repr(goal_distance),
            "policy": policy.name,
            "policy_config": json.dumps(policy.describe(), sort_keys=True),
            "policy_episode": json.dumps(policy.episode_summary(), sort_keys=True),
            "control_hz": repr(cfg.control_hz),
            "ground_truth_hz": repr(cfg.ground_truth_hz),
            "source": SOURCE_NAME,
            "clock": "sim: stamp_ns is ns since the episode's reset",
            "config_hash": job.config_hash,
        })
    finally:
        recorder.writer.close()
    wall_s = time.perf_counter() - wall0
    return {
        "index": job.index,
        "file": os.path.basename(job.path),
        "status": "ok",
        "seed": job.seed,
        "sim_s": sim_s,
        "end_reason": end_reason,
        "reached_goal": end_reason == "goal",
        "collisions": collisions,
        "distance_m": round(distance_m, 3),
        "messages": recorder.counts,
        "bytes": os.path.getsize(job.path),
        "wall_s": wall_s,
        "setup_s": setup_s,
        "sim_s_wall": t_step,
        "policy_s": t_policy,
        "log_s": wall_s - setup_s - t_step - t_policy,
        "sim_s_per_wall_s": sim_s / wall_s,
        "pid": os.getpid(),
    }


# --------------------------------------------------------------------------------------------------------------
# A collection: many episodes, a pool of workers, the manifest.


def config_hash(sim: SimConfig, cfg: CollectConfig, robot_yaml: str) -> str:
    """SHA-256 (hex) of everything that determines an episode's data: the robot description, world parameters
    (with the base seed), sim settings and collect settings except the episode count (a dataset may grow)."""
    collect = dataclasses.asdict(cfg)
    collect.pop("episodes")
    doc = {
        "robot_yaml": robot_yaml,
        "world": dataclasses.asdict(sim.world),
        "sim": dataclasses.asdict(sim.sim),
        "collect": collect,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def _resumable(path: Path, seed: int, digest: str,
               fields: Callable[[Mapping[str, str]], dict[str, Any]]) -> dict[str, Any] | None:
    """The manifest entry of a complete log of this seed and configuration at ``path``, else None; ``fields``
    turns the log's ``episode`` record into the source's own entry fields (duration, end reason, ...)."""
    from mcap.reader import make_reader

    if not path.is_file():
        return None
    try:
        info = LogReader(path).info()
    except (LogError, OSError, ValueError) as exc:
        log.warning("%s is not a readable log (%s): redoing it", path, exc)
        return None
    episode = info.metadata.get("episode")
    if not info.complete or episode is None:
        return None
    if episode.get("config_hash") != digest or episode.get("seed") != str(seed):
        return None
    with open(path, "rb") as f:
        summary = make_reader(f).get_summary()
    stats = summary.statistics if summary is not None else None
    if stats is None:
        return None
    counts = {summary.channels[c].topic: n for c, n in sorted(stats.channel_message_counts.items())}
    return {
        "index": int(episode["index"]),
        "file": path.name,
        "status": "ok",
        "resumed": True,
        "seed": seed,
        **fields(episode),
        "messages": counts,
        "bytes": path.stat().st_size,
    }


def _hallway_fields(episode: Mapping[str, str]) -> dict[str, Any]:
    """A hallway episode's manifest fields from its ``episode`` record."""
    return {
        "sim_s": float(episode["duration_s"]),
        "end_reason": episode["end_reason"],
        "reached_goal": episode["reached_goal"] == "true",
        "collisions": int(episode["collisions"]),
        "distance_m": round(float(episode["distance_m"]), 3),
    }


def _summary(entries: Sequence[Mapping[str, Any]], elapsed_s: float, workers: int,
             totals: Sequence[str]) -> dict[str, Any]:
    """Totals and speed: ``sim_s_per_wall_s`` is the whole run's throughput (sim seconds of the episodes run
    now over the run's wall time, all workers together); ``per_worker`` each worker's own rate (its sim
    seconds over the wall time of its episodes: the per-core speed of collection). ``totals``: the source's
    own entry fields summed over the complete episodes (``collisions``, ``steps``, ...)."""
    ok = [e for e in entries if e.get("status") == "ok"]
    fresh = [e for e in ok if not e.get("resumed")]
    per_worker: dict[int, dict[str, Any]] = {}
    for entry in fresh:
        worker = entry["worker"]
        row = per_worker.setdefault(worker, {"worker": worker, "episodes": 0, "sim_s": 0.0, "wall_s": 0.0})
        row["episodes"] += 1
        row["sim_s"] += entry["sim_s"]
        row["wall_s"] += entry["wall_s"]
    for row in per_worker.values():
        row["sim_s_per_wall_s"] = round(row["sim_s"] / row["wall_s"], 2) if row["wall_s"] > 0 else None
        row["sim_s"], row["wall_s"] = round(row["sim_s"], 3), round(row["wall_s"], 3)
    fresh_sim = sum(e["sim_s"] for e in fresh)
    fresh_wall = sum(e["wall_s"] for e in fresh)
    total_bytes = sum(e["bytes"] for e in ok)
    total_sim = sum(e["sim_s"] for e in ok)
    breakdown = {
        key: round(sum(e[key] for e in fresh) / fresh_sim * 1e3, 3) if fresh_sim > 0 else None
        for key in ("setup_s", "sim_s_wall", "policy_s", "log_s")
    }
    return {
        "episodes": len(ok),
        "failed": len(entries) - len(ok),
        "resumed": len(ok) - len(fresh),
        "workers": workers,
        "sim_s": round(total_sim, 3),
        "elapsed_s": round(elapsed_s, 3),
        "sim_s_per_wall_s": round(fresh_sim / elapsed_s, 2) if fresh and elapsed_s > 0 else None,
        "per_core_sim_s_per_wall_s": round(fresh_sim / fresh_wall, 2) if fresh_wall > 0 else None,
        "per_worker": [per_worker[k] for k in sorted(per_worker)],
        "wall_ms_per_sim_s": breakdown,
        "bytes": total_bytes,
        "bytes_per_episode": round(total_bytes / len(ok)) if ok else None,
        "bytes_per_sim_s": round(total_bytes / total_sim) if total_sim > 0 else None,
        **{key: sum(e[key] for e in ok) for key in totals},
        "end_reasons": dict(collections.Counter(e["end_reason"] for e in ok)),
    }


def collect(sim: SimConfig, cfg: CollectConfig, out_dir: str | os.PathLike[str], *, episodes: int | None = None,
            base_seed: int | None = None, workers: int = 1, overwrite: bool = False, preset: str = "",
            progress: Callable[[int, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run ``episodes`` episodes (default ``cfg.episodes``) with ``workers`` processes into ``out_dir``.

    Episode ``i`` has seed ``base_seed + i`` (default: the preset's ``world.seed``). Returns the manifest
    (also written to ``out_dir/manifest.json`` after every episode). ``progress(done, entry)`` is called
    in this process as each episode finishes. Without ``overwrite``, complete logs of the same configuration
    and seed are kept (resume); a folder holding another configuration's manifest is refused with
    :class:`FileExistsError`. Episodes that raise are recorded as ``failed`` with the error and the others
    go on; KeyboardInterrupt stops the pool, leaving the manifest of what finished.
    """
    from train.policies import make_policy

    out = Path(out_dir)
    count = cfg.episodes if episodes is None else check_int("episodes", episodes, 1, 10_000_000)
    base = sim.world.seed if base_seed is None else check_int("seed", base_seed, 0, 2**63 - 1)
    if base + count - 1 > 2**63 - 1:
        raise DescriptionError("seed", base, f"base seed + {count} episodes exceeds 2**63 - 1")
    workers = check_int("workers", workers, 1, 4096)
    steps = sim.sim.physics_hz / cfg.control_hz
    if abs(steps - round(steps)) > 1e-9:
        raise DescriptionError(
            "collect.control_hz", cfg.control_hz,
            f"must divide sim.physics_hz = {sim.sim.physics_hz} (a whole number of physics steps per period)"
        )
    sim = dataclasses.replace(sim, world=dataclasses.replace(sim.world, seed=base))
    robot, robot_yaml = _robot(sim.robot_path)
    digest = config_hash(sim, cfg, robot_yaml)
    policy = make_policy(cfg.policy, cfg.policies, robot, cfg.control_hz)
    config = {
        "preset": preset,
        "robot": robot.name,
        "robot_path": str(sim.robot_path),
        "world": dataclasses.asdict(sim.world),
        "sim": dataclasses.asdict(sim.sim),
        "collect": dataclasses.asdict(cfg),
    }

    def job(index: int, seed: int, path: str) -> EpisodeJob:
        return EpisodeJob(index, seed, path, sim, cfg, digest)

    return _run_collection(
        out, digest, config, policy.describe(), base, count, workers, overwrite, job, run_episode, _hallway_fields,
        ("reached_goal", "collisions"), progress,
    )


class _Job(Protocol):
    """What the collection loop needs of an episode's job (:class:`EpisodeJob`, :class:`GymEpisodeJob`)."""

    index: int
    seed: int
    path: str


def _run_collection(out: Path, digest: str, config: Mapping[str, Any], policy: Mapping[str, Any], base: int,
                    count: int, workers: int, overwrite: bool, make_job: Callable[[int, int, str], Any],
                    run: Callable[[Any], dict[str, Any]], fields: Callable[[Mapping[str, str]], dict[str, Any]],
                    totals: Sequence[str],
                    progress: Callable[[int, dict[str, Any]], None] | None) -> dict[str, Any]:
    """The part of a collection every source shares: the manifest, resuming, and the pool of workers.

    Episode ``i`` (seed ``base + i``) is ``make_job(i, seed, path)`` run by ``run`` (a module-level function, so
    spawned workers can pickle it), returning its manifest entry. ``fields`` reads a complete log's ``episode``
    record into the source's entry fields (for resumed episodes); ``totals`` names the entry fields the summary
    sums. See :func:`collect` for ``overwrite``, ``progress`` and errors.
    """
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / MANIFEST
    if manifest_path.exists() and not overwrite:
        previous = json.loads(manifest_path.read_text())
        if previous.get("config_hash") != digest:
            raise FileExistsError(
                f"{out} holds episodes of another configuration (config hash {previous.get('config_hash')!r}, "
                f"now {digest!r}): use another --out, or --overwrite to replace them"
            )
    if overwrite:
        for stale in list(out.glob("episode_*.mcap")) + [manifest_path]:
            stale.unlink(missing_ok=True)
    started_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "created": started_at,
        "config_hash": digest,
        "config": dict(config),
        "policy": dict(policy),
        "base_seed": base,
        "episodes": [],
        "summary": {},
    }
    entries: dict[int, dict[str, Any]] = {}
    jobs: list[_Job] = []
    for index in range(count):
        path = episode_path(out, index)
        kept = None if overwrite else _resumable(path, base + index, digest, fields)
        if kept is not None:
            entries[index] = kept
        else:
            jobs.append(make_job(index, base + index, str(path)))
    if entries:
        log.info("resuming: %d of %d episodes are already complete", len(entries), count)
    pids: dict[int, int] = {}
    t0 = time.perf_counter()

    def finish(job: _Job, entry: dict[str, Any]) -> None:
        if "pid" in entry:
            entry["worker"] = pids.setdefault(entry.pop("pid"), len(pids))
        entries[job.index] = entry
        manifest["episodes"] = [entries[i] for i in sorted(entries)]
        manifest["summary"] = _summary(manifest["episodes"], time.perf_counter() - t0, workers, totals)
        manifest["updated"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        write_json(manifest_path, manifest)
        if progress is not None:
            progress(len(entries), entry)

    def failed(job: _Job, exc: BaseException) -> dict[str, Any]:
        log.error("episode %d (seed %d) failed: %s: %s", job.index, job.seed, type(exc).__name__, exc)
        return {"index": job.index, "file": os.path.basename(job.path), "status": "failed", "seed": job.seed,
                "error": f"{type(exc).__name__}: {exc}"}

    try:
        if workers == 1 or len(jobs) <= 1:
            # In-process: no spawn cost, and a debugger sees the episode.
            for job in jobs:
                try:
                    entry = run(job)
                except (KeyboardInterrupt, SystemExit):
                    raise
                except Exception as exc:  # one bad episode (an impossible world) must not end the collection
                    entry = failed(job, exc)
                finish(job, entry)
        else:
            context = multiprocessing.get_context("spawn")
            with futures.ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context) as pool:
                pending = {pool.submit(run, job): job for job in jobs}
                try:
                    for done in futures.as_completed(pending):
                        job = pending[done]
                        try:
                            entry = done.result()
                        except futures.process.BrokenProcessPool:
                            raise
                        except Exception as exc:  # an episode's own error, re-raised from the worker
                            entry = failed(job, exc)
                        finish(job, entry)
                except BaseException:
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise
    finally:
        manifest["episodes"] = [entries[i] for i in sorted(entries)]
        manifest["summary"] = _summary(manifest["episodes"], time.perf_counter() - t0, workers, totals)
        manifest["updated"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        write_json(manifest_path, manifest)
    return manifest


# --------------------------------------------------------------------------------------------------------------
# A gymnasium adapter as the source (sim.gym_adapter.GymAdapter): the same logs, manifest and workers.


@dataclass(frozen=True)
class GymCollectConfig:
    """The ``collect`` section of a gym preset (``configs/hopper.yaml`` ...).

    ``episodes``: default count (the CLI's ``--episodes`` wins). ``compression`` and ``chunk_kib``: MCAP chunks.
    ``policy``: the action noise, ``ou`` or ``pink`` (:data:`train.policies.ACTION_NOISES`); ``noise``: its
    :class:`train.policies.ActionNoiseParams` as a mapping (absent keys take defaults). An episode's length is
    the adapter's: ``gym.max_episode_steps`` (the CLI's ``--max-steps`` overrides it) or termination.
    """

    episodes: int = 10
    compression: str = "zstd"
    chunk_kib: int = 1024
    policy: str = "ou"
    noise: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from train.policies import ACTION_NOISES, ActionNoiseParams

        check_int("episodes", self.episodes, 1, 10_000_000)
        check_choice("compression", self.compression, ("zstd", "lz4", "none"))
        check_int("chunk_kib", self.chunk_kib, 16, 1 << 20)
        check_choice("policy", self.policy, ACTION_NOISES)
        params = build(ActionNoiseParams, self.noise, "noise")  # validates now, before any episode runs
        object.__setattr__(self, "noise", dataclasses.asdict(params))

    def noise_params(self) -> Any:
        """The validated :class:`train.policies.ActionNoiseParams`."""
        from train.policies import ActionNoiseParams

        return ActionNoiseParams(**self.noise)


def gym_collect_config_from_dict(raw: Mapping[str, Any] | None, path: str = "collect") -> GymCollectConfig:
    """:class:`GymCollectConfig` from a gym preset's ``collect`` mapping; errors name the field."""
    return build(GymCollectConfig, raw, path)


@dataclass(frozen=True)
class GymEpisodeJob:
    """Everything a worker needs to run one gym episode (picklable). ``gym``: a
    :class:`sim.gym_adapter.GymAdapterConfig` with a finite ``max_episode_steps``."""

    index: int
    seed: int
    path: str
    gym: Any
    collect: GymCollectConfig
    config_hash: str


def gym_config_hash(gym: Any, cfg: GymCollectConfig) -> str:
    """SHA-256 (hex) of what determines a gym episode's data: the adapter config (with the base seed) and the
    collect settings except the episode count."""
    collect = dataclasses.asdict(cfg)
    collect.pop("episodes")
    doc = {"gym": dataclasses.asdict(gym), "collect": collect}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def run_gym_episode(job: GymEpisodeJob) -> dict[str, Any]:
    """Run one gym episode and write its log to ``job.path``; returns its manifest entry (JSON-ready).

    Every control period the policy's action goes to :meth:`sim.gym_adapter.GymAdapter.step`; each reading
    (``env.action`` at t, then ``env.observation`` per env step) becomes a message on its topic through
    :class:`_Recorder` (an action carries the trace id of the observation it followed). The episode ends when
    the adapter is done: ``terminated`` (the env's own end) or ``truncated`` (``max_episode_steps``).
    """
    from sim.gym_adapter import ACTION_TOPIC, OBSERVATION_TOPIC, GymAdapter
    from train.policies import ActionNoisePolicy

    wall0 = time.perf_counter()
    cfg = job.collect
    adapter = GymAdapter(job.gym, seed=job.seed)
    control_hz = 1.0 / adapter.control_dt_s
    policy = ActionNoisePolicy(cfg.policy, adapter.action_low, adapter.action_high, control_hz, cfg.noise_params())
    policy_seed = _derived_seed(job.seed, _POLICY_STREAM)
    trace_seed = _derived_seed(job.seed, _TRACE_STREAM)
    topics = (OBSERVATION_TOPIC, ACTION_TOPIC)
    metadata = {
        "collect": {"config_hash": job.config_hash, "config": json.dumps(dataclasses.asdict(cfg), sort_keys=True)},
        "gym": {
            "env_id": job.gym.env_id,
            "env_kwargs": json.dumps(dict(job.gym.env_kwargs), sort_keys=True, default=str),
            "control_hz": repr(control_hz),
            "env_dt_s": repr(adapter.env_dt_s),
            "action_repeat": str(adapter.action_repeat),
            "max_episode_steps": str(job.gym.max_episode_steps),
            "observation_dim": str(adapter.observation_dim),
            "action_dim": str(adapter.action_dim),
            "action_low": json.dumps(adapter.action_low.tolist()),
            "action_high": json.dumps(adapter.action_high.tolist()),
        },
    }
    recorder = _Recorder(job.path, metadata, {t: t for t in topics}, {t: adapter.frame_id for t in topics},
                         cfg.compression, cfg.chunk_kib * 1024, trace_seed)
    t_step = t_policy = 0.0
    setup_s = time.perf_counter() - wall0
    try:
        readings = adapter.reset(job.seed)
        policy.reset(policy_seed)
        trace: str | None = None
        last_obs: Mapping[str, Any] = readings[-1].data
        while True:
            for reading in readings:
                if reading.topic == ACTION_TOPIC:
                    recorder.write(ACTION_TOPIC, reading.stamp_ns, reading.data, trace_id=trace,
                                   frame_id=reading.frame_id)
                else:
                    trace = recorder.write(reading.topic, reading.stamp_ns, reading.data, frame_id=reading.frame_id)
                    last_obs = reading.data
            if adapter.done:
                break
            t0 = time.perf_counter()
            action = policy()
            t1 = time.perf_counter()
            readings = adapter.step(action)
            t_step += time.perf_counter() - t1
            t_policy += t1 - t0
        end_reason = "terminated" if last_obs["terminated"] else "truncated"
        state = adapter.ground_truth()
        sim_s = adapter.sim_time_ns / _NS_PER_S
        stats = adapter.stats
        recorder.writer.add_metadata("episode", {
            "index": str(job.index),
            "seed": str(job.seed),
            "policy_seed": str(policy_seed),
            "trace_seed": str(trace_seed),
            "steps": str(state.episode_step),
            "control_steps": str(stats.actions),
            "duration_s": repr(sim_s),
            "return": repr(state.episode_return),
            "end_reason": end_reason,
            "clipped_actions": str(stats.clipped_actions),
            "rejected_actions": str(stats.rejected_actions),
            "policy": policy.name,
            "policy_config": json.dumps(policy.describe(), sort_keys=True),
            "control_hz": repr(control_hz),
            "source": SOURCE_NAME,
            "clock": "sim: stamp_ns is ns since the episode's reset",
            "config_hash": job.config_hash,
        })
    finally:
        recorder.writer.close()
        adapter.close()
    wall_s = time.perf_counter() - wall0
    return {
        "index": job.index,
        "file": os.path.basename(job.path),
        "status": "ok",
        "seed": job.seed,
        "sim_s": sim_s,
        "steps": state.episode_step,
        "return": state.episode_return,
        "end_reason": end_reason,
        "messages": recorder.counts,
        "bytes": os.path.getsize(job.path),
        "wall_s": wall_s,
        "setup_s": setup_s,
        "sim_s_wall": t_step,
        "policy_s": t_policy,
        "log_s": wall_s - setup_s - t_step - t_policy,
        "sim_s_per_wall_s": sim_s / wall_s,
        "steps_per_wall_s": state.episode_step / wall_s,
        "pid": os.getpid(),
    }


def _gym_fields(episode: Mapping[str, str]) -> dict[str, Any]:
    """A gym episode's manifest fields from its ``episode`` record."""
    return {
        "sim_s": float(episode["duration_s"]),
        "steps": int(episode["steps"]),
        "return": float(episode["return"]),
        "end_reason": episode["end_reason"],
    }


def collect_gym(gym: Any, cfg: GymCollectConfig, out_dir: str | os.PathLike[str], *, episodes: int | None = None,
                base_seed: int | None = None, workers: int = 1, overwrite: bool = False, preset: str = "",
                progress: Callable[[int, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """:func:`collect` with a gymnasium adapter as the source: ``gym`` is a
    :class:`sim.gym_adapter.GymAdapterConfig`; episode ``i`` resets the env with seed ``base_seed + i`` (default:
    ``gym.seed``). The same folder layout, manifest (its summary also totals env ``steps``), resuming, workers
    and errors. The episode length is ``gym.max_episode_steps``, else the env id's registered limit (an env
    without either is refused: an episode must end)."""
    import gymnasium

    count = cfg.episodes if episodes is None else check_int("episodes", episodes, 1, 10_000_000)
    base = gym.seed if base_seed is None else check_int("seed", base_seed, 0, 2**63 - 1)
    if base + count - 1 > 2**63 - 1:
        raise DescriptionError("seed", base, f"base seed + {count} episodes exceeds 2**63 - 1")
    workers = check_int("workers", workers, 1, 4096)
    if gym.max_episode_steps is None:
        limit = gymnasium.spec(gym.env_id).max_episode_steps
        if limit is None:
            raise DescriptionError("gym.max_episode_steps", None, f"{gym.env_id} has no time limit: set one")
        gym = dataclasses.replace(gym, max_episode_steps=limit)
    gym = dataclasses.replace(gym, seed=base)
    digest = gym_config_hash(gym, cfg)
    config = {"preset": preset, "gym": dataclasses.asdict(gym), "collect": dataclasses.asdict(cfg)}

    def job(index: int, seed: int, path: str) -> GymEpisodeJob:
        return GymEpisodeJob(index, seed, path, gym, cfg, digest)

    return _run_collection(
        Path(out_dir), digest, config, {"name": cfg.policy, "params": dict(cfg.noise)}, base, count, workers, overwrite, job, run_gym_episode,
        _gym_fields, ("steps",), progress,
    )
