"""An OPC UA server (asyncua) with a plant-like address space, as a DCS would expose the plant.

Address space, in the namespace of the gateway config (default ``urn:hazmon:<site>``)::

    Objects/<site id>/<installation id>/<equipment id>/<measurement>

Each measurement is the node the gateway config names (``s=V101.LT`` -> ``ns=<idx>;s=V101.LT``).
Analogs are ``AnalogItemType`` Doubles with ``EURange`` and ``EngineeringUnits`` properties (UNECE
unit codes); discrete states are Booleans. Values carry a source timestamp; the status code follows
the instrument: ``BadSensorFailure`` on a sensor fault, ``BadNoCommunication`` while the scenario
cuts the DCS off from its PLC (``comm_loss``), ``Uncertain`` for uncertain readings.

Nodes are created in bulk (one ``add_nodes`` call) and values written with
``write_attribute_value`` only for nodes whose value or status changed.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
from asyncua import ua as _ua
from asyncua.server.server import Server

from hazmon.gateways.config import OpcUaGateway
from hazmon.plant.site import Site, Tag
from hazmon.reading import Quality

log = logging.getLogger(__name__)
ua: Any = _ua  # asyncua's generated type stubs are too loose for mypy --strict (NodeId(int), ...)

F64 = npt.NDArray[np.float64]
U8 = npt.NDArray[np.uint8]

UNECE_SITE = "http://www.opcfoundation.org/UA/units/un/cefact"
# unit -> (UNECE common code, display name, description)
_UNITS: dict[str, tuple[str, str, str]] = {
    "m": ("MTR", "m", "metre"),
    "mm": ("MMT", "mm", "millimetre"),
    "°C": ("CEL", "°C", "degree Celsius"),
    "MPa": ("MPA", "MPa", "megapascal"),
    "kPa": ("KPA", "kPa", "kilopascal"),
    "bar": ("BAR", "bar", "bar"),
    "t/h": ("E18", "t/h", "tonne per hour"),
    "m3/h": ("MQH", "m³/h", "cubic metre per hour"),
    "%LEL": ("P1", "%LEL", "percent of the lower explosive limit"),
    "%": ("P1", "%", "percent"),
    "ppm": ("59", "ppm", "part per million"),
    "mg/m³": ("GP", "mg/m³", "milligram per cubic metre"),
    "m/s": ("MTS", "m/s", "metre per second"),
    "°": ("DD", "°", "degree (angle)"),
}


def eu_information(unit: str) -> Any:
    code, display, description = _UNITS.get(unit, ("", unit, unit))
    unit_id = 0
    for ch in code.ljust(3)[:3] if code else "":
        unit_id = (unit_id << 8) | (ord(ch) if ch != " " else 0)
    if code and len(code) < 3:
        unit_id >>= 8 * (3 - len(code))
    return ua.EUInformation(
        NamespaceUri=UNECE_SITE,
        UnitId=unit_id if code else -1,
        DisplayName=ua.LocalizedText(display),
        Description=ua.LocalizedText(description),
    )


def status_of(quality: int) -> Any:
    if quality < Quality.UNCERTAIN:
        return ua.StatusCode(ua.StatusCodes.Good)
    if quality < Quality.BAD:
        return ua.StatusCode(ua.StatusCodes.Uncertain)
    codes = {
        Quality.BAD_COMM: ua.StatusCodes.BadCommunicationError,
        Quality.BAD_SENSOR: ua.StatusCodes.BadSensorFailure,
        Quality.BAD_CONFIG: ua.StatusCodes.BadConfigurationError,
        Quality.BAD_OUT_OF_SERVICE: ua.StatusCodes.BadOutOfService,
    }
    return ua.StatusCode(codes.get(quality, ua.StatusCodes.Bad))  # type: ignore[call-overload]


_NODE_RE = re.compile(r"^(?:ns=(\d+);)?([sigb])=(.+)$")


def parse_node(node: str, ns: int) -> Any:
    """``s=V101.LT`` or ``ns=2;i=17`` (an explicit index wins) -> NodeId."""
    m = _NODE_RE.match(node)
    if m is None:
        raise ValueError(f"unsupported node id {node!r}")
    idx = int(m.group(1)) if m.group(1) else ns
    kind, ident = m.group(2), m.group(3)
    if kind == "i":
        return ua.NodeId(int(ident), idx)
    if kind == "s":
        return ua.NodeId(ident, idx, ua.NodeIdType.String)
    raise ValueError(f"node id type {kind}= is not served by the simulator")


def _object_item(nodeid: Any, parent: Any, name: str, ns: int, folder: bool) -> Any:
    item = ua.AddNodesItem()
    item.RequestedNewNodeId = nodeid
    item.BrowseName = ua.QualifiedName(name, ns)
    item.NodeClass = ua.NodeClass.Object
    item.ParentNodeId = parent
    item.ReferenceTypeId = ua.NodeId(ua.ObjectIds.Organizes if folder else ua.ObjectIds.HasComponent)
    item.TypeDefinition = ua.NodeId(ua.ObjectIds.FolderType if folder else ua.ObjectIds.BaseObjectType)
    attrs = ua.ObjectAttributes()
    attrs.DisplayName = ua.LocalizedText(name)
    attrs.Description = ua.LocalizedText(name)
    attrs.EventNotifier = 0
    item.NodeAttributes = attrs
    return item


def _variable_item(
    nodeid: Any,
    parent: Any,
    name: str,
    ns: int,
    value: Any,
    datatype: int,
    typedef: int,
    description: str,
    prop: bool = False,
) -> Any:
    item = ua.AddNodesItem()
    item.RequestedNewNodeId = nodeid
    item.BrowseName = ua.QualifiedName(name, 0 if prop else ns)
    item.NodeClass = ua.NodeClass.Variable
    item.ParentNodeId = parent
    item.ReferenceTypeId = ua.NodeId(ua.ObjectIds.HasProperty if prop else ua.ObjectIds.HasComponent)
    item.TypeDefinition = ua.NodeId(typedef)
    attrs = ua.VariableAttributes()
    attrs.DisplayName = ua.LocalizedText(name)
    attrs.Description = ua.LocalizedText(description)
    attrs.DataType = ua.NodeId(datatype)
    attrs.Value = value
    attrs.ValueRank = ua.ValueRank.Scalar
    attrs.ArrayDimensions = None
    attrs.WriteMask = 0
    attrs.UserWriteMask = 0
    attrs.Historizing = False
    attrs.AccessLevel = ua.AccessLevel.CurrentRead.mask
    attrs.UserAccessLevel = ua.AccessLevel.CurrentRead.mask
    item.NodeAttributes = attrs
    return item


class OpcUaEndpoint:
    """The OPC UA server of one gateway config; ``publish`` pushes the model's values into it."""

    protocol = "opcua"

    def __init__(self, site: Site, config: OpcUaGateway, index: dict[str, int], host: str, port: int) -> None:
        self.site = site
        self.config = config
        self.host = host
        self.port = port
        self.namespace = config.namespace or f"urn:hazmon:{site.id}"
        self.model_index = np.array([index[t.tag] for t in config.tags], dtype=np.int64)
        tags = {t.id: t for t in site.tags}
        self.tags: list[Tag] = [tags[t.tag] for t in config.tags]
        self.discrete = np.array([t.is_discrete for t in self.tags], dtype=bool)
        self.no_comm = False
        self._server: Server | None = None
        self._nodeids: list[Any] = []
        self._last_value: F64 = np.full(len(self.tags), np.nan)
        self._last_status: npt.NDArray[np.int64] = np.full(len(self.tags), -1, dtype=np.int64)
        self.writes = 0

    @property
    def url(self) -> str:
        return f"opc.tcp://{self.host}:{self.port}{_path_of(self.config.endpoint)}"

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        if self._server is not None:
            return
        server = Server()
        await server.init()
        server.set_endpoint(self.url)
        server.set_server_name(f"hazmon simulator — {self.site.site.name}")
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        ns = await server.register_namespace(self.namespace)
        self._nodeids = self._build(server, ns)
        items = self._items(ns)
        results = await server.iserver.isession.add_nodes(items)
        failed = [
            (i.BrowseName.Name, r.StatusCode) for i, r in zip(items, results, strict=True) if not r.StatusCode.is_good()
        ]
        if failed:
            raise RuntimeError(f"OPC UA address space: {len(failed)} nodes not created, first {failed[0]}")
        await server.start()
        self._server = server
        self._last_value[:] = np.nan
        self._last_status[:] = -1
        log.info("OPC UA server listening on %s (%d nodes)", self.url, len(self._nodeids))

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.stop()
            log.info("OPC UA server %s stopped", self.url)

    def _build(self, server: Server, ns: int) -> list[Any]:
        return [parse_node(t.node, ns) for t in self.config.tags]

    def _items(self, ns: int) -> list[Any]:
        site = self.site
        equipment = site.equipment_by_id()
        objects = ua.NodeId(ua.ObjectIds.ObjectsFolder)
        site_id = ua.NodeId(site.id, ns, ua.NodeIdType.String)
        items = [_object_item(site_id, objects, site.id, ns, folder=True)]
        made: set[str] = set()
        for tag, nodeid in zip(self.tags, self._nodeids, strict=True):
            eq = equipment[tag.equipment]
            inst_node = ua.NodeId(f"{site.id}/{eq.installation}", ns, ua.NodeIdType.String)
            eq_node = ua.NodeId(f"{site.id}/{eq.installation}/{eq.id}", ns, ua.NodeIdType.String)
            if eq.installation not in made:
                made.add(eq.installation)
                items.append(_object_item(inst_node, site_id, eq.installation, ns, folder=True))
            if eq.id not in made:
                made.add(eq.id)
                items.append(_object_item(eq_node, inst_node, eq.id, ns, folder=False))
            name = tag.id[len(eq.id) + 1 :] if tag.id.startswith(eq.id + ".") else tag.id
            if tag.is_discrete:
                items.append(
                    _variable_item(
                        nodeid,
                        eq_node,
                        name,
                        ns,
                        ua.Variant(False, ua.VariantType.Boolean),
                        ua.ObjectIds.Boolean,
                        ua.ObjectIds.BaseDataVariableType,
                        tag.name,
                    )
                )
                continue
            items.append(
                _variable_item(
                    nodeid,
                    eq_node,
                    name,
                    ns,
                    ua.Variant(0.0, ua.VariantType.Double),
                    ua.ObjectIds.Double,
                    ua.ObjectIds.AnalogItemType,
                    tag.name,
                )
            )
            assert tag.range is not None
            base = nodeid.Identifier if isinstance(nodeid.Identifier, str) else f"i{nodeid.Identifier}"
            items.append(
                _variable_item(
                    ua.NodeId(f"{base}.EURange", ns, ua.NodeIdType.String),
                    nodeid,
                    "EURange",
                    ns,
                    ua.Variant(ua.Range(Low=tag.range[0], High=tag.range[1]), ua.VariantType.ExtensionObject),
                    ua.ObjectIds.Range,
                    ua.ObjectIds.PropertyType,
                    "instrument range",
                    prop=True,
                )
            )
            items.append(
                _variable_item(
                    ua.NodeId(f"{base}.EngineeringUnits", ns, ua.NodeIdType.String),
                    nodeid,
                    "EngineeringUnits",
                    ns,
                    ua.Variant(eu_information(tag.unit), ua.VariantType.ExtensionObject),
                    ua.ObjectIds.EUInformation,
                    ua.ObjectIds.PropertyType,
                    "engineering units",
                    prop=True,
                )
            )
        return items

    async def publish(self, values: F64, quality: U8, ts_us: int) -> None:
        server = self._server
        if server is None:
            return
        v = values[self.model_index]
        q = quality[self.model_index].astype(np.int64)
        if self.no_comm:
            q = np.full(len(q), int(Quality.BAD_COMM) + 1000, dtype=np.int64)  # 1000: marks "no communication"
        changed = np.flatnonzero((v != self._last_value) | (q != self._last_status))
        if len(changed) == 0:
            return
        ts = _datetime_of(ts_us)
        aspace_write = server.iserver.aspace.write_attribute_value
        value_attr = ua.AttributeIds.Value
        nodeids = self._nodeids
        discrete = self.discrete
        good = ua.StatusCode(ua.StatusCodes.Good)
        no_comm = ua.StatusCode(ua.StatusCodes.BadNoCommunication)
        for k in changed.tolist():
            qk = int(q[k])
            if qk >= 1000:
                status = no_comm
            elif qk == 0:
                status = good
            else:
                status = status_of(qk)
            if discrete[k]:
                variant = ua.Variant(bool(v[k] >= 0.5), ua.VariantType.Boolean)
            else:
                variant = ua.Variant(float(v[k]), ua.VariantType.Double)
            dv = ua.DataValue(variant, StatusCode=status, SourceTimestamp=ts, ServerTimestamp=ts)
            await aspace_write(nodeids[k], value_attr, dv)
        self.writes += len(changed)
        self._last_value = v.copy()
        self._last_status = q


def _path_of(endpoint: str) -> str:
    rest = endpoint.split("://", 1)[1]
    slash = rest.find("/")
    return rest[slash:] if slash >= 0 else ""


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _datetime_of(ts_us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=ts_us)
