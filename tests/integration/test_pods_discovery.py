"""Pods discovery: daemons found as Inspektor Gadget's DaemonSet pods, reached by port-forward or pod IP.

IG's own DaemonSet (namespace ``gadget``, label ``k8s-app=gadget``) serves on 127.0.0.1:8080 inside each
pod, so the default transport tunnels through the API server's ``pods/portforward``, as
``kubectl gadget`` does.

No kubelet runs IG's pods here: the tests stand in for the DaemonSet controller (they create each daemon
pod, bound to its node) and for the kubelet (they write the pod's status through ``pods/status`` and
confirm its deletion), through the Kubernetes API, so the same tests run on the emulator and, with
``GADGET_E2E_KUBECONFIG``, on a real API server (in the test's own namespace there). A real API server
forwards ``pods/portforward`` to the pod's kubelet, and stand-in pods have none, so on a real API server
the operator dials each pod's IP (``--daemon-transport pod-ip``): each simulated daemon listens on a
loopback address of its own, its pod's IP, on the DaemonSet's one port. On the emulator the operator
uses port-forward, which the emulator forwards to the simulated daemon named in the pod's
``PORT_ANNOTATION_PREFIX`` annotation; the tests that are about port-forward itself run there only.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from kubernetes.aio.client.exceptions import ApiException

from gadget_operator import resource
from gadget_operator.daemon.client import DaemonPool
from gadget_operator.deletion import WAITING_FOR_DAEMON
from gadget_operator.resource import FINALIZER
from gadget_operator.simulator.configmap_store import ConfigMapStore
from gadget_operator.simulator.server import Fleet
from gadget_operator.testing.kube_emulator import PORT_ANNOTATION_PREFIX, KubeEmulator
from gadget_operator.testing.operator_process import OperatorProcess
from tests.integration.conftest import DAEMON_PORT, PodsEnv, daemon_pods
from tests.integration.harness import E2E_KUBECONFIG, Cluster, Nodes, Timeout, eventually

NO_KUBELET = (
    "a real API server forwards pods/portforward to the pod's kubelet, and stand-in daemon pods have none "
    "(the emulator forwards to the simulated daemon itself)"
)

TRACE_EXEC = {"image": "trace_exec"}
MERGE_PATCH = "application/merge-patch+json"


# -- IG's DaemonSet, stood in for through the Kubernetes API -----------------------------------------------


def free_port_on(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


@dataclass
class DaemonPodsEnv:
    """Per node a simulated daemon and a pod of IG's DaemonSet leading to it, and the operator on pods
    discovery; on the emulator or on a real API server."""

    cluster: Cluster
    emulator: KubeEmulator | None
    nodes: Nodes
    operator: OperatorProcess
    namespace: str
    """The daemon pods' namespace (and the shared store's): IG's ``gadget`` on the emulator, the test's own
    namespace on a real cluster, which other tests share."""
    transport: str
    """How the operator reaches a daemon: ``port-forward`` or ``pod-ip``."""
    subnet: str
    """pod-ip: the daemons' pod IPs are ``subnet.1``, ``subnet.2``... (loopback addresses of this test)."""
    port: int
    """The DaemonSet's one daemon port (``--daemon-port``)."""
    hosts: int = 0

    def next_address(self) -> str:
        """Where a new daemon listens: a pod IP of its own and the DaemonSet's port (pod-ip), or any free
        local port (port-forward: the emulator's tunnel leads there)."""
        if self.transport != "pod-ip":
            return "tcp://127.0.0.1:0"
        self.hosts += 1
        return f"tcp://{self.subnet}.{self.hosts}:{self.port}"

    async def put_daemon_pod(self, node: str, *, pod: str | None = None, ready: bool = True) -> str:
        """``node``'s daemon pod (created bound to ``node`` unless it exists), then its status as the
        kubelet writes it: Running with the daemon's address as its IP, or Pending with no IP yet."""
        name = pod or f"gadget-{node}"
        address = self.nodes[node].address
        metadata: dict[str, Any] = {"name": name, "namespace": self.namespace, "labels": {"k8s-app": "gadget"}}
        if self.transport == "port-forward":
            metadata["annotations"] = {f"{PORT_ANNOTATION_PREFIX}{DAEMON_PORT}": address}
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": metadata,
            "spec": {
                "nodeName": node,  # bound by the DaemonSet controller: no scheduler involved
                "serviceAccountName": "gadget",
                "automountServiceAccountToken": False,
                "tolerations": [{"operator": "Exists"}],  # as IG's DaemonSet: no node taint evicts it
                "containers": [{"name": "gadget", "image": "ghcr.io/inspektor-gadget/inspektor-gadget"}],
            },
        }
        try:
            await self.cluster.core.create_namespaced_pod(self.namespace, body)
        except ApiException as error:
            if error.status != 409:
                raise
        ip = urlsplit(address).hostname
        status = (
            {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
            if ready
            else {"phase": "Pending", "podIP": None, "podIPs": None}
        )
        await self.cluster.core.patch_namespaced_pod_status(
            name, self.namespace, {"status": status}, _content_type=MERGE_PATCH
        )
        return name

    async def delete_daemon_pod(self, pod: str) -> None:
        """The pod goes, its deletion confirmed at once as its kubelet would once the container stopped
        (with no kubelet, a real API server would keep it Terminating for good)."""
        await self.cluster.core.delete_namespaced_pod(pod, self.namespace, grace_period_seconds=0)

    async def start_new_daemon(self, node: str) -> None:
        """The daemon of ``node``'s new pod: the old one is gone, the new one listens on the new pod's IP
        (port-forward: a new port) and starts with no runs; what IG's store keeps runs again."""
        old = self.nodes[node]
        await old.stop()
        await old.state.close()
        await self.nodes.fleet.add(node, address=self.next_address())

    def new_operator(self) -> OperatorProcess:
        """Another operator process with the same flags, as a restarted operator pod."""
        previous = self.operator
        return OperatorProcess(
            None,
            kube_server=previous.kube_server,
            kubeconfig=previous.kubeconfig,
            extra_args=previous.extra_args,
            log_dir=previous.log_path.parent,
        )

    async def release_resources(self) -> None:
        """On a shared cluster, before the operator stops: every GadgetInstance deleted, its finalizer
        released by the operator (or removed here, should a failed test have left a deletion waiting)."""
        group, version, plural = resource.GROUP, resource.VERSION, resource.PLURAL
        custom = self.cluster.custom

        async def remaining() -> list[str]:
            listed = await custom.list_namespaced_custom_object(group, version, self.cluster.namespace, plural)
            return [item["metadata"]["name"] for item in listed["items"]]

        async def none_left() -> bool:
            return not await remaining()

        with contextlib.suppress(ApiException, Timeout):
            for name in await remaining():
                await self.cluster.delete(name)
            await eventually(none_left, within=10, what="the GadgetInstances deleted")
        with contextlib.suppress(ApiException):
            for name in await remaining():
                await custom.patch_namespaced_custom_object(
                    group,
                    version,
                    self.cluster.namespace,
                    plural,
                    name,
                    {"metadata": {"finalizers": None}},
                    _content_type=MERGE_PATCH,
                )

    async def delete_daemon_pods(self) -> None:
        """On a shared cluster, at the end: the namespace's deletion waits for its pods, and no kubelet
        would ever confirm theirs."""
        with contextlib.suppress(ApiException):
            await self.cluster.core.delete_collection_namespaced_pod(self.namespace, grace_period_seconds=0)


@contextlib.asynccontextmanager
async def daemon_pods_on(
    store: str,
    cluster: tuple[Cluster, KubeEmulator | None],
    count: int,
    *extra: str,
    transport: str | None = None,
) -> AsyncIterator[DaemonPodsEnv]:
    """IG's DaemonSet on ``count`` Nodes, and the operator on pods discovery, with either of IG's stores:
    ``shared`` (IG's DaemonSet as deployed: one ConfigMap store in the daemons' namespace), or ``per-node``
    (each daemon keeps its instances on its node's disk and starts them again when it restarts).

    ``transport``: the operator's ``--daemon-transport``; default port-forward on the emulator, pod-ip on
    a real API server (see the module's docstring)."""
    test_cluster, emulator = cluster
    real = emulator is None
    namespace = test_cluster.namespace if real else "gadget"
    transport = transport or ("pod-ip" if real else "port-forward")
    subnet = f"127.{random.randint(16, 254)}.{random.randint(0, 255)}"  # apart from other tests' 127.0.0.x
    port = free_port_on(f"{subnet}.1") if transport == "pod-ip" else DAEMON_PORT
    directory = Path(tempfile.mkdtemp(prefix="gp-"))
    shared_store = ConfigMapStore(test_cluster.api, namespace) if store == "shared" else None
    fleet = Fleet(directory, transport="tcp", shared_store=shared_store)
    pool = DaemonPool(timeout=5.0)
    operator = OperatorProcess(
        None,
        kube_server=test_cluster.server,
        kubeconfig=test_cluster.kubeconfig,
        extra_args=[
            *("--discovery", "pods", "--daemon-store", store, "--daemon-transport", transport),
            *("--namespace", test_cluster.namespace, "--daemon-namespace", namespace, "--daemon-port", str(port)),
            *extra,
        ],
        log_dir=directory,
    )
    env = DaemonPodsEnv(test_cluster, emulator, Nodes(fleet, pool), operator, namespace, transport, subnet, port)
    try:
        if real:  # the ServiceAccount admission of a real API server wants the pods' ServiceAccount to exist
            await test_cluster.core.create_namespaced_service_account(namespace, {"metadata": {"name": "gadget"}})
        for index in range(1, count + 1):
            name = test_cluster.node_name(index)
            await fleet.add(name, address=env.next_address())
            # The Node first: a real cluster's pod garbage collector deletes the pods of Nodes that do not exist.
            await test_cluster.add_node(name)
            await env.put_daemon_pod(name)
        await operator.start()
        yield env
    finally:
        if real:
            await env.release_resources()
        code = await env.operator.stop()
        await pool.close()
        await fleet.stop()
        if real:
            await env.delete_daemon_pods()
        shutil.rmtree(directory, ignore_errors=True)
        assert code in (0, None), env.operator.logs()[-20000:]


# -- which nodes are targets, and a daemon pod replaced -------------------------------------------------------


@pytest.mark.skipif(bool(E2E_KUBECONFIG), reason=f"tunnels through pods/portforward: {NO_KUBELET}")
async def test_daemons_are_reached_through_port_forward(pods_env: PodsEnv) -> None:
    uid = (await pods_env.cluster.apply("trace", TRACE_EXEC))["metadata"]["uid"]

    body = await pods_env.cluster.wait_phase("trace", "Running")

    assert body["status"]["ready"] == "3/3"
    owned = await pods_env.nodes.owned_by(uid)
    assert {node: len(instances) for node, instances in owned.items()} == {"node-1": 1, "node-2": 1, "node-3": 1}
    forwards = [r for r in pods_env.emulator.requests if r.subresource == "portforward"]
    assert {r.name for r in forwards} == {"gadget-node-1", "gadget-node-2", "gadget-node-3"}
    assert all(r.namespace == "gadget" for r in forwards)


async def test_a_node_without_a_running_daemon_pod_is_not_a_target(
    cluster: tuple[Cluster, KubeEmulator | None],
) -> None:
    async with daemon_pods_on("shared", cluster, 3, "--resync-interval", "1") as env:
        # node-3's daemon pod is replaced by one that is not Running yet (its image still pulling).
        node_3 = env.cluster.node_name(3)
        await env.delete_daemon_pod(f"gadget-{node_3}")
        pending = await env.put_daemon_pod(node_3, pod=f"gadget-{node_3}-p8m2q", ready=False)

        await env.cluster.apply("trace", TRACE_EXEC)
        body = await env.cluster.wait_status(
            "trace", lambda b: (b.get("status") or {}).get("ready") == "2/2", what="two nodes with a daemon"
        )

        assert node_3 not in {e["node"] for e in body["status"]["nodes"]}
        await env.put_daemon_pod(node_3, pod=pending)
        await env.cluster.wait_status("trace", lambda b: b["status"].get("ready") == "3/3")


async def test_a_replaced_daemon_pod_is_followed_and_repaired(cluster: tuple[Cluster, KubeEmulator | None]) -> None:
    async with daemon_pods_on("shared", cluster, 3, "--resync-interval", "1") as env:
        node_2 = env.cluster.node_name(2)
        uid = (await env.cluster.apply("trace", TRACE_EXEC))["metadata"]["uid"]
        await env.cluster.wait_phase("trace", "Running")

        # The DaemonSet replaces node-2's pod: a new pod with a new IP, whose daemon starts with no runs and
        # picks the instances up again from IG's store. Nothing leads to the old pod's daemon any more.
        await env.delete_daemon_pod(f"gadget-{node_2}")
        await env.start_new_daemon(node_2)
        replacement = await env.put_daemon_pod(node_2, pod=f"gadget-{node_2}-x7k2p")

        async def reached() -> bool:
            return sum(env.nodes[node_2].calls.values()) > 0

        await eventually(reached, what="the operator reaches node-2's new daemon pod")
        if env.emulator is not None:  # through the new pod's tunnel
            forwards = [r.name for r in env.emulator.requests if r.subresource == "portforward"]
            assert replacement in forwards
        await env.nodes.wait_owned(uid, lambda owned: node_2 in owned, what="node-2 runs the instance again")
        body = await env.cluster.wait_status("trace", lambda b: b["status"].get("ready") == "3/3")
        entry = next(e for e in body["status"]["nodes"] if e["node"] == node_2)
        assert entry["state"] == "Running"


# -- deletion while a daemon pod restarts ------------------------------------------------------------------


async def restart_daemon_pod(env: DaemonPodsEnv, node: str) -> str:
    """The DaemonSet replaces ``node``'s daemon pod (a rollout, an eviction): the old pod goes and the new
    one is not Running yet. The node's daemon keeps what it runs; returns the new pod's name."""
    await env.delete_daemon_pod(f"gadget-{node}")
    replacement = await env.put_daemon_pod(node, pod=f"gadget-{node}-x7k2p", ready=False)
    await env.cluster.wait_status(
        "trace", lambda b: b["status"].get("ready") == "2/2", what=f"{node} out of reach while its pod starts"
    )
    return replacement


async def daemon_back_and_resource_gone(env: DaemonPodsEnv, node: str, pod: str, uid: str) -> None:
    """``node``'s new daemon starts (with what its store keeps) and its pod ``pod`` runs: the deletion
    that waited for it finishes, and no daemon runs the resource any more."""
    await env.nodes[node].restart()
    await env.put_daemon_pod(node, pod=pod)
    await env.cluster.wait_gone("trace")
    await env.nodes.wait_owned(uid, lambda owned: not owned, what="no daemon runs the deleted resource")


def waiting_for(node: str) -> Callable[[dict[str, Any]], bool]:
    """Whether a resource's status says that its deletion waits for ``node``'s daemon."""

    def check(body: dict[str, Any]) -> bool:
        entries = {e["node"]: e for e in (body.get("status") or {}).get("nodes", [])}
        return entries.get(node, {}).get("message") == WAITING_FOR_DAEMON

    return check


async def listed_again(env: DaemonPodsEnv, node: str, times: int) -> None:
    """Wait until the operator has listed ``node``'s daemon ``times`` more times (a pass every second)."""
    start = env.nodes[node].calls["ListGadgetInstances"]

    async def listed() -> bool:
        return env.nodes[node].calls["ListGadgetInstances"] >= start + times

    await eventually(listed, what=f"{node} listed {times} more times")


@pytest.mark.parametrize("store", ["per-node", "shared"])
async def test_a_delete_during_a_daemon_pod_restart_waits_for_that_daemon_and_cleans_it(
    cluster: tuple[Cluster, KubeEmulator | None], store: str
) -> None:
    async with daemon_pods_on(store, cluster, 3, "--resync-interval", "1") as env:
        node_1, node_2 = env.cluster.node_name(1), env.cluster.node_name(2)
        uid = (await env.cluster.apply("trace", TRACE_EXEC))["metadata"]["uid"]
        await env.cluster.wait_phase("trace", "Running")
        replacement = await restart_daemon_pod(env, node_2)

        await env.cluster.delete("trace")

        if store == "shared":
            # IG's one store is cleaned through the other daemons: nothing waits for node-2's.
            await env.cluster.wait_gone("trace")
        else:
            body = await env.cluster.wait_status("trace", waiting_for(node_2), what="node-2 named as waited for")
            entries = {e["node"]: e for e in body["status"]["nodes"]}
            assert entries[node_2]["state"] == "Unreachable"
            assert body["status"]["phase"] == "Terminating"
            assert WAITING_FOR_DAEMON in body["status"]["message"]
            await listed_again(env, node_1, 2)  # the other nodes are done, and the deletion still waits
            body = await env.cluster.get("trace")
            assert body is not None
            assert body["metadata"]["finalizers"] == [FINALIZER]
            owned = await env.nodes.owned_by(uid)
            assert set(owned) == {node_2}  # every other daemon is clean; node-2's still holds it

        await daemon_back_and_resource_gone(env, node_2, replacement, uid)


async def test_an_operator_started_while_a_daemon_pod_restarts_waits_for_that_daemon(
    cluster: tuple[Cluster, KubeEmulator | None],
) -> None:
    async with daemon_pods_on("per-node", cluster, 3, "--resync-interval", "1") as env:
        node_1, node_2 = env.cluster.node_name(1), env.cluster.node_name(2)
        uid = (await env.cluster.apply("trace", TRACE_EXEC))["metadata"]["uid"]
        await env.cluster.wait_phase("trace", "Running")
        await env.operator.stop()
        # While no operator runs: node-2's daemon pod is replaced, and the resource is deleted.
        await env.delete_daemon_pod(f"gadget-{node_2}")
        replacement = await env.put_daemon_pod(node_2, pod=f"gadget-{node_2}-x7k2p", ready=False)
        await env.cluster.delete("trace")

        env.operator = env.new_operator()
        await env.operator.start()

        # It never saw node-2 hold anything, but node-2 has a daemon pod: its daemon may hold an instance.
        await env.cluster.wait_status("trace", waiting_for(node_2), what="node-2 named as waited for")
        await listed_again(env, node_1, 2)
        assert await env.cluster.get("trace") is not None
        assert set(await env.nodes.owned_by(uid)) == {node_2}

        await daemon_back_and_resource_gone(env, node_2, replacement, uid)


async def test_a_node_deleted_while_its_daemon_pod_restarts_stops_holding_up_a_deletion(
    cluster: tuple[Cluster, KubeEmulator | None],
) -> None:
    async with daemon_pods_on("per-node", cluster, 3, "--resync-interval", "1") as env:
        node_2 = env.cluster.node_name(2)
        uid = (await env.cluster.apply("trace", TRACE_EXEC))["metadata"]["uid"]
        await env.cluster.wait_phase("trace", "Running")
        replacement = await restart_daemon_pod(env, node_2)
        await env.cluster.delete("trace")
        await env.cluster.wait_status("trace", waiting_for(node_2), what="node-2 named as waited for")

        await env.cluster.remove_node(node_2)  # the escape hatch for a node that will never come back

        await env.cluster.wait_gone("trace")
        assert set(await env.nodes.owned_by(uid)) == {node_2}  # left behind on the node's daemon
        # Should the node come back after all, what its daemon still runs of the deleted resource goes.
        # (A real cluster's pod garbage collector may have deleted the pod of the missing Node meanwhile:
        # put_daemon_pod creates it again then.)
        await env.cluster.add_node(node_2)
        await env.nodes[node_2].restart()
        await env.put_daemon_pod(node_2, pod=replacement)
        await env.nodes.wait_owned(uid, lambda owned: not owned, what="node-2's leftover instance removed")


async def test_pod_ip_transport_dials_the_pod_ip_and_daemon_port(
    cluster: tuple[Cluster, KubeEmulator | None],
) -> None:
    # Each pod has a loopback address of its own as its IP, and its daemon listens there on the
    # DaemonSet's one port (--daemon-port), as pod IPs would.
    async with daemon_pods_on("shared", cluster, 2, transport="pod-ip") as env:
        node_1, node_2 = env.cluster.node_name(1), env.cluster.node_name(2)
        uid = (await env.cluster.apply("trace", TRACE_EXEC))["metadata"]["uid"]
        body = await env.cluster.wait_phase("trace", "Running")
        assert body["status"]["ready"] == "2/2"
        owned = await env.nodes.owned_by(uid)
        assert {node: len(instances) for node, instances in owned.items()} == {node_1: 1, node_2: 1}
        if env.emulator is not None:  # (a real API server has no kubelet behind the stand-in pods to forward to)
            assert not [r for r in env.emulator.requests if r.subresource == "portforward"]


# -- many daemon pods, and tunnels that fail ----------------------------------------------------------------


async def healthz(session: aiohttp.ClientSession, operator: OperatorProcess) -> tuple[int, dict[str, Any]]:
    async with session.get(f"http://127.0.0.1:{operator.liveness_port}/healthz") as response:
        return response.status, await response.json(content_type=None)


@pytest.mark.skipif(
    bool(E2E_KUBECONFIG), reason=f"300 tunnels through pods/portforward, counted by the emulator: {NO_KUBELET}"
)
async def test_300_daemon_pods_through_port_forward_never_starve_the_api_calls(
    cluster: tuple[Cluster, KubeEmulator | None],
) -> None:
    count = 300
    # Heartbeats every second, so the liveness figures below are about the busiest moments.
    # Fewer tunnels than daemon pods: the bound holds while every node is reached.
    async with daemon_pods(
        cluster, count, "--resync-interval", "30", "--heartbeat-interval", "1", "--max-tunnels", "256"
    ) as env:
        probes: list[tuple[int, dict[str, Any]]] = []
        started = time.monotonic()
        async with aiohttp.ClientSession() as session:

            async def watch_liveness() -> None:
                while True:
                    probes.append(await healthz(session, env.operator))
                    await asyncio.sleep(0.5)

            watcher = asyncio.create_task(watch_liveness())
            try:
                await env.cluster.apply("trace", TRACE_EXEC)
                body = await env.cluster.wait_status(
                    "trace",
                    lambda b: (b.get("status") or {}).get("ready") == f"{count}/{count}",
                    within=90,
                    what=f"{count}/{count} nodes ready",
                )
                ready_after = time.monotonic() - started
                # The API answers at once while hundreds of tunnels are open: the test's own GET, and the
                # operator's heartbeat through its API session (its liveness figures).
                async with asyncio.timeout(5):
                    assert await env.cluster.get("trace") is not None

                async def busy_probe() -> tuple[int, dict[str, Any]] | None:
                    # kopf serves probe results up to 10 s old: wait for one taken with the tunnels open.
                    code, result = await healthz(session, env.operator)
                    return (
                        (code, result) if result.get("progress", {}).get("tunnels", {}).get("opened", 0) > 64 else None
                    )

                status, final = await eventually(busy_probe, within=30, what="liveness figures with the tunnels open")
            finally:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)

        tunnels = final.get("progress", {}).get("tunnels", {})
        heartbeats = [r for r in env.emulator.requests if r.path == "/version" and r.user_agent.startswith("gadget")]
        emulator = env.emulator
        print(  # the figures for the README: pytest -s shows them
            f"\n{count} daemon pods: Ready after {ready_after:.1f}s; tunnels {tunnels}; emulator streams "
            f"peak {emulator.portforwards_peak} (now {emulator.portforwards_open}); heartbeats {len(heartbeats)}"
        )
        assert body["status"]["phase"] == "Running"
        assert body["status"]["runningNodes"] == count
        assert status == 200, final
        assert probes, "the liveness endpoint was polled while the nodes became ready"
        assert all(code == 200 for code, _ in probes), [p for p in probes if p[0] != 200][:3]
        assert 64 < tunnels["peak"] <= tunnels["max"] == 256  # more than the API session's 64 connections
        assert heartbeats
        assert all(r.status == 200 for r in heartbeats)
        assert env.emulator.writes("gadgetinstances", "trace", subresource="status") >= 1


@pytest.mark.skipif(
    bool(E2E_KUBECONFIG),
    reason=f"revokes pods/portforward with the emulator's deny(), then tunnels through it again: {NO_KUBELET}",
)
async def test_a_port_forward_refused_by_rbac_shows_in_the_nodes_status(
    cluster: tuple[Cluster, KubeEmulator | None],
) -> None:
    async with daemon_pods(cluster, 2, "--resync-interval", "1", "--rpc-timeout", "2") as env:
        await env.cluster.apply("trace", TRACE_EXEC)
        await env.cluster.wait_phase("trace", "Running")

        # The operator's port-forward permission is revoked, then node-2's daemon pod is replaced: the
        # new pod needs a new tunnel, which the API server refuses (node-1's stays open meanwhile).
        env.emulator.deny("create", "pods", "portforward")
        env.emulator.delete("v1", "pods", "gadget-node-2", "gadget")
        env.put_daemon_pod("node-2", pod="gadget-node-2-x7k2p")
        expected = (
            "unreachable: port-forward to gadget/gadget-node-2-x7k2p refused by RBAC: "
            'pods "gadget-node-2-x7k2p" is forbidden: User "system:anonymous" cannot create resource '
            '"pods/portforward" in API group "" in the namespace "gadget" '
            "(the operator needs create on pods/portforward in gadget) (portforward://gadget/gadget-node-2-x7k2p:8080)"
        )

        def refused(body: dict[str, Any]) -> bool:
            entries = {e["node"]: e for e in (body.get("status") or {}).get("nodes", [])}
            return entries.get("node-2", {}).get("message") == expected

        body = await env.cluster.wait_status("trace", refused, what="node-2's entry names the RBAC refusal")

        entries = {e["node"]: e for e in body["status"]["nodes"]}
        assert entries["node-2"]["state"] == "Unreachable"
        assert entries["node-1"]["state"] == "Running"

        env.emulator.allow("create", "pods", "portforward")
        await env.cluster.wait_status("trace", lambda b: (b.get("status") or {}).get("ready") == "2/2")
