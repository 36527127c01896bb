"""Alarm conditions as ISA-18.2 defines them: one plain state machine per condition of a tag.

Written from the text of issue 10 and docs/alarms.md ("Condition semantics"), not from the engine.
It knows nothing of arrays, bits or batches: one sample at a time, in time order, per tag.

For a high limit L with deadband d (low limits mirror it):

* inactive: a sample ``v >= L`` counts toward activation; the alarm activates once such samples
  have run continuously for the on-delay. Any other sample restarts the on-delay.
* active: a sample ``v < L - d`` counts toward clearing; the alarm clears once such samples have
  run continuously for the off-delay. A sample in ``[L - d, L)`` or at or above ``L`` restarts it.
* bad data (NaN, infinity, quality >= 128) counts toward nothing: it restarts both delays and never
  activates or clears. Only the quality alarm (BAD) counts bad samples, toward its activation.
* stale data: when the tag has a stale rule and nothing arrived for ``stale after`` (a sample after
  such a gap, or a clock tick during it), every pending delay of the tag starts afresh.
* a clock tick completes a pending delay on the strength of the last sample (which counted, or
  nothing would be pending) while the tag is not stale.

Every condition is this machine; what differs is which samples count toward which side:

=================  ==================================  ==========================================
condition          counts toward activation            counts toward clearing
=================  ==================================  ==========================================
HH, H              good, ``v >= L``                    good, ``v < L - d``
L, LL              good, ``v <= L``                    good, ``v > L + d``
ROC_UP / ROC_DOWN  good, ``±rate >= R``                good, ``±rate < R - d`` (no rate: neither)
STATE              good, ``v == state``                good, ``v != state``
OUT_OF_RANGE       good, outside the range+margin      good, inside
FROZEN             good, unchanged for ``after``       good, not unchanged for ``after``
BAD                a bad sample                        a good sample
STALE              a tick ``after`` past the last      a good sample; bad samples count toward
                   sign of life                        neither; a tick while not stale holds
=================  ==================================  ==========================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from hazmon.alarms.compiler import CompiledRules
from hazmon.alarms.rules import BAD, FROZEN, HH, LL, OUT_OF_RANGE, ROC_DOWN, ROC_UP, STALE, STATE, H, K, L

Transition = tuple[int, str, str]  # (time in µs, alarm id, "activate" or "clear")


@dataclass
class Machine:
    """One condition of one tag: is it active, and since when do samples count toward changing that."""

    on_delay: int
    off_delay: int
    active: bool = False
    run_start: int | None = None  # first sample of the current run counting toward the other state

    def sample(self, t: int, toward_active: bool, toward_clear: bool) -> str | None:
        counts = toward_clear if self.active else toward_active
        if not counts:
            self.run_start = None  # the run is broken: the delay starts afresh
            return None
        if self.run_start is None:
            self.run_start = t
        if t - self.run_start < (self.off_delay if self.active else self.on_delay):
            return None
        self.active = not self.active
        self.run_start = None
        return "activate" if self.active else "clear"

    def tick(self, t: int) -> str | None:
        """The clock at t, the last sample still standing: it counted toward a change if a run is pending."""
        if self.run_start is None:
            return None
        return self.sample(t, True, True)

    def restart(self) -> None:
        self.run_start = None


@dataclass
class Tag:
    """What one tag's conditions need to remember about its signal."""

    seen: int  # last sign of life: a sample of any quality, the start, communication restored
    last_t: int | None = None
    anchor: tuple[int, float] | None = None  # rate of change: the older end of the window ...
    candidate: tuple[int, float] | None = None  # ... and the next one, taken one window later
    frozen_value: float = math.nan
    rate: float = math.nan  # the last rate computed, units per minute (shown with ROC events)
    frozen_since: int = 0
    machines: dict[int, Machine] = field(default_factory=dict)  # column -> machine (enabled ones)


class ConditionReference:
    """Condition transitions of every alarm of the compiled rules, sample by sample."""

    def __init__(self, rules: CompiledRules) -> None:
        self.rules = rules
        self.tags: list[Tag] | None = None  # created at the first sample or tick: stale counts from there

    def _start(self, t: int) -> list[Tag]:
        if self.tags is None:
            r = self.rules
            self.tags = []
            for row in range(r.rows):
                tag = Tag(seen=t)
                for col in range(K):
                    if r.priority[row, col] >= 0:
                        timing = r.timing[row, col]
                        tag.machines[col] = Machine(int(r.on_delay_us[timing]), int(r.off_delay_us[timing]))
                self.tags.append(tag)
        return self.tags

    def _stale_after(self, row: int) -> int | None:
        after = int(self.rules.stale_us[row])
        return after if after > 0 else None

    def _out(self, row: int, col: int, t: int, action: str | None) -> list[Transition]:
        if action is None:
            return []
        return [(t, f"{self.rules.tag_ids[row]}:{self.rules.condition_name(row, col)}", action)]

    # ------------------------------------------------------------------ samples
    def sample(self, row: int, t: int, value: float, quality: int) -> list[Transition]:
        tag = self._start(t)[row]
        if tag.last_t is not None and t < tag.last_t:
            return []  # older than the tag's last sample: ignored
        tag.last_t = t
        after = self._stale_after(row)
        if after is not None and t - tag.seen >= after:
            for m in tag.machines.values():  # the input was stale in between: delays start afresh
                m.restart()
        tag.seen = max(tag.seen, t)
        good = quality < 128 and math.isfinite(value)
        counts = self._classify(row, tag, t, value) if good else {}
        out: list[Transition] = []
        for col, m in tag.machines.items():
            if col == BAD:
                toward = (not good, good)
            elif col == STALE:
                toward = (False, good)
            else:
                toward = counts.get(col, (False, False))
            out += self._out(row, col, t, m.sample(t, *toward))
        return out

    def _classify(self, row: int, tag: Tag, t: int, v: float) -> dict[int, tuple[bool, bool]]:
        """Per value condition: does this good sample count (toward activation, toward clearing)?"""
        r = self.rules
        limit = [float(x) for x in r.limit[row]]
        deadband = [float(x) for x in r.deadband[row]]
        counts = {
            HH: (v >= limit[HH], v < limit[HH] - deadband[HH]),
            H: (v >= limit[H], v < limit[H] - deadband[H]),
            L: (v <= limit[L], v > limit[L] + deadband[L]),
            LL: (v <= limit[LL], v > limit[LL] + deadband[LL]),
            STATE: (v == limit[STATE], v != limit[STATE]),
        }
        lo, hi = float(r.oor_lo[row]), float(r.oor_hi[row])
        outside = v < lo or v > hi
        counts[OUT_OF_RANGE] = (outside, not outside)
        rate = self._rate(row, tag, t, v)
        if int(r.roc_window_us[row]) > 0:
            tag.rate = rate
        if math.isnan(rate):
            counts[ROC_UP] = counts[ROC_DOWN] = (False, False)
        else:
            counts[ROC_UP] = (rate >= limit[ROC_UP], rate < limit[ROC_UP] - deadband[ROC_UP])
            counts[ROC_DOWN] = (-rate >= limit[ROC_DOWN], -rate < limit[ROC_DOWN] - deadband[ROC_DOWN])
        frozen = self._frozen(row, tag, t, v)
        counts[FROZEN] = (frozen, not frozen)
        return counts

    def _rate(self, row: int, tag: Tag, t: int, v: float) -> float:
        """Units per minute against an anchor at least one window old (NaN until there is one)."""
        window = int(self.rules.roc_window_us[row])
        if window <= 0:
            return math.nan
        if tag.anchor is None or tag.candidate is None:
            tag.anchor = tag.candidate = (t, v)
            return math.nan
        if t - tag.candidate[0] >= window:  # every window, the candidate becomes the anchor
            tag.anchor, tag.candidate = tag.candidate, (t, v)
        span = t - tag.anchor[0]
        if span < window:
            return math.nan
        return (v - tag.anchor[1]) * 60_000_000.0 / span

    def _frozen(self, row: int, tag: Tag, t: int, v: float) -> bool:
        """Unchanged (within the tolerance of the value it last moved to) for ``after``."""
        after = int(self.rules.frozen_us[row])
        if after <= 0:
            return False
        if not abs(v - tag.frozen_value) <= float(self.rules.frozen_tol[row]):
            tag.frozen_value, tag.frozen_since = v, t
            return False
        return t - tag.frozen_since >= after

    # ------------------------------------------------------------------ clock
    def tick(self, t: int) -> list[Transition]:
        out: list[Transition] = []
        for row, tag in enumerate(self._start(t)):
            after = self._stale_after(row)
            stale = after is not None and t - tag.seen >= after
            for col, m in tag.machines.items():
                if col == STALE and stale:
                    out += self._out(row, col, t, m.sample(t, True, False))
                elif stale:
                    m.restart()  # nothing completes on stale input
                else:
                    out += self._out(row, col, t, m.tick(t))
        return out

    def sign_of_life(self, row: int, t: int) -> None:
        """The source is alive and the tag's value unchanged (an OPC UA subscription reports changes only)."""
        tag = self._start(t)[row]
        tag.seen = max(tag.seen, t)
        m = tag.machines.get(STALE)
        if m is not None and not m.active:
            m.restart()  # not stale after all
        elif m is not None and m.run_start is None:
            m.run_start = t  # counts toward clearing a standing stale alarm, completed by the clock

    def active(self, row: int, col: int) -> bool:
        return self.tags is not None and self.tags[row].machines[col].active


__all__ = ["ConditionReference", "Machine", "Transition"]
