"""The schema registry: packaged schemas, the fast validation path, the registry service and ``oniwm registry``.

The service tests run a real server in a thread on a random loopback port; every wait has a timeout.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import signal
import subprocess
import sys
import time
from importlib import resources
from typing import Any, Callable, Iterator

import msgpack
import numpy as np
import pytest
import zmq

from oni.cli import registry as registry_cli
from oni.codec import decode_body, pack
from oni.errors import RejectedMessage, SecurityError
from oni.message import Header, new_trace_id
from oni.registry_service import RegistryClient, RegistryError, RegistryServer, RegistryTimeout
from oni.schema import CompiledSchema, SchemaError, SchemaRegistry, compile_schema
from oni.security import ClientSecurity, KeyPair, ServerSecurity
from oni.tensor import DTYPES, FLOAT_DTYPES, Png, Quantized

pytestmark = pytest.mark.timeout(60)

ANY_PORT = "tcp://127.0.0.1:*"
PACKAGED = sorted(
    entry.name
    for entry in resources.files("oni").joinpath("schemas").iterdir()
    if entry.name.endswith(".json") and not entry.name.startswith("oni.common.")
)


def packaged(name: str) -> dict[str, Any]:
    """The packaged document of ``name`` (major 1), as shipped (not bundled)."""
    return json.loads(resources.files("oni").joinpath(f"schemas/{name}.v1.json").read_text())


def lidar_minor(version: str = "1.1", *, add: dict | None = None, required: list[str] | None = None, edit=None) -> dict:
    """sensor.lidar 1.0 turned into ``version``: with fields added, required changed, or any other edit."""
    document = packaged("sensor.lidar")
    document["x-oni-version"] = version
    data = document["properties"]["data"]
    data["properties"].update(add or {})
    data["required"] += required or []
    if edit is not None:
        edit(document)
    return document


RING = {"ring_id": {"type": "integer", "minimum": 0, "description": "Which ring of a multi-ring scanner."}}


def drop_scan_time(document: dict) -> None:
    document["properties"]["data"]["properties"].pop("scan_time_s")


# -- packaged schemas and the fast validation path ------------------------------------------------------------
def test_every_packaged_schema_compiles_and_is_registered():
    registry = SchemaRegistry.default()
    core = {"sensor.lidar", "sensor.imu", "sensor.odom", "sensor.depth", "actuator.cmd", "model.latent_state",
            "prediction.lidar", "prediction.pose", "diag.runtime"}  # ARCHITECTURE.md's core topics
    assert core <= {name.rsplit(".v", 1)[0] for name in PACKAGED}
    for file_name in PACKAGED:
        document = json.loads(resources.files("oni").joinpath(f"schemas/{file_name}").read_text())
        compiled = compile_schema(document)
        assert file_name == f"{compiled.name}.v{compiled.major}.json"
        assert registry.get(compiled.name, compiled.major).document == compiled.document
        # Self-contained: the common definitions are bundled in.
        assert {"header", "tensor"} <= set(compiled.document["$defs"])
    assert [name for name, _ in registry.names()] == sorted(name.rsplit(".v", 1)[0] for name in PACKAGED)


def _example_scalar(prop: dict[str, Any]) -> Any:
    kind = prop.get("type")
    if kind == "array":
        return [_example_scalar(prop.get("items", {"type": "string"}))]
    return {"number": 1.5, "integer": 3, "string": "x", "boolean": True}[kind]


def _array(dtype: str, ndim: int) -> np.ndarray:
    shape = (2, 3, 2, 1, 1, 1, 1, 1)[:ndim]
    return (np.arange(math.prod(shape)) % 2).astype(DTYPES[dtype]).reshape(shape)


def _tensor(array: np.ndarray, encoding: str) -> Any:
    return {"raw": lambda a: a, "quantized": Quantized, "png": Png}[encoding](array)


def _encodings(dtype: str, ndim: int, allowed: frozenset[str]) -> list[str]:
    fits = {"raw": True, "quantized": dtype in FLOAT_DTYPES, "png": dtype in ("uint8", "uint16") and ndim in (2, 3)}
    return [e for e in ("raw", "quantized", "png") if e in allowed and fits[e]]


def example_data(schema: CompiledSchema, optional: bool = True) -> dict[str, Any]:
    """A valid data map for ``schema``, built from the schema itself (every field, or only required ones)."""
    data_schema = schema.document["properties"]["data"]
    required = set(data_schema.get("required", ()))
    data: dict[str, Any] = {}
    for key, prop in data_schema["properties"].items():
        if not optional and key not in required:
            continue
        rule = schema.tensor_rules.get(key)
        if rule is None:
            data[key] = _example_scalar(prop)
        else:
            dtype = sorted(rule.dtypes)[0]
            ndim = max(rule.min_ndim, 1)
            data[key] = _tensor(_array(dtype, ndim), _encodings(dtype, ndim, rule.encodings)[0])
    return data


def body_of(schema: CompiledSchema, data: dict[str, Any]) -> dict[str, Any]:
    """The decoded-msgpack body a receiver sees (every tensor inline), for ``data``."""
    header = Header(schema.name, schema.version, 7, "src", 10, 20, "base", new_trace_id())
    return msgpack.unpackb(pack(header, data), raw=False)


def fast_accepts(schema: CompiledSchema, body: dict[str, Any], frames: tuple = ()) -> bool:
    """What a receiver does: ``decode_body`` (header checks in code, ``validate_data``, ``check_descriptor``)."""
    registry = SchemaRegistry.default()
    try:
        decode_body(copy.deepcopy(body), frames, schema.name, registry)
    except RejectedMessage:
        return False
    return True


def full_accepts(schema: CompiledSchema, body: dict[str, Any]) -> bool:
    """The whole JSON Schema document, compiled, on the whole body."""
    try:
        schema.validate(body)
    except RejectedMessage:
        return False
    return True


Case = tuple[str, dict[str, Any]]


def _edit(body: dict[str, Any], change: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    body = copy.deepcopy(body)
    change(body)
    return body


def good_bodies(schema: CompiledSchema) -> list[Case]:
    """Valid bodies: minimal and full, and each tensor in every allowed dtype, encoding and ndim bound."""
    cases = [
        ("required only", body_of(schema, example_data(schema, optional=False))),
        ("all", body_of(schema, example_data(schema))),
    ]
    for key, rule in schema.tensor_rules.items():
        for dtype in sorted(rule.dtypes):
            for ndim in sorted({max(rule.min_ndim, 1), rule.max_ndim}):
                for encoding in _encodings(dtype, ndim, rule.encodings):
                    data = {**example_data(schema), key: _tensor(_array(dtype, ndim), encoding)}
                    cases.append((f"{key} {dtype} {ndim}-d {encoding}", body_of(schema, data)))
    return cases


def _set(path: str, value: Any) -> Callable[[dict], None]:
    *parents, last = path.split("/")

    def change(body: dict) -> None:
        node = body
        for part in parents:
            node = node[part]
        node[last] = value

    return change


def _drop(path: str) -> Callable[[dict], None]:
    *parents, last = path.split("/")

    def change(body: dict) -> None:
        node = body
        for part in parents:
            node = node[part]
        del node[last]

    return change


def bad_bodies(schema: CompiledSchema) -> list[Case]:
    """Bodies both paths must refuse: each built from a valid one by one well-typed change."""
    base = body_of(schema, example_data(schema))
    cases: list[Case] = []

    def add(name: str, change: Callable[[dict], None]) -> None:
        cases.append((name, _edit(base, change)))

    add("wire version 2", _set("oni", 2))
    add("data not a map", _set("data", [1, 2]))
    add("header missing", _drop("header"))
    for field in base["header"]:
        add(f"header {field} missing", _drop(f"header/{field}"))
        add(f"header {field} wrong type", _set(f"header/{field}", 5 if isinstance(base["header"][field], str) else "5"))
    for field, value in (("seq", -1), ("seq", 1 << 64), ("stamp_ns", 1 << 63), ("pub_ns", -(1 << 63) - 1),
                         ("trace_id", "A" * 32), ("trace_id", "ab"), ("schema", "Sensor.Lidar"), ("schema", "lidar"),
                         ("schema_version", "1"), ("source", "s" * 257), ("frame_id", "f" * 257)):
        add(f"header {field}={str(value)[:12]}", _set(f"header/{field}", value))

    data_schema = schema.document["properties"]["data"]
    for key in data_schema.get("required", ()):
        add(f"required {key} missing", _drop(f"data/{key}"))
    for key, prop in data_schema["properties"].items():
        if key in schema.tensor_rules:
            continue
        add(f"{key} wrong type", _set(f"data/{key}", 7 if prop.get("type") == "string" else "7"))
        if "exclusiveMinimum" in prop:
            add(f"{key} at its exclusive minimum", _set(f"data/{key}", prop["exclusiveMinimum"]))
        if "minimum" in prop:
            add(f"{key} below its minimum", _set(f"data/{key}", prop["minimum"] - 1))

    for key, rule in schema.tensor_rules.items():
        path = f"data/{key}"
        dtype = base["data"][key]["dtype"]
        ndim = len(base["data"][key]["shape"])
        for other in sorted(set(DTYPES) - rule.dtypes)[:3]:
            # Well formed (bytes match the descriptor), but a dtype this field does not allow.
            cases.append((f"{key} dtype {other}", body_of(schema, {**example_data(schema), key: _array(other, ndim)})))
        for wrong_ndim in (rule.min_ndim - 1, rule.max_ndim + 1):
            if 1 <= wrong_ndim <= 8:
                data = {**example_data(schema), key: _array(dtype, wrong_ndim)}
                cases.append((f"{key} {wrong_ndim}-d", body_of(schema, data)))
        for encoding in sorted({"raw", "quantized", "png"} - rule.encodings):
            add(f"{key} encoding {encoding}", _set(f"{path}/encoding", encoding))
        add(f"{key} dtype unknown", _set(f"{path}/dtype", "complex64"))
        add(f"{key} encoding unknown", _set(f"{path}/encoding", "jpeg"))
        for part in ("dtype", "shape", "encoding", "data"):
            add(f"{key} without {part}", _drop(f"{path}/{part}"))
        for shape in ("2", [-1] * ndim, [True] * ndim, [1 << 31] * ndim, [[2]] * ndim):
            add(f"{key} shape {str(shape)[:16]}", _set(f"{path}/shape", shape))
        add(f"{key} frame and data", _set(f"{path}/frame", 0))
        add(f"{key} not a descriptor", _set(path, [1.0, 2.0]))
        add(f"{key} a number", _set(path, 1.0))
        # Keys that only quantized tensors use must still be well typed when present (the schema says so).
        for stray, value in (("qdtype", "float32"), ("scale", "x"), ("scale", -1.0), ("zero_point", "z")):
            add(f"{key} raw with {stray}={value}", _set(f"{path}/{stray}", value))
        if "quantized" in rule.encodings and dtype in FLOAT_DTYPES:
            quantized = body_of(schema, {**example_data(schema), key: Quantized(_array(dtype, ndim))})
            for part, value in (("scale", 0.0), ("scale", -1.0), ("scale", "1"), ("scale", True), ("zero_point", 0.5),
                                ("zero_point", "0"), ("zero_point", None), ("qdtype", "float32"), ("qdtype", None)):
                cases.append((f"{key} quantized {part}={value}", _edit(quantized, _set(f"{path}/{part}", value))))
            for part in ("scale", "zero_point", "qdtype"):
                cases.append((f"{key} quantized without {part}", _edit(quantized, _drop(f"{path}/{part}"))))
    return cases


def stricter_bodies(schema: CompiledSchema) -> list[Case]:
    """Bodies JSON Schema cannot refuse but receivers must: non-finite numbers, and integral floats where
    msgpack carries ints (JSON Schema counts 1.0 as an integer; ONI senders never send one)."""
    base = body_of(schema, example_data(schema))
    key = next(iter(schema.tensor_rules), None)
    cases = [("seq 1.0", _edit(base, _set("header/seq", 1.0))), ("wire version 1.0", _edit(base, _set("oni", 1.0)))]
    unbounded = [
        k
        for k, p in schema.document["properties"]["data"]["properties"].items()
        if p.get("type") == "number" and "minimum" not in p and "exclusiveMinimum" not in p
    ]
    for number in unbounded[:1]:
        cases += [(f"{number} {v}", _edit(base, _set(f"data/{number}", v))) for v in (math.nan, math.inf)]
    if key is not None:
        shape = base["data"][key]["shape"]
        cases.append((f"{key} shape of floats", _edit(base, _set(f"data/{key}/shape", [float(d) for d in shape]))))
    return cases


SCHEMAS = [SchemaRegistry.default().get(name, 1) for name in sorted(n for n, _ in SchemaRegistry.default().names())]


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda s: s.name)
def test_fast_path_and_full_schema_agree(schema):
    """The hand-written receive path (codec.decode_body: header checks, validate_data, check_descriptor)
    must accept exactly what the full JSON Schema accepts; where they differ the fast path must be stricter."""
    goods, bads, stricter = good_bodies(schema), bad_bodies(schema), stricter_bodies(schema)
    assert len(bads) > 30
    disagree = []
    for name, body in goods:
        if not (fast_accepts(schema, body) and full_accepts(schema, body)):
            disagree.append(f"good {name}: fast={fast_accepts(schema, body)} full={full_accepts(schema, body)}")
    for name, body in bads:
        if fast_accepts(schema, body) or full_accepts(schema, body):
            disagree.append(f"bad {name}: fast={fast_accepts(schema, body)} full={full_accepts(schema, body)}")
    for name, body in stricter:
        if fast_accepts(schema, body):
            disagree.append(f"stricter {name}: the fast path accepted it")
    assert not disagree, "\n".join(disagree)


def test_fast_path_checks_frame_references_like_the_schema():
    schema = SchemaRegistry.default().get("sensor.lidar", 1)
    data = example_data(schema)
    body = body_of(schema, data)
    raw = body["data"]["ranges_m"].pop("data")
    frames = (raw,)
    for frame, ok in ((0, True), (False, False), (-1, False), (1, False), ("0", False)):
        body["data"]["ranges_m"]["frame"] = frame
        assert fast_accepts(schema, body, frames) is ok, frame
        if not ok:
            # The full schema refuses the ones that are wrong by type; an index past the frames is the codec's.
            assert not full_accepts(schema, body) or frame == 1


def test_tensor_constraints_the_fast_path_cannot_enforce_are_refused():
    fixed = lidar_minor(edit=lambda d: d["properties"]["data"]["properties"]["ranges_m"]["allOf"][1]["properties"].update(
        {"shape": {"minItems": 1, "maxItems": 1, "prefixItems": [{"const": 360}]}}))
    with pytest.raises(SchemaError, match="ranges_m.*prefixItems"):
        compile_schema(fixed)


# -- the registry service -------------------------------------------------------------------------------------
@pytest.fixture
def server(context) -> Iterator[RegistryServer]:
    with RegistryServer(ANY_PORT, context=context).start() as running:
        yield running


@pytest.fixture
def client(server, context) -> Iterator[RegistryClient]:
    with RegistryClient(server.endpoint, timeout_ms=3000, context=context) as connected:
        yield connected


def test_list_and_get(client):
    listed = client.list()
    assert [(s["name"], s["version"]) for s in listed] == SchemaRegistry.default().names()
    assert {"name": "sensor.lidar", "version": "1.0", "major": 1, "minor": 0, "title": "2-D LiDAR scan"} in listed
    document = client.get("sensor.lidar")
    assert document == SchemaRegistry.default().get("sensor.lidar", 1).document
    assert client.get("sensor.lidar", 1) == document
    with pytest.raises(RegistryError, match="unknown schema 'sensor.sonar'"):
        client.get("sensor.sonar")
    with pytest.raises(RegistryError, match="major version 7 is not supported"):
        client.get("sensor.lidar", 7)


def test_register_a_compatible_minor(client):
    reply = client.register(lidar_minor(add=RING))
    assert reply == {"ok": True, "id": reply["id"], "name": "sensor.lidar", "version": "1.1", "changed": True}
    assert ("sensor.lidar", "1.1") in [(s["name"], s["version"]) for s in client.list()]
    assert client.get("sensor.lidar")["properties"]["data"]["properties"]["ring_id"]["type"] == "integer"
    # Idempotent, and an older minor does not replace a newer one.
    assert client.register(lidar_minor(add=RING))["changed"] is False
    older = client.register(packaged("sensor.lidar"))
    assert (older["version"], older["changed"]) == ("1.1", False)


@pytest.mark.parametrize(
    "document, problem",
    [
        (
            lidar_minor(add=RING, required=["ring_id"]),
            "new required fields ['ring_id']: a minor version may only add optional fields",
        ),
        (lidar_minor(edit=lambda d: d["properties"]["data"]["properties"]["range_max_m"].update(type="integer")),
         "field 'range_max_m' changed its definition"),
        (lidar_minor(edit=drop_scan_time), "field 'scan_time_s' removed"),
        (lidar_minor("1.0", add=RING), "already registered with other content"),
    ],
    ids=["new-required-field", "changed-field", "removed-field", "same-version-other-content"],
)
def test_an_incompatible_minor_is_refused_with_the_problem_named(client, document, problem):
    with pytest.raises(RegistryError, match="refused 'register'") as caught:
        client.register(document)
    assert problem in str(caught.value)
    assert client.get("sensor.lidar")["x-oni-version"] == "1.0"


def test_a_new_major_is_a_new_schema(client):
    breaking = lidar_minor("2.0", add=RING, required=["ring_id"], edit=drop_scan_time)
    assert client.register(breaking)["version"] == "2.0"
    assert client.get("sensor.lidar")["x-oni-version"] == "2.0"
    assert client.get("sensor.lidar", 1)["x-oni-version"] == "1.0"
    assert [s["version"] for s in client.list() if s["name"] == "sensor.lidar"] == ["1.0", "2.0"]


def test_check_compares_versions_without_registering(client):
    assert client.check(lidar_minor(add=RING)) == []
    assert client.check(lidar_minor(add=RING, required=["ring_id"])) == [
        "new required fields ['ring_id']: a minor version may only add optional fields"
    ]
    old = lidar_minor("1.1", add=RING)
    assert client.check(lidar_minor("1.2"), old) == ["field 'ring_id' removed"]
    assert client.check(lidar_minor("2.0"), old)[0].startswith("major version 1 -> 2")
    assert client.get("sensor.lidar")["x-oni-version"] == "1.0"


def test_malformed_requests_get_error_replies_and_the_server_keeps_serving(server, client, context):
    raw = context.socket(zmq.DEALER)
    raw.linger = 0
    raw.connect(server.endpoint)
    requests: list[tuple[list[bytes], str]] = [
        ([b"", b"\xc1not msgpack"], "not valid msgpack"),
        ([b"", msgpack.packb([1, 2])], "a request is a msgpack map"),
        ([b"", msgpack.packb({"op": "delete"})], "unknown op 'delete'"),
        ([b"", msgpack.packb({"no": "op"})], "unknown op None"),
        ([b"", msgpack.packb({"op": "get"})], "'get' needs 'name'"),
        ([b"", msgpack.packb({"op": "get", "name": "sensor.lidar", "major": "1"})], "'major' must be an int"),
        ([b"", msgpack.packb({"op": "register", "schema": 5})], "a schema is a JSON object"),
        ([b"", msgpack.packb({"op": "register", "schema": {"x-oni-schema": "a.b"}})], "'x-oni-version'"),
        ([b"", msgpack.packb({"op": "register", "schema": lidar_minor(add={"x": {"$ref": "http://127.0.0.1:9/x.json"}})})],
         "only references inside the document"),
        ([b"", msgpack.packb({"op": "register", "schema": lidar_minor(add={"x": {"$ref": "#/$defs/nowhere"}})})],
         "does not compile"),
        ([b"", msgpack.packb({"op": "check", "new": {"x-oni-schema": "a.b", "x-oni-version": "one"}})], "MAJOR.MINOR"),
        ([b"", b"extra", msgpack.packb({"op": "list"})], ""),  # an unusual envelope still gets its reply
    ]
    for frames, words in requests:
        raw.send_multipart(frames)
        assert raw.poll(3000), f"no reply to {frames!r}"
        reply_frames = raw.recv_multipart()
        assert reply_frames[:-1] == frames[:-1]
        reply = msgpack.unpackb(reply_frames[-1], raw=False)
        if words:
            assert reply["ok"] is False and words in reply["error"], reply
        else:
            assert reply["ok"] is True
    raw.close()
    assert server.errors == len(requests) - 1
    assert len(client.list()) == len(PACKAGED)


def test_a_plain_req_socket_is_a_client_too(server, context):
    req = context.socket(zmq.REQ)
    req.linger = 0
    req.connect(server.endpoint)
    req.send(msgpack.packb({"op": "get", "name": "sensor.odom", "major": 1}))
    assert req.poll(3000)
    reply = msgpack.unpackb(req.recv(), raw=False)
    req.close()
    assert reply["ok"] and reply["version"] == "1.0" and reply["schema"]["x-oni-schema"] == "sensor.odom"


def test_the_client_times_out_promptly_and_never_delivers_a_stale_request(context):
    probe = context.socket(zmq.ROUTER)
    port = probe.bind_to_random_port("tcp://127.0.0.1")
    probe.close(linger=0)
    endpoint = f"tcp://127.0.0.1:{port}"
    with RegistryClient(endpoint, timeout_ms=300, context=context) as client:
        started = time.monotonic()
        with pytest.raises(RegistryTimeout, match="no reply from the schema registry .* within 300 ms"):
            client.register(lidar_minor(add=RING))
        assert time.monotonic() - started < 1.5
        with RegistryServer(endpoint, context=context).start() as late:
            client.timeout_ms = 3000
            assert len(client.list()) == len(PACKAGED)
            # The register that timed out was discarded with its socket: it never reaches the server.
            time.sleep(0.2)
            assert late.requests == 1
            assert client.get("sensor.lidar")["x-oni-version"] == "1.0"


def test_registered_schemas_persist_in_the_store(tmp_path, context):
    store = tmp_path / "store"
    with RegistryServer(ANY_PORT, store=store, context=context).start() as first, RegistryClient(
        first.endpoint, timeout_ms=3000, context=context
    ) as client:
        client.register(lidar_minor(add=RING))
        client.register(packaged("sensor.imu"))  # unchanged: nothing to store
    assert sorted(p.name for p in store.iterdir()) == ["sensor.lidar.v1.1.json"]
    with RegistryServer(ANY_PORT, store=store, context=context).start() as second, RegistryClient(
        second.endpoint, timeout_ms=3000, context=context
    ) as client:
        assert client.get("sensor.lidar")["x-oni-version"] == "1.1"
    (store / "sensor.lidar.v1.2.json").write_text(json.dumps(lidar_minor("1.2", add=RING, required=["ring_id"])))
    with pytest.raises(SchemaError, match="sensor.lidar.v1.2.json no longer fits"):
        RegistryServer(ANY_PORT, store=store, context=context)


def test_read_only_registry_refuses_register(context):
    with RegistryServer(ANY_PORT, read_only=True, context=context).start() as server, RegistryClient(
        server.endpoint, timeout_ms=3000, context=context
    ) as client:
        with pytest.raises(RegistryError, match="read-only"):
            client.register(lidar_minor(add=RING))


def test_a_curve_registry_serves_allowed_clients_and_fails_plaintext_ones_loudly(context):
    server_keys, client_keys = KeyPair.generate(), KeyPair.generate()
    security = ServerSecurity(server_keys, {client_keys.public})
    with RegistryServer(ANY_PORT, security=security, context=context).start() as server:
        allowed = ClientSecurity(client_keys, server_keys.public)
        with RegistryClient(server.endpoint, 3000, security=allowed, context=context) as ok:
            assert len(ok.list()) == len(PACKAGED)
        with RegistryClient(server.endpoint, 5000, context=context) as plaintext:
            started = time.monotonic()
            with pytest.raises(SecurityError, match="requires CURVE"):
                plaintext.list()
            assert time.monotonic() - started < 3.0


# -- oniwm registry -------------------------------------------------------------------------------------------
def run_registry(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="oniwm")
    registry_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["registry", *argv])
    return args.func(args)


def test_cli_list_and_show_the_packaged_schemas(capsys):
    assert run_registry("list") == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["NAME", "VERSION", "TITLE"] and len(table) == len(PACKAGED) + 1
    assert run_registry("list", "--json") == 0
    assert [(s["name"], s["version"]) for s in json.loads(capsys.readouterr().out)] == SchemaRegistry.default().names()
    assert run_registry("show", "sensor.imu@1") == 0
    assert json.loads(capsys.readouterr().out) == SchemaRegistry.default().get("sensor.imu", 1).document
    assert run_registry("show", "sensor.sonar") == 1
    assert run_registry("show", "sensor.imu@one") == 2


def test_cli_talks_to_a_service(server, tmp_path, capsys):
    new = tmp_path / "lidar-1.1.json"
    new.write_text(json.dumps(lidar_minor(add=RING)))
    bad = tmp_path / "lidar-bad.json"
    bad.write_text(json.dumps(lidar_minor("1.2", add=RING, required=["ring_id"])))
    assert run_registry("register", str(new), str(bad), "--endpoint", server.endpoint) == 1
    out = capsys.readouterr().out
    assert f"{new}: registered sensor.lidar 1.1" in out and f"{bad}: refused" in out and "new required fields" in out
    assert run_registry("list", "--endpoint", server.endpoint, "--json") == 0
    assert {"name": "sensor.lidar", "version": "1.1"}.items() <= next(
        s for s in json.loads(capsys.readouterr().out) if s["name"] == "sensor.lidar"
    ).items()
    assert run_registry("show", "sensor.lidar", "--endpoint", server.endpoint) == 0
    assert json.loads(capsys.readouterr().out)["x-oni-version"] == "1.1"


def test_cli_validate(tmp_path, capsys):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(lidar_minor(add=RING)))
    breaking = tmp_path / "breaking.json"
    breaking.write_text(json.dumps(lidar_minor(add=RING, required=["ring_id"], edit=drop_scan_time)))
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    old = tmp_path / "old.json"
    old.write_text(json.dumps(lidar_minor("1.1", add=RING)))

    assert run_registry("validate", str(good)) == 0
    assert capsys.readouterr().out.strip() == f"{good}: ok sensor.lidar 1.1 (compatible with sensor.lidar 1.0)"
    assert run_registry("validate", str(good), str(breaking), str(broken)) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == f"{breaking}: sensor.lidar 1.1 is not compatible with sensor.lidar 1.0:"
    assert "  - field 'scan_time_s' removed" in lines
    assert "  - new required fields ['ring_id']: a minor version may only add optional fields" in lines
    assert lines[-1].startswith(f"{broken}: invalid: ") and "not a readable JSON file" in lines[-1]
    # Against an explicit old version instead of the packaged one.
    assert run_registry("validate", str(good), "--against", str(old)) == 0
    assert run_registry("validate", str(lidar_file(tmp_path, "1.2")), "--against", str(old)) == 1
    assert "  - field 'ring_id' removed" in capsys.readouterr().out.splitlines()


def lidar_file(tmp_path, version: str) -> Any:
    path = tmp_path / f"lidar-{version}.json"
    path.write_text(json.dumps(lidar_minor(version)))
    return path


def _cli_available() -> None:
    from worldmodel import cli

    try:
        cli.build_parser(["registry", "serve"])
    except ModuleNotFoundError as exc:
        pytest.skip(f"worldmodel.cli cannot import {exc.name}: a sibling command module is not written yet")


def test_oniwm_registry_serve_in_a_real_process_stops_cleanly_on_ctrl_c(context):
    _cli_available()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    process = subprocess.Popen(
        [sys.executable, "-m", "worldmodel.cli", "registry", "serve", "--endpoint", ANY_PORT],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        endpoint = process.stdout.readline().strip()  # the bound endpoint, printed once serving
        assert endpoint.startswith("tcp://127.0.0.1:"), process.stderr.read() if process.poll() is not None else endpoint
        with RegistryClient(endpoint, timeout_ms=5000, context=context) as client:
            assert len(client.list()) == len(PACKAGED)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
        assert "stopped after 1 request(s)" in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
