"""API tokens, roles and scopes.

A token is ``hzm_<id>_<secret>``: ``id`` is 12 hex characters that name the token in lists and
revocation, ``secret`` is 32 random bytes (URL-safe base64). It is shown once, when created; the
database keeps only the SHA-256 of the whole string (a high-entropy secret needs no slow hash).

Roles and what they may do (``PERMISSIONS``):

=========  ====================================================================
operator   read, and act on alarms (ack, reset, shelve, comment, out of service)
engineer   read, change configuration (load a site), see system status (metrics)
regulator  read only
admin      everything, everywhere, including token management
=========  ====================================================================

Every role but admin is scoped: a token lists sites and/or enterprises, and it sees the listed
sites plus every site of the listed enterprises (resolved when the token is used, so a site
added to an enterprise later is covered). A regulator token may instead (or also) cover regions:
administrative-division code prefixes (``32`` a province, ``3205`` a city, ``320506`` a county), matched
against characters 3–8 of each enterprise's unified social credit code; it sees every site of every
enterprise registered there, also one registered after the token was made.

Verification goes through a :class:`TokenCache`: a token checked less than ``TOKEN_TTL_S`` ago is
not looked up again (so a revocation takes effect within that time), and a token seen before keeps
working while the database is unreachable — operators keep their alarm list through an outage.
:class:`AuthThrottle` counts failed authentications per client address and refuses further
attempts (HTTP 429) once an address has used up its allowance.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
import secrets
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

import asyncpg

TOKEN_PREFIX = "hzm_"
_TOKEN_RE = re.compile(r"^hzm_([0-9a-f]{12})_([A-Za-z0-9_\-]{43})$")
TOKEN_TTL_S = 2.0  # a revocation takes effect within this (plus one lookup) while the database is up
DEMO_TOKEN_NAME = "demo-operator"


class Role(StrEnum):
    OPERATOR = "operator"
    ENGINEER = "engineer"
    REGULATOR = "regulator"
    ADMIN = "admin"


class Permission(StrEnum):
    READ = "read"  # alarms, journal, KPIs, tags, series, export, live push, gateways
    OPERATE = "operate"  # alarm actions
    CONFIGURE = "configure"  # site and rule configuration
    SYSTEM = "system"  # process-wide status: /metrics
    ADMIN = "admin"  # tokens, audit trail


PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.OPERATOR: frozenset({Permission.READ, Permission.OPERATE}),
    Role.ENGINEER: frozenset({Permission.READ, Permission.CONFIGURE, Permission.SYSTEM}),
    Role.REGULATOR: frozenset({Permission.READ}),
    Role.ADMIN: frozenset(Permission),
}


class AuthError(Exception):
    """A token operation was refused (bad arguments, unknown or ambiguous token)."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token's identity, role and the sites it may see."""

    token_id: str
    name: str
    role: Role
    sites: frozenset[str] = frozenset()
    enterprises: frozenset[str] = frozenset()
    scope: frozenset[str] = field(default=frozenset())  # resolved site ids (listed + of listed enterprises)
    regions: frozenset[str] = frozenset()  # division-code prefixes (regulators); their sites are in scope

    @property
    def unrestricted(self) -> bool:
        return self.role is Role.ADMIN

    def may(self, permission: Permission) -> bool:
        return permission in PERMISSIONS[self.role]

    def sees(self, site_id: str | None) -> bool:
        """Whether this token may see ``site_id`` (None: something that belongs to no site)."""
        if self.unrestricted:
            return True
        return site_id is not None and site_id in self.scope

    def covers(self, site_id: str, enterprise_id: str | None) -> bool:
        """Like ``sees``, for a site that may not be registered yet (configuration)."""
        return (
            self.sees(site_id)
            or site_id in self.sites
            or (enterprise_id is not None and enterprise_id in self.enterprises)
        )

    @property
    def label(self) -> str:
        """The user name recorded in the alarm journal and the audit trail."""
        return self.name


@dataclass(frozen=True, slots=True)
class TokenInfo:
    id: str
    name: str
    role: Role
    sites: list[str]
    enterprises: list[str]
    created_at: datetime
    created_by: str
    revoked_at: datetime | None
    regions: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "role": self.role.value,
            "sites": self.sites,
            "enterprises": self.enterprises,
            "regions": self.regions,
            "created_at": self.created_at.isoformat(),
            "created_by": self.created_by,
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }


@dataclass(frozen=True, slots=True)
class NewToken:
    info: TokenInfo
    secret: str  # the whole token string; shown once


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def generate_token() -> tuple[str, str]:
    """A fresh (id, token string)."""
    token_id = secrets.token_hex(6)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    return token_id, f"{TOKEN_PREFIX}{token_id}_{secret}"


def looks_like_token(text: str) -> bool:
    return _TOKEN_RE.match(text) is not None


def _info(r: asyncpg.Record) -> TokenInfo:
    return TokenInfo(
        id=r["id"],
        name=r["name"],
        role=Role(r["role"]),
        sites=list(r["sites"]),
        enterprises=list(r["enterprises"]),
        created_at=r["created_at"],
        created_by=r["created_by"],
        revoked_at=r["revoked_at"],
        regions=list(r["regions"]),
    )


REGION_RE = re.compile(r"^\d{2,6}$")


def _regions(values: Iterable[str]) -> list[str]:
    out = _clean(values, "--region")
    for v in out:
        if not REGION_RE.match(v):
            raise AuthError(
                f"--region {v!r}: give an administrative-division code prefix, 2 to 6 digits "
                "(characters 3-8 of a USCC: 32 a province, 3205 a city, 320506 a county)"
            )
    return out


def _clean(values: Iterable[str], what: str) -> list[str]:
    out: list[str] = []
    for v in values:
        v = v.strip()
        if not v:
            raise AuthError(f"{what}: empty id")
        if v not in out:
            out.append(v)
    return out


async def create_token(
    conn: asyncpg.Connection,
    role: Role | str,
    *,
    sites: Iterable[str] = (),
    enterprises: Iterable[str] = (),
    name: str | None = None,
    created_by: str = "cli",
    regions: Iterable[str] = (),
) -> NewToken:
    """Create a token; its secret is in the result and nowhere else."""
    try:
        role = Role(role)
    except ValueError:
        raise AuthError(f"unknown role {role!r}: use one of {', '.join(r.value for r in Role)}") from None
    site_list, ent_list = _clean(sites, "--site"), _clean(enterprises, "--enterprise")
    region_list = _regions(regions)
    if region_list and role is not Role.REGULATOR:
        raise AuthError(f"--region is for regulator tokens; a {role.value} token lists --site or --enterprise")
    if role is not Role.ADMIN and not site_list and not ent_list and not region_list:
        raise AuthError(f"a {role.value} token needs at least one --site or --enterprise (its scope)")
    token_id, secret = generate_token()
    row = await conn.fetchrow(
        "INSERT INTO api_tokens (id, name, role, sites, enterprises, secret_sha256, created_by, regions) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING *",
        token_id,
        name or f"{role.value}-{token_id[:6]}",
        role.value,
        site_list,
        ent_list,
        hash_token(secret),
        created_by,
        region_list,
    )
    return NewToken(_info(row), secret)


async def list_tokens(conn: asyncpg.Connection, *, include_revoked: bool = True) -> list[TokenInfo]:
    rows = await conn.fetch(
        "SELECT * FROM api_tokens WHERE $1 OR revoked_at IS NULL ORDER BY created_at, id", include_revoked
    )
    return [_info(r) for r in rows]


async def find_token(conn: asyncpg.Connection, id_or_prefix: str) -> TokenInfo:
    """The one token whose id starts with ``id_or_prefix`` (a whole token string also works)."""
    text = id_or_prefix.strip()
    m = _TOKEN_RE.match(text)
    if m:
        text = m.group(1)
    elif text.startswith(TOKEN_PREFIX):
        text = text[len(TOKEN_PREFIX) :].split("_", 1)[0]
    if len(text) < 4 or not re.fullmatch(r"[0-9a-f]+", text):
        raise AuthError(f"{id_or_prefix!r}: give a token id (or at least its first 4 hex characters)")
    rows = await conn.fetch("SELECT * FROM api_tokens WHERE id LIKE $1 || '%' ORDER BY id", text)
    if not rows:
        raise AuthError(f"no token with id {text}…")
    if len(rows) > 1:
        raise AuthError(f"{text}… is ambiguous: {', '.join(r['id'] for r in rows)}")
    return _info(rows[0])


async def revoke_token(conn: asyncpg.Connection, id_or_prefix: str) -> TokenInfo:
    """Revoke a token (at once: every request looks the token up). Revoking twice is harmless."""
    info = await find_token(conn, id_or_prefix)
    row = await conn.fetchrow(
        "UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1 RETURNING *", info.id
    )
    return _info(row)


_AUTH_SQL = (
    "SELECT t.id, t.name, t.role, t.sites, t.enterprises, t.regions, "
    "ARRAY(SELECT s.id FROM sites s JOIN enterprises e ON e.id = s.enterprise_id "
    "WHERE s.id = ANY(t.sites) OR s.enterprise_id = ANY(t.enterprises) "
    # characters 3-8 of the USCC are the enterprise's administrative-division code
    "OR EXISTS (SELECT 1 FROM unnest(t.regions) AS r(code) WHERE substr(e.uscc, 3, 6) LIKE r.code || '%')) AS scope "
    "FROM api_tokens t WHERE t.secret_sha256 = $1 AND t.revoked_at IS NULL"
)


async def authenticate(conn: asyncpg.Connection, token: str) -> Principal | None:
    """The principal a token stands for, or None when it is unknown, malformed or revoked."""
    if not looks_like_token(token):
        return None
    r = await conn.fetchrow(_AUTH_SQL, hash_token(token))
    if r is None:
        return None
    return Principal(
        token_id=r["id"],
        name=r["name"],
        role=Role(r["role"]),
        sites=frozenset(r["sites"]),
        enterprises=frozenset(r["enterprises"]),
        scope=frozenset(r["scope"]) | frozenset(r["sites"]),
        regions=frozenset(r["regions"]),
    )


async def ensure_demo_token(conn: asyncpg.Connection, site_id: str = "demo-tank-farm") -> str:
    """(Re-)create the demo's operator token for ``site_id`` and return its secret.

    Any earlier demo token is revoked, so the token the demo prints is the only one that works.
    """
    async with conn.transaction():
        await conn.execute(
            "UPDATE api_tokens SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL", DEMO_TOKEN_NAME
        )
        new = await create_token(conn, Role.OPERATOR, sites=[site_id], name=DEMO_TOKEN_NAME, created_by="demo")
    return new.secret


def token_label(token: str | None) -> str:
    """How a token is named in logs: its public id, never its secret."""
    if not token:
        return "no token"
    m = _TOKEN_RE.match(token)
    if m:
        return f"token {m.group(1)}"
    return "a malformed token"


# ---------------------------------------------------------------------- verification cache


@dataclass(slots=True)
class _Checked:
    principal: Principal | None  # None: unknown or revoked
    at: float  # time.monotonic() of the database lookup


class TokenCache:
    """Results of token lookups by the token's SHA-256: fresh for ``ttl_s``, kept (bounded) beyond
    that to answer while the database is unreachable."""

    def __init__(self, ttl_s: float = TOKEN_TTL_S, max_entries: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: dict[bytes, _Checked] = {}
        self.served_stale = 0  # answers given from the cache because the database was unreachable

    def get(self, key: bytes, max_age_s: float | None = None) -> tuple[Principal | None, bool] | None:
        """(principal, fresh) for a token looked up before, or None; fresh: looked up less than
        ``max_age_s`` (default ``ttl_s``) ago."""
        hit = self._entries.get(key)
        if hit is None:
            return None
        return hit.principal, time.monotonic() - hit.at < (self.ttl_s if max_age_s is None else max_age_s)

    def put(self, key: bytes, principal: Principal | None) -> None:
        self._entries.pop(key, None)
        if len(self._entries) >= self.max_entries:
            self._entries.pop(next(iter(self._entries)))  # the oldest lookup
        self._entries[key] = _Checked(principal, time.monotonic())

    def forget(self, token_id: str) -> None:
        """Drop a token (revoked in this process): the next use looks it up again."""
        for key in [k for k, v in self._entries.items() if v.principal and v.principal.token_id == token_id]:
            del self._entries[key]

    def stale(self, key: bytes) -> Principal | None:
        """The principal a token stood for when last looked up, however long ago (database unreachable)."""
        hit = self._entries.get(key)
        if hit is None or hit.principal is None:
            return None
        self.served_stale += 1
        return hit.principal


# ---------------------------------------------------------------------- throttling failures


class AuthThrottle:
    """Failed authentications per client address, as a token bucket: ``burst`` failures at once, then
    one more every ``1 / refill_per_s`` seconds. An address without allowance left is refused (429)
    before its token is even looked at. Bounded: at most ``max_addresses`` addresses are tracked."""

    def __init__(self, burst: int = 10, refill_per_s: float = 0.2, max_addresses: int = 100_000) -> None:
        self.burst = burst
        self.refill_per_s = refill_per_s
        self.max_addresses = max_addresses
        self._buckets: dict[str, tuple[float, float]] = {}  # address -> (allowance, at)
        self.rejections: Counter[str] = Counter()  # reason -> count (missing, malformed, invalid, throttled)

    def _allowance(self, address: str, now: float) -> float:
        allowance, at = self._buckets.get(address, (float(self.burst), now))
        return min(float(self.burst), allowance + (now - at) * self.refill_per_s)

    def retry_after(self, address: str) -> float | None:
        """Seconds until ``address`` may try again, or None when it may try now."""
        if address not in self._buckets:
            return None
        allowance = self._allowance(address, time.monotonic())
        if allowance >= 1.0:
            return None
        return (1.0 - allowance) / self.refill_per_s

    def failed(self, address: str, reason: str) -> None:
        """Count one failure of ``address`` (``reason``: missing, malformed, invalid)."""
        now = time.monotonic()
        self.rejections[reason] += 1
        allowance = self._allowance(address, now) - 1.0
        self._buckets.pop(address, None)
        if len(self._buckets) >= self.max_addresses:
            self._prune(now)
        self._buckets[address] = (allowance, now)

    def throttled(self) -> None:
        self.rejections["throttled"] += 1

    def _prune(self, now: float) -> None:
        full = [a for a in self._buckets if self._allowance(a, now) >= self.burst]
        for a in full:
            del self._buckets[a]
        while len(self._buckets) >= self.max_addresses:
            self._buckets.pop(next(iter(self._buckets)))


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
