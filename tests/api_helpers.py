"""Shared by the API tests: a real runtime on the demo site with its alarm rules, tokens per role,
and readings that raise alarms."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import uvicorn

from hazmon.api import create_app
from hazmon.auth import Role, create_token, revoke_token
from hazmon.config import load_settings
from hazmon.reading import ReadingBatch, now_us
from hazmon.runtime import Runtime, run_runtime

ROOT = Path(__file__).resolve().parents[1]
SITE_FILE = ROOT / "sites" / "demo-tank-farm.yaml"
RULES = sorted((ROOT / "alarm_rules").glob("*.yaml"))
SITE = "demo-tank-farm"
ENTERPRISE = "ecs"


@asynccontextmanager
async def demo_runtime(database_url: str, data_dir: Path, gateways: list[Path] | None = None) -> AsyncIterator[Runtime]:
    settings = load_settings(
        database_url=database_url, data_dir=data_dir, site=SITE_FILE, rules=RULES, gateways=gateways or []
    )
    async with run_runtime(settings) as rt:
        yield rt


@asynccontextmanager
async def demo_api(
    database_url: str, data_dir: Path, *, with_modbus: bool = False
) -> AsyncIterator[tuple[Runtime, Tokens, httpx.AsyncClient]]:
    """The demo runtime, tokens per role, and an HTTP client on its app. ``with_modbus`` adds the demo
    Modbus gateway pointed at a port nobody serves (a device that is down)."""
    gateways = []
    if with_modbus:
        text = (ROOT / "gateways" / "demo-modbus.yaml").read_text(encoding="utf-8")
        gateways.append(data_dir / "modbus.yaml")
        gateways[0].write_text(text.replace("port: 5020", f"port: {free_port()}"), encoding="utf-8")
    async with demo_runtime(database_url, data_dir, gateways=gateways) as rt:
        tokens = await make_tokens(rt)
        transport = httpx.ASGITransport(app=create_app(runtime=rt))
        async with httpx.AsyncClient(transport=transport, base_url="http://hazmon") as client:
            yield rt, tokens, client


def ref(name: str) -> str:
    """A demo-site tag, device or alarm as the engine names it: ``T101.LT`` -> ``demo-tank-farm/T101.LT``,
    ``T101.LT:level.HH`` -> ``demo-tank-farm/T101.LT:level.HH`` (a system alarm ``hazmon.*`` as it is)."""
    return name if "/" in name or name.startswith("hazmon.") else f"{SITE}/{name}"


async def ingest(runtime: Runtime, values: dict[str, float], ts_us: int | None = None) -> None:
    """One batch with these tag values (demo-site tag ids, or site/tag), through the runtime's hot path
    (engine, store, live hub)."""
    ts = now_us() if ts_us is None else ts_us
    keys = np.array([runtime.tags.key(ref(t)) for t in values], dtype=np.int32)
    batch = ReadingBatch.from_columns(keys, np.full(len(keys), ts, dtype=np.int64), np.array(list(values.values())))
    await runtime.ingest(batch)


@dataclass
class Tokens:
    operator: str
    operator_other: str
    engineer: str
    engineer_other: str
    regulator: str
    regulator_other: str
    admin: str
    revoked: str
    spare_id: str  # a token an admin may revoke in tests

    def by_name(self, name: str) -> str | None:
        if name == "none":
            return None
        if name == "bad":
            return "hzm_000000000000_" + "A" * 43
        value: str = getattr(self, name)
        return value


async def make_tokens(runtime: Runtime) -> Tokens:
    async with runtime.db.pool.acquire() as conn:

        async def tok(role: Role, sites: list[str] = [], enterprises: list[str] = [], name: str = "") -> str:  # noqa: B006
            return (await create_token(conn, role, sites=sites, enterprises=enterprises, name=name or None)).secret

        revoked = await tok(Role.OPERATOR, [SITE], name="revoked-operator")
        await revoke_token(conn, revoked.split("_")[1])
        spare = await create_token(conn, Role.OPERATOR, sites=[SITE], name="spare")
        return Tokens(
            operator=await tok(Role.OPERATOR, [SITE], name="alice"),
            operator_other=await tok(Role.OPERATOR, ["other-site"], name="bob"),
            engineer=await tok(Role.ENGINEER, enterprises=[ENTERPRISE], name="erin"),
            engineer_other=await tok(Role.ENGINEER, ["other-site"], name="eve"),
            regulator=await tok(Role.REGULATOR, enterprises=[ENTERPRISE], name="ruth"),
            regulator_other=await tok(Role.REGULATOR, enterprises=["other-enterprise"], name="rob"),
            admin=await tok(Role.ADMIN, name="root"),
            revoked=revoked,
            spare_id=spare.info.id,
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@asynccontextmanager
async def serve(runtime: Runtime) -> AsyncIterator[str]:
    """A real uvicorn serving the runtime on a free loopback port; yields the base URL."""
    port = free_port()
    config = uvicorn.Config(
        create_app(runtime=runtime), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        deadline = asyncio.get_running_loop().time() + 10
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("uvicorn stopped before starting")
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError("uvicorn did not start")
            await asyncio.sleep(0.01)
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
