"""`hazmon sim --scenario simulators/<name>.yaml [--seed N] [--speed X] [--scale N]`: serve the PLC simulators."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from hazmon.errors import InvalidFile

DEFAULT_SITE = Path("sites/demo-tank-farm.yaml")
DEFAULT_GATEWAYS = [Path(f"gateways/demo-{p}.yaml") for p in ("opcua", "modbus", "mqtt")]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "sim",
        help="serve the plant simulators (OPC UA, Modbus TCP, MQTT) under a scenario",
        description="Serves a site's process model over the endpoints its gateway configs describe, "
        "and prints each endpoint. Runs until interrupted.",
    )
    p.add_argument("--scenario", type=Path, metavar="FILE", help="scenario file (simulators/*.yaml)")
    p.add_argument("--site", type=Path, default=DEFAULT_SITE, metavar="FILE")
    p.add_argument(
        "--gateway",
        dest="gateways",
        type=Path,
        action="append",
        metavar="FILE",
        help="gateway config to serve (repeatable; default: gateways/demo-*.yaml)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--speed", type=float, default=1.0, help="plant seconds per wall second")
    p.add_argument("--scale", type=int, default=0, metavar="N", help="serve N synthetic tanks instead (benchmarks)")
    p.add_argument("--scale-protocol", choices=("opcua", "modbus", "both"), default="both")
    p.add_argument("--opcua-port", type=int, default=None)
    p.add_argument("--modbus-port", type=int, default=None)
    p.add_argument("--mqtt-host", default=None)
    p.add_argument("--mqtt-port", type=int, default=None)
    p.add_argument("--no-mqtt", action="store_true", help="do not publish to an MQTT broker")
    p.set_defaults(handler=_sim)


def _sim(args: argparse.Namespace) -> int:
    from hazmon.gateways.config import MqttGateway, load_gateway_config
    from hazmon.logs import setup_logging
    from hazmon.plant.site import load_site
    from hazmon.sim import SimError, load_scenario, serve
    from hazmon.sim.scale import scale_plant

    setup_logging("INFO")
    if args.scale:
        site, configs, scenario = scale_plant(args.scale, protocol=args.scale_protocol)
    else:
        if args.scenario is None:
            print("hazmon sim: --scenario is required (or --scale N)", file=sys.stderr)
            return 2
        site = load_site(args.site)
        scenario = load_scenario(args.scenario, site)
        paths = args.gateways or DEFAULT_GATEWAYS
        configs = [load_gateway_config(p, site) for p in paths]
        if args.no_mqtt:
            configs = [c for c in configs if not isinstance(c, MqttGateway)]

    async def run() -> None:
        async with serve(
            site,
            configs,
            scenario,
            seed=args.seed,
            speed=args.speed,
            opcua_port=args.opcua_port,
            modbus_port=args.modbus_port,
            mqtt_host=args.mqtt_host,
            mqtt_port=args.mqtt_port,
        ) as sim:
            print(
                f"hazmon sim: site {site.id}, scenario {scenario.name} ({scenario.duration_s:g} s), "
                f"seed {args.seed}, speed x{args.speed:g}, {len(site.tags)} tags"
            )
            for ep in sim.endpoints:
                extra = f" devices {', '.join(ep.devices)}" if ep.devices else ""
                print(f"  {ep.protocol:<6} {ep.gateway:<14} {ep.url}  ({ep.tags} tags){extra}", flush=True)
            await asyncio.Event().wait()  # serve until interrupted

    try:
        asyncio.run(run())
    except SimError as e:
        print(f"hazmon sim: {e}", file=sys.stderr)
        return 2
    except InvalidFile:
        raise
    return 0
