"""The client side of a robot bridge: its info file, and connecting to its sensor and command endpoints.

A *bridge* puts a robot on the ONI bus: it publishes the robot's sensors and takes ``actuator.cmd`` on a CURVE
server socket whose allow-list holds the controllers' public keys. It advertises itself with a *bridge info* file
(JSON, written atomically; format :data:`INFO_FORMAT`) naming its endpoints, topics, QoS and public key; the
simulated robot (``sim.bridge.SimBridge``) writes one, and so may a real robot's driver. A controller (the
world-model runtime, a test, a tool) reads it with :func:`read_bridge_info`, then connects with
:func:`connect_sensor_subscriber` and :func:`connect_command_publisher`; :func:`ensure_client_keys` creates a
local controller's key pair and allow-lists it (before the bridge starts: the allow-list is read once, at start).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import zmq

from oni import qos as qos_mod
from oni.files import atomic_write
from oni.qos import QosProfile
from oni.security import ClientSecurity, KeyPair
from oni.transport import Publisher, Subscriber

__all__ = [
    "ALLOWED_DIR",
    "COMMAND_TOPIC",
    "INFO_FORMAT",
    "BridgeError",
    "BridgeInfo",
    "connect_command_publisher",
    "connect_sensor_subscriber",
    "ensure_client_keys",
    "info_problem",
    "load_or_create_keys",
    "read_bridge_info",
]

log = logging.getLogger("oni.bridge_client")

#: Version tag of the bridge info file; a new major layout gets a new tag.
INFO_FORMAT = "oni.sim_bridge/1"
#: Sub-directory of a keys directory holding the allow-listed client public keys (``*.key``).
ALLOWED_DIR = "allowed"
#: The command topic a bridge takes.
COMMAND_TOPIC = "actuator.cmd"


class BridgeError(RuntimeError):
    """The bridge cannot start or a client cannot reach it; the message says what to change."""



def ensure_client_keys(keys_dir: str | Path, name: str) -> KeyPair:
    """A controller's key pair ``KEYS_DIR/NAME.key_secret`` (generated on first use), allow-listed for the bridge.

    Copies ``NAME.key`` (public only) into ``KEYS_DIR/allowed/``. For a controller on the bridge's host and
    user: whoever can write the keys directory can already read the bridge's secret key. The bridge reads its
    allow-list when it starts, so call this before starting it.
    """
    directory = Path(keys_dir).expanduser()
    keys = load_or_create_keys(directory, name)
    allowed = directory / ALLOWED_DIR
    allowed.mkdir(mode=0o700, parents=True, exist_ok=True)
    atomic_write(allowed / f"{name}.key", (directory / f"{name}.key").read_bytes())
    return keys


def load_or_create_keys(directory: Path, name: str) -> KeyPair:
    """The key pair ``DIRECTORY/NAME.key_secret``, generated and saved (atomically, once) on first use."""
    secret = directory / f"{name}.key_secret"
    if secret.exists():
        return KeyPair.load(secret)
    keys = KeyPair.generate()
    try:
        keys.save(directory, name)
    except FileExistsError:
        return KeyPair.load(secret)  # another process created it between our check and our write
    log.info("generated CURVE key pair %s (public %s)", secret, keys.public.decode())
    return keys



# ---------------------------------------------------------------------------------------------------------------
# The bridge info file and client helpers


@dataclass(frozen=True)
class BridgeInfo:
    """A running bridge, as its info file describes it (see the module docstring for the JSON)."""

    path: Path
    raw: dict[str, Any]

    @property
    def sensor_endpoint(self) -> str:
        return self.raw["sensors"]["endpoint"]

    @property
    def command_endpoint(self) -> str:
        return self.raw["commands"]["endpoint"]

    @property
    def server_public_key(self) -> bytes:
        """The bridge's CURVE public key (Z85), which a command publisher must authenticate it by."""
        return self.raw["commands"]["server_public_key"].encode()

    @property
    def topics(self) -> dict[str, dict[str, Any]]:
        """Published topic -> ``{"schema", "rate_hz", "frame_id", "qos"}``."""
        return self.raw["sensors"]["topics"]

    @property
    def command_timeout_s(self) -> float:
        return float(self.raw["commands"]["command_timeout_s"])

    @property
    def epoch_ns(self) -> int | None:
        """Wall-clock time of sim t = 0 (ns since the Unix epoch); None until the bridge runs."""
        return self.raw["epoch_ns"]

    @property
    def pid(self) -> int:
        return int(self.raw["pid"])


def read_bridge_info(path: str | Path, timeout_s: float = 0.0) -> BridgeInfo:
    """The bridge info at ``path``, waiting up to ``timeout_s`` for a live bridge to write it.

    Raises :class:`BridgeError` if no file appears, or if the file's bridge process is gone (a stale file).
    """
    path = Path(path).expanduser()
    end = time.monotonic() + timeout_s
    while True:
        problem = info_problem(path)
        if problem is None:
            return BridgeInfo(path, json.loads(path.read_text()))
        if time.monotonic() >= end:
            raise BridgeError(f"{path}: {problem}")
        time.sleep(0.05)


def info_problem(path: Path) -> str | None:
    """Why ``path`` is not a live bridge's info (None if it is)."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return "no bridge info file (is `oniwm sim` running with this --info-file?)"
    except (OSError, ValueError) as exc:
        return f"unreadable bridge info: {exc}"
    if not isinstance(raw, dict) or raw.get("format") != INFO_FORMAT:
        return f"not a bridge info file of format {INFO_FORMAT}"
    if not _pid_alive(int(raw.get("pid", -1))):
        return f"stale bridge info: its bridge (pid {raw.get('pid')}) is not running"
    return None


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _as_info(info: BridgeInfo | str | Path) -> BridgeInfo:
    return info if isinstance(info, BridgeInfo) else read_bridge_info(info)


def connect_command_publisher(
    info: BridgeInfo | str | Path,
    keys: KeyPair,
    *,
    source: str = "controller",
    context: zmq.Context | None = None,
) -> Publisher:
    """A publisher of ``actuator.cmd`` (``control`` QoS) connected to the bridge as a CURVE client with ``keys``.

    ``keys.public`` must be on the bridge's allow-list (:func:`ensure_client_keys`); otherwise the bridge
    refuses the connection, counts the key, and this publisher's log reports the refusal. Connections are
    asynchronous: commands published before the handshake completes are lost (``reliable`` cannot see a peer
    that is not there yet), so a controller publishes continuously, as it does anyway.
    """
    info = _as_info(info)
    return Publisher(
        info.command_endpoint,
        {COMMAND_TOPIC: qos_mod.CONTROL},
        source=source,
        bind=False,
        context=context,
        security=ClientSecurity(keys, info.server_public_key),
    )


def connect_sensor_subscriber(
    info: BridgeInfo | str | Path,
    topics: Iterable[str] | None = None,
    *,
    qos: QosProfile | None = None,
    context: zmq.Context | None = None,
) -> Subscriber:
    """A subscriber of the bridge's ``topics`` (default: all, ground truth included), connected.

    Each topic is subscribed with ``qos`` or, by default, the profile the bridge offers for it.
    """
    info = _as_info(info)
    offered = info.topics
    wanted = list(offered) if topics is None else list(topics)
    unknown = sorted(set(wanted) - set(offered))
    if unknown:
        raise BridgeError(f"the bridge does not publish {unknown}; it publishes {sorted(offered)}")
    sub = Subscriber(context=context)
    for topic in wanted:
        sub.subscribe(topic, qos or QosProfile.from_dict(offered[topic]["qos"]), offered[topic]["schema"])
    sub.connect(info.sensor_endpoint)
    return sub
