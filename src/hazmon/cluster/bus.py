"""The message bus: NATS JetStream streams and consumers that join hazmon's stages across processes.

Streams (``ns`` is the namespace, ``hazmon`` unless configured; tests use their own):

- ``<NS>_READINGS`` on ``<ns>.readings.<partition>``: reading batches (``hazmon.cluster.codec``),
  partitioned by site (``partition_of``), each published with ``Nats-Msg-Id`` = the batch id, so a
  publish retried after a lost acknowledgement is stored once (JetStream's duplicate window);
- ``<NS>_EVENTS`` on ``<ns>.events.<site>``: alarm events as JSON, ``Nats-Msg-Id`` derived from the event
  itself, so an engine shard that replays a batch after a crash publishes nothing twice.

Consumers are durable pull consumers with explicit acknowledgement: an engine shard's consumer per
partition takes one message at a time (``max_ack_pending=1``: batches of a site are judged in order,
also after a restart), the writers share one consumer (a queue: each batch goes to one writer).

Partitioning is computed by the publisher (CRC-32 of the site id modulo the partition count), the
same function everywhere; it is what a server-side subject mapping with ``partition()`` would do, but
needs no server configuration.
"""

from __future__ import annotations

import contextlib
import zlib
from dataclasses import dataclass
from typing import Any

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

DUPLICATE_WINDOW_S = 300.0
ENGINE_ACK_WAIT_S = 5.0
WRITER_ACK_WAIT_S = 30.0


def partition_of(site_id: str, partitions: int) -> int:
    return zlib.crc32(site_id.encode()) % partitions


@dataclass(frozen=True)
class Subjects:
    namespace: str = "hazmon"

    @property
    def readings_stream(self) -> str:
        return f"{self.namespace.upper()}_READINGS"

    @property
    def events_stream(self) -> str:
        return f"{self.namespace.upper()}_EVENTS"

    def readings(self, partition: int | str) -> str:
        return f"{self.namespace}.readings.{partition}"

    def ops(self, partition: int | str) -> str:
        """Operator actions for the engine shard owning ``partition`` (core NATS request/reply)."""
        return f"{self.namespace}.ops.{partition}"

    def events(self, site: str) -> str:
        """A site id may hold dots (token separators of NATS subjects): they become ``_`` here; the
        event's payload names the site as it is."""
        return f"{self.namespace}.events.{site.replace('.', '_')}"


class Bus:
    """One NATS connection with its JetStream context and hazmon's streams."""

    def __init__(self, nc: Client, js: JetStreamContext, subjects: Subjects) -> None:
        self.nc = nc
        self.js = js
        self.subjects = subjects

    @classmethod
    async def connect(cls, url: str, namespace: str = "hazmon", **options: Any) -> Bus:
        options.setdefault("max_reconnect_attempts", -1)
        nc = await nats.connect(servers=[url], name="hazmon", **options)
        bus = cls(nc, nc.jetstream(timeout=10), Subjects(namespace))
        await bus.ensure_streams()
        return bus

    async def close(self) -> None:
        """Flush what was published and close (a drain would wait on the pull subscriptions' open fetches)."""
        with contextlib.suppress(Exception):
            await self.nc.flush(timeout=5)
        await self.nc.close()

    async def ensure_streams(self) -> None:
        s = self.subjects
        for name, subject in ((s.readings_stream, s.readings("*")), (s.events_stream, s.events("*"))):
            config = StreamConfig(
                name=name,
                subjects=[subject],
                retention=RetentionPolicy.LIMITS,
                storage=StorageType.FILE,
                duplicate_window=DUPLICATE_WINDOW_S,
                max_age=7 * 86400.0,
            )
            try:
                await self.js.stream_info(name)
            except NotFoundError:
                await self.js.add_stream(config)

    async def delete_streams(self) -> None:
        for name in (self.subjects.readings_stream, self.subjects.events_stream):
            with contextlib.suppress(NotFoundError):
                await self.js.delete_stream(name)

    async def publish(self, subject: str, payload: bytes, msg_id: str) -> None:
        await self.js.publish(subject, payload, headers={"Nats-Msg-Id": msg_id})

    async def pull(self, subject: str, durable: str, stream: str, *, ordered: bool, ack_wait_s: float) -> Any:
        """A durable pull subscription; ``ordered``: one message in flight at a time."""
        config = ConsumerConfig(
            durable_name=durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=ack_wait_s,
            max_ack_pending=1 if ordered else 1024,
            filter_subject=subject,
        )
        return await self.js.pull_subscribe(subject, durable=durable, stream=stream, config=config)
