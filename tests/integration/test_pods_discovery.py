"""Pods discovery: daemons found as Inspektor Gadget's DaemonSet pods, reached by port-forward or pod IP.

IG's own DaemonSet (namespace ``gadget``, label ``k8s-app=gadget``) serves on 127.0.0.1:8080 inside each
pod, so the default transport tunnels through the API server's ``pods/portforward``, as
``kubectl gadget`` does. The emulator forwards a pod's port to the simulated daemon named in the pod's
``PORT_ANNOTATION_PREFIX`` annotation. These tests need to create daemon pods, so they run on the
emulator only.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gadget_operator.daemon.client import DaemonPool
from gadget_operator.deletion import WAITING_FOR_DAEMON
from gadget_operator.resource import FINALIZER
from gadget_operator.simulator.configmap_store import ConfigMapStore
from gadget_operator.simulator.server import Fleet
from gadget_operator.testing.kube_emulator import KubeEmulator
from gadget_operator.testing.operator_process import OperatorProcess, free_port
from tests.integration.conftest import PodsEnv, daemon_pods
from tests.integration.harness import E2E_KUBECONFIG, Cluster, Nodes, eventually

pytestmark = pytest.mark.skipif(bool(E2E_KUBECONFIG), reason="creates stand-in daemon pods in the emulator")

TRACE_EXEC = {"image": "trace_exec"}


async def test_daemons_are_reached_through_port_forward(pods_env: PodsEnv) -> None:
    uid = (await pods_env.cluster.apply("trace", TRACE_EXEC))["metadata"]["uid"]

    body = await pods_env.cluster.wait_phase("trace", "Running")

    assert body["status"]["ready"] == "3/3"
    owned = await pods_env.nodes.owned_by(uid)
    assert {node: len(instances) for node, instances in owned.items()} == {"node-1": 1, "node-2": 1, "node-3": 1}
    forwards = [r for r in pods_env.emulator.requests if r.subresource == "portforward"]
    assert {r.name for r in forwards} == {"gadget-node-1", "gadget-node-2", "gadget-node-3"}
    assert all(r.namespace == "gadget" for r in forwards)


async def test_a_node_without_a_running_daemon_pod_is_not_a_target(pods_env: PodsEnv) -> None:
    pods_env.put_daemon_pod("node-3", ready=False)

    await pods_env.cluster.apply("trace", TRACE_EXEC)
    body = await pods_env.cluster.wait_status(
        "trace", lambda b: b.get("status", {}).get("ready") == "2/2", what="two nodes with a daemon"
    )

    assert "node-3" not in {e["node"] for e in body["status"]["nodes"]}
    pods_env.put_daemon_pod("node-3")
    await pods_env.cluster.wait_status("trace", lambda b: b["status"].get("ready") == "3/3")


async def test_a_replaced_daemon_pod_is_followed_and_repaired(pods_env: PodsEnv) -> None:
    uid = (await pods_env.cluster.apply("trace", TRACE_EXEC))["metadata"]["uid"]
    await pods_env.cluster.wait_phase("trace", "Running")

    # The DaemonSet replaces node-2's pod: a new pod, whose daemon starts with no runs and picks the
    # instances up again from IG's store.
    pods_env.emulator.delete("v1", "pods", "gadget-node-2", "gadget")
    await pods_env.nodes["node-2"].restart()
    pods_env.put_daemon_pod("node-2", pod="gadget-node-2-x7k2p")

    async def reached() -> bool:
        return any(
            r.subresource == "portforward" and r.name == "gadget-node-2-x7k2p" for r in pods_env.emulator.requests
        )

    await eventually(reached, what="the operator reaches node-2's new daemon pod")
    await pods_env.nodes.wait_owned(uid, lambda owned: "node-2" in owned, what="node-2 runs the instance again")
    body = await pods_env.cluster.wait_status("trace", lambda b: b["status"].get("ready") == "3/3")
    entry = next(e for e in body["status"]["nodes"] if e["node"] == "node-2")
    assert entry["state"] == "Running"


# -- deletion while a daemon pod restarts ------------------------------------------------------------------


@contextlib.asynccontextmanager
async def daemon_pods_on(
    store: str, cluster: tuple[Cluster, KubeEmulator | None], count: int, *extra: str
) -> AsyncIterator[PodsEnv]:
    """``daemon_pods`` on either of IG's stores: ``shared`` (IG's DaemonSet as deployed), or ``per-node``
    (each daemon keeps its instances on its node's disk and starts them again when it restarts)."""
    if store == "shared":
        async with daemon_pods(cluster, count, *extra) as shared_env:
            yield shared_env
        return
    test_cluster, emulator = cluster
    assert emulator is not None
    directory = Path(tempfile.mkdtemp(prefix="gp-"))
    fleet = Fleet(directory, transport="tcp")
    pool = DaemonPool(timeout=5.0)
    operator = OperatorProcess(
        None,
        kube_server=test_cluster.server,
        extra_args=["--discovery", "pods", "--daemon-store", "per-node", *extra],
        log_dir=directory,
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
        code = await env.operator.stop()
        await pool.close()
        await fleet.stop()
        shutil.rmtree(directory, ignore_errors=True)
        assert code in (0, None), env.operator.logs()[-20000:]


async def restart_daemon_pod(env: PodsEnv, node: str) -> str:
    """The DaemonSet replaces ``node``'s daemon pod (a rollout, an eviction): the old pod goes and the new
    one is not Running yet. The node's daemon keeps what it runs; returns the new pod's name."""
    env.emulator.delete("v1", "pods", f"gadget-{node}", "gadget")
    replacement = env.put_daemon_pod(node, pod=f"gadget-{node}-x7k2p", ready=False)
    await env.cluster.wait_status(
        "trace", lambda b: b["status"].get("ready") == "2/2", what=f"{node} out of reach while its pod starts"
    )
    return replacement


def waiting_for(node: str) -> Callable[[dict[str, Any]], bool]:
    """Whether a resource's status says that its deletion waits for ``node``'s daemon."""

    def check(body: dict[str, Any]) -> bool:
        entries = {e["node"]: e for e in (body.get("status") or {}).get("nodes", [])}
        return entries.get(node, {}).get("message") == WAITING_FOR_DAEMON

    return check


async def listed_again(env: PodsEnv, node: str, times: int) -> None:
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
        uid = (await env.cluster.apply("trace", TRACE_EXEC))["metadata"]["uid"]
        await env.cluster.wait_phase("trace", "Running")
        replacement = await restart_daemon_pod(env, "node-2")

        await env.cluster.delete("trace")

        if store == "shared":
            # IG's one store is cleaned through the other daemons: nothing waits for node-2's.
            await env.cluster.wait_gone("trace")
        else:
            body = await env.cluster.wait_status("trace", waiting_for("node-2"), what="node-2 named as waited for")
            entries = {e["node"]: e for e in body["status"]["nodes"]}
            assert entries["node-2"]["state"] == "Unreachable"
            assert body["status"]["phase"] == "Terminating"
            assert WAITING_FOR_DAEMON in body["status"]["message"]
            await listed_again(env, "node-1", 2)  # the other nodes are done, and the deletion still waits
            body = await env.cluster.get("trace")
            assert body is not None
            assert body["metadata"]["finalizers"] == [FINALIZER]
            owned = await env.nodes.owned_by(uid)
            assert set(owned) == {"node-2"}  # every other daemon is clean; node-2's still holds it

        # The new pod's daemon starts (with what its store keeps) and the pod is Running.
        await env.nodes["node-2"].restart()
        env.put_daemon_pod("node-2", pod=replacement)

        await env.cluster.wait_gone("trace")
        await env.nodes.wait_owned(uid, lambda owned: not owned, what="no daemon runs the deleted resource")


async def test_an_operator_started_while_a_daemon_pod_restarts_waits_for_that_daemon(
    cluster: tuple[Cluster, KubeEmulator | None],
) -> None:
    async with daemon_pods_on("per-node", cluster, 3, "--resync-interval", "1") as env:
        uid = (await env.cluster.apply("trace", TRACE_EXEC))["metadata"]["uid"]
        await env.cluster.wait_phase("trace", "Running")
        await env.operator.stop()
        # While no operator runs: node-2's daemon pod is replaced, and the resource is deleted.
        env.emulator.delete("v1", "pods", "gadget-node-2", "gadget")
        replacement = env.put_daemon_pod("node-2", pod="gadget-node-2-x7k2p", ready=False)
        await env.cluster.delete("trace")

        previous = env.operator
        env.operator = OperatorProcess(
            None, kube_server=previous.kube_server, extra_args=previous.extra_args, log_dir=previous.log_path.parent
        )
        await env.operator.start()

        # It never saw node-2 hold anything, but node-2 has a daemon pod: its daemon may hold an instance.
        await env.cluster.wait_status("trace", waiting_for("node-2"), what="node-2 named as waited for")
        await listed_again(env, "node-1", 2)
        assert await env.cluster.get("trace") is not None
        assert set(await env.nodes.owned_by(uid)) == {"node-2"}

        await env.nodes["node-2"].restart()
        env.put_daemon_pod("node-2", pod=replacement)
        await env.cluster.wait_gone("trace")
        await env.nodes.wait_owned(uid, lambda owned: not owned, what="no daemon runs the deleted resource")


async def test_a_node_deleted_while_its_daemon_pod_restarts_stops_holding_up_a_deletion(
    cluster: tuple[Cluster, KubeEmulator | None],
) -> None:
    async with daemon_pods_on("per-node", cluster, 3, "--resync-interval", "1") as env:
        uid = (await env.cluster.apply("trace", TRACE_EXEC))["metadata"]["uid"]
        await env.cluster.wait_phase("trace", "Running")
        replacement = await restart_daemon_pod(env, "node-2")
        await env.cluster.delete("trace")
        await env.cluster.wait_status("trace", waiting_for("node-2"), what="node-2 named as waited for")

        await env.cluster.remove_node("node-2")  # the escape hatch for a node that will never come back

        await env.cluster.wait_gone("trace")
        assert set(await env.nodes.owned_by(uid)) == {"node-2"}  # left behind on the node's daemon
        # Should the node come back after all, what its daemon still runs of the deleted resource goes.
        await env.cluster.add_node("node-2")
        await env.nodes["node-2"].restart()
        env.put_daemon_pod("node-2", pod=replacement)
        await env.nodes.wait_owned(uid, lambda owned: not owned, what="node-2's leftover instance removed")


async def test_pod_ip_transport_dials_the_pod_ip_and_daemon_port(
    cluster: tuple[Cluster, KubeEmulator | None],
) -> None:
    test_cluster, emulator = cluster
    assert emulator is not None
    port = free_port()
    directory = Path(tempfile.mkdtemp(prefix="gi-"))
    fleet = Fleet(directory, transport="tcp", shared_store=ConfigMapStore(test_cluster.api, "gadget"))
    operator = OperatorProcess(
        None,
        kube_server=test_cluster.server,
        extra_args=["--discovery", "pods", "--daemon-transport", "pod-ip", "--daemon-port", str(port)],
        log_dir=directory,
    )
    try:
        # Each "pod" gets its own loopback address and the DaemonSet's one port, as pod IPs would.
        for index in (1, 2):
            name, ip = f"node-{index}", f"127.0.0.{index + 1}"
            await fleet.add(name, address=f"tcp://{ip}:{port}")
            await test_cluster.add_node(name)
            emulator.put(
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": f"gadget-{name}", "namespace": "gadget", "labels": {"k8s-app": "gadget"}},
                    "spec": {"nodeName": name, "containers": [{"name": "gadget", "image": "ig"}]},
                    "status": {"phase": "Running", "podIP": ip},
                }
            )
        await operator.start()
        uid = (await test_cluster.apply("trace", TRACE_EXEC))["metadata"]["uid"]
        body = await test_cluster.wait_phase("trace", "Running")
        assert body["status"]["ready"] == "2/2"
        owned = await Nodes(fleet, DaemonPool()).owned_by(uid)
        assert {node: len(instances) for node, instances in owned.items()} == {"node-1": 1, "node-2": 1}
        assert not [r for r in emulator.requests if r.subresource == "portforward"]
    finally:
        await operator.stop()
        await fleet.stop()
        shutil.rmtree(directory, ignore_errors=True)


# -- many daemon pods, and tunnels that fail ----------------------------------------------------------------


async def healthz(session: aiohttp.ClientSession, operator: OperatorProcess) -> tuple[int, dict[str, Any]]:
    async with session.get(f"http://127.0.0.1:{operator.liveness_port}/healthz") as response:
        return response.status, await response.json(content_type=None)


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
