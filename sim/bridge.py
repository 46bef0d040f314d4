"""The sim bridge: the simulated robot as an ONI node, the way a real robot's drivers and base controller are.

::

    bridge = SimBridge(load_sim_config(preset), load_bridge_settings(preset), seed=3)
    bridge.run(duration_s=60.0)            # blocks; request_stop() from a signal handler or another thread
    bridge.close()

**Sensors.** Every sensor of the robot description is published at its own rate on one publisher (``source``
``sim``), each on its description's topic with the ``sensor`` QoS preset (``bridge.sensor_qos``), plus
``sim.ground_truth`` (``diagnostic`` QoS, ``bridge.ground_truth_hz``, frame ``world``) for evaluation only, and
``nav.route`` (``bridge.route_hz``, frame ``odom``): the corridor centreline from the start to the goal in the
odometry frame, what a navigation stack with a map would hand the robot.

**Commands.** The bridge is the base controller: it **binds** the command endpoint with a subscriber of
``actuator.cmd`` (``control`` QoS) as a CURVE *server* whose allow-list is the public keys in
``KEYS_DIR/allowed/*.key`` (plus ``bridge.allow``). A controller's publisher connects as a CURVE client with
the bridge's public key (:func:`connect_command_publisher`). Each accepted command is applied to the sim at the
next step (``stop: true`` commands (0, 0)); a command whose trace id is that of a sensor message the bridge
published recently gives one sample of the sensor-to-command latency (``e2e_latency_ms`` in the report: from that
message's publication to the command's arrival); out-of-range values are clipped by the sim and counted; non-finite
ones never get past the subscriber (``non_finite`` rejects); refused keys are counted (``denied_keys``).
When no command arrives for the drive's ``command_timeout_s`` the sim's drive brakes to a stop, as a real
base does, and the bridge logs a warning once per such event and counts it.

**Keys and discovery.** The bridge loads its key pair from ``KEYS_DIR/sim-bridge.key_secret``, generating it
(atomically, once) on first use, and writes a *bridge info* file (JSON, atomically; removed on close) that
tells another process everything it needs to connect::

    {"format": "oni.sim_bridge/1", "instance": "<hex>", "pid": 1234, "state": "starting" | "running",
     "mode": "realtime" | "fast", "seed": 0, "robot": "turtlebot4", "config": "/abs/configs/hallway.yaml",
     "epoch_ns": 1700000000000000000 (null while "starting"),
     "sensors": {"endpoint": "tcp://127.0.0.1:41234", "source": "sim",
                 "topics": {"sensor.lidar": {"schema": "sensor.lidar", "rate_hz": 10.0,
                                             "frame_id": "rplidar_link", "qos": {...QosProfile.to_dict()}},
                            ..., "sim.ground_truth": {...}}},
     "commands": {"endpoint": "tcp://127.0.0.1:41235", "topic": "actuator.cmd", "schema": "actuator.cmd",
                  "qos": {...}, "server_public_key": "<40 Z85 chars>", "keys_dir": "/home/u/.oni/keys",
                  "allowed_dir": "/home/u/.oni/keys/allowed", "allowed_keys": 1, "command_timeout_s": 0.5}}

A client reads it with :func:`oni.bridge_client.read_bridge_info`, then :func:`connect_sensor_subscriber` and
:func:`connect_command_publisher`; :func:`ensure_client_keys` creates a local controller's key pair and
allow-lists it (before the bridge starts: the allow-list is read once, at start).

**Clock.** The sim clock starts (t = 0) at the wall-clock instant ``epoch_ns``, after ``start_wait_s`` that
lets subscribers connect. Every message is stamped ``stamp_ns = epoch_ns + sim_time_ns``, so stamps are on the
ONI clock (ns since the Unix epoch) and their differences are exactly sim-time differences.

- ``realtime`` (default): deadline-scheduled steps of ``step_s`` (step ``k`` is due at ``start + k * step_s``;
  a late step runs at once, so the schedule catches up and never drifts). At each step the bridge applies the
  commands that arrived, simulates ``(t, t + step_s]``, waits until the wall clock reaches ``t + step_s`` and
  then publishes what it produced: a reading is never published before its stamp, and is at most one step
  old (5 ms by default) when published. A command takes effect within one step of its arrival.
- ``fast``: the same steps with no waiting, so sim time runs ahead of the wall clock and stamps are in the
  future. Commands are still applied at step boundaries, in sim time: a live controller running on the wall
  clock sees a robot that moves many times faster than it can react. Use it for data collection and tests
  without a controller, or with a controller that runs on the stamps (sim time) rather than the wall clock.
  For collection without loss to a slow reader, set ``sensor_qos: record`` (the publisher then waits).

**Stopping.** :meth:`SimBridge.request_stop` (the CLI calls it on SIGINT/SIGTERM) ends the loop after the
current step: the simulated robot stops with it (nothing is stepped any more), and :meth:`SimBridge.close`
closes both sockets and removes the info file.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping

import numpy as np
import zmq

from oni import qos as qos_mod
from oni.bridge_client import (
    ALLOWED_DIR,
    COMMAND_TOPIC,
    INFO_FORMAT,
    BridgeError,
    BridgeInfo,
    info_problem,
    load_or_create_keys,
)
from oni.files import write_json
from oni.message import Message
from oni.qos import QosProfile
from oni.security import KeyPair, ServerSecurity, load_public_keys
from oni.transport import Publisher, Subscriber, TopicSpec
from robots.description import (
    DescriptionError,
    build,
    check_choice,
    check_name,
    check_number,
    number_field,
)
from sim.config import SimConfig
from sim.hallway import World, generate_hallway

if TYPE_CHECKING:
    from sim.robot_sim import RobotSim
    from sim.sensors import Reading

__all__ = [
    "BridgeSettings",
    "SimBridge",
    "bridge_settings_from_dict",
    "load_bridge_settings",
    "load_or_create_server_keys",
]

log = logging.getLogger("sim.bridge")

#: File stem of the bridge's CURVE key pair in the keys directory.
SERVER_KEY_NAME = "sim-bridge"
GROUND_TRUTH_TOPIC = "sim.ground_truth"
ROUTE_TOPIC = "nav.route"
#: Frame of the route: the odometry frame (the base pose at reset), the frame of ``sensor.odom``'s pose.
ODOM_FRAME = "odom"
#: Sensor messages whose trace id is remembered for the latency of the commands computed from them.
_TRACE_WINDOW = 1024
#: Commands whose sensor-to-command latency the report summarises (the latest).
_E2E_WINDOW = 1 << 16
#: Frame of the ground-truth pose: the world (hallway) frame.
WORLD_FRAME = "world"

Mode = Literal["realtime", "fast"]
MODES: tuple[str, ...] = ("realtime", "fast")
_NS_PER_S = 1_000_000_000
#: How far ahead of "now" the sim clock's t = 0 is placed when a run starts (ns).
_INFO_LEAD_NS = 20_000_000


@dataclass(frozen=True)
class BridgeSettings:
    """The ``bridge`` section of a preset: where the bridge listens and how it steps.

    - ``sensor_endpoint``: where the sensor publisher binds (``tcp://127.0.0.1:*`` picks a free port; the
      bridge info file names the one picked). ``ipc://`` paths get their directory created.
    - ``command_endpoint``: where the ``actuator.cmd`` subscriber binds (CURVE server).
    - ``keys_dir``: the bridge's key pair (``sim-bridge.key_secret``) and ``allowed/*.key``; ``~`` expands,
      relative paths are relative to the working directory.
    - ``info_file``: the bridge info JSON for other processes.
    - ``allow``: more allow-listed client keys (Z85 strings, ``.key`` files or directories).
    - ``step_s``: simulation step (s), a multiple of the physics timestep; commands apply at step boundaries,
      and in realtime mode readings are at most one step old when published.
    - ``ground_truth_hz``: rate of ``sim.ground_truth``; its period must be a whole number of steps.
    - ``route_hz``: rate of ``nav.route`` (the corridor centreline in the odometry frame, ending at the goal, the
      route a navigation stack would give the robot); its period must be a whole number of steps.
    - ``goal_radius_m``: the goal radius the route announces.
    - ``sensor_qos``: QoS preset of the sensor topics (``sensor``; ``record`` for lossless collection).
    - ``start_wait_s``: wall time between binding and sim t = 0, for subscribers to connect.
    - ``status_interval_s``: wall time between status reports.
    """

    sensor_endpoint: str = "tcp://127.0.0.1:*"
    command_endpoint: str = "tcp://127.0.0.1:*"
    keys_dir: str = "~/.oni/keys"
    info_file: str = "~/.oni/sim/bridge.json"
    allow: tuple[str, ...] = ()
    step_s: float = 0.005
    ground_truth_hz: float = 50.0
    route_hz: float = 1.0
    goal_radius_m: float = 0.5
    sensor_qos: str = "sensor"
    start_wait_s: float = 0.5
    status_interval_s: float = 1.0

    def __post_init__(self) -> None:
        for name in ("sensor_endpoint", "command_endpoint"):
            if not check_name(name, getattr(self, name)).startswith(("tcp://", "ipc://", "inproc://")):
                raise DescriptionError(name, getattr(self, name), "must be a tcp://, ipc:// or inproc:// endpoint")
        for name in ("keys_dir", "info_file"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise DescriptionError(name, getattr(self, name), "must be a non-empty path")
        if isinstance(self.allow, str) or not all(isinstance(a, str) and a for a in self.allow):
            raise DescriptionError("allow", self.allow, "must be a list of public keys, .key files or directories")
        object.__setattr__(self, "allow", tuple(self.allow))
        number_field(self, "step_s", 0, 0.1, lo_open=True)
        number_field(self, "ground_truth_hz", 0, 1000, lo_open=True)
        number_field(self, "route_hz", 0, 1000, lo_open=True)
        number_field(self, "goal_radius_m", 0, 100, lo_open=True)
        check_choice("sensor_qos", self.sensor_qos, tuple(qos_mod.PRESETS))
        number_field(self, "start_wait_s", 0, 60)
        number_field(self, "status_interval_s", 0, 3600, lo_open=True)

    @property
    def keys_path(self) -> Path:
        return Path(self.keys_dir).expanduser()

    @property
    def info_path(self) -> Path:
        return Path(self.info_file).expanduser()


def bridge_settings_from_dict(raw: Mapping[str, Any] | None) -> BridgeSettings:
    """:class:`BridgeSettings` from a preset's ``bridge`` mapping (absent: the defaults); errors name the field."""
    return build(BridgeSettings, raw, "bridge")


def load_bridge_settings(path: str | Path) -> BridgeSettings:
    """The ``bridge`` section of a preset YAML file (the defaults if it has none)."""
    import yaml  # sim.config.load_sim_config has already told the user to install the [sim] extra

    raw = yaml.safe_load(Path(path).read_text())
    return bridge_settings_from_dict(raw.get("bridge") if isinstance(raw, Mapping) else None)


# ---------------------------------------------------------------------------------------------------------------
# Keys


def load_or_create_server_keys(keys_dir: str | Path) -> KeyPair:
    """The bridge's key pair ``KEYS_DIR/sim-bridge.key_secret``, generated and saved on first use.

    Keeping the pair across runs keeps the public key that controllers were configured with.
    """
    return load_or_create_keys(Path(keys_dir).expanduser(), SERVER_KEY_NAME)


def _allowed_keys(settings: BridgeSettings) -> tuple[frozenset[bytes], Path]:
    allowed_dir = settings.keys_path / ALLOWED_DIR
    allowed_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    sources: list[str | Path] = [*settings.allow]
    if any(allowed_dir.glob("*.key")):
        sources.append(allowed_dir)  # load_public_keys warns about an empty directory; we say it better below
    keys = load_public_keys(sources)
    if not keys:
        log.warning(
            "no controller key is allow-listed: nothing can command the robot. Put a controller's public NAME.key "
            "in %s (see `oniwm keys generate`) or pass --allow, then restart the bridge",
            allowed_dir,
        )
    return keys, allowed_dir


def _prepare_endpoint(endpoint: str) -> None:
    if endpoint.startswith("ipc://"):
        Path(endpoint.removeprefix("ipc://")).parent.mkdir(mode=0o700, parents=True, exist_ok=True)


# ---------------------------------------------------------------------------------------------------------------
# The bridge


@dataclass
class _Counters:
    """What the loop counts itself (everything else is read from the sim, publisher and subscriber)."""

    steps: int = 0
    late_steps: int = 0  # realtime steps that started more than one step late
    max_lag_ns: int = 0
    command_timeouts: int = 0
    braking: bool = False  # stopped by the command timeout, and no command since
    collisions: int = 0
    sources: set[str] = field(default_factory=set)


class SimBridge:
    """One simulated robot on the ONI bus: sensors and ground truth out, ``actuator.cmd`` in.

    Construction does all the setup (world, MuJoCo model, keys, sockets bound, info file written) and may
    raise :class:`BridgeError`, :class:`~oni.errors.SecurityError`, :class:`~robots.description.DescriptionError`
    or ``zmq.ZMQError``. :meth:`run` runs the loop until ``duration_s`` of sim time pass or :meth:`request_stop`;
    :meth:`close` releases the sockets and removes the info file. Create, run and close it from one thread at a
    time (sockets may move between threads only across a thread start or join).

    ``seed`` selects the world (the hallway is ``config.world`` with this seed) and the episode's sensor noise;
    default ``config.world.seed``. ``config_path`` is only recorded in the info file.
    """

    def __init__(
        self,
        config: SimConfig,
        settings: BridgeSettings = BridgeSettings(),
        *,
        seed: int | None = None,
        mode: Mode = "realtime",
        config_path: str | Path | None = None,
        context: zmq.Context | None = None,
    ) -> None:
        check_choice("mode", mode, MODES)
        from sim.robot_sim import (
            RobotSim,  # loads MuJoCo, which the client helpers of this module never need
        )

        self.settings = settings
        self.mode = mode
        self.seed = config.world.seed if seed is None else seed
        robot = config.load_robot()
        self.robot = robot
        physics_hz = config.sim.physics_hz
        step_phys = _whole(
            settings.step_s * physics_hz, "bridge.step_s", settings.step_s,
            f"must be a multiple of the physics timestep 1/{physics_hz} s",
        )
        self._step_ns = step_phys * _NS_PER_S // physics_hz
        self._step_s = step_phys / physics_hz
        self._truth_every = _whole(
            1.0 / (settings.ground_truth_hz * self._step_s), "bridge.ground_truth_hz", settings.ground_truth_hz,
            f"its period must be a whole number of steps of {self._step_s:g} s",
        )
        self._route_every = _whole(
            1.0 / (settings.route_hz * self._step_s), "bridge.route_hz", settings.route_hz,
            f"its period must be a whole number of steps of {self._step_s:g} s",
        )
        world = generate_hallway(replace(config.world, seed=self.seed), robot.base.radius_m)
        self._goal = world.goal_xy_m
        self._route = {"waypoints_m": route_in_start_frame(world), "goal_radius_m": settings.goal_radius_m}
        # Sensor-to-command latency: the publish time of recent sensor messages by trace id; a command carries the
        # trace id of the newest input it was computed from. Bounded: the oldest entry leaves as a new one comes.
        self._sent_pub_ns: dict[str, int] = {}
        self._sent_ring: list[str] = [""] * _TRACE_WINDOW
        self._sent_next = 0
        self._e2e_ms = np.zeros(_E2E_WINDOW)
        self._e2e_count = 0
        self._pending: list[Message] = []  # commands received while waiting for a step, applied at the next
        self._sim: RobotSim = RobotSim(robot, world, config.sim, seed=self.seed)
        self._counters = _Counters()
        self._stop_requested = False
        self._ran = False
        self._epoch_ns: int | None = None
        self._start_ns: int | None = None  # monotonic time of sim t = 0
        self._end_ns: int | None = None  # monotonic time the loop ended
        self._instance = secrets.token_hex(8)
        self._info_path = settings.info_path
        self._info_written = False
        # Preallocated: the ground-truth map is refilled in place at every publish.
        self._truth: dict[str, Any] = {}
        self._pub: Publisher | None = None
        self._cmd: Subscriber | None = None
        try:
            self._claim_info_file()
            server_keys = load_or_create_server_keys(settings.keys_path)
            allowed, allowed_dir = _allowed_keys(settings)
            sensor_qos = qos_mod.preset(settings.sensor_qos)
            self._topics: dict[str, dict[str, Any]] = {
                s.topic: {"schema": s.schema, "rate_hz": s.rate_hz, "frame_id": s.frame_id, "qos": sensor_qos.to_dict()}
                for s in robot.sensors
            }
            self._topics[GROUND_TRUTH_TOPIC] = {
                "schema": GROUND_TRUTH_TOPIC,
                "rate_hz": settings.ground_truth_hz,
                "frame_id": WORLD_FRAME,
                "qos": qos_mod.DIAGNOSTIC.to_dict(),
            }
            self._topics[ROUTE_TOPIC] = {
                "schema": ROUTE_TOPIC,
                "rate_hz": settings.route_hz,
                "frame_id": ODOM_FRAME,
                "qos": qos_mod.DIAGNOSTIC.to_dict(),
            }
            _prepare_endpoint(settings.sensor_endpoint)
            _prepare_endpoint(settings.command_endpoint)
            self._pub = Publisher(
                settings.sensor_endpoint,
                {t: TopicSpec(QosProfile.from_dict(v["qos"]), v["schema"]) for t, v in self._topics.items()},
                source="sim",
                context=context,
            )
            self._cmd = Subscriber(context=context, security=ServerSecurity(server_keys, allowed))
            self._cmd.subscribe(COMMAND_TOPIC, qos_mod.CONTROL)
            command_endpoint = self._cmd.bind(settings.command_endpoint)
            self._info: dict[str, Any] = {
                "format": INFO_FORMAT,
                "instance": self._instance,
                "pid": os.getpid(),
                "state": "starting",
                "mode": mode,
                "seed": self.seed,
                "robot": robot.name,
                "config": str(Path(config_path).resolve()) if config_path is not None else None,
                "epoch_ns": None,
                "sensors": {"endpoint": self._pub.endpoint, "source": self._pub.source, "topics": self._topics},
                "commands": {
                    "endpoint": command_endpoint,
                    "topic": COMMAND_TOPIC,
                    "schema": COMMAND_TOPIC,
                    "qos": qos_mod.CONTROL.to_dict(),
                    "server_public_key": server_keys.public.decode(),
                    "keys_dir": str(settings.keys_path.resolve()),
                    "allowed_dir": str(allowed_dir.resolve()),
                    "allowed_keys": len(allowed),
                    "command_timeout_s": robot.drive.command_timeout_s,
                },
            }
            self._write_info()
        except BaseException:
            self.close()
            raise

    # -- setup helpers -----------------------------------------------------------------------------------------
    def _claim_info_file(self) -> None:
        path = self._info_path
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if path.exists():
            problem = info_problem(path)
            if problem is None:
                pid = json.loads(path.read_text())["pid"]
                raise BridgeError(
                    f"{path} belongs to a running bridge (pid {pid}): stop it, or give this one another --info-file"
                )
            log.info("replacing %s (%s)", path, problem)

    def _write_info(self) -> None:
        write_json(self._info_path, self._info)
        self._info_written = True

    @property
    def info_path(self) -> Path:
        """Where the bridge info file is."""
        return self._info_path

    @property
    def info(self) -> BridgeInfo:
        """The bridge info this bridge wrote."""
        return BridgeInfo(self._info_path, json.loads(json.dumps(self._info)))

    @property
    def sim(self) -> "RobotSim":
        """The simulation (read-only use: it is stepped by :meth:`run`)."""
        return self._sim

    # -- running -------------------------------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Ask :meth:`run` to return after the current step. Safe from a signal handler or another thread."""
        self._stop_requested = True  # a plain store: no lock, so a signal handler can never deadlock on it

    def run(
        self, duration_s: float | None = None, on_status: Callable[[dict[str, Any]], None] | None = None
    ) -> dict[str, Any]:
        """Run until ``duration_s`` of sim time (None: until :meth:`request_stop`); returns :meth:`report`.

        ``on_status(report)`` is called every ``status_interval_s`` of wall time, from this thread.
        """
        if self._ran:
            raise BridgeError("a bridge runs once (its sim clock and counters start with the run); create another")
        self._ran = True
        if duration_s is not None:
            check_number("duration_s", duration_s, 0, math.inf, lo_open=True)
        end_step = None if duration_s is None else math.ceil(duration_s / self._step_s - 1e-9)
        self._pause(self.settings.start_wait_s)
        if self._stop_requested:
            return self.report()
        sim, counters = self._sim, self._counters
        readings = sim.reset(self.seed)
        sim_stats = sim.stats  # reset() replaces the stats object
        realtime = self.mode == "realtime"
        step_s, step_ns = self._step_s, self._step_ns
        truth_every = self._truth_every
        timeout_s = self.robot.drive.command_timeout_s
        status_ns = int(self.settings.status_interval_s * _NS_PER_S)
        # t = 0 is set a little ahead, so that writing the info file (an fsync) does not make the first steps late.
        self._start_ns = start = time.monotonic_ns() + _INFO_LEAD_NS
        self._epoch_ns = time.time_ns() + _INFO_LEAD_NS
        self._info["epoch_ns"] = self._epoch_ns
        self._info["state"] = "running"
        self._write_info()
        if (ahead := start - time.monotonic_ns()) > 0:
            time.sleep(ahead / _NS_PER_S)
        log.info("sim clock started (%s): stamp_ns = %d + sim time", self.mode, self._epoch_ns)
        self._publish(readings)
        self._publish_truth()
        self._pub.publish(ROUTE_TOPIC, self._route, stamp_ns=self._epoch_ns, frame_id=ODOM_FRAME)
        next_status = start + status_ns
        k = 0
        while not self._stop_requested and (end_step is None or k < end_step):
            self._apply_commands()
            readings = sim.advance(step_s)
            k += 1
            counters.steps = k
            if sim_stats.command_timeouts != counters.command_timeouts:
                counters.command_timeouts = sim_stats.command_timeouts
                counters.braking = True
                log.warning(
                    "no actuator.cmd for %.2f s: braking to a stop (command timeout %d)",
                    timeout_s, counters.command_timeouts,
                )
            if sim_stats.collisions != counters.collisions:
                counters.collisions = n = sim_stats.collisions
                if n & (n - 1) == 0:  # the 1st, 2nd, 4th...: a robot grinding along a wall must not flood the log
                    log.warning("collision %d at t = %.2f s", n, sim.sim_time_ns / _NS_PER_S)
            now = time.monotonic_ns()
            if realtime:
                due = start + k * step_ns
                if now - due > step_ns:
                    counters.late_steps += 1
                    counters.max_lag_ns = max(counters.max_lag_ns, now - due)
                while now < due:  # wait on the command socket: a command is received (and timed) on arrival
                    if (msg := self._cmd.recv(timeout_ms=(due - now) / 1e6)) is not None:
                        self._pending.append(msg)
                    now = time.monotonic_ns()
            self._publish(readings)
            if k % truth_every == 0:
                self._publish_truth()
            if k % self._route_every == 0:
                self._pub.publish(ROUTE_TOPIC, self._route, stamp_ns=self._epoch_ns + sim.sim_time_ns, frame_id=ODOM_FRAME)
            if on_status is not None and now >= next_status:
                next_status = now + status_ns
                on_status(self.report())
        self._end_ns = time.monotonic_ns()
        return self.report()

    def _pause(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self._stop_requested and (left := end - time.monotonic()) > 0:
            time.sleep(min(left, 0.05))

    def _apply_commands(self) -> None:
        """Apply every ``actuator.cmd`` that has arrived, in order (the last one holds until the next step)."""
        sim, counters, pending = self._sim, self._counters, self._pending
        # recv(0) returns None at a hello or a rejected message too; what is behind it waits one step.
        while (msg := self._cmd.recv(timeout_ms=0)) is not None:
            pending.append(msg)
        for msg in pending:
            source = msg.header.source
            if source not in counters.sources:
                counters.sources.add(source)
                log.info("commands from %r", source)
            if counters.braking:
                counters.braking = False
                log.info("actuator.cmd resumed after the command timeout")
            sent = self._sent_pub_ns.get(msg.header.trace_id)
            if sent is not None:
                self._e2e_ms[self._e2e_count % _E2E_WINDOW] = (msg.recv_ns - sent) / 1e6
                self._e2e_count += 1
            data = msg.data
            if data.get("stop", False):
                sim.set_command(0.0, 0.0)
            else:
                sim.set_command(data["v_mps"], data["omega_radps"])
        pending.clear()

    def _publish(self, readings: list["Reading"]) -> None:
        publish, epoch, sent, ring = self._pub.publish, self._epoch_ns, self._sent_pub_ns, self._sent_ring
        for r in readings:
            header = publish(r.topic, r.data, stamp_ns=epoch + r.stamp_ns, frame_id=r.frame_id)
            i = self._sent_next
            sent.pop(ring[i], None)
            ring[i] = header.trace_id
            sent[header.trace_id] = header.pub_ns
            self._sent_next = (i + 1) % _TRACE_WINDOW

    def _publish_truth(self) -> None:
        t = self._sim.ground_truth()
        d = self._truth
        d["x_m"] = t.x_m
        d["y_m"] = t.y_m
        d["yaw_rad"] = t.yaw_rad
        d["v_mps"] = t.v_mps
        d["lateral_mps"] = t.lateral_mps
        d["omega_radps"] = t.omega_radps
        d["in_collision"] = t.in_collision
        d["collisions"] = t.collisions
        d["goal_distance_m"] = math.hypot(t.x_m - self._goal[0], t.y_m - self._goal[1])
        self._pub.publish(GROUND_TRUTH_TOPIC, d, stamp_ns=self._epoch_ns + t.stamp_ns, frame_id=WORLD_FRAME)

    # -- reporting -----------------------------------------------------------------------------------------------
    def report(self) -> dict[str, Any]:
        """Where the bridge stands: sim and wall time, per-topic publish counts, commands, timeouts, collisions.

        JSON-serialisable; call it while the bridge is open. ``realtime_factor`` is sim seconds per wall second
        since the sim clock started (None before it has run).
        """
        sim_stats, counters = self._sim.stats, self._counters
        sim_s = self._sim.sim_time_ns / _NS_PER_S
        if self._start_ns is None:
            wall_s = 0.0
        else:
            wall_s = ((self._end_ns or time.monotonic_ns()) - self._start_ns) / _NS_PER_S
        cmd = self._cmd.stats[COMMAND_TOPIC]
        truth = self._sim.ground_truth()
        return {
            "mode": self.mode,
            "seed": self.seed,
            "sim_s": sim_s,
            "wall_s": wall_s,
            "realtime_factor": sim_s / wall_s if wall_s > 0 else None,
            "steps": counters.steps,
            "late_steps": counters.late_steps,
            "max_lag_ms": counters.max_lag_ns / 1e6,
            "topics": {
                t: {"published": s.sent, "dropped": s.dropped} for t, s in self._pub.stats.items()
            },
            "commands": {
                "received": cmd.received,
                "rejected": dict(cmd.rejects),
                "expired": cmd.expired,
                "clipped": sim_stats.clipped_commands,
                "denied_keys": self._cmd.denied_keys,
                "sources": sorted(counters.sources),
            },
            "e2e_latency_ms": self._e2e_summary(),
            "command_timeouts": counters.command_timeouts,
            "braking": counters.braking,
            "collisions": sim_stats.collisions,
            "pose": {"x_m": truth.x_m, "y_m": truth.y_m, "yaw_rad": truth.yaw_rad, "v_mps": truth.v_mps},
        }

    def _e2e_summary(self) -> dict[str, Any]:
        """Sensor-to-command latency (ms): from the publication of the newest sensor message a command was computed
        from (its trace id) to the command's arrival here, over the last commands that named one."""
        n = min(self._e2e_count, _E2E_WINDOW)
        if not n:
            return {"count": 0, "p50": None, "p99": None, "max": None}
        window = self._e2e_ms[:n]
        return {"count": self._e2e_count, "p50": float(np.percentile(window, 50)),
                "p99": float(np.percentile(window, 99)), "max": float(window.max())}

    def close(self) -> None:
        """Close the sockets and remove the info file (if it is still this bridge's). Idempotent."""
        if self._pub is not None:
            self._pub.close()
            self._pub = None
        if self._cmd is not None:
            self._cmd.close()
            self._cmd = None
        if self._info_written:
            self._info_written = False
            try:
                ours = json.loads(self._info_path.read_text()).get("instance") == self._instance
            except (OSError, ValueError):
                ours = False
            if ours:
                self._info_path.unlink(missing_ok=True)

    def __enter__(self) -> "SimBridge":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def route_in_start_frame(world: World) -> np.ndarray:
    """(K, 2) float64: the world's centreline (start to goal) in the frame of its start pose, the frame the
    odometry reports in (the base pose at reset)."""
    start = world.start
    c, s = math.cos(start.yaw_rad), math.sin(start.yaw_rad)
    rel = np.asarray(world.centerline_xy_m, np.float64) - (start.x_m, start.y_m)
    return np.stack([c * rel[:, 0] + s * rel[:, 1], -s * rel[:, 0] + c * rel[:, 1]], axis=1)


def _whole(x: float, name: str, value: Any, allowed: str) -> int:
    n = round(x)
    if n < 1 or abs(x - n) > 1e-6:
        raise DescriptionError(name, value, allowed)
    return n
