"""Scenario tests: each rule kind and each lifecycle transition, with the expected events written out."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from hazmon.alarms.alarm import AlarmEvent, AlarmState, InvalidTransition, Priority, UnknownAlarm, split_alarm_id
from hazmon.alarms.compiler import compile_rules, load_rules
from hazmon.alarms.engine import AlarmEngine
from hazmon.plant.site import load_site
from hazmon.plant.tag import TagIndex
from hazmon.reading import ReadingBatch

DATA = Path(__file__).parent / "data"
S = 1_000_000
SITE = load_site(DATA / "mini-site.yaml")
INDEX = TagIndex.from_sites([SITE])  # tags named by reference: "mini/TK.LT"
KEYS = INDEX.scoped(SITE.id)  # the same keys under the site's own tag ids
PLC = "mini/gw-1.plc-1"  # a gateway's device, as the runtime names it in its site
RULES = compile_rules(load_rules([DATA / "mini-rules.yaml"], [SITE]), [SITE], INDEX)
N, A, U, R = AlarmState.NORMAL, AlarmState.ACTIVE_UNACK, AlarmState.ACTIVE_ACK, AlarmState.RTN_UNACK


def feed(engine: AlarmEngine, t: float, tag: str, *values: float, quality: int = 0) -> list[AlarmEvent]:
    """Readings of one tag at t, t+1 ms, ...; returns the events."""
    n = len(values)
    ts = [round(t * S) + i * 1000 for i in range(n)]
    return engine.process(ReadingBatch.from_columns([KEYS.key(tag)] * n, ts, list(values), [quality] * n))


def brief(events: list[AlarmEvent], stale: bool = False) -> list[tuple[str, str, str, str]]:
    """(alarm, action, from, to); stale alarms of silent tags left out unless asked for."""
    return [
        (e.alarm_id, e.action, str(e.prev_state), str(e.new_state))
        for e in events
        if stale or e.condition != "quality.STALE"
    ]


@pytest.fixture
def engine() -> AlarmEngine:
    e = AlarmEngine(RULES, max_shelve_s=3600)
    e.tick(0)  # the clock starts at 0: stale alarms count from here
    return e


def test_high_limit_with_deadband_on_delay_and_ack(engine: AlarmEngine) -> None:
    assert feed(engine, 1, "TK.LT", 5.0) == []
    assert feed(engine, 2, "TK.LT", 9.1) == [
        AlarmEvent("mini/TK.LT:level.H", "mini/TK.LT", "level.H", Priority.HIGH, N, A, 9.1, 8.0, 2 * S)
    ]  # HH waits for its 2 s on-delay
    assert brief(feed(engine, 3, "TK.LT", 9.05)) == []
    assert brief(engine.tick(4 * S)) == [("mini/TK.LT:level.HH", "activate", "normal", "active_unack")]
    assert brief(engine.acknowledge("mini/TK.LT:level.HH", "op", "ok", 5 * S)) == [
        ("mini/TK.LT:level.HH", "acknowledge", "active_unack", "active_ack")
    ]
    assert feed(engine, 6, "TK.LT", 8.6) == []  # inside the HH deadband (9 - 0.5)
    assert brief(feed(engine, 7, "TK.LT", 8.4)) == [("mini/TK.LT:level.HH", "clear", "active_ack", "normal")]
    assert feed(engine, 7.5, "TK.LT", 7.6) == []  # inside the H deadband (8 - 0.5)
    assert feed(engine, 8, "TK.LT", 7.4) == []  # H has a 1 s off-delay
    assert brief(engine.tick(9 * S)) == [("mini/TK.LT:level.H", "clear", "active_unack", "rtn_unack")]
    assert brief(engine.acknowledge("mini/TK.LT:level.H", "op", None, 10 * S)) == [
        ("mini/TK.LT:level.H", "acknowledge", "rtn_unack", "normal")
    ]


def test_spike_shorter_than_on_delay_raises_nothing(engine: AlarmEngine) -> None:
    assert brief(feed(engine, 1, "TK.LT", 9.5, 5.0)) == [("mini/TK.LT:level.H", "activate", "normal", "active_unack")]
    assert brief(engine.tick(5 * S)) == [("mini/TK.LT:level.H", "clear", "active_unack", "rtn_unack")]  # no HH


def test_low_limits_latching_reset_and_percent_limit(engine: AlarmEngine) -> None:
    ev = feed(engine, 1, "TK.LT", 0.9)  # L 2 (db 0.5), LL 10 % of 0..10 = 1, latched
    assert brief(ev) == [
        ("mini/TK.LT:level.L", "activate", "normal", "active_unack"),
        ("mini/TK.LT:level.LL", "activate", "normal", "active_unack"),
    ]
    assert ev[1].limit == 1.0
    with pytest.raises(InvalidTransition, match="still present"):
        engine.reset("mini/TK.LT:level.LL", "op", None, 2 * S)
    assert brief(feed(engine, 3, "TK.LT", 3.0)) == [("mini/TK.LT:level.L", "clear", "active_unack", "rtn_unack")]
    assert engine.get("mini/TK.LT:level.LL").state is A  # latched
    assert brief(engine.reset("mini/TK.LT:level.LL", "op", "pump restarted", 4 * S)) == [
        ("mini/TK.LT:level.LL", "reset", "active_unack", "rtn_unack")
    ]
    with pytest.raises(InvalidTransition, match="does not latch"):
        engine.reset("mini/TK.LT:level.L", "op", None, 5 * S)


def test_rate_of_change_uses_a_window_not_two_samples(engine: AlarmEngine) -> None:
    events: list[AlarmEvent] = []
    for i in range(8):  # +0.5 °C/s = 30 °C/min, with a single 3 °C spike between samples
        events += feed(engine, 1 + i, "TK.TT", 20.0 + 0.5 * i + (1.0 if i == 4 else 0.0))
    assert events == []  # the window (>= 3 s) keeps the spike below 60 °C/min
    for i in range(8, 14):  # now +2 °C/s = 120 °C/min
        events += feed(engine, 1 + i, "TK.TT", 23.5 + 2.0 * (i - 7))
    assert brief(events) == [("mini/TK.TT:temperature.ROC_UP", "activate", "normal", "active_unack")]
    assert events[0].value is not None and events[0].value >= 60.0
    assert events[0].limit == 60.0


def test_discrete_state_and_quality_alarms(engine: AlarmEngine) -> None:
    assert brief(feed(engine, 1, "TK.LSHH", 1.0)) == [
        ("mini/TK.LSHH:state.SIS_TRIP", "activate", "normal", "active_unack")
    ]
    assert brief(feed(engine, 2, "TK.PT", 11.0)) == [
        ("mini/TK.PT:pressure.HH", "activate", "normal", "active_unack"),
        ("mini/TK.PT:quality.OUT_OF_RANGE", "activate", "normal", "active_unack"),
    ]
    # H's 1 s on-delay began at 2 s; a bad reading completes no delay (and BAD waits for its own 1 s)
    assert brief(feed(engine, 3, "TK.PT", 5.0, quality=130)) == []
    assert brief(engine.tick(4 * S)) == [("mini/TK.PT:quality.BAD", "activate", "normal", "active_unack")]
    assert engine.get("mini/TK.PT:pressure.H").state is N  # nor does the clock, on the strength of bad data
    assert engine.get("mini/TK.PT:pressure.HH").state is A  # and bad data clears nothing
    nan = feed(engine, 5, "TK.LT", float("nan"))
    assert nan == []
    assert engine.get("mini/TK.LT:quality.BAD").state is N  # pending its on-delay


def test_frozen_and_stale(engine: AlarmEngine) -> None:
    for t in range(1, 7):
        events = feed(engine, t, "TK.LT", 5.0 + (0.001 if t % 2 else 0.0))  # within the 0.01 tolerance
        if t < 5:
            assert events == []
    assert engine.get("mini/TK.LT:quality.FROZEN").state is A
    assert brief(feed(engine, 7, "TK.LT", 5.5)) == [("mini/TK.LT:quality.FROZEN", "clear", "active_unack", "rtn_unack")]
    stale = engine.tick(13 * S)  # nothing from TK.LT for 6 s; the others never reported
    assert ("mini/TK.LT:quality.STALE", "activate", "normal", "active_unack") in brief(stale, stale=True)
    assert len(stale) == 6
    assert brief(feed(engine, 14, "TK.LT", 5.0), stale=True) == [
        ("mini/TK.LT:quality.STALE", "clear", "active_unack", "rtn_unack")
    ]


def test_realarm_when_left_unacknowledged(engine: AlarmEngine) -> None:
    feed(engine, 1, "AREA.GT", 30.0)
    assert brief(engine.tick(5 * S)) == []
    assert brief(engine.tick(6 * S)) == [("mini/AREA.GT:gas.H", "realarm", "active_unack", "active_unack")]
    assert brief(engine.tick(10 * S)) == []
    assert len(brief(engine.tick(11 * S))) == 1
    engine.acknowledge("mini/AREA.GT:gas.H", "op", None, 12 * S)
    assert brief(engine.tick(30 * S)) == []


def test_shelving_expires_and_reannunciates(engine: AlarmEngine) -> None:
    feed(engine, 1, "TK.LSHH", 1.0)
    ev = engine.shelve("mini/TK.LSHH:state.SIS_TRIP", "op", "proof test", 10, 2 * S)
    assert brief(ev) == [("mini/TK.LSHH:state.SIS_TRIP", "shelve", "active_unack", "shelved")]
    assert ev[0].shelved_until_us == 12 * S and ev[0].comment == "proof test"
    assert feed(engine, 3, "TK.LSHH", 0.0, 1.0) == []  # hidden while shelved
    with pytest.raises(InvalidTransition):
        engine.shelve("mini/TK.LSHH:state.SIS_TRIP", "op", "again", 10, 4 * S)
    with pytest.raises(ValueError, match="at most 1 h"):
        engine.shelve("mini/TK.PT:pressure.H", "op", "too long", 7200, 4 * S)
    with pytest.raises(ValueError, match="reason"):
        engine.shelve("mini/TK.PT:pressure.H", "op", " ", 60, 4 * S)
    assert brief(engine.tick(12 * S)) == [
        ("mini/TK.LSHH:state.SIS_TRIP", "unshelve", "shelved", "normal"),
        ("mini/TK.LSHH:state.SIS_TRIP", "activate", "normal", "active_unack"),
    ]


def test_unshelve_out_of_service_and_comment(engine: AlarmEngine) -> None:
    engine.shelve("mini/TK.PT:pressure.HH", "op", "calibration", 60, S)
    assert brief(engine.unshelve("mini/TK.PT:pressure.HH", "op", None, 2 * S)) == [
        ("mini/TK.PT:pressure.HH", "unshelve", "shelved", "normal")
    ]
    with pytest.raises(InvalidTransition, match="not shelved"):
        engine.unshelve("mini/TK.PT:pressure.HH", "op", None, 2 * S)
    engine.shelve("mini/TK.PT:pressure.HH", "op", "calibration", 60, 3 * S)
    assert brief(engine.remove_from_service("mini/TK.PT:pressure.HH", "tech", "transmitter replaced", 4 * S)) == [
        ("mini/TK.PT:pressure.HH", "remove_from_service", "shelved", "out_of_service")
    ]
    with pytest.raises(InvalidTransition, match="already"):
        engine.remove_from_service("mini/TK.PT:pressure.HH", "tech", "again", 5 * S)
    with pytest.raises(ValueError, match="reason"):
        engine.remove_from_service("mini/TK.PT:pressure.H", "tech", None, 5 * S)
    assert not any(e.condition == "pressure.HH" for e in feed(engine, 6, "TK.PT", 9.7))
    assert not any(e.action == "unshelve" for e in engine.tick(7 * S + 60 * S))  # removal dropped the shelf
    back = engine.return_to_service("mini/TK.PT:pressure.HH", "tech", None, 68 * S)
    assert brief(back) == [
        ("mini/TK.PT:pressure.HH", "return_to_service", "out_of_service", "normal"),
        ("mini/TK.PT:pressure.HH", "activate", "normal", "active_unack"),
    ]
    with pytest.raises(InvalidTransition, match="not out of service"):
        engine.return_to_service("mini/TK.PT:pressure.HH", "tech", None, 69 * S)
    note = engine.comment("mini/TK.PT:pressure.HH", "op", "field operator sent", 69 * S)
    assert brief(note) == [("mini/TK.PT:pressure.HH", "comment", "active_unack", "active_unack")]
    with pytest.raises(ValueError):
        engine.comment("mini/TK.PT:pressure.HH", "op", "", 9 * S)
    with pytest.raises(InvalidTransition, match="only an unacknowledged"):
        engine.acknowledge("mini/TK.LT:level.H", "op", None, 9 * S)


def test_suppression_by_design_while_out_of_service(engine: AlarmEngine) -> None:
    feed(engine, 1, "TK.IS", 1.0)
    feed(engine, 2, "TK.PT", 9.7)
    ev = feed(engine, 3, "TK.IS", 0.0)
    assert ("mini/TK.PT:pressure.HH", "suppress", "active_unack", "suppressed") in brief(ev)
    assert all(e.new_state is AlarmState.SUPPRESSED for e in ev)
    assert not any(e.tag_id in ("mini/AREA.GT", "mini/TK.IS") for e in ev)  # gas detectors and the in-service tag stay
    assert feed(engine, 4, "TK.PT", 9.8) == []
    ev = feed(engine, 5, "TK.IS", 1.0)
    assert ("mini/TK.PT:pressure.HH", "unsuppress", "suppressed", "normal") in brief(ev)
    assert ("mini/TK.PT:pressure.HH", "activate", "normal", "active_unack") in brief(ev)


def test_communication_loss_is_one_alarm_not_a_flood(engine: AlarmEngine) -> None:
    keys = KEYS.keys_of(["TK.LT", "TK.PT"])
    engine.register_device(PLC, keys)
    feed(engine, 1, "TK.PT", 9.7)
    ev = engine.set_device_comm(PLC, False, 2 * S)
    assert brief(ev)[0] == (f"{PLC}:comm.LOSS", "activate", "normal", "active_unack")
    assert ev[0].tag_id is None and ev[0].priority is Priority.HIGH
    assert {e.action for e in ev[1:]} == {"suppress"} and {e.tag_id for e in ev[1:]} == {"mini/TK.LT", "mini/TK.PT"}
    assert engine.set_device_comm(PLC, False, 3 * S) == []
    stale = engine.tick(30 * S)
    assert stale and not any(e.tag_id in ("mini/TK.LT", "mini/TK.PT") for e in stale)  # suppressed, not a flood
    back = engine.set_device_comm(PLC, True, 31 * S)
    assert brief(back)[0] == (f"{PLC}:comm.LOSS", "clear", "active_unack", "rtn_unack")
    assert ("mini/TK.PT:pressure.HH", "activate", "normal", "active_unack") in brief(back)  # still high
    assert not any(e.condition == "quality.STALE" and e.action == "activate" for e in back)
    assert not any(
        e.tag_id in ("mini/TK.LT", "mini/TK.PT") for e in engine.tick(32 * S)
    )  # stale counts from restoration
    assert brief(engine.acknowledge(f"{PLC}:comm.LOSS", "op", None, 33 * S))[0][3] == "normal"
    with pytest.raises(UnknownAlarm):
        engine.set_device_comm("plc-9", False, S)
    with pytest.raises(ValueError):
        engine.register_device("plc-2", np.array([999]))


def test_several_readings_per_tag_old_and_unknown_readings(engine: AlarmEngine) -> None:
    key = KEYS.key("TK.PT")
    batch = ReadingBatch.from_columns([key, key, key, 999, -1], [3 * S, S, 2 * S, S, S], [5.0, 9.7, 5.0, 1.0, 1.0])
    assert brief(engine.process(batch)) == [
        ("mini/TK.PT:pressure.HH", "activate", "normal", "active_unack"),
        ("mini/TK.PT:pressure.HH", "clear", "active_unack", "rtn_unack"),
    ]
    assert engine.stats["unknown_tags"] == 2
    assert feed(engine, 2.5, "TK.PT", 9.9) == []
    assert engine.stats["old_readings"] == 1
    assert engine.process(ReadingBatch.empty()) == []
    assert engine.process(ReadingBatch.from_columns([999], [S], [1.0])) == []


def test_unknown_alarms_and_snapshots(engine: AlarmEngine) -> None:
    for bad in (
        "nope",
        "mini/TK.PT:pressure.LL",
        "mini/TK.PT:level.H",
        "mini/X:quality.BAD",
        "mini/TK.PT:state.X",
        "mini/TK.PT:quality.NO",
        "other/TK.PT:pressure.HH",  # the same tag id in a site the engine does not have
        "TK.PT:pressure.HH",  # a bare id: the engine knows alarms by their site-scoped ids only
    ):
        with pytest.raises(UnknownAlarm):
            engine.get(bad)
    assert str(UnknownAlarm("x")) == "unknown alarm 'x'"
    feed(engine, 1, "TK.PT", 9.7)
    snap = engine.get("mini/TK.PT:pressure.HH")
    assert (snap.state, snap.active, snap.acked, snap.value, snap.limit) == (A, True, False, 9.7, 9.5)
    other = AlarmEngine(RULES)
    assert other.restore([snap, *engine.current(), replace(snap, alarm_id="gone:x.Y")]) == 2
    assert other.stats["restore_unknown"] == 1
    assert [s.alarm_id for s in other.current()] == [s.alarm_id for s in engine.current()]
    assert other.nbytes() > 0


def test_restore_suppression_and_device_loss() -> None:
    first = AlarmEngine(RULES)
    first.register_device(PLC, KEYS.keys_of(["TK.LT"]))
    feed(first, 1, "TK.IS", 0.0)
    first.set_device_comm(PLC, False, 2 * S)
    second = AlarmEngine(RULES)
    second.register_device(PLC, KEYS.keys_of(["TK.LT"]))
    second.restore(first.current())
    assert second.get("mini/TK.PT:pressure.HH").state is AlarmState.SUPPRESSED
    assert second.get(f"{PLC}:comm.LOSS").state is A
    ev = feed(second, 3, "TK.IS", 1.0)
    assert ("mini/TK.PT:pressure.HH", "unsuppress", "suppressed", "normal") in brief(ev)
    assert second.get("mini/TK.LT:level.H").state is AlarmState.SUPPRESSED  # still: its PLC is lost


def test_restore_masks_and_sites_without_in_service_tags(engine: AlarmEngine) -> None:
    engine.remove_from_service("mini/TK.PT:pressure.H", "tech", "replaced", S)
    engine.shelve("mini/TK.PT:pressure.HH", "op", "calibration", 60, S)
    restored = AlarmEngine(RULES)
    restored.restore(engine.current())
    assert restored.get("mini/TK.PT:pressure.H").state is AlarmState.OUT_OF_SERVICE
    assert restored.get("mini/TK.PT:pressure.HH").shelved_until_us == 61 * S
    with pytest.raises(UnknownAlarm):
        restored.get("plc-0:comm.LOSS")
    lost_until = replace(engine.get("mini/TK.PT:pressure.HH"), shelved_until_us=None)
    again = AlarmEngine(RULES, max_shelve_s=100)
    again.restore([lost_until])  # a shelved alarm without its end time: the maximum applies
    assert again.get("mini/TK.PT:pressure.HH").shelved_until_us == S + 100 * S
    bare = compile_rules(load_rules([DATA / "mini-rules.yaml"], [SITE]), [SITE], INDEX)
    bare.in_service_rows = bare.in_service_rows[:0]
    bare.dependents_ptr = bare.dependents_ptr[:1]
    plain = AlarmEngine(bare)
    assert brief(feed(plain, 1, "TK.IS", 0.0)) == []  # no equipment to suppress


def test_a_live_source_that_reports_changes_only_is_not_stale(engine: AlarmEngine) -> None:
    """An OPC UA subscription sends nothing for a value that does not change; while the server is
    alive, the runtime says so and the tag does not go stale."""
    feed(engine, 1, "TK.LT", 5.0)
    key = KEYS.key("TK.LT")
    engine.refresh_stale([key], 5 * S)  # stale after 5 s: not at 9 s, 4 s after the sign of life
    assert not any(e.alarm_id == "mini/TK.LT:quality.STALE" for e in engine.tick(9 * S))
    stale = engine.tick(12 * S)  # 7 s since the last sign of life
    assert ("mini/TK.LT:quality.STALE", "activate", "normal", "active_unack") in brief(stale, stale=True)
    engine.refresh_stale([key], 13 * S)
    assert ("mini/TK.LT:quality.STALE", "clear", "active_unack", "rtn_unack") in brief(engine.tick(13 * S), stale=True)


def test_an_alarm_id_splits_at_its_last_colon() -> None:
    """Owners may hold colons (an OPC UA endpoint as device id, a node id as tag id); conditions never do."""
    assert split_alarm_id("V101.LT:level.HH") == ("V101.LT", "level.HH")
    assert split_alarm_id("demo-tank-farm/V101.LT:level.HH") == ("demo-tank-farm/V101.LT", "level.HH")
    assert split_alarm_id("demo-tank-farm/gw-1.plc-1:comm.LOSS") == ("demo-tank-farm/gw-1.plc-1", "comm.LOSS")
    assert split_alarm_id("opc.tcp://10.0.0.7:4840:comm.LOSS") == ("opc.tcp://10.0.0.7:4840", "comm.LOSS")
    assert split_alarm_id("ns=2;s=V101:LT:level.H") == ("ns=2;s=V101:LT", "level.H")
    for bad in ("V101.LT", "V101.LT:", ":level.HH", ""):
        with pytest.raises(UnknownAlarm):
            split_alarm_id(bad)
