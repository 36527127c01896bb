"""`GET /api/v1/compliance`: remote-monitoring compliance per enterprise, site and installation."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, HTTPException

from hazmon.alarms.alarm import split_alarm_id
from hazmon.api.deps import Reader, RuntimeDep, ensure_sees
from hazmon.api.routes.alarms import parse_since
from hazmon.reading import now_us
from hazmon.regulator.compliance import handling_times, site_compliance
from hazmon.storage.store import guarded

router = APIRouter(tags=["compliance"])


@router.get("/compliance")
async def get_compliance(
    runtime: RuntimeDep,
    user: Reader,
    enterprise: str | None = None,
    site: str | None = None,
    since: str = "30d",
) -> list[dict[str, Any]]:
    """For each site in scope (optionally one enterprise or one site): is data arriving, what is in
    alarm and for how long, how fast alarms are acknowledged since ``since``, and each
    installation's GB 18218 grade."""
    if site is not None:
        ensure_sees(user, site, f"site {site!r}")
    if enterprise is not None and not (
        user.unrestricted
        or enterprise in user.enterprises
        or any(s.enterprise.id == enterprise and user.sees(s.id) for s in runtime.sites)
    ):
        raise HTTPException(403, f"enterprise {enterprise!r} is outside this token's scope")
    start = parse_since(since)
    period = datetime.now(UTC) - start
    sites = [
        s
        for s in runtime.sites
        if user.sees(s.id) and (site is None or s.id == site) and (enterprise is None or s.enterprise.id == enterprise)
    ]
    alarms = runtime.engine.current() if runtime.engine is not None else []
    now = now_us()
    out = []
    for s in sites:

        async def op(site_id: str = s.id) -> dict[str, dict[str, Any]]:
            async with runtime.db.pool.acquire() as conn:
                return await handling_times(conn, site_id, start)

        handling = await guarded(op, "alarm handling times")
        site_alarms = [a for a in alarms if runtime.site_of.get(a.tag_id or split_alarm_id(a.alarm_id)[0]) == s.id]
        out.append(site_compliance(s, runtime.tags, runtime.hub.last_reading_us, site_alarms, handling, now, period))
    return out
