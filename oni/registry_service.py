"""The schema registry as a service on the bus: list, get, register, and check compatibility over ZeroMQ.

Protocol: a client sends one msgpack map per request and gets one msgpack map back. Every reply has
``"ok"`` (bool); a failed request has ``"error"`` (a sentence saying what was wrong) and never stops the
server. A request's ``"id"`` (any scalar) is echoed, so a client can match replies to requests.

- ``{"op": "list"}`` -> ``schemas``: ``[{name, version, major, minor, title}]``
- ``{"op": "get", "name", "major"?}`` -> ``schema`` (self-contained JSON Schema), ``version``; ``major``
  defaults to the highest
- ``{"op": "register", "schema"}`` -> ``name``, ``version`` (now current), ``changed``
- ``{"op": "check", "new", "old"?}`` -> ``compatible``, ``problems`` (list of str), ``against``; ``old``
  defaults to the registered schema of the same major

The server is a ROUTER socket and accepts REQ or DEALER peers (``[b"", body]`` frames). Registering keeps
the minor-version rule of :meth:`oni.schema.SchemaRegistry.register`: a later minor may only add optional
fields. ``oniwm registry serve`` runs a server; ``--store DIR`` keeps what is registered across restarts.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Mapping

import msgpack
import zmq

from oni.errors import OniError
from oni.files import atomic_write
from oni.schema import (
    CompiledSchema,
    SchemaError,
    SchemaRegistry,
    check_compatible,
    compile_schema,
    parse_version,
)
from oni.security import (
    ClientSecurity,
    HandshakeMonitor,
    ServerSecurity,
    apply,
    handshake_error,
)

log = logging.getLogger("oni.registry")

DEFAULT_ENDPOINT = "tcp://127.0.0.1:7447"
#: Requests larger than this are dropped by ZeroMQ before they reach the server (bytes).
MAX_REQUEST_BYTES = 4 * 1024 * 1024
OPS = ("list", "get", "register", "check")
_POLL_MS = 100  # how often a serving loop looks at its stop flag (ms)


class RegistryError(OniError):
    """The registry service refused a request (the message is the server's reason) or could not be reached."""


class RegistryTimeout(RegistryError):
    """No reply from the registry service within the client's timeout."""


def check_local_refs(document: Any, path: str = "#") -> None:
    """Refuse ``$ref`` that leave the document and nested ``$id`` (which re-base refs).

    The JSON Schema compiler would otherwise fetch whatever a reference names (``http://...``,
    ``file:///...``) while compiling: a registry that compiles documents sent over the network must not.
    Raises :class:`SchemaError` naming the place.
    """
    if isinstance(document, dict):
        for key, value in document.items():
            where = f"{path}/{key}"
            if key == "$ref" and not (isinstance(value, str) and value.startswith("#")):
                raise SchemaError(f"{where}: only references inside the document ('#/...') are allowed, got {value!r}")
            if key == "$id" and path != "#":
                raise SchemaError(f"{where}: '$id' is only allowed at the top of a schema")
            check_local_refs(value, where)
    elif isinstance(document, list):
        for index, value in enumerate(document):
            check_local_refs(value, f"{path}/{index}")


def compile_document(document: Any) -> CompiledSchema:
    """Check and compile a document received from outside (a request, a file) as an ONI schema."""
    if not isinstance(document, dict):
        raise SchemaError(f"a schema is a JSON object, got {type(document).__name__}")
    check_local_refs(document)
    return compile_schema(document)


def summary(schema: CompiledSchema) -> dict[str, Any]:
    """The ``list`` entry of one schema."""
    return {
        "name": schema.name,
        "version": schema.version,
        "major": schema.major,
        "minor": schema.minor,
        "title": str(schema.document.get("title", "")),
    }


def _lookup(registry: SchemaRegistry, name: str, major: int) -> CompiledSchema | None:
    try:
        return registry.get(name, major)
    except OniError:
        return None


class RegistryServer:
    """Serves a :class:`SchemaRegistry` on ``endpoint`` (bound at construction; ``endpoint`` then holds the
    address actually bound, with the port chosen for ``tcp://host:*``).

    ``registry`` defaults to a new registry holding the packaged schemas. ``store``, a directory, makes
    registrations durable: each schema that changes the registry is written there atomically as
    ``NAME.vMAJOR.MINOR.json``, and all of them are registered again at start (a stored schema that no
    longer fits raises :class:`SchemaError` naming the file). ``read_only`` refuses ``register``.
    ``security`` makes the service CURVE-only, for the allow-listed clients.

    Run it with :meth:`serve` (blocks; stops when ``stop`` is set) or :meth:`start` (a daemon thread;
    :meth:`close` stops it)::

        with RegistryServer("tcp://127.0.0.1:*").start() as server:
            client = RegistryClient(server.endpoint)
    """

    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        registry: SchemaRegistry | None = None,
        *,
        store: str | os.PathLike[str] | None = None,
        read_only: bool = False,
        security: ServerSecurity | None = None,
        context: zmq.Context | None = None,
    ) -> None:
        if registry is None:
            registry = SchemaRegistry()
            registry.load_packaged()
        self.registry = registry
        self.read_only = read_only
        self.store = Path(store) if store is not None else None
        if self.store is not None:
            self._load_store(self.store)
        self.requests = 0
        self.errors = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        context = context or zmq.Context.instance()
        self._socket = context.socket(zmq.ROUTER)
        self._socket.linger = 0
        self._socket.maxmsgsize = MAX_REQUEST_BYTES
        self._allow = apply(self._socket, security)
        self._monitor = HandshakeMonitor(self._socket)
        self._security = security
        try:
            self._socket.bind(endpoint)
        except zmq.ZMQError as exc:
            self.close()
            raise RegistryError(f"cannot serve the schema registry on {endpoint}: {exc}") from None
        self.endpoint = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)

    # -- persistence -------------------------------------------------------------------------------------
    def _load_store(self, store: Path) -> None:
        store.mkdir(parents=True, exist_ok=True)
        loaded = []
        for path in store.glob("*.json"):
            try:
                document = json.loads(path.read_text())
                compiled = compile_document(document)
            except (OSError, ValueError, SchemaError) as exc:
                raise SchemaError(f"stored schema {path}: {exc}") from None
            loaded.append((compiled.name, compiled.major, compiled.minor, path, document))
        # Minor versions in order, so each is checked against the one before it.
        for name, major, minor, path, document in sorted(loaded, key=lambda item: item[:3]):
            try:
                self.registry.register(document)
            except SchemaError as exc:
                raise SchemaError(f"stored schema {path} no longer fits the registry: {exc}") from None
        if loaded:
            log.info("loaded %d stored schema(s) from %s", len(loaded), store)

    @staticmethod
    def _save(store: Path, schema: CompiledSchema, document: dict[str, Any]) -> None:
        atomic_write(store / f"{schema.name}.v{schema.major}.{schema.minor}.json", json.dumps(document, indent=2))

    # -- requests ----------------------------------------------------------------------------------------
    def handle(self, request: Any) -> dict[str, Any]:
        """The reply to one decoded request (never raises for a bad request: the reply says what was wrong)."""
        if not isinstance(request, dict):
            return {"ok": False, "error": f"a request is a msgpack map with an 'op' (one of {list(OPS)})"}
        reply: dict[str, Any]
        op = request.get("op")
        try:
            if op == "list":
                names = self.registry.names()
                reply = {"ok": True, "schemas": [summary(self.registry.get(n, parse_version(v)[0])) for n, v in names]}
            elif op == "get":
                reply = self._get(request)
            elif op == "register":
                reply = self._register(request)
            elif op == "check":
                reply = self._check(request)
            else:
                reply = {"ok": False, "error": f"unknown op {op!r}: use one of {list(OPS)}"}
        except OniError as exc:  # SchemaError, UnknownSchema, UnsupportedVersion: the request's fault
            reply = {"ok": False, "error": str(exc)}
        if "id" in request:
            reply["id"] = request["id"]
        return reply

    def _get(self, request: Mapping[str, Any]) -> dict[str, Any]:
        name, major = request.get("name"), request.get("major")
        if not isinstance(name, str):
            return {"ok": False, "error": "'get' needs 'name' (a string), and optionally 'major' (an int)"}
        if major is not None and type(major) is not int:
            return {"ok": False, "error": f"'major' must be an int, got {major!r}"}
        schema = self.registry.latest(name) if major is None else self.registry.get(name, major)
        return {"ok": True, "schema": schema.document, "version": schema.version}

    def _register(self, request: Mapping[str, Any]) -> dict[str, Any]:
        if self.read_only:
            return {"ok": False, "error": "this registry is read-only (served with --read-only)"}
        document = request.get("schema")
        compiled = compile_document(document)
        previous = _lookup(self.registry, compiled.name, compiled.major)
        current = self.registry.register(document)
        changed = current is not previous
        if changed:
            log.info("registered %s %s", current.name, current.version)
            if self.store is not None:
                self._save(self.store, current, document)
        return {"ok": True, "name": current.name, "version": current.version, "changed": changed}

    def _check(self, request: Mapping[str, Any]) -> dict[str, Any]:
        new = compile_document(request.get("new"))
        if request.get("old") is not None:
            old = compile_document(request["old"])
        else:
            old = _lookup(self.registry, new.name, new.major)
            if old is None:
                return {"ok": True, "compatible": True, "problems": [], "against": None}
        problems = check_compatible(old.document, new.document)
        return {"ok": True, "compatible": not problems, "problems": problems, "against": f"{old.name} {old.version}"}

    # -- serving -----------------------------------------------------------------------------------------
    def _serve_one(self) -> None:
        frames = self._socket.recv_multipart(zmq.NOBLOCK)
        # [peer identity, (REQ envelope...), b"", body]: the reply goes back with the same envelope.
        envelope, body = frames[:-1], frames[-1]
        if len(envelope) < 1:
            return
        self.requests += 1
        try:
            request = msgpack.unpackb(body, raw=False, strict_map_key=False)
        except Exception as exc:  # msgpack raises several unrelated types for corrupt input
            request = None
            reply: dict[str, Any] = {"ok": False, "error": f"the request is not valid msgpack: {type(exc).__name__}"}
        else:
            try:
                reply = self.handle(request)
            except Exception as exc:  # a bug must cost one request, never the service
                log.exception("registry request %r failed", request.get("op") if isinstance(request, dict) else request)
                reply = {"ok": False, "error": f"internal error: {type(exc).__name__}: {exc}"}
        if not reply["ok"]:
            self.errors += 1
        try:
            packed = msgpack.packb(reply, use_bin_type=True)
        except (TypeError, ValueError, OverflowError) as exc:
            packed = msgpack.packb({"ok": False, "error": f"the reply cannot be encoded: {exc}"}, use_bin_type=True)
        try:
            self._socket.send_multipart([*envelope, packed], zmq.NOBLOCK)
        except zmq.Again:
            log.warning("dropped a registry reply: the client is gone or not reading")

    def serve(self, stop: threading.Event | None = None) -> None:
        """Answer requests until ``stop`` (default: this server's own flag, set by :meth:`close`) is set."""
        stop = stop or self._stop
        while not stop.is_set():
            if self._socket.poll(_POLL_MS, zmq.POLLIN):
                while self._socket.poll(0, zmq.POLLIN):
                    self._serve_one()
            for event, value, endpoint in self._monitor.drain():
                log.warning("%s", handshake_error(event, value, endpoint, self._security, bound=True))

    def start(self) -> "RegistryServer":
        """Serve in a daemon thread; returns self."""
        if self._thread is not None:
            raise RuntimeError("this registry server is already serving")
        self._thread = threading.Thread(target=self.serve, name="oni-registry", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop serving (waiting up to ``timeout_s`` for the thread) and close the socket."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        self._monitor.close()
        self._socket.close(linger=0)
        if self._allow is not None:
            self._allow.release()

    def __enter__(self) -> "RegistryServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class RegistryClient:
    """Talks to a :class:`RegistryServer`. Every call waits at most ``timeout_ms`` (ms) for the reply, then
    raises :class:`RegistryTimeout`; a refused request raises :class:`RegistryError` with the server's reason.

    Uses a DEALER socket, replaced after a timeout: a request that could not be delivered is discarded with
    it, so it can never reach the server later, and a late reply cannot be taken for the next one's.
    """

    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        timeout_ms: float = 2000.0,
        *,
        security: ClientSecurity | None = None,
        context: zmq.Context | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.timeout_ms = timeout_ms
        self._security = security
        self._context = context or zmq.Context.instance()
        self._ids = itertools.count(1)
        self._socket: zmq.Socket | None = None
        self._monitor: HandshakeMonitor | None = None

    def _connect(self) -> zmq.Socket:
        if self._socket is None:
            socket = self._context.socket(zmq.DEALER)
            socket.linger = 0
            apply(socket, self._security)
            self._monitor = HandshakeMonitor(socket)
            socket.connect(self.endpoint)
            self._socket = socket
        return self._socket

    def _reset(self) -> None:
        if self._monitor is not None:
            self._monitor.close()
            self._monitor = None
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send one request and return the (ok) reply; raises :class:`RegistryError` / :class:`RegistryTimeout`."""
        socket = self._connect()
        request_id = next(self._ids)
        socket.send_multipart([b"", msgpack.packb({"op": op, "id": request_id, **fields}, use_bin_type=True)])
        deadline = time.monotonic() + self.timeout_ms / 1000.0
        while (left_ms := (deadline - time.monotonic()) * 1000.0) > 0:
            # Wake at least every _POLL_MS to notice a failed security handshake.
            ready = socket.poll(min(left_ms, _POLL_MS), zmq.POLLIN)
            self._check_handshake()
            if not ready:
                continue
            frames = socket.recv_multipart()
            try:
                reply = msgpack.unpackb(frames[-1], raw=False, strict_map_key=False)
            except Exception as exc:  # msgpack raises several unrelated types for corrupt input
                raise RegistryError(f"unreadable reply from {self.endpoint}: {type(exc).__name__}: {exc}") from None
            if not isinstance(reply, dict) or reply.get("id") != request_id:
                continue  # a late reply to an earlier request
            if not reply.get("ok"):
                raise RegistryError(f"registry at {self.endpoint} refused {op!r}: {reply.get('error', 'no reason given')}")
            return reply
        self._reset()
        raise RegistryTimeout(
            f"no reply from the schema registry at {self.endpoint} within {self.timeout_ms:g} ms "
            "(is `oniwm registry serve` running there?)"
        )

    def _check_handshake(self) -> None:
        failures = self._monitor.drain() if self._monitor is not None else []
        if failures:
            event, value, endpoint = failures[-1]
            self._reset()
            raise handshake_error(event, value, endpoint, self._security)

    def list(self) -> list[dict[str, Any]]:
        """Every registered schema: ``[{name, version, major, minor, title}]``, sorted by name and version."""
        return self.request("list")["schemas"]

    def get(self, name: str, major: int | None = None) -> dict[str, Any]:
        """The JSON Schema document of ``name`` at ``major`` (default: the highest major)."""
        fields: dict[str, Any] = {"name": name} if major is None else {"name": name, "major": major}
        return self.request("get", **fields)["schema"]

    def register(self, document: Mapping[str, Any]) -> dict[str, Any]:
        """Register a schema document; returns ``{name, version, changed}``. Refusals name each problem."""
        return self.request("register", schema=dict(document))

    def check(self, new: Mapping[str, Any], old: Mapping[str, Any] | None = None) -> list[str]:
        """Problems that stop ``new`` replacing ``old`` (default: the registered schema of its major)."""
        fields: dict[str, Any] = {"new": dict(new)}
        if old is not None:
            fields["old"] = dict(old)
        return self.request("check", **fields)["problems"]

    def close(self) -> None:
        self._reset()

    def __enter__(self) -> "RegistryClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
