"""Whether the operator can still make progress, for kopf's liveness endpoint.

kopf's ``/healthz`` answers as long as its HTTP server does, so a running but stuck operator looked
alive: with every connection of the API session taken (as port-forward tunnels once did), no status
was written and no daemon called, yet the probe stayed green. Two measures make it honest:

* a heartbeat: every ``heartbeat_interval`` seconds, ``GET /version`` through the operator's own API
  session (the one status writes use), with that interval as its deadline. The probe fails when the
  last success is older than ``max_heartbeat_age``;
* the event loop's lag: a ticker that should wake every ``TICK`` seconds. The probe fails when it woke
  more than ``max_loop_lag`` late, or has not woken for that long.

``check`` raises ``Unhealthy`` then; the kopf probe handler turns that into a failed handler, and kopf
answers ``/healthz`` with HTTP 500 (a probe handler that raises fails the whole activity: kopf's
``health_reporter`` lets the ``ActivityError`` through to aiohttp).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from gadget_operator.settings import LivenessSettings

logger = logging.getLogger(__name__)

TICK = 1.0
"""Seconds between the event-loop lag ticker's wake-ups."""


class Unhealthy(Exception):
    """The operator cannot make progress; the message says why."""


class Liveness:
    """Heartbeat and event-loop lag, and the verdict the liveness probe reports."""

    def __init__(
        self,
        heartbeat: Callable[[], Awaitable[Any]],
        settings: LivenessSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.heartbeat = heartbeat
        self.settings = settings
        self.clock = clock
        self.started = clock()
        self.last_success: float | None = None
        self.last_error: str | None = None
        self.last_tick = self.started
        self.loop_lag = 0.0
        self._tasks: list[asyncio.Task[None]] = []

    # -- measures ----------------------------------------------------------------------------------

    async def beat(self) -> bool:
        """One heartbeat: the call, within ``heartbeat_interval``; records a success or the error."""
        try:
            async with asyncio.timeout(self.settings.heartbeat_interval):
                await self.heartbeat()
        except Exception as error:  # any failure counts; the age of the last success decides
            self.last_error = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
            logger.warning("liveness heartbeat (GET /version) failed: %s", self.last_error)
            return False
        self.last_success = self.clock()
        self.last_error = None
        return True

    def tick(self, expected: float) -> None:
        """The lag ticker woke up; it meant to at ``expected`` (clock time)."""
        now = self.clock()
        self.loop_lag = max(0.0, now - expected)
        self.last_tick = now

    def start(self) -> None:
        self._tasks = [asyncio.ensure_future(self._beat_forever()), asyncio.ensure_future(self._tick_forever())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _beat_forever(self) -> None:
        while True:
            started = self.clock()
            await self.beat()
            await asyncio.sleep(max(0.0, self.settings.heartbeat_interval - (self.clock() - started)))

    async def _tick_forever(self) -> None:
        while True:
            expected = self.clock() + TICK
            await asyncio.sleep(TICK)
            self.tick(expected)

    # -- verdict -----------------------------------------------------------------------------------

    def check(self) -> dict[str, float]:
        """The figures the probe shows; raises ``Unhealthy`` when the operator cannot make progress."""
        now = self.clock()
        age = now - (self.last_success if self.last_success is not None else self.started)
        lag = max(self.loop_lag, now - self.last_tick - TICK)
        settings = self.settings
        if age > settings.max_heartbeat_age:
            since = "since start" if self.last_success is None else f"for {age:.0f}s"
            raise Unhealthy(
                f"no successful API call {since} (limit {settings.max_heartbeat_age:g}s); "
                f"last error: {self.last_error or 'none, the heartbeat is not even running'}"
            )
        if lag > settings.max_loop_lag:
            raise Unhealthy(f"the event loop lags {lag:.1f}s behind (limit {settings.max_loop_lag:g}s)")
        return {"apiHeartbeatAge": round(age, 3), "loopLag": round(lag, 3)}
