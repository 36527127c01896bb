"""`hazmon findings add|list|show|update|close|summary`: hidden-hazard self-check and self-report
(隐患自查自报) from the command line, on the database of the settings. Every change is in the audit
trail under the name given by ``--by`` (default ``cli:<login>``)."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    top = sub.add_parser("findings", help="hidden-hazard findings (隐患自查自报): record, update, close, summarize")
    cmds = top.add_subparsers(dest="findings_command", metavar="ACTION", required=True)

    def who(p: argparse.ArgumentParser) -> None:
        p.add_argument("--by", help="who records the change (audit trail); default cli:<login>")

    add = cmds.add_parser("add", help="record a finding; prints it as JSON")
    add.add_argument("--site", required=True)
    add.add_argument("--installation")
    add.add_argument("--equipment")
    add.add_argument("--description", required=True)
    add.add_argument("--grade", required=True, help="general (一般) or major (重大)")
    add.add_argument("--found-by", required=True)
    add.add_argument("--found-at", help="ISO 8601 time; default now")
    add.add_argument("--action", dest="corrective_action", help="corrective action (整改措施)")
    add.add_argument("--deadline", required=True, help="rectification deadline, YYYY-MM-DD")
    add.add_argument("--responsible")
    who(add)
    add.set_defaults(handler=_add)

    lst = cmds.add_parser("list", help="findings, newest first (a table, or --json)")
    lst.add_argument("--site", action="append", default=[])
    lst.add_argument("--enterprise")
    lst.add_argument("--status", action="append", choices=["open", "rectifying", "closed"], default=[])
    lst.add_argument("--grade", choices=["general", "major"])
    lst.add_argument("--overdue", action="store_true", help="only those past their deadline")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(handler=_list)

    show = cmds.add_parser("show", help="one finding and its audit-trail history, as JSON")
    show.add_argument("id", type=int)
    show.set_defaults(handler=_show)

    upd = cmds.add_parser("update", help="change fields or the status of a finding")
    upd.add_argument("id", type=int)
    upd.add_argument("--status", choices=["open", "rectifying", "closed"])
    upd.add_argument("--evidence", help="evidence note (required to close)")
    upd.add_argument("--installation")
    upd.add_argument("--equipment")
    upd.add_argument("--description")
    upd.add_argument("--grade")
    upd.add_argument("--action", dest="corrective_action")
    upd.add_argument("--deadline")
    upd.add_argument("--responsible")
    who(upd)
    upd.set_defaults(handler=_update)

    close = cmds.add_parser("close", help="close a finding with the evidence of its rectification (销号)")
    close.add_argument("id", type=int)
    close.add_argument("--evidence", required=True)
    who(close)
    close.set_defaults(handler=_close)

    summ = cmds.add_parser("summary", help="per enterprise: open, major, overdue findings, median time to close")
    summ.add_argument("--enterprise")
    summ.add_argument("--json", action="store_true")
    summ.set_defaults(handler=_summary)


def _run(fn: Callable[[Any], Awaitable[int]]) -> int:
    from hazmon.config import load_settings
    from hazmon.regulator.findings import FindingError
    from hazmon.storage.database import open_database

    async def run() -> int:
        async with open_database(load_settings()) as db, db.pool.acquire() as conn:
            return await fn(conn)

    try:
        return asyncio.run(run())
    except FindingError as e:
        print(f"hazmon: {e}", file=sys.stderr)
        return 1


def _invalid(e: ValidationError) -> int:
    for err in e.errors():
        where = ".".join(str(p) for p in err["loc"]) or "finding"
        print(f"hazmon: {where.replace('_', '-')}: {err['msg']}", file=sys.stderr)
    return 2


def _actor(args: argparse.Namespace) -> Any:
    from hazmon.regulator.findings import Actor

    return Actor(args.by or f"cli:{getpass.getuser()}", None, "cli")


def _fields(args: argparse.Namespace, names: list[str]) -> dict[str, Any]:
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def _print(obj: Any) -> None:
    print(json.dumps(obj, ensure_ascii=False, indent=2))


def _add(args: argparse.Namespace) -> int:
    from hazmon.regulator.findings import FindingIn, create_finding

    names = ["site", "installation", "equipment", "description", "grade", "found_by", "found_at"]
    names += ["corrective_action", "deadline", "responsible"]
    try:
        new = FindingIn.model_validate(_fields(args, names))
    except ValidationError as e:
        return _invalid(e)

    async def op(conn: Any) -> int:
        _print((await create_finding(conn, new, _actor(args))).as_dict())
        return 0

    return _run(op)


def _patch(args: argparse.Namespace, data: dict[str, Any]) -> int:
    from hazmon.regulator.findings import FindingPatch, update_finding

    try:
        patch = FindingPatch.model_validate(data)
    except ValidationError as e:
        return _invalid(e)
    if not patch.changes():
        print("hazmon: nothing to change: give --status, --evidence or a field", file=sys.stderr)
        return 2

    async def op(conn: Any) -> int:
        _print((await update_finding(conn, args.id, patch, _actor(args))).as_dict())
        return 0

    return _run(op)


def _update(args: argparse.Namespace) -> int:
    names = ["status", "evidence", "installation", "equipment", "description", "grade", "corrective_action"]
    return _patch(args, _fields(args, [*names, "deadline", "responsible"]))


def _close(args: argparse.Namespace) -> int:
    return _patch(args, {"status": "closed", "evidence": args.evidence})


def _show(args: argparse.Namespace) -> int:
    from hazmon.regulator.findings import finding_history, get_finding

    async def op(conn: Any) -> int:
        finding = (await get_finding(conn, args.id)).as_dict()
        finding["history"] = await finding_history(conn, args.id)
        _print(finding)
        return 0

    return _run(op)


def _list(args: argparse.Namespace) -> int:
    from hazmon.regulator.findings import Grade, Status, list_findings

    async def op(conn: Any) -> int:
        now = datetime.now(UTC)
        found = await list_findings(
            conn,
            site_ids=args.site or None,
            enterprise_id=args.enterprise,
            status=[Status(s) for s in args.status] or None,
            grade=Grade(args.grade) if args.grade else None,
        )
        if args.overdue:
            found = [f for f in found if f.overdue(now)]
        if args.json:
            _print([f.as_dict(now) for f in found])
            return 0
        print(f"{'id':>5}  {'site':<16} {'place':<12} {'grade':<7} {'status':<10} {'deadline':<10}  description")
        for f in found:
            place = f.equipment_id or f.installation_id or "-"
            late = " OVERDUE" if f.overdue(now) else ""
            text = f.description.splitlines()[0][:60]
            print(
                f"{f.id:>5}  {f.site_id:<16} {place:<12} {f.grade.value:<7} {f.status.value:<10} "
                f"{f.deadline.isoformat():<10}  {text}{late}"
            )
        return 0

    return _run(op)


def _summary(args: argparse.Namespace) -> int:
    from hazmon.regulator.findings import summaries_by_enterprise

    async def op(conn: Any) -> int:
        rows = await summaries_by_enterprise(conn, enterprise_id=args.enterprise)
        if args.json:
            _print(rows)
            return 0
        print(f"{'enterprise':<16} {'open':>5} {'major':>6} {'overdue':>8} {'closed':>7} {'median days to close':>21}")
        for r in rows:
            median = "-" if r["median_days_to_close"] is None else f"{r['median_days_to_close']:.1f}"
            print(
                f"{r['enterprise']:<16} {r['open']:>5} {r['major_open']:>6} {r['overdue']:>8} {r['closed']:>7} "
                f"{median:>21}"
            )
        return 0

    return _run(op)
