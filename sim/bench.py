"""``oniwm bench sim``: simulated seconds per wall second with the full sensor suite, on one core.

Each run builds a hallway (one seed per run) and drives the shipped robot through a weaving pattern at the
control rate with every sensor at its rate (:func:`sim.robot_sim.measure_speed`), then, on the same model and
pattern, steps the physics alone with no sensors (the reference: the ratio of the two is what the sensors
cost). Reports the median and p99 over runs of the wall time per simulated second, the median
``sim_s_per_wall_s``, the per-sensor breakdown and the target (at least 20x real time per core). Writes the
JSON report atomically and prints a table. One process, single-threaded: the figure is per core.

Example::

    oniwm bench sim --json bench-sim.json [--quick]
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import logging
import math
import os
import platform
import sys
import time
from typing import Any

from oni.files import write_json

log = logging.getLogger("sim.bench")

#: The issue's target: simulated seconds per wall second, full sensor suite, one core.
TARGET_SIM_S_PER_WALL_S = 20.0
#: (runs, simulated seconds per run) for a full and a quick run. A quick run finishes in a few seconds.
FULL_PLAN = (8, 15.0)
QUICK_PLAN = (3, 3.0)

METHOD = {
    "run": "one hallway per run (HallwayParams(seed=run index)), the shipped turtlebot4 with every sensor at its "
    "rate, commands (0.35 m/s, 0.9 sin(0.7 t) rad/s) at 50 Hz: sim.robot_sim.measure_speed; world generation "
    "and model compilation excluded",
    "reference": "physics only: the same compiled model and command pattern stepped with mujoco.mj_step, no "
    "sensors, no mj_forward per sample, no Python per physics step",
    "statistics": "wall_ms_per_sim_s median and p99 (linear interpolation) over runs; sim_s_per_wall_s is the "
    "median over runs; per-sensor and physics breakdowns are medians over runs",
    "core": "one process, single-threaded; the machine may be shared, so figures are what this run saw",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``sim`` to ``oniwm bench``."""
    parser = subparsers.add_parser(
        "sim",
        help="simulated seconds per wall second, full sensor suite, one core",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--json", required=True, metavar="FILE", help="write the JSON report here (atomically)")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_PLAN[0]} short runs instead of {FULL_PLAN[0]}")
    parser.add_argument(
        "--config", default=None, metavar="YAML", help="preset with robot, world and sim sections (default: the shipped ones)"
    )
    parser.set_defaults(func=run)


def physics_only(seconds: float, seed: int, robot: Any, world_params: Any, settings: Any,
                 control_hz: float = 50.0) -> dict[str, Any]:
    """Wall time of stepping the same scene as :func:`sim.robot_sim.measure_speed` with physics alone.

    Returns ``sim_s``, ``wall_s``, ``sim_s_per_wall_s`` and ``wall_ms_per_sim_s``.
    """
    import mujoco

    from robots.description import MjcfNames
    from sim.hallway import generate_hallway
    from sim.robot_sim import scene_mjcf

    world = generate_hallway(world_params, robot.base.radius_m)
    model = mujoco.MjModel.from_xml_string(scene_mjcf(world, robot, settings.physics_hz))
    data = mujoco.MjData(model)
    names = MjcfNames()
    qpos = [int(model.jnt_qposadr[model.joint(j).id]) for j in (names.joint_x, names.joint_y, names.joint_yaw)]
    data.qpos[qpos] = (world.start.x_m, world.start.y_m, world.start.yaw_rad)
    mujoco.mj_forward(model, data)
    act_v, act_omega = model.actuator(names.act_forward).id, model.actuator(names.act_yaw).id
    steps_per_tick = round(settings.physics_hz / control_hz)
    ticks = int(round(seconds * control_hz))
    t0 = time.perf_counter()
    for k in range(ticks):
        data.ctrl[act_v] = 0.35
        data.ctrl[act_omega] = 0.9 * math.sin(0.7 * k / control_hz)
        mujoco.mj_step(model, data, steps_per_tick)
    wall = time.perf_counter() - t0
    sim_s = ticks * steps_per_tick / settings.physics_hz
    return {"sim_s": sim_s, "wall_s": wall, "sim_s_per_wall_s": sim_s / wall, "wall_ms_per_sim_s": 1e3 * wall / sim_s}


def _percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation between order statistics."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _median(values: list[float]) -> float:
    return _percentile(values, 50.0)


def measure(runs: int, seconds: float, robot: Any, world_params: Any, settings: Any) -> dict[str, Any]:
    """``runs`` runs of ``seconds`` simulated seconds each (seed = run index): the per-run rows and the
    statistics over them (see :data:`METHOD`)."""
    from dataclasses import replace

    from sim.robot_sim import measure_speed

    rows = []
    for seed in range(runs):
        params = replace(world_params, seed=seed)
        full = measure_speed(seconds, seed=seed, robot=robot, world=params, settings=settings)
        ref = physics_only(seconds, seed, robot, params, settings)
        rows.append({
            "seed": seed,
            "sim_s": full["sim_s"],
            "wall_s": round(full["wall_s"], 6),
            "sim_s_per_wall_s": round(full["sim_s_per_wall_s"], 3),
            "wall_ms_per_sim_s": round(1e3 * full["wall_s"] / full["sim_s"], 4),
            "physics_ms_per_sim_s": round(full["physics_ms_per_sim_s"], 4),
            "sensor_ms_per_sim_s": {k: round(v, 4) for k, v in full["sensor_ms_per_sim_s"].items()},
            "other_ms_per_sim_s": round(full["other_ms_per_sim_s"], 4),
            "readings": full["readings"],
            "physics_only_wall_ms_per_sim_s": round(ref["wall_ms_per_sim_s"], 4),
            "physics_only_sim_s_per_wall_s": round(ref["sim_s_per_wall_s"], 3),
        })
    wall_ms = [r["wall_ms_per_sim_s"] for r in rows]
    topics = list(rows[0]["sensor_ms_per_sim_s"])
    ref_ms = _median([r["physics_only_wall_ms_per_sim_s"] for r in rows])
    results = {
        "runs": len(rows),
        "wall_ms_per_sim_s": {
            "median": round(_median(wall_ms), 4),
            "p99": round(_percentile(wall_ms, 99), 4),
            "min": round(min(wall_ms), 4),
            "max": round(max(wall_ms), 4),
        },
        "sim_s_per_wall_s": round(_median([r["sim_s_per_wall_s"] for r in rows]), 2),
        "sim_s_per_wall_s_at_p99": round(1e3 / _percentile(wall_ms, 99), 2),
        "physics_ms_per_sim_s": round(_median([r["physics_ms_per_sim_s"] for r in rows]), 4),
        "sensor_ms_per_sim_s": {t: round(_median([r["sensor_ms_per_sim_s"][t] for r in rows]), 4) for t in topics},
        "other_ms_per_sim_s": round(_median([r["other_ms_per_sim_s"] for r in rows]), 4),
        "physics_only": {
            "wall_ms_per_sim_s": round(ref_ms, 4),
            "sim_s_per_wall_s": round(_median([r["physics_only_sim_s_per_wall_s"] for r in rows]), 2),
        },
        "full_over_physics_only": round(_median(wall_ms) / ref_ms, 2),
    }
    return {"rows": rows, "results": results}


def _machine() -> dict[str, Any]:
    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "cpu_count": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "mujoco": version("mujoco"),
        "numpy": version("numpy"),
    }


def format_table(report: dict[str, Any]) -> str:
    """The report for people: the statistics, the per-sensor breakdown and the target verdict."""
    res = report["results"]
    wall = res["wall_ms_per_sim_s"]
    lines = [
        f"bench sim ({report['mode']}: {res['runs']} runs x {report['plan']['sim_s_per_run']:g} sim s, "
        f"robot {report['plan']['robot']}, physics {report['plan']['physics_hz']} Hz)",
        "",
        f"  {'wall ms per sim s':<28} median {wall['median']:8.2f}   p99 {wall['p99']:8.2f}   "
        f"min {wall['min']:8.2f}   max {wall['max']:8.2f}",
        f"  {'sim s per wall s':<28} median {res['sim_s_per_wall_s']:8.1f}   "
        f"at p99 {res['sim_s_per_wall_s_at_p99']:.1f}",
        "",
        f"  {'where the time goes':<28} {'ms per sim s':>12}",
        f"  {'physics (step + forward)':<28} {res['physics_ms_per_sim_s']:12.2f}",
    ]
    for topic, ms in res["sensor_ms_per_sim_s"].items():
        rate = report["plan"]["sensors"].get(topic)
        lines.append(f"  {topic + (f' ({rate:g} Hz)' if rate else ''):<28} {ms:12.2f}")
    lines.append(f"  {'other (scheduling, Python)':<28} {res['other_ms_per_sim_s']:12.2f}")
    ref = res["physics_only"]
    lines += [
        "",
        f"  reference, physics only: {ref['wall_ms_per_sim_s']:.2f} ms per sim s "
        f"({ref['sim_s_per_wall_s']:.0f}x real time); "
        f"the full suite costs {res['full_over_physics_only']:.1f}x that",
        "",
        "targets",
    ]
    for target in report["targets"]:
        verdict = "PASS" if target["passed"] else "FAIL"
        lines.append(
            f"  {verdict}  {target['name']:<28} {target['value']:8.1f} (threshold {target['threshold']:g})  "
            f"{target['description']}"
        )
    machine = report["machine"]
    lines.append(f"\n{report['elapsed_s']:.1f} s, {machine['cpu_count']} CPUs, load {machine['load_avg_1m']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; 0 after a complete run (the target is reported, not enforced), 2 on a bad preset."""
    from robots import robot_path
    from robots.description import DescriptionError, load_robot
    from sim.config import SimSettings, load_sim_config
    from sim.hallway import HallwayParams

    try:
        if args.config:
            cfg = load_sim_config(args.config)
            robot, world, settings = cfg.load_robot(), cfg.world, cfg.sim
        else:
            robot, world, settings = load_robot(robot_path("turtlebot4")), HallwayParams(), SimSettings()
    except (OSError, DescriptionError) as exc:
        log.error("%s", exc)
        return 2
    runs, seconds = QUICK_PLAN if args.quick else FULL_PLAN
    started = time.monotonic()
    started_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    measured = measure(runs, seconds, robot, world, settings)
    value = measured["results"]["sim_s_per_wall_s"]
    report = {
        "bench": "sim",
        "mode": "quick" if args.quick else "full",
        "started_at": started_at,
        "elapsed_s": round(time.monotonic() - started, 2),
        "machine": _machine(),
        "method": METHOD,
        "plan": {
            "runs": runs,
            "sim_s_per_run": seconds,
            "robot": robot.name,
            "physics_hz": settings.physics_hz,
            "sensor_noise": settings.sensor_noise,
            "control_hz": 50.0,
            "sensors": {s.topic: s.rate_hz for s in robot.sensors},
        },
        "results": measured["results"],
        "runs": measured["rows"],
        "targets": [{
            "name": "sim_realtime_factor",
            "description": "median simulated s per wall s, full sensor suite, one core",
            "value": value,
            "threshold": TARGET_SIM_S_PER_WALL_S,
            "passed": value >= TARGET_SIM_S_PER_WALL_S,
        }],
    }
    write_json(args.json, report)
    sys.stdout.write(format_table(report) + "\n")
    return 0
