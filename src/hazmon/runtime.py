"""The runtime: the one module that wires database, store, site registry, (later) gateways,
rule engine and live hub together. The API talks to a Runtime and to nothing else."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from hazmon.config import Settings
from hazmon.db import Database, open_database
from hazmon.maintenance import Maintenance
from hazmon.registry import tag_index, upsert_site
from hazmon.site import Site, load_site
from hazmon.store import ReadingStore
from hazmon.tag import TagIndex

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    db: Database
    store: ReadingStore
    sites: list[Site] = field(default_factory=list)
    tags: TagIndex = field(default_factory=lambda: TagIndex([]))
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def refresh_tags(self) -> None:
        async with self.db.pool.acquire() as conn:
            self.tags = await tag_index(conn)


@asynccontextmanager
async def run_runtime(settings: Settings) -> AsyncIterator[Runtime]:
    """Start everything the settings describe; stop it all, in reverse order, on exit."""
    async with open_database(settings) as db:
        runtime = Runtime(settings, db, ReadingStore(db.pool, db.caps))
        if settings.site is not None:
            site = load_site(settings.site)
            async with db.pool.acquire() as conn:
                summary = await upsert_site(conn, site)
            log.info("site %s loaded: %s", site.id, summary)
            runtime.sites.append(site)
        await runtime.refresh_tags()
        maintenance = Maintenance(db, retention_days=settings.retention_days, interval_s=settings.rollup_interval_s)
        runtime.tasks.append(asyncio.create_task(maintenance.run(), name="maintenance"))
        try:
            yield runtime
        finally:
            for task in runtime.tasks:
                task.cancel()
            for task in runtime.tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
