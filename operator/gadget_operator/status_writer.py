"""Coalesced status writes: one write per resource when its status really changed.

Producers only ``mark`` a resource dirty. The writer renders each dirty resource's status and writes
it when it differs from what the object carries. A resource whose target nodes have not all reported
yet is held back (up to ``settle_timeout``), so that a fresh resource goes from apply to Ready in one
status write rather than one per node; a steady state writes nothing at all.
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


@dataclass(frozen=True, slots=True)
class Rendered:
    status: dict[str, Any]
    """The status the resource should carry now."""
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
        """Per resource UID: the loop time from which it counts as dirty."""
        self._wakeup = asyncio.Event()
        self._limit = asyncio.Semaphore(MAX_PARALLEL_WRITES)
        self.writes = 0

    def mark(self, uid: str, *, delay: float = 0.0) -> None:
        if uid not in self._dirty:
            self._dirty[uid] = asyncio.get_running_loop().time() + delay
        self._wakeup.set()

    def forget(self, uid: str) -> None:
        self._dirty.pop(uid, None)

    async def run(self) -> None:
        while True:
            timeout = self._next_deadline()
            try:
                async with asyncio.timeout(timeout):
                    await self._wakeup.wait()
            except TimeoutError:
                pass
            self._wakeup.clear()
            await self.flush()

    def _next_deadline(self) -> float | None:
        if not self._dirty:
            return None
        now = asyncio.get_running_loop().time()
        # A write waiting for its retry is due at ``since``; a dirty one at the latest when its wait
        # for the nodes to settle runs out.
        due = (since if since > now else since + self._settings.settle_timeout for since in self._dirty.values())
        return max(0.0, min(due) - now)

    async def flush(self, *, force: bool = False) -> None:
        """Write every dirty resource that is settled (or waited long enough, or ``force``)."""
        now = asyncio.get_running_loop().time()
        due: list[tuple[str, dict[str, Any]]] = []
        for uid, since in list(self._dirty.items()):
            if since > now:
                continue  # a failed write waiting for its retry
            rendered = self._render(uid)
            if rendered is None:
                del self._dirty[uid]
                continue
            if not (force or rendered.settled or now - since >= self._settings.settle_timeout):
                continue
            del self._dirty[uid]
            if status.status_differs(rendered.current, rendered.status):
                due.append((uid, rendered.status))
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
