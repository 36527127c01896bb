"""The sites an api instance serves beyond its own files: those the hub registers from enterprise uplinks.

A regulator's hub writes every connected enterprise's site into the registry (``hazmon.storage.registry``)
as its base data arrive. ``SiteFollower`` reads the registry every ``interval_s`` and gives the api
instance each site it does not have yet, or whose registration changed: the site model (scopes, places,
the console's plant and the compliance view), its tags' references and keys (values and series), and its
time zone. Sites of the instance's own files are its own and are not replaced from the registry.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

from hazmon.errors import InvalidFile
from hazmon.live import set_site_timezone
from hazmon.plant.site import Site
from hazmon.plant.tag import tag_ref
from hazmon.runtime import Runtime
from hazmon.storage.registry import registered_site, tag_index

log = logging.getLogger("hazmon.cluster")

INTERVAL_S = 5.0


class SiteFollower:
    def __init__(self, runtime: Runtime, own: frozenset[str], interval_s: float = INTERVAL_S) -> None:
        self.runtime = runtime
        self.own = own  # the sites of the instance's files
        self.interval_s = interval_s
        self._seen: dict[str, datetime] = {}  # registry site id -> its updated_at when last taken
        self.unreadable: dict[str, str] = {}  # site id -> why its registration could not be read

    async def refresh(self) -> list[str]:
        """Take the sites registered or changed since the last call; returns their ids."""
        rt = self.runtime
        async with rt.db.pool.acquire() as conn:
            rows = await conn.fetch("SELECT id, updated_at FROM sites ORDER BY id")
            fresh = [r for r in rows if r["id"] not in self.own and self._seen.get(r["id"]) != r["updated_at"]]
            if not fresh:
                return []
            sites: list[Site] = []
            for r in fresh:
                try:
                    site = await registered_site(conn, r["id"])
                except InvalidFile as e:  # written by an older hazmon, or by hand: said, and left out
                    if self.unreadable.get(r["id"]) != str(e):
                        log.error("api: site %s in the registry cannot be read: %s", r["id"], e)
                    self.unreadable[r["id"]] = str(e)
                    self._seen[r["id"]] = r["updated_at"]
                    continue
                self._seen[r["id"]] = r["updated_at"]
                self.unreadable.pop(r["id"], None)
                if site is not None:
                    sites.append(site)
            tags = await tag_index(conn)
        # one synchronous step: the routes never see a site without its tags
        by_id = {s.id: s for s in sites}
        rt.sites[:] = [by_id.pop(s.id, s) for s in rt.sites] + list(by_id.values())
        rt.tags = tags
        for site in sites:
            rt.site_of.update({tag_ref(site.id, t.id): site.id for t in site.tags})
            set_site_timezone(site.id, site.site.timezone)
        if sites:
            log.info("api: %d site(s) from the registry: %s", len(sites), ", ".join(s.id for s in sites))
        return [s.id for s in sites]

    async def run(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self.interval_s)
