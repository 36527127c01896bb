"""Hot-path metrics: histograms observed as batches flow, in their own prometheus-client registry.

- ``BATCH_SIZE``: readings per batch from the gateways;
- ``ENGINE_SECONDS``: engine time per batch;
- ``DB_WRITE_SECONDS``: time per write to the database (wrap the store in ``TimedWriter``).

Everything else on ``/metrics`` is read from the runtime when scraped (``hazmon.api.exposition``).
Imports nothing of hazmon but the reading batch, so every stage may observe.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, disable_created_metrics

from hazmon.reading import ReadingBatch

disable_created_metrics()  # type: ignore[no-untyped-call] # no *_created series: scrapers here take counters as they are
HOT_PATH = CollectorRegistry(auto_describe=True)

BATCH_SIZE = Histogram(
    "hazmon_batch_readings",
    "Readings per batch received from the gateways",
    buckets=(1, 10, 100, 1_000, 10_000, 100_000, 1e6),
    registry=HOT_PATH,
)
ENGINE_SECONDS = Histogram(
    "hazmon_engine_batch_seconds",
    "Rule-engine time per batch",
    buckets=(1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
    registry=HOT_PATH,
)
DB_WRITE_SECONDS = Histogram(
    "hazmon_db_write_seconds",
    "Time per readings write to the database",
    buckets=(1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
    registry=HOT_PATH,
)


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
