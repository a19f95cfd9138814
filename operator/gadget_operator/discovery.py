"""Which nodes exist, their labels, and where each node's gadget daemon listens.

The only module that reads Nodes and Pods. Nodes arrive through kopf's watch (``apply_node``); daemon
endpoints come either from a fixed map (static discovery) or from the gadget DaemonSet's pods in one
namespace (``watch_daemon_pods``), watched here rather than through kopf so the operator needs pod
access in that namespace only.

A node is *reachable for planning* once both its Node object and its daemon endpoint are known. Until
then it gets no instances and none are removed from it: a restarted operator must not mistake
"not seen yet" for "gone".

A daemon pod that exists but cannot be used yet (Pending, not Running, no IP, being deleted: a daemon
restarting or rolling out) gives its node no endpoint, but the node still *has a daemon*
(``has_daemon``): with per-node stores that daemon keeps its instances on the node's disk and starts
them again, so a deletion must wait for it rather than count the node as clean.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gadget_operator import kube
from gadget_operator.daemon.portforward import PodPort
from gadget_operator.settings import DaemonTransport, DiscoveryMode, DiscoverySettings

logger = logging.getLogger(__name__)

ChangeListener = Callable[[set[str]], None]
"""Called with the names of nodes whose labels or endpoint changed, that appeared or went, or whose
daemon pod appeared or went (``has_daemon``)."""


@dataclass(slots=True)
class Topology:
    """Nodes, their labels and daemon endpoints, as last seen."""

    settings: DiscoverySettings
    on_change: ChangeListener = field(default=lambda nodes: None)
    labels: dict[str, Mapping[str, str]] = field(default_factory=dict)
    endpoints: dict[str, str] = field(default_factory=dict)
    pod_uids: dict[str, str] = field(default_factory=dict)
    """Which daemon pod each endpoint came from, so a late DELETED of a replaced pod is ignored."""
    daemon_pods: dict[str, set[str]] = field(default_factory=dict)
    """Per node, the UIDs of its daemon pods that exist, usable or not (pods discovery); a node is
    left out once it has none."""
    endpoints_listed: bool = False
    """Whether the first full listing of endpoints is done (static discovery: at once)."""

    def __post_init__(self) -> None:
        if self.settings.mode is DiscoveryMode.STATIC:
            self.endpoints = dict(self.settings.static_nodes)
            self.endpoints_listed = True

    def ready_nodes(self) -> dict[str, str]:
        """Nodes with both a Node object and a daemon endpoint, mapped to the endpoint."""
        return {node: address for node, address in self.endpoints.items() if node in self.labels}

    def has_daemon(self, node: str) -> bool:
        """Whether ``node`` has a gadget daemon, usable now (an endpoint) or not yet (a daemon pod that is
        starting, restarting or being replaced), whether or not its Node object exists."""
        return node in self.endpoints or node in self.daemon_pods

    def daemon_nodes(self) -> set[str]:
        """Every node that ``has_daemon``."""
        return self.endpoints.keys() | self.daemon_pods.keys()

    def apply_node(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        name = body["metadata"]["name"]
        if event_type == "DELETED":
            if self.labels.pop(name, None) is not None:
                self.on_change({name})
            return
        labels = dict(body["metadata"].get("labels") or {})
        if self.labels.get(name) != labels:
            self.labels[name] = labels
            self.on_change({name})

    def replace_nodes(self, nodes: Iterable[Mapping[str, Any]]) -> None:
        """The full Node list (start-up): one change notice for every node that differs."""
        labels: dict[str, Mapping[str, str]] = {
            body["metadata"]["name"]: dict(body["metadata"].get("labels") or {}) for body in nodes
        }
        changed = {node for node in self.labels.keys() | labels.keys() if self.labels.get(node) != labels.get(node)}
        self.labels = labels
        if changed:
            self.on_change(changed)

    def replace_endpoints(
        self,
        endpoints: Mapping[str, str],
        pod_uids: Mapping[str, str],
        daemon_pods: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        """A full listing: the endpoints, the pod each came from and, per node, every daemon pod that
        exists (default: the endpoints' own pods)."""
        had_daemon = self.daemon_nodes()
        self.pod_uids = dict(pod_uids)
        changed = {
            node for node in self.endpoints.keys() | endpoints.keys() if self.endpoints.get(node) != endpoints.get(node)
        }
        self.endpoints = dict(endpoints)
        if daemon_pods is None:
            daemon_pods = {node: (uid,) for node, uid in pod_uids.items()}
        self.daemon_pods = {node: set(uids) for node, uids in daemon_pods.items() if uids}
        changed |= had_daemon ^ self.daemon_nodes()
        self.endpoints_listed = True
        if changed:
            self.on_change(changed)

    def apply_pod(self, event_type: str, pod: Mapping[str, Any]) -> None:
        node, address = pod_endpoint(pod, self.settings)
        if node is None:
            return
        uid = str(pod["metadata"].get("uid", ""))
        had_daemon = self.has_daemon(node)
        changed = False
        if event_type == "DELETED":
            pods = self.daemon_pods.get(node, set())
            pods.discard(uid)
            if not pods:
                self.daemon_pods.pop(node, None)
        else:
            self.daemon_pods.setdefault(node, set()).add(uid)
        if event_type == "DELETED" or address is None:
            # Only forget the endpoint if it is this pod's: a replacement pod may already be there.
            if self.pod_uids.get(node) == uid and self.endpoints.pop(node, None) is not None:
                self.pod_uids.pop(node, None)
                changed = True
        else:
            self.pod_uids[node] = uid
            if self.endpoints.get(node) != address:
                self.endpoints[node] = address
                changed = True
        if changed or self.has_daemon(node) != had_daemon:
            self.on_change({node})


def pod_endpoint(pod: Mapping[str, Any], settings: DiscoverySettings) -> tuple[str | None, str | None]:
    """(node, daemon address) of a daemon pod; the address is None while the pod is not usable."""
    node = (pod.get("spec") or {}).get("nodeName")
    port = settings.daemon_port
    status = pod.get("status") or {}
    pod_ip = status.get("podIP")
    if not node:
        return None, None
    if pod.get("metadata", {}).get("deletionTimestamp") or status.get("phase") != "Running" or not pod_ip:
        return node, None
    if settings.transport is DaemonTransport.PORT_FORWARD:
        metadata = pod["metadata"]
        return node, PodPort(metadata.get("namespace") or settings.daemon_namespace, metadata["name"], port).address
    host = f"[{pod_ip}]" if ":" in pod_ip else pod_ip
    return node, f"tcp://{host}:{port}"


async def list_nodes(api: kube.KubeApi, topology: Topology) -> None:
    """Seed the topology with every Node before the first pass: a restarted operator must know the
    whole cluster before it decides that a node is gone or that a deletion is complete."""
    topology.replace_nodes(await api.list_nodes())


async def list_daemon_pods(api: kube.KubeApi, topology: Topology) -> str:
    """Replace the endpoints with the running daemon pods (and the daemon pods with all of them);
    returns the list's resourceVersion."""
    settings = topology.settings
    pods, resource_version = await api.list_pods(settings.daemon_namespace, settings.daemon_selector)
    replace_daemon_pods(topology, pods)
    return resource_version


def replace_daemon_pods(topology: Topology, pods: Iterable[Mapping[str, Any]]) -> None:
    listed: dict[str, str] = {}
    owners: dict[str, str] = {}
    existing: dict[str, set[str]] = {}
    for pod in pods:
        node, address = pod_endpoint(pod, topology.settings)
        if node is None:
            continue
        uid = str(pod["metadata"].get("uid", ""))
        existing.setdefault(node, set()).add(uid)
        if address is not None:
            listed[node] = address
            owners[node] = uid
    topology.replace_endpoints(listed, owners, existing)


async def watch_daemon_pods(api: kube.KubeApi, topology: Topology, *, retry_delay: float = 2.0) -> None:
    """Keep ``topology.endpoints`` equal to the running daemon pods and ``topology.daemon_pods`` to all
    of them, forever (cancel to stop)."""
    settings = topology.settings
    await kube.list_and_watch(
        f"daemon pods in {settings.daemon_namespace}",
        lambda: api.list_pods(settings.daemon_namespace, settings.daemon_selector),
        lambda version: api.watch_pods(settings.daemon_namespace, settings.daemon_selector, version),
        on_list=lambda pods: replace_daemon_pods(topology, pods),
        on_event=topology.apply_pod,
        retry_delay=retry_delay,
    )
