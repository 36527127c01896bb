"""The hub's HTTP receiver: ``POST /api/v1/uplink`` takes one envelope (docs/uplink.md), checks the
application id and HMAC-SM3 signature, decrypts the SM4-CBC payload, and hands the message to the
sink. Answers ``{"code": 0, "msg": "ok", "msg_id": …, "duplicate": …}``; a malformed envelope is
HTTP 400, one that is not authentic 401 (``code`` = the HTTP status, ``msg`` = why), one for an
enterprise its app id is not issued for 403, one the sink refuses for its content 400/422 (the sender sets
it aside), and a sink that cannot keep the message 503 (the sender retries). Every refusal is counted with
its reason.

``GET /stats`` gives the sink's counts and the refusals; ``GET /healthz`` says it is up.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections import Counter
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from hazmon.hub.sink import Sink, SinkRefused, SinkUnavailable
from hazmon.regulator.uplink_payload import Credentials, EnvelopeError, open_envelope

log = logging.getLogger(__name__)

UPLINK_PATH = "/api/v1/uplink"
MAX_BODY = 32 * 1024 * 1024


def create_receiver(
    credentials: Mapping[str, Credentials],
    sink: Sink,
    enterprises: Mapping[str, frozenset[str]] | None = None,
) -> FastAPI:
    """``enterprises``: per app id, the USCCs it may send for (an app id not in it may send for any)."""
    enterprises = enterprises or {}
    app = FastAPI(title="hazmon hub receiver", docs_url=None, redoc_url=None, openapi_url=None)
    refused: Counter[str] = Counter()
    lock = asyncio.Lock()

    def refuse(status: int, reason: str) -> JSONResponse:
        refused[reason.split(":")[0][:60]] += 1
        log.warning("uplink refused (%d): %s", status, reason)
        return JSONResponse({"code": status, "msg": reason}, status_code=status)

    @app.post(UPLINK_PATH)
    async def uplink(request: Request) -> JSONResponse:
        body = await request.body()
        if len(body) > MAX_BODY:
            return refuse(413, f"body of {len(body)} bytes is over {MAX_BODY}")
        try:
            envelope = json.loads(body)
        except ValueError:
            return refuse(400, "the body is not JSON")
        try:
            msg = await asyncio.to_thread(open_envelope, envelope, credentials)
        except EnvelopeError as e:
            return refuse(e.status, e.reason)
        allowed = enterprises.get(envelope["app_id"])
        if allowed is not None and msg.get("enterprise_code") not in allowed:
            who = f"app_id {envelope['app_id']!r}"
            return refuse(403, f"enterprise not issued: {who} may not send for {msg.get('enterprise_code')!r}")
        try:
            async with lock:  # one writer: the file keeps the order of acceptance
                result = sink.accept(msg)
                fresh = await result if inspect.isawaitable(result) else result
        except SinkRefused as e:
            return refuse(e.status, e.reason)
        except (OSError, SinkUnavailable) as e:
            return refuse(503, f"cannot keep the message: {e}")
        return JSONResponse({"code": 0, "msg": "ok", "msg_id": msg["msg_id"], "duplicate": not fresh})

    @app.get("/stats")
    async def stats() -> dict[str, Any]:
        return {**sink.stats(), "refused": dict(refused)}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
