"""`hazmon site check FILE` and `hazmon site load FILE`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from hazmon.commands import DATABASE_HELP
from hazmon.errors import InvalidFile
from hazmon.regulator.sitecheck import load_graded_site


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    site = sub.add_parser("site", help="check or load a site description").add_subparsers(
        dest="site_command", metavar="ACTION", required=True
    )
    check = site.add_parser(
        "check",
        help="validate site files; every error is listed with its path, missing required monitoring as warnings",
    )
    check.add_argument("files", nargs="+", type=Path, metavar="FILE")
    check.set_defaults(handler=_check)
    load = site.add_parser(
        "load", help="validate and upsert a site file into the database, in one transaction", epilog=DATABASE_HELP
    )
    load.add_argument("file", type=Path, metavar="FILE")
    load.set_defaults(handler=_load)


def _check(args: argparse.Namespace) -> int:
    failed = False
    for path in args.files:
        try:
            site, warnings = load_graded_site(path)
        except InvalidFile as e:
            failed = True
            print(e, file=sys.stderr)
            continue
        for w in warnings:
            print(f"{path}: warning: {w}", file=sys.stderr)
        print(
            f"{path}: ok — site {site.id}, {len(site.installations)} installations, "
            f"{len(site.equipment)} equipment, {len(site.tags)} tags"
        )
    return 1 if failed else 0


def _load(args: argparse.Namespace) -> int:
    from hazmon import startup
    from hazmon.audit import cli_actor
    from hazmon.config import load_settings
    from hazmon.storage.database import open_database

    site, warnings = load_graded_site(args.file)
    for w in warnings:
        print(f"{args.file}: warning: {w}", file=sys.stderr)
    settings = load_settings()
    config = startup.Configuration(sites=[site], site_files={site.id: args.file})

    async def run() -> None:
        # upserted with its audit row (who, which file, what changed) in one transaction
        async with open_database(settings) as db, db.pool.acquire() as conn:
            await startup.write(conn, config, actor=cli_actor(), setting="")
        print(f"{args.file}: loaded site {site.id}: {config.summaries[site.id]}")

    asyncio.run(run())
    return 0
