"""Differential tests: the vectorized engine and the plain reference produce identical events.

Hypothesis draws streams of batches (noise around the limits, spikes, NaN and infinities, bad
quality, gaps, several readings of one tag per batch, readings out of order), clock ticks and
operator actions at random times, and feeds the same stream to both.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alarm_reference import ReferenceEngine, all_alarm_ids
from hazmon.alarms.alarm import AlarmEvent, AlarmState, InvalidTransition
from hazmon.alarms.compiler import CompiledRules, compile_rules, load_rules
from hazmon.alarms.engine import AlarmEngine
from hazmon.alarms.rules import K
from hazmon.plant.site import load_site
from hazmon.plant.tag import TagIndex
from hazmon.reading import ReadingBatch

DATA = Path(__file__).parent / "data"
S = 1_000_000
SITE = load_site(DATA / "mini-site.yaml")
INDEX = TagIndex.from_sites([SITE])  # tags named by reference: "mini/TK.LT"
KEYS = INDEX.scoped(SITE.id)  # the same keys under the site's own tag ids
RULES = compile_rules(load_rules([DATA / "mini-rules.yaml"], [SITE]), [SITE], INDEX)
DEVICES = {"mini/gw-1.plc-1": ["TK.LT", "TK.PT"], "mini/gw-1.plc-2": ["TK.PT", "AREA.GT"]}  # site/gateway.device
ALARMS = all_alarm_ids(RULES) + [f"{d}:comm.LOSS" for d in DEVICES]
LATCHED = ["mini/TK.LT:level.LL", "mini/TK.LSHH:state.SIS_TRIP", "mini/AREA.GT:gas.H", "mini/AREA.GT:gas.HH"]

# values near each tag's limits, and some garbage
INTERESTING = {
    "TK.LT": [0.5, 0.99, 1.0, 1.01, 1.5, 2.0, 2.4, 2.6, 5.0, 7.5, 7.9, 8.0, 8.4, 8.6, 9.0, 9.2, 10.3, -0.5],
    "TK.TT": [20.0, 21.0, 23.0, 25.0, 30.0, 40.0, 59.9, 60.0, 80.0, 101.0],
    "TK.PT": [1.0, 8.9, 9.0, 9.4, 9.5, 9.6, 10.0, 11.0],
    "TK.LSHH": [0.0, 1.0, 2.0],
    "TK.IS": [0.0, 1.0],
    "AREA.GT": [0.0, 10.0, 24.0, 24.5, 25.0, 30.0, 49.0, 50.0, 60.0],
}
TAGS = list(INTERESTING)


@st.composite
def readings(draw: st.DrawFn) -> tuple[int, int, float, int]:
    tag = draw(st.sampled_from(TAGS))
    value = draw(
        st.one_of(
            st.sampled_from(INTERESTING[tag]),
            st.floats(-20, 120, allow_nan=False),
            st.sampled_from([math.nan, math.inf, -math.inf]),
        )
    )
    quality = draw(st.sampled_from([0, 0, 0, 0, 64, 129, 130]))
    offset = draw(st.integers(-2 * S, 2 * S))
    return KEYS.key(tag), offset, value, quality


step = st.one_of(
    st.tuples(st.just("batch"), st.integers(0, 3 * S), st.lists(readings(), min_size=1, max_size=12)),
    st.tuples(st.just("tick"), st.integers(0, 8 * S), st.none()),
    st.tuples(st.just("comm"), st.integers(0, 3 * S), st.tuples(st.sampled_from(list(DEVICES)), st.booleans())),
    st.tuples(
        st.just("op"),
        st.integers(0, 2 * S),
        st.tuples(
            st.sampled_from(["acknowledge", "reset", "shelve", "unshelve", "remove_from_service", "return_to_service"]),
            st.sampled_from(ALARMS),
            st.sampled_from([1.0, 4.0, 30.0]),
        ),
    ),
)


def run_both(steps: list[tuple[str, int, object]], rules: CompiledRules = RULES) -> set[str]:
    """Feed the steps to both engines, comparing events at each; returns the actions seen."""
    engine = AlarmEngine(rules, max_shelve_s=20)
    ref = ReferenceEngine(rules, max_shelve_s=20)
    for device, tags in DEVICES.items():
        engine.register_device(device, KEYS.keys_of(tags))
        ref.register_device(device, KEYS.keys_of(tags).tolist())
    now = 1_700_000_000 * S
    actions: set[str] = set()
    events: list[AlarmEvent] = []
    for kind, dt, arg in steps:
        now += dt
        if kind == "batch":
            assert isinstance(arg, list)
            batch = ReadingBatch.from_columns(
                [r[0] for r in arg], [now + r[1] for r in arg], [r[2] for r in arg], [r[3] for r in arg]
            )
            events = engine.process(batch)
            assert events == ref.process(batch)
        elif kind == "tick":
            events = engine.tick(now)
            assert events == ref.tick(now)
        elif kind == "comm":
            assert isinstance(arg, tuple)
            events = engine.set_device_comm(arg[0], arg[1], now)
            assert events == ref.set_device_comm(arg[0], arg[1], now)
        else:
            assert isinstance(arg, tuple)
            op, alarm_id, duration = arg
            args = (alarm_id, "op", "why", duration, now) if op == "shelve" else (alarm_id, "op", "why", now)
            got = expected = None
            try:
                expected = getattr(ref, op)(*args)
            except (InvalidTransition, ValueError) as e:
                expected = type(e)
            try:
                got = getattr(engine, op)(*args)
            except (InvalidTransition, ValueError) as e:
                got = type(e)
            assert got == expected
            events = got if isinstance(got, list) else []
        actions |= {e.action for e in events}
    assert engine.stats["old_readings"] == ref.old_readings
    states = {s.alarm_id: s.state for s in engine.current()}
    for alarm_id in ALARMS:
        row, col = ref._cell(alarm_id)
        assert states.get(alarm_id, AlarmState.NORMAL) == ref.cells[row][col].display(), alarm_id
    return actions


FAST = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(step, min_size=1, max_size=40))
def test_random_streams_give_identical_events(steps: list[tuple[str, int, object]]) -> None:
    run_both(steps)


@FAST
@given(
    st.lists(
        st.tuples(st.just("batch"), st.integers(0, 2 * S), st.lists(readings(), min_size=4, max_size=30)),
        min_size=1,
        max_size=15,
    )
)
def test_crowded_batches_with_repeats_and_old_readings(steps: list[tuple[str, int, object]]) -> None:
    run_both(steps)


@st.composite
def ramps(draw: st.DrawFn) -> list[tuple[str, int, object]]:
    """Steady sampling of every tag with noise and spikes: delays, ROC windows and freezing matter."""
    steps: list[tuple[str, int, object]] = []
    base = {t: draw(st.sampled_from(INTERESTING[t])) for t in TAGS}
    slope = draw(st.floats(-3, 3))
    for i in range(draw(st.integers(5, 40))):
        batch = []
        for t in TAGS:
            if draw(st.integers(0, 9)) == 0:
                continue  # gap
            noise = draw(st.sampled_from([0.0, 0.0, 0.005, -0.005, 0.3, -0.3, 5.0]))
            value = base[t] + (slope * i if t in ("TK.TT", "TK.LT") else 0.0) + noise
            batch.append((KEYS.key(t), 0, value, 0))
        steps.append(("batch", draw(st.sampled_from([S // 2, S, S, 2 * S])), batch))
        if draw(st.integers(0, 4)) == 0:
            steps.append(("tick", draw(st.integers(0, S)), None))
    return steps


@FAST
@given(ramps())
def test_steady_sampling_with_noise(steps: list[tuple[str, int, object]]) -> None:
    run_both(steps)


def test_the_random_streams_reach_every_kind_of_event() -> None:
    """Guard against a vacuous differential test: a long random-ish stream makes every action."""
    rng = np.random.default_rng(7)
    steps: list[tuple[str, int, object]] = []
    ops = ["acknowledge", "reset", "shelve", "unshelve", "remove_from_service", "return_to_service"]
    for _ in range(3000):
        r = rng.random()
        if r < 0.7:
            batch = [
                (
                    KEYS.key(t),
                    int(rng.integers(-S, S)),
                    float(rng.choice(INTERESTING[t])),
                    int(rng.choice([0, 0, 130])),
                )
                for t in TAGS
                if rng.random() < 0.7
            ]
            steps.append(("batch", int(rng.integers(0, 2 * S)), batch or [(0, 0, 5.0, 0)]))
        elif r < 0.82:
            steps.append(("tick", int(rng.integers(0, 8 * S)), None))
        elif r < 0.85:
            steps.append(("comm", int(rng.integers(0, S)), (str(rng.choice(list(DEVICES))), bool(rng.random() < 0.5))))
        else:
            op = str(rng.choice(ops))
            alarm_id = str(rng.choice(LATCHED if op == "reset" else ALARMS))
            steps.append(("op", 0, (op, alarm_id, float(rng.choice([1.0, 4.0])))))
    actions = run_both(steps)
    expected = {"activate", "clear", "acknowledge", "reset", "realarm", "shelve", "unshelve", "suppress",
                "unsuppress", "remove_from_service", "return_to_service"}  # fmt: skip
    assert expected <= actions


def test_the_test_site_has_every_kind_of_condition() -> None:
    assert len({a.split(":")[1].split(".")[1] for a in ALARMS if not a.endswith("comm.LOSS")}) == K
