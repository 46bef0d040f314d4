"""The gymnasium envs: check_env on every registered oni/ id, observation routing, seeds and determinism,
reward and episode ends, bad actions, and the config."""

from __future__ import annotations

import math
import subprocess
import sys
import warnings
from pathlib import Path

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from robots import robot_path
from robots.description import DescriptionError
from sim.config import SimConfig, SimSettings, load_sim_config
from sim.envs import HALLWAY_ID, HallwayEnv, default_config_path, hallway_env_config
from sim.hallway import HallwayParams

REPO = Path(__file__).resolve().parents[2]
ONI_IDS = sorted(env_id for env_id in gymnasium.registry if env_id.startswith("oni/"))
#: A straight, empty, 4 m corridor: driving forward reaches the goal.
STRAIGHT = HallwayParams(length_min_m=4.0, length_max_m=4.0, turns_min=0, turns_max=0, obstacle_density_per_m=0.0)
#: check_env's warnings that the envs' documented design triggers: unbounded odometry and ages, and an action
#: space in physical units rather than [-1, 1].
KNOWN_WARNINGS = ("infinity", "symmetric and normalized")


def _run(env: gymnasium.Env, seed: int, actions: np.ndarray) -> tuple[list, list]:
    obs, info = env.reset(seed=seed)
    observations, readings = [obs], list(info["readings"])
    for action in actions:
        obs, _, _, _, info = env.step(action)
        observations.append(obs)
        readings += info["readings"]
    return observations, readings


def _same_obs(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b)
    )


def test_the_hallway_env_is_registered_under_the_oni_namespace():
    assert HALLWAY_ID in ONI_IDS
    assert gymnasium.spec(HALLWAY_ID).namespace == "oni"


@pytest.mark.parametrize("env_id", ONI_IDS)
def test_check_env_passes_on_every_registered_env(env_id):
    env = gymnasium.make(env_id)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for message in KNOWN_WARNINGS:
            warnings.filterwarnings("ignore", message=f".*{message}")
        check_env(env.unwrapped)
    env.close()


def test_importing_sim_stays_light_and_the_module_id_form_registers_the_env():
    code = (
        "import sys, sim; assert 'mujoco' not in sys.modules and 'gymnasium' not in sys.modules, 'sim is heavy'\n"
        "import gymnasium; env = gymnasium.make('sim.envs:oni/Hallway-v0'); env.reset(seed=1); print('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_spaces_follow_the_robot_description():
    env = HallwayEnv()
    robot = env.robot
    assert env.dt_s == pytest.approx(0.02) and env.max_episode_steps == 6000
    assert env.action_space.dtype == np.float32
    assert np.all(env.action_space.high <= [robot.base.max_v_mps, robot.base.max_omega_radps])
    assert np.allclose(env.action_space.high, [robot.base.max_v_mps, robot.base.max_omega_radps])
    assert np.array_equal(env.action_space.low, -env.action_space.high)
    space = env.observation_space
    assert space["lidar_ranges_m"].shape == (360,) and space["depth_z_m"].shape == (48, 64)
    assert space["imu_accel_mps2"].shape == (4, 3) and space["imu_gyro_radps"].shape == (4, 3)  # 200 Hz / 50 Hz
    assert space["odom_state"].shape == (5,)
    ages = {k for k in space.keys() if k.endswith("_age_s")}
    assert ages == {"lidar_age_s", "depth_age_s", "imu_age_s", "odom_age_s"}
    assert all(s.dtype == np.float32 for s in space.values())
    # Actions at the space's bounds are within the simulator's limits: never counted as clipped.
    env.reset(seed=0)
    env.step(env.action_space.high)
    _, _, _, _, info = env.step(env.action_space.low)
    assert info["stats"]["clipped_commands"] == 0


def test_the_observation_holds_each_sensors_latest_readings_and_their_age():
    env = HallwayEnv()
    env.reset(seed=4)
    history: list = []
    for k in range(13):  # 0.26 s: not a multiple of the 10 Hz LiDAR or 15 Hz depth period
        obs, _, _, _, info = env.step(np.array([0.3, 0.5], dtype=np.float32))
        history += info["readings"]
        now = info["ground_truth"].stamp_ns
        assert all(now - env.dt_s * 1e9 < r.stamp_ns <= now for r in info["readings"])
    latest = {r.topic: r for r in history}
    assert np.array_equal(obs["lidar_ranges_m"], latest["sensor.lidar"].data["ranges_m"])
    assert np.array_equal(obs["depth_z_m"], np.clip(latest["sensor.depth"].data["depth"], 0.0, 6.0))
    imu = [r for r in history if r.topic == "sensor.imu"][-4:]
    assert np.array_equal(obs["imu_accel_mps2"], np.stack([r.data["accel_mps2"] for r in imu]))
    assert np.array_equal(obs["imu_gyro_radps"], np.stack([r.data["gyro_radps"] for r in imu]))
    odom = latest["sensor.odom"].data
    state = [odom[f] for f in ("x_m", "y_m", "yaw_rad", "v_mps", "omega_radps")]
    assert np.array_equal(obs["odom_state"], np.array(state, dtype=np.float32))
    for sensor in ("lidar", "depth", "imu", "odom"):
        age = (now - latest[f"sensor.{sensor}"].stamp_ns) / 1e9
        assert obs[f"{sensor}_age_s"][0] == pytest.approx(age, abs=1e-7)
    assert obs["lidar_age_s"][0] == pytest.approx(0.06) and obs["imu_age_s"][0] == 0.0


def test_same_seed_same_data_different_seed_different_data():
    actions = np.random.default_rng(0).uniform([-0.2, -1.0], [0.46, 1.0], (20, 2)).astype(np.float32)
    env_a, env_b = HallwayEnv(), HallwayEnv()
    obs_a, readings_a = _run(env_a, 7, actions)
    obs_b, readings_b = _run(env_b, 7, actions)
    assert _same_obs(obs_a, obs_b) and readings_a == readings_b
    obs_c, _ = _run(env_b, 8, actions)
    assert not _same_obs(obs_a, obs_c)
    # A used env replays the episode of a seed; unseeded resets continue a stream that the seed fixes.
    obs_again, readings_again = _run(env_b, 7, actions)
    assert _same_obs(obs_a, obs_again) and readings_a == readings_again
    next_a, next_b = env_a.reset()[1], env_b.reset()[1]
    assert next_a["episode_seed"] == next_b["episode_seed"] != 7
    assert next_a["readings"] == next_b["readings"]


def test_each_episode_seed_is_a_new_world_unless_the_world_is_fixed():
    env = HallwayEnv()
    _, info = env.reset(seed=11)
    assert info["world_seed"] == 11 and env.robot_sim.world.seed == 11
    _, info = env.reset(seed=12)
    assert info["world_seed"] == 12
    _, info = env.reset(seed=13, options={"world_seed": 11})
    assert (info["episode_seed"], info["world_seed"]) == (13, 11)
    with pytest.raises(ValueError, match="unknown reset options"):
        env.reset(options={"world": 3})
    fixed = HallwayEnv(world_seeds="fixed", world=HallwayParams(seed=5))
    _, first = fixed.reset(seed=1)
    sim = fixed.robot_sim
    _, second = fixed.reset(seed=2)
    assert first["world_seed"] == second["world_seed"] == 5
    assert fixed.robot_sim is sim  # the same world keeps its compiled model
    assert first["readings"] != second["readings"]  # the sensor noise still follows the episode seed


def test_driving_toward_the_goal_earns_progress_and_terminates_there():
    env = HallwayEnv(world=STRAIGHT, sim=SimSettings(sensor_noise=False))
    _, info = env.reset(seed=0)
    start_distance = info["goal_distance_m"]
    total, progress, steps = 0.0, [info["progress_m"]], 0
    terminated = truncated = False
    while not (terminated or truncated):
        _, reward, terminated, truncated, info = env.step(np.array([0.46, 0.0], dtype=np.float32))
        total += reward
        progress.append(info["progress_m"])
        steps += 1
    assert terminated and not truncated and info["goal_distance_m"] <= 0.5
    assert np.all(np.diff(progress) >= 0) and progress[-1] > progress[0] + 3.0
    assert total == pytest.approx(progress[-1] - progress[0])  # no collisions: the reward is the progress
    assert info["ground_truth"].collisions == 0
    assert steps * env.dt_s == pytest.approx((start_distance - 0.5) / 0.46, rel=0.1)
    # Driving back loses reward (once the base, braking at 1 m/s^2, has turned round: 0.46 s).
    for _ in range(40):
        _, reward, _, _, _ = env.step(np.array([-0.46, 0.0], dtype=np.float32))
    assert reward < 0


def test_a_collision_costs_the_penalty():
    env = HallwayEnv(world=STRAIGHT, sim=SimSettings(sensor_noise=False), collision_penalty=2.5)
    env.reset(seed=0)
    turn = int(round(math.pi / 2 / 1.9 / env.dt_s))
    rewards, collisions = [], 0
    for k in range(turn + 400):
        action = [0.0, 1.9] if k < turn else [0.46, 0.0]  # face a side wall, then drive into it
        _, reward, terminated, _, info = env.step(np.array(action, dtype=np.float32))
        rewards.append(reward)
        if info["ground_truth"].collisions:
            collisions = info["ground_truth"].collisions
            break
    assert collisions == 1 and not terminated
    assert rewards[-1] < -2.5 + 0.05  # the penalty, plus at most a sliver of progress


def test_episodes_are_truncated_after_max_episode_s():
    env = HallwayEnv(max_episode_s=0.1)
    assert env.max_episode_steps == 5
    env.reset(seed=0)
    for k in range(1, 6):
        _, _, terminated, truncated, _ = env.step(np.zeros(2, dtype=np.float32))
        assert truncated == (k == 5) and not terminated


def test_bad_actions_are_counted_and_never_reach_mujoco():
    env = HallwayEnv()
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.array([np.nan, 0.1], dtype=np.float32))
    assert info["stats"]["rejected_commands"] == 1
    assert np.isfinite(env.robot_sim.data.ctrl).all()
    _, _, _, _, info = env.step(np.array([5.0, -9.0], dtype=np.float32))
    assert info["stats"]["clipped_commands"] == 1 and info["stats"]["commands"] == 2
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(3, dtype=np.float32))
    with pytest.raises(RuntimeError, match="reset"):
        HallwayEnv().step(np.zeros(2, dtype=np.float32))


def test_the_shipped_preset_equals_the_built_in_defaults():
    assert default_config_path() == REPO / "configs" / "hallway.yaml"
    assert load_sim_config(default_config_path()) == SimConfig(robot_path("turtlebot4"), HallwayParams(), SimSettings())


def test_the_env_section_of_a_preset_and_its_errors(tmp_path):
    preset = tmp_path / "preset.yaml"
    preset.write_text(
        "robot: turtlebot4\nworld: {seed: 4}\nsim: {physics_hz: 600}\nenv: {control_hz: 25, world_seeds: fixed}\n"
    )
    env = HallwayEnv(preset)
    assert env.dt_s == pytest.approx(0.04) and env.config.env.world_seeds == "fixed"
    assert env.observation_space["imu_accel_mps2"].shape == (8, 3)
    assert env.reset(seed=9)[1]["world_seed"] == 4
    assert hallway_env_config(preset, control_hz=50).env.control_hz == 50  # keyword settings win
    preset.write_text("robot: turtlebot4\nenv: {control_rate: 5}\n")
    with pytest.raises(DescriptionError, match=r"env\.control_rate.*unknown field"):
        HallwayEnv(preset)
    with pytest.raises(DescriptionError, match=r"env\.control_hz = 70.*physics_hz = 600"):
        HallwayEnv(control_hz=70)
    with pytest.raises(DescriptionError, match=r"env\.world_seeds"):
        HallwayEnv(world_seeds="sometimes")
