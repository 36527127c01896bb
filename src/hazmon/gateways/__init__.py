"""Gateways (OPC UA, Modbus TCP, MQTT): decode what PLCs send into columnar reading batches.
May import hazmon.plant, hazmon.reading, hazmon.backoff and hazmon.errors; never alarms, storage, API, runtime.

``open_gateway(config, tag_index, data_dir=...)`` builds the gateway a configuration file
describes; see ``hazmon.gateways.base`` for the interface and docs/gateways.md for the guide.
"""

from __future__ import annotations

from pathlib import Path

from hazmon.gateways.base import (
    ConnectionState,
    DeviceHealth,
    Gateway,
    GatewayConfigError,
    GatewayError,
    GatewayHealth,
)
from hazmon.gateways.config import ModbusGateway, MqttGateway, OpcUaGateway
from hazmon.gateways.quarantine import Quarantine, Reason
from hazmon.plant.tag import TagIndex

__all__ = [
    "ConnectionState",
    "DeviceHealth",
    "Gateway",
    "GatewayConfigError",
    "GatewayError",
    "GatewayHealth",
    "Quarantine",
    "Reason",
    "open_gateway",
]


def open_gateway(
    config: OpcUaGateway | ModbusGateway | MqttGateway, tag_index: TagIndex, *, data_dir: Path | None
) -> Gateway:
    """The gateway for ``config`` (not started: use ``async with``).

    Bad input is quarantined in ``data_dir/quarantine/<gateway id>.jsonl`` (no file when
    ``data_dir`` is None). Raises GatewayConfigError when a mapped tag is not in ``tag_index``.
    """
    quarantine = Quarantine(config.id, data_dir / "quarantine" if data_dir is not None else None)
    if isinstance(config, ModbusGateway):
        from hazmon.gateways.modbus import ModbusGatewayImpl

        return ModbusGatewayImpl(config, tag_index, quarantine)
    if isinstance(config, MqttGateway):
        from hazmon.gateways.mqtt import MqttGatewayImpl

        return MqttGatewayImpl(config, tag_index, quarantine)
    from hazmon.gateways.opcua import OpcUaGatewayImpl

    return OpcUaGatewayImpl(config, tag_index, quarantine)
