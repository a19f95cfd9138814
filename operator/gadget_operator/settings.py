"""The operator's settings: one small dataclass per concern, composed into ``Settings``.

Built in one place (``cli.py``) from flags and environment variables; everything else receives the
finished object through kopf's ``memo``, so there are no globals.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from gadget_operator.tenancy import DEFAULT_ALLOWED_IMAGES
from gadget_operator.tokens import ServiceAccount


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


class DaemonStore(enum.StrEnum):
    """Where the daemons keep their instances (inspektor-gadget.md, "The two ways a daemon is deployed")."""

    PER_NODE = "per-node"
    """Standalone ``ig daemon``: each daemon has its own store and runs what it is given, locally."""
    SHARED = "shared"
    """IG's DaemonSet: one ConfigMap per instance in the daemon namespace, shared by the whole cluster;
    every daemon runs the stored instances whose ``nodes`` is empty or names its node."""


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
    max_tunnels: int = 1024
    """Port-forward transport: most tunnels (API server WebSockets) open at once. Beyond it, the least
    recently used tunnel of a daemon with no call in flight is closed to make room. Above the number of
    daemon pods, so that drift checks cycling through the nodes do not reopen tunnels; each costs
    about four file descriptors."""
    tunnel_idle_timeout: float = 60.0
    """Port-forward transport: seconds without a call after which a daemon's tunnel is closed (its gRPC
    channel goes idle at half of it); the next call opens a new one."""
    tunnel_connect_timeout: float = 10.0
    """Port-forward transport: deadline of a tunnel's WebSocket handshake, and of the wait for a free
    tunnel when all ``max_tunnels`` carry calls."""
    store: DaemonStore | None = None
    """The daemons' store; None picks by discovery: ``shared`` for pods (IG's DaemonSet), ``per-node``
    for static (standalone ``ig daemon``)."""

    @property
    def daemon_store(self) -> DaemonStore:
        if self.store is not None:
            return self.store
        return DaemonStore.SHARED if self.mode is DiscoveryMode.PODS else DaemonStore.PER_NODE


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
    readiness_timeout: float = 2.0
    """Deadline of one readiness probe (GetGadgetInfo on the running instance), in seconds. IG answers it
    only once the gadget has initialized (image pulled, programs loaded); a probe that times out is
    tried again later, so a slow image pull only delays Ready."""
    validate_timeout: float = 60.0
    """Deadline of the dry run (GetGadgetInfo with the image and parameters) that checks a new spec
    before any instance of it is created; it pulls the image, so it gets more time than other calls."""
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
class LivenessSettings:
    """When kopf's liveness endpoint (``--liveness``) reports the operator as stuck (``liveness.py``)."""

    heartbeat_interval: float = 10.0
    """Seconds between heartbeats (``GET /version`` through the operator's API session); also their deadline."""
    max_heartbeat_age: float = 120.0
    """The probe fails when the last successful heartbeat is older than this many seconds."""
    max_loop_lag: float = 30.0
    """The probe fails when the event loop runs this many seconds late."""


@dataclass(frozen=True, slots=True)
class TenancySettings:
    """Who may trace what (``tenancy``)."""

    allowed_images: tuple[str, ...] = DEFAULT_ALLOWED_IMAGES
    """Shell-style patterns of the full image references that may run; others are refused."""
    daemon_tokens: DaemonTokenSettings | None = None
    """Set when the daemons run IG's multi-tenancy: every call carries a ServiceAccount token (``tokens``)."""


@dataclass(frozen=True, slots=True)
class DaemonTokenSettings:
    """IG's multi-tenancy (``tokens``): whose tokens the operator sends to the daemons."""

    operator_account: ServiceAccount
    """The operator's own ServiceAccount: listing nodes, ClusterGadgetInstances."""
    tenant_account: str = "gadget-tenant"
    """The ServiceAccount, in each GadgetInstance's namespace, the operator speaks as for that resource."""
    lifetime: int = 3600
    """Seconds each token is valid (at least 600); renewed at 80% of it."""


@dataclass(frozen=True, slots=True)
class ControlSettings:
    """The operator's own control API (``control``): state, events and intents, over gRPC and HTTP/JSON.

    On the pod's loopback by default, so reaching it takes what ``kubectl port-forward`` to the
    operator's pod takes (``pods/portforward`` in its namespace); any other address must serve TLS."""

    address: str = "127.0.0.1:50051"
    """``host:port`` of the gRPC listener ("" disables it). The ports are Skaffold's (50051, 50052)."""
    http_address: str = "127.0.0.1:50052"
    """``host:port`` of the HTTP/JSON listener, the same messages in the proto3 JSON mapping ("" disables it)."""
    tls_cert: str | None = None
    """Serving certificate (PEM) of both listeners; required (with the key) for a non-loopback address."""
    tls_key: str | None = None
    tls_client_ca: str | None = None
    """When set, clients must present a certificate signed by this CA (mutual TLS)."""
    event_buffer: int = 10_000
    """Entries the event log keeps for a replay; older ones are dropped (and counted)."""

    @property
    def enabled(self) -> bool:
        return bool(self.address or self.http_address)

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None


@dataclass(frozen=True, slots=True)
class Settings:
    discovery: DiscoverySettings = field(default_factory=DiscoverySettings)
    executor: ExecutorSettings = field(default_factory=ExecutorSettings)
    status: StatusSettings = field(default_factory=StatusSettings)
    kube_server: str | None = None
    """API server URL to use instead of in-cluster or kubeconfig credentials (the emulator, tests)."""
    metrics_port: int = 9090
    """Prometheus /metrics port; 0 disables it."""
    liveness: LivenessSettings = field(default_factory=LivenessSettings)
    leader_election: LeaderElectionSettings = field(default_factory=lambda: LeaderElectionSettings())
    namespaces: tuple[str, ...] = ()
    """The namespaces whose GadgetInstances are handled; empty: every namespace."""
    tenancy: TenancySettings = field(default_factory=TenancySettings)
    control: ControlSettings = field(default_factory=ControlSettings)


@dataclass(frozen=True, slots=True)
class LeaderElectionSettings:
    """Several replicas: the one holding a ``coordination.k8s.io/v1`` Lease works, the others stand by
    (controller-runtime's leader election, with its default timings)."""

    enabled: bool = False
    """False: one replica, no election (``--standalone``); the operator works from the start."""
    lease_name: str = "gadget-operator"
    lease_namespace: str = "default"
    """The operator's own namespace (``--lease-namespace``, else POD_NAMESPACE, else the service account's)."""
    identity: str = ""
    """This replica's holder identity: the pod name (HOSTNAME) and a random suffix."""
    lease_duration: int = 10
    """Seconds a standby waits, from the last renewal it saw, before it takes the lease of a silent leader.
    A standby sees a renewal up to one retry period late and looks once per retry period, so a killed
    leader is replaced within lease_duration + 2 x retry_period: 14 s with the defaults (controller-runtime's
    15/10/2 can take 19 s)."""
    renew_deadline: float = 7.0
    """Seconds the leader keeps retrying a failed renewal before it gives up leadership (and exits)."""
    retry_period: float = 2.0
    """Seconds between attempts to acquire or renew."""
