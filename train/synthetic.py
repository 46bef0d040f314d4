"""A synthetic corridor dataset in the batch contract: fast, dependency-free data for tests and benchmarks.

A differential-drive point robot (first-order velocity response, limits of a TurtleBot 4) drives an
Ornstein-Uhlenbeck exploration policy with wall avoidance down a straight corridor with round obstacles. Sensors
are simulated analytically at their own rates on the 50 Hz tick grid: a 360-beam LiDAR at 10 Hz (ray casting
against the walls and circles), a 48 x 64 depth image at 15 Hz (per-column ray distance, floor below the
horizon, 0 = no return), 4 IMU samples per tick (200 Hz) and odometry every tick (1% dropped), each with a mask
and an age. It is not the MuJoCo hallway: it exists so the model and the trainer can be exercised and measured
without the simulator, and it produces exactly the keys and units of ``train.dataset.SequenceDataset``.

Example::

    ds = SyntheticCorridor(SyntheticSpec(episodes=4, duration_s=20.0), seq_len=128)
    item = ds[0]            # {"lidar": (128, 360), "lidar_mask": (128,), ..., "pose": (128, 3), "valid": (128,)}
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["SyntheticCorridor", "SyntheticSpec", "synthetic_episode"]


@dataclass(frozen=True)
class SyntheticSpec:
    """Size and sensors of a synthetic dataset; ``seed`` seeds episode i with ``seed + i``."""

    episodes: int = 8
    duration_s: float = 20.0
    tick_s: float = 0.02
    beams: int = 360
    depth_shape: tuple[int, int] = (48, 64)
    depth: bool = True
    imu_samples: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.episodes < 1 or self.duration_s <= 0 or self.tick_s <= 0 or self.beams < 8 or self.imu_samples < 1:
            raise ValueError(f"SyntheticSpec: sizes must be positive (episodes, duration_s, tick_s, beams >= 8), got {self}")


_RANGE_MAX_M, _DEPTH_MAX_M, _RADIUS_M, _CAM_H_M, _HFOV = 12.0, 6.0, 0.171, 0.25, math.radians(70.0)
_V_MAX, _OMEGA_MAX, _TAU_S = 0.46, 1.9, 0.05


def _cast(px: float, py: float, ang: np.ndarray, length: float, half_w: float, circles: np.ndarray) -> np.ndarray:
    """Distance (m) along each ray direction ``ang`` (rad, world) from (px, py) to the first wall or circle."""
    dx, dy = np.cos(ang), np.sin(ang)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.full(ang.shape, np.inf)
        for wall_y in (half_w, -half_w):
            ty = (wall_y - py) / dy
            t = np.where(ty > 0, np.minimum(t, ty), t)
        for wall_x in (0.0, length):
            tx = (wall_x - px) / dx
            t = np.where(tx > 0, np.minimum(t, tx), t)
        if len(circles):
            ox, oy, r = circles[:, 0:1] - px, circles[:, 1:2] - py, circles[:, 2:3]
            b = ox * dx + oy * dy
            disc = b * b - (ox * ox + oy * oy - r * r)
            hit = b - np.sqrt(np.maximum(disc, 0.0))
            hit = np.where((disc > 0) & (hit > 0), hit, np.inf)
            t = np.minimum(t, hit.min(axis=0))
    return t


def synthetic_episode(spec: SyntheticSpec, index: int) -> dict[str, np.ndarray]:
    """One episode on the tick grid: the contract's keys, arrays (L, ...) float32, L = duration / tick."""
    rng = np.random.default_rng(spec.seed + index)
    n = int(round(spec.duration_s / spec.tick_s))
    dt = spec.tick_s
    length, half_w = rng.uniform(20.0, 40.0), rng.uniform(0.7, 1.2)
    count = int(rng.poisson(0.6 * length))
    circles = np.stack([rng.uniform(2.0, length - 0.5, count), rng.uniform(-half_w, half_w, count), rng.uniform(0.1, 0.3, count)], 1) \
        if count else np.zeros((0, 3))
    x, y, yaw, v, w = 0.8, rng.uniform(-0.3, 0.3) * half_w, rng.uniform(-0.5, 0.5), 0.0, 0.0
    beams = np.arange(spec.beams) * (2 * math.pi / spec.beams)
    h, wd = spec.depth_shape
    f = (wd / 2) / math.tan(_HFOV / 2)
    cols = np.arctan((np.arange(wd) + 0.5 - wd / 2) / f)
    rows = (np.arange(h) + 0.5 - h / 2) / f  # y_n (down positive) per row
    lidar_phase, k = int(rng.integers(0, 5)), spec.imu_samples
    out = {
        "lidar": np.zeros((n, spec.beams)), "lidar_mask": np.zeros(n), "lidar_age": np.zeros(n),
        "imu": np.zeros((n, k, 6)), "imu_mask": np.ones((n, k)), "imu_age": np.zeros(n),
        "odom": np.zeros((n, 5)), "odom_mask": np.ones(n), "odom_age": np.zeros(n),
        "action": np.zeros((n, 2)), "dt": np.full(n, dt), "pose": np.zeros((n, 3)), "pose_mask": np.ones(n),
        "valid": np.ones(n),
    }
    if spec.depth:
        out.update({"depth": np.zeros((n, h, wd)), "depth_mask": np.zeros(n), "depth_age": np.zeros(n)})
    cmd_v, cmd_w = 0.25, 0.0
    last_lidar, last_depth = None, None
    for t in range(n):
        # Policy (decided at t, applied over (t, t+1]): OU exploration plus a pull away from the nearest return ahead.
        cmd_v += 1.0 * (0.25 - cmd_v) * dt + 0.3 * math.sqrt(dt) * rng.standard_normal()
        cmd_w += 1.0 * (0.0 - cmd_w) * dt + 1.2 * math.sqrt(dt) * rng.standard_normal()
        if last_lidar is not None:
            front = np.concatenate([last_lidar[-30:], last_lidar[:30]])
            if front.min() < 0.6:
                left, right = last_lidar[30:90].mean(), last_lidar[-90:-30].mean()
                cmd_w += (1.0 if left > right else -1.0) * 4.0 * dt
                cmd_v = min(cmd_v, 0.05)
        cmd_v, cmd_w = float(np.clip(cmd_v, -0.1, _V_MAX)), float(np.clip(cmd_w, -_OMEGA_MAX, _OMEGA_MAX))
        pose_prev = (x, y, yaw)
        out["pose"][t] = pose_prev
        # Sensors at tick t (before the motion of (t, t+1]).
        if t % 5 == lidar_phase:
            r = _cast(x, y, yaw + beams, length, half_w, circles)
            r = np.clip(r + 0.01 * rng.standard_normal(spec.beams), 0.15, _RANGE_MAX_M)
            r[rng.random(spec.beams) < 0.005] = _RANGE_MAX_M
            out["lidar"][t], out["lidar_mask"][t], out["lidar_age"][t] = r, 1.0, rng.uniform(0.0, 0.02)
            last_lidar = r
        if last_lidar is not None and out["lidar_mask"][t] == 0:
            out["lidar"][t] = last_lidar  # held value: masked out, so the model must not rely on it
        if spec.depth and int((t + 1) * dt * 15) != int(t * dt * 15):
            d = _cast(x, y, yaw - cols, length, half_w, circles) * np.cos(cols)
            z_floor = np.where(rows > 0, _CAM_H_M / np.maximum(rows, 1e-6), np.inf)[:, None]
            z = np.minimum(np.broadcast_to(d, (h, wd)), z_floor)
            z = z + (0.005 + 0.003 * z * z) * rng.standard_normal(z.shape)
            z[(z > _DEPTH_MAX_M) | (z < 0.2) | (rng.random(z.shape) < 0.01)] = 0.0
            out["depth"][t], out["depth_mask"][t], out["depth_age"][t] = z, 1.0, rng.uniform(0.0, 0.03)
            last_depth = z
        elif spec.depth and last_depth is not None:
            out["depth"][t] = last_depth
        # Motion over (t, t+1], integrated in k substeps that are also the IMU samples of tick t + 1.
        out["action"][t] = (cmd_v, cmd_w)
        acc = np.zeros((k, 6))
        for j in range(k):
            sub = dt / k
            v_new = v + (cmd_v - v) * sub / _TAU_S
            w = w + (cmd_w - w) * sub / _TAU_S
            nx, ny = x + v_new * math.cos(yaw) * sub, y + v_new * math.sin(yaw) * sub
            free = (abs(ny) < half_w - _RADIUS_M) and (_RADIUS_M < nx < length - _RADIUS_M) and not (
                len(circles) and np.any(np.hypot(circles[:, 0] - nx, circles[:, 1] - ny) < circles[:, 2] + _RADIUS_M))
            if not free:
                v_new = 0.0
            else:
                x, y = nx, ny
            acc[j] = ((v_new - v) / sub, v_new * w, 9.81, 0.0, 0.0, w)
            v = v_new
            yaw += w * sub
        if t + 1 < n:
            out["imu"][t + 1] = acc + np.array([0.02, 0.02, 0.02, 0.002, 0.002, 0.002]) * rng.standard_normal((k, 6))
            c, s = math.cos(pose_prev[2]), math.sin(pose_prev[2])
            ddx, ddy = x - pose_prev[0], y - pose_prev[1]
            scale = 1.0 + 0.01 * rng.standard_normal()
            out["odom"][t + 1] = (v * scale, w * scale, (c * ddx + s * ddy) * scale, (-s * ddx + c * ddy) * scale, (yaw - pose_prev[2]) * scale)
            out["odom_age"][t + 1] = rng.uniform(0.0, 0.02)
            out["odom_mask"][t + 1] = float(rng.random() > 0.01)
    out["odom_mask"][0] = 0.0
    out["imu_mask"][0] = 0.0
    out["pose"][:, 2] = np.arctan2(np.sin(out["pose"][:, 2]), np.cos(out["pose"][:, 2]))
    return {key: value.astype(np.float32) for key, value in out.items()}


class SyntheticCorridor(torch.utils.data.Dataset):
    """Windows of ``seq_len`` ticks over :func:`synthetic_episode` episodes, generated once at construction.

    Item i is the window starting at tick ``(i % starts) * stride`` of episode ``i // starts`` (``stride`` =
    ``seq_len // 2``, so windows overlap by half). Items are dicts of float32 tensors (T, ...).
    """

    def __init__(self, spec: SyntheticSpec, seq_len: int) -> None:
        self.spec = spec
        self.seq_len = seq_len
        self.episodes = [synthetic_episode(spec, i) for i in range(spec.episodes)]
        ticks = len(self.episodes[0]["dt"])
        if seq_len > ticks:
            raise ValueError(f"seq_len {seq_len} is longer than an episode ({ticks} ticks)")
        self.stride = max(1, seq_len // 2)
        self.starts = (ticks - seq_len) // self.stride + 1

    def __len__(self) -> int:
        return len(self.episodes) * self.starts

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        ep = self.episodes[i // self.starts]
        s = (i % self.starts) * self.stride
        return {k: torch.from_numpy(v[s: s + self.seq_len]) for k, v in ep.items()}
