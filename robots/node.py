"""``oniwm node``: the world-model runtime as an ONI node driving one robot through its bridge.

Reads a preset (``robot``, ``planner`` and ``runtime`` sections), loads the model (``runtime.model``: the shipped
default, or a checkpoint / export directory) behind ``runtime.backend``, checks that the model, the planner and
the robot description fit together (a mismatch is refused at setup, naming it), connects to the robot's bridge
(its info file: sensors, ``nav.route``, and ``actuator.cmd`` as an allow-listed CURVE client), binds its own
output publisher (``model.latent_state``, ``prediction.*``, ``diag.runtime``; endpoint written to
``runtime.info_file``), and runs :class:`worldmodel.runtime.Runtime` until ``--duration`` or SIGINT/SIGTERM. A
status line per second on stderr; the final report as JSON on stdout (and ``--json FILE``).

The setup up to the sockets (:func:`load_runtime_parts`) is shared with the ROS 2 node and ``oniwm ros2-bridge``
(:mod:`robots.ros2.core`), which run the same runtime over in-process ONI sockets.

Example::

    oniwm node --config configs/hallway.yaml --bridge-info ~/.oni/sim/bridge.json --duration 60

Exit status: 0 after a run, 1 when a tick raised (the robot was stopped first), 2 when setup failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from oni.cli import on_stop_signals

log = logging.getLogger("robots.node")

__all__ = [
    "RUNTIME_INFO_FORMAT",
    "RUNTIME_KEY_NAME",
    "NodeSetupError",
    "RuntimeParts",
    "build_node",
    "close_runtime",
    "load_preset",
    "load_runtime_parts",
    "register",
    "run",
    "runtime_overrides",
    "setup_errors",
    "write_status",
]

#: Format tag of the runtime's info file.
RUNTIME_INFO_FORMAT = "oni.runtime/1"
#: The runtime's CURVE key pair name in the bridge's keys directory (``oniwm run`` allow-lists it).
RUNTIME_KEY_NAME = "runtime"


class NodeSetupError(RuntimeError):
    """The node cannot start; the message says what to change."""


@dataclass(frozen=True)
class RuntimeParts:
    """What a :class:`~worldmodel.runtime.Runtime` runs, loaded and checked against each other, before any socket
    exists: the robot description, the runtime config, the model behind its backend, the planner, the robot's
    observation spec and the planner's LiDAR geometry, and what the model is (``backend_name``, ``model_path``,
    ``model_id``)."""

    robot: Any
    config: Any
    backend: Any
    planner: Any
    spec: Any
    geometry: Any
    backend_name: str
    model_path: Path
    model_id: str

    def runtime(self, sensors: Any, commands: Any, outputs: Any) -> Any:
        """The :class:`~worldmodel.runtime.Runtime` over these parts, reading ``sensors`` (a subscriber of the spec's
        sensor topics and ``nav.route``), commanding through ``commands`` and publishing ``outputs``."""
        from worldmodel.runtime import Runtime

        return Runtime(self.config, self.backend, self.planner, self.spec, self.geometry, sensors, commands, outputs,
                       action_timeout_s=self.robot.drive.command_timeout_s, model_id=self.model_id,
                       no_return_m=self.robot.sensors_of_kind("lidar")[0].params.range_max_m)

    def info(self, endpoint: str) -> dict[str, Any]:
        """The runtime's info file content, its outputs published on ``endpoint``."""
        from worldmodel.runtime.loop import OUTPUT_TOPICS

        return {"format": RUNTIME_INFO_FORMAT, "pid": os.getpid(), "endpoint": endpoint, "topics": list(OUTPUT_TOPICS),
                "model": str(self.model_path), "backend": self.backend_name, "robot": self.robot.name,
                "rate_hz": self.config.rate_hz}


def runtime_overrides(preset: Mapping[str, Any], *, model: str | None = None, backend: str | None = None,
                      rate_hz: float | None = None, info_file: str | None = None) -> dict[str, Any]:
    """Overrides of ``preset``'s ``runtime`` section from command-line flags or node parameters (None / "": keep the
    preset's): ``model``, ``backend`` (the backend's name; its other settings stay), ``rate_hz``, ``info_file``."""
    section = dict(preset.get("runtime") or {})
    overrides: dict[str, Any] = {}
    if model:
        overrides["model"] = model
    if backend:
        overrides["backend"] = {**dict(section.get("backend") or {}), "name": backend}
    if rate_hz:
        overrides["rate_hz"] = rate_hz
    if info_file:
        overrides["info_file"] = info_file
    return overrides


def load_runtime_parts(preset: Mapping[str, Any], preset_dir: Path, *, overrides: Mapping[str, Any] | None = None
                       ) -> RuntimeParts:
    """The robot, model, backend and planner of ``preset`` (``robot``, ``planner`` and ``runtime`` sections; paths
    relative to ``preset_dir``), checked to fit together: a mismatch raises
    :class:`~worldmodel.runtime.RuntimeSetupError` naming it. ``overrides``: fields of the ``runtime`` section
    (:func:`runtime_overrides`). The one setup path of ``oniwm node``, the ROS 2 node and ``oniwm ros2-bridge``."""
    from robots import resolve_robot
    from robots.description import load_robot
    from robots.model_spec import observation_spec, robot_geometry
    from worldmodel.backends import BackendConfig, create_backend
    from worldmodel.models import model_paths
    from worldmodel.planner import (
        NavigationCost,
        SamplingPlanner,
        planner_config_from_dict,
    )
    from worldmodel.runtime import check_model_matches, runtime_config_from_dict

    robot = load_robot(resolve_robot(preset.get("robot"), preset_dir))
    config = runtime_config_from_dict(preset.get("runtime"), **dict(overrides or {}))
    base = robot.base
    planner_cfg = planner_config_from_dict(preset.get("planner"), action_low=(-base.max_v_mps, -base.max_omega_radps),
                                           action_high=(base.max_v_mps, base.max_omega_radps))
    backend_section = dict(config.backend)
    name = backend_section.pop("name", "onnxruntime")
    beam_stride = int(backend_section.pop("beam_stride", 1))
    checkpoint, export_dir = model_paths(config.model, preset_dir)
    backend = create_backend(BackendConfig(name=name, checkpoint=str(checkpoint), export_dir=str(export_dir),
                                           horizon=planner_cfg.horizon, max_samples=planner_cfg.samples,
                                           beam_stride=beam_stride, **backend_section))
    spec = observation_spec(robot, config.rate_hz)
    geometry = robot_geometry(robot, beam_stride)
    planner = SamplingPlanner(planner_cfg, NavigationCost(planner_cfg.cost, geometry, planner_cfg.samples,
                                                          planner_cfg.horizon, planner_cfg.action_low,
                                                          planner_cfg.action_high), backend.rollout)
    check_model_matches(backend.io, spec, geometry, planner, config.horizons_s)
    return RuntimeParts(robot, config, backend, planner, spec, geometry, name,
                        checkpoint if name == "torch" else export_dir, f"{config.model}:{name}")


def build_node(preset: Mapping[str, Any], preset_dir: Path, bridge_info: str | Path, *, overrides: Mapping[str, Any]
               | None = None, context: Any = None, wait_s: float = 10.0) -> tuple[Any, dict[str, Any]]:
    """The :class:`~worldmodel.runtime.Runtime` for ``preset`` connected to the bridge of ``bridge_info``, and its
    info file content. ``overrides``: fields of the ``runtime`` section (e.g. ``model``, ``backend``). Raises
    :class:`NodeSetupError` (or the config/setup error naming the problem)."""
    import zmq

    from oni.bridge_client import (
        connect_command_publisher,
        connect_sensor_subscriber,
        load_or_create_keys,
        read_bridge_info,
    )
    from oni.files import write_json
    from oni.transport import Publisher
    from worldmodel.runtime.loop import OUTPUT_TOPICS, ROUTE_TOPIC

    parts = load_runtime_parts(preset, preset_dir, overrides=overrides)  # checked before waiting for a robot
    spec, config = parts.spec, parts.config
    info = read_bridge_info(bridge_info, timeout_s=wait_s)
    keys = load_or_create_keys(Path(info.raw["commands"]["keys_dir"]), RUNTIME_KEY_NAME)
    topics = [spec.topics[m] for m in spec.modalities]
    offered = info.topics
    missing = [t for t in (*topics, ROUTE_TOPIC) if t not in offered]
    if missing:
        raise NodeSetupError(f"the robot's bridge does not publish {missing} (it publishes {sorted(offered)})")
    context = context or zmq.Context.instance()
    sensors = connect_sensor_subscriber(info, [*topics, ROUTE_TOPIC], context=context)
    commands = connect_command_publisher(info, keys, source="runtime", context=context)
    outputs = Publisher(config.output_endpoint, {t: "diagnostic" for t in OUTPUT_TOPICS}, source="runtime", context=context)
    runtime = parts.runtime(sensors, commands, outputs)
    node_info = parts.info(outputs.endpoint)
    write_json(Path(config.info_file).expanduser(), node_info)
    return runtime, node_info


def setup_errors() -> tuple[type[BaseException], ...]:
    """The exceptions a node's setup raises for bad input (a preset, model, robot or bridge that does not fit); each
    message names the problem. Anything else is a bug and keeps its traceback."""
    import yaml
    import zmq

    from oni.bridge_client import BridgeError
    from oni.errors import OniError
    from robots.description import DescriptionError
    from worldmodel.backends import BackendUnavailable, ExportError
    from worldmodel.planner import PlannerConfigError
    from worldmodel.runtime import RuntimeConfigError, RuntimeSetupError

    return (OSError, yaml.YAMLError, DescriptionError, BridgeError, OniError, BackendUnavailable, ExportError,
            PlannerConfigError, RuntimeConfigError, RuntimeSetupError, NodeSetupError, ValueError, zmq.ZMQError)


def close_runtime(runtime: Any) -> None:
    """Close the runtime's sockets (after :meth:`~worldmodel.runtime.Runtime.run` returned)."""
    runtime.sensors.close()
    runtime.commands.close()
    if runtime.outputs is not None:
        runtime.outputs.close()


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``node`` to ``oniwm``."""
    parser = subparsers.add_parser("node", help="the world-model runtime driving a robot over ONI",
                                   description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/hallway.yaml", metavar="YAML", help="preset (default %(default)s)")
    parser.add_argument("--bridge-info", default="~/.oni/sim/bridge.json", metavar="FILE",
                        help="the robot bridge's info file (default %(default)s)")
    parser.add_argument("--model", default=None, metavar="DIR", help="override runtime.model ('default': the shipped one)")
    parser.add_argument("--backend", default=None, choices=("torch", "onnxruntime", "tensorrt"), help="override runtime.backend.name")
    parser.add_argument("--info-file", default=None, metavar="FILE", help="override runtime.info_file")
    parser.add_argument("--duration", type=float, default=None, metavar="S", help="stop after S wall seconds")
    parser.add_argument("--wait", type=float, default=10.0, metavar="S", help="wait this long for the bridge info file")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the final report here (atomically)")
    parser.add_argument("--quiet", action="store_true", help="no status line")
    parser.set_defaults(func=run)


def load_preset(path: str | Path) -> dict[str, Any]:
    """The preset YAML at ``path`` as a mapping (empty file: no sections)."""
    import yaml

    preset = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(preset, dict):
        raise ValueError(f"{path}: a preset is a YAML mapping of sections, not {type(preset).__name__}")
    return preset


def run(args: argparse.Namespace) -> int:
    """Run ``oniwm node``; see the module docstring for the exit status."""
    from oni.files import write_json

    try:
        preset = load_preset(args.config)
        overrides = runtime_overrides(preset, model=args.model, backend=args.backend, info_file=args.info_file)
        runtime, info = build_node(preset, Path(args.config).parent, args.bridge_info, overrides=overrides,
                                   wait_s=args.wait)
    except setup_errors() as exc:
        log.error("cannot start the runtime: %s", exc)
        return 2
    log.info("runtime: %s on %s at %g Hz; outputs on %s", info["backend"], info["model"], info["rate_hz"], info["endpoint"])

    try:
        with on_stop_signals(runtime.request_stop):
            report = runtime.run(args.duration, on_status=None if args.quiet else write_status)
    finally:
        close_runtime(runtime)
        Path(runtime.config.info_file).expanduser().unlink(missing_ok=True)
    if not args.quiet:
        sys.stderr.write("\n")
    report = {**report, "node": info, "config": runtime.config.to_dict(), "planner": runtime.planner.config.to_dict()}
    print(json.dumps(report))
    if args.json:
        write_json(args.json, report)
    return 1 if report["error"] else 0


def write_status(report: Mapping[str, Any]) -> None:
    """One status line on stderr (overwritten in place) from a :meth:`~worldmodel.runtime.Runtime.report`."""
    tick = report["tick_latency_us"]
    state = f"STOP ({report['stop_reason']})" if report["stopped"] else "driving"
    sys.stderr.write(f"\rtick {report['ticks']:6d}  p50 {tick['p50'] or 0:7.0f} us  p99 {tick['p99'] or 0:7.0f} us  "
                     f"misses {report['deadline_misses']:3d}  plans {report['plans']:6d}  {state:<40.40s}")
    sys.stderr.flush()
