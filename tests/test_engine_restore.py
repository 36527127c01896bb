"""Activation time and timers across acknowledge, comment, shelve and a restart from the journal."""

from __future__ import annotations

from pathlib import Path

import asyncpg

from hazmon.alarms.alarm import AlarmState
from hazmon.alarms.compiler import compile_rules, load_rules
from hazmon.alarms.engine import AlarmEngine
from hazmon.alarms.journal import append_events, load_current
from hazmon.plant.site import load_site
from hazmon.plant.tag import TagIndex, tag_ref
from hazmon.reading import ReadingBatch

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


def test_activation_time_survives_acknowledge_comment_and_shelve() -> None:
    engine = AlarmEngine(RULES, max_shelve_s=3600)
    engine.process(batch(T0, TK_PT=5.0))
    engine.process(batch(T0 + 2 * S, TK_PT=9.7))  # HH (no on-delay) at T0 + 2 s
    engine.acknowledge("mini/TK.PT:pressure.HH", "li.wei", None, T0 + 5 * S)
    engine.comment("mini/TK.PT:pressure.HH", "li.wei", "relief valve checked", T0 + 6 * S)
    snap = engine.get("mini/TK.PT:pressure.HH")
    assert (snap.state, snap.since_us, snap.activated_us) == (AlarmState.ACTIVE_ACK, T0 + 6 * S, T0 + 2 * S)
    engine.shelve("mini/TK.PT:pressure.HH", "li.wei", "calibration", 60, T0 + 7 * S)
    assert engine.get("mini/TK.PT:pressure.HH").activated_us == T0 + 2 * S
    engine.process(batch(T0 + 8 * S, TK_PT=5.0))
    engine.unshelve("mini/TK.PT:pressure.HH", "li.wei", None, T0 + 9 * S)  # back to normal: no activation time
    snap = engine.get("mini/TK.PT:pressure.HH")
    assert (snap.state, snap.activated_us) == (AlarmState.NORMAL, None)
    engine.process(batch(T0 + 10 * S, TK_PT=9.8))
    assert engine.get("mini/TK.PT:pressure.HH").activated_us == T0 + 10 * S
    engine.process(batch(T0 + 11 * S, TK_PT=5.0))  # cleared, unacknowledged: still shows when it began
    snap = engine.get("mini/TK.PT:pressure.HH")
    assert (snap.state, snap.activated_us) == (AlarmState.RTN_UNACK, T0 + 10 * S)


async def test_restart_keeps_activation_time_and_does_not_complete_a_pending_on_delay(pg_url: str) -> None:
    conn = await asyncpg.connect(pg_url)
    try:
        engine = AlarmEngine(RULES)
        events = engine.process(batch(T0, TK_PT=5.0, TK_LT=5.0))
        events += engine.process(batch(T0 + S, TK_PT=9.7, TK_LT=9.2))  # PT HH now; LT HH waits 2 s
        events += engine.acknowledge("mini/TK.PT:pressure.HH", "li.wei", "seen", T0 + 3 * S // 2)
        events += engine.comment("mini/TK.PT:pressure.HH", "li.wei", "relief valve checked", T0 + 2 * S)
        await append_events(conn, events, SITE_OF)

        restored = AlarmEngine(RULES)  # restart at T0 + 2.5 s: LT's HH on-delay was 1.5 s in
        restored.restore(await load_current(conn))
        snap = restored.get("mini/TK.PT:pressure.HH")
        assert (snap.state, snap.since_us, snap.activated_us) == (AlarmState.ACTIVE_ACK, T0 + 2 * S, T0 + S)
        # the first reading after the restart starts the on-delay afresh: no HH at T0 + 3 s
        ev = restored.process(batch(T0 + 3 * S, TK_LT=9.2))
        assert not any(e.alarm_id == "mini/TK.LT:level.HH" and e.action == "activate" for e in ev)
        ev = restored.process(batch(T0 + 5 * S, TK_LT=9.2))  # 2 s after the first good sample
        assert [e.action for e in ev if e.alarm_id == "mini/TK.LT:level.HH"] == ["activate"]
    finally:
        await conn.close()


async def test_a_device_with_colons_in_its_id_is_journaled_under_its_site(pg_url: str) -> None:
    conn = await asyncpg.connect(pg_url)
    try:
        engine = AlarmEngine(RULES)
        device = f"{SITE.id}/opc.tcp://10.0.0.7:4840"  # a device owner of the site, with colons
        engine.register_device(device, KEYS.keys_of(["TK.LT"]))
        events = engine.set_device_comm(device, False, T0)
        await append_events(conn, events, {device: SITE.id, **{tag_ref(SITE.id, t.id): SITE.id for t in SITE.tags}}.get)
        site = await conn.fetchval("SELECT site_id FROM alarm_journal WHERE alarm_id = $1", f"{device}:comm.LOSS")
        assert site == SITE.id
        restored = AlarmEngine(RULES)
        restored.register_device(device, KEYS.keys_of(["TK.LT"]))
        restored.restore(await load_current(conn))
        snap = restored.get(f"{device}:comm.LOSS")
        assert (snap.state, snap.activated_us) == (AlarmState.ACTIVE_UNACK, T0)
    finally:
        await conn.close()


def _state(engine: AlarmEngine) -> tuple[object, ...]:
    """Everything an operator action may change, to compare engines exactly."""
    c = engine.cells
    words = tuple(getattr(c, w).tobytes() for w in ("cond", "pend", "alarm", "acked", "oos", "shelf", "masked"))
    times = (c.run_ts.tobytes(), c.annunc_ts.tobytes(), c.activated_ts.tobytes())
    return words, times, dict(engine._shelved_until), dict(engine._meta)


def test_an_action_that_cannot_be_recorded_is_put_back_exactly() -> None:
    """An engine shard undoes an action whose journal write failed (hazmon.cluster.ops): after
    ``put_back`` the engine is as it was, bit for bit, and judges the next readings as one that never
    had the action — for every action, from the states it applies to."""
    pt, lt = "mini/TK.PT:pressure.HH", "mini/TK.LT:level.HH"
    actions = [
        ("acknowledge", pt, lambda e, t: e.acknowledge(pt, "li.wei", "seen", t)),
        ("shelve", pt, lambda e, t: e.shelve(pt, "li.wei", "calibration", 600, t)),
        ("remove_from_service", pt, lambda e, t: e.remove_from_service(pt, "li.wei", "repair", t)),
        ("comment", lt, lambda e, t: e.comment(lt, "li.wei", "checked", t)),
    ]
    for name, alarm_id, act in actions:
        engine, twin = AlarmEngine(RULES, max_shelve_s=3600), AlarmEngine(RULES, max_shelve_s=3600)
        for e in (engine, twin):
            e.process(batch(T0, TK_PT=5.0, TK_LT=5.0))
            e.process(batch(T0 + S, TK_PT=9.7, TK_LT=5.0))  # PT HH unacknowledged
        before = _state(engine)
        saved = engine.save(alarm_id)
        assert act(engine, T0 + 2 * S), name
        assert _state(engine) != before, name
        engine.put_back(saved)
        assert _state(engine) == before, name
        assert engine.get(alarm_id) == twin.get(alarm_id), name
        for t, pv in ((3, 5.0), (4, 9.9), (5, 5.0)):
            assert engine.process(batch(T0 + t * S, TK_PT=pv)) == twin.process(batch(T0 + t * S, TK_PT=pv)), name
    # from shelved and out of service: unshelve and return to service are put back too
    for masked, undo in (("shelve", "unshelve"), ("remove_from_service", "return_to_service")):
        engine = AlarmEngine(RULES, max_shelve_s=3600)
        engine.process(batch(T0, TK_PT=9.7))
        if masked == "shelve":
            engine.shelve(pt, "li.wei", "calibration", 600, T0 + S)
        else:
            engine.remove_from_service(pt, "li.wei", "repair", T0 + S)
        before = _state(engine)
        saved = engine.save(pt)
        getattr(engine, undo)(pt, "li.wei", None, T0 + 2 * S)
        engine.put_back(saved)
        assert _state(engine) == before, undo
