"""Data collection: the real ``oniwm collect`` command writes logs that the plain ``mcap`` package reads, with
one channel per topic, the expected message counts and metadata; the same seed gives the same data, in a
worker process or not; a rerun resumes; a failing episode is recorded and the others go on."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mcap.reader import make_reader

from oni.codec import unpack
from oni.schema import SchemaRegistry
from robots.description import DescriptionError
from sim.config import sim_config_from_dict
from train.collect import (
    MANIFEST,
    CollectConfig,
    EpisodeJob,
    collect,
    collect_config_from_dict,
    config_hash,
    episode_path,
    run_episode,
)

REPO = Path(__file__).resolve().parents[2]
PRESET = REPO / "configs" / "hallway.yaml"
ONIWM = [sys.executable, "-m", "worldmodel.cli"]
SENSOR_RATES = {"sensor.lidar": 10, "sensor.imu": 200, "sensor.odom": 50, "sensor.depth": 15}
DURATION_S = 3.0


def load_preset(**collect_overrides):
    raw = yaml.safe_load(PRESET.read_text())
    return sim_config_from_dict(raw, PRESET.parent), collect_config_from_dict({**raw["collect"], **collect_overrides})


def read_log(path: Path) -> dict:
    """Everything in a log, read with the plain mcap package: channels by topic, schemas, message counts per
    topic from the summary, the metadata records, and the messages as (topic, log_time, publish_time,
    sequence, data)."""
    with open(path, "rb") as f:
        reader = make_reader(f)
        summary = reader.get_summary()
        metadata = {m.name: dict(m.metadata) for m in reader.iter_metadata()}
        messages = [(c.topic, m.log_time, m.publish_time, m.sequence, m.data) for _, c, m in reader.iter_messages()]
    channels = {c.topic: c for c in summary.channels.values()}
    counts = {summary.channels[cid].topic: n for cid, n in summary.statistics.channel_message_counts.items()}
    return {"channels": channels, "schemas": summary.schemas, "counts": counts, "metadata": metadata,
            "messages": messages}


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("collect")
    result = subprocess.run(
        [*ONIWM, "collect", "--config", str(PRESET), "--episodes", "2", "--workers", "2", "--out", str(out),
         "--max-duration", str(DURATION_S), "--policy", "mixture"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    return out, json.loads(result.stdout), result.stderr


def test_cli_writes_one_log_per_episode_and_a_manifest(cli_run):
    out, summary, stderr = cli_run
    assert sorted(p.name for p in out.iterdir()) == ["episode_00000.mcap", "episode_00001.mcap", MANIFEST]
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["format"] == "oniwm.collect/1"
    assert [e["seed"] for e in manifest["episodes"]] == [0, 1]  # the preset's world.seed is 0
    assert all(e["status"] == "ok" and e["sim_s"] == DURATION_S for e in manifest["episodes"])
    assert manifest["summary"] == summary
    assert summary["episodes"] == 2 and summary["failed"] == 0 and summary["workers"] == 2
    assert summary["sim_s_per_wall_s"] > 0 and summary["per_core_sim_s_per_wall_s"] > 0
    assert len(summary["per_worker"]) in (1, 2)  # a fast worker may take both episodes
    assert summary["bytes"] == sum((out / e["file"]).stat().st_size for e in manifest["episodes"])
    assert manifest["policy"]["name"] == "mixture"
    assert "sim s per wall s" in stderr


def test_logs_hold_every_topic_at_its_rate_with_schemas_and_metadata(cli_run):
    out, _, _ = cli_run
    registry = SchemaRegistry.default()
    for index in range(2):
        log = read_log(episode_path(out, index))
        types = {**{t: t for t in SENSOR_RATES}, "actuator.cmd": "actuator.cmd", "sim.ground_truth": "sim.ground_truth"}
        assert set(log["channels"]) == set(types)  # one channel per topic
        for topic, channel in log["channels"].items():
            assert channel.message_encoding == "oni.msgpack"
            schema = log["schemas"][channel.schema_id]
            assert schema.name == types[topic] and schema.encoding == "jsonschema"
            assert channel.metadata["oni.source"] == "sim"
            assert channel.metadata["oni.schema_version"] == registry.latest(types[topic]).version
        # Readings at t = 0 and every period up to and including the end; commands for each period in between.
        expected = {t: int(rate * DURATION_S) + 1 for t, rate in SENSOR_RATES.items()}
        expected["actuator.cmd"] = int(50 * DURATION_S)
        expected["sim.ground_truth"] = int(50 * DURATION_S) + 1
        assert log["counts"] == expected
        assert {"oni", "collect", "world", "robot", "sim", "episode"} <= set(log["metadata"])
        episode = log["metadata"]["episode"]
        assert episode["seed"] == str(index) and float(episode["duration_s"]) == DURATION_S
        assert episode["end_reason"] == "time" and episode["policy"] == "mixture"
        assert json.loads(episode["policy_episode"])["segments"]
        assert log["metadata"]["world"]["seed"] == str(index)
        assert json.loads(log["metadata"]["world"]["goal_xy_m"])
        assert "turtlebot4" in log["metadata"]["robot"]["description_yaml"]


def test_messages_decode_with_full_headers(cli_run):
    out, _, _ = cli_run
    log = read_log(episode_path(out, 0))
    seqs: dict[str, list[int]] = {}
    reading_traces: set[str] = set()
    for topic, log_time, publish_time, sequence, data in log["messages"]:
        msg = unpack(data, topic)  # validates against the schema, as any ONI receiver would
        h = msg.header
        assert h.source == "sim" and h.stamp_ns == h.pub_ns == log_time == publish_time
        assert h.seq == sequence
        seqs.setdefault(topic, []).append(h.seq)
        if topic == "actuator.cmd":
            assert h.trace_id in reading_traces  # carried from the newest reading the policy saw
            assert abs(msg.data["v_mps"]) <= 0.46 and abs(msg.data["omega_radps"]) <= 1.9
        elif topic != "sim.ground_truth":
            reading_traces.add(h.trace_id)
    assert all(s == list(range(len(s))) for s in seqs.values())
    assert len(reading_traces) == sum(len(seqs[t]) for t in SENSOR_RATES)  # a fresh trace id per reading
    times = [m[1] for m in log["messages"]]
    assert times == sorted(times)  # written in time order


def test_same_seed_same_data_in_a_worker_or_in_process(cli_run, tmp_path):
    out, _, _ = cli_run
    manifest = json.loads((out / MANIFEST).read_text())
    sim, cfg = load_preset(max_duration_s=DURATION_S, policy="mixture")
    robot_yaml = sim.robot_path.read_text()
    assert manifest["config_hash"] == config_hash(sim, cfg, robot_yaml)
    again = tmp_path / "again.mcap"
    entry = run_episode(EpisodeJob(0, 0, str(again), sim, cfg, manifest["config_hash"]))
    first, second = read_log(episode_path(out, 0)), read_log(again)
    assert second["messages"] == first["messages"]  # topic, times, sequence and packed bytes, all of them
    del first["metadata"]["oni"], second["metadata"]["oni"]  # the log's own record: its created_ns differs
    assert second["metadata"] == first["metadata"]
    assert entry["messages"] == first["counts"]
    other = read_log(episode_path(out, 1))
    def truth(log: dict) -> list[bytes]:
        return [m[4] for m in log["messages"] if m[0] == "sim.ground_truth"]

    assert truth(other) != truth(first)


def test_rerun_resumes_complete_episodes_and_redoes_broken_ones(tmp_path):
    sim, cfg = load_preset(max_duration_s=1.0, policy="ou")
    first = collect(sim, cfg, tmp_path, episodes=2)
    assert first["summary"]["episodes"] == 2 and first["summary"]["resumed"] == 0
    grown = collect(sim, cfg, tmp_path, episodes=3)
    assert grown["summary"]["resumed"] == 2 and grown["summary"]["episodes"] == 3
    assert grown["episodes"][0]["messages"] == first["episodes"][0]["messages"]
    broken = episode_path(tmp_path, 1)
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])  # a crashed writer's log
    redone = collect(sim, cfg, tmp_path, episodes=3)
    assert redone["summary"]["resumed"] == 2
    assert not redone["episodes"][1].get("resumed") and redone["episodes"][1]["status"] == "ok"
    with pytest.raises(FileExistsError, match="another configuration"):
        collect(sim, dataclasses.replace(cfg, max_duration_s=2.0), tmp_path, episodes=1)
    fresh = collect(sim, dataclasses.replace(cfg, max_duration_s=2.0), tmp_path, episodes=1, overwrite=True)
    assert fresh["summary"]["resumed"] == 0 and not episode_path(tmp_path, 1).exists()


def test_a_failing_episode_is_recorded_and_the_rest_go_on(tmp_path):
    sim, cfg = load_preset(max_duration_s=0.5, policy="ou")
    narrow = dataclasses.replace(sim.world, width_min_m=0.3, width_max_m=0.3)  # too narrow for the robot
    manifest = collect(dataclasses.replace(sim, world=narrow), cfg, tmp_path, episodes=2)
    assert manifest["summary"]["failed"] == 2 and manifest["summary"]["episodes"] == 0
    assert all("ImpossibleWorld" in e["error"] for e in manifest["episodes"])
    assert json.loads((tmp_path / MANIFEST).read_text())["summary"]["failed"] == 2


def test_config_errors_name_the_field():
    with pytest.raises(DescriptionError, match="ground_truth_hz"):
        CollectConfig(control_hz=50.0, ground_truth_hz=20.0)
    with pytest.raises(DescriptionError, match=r"policies\.gap\.margin_m"):
        collect_config_from_dict({"policies": {"gap": {"margin_m": "wide"}}})
    with pytest.raises(DescriptionError, match=r"collect\.polcy"):
        collect_config_from_dict({"polcy": "gap"})
    sim, cfg = load_preset(control_hz=70.0, ground_truth_hz=10.0)
    with pytest.raises(DescriptionError, match="control_hz"):
        collect(sim, cfg, "/nonexistent-never-created", episodes=1)


def test_cli_rejects_a_bad_config(tmp_path):
    bad = tmp_path / "bad.yaml"
    raw = yaml.safe_load(PRESET.read_text())
    raw["robot"] = str(REPO / "robots" / "turtlebot4" / "robot.yaml")
    raw["collect"]["control_hz"] = -5
    bad.write_text(yaml.safe_dump(raw))
    result = subprocess.run([*ONIWM, "collect", "--config", str(bad), "--out", str(tmp_path / "o")],
                            capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 2
    assert "control_hz" in result.stderr
