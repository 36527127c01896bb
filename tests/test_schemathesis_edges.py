"""The inputs issue 11 (item 8) found answering 500 or 503, each answered 422 with a message that says
what is wrong, nothing changed, and the refusal counted on /metrics. The schemathesis run
(test_schemathesis.py) looks for more; these are the ones that were reported."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from api_helpers import SITE, Tokens, demo_api, ingest, ref
from conftest import create_database, drop_database
from hazmon.runtime import Runtime

GAS_H = ref("V101.GT1:gas.H")  # demo-tank-farm/V101.GT1:gas.H


@pytest.fixture(scope="module")
async def env(
    pg_admin_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[Runtime, Tokens, httpx.AsyncClient]]:
    url = await create_database(pg_admin_url)
    try:
        async with demo_api(url, Path(tmp_path_factory.mktemp("edges"))) as (rt, tokens, client):
            await ingest(rt, {"V101.GT1": 30.0, "V101.LT": 10.0})
            yield rt, tokens, client
    finally:
        await drop_database(pg_admin_url, url)


def _h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _rejections(client: httpx.AsyncClient, tokens: Tokens, reason: str) -> float:
    text = (await client.get("/metrics", headers=_h(tokens.admin))).text
    m = re.search(rf'^hazmon_api_rejections_total\{{reason="{reason}"\}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


@pytest.mark.parametrize(
    ("url", "names"),
    [
        ("/api/v1/tags?equipment=%00", "equipment"),
        ("/api/v1/tags?site=demo%00tank", "site"),
        ("/api/v1/audit?site=%00", "site"),
        ("/api/v1/tags/%00/series", "path"),
        ("/api/v1/tags/V101.LT%00/export", "path"),
        (f"/api/v1/tags/{SITE}/V101.LT%00/export", "path"),
        (f"/api/v1/tags/{SITE}%00/V101.LT/series", "path"),
        (f"/api/v1/alarms/{SITE}/V101.GT1%00:gas.H", "path"),
        ("/api/v1/alarms/history?site=" + SITE + "&user=%00", "user"),
    ],
)
async def test_nul_character_in_a_parameter_is_a_clear_422(
    env: tuple[Runtime, Tokens, httpx.AsyncClient], url: str, names: str
) -> None:
    _rt, tokens, client = env
    before = await _rejections(client, tokens, "nul_character")
    r = await client.get(url, headers=_h(tokens.admin))
    assert r.status_code == 422, r.text
    assert "NUL" in r.json()["detail"] and names in r.json()["detail"]
    assert await _rejections(client, tokens, "nul_character") == before + 1


async def test_series_bucket_too_wide_is_refused(env: tuple[Runtime, Tokens, httpx.AsyncClient]) -> None:
    _rt, tokens, client = env
    before = await _rejections(client, tokens, "invalid_parameter")
    series = f"/api/v1/tags/{SITE}/V101.LT/series"
    r = await client.get(series, params={"bucket": "99999999999999999999"}, headers=_h(tokens.admin))
    assert r.status_code == 422 and "at most 366 days" in r.json()["detail"], r.text
    assert await _rejections(client, tokens, "invalid_parameter") == before + 1
    r = await client.get(series, params={"bucket": "1d"}, headers=_h(tokens.admin))
    assert r.status_code == 200 and r.json()["bucket"] == 86400


async def test_times_outside_the_calendar_are_refused(env: tuple[Runtime, Tokens, httpx.AsyncClient]) -> None:
    _rt, tokens, client = env
    for url in (f"/api/v1/tags/{SITE}/V101.LT/series", f"/api/v1/tags/{SITE}/V101.LT/export", "/api/v1/alarms/history"):
        r = await client.get(url, params={"end": "0001-01-01T00:00:00Z"}, headers=_h(tokens.admin))
        assert r.status_code == 422, f"{url}: {r.status_code} {r.text}"
    r = await client.get(
        "/api/v1/alarms/kpi", params={"site": SITE, "since": "9999999999999w"}, headers=_h(tokens.admin)
    )
    assert r.status_code == 422 and "since" in r.json()["detail"], r.text


@pytest.mark.parametrize(
    "url",
    [
        "/api/v1/audit?before_seq=9223372036854775808",
        "/api/v1/audit?before_seq=99999999999999999999999",
        f"/api/v1/alarms/history?site={SITE}&offset=9223372036854775808",
    ],
)
async def test_integers_past_int64_are_refused(env: tuple[Runtime, Tokens, httpx.AsyncClient], url: str) -> None:
    _rt, tokens, client = env
    r = await client.get(url, headers=_h(tokens.admin))
    assert r.status_code == 422, r.text
    assert any("less than or equal" in e["msg"] for e in r.json()["detail"])


async def test_largest_int64_is_still_accepted(env: tuple[Runtime, Tokens, httpx.AsyncClient]) -> None:
    _rt, tokens, client = env
    r = await client.get("/api/v1/audit", params={"before_seq": 2**63 - 1}, headers=_h(tokens.admin))
    assert r.status_code == 200 and r.json() and r.json()[-1]["action"] == "audit.genesis"
    r = await client.get("/api/v1/alarms/history", params={"site": SITE, "offset": 2**63 - 1}, headers=_h(tokens.admin))
    assert r.status_code == 200 and r.json()["events"] == []


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999"])
async def test_shelve_with_a_non_finite_duration_is_refused_and_changes_nothing(
    env: tuple[Runtime, Tokens, httpx.AsyncClient], number: str
) -> None:
    rt, tokens, client = env
    state = rt.engine.get(GAS_H).state if rt.engine else None
    before = await _rejections(client, tokens, "validation")
    r = await client.post(
        f"/api/v1/alarms/{GAS_H}/shelve",
        content=f'{{"reason": "fuzz", "duration_s": {number}}}',
        headers={**_h(tokens.operator), "Content-Type": "application/json"},
    )
    assert r.status_code == 422, r.text
    errors = r.json()["detail"]
    assert errors[0]["loc"][-1] == "duration_s" and "finite" in errors[0]["msg"]
    assert rt.engine is not None and rt.engine.get(GAS_H).state == state
    assert await _rejections(client, tokens, "validation") == before + 1


async def test_nul_in_a_json_body_is_refused(env: tuple[Runtime, Tokens, httpx.AsyncClient]) -> None:
    rt, tokens, client = env
    async with rt.db.pool.acquire() as conn:
        tokens_before = await conn.fetchval("SELECT count(*) FROM api_tokens")
    for given in ("V101\x00.GT1:gas.H", f"{SITE}/V101\x00.GT1:gas.H"):
        r = await client.post("/api/v1/alarms/ack", json={"ids": [given]}, headers=_h(tokens.operator))
        assert r.status_code == 422, r.text
    assert rt.engine is not None and not rt.engine.get(GAS_H).acked
    r = await client.post("/api/v1/tokens", json={"role": "operator", "sites": ["a\x00b"]}, headers=_h(tokens.admin))
    assert r.status_code == 422 and "NUL" in r.text, r.text
    r = await client.put(f"/api/v1/sites/{SITE}", json={"enterprise": {"id": "e\x00"}}, headers=_h(tokens.admin))
    assert r.status_code == 422 and "enterprise.id" in r.json()["detail"], r.text
    async with rt.db.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM api_tokens") == tokens_before


# Alarm and tag ids are path segments that may hold "/" ({alarm_id:path}); ids of every malformed shape,
# as they are and percent-encoded, name nothing: a 4xx that says so, never a 5xx, and nothing acted on.
MALFORMED = [
    "",
    "/",
    ":",
    "//",
    "..",
    "a/b/c:d",
    "a:b/c",
    "V101.GT1:",
    ":gas.H",
    f"{SITE}/",
    f"{SITE}:gas.H",
    f"{SITE}/:gas.H",
    f"/{SITE}/V101.GT1:gas.H",
    f"{SITE}//V101.GT1:gas.H",
    f"{SITE}/V101.GT1:gas.H/extra",
    f"{SITE}/V101.GT1:gas.H:extra",
    "other-site/V101.GT1:gas.H",
    "x" * 3000,
]


@pytest.mark.parametrize("given", MALFORMED, ids=lambda v: repr(v[:40]))
async def test_malformed_site_scoped_ids_are_refused_without_a_5xx(
    env: tuple[Runtime, Tokens, httpx.AsyncClient], given: str
) -> None:
    rt, tokens, client = env
    assert rt.engine is not None
    before = {s.alarm_id: s.state for s in rt.engine.current()}
    for token in (tokens.admin, tokens.operator, tokens.operator_other):
        h = _h(token)
        for name in {given, quote(given, safe="")}:
            requests: list[tuple[str, str, dict[str, Any] | None]] = [
                ("GET", f"/api/v1/alarms/{name}", None),
                ("GET", f"/api/v1/tags/{name}/series", None),
                ("GET", f"/api/v1/tags/{name}/export", None),
                ("POST", f"/api/v1/alarms/{name}/ack", {}),
                ("POST", f"/api/v1/alarms/{name}/reset", {}),
                ("POST", f"/api/v1/alarms/{name}/shelve", {"reason": "fuzz", "duration_s": 60}),
                ("POST", f"/api/v1/alarms/{name}/shelve", {"reason": "fuzz", "duration_s": 1e9}),
                ("POST", f"/api/v1/alarms/{name}/unshelve", {}),
                ("POST", f"/api/v1/alarms/{name}/comment", {"text": "fuzz"}),
                ("POST", f"/api/v1/alarms/{name}/out-of-service", {"reason": "fuzz"}),
                ("POST", f"/api/v1/alarms/{name}/return-to-service", {}),
            ]
            for method, url, body in requests:
                r = await client.request(method, url, headers=h, json=body)
                assert r.status_code in (403, 404, 405, 422), f"{method} {url[:80]}: {r.status_code} {r.text[:200]}"
        r = await client.post("/api/v1/alarms/ack", headers=h, json={"ids": [given]})
        assert r.status_code == 200 and r.json()["acknowledged"] == 0, r.text
        assert r.json()["results"][given]["status"] == 404, r.text
        r = await client.get("/api/v1/tags/latest", headers=h, params={"tag": given})
        assert r.status_code in (403, 404, 422), r.text
        r = await client.get("/api/v1/console/response/" + quote(given, safe=""), headers=h)
        assert r.status_code < 500, r.text
    assert {s.alarm_id: s.state for s in rt.engine.current()} == before
