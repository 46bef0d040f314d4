"""Following a route: the corridor centreline as a polyline, and the moving goal point a planner heads for.

A sampling planner with a horizon of a second or two needs a nearby goal, not the end of a 30 m corridor:
:class:`RouteGoal` turns a route (waypoints in the frame the robot's pose estimate is in) and that pose estimate
into the point ``lookahead_m`` further along the route, in the robot's frame, with a recovery from the local
minima such a planner falls into. ``oniwm eval-nav`` and the runtime use it with the same settings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Route", "RouteGoal", "RouteGoalConfig", "to_robot_frame"]


@dataclass(frozen=True)
class RouteGoalConfig:
    """:class:`RouteGoal`'s settings: ``lookahead_m`` how far along the route the goal is; when the pose has not
    advanced ``recover_progress_m`` along the route for ``recover_window_s`` (0: never recover), back out
    ``backup_m`` for ``backup_s``, then detour ``detour_m`` sideways for ``detour_s``."""

    lookahead_m: float = 1.5
    recover_window_s: float = 10.0
    recover_progress_m: float = 0.3
    backup_m: float = 1.0
    backup_s: float = 4.0
    detour_m: float = 0.8
    detour_s: float = 8.0

    def __post_init__(self) -> None:
        for name in ("lookahead_m", "recover_progress_m", "backup_m", "backup_s", "detour_m", "detour_s"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"route.{name} = {value!r}: must be a positive number")
        if not (math.isfinite(self.recover_window_s) and self.recover_window_s >= 0):
            raise ValueError(f"route.recover_window_s = {self.recover_window_s!r}: must be >= 0 (0: never recover)")


class Route:
    """The corridor centreline (K, 2) in the world frame: arc length of the nearest point, and the point a given
    distance further along (clamped at the goal end)."""

    def __init__(self, centerline_xy_m: np.ndarray) -> None:
        points = np.asarray(centerline_xy_m, np.float64)
        seg = np.diff(points, axis=0)
        length = np.hypot(seg[:, 0], seg[:, 1])
        keep = length > 0
        self.end = points[-1].copy()
        self._start = points[:-1][keep]
        self._length = length[keep]
        self._dir = seg[keep] / self._length[:, None] if keep.any() else seg[keep]
        self._s0 = np.concatenate(([0.0], np.cumsum(self._length)[:-1]))
        self.length_m = float(self._length.sum())

    def arc_length_m(self, x_m: float, y_m: float) -> float:
        """Arc length (m) of the centreline point nearest (x, y)."""
        if not len(self._length):
            return 0.0
        rel = np.array([x_m, y_m]) - self._start
        t = np.clip(np.einsum("ij,ij->i", rel, self._dir), 0.0, self._length)
        off = rel - self._dir * t[:, None]
        k = int(np.argmin(np.einsum("ij,ij->i", off, off)))
        return float(self._s0[k] + t[k])

    def point_at(self, s_m: float) -> tuple[float, float]:
        """The centreline point at arc length ``s_m`` (clamped to the ends)."""
        if not len(self._length) or s_m >= self.length_m:
            return float(self.end[0]), float(self.end[1])
        k = self._segment(s_m)
        p = self._start[k] + self._dir[k] * (max(s_m, 0.0) - self._s0[k])
        return float(p[0]), float(p[1])

    def direction_at(self, s_m: float) -> tuple[float, float]:
        """The centreline's unit direction at arc length ``s_m`` ((1, 0) for a route without length)."""
        if not len(self._length):
            return 1.0, 0.0
        d = self._dir[self._segment(min(s_m, self.length_m - 1e-9))]
        return float(d[0]), float(d[1])

    def _segment(self, s_m: float) -> int:
        return max(0, int(np.searchsorted(self._s0, s_m, side="right")) - 1)


def to_robot_frame(x_m: float, y_m: float, yaw_rad: float, point: tuple[float, float]) -> np.ndarray:
    """(2,) a world point in the frame of the robot at (x, y, yaw)."""
    dx, dy = point[0] - x_m, point[1] - y_m
    c, s = math.cos(yaw_rad), math.sin(yaw_rad)
    return np.array([c * dx + s * dy, -s * dx + c * dy])


class RouteGoal:
    """Where the planners head: the centreline point ``lookahead_m`` beyond the one nearest the pose, with a recovery
    from the local minima of a short-horizon planner.

    A planner that looks 2 s ahead toward a point on the centreline can settle in a pocket among obstacles whose
    only exit leads away from that point for longer than its horizon. When the pose has not advanced
    ``recover_progress_m`` along the route for ``recover_window_s``, the goal becomes, for ``backup_s``, the route
    point ``backup_m`` behind the pose (the robot backs out), then, for ``detour_s``, the lookahead point moved
    ``detour_m`` sideways, to the side of the centreline the robot was not on (alternating when it was on it). The
    world-model MPC feeds it its odometry pose, the oracle the true pose: the same rule for both.
    """

    def __init__(self, route: Route, nav: RouteGoalConfig) -> None:
        self.route = route
        self.nav = nav
        self.recoveries = 0
        self._best_s = -math.inf
        self._best_t = 0.0
        self._backup_until = self._detour_until = -math.inf
        self._side = 1.0

    def __call__(self, t_s: float, x_m: float, y_m: float, yaw_rad: float) -> np.ndarray:
        """(2,) the goal in the frame of the robot at (x, y, yaw) at time ``t_s`` (s since the episode start)."""
        nav, route = self.nav, self.route
        s = route.arc_length_m(x_m, y_m)
        if s > self._best_s + nav.recover_progress_m:
            self._best_s, self._best_t = s, t_s
        elif nav.recover_window_s > 0 and t_s - self._best_t > nav.recover_window_s and t_s >= self._detour_until:
            self.recoveries += 1
            dx, dy = route.direction_at(s)
            cx, cy = route.point_at(s)
            offset = dx * (y_m - cy) - dy * (x_m - cx)  # > 0: left of the centreline
            self._side = -math.copysign(1.0, offset) if abs(offset) > 0.1 else -self._side
            self._backup_until = t_s + nav.backup_s
            self._detour_until = self._backup_until + nav.detour_s
            self._best_t = self._detour_until  # a fresh window after the recovery
        if t_s < self._backup_until:
            return to_robot_frame(x_m, y_m, yaw_rad, route.point_at(s - nav.backup_m))
        ahead = s + nav.lookahead_m
        gx, gy = route.point_at(ahead)
        if t_s < self._detour_until:
            dx, dy = route.direction_at(ahead)
            gx, gy = gx - dy * self._side * nav.detour_m, gy + dx * self._side * nav.detour_m
        return to_robot_frame(x_m, y_m, yaw_rad, (gx, gy))
