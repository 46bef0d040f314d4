"""ONNX export: the two graphs and their metadata, the dynamic batch, parity with torch at 1e-4 on random and real
ticks, a failed parity leaving the directory untouched, the CLI, and TensorRT's clear refusal without a GPU."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

from train.synthetic import SyntheticSpec, synthetic_episode
from worldmodel.backends import BackendConfig, BackendUnavailable, create_backend
from worldmodel.backends.base import EXPORT_FORMAT, TENSORRT_HINT, ExportError, IOSpec
from worldmodel.checkpoint import save_checkpoint
from worldmodel.export.onnx_export import ParityError, export_onnx, parity_check, random_ticks, real_looking_ticks
from worldmodel.model import ModalitySpec, WorldModel, compute_normalization, modalities_from_batch, model_config
from worldmodel.model.encoders import ImageEncoder

H, N = 5, 24
SPEC = SyntheticSpec(episodes=1, duration_s=1.2, beams=48, depth_shape=(16, 16))
ONIWM = [sys.executable, "-m", "worldmodel.cli"]
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def make_model() -> WorldModel:
    ep = {k: torch.from_numpy(v)[None] for k, v in synthetic_episode(SPEC, 0).items()}
    cfg = model_config("tiny", modalities_from_batch(ep), 2, True, no_return_m=12.0)
    torch.manual_seed(0)
    return WorldModel(cfg, compute_normalization([ep], cfg)).eval()


def corridor_ticks(io: IOSpec, count: int = 40) -> list[dict]:
    """Real sensor ticks (the synthetic corridor's ray-cast LiDAR and depth, IMU, odometry, with their masks)."""
    ep = synthetic_episode(SPEC, 0)
    return [{"obs": {name: ep[name][t] for name, _ in io.obs}, "prev_action": ep["action"][t - 1], "dt_s": float(ep["dt"][t])}
            for t in range(1, count + 1)]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    model = make_model()
    return model, save_checkpoint(root / "run", model, 11), root


@pytest.fixture(scope="module")
def exported(run):
    model, ckpt, root = run
    io = IOSpec.from_model_config(model.config, H, N)
    meta = export_onnx(ckpt, root / "out", horizon=H, max_samples=N, ticks=corridor_ticks(io))
    return model, ckpt, root / "out", meta


def test_export_writes_two_graphs_and_complete_metadata(exported):
    model, ckpt, out, meta = exported
    assert sorted(p.name for p in out.iterdir()) == ["metadata.json", "observe.onnx", "rollout.onnx"]
    on_disk = json.loads((out / "metadata.json").read_text())
    assert on_disk == json.loads(json.dumps(meta))
    assert meta["format"] == EXPORT_FORMAT
    observe, rollout = meta["graphs"]["observe"], meta["graphs"]["rollout"]
    assert [i["name"] for i in observe["inputs"]][:4] == ["deter", "stoch", "prev_action", "dt_s"]
    per_tick = [n for m in model.config.modalities for n in (m.name, f"{m.name}_mask", f"{m.name}_age")]
    assert [i["name"] for i in observe["inputs"]][4:] == per_tick
    assert {i["name"]: i["shape"] for i in observe["inputs"]}["imu_mask"] == [1, 4]
    assert [o["name"] for o in observe["outputs"]] == ["deter_out", "stoch_out"]
    assert {i["name"]: i["shape"] for i in rollout["inputs"]}["actions"] == ["N", H, 2]
    assert {o["name"]: o["shape"] for o in rollout["outputs"]} == {
        "lidar_mean_m": ["N", H, 48], "lidar_std_m": ["N", H, 48], "pose_mean": ["N", H, 3], "pose_std": ["N", H, 3]}
    assert meta["model_config"] == model.config.to_dict()
    assert meta["normalization"] == model.norm.to_stats()
    assert meta["observation_spec"]["lidar_beams"] == 48 and meta["observation_spec"]["depth_height"] == 16
    ckpt_meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["checkpoint"]["sha256"] == ckpt_meta["sha256"] and meta["checkpoint"]["step"] == 11
    assert set(meta["versions"]) >= {"torch", "onnx", "onnxruntime", "opset"}
    assert IOSpec.from_dict(meta["io"]) == IOSpec.from_model_config(model.config, H, N)


def test_graphs_are_valid_opset_17_with_a_dynamic_batch_and_no_control_flow(exported):
    out = exported[2]
    for name in ("observe", "rollout"):
        graph = onnx.load(str(out / f"{name}.onnx"))
        onnx.checker.check_model(graph)
        assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 17
        assert not {"If", "Loop", "Scan"} & {n.op_type for n in graph.graph.node}, name
    actions = onnx.load(str(out / "rollout.onnx")).graph.input[2]
    assert actions.name == "actions" and actions.type.tensor_type.shape.dim[0].dim_param == "N"


def test_image_encoders_are_lowered_to_conv_in_the_graph_only(exported):
    model, _, out, meta = exported
    assert meta["graphs"]["observe"]["lowered"] == ["encoder.encoders.depth: patch Linear -> Conv"]
    ops = [n.op_type for n in onnx.load(str(out / "observe.onnx")).graph.node]
    assert ops.count("Conv") == len(model.config.image_patches)
    assert type(model.encoder.encoders["depth"]) is ImageEncoder  # the model itself is left as it was


def test_parity_on_real_ticks_and_random_inputs_is_within_1e_4(exported):
    model, _, out, meta = exported
    parity = meta["parity"]
    assert parity["passed"] and parity["tolerance"] == 1e-4
    assert parity["max_abs"] <= 1e-4 and parity["cases"] >= 40
    assert set(parity["rollout"]) == {"lidar_mean_m", "lidar_std_m", "pose_mean", "pose_std"}
    # Again, independently: other seeds, the runtime's backend on the final files.
    backend = create_backend(BackendConfig(name="onnxruntime", export_dir=str(out), horizon=H, max_samples=N))
    again = parity_check(model, backend, seed=7)
    assert again["passed"] and again["max_abs"] <= 1e-4


def test_input_generators_have_the_layout_and_physical_ranges(exported):
    model = exported[0]
    io = IOSpec.from_model_config(model.config, H, N)
    for tick in real_looking_ticks(model, io, 6) + random_ticks(io, 6):
        assert {k: np.shape(v) for k, v in tick["obs"].items()} == dict(io.obs)
        assert tick["obs"]["lidar"].min() >= 0 and tick["obs"]["lidar"].max() <= 12.0 + 1e-6
        assert set(np.unique(tick["obs"]["lidar_mask"])) <= {0.0, 1.0} and tick["dt_s"] > 0


def test_a_failed_parity_check_raises_and_leaves_the_directory_as_it_was(exported, run):
    _, ckpt, root = run
    out = root / "strict"
    export_onnx(ckpt, out, horizon=H, max_samples=N)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ParityError, match=r"parity check failed: max abs difference .* > 1e-12"):
        export_onnx(ckpt, out, horizon=H + 1, max_samples=N, tolerance=1e-12)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no staging left, nothing replaced


def test_a_model_without_lidar_or_pose_head_cannot_feed_the_planner():
    cfg = model_config("tiny", (ModalitySpec("odom", "odom", (5,)),), 2, True)
    with pytest.raises(ExportError, match="one ranges modality"):
        IOSpec.from_model_config(cfg, H, N)


def test_cli_exports_and_prints_the_parity(run):
    _, ckpt, root = run
    out = root / "cli"
    result = subprocess.run([*ONIWM, "export", "--checkpoint", str(ckpt.parent.parent), "--format", "onnx", "--out", str(out),
                             "--horizon", "3", "--max-samples", "8", "--beam-stride", "4"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "parity vs torch" in result.stdout and "rollout.onnx" in result.stdout
    io = json.loads((out / "metadata.json").read_text())["io"]
    assert (io["horizon"], io["beam_stride"], io["beams"]) == (3, 4, 12)
    backend = create_backend(BackendConfig(name="onnxruntime", export_dir=str(out), horizon=3, max_samples=8,
                                           beam_stride=4))
    assert backend.rollout(backend.initial_state(), np.zeros((2, 3, 2), np.float32), 0.2).lidar_mean_m.shape == (2, 3, 12)
    with pytest.raises(ExportError, match="beam_stride is 1; re-export with --beam-stride 1"):
        create_backend(BackendConfig(name="onnxruntime", export_dir=str(out), horizon=3, max_samples=8))


@pytest.mark.skipif(HAS_TENSORRT, reason="tensorrt is installed: the refusal is for machines without it")
def test_cli_tensorrt_without_tensorrt_says_what_is_missing_and_writes_nothing(run):
    _, ckpt, root = run
    out = root / "trt"
    result = subprocess.run([*ONIWM, "export", "--checkpoint", str(ckpt), "--format", "tensorrt", "--out", str(out)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert TENSORRT_HINT in result.stderr
    assert not out.exists()


def test_tensorrt_build_without_tensorrt_names_the_extra(exported):
    from worldmodel.export.tensorrt_build import build_engines

    if HAS_TENSORRT:
        pytest.skip("tensorrt is installed")
    with pytest.raises(BackendUnavailable, match=r"pip install oni-worldmodel\[tensorrt\] on a machine with an NVIDIA GPU"):
        build_engines(exported[2])


@pytest.mark.skipif(not HAS_TENSORRT, reason=TENSORRT_HINT)
def test_tensorrt_engines_build_and_match_torch_at_fp16(exported):
    from worldmodel.export.tensorrt_build import FP16_TOLERANCE, build_engines

    section = build_engines(exported[2])
    assert section["precision"] == "fp16" and section["parity"]["max_abs"] <= FP16_TOLERANCE
    backend = create_backend(BackendConfig(name="tensorrt", export_dir=str(exported[2]), horizon=H, max_samples=N))
    pred = backend.rollout(backend.initial_state(), np.zeros((3, H, 2), np.float32), 0.1)
    assert pred.lidar_mean_m.shape == (3, H, 48)
