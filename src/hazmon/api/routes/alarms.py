"""Alarms: the current ones, the journal, KPIs, and the operator actions.

Every action goes through ``runtime.act``: applied on the engine and recorded — its events journaled
and its audit-trail entry appended in one transaction, or kept on disk while the database is away —
or not applied at all (503). Operator text with control characters is refused (422) before anything.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Response
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from hazmon.alarms import journal, kpi
from hazmon.alarms.alarm import AlarmSnapshot, AlarmState, InvalidTransition, Priority, UnknownAlarm
from hazmon.alarms.engine import AlarmEngine
from hazmon.api.deps import Operator, Reader, RuntimeDep, ensure_sees
from hazmon.api.edge import INT64_MAX, NoNul
from hazmon.api.routes.tags import time_range
from hazmon.api.where import NOWHERE, Place, directory, qualified_alarm
from hazmon.auth import Principal
from hazmon.live import AlarmListView, encode_json, event_dict, iso_local, owner_of, snapshot_dict
from hazmon.recorder import RecordNotPossible
from hazmon.runtime import Actor, Runtime
from hazmon.storage.store import guarded

router = APIRouter(prefix="/alarms", tags=["alarms"])

MAX_PAGE = 1_000
_SINCE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d|w)\s*$")
_SINCE_S = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


# ---------------------------------------------------------------------- helpers


def places(runtime: Runtime) -> dict[str, Place]:
    return directory(runtime).places


def _engine(runtime: Runtime) -> AlarmEngine:
    if runtime.engine is None:
        raise HTTPException(503, "no rule engine is running (no alarm rules configured)")
    return runtime.engine


def _place(runtime: Runtime, alarm_id: str, tag_id: str | None) -> Place:
    return places(runtime).get(owner_of(alarm_id, tag_id), NOWHERE)


def _alarm_json(runtime: Runtime, s: AlarmSnapshot) -> dict[str, Any]:
    p = _place(runtime, s.alarm_id, s.tag_id)
    d = snapshot_dict(s, p.site)
    d["installation"] = p.installation
    d["equipment"] = p.equipment
    if p.affects:  # a system alarm: the sites it affects
        d["sites"] = sorted(p.sites)
    return d


def _ensure_sees_alarm(user: Principal, place: Place, alarm_id: str) -> None:
    """403 unless the alarm's site, or a site a system alarm affects, is in the caller's scope."""
    if not place.seen_by(user.sees):
        raise HTTPException(403, f"alarm {alarm_id} is outside this token's scope")


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """'30d', '12h', '90min' ago, or an ISO 8601 time."""
    now = now or datetime.now(UTC)
    m = _SINCE.match(text)
    if m:
        try:
            return now - timedelta(seconds=float(m.group(1)) * _SINCE_S[m.group(2)])
        except OverflowError:
            raise HTTPException(422, f"since {text!r}: reaches before the year 1") from None
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise HTTPException(
            422, f"since {text!r}: use a duration such as 30d, 12h, 90min or an ISO 8601 time"
        ) from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _scoped_site(user: Principal, site: str | None) -> str | None:
    """The site a journal/KPI query is about: the one asked for (in scope), or the token's only site."""
    if site is not None:
        ensure_sees(user, site, f"site {site!r}")
        return site
    if user.unrestricted:
        return None
    if len(user.scope) == 1:
        return next(iter(user.scope))
    raise HTTPException(
        422, f"name a site: this token covers {len(user.scope)} sites ({', '.join(sorted(user.scope))})"
    )


def _json(body: Any) -> Response:
    return Response(json.dumps(body, ensure_ascii=False, default=str), media_type="application/json")


# ---------------------------------------------------------------------- reads


@router.get(
    "",
    summary="Current alarms (not normal), filtered: priority first, then unacknowledged, then newest",
)
async def current_alarms(
    runtime: RuntimeDep,
    user: Reader,
    site: str | None = None,
    installation: str | None = None,
    equipment: str | None = None,
    priority: Annotated[list[Priority] | None, Query(description="repeat for several")] = None,
    state: Annotated[list[AlarmState] | None, Query(description="repeat for several")] = None,
) -> Response:
    if site is not None:
        ensure_sees(user, site, f"site {site!r}")
    view = current_view(runtime)
    prios = set(priority) if priority else None
    states = set(state) if state else None
    parts = []
    for s, p, text in view.items:
        if not p.seen_by(user.sees):
            continue
        if (site is not None and site not in p.sites) or (equipment is not None and p.equipment != equipment):
            continue
        if installation is not None and p.installation != installation:
            continue
        if (prios is not None and s.priority not in prios) or (states is not None and s.state not in states):
            continue
        parts.append(text)
    return Response("[" + ",".join(parts) + "]", media_type="application/json")


def current_view(runtime: Runtime) -> AlarmListView:
    """Cached until the engine's state may have changed: every change of an alarm is an event
    published to the hub, and every batch may change the values shown."""
    engine = _engine(runtime)
    key = (engine.stats["batches"], runtime.hub.stats.events_published, len(runtime.site_of))
    view = runtime.alarm_view
    if view is not None and view.engine is engine and view.key == key:
        return view
    where = places(runtime)
    items = []
    for s in engine.current():
        p = where.get(owner_of(s.alarm_id, s.tag_id), NOWHERE)
        d = snapshot_dict(s, p.site)
        d["installation"] = p.installation
        d["equipment"] = p.equipment
        if p.affects:  # a system alarm: the sites it affects
            d["sites"] = sorted(p.sites)
        items.append((s, p, encode_json(d)))
    items.sort(key=list_order)
    view = AlarmListView(engine, key, items)
    runtime.alarm_view = view
    return view


_PRIORITY_RANK = {p: i for i, p in enumerate(Priority)}  # critical first
_UNACK = frozenset({AlarmState.ACTIVE_UNACK, AlarmState.RTN_UNACK})


def list_order(item: tuple[AlarmSnapshot, Place, str]) -> tuple[int, int, int, str]:
    """The alarm list's order (ISA-18.2 / ISA-101): priority, then unacknowledged before
    acknowledged, then newest activation first."""
    s = item[0]
    return (_PRIORITY_RANK[s.priority], 0 if s.state in _UNACK else 1, -(s.activated_us or s.since_us), s.alarm_id)


@router.get("/history", summary="The alarm journal over a time range, newest first, paged")
async def alarm_history(
    runtime: RuntimeDep,
    user: Reader,
    site: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    offset: Annotated[int, Query(ge=0, le=INT64_MAX)] = 0,
    tag: Annotated[str | None, Query(description="a tag or device id: its alarms only")] = None,
    priority: Priority | None = None,
    alarm_user: Annotated[str | None, Query(alias="user", description="entries by this user only")] = None,
) -> Response:
    site_id = _scoped_site(user, site)
    start, end = time_range(start, end, timedelta(days=1))

    async def op() -> list[dict[str, Any]]:
        async with runtime.db.pool.acquire() as conn:
            rows: list[dict[str, Any]] = await journal.history(
                conn,
                site=site_id,
                start=start,
                end=end,
                limit=limit + 1,
                offset=offset,
                tag=tag or None,
                priority=priority.value if priority else None,
                user=alarm_user or None,
            )
            return rows

    try:
        rows = await guarded(op, "alarm history")
    except journal.JournalError as e:
        raise HTTPException(503, str(e)) from None
    more = len(rows) > limit
    events = [_history_json(r) for r in rows[:limit]]
    return _json(
        {
            "site": site_id,
            "start": start.isoformat(),
            "end": end.isoformat(),
            "limit": limit,
            "offset": offset,
            "next_offset": offset + limit if more else None,
            "events": events,
        }
    )


def _history_json(row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    site = row.get("site_id")
    for k, v in row.items():
        if isinstance(v, datetime):
            out["time" if k == "ts" else k] = iso_local(journal.to_us(v), site)  # the site's local time
            if k == "ts":
                out["ts_us"] = journal.to_us(v)
        elif isinstance(v, float) and not math.isfinite(v):
            out[k] = None
        else:
            out[k] = v
    out["site"] = out.pop("site_id", None)
    out["tag"] = out.pop("tag_id", None)
    out["state"] = out.pop("new_state", None)
    return out


@router.get("/kpi", summary="Alarm-system KPIs (ISA-18.2 / EEMUA 191) from the journal")
async def alarm_kpi(runtime: RuntimeDep, user: Reader, site: str | None = None, since: str = "30d") -> Response:
    site_id = _scoped_site(user, site)
    if site_id is None:
        raise HTTPException(422, "name a site")
    start = parse_since(since)

    async def op() -> dict[str, Any]:
        async with runtime.db.pool.acquire() as conn:
            return await kpi.compute_kpis(conn, site_id, start)

    try:
        result = await guarded(op, "alarm KPIs")
    except journal.JournalError as e:
        raise HTTPException(503, str(e)) from None
    except ValueError as e:
        raise HTTPException(422, str(e)) from None
    return _json(result)


@router.get("/{alarm_id:path}", summary="One alarm's current state")
async def one_alarm(runtime: RuntimeDep, user: Reader, alarm_id: str) -> Response:
    """``alarm_id``: ``<site>/<tag>:<condition>``; ``<tag>:<condition>`` where one site of the token's has the tag."""
    alarm_id = qualified_alarm(runtime, alarm_id, user.sees)
    snap = _get(runtime, alarm_id)
    _ensure_sees_alarm(user, _place(runtime, snap.alarm_id, snap.tag_id), alarm_id)
    return _json(_alarm_json(runtime, snap))


def _get(runtime: Runtime, alarm_id: str) -> AlarmSnapshot:
    try:
        return _engine(runtime).get(alarm_id)
    except UnknownAlarm:
        raise HTTPException(404, f"unknown alarm {alarm_id!r}") from None


# ---------------------------------------------------------------------- actions


def _operator_text(text: str) -> str:
    """Operator text goes to the journal and the audit trail as it is: control characters (other than
    newline and tab) and unpaired surrogates, which the database or a terminal cannot take, are refused."""
    for i, ch in enumerate(text):
        if ch in "\n\t":
            continue
        if unicodedata.category(ch) in ("Cc", "Cs"):
            raise ValueError(f"control character U+{ord(ch):04X} at position {i}: only newline and tab are allowed")
    return text


OperatorText = Annotated[str, AfterValidator(_operator_text)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CommentBody(_Body):
    comment: OperatorText | None = Field(default=None, max_length=2000)


class ShelveBody(_Body):
    reason: OperatorText = Field(min_length=1, max_length=2000, description="why the alarm is shelved (required)")
    duration_s: float = Field(gt=0, allow_inf_nan=False, description="seconds; at most the configured maximum")


class TextBody(_Body):
    text: OperatorText = Field(min_length=1, max_length=2000)


class ReasonBody(_Body):
    reason: OperatorText = Field(min_length=1, max_length=2000)


class BulkAckBody(_Body):
    ids: list[NoNul] = Field(min_length=1, max_length=1000)
    comment: OperatorText | None = Field(default=None, max_length=2000)


async def _act(
    runtime: Runtime,
    user: Principal,
    action: str,
    alarm_id: str,
    *,
    comment: str | None = None,
    duration_s: float | None = None,
) -> dict[str, Any]:
    try:
        alarm_id = qualified_alarm(runtime, alarm_id, user.sees)
        snap = _get(runtime, alarm_id)
    except HTTPException as e:
        await _audit_refusal(runtime, user, action, alarm_id, None, e.status_code, str(e.detail), comment, duration_s)
        raise
    place = _place(runtime, snap.alarm_id, snap.tag_id)
    _ensure_sees_alarm(user, place, alarm_id)
    site = place.site
    actor = Actor(user.label, user.token_id, user.role.value)
    try:
        # applied and recorded (journal + audit trail, or the disk spool during an outage), or not at all
        done = await runtime.act(action, alarm_id, actor, comment=comment, duration_s=duration_s, site=site)
    except UnknownAlarm:
        await _audit_refusal(runtime, user, action, alarm_id, site, 404, "unknown alarm", comment, duration_s)
        raise HTTPException(404, f"unknown alarm {alarm_id!r}") from None
    except InvalidTransition as e:
        await _audit_refusal(runtime, user, action, alarm_id, site, 409, str(e), comment, duration_s)
        raise HTTPException(409, str(e)) from None
    except ValueError as e:
        await _audit_refusal(runtime, user, action, alarm_id, site, 422, str(e), comment, duration_s)
        raise HTTPException(422, str(e)) from None
    except RecordNotPossible as e:
        raise HTTPException(503, str(e)) from None
    return {
        "alarm": _alarm_json(runtime, done.after),
        "events": [event_dict(e, site, done.after.activated_us) for e in done.events],
        "record": done.record,
    }


async def _audit_refusal(
    runtime: Runtime,
    user: Principal,
    action: str,
    alarm_id: str,
    site: str | None,
    status: int,
    reason: str,
    comment: str | None,
    duration_s: float | None,
) -> None:
    """An operator action that failed is in the audit trail too, as ``alarm.<action>.refused`` with
    why. It goes through the alarm recorder like the actions: on disk first, so a database outage
    delays the entry (the answer does not wait for it) and loses nothing."""
    detail: dict[str, Any] = {"status": status, "reason": reason}
    if comment is not None:
        detail["comment"] = comment
    if duration_s is not None:
        detail["duration_s"] = duration_s
    actor = Actor(user.label, user.token_id, user.role.value)
    await runtime.audit(actor, f"alarm.{action}.refused", alarm_id, site, detail)


@router.post("/ack", summary="Acknowledge several alarms; each is reported on its own")
async def bulk_ack(runtime: RuntimeDep, user: Operator, body: BulkAckBody) -> Response:
    """Any id outside the token's scope refuses the whole request (403) before anything is done;
    unknown ids and alarms not waiting for acknowledgement are reported per id (404, 409)."""
    engine = _engine(runtime)
    # each id as given (results are keyed by it) and as the engine names it (site/owner:condition)
    ids = {given: qualified_alarm(runtime, given, user.sees) for given in dict.fromkeys(body.ids)}
    for alarm_id in ids.values():
        try:
            snap = engine.get(alarm_id)
        except UnknownAlarm:
            continue
        _ensure_sees_alarm(user, _place(runtime, snap.alarm_id, snap.tag_id), alarm_id)
    results: dict[str, Any] = {}
    for given, alarm_id in ids.items():
        try:
            out = await _act(runtime, user, "acknowledge", alarm_id, comment=body.comment)
            results[given] = {"status": 200, "state": out["alarm"]["state"]}
        except HTTPException as e:
            results[given] = {"status": e.status_code, "detail": e.detail}
    return _json({"results": results, "acknowledged": sum(1 for r in results.values() if r["status"] == 200)})


@router.post("/{alarm_id:path}/ack", summary="Acknowledge an alarm")
async def ack(runtime: RuntimeDep, user: Operator, alarm_id: str, body: CommentBody | None = None) -> Response:
    return _json(await _act(runtime, user, "acknowledge", alarm_id, comment=body.comment if body else None))


@router.post("/{alarm_id:path}/reset", summary="Reset a latched alarm whose condition has cleared")
async def reset(runtime: RuntimeDep, user: Operator, alarm_id: str, body: CommentBody | None = None) -> Response:
    return _json(await _act(runtime, user, "reset", alarm_id, comment=body.comment if body else None))


@router.post("/{alarm_id:path}/shelve", summary="Shelve an alarm for a while (reason required)")
async def shelve(runtime: RuntimeDep, user: Operator, alarm_id: str, body: ShelveBody) -> Response:
    engine = _engine(runtime)
    max_s = engine.max_shelve_us / 1e6
    if body.duration_s > max_s:
        why = f"duration_s: at most {max_s:g} s ({max_s / 3600:g} h) may be shelved"
        alarm_id = qualified_alarm(runtime, alarm_id, user.sees)
        try:
            snap = engine.get(alarm_id)
        except UnknownAlarm:
            site = None
        else:  # an alarm outside the token's scope is refused as every action is (403), not audited
            place = _place(runtime, snap.alarm_id, snap.tag_id)
            _ensure_sees_alarm(user, place, alarm_id)
            site = place.site
        await _audit_refusal(runtime, user, "shelve", alarm_id, site, 422, why, body.reason, body.duration_s)
        raise HTTPException(422, why)
    return _json(await _act(runtime, user, "shelve", alarm_id, comment=body.reason, duration_s=body.duration_s))


@router.post("/{alarm_id:path}/unshelve", summary="Unshelve an alarm before its time runs out")
async def unshelve(runtime: RuntimeDep, user: Operator, alarm_id: str, body: CommentBody | None = None) -> Response:
    return _json(await _act(runtime, user, "unshelve", alarm_id, comment=body.comment if body else None))


@router.post("/{alarm_id:path}/comment", summary="Add a comment to an alarm's journal")
async def comment(runtime: RuntimeDep, user: Operator, alarm_id: str, body: TextBody) -> Response:
    return _json(await _act(runtime, user, "comment", alarm_id, comment=body.text))


@router.post("/{alarm_id:path}/out-of-service", summary="Remove an alarm from service (reason required)")
async def out_of_service(runtime: RuntimeDep, user: Operator, alarm_id: str, body: ReasonBody) -> Response:
    return _json(await _act(runtime, user, "remove_from_service", alarm_id, comment=body.reason))


@router.post("/{alarm_id:path}/return-to-service", summary="Return an alarm to service")
async def return_to_service(
    runtime: RuntimeDep, user: Operator, alarm_id: str, body: CommentBody | None = None
) -> Response:
    return _json(await _act(runtime, user, "return_to_service", alarm_id, comment=body.comment if body else None))
