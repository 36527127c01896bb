"""Roles and scopes on EVERY endpoint: 401 without a valid token, 403 outside role or scope.

The route table below must name every route the app serves (a test checks it), so a new endpoint
cannot be added without saying who may call it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import websockets.asyncio.client
import yaml
from fastapi.routing import APIWebSocketRoute
from starlette.routing import WebSocketRoute

from api_helpers import SITE, SITE_FILE, Tokens, demo_runtime, free_port, ingest, make_tokens
from conftest import create_database, drop_database
from hazmon.api import create_app
from hazmon.auth import (
    AuthThrottle,
    Permission,
    Role,
    authenticate,
    create_token,
    ensure_demo_token,
    revoke_token,
)
from hazmon.regulator.findings import Actor as FindingActor
from hazmon.regulator.findings import FindingIn, create_finding
from hazmon.runtime import Runtime

ALARM = f"{SITE}/V101.GT1:gas.H"  # combustible gas above 25 %LEL: no on-delay, latching
TAG = f"{SITE}/V101.LT"
SITE_DOC = yaml.safe_load(SITE_FILE.read_text(encoding="utf-8"))

# How a route treats a token in its role but outside its scope:
SCOPED = "scoped"  # 403
FILTERED = "filtered"  # 200, with what is outside the scope left out
GLOBAL = "global"  # no site: the role decides alone


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # template, as the app declares it ({alarm_id:path}: the id may hold a "/")
    url: str  # what the test calls
    permission: Permission | frozenset[Permission] | None  # None: public; a set: any one of them
    scope: str = SCOPED
    body: Any = None


RECORDS = frozenset({Permission.OPERATE, Permission.CONFIGURE})
FINDING = {
    "site": SITE,
    "installation": "HI-02",
    "description": "ammonia tank T201: insulation damaged at the north nozzle",
    "grade": "general",
    "found_by": "inspector",
    "deadline": "2099-12-31",
}
_FINDING_ID: list[int] = []  # the finding the routes with {finding} address, made by the module's fixture

ROUTES = [
    Route("GET", "/healthz", "/healthz", None, GLOBAL),
    Route("GET", "/metrics", "/metrics", Permission.SYSTEM, GLOBAL),
    Route("GET", "/api/v1/sites", "/api/v1/sites", Permission.READ, FILTERED),
    Route("PUT", "/api/v1/sites/{site_id}", f"/api/v1/sites/{SITE}", Permission.CONFIGURE, body=SITE_DOC),
    Route("GET", "/api/v1/tags", f"/api/v1/tags?site={SITE}", Permission.READ),
    Route("GET", "/api/v1/tags/latest", f"/api/v1/tags/latest?tag={TAG}", Permission.READ),
    Route("GET", "/api/v1/tags/{tag_id:path}/series", f"/api/v1/tags/{TAG}/series", Permission.READ),
    Route("GET", "/api/v1/tags/{tag_id:path}/export", f"/api/v1/tags/{TAG}/export?format=csv", Permission.READ),
    Route("GET", "/api/v1/alarms", f"/api/v1/alarms?site={SITE}", Permission.READ),
    Route("GET", "/api/v1/alarms/history", f"/api/v1/alarms/history?site={SITE}", Permission.READ),
    Route("GET", "/api/v1/alarms/kpi", f"/api/v1/alarms/kpi?site={SITE}&since=1d", Permission.READ),
    Route("GET", "/api/v1/alarms/{alarm_id:path}", f"/api/v1/alarms/{ALARM}", Permission.READ),
    Route("POST", "/api/v1/alarms/ack", "/api/v1/alarms/ack", Permission.OPERATE, body={"ids": [ALARM]}),
    Route("POST", "/api/v1/alarms/{alarm_id:path}/ack", f"/api/v1/alarms/{ALARM}/ack", Permission.OPERATE, body={}),
    Route("POST", "/api/v1/alarms/{alarm_id:path}/reset", f"/api/v1/alarms/{ALARM}/reset", Permission.OPERATE),
    Route(
        "POST",
        "/api/v1/alarms/{alarm_id:path}/shelve",
        f"/api/v1/alarms/{ALARM}/shelve",
        Permission.OPERATE,
        body={"reason": "role test", "duration_s": 60},
    ),
    Route("POST", "/api/v1/alarms/{alarm_id:path}/unshelve", f"/api/v1/alarms/{ALARM}/unshelve", Permission.OPERATE),
    Route(
        "POST",
        "/api/v1/alarms/{alarm_id:path}/comment",
        f"/api/v1/alarms/{ALARM}/comment",
        Permission.OPERATE,
        body={"text": "role test"},
    ),
    Route(
        "POST",
        "/api/v1/alarms/{alarm_id:path}/out-of-service",
        f"/api/v1/alarms/{ALARM}/out-of-service",
        Permission.OPERATE,
        body={"reason": "role test"},
    ),
    Route(
        "POST",
        "/api/v1/alarms/{alarm_id:path}/return-to-service",
        f"/api/v1/alarms/{ALARM}/return-to-service",
        Permission.OPERATE,
    ),
    # the console's context lists only the sites in scope (an object, so not the "empty list" check)
    Route("GET", "/api/v1/console/context", "/api/v1/console/context", Permission.READ, GLOBAL),
    Route("GET", "/api/v1/console/response/{alarm_id:path}", f"/api/v1/console/response/{ALARM}", Permission.READ),
    Route("GET", "/api/v1/gateways", "/api/v1/gateways", Permission.READ, FILTERED),
    Route("GET", "/api/v1/compliance", "/api/v1/compliance", Permission.READ, FILTERED),
    Route("GET", "/api/v1/installations", "/api/v1/installations", Permission.READ, FILTERED),
    Route("GET", "/api/v1/installations/{installation_id}", "/api/v1/installations/HI-02", Permission.READ),
    # hidden-hazard findings: every role reads (its scope); the enterprise's roles record, regulators do not
    Route("GET", "/api/v1/hazards/findings", "/api/v1/hazards/findings", Permission.READ, FILTERED),
    Route("GET", "/api/v1/hazards/findings/summary", "/api/v1/hazards/findings/summary", Permission.READ, FILTERED),
    Route("POST", "/api/v1/hazards/findings", "/api/v1/hazards/findings", RECORDS, body=FINDING),
    Route("GET", "/api/v1/hazards/findings/{finding_id}", "/api/v1/hazards/findings/{finding}", Permission.READ),
    Route(
        "PATCH",
        "/api/v1/hazards/findings/{finding_id}",
        "/api/v1/hazards/findings/{finding}",
        RECORDS,
        body={"responsible": "shift leader"},
    ),
    Route(
        "GET",
        "/api/v1/hazards/findings/{finding_id}/history",
        "/api/v1/hazards/findings/{finding}/history",
        Permission.READ,
    ),
    Route("GET", "/api/v1/tokens", "/api/v1/tokens", Permission.ADMIN, GLOBAL),
    Route(
        "POST",
        "/api/v1/tokens",
        "/api/v1/tokens",
        Permission.ADMIN,
        GLOBAL,
        body={"role": "regulator", "enterprises": ["x"]},
    ),
    Route("DELETE", "/api/v1/tokens/{token_id}", "/api/v1/tokens/{spare}", Permission.ADMIN, GLOBAL),
    Route("GET", "/api/v1/audit", "/api/v1/audit", Permission.ADMIN, GLOBAL),
    Route("GET", "/api/v1/audit/verify", "/api/v1/audit/verify", Permission.ADMIN, GLOBAL),
    # The WebSocket's roles and scopes are proven against a real server in test_live.py.
    Route("WS", "/api/v1/live", "/api/v1/live", Permission.READ),
]

# name -> (role, in scope); None: no valid token
PRINCIPALS: dict[str, tuple[Role, bool] | None] = {
    "none": None,
    "bad": None,
    "revoked": None,
    "operator": (Role.OPERATOR, True),
    "operator_other": (Role.OPERATOR, False),
    "engineer": (Role.ENGINEER, True),
    "engineer_other": (Role.ENGINEER, False),
    "regulator": (Role.REGULATOR, True),
    "regulator_other": (Role.REGULATOR, False),
    "admin": (Role.ADMIN, True),
}
PUBLIC_DOCS = {
    "/openapi.json",
    "/docs",
    "/docs/oauth2-redirect",
    "/redoc",
    "/console",
    "/console/{name}",
    "/console/findings",
}


@pytest.fixture(scope="module")
async def env(pg_admin_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[Runtime, Tokens]]:
    url = await create_database(pg_admin_url)
    try:
        async with demo_runtime(url, Path(tmp_path_factory.mktemp("auth"))) as rt:
            await ingest(rt, {"V101.GT1": 30.0})
            async with rt.db.pool.acquire() as conn:
                made = await create_finding(conn, FindingIn.model_validate(FINDING), FindingActor("inspector"))
            _FINDING_ID[:] = [made.id]
            yield rt, await make_tokens(rt)
    finally:
        await drop_database(pg_admin_url, url)


@pytest.fixture(autouse=True)
def fresh_throttle(env: tuple[Runtime, Tokens]) -> None:
    """Each test starts with no failed authentication counted (the role table sends bad tokens)."""
    env[0].auth_throttle = AuthThrottle()


@pytest.fixture(scope="module")
async def client(env: tuple[Runtime, Tokens]) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(runtime=env[0])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hazmon") as c:
        yield c


def _served(routes: list[Any], prefix: str = "") -> set[tuple[str, str]]:
    """(method, path) of every route, walking included routers (FastAPI includes them lazily)."""
    out: set[tuple[str, str]] = set()
    for r in routes:
        included = getattr(r, "include_context", None)
        if included is not None:
            out |= _served(r.original_router.routes, prefix + included.prefix)
        elif isinstance(r, APIWebSocketRoute | WebSocketRoute):
            out.add(("WS", prefix + r.path))
        elif getattr(r, "methods", None):
            out |= {(m, prefix + r.path) for m in r.methods if m != "HEAD"}
    return out


def test_route_table_names_every_route() -> None:
    app = create_app()
    http = {(m.upper(), path) for path, ops in app.openapi()["paths"].items() for m in ops}
    served = {(m, p) for m, p in _served(app.routes) if p not in PUBLIC_DOCS}
    # the walk sees at least what the OpenAPI description lists (which names {alarm_id:path} {alarm_id})
    assert http <= {(m, re.sub(r"{(\w+):\w+}", r"{\1}", p)) for m, p in served}
    assert served == {(r.method, r.path) for r in ROUTES}


def _expected(route: Route, principal: str) -> str:
    who = PRINCIPALS[principal]
    if route.permission is None:
        return "ok"
    if who is None:
        return "401"
    role, in_scope = who
    if not _may(role, route.permission):
        return "403"
    if not in_scope and role is not Role.ADMIN:
        return {SCOPED: "403", FILTERED: "empty", GLOBAL: "ok"}[route.scope]
    return "ok"


def _may(role: Role, permission: Permission | frozenset[Permission]) -> bool:
    from hazmon.auth import PERMISSIONS

    wanted = permission if isinstance(permission, frozenset) else {permission}
    return bool(wanted & PERMISSIONS[role])


@pytest.mark.parametrize("principal", list(PRINCIPALS))
@pytest.mark.parametrize("route", [r for r in ROUTES if r.method != "WS"], ids=lambda r: f"{r.method} {r.path}")
async def test_roles_and_scopes(
    client: httpx.AsyncClient, env: tuple[Runtime, Tokens], route: Route, principal: str
) -> None:
    tokens = env[1]
    token = tokens.by_name(principal)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = route.url.replace("{spare}", tokens.spare_id).replace("{finding}", str(_FINDING_ID[0]))
    r = await client.request(route.method, url, headers=headers, json=route.body)
    expected = _expected(route, principal)
    if expected == "401":
        assert r.status_code == 401, r.text
        assert r.headers["www-authenticate"] == "Bearer"
    elif expected == "403":
        assert r.status_code == 403, r.text
        assert "scope" in r.json()["detail"] or "may not" in r.json()["detail"]
    else:
        # Allowed: the request may still fail on its own terms (409 for an alarm in the wrong state).
        assert r.status_code in (200, 201, 409), f"{r.status_code} {r.text}"
        if expected == "empty":
            assert r.json() == []


async def test_filtered_lists_show_the_sites_in_scope(client: httpx.AsyncClient, env: tuple[Runtime, Tokens]) -> None:
    tokens = env[1]
    r = await client.get("/api/v1/sites", headers={"Authorization": f"Bearer {tokens.regulator}"})
    assert [s["id"] for s in r.json()] == [SITE]
    r = await client.get("/api/v1/alarms", headers={"Authorization": f"Bearer {tokens.operator_other}"})
    assert r.status_code == 200 and r.json() == []
    r = await client.get("/api/v1/alarms", headers={"Authorization": f"Bearer {tokens.regulator}"})
    assert ALARM in {a["alarm_id"] for a in r.json()}


async def test_revocation_takes_effect_within_5_s(client: httpx.AsyncClient, env: tuple[Runtime, Tokens]) -> None:
    runtime = env[0]
    async with runtime.db.pool.acquire() as conn:
        new = await create_token(conn, Role.REGULATOR, enterprises=["ecs"], name="short-lived")
    headers = {"Authorization": f"Bearer {new.secret}"}
    assert (await client.get("/api/v1/sites", headers=headers)).status_code == 200
    async with runtime.db.pool.acquire() as conn:
        await revoke_token(conn, new.info.id[:6])  # by another process (the CLI): only the database knows
    revoked = time.monotonic()
    while (await client.get("/api/v1/sites", headers=headers)).status_code != 401:
        assert time.monotonic() - revoked < 5.0, "a revoked token still works after 5 s"
        await asyncio.sleep(0.1)


async def test_failed_authentications_are_logged_and_throttled_per_address(
    env: tuple[Runtime, Tokens], caplog: pytest.LogCaptureFixture
) -> None:
    runtime, tokens = env
    app = create_app(runtime=runtime)
    attacker = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=("203.0.113.9", 40000)), base_url="http://hazmon"
    )
    neighbour = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=("198.51.100.4", 40000)), base_url="http://hazmon"
    )
    async with attacker, neighbour:
        # a token the attacker's address also uses legitimately, checked once before the attack
        ok = {"Authorization": f"Bearer {tokens.regulator}"}
        assert (await attacker.get("/api/v1/sites", headers=ok)).status_code == 200
        guesses = [f"hzm_{i:012x}_{secrets.token_urlsafe(32)}" for i in range(1000)]
        statuses: list[int] = []
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="hazmon.auth"):
            for guess in guesses:
                r = await attacker.get("/api/v1/sites", headers={"Authorization": f"Bearer {guess}"})
                statuses.append(r.status_code)
        assert set(statuses) == {401, 429}
        first_429 = statuses.index(429)
        refills = (time.monotonic() - started) * runtime.auth_throttle.refill_per_s  # one more try per 5 s
        assert first_429 <= 10 and statuses[first_429:].count(401) <= 1 + refills
        r = await attacker.get("/api/v1/sites", headers={"Authorization": f"Bearer {guesses[0]}"})
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1 and "too many" in r.json()["detail"]
        # the attacker's address keeps a token it holds; another address is not affected
        assert (await attacker.get("/api/v1/sites", headers=ok)).status_code == 200
        assert (
            await neighbour.get("/api/v1/sites", headers={"Authorization": f"Bearer {guesses[5]}"})
        ).status_code == 401
        # a malformed token is a failure too; a request without a token is counted, not throttled
        assert (await neighbour.get("/api/v1/sites", headers={"Authorization": "Bearer nope"})).status_code == 401
        assert (await neighbour.get("/api/v1/sites")).status_code == 401
    failures = [rec.getMessage() for rec in caplog.records if "authentication failed" in rec.getMessage()]
    assert failures and all("203.0.113.9" in m or "198.51.100.4" in m for m in failures)
    assert any("throttled" in rec.getMessage() for rec in caplog.records)
    secrets_seen = [g.split("_", 2)[2] for g in guesses]
    assert not any(sec in caplog.text for sec in secrets_seen)  # never the secret
    assert f"token {guesses[0].split('_')[1]}" in caplog.text  # but which token: its public id
    counted = runtime.auth_throttle.rejections
    assert counted["invalid"] >= 10 and counted["throttled"] >= 900
    assert counted["malformed"] == 1 and counted["missing"] == 1
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hazmon") as c:
        metrics = (await c.get("/metrics", headers={"Authorization": f"Bearer {tokens.engineer}"})).text
    throttled = next(
        line for line in metrics.splitlines() if line.startswith('hazmon_auth_rejections_total{reason="throttled"}')
    )
    assert float(throttled.split()[-1]) >= 900


async def test_tokens_never_reach_the_log(env: tuple[Runtime, Tokens], caplog: pytest.LogCaptureFixture) -> None:
    """uvicorn logs a WebSocket's path with ?token=: the secret is redacted, its id kept."""
    from hazmon.logs import install_redaction

    install_redaction()
    runtime, tokens = env
    config = uvicorn.Config(
        create_app(runtime=runtime), host="127.0.0.1", port=free_port(), log_config=None, log_level="info"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline and not task.done(), "uvicorn did not start"
            await asyncio.sleep(0.01)
        with caplog.at_level(logging.INFO):
            url = f"ws://127.0.0.1:{config.port}/api/v1/live?token={tokens.regulator}"
            async with websockets.asyncio.client.connect(url) as ws:
                await ws.send('{"type": "subscribe"}')
                assert json.loads(await ws.recv())["type"] == "snapshot"
            logging.getLogger("hazmon.test").warning("header was Authorization: Bearer %s", tokens.admin)
    finally:
        server.should_exit = True
        await task
    text = caplog.text
    assert "/api/v1/live?token=" in text  # uvicorn did log the request line
    for secret in (tokens.regulator, tokens.admin):
        assert secret.split("_", 2)[2] not in text
        assert f"hzm_{secret.split('_')[1]}_[redacted]" in text


async def test_tokens_are_stored_hashed_and_shown_once(client: httpx.AsyncClient, env: tuple[Runtime, Tokens]) -> None:
    runtime, tokens = env
    admin = {"Authorization": f"Bearer {tokens.admin}"}
    r = await client.post("/api/v1/tokens", headers=admin, json={"role": "operator", "sites": [SITE], "name": "carol"})
    assert r.status_code == 201
    secret = r.json()["token"]
    listed = (await client.get("/api/v1/tokens", headers=admin)).json()
    assert secret not in r.text.replace(secret, "", 1)  # the answer names it once
    assert all("token" not in t and "secret" not in str(t) for t in listed)
    async with runtime.db.pool.acquire() as conn:
        stored = await conn.fetch("SELECT secret_sha256::text AS h FROM api_tokens")
        assert all(secret not in row["h"] for row in stored)
        who = await authenticate(conn, secret)
    assert who is not None and who.name == "carol" and who.role is Role.OPERATOR
    bad = await client.post("/api/v1/tokens", headers=admin, json={"role": "operator"})
    assert bad.status_code == 422 and "--site" in bad.json()["detail"]


async def test_demo_token_is_an_operator_of_the_demo_site(env: tuple[Runtime, Tokens]) -> None:
    runtime = env[0]
    async with runtime.db.pool.acquire() as conn:
        first = await ensure_demo_token(conn)
        second = await ensure_demo_token(conn)
        assert await authenticate(conn, first) is None  # re-creating revokes the earlier one
        who = await authenticate(conn, second)
    assert who is not None and who.role is Role.OPERATOR and who.scope == {SITE}


async def test_configuration_changes_are_audited(client: httpx.AsyncClient, env: tuple[Runtime, Tokens]) -> None:
    tokens = env[1]
    r = await client.put(f"/api/v1/sites/{SITE}", headers={"Authorization": f"Bearer {tokens.engineer}"}, json=SITE_DOC)
    assert r.status_code == 200, r.text
    trail = (await client.get("/api/v1/audit", headers={"Authorization": f"Bearer {tokens.admin}"})).json()
    loads = [e for e in trail if e["action"] == "site.load"]
    assert loads and loads[0]["actor"] == "erin" and loads[0]["role"] == "engineer"
    bad = dict(SITE_DOC, tags=[])
    r = await client.put(f"/api/v1/sites/{SITE}", headers={"Authorization": f"Bearer {tokens.engineer}"}, json=bad)
    assert r.status_code == 422 and "tags" in r.json()["detail"]
    verify = (await client.get("/api/v1/audit/verify", headers={"Authorization": f"Bearer {tokens.admin}"})).json()
    assert verify["ok"] is True and verify["rows"] >= 1


@pytest.mark.parametrize("principal", ["operator_other", "engineer_other", "regulator_other"])
async def test_a_bare_id_names_nothing_outside_the_tokens_scope(
    client: httpx.AsyncClient, env: tuple[Runtime, Tokens], principal: str
) -> None:
    """The short form (``V101.GT1:gas.H``) names an alarm or tag of the token's own sites only: for a token
    of another site it names nothing there is to read or to act on."""
    headers = {"Authorization": f"Bearer {env[1].by_name(principal)}"}
    bare_alarm, bare_tag = ALARM.split("/", 1)[1], TAG.split("/", 1)[1]
    r = await client.get(f"/api/v1/alarms/{bare_alarm}", headers=headers)
    assert r.status_code == 404 and SITE not in r.text, r.text
    r = await client.get(f"/api/v1/console/response/{bare_alarm}", headers=headers)
    assert r.status_code in (403, 404) and SITE not in r.text, r.text
    r = await client.get("/api/v1/tags/latest", params={"tag": bare_tag}, headers=headers)
    assert r.status_code == 404 and SITE not in r.text, r.text
    for url in (f"/api/v1/tags/{bare_tag}/series", f"/api/v1/tags/{bare_tag}/export"):
        r = await client.get(url, headers=headers)
        assert r.status_code in (403, 404) and SITE not in r.text, r.text
    if principal == "operator_other":
        r = await client.post(f"/api/v1/alarms/{bare_alarm}/ack", headers=headers, json={})
        assert r.status_code == 404 and SITE not in r.text, r.text
        r = await client.post("/api/v1/alarms/ack", headers=headers, json={"ids": [bare_alarm]})
        assert r.status_code == 200 and r.json() == {
            "results": {bare_alarm: {"status": 404, "detail": f"unknown alarm {bare_alarm!r}"}},
            "acknowledged": 0,
        }, r.text


async def test_a_bare_id_names_the_alarm_of_the_tokens_own_site(
    client: httpx.AsyncClient, env: tuple[Runtime, Tokens]
) -> None:
    headers = {"Authorization": f"Bearer {env[1].operator}"}
    r = await client.get(f"/api/v1/alarms/{ALARM.split('/', 1)[1]}", headers=headers)
    assert r.status_code == 200 and r.json()["alarm_id"] == ALARM and r.json()["site"] == SITE, r.text
    r = await client.get(f"/api/v1/tags/{TAG.split('/', 1)[1]}/series", headers=headers)
    assert r.status_code == 200 and (r.json()["site"], r.json()["tag"]) == (SITE, "V101.LT"), r.text
