"""What each node should run: every resource's desired instance on every node it targets.

Kept, not recomputed on every pass and every render: each node's desired instances (by resource UID),
each resource's matching nodes and, in a shared store, each resource's one instance are updated when
their inputs change (a resource's spec, the topology, a rolling update's step).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from gadget_operator import identity, planner
from gadget_operator.resource import GadgetInstanceResource, GadgetInstanceSpec

if TYPE_CHECKING:
    from gadget_operator.reconciler import Reconciler


class DesiredIndex:
    def __init__(self, reconciler: Reconciler) -> None:
        self.rec = reconciler
        self._by_node: dict[str, dict[str, planner.DesiredInstance]] = {}
        self.topology_version = 0
        self._matching_cache: dict[str, tuple[tuple[int, str], list[str]]] = {}
        self._shared_cache: dict[str, tuple[tuple[int, str, int], planner.DesiredInstance]] = {}

    def topology_changed(self, nodes: Iterable[str]) -> None:
        self.topology_version += 1
        if self.rec.shared is not None:
            self._by_node.clear()  # a node's labels change the node set of every resource's instance
            return
        for node in nodes:
            self._by_node.pop(node, None)  # its labels may have changed

    def forget(self, uid: str) -> None:
        for desired in self._by_node.values():
            desired.pop(uid, None)
        self._matching_cache.pop(uid, None)
        self._shared_cache.pop(uid, None)

    def on(self, node: str) -> list[planner.DesiredInstance]:
        desired = self._by_node.get(node)
        if desired is None:
            desired = self._by_node[node] = {
                uid: self._for(gi, node) for uid, gi in self.rec.resources.items() if self.targets(gi, node)
            }
        return list(desired.values())

    def update(self, gi: GadgetInstanceResource) -> None:
        """What ``gi`` wants changed: update it in every node's desired instances."""
        for node, desired in self._by_node.items():
            if self.targets(gi, node):
                desired[gi.uid] = self._for(gi, node)
            else:
                desired.pop(gi.uid, None)

    def matching_nodes(self, gi: GadgetInstanceResource, spec: GadgetInstanceSpec) -> list[str]:
        """The ready nodes ``spec`` selects; cached per topology and resource version."""
        key = (self.topology_version, gi.resource_version)
        cached = self._matching_cache.get(gi.uid)
        if cached is not None and cached[0] == key:
            return cached[1]
        labels = self.rec.topology.labels
        matching = [node for node in self.rec.topology.ready_nodes() if spec.targets(node, labels.get(node, {}))]
        self._matching_cache[gi.uid] = (key, matching)
        return matching

    def targets(self, gi: GadgetInstanceResource, node: str) -> bool:
        spec = gi.spec
        labels = self.rec.topology.labels.get(node)
        return (
            gi.active
            and gi.has_finalizer  # nothing runs that a deletion could not clean up
            and spec is not None
            and labels is not None  # a node that left the cluster runs nothing
            and spec.targets(node, labels)
            and self.rec.dry_runs.accepted(gi)
        )

    # -- where instances go, per store -------------------------------------------------------------

    def _for(self, gi: GadgetInstanceResource, node: str) -> planner.DesiredInstance:
        if self.rec.shared is None:
            return planner.desired_instance(gi, node)
        desired = self.shared(gi.uid)
        assert desired is not None, "targets() implies an active resource"
        return desired

    def shared(self, uid: str) -> planner.DesiredInstance | None:
        """The one stored instance a resource wants in a shared store (None: it wants none); cached
        per topology and resource version, since its node set is computed from every Node's labels."""
        gi = self.rec.resources.get(uid)
        if gi is None or not gi.active or gi.spec is None or not self.rec.dry_runs.accepted(gi):
            return None
        plan = self.rec.rollouts.registry.get(uid)
        step = plan.nodes if plan is not None and plan.digest == gi.spec.digest else None
        key = (self.topology_version, gi.resource_version, plan.version if plan is not None else 0)
        cached = self._shared_cache.get(uid)
        if cached is not None and cached[0] == key:
            return cached[1]
        spec = gi.spec
        nodes: frozenset[str] | None = step
        if step is None and not spec.targets_every_node:
            # Every Node the spec selects, with a daemon or not: a daemon pod coming or going then
            # changes nothing, and IG starts the instance on that node when its daemon is up.
            nodes = frozenset(node for node, labels in self.rec.topology.labels.items() if spec.targets(node, labels))
        desired = planner.desired_shared_instance(gi, nodes)
        self._shared_cache[uid] = (key, desired)
        return desired

    def expected_id(self, gi: GadgetInstanceResource, spec: GadgetInstanceSpec, node: str) -> str:
        """The ID of the instance that should run ``gi``'s current spec on ``node``."""
        if self.rec.shared is None:
            return identity.instance_id(gi.uid, node, spec.digest)
        desired = self.shared(gi.uid)
        return desired.instance.id if desired is not None else ""

    def held(self) -> set[str]:
        """Resources whose instances stay as they are: their spec awaits its dry run or was rejected,
        so what runs now is kept rather than replaced by nothing."""
        return {
            uid
            for uid, gi in self.rec.resources.items()
            if gi.active and gi.spec is not None and not self.rec.dry_runs.accepted(gi)
        }
