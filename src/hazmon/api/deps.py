"""Dependency aliases shared by the routes: the runtime, the caller, and role checks.

A request carries its token as ``Authorization: Bearer hzm_…``. (The WebSocket, which browsers
cannot give headers, also takes a first ``auth`` message or ``?token=``; see routes/live.py.)

Tokens are verified by ``authenticate_client``: from the runtime's token cache when checked less than
``TOKEN_TTL_S`` ago, else from the database; a token seen before is still accepted while the
database is unreachable (the alarm list keeps working through an outage). Each failure is logged
(the token's public id, never its secret) and counted against the client's address; an address
that failed too often is answered 429 with ``Retry-After``.

- ``CurrentUser``: any valid token (401 without one, or with an unknown or revoked one);
- ``Reader`` / ``Operator`` / ``Configurer`` / ``SystemUser`` / ``Admin``: a token whose role has
  that permission (403 otherwise). Site scope is checked by each route against the resource.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from functools import cache
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from starlette.requests import HTTPConnection

from hazmon.auth import (
    Permission,
    Principal,
    authenticate,
    hash_token,
    looks_like_token,
    retry_after_header,
    token_label,
)
from hazmon.plant.tag import split_ref, tag_ref
from hazmon.runtime import Runtime
from hazmon.storage.registry import find_tags, get_tag
from hazmon.storage.store import StoreUnavailable, guarded

log = logging.getLogger("hazmon.auth")

TOKEN_CHECK_TIMEOUT_S = 2.0  # a token seen before is not held up longer than this by a database that hangs


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


_unreachable_until: dict[int, float] = {}  # id(token cache) -> monotonic time; lookups skipped till then


async def principal_for(runtime: Runtime, token: str | None, *, max_age_s: float | None = None) -> Principal | None:
    """The principal of ``token`` (None: missing, malformed, unknown or revoked).

    Fresh from the cache, else from the database; while the database is unreachable, what the token
    stood for when last looked up. Raises StoreUnavailable for a token never seen during an outage.
    ``max_age_s``: how old a cached answer may be (default: the cache's TTL).
    """
    if not token or not looks_like_token(token):
        return None
    cache_ = runtime.token_cache
    key = hash_token(token)
    hit = cache_.get(key, max_age_s)
    if hit is not None and hit[1]:
        return hit[0]
    if hit is not None and time.monotonic() < _unreachable_until.get(id(cache_), 0.0):
        return cache_.stale(key)

    async def op() -> Principal | None:
        async with runtime.db.pool.acquire(timeout=TOKEN_CHECK_TIMEOUT_S) as conn:
            return await authenticate(conn, token)

    try:
        async with asyncio.timeout(TOKEN_CHECK_TIMEOUT_S):
            principal = await guarded(op, "token check")
    except (StoreUnavailable, TimeoutError) as e:
        _unreachable_until[id(cache_)] = time.monotonic() + cache_.ttl_s
        if hit is not None:
            return cache_.stale(key)
        raise StoreUnavailable(f"token check: database unavailable and this token was not seen before ({e})") from e
    _unreachable_until.pop(id(cache_), None)
    cache_.put(key, principal)
    return principal


class AuthFailed(Exception):
    """Authentication refused: ``status`` 401 (no, malformed, unknown or revoked token) or 429."""

    def __init__(self, status: int, detail: str, retry_after_s: float | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.retry_after_s = retry_after_s


_throttle_logged: dict[int, float] = {}  # id(throttle) -> when a throttled refusal was last logged


def client_address(conn: HTTPConnection) -> str:
    return conn.client.host if conn.client is not None else "unknown"


async def authenticate_client(runtime: Runtime, token: str | None, address: str, missing: str) -> Principal:
    """The principal of ``token`` sent from ``address``, or AuthFailed (401 / 429); failures are
    logged without the secret and counted per address. ``missing``: the 401 detail without a token."""
    throttle = runtime.auth_throttle
    if not token:
        throttle.rejections["missing"] += 1
        raise AuthFailed(401, missing)
    valid = looks_like_token(token)
    hit = runtime.token_cache.get(hash_token(token)) if valid else None
    if hit is not None and hit[1] and hit[0] is not None:
        return hit[0]
    # A token known to be good is checked again even from a throttled address (nobody guesses a
    # token by sending it): the attack of a neighbour behind the same address locks nobody out.
    retry = None if hit is not None and hit[0] is not None else throttle.retry_after(address)
    if retry is not None:
        throttle.throttled()
        now = time.monotonic()
        if now - _throttle_logged.get(id(throttle), 0.0) >= 10.0:
            _throttle_logged[id(throttle)] = now
            log.warning(
                "authentication throttled for %s: too many failures (%d refusals so far)",
                address,
                throttle.rejections["throttled"],
            )
        raise AuthFailed(429, f"too many failed authentications from {address}: retry in {retry:.0f} s", retry)
    principal = await principal_for(runtime, token) if valid else None
    if principal is None:
        reason = "invalid" if valid else "malformed"
        throttle.failed(address, reason)
        log.warning(
            "authentication failed from %s: %s",
            address,
            f"{token_label(token)} unknown or revoked" if valid else "malformed token",
        )
        raise AuthFailed(401, "invalid or revoked token")
    return principal


def unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


async def current_user(request: Request, runtime: RuntimeDep) -> Principal:
    token = bearer_token(request)
    try:
        principal = await authenticate_client(
            runtime, token, client_address(request), "a token is required: send 'Authorization: Bearer <token>'"
        )
    except AuthFailed as e:
        if e.status == 429:
            headers = {"Retry-After": retry_after_header(e.retry_after_s or 1.0)}
            raise HTTPException(429, e.detail, headers=headers) from None
        raise unauthorized(e.detail) from None
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
    """The registry row of the tag named ``site/tag`` (or by its bare id where exactly one site the
    caller sees has it): 404 when unknown, 403 when outside the caller's scope, 422 when ambiguous."""
    site, local = split_ref(tag_id)

    async def lookup() -> list[dict[str, Any]]:
        async with runtime.db.pool.acquire() as conn:
            if site is not None:
                row = await get_tag(conn, site, local)
                return [row] if row is not None else []
            return await find_tags(conn, local)

    rows = await guarded(lookup, "tag lookup")
    if site is None:
        seen = [r for r in rows if user.sees(r["site"])]
        if len(seen) > 1:
            refs = ", ".join(tag_ref(r["site"], local) for r in seen[:5])
            raise HTTPException(422, f"tag {local!r} is in {len(seen)} sites: name it by its site ({refs})")
        rows = seen  # a bare id names a tag of the caller's sites only: another's is unknown here, not 403
    if not rows:
        raise HTTPException(404, f"unknown tag {tag_id!r}")
    tag = rows[0]
    ensure_sees(user, tag["site"], f"tag {tag_id}")
    return tag
