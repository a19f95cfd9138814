"""The cleanup finalizer, added before anything runs and removed once a deletion is complete.

Both are per-resource work through one rate-limited ``WorkQueue``: a resource's key is queued whenever
its finalizer may need adding or removing, the handler looks at the resource as last seen and does
what is missing, and a failure (an admission webhook refusing the patch, a conflict, an API outage)
comes back with per-resource exponential backoff instead of a retry loop. A failure that persists is
visible: ``refusal`` gives the status its message, and a Warning Event is posted each time the
message changes.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

from gadget_operator import kube, workqueue
from gadget_operator.resource import GadgetInstanceResource
from gadget_operator.settings import ExecutorSettings

logger = logging.getLogger(__name__)

Warn = Callable[[GadgetInstanceResource, str, str], Awaitable[None]]


class Finalizers:
    def __init__(
        self,
        api: kube.KubeApi,
        settings: ExecutorSettings,
        resources: Mapping[str, GadgetInstanceResource],
        *,
        deletion_done: Callable[[str], bool],
        released: Callable[[str], None],
        warn: Warn,
        clock: workqueue.Clock | None = None,
    ) -> None:
        """``resources``: every resource as last seen, by UID; ``deletion_done(uid)``: whether no
        instance of a resource being deleted is left; ``released(uid)``: its finalizer is gone."""
        self.api = api
        self.resources = resources
        self.deletion_done = deletion_done
        self.released = released
        self.warn = warn
        self.queue = workqueue.per_resource("finalizers", self._sync, settings, clock=clock)
        self._added: set[str] = set()
        """Resources whose finalizer this process added and whose watch event may not have come yet."""

    def start(self) -> None:
        self.queue.start()

    async def stop(self) -> None:
        await self.queue.stop()

    def sync(self, uid: str) -> None:
        """Look at ``uid``'s finalizer (soon, once, whatever the number of calls)."""
        self.queue.add(uid)

    def forget(self, uid: str) -> None:
        self.queue.forget(uid)
        self._added.discard(uid)

    def refusal(self, uid: str) -> str | None:
        """Why the finalizer of a resource that has none could not be added, while that lasts."""
        gi = self.resources.get(uid)
        if gi is None or gi.has_finalizer or gi.deleting:
            return None
        return self.queue.last_error(uid) if self.queue.failures(uid) else None

    def added(self, uid: str) -> bool:
        """Whether this process added the finalizer (the resource's watch event may still be on its way)."""
        return uid in self._added

    async def _sync(self, uid: str) -> workqueue.Result:
        gi = self.resources.get(uid)
        if gi is None:
            return workqueue.DONE
        if gi.deleting:
            if not gi.has_finalizer or not self.deletion_done(uid):
                return workqueue.DONE
            return await self._change(gi, self.api.remove_finalizer, "RemovingFinalizerFailed", "remove")
        if gi.has_finalizer:
            self._added.discard(uid)
            return workqueue.DONE
        if gi.spec is None or uid in self._added:
            # A spec that can never run creates nothing, so it needs no cleanup (and a patch of it may
            # be refused by admission): it gets its Failed status without the finalizer.
            return workqueue.DONE
        return await self._change(gi, self.api.add_finalizer, "FinalizerRefused", "add")

    async def _change(
        self,
        gi: GadgetInstanceResource,
        patch: Callable[[GadgetInstanceResource], Awaitable[None]],
        reason: str,
        verb: str,
    ) -> workqueue.Result:
        try:
            await patch(gi)
        except Exception as error:
            message = str(error)
            if isinstance(error, kube.KubeApiError) and error.status in (404, 409):
                return workqueue.DONE  # gone, or changed meanwhile: its next watch event brings it back
            logger.warning("%s: cannot %s the cleanup finalizer, retrying with backoff: %s", gi.key, verb, message)
            if message != self.queue.last_error(gi.uid):
                await self.warn(gi, reason, f"cannot {verb} the cleanup finalizer: {message}")
            return workqueue.Result(error=message)
        if verb == "add":
            self._added.add(gi.uid)
        else:
            logger.info("%s: instances removed from every node, finalizer released", gi.key)
            self.released(gi.uid)
        return workqueue.DONE
