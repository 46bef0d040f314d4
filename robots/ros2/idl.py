"""The ROS 2 messages ``oniwm ros2-bridge`` exchanges, as cyclonedds IDL types, field by field as ROS 2 defines them.

ROS 2 over DDS (rmw_cyclonedds, rmw_fastrtps) names the DDS type of ``pkg/msg/Name`` ``pkg::msg::dds_::Name_`` and
encodes it as plain (XCDR1) CDR of the struct generated from the ``.msg`` file: fields in declaration order, ROS
``float32``/``float64`` as IDL ``float``/``double``, ``uint8`` as ``uint8``, ``byte`` as ``octet``, ``string`` as
``string``, ``T[]`` as ``sequence<T>``, ``T[N]`` as ``T[N]``, nested messages as nested structs. The classes below
follow the ROS 2 Humble / Jazzy definitions (identical for these types) so a ROS 2 node on the same DDS domain
reads what the bridge writes and the bridge reads what it publishes, without a ROS install on this side.

:data:`TYPES` maps each ROS type name to its class (for :mod:`robots.ros2.convert`'s ``types``), with numpy arrays
for primitive sequences passed through the buffer protocol (:func:`~robots.ros2.convert.buffer_sequences`).
Imports ``cyclonedds``: load this module only where the ``ros2`` extra is installed.
"""

# No `from __future__ import annotations`: cyclonedds reads these annotations as objects.
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cyclonedds.idl import IdlStruct
from cyclonedds.idl.types import (
    array,
    byte,
    float32,
    float64,
    int32,
    sequence,
    uint8,
    uint32,
)

from robots.ros2.convert import buffer_sequences

__all__ = ["CLASSES", "TYPES", "dds_type_name"]


def dds_type_name(ros_type: str) -> str:
    """The DDS type name ROS 2 gives ``ros_type``: ``sensor_msgs/msg/LaserScan`` -> ``sensor_msgs::msg::dds_::LaserScan_``."""
    package, kind, name = ros_type.split("/")
    return f"{package}::{kind}::dds_::{name}_"


# builtin_interfaces, std_msgs


@dataclass
class Time(IdlStruct, typename=dds_type_name("builtin_interfaces/msg/Time")):
    sec: int32
    nanosec: uint32


@dataclass
class Header(IdlStruct, typename=dds_type_name("std_msgs/msg/Header")):
    stamp: Time
    frame_id: str


# geometry_msgs


@dataclass
class Vector3(IdlStruct, typename=dds_type_name("geometry_msgs/msg/Vector3")):
    x: float64
    y: float64
    z: float64


@dataclass
class Point(IdlStruct, typename=dds_type_name("geometry_msgs/msg/Point")):
    x: float64
    y: float64
    z: float64


@dataclass
class Quaternion(IdlStruct, typename=dds_type_name("geometry_msgs/msg/Quaternion")):
    x: float64
    y: float64
    z: float64
    w: float64


@dataclass
class Pose(IdlStruct, typename=dds_type_name("geometry_msgs/msg/Pose")):
    position: Point
    orientation: Quaternion


@dataclass
class PoseStamped(IdlStruct, typename=dds_type_name("geometry_msgs/msg/PoseStamped")):
    header: Header
    pose: Pose


@dataclass
class PoseWithCovariance(IdlStruct, typename=dds_type_name("geometry_msgs/msg/PoseWithCovariance")):
    pose: Pose
    covariance: array[float64, 36]


@dataclass
class Twist(IdlStruct, typename=dds_type_name("geometry_msgs/msg/Twist")):
    linear: Vector3
    angular: Vector3


@dataclass
class TwistWithCovariance(IdlStruct, typename=dds_type_name("geometry_msgs/msg/TwistWithCovariance")):
    twist: Twist
    covariance: array[float64, 36]


# sensor_msgs


@dataclass
class LaserScan(IdlStruct, typename=dds_type_name("sensor_msgs/msg/LaserScan")):
    header: Header
    angle_min: float32
    angle_max: float32
    angle_increment: float32
    time_increment: float32
    scan_time: float32
    range_min: float32
    range_max: float32
    ranges: sequence[float32]
    intensities: sequence[float32]


@dataclass
class Imu(IdlStruct, typename=dds_type_name("sensor_msgs/msg/Imu")):
    header: Header
    orientation: Quaternion
    orientation_covariance: array[float64, 9]
    angular_velocity: Vector3
    angular_velocity_covariance: array[float64, 9]
    linear_acceleration: Vector3
    linear_acceleration_covariance: array[float64, 9]


@dataclass
class Image(IdlStruct, typename=dds_type_name("sensor_msgs/msg/Image")):
    header: Header
    height: uint32
    width: uint32
    encoding: str
    is_bigendian: uint8
    step: uint32
    data: sequence[uint8]


# nav_msgs


@dataclass
class Odometry(IdlStruct, typename=dds_type_name("nav_msgs/msg/Odometry")):
    header: Header
    child_frame_id: str
    pose: PoseWithCovariance
    twist: TwistWithCovariance


@dataclass
class Path(IdlStruct, typename=dds_type_name("nav_msgs/msg/Path")):
    header: Header
    poses: sequence[PoseStamped]


# diagnostic_msgs


@dataclass
class KeyValue(IdlStruct, typename=dds_type_name("diagnostic_msgs/msg/KeyValue")):
    key: str
    value: str


@dataclass
class DiagnosticStatus(IdlStruct, typename=dds_type_name("diagnostic_msgs/msg/DiagnosticStatus")):
    # The .msg file's constants (level values), as ROS's generated classes carry them; not fields.
    OK = 0
    WARN = 1
    ERROR = 2
    STALE = 3

    level: byte
    name: str
    message: str
    hardware_id: str
    values: sequence[KeyValue]


@dataclass
class DiagnosticArray(IdlStruct, typename=dds_type_name("diagnostic_msgs/msg/DiagnosticArray")):
    header: Header
    status: sequence[DiagnosticStatus]


#: ROS type name -> IDL class.
CLASSES: dict[str, type] = {
    "builtin_interfaces/msg/Time": Time,
    "std_msgs/msg/Header": Header,
    "geometry_msgs/msg/Vector3": Vector3,
    "geometry_msgs/msg/Point": Point,
    "geometry_msgs/msg/Quaternion": Quaternion,
    "geometry_msgs/msg/Pose": Pose,
    "geometry_msgs/msg/PoseStamped": PoseStamped,
    "geometry_msgs/msg/PoseWithCovariance": PoseWithCovariance,
    "geometry_msgs/msg/Twist": Twist,
    "geometry_msgs/msg/TwistWithCovariance": TwistWithCovariance,
    "sensor_msgs/msg/LaserScan": LaserScan,
    "sensor_msgs/msg/Imu": Imu,
    "sensor_msgs/msg/Image": Image,
    "nav_msgs/msg/Odometry": Odometry,
    "nav_msgs/msg/Path": Path,
    "diagnostic_msgs/msg/KeyValue": KeyValue,
    "diagnostic_msgs/msg/DiagnosticStatus": DiagnosticStatus,
    "diagnostic_msgs/msg/DiagnosticArray": DiagnosticArray,
}

#: ROS type name -> constructor, for :mod:`robots.ros2.convert`'s ``types``.
TYPES: dict[str, Callable[..., Any]] = {
    **CLASSES,
    "sensor_msgs/msg/LaserScan": buffer_sequences(LaserScan, {"ranges": "f", "intensities": "f"}),
    "sensor_msgs/msg/Image": buffer_sequences(Image, {"data": "B"}),
}
