"""The alarm journal on a real PostgreSQL: append-only, current state, and engine restore after a restart."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from api_helpers import demo_runtime, ingest, ref
from hazmon.alarms.alarm import AlarmEvent, AlarmState, Priority
from hazmon.alarms.compiler import compile_rules, load_rules
from hazmon.alarms.engine import AlarmEngine
from hazmon.alarms.journal import JournalError, append_events, history, load_current, to_datetime
from hazmon.alarms.pending import AlarmSpool, Pending
from hazmon.plant.site import load_site
from hazmon.plant.tag import TagIndex, tag_ref
from hazmon.reading import ReadingBatch, now_us
from hazmon.recorder import JOURNAL_OWNER
from hazmon.runtime import ALARM_SPOOL_FILE, Actor

DATA = Path(__file__).parent / "data"
S = 1_000_000
T0 = 1_767_225_600 * S  # 2026-01-01 00:00 UTC
SITE = load_site(DATA / "mini-site.yaml")
INDEX = TagIndex.from_sites([SITE])  # tags named by reference: "mini/TK.PT"
KEYS = INDEX.scoped(SITE.id)  # the same keys under the site's own tag ids
RULES = compile_rules(load_rules([DATA / "mini-rules.yaml"], [SITE]), [SITE], INDEX)
SITE_OF = {tag_ref(SITE.id, t.id): SITE.id for t in SITE.tags}.get  # as the runtime's site_of


def batch(t: int, **values: float) -> ReadingBatch:
    return ReadingBatch.from_columns([KEYS.key(k.replace("_", ".")) for k in values], t, list(values.values()))


def normal(t: int) -> ReadingBatch:
    return batch(t, TK_LT=5.0, TK_TT=20.0, TK_PT=5.0, TK_LSHH=0, TK_IS=1, AREA_GT=0.0)


async def test_restart_keeps_acknowledged_and_active_alarms(pg_url: str) -> None:
    conn = await asyncpg.connect(pg_url)
    try:
        engine = AlarmEngine(RULES)
        events = engine.process(normal(T0))
        events += engine.process(batch(T0 + S, TK_PT=9.7, AREA_GT=30.0))  # PT HH now, gas H (latched)
        events += engine.tick(T0 + 3 * S)  # PT H after its 1 s on-delay
        events += engine.acknowledge("mini/TK.PT:pressure.HH", "li.wei", "relief valve checked", T0 + 4 * S)
        events += engine.shelve("mini/TK.LT:quality.STALE", "li.wei", "transmitter swap", 3600, T0 + 4 * S)
        events += engine.comment("mini/TK.LT:quality.STALE", "li.wei", "new transmitter ordered", T0 + 5 * S)
        await append_events(conn, events, SITE_OF)
        before = {s.alarm_id: s for s in engine.current()}
        assert before["mini/TK.PT:pressure.HH"].state is AlarmState.ACTIVE_ACK
        assert before["mini/TK.PT:pressure.H"].state is AlarmState.ACTIVE_UNACK
        assert before["mini/AREA.GT:gas.H"].state is AlarmState.ACTIVE_UNACK

        # restart: a new engine, state from the database
        restored = AlarmEngine(RULES)
        assert restored.restore(await load_current(conn)) == len(before)
        after = {s.alarm_id: s for s in restored.current()}
        saved = {s.alarm_id: s.tag_id for s in await load_current(conn)}
        assert saved["mini/TK.PT:pressure.HH"] == "mini/TK.PT"  # the tag's reference again, from its id and site
        assert {a: s.state for a, s in after.items()} == {a: s.state for a, s in before.items()}
        assert after["mini/TK.PT:pressure.HH"].user == "li.wei"
        assert after["mini/TK.LT:quality.STALE"].shelved_until_us == T0 + 4 * S + 3600 * S

        # the same readings again raise nothing twice; a cleared value clears
        again = restored.process(batch(T0 + 10 * S, TK_PT=9.7, AREA_GT=30.0))
        assert [e for e in again if e.action == "activate"] == []
        cleared = restored.process(batch(T0 + 11 * S, TK_PT=5.0))
        assert [(e.alarm_id, e.new_state) for e in cleared] == [("mini/TK.PT:pressure.HH", AlarmState.NORMAL)]
        cleared += restored.tick(T0 + 14 * S)  # H has a 2 s off-delay
        assert ("mini/TK.PT:pressure.H", AlarmState.RTN_UNACK) in [(e.alarm_id, e.new_state) for e in cleared]
        await append_events(conn, cleared, SITE_OF)
        states = {s.alarm_id: s.state for s in await load_current(conn)}
        assert "mini/TK.PT:pressure.HH" not in states  # back to normal: not current any more
        assert states["mini/TK.PT:pressure.H"] is AlarmState.RTN_UNACK
    finally:
        await conn.close()


async def test_journal_is_append_only_and_pages_newest_first(pg_url: str) -> None:
    conn = await asyncpg.connect(pg_url)
    try:
        engine = AlarmEngine(RULES)
        events = engine.process(normal(T0)) + engine.process(batch(T0 + S, TK_PT=9.7))
        events += engine.acknowledge("mini/TK.PT:pressure.HH", "wang.fang", "seen", T0 + 2 * S)
        assert await append_events(conn, events, SITE_OF) == 2
        rows = await history(conn, site=SITE.id, limit=10)
        assert [(r["action"], r["user"]) for r in rows] == [("acknowledge", "wang.fang"), ("activate", None)]
        assert rows[1]["ts"] == to_datetime(T0 + S) and rows[1]["value"] == 9.7 and rows[1]["limit"] == 9.5
        # the row names the alarm by its site-scoped id, the tag by its own id beside its site
        assert (rows[1]["alarm_id"], rows[1]["tag_id"], rows[1]["site_id"]) == (
            "mini/TK.PT:pressure.HH",
            "TK.PT",
            "mini",
        )
        for tag in ("TK.PT", "mini/TK.PT"):  # the console's search by tag: its own id or its reference
            assert len(await history(conn, site=SITE.id, tag=tag)) == 2, tag
        assert await history(conn, site=SITE.id, tag="TK.LT") == []
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
        shelve = engine.shelve("mini/TK.PT:pressure.H", "li.wei", "calibration", 600, T0)
        note = engine.comment("mini/TK.PT:pressure.H", "li.wei", "calibrator on site", T0 + S)
        shelve2 = engine.shelve("mini/TK.PT:pressure.HH", "li.wei", "calibration", 900, T0)
        note2 = engine.comment("mini/TK.PT:pressure.HH", "li.wei", "calibrator on site", T0 + S)
        await append_events(conn, shelve + shelve2 + note2, SITE_OF)  # in one batch
        await append_events(conn, note, SITE_OF)  # in a later batch
        until = {s.alarm_id: s.shelved_until_us for s in await load_current(conn)}
        assert until == {"mini/TK.PT:pressure.H": T0 + 600 * S, "mini/TK.PT:pressure.HH": T0 + 900 * S}
    finally:
        await conn.close()


# ---------------------------------------------------------------------- refused writes, on a real runtime


async def _until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def _dead_letters(data_dir: Path) -> list[dict[str, Any]]:
    path = data_dir / "alarm-journal.dead-letter.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="ascii").splitlines()] if path.exists() else []


JOURNAL_ALARM = f"{JOURNAL_OWNER}:comm.LOSS"


async def test_a_refused_write_goes_to_the_dead_letter_file_and_blocks_nothing(pg_url: str, tmp_path: Path) -> None:
    async with demo_runtime(pg_url, tmp_path) as rt:
        assert rt.engine is not None
        await ingest(rt, {"V101.GT1": 30.0, "V102.GT1": 30.0})
        await rt.flush_journal()
        # A NUL that got past the API: PostgreSQL refuses U+0000 in text, whatever the retries.
        t0 = time.monotonic()
        refused = await rt.act(
            "comment", ref("V101.GT1:gas.H"), Actor("alice", "t1", "operator"), comment="bad\x00text"
        )
        assert refused.record == "dead-letter" and time.monotonic() - t0 < 5
        # operators are told: the journal's alarm stands
        assert rt.engine.get(JOURNAL_ALARM).state is AlarmState.ACTIVE_UNACK
        assert rt.recorder.dead_lettered == 1
        # and the next action is journaled and audited at once, not stuck behind the refused one
        ack = await rt.act("acknowledge", ref("V102.GT1:gas.H"), Actor("alice", "t1", "operator"))
        assert ack.record == "journaled"
        await ingest(rt, {"V103.GT1": 30.0})
        await rt.flush_journal()
        assert not (tmp_path / ALARM_SPOOL_FILE).exists()  # nothing left pending
    (dead,) = _dead_letters(tmp_path)
    assert dead["events"][0]["comment"] == "bad\x00text" and dead["audit"]["action"] == "alarm.comment"
    assert "refused by the database" in dead["reason"]
    conn = await asyncpg.connect(pg_url)
    try:
        journal_rows = {
            (r["alarm_id"], r["action"]) for r in await conn.fetch("SELECT alarm_id, action FROM alarm_journal")
        }
        audit_rows = [(r["action"], r["target"]) for r in await conn.fetch("SELECT action, target FROM audit_log")]
    finally:
        await conn.close()
    assert (ref("V101.GT1:gas.H"), "comment") not in journal_rows
    assert {
        (ref("V102.GT1:gas.H"), "acknowledge"),
        (ref("V103.GT1:gas.H"), "activate"),
        (JOURNAL_ALARM, "activate"),
    } <= journal_rows
    assert ("alarm.acknowledge", ref("V102.GT1:gas.H")) in audit_rows
    assert ("alarm.comment", ref("V101.GT1:gas.H")) not in audit_rows


async def test_start_up_never_fails_on_a_bad_pending_file(pg_url: str, tmp_path: Path) -> None:
    t = now_us()
    alarm, tag = ref("V101.GT1:gas.H"), ref("V101.GT1")  # as the engine of a previous run wrote them
    gas = AlarmEvent(
        alarm, tag, "gas.H", Priority.HIGH, AlarmState.NORMAL, AlarmState.ACTIVE_UNACK, 30.0, 25.0, t,
    )  # fmt: skip
    note = AlarmEvent(
        alarm, tag, "gas.H", Priority.HIGH, AlarmState.ACTIVE_UNACK, AlarmState.ACTIVE_UNACK,
        30.0, 25.0, t + 1, "bob", "nul\x00inside", "comment",
    )  # fmt: skip
    spool = AlarmSpool(tmp_path / ALARM_SPOOL_FILE)
    spool.append([Pending([gas]), Pending([note], {"actor": "bob", "action": "alarm.comment", "target": gas.alarm_id})])
    with spool.path.open("a", encoding="ascii") as f:
        f.write('{"seq": 3, "events": [{"alarm_id": "V1\n')  # torn by a crash
    async with demo_runtime(pg_url, tmp_path) as rt:
        assert rt.engine is not None
        # the readable, acceptable event was replayed before the engine restored its state
        assert rt.engine.get(alarm).state is AlarmState.ACTIVE_UNACK
        await _until(lambda: rt.engine is not None and rt.engine.get(JOURNAL_ALARM).active, 10, "the journal alarm")
    assert not spool.path.exists()
    reasons = [d["reason"] for d in _dead_letters(tmp_path)]
    assert len(reasons) == 2
    assert any("refused by the database" in r for r in reasons) and any("unreadable" in r for r in reasons)
    conn = await asyncpg.connect(pg_url)
    try:
        actions = [
            r["action"] for r in await conn.fetch("SELECT action FROM alarm_journal WHERE alarm_id = $1", gas.alarm_id)
        ]
    finally:
        await conn.close()
    assert actions == ["activate"]
