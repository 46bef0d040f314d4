"""``oniwm bench model``: the world model's compute budget on this machine, in torch eager, one thread.

Measures, for a size preset with the hallway robot's sensors (or a trained checkpoint): parameters and the size
of ``model.safetensors``; the belief update (:meth:`WorldModel.observe`, B = 1, every modality present) p50/p99
in microseconds; a planner's imagination (B samples x H steps of 0.1 s, :meth:`WorldModel.imagine`) alone, with
the pose head, and with the LiDAR and pose heads, p50/p99 in milliseconds; and training throughput (sequences/s
of :func:`train.losses.world_model_loss` + backward + AdamW on synthetic corridor batches). Writes the JSON
report atomically and prints a table. The machine may be shared: figures are what this run saw.

Example::

    oniwm bench model --json bench-model.json [--preset default | --checkpoint RUN] [--quick]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger("train.bench_model")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``model`` to ``oniwm bench``."""
    parser = subparsers.add_parser("model", help="world-model latency (belief update, imagination) and training throughput",
                                   description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", required=True, metavar="FILE", help="write the JSON report here (atomically)")
    parser.add_argument("--preset", default="default", metavar="NAME", help="model size preset (default: default)")
    parser.add_argument("--checkpoint", default=None, metavar="PATH", help="measure a trained model instead of a preset")
    parser.add_argument("--samples", type=int, default=256, metavar="B", help="imagined action sequences (default 256)")
    parser.add_argument("--horizon", type=int, default=10, metavar="H", help="imagined steps (default 10)")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.set_defaults(func=run)


def _percentiles(fn: Callable[[], Any], repeats: int, warmup: int) -> dict[str, float]:
    import numpy as np

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"p50": float(np.percentile(times, 50)), "p99": float(np.percentile(times, 99)), "repeats": repeats}


def measure(preset: str, checkpoint: str | None, samples: int, horizon: int, quick: bool) -> dict[str, Any]:
    """The report (see the module docstring)."""
    import torch

    from train.losses import LossConfig, world_model_loss
    from train.synthetic import SyntheticCorridor, SyntheticSpec
    from worldmodel.checkpoint import load_checkpoint, save_checkpoint
    from worldmodel.model import (
        State,
        WorldModel,
        compute_normalization,
        modalities_from_batch,
        model_config,
        parameter_count,
    )

    torch.set_num_threads(1)
    seq_len, batch_size = 128, 16
    data = SyntheticCorridor(SyntheticSpec(episodes=2, duration_s=seq_len * 0.02 * 2), seq_len)
    batch = {k: torch.stack([data[i % len(data)][k] for i in range(batch_size)]) for k in data[0]}
    if checkpoint:
        model, _ = load_checkpoint(checkpoint)
    else:
        cfg = model_config(preset, modalities_from_batch(batch), 2, True)
        torch.manual_seed(0)
        model = WorldModel(cfg, compute_normalization([batch], cfg))
    with tempfile.TemporaryDirectory() as tmp:
        size = (save_checkpoint(tmp, model, 0) / "model.safetensors").stat().st_size
    reps = 200 if quick else 2000
    model.eval()
    obs = {k: v[:1, 0] for k, v in batch.items() if k.split("_")[0] in ("lidar", "depth", "imu", "odom")}
    for key in ("lidar_mask", "depth_mask", "odom_mask"):
        obs[key] = torch.ones(1)
    report: dict[str, Any] = {"preset": preset if not checkpoint else None, "checkpoint": checkpoint,
                              "parameters": parameter_count(model), "model_safetensors_bytes": size,
                              "threads": 1, "samples": samples, "horizon": horizon, "step_s": 0.1}
    with torch.inference_mode():
        state, action, dt = model.initial_state(1), torch.zeros(1, 2), torch.full((1,), 0.02)
        report["observe_b1_s"] = _percentiles(lambda: model.observe(state, obs, action, dt), reps, 100)
        many = State(torch.randn(samples, model.config.deter), torch.randn(samples, model.config.stoch))
        actions = torch.rand(samples, horizon, 2)
        plan_reps = 20 if quick else 100
        report["imagine_s"] = _percentiles(lambda: model.imagine(many, actions, 0.1), plan_reps, 3)
        report["imagine_pose_s"] = _percentiles(lambda: model.predict(model.imagine(many, actions, 0.1), 0.1, ("pose",)), plan_reps, 3)
        report["imagine_lidar_pose_s"] = _percentiles(
            lambda: model.predict(model.imagine(many, actions, 0.1), 0.1, ("lidar", "pose")), plan_reps, 3)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_cfg = LossConfig()
    steps = 4 if quick else 12

    def train_step(i: int = 0) -> None:
        loss, _ = world_model_loss(model, batch, loss_cfg, loss_cfg.strides[i % len(loss_cfg.strides)])
        opt.zero_grad()
        loss.backward()
        opt.step()

    train_step()
    t0 = time.perf_counter()
    for i in range(steps):
        train_step(i)
    report["train_seq_per_s"] = batch_size * steps / (time.perf_counter() - t0)
    report["train_batch"] = {"batch_size": batch_size, "seq_len": seq_len}
    return report


def run(args: argparse.Namespace) -> int:
    report = measure(args.preset, args.checkpoint, args.samples, args.horizon, args.quick)
    path = Path(args.json)
    with tempfile.NamedTemporaryFile("w", dir=path.parent if str(path.parent) else ".", delete=False, suffix=".tmp") as f:
        json.dump(report, f, indent=1)
    os.replace(f.name, path)
    us = lambda d: f"{d['p50'] * 1e6:8.0f} us  p99 {d['p99'] * 1e6:8.0f} us"  # noqa: E731
    ms = lambda d: f"{d['p50'] * 1e3:8.2f} ms  p99 {d['p99'] * 1e3:8.2f} ms"  # noqa: E731
    b, h = report["samples"], report["horizon"]
    sys.stdout.write(
        f"parameters                     {report['parameters']:>10d}\n"
        f"model.safetensors              {report['model_safetensors_bytes'] / 2**20:10.2f} MiB\n"
        f"observe (B=1)                  {us(report['observe_b1_s'])}\n"
        f"imagine {b}x{h}               {ms(report['imagine_s'])}\n"
        f"  + pose head                  {ms(report['imagine_pose_s'])}\n"
        f"  + lidar and pose heads       {ms(report['imagine_lidar_pose_s'])}\n"
        f"training                       {report['train_seq_per_s']:10.1f} seq/s (B=16, T=128, one thread)\n")
    return 0
