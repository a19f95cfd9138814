"""A de-duplicating work queue with per-key exponential backoff, after client-go's rate-limiting workqueue.

A key stands for work on one object; adding it says "look at it again", not "do this once more": a key
added many times while it waits is processed once, and a key added while it is being processed is
processed once more after, never by two workers at once. The handler's ``Result`` (or exception) is
what controller-runtime makes of a reconcile's: done forgets the key's failures, a failure comes back
after ``backoff_initial * 2**(failures - 1)`` seconds (capped at ``backoff_max``), and ``after`` asks to
look again later without counting as a failure. Timers are the clock's ``call_at`` handles, one per key.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from gadget_operator import metrics
from gadget_operator.settings import ExecutorSettings

logger = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True, slots=True)
class Result:
    error: str | None = None
    """The key failed for this reason: it is retried after its backoff, and the reason is ``last_error``."""
    after: float | None = None
    """Done for now, but look again after this many seconds (not a failure)."""


DONE = Result()


class Timer(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """What the queue needs of time; the running event loop is one."""

    def time(self) -> float: ...

    def call_at(self, when: float, callback: Callable[[], object]) -> Timer: ...


class WorkQueue(Generic[K]):
    def __init__(
        self,
        name: str,
        handler: Callable[[K], Awaitable[Result]],
        *,
        workers: int = 1,
        backoff_initial: float,
        backoff_max: float,
        jitter: float = 0.0,
        clock: Clock | None = None,
    ) -> None:
        if workers < 1 or not 0 < backoff_initial <= backoff_max or jitter < 0:
            raise ValueError("need workers >= 1, 0 < backoff_initial <= backoff_max and jitter >= 0")
        self.name = name
        self._handler = handler
        self._workers = workers
        self._initial, self._max, self._jitter = backoff_initial, backoff_max, jitter
        self._clock = clock
        # Every key is in at most one of queue and processing; ``again`` and ``abandoned`` are subsets
        # of processing, so memory is bounded by the number of keys.
        self._queue: dict[K, None] = {}
        """Keys waiting for a worker, oldest first (a dict: ordered, and de-duplicated)."""
        self._processing: set[K] = set()
        self._again: set[K] = set()
        """Keys added while being processed: queued again when their run ends."""
        self._abandoned: set[K] = set()
        """Keys forgotten while being processed: what their run says is ignored."""
        self._timers: dict[K, tuple[float, Timer]] = {}
        self._failures: dict[K, tuple[int, str | None]] = {}
        self._ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: list[asyncio.Task[None]] = []
        # Every series exists from the start (at 0), so a dashboard or alert sees "none yet".
        metrics.WORKQUEUE_ADDS.labels(name)
        metrics.WORKQUEUE_RETRIES.labels(name)
        metrics.WORKQUEUE_DEPTH.labels(name).set(0)

    # -- adding keys ---------------------------------------------------------------------------------

    def add(self, key: K) -> None:
        if key in self._queue or key in self._again:
            return
        if key in self._processing:
            self._again.add(key)
        else:
            self._queue[key] = None
            self._ready.set()
        metrics.WORKQUEUE_ADDS.labels(self.name).inc()
        self._changed()

    def add_after(self, key: K, delay: float) -> None:
        """Add the key after ``delay`` seconds; of two pending delays of one key the earlier wins."""
        if delay <= 0:
            self.add(key)
            return
        clock = self._time()
        when = clock.time() + delay
        pending = self._timers.get(key)
        if pending is not None:
            if pending[0] <= when:
                return
            pending[1].cancel()
        self._timers[key] = (when, clock.call_at(when, lambda: self._fire(key)))

    def add_rate_limited(self, key: K, error: str | None = None) -> float:
        """Count a failure of the key and add it after its backoff, which is returned."""
        failures = self._failures.get(key, (0, None))[0] + 1
        self._failures[key] = (failures, error)
        # The exponent is capped so that a key failing for days cannot overflow the float.
        delay = min(self._initial * 2.0 ** min(failures - 1, 64), self._max)
        delay *= 1 + self._jitter * random.random()
        metrics.WORKQUEUE_RETRIES.labels(self.name).inc()
        self.add_after(key, delay)
        return delay

    def forget(self, key: K) -> None:
        """Drop everything about the key (its object is gone): queued work, pending retries, failures."""
        self._queue.pop(key, None)
        self._again.discard(key)
        self._failures.pop(key, None)
        pending = self._timers.pop(key, None)
        if pending is not None:
            pending[1].cancel()
        if key in self._processing:
            self._abandoned.add(key)  # else a failing run would schedule a retry of a deleted object
        self._changed()

    # -- state ---------------------------------------------------------------------------------------

    def failures(self, key: K) -> int:
        """Consecutive failures of the key (client-go's ``NumRequeues``)."""
        return self._failures.get(key, (0, None))[0]

    def last_error(self, key: K) -> str | None:
        """Why the key's last run failed, while it keeps failing."""
        return self._failures.get(key, (0, None))[1]

    def when_due(self, key: K) -> float | None:
        """The clock time at which the key is added again, if a retry or ``add_after`` is pending."""
        pending = self._timers.get(key)
        return pending[0] if pending is not None else None

    @property
    def depth(self) -> int:
        """Keys waiting for a worker (not those being processed or waiting for a timer)."""
        return len(self._queue)

    async def join(self) -> None:
        """Wait until no key is queued or being processed (pending timers aside)."""
        await self._idle.wait()

    # -- workers -------------------------------------------------------------------------------------

    def start(self) -> None:
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._work(), name=f"workqueue-{self.name}-{i}") for i in range(self._workers)
            ]

    async def stop(self) -> None:
        """Cancel the pending timers and the workers (and so the runs in progress), and wait for them."""
        for _, timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _time(self) -> Clock:
        return self._clock if self._clock is not None else asyncio.get_running_loop()

    def _fire(self, key: K) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def _changed(self) -> None:
        metrics.WORKQUEUE_DEPTH.labels(self.name).set(len(self._queue))
        if self._queue or self._processing:
            self._idle.clear()
        else:
            self._idle.set()

    async def _work(self) -> None:
        while True:
            while not self._queue:
                self._ready.clear()
                await self._ready.wait()
            key = next(iter(self._queue))
            del self._queue[key]
            self._processing.add(key)
            self._changed()
            try:
                await self._process(key)
            finally:
                self._processing.discard(key)
                self._abandoned.discard(key)
                if key in self._again:
                    self._again.discard(key)
                    self._queue[key] = None
                    self._ready.set()
                self._changed()

    async def _process(self, key: K) -> None:
        clock = self._time()
        started = clock.time()
        try:
            result = await self._handler(key)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is None or task.cancelling():
                raise  # the queue is stopping
            # A cancellation the handler let escape is its failure; it must not end this worker.
            logger.warning("workqueue %s: handling %r was cancelled, will retry", self.name, key)
            result = Result(error="cancelled")
        except Exception as error:
            logger.warning("workqueue %s: handling %r failed, will retry: %s", self.name, key, error, exc_info=True)
            result = Result(error=str(error) or repr(error))
        finally:
            metrics.WORKQUEUE_WORK_SECONDS.labels(self.name).observe(clock.time() - started)
        if key in self._abandoned:
            return
        if result.error is not None:
            delay = self.add_rate_limited(key, result.error)
            logger.debug("workqueue %s: %r failed, retry in %.3gs: %s", self.name, key, delay, result.error)
            return
        self._failures.pop(key, None)
        if result.after is not None:
            self.add_after(key, result.after)


def per_resource(
    name: str, handler: Callable[[str], Awaitable[Result]], settings: ExecutorSettings, *, clock: Clock | None = None
) -> WorkQueue[str]:
    """The operator's queue for per-resource work: a few workers, its failure backoff, some jitter so
    that retries of many resources that failed together do not come back together."""
    return WorkQueue(
        name,
        handler,
        workers=4,
        backoff_initial=settings.backoff_initial,
        backoff_max=settings.backoff_max,
        jitter=0.1,
        clock=clock,
    )
