"""The audit trail: who did what, in an append-only, hash-chained table.

Row ``n`` stores ``hash = sha256(prev_hash + "\\n" + canonical(row n))`` where ``prev_hash`` is row
``n-1``'s hash (64 zeros for row 1) and ``canonical`` is a fixed JSON rendering of seq, time (µs),
actor, token, role, action, target, site and detail. ``audit_head`` holds the last seq and hash.
``verify`` walks the log in order and reports the first row that breaks the chain:

- **edited**: the row's stored hash does not match its content;
- **inserted**: rows past the end recorded in ``audit_head`` (or rows without any head);
- **deleted**: the seq jumps (a row is missing), or the log ends before ``audit_head`` says it does;
- a row that no longer chains onto its predecessor was rewritten with a recomputed hash;
- an **empty** log: migration 041 writes a genesis row (seq 1, action ``audit.genesis``) when the
  database is created, so a log with no rows at all had them deleted, head and genesis included.

Someone who recomputes the whole chain and the head defeats any unkeyed chain: anchor the head
(``hazmon audit verify`` prints it; ``--anchor SEQ:HASH`` checks a recorded one) outside the database.

Appends take a transaction-scoped advisory lock, so concurrent writers build one chain.
"""

from __future__ import annotations

import getpass
import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

GENESIS = "0" * 64
GENESIS_ACTION = "audit.genesis"  # row 1 of every log created since migrations/041_audit_genesis.sql
_LOCK_KEY = 0x6A7A6D61756474  # "hzmaudt"


@dataclass(frozen=True, slots=True)
class AuditRecord:
    seq: int
    at: datetime
    actor: str
    token_id: str | None
    role: str | None
    action: str
    target: str | None
    site_id: str | None
    detail: str  # canonical JSON
    prev_hash: str
    hash: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": self.at.isoformat(),
            "actor": self.actor,
            "token_id": self.token_id,
            "role": self.role,
            "action": self.action,
            "target": self.target,
            "site": self.site_id,
            "detail": json.loads(self.detail),
            "hash": self.hash,
        }


@dataclass(frozen=True, slots=True)
class Finding:
    seq: int | None  # the row at fault (for a deletion: the first missing seq)
    kind: str  # edited | inserted | deleted
    message: str


@dataclass(frozen=True, slots=True)
class VerifyResult:
    rows: int
    head_seq: int
    finding: Finding | None

    @property
    def ok(self) -> bool:
        return self.finding is None


def cli_actor() -> str:
    """Who runs a command-line change, as the audit trail records it: ``cli:<login name>``."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def canonical_detail(detail: dict[str, Any] | None) -> str:
    return json.dumps(detail or {}, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _micros(t: datetime) -> int:
    delta = t - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def row_hash(
    prev_hash: str,
    seq: int,
    at: datetime,
    actor: str,
    token_id: str | None,
    role: str | None,
    action: str,
    target: str | None,
    site_id: str | None,
    detail: str,
) -> str:
    body = json.dumps(
        [seq, _micros(at), actor, token_id, role, action, target, site_id, detail],
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(f"{prev_hash}\n{body}".encode()).hexdigest()


def _record_hash(r: asyncpg.Record | AuditRecord) -> str:
    get = r.__getitem__ if isinstance(r, asyncpg.Record) else lambda k: getattr(r, k)
    return row_hash(
        get("prev_hash"),
        get("seq"),
        get("at"),
        get("actor"),
        get("token_id"),
        get("role"),
        get("action"),
        get("target"),
        get("site_id"),
        get("detail"),
    )


async def append(
    conn: asyncpg.Connection,
    *,
    actor: str,
    action: str,
    target: str | None = None,
    site_id: str | None = None,
    detail: dict[str, Any] | None = None,
    token_id: str | None = None,
    role: str | None = None,
) -> AuditRecord:
    """Append one entry (in its own transaction, or in the caller's)."""
    text = canonical_detail(detail)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        head = await conn.fetchrow("SELECT seq, hash FROM audit_head")
        seq, prev = (head["seq"] + 1, head["hash"]) if head else (1, GENESIS)
        # Microsecond precision, the precision the database keeps, so the hash survives the round trip.
        at = datetime.now(UTC)
        h = row_hash(prev, seq, at, actor, token_id, role, action, target, site_id, text)
        await conn.execute(
            "INSERT INTO audit_log (seq, at, actor, token_id, role, action, target, site_id, detail, prev_hash, hash) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            seq,
            at,
            actor,
            token_id,
            role,
            action,
            target,
            site_id,
            text,
            prev,
            h,
        )
        await conn.execute(
            "INSERT INTO audit_head (id, seq, hash) VALUES (true, $1, $2) "
            "ON CONFLICT (id) DO UPDATE SET seq = EXCLUDED.seq, hash = EXCLUDED.hash",
            seq,
            h,
        )
    return AuditRecord(seq, at, actor, token_id, role, action, target, site_id, text, prev, h)


def _record(r: asyncpg.Record) -> AuditRecord:
    return AuditRecord(
        r["seq"],
        r["at"],
        r["actor"],
        r["token_id"],
        r["role"],
        r["action"],
        r["target"],
        r["site_id"],
        r["detail"],
        r["prev_hash"],
        r["hash"],
    )


async def recent(
    conn: asyncpg.Connection, *, limit: int = 100, before_seq: int | None = None, site_id: str | None = None
) -> list[AuditRecord]:
    rows = await conn.fetch(
        "SELECT * FROM audit_log WHERE ($1::bigint IS NULL OR seq < $1) AND ($2::text IS NULL OR site_id = $2) "
        "ORDER BY seq DESC LIMIT $3",
        before_seq,
        site_id,
        limit,
    )
    return [_record(r) for r in rows]


async def verify(conn: asyncpg.Connection, *, chunk: int = 5_000) -> VerifyResult:
    """Walk the whole log in seq order; report the first row that was edited, inserted or deleted."""
    head = await conn.fetchrow("SELECT seq, hash FROM audit_head")
    head_seq = int(head["seq"]) if head else 0
    prev_seq, prev_hash, rows = 0, GENESIS, 0

    def result(seq: int | None, kind: str, message: str) -> VerifyResult:
        return VerifyResult(rows, head_seq, Finding(seq, kind, message))

    while True:
        batch = await conn.fetch("SELECT * FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2", prev_seq, chunk)
        for r in batch:
            rows += 1
            seq = int(r["seq"])
            if seq > prev_seq + 1:
                missing = f"seq {prev_seq + 1}" if seq == prev_seq + 2 else f"seq {prev_seq + 1}..{seq - 1}"
                return result(
                    prev_seq + 1, "deleted", f"{missing} deleted (the log jumps from seq {prev_seq} to {seq})"
                )
            if _record_hash(r) != r["hash"]:
                return result(seq, "edited", f"seq {seq} edited: its content does not match its hash")
            if r["prev_hash"] != prev_hash:
                return result(
                    seq,
                    "edited",
                    f"seq {seq} does not chain onto seq {prev_seq}: one of them was rewritten with a recomputed hash",
                )
            prev_seq, prev_hash = seq, r["hash"]
        if len(batch) < chunk:
            break
    if head is None:
        if rows:
            return result(1, "inserted", "rows present but no head recorded: rows were inserted by hand")
        return result(
            1,
            "deleted",
            "the audit trail is empty: every row was deleted, its head and the genesis row written when the "
            "database was created included",
        )
    if prev_seq < head_seq:
        missing = f"seq {head_seq}" if prev_seq + 1 == head_seq else f"seq {prev_seq + 1}..{head_seq}"
        return result(
            prev_seq + 1, "deleted", f"{missing} deleted (the log ends at seq {prev_seq}, its head at {head_seq})"
        )
    if prev_seq > head_seq:
        return result(head_seq + 1, "inserted", f"seq {head_seq + 1} inserted after the recorded end of the log")
    if prev_hash != head["hash"]:
        return result(prev_seq, "edited", f"seq {prev_seq} rewritten: its hash differs from the one recorded at append")
    return VerifyResult(rows, head_seq, None)


async def hash_at(conn: asyncpg.Connection, seq: int) -> str | None:
    """The stored hash of row ``seq`` (to compare with an anchor recorded outside the database)."""
    value = await conn.fetchval("SELECT hash FROM audit_log WHERE seq = $1", seq)
    return str(value) if value is not None else None
