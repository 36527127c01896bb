"""Scale mode: a synthetic tank farm of N nitrogen-padded tanks, five tags each, for benchmarks.

``scale_plant(n)`` returns a site, gateway configs and a scenario that ``serve`` runs like the demo
plant: N tanks (level, temperature, pad pressure, ESD valve, high-high trip) split over an OPC UA
server and a Modbus TCP server (100 tanks per unit id, float32 analogs, coils and discrete inputs),
or all on one protocol. 2,000 tanks make 10,000 tags.

``scale_layout(n, ...)`` spreads the same plant over several simulator processes, so that the
simulator is never the limit of a benchmark: each *part* serves one protocol for a slice of the tanks
on its own port (OPC UA ``opcua_port + i``, Modbus ``modbus_port + i``), at most
``opcua_tags_per_part`` / ``modbus_tags_per_part`` tags each. ``write_config`` writes the whole
plant's site, rule and gateway files for ``hazmon serve``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from hazmon.gateways.config import ModbusGateway, MqttGateway, OpcUaGateway, parse_gateway_config
from hazmon.plant.site import Site, parse_site
from hazmon.sim.scenario import Scenario, parse_scenario

TAGS_PER_TANK = 5
TANKS_PER_UNIT = 100


def _site(n: int, first: int = 0, last: int | None = None) -> dict[str, Any]:
    tanks, tags = [], []
    for i in range(first, n if last is None else last):
        t = f"TK{i:05d}"
        tanks.append(
            {
                "id": t,
                "name": f"Synthetic tank {i}",
                "type": "tank",
                "installation": "SCALE",
                "chemical": "methanol",
                "capacity_m3": 5000,
                "diameter_m": 21,
                "height_m": 15.9,
                "design": {"pressure_max_mpa": 0.006, "level_max_m": 15.9},
            }
        )
        tags += [
            {"id": f"{t}.LT", "name": f"{t} level", "kind": "level", "equipment": t, "unit": "m", "range": [0, 16]},
            {"id": f"{t}.TT", "name": f"{t} temp", "kind": "temperature", "equipment": t, "unit": "°C",
             "range": [-20, 80]},
            {"id": f"{t}.PT", "name": f"{t} pad pressure", "kind": "pressure", "equipment": t, "unit": "kPa",
             "range": [-2, 10]},
            {"id": f"{t}.XV", "name": f"{t} inlet ESD valve open", "kind": "state", "equipment": t,
             "signal": "esd_valve", "states": {0: "closed", 1: "open"}},
            {"id": f"{t}.LSHH", "name": f"{t} high-high level SIS trip", "kind": "state", "equipment": t,
             "signal": "sis_trip", "states": {0: "normal", 1: "tripped"}},
        ]  # fmt: skip
    return {
        "enterprise": {"id": "scale", "name": "Scale test", "uscc": "91320500MA1XK7Q224"},
        "site": {"id": "scale-farm", "name": f"Synthetic tank farm ({n} tanks)"},
        "installations": [
            {
                "id": "SCALE",
                "name": "Synthetic storage",
                "kind": "storage",
                "people_within_500m": 0,
                "chemicals": [{"name": "methanol", "quantity_t": 1000}],
            }
        ],
        "equipment": tanks,
        "tags": tags,
    }


Config = OpcUaGateway | ModbusGateway | MqttGateway
MEASUREMENTS = ("LT", "TT", "PT", "XV", "LSHH")


def _opcua_config(site: Site, tanks: list[str], gateway_id: str, port: int) -> OpcUaGateway:
    tags = [{"tag": f"{t}.{m}", "node": f"s={t}.{m}"} for t in tanks for m in MEASUREMENTS]
    config = parse_gateway_config(
        {
            "gateway": {
                "id": gateway_id,
                "protocol": "opcua",
                "site": site.id,
                "endpoint": f"opc.tcp://127.0.0.1:{port}/hazmon",
                "namespace": "urn:hazmon:scale-farm",
                "tags": tags,
            }
        },
        f"<scale {gateway_id}>",
        site,
    )
    assert isinstance(config, OpcUaGateway)
    return config


def _modbus_config(site: Site, tanks: list[str], gateway_id: str, port: int) -> ModbusGateway:
    devices = []
    for u, first in enumerate(range(0, len(tanks), TANKS_PER_UNIT)):
        group = tanks[first : first + TANKS_PER_UNIT]
        dtags: list[dict[str, Any]] = []
        for k, t in enumerate(group):
            dtags += [
                {"tag": f"{t}.LT", "table": "holding", "address": 6 * k, "type": "float32"},
                {"tag": f"{t}.TT", "table": "holding", "address": 6 * k + 2, "type": "float32"},
                {"tag": f"{t}.PT", "table": "holding", "address": 6 * k + 4, "type": "float32"},
                {"tag": f"{t}.XV", "table": "coil", "address": k, "type": "bool"},
                {"tag": f"{t}.LSHH", "table": "discrete_input", "address": k, "type": "bool"},
            ]
        unit = u + 1
        devices.append({"id": f"PLC-{unit:03d}", "port": port, "unit": unit, "tags": dtags})
    config = parse_gateway_config(
        {"gateway": {"id": gateway_id, "protocol": "modbus", "site": site.id, "devices": devices}},
        f"<scale {gateway_id}>",
        site,
    )
    assert isinstance(config, ModbusGateway)
    return config


def _scenario(site: Site, tanks: list[str], duration_s: float) -> Scenario:
    n = len(tanks)
    events = [
        {"type": "transfer", "at_s": 60 * i, "duration_s": 3600, "equipment": tanks[(i * 97) % n], "rate_t_h": 150}
        for i in range(min(n, 20))
    ]
    return parse_scenario(
        {"name": f"scale-{n}", "site": site.id, "duration_s": duration_s, "events": events}, "<scale>", site
    )


def scale_plant(
    n: int,
    *,
    protocol: Literal["opcua", "modbus", "both"] = "both",
    opcua_port: int = 4840,
    modbus_port: int = 5020,
    duration_s: float = 86400.0,
) -> tuple[Site, list[Config], Scenario]:
    """The whole plant served by one simulator process (an OPC UA and a Modbus server)."""
    if n < 1:
        raise ValueError("n must be >= 1")
    site = parse_site(_site(n), f"<scale {n}>")
    tanks = [e.id for e in site.equipment]
    split = n // 2 if protocol == "both" else (n if protocol == "opcua" else 0)
    configs: list[Config] = []
    if split > 0:
        configs.append(_opcua_config(site, tanks[:split], "scale-opcua", opcua_port))
    if tanks[split:]:
        configs.append(_modbus_config(site, tanks[split:], "scale-modbus", modbus_port))
    return site, configs, _scenario(site, tanks, duration_s)


@dataclass(frozen=True)
class ScalePart:
    """One simulator process: a slice of the tanks on one protocol."""

    index: int
    protocol: Literal["opcua", "modbus"]
    first: int  # first tank number
    last: int  # one past the last
    port: int
    gateway_id: str

    @property
    def tags(self) -> int:
        return (self.last - self.first) * TAGS_PER_TANK


@dataclass(frozen=True)
class ScaleLayout:
    n: int
    parts: list[ScalePart]

    def site(self) -> Site:
        """The whole plant, as ``hazmon serve`` loads it."""
        return parse_site(_site(self.n), f"<scale {self.n}>")

    def gateway_configs(self, site: Site | None = None) -> list[Config]:
        site = site or self.site()
        return [self._config(site, p) for p in self.parts]

    def _config(self, site: Site, part: ScalePart) -> Config:
        tanks = [f"TK{i:05d}" for i in range(part.first, part.last)]
        if part.protocol == "opcua":
            return _opcua_config(site, tanks, part.gateway_id, part.port)
        return _modbus_config(site, tanks, part.gateway_id, part.port)  # units 1.. on the part's own server

    def serve_part(self, index: int, duration_s: float = 86400.0) -> tuple[Site, list[Config], Scenario]:
        """What simulator process ``index`` serves: its slice of the site, its gateway config, a scenario."""
        part = self.parts[index]
        site = parse_site(_site(self.n, part.first, part.last), f"<scale {self.n} part {index}>")
        tanks = [e.id for e in site.equipment]
        return site, [self._config(site, part)], _scenario(site, tanks, duration_s)


def _slices(first: int, last: int, per_part: int) -> list[tuple[int, int]]:
    if last <= first:
        return []
    size = max(TANKS_PER_UNIT, (per_part // TAGS_PER_TANK) // TANKS_PER_UNIT * TANKS_PER_UNIT)
    return [(a, min(last, a + size)) for a in range(first, last, size)]


def scale_layout(
    n: int,
    *,
    protocol: Literal["opcua", "modbus", "both"] = "both",
    opcua_port: int = 4840,
    modbus_port: int = 5020,
    opcua_tags_per_part: int = 5_000,
    modbus_tags_per_part: int = 25_000,
) -> ScaleLayout:
    """The scale plant spread over simulator processes, one protocol each (see the module docstring)."""
    if n < 1:
        raise ValueError("n must be >= 1")
    split = n // 2 if protocol == "both" else (n if protocol == "opcua" else 0)
    parts: list[ScalePart] = []
    for i, (a, b) in enumerate(_slices(0, split, opcua_tags_per_part)):
        parts.append(ScalePart(len(parts), "opcua", a, b, opcua_port + i, f"scale-opcua-{i + 1}"))
    for i, (a, b) in enumerate(_slices(split, n, modbus_tags_per_part)):
        parts.append(ScalePart(len(parts), "modbus", a, b, modbus_port + i, f"scale-modbus-{i + 1}"))
    return ScaleLayout(n, parts)


SCALE_RULES: dict[str, Any] = {
    "rules": [
        {"name": "tank level", "select": {"kind": "level"},
         "limits": {"HH": {"value": 15.0, "priority": "critical"}, "H": {"value": 14.5, "priority": "high"}}},
        {"name": "pad pressure", "select": {"kind": "pressure"},
         "limits": {"HH": {"value": 9.0, "priority": "critical"}, "LL": {"value": -1.5, "priority": "high"}}},
        {"name": "temperature", "select": {"kind": "temperature"},
         "limits": {"HH": {"value": 70.0, "priority": "high"}}},
    ]
}  # fmt: skip


def write_config(layout: ScaleLayout, directory: Path) -> dict[str, Any]:
    """Writes ``site.yaml``, ``rules.yaml``, ``gateways/<id>.yaml`` and ``serve.env`` (the HAZMON_ settings
    for ``hazmon serve``) into ``directory``; returns those settings."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "gateways").mkdir(exist_ok=True)
    site = layout.site()
    site_file = directory / "site.yaml"
    site_file.write_text(yaml.safe_dump(site.model_dump(mode="json", by_alias=True), allow_unicode=True), "utf-8")
    rules_file = directory / "rules.yaml"
    rules_file.write_text(yaml.safe_dump(SCALE_RULES), "utf-8")
    gateway_files = []
    for config in layout.gateway_configs(site):
        path = directory / "gateways" / f"{config.id}.yaml"
        doc = {"gateway": config.model_dump(mode="json", by_alias=True, exclude_none=True)}
        path.write_text(yaml.safe_dump(doc, allow_unicode=True), "utf-8")
        gateway_files.append(str(path.resolve()))
    env = {
        "HAZMON_SITE": str(site_file.resolve()),
        "HAZMON_RULES": json.dumps([str(rules_file.resolve())]),
        "HAZMON_GATEWAYS": json.dumps(gateway_files),
    }
    (directory / "serve.env").write_text("".join(f"{k}={v}\n" for k, v in env.items()), "utf-8")
    return env
