"""`GET /console`: the operator console, a single page that follows the live alarm stream over the
WebSocket and acts through the API with the token the operator pastes in. The page itself holds no
data (like /docs), so it is served without a token; everything it shows needs one."""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(tags=["console"])


@router.get("/console", include_in_schema=False)
async def console() -> HTMLResponse:
    page = files("hazmon.api").joinpath("console/index.html").read_text(encoding="utf-8")
    return HTMLResponse(page, headers={"Cache-Control": "no-cache"})
