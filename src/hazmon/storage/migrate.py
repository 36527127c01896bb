"""Schema migrations: numbered SQL files in `migrations/`, each applied once in its own transaction.

Applied versions are recorded in ``schema_version``; running ``migrate`` again changes nothing.
An advisory lock keeps two processes from migrating at once.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parents[3] / "migrations"
_NAME = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")
_LOCK_KEY = 0x6A7A6D6F6E  # "hazmon"


class MigrationError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    if not directory.is_dir():
        raise MigrationError(f"migrations directory not found: {directory}")
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        m = _NAME.match(path.name)
        if not m:
            raise MigrationError(f"{path.name}: migration files are named NNN_name.sql")
        version = int(m.group(1))
        if version in found:
            raise MigrationError(f"{path.name}: version {version} used twice")
        found[version] = Migration(version, m.group(2), path.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


async def migrate(conn: asyncpg.Connection, directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Apply the migrations not yet recorded; returns those applied (empty on a second run)."""
    migrations = discover(directory)
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_version (
                   version    integer PRIMARY KEY,
                   name       text NOT NULL,
                   checksum   text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        rows = await conn.fetch("SELECT version, checksum FROM schema_version")
        applied = {r["version"]: r["checksum"] for r in rows}
        done = []
        for mig in migrations:
            if mig.version in applied:
                if applied[mig.version] != mig.checksum:
                    log.warning("migration %03d_%s changed after it was applied", mig.version, mig.name)
                continue
            async with conn.transaction():
                try:
                    await conn.execute(mig.sql)
                except asyncpg.PostgresError as e:
                    raise MigrationError(f"{mig.version:03d}_{mig.name}.sql failed: {e}") from e
                await conn.execute(
                    "INSERT INTO schema_version (version, name, checksum) VALUES ($1, $2, $3)",
                    mig.version,
                    mig.name,
                    mig.checksum,
                )
            log.info("applied migration %03d_%s", mig.version, mig.name)
            done.append(mig)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
