"""``oniwm ros2-bridge``: the ROS 2 node's logic over DDS directly, for robots whose ROS 2 has no Python install here.

Runs :class:`robots.ros2.core.RosRuntime` (the same runtime, model and backends as ``oniwm run``) and exchanges
ROS 2 messages with the robot's ROS 2 nodes through the ``cyclonedds`` Python binding, named and encoded as ROS 2
does: topic ``/scan`` is the DDS topic ``rt/scan``, type ``sensor_msgs/msg/LaserScan`` the DDS type
``sensor_msgs::msg::dds_::LaserScan_`` (:mod:`robots.ros2.idl`), plain CDR (XCDR1), on the DDS domain
``ROS_DOMAIN_ID``. Sensor topics are read with ROS's sensor-data QoS (best effort, keep last 5, volatile); the goal
is read and the outputs written with ROS's default QoS (reliable, keep last 10, volatile). DDS itself is configured
as cyclonedds always is, by the ``CYCLONEDDS_URI`` environment variable (interfaces, peers, multicast).

Example::

    oniwm ros2-bridge --config configs/hallway.yaml --params robots/ros2/config/oniwm.params.yaml --control
    oniwm ros2-bridge --config configs/hallway.yaml --view     # and watch it in Foxglove: ws://127.0.0.1:8765

Parameters are the node's (:class:`~robots.ros2.core.NodeParams`), from ``--params`` (a ROS 2 parameters file),
then the flags (``--control``: ``control_enabled``; ``--view``, ``--view-port``: ``view``, ``view_port``). The
final report (runtime, inputs received / refused per reason, outputs) is printed as JSON and written to
``--json FILE``. Exit status: 0 after a run, 1 when the runtime or a publisher failed (the robot was
stopped first), 2 when setup failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
from typing import Any

from oni.cli import on_stop_signals

log = logging.getLogger("robots.ros2.dds_bridge")

__all__ = ["DdsBridge", "register", "run"]

#: ROS 2's DDS topic name prefix for topics (``rt/``), as rmw_cyclonedds and rmw_fastrtps name them.
TOPIC_PREFIX = "rt"
#: Samples taken from a reader per wake-up.
_TAKE = 64


def dds_topic(ros_topic: str) -> str:
    """The DDS topic of the absolute ROS 2 topic ``ros_topic``: ``/scan`` -> ``rt/scan``."""
    return TOPIC_PREFIX + ros_topic


class DdsBridge:
    """A :class:`~robots.ros2.core.RosRuntime` on DDS domain ``domain_id``: a participant, a writer per output and
    a reader per input (created here), and :meth:`spin`, which feeds what the readers take to the runtime."""

    def __init__(self, params: Any, domain_id: int) -> None:
        from cyclonedds.domain import DomainParticipant
        from cyclonedds.pub import DataWriter
        from cyclonedds.qos import Policy, Qos
        from cyclonedds.sub import DataReader
        from cyclonedds.topic import Topic
        from cyclonedds.util import duration

        from robots.ros2 import idl
        from robots.ros2.core import OUTPUTS, RosRuntime

        xcdr1 = Policy.DataRepresentation(use_cdrv0_representation=True)
        sensor_qos = Qos(Policy.Reliability.BestEffort, Policy.History.KeepLast(5), Policy.Durability.Volatile, xcdr1)
        default_qos = Qos(Policy.Reliability.Reliable(duration(milliseconds=100)), Policy.History.KeepLast(10),
                          Policy.Durability.Volatile, xcdr1)
        self.participant = DomainParticipant(domain_id)
        topics: dict[str, Any] = {}

        def topic(ros_topic: str, ros_type: str) -> Any:
            if ros_topic not in topics:
                topics[ros_topic] = Topic(self.participant, dds_topic(ros_topic), idl.CLASSES[ros_type])
            return topics[ros_topic]

        self._writers = {name: DataWriter(self.participant, topic(getattr(params, param), ros_type), qos=default_qos)
                         for name, (param, ros_type) in OUTPUTS.items() if name != "cmd_vel" or params.control_enabled}
        self.core = RosRuntime(params, self._write, idl.TYPES)
        self._readers = [(kind, DataReader(self.participant, topic(ros_topic, ros_type),
                                           qos=default_qos if kind == "goal" else sensor_qos), idl.CLASSES[ros_type])
                         for kind, ros_topic, ros_type in self.core.subscriptions]
        self._stop = threading.Event()

    def _write(self, name: str, message: Any) -> None:
        self._writers[name].write(message)

    def request_stop(self) -> None:
        """End :meth:`spin` (from a signal handler or another thread)."""
        self._stop.set()

    def spin(self, duration_s: float | None = None, on_status: Any = None) -> dict[str, Any]:
        """Start the runtime and feed it what arrives until ``duration_s`` (wall seconds; None: until
        :meth:`request_stop`) or the runtime's loop ends; then close it (a zero ``Twist`` last) and return its
        report."""
        from cyclonedds.core import (
            InstanceState,
            ReadCondition,
            SampleState,
            ViewState,
            WaitSet,
        )
        from cyclonedds.util import duration

        waitset = WaitSet(self.participant)
        for _, reader, _ in self._readers:
            waitset.attach(ReadCondition(reader, SampleState.NotRead | ViewState.Any | InstanceState.Any))
        core = self.core
        core.start(duration_s, on_status)
        timeout = duration(milliseconds=100)
        try:
            while core.running and not self._stop.is_set():
                waitset.wait(timeout)
                for kind, reader, cls in self._readers:
                    for sample in reader.take(N=_TAKE):
                        if not isinstance(sample, cls):
                            continue  # an instance-state change (a writer went away), not data
                        if kind == "depth":
                            # cyclonedds gives a sequence<uint8> as a list; bytes() packs it in C for the buffer protocol.
                            sample.data = bytes(sample.data)
                        core.receive(kind, sample)
        finally:
            report = core.close()
        return report


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``ros2-bridge`` to ``oniwm``."""
    parser = subparsers.add_parser("ros2-bridge", help="the world-model runtime exchanging ROS 2 messages over DDS "
                                                       "(no ROS install needed)",
                                   description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=None, metavar="YAML", help="preset (default: the parameters' config, "
                                                                       "configs/hallway.yaml)")
    parser.add_argument("--params", default=None, metavar="FILE", help="a ROS 2 parameters file with an 'oniwm_node' "
                                                                      "section (e.g. robots/ros2/config/oniwm.params.yaml)")
    parser.add_argument("--model", default=None, metavar="DIR", help="override runtime.model ('default': the shipped one)")
    parser.add_argument("--backend", default=None, choices=("torch", "onnxruntime", "tensorrt"),
                        help="override runtime.backend.name")
    parser.add_argument("--rate", type=float, default=None, metavar="HZ", help="override runtime.rate_hz")
    parser.add_argument("--control", action="store_true", default=None,
                        help="publish commands on the cmd_vel topic (parameter control_enabled)")
    parser.add_argument("--view", action="store_true", default=None,
                        help="stream to Foxglove over WebSocket, as `oniwm run --view` (parameter view; the view extra)")
    parser.add_argument("--view-port", type=int, default=None, metavar="PORT",
                        help="the --view port on 127.0.0.1 (parameter view_port, default 8765; 0: any free port)")
    parser.add_argument("--domain-id", type=int, default=None, metavar="N",
                        help="DDS domain (default: $ROS_DOMAIN_ID, else 0)")
    parser.add_argument("--duration", type=float, default=None, metavar="S", help="stop after S wall seconds")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the final report here (atomically)")
    parser.add_argument("--quiet", action="store_true", help="no status line")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``oniwm ros2-bridge``; see the module docstring for the exit status."""
    from oni.files import write_json
    from robots.node import setup_errors, write_status
    from robots.ros2.core import NodeParamsError, load_params, params_from_dict
    from worldmodel.backends.base import BackendUnavailable, require_extra

    try:
        require_extra("cyclonedds", "ros2", "oniwm ros2-bridge")
    except BackendUnavailable as exc:
        log.error("cannot start the ROS 2 bridge: %s", exc)
        return 2
    from cyclonedds.core import DDSException

    try:
        domain_id = args.domain_id if args.domain_id is not None else int(os.environ.get("ROS_DOMAIN_ID") or 0)
        params = params_from_dict(load_params(args.params) if args.params else None, config=args.config,
                                  model=args.model, backend=args.backend, rate_hz=args.rate,
                                  control_enabled=args.control, view=args.view, view_port=args.view_port)
        bridge = DdsBridge(params, domain_id)
    except (*setup_errors(), NodeParamsError, DDSException) as exc:
        log.error("cannot start the ROS 2 bridge: %s", exc)
        return 2
    core = bridge.core
    log.info("ros2-bridge on DDS domain %d: %s on %s at %g Hz; inputs %s; outputs %s%s", domain_id,
             core.parts.backend_name, core.parts.model_path, core.runtime.config.rate_hz,
             [dds_topic(t) for _, t, _ in core.subscriptions], [dds_topic(t) for t, _ in core.publications.values()],
             "" if params.control_enabled else " (control disabled: no commands)")

    with on_stop_signals(bridge.request_stop):
        report = bridge.spin(args.duration, on_status=None if args.quiet else write_status)
    if not args.quiet:
        sys.stderr.write("\n")
    print(json.dumps(report))
    if args.json:
        write_json(args.json, report)
    return 1 if report["error"] else 0
