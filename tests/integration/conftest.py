"""Fixtures for tests that run the real operator process against an API server and simulated daemons."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes.aio import client as kclient
from kubernetes.aio.client.exceptions import ApiException

from gadget_operator import tenancy, validation
from gadget_operator.daemon.client import DaemonPool
from gadget_operator.resource import parse_spec
from gadget_operator.simulator.configmap_store import ConfigMapStore
from gadget_operator.simulator.multitenancy import MultiTenancy
from gadget_operator.simulator.server import Fleet
from gadget_operator.testing.kube_emulator import PORT_ANNOTATION_PREFIX, KubeEmulator
from tests.integration.harness import (
    CGI,
    E2E_KUBECONFIG,
    Cluster,
    Nodes,
    OperatorProcess,
    emulator_client,
    eventually,
    load_crds,
    real_cluster_client,
    unique,
)

NODE_COUNT = 3


STORES = ["per-node", "shared"]
"""Every lifecycle test runs against both of IG's stores: standalone ``ig daemon``s (one store per
node) and IG's DaemonSet (one ConfigMap store for the cluster, in the API server the test uses)."""


@dataclass
class Env:
    cluster: Cluster
    nodes: Nodes
    operator: OperatorProcess
    emulator: KubeEmulator | None
    static_nodes: Path
    store: str
    store_args: tuple[str, ...] = ()

    @property
    def shared(self) -> bool:
        return self.store == "shared"

    def dry_run_node(self, spec: Mapping[str, Any]) -> str:
        """The daemon the operator asks first to dry-run ``spec`` of a resource in the test namespace,
        whose parameters it confines to that namespace (``tenancy``) before it sends them."""
        params = {**spec.get("params", {}), tenancy.NAMESPACE: self.cluster.namespace}
        return validation.dry_run_order(parse_spec({**spec, "params": params}), self.nodes.fleet.nodes)[0]

    async def restart_operator(self, *extra: str, crash: bool = False) -> None:
        if crash:
            await self.operator.kill()
        else:
            await self.operator.stop()
        self.operator = new_operator(self.cluster, self.static_nodes, *self.store_args, *extra)
        await self.operator.start()


QUICK = (
    *("--resync-interval", "1", "--rpc-timeout", "1", "--validate-timeout", "3", "--readiness-timeout", "1"),
    "--verbose",
)
"""Short intervals and deadlines, so that a test sees repairs and failures within seconds."""


def new_operator(cluster: Cluster, static_nodes: Path, *extra: str) -> OperatorProcess:
    return OperatorProcess(
        static_nodes,
        kube_server=cluster.server,
        kubeconfig=cluster.kubeconfig,
        log_dir=static_nodes.parent,
        extra_args=["--namespace", cluster.namespace, *QUICK, *extra],
    )


@contextlib.asynccontextmanager
async def api_server() -> AsyncIterator[tuple[Cluster, KubeEmulator | None]]:
    """A test's API server: with GADGET_E2E_KUBECONFIG a namespace of its own on that cluster (the CRD
    installed; the namespace and the test's Nodes removed afterwards), else a fresh emulator with the CRDs."""
    if E2E_KUBECONFIG:
        api = await real_cluster_client()
        extensions = kclient.ApiextensionsV1Api(api)
        for crd in load_crds():
            with contextlib.suppress(ApiException):  # already installed
                await extensions.create_custom_resource_definition(crd)

            async def established(name: str = crd["metadata"]["name"]) -> bool:
                body = await extensions.read_custom_resource_definition(name)
                conditions = (body.status and body.status.conditions) or []
                return any(c.type == "Established" and c.status == "True" for c in conditions)

            await eventually(established, what=f"the CRD {crd['metadata']['name']} established")
        namespace = unique("gi-e2e")
        await kclient.CoreV1Api(api).create_namespace({"metadata": {"name": namespace}})
        test_cluster = Cluster(api, namespace, node_prefix=f"{namespace}-node-", kubeconfig=E2E_KUBECONFIG)
        try:
            yield test_cluster, None
        finally:
            for node in list(test_cluster.created_nodes):
                with contextlib.suppress(ApiException):
                    await test_cluster.remove_node(node)
            with contextlib.suppress(ApiException):
                await kclient.CoreV1Api(api).delete_namespace(namespace)
            await api.close()
        return
    emulator = KubeEmulator()
    url = await emulator.start()
    for crd in load_crds():
        emulator.register_crd(crd)
    api = emulator_client(url)
    try:
        yield Cluster(api, "default", node_prefix="node-", server=url), emulator
    finally:
        await api.close()
        await emulator.stop()


@pytest.fixture
async def cluster() -> AsyncIterator[tuple[Cluster, KubeEmulator | None]]:
    async with api_server() as server:
        yield server


@pytest.fixture(params=STORES)
async def env(request: pytest.FixtureRequest, cluster: tuple[Cluster, KubeEmulator | None]) -> AsyncIterator[Env]:
    async with static_env(cluster, request.param) as test_env:
        yield test_env


@contextlib.asynccontextmanager
async def static_env(
    cluster: tuple[Cluster, KubeEmulator | None],
    store: str,
    *,
    multi_tenancy: MultiTenancy | None = None,
    operator_args: tuple[str, ...] = (),
) -> AsyncIterator[Env]:
    """``NODE_COUNT`` simulated daemons on ``store``, their Nodes, and the operator (static discovery)
    started with ``operator_args``; with ``multi_tenancy`` the daemons run IG's multi-tenancy."""
    test_cluster, emulator = cluster
    directory = Path(tempfile.mkdtemp(prefix="gi-"))
    shared_store = None
    store_args: tuple[str, ...] = ("--daemon-store", store, *operator_args)
    if store == "shared":
        # The test's namespace stands in for IG's `gadget` namespace: the store's ConfigMaps live there.
        shared_store = ConfigMapStore(test_cluster.api, test_cluster.namespace)
        store_args += ("--daemon-namespace", test_cluster.namespace)
    fleet = Fleet(
        directory,
        stored=False,
        unknown_images=["no_such_gadget"],
        shared_store=shared_store,
        multi_tenancy=multi_tenancy,
    )
    await fleet.start(NODE_COUNT, prefix=test_cluster.node_prefix)
    for name in fleet.nodes:
        await test_cluster.add_node(name, {"gadget-test/role": "worker"})
    static_nodes = fleet.write_static_nodes(directory / "nodes.yaml")
    pool = DaemonPool(timeout=2.0)
    test_env = Env(
        test_cluster,
        Nodes(fleet, pool),
        new_operator(test_cluster, static_nodes, *store_args),
        emulator,
        static_nodes,
        store,
        store_args,
    )
    try:
        await test_env.operator.start()  # inside: a failed start still stops the daemons below
        yield test_env
    finally:
        try:
            if E2E_KUBECONFIG:  # leave nothing behind: let the operator release its finalizers first
                await delete_what_the_test_made(test_cluster)
        finally:
            code = await test_env.operator.stop()
            await pool.close()
            await fleet.stop()
            shutil.rmtree(directory, ignore_errors=True)
        assert code in (0, None), f"the operator exited with {code}:\n{test_env.operator.logs()}"


async def delete_what_the_test_made(cluster: Cluster) -> None:
    """Both kinds' objects of the test, each deleted and waited for (the operator releases them)."""
    listed = await cluster.custom.list_namespaced_custom_object(
        "gadget-operator.io", "v1alpha1", cluster.namespace, "gadgetinstances"
    )
    for item in listed["items"]:
        with contextlib.suppress(ApiException):
            await cluster.delete(item["metadata"]["name"])
            await cluster.wait_gone(item["metadata"]["name"])
    for name in list(cluster.created_cluster_objects):
        with contextlib.suppress(ApiException):
            await cluster.delete(name, kind=CGI)
            await cluster.wait_gone(name, kind=CGI)


DAEMON_PORT = 8080


@dataclass
class PodsEnv:
    cluster: Cluster
    emulator: KubeEmulator
    nodes: Nodes
    operator: OperatorProcess

    def put_daemon_pod(self, node: str, *, pod: str | None = None, ip: str = "10.0.0.1", ready: bool = True) -> str:
        """A pod of IG's DaemonSet on ``node``, whose port 8080 leads to that node's simulated daemon."""
        name = pod or f"gadget-{node}"
        self.emulator.put(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": name,
                    "namespace": "gadget",
                    "labels": {"k8s-app": "gadget"},
                    "annotations": {f"{PORT_ANNOTATION_PREFIX}{DAEMON_PORT}": self.nodes[node].address},
                },
                "spec": {"nodeName": node, "containers": [{"name": "gadget", "image": "ghcr.io/inspektor-gadget"}]},
                "status": {"phase": "Running" if ready else "Pending", "podIP": ip},
            }
        )
        return name


@contextlib.asynccontextmanager
async def daemon_pods(cluster: tuple[Cluster, KubeEmulator | None], count: int, *extra: str) -> AsyncIterator[PodsEnv]:
    """IG's DaemonSet as it is deployed: ``count`` Nodes, each with a daemon pod in namespace ``gadget``
    whose port leads to a simulated daemon, all on one ConfigMap store there; and the operator on pods
    discovery with its defaults (port-forward, the shared store)."""
    test_cluster, emulator = cluster
    assert emulator is not None
    directory = Path(tempfile.mkdtemp(prefix="gp-"))
    fleet = Fleet(directory, transport="tcp", shared_store=ConfigMapStore(test_cluster.api, "gadget"))
    pool = DaemonPool(timeout=5.0)
    operator = OperatorProcess(
        None, kube_server=test_cluster.server, extra_args=["--discovery", "pods", *extra], log_dir=directory
    )
    env = PodsEnv(test_cluster, emulator, Nodes(fleet, pool), operator)
    try:
        await fleet.start(count, prefix="node-")
        for name in fleet.nodes:
            await test_cluster.add_node(name)
            env.put_daemon_pod(name)
        await operator.start()
        yield env
    finally:
        code = await operator.stop()
        await pool.close()
        await fleet.stop()
        shutil.rmtree(directory, ignore_errors=True)
        assert code in (0, None), operator.logs()[-20000:]


@pytest.fixture
async def pods_env(cluster: tuple[Cluster, KubeEmulator | None]) -> AsyncIterator[PodsEnv]:
    async with daemon_pods(cluster, 3, "--resync-interval", "1") as env:
        yield env


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """On failure, attach the operator's log to the report: it is what explains a wrong status."""
    outcome = yield
    report = outcome.get_result()
    env_fixture = getattr(item, "funcargs", {}).get("env")
    if report.failed and isinstance(env_fixture, Env):
        report.sections.append(("operator log", env_fixture.operator.logs()[-20000:]))
