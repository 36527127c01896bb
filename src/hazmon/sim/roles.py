"""What each tag stands for in the plant model: a tag's ``Role`` (a vessel's level, a pump's run
signal, a gas detector, the wind...), read from its kind, signal, unit and equipment, and the
``VesselKind`` that decides how a vessel's pressure behaves."""

from __future__ import annotations

from enum import IntEnum

from hazmon.plant.site import Equipment, EquipmentType, Signal, Tag, TagKind

VESSEL_TYPES = {EquipmentType.SPHERE, EquipmentType.TANK, EquipmentType.REFRIGERATED_TANK}
PRESSURE_TO_KPA = {"kpa": 1.0, "mpa": 1000.0, "bar": 100.0, "pa": 0.001, "mbar": 0.1}


class Role(IntEnum):
    OTHER = 0
    LEVEL = 1
    TEMPERATURE = 2
    PRESSURE = 3
    FLOW_IN = 4
    FLOW_OUT = 5
    ESD_VALVE = 6
    TRIP_LEVEL = 7
    TRIP_PRESSURE = 8
    IN_SERVICE = 9
    RUNNING = 10
    GAS = 11
    AMBIENT = 12
    WIND_SPEED = 13
    WIND_DIRECTION = 14
    OTHER_STATE = 15


class VesselKind(IntEnum):
    PRESSURIZED = 0  # liquefied gas at its vapour pressure
    REFRIGERATED = 1  # boiling liquid at low pressure, boil-off compressor
    ATMOSPHERIC = 2  # nitrogen-padded tank


def tag_role(tag: Tag, equipment: Equipment) -> Role:
    name = tag.name.lower()
    suffix = tag.id.rsplit(".", 1)[-1].upper()
    vessel = equipment.type in VESSEL_TYPES
    if tag.kind is TagKind.GAS:
        return Role.GAS
    if tag.kind is TagKind.STATE:
        signal_roles = {
            Signal.ESD_VALVE: Role.ESD_VALVE,
            Signal.VALVE: Role.ESD_VALVE,
            Signal.IN_SERVICE: Role.IN_SERVICE,
            Signal.PUMP: Role.RUNNING,
        }
        if tag.signal is Signal.SIS_TRIP:
            return Role.TRIP_PRESSURE if ("pressure" in name or suffix.startswith("P")) else Role.TRIP_LEVEL
        role = signal_roles.get(tag.signal) if tag.signal is not None else None
        if role is Role.ESD_VALVE and not vessel:
            return Role.OTHER_STATE
        return role if role is not None else Role.OTHER_STATE
    if equipment.type is EquipmentType.AREA:
        if tag.kind is TagKind.TEMPERATURE:
            return Role.AMBIENT
        if tag.unit in ("°", "deg", "degree"):
            return Role.WIND_DIRECTION
        if tag.unit in ("m/s", "km/h"):
            return Role.WIND_SPEED
        return Role.OTHER
    if not vessel:
        return Role.OTHER
    if tag.kind is TagKind.LEVEL:
        return Role.LEVEL
    if tag.kind is TagKind.TEMPERATURE:
        return Role.TEMPERATURE
    if tag.kind is TagKind.PRESSURE:
        return Role.PRESSURE if tag.unit.lower() in PRESSURE_TO_KPA else Role.OTHER
    if tag.kind is TagKind.FLOW:
        return Role.FLOW_OUT if any(w in name for w in ("send-out", "outlet", "outflow", "loading")) else Role.FLOW_IN
    return Role.OTHER
