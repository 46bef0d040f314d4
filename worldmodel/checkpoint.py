"""World-model checkpoints: safetensors weights + config + normalization + code version, written atomically.

Layout of a run directory::

    RUN/checkpoints/step_00001000/model.safetensors    parameters and normalization buffers (float32)
                                  config.json          ModelConfig.to_dict()
                                  normalization.json   the statistics the model was built with
                                  meta.json            format, step, code version, creation time, sha256 of each file
                                  trainer.safetensors  optional: optimizer tensors (for --resume)
                                  trainer.json         optional: trainer state (config, step, optimizer groups)
    RUN/checkpoints/latest                             the name of the newest complete checkpoint

A checkpoint is assembled in a temporary directory beside its final place, every file fsynced, then renamed
into place, and only then is ``latest`` replaced (also by rename): a crash leaves the previous checkpoint intact
and never a half-written one under a final name. :func:`load_checkpoint` refuses a checkpoint that does not
match, naming what: format version, a file's hash, an expected config field, a tensor name or shape, and (when
asked) the code version. No pickle anywhere: loading a checkpoint never runs code.

Example::

    path = save_checkpoint("runs/a", model, step=1000)
    model, info = load_checkpoint("runs/a")              # the latest; or a step directory
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from worldmodel.files import sha256_file
from worldmodel.model import ModelConfig, WorldModel

__all__ = [
    "FORMAT_VERSION",
    "CheckpointError",
    "CheckpointInfo",
    "code_version",
    "latest_checkpoint",
    "load_checkpoint",
    "load_trainer_state",
    "save_checkpoint",
]

log = logging.getLogger(__name__)

#: Version of the checkpoint layout and of the model's parameter naming; bumped on any incompatible change.
FORMAT_VERSION = 1
_HINT = "checkpoints need safetensors: pip install 'oni-worldmodel[train]'"
_MODEL, _CONFIG, _NORM, _META = "model.safetensors", "config.json", "normalization.json", "meta.json"
_TRAINER_TENSORS, _TRAINER_JSON = "trainer.safetensors", "trainer.json"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt or does not match what the caller expects; the message says which."""


@dataclass(frozen=True)
class CheckpointInfo:
    """What :func:`load_checkpoint` read besides the weights."""

    path: Path
    step: int
    code_version: str
    created: str
    config: ModelConfig
    normalization: dict[str, Any]


def code_version() -> str:
    """The package version, plus ``git describe --always --dirty`` when running from a git checkout."""
    from importlib import metadata

    try:
        version = metadata.version("oni-worldmodel")
    except metadata.PackageNotFoundError:
        version = "unknown"
    root = Path(__file__).resolve().parent.parent
    if (root / ".git").exists():
        try:
            described = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=root, capture_output=True,
                                       text=True, timeout=10, check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            described = ""
        if described:
            version = f"{version}+g{described}"
    return version


def _safetensors() -> Any:
    try:
        import safetensors.torch as st
    except ImportError as exc:
        raise ModuleNotFoundError(_HINT) from exc
    return st


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")


def save_checkpoint(run_dir: str | os.PathLike[str], model: WorldModel, step: int, *,
                    trainer_tensors: Mapping[str, Tensor] | None = None, trainer_json: Mapping[str, Any] | None = None,
                    keep: int = 3) -> Path:
    """Write ``RUN/checkpoints/step_<step>`` atomically, point ``latest`` at it, keep the newest ``keep``.

    ``trainer_tensors``/``trainer_json``: optional state for resuming (optimizer moments, trainer config);
    tensors go to safetensors, the rest to JSON. Returns the checkpoint directory.
    """
    st = _safetensors()
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:08d}"
    final = root / name
    tmp = root / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    st.save_file(tensors, str(tmp / _MODEL), metadata={"format": str(FORMAT_VERSION)})
    _write_json(tmp / _CONFIG, model.config.to_dict())
    _write_json(tmp / _NORM, model.norm.to_stats())
    files = [_MODEL, _CONFIG, _NORM]
    if trainer_tensors is not None:
        st.save_file({k: v.detach().to("cpu", copy=True).contiguous() for k, v in trainer_tensors.items()}, str(tmp / _TRAINER_TENSORS))
        files.append(_TRAINER_TENSORS)
    if trainer_json is not None:
        _write_json(tmp / _TRAINER_JSON, dict(trainer_json))
        files.append(_TRAINER_JSON)
    meta = {
        "format": FORMAT_VERSION,
        "step": int(step),
        "code_version": code_version(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "sha256": {f: sha256_file(tmp / f) for f in files},
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    _write_json(tmp / _META, meta)
    for f in [*files, _META]:
        os.chmod(tmp / f, 0o644)  # safetensors creates its files private; a checkpoint is meant to be shipped
        _fsync_file(tmp / f)
    _fsync_dir(tmp)
    if final.exists():  # re-saving a step (e.g. a resumed run's final save): swap, never delete first
        old = root / f".old-{name}-{os.getpid()}"
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old)
    else:
        tmp.rename(final)
    latest_tmp = root / f".latest-{os.getpid()}"
    latest_tmp.write_text(name + "\n")
    _fsync_file(latest_tmp)
    os.replace(latest_tmp, root / "latest")
    _fsync_dir(root)
    _prune(root, keep, name)
    return final


def _prune(root: Path, keep: int, newest: str) -> None:
    steps = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_"))
    for p in steps[: max(0, len(steps) - max(1, keep))]:
        if p.name != newest:
            shutil.rmtree(p)


def latest_checkpoint(run_dir: str | os.PathLike[str]) -> Path | None:
    """The newest complete checkpoint of a run directory, or None when it has none."""
    pointer = Path(run_dir) / "checkpoints" / "latest"
    if not pointer.exists():
        return None
    path = pointer.parent / pointer.read_text().strip()
    if not (path / _META).exists():
        raise CheckpointError(f"{pointer} names {path.name}, which is not a complete checkpoint")
    return path


def _resolve(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if (p / _META).exists():
        return p
    for run in (p, p.parent):
        if (run / "checkpoints" / "latest").exists() or (run.name == "checkpoints" and (run / "latest").exists()):
            found = latest_checkpoint(run if run.name != "checkpoints" else run.parent)
            if found is not None:
                return found
    raise CheckpointError(f"{p}: no checkpoint here (expected {_META}, or a run directory with checkpoints/latest)")


def _read_meta(path: Path, verify: tuple[str, ...]) -> dict[str, Any]:
    try:
        meta = json.loads((path / _META).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path / _META}: unreadable ({exc})") from exc
    if meta.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {meta.get('format')!r}, this code reads format {FORMAT_VERSION}")
    for f in verify:
        expected = meta.get("sha256", {}).get(f)
        if expected is None:
            raise CheckpointError(f"{path}: {f} is not part of this checkpoint")
        if not (path / f).exists():
            raise CheckpointError(f"{path / f}: missing")
        if sha256_file(path / f) != expected:
            raise CheckpointError(f"{path / f}: sha256 mismatch (the file is corrupt or was changed after saving)")
    return meta


def load_checkpoint(path: str | os.PathLike[str], device: torch.device | str = "cpu", *,
                    expect_config: ModelConfig | None = None, expect_code_version: str | None = None
                    ) -> tuple[WorldModel, CheckpointInfo]:
    """The model saved at ``path`` (a checkpoint directory, or a run directory: its latest), on ``device``.

    Refuses, with :class:`CheckpointError` naming the mismatch: another checkpoint format; a file whose hash
    differs from the one recorded; a config differing from ``expect_config`` (the differing fields); weights
    whose names or shapes do not match the config; a code version other than ``expect_code_version`` (when
    given; otherwise a different version is logged at INFO).
    """
    st = _safetensors()
    ckpt = _resolve(path)
    meta = _read_meta(ckpt, (_MODEL, _CONFIG, _NORM))
    config = ModelConfig.from_dict(json.loads((ckpt / _CONFIG).read_text()))
    if expect_config is not None and config != expect_config:
        raise CheckpointError(f"{ckpt}: model config differs from the expected one: " + "; ".join(config.differences(expect_config)))
    version = str(meta.get("code_version", "unknown"))
    if expect_code_version is not None and version != expect_code_version:
        raise CheckpointError(f"{ckpt}: saved by code version {version}, expected {expect_code_version}")
    if expect_code_version is None and version != code_version():
        log.info("%s: saved by code version %s, running %s", ckpt, version, code_version())
    norm = json.loads((ckpt / _NORM).read_text())
    model = WorldModel(config, norm, device="cpu")
    tensors = st.load_file(str(ckpt / _MODEL))
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"{ckpt / _MODEL}: tensors do not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for k, v in own.items():
        if tuple(tensors[k].shape) != tuple(v.shape):
            raise CheckpointError(f"{ckpt / _MODEL}: tensor {k} has shape {tuple(tensors[k].shape)}, the config gives {tuple(v.shape)}")
    model.load_state_dict(tensors)
    model.to(device)
    info = CheckpointInfo(ckpt, int(meta["step"]), version, str(meta.get("created", "")), config, norm)
    return model, info


def load_trainer_state(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The trainer tensors and JSON saved with a checkpoint (hash-checked); raises when it has none."""
    st = _safetensors()
    ckpt = _resolve(path)
    _read_meta(ckpt, (_TRAINER_TENSORS, _TRAINER_JSON))
    return st.load_file(str(ckpt / _TRAINER_TENSORS)), json.loads((ckpt / _TRAINER_JSON).read_text())
