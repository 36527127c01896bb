"""`hazmon migrate`, `hazmon serve` and `hazmon demo`."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from hazmon.config import Settings, load_settings

ROOT = Path(__file__).resolve().parents[3]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    mig = sub.add_parser("migrate", help="apply database migrations (a second run changes nothing)")
    mig.set_defaults(handler=_migrate)
    serve = sub.add_parser("serve", help="run the configured site, gateways, rule engine, store and API")
    serve.set_defaults(handler=_serve)
    demo = sub.add_parser("demo", help="run the demo plant end to end on an embedded database")
    demo.add_argument("--port", type=int, default=8000, help="API port (default 8000)")
    demo.add_argument("--data-dir", type=Path, default=ROOT / ".hazmon" / "demo")
    demo.set_defaults(handler=_demo)


def _migrate(args: argparse.Namespace) -> int:
    from hazmon.db import open_database
    from hazmon.logs import setup_logging

    settings = load_settings()
    setup_logging(settings.log_level, settings.log_format)

    async def run() -> None:
        async with open_database(settings) as db, db.pool.acquire() as conn:
            version = await conn.fetchval("SELECT max(version) FROM schema_version")
            print(f"database at schema version {version:03d} ({db.caps.edition} {db.caps.server_version})")

    asyncio.run(run())
    return 0


def serve_api(settings: Settings) -> None:
    import uvicorn

    from hazmon.api import create_app
    from hazmon.logs import setup_logging

    setup_logging(settings.log_level, settings.log_format)
    config = uvicorn.Config(
        create_app(settings), host=settings.api_host, port=settings.api_port, log_config=None, lifespan="on"
    )
    uvicorn.Server(config).run()


def _serve(args: argparse.Namespace) -> int:
    serve_api(load_settings())
    return 0


def _demo(args: argparse.Namespace) -> int:
    settings = load_settings(
        data_dir=args.data_dir,
        site=ROOT / "sites" / "demo-tank-farm.yaml",
        api_port=args.port,
        database_url=None,
    )
    print(f"hazmon demo: API on http://{settings.api_host}:{settings.api_port} (docs at /docs)", flush=True)
    serve_api(settings)
    return 0
