"""``oniwm collect``: simulated episodes to ONI MCAP logs, in parallel, with a progress bar and a speed summary.

::

    oniwm collect --config configs/hallway.yaml --episodes 100 --policy mixture --workers 2 --out data/hallway
    oniwm collect --config configs/halfcheetah.yaml --episodes 20 --workers 2 --out data/halfcheetah

Writes ``DIR/episode_00000.mcap`` ... and ``DIR/manifest.json`` (see :mod:`train.collect`). Running it again
on the same ``--out`` resumes (complete episodes are kept); ``--overwrite`` starts over. The summary (JSON, on
stdout, and in the manifest) gives simulated seconds per wall second for the whole run and per worker, and
the dataset's size. Exit status: 0 when every episode finished, 1 when some failed, 2 for a bad command line
or config, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("train.collect")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``collect`` to ``oniwm``."""
    parser = subparsers.add_parser(
        "collect",
        help="run simulated episodes and write one ONI MCAP log per episode",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument(
        "--config", required=True, metavar="YAML",
        help="preset: robot, world, sim, collect sections; or a gym preset: gym and collect sections",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created; resumed if it exists)")
    parser.add_argument("--episodes", type=int, default=None, metavar="N", help="episodes (default: collect.episodes)")
    parser.add_argument("--policy", default=None, metavar="NAME", help="exploration policy (default: collect.policy)")
    parser.add_argument(
        "--workers", type=int, default=1, metavar="W", help="worker processes (default 1; capped at the CPU count)"
    )
    parser.add_argument(
        "--seed", type=int, default=None, metavar="S",
        help="seed of episode 0 (default: world.seed, or gym.seed); episode i: S + i",
    )
    parser.add_argument(
        "--max-duration", type=float, default=None, metavar="S",
        help="longest episode, sim seconds (default: collect.max_duration_s; hallway presets)",
    )
    parser.add_argument(
        "--max-steps", type=int, default=None, metavar="N",
        help="env steps per episode before truncation (default: gym.max_episode_steps; gym presets)",
    )
    parser.add_argument("--overwrite", action="store_true", help="delete the folder's episodes and manifest first")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def _load(args: argparse.Namespace) -> tuple[Callable[..., dict[str, Any]], Any, Any]:
    """The collection function for the preset's source (:func:`train.collect.collect`, or
    :func:`train.collect.collect_gym` for a preset with a ``gym`` section and no ``robot``), its source config
    and its collect config, with the command line's overrides applied."""
    import dataclasses

    import yaml

    from robots.description import DescriptionError

    path = Path(args.config)
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a preset is a YAML mapping with robot, world, sim and collect sections")
    section = dict(raw.get("collect") or {})
    if args.policy is not None:
        section["policy"] = args.policy
    if "gym" in raw and "robot" not in raw:
        from sim.gym_adapter import adapter_config_from_dict
        from train.collect import collect_gym, gym_collect_config_from_dict

        if args.max_duration is not None:
            raise DescriptionError("--max-duration", args.max_duration, "is for hallway presets: use --max-steps")
        gym = adapter_config_from_dict(raw)
        if args.max_steps is not None:
            gym = dataclasses.replace(gym, max_episode_steps=args.max_steps)
        return collect_gym, gym, gym_collect_config_from_dict(section)

    from sim.config import sim_config_from_dict
    from train.collect import collect, collect_config_from_dict

    if args.max_steps is not None:
        raise DescriptionError("--max-steps", args.max_steps, "is for gym presets: use --max-duration")
    sim = sim_config_from_dict(raw, path.parent)
    if args.max_duration is not None:
        section["max_duration_s"] = args.max_duration
    return collect, sim, collect_config_from_dict(section)


def run(args: argparse.Namespace) -> int:
    """Run the collection; see the module docstring for the exit status."""
    from concurrent.futures.process import BrokenProcessPool

    from tqdm import tqdm

    from robots.description import DescriptionError

    try:
        collect, source, cfg = _load(args)
    except (OSError, ValueError, DescriptionError) as exc:
        log.error("%s", exc)
        return 2
    cpus = os.cpu_count() or 1
    workers = args.workers
    if workers < 1:
        log.error("--workers must be >= 1, got %d", workers)
        return 2
    if workers > cpus:
        log.warning("--workers %d capped at the CPU count, %d", workers, cpus)
        workers = cpus
    episodes = cfg.episodes if args.episodes is None else args.episodes
    bar = tqdm(total=episodes, unit="ep", desc="collect", file=sys.stderr, disable=args.no_progress or None,
               dynamic_ncols=True)
    totals = {"sim_s": 0.0}

    def progress(done: int, entry: dict[str, Any]) -> None:
        bar.n = done
        if entry.get("status") == "ok" and not entry.get("resumed"):
            totals["sim_s"] += entry["sim_s"]
        elapsed = bar.format_dict["elapsed"]
        if elapsed > 0:
            bar.set_postfix_str(f"{totals['sim_s'] / elapsed:.1f} sim-s/s", refresh=False)
        bar.refresh()

    try:
        manifest = collect(source, cfg, args.out, episodes=episodes, base_seed=args.seed, workers=workers,
                           overwrite=args.overwrite, preset=str(args.config), progress=progress)
    except KeyboardInterrupt:
        bar.close()
        log.error("interrupted: the manifest lists the episodes that finished; run again to resume")
        return 130
    except (FileExistsError, DescriptionError) as exc:
        bar.close()
        log.error("%s", exc)
        return 2
    except BrokenProcessPool as exc:
        bar.close()
        log.error("a worker process died (killed, or out of memory): %s; run again to resume", exc)
        return 1
    bar.close()
    summary = manifest["summary"]
    log.info(
        "%d episodes (%d resumed, %d failed), %.0f sim s; %s sim s per wall s overall, %s per core; %.1f MB (%.2f MB "
        "per episode) in %s",
        summary["episodes"], summary["resumed"], summary["failed"], summary["sim_s"], summary["sim_s_per_wall_s"],
        summary["per_core_sim_s_per_wall_s"], summary["bytes"] / 1e6, (summary["bytes_per_episode"] or 0) / 1e6,
        args.out,
    )
    sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    return 1 if summary["failed"] else 0
