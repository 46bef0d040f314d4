"""The dataset builder on real MCAP files: a simulated episode and hand-made logs aligned onto the tick grid, gaps and
missing topics, rejected messages, corrupt logs, the cache, splits by seed, statistics, message dropout, gym
adapter logs and the torch sequence dataset."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from oni.mcap_log import LogWriter
from oni.message import Header, Message
from robots import robot_path
from robots.description import load_robot, robot_from_dict
from robots.model_spec import observation_spec
from train.dataset import (
    DatasetConfig,
    EpisodeError,
    SequenceDataset,
    build_dataset,
    build_episode,
    dataset_config_from_dict,
    load_episode,
    load_report,
    load_stats,
    main,
    split_of,
)

NS = 1_000_000_000
MS = 1_000_000
REPO = Path(__file__).resolve().parents[2]


def _small_robot_yaml() -> str:
    """The TurtleBot 4 description with an 8-beam LiDAR and an 8 x 8 depth camera: small logs, same rates."""
    doc = yaml.safe_load(robot_path("turtlebot4").read_text())
    for sensor in doc["robot"]["sensors"]:
        if sensor["kind"] == "lidar":
            sensor["params"]["beams"] = 8
        if sensor["kind"] == "depth":
            sensor["params"].update(width=8, height=8)
    return yaml.safe_dump(doc)


ROBOT_YAML = _small_robot_yaml()
SPEC = observation_spec(robot_from_dict(yaml.safe_load(ROBOT_YAML)["robot"]), 50.0)


def _data(topic: str, t_s: float, lidar_m: float) -> dict[str, Any]:
    """A valid data map of ``topic`` for a robot driving straight along x at 0.2 m/s."""
    if topic == "sensor.lidar":
        return {"ranges_m": np.full(8, lidar_m, np.float32), "angle_min_rad": -math.pi,
                "angle_increment_rad": math.pi / 4, "range_min_m": 0.1, "range_max_m": 12.0}
    if topic == "sensor.depth":
        return {"depth": np.full((8, 8), 2.0, np.float32), "depth_scale_m": 1.0, "fx": 6.0, "fy": 6.0, "cx": 3.5, "cy": 3.5}
    if topic == "sensor.imu":
        return {"accel_mps2": np.array([0.1, 0.0, 9.81], np.float32), "gyro_radps": np.zeros(3, np.float32)}
    if topic == "sensor.odom":
        return {"x_m": 0.2 * t_s, "y_m": 0.0, "yaw_rad": 0.0, "v_mps": 0.2, "omega_radps": 0.0}
    if topic == "actuator.cmd":
        return {"v_mps": 0.2, "omega_radps": 0.1 * math.sin(t_s)}
    return {"x_m": 1.0 + 0.2 * t_s, "y_m": 2.0, "yaw_rad": 0.0, "v_mps": 0.2, "omega_radps": 0.0,
            "in_collision": False, "collisions": 0}


RATES = {"sensor.lidar": 10, "sensor.depth": 15, "sensor.imu": 200, "sensor.odom": 50, "actuator.cmd": 50,
         "sim.ground_truth": 50}


def _messages(duration_s: float, *, skip: tuple[str, ...] = (), gap_s: tuple[float, float] | None = None,
              lidar_m: float = 1.0) -> list[tuple[str, int, dict[str, Any]]]:
    """Messages of a synthetic episode, in stamp order: each topic at its rate from t = 0 (stamps k * 1e9 // rate);
    ``skip``: topics left out; ``gap_s``: sensors silent in [start, end)."""
    out = []
    for topic, rate in RATES.items():
        if topic in skip:
            continue
        for k in range(int(duration_s * rate) + 1):
            stamp = k * NS // rate
            t = stamp / NS
            if gap_s and topic.startswith("sensor.") and gap_s[0] <= t < gap_s[1]:
                continue
            out.append((topic, stamp, _data(topic, t, lidar_m)))
    out.sort(key=lambda m: m[1])
    return out


def _write(path: Path, messages: list[tuple[str, int, dict[str, Any]]], seed: int | None = 0, *,
           chunk_bytes: int = 1 << 20, validate: bool = True, robot_yaml: str = ROBOT_YAML) -> Path:
    metadata = {"robot": {"name": "testbot", "description_yaml": robot_yaml}}
    if seed is not None:
        metadata["episode"] = {"seed": str(seed), "world_seed": str(seed), "control_hz": "50.0", "policy": "test"}
        metadata["world"] = {"seed": str(seed), "kind": "test"}
    with LogWriter(path, metadata, chunk_bytes=chunk_bytes, validate=validate, overwrite=True) as writer:
        for seq, (topic, stamp, data) in enumerate(messages):
            header = Header(topic, "1.0", seq, "test", stamp, stamp, "test_frame", "0" * 32)
            writer.write(Message(topic, header, data), log_time_ns=stamp)
    return path


# ------------------------------------------------------------------------------------------------------------------
# Alignment.


def test_spec_from_the_robot_description():
    spec = observation_spec(load_robot(robot_path("turtlebot4")), 50.0)
    assert (spec.lidar_beams, spec.depth_height, spec.depth_width, spec.imu_samples, spec.odom) == (360, 48, 64, 4, True)
    assert spec.topics["action"] == "actuator.cmd"
    assert observation_spec(load_robot(robot_path("turtlebot4")), 30.0).imu_samples == 7


def test_simulated_episode_aligns_onto_the_tick_grid(tmp_path):
    from sim.config import SimSettings
    from sim.hallway import HallwayParams, generate_hallway
    from sim.robot_sim import RobotSim

    robot = load_robot(robot_path("turtlebot4"))
    world = generate_hallway(HallwayParams(seed=5), robot.base.radius_m)
    sim = RobotSim(robot, world, SimSettings(sensor_noise=False), seed=5)
    path = tmp_path / "sim.mcap"
    metadata = {"robot": {"name": robot.name, "description_yaml": robot_path("turtlebot4").read_text()},
                "episode": {"seed": "5", "world_seed": "5", "control_hz": "50.0", "policy": "sine"}}
    seqs: dict[str, int] = {}
    commands, truth, lidar, odom = [], [], {}, []

    def put(writer: LogWriter, topic: str, stamp: int, data: dict[str, Any]) -> None:
        seqs[topic] = seqs.get(topic, -1) + 1
        header = Header(topic, "1.0", seqs[topic], "sim", stamp, stamp, "f", "0" * 32)
        writer.write(Message(topic, header, data), log_time_ns=stamp)

    readings = sim.reset()
    with LogWriter(path, metadata) as writer:
        for tick in range(101):
            t = sim.sim_time_ns
            for r in readings:
                put(writer, r.topic, r.stamp_ns, r.data)
                if r.topic == "sensor.lidar":
                    lidar[r.stamp_ns] = r.data["ranges_m"]
                if r.topic == "sensor.odom":
                    odom.append(r.data)
            gt = sim.ground_truth()
            truth.append((gt.x_m, gt.y_m, gt.yaw_rad))
            put(writer, "sim.ground_truth", gt.stamp_ns, {
                "x_m": gt.x_m, "y_m": gt.y_m, "yaw_rad": gt.yaw_rad, "v_mps": gt.v_mps, "omega_radps": gt.omega_radps,
                "in_collision": gt.in_collision, "collisions": gt.collisions})
            if tick == 100:
                break
            command = (0.3, 0.8 * math.sin(tick / 8))
            commands.append(command)
            put(writer, "actuator.cmd", t, {"v_mps": command[0], "omega_radps": command[1]})
            sim.set_command(*command)
            readings = sim.advance(0.02)

    ep = build_episode(path)
    assert len(ep) == 101 and ep.meta["control_hz"] == 50.0 and ep.meta["seed"] == 5
    assert ep.meta["robot"] == "turtlebot4" and ep.meta["policy"] == "sine" and ep.meta["duration_s"] == pytest.approx(2.0)
    assert np.allclose(ep["dt"], 0.02) and ep["valid"].all()
    assert ep["lidar"].shape == (101, 360) and ep["depth"].shape == (101, 48, 64) and ep["imu"].shape == (101, 4, 6)
    assert np.flatnonzero(ep["lidar_mask"]).tolist() == list(range(0, 101, 5))  # 10 Hz on a 50 Hz grid
    assert ep["depth_mask"].sum() == 31  # 15 Hz over 2 s, t = 0 included
    assert ep["imu_mask"][0].tolist() == [1, 0, 0, 0] and ep["imu_mask"][1:].all()
    assert ep["odom_mask"].all() and ep["pose_mask"].all()
    # Held values and their ages: tick k holds the scan of tick 5 * (k // 5), 0.02 * (k % 5) s old.
    lidar_ticks = ep["lidar"]
    for k in (0, 7, 53, 100):
        assert np.array_equal(lidar_ticks[k], lidar[(k // 5) * 5 * 20 * MS])
        assert ep["lidar_age"][k] == pytest.approx(0.02 * (k % 5), abs=1e-6)
    # The action at tick t is the command sent at t; the last tick holds the last command.
    assert np.allclose(ep["action"][:100], np.array(commands, np.float32))
    assert np.allclose(ep["action"][100], commands[-1])
    assert np.allclose(ep["pose"], np.array(truth, np.float32), atol=1e-6)
    # Composing the odometry deltas, each in the previous robot frame, gives back the odometry pose.
    x = y = yaw = 0.0
    for dx, dy, dyaw in ep["odom"][:, 2:].astype(np.float64):
        x, y = x + math.cos(yaw) * dx - math.sin(yaw) * dy, y + math.sin(yaw) * dx + math.cos(yaw) * dy
        yaw += dyaw
    last = odom[-1]
    assert (x, y) == pytest.approx((last["x_m"], last["y_m"]), abs=1e-4)
    assert (yaw + math.pi) % (2 * math.pi) - math.pi == pytest.approx(last["yaw_rad"], abs=1e-4)
    assert abs(x) > 0.3  # it really moved


def test_missing_topic_and_gaps_give_masks_and_ages(tmp_path):
    path = _write(tmp_path / "gappy.mcap", _messages(3.0, skip=("sensor.depth",), gap_s=(1.0, 1.6)))
    ep = build_episode(path, max_age_s=0.3)
    assert len(ep) == 151
    assert not ep["depth_mask"].any() and np.all(ep["depth_age"] == np.float32(0.3)) and not ep["depth"].any()
    gap = slice(51, 80)  # ticks at 1.02 ... 1.58 s: their windows (t - 0.02, t] lie inside the gap
    assert not ep["imu_mask"][gap].any() and not ep["odom_mask"][gap].any() and not ep["lidar_mask"][gap].any()
    assert ep["imu_mask"][50].tolist() == [1, 1, 1, 0]  # (0.98, 1.00] s: the sample at 1.00 s is in the gap
    # The scan of 0.9 s is held through the gap, aging until the clip.
    assert np.all(ep["lidar"][gap] == 1.0)
    assert ep["lidar_mask"][50] == 0 and ep["lidar_age"][50] == pytest.approx(0.1) and ep["lidar_age"][79] == pytest.approx(0.3)
    # The first odometry after the gap carries the motion across it: 0.2 m/s from 0.98 s to 1.6 s.
    assert ep["odom_mask"][80] == 1 and ep["odom"][80, 2] == pytest.approx(0.2 * 0.62, abs=1e-5)
    assert ep["odom"][gap, 2:].sum() == 0 and np.allclose(ep["odom"][gap, 0], 0.2)  # velocity held
    assert ep["action"].any()  # commands never stopped


def test_rejected_messages_are_counted_and_never_stored(tmp_path):
    messages = _messages(1.0)
    bad_shape = {**_data("sensor.lidar", 0.5, 1.0), "ranges_m": np.full(7, 3.0, np.float32)}
    nan = {**_data("sensor.lidar", 0.3, 1.0), "ranges_m": np.full(8, np.nan, np.float32)}
    messages = [m for m in messages if not (m[0] == "sensor.lidar" and m[1] in (300 * MS, 500 * MS))]
    messages += [("sensor.lidar", 300 * MS, nan), ("sensor.lidar", 500 * MS, bad_shape)]
    path = _write(tmp_path / "bad.mcap", sorted(messages, key=lambda m: m[1]), validate=False)
    report = build_dataset(tmp_path, tmp_path / "cache", DatasetConfig(eval_fraction=0, val_fraction=0))
    ep = load_episode(tmp_path / "cache" / report["episodes"][0]["cache"])
    assert ep.meta["log"]["rejected"] == {"non_finite": 1}  # the reader's ONI validation drops the NaN scan
    assert ep.meta["assembler"]["lidar"]["malformed"] == 1  # the assembler drops the 7-beam scan
    assert report["episodes"][0]["rejected"]["lidar"]["malformed"] == 1
    assert np.isfinite(ep["lidar"]).all() and not (ep["lidar"] == 3.0).any()
    assert ep["lidar_mask"].sum() == 9 and path.exists()


# ------------------------------------------------------------------------------------------------------------------
# Bad logs.


def _chunk_offsets(path: Path) -> list[tuple[int, int]]:
    """(offset, length) of each chunk record of an MCAP file."""
    data = path.read_bytes()
    pos, out = 8, []
    while pos + 9 <= len(data):
        opcode, length = struct.unpack_from("<BQ", data, pos)
        if opcode == 0x06:
            out.append((pos, length))
        if opcode in (0x0F, 0x02):  # data end, footer
            break
        pos += 9 + length
    return out


def test_corrupt_logs_are_named_and_the_rest_loads(tmp_path, caplog):
    logs = tmp_path / "logs"
    logs.mkdir()
    _write(logs / "a_good.mcap", _messages(2.0), seed=0)
    truncated = _write(logs / "b_truncated.mcap", _messages(2.0), seed=1, chunk_bytes=4096)
    size = truncated.stat().st_size * 6 // 10
    with open(truncated, "r+b") as f:
        f.truncate(size)
    damaged = _write(logs / "c_damaged.mcap", _messages(2.0), seed=2, chunk_bytes=4096)
    chunks = _chunk_offsets(damaged)
    at, length = chunks[len(chunks) // 2]
    raw = bytearray(damaged.read_bytes())
    for i in range(at + length // 2, at + length // 2 + 16):
        raw[i] ^= 0xFF
    damaged.write_bytes(bytes(raw))
    (logs / "d_garbage.mcap").write_bytes(b"this is not an MCAP file at all")
    (logs / "e_empty.mcap").write_bytes(b"")

    report = build_dataset(logs, tmp_path / "cache", DatasetConfig(eval_fraction=0, val_fraction=0))
    status = {e["name"]: e["status"] for e in report["episodes"]}
    assert status == {"a_good.mcap": "ok", "b_truncated.mcap": "partial", "c_damaged.mcap": "partial",
                      "d_garbage.mcap": "skipped", "e_empty.mcap": "skipped"}
    skipped = {Path(s["file"]).name: s["error"] for s in report["skipped"]}
    assert "d_garbage.mcap" in skipped["d_garbage.mcap"] and "not an MCAP file" in skipped["d_garbage.mcap"]
    assert "e_empty.mcap" in skipped["e_empty.mcap"] and "empty file" in skipped["e_empty.mcap"]
    partial = {Path(p["file"]).name: p["warning"] for p in report["partial"]}
    assert "readable up to byte" in partial["b_truncated.mcap"] and f"of {size}" in partial["b_truncated.mcap"]
    assert f"chunk at byte {at}" in partial["c_damaged.mcap"]
    assert any("d_garbage.mcap" in r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    # The readable part of the broken logs loads: fewer ticks than the good one, but some.
    ticks = {e["name"]: e.get("ticks") for e in report["episodes"]}
    assert ticks["a_good.mcap"] == 101 and 10 < ticks["b_truncated.mcap"] < 101 and 10 < ticks["c_damaged.mcap"] < 101
    assert len(SequenceDataset(tmp_path / "cache", seq_len=10, split=None).episodes) == 3
    with pytest.raises(EpisodeError, match="d_garbage.mcap"):
        build_episode(logs / "d_garbage.mcap")


# ------------------------------------------------------------------------------------------------------------------
# Cache, splits, statistics.


def test_cache_is_reused_and_rebuilt_when_the_log_or_parameters_change(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    for seed in range(2):
        _write(logs / f"ep{seed}.mcap", _messages(1.0), seed=seed)
    cache = tmp_path / "cache"
    config = DatasetConfig(eval_fraction=0, val_fraction=0)
    first = build_dataset(logs, cache, config)
    assert (first["built"], first["reused"]) == (2, 0)
    again = build_dataset(logs, cache, config)
    assert (again["built"], again["reused"]) == (0, 2)
    _write(logs / "ep1.mcap", _messages(1.0, lidar_m=4.0), seed=1)  # same size, new content
    changed = build_dataset(logs, cache, config)
    assert (changed["built"], changed["reused"]) == (1, 1)
    entry = next(e for e in changed["episodes"] if e["name"] == "ep1.mcap")
    assert np.all(load_episode(cache / entry["cache"])["lidar"] == 4.0)
    other = build_dataset(logs, cache, DatasetConfig(eval_fraction=0, val_fraction=0, max_age_s=0.5))
    assert (other["built"], other["reused"]) == (2, 0)
    assert len(list((cache / "episodes").glob("*.npz"))) == 4  # one per log and parameter set
    assert not list((cache / "episodes").glob(".*"))  # no temporary files left behind
    assert load_report(cache)["params_key"] == other["params_key"]


def test_split_rule_is_by_seed_stable_and_disjoint():
    config = DatasetConfig(eval_fraction=0.1, val_fraction=0.2)
    splits = {seed: split_of(seed, f"file{seed}.mcap", config) for seed in range(2000)}
    share = {name: sum(1 for s in splits.values() if s == name) / 2000 for name in ("train", "val", "eval")}
    assert share["eval"] == pytest.approx(0.1, abs=0.025) and share["val"] == pytest.approx(0.2, abs=0.03)
    # The file name does not matter when there is a seed: two logs of one world share a split.
    assert all(split_of(seed, "other.mcap", config) == s for seed, s in splits.items())
    explicit = DatasetConfig(eval_seeds=(3, 4), val_seeds=(5,))
    assert [split_of(s, "x", explicit) for s in (3, 4, 5, 6, None)] == ["eval", "eval", "val", "train", "train"]
    with pytest.raises(ValueError, match="one split"):
        DatasetConfig(eval_seeds=(1,), val_seeds=(1,))
    assert dataset_config_from_dict({"eval_seeds": [7]}).eval_seeds == (7,)
    with pytest.raises(ValueError, match="dataset.drop_prob"):
        dataset_config_from_dict({"drop_prob": 1.5})


def test_statistics_come_from_the_train_split_only(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    for seed, value in ((0, 1.0), (1, 2.0), (2, 100.0), (3, 100.0)):
        _write(logs / f"ep{seed}.mcap", _messages(1.0, lidar_m=value), seed=seed)
    report = build_dataset(logs, tmp_path / "cache", DatasetConfig(eval_seeds=(2,), val_seeds=(3,)))
    assert report["splits"]["train"]["seeds"] == [0, 1] and report["splits"]["eval"]["seeds"] == [2]
    assert report["splits"]["val"]["seeds"] == [3] and report["splits"]["train"]["ticks"] == 2 * 51
    stats = load_stats(tmp_path / "cache")
    assert stats.mean["lidar"].tolist() == pytest.approx([1.5]) and stats.std["lidar"].tolist() == pytest.approx([0.5])
    assert stats.mean["imu"].tolist() == pytest.approx([0.1, 0, 9.81, 0, 0, 0], abs=1e-5)
    assert stats.std["imu"].tolist() == pytest.approx([1.0] * 6)  # constant channels: centred, not scaled
    assert stats.mean["depth"].tolist() == pytest.approx([2.0])
    assert stats.count["imu"] == 2 * 201 and stats.count["lidar"] == 2 * 11 * 8
    assert set(stats.mean) == {"lidar", "depth", "imu", "odom", "action"}
    doc = json.loads((tmp_path / "cache" / "stats.json").read_text())
    assert doc["split"] == "train" and doc["stats"]["lidar"]["mean"] == pytest.approx([1.5])


# ------------------------------------------------------------------------------------------------------------------
# Message loss, gym logs, batches.


def test_dropout_drops_sensor_messages_at_about_the_requested_rate(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    _write(logs / "ep.mcap", _messages(10.0))
    clean = build_dataset(logs, tmp_path / "clean", DatasetConfig(eval_fraction=0, val_fraction=0))
    lossy_cfg = DatasetConfig(eval_fraction=0, val_fraction=0, drop_prob=0.25, drop_seed=7)
    lossy = build_dataset(logs, tmp_path / "lossy", lossy_cfg)
    a = load_episode(tmp_path / "clean" / clean["episodes"][0]["cache"])
    b = load_episode(tmp_path / "lossy" / lossy["episodes"][0]["cache"])
    assert np.array_equal(a.ticks_ns, b.ticks_ns)
    for key, tolerance in (("imu_mask", 0.03), ("odom_mask", 0.06), ("lidar_mask", 0.15), ("depth_mask", 0.12)):
        kept = b[key].sum() / a[key].sum()
        assert kept == pytest.approx(0.75, abs=tolerance), key
    assert b.meta["dropped"]["imu"] == a["imu_mask"].sum() - b["imu_mask"].sum()
    assert b["lidar_age"].mean() > a["lidar_age"].mean()
    assert np.array_equal(a["action"], b["action"]) and np.array_equal(a["pose"], b["pose"])
    again = build_episode(logs / "ep.mcap", drop_prob=0.25, drop_seed=7)
    assert np.array_equal(again["imu_mask"], b["imu_mask"])  # seeded: the same loss every time


def test_gym_adapter_log_gives_obs_action_reward_done(tmp_path):
    from sim.gym_adapter import GymAdapter, GymAdapterConfig

    adapter = GymAdapter(GymAdapterConfig("HalfCheetah-v5", max_episode_steps=20), seed=3)
    rng = np.random.default_rng(0)
    readings = adapter.reset(3)
    actions = []
    while not adapter.done:
        reading = adapter.set_action(rng.uniform(-1, 1, adapter.action_dim))
        actions.append(reading.data["action"])
        readings += [reading, *adapter.advance(adapter.control_dt_s)]
    adapter.close()
    path = tmp_path / "cheetah.mcap"
    with LogWriter(path, {"episode": {"seed": "3"}}) as writer:
        for seq, r in enumerate(readings):
            header = Header(r.topic, "1.0", seq, "sim.gym_adapter", r.stamp_ns, r.stamp_ns, r.frame_id, "0" * 32)
            writer.write(Message(r.topic, header, r.data), log_time_ns=r.stamp_ns)
    ep = build_episode(path)
    observations = [r for r in readings if r.topic == "env.observation"]
    assert len(ep) == 21 and ep.meta["kind"] == "gym" and ep.meta["seed"] == 3
    assert ep.meta["robot"] == "HalfCheetah-v5" and ep.meta["control_hz"] == pytest.approx(20.0)
    assert np.array_equal(ep["obs"], np.stack([r.data["observation"] for r in observations]))
    assert ep["obs_mask"].all() and not ep["obs_age"].any() and np.allclose(ep["dt"], 0.05)
    assert np.array_equal(ep["action"][:20], np.stack(actions)) and np.array_equal(ep["action"][20], actions[-1])
    assert ep["reward"].tolist() == pytest.approx([r.data["reward"] for r in observations])
    assert ep["truncated"].tolist() == [0.0] * 20 + [1.0] and not ep["done"].any()
    assert "pose" not in ep and ep.spec.obs_dim == 17 and ep.spec.action_dim == 6


def test_sequence_dataset_windows_batches_and_padding(tmp_path):
    import torch

    logs = tmp_path / "logs"
    logs.mkdir()
    _write(logs / "long.mcap", _messages(2.0), seed=0)
    _write(logs / "short.mcap", _messages(0.5), seed=1)
    build_dataset(logs, tmp_path / "cache", DatasetConfig(eval_seeds=(9,)))
    ds = SequenceDataset(tmp_path / "cache", seq_len=40, stride=20)
    # long: 101 ticks -> starts 0, 20, 40, 60; short: 26 ticks -> one padded window.
    assert len(ds) == 5 and ds.windows[-1] == (1, 0)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=5)))
    assert batch["lidar"].shape == (5, 40, 8) and batch["depth"].shape == (5, 40, 8, 8)
    assert batch["imu"].shape == (5, 40, 4, 6) and batch["imu_mask"].shape == (5, 40, 4)
    assert batch["odom"].shape == (5, 40, 5) and batch["action"].shape == (5, 40, 2)
    assert batch["pose"].shape == (5, 40, 3) and batch["dt"].shape == (5, 40)
    assert all(v.dtype == torch.float32 for k, v in batch.items() if k not in ("episode", "start"))
    assert batch["start"].tolist() == [0, 20, 40, 60, 0] and batch["episode"].tolist() == [0, 0, 0, 0, 1]
    assert batch["valid"][:4].all() and batch["valid"][4].sum() == 26 and not batch["lidar"][4, 26:].any()
    assert torch.equal(batch["lidar"][1, 0], torch.from_numpy(ds.episodes[0]["lidar"][20]))
    assert len(SequenceDataset(tmp_path / "cache", seq_len=40, split="eval")) == 0
    only = SequenceDataset(ds.episodes, seq_len=10, keys=["lidar", "valid"])
    assert set(only[0]) == {"lidar", "valid", "episode", "start"}


def test_command_line_builds_and_reports(tmp_path, capsys):
    logs = tmp_path / "logs"
    logs.mkdir()
    _write(logs / "ep.mcap", _messages(0.5), seed=0)
    (logs / "junk.mcap").write_bytes(b"junk")
    config = tmp_path / "preset.yaml"
    config.write_text("dataset:\n  eval_fraction: 0.0\n  val_fraction: 0.0\n")
    assert main(["--logs", str(logs), "--cache", str(tmp_path / "cache"), "--config", str(config)]) == 1
    summary = json.loads(capsys.readouterr().out)
    assert summary["splits"]["train"]["episodes"] == 1 and summary["skipped"][0]["file"].endswith("junk.mcap")


def test_hallway_preset_dataset_section_loads():
    raw = yaml.safe_load((REPO / "configs" / "hallway.yaml").read_text())
    config = dataset_config_from_dict(raw["dataset"])
    assert config.max_age_s > 0 and 0 < config.eval_fraction < 1
