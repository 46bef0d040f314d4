"""The ``oniwm`` entry point: every registered command module loads, registers and answers ``--help``."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from worldmodel.cli import BENCHES, COMMANDS, build_parser

ONIWM = [sys.executable, "-m", "worldmodel.cli"]


@pytest.mark.parametrize("module", sorted(set(COMMANDS.values()) | set(BENCHES.values())))
def test_every_command_module_registers_a_callable(module):
    mod = importlib.import_module(module)
    assert callable(mod.register)


def test_full_parser_knows_every_command():
    help_text = build_parser().format_help()
    for command in [*COMMANDS, "bench"]:
        assert command in help_text


@pytest.mark.parametrize("argv", [[c, "--help"] for c in COMMANDS] + [["bench", b, "--help"] for b in BENCHES])
def test_each_command_answers_help(argv):
    result = subprocess.run([*ONIWM, *argv], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "usage: oniwm" in result.stdout


def test_unknown_command_is_a_clear_error():
    result = subprocess.run([*ONIWM, "fly"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "invalid choice: 'fly'" in result.stderr


def test_demo_runs_two_processes_and_reports(tmp_path):
    result = subprocess.run([*ONIWM, "demo", "--duration", "2"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "final statistics" in result.stdout
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line.startswith("sensor.")}
    assert set(rows) == {"sensor.lidar", "sensor.imu", "sensor.odom", "sensor.depth"}
    assert int(rows["sensor.imu"][1]) > 100  # ~200 Hz for 2 s
    assert all(row[-1] == "0" for row in rows.values())  # no rejects
    assert "Hz p50" in result.stderr  # the live status line
