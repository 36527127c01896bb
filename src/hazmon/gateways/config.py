"""Gateway configuration files (`gateways/*.yaml`): protocol, endpoint, security, timing, tag map.

One file describes one gateway. The PLC simulators serve exactly the map these files describe, so
simulator and gateways agree by construction. ``load_gateway_config(path)`` validates a file and
raises ``InvalidFile`` with every problem and its path.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hazmon.backoff import BackoffConfig as Backoff
from hazmon.errors import InvalidFile, Problem, read_yaml, validate_model
from hazmon.plant.site import Ident, Site


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- OPC UA


class OpcUaSecurityPolicy(StrEnum):
    NONE = "None"
    BASIC256SHA256 = "Basic256Sha256"


class OpcUaSecurityMode(StrEnum):
    NONE = "None"
    SIGN = "Sign"
    SIGN_AND_ENCRYPT = "SignAndEncrypt"


class OpcUaSecurity(_Model):
    policy: OpcUaSecurityPolicy = OpcUaSecurityPolicy.NONE
    mode: OpcUaSecurityMode = OpcUaSecurityMode.NONE
    certificate: Path | None = Field(default=None, description="client certificate (DER or PEM)")
    private_key: Path | None = None
    server_certificate: Path | None = None
    username: str | None = None
    password_env: str | None = Field(default=None, description="environment variable holding the password")
    application_uri: str = Field(
        default="urn:hazmon:gateway", description="client application URI; must match the certificate's"
    )

    @model_validator(mode="after")
    def _consistent(self) -> OpcUaSecurity:
        if (self.policy is OpcUaSecurityPolicy.NONE) != (self.mode is OpcUaSecurityMode.NONE):
            raise ValueError("policy and mode must both be None or both be set")
        if self.policy is not OpcUaSecurityPolicy.NONE and (self.certificate is None or self.private_key is None):
            raise ValueError("certificate and private_key are required with a security policy")
        return self


class Deadband(_Model):
    type: Literal["none", "absolute", "percent"] = "none"
    value: float = Field(default=0.0, ge=0)


class OpcUaTag(_Model):
    tag: Ident
    node: str = Field(min_length=1, description="node id without namespace index, e.g. s=V101.LT, or ns=2;i=17")
    deadband: Deadband | None = None


class OpcUaGateway(_Model):
    id: Ident
    protocol: Literal["opcua"]
    site: Ident
    endpoint: str = Field(pattern=r"^opc\.tcp://")
    namespace: str | None = Field(
        default=None, description="namespace URI; node ids without ns= are resolved in it after connecting"
    )
    security: OpcUaSecurity = OpcUaSecurity()
    mode: Literal["subscribe", "poll"] = "subscribe"
    publishing_interval_ms: float = Field(default=500, gt=0)
    sampling_interval_ms: float = Field(default=250, ge=0)
    poll_interval_ms: float = Field(default=1000, gt=0)
    deadband: Deadband = Deadband()
    max_items_per_subscription: int = Field(default=5000, gt=0)
    create_chunk: int = Field(default=1000, gt=0, description="monitored items created per request")
    read_chunk: int = Field(
        default=10_000, gt=0, description="poll mode: nodes per Read request, capped by the server's MaxNodesPerRead"
    )
    timeout_s: float = Field(default=5.0, gt=0)
    stale_after_s: float = Field(default=10.0, gt=0, description="no data this long: communication lost")
    backoff: Backoff = Backoff()
    tags: list[OpcUaTag] = Field(min_length=1)


# ---------------------------------------------------------------- Modbus TCP


class ModbusTable(StrEnum):
    HOLDING = "holding"
    INPUT = "input"
    COIL = "coil"
    DISCRETE_INPUT = "discrete_input"


class ModbusType(StrEnum):
    BOOL = "bool"
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    FLOAT32 = "float32"
    FLOAT64 = "float64"


REGISTER_WIDTH = {
    ModbusType.BOOL: 1,
    ModbusType.INT16: 1,
    ModbusType.UINT16: 1,
    ModbusType.INT32: 2,
    ModbusType.UINT32: 2,
    ModbusType.FLOAT32: 2,
    ModbusType.FLOAT64: 4,
}


ByteOrder = Literal["big", "little"]


class ModbusTag(_Model):
    tag: Ident
    table: ModbusTable = ModbusTable.HOLDING
    address: int = Field(ge=0, le=65535, description="protocol address, 0-based")
    type: ModbusType = ModbusType.FLOAT32
    byte_order: ByteOrder | None = Field(default=None, description="bytes within a register; default: the device's")
    word_order: ByteOrder | None = Field(
        default=None, description="registers within a 32/64-bit value (little: CDAB); default: the device's"
    )
    raw_range: tuple[float, float] | None = Field(default=None, description="linear scaling: raw [lo, hi] ...")
    eng_range: tuple[float, float] | None = Field(default=None, description="... to engineering units [lo, hi]")
    scale: float | None = Field(default=None, description="engineering = raw × scale + offset")
    offset: float | None = Field(default=None, description="engineering = raw × scale + offset")
    bit: int | None = Field(
        default=None, ge=0, le=15, description="one bit of a 16-bit register (0: least significant), as 0/1"
    )
    group: str = "default"
    bad_raw: list[float] = Field(
        default_factory=list,
        max_length=8,
        description="raw values the input card sends for a failed signal (e.g. 32767: S7 wire break / overflow); "
        "read as bad quality (BAD_SENSOR) instead of as a value",
    )

    @model_validator(mode="after")
    def _consistent(self) -> ModbusTag:
        bit_table = self.table in (ModbusTable.COIL, ModbusTable.DISCRETE_INPUT)
        if bit_table != (self.type is ModbusType.BOOL):
            raise ValueError("coils and discrete inputs are type bool, registers are numeric")
        if (self.raw_range is None) != (self.eng_range is None):
            raise ValueError("raw_range and eng_range go together")
        if self.raw_range is not None and self.raw_range[0] == self.raw_range[1]:
            raise ValueError("raw_range: low and high must differ")
        if self.raw_range is not None and (self.scale is not None or self.offset is not None):
            raise ValueError("scale/offset or raw_range/eng_range, not both")
        if self.scale == 0:
            raise ValueError("scale: must not be 0")
        if self.bit is not None and self.type not in (ModbusType.INT16, ModbusType.UINT16):
            raise ValueError("bit: only in a 16-bit register (type int16 or uint16)")
        if self.address + REGISTER_WIDTH[self.type] - 1 > 65535:
            raise ValueError("address: value runs past register 65535")
        return self

    @property
    def width(self) -> int:
        return REGISTER_WIDTH[self.type]

    def linear(self) -> tuple[float, float]:
        """(gain, offset) such that eng = raw * gain + offset."""
        if self.raw_range is None or self.eng_range is None:
            return (1.0 if self.scale is None else self.scale), (0.0 if self.offset is None else self.offset)
        (r0, r1), (e0, e1) = self.raw_range, self.eng_range
        gain = (e1 - e0) / (r1 - r0)
        return gain, e0 - r0 * gain

    def orders(self, device: ModbusDevice) -> tuple[str, str]:
        """(byte order, word order) of this tag: its own, else the device's."""
        return self.byte_order or device.byte_order, self.word_order or device.word_order


class ModbusTemplate(_Model):
    """A block of registers as many tags: tag ``pattern.format(n=first + i)`` at ``address + i × stride``
    (with ``bit``: consecutive bits from ``bit`` on, 16 to a register, from ``address``)."""

    tag: str = Field(min_length=1, description="tag id pattern with {n}, e.g. T{n:03d}.LT")
    count: int = Field(ge=1, le=65536)
    first: int = Field(default=1, description="n of the first tag")
    address: int = Field(ge=0, le=65535)
    stride: int | None = Field(default=None, ge=1, description="registers between two tags; default: the type's width")
    model_config = ConfigDict(extra="allow", frozen=True)  # the other fields are ModbusTag's

    def expand(self) -> list[dict[str, Any]]:
        extra = dict(self.model_extra or {})
        unknown = set(extra) - set(ModbusTag.model_fields) - {"tag", "address"}
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(sorted(unknown))}")
        width = REGISTER_WIDTH[ModbusType(extra.get("type", ModbusType.FLOAT32))]
        stride = self.stride or width
        first_bit = extra.get("bit")
        if first_bit is not None and (not isinstance(first_bit, int) or not 0 <= first_bit <= 15):
            raise ValueError("bit: an integer 0..15")
        out = []
        for i in range(self.count):
            try:
                tag = self.tag.format(n=self.first + i)
            except (KeyError, IndexError, ValueError) as e:
                raise ValueError(f"tag pattern {self.tag!r}: {e!r} (use {{n}}, e.g. T{{n:03d}}.LT)") from None
            if first_bit is None:
                out.append({**extra, "tag": tag, "address": self.address + i * stride})
            else:  # packed bits: consecutive tags take consecutive bits, 16 to a register
                b = first_bit + i
                out.append({**extra, "tag": tag, "address": self.address + b // 16, "bit": b % 16})
        return out


class ModbusSerial(_Model):
    """An RS-485/RS-232 line for ``transport: rtu``."""

    port: str = Field(min_length=1, description="serial device, e.g. /dev/ttyUSB0")
    baudrate: int = Field(default=9600, gt=0)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8


class ModbusDevice(_Model):
    id: Ident
    transport: Literal["tcp", "rtu"] = "tcp"
    host: str = "127.0.0.1"
    port: int = Field(default=502, ge=1, le=65535)
    serial: ModbusSerial | None = Field(default=None, description="the serial line, for transport: rtu")
    unit: int = Field(default=1, ge=0, le=255)
    timeout_s: float = Field(default=1.0, gt=0)
    retries: int = Field(default=1, ge=0, le=10)
    pipeline: int = Field(
        default=1,
        ge=1,
        le=16,
        description="requests in flight on the endpoint's shared connection (1: one at a time; more: pipelined "
        "by transaction id, for devices that allow it). Devices on one endpoint use the smallest value",
    )
    byte_order: ByteOrder = "big"
    word_order: ByteOrder = "big"
    max_registers_per_read: int = Field(default=125, ge=1, le=125)
    max_gap: int = Field(default=8, ge=0, description="unused registers a coalesced read may span")
    tags: list[ModbusTag] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _expand_templates(cls, data: Any) -> Any:
        if not isinstance(data, dict) or "templates" not in data:
            return data
        templates = data.get("templates")
        if not isinstance(templates, list):
            raise ValueError("templates: must be a list")
        tags = list(data.get("tags") or [])
        for i, raw in enumerate(templates):
            try:
                tags.extend(ModbusTemplate.model_validate(raw).expand())
            except ValueError as e:  # pydantic's ValidationError is a ValueError
                raise ValueError(f"templates[{i}]: {e}") from None
        return {**{k: v for k, v in data.items() if k != "templates"}, "tags": tags}

    @model_validator(mode="after")
    def _transport(self) -> ModbusDevice:
        if not self.tags:
            raise ValueError("tags: a device needs at least one tag (or a template)")
        if (self.transport == "rtu") != (self.serial is not None):
            raise ValueError("serial: required with transport: rtu, and only then")
        return self

    def endpoint(self) -> str:
        """The connection this device is reached through (devices on one endpoint share it)."""
        if self.serial is not None:
            return f"rtu:{self.serial.port}"
        return f"tcp:{self.host}:{self.port}"


class ModbusGateway(_Model):
    id: Ident
    protocol: Literal["modbus"]
    site: Ident
    poll_groups: dict[str, float] = Field(
        default_factory=lambda: {"default": 1000.0}, description="group name -> period in ms"
    )
    stale_after_s: float = Field(default=10.0, gt=0)
    backoff: Backoff = Backoff()
    devices: list[ModbusDevice] = Field(min_length=1)

    @model_validator(mode="after")
    def _groups(self) -> ModbusGateway:
        for name, period in self.poll_groups.items():
            if period <= 0:
                raise ValueError(f"poll_groups.{name}: period must be > 0 ms")
        for d in self.devices:
            for t in d.tags:
                if t.group not in self.poll_groups:
                    raise ValueError(f"device {d.id}: tag {t.tag}: unknown poll group {t.group!r}")
        return self


# ---------------------------------------------------------------- MQTT


class MqttPayloadFormat(StrEnum):
    SINGLE = "single"  # one reading per message; the point key is the topic
    BATCH = "batch"  # a list of readings, each naming its point
    ENVELOPE = "envelope"  # {"enterprise", "device", "ts", "readings": [...]}; the key is "device/point"


class MqttTopic(_Model):
    filter: str = Field(min_length=1, description="MQTT topic filter, + and # allowed")
    format: MqttPayloadFormat


class MqttBroker(_Model):
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    client_id: str = Field(min_length=1)
    username: str | None = None
    password_env: str | None = None
    tls: bool = False
    keepalive_s: int = Field(default=30, ge=5)


class MqttGateway(_Model):
    id: Ident
    protocol: Literal["mqtt"]
    site: Ident
    broker: MqttBroker
    qos: Literal[0, 1, 2] = 1
    clean_start: bool = Field(default=False, description="False keeps a persistent session")
    max_future_s: float = Field(default=300.0, gt=0, description="reject timestamps further ahead than this")
    max_payload_bytes: int = Field(
        default=16 * 1024 * 1024, gt=0, description="larger messages are quarantined (too_large) unparsed"
    )
    stale_after_s: float = Field(default=30.0, gt=0)
    backoff: Backoff = Backoff()
    topics: list[MqttTopic] = Field(min_length=1)
    points: dict[str, Ident] = Field(min_length=1, description="point key -> tag id")
    devices: list[Ident] = Field(
        default_factory=list,
        description="field devices behind the broker (the envelope's `device`): each has its own health and "
        "communication-loss alarm, and owns the points keyed `<device>/<point>`",
    )


GatewayConfig = Annotated[OpcUaGateway | ModbusGateway | MqttGateway, Field(discriminator="protocol")]


class _GatewayFile(_Model):
    gateway: GatewayConfig


def tag_ids(config: OpcUaGateway | ModbusGateway | MqttGateway) -> list[str]:
    if isinstance(config, OpcUaGateway):
        return [t.tag for t in config.tags]
    if isinstance(config, ModbusGateway):
        return [t.tag for d in config.devices for t in d.tags]
    return list(config.points.values())


def reference_problems(config: OpcUaGateway | ModbusGateway | MqttGateway, site: Site | None = None) -> list[Problem]:
    """Duplicate mappings, overlapping registers, and (given the site) unknown tags."""
    problems: list[Problem] = []
    known = {t.id for t in site.tags} if site is not None else None
    if site is not None and site.id != config.site:
        problems.append(Problem("site", f"gateway is for site {config.site!r}, not {site.id!r}"))
    if isinstance(config, OpcUaGateway):
        seen: dict[str, int] = {}
        for i, t in enumerate(config.tags):
            if t.tag in seen:
                problems.append(Problem(f"tags[{i}].tag", f"tag {t.tag!r} mapped twice"))
            seen[t.tag] = i
            if known is not None and t.tag not in known:
                problems.append(Problem(f"tags[{i}].tag", f"unknown tag {t.tag!r}"))
    elif isinstance(config, ModbusGateway):
        mapped: set[str] = set()
        for d_i, d in enumerate(config.devices):
            used: dict[tuple[str, str], str] = {}
            for t_i, mt in enumerate(d.tags):
                path = f"devices[{d_i}].tags[{t_i}]"
                if mt.tag in mapped:
                    problems.append(Problem(f"{path}.tag", f"tag {mt.tag!r} mapped twice"))
                mapped.add(mt.tag)
                if known is not None and mt.tag not in known:
                    problems.append(Problem(f"{path}.tag", f"unknown tag {mt.tag!r}"))
                for reg in range(mt.address, mt.address + mt.width):
                    # bits of one register may be separate tags; a whole register only once
                    slot = f"{reg}.{mt.bit}" if mt.bit is not None else str(reg)
                    other = used.get((mt.table, slot))
                    if other is not None:
                        problems.append(Problem(f"{path}.address", f"{mt.table} {slot} already used by {other}"))
                        break
                    used[(mt.table, slot)] = mt.tag
        endpoints: dict[str, set[int]] = {}
        for d_i, d in enumerate(config.devices):
            units = endpoints.setdefault(d.endpoint(), set())
            if d.unit in units:
                problems.append(Problem(f"devices[{d_i}].unit", f"unit {d.unit} twice on {d.endpoint()}"))
            units.add(d.unit)
    else:
        for i, device in enumerate(config.devices):
            if not any(key.startswith(f"{device}/") for key in config.points):
                problems.append(Problem(f"devices[{i}]", f"no point is keyed {device}/<point>"))
        tags_seen: dict[str, str] = {}
        for key, tag in config.points.items():
            if tag in tags_seen:
                problems.append(Problem(f"points.{key}", f"tag {tag!r} also mapped from {tags_seen[tag]!r}"))
            tags_seen[tag] = key
            if known is not None and tag not in known:
                problems.append(Problem(f"points.{key}", f"unknown tag {tag!r}"))
    return problems


_PROTOCOL_IN_PATH = re.compile(r"^gateway\.(?:opcua|modbus|mqtt)\.")


def parse_gateway_config(
    data: Any, source: str = "<gateway>", site: Site | None = None
) -> OpcUaGateway | ModbusGateway | MqttGateway:
    if not isinstance(data, dict):
        raise InvalidFile(source, [Problem("", "a gateway file must be a mapping with a 'gateway' key")])
    try:
        config = validate_model(_GatewayFile, data, source).gateway
    except InvalidFile as e:
        # pydantic puts the discriminator value in the path (gateway.modbus.devices[0]...): drop it
        raise InvalidFile(
            source, [Problem(_PROTOCOL_IN_PATH.sub("gateway.", p.path), p.message) for p in e.problems]
        ) from None
    problems = [Problem(f"gateway.{p.path}", p.message) for p in reference_problems(config, site)]
    if problems:
        raise InvalidFile(source, problems)
    return config


def load_gateway_config(path: Path | str, site: Site | None = None) -> OpcUaGateway | ModbusGateway | MqttGateway:
    return parse_gateway_config(read_yaml(path), str(path), site)
