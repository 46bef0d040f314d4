"""Golden files: the conformance suite for ONI clients in any language (tests/golden/README.md).

Each ``.bin`` (packed form) and ``.frames`` (wire frames) must decode to exactly its ``.json``; the codec must
re-encode every case to the same bytes; each ``bad/`` message must be refused with its reject kind.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import zlib
from pathlib import Path

import msgpack
import numpy as np
import pytest

from oni import codec
from oni.errors import RejectedMessage
from oni.message import Header
from oni.schema import SchemaRegistry
from oni.tensor import DTYPES, Png

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "oni"
SCRIPT = Path(__file__).resolve().parent.parent.parent / "scripts" / "make_golden.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("make_golden", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


make_golden = _load_script()
MANIFEST = json.loads((GOLDEN / "MANIFEST.json").read_text())
NAMES = sorted(MANIFEST["cases"])
BAD = sorted(MANIFEST["bad"])


def _frames(path: Path) -> list[bytes]:
    frames = msgpack.unpackb(path.read_bytes())
    assert isinstance(frames, list) and all(isinstance(f, bytes) for f in frames)
    return frames


def _json_text(msg) -> str:
    return json.dumps(msg.to_json(), indent=1, allow_nan=False) + "\n"


def test_the_files_on_disk_are_exactly_the_cases():
    on_disk = {p.relative_to(GOLDEN).as_posix() for p in GOLDEN.rglob("*") if p.is_file()}
    expected = {f"{n}{ext}" for n in NAMES for ext in (".bin", ".frames", ".json")}
    expected |= {f"bad/{n}{ext}" for n in BAD for ext in (".frames", ".json")}
    assert on_disk == expected | {"MANIFEST.json"}


def test_golden_cases_cover_every_topic_encoding_and_placement():
    cases = MANIFEST["cases"].values()
    assert {c["topic"] for c in cases} == {name for name, _ in SchemaRegistry.default().names()}
    assert set().union(*(c["encodings"] for c in cases)) == {"raw", "quantized", "png"}
    assert {c["tensor_frames"] for c in cases} >= {0, 1, 2}
    assert set(MANIFEST["bad"].values()) == {
        "malformed", "unknown_schema", "unsupported_version", "schema", "tensor_mismatch", "non_finite", "too_large"
    }


@pytest.mark.parametrize("name", NAMES)
def test_packed_and_frame_forms_decode_to_the_expected_json(name):
    expected = (GOLDEN / f"{name}.json").read_text()
    topic = MANIFEST["cases"][name]["topic"]
    packed = codec.unpack((GOLDEN / f"{name}.bin").read_bytes(), topic)
    assert _json_text(packed) == expected
    frames = _frames(GOLDEN / f"{name}.frames")
    assert len(frames) - 2 == MANIFEST["cases"][name]["tensor_frames"]
    assert frames[0] == topic.encode()
    assert _json_text(codec.decode(frames)) == expected


@pytest.mark.parametrize("name", NAMES)
def test_json_values_rebuild_the_tensors_bit_exactly(name):
    """What a client in another language does: read the JSON, build the array, compare with its own decode."""
    expected = json.loads((GOLDEN / f"{name}.json").read_text())
    msg = codec.unpack((GOLDEN / f"{name}.bin").read_bytes(), expected["topic"])
    assert msg.header == Header(**expected["header"])
    for key, value in expected["data"].items():
        got = msg.data[key]
        if isinstance(value, dict) and set(value) == {"dtype", "shape", "values"}:
            rebuilt = np.array(value["values"], dtype=DTYPES[value["dtype"]]).reshape(value["shape"])
            assert rebuilt.tobytes() == np.ascontiguousarray(got, dtype=DTYPES[value["dtype"]]).tobytes()
        else:
            assert got == value and type(got) is type(value)


@pytest.mark.parametrize("case", make_golden.golden_cases(), ids=lambda c: c.name)
def test_encoding_is_deterministic_and_matches_the_files(case):
    if any(isinstance(v, Png) for v in case.data.values()) and zlib.ZLIB_RUNTIME_VERSION != MANIFEST["zlib"]:
        pytest.skip(f"PNG bytes depend on zlib: files made with {MANIFEST['zlib']}, this is {zlib.ZLIB_RUNTIME_VERSION}")
    header = case.header()
    assert codec.pack(header, case.data) == (GOLDEN / f"{case.name}.bin").read_bytes()
    frames = [bytes(f) for f in codec.encode(case.topic, header, case.data)]
    assert frames == _frames(GOLDEN / f"{case.name}.frames")


@pytest.mark.parametrize(
    "name", [n for n in NAMES if MANIFEST["cases"][n]["encodings"] in ([], ["raw"])]
)
def test_decoded_raw_messages_re_encode_to_the_same_bytes(name):
    packed = (GOLDEN / f"{name}.bin").read_bytes()
    msg = codec.unpack(packed, MANIFEST["cases"][name]["topic"])
    assert codec.pack(msg.header, msg.data) == packed


@pytest.mark.parametrize("name", BAD)
def test_bad_messages_are_refused_with_their_kind(name):
    spec = json.loads((GOLDEN / "bad" / f"{name}.json").read_text())
    with pytest.raises(RejectedMessage) as info:
        codec.decode(_frames(GOLDEN / "bad" / f"{name}.frames"), limits=codec.DecodeLimits(spec["max_message_bytes"]))
    assert info.value.kind == spec["reject"] == MANIFEST["bad"][name]


def test_make_golden_check_agrees_with_the_files(capsys):
    if zlib.ZLIB_RUNTIME_VERSION != MANIFEST["zlib"]:
        pytest.skip("PNG bytes depend on the zlib version")
    assert make_golden.main(["--check"]) == 0, capsys.readouterr().out


def test_make_golden_writes_atomically_and_removes_stale_files(tmp_path):
    (tmp_path / "old_case.bin").write_bytes(b"stale")
    (tmp_path / "notes.txt").write_text("not ours")
    assert make_golden.main(["--out", str(tmp_path)]) == 0
    assert not (tmp_path / "old_case.bin").exists() and (tmp_path / "notes.txt").exists()
    assert (tmp_path / "sensor_odom_scalars.bin").read_bytes() == (GOLDEN / "sensor_odom_scalars.bin").read_bytes()
    assert not list(tmp_path.rglob("*.tmp"))
    assert make_golden.main(["--out", str(tmp_path), "--check"]) == 0
