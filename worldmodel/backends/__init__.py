"""Backends: the world model's belief update and batched rollout behind one numpy interface.

:data:`BACKENDS` maps each name of :data:`BACKEND_NAMES` to a factory ``(BackendConfig) -> Backend``; the factories
import their backend module (and its optional dependency) only when called, so ``import worldmodel.backends``
loads neither onnxruntime nor tensorrt. A backend whose dependency or hardware is missing raises
:class:`BackendUnavailable` naming the pip extra. See :mod:`.base` for the interface and the buffer contract.

Example::

    backend = create_backend(BackendConfig(name="onnxruntime", export_dir="export/a"))
    state = backend.initial_state()
    state = backend.observe(state, assembler.tick(t_ns), assembler.out["action"], dt_s)   # every tick
    preds = backend.rollout(state, samples, 0.1)        # samples (N, H, A) -> preds.lidar_mean_m (N, H, beams) ...
"""

from __future__ import annotations

from typing import Callable

from worldmodel.backends.base import (
    BACKEND_NAMES,
    Backend,
    BackendConfig,
    BackendUnavailable,
    BeliefState,
    ExportError,
    IOSpec,
    Predictions,
)

__all__ = [
    "BACKENDS",
    "BACKEND_NAMES",
    "Backend",
    "BackendConfig",
    "BackendUnavailable",
    "BeliefState",
    "ExportError",
    "IOSpec",
    "Predictions",
    "create_backend",
]


def _torch(config: BackendConfig) -> Backend:
    from worldmodel.backends.torch_backend import TorchBackend

    return TorchBackend.from_config(config)


def _onnxruntime(config: BackendConfig) -> Backend:
    from worldmodel.backends.onnx_backend import OnnxBackend

    return OnnxBackend.from_config(config)


def _tensorrt(config: BackendConfig) -> Backend:
    from worldmodel.backends.tensorrt_backend import TensorRTBackend

    return TensorRTBackend.from_config(config)


#: Backend name -> factory. tests/worldmodel/test_backends.py calls every entry.
BACKENDS: dict[str, Callable[[BackendConfig], Backend]] = {
    "torch": _torch,
    "onnxruntime": _onnxruntime,
    "tensorrt": _tensorrt,
}


def create_backend(config: BackendConfig) -> Backend:
    """The backend ``config.name`` loaded as ``config`` says (see :class:`BackendConfig`)."""
    return BACKENDS[config.name](config)
