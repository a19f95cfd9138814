"""The operator's settings: one small dataclass per concern, composed into ``Settings``.

Built in one place (``cli.py``) from flags and environment variables; everything else receives the
finished object through kopf's ``memo``, so there are no globals.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field


class DiscoveryMode(enum.StrEnum):
    PODS = "pods"
    """Inspektor Gadget's own DaemonSet: one daemon pod per node, dialled at its pod IP."""
    STATIC = "static"
    """Standalone ``ig daemon``s: a fixed map of node name to address."""


@dataclass(frozen=True, slots=True)
class TLSSettings:
    """Mutual TLS towards the daemons (static discovery); all None means plaintext."""

    cert_file: str | None = None
    """Client certificate (PEM) presented to ``ig daemon --tls-client-ca-file``."""
    key_file: str | None = None
    ca_file: str | None = None
    """CA that signed the daemons' server certificates."""
    server_name: str | None = None
    """Overrides the name checked in the daemon's certificate (useful when dialling by IP)."""

    @property
    def enabled(self) -> bool:
        return self.ca_file is not None


class DaemonTransport(enum.StrEnum):
    """How pods discovery reaches a daemon pod."""

    PORT_FORWARD = "port-forward"
    """Through the API server's pods/portforward, like ``kubectl gadget``: works with a stock IG install."""
    POD_IP = "pod-ip"
    """Straight to the pod IP: needs the daemon to listen on the pod's network, not only on 127.0.0.1."""


@dataclass(frozen=True, slots=True)
class DiscoverySettings:
    mode: DiscoveryMode = DiscoveryMode.PODS
    daemon_namespace: str = "gadget"
    """Namespace of Inspektor Gadget's DaemonSet (``kubectl gadget deploy`` and IG's chart use ``gadget``)."""
    daemon_selector: str = "k8s-app=gadget"
    """Label selector of the daemon pods."""
    daemon_port: int = 8080
    """The gadget service's port inside each daemon pod."""
    transport: DaemonTransport = DaemonTransport.PORT_FORWARD
    static_nodes: Mapping[str, str] = field(default_factory=dict)
    """Node name to daemon address (``unix:///...`` or ``tcp://host:port``), for static discovery."""
    tls: TLSSettings = field(default_factory=TLSSettings)


@dataclass(frozen=True, slots=True)
class ExecutorSettings:
    rpc_timeout: float = 5.0
    """Deadline of every daemon call, in seconds: a hung daemon costs at most this much per pass."""
    max_concurrency: int = 64
    """Daemon calls in flight across all nodes."""
    node_concurrency: int = 8
    """Daemon calls in flight to one node, so one node is never flooded."""
    resync_interval: float = 30.0
    """Seconds between drift checks of each node (ListGadgetInstances), jittered by 10%."""
    verify_delay: float = 2.0
    """Seconds after a create before the node is listed again to pick up errors the daemon reports late
    (an image that cannot be pulled shows up as an Error state after Create succeeded)."""
    backoff_initial: float = 1.0
    """First retry delay for a failing node, doubled per failure up to ``backoff_max``."""
    backoff_max: float = 60.0


@dataclass(frozen=True, slots=True)
class StatusSettings:
    max_node_entries: int = 50
    """Per-node entries kept in ``status.nodes``; above it only nodes that are not running are listed."""
    settle_timeout: float = 2.0
    """Longest a status write waits for every target node to report once, so that apply-to-Ready is one
    write, not one per node."""
    max_settle_timeout: float = 30.0
    """While a resource stays unsettled, each progress write doubles its wait, up to this."""


@dataclass(frozen=True, slots=True)
class Settings:
    discovery: DiscoverySettings = field(default_factory=DiscoverySettings)
    executor: ExecutorSettings = field(default_factory=ExecutorSettings)
    status: StatusSettings = field(default_factory=StatusSettings)
    kube_server: str | None = None
    """API server URL to use instead of in-cluster or kubeconfig credentials (the emulator, tests)."""
    metrics_port: int = 9090
    """Prometheus /metrics port; 0 disables it."""
