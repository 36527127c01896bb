"""Reconnect delays: capped exponential backoff with jitter.

``initial_s`` after the first failure, doubled after each further failure up to ``max_s``, each
delay spread by ± ``jitter`` (a fraction) so that many gateways do not reconnect in step after a
server restart. ``reset()`` after a connection that worked.
"""

from __future__ import annotations

import asyncio
import random

from pydantic import BaseModel, ConfigDict, Field


class BackoffConfig(BaseModel):
    """Reconnect delays: doubled after each failure from ``initial_s`` up to ``max_s``, with jitter."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    initial_s: float = Field(default=0.5, gt=0)
    max_s: float = Field(default=30.0, gt=0)
    jitter: float = Field(default=0.2, ge=0, le=1, description="± fraction of the delay")


class Backoff:
    def __init__(self, config: BackoffConfig | None = None, *, rng: random.Random | None = None) -> None:
        self.config = config or BackoffConfig()
        self._rng = rng or random.Random()
        self.failures = 0

    def next_delay(self) -> float:
        """The delay before the next attempt; counts one failure."""
        c = self.config
        base = min(c.max_s, c.initial_s * (2.0 ** min(self.failures, 60)))
        self.failures += 1
        spread = base * c.jitter
        return max(0.0, base + self._rng.uniform(-spread, spread))

    def reset(self) -> None:
        self.failures = 0

    async def wait(self) -> float:
        """Sleep for the next delay (cancellable); returns the delay slept."""
        delay = self.next_delay()
        await asyncio.sleep(delay)
        return delay
