"""TensorRT engines (fp16) built from an export directory's ONNX graphs with the TensorRT Python API.

``build_engines(export_dir)`` parses ``observe.onnx`` and ``rollout.onnx``, builds one serialized engine each
(``observe.fp16.engine``, ``rollout.fp16.engine``; the rollout with an optimization profile over its dynamic
batch N: 1 .. max_samples, tuned for max_samples), checks the engines against torch through the ``tensorrt``
backend (max abs difference at most :data:`FP16_TOLERANCE`: fp16 carries ~3 significant digits, so the ONNX
graphs' 1e-4 cannot hold), and records them in ``metadata.json`` under ``"tensorrt"`` (written atomically).

Precision: TensorRT 10 builds fp16 kernels from the fp32 graphs with ``BuilderFlag.FP16`` (weak typing).
TensorRT 11 removed weak typing: every network is strongly typed, so the graphs are first converted to mixed
precision with NVIDIA ModelOpt's AutoCast (fp32 inputs and outputs kept), then built as they are.

An engine is specific to the GPU model and the TensorRT version it was built with: build on the robot (or an
identical machine); the backend refuses engines from another TensorRT version. Needs ``tensorrt`` (the
``tensorrt`` extra) and an NVIDIA GPU; without them :func:`require_tensorrt` says what is missing.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from worldmodel.backends.base import (
    METADATA_FILE,
    TENSORRT_HINT,
    BackendConfig,
    BackendUnavailable,
    ExportError,
    IOSpec,
    read_export_metadata,
    require_extra,
)

__all__ = ["ENGINE_FILES", "FP16_TOLERANCE", "build_engines", "require_tensorrt"]

log = logging.getLogger(__name__)

#: Engine file names in an export directory.
ENGINE_FILES = {"observe": "observe.fp16.engine", "rollout": "rollout.fp16.engine"}
#: Largest max-abs difference (each output's units: m, rad) between the fp16 engines and torch that passes.
FP16_TOLERANCE = 5e-2
_NO_GPU = ("no NVIDIA GPU is usable here ({why}); TensorRT engines are built and run on the machine that uses them "
           "(the robot's GPU): run `oniwm export --format tensorrt` there")


def require_tensorrt(purpose: str) -> Any:
    """The ``tensorrt`` module when it is installed and a CUDA device is usable; otherwise
    :class:`BackendUnavailable` saying which of the two is missing."""
    trt = require_extra("tensorrt", "tensorrt", purpose, TENSORRT_HINT)
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailable(f"{purpose}: " + _NO_GPU.format(why="torch.cuda.is_available() is False"))
    return trt


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _mixed_precision_graph(onnx_path: Path, out_path: Path) -> Path:
    """TensorRT >= 11: ``onnx_path`` converted to fp16 with fp32 I/O by ModelOpt AutoCast, saved at ``out_path``."""
    autocast = require_extra("modelopt.onnx.autocast", "tensorrt", "fp16 engines with TensorRT >= 11",
                             "TensorRT >= 11 builds fp16 only from mixed-precision graphs: pip install 'nvidia-modelopt[onnx]'")
    import onnx

    converted = autocast.convert_to_mixed_precision(onnx_path=str(onnx_path), low_precision_type="fp16", keep_io_types=True)
    onnx.save(converted, str(out_path))
    return out_path


def _build_one(trt: Any, logger: Any, onnx_path: Path, io: IOSpec, dynamic_batch: bool, opt_samples: int,
               workspace_bytes: int) -> bytes:
    """One serialized fp16 engine from ``onnx_path``; :class:`ExportError` with the parser's or builder's errors."""
    builder = trt.Builder(logger)
    weak_fp16 = hasattr(trt.BuilderFlag, "FP16")
    flags = 0 if weak_fp16 else 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"{onnx_path}: TensorRT's ONNX parser refused the graph: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if weak_fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if dynamic_batch:
        profile = builder.create_optimization_profile()
        h, a = io.horizon, io.action_dim
        profile.set_shape("actions", (1, h, a), (opt_samples, h, a), (io.max_samples, h, a))
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"{onnx_path}: TensorRT could not build an engine (its log above says why)")
    return bytes(serialized)


def build_engines(export_dir: str | os.PathLike[str], *, opt_samples: int | None = None, workspace_gib: float = 1.0,
                  tolerance: float = FP16_TOLERANCE, checkpoint: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Build the fp16 engines of ``export_dir`` (made by :func:`worldmodel.export.onnx_export.export_onnx`), check
    them against torch (the checkpoint recorded in the metadata, or ``checkpoint``), and record them in the
    metadata; returns the ``"tensorrt"`` section. ``opt_samples``: the N the rollout engine is tuned for
    (default: max_samples)."""
    trt = require_tensorrt("building TensorRT engines")
    import torch

    from worldmodel.backends.tensorrt_backend import TensorRTBackend
    from worldmodel.checkpoint import load_checkpoint
    from worldmodel.export.onnx_export import parity_check
    from worldmodel.files import write_json_atomic

    out = Path(export_dir)
    meta = read_export_metadata(out)
    io = IOSpec.from_dict(meta["io"])
    opt = min(opt_samples or io.max_samples, io.max_samples)
    logger = trt.Logger(trt.Logger.WARNING)
    weak_fp16 = hasattr(trt.BuilderFlag, "FP16")
    engines: dict[str, dict[str, Any]] = {}
    for name, file in ENGINE_FILES.items():
        onnx_path = out / meta["graphs"][name]["file"]
        if not weak_fp16:
            onnx_path = _mixed_precision_graph(onnx_path, out / f".{name}.fp16.{os.getpid()}.onnx")
        try:
            log.info("building %s from %s (TensorRT %s, fp16)", file, onnx_path.name, trt.__version__)
            data = _build_one(trt, logger, onnx_path, io, name == "rollout", opt, int(workspace_gib * (1 << 30)))
        finally:
            if not weak_fp16:
                onnx_path.unlink(missing_ok=True)
        _write_atomic(out / file, data)
        engines[name] = {"file": file, "bytes": len(data)}
    section = {"engines": engines, "precision": "fp16", "version": trt.__version__,
               "typing": "weak (BuilderFlag.FP16)" if weak_fp16 else "strong (ModelOpt AutoCast)",
               "device": torch.cuda.get_device_name(), "opt_samples": opt, "max_samples": io.max_samples}
    meta["tensorrt"] = section
    write_json_atomic(out / METADATA_FILE, meta)  # the backend reads the engines through it
    model, _ = load_checkpoint(checkpoint or meta["checkpoint"]["path"])
    backend = TensorRTBackend(out, BackendConfig(name="tensorrt", export_dir=str(out), horizon=io.horizon,
                                                 max_samples=io.max_samples))
    section["parity"] = parity_check(model, backend, tolerance)
    write_json_atomic(out / METADATA_FILE, meta)
    if not section["parity"]["passed"]:
        raise ExportError(f"TensorRT fp16 engines differ from torch by {section['parity']['max_abs']:.3e} > "
                          f"{tolerance:.0e} (recorded in {out / METADATA_FILE})")
    log.info("TensorRT engines in %s; parity vs torch: max abs %.2e", out, section["parity"]["max_abs"])
    return section
