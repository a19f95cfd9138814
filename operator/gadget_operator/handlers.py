"""kopf wiring only: each handler hands its event to the reconciler or discovery in a line or two.

Why these handler kinds:

* GadgetInstances, ClusterGadgetInstances and Nodes are followed with ``kopf.on.event``: it adds no finalizer and writes
  nothing to the object. The reconciler manages the ``gadget-operator.io/cleanup`` finalizer itself,
  so that apply-to-Ready costs two writes (finalizer, status) and never kopf's progress annotations.
* Nodes are only read: no finalizer, annotation or status is ever put on them.
* Daemon pods are watched by ``discovery`` in the daemon namespace only (least privilege).
* With leader election (``--leader-elect``) the reconciler exists only in the leader: until this
  replica holds the Lease, the GadgetInstance handler does nothing and no daemon is called and nothing
  written; the topology is still followed (reads only). The new leader lists every GadgetInstance
  itself, since kopf delivered them while it stood by. A leader that loses the Lease exits at once.
* Every replica serves the control API (``control``, ``--control-address``): a standby answers with its
  role and refuses intents; the event log starts with the replica's role.

The registry is built per call, not at import, so tests and the demo can run several operators.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from typing import Any, cast

import aiohttp
import kopf

from gadget_operator import discovery, kube, metrics, resource
from gadget_operator.control import state as control_state
from gadget_operator.control.journal import Journal
from gadget_operator.control.recorder import Recorder
from gadget_operator.control.server import ControlServer
from gadget_operator.daemon.client import DaemonPool
from gadget_operator.daemon.portforward import PortForwarder
from gadget_operator.leadership import Elector
from gadget_operator.liveness import Liveness, Unhealthy
from gadget_operator.reconciler import Reconciler
from gadget_operator.settings import DiscoveryMode, Settings
from gadget_operator.tokens import TokenSource

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

    # A start that fails is not retried: the operator exits and says why (cli.py), and Kubernetes
    # restarts it with backoff.
    @kopf.on.startup(registry=registry, errors=kopf.ErrorsMode.PERMANENT)
    async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        configure_kopf(settings)
        memo.runtime = await Runtime.start(memo.operator_settings)

    @kopf.on.cleanup(registry=registry)
    async def cleanup(memo: kopf.Memo, **_: Any) -> None:
        runtime: Runtime | None = getattr(memo, "runtime", None)
        if runtime is not None:
            await runtime.stop()

    # Both kinds go to the same reconciler. kopf watches a cluster-scoped kind at the cluster scope
    # whatever --namespace says: that flag restricts GadgetInstances only.
    for kind in resource.KINDS:
        kopf.on.event(resource.GROUP, resource.VERSION, kind.plural, registry=registry, id=kind.plural)(
            gadget_instance_event
        )

    # Handlers are async because kopf runs sync handlers in a thread pool, away from the event loop.
    @kopf.on.event("", "v1", "nodes", registry=registry)
    async def node_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
        memo.runtime.topology.apply_node(event.get("type"), event["object"])

    @kopf.on.probe(id="nodes", registry=registry)
    async def nodes_probe(memo: kopf.Memo, **_: Any) -> int:
        reconciler: Reconciler | None = memo.runtime.reconciler
        return 0 if reconciler is None else len(reconciler.workers)

    @kopf.on.probe(id="leader", registry=registry)
    async def leader_probe(memo: kopf.Memo, **_: Any) -> str:
        elector: Elector | None = memo.runtime.elector
        if elector is None:
            return "standalone"
        return "leader" if elector.leading else f"standby ({elector.holder or 'no leader'} leads)"

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


async def gadget_instance_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    """A watch event of a GadgetInstance or a ClusterGadgetInstance."""
    reconciler: Reconciler | None = memo.runtime.reconciler
    if reconciler is not None:  # None: a standby, which only watches
        await reconciler.observe(event.get("type"), cast(dict[str, object], event["object"]))


def configure_kopf(settings: kopf.OperatorSettings) -> None:
    # The operator reads CRDs and namespaces from nowhere: no cluster-wide scanning permissions needed.
    settings.scanning.disabled = True
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = kube.COMPONENT


class Runtime:
    """What a running operator holds: API client, daemon channels, topology, reconciler, watch tasks.

    The reconciler is built when this replica may work: at once when standalone, once it holds the
    Lease with leader election (``reconciler`` is None until then).
    """

    def __init__(self, settings: Settings, api: kube.KubeApi, pool: DaemonPool) -> None:
        self.settings = settings
        self.api = api
        self.pool = pool
        self.topology = discovery.Topology(settings.discovery)
        self.reconciler: Reconciler | None = None
        self.elector: Elector | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.liveness = Liveness(api.version, settings.liveness)
        self.started = time.time()
        self.recorder = Recorder(Journal(settings.control.event_buffer))
        """The event log (``control``) and its hooks; the reconciler records into it."""
        self.control = ControlServer(self, api, settings.control) if settings.control.enabled else None

    @classmethod
    async def start(cls, settings: Settings) -> Runtime:
        api = await kube.KubeApi.connect(settings.kube_server)
        token_settings = settings.tenancy.daemon_tokens
        pool = DaemonPool(
            tokens=None
            if token_settings is None
            else TokenSource(
                api.request_token,
                operator=token_settings.operator_account,
                tenant_account=token_settings.tenant_account,
                lifetime=token_settings.lifetime,
            ),
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
        if runtime.control is not None:
            await runtime.control.start()  # first: a port that cannot be had stops the start at once
        runtime.liveness.start()
        # The whole topology is known before the reconciler starts and before kopf delivers the first
        # GadgetInstance: a deletion found at startup must wait for every node that exists.
        await discovery.list_nodes(api, runtime.topology)
        if settings.discovery.mode is DiscoveryMode.PODS:
            await discovery.list_daemon_pods(api, runtime.topology)
            runtime.tasks.append(asyncio.create_task(discovery.watch_daemon_pods(api, runtime.topology)))
        if settings.metrics_port:
            metrics.serve(settings.metrics_port)
        if settings.leader_election.enabled:
            runtime.elector = Elector(api, settings.leader_election)
            runtime.recorder.leadership(control_state.STANDBY, settings.leader_election.identity)
            runtime.tasks.append(asyncio.create_task(runtime._lead(runtime.elector)))
        else:
            runtime.recorder.leadership(control_state.LEADER, settings.leader_election.identity)
            reconciler = runtime._start_reconciler()
            runtime.tasks.append(asyncio.create_task(runtime._catch_up(reconciler)))
        return runtime

    def _start_reconciler(self) -> Reconciler:
        reconciler = Reconciler(
            settings=self.settings, api=self.api, pool=self.pool, topology=self.topology, recorder=self.recorder
        )
        reconciler.start()
        self.reconciler = reconciler
        return reconciler

    async def _lead(self, elector: Elector) -> None:
        """Stand by until this replica holds the Lease; then work, and renew until leadership is lost."""
        await elector.acquire()
        self.recorder.leadership(control_state.LEADER, elector.identity)
        reconciler = self._start_reconciler()
        self.tasks.append(asyncio.create_task(self._catch_up(reconciler)))
        reason = await elector.hold()
        # Not one more daemon call or write: the next leader may already be at work. Exit at once (no
        # cleanup runs, no task gets another turn); Kubernetes restarts the pod as a standby.
        logger.critical("leader election: lost leadership (%s); exiting", reason)
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stderr.flush()
        os._exit(LOST_LEADERSHIP_EXIT_CODE)

    async def _catch_up(self, reconciler: Reconciler) -> None:
        """Hand the reconciler every GadgetInstance and ClusterGadgetInstance with one list each: kopf's
        initial listing may have come while this replica stood by, and until every resource of both
        kinds is known no instance may be judged an orphan (that would cost one GET per instance after a
        restart). A resource kopf delivers meanwhile is not handled twice: observe() keeps the newest
        copy. ``--namespace`` limits the GadgetInstances; ClusterGadgetInstances are listed at the
        cluster scope."""
        retry = self.settings.leader_election.retry_period
        scopes: list[tuple[resource.Kind, str | None]] = [
            (resource.GADGET_INSTANCE, namespace) for namespace in self.settings.namespaces or (None,)
        ]
        scopes.append((resource.CLUSTER_GADGET_INSTANCE, None))
        for kind, namespace in scopes:
            while True:
                try:
                    items = await self.api.list_gadget_instances(namespace, kind=kind)
                    break
                except kube.KubeApiError as error:
                    if error.status == 404 and not kind.namespaced:
                        # Its CRD is not installed (an upgrade that skipped crds/): no such object exists.
                        logger.warning("%s are not served (CRD not installed?): %s", kind.plural, error)
                        items = []
                        break
                    logger.warning("listing %s failed, retrying: %s", kind.plural, error)
                    await asyncio.sleep(retry)
                except (OSError, TimeoutError, aiohttp.ClientError) as error:
                    logger.warning("listing %s failed, retrying: %s", kind.plural, error)
                    await asyncio.sleep(retry)
            for body in items:
                await reconciler.observe(None, body)
        reconciler.resources_listed()
        logger.info("every GadgetInstance and ClusterGadgetInstance handed to the reconciler")

    async def stop(self) -> None:
        self.recorder.journal.close()  # followers of the event log end their streams
        if self.control is not None:
            await self.control.stop()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.liveness.stop()
        if self.reconciler is not None:
            await self.reconciler.stop()
        if self.elector is not None:
            await self.elector.release()  # after the last write: a standby may take over at once
        await self.pool.close()
        await self.api.close()


LOST_LEADERSHIP_EXIT_CODE = 1
"""The exit code of a leader that lost its Lease (controller-runtime exits too)."""
