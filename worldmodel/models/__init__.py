"""Models shipped with the package, and resolving a model reference to what a backend loads.

``worldmodel/models/hallway/`` holds the default hallway model: ``checkpoint/`` (safetensors, config,
normalization, code version), ``export/`` (its ONNX graphs and metadata, from ``oniwm export``), the training
config it was trained with and its evaluation report.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DEFAULT_MODEL", "MODELS_DIR", "model_paths"]

MODELS_DIR = Path(__file__).resolve().parent
#: What ``model: default`` names.
DEFAULT_MODEL = "hallway"


def model_paths(ref: str, base_dir: str | Path = ".") -> tuple[Path, Path]:
    """``(checkpoint, export_dir)`` of a model reference: ``default`` or a shipped model's name, or a directory
    (relative to ``base_dir``) holding ``checkpoint/`` and/or ``export/``, or itself a checkpoint, run or export
    directory (then both paths are it). ``FileNotFoundError`` names what is missing."""
    if ref == "default":
        ref = DEFAULT_MODEL
    path = MODELS_DIR / ref if "/" not in ref and (MODELS_DIR / ref).is_dir() else (Path(base_dir) / ref).expanduser()
    if not path.is_dir():
        shipped = sorted(p.name for p in MODELS_DIR.iterdir() if (p / "checkpoint").is_dir())
        raise FileNotFoundError(f"model {ref!r}: no such directory {path} (shipped models: {shipped})")
    checkpoint = path / "checkpoint" if (path / "checkpoint").is_dir() else path
    export = path / "export" if (path / "export").is_dir() else path
    return checkpoint, export
