"""The alarm journal: every alarm event, append-only, and the current state of every alarm.

``append_events`` writes a list of events and upserts ``alarm_state`` in one transaction;
``load_current`` returns the snapshots the engine restores after a restart; ``history`` pages
through the journal. Tables: migrations/010_alarms.sql (UPDATE, DELETE and TRUNCATE on
``alarm_journal`` are rejected by a trigger).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from hazmon.alarms.alarm import AlarmEvent, AlarmSnapshot, AlarmState, Priority, split_alarm_id
from hazmon.plant.tag import local_id, site_of_ref, tag_ref

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SiteOf = Callable[[str], str | None]  # alarm owner (tag id or device id) -> site id

_ACTIVE = {AlarmState.ACTIVE_UNACK, AlarmState.ACTIVE_ACK}
_UNACKED = {AlarmState.ACTIVE_UNACK, AlarmState.RTN_UNACK}


class JournalError(Exception):
    """The journal could not be written or read (the database refused or went away)."""


class JournalUnavailable(JournalError):
    """The database could not be reached or is overloaded: the same write may succeed later."""


class JournalRefused(JournalError):
    """The database refused the write for what it holds (a NUL in a comment, a constraint): the
    same write will never succeed, so it must not be retried forever."""


# SQLSTATE classes that say nothing about the data: connection, resources, operator intervention,
# system errors, serialization failures and deadlocks. Any other refusal is about the content.
_TRANSIENT_CLASSES = {"08", "40", "53", "55", "57", "58"}
_OUTAGE = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
)


def classify(e: BaseException, what: str) -> JournalError:
    """A ``JournalUnavailable`` for an outage, a ``JournalRefused`` for anything about the data."""
    if isinstance(e, JournalError):
        return e
    if isinstance(e, _OUTAGE):
        return JournalUnavailable(f"{what}: database unavailable: {e}")
    if isinstance(e, asyncpg.PostgresError):
        state = str(getattr(e, "sqlstate", "") or "")
        if state[:2] in _TRANSIENT_CLASSES:
            return JournalUnavailable(f"{what}: {e}")
        return JournalRefused(f"{what}: refused by the database ({state}): {e}")
    if isinstance(e, asyncpg.InterfaceError) and not isinstance(e, ValueError):
        # connection closed under the query, pool closing, ...
        return JournalUnavailable(f"{what}: {e}")
    # asyncpg.DataError, UnicodeEncodeError (a lone surrogate), ValueError, TypeError, ...: the data
    return JournalRefused(f"{what}: cannot encode: {type(e).__name__}: {e}")


def to_datetime(ts_us: int) -> datetime:
    return EPOCH + timedelta(microseconds=ts_us)


def to_us(ts: datetime) -> int:
    return (ts - EPOCH) // timedelta(microseconds=1)


def _state_row(e: AlarmEvent, site_id: str | None, shelved_until_us: int | None) -> tuple[Any, ...]:
    state = AlarmState(e.new_state)
    return (
        e.alarm_id,
        local_id(e.tag_id) if e.tag_id is not None else None,
        site_id,
        e.condition,
        str(e.priority),
        str(state),
        state in _ACTIVE,
        state not in _UNACKED,
        e.value,
        e.limit,
        to_datetime(e.ts_us),
        to_datetime(shelved_until_us) if shelved_until_us is not None else None,
        state is AlarmState.OUT_OF_SERVICE,
        state is AlarmState.SUPPRESSED,
        e.user,
        e.comment,
    )


_INSERT = """INSERT INTO alarm_journal (ts, alarm_id, tag_id, site_id, condition, priority, action,
    prev_state, new_state, value, "limit", "user", comment)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"""

_UPSERT = """INSERT INTO alarm_state (alarm_id, tag_id, site_id, condition, priority, state, active, acked,
    value, "limit", since, shelved_until, out_of_service, suppressed, "user", comment)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
    ON CONFLICT (alarm_id) DO UPDATE SET tag_id = EXCLUDED.tag_id, site_id = EXCLUDED.site_id,
    condition = EXCLUDED.condition, priority = EXCLUDED.priority, state = EXCLUDED.state,
    active = EXCLUDED.active, acked = EXCLUDED.acked, value = EXCLUDED.value, "limit" = EXCLUDED."limit",
    since = EXCLUDED.since,
    shelved_until = CASE WHEN EXCLUDED.state = 'shelved'
                         THEN coalesce(EXCLUDED.shelved_until, alarm_state.shelved_until) END,
    out_of_service = EXCLUDED.out_of_service, suppressed = EXCLUDED.suppressed,
    "user" = EXCLUDED."user", comment = EXCLUDED.comment"""


async def append_events(conn: asyncpg.Connection, events: Sequence[AlarmEvent], site_of: SiteOf) -> int:
    """Journal the events and update the current state of their alarms, in one transaction.

    ``site_of`` maps an alarm's owner (its tag reference ``site/tag``, the device reference of a
    communication alarm, or a system owner) to its site id; a ``dict.get`` does. An owner it does not
    know is placed by its reference. The journal keeps the tag's own id beside its site.
    """
    if not events:
        return 0
    sites = {}
    for e in events:
        owner = e.tag_id if e.tag_id is not None else split_alarm_id(e.alarm_id)[0]
        sites[e.alarm_id] = site_of(owner) or site_of_ref(owner)
    journal = [
        (
            to_datetime(e.ts_us),
            e.alarm_id,
            local_id(e.tag_id) if e.tag_id is not None else None,
            sites[e.alarm_id],
            e.condition,
            str(e.priority),
            e.action,
            str(e.prev_state),
            str(e.new_state),
            e.value,
            e.limit,
            e.user,
            e.comment,
        )
        for e in events
    ]
    last: dict[str, AlarmEvent] = {}  # the state after the batch is the last event's
    until: dict[str, int | None] = {}  # shelving end, carried past later events (comments)
    for e in events:
        last[e.alarm_id] = e
        if e.new_state != AlarmState.SHELVED:
            until[e.alarm_id] = None
        elif e.shelved_until_us is not None:
            until[e.alarm_id] = e.shelved_until_us
    states = [_state_row(e, sites[a], until.get(a)) for a, e in last.items()]
    try:
        async with conn.transaction():
            await conn.executemany(_INSERT, journal)
            await conn.executemany(_UPSERT, states)
    except Exception as e:  # every failure is classified: outage or refusal
        raise classify(e, f"cannot write {len(events)} alarm events") from e
    return len(events)


_LAST_ACTIVATION = """SELECT DISTINCT ON (j.alarm_id) j.alarm_id, j.ts FROM alarm_journal j
    WHERE j.alarm_id = ANY($1::text[]) AND j.action = 'activate'
      AND NOT EXISTS (SELECT 1 FROM alarm_journal k WHERE k.alarm_id = j.alarm_id AND k.new_state = 'normal'
                      AND (k.ts, k.id) > (j.ts, j.id))
    ORDER BY j.alarm_id, j.ts DESC, j.id DESC"""


async def load_current(conn: asyncpg.Connection) -> list[AlarmSnapshot]:
    """Every alarm whose state is not normal, as snapshots for ``AlarmEngine.restore``.

    ``activated_us`` comes from the journal: the last activation not followed by a return to the
    normal state (None when the alarm has been normal since its last activation).
    """
    try:
        rows = await conn.fetch("SELECT * FROM alarm_state WHERE state <> 'normal' ORDER BY alarm_id")
        activated = {
            r["alarm_id"]: to_us(r["ts"]) for r in await conn.fetch(_LAST_ACTIVATION, [r["alarm_id"] for r in rows])
        }
    except (asyncpg.PostgresError, OSError) as e:
        raise JournalError(f"cannot read the alarm state: {e}") from e
    return [
        AlarmSnapshot(
            alarm_id=r["alarm_id"],
            tag_id=tag_ref(r["site_id"], r["tag_id"]) if r["tag_id"] and r["site_id"] else r["tag_id"],
            condition=r["condition"],
            priority=Priority(r["priority"]),
            state=AlarmState(r["state"]),
            active=r["active"],
            acked=r["acked"],
            value=r["value"],
            limit=r["limit"],
            since_us=to_us(r["since"]),
            activated_us=activated.get(r["alarm_id"]),
            shelved_until_us=to_us(r["shelved_until"]) if r["shelved_until"] is not None else None,
            out_of_service=r["out_of_service"],
            suppressed=r["suppressed"],
            user=r["user"],
            comment=r["comment"],
        )
        for r in rows
    ]


async def history(
    conn: asyncpg.Connection,
    *,
    site: str | None = None,
    alarm_id: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    limit: int = 100,
    offset: int = 0,
    tag: str | None = None,
    priority: str | None = None,
    user: str | None = None,
) -> list[dict[str, Any]]:
    """Journal entries, newest first, filtered by site, alarm, time range [start, end), and for the
    console's history search by tag (or device: the alarm's owner), priority and user."""
    try:
        rows = await conn.fetch(
            """SELECT id, ts, alarm_id, tag_id, site_id, condition, priority, action, prev_state,
                      new_state, value, "limit", "user", comment
               FROM alarm_journal
               WHERE ($1::text IS NULL OR site_id = $1) AND ($2::text IS NULL OR alarm_id = $2)
                 AND ($3::timestamptz IS NULL OR ts >= $3) AND ($4::timestamptz IS NULL OR ts < $4)
                 AND ($7::text IS NULL OR tag_id = $7 OR left(alarm_id, length($7) + 1) = $7 || ':'
                      OR position('/' || $7 || ':' IN alarm_id) > 0)
                 AND ($8::text IS NULL OR priority = $8) AND ($9::text IS NULL OR "user" = $9)
               ORDER BY ts DESC, id DESC LIMIT $5 OFFSET $6""",
            site,
            alarm_id,
            start,
            end,
            limit,
            offset,
            tag,
            priority,
            user,
        )
    except (asyncpg.PostgresError, OSError) as e:
        raise JournalError(f"cannot read the alarm journal: {e}") from e
    return [dict(r) for r in rows]
