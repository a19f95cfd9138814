"""GetState: the ``State`` message, built from what the operator holds in memory.

Pure: reads the runtime (``Operator``) and the reconciler, calls nothing, changes nothing. What it
shows of each resource is the operator's view *now*: the phase, message, node entries and rollout the
next status write would carry (every node, not capped as in ``status.nodes``); ``observed_generation``
is the one last written to the status, so a reader also sees whether the status has caught up.

A standby replica holds no reconciler: it shows no resources, and daemons as discovery knows them
(never contacted). Cost: one status computation per resource, on demand; nothing on the hot path.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from gadget_operator import __version__, identity
from gadget_operator.control import events
from gadget_operator.control.pb import control_pb2
from gadget_operator.control.recorder import Recorder
from gadget_operator.daemon.portforward import SCHEME as PORTFORWARD_SCHEME
from gadget_operator.discovery import Topology
from gadget_operator.resource import GadgetInstanceResource
from gadget_operator.settings import DaemonStore, DiscoveryMode, Settings

if TYPE_CHECKING:
    from gadget_operator.leadership import Elector
    from gadget_operator.reconciler import Reconciler

LEADER = "leader"
STANDBY = "standby"


class Operator(Protocol):
    """What the control API reads of a running operator (``handlers.Runtime``)."""

    @property
    def settings(self) -> Settings: ...

    @property
    def topology(self) -> Topology: ...

    @property
    def reconciler(self) -> Reconciler | None:
        """None while this replica stands by."""
        ...

    @property
    def elector(self) -> Elector | None:
        """None without leader election."""
        ...

    @property
    def recorder(self) -> Recorder: ...

    @property
    def started(self) -> float:
        """Seconds since the epoch when the operator started."""
        ...


def role(op: Operator) -> str:
    """``leader`` when this replica works (standalone, or holding the Lease), else ``standby``."""
    return LEADER if op.elector is None or op.elector.leading else STANDBY


def build(op: Operator) -> control_pb2.State:
    reconciler = op.reconciler
    resources = [] if reconciler is None else [resource_state(reconciler, gi) for gi in _ordered(reconciler)]
    return control_pb2.State(operator=operator_info(op), resources=resources, daemons=daemon_states(op))


def _ordered(reconciler: Reconciler) -> list[GadgetInstanceResource]:
    return sorted(reconciler.resources.values(), key=lambda gi: (gi.kind.kind, gi.namespace, gi.name))


def operator_info(op: Operator) -> control_pb2.OperatorInfo:
    settings = op.settings
    elector = op.elector
    return control_pb2.OperatorInfo(
        version=__version__,
        role=role(op),
        identity=settings.leader_election.identity,
        started=events.timestamp(op.started),
        settings=settings_shown(settings),
        leader=(elector.holder if elector is not None else ""),
    )


def settings_shown(settings: Settings) -> dict[str, str]:
    """The settings that change what the operator does, by the name of their ``run`` flag."""
    discovery, executor, control = settings.discovery, settings.executor, settings.control
    election = settings.leader_election
    shown = {
        "discovery": discovery.mode.value,
        "daemon-store": discovery.daemon_store.value,
        "namespace": ",".join(settings.namespaces) or "(all)",
        "resync-interval": f"{executor.resync_interval:g}s",
        "rpc-timeout": f"{executor.rpc_timeout:g}s",
        "max-concurrency": str(executor.max_concurrency),
        "node-concurrency": str(executor.node_concurrency),
        "leader-elect": (
            f"lease {election.lease_namespace}/{election.lease_name}" if election.enabled else "off (standalone)"
        ),
        "allowed-image": " ".join(settings.tenancy.allowed_images),
        "control-tls": ("mutual" if control.tls_client_ca else "on") if control.tls else "off",
        "control-event-buffer": str(control.event_buffer),
    }
    if discovery.mode is DiscoveryMode.PODS:
        shown["daemon-transport"] = discovery.transport.value
        shown["daemon-namespace"] = discovery.daemon_namespace
    shown["daemon-tls"] = "on" if discovery.tls.enabled else "off"
    return shown


def resource_state(reconciler: Reconciler, gi: GadgetInstanceResource) -> control_pb2.ResourceState:
    rendered = reconciler.report.render(gi.uid, max_node_entries=sys.maxsize)
    status: Mapping[str, Any] = rendered.compute() if rendered is not None else gi.status
    nodes = [
        control_pb2.NodeEntry(
            node=str(entry.get("node", "")),
            state=str(entry.get("state", "")),
            instance_id=str(entry.get("instanceId", "")),
            message=str(entry.get("message", "")),
        )
        for entry in status.get("nodes") or ()
        if isinstance(entry, Mapping)
    ]
    state = control_pb2.ResourceState(
        kind=gi.kind.kind,
        namespace=gi.namespace,
        name=gi.name,
        uid=gi.uid,
        generation=gi.generation,
        observed_generation=int(gi.status.get("observedGeneration") or 0),
        phase=str(status.get("phase") or ""),
        message=str(status.get("message") or ""),
        nodes=nodes,
    )
    progress = reconciler.rollouts.progress(gi)
    if progress is not None:
        state.rollout.CopyFrom(
            control_pb2.RolloutState(
                strategy=progress.strategy,
                max_surge=progress.max_surge,
                updated_nodes=progress.updated,
                updating_nodes=progress.updating,
                waiting_nodes=progress.waiting,
                halted=progress.halted,
                paused=progress.paused,
                awaiting_step=progress.awaiting_step,
                steps=gi.controls.steps,
            )
        )
    return state


def transport(address: str, settings: Settings) -> str:
    """How a daemon address is reached: ``unix``, ``tcp``, ``pod-ip`` or ``portforward``."""
    if address.startswith(PORTFORWARD_SCHEME):
        return "portforward"
    if address.startswith("unix://"):
        return "unix"
    return "pod-ip" if settings.discovery.mode is DiscoveryMode.PODS else "tcp"


def daemon_states(op: Operator) -> list[control_pb2.DaemonState]:
    reconciler = op.reconciler
    contacts = reconciler.recorder.contacts if reconciler is not None else {}
    states = []
    for node, address in sorted(op.topology.endpoints.items()):
        contact = contacts.get(node)
        state = control_pb2.DaemonState(
            node=node,
            address=address,
            transport=transport(address, op.settings),
            reachable=contact is not None and contact.reachable is True,
            last_error=contact.last_error if contact is not None else "",
            instances=_instances(reconciler, node) if reconciler is not None else 0,
        )
        if contact is not None and contact.last_contact is not None:
            state.last_contact.CopyFrom(events.timestamp(contact.last_contact))
        states.append(state)
    return states


def _instances(reconciler: Reconciler, node: str) -> int:
    """How many of the operator's instances ``node``'s daemon runs, as last seen."""
    if reconciler.settings.discovery.daemon_store is DaemonStore.SHARED and reconciler.shared is not None:
        held = reconciler.shared.inventory.runs_on(node)
        return sum(1 for instance in held if identity.parse_ownership(instance.tags) is not None)
    worker = reconciler.workers.get(node)
    if worker is None or worker.actual is None:
        return 0
    owners = (identity.parse_ownership(instance.tags) for instance in worker.actual.values())
    return sum(1 for owner in owners if owner is not None and owner.node == node)
