"""Region-scoped regulator tokens: `hazmon token create --role regulator --region 3205` covers every enterprise
whose USCC's administrative-division code (characters 3-8) starts with 3205. Two enterprises in different
divisions (the demo's in 320500, Suzhou; another in 320600, Nantong) served by one hazmon: a Suzhou token sees
only the demo enterprise in every scoped endpoint, a Jiangsu token (32) sees both and gets one compliance
summary across them, and an enterprise registered after the token was made is covered at once."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from api_helpers import ROOT, SITE_FILE, ingest
from hazmon.api import create_app
from hazmon.auth import AuthError, Role, create_token
from hazmon.config import load_settings
from hazmon.plant.site import load_site, uscc_check_char
from hazmon.runtime import Runtime, run_runtime

DEMO_SITE, DEMO_ENT = "demo-tank-farm", "ecs"  # USCC 91320500MA1XK7Q211: division 320500
NORTH_SITE, NORTH_ENT = "north-works", "ntc"
NORTH_USCC = "91320600MA1XK7Q21" + uscc_check_char("91320600MA1XK7Q21")  # division 320600
PRESETS = [ROOT / "alarm_rules" / n for n in ("gas-detectors.yaml", "process-defaults.yaml")]


def _north_site(path: Path) -> Path:
    """The demo plant as another enterprise's site in another division, its tags under the same ids."""
    doc = load_site(SITE_FILE).model_dump(mode="json", by_alias=True, exclude_none=True)
    doc["enterprise"] = {"id": NORTH_ENT, "name": "Nantong Chemicals", "uscc": NORTH_USCC}
    doc["site"] = {**doc["site"], "id": NORTH_SITE, "name": "Nantong north works"}
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    return path


@pytest.fixture
async def two_enterprises(pg_url: str, tmp_path: Path) -> AsyncIterator[tuple[Runtime, httpx.AsyncClient]]:
    settings = load_settings(
        database_url=pg_url, data_dir=tmp_path / "data", site=SITE_FILE, sites=[_north_site(tmp_path / "north.yaml")],
        rules=PRESETS,
    )  # fmt: skip
    async with run_runtime(settings) as rt:
        transport = httpx.ASGITransport(app=create_app(runtime=rt))
        async with httpx.AsyncClient(transport=transport, base_url="http://hazmon") as client:
            yield rt, client


def _cli_token(pg_url: str, tmp_path: Path, *args: str) -> tuple[int, str, str]:
    import subprocess

    env = {**os.environ, "HAZMON_DATABASE_URL": pg_url, "HAZMON_DATA_DIR": str(tmp_path / "cli")}
    p = subprocess.run(
        [sys.executable, "-m", "hazmon", "token", "create", *args], env=env, capture_output=True, text=True, timeout=60
    )
    return p.returncode, p.stdout.strip(), p.stderr


async def test_a_region_token_sees_the_enterprises_of_its_division_in_every_scoped_endpoint(
    pg_url: str, tmp_path: Path, two_enterprises: tuple[Runtime, httpx.AsyncClient]
) -> None:
    rt, client = two_enterprises
    assert {s.id for s in rt.sites} == {DEMO_SITE, NORTH_SITE}
    code, suzhou, err = await asyncio.to_thread(
        _cli_token, pg_url, tmp_path, "--role", "regulator", "--region", "3205", "--name", "suzhou-bureau"
    )
    assert code == 0, err
    assert "region 3205" in err
    async with rt.db.pool.acquire() as conn:
        jiangsu = (await create_token(conn, Role.REGULATOR, regions=["32"], name="jiangsu")).secret
        nantong = (await create_token(conn, Role.REGULATOR, regions=["320600"], name="nantong")).secret
        admin = (await create_token(conn, Role.ADMIN, name="root")).secret
        row = await conn.fetchrow("SELECT id, regions FROM api_tokens WHERE name = 'suzhou-bureau'")
        assert list(row["regions"]) == ["3205"]
        detail = await conn.fetchval(
            "SELECT detail FROM audit_log WHERE action = 'token.create' AND target = $1", row["id"]
        )
        assert json.loads(detail)["regions"] == ["3205"], "the token's region is in the audit trail"
    await ingest(
        rt,
        {
            f"{DEMO_SITE}/V101.LT": 8.5,
            f"{DEMO_SITE}/V101.GT1": 30.0,
            f"{NORTH_SITE}/V101.LT": 7.0,
            f"{NORTH_SITE}/V101.GT1": 35.0,
        },
    )
    for site in (DEMO_SITE, NORTH_SITE):
        finding = {
            "site": site, "description": f"corroded flange at {site}", "grade": "major",
            "found_by": "self-check", "deadline": "2026-12-31",
        }  # fmt: skip
        r = await client.post("/api/v1/hazards/findings", json=finding, headers=_auth(admin))
        assert r.status_code == 201, r.text

    async def get(token: str, path: str, **params: Any) -> Any:
        r = await client.get(path, params=params, headers=_auth(token))
        assert r.status_code == 200, (path, r.status_code, r.text)
        return r.json()

    expected = {suzhou: {DEMO_SITE}, nantong: {NORTH_SITE}, jiangsu: {DEMO_SITE, NORTH_SITE}}
    for token, sites in expected.items():
        assert {s["id"] for s in await get(token, "/api/v1/sites")} == sites
        assert {i["site"] for i in await get(token, "/api/v1/installations")} == sites
        assert {f["site"] for f in await get(token, "/api/v1/hazards/findings")} == sites
        summary = await get(token, "/api/v1/hazards/findings/summary")
        assert {s["enterprise"] for s in summary} == {{DEMO_SITE: DEMO_ENT, NORTH_SITE: NORTH_ENT}[s] for s in sites}, (
            summary
        )
        compliance = await get(token, "/api/v1/compliance", **{"from": "1h"})
        assert {c["site"] for c in compliance} == sites

    # the province's token: one compliance summary across both enterprises, each with data arriving
    compliance = await get(jiangsu, "/api/v1/compliance", **{"from": "1h"})
    assert {c["enterprise"]["id"] for c in compliance} == {DEMO_ENT, NORTH_ENT}
    # outside its region: refused, not an empty answer
    for path in ("/api/v1/compliance", "/api/v1/alarms/history"):
        r = await client.get(path, params={"site": NORTH_SITE}, headers=_auth(suzhou))
        assert r.status_code == 403, (path, r.text)
    r = await client.get("/api/v1/compliance", params={"enterprise": NORTH_ENT}, headers=_auth(suzhou))
    assert r.status_code == 403
    # alarms: each region sees its own enterprise's gas alarm, named by its site
    for token, sites in expected.items():
        alarms = await get(token, "/api/v1/alarms")
        assert {a["alarm_id"] for a in alarms} == {f"{s}/V101.GT1:gas.H" for s in sites}
        assert {(a["site"], a["tag"], a["value"]) for a in alarms} == {
            {DEMO_SITE: (DEMO_SITE, "V101.GT1", 30.0), NORTH_SITE: (NORTH_SITE, "V101.GT1", 35.0)}[s] for s in sites
        }
    # a token of one of the two sites may name the alarm by its bare id; the province's token names the site
    for token, site in ((suzhou, DEMO_SITE), (nantong, NORTH_SITE)):
        one = await get(token, "/api/v1/alarms/V101.GT1:gas.H")
        assert (one["alarm_id"], one["site"]) == (f"{site}/V101.GT1:gas.H", site)
        latest = await get(token, "/api/v1/tags/latest", tag="V101.LT")
        assert [(v["site"], v["tag"]) for v in latest] == [(site, "V101.LT")]
    r = await client.get("/api/v1/alarms/V101.GT1:gas.H", headers=_auth(jiangsu))
    assert r.status_code == 422 and DEMO_SITE in r.json()["detail"] and NORTH_SITE in r.json()["detail"], r.text
    r = await client.get("/api/v1/tags/latest", params={"tag": "V101.LT"}, headers=_auth(jiangsu))
    assert r.status_code == 422, r.text
    for site, value in ((DEMO_SITE, 30.0), (NORTH_SITE, 35.0)):
        one = await get(jiangsu, f"/api/v1/alarms/{site}/V101.GT1:gas.H")
        assert (one["site"], one["tag"], one["value"]) == (site, "V101.GT1", value)
    r = await client.get(f"/api/v1/alarms/{NORTH_SITE}/V101.GT1:gas.H", headers=_auth(suzhou))
    assert r.status_code == 403, r.text

    # an enterprise registered after the token was made is in scope at once (resolved at each use)
    later = load_site(tmp_path / "north.yaml").model_dump(mode="json", by_alias=True, exclude_none=True)
    later["enterprise"] = {
        "id": "wx",
        "name": "Wuxi Storage",
        "uscc": "91320200MA1XK7Q21" + uscc_check_char("91320200MA1XK7Q21"),
    }
    later["site"] = {**later["site"], "id": "wuxi-depot", "name": "Wuxi depot"}
    r = await client.put("/api/v1/sites/wuxi-depot", json=later, headers=_auth(admin))
    assert r.status_code == 200, r.text

    async def in_scope() -> bool:
        return "wuxi-depot" in {s["id"] for s in await get(jiangsu, "/api/v1/sites")}

    deadline = asyncio.get_running_loop().time() + 10  # the token cache answers for up to TOKEN_TTL_S
    while not await in_scope():
        assert asyncio.get_running_loop().time() < deadline, "a newly registered enterprise stayed out of scope"
        await asyncio.sleep(0.2)
    assert "wuxi-depot" not in {s["id"] for s in await get(suzhou, "/api/v1/sites")}


async def test_regions_are_division_codes_and_for_regulators(pg_url: str, tmp_path: Path) -> None:
    code, out, err = await asyncio.to_thread(_cli_token, pg_url, tmp_path, "--role", "regulator", "--region", "32A5")
    assert code == 2 and out == "" and "administrative-division code prefix" in err, err
    code, out, err = await asyncio.to_thread(_cli_token, pg_url, tmp_path, "--role", "operator", "--region", "3205")
    assert code == 2 and "--region is for regulator tokens" in err, err
    import asyncpg

    conn = await asyncpg.connect(pg_url)
    try:
        with pytest.raises(AuthError, match="2 to 6 digits"):
            await create_token(conn, Role.REGULATOR, regions=["3"])
        assert await conn.fetchval("SELECT count(*) FROM api_tokens") == 0, "a refused token was stored"
        # the database refuses a malformed region even past the Python check
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                "INSERT INTO api_tokens (id, name, role, regions, secret_sha256, created_by) "
                "VALUES ('abcdef012345', 'x', 'regulator', '{32x}', '\\x00', 'test')"
            )
    finally:
        await conn.close()


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
