"""Atomic writes: readers see the old content or the new, never a part."""

from __future__ import annotations

import json
import os
import stat

import pytest

from oni.files import atomic_write, write_json


def test_replaces_content_with_mode_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")
    write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    atomic_write(target, b"secret", mode=0o600)
    assert target.read_bytes() == b"secret" and stat.S_IMODE(target.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["report.json"]


def test_a_failing_writer_keeps_the_old_file(tmp_path):
    target = tmp_path / "cache.npz"
    target.write_bytes(b"old")

    def broken(handle):
        handle.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["cache.npz"]


def test_exclusive_refuses_an_existing_file(tmp_path):
    target = tmp_path / "robot.key"
    atomic_write(target, "first", exclusive=True)
    with pytest.raises(FileExistsError):
        atomic_write(target, "second", exclusive=True)
    assert target.read_text() == "first"
    assert os.listdir(tmp_path) == ["robot.key"]
