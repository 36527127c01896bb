"""`/api/v1/hazards/findings`: hidden-hazard self-check and self-report (隐患自查自报).

Enterprises (operator, engineer and admin tokens) record and update findings of their sites;
every role reads those in its scope; regulators read the per-enterprise summary. Every change is
applied together with its audit-trail entry (see ``hazmon.regulator.findings``).
`GET /console/findings` serves the findings page of the console.
"""

from __future__ import annotations

from datetime import UTC, datetime
from importlib.resources import files
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query
from fastapi.responses import HTMLResponse

from hazmon.api.deps import Reader, RuntimeDep, ensure_sees
from hazmon.api.routes.alarms import parse_since
from hazmon.auth import Permission, Principal
from hazmon.regulator import findings as fnd
from hazmon.runtime import Runtime
from hazmon.storage.store import guarded

router = APIRouter(prefix="/hazards/findings", tags=["hazard findings"])
page_router = APIRouter(tags=["console"])

MAX_PAGE = 1_000
FindingId = Annotated[int, Path(ge=1, le=2**63 - 1)]


def _actor(user: Principal) -> fnd.Actor:
    return fnd.Actor(user.label, user.token_id, user.role.value)


def _may_record(user: Principal) -> None:
    """Enterprises record findings: operators, engineers and admins; regulators only read."""
    if not (user.may(Permission.OPERATE) or user.may(Permission.CONFIGURE)):
        raise HTTPException(403, f"role {user.role.value} may not record hidden-hazard findings")


def _error(e: fnd.FindingError) -> HTTPException:
    if isinstance(e, fnd.FindingNotFound):
        return HTTPException(404, str(e))
    if isinstance(e, fnd.FindingConflict):
        return HTTPException(409, str(e))
    return HTTPException(422, str(e))


async def _load(runtime: Runtime, user: Principal, finding_id: int) -> fnd.Finding:
    async def op() -> fnd.Finding:
        async with runtime.db.pool.acquire() as conn:
            return await fnd.get_finding(conn, finding_id)

    try:
        finding = await guarded(op, "hazard finding")
    except fnd.FindingError as e:
        raise _error(e) from None
    ensure_sees(user, finding.site_id, f"finding {finding_id}")
    return finding


def _scope(user: Principal, site: str | None) -> list[str] | None:
    """The sites a query covers: the one asked for (in scope), the token's scope, or every site (admin)."""
    if site is not None:
        ensure_sees(user, site, f"site {site!r}")
        return [site]
    return None if user.unrestricted else sorted(user.scope)


@router.get("", summary="Hidden-hazard findings in scope, newest first")
async def list_findings(
    runtime: RuntimeDep,
    user: Reader,
    site: str | None = None,
    enterprise: str | None = None,
    status: Annotated[list[fnd.Status] | None, Query(description="repeat for several")] = None,
    grade: fnd.Grade | None = None,
    overdue: bool | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[dict[str, Any]]:
    sites = _scope(user, site)
    now = datetime.now(UTC)

    async def op() -> list[fnd.Finding]:
        async with runtime.db.pool.acquire() as conn:
            return await fnd.list_findings(
                conn,
                site_ids=sites,
                enterprise_id=enterprise,
                status=status,
                grade=grade,
                limit=None if overdue is not None else limit,
                offset=0 if overdue is not None else offset,
            )

    found = await guarded(op, "hazard findings")
    if overdue is not None:
        found = [f for f in found if f.overdue(now) == overdue][offset : offset + limit]
    return [f.as_dict(now) for f in found]


@router.get("/summary", summary="Per enterprise: open, major, overdue findings and the median time to close")
async def findings_summary(
    runtime: RuntimeDep,
    user: Reader,
    enterprise: str | None = None,
    site: str | None = None,
    since: str | None = Query(default=None, description="period start (30d, 12h or ISO 8601) for the median"),
) -> list[dict[str, Any]]:
    sites = _scope(user, site)
    start = parse_since(since) if since is not None else None

    async def op() -> list[dict[str, Any]]:
        async with runtime.db.pool.acquire() as conn:
            return await fnd.summaries_by_enterprise(conn, site_ids=sites, enterprise_id=enterprise, start=start)

    return await guarded(op, "hazard findings summary")


@router.post("", status_code=201, summary="Record a hidden-hazard finding")
async def create_finding(runtime: RuntimeDep, user: Reader, body: fnd.FindingIn) -> dict[str, Any]:
    _may_record(user)
    ensure_sees(user, body.site, f"site {body.site!r}")

    async def op() -> fnd.Finding:
        async with runtime.db.pool.acquire() as conn:
            return await fnd.create_finding(conn, body, _actor(user))

    try:
        finding = await guarded(op, "record hazard finding")
    except fnd.FindingError as e:
        raise _error(e) from None
    return finding.as_dict()


@router.get("/{finding_id}", summary="One finding")
async def get_finding(runtime: RuntimeDep, user: Reader, finding_id: FindingId) -> dict[str, Any]:
    return (await _load(runtime, user, finding_id)).as_dict()


@router.patch("/{finding_id}", summary="Change a finding: fields, status (closing needs evidence)")
async def update_finding(
    runtime: RuntimeDep, user: Reader, finding_id: FindingId, body: fnd.FindingPatch
) -> dict[str, Any]:
    _may_record(user)
    await _load(runtime, user, finding_id)

    async def op() -> fnd.Finding:
        async with runtime.db.pool.acquire() as conn:
            return await fnd.update_finding(conn, finding_id, body, _actor(user))

    try:
        finding = await guarded(op, "update hazard finding")
    except fnd.FindingError as e:
        raise _error(e) from None
    return finding.as_dict()


@router.get("/{finding_id}/history", summary="The audit-trail entries of a finding, oldest first")
async def finding_history(runtime: RuntimeDep, user: Reader, finding_id: FindingId) -> list[dict[str, Any]]:
    await _load(runtime, user, finding_id)

    async def op() -> list[dict[str, Any]]:
        async with runtime.db.pool.acquire() as conn:
            return await fnd.finding_history(conn, finding_id)

    return await guarded(op, "hazard finding history")


@page_router.get("/console/findings", include_in_schema=False)
async def findings_page() -> HTMLResponse:
    """The console's findings page; like /console it holds no data and needs a token for everything."""
    page = files("hazmon.api").joinpath("console/findings.html").read_text(encoding="utf-8")
    return HTMLResponse(page, headers={"Cache-Control": "no-cache"})
