"""Helpers shared by the gateway, spool, forwarder and outage tests."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from hazmon.gateways.base import Gateway
from hazmon.reading import ReadingBatch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_for(
    cond: Callable[[], bool | Awaitable[bool]], timeout: float = 10.0, what: str = "condition", step: float = 0.02
) -> None:
    """Poll ``cond`` until it holds; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        r = cond()
        if not isinstance(r, bool):
            r = await r
        if r:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(step)


class Collector:
    """Consumes a gateway's batches in the background; readings kept per tag key."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.batches: list[ReadingBatch] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Collector:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        async for b in self.gw.batches():
            self.batches.append(b)

    def all(self) -> ReadingBatch:
        return ReadingBatch.concat(self.batches)

    def rows(self) -> int:
        return sum(len(b) for b in self.batches)

    def latest(self, key: int, *, good: bool = True) -> float | None:
        for b in reversed(self.batches):
            m = b.tag == key
            if good:
                m &= b.quality < 128
            if m.any():
                return float(b.value[m][-1])
        return None

    def values(self, key: int, *, good: bool = True) -> np.ndarray:
        b = self.all()
        m = b.tag == key
        if good:
            m &= b.quality < 128
        return b.value[m]


async def _bounded(p: asyncio.subprocess.Process, stdin: bytes | None, timeout_s: float = 60.0) -> tuple[bytes, bytes]:
    """``communicate`` with a deadline: a client that hangs is killed and fails the test."""
    try:
        out, err = await asyncio.wait_for(p.communicate(stdin), timeout_s)
    except TimeoutError:
        p.kill()
        await p.wait()
        raise AssertionError(f"mosquitto_pub did not finish within {timeout_s:g} s") from None
    return out or b"", err or b""


class Mosquitto:
    """A private Mosquitto on a free loopback port, persistent, restartable by the test.

    Never the shared broker on 1883: other tests use that one concurrently.
    """

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {self.dir}/\n"
            "autosave_interval 1\n"
            "max_queued_messages 1000000\n"
            "max_inflight_messages 1000\n"
            "user root\n"
            "log_type error\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def _spawn(self) -> None:
        self.proc = subprocess.Popen(
            ["mosquitto", "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )

    async def start(self) -> None:
        self._spawn()

        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise AssertionError(f"mosquitto exited: {err}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return True
            except OSError:
                return False

        await wait_for(up, 10, "mosquitto listening")

    async def stop(self) -> None:
        """Graceful stop (SIGTERM): Mosquitto saves its persistence file, like a service restart."""
        if self.proc is not None:
            self.proc.terminate()
            await asyncio.to_thread(self.proc.wait, 10)
            if self.proc.stderr:
                self.proc.stderr.close()
            self.proc = None

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def publish(self, topic: str, payload: str, qos: int = 1) -> None:
        """Publish with the mosquitto_pub command (a client no one here wrote)."""
        p = await asyncio.create_subprocess_exec(
            "mosquitto_pub",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-q",
            str(qos),
            "-t",
            topic,
            "-m",
            payload,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await _bounded(p, None)
        assert p.returncode == 0, err.decode()

    async def publish_lines(self, topic: str, payloads: list[str], qos: int = 1) -> None:
        """Many messages through one mosquitto_pub (-l: a message per stdin line)."""
        p = await asyncio.create_subprocess_exec(
            "mosquitto_pub",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-q",
            str(qos),
            "-t",
            topic,
            "-l",
            stdin=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await _bounded(p, ("\n".join(payloads) + "\n").encode())
        assert p.returncode == 0, err.decode()


EXAMPLE_NS = "http://examples.freeopcua.github.io"  # the namespace of asyncua's example servers


class OpcServer:
    """An asyncua server like asyncua's examples/server-minimal.py, with devices of Double variables.

    Variables have string node ids ``Dev{d}.V{i}`` in the example namespace. ``write(values)``
    writes every variable at once through the server's fast path. Restartable on the same port.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        devices: int = 1,
        per_device: int = 10,
        security: tuple[Path, Path] | None = None,
        users: dict[str, str] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.devices = devices
        self.per_device = per_device
        self.security = security
        self.users = users
        self.server: Any = None
        self.nodeids: list[Any] = []
        self.writes = 0  # value changes written

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.port}/freeopcua/server/"

    def names(self) -> list[str]:
        return [f"Dev{d}.V{i}" for d in range(self.devices) for i in range(self.per_device)]

    async def start(self, initial: float = 0.0) -> None:
        from asyncua import Server, ua
        from asyncua.crypto.permission_rules import User, UserRole
        from asyncua.server.user_managers import UserManager

        users = self.users

        class _Users(UserManager):
            def get_user(
                self, iserver: Any, username: Any = None, password: Any = None, certificate: Any = None
            ) -> Any:
                if users is None:
                    return User(role=UserRole.User)
                if username in users and users[username] == password:
                    return User(role=UserRole.User)
                return None

        server = Server(user_manager=_Users())
        await server.init()
        server.set_endpoint(self.endpoint)
        if self.security is not None:
            cert, key = self.security
            server.set_security_policy(
                [
                    ua.SecurityPolicyType.Basic256Sha256_Sign,
                    ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
                ]
            )
            await server.load_certificate(str(cert))
            await server.load_private_key(str(key))
        if users is not None:
            server.set_identity_tokens([ua.UserNameIdentityToken])
        idx = await server.register_namespace(EXAMPLE_NS)
        self.nodeids = []
        for d in range(self.devices):
            obj = await server.nodes.objects.add_object(ua.NodeId(f"Dev{d}", idx), f"Dev{d}")
            for i in range(self.per_device):
                name = f"Dev{d}.V{i}"
                var = await obj.add_variable(ua.NodeId(name, idx), name, ua.Variant(initial, ua.VariantType.Double))
                self.nodeids.append(var.nodeid)
        await server.start()
        self.server = server

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
            self.server = None

    async def write(self, value: float | list[float]) -> None:
        from asyncua import ua

        values = value if isinstance(value, list) else [value] * len(self.nodeids)
        now = datetime.now(UTC)  # a real server stamps each change with its source time
        for nodeid, v in zip(self.nodeids, values, strict=True):
            dv = ua.DataValue(ua.Variant(float(v), ua.VariantType.Double), SourceTimestamp=now, ServerTimestamp=now)
            await self.server.write_attribute_value(nodeid, dv)
        self.writes += len(values)


async def make_certificates(directory: Path) -> dict[str, Path]:
    """Self-signed server and client certificates made with asyncua's own tools."""
    from asyncua.crypto.cert_gen import setup_self_signed_certificate
    from cryptography.x509.oid import ExtendedKeyUsageOID

    out = {}
    for role, uri, use in (
        ("server", "urn:freeopcua:python:server", ExtendedKeyUsageOID.SERVER_AUTH),
        ("client", "urn:hazmon:gateway", ExtendedKeyUsageOID.CLIENT_AUTH),
    ):
        key, cert = directory / f"{role}-key.pem", directory / f"{role}-cert.der"
        await setup_self_signed_certificate(key, cert, uri, "localhost", [use], {"commonName": f"hazmon-test-{role}"})
        out[f"{role}_key"], out[f"{role}_cert"] = key, cert
    return out


class PtyPair:
    """A virtual serial cable: two ptys joined by socat (Debian's ``socat``), as ``a`` and ``b`` paths.

    What is written to one end is read at the other, like an RS-485 line between a PLC and hazmon.
    """

    def __init__(self, directory: Path) -> None:
        self.a = directory / "ttyA"
        self.b = directory / "ttyB"
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        self.proc = subprocess.Popen(  # noqa: ASYNC220 (a long-lived peer, like Mosquitto above)
            ["socat", f"pty,raw,echo=0,link={self.a}", f"pty,raw,echo=0,link={self.b}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise AssertionError(f"socat exited: {err}")
            return self.a.exists() and self.b.exists()

        await wait_for(ready, 10, "socat's pty pair")

    async def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            await asyncio.to_thread(self.proc.wait, 10)
            if self.proc.stderr:
                self.proc.stderr.close()
            self.proc = None
