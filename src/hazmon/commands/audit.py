"""`hazmon audit verify` and `hazmon audit list`: the hash-chained audit trail (see hazmon.audit)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from hazmon.commands import DATABASE_HELP


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    audit = sub.add_parser("audit", help="verify or list the audit trail").add_subparsers(
        dest="audit_command", metavar="ACTION", required=True
    )
    verify = audit.add_parser(
        "verify",
        help="check the hash chain: exit 0 when untouched, 1 naming the first edited/inserted/deleted row",
        epilog=DATABASE_HELP,
    )
    verify.add_argument(
        "--anchor",
        action="append",
        default=[],
        metavar="SEQ:HASH",
        help="a head printed by an earlier verify and kept elsewhere: also check that row still has that hash",
    )
    verify.set_defaults(handler=_verify)
    lst = audit.add_parser("list", help="the newest entries, as JSON lines", epilog=DATABASE_HELP)
    lst.add_argument("--limit", type=int, default=50)
    lst.add_argument("--site")
    lst.set_defaults(handler=_list)


def _with_conn(fn: Any) -> int:
    from hazmon.config import load_settings
    from hazmon.storage.database import open_database

    async def run() -> int:
        async with open_database(load_settings()) as db, db.pool.acquire() as conn:
            result: int = await fn(conn)
            return result

    return asyncio.run(run())


def _verify(args: argparse.Namespace) -> int:
    from hazmon.audit import hash_at, verify

    anchors: list[tuple[int, str]] = []
    for a in args.anchor:
        seq, sep, h = a.partition(":")
        if not sep or not seq.isdigit() or len(h) != 64:
            print(f"hazmon: --anchor {a!r}: use SEQ:HASH as printed by `hazmon audit verify`", file=sys.stderr)
            return 2
        anchors.append((int(seq), h.lower()))

    async def op(conn: Any) -> int:
        result = await verify(conn)
        if result.finding is not None:
            f = result.finding
            print(f"audit trail BROKEN at seq {f.seq} ({f.kind}): {f.message}", file=sys.stderr)
            print(f"checked {result.rows} rows; the head records seq {result.head_seq}", file=sys.stderr)
            return 1
        for seq, expected in anchors:
            actual = await hash_at(conn, seq)
            if actual != expected:
                print(
                    f"audit trail BROKEN at seq {seq} (rewritten): the anchor says {expected[:16]}…, "
                    f"the log {'has ' + actual[:16] + '…' if actual else 'has no such row'}",
                    file=sys.stderr,
                )
                return 1
        head = await conn.fetchrow("SELECT seq, hash FROM audit_head")
        if head is None:
            print("audit trail ok: empty")
        else:
            print(f"audit trail ok: {result.rows} rows; head {head['seq']}:{head['hash']}")
        return 0

    return _with_conn(op)


def _list(args: argparse.Namespace) -> int:
    from hazmon.audit import recent

    async def op(conn: Any) -> int:
        for r in reversed(await recent(conn, limit=args.limit, site_id=args.site)):
            print(json.dumps(r.as_dict(), ensure_ascii=False))
        return 0

    return _with_conn(op)
