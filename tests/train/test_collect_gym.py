"""Collection from a gymnasium MuJoCo env: the real ``oniwm collect`` command on a gym preset writes one log per
episode that the plain ``mcap`` package reads (channels ``env.observation`` and ``env.action``, the expected
counts, headers and metadata), the dataset builder turns into obs/action arrays, and the same seed reproduces
in a worker process or not; a rerun resumes."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mcap.reader import make_reader

pytest.importorskip("gymnasium")

from oni.codec import unpack
from oni.schema import SchemaRegistry
from robots.description import DescriptionError
from sim.gym_adapter import load_adapter_config
from train.collect import (
    MANIFEST,
    collect_gym,
    episode_path,
    gym_collect_config_from_dict,
)
from train.dataset import build_episode
from train.policies import ActionNoiseParams, ActionNoisePolicy

REPO = Path(__file__).resolve().parents[2]
HOPPER = REPO / "configs" / "hopper.yaml"
ONIWM = [sys.executable, "-m", "worldmodel.cli"]
MAX_STEPS = 40
TOPICS = {"env.observation", "env.action"}


def read_log(path: Path) -> tuple[dict[str, list[tuple[int, bytes]]], dict[str, dict[str, str]], list[str]]:
    """Messages per topic as (log_time, raw bytes), metadata records by name, and their names in file order."""
    messages: dict[str, list[tuple[int, bytes]]] = {}
    with open(path, "rb") as f:
        reader = make_reader(f)
        for _, channel, message in reader.iter_messages(log_time_order=False):
            messages.setdefault(channel.topic, []).append((message.log_time, message.data))
        f.seek(0)
        records = list(make_reader(f).iter_metadata())
    return messages, {r.name: dict(r.metadata) for r in records}, [r.name for r in records]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    out = tmp_path_factory.mktemp("hopper")
    cmd = [*ONIWM, "collect", "--config", str(HOPPER), "--episodes", "2", "--workers", "2", "--seed", "5",
           "--max-steps", str(MAX_STEPS), "--out", str(out), "--no-progress"]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    return out, result


def test_cli_writes_gym_logs(cli_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, result = cli_run
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["episodes"] == 2 and summary["failed"] == 0 and summary["workers"] == 2
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["base_seed"] == 5
    assert manifest["config"]["gym"]["env_id"] == "Hopper-v5"
    assert manifest["config"]["gym"]["max_episode_steps"] == MAX_STEPS
    assert manifest["policy"]["name"] == "ou"
    registry = SchemaRegistry.default()
    for entry in manifest["episodes"]:
        messages, metadata, names = read_log(out / entry["file"])
        assert set(messages) == TOPICS
        steps = entry["steps"]
        assert 1 <= steps <= MAX_STEPS
        assert len(messages["env.observation"]) == steps + 1  # one at reset, one per env step
        assert len(messages["env.action"]) == steps  # Hopper's control rate is its env rate: no action repeat
        assert entry["messages"] == {t: len(m) for t, m in messages.items()}
        assert {"collect", "gym", "episode"} <= set(names) and names.index("episode") > names.index("gym")
        episode = metadata["episode"]
        assert episode["seed"] == str(entry["seed"]) and int(episode["steps"]) == steps
        assert episode["end_reason"] == entry["end_reason"] == ("truncated" if steps == MAX_STEPS else "terminated")
        assert metadata["gym"]["env_id"] == "Hopper-v5" and float(metadata["gym"]["control_hz"]) == 125.0
        # Headers: seq per topic, stamp = pub = log time on the sim clock, source, trace ids; an action carries
        # the trace id of the observation it followed.
        decoded = {t: [unpack(data, t, registry) for _, data in m] for t, m in messages.items()}
        for topic, msgs in decoded.items():
            assert [m.header.seq for m in msgs] == list(range(len(msgs)))
            assert all(m.header.source == "sim" and m.header.stamp_ns == m.header.pub_ns for m in msgs)
            assert [m.header.stamp_ns for m in msgs] == [t for t, _ in messages[topic]]
        obs, actions = decoded["env.observation"], decoded["env.action"]
        assert obs[0].header.stamp_ns == 0 and obs[-1].header.stamp_ns == steps * 8_000_000  # dt = 8 ms
        assert [a.header.trace_id for a in actions] == [o.header.trace_id for o in obs[:-1]]
        assert len({o.header.trace_id for o in obs}) == len(obs)
        last = obs[-1].data
        assert bool(last["terminated"]) == (entry["end_reason"] == "terminated")


def test_logs_build_into_arrays(cli_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, _ = cli_run
    for entry in json.loads((out / MANIFEST).read_text())["episodes"]:
        episode = build_episode(out / entry["file"])
        ticks = entry["steps"] + 1
        assert episode["obs"].shape == (ticks, 11)
        assert episode["action"].shape == (ticks, 3)
        assert np.all(np.abs(episode["action"][:-1]) <= 1.0) and np.abs(episode["action"][:-1]).max() > 0.05
        assert episode["done"][-1] == (entry["end_reason"] == "terminated")


def test_same_seed_same_data_and_resume(cli_run: tuple[Path, subprocess.CompletedProcess[str]],
                                        tmp_path: Path) -> None:
    out, _ = cli_run
    gym = dataclasses.replace(load_adapter_config(HOPPER), max_episode_steps=MAX_STEPS)
    cfg = gym_collect_config_from_dict({"policy": "ou"})
    manifest = collect_gym(gym, cfg, tmp_path, episodes=2, base_seed=5, workers=1)
    assert manifest["config_hash"] == json.loads((out / MANIFEST).read_text())["config_hash"]
    for index in range(2):
        ours, _, _ = read_log(episode_path(tmp_path, index))
        theirs, _, _ = read_log(episode_path(out, index))
        assert ours == theirs  # byte for byte, in a worker process or not
    other = collect_gym(gym, cfg, tmp_path / "other", episodes=1, base_seed=6, workers=1)
    assert read_log(tmp_path / "other" / other["episodes"][0]["file"])[0] != read_log(episode_path(tmp_path, 0))[0]
    again = collect_gym(gym, cfg, tmp_path, episodes=2, base_seed=5, workers=1)
    assert again["summary"]["resumed"] == 2
    assert [e["steps"] for e in again["episodes"]] == [e["steps"] for e in manifest["episodes"]]


def test_never_terminating_env_truncates(tmp_path: Path) -> None:
    gym = dataclasses.replace(load_adapter_config(REPO / "configs" / "halfcheetah.yaml"), max_episode_steps=25)
    manifest = collect_gym(gym, gym_collect_config_from_dict({"policy": "pink"}), tmp_path, episodes=1)
    entry = manifest["episodes"][0]
    assert entry["end_reason"] == "truncated" and entry["steps"] == 25
    assert entry["messages"] == {"env.action": 25, "env.observation": 26}
    episode = build_episode(tmp_path / entry["file"])
    assert episode["obs"].shape == (26, 17) and episode["action"].shape == (26, 6)
    assert episode["truncated"][-1] == 1 and episode["done"].sum() == 0


def test_bad_gym_options_exit_2(tmp_path: Path) -> None:
    cmd = [*ONIWM, "collect", "--config", str(HOPPER), "--max-duration", "3", "--out", str(tmp_path), "--no-progress"]
    assert subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60, check=False).returncode == 2
    with pytest.raises(DescriptionError, match="noise.std_frac"):
        gym_collect_config_from_dict({"noise": {"std_frac": -1}})


def test_action_noise_policy_is_smooth_seeded_and_in_the_box() -> None:
    low, high = np.array([-1.0, 0.0, -0.4]), np.array([1.0, 2.0, 0.4])
    policy = ActionNoisePolicy("ou", low, high, 50.0, ActionNoiseParams(time_constant_s=0.5, std_frac=0.5))

    def run(seed: int) -> np.ndarray:
        policy.reset(seed)
        return np.array([policy() for _ in range(2000)])

    actions = run(3)
    assert np.array_equal(actions, run(3)) and not np.array_equal(actions, run(4))
    assert np.all(actions >= low) and np.all(actions <= high)
    centred = actions - actions.mean(0)
    lag1 = (centred[1:] * centred[:-1]).sum(0) / (centred**2).sum(0)
    assert np.all(lag1 > 0.9)  # exp(-0.02 / 0.5) = 0.96: smooth, not white
    assert np.allclose(actions.mean(0), (low + high) / 2, atol=0.15 * (high - low))
