"""`GET /healthz`: is the database reachable, and which versions run."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from hazmon import __version__
from hazmon.api.deps import RuntimeDep
from hazmon.storage.store import StoreError, guarded

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz(runtime: RuntimeDep) -> JSONResponse:
    caps = runtime.db.caps

    async def ping() -> Any:
        async with runtime.db.pool.acquire(timeout=2) as conn:
            return await conn.fetchval("SELECT 1")

    try:
        reachable = await guarded(ping, "health check") == 1
        error = None
    except StoreError as e:
        reachable, error = False, str(e)
    body = {
        "status": "ok" if reachable else "degraded",
        "hazmon": __version__,
        "database": {
            "reachable": reachable,
            "error": error,
            "server_version": caps.server_version,
            "timescaledb": caps.timescaledb,
            "license": caps.license,
            "edition": caps.edition,
            "embedded": runtime.db.embedded is not None,
        },
    }
    return JSONResponse(body, status_code=200 if reachable else 503)
