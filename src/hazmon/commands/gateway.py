"""`hazmon gateway check FILE...` and `hazmon gateway discover opc.tcp://HOST:PORT [-o FILE]`."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from hazmon.errors import InvalidFile
from hazmon.gateways.config import ModbusGateway, MqttGateway, OpcUaGateway, load_gateway_config
from hazmon.plant.site import load_site
from hazmon.plant.tag import TagIndex


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    gw = sub.add_parser("gateway", help="check gateway files, discover OPC UA servers").add_subparsers(
        dest="gateway_command", metavar="ACTION", required=True
    )
    check = gw.add_parser("check", help="validate gateway files; every error is listed with its path")
    check.add_argument("files", nargs="+", type=Path, metavar="FILE")
    check.add_argument("--site", type=Path, help="site file: also check that every mapped tag exists")
    check.add_argument(
        "--tags", action="store_true", help="Modbus: list every tag as read (shown anyway when templates are used)"
    )
    check.set_defaults(handler=_check)
    disc = gw.add_parser("discover", help="browse an OPC UA server and write a tag-map skeleton")
    disc.add_argument("endpoint", metavar="opc.tcp://HOST:PORT")
    disc.add_argument("-o", "--output", type=Path, help="write the YAML here (default: stdout)")
    disc.add_argument("--site", default="CHANGE-ME", help="site id to put in the skeleton")
    disc.add_argument("--id", default="opcua-discovered", help="gateway id to put in the skeleton")
    disc.add_argument("--max-nodes", type=int, default=100_000, help="stop after this many variables")
    disc.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    disc.set_defaults(handler=_discover)


def _summary(config: OpcUaGateway | ModbusGateway | MqttGateway) -> str:
    if isinstance(config, OpcUaGateway):
        return f"OPC UA {config.endpoint}, {config.mode}, {len(config.tags)} tags"
    if isinstance(config, ModbusGateway):
        from hazmon.gateways.modbus import plan_blocks

        tags = [t.tag for d in config.devices for t in d.tags]
        index = TagIndex(list(dict.fromkeys(tags)))
        reads = sum(len(blocks) for d in config.devices for blocks in plan_blocks(d, index).values())
        endpoints = len({d.endpoint() for d in config.devices})
        return (
            f"Modbus, {len(config.devices)} devices on {endpoints} connection(s), "
            f"{len(tags)} tags in {reads} reads per cycle"
        )
    return (
        f"MQTT {config.broker.host}:{config.broker.port}, {len(config.topics)} topic filters, "
        f"{len(config.points)} points"
    )


def _check(args: argparse.Namespace) -> int:
    site = load_site(args.site) if args.site else None
    failed = False
    for path in args.files:
        try:
            config = load_gateway_config(path, site)
        except InvalidFile as e:
            failed = True
            print(e, file=sys.stderr)
            continue
        print(f"{path}: ok — gateway {config.id}: {_summary(config)}")
        if isinstance(config, ModbusGateway) and (args.tags or _has_templates(path)):
            for line in modbus_tag_lines(config):
                print(line)
    return 1 if failed else 0


def _has_templates(path: Path) -> bool:
    try:
        return "templates:" in path.read_text(encoding="utf-8")
    except OSError:
        return False


def modbus_tag_lines(config: ModbusGateway) -> list[str]:
    """Every tag of every device as the gateway reads it (templates expanded), one line each."""
    lines = []
    for d in config.devices:
        where = (
            f"{d.serial.port} {d.serial.baudrate} {d.serial.parity}{d.serial.stopbits}" if d.serial else d.endpoint()
        )
        lines.append(f"  device {d.id}: unit {d.unit} on {where}, {len(d.tags)} tags")
        for t in d.tags:
            byte_order, word_order = t.orders(d)
            order = ""
            if t.width > 1 or byte_order != "big":
                order = {("big", "big"): "ABCD", ("big", "little"): "CDAB", ("little", "big"): "BADC"}.get(
                    (byte_order, word_order), "DCBA"
                )
            gain, offset = t.linear()
            parts = [f"    {t.tag:<24} {t.table:<14} {t.address:>5}", str(t.type)]
            if t.bit is not None:
                parts.append(f"bit {t.bit}")
            if order:
                parts.append(order)
            if (gain, offset) != (1.0, 0.0):
                parts.append(f"x{gain:g}{offset:+g}")
            if t.group != "default":
                parts.append(f"group {t.group}")
            lines.append(" ".join(parts))
    return lines


_BAD_ID_CHARS = re.compile(r"[^A-Za-z0-9_.\-]+")


def tag_id_for(path: list[str]) -> str:
    """A valid hazmon tag id from a browse path (``Objects/Tank 1/Level`` -> ``Tank_1.Level``)."""
    text = ".".join(_BAD_ID_CHARS.sub("_", p).strip("_.-") or "x" for p in path)
    if not text[0].isalnum():
        text = "t" + text
    return text[:80]


async def discover(endpoint: str, *, max_nodes: int = 100_000, timeout: float = 10.0) -> dict[str, Any]:
    """Browse the server's Objects folder for variables; returns the skeleton document."""
    from asyncua.client.client import Client

    ua: Any = importlib.import_module("asyncua.ua")  # untyped: its re-exports are implicit

    client = Client(endpoint, timeout=timeout)
    await client.connect()
    try:
        namespaces: list[str] = await client.get_namespace_array()
        found: list[tuple[list[str], Any]] = []
        seen: set[Any] = set()
        stack: list[tuple[Any, list[str]]] = [(client.nodes.objects, [])]
        while stack and len(found) < max_nodes:
            node, path = stack.pop()
            children = await node.get_children(refs=ua.ObjectIds.HierarchicalReferences)
            classes = await client.read_attributes(children, ua.AttributeIds.NodeClass) if children else []
            names = await client.read_attributes(children, ua.AttributeIds.BrowseName) if children else []
            for child, cls, name in reversed(list(zip(children, classes, names, strict=True))):
                if child.nodeid in seen or child.nodeid.NamespaceIndex == 0:
                    continue
                seen.add(child.nodeid)
                browse = name.Value.Value.Name if name.Value is not None and name.Value.Value else str(child.nodeid)
                if cls.Value.Value == ua.NodeClass.Variable:
                    found.append(([*path, browse], child.nodeid))
                elif cls.Value.Value == ua.NodeClass.Object:
                    stack.append((child, [*path, browse]))
    finally:
        await client.disconnect()
    found.sort(key=lambda f: f[0])
    counts: dict[int, int] = {}
    for _, nid in found:
        counts[nid.NamespaceIndex] = counts.get(nid.NamespaceIndex, 0) + 1
    main_ns = max(counts, key=lambda k: counts[k]) if counts else None
    tags = []
    used: set[str] = set()
    for path, nid in found:
        text = nid.to_string()
        if main_ns is not None and nid.NamespaceIndex == main_ns:
            text = re.sub(r"^ns=\d+;", "", text)
        tag = tag_id_for(path)
        base, n = tag, 2
        while tag in used:
            tag, n = f"{base}-{n}", n + 1
        used.add(tag)
        tags.append({"tag": tag, "node": text})
    doc: dict[str, Any] = {
        "id": "opcua-discovered",
        "protocol": "opcua",
        "site": "CHANGE-ME",
        "endpoint": endpoint,
    }
    if main_ns is not None and main_ns < len(namespaces):
        doc["namespace"] = namespaces[main_ns]
    doc["mode"] = "subscribe"
    doc["tags"] = tags
    return {"gateway": doc}


def _discover(args: argparse.Namespace) -> int:
    if not args.endpoint.startswith("opc.tcp://"):
        print("hazmon: the endpoint must start with opc.tcp://", file=sys.stderr)
        return 2
    from asyncua.ua.uaerrors import UaError

    try:
        doc = asyncio.run(discover(args.endpoint, max_nodes=args.max_nodes, timeout=args.timeout))
    except (OSError, TimeoutError, UaError) as e:
        print(f"hazmon: cannot browse {args.endpoint}: {e!r}", file=sys.stderr)
        return 1
    doc["gateway"]["id"] = args.id
    doc["gateway"]["site"] = args.site
    text = (
        f"# Tag-map skeleton discovered from {args.endpoint}: {len(doc['gateway']['tags'])} variables.\n"
        "# Rename the tags to your site's tag ids, delete what you do not monitor, then\n"
        "# `hazmon gateway check` this file against your site file.\n"
    ) + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    if args.output:
        args.output.write_text(text, encoding="utf-8")
        print(f"{args.output}: {len(doc['gateway']['tags'])} variables", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
