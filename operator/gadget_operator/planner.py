"""The pure planner: what one node's daemon should run versus what it runs, turned into actions.

Node-centric: one call plans one node for every GadgetInstance at once, from

* ``desired``: the instances this node should run (one per matching resource, current spec), and
* ``actual``: what the node's daemon lists.

Rules, in order, for each instance the daemon lists:

1. Not tagged as ours: never touched (another tool or a person made it).
2. Tagged for another node: in Inspektor Gadget's DaemonSet mode every daemon lists the whole
   cluster's instances. Left to its own node, unless that node is not known here, in which case it
   is removed once the API server confirms the Node is gone (``Removal.verify_node``): nobody else
   would ever clean it up, and a just-restarted operator may not have seen every Node yet.
3. Its ID is desired here: kept; its daemon-reported state becomes the node's outcome.
4. Its resource is held (its new spec is still being checked by a dry run, or was rejected): kept.
5. Its resource still wants an instance here under another spec: removed only once the new one is
   proven running on this node (``Removal.after_proven``), so a spec change never leaves the node with
   nothing running, and a new spec that fails here leaves the old instance running.
6. Its resource is known and no longer wants it here (suspended, deleted, selector changed): removed.
7. Its resource is unknown to this process: a candidate orphan (``Removal.verify_owner``). The caller
   confirms with the API server that the resource is really gone before removing, because a
   just-restarted operator may not have seen every resource yet.

Every desired ID the daemon does not list is created.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass

from gadget_operator import identity
from gadget_operator.daemon import model
from gadget_operator.resource import GadgetInstanceResource


@dataclass(frozen=True, slots=True)
class DesiredInstance:
    """One instance one node should run for one resource."""

    owner: identity.Ownership
    instance: model.GadgetInstance
    event_buffer_length: int = 0


@dataclass(frozen=True, slots=True)
class Removal:
    instance_id: str
    owner: identity.Ownership
    reason: str
    after_proven: str | None = None
    """Remove only once this instance ID is proven running on the node (spec change: new before old)."""
    verify_owner: bool = False
    """The owner is unknown here: remove only if the API server confirms it is gone."""
    verify_node: bool = False
    """The instance's node is unknown here: remove only if the API server confirms the Node is gone."""


@dataclass(frozen=True, slots=True)
class NodePlan:
    node: str
    creates: tuple[DesiredInstance, ...]
    removals: tuple[Removal, ...]
    present: tuple[tuple[DesiredInstance, model.GadgetInstance], ...]
    """Desired instances the daemon already runs, with what it reports about them."""

    @property
    def is_noop(self) -> bool:
        return not self.creates and not self.removals


def plan_node(
    node: str,
    desired: Iterable[DesiredInstance],
    actual: Iterable[model.GadgetInstance],
    *,
    known_resources: Collection[str],
    known_nodes: Collection[str],
    held: Collection[str] = (),
) -> NodePlan:
    """Plan one node. ``known_resources`` are the UIDs of every GadgetInstance this process knows
    (including ones being deleted); ``known_nodes`` every Node seen to exist; ``held`` the resources
    whose instances stay as they are (a new spec still being checked, or rejected)."""
    desired_by_id = {d.instance.id: d for d in desired}
    desired_by_owner = {d.owner.resource_uid: d for d in desired_by_id.values()}
    listed_ids: set[str] = set()
    removals: list[Removal] = []
    present: list[tuple[DesiredInstance, model.GadgetInstance]] = []

    for instance in actual:
        listed_ids.add(instance.id)
        owner = identity.parse_ownership(instance.tags)
        if owner is None:
            continue
        if owner.node not in (node, identity.SHARED_NODE):  # a shared-store instance here is a stale one
            if owner.node not in known_nodes:
                reason = f"its node {owner.node} no longer exists"
                removals.append(Removal(instance.id, owner, reason, verify_node=True))
            continue
        wanted = desired_by_id.get(instance.id)
        if wanted is not None:
            present.append((wanted, instance))
        elif owner.resource_uid in held:
            continue
        elif (replacement := desired_by_owner.get(owner.resource_uid)) is not None:
            removals.append(Removal(instance.id, owner, "the spec changed", after_proven=replacement.instance.id))
        elif owner.resource_uid in known_resources:
            removals.append(Removal(instance.id, owner, "no longer wanted on this node"))
        else:
            removals.append(Removal(instance.id, owner, "its resource is gone", verify_owner=True))

    creates = tuple(d for instance_id, d in desired_by_id.items() if instance_id not in listed_ids)
    return NodePlan(node=node, creates=creates, removals=tuple(removals), present=tuple(present))


def desired_instance(resource: GadgetInstanceResource, node: str) -> DesiredInstance:
    """The instance ``resource`` wants on ``node`` (per-node store): deterministic ID and name,
    ownership tags, and ``nodes: [node]``."""
    return _desired(resource, node_tag=node, id_key=node, nodes=(node,))


def _desired(
    resource: GadgetInstanceResource, *, node_tag: str, id_key: str, nodes: tuple[str, ...]
) -> DesiredInstance:
    spec = resource.spec
    assert spec is not None, "only resources with a valid spec have desired instances"
    digest = spec.hash()
    owner = identity.Ownership(resource_uid=resource.uid, resource=resource.key, node=node_tag, spec_hash=digest)
    derived_id = identity.instance_id(resource.uid, id_key, digest)
    instance = model.GadgetInstance(
        id=derived_id,
        name=identity.instance_name(resource.name, derived_id),
        image=spec.image,
        params=spec.params,
        tags=(*identity.ownership_tags(owner), *spec.tags),
        nodes=nodes,
        log_level=spec.log_level,
    )
    return DesiredInstance(owner=owner, instance=instance, event_buffer_length=spec.event_buffer_length)


# -- IG's shared store (DaemonSet): one instance per resource, placed through any daemon ------------


@dataclass(frozen=True, slots=True)
class StorePlan:
    creates: tuple[DesiredInstance, ...]
    removals: tuple[Removal, ...]
    waiting: tuple[str, ...]
    """Old instances kept until their replacement has taken over on every node they share."""

    @property
    def is_noop(self) -> bool:
        return not self.creates and not self.removals


def desired_shared_instance(resource: GadgetInstanceResource, nodes: frozenset[str] | None) -> DesiredInstance:
    """The one stored instance ``resource`` wants in a shared store: ``nodes`` empty (IG runs it on
    every node, including nodes that join later) when the spec targets every node, else the nodes
    it selects. IG instances are immutable, so another node set is another instance (another ID)."""
    return _desired(
        resource, node_tag=identity.SHARED_NODE, id_key=identity.node_set_key(nodes), nodes=tuple(sorted(nodes or ()))
    )


def runs_on(instance: model.GadgetInstance, owner: identity.Ownership, nodes: Collection[str]) -> set[str]:
    """Which of ``nodes`` run ``instance`` in a shared store. An instance of the older per-node
    placement (``nodes: [its node]``, tagged with that node) runs on its node only."""
    if owner.node != identity.SHARED_NODE:
        return {owner.node} & set(nodes)
    return set(instance.nodes) & set(nodes) if instance.nodes else set(nodes)


def plan_store(
    desired: Mapping[str, DesiredInstance],
    stored: Iterable[model.GadgetInstance],
    *,
    held: Collection[str],
    known_resources: Collection[str],
    ready_nodes: Collection[str],
    taken_over: Callable[[str, str, bool], bool],
    partial: Collection[str] = (),
) -> StorePlan:
    """Plan the shared store as a whole. ``desired`` is the instance each running resource wants, by
    resource UID; ``held`` are resources whose instances stay as they are (their new spec is being
    checked or was rejected); ``taken_over(node, instance_id, same_spec)`` says whether an instance
    has settled on a node, so that the one it replaces can go: proven running, or the node cannot be
    asked, and also failed when the replaced one has the same spec (only the node set changed);
    ``partial`` are resources in a rolling update whose new spec covers only some of their nodes yet.

    Rules for each stored instance tagged as ours: the desired one is kept; another one of a resource
    that wants an instance is an old one (spec or node set changed): removed once the new one has
    taken over on every ready node both run on, so no node is left without the gadget and none runs
    it twice for longer than that, except that one of an older spec stays while a rolling update
    has not reached every node; one of a held resource stays; one of a known resource that wants
    nothing (suspended, being deleted, invalid) is removed; one of an unknown resource is an orphan,
    removed once the API server confirms its resource is gone."""
    stored_ids: set[str] = set()
    removals: list[Removal] = []
    waiting: list[str] = []
    for instance in stored:
        stored_ids.add(instance.id)
        owner = identity.parse_ownership(instance.tags)
        if owner is None:
            continue
        uid = owner.resource_uid
        wanted = desired.get(uid)
        if wanted is not None and wanted.instance.id == instance.id:
            continue
        if uid in held:
            continue
        if wanted is not None:
            same_spec = owner.spec_hash == wanted.owner.spec_hash
            if uid in partial and not same_spec:
                waiting.append(instance.id)
                continue
            shared = runs_on(instance, owner, ready_nodes) & runs_on(wanted.instance, wanted.owner, ready_nodes)
            if all(taken_over(node, wanted.instance.id, same_spec) for node in shared):
                removals.append(Removal(instance.id, owner, "replaced (spec or nodes changed)"))
            else:
                waiting.append(instance.id)
        elif uid in known_resources:
            removals.append(Removal(instance.id, owner, "no longer wanted"))
        else:
            removals.append(Removal(instance.id, owner, "its resource is gone", verify_owner=True))
    creates = tuple(d for d in desired.values() if d.instance.id not in stored_ids)
    return StorePlan(creates=creates, removals=tuple(removals), waiting=tuple(waiting))
