"""Condition kernels of the engine: vectorized evaluation of one round of readings (one per tag).

Each kernel says, per reading and condition, whether the reading *counts toward activation* (``on``
bits) and whether it *counts toward clearing* (``off`` bits); the engine's state machines
(docs/alarms.md, "Condition semantics") turn these into activations and clearances after the
delays. Bad readings count toward nothing but the quality alarm. ``quiet_band`` precomputes, per
tag, the open interval of values that count toward no limit, state or range activation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from hazmon.alarms.compiler import CompiledRules
from hazmon.alarms.rules import BAD, FROZEN, HH, LL, OUT_OF_RANGE, ROC_DOWN, ROC_UP, STALE, STATE, H, L
from hazmon.alarms.state import NONE_TS, TagState

I64 = npt.NDArray[np.int64]
U16 = npt.NDArray[np.uint16]
AUX_FROZEN, AUX_ROC = 1, 2
_US_PER_MIN = 60_000_000.0
_GOOD_OFF = np.uint16((1 << BAD) | (1 << STALE))  # a good reading counts toward clearing these


def _bits(flags: Any, col: int) -> U16:
    out: U16 = flags.astype(np.uint16) << np.uint16(col)
    return out


class Evaluator:
    """Rule parameters laid out for the kernels (column-major limits) and the tags' signal history."""

    def __init__(self, rules: CompiledRules, tags: TagState) -> None:
        self.rules = rules
        self.tags = tags
        self.limit = np.asfortranarray(rules.limit)  # one column is contiguous
        self.deadband = np.asfortranarray(rules.deadband)
        self.aux = ((rules.frozen_us > 0) * AUX_FROZEN + (rules.roc_window_us > 0) * AUX_ROC).astype(np.uint8)
        self.qlo, self.qhi = quiet_band(rules)
        self.any_roc = bool((self.aux & AUX_ROC).any())
        self.any_frozen = bool((self.aux & AUX_FROZEN).any())

    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in (self.limit, self.deadband, self.aux, self.qlo, self.qhi))

    def on_bits(self, r: npt.NDArray[np.intp], v: npt.NDArray[np.float64], valid: Any, enabled: U16) -> U16:
        """Bits of limits, state, range and quality that these readings count toward activating."""
        lim, rc = self.limit, self.rules
        on = _bits(v >= lim[r, HH], HH)
        on |= _bits(v >= lim[r, H], H)
        on |= _bits(v <= lim[r, L], L)
        on |= _bits(v <= lim[r, LL], LL)
        on |= _bits(v == lim[r, STATE], STATE)
        on |= _bits((v < rc.oor_lo[r]) | (v > rc.oor_hi[r]), OUT_OF_RANGE)
        out: U16 = np.where(valid, on, enabled & np.uint16(1 << BAD)).astype(np.uint16)
        return out

    def off_bits(self, r: npt.NDArray[np.intp], v: npt.NDArray[np.float64], valid: Any) -> U16:
        """Bits of limits, state, range, quality and staleness that these readings count toward clearing."""
        lim, db, rc = self.limit, self.deadband, self.rules
        off = _bits(v < lim[r, HH] - db[r, HH], HH)
        off |= _bits(v < lim[r, H] - db[r, H], H)
        off |= _bits(v > lim[r, L] + db[r, L], L)
        off |= _bits(v > lim[r, LL] + db[r, LL], LL)
        off |= _bits(v != lim[r, STATE], STATE)
        off |= _bits(~((v < rc.oor_lo[r]) | (v > rc.oor_hi[r])), OUT_OF_RANGE) | _GOOD_OFF
        out: U16 = np.where(valid, off, np.uint16(0)).astype(np.uint16)
        return out

    def rate(
        self, rows: npt.NDArray[np.intp], ts: I64, v: npt.NDArray[np.float64], valid: Any, aux: Any, on: U16, off: U16
    ) -> None:
        """Rate-of-change bits for the good readings of tags with a ROC rule (endpoints over the window)."""
        if not self.any_roc:
            return
        sel = np.flatnonzero(valid & ((aux & AUX_ROC) != 0))
        if len(sel) == 0:
            return
        t, rc = self.tags, self.rules
        r, tt, vv, w = rows[sel], ts[sel], v[sel], rc.roc_window_us[rows[sel]]
        ta, tc, va, vc = t.roc_ta[r], t.roc_tc[r], t.roc_va[r], t.roc_vc[r]
        first = ta == NONE_TS
        shift = ~first & (tt - np.where(first, tt, tc) >= w)
        ta = np.where(first, tt, np.where(shift, tc, ta))
        va = np.where(first, vv, np.where(shift, vc, va))
        upd = first | shift
        t.roc_ta[r], t.roc_va[r] = ta, va
        t.roc_tc[r], t.roc_vc[r] = np.where(upd, tt, tc), np.where(upd, vv, vc)
        span = tt - ta
        ok = span >= w
        rate = np.where(ok, (vv - va) * _US_PER_MIN / np.where(ok, span, 1).astype(np.float64), np.nan)
        t.rate[r] = rate
        on_bits = np.zeros(len(sel), np.uint16)
        off_bits = np.zeros(len(sel), np.uint16)
        for col, sign in ((ROC_UP, 1.0), (ROC_DOWN, -1.0)):
            x = self.limit[r, col]
            on_bits |= _bits(sign * rate >= x, col)  # no rate yet (NaN): neither
            off_bits |= _bits(sign * rate < x - self.deadband[r, col], col)
        on[sel] |= on_bits
        off[sel] |= off_bits

    def frozen(
        self,
        rows: npt.NDArray[np.intp],
        ts: I64,
        v: npt.NDArray[np.float64],
        valid: Any,
        aux: Any,
        oc: U16,
        on: U16,
        off: U16,
    ) -> None:
        if not self.any_frozen:
            return
        sel = np.flatnonzero(valid & ((aux & AUX_FROZEN) != 0))
        if len(sel) == 0:
            return
        t, rc = self.tags, self.rules
        r, tt, vv = rows[sel], ts[sel], v[sel]
        ref = t.frz_ref[r]
        same = np.abs(vv - ref) <= rc.frozen_tol[r]
        t.frz_ref[r] = np.where(same, ref, vv)
        moved = ~same
        t.frz_ts[r[moved]] = tt[moved]
        fbit = np.uint16(1 << FROZEN)
        still = np.flatnonzero(same)  # usually few: live signals move
        if len(still):
            rs = r[still]
            on[sel[still[tt[still] - t.frz_ts[rs] >= rc.frozen_us[rs]]]] |= fbit
        if (oc & fbit).any():  # toward clearing matters only where active: few
            off[np.flatnonzero(((oc & ~on & fbit) != 0) & valid)] |= fbit


def quiet_band(rc: CompiledRules) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Per tag, an open interval of values that set no limit, state or range condition.

    A reading inside it, of a tag with none of those conditions present, needs no evaluation
    beyond rate of change and freezing. The band may be narrower than the truly quiet region
    (a discrete alarm state is excluded by one side only): that only costs the full evaluation.
    """
    en = rc.priority >= 0
    with np.errstate(all="ignore"):
        lows = [np.where(en[:, c], rc.limit[:, c], np.nan) for c in (L, LL)]
        highs = [np.where(en[:, c], rc.limit[:, c], np.nan) for c in (HH, H)]
        oor = en[:, OUT_OF_RANGE]
        lows.append(np.where(oor, rc.oor_lo, np.nan))
        highs.append(np.where(oor, rc.oor_hi, np.nan))
        state = np.where(en[:, STATE], rc.limit[:, STATE], np.nan)
        lows.append(np.where(state <= 0, state, np.nan))
        highs.append(np.where(state > 0, state, np.nan))
        qlo = np.fmax.reduce(lows)
        qhi = np.fmin.reduce(highs)
    return np.where(np.isnan(qlo), -np.inf, qlo), np.where(np.isnan(qhi), np.inf, qhi)
