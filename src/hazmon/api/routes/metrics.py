"""`GET /metrics`: Prometheus text format (token required; roles engineer and admin)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from hazmon.api.deps import RuntimeDep, SystemUser
from hazmon.api.exposition import CONTENT_TYPE, render

router = APIRouter(tags=["metrics"])


@router.get("/metrics", summary="Prometheus metrics (send the token as a bearer token)")
async def metrics(runtime: RuntimeDep, user: SystemUser) -> Response:
    return Response(render(runtime), media_type=CONTENT_TYPE)
