"""CURVE authentication and encryption for ONI sockets, with allow-lists of client keys.

Keys are ZeroMQ CURVE key pairs (Z85 text, 40 characters) stored as ZeroMQ certificate files:
``NAME.key`` (public) and ``NAME.key_secret`` (secret, mode 0600). A *server* socket (the side that binds,
or any side configured with :class:`ServerSecurity`) decrypts with its secret key and admits only clients
whose public key is on its allow-list; a *client* needs the server's public key. Privileged topics
(``actuator.cmd``) may only be subscribed with security configured. See docs/oni-v1.md, "Security".
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from oni.errors import SecurityError

log = logging.getLogger("oni.security")

#: Topics a subscriber may only receive with CURVE security and an allow-list.
PRIVILEGED_TOPICS = frozenset({"actuator.cmd"})


@dataclass(frozen=True)
class KeyPair:
    """A CURVE key pair, Z85-encoded (40 ASCII bytes each)."""

    public: bytes
    secret: bytes

    @classmethod
    def generate(cls) -> "KeyPair":
        public, secret = zmq.curve_keypair()
        return cls(public, secret)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "KeyPair":
        """Load ``NAME.key_secret`` (or ``NAME`` / ``NAME.key``, whose ``.key_secret`` sibling is read)."""
        path = Path(path)
        if path.suffix == ".key":
            path = path.with_suffix(".key_secret")
        elif path.suffix != ".key_secret":
            path = path.with_name(path.name + ".key_secret")
        if not path.exists():
            raise SecurityError(f"no secret key file {path} (create one with `oniwm keys generate`)")
        public, secret = zmq.auth.load_certificate(path)
        if secret is None:
            raise SecurityError(f"{path} holds no secret key")
        return cls(public, secret)

    def save(self, directory: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
        """Write ``NAME.key`` and ``NAME.key_secret`` (0600) into ``directory``, each atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths = []
        for suffix, secret in ((".key", None), (".key_secret", self.secret)):
            target = directory / f"{name}{suffix}"
            text = _certificate_text(self.public, secret)
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}{suffix}.")
            try:
                os.fchmod(fd, 0o600 if secret else 0o644)
                with os.fdopen(fd, "w") as handle:
                    handle.write(text)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            paths.append(target)
        return paths[0], paths[1]


def _certificate_text(public: bytes, secret: bytes | None) -> str:
    lines = [
        "#   ZeroMQ CURVE certificate, written by oniwm keys generate",
        "metadata",
        "curve",
        f'    public-key = "{public.decode()}"',
    ]
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode()}"')
    return "\n".join(lines) + "\n"


def load_public_keys(sources: Iterable[str | os.PathLike[str] | bytes]) -> frozenset[bytes]:
    """Public keys from Z85 strings, ``.key`` files, or directories of them."""
    keys: set[bytes] = set()
    for source in sources:
        if isinstance(source, bytes) and len(source) == 40:
            keys.add(source)
            continue
        path = Path(os.fsdecode(source))
        if path.is_dir():
            keys.update(zmq.auth.load_certificates(path).keys())
        elif path.exists():
            keys.add(zmq.auth.load_certificate(path)[0])
        elif len(str(source)) == 40:
            keys.add(str(source).encode())
        else:
            raise SecurityError(f"{source!r} is neither a Z85 public key nor a key file or directory")
    return frozenset(keys)


@dataclass(frozen=True)
class ServerSecurity:
    """Be the CURVE server: ``keys`` is this socket's pair; only ``allowed_clients`` (public keys) may connect.

    ``allowed_clients=None`` admits any client that completes the CURVE handshake (encryption without
    authorisation); privileged topics refuse that.
    """

    keys: KeyPair
    allowed_clients: frozenset[bytes] | None


@dataclass(frozen=True)
class ClientSecurity:
    """Be a CURVE client of a server whose public key is ``server_public``."""

    keys: KeyPair
    server_public: bytes


Security = ServerSecurity | ClientSecurity


@dataclass
class _AllowList:
    keys: frozenset[bytes] | None
    denied: Counter = field(default_factory=Counter)

    def callback(self, domain: str, key: bytes) -> bool:
        ok = self.keys is None or key in self.keys
        if not ok:
            self.denied[key.decode(errors="replace")] += 1
            log.warning("refused CURVE client key %s on %s", key.decode(errors="replace"), domain)
        return ok


class _AuthService:
    """One ZAP authenticator per ZeroMQ context, with one domain (and allow-list) per server socket."""

    _by_context: dict[int, "_AuthService"] = {}
    _lock = threading.Lock()

    def __init__(self, context: zmq.Context) -> None:
        self.auth = ThreadAuthenticator(context, log=logging.getLogger("oni.zap"))
        self.auth.start()
        self._count = 0

    @classmethod
    def for_context(cls, context: zmq.Context) -> "_AuthService":
        with cls._lock:
            service = cls._by_context.get(id(context))
            if service is None:
                service = cls._by_context[id(context)] = cls(context)
            return service

    def add(self, allow: _AllowList) -> str:
        with self._lock:
            self._count += 1
            domain = f"oni-{self._count}"
        self.auth.configure_curve_callback(domain, allow)
        return domain


def apply(socket: zmq.Socket, security: Security | None) -> _AllowList | None:
    """Configure ``socket`` for CURVE before it binds or connects. Returns the allow-list of a server."""
    if security is None:
        return None
    if not zmq.has("curve"):
        raise SecurityError("this libzmq was built without CURVE support")
    socket.curve_secretkey = security.keys.secret
    socket.curve_publickey = security.keys.public
    if isinstance(security, ServerSecurity):
        allow = _AllowList(security.allowed_clients)
        socket.zap_domain = _AuthService.for_context(socket.context).add(allow).encode()
        socket.curve_server = True
        return allow
    socket.curve_serverkey = security.server_public
    return None


def handshake_error(event: int, value: int, endpoint: str, secured: bool) -> SecurityError:
    """A clear error for a failed ZMTP handshake seen on a socket monitor."""
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        why = "the peer refused this socket's CURVE key (it is not on the peer's allow-list)"
    elif not secured:
        why = "the peer requires CURVE security and this socket is plaintext: configure security=ClientSecurity(...)"
    else:
        why = (
            "the security handshake failed (a plaintext peer, or a wrong server key: check that "
            "server_public matches the server's key)"
        )
    return SecurityError(f"handshake with {endpoint} failed: {why} (zmq event {event:#x}, detail {value:#x})")
