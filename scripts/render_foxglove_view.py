"""Render a Foxglove MCAP written by ``oniwm view-log`` as a PNG: what the shipped layout's 3D panel (top-down,
display frame ``odom``) and Plot panel show at one instant, drawn with matplotlib from the decoded Foxglove
messages (protobuf through the schemas stored in the file, JSON). A rendering for docs/foxglove.md, not a
screenshot of the Foxglove app.

    python scripts/render_foxglove_view.py runs/main/foxglove.mcap --at 12 --out docs/foxglove/view.png
"""

from __future__ import annotations

import argparse
import json
import math
from bisect import bisect_right
from pathlib import Path
from typing import Any, Callable

import numpy as np

Pose2 = tuple[float, float, float]  # x_m, y_m, yaw_rad
DISPLAY_FRAME = "odom"


def _decoders(schema: Any, channel: Any) -> Callable[[bytes], Any]:
    if channel.message_encoding == "json":
        return json.loads
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    pool = descriptor_pool.DescriptorPool()
    for f in descriptor_pb2.FileDescriptorSet.FromString(schema.data).file:
        pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(schema.name)).FromString


def _ns(stamp: Any) -> int:
    return stamp.seconds * 1_000_000_000 + stamp.nanos


def _yaw(q: Any) -> float:
    return 2.0 * math.atan2(q.z, q.w)


def _compose(a: Pose2, b: Pose2) -> Pose2:
    c, s = math.cos(a[2]), math.sin(a[2])
    return a[0] + c * b[0] - s * b[1], a[1] + s * b[0] + c * b[1], a[2] + b[2]


def _inverse(a: Pose2) -> Pose2:
    c, s = math.cos(a[2]), math.sin(a[2])
    return -(c * a[0] + s * a[1]), s * a[0] - c * a[1], -a[2]


def _apply(pose: Pose2, xy: np.ndarray) -> np.ndarray:
    c, s = math.cos(pose[2]), math.sin(pose[2])
    return np.stack([pose[0] + c * xy[:, 0] - s * xy[:, 1], pose[1] + s * xy[:, 0] + c * xy[:, 1]], axis=1)


class Transforms:
    """The ``/tf`` samples: the pose of any frame in the display frame at a time (latest sample at or before)."""

    def __init__(self) -> None:
        self.samples: dict[str, tuple[list[int], list[tuple[str, Pose2]]]] = {}

    def add(self, tf: Any) -> None:
        times, values = self.samples.setdefault(tf.child_frame_id, ([], []))
        times.append(_ns(tf.timestamp))
        values.append((tf.parent_frame_id, (tf.translation.x, tf.translation.y, _yaw(tf.rotation))))

    def _to_root(self, frame: str, t_ns: int) -> Pose2:
        pose: Pose2 = (0.0, 0.0, 0.0)
        while frame in self.samples:
            times, values = self.samples[frame]
            parent, local = values[max(bisect_right(times, t_ns) - 1, 0)]
            pose, frame = _compose(local, pose), parent
        return pose

    def in_display(self, frame: str, t_ns: int) -> Pose2:
        return _compose(_inverse(self._to_root(DISPLAY_FRAME, t_ns)), self._to_root(frame, t_ns))


def _pose2(pose: Any) -> Pose2:
    return pose.position.x, pose.position.y, _yaw(pose.orientation)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mcap", help="a Foxglove MCAP from oniwm view-log")
    parser.add_argument("--at", type=float, default=10.0, metavar="S", help="seconds after the first message")
    parser.add_argument("--out", required=True, metavar="PNG")
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Ellipse
    from mcap.reader import make_reader

    tf = Transforms()
    latest: dict[str, list[tuple[int, Any]]] = {}
    diag: list[tuple[int, dict]] = []
    decoders: dict[int, Callable[[bytes], Any]] = {}
    with open(args.mcap, "rb") as f:
        for schema, channel, message in make_reader(f).iter_messages(log_time_order=True):
            decode = decoders.setdefault(channel.id, _decoders(schema, channel))
            msg = decode(message.data)
            if channel.topic == "/tf":
                for t in msg.transforms:
                    tf.add(t)
            elif channel.topic == "/diag/runtime":
                diag.append((message.log_time, msg))
            else:
                latest.setdefault(channel.topic, []).append((message.log_time, msg))
    t0 = min(v[0][0] for v in latest.values())
    t_at = t0 + round(args.at * 1e9)

    def at(topic: str, before_ns: int = t_at) -> Any:
        found = [m for t, m in latest.get(topic, []) if t <= before_ns]
        return found[-1] if found else None

    fig, (ax, plot) = plt.subplots(1, 2, figsize=(15, 6.5), gridspec_kw={"width_ratios": [1.25, 1]})
    ax.set_facecolor("#15161a")
    for topic, color, label in (("/nav/route", "0.6", "route"), ("/path/ground_truth", "tab:green", "driven (ground truth)"),
                                ("/path/odom", "tab:blue", "driven (odometry)")):
        update = at(topic)
        if update is None:
            continue
        entity = update.entities[0]
        pose = tf.in_display(entity.frame_id, t_at)
        xy = _apply(pose, np.array([[p.x, p.y] for p in entity.lines[0].points]))
        ax.plot(xy[:, 0], xy[:, 1], color=color, lw=1.5 if topic != "/nav/route" else 1, ls="-" if topic != "/nav/route" else "--",
                label=label)
    prediction = at("/prediction/pose")
    stamp = _ns(prediction.entities[0].timestamp)
    base = tf.in_display(prediction.entities[0].frame_id, stamp)
    scan = at("/sensor/lidar", t_at)
    scan_pose = _compose(tf.in_display(scan.frame_id, _ns(scan.timestamp)), _pose2(scan.pose))
    ranges = np.array(scan.ranges)
    angles = np.linspace(scan.start_angle, scan.end_angle, len(ranges))
    ok = np.isfinite(ranges)
    pts = _apply(scan_pose, np.stack([ranges[ok] * np.cos(angles[ok]), ranges[ok] * np.sin(angles[ok])], axis=1))
    ax.scatter(pts[:, 0], pts[:, 1], s=3, c="white", label="/sensor/lidar (scan)", zorder=3)
    horizons = sorted({t.split("/")[3] for t in latest if t.startswith("/prediction/lidar/")}, key=lambda h: float(h[:-1]))
    shades = plt.cm.autumn(np.linspace(0.1, 0.7, len(horizons)))
    for h, shade in zip(horizons, shades):
        mean = next(m for t, m in reversed(latest[f"/prediction/lidar/{h}"]) if _ns(m.timestamp) == stamp)
        band = next(m for t, m in reversed(latest[f"/prediction/lidar/{h}/band"]) if _ns(m.timestamp) == stamp)
        frame_pose = tf.in_display(mean.frame_id, stamp)
        r = np.array(mean.ranges)
        a = np.linspace(mean.start_angle, mean.end_angle, len(r))
        keep = np.isfinite(r)
        xy = _apply(_compose(frame_pose, _pose2(mean.pose)), np.stack([r[keep] * np.cos(a[keep]), r[keep] * np.sin(a[keep])], 1))
        cloud = np.frombuffer(band.data, np.float32).reshape(-1, 4)
        bxy = _apply(_compose(frame_pose, _pose2(band.pose)), cloud[:, :2].astype(np.float64))
        ax.scatter(bxy[:, 0], bxy[:, 1], s=2, color=shade, alpha=0.25, zorder=2)
        ax.scatter(xy[:, 0], xy[:, 1], s=6, color=shade, label=f"predicted scan {h} (mean; band: +-std)", zorder=4)
    entity = prediction.entities[0]
    path = _apply(base, np.array([[p.x, p.y] for p in entity.lines[0].points]))
    ax.plot(path[:, 0], path[:, 1], "-o", color="#ff8000", ms=4, lw=2, label="/prediction/pose (path)", zorder=5)
    for disc in entity.cylinders:
        c = _apply(base, np.array([[disc.pose.position.x, disc.pose.position.y]]))[0]
        ax.add_patch(Ellipse(c, disc.size.x, disc.size.y, angle=math.degrees(base[2]), color="#ff8000", alpha=0.3, zorder=5))
    ax.plot(*base[:2], marker=(3, 0, math.degrees(base[2]) - 90), ms=12, color="cyan", ls="", label="base_link", zorder=6)
    ax.set_xlim(base[0] - 5, base[0] + 5)
    ax.set_ylim(base[1] - 3.5, base[1] + 3.5)
    ax.set_aspect("equal")
    ax.set_xlabel("x in odom (m)")
    ax.set_ylabel("y in odom (m)")
    ax.set_title(f"3D panel (top-down, frame odom) at t = {args.at:g} s")
    ax.legend(loc="lower left", fontsize=7, facecolor="0.9")

    times = np.array([(t - t0) / 1e9 for t, _ in diag])
    for key, label, scale in (("tick_us", "tick (ms)", 1e-3), ("sensor_to_command_est_ms", "sensor->command est. (ms)", 1.0)):
        values = np.array([np.nan if d.get(key) is None else d[key] * scale for _, d in diag])
        plot.plot(times, values, lw=0.8, label=label)
    plot.plot(times, [d["stage_us"].get("plan", np.nan) / 1e3 for _, d in diag], lw=0.8, label="plan stage (ms)")
    plot.axvline(args.at, color="k", lw=0.8, ls=":")
    plot.set_xlabel("time (s)")
    plot.set_ylabel("ms")
    plot.set_title(f"Plot panel: /diag/runtime ({diag[-1][1]['deadline_misses']} deadline misses at the end)")
    plot.legend(fontsize=8)
    fig.suptitle("Rendering of the Foxglove view's data (matplotlib, from oniwm view-log output) - not an app screenshot",
                 fontsize=10)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=90)


if __name__ == "__main__":
    main()
