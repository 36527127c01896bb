"""Operator actions through the API on a real runtime: each changes the engine, is journaled with
the user, and is appended to the audit trail; filters, history paging, KPIs, export, gateways."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from api_helpers import SITE, Tokens, demo_api, ingest, ref
from hazmon.reading import US_PER_S, now_us
from hazmon.runtime import Runtime

ROOT = Path(__file__).resolve().parents[1]
# alarms by their site-scoped ids, as the API names them
GAS_H = ref("V101.GT1:gas.H")  # combustible gas >= 25 %LEL: high, latching, no on-delay
GAS_HH = ref("V102.GT1:gas.HH")  # >= 50 %LEL: critical
NH3_H = ref("T201.AT1:gas.H")  # ammonia >= 20 mg/m³, installation HI-02


def bare(alarm_id: str) -> str:
    """The short form a token of one site may use: ``V101.GT1:gas.H``."""
    return alarm_id.split("/", 1)[1]


@pytest.fixture
async def env(pg_url: str, tmp_path: Path) -> AsyncIterator[tuple[Runtime, Tokens, httpx.AsyncClient]]:
    async with demo_api(pg_url, tmp_path, with_modbus=True) as (rt, tokens, client):
        await ingest(rt, {"V101.GT1": 30.0, "V102.GT1": 55.0, "T201.AT1": 25.0})
        await rt.flush_journal()
        yield rt, tokens, client


def _h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_current_alarms_and_filters(env: tuple[Runtime, Tokens, httpx.AsyncClient]) -> None:
    _, tokens, c = env
    h = _h(tokens.regulator)
    alarms = (await c.get("/api/v1/alarms", headers=h)).json()
    ids = {a["alarm_id"] for a in alarms}
    assert {GAS_H, GAS_HH, NH3_H} <= ids
    first = next(a for a in alarms if a["alarm_id"] == GAS_H)
    assert first["state"] == "active_unack" and first["priority"] == "high"
    assert (first["tag"], first["condition"]) == ("V101.GT1", "gas.H")
    assert (first["site"], first["installation"], first["equipment"]) == (SITE, "HI-01", "V101")
    assert first["value"] == 30.0 and first["limit"] == 25.0

    async def ids_for(**params: str | list[str]) -> set[str]:
        r = await c.get("/api/v1/alarms", headers=h, params=params)
        assert r.status_code == 200, r.text
        return {a["alarm_id"] for a in r.json()}

    assert NH3_H in await ids_for(installation="HI-02")
    assert GAS_H not in await ids_for(installation="HI-02")
    assert {a for a in await ids_for(equipment="V102")} >= {GAS_HH, ref("V102.GT1:gas.H")}
    assert await ids_for(priority="critical") >= {GAS_HH}
    assert GAS_H not in await ids_for(priority="critical")
    assert GAS_H in await ids_for(priority=["critical", "high"])
    assert await ids_for(state="active_ack") == set()
    bad = await c.get("/api/v1/alarms", headers=h, params={"state": "panicking"})
    assert bad.status_code == 422


async def test_acknowledge_is_journaled_with_the_user_and_audited(
    env: tuple[Runtime, Tokens, httpx.AsyncClient],
) -> None:
    _rt, tokens, c = env
    r = await c.post(f"/api/v1/alarms/{GAS_H}/ack", headers=_h(tokens.operator), json={"comment": "on my way"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["alarm"]["state"] == "active_ack"
    assert body["events"][0]["user"] == "alice" and body["events"][0]["action"] == "acknowledge"
    again = await c.post(f"/api/v1/alarms/{GAS_H}/ack", headers=_h(tokens.operator))
    assert again.status_code == 409 and "acknowledged" in again.json()["detail"]
    hist = (await c.get("/api/v1/alarms/history", headers=_h(tokens.regulator), params={"limit": 100})).json()
    acks = [e for e in hist["events"] if e["action"] == "acknowledge"]
    assert acks and acks[0]["alarm_id"] == GAS_H and acks[0]["user"] == "alice" and acks[0]["comment"] == "on my way"
    assert (acks[0]["site"], acks[0]["tag"]) == (SITE, "V101.GT1")
    trail = (await c.get("/api/v1/audit", headers=_h(tokens.admin))).json()
    entry = next(e for e in trail if e["action"] == "alarm.acknowledge")
    assert (entry["actor"], entry["role"], entry["target"], entry["site"]) == ("alice", "operator", GAS_H, SITE)
    assert entry["detail"] == {"comment": "on my way", "from": "active_unack", "to": "active_ack"}


async def test_latched_alarm_resets_once_the_gas_is_gone(env: tuple[Runtime, Tokens, httpx.AsyncClient]) -> None:
    rt, tokens, c = env
    h = _h(tokens.operator)
    early = await c.post(f"/api/v1/alarms/{GAS_H}/reset", headers=h)
    assert early.status_code == 409 and "still present" in early.json()["detail"]
    await ingest(rt, {"V101.GT1": 2.0})
    r = await c.post(f"/api/v1/alarms/{GAS_H}/reset", headers=h, json={"comment": "area checked"})
    assert r.status_code == 200, r.text
    assert r.json()["alarm"]["state"] in ("rtn_unack", "normal")


async def test_shelve_needs_a_reason_and_respects_the_maximum(env: tuple[Runtime, Tokens, httpx.AsyncClient]) -> None:
    _rt, tokens, c = env
    h = _h(tokens.operator)
    url = f"/api/v1/alarms/{GAS_HH}/shelve"
    assert (await c.post(url, headers=h, json={"duration_s": 600})).status_code == 422
    assert (await c.post(url, headers=h, json={"duration_s": 600, "reason": ""})).status_code == 422
    too_long = await c.post(url, headers=h, json={"duration_s": 9 * 3600, "reason": "detector recalibration"})
    assert too_long.status_code == 422 and "at most" in too_long.json()["detail"]
    # another site's operator is refused for the scope, whatever the duration, and leaves no trace here
    for duration_s in (600, 9 * 3600):
        body = {"duration_s": duration_s, "reason": "not my site"}
        r = await c.post(url, headers=_h(tokens.operator_other), json=body)
        assert r.status_code == 403 and "scope" in r.json()["detail"], r.text
    trail = (await c.get("/api/v1/audit", headers=_h(tokens.admin), params={"site": SITE})).json()
    assert [e["actor"] for e in trail if e["action"] == "alarm.shelve.refused"] == ["alice"]
    r = await c.post(url, headers=h, json={"duration_s": 600, "reason": "detector recalibration"})
    assert r.status_code == 200, r.text
    alarm = r.json()["alarm"]
    assert alarm["state"] == "shelved"
    assert alarm["shelved_until_us"] == pytest.approx(now_us() + 600 * US_PER_S, abs=5 * US_PER_S)
    shelved = (await c.get("/api/v1/alarms", headers=h, params={"state": "shelved"})).json()
    assert [a["alarm_id"] for a in shelved] == [GAS_HH]
    r = await c.post(f"/api/v1/alarms/{GAS_HH}/unshelve", headers=h, json={"comment": "recalibrated"})
    assert r.status_code == 200 and r.json()["alarm"]["state"] != "shelved"
    assert (await c.post(f"/api/v1/alarms/{GAS_HH}/unshelve", headers=h)).status_code == 409


async def test_out_of_service_comment_and_return(env: tuple[Runtime, Tokens, httpx.AsyncClient]) -> None:
    _rt, tokens, c = env
    h = _h(tokens.operator)
    assert (await c.post(f"/api/v1/alarms/{NH3_H}/out-of-service", headers=h, json={})).status_code == 422
    r = await c.post(f"/api/v1/alarms/{NH3_H}/out-of-service", headers=h, json={"reason": "detector replaced"})
    assert r.status_code == 200 and r.json()["alarm"]["state"] == "out_of_service"
    r = await c.post(f"/api/v1/alarms/{NH3_H}/comment", headers=h, json={"text": "new detector fitted"})
    assert r.status_code == 200 and r.json()["events"][0]["comment"] == "new detector fitted"
    r = await c.post(f"/api/v1/alarms/{NH3_H}/return-to-service", headers=h)
    assert r.status_code == 200 and r.json()["alarm"]["state"] != "out_of_service"
    one = (await c.get(f"/api/v1/alarms/{NH3_H}", headers=h)).json()
    assert one["state"] == r.json()["alarm"]["state"]
    actions = [e["action"] for e in (await c.get("/api/v1/audit", headers=_h(tokens.admin))).json()]
    assert actions[:3] == ["alarm.return_to_service", "alarm.comment", "alarm.remove_from_service"]


async def test_bulk_ack_reports_each_alarm(env: tuple[Runtime, Tokens, httpx.AsyncClient]) -> None:
    rt, tokens, c = env
    outside = await c.post("/api/v1/alarms/ack", headers=_h(tokens.operator_other), json={"ids": [GAS_H, GAS_HH]})
    assert outside.status_code == 403  # the whole request: nothing acknowledged
    assert rt.engine is not None and not rt.engine.get(GAS_H).acked and not rt.engine.get(GAS_HH).acked
    # each id is answered as given: site-scoped, or bare (the token sees one site)
    ids = [GAS_HH, bare(NH3_H), "NOPE.X:gas.H"]
    r = await c.post("/api/v1/alarms/ack", headers=_h(tokens.operator), json={"ids": ids, "comment": "shift start"})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert set(results) == set(ids)
    assert results[GAS_HH]["status"] == 200 and results[GAS_HH]["state"] == "active_ack"
    assert results[bare(NH3_H)]["status"] == 200
    assert results["NOPE.X:gas.H"]["status"] == 404
    assert r.json()["acknowledged"] == 2
    assert rt.engine.get(GAS_HH).acked and rt.engine.get(NH3_H).acked and not rt.engine.get(GAS_H).acked


async def test_unknown_alarm_is_404(env: tuple[Runtime, Tokens, httpx.AsyncClient]) -> None:
    _, tokens, c = env
    r = await c.post("/api/v1/alarms/NOPE.X:level.HH/ack", headers=_h(tokens.operator))
    assert r.status_code == 404 and "NOPE.X" in r.json()["detail"]


async def test_history_pages_and_time_range(env: tuple[Runtime, Tokens, httpx.AsyncClient]) -> None:
    _rt, tokens, c = env
    h = _h(tokens.regulator)
    full = (await c.get("/api/v1/alarms/history", headers=h, params={"limit": 1000})).json()
    n = len(full["events"])
    assert n >= 4 and full["next_offset"] is None
    page1 = (await c.get("/api/v1/alarms/history", headers=h, params={"limit": 2})).json()
    page2 = (await c.get("/api/v1/alarms/history", headers=h, params={"limit": 2, "offset": 2})).json()
    assert page1["next_offset"] == 2
    assert page1["events"] + page2["events"] == full["events"][:4]
    times = [e["ts_us"] for e in full["events"]]
    assert times == sorted(times, reverse=True)  # newest first
    past = datetime.now(UTC) - timedelta(days=3)
    old = await c.get(
        "/api/v1/alarms/history",
        headers=h,
        params={"start": past.isoformat(), "end": (past + timedelta(hours=1)).isoformat()},
    )
    assert old.status_code == 200 and old.json()["events"] == []
    multi = await c.get("/api/v1/alarms/history", headers=_h(tokens.admin), params={"start": "tomorrow"})
    assert multi.status_code == 422


async def test_kpis_are_served(env: tuple[Runtime, Tokens, httpx.AsyncClient]) -> None:
    _, tokens, c = env
    r = await c.get("/api/v1/alarms/kpi", headers=_h(tokens.regulator), params={"site": SITE, "since": "1d"})
    assert r.status_code == 200, r.text
    k = r.json()
    assert k["site"] == SITE and k["alarms"] >= 4
    assert k["priority_mix"]["critical"]["count"] >= 1
    bad = await c.get("/api/v1/alarms/kpi", headers=_h(tokens.regulator), params={"since": "a while"})
    assert bad.status_code == 422


async def test_export_csv_and_json(env: tuple[Runtime, Tokens, httpx.AsyncClient]) -> None:
    rt, tokens, c = env
    t0 = now_us() - 3600 * US_PER_S
    for i in range(25):
        await ingest(rt, {"V101.LT": 5.0 + i / 10}, ts_us=t0 + i * US_PER_S)
    assert rt.forwarder is not None
    await rt.forwarder.flush(10)
    start = datetime.fromtimestamp(t0 / US_PER_S, UTC)
    params = {"start": start.isoformat(), "end": (start + timedelta(seconds=20)).isoformat()}
    url = f"/api/v1/tags/{SITE}/V101.LT/export"
    r = await c.get(url, headers=_h(tokens.regulator), params={**params, "format": "csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert len(rows) == 20  # [start, end)
    assert float(rows[0]["value"]) == 5.0 and rows[0]["time"].endswith("Z") and rows[0]["quality"] == "0"
    assert f'filename="{SITE}_V101.LT_' in r.headers["content-disposition"]
    # by its bare id: the regulator's enterprise has one site
    j = (
        await c.get("/api/v1/tags/V101.LT/export", headers=_h(tokens.regulator), params={**params, "format": "json"})
    ).json()
    assert (j["site"], j["tag"]) == (SITE, "V101.LT") and j["columns"] == ["time", "value", "quality"]
    assert [p[1] for p in j["points"]] == [float(r["value"]) for r in rows]
    assert (await c.get("/api/v1/tags/NOPE/export", headers=_h(tokens.regulator))).status_code == 404


async def test_export_pages_through_many_rows(env: tuple[Runtime, Tokens, httpx.AsyncClient]) -> None:
    from hazmon.api.routes import export

    rt, tokens, c = env
    old_chunk, export.CHUNK = export.CHUNK, 7
    try:
        t0 = now_us() - 7200 * US_PER_S
        for i in range(30):
            # half a second apart (a tag has one reading per time: migrations/040), 7 rows per page
            await ingest(rt, {"V102.LT": float(i)}, ts_us=t0 + i * US_PER_S // 2)
        assert rt.forwarder is not None
        await rt.forwarder.flush(10)
        start = datetime.fromtimestamp(t0 / US_PER_S, UTC)
        params = {"start": start.isoformat(), "end": (start + timedelta(minutes=1)).isoformat(), "format": "json"}
        j = (await c.get("/api/v1/tags/V102.LT/export", headers=_h(tokens.regulator), params=params)).json()
        assert sorted(p[1] for p in j["points"]) == [float(i) for i in range(30)]
    finally:
        export.CHUNK = old_chunk


async def test_gateways_report_each_device(env: tuple[Runtime, Tokens, httpx.AsyncClient]) -> None:
    _, tokens, c = env
    h = _h(tokens.regulator)
    gws = (await c.get("/api/v1/gateways", headers=h)).json()
    assert [g["id"] for g in gws] == ["demo-modbus"]
    g = gws[0]
    assert g["protocol"] == "modbus" and g["site"] == SITE
    assert {d["id"] for d in g["devices"]} == {"PLC-NH3", "PLC-MEOH"}
    assert g["connected"] is False  # nothing listens on its port
    assert all(d["connected"] is False for d in g["devices"])
    assert (await c.get("/api/v1/gateways", headers=_h(tokens.regulator_other))).json() == []


CONTROL = ["valve\x00closed", "bell\x07", "cr\rlf", "esc\x1b[31m", "del\x7f", "c1\x85", "half\ud800"]


@pytest.mark.parametrize("bad", CONTROL)
async def test_operator_text_with_control_characters_is_refused(
    env: tuple[Runtime, Tokens, httpx.AsyncClient], bad: str
) -> None:
    rt, tokens, c = env
    h = _h(tokens.operator)
    before = rt.engine.get(GAS_H).state if rt.engine else None
    for url, body in [
        (f"/api/v1/alarms/{GAS_H}/ack", {"comment": bad}),
        (f"/api/v1/alarms/{GAS_H}/comment", {"text": bad}),
        (f"/api/v1/alarms/{GAS_H}/shelve", {"reason": bad, "duration_s": 60}),
        (f"/api/v1/alarms/{GAS_H}/out-of-service", {"reason": bad}),
        ("/api/v1/alarms/ack", {"ids": [GAS_H], "comment": bad}),
    ]:
        # as JSON escapes (\u0000, \ud800): what a client sends on the wire
        r = await c.post(url, headers={**h, "Content-Type": "application/json"}, content=json.dumps(body))
        assert r.status_code == 422, (url, r.text)
        assert "control character" in r.text or "unicode" in r.text
    assert rt.engine is not None and rt.engine.get(GAS_H).state == before  # nothing applied
    # newline and tab are fine, and reach the journal and the audit trail as written
    r = await c.post(f"/api/v1/alarms/{GAS_H}/ack", headers=h, json={"comment": "line 1\n\tline 2 — 已通知"})
    assert r.status_code == 200 and r.json()["record"] == "journaled"
    hist = (await c.get("/api/v1/alarms/history", headers=_h(tokens.regulator))).json()
    assert hist["events"][0]["comment"] == "line 1\n\tline 2 — 已通知"
