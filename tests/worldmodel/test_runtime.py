"""The control-rate runtime on real ONI sockets (tcp loopback, CURVE on actuator.cmd) with a real (tiny) model:
commands, outputs, stops (stale sensor, no route, deadline misses, goal), refused inputs, setup mismatches, an
exception in a tick, and the phase lock."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from oni.security import ClientSecurity, KeyPair, ServerSecurity
from oni.transport import Publisher, Subscriber
from train.synthetic import SyntheticSpec, synthetic_episode
from worldmodel.backends.torch_backend import TorchBackend
from worldmodel.model import WorldModel, compute_normalization, modalities_from_batch, model_config
from worldmodel.observation import ObservationSpec
from worldmodel.planner import NavigationCost, PlannerConfig, RobotGeometry, SamplingPlanner
from worldmodel.runtime import Runtime, RuntimeConfig, RuntimeSetupError, STAGES
from worldmodel.runtime.loop import OUTPUT_TOPICS, ROUTE_TOPIC

pytestmark = pytest.mark.timeout(120)

BEAMS, STRIDE, H, N = 48, 4, 5, 16
SPEC = ObservationSpec(lidar_beams=BEAMS, depth_height=16, depth_width=16, imu_samples=4, odom=True)
GEOMETRY = RobotGeometry(radius_m=0.17, lidar_xy_m=(0.0, 0.0), lidar_yaw_rad=0.0, angle_min_rad=-math.pi,
                         angle_increment_rad=2 * math.pi / BEAMS * STRIDE, beams=BEAMS // STRIDE)
NS = 1_000_000_000


@pytest.fixture(scope="module")
def model() -> WorldModel:
    ep = {k: torch.from_numpy(v)[None] for k, v in synthetic_episode(SyntheticSpec(episodes=1, duration_s=1.2, beams=BEAMS,
                                                                                   depth_shape=(16, 16)), 0).items()}
    cfg = model_config("tiny", modalities_from_batch(ep), 2, True, no_return_m=12.0)
    torch.manual_seed(0)
    return WorldModel(cfg, compute_normalization([ep], cfg)).eval()


class FailingBackend(TorchBackend):
    """A torch backend whose belief update raises from the ``fail_at``-th call on (fault injection)."""

    fail_at = 3

    def observe(self, state, obs, prev_action, dt_s):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls >= self.fail_at:
            raise RuntimeError("injected fault")
        return super().observe(state, obs, prev_action, dt_s)


class Rig:
    """A robot side (sensor publisher, CURVE command subscriber), a viewer of the outputs, and a runtime."""

    def __init__(self, model: WorldModel, backend_cls=TorchBackend, spec: ObservationSpec = SPEC, **config) -> None:
        self.backend = backend_cls(model, H, N, 1, 1, beam_stride=STRIDE)
        cfg = PlannerConfig(action_low=(-0.3, -1.0), action_high=(0.3, 1.0), samples=N, horizon=H, step_dt_s=0.2,
                            iterations=1, min_iterations=1, time_budget_ms=0.0, elites=4)
        self.planner = SamplingPlanner(cfg, NavigationCost(cfg.cost, GEOMETRY, N, H, cfg.action_low, cfg.action_high),
                                       self.backend.rollout)
        self.topics = {m: spec.topics[m] for m in spec.modalities}
        self.robot = Publisher("tcp://127.0.0.1:*", {**{t: "sensor" for t in self.topics.values()}, ROUTE_TOPIC: "diagnostic"},
                               source="robot")
        self.sensors = Subscriber()
        for topic in (*self.topics.values(), ROUTE_TOPIC):
            self.sensors.subscribe(topic, "sensor")
        self.sensors.connect(self.robot.endpoint)
        server, client = KeyPair.generate(), KeyPair.generate()
        self.cmd_sub = Subscriber(security=ServerSecurity(server, {client.public}))
        self.cmd_sub.subscribe("actuator.cmd", "control")
        endpoint = self.cmd_sub.bind("tcp://127.0.0.1:*")
        self.commands = Publisher(endpoint, {"actuator.cmd": "control"}, source="runtime", bind=False,
                                  security=ClientSecurity(client, server.public))
        self.outputs = Publisher("tcp://127.0.0.1:*", {t: "diagnostic" for t in OUTPUT_TOPICS}, source="runtime")
        self.viewer = Subscriber()
        for topic in OUTPUT_TOPICS:
            self.viewer.subscribe(topic, "diagnostic")
        self.viewer.connect(self.outputs.endpoint)
        self.runtime = self.build(spec, **config)
        assert self.robot.wait_for_subscribers(1, 5.0) and self.outputs.wait_for_subscribers(1, 5.0)
        end = time.monotonic() + 5.0
        while not self.commands.wait_for_subscribers(1, 0.01):  # the server side authenticates as it polls
            self.cmd_sub.poll(10)
            assert time.monotonic() < end, "the CURVE command connection did not come up"
        self.x = 0.0

    def build(self, spec: ObservationSpec, **config) -> Runtime:
        settings = dict(critical_sensors={"lidar": 0.5, "odom": 0.2}, trigger="", horizons_s=(0.5, 1.0))
        settings.update(config)
        return Runtime(RuntimeConfig(**settings), self.backend, self.planner, spec, GEOMETRY, self.sensors,
                       self.commands, self.outputs, action_timeout_s=0.5, model_id="test")

    def publish_sensors(self, t_ns: int, lidar: np.ndarray | None = None, odom: bool = True) -> None:
        pub = self.robot
        pub.publish(self.topics["lidar"], {"ranges_m": np.full(BEAMS, 3.0, np.float32) if lidar is None else lidar,
                                           "angle_min_rad": -math.pi, "angle_increment_rad": 2 * math.pi / BEAMS,
                                           "range_min_m": 0.1, "range_max_m": 12.0}, stamp_ns=t_ns)
        pub.publish(self.topics["imu"], {"accel_mps2": np.zeros((4, 3)), "gyro_radps": np.zeros((4, 3)),
                                         "sample_dt_s": 0.005}, stamp_ns=t_ns)
        if odom:
            pub.publish(self.topics["odom"], {"x_m": self.x, "y_m": 0.0, "yaw_rad": 0.0, "v_mps": 0.0, "omega_radps": 0.0},
                        stamp_ns=t_ns)

    def publish_route(self, goal_x: float = 10.0) -> None:
        self.robot.publish(ROUTE_TOPIC, {"waypoints_m": np.array([[0.0, 0.0], [goal_x, 0.0]]), "goal_radius_m": 0.5})

    def step(self, t_ns: int, settle_s: float = 0.03, **sensor_kwargs) -> None:
        self.publish_sensors(t_ns, **sensor_kwargs)
        time.sleep(settle_s)  # the messages cross real sockets
        self.runtime.tick(t_ns)

    def commands_received(self, wait_s: float = 0.3) -> list:
        end, out = time.monotonic() + wait_s, []
        while time.monotonic() < end:
            self.cmd_sub.poll(20)
            out += self.cmd_sub.take("actuator.cmd")
        return out

    def close(self) -> None:
        for sock in (self.robot, self.sensors, self.cmd_sub, self.commands, self.outputs, self.viewer):
            sock.close()


@pytest.fixture
def rig(model):
    rigs = []

    def make(**kwargs) -> Rig:
        rigs.append(Rig(model, **kwargs))
        return rigs[-1]

    yield make
    for r in rigs:
        r.close()


def test_a_tick_commands_the_robot_and_publishes_latent_predictions_and_diagnostics(rig):
    r = rig()
    r.publish_route()
    t0 = time.time_ns()
    for k in range(6):
        r.step(t0 + k * 20_000_000)
    cmds = r.commands_received()
    assert cmds and not cmds[-1].data["stop"], [c.data for c in cmds]
    assert all(abs(c.data["v_mps"]) <= 0.3 + 1e-6 for c in cmds)
    # The command carries the trace id of a sensor message the tick consumed (sensor-to-command latency).
    assert cmds[-1].header.trace_id != "" and cmds[-1].header.stamp_ns == t0 + 5 * 20_000_000
    time.sleep(0.1)
    r.viewer.poll(50)
    got = {t: r.viewer.take(t) for t in OUTPUT_TOPICS}
    assert all(got[t] for t in OUTPUT_TOPICS), {t: len(v) for t, v in got.items()}
    lidar = got["prediction.lidar"][-1].data
    assert lidar["ranges_m"].shape == (2, BEAMS // STRIDE) and np.isfinite(lidar["ranges_m"]).all()
    assert lidar["angle_increment_rad"] == pytest.approx(2 * math.pi / BEAMS * STRIDE)
    pose = got["prediction.pose"][-1].data
    assert pose["pose"].shape == (2, 3) and list(pose["horizons_s"]) == [0.5, 1.0]
    latent = got["model.latent_state"][-1].data
    assert latent["deter"].shape == (r.backend.io.deter,) and latent["model_id"] == "test"
    diag = got["diag.runtime"][-1].data
    assert diag["stages"] == list(STAGES) and diag["stage_us"].shape == (len(STAGES),) and not diag["stopped"]
    report = r.runtime.report()
    assert report["ticks"] == 6 and report["plans"] == 6 and report["stops"].get("no route yet (nav.route)") is None


def test_predictions_interpolate_the_plans_rollout_between_steps(rig):
    r = rig(horizons_s=(0.5, 1.0))
    r.publish_route()
    t0 = time.time_ns()
    r.step(t0)
    p = r.planner._best_pred
    expected = 0.5 * (p.pose_mean[1] + p.pose_mean[2])  # 0.5 s lies halfway between steps 2 (0.4 s) and 3 (0.6 s)
    np.testing.assert_allclose(r.runtime._pred_pose["pose"][0], expected, atol=1e-6)
    np.testing.assert_allclose(r.runtime._pred_pose["pose"][1], p.pose_mean[4], atol=1e-6)  # 1.0 s = step 5


def test_without_a_route_or_with_a_stale_critical_sensor_the_robot_is_stopped_and_told_why(rig):
    r = rig()
    t0 = time.time_ns()
    r.step(t0)
    assert r.runtime.report()["stop_reason"] == "no route yet (nav.route)"
    r.publish_route()
    r.step(t0 + 20_000_000)
    assert not r.runtime.report()["stopped"]
    # Odometry stops arriving: 0.3 s later it is older than its 0.2 s limit.
    r.step(t0 + 320_000_000, odom=False)
    report = r.runtime.report()
    assert report["stopped"] and report["stop_reason"].startswith("sensor.odom stale: 0.30 s > 0.20 s")
    cmds = r.commands_received()
    assert cmds[-1].data["stop"] and "sensor.odom stale" in cmds[-1].data["reason"]
    r.step(t0 + 340_000_000)  # fresh again: drives
    assert not r.runtime.report()["stopped"]
    assert report["stops"] == {"no route yet (nav.route)": 1, "stale sensor.odom": 1}


def test_reaching_the_goal_stops_the_robot(rig):
    r = rig()
    r.publish_route(goal_x=1.0)
    r.x = 0.7  # within the 0.5 m goal radius of (1, 0)
    r.step(time.time_ns())
    assert r.runtime.report()["stop_reason"] == "goal reached" and r.runtime.reached_goal


def test_wrong_shape_and_nan_sensor_messages_never_reach_the_model_and_are_counted(rig):
    r = rig()
    r.publish_route()
    t0 = time.time_ns()
    r.step(t0)
    before = r.runtime.assembler.out["lidar"].copy()
    r.step(t0 + 20_000_000, lidar=np.full(BEAMS // 2, 1.0, np.float32))  # a scan of the wrong size
    bad = np.full(BEAMS, 1.0, np.float32)
    bad[3] = np.nan
    r.step(t0 + 40_000_000, lidar=bad)
    np.testing.assert_array_equal(r.runtime.assembler.out["lidar"], before)
    refused = r.runtime.report()["refused"]
    assert refused["assembler.lidar"] == {"malformed": 1}
    assert refused["sensor.lidar"].get("non_finite") == 1
    assert np.isfinite(r.runtime.carry.belief.deter).all()


def test_a_model_that_does_not_match_the_robot_is_refused_at_setup_naming_the_mismatch(rig):
    r = rig()
    other = ObservationSpec(lidar_beams=360, depth_height=16, depth_width=16, imu_samples=4, odom=True)
    with pytest.raises(RuntimeSetupError, match=r"the model takes lidar \(48,\), the robot gives lidar \(360,\)"):
        r.build(other)
    no_depth = ObservationSpec(lidar_beams=BEAMS, imu_samples=4, odom=True)
    with pytest.raises(RuntimeSetupError, match=r"the model takes depth \(16, 16\), the robot gives no depth"):
        r.build(no_depth)
    with pytest.raises(RuntimeSetupError, match=r"runtime.horizons_s reaches 3 s; the plan covers 1 s"):
        r.build(SPEC, horizons_s=(1.0, 3.0))


def test_an_exception_in_a_tick_stops_the_robot_first_and_is_reported(model, rig):
    r = rig(backend_cls=FailingBackend, rate_hz=50.0)
    r.publish_route()
    for _ in range(5):
        r.publish_sensors(time.time_ns())
    report = r.runtime.run(duration_s=2.0)
    assert report["error"] == "exception in tick 2: RuntimeError: injected fault"
    assert report["ticks"] == 2
    cmds = r.commands_received()
    assert cmds[-1].data["stop"] and "injected fault" in cmds[-1].data["reason"]


def test_deadline_misses_in_a_row_command_a_stop(rig):
    # 2 kHz cannot be kept by a tick that plans: every tick misses, and after K = 3 the robot is stopped.
    r = rig(rate_hz=2000.0, max_consecutive_misses=3, critical_sensors={}, trigger_margin_ms=0.1)
    r.publish_route()
    report = r.runtime.run(duration_s=0.5)
    assert report["deadline_misses"] >= 3 and report["max_consecutive_misses"] >= 3
    assert report["stops"].get("deadline misses") == 1 and report["error"] is None
    assert report["stopped_ticks"] >= 1 and report["plans"] < report["ticks"]  # a stopped tick does not plan


def test_the_schedule_locks_its_phase_to_the_trigger_sensor(rig):
    r = rig(critical_sensors={}, trigger="odom", trigger_margin_ms=2.0)
    r.publish_route()
    stop = time.monotonic() + 1.5
    import threading

    def robot() -> None:  # odometry at 50 Hz from another thread, at a phase of its own
        next_t = time.monotonic() + 0.007
        while next_t < stop:
            time.sleep(max(0.0, next_t - time.monotonic()))
            r.publish_sensors(time.time_ns())
            next_t += 0.02

    thread = threading.Thread(target=robot)
    thread.start()
    report = r.runtime.run(duration_s=1.5)
    thread.join()
    lag = report["trigger_lag_ms"]
    assert lag["p50"] is not None and 0.0 < lag["p50"] < 6.0, lag  # started about 2 ms after the reading


def test_runtime_config_errors_name_the_field():
    from worldmodel.runtime import RuntimeConfigError, runtime_config_from_dict

    for section, field in (({"rate_hz": 0}, "runtime.rate_hz"), ({"realtime_priority": 120}, "runtime.realtime_priority"),
                           ({"critical_sensors": {"sonar": 1.0}}, "runtime.critical_sensors.sonar"),
                           ({"backend": {"name": "tpu"}}, "runtime.backend.name"), ({"horizon": 3}, "runtime.horizon"),
                           ({"route": {"lookahead_m": -1}}, "route.lookahead_m")):
        with pytest.raises(RuntimeConfigError, match=field.replace(".", r"\.")):
            runtime_config_from_dict(section)
