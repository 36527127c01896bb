"""Compliance figures over a period [start, end), from the store and the alarm journal, per tag,
installation and site (docs/regulator.md has the definitions):

- data completeness per tag: readings of good or uncertain quality received / readings expected
  (period length ÷ the tag's expected period), at most 1. A tag delivered by exception (an OPC UA
  subscription sends changes only) is complete while its device is online: its completeness is
  its device's online ratio;
- gaps: stretches longer than ``gap_minutes`` without a reading, with their times (tags delivered by
  exception: the times their device was offline);
- device online ratio: 1 − (time its communication-loss alarm was active) ÷ period length;
- alarms raised in the period by priority, time to acknowledge (median, 90th percentile);
- standing alarms: active at the end of the period and for more than 24 h;
- SIS trips: transitions of ``sis_trip`` state tags from 0 to non-zero;
- retention: raw readings configured to be kept ≥ 30 days, and the oldest reading held.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from hazmon.alarms.alarm import Priority, split_alarm_id
from hazmon.plant.site import Signal, Site
from hazmon.plant.tag import local_id, tag_ref
from hazmon.regulator.monitoring import MIN_RETENTION_DAYS

COMM_LOSS = "comm.LOSS"  # the condition of a device's communication-loss alarm
STANDING = timedelta(hours=24)
STABLE_ONLINE_RATIO = 0.95  # 稳定运行: the enterprise's devices online at least 95% of the period
COMPLETE_SHARE = 0.95  # a tag is "complete" at 95% of its expected readings
BAD_QUALITY = 128
MINUTE = timedelta(minutes=1)
MIN_GAP_MINUTES = 2.0  # gaps are found between minutes with data: shorter ones cannot be told apart
MAX_GAPS_LISTED = 20  # per tag; the count is always complete


def _r(x: float | None, nd: int = 4) -> float | None:
    return None if x is None else round(x, nd)


@dataclass
class Gap:
    start: datetime
    end: datetime

    def as_dict(self) -> dict[str, Any]:
        return {
            "from": self.start.isoformat(),
            "to": self.end.isoformat(),
            "minutes": round((self.end - self.start).total_seconds() / 60, 1),
        }


@dataclass
class TagFigures:
    id: str
    installation: str
    period_s: float
    by_exception: bool
    readings: int = 0
    expected: float = 0.0
    completeness: float = 0.0
    gaps: list[Gap] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "installation": self.installation,
            "expected_period_s": self.period_s,
            "by_exception": self.by_exception,
            "readings": self.readings,
            "expected_readings": round(self.expected),
            "completeness": round(self.completeness, 4),
            "gaps": len(self.gaps),
            "gap_list": [g.as_dict() for g in self.gaps[:MAX_GAPS_LISTED]],
        }


def _merge(intervals: list[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    out: list[tuple[datetime, datetime]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


async def offline_intervals(
    conn: asyncpg.Connection, site_id: str, start: datetime, end: datetime
) -> dict[str, list[tuple[datetime, datetime]]]:
    """Per device (the owner of a ``comm.LOSS`` alarm, by its id within the site), the times within
    [start, end) it was offline."""
    rows = await conn.fetch(
        """
        SELECT alarm_id, ts, action FROM (
            SELECT DISTINCT ON (alarm_id) alarm_id, ts, action, id FROM alarm_journal
            WHERE site_id = $1 AND condition = $4 AND action IN ('activate', 'clear') AND ts < $2
            ORDER BY alarm_id, ts DESC, id DESC
        ) before
        UNION ALL
        SELECT alarm_id, ts, action FROM alarm_journal
        WHERE site_id = $1 AND condition = $4 AND action IN ('activate', 'clear') AND ts >= $2 AND ts < $3
        ORDER BY 1, 2
        """,
        site_id,
        start,
        end,
        COMM_LOSS,
    )
    out: dict[str, list[tuple[datetime, datetime]]] = {}
    down_since: dict[str, datetime] = {}
    for r in rows:
        owner = local_id(split_alarm_id(r["alarm_id"])[0])
        out.setdefault(owner, [])
        ts = max(r["ts"], start)
        if r["action"] == "activate":
            down_since.setdefault(owner, ts)
        elif owner in down_since:
            a = down_since.pop(owner)
            if ts > a:
                out[owner].append((a, ts))
    for owner, a in down_since.items():
        if end > a:
            out[owner].append((a, end))
    return {k: _merge(v) for k, v in out.items()}


async def _regions(conn: asyncpg.Connection, start: datetime, end: datetime) -> tuple[datetime, datetime]:
    """[lo, hi): the whole minutes of the period the 1-minute rollup covers (maintenance keeps it up
    to its mark); the rest of [start, end) is read raw."""
    mark = await conn.fetchval("SELECT value FROM maintenance_state WHERE name = 'readings_1m'")
    lo = min(_ceil_minute(start), end)
    hi = lo if mark is None else max(lo, min(_floor_minute(end), _floor_minute(mark)))
    return lo, hi


def _floor_minute(t: datetime) -> datetime:
    return t.replace(second=0, microsecond=0)


def _ceil_minute(t: datetime) -> datetime:
    f = _floor_minute(t)
    return f if f == t else f + MINUTE


_GOOD = f"quality < {BAD_QUALITY} AND value <> 'NaN'"


@dataclass
class _Run:
    """Minutes with data of one tag, in order: ``first``..``last``, missing minutes only where ``holes``
    (pairs of the minutes with data either side of a hole longer than the threshold)."""

    first: datetime
    last: datetime
    holes: list[tuple[datetime, datetime]] = field(default_factory=list)


async def _minutes(
    conn: asyncpg.Connection, keys: list[int], start: datetime, end: datetime, threshold: timedelta
) -> tuple[dict[int, int], dict[int, list[_Run]]]:
    """Readings received per tag, and its minutes with data as runs: the 1-minute rollup where
    maintenance has built it (one aggregate, and a scan in order only for tags that miss minutes
    in it), raw readings at the edges of the period."""
    lo, hi = await _regions(conn, start, end)
    counts: dict[int, int] = {}
    runs: dict[int, list[_Run]] = {k: [] for k in keys}
    edge = await conn.fetch(
        f"""
        SELECT tag, date_trunc('minute', time) AS m, count(*) AS n FROM readings
        WHERE tag = ANY($1::int[]) AND ((time >= $2 AND time < $3) OR (time >= $4 AND time < $5)) AND {_GOOD}
        GROUP BY 1, 2
        """,
        keys,
        start,
        lo,
        hi,
        end,
    )
    for r in edge:
        counts[r["tag"]] = counts.get(r["tag"], 0) + int(r["n"])
        runs[r["tag"]].append(_Run(r["m"], r["m"]))
    if hi > lo:
        rolled = await conn.fetch(
            "SELECT tag, sum(n)::bigint AS n, count(*) AS minutes, min(bucket) AS first_m, max(bucket) AS last_m "
            "FROM readings_1m WHERE tag = ANY($1::int[]) AND bucket >= $2 AND bucket < $3 GROUP BY tag",
            keys,
            lo,
            hi,
        )
        holed = [r["tag"] for r in rolled if r["minutes"] < (r["last_m"] - r["first_m"]) / MINUTE + 1]
        holes: dict[int, list[tuple[datetime, datetime]]] = {}
        if holed:
            for h in await conn.fetch(
                """
                SELECT tag, prev, bucket FROM (
                    SELECT tag, bucket, lag(bucket) OVER (PARTITION BY tag ORDER BY bucket) AS prev
                    FROM readings_1m WHERE tag = ANY($1::int[]) AND bucket >= $2 AND bucket < $3
                ) x WHERE bucket - prev > $4
                """,
                holed,
                lo,
                hi,
                threshold,
            ):
                holes.setdefault(h["tag"], []).append((h["prev"], h["bucket"]))
        for r in rolled:
            counts[r["tag"]] = counts.get(r["tag"], 0) + int(r["n"])
            runs[r["tag"]].append(_Run(r["first_m"], r["last_m"], sorted(holes.get(r["tag"], []))))
    for v in runs.values():
        v.sort(key=lambda run: run.first)
    return counts, runs


async def _presence(
    conn: asyncpg.Connection, keys: list[int], start: datetime, end: datetime, gap: timedelta
) -> tuple[dict[int, int], dict[int, list[Gap]]]:
    """Per tag: readings received, and the gaps longer than ``gap`` with their exact times. Gaps are
    found between minutes with data, then timed to the readings on either side (index look-ups)."""
    threshold = gap - MINUTE  # minutes with data further apart than this may hold a gap over ``gap``
    counts, runs = await _minutes(conn, keys, start, end, threshold)
    # what to time exactly: (tag, minute before the gap or None, minute after the gap or None)
    probes: list[tuple[int, datetime | None, datetime | None]] = []
    for tag, rs in runs.items():
        if not rs:
            continue
        probes.append((tag, None, rs[0].first))
        for i, run in enumerate(rs):
            probes += [(tag, a, b) for a, b in run.holes]
            if i + 1 < len(rs) and rs[i + 1].first - run.last > threshold:
                probes.append((tag, run.last, rs[i + 1].first))
        probes.append((tag, rs[-1].last, None))
    timed = await conn.fetch(
        f"""
        SELECT c.i,
            (SELECT max(time) FROM readings WHERE c.a IS NOT NULL AND tag = c.tag AND time >= greatest(c.a, $5)
               AND time < least(c.a + interval '1 minute', $6) AND {_GOOD}) AS t1,
            (SELECT min(time) FROM readings WHERE c.b IS NOT NULL AND tag = c.tag AND time >= greatest(c.b, $5)
               AND time < least(c.b + interval '1 minute', $6) AND {_GOOD}) AS t2
        FROM unnest($1::int[], $2::timestamptz[], $3::timestamptz[], $4::int[]) AS c(tag, a, b, i)
        """,
        [p[0] for p in probes],
        [p[1] for p in probes],
        [p[2] for p in probes],
        list(range(len(probes))),
        start,
        end,
    )
    by_i = {r["i"]: (r["t1"], r["t2"]) for r in timed}
    gaps: dict[int, list[Gap]] = {k: [] for k in keys}
    for i, (tag, a, b) in enumerate(probes):
        t1, t2 = by_i.get(i, (None, None))
        # raw readings dropped by retention: the minute bounds are what is known
        left = start if a is None else (t1 or min(a + MINUTE, end))
        right = end if b is None else (t2 or max(b, start))
        if right - left > gap:
            gaps[tag].append(Gap(left, right))
    for k in keys:
        if k not in counts:
            gaps[k] = [Gap(start, end)]
    return counts, gaps


async def _sis_trips(conn: asyncpg.Connection, keys: list[int], start: datetime, end: datetime) -> dict[int, int]:
    """Transitions from 0 to non-zero. Only the minutes that can hold one are read raw: those with a
    non-zero value that also hold a 0, or do not follow a minute whose last value is non-zero."""
    if not keys:
        return {}
    lo, hi = await _regions(conn, start, end)
    rows = await conn.fetch(
        f"""
        SELECT tag, bucket AS m, min, last FROM readings_1m
        WHERE tag = ANY($1::int[]) AND bucket >= $3 AND bucket < $4 AND max <> 0
        UNION ALL
        SELECT tag, date_trunc('minute', time) AS m, min(value), (array_agg(value ORDER BY time DESC))[1]
        FROM readings
        WHERE tag = ANY($1::int[]) AND ((time >= $2 AND time < $3) OR (time >= $4 AND time < $5)) AND {_GOOD}
        GROUP BY 1, 2 HAVING max(value) <> 0
        ORDER BY 1, 2
        """,
        keys,
        start,
        lo,
        hi,
        end,
    )
    candidates: list[tuple[int, datetime]] = []
    prev: asyncpg.Record | None = None
    for r in rows:
        held = prev is not None and prev["tag"] == r["tag"] and r["m"] - prev["m"] == MINUTE and prev["last"] != 0
        if r["min"] == 0 or not held:
            candidates.append((r["tag"], r["m"]))
        prev = r
    if not candidates:
        return {}
    counted = await conn.fetch(
        f"""
        SELECT c.tag, (
            SELECT count(*) FROM (
                SELECT value, lag(value) OVER (ORDER BY time) AS prev, inside FROM (
                    SELECT time, value, true AS inside FROM readings
                    WHERE tag = c.tag AND time >= greatest(c.m, $3) AND time < least(c.m + interval '1 minute', $4)
                      AND {_GOOD}
                    UNION ALL
                    (SELECT time, value, false FROM readings
                     WHERE tag = c.tag AND time < greatest(c.m, $3) AND {_GOOD} ORDER BY time DESC LIMIT 1)
                ) x
            ) y WHERE inside AND value <> 0 AND coalesce(prev, 0) = 0
        ) AS trips
        FROM unnest($1::int[], $2::timestamptz[]) AS c(tag, m)
        """,
        [c[0] for c in candidates],
        [c[1] for c in candidates],
        start,
        end,
    )
    out: dict[int, int] = {}
    for r in counted:
        out[r["tag"]] = out.get(r["tag"], 0) + int(r["trips"])
    return out


async def _alarm_figures(
    conn: asyncpg.Connection, site_id: str, start: datetime, end: datetime
) -> tuple[list[asyncpg.Record], list[asyncpg.Record]]:
    """Activations in the period with their time to acknowledge, and alarms standing at the end."""
    activations = await conn.fetch(
        """
        SELECT act.alarm_id, act.tag_id, act.priority, act.condition,
               extract(epoch FROM ack.ts - act.ts) AS ack_s,
               coalesce(e.installation_id, '') AS installation
        FROM alarm_journal act
        LEFT JOIN LATERAL (
            SELECT k.ts FROM alarm_journal k
            WHERE k.alarm_id = act.alarm_id AND k.ts >= act.ts AND k.ts < $3 AND k.action = 'acknowledge'
            ORDER BY k.ts LIMIT 1
        ) ack ON true
        LEFT JOIN tags t ON t.site_id = $1 AND t.id = act.tag_id
        LEFT JOIN equipment e ON e.site_id = $1 AND e.id = t.equipment_id
        WHERE act.site_id = $1 AND act.ts >= $2 AND act.ts < $3 AND act.action = 'activate'
        """,
        site_id,
        start,
        end,
    )
    standing = await conn.fetch(
        """
        WITH last AS (
            SELECT DISTINCT ON (alarm_id) alarm_id, tag_id, priority, new_state FROM alarm_journal
            WHERE site_id = $1 AND ts < $2 ORDER BY alarm_id, ts DESC, id DESC
        ), act AS (
            SELECT DISTINCT ON (alarm_id) alarm_id, ts FROM alarm_journal
            WHERE site_id = $1 AND ts < $2 AND action = 'activate' ORDER BY alarm_id, ts DESC, id DESC
        )
        SELECT last.alarm_id, last.priority, act.ts AS since, coalesce(e.installation_id, '') AS installation
        FROM last JOIN act USING (alarm_id)
        LEFT JOIN tags t ON t.site_id = $1 AND t.id = last.tag_id
        LEFT JOIN equipment e ON e.site_id = $1 AND e.id = t.equipment_id
        WHERE last.new_state IN ('active_unack', 'active_ack') AND act.ts <= $3
        ORDER BY act.ts
        """,
        site_id,
        end,
        end - STANDING,
    )
    return activations, standing


def _ack_stats(ack_s: list[float], activations: int) -> dict[str, Any]:
    ack_s = sorted(ack_s)
    p90 = None
    if ack_s:
        # the 90th percentile by linear interpolation (as percentile_cont)
        pos = 0.9 * (len(ack_s) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(ack_s) - 1)
        p90 = ack_s[lo] + (ack_s[hi] - ack_s[lo]) * (pos - lo)
    return {
        "activations": activations,
        "acknowledged": len(ack_s),
        "unacknowledged": activations - len(ack_s),
        "median_time_to_ack_s": None if not ack_s else round(statistics.median(ack_s), 1),
        "p90_time_to_ack_s": _r(p90, 1),
    }


def _online(
    intervals: Mapping[str, list[tuple[datetime, datetime]]], devices: Iterable[str], span_s: float
) -> dict[str, Any]:
    per = {}
    for d in sorted(set(devices) | set(intervals)):
        off = sum((b - a).total_seconds() for a, b in intervals.get(d, []))
        per[d] = {"online_ratio": round(1 - off / span_s, 4) if span_s > 0 else 1.0, "offline_s": round(off, 1)}
    ratio = statistics.fmean(v["online_ratio"] for v in per.values()) if per else 1.0
    return {"online_ratio": round(ratio, 4), "devices": per}


async def period_figures(
    conn: asyncpg.Connection,
    site: Site,
    keys: Mapping[str, int],
    start: datetime,
    end: datetime,
    *,
    by_exception: Mapping[str, str] | None = None,
    devices: Iterable[str] = (),
    gap_minutes: float = 10.0,
    retention_days: int | None = None,
) -> dict[str, Any]:
    """The figures of one site over [start, end).

    ``keys``: tag reference (``site/tag``) -> store key; ``by_exception``: tag reference -> the device
    (its reference) that delivers it by exception (OPC UA subscriptions); ``devices``: every device known
    to feed the site (devices that never lost communication have no journal entries). The figures name
    tags and devices by their ids within the site."""
    prefix = site.id + "/"
    by_exception = {local_id(t): local_id(d) for t, d in (by_exception or {}).items() if t.startswith(prefix)}
    devices = [local_id(d) for d in devices]
    span_s = max((end - start).total_seconds(), 1e-9)
    gap = timedelta(minutes=gap_minutes)
    equipment = site.equipment_by_id()
    inst_of = {t.id: equipment[t.equipment].installation for t in site.tags}
    tags = [t for t in site.tags if tag_ref(site.id, t.id) in keys]
    key_of = {t.id: keys[tag_ref(site.id, t.id)] for t in tags}
    counts, tag_gaps = await _presence(conn, list(key_of.values()), start, end, gap)
    offline = await offline_intervals(conn, site.id, start, end)
    online = _online(offline, [*devices, *by_exception.values()], span_s)
    sis = [t for t in tags if t.signal is Signal.SIS_TRIP]
    trips = await _sis_trips(conn, [key_of[t.id] for t in sis], start, end)
    activations, standing = await _alarm_figures(conn, site.id, start, end)
    oldest = await conn.fetchval(
        "SELECT min(r.time) FROM unnest($1::int[]) AS k(tag) "
        "CROSS JOIN LATERAL (SELECT time FROM readings WHERE tag = k.tag ORDER BY time LIMIT 1) r",
        list(key_of.values()),
    )

    figures: list[TagFigures] = []
    for t in tags:
        k = key_of[t.id]
        f = TagFigures(t.id, inst_of[t.id], t.period_s, t.id in by_exception)
        f.readings = counts.get(k, 0)
        f.expected = span_s / t.period_s
        if f.by_exception:
            device = by_exception[t.id]
            f.completeness = online["devices"].get(device, {"online_ratio": 1.0})["online_ratio"]
            f.gaps = [Gap(a, b) for a, b in offline.get(device, []) if b - a > gap]
        else:
            f.completeness = min(1.0, f.readings / f.expected) if f.expected else 1.0
            f.gaps = tag_gaps.get(k, [])
        figures.append(f)

    def block(inst_id: str | None) -> dict[str, Any]:
        fs = [f for f in figures if inst_id is None or f.installation == inst_id]
        acts = [a for a in activations if inst_id is None or a["installation"] == inst_id]
        stand = [s for s in standing if inst_id is None or s["installation"] == inst_id]
        by_priority = {p.value: 0 for p in Priority}
        for a in acts:
            by_priority[a["priority"]] += 1
        inst_trips = sum(trips.get(key_of[t.id], 0) for t in sis if inst_id is None or inst_of[t.id] == inst_id)
        completeness = statistics.fmean(f.completeness for f in fs) if fs else None
        return {
            "tags": len(fs),
            "completeness": _r(completeness),
            "complete_tags": sum(f.completeness >= COMPLETE_SHARE for f in fs),
            "tags_with_gaps": sum(bool(f.gaps) for f in fs),
            "gaps": sum(len(f.gaps) for f in fs),
            "alarms_by_priority": by_priority,
            "alarms": len(acts),
            "handling": _ack_stats([float(a["ack_s"]) for a in acts if a["ack_s"] is not None], len(acts)),
            "standing_alarms": [
                {"alarm_id": s["alarm_id"], "priority": s["priority"], "active_since": s["since"].isoformat()}
                for s in stand
            ],
            "sis_trips": inst_trips,
        }

    retained_days = None if oldest is None else round((end - oldest).total_seconds() / 86400, 1)
    return {
        "from": start.isoformat(),
        "to": end.isoformat(),
        "gap_minutes": gap_minutes,
        **block(None),
        "online_ratio": online["online_ratio"],
        "devices": online["devices"],
        "retention": {
            "configured_days": retention_days,
            "required_days": MIN_RETENTION_DAYS,
            "oldest_reading": None if oldest is None else oldest.isoformat(),
            "held_days": retained_days,
            "ok": retention_days is None or retention_days >= MIN_RETENTION_DAYS,
        },
        "installations": {i.id: block(i.id) for i in site.installations},
        "tag_figures": [f.as_dict() for f in figures],
    }


def enterprise_figures(sites: list[dict[str, Any]]) -> dict[str, Any]:
    """The enterprise's figures from its sites' period figures, and its 稳定运行 status."""
    tags = sum(s["tags"] for s in sites)
    completeness = sum((s["completeness"] or 0) * s["tags"] for s in sites) / tags if tags else None
    devices = {f"{s_id}/{d}": v for s_id, s in ((s["site"], s) for s in sites) for d, v in s["devices"].items()}
    online = statistics.fmean(v["online_ratio"] for v in devices.values()) if devices else 1.0
    by_priority = {p.value: sum(s["alarms_by_priority"][p.value] for s in sites) for p in Priority}
    return {
        "tags": tags,
        "completeness": _r(completeness),
        "online_ratio": round(online, 4),
        "stable_threshold": STABLE_ONLINE_RATIO,
        "status": "stable" if online >= STABLE_ONLINE_RATIO else "unstable",
        "status_zh": "稳定运行" if online >= STABLE_ONLINE_RATIO else "未稳定运行",
        "alarms_by_priority": by_priority,
        "standing_alarms": sum(len(s["standing_alarms"]) for s in sites),
        "sis_trips": sum(s["sis_trips"] for s in sites),
        "gaps": sum(s["gaps"] for s in sites),
        "retention_ok": all(s["retention"]["ok"] for s in sites),
    }
