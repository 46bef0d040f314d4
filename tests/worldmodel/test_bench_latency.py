"""``oniwm bench latency``: the report's layout (stages -> backend -> p50/p99/max), torch measured as the reference in
the same run, the matmul peak and the rollout's fraction of it, the targets, the histogram PNG; and the helpers."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

from worldmodel.bench_latency import (
    HALLWAY_MODALITIES,
    _targets,
    interleaved,
    preset_model,
    rollout_flops,
    summarize,
)

ONIWM = [sys.executable, "-m", "worldmodel.cli"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    result = subprocess.run([*ONIWM, "bench", "latency", "--json", str(out / "latency.json"), "--quick", "--preset", "tiny",
                             "--samples", "16", "--horizon", "3", "--threads", "1"],
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    return json.loads((out / "latency.json").read_text()), result.stdout, out


def test_report_has_every_stage_per_backend_with_torch_as_reference(report):
    data, _, _ = report
    stages = data["stages"]
    assert {"belief_update", "rollout", "full_plan"} <= set(stages)
    for stage, per in stages.items():
        assert "torch" in per and "onnxruntime" in per, stage
        for backend, s in per.items():
            assert {"p50_us", "p99_us", "max_us"} <= set(s), (stage, backend)
            assert 0 < s["p50_us"] <= s["p99_us"] <= s["max_us"], (stage, backend)
    # Up to the quick counts; fewer (never less than one block) when the stage time budget ends it on a busy machine.
    assert 500 <= stages["belief_update"]["torch"]["calls"] <= 2000 and 10 <= stages["rollout"]["onnxruntime"]["calls"] <= 30


def test_the_full_tick_is_measured_and_unavailable_backends_are_said(report):
    data, stdout, _ = report
    assert "full_tick" in data["stages"] and data["targets"]["full_tick_within_tick"]["limit_ms"] == 20.0
    if importlib.util.find_spec("tensorrt") is None:
        assert "pip install oni-worldmodel[tensorrt]" in data["backends_unavailable"]["tensorrt"]
        assert "tensorrt not measured" in stdout
    assert data["stage_info"]["full_plan"].startswith("worldmodel.planner")


def test_peak_and_fraction_of_peak_come_from_the_same_run(report):
    data, _, _ = report
    assert data["peak_gflops"] > 0 and data["peak"]["threads"] == 1
    assert data["rollout_flops"] == rollout_flops(preset_model("tiny").config, 16, 3, 90)  # every 4th beam decoded
    best = data["rollout_fraction_of_peak_backend"]
    expected = data["rollout_flops"] / (data["stages"]["rollout"][best]["p50_us"] * 1e-6) / 1e9 / data["peak_gflops"]
    assert data["rollout_fraction_of_peak"] == pytest.approx(expected)
    assert 0 < data["rollout_fraction_of_peak"] < 2


def test_targets_png_table_and_conditions(report):
    data, stdout, out = report
    assert set(data["targets"]) == {"belief_update_p99_us", "belief_update_speedup_vs_torch", "full_plan_within_tick",
                                    "full_tick_within_tick"}
    assert all(isinstance(t["pass"], bool) for t in data["targets"].values())
    assert (out / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert data["histogram_png"] == str(out / "latency.png")
    assert data["parity"]["passed"] and "untrained" in data["model"]["weights"]
    assert data["conditions"]["threads"] == 1 and len(data["conditions"]["load_average_start"]) == 3
    for word in ("belief_update", "rollout", "full_plan", "matmul peak", "target"):
        assert word in stdout
    assert not list(out.glob(".*tmp*"))  # atomic writes leave no temporaries


def test_rollout_flops_of_the_default_preset_by_hand():
    cfg = preset_model("default").config
    gru = 2 * (32 + 2 + 2 + 128) * 3 * 128
    prior = 2 * (128 * 128 + 128 * 64)
    lidar = 2 * (160 * 128 + 128 * 720)
    pose = 2 * (160 * 128 + 128 * 6)
    assert rollout_flops(cfg, 256, 10, 360) == (gru + prior + lidar + pose) * 2560
    assert [m.name for m in cfg.modalities] == [m[0] for m in HALLWAY_MODALITIES]


def test_summarize_reports_microseconds():
    s = summarize(np.arange(1, 101) * 1000)  # 1..100 us
    assert s["p50_us"] == pytest.approx(50.5) and s["p99_us"] == pytest.approx(99.01) and s["max_us"] == 100.0
    assert s["calls"] == 100


def test_interleaved_counts_calls_and_takes_turns_in_blocks():
    order: list[str] = []
    times = interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, warmup=2, calls=5, block=2)
    assert order[:4] == ["a", "a", "b", "b"]  # warm-up
    assert order[4:] == ["a", "a", "b", "b", "a", "a", "b", "b", "a", "b"]
    assert {k: len(v) for k, v in times.items()} == {"a": 5, "b": 5} and all((v > 0).all() for v in times.values())
    order.clear()
    times = interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, warmup=0, calls=2, block=2, rewarm=1)
    assert order == ["a", "a", "a", "b", "b", "b"] and len(times["a"]) == 2  # one untimed call opens each block


def test_targets_pass_and_fail_on_their_limits():
    def stage(p50, p99):
        return {"p50_us": p50, "p99_us": p99, "max_us": p99}

    good = _targets({"belief_update": {"torch": stage(500, 900), "onnxruntime": stage(100, 140)},
                     "full_plan": {"torch": stage(30e3, 40e3), "onnxruntime": stage(12e3, 19e3)}})
    assert all(t["pass"] for t in good.values())
    assert good["belief_update_speedup_vs_torch"]["value"] == pytest.approx(5.0)
    bad = _targets({"belief_update": {"torch": stage(300, 400), "onnxruntime": stage(100, 160)},
                    "full_plan": {"torch": stage(30e3, 40e3)}})
    assert not any(t["pass"] for t in bad.values())


