"""Backends: the registry (every entry called), the numpy interface and its buffer contract, torch as the reference
(equal to the model's own verbs), onnxruntime against torch, in-place reads, and clear errors for what is missing."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
import torch

from train.synthetic import SyntheticSpec, synthetic_episode
from worldmodel.backends import (
    BACKEND_NAMES,
    BACKENDS,
    Backend,
    BackendConfig,
    BackendUnavailable,
    BeliefState,
    ExportError,
    IOSpec,
    create_backend,
)
from worldmodel.backends.base import TENSORRT_HINT
from worldmodel.backends.torch_backend import TorchBackend
from worldmodel.checkpoint import save_checkpoint
from worldmodel.model import (
    POSE,
    State,
    WorldModel,
    compute_normalization,
    modalities_from_batch,
    model_config,
    relative_trajectory,
)
from worldmodel.observation import ObservationSpec, TickAssembler

H, N = 4, 16
SPEC = SyntheticSpec(episodes=1, duration_s=1.0, beams=48, depth_shape=(16, 16))
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def episode() -> dict[str, np.ndarray]:
    return synthetic_episode(SPEC, 0)


def make_model() -> WorldModel:
    ep = {k: torch.from_numpy(v)[None] for k, v in episode().items()}
    cfg = model_config("tiny", modalities_from_batch(ep), 2, True, no_return_m=12.0)
    torch.manual_seed(0)
    return WorldModel(cfg, compute_normalization([ep], cfg)).eval()


def ticks(io: IOSpec, count: int = 12) -> list[dict]:
    """Real ticks of the synthetic corridor: {"obs", "prev_action", "dt_s"}."""
    ep = episode()
    return [{"obs": {name: ep[name][t].copy() for name, _ in io.obs}, "prev_action": ep["action"][t - 1].copy(),
             "dt_s": float(ep["dt"][t])} for t in range(1, count + 1)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(model, checkpoint dir, export dir) of one tiny model."""
    from worldmodel.export.onnx_export import export_onnx

    root = tmp_path_factory.mktemp("backends")
    model = make_model()
    ckpt = save_checkpoint(root / "run", model, 3)
    export_onnx(ckpt, root / "export", horizon=H, max_samples=N)
    return model, ckpt, root / "export"


def config(exported, name: str, **kw) -> BackendConfig:
    _, ckpt, out = exported
    return BackendConfig(name=name, checkpoint=str(ckpt), export_dir=str(out), horizon=H, max_samples=N, threads=1, **kw)


# ----------------------------------------------------------------------------------------------------------------
# Registry and config.

def test_registry_names_every_backend_and_holds_callables():
    assert tuple(BACKENDS) == BACKEND_NAMES == ("torch", "onnxruntime", "tensorrt")
    assert all(callable(factory) for factory in BACKENDS.values())


@pytest.mark.parametrize("name", BACKEND_NAMES)
def test_every_registry_entry_builds_its_backend_or_names_the_extra(exported, name):
    if name == "tensorrt" and not HAS_TENSORRT:
        with pytest.raises(BackendUnavailable, match=r"pip install oni-worldmodel\[tensorrt\] on a machine with an NVIDIA GPU"):
            BACKENDS[name](config(exported, name))
        return
    if name == "tensorrt":
        pytest.skip("tensorrt is installed: its backend needs engines built on this GPU (test_export covers the build)")
    backend = BACKENDS[name](config(exported, name))
    assert isinstance(backend, Backend) and backend.name == name
    assert backend.io.horizon == H and backend.io.max_samples == N


def test_a_missing_onnxruntime_names_the_export_extra(exported, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import now raises ImportError
    with pytest.raises(BackendUnavailable, match=r"pip install 'oni-worldmodel\[export\]'"):
        create_backend(config(exported, "onnxruntime"))


def test_backend_config_is_validated_by_name():
    with pytest.raises(ValueError, match="backend.name 'jax'"):
        BackendConfig(name="jax")
    with pytest.raises(ValueError, match="backend.horizon"):
        BackendConfig(horizon=0)
    with pytest.raises(ValueError, match="backend.threads"):
        BackendConfig(threads=-1)
    assert BackendConfig(threads=0).rollout_threads >= 1


def test_paths_are_required_and_exports_must_match_the_config(exported, tmp_path):
    with pytest.raises(ValueError, match="backend.checkpoint"):
        create_backend(BackendConfig(name="torch"))
    with pytest.raises(ValueError, match="backend.export_dir"):
        create_backend(BackendConfig(name="onnxruntime"))
    with pytest.raises(ExportError, match="missing; make the directory with `oniwm export"):
        create_backend(BackendConfig(name="onnxruntime", export_dir=str(tmp_path)))
    with pytest.raises(ExportError, match=f"exported for horizon {H}, backend.horizon is 7"):
        create_backend(dataclasses.replace(config(exported, "onnxruntime"), horizon=7))
    with pytest.raises(ExportError, match=f"at most {N} samples"):
        create_backend(dataclasses.replace(config(exported, "onnxruntime"), max_samples=N + 1))


def test_importing_the_backends_loads_no_optional_runtime():
    code = ("import sys, worldmodel.backends; "
            "print(sorted(m for m in ('onnxruntime', 'onnx', 'tensorrt') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.skipif(not HAS_TENSORRT, reason=TENSORRT_HINT)
def test_tensorrt_backend_refuses_an_export_without_engines(exported):
    with pytest.raises((ExportError, BackendUnavailable)):
        create_backend(config(exported, "tensorrt"))


# ----------------------------------------------------------------------------------------------------------------
# The torch reference is the model's own verbs.

def test_torch_backend_equals_the_model_verbs(exported):
    model = exported[0]
    backend = TorchBackend(model, H, N)
    state_np = backend.initial_state()
    state_t = model.initial_state(1)
    for tick in ticks(backend.io, 5):
        state_np = backend.observe(state_np, tick["obs"], tick["prev_action"], tick["dt_s"])
        obs = {k: torch.from_numpy(np.asarray(v))[None] for k, v in tick["obs"].items()}
        with torch.no_grad():
            state_t = model.observe(state_t, obs, torch.from_numpy(tick["prev_action"])[None], tick["dt_s"])
    np.testing.assert_allclose(state_np.deter, state_t.deter.numpy(), atol=1e-6)
    np.testing.assert_allclose(state_np.stoch, state_t.stoch.numpy(), atol=1e-6)
    actions = np.random.default_rng(0).uniform(-0.5, 0.5, (N, H, 2)).astype(np.float32)
    pred = backend.rollout(state_np, actions, 0.1)
    with torch.no_grad():
        start = State(state_t.deter.expand(N, -1), state_t.stoch.expand(N, -1))
        p = model.predict(model.imagine(start, torch.from_numpy(actions), 0.1), 0.1, ("lidar", POSE))
        pose_mean, pose_var = relative_trajectory(p[POSE])
    np.testing.assert_allclose(pred.lidar_mean_m, p["lidar"].mean.numpy(), atol=1e-5)
    np.testing.assert_allclose(pred.lidar_std_m, p["lidar"].std.numpy(), rtol=1e-5)
    np.testing.assert_allclose(pred.pose_mean, pose_mean.numpy(), atol=1e-6)
    np.testing.assert_allclose(pred.pose_std, pose_var.sqrt().numpy(), atol=1e-6)


def test_a_strided_rollout_decodes_exactly_the_kept_beams_of_the_full_one(exported):
    model = exported[0]
    full, strided = TorchBackend(model, H, N), TorchBackend(model, H, N, beam_stride=4)
    assert strided.io.beams == len(range(0, full.io.beams, 4)) and strided.io.beam_stride == 4
    state = full.initial_state()
    actions = np.random.default_rng(1).uniform(-0.5, 0.5, (N, H, 2)).astype(np.float32)
    a, b = full.rollout(state, actions, 0.2).copy(), strided.rollout(state, actions, 0.2)
    np.testing.assert_allclose(b.lidar_mean_m, a.lidar_mean_m[..., ::4], atol=1e-5)
    np.testing.assert_allclose(b.lidar_std_m, a.lidar_std_m[..., ::4], rtol=1e-5)
    np.testing.assert_allclose(b.pose_mean, a.pose_mean, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# The interface and the buffer contract, on every backend available here.

def available(exported) -> list:
    out = [TorchBackend(exported[0], H, N)]
    out.append(create_backend(config(exported, "onnxruntime")))
    return out


def test_shapes_dtypes_and_the_returned_state_fed_back(exported):
    for backend in available(exported):
        io = backend.io
        state = backend.initial_state()
        seen = set()
        for tick in ticks(io, 4):
            state = backend.observe(state, tick["obs"], tick["prev_action"], tick["dt_s"])
            assert state.deter.shape == (1, io.deter) and state.stoch.shape == (1, io.stoch)
            assert state.deter.dtype == np.float32 and np.isfinite(state.deter).all()
            seen.add(id(state.deter))
        assert len(seen) == 2, f"{backend.name}: the state alternates between two preallocated buffers"
        actions = np.zeros((N, H, 2), np.float32)
        pred = backend.rollout(state, actions, 0.1)
        assert pred.lidar_mean_m.shape == pred.lidar_std_m.shape == (N, H, io.beams)
        assert pred.pose_mean.shape == pred.pose_std.shape == (N, H, 3)
        assert (pred.lidar_std_m > 0).all() and (pred.pose_std >= 0).all()
        small = backend.rollout(state, actions[:3], 0.1)
        assert small.lidar_mean_m.shape == (3, H, io.beams)
        np.testing.assert_allclose(small.pose_mean, backend.rollout(state, actions, 0.1).pose_mean[:3], atol=1e-6)
        assert backend.rollout(state, actions, 0.1).lidar_mean_m is backend.rollout(state, actions, 0.1).lidar_mean_m


def test_bad_inputs_are_refused_by_name(exported):
    for backend in available(exported):
        state, tick = backend.initial_state(), ticks(backend.io, 1)[0]
        with pytest.raises(ValueError, match=r"actions have shape \(17, 4, 2\)"):
            backend.rollout(state, np.zeros((N + 1, H, 2), np.float32), 0.1)
        with pytest.raises(ValueError, match=r"actions have shape \(2, 5, 2\)"):
            backend.rollout(state, np.zeros((2, H + 1, 2), np.float32), 0.1)
        with pytest.raises(ValueError, match="dt_s"):
            backend.rollout(state, np.zeros((2, H, 2), np.float32), math.nan)
        bad = dict(tick["obs"], lidar=np.zeros(47, np.float32))
        with pytest.raises(ValueError, match="lidar has shape"):
            backend.observe(state, bad, tick["prev_action"], 0.02)


def test_onnxruntime_matches_torch_and_reads_inputs_in_place(exported):
    torch_b, ort_b = available(exported)
    # One set of arrays, overwritten in place every tick, as TickAssembler.out is.
    live = {name: np.zeros(shape, np.float32) for name, shape in torch_b.io.obs}
    action = np.zeros(2, np.float32)
    states = [torch_b.initial_state(), ort_b.initial_state()]
    for tick in ticks(torch_b.io, 12):
        for name, value in tick["obs"].items():
            np.copyto(live[name], value)
        np.copyto(action, tick["prev_action"])
        states = [b.observe(s, live, action, tick["dt_s"]) for b, s in zip((torch_b, ort_b), states)]
        np.testing.assert_allclose(states[1].deter, states[0].deter, atol=1e-5)
        np.testing.assert_allclose(states[1].stoch, states[0].stoch, atol=1e-5)
    # Inputs that cannot be read in place (float64, not contiguous) are copied: same results.
    odd = {k: np.asarray(v, np.float64) for k, v in live.items()}
    odd["lidar"] = np.repeat(live["lidar"], 2)[::2]
    a = torch_b.observe(states[0].copy(), odd, action, 0.02)
    b = ort_b.observe(states[1].copy(), odd, action, 0.02)
    np.testing.assert_allclose(b.deter, a.deter, atol=1e-5)
    actions = np.random.default_rng(1).uniform(-0.5, 0.5, (N, H, 2)).astype(np.float32)
    for name, x in dataclasses.asdict(torch_b.rollout(a, actions, 0.1)).items():
        np.testing.assert_allclose(getattr(ort_b.rollout(b, actions, 0.1), name), x, atol=1e-4, err_msg=name)


def test_the_tick_assembler_output_feeds_a_backend_as_is(exported):
    backend = create_backend(config(exported, "onnxruntime"))
    spec = ObservationSpec(lidar_beams=48, depth_height=16, depth_width=16, imu_samples=4, odom=True)
    asm = TickAssembler(spec, control_hz=50.0)
    state = backend.initial_state()
    for k in range(1, 6):
        t_ns = k * 20_000_000
        asm.add_lidar(t_ns - 1_000_000, np.full(48, 2.0 + 0.1 * k, np.float32))
        asm.add_odom(t_ns - 1_000_000, 0.01 * k, 0.0, 0.0, 0.2, 0.0)
        asm.add_imu(t_ns - 2_000_000, np.array([0.0, 0.0, 9.8]), np.zeros(3))
        out = asm.tick(t_ns)
        state = backend.observe(state, out, out["action"], float(out["dt"]))
    assert np.isfinite(state.deter).all() and np.abs(state.deter).max() > 0


def test_steady_state_calls_allocate_no_arrays(exported):
    for backend in available(exported)[1:]:  # the compiled backends; torch eager allocates inside torch
        tick = ticks(backend.io, 1)[0]
        actions = np.zeros((N, H, 2), np.float32)
        state = backend.initial_state()
        for _ in range(5):
            state = backend.observe(state, tick["obs"], tick["prev_action"], 0.02)
            backend.rollout(state, actions, 0.1)
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(200):
            state = backend.observe(state, tick["obs"], tick["prev_action"], 0.02)
            backend.rollout(state, actions, 0.1)
        grown = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        assert grown < 4096, f"{backend.name}: {grown} bytes kept over 400 calls"


def test_a_foreign_state_is_copied_and_the_callers_arrays_are_not_written(exported):
    for backend in available(exported):
        tick = ticks(backend.io, 1)[0]
        mine = BeliefState(np.full((1, backend.io.deter), 0.1, np.float32), np.full((1, backend.io.stoch), 0.2, np.float32))
        keep = mine.copy()
        out = backend.observe(mine, tick["obs"], tick["prev_action"], 0.02)
        assert out.deter is not mine.deter
        np.testing.assert_array_equal(mine.deter, keep.deter)
        np.testing.assert_array_equal(mine.stoch, keep.stoch)
