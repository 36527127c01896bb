"""What ``hazmon serve`` loads, as a whole: the site, the alarm rules and the gateway files are
validated completely first, and only then written, in one transaction (issue 11, item 11).

A start that fails on any of them leaves the database as it was. Every problem of every file is
reported at once, each with the file (or the setting that names it), as one ``StartupError``;
``hazmon serve`` prints it and exits with status 2 — no traceback.

The write upserts the site and appends a ``site.load`` row to the audit trail in the same
transaction, when the site differs from the one last loaded (a restart with the same file writes
nothing new to the trail).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from hazmon import audit
from hazmon.alarms.compiler import load_rules
from hazmon.alarms.rules import RuleSet
from hazmon.config import ConfigError
from hazmon.errors import InvalidFile
from hazmon.gateways.config import ModbusGateway, MqttGateway, OpcUaGateway, load_gateway_config
from hazmon.plant.site import Site
from hazmon.plant.tag import TagIndex
from hazmon.regulator.gb18218 import GradingError
from hazmon.regulator.sitecheck import load_graded_site
from hazmon.storage.registry import LoadSummary, tag_index, upsert_site

log = logging.getLogger(__name__)

GatewayConfig = OpcUaGateway | ModbusGateway | MqttGateway
ACTOR = "hazmon serve"


class StartupError(ConfigError):
    """The configuration cannot be loaded; the message names every file or setting at fault (a
    ConfigError: the command line prints it and exits with status 2)."""


@dataclass
class Configuration:
    """Everything a start needs from the files, validated; nothing written yet."""

    sites: list[Site] = field(default_factory=list)
    site_files: dict[str, Path] = field(default_factory=dict)  # site id -> file
    warnings: list[str] = field(default_factory=list)
    rules: RuleSet | None = None
    gateways: list[GatewayConfig] = field(default_factory=list)
    summaries: dict[str, str] = field(default_factory=dict)  # site id -> what the write changed


def _describe(setting: str, error: Exception) -> str:
    if isinstance(error, InvalidFile):
        return f"{setting}: {error}"
    if isinstance(error, OSError):
        return f"{setting}: {error.strerror or error}: {getattr(error, 'filename', '') or ''}".rstrip(": ")
    return f"{setting}: {error}"


def validate(
    site: Path | None,
    rules: Sequence[Path],
    gateways: Sequence[Path],
    *,
    gateway_configs: Sequence[GatewayConfig] | None,
    more_sites: Sequence[Path] = (),
) -> Configuration:
    """Read and check every file; raises StartupError listing every failure (nothing is written).
    ``more_sites``: the site files of ``HAZMON_SITES`` (one process serving several sites, e.g. a regulator's)."""
    out = Configuration()
    failures: list[str] = []
    files = ([("HAZMON_SITE", site)] if site is not None else []) + [("HAZMON_SITES", p) for p in more_sites]
    for setting, path in files:
        try:
            loaded, warnings = load_graded_site(path)
        except (InvalidFile, GradingError, OSError) as e:
            failures.append(_describe(f"{setting} ({path})", e))
        else:
            if loaded.id in out.site_files:
                failures.append(f"{setting} ({path}): site id {loaded.id!r} is also in {out.site_files[loaded.id]}")
                continue
            out.sites.append(loaded)
            out.site_files[loaded.id] = path
            out.warnings += [f"{path}: {w}" for w in warnings]
    if rules and not failures:  # rules are checked against the site's tags: only once the site is good
        try:
            out.rules = load_rules(rules, out.sites)
        except (InvalidFile, OSError) as e:
            failures.append(_describe("HAZMON_RULES", e))
    if gateway_configs is not None:
        out.gateways = list(gateway_configs)
    else:
        by_id = {s.id: s for s in out.sites}
        for path in gateways:
            try:
                config = load_gateway_config(path)
                out.gateways.append(load_gateway_config(path, by_id.get(config.site)))
            except (InvalidFile, OSError) as e:
                failures.append(_describe(f"HAZMON_GATEWAYS ({path})", e))
        seen: dict[str, int] = {}
        for g in out.gateways:
            seen[g.id] = seen.get(g.id, 0) + 1
        failures += [f"HAZMON_GATEWAYS: gateway id {gid!r} is used by {n} files" for gid, n in seen.items() if n > 1]
    if failures:
        raise StartupError("the configuration cannot be loaded; nothing was changed:\n" + "\n".join(failures))
    return out


def fingerprint(site: Site) -> str:
    """A digest of the whole site description: equal for equal files."""
    text = json.dumps(site.model_dump(mode="json", by_alias=True), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


async def audit_site_load(
    conn: asyncpg.Connection,
    site: Site,
    digest: str,
    summary: LoadSummary,
    *,
    actor: str,
    source: dict[str, str],
) -> None:
    """Append ``site.load`` to the audit trail, in the caller's transaction, once per change: a site
    loaded again unchanged (a restart, base data sent at every start) is not audited again."""
    last = await conn.fetchval(
        "SELECT detail FROM audit_log WHERE action = 'site.load' AND target = $1 ORDER BY seq DESC LIMIT 1",
        site.id,
    )
    if last is None or json.loads(last).get("sha256") != digest:
        detail = {**source, "sha256": digest, "summary": str(summary)}
        await audit.append(conn, actor=actor, action="site.load", target=site.id, site_id=site.id, detail=detail)


async def write(
    conn: asyncpg.Connection, config: Configuration, *, actor: str = ACTOR, setting: str = "HAZMON_SITE"
) -> TagIndex:
    """Upsert the sites and audit the change, in one transaction; returns the tag index after it.
    A site that cannot be graded rolls everything back and is a StartupError naming ``setting`` and
    the file. (Tag ids are unique within their site only: another site's tag of the same id is no
    refusal.)"""
    async with conn.transaction():
        for site in config.sites:
            digest = fingerprint(site)
            try:
                summary = await upsert_site(conn, site)
            except GradingError as e:
                where = str(config.site_files.get(site.id, site.id))
                raise StartupError(
                    f"{setting} ({where}): {e}; nothing was changed"
                    if setting
                    else f"{where}: {e}; nothing was changed"
                ) from None
            source = {"file": str(config.site_files.get(site.id, ""))}
            await audit_site_load(conn, site, digest, summary, actor=actor, source=source)
            config.summaries[site.id] = str(summary)
            log.info("site %s loaded: %s", site.id, summary)
        return await tag_index(conn)
