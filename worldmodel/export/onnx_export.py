"""ONNX export of the world model's two hot-path graphs, with a metadata file and a parity check against torch.

``export_onnx(checkpoint, out_dir)`` writes::

    out_dir/observe.onnx    the belief update at batch 1 (ObserveGraph): state, previous action, dt and one
                            tick's observations -> the new state
    out_dir/rollout.onnx    the planner's imagination with heads (RolloutGraph): state, actions (N, H, A) with a
                            dynamic N, dt -> LiDAR mean/std (N, H, beams) m and the relative pose trajectory
                            mean/std (N, H, 3); H is fixed (the loop is unrolled)
    out_dir/metadata.json   format, graphs (files, sha256, inputs and outputs with shapes), the I/O layout, the
                            model config, normalization, observation spec, checkpoint (path, step, sha256),
                            versions (torch, onnx, onnxruntime, opset, code) and the parity figures

Both graphs are traced from :mod:`worldmodel.backends.torch_backend`'s modules with the TorchScript exporter
(opset >= 17; it needs no dependency beyond torch and onnx, and the graphs have no data-dependent control flow).
One lowering is applied while tracing: image encoders become the strided convolutions they are (same weights;
see :class:`_ConvImageEncoder`), which runtimes execute faster than the reshapes eager torch prefers.
Before anything is moved into ``out_dir``, the ``onnxruntime`` backend is loaded from the staged files and
compared with the ``torch`` backend on random inputs and on real-looking ones (ticks drawn around the model's
normalization statistics, chained through the filter, then rolled out at N = max_samples and at a small N): a
maximum absolute difference above ``tolerance`` (default 1e-4, in each output's units) fails the export and
leaves ``out_dir`` as it was. Files are renamed into place, metadata last, so a directory with a
``metadata.json`` is always complete.

Example::

    meta = export_onnx("runs/a", "export/a")                 # or: oniwm export --checkpoint runs/a --out export/a
    print(meta["parity"]["max_abs"])
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import shutil
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from worldmodel.backends.base import (
    EXPORT_FORMAT,
    METADATA_FILE,
    PREDICTION_NAMES,
    Backend,
    BackendConfig,
    BeliefState,
    ExportError,
    IOSpec,
    require_extra,
)
from worldmodel.backends.torch_backend import ObserveGraph, RolloutGraph, TorchBackend
from worldmodel.files import sha256_file, write_json_atomic
from worldmodel.model import WorldModel
from worldmodel.model.encoders import ImageEncoder

__all__ = [
    "DEFAULT_OPSET",
    "DEFAULT_TOLERANCE",
    "GRAPH_FILES",
    "ParityError",
    "export_graphs",
    "export_onnx",
    "parity_check",
    "random_ticks",
    "real_looking_ticks",
]

log = logging.getLogger(__name__)

#: The graphs' file names in an export directory.
GRAPH_FILES = {"observe": "observe.onnx", "rollout": "rollout.onnx"}
DEFAULT_OPSET = 17
#: Largest max-abs difference between the onnxruntime and torch backends that passes (each output's units).
DEFAULT_TOLERANCE = 1e-4
#: Sample count the rollout is traced with: not 1 and unlike every other dim, so no size is mistaken for N.
_TRACE_SAMPLES = 3


class ParityError(ExportError):
    """The exported graphs disagree with torch by more than the tolerance; the message gives the figures."""


def _io_entries(entries: Iterable[tuple[str, tuple[int | str, ...]]]) -> list[dict[str, Any]]:
    return [{"name": name, "shape": list(shape), "dtype": "float32"} for name, shape in entries]


class _ConvImageEncoder(nn.Module):
    """An :class:`ImageEncoder` as 2-D convolutions (kernel = stride = patch) on the encoder's own parameters.

    The same function: ImageEncoder's patch reshape + Linear is a strided convolution, written that way because it
    is faster in eager torch. Traced as is it becomes reshape-transpose-reshape-Gemm-reshape per layer; as Conv it
    is one node per layer, ~10 us less per belief update in onnxruntime (of ~100), and TensorRT's conv kernels.
    The parity check compares the result with the eager encoder, so a divergence fails the export."""

    def __init__(self, encoder: ImageEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: Tensor, pixel_valid: Tensor) -> Tensor:
        """``x`` (B, H, W) normalized depth, ``pixel_valid`` (B, H, W) -> (B, E), as ImageEncoder.forward."""
        enc = self.encoder
        h = torch.stack([x * pixel_valid, pixel_valid], dim=1)  # (B, 2, H, W): channels first
        for layer, p, cin in zip(enc.layers, enc.patches, enc.channels):
            # The Linear's inputs are patches flattened as (dy, dx, c): (cout, p, p, c) -> conv's (cout, c, dy, dx).
            weight = layer.weight.reshape(layer.out_features, p, p, cin).permute(0, 3, 1, 2)
            h = F.elu(F.conv2d(h, weight, layer.bias, stride=p))
        return enc.out(h.permute(0, 2, 3, 1).flatten(1))  # flattened (h, w, c), as ImageEncoder's output layer reads


@contextlib.contextmanager
def _lowered_for_export(model: WorldModel) -> Iterator[list[str]]:
    """While tracing: the model's image encoders replaced by :class:`_ConvImageEncoder` views of themselves (same
    parameters), restored afterwards whatever happens. Yields the names of the lowered encoders."""
    encoders = model.encoder.encoders
    originals = {name: enc for name, enc in encoders.items() if type(enc) is ImageEncoder}
    try:
        for name, enc in originals.items():
            encoders[name] = _ConvImageEncoder(enc)
        yield sorted(originals)
    finally:
        for name, enc in originals.items():
            encoders[name] = enc


def export_graphs(model: WorldModel, io: IOSpec, directory: Path, opset: int = DEFAULT_OPSET) -> dict[str, dict[str, Any]]:
    """Trace ``observe.onnx`` and ``rollout.onnx`` into ``directory``; their ``graphs`` metadata entries."""
    onnx = require_extra("onnx", "export", "ONNX export")
    if opset < 17:
        raise ExportError(f"opset {opset}: the graphs use LayerNormalization, which needs opset >= 17")
    model = model.eval()
    first = real_looking_ticks(model, io, 1, seed=0)[0]
    observe_args = (torch.zeros(1, io.deter), torch.zeros(1, io.stoch), torch.from_numpy(first["prev_action"])[None],
                    torch.tensor([first["dt_s"]], dtype=torch.float32),
                    *(torch.from_numpy(np.asarray(first["obs"][name]))[None] for name, _ in io.obs))
    gen = torch.Generator().manual_seed(0)
    rollout_args = (torch.zeros(1, io.deter), torch.zeros(1, io.stoch),
                    torch.rand(_TRACE_SAMPLES, io.horizon, io.action_dim, generator=gen), torch.tensor([0.1]))
    dynamic = {name: {0: "N"} for name in ("actions", *PREDICTION_NAMES)}
    jobs = {
        "observe": (ObserveGraph(model, io), observe_args, io.observe_inputs(), io.observe_outputs(), None),
        "rollout": (RolloutGraph(model, io), rollout_args, io.rollout_inputs(), io.rollout_outputs(), dynamic),
    }
    graphs: dict[str, dict[str, Any]] = {}
    for name, (module, args, inputs, outputs, axes) in jobs.items():
        path = directory / GRAPH_FILES[name]
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad(), _lowered_for_export(model) as lowered:
            # The TorchScript exporter is deprecated in favour of the torch.export one, which needs onnxscript;
            # these graphs are plain tensor code with no control flow, which tracing captures exactly.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(module, args, str(path), dynamo=False, opset_version=opset,
                              input_names=[n for n, _ in inputs], output_names=[n for n, _ in outputs],
                              dynamic_axes=axes, do_constant_folding=True)
        onnx.checker.check_model(str(path), full_check=True)
        graphs[name] = {"file": path.name, "sha256": sha256_file(path), "inputs": _io_entries(inputs),
                        "outputs": _io_entries(outputs),
                        "lowered": [f"encoder.encoders.{n}: patch Linear -> Conv" for n in lowered] if name == "observe" else []}
    return graphs


# ----------------------------------------------------------------------------------------------------------------
# Inputs for the parity check.

def real_looking_ticks(model: WorldModel, io: IOSpec, count: int, seed: int = 0) -> list[dict[str, Any]]:
    """``count`` control ticks that look like sensor data: values drawn around the model's normalization
    statistics (clipped to physical ranges, some "no return" beams and pixels), LiDAR new every 5th tick and depth
    every 3rd (10 and ~15 Hz at 50 Hz), ages to match, actions around the action statistics, dt = 20 ms +- 2 ms.

    Each tick: ``{"obs": {name: array of the per-tick shape}, "prev_action": (A,), "dt_s": float}``."""
    rng = np.random.default_rng(seed)
    cfg = model.config
    stats = {key: (model.norm.mean(key).cpu().numpy(), model.norm.std(key).cpu().numpy()) for key in model.norm.keys}
    ticks = []
    for t in range(count):
        obs: dict[str, np.ndarray] = {}
        for spec in cfg.modalities:
            mean, std = stats[spec.name]
            value = mean + std * rng.standard_normal(spec.shape)
            period = {"ranges": 5, "image": 3}.get(spec.kind, 1)
            new = t % period == 0
            if spec.kind == "ranges":
                top = cfg.no_return_m if cfg.no_return_m > 0 else float(np.max(mean + 3 * std))
                value = np.clip(value, 0.05, top)
                if cfg.no_return_m > 0:
                    value[rng.random(spec.shape) < 0.05] = cfg.no_return_m
            elif spec.kind == "image":
                value = np.where(rng.random(spec.shape) < 0.1, 0.0, np.clip(value, 0.1, None))
            obs[spec.name] = value.astype(np.float32)
            obs[f"{spec.name}_mask"] = np.asarray(rng.random(spec.shape[0]) < 0.95 if spec.has_sample_mask else float(new),
                                                  np.float32)
            obs[f"{spec.name}_age"] = np.asarray(0.02 * (t % period) + 0.005 * rng.random(), np.float32)
        mean, std = stats["action"]
        ticks.append({"obs": obs, "prev_action": (mean + std * rng.standard_normal(io.action_dim)).astype(np.float32),
                      "dt_s": float(0.02 + 0.002 * rng.uniform(-1, 1))})
    return ticks


def random_ticks(io: IOSpec, count: int, seed: int = 0) -> list[dict[str, Any]]:
    """``count`` ticks of wide random values (standard normal times 3, positive where physical), random masks in
    {0, 1}, ages in [0, 1] s and dt in [5, 200] ms: inputs far from the data, where numerics differ most."""
    rng = np.random.default_rng(seed)
    ticks = []
    for _ in range(count):
        obs = {}
        for name, shape in io.obs:
            if name.endswith("_mask"):
                obs[name] = (rng.random(shape) < 0.5).astype(np.float32)
            elif name.endswith("_age"):
                obs[name] = rng.random(shape).astype(np.float32)
            else:
                obs[name] = np.abs(3.0 * rng.standard_normal(shape)).astype(np.float32)
        ticks.append({"obs": obs, "prev_action": rng.standard_normal(io.action_dim).astype(np.float32),
                      "dt_s": float(rng.uniform(0.005, 0.2))})
    return ticks


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0


def parity_check(model: WorldModel, compiled: Backend, tolerance: float = DEFAULT_TOLERANCE, seed: int = 0,
                 ticks: Iterable[Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Max abs difference between a ``compiled`` backend and the ``torch`` backend of ``model``.

    Cases: the belief update from a random state on :func:`random_ticks`, and chained from the initial state
    over ``ticks`` (default: :func:`real_looking_ticks`, 25 of them); the rollout from the random and the
    chained states at N = ``io.max_samples`` and N = 3, dt 0.1 s and 0.02 s, with random actions around the
    action statistics. Returns ``{"observe": {output: max}, "rollout": {output: max}, "max_abs", "tolerance",
    "passed", "cases"}``."""
    io = compiled.io
    rng = np.random.default_rng(seed)
    reference = TorchBackend(model, io.horizon, io.max_samples, beam_stride=io.beam_stride)
    worst: dict[str, dict[str, float]] = {"observe": {"deter_out": 0.0, "stoch_out": 0.0},
                                          "rollout": {name: 0.0 for name in PREDICTION_NAMES}}
    cases = 0

    def compare_states(a: BeliefState, b: BeliefState) -> None:
        nonlocal cases
        cases += 1
        worst["observe"]["deter_out"] = max(worst["observe"]["deter_out"], _max_abs(a.deter, b.deter))
        worst["observe"]["stoch_out"] = max(worst["observe"]["stoch_out"], _max_abs(a.stoch, b.stoch))

    start_states = []
    for tick in random_ticks(io, 8, seed):
        state = BeliefState(np.tanh(rng.standard_normal((1, io.deter))).astype(np.float32),
                            rng.standard_normal((1, io.stoch)).astype(np.float32))
        compare_states(reference.observe(state, tick["obs"], tick["prev_action"], tick["dt_s"]).copy(),
                       compiled.observe(state, tick["obs"], tick["prev_action"], tick["dt_s"]))
        start_states.append(state)
    ref_state, cmp_state = reference.initial_state(), compiled.initial_state()
    for tick in (ticks if ticks is not None else real_looking_ticks(model, io, 25, seed)):
        ref_state = reference.observe(ref_state, tick["obs"], tick["prev_action"], tick["dt_s"])
        cmp_state = compiled.observe(cmp_state, tick["obs"], tick["prev_action"], tick["dt_s"])
        compare_states(ref_state, cmp_state)
    start_states.append(ref_state.copy())
    a_mean, a_std = (model.norm.mean("action").cpu().numpy(), model.norm.std("action").cpu().numpy())
    for state in (start_states[0], start_states[-1]):
        for n, dt_s in ((io.max_samples, 0.1), (min(3, io.max_samples), 0.02)):
            actions = (a_mean + 2.0 * a_std * rng.standard_normal((n, io.horizon, io.action_dim))).astype(np.float32)
            ref = reference.rollout(state, actions, dt_s)
            out = compiled.rollout(state, actions, dt_s)
            cases += 1
            for name in PREDICTION_NAMES:
                worst["rollout"][name] = max(worst["rollout"][name], _max_abs(getattr(ref, name), getattr(out, name)))
    max_abs = max(v for part in worst.values() for v in part.values())
    return {**worst, "max_abs": max_abs, "tolerance": tolerance, "passed": bool(max_abs <= tolerance), "cases": cases}


# ----------------------------------------------------------------------------------------------------------------
# The export.

def _observation_spec(model: WorldModel) -> dict[str, Any] | None:
    """The :class:`worldmodel.observation.ObservationSpec` the graphs' inputs correspond to (None when a modality
    name is not one the tick assembler produces)."""
    from worldmodel.observation import MODALITIES, ObservationSpec

    cfg = model.config
    kwargs: dict[str, Any] = {"action_dim": cfg.action_dim}
    for m in cfg.modalities:
        if m.name not in MODALITIES:
            return None
        if m.name == "depth":
            kwargs["depth_height"], kwargs["depth_width"] = m.shape
        elif m.name == "odom":
            kwargs["odom"] = True
        else:
            kwargs[{"lidar": "lidar_beams", "imu": "imu_samples", "obs": "obs_dim"}[m.name]] = m.shape[0]
    return ObservationSpec(**kwargs).to_dict()


def _versions(opset: int) -> dict[str, str]:
    from worldmodel.checkpoint import code_version

    versions = {"torch": torch.__version__, "opset": str(opset), "oni-worldmodel": code_version()}
    for module in ("onnx", "onnxruntime"):
        versions[module] = require_extra(module, "export", "ONNX export").__version__
    return versions


def export_onnx(checkpoint: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, horizon: int = 10,
                max_samples: int = 256, beam_stride: int = 1, opset: int = DEFAULT_OPSET, tolerance: float = DEFAULT_TOLERANCE, seed: int = 0,
                ticks: Iterable[Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Export the checkpoint (a checkpoint or run directory) to ``out_dir``; returns the metadata written.

    ``horizon`` H and ``max_samples`` N: the rollout's fixed steps and the largest batch it is checked (and, for
    TensorRT, profiled) for; ``beam_stride``: the rollout decodes every k-th LiDAR beam (the planner's scan). ``ticks``: real ticks for the parity check (default: real-looking ones). Raises
    :class:`ParityError` (nothing moved into ``out_dir``) when the parity check fails."""
    from worldmodel.checkpoint import load_checkpoint

    model, info = load_checkpoint(checkpoint)
    model.eval()
    io = IOSpec.from_model_config(model.config, horizon, max_samples, beam_stride)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    staging = out / f".staging-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        log.info("exporting %s (step %d) to %s: horizon %d, up to %d samples, opset %d", info.path, info.step, out,
                 horizon, max_samples, opset)
        graphs = export_graphs(model, io, staging, opset)
        ckpt_meta = json.loads((info.path / "meta.json").read_text())
        meta: dict[str, Any] = {
            "format": EXPORT_FORMAT,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "graphs": graphs,
            "io": io.to_dict(),
            "model_config": model.config.to_dict(),
            "normalization": model.norm.to_stats(),
            "observation_spec": _observation_spec(model),
            "checkpoint": {"path": str(info.path.resolve()), "step": info.step, "code_version": info.code_version,
                           "sha256": ckpt_meta.get("sha256", {})},
            "versions": _versions(opset),
        }
        write_json_atomic(staging / METADATA_FILE, meta)  # the backend reads the staged graphs through it
        from worldmodel.backends.onnx_backend import OnnxBackend

        staged = OnnxBackend(staging, BackendConfig(name="onnxruntime", export_dir=str(staging), horizon=horizon,
                                                    max_samples=max_samples, beam_stride=beam_stride, threads=1))
        parity = parity_check(model, staged, tolerance, seed, ticks)
        meta["parity"] = parity
        log.info("parity vs torch: max abs %.2e (observe %s; rollout %s), tolerance %.0e", parity["max_abs"],
                 _fmt(parity["observe"]), _fmt(parity["rollout"]), tolerance)
        if not parity["passed"]:
            raise ParityError(f"parity check failed: max abs difference {parity['max_abs']:.3e} > {tolerance:.0e} "
                              f"(observe {_fmt(parity['observe'])}; rollout {_fmt(parity['rollout'])}); "
                              f"{out} left unchanged")
        # A directory with metadata is complete: drop the old metadata first, put it back last.
        (out / METADATA_FILE).unlink(missing_ok=True)
        for name in GRAPH_FILES.values():
            os.replace(staging / name, out / name)
        write_json_atomic(out / METADATA_FILE, meta)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return meta


def _fmt(values: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {v:.1e}" for k, v in values.items())
