"""Pure conversions between ROS 2 standard messages and the ``data`` of ONI messages.

ROS -> ONI: ``*_to_oni(msg, sensor) -> Converted`` reads any object with the ROS field names (a ``rosbags``
message, an rclpy message) and returns the header stamp (ns since the Unix epoch; None for a type without a
header), the frame id and the ONI ``data`` map, with keys, dtypes and units as in ``oni/schemas/*.json``.
``sensor`` is the robot description's sensor the message feeds: a message whose size differs from it (a
scan with another beam count, an image of another resolution) raises :class:`ConversionError` naming the
mismatch; nothing is ever reshaped to fit. Arrays are copied through the buffer protocol (numpy), never
element by element.

ONI -> ROS: ``*_to_ros(stamp_ns, frame_id, data, types)`` builds the ROS message from the message classes in
``types`` (ROS type name -> class, e.g. a ``rosbags`` typestore's ``types``).

========================  ==================  ===================================================================
ROS 2 type                ONI schema          not carried by ONI (what the export writes instead)
========================  ==================  ===================================================================
sensor_msgs/LaserScan     sensor.lidar        ``time_increment`` (0); ``angle_max`` is recomputed from the beams
sensor_msgs/Imu           sensor.imu          the three covariances (zeros)
nav_msgs/Odometry         sensor.odom         z, roll, pitch, lateral and vertical velocity, covariances,
                                              ``child_frame_id`` (``base_link``); the quaternion is rebuilt from yaw
sensor_msgs/Image         sensor.depth        row padding and big-endian data (written packed, little-endian);
                                              intrinsics come from the robot's description (import) and go to a
                                              ``sensor_msgs/CameraInfo`` (export)
geometry_msgs/Twist       actuator.cmd        every component but linear x and angular z (zeros); no header:
(and TwistStamped)                            the bag's receive time stamps it
========================  ==================  ===================================================================

For the ROS 2 node (:mod:`robots.ros2.core`): :func:`goal_to_route` (a ``geometry_msgs/PoseStamped`` goal ->
``nav.route``), :func:`predicted_scan_to_ros`, :func:`predicted_path_to_ros` and :func:`diagnostics_to_ros` (the
runtime's ``prediction.lidar``, ``prediction.pose`` and ``diag.runtime`` -> ``LaserScan``, ``nav_msgs/Path``,
``DiagnosticArray``), and :func:`buffer_sequences` (numpy arrays into rclpy's and cyclonedds' sequence fields).

"No return" follows each side's convention: ROS scans mark it +inf (REP 117; also NaN and values outside
``[range_min, range_max]``), ONI scans ``range_max_m``; ROS ``32FC1`` depth marks it NaN (REP 118), ONI depth 0.
A scan's -inf ("too close") becomes ``range_min_m``. Everything else round-trips ROS -> ONI -> ROS exactly.
"""

from __future__ import annotations

import array
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from robots.description import SensorDescription

__all__ = [
    "BASE_FRAME",
    "CAMERA_INFO",
    "ROS_TYPES",
    "ConversionError",
    "Converted",
    "RosType",
    "buffer_sequences",
    "camera_info_to_ros",
    "depth_to_oni",
    "depth_to_ros",
    "diagnostics_to_ros",
    "goal_to_route",
    "imu_to_oni",
    "imu_to_ros",
    "ns_to_stamp",
    "odom_to_oni",
    "odom_to_ros",
    "predicted_path_to_ros",
    "predicted_scan_to_ros",
    "scan_to_oni",
    "scan_to_ros",
    "stamp_to_ns",
    "twist_stamped_to_oni",
    "twist_stamped_to_ros",
    "twist_to_oni",
    "twist_to_ros",
]

NS_PER_S = 1_000_000_000
#: Frame of the robot's base: the ``child_frame_id`` of exported odometry, the frame of velocity commands.
BASE_FRAME = "base_link"
#: The type the export writes a depth image's intrinsics to.
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
#: ROS ``Image`` encodings of depth: (element dtype, metres per unit). REP 118: 16UC1 in mm, 32FC1 in m.
_DEPTH_ENCODINGS: dict[str, tuple[type, float]] = {"16UC1": (np.uint16, 0.001), "32FC1": (np.float32, 1.0)}
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1

#: ROS type name -> message class (a ``rosbags`` typestore's ``types``).
Types = Mapping[str, Callable[..., Any]]


class ConversionError(ValueError):
    """A ROS message that cannot become an ONI message as it is (unexpected size, unknown encoding), or ONI data
    that a ROS type cannot carry. The message names the type, the field, what it is and what was expected."""


class Converted(NamedTuple):
    """One ROS message as ONI: header stamp (ns since the Unix epoch; None when the type has no header), frame id
    and the ``data`` map of the ONI schema."""

    stamp_ns: int | None
    frame_id: str
    data: dict[str, Any]


def stamp_to_ns(stamp: Any) -> int:
    """A ``builtin_interfaces/Time`` (``sec``, ``nanosec``) as int ns since the epoch of its clock."""
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


def ns_to_stamp(stamp_ns: int, types: Types) -> Any:
    """``stamp_ns`` as a ``builtin_interfaces/Time``; raises when the seconds do not fit ROS's int32."""
    sec, nanosec = divmod(int(stamp_ns), NS_PER_S)
    if not _INT32_MIN <= sec <= _INT32_MAX:
        raise ConversionError(f"builtin_interfaces/msg/Time: stamp_ns {stamp_ns} needs {sec} s, outside ROS's int32 seconds")
    return types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec)


def _header(stamp_ns: int, frame_id: str, types: Types) -> Any:
    return types["std_msgs/msg/Header"](stamp=ns_to_stamp(stamp_ns, types), frame_id=frame_id)


def _vector3(values: np.ndarray, types: Types) -> Any:
    x, y, z = values.tolist()
    return types["geometry_msgs/msg/Vector3"](x=x, y=y, z=z)


def _shape(name: str, value: Any, shape: tuple[int, ...], target: str) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64)
    if array.shape != shape:
        raise ConversionError(f"{name} has shape {array.shape}; {target} carries {shape}")
    return array


# --------------------------------------------------------------------------------------------------------------
# sensor_msgs/LaserScan <-> sensor.lidar


def scan_to_oni(msg: Any, sensor: SensorDescription | None = None) -> Converted:
    """``sensor_msgs/LaserScan`` -> ``sensor.lidar``: ``ranges_m`` (N,) float32 m, optional ``intensities`` (N,).

    ROS "no return" (+inf, NaN, values outside ``[range_min, range_max]``) becomes ``range_max_m``; -inf ("too
    close") ``range_min_m``. A clockwise scan (negative ``angle_increment``) is reversed so beams run
    counter-clockwise, as ONI requires. With ``sensor`` (the robot's LiDAR), a beam count other than
    ``sensor.params.beams`` raises :class:`ConversionError`.
    """
    ranges = np.array(msg.ranges, dtype=np.float32)  # an owned copy; rosbags gives an ndarray, rclpy an array('f')
    beams = ranges.shape[0] if ranges.ndim == 1 else 0
    if beams == 0:
        raise ConversionError(f"sensor_msgs/msg/LaserScan: ranges has shape {ranges.shape}; expected (N,) with N >= 1")
    if sensor is not None and beams != sensor.params.beams:  # type: ignore[union-attr]
        raise ConversionError(
            f"sensor_msgs/msg/LaserScan: {beams} beams, but the robot's LiDAR {sensor.name!r} has "
            f"{sensor.params.beams} (params.beams): refused, never reshaped"  # type: ignore[union-attr]
        )
    intensities = np.array(msg.intensities, dtype=np.float32)
    if intensities.shape not in ((0,), (beams,)):
        raise ConversionError(f"sensor_msgs/msg/LaserScan: {intensities.size} intensities for {beams} beams; expected 0 or {beams}")
    range_min, range_max = float(msg.range_min), float(msg.range_max)
    too_close = ranges == -np.inf
    no_return = ~np.isfinite(ranges) | (ranges > range_max) | (ranges < range_min)
    ranges[no_return] = range_max
    ranges[too_close] = range_min
    angle_min, increment = float(msg.angle_min), float(msg.angle_increment)
    if increment < 0:
        angle_min, increment = angle_min + increment * (beams - 1), -increment
        ranges, intensities = ranges[::-1].copy(), intensities[::-1].copy()
    data: dict[str, Any] = {
        "ranges_m": ranges,
        "angle_min_rad": angle_min,
        "angle_increment_rad": increment,
        "range_min_m": range_min,
        "range_max_m": range_max,
        "scan_time_s": float(msg.scan_time),
    }
    if intensities.size:
        data["intensities"] = intensities
    return Converted(stamp_to_ns(msg.header.stamp), msg.header.frame_id, data)


def scan_to_ros(stamp_ns: int, frame_id: str, data: Mapping[str, Any], types: Types) -> Any:
    """``sensor.lidar`` -> ``sensor_msgs/LaserScan``; beams at ``range_max_m`` (ONI's "no return") become +inf."""
    ranges = np.array(data["ranges_m"], dtype=np.float32)
    if ranges.ndim != 1:
        raise ConversionError(f"sensor.lidar: ranges_m has shape {ranges.shape}; sensor_msgs/msg/LaserScan carries (N,)")
    range_max = float(data["range_max_m"])
    ranges[ranges >= np.float32(range_max)] = np.inf
    angle_min, increment = float(data["angle_min_rad"]), float(data["angle_increment_rad"])
    return types["sensor_msgs/msg/LaserScan"](
        header=_header(stamp_ns, frame_id, types),
        angle_min=angle_min,
        angle_max=angle_min + increment * (ranges.shape[0] - 1),
        angle_increment=increment,
        time_increment=0.0,
        scan_time=float(data.get("scan_time_s", 0.0)),
        range_min=float(data["range_min_m"]),
        range_max=range_max,
        ranges=ranges,
        intensities=np.array(data.get("intensities", ()), dtype=np.float32),
    )


# --------------------------------------------------------------------------------------------------------------
# sensor_msgs/Imu <-> sensor.imu


def imu_to_oni(msg: Any, sensor: SensorDescription | None = None) -> Converted:
    """``sensor_msgs/Imu`` -> ``sensor.imu``: one sample, ``accel_mps2`` and ``gyro_radps`` (3,) float64, and
    ``orientation_xyzw`` (4,) unless ``orientation_covariance[0]`` is -1 (ROS: "no orientation estimate")."""
    a, g = msg.linear_acceleration, msg.angular_velocity
    data: dict[str, Any] = {
        "accel_mps2": np.array((a.x, a.y, a.z), dtype=np.float64),
        "gyro_radps": np.array((g.x, g.y, g.z), dtype=np.float64),
    }
    if float(msg.orientation_covariance[0]) != -1.0:
        q = msg.orientation
        data["orientation_xyzw"] = np.array((q.x, q.y, q.z, q.w), dtype=np.float64)
    return Converted(stamp_to_ns(msg.header.stamp), msg.header.frame_id, data)


def imu_to_ros(stamp_ns: int, frame_id: str, data: Mapping[str, Any], types: Types) -> Any:
    """``sensor.imu`` (one sample: (3,) vectors) -> ``sensor_msgs/Imu`` with zero covariances ("unknown");
    without ``orientation_xyzw`` the orientation is marked absent (covariance[0] = -1, identity quaternion)."""
    accel = _shape("sensor.imu accel_mps2", data["accel_mps2"], (3,), "sensor_msgs/msg/Imu (one sample)")
    gyro = _shape("sensor.imu gyro_radps", data["gyro_radps"], (3,), "sensor_msgs/msg/Imu (one sample)")
    orientation_covariance = np.zeros(9)
    if "orientation_xyzw" in data:
        x, y, z, w = _shape("sensor.imu orientation_xyzw", data["orientation_xyzw"], (4,), "sensor_msgs/msg/Imu").tolist()
    else:
        (x, y, z, w), orientation_covariance[0] = (0.0, 0.0, 0.0, 1.0), -1.0
    return types["sensor_msgs/msg/Imu"](
        header=_header(stamp_ns, frame_id, types),
        orientation=types["geometry_msgs/msg/Quaternion"](x=x, y=y, z=z, w=w),
        orientation_covariance=orientation_covariance,
        angular_velocity=_vector3(gyro, types),
        angular_velocity_covariance=np.zeros(9),
        linear_acceleration=_vector3(accel, types),
        linear_acceleration_covariance=np.zeros(9),
    )


# --------------------------------------------------------------------------------------------------------------
# nav_msgs/Odometry <-> sensor.odom


def odom_to_oni(msg: Any, sensor: SensorDescription | None = None) -> Converted:
    """``nav_msgs/Odometry`` -> ``sensor.odom``: planar pose (``x_m``, ``y_m``, ``yaw_rad`` from the quaternion)
    in the header's frame, ``v_mps`` (twist linear x) and ``omega_radps`` (twist angular z) in the base frame."""
    p, q, t = msg.pose.pose.position, msg.pose.pose.orientation, msg.twist.twist
    yaw = math.atan2(2.0 * (q.w * q.z + q.x * q.y), 1.0 - 2.0 * (q.y * q.y + q.z * q.z))
    data = {"x_m": float(p.x), "y_m": float(p.y), "yaw_rad": yaw, "v_mps": float(t.linear.x),
            "omega_radps": float(t.angular.z)}
    return Converted(stamp_to_ns(msg.header.stamp), msg.header.frame_id, data)


def odom_to_ros(stamp_ns: int, frame_id: str, data: Mapping[str, Any], types: Types) -> Any:
    """``sensor.odom`` -> ``nav_msgs/Odometry``: a planar pose (z = 0, quaternion about z) in ``frame_id``,
    child frame :data:`BASE_FRAME`, zero covariances."""
    half = 0.5 * float(data["yaw_rad"])
    pose = types["geometry_msgs/msg/Pose"](
        position=types["geometry_msgs/msg/Point"](x=float(data["x_m"]), y=float(data["y_m"]), z=0.0),
        orientation=types["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=math.sin(half), w=math.cos(half)),
    )
    twist = _twist(data, types)
    return types["nav_msgs/msg/Odometry"](
        header=_header(stamp_ns, frame_id, types),
        child_frame_id=BASE_FRAME,
        pose=types["geometry_msgs/msg/PoseWithCovariance"](pose=pose, covariance=np.zeros(36)),
        twist=types["geometry_msgs/msg/TwistWithCovariance"](twist=twist, covariance=np.zeros(36)),
    )


# --------------------------------------------------------------------------------------------------------------
# sensor_msgs/Image (depth) <-> sensor.depth


def depth_to_oni(msg: Any, sensor: SensorDescription | None = None) -> Converted:
    """``sensor_msgs/Image`` of depth -> ``sensor.depth``: ``16UC1`` (mm) as uint16 (H, W) with ``depth_scale_m``
    0.001, ``32FC1`` (m) as float32 (H, W) with non-finite pixels (no return) set to 0.

    ``sensor`` (the robot's depth camera) is required: it gives the intrinsics (``fx``, ``fy``, ``cx``, ``cy``
    px) and ``range_max_m``, and an image of another ``height x width`` raises :class:`ConversionError`.
    Row padding (``step`` beyond ``width`` pixels) is dropped; big-endian data is converted to native order.
    """
    encoding = str(msg.encoding)
    if encoding not in _DEPTH_ENCODINGS:
        raise ConversionError(f"sensor_msgs/msg/Image: encoding {encoding!r} is not depth; expected one of {sorted(_DEPTH_ENCODINGS)}")
    if sensor is None:
        raise ConversionError("sensor_msgs/msg/Image: a depth image needs the robot's depth camera (its intrinsics)")
    params = sensor.params
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if (height, width) != (params.height, params.width):  # type: ignore[union-attr]
        raise ConversionError(
            f"sensor_msgs/msg/Image: {height} x {width} pixels, but the robot's depth camera {sensor.name!r} has "
            f"{params.height} x {params.width} (params.height x params.width): refused, never reshaped"  # type: ignore[union-attr]
        )
    dtype, scale = _DEPTH_ENCODINGS[encoding]
    item = np.dtype(dtype).newbyteorder(">" if msg.is_bigendian else "<")
    raw = np.frombuffer(msg.data, dtype=np.uint8)
    if step < width * item.itemsize or raw.size != step * height:
        raise ConversionError(
            f"sensor_msgs/msg/Image: {raw.size} data bytes with step {step} for {height} rows of {width} {encoding} "
            f"pixels; expected step >= {width * item.itemsize} and step * height = {step * height} bytes"
        )
    rows = np.ascontiguousarray(raw.reshape(height, step)[:, : width * item.itemsize])
    depth = rows.view(item).reshape(height, width).astype(dtype)  # native byte order, owned
    if depth.dtype.kind == "f":
        depth[~np.isfinite(depth)] = 0.0
    fx, fy, cx, cy = params.intrinsics  # type: ignore[union-attr]
    data = {"depth": depth, "depth_scale_m": scale, "fx": fx, "fy": fy, "cx": cx, "cy": cy,
            "range_max_m": params.range_max_m}  # type: ignore[union-attr]
    return Converted(stamp_to_ns(msg.header.stamp), msg.header.frame_id, data)


def depth_to_ros(stamp_ns: int, frame_id: str, data: Mapping[str, Any], types: Types) -> Any:
    """``sensor.depth`` -> ``sensor_msgs/Image``, little-endian and packed: uint16 in mm as ``16UC1``, anything
    else as ``32FC1`` metres with 0 (no return) written as NaN (REP 118)."""
    depth = np.asarray(data["depth"])
    if depth.ndim != 2:
        raise ConversionError(f"sensor.depth: depth has shape {depth.shape}; sensor_msgs/msg/Image carries (H, W)")
    scale = float(data.get("depth_scale_m", 1.0))
    if depth.dtype == np.uint16 and scale == 0.001:
        encoding, pixels = "16UC1", depth.astype("<u2")
    else:
        encoding, pixels = "32FC1", (depth * scale).astype("<f4")
        pixels[depth == 0] = np.nan
    height, width = depth.shape
    return types["sensor_msgs/msg/Image"](
        header=_header(stamp_ns, frame_id, types),
        height=height,
        width=width,
        encoding=encoding,
        is_bigendian=0,
        step=width * pixels.itemsize,
        data=np.ascontiguousarray(pixels).view(np.uint8).reshape(-1),
    )


def camera_info_to_ros(stamp_ns: int, frame_id: str, data: Mapping[str, Any], types: Types) -> Any:
    """The intrinsics of a ``sensor.depth`` message as a ``sensor_msgs/CameraInfo`` (pinhole, no distortion)."""
    fx, fy, cx, cy = (float(data[k]) for k in ("fx", "fy", "cx", "cy"))
    height, width = np.asarray(data["depth"]).shape
    return types[CAMERA_INFO](
        header=_header(stamp_ns, frame_id, types),
        height=height,
        width=width,
        distortion_model="plumb_bob",
        d=np.zeros(5),
        k=np.array([fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]),
        r=np.eye(3).reshape(-1),
        p=np.array([fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0]),
        binning_x=0,
        binning_y=0,
        roi=types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False),
    )


# --------------------------------------------------------------------------------------------------------------
# geometry_msgs/Twist and TwistStamped <-> actuator.cmd


def twist_to_oni(msg: Any, sensor: SensorDescription | None = None) -> Converted:
    """``geometry_msgs/Twist`` -> ``actuator.cmd`` (``v_mps`` = linear x, ``omega_radps`` = angular z); no header,
    so ``stamp_ns`` is None (the caller stamps it with the receive time) and the frame is :data:`BASE_FRAME`."""
    return Converted(None, BASE_FRAME, {"v_mps": float(msg.linear.x), "omega_radps": float(msg.angular.z)})


def twist_stamped_to_oni(msg: Any, sensor: SensorDescription | None = None) -> Converted:
    """``geometry_msgs/TwistStamped`` -> ``actuator.cmd``, stamped by its header."""
    command = twist_to_oni(msg.twist)
    return Converted(stamp_to_ns(msg.header.stamp), msg.header.frame_id or BASE_FRAME, command.data)


def _twist(data: Mapping[str, Any], types: Types) -> Any:
    """``v_mps`` / ``omega_radps`` as a ``geometry_msgs/Twist`` (zeros when ``stop`` is set)."""
    stop = bool(data.get("stop", False))
    v = 0.0 if stop else float(data["v_mps"])
    omega = 0.0 if stop else float(data["omega_radps"])
    vector = types["geometry_msgs/msg/Vector3"]
    return types["geometry_msgs/msg/Twist"](linear=vector(x=v, y=0.0, z=0.0), angular=vector(x=0.0, y=0.0, z=omega))


def twist_to_ros(stamp_ns: int, frame_id: str, data: Mapping[str, Any], types: Types) -> Any:
    """``actuator.cmd`` -> ``geometry_msgs/Twist`` (a ``stop`` command as zeros); the stamp is the bag's time."""
    return _twist(data, types)


def twist_stamped_to_ros(stamp_ns: int, frame_id: str, data: Mapping[str, Any], types: Types) -> Any:
    """``actuator.cmd`` -> ``geometry_msgs/TwistStamped``."""
    return types["geometry_msgs/msg/TwistStamped"](header=_header(stamp_ns, frame_id, types), twist=_twist(data, types))


# --------------------------------------------------------------------------------------------------------------
# A goal -> nav.route, and the runtime's outputs -> ROS (the ROS 2 node and ``oniwm ros2-bridge``)


def goal_to_route(msg: Any, start_xy_m: tuple[float, float], odom_frame: str, goal_radius_m: float) -> Converted:
    """A ``geometry_msgs/PoseStamped`` goal -> ``nav.route``: ``waypoints_m`` (2, 2) float64 m, the straight route
    from ``start_xy_m`` (the robot's odometry position when the goal came) to the goal's position, reached within
    ``goal_radius_m``. The goal's orientation is not used (the route ends at a point).

    The route is in the odometry frame and nothing here transforms between frames (no TF): a goal whose
    ``header.frame_id`` is not ``odom_frame`` raises :class:`ConversionError` naming both, as does a non-finite one.
    """
    frame = str(msg.header.frame_id)
    if frame != odom_frame:
        raise ConversionError(f"geometry_msgs/msg/PoseStamped: goal in frame {frame!r}, but the odometry is in "
                              f"{odom_frame!r}: send goals in the odometry frame (this node has no TF)")
    p = msg.pose.position
    waypoints = np.array(((start_xy_m[0], start_xy_m[1]), (p.x, p.y)), dtype=np.float64)
    if not np.isfinite(waypoints).all():
        raise ConversionError(f"geometry_msgs/msg/PoseStamped: goal position ({p.x}, {p.y}) is not finite")
    return Converted(stamp_to_ns(msg.header.stamp), odom_frame,
                     {"waypoints_m": waypoints, "goal_radius_m": float(goal_radius_m)})


def predicted_scan_to_ros(stamp_ns: int, data: Mapping[str, Any], horizon: int, lidar: SensorDescription,
                          types: Types) -> Any:
    """Row ``horizon`` of a ``prediction.lidar`` (``ranges_m`` (K, N) m; angles in the base frame) ->
    ``sensor_msgs/LaserScan`` in the frame of the robot's LiDAR ``lidar`` (its mount yaw taken off the angles),
    with its range limits; predicted ranges at or beyond ``range_max_m`` are "no return" (+inf). Stamped
    ``stamp_ns``, the time the prediction was made from, so a viewer shows it at the robot's current pose."""
    ranges = np.asarray(data["ranges_m"])
    if ranges.ndim != 2 or not 0 <= horizon < ranges.shape[0]:
        raise ConversionError(f"prediction.lidar: ranges_m has shape {ranges.shape}; expected (K, N) with K > {horizon}")
    params = lidar.params
    scan = {
        "ranges_m": ranges[horizon],
        "angle_min_rad": float(data["angle_min_rad"]) - lidar.mount.rpy_rad[2],
        "angle_increment_rad": float(data["angle_increment_rad"]),
        "range_min_m": params.range_min_m,  # type: ignore[union-attr]
        "range_max_m": params.range_max_m,  # type: ignore[union-attr]
    }
    return scan_to_ros(stamp_ns, lidar.frame_id, scan, types)


def predicted_path_to_ros(stamp_ns: int, frame_id: str, data: Mapping[str, Any], types: Types) -> Any:
    """``prediction.pose`` (``pose`` (K, 3): ``x_m``, ``y_m``, ``yaw_rad`` relative to the robot's pose at
    ``stamp_ns``; ``horizons_s`` (K,)) -> ``nav_msgs/Path`` in ``frame_id`` (the robot's base frame): K + 1 poses,
    the robot itself at ``stamp_ns`` and then each predicted pose, stamped ``stamp_ns + horizon``, planar
    (z = 0, quaternion about z)."""
    pose = np.asarray(data["pose"], dtype=np.float64)
    horizons = np.asarray(data["horizons_s"], dtype=np.float64)
    if pose.ndim != 2 or pose.shape[1] != 3 or horizons.shape != pose.shape[:1]:
        raise ConversionError(f"prediction.pose: pose {pose.shape} and horizons_s {horizons.shape}; expected (K, 3) "
                              "and (K,)")
    path = np.zeros((pose.shape[0] + 1, 3))
    path[1:] = pose
    half = 0.5 * path[:, 2]
    stamps = stamp_ns + np.rint(np.concatenate(([0.0], horizons)) * NS_PER_S).astype(np.int64)
    point, quaternion = types["geometry_msgs/msg/Point"], types["geometry_msgs/msg/Quaternion"]
    pose_cls, stamped = types["geometry_msgs/msg/Pose"], types["geometry_msgs/msg/PoseStamped"]
    # ROS carries a path as one message object per pose; the numbers come out of the arrays in one go each.
    poses = [
        stamped(header=_header(t, frame_id, types),
                pose=pose_cls(position=point(x=x, y=y, z=0.0), orientation=quaternion(x=0.0, y=0.0, z=qz, w=qw)))
        for t, x, y, qz, qw in zip(stamps.tolist(), path[:, 0].tolist(), path[:, 1].tolist(), np.sin(half).tolist(),
                                   np.cos(half).tolist())
    ]
    return types["nav_msgs/msg/Path"](header=_header(stamp_ns, frame_id, types), poses=poses)


def diagnostics_to_ros(stamp_ns: int, data: Mapping[str, Any], values: Mapping[str, Any], types: Types, *,
                       name: str, hardware_id: str) -> Any:
    """``diag.runtime`` -> ``diagnostic_msgs/DiagnosticArray`` with one status ``name``: level OK while the runtime
    drives, WARN while it commands a stop (the message says why; "driving" otherwise). Its key/values: ``tick``,
    ``tick_us``, ``deadline_misses``, ``stale_sensors`` (comma-separated topics), ``stage_us.<stage>`` per stage (us),
    then ``values`` (the caller's counters), each written with ``str``."""
    status, key_value = types["diagnostic_msgs/msg/DiagnosticStatus"], types["diagnostic_msgs/msg/KeyValue"]
    stopped = bool(data["stopped"])
    pairs: dict[str, Any] = {
        "tick": int(data["tick"]),
        "tick_us": f"{float(data['tick_us']):.1f}",
        "deadline_misses": int(data["deadline_misses"]),
        "stale_sensors": ",".join(data["stale_sensors"]),
    }
    pairs.update((f"stage_us.{stage}", f"{us:.1f}") for stage, us in zip(data["stages"], np.asarray(data["stage_us"]).tolist()))
    pairs.update(values)
    entry = status(level=status.WARN if stopped else status.OK, name=name,
                   message=str(data["stop_reason"]) if stopped else "driving", hardware_id=hardware_id,
                   values=[key_value(key=k, value=str(v)) for k, v in pairs.items()])
    return types["diagnostic_msgs/msg/DiagnosticArray"](header=_header(stamp_ns, "", types), status=[entry])


#: ``array`` typecodes of numpy dtypes, for :func:`buffer_sequences`.
_TYPECODE_DTYPES = {"f": np.float32, "d": np.float64, "B": np.uint8}


def buffer_sequences(cls: Callable[..., Any], typecodes: Mapping[str, str]) -> Callable[..., Any]:
    """A constructor of the message class ``cls`` that turns the numpy arrays the ``*_to_ros`` functions give its
    primitive sequence fields ``typecodes`` (field -> ``array`` typecode: ``f`` float32, ``d`` float64, ``B``
    uint8) into ``array.array`` filled through the buffer protocol: rclpy's and cyclonedds' sequence fields take an
    ``array.array`` (or a list), not an ndarray. Other arguments pass through unchanged."""
    unknown = sorted(set(typecodes.values()) - set(_TYPECODE_DTYPES))
    if unknown:
        raise ValueError(f"typecodes {unknown}: supported are {sorted(_TYPECODE_DTYPES)}")

    def make(**fields: Any) -> Any:
        for name, code in typecodes.items():
            value = fields.get(name)
            if isinstance(value, np.ndarray):
                sequence = array.array(code)
                sequence.frombytes(memoryview(np.ascontiguousarray(value, dtype=_TYPECODE_DTYPES[code])).cast("B"))
                fields[name] = sequence
        return cls(**fields)

    return make


# --------------------------------------------------------------------------------------------------------------
# The registry.


@dataclass(frozen=True)
class RosType:
    """How one ROS 2 message type maps to an ONI schema.

    ``kind``: the robot description's sensor kind whose sensor the message feeds (sizes are checked against
    it), or ``drive`` for the base's command topic. ``stamped``: the type has a header (else the receive time
    stamps it). ``to_oni`` / ``to_ros``: the conversions. A robot that publishes another type defines its own
    :class:`RosType` and names it in the bag mapping file (``converter: module:NAME``).
    """

    name: str
    schema: str
    kind: str
    stamped: bool
    to_oni: Callable[[Any, SensorDescription | None], Converted]
    to_ros: Callable[[int, str, Mapping[str, Any], Types], Any]


#: Built-in conversions, by ROS type name.
ROS_TYPES: dict[str, RosType] = {
    t.name: t
    for t in (
        RosType("sensor_msgs/msg/LaserScan", "sensor.lidar", "lidar", True, scan_to_oni, scan_to_ros),
        RosType("sensor_msgs/msg/Imu", "sensor.imu", "imu", True, imu_to_oni, imu_to_ros),
        RosType("nav_msgs/msg/Odometry", "sensor.odom", "odom", True, odom_to_oni, odom_to_ros),
        RosType("sensor_msgs/msg/Image", "sensor.depth", "depth", True, depth_to_oni, depth_to_ros),
        RosType("geometry_msgs/msg/Twist", "actuator.cmd", "drive", False, twist_to_oni, twist_to_ros),
        RosType("geometry_msgs/msg/TwistStamped", "actuator.cmd", "drive", True, twist_stamped_to_oni, twist_stamped_to_ros),
    )
}
