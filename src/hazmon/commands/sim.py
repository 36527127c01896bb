"""`hazmon sim --scenario simulators/<name>.yaml [--seed N] [--speed X]`: serve the PLC simulators.

`hazmon sim --scale N [--write-config DIR]` serves a synthetic plant of N tanks (5 tags each) spread over
simulator processes, one protocol and slice each, and writes the site, rule and gateway files that
`hazmon serve` needs to read it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from hazmon.errors import InvalidFile

if TYPE_CHECKING:
    from hazmon.sim.scale import ScalePart

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
    p.add_argument(
        "--write-config",
        type=Path,
        metavar="DIR",
        help="--scale: write site.yaml, rules.yaml, gateways/*.yaml and serve.env (the HAZMON_ settings for "
        "`hazmon serve`) into DIR, then serve",
    )
    p.add_argument(
        "--opcua-tags-per-process",
        type=int,
        default=5_000,
        help="--scale: OPC UA tags served by one simulator process (default 5000)",
    )
    p.add_argument(
        "--modbus-tags-per-process",
        type=int,
        default=25_000,
        help="--scale: Modbus tags served by one simulator process (default 25000)",
    )
    p.add_argument("--scale-part", type=int, default=None, help=argparse.SUPPRESS)
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
    from hazmon.sim.scale import scale_layout, write_config

    setup_logging("INFO")
    if args.scale:
        layout = scale_layout(
            args.scale,
            protocol=args.scale_protocol,
            opcua_port=args.opcua_port or 4840,
            modbus_port=args.modbus_port or 5020,
            opcua_tags_per_part=args.opcua_tags_per_process,
            modbus_tags_per_part=args.modbus_tags_per_process,
        )
        if args.scale_part is None:
            if args.write_config is not None:
                env = write_config(layout, args.write_config)
                print(f"hazmon sim: wrote the scale plant's files to {args.write_config}; serve it with", flush=True)
                print("  " + " ".join(f"{k}='{v}'" for k, v in env.items()) + " hazmon serve", flush=True)
            if len(layout.parts) > 1:
                return _serve_parts(args, layout.parts)
            part = 0
        else:
            part = args.scale_part
        site, configs, scenario = layout.serve_part(part)
        args.opcua_port = args.modbus_port = None  # each part's config names its own port
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


def _serve_parts(args: argparse.Namespace, parts: Sequence[ScalePart]) -> int:
    """One child process per part; stops them all when interrupted or when one of them stops."""
    base = [sys.executable, "-m", "hazmon", "sim", "--scale", str(args.scale), "--scale-protocol", args.scale_protocol]
    base += ["--opcua-tags-per-process", str(args.opcua_tags_per_process)]
    base += ["--modbus-tags-per-process", str(args.modbus_tags_per_process)]
    base += ["--opcua-port", str(args.opcua_port or 4840), "--modbus-port", str(args.modbus_port or 5020)]
    base += ["--seed", str(args.seed), "--speed", str(args.speed)]
    print(f"hazmon sim: {args.scale} tanks over {len(parts)} simulator processes", flush=True)
    children = [subprocess.Popen([*base, "--scale-part", str(p.index)]) for p in parts]
    stop = False

    def _stop(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    previous = {s: signal.signal(s, _stop) for s in (signal.SIGINT, signal.SIGTERM)}
    code = 0
    try:
        while not stop:
            dead = [(p, c.returncode) for p, c in zip(parts, children, strict=True) if c.poll() is not None]
            if dead:
                for p, rc in dead:
                    print(f"hazmon sim: part {p.index} ({p.gateway_id}) stopped with status {rc}", file=sys.stderr)
                code = 1
                break
            time.sleep(0.2)
    finally:
        for c in children:
            if c.poll() is None:
                c.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for c in children:
            try:
                c.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                c.kill()
                c.wait()
        for s, h in previous.items():
            signal.signal(s, h)
    return code
