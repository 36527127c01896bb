"""`hazmon token create|list|revoke`: API tokens (see hazmon.auth)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from hazmon.auth import AuthError, Role
from hazmon.commands import DATABASE_HELP


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    token = sub.add_parser("token", help="create, list or revoke API tokens").add_subparsers(
        dest="token_command", metavar="ACTION", required=True
    )
    create = token.add_parser(
        "create", help="create a token; it is printed once and stored only hashed", epilog=DATABASE_HELP
    )
    create.add_argument("--role", required=True, choices=[r.value for r in Role])
    create.add_argument("--site", action="append", default=[], metavar="ID", help="a site in scope (repeatable)")
    create.add_argument(
        "--enterprise", action="append", default=[], metavar="ID", help="every site of an enterprise (repeatable)"
    )
    create.add_argument(
        "--region",
        action="append",
        default=[],
        metavar="CODE",
        help="regulator tokens: every enterprise whose USCC's administrative-division code (characters 3-8) "
        "starts with CODE, e.g. 32 (a province), 3205 (a city) (repeatable)",
    )
    create.add_argument("--name", help="who or what uses it (recorded with every action)")
    create.set_defaults(handler=_create)
    lst = token.add_parser("list", help="list tokens (never their secrets)", epilog=DATABASE_HELP)
    lst.add_argument("--active", action="store_true", help="leave revoked tokens out")
    lst.set_defaults(handler=_list)
    revoke = token.add_parser(
        "revoke", help="revoke a token by id (or a unique prefix of it); effective at once", epilog=DATABASE_HELP
    )
    revoke.add_argument("token_id", metavar="ID_OR_PREFIX")
    revoke.set_defaults(handler=_revoke)


def _actor() -> str:
    from hazmon.audit import cli_actor

    return cli_actor()


def _run(fn: Callable[[Any], Awaitable[int]]) -> int:
    from hazmon.config import load_settings
    from hazmon.storage.database import open_database

    async def run() -> int:
        async with open_database(load_settings()) as db, db.pool.acquire() as conn:
            return await fn(conn)

    try:
        return asyncio.run(run())
    except AuthError as e:
        print(f"hazmon: {e}", file=sys.stderr)
        return 2


def _create(args: argparse.Namespace) -> int:
    from hazmon import audit
    from hazmon.auth import create_token

    async def op(conn: Any) -> int:
        async with conn.transaction():  # the token exists only with its audit row
            new = await create_token(
                conn,
                args.role,
                sites=args.site,
                enterprises=args.enterprise,
                regions=args.region,
                name=args.name,
                created_by=_actor(),
            )
            info = new.info
            await audit.append(
                conn,
                actor=_actor(),
                action="token.create",
                target=info.id,
                detail={
                    "role": info.role.value,
                    "sites": info.sites,
                    "enterprises": info.enterprises,
                    **({"regions": info.regions} if info.regions else {}),
                    "name": info.name,
                },
            )
        scope = (
            ", ".join(
                [f"site {s}" for s in info.sites]
                + [f"enterprise {e}" for e in info.enterprises]
                + [f"region {r}" for r in info.regions]
            )
            or "all"
        )
        print(f"token {info.id} ({info.name}): role {info.role.value}, scope {scope}", file=sys.stderr)
        print("the token is shown once; store it now:", file=sys.stderr)
        print(new.secret)
        return 0

    return _run(op)


def _list(args: argparse.Namespace) -> int:
    from hazmon.auth import list_tokens

    async def op(conn: Any) -> int:
        tokens = await list_tokens(conn, include_revoked=not args.active)
        print(f"{'ID':<12}  {'ROLE':<9}  {'NAME':<20}  {'SCOPE':<30}  {'CREATED':<19}  STATUS")
        for t in tokens:
            scope = ",".join(t.sites + [f"ent:{e}" for e in t.enterprises] + [f"region:{r}" for r in t.regions]) or "*"
            status = f"revoked {t.revoked_at:%Y-%m-%d %H:%M}" if t.revoked_at else "active"
            print(
                f"{t.id:<12}  {t.role.value:<9}  {t.name[:20]:<20}  {scope[:30]:<30}  "
                f"{t.created_at:%Y-%m-%d %H:%M:%S}  {status}"
            )
        return 0

    return _run(op)


def _revoke(args: argparse.Namespace) -> int:
    from hazmon import audit
    from hazmon.auth import revoke_token

    async def op(conn: Any) -> int:
        async with conn.transaction():  # revoked and audited, or neither
            info = await revoke_token(conn, args.token_id)
            await audit.append(conn, actor=_actor(), action="token.revoke", target=info.id, detail={"name": info.name})
        print(f"token {info.id} ({info.name}, {info.role.value}) revoked")
        return 0

    return _run(op)
