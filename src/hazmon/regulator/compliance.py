"""Remote-monitoring compliance, as a regulator asks for it, per enterprise, site and installation:

- is data arriving — the share of tags that reported within their expected period (3 periods, at
  least 60 s), and the newest reading;
- what is in alarm and for how long — active and unacknowledged alarms by priority, the oldest
  active alarm, standing alarms (active over 24 h), shelved and out-of-service alarms;
- how fast alarms are handled — time from activation to acknowledgement over a period (median,
  90th percentile, and how many activations are still unacknowledged);
- the installation's GB 18218 grade.

Pure computation over what the runtime holds (sites, latest reading times, current alarms), plus one
journal query for handling times.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import numpy as np
import numpy.typing as npt

from hazmon.alarms.alarm import AlarmSnapshot, AlarmState, Priority
from hazmon.plant.site import Site
from hazmon.plant.tag import TagIndex, tag_ref
from hazmon.regulator.gb18218 import grade

US = 1_000_000
MIN_FRESH_S = 60.0
STANDING_S = 24 * 3600
DATA_OK_SHARE = 0.95

_ACTIVE = {AlarmState.ACTIVE_UNACK, AlarmState.ACTIVE_ACK}
_UNACK = {AlarmState.ACTIVE_UNACK, AlarmState.RTN_UNACK}


@dataclass
class AlarmTally:
    active: int = 0
    unacknowledged: int = 0
    by_priority: dict[str, int] = field(default_factory=lambda: {p.value: 0 for p in Priority})
    oldest_active_since_us: int | None = None
    standing: int = 0
    shelved: int = 0
    out_of_service: int = 0
    suppressed: int = 0

    def add(self, a: AlarmSnapshot, now_us: int) -> None:
        if a.state in _ACTIVE:
            self.active += 1
            self.by_priority[a.priority.value] += 1
            stood_since = a.activated_us if a.activated_us is not None else a.since_us  # an ack resets since_us
            if self.oldest_active_since_us is None or stood_since < self.oldest_active_since_us:
                self.oldest_active_since_us = stood_since
            if now_us - stood_since > STANDING_S * US:
                self.standing += 1
        if a.state in _UNACK:
            self.unacknowledged += 1
        self.shelved += a.state is AlarmState.SHELVED
        self.out_of_service += a.state is AlarmState.OUT_OF_SERVICE
        self.suppressed += a.state is AlarmState.SUPPRESSED

    def as_dict(self, now_us: int) -> dict[str, Any]:
        oldest = self.oldest_active_since_us
        return {
            "active": self.active,
            "unacknowledged": self.unacknowledged,
            "active_by_priority": self.by_priority,
            "oldest_active_s": None if oldest is None else round((now_us - oldest) / US, 1),
            "standing_over_24h": self.standing,
            "shelved": self.shelved,
            "out_of_service": self.out_of_service,
            "suppressed": self.suppressed,
        }


def data_arrival(
    keys: npt.NDArray[np.int64],
    periods_s: npt.NDArray[np.float64],
    last_us: npt.NDArray[np.int64],
    now_us: int,
    live: npt.NDArray[np.int64] | None = None,
) -> dict[str, Any]:
    """``last_us``: newest reading time per tag (any negative number: never). ``live``: keys of tags on
    a healthy subscription that reports by exception — reporting as soon as they have reported once,
    since such a subscription sends nothing while a value does not change."""
    seen = last_us >= 0
    fresh = seen & (now_us - last_us <= np.maximum(3 * periods_s, MIN_FRESH_S) * US)
    if live is not None and len(live):
        fresh |= seen & np.isin(keys, live)
    n = len(keys)
    share = float(fresh.mean()) if n else 1.0
    newest = int(last_us[seen].max()) if seen.any() else None
    return {
        "tags": n,
        "reporting": int(fresh.sum()),
        "silent": int(n - fresh.sum()),
        "share": round(share, 4),
        "newest_reading_age_s": None if newest is None else round((now_us - newest) / US, 1),
        "status": "ok" if share >= DATA_OK_SHARE else ("no_data" if not fresh.any() else "degraded"),
    }


async def handling_times(conn: asyncpg.Connection, site_id: str, since: datetime) -> dict[str, dict[str, Any]]:
    """Per installation ('' for alarms of devices): activations since ``since`` and the time each took
    to be acknowledged (an activation not acknowledged yet counts as pending)."""
    rows = await conn.fetch(
        """
        WITH act AS (
            SELECT j.alarm_id, j.tag_id, j.ts FROM alarm_journal j
            WHERE j.site_id = $1 AND j.ts >= $2 AND j.action = 'activate'
        )
        SELECT coalesce(e.installation_id, '') AS installation,
               count(*) AS activations,
               count(ack.ts) AS acknowledged,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM ack.ts - act.ts)) AS median_s,
               percentile_cont(0.9) WITHIN GROUP (ORDER BY extract(epoch FROM ack.ts - act.ts)) AS p90_s
        FROM act
        LEFT JOIN LATERAL (
            SELECT k.ts FROM alarm_journal k
            WHERE k.alarm_id = act.alarm_id AND k.ts >= act.ts AND k.action = 'acknowledge'
            ORDER BY k.ts LIMIT 1
        ) ack ON true
        LEFT JOIN tags t ON t.site_id = $1 AND t.id = act.tag_id
        LEFT JOIN equipment e ON e.site_id = $1 AND e.id = t.equipment_id
        GROUP BY 1
        """,
        site_id,
        since,
    )
    return {
        r["installation"]: {
            "activations": r["activations"],
            "acknowledged": r["acknowledged"],
            "pending": r["activations"] - r["acknowledged"],
            "median_time_to_ack_s": None if r["median_s"] is None else round(float(r["median_s"]), 1),
            "p90_time_to_ack_s": None if r["p90_s"] is None else round(float(r["p90_s"]), 1),
        }
        for r in rows
    }


def site_compliance(
    site: Site,
    tags: TagIndex,
    last_reading_us: Callable[[npt.NDArray[np.int64]], npt.NDArray[np.int64]],
    alarms: Iterable[AlarmSnapshot],
    handling: dict[str, dict[str, Any]],
    now_us: int,
    period: timedelta,
    live: npt.NDArray[np.int64] | None = None,
) -> dict[str, Any]:
    """``live``: keys of tags on a healthy report-by-exception subscription (see ``data_arrival``)."""
    equipment = site.equipment_by_id()
    installation_of_tag = {tag_ref(site.id, t.id): equipment[t.equipment].installation for t in site.tags}
    tallies = {i.id: AlarmTally() for i in site.installations}
    site_tally = AlarmTally()
    for a in alarms:
        inst_id = installation_of_tag.get(a.tag_id or "")
        site_tally.add(a, now_us)
        if inst_id is not None:
            tallies[inst_id].add(a, now_us)
    empty = {"activations": 0, "acknowledged": 0, "pending": 0, "median_time_to_ack_s": None, "p90_time_to_ack_s": None}
    installations = []
    all_keys: list[int] = []
    all_periods: list[float] = []
    for inst in site.installations:
        its = [
            (t, ref) for t in site.tags if installation_of_tag[ref := tag_ref(site.id, t.id)] == inst.id and ref in tags
        ]
        keys = np.array([tags.key(ref) for _, ref in its], dtype=np.int64)
        periods = np.array([t.period_s for t, _ in its], dtype=np.float64)
        all_keys += keys.tolist()
        all_periods += periods.tolist()
        g = grade(inst)
        installations.append(
            {
                "id": inst.id,
                "name": inst.name,
                "kind": inst.kind.value,
                "gb18218": {"major_hazard": g.is_major, "r": round(g.r, 2), "grade": g.level},
                "data": data_arrival(keys, periods, last_reading_us(keys), now_us, live),
                "alarms": tallies[inst.id].as_dict(now_us),
                "handling": handling.get(inst.id, empty),
            }
        )
    keys = np.array(all_keys, dtype=np.int64)
    return {
        "site": site.id,
        "name": site.site.name,
        "enterprise": {"id": site.enterprise.id, "name": site.enterprise.name, "uscc": site.enterprise.uscc},
        "period_days": round(period.total_seconds() / 86400, 2),
        "data": data_arrival(keys, np.array(all_periods, dtype=np.float64), last_reading_us(keys), now_us, live),
        "alarms": site_tally.as_dict(now_us),
        "installations": installations,
    }
