"""The alarm journal on a real PostgreSQL: append-only, current state, and engine restore after a restart."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from hazmon.alarms.alarm import AlarmState
from hazmon.alarms.compiler import compile_rules, load_rules
from hazmon.alarms.engine import AlarmEngine
from hazmon.alarms.journal import JournalError, append_events, history, load_current, to_datetime
from hazmon.plant.site import load_site
from hazmon.plant.tag import TagIndex
from hazmon.reading import ReadingBatch

DATA = Path(__file__).parent / "data"
S = 1_000_000
T0 = 1_767_225_600 * S  # 2026-01-01 00:00 UTC
SITE = load_site(DATA / "mini-site.yaml")
INDEX = TagIndex.from_sites([SITE])
RULES = compile_rules(load_rules([DATA / "mini-rules.yaml"], [SITE]), [SITE], INDEX)
SITE_OF = {t.id: SITE.id for t in SITE.tags}.get


def batch(t: int, **values: float) -> ReadingBatch:
    return ReadingBatch.from_columns([INDEX.key(k.replace("_", ".")) for k in values], t, list(values.values()))


def normal(t: int) -> ReadingBatch:
    return batch(t, TK_LT=5.0, TK_TT=20.0, TK_PT=5.0, TK_LSHH=0, TK_IS=1, AREA_GT=0.0)


async def test_restart_keeps_acknowledged_and_active_alarms(pg_url: str) -> None:
    conn = await asyncpg.connect(pg_url)
    try:
        engine = AlarmEngine(RULES)
        events = engine.process(normal(T0))
        events += engine.process(batch(T0 + S, TK_PT=9.7, AREA_GT=30.0))  # PT HH now, gas H (latched)
        events += engine.tick(T0 + 3 * S)  # PT H after its 1 s on-delay
        events += engine.acknowledge("TK.PT:pressure.HH", "li.wei", "relief valve checked", T0 + 4 * S)
        events += engine.shelve("TK.LT:quality.STALE", "li.wei", "transmitter swap", 3600, T0 + 4 * S)
        events += engine.comment("TK.LT:quality.STALE", "li.wei", "new transmitter ordered", T0 + 5 * S)
        await append_events(conn, events, SITE_OF)
        before = {s.alarm_id: s for s in engine.current()}
        assert before["TK.PT:pressure.HH"].state is AlarmState.ACTIVE_ACK
        assert before["TK.PT:pressure.H"].state is AlarmState.ACTIVE_UNACK
        assert before["AREA.GT:gas.H"].state is AlarmState.ACTIVE_UNACK

        # restart: a new engine, state from the database
        restored = AlarmEngine(RULES)
        assert restored.restore(await load_current(conn)) == len(before)
        after = {s.alarm_id: s for s in restored.current()}
        assert {a: s.state for a, s in after.items()} == {a: s.state for a, s in before.items()}
        assert after["TK.PT:pressure.HH"].user == "li.wei"
        assert after["TK.LT:quality.STALE"].shelved_until_us == T0 + 4 * S + 3600 * S

        # the same readings again raise nothing twice; a cleared value clears
        again = restored.process(batch(T0 + 10 * S, TK_PT=9.7, AREA_GT=30.0))
        assert [e for e in again if e.action == "activate"] == []
        cleared = restored.process(batch(T0 + 11 * S, TK_PT=5.0))
        assert [(e.alarm_id, e.new_state) for e in cleared] == [("TK.PT:pressure.HH", AlarmState.NORMAL)]
        cleared += restored.tick(T0 + 14 * S)  # H has a 2 s off-delay
        assert ("TK.PT:pressure.H", AlarmState.RTN_UNACK) in [(e.alarm_id, e.new_state) for e in cleared]
        await append_events(conn, cleared, SITE_OF)
        states = {s.alarm_id: s.state for s in await load_current(conn)}
        assert "TK.PT:pressure.HH" not in states  # back to normal: not current any more
        assert states["TK.PT:pressure.H"] is AlarmState.RTN_UNACK
    finally:
        await conn.close()


async def test_journal_is_append_only_and_pages_newest_first(pg_url: str) -> None:
    conn = await asyncpg.connect(pg_url)
    try:
        engine = AlarmEngine(RULES)
        events = engine.process(normal(T0)) + engine.process(batch(T0 + S, TK_PT=9.7))
        events += engine.acknowledge("TK.PT:pressure.HH", "wang.fang", "seen", T0 + 2 * S)
        assert await append_events(conn, events, SITE_OF) == 2
        rows = await history(conn, site=SITE.id, limit=10)
        assert [(r["action"], r["user"]) for r in rows] == [("acknowledge", "wang.fang"), ("activate", None)]
        assert rows[1]["ts"] == to_datetime(T0 + S) and rows[1]["value"] == 9.7 and rows[1]["limit"] == 9.5
        assert len(await history(conn, site=SITE.id, limit=1, offset=1)) == 1
        assert await history(conn, site="elsewhere") == []
        with pytest.raises(asyncpg.PostgresError, match="append-only"):
            await conn.execute("UPDATE alarm_journal SET comment = 'rewritten'")
        with pytest.raises(asyncpg.PostgresError, match="append-only"):
            await conn.execute("DELETE FROM alarm_journal")
        with pytest.raises(asyncpg.PostgresError, match="append-only"):
            await conn.execute("TRUNCATE alarm_journal")
        assert await conn.fetchval("SELECT count(*) FROM alarm_journal") == 2
    finally:
        await conn.close()


async def test_a_failed_write_leaves_neither_journal_nor_state(pg_url: str) -> None:
    conn = await asyncpg.connect(pg_url)
    try:
        engine = AlarmEngine(RULES)
        events = engine.process(normal(T0)) + engine.process(batch(T0 + S, TK_PT=9.7))
        await conn.execute("ALTER TABLE alarm_state ADD CONSTRAINT no_hh CHECK (condition <> 'pressure.HH')")
        with pytest.raises(JournalError):
            await append_events(conn, events, SITE_OF)
        assert await conn.fetchval("SELECT count(*) FROM alarm_journal") == 0
    finally:
        await conn.close()


async def test_shelving_end_survives_later_comments(pg_url: str) -> None:
    conn = await asyncpg.connect(pg_url)
    try:
        engine = AlarmEngine(RULES)
        shelve = engine.shelve("TK.PT:pressure.H", "li.wei", "calibration", 600, T0)
        note = engine.comment("TK.PT:pressure.H", "li.wei", "calibrator on site", T0 + S)
        shelve2 = engine.shelve("TK.PT:pressure.HH", "li.wei", "calibration", 900, T0)
        note2 = engine.comment("TK.PT:pressure.HH", "li.wei", "calibrator on site", T0 + S)
        await append_events(conn, shelve + shelve2 + note2, SITE_OF)  # in one batch
        await append_events(conn, note, SITE_OF)  # in a later batch
        until = {s.alarm_id: s.shelved_until_us for s in await load_current(conn)}
        assert until == {"TK.PT:pressure.H": T0 + 600 * S, "TK.PT:pressure.HH": T0 + 900 * S}
    finally:
        await conn.close()
