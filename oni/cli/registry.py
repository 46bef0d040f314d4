"""``oniwm registry``: the ONI schema registry, local or on the bus.

- ``serve``: run a registry service (foreground; Ctrl-C or SIGTERM stops it cleanly).
- ``list`` / ``show NAME[@MAJOR]``: the schemas of a service (``--endpoint``) or, without it, the ones
  shipped in the package.
- ``register FILE...``: add schemas to a running service.
- ``validate FILE...``: check JSON Schema files are valid ONI schemas and compatible with the version they
  replace (``--against OLD.json``, default the packaged schema of the same major). Exit 1 on any problem.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
from pathlib import Path
from typing import Any

from oni.errors import OniError
from oni.registry_service import (
    DEFAULT_ENDPOINT,
    RegistryClient,
    RegistryError,
    RegistryServer,
    compile_document,
    summary,
)
from oni.schema import (
    CompiledSchema,
    SchemaError,
    SchemaRegistry,
    check_compatible,
    parse_version,
)
from oni.security import ClientSecurity, KeyPair, ServerSecurity, load_public_keys

log = logging.getLogger("oni.cli.registry")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("registry", help="the ONI schema registry: serve, list, show, register, validate")
    reg_sub = parser.add_subparsers(dest="registry_command", required=True, metavar="ACTION")

    serve = reg_sub.add_parser("serve", help="run the registry service in the foreground")
    serve.add_argument("--endpoint", default=DEFAULT_ENDPOINT, help=f"where to listen (default {DEFAULT_ENDPOINT})")
    serve.add_argument("--store", metavar="DIR", help="keep registered schemas in DIR and reload them at start")
    serve.add_argument("--read-only", action="store_true", help="refuse 'register' requests")
    serve.add_argument("--key", metavar="FILE", help="serve with CURVE, using this secret key file")
    serve.add_argument(
        "--allow", action="append", metavar="KEY", help="with --key: admit only these clients (key, .key file or dir)"
    )
    serve.set_defaults(func=run_serve)

    listing = reg_sub.add_parser("list", help="list schemas (packaged ones, or a service's with --endpoint)")
    _client_options(listing)
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(func=run_list)

    show = reg_sub.add_parser("show", help="print a schema's JSON Schema document")
    show.add_argument("name", metavar="NAME[@MAJOR]", help="type name, e.g. sensor.lidar or sensor.lidar@1")
    _client_options(show)
    show.set_defaults(func=run_show)

    add = reg_sub.add_parser("register", help="register schema files with a running service")
    add.add_argument("files", nargs="+", metavar="FILE")
    _client_options(add, endpoint_default=DEFAULT_ENDPOINT)
    add.set_defaults(func=run_register)

    validate = reg_sub.add_parser("validate", help="check schema files (and their compatibility); exit 1 on problems")
    validate.add_argument("files", nargs="+", metavar="FILE")
    validate.add_argument(
        "--against", metavar="OLD.json", help="check compatibility with this version (default: the packaged one)"
    )
    validate.set_defaults(func=run_validate)


def _client_options(parser: argparse.ArgumentParser, endpoint_default: str | None = None) -> None:
    where = "the service" if endpoint_default else "a service (default: the packaged schemas, locally)"
    parser.add_argument("--endpoint", default=endpoint_default, help=f"registry endpoint of {where}")
    parser.add_argument("--timeout-ms", type=float, default=2000.0, help="reply timeout (ms, default 2000)")
    parser.add_argument("--server-key", metavar="KEY", help="the service's public key (or .key file): use CURVE")
    parser.add_argument("--key", metavar="FILE", help="with --server-key: this client's secret key file")


def _client(args: argparse.Namespace) -> RegistryClient:
    security = None
    if args.server_key:
        keys = KeyPair.load(args.key) if args.key else KeyPair.generate()
        (server_public,) = load_public_keys([args.server_key])
        security = ClientSecurity(keys, server_public)
    return RegistryClient(args.endpoint, args.timeout_ms, security=security)


def _load_json(path: str) -> Any:
    """The JSON in ``path``; raises :class:`SchemaError` with the file name for unreadable files."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise SchemaError(f"{path}: not a readable JSON file: {exc}") from None


def run_serve(args: argparse.Namespace) -> int:
    security = None
    if args.key:
        try:
            keys = KeyPair.load(args.key)
            allowed = load_public_keys(args.allow) if args.allow else None
        except OniError as exc:
            log.error("%s", exc)
            return 1
        security = ServerSecurity(keys, allowed)
        admits = f"{len(allowed)} allowed client key(s)" if allowed is not None else "any client key"
        log.info("CURVE on: server public key %s, %s", keys.public.decode(), admits)
    elif args.allow:
        log.error("--allow needs --key (the server's secret key)")
        return 2
    try:
        server = RegistryServer(args.endpoint, store=args.store, read_only=args.read_only, security=security)
    except OniError as exc:
        log.error("%s", exc)
        return 1
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    log.info("serving %d schema(s) on %s (Ctrl-C to stop)", len(server.registry.names()), server.endpoint)
    print(server.endpoint, flush=True)
    try:
        server.serve(stop)
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    log.info("stopped after %d request(s), %d refused", server.requests, server.errors)
    return 0


def _parse_name(text: str) -> tuple[str, int | None]:
    name, sep, major = text.partition("@")
    if sep and not major.isdigit():
        raise ValueError(f"{text!r}: expected NAME or NAME@MAJOR, e.g. sensor.lidar@1")
    return name, int(major) if sep else None


def run_list(args: argparse.Namespace) -> int:
    try:
        if args.endpoint:
            with _client(args) as client:
                schemas = client.list()
        else:
            registry = SchemaRegistry.default()
            schemas = [summary(registry.get(name, parse_version(version)[0])) for name, version in registry.names()]
    except OniError as exc:
        log.error("%s", exc)
        return 1
    if args.json:
        print(json.dumps(schemas, indent=2))
        return 0
    width = max((len(s["name"]) for s in schemas), default=4)
    print(f"{'NAME':<{width}}  VERSION  TITLE")
    for entry in schemas:
        print(f"{entry['name']:<{width}}  {entry['version']:<7}  {entry['title']}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    try:
        name, major = _parse_name(args.name)
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    try:
        if args.endpoint:
            with _client(args) as client:
                document = client.get(name, major)
        else:
            registry = SchemaRegistry.default()
            document = (registry.latest(name) if major is None else registry.get(name, major)).document
    except OniError as exc:
        log.error("%s", exc)
        return 1
    print(json.dumps(document, indent=2))
    return 0


def run_register(args: argparse.Namespace) -> int:
    status = 0
    try:
        client = _client(args)
    except OniError as exc:
        log.error("%s", exc)
        return 1
    with client:
        for path in args.files:
            try:
                reply = client.register(_load_json(path))
            except RegistryError as exc:
                print(f"{path}: refused: {exc}")
                status = 1
                continue
            except OniError as exc:  # unreadable file, or a security handshake that failed
                log.error("%s", exc)
                return 1
            state = "registered" if reply["changed"] else "already current:"
            print(f"{path}: {state} {reply['name']} {reply['version']}")
    return status


def _baseline(schema: CompiledSchema, against: CompiledSchema | None) -> CompiledSchema | None:
    if against is not None:
        return against
    try:
        return SchemaRegistry.default().get(schema.name, schema.major)
    except OniError:
        return None  # a new type or a new major: nothing to be compatible with


def run_validate(args: argparse.Namespace) -> int:
    """Print ``FILE: ok NAME VERSION`` or the problems, one per line; exit 1 if any file has one."""
    against = None
    if args.against:
        try:
            against = compile_document(_load_json(args.against))
        except SchemaError as exc:
            print(f"{args.against}: invalid: {exc}")
            return 1
    status = 0
    for path in args.files:
        try:
            schema = compile_document(_load_json(path))
        except SchemaError as exc:
            print(f"{path}: invalid: {exc}")
            status = 1
            continue
        base = _baseline(schema, against)
        problems = check_compatible(base.document, schema.document) if base is not None else []
        if problems:
            print(f"{path}: {schema.name} {schema.version} is not compatible with {base.name} {base.version}:")
            for problem in problems:
                print(f"  - {problem}")
            status = 1
        elif base is not None:
            print(f"{path}: ok {schema.name} {schema.version} (compatible with {base.name} {base.version})")
        else:
            print(f"{path}: ok {schema.name} {schema.version}")
    return status
