"""``oniwm eval-nav``: a short run of every controller in a short, empty corridor, and the pieces it is built from."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from robots.model_spec import robot_geometry
from train.eval_nav import NavConfig, nav_seeds, summarize, targets
from worldmodel.planner.route import Route, RouteGoal, RouteGoalConfig

SMALL_PRESET = """
robot: turtlebot4
world: {seed: 0, length_min_m: 3.0, length_max_m: 3.2, width_min_m: 1.6, width_max_m: 1.8, turns_min: 0, turns_max: 0,
        segment_min_m: 3.0, obstacle_density_per_m: 0.0}
sim: {physics_hz: 600, sensor_noise: true}
dataset: {eval_fraction: 0.1, val_fraction: 0.1}
planner: {samples: 32, horizon: 10, iterations: 1}
"""


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A checkpoint of an untrained tiny world model with the hallway robot's modalities."""
    import torch

    from train.synthetic import SyntheticCorridor, SyntheticSpec
    from worldmodel.checkpoint import save_checkpoint
    from worldmodel.model import (
        WorldModel,
        compute_normalization,
        modalities_from_batch,
        model_config,
    )

    data = SyntheticCorridor(SyntheticSpec(episodes=1, duration_s=3.0), 32)
    batch = {k: torch.stack([data[0][k]]) for k in data[0]}
    cfg = model_config("tiny", modalities_from_batch(batch), 2, True, no_return_m=12.0)
    torch.manual_seed(0)
    run = tmp_path_factory.mktemp("nav") / "run"
    save_checkpoint(run, WorldModel(cfg, compute_normalization([batch], cfg)), 0)
    return run


def test_a_short_run_reports_every_controller_and_the_oracle_reaches_the_goal(tiny_run, tmp_path):
    from worldmodel.cli import build_parser

    preset = tmp_path / "small.yaml"
    preset.write_text(SMALL_PRESET)
    out = tmp_path / "nav.json"
    argv = ["eval-nav", "--checkpoint", str(tiny_run), "--config", str(preset), "--episodes", "1", "--json", str(out),
            "--max-duration-s", "12", "--oracle-samples", "16", "--threads", "1", "--no-progress"]
    args = build_parser(argv).parse_args(argv)
    assert args.func(args) == 0
    doc = json.loads(out.read_text())
    assert doc["format"] == "oniwm.eval_nav/1" and doc["backend"] == "torch"
    assert list(doc["summary"]) == ["wm_mpc", "gap", "oracle", "random"]
    for name, s in doc["summary"].items():
        for key in ("success_rate", "collisions", "collisions_per_episode", "collision_free_rate", "time_to_goal_s",
                    "path_length_m", "progress", "end_reasons", "episodes"):
            assert key in s, (name, key)
        assert s["episodes"] == 1
    assert set(doc["targets"]) == {"wm_success_rate", "wm_vs_oracle", "wm_beats_gap"}
    assert all(isinstance(t["ok"], bool) for t in doc["targets"].values())
    assert len(doc["episodes"]) == 4 and {e["seed"] for e in doc["episodes"]} == set(doc["seeds"])
    assert doc["seeds"] == nav_seeds(1, {"eval_fraction": 0.1, "val_fraction": 0.1})
    oracle = next(e for e in doc["episodes"] if e["controller"] == "oracle")
    assert oracle["success"] and oracle["collisions"] == 0 and oracle["time_s"] < 12.0
    assert oracle["path_length_m"] > 2.0
    wm = doc["summary"]["wm_mpc"]
    assert wm["plan_ms_p50"] is not None and doc["episodes"][0]["stats"]["observe_ms"]["count"] > 0


def test_world_model_mpc_wiring_reaches_the_goal_with_a_perfect_model(tmp_path):
    """The world-model controller (tick assembly, odometry goal, plan playback) with the simulator as its "model":
    it must then drive like the oracle, so a failure of the real one is the model's, not the wiring's."""
    import dataclasses
    from types import SimpleNamespace

    import yaml

    from sim.config import sim_config_from_dict
    from sim.hallway import generate_hallway
    from sim.robot_sim import RobotSim
    from train.eval_nav import SimRollout, WorldModelMPC, run_episode
    from worldmodel.planner import planner_config_from_dict

    preset = yaml.safe_load(SMALL_PRESET)
    sim_config = sim_config_from_dict(preset)
    robot = sim_config.load_robot()
    world = generate_hallway(dataclasses.replace(sim_config.world, seed=5), robot.base.radius_m)
    sim = RobotSim(robot, world, sim_config.sim, seed=5)
    base = robot.base
    cfg = planner_config_from_dict(preset["planner"], action_low=(-base.max_v_mps, -base.max_omega_radps),
                                   action_high=(base.max_v_mps, base.max_omega_radps), samples=16, time_budget_ms=0.0)
    observed = []

    class SimBackend:
        """observe records what it is given; rollout simulates the candidates from the true state."""

        name = "sim"
        io = SimpleNamespace(beams=360, beam_stride=1)

        def __init__(self) -> None:
            self._rollout = SimRollout(sim, cfg.samples, cfg.horizon, cfg.step_dt_s, 1, 1)

        def initial_state(self) -> None:
            return None

        def observe(self, state, obs, prev_action, dt_s):
            observed.append((float(obs["lidar_mask"]), prev_action.copy(), dt_s))
            return state

        def rollout(self, state, actions, dt_s):
            return self._rollout(state, actions, dt_s)

    nav = NavConfig(max_duration_s=12.0, replan_hz=5.0)
    record = run_episode(WorldModelMPC(SimBackend(), cfg, robot, nav, 1.0), sim, world, Route(world.centerline_xy_m), 5, nav)
    assert record["success"] and record["collisions"] == 0
    ticks = round(record["time_s"] * nav.control_hz)
    assert len(observed) == ticks and all(dt == pytest.approx(0.02) for _, _, dt in observed[1:])
    assert sum(mask for mask, _, _ in observed) == pytest.approx(ticks / 5, abs=2)  # a 10 Hz LiDAR at 50 Hz ticks
    assert np.abs(observed[-1][1]).max() > 0  # the action in effect is fed back


def test_seeds_are_the_eval_split_only():
    from train.dataset import DatasetConfig, split_of

    seeds = nav_seeds(5, {})
    assert len(seeds) == 5 and seeds == sorted(seeds)
    assert all(split_of(s, "", DatasetConfig()) == "eval" for s in seeds)
    assert nav_seeds(2, {"eval_seeds": [7, 3, 11]}) == [3, 7]
    with pytest.raises(ValueError, match="eval-split seeds"):
        nav_seeds(4, {"eval_seeds": [7, 3, 11]})


def test_route_lookahead_point_in_the_robot_frame():
    route = Route(np.array([[0.0, 0.0], [4.0, 0.0], [4.0, 3.0]]))
    assert route.length_m == pytest.approx(7.0)
    assert route.arc_length_m(2.0, 0.4) == pytest.approx(2.0)
    assert route.point_at(5.0) == pytest.approx((4.0, 1.0))
    assert route.point_at(99.0) == pytest.approx((4.0, 3.0))
    assert route.direction_at(1.0) == pytest.approx((1.0, 0.0)) and route.direction_at(5.0) == pytest.approx((0.0, 1.0))
    # At (3.5, 0) facing +y, 1.5 m ahead along the route is (4, 1): 1 m ahead and 0.5 m to the right.
    goal = RouteGoal(route, RouteGoalConfig(lookahead_m=1.5))
    np.testing.assert_allclose(goal(0.0, 3.5, 0.0, math.pi / 2), [1.0, -0.5], atol=1e-9)


def test_route_goal_backs_out_then_detours_when_progress_stalls():
    route = Route(np.array([[0.0, 0.0], [10.0, 0.0]]))
    nav = RouteGoalConfig(recover_window_s=10.0, backup_s=4.0, detour_s=8.0, backup_m=1.0, detour_m=0.8, lookahead_m=1.5)
    goal = RouteGoal(route, nav)
    pose = (3.0, 0.3, 0.0)  # left of the centreline, facing along it
    np.testing.assert_allclose(goal(0.0, *pose), [1.5, -0.3])
    np.testing.assert_allclose(goal(9.0, *pose), [1.5, -0.3])  # no progress yet, but not for long
    np.testing.assert_allclose(goal(10.5, *pose), [-1.0, -0.3])  # stalled: back out along the route
    assert goal.recoveries == 1
    np.testing.assert_allclose(goal(15.0, *pose), [1.5, -1.1])  # then detour to the right side
    np.testing.assert_allclose(goal(23.0, *pose), [1.5, -0.3])  # and back to the route
    np.testing.assert_allclose(goal(24.0, 5.0, 0.0, 0.0), [1.5, 0.0])  # progress resets the window
    off = RouteGoal(route, RouteGoalConfig(recover_window_s=0.0))
    np.testing.assert_allclose(off(100.0, *pose), [1.5, -0.3])


def test_geometry_from_the_robot_and_the_oracles_reduced_scan():
    from robots import robot_path
    from robots.description import load_robot

    robot = load_robot(robot_path("turtlebot4"))
    full, reduced = robot_geometry(robot), robot_geometry(robot, beam_stride=4)
    assert full.beams == 360 and reduced.beams == 90
    assert reduced.angle_increment_rad == pytest.approx(4 * full.angle_increment_rad)
    assert full.lidar_xy_m == (-0.04, 0.0) and full.radius_m == robot.base.radius_m


def _record(controller: str, success: bool, collisions: int, time_s: float) -> dict:
    return {"controller": controller, "success": success, "end_reason": "goal" if success else "time", "time_s": time_s,
            "collisions": collisions, "path_length_m": 10.0, "progress": 1.0 if success else 0.5, "wall_s": 1.0,
            "stats": {}}


def test_targets_compare_world_model_mpc_with_the_oracle_and_the_reactive_controller():
    wm = summarize([_record("wm_mpc", True, 0, 50.0)] * 9 + [_record("wm_mpc", False, 1, 180.0)])
    oracle = summarize([_record("oracle", True, 0, 40.0)] * 10)
    gap_same = summarize([_record("gap", True, 1, 60.0)] * 9 + [_record("gap", False, 0, 180.0)])
    out = targets({"wm_mpc": wm, "oracle": oracle, "gap": gap_same})
    assert out["wm_success_rate"]["ok"] and out["wm_vs_oracle"]["ok"]
    assert out["wm_beats_gap"]["ok"]  # equal success, fewer collisions per episode (0.1 vs 0.9)
    gap_better = summarize([_record("gap", True, 0, 60.0)] * 10)
    assert not targets({"wm_mpc": wm, "gap": gap_better})["wm_beats_gap"]["ok"]
    weak = summarize([_record("wm_mpc", True, 0, 50.0)] * 7 + [_record("wm_mpc", False, 0, 180.0)] * 3)
    out = targets({"wm_mpc": weak, "oracle": oracle})
    assert out["wm_success_rate"]["ok"] is False and out["wm_vs_oracle"]["ok"] is False
    assert out["wm_beats_gap"]["ok"] is None


def test_nav_config_is_validated():
    with pytest.raises(ValueError, match="controllers"):
        NavConfig(controllers=("wm_mpc", "teleop"))
    with pytest.raises(ValueError, match="replan_hz"):
        NavConfig(replan_hz=7.0)
    with pytest.raises(ValueError, match="episodes"):
        NavConfig(episodes=0)
