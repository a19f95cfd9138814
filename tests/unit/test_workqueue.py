"""The work queue: de-duplication, one run per key at a time, per-key backoff, forgetting, stopping, metrics."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import prometheus_client
import pytest

from gadget_operator.workqueue import DONE, Result, WorkQueue

WAIT = 5.0
"""Longest a test waits for something the queue should do promptly (only reached on failure)."""


class FakeTimer:
    def __init__(self, when: float, callback: Callable[[], object]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """Time that moves only when the test says so; timers fire on ``advance``."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.timers: list[FakeTimer] = []
        self.scheduled: asyncio.Queue[FakeTimer] = asyncio.Queue()

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], object]) -> FakeTimer:
        timer = FakeTimer(when, callback)
        self.timers.append(timer)
        self.scheduled.put_nowait(timer)
        return timer

    @property
    def pending(self) -> list[FakeTimer]:
        return [timer for timer in self.timers if not timer.cancelled]

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for timer in sorted(self.pending, key=lambda timer: timer.when):
            if timer.when <= self.now:
                self.timers.remove(timer)
                timer.callback()

    async def next_timer(self) -> FakeTimer:
        async with asyncio.timeout(WAIT):
            return await self.scheduled.get()


class Handler:
    """Records its calls; per key, an outcome to return or raise, and an optional gate to wait on."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.called: asyncio.Queue[str] = asyncio.Queue()
        self.outcome: dict[str, Result | BaseException] = {}
        self.gates: dict[str, asyncio.Event] = {}
        self.running: set[str] = set()
        self.overlaps = 0
        self.cancelled: list[str] = []

    async def __call__(self, key: str) -> Result:
        if key in self.running:
            self.overlaps += 1
        self.running.add(key)
        self.calls.append(key)
        self.called.put_nowait(key)
        try:
            if key in self.gates:
                await self.gates[key].wait()
            outcome = self.outcome.get(key, DONE)
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome
        except asyncio.CancelledError:
            self.cancelled.append(key)
            raise
        finally:
            self.running.discard(key)

    async def next_call(self) -> str:
        async with asyncio.timeout(WAIT):
            return await self.called.get()


Make = Callable[..., WorkQueue[str]]


@pytest.fixture
async def make(request: pytest.FixtureRequest) -> AsyncIterator[Make]:
    """Builds queues with their own metric label (backoff 1s doubling up to 8s); stopped when the test ends."""
    made: list[WorkQueue[str]] = []

    def build(handler: Handler, **options: Any) -> WorkQueue[str]:
        options = {"backoff_initial": 1.0, "backoff_max": 8.0, **options}
        queue = WorkQueue(f"{request.node.name}-{len(made)}", handler, **options)
        made.append(queue)
        return queue

    yield build
    for queue in made:
        await queue.stop()


def sample(name: str, queue: WorkQueue[str]) -> float:
    return prometheus_client.REGISTRY.get_sample_value(name, {"name": queue.name}) or 0.0


# -- de-duplication and one run per key ---------------------------------------------------------------


async def test_a_key_added_many_times_while_waiting_is_processed_once(make: Make) -> None:
    handler = Handler()
    queue = make(handler)
    for _ in range(5):
        queue.add("a")
        queue.add("b")
    assert queue.depth == 2
    assert sample("gadget_operator_workqueue_depth", queue) == 2
    assert sample("gadget_operator_workqueue_adds_total", queue) == 2
    queue.start()
    await queue.join()
    assert handler.calls == ["a", "b"]
    assert queue.depth == 0
    assert sample("gadget_operator_workqueue_depth", queue) == 0
    assert sample("gadget_operator_workqueue_work_duration_seconds_count", queue) == 2


async def test_a_key_added_while_processed_runs_once_more_after_and_never_concurrently(make: Make) -> None:
    handler = Handler()
    handler.gates["a"] = asyncio.Event()
    queue = make(handler, workers=2)
    queue.start()
    queue.add("a")
    assert await handler.next_call() == "a"
    for _ in range(3):
        queue.add("a")
    queue.add("b")
    # The second worker is free, yet takes b: a is held back until its run ends.
    assert await handler.next_call() == "b"
    assert queue.depth == 0
    handler.gates["a"].set()
    await queue.join()
    assert handler.calls == ["a", "b", "a"]
    assert handler.overlaps == 0


async def test_of_two_pending_delays_the_earlier_wins(make: Make) -> None:
    clock, handler = FakeClock(), Handler()
    queue = make(handler, clock=clock)
    queue.add_after("a", 10)
    queue.add_after("a", 3)
    queue.add_after("a", 5)
    assert queue.when_due("a") == clock.now + 3
    assert [timer.when - clock.now for timer in clock.pending] == [3]
    clock.advance(3)
    assert queue.depth == 1
    assert queue.when_due("a") is None
    queue.start()
    await queue.join()
    clock.advance(10)
    assert queue.depth == 0
    assert handler.calls == ["a"]


# -- failures and backoff -----------------------------------------------------------------------------


async def test_failures_back_off_exponentially_up_to_the_cap(make: Make) -> None:
    clock, handler = FakeClock(), Handler()
    handler.outcome["a"] = Result(error="the API server said no")
    queue = make(handler, clock=clock)
    queue.start()
    queue.add("a")
    delays = []
    for attempt in range(1, 7):
        timer = await clock.next_timer()
        delays.append(timer.when - clock.now)
        assert queue.failures("a") == attempt
        assert queue.when_due("a") == timer.when
        clock.advance(timer.when - clock.now)
    assert delays == [1, 2, 4, 8, 8, 8]
    assert queue.last_error("a") == "the API server said no"
    assert sample("gadget_operator_workqueue_retries_total", queue) == 6


async def test_jitter_lengthens_the_backoff_by_at_most_its_fraction(make: Make) -> None:
    clock = FakeClock()
    queue = make(Handler(), clock=clock, jitter=0.5)
    for expected in (1, 2, 4, 8, 8):
        delay = queue.add_rate_limited("a")
        assert expected <= delay <= expected * 1.5
        clock.advance(delay)


async def test_success_forgets_the_failures(make: Make) -> None:
    clock, handler = FakeClock(), Handler()
    handler.outcome["a"] = Result(error="conflict")
    queue = make(handler, clock=clock)
    queue.start()
    queue.add("a")
    await clock.next_timer()
    clock.advance(1)
    await clock.next_timer()
    assert queue.failures("a") == 2
    handler.outcome["a"] = DONE
    clock.advance(2)
    await queue.join()
    assert queue.failures("a") == 0
    assert queue.last_error("a") is None
    assert clock.pending == []
    # The next failure starts the backoff over.
    handler.outcome["a"] = Result(error="conflict")
    queue.add("a")
    timer = await clock.next_timer()
    assert timer.when - clock.now == 1


async def test_an_exception_is_logged_with_the_key_and_retried(make: Make, caplog: pytest.LogCaptureFixture) -> None:
    clock, handler = FakeClock(), Handler()
    handler.outcome["default/probe"] = RuntimeError("the API server said no")
    queue = make(handler, clock=clock)
    queue.start()
    with caplog.at_level(logging.WARNING, logger="gadget_operator.workqueue"):
        queue.add("default/probe")
        timer = await clock.next_timer()
    assert timer.when - clock.now == 1
    assert queue.failures("default/probe") == 1
    assert queue.last_error("default/probe") == "the API server said no"
    [record] = caplog.records
    assert "'default/probe'" in record.getMessage()
    assert record.exc_info is not None
    # The worker lived on: the retry runs, and succeeds.
    handler.outcome["default/probe"] = DONE
    clock.advance(1)
    await queue.join()
    assert handler.calls == ["default/probe", "default/probe"]
    assert queue.failures("default/probe") == 0


async def test_a_cancellation_escaping_the_handler_is_a_failure_not_the_end_of_the_worker(make: Make) -> None:
    clock, handler = FakeClock(), Handler()
    handler.outcome["a"] = asyncio.CancelledError()
    queue = make(handler, clock=clock)
    queue.start()
    queue.add("a")
    await clock.next_timer()
    assert queue.failures("a") == 1
    queue.add("b")
    await queue.join()
    assert handler.calls == ["a", "b"]


async def test_a_requeue_after_a_delay_is_not_a_failure(make: Make) -> None:
    clock, handler = FakeClock(), Handler()
    handler.outcome["a"] = Result(after=30)
    queue = make(handler, clock=clock)
    queue.start()
    queue.add("a")
    timer = await clock.next_timer()
    assert timer.when - clock.now == 30
    assert queue.failures("a") == 0
    assert sample("gadget_operator_workqueue_retries_total", queue) == 0


# -- forgetting and stopping --------------------------------------------------------------------------


async def test_forget_stops_the_retries(make: Make) -> None:
    clock, handler = FakeClock(), Handler()
    handler.outcome["a"] = Result(error="conflict")
    queue = make(handler, clock=clock)
    queue.start()
    queue.add("a")
    timer = await clock.next_timer()
    queue.forget("a")
    assert timer.cancelled
    assert queue.failures("a") == 0
    assert queue.when_due("a") is None
    clock.advance(100)
    assert queue.depth == 0
    assert handler.calls == ["a"]


async def test_forget_drops_a_waiting_key(make: Make) -> None:
    handler = Handler()
    queue = make(handler)
    queue.add("a")
    queue.add("b")
    queue.forget("a")
    assert queue.depth == 1
    assert sample("gadget_operator_workqueue_depth", queue) == 1
    queue.start()
    await queue.join()
    assert handler.calls == ["b"]


async def test_forget_during_a_run_drops_its_outcome_and_its_rerun(make: Make) -> None:
    clock, handler = FakeClock(), Handler()
    handler.outcome["a"] = Result(error="conflict")
    handler.gates["a"] = asyncio.Event()
    queue = make(handler, clock=clock)
    queue.start()
    queue.add("a")
    await handler.next_call()
    queue.add("a")
    queue.forget("a")
    handler.gates["a"].set()
    await queue.join()
    assert handler.calls == ["a"]
    assert queue.failures("a") == 0
    assert clock.pending == []


async def test_stop_cancels_the_runs_and_the_timers(make: Make) -> None:
    clock, handler = FakeClock(), Handler()
    handler.gates["a"] = asyncio.Event()
    queue = make(handler, clock=clock, workers=3)
    queue.start()
    queue.add_after("b", 5)
    queue.add("a")
    await handler.next_call()
    await queue.stop()
    assert handler.cancelled == ["a"]
    assert clock.pending == []
    assert not [task for task in asyncio.all_tasks() if task.get_name().startswith(f"workqueue-{queue.name}-")]
    await queue.stop()  # a second stop is harmless


def test_the_backoff_must_be_positive_and_ordered() -> None:
    with pytest.raises(ValueError, match="backoff"):
        WorkQueue("bad", Handler(), backoff_initial=0, backoff_max=1)
    with pytest.raises(ValueError, match="backoff"):
        WorkQueue("bad", Handler(), backoff_initial=2, backoff_max=1)
