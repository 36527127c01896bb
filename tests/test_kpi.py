"""Alarm KPIs (EEMUA 191) computed from a journal written through the real database."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import asyncpg
import pytest

from hazmon.alarms.alarm import AlarmEvent, AlarmState, Priority
from hazmon.alarms.journal import append_events, to_datetime
from hazmon.alarms.kpi import compute_kpis
from hazmon.cli import main
from hazmon.commands.alarms import duration, render

S = 1_000_000
MIN = 60 * S
T0 = 1_767_225_600 * S  # 2026-01-01 00:00 UTC, aligned to 10 minutes


def activate(alarm_id: str, t: int, priority: Priority = Priority.LOW) -> AlarmEvent:
    """``alarm_id`` site-scoped, as the engine names it: ``plant-a/F0.LT:level.H`` (tag ``plant-a/F0.LT``)."""
    tag, _, cond = alarm_id.rpartition(":")
    return AlarmEvent(alarm_id, tag, cond, priority, AlarmState.NORMAL, AlarmState.ACTIVE_UNACK, 1.0, 0.5, t)


def clear(alarm_id: str, t: int) -> AlarmEvent:
    tag, _, cond = alarm_id.rpartition(":")
    return AlarmEvent(
        alarm_id, tag, cond, Priority.LOW, AlarmState.ACTIVE_UNACK, AlarmState.RTN_UNACK, 0.0, 0.5, t, action="clear"
    )


async def test_kpis_over_a_day(pg_url: str) -> None:
    events: list[AlarmEvent] = []
    # a flood: 12 alarms of different tags within minute 0..5 of the first interval
    events += [activate(f"plant-a/F{i}.LT:level.H", T0 + i * 20 * S, Priority.HIGH) for i in range(12)]
    events += [clear(f"plant-a/F{i}.LT:level.H", T0 + 30 * MIN) for i in range(12)]
    # chattering: one alarm 4 times within 50 s (in the 3rd interval), and one 3 times over 3 minutes (not)
    for i in range(4):
        events += [
            activate("plant-a/C.PT:pressure.H", T0 + 25 * MIN + i * 10 * S),
            clear("plant-a/C.PT:pressure.H", T0 + 25 * MIN + i * 10 * S + S),
        ]
    for i in range(3):
        events += [
            activate("plant-a/D.PT:pressure.H", T0 + 40 * MIN + i * 90 * S),
            clear("plant-a/D.PT:pressure.H", T0 + 40 * MIN + i * 90 * S + S),
        ]
    # a standing alarm since the start, and one that cleared
    events += [activate("plant-a/S.TT:temperature.HH", T0 + 60 * MIN, Priority.CRITICAL)]
    events += [
        activate("plant-a/X.TT:temperature.H", T0 + 61 * MIN, Priority.MEDIUM),
        clear("plant-a/X.TT:temperature.H", T0 + 62 * MIN),
    ]
    events.sort(key=lambda e: e.ts_us)
    conn = await asyncpg.connect(pg_url)
    try:
        await append_events(conn, events, lambda owner: None)  # each owner placed in its site by its reference
        await append_events(conn, [activate("plant-b/O.LT:level.H", T0 + MIN)], lambda owner: None)
        end = to_datetime(T0 + 26 * 60 * MIN)  # 26 hours after T0
        k = await compute_kpis(conn, "plant-a", timedelta(hours=26), end)
    finally:
        await conn.close()
    assert k["alarms"] == 12 + 4 + 3 + 1 + 1 == 21
    assert k["intervals_10min"] == 26 * 6
    assert k["max_per_10min"] == 12
    assert k["alarms_per_10min"] == round(21 / 156, 3)
    assert k["flood"] == {"intervals": 1, "time_s": 600, "share": round(1 / 156, 4)}
    assert k["chattering"] == [{"alarm_id": "plant-a/C.PT:pressure.H", "max_per_min": 4}]
    assert [s["alarm_id"] for s in k["standing"]] == ["plant-a/S.TT:temperature.HH"]
    assert k["standing"][0]["hours"] == 25.0
    assert k["top10"][0] == {"alarm_id": "plant-a/C.PT:pressure.H", "count": 4, "share": round(4 / 21, 4)}
    assert len(k["top10"]) == 10 and k["top10_share"] == round((4 + 3 + 8 * 1) / 21, 4)
    assert k["priority_mix"]["high"] == {"count": 12, "share": round(12 / 21, 4)}
    assert k["priority_mix"]["critical"]["count"] == 1 and k["priority_mix"]["low"]["count"] == 7
    json.dumps(k)  # the API serves it as JSON
    text = render(k)
    assert "flood (>= 10 in 10 min): 1 intervals" in text and "plant-a/C.PT:pressure.H: 4 in one minute" in text


def test_durations_parse_like_the_cli_documents() -> None:
    assert duration("30d") == timedelta(days=30)
    assert duration("90m") == timedelta(minutes=90)
    assert duration("1.5h") == timedelta(hours=1.5)


def test_cli_prints_kpis(pg_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    async def write() -> None:
        conn = await asyncpg.connect(pg_url)
        try:
            events = [activate(f"plant-a/A{i}.LT:level.H", T0 + i * S, Priority.HIGH) for i in range(3)]
            await append_events(conn, events, lambda owner: "plant-a")
        finally:
            await conn.close()

    asyncio.run(write())
    monkeypatch.setenv("HAZMON_DATABASE_URL", pg_url)
    until = to_datetime(T0 + 60 * MIN).isoformat()
    assert main(["alarms", "kpi", "--site", "plant-a", "--since", "2h", "--until", until]) == 0
    out = capsys.readouterr().out
    assert "alarms: 3 (0.25 per 10 min on average, at most 3)" in out
    assert "high 3 (100%)" in out
    assert main(["alarms", "kpi", "--site", "plant-a", "--since", "2h", "--until", until, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["alarms"] == 3
