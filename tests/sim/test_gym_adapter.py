"""The gym adapter: the MuJoCo benchmarks' readings as ONI messages (codec and MCAP), stamps on the sim clock,
seeds, bad actions, action repeat, episode ends, and the presets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from oni.codec import pack, unpack
from oni.mcap_log import LogReader, LogWriter
from oni.message import Header, Message
from robots.description import DescriptionError
from sim.gym_adapter import (
    ACTION_TOPIC,
    OBSERVATION_TOPIC,
    GymAdapter,
    GymAdapterConfig,
    adapter_config_from_dict,
    load_adapter_config,
)
from sim.sensors import Reading

REPO = Path(__file__).resolve().parents[2]
PRESETS = {"halfcheetah": (17, 6), "hopper": (11, 3), "walker2d": (17, 6), "ant": (105, 8)}


def _message(reading: Reading, seq: int) -> Message:
    stamp = reading.stamp_ns
    header = Header(reading.topic, "1.0", seq, "sim.gym_adapter", stamp, stamp, reading.frame_id, "0" * 32)
    return Message(reading.topic, header, reading.data)


def _episode(adapter: GymAdapter, seed: int, steps: int) -> list[Reading]:
    actions = np.random.default_rng(seed).uniform(adapter.action_low, adapter.action_high, (steps, adapter.action_dim))
    readings = adapter.reset(seed)
    for action in actions:
        if adapter.done:
            break
        readings += adapter.step(action)
    return readings


@pytest.fixture(scope="module")
def cheetah() -> GymAdapter:
    adapter = GymAdapter(load_adapter_config(REPO / "configs" / "halfcheetah.yaml"))
    yield adapter
    adapter.close()


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_each_preset_yields_readings_that_pass_the_oni_codec(preset):
    config = load_adapter_config(REPO / "configs" / f"{preset}.yaml")
    adapter = GymAdapter(config)
    dim, action_dim = PRESETS[preset]
    assert (adapter.observation_dim, adapter.action_dim, adapter.action_repeat) == (dim, action_dim, 1)
    assert adapter.control_dt_s == pytest.approx(1.0 / config.control_hz)
    readings = _episode(adapter, 1, 30)
    assert readings[0].topic == OBSERVATION_TOPIC and readings[0].stamp_ns == 0
    observations = [r for r in readings if r.topic == OBSERVATION_TOPIC]
    assert [r.stamp_ns for r in observations] == [k * adapter.env_dt_ns for k in range(len(observations))]
    assert [r.data["episode_step"] for r in observations] == list(range(len(observations)))
    # Each action is stamped when it takes effect: at the observation before the one it leads to.
    for action, after in zip(readings[1::2], readings[2::2]):
        assert action.topic == ACTION_TOPIC and after.stamp_ns == action.stamp_ns + adapter.env_dt_ns
    for seq, reading in enumerate(readings):
        assert reading.frame_id == config.env_id
        decoded = unpack(pack(_message(reading, seq).header, reading.data), reading.topic)  # validates the schema
        assert decoded.data.keys() == reading.data.keys()
        for key, value in reading.data.items():
            assert np.array_equal(decoded.data[key], value)
            assert np.asarray(decoded.data[key]).dtype == np.asarray(value).dtype
    vector = observations[1].data["observation"]
    assert vector.shape == (dim,) and vector.dtype == np.float32
    truth = adapter.ground_truth()
    assert truth.stamp_ns == observations[-1].stamp_ns and truth.episode_step == len(observations) - 1
    model = adapter.env.unwrapped.model
    assert truth.qpos.shape == (model.nq,) and truth.qvel.shape == (model.nv,)
    assert truth.episode_return == pytest.approx(sum(r.data["reward"] for r in observations))
    adapter.close()


def test_readings_round_trip_through_an_mcap_log(cheetah, tmp_path):
    readings = _episode(cheetah, 2, 10)
    path = tmp_path / "cheetah.mcap"
    with LogWriter(path, {"episode": {"env_id": cheetah.frame_id, "seed": "2"}}) as writer:
        for seq, reading in enumerate(readings):
            assert writer.write(_message(reading, seq), log_time_ns=reading.stamp_ns)
    back = list(LogReader(path).messages())
    assert [m.topic for m in back] == [r.topic for r in readings]
    pairs = [(m, r) for m, r in zip(back, readings) if r.topic == OBSERVATION_TOPIC]
    assert all(np.array_equal(m.data["observation"], r.data["observation"]) for m, r in pairs)


def test_same_seed_same_data_different_seed_different_data(cheetah):
    first = _episode(cheetah, 5, 20)
    first_truth = cheetah.ground_truth()
    assert _episode(cheetah, 5, 20) == first
    assert np.array_equal(cheetah.ground_truth().qpos, first_truth.qpos)
    assert _episode(cheetah, 6, 20) != first
    # Unseeded resets follow the construction seed, as RobotSim's do.
    a, b = GymAdapter("HalfCheetah-v5", seed=3), GymAdapter("HalfCheetah-v5", seed=3)
    assert a.reset() == b.reset() and a.reset() == b.reset()
    assert (a.ground_truth().episode_seed, b.ground_truth().episode_seed) != (3, 3)


def test_bad_actions_are_clipped_or_rejected_counted_and_never_reach_mujoco(cheetah):
    cheetah.reset(0)
    ctrl = cheetah.env.unwrapped.data.ctrl
    ok = cheetah.set_action(np.full(6, 0.5))
    assert (ok.data["clipped"], ok.data["rejected"]) == (False, False)
    cheetah.advance(cheetah.env_dt_s)
    assert np.allclose(ctrl, 0.5)
    for bad in (np.array([np.nan, 0, 0, 0, 0, 0]), [np.inf] * 6, np.zeros(5), "fast", None, [[0.1] * 6], 0.3):
        reading = cheetah.set_action(bad)
        assert reading.data["rejected"] and np.array_equal(reading.data["action"], np.zeros(6, np.float32))
        cheetah.advance(cheetah.env_dt_s)
        assert np.isfinite(ctrl).all() and np.array_equal(ctrl, np.zeros(6))
    high = cheetah.set_action([3.0, -3.0, 0.2, 0.0, 1.0, -1.0])
    assert high.data["clipped"] and np.array_equal(high.data["action"], np.array([1, -1, 0.2, 0, 1, -1], np.float32))
    stats = cheetah.stats
    assert (stats.actions, stats.rejected_actions, stats.clipped_actions) == (9, 7, 1)
    assert stats.readings == {OBSERVATION_TOPIC: 9, ACTION_TOPIC: 9}


def test_a_lower_control_rate_repeats_each_action():
    adapter = GymAdapter(GymAdapterConfig("HalfCheetah-v5", control_hz=10.0))
    assert adapter.action_repeat == 2 and adapter.control_dt_s == pytest.approx(0.1)
    adapter.reset(0)
    readings = adapter.step(np.zeros(6))
    assert [r.topic for r in readings] == [ACTION_TOPIC, OBSERVATION_TOPIC, OBSERVATION_TOPIC]
    assert [r.stamp_ns for r in readings] == [0, 50_000_000, 100_000_000]
    with pytest.raises(DescriptionError, match="dt_s"):
        adapter.advance(0.07)
    with pytest.raises(DescriptionError, match=r"gym\.control_hz"):
        GymAdapter(GymAdapterConfig("HalfCheetah-v5", control_hz=15.0))


def test_an_episode_ends_at_its_time_limit_and_needs_a_reset():
    adapter = GymAdapter(GymAdapterConfig("Hopper-v5", max_episode_steps=5))
    with pytest.raises(RuntimeError, match="reset"):
        adapter.step(np.zeros(3))
    adapter.reset(0)
    flags = [adapter.step(np.zeros(3))[-1].data["truncated"] for _ in range(5)]
    assert flags == [False] * 4 + [True] and adapter.done
    with pytest.raises(RuntimeError, match="reset"):
        adapter.step(np.zeros(3))
    with pytest.raises(RuntimeError, match="reset"):
        adapter.advance(adapter.env_dt_s)
    assert adapter.reset(0)[0].data["episode_step"] == 0 and not adapter.done


def test_config_errors_name_the_field():
    with pytest.raises(DescriptionError, match=r"gym\.frame_skip.*unknown field"):
        adapter_config_from_dict({"gym": {"env_id": "Hopper-v5", "frame_skip": 2}})
    with pytest.raises(DescriptionError, match=r"gym\.env_id.*required"):
        adapter_config_from_dict({"gym": {"seed": 1}})
    with pytest.raises(DescriptionError, match="'gym' section"):
        adapter_config_from_dict({"robot": "turtlebot4"})
    with pytest.raises(DescriptionError, match=r"gym\.max_episode_steps"):
        adapter_config_from_dict({"gym": {"env_id": "Hopper-v5", "max_episode_steps": 0}})
    with pytest.raises(DescriptionError, match="Box"):
        GymAdapter("CartPole-v1")  # a Discrete action space
    # env_kwargs reach gymnasium.make.
    adapter = GymAdapter(adapter_config_from_dict({"gym": {"env_id": "Hopper-v5", "env_kwargs": {"frame_skip": 2}}}))
    assert adapter.env_dt_ns == 4_000_000
