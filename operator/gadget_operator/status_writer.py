"""Coalesced status writes: one write per resource when its status really changed.

Producers only ``mark`` a resource dirty. The writer renders each dirty resource's status and writes
it when it differs from what the object carries. A resource whose target nodes have not all reported
yet is held back (up to ``settle_timeout``), so that a fresh resource goes from apply to Ready in one
status write rather than one per node; while it stays unsettled, each progress write doubles that
wait (up to ``max_settle_timeout``), so a slow rollout costs a few writes, not one every two seconds.
A steady state writes nothing at all.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gadget_operator import status
from gadget_operator.settings import StatusSettings

logger = logging.getLogger(__name__)

MAX_PARALLEL_WRITES = 16
RETRY_DELAY = 2.0
"""Seconds before a failed status write is tried again."""
COALESCE_WINDOW = 0.005
"""Seconds the writer waits after a wake-up, so that a burst of marks is looked at once."""


@dataclass(frozen=True, slots=True)
class Rendered:
    compute: Callable[[], dict[str, Any]]
    """Computes the status the resource should carry now; called only when it may be written."""
    current: Mapping[str, Any]
    """The status it carries (as last seen)."""
    settled: bool
    """Whether every target node has reported on the current spec."""


Render = Callable[[str], Rendered | None]
Write = Callable[[str, dict[str, Any]], Awaitable[None]]


class StatusWriter:
    def __init__(self, *, render: Render, write: Write, settings: StatusSettings) -> None:
        self._render = render
        self._write = write
        self._settings = settings
        self._dirty: dict[str, float] = {}
        """Per resource UID: the loop time from which it counts as dirty (later: a retry's time)."""
        self._changed: set[str] = set()
        """Resources marked since they were last looked at; others wait for their deadline."""
        self._patience: dict[str, float] = {}
        """Per resource still unsettled after a progress write: how long it waits before the next."""
        self._wakeup = asyncio.Event()
        self._limit = asyncio.Semaphore(MAX_PARALLEL_WRITES)
        self.writes = 0

    def mark(self, uid: str, *, delay: float = 0.0) -> None:
        if uid not in self._dirty:
            self._dirty[uid] = asyncio.get_running_loop().time() + delay
        # Looked at when the delay is over (a retry), or at the next flush.
        self._changed.add(uid)
        self._wakeup.set()

    def forget(self, uid: str) -> None:
        self._dirty.pop(uid, None)
        self._changed.discard(uid)
        self._patience.pop(uid, None)

    def _settle_wait(self, uid: str) -> float:
        return self._patience.get(uid, self._settings.settle_timeout)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                async with asyncio.timeout(self._next_deadline()):
                    await self._wakeup.wait()
            except TimeoutError:
                pass
            # A short window gathers the marks of a burst (a node pass records many outcomes at once)
            # into one look at each resource.
            await asyncio.sleep(COALESCE_WINDOW)
            self._wakeup.clear()
            started = loop.time()
            await self.flush()
            logger.debug("status flush took %.1f ms", (loop.time() - started) * 1000)

    def _deadline(self, uid: str, since: float, now: float) -> float:
        # A write waiting for its retry is due at ``since``; a dirty one at the latest when its wait
        # for the nodes to settle runs out.
        return since if since > now else since + self._settle_wait(uid)

    def _next_deadline(self) -> float | None:
        if not self._dirty:
            return None
        now = asyncio.get_running_loop().time()
        return max(0.0, min(self._deadline(uid, since, now) for uid, since in self._dirty.items()) - now)

    async def flush(self, *, force: bool = False) -> None:
        """Write every dirty resource that is settled (or waited long enough, or ``force``)."""
        now = asyncio.get_running_loop().time()
        due: list[tuple[str, dict[str, Any]]] = []
        waiting = {uid for uid, since in self._dirty.items() if since > now}  # failed writes awaiting retry
        changed, self._changed = self._changed - waiting, self._changed & waiting
        for uid, since in list(self._dirty.items()):
            if uid in waiting:
                continue
            timed_out = now - since >= self._settle_wait(uid)
            if not (force or timed_out or uid in changed):
                continue  # nothing new since it was last found unsettled
            rendered = self._render(uid)
            if rendered is None:
                del self._dirty[uid]
                continue
            if not (force or rendered.settled or timed_out):
                continue
            del self._dirty[uid]
            if rendered.settled:
                self._patience.pop(uid, None)
            else:
                wait = 2 * self._settle_wait(uid)
                self._patience[uid] = min(wait, self._settings.max_settle_timeout)
            new = rendered.compute()
            if status.status_differs(rendered.current, new):
                due.append((uid, new))
        if due:
            await asyncio.gather(*(self._write_one(uid, new) for uid, new in due))

    async def _write_one(self, uid: str, new: dict[str, Any]) -> None:
        async with self._limit:
            try:
                await self._write(uid, new)
                self.writes += 1
            except Exception as error:
                logger.warning("status write for %s failed, will retry: %s", uid, error)
                self.mark(uid, delay=RETRY_DELAY)
