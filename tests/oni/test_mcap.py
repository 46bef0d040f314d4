"""MCAP record and replay: real sockets on loopback, real recorder/replayer processes, the plain mcap reader."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import fastjsonschema
import msgpack
import numpy as np
import pytest
from mcap.exceptions import McapError
from mcap.reader import make_reader
from mcap.records import Message as McapMessage
from mcap.stream_reader import StreamReader

from oni import qos
from oni.cli import record as record_cli
from oni.mcap_log import LogError, LogReader, LogWriter, paced, read_messages
from oni.message import Header, Message, new_trace_id, now_ns
from oni.security import ClientSecurity, KeyPair, ServerSecurity
from oni.shm import ShmConfig, ShmReader, ShmRing
from oni.tensor import Png, Quantized, decode_tensor, encode_tensor
from oni.transport import Publisher, Subscriber
from tests.oni.conftest import lidar_data, wait_for

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(60)


def run_cli(argv: list[str]) -> tuple[int, str]:
    """Run an ``oniwm record``/``replay`` command in this process; returns (exit code, stderr)."""
    parser = argparse.ArgumentParser()
    record_cli.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = args.func(args)
    return code, err.getvalue()


def oniwm(*argv: str) -> subprocess.Popen:
    """``oniwm ARGV`` as a real process (the installed entry point's module, run from the repository)."""
    return subprocess.Popen(
        [sys.executable, "-m", "worldmodel.cli", *argv], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def header(schema: str, seq: int, t_ns: int, frame_id: str = "base") -> Header:
    return Header(schema, "1.0", seq, "test", t_ns, t_ns, frame_id, new_trace_id())


def odom(x: float) -> dict:
    return {"x_m": x, "y_m": 0.0, "yaw_rad": 0.0, "v_mps": 0.5, "omega_radps": 0.0}


def imu() -> dict:
    return {"accel_mps2": np.array([0.0, 0.0, 9.81], np.float32), "gyro_radps": np.zeros(3, np.float32)}


class Feeder(threading.Thread):
    """Publishes on ``pub`` from its own thread, for the topics it declares: lidar with quantized intensities
    and actuator.cmd at ``rate_hz``, a PNG depth image every 5th tick, diag.runtime every 10th, and one
    invalid diag.runtime at ``bad_at_s``. Keeps what it sent: ``sent[(topic, seq)] = (header, data)``."""

    def __init__(self, pub: Publisher, duration_s: float, rate_hz: float = 100.0, bad_at_s: float | None = None):
        super().__init__(daemon=True)
        self.pub, self.duration_s, self.rate_hz, self.bad_at_s = pub, duration_s, rate_hz, bad_at_s
        self.sent: dict[tuple[str, int], tuple[Header, dict]] = {}
        self.bad_seq: int | None = None
        self.rng = np.random.default_rng(7)

    def publish(self, topic: str, data: dict, **kw) -> None:
        sent = self.pub.publish(topic, data, **kw)
        self.sent[(topic, sent.seq)] = (sent, data)

    def run(self) -> None:
        declared = self.pub.stats
        start = time.monotonic()
        k = 0
        while (t := time.monotonic() - start) < self.duration_s:
            if "sensor.lidar" in declared:
                intensities = Quantized(self.rng.uniform(0, 100, 360).astype(np.float32))
                ranges = np.full(360, 1.0 + k, np.float32)
                data = {**lidar_data(), "ranges_m": ranges, "intensities": intensities}
                self.publish("sensor.lidar", data, frame_id="laser")
            if "sensor.depth" in declared and k % 5 == 0:
                depth = Png(self.rng.integers(0, 5000, (24, 32), dtype=np.uint16))
                camera = {"depth_scale_m": 0.001, "fx": 30.0, "fy": 30.0, "cx": 16.0, "cy": 12.0}
                self.publish("sensor.depth", {"depth": depth, **camera})
            if "diag.runtime" in declared and k % 10 == 0:
                self.publish("diag.runtime", {"tick": k, "tick_us": 120.0, "deadline_misses": 0, "stages": ["a", "b"]})
            if self.bad_at_s is not None and self.bad_seq is None and t >= self.bad_at_s:
                self.bad_seq = self.pub.publish("diag.runtime", {"tick": -1, "tick_us": 1.0, "deadline_misses": 0}).seq
            if "actuator.cmd" in declared:
                self.publish("actuator.cmd", {"v_mps": 0.1 * k, "omega_radps": 0.0})
            k += 1
            time.sleep(max(0.0, start + k / self.rate_hz - time.monotonic()))


# -- a recording made through the real command, shared by the round-trip and plain-reader tests ------------
ROUND_TRIP_TOPICS = ("sensor.lidar", "sensor.depth", "diag.runtime")


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    out = tmp_path_factory.mktemp("rec") / "run.mcap"
    specs = {t: qos.SENSOR for t in ROUND_TRIP_TOPICS}
    with Publisher("tcp://127.0.0.1:*", specs, source="test-pub") as pub:
        feeder = Feeder(pub, duration_s=1.2, bad_at_s=0.5)
        feeder.start()
        code, err = run_cli(
            ["record", "--endpoint", pub.endpoint, "--topics", *ROUND_TRIP_TOPICS, "--out", str(out), "--duration", "1.6"]
        )
        feeder.join(timeout=10)
    assert code == 0, err
    return out, feeder, err


def test_round_trip_keeps_headers_and_tensor_values(recorded):
    path, feeder, _err = recorded
    msgs = list(read_messages(path))
    by_topic = {t: [m for m in msgs if m.topic == t] for t in ROUND_TRIP_TOPICS}
    assert len(by_topic["sensor.lidar"]) >= 50 and by_topic["sensor.depth"] and by_topic["diag.runtime"]
    for topic, got in by_topic.items():
        seqs = [m.header.seq for m in got]
        # Contiguous from the first message the recorder saw (the invalid one is the only hole) to the last sent.
        last = max(s for (t, s) in feeder.sent if t == topic)
        expected = [s for s in range(seqs[0], last + 1) if (topic, s) in feeder.sent]
        assert seqs == expected, topic
    for msg in msgs:
        sent_header, sent_data = feeder.sent[(msg.topic, msg.header.seq)]
        assert msg.header == sent_header
        assert msg.recv_ns >= msg.header.pub_ns
        if msg.topic == "sensor.lidar":
            np.testing.assert_array_equal(msg.data["ranges_m"], sent_data["ranges_m"])
            # Exactly the values a live subscriber decodes from the quantized tensor.
            desc, buf = encode_tensor(sent_data["intensities"])
            np.testing.assert_array_equal(msg.data["intensities"], decode_tensor(desc, bytes(buf), field="intensities"))
            assert msg.data["intensities"].dtype == np.float32
        elif msg.topic == "sensor.depth":
            np.testing.assert_array_equal(msg.data["depth"], sent_data["depth"].array)  # PNG is lossless
            assert msg.data["depth"].dtype == np.uint16
        else:
            assert msg.data["stages"] == ["a", "b"] and msg.data["tick"] == sent_data["tick"]


def test_invalid_message_is_counted_not_written(recorded):
    path, feeder, err = recorded
    assert feeder.bad_seq is not None
    assert all(not (m.topic == "diag.runtime" and m.header.seq == feeder.bad_seq) for m in read_messages(path))
    reader = LogReader(path)
    list(reader.records())
    stats = json.loads(reader.metadata["oni.record"]["stats"])
    assert stats["diag.runtime"]["rejects"] == {"schema": 1}
    assert stats["sensor.lidar"]["written"] == sum(1 for m in read_messages(path, ["sensor.lidar"]))
    assert "data.tick must be bigger than or equal to 0" in err


def test_plain_mcap_reader_sees_one_channel_per_topic_with_its_json_schema(recorded):
    path, _feeder, _err = recorded
    with open(path, "rb") as f:
        reader = make_reader(f)
        summary = reader.get_summary()
        assert sorted(c.topic for c in summary.channels.values()) == sorted(ROUND_TRIP_TOPICS)
        validators = {}
        for channel in summary.channels.values():
            schema = summary.schemas[channel.schema_id]
            assert schema.encoding == "jsonschema" and schema.name == channel.topic
            document = json.loads(schema.data)
            assert document["x-oni-schema"] == channel.topic and "header" in document["$defs"]  # self-contained
            validators[channel.id] = fastjsonschema.compile(document)
            assert channel.message_encoding == "oni.msgpack"
            assert channel.metadata["oni.schema_version"] == "1.0" and channel.metadata["oni.source"] == "test-pub"
        assert summary.statistics.message_count > 0
        for _schema, channel, message in reader.iter_messages():
            body = msgpack.unpackb(message.data, raw=False)
            validators[channel.id](body)
            assert message.publish_time == body["header"]["pub_ns"] <= message.log_time
            assert message.sequence == body["header"]["seq"] & 0xFFFFFFFF
        # The schema is a real constraint, not a formality.
        del body["data"][next(iter(body["data"]))]
        with pytest.raises(fastjsonschema.JsonSchemaValueException):
            validators[channel.id](body)
        metadata = {m.name: m.metadata for m in reader.iter_metadata()}
    assert metadata["oni"]["oni_version"] == "1"
    assert json.loads(metadata["oni.record"]["endpoints"])[0].startswith("tcp://127.0.0.1:")


def test_user_metadata_and_a_truncated_log_reads_up_to_its_last_complete_chunk(tmp_path):
    path = tmp_path / "full.mcap"
    t0 = now_ns()
    with LogWriter(path, metadata={"episode": {"seed": "42"}}, compression="none") as writer:
        writer.add_metadata("robot", {"name": "hallway-bot"})
        for i in range(40):
            msg = Message("sensor.odom", header("sensor.odom", i, t0 + i), odom(float(i)))
            assert writer.write(msg, log_time_ns=t0 + i)
            if i % 10 == 9:
                writer.flush()  # four chunks
    reader = LogReader(path)
    assert [m.data["x_m"] for m in reader.messages()] == [float(i) for i in range(40)]
    assert reader.complete and reader.unreadable_bytes == 0
    assert reader.metadata["episode"] == {"seed": "42"} and reader.metadata["robot"] == {"name": "hallway-bot"}
    info = reader.info()
    assert info.message_count == 40 and info.complete and info.metadata["robot"] == {"name": "hallway-bot"}
    full = path.read_bytes()
    chunk_ends = []
    for cut in [*range(len(full) - 1, 8, -53), 8, 3, 0]:  # down to the bare magic and less; a chunk is ~4 KiB
        (tmp_path / "cut.mcap").write_bytes(full[:cut])
        cut_reader = LogReader(tmp_path / "cut.mcap")
        xs = [m.data["x_m"] for m in cut_reader.messages()]
        assert xs == [float(i) for i in range(len(xs))] and len(xs) % 10 == 0  # whole chunks, in order
        assert not cut_reader.complete and cut_reader.unreadable_bytes >= 0
        if cut_reader.unreadable_bytes:
            chunk_ends.append(len(xs))
        assert cut_reader.info().message_count == len(xs)
    assert set(chunk_ends) == {0, 10, 20, 30, 40}
    (tmp_path / "not.mcap").write_bytes(b"PK\x03\x04 not a log at all")
    with pytest.raises(LogError, match="not an MCAP file"):
        list(read_messages(tmp_path / "not.mcap"))


def test_stale_shared_memory_tensor_is_skipped_and_counted(tmp_path):
    ring = ShmRing(ShmConfig(slots=2, slot_bytes=4096, min_bytes=0), prefix="oni-test-mcap")
    shm_reader = ShmReader()
    try:
        desc = ring.copy_in(np.arange(360, dtype=np.float32))
        view, lease = shm_reader.resolve(desc, desc["shm"], "ranges_m")
        data = {**lidar_data(), "ranges_m": view}
        msg = Message("sensor.lidar", header("sensor.lidar", 0, now_ns()), data, shm_leases=[lease])
        with LogWriter(tmp_path / "shm.mcap") as writer:
            assert writer.write(msg)
            ring.loan((4,), np.float32)
            ring.loan((4,), np.float32)  # the ring wraps: the producer reuses msg's slot
            assert not msg.valid()
            assert not writer.write(msg)
            assert writer.stats.stale == 1 and writer.stats.total == 1
        (read,) = read_messages(tmp_path / "shm.mcap")
        np.testing.assert_array_equal(read.data["ranges_m"], np.arange(360, dtype=np.float32))
    finally:
        del view
        shm_reader.close()
        ring.close()


def test_paced_is_deadline_scheduled_on_log_time():
    clock = [100.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock[0] += seconds + 0.004  # every sleep overshoots

    offsets_ms = [0, 100, 100, 400, 1000]
    msgs = [
        Message("sensor.odom", header("sensor.odom", i, 0), odom(0.0), recv_ns=5_000_000_000 + o * 1_000_000)
        for i, o in enumerate(offsets_ms)
    ]
    for rate in (1.0, 2.0):
        clock[0], sleeps[:] = 100.0, []
        yielded = []
        for _msg in paced(msgs, rate, clock=lambda: clock[0], sleep=sleep):
            yielded.append(clock[0] - 100.0)
            clock[0] += 0.030  # the consumer's publish takes 30 ms
        due = [o / 1000.0 / rate for o in offsets_ms]
        # Never early; late by at most one overshoot plus the consumer's time on the message before: no drift.
        assert all(d <= y <= d + 0.035 for d, y in zip(due, yielded)), (rate, yielded)
    clock[0], sleeps[:] = 100.0, []
    assert len(list(paced(msgs, None, clock=lambda: clock[0], sleep=sleep))) == 5 and sleeps == []


def test_replay_reproduces_recorded_gaps_and_fast_is_much_faster(tmp_path):
    path = tmp_path / "timed.mcap"
    offsets_ms = [0, 50, 200, 250, 450, 600, 800]
    t0 = now_ns()
    with LogWriter(path) as writer:
        for i, off in enumerate(offsets_ms):
            topic = "sensor.imu" if i % 2 else "sensor.odom"
            data = imu() if topic == "sensor.imu" else odom(float(i))
            msg = Message(topic, header(topic, i, t0 - 10**9 + i, frame_id=f"f{i}"), data)
            writer.write(msg, log_time_ns=t0 + off * 10**6)
        cmd = Message("actuator.cmd", header("actuator.cmd", 0, t0), {"v_mps": 0.2, "omega_radps": 0.0})
        writer.write(cmd, log_time_ns=t0)  # not replayed: --topics leaves it out
    stored = {m.header.stamp_ns: m.header for m in read_messages(path)}

    def replay(*extra: str) -> list[Message]:
        with Subscriber() as sub:
            sub.subscribe("sensor.imu", qos.SENSOR)
            sub.subscribe("sensor.odom", qos.SENSOR)
            endpoint = sub.bind("tcp://127.0.0.1:*")
            topics = ("--topics", "sensor.imu", "sensor.odom")
            proc = oniwm("replay", str(path), "--endpoint", endpoint, "--connect", "--wait", "0.3", *topics, *extra)
            want = len(offsets_ms) * (3 if "--loop" in extra else 1)
            got = []
            end = time.monotonic() + 20
            while len(got) < want and time.monotonic() < end:
                msg = sub.recv(timeout_ms=100)
                if msg is not None:
                    got.append(msg)
            if "--loop" in extra:
                proc.send_signal(signal.SIGINT)
            _out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err.decode()
        assert len(got) == want, err.decode()
        return got

    timed = replay()
    for msg in timed:
        original = stored[msg.header.stamp_ns]
        assert (msg.header.frame_id, msg.header.trace_id) == (original.frame_id, original.trace_id)
        assert msg.header.source == "oniwm-replay"
    assert [m.header.seq for m in timed if m.topic == "sensor.odom"] == [0, 1, 2, 3]  # the replayer's own seq
    gaps_ms = np.diff([m.recv_ns for m in timed]) / 1e6
    np.testing.assert_allclose(gaps_ms, np.diff(offsets_ms), atol=40.0)
    assert abs((timed[-1].recv_ns - timed[0].recv_ns) / 1e6 - offsets_ms[-1]) < 40.0  # no drift over the run
    fast = replay("--fast", "--loop")  # stopped by SIGINT after three passes
    assert [m.header.seq for m in fast if m.topic == "sensor.odom"][:8] == list(range(8))
    assert (fast[len(offsets_ms) - 1].recv_ns - fast[0].recv_ns) / 1e6 < offsets_ms[-1] / 5


def test_recorder_killed_with_sigkill_leaves_a_readable_log_and_sigterm_closes_cleanly(tmp_path):
    killed_out, stopped_out = tmp_path / "killed.mcap", tmp_path / "stopped.mcap"
    with Publisher("tcp://127.0.0.1:*", {"sensor.lidar": qos.SENSOR}, source="test-pub") as pub:
        feeder = Feeder(pub, duration_s=20.0, rate_hz=200.0)
        feeder.start()
        procs = [
            oniwm("record", "--endpoint", pub.endpoint, "--topics", "sensor.lidar", "--out", str(out), "--flush-ms", "200")
            for out in (killed_out, stopped_out)
        ]
        try:
            for out in (killed_out, stopped_out):
                assert wait_for(lambda: out.exists() and any(True for _ in LogReader(out).records()), timeout_s=15), out
            time.sleep(1.0)
            killed_ns = now_ns()
            procs[0].send_signal(signal.SIGKILL)
            procs[1].send_signal(signal.SIGTERM)
            _out, stopped_err = procs[1].communicate(timeout=10)
            procs[0].wait(timeout=10)
        finally:
            for proc in procs:
                proc.kill()
                proc.communicate(timeout=10)
            feeder.duration_s = 0.0
            feeder.join(timeout=10)
    assert procs[0].returncode == -signal.SIGKILL
    reader = LogReader(killed_out)
    seqs = [m.header.seq for m in reader.messages()]
    assert not reader.complete and reader.metadata["oni"]["oni_version"] == "1"
    # Everything published well before the kill (three flush periods) is there, without holes.
    old = sorted(s for (_t, s), (h, _d) in feeder.sent.items() if seqs[0] <= s and h.pub_ns < killed_ns - 600_000_000)
    assert len(old) > 50 and seqs[: len(old)] == old
    # The plain mcap stream reader reads the same messages, then fails at the truncated end.
    plain = []
    with open(killed_out, "rb") as f, pytest.raises((McapError, struct.error)):
        for record in StreamReader(f).records:
            if isinstance(record, McapMessage):
                plain.append(record.sequence)
    assert plain == seqs
    # SIGTERM: a clean close with summary and footer, and everything received up to the signal.
    assert procs[1].returncode == 0, stopped_err.decode()
    assert b"recorded" in stopped_err and b"sensor.lidar" in stopped_err
    stopped = LogReader(stopped_out)
    stopped_seqs = [m.header.seq for m in stopped.messages()]
    assert stopped.complete and stopped.unreadable_bytes == 0
    assert stopped_seqs == list(range(stopped_seqs[0], stopped_seqs[-1] + 1)) and stopped_seqs[-1] > old[-1]
    assert stopped.info().message_count == len(stopped_seqs)


def test_recording_actuator_cmd_needs_keys(tmp_path):
    out = tmp_path / "x.mcap"
    code, err = run_cli(["record", "--endpoint", "tcp://127.0.0.1:9", "--topics", "actuator.cmd", "--out", str(out)])
    assert code == 2 and "privileged" in err and "--keys FILE" in err
    assert not out.exists()


@pytest.mark.parametrize("recorder_role", ["client", "server"])
def test_recording_actuator_cmd_with_curve_keys(tmp_path, recorder_role):
    robot, recorder = KeyPair.generate(), KeyPair.generate()
    robot.save(tmp_path, "robot")
    recorder.save(tmp_path, "recorder")
    out = tmp_path / "cmd.mcap"
    argv = ["record", "--topics", "actuator.cmd", "--out", str(out), "--duration", "1.2", "--keys", str(tmp_path / "recorder")]
    if recorder_role == "client":  # the robot's publisher binds and admits the recorder's key
        security = ServerSecurity(robot, allowed_clients=frozenset({recorder.public}))
        pub = Publisher("tcp://127.0.0.1:*", {"actuator.cmd": qos.CONTROL}, source="robot", security=security)
        argv += ["--endpoint", pub.endpoint, "--server-key", robot.public.decode()]
    else:  # the recorder binds and admits the robot's key; the robot's publisher connects
        endpoint = f"ipc://{tmp_path}/recorder.sock"
        security = ClientSecurity(robot, server_public=recorder.public)
        pub = Publisher(endpoint, {"actuator.cmd": qos.CONTROL}, source="robot", bind=False, security=security)
        argv += ["--bind", endpoint, "--allow", str(tmp_path / "robot.key")]
    with pub:
        feeder = Feeder(pub, duration_s=1.0, rate_hz=50.0)
        feeder.start()
        code, err = run_cli(argv)
        feeder.join(timeout=10)
    assert code == 0, err
    cmds = list(read_messages(out))
    assert len(cmds) > 10 and all(m.topic == "actuator.cmd" for m in cmds)
    for cmd in cmds:
        assert cmd.data["v_mps"] == feeder.sent[("actuator.cmd", cmd.header.seq)][1]["v_mps"]


def test_replay_refuses_topics_not_in_the_log(tmp_path):
    path = tmp_path / "one.mcap"
    with LogWriter(path) as writer:
        writer.write(Message("sensor.odom", header("sensor.odom", 0, now_ns()), odom(1.0)))
    code, err = run_cli(["replay", str(path), "--topics", "sensor.lidar"])
    assert code == 2 and "sensor.odom" in err
    assert run_cli(["replay", str(tmp_path / "missing.mcap")])[0] == 2
