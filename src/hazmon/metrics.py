"""Prometheus metrics in the text exposition format (version 0.0.4), without extra dependencies.

Most figures are read from the runtime when scraped (``render``). Three histograms are observed
on the hot path, each observation a bisect and two additions:

- ``BATCH_SIZE``: readings per batch from the gateways;
- ``ENGINE_SECONDS``: engine time per batch;
- ``DB_WRITE_SECONDS``: time per write to the database (wrap the store in ``TimedWriter``).
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from hazmon.reading import ReadingBatch

if TYPE_CHECKING:
    from hazmon.runtime import Runtime

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, str] | None) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items()) + "}"


def _num(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if float(v).is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(float(v))


class Exposition:
    """Builds the text: one HELP/TYPE header per family, then its samples."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._families: set[str] = set()

    def family(self, name: str, kind: str, help_text: str) -> None:
        if name in self._families:
            return
        self._families.add(name)
        self.lines.append(f"# HELP {name} {_escape(help_text)}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, value: float, labels: dict[str, str] | None = None) -> None:
        self.lines.append(f"{name}{_labels(labels)} {_num(value)}")

    def metric(self, name: str, kind: str, help_text: str, value: float, labels: dict[str, str] | None = None) -> None:
        self.family(name, kind, help_text)
        self.sample(name, value, labels)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


class Histogram:
    def __init__(self, name: str, help_text: str, buckets: Sequence[float]) -> None:
        self.name = name
        self.help = help_text
        self.bounds = sorted(float(b) for b in buckets)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def render(self, out: Exposition) -> None:
        out.family(self.name, "histogram", self.help)
        cumulative = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            cumulative += n
            out.sample(f"{self.name}_bucket", cumulative, {"le": _num(bound)})
        out.sample(f"{self.name}_bucket", self.count, {"le": "+Inf"})
        out.sample(f"{self.name}_sum", self.sum)
        out.sample(f"{self.name}_count", self.count)

    def reset(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0


BATCH_SIZE = Histogram(
    "hazmon_batch_readings", "Readings per batch received from the gateways", (1, 10, 100, 1_000, 10_000, 100_000, 1e6)
)
ENGINE_SECONDS = Histogram(
    "hazmon_engine_batch_seconds",
    "Rule-engine time per batch",
    (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
DB_WRITE_SECONDS = Histogram(
    "hazmon_db_write_seconds",
    "Time per readings write to the database",
    (1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
)
HISTOGRAMS = (BATCH_SIZE, ENGINE_SECONDS, DB_WRITE_SECONDS)


class TimedWriter:
    """Wraps a store's ``write`` to observe DB_WRITE_SECONDS (failed writes are observed too)."""

    def __init__(self, store: Any) -> None:
        self.store = store

    async def write(self, batch: ReadingBatch) -> int:
        t = time.perf_counter()
        try:
            n: int = await self.store.write(batch)
            return n
        finally:
            DB_WRITE_SECONDS.observe(time.perf_counter() - t)


def _by(items: Iterable[tuple[str, str]]) -> Counter[tuple[str, str]]:
    return Counter(items)


def render(runtime: Runtime) -> str:
    """The whole exposition for a runtime."""
    from hazmon.alarm import AlarmState, Priority

    out = Exposition()
    stats = runtime.stats
    out.metric("hazmon_readings_total", "counter", "Readings received from the gateways", stats.readings)
    out.metric("hazmon_batches_total", "counter", "Reading batches received from the gateways", stats.batches)
    out.metric("hazmon_alarm_events_total", "counter", "Alarm events (transitions) produced", stats.events)
    out.metric(
        "hazmon_journal_failures_total", "counter", "Failed alarm-journal writes (retried)", stats.journal_failures
    )
    rate = sum(d.readings_per_s for gw in runtime.gateways for d in gw.health().devices.values())
    out.metric("hazmon_readings_per_second", "gauge", "Readings per second over the last ~5 s (all gateways)", rate)
    for hist in HISTOGRAMS:
        hist.render(out)

    engine = runtime.engine
    out.metric("hazmon_engine_running", "gauge", "1 when a rule engine runs", 1 if engine is not None else 0)
    if engine is not None:
        counts = _by((str(s.state), str(s.priority)) for s in engine.current())
        out.family("hazmon_alarms", "gauge", "Alarms not in the normal state, by state and priority")
        for state in AlarmState:
            if state is AlarmState.NORMAL:
                continue
            for prio in Priority:
                out.sample("hazmon_alarms", counts.get((str(state), str(prio)), 0), {"state": state, "priority": prio})
        out.metric("hazmon_engine_tags", "gauge", "Tags evaluated by the rule engine", engine.n_tags)
        for key, value in sorted(engine.stats.items()):
            out.metric(f"hazmon_engine_{key}_total", "counter", f"Rule engine: {key.replace('_', ' ')}", value)

    out.family("hazmon_gateway_up", "gauge", "1 when every device of the gateway is connected")
    for gw in runtime.gateways:
        h = gw.health()
        out.sample("hazmon_gateway_up", 1 if h.connected else 0, {"gateway": h.id, "protocol": h.protocol})
    device_families = (
        ("hazmon_device_connected", "gauge", "1 when the device is connected"),
        ("hazmon_device_stale", "gauge", "1 when the device has sent no data for longer than allowed"),
        ("hazmon_device_readings_total", "counter", "Readings delivered by the device"),
        ("hazmon_device_reconnects_total", "counter", "Reconnections to the device"),
        ("hazmon_device_errors_total", "counter", "Errors talking to the device, by kind"),
    )
    for name, kind, help_text in device_families:
        out.family(name, kind, help_text)
    for gw in runtime.gateways:
        h = gw.health()
        for d in h.devices.values():
            labels = {"gateway": h.id, "device": d.id}
            out.sample("hazmon_device_connected", 1 if d.connected else 0, labels)
            out.sample("hazmon_device_stale", 1 if d.stale else 0, labels)
            out.sample("hazmon_device_readings_total", d.readings_total, labels)
            out.sample("hazmon_device_reconnects_total", d.reconnects, labels)
            for kind_name, n in sorted(d.errors.items()):
                out.sample("hazmon_device_errors_total", n, {**labels, "kind": kind_name})
    out.family("hazmon_gateway_dropped_readings_total", "counter", "Readings a gateway dropped (buffer full)")
    for gw in runtime.gateways:
        h = gw.health()
        out.sample("hazmon_gateway_dropped_readings_total", h.dropped_readings, {"gateway": h.id})

    fwd = runtime.forwarder
    if fwd is not None:
        f = fwd.stats()
        out.metric(
            "hazmon_spool_pending_batches", "gauge", "Batches in the disk spool not yet stored", f.pending_batches
        )
        out.metric(
            "hazmon_spool_pending_readings", "gauge", "Readings in the disk spool not yet stored", f.pending_readings
        )
        out.metric("hazmon_spool_bytes", "gauge", "Size of the disk spool", f.spool_bytes)
        out.metric(
            "hazmon_spool_oldest_pending_seconds",
            "gauge",
            "Age of the oldest batch not yet stored",
            f.oldest_pending_age_s or 0.0,
        )
        out.metric(
            "hazmon_store_available", "gauge", "1 when the database accepts writes", 1 if f.store_available else 0
        )
        out.metric("hazmon_stored_readings_total", "counter", "Readings stored in the database", f.stored_readings)
        out.metric("hazmon_dropped_readings_total", "counter", "Readings lost to a full spool", f.dropped_readings)
        out.metric("hazmon_store_outages_total", "counter", "Times the database became unavailable", f.outages)

    hub = runtime.hub
    out.metric("hazmon_live_clients", "gauge", "WebSocket clients subscribed", hub.clients)
    out.metric(
        "hazmon_live_clients_dropped_total",
        "counter",
        "WebSocket clients dropped as too slow",
        hub.stats.clients_dropped,
    )
    out.metric(
        "hazmon_live_events_total", "counter", "Alarm events published to the live hub", hub.stats.events_published
    )
    pool = runtime.db.pool
    out.metric("hazmon_db_pool_size", "gauge", "Database connections open", pool.get_size())
    out.metric("hazmon_db_pool_idle", "gauge", "Database connections idle", pool.get_idle_size())
    return out.text()
