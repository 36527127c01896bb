"""A plain, reading-by-reading reference of the whole engine: conditions, lifecycle, operators, masks.

Written for clarity, not speed: one Python object per alarm cell, one reading at a time, in time
order. When a condition is active is decided by the per-condition state machines of
``isa182_reference`` (written from ISA-18.2 and docs/alarms.md); this module adds what the
lifecycle table of docs/alarms.md says happens to the alarm: activation and clearing when the
condition changes, latching, acknowledgement, re-alarm, shelving, suppression, out of service and
communication loss. The differential tests require the vectorized engine to produce exactly the
events this produces.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from hazmon.alarms.alarm import PRIORITY_CODES, AlarmEvent, AlarmState, InvalidTransition, Priority
from hazmon.alarms.compiler import CompiledRules
from hazmon.alarms.rules import BAD, COLUMNS, ROC_DOWN, ROC_UP, STALE, STATE, K
from hazmon.reading import ReadingBatch
from isa182_reference import ConditionReference, Machine


@dataclass
class Cell:
    enabled: bool
    machine: Machine | None = None  # the condition (a device's communication: set directly)
    alarm: bool = False
    acked: bool = True
    annunc_ts: int = 0
    oos: bool = False
    shelved_until: int | None = None
    supd: bool = False  # suppressed by design
    supc: bool = False  # suppressed by communication loss

    @property
    def cond(self) -> bool:
        return self.machine is not None and self.machine.active

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


class ReferenceEngine:
    def __init__(self, rules: CompiledRules, max_shelve_s: float = 8 * 3600) -> None:
        self.r = rules
        self.max_shelve_us = round(max_shelve_s * 1_000_000)
        self.conditions = ConditionReference(rules)
        self.cells = [[Cell(enabled=bool(rules.priority[row, c] >= 0)) for c in range(K)] for row in range(rules.rows)]
        self.owners: list[str | None] = list(rules.tag_ids)
        self.devices: dict[str, tuple[int, list[int]]] = {}  # device -> (row, tag rows)
        self.last_v = [math.nan] * rules.rows  # last good value of each tag
        self.last_t: list[int | None] = [None] * rules.rows
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
        value: float | None
        if col in (BAD, STALE):
            value = None
        else:
            tags = self.conditions.tags
            rate = math.nan if tags is None else tags[row].rate
            value = rate if col in (ROC_UP, ROC_DOWN) else self.last_v[row]
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
        """The alarm follows its condition (unless masked; a latched alarm waits for a reset)."""
        cell = self.cells[row][col]
        if cell.masked or not cell.enabled:
            return []
        if cell.cond and not cell.alarm:
            prev = cell.display()
            cell.alarm, cell.acked, cell.annunc_ts = True, False, t
            return [self._event(row, col, prev, "activate", t)]
        latch = row < self.r.rows and bool(self.r.latch[row, col])
        if not cell.cond and cell.alarm and not latch:
            prev = cell.display()
            cell.alarm = False
            return [self._event(row, col, prev, "clear", t)]
        return []

    def _start(self, t: int) -> None:
        if self.epoch is None:
            self.epoch = t
            tags = self.conditions._start(t)
            for row, tag in enumerate(tags):
                for col, machine in tag.machines.items():
                    self.cells[row][col].machine = machine

    def _follow(self, transitions: list[tuple[int, str, str]]) -> list[AlarmEvent]:
        events = []
        for t, alarm_id, _ in transitions:
            events += self._lifecycle(*self._cell(alarm_id), t)
        return events

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
        last = self.last_t[row]
        if last is not None and ts < last:
            self.old_readings += 1
            return []
        self.last_t[row] = ts
        if q < 128 and math.isfinite(v):
            self.last_v[row] = v
        return self._follow(self.conditions.sample(row, ts, v, q))

    def _design_suppression(self) -> list[AlarmEvent]:
        events = []
        for e, is_row in enumerate(self.r.in_service_rows.tolist()):
            v = self.last_v[is_row]
            if math.isnan(v):
                continue
            state = int(v != 0)
            if state == self.in_service[e]:
                continue
            was_out = self.in_service[e] == 0
            self.in_service[e] = state
            t = self.last_t[is_row]
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
        events += self._follow(self.conditions.tick(now))
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
        self.cells.append([Cell(enabled=(c == BAD), machine=Machine(0, 0) if c == BAD else None) for c in range(K)])
        self.owners.append(device)
        self.devices[device] = (row, sorted(set(tag_rows)))

    def set_device_comm(self, device: str, ok: bool, now: int) -> list[AlarmEvent]:
        self._start(now)
        row, tags = self.devices[device]
        cell = self.cells[row][BAD]
        assert cell.machine is not None
        if cell.cond == (not ok):
            return []
        cell.machine.active = not ok
        events = self._lifecycle(row, BAD, now)
        assert self.conditions.tags is not None
        if not ok:
            for r in tags:  # the tags' input is lost: their delays start afresh from new readings
                for machine in self.conditions.tags[r].machines.values():
                    machine.restart()
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
            tag = self.conditions.tags[r]
            tag.seen = max(tag.seen, now)  # stale counting restarts; a stale condition is over
            stale = tag.machines.get(STALE)
            if stale is not None:
                stale.active, stale.run_start = False, None
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
