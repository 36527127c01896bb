"""The rule engine: reading batches in, alarm events out, vectorized over tags (ISA-18.2 lifecycle).

State lives in arrays indexed by tag row. The eleven conditions of a row (:data:`hazmon.alarms.rules.COLUMNS`)
are bits of one uint16 per row in ``cond`` (condition active, after deadband and on/off-delays),
``pend`` (a run of samples toward the other state is under way; its start in ``run_ts``), ``alarm``
(alarm active, after latching and masking), ``acked`` and the mask words (out of service, shelved,
suppressed by design, suppressed by communication loss). A batch is evaluated column by column
over all its readings at once; the state machines and the lifecycle then run only on the few cells
with a run under way or a change. Semantics (docs/alarms.md, "Condition semantics"; the reference
tests/isa182_reference.py is written from that text, not from this code):

* Readings of a tag are taken in time order; one older than the tag's last reading is counted in
  ``stats["old_readings"]`` and ignored. When a tag repeats within a batch the batch runs in
  rounds (k-th reading of every tag), each round vectorized.
* A reading is *good* when its quality is below BAD (128) and its value is finite. Each good
  reading counts toward activating an inactive condition or toward clearing an active one, or
  neither: high limits count toward activation at ``value >= limit`` and toward clearing below
  ``limit - deadband`` (low limits mirror this). A condition changes state once its samples have
  counted continuously for the on-delay (off-delay); a sample that does not count restarts it.
* Bad readings count toward nothing but ``quality.BAD``: they restart every delay and never
  activate or clear a value condition. Nor does stale input: a reading after a gap of the tag's
  stale time, or a tick during one, restarts every delay. Ticks complete delays on the strength
  of the last (good) reading. Events carry the time of the reading or tick that decided them.
* Masking (shelve, out of service, suppression) resets the alarm to normal and stops its
  lifecycle; the condition's state machine keeps running. Unmasking re-evaluates the alarm at once.
* Suppression by design: after a batch, each equipment whose in-service tag's last valid value is
  0 has the alarms of its other tags suppressed, stamped with that tag's last reading time.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from hazmon.alarms.alarm import (
    PRIORITY_CODES,
    Action,
    AlarmEvent,
    AlarmSnapshot,
    AlarmState,
    InvalidTransition,
    Priority,
    UnknownAlarm,
    split_alarm_id,
)
from hazmon.alarms.compiler import CompiledRules
from hazmon.alarms.conditions import Evaluator
from hazmon.alarms.rules import (
    BAD,
    HH,
    LL,
    OUT_OF_RANGE,
    ROC_DOWN,
    ROC_UP,
    STALE,
    STATE,
    H,
    K,
    L,
)
from hazmon.alarms.state import NONE_TS, CellState, TagState, bits_to_pairs, column_bits
from hazmon.reading import ReadingBatch

COMM_LOSS = "comm.LOSS"
_BAD_QUALITY = 128
I64 = npt.NDArray[np.int64]
U16 = npt.NDArray[np.uint16]
Pairs = tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], I64]
_LOUD_BITS = column_bits(HH, H, L, LL, STATE, OUT_OF_RANGE, BAD, STALE)
_NEVER = np.iinfo(np.int64).max


OPERATOR_ACTIONS = ("acknowledge", "reset", "shelve", "unshelve", "remove_from_service", "return_to_service", "comment")
_SAVED_WORDS = ("cond", "pend", "alarm", "acked", "oos", "shelf")  # what an operator action may change


@dataclass(frozen=True, slots=True)
class SavedAlarm:
    """An alarm's cell as ``AlarmEngine.save`` copied it."""

    row: int
    col: int
    bits: tuple[bool, ...]  # _SAVED_WORDS
    times: tuple[int, int, int]  # run_ts, annunc_ts, activated_ts
    shelved_until: int | None
    meta: tuple[int, str | None, str | None] | None


class AlarmEngine:
    """Evaluates compiled rules over reading batches and runs every alarm's lifecycle."""

    def __init__(self, compiled: CompiledRules, *, max_shelve_s: float = 8 * 3600) -> None:
        self.rules = compiled
        self.max_shelve_us = round(max_shelve_s * 1_000_000)
        self.n_tags = compiled.rows
        self.cells = CellState.from_rules(compiled)
        self.tags = TagState(self.n_tags)
        self.eval = Evaluator(compiled, self.tags)
        self.stats: dict[str, int] = {"batches": 0, "readings": 0, "old_readings": 0, "unknown_tags": 0}
        self._epoch: int | None = None
        # stale time per tag; a tag without a stale rule never goes stale
        self._stale_after = np.where(compiled.stale_us > 0, compiled.stale_us, _NEVER).astype(np.int64)
        self._row_of: dict[str, int] = {t: r for r, t in enumerate(compiled.tag_ids) if t is not None}
        self._owner: list[str | None] = list(compiled.tag_ids)
        self._devices: dict[str, int] = {}
        self._device_tags: dict[str, npt.NDArray[np.int32]] = {}
        self._shelved_until: dict[tuple[int, int], int] = {}
        self._meta: dict[tuple[int, int], tuple[int, str | None, str | None]] = {}
        # suppression by design: equipment index -> in service (1), out (0), unknown (-1)
        self._in_service = np.full(len(compiled.in_service_rows), -1, np.int8)
        self._equipment_of = np.full(self.n_tags, -1, np.int32)
        for e in range(len(compiled.in_service_rows)):
            deps = compiled.dependents[compiled.dependents_ptr[e] : compiled.dependents_ptr[e + 1]]
            self._equipment_of[deps] = e

    # ------------------------------------------------------------------ readings
    def process(self, batch: ReadingBatch) -> list[AlarmEvent]:
        n = len(batch)
        self.stats["batches"] += 1
        if n == 0:
            return []
        tag, ts, value, quality = batch.tag, batch.ts, batch.value, batch.quality
        known = (tag >= 0) & (tag < self.n_tags)
        if not known.all():
            self.stats["unknown_tags"] += int(n - known.sum())
            tag, ts, value, quality = tag[known], ts[known], value[known], quality[known]
            n = len(tag)
            if n == 0:
                return []
        self.stats["readings"] += n
        if self._epoch is None:
            self._start_clock(int(ts.min()))
        out: list[tuple[int, int, int, int, AlarmEvent]] = []
        rows = tag.astype(np.intp)
        rounds = self.tags.rounds(rows, ts)
        if rounds is None:  # a tag's readings are out of time order within the batch: sort
            order = np.lexsort((ts, rows))
            srows = rows[order]
            start = np.flatnonzero(np.r_[True, srows[1:] != srows[:-1]])
            run = np.diff(np.r_[start, len(srows)])
            k = np.arange(len(srows)) - np.repeat(start, run)
            rounds = [order[k == r] for r in range(int(k.max()) + 1)]
        if len(rounds) == 1:  # rounds() left each row's position in tags.mark
            self._round(rows, ts, value, quality, 0, out, marked=True)
        else:
            for r, sel in enumerate(rounds):
                self._round(rows[sel], ts[sel], value[sel], quality[sel], r, out)
        out.sort(key=lambda e: e[:4])
        events = [e[4] for e in out]
        events.extend(self._design_suppression())
        return events

    def _start_clock(self, now_us: int) -> None:
        if self._epoch is None:
            self._epoch = now_us
            self.tags.stale_ref.fill(now_us)

    def _round(
        self,
        rows: npt.NDArray[np.intp],
        ts: I64,
        v: npt.NDArray[np.float64],
        q: npt.NDArray[np.uint8],
        k: int,
        out: list[tuple[int, int, int, int, AlarmEvent]],
        marked: bool = False,
    ) -> None:
        """One reading per row. Quiet readings (inside every limit, nothing active) take the short path.

        ``marked``: ``tags.mark[rows[i]] == i`` for every reading i, which finds the few readings of
        tags with a run under way without gathering ``pend`` for the whole round.
        """
        t, c = self.tags, self.cells
        last = t.last_ts[rows]
        old = ts < last
        if old.any():
            self.stats["old_readings"] += int(old.sum())
            keep = ~old
            rows, ts, v, q, last = rows[keep], ts[keep], v[keep], q[keep], last[keep]
            marked = False
        t.last_ts[rows] = ts
        running = self._running(rows, marked)  # positions of readings of tags with a run under way: few
        if len(running):  # a run across a stale gap (no sign of life for the stale time) starts afresh
            rr = rows[running]
            seen = np.maximum(last[running], t.stale_ref[rr])
            gap = ts[running] - seen >= self._stale_after[rr]
            c.pend[rr[gap]] = 0
        good_q = q < _BAD_QUALITY
        valid = good_q & np.isfinite(v)
        all_valid = bool(valid.all())
        oc = c.cond[rows]
        on = np.zeros(len(rows), np.uint16)
        off = np.zeros(len(rows), np.uint16)
        ev = self.eval
        aux = ev.aux[rows]
        ev.rate(rows, ts, v, valid, aux, on, off)
        ev.frozen(rows, ts, v, valid, aux, oc, on, off)
        quiet = ((oc & _LOUD_BITS) == 0) & (v > ev.qlo[rows]) & (v < ev.qhi[rows]) & good_q
        loud = np.flatnonzero(~quiet)
        if len(loud):
            lr = rows[loud]
            on[loud] |= ev.on_bits(lr, v[loud], valid[loud], c.enabled[lr])
            active = loud[(oc[loud] & _LOUD_BITS) != 0]  # toward clearing matters only where active: few
            if len(active):
                off[active] |= ev.off_bits(rows[active], v[active], valid[active])
        if all_valid:
            t.last_v[rows] = v
        else:
            t.last_v[rows] = np.where(valid, v, t.last_v[rows])
        toward = np.bitwise_and(on, ~oc, out=on)
        toward |= off & oc
        work = np.flatnonzero(toward)
        if len(running):
            work = np.union1d(work, running)
        if len(work):
            for r, cc, event in self._advance(rows, ts, oc, toward, work):
                out.append((event.ts_us, r, k, cc, event))

    def _running(self, rows: npt.NDArray[np.intp], marked: bool) -> npt.NDArray[np.intp]:
        """Sorted positions of the readings whose tag has a run under way."""
        c = self.cells
        if not marked:
            return np.flatnonzero(c.pend[rows])
        pending = np.flatnonzero(c.pend[: self.n_tags])  # a contiguous scan, not a gather
        if len(pending) == 0:
            return pending
        pos = self.tags.mark[pending]
        ok = pos < len(rows)
        pos, pending = pos[ok], pending[ok]
        return np.sort(pos[rows[pos] == pending])

    def _advance(
        self, rows: npt.NDArray[np.intp], ts: I64, oc: U16, toward: U16, work: npt.NDArray[np.intp]
    ) -> list[tuple[int, int, AlarmEvent]]:
        """The state machines of the cells at the readings ``work`` (sorted positions): a sample
        counting toward a change, or a run under way (which a sample that does not count ends)."""
        c = self.cells
        wr = rows[work]
        tw, pd = toward[work], c.pend[wr]
        i, cols = bits_to_pairs(tw | pd)  # i indexes work
        r, tt = wr[i], ts[work][i]
        bit = (np.uint16(1) << cols.astype(np.uint16)).astype(np.uint16)
        counts = (tw[i] & bit) != 0
        running = (pd[i] & bit) != 0
        start = np.where(running, c.run_ts[r, cols], tt)
        tm = c.timing[r, cols]
        o = oc[work]
        delay = np.where((o[i] & bit) != 0, c.off_delay_us[tm], c.on_delay_us[tm])
        done = counts & (tt - start >= delay)
        begin = counts & ~running & ~done
        c.run_ts[r[begin], cols[begin]] = tt[begin]
        flip = np.zeros(len(work), np.uint16)
        np.bitwise_or.at(flip, i[done], bit[done])
        c.pend[wr] = tw & ~flip
        if not done.any():
            return []
        c.cond[wr] = o ^ flip
        return self._lifecycle((r[done], cols[done], tt[done]))

    # ------------------------------------------------------------------ lifecycle
    def _lifecycle(self, pairs: Pairs) -> list[tuple[int, int, AlarmEvent]]:
        """Activate or clear the alarms of the given cells to follow their conditions; events in input order."""
        r, col, now = pairs
        c = self.cells
        b = (np.uint16(1) << col.astype(np.uint16)).astype(np.uint16)
        cond = (c.cond[r] & b) != 0
        alarm = (c.alarm[r] & b) != 0
        live = (c.masked[r] & b) == 0
        latch = (c.latch[r] & b) != 0
        act = live & cond & ~alarm
        clr = live & ~cond & alarm & ~latch
        events: list[tuple[int, int, AlarmEvent]] = []
        for i in np.flatnonzero(act | clr).tolist():
            rr, cc, t = int(r[i]), int(col[i]), int(now[i])
            if act[i]:
                prev = self._display(rr, cc)
                c.alarm[rr] |= b[i]
                c.acked[rr] &= ~b[i]
                c.annunc_ts[rr, cc] = t
                c.activated_ts[rr, cc] = t
                events.append((rr, cc, self._event(rr, cc, prev, Action.ACTIVATE, t)))
            else:
                events.append((rr, cc, self._set_alarm_off(rr, cc, Action.CLEAR, t)))
        return events

    def _set_alarm_off(
        self, r: int, col: int, action: Action, t: int, user: str | None = None, comment: str | None = None
    ) -> AlarmEvent:
        prev = self._display(r, col)
        self.cells.alarm[r] &= np.uint16(~(1 << col) & 0xFFFF)
        return self._event(r, col, prev, action, t, user, comment)

    def _display(self, r: int, col: int) -> AlarmState:
        return self.cells.display(r, col)

    def _event(
        self,
        r: int,
        col: int,
        prev: AlarmState,
        action: Action,
        t: int,
        user: str | None = None,
        comment: str | None = None,
    ) -> AlarmEvent:
        new = self._display(r, col)
        if new is AlarmState.NORMAL:
            self.cells.activated_ts[r, col] = NONE_TS
        value, limit = self._value_limit(r, col)
        owner = self._owner[r]
        self._meta[(r, col)] = (t, user, comment)
        return AlarmEvent(
            alarm_id=f"{owner}:{self._condition(r, col)}",
            tag_id=owner if r < self.n_tags else None,
            condition=self._condition(r, col),
            priority=PRIORITY_CODES[self.cells.priority[r, col]],
            prev_state=prev,
            new_state=new,
            value=value,
            limit=limit,
            ts_us=t,
            user=user,
            comment=comment,
            action=str(action),
        )

    def _condition(self, r: int, col: int) -> str:
        return COMM_LOSS if r >= self.n_tags else self.rules.condition_name(r, col)

    def _value_limit(self, r: int, col: int) -> tuple[float | None, float | None]:
        if r >= self.n_tags or col in (BAD, STALE):
            return None, None
        v = float(self.tags.rate[r] if col in (ROC_UP, ROC_DOWN) else self.tags.last_v[r])
        lim = float(self.rules.limit[r, col]) if col <= STATE else None
        return (v if np.isfinite(v) else None), lim

    def _locate(self, alarm_id: str) -> tuple[int, int]:
        owner, condition = split_alarm_id(alarm_id)
        if condition == COMM_LOSS:
            if owner in self._devices:
                return self._devices[owner], BAD
            raise UnknownAlarm(alarm_id)
        r = self._row_of.get(owner)
        col = None if r is None else self.rules.column_of(r, condition)
        if r is None or col is None:
            raise UnknownAlarm(alarm_id)
        return r, col

    # ------------------------------------------------------------------ clock
    def tick(self, now_us: int) -> list[AlarmEvent]:
        """Time-driven conditions: shelve expiry, stale data, on/off-delays, re-alarm."""
        self._start_clock(now_us)
        c, t = self.cells, self.tags
        events: list[AlarmEvent] = []
        for (r, col), until in sorted(self._shelved_until.items()):
            if until <= now_us:
                events.extend(self._unmask(r, col, "shelf", Action.UNSHELVE, now_us, None, "shelving expired"))
        stale = np.flatnonzero(now_us - np.maximum(t.last_ts, t.stale_ref) >= self._stale_after)
        if len(stale):
            sbit = np.uint16(1 << STALE)
            c.pend[stale] &= sbit  # nothing completes on stale input: every other run starts afresh
            counts = (c.enabled[stale] & ~c.cond[stale] & sbit) != 0  # toward activating STALE
            c.pend[stale[~counts]] = 0
            begin = stale[counts & ((c.pend[stale] & sbit) == 0)]
            c.run_ts[begin, STALE] = now_us
            c.pend[begin] |= sbit
        if c.pend.any():  # runs under way complete on the strength of the last (good) reading
            rs, cs = bits_to_pairs(c.pend)
            tm = c.timing[rs, cs]
            bit = (np.uint16(1) << cs.astype(np.uint16)).astype(np.uint16)
            delay = np.where((c.cond[rs] & bit) != 0, c.off_delay_us[tm], c.on_delay_us[tm])
            done = now_us - c.run_ts[rs, cs] >= delay
            if done.any():
                rs, cs, bit = rs[done], cs[done], bit[done]
                np.bitwise_xor.at(c.cond, rs, bit)
                np.bitwise_and.at(c.pend, rs, ~bit)
                pairs = (rs, cs, np.full(len(rs), now_us, np.int64))
                events.extend(e for _, _, e in self._lifecycle(pairs))
        due = c.alarm & ~c.acked & ~c.masked & c.realarm
        if due.any():
            rs, cs = bits_to_pairs(due)
            late = now_us - c.annunc_ts[rs, cs] >= c.realarm_us[c.timing[rs, cs]]
            for rr, cc in zip(rs[late].tolist(), cs[late].tolist(), strict=True):
                c.annunc_ts[rr, cc] = now_us
                events.append(self._event(rr, cc, AlarmState.ACTIVE_UNACK, Action.REALARM, now_us))
        return events

    # ------------------------------------------------------------------ masking
    def _mask(
        self, r: int, col: int, word: str, action: Action, t: int, user: str | None, comment: str | None
    ) -> list[AlarmEvent]:
        c = self.cells
        prev = self._display(r, col)
        b = np.uint16(1 << col)
        getattr(c, word)[r] |= b
        c.masked[r] |= b
        c.alarm[r] &= ~b
        c.acked[r] |= b
        if prev is self._display(r, col):
            return []
        return [self._event(r, col, prev, action, t, user, comment)]

    def _unmask(
        self, r: int, col: int, word: str, action: Action, t: int, user: str | None, comment: str | None
    ) -> list[AlarmEvent]:
        c = self.cells
        if word == "shelf":
            self._shelved_until.pop((r, col), None)
        prev = self._display(r, col)
        b = np.uint16(1 << col)
        getattr(c, word)[r] &= ~b
        c.masked[r] = c.oos[r] | c.shelf[r] | c.supd[r] | c.supc[r]
        events = []
        if prev is not self._display(r, col):
            events.append(self._event(r, col, prev, action, t, user, comment))
        events.extend(e for _, _, e in self._lifecycle((np.array([r]), np.array([col]), np.array([t], np.int64))))
        return events

    def _design_suppression(self) -> list[AlarmEvent]:
        rc = self.rules
        if len(rc.in_service_rows) == 0:
            return []
        value = self.tags.last_v[rc.in_service_rows]
        state = np.where(np.isnan(value), -1, value != 0).astype(np.int8)
        changed = np.flatnonzero((state != self._in_service) & (state >= 0))
        events: list[AlarmEvent] = []
        for e in changed.tolist():
            was_out = self._in_service[e] == 0
            self._in_service[e] = state[e]
            t = int(self.tags.last_ts[rc.in_service_rows[e]])
            rows = rc.dependents[rc.dependents_ptr[e] : rc.dependents_ptr[e + 1]]
            if state[e] == 0:
                events.extend(self._mask_rows(rows, "supd", Action.SUPPRESS, t, None, "equipment out of service"))
            elif was_out:
                events.extend(self._unmask_rows(rows, "supd", Action.UNSUPPRESS, t, None, "equipment in service"))
        return events

    def _mask_rows(
        self, rows: Iterable[int], word: str, action: Action, t: int, user: str | None, comment: str | None
    ) -> list[AlarmEvent]:
        events = []
        for r in sorted(int(x) for x in rows):
            for col in range(K):
                if (int(self.cells.enabled[r]) >> col) & 1:
                    events.extend(self._mask(r, col, word, action, t, user, comment))
        return events

    def _unmask_rows(
        self, rows: Iterable[int], word: str, action: Action, t: int, user: str | None, comment: str | None
    ) -> list[AlarmEvent]:
        events = []
        for r in sorted(int(x) for x in rows):
            for col in range(K):
                if (int(getattr(self.cells, word)[r]) >> col) & 1:
                    events.extend(self._unmask(r, col, word, action, t, user, comment))
        return events

    # ------------------------------------------------------------------ devices
    def register_device(self, device_id: str, tag_keys: npt.ArrayLike) -> None:
        """Declare a device (gateway, PLC) and the tags it delivers; its loss is one alarm."""
        keys = np.unique(np.asarray(tag_keys, dtype=np.int32))
        if len(keys) and (keys[0] < 0 or keys[-1] >= self.n_tags):
            raise ValueError(f"device {device_id!r}: tag keys outside 0..{self.n_tags - 1}")
        if device_id not in self._devices:
            self._devices[device_id] = self.cells.add_device_row()
            self._owner.append(device_id)
        self._device_tags[device_id] = keys

    def set_device_comm(self, device_id: str, ok: bool, now_us: int) -> list[AlarmEvent]:
        """Communication with a device is lost (``ok=False``) or back; returns the events."""
        if device_id not in self._devices:
            raise UnknownAlarm(f"{device_id}:{COMM_LOSS}")
        self._start_clock(now_us)
        c = self.cells
        r = self._devices[device_id]
        bad = np.uint16(1 << BAD)
        lost = bool(c.cond[r] & bad)
        if lost == (not ok):
            return []
        c.cond[r] ^= bad
        events = [e for _, _, e in self._lifecycle((np.array([r]), np.array([BAD]), np.array([now_us], np.int64)))]
        tag_rows = self._device_tags[device_id]
        if not ok:
            c.pend[tag_rows] = 0  # the tags' input is lost: every delay starts afresh from new readings
            return events + self._mask_rows(
                tag_rows, "supc", Action.SUPPRESS, now_us, None, f"communication lost: {device_id}"
            )
        still_lost = {
            int(x)
            for d, rows in self._device_tags.items()
            if d != device_id and c.cond[self._devices[d]] & bad
            for x in rows
        }
        back = [int(x) for x in tag_rows if int(x) not in still_lost]
        self.tags.stale_ref[back] = np.maximum(self.tags.stale_ref[back], now_us)
        sbit = np.uint16(1 << STALE)
        c.cond[back] &= ~sbit
        c.pend[back] &= ~sbit
        return events + self._unmask_rows(
            back, "supc", Action.UNSUPPRESS, now_us, None, f"communication restored: {device_id}"
        )

    def refresh_stale(self, tag_keys: npt.ArrayLike, now_us: int) -> None:
        """The source of these tags is alive although they sent nothing (an OPC UA subscription
        reports changes only): they are not stale. A standing stale alarm counts this toward clearing,
        completed by the clock (at the next tick with no off-delay)."""
        keys = np.unique(np.asarray(tag_keys, dtype=np.int64))
        t, c = self.tags, self.cells
        self._start_clock(now_us)
        t.stale_ref[keys] = np.maximum(t.stale_ref[keys], now_us)
        sbit = np.uint16(1 << STALE)
        active = (c.cond[keys] & sbit) != 0
        c.pend[keys[~active]] &= ~sbit
        begin = keys[active & ((c.pend[keys] & sbit) == 0)]
        c.run_ts[begin, STALE] = now_us
        c.pend[begin] |= sbit

    # ------------------------------------------------------------------ operator operations
    def acknowledge(self, alarm_id: str, user: str, comment: str | None, now_us: int) -> list[AlarmEvent]:
        r, col = self._locate(alarm_id)
        prev = self._display(r, col)
        if prev not in (AlarmState.ACTIVE_UNACK, AlarmState.RTN_UNACK):
            raise InvalidTransition(f"{alarm_id} is {prev}: only an unacknowledged alarm can be acknowledged")
        self.cells.acked[r] |= np.uint16(1 << col)
        return [self._event(r, col, prev, Action.ACKNOWLEDGE, now_us, user, comment)]

    def reset(self, alarm_id: str, user: str, comment: str | None, now_us: int) -> list[AlarmEvent]:
        r, col = self._locate(alarm_id)
        c, b = self.cells, 1 << col
        if not (int(c.latch[r]) & b):
            raise InvalidTransition(f"{alarm_id} does not latch: there is nothing to reset")
        if not (int(c.alarm[r]) & b) or int(c.masked[r]) & b:
            raise InvalidTransition(f"{alarm_id} is {self._display(r, col)}: only an active latched alarm resets")
        if int(c.cond[r]) & b:
            raise InvalidTransition(f"{alarm_id}: the condition is still present; it can be reset once it clears")
        return [self._set_alarm_off(r, col, Action.RESET, now_us, user, comment)]

    def shelve(self, alarm_id: str, user: str, reason: str | None, duration_s: float, now_us: int) -> list[AlarmEvent]:
        r, col = self._locate(alarm_id)
        if not reason or not reason.strip():
            raise ValueError("shelving needs a reason")
        duration_us = round(duration_s * 1_000_000)
        if not 0 < duration_us <= self.max_shelve_us:
            raise ValueError(f"shelving lasts more than 0 and at most {self.max_shelve_us / 3.6e9:g} h")
        state = self._display(r, col)
        if state in (AlarmState.SHELVED, AlarmState.OUT_OF_SERVICE):
            raise InvalidTransition(f"{alarm_id} is {state}: it cannot be shelved")
        self._shelved_until[(r, col)] = now_us + duration_us
        return [
            replace(e, shelved_until_us=now_us + duration_us)
            for e in self._mask(r, col, "shelf", Action.SHELVE, now_us, user, reason)
        ]

    def unshelve(self, alarm_id: str, user: str, comment: str | None, now_us: int) -> list[AlarmEvent]:
        r, col = self._locate(alarm_id)
        if not (int(self.cells.shelf[r]) >> col) & 1:
            raise InvalidTransition(f"{alarm_id} is {self._display(r, col)}: it is not shelved")
        return self._unmask(r, col, "shelf", Action.UNSHELVE, now_us, user, comment)

    def remove_from_service(self, alarm_id: str, user: str, reason: str | None, now_us: int) -> list[AlarmEvent]:
        r, col = self._locate(alarm_id)
        if (int(self.cells.oos[r]) >> col) & 1:
            raise InvalidTransition(f"{alarm_id} is already out of service")
        if not reason or not reason.strip():
            raise ValueError("removing an alarm from service needs a reason")
        events = self._mask(r, col, "oos", Action.REMOVE_FROM_SERVICE, now_us, user, reason)
        self._shelved_until.pop((r, col), None)
        self.cells.shelf[r] &= np.uint16(~(1 << col) & 0xFFFF)
        return events

    def return_to_service(self, alarm_id: str, user: str, comment: str | None, now_us: int) -> list[AlarmEvent]:
        r, col = self._locate(alarm_id)
        if not (int(self.cells.oos[r]) >> col) & 1:
            raise InvalidTransition(f"{alarm_id} is {self._display(r, col)}: it is not out of service")
        return self._unmask(r, col, "oos", Action.RETURN_TO_SERVICE, now_us, user, comment)

    def comment(self, alarm_id: str, user: str, text: str, now_us: int) -> list[AlarmEvent]:
        r, col = self._locate(alarm_id)
        if not text or not text.strip():
            raise ValueError("a comment needs text")
        state = self._display(r, col)
        return [self._event(r, col, state, Action.COMMENT, now_us, user, text)]

    def operate(
        self, action: str, alarm_id: str, user: str, comment: str | None, duration_s: float | None, now_us: int
    ) -> list[AlarmEvent]:
        """An operator action by name (``OPERATOR_ACTIONS``), as the API and the engine shards run it;
        ValueError for an unknown action."""
        if action == "acknowledge":
            return self.acknowledge(alarm_id, user, comment, now_us)
        if action == "reset":
            return self.reset(alarm_id, user, comment, now_us)
        if action == "shelve":
            return self.shelve(alarm_id, user, comment or "", duration_s or 0.0, now_us)
        if action == "unshelve":
            return self.unshelve(alarm_id, user, comment, now_us)
        if action == "remove_from_service":
            return self.remove_from_service(alarm_id, user, comment, now_us)
        if action == "return_to_service":
            return self.return_to_service(alarm_id, user, comment, now_us)
        if action == "comment":
            return self.comment(alarm_id, user, comment or "", now_us)
        raise ValueError(f"unknown alarm action {action!r}")

    # ------------------------------------------------------------------ snapshots
    def get(self, alarm_id: str) -> AlarmSnapshot:
        return self._snapshot(*self._locate(alarm_id))

    def current(self) -> list[AlarmSnapshot]:
        """Every alarm not in the normal state (shelved, suppressed and out-of-service included)."""
        c = self.cells
        shown = (c.alarm | (~c.acked & c.enabled) | c.masked) & c.enabled
        r, col = bits_to_pairs(shown)
        return [self._snapshot(int(a), int(b)) for a, b in zip(r, col, strict=True)]

    def _snapshot(self, r: int, col: int) -> AlarmSnapshot:
        c, b = self.cells, 1 << col
        value, limit = self._value_limit(r, col)
        since, user, comment = self._meta.get((r, col), (0, None, None))
        owner = self._owner[r]
        state = self._display(r, col)
        activated = int(c.activated_ts[r, col])
        return AlarmSnapshot(
            alarm_id=f"{owner}:{self._condition(r, col)}",
            tag_id=owner if r < self.n_tags else None,
            condition=self._condition(r, col),
            priority=Priority(PRIORITY_CODES[c.priority[r, col]]),
            state=state,
            active=bool(int(c.alarm[r]) & b),
            acked=bool(int(c.acked[r]) & b),
            value=value,
            limit=limit,
            since_us=since,
            activated_us=None if activated == NONE_TS or state is AlarmState.NORMAL else activated,
            shelved_until_us=self._shelved_until.get((r, col)),
            out_of_service=bool(int(c.oos[r]) & b),
            suppressed=bool(int(c.supd[r] | c.supc[r]) & b),
            user=user,
            comment=comment,
        )

    def save(self, alarm_id: str) -> SavedAlarm:
        """One alarm's every flag and time, exactly, for ``put_back``: an operator action applied while
        its record is written is undone with it when the record fails (``hazmon.cluster.ops``)."""
        r, col = self._locate(alarm_id)
        c, b = self.cells, 1 << col
        bits = tuple(bool(int(getattr(c, w)[r]) & b) for w in _SAVED_WORDS)
        times = (int(c.run_ts[r, col]), int(c.annunc_ts[r, col]), int(c.activated_ts[r, col]))
        return SavedAlarm(r, col, bits, times, self._shelved_until.get((r, col)), self._meta.get((r, col)))

    def put_back(self, saved: SavedAlarm) -> None:
        """The alarm exactly as ``save`` found it: no event, and nothing else changed."""
        r, col, c = saved.row, saved.col, self.cells
        b = np.uint16(1 << col)
        for word, on in zip(_SAVED_WORDS, saved.bits, strict=True):
            arr = getattr(c, word)
            arr[r] = (arr[r] | b) if on else (arr[r] & ~b)
        c.run_ts[r, col], c.annunc_ts[r, col], c.activated_ts[r, col] = saved.times
        if saved.shelved_until is None:
            self._shelved_until.pop((r, col), None)
        else:
            self._shelved_until[(r, col)] = saved.shelved_until
        if saved.meta is None:
            self._meta.pop((r, col), None)
        else:
            self._meta[(r, col)] = saved.meta
        c.masked[r] = c.oos[r] | c.shelf[r] | c.supd[r] | c.supc[r]

    def restore(self, snapshots: Sequence[AlarmSnapshot]) -> int:
        """Rebuild alarm states saved before a restart (no events). Returns how many were restored.

        An active alarm is taken as still present (its condition is set) so that it is not raised
        again; the next readings clear it normally (after its off-delay). No delay under way before
        the restart is carried over: on- and off-delays start afresh from the first good samples.
        ``activated_us`` is kept. Alarms no longer defined are counted in ``stats["restore_unknown"]``.
        """
        c = self.cells
        restored = 0
        for s in snapshots:
            try:
                r, col = self._locate(s.alarm_id)
            except UnknownAlarm:
                self.stats["restore_unknown"] = self.stats.get("restore_unknown", 0) + 1
                continue
            b = np.uint16(1 << col)
            for word, on in (("alarm", s.active), ("acked", s.acked), ("cond", s.active)):
                arr = getattr(c, word)
                arr[r] = (arr[r] | b) if on else (arr[r] & ~b)
            c.pend[r] &= ~b  # a delay under way before the restart is not completed by it
            c.annunc_ts[r, col] = s.since_us
            c.activated_ts[r, col] = NONE_TS if s.activated_us is None else s.activated_us
            if s.out_of_service:
                c.oos[r] |= b
            if s.shelved_until_us is not None or s.state is AlarmState.SHELVED:
                c.shelf[r] |= b
                until = s.shelved_until_us
                self._shelved_until[(r, col)] = s.since_us + self.max_shelve_us if until is None else until
            if s.suppressed and r < self.n_tags and self._equipment_of[r] >= 0:
                e = int(self._equipment_of[r])
                self._in_service[e] = 0
                deps = self.rules.dependents[self.rules.dependents_ptr[e] : self.rules.dependents_ptr[e + 1]]
                c.supd[deps] |= c.enabled[deps]
            self._meta[(r, col)] = (s.since_us, s.user, s.comment)
            restored += 1
        for device, r in self._devices.items():
            if c.cond[r] & np.uint16(1 << BAD):
                rows = self._device_tags[device]
                c.supc[rows] |= c.enabled[rows]
        c.masked[:] = c.oos | c.shelf | c.supd | c.supc
        return restored

    def nbytes(self) -> int:
        """Bytes held in the engine's state arrays and its compiled rules."""
        return self.cells.nbytes() + self.tags.nbytes() + self.rules.nbytes() + self.eval.nbytes()
