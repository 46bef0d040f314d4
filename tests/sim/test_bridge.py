"""The sim bridge over real loopback sockets: sensor rates and stamps in realtime and fast mode, allow-listed
commands, the command timeout, the bridge info file, and ``oniwm sim`` as a real process with a clean shutdown.

Every socket has linger 0 and every wait a timeout, so a regression fails a test instead of hanging it.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from oni import qos
from oni.message import Message
from oni.security import ClientSecurity, KeyPair
from oni.transport import Publisher
from robots.description import DescriptionError
from oni.bridge_client import (
    BridgeError,
    connect_command_publisher,
    connect_sensor_subscriber,
    ensure_client_keys,
    read_bridge_info,
)
from sim.bridge import BridgeSettings, SimBridge, bridge_settings_from_dict
from sim.config import SimConfig, load_sim_config

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]
PRESET = REPO / "configs" / "hallway.yaml"
RATES_HZ = {"sensor.lidar": 10, "sensor.imu": 200, "sensor.odom": 50, "sensor.depth": 15, "sim.ground_truth": 50}
ONIWM = [sys.executable, "-m", "worldmodel.cli"]


@pytest.fixture(scope="module")
def config() -> SimConfig:
    return load_sim_config(PRESET)


@pytest.fixture
def settings(tmp_path: Path) -> BridgeSettings:
    return BridgeSettings(
        keys_dir=str(tmp_path / "keys"), info_file=str(tmp_path / "run" / "bridge.json"), start_wait_s=0.3
    )


class BridgeThread:
    """Runs ``bridge.run(duration_s)`` in a thread; ``join()`` returns its report (or re-raises its error)."""

    def __init__(self, bridge: SimBridge, duration_s: float | None) -> None:
        self.report: dict[str, Any] = {}
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(bridge, duration_s), daemon=True)
        self._thread.start()

    def _run(self, bridge: SimBridge, duration_s: float | None) -> None:
        try:
            self.report = bridge.run(duration_s)
        except BaseException as exc:  # handed to the test thread by join()
            self.error = exc

    def alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout_s: float = 30.0) -> dict[str, Any]:
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "the bridge did not stop"
        if self.error is not None:
            raise self.error
        return self.report


def wait_running(path: Path, timeout_s: float = 30.0) -> int:
    """The bridge's ``epoch_ns`` once its sim clock has started."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        epoch = read_bridge_info(path, timeout_s=timeout_s).epoch_ns
        if epoch is not None:
            return epoch
        time.sleep(0.02)
    raise AssertionError("the bridge never started its clock")


def sim_s(msg: Message, epoch_ns: int) -> float:
    return (msg.header.stamp_ns - epoch_ns) / 1e9


def check_stream(msgs: list[Message], topic: str, epoch_ns: int) -> None:
    """Stamps of ``topic`` are exactly the sensor's sample times on the sim clock, each one, in order."""
    rate = RATES_HZ[topic]
    ks = [round((m.header.stamp_ns - epoch_ns) * rate / 1e9) for m in msgs]
    assert [m.header.stamp_ns - epoch_ns for m in msgs] == [k * 1_000_000_000 // rate for k in ks], topic
    assert ks == list(range(ks[0], ks[0] + len(ks))), f"{topic}: a sample is missing"


def test_bridge_streams_at_sensor_rates_obeys_allowed_keys_and_brakes_when_commands_stop(config, settings, caplog):
    caplog.set_level(logging.INFO, logger="sim.bridge")
    planner_keys = ensure_client_keys(settings.keys_dir, "planner")
    stranger_keys = KeyPair.generate()
    duration_s, rogue_until_s, planner_until_s = 4.5, 1.0, 2.5
    with ExitStack() as stack:
        bridge = stack.enter_context(SimBridge(config, settings, seed=1))
        info = read_bridge_info(settings.info_file, timeout_s=5)
        assert info.command_timeout_s == 0.5 and info.raw["commands"]["allowed_keys"] == 1
        sub = stack.enter_context(connect_sensor_subscriber(info))
        planner = stack.enter_context(connect_command_publisher(info, planner_keys, source="planner"))
        rogue = stack.enter_context(connect_command_publisher(info, stranger_keys, source="rogue"))
        runner = BridgeThread(bridge, duration_s)
        epoch = wait_running(bridge.info_path)
        start_yaw = bridge.sim.world.start.yaw_rad
        msgs: dict[str, list[Message]] = defaultdict(list)
        next_cmd, last_cmd_s, special_sent = time.monotonic(), None, False
        while runner.alive():
            msg = sub.recv(timeout_ms=5)
            if msg is not None:
                msgs[msg.topic].append(msg)
            if time.monotonic() < next_cmd:
                continue
            next_cmd += 0.02  # a 50 Hz controller
            now_s = (time.time_ns() - epoch) / 1e9
            if now_s < rogue_until_s:
                rogue.publish("actuator.cmd", {"v_mps": 0.4, "omega_radps": 0.0})
            elif now_s < planner_until_s:
                if not special_sent:
                    planner.publish("actuator.cmd", {"v_mps": math.nan, "omega_radps": 0.0})  # refused: non-finite
                    planner.publish("actuator.cmd", {"v_mps": 5.0, "omega_radps": 0.0})  # clipped to 0.46
                    special_sent = True
                planner.publish("actuator.cmd", {"v_mps": 0.3, "omega_radps": 0.0})
                last_cmd_s = now_s
        report = runner.join()
        while (msg := sub.recv(timeout_ms=100)) is not None:
            msgs[msg.topic].append(msg)
        stats = sub.stats
    assert not bridge.info_path.exists(), "the info file outlived the bridge"

    # Every topic, at its rate, exact stamps, nothing lost or rejected.
    assert report["sim_s"] == pytest.approx(duration_s)
    for topic, rate in RATES_HZ.items():
        published = report["topics"][topic]["published"]
        assert published == math.floor(duration_s * rate) + 1, topic  # samples at 0, 1/rate, ... <= duration
        assert stats[topic].rejects == {} and stats[topic].gaps == 0, topic
        assert len(msgs[topic]) >= 0.95 * published, topic
        check_stream(msgs[topic], topic, epoch)
    # Realtime: a reading is published after its stamp and at most about a step (5 ms) later.
    ages_ms = sorted((m.header.pub_ns - m.header.stamp_ns) / 1e6 for t in RATES_HZ for m in msgs[t])
    assert ages_ms[0] > -1.0, "published before its acquisition time"
    assert ages_ms[len(ages_ms) // 2] < 10.0
    assert 0.9 < report["realtime_factor"] < 1.1

    truth = msgs["sim.ground_truth"]
    during = lambda a, b: [m.data for m in truth if a <= sim_s(m, epoch) < b]  # noqa: E731
    # The rogue's commands never reached the robot: its key was refused and counted.
    assert all(abs(d["v_mps"]) < 0.01 for d in during(0.0, rogue_until_s))
    assert stranger_keys.public.decode() in report["commands"]["denied_keys"]
    assert report["commands"]["sources"] == ["planner"]
    # The planner's drove it forward along its heading.
    first, moving = during(0.0, 0.1)[0], during(planner_until_s - 0.1, planner_until_s)
    assert all(d["v_mps"] == pytest.approx(0.3, abs=0.03) for d in moving)
    dx, dy = moving[-1]["x_m"] - first["x_m"], moving[-1]["y_m"] - first["y_m"]
    assert dx * math.cos(start_yaw) + dy * math.sin(start_yaw) > 0.25
    assert report["commands"]["rejected"] == {"non_finite": 1} and report["commands"]["clipped"] == 1
    assert report["commands"]["received"] >= 0.9 * (planner_until_s - rogue_until_s) * 50
    # Commands stopped: the base keeps the last one for the timeout, then brakes to a stop, and says so.
    timeout_s, brake_s = 0.5, 0.3 / config.load_robot().base.max_accel_mps2
    assert all(d["v_mps"] > 0.25 for d in during(last_cmd_s + 0.05, last_cmd_s + timeout_s - 0.1))
    stopped = during(last_cmd_s + timeout_s + brake_s + 0.2, duration_s + 1)
    assert stopped and all(abs(d["v_mps"]) < 0.01 for d in stopped)
    assert report["command_timeouts"] == 1 and report["braking"]
    assert sum("no actuator.cmd for 0.50 s: braking to a stop" in r.getMessage() for r in caplog.records) == 1


def test_fast_mode_runs_ahead_of_real_time_on_the_same_clock_mapping(config, settings):
    with SimBridge(config, settings, seed=0, mode="fast") as bridge:
        sub = connect_sensor_subscriber(bridge.info, ["sim.ground_truth"])
        try:
            runner = BridgeThread(bridge, 10.0)
            truth: list[Message] = []
            while runner.alive():
                if (msg := sub.recv(timeout_ms=20)) is not None:
                    truth.append(msg)
            while (msg := sub.recv(timeout_ms=200)) is not None:
                truth.append(msg)
            report = runner.join()
        finally:
            sub.close()
        epoch = bridge.info.epoch_ns
        assert bridge.info.raw["mode"] == "fast"
    for topic, rate in RATES_HZ.items():
        assert report["topics"][topic] == {"published": 10 * rate + 1, "dropped": 0}
    assert report["realtime_factor"] > 2.0, report
    # stamp_ns = epoch_ns + sim time, as in realtime mode; sim time runs ahead of the wall clock.
    assert len(truth) >= 0.9 * 501
    check_stream(truth, "sim.ground_truth", epoch)
    last = truth[-1].header
    assert last.stamp_ns - last.pub_ns > 5e9  # 10 s of sim in well under 5 s of wall time


def test_one_info_file_per_live_bridge_and_the_key_pair_persists(config, settings, tmp_path):
    info_path = Path(settings.info_file)
    info_path.parent.mkdir(parents=True)
    # A file left by a bridge that died is replaced.
    info_path.write_text(json.dumps({"format": "oni.sim_bridge/1", "pid": 2**31 - 1}))
    with pytest.raises(BridgeError, match="stale bridge info"):
        read_bridge_info(info_path)
    with SimBridge(config, settings) as first:
        key = first.info.server_public_key
        assert read_bridge_info(info_path).server_public_key == key
        with pytest.raises(BridgeError, match="belongs to a running bridge"):
            SimBridge(config, settings)
        assert read_bridge_info(info_path).raw["instance"] == first.info.raw["instance"]  # left alone
    assert not info_path.exists()
    with SimBridge(config, settings) as second:
        assert second.info.server_public_key == key  # controllers configured with it keep working
    with pytest.raises(BridgeError, match="no bridge info file"):
        read_bridge_info(info_path, timeout_s=0.1)


def test_bad_bridge_settings_name_the_field(config, settings):
    with pytest.raises(DescriptionError, match=r"bridge\.step_s = 0\.004: must be a multiple of the physics timestep 1/600"):
        SimBridge(config, replace(settings, step_s=0.004))
    with pytest.raises(DescriptionError, match=r"bridge\.ground_truth_hz = 30\.0: its period must be a whole number"):
        SimBridge(config, replace(settings, ground_truth_hz=30))
    with pytest.raises(DescriptionError, match=r"bridge\.step = .*unknown field"):
        bridge_settings_from_dict({"step": 0.01})
    with pytest.raises(DescriptionError, match=r"bridge\.sensor_qos = 'fast'"):
        bridge_settings_from_dict({"sensor_qos": "fast"})
    assert not Path(settings.info_file).exists()


def test_client_helpers_do_not_load_mujoco():
    code = "import sys, sim.bridge\nassert 'mujoco' not in sys.modules, 'sim.bridge loaded mujoco at import'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr


def _oniwm_sim(tmp_path: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*ONIWM, "sim", "--config", str(PRESET), "--keys-dir", str(tmp_path / "keys"),
         "--info-file", str(tmp_path / "bridge.json"), "--wait", "0.5", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )


def test_oniwm_sim_runs_as_a_process_for_its_duration(tmp_path):
    proc = _oniwm_sim(tmp_path, "--duration", "3", "--seed", "2")
    try:
        info = read_bridge_info(tmp_path / "bridge.json", timeout_s=30)
        sub = connect_sensor_subscriber(info)
        try:
            counts: dict[str, int] = defaultdict(int)
            end = time.monotonic() + 30
            while proc.poll() is None and time.monotonic() < end:
                if (msg := sub.recv(timeout_ms=50)) is not None:
                    counts[msg.topic] += 1
            assert all(s.rejects == {} for s in sub.stats.values())
        finally:
            sub.close()
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["seed"] == 2 and report["sim_s"] == pytest.approx(3.0)
    for topic, rate in RATES_HZ.items():
        assert report["topics"][topic]["published"] == 3 * rate + 1
        assert counts[topic] >= 0.9 * 3 * rate, (topic, counts)
    assert "bridge info: " in err and "sim    " in err and "Hz (sim)" in err  # info path, status line, table
    assert not (tmp_path / "bridge.json").exists()


def test_oniwm_sim_stops_cleanly_on_sigterm(tmp_path):
    proc = _oniwm_sim(tmp_path)
    try:
        wait_running(tmp_path / "bridge.json")
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["sim_s"] >= 0.4 and report["topics"]["sensor.imu"]["published"] > 80
    assert not (tmp_path / "bridge.json").exists()


def test_commands_with_an_incompatible_qos_are_refused(config, settings):
    # The bridge's command subscription is CONTROL (reliable, 200 ms deadline): a sensor-QoS publisher, even with
    # an allowed key, is refused loudly as incompatible instead of steering the robot.
    keys = ensure_client_keys(settings.keys_dir, "planner")
    with SimBridge(config, replace(settings, start_wait_s=0.0)) as bridge:
        info = bridge.info
        sloppy = Publisher(info.command_endpoint, {"actuator.cmd": qos.SENSOR}, source="sloppy", bind=False,
                           security=ClientSecurity(keys, info.server_public_key))
        runner = BridgeThread(bridge, 1.0)
        try:
            while runner.alive():
                sloppy.publish("actuator.cmd", {"v_mps": 0.3, "omega_radps": 0.0})
                time.sleep(0.02)
        finally:
            sloppy.close()
        report = runner.join()
    assert report["commands"]["received"] == 0 and report["commands"]["rejected"].get("incompatible_qos", 0) > 0
    assert abs(report["pose"]["v_mps"]) < 0.01
