"""The demo as a regulator sees it: tags on the healthy OPC UA subscription whose values do not change
(ESD valves, SIS trips, in-service states) send nothing, and are still reporting — the demo's 81 tags
all report and the site is `ok`, not "16 silent, degraded" as it was."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from api_helpers import free_port
from test_cluster_api import _stop

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


async def _until(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = await predicate()
        if result:
            return result
        await asyncio.sleep(1.0)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


async def test_quiet_tags_of_a_healthy_subscription_are_reporting(tmp_path: Path) -> None:
    opcua_tags = {
        t["tag"] for t in yaml.safe_load((ROOT / "gateways" / "demo-opcua.yaml").read_text())["gateway"]["tags"]
    }
    port = free_port()
    log = (tmp_path / "demo.log").open("w")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAZMON_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hazmon", "demo", "--port", str(port), "--data-dir", str(tmp_path / "data"),
        "--opcua-port", "0", "--modbus-port", "0",
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:

            async def healthy() -> bool:
                try:
                    return (await client.get("/healthz")).status_code == 200
                except httpx.TransportError:
                    return False

            await _until(healthy, 90, "GET /healthz = 200")

            async def token() -> str | None:
                m = re.search(r"HAZMON_TOKEN=(\S+)", (tmp_path / "demo.log").read_text())
                return m.group(1) if m else None

            headers = {"Authorization": f"Bearer {await _until(token, 10, 'the printed token')}"}

            async def quiet() -> list[str]:
                """OPC UA tags whose newest reading is over 70 s old: quiet, though the server is up."""
                r = await client.get("/api/v1/tags/latest", params={"site": "demo-tank-farm"}, headers=headers)
                now = datetime.now(UTC)
                return [
                    v["tag"]
                    for v in r.json()
                    if v["tag"] in opcua_tags and (now - datetime.fromisoformat(v["time"])).total_seconds() > 70
                ]

            quiet_tags = await _until(quiet, 150, "an OPC UA tag to stay unchanged for 70 s")

            async def subscription_healthy() -> bool:
                r = await client.get("/api/v1/gateways", headers=headers)
                (gw,) = [g for g in r.json() if g["id"] == "demo-opcua"]
                return all(d["connected"] and not d["stale"] for d in gw["devices"])

            async def view_while_healthy() -> dict[str, Any] | None:
                """The compliance view taken while the subscription was healthy before and after it (a
                loaded machine may delay a keep-alive past the gateway's stale limit for a moment)."""
                if not await subscription_healthy():
                    return None
                r = await client.get("/api/v1/compliance", params={"site": "demo-tank-farm"}, headers=headers)
                assert r.status_code == 200, r.text
                return dict(r.json()[0]) if await subscription_healthy() else None

            site = await _until(view_while_healthy, 60, "a compliance view taken while the subscription is healthy")
            assert site["data"]["tags"] == 81
            assert site["data"]["silent"] == 0 and site["data"]["status"] == "ok", (quiet_tags, site["data"])
            for inst in site["installations"]:
                assert inst["data"]["silent"] == 0, inst["id"]
            # the period figures count them as complete while the subscription's device is online
            figures = {t["id"]: t for t in site["period"]["tag_figures"]}
            assert all(figures[t]["by_exception"] and figures[t]["completeness"] == 1.0 for t in quiet_tags)
    finally:
        await _stop(proc)
        log.close()
