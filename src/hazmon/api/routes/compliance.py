"""`GET /api/v1/compliance`: remote-monitoring compliance per enterprise, site and installation, as JSON
or as the report a regulator files (``format=csv|html|pdf``, ``lang=zh|en``)."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, HTTPException, Query, Response

from hazmon.alarms.alarm import split_alarm_id
from hazmon.api.deps import Reader, RuntimeDep, ensure_sees
from hazmon.api.routes.alarms import parse_since
from hazmon.plant.site import Site
from hazmon.plant.tag import tag_ref
from hazmon.reading import now_us
from hazmon.regulator.compliance import handling_times, site_compliance
from hazmon.regulator.installations import installation_grades
from hazmon.regulator.period import MIN_GAP_MINUTES, enterprise_figures, period_figures
from hazmon.regulator.report import MEDIA_TYPES, ReportUnavailable, build_report, render
from hazmon.storage.store import guarded

router = APIRouter(tags=["compliance"])


@router.get("/compliance", response_model=None)
async def get_compliance(
    runtime: RuntimeDep,
    user: Reader,
    enterprise: str | None = None,
    site: str | None = None,
    since: str | None = Query(None, description="the same as from (kept for existing clients)"),
    start_text: str | None = Query(
        None, alias="from", description="period start: ISO 8601 or a duration ago (30d); default 30 days ago"
    ),
    to: str | None = Query(None, description="period end: ISO 8601 or a duration ago; default now"),
    format: Literal["json", "csv", "html", "pdf"] = Query("json", description="json, or a report to file"),
    lang: Literal["zh", "en"] = Query("zh", description="report language: Chinese (default) or English"),
    gap_minutes: float = Query(
        10.0, ge=MIN_GAP_MINUTES, le=1440, description="report gaps in the data longer than this (at least 2)"
    ),
) -> list[dict[str, Any]] | Response:
    """For each site in scope (optionally one enterprise or one site): is data arriving, what is in
    alarm and for how long, how fast alarms are acknowledged, each installation's GB 18218 grade and
    the monitoring it lacks, and the figures of the period [from, to) per tag, installation, site and
    enterprise (``period``, ``enterprise_period``). ``format=csv|html|pdf`` returns the dated report
    a regulator files, one per enterprise; any other format is a 422."""
    if site is not None:
        ensure_sees(user, site, f"site {site!r}")
    if enterprise is not None and not (
        user.unrestricted
        or enterprise in user.enterprises
        or any(s.enterprise.id == enterprise and user.sees(s.id) for s in runtime.sites)
    ):
        raise HTTPException(403, f"enterprise {enterprise!r} is outside this token's scope")
    now_dt = datetime.now(UTC)
    start = parse_since(start_text or since or "30d", now_dt)
    end = now_dt if to is None else parse_since(to, now_dt)
    if start >= end:
        raise HTTPException(422, f"from {start.isoformat()} is not before to {end.isoformat()}")
    period = end - start
    sites = [
        s
        for s in runtime.sites
        if user.sees(s.id) and (site is None or s.id == site) and (enterprise is None or s.enterprise.id == enterprise)
    ]
    subscriptions = runtime.by_exception()
    by_exception = {runtime.tags.id(int(k)): owner for owner, keys, _ in subscriptions for k in keys}
    tag_ids = {tag_ref(s.id, t.id) for s in sites for t in s.tags}
    devices = {
        s.id: [o for o, site_id in runtime.site_of.items() if site_id == s.id and o not in tag_ids] for s in sites
    }
    keys = {t: k for t, k in runtime.tags.items()}
    if format != "json":
        if not sites:
            raise HTTPException(404, "no registered site in this token's scope matches: nothing to report")
        by_enterprise: dict[str, list[Site]] = {}
        for s in sites:
            by_enterprise.setdefault(s.enterprise.id, []).append(s)

        async def build() -> list[dict[str, Any]]:
            async with runtime.db.pool.acquire() as conn:
                return [
                    await build_report(
                        conn, ss, keys, start, end, now_dt, by_exception=by_exception, devices=devices,
                        retention_days=runtime.settings.retention_days, gap_minutes=gap_minutes,
                    )
                    for ss in by_enterprise.values()
                ]  # fmt: skip

        reports = await guarded(build, "compliance report")
        try:
            body = await asyncio.to_thread(render, reports, format, lang)
        except ReportUnavailable as e:
            raise HTTPException(503, str(e)) from None
        # ASCII only: a header is latin-1, and an id from the query string may be anything
        name = re.sub(r"[^A-Za-z0-9._-]", "_", f"compliance-{enterprise or site or 'all'}-{end:%Y%m%d}.{format}")
        return Response(
            body, media_type=MEDIA_TYPES[format], headers={"Content-Disposition": f'attachment; filename="{name}"'}
        )
    live = np.concatenate([np.zeros(0, np.int64), *(k.astype(np.int64) for _, k, ok in subscriptions if ok)])
    alarms = runtime.engine.current() if runtime.engine is not None else []
    now = now_us()
    out = []
    for s in sites:

        async def op(site_id: str = s.id) -> dict[str, dict[str, Any]]:
            async with runtime.db.pool.acquire() as conn:
                return await handling_times(conn, site_id, start)

        async def figures(ss: Site = s) -> dict[str, Any]:
            async with runtime.db.pool.acquire() as conn:
                return await period_figures(
                    conn, ss, keys, start, end, by_exception=by_exception, devices=devices[ss.id],
                    gap_minutes=gap_minutes, retention_days=runtime.settings.retention_days,
                )  # fmt: skip

        handling = await guarded(op, "alarm handling times")
        site_alarms = [a for a in alarms if runtime.site_of.get(a.tag_id or split_alarm_id(a.alarm_id)[0]) == s.id]
        view = site_compliance(s, runtime.tags, runtime.hub.last_reading_us, site_alarms, handling, now, period, live)
        view["period"] = await guarded(figures, "compliance figures")
        reqs = {i["id"]: i for i in installation_grades(s, runtime.settings.retention_days)}
        for inst in view["installations"]:
            inst["gb18218"] = {**inst["gb18218"], **reqs[inst["id"]]["gb18218"]}
            inst["monitoring_required"] = reqs[inst["id"]]["monitoring_required"]
            inst["monitoring_missing"] = reqs[inst["id"]]["monitoring_missing"]
            inst["period"] = view["period"]["installations"][inst["id"]]
        out.append(view)
    for ent in {v["enterprise"]["id"] for v in out}:
        figs = enterprise_figures([{"site": v["site"], **v["period"]} for v in out if v["enterprise"]["id"] == ent])
        for v in out:
            if v["enterprise"]["id"] == ent:
                v["enterprise_period"] = figs
    return out
