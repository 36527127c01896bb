"""`hazmon alarms kpi --site ID --since 30d`: alarm-system KPIs from the journal (EEMUA 191)."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from hazmon.commands import DATABASE_HELP

_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def duration(text: str) -> timedelta:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhdw])", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r}: give a duration like 30d, 12h, 90m")
    return timedelta(**{_UNITS[m.group(2)]: float(m.group(1))})


def timestamp(text: str) -> datetime:
    try:
        ts = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give an ISO 8601 time") from None
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    alarms = sub.add_parser("alarms", help="alarm journal reports").add_subparsers(
        dest="alarms_command", metavar="ACTION", required=True
    )
    kpi = alarms.add_parser(
        "kpi", help="alarm rate, floods, chattering and standing alarms, top 10, priority mix", epilog=DATABASE_HELP
    )
    kpi.add_argument("--site", required=True, metavar="ID")
    kpi.add_argument("--since", type=duration, default=timedelta(days=30), metavar="DURATION", help="default 30d")
    kpi.add_argument("--until", type=timestamp, default=None, metavar="TIME", help="ISO 8601; default now")
    kpi.add_argument("--json", action="store_true", help="print the KPIs as JSON")
    kpi.set_defaults(handler=_kpi)


def _kpi(args: argparse.Namespace) -> int:
    from hazmon.alarms.kpi import compute_kpis
    from hazmon.config import load_settings
    from hazmon.storage.database import open_database

    settings = load_settings()

    async def run() -> dict[str, Any]:
        async with open_database(settings) as db, db.pool.acquire() as conn:
            return await compute_kpis(conn, args.site, args.since, args.until)

    k = asyncio.run(run())
    if args.json:
        print(json.dumps(k, indent=2))
        return 0
    print(render(k))
    return 0


def render(k: dict[str, Any]) -> str:
    lines = [
        f"site {k['site']}, {k['start']} .. {k['end']}",
        f"alarms: {k['alarms']} ({k['alarms_per_10min']} per 10 min on average, at most {k['max_per_10min']}); "
        f"re-alarms: {k['realarms']}",
        f"flood (>= 10 in 10 min): {k['flood']['intervals']} intervals, {k['flood']['share']:.1%} of the time",
        "priority mix: " + ", ".join(f"{p} {v['count']} ({v['share']:.0%})" for p, v in k["priority_mix"].items()),
        f"chattering (>= 3 in 1 min): {len(k['chattering'])}",
    ]
    lines += [f"  {c['alarm_id']}: {c['max_per_min']} in one minute" for c in k["chattering"]]
    lines.append(f"standing (> 24 h active): {len(k['standing'])}")
    lines += [f"  {s['alarm_id']}: active since {s['active_since']} ({s['hours']} h)" for s in k["standing"]]
    lines.append(f"top 10: {k['top10_share']:.0%} of all alarms")
    lines += [f"  {t['count']:6d} {t['share']:6.1%}  {t['alarm_id']}" for t in k["top10"]]
    return "\n".join(lines)
