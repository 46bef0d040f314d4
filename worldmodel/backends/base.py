"""The backend interface: the world model's two hot-path verbs behind one numpy-in, numpy-out contract.

Every backend (``torch`` eager, ``onnxruntime``, ``tensorrt``) implements :class:`Backend`:

- :meth:`Backend.observe` ``(state, obs, prev_action (A,), dt_s) -> BeliefState``: the belief update at one
  control tick, batch 1. ``obs`` is one tick of :class:`worldmodel.observation.TickAssembler` output: per modality
  ``name`` (*shape) raw values in physical units, ``name_mask`` () (IMU: (K,)) and ``name_age`` () seconds.
- :meth:`Backend.rollout` ``(state, actions (N, H, A), dt_s) -> Predictions``: the planner's batched imagination
  from the current belief (prior mean, every step lasting ``dt_s``), decoded to what the task cost reads.

Arrays are float32. Outputs live in buffers the backend allocates once: the :class:`BeliefState` returned by
``observe`` is overwritten by a later ``observe`` (passing it straight back in is always valid: the update reads
one buffer and writes another), and the :class:`Predictions` of ``rollout`` by the next ``rollout``; ``copy()``
what must outlive that. Inputs are checked once per new array object, not per call: the runtime hands the same
preallocated arrays every tick (``TickAssembler.out``, the planner's sample buffer), which the compiled backends
then read in place.

:class:`IOSpec` is the one place that derives the tensor layout (names, shapes, order) from a model config;
the exporter writes it into ``metadata.json`` (:data:`METADATA_FILE`) and the backends read it back with
:func:`read_export_metadata`.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

__all__ = [
    "BACKEND_NAMES",
    "EXPORT_FORMAT",
    "METADATA_FILE",
    "PREDICTION_NAMES",
    "TENSORRT_HINT",
    "Backend",
    "BackendConfig",
    "BackendUnavailable",
    "BeliefState",
    "ExportError",
    "IOSpec",
    "PredictionBuffers",
    "Predictions",
    "check_actions",
    "check_sizes",
    "float32_input",
    "positive_finite",
    "read_export_metadata",
    "require_extra",
]

#: Backends by name (``worldmodel.backends.BACKENDS`` maps each to its factory).
BACKEND_NAMES = ("torch", "onnxruntime", "tensorrt")
#: The export directory's metadata file, and the format string it carries.
METADATA_FILE = "metadata.json"
EXPORT_FORMAT = "oniwm.export/1"
#: Outputs of the rollout, in graph order: per-step LiDAR mean/std (N, H, beams) m, and the integrated pose
#: relative to the pose at imagination start, mean/std (N, H, 3) as [x m, y m, yaw rad] (yaw not wrapped).
PREDICTION_NAMES = ("lidar_mean_m", "lidar_std_m", "pose_mean", "pose_std")
#: What to do when TensorRT is missing: said by every TensorRT code path and skipped tests.
TENSORRT_HINT = "tensorrt not installed: pip install oni-worldmodel[tensorrt] on a machine with an NVIDIA GPU"


class BackendUnavailable(ImportError):
    """A backend's optional dependency (or its hardware) is missing; the message names the extra to install."""


class ExportError(RuntimeError):
    """An export directory is missing, incomplete, or does not match what the caller expects; says which."""


def require_extra(module: str, extra: str, purpose: str, hint: str | None = None) -> ModuleType:
    """``import module`` or raise :class:`BackendUnavailable` naming the pip extra that provides it.

    The one helper every optional import of the backends and the exporter goes through, so the error always
    says what to install (``hint`` replaces the default message, e.g. to add "on a machine with a GPU")."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        message = hint or f"{module} not installed: pip install 'oni-worldmodel[{extra}]'"
        raise BackendUnavailable(f"{purpose}: {message} ({exc})") from exc


@dataclass
class BeliefState:
    """The belief at batch 1: ``deter`` (1, D) and ``stoch`` (1, Z), float32, C-contiguous."""

    deter: np.ndarray
    stoch: np.ndarray

    def copy(self) -> BeliefState:
        """An independent copy (a state a backend returned is overwritten by a later ``observe``)."""
        return BeliefState(self.deter.copy(), self.stoch.copy())


@dataclass
class Predictions:
    """A rollout of N action sequences x H steps, decoded (float32; see :data:`PREDICTION_NAMES`).

    ``lidar_mean_m``/``lidar_std_m`` (N, H, beams): predicted ranges and their std after each step, metres (the
    range a return would have, also for beams now out of range). ``pose_mean``/``pose_std`` (N, H, 3): the pose
    after each step relative to the pose at imagination start, ``[x m, y m, yaw rad]``, with the first-order
    propagated std (``worldmodel.model.relative_trajectory``).
    """

    lidar_mean_m: np.ndarray
    lidar_std_m: np.ndarray
    pose_mean: np.ndarray
    pose_std: np.ndarray

    def copy(self) -> Predictions:
        return Predictions(*(np.array(getattr(self, f.name)) for f in dataclasses.fields(self)))


@dataclass(frozen=True)
class IOSpec:
    """The tensor layout of both graphs, derived from a model config (:meth:`from_model_config`) only.

    ``obs``: per-tick observation inputs ``(name, shape)`` in graph order: per modality its value, ``_mask`` and
    ``_age``, shaped as one tick of ``TickAssembler`` output (no batch dim). ``deter``/``stoch``/``action_dim``:
    widths. ``lidar``: the ranges modality the rollout decodes; ``beam_stride`` k: it decodes every k-th beam
    (0, k, 2k, ...; the head's output rows for the others are never computed, so the kept beams are exactly the
    full head's), ``beams`` how many that is. ``horizon`` H: steps of a rollout (fixed in the graph: the loop is
    unrolled). ``max_samples``: the largest N buffers are sized for.
    """

    obs: tuple[tuple[str, tuple[int, ...]], ...]
    deter: int
    stoch: int
    action_dim: int
    lidar: str
    beams: int
    horizon: int
    max_samples: int
    beam_stride: int = 1

    @classmethod
    def from_model_config(cls, config: Any, horizon: int, max_samples: int, beam_stride: int = 1) -> IOSpec:
        """From a :class:`worldmodel.model.ModelConfig`; raises :class:`ExportError` when the model cannot feed
        the planner (the rollout decodes one ranges modality and the pose head)."""
        ranges = [m for m in config.modalities if m.kind == "ranges"]
        if len(ranges) != 1 or not config.pose_head:
            raise ExportError(f"the planner's rollout decodes one ranges modality (LiDAR) and the pose head; this model "
                              f"has ranges modalities {[m.name for m in ranges]} and pose_head={config.pose_head}")
        if horizon < 1 or max_samples < 1 or beam_stride < 1:
            raise ExportError(f"horizon ({horizon}), max_samples ({max_samples}) and beam_stride ({beam_stride}) "
                              "must be >= 1")
        obs: list[tuple[str, tuple[int, ...]]] = []
        for m in config.modalities:
            obs.append((m.name, tuple(m.shape)))
            obs.append((f"{m.name}_mask", (m.shape[0],) if m.has_sample_mask else ()))
            obs.append((f"{m.name}_age", ()))
        beams = len(range(0, int(ranges[0].shape[0]), int(beam_stride)))
        return cls(tuple(obs), int(config.deter), int(config.stoch), int(config.action_dim), ranges[0].name,
                   beams, int(horizon), int(max_samples), int(beam_stride))

    def observe_inputs(self) -> list[tuple[str, tuple[int, ...]]]:
        """The belief-update graph's inputs in order: state, previous action, dt, then :attr:`obs`, each with a
        leading batch dim of 1 (a backend binds a tick's (*shape) array to its (1, *shape) input as is: same bytes;
        unsqueezing inside the graph would cost a node per input)."""
        return [("deter", (1, self.deter)), ("stoch", (1, self.stoch)), ("prev_action", (1, self.action_dim)),
                ("dt_s", (1,)), *((name, (1, *shape)) for name, shape in self.obs)]

    def observe_outputs(self) -> list[tuple[str, tuple[int, ...]]]:
        return [("deter_out", (1, self.deter)), ("stoch_out", (1, self.stoch))]

    def rollout_inputs(self, n: int | str = "N") -> list[tuple[str, tuple[int | str, ...]]]:
        """The rollout graph's inputs; ``n`` the batch (a name for the dynamic axis)."""
        return [("deter", (1, self.deter)), ("stoch", (1, self.stoch)), ("actions", (n, self.horizon, self.action_dim)),
                ("dt_s", (1,))]

    def rollout_outputs(self, n: int | str = "N") -> list[tuple[str, tuple[int | str, ...]]]:
        lidar, pose = (n, self.horizon, self.beams), (n, self.horizon, 3)
        return list(zip(PREDICTION_NAMES, (lidar, lidar, pose, pose)))

    def to_dict(self) -> dict[str, Any]:
        return {"obs": [[name, list(shape)] for name, shape in self.obs], "deter": self.deter, "stoch": self.stoch,
                "action_dim": self.action_dim, "lidar": self.lidar, "beams": self.beams, "horizon": self.horizon,
                "max_samples": self.max_samples, "beam_stride": self.beam_stride}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> IOSpec:
        obs = tuple((str(name), tuple(int(s) for s in shape)) for name, shape in raw["obs"])
        return cls(obs, int(raw["deter"]), int(raw["stoch"]), int(raw["action_dim"]), str(raw["lidar"]),
                   int(raw["beams"]), int(raw["horizon"]), int(raw["max_samples"]), int(raw.get("beam_stride", 1)))


@dataclass(frozen=True)
class BackendConfig:
    """Which backend the runtime uses and what it loads (the ``backend:`` section of a runtime config).

    ``name``: one of :data:`BACKEND_NAMES`. ``checkpoint``: a checkpoint or run directory (``torch``).
    ``export_dir``: the output of ``oniwm export`` (``onnxruntime``: its ``.onnx`` graphs; ``tensorrt``: its
    engines). ``horizon`` H, ``max_samples`` N and ``beam_stride`` (decode every k-th LiDAR beam) of the rollout
    (a compiled backend checks them against its export). ``threads``: intra-op threads of the rollout (0: every core); ``observe_threads``: of the batch-1
    belief update, where a second thread costs more in hand-off than it saves (default 1).
    """

    name: str = "torch"
    checkpoint: str = ""
    export_dir: str = ""
    horizon: int = 10
    max_samples: int = 256
    beam_stride: int = 1
    threads: int = 0
    observe_threads: int = 1

    def __post_init__(self) -> None:
        if self.name not in BACKEND_NAMES:
            raise ValueError(f"backend.name {self.name!r} is not one of {list(BACKEND_NAMES)}")
        for field in ("horizon", "max_samples", "beam_stride", "observe_threads"):
            if int(getattr(self, field)) < 1:
                raise ValueError(f"backend.{field} must be >= 1, got {getattr(self, field)}")
        if self.threads < 0:
            raise ValueError(f"backend.threads must be >= 0 (0: every core), got {self.threads}")

    @property
    def rollout_threads(self) -> int:
        """``threads``, with 0 resolved to the cores this process may run on."""
        if self.threads:
            return self.threads
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@runtime_checkable
class Backend(Protocol):
    """What the runtime and the planner call; see the module docstring for the buffer contract."""

    #: The backend's registry name.
    name: str
    #: The tensor layout it was built for.
    io: IOSpec

    def initial_state(self) -> BeliefState:
        """The belief before any observation (zeros), in a fresh buffer owned by the caller."""
        ...

    def observe(self, state: BeliefState, obs: Mapping[str, np.ndarray], prev_action: np.ndarray, dt_s: float) -> BeliefState:
        """Belief update at batch 1: the transition under ``prev_action`` (A,) over ``dt_s`` seconds, then the
        posterior mean given one tick of ``obs`` (see the module docstring)."""
        ...

    def rollout(self, state: BeliefState, actions: np.ndarray, dt_s: float) -> Predictions:
        """Imagine ``actions`` (N, H, A) (N <= ``io.max_samples``, H = ``io.horizon``, physical units) from
        ``state``, each step lasting ``dt_s`` seconds; the predictions after each step."""
        ...


def read_export_metadata(export_dir: str | Path) -> dict[str, Any]:
    """``export_dir/metadata.json``, checked for format; raises :class:`ExportError` naming what is wrong."""
    path = Path(export_dir) / METADATA_FILE
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise ExportError(f"{path}: missing; make the directory with "
                          f"`oniwm export --checkpoint RUN --out {export_dir}`") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ExportError(f"{path}: unreadable ({exc})") from exc
    if meta.get("format") != EXPORT_FORMAT:
        raise ExportError(f"{path}: format {meta.get('format')!r}, this code reads {EXPORT_FORMAT!r}; re-export")
    return meta


def check_sizes(io: IOSpec, config: BackendConfig, where: str) -> None:
    """Raise :class:`ExportError` when ``config`` asks for a horizon or batch the export ``io`` cannot serve."""
    if config.horizon != io.horizon:
        raise ExportError(f"{where}: exported for horizon {io.horizon}, backend.horizon is {config.horizon}; "
                          f"re-export with --horizon {config.horizon} or set backend.horizon: {io.horizon}")
    if config.beam_stride != io.beam_stride:
        raise ExportError(f"{where}: exported decoding every {io.beam_stride}th LiDAR beam, backend.beam_stride is "
                          f"{config.beam_stride}; re-export with --beam-stride {config.beam_stride} or set "
                          f"backend.beam_stride: {io.beam_stride}")
    if config.max_samples > io.max_samples:
        raise ExportError(f"{where}: exported for at most {io.max_samples} samples, backend.max_samples is "
                          f"{config.max_samples}; re-export with --max-samples {config.max_samples}")


def positive_finite(value: float, name: str) -> float:
    """``value`` as a float, or ``ValueError`` when it is not a finite positive number (dt must be > 0)."""
    value = float(value)
    if not (math.isfinite(value) and value > 0.0):
        raise ValueError(f"{name} = {value!r}: must be a finite number > 0")
    return value


def float32_input(value: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    """``value`` as a C-contiguous float32 array of ``shape`` (the same object when it already is one, so a
    backend may read it in place), or ``ValueError`` naming the input."""
    array = np.asarray(value, dtype=np.float32, order="C")
    if array.shape != shape:
        raise ValueError(f"{name} has shape {array.shape}, the model takes {shape}")
    return array


def check_actions(actions: np.ndarray, io: IOSpec) -> int:
    """N of ``actions`` (N, H, A), or ``ValueError`` naming what does not fit the rollout."""
    shape = np.shape(actions)
    if len(shape) != 3 or tuple(shape[1:]) != (io.horizon, io.action_dim) or not 1 <= shape[0] <= io.max_samples:
        raise ValueError(f"actions have shape {tuple(shape)}; the rollout takes (N, {io.horizon}, {io.action_dim}) "
                         f"with 1 <= N <= {io.max_samples}")
    return int(shape[0])


class PredictionBuffers:
    """The rollout's outputs, allocated once at (max_samples, H, ...), and :class:`Predictions` views of their
    first N rows (one object, rebuilt only when N changes)."""

    def __init__(self, io: IOSpec, arrays: Sequence[np.ndarray] | None = None) -> None:
        """``arrays``: buffers to use (e.g. page-locked ones) in :data:`PREDICTION_NAMES` order; default: new ones."""
        shapes = dict(io.rollout_outputs(io.max_samples))
        if arrays is None:
            arrays = [np.zeros(shapes[name], np.float32) for name in PREDICTION_NAMES]
        for name, array in zip(PREDICTION_NAMES, arrays):
            if array.shape != shapes[name] or array.dtype != np.float32:
                raise ValueError(f"prediction buffer {name}: {array.dtype}{array.shape}, expected float32{shapes[name]}")
        self.full = Predictions(*arrays)
        self._n = io.max_samples
        self._view = self.full

    def arrays(self) -> tuple[np.ndarray, ...]:
        """The full buffers in :data:`PREDICTION_NAMES` order."""
        return tuple(getattr(self.full, name) for name in PREDICTION_NAMES)

    def view(self, n: int) -> Predictions:
        if n != self._n:
            self._n = n
            self._view = Predictions(*(a[:n] for a in self.arrays()))
        return self._view
