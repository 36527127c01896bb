"""Tags, their latest values and their series."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query

from hazmon.api.deps import Reader, RuntimeDep, ensure_sees, visible_tag
from hazmon.plant.site import TagKind
from hazmon.plant.tag import tag_ref
from hazmon.storage.registry import list_tags
from hazmon.storage.store import Aggregate, guarded

router = APIRouter(tags=["tags"])

MAX_RAW_POINTS = 100_000
MAX_BUCKETS = 100_000
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|sec|m|min|h|d)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, None: 1}


MAX_BUCKET = timedelta(days=366)


def parse_duration(text: str) -> timedelta:
    """'30s', '1m', '5min', '1h', '1d' or plain seconds, at most ``MAX_BUCKET``."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"bucket {text!r}: use a duration such as 30s, 1m, 15min, 1h or 1d")
    seconds = float(m.group(1)) * _UNIT_S[m.group(2)]
    if not seconds <= MAX_BUCKET.total_seconds():
        raise ValueError(f"bucket {text!r}: at most {MAX_BUCKET.days} days")
    return timedelta(seconds=seconds)


def time_range(start: datetime | None, end: datetime | None, default: timedelta) -> tuple[datetime, datetime]:
    """(start, end), timezone-aware: end defaults to now, start to ``default`` before end; 422 when
    start is not before end or a time falls outside what can be computed."""
    try:
        end = _aware(end) if end else datetime.now(UTC)
        start = _aware(start) if start else end - default
        # both must stay comparable and representable after conversion to UTC
        start.astimezone(UTC)
        end.astimezone(UTC)
    except OverflowError:
        raise HTTPException(422, "start/end: a time outside the range years 1 to 9999") from None
    if start >= end:
        raise HTTPException(422, "start must be before end")
    return start, end


def _json_value(v: float | None) -> float | None:
    return v if v is not None and math.isfinite(v) else None


def _aware(t: datetime) -> datetime:
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


@router.get("/tags")
async def get_tags(
    runtime: RuntimeDep,
    user: Reader,
    site: str | None = None,
    equipment: str | None = None,
    kind: TagKind | None = None,
) -> list[dict[str, Any]]:
    async def op() -> list[dict[str, Any]]:
        async with runtime.db.pool.acquire() as conn:
            rows = await list_tags(conn, site=site, equipment=equipment, kind=kind.value if kind else None)
            return [t for t in rows if user.sees(t["site"])]

    if site is not None:
        ensure_sees(user, site, f"site {site!r}")

    return await guarded(op, "list tags")


@router.get("/tags/latest")
async def get_latest(
    runtime: RuntimeDep,
    user: Reader,
    site: str | None = None,
    tag: Annotated[list[str] | None, Query(description="site/tag (or a tag id of one site); repeat it")] = None,
) -> list[dict[str, Any]]:
    """The newest stored reading of each tag (of a site, or of the tags named)."""
    if site is not None:
        ensure_sees(user, site, f"site {site!r}")

    async def op() -> list[dict[str, Any]]:
        async with runtime.db.pool.acquire() as conn:
            rows = await list_tags(conn, site=site)
        if tag is None:
            wanted = {t["key"]: t for t in rows}
        else:  # each named site/tag, or by its bare id where one site the caller sees has it
            by_ref = {tag_ref(t["site"], t["id"]): t for t in rows}
            by_id: dict[str, list[dict[str, Any]]] = {}
            for t in rows:
                if user.sees(t["site"]):
                    by_id.setdefault(t["id"], []).append(t)
            wanted, missing = {}, []
            for name in tag:
                found = [by_ref[name]] if name in by_ref else by_id.get(name, [])
                if len(found) > 1:
                    refs = ", ".join(tag_ref(t["site"], t["id"]) for t in found[:5])
                    raise HTTPException(422, f"tag {name!r} is in {len(found)} sites: name it by its site ({refs})")
                if not found:
                    missing.append(name)
                for t in found:
                    wanted[t["key"]] = t
            if missing:
                raise HTTPException(404, f"unknown tag(s): {', '.join(sorted(missing))}")
            for t in wanted.values():
                ensure_sees(user, t["site"], f"tag {t['id']}")
        wanted = {k: t for k, t in wanted.items() if user.sees(t["site"])}
        latest = await runtime.store.latest(sorted(wanted))
        return [
            {
                "site": wanted[lv.tag]["site"],
                "tag": wanted[lv.tag]["id"],
                "time": lv.time,
                "value": _json_value(lv.value),
                "quality": lv.quality,
                "unit": wanted[lv.tag]["unit"],
            }
            for lv in latest
        ]

    return await guarded(op, "latest values")


@router.get("/tags/{tag_id:path}/series")
async def get_series(
    runtime: RuntimeDep,
    user: Reader,
    tag_id: str,
    start: datetime | None = None,
    end: datetime | None = None,
    bucket: Annotated[str | None, Query(description="bucket width, e.g. 1m; omitted: raw readings")] = None,
    agg: Aggregate = Aggregate.AVG,
) -> dict[str, Any]:
    start, end = time_range(start, end, timedelta(hours=1))
    width = None
    if bucket is not None:
        try:
            width = parse_duration(bucket)
        except ValueError as e:
            raise HTTPException(422, str(e)) from None
        if width < timedelta(seconds=1):
            raise HTTPException(422, "bucket must be at least 1 second")
        if (end - start) / width > MAX_BUCKETS:
            raise HTTPException(422, f"too many buckets: at most {MAX_BUCKETS}; widen the bucket or narrow the range")

    tag = await visible_tag(runtime, user, tag_id)
    if width is None:
        series = await runtime.store.raw_series(tag["key"], start, end, limit=MAX_RAW_POINTS + 1)
        truncated = len(series.times) > MAX_RAW_POINTS
        points = [
            [t, _json_value(v), q] for t, v, q in zip(series.times, series.values, series.qualities or [], strict=False)
        ]
        return {
            "site": tag["site"],
            "tag": tag["id"],
            "unit": tag["unit"],
            "start": start,
            "end": end,
            "bucket": None,
            "agg": None,
            "columns": ["time", "value", "quality"],
            "points": points[:MAX_RAW_POINTS],
            "truncated": truncated,
        }
    series = await runtime.store.downsampled_series(tag["key"], start, end, width, agg)
    return {
        "site": tag["site"],
        "tag": tag["id"],
        "unit": tag["unit"],
        "start": start,
        "end": end,
        "bucket": width.total_seconds(),
        "agg": agg.value,
        "columns": ["time", "value"],
        "points": [[t, _json_value(v)] for t, v in zip(series.times, series.values, strict=True)],
        "truncated": False,
    }
