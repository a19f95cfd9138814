"""The hooks that feed the event log, and what the operator knows of each daemon's reachability.

The reconciler and its helpers call one hook where something happens (an instance created, a node
pass that failed, a status written with a new phase, a rollout step); the hook keeps only
transitions (an outcome that did not change records nothing; a node that stays unreachable is
reported once) and appends a typed payload (``events``) to the journal. Each hook costs a comparison
or two when nothing changed, and a small object when something did: they sit on the hot path
(``bench/operator_scale.py``), so nothing here formats a string or builds a message.

``contacts`` is the table behind GetState's daemons: when each node's daemon last answered a pass,
and the error of the pass that failed, if it has not answered since.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from gadget_operator import identity, planner, resource
from gadget_operator.control import events
from gadget_operator.control.journal import Journal
from gadget_operator.control.pb import control_pb2
from gadget_operator.daemon import model
from gadget_operator.resource import GadgetInstanceResource
from gadget_operator.status import NodeOutcome, NodeState

_REPORTED = {NodeState.RUNNING: events.InstanceAction.RUNNING, NodeState.FAILED: events.InstanceAction.FAILED}


@dataclass(slots=True)
class Contact:
    """One node's daemon as the operator last reached it."""

    address: str
    last_contact: float | None = None
    """Seconds since the epoch of the last pass it answered."""
    last_error: str = ""
    """Why the last pass failed, while it has not answered since."""
    reachable: bool | None = None
    """None until its first pass."""


class Recorder:
    def __init__(self, journal: Journal[events.Event] | None = None, *, clock: Callable[[], float] = time.time) -> None:
        self.journal: Journal[events.Event] = journal if journal is not None else Journal()
        self.contacts: dict[str, Contact] = {}
        self._clock = clock
        self._refs: dict[str, events.Ref] = {}
        """By resource key (``namespace/name``, or a ClusterGadgetInstance's name): built once each."""

    def ref(self, key: str) -> events.Ref:
        """The resource a key names (a resource's ``key``, or the one its instances' ownership tags carry)."""
        found = self._refs.get(key)
        if found is None:
            kind, namespace, name = resource.locate(key)
            found = self._refs[key] = events.Ref(kind.kind, namespace, name)
        return found

    # -- instances ---------------------------------------------------------------------------------

    def outcome(self, gi: GadgetInstanceResource | None, previous: NodeOutcome | None, outcome: NodeOutcome) -> None:
        """A resource's outcome on a node changed: its instance runs (proven) or failed there."""
        action = _REPORTED.get(outcome.state)
        if action is None or gi is None:
            return
        if previous is not None and previous.state is outcome.state and previous.instance_id == outcome.instance_id:
            return  # (only the message changed)
        message = outcome.message if action is events.InstanceAction.FAILED else ""
        self.journal.append(events.InstanceEvent(action, self.ref(gi.key), outcome.node, outcome.instance_id, message))

    def node_pass(self, node: str, plan: planner.NodePlan, actual: Mapping[str, model.GadgetInstance]) -> None:
        """A pass over a node's own store is done: what it created and removed (``actual`` is what the
        daemon holds afterwards)."""
        for wanted in plan.creates:
            if wanted.instance.id in actual:
                self.journal.append(
                    events.InstanceEvent(
                        events.InstanceAction.CREATED, self.ref(wanted.owner.resource), node, wanted.instance.id
                    )
                )
        for removal in plan.removals:
            if removal.instance_id not in actual:
                self.journal.append(
                    events.InstanceEvent(
                        events.InstanceAction.REMOVED,
                        self.ref(removal.owner.resource),
                        node,
                        removal.instance_id,
                        removal.reason,
                    )
                )

    def stored(self, owner: identity.Ownership, instance_id: str, *, through: str, nodes: int) -> None:
        """An instance written to IG's shared store (through one daemon; it runs on ``nodes`` nodes)."""
        message = f"written to IG's shared store through {through}; runs on {nodes} node(s)"
        self.journal.append(
            events.InstanceEvent(events.InstanceAction.CREATED, self.ref(owner.resource), "", instance_id, message)
        )

    def unstored(self, owner: identity.Ownership, instance_id: str, *, reason: str) -> None:
        """An instance removed from IG's shared store."""
        self.journal.append(
            events.InstanceEvent(events.InstanceAction.REMOVED, self.ref(owner.resource), "", instance_id, reason)
        )

    # -- nodes -------------------------------------------------------------------------------------

    def joined(self, node: str, address: str) -> None:
        """A node's daemon is served (a worker runs for it)."""
        self.contacts[node] = Contact(address)
        self.journal.append(events.NodeEvent(events.NodeAction.JOINED, node, address))

    def left(self, node: str) -> None:
        contact = self.contacts.pop(node, None)
        address = contact.address if contact is not None else ""
        self.journal.append(events.NodeEvent(events.NodeAction.LEFT, node, address))

    def reached(self, node: str) -> None:
        """A pass over the node got its answers."""
        contact = self.contacts.get(node)
        if contact is None:
            return
        contact.last_contact = self._clock()
        if contact.reachable is False:
            contact.last_error = ""
            self.journal.append(events.NodeEvent(events.NodeAction.REACHABLE, node, contact.address))
        contact.reachable = True

    def unreachable(self, node: str, error: str) -> None:
        """A pass over the node could not ask its daemon (it did not answer, or refused to list)."""
        contact = self.contacts.get(node)
        if contact is None:
            return
        contact.last_error = error
        if contact.reachable is not False:
            self.journal.append(events.NodeEvent(events.NodeAction.UNREACHABLE, node, contact.address, error))
        contact.reachable = False

    # -- resources and rollouts --------------------------------------------------------------------

    def phase(self, gi: GadgetInstanceResource, previous: str, phase: str, message: str) -> None:
        """A status with a new phase was written."""
        self.journal.append(events.ResourceEvent(self.ref(gi.key), phase, previous, message))

    def rollout(
        self,
        action: events.RolloutAction,
        gi: GadgetInstanceResource,
        *,
        updated: int,
        total: int,
        nodes: tuple[str, ...] = (),
    ) -> events.RolloutEvent:
        event = events.RolloutEvent(action, self.ref(gi.key), updated, total, nodes)
        self.journal.append(event)
        return event

    # -- the operator ------------------------------------------------------------------------------

    def leadership(self, role: str, identity: str) -> None:
        self.journal.append(events.LeadershipEvent(role, identity))

    def intent(self, intent: control_pb2.Intent, result: control_pb2.IntentResult, *, source: str = "api") -> None:
        self.journal.append(events.IntentEvent(intent, result, source))

    def resync_requested(self, gi: GadgetInstanceResource, nodes: int) -> None:
        """The resync annotation got a new value: recorded as the intent it stands for."""
        intent = control_pb2.Intent(resync=control_pb2.ResyncIntent(resource=self.ref(gi.key).message()))
        message = f"resync of {self.ref(gi.key)} ({nodes} node(s)), asked for by {resource.RESYNC_ANNOTATION}"
        self.intent(intent, control_pb2.IntentResult(accepted=True, message=message), source="annotation")
