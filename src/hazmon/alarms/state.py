"""The engine's state arrays: per-cell lifecycle bits and timers, per-tag signal history.

A *cell* is one condition column of one row (a tag, or a device appended after the tags). The
boolean per-cell state is packed as bits of one uint16 per row (bit ``col`` = column ``col`` of
:data:`hazmon.alarms.rules.COLUMNS`), so a batch touches one word per reading instead of eleven flags.

Each cell is the state machine of docs/alarms.md ("Condition semantics"): ``cond`` says whether the
condition is active (after deadband and delays), ``pend`` whether a run of samples counting toward
the other state is under way, and ``run_ts`` when that run began.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import numpy.typing as npt

from hazmon.alarms.alarm import PRIORITY_CODES, AlarmState, Priority
from hazmon.alarms.compiler import CompiledRules
from hazmon.alarms.rules import BAD, K

NONE_TS = np.iinfo(np.int64).min
U16 = npt.NDArray[np.uint16]
I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
_SHIFTS = np.arange(K, dtype=np.uint16)


def column_bits(*cols: int) -> int:
    out = 0
    for c in cols:
        out |= 1 << c
    return out


def bits_to_pairs(words: U16) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """(row, column) of every set bit, in row then column order."""
    nz = np.flatnonzero(words)
    bits = (words[nz, None] >> _SHIFTS) & np.uint16(1)
    i, col = np.nonzero(bits)
    return nz[i], col


def _pack(flags: npt.NDArray[np.bool_]) -> U16:
    packed: U16 = (flags.astype(np.uint16) << _SHIFTS).sum(axis=1, dtype=np.uint16)
    return packed


@dataclass(eq=False)
class CellState:
    priority: npt.NDArray[np.int8]  # (rows, K) index into PRIORITY_CODES, -1 disabled
    timing: npt.NDArray[np.uint16]  # (rows, K) index into the delay tables
    on_delay_us: I64
    off_delay_us: I64
    realarm_us: I64
    enabled: U16
    latch: U16
    realarm: U16  # cells with a re-alarm time
    cond: U16  # condition active (after deadband and on/off-delays)
    pend: U16  # a run toward the other state is under way (its start in run_ts)
    alarm: U16  # alarm active (after delays and latching)
    acked: U16
    masked: U16  # any of the four masks below
    oos: U16
    shelf: U16
    supd: U16  # suppressed by design
    supc: U16  # suppressed by communication loss
    run_ts: I64  # (rows, K) first sample of the pending run (meaningful where pend is set)
    annunc_ts: I64  # (rows, K) time of the last (re-)annunciation
    activated_ts: I64  # (rows, K) time the alarm last became active; NONE_TS once it is normal

    @classmethod
    def from_rules(cls, rc: CompiledRules) -> CellState:
        n = rc.rows
        enabled = _pack(rc.priority >= 0)
        return cls(
            priority=rc.priority.copy(),
            timing=rc.timing.copy(),
            on_delay_us=rc.on_delay_us,
            off_delay_us=rc.off_delay_us,
            realarm_us=rc.realarm_us,
            enabled=enabled,
            latch=_pack(rc.latch) & enabled,
            realarm=_pack(rc.realarm_us[rc.timing] > 0) & enabled,
            cond=np.zeros(n, np.uint16),
            pend=np.zeros(n, np.uint16),
            alarm=np.zeros(n, np.uint16),
            acked=enabled.copy(),
            masked=np.zeros(n, np.uint16),
            oos=np.zeros(n, np.uint16),
            shelf=np.zeros(n, np.uint16),
            supd=np.zeros(n, np.uint16),
            supc=np.zeros(n, np.uint16),
            run_ts=np.zeros((n, K), np.int64),
            annunc_ts=np.zeros((n, K), np.int64),
            activated_ts=np.full((n, K), NONE_TS, np.int64),
        )

    def add_device_row(self) -> int:
        """Append a row whose only cell (column BAD) is a communication-loss alarm; returns the row."""
        row = len(self.cond)
        grow = {"enabled": 1 << BAD, "acked": 1 << BAD}
        for f in fields(self):
            arr = getattr(self, f.name)
            if f.name.endswith("_delay_us") or f.name == "realarm_us":
                continue
            extra = np.zeros((1, *arr.shape[1:]), arr.dtype)
            if f.name == "priority":
                extra[:] = -1
                extra[0, BAD] = PRIORITY_CODES.index(Priority.HIGH)
            elif f.name == "activated_ts":
                extra[:] = NONE_TS
            elif f.name in grow:
                extra[:] = grow[f.name]
            setattr(self, f.name, np.concatenate([arr, extra]))
        return row

    def display(self, r: int, col: int) -> AlarmState:
        b = 1 << col
        if int(self.oos[r]) & b:
            return AlarmState.OUT_OF_SERVICE
        if int(self.shelf[r]) & b:
            return AlarmState.SHELVED
        if int(self.supd[r] | self.supc[r]) & b:
            return AlarmState.SUPPRESSED
        acked = bool(int(self.acked[r]) & b)
        if int(self.alarm[r]) & b:
            return AlarmState.ACTIVE_ACK if acked else AlarmState.ACTIVE_UNACK
        return AlarmState.NORMAL if acked else AlarmState.RTN_UNACK

    def nbytes(self) -> int:
        return sum(int(getattr(self, f.name).nbytes) for f in fields(self))


@dataclass(eq=False)
class TagState:
    """Per-tag signal history (rows of tags only, no devices)."""

    last_ts: I64  # last accepted reading, for ordering
    stale_ref: I64  # stale counts from max(last_ts, stale_ref): engine start, communication restored, refresh
    last_v: F64  # last valid value
    rate: F64  # last rate of change, units per minute
    frz_ref: F64
    frz_ts: I64
    roc_ta: I64
    roc_tc: I64
    roc_va: F64
    roc_vc: F64
    mark: npt.NDArray[np.intp]  # scratch for splitting batches into rounds
    round_ts: I64

    def __init__(self, n: int) -> None:
        self.last_ts = np.full(n, NONE_TS, np.int64)
        self.stale_ref = np.full(n, NONE_TS, np.int64)
        self.last_v = np.full(n, np.nan)
        self.rate = np.full(n, np.nan)
        self.frz_ref = np.full(n, np.nan)
        self.frz_ts = np.zeros(n, np.int64)
        self.roc_ta = np.full(n, NONE_TS, np.int64)
        self.roc_tc = np.full(n, NONE_TS, np.int64)
        self.roc_va = np.full(n, np.nan)
        self.roc_vc = np.full(n, np.nan)
        self.mark = np.zeros(n, np.intp)
        self.round_ts = np.zeros(n, np.int64)
        self._arange = np.arange(0, dtype=np.intp)

    def rounds(self, rows: npt.NDArray[np.intp], ts: I64) -> list[npt.NDArray[np.intp]] | None:
        """Split a batch into rounds without sorting: round k holds the k-th reading of each tag.

        Positions are in batch order. Returns None when some tag's readings are not in time order
        within the batch (the caller sorts instead). One round when no tag repeats: O(len(rows)).
        """
        n = len(rows)
        if len(self._arange) < n:
            self._arange = np.arange(n, dtype=np.intp)
        rem = self._arange[:n]
        self.mark[rows] = rem  # the common case first: no tag repeats
        if (self.mark[rows] == rem).all():
            return [rem]
        rounds: list[npt.NDArray[np.intp]] = []
        while len(rem):
            r = rows[rem]
            self.mark[r[::-1]] = rem[::-1]  # the first occurrence writes last and wins
            first = self.mark[r] == rem
            sel = rem[first]
            if rounds and (ts[sel] < self.round_ts[rows[sel]]).any():
                return None
            self.round_ts[rows[sel]] = ts[sel]
            rounds.append(sel)
            rem = rem[~first]
        return rounds

    def nbytes(self) -> int:
        return sum(int(v.nbytes) for v in vars(self).values() if isinstance(v, np.ndarray))
