"""Hidden-hazard self-check and self-report (隐患自查自报): enterprises record findings through the
API, every change is in the audit trail, scopes hold, bad text is refused, and regulators see open,
major and overdue findings and the median time to close per enterprise."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from api_helpers import ENTERPRISE, SITE, Tokens, demo_api
from hazmon.audit import verify
from hazmon.regulator import findings as fnd
from hazmon.runtime import Runtime

URL = "/api/v1/hazards/findings"


@pytest.fixture
async def env(pg_url: str, tmp_path: Path) -> AsyncIterator[tuple[Runtime, Tokens, httpx.AsyncClient]]:
    async with demo_api(pg_url, tmp_path) as (rt, tokens, client):
        yield rt, tokens, client


def _h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _new(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "site": SITE,
        "equipment": "V103",
        "description": "球罐V103液位计引压管保温层破损\nlevel transmitter impulse line insulation damaged",
        "grade": "一般",
        "found_by": "张工",
        "corrective_action": "更换保温层",
        "deadline": (date.today() + timedelta(days=10)).isoformat(),
        "responsible": "李主任",
    }
    body.update(over)
    return body


async def test_record_update_close_with_audit_trail(env: tuple[Runtime, Tokens, httpx.AsyncClient]) -> None:
    rt, tokens, client = env
    r = await client.post(URL, json=_new(), headers=_h(tokens.operator))
    assert r.status_code == 201, r.text
    f = r.json()
    # the installation is found from the equipment; the Chinese grade is understood
    assert f["installation"] == "HI-01" and f["grade"] == "general" and f["grade_zh"] == "一般"
    assert f["status"] == "open" and f["enterprise"] == ENTERPRISE and f["created_by"] == "alice"

    r = await client.patch(f"{URL}/{f['id']}", json={"status": "rectifying", "version": 1}, headers=_h(tokens.engineer))
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "rectifying" and r.json()["version"] == 2
    # a stale version is refused, and nothing changes
    stale = await client.patch(f"{URL}/{f['id']}", json={"grade": "major", "version": 1}, headers=_h(tokens.engineer))
    assert stale.status_code == 409 and "changed meanwhile" in stale.json()["detail"]
    # closing needs evidence
    r = await client.patch(f"{URL}/{f['id']}", json={"status": "closed"}, headers=_h(tokens.operator))
    assert r.status_code == 422 and "evidence" in r.text
    r = await client.patch(
        f"{URL}/{f['id']}",
        json={"status": "closed", "evidence": "保温层已更换，现场复查合格 (photo 2026-11-30)"},
        headers=_h(tokens.operator),
    )
    assert r.status_code == 200, r.text
    closed = r.json()
    assert closed["status"] == "closed" and closed["closed_at"] and closed["version"] == 3
    # a closed finding is not edited, only reopened
    r = await client.patch(f"{URL}/{f['id']}", json={"description": "changed"}, headers=_h(tokens.operator))
    assert r.status_code == 409

    hist = (await client.get(f"{URL}/{f['id']}/history", headers=_h(tokens.regulator))).json()
    assert [h["action"] for h in hist] == ["finding.create", "finding.update", "finding.update"]
    assert [h["actor"] for h in hist] == ["alice", "erin", "alice"]
    assert hist[1]["detail"]["changes"] == {"status": ["open", "rectifying"]}
    assert hist[2]["detail"]["changes"]["status"] == ["rectifying", "closed"]
    assert hist[0]["detail"]["description"].startswith("球罐V103")
    async with rt.db.pool.acquire() as conn:
        assert (await verify(conn)).ok


async def test_bad_input_is_refused_and_nothing_recorded(env: tuple[Runtime, Tokens, httpx.AsyncClient]) -> None:
    rt, tokens, client = env
    op = _h(tokens.operator)
    cases = [
        (_new(description="leak\x1b[31m red"), "control character"),
        (_new(found_by="x\x00y"), "control character"),
        (_new(grade="severe"), "grade"),
        (_new(equipment="NOPE"), "no equipment 'NOPE'"),
        (_new(installation="HI-02"), "belongs to installation 'HI-01'"),
        (_new(equipment=None, installation="HI-99"), "no installation 'HI-99'"),
        (_new(deadline="2001-01-01"), "deadline"),
        (_new(description="   "), "must not be empty"),
        (_new(found_at=(datetime.now(UTC) + timedelta(days=2)).isoformat()), "future"),
        (_new(unknown_field=1), "unknown_field"),
    ]
    for body, message in cases:
        r = await client.post(URL, json=body, headers=op)
        assert r.status_code == 422, (body, r.text)
        assert message in r.text, (message, r.text)
    # newline and tab are fine
    ok = await client.post(URL, json=_new(description="line one\n\tline two"), headers=op)
    assert ok.status_code == 201 and ok.json()["description"] == "line one\n\tline two"
    assert len((await client.get(URL, headers=op)).json()) == 1
    async with rt.db.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM audit_log WHERE action LIKE 'finding.%'") == 1
    assert (await client.get(f"{URL}/999999", headers=op)).status_code == 404
    assert (await client.get(f"{URL}/0", headers=op)).status_code == 422
    assert (await client.get(f"{URL}/99999999999999999999", headers=op)).status_code == 422


async def test_scopes_and_roles(env: tuple[Runtime, Tokens, httpx.AsyncClient]) -> None:
    _, tokens, client = env
    created = await client.post(URL, json=_new(), headers=_h(tokens.admin))
    assert created.status_code == 201
    fid = created.json()["id"]
    # a regulator reads but does not record
    assert (await client.post(URL, json=_new(), headers=_h(tokens.regulator))).status_code == 403
    r = await client.patch(f"{URL}/{fid}", json={"grade": "major"}, headers=_h(tokens.regulator))
    assert r.status_code == 403
    assert (await client.get(f"{URL}/{fid}", headers=_h(tokens.regulator))).status_code == 200
    # another site's token neither sees nor changes it
    other = _h(tokens.operator_other)
    assert (await client.get(URL, headers=other)).json() == []
    assert (await client.get(f"{URL}/{fid}", headers=other)).status_code == 403
    assert (await client.patch(f"{URL}/{fid}", json={"grade": "major"}, headers=other)).status_code == 403
    assert (await client.post(URL, json=_new(), headers=other)).status_code == 403
    assert (await client.get(URL, params={"site": SITE}, headers=other)).status_code == 403
    assert (await client.get(f"{URL}/summary", headers=_h(tokens.regulator_other))).json() == []
    assert (await client.get(URL)).status_code == 401


async def test_regulator_summary_open_major_overdue_median(env: tuple[Runtime, Tokens, httpx.AsyncClient]) -> None:
    _, tokens, client = env
    op = _h(tokens.operator)
    now = datetime.now(UTC)
    ids = []
    plan = [(20, "major", -5), (10, "general", -1), (3, "重大", 30), (30, "general", -20)]
    for days_ago, grade, deadline_days in plan:
        body = _new(
            grade=grade,
            found_at=(now - timedelta(days=days_ago)).isoformat(),
            deadline=(now + timedelta(days=deadline_days)).date().isoformat(),
        )
        r = await client.post(URL, json=body, headers=op)
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    # the oldest is closed now: 30 days to close
    r = await client.patch(f"{URL}/{ids[3]}", json={"status": "closed", "evidence": "done"}, headers=op)
    assert r.status_code == 200

    (s,) = (await client.get(f"{URL}/summary", headers=_h(tokens.regulator))).json()
    assert s["enterprise"] == ENTERPRISE
    assert (s["total"], s["open"], s["closed"]) == (4, 3, 1)
    assert s["major_open"] == 2 and sorted(s["major_open_ids"]) == sorted([ids[0], ids[2]])
    assert s["overdue"] == 2 and sorted(s["overdue_ids"]) == sorted([ids[0], ids[1]])
    assert s["median_days_to_close"] == pytest.approx(30.0, abs=0.1)
    assert s["sites"][SITE]["open"] == 3
    overdue = (await client.get(URL, params={"overdue": "true"}, headers=op)).json()
    assert sorted(f["id"] for f in overdue) == sorted([ids[0], ids[1]]) and all(f["overdue"] for f in overdue)
    majors = (await client.get(URL, params={"grade": "major", "status": ["open"]}, headers=op)).json()
    assert len(majors) == 2


def test_summary_median_and_overdue_at_the_deadline_boundary() -> None:
    """Overdue only after the deadline day has ended in the site's time zone (Asia/Shanghai)."""
    t0 = datetime(2026, 1, 1, 0, 0, tzinfo=UTC)

    def finding(i: int, status: fnd.Status, closed_after_h: float | None = None) -> fnd.Finding:
        return fnd.Finding(
            i, SITE, ENTERPRISE, None, None, "d", fnd.Grade.MAJOR, t0, "me", None, date(2026, 1, 10), None,
            status, None if closed_after_h is None else t0 + timedelta(hours=closed_after_h),
            "ok" if closed_after_h is not None else None, t0, "me", t0, "me", 1,
        )  # fmt: skip

    fs = [finding(1, fnd.Status.OPEN), finding(2, fnd.Status.CLOSED, 24), finding(3, fnd.Status.CLOSED, 72)]
    fs.append(finding(4, fnd.Status.CLOSED, 48))
    # 2026-01-10 23:59 in Shanghai is 15:59 UTC: not yet overdue; 16:00 UTC is the next day there
    assert fnd.summarize(fs, datetime(2026, 1, 10, 15, 59, tzinfo=UTC)).overdue == 0
    s = fnd.summarize(fs, datetime(2026, 1, 10, 16, 0, tzinfo=UTC))
    assert s.overdue == 1 and s.major_open == 1 and s.median_s_to_close == 48 * 3600
    # over a period, only the findings closed in it count for the median
    p = fnd.summarize(fs, t0 + timedelta(days=30), start=t0 + timedelta(hours=30), end=t0 + timedelta(days=30))
    assert p.closed_in_period == 2 and p.median_s_to_close == 60 * 3600 and p.found_in_period == 0


async def test_findings_summary_for_the_compliance_report(env: tuple[Runtime, Tokens, httpx.AsyncClient]) -> None:
    rt, tokens, client = env
    assert (await client.post(URL, json=_new(grade="major"), headers=_h(tokens.operator))).status_code == 201
    async with rt.db.pool.acquire() as conn:
        s = await fnd.findings_summary(conn, enterprise_id=ENTERPRISE)
        assert s.as_dict()["major_open"] == 1 and s.open == 1
        assert (await fnd.findings_summary(conn, enterprise_id="other")).total == 0


async def test_console_page_is_served(env: tuple[Runtime, Tokens, httpx.AsyncClient]) -> None:
    _, _, client = env
    r = await client.get("/console/findings")
    assert r.status_code == 200 and "/api/v1/hazards/findings" in r.text and "隐患" in r.text
