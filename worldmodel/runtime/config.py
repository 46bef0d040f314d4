"""The runtime's typed configuration: the ``runtime:`` section of a preset.

Example (``configs/hallway.yaml``)::

    runtime:
      rate_hz: 50
      model: default                 # the shipped model; or a checkpoint / run / export directory
      backend: {name: onnxruntime, threads: 1}
      critical_sensors: {lidar: 0.5, odom: 0.2}
      max_consecutive_misses: 5
      horizons_s: [0.5, 1.0, 2.0]
      trigger: odom

Every field is checked at construction; an error names the field (``runtime.<name>``) and what it must be.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from worldmodel.backends.base import BACKEND_NAMES
from worldmodel.observation import MODALITIES
from worldmodel.planner.route import RouteGoalConfig

__all__ = ["RuntimeConfig", "RuntimeConfigError", "runtime_config_from_dict"]


class RuntimeConfigError(ValueError):
    """A ``runtime:`` value is invalid; the message names the field and what it must be."""


@dataclass(frozen=True)
class RuntimeConfig:
    """Settings of :class:`worldmodel.runtime.Runtime`.

    - ``rate_hz``: control rate; tick k is due at ``start + k / rate_hz`` (deadline-scheduled, never
      ``sleep(period)``). A tick that ends after the next one is due is a deadline miss.
    - ``model``: ``default`` (the model shipped in ``worldmodel/models/hallway``) or a directory: a checkpoint or
      run (``torch``), or an ``oniwm export`` output (``onnxruntime``, ``tensorrt``).
    - ``backend``: ``name`` (``torch``, ``onnxruntime``, ``tensorrt``), ``threads`` of the rollout (0: every
      core), ``observe_threads``, ``beam_stride`` (the planner's rollout decodes every k-th LiDAR beam; a compiled
      backend's export must have been made with the same ``--beam-stride``).
    - ``max_age_s``: sensor ages are clipped to this (as in training); ``action_timeout_s``: a command older than
      this counts as zero (None: the robot description's drive timeout).
    - ``critical_sensors``: modality -> staleness limit (s). While one's newest message is older than its limit
      (or none has come yet) the runtime commands a stop and says which sensor, and drives again when it is fresh.
    - ``max_consecutive_misses`` K: K deadline misses in a row command a stop, held until ``recover_s`` of
      on-time ticks have passed.
    - ``horizons_s``: horizons of ``prediction.lidar`` / ``prediction.pose`` (within the planner's horizon;
      predictions between steps are linearly interpolated).
    - ``trigger``: a modality whose messages the ticks are phase-locked to (each tick starts ``trigger_margin_ms``
      after one is published, so the command goes out right after the reading it answers; ``""``: free-running).
    - ``output_endpoint``: where the runtime's publisher of ``model.latent_state``, ``prediction.*`` and
      ``diag.runtime`` binds; ``info_file``: the JSON naming it (and the runtime's pid) for viewers and loggers.
    - ``route``: :class:`~worldmodel.planner.route.RouteGoalConfig`, the goal point along ``nav.route``.
    - ``status_interval_s``: wall time between status callbacks.
    - ``realtime_priority``: run the loop at this ``SCHED_FIFO`` priority (1-99), as a robot's control loop would
      (needs CAP_SYS_NICE; where it is refused, the loop runs at normal priority and the report says so); 0: normal.
    """

    rate_hz: float = 50.0
    model: str = "default"
    backend: Mapping[str, Any] = field(default_factory=lambda: {"name": "onnxruntime", "threads": 1, "beam_stride": 4})
    max_age_s: float = 1.0
    action_timeout_s: float | None = None
    critical_sensors: Mapping[str, float] = field(default_factory=lambda: {"lidar": 0.5, "odom": 0.2})
    max_consecutive_misses: int = 5
    recover_s: float = 1.0
    horizons_s: tuple[float, ...] = (0.5, 1.0, 2.0)
    trigger: str = "odom"
    trigger_margin_ms: float = 1.0
    output_endpoint: str = "tcp://127.0.0.1:*"
    info_file: str = "~/.oni/runtime/runtime.json"
    route: RouteGoalConfig = field(default_factory=RouteGoalConfig)
    status_interval_s: float = 1.0
    realtime_priority: int = 0

    def __post_init__(self) -> None:
        _positive("rate_hz", self.rate_hz, 10_000.0)
        _positive("max_age_s", self.max_age_s, 3600.0)
        if self.action_timeout_s is not None:
            _positive("action_timeout_s", self.action_timeout_s, 3600.0)
        _positive("recover_s", self.recover_s, 3600.0)
        _positive("status_interval_s", self.status_interval_s, 3600.0)
        if not isinstance(self.model, str) or not self.model:
            raise RuntimeConfigError(f"runtime.model = {self.model!r}: 'default' or a checkpoint/export directory")
        backend = dict(self.backend or {})
        if backend.get("name", "onnxruntime") not in BACKEND_NAMES:
            raise RuntimeConfigError(f"runtime.backend.name = {backend.get('name')!r}: one of {list(BACKEND_NAMES)}")
        unknown = sorted(set(backend) - {"name", "threads", "observe_threads", "beam_stride"})
        if unknown:
            raise RuntimeConfigError(f"runtime.backend.{unknown[0]}: unknown; known: name, threads, observe_threads, "
                                     "beam_stride")
        object.__setattr__(self, "backend", backend)
        critical = dict(self.critical_sensors or {})
        for name, limit in critical.items():
            if name not in MODALITIES:
                raise RuntimeConfigError(f"runtime.critical_sensors.{name}: not a modality; known: {list(MODALITIES)}")
            _positive(f"critical_sensors.{name}", limit, 3600.0)
        object.__setattr__(self, "critical_sensors", {k: float(v) for k, v in critical.items()})
        if isinstance(self.max_consecutive_misses, bool) or not isinstance(self.max_consecutive_misses, int) \
                or self.max_consecutive_misses < 1:
            raise RuntimeConfigError(f"runtime.max_consecutive_misses = {self.max_consecutive_misses!r}: an integer >= 1")
        horizons = tuple(float(h) for h in self.horizons_s)
        if not horizons or any(not (math.isfinite(h) and h > 0) for h in horizons) or list(horizons) != sorted(set(horizons)):
            raise RuntimeConfigError(f"runtime.horizons_s = {list(self.horizons_s)}: increasing positive seconds")
        object.__setattr__(self, "horizons_s", horizons)
        if self.trigger and self.trigger not in MODALITIES:
            raise RuntimeConfigError(f"runtime.trigger = {self.trigger!r}: a modality ({list(MODALITIES)}) or ''")
        if not (math.isfinite(self.trigger_margin_ms) and 0 <= self.trigger_margin_ms < 1000.0 / self.rate_hz):
            raise RuntimeConfigError(f"runtime.trigger_margin_ms = {self.trigger_margin_ms!r}: in [0, one period)")
        if not self.output_endpoint.startswith(("tcp://", "ipc://", "inproc://")):
            raise RuntimeConfigError(f"runtime.output_endpoint = {self.output_endpoint!r}: a tcp://, ipc:// or inproc:// endpoint")
        if isinstance(self.realtime_priority, bool) or not isinstance(self.realtime_priority, int) \
                or not 0 <= self.realtime_priority <= 99:
            raise RuntimeConfigError(f"runtime.realtime_priority = {self.realtime_priority!r}: an integer in [0, 99] "
                                     "(0: normal scheduling)")
        if isinstance(self.route, Mapping):
            object.__setattr__(self, "route", _route(self.route))

    @property
    def period_ns(self) -> int:
        return round(1e9 / self.rate_hz)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["horizons_s"] = list(self.horizons_s)
        return out


def _positive(name: str, value: Any, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and 0 < value <= hi):
        raise RuntimeConfigError(f"runtime.{name} = {value!r}: a number in (0, {hi:g}]")


def _route(raw: Mapping[str, Any]) -> RouteGoalConfig:
    known = {f.name for f in dataclasses.fields(RouteGoalConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise RuntimeConfigError(f"runtime.route.{unknown[0]}: unknown; known: {sorted(known)}")
    try:
        return RouteGoalConfig(**raw)
    except (TypeError, ValueError) as exc:
        raise RuntimeConfigError(f"runtime.{exc}") from None


def runtime_config_from_dict(section: Mapping[str, Any] | None, **overrides: Any) -> RuntimeConfig:
    """A :class:`RuntimeConfig` from a preset's ``runtime:`` mapping (absent: the defaults) and keyword
    ``overrides`` (applied last); unknown keys are errors naming the known ones."""
    raw = dict(section or {})
    raw.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in dataclasses.fields(RuntimeConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise RuntimeConfigError(f"runtime.{unknown[0]}: unknown field; known: {sorted(known)}")
    if "horizons_s" in raw and not isinstance(raw["horizons_s"], (list, tuple)):
        raise RuntimeConfigError(f"runtime.horizons_s = {raw['horizons_s']!r}: a list of seconds")
    return RuntimeConfig(**raw)
