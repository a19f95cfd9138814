"""Pods discovery: daemons found as Inspektor Gadget's DaemonSet pods, reached by port-forward or pod IP.

IG's own DaemonSet (namespace ``gadget``, label ``k8s-app=gadget``) serves on 127.0.0.1:8080 inside each
pod, so the default transport tunnels through the API server's ``pods/portforward``, as
``kubectl gadget`` does. The emulator forwards a pod's port to the simulated daemon named in the pod's
``PORT_ANNOTATION_PREFIX`` annotation. These tests need to create daemon pods, so they run on the
emulator only.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from gadget_operator.simulator.server import Fleet, SimulatedNode
from gadget_operator.simulator.state import DaemonState
from gadget_operator.testing.kube_emulator import KubeEmulator
from gadget_operator.testing.operator_process import OperatorProcess, free_port
from tests.integration.conftest import PodsEnv
from tests.integration.harness import E2E_KUBECONFIG, Cluster, eventually

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

    # The DaemonSet replaces node-2's pod: a new pod, and a daemon that starts empty.
    pods_env.emulator.delete("v1", "pods", "gadget-node-2", "gadget")
    await pods_env.nodes["node-2"].restart()
    pods_env.put_daemon_pod("node-2", pod="gadget-node-2-x7k2p")

    async def recreated() -> bool:
        return "node-2" in await pods_env.nodes.owned_by(uid)

    await eventually(recreated, what="instance re-created on the new daemon pod")
    forwards = {r.name for r in pods_env.emulator.requests if r.subresource == "portforward"}
    assert "gadget-node-2-x7k2p" in forwards


async def test_pod_ip_transport_dials_the_pod_ip_and_daemon_port(
    cluster: tuple[Cluster, KubeEmulator | None],
) -> None:
    test_cluster, emulator = cluster
    assert emulator is not None
    port = free_port()
    directory = Path(tempfile.mkdtemp(prefix="gi-"))
    # Each "pod" gets its own loopback address and the DaemonSet's one port, as pod IPs would.
    nodes = {
        f"node-{i}": SimulatedNode(f"node-{i}", f"tcp://127.0.0.{i + 1}:{port}", DaemonState(f"node-{i}"))
        for i in (1, 2)
    }
    fleet = Fleet(directory)
    fleet.nodes.update(nodes)
    for name, node in nodes.items():
        await node.start()
        await test_cluster.add_node(name)
        ip = node.address.removeprefix("tcp://").rpartition(":")[0]
        emulator.put(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": f"gadget-{name}", "namespace": "gadget", "labels": {"k8s-app": "gadget"}},
                "spec": {"nodeName": name, "containers": [{"name": "gadget", "image": "ig"}]},
                "status": {"phase": "Running", "podIP": ip},
            }
        )
    operator = OperatorProcess(
        None,
        kube_server=test_cluster.server,
        extra_args=["--discovery", "pods", "--daemon-transport", "pod-ip", "--daemon-port", str(port)],
    )
    await operator.start()
    try:
        await test_cluster.apply("trace", TRACE_EXEC)
        body = await test_cluster.wait_phase("trace", "Running")
        assert body["status"]["ready"] == "2/2"
        assert all(len(node.state.list()) == 1 for node in nodes.values())
        assert not [r for r in emulator.requests if r.subresource == "portforward"]
    finally:
        await operator.stop()
        await fleet.stop()
        shutil.rmtree(directory, ignore_errors=True)
