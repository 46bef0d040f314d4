"""``oniwm train``: train the world model on logged sequences, on one process or many (torchrun + DDP).

::

    oniwm train --config configs/hallway.yaml --data data/hallway --out runs/hallway
    oniwm train --config configs/hallway.yaml --data data/hallway --out runs/hallway --resume
    torchrun --nproc_per_node 2 -m train.train --config configs/hallway.yaml --data data/hallway --out runs/hallway

The preset's ``model:`` section picks a size preset and overrides (:mod:`worldmodel.model.config`); its
``train:`` section loads into :class:`TrainConfig` (with ``loss:`` into :class:`train.losses.LossConfig`).
Modalities, action size and the pose head come from the data; normalization statistics from the dataset's
``normalization.json`` where it has them, the rest computed from ``norm_batches`` batches.

Each step draws ``batch_size`` random windows per process (reproducibly: the draw, the modality dropout and the
open-loop starts are seeded by (seed, rank, step), so a resumed run continues exactly as an uninterrupted one
would), computes :func:`train.losses.world_model_loss` with the open-loop stride cycling through
``loss.strides``, and takes an AdamW step with gradient clipping and a warmup + cosine (or constant) learning
rate. Under torchrun every process holds a replica wrapped in DistributedDataParallel (gloo on CPU, nccl on
CUDA); gradients are averaged across processes, so replicas stay identical, which the run checks at the end.

Rank 0 writes ``RUN/metrics.jsonl`` (one JSON object per ``log_every`` steps: its loss terms averaged over
those steps, open-loop terms per stride as ``ol_<term>_s<stride>``, learning rate, last gradient norm, sequences/s over all processes; plus ``event`` lines), checkpoints every ``checkpoint_every``
steps and at the end (:mod:`worldmodel.checkpoint`), and shows a progress bar on stderr. A non-finite loss or
gradient stops the run, naming the step and the terms, and leaves the last good checkpoint as ``latest``.
Exit status: 0 done, 1 non-finite loss, 2 bad command line, config or data, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

log = logging.getLogger("train.train")

__all__ = ["TrainConfig", "TrainResult", "main", "register", "run", "train", "train_config_from_dict"]

#: Train settings that may change on --resume (they do not change what is learned).
_RESUMABLE = {"steps", "time_limit_s", "log_every", "checkpoint_every", "keep_checkpoints", "threads"}


@dataclass(frozen=True)
class TrainConfig:
    """Settings of a training run (the ``train:`` section). ``time_limit_s``: stop with a checkpoint after this
    much wall time (0: none). ``threads``: torch threads per process (0: CPU cores / local processes).
    ``norm_batches``: batches drawn to compute statistics the dataset does not provide."""

    batch_size: int = 16
    seq_len: int = 128
    steps: int = 4000
    lr: float = 6e-4
    lr_min_frac: float = 0.1
    warmup_steps: int = 100
    schedule: str = "cosine"
    weight_decay: float = 1e-4
    grad_clip: float = 1000.0
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    time_limit_s: float = 0.0
    threads: int = 0
    norm_batches: int = 16
    loss: Any = field(default=None)  # train.losses.LossConfig; None -> defaults

    def __post_init__(self) -> None:
        from train.losses import LossConfig

        if self.loss is None:
            object.__setattr__(self, "loss", LossConfig())
        elif isinstance(self.loss, Mapping):
            object.__setattr__(self, "loss", LossConfig.from_dict(self.loss))
        for name in ("batch_size", "seq_len", "steps", "log_every", "checkpoint_every", "keep_checkpoints", "norm_batches"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup_steps < 0 or self.threads < 0 or self.time_limit_s < 0:
            raise ValueError("train.warmup_steps, train.threads and train.time_limit_s must be >= 0")
        if not (self.lr > 0 and 0 <= self.lr_min_frac <= 1 and self.weight_decay >= 0 and self.grad_clip > 0):
            raise ValueError("train: lr > 0, 0 <= lr_min_frac <= 1, weight_decay >= 0 and grad_clip > 0 are required")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"train.schedule must be 'cosine' or 'constant', got {self.schedule!r}")

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["loss"] = self.loss.to_dict()
        return out

    def lr_at(self, step: int) -> float:
        """Learning rate for ``step`` (0-based): linear warmup, then cosine down to ``lr * lr_min_frac``."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return self.lr
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps))
        return self.lr * (self.lr_min_frac + (1.0 - self.lr_min_frac) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def train_config_from_dict(raw: Mapping[str, Any] | None) -> TrainConfig:
    """A :class:`TrainConfig` from a ``train:`` mapping; unknown keys are an error naming them."""
    raw = dict(raw or {})
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"train: unknown fields {unknown}; known: {sorted(known)}")
    return TrainConfig(**raw)


@dataclass(frozen=True)
class TrainResult:
    """How a run ended: ``status`` (``done``, ``time_limit``, ``nonfinite``, ``interrupted``), the last step
    completed, the last checkpoint written (or None) and the final logged metrics."""

    status: str
    step: int
    checkpoint: Path | None
    metrics: dict[str, Any]


# --------------------------------------------------------------------------------------------------------------
# Distributed helpers.


@dataclass(frozen=True)
class _Dist:
    rank: int = 0
    world: int = 1
    local_world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device: Any) -> _Dist:
    """Join the process group when started by torchrun (``WORLD_SIZE`` > 1): gloo on CPU, nccl on CUDA."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return _Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_WORLD_SIZE", str(world))))


def _step_seed(seed: int, rank: int, step: int) -> int:
    """An independent 63-bit seed per (seed, rank, step)."""
    import numpy as np

    return int(np.random.SeedSequence([seed, rank, step]).generate_state(2, np.uint64)[0] >> np.uint64(1))


# --------------------------------------------------------------------------------------------------------------
# Data.


def _collate(items: Sequence[Mapping[str, Any]], device: Any) -> dict[str, Any]:
    import torch

    # Per-tick arrays only: the dataset's window bookkeeping (``episode``, ``start``) is scalar.
    keys = [k for k, v in items[0].items() if torch.as_tensor(v).dim() >= 1]
    return {k: torch.stack([torch.as_tensor(it[k]) for it in items]).to(device=device, dtype=torch.float32) for k in keys}


def _draw(dataset: Any, batch_size: int, seed: int, device: Any) -> dict[str, Any]:
    import torch

    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(dataset), (batch_size,), generator=g).tolist()
    return _collate([dataset[i] for i in idx], device)


def open_dataset(data_dir: str | os.PathLike[str], seq_len: int, dataset_section: Mapping[str, Any] | None = None,
                 build: bool = True) -> tuple[Any, dict[str, Any]]:
    """The train split of a dataset cache as windows of ``seq_len`` ticks (starting every ``seq_len // 4``), and
    its normalization statistics (``{key: {"mean", "std", "count"}}``).

    ``data_dir`` is a cache written by :func:`train.dataset.build_dataset` (it has ``dataset.json``), or a folder
    of MCAP logs (``oniwm collect`` output): then the cache is built (or reused) in ``<data_dir>/cache`` with the
    preset's ``dataset:`` section, when ``build`` allows it.
    """
    from train.dataset import (
        REPORT,
        SequenceDataset,
        build_dataset,
        dataset_config_from_dict,
        load_stats,
    )

    cache = Path(data_dir)
    if not (cache / REPORT).exists():
        if not any(cache.glob("*.mcap")):
            raise ValueError(f"--data {cache}: neither a dataset cache ({REPORT}) nor a folder of .mcap logs")
        if not build:
            raise ValueError(f"--data {cache}: build the dataset cache first (python -m train.dataset --logs {cache} --cache DIR)")
        cache = cache / "cache"
        build_dataset(data_dir, cache, dataset_config_from_dict(dataset_section))
    dataset = SequenceDataset(cache, seq_len=seq_len, stride=max(1, seq_len // 4), split="train")
    if len(dataset) == 0:
        raise ValueError(f"--data {cache}: the train split has no window of {seq_len} ticks")
    return dataset, load_stats(cache).to_dict()


# --------------------------------------------------------------------------------------------------------------
# The loop.


def _flatten_optimizer(state: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """An optimizer state dict -> safetensors-able tensors plus JSON (no pickle in checkpoints)."""
    import torch

    tensors, scalars = {}, {}
    for idx, per_param in state["state"].items():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{key}"] = value
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: Mapping[str, Any], meta: Mapping[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in [*tensors.items(), *meta["scalars"].items()]:
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def _param_checksum(model: Any) -> float:
    """A position-weighted sum of every parameter (float64): equal across replicas iff they are in sync."""
    import torch

    total = torch.zeros((), dtype=torch.float64)
    for i, p in enumerate(model.parameters()):
        flat = p.detach().double().flatten().cpu()
        total += (flat * torch.linspace(1.0, 2.0, flat.numel(), dtype=torch.float64)).sum() * (i + 1)
    return float(total)


def _append_jsonl(path: Path, record: Mapping[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")


def lidar_no_return_m(preset: Mapping[str, Any], base_dir: str | os.PathLike[str]) -> float:
    """The LiDAR's maximum range from the preset's robot description (a scan reports "no return" as its
    maximum), or 0 when the preset names no robot or the robot has no LiDAR (a gymnasium preset)."""
    robot = preset.get("robot")
    if not isinstance(robot, str) or not robot:
        return 0.0
    from robots import load_robot, resolve_robot

    for sensor in load_robot(resolve_robot(robot, base_dir)).sensors:
        if sensor.kind == "lidar":
            return float(sensor.params.range_max_m)  # type: ignore[attr-defined]
    return 0.0


def train(cfg: TrainConfig, model_section: Mapping[str, Any] | None, dataset: Any, out_dir: str | os.PathLike[str], *,
          dataset_norm: Mapping[str, Any] | None = None, resume: bool = False, device: str = "cpu",
          progress: bool = True) -> TrainResult:
    """Train on ``dataset`` (indexable, ``len``; items: dicts of (T, ...) arrays in the batch contract) into
    ``out_dir``. ``model_section``: the preset's ``model:`` mapping. See the module docstring."""
    import torch
    from torch.nn.parallel import DistributedDataParallel

    from train.losses import LossModule, openloop_steps
    from worldmodel.checkpoint import (
        latest_checkpoint,
        load_checkpoint,
        load_trainer_state,
        save_checkpoint,
    )
    from worldmodel.model import (
        WorldModel,
        compute_normalization,
        modalities_from_batch,
        model_config_from_dict,
        parameter_count,
        required_keys,
    )

    dev = torch.device(device)
    dist_info = _init_distributed(dev)
    torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // dist_info.local_world))
    out = Path(out_dir)
    metrics_path = out / "metrics.jsonl"
    previous = latest_checkpoint(out) if out.exists() else None
    if previous is not None and not resume:
        raise ValueError(f"{out} already holds checkpoints (latest {previous.name}): pass --resume, or choose a new --out")
    if resume and previous is None:
        raise ValueError(f"--resume: {out} has no checkpoint to resume from")

    torch.manual_seed(cfg.seed)
    first = _draw(dataset, 1, cfg.seed, "cpu")
    if previous is not None:
        model, info = load_checkpoint(previous, dev)
        tensors, trainer_state = load_trainer_state(previous)
        saved_cfg = trainer_state["train_config"]
        mine = json.loads(json.dumps(cfg.to_dict()))
        changed = [f"{k}: {saved_cfg.get(k)!r} -> {mine[k]!r}" for k in mine if k not in _RESUMABLE and saved_cfg.get(k) != mine[k]]
        if changed:
            raise ValueError(f"--resume: the train config differs from the checkpoint's: {'; '.join(changed)}")
        wanted = model_config_from_dict({**dict(model_section or {}), "dt_ref_s": info.config.dt_ref_s},
                                        modalities_from_batch(first), first["action"].shape[-1], info.config.pose_head)
        if wanted != info.config:
            raise ValueError(f"--resume: the model config differs from the checkpoint's: {'; '.join(wanted.differences(info.config))}")
        start_step = info.step
    else:
        section = dict(model_section or {})
        # Seeded by the run seed alone, so every process computes the same statistics without communicating.
        probe = [_draw(dataset, cfg.batch_size, _step_seed(cfg.seed, 1 << 20, i), "cpu") for i in range(cfg.norm_batches)]
        if "dt_ref_s" not in section:
            dts = torch.cat([b["dt"][b["valid"] > 0] if "valid" in b else b["dt"].flatten() for b in probe])
            section["dt_ref_s"] = float(dts[dts > 0].median())
        mcfg = model_config_from_dict(section, modalities_from_batch(first), first["action"].shape[-1], "pose" in first)
        norm = dict(dataset_norm or {})
        missing = [k for k in required_keys(mcfg) if k not in norm]
        if missing:
            computed = compute_normalization(probe, mcfg)
            norm.update({k: computed[k] for k in missing})
        model = WorldModel(mcfg, norm, device=dev)
        start_step = 0
        tensors = trainer_state = None
    mcfg = model.config
    for stride in cfg.loss.strides:  # fail now, not at the first step of that stride
        openloop_steps(cfg.loss, stride, cfg.seq_len, mcfg.dt_ref_s)

    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if trainer_state is not None:
        opt.load_state_dict(_unflatten_optimizer(tensors, trainer_state["optimizer"]))
    loss_module = LossModule(model, cfg.loss)
    wrapped = DistributedDataParallel(loss_module) if dist_info.world > 1 else loss_module

    if dist_info.main:
        out.mkdir(parents=True, exist_ok=True)
        _append_jsonl(metrics_path, {"event": "start", "step": start_step, "world_size": dist_info.world,
                                     "parameters": parameter_count(model), "model": mcfg.to_dict(), "train": cfg.to_dict()})
        log.info("training %d parameters from step %d to %d on %d process(es)", parameter_count(model), start_step, cfg.steps, dist_info.world)

    def checkpoint(step: int) -> Path:
        opt_tensors, opt_json = _flatten_optimizer(opt.state_dict())
        return save_checkpoint(out, model, step, trainer_tensors=opt_tensors,
                               trainer_json={"train_config": cfg.to_dict(), "optimizer": opt_json, "step": step},
                               keep=cfg.keep_checkpoints)

    bar = None
    if progress and dist_info.main:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=start_step, file=sys.stderr, unit="step", dynamic_ncols=True)
    t_start = time.monotonic()
    t_window, seqs_window = time.monotonic(), 0
    # Loss terms summed since the last log line, averaged when logged; open-loop terms per stride (``_s5``).
    window: dict[str, list[float]] = {}
    window_steps = 0
    last_ckpt, status, step, last_metrics = previous, "done", start_step, {}
    try:
        while step < cfg.steps:
            seed = _step_seed(cfg.seed, dist_info.rank, step)
            torch.manual_seed(seed)
            batch = _draw(dataset, cfg.batch_size, seed, dev)
            stride = cfg.loss.strides[step % len(cfg.loss.strides)]
            for group in opt.param_groups:
                group["lr"] = cfg.lr_at(step)
            model.train()
            loss, terms = wrapped(batch, stride)
            flags = torch.tensor([0.0 if bool(torch.isfinite(loss)) else 1.0,
                                  1.0 if cfg.time_limit_s and time.monotonic() - t_start > cfg.time_limit_s else 0.0])
            if dist_info.world > 1:
                torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
            if flags[0] > 0:
                status = "nonfinite"
                _report_nonfinite(step, "loss", terms, dist_info, metrics_path, last_ckpt)
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            if not bool(torch.isfinite(grad_norm)):  # gradients are averaged already, so every rank agrees
                status = "nonfinite"
                _report_nonfinite(step, "gradient", terms, dist_info, metrics_path, last_ckpt)
                break
            opt.step()
            step += 1
            seqs_window += cfg.batch_size * dist_info.world
            window_steps += 1
            for k, v in terms.items():
                acc = window.setdefault(f"{k}_s{stride}" if k.startswith("ol_") else k, [0.0, 0])
                acc[0] += float(v)
                acc[1] += 1
            if bar is not None:
                bar.update(1)
            if dist_info.main and (step % cfg.log_every == 0 or step == cfg.steps):
                now = time.monotonic()
                last_metrics = {"step": step, "wall_s": round(now - t_start, 3), "lr": cfg.lr_at(step - 1),
                                "grad_norm": float(grad_norm), "steps_averaged": window_steps,
                                "seq_per_s": round(seqs_window / max(now - t_window, 1e-9), 2),
                                **{k: total / n for k, (total, n) in window.items()}}
                _append_jsonl(metrics_path, last_metrics)
                t_window, seqs_window, window, window_steps = now, 0, {}, 0
                if bar is not None:
                    bar.set_postfix(loss=f"{last_metrics['loss']:.3f}", seq_s=f"{last_metrics['seq_per_s']:.1f}")
            if dist_info.main and step % cfg.checkpoint_every == 0:
                last_ckpt = checkpoint(step)
            if flags[1] > 0:
                status = "time_limit"
                break
    except KeyboardInterrupt:
        status = "interrupted"
        if dist_info.world > 1:
            raise
    finally:
        if bar is not None:
            bar.close()
    if status in ("done", "time_limit", "interrupted") and dist_info.main and step > start_step \
            and (last_ckpt is None or last_ckpt.name != f"step_{step:08d}"):
        last_ckpt = checkpoint(step)
    checksums = [_param_checksum(model)]
    if dist_info.world > 1:
        gathered: list[Any] = [None] * dist_info.world
        torch.distributed.all_gather_object(gathered, checksums[0])
        checksums = gathered
        torch.distributed.barrier()  # rank 0's checkpoint is complete before any process leaves
    if dist_info.main:
        in_sync = all(c == checksums[0] for c in checksums)
        _append_jsonl(metrics_path, {"event": "end", "status": status, "step": step, "param_checksums": checksums,
                                     "replicas_in_sync": in_sync, "wall_s": round(time.monotonic() - t_start, 3),
                                     "checkpoint": str(last_ckpt) if last_ckpt else None})
        if not in_sync:
            log.error("replicas diverged: parameter checksums %s", checksums)
        log.info("%s at step %d; checkpoint %s", status, step, last_ckpt)
    return TrainResult(status, step, last_ckpt, last_metrics)


def _report_nonfinite(step: int, what: str, terms: Mapping[str, Any], dist_info: _Dist, metrics_path: Path, last_ckpt: Path | None) -> None:
    """Name the step and the non-finite terms (of every rank) in the log and the metrics."""
    import torch

    bad = sorted(k for k, v in terms.items() if not bool(torch.isfinite(torch.as_tensor(v)).all()))
    per_rank: list[Any] = [bad]
    if dist_info.world > 1:
        per_rank = [None] * dist_info.world
        torch.distributed.all_gather_object(per_rank, bad)
    if dist_info.main:
        where = "; ".join(f"rank {r}: {', '.join(b) or 'none'}" for r, b in enumerate(per_rank))
        log.error("non-finite %s at step %d (non-finite terms: %s); stopping, the last good checkpoint is %s",
                  what, step, where, last_ckpt)
        _append_jsonl(metrics_path, {"event": "nonfinite", "what": what, "step": step, "terms": per_rank,
                                     "checkpoint": str(last_ckpt) if last_ckpt else None})


# --------------------------------------------------------------------------------------------------------------
# Command line.


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="YAML", help="preset with model: and train: sections")
    parser.add_argument("--data", metavar="DIR", help="dataset folder (train.dataset.SequenceDataset)")
    parser.add_argument("--synthetic", type=int, default=None, metavar="EPISODES",
                        help="train on EPISODES synthetic corridor episodes instead of --data (smoke tests, benchmarks)")
    parser.add_argument("--out", required=True, metavar="RUN", help="run folder: checkpoints/, metrics.jsonl")
    parser.add_argument("--resume", action="store_true", help="continue from RUN's latest checkpoint")
    parser.add_argument("--steps", type=int, default=None, metavar="N", help="total steps (default: train.steps)")
    parser.add_argument("--preset", default=None, metavar="NAME", help="model size preset (default: model.preset)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train`` to ``oniwm``."""
    parser = subparsers.add_parser("train", help="train the world model on logged sequences (DDP under torchrun)",
                                   description=__doc__.split("\n\n")[0])
    _add_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``oniwm train``; see the module docstring for the exit status."""
    import yaml

    from worldmodel.checkpoint import CheckpointError

    try:
        raw = yaml.safe_load(Path(args.config).read_text()) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"{args.config}: a preset is a YAML mapping")
        section = dict(raw.get("train") or {})
        if args.steps is not None:
            section["steps"] = args.steps
        cfg = train_config_from_dict(section)
        model_section = dict(raw.get("model") or {})
        if args.preset is not None:
            model_section["preset"] = args.preset
        model_section.setdefault("no_return_m", lidar_no_return_m(raw, Path(args.config).parent))
        if args.synthetic is not None:
            from train.synthetic import SyntheticCorridor, SyntheticSpec

            spec = SyntheticSpec(episodes=args.synthetic, duration_s=max(20.0, cfg.seq_len * 0.02 * 2), seed=cfg.seed)
            dataset, norm = SyntheticCorridor(spec, cfg.seq_len), {}
        elif args.data:
            dataset, norm = open_dataset(args.data, cfg.seq_len, raw.get("dataset"), build=int(os.environ.get("WORLD_SIZE", "1")) <= 1)
        else:
            raise ValueError("give --data DIR (or --synthetic EPISODES)")
        result = train(cfg, model_section, dataset, args.out, dataset_norm=norm, resume=args.resume,
                       device=args.device, progress=not args.no_progress)
    except (OSError, ValueError, CheckpointError) as exc:
        log.error("%s", exc)
        return 2
    return {"done": 0, "time_limit": 0, "nonfinite": 1, "interrupted": 130}[result.status]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for ``python -m train.train`` (what torchrun launches)."""
    parser = argparse.ArgumentParser(prog="python -m train.train", description=__doc__.split("\n\n")[0])
    _add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    code = run(args)
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    return code


if __name__ == "__main__":
    sys.exit(main())
