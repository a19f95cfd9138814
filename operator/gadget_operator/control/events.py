"""What the event log records: one small frozen payload per kind of event, its one-line summary, and
its ``LogEntry`` message (``proto/control/v1/control.proto``).

The payloads are plain dataclasses, not protobuf messages, because most of them are appended on the
reconciler's hot path (an instance created, a node proven running: two per instance) and most are
never read; a message is built only for a reader, from the entry it gets. For the same reason they
are not ``frozen`` (a frozen dataclass costs three times as much to build); nothing changes one once
it is appended.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime

from google.protobuf import timestamp_pb2

from gadget_operator.control.journal import Delivery
from gadget_operator.control.pb import control_pb2
from gadget_operator.resource import GadgetInstanceResource


class InstanceAction(enum.Enum):
    CREATED = control_pb2.InstanceEvent.CREATED
    RUNNING = control_pb2.InstanceEvent.RUNNING
    FAILED = control_pb2.InstanceEvent.FAILED
    REMOVED = control_pb2.InstanceEvent.REMOVED


class NodeAction(enum.Enum):
    JOINED = control_pb2.NodeEvent.JOINED
    LEFT = control_pb2.NodeEvent.LEFT
    UNREACHABLE = control_pb2.NodeEvent.UNREACHABLE
    REACHABLE = control_pb2.NodeEvent.REACHABLE


class RolloutAction(enum.Enum):
    STEP = control_pb2.RolloutEvent.STEP
    HALTED = control_pb2.RolloutEvent.HALTED
    PAUSED = control_pb2.RolloutEvent.PAUSED
    RESUMED = control_pb2.RolloutEvent.RESUMED
    COMPLETE = control_pb2.RolloutEvent.COMPLETE


@dataclass(slots=True)
class Ref:
    """A GadgetInstance (namespace and name) or a ClusterGadgetInstance (name only)."""

    kind: str
    namespace: str
    name: str

    @classmethod
    def of(cls, gi: GadgetInstanceResource) -> Ref:
        return cls(gi.kind.kind, gi.namespace, gi.name)

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}" if self.namespace else f"{self.kind} {self.name}"

    def message(self) -> control_pb2.ResourceRef:
        return control_pb2.ResourceRef(kind=self.kind, namespace=self.namespace, name=self.name)


@dataclass(slots=True)
class InstanceEvent:
    action: InstanceAction
    resource: Ref
    node: str
    """Empty for an instance written to IG's shared store (it runs on every node it names)."""
    instance_id: str
    message: str = ""

    def summary(self) -> str:
        # The resource and what happened first: the ID, long and rarely read, last (a narrow pane cuts it).
        where = f" on {self.node}" if self.node else ""
        text = f"{self.resource}: instance {self.action.name.lower()}{where} ({self.instance_id})"
        return f"{text}: {self.message}" if self.message else text


@dataclass(slots=True)
class NodeEvent:
    action: NodeAction
    node: str
    address: str = ""
    message: str = ""

    def summary(self) -> str:
        verb = {
            NodeAction.JOINED: "joined",
            NodeAction.LEFT: "left",
            NodeAction.UNREACHABLE: "is unreachable",
            NodeAction.REACHABLE: "is reachable again",
        }[self.action]
        text = f"node {self.node} {verb}" + (f" (daemon at {self.address})" if self.address else "")
        return f"{text}: {self.message}" if self.message else text


@dataclass(slots=True)
class ResourceEvent:
    resource: Ref
    phase: str
    previous_phase: str
    message: str = ""

    def summary(self) -> str:
        text = f"{self.resource} is {self.phase}" + (f" (was {self.previous_phase})" if self.previous_phase else "")
        return f"{text}: {self.message}" if self.message else text


@dataclass(slots=True)
class RolloutEvent:
    action: RolloutAction
    resource: Ref
    updated_nodes: int
    total_nodes: int
    nodes: tuple[str, ...] = ()
    """STEP: the nodes this step admitted to the new spec."""

    def summary(self) -> str:
        progress = f"{self.updated_nodes} of {self.total_nodes} node(s) updated"
        match self.action:
            case RolloutAction.STEP:
                return f"rollout of {self.resource}: {', '.join(self.nodes)} start(s) the new spec ({progress})"
            case RolloutAction.HALTED:
                return f"rollout of {self.resource} halted: the new spec failed ({progress})"
            case RolloutAction.PAUSED:
                return f"rollout of {self.resource} paused ({progress})"
            case RolloutAction.RESUMED:
                return f"rollout of {self.resource} resumed ({progress})"
            case RolloutAction.COMPLETE:
                return f"rollout of {self.resource} complete ({progress})"


@dataclass(slots=True)
class LeadershipEvent:
    role: str
    """``leader`` or ``standby``."""
    identity: str

    def summary(self) -> str:
        return f"this replica ({self.identity}) is the {self.role}"


@dataclass(slots=True)
class IntentEvent:
    intent: control_pb2.Intent
    result: control_pb2.IntentResult
    source: str = "api"
    """``api`` (Execute) or ``annotation`` (its twin on the resource)."""

    def summary(self) -> str:
        verdict = "accepted" if self.result.accepted else "refused"
        return f"intent from the {self.source} {verdict}: {self.result.message}"


Event = InstanceEvent | NodeEvent | ResourceEvent | RolloutEvent | LeadershipEvent | IntentEvent


def log_entry(delivery: Delivery[Event]) -> control_pb2.LogEntry:
    """The ``LogEntry`` a reader gets for one entry."""
    entry = delivery.entry
    message = control_pb2.LogEntry(
        timestamp=timestamp(entry.timestamp),
        sequence=entry.sequence,
        dropped=delivery.missed,
        summary=entry.payload.summary(),
    )
    payload = entry.payload
    match payload:
        case InstanceEvent():
            message.instance.CopyFrom(
                control_pb2.InstanceEvent(
                    action=payload.action.value,
                    resource=payload.resource.message(),
                    node=payload.node,
                    instance_id=payload.instance_id,
                    message=payload.message,
                )
            )
        case NodeEvent():
            message.node.CopyFrom(
                control_pb2.NodeEvent(
                    action=payload.action.value, node=payload.node, address=payload.address, message=payload.message
                )
            )
        case ResourceEvent():
            message.resource.CopyFrom(
                control_pb2.ResourceEvent(
                    resource=payload.resource.message(),
                    phase=payload.phase,
                    previous_phase=payload.previous_phase,
                    message=payload.message,
                )
            )
        case RolloutEvent():
            message.rollout.CopyFrom(
                control_pb2.RolloutEvent(
                    action=payload.action.value,
                    resource=payload.resource.message(),
                    updated_nodes=payload.updated_nodes,
                    total_nodes=payload.total_nodes,
                    nodes=list(payload.nodes),
                )
            )
        case LeadershipEvent():
            message.leadership.CopyFrom(control_pb2.LeadershipEvent(role=payload.role, identity=payload.identity))
        case IntentEvent():
            message.intent.CopyFrom(
                control_pb2.IntentEvent(intent=payload.intent, result=payload.result, source=payload.source)
            )
    return message


def timestamp(moment: float | datetime) -> timestamp_pb2.Timestamp:
    """A protobuf Timestamp of seconds since the epoch, or of an aware datetime."""
    if isinstance(moment, datetime):
        moment = moment.astimezone(UTC).timestamp()
    seconds = int(moment)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=int((moment - seconds) * 1e9))
