"""Carrying out one node's plan against its daemon: bounded concurrency, deadlines, per-node outcomes.

A pass never fails as a whole because of one instance: every create and removal ends in an outcome
for its resource. A daemon that is unreachable or hangs ends the pass for that node only (the caller
backs off that node); the deadline on every call bounds how long that takes.

Races are normal (a restarted operator, two passes at once): a create answered "already exists" for an
instance that carries our ID and our ownership tags is a success.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from gadget_operator import errors, identity, planner
from gadget_operator.daemon import model
from gadget_operator.daemon.client import InstanceApi
from gadget_operator.status import NodeState

logger = logging.getLogger(__name__)
T = TypeVar("T")
X = TypeVar("X")

OwnerGone = Callable[[identity.Ownership], Awaitable[bool]]
"""Asks the API server whether an instance's resource is really gone (orphan removal)."""
NodeGone = Callable[[str], Awaitable[bool]]
"""Asks the API server whether a Node is really gone (an instance stranded in a shared store)."""


@dataclass(frozen=True, slots=True)
class InstanceOutcome:
    state: NodeState
    instance_id: str
    message: str = ""


@dataclass(slots=True)
class PassResult:
    """What one pass over one node found and did."""

    outcomes: dict[str, InstanceOutcome] = field(default_factory=dict)
    """Per resource UID: how its desired instance on this node stands."""
    created: int = 0
    removed: int = 0
    unreachable: str | None = None
    """Set when the daemon stopped answering during the pass; the node needs a fresh list and backoff."""
    removal_errors: dict[str, str] = field(default_factory=dict)
    """Per resource UID: why removing one of its instances failed (the daemon's answer)."""


class Limits:
    """Daemon calls in flight, overall and per node."""

    def __init__(self, total: int, per_node: int) -> None:
        self._total = asyncio.Semaphore(total)
        self._per_node_limit = per_node
        self._per_node: dict[str, asyncio.Semaphore] = {}

    def node(self, node: str) -> asyncio.Semaphore:
        semaphore = self._per_node.get(node)
        if semaphore is None:
            semaphore = self._per_node[node] = asyncio.Semaphore(self._per_node_limit)
        return semaphore

    def forget(self, node: str) -> None:
        self._per_node.pop(node, None)

    @property
    def per_node(self) -> int:
        return self._per_node_limit

    @property
    def total(self) -> asyncio.Semaphore:
        return self._total


def outcome_of(instance: model.GadgetInstance) -> InstanceOutcome:
    """The node's outcome from what its daemon reports about an instance."""
    if instance.status is model.InstanceStatus.ERROR:
        return InstanceOutcome(NodeState.FAILED, instance.id, instance.message or "the daemon reports an error")
    return InstanceOutcome(NodeState.RUNNING, instance.id)


async def execute(
    plan: planner.NodePlan,
    api: InstanceApi,
    actual: dict[str, model.GadgetInstance],
    *,
    limits: Limits,
    owner_gone: OwnerGone,
    node_gone: NodeGone | None = None,
    proven: Collection[str] = (),
) -> PassResult:
    """Run ``plan``; ``actual`` (the node's instances by ID) is updated in place as calls succeed.
    ``proven``: the instances proven running on the node, which the instances they replace wait for."""
    result = PassResult()
    for wanted, instance in plan.present:
        result.outcomes[wanted.owner.resource_uid] = outcome_of(instance)
    node_limit = limits.node(plan.node)

    async def bounded(call: Awaitable[T]) -> T:
        async with limits.total, node_limit:
            return await call

    async def create(wanted: planner.DesiredInstance) -> None:
        uid = wanted.owner.resource_uid
        try:
            created = await _create_or_adopt(api, wanted, bounded)
        except errors.DaemonUnreachable as error:
            result.unreachable = str(error)
            result.outcomes[uid] = InstanceOutcome(NodeState.UNREACHABLE, wanted.instance.id, str(error))
            return
        except errors.DaemonError as error:
            result.outcomes[uid] = InstanceOutcome(NodeState.FAILED, wanted.instance.id, error.message)
            return
        actual[created.id] = created
        result.created += 1
        result.outcomes[uid] = outcome_of(created)

    await each(plan.creates, create, limits.per_node)

    async def remove(removal: planner.Removal) -> None:
        if removal.after_proven is not None and removal.after_proven not in proven:
            return  # the replacement does not run here (yet): keep the old instance running
        if removal.verify_owner and not await owner_gone(removal.owner):
            return
        if removal.verify_node and (node_gone is None or not await node_gone(removal.owner.node)):
            return
        try:
            await bounded(api.remove_instance(removal.instance_id))
        except errors.InstanceNotFound:
            pass
        except errors.DaemonUnreachable as error:
            result.unreachable = str(error)
            return
        except errors.DaemonError as error:
            logger.warning("node %s: removing %s failed: %s", plan.node, removal.instance_id, error)
            result.removal_errors[removal.owner.resource_uid] = f"removing the instance failed: {error.message}"
            return
        logger.info(
            "node %s: removed instance %s of %s (%s)",
            plan.node,
            removal.instance_id,
            removal.owner.resource,
            removal.reason,
        )
        actual.pop(removal.instance_id, None)
        result.removed += 1

    if result.unreachable is None:
        await each(plan.removals, remove, limits.per_node)
    return result


async def each(items: Sequence[X], action: Callable[[X], Awaitable[None]], width: int) -> None:
    """``action`` on every item, ``width`` at a time: a few workers pull the items, so a plan of
    thousands of calls holds a few coroutines, not one per call."""
    pending = iter(items)

    async def worker() -> None:
        for item in pending:
            await action(item)

    await asyncio.gather(*(worker() for _ in range(min(width, len(items)))))


async def _create_or_adopt(
    api: InstanceApi,
    wanted: planner.DesiredInstance,
    bounded: Callable[[Awaitable[model.GadgetInstance]], Awaitable[model.GadgetInstance]],
) -> model.GadgetInstance:
    """Create ``wanted``; if it already exists and is ours, that instance. A real collision raises the
    daemon's "already exists"; an unreachable daemon raises, whichever call found it."""
    api = api.on_behalf_of(wanted.owner.tenant)
    try:
        return await bounded(api.create_instance(wanted.instance, event_buffer_length=wanted.event_buffer_length))
    except errors.InstanceAlreadyExists as error:
        adopted = await _adopt(api, wanted, error, bounded)
        if adopted is None:
            raise
        return adopted


async def _adopt(
    api: InstanceApi,
    wanted: planner.DesiredInstance,
    error: errors.InstanceAlreadyExists,
    bounded: Callable[[Awaitable[model.GadgetInstance]], Awaitable[model.GadgetInstance]],
) -> model.GadgetInstance | None:
    """The instance already exists: ours (a concurrent or earlier pass made it) or a real collision."""
    try:
        existing = await bounded(api.get_instance(wanted.instance.id))
    except errors.DaemonUnreachable:
        raise  # not a collision: the pass ends as unreachable
    except errors.DaemonError:
        return None
    if identity.parse_ownership(existing.tags) == wanted.owner:
        return existing
    logger.warning("instance %s collides with one we do not own: %s", wanted.instance.id, error)
    return None
