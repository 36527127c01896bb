"""Hidden-hazard self-check and self-report (隐患自查自报).

Enterprises record the hidden hazards they find: where (site, and optionally installation or
equipment), what, how grave (一般 general / 重大 major), when found and by whom, the corrective
action, its deadline and the person responsible, and the status::

    open ──▶ rectifying ──▶ closed (with an evidence note)
      └──────────────────────▲   └──▶ open (reopened)

Every change is written together with its audit-trail entry (``hazmon.audit``, action
``finding.create`` / ``finding.update``, target ``finding:<id>``) in one transaction: a change is
recorded or not applied at all.

Regulators read, per enterprise, the open findings, the major ones, the overdue ones (not closed
after the deadline day in the site's time zone) and the median time to close
(``findings_summary``; the compliance report includes it).

Errors the API maps to HTTP statuses::

    ValueError
     └── FindingError          422: bad input (the message names the field)
          ├── FindingNotFound  404: no such finding
          └── FindingConflict  409: not allowed in the finding's status, or changed meanwhile
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import asyncpg
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from hazmon import audit

# Control characters other than tab and newline (and carriage return, normalised away) are refused.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029]")
DEFAULT_TZ = "Asia/Shanghai"
DAY_S = 86_400
FUTURE_SLACK = timedelta(minutes=5)


class FindingError(ValueError):
    """Bad input for a finding; the message names the field."""


class FindingNotFound(FindingError):
    pass


class FindingConflict(FindingError):
    pass


class Grade(StrEnum):
    GENERAL = "general"  # 一般隐患
    MAJOR = "major"  # 重大隐患


GRADE_ZH = {Grade.GENERAL: "一般", Grade.MAJOR: "重大"}
_GRADE_ALIASES = {"一般": Grade.GENERAL, "一般隐患": Grade.GENERAL, "重大": Grade.MAJOR, "重大隐患": Grade.MAJOR}


class Status(StrEnum):
    OPEN = "open"
    RECTIFYING = "rectifying"  # 整改中
    CLOSED = "closed"  # 已整改销号


STATUS_ZH = {Status.OPEN: "未整改", Status.RECTIFYING: "整改中", Status.CLOSED: "已销号"}
TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.OPEN: frozenset({Status.RECTIFYING, Status.CLOSED}),
    Status.RECTIFYING: frozenset({Status.OPEN, Status.CLOSED}),
    Status.CLOSED: frozenset({Status.OPEN}),
}


def operator_text(value: str) -> str:
    """Operator text: no control characters but newline and tab; surrounding blanks trimmed."""
    value = value.replace("\r\n", "\n")
    bad = _CONTROL.search(value)
    if bad:
        raise ValueError(f"contains control character U+{ord(bad.group()):04X} (only newline and tab are allowed)")
    return value.strip()


def _grade(value: Any) -> Any:
    if isinstance(value, str):
        v = value.strip()
        return _GRADE_ALIASES.get(v, v.lower())
    return value


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


Text = Annotated[str, AfterValidator(operator_text)]
Ref = Annotated[str, Field(min_length=1, max_length=80, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")]
GradeIn = Annotated[Grade, BeforeValidator(_grade)]
When = Annotated[datetime, AfterValidator(_aware)]


def _non_empty(value: str) -> str:
    if not value:
        raise ValueError("must not be empty")
    return value


class FindingIn(BaseModel):
    """A new finding, as the API and the CLI take it."""

    model_config = ConfigDict(extra="forbid")

    site: Ref
    installation: Ref | None = None
    equipment: Ref | None = None
    description: Annotated[Text, AfterValidator(_non_empty), Field(max_length=4000)]
    grade: GradeIn = Field(description="general (一般) or major (重大)")
    found_at: When | None = Field(default=None, description="when it was found; default: now")
    found_by: Annotated[Text, AfterValidator(_non_empty), Field(max_length=200)]
    corrective_action: Annotated[Text, Field(max_length=4000)] | None = None
    deadline: date = Field(description="rectification deadline (a day, in the site's time zone)")
    responsible: Annotated[Text, Field(max_length=200)] | None = None


class FindingPatch(BaseModel):
    """A change to a finding: only the fields given change. ``status: closed`` needs ``evidence``."""

    model_config = ConfigDict(extra="forbid")

    installation: Ref | None = None
    equipment: Ref | None = None
    description: Annotated[Text, AfterValidator(_non_empty), Field(max_length=4000)] | None = None
    grade: GradeIn | None = None
    corrective_action: Annotated[Text, Field(max_length=4000)] | None = None
    deadline: date | None = None
    responsible: Annotated[Text, Field(max_length=200)] | None = None
    status: Status | None = None
    evidence: Annotated[Text, Field(max_length=4000)] | None = None
    version: int | None = Field(default=None, ge=1, description="refuse the change unless this is the current version")

    @model_validator(mode="after")
    def _closing(self) -> FindingPatch:
        if self.status is Status.CLOSED and not self.evidence:
            raise ValueError("evidence: closing a finding needs an evidence note (what was done, how it was checked)")
        return self

    def changes(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump(exclude_unset=True).items() if k != "version" and v is not None}


@dataclass(frozen=True, slots=True)
class Actor:
    """Who makes a change: recorded in the finding and in the audit trail."""

    name: str
    token_id: str | None = None
    role: str | None = None


@dataclass(frozen=True, slots=True)
class Finding:
    id: int
    site_id: str
    enterprise_id: str
    installation_id: str | None
    equipment_id: str | None
    description: str
    grade: Grade
    found_at: datetime
    found_by: str
    corrective_action: str | None
    deadline: date
    responsible: str | None
    status: Status
    closed_at: datetime | None
    evidence: str | None
    created_at: datetime
    created_by: str
    updated_at: datetime
    updated_by: str
    version: int
    timezone: str = DEFAULT_TZ

    def overdue(self, now: datetime) -> bool:
        """Not closed after the end of its deadline day (in the site's time zone)."""
        if self.status is Status.CLOSED:
            return False
        return now.astimezone(_zone(self.timezone)).date() > self.deadline

    def seconds_to_close(self) -> float | None:
        if self.closed_at is None:
            return None
        return max(0.0, (self.closed_at - self.found_at).total_seconds())

    def as_dict(self, now: datetime | None = None) -> dict[str, Any]:
        now = now or datetime.now(UTC)
        return {
            "id": self.id,
            "site": self.site_id,
            "enterprise": self.enterprise_id,
            "installation": self.installation_id,
            "equipment": self.equipment_id,
            "description": self.description,
            "grade": self.grade.value,
            "grade_zh": GRADE_ZH[self.grade],
            "found_at": _iso(self.found_at),
            "found_by": self.found_by,
            "corrective_action": self.corrective_action,
            "deadline": self.deadline.isoformat(),
            "responsible": self.responsible,
            "status": self.status.value,
            "status_zh": STATUS_ZH[self.status],
            "overdue": self.overdue(now),
            "closed_at": _iso(self.closed_at) if self.closed_at else None,
            "evidence": self.evidence,
            "created_at": _iso(self.created_at),
            "created_by": self.created_by,
            "updated_at": _iso(self.updated_at),
            "updated_by": self.updated_by,
            "version": self.version,
        }


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (KeyError, ValueError):
        return ZoneInfo(DEFAULT_TZ)


# ---------------------------------------------------------------------- summary (pure)


@dataclass
class FindingsSummary:
    """What a regulator asks of an enterprise's (or a site's) self-reported hidden hazards."""

    total: int = 0
    open: int = 0  # not closed (open or rectifying)
    rectifying: int = 0
    major_open: int = 0
    overdue: int = 0
    closed: int = 0
    median_s_to_close: float | None = None
    found_in_period: int | None = None
    closed_in_period: int | None = None
    overdue_ids: list[int] = field(default_factory=list)
    major_open_ids: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        median = self.median_s_to_close
        return {
            "total": self.total,
            "open": self.open,
            "rectifying": self.rectifying,
            "major_open": self.major_open,
            "overdue": self.overdue,
            "closed": self.closed,
            "median_days_to_close": None if median is None else round(median / DAY_S, 1),
            "median_seconds_to_close": None if median is None else round(median),
            "found_in_period": self.found_in_period,
            "closed_in_period": self.closed_in_period,
            "overdue_ids": self.overdue_ids,
            "major_open_ids": self.major_open_ids,
        }


def summarize(
    findings: Iterable[Finding], now: datetime, start: datetime | None = None, end: datetime | None = None
) -> FindingsSummary:
    """Open, major, overdue findings as of ``now``; the median time to close over the findings closed
    in [start, end) when a period is given, over all closed findings otherwise."""
    s = FindingsSummary()
    durations: list[float] = []
    if start is not None:
        s.found_in_period = s.closed_in_period = 0
    for f in findings:
        s.total += 1
        in_period = start is not None and start <= f.found_at and (end is None or f.found_at < end)
        if in_period and s.found_in_period is not None:
            s.found_in_period += 1
        if f.status is Status.CLOSED:
            s.closed += 1
            closed_in = start is None or (
                f.closed_at is not None and start <= f.closed_at and (end is None or f.closed_at < end)
            )
            if closed_in:
                if s.closed_in_period is not None:
                    s.closed_in_period += 1
                d = f.seconds_to_close()
                if d is not None:
                    durations.append(d)
            continue
        s.open += 1
        s.rectifying += f.status is Status.RECTIFYING
        if f.grade is Grade.MAJOR:
            s.major_open += 1
            s.major_open_ids.append(f.id)
        if f.overdue(now):
            s.overdue += 1
            s.overdue_ids.append(f.id)
    s.median_s_to_close = statistics.median(durations) if durations else None
    return s


# ---------------------------------------------------------------------- database

_SELECT = (
    "SELECT f.*, coalesce(s.doc->'site'->>'timezone', $TZ) AS timezone "
    "FROM hazard_findings f JOIN sites s ON s.id = f.site_id"
).replace("$TZ", f"'{DEFAULT_TZ}'")


def _finding(r: asyncpg.Record) -> Finding:
    return Finding(
        id=r["id"],
        site_id=r["site_id"],
        enterprise_id=r["enterprise_id"],
        installation_id=r["installation_id"],
        equipment_id=r["equipment_id"],
        description=r["description"],
        grade=Grade(r["grade"]),
        found_at=r["found_at"],
        found_by=r["found_by"],
        corrective_action=r["corrective_action"],
        deadline=r["deadline"],
        responsible=r["responsible"],
        status=Status(r["status"]),
        closed_at=r["closed_at"],
        evidence=r["evidence"],
        created_at=r["created_at"],
        created_by=r["created_by"],
        updated_at=r["updated_at"],
        updated_by=r["updated_by"],
        version=r["version"],
        timezone=r["timezone"] or DEFAULT_TZ,
    )


async def _place(
    conn: asyncpg.Connection, site_id: str, installation: str | None, equipment: str | None
) -> tuple[str, str | None, str | None]:
    """(enterprise id, installation, equipment) after checking they exist in the registered site."""
    enterprise = await conn.fetchval("SELECT enterprise_id FROM sites WHERE id = $1", site_id)
    if enterprise is None:
        raise FindingError(f"site: unknown site {site_id!r}")
    if equipment is not None:
        owner = await conn.fetchval(
            "SELECT installation_id FROM equipment WHERE site_id = $1 AND id = $2", site_id, equipment
        )
        if owner is None:
            raise FindingError(f"equipment: no equipment {equipment!r} at site {site_id!r}")
        if installation is not None and installation != owner:
            raise FindingError(f"equipment: {equipment!r} belongs to installation {owner!r}, not {installation!r}")
        installation = owner
    elif installation is not None:
        known = await conn.fetchval("SELECT 1 FROM installations WHERE site_id = $1 AND id = $2", site_id, installation)
        if known is None:
            raise FindingError(f"installation: no installation {installation!r} at site {site_id!r}")
    return str(enterprise), installation, equipment


def _audit_value(v: Any) -> Any:
    if isinstance(v, datetime):
        return _iso(v)
    if isinstance(v, date):
        return v.isoformat()
    if isinstance(v, StrEnum):
        return v.value
    return v


async def create_finding(
    conn: asyncpg.Connection, new: FindingIn, actor: Actor, *, now: datetime | None = None
) -> Finding:
    """Insert a finding and its audit entry, in one transaction."""
    now = now or datetime.now(UTC)
    found_at = new.found_at or now
    if found_at > now + FUTURE_SLACK:
        raise FindingError("found_at: lies in the future")
    async with conn.transaction():
        enterprise, installation, equipment = await _place(conn, new.site, new.installation, new.equipment)
        tz = await conn.fetchval("SELECT doc->'site'->>'timezone' FROM sites WHERE id = $1", new.site)
        if new.deadline < found_at.astimezone(_zone(tz or DEFAULT_TZ)).date():
            raise FindingError("deadline: lies before the day the hazard was found")
        fid = await conn.fetchval(
            "INSERT INTO hazard_findings (site_id, enterprise_id, installation_id, equipment_id, description, grade, "
            "found_at, found_by, corrective_action, deadline, responsible, created_by, updated_by, created_at, "
            "updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12, $13, $13) RETURNING id",
            new.site,
            enterprise,
            installation,
            equipment,
            new.description,
            new.grade.value,
            found_at,
            new.found_by,
            new.corrective_action,
            new.deadline,
            new.responsible,
            actor.name,
            now,
        )
        finding = await get_finding(conn, int(fid))
        detail = {k: _audit_value(v) for k, v in finding.as_dict(now).items() if k not in _NOT_AUDITED}
        await audit.append(
            conn,
            actor=actor.name,
            token_id=actor.token_id,
            role=actor.role,
            action="finding.create",
            target=f"finding:{finding.id}",
            site_id=finding.site_id,
            detail=detail,
        )
    return finding


_NOT_AUDITED = {"grade_zh", "status_zh", "overdue", "created_at", "updated_at", "updated_by", "created_by"}
_COLUMNS = {"installation": "installation_id", "equipment": "equipment_id"}


async def update_finding(
    conn: asyncpg.Connection, finding_id: int, patch: FindingPatch, actor: Actor, *, now: datetime | None = None
) -> Finding:
    """Apply a change and its audit entry (the old and new value of each changed field), in one transaction."""
    now = now or datetime.now(UTC)
    changes = patch.changes()
    async with conn.transaction():
        row = await conn.fetchrow(_SELECT + " WHERE f.id = $1 FOR UPDATE OF f", finding_id)
        if row is None:
            raise FindingNotFound(f"no finding {finding_id}")
        old = _finding(row)
        if patch.version is not None and patch.version != old.version:
            raise FindingConflict(
                f"finding {finding_id} was changed meanwhile (version {old.version}, not {patch.version}): reload it"
            )
        status = changes.get("status", old.status)
        if status is not old.status and status not in TRANSITIONS[old.status]:
            raise FindingConflict(f"status: a finding {old.status.value} cannot become {status.value}")
        if old.status is Status.CLOSED and status is Status.CLOSED and changes:
            raise FindingConflict("a closed finding cannot be changed; reopen it first (status: open)")
        if "equipment" in changes:
            _, inst, equip = await _place(conn, old.site_id, changes.get("installation"), changes["equipment"])
            changes["installation"], changes["equipment"] = inst, equip
        elif "installation" in changes:
            _, inst, _ = await _place(conn, old.site_id, changes["installation"], None)
            # equipment of another installation no longer applies
            changes["equipment"] = old.equipment_id if inst == old.installation_id else None
        if "deadline" in changes and changes["deadline"] < old.found_at.astimezone(_zone(old.timezone)).date():
            raise FindingError("deadline: lies before the day the hazard was found")
        if status is Status.CLOSED and old.status is not Status.CLOSED:
            changes["closed_at"] = now
        elif status is Status.OPEN and old.status is Status.CLOSED:
            changes["closed_at"] = None
        current = old.as_dict(now)
        diff: dict[str, list[Any]] = {}
        for key, value in changes.items():
            before = current.get(key) if key != "closed_at" else (_iso(old.closed_at) if old.closed_at else None)
            after = _audit_value(value)
            if before != after:
                diff[key] = [before, after]
        if not diff:
            return old
        sets, args = [], []
        for key in diff:
            args.append(changes[key].value if isinstance(changes[key], StrEnum) else changes[key])
            sets.append(f"{_COLUMNS.get(key, key)} = ${len(args)}")
        args += [actor.name, now, finding_id]
        n = len(args)
        await conn.execute(
            f"UPDATE hazard_findings SET {', '.join(sets)}, updated_by = ${n - 2}, updated_at = ${n - 1}, "
            f"version = version + 1 WHERE id = ${n}",
            *args,
        )
        await audit.append(
            conn,
            actor=actor.name,
            token_id=actor.token_id,
            role=actor.role,
            action="finding.update",
            target=f"finding:{finding_id}",
            site_id=old.site_id,
            detail={"changes": diff, "version": old.version + 1},
        )
        return await get_finding(conn, finding_id)


async def get_finding(conn: asyncpg.Connection, finding_id: int) -> Finding:
    row = await conn.fetchrow(_SELECT + " WHERE f.id = $1", finding_id)
    if row is None:
        raise FindingNotFound(f"no finding {finding_id}")
    return _finding(row)


async def list_findings(
    conn: asyncpg.Connection,
    *,
    site_ids: Iterable[str] | None = None,
    enterprise_id: str | None = None,
    status: Iterable[Status] | None = None,
    grade: Grade | None = None,
    limit: int | None = None,
    offset: int = 0,
) -> list[Finding]:
    """Findings, newest found first; ``site_ids`` None means every site."""
    rows = await conn.fetch(
        _SELECT + " WHERE ($1::text[] IS NULL OR f.site_id = ANY($1)) AND ($2::text IS NULL OR f.enterprise_id = $2) "
        "AND ($3::text[] IS NULL OR f.status = ANY($3)) AND ($4::text IS NULL OR f.grade = $4) "
        "ORDER BY f.found_at DESC, f.id DESC LIMIT $5 OFFSET $6",
        None if site_ids is None else sorted(site_ids),
        enterprise_id,
        None if status is None else [s.value for s in status],
        None if grade is None else grade.value,
        limit,
        offset,
    )
    return [_finding(r) for r in rows]


async def finding_history(conn: asyncpg.Connection, finding_id: int) -> list[dict[str, Any]]:
    """The audit-trail entries of one finding, oldest first."""
    rows = await conn.fetch(
        "SELECT seq, at, actor, role, action, detail, hash FROM audit_log WHERE target = $1 ORDER BY seq",
        f"finding:{finding_id}",
    )
    return [
        {
            "seq": r["seq"],
            "at": _iso(r["at"]),
            "actor": r["actor"],
            "role": r["role"],
            "action": r["action"],
            "detail": json.loads(r["detail"]),
            "hash": r["hash"],
        }
        for r in rows
    ]


async def findings_summary(
    conn: asyncpg.Connection,
    *,
    enterprise_id: str | None = None,
    site_ids: Iterable[str] | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    now: datetime | None = None,
) -> FindingsSummary:
    """Open, major and overdue findings and the median time to close, for one enterprise (or the given
    sites, or everything). With a period, the median covers the findings closed in [start, end).
    For the compliance report: ``(await findings_summary(conn, enterprise_id=...)).as_dict()``."""
    findings = await list_findings(conn, site_ids=site_ids, enterprise_id=enterprise_id)
    return summarize(findings, now or datetime.now(UTC), start, end)


async def summaries_by_enterprise(
    conn: asyncpg.Connection,
    *,
    site_ids: Iterable[str] | None = None,
    enterprise_id: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    """One summary per enterprise with findings on the given sites, with the per-site breakdown."""
    now = now or datetime.now(UTC)
    findings = await list_findings(conn, site_ids=site_ids, enterprise_id=enterprise_id)
    by_ent: dict[str, list[Finding]] = {}
    for f in findings:
        by_ent.setdefault(f.enterprise_id, []).append(f)
    out = []
    for ent in sorted(by_ent):
        fs = by_ent[ent]
        sites = sorted({f.site_id for f in fs})
        out.append(
            {
                "enterprise": ent,
                **summarize(fs, now, start, end).as_dict(),
                "sites": {s: summarize([f for f in fs if f.site_id == s], now, start, end).as_dict() for s in sites},
            }
        )
    return out
