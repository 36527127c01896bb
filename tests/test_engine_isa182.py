"""The engine against ISA-18.2: the cases of issue 10 and docs/alarms.md, and differential tests
against the per-condition state machines of tests/isa182_reference.py (written from the standard's
text, not from the engine). Every activation and clearance is compared, with its time.

Hypothesis draws runs of samples that hover inside deadbands, sit exactly on limits, spike for less
than the on-delay, carry runs of NaN, infinity and bad quality, leave stale gaps, and tick the
clock between samples.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hazmon.alarms.compiler import CompiledRules, compile_rules, load_rules
from hazmon.alarms.engine import AlarmEngine
from hazmon.alarms.rules import K
from hazmon.plant.site import load_site
from hazmon.plant.tag import TagIndex
from hazmon.reading import ReadingBatch
from isa182_reference import ConditionReference, Transition

DATA = Path(__file__).parent / "data"
S = 1_000_000
T0 = 1_767_225_600 * S
SITE = load_site(DATA / "mini-site.yaml")
INDEX = TagIndex.from_sites([SITE])  # tags named by reference: "mini/TK.TT"
KEYS = INDEX.scoped(SITE.id)  # the same keys under the site's own tag ids
RULES = compile_rules(load_rules([DATA / "isa182-rules.yaml"], [SITE]), [SITE], INDEX)
NAN, INF = math.nan, math.inf

# values at, inside and outside each limit's deadband (limits of tests/data/isa182-rules.yaml)
POOL = {
    "TK.LT": [9, 8.5, 8.75, 8.4, 9.2, 8, 7.5, 7.75, 7.4, 8.3, 2, 2.5, 2.25, 2.6, 1, 1.25, 1.1, 0.9, 5, 10.3, -0.3],
    "TK.TT": [85, 84, 84.5, 83.99, 85.5, 86, 20, 50, 103],
    "TK.PT": [9.5, 9.3, 9.4, 9.6, 9.0, 8.5, 8.7, 8.4, 5, 10.5],
    "TK.LSHH": [0, 1, 2],
    "AREA.GT": [25, 24, 24.5, 23.9, 26, 50, 49, 51, 0],
}
TAGS = list(POOL)


def rules_for(yaml_text: str, tmp_path: Path) -> CompiledRules:
    f = tmp_path / "rules.yaml"
    f.write_text(yaml_text)
    return compile_rules(load_rules([f], [SITE]), [SITE], INDEX)


def run(
    rules: CompiledRules, steps: list[tuple[float, str, float, int] | tuple[float, None, None, None]]
) -> tuple[list[Transition], list[Transition]]:
    """Feed (time s, tag, value, quality) samples and (time s, None, ...) ticks to engine and reference.

    Returns both lists of transitions (time, alarm id, activate/clear), checked equal step by step.
    """
    engine, ref = AlarmEngine(rules), ConditionReference(rules)
    got: list[Transition] = []
    want: list[Transition] = []
    for at, tag, value, quality in steps:
        t = T0 + round(at * S)
        if tag is None:
            events = engine.tick(t)
            expected = ref.tick(t)
        else:
            assert value is not None and quality is not None
            row = KEYS.key(tag)
            events = engine.process(ReadingBatch.from_columns([row], [t], [value], [quality]))
            expected = ref.sample(row, t, value, quality)
        step = sorted((e.ts_us, e.alarm_id, e.action) for e in events if e.action in ("activate", "clear"))
        assert step == sorted(expected), f"at {at} s ({tag} = {value}, q {quality})"
        got += step
        want += expected
    return got, want


def samples(tag: str, *pairs: tuple[float, float], quality: int = 0, ticks: bool = True) -> list:
    """(time, value) samples of one tag, with a clock tick every 0.5 s between them."""
    steps: list = []
    for i, (at, value) in enumerate(pairs):
        steps.append((at, tag, value, 0 if not math.isfinite(value) else quality))
        if ticks and i + 1 < len(pairs):
            tick = at + 0.5
            while tick < pairs[i + 1][0]:
                steps.append((tick, None, None, None))
                tick += 0.5
    return steps


H85 = """rules:
- select: {{tags: [TK.TT]}}
  limits:
    H: {{value: 85, deadband: {db}, on_delay_s: {on}, off_delay_s: {off}}}
"""


@pytest.mark.parametrize(
    ("db", "on", "off", "values", "expected"),
    [
        # the four cases of issue 10 (H at 85)
        (1, 3, 0, [84, 85.5, 84.5, 84.5, 84.5, 84.5, 83], []),
        (1, 0, 3, [86, 83.5, 84.5, 84.5, 84.5, 84.5, 86], [(0, "activate")]),
        (0, 3, 0, [84, 86, NAN, NAN, NAN, NAN, 80], []),
        (0, 0, 3, [86, 80, NAN, NAN, NAN, NAN, 86], [(0, "activate")]),
        # the cases of docs/alarms.md
        (0, 0, 0, [84, 85, 84.99], [(1, "activate"), (2, "clear")]),
        (1, 0, 0, [84, 85, 84.5, 84, 83.99], [(1, "activate"), (4, "clear")]),  # at the limit; below L - d
        (1, 3, 0, [85, 85, 85, 85, 84.9], [(3, "activate")]),  # 3 s continuously at or above
        (1, 3, 0, [86, 86, 84, 86, 86, 86, 86], [(6, "activate")]),  # one sample below restarts the on-delay
        (1, 0, 3, [86, 83, 83, 83, 83], [(0, "activate"), (4, "clear")]),  # 3 s continuously below 84
        (1, 0, 3, [86, 83, 83, 85, 83, 83, 83, 83], [(0, "activate"), (7, "clear")]),  # back above: afresh
        (0, 2, 0, [86, 86, NAN, 86, 86, 86], [(5, "activate")]),  # good data again: the delay starts afresh
    ],
)
def test_cases_of_the_issue_and_the_docs(
    db: float, on: float, off: float, values: list[float], expected: list[tuple[int, str]], tmp_path: Path
) -> None:
    rules = rules_for(H85.format(db=db, on=on, off=off), tmp_path)
    got, want = run(rules, samples("TK.TT", *[(float(i), v) for i, v in enumerate(values)]))
    assert got == want == [(T0 + at * S, f"{SITE.id}/TK.TT:temperature.H", action) for at, action in expected]


def test_bad_quality_is_bad_data_too(tmp_path: Path) -> None:
    rules = rules_for(H85.format(db=1, on=3, off=0), tmp_path)
    steps = samples("TK.TT", (0, 86), (1, 86)) + samples("TK.TT", (2, 86), (3, 86), quality=192)
    steps += samples("TK.TT", (4, 86), (5, 86), (6, 86), (7, 86))
    got, _ = run(rules, steps)
    assert got == [(T0 + 7 * S, f"{SITE.id}/TK.TT:temperature.H", "activate")]  # 3 s of good data from 4 s


def test_ticks_complete_a_delay_on_good_data_only_while_fresh(tmp_path: Path) -> None:
    yaml = H85.format(db=1, on=3, off=0) + "  quality:\n    stale: {after_s: 5}\n"
    rules = rules_for(yaml, tmp_path)
    got, _ = run(rules, [(0, "TK.TT", 86, 0), (2, None, None, None), (3, None, None, None)])
    assert got == [(T0 + 3 * S, f"{SITE.id}/TK.TT:temperature.H", "activate")]  # the clock holds the last good sample
    got, _ = run(rules, [(0, "TK.TT", 86, 0), (6, None, None, None), (7, "TK.TT", 86, 0), (9, None, None, None)])
    assert got == [
        (T0 + 6 * S, f"{SITE.id}/TK.TT:quality.STALE", "activate"),
        (T0 + 7 * S, f"{SITE.id}/TK.TT:quality.STALE", "clear"),
    ]
    # stale from 5 s: the on-delay that began at 0 never completes; it starts again at 7 s
    got, _ = run(rules, [(0, "TK.TT", 86, 0), (7, "TK.TT", 86, 0), (9, None, None, None), (10, None, None, None)])
    assert got == [
        (T0 + 10 * S, f"{SITE.id}/TK.TT:temperature.H", "activate")
    ]  # a gap of the stale time, no tick in it


# ---------------------------------------------------------------------------------------------- hypothesis
@st.composite
def segments(draw: st.DrawFn) -> list:
    """A run of one value (or a burst of bad data) on one tag, ticks between, or a silent pause."""
    kind = draw(st.sampled_from(["run", "run", "run", "run", "bad", "spike", "tick", "pause"]))
    dt = draw(st.sampled_from([0.25, 0.5, 1.0, 1.0, 1.5, 2.0]))
    if kind == "pause":
        return [("pause", draw(st.sampled_from([2.0, 4.0, 5.0, 6.0])))]
    if kind == "tick":
        return [("tick", draw(st.sampled_from([0.0, 0.5, 1.0, 3.0, 5.5])))]
    tag = draw(st.sampled_from(TAGS))
    ticks = draw(st.booleans())
    if kind == "bad":
        value = draw(st.sampled_from([NAN, INF, -INF, *POOL[tag]]))
        quality = 0 if not math.isfinite(value) else draw(st.sampled_from([128, 130, 192]))
        values = [(value, quality)] * draw(st.integers(1, 5))
    elif kind == "spike":
        base, peak = draw(st.sampled_from(POOL[tag])), draw(st.sampled_from(POOL[tag]))
        values = [(base, 0), *[(peak, 0)] * draw(st.integers(1, 3)), (base, 0)]
    else:
        value = draw(st.sampled_from(POOL[tag]))
        values = [(value, draw(st.sampled_from([0, 0, 0, 64])))] * draw(st.integers(1, 6))
    out: list = []
    for value, quality in values:
        out.append(("sample", dt, tag, value, quality))
        if ticks:
            out.append(("tick", dt / 2))
    return out


def flatten(segs: list[list]) -> list:
    steps: list = []
    at = 0.0
    for seg in segs:
        for item in seg:
            if item[0] == "sample":
                at += item[1]
                steps.append((at, item[2], item[3], item[4]))
            elif item[0] == "tick":
                at += item[1]
                steps.append((at, None, None, None))
            else:
                at += item[1]
    return steps


ISA = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@ISA
@given(st.lists(segments(), min_size=1, max_size=30))
def test_every_transition_and_its_time_agree_with_the_reference(segs: list[list]) -> None:
    run(RULES, flatten(segs))


@ISA
@given(st.lists(segments(), min_size=1, max_size=30), st.sampled_from(TAGS), st.integers(1, 12))
def test_batches_of_several_readings_agree_with_the_reference(segs: list[list], tag: str, every: int) -> None:
    """The same streams with readings gathered into batches (several per tag): rounds in the engine."""
    steps = flatten(segs)
    engine, ref = AlarmEngine(RULES), ConditionReference(RULES)
    pending: list[tuple[int, int, float, int]] = []

    def flush() -> None:
        if not pending:
            return
        batch = ReadingBatch.from_columns(*map(list, zip(*pending, strict=True)))
        got = sorted(
            (e.ts_us, e.alarm_id, e.action) for e in engine.process(batch) if e.action in ("activate", "clear")
        )
        want = sorted(x for r, t, v, q in sorted(pending, key=lambda p: p[1]) for x in ref.sample(r, t, v, q))
        assert got == want
        pending.clear()

    for i, (at, name, value, quality) in enumerate(steps):
        t = T0 + round(at * S)
        if name is None:
            flush()
            got = sorted((e.ts_us, e.alarm_id, e.action) for e in engine.tick(t) if e.action in ("activate", "clear"))
            assert got == sorted(ref.tick(t))
        else:
            pending.append((KEYS.key(name), t, value, quality))
            if i % every == 0 or name == tag:
                flush()
    flush()


def test_the_streams_reach_every_condition_both_ways() -> None:
    """Guard against a vacuous differential test: a long seeded stream activates and clears every condition."""
    rng = np.random.default_rng(10)
    segs: list[list] = []
    for _ in range(1500):
        kind = rng.random()
        tag = str(rng.choice(TAGS))
        dt = float(rng.choice([0.25, 0.5, 1.0, 1.5]))
        if kind < 0.08:
            segs.append([("pause", float(rng.choice([4.0, 6.0])))])
            continue
        value = float(rng.choice(POOL[tag] + [NAN]))
        quality = int(rng.choice([0, 0, 0, 130]))
        segs.append(
            [x for _ in range(int(rng.integers(1, 6))) for x in (("sample", dt, tag, value, quality), ("tick", dt / 2))]
        )
    got, _ = run(RULES, flatten(segs))
    seen = {(alarm.split(":")[1].split(".")[1], action) for _, alarm, action in got}
    assert len({c for c, _ in seen}) == K and all((c, "clear") in seen for c, _ in seen), sorted(seen)


@ISA
@given(st.lists(segments(), min_size=2, max_size=30), st.data())
def test_a_restart_from_the_journal_completes_no_pending_delay(segs: list[list], data: st.DataObject) -> None:
    """Stop the engine anywhere, restore a new one from its alarms (as from the journal): what was
    active stays active, and every delay under way starts afresh from the next good samples (the
    reference: a new one whose conditions are as they were, with nothing under way)."""
    steps = flatten(segs)
    cut = data.draw(st.integers(0, len(steps)))
    engine, ref = AlarmEngine(RULES), ConditionReference(RULES)
    for at, name, value, quality in steps[:cut]:
        t = T0 + round(at * S)
        if name is None:
            engine.tick(t)
            ref.tick(t)
        else:
            engine.process(ReadingBatch.from_columns([KEYS.key(name)], [t], [value], [quality]))
            ref.sample(KEYS.key(name), t, value, quality)
    restarted = AlarmEngine(RULES)
    restarted.restore(engine.current())
    fresh = ConditionReference(RULES)
    for at, name, value, quality in steps[cut:]:
        t = T0 + round(at * S)
        if fresh.tags is None:  # the restarted reference begins here, with the conditions as they were
            for row, tag in enumerate(fresh._start(t)):
                for col, machine in tag.machines.items():
                    machine.active = ref.active(row, col)
        if name is None:
            got, want = restarted.tick(t), fresh.tick(t)
        else:
            got = restarted.process(ReadingBatch.from_columns([KEYS.key(name)], [t], [value], [quality]))
            want = fresh.sample(KEYS.key(name), t, value, quality)
        assert sorted((e.ts_us, e.alarm_id, e.action) for e in got if e.action in ("activate", "clear")) == sorted(want)
