"""What the world model needs to know of a robot description: its observation spec and the planner's geometry.

The one place that maps a :class:`~robots.description.RobotDescription` onto the world model's inputs
(:func:`observation_spec`: which sensors, their shapes and topics, the command topic as the action) and onto the
planner's collision geometry (:func:`robot_geometry`), shared by the dataset builder, the evaluations and the
runtime node, so a model trained on a robot's logs and the runtime driving that robot agree by construction.
"""

from __future__ import annotations

import math
from typing import Any

from robots.description import DescriptionError, RobotDescription
from worldmodel.observation import ObservationSpec
from worldmodel.planner.config import RobotGeometry

__all__ = ["observation_spec", "robot_geometry"]


def observation_spec(robot: RobotDescription, control_hz: float) -> ObservationSpec:
    """The world model's observation spec of ``robot`` at ``control_hz``: one sensor per kind, IMU samples per
    tick ``K = ceil(imu_rate / control_hz)``, the drive's command topic as the action."""
    chosen: dict[str, Any] = {}
    for kind in ("lidar", "depth", "imu", "odom"):
        sensors = robot.sensors_of_kind(kind)
        if len(sensors) > 1:
            raise DescriptionError(
                f"robot.sensors[{kind}]", [s.name for s in sensors], "the world model takes at most one sensor of each kind"
            )
        if sensors:
            chosen[kind] = sensors[0]
    topics = {kind: s.topic for kind, s in chosen.items()}
    topics["action"] = robot.drive.topic
    lidar, depth, imu = chosen.get("lidar"), chosen.get("depth"), chosen.get("imu")
    return ObservationSpec(
        lidar_beams=lidar.params.beams if lidar else 0,
        depth_height=depth.params.height if depth else 0,
        depth_width=depth.params.width if depth else 0,
        # The epsilon keeps an exact ratio (200 / 50) from rounding up on float error.
        imu_samples=math.ceil(imu.rate_hz / control_hz - 1e-9) if imu else 0,
        odom="odom" in chosen,
        topics=topics,
    )


def robot_geometry(robot: RobotDescription, beam_stride: int = 1) -> RobotGeometry:
    """The planner's :class:`~worldmodel.planner.RobotGeometry` of a robot description (its footprint and first
    LiDAR); ``beam_stride`` keeps every k-th beam (the oracle's reduced scan)."""
    lidars = robot.sensors_of_kind("lidar")
    if not lidars:
        raise ValueError(f"robot {robot.name!r} has no LiDAR: the planner's collision cost reads predicted ranges")
    lidar = lidars[0]
    params = lidar.params
    return RobotGeometry(radius_m=robot.base.radius_m, lidar_xy_m=tuple(lidar.mount.xyz_m[:2]),
                         lidar_yaw_rad=lidar.mount.rpy_rad[2], angle_min_rad=params.angle_min_rad,
                         angle_increment_rad=params.angle_increment_rad * beam_stride,
                         beams=len(range(0, params.beams, beam_stride)))
