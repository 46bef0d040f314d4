"""CURVE security over real loopback sockets: keys, allow-lists, privileged topics, loud handshake failures.

Every socket has linger 0 and every wait a timeout, so a regression fails a test instead of hanging it.
"""

from __future__ import annotations

import argparse
import os
import select
import socket
import stat
import subprocess
import sys
import threading
import time
from contextlib import ExitStack

import numpy as np
import pytest
import zmq

from oni import qos
from oni.cli import keys as keys_cli
from oni.errors import SecurityError
from oni.message import Message
from oni.security import (
    AllowList,
    ClientSecurity,
    HandshakeError,
    KeyPair,
    ServerSecurity,
    _AuthService,
    apply,
    load_public_keys,
)
from oni.transport import Publisher, Subscriber
from tests.oni.conftest import connect_and_settle, lidar_data, wait_for

pytestmark = pytest.mark.timeout(60)

ANY_PORT = "tcp://127.0.0.1:*"
CMD = {"v_mps": 0.5, "omega_radps": -0.1}


@pytest.fixture(scope="module")
def keys() -> dict[str, KeyPair]:
    """Key pairs of a robot (server), a planner (allowed client) and a stranger (unknown client)."""
    return {name: KeyPair.generate() for name in ("robot", "planner", "stranger")}


def recv_until_error(sub: Subscriber, timeout_s: float = 5.0) -> HandshakeError:
    """Call ``sub.recv`` until it raises; fails the test if ``timeout_s`` passes in silence."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            sub.recv(timeout_ms=100)
        except HandshakeError as exc:
            return exc
    raise AssertionError(f"no handshake error within {timeout_s} s: the failure was silent")


def publish_until_received(pub: Publisher, sub: Subscriber, topic: str, data: dict, timeout_s: float = 5.0) -> Message:
    """Publish ``data`` until ``sub`` receives a message from ``pub`` (connections and subscriptions are async)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        pub.publish(topic, data)
        msg = sub.recv(timeout_ms=50)
        if msg is not None and msg.header.source == pub.source:
            return msg
    raise AssertionError(f"{sub} never received {topic} from {pub.source}")


# -- keys ----------------------------------------------------------------------------------------------------
def test_key_files_round_trip_and_the_secret_stays_private(tmp_path, keys):
    pair = keys["robot"]
    public_path, secret_path = pair.save(tmp_path / "keys", "robot")
    assert (public_path.name, secret_path.name) == ("robot.key", "robot.key_secret")
    assert stat.S_IMODE(secret_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(public_path.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    assert pair.secret.decode() not in public_path.read_text()
    assert pair.secret.decode() not in repr(pair)
    for spelling in ("robot", "robot.key", "robot.key_secret"):
        assert KeyPair.load(tmp_path / "keys" / spelling) == pair
    assert load_public_keys([public_path]) == {pair.public}
    assert load_public_keys([tmp_path / "keys", pair.public.decode()]) == {pair.public}
    # No temporary files left behind by the atomic writes.
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == ["robot.key", "robot.key_secret"]


def test_saving_over_existing_keys_needs_overwrite(tmp_path, keys):
    keys["robot"].save(tmp_path, "node")
    with pytest.raises(FileExistsError, match="node.key"):
        keys["planner"].save(tmp_path, "node")
    assert KeyPair.load(tmp_path / "node") == keys["robot"]
    keys["planner"].save(tmp_path, "node", overwrite=True)
    assert KeyPair.load(tmp_path / "node") == keys["planner"]


def test_bad_keys_are_clear_errors(tmp_path):
    with pytest.raises(SecurityError, match="oniwm keys generate"):
        KeyPair.load(tmp_path / "missing")
    (tmp_path / "junk.key_secret").write_text("not a certificate\n")
    with pytest.raises(SecurityError, match="junk.key_secret"):
        KeyPair.load(tmp_path / "junk")
    with pytest.raises(SecurityError, match="not a CURVE public key"):
        load_public_keys([b"too short"])
    with pytest.raises(SecurityError, match="not a CURVE public key"):
        ServerSecurity(KeyPair.generate(), {"x" * 39 + "\x00"})
    with pytest.raises(ValueError, match="plain file name"):
        KeyPair.generate().save(tmp_path, "../escape")


# -- encryption and allow-lists ------------------------------------------------------------------------------
def test_encrypted_pub_sub_works_end_to_end(context, keys):
    server = ServerSecurity(keys["robot"], {keys["planner"].public})
    client = ClientSecurity(keys["planner"], keys["robot"].public)
    with Publisher(
        ANY_PORT, {"sensor.lidar": qos.SENSOR}, source="lidar0", context=context, security=server
    ) as pub, Subscriber(context=context, security=client) as sub:
        sub.subscribe("sensor.lidar", qos.SENSOR)
        connect_and_settle(pub, sub, "sensor.lidar", lidar_data())
        ranges = np.linspace(0.2, 11.0, 360, dtype=np.float32)
        sent = pub.publish("sensor.lidar", {**lidar_data(), "ranges_m": ranges}, frame_id="laser")
        msg = sub.recv(timeout_ms=2000)
        assert msg is not None and msg.header == sent
        np.testing.assert_array_equal(msg.data["ranges_m"], ranges)
        assert pub.denied_keys == {} and pub.security_failures() == []


def test_privileged_topic_takes_commands_only_from_allow_listed_keys(context, keys):
    robot_security = ServerSecurity(keys["robot"], {keys["planner"].public})
    with ExitStack() as stack:
        sub = stack.enter_context(Subscriber(context=context, security=robot_security))
        sub.subscribe("actuator.cmd", qos.CONTROL)
        endpoint = sub.bind(ANY_PORT)
        rogue = stack.enter_context(
            Publisher(
                endpoint,
                {"actuator.cmd": qos.CONTROL},
                source="rogue",
                bind=False,
                context=context,
                security=ClientSecurity(keys["stranger"], keys["robot"].public),
            )
        )
        stranger = keys["stranger"].public.decode()
        # The rogue keeps commanding while the robot listens: nothing arrives, and recv() never raises
        # (the rogue is the peer at fault, not the robot's configuration).
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            rogue.publish("actuator.cmd", {"v_mps": 9.0, "omega_radps": 9.0})
            assert sub.recv(timeout_ms=20) is None
        assert wait_for(lambda: stranger in sub.denied_keys)
        assert sub.peer_handshake_failures >= 1
        assert wait_for(lambda: any(e == zmq.EVENT_HANDSHAKE_FAILED_AUTH for e, _, _ in rogue.security_failures()))

        planner = stack.enter_context(
            Publisher(
                endpoint,
                {"actuator.cmd": qos.CONTROL},
                source="planner",
                bind=False,
                context=context,
                security=ClientSecurity(keys["planner"], keys["robot"].public),
            )
        )
        msg = publish_until_received(planner, sub, "actuator.cmd", CMD)
        assert msg.data["v_mps"] == 0.5 and msg.header.source == "planner"
        for _ in range(20):
            rogue.publish("actuator.cmd", {"v_mps": 9.0, "omega_radps": 9.0})
        while (msg := sub.recv(timeout_ms=200)) is not None:
            assert msg.header.source == "planner"
        assert keys["planner"].public.decode() not in sub.denied_keys


@pytest.mark.parametrize("encrypted", [False, True], ids=["plaintext", "curve-without-allow-list"])
def test_privileged_topic_refuses_a_subscriber_without_an_allow_list(context, keys, encrypted):
    security = ServerSecurity(keys["robot"], None) if encrypted else None
    with Subscriber(context=context, security=security) as sub:
        with pytest.raises(SecurityError) as caught:
            sub.subscribe("actuator.cmd", qos.CONTROL)
    text = str(caught.value)
    assert "actuator.cmd is privileged" in text and "allowed_clients" in text


# -- handshake failures are loud -----------------------------------------------------------------------------
def test_plaintext_subscriber_to_a_curve_publisher_raises_a_clear_error(context, keys):
    server = ServerSecurity(keys["robot"], {keys["planner"].public})
    with Publisher(ANY_PORT, {"sensor.lidar": qos.SENSOR}, source="l", context=context, security=server) as pub, Subscriber(
        context=context
    ) as sub:
        sub.subscribe("sensor.lidar", qos.SENSOR)
        sub.connect(pub.endpoint)
        started = time.monotonic()
        with pytest.raises(HandshakeError) as caught:
            sub.recv(timeout_ms=5000)
        assert time.monotonic() - started < 4.0  # raised when the event fired, not at the timeout
        error = caught.value
        assert error.event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
        assert error.detail == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH
        assert error.endpoint == pub.endpoint and not error.bound
        assert "requires CURVE security and this socket is plaintext" in str(error)
        assert "ClientSecurity" in str(error)
        # The publisher's monitor saw the same failure from its side.
        assert wait_for(
            lambda: (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH)
            in {(e, v) for e, v, _ in pub.security_failures()}
        )


def test_curve_subscriber_to_a_plaintext_publisher_raises_a_clear_error(context, keys):
    with Publisher(ANY_PORT, {"sensor.lidar": qos.SENSOR}, source="l", context=context) as pub, Subscriber(
        context=context, security=ClientSecurity(keys["planner"], keys["robot"].public)
    ) as sub:
        sub.subscribe("sensor.lidar", qos.SENSOR)
        sub.connect(pub.endpoint)
        error = recv_until_error(sub)
        assert error.event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
        assert error.detail == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH
        assert "the peer is plaintext" in str(error)


def test_wrong_server_key_raises_a_clear_error(context, keys):
    server = ServerSecurity(keys["robot"], {keys["planner"].public})
    wrong = ClientSecurity(keys["planner"], keys["stranger"].public)  # not the robot's key
    with Publisher(ANY_PORT, {"sensor.lidar": qos.SENSOR}, source="l", context=context, security=server) as pub, Subscriber(
        context=context, security=wrong
    ) as sub:
        sub.subscribe("sensor.lidar", qos.SENSOR)
        sub.connect(pub.endpoint)
        error = recv_until_error(sub)
        assert f"server_public {keys['stranger'].public.decode()} is most likely not the server's public key" in str(error)
        # The server could not decrypt the client's hello.
        assert wait_for(
            lambda: any(v == zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC for _, v, _ in pub.security_failures())
        )


def test_a_refused_client_is_told_its_key_is_not_allowed(context, keys):
    server = ServerSecurity(keys["robot"], {keys["planner"].public})
    with Publisher(ANY_PORT, {"sensor.lidar": qos.SENSOR}, source="l", context=context, security=server) as pub, Subscriber(
        context=context, security=ClientSecurity(keys["stranger"], keys["robot"].public)
    ) as sub:
        sub.subscribe("sensor.lidar", qos.SENSOR)
        sub.connect(pub.endpoint)
        error = recv_until_error(sub)
        assert error.event == zmq.EVENT_HANDSHAKE_FAILED_AUTH and error.detail == 400
        assert "refused this socket's CURVE key" in str(error) and keys["stranger"].public.decode() in str(error)
        assert pub.denied_keys == {keys["stranger"].public.decode(): 1}


# -- the encryption is real ----------------------------------------------------------------------------------
class TcpTap:
    """A loopback TCP relay to ``upstream`` that records every byte it carries (both directions)."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.removeprefix("tcp://").rsplit(":", 1)
        self._upstream = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.endpoint = f"tcp://127.0.0.1:{self._listener.getsockname()[1]}"
        self.captured = bytearray()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        pairs: dict[socket.socket, socket.socket] = {}
        try:
            while not self._stop.is_set():
                try:
                    down, _ = self._listener.accept()
                    up = socket.create_connection(self._upstream, timeout=2.0)
                    pairs[down], pairs[up] = up, down
                except TimeoutError:
                    pass
                readable = select.select(list(pairs), [], [], 0.05)[0] if pairs else []
                for sock in readable:
                    try:
                        chunk = sock.recv(65536)
                    except OSError:
                        chunk = b""
                    peer = pairs.get(sock)
                    if not chunk or peer is None:
                        for s in (sock, peer):
                            if s is not None:
                                pairs.pop(s, None)
                                s.close()
                        continue
                    self.captured += chunk
                    peer.sendall(chunk)
        finally:
            for sock in pairs:
                sock.close()
            self._listener.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5.0)


@pytest.mark.parametrize("secured", [False, True], ids=["plaintext-control", "curve"])
def test_bytes_on_the_wire_do_not_reveal_the_payload(context, keys, secured):
    """Through a recording relay: plaintext leaks the frame id and the float pattern (so the capture works);
    CURVE carries the same message intact with neither visible."""
    marker = "frame-0123456789-marker"
    ranges = np.full(512, 1.2345678, dtype=np.float32)
    pattern = ranges[:8].tobytes()
    server = ServerSecurity(keys["robot"], {keys["planner"].public}) if secured else None
    client = ClientSecurity(keys["planner"], keys["robot"].public) if secured else None
    with Publisher(ANY_PORT, {"sensor.lidar": qos.SENSOR}, source="l", context=context, security=server) as pub, Subscriber(
        context=context, security=client
    ) as sub:
        tap = TcpTap(pub.endpoint)
        try:
            sub.subscribe("sensor.lidar", qos.SENSOR)
            sub.connect(tap.endpoint)
            end = time.monotonic() + 5.0
            msg = None
            while msg is None and time.monotonic() < end:
                pub.publish("sensor.lidar", {**lidar_data(), "ranges_m": ranges}, frame_id=marker)
                msg = sub.recv(timeout_ms=50)
        finally:
            tap.close()
        assert msg is not None and msg.header.frame_id == marker
        np.testing.assert_array_equal(msg.data["ranges_m"], ranges)
        wire = bytes(tap.captured)
        assert len(wire) > ranges.nbytes
        leaked = marker.encode() in wire or pattern in wire
        assert leaked is not secured


# -- lifecycle: nothing wedges, nothing leaks ----------------------------------------------------------------
def test_the_authenticator_stops_with_the_last_server_socket_so_the_context_can_terminate(keys):
    ctx = zmq.Context()
    try:
        for _ in range(3):  # restart cycles: a stopped authenticator's ZAP address is reusable
            security = ServerSecurity(keys["robot"], set())
            with Publisher(ANY_PORT, {"sensor.lidar": qos.SENSOR}, source="l", context=ctx, security=security):
                assert id(ctx) in _AuthService._services
            assert id(ctx) not in _AuthService._services
    finally:
        done = threading.Event()
        threading.Thread(target=lambda: (ctx.term(), done.set()), daemon=True).start()
        assert done.wait(5.0), "context.term() hung: a socket of the authenticator was left open"


def test_a_server_socket_fails_closed_when_its_authenticator_is_gone(context, keys):
    """ZAP_ENFORCE_DOMAIN: without it, libzmq admits every CURVE client when no ZAP handler answers."""
    server = context.socket(zmq.PUB)
    server.linger = 0
    allow = apply(server, ServerSecurity(keys["robot"], {keys["planner"].public}))
    assert allow is not None
    allow._service.auth.stop()  # the handler vanishes behind the socket's back
    server.bind(ANY_PORT)
    endpoint = server.last_endpoint.decode()
    client = context.socket(zmq.SUB)
    client.linger = 0
    apply(client, ClientSecurity(keys["planner"], keys["robot"].public))
    client.subscribe(b"")
    client.connect(endpoint)
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        server.send(b"secret")
        assert not client.poll(20), "an allow-listed client got data although no authenticator approved it"
    client.close()
    server.close()
    allow.release()


#: A ZMTP 3.0 greeting offering the NULL (plaintext) mechanism, as a plaintext ZeroMQ peer sends it.
NULL_GREETING = b"\xff" + bytes(8) + b"\x7f" + bytes([3, 0]) + b"NULL".ljust(20, b"\x00") + bytes(32)


def test_a_handshake_storm_does_not_wedge_the_context(context, keys):
    """Monitor events are sent with a blocking send from the context's I/O thread: an unread backlog past the
    monitor's queue limit (2 x 1000 by default) used to freeze every socket of the context."""
    server = ServerSecurity(keys["robot"], {keys["planner"].public})
    with Publisher(ANY_PORT, {"sensor.lidar": qos.SENSOR}, source="l", context=context, security=server) as pub:
        host, port = pub.endpoint.removeprefix("tcp://").rsplit(":", 1)
        # 2500 plaintext peers, while nobody drains the publisher's monitor (it only does so while publishing).
        for _ in range(25):
            peers = [socket.create_connection((host, int(port)), timeout=2.0) for _ in range(100)]
            for peer in peers:
                peer.sendall(NULL_GREETING)
            for peer in peers:
                try:
                    while peer.recv(4096):  # until the server hangs up on the mechanism mismatch
                        pass
                except OSError:
                    pass
                peer.close()
        with Publisher(ANY_PORT, {"sensor.lidar": qos.SENSOR}, source="p", context=context) as plain, Subscriber(
            context=context
        ) as sub:
            sub.subscribe("sensor.lidar", qos.SENSOR)
            connect_and_settle(plain, sub, "sensor.lidar", lidar_data(), timeout_s=3.0)
        seen: list = []
        assert wait_for(lambda: seen.extend(pub._monitor.drain()) or len(seen) >= 2500)
        assert len(pub._monitor.failures) == 256  # only the newest are kept


def test_closing_a_subscriber_whose_peer_keeps_failing_leaves_the_context_usable(context, keys):
    server = ServerSecurity(keys["robot"], {keys["planner"].public})
    with Publisher(ANY_PORT, {"sensor.lidar": qos.SENSOR}, source="l", context=context, security=server) as pub:
        for _ in range(3):
            with Subscriber(context=context) as sub:
                sub.subscribe("sensor.lidar", qos.SENSOR)
                sub.connect(pub.endpoint)
                recv_until_error(sub)
        with Publisher(ANY_PORT, {"sensor.lidar": qos.SENSOR}, source="p", context=context) as plain, Subscriber(
            context=context
        ) as sub:
            sub.subscribe("sensor.lidar", qos.SENSOR)
            connect_and_settle(plain, sub, "sensor.lidar", lidar_data(), timeout_s=3.0)


# -- oniwm keys ----------------------------------------------------------------------------------------------
def run_keys(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="oniwm")
    keys_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_keys_generate_writes_a_pair_and_refuses_to_overwrite(tmp_path, capsys):
    assert run_keys("keys", "generate", "--out", str(tmp_path), "--name", "planner") == 0
    public = capsys.readouterr().out.strip()
    pair = KeyPair.load(tmp_path / "planner.key_secret")
    assert pair.public.decode() == public
    assert stat.S_IMODE((tmp_path / "planner.key_secret").stat().st_mode) == 0o600

    assert run_keys("keys", "generate", "--out", str(tmp_path), "--name", "planner") == 1
    assert capsys.readouterr().out == ""
    assert KeyPair.load(tmp_path / "planner") == pair  # untouched

    assert run_keys("keys", "generate", "--out", str(tmp_path), "--name", "planner", "--force") == 0
    replaced = capsys.readouterr().out.strip()
    assert replaced != public and KeyPair.load(tmp_path / "planner").public.decode() == replaced

    assert run_keys("keys", "show", str(tmp_path / "planner.key")) == 0
    assert capsys.readouterr().out.strip() == replaced
    assert run_keys("keys", "show", str(tmp_path / "nope.key")) == 1


def _cli_available() -> None:
    from worldmodel import cli

    try:
        cli.build_parser(["keys", "generate"])
    except ModuleNotFoundError as exc:
        pytest.skip(f"worldmodel.cli cannot import {exc.name}: a sibling command module is not written yet")


def test_oniwm_keys_generate_in_a_real_process(tmp_path):
    _cli_available()
    command = [sys.executable, "-m", "worldmodel.cli", "keys", "generate", "--out", str(tmp_path), "--name", "robot"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(command, capture_output=True, text=True, timeout=30, env=env)
    assert done.returncode == 0, done.stderr
    public = done.stdout.strip()
    assert KeyPair.load(tmp_path / "robot").public.decode() == public
    again = subprocess.run(command, capture_output=True, text=True, timeout=30, env=env)
    assert again.returncode == 1 and "--force" in again.stderr


def test_refused_keys_are_counted_within_a_memory_bound():
    allow = AllowList(frozenset())
    for i in range(1030):
        assert allow.callback("oni-test", f"{i:040d}".encode()) is False
    assert allow.denied_total == 1030
    assert len(allow.denied) == 1024 and allow.denied["0" * 40] == 1
