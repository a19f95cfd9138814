"""Placement in IG's shared store (its DaemonSet): one instance per resource, written through any daemon.

Why not one instance per (resource, node) as with standalone daemons: in IG's DaemonSet store an
instance restricted to some nodes makes ListGadgetInstances fail on every other node, and every
daemon holds every instance of the cluster (inspektor-gadget.md, "IG's DaemonSet store"). So:

* **One stored instance per resource** (``planner.desired_shared_instance``): ``nodes`` empty when the
  spec targets every node (IG then starts it on nodes that join later, with no churn), else the
  nodes its selector or list picks. IG instances are immutable: when that node set changes (a
  matching node joins, a node is relabelled) or the spec changes, a new instance is written, and the
  old one is removed once the new one has taken over on every node both run on. A node that leaves
  the cluster changes nothing (no daemon runs there any more).
* **The store's contents come from its ConfigMaps** (``inventory``), never from List.
* **Each node's state comes from that node's daemon**, which runs the instance: List when IG can
  answer it on that node (it runs every stored instance), otherwise GetGadgetInstance per instance,
  then the readiness probe (``readiness``).
* **Writes go through any reachable daemon**: Create and Remove act on the cluster-wide store, so an
  unreachable node blocks neither creation nor deletion; deletion is done when the store holds none
  of the resource's instances.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from gadget_operator import errors, executor, identity, metrics, planner
from gadget_operator.daemon import model
from gadget_operator.daemon.client import DaemonClient
from gadget_operator.inventory import StoreInventory

if TYPE_CHECKING:
    from gadget_operator.node_worker import NodeWorker
    from gadget_operator.reconciler import Reconciler

logger = logging.getLogger(__name__)

MAX_DAEMONS_TRIED = 3
"""Daemons tried in turn for one store write before it counts as failed for this pass."""


class SharedPlacement:
    """The store-wide loop (creates and removals) and the per-node observation for a shared store."""

    def __init__(self, reconciler: Reconciler) -> None:
        self.rec = reconciler
        self.inventory = StoreInventory(on_change=self.wake)
        self.waiting = False
        """Old instances wait for their replacement: every node outcome may release them."""
        self._wake_event = asyncio.Event()
        self._failures = 0

    def wake(self) -> None:
        self._wake_event.set()

    # -- the store-wide loop -----------------------------------------------------------------------

    async def run(self) -> None:
        config = self.rec.settings.executor
        while True:
            delay = (
                min(config.backoff_initial * 2.0 ** (self._failures - 1), config.backoff_max)
                if self._failures
                else config.resync_interval
            )
            try:
                async with asyncio.timeout(delay):
                    await self._wake_event.wait()
            except TimeoutError:
                pass
            self._wake_event.clear()
            if not self.inventory.listed:
                continue  # no decision before the store has been seen once
            try:
                await self.sync_store()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug in one pass must not stop the store loop for good
                logger.exception("shared store: pass failed")
                self._failures += 1

    async def sync_store(self) -> None:
        rec = self.rec
        ready = rec.topology.ready_nodes()
        stored = list(self.inventory.instances.values())
        partial = rec.rollouts.advance_shared(stored)
        desired = {uid: d for uid in rec.resources if (d := rec.desired.shared(uid)) is not None}
        plan = planner.plan_store(
            desired,
            stored,
            held=rec.desired.held(),
            known_resources=rec.resources.keys(),
            ready_nodes=ready.keys(),
            taken_over=rec.taken_over,
            partial=partial,
        )
        self.waiting = bool(plan.waiting)
        failed: list[bool] = []
        touched: set[str] = set()
        width = rec.settings.executor.max_concurrency

        async def create(wanted: planner.DesiredInstance) -> None:
            failed.append(not await self._create(wanted, ready, touched))

        async def remove(removal: planner.Removal) -> None:
            failed.append(not await self._remove(removal, ready, touched))

        # Writes go out together (bounded) and spread over the daemons; the nodes they concern look
        # again once, after the burst, not once per write.
        await executor.each(plan.creates, create, width)
        await executor.each(plan.removals, remove, width)
        rec.wake_nodes(touched, relist=True)
        self._failures = self._failures + 1 if any(failed) else 0
        rec.deletions.store_clean_of(self.holders())

    def holders(self) -> set[str]:
        """The resources that still have an instance in the store."""
        owners = (identity.parse_ownership(i.tags) for i in self.inventory.instances.values())
        return {owner.resource_uid for owner in owners if owner is not None}

    def _daemons(
        self, ready: Mapping[str, str], preferred: Iterable[str], instance_id: str
    ) -> list[tuple[str, DaemonClient]]:
        """Daemons to write through: any would do; one of the instance's own nodes first, picked by
        its ID so that a burst of writes is spread over the daemons, then the others in turn."""
        own = sorted(node for node in preferred if node in ready)
        others = sorted(node for node in ready if node not in set(own))
        order = []
        for group in (own, others):
            if group:
                start = int(instance_id[:8], 16) % len(group)
                order += group[start:] + group[:start]
        return [(node, self.rec.pool.get(ready[node])) for node in order[:MAX_DAEMONS_TRIED]]

    async def _create(self, wanted: planner.DesiredInstance, ready: Mapping[str, str], touched: set[str]) -> bool:
        instance = wanted.instance
        targets = planner.runs_on(instance, wanted.owner, ready.keys())
        last: errors.DaemonError | None = None
        for node, client in self._daemons(ready, targets, instance.id):
            try:
                await client.on_behalf_of(wanted.owner.tenant).create_instance(
                    instance, event_buffer_length=wanted.event_buffer_length
                )
            except errors.InstanceAlreadyExists:
                pass  # the ID and name are derived from the resource, spec and node set: it is ours
            except errors.DaemonUnreachable as error:
                last = error
                continue
            except errors.DaemonError as error:
                logger.warning("shared store: creating %s through %s failed: %s", instance.id, node, error)
                self.rec.record_store_failure(wanted.owner.resource_uid, instance.id, targets, error, wanted=wanted)
                return False
            else:
                metrics.INSTANCES_CREATED.inc()
                logger.info("created instance %s of %s through %s", instance.id, wanted.owner.resource, node)
                self.rec.recorder.stored(wanted.owner, instance.id, through=node, nodes=len(targets))
            self.inventory.created(instance)
            touched |= targets
            return True
        if last is not None:
            self.rec.record_store_failure(wanted.owner.resource_uid, instance.id, targets, last, wanted=wanted)
        return False

    async def _remove(self, removal: planner.Removal, ready: Mapping[str, str], touched: set[str]) -> bool:
        if removal.verify_owner and not await self.rec.owner_gone(removal.owner):
            return True
        stored = self.inventory.instances.get(removal.instance_id)
        runs_on = planner.runs_on(stored, removal.owner, ready.keys()) if stored is not None else set()
        last: errors.DaemonError | None = None
        for node, client in self._daemons(ready, runs_on, removal.instance_id):
            try:
                await client.remove_instance(removal.instance_id)
            except errors.InstanceNotFound:
                pass
            except errors.DaemonUnreachable as error:
                last = error
                continue
            except errors.DaemonError as error:
                logger.warning("shared store: removing %s through %s failed: %s", removal.instance_id, node, error)
                last = error
                break
            else:
                metrics.INSTANCES_REMOVED.inc()
                self.rec.recorder.unstored(removal.owner, removal.instance_id, reason=removal.reason)
                logger.info(
                    "removed instance %s of %s through %s (%s)",
                    removal.instance_id,
                    removal.owner.resource,
                    node,
                    removal.reason,
                )
            self.inventory.removed(removal.instance_id)
            touched |= runs_on
            return True
        if last is not None and removal.owner.resource_uid in self.rec.deletions:
            self.rec.record_store_failure(removal.owner.resource_uid, "", runs_on or set(ready), last, removing=True)
        return last is None

    # -- one node: what its daemon runs ------------------------------------------------------------

    async def observe_node(self, worker: NodeWorker, client: DaemonClient) -> dict[str, model.GadgetInstance]:
        """What ``worker``'s daemon reports of our stored instances that IG runs on its node, by ID
        (``DaemonUnreachable`` when it cannot be asked)."""
        node = worker.node
        expected = [i for i in self.inventory.runs_on(node) if identity.parse_ownership(i.tags) is not None]
        if not expected:
            return {}
        if self.inventory.lists_on(node):
            try:
                listed = await client.list_instances()
            except errors.DaemonUnreachable:
                raise
            except errors.DaemonError:
                pass  # IG's List fails on an instance it has not started yet: look at each one instead
            else:
                return {i.id: i for i in listed}
        return await self._get_each(client, [i.id for i in expected], width=self.rec.limits.per_node)

    @staticmethod
    async def _get_each(client: DaemonClient, ids: list[str], *, width: int) -> dict[str, model.GadgetInstance]:
        reported: dict[str, model.GadgetInstance] = {}

        async def get(instance_id: str) -> None:
            try:
                reported[instance_id] = await client.get_instance(instance_id)
            except errors.DaemonUnreachable:
                raise
            except errors.DaemonError:
                pass  # not started on this node (yet): IG answers "gadget not found"

        await executor.each(ids, get, width)
        return reported
