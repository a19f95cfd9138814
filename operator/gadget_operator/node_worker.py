"""One node's loop: a pass when woken, a drift check every resync interval, backoff on failure.

The worker holds what the operator knows of its node's daemon between passes (the instances it lists,
the ones proven running); what a pass does is the reconciler's ``sync_node``.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from gadget_operator import metrics
from gadget_operator.daemon import model

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class NodeWorker:
    """One node's loop: a pass when woken, a drift check every resync interval, backoff on failure."""

    node: str
    run_pass: Callable[[NodeWorker], Awaitable[None]]
    resync_interval: float
    backoff_initial: float
    backoff_max: float
    actual: dict[str, model.GadgetInstance] | None = None
    """The daemon's instances by ID as of the last list and our own calls; None forces a list."""
    failures: int = 0
    verify_scheduled: bool = False
    """A relist is already due (to read back the state of instances not proven yet)."""
    recheck_delay: float = 0.0
    """Wait before that relist: short at first (a gadget usually starts within a second), doubling
    while instances stay unproven."""
    proven: set[str] = field(default_factory=set)
    """Instance IDs proven initialized on this node (``readiness``); cleared when the daemon may have
    restarted (unreachable) or stops reporting them."""
    wake_event: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def wake(self, *, relist: bool = False) -> None:
        if relist:
            self.actual = None
        self.wake_event.set()

    def next_delay(self) -> float:
        if self.failures:
            return min(self.backoff_initial * 2.0 ** (self.failures - 1), self.backoff_max)
        return float(self.resync_interval * random.uniform(0.9, 1.1))

    async def run(self) -> None:
        self.wake_event.set()
        while True:
            try:
                async with asyncio.timeout(self.next_delay()):
                    await self.wake_event.wait()
            except TimeoutError:
                self.actual = None  # periodic drift check: trust only a fresh list
            self.wake_event.clear()
            if self.failures:
                self.proven.clear()  # an unreachable daemon may have restarted: prove everything again
            try:
                with metrics.NODE_PASS_SECONDS.time():
                    await self.run_pass(self)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug in one pass must not stop the node for good
                metrics.NODE_PASSES.labels(result="error").inc()
                logger.exception("node %s: pass failed", self.node)
                self.failures += 1
                self.actual = None
