"""Alarm-system KPIs from the journal (ISA-18.2 / IEC 62682, EEMUA 191).

Counted are *annunciations*: ``activate`` events (re-alarms are reported separately). Rates use
fixed 10-minute intervals aligned to the epoch; an interval with 10 or more alarms is a flood
interval. A chattering alarm activated 3 or more times within one minute; a standing alarm has
been active for more than 24 hours at the end of the period.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from hazmon.alarms.alarm import Priority
from hazmon.alarms.journal import JournalError

INTERVAL = timedelta(minutes=10)
FLOOD_ALARMS = 10
CHATTER_ACTIVATIONS = 3
CHATTER_WINDOW = timedelta(minutes=1)
STANDING_AFTER = timedelta(hours=24)


async def compute_kpis(
    conn: asyncpg.Connection, site_id: str, since: datetime | timedelta, until: datetime | None = None
) -> dict[str, Any]:
    """KPIs of one site over [since, until); ``since`` may be a duration back from ``until`` (default now)."""
    end = until or datetime.now(UTC)
    start = end - since if isinstance(since, timedelta) else since
    if start >= end:
        raise ValueError("the period is empty: since must lie before until")
    try:
        return await _compute(conn, site_id, start, end)
    except (asyncpg.PostgresError, OSError) as e:
        raise JournalError(f"cannot compute alarm KPIs: {e}") from e


async def _compute(conn: asyncpg.Connection, site_id: str, start: datetime, end: datetime) -> dict[str, Any]:
    where = "site_id = $1 AND ts >= $2 AND ts < $3"
    args = (site_id, start, end)
    total = await conn.fetchval(f"SELECT count(*) FROM alarm_journal WHERE {where} AND action = 'activate'", *args)
    realarms = await conn.fetchval(f"SELECT count(*) FROM alarm_journal WHERE {where} AND action = 'realarm'", *args)
    buckets = await conn.fetch(
        f"""SELECT floor(extract(epoch FROM ts) / 600)::bigint AS bucket, count(*) AS n
            FROM alarm_journal WHERE {where} AND action = 'activate' GROUP BY 1""",
        *args,
    )
    intervals = max(1, -(-int((end - start).total_seconds()) // int(INTERVAL.total_seconds())))
    flood = [b for b in buckets if b["n"] >= FLOOD_ALARMS]
    chatter = await conn.fetch(
        f"""SELECT alarm_id, max(n) AS max_per_min FROM (
              SELECT alarm_id, count(*) OVER (PARTITION BY alarm_id ORDER BY ts
                     RANGE BETWEEN INTERVAL '1 minute' PRECEDING AND CURRENT ROW) AS n
              FROM alarm_journal WHERE {where} AND action = 'activate') w
            GROUP BY alarm_id HAVING max(n) >= {CHATTER_ACTIVATIONS} ORDER BY 2 DESC, 1""",
        *args,
    )
    standing = await conn.fetch(
        """WITH last AS (
              SELECT DISTINCT ON (alarm_id) alarm_id, new_state FROM alarm_journal
              WHERE site_id = $1 AND ts < $2 ORDER BY alarm_id, ts DESC, id DESC),
            act AS (
              SELECT alarm_id, max(ts) AS since FROM alarm_journal
              WHERE site_id = $1 AND ts < $2 AND action = 'activate' GROUP BY alarm_id)
           SELECT last.alarm_id, act.since FROM last JOIN act USING (alarm_id)
           WHERE last.new_state IN ('active_unack', 'active_ack') AND act.since <= $3
           ORDER BY act.since, last.alarm_id""",
        site_id,
        end,
        end - STANDING_AFTER,
    )
    top = await conn.fetch(
        f"""SELECT alarm_id, count(*) AS n FROM alarm_journal WHERE {where} AND action = 'activate'
            GROUP BY alarm_id ORDER BY n DESC, alarm_id LIMIT 10""",
        *args,
    )
    mix = await conn.fetch(
        f"""SELECT priority, count(*) AS n FROM alarm_journal WHERE {where} AND action = 'activate'
            GROUP BY priority""",
        *args,
    )
    counts = {r["priority"]: int(r["n"]) for r in mix}

    def share(n: int) -> float:
        return round(n / total, 4) if total else 0.0

    top_n = sum(int(r["n"]) for r in top)
    return {
        "site": site_id,
        "start": start.isoformat(),
        "end": end.isoformat(),
        "alarms": int(total),
        "realarms": int(realarms),
        "intervals_10min": intervals,
        "alarms_per_10min": round(total / intervals, 3),
        "max_per_10min": max((int(b["n"]) for b in buckets), default=0),
        "flood": {
            "intervals": len(flood),
            "time_s": len(flood) * int(INTERVAL.total_seconds()),
            "share": round(len(flood) / intervals, 4),
        },
        "chattering": [{"alarm_id": r["alarm_id"], "max_per_min": int(r["max_per_min"])} for r in chatter],
        "standing": [
            {
                "alarm_id": r["alarm_id"],
                "active_since": r["since"].isoformat(),
                "hours": round((end - r["since"]).total_seconds() / 3600, 1),
            }
            for r in standing
        ],
        "top10": [{"alarm_id": r["alarm_id"], "count": int(r["n"]), "share": share(int(r["n"]))} for r in top],
        "top10_share": share(top_n),
        "priority_mix": {
            str(p): {"count": counts.get(str(p), 0), "share": share(counts.get(str(p), 0))} for p in Priority
        },
    }
