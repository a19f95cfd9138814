"""Deletion: the places each resource being deleted must still be cleaned of, and when it is done.

A GadgetInstance carries the ``gadget-operator.io/cleanup`` finalizer before anything runs for it
(``finalizers``). Once it is being deleted it wants nothing anywhere, and it is tracked here until no
instance of it is left; then the finalizer goes.

* **Shared store**: one place, the store (``STORE``), cleaned through any daemon; done when the store
  holds none of the resource's instances. A restarting daemon starts nothing the store no longer holds.
* **Per-node stores**: every daemon that may hold an instance. That is every reachable daemon (also
  one whose Node left the cluster: what it holds is removed), and every node whose daemon cannot be
  reached now but may still hold one (``may_hold``): its Node exists and its daemon pod is restarting,
  or it held one when last seen. A node is clean once its daemon has been listed without the
  resource's instances. A node that no longer exists never holds a deletion up.

The node entries of the status say why a deletion waits (Removing, the daemon's error, or waiting for
the daemon to come back).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from gadget_operator import identity
from gadget_operator.daemon import model
from gadget_operator.status import NodeOutcome, NodeState

if TYPE_CHECKING:
    from gadget_operator.reconciler import Reconciler

STORE = "<store>"
"""Stands for the whole shared store among the places a deletion must still clean."""
WAITING_FOR_DAEMON = "waiting for the gadget daemon on this node to come back to remove the instance"


class Deletions:
    def __init__(self, reconciler: Reconciler) -> None:
        self.rec = reconciler
        self.pending: dict[str, set[str]] = {}
        """Per resource UID being deleted: the nodes (or ``STORE``) not yet confirmed clean."""
        self.held_when_lost: dict[str, dict[str, str]] = {}
        """Per-node stores: per node whose daemon went out of reach while its Node exists, the resources
        (by UID, their instance's ID) it held when last seen."""

    def __contains__(self, uid: object) -> bool:
        return uid in self.pending

    def done(self, uid: str) -> bool:
        return uid in self.pending and not self.pending[uid]

    def waiting_on(self, node: str) -> list[str]:
        """The resources whose deletion waits for ``node``."""
        return [uid for uid, places in self.pending.items() if node in places]

    # -- a deletion starts, ends --------------------------------------------------------------------

    def begin(self, uid: str) -> None:
        rec = self.rec
        if rec.shared is not None:
            self.pending[uid] = {STORE}
            rec.outcomes.pop(uid, None)
            rec.writer.mark(uid)
            rec.shared.wake()
            return
        places = self.pending[uid] = rec.served_nodes() | self._out_of_reach_holders(uid)
        rec.writer.mark(uid)
        rec.wake_nodes(places)
        for node in places - rec.workers.keys():
            self._wait_for_daemon(uid, node)
        if not places:
            rec.finalizers.sync(uid)

    def released(self, uid: str) -> None:
        """The finalizer of a resource whose deletion was complete is gone."""
        self.pending.pop(uid, None)

    def forget(self, uid: str) -> None:
        self.pending.pop(uid, None)

    # -- what the node workers and the topology learn ----------------------------------------------

    def node_listed(self, node: str, actual: Mapping[str, model.GadgetInstance]) -> None:
        """Per-node store: ``node``'s daemon was listed (and this pass's removals are done)."""
        holding = {
            owner.resource_uid
            for instance in actual.values()
            if (owner := identity.parse_ownership(instance.tags)) is not None and owner.node == node
        }
        for uid in self.waiting_on(node):
            if uid in holding:
                self.rec.set_outcome(uid, node, NodeOutcome(node, NodeState.REMOVING))
            else:
                self._clean(uid, node)

    def node_unreachable(self, node: str, state: NodeState, message: str) -> None:
        for uid in self.waiting_on(node):
            self.rec.set_outcome(uid, node, NodeOutcome(node, state, "", message))

    def node_served(self, node: str) -> None:
        """Per-node store: ``node``'s daemon is reachable (again): it is listed like any other, and a
        deletion under way cleans it too."""
        self.held_when_lost.pop(node, None)
        for places in self.pending.values():
            places.add(node)

    def node_lost(self, node: str, held: Mapping[str, str]) -> None:
        """``node``'s daemon is no longer served; ``held``: what it held when last seen (per-node)."""
        if self.rec.shared is None and node in self.rec.topology.labels:
            self.held_when_lost[node] = dict(held)
        for uid in self.waiting_on(node):
            if self._may_hold(uid, node):
                self._wait_for_daemon(uid, node)
            else:
                self._clean(uid, node)

    def node_gone(self, node: str) -> None:
        """A node that left the cluster and whose daemon cannot be reached blocks nothing: its instances
        are removed if its daemon answers again, and nothing waits for it meanwhile."""
        for uid in self.waiting_on(node):
            self._clean(uid, node)

    def recheck_out_of_reach(self, node: str) -> None:
        """A node without a reachable daemon changed (its Node or its daemon pod went, or a pod came that
        is not usable yet): the deletions waiting for it stop waiting once it cannot hold anything."""
        if node not in self.rec.topology.labels:
            self.held_when_lost.pop(node, None)
        for uid in self.waiting_on(node):
            if not self._may_hold(uid, node):
                self._clean(uid, node)

    def store_clean_of(self, holders: Iterable[str]) -> None:
        """Shared store: the deletions whose resource has no instance left in the store are done."""
        left = set(holders)
        for uid in [uid for uid in self.pending if uid not in left]:
            self.pending[uid].discard(STORE)
            self.rec.outcomes.pop(uid, None)
            if not self.pending[uid]:
                self.rec.finalizers.sync(uid)

    # -- internals ---------------------------------------------------------------------------------

    def _clean(self, uid: str, node: str) -> None:
        self.pending[uid].discard(node)
        if self.rec.outcomes.get(uid, {}).pop(node, None) is not None:
            self.rec.writer.mark(uid)
        if not self.pending[uid]:
            self.rec.finalizers.sync(uid)

    def _may_hold(self, uid: str, node: str) -> bool:
        """Whether ``node``, whose daemon cannot be reached now, may still hold an instance of ``uid``:
        its Node exists, and its daemon was seen holding one or has a pod that is not usable yet
        (restarting, rolling out), which starts again what its store keeps."""
        if node not in self.rec.topology.labels:
            return False
        return self.rec.topology.has_daemon(node) or uid in self.held_when_lost.get(node, {})

    def _out_of_reach_holders(self, uid: str) -> set[str]:
        candidates = self.rec.topology.daemon_nodes() | self.held_when_lost.keys()
        return {node for node in candidates if node not in self.rec.workers and self._may_hold(uid, node)}

    def _wait_for_daemon(self, uid: str, node: str) -> None:
        instance_id = self.held_when_lost.get(node, {}).get(uid, "")
        self.rec.set_outcome(uid, node, NodeOutcome(node, NodeState.UNREACHABLE, instance_id, WAITING_FOR_DAEMON))
