"""Datasets from ONI MCAP logs: every episode aligned onto the control-tick grid, cached, split by world seed.

::

    report = build_dataset("data/hallway", "data/hallway.cache", DatasetConfig())
    train = SequenceDataset("data/hallway.cache", seq_len=64, split="train")
    loader = torch.utils.data.DataLoader(train, batch_size=16, shuffle=True)
    stats = load_stats("data/hallway.cache")        # NormStats of the train split, to store with the model

or ``python -m train.dataset --logs data/hallway --cache data/hallway.cache [--config configs/hallway.yaml]``.

**Alignment.** :func:`build_episode` reads a log (:class:`oni.mcap_log.LogReader`), sorts its messages by
``stamp_ns`` and feeds them through the runtime's own :class:`worldmodel.observation.TickAssembler`: before
tick ``t`` every message stamped ``<= t`` is added, so a modality's mask is 1 exactly when a message was
stamped in ``(t - dt, t]``. The grid runs at ``control_hz`` with its phase on the first ``actuator.cmd``
stamp (the control loop's own ticks), from the earliest message to the last one. Per-tick arrays
(float32, ``T`` ticks; see :mod:`worldmodel.observation` for each modality's value/mask/age):

- ``lidar`` (T, N), ``depth`` (T, H, W), ``imu`` (T, K, 6), ``odom`` (T, 5), each with ``*_mask`` (T,)
  (``imu_mask`` (T, K)) and ``*_age`` (T,) in seconds, clipped to ``max_age_s``;
- ``action`` (T, 2): the command in effect from ``t`` to ``t + dt`` (latest ``actuator.cmd`` stamped
  ``<= t``; zeros before the first, after ``stop``, or past the drive's ``command_timeout_s``);
- ``dt`` (T,) seconds since the previous tick (the period at tick 0); ``valid`` (T,) ones;
- ``pose`` (T, 3) ``(x_m, y_m, yaw_rad)`` in the world frame and ``pose_mask`` (T,): ``sim.ground_truth``
  at the tick, linearly interpolated between samples at most ``ground_truth_max_gap_s`` apart (yaw along the
  shorter arc), 0 where there is none. A loss and evaluation target only, never a model input. A log whose
  ``episode`` record names a ``pose_topic`` takes the pose from that topic's ``x_m``, ``y_m``, ``yaw_rad``
  instead (an imported bag: its odometry, the best pose a real robot logs; see train/rosbag.py).

Gymnasium adapter logs (``env.observation`` / ``env.action``) get one tick per env step, on the
observations' own stamps: ``obs`` (T, D) with ``obs_mask``/``obs_age``, ``action`` (T, A) (the action
applied from ``t``), ``reward`` (T,) (of the transition into the tick's observation), ``done`` (T,)
(1 where the observation is terminal), ``truncated`` (T,) (1 where the time limit cut the episode), ``dt``
and ``valid``.

**Bad input.** Missing topics and gaps give masks 0 and growing ages, nothing else. A log that was not
closed cleanly, or whose data breaks off (a chunk failing decompression or its CRC), loads up to the last
readable record with a warning naming the byte where it broke; a file with nothing readable is skipped, and
:func:`build_dataset` lists it with the reason, while the other logs load. Messages the assembler rejects
(wrong shape, non-finite) are counted in the episode's metadata.

**Cache.** ``CACHE/episodes/<log stem>.<params>.npz``, one per log and build parameters (builder version,
spec, rates, dropout), written atomically. A cache file records the log's size, mtime and a hash of its
first and last 64 KiB; when the log changes, it is rebuilt. To keep the cache small, the held values of
``lidar`` and ``depth`` are stored once per message (``frames``) with a per-tick index; :class:`EpisodeArrays`
expands them to (T, ...) on access. ``CACHE/dataset.json`` is the report (episodes, splits, skipped and
partial logs, speed); ``CACHE/stats.json`` the :class:`~worldmodel.observation.NormStats` of the train split.

**Splits**, by world seed so that evaluation worlds are never seen in training: with ``eval_seeds`` /
``val_seeds`` given, exactly those seeds are held out; otherwise a seed's split is fixed by a hash of the
seed alone, ``u = sha256("oniwm-split:<seed>") / 2**256``: ``eval`` if ``u < eval_fraction``, ``val`` if
``u < eval_fraction + val_fraction``, else ``train``. The hash rule keeps every seed in the same split however
the dataset grows, so a model trained on one collection is never evaluated on its own training worlds in a
later one. A log without a seed (an imported bag) is split by the same hash of its file name.

**Message loss.** ``drop_prob`` drops each sensor message independently (seeded by ``drop_seed`` and the file
name) before alignment, so masks and ages show the loss as they would live; commands and ground truth are
never dropped.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import sys
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from oni.files import atomic_write, write_json
from oni.mcap_log import LogReader
from robots.description import (
    DescriptionError,
    RobotDescription,
    build,
    check_int,
    number_field,
    robot_from_dict,
)
from robots.model_spec import observation_spec
from worldmodel.observation import (
    IMU_CHANNELS,
    NormStats,
    ObservationSpec,
    TickAssembler,
)

log = logging.getLogger("train.dataset")

__all__ = [
    "BUILDER_VERSION",
    "DatasetConfig",
    "EpisodeArrays",
    "EpisodeError",
    "SPLITS",
    "SequenceDataset",
    "build_dataset",
    "build_episode",
    "dataset_config_from_dict",
    "load_episode",
    "load_report",
    "load_stats",
    "save_episode",
    "split_of",
]

#: Bumped whenever the arrays a log yields change: older cache files are then rebuilt.
BUILDER_VERSION = 1
#: Split names.
SPLITS = ("train", "val", "eval")
#: Control rate of a log that states none (its ``episode`` record has no ``control_hz``).
DEFAULT_CONTROL_HZ = 50.0
REPORT = "dataset.json"
STATS = "stats.json"
REPORT_FORMAT = "oniwm.dataset/1"
_EPISODES_DIR = "episodes"
_GT_TOPIC = "sim.ground_truth"
_GYM_OBS_TOPIC = "env.observation"
_GYM_ACTION_TOPIC = "env.action"
_NS = 1_000_000_000
# A log whose stamps span more than this is refused rather than allocating a grid for it (a broken clock).
_MAX_SPAN_S = 6 * 3600.0
# Bytes hashed at each end of a log for its cache key: catches a log replaced by one of equal size and mtime.
_FINGERPRINT_BYTES = 1 << 16
# A channel whose spread is below this is constant: it is centred but not scaled (dividing by ~0 amplifies noise).
_MIN_STD = 1e-6


class EpisodeError(ValueError):
    """A log that yields no episode; the message names the file and why (where it broke)."""


# --------------------------------------------------------------------------------------------------------------
# Configuration.


@dataclass(frozen=True)
class DatasetConfig:
    """The ``dataset`` section of a preset.

    ``control_hz``: tick rate; ``None`` takes each log's own (its ``episode`` record's ``control_hz``, else
    50 Hz; gym logs always use their env step). ``max_age_s``: ages are clipped to it. ``ground_truth_max_gap_s``:
    the longest gap between ground-truth samples interpolated across. ``eval_fraction`` / ``val_fraction``:
    shares of seeds held out by the hash rule; ``eval_seeds`` / ``val_seeds``: explicit held-out seeds (when
    either is set, the hash rule is off). ``drop_prob`` / ``drop_seed``: simulated sensor message loss.
    """

    control_hz: float | None = None
    max_age_s: float = 1.0
    ground_truth_max_gap_s: float = 0.1
    eval_fraction: float = 0.1
    val_fraction: float = 0.1
    eval_seeds: tuple[int, ...] = ()
    val_seeds: tuple[int, ...] = ()
    drop_prob: float = 0.0
    drop_seed: int = 0

    def __post_init__(self) -> None:
        if self.control_hz is not None:
            number_field(self, "control_hz", 0, 10_000, lo_open=True)
        number_field(self, "max_age_s", 0, 3600, lo_open=True)
        number_field(self, "ground_truth_max_gap_s", 0, 3600)
        number_field(self, "eval_fraction", 0, 1)
        number_field(self, "val_fraction", 0, 1 - self.eval_fraction)
        for name in ("eval_seeds", "val_seeds"):
            seeds = getattr(self, name)
            if not isinstance(seeds, (tuple, list)):
                raise DescriptionError(name, seeds, "must be a list of integer seeds")
            object.__setattr__(self, name, tuple(check_int(f"{name}[{i}]", s, 0, 2**63 - 1) for i, s in enumerate(seeds)))
        both = sorted(set(self.eval_seeds) & set(self.val_seeds))
        if both:
            raise DescriptionError("val_seeds", list(both), "are also in eval_seeds: a seed belongs to one split")
        number_field(self, "drop_prob", 0, 1, hi_open=True)
        check_int("drop_seed", self.drop_seed, 0, 2**63 - 1)


def dataset_config_from_dict(raw: Mapping[str, Any] | None, path: str = "dataset") -> DatasetConfig:
    """:class:`DatasetConfig` from a preset's ``dataset`` mapping; errors name the field (``dataset.max_age_s``)."""
    return build(DatasetConfig, raw, path)


def split_of(seed: int | None, name: str, config: DatasetConfig) -> str:
    """The split (``train``, ``val`` or ``eval``) of an episode of world ``seed`` (log file ``name`` if None)."""
    if config.eval_seeds or config.val_seeds:
        if seed in config.eval_seeds:
            return "eval"
        return "val" if seed in config.val_seeds else "train"
    key = f"oniwm-split:{seed}" if seed is not None else f"oniwm-split-file:{name}"
    u = int.from_bytes(hashlib.sha256(key.encode()).digest(), "big") / 2.0**256
    if u < config.eval_fraction:
        return "eval"
    return "val" if u < config.eval_fraction + config.val_fraction else "train"


# --------------------------------------------------------------------------------------------------------------
# One episode.


@dataclass
class EpisodeArrays:
    """One episode on the tick grid.

    ``ticks_ns`` (T,) int64: tick times on the log's clock. ``data``: per-tick arrays (T, ...) float32 (module
    docstring). ``held``: ``lidar`` / ``depth`` values stored once per message: ``(frames (M, ...), index (T,)
    int32)``, the tick's value being ``frames[index[t]]``, or zeros where ``index`` is -1 (before the first).
    ``meta``: JSON-ready facts (source file, seed, world, robot name and description, policy, duration,
    control rate, spec, message and reject counts, log completeness). ``ep[key]`` gives any key as (T, ...).
    """

    ticks_ns: np.ndarray
    data: dict[str, np.ndarray]
    held: dict[str, tuple[np.ndarray, np.ndarray]]
    meta: dict[str, Any]

    def __len__(self) -> int:
        return int(self.ticks_ns.shape[0])

    @property
    def spec(self) -> ObservationSpec:
        return ObservationSpec.from_dict(self.meta["spec"])

    def keys(self) -> list[str]:
        """Every per-tick key, sorted."""
        return sorted([*self.data, *self.held])

    def __contains__(self, key: object) -> bool:
        return key in self.data or key in self.held

    def __getitem__(self, key: str) -> np.ndarray:
        """The key's (T, ...) array (a new array for held keys)."""
        return self.window(0, len(self), [key])[key] if key in self.held else self.data[key]

    def window(self, start: int, stop: int, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Ticks ``[start, stop)`` of ``keys`` (default all) as (stop - start, ...) arrays (views where possible)."""
        out: dict[str, np.ndarray] = {}
        for key in self.keys() if keys is None else keys:
            if key in self.held:
                frames, index = self.held[key]
                idx = index[start:stop]
                value = np.zeros((idx.shape[0], *frames.shape[1:]), np.float32)
                seen = idx >= 0
                value[seen] = frames[idx[seen]]
                out[key] = value
            else:
                out[key] = self.data[key][start:stop]
        return out


@dataclass
class _LogContent:
    """What one read of a log gave: messages per topic as (stamp_ns, data), metadata and how the read went."""

    messages: dict[str, list[tuple[int, dict[str, Any]]]] = field(default_factory=dict)
    metadata: dict[str, dict[str, str]] = field(default_factory=dict)
    frame_ids: dict[str, str] = field(default_factory=dict)
    size_bytes: int = 0
    complete: bool = False
    unreadable_bytes: int = 0
    error: str = ""
    rejected: dict[str, int] = field(default_factory=dict)

    @property
    def problem(self) -> str:
        """Where and why reading stopped early, or '' for a clean log."""
        if self.error:
            return f"damaged: {self.error}; read up to there"
        if self.unreadable_bytes:
            end = self.size_bytes - self.unreadable_bytes
            return (f"not closed cleanly: readable up to byte {end} of {self.size_bytes}, "
                    f"{self.unreadable_bytes} bytes at the end unreadable")
        return ""


def _read_log(path: Path, topics: Iterable[str] | None) -> _LogContent:
    content = _LogContent(size_bytes=path.stat().st_size)
    reader = LogReader(path)
    try:
        for msg in reader.messages(topics):
            content.messages.setdefault(msg.topic, []).append((msg.header.stamp_ns, msg.data))
            content.frame_ids.setdefault(msg.topic, msg.header.frame_id)
    except Exception as exc:  # a damaged file makes the MCAP, msgpack and decompression libraries raise their own types
        if not content.messages:
            raise EpisodeError(f"{path}: unreadable: {type(exc).__name__}: {exc}") from exc
        content.error = f"{type(exc).__name__}: {exc} (after {sum(map(len, content.messages.values()))} messages)"
    content.metadata = dict(reader.metadata)
    content.complete = reader.complete
    content.unreadable_bytes = reader.unreadable_bytes
    content.error = content.error or reader.error
    content.rejected = dict(reader.rejected)
    return content


def _robot_of(metadata: Mapping[str, Mapping[str, str]], path: Path) -> RobotDescription | None:
    """The robot description a log carries (``robot.description_yaml``), or None."""
    text = metadata.get("robot", {}).get("description_yaml")
    if not text:
        return None
    import yaml

    try:
        doc = yaml.safe_load(text)
        return robot_from_dict(doc["robot"] if isinstance(doc, Mapping) and "robot" in doc else doc)
    except (yaml.YAMLError, DescriptionError) as exc:
        raise EpisodeError(f"{path}: its robot description is invalid: {exc}") from exc


def _seed_of(metadata: Mapping[str, Mapping[str, str]]) -> int | None:
    """The episode's world seed from its metadata, or None (an imported log)."""
    for record, key in (("episode", "world_seed"), ("episode", "seed"), ("world", "seed")):
        value = metadata.get(record, {}).get(key)
        if value is not None:
            try:
                return int(value)
            except ValueError:
                continue
    return None


def _log_control_hz(episode_record: Mapping[str, str], path: Path) -> float:
    """The control rate a log's ``episode`` record states, else :data:`DEFAULT_CONTROL_HZ`."""
    raw = episode_record.get("control_hz")
    if raw is None:
        return DEFAULT_CONTROL_HZ
    try:
        hz = float(raw)
    except ValueError:
        hz = math.nan
    if not (math.isfinite(hz) and hz > 0):
        raise EpisodeError(f"{path}: its episode record states control_hz = {raw!r}, not a rate > 0")
    return hz


def _gym_spec(content: _LogContent, path: Path) -> ObservationSpec:
    obs = content.messages.get(_GYM_OBS_TOPIC, [])
    actions = content.messages.get(_GYM_ACTION_TOPIC, [])
    if not obs or not actions:
        raise EpisodeError(f"{path}: a gym adapter log needs {_GYM_OBS_TOPIC} and {_GYM_ACTION_TOPIC} messages")
    return ObservationSpec(
        obs_dim=int(np.asarray(obs[0][1]["observation"]).shape[0]),
        action_dim=int(np.asarray(actions[0][1]["action"]).shape[0]),
        topics={"obs": _GYM_OBS_TOPIC, "action": _GYM_ACTION_TOPIC},
    )


def _drop(events: list[tuple[int, dict[str, Any]]], prob: float, rng: np.random.Generator) -> list[tuple[int, dict[str, Any]]]:
    keep = rng.random(len(events)) >= prob
    return [e for e, k in zip(events, keep) if k]


def _grid(first_ns: int, last_ns: int, phase_ns: int | None, period_ns: int, path: Path) -> np.ndarray:
    """Tick times (T,) int64, ``period_ns`` apart, from the first tick at or before ``first_ns`` on the phase of
    ``phase_ns`` (a control-loop tick; ``first_ns`` itself when None) up to the last at or before ``last_ns``."""
    start = first_ns
    if phase_ns is not None:
        start = phase_ns - -(-(phase_ns - first_ns) // period_ns) * period_ns
    span_s = (last_ns - start) / _NS
    if span_s > _MAX_SPAN_S:
        raise EpisodeError(f"{path}: its stamps span {span_s:.0f} s (> {_MAX_SPAN_S:.0f} s): a broken clock, or split the log")
    return start + period_ns * np.arange((last_ns - start) // period_ns + 1, dtype=np.int64)


def _pose(ticks: np.ndarray, truth: list[tuple[int, dict[str, Any]]], max_gap_ns: int) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth pose (T, 3) and mask (T,) at the ticks: exact, or interpolated across gaps <= max_gap_ns."""
    pose = np.zeros((ticks.shape[0], 3), np.float32)
    mask = np.zeros(ticks.shape[0], np.float32)
    if not truth:
        return pose, mask
    truth = sorted(truth, key=lambda e: e[0])
    stamps = np.array([s for s, _ in truth], np.int64)
    stamps, first = np.unique(stamps, return_index=True)
    xyz = np.array([(d["x_m"], d["y_m"], d["yaw_rad"]) for _, d in truth], np.float64)[first]
    a = np.searchsorted(stamps, ticks, side="right") - 1  # latest sample at or before the tick
    b = a + 1
    exact = (a >= 0) & (stamps[np.clip(a, 0, None)] == ticks)
    inner = (a >= 0) & (b < stamps.shape[0]) & ~exact
    ai, bi = np.clip(a, 0, None), np.clip(b, 0, stamps.shape[0] - 1)
    gap = stamps[bi] - stamps[ai]
    inner &= gap <= max_gap_ns
    w = np.where(inner, (ticks - stamps[ai]) / np.maximum(gap, 1), 0.0)
    pa, pb = xyz[ai], xyz[bi]
    dyaw = (pb[:, 2] - pa[:, 2] + np.pi) % (2 * np.pi) - np.pi
    out = pa + (pb - pa) * w[:, None]
    out[:, 2] = (pa[:, 2] + dyaw * w + np.pi) % (2 * np.pi) - np.pi
    ok = exact | inner
    pose[ok] = out[ok]
    mask[ok] = 1.0
    return pose, mask


def build_episode(
    log_path: str | os.PathLike[str],
    spec: ObservationSpec | None = None,
    control_hz: float | None = None,
    *,
    max_age_s: float = 1.0,
    ground_truth_max_gap_s: float = 0.1,
    drop_prob: float = 0.0,
    drop_seed: int = 0,
) -> EpisodeArrays:
    """Align one log onto the tick grid (module docstring).

    ``spec``: the observation spec; ``None`` takes it from the log (its robot description, or a gym log's
    message shapes). ``control_hz``: ``None`` takes the log's (``episode.control_hz``, else 50 Hz). Raises
    :class:`EpisodeError` naming the file when the log yields nothing; a log readable only in part loads that
    part and says where it broke in ``meta["warning"]``.
    """
    path = Path(log_path)
    t0 = time.perf_counter()
    topics = None if spec is None else [*spec.topics.values(), _GT_TOPIC]
    try:
        content = _read_log(path, topics)
    except OSError as exc:
        raise EpisodeError(f"{path}: cannot read: {exc}") from exc
    if not content.messages:
        reason = content.problem or ("an empty file" if content.size_bytes == 0 else "it holds no messages")
        raise EpisodeError(f"{path}: nothing readable: {reason}")
    gym = (spec.obs_dim > 0) if spec is not None else _GYM_OBS_TOPIC in content.messages
    robot = _robot_of(content.metadata, path)
    episode_record = content.metadata.get("episode", {})
    if spec is None:
        if gym:
            spec = _gym_spec(content, path)
        elif robot is not None:
            try:
                spec = observation_spec(robot, control_hz or _log_control_hz(episode_record, path))
            except DescriptionError as exc:
                raise EpisodeError(f"{path}: {exc}") from exc
        else:
            raise EpisodeError(f"{path}: no robot description in the log and no gym topics: pass an ObservationSpec")
    kind_of = spec.kind_of_topic
    events_by_kind: dict[str, list[tuple[int, dict[str, Any]]]] = {kind: [] for kind in kind_of.values()}
    for topic, kind in kind_of.items():
        events_by_kind[kind] = content.messages.get(topic, [])
    if not any(events_by_kind[m] for m in spec.modalities):
        problem = content.problem or "no messages on its observation topics"
        raise EpisodeError(f"{path}: nothing to align: {problem} (topics: {sorted(content.messages)})")

    # The grid (before any simulated loss, so a lossy copy of an episode has the same ticks).
    all_stamps = [s for events in events_by_kind.values() for s, _ in events]
    first_ns, last_ns = min(all_stamps), max(all_stamps)
    if gym:
        obs_stamps = np.unique([s for s, _ in content.messages[spec.topics["obs"]]])
        diffs = np.diff(obs_stamps)
        if diffs.size:
            period_ns = int(np.median(diffs))
        else:
            period_ns = round(_NS / (control_hz or DEFAULT_CONTROL_HZ))
        ticks = _grid(int(obs_stamps[0]), int(obs_stamps[-1]), None, period_ns, path)
    else:
        period_ns = round(_NS / (control_hz or _log_control_hz(episode_record, path)))
        commands = events_by_kind["action"]
        phase = min(s for s, _ in commands) if commands else None
        ticks = _grid(first_ns, last_ns, phase, period_ns, path)
    hz = _NS / period_ns
    n_ticks = ticks.shape[0]
    dropped: dict[str, int] = {}
    if drop_prob > 0.0:
        rng = np.random.default_rng([drop_seed, zlib.crc32(path.name.encode())])
        for m in spec.modalities:
            before = len(events_by_kind[m])
            events_by_kind[m] = _drop(events_by_kind[m], drop_prob, rng)
            dropped[m] = before - len(events_by_kind[m])

    # Feed the assembler, tick by tick.
    timeout = robot.drive.command_timeout_s if (robot is not None and not gym) else math.inf
    assembler = TickAssembler(spec, hz, max_age_s, action_timeout_s=timeout)
    events = sorted(((s, kind, d) for kind, evs in events_by_kind.items() for s, d in evs), key=lambda e: e[0])
    held_kinds = [m for m in ("lidar", "depth") if m in spec.modalities]
    dense_keys = [k for k in assembler.out if k not in held_kinds]
    data = {k: np.zeros((n_ticks, *assembler.out[k].shape), np.float32) for k in dense_keys}
    frames = {m: np.zeros((len(events_by_kind[m]), *spec.shape(m)), np.float32) for m in held_kinds}
    index = {m: np.full(n_ticks, -1, np.int32) for m in held_kinds}
    count = {m: 0 for m in held_kinds}
    out = assembler.out
    i, n_events = 0, len(events)
    for k in range(n_ticks):
        t = int(ticks[k])
        while i < n_events and events[i][0] <= t:
            stamp, kind, payload = events[i]
            assembler.add(kind, stamp, payload)
            i += 1
        assembler.tick(t)
        for key in dense_keys:
            data[key][k] = out[key]
        for m in held_kinds:
            if out[f"{m}_mask"]:
                frames[m][count[m]] = out[m]
                count[m] += 1
            index[m][k] = count[m] - 1
    data["valid"] = np.ones(n_ticks, np.float32)
    held = {m: (frames[m][: count[m]], index[m]) for m in held_kinds}

    if gym:
        reward = np.zeros(n_ticks, np.float32)
        done = np.zeros(n_ticks, np.float32)
        truncated = np.zeros(n_ticks, np.float32)
        for stamp, d in content.messages[spec.topics["obs"]]:
            k = int(round((stamp - int(ticks[0])) / period_ns))
            if 0 <= k < n_ticks:
                reward[k] = d["reward"]
                done[k] = float(bool(d["terminated"]))
                truncated[k] = float(bool(d["truncated"]))
        data.update(reward=reward, done=done, truncated=truncated)
    else:
        pose_topic = episode_record.get("pose_topic", _GT_TOPIC)
        data["pose"], data["pose_mask"] = _pose(ticks, content.messages.get(pose_topic, []), round(ground_truth_max_gap_s * _NS))

    warning = content.problem
    if warning:
        log.warning("%s: %s; its readable part loads", path, warning)
    meta = {
        "source": str(path.resolve()),
        "file": path.name,
        "builder_version": BUILDER_VERSION,
        "kind": "gym" if gym else "robot",
        "seed": _seed_of(content.metadata),
        "world": dict(content.metadata.get("world", {})),
        "robot": robot.name if robot is not None else content.frame_ids.get(_GYM_OBS_TOPIC, ""),
        "robot_description": content.metadata.get("robot", {}).get("description_yaml", ""),
        "policy": episode_record.get("policy", ""),
        "episode": dict(episode_record),
        "duration_s": (n_ticks - 1) * period_ns / _NS,
        "control_hz": hz,
        "ticks": n_ticks,
        "start_ns": int(ticks[0]),
        "spec": spec.to_dict(),
        "max_age_s": max_age_s,
        "ground_truth_max_gap_s": ground_truth_max_gap_s,
        "drop_prob": drop_prob,
        "drop_seed": drop_seed,
        "dropped": dropped,
        "messages": {topic: len(msgs) for topic, msgs in sorted(content.messages.items())},
        "assembler": {kind: dataclasses.asdict(s) for kind, s in assembler.stats.items()},
        "log": {
            "size_bytes": content.size_bytes,
            "complete": content.complete,
            "unreadable_bytes": content.unreadable_bytes,
            "error": content.error,
            "rejected": content.rejected,
        },
        "warning": warning,
        "build_s": time.perf_counter() - t0,
    }
    rejected = {k: s.malformed + s.non_finite for k, s in assembler.stats.items() if s.malformed + s.non_finite}
    if rejected:
        log.warning("%s: messages rejected by the assembler (wrong shape or non-finite): %s", path, rejected)
    return EpisodeArrays(ticks, data, held, meta)


# --------------------------------------------------------------------------------------------------------------
# Cache files.


def save_episode(episode: EpisodeArrays, path: str | os.PathLike[str]) -> None:
    """Write ``episode`` to ``path`` (.npz, uncompressed for fast loading), atomically."""
    payload: dict[str, np.ndarray] = {"ticks_ns": episode.ticks_ns, "meta": np.array(json.dumps(episode.meta))}
    payload.update({f"d__{k}": v for k, v in episode.data.items()})
    for key, (frames, index) in episode.held.items():
        payload[f"f__{key}"], payload[f"i__{key}"] = frames, index
    atomic_write(path, lambda f: np.savez(f, **payload), fsync=False)  # a cache: rebuilt if lost


def _read_meta(path: Path) -> dict[str, Any]:
    with np.load(path, allow_pickle=False) as z:
        return json.loads(str(z["meta"]))


def load_episode(path: str | os.PathLike[str]) -> EpisodeArrays:
    """Read an episode written by :func:`save_episode`."""
    with np.load(Path(path), allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        data = {name[3:]: z[name] for name in z.files if name.startswith("d__")}
        held = {name[3:]: (z[name], z[f"i__{name[3:]}"]) for name in z.files if name.startswith("f__")}
        return EpisodeArrays(z["ticks_ns"], data, held, meta)


def _fingerprint(path: Path) -> dict[str, Any]:
    """What identifies a log's content cheaply: size, mtime and a hash of its first and last 64 KiB."""
    stat = path.stat()
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        digest.update(f.read(_FINGERPRINT_BYTES))
        if stat.st_size > _FINGERPRINT_BYTES:
            f.seek(max(stat.st_size - _FINGERPRINT_BYTES, _FINGERPRINT_BYTES))
            digest.update(f.read())
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256_ends": digest.hexdigest()}


def _params_key(spec: ObservationSpec | None, config: DatasetConfig) -> str:
    """Hash of everything besides the log that determines an episode's arrays."""
    doc = {
        "builder": BUILDER_VERSION,
        "spec": None if spec is None else spec.to_dict(),
        "control_hz": config.control_hz,
        "max_age_s": config.max_age_s,
        "ground_truth_max_gap_s": config.ground_truth_max_gap_s,
        "drop_prob": config.drop_prob,
        "drop_seed": config.drop_seed,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:12]


def _cached(path: Path, fingerprint: Mapping[str, Any]) -> EpisodeArrays | None:
    """The cached episode at ``path`` if it was built from this very log by this builder version, else None."""
    if not path.is_file():
        return None
    try:
        meta = _read_meta(path)
        if meta.get("cache_key") != fingerprint or meta.get("builder_version") != BUILDER_VERSION:
            return None
        return load_episode(path)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        log.warning("%s: unreadable cache file (%s): rebuilding it", path, exc)
        return None


# --------------------------------------------------------------------------------------------------------------
# Normalization statistics.


class _StatsAccumulator:
    """Per-channel sums over episodes (float64), for :class:`NormStats`."""

    def __init__(self) -> None:
        self._sum: dict[str, np.ndarray] = {}
        self._sq: dict[str, np.ndarray] = {}
        self._n: dict[str, int] = {}

    def _add(self, key: str, values: np.ndarray) -> None:
        """``values`` (M, C): M samples of C channels."""
        if values.shape[0] == 0:
            return
        v = values.astype(np.float64)
        if key not in self._sum:
            self._sum[key] = np.zeros(v.shape[1])
            self._sq[key] = np.zeros(v.shape[1])
            self._n[key] = 0
        self._sum[key] += v.sum(axis=0)
        self._sq[key] += np.square(v).sum(axis=0)
        self._n[key] += v.shape[0]

    def add_episode(self, ep: EpisodeArrays) -> None:
        """Add the real samples of one episode: each scan and frame once, IMU and odometry where their
        masks are 1 (new data), depth returns only (0 is "no return", not a distance), every tick's action."""
        if "lidar" in ep.held:
            self._add("lidar", ep.held["lidar"][0].reshape(-1, 1))
        if "depth" in ep.held:
            frames = ep.held["depth"][0]
            self._add("depth", frames[frames > 0].reshape(-1, 1))
        if "imu" in ep.data:
            self._add("imu", ep.data["imu"][ep.data["imu_mask"] > 0].reshape(-1, IMU_CHANNELS))
        for key in ("odom", "obs"):
            if key in ep.data:
                self._add(key, ep.data[key][ep.data[f"{key}_mask"] > 0])
        self._add("action", ep.data["action"])
        if "reward" in ep.data:
            self._add("reward", ep.data["reward"].reshape(-1, 1))

    def result(self) -> NormStats | None:
        if not self._n:
            return None
        mean, std = {}, {}
        for key, n in self._n.items():
            m = self._sum[key] / n
            s = np.sqrt(np.maximum(self._sq[key] / n - m * m, 0.0))
            mean[key] = m.astype(np.float32)
            std[key] = np.where(s < _MIN_STD, 1.0, s).astype(np.float32)
        return NormStats(mean, std, dict(self._n))


# --------------------------------------------------------------------------------------------------------------
# A dataset.


def _log_paths(logs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[Path]:
    if isinstance(logs, (str, os.PathLike)):
        root = Path(logs)
        if root.is_dir():
            return sorted(root.glob("*.mcap"))
        return [root]
    return [Path(p) for p in logs]


def build_dataset(
    logs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    cache_dir: str | os.PathLike[str],
    config: DatasetConfig = DatasetConfig(),
    spec: ObservationSpec | None = None,
) -> dict[str, Any]:
    """Build (or reuse) the cache of every log in ``logs`` (a folder of ``*.mcap``, one file, or a list) in
    ``cache_dir``, split the episodes, compute the train split's normalization statistics, and return the
    report (also written to ``cache_dir/dataset.json``; statistics to ``cache_dir/stats.json``).

    ``spec``: the observation spec for every log; ``None`` takes each log's own, and a log whose spec differs
    from the first episode's is skipped (its arrays could not be batched with the others). A log that cannot
    be read is skipped and listed with the reason; the others still load.

    A cache folder holds one dataset: ``dataset.json`` and ``stats.json`` describe its last build. Build a
    lossy copy (``drop_prob`` > 0, for robustness evaluation) into a folder of its own; it keeps the clean
    build's ticks and splits, so windows compare one to one.
    """
    t_start = time.perf_counter()
    cache = Path(cache_dir)
    (cache / _EPISODES_DIR).mkdir(parents=True, exist_ok=True)
    params = _params_key(spec, config)
    accumulator = _StatsAccumulator()
    dataset_spec = spec
    entries: list[dict[str, Any]] = []
    built_s, built = 0.0, 0
    for path in _log_paths(logs):
        entry: dict[str, Any] = {"file": str(path), "name": path.name}
        entries.append(entry)
        cache_file = cache / _EPISODES_DIR / f"{path.stem}.{params}.npz"
        try:
            fingerprint = _fingerprint(path)
            episode = _cached(cache_file, fingerprint)
            entry["cached"] = episode is not None
            if episode is None:
                t0 = time.perf_counter()
                episode = build_episode(
                    path, spec, config.control_hz, max_age_s=config.max_age_s,
                    ground_truth_max_gap_s=config.ground_truth_max_gap_s,
                    drop_prob=config.drop_prob, drop_seed=config.drop_seed,
                )
                episode.meta["cache_key"] = fingerprint
                save_episode(episode, cache_file)
                built_s += time.perf_counter() - t0
                built += 1
        except (EpisodeError, OSError) as exc:
            entry.update(status="skipped", error=str(exc))
            log.error("skipping %s", exc)
            continue
        episode_spec = episode.spec
        if dataset_spec is None:
            dataset_spec = episode_spec
        elif episode_spec != dataset_spec:
            entry.update(status="skipped", error=f"{path}: observation spec {episode_spec.to_dict()} differs from the "
                                                 f"dataset's {dataset_spec.to_dict()}")
            log.error("skipping %s", entry["error"])
            continue
        meta = episode.meta
        split = split_of(meta["seed"], path.name, config)
        entry.update(
            status="partial" if meta["warning"] else "ok",
            cache=str(cache_file.relative_to(cache)),
            split=split,
            seed=meta["seed"],
            ticks=len(episode),
            duration_s=meta["duration_s"],
            control_hz=meta["control_hz"],
            rejected={k: v for k, v in meta["assembler"].items() if v["malformed"] or v["non_finite"] or v["stale"]},
            log_rejected=meta["log"]["rejected"],
        )
        if meta["warning"]:
            entry["warning"] = meta["warning"]
        if split == "train":
            accumulator.add_episode(episode)
    stats = accumulator.result()
    if stats is None:
        log.warning("%s: no train episodes: no normalization statistics written", cache)
    else:
        write_json(cache / STATS, {"format": "oniwm.norm_stats/1", "split": "train", "stats": stats.to_dict()})
    loaded = [e for e in entries if e.get("status") in ("ok", "partial")]
    splits = {
        name: {
            "episodes": sum(1 for e in loaded if e["split"] == name),
            "ticks": sum(e["ticks"] for e in loaded if e["split"] == name),
            "seeds": sorted({e["seed"] for e in loaded if e["split"] == name and e["seed"] is not None}),
        }
        for name in SPLITS
    }
    wants_eval = config.eval_fraction > 0 or bool(config.eval_seeds)
    for name in ("train", "eval") if wants_eval else ("train",):
        if loaded and not splits[name]["episodes"]:
            log.warning("the %s split is empty: more episodes, or set dataset.eval_seeds", name)
    report = {
        "format": REPORT_FORMAT,
        "builder_version": BUILDER_VERSION,
        "logs": str(logs) if isinstance(logs, (str, os.PathLike)) else [str(p) for p in logs],
        "config": dataclasses.asdict(config),
        "spec": None if dataset_spec is None else dataset_spec.to_dict(),
        "params_key": params,
        "episodes": entries,
        "splits": splits,
        "skipped": [{"file": e["file"], "error": e["error"]} for e in entries if e.get("status") == "skipped"],
        "partial": [{"file": e["file"], "warning": e["warning"]} for e in entries if e.get("status") == "partial"],
        "stats": STATS if stats is not None else None,
        "built": built,
        "reused": sum(1 for e in loaded if e.get("cached")),
        "build_s_per_episode": round(built_s / built, 4) if built else None,
        "elapsed_s": round(time.perf_counter() - t_start, 3),
    }
    write_json(cache / REPORT, report)
    return report


def load_report(cache_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The report :func:`build_dataset` wrote to ``cache_dir``."""
    return json.loads((Path(cache_dir) / REPORT).read_text())


def load_stats(cache_dir: str | os.PathLike[str]) -> NormStats:
    """The train split's normalization statistics written by :func:`build_dataset`."""
    doc = json.loads((Path(cache_dir) / STATS).read_text())
    return NormStats.from_dict(doc["stats"])


class SequenceDataset:
    """Fixed-length windows of episodes, as dicts of float32 torch tensors (a map-style torch dataset).

    ``source``: a cache folder written by :func:`build_dataset` (its episodes of ``split``; ``None``: all), or
    a sequence of :class:`EpisodeArrays` (all used; ``split`` does not apply). Windows of ``seq_len`` ticks
    start every ``stride`` ticks (default ``seq_len``) and lie wholly inside their episode; an episode shorter
    than ``seq_len`` gives one window, zero-padded, with ``valid`` 0 on the padding (the only place ``valid``
    is 0). ``keys``: the per-tick keys to return (default all).

    An item: each key as a (seq_len, ...) tensor, plus ``episode`` and ``start`` (int64 scalars: the window's
    episode in :attr:`episodes` and its first tick). A ``DataLoader`` stacks items to (B, seq_len, ...).
    Values are in physical units; normalizing is the model's job (with :func:`load_stats`).
    """

    def __init__(
        self,
        source: str | os.PathLike[str] | Sequence[EpisodeArrays],
        seq_len: int,
        stride: int | None = None,
        split: str | None = "train",
        keys: Sequence[str] | None = None,
    ) -> None:
        import torch  # noqa: F401  (fail here, not in a loader worker, when the train extra is missing)

        check_int("seq_len", seq_len, 1, 10**7)
        self.seq_len = seq_len
        self.stride = check_int("stride", seq_len if stride is None else stride, 1, 10**7)
        if isinstance(source, (str, os.PathLike)):
            if split is not None and split not in SPLITS:
                raise DescriptionError("split", split, f"must be one of {list(SPLITS)} or None")
            report = load_report(source)
            self.episodes = []
            for entry in report["episodes"]:
                if entry.get("status") in ("ok", "partial") and (split is None or entry["split"] == split):
                    episode = load_episode(Path(source) / entry["cache"])
                    episode.meta["split"] = entry["split"]
                    self.episodes.append(episode)
        else:
            self.episodes = list(source)
        self.keys = sorted({k for ep in self.episodes for k in ep.keys()}) if keys is None else list(keys)
        for i, ep in enumerate(self.episodes):
            missing = sorted(set(self.keys) - set(ep.keys()))
            if missing:
                raise KeyError(f"episode {i} ({ep.meta.get('file')}) lacks keys {missing}")
        self.windows: list[tuple[int, int]] = []
        for i, ep in enumerate(self.episodes):
            last = max(len(ep) - seq_len, 0)
            self.windows.extend((i, start) for start in range(0, last + 1, self.stride))

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, item: int) -> dict[str, Any]:
        import torch
        episode_index, start = self.windows[item]
        ep = self.episodes[episode_index]
        stop = min(start + self.seq_len, len(ep))
        window = ep.window(start, stop, self.keys)
        out: dict[str, Any] = {}
        for key, value in window.items():
            if value.shape[0] < self.seq_len:
                padded = np.zeros((self.seq_len, *value.shape[1:]), np.float32)
                padded[: value.shape[0]] = value
                value = padded
            out[key] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
        out["episode"] = torch.tensor(episode_index, dtype=torch.int64)
        out["start"] = torch.tensor(start, dtype=torch.int64)
        return out


# --------------------------------------------------------------------------------------------------------------
# Command line.


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m train.dataset --logs DIR --cache DIR [--config YAML]``: build the cache, print the summary
    (JSON). Exit status 0, or 1 when some log was skipped, 2 for a bad command line or config."""
    parser = argparse.ArgumentParser(prog="python -m train.dataset", description=__doc__.split("\n\n")[0])
    parser.add_argument("--logs", required=True, metavar="DIR", help="folder of ONI MCAP logs (or one log)")
    parser.add_argument("--cache", required=True, metavar="DIR", help="cache folder (created; reused)")
    parser.add_argument("--config", metavar="YAML", help="preset whose 'dataset' section configures the build")
    parser.add_argument("--drop-prob", type=float, default=None, metavar="P", help="simulated sensor message loss")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        raw: Mapping[str, Any] = {}
        if args.config:
            import yaml

            raw = (yaml.safe_load(Path(args.config).read_text()) or {}).get("dataset") or {}
        config = dataset_config_from_dict(raw)
        if args.drop_prob is not None:
            config = dataclasses.replace(config, drop_prob=args.drop_prob)
    except (OSError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    report = build_dataset(args.logs, args.cache, config)
    summary = {k: report[k] for k in ("splits", "skipped", "partial", "built", "reused", "build_s_per_episode", "elapsed_s")}
    sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    return 1 if report["skipped"] else 0


if __name__ == "__main__":
    sys.exit(main())
