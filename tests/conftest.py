"""Shared fixtures: real PostgreSQL 15 and TimescaleDB databases, created fresh and migrated.

PostgreSQL runs on 127.0.0.1:5432 on every machine of this kind; TimescaleDB is provisioned by
deploy/timescaledb.sh (`make test` runs it and passes its URL in HAZMON_TEST_TSDB_URL).
Under CI=true a missing service fails the run instead of skipping.
"""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from hazmon.storage.migrate import migrate

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = os.environ.get("HAZMON_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
IN_CI = os.environ.get("CI", "").lower() == "true"


def _missing(what: str) -> None:
    if IN_CI:
        pytest.fail(f"{what} is not available, and CI=true forbids skipping")
    pytest.skip(f"{what} is not available")


def _tsdb_admin_url() -> str | None:
    url = os.environ.get("HAZMON_TEST_TSDB_URL")
    if url:
        return url
    try:
        out = subprocess.run(
            ["bash", str(ROOT / "deploy" / "timescaledb.sh"), "status"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    url = subprocess.run(
        ["bash", str(ROOT / "deploy" / "timescaledb.sh"), "url"], capture_output=True, text=True, timeout=20
    ).stdout.strip()
    return url or None


def _with_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


async def create_database(admin_url: str, *, migrated: bool = True) -> str:
    name = f"hazmon_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = _with_database(admin_url, name)
    if migrated:
        conn = await asyncpg.connect(url)
        try:
            await migrate(conn)
        finally:
            await conn.close()
    return url


async def drop_database(admin_url: str, url: str) -> None:
    name = url.rpartition("/")[2]
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def _server_up(url: str) -> bool:
    """Whether the server in ``url`` accepts TCP connections (sync: usable from sync fixtures)."""
    parsed = urlsplit(url)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 5432), timeout=5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    if not _server_up(PG_ADMIN_URL):
        _missing(f"PostgreSQL at {PG_ADMIN_URL}")
    return PG_ADMIN_URL


@pytest.fixture(scope="session")
def tsdb_admin_url() -> str:
    url = _tsdb_admin_url()
    if url is None or not _server_up(url):
        _missing("TimescaleDB (run `bash deploy/timescaledb.sh`)")
    assert url is not None
    return url


@pytest.fixture
async def pg_url(pg_admin_url: str) -> AsyncIterator[str]:
    """A fresh database on PostgreSQL 15 with every migration applied."""
    url = await create_database(pg_admin_url)
    yield url
    await drop_database(pg_admin_url, url)


@pytest.fixture
async def tsdb_url(tsdb_admin_url: str) -> AsyncIterator[str]:
    """A fresh database on TimescaleDB with every migration applied."""
    url = await create_database(tsdb_admin_url)
    yield url
    await drop_database(tsdb_admin_url, url)


@pytest.fixture(params=["postgresql", "timescaledb"])
async def db_url(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """A fresh migrated database, once on plain PostgreSQL and once on TimescaleDB."""
    fixture = "pg_admin_url" if request.param == "postgresql" else "tsdb_admin_url"
    admin_url: str = request.getfixturevalue(fixture)
    url = await create_database(admin_url)
    yield url
    await drop_database(admin_url, url)


NATS_URL = os.environ.get("HAZMON_TEST_NATS_URL", "nats://127.0.0.1:4222")


@pytest.fixture
async def namespace() -> AsyncIterator[str]:
    """A private namespace (subjects and streams) on the real NATS JetStream server, deleted afterwards."""
    from hazmon.cluster.bus import Bus

    ns = f"t{uuid.uuid4().hex[:10]}"
    try:
        bus = await Bus.connect(NATS_URL, ns, connect_timeout=3)
    except Exception as e:  # any failure to reach the server
        _missing(f"NATS JetStream at {NATS_URL} ({e})")
    try:
        yield ns
    finally:
        await bus.delete_streams()
        await bus.close()
