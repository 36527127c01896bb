"""Scope at every endpoint: a token scoped to another site or enterprise learns and changes nothing of
the demo site, whatever endpoint and parameters it uses (issue 11, item 4).

The walk is driven by the app's own OpenAPI description, so an endpoint added later is walked too:
every path parameter and every query parameter the operation declares is filled with a demo-site
value (a site, an enterprise, a tag, an alarm — named by its site, ``demo-tank-farm/V101.GT1``, and by
its bare id, ``V101.GT1``), and the request is sent with tokens of every scoped role whose scope is
*another* site and enterprise. The answer must be a refusal (401/403/404/409/422) or a success that
names nothing of the demo site beyond the ids the request itself gave (a bulk acknowledge answers each
id as given), never a 5xx; and the database must be unchanged.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from api_helpers import ENTERPRISE, SITE, SITE_FILE, Tokens, demo_runtime, ingest, make_tokens
from conftest import ROOT, create_database, drop_database
from hazmon.api import create_app
from hazmon.plant.site import parse_site
from hazmon.runtime import Runtime
from hazmon.storage.registry import upsert_site

ALARM = "V101.GT1:gas.H"  # raised by the ingest below
TAG = "V101.GT1"
# each id as the API names it (site/id), and the short form a token of one site may use
NAMINGS = {"site-scoped": (f"{SITE}/{ALARM}", f"{SITE}/{TAG}"), "bare": (ALARM, TAG)}
OTHER_SITE = "other-site"
OTHER_ENTERPRISE = "other-enterprise"
SITE_DOC = yaml.safe_load(SITE_FILE.read_text(encoding="utf-8"))
# Process-wide by design (the role alone decides): counters of the whole process, no site's data.
GLOBAL = {("GET", "/metrics")}
# Words that name the demo site's things: none may appear in an answer to an out-of-scope token.
LEAKS = re.compile(r"demo-tank-farm|\bV10[1-4]\.|\bT201\.|East China Chemical|91320500MA1XK7Q211")

PATH_VALUES = {
    "site_id": SITE,
    "site": SITE,
    "enterprise_id": ENTERPRISE,
    "enterprise": ENTERPRISE,
    "installation_id": "HI-01",
    "equipment_id": "V101",
}
QUERY_VALUES: dict[str, Any] = {
    "site": SITE,
    "enterprise": ENTERPRISE,
    "installation": "HI-01",
    "equipment": "V101",
}
SCOPED_TOKENS = ["operator_other", "engineer_other", "regulator_other"]


def other_site_doc() -> dict[str, Any]:
    """A small site of another enterprise: the scope of the ``*_other`` tokens."""
    doc: dict[str, Any] = yaml.safe_load((ROOT / "tests" / "data" / "mini-site.yaml").read_text(encoding="utf-8"))
    doc["enterprise"] = {"id": OTHER_ENTERPRISE, "name": "Other Chemicals Co.", "uscc": "91110000MA0123456P"}
    doc["site"] = {"id": OTHER_SITE, "name": "Other site"}
    text = json.dumps(doc).replace('"TK', '"OTK').replace('"AREA', '"OAREA')
    result: dict[str, Any] = json.loads(text)
    return result


@pytest.fixture(scope="module")
async def env(
    pg_admin_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[Runtime, Tokens, httpx.AsyncClient]]:
    url = await create_database(pg_admin_url)
    try:
        async with demo_runtime(url, Path(tmp_path_factory.mktemp("scope"))) as rt:
            other = parse_site(other_site_doc(), "<other site>")
            async with rt.db.pool.acquire() as conn:
                await upsert_site(conn, other)
            await ingest(rt, {TAG: 30.0, "V102.GT1": 60.0})
            tokens = await make_tokens(rt)
            transport = httpx.ASGITransport(app=create_app(runtime=rt))
            async with httpx.AsyncClient(transport=transport, base_url="http://hazmon") as client:
                yield rt, tokens, client
    finally:
        await drop_database(pg_admin_url, url)


def _h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _snapshot(rt: Runtime) -> dict[str, Any]:
    """What an out-of-scope token must not change."""
    async with rt.db.pool.acquire() as conn:
        return {
            "enterprises": [tuple(r) for r in await conn.fetch("SELECT id, name, uscc FROM enterprises ORDER BY id")],
            "sites": [tuple(r) for r in await conn.fetch("SELECT id, enterprise_id, name FROM sites ORDER BY id")],
            "tags": await conn.fetchval("SELECT count(*) FROM tags WHERE active"),
            "tokens": await conn.fetchval("SELECT count(*) FROM api_tokens WHERE revoked_at IS NULL"),
            "journal": await conn.fetchval("SELECT count(*) FROM alarm_journal"),
        }


def _operations(rt: Runtime) -> list[tuple[str, str, dict[str, Any]]]:
    spec = create_app(runtime=rt).openapi()
    out = []
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            if method.upper() in {"GET", "POST", "PUT", "PATCH", "DELETE"}:
                out.append((method.upper(), path, op))
    return out


def _request(
    method: str, path: str, op: dict[str, Any], tokens: Tokens, naming: str
) -> tuple[str, dict[str, Any], Any]:
    alarm, tag = NAMINGS[naming]
    values = {**PATH_VALUES, "alarm_id": alarm, "tag_id": tag}
    url = path
    for name in re.findall(r"{(\w+)}", path):
        value = tokens.spare_id if name == "token_id" else values.get(name, SITE)
        url = url.replace("{" + name + "}", value)
    queries = {**QUERY_VALUES, "tag": tag}
    params = {
        p["name"]: queries[p["name"]]
        for p in op.get("parameters", [])
        if p.get("in") == "query" and p["name"] in queries
    }
    body: Any = None
    if "requestBody" in op:
        body = {"comment": "scope walk", "reason": "scope walk", "text": "scope walk", "duration_s": 60}
        if path.endswith("/ack") and "{" not in path:
            body = {"ids": [alarm]}
        if path == "/api/v1/sites/{site_id}":
            body = SITE_DOC
    return url, params, body


async def test_out_of_scope_tokens_see_and_change_nothing_at_any_endpoint(
    env: tuple[Runtime, Tokens, httpx.AsyncClient],
) -> None:
    rt, tokens, client = env
    before = await _snapshot(rt)
    operations = _operations(rt)
    assert len(operations) >= 20  # the walk is not empty
    walked = 0
    for method, path, op in operations:
        if (method, path) in GLOBAL:
            continue
        for naming in NAMINGS:
            url, params, body = _request(method, path, op, tokens, naming)
            given = body.get("ids", []) if isinstance(body, dict) else []
            for name in SCOPED_TOKENS:
                for with_params in (True, False):
                    r = await client.request(
                        method,
                        url,
                        params=params if with_params else None,
                        headers=_h(getattr(tokens, name)),
                        json=body,
                    )
                    what = f"{name}: {method} {url} {params if with_params else ''} -> {r.status_code} {r.text[:300]}"
                    assert r.status_code < 500, what
                    if r.status_code < 300:
                        text = r.text
                        if given:  # a bulk acknowledge: each id the caller gave is unknown to it, none acknowledged
                            answer = r.json()
                            assert answer["acknowledged"] == 0, what
                            assert answer["results"] == {
                                i: {"status": 404, "detail": f"unknown alarm {i!r}"} for i in given
                            }, what
                            text = json.dumps({k: v for k, v in answer.items() if k != "results"})
                        assert not LEAKS.search(text), what
                    else:
                        assert r.status_code in (401, 403, 404, 405, 409, 422), what
                    walked += 1
    assert walked > 200
    assert await _snapshot(rt) == before


async def test_put_site_cannot_move_a_site_into_another_enterprise(
    env: tuple[Runtime, Tokens, httpx.AsyncClient],
) -> None:
    """The exploit of issue 11, item 4: an engineer scoped to one site rewrites another enterprise's
    record and moves its own site into that enterprise."""
    rt, tokens, client = env
    before = await _snapshot(rt)
    attack = other_site_doc()
    attack["enterprise"] = dict(SITE_DOC["enterprise"], name="Hijacked")
    r = await client.put(f"/api/v1/sites/{OTHER_SITE}", headers=_h(tokens.engineer_other), json=attack)
    assert r.status_code == 403, r.text
    assert f"enterprise {ENTERPRISE!r}" in r.json()["detail"]
    # not even with the enterprise's own record unchanged
    attack["enterprise"] = SITE_DOC["enterprise"]
    r = await client.put(f"/api/v1/sites/{OTHER_SITE}", headers=_h(tokens.engineer_other), json=attack)
    assert r.status_code == 403, r.text
    assert await _snapshot(rt) == before
    # the regulator of the other enterprise still sees its site
    r = await client.get("/api/v1/sites", headers=_h(tokens.regulator_other))
    assert [s["id"] for s in r.json()] == [OTHER_SITE]


async def test_put_site_does_not_change_a_sites_enterprise_even_for_an_admin(
    env: tuple[Runtime, Tokens, httpx.AsyncClient],
) -> None:
    rt, tokens, client = env
    before = await _snapshot(rt)
    moved = other_site_doc()
    moved["enterprise"] = SITE_DOC["enterprise"]
    r = await client.put(f"/api/v1/sites/{OTHER_SITE}", headers=_h(tokens.admin), json=moved)
    assert r.status_code == 409 and "does not change enterprise" in r.json()["detail"], r.text
    assert await _snapshot(rt) == before


async def test_put_site_in_scope_is_applied_and_audited_together(
    env: tuple[Runtime, Tokens, httpx.AsyncClient],
) -> None:
    rt, tokens, client = env
    doc = other_site_doc()
    doc["site"]["name"] = "Other site, renamed"
    r = await client.put(f"/api/v1/sites/{OTHER_SITE}", headers=_h(tokens.engineer_other), json=doc)
    assert r.status_code == 200, r.text
    trail = (await client.get("/api/v1/audit", headers=_h(tokens.admin), params={"site": OTHER_SITE})).json()
    assert trail[0]["action"] == "site.load" and trail[0]["actor"] == "eve"
    assert trail[0]["detail"]["enterprise"] == OTHER_ENTERPRISE
    async with rt.db.pool.acquire() as conn:
        assert await conn.fetchval("SELECT name FROM sites WHERE id = $1", OTHER_SITE) == "Other site, renamed"


async def test_compliance_of_another_enterprise_is_refused(env: tuple[Runtime, Tokens, httpx.AsyncClient]) -> None:
    _rt, tokens, client = env
    r = await client.get("/api/v1/compliance", headers=_h(tokens.regulator_other), params={"enterprise": ENTERPRISE})
    assert r.status_code == 403, r.text
    assert "outside this token's scope" in r.json()["detail"]
    r = await client.get("/api/v1/compliance", headers=_h(tokens.regulator), params={"enterprise": ENTERPRISE})
    assert r.status_code == 200 and [s["site"] for s in r.json()] == [SITE]
    r = await client.get("/api/v1/compliance", headers=_h(tokens.regulator), params={"enterprise": "nobody"})
    assert r.status_code == 403
