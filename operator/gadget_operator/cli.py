"""The ``gadget-operator`` command: ``run`` (the operator), ``simulate`` (simulated daemons), ``demo``,
``ctl`` (the running operator's control API: ``ctl.py``).

Every ``run`` flag can also come from an environment variable ``GADGET_OPERATOR_<NAME>`` (dashes as
underscores), which is how the Deployment and the Helm chart configure it; ``--namespace`` is
``GADGET_OPERATOR_NAMESPACES`` (space- or comma-separated).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import importlib
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click
import yaml

from gadget_operator import __version__, tokens
from gadget_operator.daemon.address import parse_address
from gadget_operator.settings import (
    ControlSettings,
    DaemonStore,
    DaemonTokenSettings,
    DaemonTransport,
    DiscoveryMode,
    DiscoverySettings,
    ExecutorSettings,
    LeaderElectionSettings,
    LivenessSettings,
    Settings,
    TenancySettings,
    TLSSettings,
)
from gadget_operator.tenancy import DEFAULT_ALLOWED_IMAGES

if TYPE_CHECKING:
    import aiohttp.web

    from gadget_operator import kube, resource
    from gadget_operator.simulator.server import Fleet

ENV_PREFIX = "GADGET_OPERATOR"


def load_static_nodes(path: str) -> dict[str, str]:
    """Read the node -> address map of static discovery, with a clear error for each bad entry."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise click.BadParameter(f"cannot read {path}: {error}", param_hint="--static-nodes") from error
    if not isinstance(data, dict) or not data:
        raise click.BadParameter(f"{path} must map node names to daemon addresses", param_hint="--static-nodes")
    nodes: dict[str, str] = {}
    for node, address in data.items():
        if not isinstance(node, str) or not isinstance(address, str):
            raise click.BadParameter(f"{path}: entry {node!r}: {address!r} is not a string pair")
        try:
            parse_address(address)
        except ValueError as error:
            raise click.BadParameter(f"{path}: node {node}: {error}", param_hint="--static-nodes") from None
        nodes[node] = address
    return nodes


class Commands(click.Group):
    """The top-level commands; ``ctl`` is imported only when it is used, so that its gRPC, rich and
    Kubernetes client imports (most of a second) do not slow every other command down."""

    LAZY = {"ctl": "gadget_operator.ctl:group"}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.LAZY})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.LAZY and cmd_name not in self.commands:
            module, _, name = self.LAZY[cmd_name].partition(":")
            self.add_command(getattr(importlib.import_module(module), name), cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(cls=Commands, context_settings={"auto_envvar_prefix": ENV_PREFIX, "help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gadget-operator")
def main() -> None:
    """Keep Inspektor Gadget gadget instances running on the right nodes."""


@main.command(context_settings={"auto_envvar_prefix": ENV_PREFIX})
@click.option("--namespace", "-n", "namespaces", multiple=True, help="Watch GadgetInstances in these namespaces.")
@click.option("--all-namespaces", "-A", is_flag=True, help="Watch every namespace (the default).")
@click.option(
    "--standalone/--leader-elect",
    default=True,
    show_default=True,
    help="One replica working from the start, or several that elect a leader with a Lease (only the "
    "holder works; the others stand by and take over when it is gone).",
)
@click.option("--lease-name", default="gadget-operator", show_default=True, help="--leader-elect: the Lease's name.")
@click.option(
    "--lease-namespace",
    default=None,
    help="--leader-elect: the Lease's namespace (default: POD_NAMESPACE, else the service account's, else default).",
)
@click.option(
    "--lease-duration",
    default=10,
    show_default=True,
    type=click.IntRange(min=1),
    help="--leader-elect: seconds a standby waits after the leader's last renewal before it takes over.",
)
@click.option(
    "--renew-deadline",
    default=7.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="--leader-elect: the leader exits when it could not renew for this long (below --lease-duration).",
)
@click.option(
    "--retry-period",
    default=2.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="--leader-elect: seconds between attempts to take or renew the Lease.",
)
@click.option("--liveness", default="http://0.0.0.0:8080/healthz", show_default=True, help="Liveness URL; '' off.")
@click.option("--metrics-port", default=9090, show_default=True, type=click.IntRange(0, 65535))
@click.option("--discovery", type=click.Choice([m.value for m in DiscoveryMode]), default="pods", show_default=True)
@click.option("--daemon-namespace", default="gadget", show_default=True)
@click.option("--daemon-selector", default="k8s-app=gadget", show_default=True)
@click.option("--daemon-port", default=8080, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--daemon-transport",
    type=click.Choice([t.value for t in DaemonTransport]),
    default="port-forward",
    show_default=True,
    help="pods discovery: through the API server's port-forward (stock IG) or straight to the pod IP.",
)
@click.option(
    "--daemon-store",
    type=click.Choice([store.value for store in DaemonStore]),
    default=None,
    help="Where the daemons keep instances: shared (IG's DaemonSet: one ConfigMap store for the cluster) or "
    "per-node (standalone ig daemon). Default: shared with --discovery pods, per-node with static.",
)
@click.option("--static-nodes", type=click.Path(dir_okay=False), help="YAML map of node name to daemon address.")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), help="Client certificate (mutual TLS).")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), help="Client key (mutual TLS).")
@click.option("--tls-ca", type=click.Path(exists=True, dir_okay=False), help="CA of the daemons' certificates.")
@click.option("--tls-server-name", default=None, help="Name expected in the daemons' certificates.")
@click.option("--resync-interval", default=30.0, show_default=True, type=click.FloatRange(min=1))
@click.option("--rpc-timeout", default=5.0, show_default=True, type=click.FloatRange(min=0.1))
@click.option(
    "--readiness-timeout",
    default=2.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Deadline of one readiness probe (IG answers once the gadget has initialized); retried while it starts.",
)
@click.option(
    "--validate-timeout",
    default=60.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Deadline of the dry run that checks a new spec's image and parameters (it pulls the image).",
)
@click.option("--max-concurrency", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--node-concurrency", default=8, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--max-tunnels",
    default=1024,
    show_default=True,
    type=click.IntRange(min=1),
    help="port-forward: most tunnels open at once; beyond it the least recently used idle one is closed.",
)
@click.option(
    "--tunnel-idle-timeout",
    default=60.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="port-forward: seconds without a call before a daemon's tunnel is closed (reopened on the next call).",
)
@click.option(
    "--tunnel-connect-timeout",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="port-forward: deadline of a tunnel's handshake, and of the wait for a free tunnel.",
)
@click.option(
    "--heartbeat-interval",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Seconds between the liveness heartbeats (GET /version through the operator's API session).",
)
@click.option(
    "--max-heartbeat-age",
    default=120.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="The liveness probe fails when the last successful heartbeat is older than this (seconds).",
)
@click.option(
    "--max-loop-lag",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="The liveness probe fails when the event loop lags more than this (seconds).",
)
@click.option(
    "--allowed-image",
    "allowed_images",
    multiple=True,
    envvar="GADGET_OPERATOR_ALLOWED_IMAGES",
    help="A pattern (shell-style, on the full reference) of gadget images that may run; repeatable, or "
    "space/comma-separated in the variable. Default: the official gadgets, "
    f"{' '.join(DEFAULT_ALLOWED_IMAGES)}. Other images are refused.",
)
@click.option(
    "--ig-multi-tenancy",
    is_flag=True,
    help="The daemons run Inspektor Gadget's multi-tenancy: every call carries a ServiceAccount token "
    "(audience inspektor-gadget), of --tenant-service-account in a GadgetInstance's namespace for that "
    "resource's calls, of --operator-service-account for the others.",
)
@click.option(
    "--tenant-service-account",
    default="gadget-tenant",
    show_default=True,
    help="--ig-multi-tenancy: the ServiceAccount, in each GadgetInstance's namespace, the operator speaks as.",
)
@click.option(
    "--operator-service-account",
    default=None,
    metavar="NAMESPACE/NAME",
    help="--ig-multi-tenancy: the operator's own ServiceAccount (default: its namespace/gadget-operator).",
)
@click.option(
    "--token-lifetime",
    default=3600,
    show_default=True,
    type=click.IntRange(min=tokens.MIN_LIFETIME),
    help="--ig-multi-tenancy: seconds each token is valid; renewed at 80%.",
)
@click.option(
    "--control-address",
    default="127.0.0.1:50051",
    show_default=True,
    help="host:port of the control API's gRPC listener (state, events and intents: `gadget-operator ctl`); "
    "'' or off disables it. On the pod's loopback, reaching it takes a port-forward to the pod; any other "
    "address needs --control-tls-cert and --control-tls-key.",
)
@click.option(
    "--control-http-address",
    default="127.0.0.1:50052",
    show_default=True,
    help="host:port of the control API's HTTP/JSON listener (GET /v1/state, GET /v1/events, POST /v1/execute); "
    "'' or off disables it. The same rules as --control-address.",
)
@click.option(
    "--control-tls-cert",
    type=click.Path(exists=True, dir_okay=False),
    help="Serving certificate (PEM) of both control API listeners.",
)
@click.option("--control-tls-key", type=click.Path(exists=True, dir_okay=False), help="Its private key (PEM).")
@click.option(
    "--control-tls-client-ca",
    type=click.Path(exists=True, dir_okay=False),
    help="Clients of the control API must present a certificate signed by this CA (mutual TLS).",
)
@click.option(
    "--control-event-buffer",
    default=10_000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Entries of the control API's event log kept for a replay; older ones are dropped (and counted).",
)
@click.option("--kube-server", default=None, help="API server URL (tests, the demo); else in-cluster/kubeconfig.")
@click.option("--log-format", type=click.Choice(["plain", "json"]), default="plain", show_default=True)
@click.option("--verbose", "-v", is_flag=True, help="Debug logging.")
def run(
    namespaces: tuple[str, ...],
    all_namespaces: bool,
    standalone: bool,
    lease_name: str,
    lease_namespace: str | None,
    lease_duration: int,
    renew_deadline: float,
    retry_period: float,
    liveness: str,
    metrics_port: int,
    discovery: str,
    daemon_namespace: str,
    daemon_selector: str,
    daemon_port: int,
    daemon_transport: str,
    daemon_store: str | None,
    static_nodes: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    tls_ca: str | None,
    tls_server_name: str | None,
    resync_interval: float,
    rpc_timeout: float,
    readiness_timeout: float,
    validate_timeout: float,
    max_concurrency: int,
    node_concurrency: int,
    max_tunnels: int,
    tunnel_idle_timeout: float,
    tunnel_connect_timeout: float,
    heartbeat_interval: float,
    max_heartbeat_age: float,
    max_loop_lag: float,
    allowed_images: tuple[str, ...],
    ig_multi_tenancy: bool,
    tenant_service_account: str,
    operator_service_account: str | None,
    token_lifetime: int,
    control_address: str,
    control_http_address: str,
    control_tls_cert: str | None,
    control_tls_key: str | None,
    control_tls_client_ca: str | None,
    control_event_buffer: int,
    kube_server: str | None,
    log_format: str,
    verbose: bool,
) -> None:
    """Run the operator."""
    import kopf

    from gadget_operator import handlers, kube, leadership
    from gadget_operator.control import server as control_server

    mode = DiscoveryMode(discovery)
    if mode is DiscoveryMode.STATIC and not static_nodes:
        raise click.UsageError("--discovery static needs --static-nodes FILE")
    if any([tls_cert, tls_key]) and not all([tls_cert, tls_key, tls_ca]):
        raise click.UsageError("mutual TLS needs --tls-cert, --tls-key and --tls-ca together")
    if namespaces and all_namespaces:
        raise click.UsageError("--namespace and --all-namespaces exclude each other")
    namespaces = tuple(ns for item in namespaces for ns in item.split(",") if ns)
    if not standalone and not renew_deadline < lease_duration:
        raise click.UsageError("--renew-deadline must be shorter than --lease-duration")
    if not standalone and not retry_period < renew_deadline:
        raise click.UsageError("--retry-period must be shorter than --renew-deadline")
    daemon_tokens = None
    if ig_multi_tenancy:
        try:
            operator_account = tokens.ServiceAccount.parse(
                operator_service_account or f"{leadership.default_namespace()}/gadget-operator"
            )
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint="--operator-service-account") from None
        daemon_tokens = DaemonTokenSettings(operator_account, tenant_service_account, token_lifetime)
        plaintext_network = (mode is DiscoveryMode.PODS and daemon_transport == DaemonTransport.POD_IP.value) or (
            mode is DiscoveryMode.STATIC
            and static_nodes
            and any(a.startswith("tcp://") for a in load_static_nodes(static_nodes).values())
        )
        if plaintext_network and not tls_ca:
            # IG's own client sends tokens only through port-forward (inside the API server's TLS).
            raise click.UsageError(
                "--ig-multi-tenancy would send ServiceAccount tokens over the network in plaintext: "
                "use mutual TLS (--tls-cert, --tls-key, --tls-ca) or the port-forward transport"
            )
    control = ControlSettings(
        address="" if control_address.strip().lower() in ("", "off") else control_address.strip(),
        http_address="" if control_http_address.strip().lower() in ("", "off") else control_http_address.strip(),
        tls_cert=control_tls_cert,
        tls_key=control_tls_key,
        tls_client_ca=control_tls_client_ca,
        event_buffer=control_event_buffer,
    )
    try:
        control_server.check(control)
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    identity = leadership.new_identity()
    kube.identify(identity)  # the User-Agent of the operator's own calls names this replica
    settings = Settings(
        discovery=DiscoverySettings(
            mode=mode,
            daemon_namespace=daemon_namespace,
            daemon_selector=daemon_selector,
            daemon_port=daemon_port,
            transport=DaemonTransport(daemon_transport),
            static_nodes=load_static_nodes(static_nodes) if mode is DiscoveryMode.STATIC and static_nodes else {},
            tls=TLSSettings(tls_cert, tls_key, tls_ca, tls_server_name),
            max_tunnels=max_tunnels,
            tunnel_idle_timeout=tunnel_idle_timeout,
            tunnel_connect_timeout=tunnel_connect_timeout,
            store=DaemonStore(daemon_store) if daemon_store else None,
        ),
        executor=ExecutorSettings(
            rpc_timeout=rpc_timeout,
            readiness_timeout=readiness_timeout,
            validate_timeout=validate_timeout,
            max_concurrency=max_concurrency,
            node_concurrency=node_concurrency,
            resync_interval=resync_interval,
        ),
        kube_server=kube_server,
        metrics_port=metrics_port,
        liveness=LivenessSettings(heartbeat_interval, max_heartbeat_age, max_loop_lag),
        leader_election=LeaderElectionSettings(
            enabled=not standalone,
            lease_name=lease_name,
            lease_namespace=lease_namespace or leadership.default_namespace(),
            identity=identity,
            lease_duration=lease_duration,
            renew_deadline=renew_deadline,
            retry_period=retry_period,
        ),
        namespaces=namespaces,
        tenancy=TenancySettings(
            allowed_images=tuple(p for item in allowed_images for p in item.replace(",", " ").split())
            or DEFAULT_ALLOWED_IMAGES,
            daemon_tokens=daemon_tokens,
        ),
        control=control,
    )
    configure_logging(log_format, verbose)
    try:
        asyncio.run(preflight(kube_server))
    except StartFailure as failure:
        raise click.ClickException(str(failure)) from None
    try:
        asyncio.run(
            kopf.operator(
                registry=handlers.build_registry(settings),
                memo=kopf.Memo(operator_settings=settings),
                clusterwide=not namespaces,
                namespaces=namespaces,
                # kopf's own peering is off: several replicas elect a leader with a Lease (leadership.py).
                standalone=True,
                liveness_endpoint=liveness or None,
            )
        )
    except Exception as error:  # e.g. kopf's ActivityError: the startup handler failed. Say why in one line.
        cause = error.__cause__ or error
        raise click.ClickException(f"the operator could not start: {one_line(cause)}") from None


class StartFailure(Exception):
    """A start the operator cannot complete; the message is the one line it prints."""


def one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


async def _wait_for_crd(api: kube.KubeApi, kind: resource.Kind, *, retry: float, deadline: float) -> None:
    import aiohttp

    from gadget_operator import kube, resource

    crd = f"{kind.plural}.{resource.GROUP}"
    log = logging.getLogger(__name__)
    waiting = False
    while True:
        try:
            async with asyncio.timeout(deadline):
                if await api.served(resource.GROUP, resource.VERSION, kind.plural):
                    break
        except kube.KubeApiError as error:
            raise StartFailure(f"cannot look up CRD {crd}: {error}") from None
        except (OSError, TimeoutError, aiohttp.ClientError) as error:
            log.warning("looking up CRD %s failed: %s", crd, one_line(error))
        if not waiting:
            waiting = True
            log.warning("waiting for CRD %s", crd)
        await asyncio.sleep(retry)
    if waiting:
        log.info("CRD %s is established", crd)


async def preflight(server: str | None, *, retry: float = 2.0, deadline: float = 10.0) -> None:
    """Before kopf starts: credentials load, the API server answers, and both CRDs are served (waited
    for, so that the operator never runs deaf: kopf looks up its resources once, at start)."""
    import aiohttp

    from gadget_operator import kube, resource

    try:
        api = await kube.KubeApi.connect(server)
    except Exception as error:  # the kubernetes client raises ConfigException, TypeError, OSError...
        raise StartFailure(f"no Kubernetes credentials (in-cluster or kubeconfig): {one_line(error)}") from None
    host = api.host
    try:
        try:
            async with asyncio.timeout(deadline):
                await api.version()
        except kube.KubeApiError as error:
            raise StartFailure(f"the Kubernetes API server at {host} refused the operator: {error}") from None
        except (OSError, TimeoutError, aiohttp.ClientError) as error:
            raise StartFailure(f"cannot reach the Kubernetes API server at {host}: {one_line(error)}") from None
        for kind in resource.KINDS:
            await _wait_for_crd(api, kind, retry=retry, deadline=deadline)
    finally:
        await api.close()


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(log_format: str, verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if log_format == "json"
        else logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    )
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler], force=True)
    # kopf and aiohttp are chatty at INFO; keep their warnings.
    for noisy in ("kopf.objects", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)
    # "Config not found": the one-line start failure says it (preflight).
    logging.getLogger("kubernetes.aio.config.kube_config").setLevel(logging.ERROR)


@main.command()
@click.option("--nodes", "count", default=3, show_default=True, type=click.IntRange(1, 5000), help="How many nodes.")
@click.option("--prefix", default="node-", show_default=True, help="Node names are PREFIX + number.")
@click.option("--dir", "directory", type=click.Path(file_okay=False), help="Sockets and stores (default: a temp dir).")
@click.option("--transport", type=click.Choice(["unix", "tcp"]), default="unix", show_default=True)
@click.option("--store/--no-store", default=True, show_default=True, help="Keep instances across restarts.")
@click.option("--unknown-image", multiple=True, help="An image that cannot be pulled (instance goes to Error).")
@click.option("--latency", default=0.0, type=click.FloatRange(min=0), help="Seconds added to every call.")
@click.option("--static-nodes-out", type=click.Path(dir_okay=False), help="Write the node -> address map here.")
@click.option(
    "--daemon-store",
    type=click.Choice([store.value for store in DaemonStore]),
    default=DaemonStore.PER_NODE.value,
    show_default=True,
    help="per-node: standalone ig daemons (--store/--no-store apply); shared: pods of IG's DaemonSet on one "
    "ConfigMap store in --store-namespace of the API server at --kube-server.",
)
@click.option("--kube-server", default=None, help="shared: URL of the API server that holds the ConfigMap store.")
@click.option("--store-namespace", default="gadget", show_default=True, help="shared: namespace of the ConfigMaps.")
@click.option(
    "--init-delay",
    default=None,
    type=click.FloatRange(min=0),
    help="Seconds from a run starting to the gadget being initialized (default: the simulator's, 0.05).",
)
@click.option(
    "--stats-port",
    default=None,
    type=click.IntRange(1, 65535),
    help="Serve GET http://127.0.0.1:PORT/stats: calls per method and instances running, summed over the nodes.",
)
def simulate(
    count: int,
    prefix: str,
    directory: str | None,
    transport: str,
    store: bool,
    unknown_image: tuple[str, ...],
    latency: float,
    static_nodes_out: str | None,
    daemon_store: str,
    kube_server: str | None,
    store_namespace: str,
    init_delay: float | None,
    stats_port: int | None,
) -> None:
    """Serve simulated gadget daemons (the IG wire protocol) until interrupted."""
    import dataclasses
    import tempfile

    from gadget_operator.simulator.state import DEFAULT_TIMING

    shared = DaemonStore(daemon_store) is DaemonStore.SHARED
    if shared and not kube_server:
        raise click.UsageError("--daemon-store shared needs --kube-server URL")
    timing = DEFAULT_TIMING if init_delay is None else dataclasses.replace(DEFAULT_TIMING, init_delay=init_delay)

    async def serve() -> None:
        from kubernetes.aio import client as kclient

        from gadget_operator.simulator.configmap_store import ConfigMapStore
        from gadget_operator.simulator.server import Fleet

        base = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="gadget-sim-"))
        api = kclient.ApiClient(kclient.Configuration(host=kube_server)) if shared else None
        if api is not None:
            api.user_agent = "gadget-operator-simulate"  # tells the daemons' API requests from the operator's
        fleet = Fleet(
            base,
            transport=transport,
            stored=store,
            unknown_images=unknown_image,
            timing=timing,
            shared_store=ConfigMapStore(api, store_namespace) if api is not None else None,
        )
        stats = None
        try:
            await fleet.start(count, prefix=prefix)
            for node in fleet.nodes.values():
                node.faults.latency = latency
            if stats_port:
                stats = await serve_stats(fleet, stats_port)
            if static_nodes_out:
                fleet.write_static_nodes(Path(static_nodes_out))
            click.echo(yaml.safe_dump(fleet.addresses()), nl=False)
            click.echo(f"serving {count} simulated daemons; Ctrl-C stops", err=True)
            await asyncio.Event().wait()
        finally:
            if stats is not None:
                await stats.cleanup()
            await fleet.stop()
            if api is not None:
                await api.close()  # type: ignore[no-untyped-call]

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


async def serve_stats(fleet: Fleet, port: int) -> aiohttp.web.AppRunner:
    """``GET /stats`` on 127.0.0.1: what the simulated daemons were asked and what they run, for benchmarks."""
    from aiohttp import web

    async def stats(_: web.Request) -> web.Response:
        calls: collections.Counter[str] = collections.Counter()
        for node in fleet.nodes.values():
            calls.update(node.calls)
        running = sum(len(node.running()) for node in fleet.nodes.values())
        return web.json_response({"nodes": len(fleet.nodes), "calls": dict(calls), "running": running})

    app = web.Application()
    app.router.add_get("/stats", stats)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


@main.command()
@click.option("--nodes", "count", default=4, show_default=True, type=click.IntRange(1, 50))
def demo(count: int) -> None:
    """Run the operator with no cluster: emulated API server, simulated nodes, live status."""
    from gadget_operator import demo as demo_module

    asyncio.run(demo_module.run(count))
