"""Application factory: settings, database pool and background tasks are built in the lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline

from hazmon import __version__
from hazmon.api import edge
from hazmon.api.deps import require
from hazmon.api.routes import (
    admin,
    alarms,
    compliance,
    console,
    export,
    findings,
    gateways,
    health,
    installations,
    live,
    metrics,
    sites,
    tags,
)
from hazmon.auth import Permission
from hazmon.config import Settings, load_settings
from hazmon.logs import install_redaction
from hazmon.runtime import Runtime, run_runtime
from hazmon.storage.store import StoreError, StoreUnavailable


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> FastAPI:
    """Build the app. Given a ``runtime``, the app serves it and leaves its lifecycle to the caller."""
    install_redaction()  # no log line carries a token's secret, however the app is served

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if runtime is not None:
            app.state.runtime = runtime
            yield
            return
        async with run_runtime(settings or load_settings()) as rt:
            app.state.runtime = rt
            yield

    # /docs and /redoc with their JavaScript and CSS served from the package (fastapi-offline), so they
    # work on a plant network without Internet access.
    app = FastAPIOffline(
        title="hazmon",
        version=__version__,
        description="Real-time monitoring of major hazard installations of hazardous chemicals.",
        lifespan=lifespan,
        static_url="/docs-assets",
    )
    _declare_bearer(app)
    edge.install(app)  # NUL characters in paths and queries, JSON-safe validation errors, counted

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
    app.include_router(findings.page_router)  # /console/findings, before the console's /console/{name}
    app.include_router(console.router)
    app.include_router(metrics.router)
    app.include_router(sites.router, prefix="/api/v1", dependencies=read)
    app.include_router(tags.router, prefix="/api/v1", dependencies=read)
    app.include_router(export.router, prefix="/api/v1")
    app.include_router(alarms.router, prefix="/api/v1")
    app.include_router(gateways.router, prefix="/api/v1")
    app.include_router(compliance.router, prefix="/api/v1")
    app.include_router(installations.router, prefix="/api/v1")
    app.include_router(findings.router, prefix="/api/v1")
    app.include_router(admin.router, prefix="/api/v1")
    app.include_router(live.router, prefix="/api/v1")
    return app


def _declare_bearer(app: FastAPI) -> None:
    """The OpenAPI document declares the API token as a bearer scheme required by every /api/v1 route,
    so /docs offers "Authorize" and sends ``Authorization: Bearer hzm_…``."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        schema.setdefault("components", {})["securitySchemes"] = {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "hzm_…",
                "description": "an API token from `hazmon token create` (the demo prints one)",
            }
        }
        for path, ops in schema.get("paths", {}).items():
            if path.startswith("/api/v1/"):
                for op in ops.values():
                    if isinstance(op, dict):
                        op.setdefault("security", [{"bearer": []}])
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
