"""CURVE authentication and encryption for ONI sockets, with allow-lists of client keys.

Keys are ZeroMQ CURVE key pairs (Z85 text, 40 characters) stored as ZeroMQ certificate files:
``NAME.key`` (public) and ``NAME.key_secret`` (secret, mode 0600); ``oniwm keys generate`` writes them.
A *server* socket (any side configured with :class:`ServerSecurity`, usually the one that binds) decrypts
with its secret key and admits only clients whose public key is on its allow-list; a *client*
(:class:`ClientSecurity`) needs the server's public key and authenticates the server by it. Privileged
topics (``actuator.cmd``) may only be subscribed with security configured.

A handshake that fails is never silent: :class:`HandshakeMonitor` watches a socket's handshakes and
:func:`handshake_error` turns each failure into a :class:`HandshakeError` that says which side is
misconfigured and how to fix it. See docs/oni-v1.md, "Security".
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message
from zmq.utils.z85 import Z85CHARS

from oni.errors import SecurityError
from oni.files import atomic_write

log = logging.getLogger("oni.security")

#: Topics a subscriber may only receive with CURVE security and an allow-list.
PRIVILEGED_TOPICS = frozenset({"actuator.cmd"})

#: Length of a Z85-encoded CURVE key (32 raw bytes).
KEY_LENGTH = 40
_Z85 = frozenset(Z85CHARS)
_KEY_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
#: Distinct refused keys remembered per allow-list; beyond it refusals are only counted in ``denied_total``,
#: so a peer inventing a fresh key per attempt cannot grow memory without bound.
_MAX_DENIED_KEYS = 1024
#: Failed handshakes a monitor remembers (the newest).
_MAX_FAILURES = 256
#: How long a new authenticator waits for a stopped one's ZAP address to be released (s).
_ZAP_BIND_WAIT_S = 2.0


def check_public_key(key: bytes | str) -> bytes:
    """``key`` as Z85 bytes, after checking it is a 40-character Z85 CURVE key; raises :class:`SecurityError`."""
    raw = key.encode() if isinstance(key, str) else bytes(key)
    if len(raw) != KEY_LENGTH or not set(raw) <= _Z85:
        shown = raw[:48].decode(errors="replace")
        raise SecurityError(f"{shown!r} is not a CURVE public key (40 Z85 characters, as `oniwm keys show` prints)")
    return raw


@dataclass(frozen=True)
class KeyPair:
    """A CURVE key pair, Z85-encoded (40 ASCII bytes each). The secret never appears in ``repr``."""

    public: bytes
    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        check_public_key(self.public)
        if len(self.secret) != KEY_LENGTH or not set(self.secret) <= _Z85:
            raise SecurityError("a CURVE secret key is 40 Z85 characters")

    @classmethod
    def generate(cls) -> "KeyPair":
        """A fresh random key pair (libzmq's ``zmq_curve_keypair``)."""
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
        try:
            public, secret = zmq.auth.load_certificate(path)
        except (OSError, ValueError) as exc:
            raise SecurityError(f"{path} is not a readable ZeroMQ certificate: {exc}") from None
        if secret is None:
            raise SecurityError(f"{path} holds no secret key")
        return cls(public, secret)

    def save(self, directory: str | os.PathLike[str], name: str, *, overwrite: bool = False) -> tuple[Path, Path]:
        """Write ``NAME.key`` (0644) and ``NAME.key_secret`` (0600) into ``directory``; returns their paths.

        Each file is written atomically (a temporary file renamed into place), so a reader never sees half a
        key. Without ``overwrite``, existing files are an error (``FileExistsError``) and nothing is written:
        replacing a key locks out every peer that allow-listed the old one.
        """
        if _KEY_NAME.fullmatch(name) is None:
            raise ValueError(f"key name {name!r} must be a plain file name (letters, digits, '_', '.', '-')")
        directory = Path(directory)
        # A new key directory holds secrets: keep it private.
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        targets = (directory / f"{name}.key", directory / f"{name}.key_secret")
        if not overwrite:
            existing = [str(t) for t in targets if t.exists()]
            if existing:
                raise FileExistsError(f"{' and '.join(existing)} already exist")
        for target, secret in zip(targets, (None, self.secret)):
            # exclusive: a file created since the check above survives.
            atomic_write(target, _certificate_text(self.public, secret), mode=0o600 if secret else 0o644,
                         exclusive=not overwrite)
        return targets


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
    """Public keys from Z85 strings, ``.key`` / ``.key_secret`` files, or directories of ``.key`` files."""
    keys: set[bytes] = set()
    for source in sources:
        if isinstance(source, bytes):
            keys.add(check_public_key(source))
            continue
        path = Path(os.fsdecode(source))
        try:
            if path.is_dir():
                found = zmq.auth.load_certificates(path)
                if not found:
                    log.warning("no .key files in %s: that allow-list admits nobody", path)
                keys.update(found)
            elif path.exists():
                keys.add(zmq.auth.load_certificate(path)[0])
            elif len(str(source)) == KEY_LENGTH:
                keys.add(check_public_key(str(source)))
            else:
                raise SecurityError(f"{source!r} is neither a Z85 public key nor a key file or directory")
        except (OSError, ValueError) as exc:
            raise SecurityError(f"cannot read public keys from {path}: {exc}") from None
    return frozenset(keys)


@dataclass(frozen=True)
class ServerSecurity:
    """Be the CURVE server: ``keys`` is this socket's pair; only ``allowed_clients`` (public keys) may connect.

    ``allowed_clients`` takes any iterable of Z85 keys (bytes or str) and is stored as a frozenset.
    ``None`` admits any client that completes the CURVE handshake (encryption without authorisation);
    privileged topics refuse that.
    """

    keys: KeyPair
    allowed_clients: frozenset[bytes] | None

    def __post_init__(self) -> None:
        if self.allowed_clients is not None:
            if isinstance(self.allowed_clients, (bytes, str)):
                raise TypeError("allowed_clients is a collection of keys, not one key: wrap it in a set")
            # Normalising at construction (the object is never changed afterwards).
            object.__setattr__(self, "allowed_clients", frozenset(check_public_key(k) for k in self.allowed_clients))


@dataclass(frozen=True)
class ClientSecurity:
    """Be a CURVE client of a server whose public key is ``server_public`` (Z85, bytes or str)."""

    keys: KeyPair
    server_public: bytes

    def __post_init__(self) -> None:
        object.__setattr__(self, "server_public", check_public_key(self.server_public))


Security = ServerSecurity | ClientSecurity


class AllowList:
    """The allow-list of one server socket, consulted by the ZAP handler; counts the keys it refused.

    :meth:`release` must be called when the socket closes (Publisher/Subscriber ``close()`` do), so the
    context's authenticator thread stops with its last server socket.
    """

    def __init__(self, keys: frozenset[bytes] | None) -> None:
        self.keys = keys
        self.domain = ""
        self.denied_total = 0
        self._denied: Counter[str] = Counter()
        self._lock = threading.Lock()  # the ZAP thread writes, users read
        self._service: _AuthService | None = None

    def callback(self, domain: str, key: bytes) -> bool:
        """ZAP credentials callback (runs in the authenticator thread): is ``key`` (Z85) admitted?"""
        if self.keys is None or key in self.keys:
            return True
        text = key.decode(errors="replace")
        with self._lock:
            self.denied_total += 1
            tracked = text in self._denied or len(self._denied) < _MAX_DENIED_KEYS
            if tracked:
                self._denied[text] += 1
            count = self._denied[text] if tracked else self.denied_total
        if count & (count - 1) == 0:  # the 1st, 2nd, 4th, 8th...: a retrying or key-spraying peer cannot flood the log
            what = "times for this key" if tracked else "refusals in all"
            log.warning("refused CURVE client key %s on %s: not on the allow-list (%d %s)", text, domain, count, what)
        return False

    @property
    def denied(self) -> dict[str, int]:
        """Refused client keys (Z85 text) with how many handshakes each attempted."""
        with self._lock:
            return dict(self._denied)

    def release(self) -> None:
        """Stop consulting this allow-list; idempotent."""
        service, self._service = self._service, None
        if service is not None:
            service.remove(self.domain)


class _AuthService:
    """One ZAP authenticator per ZeroMQ context, with one domain (and allow-list) per server socket.

    Reference-counted: the authenticator thread starts with the first server socket of a context and stops
    when the last one releases its allow-list, so a context can then be terminated cleanly.
    """

    _services: dict[int, "_AuthService"] = {}
    _ids = itertools.count(1)
    _lock = threading.Lock()

    def __init__(self, context: zmq.Context) -> None:
        self.context = context
        # A just-stopped authenticator's ZAP address is released asynchronously (by libzmq's reaper), so
        # binding it again may briefly fail with EADDRINUSE.
        deadline = time.monotonic() + _ZAP_BIND_WAIT_S
        while True:
            self.auth = ThreadAuthenticator(context, log=logging.getLogger("oni.zap"))
            try:
                self.auth.start()
                break
            except zmq.ZMQError as exc:
                self.auth.stop()
                if exc.errno != zmq.EADDRINUSE or time.monotonic() > deadline:
                    raise SecurityError(
                        f"cannot start the ZAP authenticator on this context ({exc}); another authenticator may "
                        "already be bound to inproc://zeromq.zap.01 in it"
                    ) from None
                time.sleep(0.001)
        self.domains: set[str] = set()

    @classmethod
    def add(cls, context: zmq.Context, allow: AllowList) -> str:
        """Register ``allow`` under a fresh ZAP domain on ``context``'s authenticator; returns the domain."""
        with cls._lock:
            # The service holds a reference to its context, so while an entry exists its id is not reused.
            service = cls._services.get(id(context))
            if service is not None and (service.context.closed or not service.auth.is_alive()):
                service = None  # the context was terminated under us; its authenticator died with it
            if service is None:
                service = cls._services[id(context)] = cls(context)
            domain = f"oni-{next(cls._ids)}"
            service.domains.add(domain)
            service.auth.configure_curve_callback(domain, allow)
            allow.domain = domain
            allow._service = service
            return domain

    def remove(self, domain: str) -> None:
        with self._lock:
            self.auth.credentials_providers.pop(domain, None)
            self.domains.discard(domain)
            if self.domains or self._services.get(id(self.context)) is not self:
                return
            del self._services[id(self.context)]
            # Stopped under the lock, so a new service for this context never races this one for the ZAP address.
            if not self.context.closed:
                self.auth.stop()


def apply(socket: zmq.Socket, security: Security | None) -> AllowList | None:
    """Configure ``socket`` for CURVE before it binds or connects. Returns the allow-list of a server."""
    if security is None:
        return None
    if not zmq.has("curve"):
        raise SecurityError("this libzmq was built without CURVE support")
    socket.curve_secretkey = security.keys.secret
    socket.curve_publickey = security.keys.public
    if isinstance(security, ServerSecurity):
        allow = AllowList(security.allowed_clients)
        socket.zap_domain = _AuthService.add(socket.context, allow).encode()
        # Fail closed: without this, a context whose ZAP handler is gone admits every CURVE client.
        socket.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
        socket.curve_server = True
        return allow
    socket.curve_serverkey = security.server_public
    return None


class HandshakeError(SecurityError):
    """A ZMTP security handshake failed, as seen on a socket monitor.

    ``event`` is the zmq event (``zmq.EVENT_HANDSHAKE_FAILED_*``), ``detail`` its value (a
    ``zmq.PROTOCOL_ERROR_*`` code, a ZAP status code such as 400, or an errno), ``endpoint`` where it
    happened, and ``bound`` whether the failing peer connected to us (then the peer is misconfigured, and
    this side only reports it) rather than us to it.
    """

    def __init__(self, message: str, *, event: int, detail: int, endpoint: str, bound: bool) -> None:
        super().__init__(message)
        self.event = event
        self.detail = detail
        self.endpoint = endpoint
        self.bound = bound


def handshake_error(
    event: int, value: int, endpoint: str, security: Security | None, *, bound: bool = False
) -> HandshakeError:
    """A clear error for a failed handshake seen on the monitor of a socket configured with ``security``.

    ``bound`` is true when the peer connected to this socket (the failure is the peer's to fix).
    """
    server = isinstance(security, ServerSecurity)
    mismatch = event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH
    crypto = event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and value == zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH and server:
        why = f"refused a client whose CURVE key is not on this socket's allow-list (ZAP status {value})"
    elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        mine = security.keys.public.decode() if security is not None else "?"
        why = (
            f"the peer refused this socket's CURVE key {mine} (ZAP status {value}): add it to the peer's "
            "allow-list, or use a key that is on it"
        )
    elif mismatch and security is None:
        why = (
            "the peer requires CURVE security and this socket is plaintext: configure "
            "security=ClientSecurity(keys, server_public=<the server's public key>)"
        )
    elif mismatch and bound:
        why = "a plaintext peer tried to connect to this CURVE endpoint; it needs ClientSecurity with this server's key"
    elif mismatch:
        why = "the peer is plaintext (no CURVE) and this socket requires CURVE: secure the peer, or drop security here"
    elif crypto and server:
        mine = security.keys.public.decode()
        why = f"a client's CURVE handshake did not decrypt: it is using the wrong server key (this server's is {mine})"
    elif crypto:
        why = "the CURVE handshake did not decrypt: check that server_public is the server's public key"
    elif event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL and isinstance(security, ClientSecurity) and not bound:
        why = (
            "the server closed the connection during the CURVE handshake: server_public "
            f"{security.server_public.decode()} is most likely not the server's public key"
        )
    else:
        why = "the security handshake failed (one side plaintext, or mismatched CURVE keys)"
    kind = "detail" if event != zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL else "errno"
    return HandshakeError(
        f"handshake with {endpoint} failed: {why} (zmq event {event:#x}, {kind} {value:#x})",
        event=event,
        detail=value,
        endpoint=endpoint,
        bound=bound,
    )


#: The monitor events that mean a security handshake failed.
HANDSHAKE_FAILURES = (
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)
_monitor_ids = itertools.count(1)


class HandshakeMonitor:
    """Watches one socket's handshakes so security mistakes surface as errors instead of silence.

    libzmq sends monitor events from the context's I/O thread with a *blocking* send, so the reading end
    here has no queue limit (an unread backlog costs memory, never a wedged I/O thread), and :meth:`close`
    detaches the monitor before closing the reader (closing the reader first wedges that thread too, and
    with it every socket of the context).
    """

    def __init__(self, socket: zmq.Socket, events: int = HANDSHAKE_FAILURES) -> None:
        address = f"inproc://oni.monitor.{next(_monitor_ids)}"
        self._monitored = socket
        socket.monitor(address, events)
        self._reader = socket.context.socket(zmq.PAIR)
        self._reader.rcvhwm = 0
        self._reader.linger = 0
        self._reader.connect(address)
        self.failures: deque[tuple[int, int, str]] = deque(maxlen=_MAX_FAILURES)

    def drain(self) -> list[tuple[int, int, str]]:
        """The failures ``(event, detail, endpoint)`` seen since the last call (also kept in ``failures``)."""
        new = []
        while self._reader.poll(0):
            event = recv_monitor_message(self._reader)
            endpoint = event["endpoint"]
            endpoint = endpoint.decode(errors="replace") if isinstance(endpoint, bytes) else str(endpoint)
            new.append((event["event"], event["value"], endpoint))
        self.failures.extend(new)
        return new

    def close(self) -> None:
        if not self._monitored.closed:
            self._monitored.disable_monitor()
        self._reader.close(linger=0)
