"""The dependency rules of ARCHITECTURE.md: ``import oni`` never loads torch or mujoco."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import importlib, pkgutil, sys
import oni
for info in pkgutil.walk_packages(oni.__path__, "oni."):
    importlib.import_module(info.name)
heavy = sorted(m for m in ("torch", "mujoco", "gymnasium", "onnx", "tensorrt", "rclpy") if m in sys.modules)
ours = sorted({m.split(".")[0] for m in sys.modules} & {"worldmodel", "robots", "sim", "train"})
print(heavy, ours)
assert not heavy, f"import oni loaded {heavy}"
assert not ours, f"oni imported project packages {ours}"
"""


def test_every_oni_module_imports_without_torch_or_mujoco():
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr + result.stdout


def test_oni_cli_commands_do_not_load_torch():
    code = (
        "import sys\nfrom worldmodel.cli import build_parser\n"
        "build_parser(['registry', 'list'])\nbuild_parser(['demo'])\n"
        "assert 'torch' not in sys.modules and 'mujoco' not in sys.modules, 'heavy import'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
