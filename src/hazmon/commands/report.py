"""`hazmon report compliance --enterprise ID --from … --to … -o FILE`: the dated compliance report of an
enterprise, as a regulator files it (PDF, HTML, CSV or JSON; Chinese by default, English on request),
computed from the database alone: the sites as registered, the store, the alarm journal, the findings
and the audit trail."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hazmon.commands import DATABASE_HELP

_AGO = re.compile(r"^(\d+(?:\.\d+)?)(s|min|m|h|d|w)$")
_AGO_S = {"s": 1, "min": 60, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def when(text: str, now: datetime | None = None) -> datetime:
    """An ISO 8601 time (UTC unless it says otherwise) or a duration ago: 30d, 12h, 90min."""
    now = now or datetime.now(UTC)
    m = _AGO.match(text.strip())
    if m:
        return now - timedelta(seconds=float(m.group(1)) * _AGO_S[m.group(2)])
    try:
        ts = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give an ISO 8601 time or a duration ago such as 30d") from None
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    report = sub.add_parser("report", help="reports to file with the regulator").add_subparsers(
        dest="report_command", metavar="ACTION", required=True
    )
    c = report.add_parser(
        "compliance",
        help="an enterprise's compliance report: grades, monitoring gaps, data and alarm figures, findings",
        description="The dated compliance report of one enterprise over a period. " + DATABASE_HELP,
    )
    c.add_argument("--enterprise", required=True, metavar="ID", help="the enterprise id of its site files")
    c.add_argument(
        "--from", dest="start", default="30d", metavar="TIME", help="ISO 8601 or a duration ago; default 30d"
    )
    c.add_argument("--to", dest="end", default=None, metavar="TIME", help="ISO 8601 or a duration ago; default now")
    c.add_argument("-o", "--output", type=Path, default=None, metavar="FILE", help="default: standard output")
    c.add_argument(
        "--format", choices=["pdf", "html", "csv", "json"], default=None, help="default: from the file's suffix"
    )
    c.add_argument("--lang", choices=["zh", "en"], default="zh", help="Chinese (default) or English")
    c.add_argument("--gap-minutes", type=float, default=10.0, metavar="N", help="list data gaps longer than N minutes")
    c.set_defaults(handler=_compliance)


def _format(args: argparse.Namespace) -> str:
    if args.format:
        return str(args.format)
    suffix = args.output.suffix.lower().lstrip(".") if args.output else ""
    return suffix if suffix in {"pdf", "html", "csv", "json"} else ("json" if args.output is None else "pdf")


def _compliance(args: argparse.Namespace) -> int:
    from hazmon.config import load_settings
    from hazmon.gateways.config import OpcUaGateway, load_gateway_config
    from hazmon.gateways.opcua import SERVER_DEVICE
    from hazmon.plant.tag import tag_ref
    from hazmon.regulator.period import MIN_GAP_MINUTES
    from hazmon.regulator.report import ReportUnavailable, build_report, render
    from hazmon.runtime import device_alarm_owner
    from hazmon.storage.database import DatabaseUnavailable, open_database
    from hazmon.storage.registry import registered_site

    now = datetime.now(UTC)
    try:
        start = when(args.start, now)
        end = now if args.end is None else when(args.end, now)
    except argparse.ArgumentTypeError as e:
        print(f"hazmon: {e}", file=sys.stderr)
        return 2
    if start >= end:
        print(f"hazmon: --from {start.isoformat()} is not before --to {end.isoformat()}", file=sys.stderr)
        return 2
    if not MIN_GAP_MINUTES <= args.gap_minutes <= 1440:
        print(f"hazmon: --gap-minutes must be between {MIN_GAP_MINUTES:g} and 1440", file=sys.stderr)
        return 2
    fmt = _format(args)
    if fmt == "pdf" and args.output is None:
        print("hazmon: a PDF report needs -o FILE", file=sys.stderr)
        return 2
    settings = load_settings()
    # tags an OPC UA subscription delivers by exception (from the gateway files the settings name)
    by_exception: dict[str, str] = {}
    for path in settings.gateways:
        config = load_gateway_config(path)
        if isinstance(config, OpcUaGateway) and config.mode == "subscribe":
            owner = device_alarm_owner(config.site, config.id, SERVER_DEVICE)
            by_exception.update({tag_ref(config.site, t.tag): owner for t in config.tags})

    async def run() -> dict[str, Any] | None:
        async with open_database(settings) as db, db.pool.acquire() as conn:
            ent = await conn.fetchrow("SELECT id, name, uscc FROM enterprises WHERE id = $1", args.enterprise)
            if ent is None:
                return None
            sites = []
            for s in await conn.fetch("SELECT id FROM sites WHERE enterprise_id = $1 ORDER BY id", ent["id"]):
                site = await registered_site(conn, s["id"])
                if site is not None:
                    sites.append(site)
            if not sites:
                return None
            keys = {
                tag_ref(r["site_id"], r["id"]): r["key"] for r in await conn.fetch("SELECT site_id, id, key FROM tags")
            }
            return await build_report(
                conn,
                sites,
                keys,
                start,
                end,
                now,
                by_exception=by_exception,
                retention_days=settings.retention_days,
                gap_minutes=args.gap_minutes,
            )

    try:
        report = asyncio.run(run())
    except DatabaseUnavailable as e:
        print(f"hazmon: {e} (HAZMON_DATABASE_URL)", file=sys.stderr)
        return 1
    if report is None:
        print(f"hazmon: no registered site of enterprise {args.enterprise!r}", file=sys.stderr)
        return 1
    try:
        body = (
            json.dumps(report, indent=2, ensure_ascii=False).encode()
            if fmt == "json"
            else render([report], fmt, args.lang)
        )
    except ReportUnavailable as e:
        print(f"hazmon: {e}", file=sys.stderr)
        return 1
    if args.output is None:
        sys.stdout.buffer.write(body)
    else:
        args.output.write_bytes(body)
        f = report["figures"]
        print(
            f"{args.output}: {fmt} report of {report['enterprise']['name']}, {start:%Y-%m-%d %H:%M} .. "
            f"{end:%Y-%m-%d %H:%M} UTC; completeness {f['completeness']}, online {f['online_ratio']} ({f['status']})"
        )
    return 0
