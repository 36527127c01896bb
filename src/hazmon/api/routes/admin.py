"""Administration: tokens and the audit trail (admin only), and site configuration (engineers)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field

from hazmon import audit
from hazmon.api.deps import Admin, Configurer, RuntimeDep
from hazmon.api.edge import INT64_MAX, NoNul, find_nul
from hazmon.auth import AuthError, Principal, Role, create_token, list_tokens, revoke_token
from hazmon.errors import InvalidFile
from hazmon.regulator.sitecheck import parse_graded_site
from hazmon.storage.registry import upsert_site
from hazmon.storage.store import guarded

router = APIRouter(tags=["admin"])


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Role
    sites: list[Annotated[NoNul, Field(min_length=1, max_length=200)]] = Field(default_factory=list, max_length=1000)
    enterprises: list[Annotated[NoNul, Field(min_length=1, max_length=200)]] = Field(
        default_factory=list, max_length=1000
    )
    regions: list[Annotated[str, Field(pattern=r"^\d{2,6}$")]] = Field(
        default_factory=list,
        max_length=100,
        description="regulator tokens: administrative-division code prefixes (USCC characters 3-8), e.g. 3205",
    )
    name: NoNul | None = Field(default=None, min_length=1, max_length=200)


@router.get("/tokens", summary="Every token (never its secret)")
async def get_tokens(runtime: RuntimeDep, user: Admin) -> list[dict[str, Any]]:
    async def op() -> list[dict[str, Any]]:
        async with runtime.db.pool.acquire() as conn:
            return [t.as_dict() for t in await list_tokens(conn)]

    return await guarded(op, "list tokens")


@router.post("/tokens", status_code=201, summary="Create a token; its secret is in this answer only")
async def post_token(runtime: RuntimeDep, user: Admin, body: TokenRequest) -> dict[str, Any]:
    async def op() -> dict[str, Any]:
        async with runtime.db.pool.acquire() as conn, conn.transaction():
            new = await create_token(
                conn,
                body.role,
                sites=body.sites,
                enterprises=body.enterprises,
                regions=body.regions,
                name=body.name,
                created_by=user.label,
            )
            info = new.info
            # In the same transaction: a token exists only with its audit row.
            await audit.append(
                conn,
                actor=user.label,
                token_id=user.token_id,
                role=user.role.value,
                action="token.create",
                target=info.id,
                detail={
                    "role": info.role.value,
                    "sites": info.sites,
                    "enterprises": info.enterprises,
                    **({"regions": info.regions} if info.regions else {}),
                    "name": info.name,
                },
            )
        return {**info.as_dict(), "token": new.secret}

    try:
        return await guarded(op, "create token")
    except AuthError as e:
        raise HTTPException(422, str(e)) from None


@router.delete("/tokens/{token_id}", summary="Revoke a token (at once)")
async def delete_token(runtime: RuntimeDep, user: Admin, token_id: str) -> dict[str, Any]:
    async def op() -> dict[str, Any]:
        async with runtime.db.pool.acquire() as conn, conn.transaction():
            info = await revoke_token(conn, token_id)
            await audit.append(
                conn,
                actor=user.label,
                token_id=user.token_id,
                role=user.role.value,
                action="token.revoke",
                target=info.id,
                detail={"name": info.name},
            )
            return info.as_dict()

    try:
        out = await guarded(op, "revoke token")
    except AuthError as e:
        raise HTTPException(404, str(e)) from None
    return out


@router.get("/audit", summary="The audit trail, newest first")
async def get_audit(
    runtime: RuntimeDep,
    user: Admin,
    limit: int = Query(100, ge=1, le=1000),
    before_seq: int | None = Query(None, ge=1, le=INT64_MAX, description="entries before this seq (paging)"),
    site: str | None = None,
) -> list[dict[str, Any]]:
    async def op() -> list[dict[str, Any]]:
        async with runtime.db.pool.acquire() as conn:
            return [r.as_dict() for r in await audit.recent(conn, limit=limit, before_seq=before_seq, site_id=site)]

    return await guarded(op, "audit trail")


@router.get("/audit/verify", summary="Check the audit trail's hash chain")
async def verify_audit(runtime: RuntimeDep, user: Admin) -> dict[str, Any]:
    async def op() -> audit.VerifyResult:
        async with runtime.db.pool.acquire() as conn:
            return await audit.verify(conn)

    result = await guarded(op, "audit verify")
    finding = result.finding
    return {
        "ok": result.ok,
        "rows": result.rows,
        "head_seq": result.head_seq,
        "finding": None if finding is None else {"seq": finding.seq, "kind": finding.kind, "message": finding.message},
    }


@router.put("/sites/{site_id}", summary="Register or update a site from its description (as in sites/*.yaml)")
async def put_site(runtime: RuntimeDep, user: Configurer, site_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """Validates the site like `hazmon site check` and upserts it like `hazmon site load`.

    The running rule engine and gateways keep the configuration they started with until restart.
    """
    nul = find_nul(body)
    if nul is not None:
        raise HTTPException(422, f"{nul}: must not contain a NUL character")
    try:
        site, _warnings = parse_graded_site(body, f"<PUT /api/v1/sites/{site_id}>")
    except InvalidFile as e:
        raise HTTPException(422, str(e)) from None
    if site.id != site_id:
        raise HTTPException(422, f"site.id is {site.id!r}, but the URL names {site_id!r}")
    if not user.covers(site.id, site.enterprise.id):
        raise HTTPException(403, f"site {site.id!r} (enterprise {site.enterprise.id!r}) is outside this token's scope")
    enterprise = site.enterprise.id

    async def op() -> str:
        async with runtime.db.pool.acquire() as conn, conn.transaction():
            current = await conn.fetchval("SELECT enterprise_id FROM sites WHERE id = $1 FOR UPDATE", site.id)
            if current is not None and not user.covers(site.id, current):
                raise HTTPException(
                    403, f"site {site.id!r} belongs to enterprise {current!r}, outside this token's scope"
                )
            # The enterprise record in the body is written too: it must be one this token covers (listed,
            # or the enterprise of a site in its scope, or not registered yet).
            if not await enterprise_covered(conn, user, enterprise):
                raise HTTPException(403, f"enterprise {enterprise!r} is outside this token's scope")
            if current is not None and current != enterprise:
                raise HTTPException(
                    409,
                    f"site {site.id!r} belongs to enterprise {current!r}: a site does not change enterprise "
                    "through this endpoint",
                )
            summary = str(await upsert_site(conn, site))
            # Recorded in the same transaction: the change is applied and audited, or neither.
            await audit.append(
                conn,
                actor=user.label,
                token_id=user.token_id,
                role=user.role.value,
                action="site.load",
                target=site.id,
                site_id=site.id,
                detail={"summary": summary, "tags": len(site.tags), "enterprise": enterprise},
            )
            return summary

    summary = await guarded(op, "load site")
    return {"site": site.id, "summary": summary, "applies_to_running_engine": False}


async def enterprise_covered(conn: Any, user: Principal, enterprise: str) -> bool:
    """Whether ``user`` may write the record of ``enterprise``: an admin, a token listing it, a token
    seeing one of its sites, or an enterprise not registered yet."""
    if user.unrestricted or enterprise in user.enterprises:
        return True
    known = await conn.fetchval("SELECT true FROM enterprises WHERE id = $1", enterprise)
    if not known:
        return True
    mine = await conn.fetchval(
        "SELECT true FROM sites WHERE enterprise_id = $1 AND id = ANY($2::text[]) LIMIT 1", enterprise, list(user.scope)
    )
    return bool(mine)
