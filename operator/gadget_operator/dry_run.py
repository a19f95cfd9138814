"""Running the dry runs (``validation``) on the daemons: one per (image, parameters), queued.

Each spec waiting for its verdict is a key of a rate-limited ``WorkQueue``: asking again while a dry
run waits or runs costs nothing, and a dry run no daemon could answer comes back with per-key
exponential backoff instead of a timer per attempt.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from gadget_operator import errors, tenancy, validation, workqueue
from gadget_operator.daemon.client import DaemonClient
from gadget_operator.resource import GadgetInstanceResource, GadgetInstanceSpec
from gadget_operator.settings import ExecutorSettings

logger = logging.getLogger(__name__)

DAEMONS_TRIED = 3
"""Daemons asked in turn before a dry run counts as failed for this attempt."""


class DryRuns:
    def __init__(
        self,
        settings: ExecutorSettings,
        *,
        daemons: Callable[[], Mapping[str, str]],
        healthy: Callable[[str], bool],
        client: Callable[[str], DaemonClient],
        decided: Callable[[str], None],
    ) -> None:
        """``daemons()``: the reachable nodes and their daemon's address; ``healthy(node)``: whether
        its last pass succeeded (those are asked first); ``client(address)``; ``decided(key)``: a
        verdict for that check key has just been recorded."""
        self.verdicts = validation.Verdicts()
        self.settings = settings
        self.daemons = daemons
        self.healthy = healthy
        self.client = client
        self.decided = decided
        self._waiting: dict[str, GadgetInstanceSpec] = {}
        self.refused: dict[str, str] = {}
        """Why the last dry run of a spec (by check key) could not be made: the daemon refused the
        operator's call (IG's multi-tenancy). Retried with backoff; shown while the resource waits."""
        self.queue = workqueue.per_resource("dry-runs", self._run, settings)

    def start(self) -> None:
        self.queue.start()

    async def stop(self) -> None:
        await self.queue.stop()

    def verdict(self, gi: GadgetInstanceResource) -> validation.Verdict | None:
        """The verdict on ``gi``'s spec; a gadget that cannot be confined is refused to a namespaced
        resource (``tenancy``)."""
        if gi.spec is None:
            return None
        verdict = self.verdicts.get(gi.spec)
        if verdict is not None and verdict.accepted and gi.kind.namespaced and not verdict.confinable:
            refusal = tenancy.confinable(())
            assert refusal is not None
            return validation.Verdict(False, verdict.node, refusal.message, confinable=False, reason=refusal.reason)
        return verdict

    def accepted(self, gi: GadgetInstanceResource) -> bool:
        verdict = self.verdict(gi)
        return verdict is not None and verdict.accepted

    def check(self, spec: GadgetInstanceSpec) -> None:
        """Find the verdict of ``spec`` unless it is known or being found."""
        if self.verdicts.get(spec) is not None:
            return
        key = validation.check_key(spec)
        self._waiting[key] = spec
        self.queue.add(key)

    async def _run(self, key: str) -> workqueue.Result:
        spec = self._waiting.get(key)
        if spec is None or self.verdicts.get(spec) is not None:
            return workqueue.DONE
        ready = self.daemons()
        if not ready:
            return workqueue.DONE  # nothing to ask yet: a daemon that appears asks again (``check``)
        verdict = await self._ask(spec, ready)
        if verdict is None:
            if key in self.refused:
                self.decided(key)  # not decided, but the resources waiting for it can say why
            return workqueue.Result(error=self.refused.get(key, "no daemon could be asked"))
        self.refused.pop(key, None)
        self._waiting.pop(key, None)
        self.verdicts.put(spec, verdict)
        if not verdict.accepted:
            logger.warning("the gadget rejected %s with %s: %s", spec.image, dict(spec.params), verdict.message)
        self.decided(key)
        return workqueue.DONE

    async def _ask(self, spec: GadgetInstanceSpec, ready: Mapping[str, str]) -> validation.Verdict | None:
        """The verdict of one reachable daemon, or None when none could be asked."""
        healthy = [node for node in ready if self.healthy(node)]
        for node in validation.dry_run_order(spec, healthy or ready)[:DAEMONS_TRIED]:
            client = self.client(ready[node])
            try:
                info = await client.get_gadget_info(spec.image, spec.params, deadline=self.settings.validate_timeout)
            except errors.DaemonUnreachable as error:
                logger.info("dry run of %s on %s: %s; trying another daemon", spec.image, node, error)
                continue
            except errors.CallerRefused as error:
                self.refused[validation.check_key(spec)] = error.message
                return None
            except errors.DaemonError as error:
                return validation.Verdict(accepted=False, node=node, message=error.message)
            listed = (param.key for param in info.params)
            return validation.Verdict(accepted=True, node=node, confinable=tenancy.confinable(listed) is None)
        return None
