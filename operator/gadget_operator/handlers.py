"""kopf wiring only: each handler hands its event to the reconciler or discovery in a line or two.

Why these handler kinds:

* GadgetInstances and Nodes are followed with ``kopf.on.event``: it adds no finalizer and writes
  nothing to the object. The reconciler manages the ``gadget-operator.io/cleanup`` finalizer itself,
  so that apply-to-Ready costs two writes (finalizer, status) and never kopf's progress annotations.
* Nodes are only read: no finalizer, annotation or status is ever put on them.
* Daemon pods are watched by ``discovery`` in the daemon namespace only (least privilege).

The registry is built per call, not at import, so tests and the demo can run several operators.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from gadget_operator import discovery, kube, metrics, resource
from gadget_operator.daemon.client import DaemonPool
from gadget_operator.daemon.portforward import PortForwarder
from gadget_operator.liveness import Liveness, Unhealthy
from gadget_operator.reconciler import Reconciler
from gadget_operator.settings import DiscoveryMode, Settings

logger = logging.getLogger(__name__)


def build_registry(settings: Settings) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    # A registry of its own gets none of kopf's default login handlers: say how to authenticate, the
    # same way as kube.KubeApi does (in-cluster service account, else kubeconfig; or --kube-server).
    if settings.kube_server:
        server = settings.kube_server

        @kopf.on.login(registry=registry)
        def login(**_: Any) -> kopf.ConnectionInfo:
            return kopf.ConnectionInfo(server=server, insecure=True, default_namespace="default")

    else:
        kopf.on.login(registry=registry)(kopf.login_via_client)

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        configure_kopf(settings)
        memo.runtime = await Runtime.start(memo.operator_settings)

    @kopf.on.cleanup(registry=registry)
    async def cleanup(memo: kopf.Memo, **_: Any) -> None:
        runtime: Runtime | None = getattr(memo, "runtime", None)
        if runtime is not None:
            await runtime.stop()

    @kopf.on.event(resource.GROUP, resource.VERSION, resource.PLURAL, registry=registry)
    async def gadget_instance_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
        await memo.runtime.reconciler.observe(event.get("type"), event["object"])

    # Handlers are async because kopf runs sync handlers in a thread pool, away from the event loop.
    @kopf.on.event("", "v1", "nodes", registry=registry)
    async def node_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
        memo.runtime.topology.apply_node(event.get("type"), event["object"])

    @kopf.on.probe(id="nodes", registry=registry)
    async def nodes_probe(memo: kopf.Memo, **_: Any) -> int:
        return len(memo.runtime.reconciler.workers)

    # A probe that raises fails kopf's whole /healthz (HTTP 500): the operator cannot make progress.
    @kopf.on.probe(id="progress", registry=registry, errors=kopf.ErrorsMode.PERMANENT)
    async def progress_probe(memo: kopf.Memo, **_: Any) -> dict[str, Any]:
        runtime: Runtime | None = getattr(memo, "runtime", None)
        if runtime is None:
            return {"starting": True}
        try:
            checked: dict[str, Any] = runtime.liveness.check()
        except Unhealthy as error:
            raise kopf.PermanentError(str(error)) from None
        forwarder = runtime.pool.forwarder
        return checked | ({"tunnels": forwarder.stats()} if forwarder is not None else {})

    return registry


def configure_kopf(settings: kopf.OperatorSettings) -> None:
    # The operator reads CRDs and namespaces from nowhere: no cluster-wide scanning permissions needed.
    settings.scanning.disabled = True
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = kube.COMPONENT


class Runtime:
    """What a running operator holds: API client, daemon channels, topology, reconciler, watch tasks."""

    def __init__(self, settings: Settings, api: kube.KubeApi, pool: DaemonPool) -> None:
        self.settings = settings
        self.api = api
        self.pool = pool
        self.topology = discovery.Topology(settings.discovery)
        self.reconciler = Reconciler(settings=settings, api=api, pool=pool, topology=self.topology)
        self.tasks: list[asyncio.Task[None]] = []
        self.liveness = Liveness(api.version, settings.liveness)

    @classmethod
    async def start(cls, settings: Settings) -> Runtime:
        api = await kube.KubeApi.connect(settings.kube_server)
        pool = DaemonPool(
            tls=settings.discovery.tls,
            timeout=settings.executor.rpc_timeout,
            forwarder=PortForwarder(
                api.open_portforward,
                max_tunnels=settings.discovery.max_tunnels,
                idle_timeout=settings.discovery.tunnel_idle_timeout,
                connect_timeout=settings.discovery.tunnel_connect_timeout,
            ),
        )
        runtime = cls(settings, api, pool)
        runtime.liveness.start()
        # The whole topology is known before the reconciler starts and before kopf delivers the first
        # GadgetInstance: a deletion found at startup must wait for every node that exists.
        await discovery.list_nodes(api, runtime.topology)
        if settings.discovery.mode is DiscoveryMode.PODS:
            await discovery.list_daemon_pods(api, runtime.topology)
            runtime.tasks.append(asyncio.create_task(discovery.watch_daemon_pods(api, runtime.topology)))
        if settings.metrics_port:
            metrics.serve(settings.metrics_port)
        runtime.reconciler.start()
        return runtime

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.liveness.stop()
        await self.reconciler.stop()
        await self.pool.close()
        await self.api.close()
