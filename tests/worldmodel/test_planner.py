"""The sampling planner and its cost, on an analytic "world model": exact unicycle kinematics and ray-cast LiDAR
against straight walls and discs, so what the planner should do is known."""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import numpy as np
import pytest

from worldmodel.planner import (
    TERMS,
    CostWeights,
    NavigationCost,
    PlannerConfigError,
    RobotGeometry,
    SamplingPlanner,
    normal_cdf,
    planner_config_from_dict,
    safe_ranges,
)

LOW, HIGH = (-0.46, -1.9), (0.46, 1.9)
RADIUS = 0.171
BEAMS = 120
GEOMETRY = RobotGeometry(radius_m=RADIUS, lidar_xy_m=(-0.04, 0.0), lidar_yaw_rad=0.0, angle_min_rad=-math.pi,
                         angle_increment_rad=2 * math.pi / BEAMS, beams=BEAMS)


@dataclass
class Pred:
    lidar_mean_m: np.ndarray
    lidar_std_m: np.ndarray
    pose_mean: np.ndarray
    pose_std: np.ndarray


@dataclass
class AnalyticWorld:
    """Walls ``n . p = c`` (the robot on the side ``n . p < c``) and discs ``(x, y, r)``."""

    lines: tuple[tuple[float, float, float], ...] = ()
    discs: tuple[tuple[float, float, float], ...] = ()
    max_range_m: float = 12.0

    def clearance(self, x: float, y: float) -> float:
        """Distance from the footprint's edge to the nearest wall or disc (m, < 0 in collision)."""
        d = [c - (nx * x + ny * y) for nx, ny, c in self.lines]
        d += [math.hypot(x - ox, y - oy) - r for ox, oy, r in self.discs]
        return min(d, default=math.inf) - RADIUS


class AnalyticRollout:
    """rollout(state = (x, y, yaw) in the world, actions (N, H, 2) [v, omega], dt): exact unicycle steps, LiDAR
    rays at the predicted poses; std = ``std_m`` everywhere."""

    def __init__(self, world: AnalyticWorld, std_m: float = 0.01) -> None:
        self.world = world
        self.std_m = std_m
        self.calls = 0
        self._angles = GEOMETRY.angle_min_rad + np.arange(BEAMS) * GEOMETRY.angle_increment_rad

    def __call__(self, state: tuple[float, float, float], actions: np.ndarray, dt: float) -> Pred:
        self.calls += 1
        n, h, _ = actions.shape
        x0, y0, yaw0 = state
        pose = np.zeros((n, h, 3))
        x, y, yaw = np.full(n, x0), np.full(n, y0), np.full(n, yaw0)
        world_xy = np.zeros((n, h, 3))
        for k in range(h):
            v, w = actions[:, k, 0].astype(np.float64), actions[:, k, 1].astype(np.float64)
            x = x + v * np.cos(yaw) * dt
            y = y + v * np.sin(yaw) * dt
            yaw = yaw + w * dt
            world_xy[:, k] = np.stack([x, y, yaw], -1)
        c, s = math.cos(yaw0), math.sin(yaw0)
        dx, dy = world_xy[..., 0] - x0, world_xy[..., 1] - y0
        pose[..., 0], pose[..., 1], pose[..., 2] = c * dx + s * dy, -s * dx + c * dy, world_xy[..., 2] - yaw0
        mx, my = GEOMETRY.lidar_xy_m
        wyaw = world_xy[..., 2:3]
        ox = world_xy[..., 0:1] + np.cos(wyaw) * mx - np.sin(wyaw) * my
        oy = world_xy[..., 1:2] + np.sin(wyaw) * mx + np.cos(wyaw) * my
        ang = wyaw + self._angles
        ux, uy = np.cos(ang), np.sin(ang)
        ranges = np.full((n, h, BEAMS), self.world.max_range_m)
        for nx, ny, cc in self.world.lines:
            along = nx * ux + ny * uy
            t = (cc - (nx * ox + ny * oy)) / np.where(along > 1e-9, along, np.nan)
            ranges = np.fmin(ranges, np.where(t > 0, t, np.inf))
        for cx, cy, r in self.world.discs:
            px, py = ox - cx, oy - cy
            b = px * ux + py * uy
            disc = b * b - (px * px + py * py - r * r)
            t = -b - np.sqrt(np.maximum(disc, 0.0))
            ranges = np.fmin(ranges, np.where((disc >= 0) & (t > 0), t, np.inf))
        return Pred(ranges.astype(np.float32), np.full((n, h, BEAMS), self.std_m, np.float32), pose.astype(np.float32),
                    np.zeros((n, h, 3), np.float32))


def make_planner(world: AnalyticWorld, **overrides) -> tuple[SamplingPlanner, AnalyticRollout]:
    settings = {"time_budget_ms": 0.0, "samples": 256, "horizon": 10, "iterations": 3}
    settings.update(overrides)
    cfg = planner_config_from_dict({}, action_low=LOW, action_high=HIGH, **settings)
    cost = NavigationCost(cfg.cost, GEOMETRY, cfg.samples, cfg.horizon, cfg.action_low, cfg.action_high)
    rollout = AnalyticRollout(world)
    return SamplingPlanner(cfg, cost, rollout), rollout


def goal_in_robot_frame(goal: tuple[float, float], pose: tuple[float, float, float]) -> np.ndarray:
    dx, dy = goal[0] - pose[0], goal[1] - pose[1]
    c, s = math.cos(pose[2]), math.sin(pose[2])
    return np.array([c * dx + s * dy, -s * dx + c * dy])


START = (0.0, 0.0, 0.0)
ZERO = np.zeros(2, np.float32)


# ------------------------------------------------------------------------------------------------------------------
# Behaviour on known worlds.


@pytest.mark.parametrize("method", ["mppi", "cem"])
def test_moves_toward_the_goal_and_turns_toward_one_to_the_side(method):
    planner, _ = make_planner(AnalyticWorld(), method=method)
    ahead = planner.plan(START, np.array([3.0, 0.0]), ZERO).plan.copy()  # results are views, valid until the next plan
    assert ahead[0, 0] > 0.1 and ahead[:, 0].mean() > 0.3 and abs(ahead[:5, 1].mean()) < 0.5
    planner.reset()
    left = planner.plan(START, np.array([0.0, 3.0]), ZERO).plan.copy()
    planner.reset()
    right = planner.plan(START, np.array([0.0, -3.0]), ZERO).plan.copy()
    assert left[:, 1].mean() > 0.2 and right[:, 1].mean() < -0.2  # turning toward it all along the plan


@pytest.mark.parametrize("method", ["mppi", "cem"])
def test_does_not_drive_into_a_wall_between_it_and_the_goal(method):
    world = AnalyticWorld(lines=((1.0, 0.0, 0.55),))  # a wall across the way, 0.38 m from the footprint
    planner, rollout = make_planner(world, method=method)
    result = planner.plan(START, np.array([3.0, 0.0]), ZERO)
    traj = rollout(START, result.plan[None], 0.1).pose_mean[0]
    assert min(world.clearance(float(x), float(y)) for x, y, _ in traj) > 0.05
    full_ahead = np.tile(np.array([HIGH[0], 0.0], np.float32), (256, 10, 1))
    pred = rollout(START, full_ahead, 0.1)
    straight = planner.cost(pred.lidar_mean_m, pred.lidar_std_m, pred.pose_mean, full_ahead, np.array([3.0, 0.0]), ZERO,
                            out=np.zeros(256))[0]
    assert result.cost < straight


def test_closed_loop_goes_around_an_obstacle_to_the_goal_without_touching_anything():
    # An obstacle across the straight line to the goal: passing it takes a 0.5 m sidestep, more than a 1 s horizon
    # can reach from rest, so the plan looks 2 s ahead (the world model's training horizon).
    world = AnalyticWorld(lines=((0.0, 1.0, 1.0), (0.0, -1.0, 1.0)), discs=((1.5, 0.05, 0.3),))
    planner, _ = make_planner(world, iterations=2, horizon=20)
    goal, pose, action = (4.0, 0.0), START, ZERO.copy()
    for step in range(150):
        result = planner.plan(pose, goal_in_robot_frame(goal, pose), action, elapsed_s=0.1)
        action = result.action.copy()
        v, w = float(action[0]), float(action[1])
        x, y, yaw = pose
        for _ in range(10):  # the "true" motion, integrated finer than the plan
            x, y, yaw = x + v * math.cos(yaw) * 0.01, y + v * math.sin(yaw) * 0.01, yaw + w * 0.01
            assert world.clearance(x, y) > 0.0, f"collision at step {step}: ({x:.2f}, {y:.2f})"
        pose = (x, y, yaw)
        if math.hypot(goal[0] - x, goal[1] - y) < 0.3:
            break
    assert math.hypot(goal[0] - pose[0], goal[1] - pose[1]) < 0.3


# ------------------------------------------------------------------------------------------------------------------
# Warm start, anytime, limits, determinism.


def test_warm_start_shifts_the_mean_and_the_previous_plan_whole_and_fractional_steps():
    planner, _ = make_planner(AnalyticWorld(), iterations=1)
    ramp = np.stack([np.arange(10) * 0.01, -np.arange(10) * 0.1], -1).astype(np.float32)
    planner.mean[:] = ramp
    planner.shift(1.0)
    np.testing.assert_allclose(planner.mean, np.concatenate([ramp[1:], ramp[-1:]]), atol=1e-7)
    planner.mean[:] = ramp
    planner.shift(0.5)
    expected = np.concatenate([(ramp[:-1] + ramp[1:]) / 2, ramp[-1:]])
    np.testing.assert_allclose(planner.mean, expected, atol=1e-6)

    planner.reset()
    first = planner.plan(START, np.array([3.0, 1.0]), ZERO)
    previous, mean = first.plan.copy(), planner.mean.copy()
    planner.plan(START, np.array([3.0, 1.0]), ZERO, elapsed_s=0.1)  # one step (0.1 s) later
    # The second plan's only round held the shifted mean in row 0 and the shifted previous plan in row 1.
    np.testing.assert_allclose(planner.samples[0], np.concatenate([mean[1:], mean[-1:]]), atol=1e-6)
    np.testing.assert_allclose(planner.samples[1], np.concatenate([previous[1:], previous[-1:]]), atol=1e-6)


def test_without_warm_start_every_plan_starts_from_rest():
    planner, _ = make_planner(AnalyticWorld(), iterations=1, warm_start=False)
    planner.plan(START, np.array([3.0, 0.0]), ZERO)
    planner.plan(START, np.array([3.0, 0.0]), ZERO)
    np.testing.assert_array_equal(planner.samples[0], np.zeros((10, 2)))


def test_anytime_a_tiny_budget_returns_a_valid_plan():
    planner, rollout = make_planner(AnalyticWorld(), iterations=50, min_iterations=1, time_budget_ms=1e-6)
    result = planner.plan(START, np.array([3.0, 0.0]), ZERO)
    assert result.iterations == 1 and rollout.calls == 1
    assert math.isfinite(result.cost) and result.plan.shape == (10, 2)
    assert np.all(result.plan >= np.float32(LOW)) and np.all(result.plan <= np.float32(HIGH))
    assert set(result.terms) == set(TERMS)

    # min_iterations 0 with chunks: only the first chunk (the warm start among its candidates) is sure to run.
    planner, rollout = make_planner(AnalyticWorld(), iterations=50, min_iterations=0, time_budget_ms=1e-6, chunk=64)
    result = planner.plan(START, np.array([3.0, 0.0]), ZERO)
    assert result.iterations == 1 and rollout.calls == 1 and planner.evaluated == 64 and math.isfinite(result.cost)


def test_chunks_cut_a_round_when_the_budget_ends_and_score_like_one_call():
    # Without a budget, chunked and unchunked planners draw the same candidates and find the same plan.
    whole, _ = make_planner(AnalyticWorld(), iterations=2)
    chunked, rollout = make_planner(AnalyticWorld(), iterations=2, chunk=64)
    a = whole.plan(START, np.array([3.0, 0.5]), ZERO)
    b = chunked.plan(START, np.array([3.0, 0.5]), ZERO)
    assert rollout.calls == 8 and chunked.evaluated == 512
    np.testing.assert_allclose(b.plan, a.plan, atol=1e-6)
    assert b.cost == pytest.approx(a.cost)
    # A slow predictor and a 25 ms budget: the round stops between chunks, with a valid plan of what was scored.
    planner, rollout = make_planner(AnalyticWorld(), iterations=5, min_iterations=0, time_budget_ms=25.0, chunk=32)
    inner = planner.rollout

    def slow(state, actions, dt):
        time.sleep(0.01)
        return inner(state, actions, dt)

    planner.rollout = slow
    result = planner.plan(START, np.array([3.0, 0.0]), ZERO)
    assert 32 <= planner.evaluated < 256 and result.iterations == 1 and math.isfinite(result.cost)
    assert result.elapsed_ms < 60.0


def test_anytime_stops_when_the_budget_is_spent_and_keeps_the_best_found():
    planner, rollout = make_planner(AnalyticWorld(), iterations=1000, time_budget_ms=40.0)
    slow_calls = []

    def slow(state, actions, dt):
        time.sleep(0.01)
        slow_calls.append(1)
        return rollout(state, actions, dt)

    planner.rollout = slow
    result = planner.plan(START, np.array([3.0, 0.0]), ZERO)
    assert 1 <= result.iterations < 10 and result.iterations == len(slow_calls)
    assert result.elapsed_ms < 40.0 + 60.0  # at most about one round past the budget on a loaded machine
    # The returned plan is the best evaluated: re-scoring it gives the reported cost.
    pred = rollout(START, np.repeat(result.plan[None], 256, 0), 0.1)
    again = planner.cost(pred.lidar_mean_m, pred.lidar_std_m, pred.pose_mean, np.repeat(result.plan[None], 256, 0),
                         np.array([3.0, 0.0]), ZERO, out=np.zeros(256))
    assert again[0] == pytest.approx(result.cost, rel=1e-5)


def test_samples_and_plans_respect_the_action_limits_and_shapes():
    planner, _ = make_planner(AnalyticWorld(), noise_std=(10.0, 10.0), samples=64, horizon=7)
    result = planner.plan(START, np.array([-5.0, 2.0]), ZERO)
    assert result.plan.shape == (7, 2) and result.action.shape == (2,) and planner.samples.shape == (64, 7, 2)
    for arr in (planner.samples, result.plan, planner.mean):
        assert np.all(arr >= np.float32(LOW)) and np.all(arr <= np.float32(HIGH))
    tight = planner_config_from_dict({"action_low": [0.0, -1.0], "action_high": [0.3, 1.0]}, action_low=LOW, action_high=HIGH)
    assert tight.action_low == (0.0, -1.0)
    cost = NavigationCost(tight.cost, GEOMETRY, tight.samples, tight.horizon, tight.action_low, tight.action_high)
    once = dataclasses.replace(tight, time_budget_ms=0.0, iterations=1)
    bounded = SamplingPlanner(once, cost, AnalyticRollout(AnalyticWorld()))
    plan = bounded.plan(START, np.array([-3.0, 0.0]), ZERO).plan  # the goal is behind: it would reverse if it could
    assert plan[:, 0].min() >= 0.0 and plan[:, 0].max() <= np.float32(0.3)


def test_a_plan_is_deterministic_given_the_seed():
    goal = np.array([2.0, 1.0])
    a, _ = make_planner(AnalyticWorld(discs=((1.0, 0.3, 0.2),)), seed=7)
    b, _ = make_planner(AnalyticWorld(discs=((1.0, 0.3, 0.2),)), seed=7)
    c, _ = make_planner(AnalyticWorld(discs=((1.0, 0.3, 0.2),)), seed=8)
    ra, rb, rc = (p.plan(START, goal, ZERO) for p in (a, b, c))
    np.testing.assert_array_equal(ra.plan, rb.plan)
    assert ra.cost == rb.cost
    assert not np.array_equal(ra.plan, rc.plan)
    a.reset(seed=8)  # a reset with c's seed replays c's plan
    np.testing.assert_array_equal(a.plan(START, goal, ZERO).plan, rc.plan)


def test_non_finite_predictions_never_win():
    planner, rollout = make_planner(AnalyticWorld(), iterations=1)

    def broken(state, actions, dt):
        pred = rollout(state, actions, dt)
        pred.lidar_mean_m[1:] = np.nan  # only row 0 (the warm start: at rest) is finite
        return pred

    planner.rollout = broken
    result = planner.plan(START, np.array([3.0, 0.0]), ZERO)
    assert math.isfinite(result.cost)
    np.testing.assert_array_equal(result.plan, np.zeros((10, 2)))


# ------------------------------------------------------------------------------------------------------------------
# The cost terms.


def _cost(weights: CostWeights, n: int = 4, h: int = 5) -> NavigationCost:
    return NavigationCost(weights, GEOMETRY, n, h, LOW, HIGH)


def _only(term: str, **extra) -> CostWeights:
    zero = {name: 0.0 for name in TERMS}
    zero[term] = 1.0
    return CostWeights(**{**zero, **extra})


def test_normal_cdf_matches_erf():
    z = np.linspace(-8, 8, 1001)
    out, scratch, upper = np.empty_like(z), np.empty((2, *z.shape)), np.empty(z.shape, bool)
    normal_cdf(z, out, scratch, upper)
    exact = np.array([0.5 * (1 + math.erf(v / math.sqrt(2))) for v in z])
    assert np.max(np.abs(out - exact)) < 2e-7


def test_safe_ranges_account_for_the_lidar_offset():
    r = safe_ranges(GEOMETRY, 0.1)
    rho = RADIUS + 0.1
    assert r[BEAMS // 2] == pytest.approx(rho + 0.04)  # straight ahead: the LiDAR sits 4 cm behind the centre
    assert r[0] == pytest.approx(rho - 0.04)  # straight back (angle -pi)
    assert r[BEAMS // 4] == pytest.approx(math.sqrt(rho**2 - 0.04**2))  # to the right


def test_collision_term_is_the_probability_of_the_most_threatened_beam_short_of_the_safe_range():
    cost = _cost(_only("collision", safety_distance_m=0.1, range_noise_m=0.01))
    n, h = 4, 5
    safe = cost.safe_range_m
    mean = np.full((n, h, BEAMS), 5.0, np.float32)
    std = np.full((n, h, BEAMS), 0.04, np.float32)  # + the sensor's 0.01: 0.05
    mean[1, :, 7] = safe[7]  # row 1: one beam exactly at the safe range every step -> 0.5 per step
    mean[2, 2, 9] = safe[9] - 1.0  # row 2: one beam far inside it at one step -> 1 once
    mean[3, :, 3] = safe[3] + 0.05  # row 3: one sigma outside the safe range...
    pose, actions, out = np.zeros((n, h, 3), np.float32), np.zeros((n, h, 2), np.float32), np.zeros(n)
    cost(mean, std, pose, actions, np.array([1.0, 0.0]), ZERO, out)
    assert out[0] == pytest.approx(0.0, abs=1e-9)
    assert out[1] == pytest.approx(0.5 * h, rel=1e-6)
    assert out[2] == pytest.approx(1.0, rel=1e-6)
    assert out[3] == pytest.approx(h * 0.158655, rel=1e-4)  # Phi(-1) per step
    std[3, :, 3] = 0.5  # ...more uncertain: riskier
    cost(mean, std, pose, actions, np.array([1.0, 0.0]), ZERO, out)
    assert out[3] > h * 0.4
    std[3, :, 3] = 0.0  # a certain prediction still has the sensor's noise (0.05 m = 5 sigma -> Phi(-5))
    cost(mean, std, pose, actions, np.array([1.0, 0.0]), ZERO, out)
    assert out[3] == pytest.approx(h * 2.87e-7, rel=0.01)


def test_progress_heading_effort_and_smoothness_terms():
    n, h = 4, 5
    lidar, std = np.full((n, h, BEAMS), 5.0, np.float32), np.full((n, h, BEAMS), 0.05, np.float32)
    pose = np.zeros((n, h, 3), np.float32)
    pose[1, :, 0] = np.linspace(0.2, 1.0, h)  # row 1 drives 1 m toward the goal at (2, 0)
    pose[2, :, 0] = -np.linspace(0.2, 1.0, h)  # row 2 away from it
    pose[3, :, 2] = math.pi  # row 3 stays, facing away
    actions = np.zeros((n, h, 2), np.float32)
    goal, out = np.array([2.0, 0.0]), np.zeros(n)

    progress = _cost(_only("progress"))
    progress(lidar, std, pose, actions, goal, ZERO, out)
    assert out[0] == pytest.approx(0.0) and out[3] == pytest.approx(0.0)
    assert out[1] == pytest.approx(-1.0, rel=1e-6) and out[2] == pytest.approx(1.0, rel=1e-6)

    blocked = _cost(_only("blocked", blocked_reach_m=2.0, safety_distance_m=0.1))
    walls = lidar.copy()
    walls[1, :, BEAMS // 2] = 1.0  # row 1: a return 1 m straight ahead of the LiDAR, which sits 4 cm back
    walls[2, :, 3 * BEAMS // 4] = 1.0  # row 2: one 1 m to the left, clear of the way to the goal
    still = np.zeros((n, h, 3), np.float32)
    blocked(walls, std, still, actions, goal, ZERO, out)
    free = 0.96 - (RADIUS + 0.1)  # the safety disc touches the return this far ahead
    assert out[0] == pytest.approx(0.0) and out[2] == pytest.approx(0.0)
    assert out[1] == pytest.approx((2.0 - free) / 2.0, rel=1e-5)
    blocked(walls, std, still, actions, np.array([0.5, 0.0]), ZERO, out)  # the goal is short of the return
    assert out[1] == pytest.approx(0.0)
    turned = still.copy()
    turned[1, :, 2] = math.pi / 2  # facing left, the same scan puts the return on the way to a goal at (0, 2)
    blocked(walls, std, turned, actions, np.array([0.0, 2.0]), ZERO, out)
    assert out[1] == pytest.approx((2.0 - free) / 2.0, rel=1e-5)

    heading = _cost(_only("heading"))
    heading(lidar, std, pose, actions, goal, ZERO, out)
    assert out[:3] == pytest.approx([0.0, 0.0, 0.0], abs=1e-6) and out[3] == pytest.approx(1.0)

    actions[1] = np.array(HIGH, np.float32)  # at the limits every step: effort 2 (two dims at their limits)
    actions[2, :, 0] = 0.23  # half the speed limit, constant
    effort = _cost(_only("effort"))
    effort(lidar, std, pose, actions, goal, ZERO, out)
    assert out[0] == pytest.approx(0.0) and out[1] == pytest.approx(2.0, rel=1e-5) and out[2] == pytest.approx(0.25, rel=1e-5)

    smooth = _cost(_only("smoothness"))
    prev = np.array([0.23, 0.0], np.float32)
    smooth(lidar, std, pose, actions, goal, prev, out)
    assert out[2] == pytest.approx(0.0, abs=1e-9)  # constant and equal to the action in effect
    assert out[0] == pytest.approx(0.25 / h, rel=1e-5)  # one change of half the limit, at the first step
    actions[3, ::2, 1] = 1.9  # omega alternating 1.9, 0: a change of the full limit every step
    smooth(lidar, std, pose, actions, goal, ZERO, out)
    assert out[3] == pytest.approx(1.0, rel=1e-5)

    total = _cost(CostWeights())
    total(lidar, std, pose, actions, goal, prev, out)
    np.testing.assert_allclose(out, sum(total.terms[name] for name in TERMS))


# ------------------------------------------------------------------------------------------------------------------
# Configuration.


@pytest.mark.parametrize("field, value, message", [
    ("method", "random", "planner.method"),
    ("samples", 1, "planner.samples"),
    ("horizon", 0, "planner.horizon"),
    ("step_dt_s", 0.0, "planner.step_dt_s"),
    ("min_iterations", 5, "planner.min_iterations"),
    ("temperature", 0.0, "planner.temperature"),
    ("elites", 0, "planner.elites"),
    ("noise_std", (0.1,), "planner.noise_std"),
    ("noise_correlation", 1.0, "planner.noise_correlation"),
    ("warm_start", "yes", "planner.warm_start"),
    ("time_budget_ms", -1.0, "planner.time_budget_ms"),
])
def test_bad_settings_are_rejected_by_name(field, value, message):
    with pytest.raises(PlannerConfigError, match=message):
        planner_config_from_dict({field: value}, action_low=LOW, action_high=HIGH)


def test_config_from_a_mapping_limits_and_unknown_keys():
    with pytest.raises(PlannerConfigError, match="planner.sample"):
        planner_config_from_dict({"sample": 3}, action_low=LOW, action_high=HIGH)
    with pytest.raises(PlannerConfigError, match="planner.cost.colision"):
        planner_config_from_dict({"cost": {"colision": 3}}, action_low=LOW, action_high=HIGH)
    with pytest.raises(PlannerConfigError, match="within the robot's limits"):
        planner_config_from_dict({"action_high": [1.0, 1.9]}, action_low=LOW, action_high=HIGH)
    with pytest.raises(PlannerConfigError, match="planner.elites"):  # CEM keeps at most all of its samples
        planner_config_from_dict({"method": "cem", "samples": 64, "elites": 65}, action_low=LOW, action_high=HIGH)
    assert planner_config_from_dict({"samples": 16}, action_low=LOW, action_high=HIGH).elites == 32  # MPPI ignores it
    with pytest.raises(PlannerConfigError, match="planner.cost.progress"):
        planner_config_from_dict({"cost": {"progress": -1}}, action_low=LOW, action_high=HIGH)
    cfg = planner_config_from_dict({"cost": {"collision": 3.0}, "samples": 64}, action_low=LOW, action_high=HIGH)
    assert cfg.cost.collision == 3.0 and cfg.samples == 64 and cfg.action_high == HIGH
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.samples = 3  # type: ignore[misc]
    assert planner_config_from_dict(cfg.to_dict(), action_low=LOW, action_high=HIGH) == cfg


def test_the_preset_planner_section_loads():
    from pathlib import Path

    import yaml

    raw = yaml.safe_load((Path(__file__).resolve().parents[2] / "configs" / "hallway.yaml").read_text())
    cfg = planner_config_from_dict(raw["planner"], action_low=LOW, action_high=HIGH)
    assert cfg.samples >= 256 and cfg.horizon >= 10


def test_geometry_is_validated():
    with pytest.raises(PlannerConfigError, match="inside the footprint"):
        RobotGeometry(radius_m=0.1, lidar_xy_m=(0.2, 0.0), lidar_yaw_rad=0.0, angle_min_rad=0.0,
                      angle_increment_rad=0.1, beams=10)
    with pytest.raises(PlannerConfigError, match="geometry.beams"):
        RobotGeometry(radius_m=0.1, lidar_xy_m=(0.0, 0.0), lidar_yaw_rad=0.0, angle_min_rad=0.0,
                      angle_increment_rad=0.1, beams=0)


def test_the_planner_imports_without_torch():
    import subprocess
    import sys

    code = "import sys, worldmodel.planner; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"


def test_scan_collision_counts_the_steps_whose_predicted_pose_overlaps_a_measured_return():
    weights = CostWeights(scan_collision=2.0, safety_distance_m=0.05)
    cost = NavigationCost(weights, GEOMETRY, 2, 3, LOW, HIGH)
    ranges = np.full(GEOMETRY.beams, 50.0, np.float32)  # 50 m: no return
    front = int(np.argmin(np.abs(np.angle(np.exp(1j * (GEOMETRY.lidar_yaw_rad + GEOMETRY.angle_min_rad
                                                     + np.arange(GEOMETRY.beams) * GEOMETRY.angle_increment_rad))))))
    ranges[front] = 1.0  # one return 1 m ahead of the LiDAR
    cost.set_scan(ranges, no_return_m=12.0)
    lidar = np.full((2, 3, GEOMETRY.beams), 5.0, np.float32)
    pose = np.zeros((2, 3, 3), np.float32)
    pose[0, :, 0] = [0.3, 0.6, 0.9]  # drives into the return: within the disc at its last step
    pose[1, :, 1] = [0.3, 0.6, 0.9]  # drives sideways: never near it
    out = np.zeros(2)
    cost(lidar, lidar * 0.01, pose, np.zeros((2, 3, 2), np.float32), np.array([3.0, 0.0]), ZERO, out)
    mx = GEOMETRY.lidar_xy_m[0]
    inside = sum(abs(1.0 + mx - x) < GEOMETRY.radius_m + 0.05 for x in (0.3, 0.6, 0.9))
    assert cost.terms["scan_collision"][0] == pytest.approx(2.0 * inside) and inside >= 1
    assert cost.terms["scan_collision"][1] == 0.0


def test_with_the_scan_check_on_a_measured_return_blocks_the_way_the_predicted_scan_shows_open():
    def blocked(scan_weight: float) -> float:
        cost = NavigationCost(CostWeights(scan_collision=scan_weight), GEOMETRY, 1, 2, LOW, HIGH)
        ranges = np.full(GEOMETRY.beams, 50.0, np.float32)
        angles = GEOMETRY.lidar_yaw_rad + GEOMETRY.angle_min_rad + np.arange(GEOMETRY.beams) * GEOMETRY.angle_increment_rad
        ranges[np.abs(np.angle(np.exp(1j * angles))) < 0.3] = 1.5  # a wall 1.5 m ahead, measured now
        cost.set_scan(ranges, no_return_m=12.0)
        open_scan = np.full((1, 2, GEOMETRY.beams), 10.0, np.float32)  # the model predicts the way open
        out = np.zeros(1)
        cost(open_scan, open_scan * 0.01, np.zeros((1, 2, 3), np.float32), np.zeros((1, 2, 2), np.float32),
             np.array([3.0, 0.0]), ZERO, out)
        return float(cost.terms["blocked"][0])

    assert blocked(0.0) == 0.0 and blocked(1.0) > 0.2
