"""OPC UA polling in batches: few Read requests (the server's OperationLimits respected), responses
decoded with numpy, checked against asyncua's own encoding and a real asyncua server."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from asyncua import ua
from asyncua.ua.ua_binary import nodeid_to_binary, struct_to_binary

from gateway_helpers import EXAMPLE_NS, Collector, OpcServer, wait_for
from hazmon.gateways import open_gateway
from hazmon.gateways.config import OpcUaGateway, parse_gateway_config
from hazmon.gateways.opcua import OpcUaGatewayImpl, decode_read_results
from hazmon.plant.tag import TagIndex

T0 = datetime(2026, 7, 15, 8, 0, 0, 250_000, tzinfo=UTC)
T0_US = int(T0.timestamp() * 1_000_000)


def _results_bytes(dvs: list[ua.DataValue]) -> bytes:
    """The Results array of a ReadResponse as asyncua encodes it (what a server sends)."""
    response = ua.ReadResponse()
    response.Results = dvs
    whole = struct_to_binary(response)
    header = nodeid_to_binary(ua.NodeId(ua.ObjectIds.ReadResponse_Encoding_DefaultBinary)) + struct_to_binary(
        response.ResponseHeader
    )
    return whole[len(header) :]


@pytest.mark.parametrize(
    ("vtype", "values"),
    [
        (ua.VariantType.Double, [1.5, -2.25, 1e300]),
        (ua.VariantType.Float, [1.5, -2.25, 3.0]),
        (ua.VariantType.Int32, [7, -8, 2**31 - 1]),
        (ua.VariantType.UInt16, [0, 1, 65535]),
        (ua.VariantType.Boolean, [True, False, True]),
    ],
)
def test_uniform_results_decode_like_asyncua(vtype: ua.VariantType, values: list[object]) -> None:
    dvs = [ua.DataValue(ua.Variant(v, vtype), SourceTimestamp=T0, ServerTimestamp=datetime.now(UTC)) for v in values]
    cols = decode_read_results(_results_bytes(dvs))
    assert cols is not None
    assert cols.values.tolist() == [float(v) for v in values]  # type: ignore[arg-type]
    assert cols.codes.tolist() == [0, 0, 0]
    assert cols.ts_us.tolist() == [T0_US] * 3  # the source time wins over the server's


def test_status_codes_and_missing_timestamps_and_mixed_layouts() -> None:
    bad = ua.StatusCode(ua.StatusCodes.BadSensorFailure)
    dvs = [ua.DataValue(ua.Variant(float(i), ua.VariantType.Double), StatusCode=bad) for i in range(3)]
    cols = decode_read_results(_results_bytes(dvs))
    assert cols is not None and set(cols.codes.tolist()) == {0x808C0000} and cols.ts_us.tolist() == [0, 0, 0]
    # one value of another type, a string, a timestamp on one only: left to asyncua
    mixed = [
        ua.DataValue(ua.Variant(1.0, ua.VariantType.Double)),
        ua.DataValue(ua.Variant(2, ua.VariantType.Int32)),
    ]
    assert decode_read_results(_results_bytes(mixed)) is None
    assert decode_read_results(_results_bytes([ua.DataValue(ua.Variant("x", ua.VariantType.String))])) is None
    some_stamped = [ua.DataValue(ua.Variant(1.0, ua.VariantType.Double), SourceTimestamp=T0), dvs[0]]
    assert decode_read_results(_results_bytes(some_stamped)) is None
    assert decode_read_results(_results_bytes([])) is not None
    assert decode_read_results(b"\x05\x00") is None  # truncated


async def test_poll_reads_in_as_few_requests_as_the_server_allows(tmp_path: Path) -> None:
    server = OpcServer(devices=3, per_device=100)
    await server.start()
    try:
        limit = server.server.get_node(
            ua.NodeId(ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead)
        )
        await limit.write_value(ua.Variant(120, ua.VariantType.UInt32))
        names = server.names()
        doc = {
            "id": "ua",
            "protocol": "opcua",
            "site": "x",
            "endpoint": server.endpoint,
            "namespace": EXAMPLE_NS,
            "mode": "poll",
            "poll_interval_ms": 100,
            "backoff": {"initial_s": 0.1, "max_s": 0.5},
            "tags": [{"tag": n, "node": f"s={n}"} for n in names],
        }
        cfg = parse_gateway_config({"gateway": doc})
        assert isinstance(cfg, OpcUaGateway)
        idx = TagIndex(names)
        gw = open_gateway(cfg, idx, data_dir=tmp_path)
        assert isinstance(gw, OpcUaGatewayImpl)
        async with gw, Collector(gw) as col:
            values = [float(i) + 0.125 for i in range(len(names))]
            await server.write(values)
            await wait_for(
                lambda: all(col.latest(idx.key(n)) == v for n, v in zip(names, values, strict=True)),
                what="all 300 values",
            )
            assert gw.server_max_nodes_per_read == 120 and gw.read_requests_per_poll == 3
            # each value once per change: polls of unchanged values are recognised by their source time
            b = col.all()
            per_tag = np.bincount(b.tag[b.quality < 128], minlength=len(names))
            assert per_tag.max() <= 2  # the initial value and the one written
            await server.write([v + 1 for v in values])
            await wait_for(lambda: col.latest(idx.key(names[-1])) == values[-1] + 1, what="the next change")
    finally:
        await server.stop()
