"""`hazmon demo` end to end, as `make demo` runs it: simulators, gateways, rule engine, embedded
PostgreSQL and API. Within 60 s the demo scenario's alarms are at /api/v1/alarms, in the alarm
journal, and on the WebSocket; SIGTERM stops everything, the embedded database included."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import websockets

pytestmark = pytest.mark.slow

SITE = "demo-tank-farm"
LEAK = f"{SITE}/V103.GT1:gas.H"  # the demo scenario's leak, as the API names the alarm


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _until(predicate, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = await predicate()
        if result:
            return result
        await asyncio.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


async def test_demo_shows_alarms_within_a_minute(tmp_path: Path) -> None:
    port = _free_port()
    log = (tmp_path / "demo.log").open("w")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAZMON_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hazmon", "demo", "--port", str(port), "--data-dir", str(tmp_path / "data"),
        "--opcua-port", "0", "--modbus-port", "0",
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    started = time.monotonic()
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=5) as client:

            async def healthy() -> bool:
                try:
                    return (await client.get("/healthz")).status_code == 200
                except httpx.TransportError:
                    return False

            await _until(healthy, 60, "GET /healthz = 200")

            async def token() -> str | None:
                m = re.search(r"HAZMON_TOKEN=(\S+)", (tmp_path / "demo.log").read_text())
                return m.group(1) if m else None

            secret = await _until(token, 10, "the printed operator token")
            headers = {"Authorization": f"Bearer {secret}"}

            async def alarms() -> list[dict[str, object]]:
                body = (await client.get("/api/v1/alarms", headers=headers)).json()
                return [a for a in body if a["alarm_id"].startswith(f"{SITE}/V103.GT1:")]

            gas = await _until(alarms, 60 - (time.monotonic() - started), "the leak's gas alarms")
            assert {a["condition"] for a in gas} >= {"gas.H"}
            assert all(a["site"] == SITE and a["tag"] == "V103.GT1" for a in gas), gas

            async def journaled() -> bool:
                r = await client.get("/api/v1/alarms/history", headers=headers, params={"limit": 500})
                return any(e["alarm_id"] == LEAK for e in r.json()["events"])

            await _until(journaled, 10, "the alarm in the journal")
        async with websockets.connect(f"ws://127.0.0.1:{port}/api/v1/live?token={secret}") as ws:
            await ws.send(json.dumps({"type": "subscribe", "sites": [SITE], "alarms_only": True}))
            snapshot = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert snapshot["type"] == "snapshot"
            assert any(a["alarm_id"] == LEAK for a in snapshot["alarms"])
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(proc.wait(), 30)
        finally:
            if proc.returncode is None:
                proc.kill()
            log.close()
    assert code == 0, (tmp_path / "demo.log").read_text()[-3000:]
    pids = json.loads((tmp_path / "data" / "postgres" / ".handle_pids.json").read_text())
    assert pids == []  # the embedded PostgreSQL was stopped
