"""Site-scoped identifiers: two enterprises served by one hazmon both have a `V101.GT1` (the demo plant,
and the same plant built again for another enterprise). Each tag is its own: its own key and readings,
its own alarms (`<site>/<tag>:<condition>`), acknowledged on its own through the API; a token of one
enterprise names its tags by their bare ids, a token that sees both must name the site. A database
written before the change is migrated: tag ids unique per site, alarm ids given their site."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import numpy as np
import pytest
import yaml
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from api_helpers import ROOT, SITE_FILE, serve
from conftest import create_database, drop_database
from hazmon.api import create_app
from hazmon.auth import Role, create_token
from hazmon.config import load_settings
from hazmon.plant.site import load_site, uscc_check_char
from hazmon.reading import ReadingBatch, now_us
from hazmon.runtime import Runtime, run_runtime
from hazmon.storage.migrate import MIGRATIONS_DIR, migrate

DEMO, NORTH = "demo-tank-farm", "north-works"
NORTH_USCC = "91320600MA1XK7Q21" + uscc_check_char("91320600MA1XK7Q21")
RULES = [ROOT / "alarm_rules" / n for n in ("gas-detectors.yaml", "process-defaults.yaml")]
GAS = "V101.GT1"
ALARM = f"{GAS}:gas.HH"


def _twin_site(path: Path) -> Path:
    """The demo plant again, for another enterprise: every tag id the same."""
    doc = load_site(SITE_FILE).model_dump(mode="json", by_alias=True, exclude_none=True)
    doc["enterprise"] = {"id": "ntc", "name": "Nantong Chemicals", "uscc": NORTH_USCC}
    doc["site"] = {**doc["site"], "id": NORTH, "name": "Nantong north works"}
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    return path


async def _ingest(rt: Runtime, values: dict[str, float]) -> None:
    keys = np.array([rt.tags.key(ref) for ref in values], dtype=np.int32)
    ts = np.full(len(keys), now_us(), dtype=np.int64)
    await rt.ingest(ReadingBatch.from_columns(keys, ts, np.array(list(values.values()))))


@pytest.fixture
async def twins(pg_url: str, tmp_path: Path) -> AsyncIterator[tuple[Runtime, dict[str, str], httpx.AsyncClient]]:
    settings = load_settings(
        database_url=pg_url, data_dir=tmp_path / "data", site=SITE_FILE, sites=[_twin_site(tmp_path / "north.yaml")],
        rules=RULES,
    )  # fmt: skip
    async with run_runtime(settings) as rt:
        async with rt.db.pool.acquire() as conn:
            tokens = {
                "demo": (await create_token(conn, Role.OPERATOR, enterprises=["ecs"], name="alice")).secret,
                "north": (await create_token(conn, Role.OPERATOR, enterprises=["ntc"], name="nina")).secret,
                "admin": (await create_token(conn, Role.ADMIN, name="root")).secret,
            }
        transport = httpx.ASGITransport(app=create_app(runtime=rt))
        async with httpx.AsyncClient(transport=transport, base_url="http://hazmon") as client:
            yield rt, tokens, client


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_the_same_tag_id_in_two_sites_is_two_tags_with_their_own_alarms(
    twins: tuple[Runtime, dict[str, str], httpx.AsyncClient],
) -> None:
    rt, tokens, client = twins
    demo_ref, north_ref = f"{DEMO}/{GAS}", f"{NORTH}/{GAS}"
    assert rt.tags.key(demo_ref) != rt.tags.key(north_ref)
    async with rt.db.pool.acquire() as conn:
        rows = await conn.fetch("SELECT site_id, key FROM tags WHERE id = $1 ORDER BY site_id", GAS)
    assert [r["site_id"] for r in rows] == [DEMO, NORTH] and rows[0]["key"] != rows[1]["key"]

    await _ingest(rt, {north_ref: 62.0, demo_ref: 1.0})  # a leak at the north works only
    assert rt.engine is not None
    assert rt.engine.get(f"{NORTH}/{ALARM}").active and not rt.engine.get(f"{DEMO}/{ALARM}").active

    # each enterprise sees its own: the north works' leak, named by its site, its tag by its own id
    r = await client.get("/api/v1/alarms", headers=_auth(tokens["north"]))
    mine = [a for a in r.json() if a["tag"] == GAS and a["condition"] == "gas.HH"]
    assert [(a["alarm_id"], a["site"]) for a in mine] == [(f"{NORTH}/{ALARM}", NORTH)]
    r = await client.get("/api/v1/alarms", headers=_auth(tokens["demo"]))
    assert not [a for a in r.json() if a["tag"] == GAS and a["condition"] == "gas.HH"]

    # a token of one enterprise names the alarm by its bare id; the other enterprise's is out of reach
    r = await client.get(f"/api/v1/alarms/{ALARM}", headers=_auth(tokens["north"]))
    assert r.status_code == 200 and r.json()["alarm_id"] == f"{NORTH}/{ALARM}", r.text
    r = await client.post(f"/api/v1/alarms/{NORTH}/{ALARM}/ack", headers=_auth(tokens["demo"]), json={})
    assert r.status_code == 403, r.text

    # an admin sees both sites: the bare id is ambiguous, the site-scoped one acknowledges that alarm only
    r = await client.get(f"/api/v1/alarms/{ALARM}", headers=_auth(tokens["admin"]))
    assert r.status_code == 422 and NORTH in r.json()["detail"] and DEMO in r.json()["detail"], r.text
    r = await client.post(f"/api/v1/alarms/{NORTH}/{ALARM}/ack", headers=_auth(tokens["admin"]), json={})
    assert r.status_code == 200 and r.json()["alarm"]["state"] == "active_ack", r.text
    assert r.json()["alarm"]["site"] == NORTH and r.json()["alarm"]["tag"] == GAS
    assert rt.engine.get(f"{NORTH}/{ALARM}").acked

    # the bulk acknowledge keys its answer by the ids as given
    await _ingest(rt, {demo_ref: 62.0})
    r = await client.post("/api/v1/alarms/ack", headers=_auth(tokens["demo"]), json={"ids": [ALARM]})
    assert r.json()["results"][ALARM]["status"] == 200, r.text
    assert rt.engine.get(f"{DEMO}/{ALARM}").acked

    # the journal keeps the tag's own id beside its site, and the alarm's site-scoped id
    await rt.flush_journal()
    r = await client.get("/api/v1/alarms/history", params={"site": NORTH}, headers=_auth(tokens["admin"]))
    events = r.json()["events"]
    assert events and {(e["site"], e["tag"]) for e in events if e["tag"] == GAS} == {(NORTH, GAS)}
    assert f"{NORTH}/{ALARM}" in {e["alarm_id"] for e in events}
    assert all(e["alarm_id"].startswith(f"{NORTH}/") for e in events if e["tag"] == GAS)


async def test_series_and_latest_values_name_the_site(twins: tuple[Runtime, dict[str, str], httpx.AsyncClient]) -> None:
    rt, tokens, client = twins
    await _ingest(rt, {f"{DEMO}/{GAS}": 3.0, f"{NORTH}/{GAS}": 7.0})
    assert rt.forwarder is not None
    await rt.forwarder.flush(10)
    start = datetime(2000, 1, 1, tzinfo=UTC).isoformat()

    r = await client.get(f"/api/v1/tags/{NORTH}/{GAS}/series", params={"start": start}, headers=_auth(tokens["admin"]))
    assert r.status_code == 200, r.text
    assert (r.json()["site"], r.json()["tag"]) == (NORTH, GAS) and [p[1] for p in r.json()["points"]] == [7.0]
    r = await client.get(f"/api/v1/tags/{GAS}/series", params={"start": start}, headers=_auth(tokens["demo"]))
    assert r.status_code == 200 and [p[1] for p in r.json()["points"]] == [3.0], r.text
    r = await client.get(f"/api/v1/tags/{GAS}/series", headers=_auth(tokens["admin"]))
    assert r.status_code == 422, r.text

    r = await client.get("/api/v1/tags/latest", params={"tag": GAS}, headers=_auth(tokens["north"]))
    assert [(v["site"], v["tag"], v["value"]) for v in r.json()] == [(NORTH, GAS, 7.0)], r.text
    r = await client.get(
        "/api/v1/tags/latest", params={"tag": [f"{DEMO}/{GAS}", f"{NORTH}/{GAS}"]}, headers=_auth(tokens["admin"])
    )
    assert sorted((v["site"], v["value"]) for v in r.json()) == [(DEMO, 3.0), (NORTH, 7.0)], r.text
    r = await client.get("/api/v1/tags/latest", params={"tag": GAS}, headers=_auth(tokens["admin"]))
    assert r.status_code == 422, r.text

    r = await client.get(
        f"/api/v1/tags/{NORTH}/{GAS}/export", params={"start": start, "format": "json"}, headers=_auth(tokens["north"])
    )
    assert r.status_code == 200 and r.json()["site"] == NORTH and [p[1] for p in r.json()["points"]] == [7.0]


async def test_a_websocket_follows_one_sites_tag_by_its_reference(
    twins: tuple[Runtime, dict[str, str], httpx.AsyncClient],
) -> None:
    rt, tokens, _ = twins
    async with serve(rt) as address:
        async with connect(f"ws://{address}/api/v1/live?token={tokens['admin']}") as ws:
            await ws.send(json.dumps({"type": "subscribe", "tags": [f"{NORTH}/{GAS}"]}))
            snap = json.loads(await ws.recv())
            assert snap["type"] == "snapshot" and snap["tags"] == [f"{NORTH}/{GAS}"], snap
            await _ingest(rt, {f"{DEMO}/{GAS}": 62.0, f"{NORTH}/{GAS}": 63.0})
            seen: list[dict[str, Any]] = []
            while not any(m["type"] == "events" for m in seen) or not any(m["type"] == "values" for m in seen):
                seen.append(json.loads(await ws.recv()))
            events = [e for m in seen if m["type"] == "events" for e in m["events"]]
            values = [v for m in seen if m["type"] == "values" for v in m["values"]]
            assert events and {(e["site"], e["tag"]) for e in events} == {(NORTH, GAS)}
            assert {e["alarm_id"].split(":")[0] for e in events} == {f"{NORTH}/{GAS}"}
            assert [(v["site"], v["tag"], v["value"]) for v in values] == [(NORTH, GAS, 63.0)]
        async with connect(f"ws://{address}/api/v1/live?token={tokens['admin']}") as ws:
            await ws.send(json.dumps({"type": "subscribe", "tags": [GAS]}))  # in both sites the admin sees
            error = json.loads(await ws.recv())  # an error message, then the connection is closed
            assert error["type"] == "error" and error["code"] == 4400 and "ambiguous" in error["detail"], error
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 4400


async def test_a_database_of_before_is_migrated_to_site_scoped_ids(pg_admin_url: str, tmp_path: Path) -> None:
    older = tmp_path / "migrations"
    older.mkdir()
    for f in sorted(MIGRATIONS_DIR.glob("*.sql")):
        if int(f.name[:3]) < 80:
            shutil.copy(f, older / f.name)
    url = await create_database(pg_admin_url, migrated=False)
    try:
        conn = await asyncpg.connect(url)
        try:
            await migrate(conn, older)
            await conn.execute("INSERT INTO enterprises (id, name, uscc) VALUES ('ecs', 'E', '91320500MA1XK7Q211')")
            await conn.execute("INSERT INTO sites (id, enterprise_id, name, doc) VALUES ($1, 'ecs', 'S', '{}')", DEMO)
            await conn.execute(
                "INSERT INTO tags (id, site_id, equipment_id, name, kind, period_s, doc) "
                "VALUES ($1, $2, 'V101', 'gas', 'gas', 1, '{}')",
                GAS,
                DEMO,
            )
            for aid, tag, site in (
                (ALARM, GAS, DEMO),
                ("plc.dev:comm.LOSS", None, DEMO),
                ("hazmon.storage:comm.LOSS", None, DEMO),
            ):
                await conn.execute(
                    "INSERT INTO alarm_journal (ts, alarm_id, tag_id, site_id, condition, priority, action, "
                    "prev_state, new_state) VALUES (now(), $1, $2, $3, $4, 'critical', 'activate', 'normal', "
                    "'active_unack')",
                    aid, tag, site, aid.rpartition(":")[2],
                )  # fmt: skip
                await conn.execute(
                    "INSERT INTO alarm_state (alarm_id, tag_id, site_id, condition, priority, state, active, acked, "
                    "since) VALUES ($1, $2, $3, $4, 'critical', 'active_unack', true, false, now())",
                    aid, tag, site, aid.rpartition(":")[2],
                )  # fmt: skip
            applied = await migrate(conn)
            assert [m.version for m in applied] == [80]
            ids = {r["alarm_id"] for r in await conn.fetch("SELECT alarm_id FROM alarm_state")}
            assert ids == {f"{DEMO}/{ALARM}", f"{DEMO}/plc.dev:comm.LOSS", "hazmon.storage:comm.LOSS"}
            journal = {r["alarm_id"] for r in await conn.fetch("SELECT alarm_id FROM alarm_journal")}
            assert journal == ids
            # the journal is append-only again after the migration
            with pytest.raises(asyncpg.PostgresError, match="append-only"):
                await conn.execute("UPDATE alarm_journal SET comment = 'x'")
            # the same tag id in another site is now allowed; twice in one site is not
            await conn.execute("INSERT INTO enterprises (id, name, uscc) VALUES ('ntc', 'N', $1)", NORTH_USCC)
            await conn.execute("INSERT INTO sites (id, enterprise_id, name, doc) VALUES ($1, 'ntc', 'N', '{}')", NORTH)
            insert = (
                "INSERT INTO tags (id, site_id, equipment_id, name, kind, period_s, doc) "
                "VALUES ($1, $2, 'V101', 'gas', 'gas', 1, '{}')"
            )
            await conn.execute(insert, GAS, NORTH)
            with pytest.raises(asyncpg.UniqueViolationError):
                await conn.execute(insert, GAS, DEMO)
        finally:
            await conn.close()
    finally:
        await drop_database(pg_admin_url, url)
