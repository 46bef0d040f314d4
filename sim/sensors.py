"""Simulated sensors: LiDAR and depth by batched ray casting, IMU from MuJoCo's sensors, wheel odometry.

Each class is built once per simulation (names resolved to ids, ray directions and work buffers allocated),
seeded with :meth:`reset`, and asked for one sample at a time with :meth:`sample`, which returns the
``data`` map of the sensor's ONI message: keys, dtypes and units exactly as in ``oni/schemas/sensor.*.json``.
The caller (:class:`sim.robot_sim.RobotSim`) decides when to sample and makes the MuJoCo state current
(``mj_forward``) first. The returned arrays are fresh (the caller owns them); everything else is reused.

Ray casting is one ``mujoco.mj_multiRay`` call per scan or frame. Rays see geom group 0 (the world) only,
and skip the robot's own body as well.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import mujoco
import numpy as np

from robots.description import (
    DepthNoise,
    DepthParams,
    ImuNoise,
    ImuParams,
    LidarNoise,
    LidarParams,
    OdomNoise,
    OdomParams,
    RobotDescription,
    SensorDescription,
)

__all__ = ["DepthSim", "ImuSim", "LidarSim", "OdomSim", "Reading", "SensorSim", "WORLD_GEOMGROUP"]

#: Geom groups the ray casters see: group 0 only, where the world's geoms are (the robot's are in group 1).
WORLD_GEOMGROUP = np.array([1, 0, 0, 0, 0, 0], dtype=np.uint8)


@dataclass(frozen=True, slots=True)
class Reading:
    """One sensor sample: the ONI topic, acquisition time on the sim clock (ns), frame id, and the ``data`` map
    of the topic's schema (e.g. ``sensor.lidar``: ``ranges_m`` (N,) float32, ``angle_min_rad``, ...)."""

    topic: str
    stamp_ns: int
    frame_id: str
    data: dict[str, Any]

    def __eq__(self, other: object) -> bool:
        """Equal by value: same topic, stamp, frame and data fields, arrays equal in dtype, shape and elements.

        Spelled out because the generated ``__eq__`` compares the ``data`` dicts with ``==``, which raises on
        array fields (and gymnasium's env checker compares step infos, which carry readings, by value).
        """
        if not isinstance(other, Reading):
            return NotImplemented
        if (self.topic, self.stamp_ns, self.frame_id) != (other.topic, other.stamp_ns, other.frame_id):
            return False
        if self.data.keys() != other.data.keys():
            return False
        for key, value in self.data.items():
            theirs = other.data[key]
            if isinstance(value, np.ndarray) or isinstance(theirs, np.ndarray):
                if not (isinstance(value, np.ndarray) and isinstance(theirs, np.ndarray) and value.dtype == theirs.dtype
                        and np.array_equal(value, theirs)):
                    return False
            elif value != theirs:
                return False
        return True


class SensorSim:
    """Base of the simulated sensors: the description, the MuJoCo model and data, and a noise stream."""

    def __init__(self, desc: SensorDescription, model: mujoco.MjModel, data: mujoco.MjData) -> None:
        self.desc = desc
        self.model = model
        self.data = data
        self.rng = np.random.default_rng(0)

    def reset(self, rng: np.random.Generator) -> None:
        """Start an episode: take the noise stream ``rng`` and redraw per-episode errors (biases, scales)."""
        self.rng = rng

    def sample(self) -> dict[str, Any]:
        """The ``data`` map of one message, from the current MuJoCo state."""
        raise NotImplementedError


class LidarSim(SensorSim):
    """A planar LiDAR: one ``mj_multiRay`` per scan from the sensor site, beams in the site's x-y plane.

    Output ``ranges_m``: (N,) float32. Beams with no hit within ``range_max_m`` and dropped beams carry
    ``range_max_m`` (the ONI convention for "no return"). Returns closer than ``range_min_m`` are clamped to
    ``range_min_m``: with the LiDAR inside the footprint they only happen in contact, and reporting "near"
    rather than "nothing" is the safe side for a planner. Noise is added to hits only, then clamped to the range.
    """

    def __init__(self, desc: SensorDescription, model: mujoco.MjModel, data: mujoco.MjData, site_id: int, body_exclude: int) -> None:
        super().__init__(desc, model, data)
        params: LidarParams = desc.params  # type: ignore[assignment]
        noise: LidarNoise = desc.noise  # type: ignore[assignment]
        self._site = site_id
        self._body_exclude = body_exclude
        self._n = params.beams
        self._rmin, self._rmax = params.range_min_m, params.range_max_m
        self._std, self._dropout = noise.range_std_m, noise.dropout_prob
        angles = params.angle_min_rad + np.arange(self._n) * params.angle_increment_rad
        self._local = np.stack([np.cos(angles), np.sin(angles), np.zeros(self._n)], axis=1)  # (N, 3) in the site frame
        self._vec = np.empty((self._n, 3))
        self._vec_flat = self._vec.reshape(-1)
        self._geomid = np.empty(self._n, dtype=np.int32)
        self._dist = np.empty(self._n)
        self._miss = np.empty(self._n, dtype=bool)
        self._flag = np.empty(self._n, dtype=bool)
        self._work = np.empty(self._n)
        self._noise = np.empty(self._n)
        self._fixed = {
            "angle_min_rad": params.angle_min_rad,
            "angle_increment_rad": params.angle_increment_rad,
            "range_min_m": self._rmin,
            "range_max_m": self._rmax,
            "scan_time_s": 1.0 / desc.rate_hz,
        }

    def cast(self) -> np.ndarray:
        """Noise-free hit distances (m) per beam, (N,) float64, -1 where nothing is hit. Hits beyond
        ``range_max_m`` may appear (MuJoCo's cutoff only culls whole geoms); :meth:`sample` drops them.

        A view of an internal buffer, valid until the next call.
        """
        rot = self.data.site_xmat[self._site].reshape(3, 3)
        np.matmul(self._local, rot.T, out=self._vec)
        mujoco.mj_multiRay(
            self.model, self.data, self.data.site_xpos[self._site], self._vec_flat, WORLD_GEOMGROUP, True,
            self._body_exclude, self._geomid, self._dist, None, self._n, self._rmax,
        )
        return self._dist

    def sample(self) -> dict[str, Any]:
        dist = self.cast()
        np.less(dist, 0.0, out=self._miss)
        self._miss |= np.greater(dist, self._rmax, out=self._flag)
        ranges = self._work
        np.copyto(ranges, dist)
        if self._std > 0.0:
            self.rng.standard_normal(out=self._noise)
            ranges += np.multiply(self._noise, self._std, out=self._noise)
        np.clip(ranges, self._rmin, self._rmax, out=ranges)
        if self._dropout > 0.0:
            self.rng.random(out=self._noise)
            self._miss |= np.less(self._noise, self._dropout, out=self._flag)
        ranges[self._miss] = self._rmax
        return {"ranges_m": ranges.astype(np.float32), **self._fixed}


class DepthSim(SensorSim):
    """A pinhole depth camera: one ``mj_multiRay`` per frame, one ray per pixel.

    Output ``depth``: (H, W) float32 z-depth in metres (distance along the optical axis, not along the ray),
    row 0 at the top. Pixels with no return (nothing within range, closer than ``range_min_m``, or dropped)
    are 0, as in the uint16 convention of the schema. Each ray's direction has unit component along the
    optical axis, so the ray parameter MuJoCo returns is already the z-depth.
    """

    def __init__(self, desc: SensorDescription, model: mujoco.MjModel, data: mujoco.MjData, site_id: int, body_exclude: int) -> None:
        super().__init__(desc, model, data)
        params: DepthParams = desc.params  # type: ignore[assignment]
        noise: DepthNoise = desc.noise  # type: ignore[assignment]
        self._site = site_id
        self._body_exclude = body_exclude
        self._h, self._w = params.height, params.width
        self._n = self._h * self._w
        self._rmin, self._rmax = params.range_min_m, params.range_max_m
        self._std0, self._std2, self._dropout = noise.range_std_m, noise.range_std_per_m2, noise.dropout_prob
        fx, fy, cx, cy = params.intrinsics
        v, u = np.mgrid[0 : self._h, 0 : self._w]
        # Site frame: x is the optical axis, y left, z up; image u grows right (-y), v grows down (-z).
        self._local = np.stack(
            [np.ones(self._n), -(u.ravel() - cx) / fx, -(v.ravel() - cy) / fy], axis=1
        )  # (H*W, 3)
        # The cutoff is a distance along the ray; the longest in-range ray is range_max times the longest direction.
        self._cutoff = self._rmax * float(np.linalg.norm(self._local, axis=1).max())
        self._vec = np.empty((self._n, 3))
        self._vec_flat = self._vec.reshape(-1)
        self._geomid = np.empty(self._n, dtype=np.int32)
        self._dist = np.empty(self._n)
        self._invalid = np.empty(self._n, dtype=bool)
        self._flag = np.empty(self._n, dtype=bool)
        self._work = np.empty(self._n)
        self._noise = np.empty(self._n)
        self._normal = np.empty(self._n)
        self._fixed = {"depth_scale_m": 1.0, "fx": fx, "fy": fy, "cx": cx, "cy": cy, "range_max_m": self._rmax}

    def cast(self) -> np.ndarray:
        """Noise-free z-depth (m) per pixel, (H*W,) float64 in row-major order, -1 where nothing is hit. Hits
        beyond ``range_max_m`` may appear (the cutoff only culls whole geoms); :meth:`sample` drops them.

        A view of an internal buffer, valid until the next call.
        """
        rot = self.data.site_xmat[self._site].reshape(3, 3)
        np.matmul(self._local, rot.T, out=self._vec)
        mujoco.mj_multiRay(
            self.model, self.data, self.data.site_xpos[self._site], self._vec_flat, WORLD_GEOMGROUP, True,
            self._body_exclude, self._geomid, self._dist, None, self._n, self._cutoff,
        )
        return self._dist

    def sample(self) -> dict[str, Any]:
        z = self.cast()
        np.less(z, self._rmin, out=self._invalid)
        self._invalid |= np.greater(z, self._rmax, out=self._flag)
        depth = self._work
        np.copyto(depth, z)
        if self._std0 > 0.0 or self._std2 > 0.0:
            # std grows with z^2: noise = (std0 + std2 * z^2) * N(0, 1), built in place.
            noise = self._noise
            np.multiply(z, z, out=noise)
            noise *= self._std2
            noise += self._std0
            noise *= self.rng.standard_normal(out=self._normal)
            depth += noise
        if self._dropout > 0.0:
            self.rng.random(out=self._noise)
            self._invalid |= np.less(self._noise, self._dropout, out=self._flag)
        depth[self._invalid] = 0.0
        return {"depth": depth.astype(np.float32).reshape(self._h, self._w), **self._fixed}


class ImuSim(SensorSim):
    """An IMU from MuJoCo's accelerometer and gyro at the sensor site, plus bias and white noise, saturated.

    ``accel_mps2`` is specific force (it reads about +9.81 on z when level and still), ``gyro_radps`` the
    angular velocity, both (3,) float32 in the IMU frame. The bias of each axis is drawn per episode and then
    random-walks by ``bias_walk * sqrt(period)`` per sample.
    """

    def __init__(self, desc: SensorDescription, model: mujoco.MjModel, data: mujoco.MjData, accel_adr: int, gyro_adr: int) -> None:
        super().__init__(desc, model, data)
        params: ImuParams = desc.params  # type: ignore[assignment]
        noise: ImuNoise = desc.noise  # type: ignore[assignment]
        self._accel = slice(accel_adr, accel_adr + 3)
        self._gyro = slice(gyro_adr, gyro_adr + 3)
        sqrt_dt = math.sqrt(1.0 / desc.rate_hz)
        # Per-axis scales for [accel xyz, gyro xyz], so one draw of 6 normals serves both.
        self._white = np.repeat([noise.accel_std_mps2, noise.gyro_std_radps], 3)
        self._bias_std = np.repeat([noise.accel_bias_std_mps2, noise.gyro_bias_std_radps], 3)
        self._walk = np.repeat([noise.accel_bias_walk_mps2, noise.gyro_bias_walk_radps], 3) * sqrt_dt
        self._limit = np.repeat([params.accel_range_mps2, params.gyro_range_radps], 3)
        self._neg_limit = -self._limit
        self._noisy = bool(self._white.any() or self._bias_std.any() or self._walk.any())
        self._bias = np.zeros(6)
        self._out = np.empty(6)
        # Normal draws come in blocks (one row of 12 per sample: 6 for the bias walk, 6 white), which costs far
        # less per sample than two small draws, and keeps the stream identical for a given seed.
        self._draws = np.empty((_IMU_BLOCK, 12))
        self._row = _IMU_BLOCK

    def reset(self, rng: np.random.Generator) -> None:
        super().reset(rng)
        self._bias[:] = self._bias_std * rng.standard_normal(6)
        self._row = _IMU_BLOCK

    def sample(self) -> dict[str, Any]:
        out = self._out
        sensordata = self.data.sensordata
        out[:3] = sensordata[self._accel]
        out[3:] = sensordata[self._gyro]
        if self._noisy:
            if self._row == _IMU_BLOCK:
                self.rng.standard_normal(out=self._draws)
                self._row = 0
            draw = self._draws[self._row]
            self._row += 1
            self._bias += self._walk * draw[:6]
            out += self._bias
            out += self._white * draw[6:]
        np.clip(out, self._neg_limit, self._limit, out=out)
        values = out.astype(np.float32)
        return {"accel_mps2": values[:3], "gyro_radps": values[3:]}


_IMU_BLOCK = 256


class OdomSim(SensorSim):
    """Wheel odometry as a differential-drive base computes it from its encoders, so it drifts like one.

    Between samples, the true planar motion of the base (forward displacement and yaw change) becomes the
    arc each wheel rolls; each arc slips by ``wheel_slip_std`` of itself, turns a wheel whose true radius is
    off by a per-episode scale error, and is counted in whole encoder ticks. The odometry then dead-reckons
    from the ticks with the nominal radius and track width. Sideways skid (as in a collision) never reaches
    the wheels, as on a real base. The odometry frame is the base pose at reset.

    Output: ``x_m``, ``y_m``, ``yaw_rad`` (in [-pi, pi)), ``v_mps``, ``omega_radps`` (over the last period)
    and ``wheel_vel_radps`` (2,) float32, [left, right].
    """

    def __init__(self, desc: SensorDescription, model: mujoco.MjModel, data: mujoco.MjData, robot: RobotDescription, qpos_adr: tuple[int, int, int]) -> None:
        super().__init__(desc, model, data)
        params: OdomParams = desc.params  # type: ignore[assignment]
        noise: OdomNoise = desc.noise  # type: ignore[assignment]
        self._qx, self._qy, self._qyaw = qpos_adr
        self._radius = robot.base.wheel_radius_m
        self._track = robot.base.track_width_m
        self._rad_per_tick = 2.0 * math.pi / params.ticks_per_rev
        self._scale_std, self._slip_std = noise.wheel_scale_std, noise.wheel_slip_std
        self._dt = 1.0 / desc.rate_hz
        self._scale = (1.0, 1.0)
        self._prev = (0.0, 0.0, 0.0)
        self._angle = [0.0, 0.0]
        self._ticks = [0, 0]
        self._pose = [0.0, 0.0, 0.0]

    def reset(self, rng: np.random.Generator) -> None:
        super().reset(rng)
        left, right = (1.0 + self._scale_std * rng.standard_normal(2)).tolist() if self._scale_std > 0 else (1.0, 1.0)
        self._scale = (left, right)
        self._prev = self._true_pose()
        self._angle = [0.0, 0.0]
        self._ticks = [0, 0]
        self._pose = [0.0, 0.0, 0.0]

    def _true_pose(self) -> tuple[float, float, float]:
        q = self.data.qpos
        return float(q[self._qx]), float(q[self._qy]), float(q[self._qyaw])

    def sample(self) -> dict[str, Any]:
        x, y, yaw = self._true_pose()
        px, py, pyaw = self._prev
        self._prev = (x, y, yaw)
        dyaw = _wrap(yaw - pyaw)
        mid = pyaw + 0.5 * dyaw
        forward = (x - px) * math.cos(mid) + (y - py) * math.sin(mid)
        arcs = [forward - 0.5 * dyaw * self._track, forward + 0.5 * dyaw * self._track]
        if self._slip_std > 0.0:
            slip = self.rng.standard_normal(2)
            arcs = [arcs[0] * (1.0 + self._slip_std * slip[0]), arcs[1] * (1.0 + self._slip_std * slip[1])]
        measured = [0.0, 0.0]
        wheel_vel = np.empty(2, dtype=np.float32)
        for i in (0, 1):
            self._angle[i] += arcs[i] / (self._radius * self._scale[i])
            ticks = math.floor(self._angle[i] / self._rad_per_tick)
            delta = (ticks - self._ticks[i]) * self._rad_per_tick
            self._ticks[i] = ticks
            measured[i] = delta * self._radius
            wheel_vel[i] = delta / self._dt
        d = 0.5 * (measured[0] + measured[1])
        dtheta = (measured[1] - measured[0]) / self._track
        pose = self._pose
        heading = pose[2] + 0.5 * dtheta
        pose[0] += d * math.cos(heading)
        pose[1] += d * math.sin(heading)
        pose[2] = _wrap(pose[2] + dtheta)
        return {
            "x_m": pose[0],
            "y_m": pose[1],
            "yaw_rad": pose[2],
            "v_mps": d / self._dt,
            "omega_radps": dtheta / self._dt,
            "wheel_vel_radps": wheel_vel,
        }


def _wrap(angle: float) -> float:
    """``angle`` wrapped to [-pi, pi)."""
    return (angle + math.pi) % (2.0 * math.pi) - math.pi
