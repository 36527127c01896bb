"""Compliance figures over a period and the report a regulator files: data completeness and gaps from
the store, alarms by priority and time to acknowledge, standing alarms and SIS trips from the journal
and the readings, per installation, site and enterprise; as JSON, CSV, HTML and a PDF whose text
(extracted by pdftotext) holds the Chinese headings and the figures; and `hazmon report compliance`."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from api_helpers import SITE, Tokens, demo_api, ingest, ref
from hazmon.reading import now_us
from hazmon.runtime import Runtime
from hazmon.storage.maintenance import refresh_rollups

US = 1_000_000


def _iso(us: int) -> str:
    return datetime.fromtimestamp(us / US, UTC).isoformat()


async def _until(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = await predicate()
        if result:
            return result
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
async def env(pg_url: str, tmp_path: Path) -> AsyncIterator[tuple[Runtime, Tokens, httpx.AsyncClient, str, int]]:
    async with demo_api(pg_url, tmp_path) as (rt, tokens, client):
        t0 = await _history(rt, pg_url)
        yield rt, tokens, client, pg_url, t0


@pytest.fixture
async def env_any(db_url: str, tmp_path: Path) -> AsyncIterator[tuple[Runtime, Tokens, httpx.AsyncClient, str, int]]:
    """The same on PostgreSQL and on TimescaleDB (readings in a hypertable)."""
    async with demo_api(db_url, tmp_path) as (rt, tokens, client):
        t0 = await _history(rt, db_url)
        yield rt, tokens, client, db_url, t0


async def _history(rt: Runtime, pg_url: str) -> int:
    """Four minutes of HI-02 (ammonia) at 1 s: T201.LT silent from 60 s to 180 s, T201.LSHH trips at
    120 s; a gas alarm on V101 standing since 25 h; a leak on V102 acknowledged ten minutes later."""
    t0 = (now_us() // US - 600) * US
    ammonia = [t.id for t in rt.sites[0].tags if t.equipment in ("T201", "K201")]
    for s in range(240):
        values = {t: 0.0 if t.endswith(("AT1", "AT2", "AT3", "LSHH", "PSHH")) else 1.0 for t in ammonia}
        values["T201.XV"] = 1.0
        if 60 <= s < 180:
            del values["T201.LT"]
        if s >= 120:
            values["T201.LSHH"] = 1.0
        await ingest(rt, values, t0 + s * US)
    await ingest(rt, {"V101.GT1": 60.0}, now_us() - 25 * 3600 * US)
    await ingest(rt, {"V102.GT1": 60.0}, t0 + 10 * US)
    await rt.flush_journal()
    await rt.operate("acknowledge", ref("V102.GT1:gas.HH"), "alice", comment="area evacuated")
    conn = await asyncpg.connect(pg_url)
    try:
        lt = rt.tags.key(ref("T201.LT"))

        async def stored() -> bool:
            n = await conn.fetchval("SELECT count(*) FROM readings WHERE tag = $1", lt)
            return bool(n >= 120)

        await _until(stored, 20, "T201.LT's readings in the store")
    finally:
        await conn.close()
    return t0


async def test_period_figures_per_tag_installation_site_and_enterprise(
    env_any: tuple[Runtime, Tokens, httpx.AsyncClient, str, int],
) -> None:
    rt, tokens, client, _, t0 = env_any
    headers = {"Authorization": f"Bearer {tokens.regulator}"}
    params = {"enterprise": "ecs", "from": _iso(t0), "to": _iso(t0 + 240 * US), "gap_minutes": "2"}
    r = await client.get("/api/v1/compliance", params=params, headers=headers)
    assert r.status_code == 200, r.text
    (site,) = r.json()
    period = site["period"]
    tags = {t["id"]: t for t in period["tag_figures"]}
    assert tags["T201.TT"]["completeness"] == 1.0 and tags["T201.TT"]["gaps"] == 0
    lt = tags["T201.LT"]
    assert lt["readings"] == 120 and lt["completeness"] == 0.5
    (gap,) = lt["gap_list"]
    assert (gap["from"][:19], gap["to"][:19], gap["minutes"]) == (
        _iso(t0 + 59 * US)[:19],
        _iso(t0 + 180 * US)[:19],
        2.0,
    )
    hi02 = period["installations"]["HI-02"]
    assert hi02["sis_trips"] == 1 and hi02["tags_with_gaps"] == 1
    hi01 = period["installations"]["HI-01"]
    assert hi01["alarms_by_priority"]["critical"] >= 1
    # acknowledged ten minutes later, after this period: unacknowledged within it
    assert hi01["handling"]["acknowledged"] == 0 and hi01["handling"]["unacknowledged"] >= 1
    # the V101 gas alarm was raised 25 h ago: at the end of this period it had been active for over 24 h
    assert {s["alarm_id"] for s in hi01["standing_alarms"]} == {ref("V101.GT1:gas.H"), ref("V101.GT1:gas.HH")}
    assert period["installations"]["HI-02"]["standing_alarms"] == []
    assert period["retention"]["ok"] and period["retention"]["configured_days"] >= 30
    ent = site["enterprise_period"]
    assert ent["sis_trips"] == 1 and ent["stable_threshold"] == 0.95 and ent["status"] in {"stable", "unstable"}
    inst = {i["id"]: i for i in site["installations"]}
    assert inst["HI-02"]["monitoring_missing"] == [] and inst["HI-02"]["gb18218"]["grade_zh"] == "一级"

    # the same figures once the 1-minute rollup covers the period (only the edges are then read raw)
    async with rt.db.pool.acquire() as conn:
        await refresh_rollups(conn, rt.db.caps)
        assert await conn.fetchval("SELECT count(*) FROM readings_1m") > 0
    rolled = (await client.get("/api/v1/compliance", params=params, headers=headers)).json()[0]["period"]
    assert rolled == period

    # over the last 30 days (the default): still standing, and the V102 leak acknowledged ten minutes on
    r = await client.get("/api/v1/compliance", params={"enterprise": "ecs"}, headers=headers)
    hi01 = r.json()[0]["period"]["installations"]["HI-01"]
    assert any(s["alarm_id"].startswith(ref("V101.GT1:")) for s in hi01["standing_alarms"])
    assert hi01["handling"]["acknowledged"] == 1 and hi01["handling"]["median_time_to_ack_s"] >= 500


async def test_unknown_format_or_period_is_a_422(env: tuple[Runtime, Tokens, httpx.AsyncClient, str, int]) -> None:
    _, tokens, client, _, _ = env
    headers = {"Authorization": f"Bearer {tokens.regulator}"}
    admin = {"Authorization": f"Bearer {tokens.admin}"}
    r = await client.get("/api/v1/compliance", params={"enterprise": "nobody", "format": "pdf"}, headers=admin)
    assert r.status_code == 404 and "nothing to report" in r.text
    bad = [{"format": "xml"}, {"format": "CSV "}, {"lang": "fr"}, {"from": "1h", "to": "2h"}, {"to": "soon"}]
    for params in [*bad, {"gap_minutes": "1"}, {"gap_minutes": "nan"}]:
        r = await client.get("/api/v1/compliance", params=params, headers=headers)
        assert r.status_code == 422, (params, r.text)


async def test_csv_and_html_reports(env: tuple[Runtime, Tokens, httpx.AsyncClient, str, int]) -> None:
    _, tokens, client, _, t0 = env
    headers = {"Authorization": f"Bearer {tokens.regulator}"}
    period = {"enterprise": "ecs", "from": _iso(t0), "to": _iso(t0 + 240 * US)}
    r = await client.get("/api/v1/compliance", params={**period, "format": "csv", "lang": "en"}, headers=headers)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(r.content.decode("utf-8-sig"))))
    by_inst = {row["installation"]: row for row in rows}
    assert set(by_inst) == {"HI-01", "HI-02", "HI-03", "*"}
    assert by_inst["HI-02"]["grade"] == "1" and by_inst["HI-02"]["R"] == "1440.0"
    assert by_inst["HI-02"]["sis_trips"] == "1" and by_inst["HI-02"]["uscc"] == "91320500MA1XK7Q211"
    assert by_inst["*"]["status"] in {"stable operation", "not in stable operation"}
    audit_head = by_inst["*"]["audit_head"]
    assert len(audit_head.split(":")[1]) == 64
    zh = await client.get("/api/v1/compliance", params={**period, "format": "csv"}, headers=headers)
    assert zh.content.decode("utf-8-sig").splitlines()[0].startswith("企业,统一社会信用代码,场所,重大危险源编号")
    page = await client.get("/api/v1/compliance", params={**period, "format": "html"}, headers=headers)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    text = page.text
    assert (
        "危险化学品重大危险源在线监测合规报告" in text and "稳定运行阈值" in text and audit_head.split(":")[1] in text
    )
    assert "T201.LT" not in text  # no gap over 10 minutes (the default)


def _pdftotext(pdf: bytes, tmp: Path) -> str:
    if shutil.which("pdftotext") is None:
        pytest.fail("pdftotext is missing: make test installs poppler-utils (deploy/services.sh)")
    path = tmp / "report.pdf"
    path.write_bytes(pdf)
    return subprocess.run(["pdftotext", "-layout", str(path), "-"], capture_output=True, text=True, check=True).stdout


async def test_pdf_report_has_chinese_headings_and_figures_and_the_cli_writes_the_same(
    env: tuple[Runtime, Tokens, httpx.AsyncClient, str, int], tmp_path: Path
) -> None:
    _, tokens, client, pg_url, t0 = env
    headers = {"Authorization": f"Bearer {tokens.regulator}"}
    period = {"enterprise": "ecs", "from": _iso(t0), "to": _iso(t0 + 240 * US), "gap_minutes": "2"}
    r = await client.get("/api/v1/compliance", params={**period, "format": "pdf"}, headers=headers)
    assert r.status_code == 200 and r.headers["content-type"] == "application/pdf" and r.content[:5] == b"%PDF-"
    text = await asyncio.to_thread(_pdftotext, r.content, tmp_path)
    for heading in (
        "危险化学品重大危险源在线监测合规报告",
        "统一社会信用代码",
        "重大危险源",
        "数据完整率",
        "监测配置缺项",
    ):
        assert heading in text, heading
    assert "91320500MA1XK7Q211" in text and "1440" in text and "一级" in text and "三级" in text
    assert "T201.LT" in text and "隐患自查自报" in text

    env_vars = {**os.environ, "HAZMON_DATABASE_URL": pg_url, "HAZMON_GATEWAYS": "[]"}
    out = tmp_path / "ecs.pdf"
    cmd = [sys.executable, "-m", "hazmon", "report", "compliance", "--enterprise", "ecs", "--from", period["from"]]
    cmd += ["--to", period["to"], "--gap-minutes", "2", "-o", str(out)]
    done = await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True, env=env_vars)
    assert done.returncode == 0, done.stderr
    cli_text = await asyncio.to_thread(_pdftotext, out.read_bytes(), tmp_path)
    assert "危险化学品重大危险源在线监测合规报告" in cli_text and "1440" in cli_text and "T201.LT" in cli_text
    en = tmp_path / "ecs-en.html"
    cmd = [sys.executable, "-m", "hazmon", "report", "compliance", "--enterprise", "ecs", "--lang", "en", "-o", str(en)]
    done = await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True, env=env_vars)
    assert done.returncode == 0, done.stderr
    assert "Major hazard installation monitoring compliance report" in en.read_text(encoding="utf-8")
    missing = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "hazmon", "report", "compliance", "--enterprise", "nobody", "-o", str(en)],
        capture_output=True,
        text=True,
        env=env_vars,
    )
    assert missing.returncode == 1 and "no registered site" in missing.stderr
    down = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "hazmon", "report", "compliance", "--enterprise", "ecs", "-o", str(en)],
        capture_output=True,
        text=True,
        env={**env_vars, "HAZMON_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"},
    )
    assert down.returncode == 1 and "cannot connect to the database" in down.stderr
    assert "Traceback" not in down.stderr


async def test_a_device_that_is_down_lowers_the_online_ratio_and_stable_operation(pg_url: str, tmp_path: Path) -> None:
    started = datetime.now(UTC)
    async with demo_api(pg_url, tmp_path, with_modbus=True) as (rt, tokens, client):
        headers = {"Authorization": f"Bearer {tokens.regulator}"}

        async def lost() -> list[dict[str, Any]]:
            r = await client.get("/api/v1/alarms", params={"site": SITE}, headers=headers)
            return [
                a
                for a in r.json()
                if a["condition"] == "comm.LOSS" and a["alarm_id"].startswith(f"{SITE}/demo-modbus.")
            ]

        alarms = await _until(lost, 30, "the Modbus PLCs' communication-loss alarms")
        await rt.flush_journal()
        # the PLCs are still down at the end of the period: offline from the alarm to its end
        end = datetime.now(UTC) + timedelta(seconds=60)
        params = {"enterprise": "ecs", "from": started.isoformat(), "to": end.isoformat()}
        r = await client.get("/api/v1/compliance", params=params, headers=headers)
        assert r.status_code == 200, r.text
        period = r.json()[0]["period"]
        # the figures name each device within its site: demo-tank-farm/demo-modbus.PLC-NH3 is demo-modbus.PLC-NH3
        down = {a["alarm_id"].rpartition(":")[0].removeprefix(f"{SITE}/") for a in alarms}
        assert down == {"demo-modbus.PLC-NH3", "demo-modbus.PLC-MEOH"}
        for device in down:
            assert period["devices"][device]["offline_s"] >= 60, period["devices"]
            assert period["devices"][device]["online_ratio"] < 1
        assert period["online_ratio"] < 1
        ent = r.json()[0]["enterprise_period"]
        assert ent["online_ratio"] == period["online_ratio"]
        assert ent["status"] == ("stable" if ent["online_ratio"] >= 0.95 else "unstable")
