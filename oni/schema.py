"""JSON Schemas for ONI message types, the registry that holds them, and version compatibility.

One schema per type and major version ships in ``oni/schemas/<type>.v<major>.json``. The loader copies the
common definitions (header, tensor descriptor) into each, so every schema it serves is self-contained, and
compiles each validator once. See docs/oni-v1.md, "Schemas and versioning".
"""

from __future__ import annotations

import copy
import json
import threading
from dataclasses import dataclass
from importlib import resources
from typing import Any, Callable

import fastjsonschema

from oni.errors import (
    OniError,
    SchemaViolation,
    TensorMismatch,
    UnknownSchema,
    UnsupportedVersion,
)
from oni.tensor import DTYPES, ENCODINGS

_TENSOR_REF = "#/$defs/tensor"


class SchemaError(OniError):
    """A schema document is not a valid ONI schema, or conflicts with one already registered."""


def parse_version(version: str) -> tuple[int, int]:
    """``"1.2"`` -> ``(1, 2)``; raises ``ValueError`` for anything else."""
    major, _, minor = version.partition(".")
    if not (major.isdigit() and minor.isdigit()):
        raise ValueError(f"schema version must be 'MAJOR.MINOR', got {version!r}")
    return int(major), int(minor)


def _load_common() -> dict[str, Any]:
    text = resources.files("oni").joinpath("schemas/oni.common.v1.json").read_text()
    return json.loads(text)["$defs"]


@dataclass(frozen=True)
class TensorRule:
    """What a schema allows for one tensor field: dtypes, encodings and the number of dimensions."""

    dtypes: frozenset[str]
    encodings: frozenset[str]
    min_ndim: int
    max_ndim: int


@dataclass(frozen=True)
class CompiledSchema:
    """A registered schema with its compiled validators.

    The hot path (:meth:`validate_data`) runs a validator compiled from the data section with each tensor
    descriptor reduced to "an object", and checks tensors against ``tensor_rules`` (dtype, encoding, ndim)
    in :func:`oni.tensor.check_descriptor`; together they accept exactly what the full document accepts
    (tests/oni/test_schema.py checks the two agree). ``nonfinite_ok`` are the float fields exempt
    (``"x-oni-allow-nonfinite": true``) from the NaN/Inf check every other float field gets.
    """

    name: str
    major: int
    minor: int
    document: dict[str, Any]
    tensor_rules: dict[str, TensorRule]
    nonfinite_ok: frozenset[str]
    _validate_full: Callable[[Any], Any]
    _validate_data: Callable[[Any], Any]

    @property
    def version(self) -> str:
        return f"{self.major}.{self.minor}"

    @property
    def tensor_fields(self) -> frozenset[str]:
        return frozenset(self.tensor_rules)

    def validate_data(self, data: dict[str, Any], topic: str | None = None) -> None:
        """Validate the non-tensor constraints of a body's ``data`` map; raises :class:`SchemaViolation`."""
        try:
            self._validate_data(data)
        except fastjsonschema.JsonSchemaValueException as exc:
            raise SchemaViolation(f"{self.name} {self.version}: {exc.message}", topic=topic) from None

    def validate(self, body: dict[str, Any], topic: str | None = None) -> None:
        """Validate a whole decoded body (``{"oni", "header", "data"}``) against the full document.

        Raises :class:`TensorMismatch` when the failing path is inside a tensor field, else
        :class:`SchemaViolation`.
        """
        try:
            self._validate_full(body)
        except fastjsonschema.JsonSchemaValueException as exc:
            path = [str(p) for p in (exc.path or [])]
            # path looks like ['data', 'data', 'ranges_m', 'dtype'] (fastjsonschema prefixes the root name).
            if len(path) >= 3 and path[1] == "data" and path[2] in self.tensor_rules:
                raise TensorMismatch(f"{self.name} field {path[2]!r}: {exc.message}", topic=topic) from None
            raise SchemaViolation(f"{self.name} {self.version}: {exc.message}", topic=topic) from None


#: Keywords that annotate without constraining: allowed anywhere in a tensor field's definition.
_ANNOTATIONS = frozenset({"title", "description", "$comment", "examples", "deprecated"})
#: The only constraints a schema may add to a tensor field: what :class:`TensorRule` (the fast path) enforces.
_TENSOR_CONSTRAINTS = {"dtype": {"enum"}, "encoding": {"enum"}, "shape": {"minItems", "maxItems"}}


def _check_tensor_keywords(where: str, prop: dict[str, Any]) -> None:
    """Refuse constraints on a tensor field that the fast path would silently not enforce."""

    def extra(node: Any, allowed: set[str]) -> list[str]:
        if not isinstance(node, dict):
            return [repr(node)[:40]]
        found = sorted(k for k in node if k not in allowed and k not in _ANNOTATIONS and not k.startswith("x-"))
        if node.get("$ref", _TENSOR_REF) != _TENSOR_REF:
            found.append(f"$ref {node['$ref']!r}")
        return found

    unsupported = extra(prop, {"$ref", "allOf"})
    for part in prop.get("allOf", ()):
        unsupported += extra(part, {"$ref", "properties"})
        props = part.get("properties", {}) if isinstance(part, dict) else {}
        unsupported += extra(props, set(_TENSOR_CONSTRAINTS))
        if isinstance(props, dict):
            for key, allowed in _TENSOR_CONSTRAINTS.items():
                unsupported += [f"{key}.{k}" for k in extra(props.get(key, {}), allowed)]
    if unsupported:
        raise SchemaError(
            f"{where}: a tensor field may only constrain dtype (enum), encoding (enum) and shape (minItems, "
            f"maxItems); unsupported: {', '.join(unsupported)}"
        )


def _tensor_rule(where: str, prop: dict[str, Any]) -> TensorRule:
    _check_tensor_keywords(where, prop)
    dtypes = set(DTYPES)
    encodings = set(ENCODINGS)
    min_ndim, max_ndim = 0, 8
    for part in prop.get("allOf", ()):
        props = part.get("properties", {}) if isinstance(part, dict) else {}
        if "enum" in props.get("dtype", {}):
            dtypes &= set(props["dtype"]["enum"])
        if "enum" in props.get("encoding", {}):
            encodings &= set(props["encoding"]["enum"])
        shape = props.get("shape", {})
        min_ndim = max(min_ndim, shape.get("minItems", 0))
        max_ndim = min(max_ndim, shape.get("maxItems", 8))
    return TensorRule(frozenset(dtypes), frozenset(encodings), min_ndim, max_ndim)


def _is_tensor_property(prop: dict[str, Any]) -> bool:
    return prop.get("$ref") == _TENSOR_REF or any(
        isinstance(part, dict) and part.get("$ref") == _TENSOR_REF for part in prop.get("allOf", ())
    )


def compile_schema(document: dict[str, Any], common: dict[str, Any] | None = None) -> CompiledSchema:
    """Check a schema document is an ONI schema, bundle the common definitions into it, and compile it."""
    name = document.get("x-oni-schema")
    version = document.get("x-oni-version")
    if not isinstance(name, str) or not isinstance(version, str):
        raise SchemaError("an ONI schema needs string fields 'x-oni-schema' (type name) and 'x-oni-version'")
    try:
        major, minor = parse_version(version)
    except ValueError as exc:
        raise SchemaError(f"{name}: {exc}") from None
    data = document.get("properties", {}).get("data", {})
    props = data.get("properties")
    if not isinstance(props, dict):
        raise SchemaError(f"{name}: schema must define properties.data.properties")
    bundled = copy.deepcopy(document)
    bundled.setdefault("$defs", {}).update(copy.deepcopy(common if common is not None else _load_common()))
    rules = {
        k: _tensor_rule(f"{name} field {k!r}", v)
        for k, v in props.items()
        if isinstance(v, dict) and _is_tensor_property(v)
    }
    fast = copy.deepcopy(data)
    for key in rules:
        fast["properties"][key] = {"type": "object"}
    nonfinite = frozenset(k for k, v in props.items() if isinstance(v, dict) and v.get("x-oni-allow-nonfinite"))
    try:
        validate_full = fastjsonschema.compile(bundled)
        validate_data = fastjsonschema.compile(fast)
    except fastjsonschema.JsonSchemaDefinitionException as exc:
        raise SchemaError(f"{name}: does not compile: {exc}") from None
    return CompiledSchema(name, major, minor, bundled, rules, nonfinite, validate_full, validate_data)


def check_compatible(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Problems that stop ``new`` replacing ``old`` under the minor-version rule; empty when compatible.

    Within one major version, a later minor may only add optional data fields: every field of ``old`` must
    be present and unchanged, and the required set must stay the same.
    """
    problems: list[str] = []
    if old.get("x-oni-schema") != new.get("x-oni-schema"):
        return [f"different types: {old.get('x-oni-schema')!r} vs {new.get('x-oni-schema')!r}"]
    old_major, old_minor = parse_version(old["x-oni-version"])
    new_major, new_minor = parse_version(new["x-oni-version"])
    if new_major != old_major:
        return [f"major version {old_major} -> {new_major}: a new major version is a new schema, never compatible"]
    if new_minor < old_minor:
        problems.append(f"minor version goes backwards: {old_minor} -> {new_minor}")
    old_data = old["properties"]["data"]
    new_data = new["properties"]["data"]
    for key, spec in old_data.get("properties", {}).items():
        if key not in new_data.get("properties", {}):
            problems.append(f"field {key!r} removed")
        elif new_data["properties"][key] != spec:
            problems.append(f"field {key!r} changed its definition")
    added = sorted(set(new_data.get("required", ())) - set(old_data.get("required", ())))
    removed = sorted(set(old_data.get("required", ())) - set(new_data.get("required", ())))
    if added:
        problems.append(f"new required fields {added}: a minor version may only add optional fields")
    if removed:
        problems.append(f"fields {removed} are no longer required")
    return problems


class SchemaRegistry:
    """Schemas by type name and major version (the latest minor of each), with compiled validators.

    Thread-safe. ``SchemaRegistry.default()`` holds the schemas shipped in the package.
    """

    _default: "SchemaRegistry | None" = None
    _default_lock = threading.Lock()

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._schemas: dict[tuple[str, int], CompiledSchema] = {}
        #: (name, version string as sent) -> schema: the decoder's cache (oni.codec._lookup_schema).
        self.by_version: dict[tuple[str, str], CompiledSchema] = {}
        self._common = _load_common()

    @classmethod
    def default(cls) -> "SchemaRegistry":
        """The process-wide registry, loaded with the packaged schemas on first use."""
        with cls._default_lock:
            if cls._default is None:
                registry = cls()
                registry.load_packaged()
                cls._default = registry
            return cls._default

    def load_packaged(self) -> None:
        for entry in sorted(resources.files("oni").joinpath("schemas").iterdir(), key=lambda p: p.name):
            if entry.name.endswith(".json") and not entry.name.startswith("oni.common."):
                self.register(json.loads(entry.read_text()))

    def register(self, document: dict[str, Any]) -> CompiledSchema:
        """Add a schema. A later minor of a known major must pass :func:`check_compatible`."""
        compiled = compile_schema(document, self._common)
        key = (compiled.name, compiled.major)
        with self._lock:
            current = self._schemas.get(key)
            if current is not None:
                if current.minor == compiled.minor:
                    if current.document != compiled.document:
                        raise SchemaError(f"{compiled.name} {compiled.version} is already registered with other content")
                    return current
                # An older minor (a node built against it) is fine if the current one is a compatible successor.
                old, new = (compiled, current) if compiled.minor < current.minor else (current, compiled)
                problems = check_compatible(old.document, new.document)
                if problems:
                    raise SchemaError(f"{compiled.name} {old.version} -> {new.version} is not compatible: " + "; ".join(problems))
                if compiled.minor < current.minor:
                    return current
            self._schemas[key] = compiled
            self.by_version.clear()  # a new minor replaces what cached versions resolve to
            return compiled

    def get(self, name: str, major: int, topic: str | None = None) -> CompiledSchema:
        """The schema for ``name`` at ``major``. Raises :class:`UnknownSchema` or :class:`UnsupportedVersion`."""
        found = self._schemas.get((name, major))
        if found is not None:
            return found
        majors = sorted(m for (n, m) in self._schemas if n == name)
        if not majors:
            raise UnknownSchema(f"unknown schema {name!r}", topic=topic)
        raise UnsupportedVersion(f"schema {name!r} major version {major} is not supported (known: {majors})", topic=topic)

    def latest(self, name: str) -> CompiledSchema:
        """The highest major version registered for ``name``."""
        majors = [m for (n, m) in self._schemas if n == name]
        if not majors:
            raise UnknownSchema(f"unknown schema {name!r}")
        return self._schemas[(name, max(majors))]

    def names(self) -> list[tuple[str, str]]:
        """``(name, version)`` of every registered schema, sorted."""
        return sorted((s.name, s.version) for s in self._schemas.values())
