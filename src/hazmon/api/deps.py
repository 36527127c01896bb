"""Dependency aliases shared by the routes: the runtime, the caller, and role checks.

A request carries its token as ``Authorization: Bearer hzm_…``. (The WebSocket, which browsers
cannot give headers, also takes ``?token=`` or a first message; see routes/live.py.)

- ``CurrentUser``: any valid token (401 without one, or with an unknown or revoked one);
- ``Reader`` / ``Operator`` / ``Configurer`` / ``SystemUser`` / ``Admin``: a token whose role has
  that permission (403 otherwise). Site scope is checked by each route against the resource.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import cache
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from starlette.requests import HTTPConnection

from hazmon.auth import Permission, Principal, authenticate
from hazmon.runtime import Runtime
from hazmon.storage.registry import get_tag
from hazmon.storage.store import guarded


def get_runtime(request: HTTPConnection) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def bearer_token(request: HTTPConnection) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return None


async def principal_for(runtime: Runtime, token: str | None) -> Principal | None:
    if not token:
        return None

    async def op() -> Principal | None:
        async with runtime.db.pool.acquire() as conn:
            return await authenticate(conn, token)

    return await guarded(op, "token check")


def unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


async def current_user(request: Request, runtime: RuntimeDep) -> Principal:
    token = bearer_token(request)
    if token is None:
        raise unauthorized("a token is required: send 'Authorization: Bearer <token>'")
    principal = await principal_for(runtime, token)
    if principal is None:
        raise unauthorized("invalid or revoked token")
    request.state.principal = principal
    return principal


CurrentUser = Annotated[Principal, Depends(current_user)]


@cache
def require(permission: Permission) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency: the caller, if its role has ``permission`` (403 otherwise)."""

    async def check(user: CurrentUser) -> Principal:
        if not user.may(permission):
            raise HTTPException(403, f"role {user.role.value} may not {permission.value}")
        return user

    return check


Reader = Annotated[Principal, Depends(require(Permission.READ))]
Operator = Annotated[Principal, Depends(require(Permission.OPERATE))]
Configurer = Annotated[Principal, Depends(require(Permission.CONFIGURE))]
SystemUser = Annotated[Principal, Depends(require(Permission.SYSTEM))]
Admin = Annotated[Principal, Depends(require(Permission.ADMIN))]


def ensure_sees(user: Principal, site_id: str | None, what: str) -> None:
    """403 unless ``site_id`` is in the caller's scope."""
    if not user.sees(site_id):
        raise HTTPException(403, f"{what} is outside this token's scope")


async def visible_tag(runtime: Runtime, user: Principal, tag_id: str) -> dict[str, Any]:
    """The registry row of ``tag_id``: 404 when unknown, 403 when outside the caller's scope."""

    async def lookup() -> dict[str, Any] | None:
        async with runtime.db.pool.acquire() as conn:
            return await get_tag(conn, tag_id)

    tag = await guarded(lookup, "tag lookup")
    if tag is None:
        raise HTTPException(404, f"unknown tag {tag_id!r}")
    ensure_sees(user, tag["site"], f"tag {tag_id}")
    return tag
