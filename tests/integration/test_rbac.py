"""The RBAC rules shipped in manifests/base cover every API call the operator makes, and nothing more.

The calls are recorded, not guessed: the emulator logs each request with its User-Agent, and the
operator's own calls (``gadget-operator/...``) and kopf's (``kopf/...``) are compared with the rules
``kubectl kustomize manifests/base`` renders. The scenario touches every kind of call: watches of
GadgetInstances, ClusterGadgetInstances and Nodes, the daemon-pod watch and port-forward, the watch of
IG's instance store (ConfigMaps), finalizer and status patches, Events, and the GET that confirms an
orphan's resource is gone. (Standalone daemons also GET a Node; tests/packaging checks that the overlay adds only that.)
"""

from __future__ import annotations

import pytest

from gadget_operator import identity, resource
from gadget_operator.daemon import model
from gadget_operator.testing.kube_emulator import KubeEmulator
from tests.integration.conftest import PodsEnv, daemon_pods
from tests.integration.harness import CGI, E2E_KUBECONFIG, Cluster, eventually
from tests.packaging.conftest import BASE, CHART, NAMESPACE, RELEASE, k8s_binaries, load_documents, run
from tests.packaging.test_consistency import rbac_rules, resource_names

pytestmark = pytest.mark.skipif(bool(E2E_KUBECONFIG), reason="reads the emulator's request log")

Call = tuple[str, str, str]  # (apiGroup, resource[/subresource], verb), as RBAC names them


def operator_calls(env: PodsEnv) -> dict[str, set[Call]]:
    calls: dict[str, set[Call]] = {}
    for request in env.emulator.requests:
        if not request.user_agent.startswith(("kopf/", "gadget-operator/")) or request.resource is None:
            continue  # discovery documents are open to every authenticated user (system:discovery)
        plural = f"{request.resource}/{request.subresource}" if request.subresource else request.resource
        scope = "gadget" if request.resource in ("pods", "configmaps") else "cluster"
        if request.resource == "leases":  # leader election: the Lease in the operator's own namespace
            scope = request.namespace or "cluster"
        verbs = {request.verb}
        if request.subresource == "portforward":
            verbs = {"get", "create"}  # a WebSocket GET; Kubernetes 1.35 also authorizes it as create
        calls.setdefault(scope, set()).update((request.group or "", plural, verb) for verb in verbs)
    return calls


async def exercise(pods_env: PodsEnv) -> None:
    """Every kind of call: orphans to remove, a resource of each kind applied, Running, deleted."""
    node = "node-1"
    ghost = identity.Ownership("6a7c0000-0000-4000-8000-000000000001", "default/ghost", node, "x")
    orphan_id = identity.instance_id(ghost.resource_uid, node, "x")
    client = pods_env.nodes.pool.get(pods_env.nodes[node].address)
    await client.create_instance(
        model.GadgetInstance(orphan_id, "ghost", "trace_exec", tags=identity.ownership_tags(ghost))
    )
    # As a DaemonSet-mode daemon lists the whole cluster's instances: one of a node that is gone.
    stranded = identity.Ownership("6a7c0000-0000-4000-8000-000000000002", "default/old", "node-gone", "x")
    stranded_id = identity.instance_id(stranded.resource_uid, stranded.node, "x")
    await client.create_instance(
        model.GadgetInstance(stranded_id, "stranded", "trace_exec", tags=identity.ownership_tags(stranded))
    )
    # One of a ClusterGadgetInstance that is gone: its owner is looked up at the cluster scope.
    cluster_ghost = identity.Ownership("6a7c0000-0000-4000-8000-000000000003", "cluster-ghost", node, "x")
    cluster_orphan_id = identity.instance_id(cluster_ghost.resource_uid, node, "x")
    await client.create_instance(
        model.GadgetInstance(
            cluster_orphan_id, "cluster-ghost", "trace_exec", tags=identity.ownership_tags(cluster_ghost)
        )
    )
    await pods_env.cluster.apply("trace", {"image": "trace_exec"})
    await pods_env.cluster.apply("trace-all", {"image": "trace_exec"}, kind=CGI)
    await pods_env.cluster.wait_phase("trace", "Running")
    await pods_env.cluster.wait_status(
        "trace-all", lambda b: (b.get("status") or {}).get("phase") == "Running", kind=CGI
    )
    await pods_env.cluster.delete("trace")
    await pods_env.cluster.delete("trace-all", kind=CGI)
    await pods_env.cluster.wait_gone("trace")
    await pods_env.cluster.wait_gone("trace-all", kind=CGI)

    async def orphans_removed() -> bool:
        return not {orphan_id, stranded_id, cluster_orphan_id} & {i.id for i in await client.list_instances()}

    await eventually(orphans_removed, what="orphans removed")


async def test_the_shipped_rbac_rules_are_exactly_the_calls_the_operator_makes(pods_env: PodsEnv) -> None:
    await exercise(pods_env)
    binaries = k8s_binaries.ensure()
    granted = rbac_rules(load_documents(run([binaries["kubectl"], "kustomize", str(BASE)]).stdout))
    used = operator_calls(pods_env)
    assert used == granted, (
        f"calls not granted: { {s: used.get(s, set()) - granted.get(s, set()) for s in used} }\n"
        f"granted, never used: { {s: granted[s] - used.get(s, set()) for s in granted} }"
    )
    assert (resource.GROUP, f"{resource.PLURAL}/status", "patch") in used["cluster"]
    assert (resource.GROUP, f"{resource.CLUSTER_PLURAL}/status", "patch") in used["cluster"]
    assert (resource.GROUP, resource.CLUSTER_PLURAL, "get") in used["cluster"]  # the orphan's owner


async def test_with_leader_election_the_chart_grants_exactly_the_calls_too(
    cluster: tuple[Cluster, KubeEmulator | None],
) -> None:
    """Several replicas (chart replicaCount 2): the same calls plus the Lease, in the release namespace."""
    election = ("--leader-elect", "--lease-namespace", NAMESPACE, "--lease-duration", "4", "--renew-deadline", "3")
    async with daemon_pods(cluster, 3, "--resync-interval", "1", *election, "--retry-period", "0.5") as env:
        await exercise(env)

        async def renewed() -> bool:  # the leader renews its Lease every retry period
            return any(r.resource == "leases" and r.verb == "update" for r in env.emulator.requests)

        await eventually(renewed, what="a renewal of the Lease")
        used = operator_calls(env)
    binaries = k8s_binaries.ensure()
    rendered = run(
        [binaries["helm"], "template", RELEASE, CHART, "--namespace", NAMESPACE, "--set", "replicaCount=2"]
    ).stdout
    objects = load_documents(rendered)
    granted = rbac_rules(objects)
    assert used == granted, (
        f"calls not granted: { {s: used.get(s, set()) - granted.get(s, set()) for s in used} }\n"
        f"granted, never used: { {s: granted[s] - used.get(s, set()) for s in granted} }"
    )
    assert {("coordination.k8s.io", "leases", v) for v in ("get", "create", "update")} == used[NAMESPACE]
    # Reading and renewing are granted on the Lease's name only: every such call names it.
    named = resource_names(objects)
    assert set(named) == {(NAMESPACE, ("coordination.k8s.io", "leases", v)) for v in ("get", "update")}
    for (scope, (_group, plural, verb)), names in named.items():
        calls = [r for r in env.emulator.requests if r.resource == plural and r.verb == verb and r.namespace == scope]
        assert calls
        assert {r.name for r in calls} <= names, f"{verb} {plural} of { ({r.name for r in calls} - names) }"
