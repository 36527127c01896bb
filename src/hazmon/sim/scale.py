"""Scale mode: a synthetic tank farm of N nitrogen-padded tanks, five tags each, for benchmarks.

``scale_plant(n)`` returns a site, gateway configs and a scenario that ``serve`` runs like the demo
plant: N tanks (level, temperature, pad pressure, ESD valve, high-high trip) split over an OPC UA
server and a Modbus TCP server (100 tanks per unit id, float32 analogs, coils and discrete inputs),
or all on one protocol. 2,000 tanks make 10,000 tags.
"""

from __future__ import annotations

from typing import Any, Literal

from hazmon.gateways.config import ModbusGateway, MqttGateway, OpcUaGateway, parse_gateway_config
from hazmon.plant.site import Site, parse_site
from hazmon.sim.scenario import Scenario, parse_scenario

TAGS_PER_TANK = 5
TANKS_PER_UNIT = 100


def _site(n: int) -> dict[str, Any]:
    tanks, tags = [], []
    for i in range(n):
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


def scale_plant(
    n: int,
    *,
    protocol: Literal["opcua", "modbus", "both"] = "both",
    opcua_port: int = 4840,
    modbus_port: int = 5020,
    duration_s: float = 86400.0,
) -> tuple[Site, list[OpcUaGateway | ModbusGateway | MqttGateway], Scenario]:
    if n < 1:
        raise ValueError("n must be >= 1")
    site = parse_site(_site(n), f"<scale {n}>")
    tanks = [e.id for e in site.equipment]
    split = n // 2 if protocol == "both" else (n if protocol == "opcua" else 0)
    configs: list[OpcUaGateway | ModbusGateway | MqttGateway] = []
    if split > 0:
        measurements = ("LT", "TT", "PT", "XV", "LSHH")
        tags = [{"tag": f"{t}.{m}", "node": f"s={t}.{m}"} for t in tanks[:split] for m in measurements]
        configs.append(
            parse_gateway_config(
                {
                    "gateway": {
                        "id": "scale-opcua",
                        "protocol": "opcua",
                        "site": site.id,
                        "endpoint": f"opc.tcp://127.0.0.1:{opcua_port}/hazmon",
                        "namespace": "urn:hazmon:scale-farm",
                        "tags": tags,
                    }
                },
                "<scale opcua>",
                site,
            )
        )
    rest = tanks[split:]
    if rest:
        devices = []
        for u, first in enumerate(range(0, len(rest), TANKS_PER_UNIT)):
            group = rest[first : first + TANKS_PER_UNIT]
            dtags: list[dict[str, Any]] = []
            for k, t in enumerate(group):
                dtags += [
                    {"tag": f"{t}.LT", "table": "holding", "address": 6 * k, "type": "float32"},
                    {"tag": f"{t}.TT", "table": "holding", "address": 6 * k + 2, "type": "float32"},
                    {"tag": f"{t}.PT", "table": "holding", "address": 6 * k + 4, "type": "float32"},
                    {"tag": f"{t}.XV", "table": "coil", "address": k, "type": "bool"},
                    {"tag": f"{t}.LSHH", "table": "discrete_input", "address": k, "type": "bool"},
                ]
            devices.append({"id": f"PLC-{u + 1:03d}", "port": modbus_port, "unit": u + 1, "tags": dtags})
        configs.append(
            parse_gateway_config(
                {"gateway": {"id": "scale-modbus", "protocol": "modbus", "site": site.id, "devices": devices}},
                "<scale modbus>",
                site,
            )
        )
    events = [
        {"type": "transfer", "at_s": 60 * i, "duration_s": 3600, "equipment": tanks[(i * 97) % n], "rate_t_h": 150}
        for i in range(min(n, 20))
    ]
    scenario = parse_scenario(
        {"name": f"scale-{n}", "site": site.id, "duration_s": duration_s, "events": events}, "<scale>", site
    )
    return site, configs, scenario
