"""The supervisor on its own: a task that raises or returns is restarted with backoff, reported once
when it fails and once when it has run stably again; stopping cancels and never swallows a cancel."""

from __future__ import annotations

import asyncio
import time

import pytest

from hazmon.backoff import BackoffConfig
from hazmon.supervisor import Component, ComponentState, Supervisor

FAST = BackoffConfig(initial_s=0.05, max_s=0.2, jitter=0.0)


async def until(cond: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_a_task_that_raises_then_works_is_reported_failed_then_recovered() -> None:
    changes: list[tuple[str, bool, str | None]] = []
    runs = 0

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs <= 2:
            raise ConnectionResetError("peer went away")
        await asyncio.Event().wait()

    sup = Supervisor(restart=FAST, stable_s=0.2, on_change=lambda c: changes.append((c.name, c.ok, c.last_error)))
    c = sup.start("flaky", flaky, essential=True)
    await until(lambda: c.ok and c.restarts == 2)
    assert changes == [
        ("flaky", False, "ConnectionResetError: peer went away"),
        ("flaky", True, "ConnectionResetError: peer went away"),
    ]
    assert (c.failures, c.state) == (2, ComponentState.RUNNING)
    await sup.stop()
    assert c.state is ComponentState.STOPPED and c.task is None


async def test_a_task_that_returns_ended_unexpectedly() -> None:
    seen: list[Component] = []

    async def quits() -> None:
        return None

    sup = Supervisor(restart=FAST, stable_s=10.0, on_change=seen.append)
    c = sup.start("quits", quits)
    await until(lambda: c.failures >= 3)
    assert c.last_error == "returned" and not c.ok and len(seen) == 1  # reported once, not per failure
    assert c.describe() is not None
    await sup.stop()


async def test_a_task_group_error_is_named_by_its_cause() -> None:
    async def grouped() -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(asyncio.sleep(10))
            raise OSError("disk gone")

    sup = Supervisor(restart=FAST)
    c = sup.start("grouped", grouped)
    await until(lambda: c.failures >= 1)
    assert c.last_error == "OSError: disk gone"
    await sup.stop()


async def test_stop_cancels_only_its_group_and_a_cancel_of_the_caller_is_not_swallowed() -> None:
    async def forever() -> None:
        await asyncio.Event().wait()

    sup = Supervisor(restart=FAST)
    a = sup.start("a", forever, group="sources")
    b = sup.start("b", forever, group="sinks")
    await asyncio.sleep(0.05)
    await sup.stop("sources")
    assert a.state is ComponentState.STOPPED and b.state is ComponentState.RUNNING

    async def stubborn() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0.2)  # takes a while to stop

    sup.start("c", stubborn, group="sinks")
    await asyncio.sleep(0.05)
    stopper = asyncio.create_task(sup.stop("sinks"))
    await asyncio.sleep(0.05)
    stopper.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopper
    await sup.stop()
