"""The Foxglove view: ONI messages as Foxglove messages, live (``oniwm run --view``) or from a log (``oniwm view-log``).

Foxglove cannot decode ONI's msgpack encoding, so both paths convert each ONI message into Foxglove's own
schemas through :class:`FoxgloveFeed`, one handler per ONI type, and log them on the channels of one
``foxglove.Context``: a WebSocket server's (:class:`LiveView`) or an MCAP writer's (:func:`export_log`). The
``foxglove-sdk`` package (the ``view`` extra) is imported only when a feed is built.

==========================  ==================  ================================================================
ONI type                    Foxglove topic      Foxglove message
==========================  ==================  ================================================================
``sensor.lidar``            ``/sensor/lidar``   ``LaserScan`` in the scan's frame; no-return beams are +inf
``prediction.lidar``        ``/prediction/      per horizon H: ``LaserScan`` of the predicted mean with
                            lidar/Hs``          ``intensities`` = predicted std (m), and a ``PointCloud``
                            ``.../Hs/band``     (``x, y, z, std_m``) at mean - std and mean + std (the
                                                uncertainty band); both in frame ``prediction/Hs``
``prediction.pose``         ``/tf``             ``base_link -> prediction/Hs`` per horizon (the predicted pose)
                            ``/prediction/      ``SceneUpdate``: the predicted path (line from the robot
                            pose``              through the horizons) and one disc of 2 std (x, y) per horizon
``sensor.odom``             ``/tf``             ``odom -> base_link`` and ``base_link -> <sensor frame>`` (the
                                                robot description's mounts)
                            ``/path/odom``      ``SceneUpdate``: the driven path by odometry
``sim.ground_truth``        ``/tf``             ``world -> odom`` (ground truth composed with the inverse
                                                odometry pose of the same time)
                            ``/path/            ``SceneUpdate``: the driven path, true
                            ground_truth``
                            ``/sim/             JSON: the message's fields
                            ground_truth``
``nav.route``               ``/nav/route``      ``SceneUpdate``: the route's line and the goal
``diag.runtime``            ``/diag/runtime``   JSON: ``tick_us``, ``deadline_misses``, ``stage_us.<stage>``,
                                                ``sensor_to_command_est_ms`` ... (plottable)
==========================  ==================  ================================================================

Other topics (IMU, depth, latent state) are not shown. Topic names follow the ONI topic (``sensor.lidar`` ->
``/sensor/lidar``). ``sensor_to_command_est_ms`` is an estimate made from what a viewer sees (the runtime's
commands go only to the robot): the tick's start minus the publication of the newest sensor message published
before it, plus the ingest, observe and act stages of that tick; the exact figure, by trace id, is the
bridge's ``e2e_latency_ms`` in the run's report.

Cost: with no Foxglove client subscribed to a channel, its conversion is skipped (only the paths keep
growing); ``prediction_hz`` and ``path_hz`` limit the heavy topics by message stamp, so a live view and an
export with the same limits send the same messages. Arrays are converted with numpy; only the path polylines
are built point by point (bounded by ``max_path_points`` and ``path_hz``).

Example::

    oniwm run --view                      # then open ws://127.0.0.1:8765 in Foxglove
    oniwm view-log runs/main/run.mcap --out runs/main/foxglove.mcap
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from oni.message import Message
from robots.description import RobotDescription
from robots.ros2.convert import BASE_FRAME

log = logging.getLogger("robots.foxglove_view")

__all__ = [
    "DEFAULT_PORT",
    "EXTRA",
    "FoxgloveFeed",
    "LiveView",
    "band_points",
    "export_log",
    "foxglove_topic",
    "layout",
    "no_return_to_inf",
    "prediction_frame",
    "register",
]

#: The pip extra that provides ``foxglove-sdk``.
EXTRA = "view"
#: Foxglove's default WebSocket port (what the app offers first).
DEFAULT_PORT = 8765
#: The Foxglove topic of every transform.
TF_TOPIC = "/tf"
_NS = 1_000_000_000
#: How far apart (ns) an odometry and a ground-truth stamp may be to derive ``world -> odom`` from them.
_ODOM_MATCH_NS = 30_000_000
#: Recent sensor publication times kept for the sensor-to-command estimate (IMU at 200 Hz: about 1 s).
_SENSOR_RING = 256
_NEVER = np.iinfo(np.int64).min  # an empty slot of that ring
_COLORS: dict[str, tuple[float, float, float, float]] = {
    "odom": (0.12, 0.47, 0.71, 1.0),
    "ground_truth": (0.17, 0.63, 0.17, 1.0),
    "route": (0.5, 0.5, 0.5, 0.8),
    "prediction": (1.0, 0.5, 0.05, 1.0),
    "uncertainty": (1.0, 0.5, 0.05, 0.25),
}
#: JSON Schema of ``/diag/runtime`` (units in the names).
_DIAG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "oniwm runtime latency",
    "properties": {
        "stamp_ns": {"type": "integer", "description": "Tick start, ns since the Unix epoch."},
        "tick": {"type": "integer", "description": "Runtime tick index."},
        "tick_us": {"type": "number", "description": "Latency of the whole tick (us)."},
        "deadline_misses": {"type": "integer", "description": "Deadline misses since start."},
        "stage_us": {"type": "object", "additionalProperties": {"type": "number"},
                     "description": "Latency of each stage this tick (us), by stage name."},
        "sensor_to_command_est_ms": {"type": ["number", "null"],
                                     "description": "Estimated sensor-to-command latency (ms); see robots/foxglove_view.py."},
        "stale_sensors": {"type": "array", "items": {"type": "string"}},
        "stopped": {"type": "boolean"},
        "stop_reason": {"type": "string"},
    },
}


def _sdk() -> ModuleType:
    """The ``foxglove`` module (its ``messages`` and ``channels`` come with it); names the extra when missing."""
    from worldmodel.backends.base import require_extra

    return require_extra("foxglove", EXTRA, "the Foxglove view (foxglove-sdk)")


def foxglove_topic(oni_topic: str) -> str:
    """The Foxglove topic for an ONI topic: ``sensor.lidar`` -> ``/sensor/lidar``."""
    return "/" + oni_topic.replace(".", "/")


def _horizon_label(horizon_s: float) -> str:
    return f"{horizon_s:g}s"


def prediction_frame(horizon_s: float) -> str:
    """The frame of the robot's base as predicted ``horizon_s`` ahead (child of ``base_link`` at the stamp)."""
    return f"prediction/{_horizon_label(horizon_s)}"


def prediction_scan_topic(horizon_s: float) -> str:
    """The topic of the predicted mean scan at ``horizon_s``; its uncertainty band is this + ``/band``."""
    return f"/prediction/lidar/{_horizon_label(horizon_s)}"


def no_return_to_inf(ranges_m: np.ndarray, range_max_m: float) -> np.ndarray:
    """``ranges_m`` (N,) as float32 with ONI's no-return marker (``>= range_max_m``) as +inf, the ROS/Foxglove one."""
    out = np.asarray(ranges_m, np.float32).copy()
    out[~(out < range_max_m)] = np.inf
    return out


def band_points(ranges_m: np.ndarray, std_m: np.ndarray, angle_min_rad: float, angle_increment_rad: float,
                range_max_m: float, z_m: float = 0.0) -> np.ndarray:
    """The uncertainty band of a predicted scan as points: (2M, 4) float32 rows ``x_m, y_m, z_m, std_m`` at
    ``mean - std`` (clipped at 0) then ``mean + std``, for the M beams of ``ranges_m`` (N,) predicted to
    have a return (``< range_max_m``). Beam i points at ``angle_min_rad + i * angle_increment_rad``."""
    ranges = np.asarray(ranges_m, np.float32)
    std = np.asarray(std_m, np.float32)
    keep = np.isfinite(ranges) & (ranges < range_max_m) & np.isfinite(std)
    angles = (angle_min_rad + angle_increment_rad * np.arange(ranges.size))[keep]
    r, s = ranges[keep], std[keep]
    radii = np.concatenate([np.maximum(r - s, 0.0), r + s])
    both = np.concatenate([angles, angles])
    out = np.empty((radii.size, 4), np.float32)
    out[:, 0] = radii * np.cos(both)
    out[:, 1] = radii * np.sin(both)
    out[:, 2] = z_m
    out[:, 3] = np.concatenate([s, s])
    return out


def _yaw_quaternion(yaw_rad: float) -> tuple[float, float, float, float]:
    return 0.0, 0.0, math.sin(yaw_rad / 2.0), math.cos(yaw_rad / 2.0)


def _rpy_quaternion(roll: float, pitch: float, yaw: float) -> tuple[float, float, float, float]:
    """(x, y, z, w) of R = Rz(yaw) Ry(pitch) Rx(roll), the robot description's mount convention."""
    cr, sr = math.cos(roll / 2), math.sin(roll / 2)
    cp, sp = math.cos(pitch / 2), math.sin(pitch / 2)
    cy, sy = math.cos(yaw / 2), math.sin(yaw / 2)
    return (sr * cp * cy - cr * sp * sy, cr * sp * cy + sr * cp * sy, cr * cp * sy - sr * sp * cy,
            cr * cp * cy + sr * sp * sy)


def _relative(parent: tuple[float, float, float], child: tuple[float, float, float]) -> tuple[float, float, float]:
    """``parent * inverse(child)`` for planar poses (x_m, y_m, yaw_rad): the frame in which ``child`` is the origin,
    given both in the same frame (ground truth and odometry at one instant -> the odometry frame in the world)."""
    px, py, pa = parent
    cx, cy, ca = child
    yaw = pa - ca
    c, s = math.cos(yaw), math.sin(yaw)
    return px - (c * cx - s * cy), py - (s * cx + c * cy), math.atan2(math.sin(yaw), math.cos(yaw))


class _Path:
    """A driven path in one frame: points at least ``step_m`` apart, at most ``max_points`` (halved when full)."""

    def __init__(self, step_m: float, max_points: int) -> None:
        self.xy = np.zeros((max_points, 2), np.float64)
        self.n = 0
        self.step_m = step_m
        self.frame_id = ""

    def add(self, x: float, y: float) -> None:
        if self.n and math.hypot(x - self.xy[self.n - 1, 0], y - self.xy[self.n - 1, 1]) < self.step_m:
            return
        if self.n == len(self.xy):  # keep the whole path at half the resolution
            half = self.xy[: self.n : 2].copy()
            self.n = len(half)
            self.xy[: self.n] = half
        self.xy[self.n] = x, y
        self.n += 1


class FoxgloveFeed:
    """Converts ONI messages into Foxglove messages on the channels of one ``foxglove.Context`` (module docstring).

    ``robot``: the description whose sensor mounts become ``base_link -> <sensor frame>`` transforms and whose
    first LiDAR places the predicted scans and gives the no-return range (None: no mounts, predicted scans at
    the base's origin, every finite range a return). ``prediction_hz`` / ``path_hz`` / ``route_hz``: at most
    this many prediction sets / path updates / route updates per second of message stamps (None: all).
    Raises ``BackendUnavailable`` (an ``ImportError``) naming the ``view`` extra when foxglove-sdk is missing.
    """

    def __init__(self, context: Any, robot: RobotDescription | None = None, *, prediction_hz: float | None = None,
                 path_hz: float | None = 2.0, route_hz: float | None = 1.0, path_step_m: float = 0.02,
                 max_path_points: int = 5000) -> None:
        for name, hz in (("prediction_hz", prediction_hz), ("path_hz", path_hz), ("route_hz", route_hz)):
            if hz is not None and not hz > 0:
                raise ValueError(f"{name} must be > 0 or None (every message), got {hz}")
        if max_path_points < 2:
            raise ValueError(f"max_path_points must be >= 2, got {max_path_points}")
        fox = _sdk()
        self._fox = fox
        self._m = m = fox.messages
        #: The band's point layout: the columns of :func:`band_points`, float32.
        self._band_fields = [m.PackedElementField(name=name, offset=4 * i, type=m.PackedElementFieldNumericType.Float32)
                             for i, name in enumerate(("x", "y", "z", "std_m"))]
        self._context = context
        self._channels: dict[str, Any] = {}
        self._periods_ns = {"prediction": _period_ns(prediction_hz), "path": _period_ns(path_hz),
                            "route": _period_ns(route_hz)}
        self._last_ns: dict[str, int] = {}
        #: Foxglove messages logged, per Foxglove topic.
        self.counts: dict[str, int] = {}
        #: The prediction horizons (s) seen in ``prediction.*`` messages (empty until the first).
        self.horizons_s: tuple[float, ...] = ()
        self._mounts: list[tuple[str, tuple[float, float, float], tuple[float, float, float, float]]] = []
        self._lidar_xyz_m = (0.0, 0.0, 0.0)
        self._range_max_m = math.inf
        if robot is not None:
            for sensor in robot.sensors:
                if sensor.kind != "odom":  # odometry's frame_id is the odometry frame, not a mount
                    self._mounts.append((sensor.frame_id, sensor.mount.xyz_m, _rpy_quaternion(*sensor.mount.rpy_rad)))
            lidars = robot.sensors_of_kind("lidar")
            if lidars:
                self._lidar_xyz_m = lidars[0].mount.xyz_m
                self._range_max_m = lidars[0].params.range_max_m
        self._paths = {"odom": _Path(path_step_m, max_path_points), "ground_truth": _Path(path_step_m, max_path_points)}
        self._odom: tuple[int, str, float, float, float] | None = None  # stamp_ns, frame, x, y, yaw
        self._sensor_pub_ns = np.full(_SENSOR_RING, _NEVER, np.int64)
        self._sensor_next = 0
        self._stage_index: tuple[tuple[str, ...], list[int]] | None = None
        self._unplaceable: set[str] = set()
        self._handlers: dict[str, Callable[[Message, int | None], None]] = {
            "sensor.lidar": self._lidar,
            "prediction.lidar": self._prediction_lidar,
            "prediction.pose": self._prediction_pose,
            "sensor.odom": self._odometry,
            "sim.ground_truth": self._ground_truth,
            "nav.route": self._route,
            "diag.runtime": self._diagnostics,
        }

    # ------------------------------------------------------------------------------------------------------------
    # Entry point.

    def on_message(self, msg: Message, log_time_ns: int | None = None) -> None:
        """Convert and log ``msg`` (dispatch by its ONI type); other types are ignored. ``log_time_ns``: the
        Foxglove log time (None: now, for a live view; an export passes the recorded receive time)."""
        schema = msg.header.schema
        if schema.startswith("sensor."):
            self._sensor_pub_ns[self._sensor_next] = msg.header.pub_ns
            self._sensor_next = (self._sensor_next + 1) % _SENSOR_RING
        handler = self._handlers.get(schema)
        if handler is not None:
            handler(msg, log_time_ns)

    # ------------------------------------------------------------------------------------------------------------
    # One handler per ONI type.

    def _lidar(self, msg: Message, log_time_ns: int | None) -> None:
        topic = foxglove_topic(msg.topic)
        channel = self._channel(topic, "LaserScan")
        if not channel.has_sinks():
            return
        d = msg.data
        ranges = no_return_to_inf(d["ranges_m"], float(d["range_max_m"]))
        intensities = d.get("intensities")
        self._log(channel, topic, self._scan(msg.header.stamp_ns, msg.header.frame_id, (0.0, 0.0, 0.0), ranges,
                                             float(d["angle_min_rad"]), float(d["angle_increment_rad"]),
                                             None if intensities is None else np.asarray(intensities, np.float32)),
                  log_time_ns)

    def _prediction_lidar(self, msg: Message, log_time_ns: int | None) -> None:
        d = msg.data
        stamp = msg.header.stamp_ns
        if "angle_min_rad" not in d or "angle_increment_rad" not in d:  # optional in the schema; a view never stops a run
            if msg.topic not in self._unplaceable:
                self._unplaceable.add(msg.topic)
                log.warning("%s: predicted scans without angle_min_rad/angle_increment_rad are not shown", msg.topic)
            return
        if not self._due("prediction.lidar", stamp, self._periods_ns["prediction"]):
            return
        horizons = np.asarray(d["horizons_s"], np.float64)
        self.horizons_s = tuple(horizons.tolist())
        ranges, std = np.asarray(d["ranges_m"], np.float32), np.asarray(d["ranges_std_m"], np.float32)
        start, step = float(d["angle_min_rad"]), float(d["angle_increment_rad"])
        m = self._m
        for k, h in enumerate(self.horizons_s):
            frame, topic = prediction_frame(h), prediction_scan_topic(h)
            channel = self._channel(topic, "LaserScan")
            if channel.has_sinks():
                self._log(channel, topic, self._scan(stamp, frame, self._lidar_xyz_m,
                                                     no_return_to_inf(ranges[k], self._range_max_m), start, step,
                                                     std[k]), log_time_ns)
            band_topic = topic + "/band"
            band = self._channel(band_topic, "PointCloud")
            if band.has_sinks():
                points = band_points(ranges[k], std[k], start, step, self._range_max_m)
                x, y, z = self._lidar_xyz_m
                cloud = m.PointCloud(timestamp=_timestamp(m, stamp), frame_id=frame, pose=self._pose(x, y, z, 0.0),
                                     point_stride=16, fields=self._band_fields, data=points.tobytes())
                self._log(band, band_topic, cloud, log_time_ns)

    def _prediction_pose(self, msg: Message, log_time_ns: int | None) -> None:
        d = msg.data
        stamp = msg.header.stamp_ns
        if not self._due("prediction.pose", stamp, self._periods_ns["prediction"]):
            return
        m = self._m
        horizons = np.asarray(d["horizons_s"], np.float64).tolist()
        self.horizons_s = tuple(horizons)
        pose = np.asarray(d["pose"], np.float64)
        std = np.asarray(d["pose_std"], np.float64)
        ts = _timestamp(m, stamp)
        tf = self._channel(TF_TOPIC, "FrameTransforms")
        if tf.has_sinks():
            transforms = [self._transform(ts, BASE_FRAME, prediction_frame(h), x, y, 0.0, _yaw_quaternion(a))
                          for h, (x, y, a) in zip(horizons, pose.tolist())]
            self._log(tf, TF_TOPIC, m.FrameTransforms(transforms=transforms), log_time_ns)
        topic = foxglove_topic(msg.topic)
        channel = self._channel(topic, "SceneUpdate")
        if not channel.has_sinks():
            return
        color = self._color("prediction")
        points = [m.Point3(x=0.0, y=0.0, z=0.0), *(m.Point3(x=x, y=y, z=0.0) for x, y, _ in pose.tolist())]
        line = m.LinePrimitive(type=m.LinePrimitiveLineType.LineStrip, pose=self._pose(0.0, 0.0, 0.0, 0.0),
                               thickness=0.03, points=points, color=color)
        # pose_std is in the base frame at the stamp, so the discs stay aligned with it (identity rotation).
        discs = [m.CylinderPrimitive(pose=self._pose(x, y, 0.0, 0.0),
                                     size=m.Vector3(x=max(2 * sx, 0.01), y=max(2 * sy, 0.01), z=0.01),
                                     bottom_scale=1.0, top_scale=1.0, color=self._color("uncertainty"))
                 for (x, y, _), (sx, sy, _) in zip(pose.tolist(), std.tolist())]
        entity = m.SceneEntity(timestamp=ts, frame_id=BASE_FRAME, id="predicted_path", lines=[line], cylinders=discs)
        self._log(channel, topic, m.SceneUpdate(entities=[entity]), log_time_ns)

    def _odometry(self, msg: Message, log_time_ns: int | None) -> None:
        d = msg.data
        stamp, frame = msg.header.stamp_ns, msg.header.frame_id or "odom"
        x, y, yaw = float(d["x_m"]), float(d["y_m"]), float(d["yaw_rad"])
        self._odom = (stamp, frame, x, y, yaw)
        tf = self._channel(TF_TOPIC, "FrameTransforms")
        if tf.has_sinks():
            m = self._m
            ts = _timestamp(m, stamp)
            # The mounts go with every odometry transform: a client that joins late, or a seek in a log, has them.
            transforms = [self._transform(ts, frame, BASE_FRAME, x, y, 0.0, _yaw_quaternion(yaw)),
                          *(self._transform(ts, BASE_FRAME, child, *xyz, q) for child, xyz, q in self._mounts)]
            self._log(tf, TF_TOPIC, m.FrameTransforms(transforms=transforms), log_time_ns)
        self._update_path("odom", frame, stamp, x, y, log_time_ns)

    def _ground_truth(self, msg: Message, log_time_ns: int | None) -> None:
        d = msg.data
        stamp, frame = msg.header.stamp_ns, msg.header.frame_id or "world"
        x, y, yaw = float(d["x_m"]), float(d["y_m"]), float(d["yaw_rad"])
        topic = foxglove_topic(msg.topic)
        channel = self._channel(topic, "json", self._oni_data_schema(msg.header.schema))
        if channel.has_sinks():
            self._log(channel, topic, dict(d, stamp_ns=stamp), log_time_ns)
        odom = self._odom
        if odom is not None and abs(odom[0] - stamp) <= _ODOM_MATCH_NS:
            tf = self._channel(TF_TOPIC, "FrameTransforms")
            if tf.has_sinks():
                ox, oy, oyaw = _relative((x, y, yaw), odom[2:])
                transform = self._transform(_timestamp(self._m, stamp), frame, odom[1], ox, oy, 0.0, _yaw_quaternion(oyaw))
                self._log(tf, TF_TOPIC, self._m.FrameTransforms(transforms=[transform]), log_time_ns)
        self._update_path("ground_truth", frame, stamp, x, y, log_time_ns)

    def _route(self, msg: Message, log_time_ns: int | None) -> None:
        stamp = msg.header.stamp_ns
        if not self._due("route", stamp, self._periods_ns["route"]):
            return
        topic = foxglove_topic(msg.topic)
        channel = self._channel(topic, "SceneUpdate")
        if not channel.has_sinks():
            return
        m = self._m
        waypoints = np.asarray(msg.data["waypoints_m"], np.float64).reshape(-1, 2)
        color = self._color("route")
        line = m.LinePrimitive(type=m.LinePrimitiveLineType.LineStrip, pose=self._pose(0.0, 0.0, 0.0, 0.0),
                               thickness=0.02, points=[m.Point3(x=x, y=y, z=0.0) for x, y in waypoints.tolist()],
                               color=color)
        spheres = []
        if len(waypoints):
            r = float(msg.data["goal_radius_m"])
            gx, gy = waypoints[-1].tolist()
            spheres.append(m.SpherePrimitive(pose=self._pose(gx, gy, 0.0, 0.0), size=m.Vector3(x=2 * r, y=2 * r, z=0.02),
                                             color=self._color("ground_truth")))
        entity = m.SceneEntity(timestamp=_timestamp(m, stamp), frame_id=msg.header.frame_id, id="route",
                               frame_locked=True, lines=[line], spheres=spheres)
        self._log(channel, topic, m.SceneUpdate(entities=[entity]), log_time_ns)

    def _diagnostics(self, msg: Message, log_time_ns: int | None) -> None:
        topic = foxglove_topic(msg.topic)
        channel = self._channel(topic, "json", _DIAG_SCHEMA)
        if not channel.has_sinks():
            return
        d = msg.data
        stamp = msg.header.stamp_ns
        names = tuple(d.get("stages", ()))
        stage_us = np.asarray(d["stage_us"], np.float64).tolist() if "stage_us" in d else []
        est_ms = None
        if self._stage_index is None or self._stage_index[0] != names:  # resolved once per stage list
            self._stage_index = (names, [names.index(s) for s in ("ingest", "observe", "act") if s in names])
        ring = self._sensor_pub_ns
        sent = ring[(ring <= stamp) & (ring != _NEVER)]
        if len(self._stage_index[1]) == 3 and len(stage_us) == len(names) and sent.size:
            est_ms = (stamp - int(sent.max())) / 1e6 + sum(stage_us[i] for i in self._stage_index[1]) / 1e3
        self._log(channel, topic, {
            "stamp_ns": stamp,
            "tick": int(d["tick"]),
            "tick_us": float(d["tick_us"]),
            "deadline_misses": int(d["deadline_misses"]),
            "stage_us": dict(zip(names, stage_us)),
            "sensor_to_command_est_ms": est_ms,
            "stale_sensors": list(d.get("stale_sensors", ())),
            "stopped": bool(d.get("stopped", False)),
            "stop_reason": str(d.get("stop_reason", "")),
        }, log_time_ns)

    # ------------------------------------------------------------------------------------------------------------
    # Helpers.

    def _update_path(self, name: str, frame: str, stamp_ns: int, x: float, y: float, log_time_ns: int | None) -> None:
        path = self._paths[name]
        path.frame_id = frame
        path.add(x, y)
        if not self._due(f"path/{name}", stamp_ns, self._periods_ns["path"]):
            return
        topic = f"/path/{name}"
        channel = self._channel(topic, "SceneUpdate")
        if not channel.has_sinks():
            return
        m = self._m
        points = [m.Point3(x=px, y=py, z=0.0) for px, py in path.xy[: path.n].tolist()]
        line = m.LinePrimitive(type=m.LinePrimitiveLineType.LineStrip, pose=self._pose(0.0, 0.0, 0.0, 0.0),
                               thickness=0.04, points=points, color=self._color(name))
        entity = m.SceneEntity(timestamp=_timestamp(m, stamp_ns), frame_id=frame, id=name, frame_locked=True,
                               lines=[line])
        self._log(channel, topic, m.SceneUpdate(entities=[entity]), log_time_ns)

    def _scan(self, stamp_ns: int, frame_id: str, xyz_m: Sequence[float], ranges_m: np.ndarray, angle_min_rad: float,
              angle_increment_rad: float, intensities: np.ndarray | None) -> Any:
        m = self._m
        n = ranges_m.size
        return m.LaserScan(timestamp=_timestamp(m, stamp_ns), frame_id=frame_id, pose=self._pose(*xyz_m, 0.0),
                           start_angle=angle_min_rad, end_angle=angle_min_rad + (n - 1) * angle_increment_rad,
                           ranges=ranges_m.tolist(), intensities=None if intensities is None else intensities.tolist())

    def _pose(self, x: float, y: float, z: float, yaw_rad: float) -> Any:
        m = self._m
        qx, qy, qz, qw = _yaw_quaternion(yaw_rad)
        return m.Pose(position=m.Vector3(x=x, y=y, z=z), orientation=m.Quaternion(x=qx, y=qy, z=qz, w=qw))

    def _transform(self, ts: Any, parent: str, child: str, x: float, y: float, z: float,
                   q: tuple[float, float, float, float]) -> Any:
        m = self._m
        return m.FrameTransform(timestamp=ts, parent_frame_id=parent, child_frame_id=child,
                                translation=m.Vector3(x=x, y=y, z=z),
                                rotation=m.Quaternion(x=q[0], y=q[1], z=q[2], w=q[3]))

    def _color(self, name: str) -> Any:
        r, g, b, a = _COLORS[name]
        return self._m.Color(r=r, g=g, b=b, a=a)

    def _oni_data_schema(self, schema: str) -> dict[str, Any]:
        from oni.schema import SchemaRegistry

        document = SchemaRegistry.default().latest(schema).document
        return dict(document["properties"]["data"], title=document.get("title", schema))

    def _channel(self, topic: str, kind: str, json_schema: Mapping[str, Any] | None = None) -> Any:
        """The channel of ``topic`` (created on first use): a typed ``<kind>Channel``, or ``kind == "json"``."""
        channel = self._channels.get(topic)
        if channel is None:
            fox = self._fox
            if kind == "json":
                schema = fox.Schema(name=topic.strip("/").replace("/", "."), encoding="jsonschema",
                                    data=json.dumps(json_schema).encode())
                channel = fox.Channel(topic, schema=schema, message_encoding="json", context=self._context)
            else:
                channel = getattr(fox.channels, f"{kind}Channel")(topic, context=self._context)
            self._channels[topic] = channel
        return channel

    def _log(self, channel: Any, topic: str, message: Any, log_time_ns: int | None) -> None:
        channel.log(message, log_time=log_time_ns)
        self.counts[topic] = self.counts.get(topic, 0) + 1

    def _due(self, key: str, stamp_ns: int, period_ns: int | None) -> bool:
        """Rate limit by stamp: True (and remembered) when ``period_ns`` has passed since the last True for ``key``
        or the stamps went back (a new run); always True without a period."""
        if period_ns is None:
            return True
        last = self._last_ns.get(key)
        if last is not None and 0 <= stamp_ns - last < period_ns:
            return False
        self._last_ns[key] = stamp_ns
        return True


def _period_ns(hz: float | None) -> int | None:
    return None if hz is None else round(_NS / hz)


def _timestamp(messages: ModuleType, stamp_ns: int) -> Any:
    sec, nsec = divmod(int(stamp_ns), _NS)
    return messages.Timestamp(sec, nsec)


class LiveView:
    """A Foxglove WebSocket server on ``host:port`` (0: any free port) streaming the ONI messages given to
    :meth:`on_message` through a :class:`FoxgloveFeed` (``robot``, ``prediction_hz``: as there).

    Open ``ws://host:port`` in Foxglove ("Open connection" -> Foxglove WebSocket) and import
    ``docs/foxglove/oniwm-layout.json``. Feed it from one thread; :meth:`close` stops the server.
    Raises ``BackendUnavailable`` naming the ``view`` extra, or ``OSError`` when the port cannot be bound.
    """

    def __init__(self, port: int = DEFAULT_PORT, *, host: str = "127.0.0.1", robot: RobotDescription | None = None,
                 prediction_hz: float | None = 10.0) -> None:
        fox = _sdk()
        self.host = host
        self._context = fox.Context()
        try:
            self._server = fox.start_server(name="oniwm", host=host, port=port, context=self._context)
        except RuntimeError as exc:  # foxglove-sdk reports a bind failure as RuntimeError
            raise OSError(f"cannot start the Foxglove WebSocket server on {host}:{port}: {exc}") from exc
        self.feed = FoxgloveFeed(self._context, robot, prediction_hz=prediction_hz)

    @property
    def port(self) -> int:
        """The port the server listens on."""
        return int(self._server.port)

    @property
    def url(self) -> str:
        """What to open in Foxglove: ``ws://host:port``."""
        return f"ws://{self.host}:{self.port}"

    def on_message(self, msg: Message) -> None:
        """Stream ``msg`` (see :meth:`FoxgloveFeed.on_message`)."""
        self.feed.on_message(msg)

    def close(self) -> None:
        """Stop the server (clients are disconnected)."""
        self._server.stop()

    def __enter__(self) -> LiveView:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _robot_from_metadata(metadata: Mapping[str, Mapping[str, str]]) -> RobotDescription | None:
    """The shipped robot a log's metadata names (``run.robot`` from ``oniwm run``, ``robot.name`` from
    ``oniwm collect``), or None (with a warning) when it names none that is shipped."""
    from robots import load_robot, robot_path

    name = (metadata.get("run") or {}).get("robot") or (metadata.get("robot") or {}).get("name")
    if not name:
        log.warning("the log names no robot: no sensor mounts (pass --robot)")
        return None
    try:
        return load_robot(robot_path(name))
    except FileNotFoundError as exc:
        log.warning("%s: no sensor mounts (pass --robot)", exc)
        return None


def export_log(log_path: str | Path, out_path: str | Path, *, robot: RobotDescription | None = None,
               prediction_hz: float | None = None) -> dict[str, Any]:
    """Rewrite the ONI log ``log_path`` as a Foxglove MCAP at ``out_path`` (written atomically): the messages a
    :class:`LiveView` streams (every prediction unless ``prediction_hz``), log time = the recorded receive
    time, and the log's metadata records. ``robot`` defaults to the shipped robot the log's metadata names.

    Returns a summary: ``oni_messages`` read, ``foxglove_messages`` per Foxglove topic, ``robot``,
    ``horizons_s``. Raises ``LogError`` for a file that is not MCAP, ``BackendUnavailable`` without the extra.
    """
    fox = _sdk()
    from oni.files import atomic_write
    from oni.mcap_log import ONI_METADATA, LogReader

    reader = LogReader(log_path)
    metadata = reader.info().metadata
    robot = robot if robot is not None else _robot_from_metadata(metadata)
    summary: dict[str, Any] = {"log": str(log_path), "out": str(out_path), "robot": robot.name if robot else None}

    def write(handle: Any) -> None:
        context = fox.Context()
        with fox.open_mcap(handle, context=context) as writer:
            for name, record in metadata.items():
                if name != ONI_METADATA:  # it describes ONI's encoding, which this file does not use
                    writer.write_metadata(name, dict(record))
            feed = FoxgloveFeed(context, robot, prediction_hz=prediction_hz)
            count = 0
            for msg in reader.messages():
                feed.on_message(msg, msg.recv_ns)
                count += 1
        summary.update(oni_messages=count, foxglove_messages=dict(sorted(feed.counts.items())),
                       horizons_s=list(feed.horizons_s))

    atomic_write(out_path, write)
    if reader.unreadable_bytes:
        summary["unreadable_bytes"] = reader.unreadable_bytes
    return summary


def layout(horizons_s: Sequence[float] = (0.5, 1.0, 2.0), lidar_topic: str = "sensor.lidar") -> dict[str, Any]:
    """A Foxglove layout (the app's "Import from file" format) for the feed's topics: a 3D panel (scan,
    predicted scans at ``horizons_s`` with their bands, predicted and driven paths, route; display frame
    ``odom``, following ``base_link``), a Plot panel of the latency figures and a Raw Messages panel of
    ``/diag/runtime``."""
    orange = "#ff8000"
    topics: dict[str, Any] = {
        foxglove_topic(lidar_topic): {"visible": True, "pointSize": 3, "colorMode": "flat", "flatColor": "#ffffffff"},
        "/prediction/pose": {"visible": True},
        "/path/odom": {"visible": True},
        "/path/ground_truth": {"visible": True},
        "/nav/route": {"visible": True},
    }
    for i, h in enumerate(horizons_s):
        alpha = max(0x40, 0xff - 0x40 * i)
        topics[prediction_scan_topic(h)] = {"visible": True, "pointSize": 4, "colorMode": "flat",
                                            "flatColor": f"{orange}{alpha:02x}"}
        topics[prediction_scan_topic(h) + "/band"] = {"visible": i == 0, "pointSize": 2, "colorMode": "colormap",
                                                      "colorField": "std_m", "colorMap": "turbo"}
    three_d = {
        "cameraState": {"perspective": False, "distance": 14, "phi": 0.01, "thetaOffset": 90, "targetOffset": [0, 0, 0],
                        "target": [0, 0, 0], "targetOrientation": [0, 0, 0, 1], "fovy": 45, "near": 0.5, "far": 5000},
        "followMode": "follow-position",
        "followTf": BASE_FRAME,
        "scene": {"transforms": {"showLabel": False}},
        "transforms": {},
        "topics": topics,
        "layers": {"grid": {"visible": True, "layerId": "foxglove.Grid", "frameId": "odom", "size": 40, "divisions": 40,
                            "lineWidth": 0.5, "color": "#ffffff30", "position": [0, 0, 0], "rotation": [0, 0, 0]}},
        "publish": {"type": "point"},
        "imageMode": {},
    }

    def series(path: str, label: str) -> dict[str, Any]:
        return {"value": f"/diag/runtime.{path}", "label": label, "enabled": True, "timestampMethod": "receiveTime"}

    plot = {
        "paths": [series("tick_us", "tick (us)"), series("stage_us.plan", "plan (us)"),
                  series("stage_us.observe", "belief update (us)"),
                  series("sensor_to_command_est_ms", "sensor->command est. (ms)"),
                  series("deadline_misses", "deadline misses")],
        "showLegend": True, "legendDisplay": "floating", "showXAxisLabels": True, "showYAxisLabels": True,
        "isSynced": True, "xAxisVal": "timestamp", "followingViewWidth": 30,
    }
    raw = {"topicPath": "/diag/runtime", "diffEnabled": False, "diffMethod": "custom", "diffTopicPath": "",
           "showFullMessageForDiff": False}
    return {
        "configById": {"3D!oniwm": three_d, "Plot!oniwm": plot, "RawMessages!oniwm": raw},
        "globalVariables": {},
        "userNodes": {},
        "playbackConfig": {"speed": 1},
        "layout": {"first": "3D!oniwm", "second": {"first": "Plot!oniwm", "second": "RawMessages!oniwm",
                                                   "direction": "column", "splitPercentage": 60},
                   "direction": "row", "splitPercentage": 62},
    }


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``view-log`` to ``oniwm``."""
    parser = subparsers.add_parser("view-log", help="rewrite an ONI log as a Foxglove MCAP (what the live view shows)",
                                   description="Rewrite an ONI log as an MCAP file with Foxglove schemas (protobuf and "
                                               "JSON): the messages `oniwm run --view` streams, at their recorded "
                                               "receive times. Prints a JSON summary. See docs/foxglove.md.")
    parser.add_argument("log", metavar="LOG", help="an ONI log (e.g. runs/main/run.mcap)")
    parser.add_argument("--out", required=True, metavar="FILE.mcap", help="the Foxglove MCAP to write")
    parser.add_argument("--robot", default=None, metavar="NAME|YAML",
                        help="robot description for the sensor mounts (default: the one the log's metadata names)")
    parser.add_argument("--layout", default=None, metavar="FILE",
                        help="also write a Foxglove layout for the log's prediction horizons")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``oniwm view-log``: 0 on success, 2 on bad input or a missing extra."""
    from oni.errors import OniError
    from oni.files import write_json
    from robots import DescriptionError, load_robot, resolve_robot

    try:
        if not Path(args.log).is_file():
            raise FileNotFoundError(f"no log {args.log}")
        robot = load_robot(resolve_robot(args.robot)) if args.robot else None
        summary = export_log(args.log, args.out, robot=robot)
        if args.layout:
            write_json(args.layout, layout(summary["horizons_s"] or (0.5, 1.0, 2.0)))
            summary["layout"] = args.layout
    except (OSError, ImportError, OniError, DescriptionError, ValueError) as exc:
        log.error("oniwm view-log: %s", exc)
        return 2
    json.dump(summary, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0
