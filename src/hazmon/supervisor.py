"""Supervision of the long-running tasks: a task that ends is restarted, and its failure is seen.

Every loop the runtime keeps alive (each gateway's pump, the forwarder's drain, the alarm-journal
writer, the clock, maintenance) runs as a *component* of a ``Supervisor``::

    sup = Supervisor(on_change=alarm)            # on_change(component) when it fails / recovers
    sup.start("gateway.demo-modbus", pump, essential=True, group="sources")
    ...
    await sup.stop("sources")                    # cancel a group (or everything), in that order

A component's coroutine is expected to run until cancelled. If it raises, or returns, it **ended
unexpectedly**: the failure is logged with its traceback, counted (``failures``), the component is
marked not ``ok`` (``on_change`` is called: the runtime raises ``hazmon.<component>:comm.LOSS``), and
it is started again after a capped exponential backoff (``restarts``). Once a restarted component has
run ``stable_s`` without failing it is ``ok`` again (``on_change`` once more: the alarm clears) and
the backoff starts over. A component that fails again before that keeps its alarm and waits longer.

Cancellation is never swallowed: stopping a group cancels its tasks and waits for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum

from hazmon.backoff import Backoff, BackoffConfig

log = logging.getLogger(__name__)

DEFAULT_RESTART = BackoffConfig(initial_s=1.0, max_s=60.0, jitter=0.1)
DEFAULT_STABLE_S = 10.0


class ComponentState(StrEnum):
    RUNNING = "running"
    RESTARTING = "restarting"  # ended unexpectedly; waiting for its restart
    STOPPED = "stopped"


@dataclass
class Component:
    """One supervised task, as health checks and metrics see it."""

    name: str
    run: Callable[[], Awaitable[None]]
    essential: bool  # while not running, the service is down (``/healthz`` answers 503)
    group: str
    state: ComponentState = ComponentState.RUNNING
    ok: bool = True  # False from a failure until the restarted task has run ``stable_s``
    failures: int = 0  # times it ended unexpectedly
    restarts: int = 0
    last_error: str | None = None
    last_failure_us: int | None = None  # Unix µs
    running_since: float = field(default_factory=time.monotonic)  # monotonic, of the current run
    restart_in_s: float | None = None  # while restarting: the backoff delay chosen
    task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self.state is ComponentState.RUNNING

    def describe(self) -> str | None:
        """What is wrong, in words; None when nothing is."""
        if self.state is ComponentState.RESTARTING:
            return (
                f"ended unexpectedly ({self.last_error}); restart {self.restarts + 1} in {self.restart_in_s or 0:.1f} s"
            )
        if self.state is ComponentState.STOPPED:
            return "stopped"
        if not self.ok:
            return f"restarted {self.restarts} time(s) after: {self.last_error}"
        return None


class Supervisor:
    def __init__(
        self,
        *,
        restart: BackoffConfig | None = None,
        stable_s: float = DEFAULT_STABLE_S,
        on_change: Callable[[Component], None] | None = None,
    ) -> None:
        self.restart = restart or DEFAULT_RESTART
        self.stable_s = stable_s
        self.on_change = on_change
        self._components: dict[str, Component] = {}

    def start(
        self, name: str, run: Callable[[], Awaitable[None]], *, essential: bool = False, group: str = "default"
    ) -> Component:
        """Run ``run()`` as a supervised component named ``name`` (unique)."""
        if name in self._components and self._components[name].task is not None:
            raise ValueError(f"component {name!r} is already supervised")
        c = Component(name, run, essential, group)
        self._components[name] = c
        c.task = asyncio.create_task(self._supervise(c), name=f"supervised {name}")
        return c

    def components(self) -> list[Component]:
        return list(self._components.values())

    def get(self, name: str) -> Component | None:
        return self._components.get(name)

    async def wait(self) -> None:
        """Until cancelled (a task to hold while the components run)."""
        await asyncio.Event().wait()

    async def stop(self, group: str | None = None) -> None:
        """Cancel the components of ``group`` (every component when None) and wait for them."""
        chosen = [c for c in self._components.values() if group is None or c.group == group]
        tasks = [c.task for c in chosen if c.task is not None]
        for t in tasks:
            t.cancel()
        try:
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await t
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise asyncio.CancelledError  # we are being cancelled ourselves: do not swallow it
        finally:
            for c in chosen:
                c.task = None
                c.state = ComponentState.STOPPED
                c.restart_in_s = None

    # ------------------------------------------------------------------ the loop

    def _changed(self, c: Component) -> None:
        if self.on_change is None:
            return
        try:
            self.on_change(c)
        except Exception:  # a broken observer must not stop the supervision
            log.exception("supervisor: reporting the state of %s failed", c.name)

    async def _supervise(self, c: Component) -> None:
        backoff = Backoff(self.restart)
        while True:
            c.state = ComponentState.RUNNING
            c.restart_in_s = None
            c.running_since = time.monotonic()
            error = await self._run_once(c, backoff)
            c.failures += 1
            c.last_error = error
            c.last_failure_us = time.time_ns() // 1000
            delay = backoff.next_delay()
            c.state = ComponentState.RESTARTING
            c.restart_in_s = delay
            log.error("%s ended unexpectedly (%s); restarting in %.1f s", c.name, error, delay)
            if c.ok:
                c.ok = False
                self._changed(c)
            await asyncio.sleep(delay)
            c.restarts += 1
            log.warning("%s: restart %d", c.name, c.restarts)

    async def _run_once(self, c: Component, backoff: Backoff) -> str:
        """Run the component once; returns why it ended (it never should)."""
        inner = asyncio.ensure_future(c.run())
        try:
            if not c.ok:
                done, _ = await asyncio.wait({inner}, timeout=self.stable_s)
                if not done:  # ran long enough after a restart: recovered
                    c.ok = True
                    backoff.reset()
                    log.info("%s: running again since %.0f s, recovered", c.name, self.stable_s)
                    self._changed(c)
            try:
                await asyncio.shield(inner)
            except asyncio.CancelledError:
                if inner.done():  # the component itself was cancelled, not us
                    return "cancelled from inside"
                raise
            if time.monotonic() - c.running_since >= self.stable_s:
                backoff.reset()
            return "returned"
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.error("%s failed", c.name, exc_info=e)
            if time.monotonic() - c.running_since >= self.stable_s:
                backoff.reset()
            return _reason(e)
        finally:
            if not inner.done():
                inner.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await inner


def _reason(e: BaseException) -> str:
    """An exception in words; a task group's single error unwrapped."""
    while isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1:
        e = e.exceptions[0]
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
