"""Application factory: settings, database pool and background tasks are built in the lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from hazmon import __version__
from hazmon.api.deps import require
from hazmon.api.routes import (
    admin,
    alarms,
    compliance,
    console,
    export,
    gateways,
    health,
    live,
    metrics,
    sites,
    tags,
)
from hazmon.auth import Permission
from hazmon.config import Settings, load_settings
from hazmon.runtime import Runtime, run_runtime
from hazmon.storage.store import StoreError, StoreUnavailable


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> FastAPI:
    """Build the app. Given a ``runtime``, the app serves it and leaves its lifecycle to the caller."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if runtime is not None:
            app.state.runtime = runtime
            yield
            return
        async with run_runtime(settings or load_settings()) as rt:
            app.state.runtime = rt
            yield

    app = FastAPI(
        title="hazmon",
        version=__version__,
        description="Real-time monitoring of major hazard installations of hazardous chemicals.",
        lifespan=lifespan,
    )

    @app.exception_handler(StoreUnavailable)
    async def _unavailable(request: Request, exc: StoreUnavailable) -> JSONResponse:
        return JSONResponse({"detail": "database unavailable"}, status_code=503)

    @app.exception_handler(StoreError)
    async def _store_error(request: Request, exc: StoreError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=500)

    if runtime is not None:
        app.state.runtime = runtime
    # Every route but /healthz needs a token; each route checks its role and the site scope.
    read = [Depends(require(Permission.READ))]
    app.include_router(health.router)
    app.include_router(console.router)
    app.include_router(metrics.router)
    app.include_router(sites.router, prefix="/api/v1", dependencies=read)
    app.include_router(tags.router, prefix="/api/v1", dependencies=read)
    app.include_router(export.router, prefix="/api/v1")
    app.include_router(alarms.router, prefix="/api/v1")
    app.include_router(gateways.router, prefix="/api/v1")
    app.include_router(compliance.router, prefix="/api/v1")
    app.include_router(admin.router, prefix="/api/v1")
    app.include_router(live.router, prefix="/api/v1")
    return app
