"""The world-model runtime with ROS 2 messages in and out, whatever carries them: rclpy (:mod:`robots.ros2.oniwm_node`)
or DDS without a ROS install (:mod:`robots.ros2.dds_bridge`, ``oniwm ros2-bridge``).

:class:`RosRuntime` runs the same :class:`~worldmodel.runtime.Runtime` as ``oniwm node`` (one setup path:
:func:`robots.node.load_runtime_parts`: the preset's robot, model, backend and planner, checked against each
other), fed over in-process ONI sockets::

    ROS message --receive()--> robots.ros2.convert --inproc ONI (sensor.*, nav.route)--> Runtime
    Runtime --inproc ONI (actuator.cmd, prediction.*, diag.runtime)--> egress thread --publish(name, ROS message)

The glue around it is thin: it subscribes :attr:`RosRuntime.subscriptions` and calls :meth:`RosRuntime.receive`
from one thread, and creates a publisher per :attr:`RosRuntime.publications` entry for the ``publish`` callback.

Inputs (names are :class:`NodeParams`): ``sensor_msgs/LaserScan``, ``Imu``, ``nav_msgs/Odometry`` and depth
``sensor_msgs/Image`` for the sensors the robot description (and so the model) has, and a
``geometry_msgs/PoseStamped`` goal, which becomes the route (``nav.route``): a straight line from where the robot
was when the goal came to the goal, in the odometry frame. A message that cannot be used is refused, counted per
ROS topic and reason (``refused``: the conversion refused it, e.g. a scan with another beam count than the
model's, named; ``unstamped``: header stamp 0; ``no_odometry``: a goal before any odometry), logged once per
topic and reason, and never reshaped to fit.

Outputs: ``geometry_msgs/Twist`` commands (only with ``control_enabled``; a stop is all zeros), the predicted
scan at one horizon (``sensor_msgs/LaserScan`` in the LiDAR's frame), the predicted path
(``nav_msgs/Path`` in the base frame) and ``diagnostic_msgs/DiagnosticArray`` (every ``runtime.status_interval_s``).
:meth:`RosRuntime.close` stops the runtime and, with control enabled, publishes a zero ``Twist`` last.

With the ``view`` parameter, the same ONI messages are also streamed to Foxglove, as by ``oniwm run --view``
(:class:`robots.foxglove_view.LiveView`, a WebSocket server on ``127.0.0.1:view_port``): the egress thread shows
each output after forwarding it, and the converted inputs, which it receives from the in-process sensor socket
on a second subscriber.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robots.ros2.convert import (
    BASE_FRAME,
    ROS_TYPES,
    ConversionError,
    Converted,
    diagnostics_to_ros,
    goal_to_route,
    predicted_path_to_ros,
    predicted_scan_to_ros,
    twist_to_ros,
)

__all__ = [
    "GOAL_TYPE",
    "MESSAGE_TYPES",
    "NODE_NAME",
    "NodeParams",
    "NodeParamsError",
    "RosRuntime",
    "load_params",
    "params_from_dict",
]

log = logging.getLogger("robots.ros2")

#: The node's name: the ROS 2 node's, and the key of its section in a parameters file.
NODE_NAME = "oniwm_node"
GOAL_TYPE = "geometry_msgs/msg/PoseStamped"
#: Sensor kind -> (parameter naming its ROS topic, ROS type).
SENSOR_INPUTS: dict[str, tuple[str, str]] = {
    "lidar": ("scan_topic", "sensor_msgs/msg/LaserScan"),
    "imu": ("imu_topic", "sensor_msgs/msg/Imu"),
    "odom": ("odom_topic", "nav_msgs/msg/Odometry"),
    "depth": ("depth_topic", "sensor_msgs/msg/Image"),
}
#: Output name (the ``publish`` callback's first argument) -> (parameter naming its ROS topic, ROS type).
OUTPUTS: dict[str, tuple[str, str]] = {
    "cmd_vel": ("cmd_vel_topic", "geometry_msgs/msg/Twist"),
    "predicted_scan": ("predicted_scan_topic", "sensor_msgs/msg/LaserScan"),
    "predicted_path": ("predicted_path_topic", "nav_msgs/msg/Path"),
    "diagnostics": ("diagnostics_topic", "diagnostic_msgs/msg/DiagnosticArray"),
}
#: Every ROS type the node reads, writes or nests; a ``types`` mapping must construct each.
MESSAGE_TYPES = (
    "builtin_interfaces/msg/Time", "std_msgs/msg/Header", "geometry_msgs/msg/Vector3", "geometry_msgs/msg/Point",
    "geometry_msgs/msg/Quaternion", "geometry_msgs/msg/Pose", "geometry_msgs/msg/PoseStamped",
    "geometry_msgs/msg/PoseWithCovariance", "geometry_msgs/msg/Twist", "geometry_msgs/msg/TwistWithCovariance",
    "sensor_msgs/msg/LaserScan", "sensor_msgs/msg/Imu", "sensor_msgs/msg/Image", "nav_msgs/msg/Odometry",
    "nav_msgs/msg/Path", "diagnostic_msgs/msg/KeyValue", "diagnostic_msgs/msg/DiagnosticStatus",
    "diagnostic_msgs/msg/DiagnosticArray",
)
STAMPS = ("header", "receive")
_NS = 1_000_000_000
_ids = itertools.count()


class NodeParamsError(ValueError):
    """A node parameter is invalid; the message names it and what it must be."""


@dataclass(frozen=True)
class NodeParams:
    """The node's parameters (ROS 2 parameters of ``oniwm_node``, or ``oniwm ros2-bridge``'s ``--params`` file).

    - ``config``: the preset (robot, planner, runtime sections), as for ``oniwm run``; relative paths are from the
      working directory.
    - ``model``, ``backend`` (``torch``, ``onnxruntime``, ``tensorrt``), ``rate_hz``: override the preset's
      ``runtime.model``, ``runtime.backend.name`` and ``runtime.rate_hz`` ("" / 0: keep the preset's).
    - ``control_enabled``: publish commands on ``cmd_vel_topic`` (off: the model runs and predicts, the robot is
      never commanded).
    - ``*_topic``: absolute ROS topic names of the inputs and outputs.
    - ``goal_radius_m``: a goal is reached within this distance (m).
    - ``predicted_scan_horizon_s``: the horizon of the published predicted scan, one of the preset's
      ``runtime.horizons_s`` (0: the first).
    - ``stamps``: ``header`` (a message's header stamp is its time: the robot's clock must be this host's, e.g.
      synchronised by NTP/PTP) or ``receive`` (the time it arrived here: for robots on another clock or sim time).
    - ``view``: stream the inputs and the runtime's outputs to Foxglove, as ``oniwm run --view`` does (the ``view``
      extra, ``foxglove-sdk``), on a WebSocket server at ``127.0.0.1:view_port`` (0: any free port).
    """

    config: str = "configs/hallway.yaml"
    model: str = ""
    backend: str = ""
    rate_hz: float = 0.0
    control_enabled: bool = False
    scan_topic: str = "/scan"
    imu_topic: str = "/imu"
    odom_topic: str = "/odom"
    depth_topic: str = "/camera/depth/image_raw"
    goal_topic: str = "/goal_pose"
    cmd_vel_topic: str = "/cmd_vel"
    predicted_scan_topic: str = "/oniwm/predicted_scan"
    predicted_path_topic: str = "/oniwm/predicted_path"
    diagnostics_topic: str = "/diagnostics"
    goal_radius_m: float = 0.5
    predicted_scan_horizon_s: float = 0.0
    stamps: str = "header"
    view: bool = False
    view_port: int = 8765

    def __post_init__(self) -> None:
        from worldmodel.backends.base import BACKEND_NAMES

        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type == "bool" and not isinstance(value, bool):
                raise NodeParamsError(f"{f.name} = {value!r}: true or false")
            if f.type == "float":
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                    raise NodeParamsError(f"{f.name} = {value!r}: a number >= 0")
                object.__setattr__(self, f.name, float(value))
            if f.type == "int" and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise NodeParamsError(f"{f.name} = {value!r}: an integer >= 0")
            if f.type == "str" and not isinstance(value, str):
                raise NodeParamsError(f"{f.name} = {value!r}: a string")
        if not self.config:
            raise NodeParamsError("config = '': the preset YAML (e.g. configs/hallway.yaml)")
        if self.backend and self.backend not in BACKEND_NAMES:
            raise NodeParamsError(f"backend = {self.backend!r}: one of {list(BACKEND_NAMES)}, or '' for the preset's")
        if self.goal_radius_m <= 0:
            raise NodeParamsError(f"goal_radius_m = {self.goal_radius_m!r}: a distance > 0 (m)")
        if self.stamps not in STAMPS:
            raise NodeParamsError(f"stamps = {self.stamps!r}: one of {list(STAMPS)}")
        if self.view_port > 65535:
            raise NodeParamsError(f"view_port = {self.view_port!r}: a TCP port, 0 to 65535 (0: any free one)")
        topics = {name: getattr(self, name) for name in self.topic_params()}
        for name, topic in topics.items():
            if not topic.startswith("/") or topic.endswith("/") or "//" in topic or " " in topic:
                raise NodeParamsError(f"{name} = {topic!r}: an absolute ROS topic name, e.g. /scan")
        if len(set(topics.values())) != len(topics):
            raise NodeParamsError(f"two topic parameters name the same topic: {topics}")

    @staticmethod
    def topic_params() -> list[str]:
        """The names of the topic parameters."""
        return [f.name for f in dataclasses.fields(NodeParams) if f.name.endswith("_topic")]


def params_from_dict(raw: Mapping[str, Any] | None, **overrides: Any) -> NodeParams:
    """:class:`NodeParams` from a mapping of parameters (absent: the defaults) and keyword ``overrides`` (applied
    last; None values are ignored); an unknown name raises :class:`NodeParamsError` listing the known ones."""
    values = dict(raw or {})
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = [f.name for f in dataclasses.fields(NodeParams)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise NodeParamsError(f"{unknown[0]}: not a parameter of {NODE_NAME}; known: {known}")
    return NodeParams(**values)


def load_params(path: str | Path) -> dict[str, Any]:
    """The ``oniwm_node`` parameters of a ROS 2 parameters file (``oniwm_node: {ros__parameters: {...}}``; the
    wildcard section ``/**`` is read too, ``oniwm_node``'s entries win), as a mapping for :func:`params_from_dict`."""
    import yaml

    doc = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(doc, dict):
        raise NodeParamsError(f"{path}: a ROS 2 parameters file is a mapping of node names")
    out: dict[str, Any] = {}
    for node in ("/**", NODE_NAME, f"/{NODE_NAME}"):
        section = doc.get(node)
        if section is None:
            continue
        if not isinstance(section, dict) or not isinstance(section.get("ros__parameters"), dict):
            raise NodeParamsError(f"{path}: {node}: expected a 'ros__parameters' mapping")
        out.update(section["ros__parameters"])
    if not out:
        raise NodeParamsError(f"{path}: no '{NODE_NAME}: ros__parameters:' section")
    return out


@dataclass
class _Input:
    """One ROS input: where it goes in ONI and what happened to its messages."""

    kind: str
    ros_topic: str
    ros_type: str
    oni_topic: str
    schema: str
    to_oni: Callable[[Any, Any], Converted] | None  # None: the goal (converted by goal_to_route)
    sensor: Any
    received: int = 0
    forwarded: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    first_refusal: dict[str, str] = field(default_factory=dict)
    clock_warned: bool = False


class RosRuntime:
    """The runtime of ``params.config`` behind ROS 2 messages (module docstring).

    ``publish(name, message)``: sends one output, ``name`` a key of :attr:`publications` (called from the egress
    thread). ``types``: ROS type name -> message constructor for every name in :data:`MESSAGE_TYPES` (rclpy's
    classes, :data:`robots.ros2.idl.TYPES`, a ``rosbags`` typestore's). Setup errors are those of
    :func:`robots.node.setup_errors` and :class:`NodeParamsError`, each naming the problem; nothing runs until
    :meth:`start`.
    """

    def __init__(self, params: NodeParams, publish: Callable[[str, Any], None], types: Mapping[str, Callable[..., Any]]
                 ) -> None:
        import zmq

        from oni import qos
        from oni.security import ClientSecurity, KeyPair, ServerSecurity
        from oni.transport import Publisher, Subscriber, TopicSpec
        from robots.node import load_preset, load_runtime_parts, runtime_overrides
        from worldmodel.runtime.loop import COMMAND_TOPIC, OUTPUT_TOPICS, ROUTE_TOPIC

        missing = [name for name in MESSAGE_TYPES if name not in types]
        if missing:
            raise ValueError(f"types has no constructor of {missing}")
        self.params = params
        self.types = types
        self._publish = publish
        preset = load_preset(params.config)
        overrides = runtime_overrides(preset, model=params.model, backend=params.backend, rate_hz=params.rate_hz or None)
        self.parts = parts = load_runtime_parts(preset, Path(params.config).parent, overrides=overrides)
        robot, spec, config = parts.robot, parts.spec, parts.config
        horizons = config.horizons_s
        wanted = params.predicted_scan_horizon_s or horizons[0]
        matches = [i for i, h in enumerate(horizons) if math.isclose(h, wanted, abs_tol=1e-9)]
        if not matches:
            raise NodeParamsError(f"predicted_scan_horizon_s = {wanted:g}: one of runtime.horizons_s {list(horizons)}")
        self._scan_horizon = matches[0]
        self._lidar = robot.sensors_of_kind("lidar")[0]
        self._inputs: dict[str, _Input] = {}
        for kind in spec.modalities:
            if kind not in SENSOR_INPUTS:
                raise NodeParamsError(f"the model takes {kind!r}, which no ROS 2 input of this node gives")
            param, ros_type = SENSOR_INPUTS[kind]
            self._inputs[kind] = _Input(kind, getattr(params, param), ros_type, spec.topics[kind],
                                        ROS_TYPES[ros_type].schema, ROS_TYPES[ros_type].to_oni,
                                        robot.sensors_of_kind(kind)[0])
        self._inputs["goal"] = _Input("goal", params.goal_topic, GOAL_TYPE, ROUTE_TOPIC, ROUTE_TOPIC, None, None)
        self.publications = {name: (getattr(params, param), ros_type) for name, (param, ros_type) in OUTPUTS.items()
                             if name != "cmd_vel" or params.control_enabled}
        self.published = {name: 0 for name in self.publications}

        # In-process ONI: one context for both ends of each inproc socket; the command link is CURVE-authenticated
        # like a robot bridge's, with keys that exist only in this process.
        context = zmq.Context.instance()
        n = next(_ids)
        self._sensor_pub = Publisher(f"inproc://oniwm-ros2-sensors-{n}",
                                     {i.oni_topic: TopicSpec(qos.SENSOR, i.schema) for i in self._inputs.values()},
                                     source="ros2", context=context)
        sensors = Subscriber(context=context)
        for i in self._inputs.values():
            sensors.subscribe(i.oni_topic, qos.SENSOR, i.schema)
        sensors.connect(self._sensor_pub.endpoint)
        server, client = KeyPair.generate(), KeyPair.generate()
        self._egress = Subscriber(context=context, security=ServerSecurity(server, {client.public}))
        self._egress.subscribe(COMMAND_TOPIC, qos.CONTROL)
        for topic in OUTPUT_TOPICS:
            if topic != "model.latent_state":  # ROS has no type for it
                self._egress.subscribe(topic, qos.DIAGNOSTIC)
        endpoint = self._egress.bind(f"inproc://oniwm-ros2-egress-{n}")
        commands = Publisher(endpoint, {COMMAND_TOPIC: qos.CONTROL}, source="runtime", bind=False, context=context,
                             security=ClientSecurity(client, server.public))
        outputs = Publisher(endpoint, {t: qos.DIAGNOSTIC for t in OUTPUT_TOPICS}, source="runtime", bind=False,
                            context=context, security=ClientSecurity(client, server.public))
        self.runtime = parts.runtime(sensors, commands, outputs)
        self._command_topic = COMMAND_TOPIC
        self._diag_interval_ns = round(config.status_interval_s * _NS)
        self._next_diag_ns = 0
        self._odom_xy: tuple[float, float] | None = None
        self._odom_frame = ""
        self._goal: tuple[float, float] | None = None
        self._route: Converted | None = None
        self._runtime_thread: threading.Thread | None = None
        self._egress_thread: threading.Thread | None = None
        self._draining = threading.Event()
        self._final: dict[str, Any] | None = None
        self.error: str | None = None
        #: The Foxglove live view (the ``view`` parameter), else None; fed from the egress thread only.
        self.view: Any = None
        self.view_url: str | None = None
        self._view_inputs: Subscriber | None = None
        if params.view:
            from robots.foxglove_view import LiveView

            # The converted inputs once more, as the runtime receives them (a second subscriber on their socket).
            self._view_inputs = Subscriber(context=context)
            for i in self._inputs.values():
                self._view_inputs.subscribe(i.oni_topic, qos.SENSOR, i.schema)
            self._view_inputs.connect(self._sensor_pub.endpoint)
            self.view = LiveView(params.view_port, robot=robot)  # last: nothing after it can fail
            self.view_url = self.view.url
            log.info("Foxglove live view: open %s in Foxglove (layout: docs/foxglove/oniwm-layout.json)", self.view_url)

    @property
    def subscriptions(self) -> list[tuple[str, str, str]]:
        """``(kind, ROS topic, ROS type)`` of each input to subscribe: the robot's sensors the model takes, and
        ``goal``."""
        return [(i.kind, i.ros_topic, i.ros_type) for i in self._inputs.values()]

    @property
    def running(self) -> bool:
        """True from :meth:`start` until the runtime's loop ends (duration, :meth:`close`, or an error)."""
        return self._runtime_thread is not None and self._runtime_thread.is_alive()

    # ------------------------------------------------------------------------------------------------------------
    # Inputs (the caller's thread: one thread only, the sensor publisher is not thread-safe).

    def receive(self, kind: str, msg: Any) -> bool:
        """One ROS message of input ``kind`` (see :attr:`subscriptions`), converted and handed to the runtime;
        False when refused (counted per reason in :meth:`report`, logged the first time)."""
        entry = self._inputs[kind]
        entry.received += 1
        received_ns = time.time_ns()
        try:
            if entry.to_oni is None:
                converted = self._goal_route(msg)
            else:
                converted = entry.to_oni(msg, entry.sensor)
        except ConversionError as exc:
            return self._refuse(entry, "refused", str(exc))
        except _NoOdometry as exc:
            return self._refuse(entry, "no_odometry", str(exc))
        stamp_ns = converted.stamp_ns
        if self.params.stamps == "receive" or stamp_ns is None:
            stamp_ns = received_ns
        elif stamp_ns == 0 and entry.to_oni is not None:
            return self._refuse(entry, "unstamped", f"{entry.ros_topic}: header stamp 0 (never set by its publisher): "
                                                    "set the parameter stamps to 'receive'")
        elif (entry.to_oni is not None and not entry.clock_warned
              and abs(received_ns - stamp_ns) > self.runtime.config.max_age_s * _NS):
            entry.clock_warned = True
            log.warning("%s: header stamps are %.3f s off this host's clock: the runtime will see the sensor as stale; "
                        "synchronise the clocks or set the parameter stamps to 'receive'", entry.ros_topic,
                        (received_ns - stamp_ns) / _NS)
        if kind == "odom":
            self._odom_xy = (converted.data["x_m"], converted.data["y_m"])
            self._odom_frame = converted.frame_id
        self._sensor_pub.publish(entry.oni_topic, converted.data, stamp_ns=stamp_ns, frame_id=converted.frame_id)
        entry.forwarded += 1
        return True

    def _goal_route(self, msg: Any) -> Converted:
        """The route to the goal ``msg``: from the robot's position when this goal first came (the same goal again
        gives the same route, which the runtime keeps following)."""
        if self._odom_xy is None:
            raise _NoOdometry(f"{self.params.goal_topic}: a goal before any odometry on {self.params.odom_topic}: "
                              "the route starts at the robot's position")
        p = msg.pose.position
        goal = (float(p.x), float(p.y))
        start = self._route.data["waypoints_m"][0] if goal == self._goal and self._route is not None else self._odom_xy
        route = goal_to_route(msg, (start[0], start[1]), self._odom_frame, self.params.goal_radius_m)
        if goal != self._goal:
            log.info("goal (%.2f, %.2f) in %s: route from (%.2f, %.2f)", *goal, self._odom_frame, *self._odom_xy)
        self._goal, self._route = goal, route
        return route

    def _refuse(self, entry: _Input, reason: str, detail: str) -> bool:
        count = entry.refused.get(reason, 0)
        entry.refused[reason] = count + 1
        if count == 0:
            entry.first_refusal[reason] = detail
            log.warning("%s refused (%s): %s (logged once; counted in the report)", entry.ros_topic, reason, detail)
        return False

    # ------------------------------------------------------------------------------------------------------------
    # Running.

    def start(self, duration_s: float | None = None,
              on_status: Callable[[dict[str, Any]], None] | None = None) -> None:
        """Start the runtime's loop (for ``duration_s`` wall seconds; None: until :meth:`close`) and the egress
        thread. ``on_status`` gets the runtime's report every ``runtime.status_interval_s`` (from its thread)."""
        if self._runtime_thread is not None:
            raise RuntimeError("already started")
        self._egress_thread = threading.Thread(target=self._egress_loop, name="oniwm-ros2-egress", daemon=True)
        self._runtime_thread = threading.Thread(target=self._run, args=(duration_s, on_status), name="oniwm-runtime",
                                                daemon=True)
        self._egress_thread.start()
        self._runtime_thread.start()

    def _run(self, duration_s: float | None, on_status: Callable[[dict[str, Any]], None] | None) -> None:
        self._final = self.runtime.run(duration_s, on_status=on_status)

    def _egress_loop(self) -> None:
        """Forward the runtime's commands and outputs as ROS messages until :meth:`close` has drained them; with the
        view, after each output has gone out, show the inputs that came since the last one, then the output."""
        egress = self._egress
        while True:
            msg = egress.recv(timeout_ms=50)
            if msg is None:
                if self._view_inputs is not None:
                    self._show(None)
                if self._draining.is_set():
                    return
                continue
            try:
                self._forward(msg)
            except Exception as exc:  # a publisher that fails must stop the robot: end the loop, report why
                self.error = f"publishing {msg.topic} as ROS failed: {type(exc).__name__}: {exc}"
                log.exception("%s; stopping the runtime", self.error)
                self.runtime.request_stop()
                return
            if self._view_inputs is not None:
                self._show(msg)

    def _show(self, output: Any) -> None:
        """Stream the inputs received since the last call, then ``output`` (None: none), to the view. A view that
        fails is turned off (logged) and never stops the robot."""
        inputs, view = self._view_inputs, self.view
        try:
            while (msg := inputs.recv(timeout_ms=0)) is not None:
                view.on_message(msg)
            if output is not None:
                view.on_message(output)
        except Exception:
            log.exception("the Foxglove view failed; it is off for the rest of the run")
            self._view_inputs = None
            inputs.close()

    def _forward(self, msg: Any) -> None:
        topic, stamp_ns, data = msg.topic, msg.header.stamp_ns, msg.data
        if topic == self._command_topic:
            if "cmd_vel" in self.publications:
                self._emit("cmd_vel", twist_to_ros(stamp_ns, BASE_FRAME, data, self.types))
        elif topic == "prediction.lidar":
            self._emit("predicted_scan", predicted_scan_to_ros(stamp_ns, data, self._scan_horizon, self._lidar, self.types))
        elif topic == "prediction.pose":
            self._emit("predicted_path", predicted_path_to_ros(stamp_ns, BASE_FRAME, data, self.types))
        elif topic == "diag.runtime" and stamp_ns >= self._next_diag_ns:
            self._next_diag_ns = stamp_ns + self._diag_interval_ns
            self._emit("diagnostics", diagnostics_to_ros(stamp_ns, data, self._counters(), self.types,
                                                         name=f"{NODE_NAME}: world-model runtime",
                                                         hardware_id=self.parts.robot.name))

    def _emit(self, name: str, message: Any) -> None:
        self._publish(name, message)
        self.published[name] += 1

    def _counters(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for entry in self._inputs.values():
            out[f"{entry.ros_topic}.received"] = entry.received
            out[f"{entry.ros_topic}.refused"] = sum(entry.refused.values())
        return out

    def close(self, timeout_s: float = 5.0) -> dict[str, Any]:
        """Stop the runtime (it commands a stop as it ends), forward what it sent last, publish a zero ``Twist``
        (with control enabled), close the sockets; returns :meth:`report`."""
        from robots.node import close_runtime

        self.runtime.request_stop()
        if self._runtime_thread is not None:
            self._runtime_thread.join(timeout_s)
        self._draining.set()
        if self._egress_thread is not None:
            self._egress_thread.join(timeout_s)
        if "cmd_vel" in self.publications:
            self._emit("cmd_vel", twist_to_ros(time.time_ns(), BASE_FRAME, {"stop": True}, self.types))
        close_runtime(self.runtime)
        if self.view is not None:
            if self._view_inputs is not None:
                self._view_inputs.close()
                self._view_inputs = None
            self.view.close()
        self._sensor_pub.close()
        self._egress.close()
        return self.report()

    def report(self) -> dict[str, Any]:
        """JSON-ready: the runtime's report (the final one once its loop has ended), what came in per ROS topic
        (received, forwarded to the runtime, refused per reason with the first refusal's message) and what went
        out per output, the egress error if any, and the Foxglove view's URL (None without ``view``)."""
        runtime = self._final if self._final is not None else self.runtime.report()
        inputs = {e.ros_topic: {"kind": e.kind, "type": e.ros_type, "oni_topic": e.oni_topic, "received": e.received,
                                "forwarded": e.forwarded, "refused": dict(e.refused), "refusals": dict(e.first_refusal)}
                  for e in self._inputs.values()}
        outputs = {self.publications[name][0]: {"type": self.publications[name][1], "published": count}
                   for name, count in self.published.items()}
        return {"runtime": runtime, "inputs": inputs, "outputs": outputs, "error": self.error or runtime["error"],
                "model": str(self.parts.model_path), "backend": self.parts.backend_name, "robot": self.parts.robot.name,
                "control_enabled": self.params.control_enabled, "params": dataclasses.asdict(self.params),
                "view": self.view_url}


class _NoOdometry(Exception):
    """A goal came before any odometry (its route needs the robot's position)."""
