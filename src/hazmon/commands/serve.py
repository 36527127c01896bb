"""`hazmon migrate`, `hazmon serve` and `hazmon demo`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import uvicorn

from hazmon.commands import DATABASE_HELP
from hazmon.config import Settings, load_settings

if TYPE_CHECKING:
    from hazmon.runtime import GatewayConfig

ROOT = Path(__file__).resolve().parents[3]
DEMO_SITE = ROOT / "sites" / "demo-tank-farm.yaml"
DEMO_RULES = [ROOT / "alarm_rules" / n for n in ("gas-detectors.yaml", "process-defaults.yaml", "demo-tank-farm.yaml")]
DEMO_GATEWAYS = [ROOT / "gateways" / f"demo-{p}.yaml" for p in ("opcua", "modbus", "mqtt")]
DEMO_SCENARIO = ROOT / "simulators" / "demo.yaml"

log = logging.getLogger("hazmon.demo")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    mig = sub.add_parser(
        "migrate", help="apply database migrations (a second run changes nothing)", epilog=DATABASE_HELP
    )
    mig.set_defaults(handler=_migrate)
    serve = sub.add_parser(
        "serve", help="run the configured site, gateways, rule engine, store and API", epilog=DATABASE_HELP
    )
    serve.add_argument(
        "--role",
        choices=("all", "gateway", "engine", "writer", "api", "hub"),
        default="all",
        help="all: every stage in this process (default); gateway, engine, writer: one stage, joined to the "
        "others over NATS JetStream (HAZMON_NATS_URL, HAZMON_PARTITIONS, HAZMON_SHARD; docs/scaling.md); api: the "
        "API with the alarm state read from the events stream, operator actions sent to the owning shard; hub: "
        "the regulator's receiver of enterprise uplinks, feeding the same streams (HAZMON_HUB__PORT, "
        "HAZMON_HUB__CREDENTIALS)",
    )
    serve.set_defaults(handler=_serve)
    demo = sub.add_parser(
        "demo", help="run the demo plant end to end: simulators, gateways, rule engine, embedded database, API"
    )
    demo.add_argument("--port", type=int, default=8000, help="API port (default 8000)")
    demo.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="embedded database, spool, quarantine (default: HAZMON_DATA_DIR, or .hazmon like every other command)",
    )
    demo.add_argument("--scenario", type=Path, default=DEMO_SCENARIO, help="simulator scenario")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--opcua-port", type=int, default=None, help="simulator OPC UA port (default 4840; 0: any)")
    demo.add_argument("--modbus-port", type=int, default=None, help="simulator Modbus port (default 5020; 0: any)")
    demo.add_argument("--mqtt-port", type=int, default=1883, help="MQTT broker port (default 1883)")
    demo.set_defaults(handler=_demo)


def _migrate(args: argparse.Namespace) -> int:
    from hazmon.logs import setup_logging
    from hazmon.storage.database import open_database

    settings = load_settings()
    setup_logging(settings.log_level, settings.log_format)

    async def run() -> None:
        async with open_database(settings) as db, db.pool.acquire() as conn:
            version = await conn.fetchval("SELECT max(version) FROM schema_version")
            print(f"database at schema version {version:03d} ({db.caps.edition} {db.caps.server_version})")

    asyncio.run(run())
    return 0


async def serve_forever(
    settings: Settings,
    gateway_configs: Sequence[GatewayConfig] | None = None,
    banner: bool = False,
    role: str = "all",
) -> None:
    """Run the runtime and the API in this event loop until SIGINT/SIGTERM."""
    from hazmon.api import create_app
    from hazmon.runtime import run_runtime

    bus = None
    if role in ("gateway", "api"):
        from hazmon.cluster.bus import Bus

        if role == "gateway":  # no engine, no store: batches go to the bus
            settings = settings.model_copy(update={"rules": []})
        bus = await Bus.connect(settings.nats_url, settings.nats_namespace)
    if role == "api" and bus is not None:  # alarm state from the events stream, actions to the shards
        from hazmon.cluster.api import api_runtime

        runtime_context = api_runtime(settings, bus)
    else:
        runtime_context = run_runtime(settings, gateway_configs=gateway_configs)
    async with contextlib.AsyncExitStack() as stack:
        if bus is not None:
            stack.push_async_callback(bus.close)
        runtime = await stack.enter_async_context(runtime_context)
        if bus is not None and role == "gateway":
            from hazmon.cluster.roles import bus_publisher, device_publisher, sites_by_key

            runtime.publisher = bus_publisher(bus, sites_by_key(runtime.sites, runtime.tags), settings.partitions)
            runtime.device_publisher = device_publisher(bus, settings.partitions)
        if banner:
            from hazmon.auth import ensure_demo_token

            async with runtime.db.pool.acquire() as conn:
                token = await ensure_demo_token(conn)
            base = f"http://{settings.api_host}:{settings.api_port}"
            print(
                f"\nhazmon demo is running: API {base} (OpenAPI docs at {base}/docs)\n"
                f"operator console: {base}/console (paste the token)\n"
                f"operator token for site demo-tank-farm:\n  export HAZMON_TOKEN={token}\n"
                f'  curl -s -H "Authorization: Bearer $HAZMON_TOKEN" {base}/api/v1/alarms\n'
                f"the demo's database is in {settings.data_dir.resolve()}; other commands find it with\n"
                f"  export HAZMON_DATA_DIR={settings.data_dir.resolve()}\n"
                "alarms appear within a minute; stop with Ctrl-C\n",
                flush=True,
            )
        config = uvicorn.Config(
            create_app(runtime=runtime),
            host=settings.api_host,
            port=settings.api_port,
            log_config=None,
            lifespan="on",
        )
        server = _Server(config)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, server.handle_exit, sig, None)
        from hazmon import watchdog

        dog = watchdog.from_environment(settings.api_host, settings.api_port)  # systemd Type=notify
        try:
            await server.serve()
        finally:
            if dog is not None:
                await asyncio.to_thread(dog.stop)
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)


class _Server(uvicorn.Server):
    """uvicorn re-raises a captured SIGTERM/SIGINT after it stops, which would kill the process
    before the runtime shuts down (spool flushed, embedded database stopped). hazmon installs its
    own handlers instead and lets every context close in order."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _serve(args: argparse.Namespace) -> int:
    from hazmon.logs import setup_logging

    settings = load_settings()
    setup_logging(settings.log_level, settings.log_format)
    if args.role in ("engine", "writer", "hub"):
        from hazmon.cluster.roles import run_role

        asyncio.run(run_role(args.role, settings))
        return 0
    asyncio.run(serve_forever(settings, role=args.role))
    return 0


def _broker_up(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _demo(args: argparse.Namespace) -> int:
    from hazmon.gateways.config import MqttGateway, load_gateway_config
    from hazmon.logs import setup_logging
    from hazmon.plant.site import load_site
    from hazmon.sim import load_scenario, serve

    # The demo keeps its data where every other command looks (HAZMON_DATA_DIR, default .hazmon), so
    # `hazmon token create` beside a running demo writes to the demo's database, not to a fresh one.
    overrides = {"data_dir": args.data_dir} if args.data_dir is not None else {}
    settings = load_settings(
        **overrides,
        site=DEMO_SITE,
        rules=DEMO_RULES,
        gateways=[],
        api_port=args.port,
        database_url=None,
    )
    setup_logging(settings.log_level, settings.log_format)
    site = load_site(DEMO_SITE)
    configs = [load_gateway_config(p, site) for p in DEMO_GATEWAYS]
    if not _broker_up(args.mqtt_port):
        log.warning("no MQTT broker on 127.0.0.1:%d: the gas detectors' MQTT feed is left out", args.mqtt_port)
        configs = [c for c in configs if not isinstance(c, MqttGateway)]
    scenario = load_scenario(args.scenario, site)

    async def run() -> None:
        async with serve(
            site,
            configs,
            scenario,
            seed=args.seed,
            opcua_port=args.opcua_port,
            modbus_port=args.modbus_port,
            mqtt_port=args.mqtt_port,
        ) as sim:
            for ep in sim.endpoints:
                print(f"simulator: {ep.protocol:<6} {ep.url}  ({ep.tags} tags)", flush=True)
            await serve_forever(settings, [sim.config(c.id) for c in configs], banner=True)

    asyncio.run(run())
    return 0
