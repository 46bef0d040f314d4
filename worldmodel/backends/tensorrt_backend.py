"""The ``tensorrt`` backend: the fp16 engines of ``oniwm export --format tensorrt`` on an NVIDIA GPU.

Buffers are allocated once per engine I/O tensor at its largest shape: a device tensor whose address is given
to the execution context at load, and a page-locked host mirror (so copies run asynchronously on the
backend's stream). A call copies the inputs into the host mirrors, enqueues host-to-device copies, the engine
(``execute_async_v3``) and device-to-host copies on one stream, and synchronizes once; outputs are numpy views
of the host mirrors. The rollout sets the dynamic batch with ``set_input_shape`` and moves only its first N rows.

Device memory and streams come from torch's CUDA runtime (torch is a core dependency, so no other CUDA
binding is needed). Importing this module is free; constructing the backend needs ``tensorrt`` (the
``tensorrt`` extra) and a usable GPU, and says which is missing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from worldmodel.backends.base import (
    PREDICTION_NAMES,
    TENSORRT_HINT,
    BackendConfig,
    BackendUnavailable,
    BeliefState,
    ExportError,
    IOSpec,
    PredictionBuffers,
    Predictions,
    check_actions,
    check_sizes,
    float32_input,
    positive_finite,
    read_export_metadata,
    require_extra,
)

__all__ = ["TensorRTBackend"]

log = logging.getLogger(__name__)


class _Engine:
    """One deserialized engine with its execution context, device buffers and pinned host mirrors."""

    def __init__(self, trt: Any, torch: Any, runtime: Any, path: Path, shapes: Mapping[str, tuple[int, ...]], stream: Any,
                 dynamic: str | None = None) -> None:
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise ExportError(f"{path}: TensorRT could not deserialize the engine (built for another GPU or version?)")
        self.context = self.engine.create_execution_context()
        self.torch, self.stream, self.dynamic = torch, stream, dynamic
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self.device: dict[str, Any] = {}
        self.host: dict[str, Any] = {}
        self.numpy: dict[str, np.ndarray] = {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            if name not in shapes:
                raise ExportError(f"{path}: engine tensor {name!r} is not in the export's layout {sorted(shapes)}")
            if self.engine.get_tensor_dtype(name) != trt.float32:
                raise ExportError(f"{path}: tensor {name!r} is {self.engine.get_tensor_dtype(name)}, expected float32 I/O")
            self.device[name] = torch.empty(shapes[name], dtype=torch.float32, device="cuda")
            self.host[name] = torch.empty(shapes[name], dtype=torch.float32, pin_memory=True)
            self.numpy[name] = self.host[name].numpy()
            self.context.set_tensor_address(name, self.device[name].data_ptr())
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (self.inputs if is_input else self.outputs).append(name)

    def run(self, n: int | None = None) -> None:
        """Copy inputs in, execute, copy outputs out, wait. ``n``: rows of the dynamic-batch tensors to move."""
        torch = self.torch
        with torch.cuda.stream(self.stream):
            for name in self.inputs:
                rows = n if name == self.dynamic else None
                self.device[name][:rows].copy_(self.host[name][:rows], non_blocking=True)
            if self.dynamic is not None:
                self.context.set_input_shape(self.dynamic, tuple(self.device[self.dynamic][:n].shape))
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed (its log says why)")
            for name in self.outputs:
                rows = n if self.dynamic is not None else None
                self.host[name][:rows].copy_(self.device[name][:rows], non_blocking=True)
        self.stream.synchronize()


class TensorRTBackend:
    """The engines of an export directory on the GPU. See :class:`worldmodel.backends.base.Backend`.

    ``export_dir``: an export with a ``"tensorrt"`` metadata section (``oniwm export --format tensorrt``).
    ``config``: horizon and max_samples, checked against the export.
    """

    name = "tensorrt"

    def __init__(self, export_dir: str | Path, config: BackendConfig) -> None:
        trt = require_extra("tensorrt", "tensorrt", "the tensorrt backend", TENSORRT_HINT)
        import torch

        if not torch.cuda.is_available():
            raise BackendUnavailable("the tensorrt backend: no NVIDIA GPU is usable here (torch.cuda.is_available() is "
                                     "False); use the onnxruntime backend on this machine")
        export_dir = Path(export_dir)
        meta = read_export_metadata(export_dir)
        section = meta.get("tensorrt")
        if not section:
            raise ExportError(f"{export_dir}: no TensorRT engines; build them with "
                              f"`oniwm export --checkpoint RUN --format tensorrt --out {export_dir}`")
        if section["version"] != trt.__version__:
            raise ExportError(f"{export_dir}: engines built with TensorRT {section['version']}, this is {trt.__version__}; "
                              "engines are tied to the version and GPU: rebuild them here")
        if section.get("parity", {}).get("passed") is False:
            raise ExportError(f"{export_dir}: these engines failed their parity check against torch (see metadata.json)")
        self.io = io = IOSpec.from_dict(meta["io"])
        check_sizes(io, config, str(export_dir))
        self.metadata = meta
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        stream = torch.cuda.Stream()
        engines = section["engines"]
        self._observe = _Engine(trt, torch, runtime, export_dir / engines["observe"]["file"],
                                dict(io.observe_inputs() + io.observe_outputs()), stream)
        self._rollout = _Engine(trt, torch, runtime, export_dir / engines["rollout"]["file"],
                                dict(io.rollout_inputs(io.max_samples) + io.rollout_outputs(io.max_samples)), stream,
                                dynamic="actions")
        obs_np = self._observe.numpy
        # Per-tick views of the (1, *shape) host inputs, so a tick's arrays copy in without reshaping per call.
        self._obs_in = [(name, shape, obs_np[name].reshape(shape)) for name, shape in io.obs]
        self._state = BeliefState(obs_np["deter_out"], obs_np["stoch_out"])
        self._pred = PredictionBuffers(io, [self._rollout.numpy[name] for name in PREDICTION_NAMES])
        log.info("tensorrt %s backend: %s on %s", trt.__version__, export_dir, torch.cuda.get_device_name())

    @classmethod
    def from_config(cls, config: BackendConfig) -> TensorRTBackend:
        # The dependency check comes first, so a machine without TensorRT hears about the extra, not the path.
        require_extra("tensorrt", "tensorrt", "the tensorrt backend", TENSORRT_HINT)
        if not config.export_dir:
            raise ValueError("backend tensorrt needs backend.export_dir (the output of `oniwm export --format tensorrt`)")
        return cls(config.export_dir, config)

    def initial_state(self) -> BeliefState:
        return BeliefState(np.zeros((1, self.io.deter), np.float32), np.zeros((1, self.io.stoch), np.float32))

    def observe(self, state: BeliefState, obs: Mapping[str, np.ndarray], prev_action: np.ndarray, dt_s: float) -> BeliefState:
        host, io = self._observe.numpy, self.io
        host["dt_s"][0] = positive_finite(dt_s, "dt_s")
        # Inputs are copied into the host mirrors before the outputs are written, so the state this backend
        # returned last time may be passed straight back in.
        np.copyto(host["deter"], float32_input(state.deter, (1, io.deter), "deter"))
        np.copyto(host["stoch"], float32_input(state.stoch, (1, io.stoch), "stoch"))
        np.copyto(host["prev_action"][0], float32_input(prev_action, (io.action_dim,), "prev_action"))
        for name, shape, view in self._obs_in:
            np.copyto(view, float32_input(obs[name], shape, name))
        self._observe.run()
        return self._state

    def rollout(self, state: BeliefState, actions: np.ndarray, dt_s: float) -> Predictions:
        n = check_actions(actions, self.io)
        host = self._rollout.numpy
        host["dt_s"][0] = positive_finite(dt_s, "dt_s")
        np.copyto(host["deter"], float32_input(state.deter, (1, self.io.deter), "deter"))
        np.copyto(host["stoch"], float32_input(state.stoch, (1, self.io.stoch), "stoch"))
        np.copyto(host["actions"][:n], actions)
        self._rollout.run(n)
        return self._pred.view(n)
