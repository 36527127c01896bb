"""OPC UA gateway (asyncua): subscriptions in chunks, or polling; status codes to hazmon quality.

Subscription mode creates monitored items in requests of ``create_chunk`` items, spread over as
many subscriptions as ``max_items_per_subscription`` requires, each with the sampling interval and
the absolute or percent deadband (per tag, else the gateway's). Notifications are taken straight
from the publish response (one list pass per publish, no task or callback per value) and become
one reading batch per publish. Polling mode reads every value every ``poll_interval_ms`` with as few
Read requests as the server allows (one, unless its OperationLimits/MaxNodesPerRead or
``read_chunk`` is smaller; the chunks go out together), and decodes the response with numpy when
its DataValues share one layout (the usual case: scalars of one type with a source timestamp):
no Python object per value.

hazmon runs its own reconnect loop rather than asyncua's: on a lost connection (socket closed,
keep-alive probe failed, subscription reported bad status) the session is dropped, the tags get one
``BAD_COMM`` reading, and after capped exponential backoff a new session is opened and every
subscription and monitored item re-created, so data resumes after a server restart without
restarting hazmon. asyncua errors are translated in ``_translate`` only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt

from hazmon.backoff import Backoff
from hazmon.gateways.base import ConnectionState, DeviceStats, Gateway, GatewayConfigError
from hazmon.gateways.config import Deadband, OpcUaGateway, OpcUaSecurityMode, OpcUaSecurityPolicy
from hazmon.gateways.quarantine import Quarantine, Reason
from hazmon.plant.tag import TagIndex
from hazmon.reading import Quality, ReadingBatch, now_us

SERVER_DEVICE = "server"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_NAIVE = datetime(1970, 1, 1)
_US = timedelta(microseconds=1)

# OPC UA status codes (Part 4 §7.34) that map to a specific hazmon quality (info bits masked off)
_COMM_CODES = np.array(
    [
        0x80050000,  # BadCommunicationError
        0x808A0000,  # BadNotConnected
        0x80310000,  # BadNoCommunication
        0x800D0000,  # BadServerNotConnected
        0x800A0000,  # BadTimeout
        0x80320000,  # BadWaitingForInitialData
        0x800C0000,  # BadShutdown
    ],
    dtype=np.uint32,
)
_SENSOR_CODES = np.array([0x808C0000, 0x808B0000], dtype=np.uint32)  # BadSensorFailure, BadDeviceFailure
# BadConfigurationError, BadNodeIdUnknown, BadNodeIdInvalid
_CONFIG_CODES = np.array([0x80890000, 0x80340000, 0x80330000], dtype=np.uint32)
_OOS_CODES = np.array([0x808D0000], dtype=np.uint32)  # BadOutOfService


def status_to_quality(codes: npt.ArrayLike) -> npt.NDArray[np.uint8]:
    """OPC UA StatusCode values -> hazmon quality, vectorized.

    Severity bits (top two): 00 good -> GOOD, 01 uncertain -> UNCERTAIN, 1x bad -> BAD, refined
    by sub-code (ignoring the info bits): communication -> BAD_COMM, sensor/device failure ->
    BAD_SENSOR, configuration / unknown node -> BAD_CONFIG, out of service -> BAD_OUT_OF_SERVICE.
    """
    c = np.asarray(codes, dtype=np.uint32)
    sev = c >> 30
    q = np.where(sev == 0, Quality.GOOD, np.where(sev == 1, Quality.UNCERTAIN, Quality.BAD)).astype(np.uint8)
    bad = sev >= 2
    if bad.any():
        sub = c & np.uint32(0xFFFF0000)
        q[bad & np.isin(sub, _COMM_CODES)] = Quality.BAD_COMM
        q[bad & np.isin(sub, _SENSOR_CODES)] = Quality.BAD_SENSOR
        q[bad & np.isin(sub, _CONFIG_CODES)] = Quality.BAD_CONFIG
        q[bad & np.isin(sub, _OOS_CODES)] = Quality.BAD_OUT_OF_SERVICE
    return q


def _dt_us(dt: datetime | None, default: int) -> int:
    if dt is None:
        return default
    return (dt - (_EPOCH if dt.tzinfo is not None else _EPOCH_NAIVE)) // _US


def _ua() -> Any:
    """asyncua.ua, untyped (it re-exports names mypy's strict mode does not see)."""
    import asyncua.ua

    return asyncua.ua


class _Lost(Exception):
    """The session is gone: reconnect."""


class _Fatal(Exception):
    """A configuration problem the server reports (bad namespace, rejected security...)."""


def _chunks(n: int, size: int) -> Iterator[slice]:
    for i in range(0, n, size):
        yield slice(i, min(n, i + size))


# Variant scalar types of a fixed size (Part 6 §5.1.2): type id -> little-endian numpy dtype
_VARIANT_DTYPE = {
    1: "u1",  # Boolean
    2: "i1",
    3: "u1",
    4: "<i2",
    5: "<u2",
    6: "<i4",
    7: "<u4",
    8: "<i8",
    9: "<u8",
    10: "<f4",
    11: "<f8",  # Double
}
_FILETIME_UNIX_US = 11_644_473_600_000_000  # µs from 1601-01-01 (OPC UA DateTime epoch) to 1970-01-01


@dataclass(frozen=True, slots=True)
class ReadColumns:
    """The DataValues of one Read response as columns (decoded without a Python object per value)."""

    values: npt.NDArray[np.float64]
    codes: npt.NDArray[np.uint32]
    ts_us: npt.NDArray[np.int64]  # source timestamp, else server timestamp, as Unix µs; 0 where neither


def decode_read_results(body: bytes | memoryview) -> ReadColumns | None:
    """The ``Results`` array of a ReadResponse body (after the response header), vectorized.

    Returns None when the DataValues do not all share one fixed layout (a string, an array, a
    status on some values but not others...): the caller decodes those with asyncua.
    """
    raw = np.frombuffer(body, dtype=np.uint8)
    if len(raw) < 4:
        return None
    n = int(raw[:4].view("<i4")[0])
    if n <= 0:
        return ReadColumns(np.zeros(0), np.zeros(0, np.uint32), np.zeros(0, np.int64)) if n == 0 else None
    if len(raw) < 5:
        return None
    mask = int(raw[4])
    if mask & ~0x0F or not mask & 0x01:  # picoseconds, or no value: not the simple layout
        return None
    vtype = int(raw[5]) if len(raw) > 5 else -1
    if vtype not in _VARIANT_DTYPE:  # an array, a string, a structure...
        return None
    fields: list[tuple[str, str]] = [("mask", "u1"), ("vtype", "u1"), ("value", _VARIANT_DTYPE[vtype])]
    if mask & 0x02:
        fields.append(("status", "<u4"))
    if mask & 0x04:
        fields.append(("source", "<i8"))
    if mask & 0x08:
        fields.append(("server", "<i8"))
    dtype = np.dtype(fields)  # packed: no alignment
    if len(raw) < 4 + n * dtype.itemsize:
        return None
    rec = np.frombuffer(body, dtype=dtype, count=n, offset=4)
    if not ((rec["mask"] == mask).all() and (rec["vtype"] == vtype).all()):
        return None
    values = rec["value"].astype(np.float64)
    codes = rec["status"].astype(np.uint32) if mask & 0x02 else np.zeros(n, np.uint32)
    ts = np.zeros(n, np.int64)
    for name in ("server", "source"):  # the source time wins where both are there
        if name in rec.dtype.names:  # type: ignore[operator]
            ticks = rec[name].astype(np.int64)
            ts = np.where(ticks > 0, ticks // 10 - _FILETIME_UNIX_US, ts)
    return ReadColumns(values, codes, ts)


class OpcUaGatewayImpl(Gateway):
    protocol = "opcua"

    def __init__(self, config: OpcUaGateway, tag_index: TagIndex, quarantine: Quarantine) -> None:
        super().__init__(config.id, config.stale_after_s, quarantine)
        self.config = config
        missing = [t.tag for t in config.tags if t.tag not in tag_index]
        if missing:
            raise GatewayConfigError(f"gateway {config.id}: tags not in the tag index: {', '.join(missing[:10])}")
        self.keys = tag_index.keys_of(t.tag for t in config.tags)
        self._last_ts = np.full(len(self.keys), np.iinfo(np.int64).min, dtype=np.int64)  # per tag
        self._devices[SERVER_DEVICE] = DeviceStats(SERVER_DEVICE)
        self._device_keys[SERVER_DEVICE] = self.keys.copy()
        self._lost = asyncio.Event()
        self._lost_reason = ""
        self.subscriptions = 0  # live subscriptions (health/tests)
        self.monitored_items = 0
        self.read_requests_per_poll = 0  # poll mode: Read requests per cycle
        self.server_max_nodes_per_read = 0  # the server's OperationLimits (0: none given)

    # ------------------------------------------------------------ reconnect loop

    async def _run(self) -> None:
        stats = self._devices[SERVER_DEVICE]
        backoff = Backoff(self.config.backoff)
        reported = False
        while True:
            stats.state = ConnectionState.CONNECTING
            try:
                await self._session(stats, backoff)
            except (_Lost, _Fatal) as e:
                kind = "config" if isinstance(e, _Fatal) else "connection"
                stats.error(kind, str(e))
                if stats.state is ConnectionState.CONNECTED or not reported:
                    self._log.warning("%s: no session: %s", self.config.endpoint, e)
                    self.emit_comm_loss(SERVER_DEVICE)
                    reported = True
            stats.state = ConnectionState.BACKOFF
            self.subscriptions = self.monitored_items = 0
            await backoff.wait()

    async def _session(self, stats: DeviceStats, backoff: Backoff) -> None:
        client = await self._translate(self._make_client(), "configure client")
        self._lost.clear()

        async def on_lost(exc: Exception) -> None:
            self._lose(f"connection lost: {exc!r}")

        client.connection_lost_callback = on_lost
        try:
            await self._translate(asyncio.wait_for(client.connect(), self.config.timeout_s * 2), "connect")
            try:
                nodes = await self._translate(self._resolve(client), "resolve nodes")
                if self.config.mode == "subscribe":
                    await self._translate(self._subscribe(client, nodes), "create subscriptions")
                stats.connected()
                backoff.reset()
                if stats.reconnects:
                    self._log.info("%s: session re-established", self.config.endpoint)
                if self.config.mode == "poll":
                    poll = asyncio.create_task(self._translate(self._poll(client, nodes, stats), "read"))
                    lost = asyncio.create_task(self._lost.wait())
                    try:
                        await asyncio.wait({poll, lost}, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        for t in (poll, lost):
                            t.cancel()
                        await asyncio.wait({poll, lost})
                    if not poll.cancelled():
                        error = poll.exception()
                        if error is not None:
                            raise error
                else:
                    await self._lost.wait()
                raise _Lost(self._lost_reason)
            finally:
                from asyncua.ua.uaerrors import UaError

                # the session is gone or going: closing it is a courtesy to the server
                with contextlib.suppress(UaError, OSError, TimeoutError, ConnectionError):
                    await asyncio.wait_for(client.disconnect(), 2.0)
        finally:
            client.connection_lost_callback = None

    def _lose(self, reason: str) -> None:
        if not self._lost.is_set():
            self._lost_reason = reason
            self._lost.set()

    async def _translate(self, aw: Any, what: str) -> Any:
        """Await ``aw``; the one place asyncua / socket errors become _Lost or _Fatal."""
        ua = _ua()
        from asyncua.ua.uaerrors import UaError, UaStatusCodeError

        fatal_codes = {
            ua.StatusCodes.BadIdentityTokenInvalid,
            ua.StatusCodes.BadIdentityTokenRejected,
            ua.StatusCodes.BadUserAccessDenied,
            ua.StatusCodes.BadSecurityPolicyRejected,
            ua.StatusCodes.BadCertificateInvalid,
            ua.StatusCodes.BadCertificateUntrusted,
            ua.StatusCodes.BadSecurityChecksFailed,
        }
        try:
            return await aw
        except (_Lost, _Fatal, GatewayConfigError):
            raise
        except UaStatusCodeError as e:
            code = getattr(e, "code", None)
            cls = _Fatal if code in fatal_codes else _Lost
            raise cls(f"{what}: {e}") from e
        except (TimeoutError, UaError, OSError, ConnectionError, EOFError) as e:
            raise _Lost(f"{what}: {e!r}") from e
        except (ValueError, KeyError) as e:
            raise _Fatal(f"{what}: {e!r}") from e

    async def _make_client(self) -> Any:
        ua = _ua()
        from asyncua.client.client import Client
        from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256

        c = self.config
        client = Client(c.endpoint, timeout=c.timeout_s, watchdog_intervall=max(1.0, c.timeout_s / 2))
        client.session_timeout = 60_000
        sec = c.security
        client.application_uri = sec.application_uri
        if sec.username:
            client.set_user(sec.username)
            if sec.password_env:
                client.set_password(os.environ.get(sec.password_env, ""))
        if sec.policy is OpcUaSecurityPolicy.BASIC256SHA256:
            mode = (
                ua.MessageSecurityMode.Sign
                if sec.mode is OpcUaSecurityMode.SIGN
                else ua.MessageSecurityMode.SignAndEncrypt
            )
            assert sec.certificate is not None and sec.private_key is not None
            await client.set_security(
                SecurityPolicyBasic256Sha256,
                certificate=str(sec.certificate),
                private_key=str(sec.private_key),
                server_certificate=str(sec.server_certificate) if sec.server_certificate else None,
                mode=mode,
            )
        return client

    async def _resolve(self, client: Any) -> list[Any]:
        from asyncua.ua.uaerrors import UaError

        ua = _ua()

        ns: int | None = None
        if self.config.namespace is not None:
            try:
                ns = await client.get_namespace_index(self.config.namespace)
            except ValueError:
                raise _Fatal(f"server has no namespace {self.config.namespace!r}") from None
        nodes = []
        for t in self.config.tags:
            text = t.node if t.node.startswith(("ns=", "nsu=")) or ns is None else f"ns={ns};{t.node}"
            try:
                nodes.append(client.get_node(ua.NodeId.from_string(text)))
            except (ValueError, UaError) as e:
                raise _Fatal(f"tag {t.tag}: bad node id {t.node!r}: {e}") from None
        return nodes

    # ------------------------------------------------------------ subscriptions

    def _filter(self, deadband: Deadband | None) -> Any:
        ua = _ua()

        db = deadband or self.config.deadband
        if db.type == "none":
            return None
        f = ua.DataChangeFilter()
        f.Trigger = ua.DataChangeTrigger.StatusValue
        f.DeadbandType = 1 if db.type == "absolute" else 2
        f.DeadbandValue = float(db.value)
        return f

    async def _subscribe(self, client: Any, nodes: list[Any]) -> None:
        ua = _ua()

        c = self.config
        stats = self._devices[SERVER_DEVICE]
        n = len(nodes)
        for part in _chunks(n, c.max_items_per_subscription):
            params = ua.CreateSubscriptionParameters()
            params.RequestedPublishingInterval = c.publishing_interval_ms
            params.RequestedLifetimeCount = 10000
            # a quiet subscription (nothing changes) still answers with keep-alives, at least three
            # per stale_after_s, so stable values never look like a lost device
            params.RequestedMaxKeepAliveCount = max(1, int(c.stale_after_s * 1000 / 3 / c.publishing_interval_ms))
            params.MaxNotificationsPerPublish = 0  # no limit
            params.PublishingEnabled = True
            params.Priority = 0
            sub = _Subscription(client.uaclient.session, params, self, stats)
            await sub.init()
            self.subscriptions += 1
            for chunk in _chunks(part.stop - part.start, c.create_chunk):
                lo, hi = part.start + chunk.start, part.start + chunk.stop
                requests = []
                for i in range(lo, hi):
                    rv = ua.ReadValueId()
                    rv.NodeId = nodes[i].nodeid
                    rv.AttributeId = ua.AttributeIds.Value
                    mp = ua.MonitoringParameters()
                    mp.ClientHandle = i  # the index of the tag: notifications map back with one take
                    mp.SamplingInterval = c.sampling_interval_ms
                    mp.QueueSize = 10  # keep changes between publishes instead of only the last
                    mp.DiscardOldest = True
                    flt = self._filter(c.tags[i].deadband)
                    if flt is not None:
                        mp.Filter = flt
                    mir = ua.MonitoredItemCreateRequest()
                    mir.ItemToMonitor = rv
                    mir.MonitoringMode = ua.MonitoringMode.Reporting
                    mir.RequestedParameters = mp
                    requests.append(mir)
                results = await sub.create_monitored_items(requests)
                failed = [(lo + j, r) for j, r in enumerate(results) if isinstance(r, ua.StatusCode)]
                self.monitored_items += len(results) - len(failed)
                for i, code in failed:
                    stats.error("node")
                    self.quarantine.reject(
                        Reason.UNMAPPED, c.tags[i].node, f"tag {c.tags[i].tag}: cannot monitor: {code}"
                    )
                if failed:
                    idx = np.array([i for i, _ in failed])
                    codes = np.array([code.value for _, code in failed], dtype=np.uint32)
                    self.buffer.put(
                        ReadingBatch.from_columns(
                            self.keys[idx], now_us(), np.full(len(idx), np.nan), status_to_quality(codes)
                        )
                    )

    def on_datachange(self, stats: DeviceStats, items: list[Any]) -> None:
        """Monitored item notifications of one publish -> one batch."""
        n = len(items)
        received = now_us()
        handles = np.fromiter((it.ClientHandle for it in items), dtype=np.int64, count=n)
        dvs = [it.Value for it in items]
        self._emit_datavalues(stats, handles, dvs, received)

    def _emit_datavalues(
        self, stats: DeviceStats, handles: npt.NDArray[np.int64], dvs: list[Any], received: int
    ) -> None:
        n = len(dvs)
        if n == 0:
            return
        raw = [dv.Value.Value if dv.Value is not None else None for dv in dvs]
        codes = np.fromiter(
            (dv.StatusCode.value if dv.StatusCode is not None else 0 for dv in dvs), dtype=np.uint32, count=n
        )
        ts = np.fromiter(
            (_dt_us(dv.SourceTimestamp or dv.ServerTimestamp, received) for dv in dvs), dtype=np.int64, count=n
        )
        arr = np.array(raw) if n else np.zeros(0)
        if arr.dtype.kind in "fiub" and arr.ndim == 1:  # all numbers or booleans: the fast path
            values = arr.astype(np.float64)
            typed = np.ones(n, dtype=bool)
        else:
            typed = np.array([isinstance(v, int | float) for v in raw], dtype=bool)
            values = np.array([float(v) if isinstance(v, int | float) else np.nan for v in raw], dtype=np.float64)
        present = np.array([v is not None for v in raw], dtype=bool)
        self._emit_columns(stats, handles, values, typed, present, codes, ts, lambda i: raw[i])

    def _emit_columns(
        self,
        stats: DeviceStats,
        handles: npt.NDArray[np.int64],
        values: npt.NDArray[np.float64],
        typed: npt.NDArray[np.bool_],
        present: npt.NDArray[np.bool_],
        codes: npt.NDArray[np.uint32],
        ts: npt.NDArray[np.int64],
        raw_at: Any,
    ) -> None:
        valid = (handles >= 0) & (handles < len(self.keys))
        quality = status_to_quality(codes)
        good_status = quality < Quality.BAD
        wrong = valid & good_status & ~typed & present
        if wrong.any():
            i = int(np.flatnonzero(wrong)[0])
            self.quarantine.reject(
                Reason.WRONG_TYPE,
                self.config.tags[int(handles[i])].node,
                f"value {raw_at(i)!r} is not a number",
                count=int(wrong.sum()),
            )
        nonfinite = valid & good_status & typed & ~np.isfinite(values)
        if nonfinite.any():
            i = int(np.flatnonzero(nonfinite)[0])
            self.quarantine.reject(
                Reason.NON_FINITE,
                self.config.tags[int(handles[i])].node,
                "NaN or infinite value",
                count=int(nonfinite.sum()),
            )
        # bad status: kept as a bad-quality reading (NaN); bad input from a good status: quarantined
        keep = valid & ~wrong & ~nonfinite
        # a sample already delivered (the same source time: a poll of an unchanged value, the
        # current value re-sent on a new subscription after a network glitch) is not a new reading.
        # Only the same time: an older one (a server clock set back) is kept, never silenced.
        h = np.where(valid, handles, 0)
        keep &= ts != self._last_ts[h]
        values[~good_status] = np.nan
        if not keep.all():
            handles, ts, values, quality = handles[keep], ts[keep], values[keep], quality[keep]
        if len(handles):
            np.maximum.at(self._last_ts, handles, ts)
            self.emit(stats, ReadingBatch(self.keys[handles], ts, values, quality))

    # ------------------------------------------------------------ polling

    async def _poll(self, client: Any, nodes: list[Any], stats: DeviceStats) -> None:
        ua = _ua()

        period = self.config.poll_interval_ms / 1000.0
        chunk = await self._read_chunk(client)
        all_handles = np.arange(len(nodes), dtype=np.int64)
        requests = []
        for part in _chunks(len(nodes), chunk):  # built once per session, sent every cycle
            params = ua.ReadParameters()
            params.TimestampsToReturn = ua.TimestampsToReturn.Both
            params.NodesToRead = [
                ua.ReadValueId(NodeId=n.nodeid, AttributeId=ua.AttributeIds.Value) for n in nodes[part]
            ]
            requests.append((all_handles[part], params))
        self.read_requests_per_poll = len(requests)
        due = time.monotonic()
        while True:
            received = now_us()
            results = await asyncio.gather(*(self._read(client, params) for _, params in requests))
            stats.alive()
            for (handles, _), result in zip(requests, results, strict=True):
                if isinstance(result, ReadColumns):
                    n = len(result.values)
                    if n != len(handles):
                        raise _Lost(f"Read returned {n} values for {len(handles)} nodes")
                    ts = np.where(result.ts_us != 0, result.ts_us, received)
                    ones = np.ones(n, dtype=bool)
                    self._emit_columns(stats, handles, result.values, ones, ones, result.codes, ts, lambda i: None)
                else:
                    self._emit_datavalues(stats, handles, result, received)
            due += period
            now = time.monotonic()
            if due < now:
                stats.error("overrun")
                due = now + period
            await asyncio.sleep(due - now if due > now else 0)

    async def _read_chunk(self, client: Any) -> int:
        """Nodes per Read request: ``read_chunk``, capped by the server's MaxNodesPerRead (0: no limit)."""
        ua = _ua()
        limit = 0
        try:
            node = client.get_node(ua.NodeId(ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead))
            limit = int(await node.read_value() or 0)
        except Exception as e:  # an optional node: a server without OperationLimits has no limit to tell
            self._log.debug("no MaxNodesPerRead from the server: %r", e)
        self.server_max_nodes_per_read = limit
        chunk = self.config.read_chunk
        return min(chunk, limit) if limit > 0 else chunk

    async def _read(self, client: Any, params: Any) -> ReadColumns | list[Any]:
        """One Read request; the response decoded with numpy when its values share one layout."""
        ua = _ua()
        from asyncua.ua.ua_binary import nodeid_from_binary, struct_from_binary

        session = getattr(client.uaclient, "session", None)
        send = getattr(session, "_send_request", None)
        if send is None:  # an asyncua without the raw request path: decoded by asyncua
            results: list[Any] = await client.uaclient.read(params)
            return results
        request = ua.ReadRequest()
        request.Parameters = params
        data = await send(request)
        body = data.copy()
        nodeid_from_binary(body)  # the response's type id
        header = struct_from_binary(ua.ResponseHeader, body)
        header.ServiceResult.check()
        rest = bytes(body)
        fast = decode_read_results(rest)
        if fast is not None:
            return fast
        response = struct_from_binary(ua.ReadResponse, data)
        response.ResponseHeader.ServiceResult.check()
        decoded: list[Any] = response.Results
        return decoded


def _subscription_class() -> type[Any]:
    from asyncua.common.subscription import Subscription

    return Subscription  # type: ignore[no-any-return]


class _Subscription(_subscription_class()):  # type: ignore[misc]
    """An asyncua Subscription whose publish results go straight to the gateway."""

    def __init__(self, session: Any, params: Any, gateway: OpcUaGatewayImpl, stats: DeviceStats) -> None:
        super().__init__(session, params, handler=_NoHandler())
        self._gateway = gateway
        self._stats = stats

    async def publish_callback(self, publish_result: Any) -> None:
        ua = _ua()

        self.last_publish_at = time.monotonic()
        self._stats.alive()
        data = publish_result.NotificationMessage.NotificationData
        if data is None:
            return
        for notif in data:
            if isinstance(notif, ua.DataChangeNotification):
                self._gateway.on_datachange(self._stats, notif.MonitoredItems)
            elif isinstance(notif, ua.StatusChangeNotification) and not notif.Status.is_good():
                self._gateway._lose(f"subscription status {notif.Status}")


class _NoHandler:
    """Placeholder: notifications never reach asyncua's handler dispatch (see publish_callback)."""
