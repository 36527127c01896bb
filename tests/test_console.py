"""What the operator console stands on, through the API on a real runtime: the page and its files are
served without a token; the alarm list is ordered priority, unacknowledged, newest; times carry the
site's UTC offset and the activation time survives an acknowledge; the console's context (role, time
zone, language, Chinese names, GB 18218 grade, alarm limits); alarm responses from the rule files;
the journal searched by tag, priority and user; /docs without the Internet, with bearer auth. (The
console itself is driven in a browser in test_console_browser.py.)"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from api_helpers import RULES, SITE, SITE_FILE, Tokens, demo_api, ingest, ref
from hazmon.api import create_app
from hazmon.cli import main
from hazmon.reading import US_PER_S, now_us
from hazmon.runtime import Runtime


def _h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_console_and_offline_docs_are_served_without_a_token() -> None:
    app = create_app()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hazmon") as client:
        page = await client.get("/console")
        script = await client.get("/console/console.js")
        style = await client.get("/console/console.css")
        missing = await client.get("/console/secrets.txt")
        docs = await client.get("/docs")
        bundle = await client.get("/docs-assets/swagger-ui-bundle.js")
        schema = (await client.get("/openapi.json")).json()
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/console/console.js" in page.text
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert "Authorization: `Bearer ${token}`" in script.text  # every call carries the operator's token
    # the live stream authenticates with a first message: the token stays out of URLs and logs
    assert '{ type: "auth", token }' in script.text and "/api/v1/live?token=" not in script.text
    assert style.status_code == 200 and missing.status_code == 404
    # /docs loads Swagger UI from the package, not from a CDN, and can authorize with a token
    assert docs.status_code == 200 and "/docs-assets/swagger-ui-bundle.js" in docs.text
    assert "cdn" not in docs.text.lower()
    assert bundle.status_code == 200 and len(bundle.content) > 100_000
    assert schema["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "hzm_…",
        "description": "an API token from `hazmon token create` (the demo prints one)",
    }
    assert schema["paths"]["/api/v1/alarms"]["get"]["security"] == [{"bearer": []}]
    assert "security" not in schema["paths"]["/healthz"]["get"]


@pytest.fixture
async def env(pg_url: str, tmp_path: Path) -> AsyncIterator[tuple[Runtime, Tokens, httpx.AsyncClient]]:
    async with demo_api(pg_url, tmp_path) as (rt, tokens, client):
        t0 = now_us() - 10 * US_PER_S  # readings of the last seconds (actions happen now)
        await ingest(rt, {"V101.GT1": 30.0}, t0)  # high
        await ingest(rt, {"V102.GT1": 60.0}, t0 + US_PER_S)  # high and critical
        await ingest(rt, {"V103.GT1": 30.0}, t0 + 2 * US_PER_S)  # high, the newest
        yield rt, tokens, client


async def test_alarm_list_is_priority_then_unacknowledged_then_newest(
    env: tuple[Runtime, Tokens, httpx.AsyncClient],
) -> None:
    rt, tokens, c = env
    before = {a["alarm_id"]: a for a in (await c.get("/api/v1/alarms", headers=_h(tokens.operator))).json()}
    r = await c.post("/api/v1/alarms/V103.GT1:gas.H/ack", headers=_h(tokens.operator), json={"comment": "seen"})
    assert r.status_code == 200, r.text
    alarms = (await c.get("/api/v1/alarms", headers=_h(tokens.operator))).json()
    assert [a["alarm_id"] for a in alarms] == [
        f"{SITE}/V102.GT1:gas.HH",  # critical first
        f"{SITE}/V102.GT1:gas.H",  # then the unacknowledged high ones, newest first
        f"{SITE}/V101.GT1:gas.H",
        f"{SITE}/V103.GT1:gas.H",  # the newest high alarm, but acknowledged
    ]
    acked = alarms[-1]
    assert (acked["site"], acked["tag"]) == (SITE, "V103.GT1")
    # the activation time stays through the acknowledge; the last change is the acknowledge
    first = before[ref("V103.GT1:gas.H")]
    assert acked["activated_at"] == first["activated_at"] == first["since"]
    assert acked["since_us"] > acked["activated_us"]
    assert acked["user"] == "alice"
    # times in the site's local time (Asia/Shanghai), ISO 8601 with the offset
    assert acked["activated_at"].endswith("+08:00") and acked["since"].endswith("+08:00")
    await rt.flush_journal()
    history = (await c.get("/api/v1/alarms/history", headers=_h(tokens.operator), params={"site": SITE})).json()
    assert history["events"] and all(e["time"].endswith("+08:00") for e in history["events"])


async def test_history_searched_by_tag_priority_and_user(env: tuple[Runtime, Tokens, httpx.AsyncClient]) -> None:
    rt, tokens, c = env
    await c.post("/api/v1/alarms/V101.GT1:gas.H/ack", headers=_h(tokens.operator), json={})
    await rt.flush_journal()

    async def ids(**params: str) -> list[tuple[str, str]]:
        r = await c.get("/api/v1/alarms/history", headers=_h(tokens.regulator), params={"site": SITE, **params})
        assert r.status_code == 200, r.text
        return [(e["alarm_id"], e["action"]) for e in r.json()["events"]]

    assert sorted(await ids(tag="V102.GT1")) == [
        (ref("V102.GT1:gas.H"), "activate"),
        (ref("V102.GT1:gas.HH"), "activate"),
    ]
    assert await ids(tag=f"{SITE}/V102.GT1") == await ids(tag="V102.GT1")  # the tag's reference too
    assert await ids(priority="critical") == [(ref("V102.GT1:gas.HH"), "activate")]
    assert await ids(user="alice") == [(ref("V101.GT1:gas.H"), "acknowledge")]
    assert await ids(tag="V10") == []  # a tag id, not a prefix
    bad = await c.get("/api/v1/alarms/history", headers=_h(tokens.regulator), params={"priority": "urgent"})
    assert bad.status_code == 422


async def test_console_context_and_alarm_response(env: tuple[Runtime, Tokens, httpx.AsyncClient]) -> None:
    _, tokens, c = env
    op = (await c.get("/api/v1/console/context", headers=_h(tokens.operator))).json()
    assert op["user"] == {"name": "alice", "role": "operator", "may_operate": True}
    (site,) = op["sites"]
    assert (site["id"], site["timezone"], site["locale"]) == (SITE, "Asia/Shanghai", "zh-CN")
    hi01 = next(i for i in site["installations"] if i["id"] == "HI-01")
    assert hi01["name_zh"] == "液化石油气及丙烯球罐区" and hi01["grade"]["level"] == 1
    gt1 = next(t for t in site["tags"] if t["id"] == "V103.GT1")
    assert gt1["name_zh"] == "丙烯球罐1可燃气体检测器1" and gt1["unit"] == "%LEL"
    assert gt1["limits"] == {"H": 25.0, "HH": 50.0}  # drawn on the trend
    assert sorted(gt1["latched"]) == ["H", "HH"]  # gas alarms latch: the console offers a reset once clear
    reg = (await c.get("/api/v1/console/context", headers=_h(tokens.regulator))).json()
    assert reg["user"]["may_operate"] is False  # the console shows a regulator no action buttons
    other = (await c.get("/api/v1/console/context", headers=_h(tokens.operator_other))).json()
    assert other["sites"] == []
    assert (await c.get("/api/v1/console/context")).status_code == 401

    # the console asks by the alarm's full id (site/tag:condition); a bare id works where one site has the tag
    r = (await c.get(f"/api/v1/console/response/{SITE}/V103.GT1:gas.HH", headers=_h(tokens.operator))).json()
    assert r["alarm_id"] == f"{SITE}/V103.GT1:gas.HH"
    assert r["response"]["action"]["zh"].startswith("立即启动紧急切断")
    assert r["response"]["respond_within_min"] == 1
    bare = (await c.get("/api/v1/console/response/V103.GT1:gas.HH", headers=_h(tokens.operator))).json()
    assert bare == r
    sis = (await c.get("/api/v1/console/response/V101.LSHH:state.SIS_TRIP", headers=_h(tokens.regulator))).json()
    assert "安全仪表系统" in sis["response"]["cause"]["zh"]  # the demo site's own rule
    low = (await c.get("/api/v1/console/response/V101.FT:flow.H", headers=_h(tokens.operator))).json()
    assert low["response"] is None
    # a bare id names the token's own sites' tags only: another site's is unknown to it (as /alarms/{id})
    hidden = await c.get("/api/v1/console/response/V101.GT1:gas.H", headers=_h(tokens.operator_other))
    assert hidden.status_code == 404 and SITE not in hidden.text
    hidden = await c.get(f"/api/v1/console/response/{SITE}/V101.GT1:gas.H", headers=_h(tokens.operator_other))
    assert hidden.status_code == 403
    assert (await c.get("/api/v1/console/response/nonsense", headers=_h(tokens.operator))).status_code == 404


def test_rules_check_names_urgent_alarms_without_a_response(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["rules", "check", *map(str, RULES), "--site", str(SITE_FILE)]
    assert main(args) == 0
    assert "no alarm response" not in capsys.readouterr().out  # the demo's rules answer every urgent alarm
    bare = tmp_path / "bare.yaml"
    bare.write_text(
        "rules:\n- select: {tags: [V101.LT]}\n  limits:\n    HH: {value: 15, priority: critical}\n", encoding="utf-8"
    )
    assert main(["rules", "check", str(bare), "--site", str(SITE_FILE)]) == 0
    out = capsys.readouterr().out
    assert "1 alarm(s) of high or critical priority have no alarm response" in out
    assert "V101.LT:level.HH (critical)" in out


def test_database_commands_name_their_settings(capsys: pytest.CaptureFixture[str]) -> None:
    for verb in (["token", "create"], ["migrate"], ["serve"], ["audit", "verify"], ["alarms", "kpi"], ["site", "load"]):
        with pytest.raises(SystemExit):
            main([*verb, "--help"])
        out = capsys.readouterr().out
        assert "HAZMON_DATA_DIR" in out and "HAZMON_DATABASE_URL" in out, verb


def test_a_site_names_a_real_time_zone(tmp_path: Path) -> None:
    from hazmon.plant.site import check_site

    text = SITE_FILE.read_text(encoding="utf-8").replace("timezone: Asia/Shanghai", "timezone: China/Beijing", 1)
    bad = tmp_path / "site.yaml"
    bad.write_text(text, encoding="utf-8")
    problems = [str(p) for p in check_site(bad)]
    assert any("site.timezone" in p and "unknown time zone 'China/Beijing'" in p for p in problems), problems


def test_websocket_events_carry_the_activation_time() -> None:
    """The hub knows each alarm's activation from the engine's snapshot at a subscription and from the
    stream: an acknowledge keeps it, a return to normal ends it, a new activation starts a new one."""
    import json

    from hazmon.alarms.alarm import Action, AlarmEvent, AlarmSnapshot, AlarmState, Priority
    from hazmon.live import Follow, LiveHub, set_site_timezone

    set_site_timezone("plant", "Asia/Shanghai")
    hub = LiveHub()
    standing = AlarmSnapshot(
        "plant/T1:level.H", "plant/T1", "level.H", Priority.HIGH, AlarmState.ACTIVE_UNACK, True, False, 9.0, 8.0,
        since_us=5_000_000, activated_us=5_000_000,
    )  # fmt: skip
    sub, snap = hub.subscribe(Follow(sites=frozenset({"plant"})), [standing], lambda owner: "plant")
    assert snap[0]["activated_at"] == "1970-01-01T08:00:05+08:00"
    assert (snap[0]["alarm_id"], snap[0]["site"], snap[0]["tag"]) == ("plant/T1:level.H", "plant", "T1")

    def event(alarm: str, prev: AlarmState, new: AlarmState, action: Action, ts: int) -> AlarmEvent:
        return AlarmEvent(
            f"plant/{alarm}", "plant/T1", alarm.split(":")[1], Priority.HIGH, prev, new, 9.0, 8.0, ts, action=action
        )

    hub.publish_events(
        [
            event("T1:level.H", AlarmState.ACTIVE_UNACK, AlarmState.ACTIVE_ACK, Action.ACKNOWLEDGE, 7_000_000),
            event("T1:level.H", AlarmState.ACTIVE_ACK, AlarmState.NORMAL, Action.CLEAR, 8_000_000),
            event("T1:level.HH", AlarmState.NORMAL, AlarmState.ACTIVE_UNACK, Action.ACTIVATE, 9_000_000),
            event("T1:level.HH", AlarmState.ACTIVE_UNACK, AlarmState.SHELVED, Action.SHELVE, 10_000_000),
        ],
        lambda owner: "plant",
    )
    (msg,) = sub.messages()
    events = json.loads(msg)["events"]
    assert {(e["site"], e["tag"]) for e in events} == {("plant", "T1")}
    assert [(e["action"], e["activated_us"]) for e in events] == [
        ("acknowledge", 5_000_000),  # kept through the acknowledge
        ("clear", None),
        ("activate", 9_000_000),
        ("shelve", 9_000_000),
    ]
    assert events[0]["activated_at"] == "1970-01-01T08:00:05+08:00" and events[0]["time"].endswith("+08:00")
