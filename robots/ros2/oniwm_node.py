"""``oniwm_node``: the world-model runtime as a ROS 2 node on rclpy (``ros2 run oniwm oniwm_node``, or the launch file).

Thin glue around :class:`robots.ros2.core.RosRuntime`, which runs the same runtime, model and backends as
``oniwm run``: the node declares :class:`~robots.ros2.core.NodeParams` as ROS parameters, subscribes the robot's
sensors with sensor-data QoS (``qos_profile_sensor_data``: best effort, keep last 5) and the goal with the default
QoS, and publishes the runtime's outputs with the default QoS (reliable, keep last 10). rclpy is imported when the
node starts, never at import: on a machine without ROS 2 the rest of the package works, and :func:`main` says what
to source.

Shutdown (SIGINT, SIGTERM, or the runtime's loop ending): the runtime commands a stop, and with
``control_enabled`` the node publishes a zero ``Twist`` before rclpy shuts down (rclpy's own signal handler is
off so that the context is still valid for that last message). Exit status: 0 after a run, 1 when the runtime or
a publisher failed, 2 when setup failed.
"""

from __future__ import annotations

import importlib
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from robots.ros2.convert import buffer_sequences

__all__ = ["main", "rclpy_types"]

#: rclpy's names of primitive sequence element types -> ``array`` typecodes (the ones the node's messages use).
_RCLPY_TYPECODES = {"float": "f", "double": "d", "uint8": "B", "octet": "B"}


def _import_rclpy() -> Any:
    try:
        return importlib.import_module("rclpy")
    except ImportError as exc:
        raise SystemExit(f"oniwm_node needs rclpy, which comes with ROS 2: source your ROS 2 install (e.g. "
                         f"'source /opt/ros/jazzy/setup.bash') and the workspace holding this package ({exc}). "
                         "Without ROS 2, 'oniwm ros2-bridge' runs the same node over DDS.") from exc


def _message_class(name: str) -> Any:
    """The rclpy class of the ROS type ``name`` (``pkg/msg/Name``)."""
    package, _, cls_name = name.split("/")
    return getattr(importlib.import_module(f"{package}.msg"), cls_name)


def rclpy_types() -> dict[str, Callable[..., Any]]:
    """ROS type name -> rclpy message constructor for every :data:`~robots.ros2.core.MESSAGE_TYPES` name; primitive
    sequences (``float32[]`` ranges, ``uint8[]`` image data) take the conversions' numpy arrays through the buffer
    protocol (:func:`~robots.ros2.convert.buffer_sequences`)."""
    from robots.ros2.core import MESSAGE_TYPES

    types: dict[str, Callable[..., Any]] = {}
    for name in MESSAGE_TYPES:
        cls = _message_class(name)
        codes = {field: _RCLPY_TYPECODES[kind[len("sequence<"):-1]]
                 for field, kind in cls.get_fields_and_field_types().items()
                 if kind.startswith("sequence<") and kind[len("sequence<"):-1] in _RCLPY_TYPECODES}
        types[name] = buffer_sequences(cls, codes) if codes else cls
    return types


def _declare_params(node: Any) -> Any:
    """Declare every :class:`~robots.ros2.core.NodeParams` field as a ROS parameter (its default; any type, so a
    parameters file may write ``rate_hz: 20``), and return the validated values."""
    import dataclasses

    from rcl_interfaces.msg import ParameterDescriptor

    from robots.ros2.core import NodeParams, params_from_dict

    values = {}
    for f in dataclasses.fields(NodeParams):
        node.declare_parameter(f.name, f.default, ParameterDescriptor(dynamic_typing=True))
        values[f.name] = node.get_parameter(f.name).value
    return params_from_dict(values)


def main(args: list[str] | None = None) -> int:
    """Run the node until SIGINT/SIGTERM or the runtime's loop ends; see the module docstring."""
    rclpy = _import_rclpy()
    from rclpy.qos import qos_profile_sensor_data
    from rclpy.signals import SignalHandlerOptions

    from robots.node import setup_errors
    from robots.ros2.core import (
        GOAL_TYPE,
        MESSAGE_TYPES,
        NODE_NAME,
        OUTPUTS,
        NodeParamsError,
        RosRuntime,
    )

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node(NODE_NAME)
    try:
        params = _declare_params(node)
        classes = {name: _message_class(name) for name in MESSAGE_TYPES}
        publishers = {name: node.create_publisher(classes[ros_type], getattr(params, param), 10)
                      for name, (param, ros_type) in OUTPUTS.items() if name != "cmd_vel" or params.control_enabled}
        core = RosRuntime(params, lambda name, msg: publishers[name].publish(msg), rclpy_types())
    except (*setup_errors(), NodeParamsError) as exc:
        node.get_logger().error(f"cannot start: {exc}")
        node.destroy_node()
        rclpy.try_shutdown()
        return 2
    for kind, topic, ros_type in core.subscriptions:
        node.create_subscription(classes[ros_type], topic, lambda msg, kind=kind: core.receive(kind, msg),
                                 10 if ros_type == GOAL_TYPE else qos_profile_sensor_data)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda _signum, _frame: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    node.get_logger().info(f"{core.parts.backend_name} on {core.parts.model_path} at {core.runtime.config.rate_hz:g} Hz; "
                           f"control {'enabled' if params.control_enabled else 'disabled'}")
    core.start()
    try:
        while not stop.is_set() and core.running and rclpy.ok():
            rclpy.spin_once(node, timeout_sec=0.1)
    finally:
        report = core.close()  # the zero Twist goes out here, while the context is still valid
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        node.destroy_node()
        rclpy.try_shutdown()
    print(json.dumps(report))
    return 1 if report["error"] else 0


if __name__ == "__main__":
    sys.exit(main())
