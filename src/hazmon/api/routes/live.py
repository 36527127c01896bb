"""WebSocket ``/api/v1/live``: alarm transitions and latest values, pushed.

Protocol (JSON text messages; full description in docs/api.md):

1. Authenticate without putting the token in the URL: an ``Authorization: Bearer`` header where the
   client can set one (a bad token is refused at the handshake with HTTP 401, 429 when the address
   failed too often), else a first message ``{"type": "auth", "token": "hzm_…"}`` (or ``"token"`` in
   the subscribe message). ``?token=hzm_…`` still works; the secret is redacted from every log line.
2. Send ``{"type": "subscribe", "sites": [...], "tags": [...], "alarms_only": false}`` (and
   ``"token"`` if not given at connect). Neither sites nor tags: every site of the token's scope. A tag
   is named ``site/tag`` (``demo-tank-farm/T101.LT``), or by its bare id where exactly one site of the
   token's has it. Values and alarms carry ``"site"`` and ``"tag"`` (the tag's id within its site).
3. Receive ``{"type": "snapshot", "alarms": [...], "values": [...]}``, then ``{"type": "events",
   "events": [...]}`` (alarm transitions, in order) and ``{"type": "values", "values": [...]}``
   (latest values, coalesced). A new ``subscribe`` replaces the subscription (and sends a new
   snapshot); ``{"type": "ping"}`` is answered with ``{"type": "pong"}``.

Closing codes: 4401 no, invalid or revoked token (an open connection is closed within 5 s of a
revocation; a database outage closes nothing), 4429 too many failed authentications from the address,
4403 outside the token's role or scope, 4400 bad message, 4404 unknown tag, 4408 no subscription
within the time allowed, 1013 the client fell too far behind (reconnect: the new snapshot covers what
was missed) or the token cannot be checked now.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

import numpy as np
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import JSONResponse

from hazmon.api.deps import AuthFailed, authenticate_client, bearer_token, client_address, principal_for
from hazmon.api.where import directory
from hazmon.auth import Permission, Principal
from hazmon.live import Follow, SlowClient, Subscription
from hazmon.plant.directory import AmbiguousName
from hazmon.runtime import Runtime
from hazmon.storage.store import StoreError

router = APIRouter(tags=["live"])
log = logging.getLogger(__name__)

FIRST_MESSAGE_TIMEOUT_S = 10.0
SEND_TIMEOUT_S = 10.0
REAUTH_S = 2.0  # how often an open connection's token is checked again: a revoked token is cut within 5 s


class Refused(Exception):
    def __init__(self, code: int, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class SubscribeMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str = Field(pattern="^subscribe$")
    token: str | None = None
    sites: list[str] = Field(default_factory=list, max_length=1000)
    tags: list[str] = Field(default_factory=list, max_length=100_000)
    alarms_only: bool = False


def _parse(text: str) -> dict[str, Any]:
    try:
        msg = json.loads(text)
    except (ValueError, RecursionError):  # not JSON, or nested past what can be decoded
        raise Refused(4400, "messages are JSON objects") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise Refused(4400, 'messages are JSON objects with a "type"')
    return msg


def _subscription(runtime: Runtime, user: Principal, msg: dict[str, Any]) -> tuple[Subscription, dict[str, Any]]:
    try:
        sub_msg = SubscribeMessage.model_validate(msg)
    except ValidationError as e:
        first = e.errors()[0]
        raise Refused(4400, f"subscribe: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    where = directory(runtime)
    outside = [s for s in sub_msg.sites if not user.sees(s)]
    if outside:
        raise Refused(4403, f"site(s) outside this token's scope: {', '.join(outside)}")
    try:  # each tag as site/tag, or by its bare id where one site the token sees has it
        tags = list(dict.fromkeys(where.resolve(t, user.sees) for t in sub_msg.tags))
    except AmbiguousName as e:
        raise Refused(4400, f"ambiguous tag {e}") from None
    unknown = [t for t in tags if t not in where.places]
    if unknown:
        raise Refused(4404, f"unknown tag(s): {', '.join(unknown[:20])}")
    hidden = [t for t in tags if not where.places[t].seen_by(user.sees)]  # a system alarm: the sites it affects
    if hidden:
        raise Refused(4403, f"tag(s) outside this token's scope: {', '.join(hidden[:20])}")
    sites: frozenset[str] | None
    if sub_msg.sites:
        sites = frozenset(sub_msg.sites)
    elif tags:
        sites = frozenset()
    else:
        sites = None if user.unrestricted else user.scope
    follow = Follow(sites=sites, tags=frozenset(tags), alarms_only=sub_msg.alarms_only)
    if follow.alarms_only:
        keys = np.zeros(0, np.int32)
    else:
        parts = [where.all_keys] if sites is None else [where.site_keys.get(s, np.zeros(0, np.int32)) for s in sites]
        parts.append(np.asarray([k for t in tags if (k := runtime.tags.get(t)) is not None], np.int32))
        keys = np.concatenate(parts) if parts else np.zeros(0, np.int32)
    # Snapshot and registration in one synchronous step: no event can fall between them.
    snapshot = runtime.engine.current() if runtime.engine is not None else []
    # a system alarm's place lists every site it affects: a client following one of them gets it
    sub, alarms = runtime.hub.subscribe(follow, snapshot, where.place_of, keys, runtime.tags)
    values = runtime.hub.latest_values(sub.value_keys, runtime.tags)
    body = {
        "type": "snapshot",
        "sites": sorted(sites) if sites is not None else None,
        "tags": sorted(follow.tags),
        "alarms_only": follow.alarms_only,
        "alarms": alarms,
        "values": values,
    }
    return sub, body


async def _authenticate(ws: WebSocket, runtime: Runtime, token: str | None) -> Principal:
    try:
        user = await authenticate_client(runtime, token, client_address(ws), "a token is required")
    except AuthFailed as e:
        raise Refused(4429 if e.status == 429 else 4401, e.detail) from None
    except StoreError as e:
        raise Refused(1013, f"cannot check the token now: {e}") from None
    if not user.may(Permission.READ):
        raise Refused(4403, f"role {user.role.value} may not read")
    return user


async def _recheck(runtime: Runtime, token: str, user: Principal) -> Principal:
    """The token of an open connection, checked again: revoked -> 4401. While the database is
    unreachable the connection keeps its principal: an outage closes no console."""
    try:
        again = await principal_for(runtime, token, max_age_s=REAUTH_S / 2)
    except StoreError:
        return user
    if again is None:
        raise Refused(4401, "invalid or revoked token")
    return again


async def _first_message(ws: WebSocket) -> dict[str, Any]:
    try:
        return _parse(await asyncio.wait_for(_receive_text(ws), FIRST_MESSAGE_TIMEOUT_S))
    except TimeoutError:
        raise Refused(4408, f"send a subscribe message within {FIRST_MESSAGE_TIMEOUT_S:g} s") from None


_DENIAL_STATUS = {4401: 401, 4403: 403, 4429: 429}


async def _receive_text(ws: WebSocket) -> str:
    """The next text message; a binary one is a bad message (4400), not a crash of the handler."""
    message = await ws.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000), message.get("reason"))
    text = message.get("text")
    if not isinstance(text, str):
        raise Refused(4400, "messages are JSON text, not binary")
    return text


@router.websocket("/live")
async def live(ws: WebSocket) -> None:
    runtime: Runtime = ws.app.state.runtime
    # The header first; ?token= still works (uvicorn logs the URL: hazmon.logs redacts the secret).
    token = bearer_token(ws) or ws.query_params.get("token")
    user: Principal | None = None
    if token is not None:
        # Refuse a bad token at the handshake, with a plain HTTP status.
        try:
            user = await _authenticate(ws, runtime, token)
        except Refused as r:
            status = _DENIAL_STATUS.get(r.code, 503)
            await ws.send_denial_response(JSONResponse({"detail": r.detail}, status_code=status))
            return
    await ws.accept()
    sub: Subscription | None = None
    recv: asyncio.Task[str] | None = None
    nxt: asyncio.Task[list[str]] | None = None
    try:
        first = await _first_message(ws)
        if user is None:
            token = first.get("token") if isinstance(first.get("token"), str) else None
            user = await _authenticate(ws, runtime, token)
        if first.get("type") == "auth":
            first = await _first_message(ws)
        first.pop("token", None)
        if first["type"] != "subscribe":
            raise Refused(4400, 'the first message is {"type": "subscribe", ...}')
        assert token is not None  # authenticated
        sub, snapshot = _subscription(runtime, user, first)
        await ws.send_text(json.dumps(snapshot, ensure_ascii=False))
        recv = asyncio.create_task(_receive_text(ws))
        # One task takes the subscription's messages; it is never cancelled once it may hold some
        # (what it took off the queue is always sent, whatever else completes meanwhile).
        nxt = asyncio.create_task(sub.next_messages())
        next_check = time.monotonic() + REAUTH_S
        while True:
            await asyncio.wait({recv, nxt}, timeout=max(0.0, next_check - time.monotonic()), return_when=FIRST)
            if nxt.done():
                for text in nxt.result():
                    await asyncio.wait_for(ws.send_text(text), SEND_TIMEOUT_S)
                nxt = asyncio.create_task(sub.next_messages())
            if recv.done():
                msg = _parse(recv.result())
                recv = asyncio.create_task(_receive_text(ws))
                if msg["type"] == "ping":
                    await ws.send_text('{"type":"pong"}')
                elif msg["type"] == "subscribe":
                    msg.pop("token", None)
                    new_sub, snapshot = _subscription(runtime, user, msg)
                    # the old subscription's unsent messages are superseded by the new snapshot
                    await _cancel(nxt)
                    sub.close()
                    sub = new_sub
                    await ws.send_text(json.dumps(snapshot, ensure_ascii=False))
                    nxt = asyncio.create_task(sub.next_messages())
                else:
                    raise Refused(4400, f"unknown message type {msg['type']!r}")
            if time.monotonic() >= next_check:
                # A token revoked while connected loses the stream within 1.5 * REAUTH_S (3 s).
                user = await _recheck(runtime, token, user)
                next_check = time.monotonic() + REAUTH_S
    except Refused as r:
        with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect):
            await ws.send_text(json.dumps({"type": "error", "code": r.code, "detail": r.detail}))
            await ws.close(code=r.code, reason=r.detail[:120])
    except SlowClient as e:
        log.warning("live client %s dropped: %s", user.label if user else "?", e)
        with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect):
            await ws.close(code=1013, reason=str(e)[:120])
    except TimeoutError:
        log.warning("live client %s dropped: a send took over %g s", user.label if user else "?", SEND_TIMEOUT_S)
        with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect):
            await ws.close(code=1013, reason="too slow")
    except WebSocketDisconnect:
        pass
    finally:
        for task in (recv, nxt):
            if task is not None:
                await _cancel(task)
        if sub is not None:
            sub.close()


FIRST = asyncio.FIRST_COMPLETED


async def _cancel(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait for its end, whatever it was; a cancellation of the caller is not swallowed."""
    if not task.done():
        task.cancel()
    await asyncio.wait([task])
    error = None if task.cancelled() else task.exception()
    if error is not None and not isinstance(error, (WebSocketDisconnect, SlowClient, RuntimeError, OSError)):
        raise error  # a disconnect or a slow client is how a connection ends; anything else is a failure
