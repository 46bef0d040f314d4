"""The navigation task cost on decoded predictions: collision risk, progress, blocked way, heading, effort, smoothness.

For N candidate action sequences of H steps, given the predictions at the end of every step (LiDAR ranges along
each of B beams with their std, and the pose relative to the pose at planning time), one cost per candidate
(lower is better), the weighted sum of (weights in :class:`~worldmodel.planner.config.CostWeights`):

- **collision** ``sum_h Phi(max_b (r_safe[b] - mean[n, h, b]) / (std[n, h, b] + noise))``: per step, the
  probability under the predicted Gaussian that the most threatened beam's range falls short of ``r_safe[b]``,
  the range at which a return along beam b would be ``radius + safety_distance`` from the base centre (so it
  accounts for the LiDAR's offset from the centre). Phi is monotonic, so the max over beams is taken on the
  z-scores and Phi is evaluated on (N, H) values only. Summed over the steps: a lasting threat costs more.
- **progress** ``|g - p[n, H-1]| - |g|`` (m): the change of the distance to the goal ``g`` (robot frame at
  planning time) from now to the end of the horizon; negative when the candidate closes in. The end point, not
  the mean over the steps, so the last steps of a plan are worth as much as the first (with a mean, the effort
  term would make every plan coast at its end).
- **blocked** ``(min(d, L) - min(free, d, L)) / L``: how much of the way toward the goal is blocked where the
  candidate ends: ``free`` is how far the safety disc (radius + safety distance) could travel from the final
  predicted pose straight toward the goal before touching a return of the final predicted scan, ``d`` the
  distance left to the goal, ``L = blocked_reach_m``. A terminal cost-to-go: it prefers ending the horizon
  where the way on is open (beside an obstacle rather than in front of it), which a horizon of a second or
  two cannot see from progress alone. With ``scan_collision`` on, the latest measured scan's returns (placed in
  each final pose's frame) block the way too: ``free`` is the shorter of the two.
- **heading** ``mean_h (1 - cos(bearing of g from p[n, h] - yaw[n, h])) / 2``: facing the goal, in [0, 1]; it
  keeps the robot from reversing toward a goal behind it, and turning it where it is when the goal is behind.
- **scan_collision** ``sum_h [min_b |p[n, h] - q_b| < radius + safety_distance]``: the steps at which the predicted
  base position comes within the safety disc of a return ``q_b`` of the latest measured scan (:meth:`set_scan`,
  in the frame at planning time): a static-world check beside the model's predicted ranges (weight 0: off).
- **effort** ``mean_h sum_a (u[n, h, a] / limit[a])^2`` and **smoothness** ``mean_h sum_a ((u[n, h, a] -
  u[n, h - 1, a]) / limit[a])^2`` with ``u[n, -1]`` the action in effect now; ``limit[a]`` the larger magnitude of
  the action bounds.

All buffers are allocated at construction for one (N, H, B, A); a call allocates no array of that size. A call may
score fewer candidates (a planner's chunk); it then works on the buffers' first rows.
"""

from __future__ import annotations

import math

import numpy as np

from worldmodel.planner.config import CostWeights, PlannerConfigError, RobotGeometry

__all__ = ["TERMS", "NavigationCost", "normal_cdf", "safe_ranges"]

#: The per-candidate work buffers of :class:`NavigationCost` (first axis N).
_ROW_BUFFERS = ("_margin", "_std", "_z32", "_z", "_risk", "_upper", "_dx", "_dy", "_dist", "_angle", "_scaled", "_px",
                "_py", "_along", "_lateral", "_ahead", "_within", "_ex", "_ey", "_cos_h", "_sin_h", "_scratch", "_free",
                "_sdx", "_sdy", "_hit", "_near", "_free_pred")

#: The cost terms, in the order they are reported.
TERMS = ("collision", "progress", "blocked", "heading", "effort", "smoothness", "scan_collision")

# Abramowitz & Stegun 7.1.26: erf(x) = 1 - (a1 t + ... + a5 t^5) exp(-x^2), t = 1 / (1 + p x), x >= 0; absolute
# error below 1.5e-7. Numpy has no erf, and this keeps the cost free of torch and scipy.
_AS_P = 0.3275911
_AS_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


def normal_cdf(z: np.ndarray, out: np.ndarray, scratch: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """The standard normal CDF of ``z`` into ``out`` (float64, same shape), using ``scratch`` (float64, shape of
    ``z`` plus a leading 2) and ``upper`` (bool, shape of ``z``) as work space. Absolute error < 1e-7."""
    x, t = scratch[0], scratch[1]
    np.abs(z, out=x)
    x *= 1.0 / math.sqrt(2.0)
    np.multiply(x, _AS_P, out=t)
    t += 1.0
    np.reciprocal(t, out=t)
    np.multiply(t, _AS_A[4], out=out)
    for a in reversed(_AS_A[:4]):
        out += a
        out *= t
    np.square(x, out=x)
    np.negative(x, out=x)
    np.exp(x, out=x)
    out *= x
    out *= 0.5  # the upper tail P(Z > |z|)
    np.greater_equal(z, 0.0, out=upper)
    np.subtract(1.0, out, out=x)
    np.copyto(out, x, where=upper)
    return out


def safe_ranges(geometry: RobotGeometry, safety_distance_m: float) -> np.ndarray:
    """(B,) float64: per beam, the range (m, from the LiDAR) at which a return lies ``radius + safety_distance_m``
    from the base centre: the positive root of ``|m + r u| = rho`` for the mount ``m`` and beam direction ``u``."""
    angles = geometry.lidar_yaw_rad + geometry.angle_min_rad + np.arange(geometry.beams) * geometry.angle_increment_rad
    mx, my = geometry.lidar_xy_m
    along = mx * np.cos(angles) + my * np.sin(angles)  # m . u
    rho = geometry.radius_m + safety_distance_m
    return -along + np.sqrt(along * along - (mx * mx + my * my) + rho * rho)


class NavigationCost:
    """The cost of N candidates of H steps with B beams and A action dimensions (module docstring).

    ``weights``: the terms' weights and the collision model. ``geometry``: footprint and LiDAR. ``action_low`` /
    ``action_high`` (A,): the action bounds that scale effort and smoothness. After each call, :attr:`terms` maps
    each of :data:`TERMS` to its weighted contribution (N,), which sum to the returned total.
    """

    def __init__(self, weights: CostWeights, geometry: RobotGeometry, samples: int, horizon: int,
                 action_low: tuple[float, ...], action_high: tuple[float, ...]) -> None:
        self.weights = weights
        self.geometry = geometry
        self.shape = (samples, horizon, geometry.beams)
        n, h, b = self.shape
        a = len(action_low)
        if len(action_high) != a:
            raise PlannerConfigError(f"action_low {action_low} and action_high {action_high} differ in length")
        self.action_dim = a
        self.safe_range_m = safe_ranges(geometry, weights.safety_distance_m).astype(np.float32)
        self._inv_limit = (1.0 / np.maximum(np.abs(action_low), np.abs(action_high))).astype(np.float32)
        self._margin = np.empty((n, h, b), np.float32)  # r_safe - mean, then the z-score
        self._std = np.empty((n, h, b), np.float32)
        self._noise = np.float32(weights.range_noise_m)
        self._z32 = np.empty((n, h), np.float32)  # a float32 reduction is twice as fast as one into float64
        self._z = np.empty((n, h), np.float64)
        self._risk = np.empty((n, h), np.float64)
        self._cdf_scratch = np.empty((2, n, h), np.float64)
        self._upper = np.empty((n, h), bool)
        self._dx = np.empty((n, h), np.float64)
        self._dy = np.empty((n, h), np.float64)
        self._dist = np.empty((n, h), np.float64)
        self._angle = np.empty((n, h), np.float64)
        self._scaled = np.empty((n, h, a), np.float32)
        angles = geometry.lidar_yaw_rad + geometry.angle_min_rad + np.arange(b) * geometry.angle_increment_rad
        self._beam_cos = np.cos(angles).astype(np.float32)
        self._beam_sin = np.sin(angles).astype(np.float32)
        self._disc2 = np.float32((geometry.radius_m + weights.safety_distance_m) ** 2)
        self._px = np.empty((n, b), np.float32)
        self._py = np.empty((n, b), np.float32)
        self._along = np.empty((n, b), np.float32)
        self._lateral = np.empty((n, b), np.float32)
        self._ahead = np.empty((n, b), bool)
        self._within = np.empty((n, b), bool)
        self._ex = np.empty((n, 1), np.float32)
        self._ey = np.empty((n, 1), np.float32)
        self._cos_h = np.empty(n, np.float64)
        self._sin_h = np.empty(n, np.float64)
        self._scratch = np.empty(n, np.float64)
        self._free = np.empty(n, np.float32)
        self._free_pred = np.empty(n, np.float32)
        # The latest measured scan's returns (B,) in the base frame at planning time (far away: none yet).
        self._scan_x = np.full(b, 1e6, np.float32)
        self._scan_y = np.full(b, 1e6, np.float32)
        self._scan_ok = np.zeros(b, bool)
        self._scan_none = np.zeros(b, bool)
        self._sdx = np.empty((n, h, b), np.float32)
        self._sdy = np.empty((n, h, b), np.float32)
        self._hit = np.empty((n, h), np.float32)
        self._near = np.empty((n, h), bool)
        self.terms: dict[str, np.ndarray] = {name: np.zeros(n, np.float64) for name in TERMS}
        # A call may score fewer candidates than N (a planner's chunk): the per-candidate buffers are then views of
        # their first rows, made once per row count and swapped in by _use_rows.
        self._full = {name: getattr(self, name) for name in _ROW_BUFFERS}
        self._full_cdf, self._full_terms = self._cdf_scratch, self.terms
        self._rows = n
        self._row_views: dict[int, tuple[dict[str, np.ndarray], np.ndarray, dict[str, np.ndarray]]] = {}

    def set_scan(self, ranges_m: np.ndarray, no_return_m: float) -> None:
        """The latest measured scan (B,) m on this cost's beams (ranges at or beyond ``no_return_m``: none), for the
        ``scan_collision`` term; its returns are placed in the base frame once, here."""
        np.less(ranges_m, no_return_m, out=self._scan_ok)
        np.multiply(ranges_m, self._beam_cos, out=self._scan_x)
        self._scan_x += np.float32(self.geometry.lidar_xy_m[0])
        np.multiply(ranges_m, self._beam_sin, out=self._scan_y)
        self._scan_y += np.float32(self.geometry.lidar_xy_m[1])
        np.logical_not(self._scan_ok, out=self._scan_none)
        np.copyto(self._scan_x, np.float32(1e6), where=self._scan_none)

    def _check(self, lidar_mean: np.ndarray, lidar_std: np.ndarray, pose_mean: np.ndarray, actions: np.ndarray) -> None:
        big_n, h, b = self.shape
        n = lidar_mean.shape[0] if lidar_mean.ndim == 3 else -1
        expected = {"lidar_mean": (n, h, b), "lidar_std": (n, h, b), "pose_mean": (n, h, 3), "actions": (n, h, self.action_dim)}
        for name, array in (("lidar_mean", lidar_mean), ("lidar_std", lidar_std), ("pose_mean", pose_mean), ("actions", actions)):
            if not 1 <= n <= big_n or tuple(array.shape) != expected[name]:
                raise ValueError(f"{name} has shape {tuple(array.shape)}, the cost was built for up to "
                                 f"{(big_n, *expected[name][1:])}")

    def _use_rows(self, n: int) -> None:
        """Point the per-candidate buffers and :attr:`terms` at their first ``n`` rows."""
        views = self._row_views.get(n)
        if views is None:
            views = ({name: buf[:n] for name, buf in self._full.items()}, self._full_cdf[:, :n],
                     {name: t[:n] for name, t in self._full_terms.items()})
            self._row_views[n] = views
        for name, view in views[0].items():
            setattr(self, name, view)
        self._cdf_scratch, self.terms = views[1], views[2]
        self._rows = n

    def __call__(self, lidar_mean: np.ndarray, lidar_std: np.ndarray, pose_mean: np.ndarray, actions: np.ndarray,
                 goal_xy_m: np.ndarray, prev_action: np.ndarray, out: np.ndarray) -> np.ndarray:
        """The total cost (N,) into ``out`` (float64), and :attr:`terms`.

        ``lidar_mean``/``lidar_std`` (N, H, B) m: the predicted scan at the end of each step. ``pose_mean``
        (N, H, 3) ``[x m, y m, yaw rad]`` relative to the robot at planning time. ``actions`` (N, H, A) the
        candidates. ``goal_xy_m`` (2,): the goal in the robot frame at planning time. ``prev_action`` (A,): the
        action in effect now. N may be below the N the cost was built for (a chunk of candidates); shapes are
        checked on the first call with each N only.
        """
        n = lidar_mean.shape[0]
        if n != self._rows or n not in self._row_views:
            self._check(lidar_mean, lidar_std, pose_mean, actions)
            self._use_rows(n)
        w = self.weights
        terms = self.terms
        horizon = self.shape[1]

        margin, std = self._margin, self._std
        np.subtract(self.safe_range_m, lidar_mean, out=margin)
        # Adding the noise rather than flooring the std with np.maximum: a quarter of the time on (N, H, B).
        np.add(lidar_std, self._noise, out=std)
        margin /= std
        np.max(margin, axis=2, out=self._z32)
        np.copyto(self._z, self._z32)
        normal_cdf(self._z, self._risk, self._cdf_scratch, self._upper)
        np.sum(self._risk, axis=1, out=terms["collision"])
        terms["collision"] *= w.collision

        gx, gy = float(goal_xy_m[0]), float(goal_xy_m[1])
        np.subtract(gx, pose_mean[:, :, 0], out=self._dx)
        np.subtract(gy, pose_mean[:, :, 1], out=self._dy)
        np.hypot(self._dx, self._dy, out=self._dist)
        np.subtract(self._dist[:, -1], math.hypot(gx, gy), out=terms["progress"])
        terms["progress"] *= w.progress

        self._blocked(lidar_mean[:, -1], pose_mean[:, -1], terms["blocked"])
        terms["blocked"] *= w.blocked

        np.arctan2(self._dy, self._dx, out=self._angle)
        self._angle -= pose_mean[:, :, 2]
        np.cos(self._angle, out=self._angle)
        np.mean(self._angle, axis=1, out=terms["heading"])
        np.subtract(1.0, terms["heading"], out=terms["heading"])
        terms["heading"] *= 0.5 * w.heading

        scaled = self._scaled
        np.multiply(actions, self._inv_limit, out=scaled)
        np.square(scaled, out=scaled)
        np.sum(scaled, axis=(1, 2), out=terms["effort"])
        terms["effort"] *= w.effort / horizon

        np.subtract(actions[:, 1:], actions[:, :-1], out=scaled[:, 1:])
        np.subtract(actions[:, 0], prev_action, out=scaled[:, 0])
        scaled *= self._inv_limit
        np.square(scaled, out=scaled)
        np.sum(scaled, axis=(1, 2), out=terms["smoothness"])
        terms["smoothness"] *= w.smoothness / horizon

        if w.scan_collision > 0.0:
            # Squared distance from each predicted base position to each measured return: (N, H, B).
            sdx, sdy = self._sdx, self._sdy
            np.subtract(self._scan_x, pose_mean[:, :, 0:1], out=sdx)
            np.subtract(self._scan_y, pose_mean[:, :, 1:2], out=sdy)
            np.square(sdx, out=sdx)
            np.square(sdy, out=sdy)
            sdx += sdy
            np.min(sdx, axis=2, out=self._hit)
            np.less(self._hit, self._disc2, out=self._near)
            np.sum(self._near, axis=1, out=terms["scan_collision"])
            terms["scan_collision"] *= w.scan_collision
        else:
            terms["scan_collision"].fill(0.0)

        np.copyto(out, terms["collision"])
        for name in TERMS[1:]:
            out += terms[name]
        return out

    def _blocked(self, ranges: np.ndarray, final_pose: np.ndarray, out: np.ndarray) -> None:
        """The blocked fraction (N,) of the way toward the goal from the final poses (module docstring), given the
        final scans ``ranges`` (N, B) and poses ``final_pose`` (N, 3); reads the goal offsets of the last step from
        ``_dx``/``_dy``. With ``scan_collision`` on, the latest measured scan's returns block the way too."""
        reach = self.weights.blocked_reach_m
        dx, dy, dist = self._dx[:, -1], self._dy[:, -1], self._dist[:, -1]
        c, s, tmp = self._cos_h, self._sin_h, self._scratch
        np.cos(final_pose[:, 2], out=c)
        np.sin(final_pose[:, 2], out=s)
        # The unit vector toward the goal in the final base frame (R(-yaw) (g - p) / |g - p|).
        ex, ey = self._ex[:, 0], self._ey[:, 0]
        np.multiply(c, dx, out=ex)
        np.multiply(s, dy, out=tmp)
        ex += tmp
        np.multiply(c, dy, out=ey)
        np.multiply(s, dx, out=tmp)
        ey -= tmp
        np.maximum(dist, 1e-9, out=tmp)
        ex /= tmp
        ey /= tmp
        # The final scan's returns in the final base frame.
        px, py = self._px, self._py
        mx, my = self.geometry.lidar_xy_m
        np.multiply(ranges, self._beam_cos, out=px)
        px += np.float32(mx)
        np.multiply(ranges, self._beam_sin, out=py)
        py += np.float32(my)
        self._free_toward_goal(self._free)
        if self.weights.scan_collision > 0.0:
            # The measured returns (planning-time frame) in each final base frame: R(-yaw) (q - p).
            sx, sy, free = self._along, self._lateral, self._free
            np.subtract(self._scan_x, final_pose[:, 0:1], out=sx)
            np.subtract(self._scan_y, final_pose[:, 1:2], out=sy)
            np.multiply(sx, c[:, None], out=px)
            np.multiply(sy, s[:, None], out=py)
            px += py
            np.multiply(sy, c[:, None], out=py)
            np.multiply(sx, s[:, None], out=sx)
            py -= sx
            np.copyto(self._free_pred, free)
            self._free_toward_goal(free)
            np.minimum(free, self._free_pred, out=free)
        np.minimum(dist, reach, out=tmp)  # the way worth having: to the goal, at most the reach
        np.minimum(self._free, tmp, out=out)
        np.subtract(tmp, out, out=out)
        out *= 1.0 / reach

    def _free_toward_goal(self, out: np.ndarray) -> None:
        """How far (N,) the safety disc can travel from the final pose toward the goal (unit vector ``_ex``,
        ``_ey``) before touching a return at ``_px``/``_py`` (N, B), final base frame; overwrites the scratch."""
        px, py, along, lateral, ahead = self._px, self._py, self._along, self._lateral, self._ahead
        np.multiply(px, self._ex, out=along)
        np.multiply(py, self._ey, out=lateral)
        along += lateral
        np.multiply(py, self._ex, out=lateral)
        np.multiply(px, self._ey, out=px)
        lateral -= px
        # A return blocks the disc when it is ahead and within the disc's swept width; the disc touches it
        # sqrt(r^2 - lateral^2) short of its along-track distance (as in train.policies.swept_free_distances).
        np.square(lateral, out=lateral)
        np.subtract(self._disc2, lateral, out=lateral)
        np.greater(along, 0.0, out=ahead)
        np.greater(lateral, 0.0, out=self._within)
        ahead &= self._within
        np.logical_not(ahead, out=ahead)
        np.maximum(lateral, 0.0, out=lateral)
        np.sqrt(lateral, out=lateral)
        along -= lateral
        np.copyto(along, np.float32(np.inf), where=ahead)
        np.min(along, axis=1, out=out)
        np.maximum(out, 0.0, out=out)
