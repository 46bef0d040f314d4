"""``oniwm sim``: the simulated robot as an ONI node (see :mod:`sim.bridge`).

::

    oniwm sim --config configs/hallway.yaml [--realtime | --fast] [--duration S] [--seed S]
              [--keys-dir DIR] [--allow KEY|FILE|DIR ...] [--info-file PATH]
              [--sensor-endpoint E] [--command-endpoint E] [--wait S]

Publishes every sensor of the preset's robot at its rate and ``sim.ground_truth``, and takes ``actuator.cmd``
from allow-listed CURVE keys. Prints where it listens and the path of the bridge info file (for the runtime),
a status line on stderr every second, and at the end a table (stderr) and the JSON report (stdout). Stops at
``--duration`` seconds of sim time, or on SIGINT/SIGTERM; either way it closes its sockets and removes the
info file. Exit status: 0 after a run, 2 if the bridge cannot start (the message says why).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from typing import Any

from oni.cli import on_stop_signals

log = logging.getLogger("sim.cli")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("sim", help="run the simulated robot as an ONI node: sensors out, actuator.cmd in")
    parser.add_argument("--config", default="configs/hallway.yaml", metavar="YAML", help="preset (default %(default)s)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--realtime", dest="mode", action="store_const", const="realtime", help="sim time = wall time (default)"
    )
    mode.add_argument(
        "--fast", dest="mode", action="store_const", const="fast",
        help="as fast as possible (stamps run ahead of the wall clock); for tests and collection, not live control",
    )
    parser.set_defaults(mode="realtime")
    parser.add_argument("--duration", type=float, default=None, metavar="S", help="stop after S seconds of sim time")
    parser.add_argument("--seed", type=int, default=None, help="world and episode seed (default: the preset's)")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the final report here (atomically)")
    group = parser.add_argument_group("endpoints and keys (default: the preset's bridge section)")
    group.add_argument("--sensor-endpoint", metavar="E", help="bind the sensor publisher here")
    group.add_argument("--command-endpoint", metavar="E", help="bind the actuator.cmd subscriber here")
    group.add_argument("--keys-dir", metavar="DIR", help="bridge key pair and allowed/*.key client keys")
    group.add_argument("--allow", nargs="+", default=[], metavar="KEY|FILE|DIR", help="more allow-listed client keys")
    group.add_argument("--info-file", metavar="PATH", help="where to write the bridge info JSON")
    group.add_argument(
        "--wait", type=float, default=None, metavar="S", help="seconds for subscribers to connect before sim t = 0"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """``oniwm sim``: 0 after a run (to ``--duration`` or a signal), 2 if the bridge cannot start."""
    import yaml
    import zmq

    from oni.bridge_client import BridgeError
    from oni.errors import SecurityError
    from robots.description import DescriptionError
    from sim.bridge import SimBridge, load_bridge_settings
    from sim.config import load_sim_config

    try:
        config = load_sim_config(args.config)
        settings = load_bridge_settings(args.config)
        overrides: dict[str, Any] = {
            name: value
            for name, value in (
                ("sensor_endpoint", args.sensor_endpoint),
                ("command_endpoint", args.command_endpoint),
                ("keys_dir", args.keys_dir),
                ("info_file", args.info_file),
                ("start_wait_s", args.wait),
            )
            if value is not None
        }
        settings = replace(settings, allow=(*settings.allow, *args.allow), **overrides)
        bridge = SimBridge(config, settings, seed=args.seed, mode=args.mode, config_path=args.config)
    except (OSError, yaml.YAMLError, DescriptionError, BridgeError, SecurityError, zmq.ZMQError) as exc:
        log.error("cannot start the sim bridge: %s", exc)
        return 2
    info = bridge.info
    log.info(
        "%s in a seed-%d hallway (%s): sensors on %s, actuator.cmd on %s (CURVE, %d allowed key(s))",
        bridge.robot.name, bridge.seed, args.mode, info.sensor_endpoint, info.command_endpoint,
        info.raw["commands"]["allowed_keys"],
    )
    log.info("bridge info: %s", bridge.info_path)

    try:
        with on_stop_signals(bridge.request_stop):
            report = bridge.run(args.duration, on_status=_print_status)
    finally:
        bridge.close()
    _print_summary(report)
    print(json.dumps(report))
    if args.json:
        from oni.files import write_json

        write_json(args.json, report)
    return 0


def _print_status(report: dict[str, Any]) -> None:
    counts = " ".join(f"{t.split('.')[-1]} {v['published']}" for t, v in report["topics"].items())
    cmd = report["commands"]
    rtf = report["realtime_factor"]
    rejected, denied = sum(cmd["rejected"].values()), sum(cmd["denied_keys"].values())
    sys.stderr.write(
        f"sim {report['sim_s']:7.2f} s  x{rtf or 0:5.2f}  {counts}  cmd {cmd['received']}"
        f" (rejected {rejected}, clipped {cmd['clipped']}, denied {denied})"
        f"  timeouts {report['command_timeouts']}{' BRAKING' if report['braking'] else ''}"
        f"  collisions {report['collisions']}  late {report['late_steps']}\n"
    )
    sys.stderr.flush()


def _print_summary(report: dict[str, Any]) -> None:
    sim_s = report["sim_s"]
    rows = [
        (t, v["published"], v["dropped"], f"{(v['published'] - 1) / sim_s:.1f}" if sim_s else "-")
        for t, v in report["topics"].items()
    ]
    header = ("topic", "published", "dropped", "Hz (sim)")
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in (header, *rows)]
    cmd = report["commands"]
    rtf = report["realtime_factor"]
    lines.append(
        f"{sim_s:.2f} s of sim in {report['wall_s']:.2f} s ({f'x{rtf:.2f}' if rtf else '-'} real time, "
        f"{report['mode']}); "
        f"late steps {report['late_steps']} (max lag {report['max_lag_ms']:.1f} ms)"
    )
    lines.append(
        f"actuator.cmd: {cmd['received']} received from {cmd['sources'] or 'nobody'}, rejected {cmd['rejected'] or 0}, "
        f"expired {cmd['expired']}, clipped {cmd['clipped']}, denied keys {cmd['denied_keys'] or 'none'}; "
        f"command timeouts {report['command_timeouts']}; collisions {report['collisions']}"
    )
    sys.stderr.write("\n".join(lines) + "\n")
