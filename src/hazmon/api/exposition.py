"""``/metrics``: the Prometheus exposition of a runtime through prometheus-client.

``RuntimeCollector`` reads the runtime when scraped (pipeline counters, alarms by state and priority,
gateway and device health, the disk spool, the live hub, the database pool); the hot-path
histograms come from ``hazmon.metrics.HOT_PATH``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from hazmon.alarms.alarm import AlarmState, Priority
from hazmon.metrics import HOT_PATH
from hazmon.reading import now_us
from hazmon.regulator.uplink import Uplink
from hazmon.runtime import Runtime

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # the text format generate_latest writes


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_text, value=value)


def _counter(name: str, help_text: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, help_text, value=value)


class RuntimeCollector(Collector):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Metric]:
        runtime = self.runtime
        stats = runtime.stats
        yield _counter("hazmon_readings_total", "Readings received from the gateways", stats.readings)
        yield _counter("hazmon_batches_total", "Reading batches received from the gateways", stats.batches)
        yield _counter("hazmon_alarm_events_total", "Alarm events (transitions) produced", stats.events)
        yield _counter("hazmon_journal_failures_total", "Failed alarm-journal writes (retried)", stats.journal_failures)
        recorder = runtime.recorder
        yield _gauge("hazmon_journal_pending", "Alarm-journal items not written yet (kept on disk)", recorder.pending)
        yield _counter(
            "hazmon_journal_dead_letters_total",
            "Alarm-journal items refused for their content, kept in the dead-letter file",
            recorder.dead_lettered,
        )
        yield _counter(
            "hazmon_journal_spool_errors_total", "Writes of the alarm spool the disk refused", recorder.spool_errors
        )
        auth = CounterMetricFamily(
            "hazmon_auth_rejections_total", "API authentications refused, by reason", labels=["reason"]
        )
        for reason in ("missing", "malformed", "invalid", "throttled"):
            auth.add_metric([reason], runtime.auth_throttle.rejections[reason])
        yield auth
        rate = sum(d.readings_per_s for gw in runtime.gateways for d in gw.health().devices.values())
        yield _gauge("hazmon_readings_per_second", "Readings per second over the last ~5 s (all gateways)", rate)

        engine = runtime.engine
        yield _gauge("hazmon_engine_running", "1 when a rule engine runs", 1 if engine is not None else 0)
        if engine is not None:
            counts = Counter((str(s.state), str(s.priority)) for s in engine.current())
            alarms = GaugeMetricFamily(
                "hazmon_alarms", "Alarms not in the normal state, by state and priority", labels=["state", "priority"]
            )
            for state in AlarmState:
                if state is AlarmState.NORMAL:
                    continue
                for prio in Priority:
                    alarms.add_metric([str(state), str(prio)], counts.get((str(state), str(prio)), 0))
            yield alarms
            yield _gauge("hazmon_engine_tags", "Tags evaluated by the rule engine", engine.n_tags)
            for key, value in sorted(engine.stats.items()):
                yield _counter(f"hazmon_engine_{key}_total", f"Rule engine: {key.replace('_', ' ')}", value)

        healths = [gw.health() for gw in runtime.gateways]
        up = GaugeMetricFamily(
            "hazmon_gateway_up", "1 when every device of the gateway is connected", labels=["gateway", "protocol"]
        )
        dropped = CounterMetricFamily(
            "hazmon_gateway_dropped_readings", "Readings a gateway dropped (buffer full)", labels=["gateway"]
        )
        dev = ["gateway", "device"]
        connected = GaugeMetricFamily("hazmon_device_connected", "1 when the device is connected", labels=dev)
        stale = GaugeMetricFamily(
            "hazmon_device_stale", "1 when the device has sent no data for longer than allowed", labels=dev
        )
        readings = CounterMetricFamily("hazmon_device_readings", "Readings delivered by the device", labels=dev)
        reconnects = CounterMetricFamily("hazmon_device_reconnects", "Reconnections to the device", labels=dev)
        errors = CounterMetricFamily(
            "hazmon_device_errors", "Errors talking to the device, by kind", labels=[*dev, "kind"]
        )
        for h in healths:
            up.add_metric([h.id, h.protocol], 1 if h.connected else 0)
            dropped.add_metric([h.id], h.dropped_readings)
            for d in h.devices.values():
                labels = [h.id, d.id]
                connected.add_metric(labels, 1 if d.connected else 0)
                stale.add_metric(labels, 1 if d.stale else 0)
                readings.add_metric(labels, d.readings_total)
                reconnects.add_metric(labels, d.reconnects)
                for kind_name, n in sorted(d.errors.items()):
                    errors.add_metric([*labels, kind_name], n)
        yield from (up, connected, stale, readings, reconnects, errors, dropped)

        fwd = runtime.forwarder
        if fwd is not None:
            f = fwd.stats()
            yield _gauge("hazmon_spool_pending_batches", "Batches in the disk spool not yet stored", f.pending_batches)
            yield _gauge(
                "hazmon_spool_pending_readings", "Readings in the disk spool not yet stored", f.pending_readings
            )
            yield _gauge("hazmon_spool_bytes", "Size of the disk spool", f.spool_bytes)
            yield _gauge(
                "hazmon_spool_oldest_pending_seconds",
                "Age of the oldest batch not yet stored",
                f.oldest_pending_age_s or 0.0,
            )
            yield _gauge("hazmon_store_available", "1 when the database accepts writes", 1 if f.store_available else 0)
            yield _counter("hazmon_stored_readings_total", "Readings stored in the database", f.stored_readings)
            yield _counter(
                "hazmon_dropped_readings_total",
                "Readings that did not reach the database (all reasons)",
                f.dropped_readings,
            )
            lost = CounterMetricFamily(
                "hazmon_storage_dropped_readings",
                "Readings that did not reach the database, by reason (spool_full, spool_unwritable, "
                "spool_corrupt, refused_by_store: set aside in spool/rejected/)",
                labels=["reason"],
            )
            for reason, n in sorted(f.dropped_by_reason.items()):
                lost.add_metric([reason], n)
            yield lost
            yield _counter("hazmon_spool_errors_total", "Disk errors of the reading spool", f.spool_errors)
            yield _counter(
                "hazmon_spool_bypassed_readings_total",
                "Readings written straight to the database because the spool could not take them",
                f.bypassed_readings,
            )
            yield _counter("hazmon_store_outages_total", "Times the database became unavailable", f.outages)

        comps = runtime.supervisor.components()
        c_up = GaugeMetricFamily(
            "hazmon_component_up",
            "1 while a supervised task runs (and has not just been restarted)",
            labels=["component"],
        )
        c_restarts = CounterMetricFamily(
            "hazmon_component_restarts", "Restarts of a supervised task that ended unexpectedly", labels=["component"]
        )
        c_failures = CounterMetricFamily(
            "hazmon_component_failures", "Times a supervised task ended unexpectedly", labels=["component"]
        )
        for c in comps:
            c_up.add_metric([c.name], 1 if c.running and c.ok else 0)
            c_restarts.add_metric([c.name], c.restarts)
            c_failures.add_metric([c.name], c.failures)
        yield from (c_up, c_restarts, c_failures)
        yield _counter(
            "hazmon_ingest_failed_readings_total",
            "Readings of batches the hot path failed on (a bug; the gateway's pump was restarted)",
            stats.ingest_failed_readings,
        )

        if runtime.uplink is not None:
            yield from _uplink(runtime.uplink)

        hub = runtime.hub
        yield _gauge("hazmon_live_clients", "WebSocket clients subscribed", hub.clients)
        yield _counter(
            "hazmon_live_clients_dropped_total", "WebSocket clients dropped as too slow", hub.stats.clients_dropped
        )
        yield _counter("hazmon_live_events_total", "Alarm events published to the live hub", hub.stats.events_published)
        pool = runtime.db.pool
        yield _gauge("hazmon_db_pool_size", "Database connections open", pool.get_size())
        yield _gauge("hazmon_db_pool_idle", "Database connections idle", pool.get_idle_size())


def _uplink(uplink: Uplink) -> Iterator[Metric]:
    """The uplink to the provincial platform: its disk backlog and what was sent, refused or dropped."""
    q, st = uplink.queue, uplink.stats
    yield _gauge("hazmon_uplink_backlog_messages", "Uplink messages not yet acknowledged by the platform", q.backlog)
    yield _gauge(
        "hazmon_uplink_backlog_oldest_seconds",
        "Age of the oldest uplink message not yet acknowledged",
        q.oldest_age_s(now_us()) or 0.0,
    )
    yield _gauge("hazmon_uplink_queue_bytes", "Size of the uplink's disk queue", q.bytes)
    yield _gauge("hazmon_uplink_up", "1 when the last POST to the platform succeeded", 1 if st.up else 0)
    yield _counter("hazmon_uplink_sent_total", "Uplink messages acknowledged by the platform", st.sent)
    enq = CounterMetricFamily("hazmon_uplink_enqueued", "Uplink messages queued, by type", labels=["type"])
    for kind, n in sorted(st.enqueued.items()):
        enq.add_metric([kind], n)
    yield enq
    for name, help_text, counts in (
        ("hazmon_uplink_rejected", "Uplink messages the platform refused for good, by reason", st.rejected),
        ("hazmon_uplink_post_failures", "Failed uplink POSTs (retried), by reason", st.post_failures),
        ("hazmon_uplink_dropped", "Uplink messages dropped unsent (queue full)", q.dropped),
    ):
        family = CounterMetricFamily(name, help_text, labels=["reason"])
        for reason, n in sorted(counts.items()):
            family.add_metric([reason], n)
        yield family
    yield _counter("hazmon_uplink_heartbeats_total", "Heartbeats the platform acknowledged", st.heartbeats)


class _HotPath(Collector):
    def collect(self) -> Iterator[Metric]:
        yield from HOT_PATH.collect()


def render(runtime: Runtime) -> bytes:
    """The whole exposition for a runtime, in the Prometheus text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RuntimeCollector(runtime))
    registry.register(_HotPath())
    return generate_latest(registry)
