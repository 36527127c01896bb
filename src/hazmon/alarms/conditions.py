"""Condition kernels of the engine: vectorized evaluation of one round of readings (one per tag).

``quiet_band`` precomputes, per tag, the open interval of values that set no limit, state or
range condition; ``Evaluator`` computes the condition bits for rate of change, freezing, and (for
readings outside the quiet band) limits, discrete state, range and quality.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from hazmon.alarms.compiler import CompiledRules
from hazmon.alarms.rules import BAD, FROZEN, HH, LL, OUT_OF_RANGE, ROC_DOWN, ROC_UP, STATE, H, L
from hazmon.alarms.state import NONE_TS, TagState, column_bits

I64 = npt.NDArray[np.int64]
U16 = npt.NDArray[np.uint16]
HELD_BITS = column_bits(HH, H, L, LL, ROC_UP, ROC_DOWN, STATE, OUT_OF_RANGE, FROZEN)
AUX_FROZEN, AUX_ROC = 1, 2
_US_PER_MIN = 60_000_000.0


class Evaluator:
    """Rule parameters laid out for the kernels (column-major limits) and the tags' signal history."""

    def __init__(self, rules: CompiledRules, tags: TagState) -> None:
        self.rules = rules
        self.tags = tags
        self.limit = np.asfortranarray(rules.limit)  # one column is contiguous
        self.deadband = np.asfortranarray(rules.deadband)
        self.aux = ((rules.frozen_us > 0) * AUX_FROZEN + (rules.roc_window_us > 0) * AUX_ROC).astype(np.uint8)
        self.qlo, self.qhi = quiet_band(rules)

    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in (self.limit, self.deadband, self.aux, self.qlo, self.qhi))

    def full(
        self, r: npt.NDArray[np.intp], v: npt.NDArray[np.float64], oc: U16, valid: Any, new: U16, enabled: U16
    ) -> U16:
        """Limit, state, range and quality bits for readings that are not quiet."""
        lim, db, rc = self.limit, self.deadband, self.rules
        one = np.uint16(1)
        for col in (HH, H):
            was = (oc >> np.uint16(col)) & one
            new |= (v >= lim[r, col] - db[r, col] * was).astype(np.uint16) << np.uint16(col)
        for col in (L, LL):
            was = (oc >> np.uint16(col)) & one
            new |= (v <= lim[r, col] + db[r, col] * was).astype(np.uint16) << np.uint16(col)
        new |= (v == lim[r, STATE]).astype(np.uint16) << np.uint16(STATE)
        new |= ((v < rc.oor_lo[r]) | (v > rc.oor_hi[r])).astype(np.uint16) << np.uint16(OUT_OF_RANGE)
        bad = (enabled & np.uint16(1 << BAD)) | (oc & HELD_BITS)
        result: U16 = np.where(valid, new, bad).astype(np.uint16)
        return result

    def rate(
        self, rows: npt.NDArray[np.intp], ts: I64, v: npt.NDArray[np.float64], valid: Any, aux: Any, oc: U16, new: U16
    ) -> None:
        """Rate-of-change bits for the readings of tags with a ROC rule (endpoints over the window)."""
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
        o = oc[sel]
        bits = np.zeros(len(sel), np.uint16)
        for col, sign in ((ROC_UP, 1.0), (ROC_DOWN, -1.0)):
            was = (o >> np.uint16(col)) & np.uint16(1)
            thr = self.limit[r, col] - self.deadband[r, col] * was
            bits |= (sign * rate >= thr).astype(np.uint16) << np.uint16(col)
        new[sel] |= bits

    def frozen(
        self, rows: npt.NDArray[np.intp], ts: I64, v: npt.NDArray[np.float64], valid: Any, aux: Any, new: U16
    ) -> None:
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
        still = np.flatnonzero(same)  # usually few: live signals move
        if len(still):
            rs = r[still]
            frozen = still[tt[still] - t.frz_ts[rs] >= rc.frozen_us[rs]]
            new[sel[frozen]] |= np.uint16(1 << FROZEN)


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
