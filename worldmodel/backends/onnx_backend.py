"""The ``onnxruntime`` backend: the exported graphs on ONNX Runtime's CPU provider, tuned for per-call latency.

What makes a call cheap on a 2-core CPU, where the belief update is ~100 small kernels and Python overhead is a
large share of it:

- one session per graph with its own threads: the batch-1 belief update runs on one intra-op thread (a
  kernel of a few hundred flops costs less than waking a second thread), the rollout on ``threads`` whose
  idle workers sleep rather than spin; full graph optimization (constant folding, Gemm/LayerNorm fusions);
  sequential execution; denormals flushed to zero (a slowly decaying recurrent state must not hit the slow
  path);
- no ``RunOptions``: this onnxruntime's Python wrapper pays ~50 us per call for one without a
  ``gpu_graph_id`` entry (it raises and catches a C++ exception to read it), more than the belief update;
- I/O bound once with ``IOBinding`` to raw pointers: inputs are read in place from the caller's arrays
  (``TickAssembler.out``, the planner's sample buffer, the previous state), outputs are written straight
  into buffers allocated at construction. A call rebinds only an input whose array object changed (checked
  then: shape, dtype, contiguity), so the steady state is one ``run_with_iobinding`` and no allocation;
- the belief state alternates between two output buffers, each with a binding prepared for it as input, so
  feeding the returned state back in costs nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from worldmodel.backends.base import (
    PREDICTION_NAMES,
    BackendConfig,
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

__all__ = ["OnnxBackend", "session_options"]

log = logging.getLogger(__name__)


def session_options(ort: Any, threads: int) -> Any:
    """``onnxruntime.SessionOptions`` for latency with ``threads`` intra-op threads (see the module docstring)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    # Idle workers sleep instead of spinning: on two cores the spinning worker takes the core the caller needs
    # next (the planner's cost, the next belief update, the rest of the process); measured faster under load.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # warnings about serializing hardware-specific optimizations are not ours
    options.add_session_config_entry("session.set_denormal_as_zero", "1")
    return options


class _Binding:
    """One ``IOBinding`` whose inputs point into numpy arrays; an input is rebound only when its array changes."""

    def __init__(self, session: Any) -> None:
        self.binding = session.io_binding()
        self._bound: dict[str, np.ndarray] = {}

    def holds(self, name: str, array: np.ndarray) -> bool:
        """Whether ``name`` is bound to this very array (so a call needs nothing done for it)."""
        return self._bound.get(name) is array

    def input(self, name: str, array: np.ndarray, shape: tuple[int, ...]) -> None:
        """Bind ``array`` (float32, C-contiguous, ``shape``'s element count) to ``name`` with ``shape``; the binding
        keeps a reference, so the memory it points into stays alive."""
        if self._bound.get(name) is not array:
            self.binding.bind_input(name, "cpu", 0, np.float32, list(shape), array.ctypes.data)
            self._bound[name] = array

    def output(self, name: str, array: np.ndarray) -> None:
        self.binding.bind_output(name, "cpu", 0, np.float32, list(array.shape), array.ctypes.data)


class OnnxBackend:
    """The graphs of an ``oniwm export`` directory on ONNX Runtime (CPU). See :class:`worldmodel.backends.base.Backend`.

    ``export_dir``: the export (its ``metadata.json`` gives the layout; kept in :attr:`metadata`). ``config``:
    horizon and max_samples (checked against the export), ``threads`` for the rollout and ``observe_threads`` for
    the belief update.
    """

    name = "onnxruntime"

    def __init__(self, export_dir: str | Path, config: BackendConfig) -> None:
        ort = require_extra("onnxruntime", "export", "the onnxruntime backend")
        export_dir = Path(export_dir)
        meta = read_export_metadata(export_dir)
        self.io = io = IOSpec.from_dict(meta["io"])
        check_sizes(io, config, str(export_dir))
        self.metadata = meta
        providers = ["CPUExecutionProvider"]
        files = {name: export_dir / entry["file"] for name, entry in meta["graphs"].items()}
        for path in files.values():
            if not path.exists():
                raise ExportError(f"{path}: missing (named in {export_dir / 'metadata.json'}); re-export")
        self._observe = ort.InferenceSession(str(files["observe"]), session_options(ort, config.observe_threads),
                                             providers=providers)
        self._rollout = ort.InferenceSession(str(files["rollout"]), session_options(ort, config.rollout_threads),
                                             providers=providers)
        self._obs_shapes = {name: (1, *shape) for name, shape in io.obs}
        # Scalars and small inputs the backend owns (dt, and copies of inputs that cannot be read in place).
        self._dt = np.zeros(1, np.float32)
        self._own: dict[str, np.ndarray] = {}
        # Belief: two buffers; binding i reads buffer i and writes buffer 1 - i.
        self._states = [self.initial_state() for _ in range(2)]
        self._observe_bindings = [_Binding(self._observe) for _ in range(2)]
        for i, binding in enumerate(self._observe_bindings):
            source, target = self._states[i], self._states[1 - i]
            binding.input("deter", source.deter, source.deter.shape)
            binding.input("stoch", source.stoch, source.stoch.shape)
            binding.input("dt_s", self._dt, (1,))
            binding.output("deter_out", target.deter)
            binding.output("stoch_out", target.stoch)
        # Rollout: one binding per state it can start from (the two belief buffers, and a buffer foreign states
        # are copied into), so the tick's state never needs rebinding; outputs bound to the first N rows of
        # buffers sized for max_samples.
        self._pred = PredictionBuffers(io)
        self._rollout_start = self.initial_state()
        self._rollout_bindings = []
        for source in (*self._states, self._rollout_start):
            binding = _Binding(self._rollout)
            binding.input("deter", source.deter, source.deter.shape)
            binding.input("stoch", source.stoch, source.stoch.shape)
            binding.input("dt_s", self._dt, (1,))
            self._rollout_bindings.append(binding)
        self._bound_n = [0] * len(self._rollout_bindings)
        log.info("onnxruntime %s backend: %s (observe %d thread(s), rollout %d)", ort.__version__, export_dir,
                 config.observe_threads, config.rollout_threads)

    @classmethod
    def from_config(cls, config: BackendConfig) -> OnnxBackend:
        if not config.export_dir:
            raise ValueError("backend onnxruntime needs backend.export_dir (the output of `oniwm export`)")
        return cls(config.export_dir, config)

    def initial_state(self) -> BeliefState:
        return BeliefState(np.zeros((1, self.io.deter), np.float32), np.zeros((1, self.io.stoch), np.float32))

    def _readable(self, name: str, value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """``value`` itself when it can be read in place, else a copy in a buffer owned by the backend."""
        array = float32_input(value, shape, name)
        if array is value:
            return array
        own = self._own.get(name)
        if own is None or own.shape != shape:
            own = self._own[name] = np.empty(shape, np.float32)
        np.copyto(own, array)
        return own

    def _source(self, state: BeliefState, spare: BeliefState) -> int:
        """Which belief buffer ``state`` is (0 or 1); a state from elsewhere (the initial one, a copy) is copied
        into ``spare`` (belief buffer 0 for the update, the rollout's own for a rollout) and its index returned."""
        for i, own in enumerate(self._states):
            if state.deter is own.deter and state.stoch is own.stoch:
                return i
        np.copyto(spare.deter, float32_input(state.deter, (1, self.io.deter), "deter"))
        np.copyto(spare.stoch, float32_input(state.stoch, (1, self.io.stoch), "stoch"))
        return 0 if spare is self._states[0] else 2

    def observe(self, state: BeliefState, obs: Mapping[str, np.ndarray], prev_action: np.ndarray, dt_s: float) -> BeliefState:
        self._dt[0] = positive_finite(dt_s, "dt_s")
        source = self._source(state, self._states[0])
        binding = self._observe_bindings[source]
        for name, shape in self.io.obs:
            value = obs[name]
            if not binding.holds(name, value):
                binding.input(name, self._readable(name, value, shape), self._obs_shapes[name])
        if not binding.holds("prev_action", prev_action):
            binding.input("prev_action", self._readable("prev_action", prev_action, (self.io.action_dim,)),
                          (1, self.io.action_dim))
        # No RunOptions: see the module docstring (~50 us per call with one).
        self._observe.run_with_iobinding(binding.binding)
        return self._states[1 - source]

    def rollout(self, state: BeliefState, actions: np.ndarray, dt_s: float) -> Predictions:
        n = check_actions(actions, self.io)
        self._dt[0] = positive_finite(dt_s, "dt_s")
        io = self.io
        source = self._source(state, self._rollout_start)
        binding = self._rollout_bindings[source]
        shape = (n, io.horizon, io.action_dim)
        binding.input("actions", self._readable("actions", actions, shape), shape)
        if n != self._bound_n[source]:
            for name, array in zip(PREDICTION_NAMES, self._pred.arrays()):
                binding.output(name, array[:n])
            self._bound_n[source] = n
        self._rollout.run_with_iobinding(binding.binding)
        return self._pred.view(n)
