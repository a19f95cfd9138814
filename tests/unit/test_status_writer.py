"""The status writer coalesces marks into one write per resource, and writes only what changed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from gadget_operator import status_writer
from gadget_operator.settings import StatusSettings
from gadget_operator.status_writer import Rendered, StatusWriter

WAIT = 5.0
"""Longest a test waits for something the writer should do promptly (only reached on failure)."""


class World:
    """What the writer renders from and writes to: per resource, the wanted and the current status."""

    def __init__(self) -> None:
        self.wanted: dict[str, dict[str, Any]] = {}
        self.current: dict[str, dict[str, Any]] = {}
        self.settled: dict[str, bool] = {}
        self.failures = 0
        """How many of the next writes fail."""
        self.attempts: list[str] = []
        self.written: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self.gate: asyncio.Event | None = None
        """When set to an event, every write waits for it."""
        self.in_flight = 0
        self.most_in_flight = 0
        self.write_started = asyncio.Event()

    def want(self, uid: str, phase: str, *, settled: bool = True) -> None:
        self.wanted[uid] = {"phase": phase}
        self.settled[uid] = settled

    def render(self, uid: str) -> Rendered | None:
        if uid not in self.wanted:
            return None
        wanted = dict(self.wanted[uid])
        return Rendered(lambda: wanted, self.current.get(uid, {}), settled=self.settled[uid])

    async def write(self, uid: str, new: dict[str, Any]) -> None:
        self.attempts.append(uid)
        self.write_started.set()
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate.wait()
            for _ in range(3):
                await asyncio.sleep(0)
            if self.failures:
                self.failures -= 1
                raise RuntimeError("the API server said no")
            self.current[uid] = new
            self.written.put_nowait((uid, new))
        finally:
            self.in_flight -= 1

    async def next_write(self, within: float = WAIT) -> tuple[str, dict[str, Any]]:
        async with asyncio.timeout(within):
            return await self.written.get()


@pytest.fixture
def world() -> World:
    return World()


def writer_for(world: World, *, settle_timeout: float = 60.0) -> StatusWriter:
    return StatusWriter(render=world.render, write=world.write, settings=StatusSettings(settle_timeout=settle_timeout))


@pytest.fixture
async def running() -> AsyncIterator[Callable[[StatusWriter], None]]:
    """Starts a writer's ``run`` loop; stopped when the test ends."""
    tasks: list[asyncio.Task[None]] = []

    def start(writer: StatusWriter) -> None:
        tasks.append(asyncio.create_task(writer.run()))

    yield start
    for task in tasks:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(result, asyncio.CancelledError) for result in results), results


# -- coalescing and change detection --------------------------------------------------------------------


async def test_several_marks_of_one_resource_make_one_write(world: World) -> None:
    writer = writer_for(world)
    world.want("a", "Running")
    for _ in range(5):
        writer.mark("a")
    await writer.flush()
    await writer.flush()
    assert world.attempts == ["a"]
    assert world.current == {"a": {"phase": "Running"}}
    assert writer.writes == 1


async def test_the_run_loop_writes_each_marked_resource_once(world: World, running: Any) -> None:
    writer = writer_for(world)
    world.want("a", "Running")
    world.want("b", "Pending")
    running(writer)
    for _ in range(3):
        writer.mark("a")
        writer.mark("b")
    first, second = await world.next_write(), await world.next_write()
    assert {first[0], second[0]} == {"a", "b"}
    # A third resource goes through the same loop: by then any duplicate of a or b would have shown.
    world.want("sentinel", "Running")
    writer.mark("sentinel")
    assert (await world.next_write())[0] == "sentinel"
    assert sorted(world.attempts) == ["a", "b", "sentinel"]


async def test_nothing_is_written_when_the_status_already_reads_the_same(world: World) -> None:
    writer = writer_for(world)
    world.want("a", "Running")
    world.current["a"] = {"phase": "Running"}
    writer.mark("a")
    await writer.flush()
    writer.mark("a")
    await writer.flush(force=True)
    assert world.attempts == []
    assert writer.writes == 0


async def test_a_resource_that_no_longer_renders_is_dropped(world: World) -> None:
    writer = writer_for(world)
    writer.mark("gone")
    await writer.flush(force=True)
    world.want("gone", "Running")  # it would render now, but nobody marked it again
    await writer.flush(force=True)
    assert world.attempts == []


async def test_a_mark_during_a_write_is_written_afterwards_with_the_newer_status(world: World, running: Any) -> None:
    writer = writer_for(world)
    world.gate = asyncio.Event()
    world.want("a", "Pending")
    running(writer)
    writer.mark("a")
    await asyncio.wait_for(world.write_started.wait(), WAIT)  # the first write waits at the gate
    world.want("a", "Running")
    writer.mark("a")
    world.gate.set()
    assert await world.next_write() == ("a", {"phase": "Pending"})
    assert await world.next_write() == ("a", {"phase": "Running"})
    assert world.attempts == ["a", "a"]


async def test_writes_in_parallel_are_bounded(world: World) -> None:
    writer = writer_for(world)
    count = status_writer.MAX_PARALLEL_WRITES * 2
    for i in range(count):
        world.want(f"r{i}", "Running")
        writer.mark(f"r{i}")
    await writer.flush()
    assert writer.writes == count
    assert world.most_in_flight == status_writer.MAX_PARALLEL_WRITES


# -- settling ------------------------------------------------------------------------------------------


async def test_an_unsettled_resource_is_held_back_until_forced(world: World) -> None:
    writer = writer_for(world, settle_timeout=60.0)
    world.want("a", "Pending", settled=False)
    writer.mark("a")
    await writer.flush()
    assert world.attempts == []
    await writer.flush(force=True)
    assert world.current == {"a": {"phase": "Pending"}}


async def test_an_unsettled_resource_is_written_once_the_settle_timeout_passed(world: World, running: Any) -> None:
    writer = writer_for(world, settle_timeout=0.05)
    world.want("a", "Pending", settled=False)
    running(writer)
    writer.mark("a")
    assert await world.next_write() == ("a", {"phase": "Pending"})


async def test_settling_writes_the_final_status_in_one_write(world: World) -> None:
    writer = writer_for(world, settle_timeout=60.0)
    world.want("a", "Pending", settled=False)
    writer.mark("a")
    await writer.flush()
    world.want("a", "Running", settled=True)
    writer.mark("a")
    await writer.flush()
    assert world.attempts == ["a"]
    assert world.current == {"a": {"phase": "Running"}}


async def test_forget_cancels_a_pending_write(world: World) -> None:
    writer = writer_for(world, settle_timeout=60.0)
    world.want("a", "Pending", settled=False)
    writer.mark("a")
    writer.forget("a")
    writer.forget("never-marked")
    await writer.flush(force=True)
    assert world.attempts == []


# -- failed writes -------------------------------------------------------------------------------------


async def test_a_failed_write_is_not_retried_before_the_retry_delay(world: World) -> None:
    writer = writer_for(world)
    world.want("a", "Running")
    world.failures = 1
    writer.mark("a")
    await writer.flush()
    writer.mark("a")  # an ordinary mark does not cut the retry delay short
    await writer.flush(force=True)
    assert world.attempts == ["a"]
    assert writer.writes == 0


async def test_a_failed_write_is_retried(world: World, running: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(status_writer, "RETRY_DELAY", 0.01)
    writer = writer_for(world, settle_timeout=0.01)
    world.want("a", "Running")
    world.failures = 2
    running(writer)
    writer.mark("a")
    assert await world.next_write() == ("a", {"phase": "Running"})
    assert world.attempts == ["a", "a", "a"]
    assert writer.writes == 1


async def test_a_failed_write_of_a_settled_resource_is_retried_after_the_retry_delay_alone(
    world: World, running: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(status_writer, "RETRY_DELAY", 0.01)
    writer = writer_for(world, settle_timeout=60.0)
    world.want("a", "Running")
    world.failures = 1
    running(writer)
    writer.mark("a")
    assert await world.next_write(within=0.5) == ("a", {"phase": "Running"})
