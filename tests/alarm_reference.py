"""A plain, reading-by-reading reference implementation of the engine's semantics (for tests).

Written for clarity, not speed: one Python object per alarm cell, one reading at a time, in time
order. The rules and their meaning are those stated in the docstring of ``hazmon.alarms.engine``; the
compiled rule arrays are read one scalar at a time. The differential tests require the vectorized
engine to produce exactly the events this produces.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from hazmon.alarms.alarm import PRIORITY_CODES, AlarmEvent, AlarmState, InvalidTransition, Priority
from hazmon.alarms.compiler import CompiledRules
from hazmon.alarms.rules import (
    BAD,
    COLUMNS,
    FROZEN,
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
from hazmon.reading import ReadingBatch

VALUE_COLUMNS = (HH, H, L, LL, ROC_UP, ROC_DOWN, STATE, OUT_OF_RANGE, FROZEN)


@dataclass
class Cell:
    enabled: bool
    cond: bool = False
    cond_ts: int = 0
    alarm: bool = False
    acked: bool = True
    annunc_ts: int = 0
    oos: bool = False
    shelved_until: int | None = None
    supd: bool = False  # suppressed by design
    supc: bool = False  # suppressed by communication loss

    @property
    def masked(self) -> bool:
        return self.oos or self.shelved_until is not None or self.supd or self.supc

    def display(self) -> AlarmState:
        if self.oos:
            return AlarmState.OUT_OF_SERVICE
        if self.shelved_until is not None:
            return AlarmState.SHELVED
        if self.supd or self.supc:
            return AlarmState.SUPPRESSED
        if self.alarm:
            return AlarmState.ACTIVE_ACK if self.acked else AlarmState.ACTIVE_UNACK
        return AlarmState.NORMAL if self.acked else AlarmState.RTN_UNACK


@dataclass
class TagHistory:
    last_ts: int | None = None
    seen_ts: int | None = None
    last_v: float = math.nan
    rate: float = math.nan
    frz_ref: float = math.nan
    frz_ts: int = 0
    anchor: tuple[int, float] | None = None
    candidate: tuple[int, float] | None = None


class ReferenceEngine:
    def __init__(self, rules: CompiledRules, max_shelve_s: float = 8 * 3600) -> None:
        self.r = rules
        self.max_shelve_us = round(max_shelve_s * 1_000_000)
        self.cells = [[Cell(enabled=bool(rules.priority[row, c] >= 0)) for c in range(K)] for row in range(rules.rows)]
        self.owners: list[str | None] = list(rules.tag_ids)
        self.devices: dict[str, tuple[int, list[int]]] = {}  # device -> (row, tag rows)
        self.hist = [TagHistory() for _ in range(rules.rows)]
        self.epoch: int | None = None
        self.old_readings = 0
        self.in_service = [-1] * len(rules.in_service_rows)

    # -- helpers
    def _delay(self, table: str, row: int, col: int) -> int:
        if row >= self.r.rows:
            return 0  # a device's communication alarm: no delays
        return int(getattr(self.r, table)[self.r.timing[row, col]])

    def _event(self, row: int, col: int, prev: AlarmState, action: str, t: int, user=None, comment=None) -> AlarmEvent:
        cell = self.cells[row][col]
        if row >= self.r.rows:  # a device's communication-loss alarm
            device = self.owners[row]
            return AlarmEvent(
                f"{device}:comm.LOSS", None, "comm.LOSS", Priority.HIGH, prev, cell.display(), None, None, t,
                user, comment, action,
            )  # fmt: skip
        h = self.hist[row]
        value: float | None
        if col in (BAD, STALE):
            value = None
        else:
            value = h.rate if col in (ROC_UP, ROC_DOWN) else h.last_v
            if not math.isfinite(value):
                value = None
        limit = float(self.r.limit[row, col]) if col <= STATE else None
        condition = self.r.condition_name(row, col)
        return AlarmEvent(
            alarm_id=f"{self.r.tag_ids[row]}:{condition}",
            tag_id=self.r.tag_ids[row],
            condition=condition,
            priority=PRIORITY_CODES[self.r.priority[row, col]],
            prev_state=prev,
            new_state=cell.display(),
            value=value,
            limit=limit,
            ts_us=t,
            user=user,
            comment=comment,
            action=action,
        )

    def _lifecycle(self, row: int, col: int, t: int) -> list[AlarmEvent]:
        cell = self.cells[row][col]
        if cell.masked or not cell.enabled:
            return []
        held = t - cell.cond_ts
        if cell.cond and not cell.alarm and held >= self._delay("on_delay_us", row, col):
            prev = cell.display()
            cell.alarm, cell.acked, cell.annunc_ts = True, False, t
            return [self._event(row, col, prev, "activate", t)]
        latch = row < self.r.rows and bool(self.r.latch[row, col])
        if not cell.cond and cell.alarm and not latch and held >= self._delay("off_delay_us", row, col):
            prev = cell.display()
            cell.alarm = False
            return [self._event(row, col, prev, "clear", t)]
        return []

    def _start(self, t: int) -> None:
        if self.epoch is None:
            self.epoch = t
            for h in self.hist:
                h.seen_ts = t

    # -- readings
    def process(self, batch: ReadingBatch) -> list[AlarmEvent]:
        readings = [
            (int(batch.ts[i]), int(batch.tag[i]), float(batch.value[i]), int(batch.quality[i]))
            for i in range(len(batch))
            if 0 <= int(batch.tag[i]) < self.r.rows
        ]
        if not readings:
            return []
        self._start(min(r[0] for r in readings))
        events: list[AlarmEvent] = []
        for ts, row, v, q in sorted(readings, key=lambda r: (r[0], r[1])):  # stable: ties keep batch order
            events.extend(self._reading(row, ts, v, q))
        events.extend(self._design_suppression())
        return events

    def _reading(self, row: int, ts: int, v: float, q: int) -> list[AlarmEvent]:
        h = self.hist[row]
        if h.last_ts is not None and ts < h.last_ts:
            self.old_readings += 1
            return []
        h.last_ts = ts
        h.seen_ts = ts if h.seen_ts is None else max(h.seen_ts, ts)
        cells = self.cells[row]
        valid = q < 128 and math.isfinite(v)
        new = [c.cond for c in cells]
        if valid:
            new = self._evaluate(row, ts, v, [c.cond for c in cells])
            h.last_v = v
        else:
            new = [cells[c].cond if c in VALUE_COLUMNS else False for c in range(K)]
            new[BAD] = True
        new[STALE] = False
        for col in range(K):
            cond = new[col] and cells[col].enabled
            if cond != cells[col].cond:
                cells[col].cond = cond
                cells[col].cond_ts = ts
        events = []
        for col in range(K):
            if cells[col].cond != cells[col].alarm:
                events.extend(self._lifecycle(row, col, ts))
        return events

    def _evaluate(self, row: int, ts: int, v: float, was: list[bool]) -> list[bool]:
        r, h = self.r, self.hist[row]
        lim = [float(x) for x in r.limit[row]]
        db = [float(x) for x in r.deadband[row]]
        new = [False] * K
        for col in (HH, H):
            new[col] = v >= lim[col] - (db[col] if was[col] else 0.0)
        for col in (L, LL):
            new[col] = v <= lim[col] + (db[col] if was[col] else 0.0)
        rate = math.nan
        window = int(r.roc_window_us[row])
        if window > 0:
            if h.anchor is None:
                h.anchor = h.candidate = (ts, v)
            else:
                assert h.candidate is not None
                if ts - h.candidate[0] >= window:
                    h.anchor, h.candidate = h.candidate, (ts, v)
                span = ts - h.anchor[0]
                if span >= window:
                    rate = (v - h.anchor[1]) * 60_000_000.0 / float(span)
            h.rate = rate
        new[ROC_UP] = rate >= lim[ROC_UP] - (db[ROC_UP] if was[ROC_UP] else 0.0)
        new[ROC_DOWN] = -rate >= lim[ROC_DOWN] - (db[ROC_DOWN] if was[ROC_DOWN] else 0.0)
        new[STATE] = v == lim[STATE]
        new[OUT_OF_RANGE] = v < float(r.oor_lo[row]) or v > float(r.oor_hi[row])
        after = int(r.frozen_us[row])
        if after > 0:
            same = abs(v - h.frz_ref) <= float(r.frozen_tol[row])
            if not same:
                h.frz_ref, h.frz_ts = v, ts
            new[FROZEN] = same and ts - h.frz_ts >= after
        return new

    def _design_suppression(self) -> list[AlarmEvent]:
        events = []
        for e, is_row in enumerate(self.r.in_service_rows.tolist()):
            v = self.hist[is_row].last_v
            if math.isnan(v):
                continue
            state = int(v != 0)
            if state == self.in_service[e]:
                continue
            was_out = self.in_service[e] == 0
            self.in_service[e] = state
            t = self.hist[is_row].last_ts
            assert t is not None
            deps = self.r.dependents[self.r.dependents_ptr[e] : self.r.dependents_ptr[e + 1]].tolist()
            for row in sorted(deps):
                for col in range(K):
                    cell = self.cells[row][col]
                    if state == 0 and cell.enabled:
                        events.extend(self._mask(row, col, "supd", "suppress", t, None, "equipment out of service"))
                    elif state == 1 and was_out and cell.supd:
                        events.extend(self._unmask(row, col, "supd", "unsuppress", t, None, "equipment in service"))
        return events

    # -- masks
    def _mask(self, row, col, what, action, t, user, comment) -> list[AlarmEvent]:
        cell = self.cells[row][col]
        prev = cell.display()
        if what == "oos":
            cell.oos = True
        elif what == "supd":
            cell.supd = True
        elif what == "supc":
            cell.supc = True
        cell.alarm, cell.acked = False, True
        if cell.display() == prev:
            return []
        return [self._event(row, col, prev, action, t, user, comment)]

    def _unmask(self, row, col, what, action, t, user, comment) -> list[AlarmEvent]:
        cell = self.cells[row][col]
        prev = cell.display()
        if what == "oos":
            cell.oos = False
        elif what == "supd":
            cell.supd = False
        elif what == "supc":
            cell.supc = False
        else:
            cell.shelved_until = None
        events = []
        if cell.display() != prev:
            events.append(self._event(row, col, prev, action, t, user, comment))
        return events + self._lifecycle(row, col, t)

    # -- clock
    def tick(self, now: int) -> list[AlarmEvent]:
        self._start(now)
        events: list[AlarmEvent] = []
        for row in range(len(self.cells)):
            for col in range(K):
                until = self.cells[row][col].shelved_until
                if until is not None and until <= now:
                    events.extend(self._unmask(row, col, "shelf", "unshelve", now, None, "shelving expired"))
        for row in range(self.r.rows):
            after = int(self.r.stale_us[row])
            cell = self.cells[row][STALE]
            seen = self.hist[row].seen_ts
            assert seen is not None
            if after > 0 and cell.enabled and not cell.cond and now - seen >= after:
                cell.cond, cell.cond_ts = True, now
        for row in range(len(self.cells)):
            for col in range(K):
                cell = self.cells[row][col]
                if cell.cond != cell.alarm:
                    events.extend(self._lifecycle(row, col, now))
        for row in range(len(self.cells)):
            for col in range(K):
                cell = self.cells[row][col]
                realarm = self._delay("realarm_us", row, col) if row < self.r.rows else 0
                due = cell.alarm and not cell.acked and not cell.masked and realarm > 0
                if due and now - cell.annunc_ts >= realarm:
                    cell.annunc_ts = now
                    events.append(self._event(row, col, AlarmState.ACTIVE_UNACK, "realarm", now))
        return events

    # -- operator operations (same rules as the engine; errors only as InvalidTransition/ValueError)
    def _cell(self, alarm_id: str) -> tuple[int, int]:
        owner, _, condition = alarm_id.rpartition(":")
        if condition == "comm.LOSS":
            return self.devices[owner][0], BAD
        row = self.r.tag_ids.index(owner)
        col = self.r.column_of(row, condition)
        assert col is not None
        return row, col

    def acknowledge(self, alarm_id, user, comment, now):
        row, col = self._cell(alarm_id)
        cell = self.cells[row][col]
        prev = cell.display()
        if prev not in (AlarmState.ACTIVE_UNACK, AlarmState.RTN_UNACK):
            raise InvalidTransition(alarm_id)
        cell.acked = True
        return [self._event(row, col, prev, "acknowledge", now, user, comment)]

    def reset(self, alarm_id, user, comment, now):
        row, col = self._cell(alarm_id)
        cell = self.cells[row][col]
        if row >= self.r.rows or not self.r.latch[row, col] or not cell.alarm or cell.masked or cell.cond:
            raise InvalidTransition(alarm_id)
        prev = cell.display()
        cell.alarm = False
        return [self._event(row, col, prev, "reset", now, user, comment)]

    def shelve(self, alarm_id, user, reason, duration_s, now):
        row, col = self._cell(alarm_id)
        cell = self.cells[row][col]
        duration = round(duration_s * 1_000_000)
        if not 0 < duration <= self.max_shelve_us:
            raise ValueError(duration_s)
        if cell.display() in (AlarmState.SHELVED, AlarmState.OUT_OF_SERVICE):
            raise InvalidTransition(alarm_id)
        prev = cell.display()
        cell.shelved_until = now + duration
        cell.alarm, cell.acked = False, True
        return [replace(self._event(row, col, prev, "shelve", now, user, reason), shelved_until_us=now + duration)]

    def unshelve(self, alarm_id, user, comment, now):
        row, col = self._cell(alarm_id)
        if self.cells[row][col].shelved_until is None:
            raise InvalidTransition(alarm_id)
        return self._unmask(row, col, "shelf", "unshelve", now, user, comment)

    def remove_from_service(self, alarm_id, user, reason, now):
        row, col = self._cell(alarm_id)
        cell = self.cells[row][col]
        if cell.oos:
            raise InvalidTransition(alarm_id)
        events = self._mask(row, col, "oos", "remove_from_service", now, user, reason)
        cell.shelved_until = None
        return events

    def return_to_service(self, alarm_id, user, comment, now):
        row, col = self._cell(alarm_id)
        if not self.cells[row][col].oos:
            raise InvalidTransition(alarm_id)
        return self._unmask(row, col, "oos", "return_to_service", now, user, comment)

    # -- devices
    def register_device(self, device: str, tag_rows: list[int]) -> None:
        row = len(self.cells)
        self.cells.append([Cell(enabled=(c == BAD)) for c in range(K)])
        self.owners.append(device)
        self.devices[device] = (row, sorted(set(tag_rows)))

    def set_device_comm(self, device: str, ok: bool, now: int) -> list[AlarmEvent]:
        self._start(now)
        row, tags = self.devices[device]
        cell = self.cells[row][BAD]
        if cell.cond == (not ok):
            return []
        cell.cond, cell.cond_ts = not ok, now
        events = self._lifecycle(row, BAD, now)
        if not ok:
            for r in tags:
                for col in range(K):
                    if self.cells[r][col].enabled:
                        events += self._mask(r, col, "supc", "suppress", now, None, f"communication lost: {device}")
            return events
        still_lost = {
            r for d, (drow, rows) in self.devices.items() if d != device and self.cells[drow][BAD].cond for r in rows
        }
        for r in tags:
            if r in still_lost:
                continue
            h = self.hist[r]
            h.seen_ts = now if h.seen_ts is None else max(h.seen_ts, now)
            self.cells[r][STALE].cond, self.cells[r][STALE].cond_ts = False, now
        for r in tags:
            if r in still_lost:
                continue
            for col in range(K):
                if self.cells[r][col].supc:
                    events += self._unmask(r, col, "supc", "unsuppress", now, None, f"communication restored: {device}")
        return events


def all_alarm_ids(rules: CompiledRules) -> list[str]:
    return [
        f"{rules.tag_ids[row]}:{rules.condition_name(row, col)}"
        for row in range(rules.rows)
        for col in range(K)
        if rules.priority[row, col] >= 0
    ]


__all__ = ["COLUMNS", "ReferenceEngine", "all_alarm_ids"]
