"""ClusterGadgetInstance: the cluster-scoped kind for cluster admins, reconciled like a GadgetInstance.

The operator runs with ``--namespace <the test's namespace>`` (conftest): that flag restricts the
namespaced kind only, so these tests also show that ClusterGadgetInstances are watched cluster-wide.
What a user sees is asserted: the object as ``kubectl get cgi -o yaml`` shows it, its Events as
``kubectl describe cgi`` finds them (namespace ``default``), and what each node's daemon runs.
"""

from __future__ import annotations

from typing import Any

import pytest

from gadget_operator import identity
from gadget_operator.daemon import model
from tests.integration.conftest import NODE_COUNT, Env
from tests.integration.harness import CGI, E2E_KUBECONFIG, eventually, unique

# Node-wide: every namespace, which only the cluster kind may ask for (no namespace filter is added).
TRACE_ALL = {"image": "trace_exec", "params": {"operator.KubeManager.all-namespaces": "true"}}


def one_each(owned: dict[str, list[model.GadgetInstance]]) -> bool:
    return len(owned) == NODE_COUNT and all(len(instances) == 1 for instances in owned.values())


def condition(body: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in body["status"]["conditions"] if c["type"] == kind)


async def wait_cluster_phase(env: Env, name: str, phase: str) -> dict[str, Any]:
    def check(body: dict[str, Any]) -> bool:
        status = body.get("status") or {}
        return status.get("observedGeneration") == body["metadata"]["generation"] and status.get("phase") == phase

    return await env.cluster.wait_status(name, check, what=f"{name} phase {phase}", kind=CGI)


async def test_a_cluster_gadget_instance_runs_on_every_node_and_becomes_ready(env: Env) -> None:
    name = unique("trace-all")
    created = await env.cluster.apply(name, TRACE_ALL, kind=CGI)
    uid = created["metadata"]["uid"]
    assert "namespace" not in created["metadata"]

    body = await wait_cluster_phase(env, name, "Running")
    owned = await env.nodes.wait_owned(uid, one_each, what="one instance per node")

    status = body["status"]
    assert (status["ready"], status["desiredNodes"], status["runningNodes"]) == (f"{NODE_COUNT}/{NODE_COUNT}", 3, 3)
    assert condition(body, "Ready")["status"] == "True"
    assert "gadget-operator.io/cleanup" in body["metadata"]["finalizers"]
    if env.shared:
        assert len({instance.id for (instance,) in owned.values()}) == 1
    for node, (instance,) in owned.items():
        assert instance.image == "trace_exec"
        assert dict(instance.params) == TRACE_ALL["params"]  # unconfined: nothing added, nothing refused
        owner = identity.parse_ownership(instance.tags)
        assert owner is not None
        assert owner.resource == name  # a cluster object's key is its name
        entry = next(e for e in status["nodes"] if e["node"] == node)
        assert (entry["state"], entry["instanceId"]) == ("Running", instance.id)

    async def running_event() -> list[Any] | None:
        events = await env.cluster.core.list_namespaced_event("default", field_selector=f"involvedObject.uid={uid}")
        found = [e for e in events.items if e.reason == "Running"]
        return found or None

    (event, *_) = await eventually(running_event, what="a Running Event in namespace default")
    involved = event.involved_object
    assert (involved.kind, involved.name, involved.namespace) == ("ClusterGadgetInstance", name, None)
    assert involved.api_version == "gadget-operator.io/v1alpha1"


async def test_deleting_a_cluster_gadget_instance_removes_every_instance_then_the_object(env: Env) -> None:
    name = unique("trace-all")
    uid = (await env.cluster.apply(name, TRACE_ALL, kind=CGI))["metadata"]["uid"]
    await wait_cluster_phase(env, name, "Running")
    await env.nodes.wait_owned(uid, one_each, what="one instance per node")

    await env.cluster.delete(name, kind=CGI)

    await env.cluster.wait_gone(name, kind=CGI)
    assert await env.nodes.owned_by(uid) == {}


async def test_a_cluster_gadget_instance_and_a_gadget_instance_run_side_by_side(env: Env) -> None:
    cluster_name = unique("trace-all")
    cluster_uid = (await env.cluster.apply(cluster_name, TRACE_ALL, kind=CGI))["metadata"]["uid"]
    namespaced_uid = (await env.cluster.apply("trace", {"image": "trace_open"}))["metadata"]["uid"]

    await wait_cluster_phase(env, cluster_name, "Running")
    await env.cluster.wait_phase("trace", "Running")
    await env.nodes.wait_owned(cluster_uid, one_each, what="the cluster kind on every node")
    await env.nodes.wait_owned(namespaced_uid, one_each, what="the namespaced kind on every node")

    await env.cluster.delete("trace")
    await env.cluster.wait_gone("trace")
    assert await env.nodes.owned_by(namespaced_uid) == {}
    assert one_each(await env.nodes.owned_by(cluster_uid))  # untouched by the other's deletion
    assert (await wait_cluster_phase(env, cluster_name, "Running"))["status"]["runningNodes"] == NODE_COUNT


@pytest.mark.parametrize("crash", [False, True], ids=["stopped", "killed"])
async def test_an_operator_restart_makes_no_duplicates_and_no_orphans_of_a_cluster_gadget_instance(
    env: Env, crash: bool
) -> None:
    name = unique("trace-all")
    uid = (await env.cluster.apply(name, TRACE_ALL, kind=CGI))["metadata"]["uid"]
    await wait_cluster_phase(env, name, "Running")
    before = await env.nodes.wait_owned(uid, one_each, what="one instance per node")
    requests_before = len(env.emulator.requests) if env.emulator is not None else 0

    await env.restart_operator(crash=crash)
    await env.cluster.patch_spec(name, {"logLevel": 3}, kind=CGI)
    await env.cluster.wait_status(
        name,
        lambda b: b["status"].get("observedGeneration") == 2 and b["status"]["phase"] == "Running",
        what="generation 2 running",
        kind=CGI,
    )
    after = await env.nodes.wait_owned(uid, one_each, what="exactly one instance per node")

    assert all(after[node][0].id != before[node][0].id for node in after)
    assert all(after[node][0].log_level == 3 for node in after)
    if env.emulator is not None:
        # The restarted operator listed the cluster kind before judging any instance: it never had to
        # ask about its own instances' owner one by one.
        mine = [r for r in env.emulator.requests[requests_before:] if r.user_agent.startswith("gadget-operator/")]
        assert any(r.resource == "clustergadgetinstances" and r.verb == "list" for r in mine)
        assert not [r for r in mine if r.resource == "clustergadgetinstances" and r.verb == "get"]


@pytest.mark.skipif(bool(E2E_KUBECONFIG), reason="an orphan's made-up owner must not exist on a shared cluster")
async def test_an_orphan_of_a_cluster_gadget_instance_that_is_gone_is_removed(env: Env) -> None:
    node = env.cluster.node_name(1)
    ghost = identity.Ownership("4f1c7c4e-0000-4000-8000-00000000c1a5", "ghost-cluster-wide", node, "x")
    orphan_id = identity.instance_id(ghost.resource_uid, node, "x")
    orphan = model.GadgetInstance(
        orphan_id, identity.instance_name("ghost", orphan_id), "trace_exec", tags=identity.ownership_tags(ghost)
    )
    await env.nodes.pool.get(env.nodes[node].address).create_instance(orphan)

    async def orphan_gone() -> bool:
        return orphan_id not in {i.id for i in await env.nodes.instances(node)}

    await eventually(orphan_gone, what="orphan removed")
    assert env.emulator is not None
    confirmations = [
        r
        for r in env.emulator.requests
        if r.user_agent.startswith("gadget-operator/") and r.verb == "get" and r.name == "ghost-cluster-wide"
    ]
    # The owner was looked up as what its key names: a ClusterGadgetInstance, at the cluster scope.
    assert confirmations
    assert {(r.resource, r.namespace) for r in confirmations} == {("clustergadgetinstances", None)}
