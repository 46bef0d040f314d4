"""``oniwm run``: the main job. The hallway robot driven by the world model over ONI, on the shipped model.

Three processes that talk only ONI:

- the **sim bridge** (``oniwm sim``): the simulated robot in an unseen hallway (a world seed of the dataset's
  eval split, never trained on), publishing its sensors, ``nav.route`` and ``sim.ground_truth``, taking
  ``actuator.cmd`` from allow-listed CURVE keys;
- the **runtime** (``oniwm node``): the world model (``runtime.model``, default the shipped one) behind
  ``runtime.backend``, ticking at ``runtime.rate_hz``: belief update, command, plan, predictions out;
- this **supervisor**: it creates the run's keys (allow-listing the runtime's), starts both, records every topic of
  both to an MCAP log, shows a live status line, measures the prediction error online (each ``prediction.pose`` /
  ``prediction.lidar`` against the ground-truth pose and the scan that arrive when its horizon has passed), and
  ends the run when the robot reaches the goal (ground truth within ``--goal-radius``; with ``--until-duration``
  it keeps running, a soak test of the control loop), after ``--duration`` sim seconds, or when a process fails. It then stops the runtime (which commands a stop) and the bridge.

Outputs in ``--out DIR``: ``run.mcap`` (the log), ``run.png`` (the hallway with the driven path and the predicted
paths), ``report.json`` (or ``--json FILE``), and the two processes' own reports. JSON fields: ``reached_goal``,
``collisions``, ``time_s``, ``tick_latency_us`` {``p50``, ``p99``, ``max``}, ``deadline_misses``,
``e2e_latency_ms`` {``p50``, ``p99``} (sensor publication to command arrival at the robot, measured by the bridge
by trace id), ``horizons_s`` and, per horizon, ``prediction_rmse_m`` (position) and ``prediction_lidar_rmse_m``.

Example::

    oniwm run --config configs/hallway.yaml [--seed S] [--duration 120] [--json run.json]

Exit status: 0 when the robot reached the goal, 1 when it did not or a process failed (its log is named), 2 on bad
input.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import signal
import subprocess
import sys
import time
from bisect import bisect_left
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np

log = logging.getLogger("train.run_job")

__all__ = ["PredictionScore", "register", "run", "run_job"]

REPORT_FORMAT = "oniwm.run/1"
_NS = 1_000_000_000
_ONIWM = [sys.executable, "-m", "worldmodel.cli"]


@dataclass
class PredictionScore:
    """Online prediction error: predictions wait until what they predicted has happened, then are scored.

    Poses: a ``prediction.pose`` stamped t gives, per horizon h, the pose at t + h relative to the pose at t; the
    truth is the ground-truth pose at t + h in the frame of the ground-truth pose at t (both interpolated from
    ``sim.ground_truth``). Scans: ``prediction.lidar`` at t + h against the first scan stamped within half a
    scan period of t + h, on the predicted beams, where that scan has a return.
    """

    horizons_s: tuple[float, ...]
    beam_stride: int = 1
    max_range_m: float = math.inf
    scan_tolerance_ns: int = 50_000_000
    truth_t: list[int] = field(default_factory=list)
    truth_pose: list[tuple[float, float, float]] = field(default_factory=list)
    pending_pose: list[tuple[int, np.ndarray]] = field(default_factory=list)
    pending_scan: list[tuple[int, int, np.ndarray]] = field(default_factory=list)
    pose_sq: list[list[float]] = field(default_factory=list)
    scan_sq: list[list[float]] = field(default_factory=list)
    paths: list[tuple[int, np.ndarray]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.pose_sq = [[] for _ in self.horizons_s]
        self.scan_sq = [[] for _ in self.horizons_s]

    def add_truth(self, t_ns: int, x: float, y: float, yaw: float) -> None:
        self.truth_t.append(t_ns)
        self.truth_pose.append((x, y, yaw))
        self._score_poses()

    def add_pose_prediction(self, t_ns: int, pose: np.ndarray) -> None:
        self.pending_pose.append((t_ns, np.array(pose, np.float64)))
        if not self.paths or t_ns - self.paths[-1][0] >= _NS:  # one predicted path per second for the plot
            self.paths.append((t_ns, np.array(pose, np.float64)))

    def add_lidar_prediction(self, t_ns: int, ranges: np.ndarray) -> None:
        for i, h in enumerate(self.horizons_s):
            self.pending_scan.append((t_ns + round(h * _NS), i, np.array(ranges[i], np.float64)))

    def add_scan(self, t_ns: int, ranges: np.ndarray) -> None:
        kept = []
        actual = np.asarray(ranges, np.float64)[:: self.beam_stride]
        valid = actual < self.max_range_m
        for due, i, predicted in self.pending_scan:
            if abs(due - t_ns) <= self.scan_tolerance_ns:
                if valid.any() and predicted.shape == actual.shape:
                    self.scan_sq[i].append(float(np.mean((predicted[valid] - actual[valid]) ** 2)))
            elif due > t_ns:
                kept.append((due, i, predicted))
        self.pending_scan = kept

    def _truth_at(self, t_ns: int) -> tuple[float, float, float] | None:
        k = bisect_left(self.truth_t, t_ns)
        if k == 0 or k >= len(self.truth_t):
            return self.truth_pose[k] if k < len(self.truth_t) and self.truth_t[k] == t_ns else None
        t0, t1 = self.truth_t[k - 1], self.truth_t[k]
        w = (t_ns - t0) / (t1 - t0)
        (x0, y0, a0), (x1, y1, a1) = self.truth_pose[k - 1], self.truth_pose[k]
        da = math.atan2(math.sin(a1 - a0), math.cos(a1 - a0))
        return x0 + w * (x1 - x0), y0 + w * (y1 - y0), a0 + w * da

    def _score_poses(self) -> None:
        if not self.pending_pose:
            return
        latest = self.truth_t[-1]
        last_h = round(self.horizons_s[-1] * _NS)
        while self.pending_pose and self.pending_pose[0][0] + last_h <= latest:
            t_ns, pose = self.pending_pose.pop(0)
            start = self._truth_at(t_ns)
            if start is None:
                continue
            c, s = math.cos(start[2]), math.sin(start[2])
            for i, h in enumerate(self.horizons_s):
                end = self._truth_at(t_ns + round(h * _NS))
                if end is None:
                    continue
                dx, dy = end[0] - start[0], end[1] - start[1]
                rx, ry = c * dx + s * dy, -s * dx + c * dy
                self.pose_sq[i].append((pose[i, 0] - rx) ** 2 + (pose[i, 1] - ry) ** 2)

    def rmse(self) -> tuple[list[float | None], list[float | None], list[int]]:
        """Position RMSE (m) and LiDAR RMSE (m) per horizon, and how many predictions were scored per horizon."""
        pose = [math.sqrt(float(np.mean(v))) if v else None for v in self.pose_sq]
        scan = [math.sqrt(float(np.mean(v))) if v else None for v in self.scan_sq]
        return pose, scan, [len(v) for v in self.pose_sq]


def _terminate(proc: subprocess.Popen | None, timeout_s: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def pick_seed(preset: Mapping[str, Any], preset_dir: Path, robot_radius_m: float) -> int:
    """The first world seed of the dataset's eval split (unseen in training) that makes a passable hallway."""
    from sim.config import sim_config_from_dict
    from sim.hallway import ImpossibleWorld, generate_hallway
    from train.eval_nav import nav_seeds

    world = sim_config_from_dict(preset, preset_dir).world
    for seed in nav_seeds(20, preset.get("dataset")):
        try:
            generate_hallway(replace(world, seed=seed), robot_radius_m)
            return seed
        except ImpossibleWorld:
            continue
    raise ValueError("no passable eval-split hallway among the first 20 eval seeds; check the world section")


def run_job(config_path: Path, out: Path, *, seed: int | None = None, duration_s: float = 120.0,
            model: str | None = None, backend: str | None = None, goal_radius_m: float = 0.5,
            until_duration: bool = False, status: bool = True, view_port: int | None = None) -> dict[str, Any]:
    """Run the main job (module docstring); returns the report (also written to ``out/report.json``).
    ``until_duration``: keep running after the goal until ``duration_s`` (a soak test of the control loop).
    ``view_port``: also stream every message to Foxglove on this port (robots/foxglove_view.py)."""
    import yaml
    import zmq

    from oni.bridge_client import (
        connect_sensor_subscriber,
        ensure_client_keys,
        read_bridge_info,
    )
    from oni.files import write_json
    from oni.mcap_log import LogWriter
    from oni.transport import Subscriber
    from robots.node import RUNTIME_KEY_NAME
    from sim.config import sim_config_from_dict
    from worldmodel.runtime.loop import OUTPUT_TOPICS

    preset = yaml.safe_load(config_path.read_text()) or {}
    sim_config = sim_config_from_dict(preset, config_path.parent)
    robot = sim_config.load_robot()
    seed = pick_seed(preset, config_path.parent, robot.base.radius_m) if seed is None else seed
    out.mkdir(parents=True, exist_ok=True)
    keys_dir = out / "keys"
    shutil.rmtree(keys_dir, ignore_errors=True)
    ensure_client_keys(keys_dir, RUNTIME_KEY_NAME)  # allow-listed before the bridge reads its allow-list
    bridge_info, runtime_info = out / "bridge.json", out / "runtime.json"
    bridge_report, runtime_report = out / "bridge-report.json", out / "runtime-report.json"
    for path in (bridge_info, runtime_info, bridge_report, runtime_report):
        path.unlink(missing_ok=True)
    log_path = out / "run.mcap"
    log_path.unlink(missing_ok=True)
    view = None
    if view_port is not None:
        from robots.foxglove_view import LiveView

        view = LiveView(view_port, robot=robot)
        log.info("Foxglove live view: open %s in Foxglove (layout: docs/foxglove/oniwm-layout.json)", view.url)
    logs = {"bridge": open(out / "bridge.log", "w"), "runtime": open(out / "runtime.log", "w")}
    bridge = runtime = None
    context = zmq.Context.instance()
    lidar = robot.sensors_of_kind("lidar")[0]
    runtime_section = dict(preset.get("runtime") or {})
    stride = int(dict(runtime_section.get("backend") or {}).get("beam_stride", 1))
    horizons = tuple(float(h) for h in runtime_section.get("horizons_s", (0.5, 1.0, 2.0)))
    score = PredictionScore(horizons, stride, lidar.params.range_max_m, round(0.5 / lidar.rate_hz * _NS))
    driven: list[tuple[float, float]] = []
    end_reason = "duration"
    reached_s: float | None = None
    t_wall0 = time.monotonic()
    writer = None
    subs: list[Subscriber] = []
    last_truth: dict[str, Any] = {}
    last_diag: dict[str, Any] = {}
    try:
        bridge = subprocess.Popen([*_ONIWM, "sim", "--config", str(config_path), "--seed", str(seed), "--info-file",
                                   str(bridge_info), "--keys-dir", str(keys_dir), "--duration", f"{duration_s + 5:g}",
                                   "--json", str(bridge_report), "--wait", "3"],
                                  stdout=subprocess.DEVNULL, stderr=logs["bridge"])
        info = read_bridge_info(bridge_info, timeout_s=60)
        node = [*_ONIWM, "node", "--config", str(config_path), "--bridge-info", str(bridge_info), "--info-file",
                str(runtime_info), "--json", str(runtime_report), "--quiet"]
        if model:
            node += ["--model", model]
        if backend:
            node += ["--backend", backend]
        runtime = subprocess.Popen(node, stdout=subprocess.DEVNULL, stderr=logs["runtime"])
        sensors = connect_sensor_subscriber(info, context=context)
        subs.append(sensors)
        deadline = time.monotonic() + 120
        while not runtime_info.exists():
            if runtime.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the runtime did not start (exit {runtime.poll()}); see {out / 'runtime.log'}")
            time.sleep(0.05)
        outputs = Subscriber(context=context)
        for topic in OUTPUT_TOPICS:
            outputs.subscribe(topic, "diagnostic")
        outputs.connect(json.loads(runtime_info.read_text())["endpoint"])
        subs.append(outputs)
        writer = LogWriter(log_path, {"run": {"seed": str(seed), "config": str(config_path.resolve()),
                                              "robot": robot.name}}, validate=False)
        epoch = None
        next_status = 0.0
        while True:
            got = False
            for sub in subs:
                while (msg := sub.recv(timeout_ms=0)) is not None:
                    got = True
                    writer.write(msg)
                    if view is not None:
                        view.on_message(msg)
                    topic, data, stamp = msg.topic, msg.data, msg.header.stamp_ns
                    if topic == "sim.ground_truth":
                        epoch = epoch or stamp
                        last_truth = dict(data, t_s=(stamp - epoch) / _NS)
                        driven.append((float(data["x_m"]), float(data["y_m"])))
                        score.add_truth(stamp, float(data["x_m"]), float(data["y_m"]), float(data["yaw_rad"]))
                    elif topic == "prediction.pose":
                        score.add_pose_prediction(stamp, data["pose"])
                    elif topic == "prediction.lidar":
                        score.add_lidar_prediction(stamp, data["ranges_m"])
                    elif topic == lidar.topic:
                        score.add_scan(stamp, data["ranges_m"])
                    elif topic == "diag.runtime":
                        last_diag = {k: data[k] for k in ("tick", "tick_us", "deadline_misses", "stopped", "stop_reason")}
            writer.flush_if_due()
            if last_truth and last_truth["goal_distance_m"] <= goal_radius_m and reached_s is None:
                reached_s = last_truth["t_s"]
                if not until_duration:
                    break
            if last_truth and last_truth["t_s"] >= duration_s:
                break
            if bridge.poll() is not None or runtime.poll() is not None:
                end_reason = "process exited"
                break
            if status and time.monotonic() >= next_status:
                next_status = time.monotonic() + 0.2  # 5 Hz: a terminal line, not a log
                _status_line(last_truth, last_diag, score)
            if not got:
                time.sleep(0.002)
    finally:
        if status:
            sys.stderr.write("\n")
        _terminate(runtime)
        _terminate(bridge)
        for sub in subs:
            sub.close()
        if writer is not None:
            writer.close()
        if view is not None:
            view.close()
        for f in logs.values():
            f.close()
    bridge_doc = _read_json(bridge_report) or {}
    runtime_doc = _read_json(runtime_report) or {}
    pose_rmse, scan_rmse, scored = score.rmse()
    tick = runtime_doc.get("tick_latency_us") or {}
    e2e = bridge_doc.get("e2e_latency_ms") or {}
    report = {
        "format": REPORT_FORMAT,
        "seed": seed,
        "robot": robot.name,
        "model": model or runtime_section.get("model", "default"),
        "backend": (runtime_doc.get("node") or {}).get("backend"),
        "end_reason": "goal" if reached_s is not None and not until_duration else end_reason,
        "reached_goal": reached_s is not None,
        "time_to_goal_s": reached_s,
        "collisions": int(bridge_doc.get("collisions", last_truth.get("collisions", 0))),
        "time_s": float(last_truth.get("t_s", 0.0)),
        "goal_distance_m": last_truth.get("goal_distance_m"),
        "wall_s": time.monotonic() - t_wall0,
        "tick_latency_us": {"p50": tick.get("p50"), "p99": tick.get("p99"), "max": tick.get("max")},
        "deadline_misses": runtime_doc.get("deadline_misses"),
        "e2e_latency_ms": {"p50": e2e.get("p50"), "p99": e2e.get("p99"), "max": e2e.get("max"), "count": e2e.get("count")},
        "horizons_s": list(horizons),
        "prediction_rmse_m": pose_rmse,
        "prediction_lidar_rmse_m": scan_rmse,
        "predictions_scored": scored,
        "runtime_stops": runtime_doc.get("stops"),
        "runtime_error": runtime_doc.get("error"),
        "plan_ms": runtime_doc.get("plan_ms"),
        "stages_us": runtime_doc.get("stages_us"),
        "refused_inputs": runtime_doc.get("refused"),
        "log": str(log_path),
        "png": str(out / "run.png"),
        "bridge": bridge_doc,
        "runtime": runtime_doc,
    }
    from sim.hallway import generate_hallway

    world = generate_hallway(replace(sim_config.world, seed=seed), robot.base.radius_m)
    plot_run(world, np.array(driven).reshape(-1, 2), score.paths, score, out / "run.png",
             f"seed {seed}: {'goal reached' if report['reached_goal'] else end_reason} in "
             f"{reached_s if reached_s is not None else report['time_s']:.1f} s, "
             f"{report['collisions']} collisions")
    write_json(out / "report.json", report)
    return report


def _status_line(truth: Mapping[str, Any], diag: Mapping[str, Any], score: PredictionScore) -> None:
    if not truth:
        return
    pose, _, _ = score.rmse()
    err = " ".join(f"{h:g}s {e:.2f}" if e is not None else f"{h:g}s -" for h, e in zip(score.horizons_s, pose))
    state = f"STOP {diag.get('stop_reason', '')}" if diag.get("stopped") else "driving"
    sys.stderr.write(f"\rt {truth['t_s']:6.1f} s  goal {truth['goal_distance_m']:5.1f} m  v {truth['v_mps']:+.2f}  "
                     f"coll {truth['collisions']}  tick {diag.get('tick_us', 0):6.0f} us  misses "
                     f"{diag.get('deadline_misses', 0)}  pos err {err}  {state:<32.32s}")
    sys.stderr.flush()


def plot_run(world: Any, driven_xy: np.ndarray, paths: list[tuple[int, np.ndarray]], score: PredictionScore,
             path: Path, title: str) -> None:
    """PNG: the hallway's occupancy grid, the driven path (ground truth), and one predicted path per second (the
    runtime's predictions at its horizons, placed at the true pose they were made from)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from oni.files import atomic_write

    grid = world.grid
    h, w = grid.occupied.shape
    ox, oy = grid.origin_xy_m
    extent = (ox, ox + w * grid.resolution_m, oy, oy + h * grid.resolution_m)
    fig, ax = plt.subplots(figsize=(10, 10 * (extent[3] - extent[2]) / max(extent[1] - extent[0], 1e-6) + 1.0))
    ax.imshow(grid.occupied, origin="lower", extent=extent, cmap="Greys", alpha=0.7, interpolation="nearest")
    first = True
    for t_ns, pose in paths:
        start = score._truth_at(t_ns)
        if start is None:
            continue
        c, s = math.cos(start[2]), math.sin(start[2])
        xs = [start[0], *(start[0] + c * p[0] - s * p[1] for p in pose)]
        ys = [start[1], *(start[1] + s * p[0] + c * p[1] for p in pose)]
        ax.plot(xs, ys, "-o", color="tab:orange", ms=2, lw=1, alpha=0.8, label="predicted (per second)" if first else None)
        first = False
    if len(driven_xy):
        ax.plot(driven_xy[:, 0], driven_xy[:, 1], color="tab:blue", lw=2, label="driven (ground truth)")
    ax.plot(world.start.x_m, world.start.y_m, "g^", ms=10, label="start")
    ax.plot(*world.goal_xy_m, "r*", ms=14, label="goal")
    ax.set_aspect("equal")
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    ax.set_title(title)
    ax.legend(loc="best", fontsize=8)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100, bbox_inches="tight")
    plt.close(fig)
    atomic_write(path, tmp.read_bytes())
    tmp.unlink()


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``run`` to ``oniwm``."""
    parser = subparsers.add_parser("run", help="the main job: the hallway robot driven by the world model over ONI",
                                   description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/hallway.yaml", metavar="YAML", help="preset (default %(default)s)")
    parser.add_argument("--seed", type=int, default=None, help="world seed (default: the first eval-split seed)")
    parser.add_argument("--duration", type=float, default=120.0, metavar="S", help="sim seconds at most (default 120)")
    parser.add_argument("--model", default=None, metavar="DIR", help="override runtime.model (default: the shipped one)")
    parser.add_argument("--backend", default=None, choices=("torch", "onnxruntime", "tensorrt"), help="override runtime.backend.name")
    parser.add_argument("--out", default="runs/main", metavar="DIR", help="log, PNG and reports (default %(default)s)")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the report here (atomically)")
    parser.add_argument("--goal-radius", type=float, default=0.5, metavar="M", help="goal reached within this (default 0.5)")
    parser.add_argument("--until-duration", action="store_true",
                        help="keep running after the goal until --duration (a soak test of the control loop)")
    parser.add_argument("--no-status", action="store_true", help="no live status line")
    parser.add_argument("--view", action="store_true", help="stream to Foxglove over WebSocket (the view extra)")
    parser.add_argument("--view-port", type=int, default=8765, metavar="PORT", help="the --view port (default 8765)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``oniwm run``; see the module docstring for the exit status."""
    import yaml

    from oni.files import write_json
    from robots.description import DescriptionError

    config = Path(args.config)
    if not config.is_file():
        log.error("no preset %s", config)
        return 2
    try:
        report = run_job(config, Path(args.out), seed=args.seed, duration_s=args.duration, model=args.model,
                         backend=args.backend, goal_radius_m=args.goal_radius, until_duration=args.until_duration,
                         status=not args.no_status, view_port=args.view_port if args.view else None)
    except (OSError, ImportError, yaml.YAMLError, DescriptionError, ValueError) as exc:
        log.error("oniwm run: %s", exc)
        return 2
    except RuntimeError as exc:  # a process that did not start (its log is named), a bridge that never appeared
        log.error("oniwm run: %s", exc)
        return 1
    if args.json:
        write_json(args.json, report)
    print(table(report))
    return 0 if report["reached_goal"] else 1


def table(report: Mapping[str, Any]) -> str:
    """The report for people."""
    def fmt(v: Any, spec: str = ".2f") -> str:
        return "-" if v is None else format(v, spec)

    tick, e2e = report["tick_latency_us"], report["e2e_latency_ms"]
    lines = [
        f"seed {report['seed']} ({report['robot']}, model {report['model']}, backend {report['backend']})",
        f"reached goal      {'yes' if report['reached_goal'] else 'NO (' + report['end_reason'] + ')'}",
        f"time              {report['time_s']:.1f} s sim ({report['wall_s']:.1f} s wall), goal at "
        f"{fmt(report['time_to_goal_s'], '.1f')} s",
        f"collisions        {report['collisions']}",
        f"tick latency      p50 {fmt(tick['p50'], '.0f')} us, p99 {fmt(tick['p99'], '.0f')} us, max {fmt(tick['max'], '.0f')} us",
        f"deadline misses   {report['deadline_misses']}",
        f"sensor->command   p50 {fmt(e2e['p50'])} ms, p99 {fmt(e2e['p99'])} ms ({e2e['count'] or 0} commands)",
        "prediction error  " + ", ".join(f"{h:g} s: pos {fmt(p)} m, lidar {fmt(s)} m" for h, p, s in
                                         zip(report["horizons_s"], report["prediction_rmse_m"],
                                             report["prediction_lidar_rmse_m"])),
        f"log               {report['log']}",
        f"plot              {report['png']}",
    ]
    return "\n".join(lines)

