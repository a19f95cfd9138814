"""The real operator process against an API server and simulated daemons: one test per lifecycle case.

Each test asserts what a user sees: the resource as ``kubectl get gi -o yaml`` shows it, and each
node's instances as the IG CLI (``gadget list``) shows them.
"""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from gadget_operator import errors, identity
from gadget_operator.daemon import model
from gadget_operator.simulator.state import RunTiming, full_image_name
from gadget_operator.testing.operator_process import OperatorProcess, free_port
from tests.integration.conftest import NODE_COUNT, Env
from tests.integration.harness import E2E_KUBECONFIG, eventually, load_crd

TRACE_EXEC = {"image": "trace_exec", "params": {"operator.KubeManager.podname": "api-0"}}


def condition(body: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in body["status"]["conditions"] if c["type"] == kind)


def is_ready(status: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", []))


def one_each(owned: dict[str, list[model.GadgetInstance]], nodes: int = NODE_COUNT) -> bool:
    return len(owned) == nodes and all(len(instances) == 1 for instances in owned.values())


async def test_create_runs_one_instance_per_node_and_reports_ready(env: Env) -> None:
    created = await env.cluster.apply("trace", TRACE_EXEC)
    uid = created["metadata"]["uid"]

    body = await env.cluster.wait_phase("trace", "Running")
    owned = await env.nodes.owned_by(uid)

    status = body["status"]
    assert status["observedGeneration"] == 1
    assert (status["ready"], status["desiredNodes"], status["runningNodes"]) == (f"{NODE_COUNT}/{NODE_COUNT}", 3, 3)
    assert condition(body, "Ready")["status"] == "True"
    assert condition(body, "Degraded")["status"] == "False"
    assert "gadget-operator.io/cleanup" in body["metadata"]["finalizers"]
    assert one_each(owned)
    if env.shared:  # one instance in IG's shared store, which every daemon runs
        assert len({instance.id for (instance,) in owned.values()}) == 1
    for node, (instance,) in owned.items():
        assert instance.nodes == (() if env.shared else (node,))
        assert instance.image == "trace_exec"
        # A namespaced resource traces only its own namespace: the operator adds the filter.
        assert dict(instance.params) == {
            **TRACE_EXEC["params"],
            "operator.KubeManager.namespace": env.cluster.namespace,
        }
        entry = next(e for e in status["nodes"] if e["node"] == node)
        assert (entry["state"], entry["instanceId"]) == ("Running", instance.id)
        assert identity.parse_ownership(instance.tags).resource == f"{env.cluster.namespace}/trace"  # type: ignore[union-attr]


async def test_a_spec_change_replaces_each_instance_new_first(env: Env) -> None:
    uid = (await env.cluster.apply("trace", TRACE_EXEC))["metadata"]["uid"]
    await env.cluster.wait_phase("trace", "Running")
    before = {node: instances[0].id for node, instances in (await env.nodes.owned_by(uid)).items()}

    await env.cluster.patch_spec("trace", {"params": {"operator.KubeManager.podname": "api-1"}})
    body = await env.cluster.wait_status(
        "trace",
        lambda b: b["status"].get("observedGeneration") == 2 and b["status"].get("phase") == "Running",
        what="generation 2 running",
    )
    owned = await env.nodes.wait_owned(uid, one_each, what="one instance per node after the change")

    assert all(owned[node][0].id != old for node, old in before.items())
    assert all(owned[node][0].params["operator.KubeManager.podname"] == "api-1" for node in owned)
    assert {e["instanceId"] for e in body["status"]["nodes"]} == {i[0].id for i in owned.values()}


async def test_suspend_removes_the_instances_and_resume_brings_them_back(env: Env) -> None:
    uid = (await env.cluster.apply("trace", TRACE_EXEC))["metadata"]["uid"]
    await env.cluster.wait_phase("trace", "Running")

    await env.cluster.patch_spec("trace", {"suspend": True})
    body = await env.cluster.wait_phase("trace", "Suspended")
    await env.nodes.wait_owned(uid, lambda owned: not owned, what="no instances while suspended")
    assert body["status"]["runningNodes"] == 0

    await env.cluster.patch_spec("trace", {"suspend": False})
    await env.cluster.wait_phase("trace", "Running")
    assert one_each(await env.nodes.owned_by(uid))


async def test_a_node_selector_picks_labelled_nodes_and_follows_relabelling(env: Env) -> None:
    first, second = env.cluster.node_name(1), env.cluster.node_name(2)
    await env.cluster.label_node(first, {"tier": "edge"})
    spec = {"image": "trace_open", "nodeSelector": {"matchLabels": {"tier": "edge"}}}
    uid = (await env.cluster.apply("edge", spec))["metadata"]["uid"]

    body = await env.cluster.wait_phase("edge", "Running")
    assert body["status"]["ready"] == "1/1"
    assert set(await env.nodes.owned_by(uid)) == {first}

    await env.cluster.label_node(second, {"tier": "edge"})
    await env.cluster.label_node(first, {"tier": None})
    await env.nodes.wait_owned(uid, lambda owned: set(owned) == {second}, what="instance moved to the relabelled node")
    body = await env.cluster.wait_status("edge", lambda b: [e["node"] for e in b["status"]["nodes"]] == [second])
    assert body["status"]["ready"] == "1/1"


async def test_a_joining_node_gets_the_instance_and_a_leaving_node_drops_out(env: Env) -> None:
    uid = (await env.cluster.apply("trace", TRACE_EXEC))["metadata"]["uid"]
    await env.cluster.wait_phase("trace", "Running")
    leaving = env.cluster.node_name(3)

    await env.cluster.remove_node(leaving)
    body = await env.cluster.wait_status(
        "trace",
        lambda b: (
            b["status"].get("desiredNodes") == NODE_COUNT - 1
            and leaving not in {e["node"] for e in b["status"].get("nodes", [])}
        ),
        what="node dropped from status",
    )
    assert body["status"]["phase"] == "Running"

    await env.cluster.add_node(leaving)
    await env.cluster.wait_status("trace", lambda b: b["status"].get("ready") == f"{NODE_COUNT}/{NODE_COUNT}")
    assert one_each(await env.nodes.owned_by(uid))


async def test_a_daemon_restart_that_lost_its_instances_is_repaired(env: Env) -> None:
    uid = (await env.cluster.apply("trace", TRACE_EXEC))["metadata"]["uid"]
    await env.cluster.wait_phase("trace", "Running")
    node = env.cluster.node_name(2)

    await env.nodes[node].restart()  # its runs are gone; a per-node store without files loses the instances
    if not env.shared:  # IG's shared store keeps them: the restarted daemon starts them again itself
        assert await env.nodes.instances(node) == []

    await env.nodes.wait_owned(uid, one_each, what="the instance runs again on the restarted node")
    await env.cluster.wait_status(
        "trace", lambda b: b["status"].get("phase") == "Running" and b["status"].get("ready") == "3/3"
    )


async def test_an_instance_removed_by_hand_is_recreated(env: Env) -> None:
    uid = (await env.cluster.apply("trace", TRACE_EXEC))["metadata"]["uid"]
    await env.cluster.wait_phase("trace", "Running")
    node = env.cluster.node_name(1)
    (instance,) = (await env.nodes.owned_by(uid))[node]

    await env.nodes.pool.get(env.nodes[node].address).remove_instance(instance.id)

    owned = await env.nodes.wait_owned(uid, one_each, what="removed instance re-created")
    assert owned[node][0].id == instance.id  # the same deterministic ID


async def test_an_orphan_whose_resource_is_gone_is_removed(env: Env) -> None:
    node = env.cluster.node_name(1)
    ghost = identity.Ownership("4f1c7c4e-0000-4000-8000-000000000000", f"{env.cluster.namespace}/ghost", node, "x")
    orphan_id = identity.instance_id(ghost.resource_uid, node, "x")
    orphan = model.GadgetInstance(
        orphan_id, identity.instance_name("ghost", orphan_id), "trace_exec", tags=identity.ownership_tags(ghost)
    )
    foreign = model.GadgetInstance("0123456789abcdef0123456789abcdef", "made-by-someone-else", "trace_tcp")
    client = env.nodes.pool.get(env.nodes[node].address)
    await client.create_instance(orphan)
    await client.create_instance(foreign)

    async def orphan_gone() -> list[str] | None:
        ids = [i.id for i in await env.nodes.instances(node)]
        return ids if orphan_id not in ids else None

    assert await eventually(orphan_gone, what="orphan removed") == [foreign.id]  # untagged: never touched


async def test_deletion_removes_every_instance_then_the_resource(env: Env) -> None:
    uid = (await env.cluster.apply("trace", TRACE_EXEC))["metadata"]["uid"]
    await env.cluster.wait_phase("trace", "Running")

    await env.cluster.delete("trace")

    await env.cluster.wait_gone("trace")
    assert await env.nodes.owned_by(uid) == {}


def nodes_that_hold_a_deletion_open(env: Env) -> list[str]:
    """The daemons to stop so that a deletion cannot finish: one node's own store, or, with IG's shared
    store (removed through any daemon), every daemon."""
    return list(env.nodes.fleet.nodes) if env.shared else [env.cluster.node_name(2)]


async def test_deletion_waits_for_an_unreachable_node_reports_it_and_finishes_when_it_is_back(env: Env) -> None:
    uid = (await env.cluster.apply("trace", TRACE_EXEC))["metadata"]["uid"]
    await env.cluster.wait_phase("trace", "Running")
    down = nodes_that_hold_a_deletion_open(env)
    for node in down:
        await env.nodes[node].stop()

    await env.cluster.delete("trace")
    body = await env.cluster.wait_status(
        "trace",
        lambda b: (
            b["status"].get("phase") == "Terminating"
            and any(e["node"] == down[0] and e["state"] == "Unreachable" for e in b["status"].get("nodes", []))
        ),
        what="unreachable node reported while terminating",
    )
    assert condition(body, "Degraded")["status"] == "True"
    assert set(await env.nodes.owned_by(uid)) == set()  # every reachable node is already clean

    for node in down:
        await env.nodes[node].start()
    await env.cluster.wait_gone("trace")
    assert await env.nodes.owned_by(uid) == {}


async def test_in_the_shared_store_one_unreachable_daemon_does_not_hold_up_deletion(env: Env) -> None:
    if not env.shared:
        pytest.skip("a per-node store can only be cleaned through its own daemon")
    uid = (await env.cluster.apply("trace", TRACE_EXEC))["metadata"]["uid"]
    await env.cluster.wait_phase("trace", "Running")
    down = env.cluster.node_name(2)
    await env.nodes[down].stop()  # partitioned: its daemon still runs and still follows the store

    await env.cluster.delete("trace")

    await env.cluster.wait_gone("trace")
    await eventually(lambda: _nothing_runs(env, down, uid), what=f"{down} stopped the removed instance")


async def _nothing_runs(env: Env, node: str, uid: str) -> bool:
    owners = (identity.parse_ownership(i.tags) for i in env.nodes[node].running().values())
    return not any(owner is not None and owner.resource_uid == uid for owner in owners)


async def test_a_node_that_no_longer_exists_does_not_block_deletion(env: Env) -> None:
    await env.cluster.apply("trace", TRACE_EXEC)
    await env.cluster.wait_phase("trace", "Running")
    gone = env.cluster.node_name(3)
    await env.nodes[gone].stop()
    await env.cluster.remove_node(gone)

    await env.cluster.delete("trace")

    await env.cluster.wait_gone("trace")


@pytest.mark.parametrize("crash", [False, True], ids=["stopped", "killed"])
async def test_an_operator_restart_makes_no_duplicates_and_no_orphans(env: Env, crash: bool) -> None:
    uid = (await env.cluster.apply("trace", TRACE_EXEC))["metadata"]["uid"]
    await env.cluster.wait_phase("trace", "Running")
    before = await env.nodes.owned_by(uid)

    await env.restart_operator(crash=crash)
    await env.cluster.patch_spec("trace", {"logLevel": 3})
    await env.cluster.wait_status(
        "trace", lambda b: b["status"].get("observedGeneration") == 2 and b["status"]["phase"] == "Running"
    )
    after = await env.nodes.wait_owned(uid, one_each, what="exactly one instance per node")

    assert all(after[node][0].id != before[node][0].id for node in after)
    assert all(after[node][0].log_level == 3 for node in after)


async def test_an_operator_killed_during_deletion_finishes_it_after_restart(env: Env) -> None:
    uid = (await env.cluster.apply("trace", TRACE_EXEC))["metadata"]["uid"]
    await env.cluster.wait_phase("trace", "Running")
    down = nodes_that_hold_a_deletion_open(env)
    for node in down:
        await env.nodes[node].stop()  # holds the deletion open while the operator dies
    await env.cluster.delete("trace")
    await env.cluster.wait_status("trace", lambda b: b["status"].get("phase") == "Terminating")

    await env.restart_operator(crash=True)
    for node in down:
        await env.nodes[node].start()

    await env.cluster.wait_gone("trace")
    assert await env.nodes.owned_by(uid) == {}


async def test_a_daemon_rejection_shows_in_the_node_entry_and_a_degraded_condition(env: Env) -> None:
    if env.shared:
        pytest.skip("a shared store is written through any daemon: see the test of a store that refuses writes")
    bad = env.cluster.node_name(2)
    env.nodes[bad].faults.fail_with = "operator.oci: fetching image: denied: requested access is forbidden"
    env.nodes[bad].faults.fail_only = frozenset({"CreateGadgetInstance"})

    await env.cluster.apply("trace", TRACE_EXEC)
    body = await env.cluster.wait_phase("trace", "Degraded")

    entry = next(e for e in body["status"]["nodes"] if e["node"] == bad)
    assert entry["state"] == "Failed"
    assert "requested access is forbidden" in entry["message"]
    degraded = condition(body, "Degraded")
    assert degraded["status"] == "True"
    assert bad in degraded["message"]
    assert "forbidden" in degraded["message"]
    assert body["status"]["runningNodes"] == NODE_COUNT - 1  # the other nodes are unaffected

    env.nodes[bad].release()
    await env.cluster.wait_phase("trace", "Running")


async def test_a_gadget_the_dry_run_rejects_fails_at_once_and_nothing_is_created(env: Env) -> None:
    uid = (await env.cluster.apply("broken", {"image": "no_such_gadget"}))["metadata"]["uid"]

    body = await env.cluster.wait_phase("broken", "Failed")

    ready = condition(body, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "GadgetRejected")
    assert "the gadget rejected this spec" in body["status"]["message"]
    assert "no_such_gadget" in body["status"]["message"]  # the gadget's own message names the image
    assert "no_such_gadget" in condition(body, "Degraded")["message"]
    assert await env.nodes.owned_by(uid) == {}


async def test_a_hanging_daemon_is_reported_unreachable_and_does_not_stall_the_others(env: Env) -> None:
    hung = env.cluster.node_name(3)
    env.nodes[hung].faults.hang = True

    await env.cluster.apply("trace", TRACE_EXEC)
    body = await env.cluster.wait_phase("trace", "Degraded")

    entry = next(e for e in body["status"]["nodes"] if e["node"] == hung)
    assert entry["state"] == "Unreachable"
    assert body["status"]["runningNodes"] == NODE_COUNT - 1
    env.nodes[hung].release()


async def test_an_explicit_node_list_reports_nodes_that_do_not_exist(env: Env) -> None:
    spec = {"image": "trace_exec", "nodes": [env.cluster.node_name(1), "no-such-node"]}
    await env.cluster.apply("listed", spec)

    body = await env.cluster.wait_phase("listed", "Degraded")

    entries = {e["node"]: e for e in body["status"]["nodes"]}
    assert entries[env.cluster.node_name(1)]["state"] == "Running"
    assert entries["no-such-node"]["state"] == "Failed"
    assert "no such node" in entries["no-such-node"]["message"]


@pytest.mark.skipif(bool(E2E_KUBECONFIG), reason="a real API server rejects this spec at admission (CRD schema)")
async def test_a_spec_the_schema_would_reject_is_failed_with_the_field_named(env: Env) -> None:
    assert env.emulator is not None
    # Stored while the CRD was looser (admission refuses it now); the operator must still cope.
    strict = load_crd()
    loose = copy.deepcopy(strict)
    version = loose["spec"]["versions"][0]
    version["schema"]["openAPIV3Schema"]["properties"]["spec"] = {
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
    }
    env.emulator.register_crd(loose)
    await env.cluster.apply("bad", {"image": "trace_exec", "logLevel": 42})
    env.emulator.register_crd(strict)

    body = await env.cluster.wait_phase("bad", "Failed")

    assert "spec.logLevel" in body["status"]["message"]
    assert condition(body, "Ready")["reason"] == "InvalidSpec"


@pytest.mark.skipif(bool(E2E_KUBECONFIG), reason="counts requests in the emulator's log")
async def test_apply_to_ready_writes_the_resource_at_most_twice_and_a_steady_state_never(env: Env) -> None:
    assert env.emulator is not None
    await env.cluster.apply("trace", TRACE_EXEC)
    await env.cluster.wait_phase("trace", "Running")
    ns = env.cluster.namespace

    writes = env.emulator.writes("gadgetinstances", "trace", ns) + env.emulator.writes(
        "gadgetinstances", "trace", ns, subresource="status"
    )
    assert writes <= 3  # create (the user's) + finalizer + one status write

    # Several periodic syncs (1 s each) later, nothing more was written.
    lists_before = sum(node.calls["ListGadgetInstances"] for node in env.nodes.fleet.nodes.values())

    async def three_more_syncs() -> bool:
        return sum(node.calls["ListGadgetInstances"] for node in env.nodes.fleet.nodes.values()) >= lists_before + 9

    await eventually(three_more_syncs, what="three resync rounds")
    later = env.emulator.writes("gadgetinstances", "trace", ns) + env.emulator.writes(
        "gadgetinstances", "trace", ns, subresource="status"
    )
    assert later == writes


async def test_prometheus_metrics_count_what_the_operator_did(env: Env) -> None:
    port = free_port()
    await env.restart_operator("--metrics-port", str(port))

    await env.cluster.apply("trace", TRACE_EXEC)
    await env.cluster.wait_phase("trace", "Running")

    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/metrics") as response:
        samples = {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in (await response.text()).splitlines()
            if line.startswith("gadget_operator_")
        }
    assert samples["gadget_operator_instances_created_total"] == (1 if env.shared else NODE_COUNT)
    assert samples["gadget_operator_ready_nodes"] == NODE_COUNT
    assert samples['gadget_operator_status_writes_total{result="ok"}'] >= 1
    assert samples['gadget_operator_node_passes_total{result="ok"}'] >= NODE_COUNT
    assert samples['gadget_operator_resources{phase="Running"}'] == 1
    assert samples["gadget_operator_unreachable_nodes"] == 0
    calls = {
        name: value for name, value in samples.items() if name.startswith("gadget_operator_daemon_call_seconds_count")
    }
    assert any('method="GetGadgetInfo",result="ok"' in name and value >= NODE_COUNT for name, value in calls.items())
    # The per-resource work queues: the finalizer was added once, the spec dry-run once, nothing waits.
    assert samples['gadget_operator_workqueue_adds_total{name="finalizers"}'] >= 1
    assert samples['gadget_operator_workqueue_adds_total{name="dry-runs"}'] >= 1
    assert samples['gadget_operator_workqueue_depth{name="finalizers"}'] == 0
    assert samples['gadget_operator_workqueue_retries_total{name="finalizers"}'] == 0

    env.nodes[env.cluster.node_name(2)].faults.hang = True
    await env.cluster.patch_spec("trace", {"params": {"operator.KubeManager.podname": "api-1"}})
    await env.cluster.wait_phase("trace", "Degraded")
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/metrics") as response:
        text = await response.text()
    assert "gadget_operator_unreachable_nodes 1.0" in text
    assert 'gadget_operator_resources{phase="Degraded"} 1.0' in text
    assert 'gadget_operator_resources{phase="Running"} 0.0' in text
    env.nodes[env.cluster.node_name(2)].release()


@pytest.mark.skipif(bool(E2E_KUBECONFIG), reason="the e2e run itself authenticates with a kubeconfig")
async def test_the_operator_authenticates_with_a_kubeconfig_as_in_a_cluster(env: Env, tmp_path: Path) -> None:
    """Without --kube-server both kopf and the operator's own client must find credentials themselves."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": env.cluster.server}}],
                "users": [{"name": "u", "user": {"token": "t0ken"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    await env.operator.stop()
    assert env.emulator is not None
    first = len(env.emulator.requests)  # what the operator started with --kube-server sent is not checked
    env.operator = OperatorProcess(
        env.static_nodes,
        kubeconfig=str(kubeconfig),
        extra_args=["--namespace", env.cluster.namespace, *env.store_args],
        log_dir=tmp_path,
    )
    await env.operator.start()

    await env.cluster.apply("trace", TRACE_EXEC)

    await env.cluster.wait_phase("trace", "Running")
    operator_requests = [
        r for r in env.emulator.requests[first:] if r.user_agent.startswith(("kopf/", "gadget-operator/"))
    ]
    assert all(r.status < 400 for r in operator_requests if r.resource == "gadgetinstances")
    # Both kopf and the operator's own client (finalizer, status, events) send the kubeconfig's token.
    assert {r.user_agent.split("/")[0] for r in operator_requests} == {"kopf", "gadget-operator"}
    assert {r.authorization for r in operator_requests} == {"Bearer t0ken"}


async def test_an_image_one_node_cannot_pull_is_never_ready_and_says_why(env: Env) -> None:
    spec = {"image": "trace_open"}
    # The dry run passes on the daemon it asks first; another node cannot pull the image.
    checked_on = env.dry_run_node(spec)
    broken = next(node for node in env.nodes.fleet.nodes if node != checked_on)
    env.nodes[broken].state.manager.unknown_images = frozenset({full_image_name("trace_open")})

    async with env.cluster.statuses_of("opener") as seen:
        await env.cluster.apply("opener", spec)
        body = await env.cluster.wait_phase("opener", "Degraded")

    entry = next(e for e in body["status"]["nodes"] if e["node"] == broken)
    assert entry["state"] == "Failed"
    assert "trace_open" in entry["message"]  # IG's own pull error
    assert "not found" in entry["message"]
    assert body["status"]["runningNodes"] == NODE_COUNT - 1
    assert seen
    assert [s for s in seen if is_ready(s)] == [], "Ready was shown before the pull failed"


async def test_a_gadget_still_starting_is_pending_until_it_has_initialized(env: Env) -> None:
    slow = env.cluster.node_name(1)
    env.nodes[slow].state.manager.timing = RunTiming(init_delay=3600)  # an image pull that takes its time

    async with env.cluster.statuses_of("trace") as seen:
        await env.cluster.apply("trace", TRACE_EXEC)
        body = await env.cluster.wait_status(
            "trace", lambda b: (b.get("status") or {}).get("runningNodes") == NODE_COUNT - 1, what="the others run"
        )
        entry = next(e for e in body["status"]["nodes"] if e["node"] == slow)
        assert (entry["state"], body["status"]["phase"]) == ("Pending", "Pending")
        assert "waiting for the gadget to initialize" in entry["message"]
        assert condition(body, "Ready")["status"] == "False"

        (instance_id,) = env.nodes[slow].running()
        env.nodes[slow].state.manager.advance(instance_id)  # the pull finishes
        await env.cluster.wait_phase("trace", "Running")
    assert any(s.get("phase") == "Pending" for s in seen)


async def test_a_store_that_refuses_writes_fails_every_node_with_its_message(env: Env) -> None:
    if not env.shared:
        pytest.skip("the per-node store's rejection has its own test")
    refusal = 'configmaps is forbidden: User "system:serviceaccount:gadget:gadget" cannot create resource'
    for node in env.nodes.fleet.nodes.values():
        node.faults.fail_with = refusal
        node.faults.fail_only = frozenset({"CreateGadgetInstance"})

    await env.cluster.apply("trace", TRACE_EXEC)
    body = await env.cluster.wait_phase("trace", "Failed")

    assert {e["state"] for e in body["status"]["nodes"]} == {"Failed"}
    assert all(refusal in e["message"] for e in body["status"]["nodes"])
    assert "forbidden" in condition(body, "Degraded")["message"]

    for node in env.nodes.fleet.nodes.values():
        node.release()
    await env.cluster.wait_phase("trace", "Running")


async def test_an_instance_pinned_to_one_node_by_someone_else_breaks_igs_list_but_not_the_operator(env: Env) -> None:
    if not env.shared:
        pytest.skip("IG's List bug is a shared-store bug")
    first = env.cluster.node_name(1)
    pinned = model.GadgetInstance("c" * 32, "pinned-by-hand", "trace_dns", nodes=(first,))
    await env.nodes.pool.get(env.nodes[first].address).create_instance(pinned)
    with pytest.raises(errors.DaemonError, match="getting instance status"):
        await env.nodes.instances(env.cluster.node_name(2))  # what `kubectl gadget list` runs into

    uid = (await env.cluster.apply("trace", TRACE_EXEC))["metadata"]["uid"]
    body = await env.cluster.wait_phase("trace", "Running")

    assert body["status"]["ready"] == f"{NODE_COUNT}/{NODE_COUNT}"
    assert one_each(await env.nodes.owned_by(uid))
    assert "c" * 32 in env.nodes[first].running()  # someone else's instance is left alone


async def test_a_node_joining_a_selector_changes_over_without_leaving_a_node_uncovered(env: Env) -> None:
    first, second, third = (env.cluster.node_name(i) for i in (1, 2, 3))
    for node in (first, second):
        await env.cluster.label_node(node, {"tier": "edge"})
    spec = {"image": "trace_tcp", "nodeSelector": {"matchLabels": {"tier": "edge"}}}
    uid = (await env.cluster.apply("edge", spec))["metadata"]["uid"]
    await env.cluster.wait_status("edge", lambda b: (b.get("status") or {}).get("ready") == "2/2")

    gaps: list[dict[str, int]] = []
    stop = asyncio.Event()

    async def sample() -> None:  # what runs on the nodes that stay selected, all along the changeover
        while not stop.is_set():
            owned = await env.nodes.owned_by(uid)
            counts = {node: len(owned.get(node, [])) for node in (first, second)}
            if min(counts.values()) == 0:
                gaps.append(counts)
            await asyncio.sleep(0.005)

    sampler = asyncio.create_task(sample())
    try:
        await env.cluster.label_node(third, {"tier": "edge"})
        await env.cluster.wait_status("edge", lambda b: (b.get("status") or {}).get("ready") == "3/3")
        owned = await env.nodes.wait_owned(uid, one_each, what="one instance on each of the three nodes")
    finally:
        stop.set()
        await sampler
    assert gaps == [], "a selected node ran no instance during the changeover"
    if env.shared:
        (instance,) = {i.id: i for instances in owned.values() for i in instances}.values()
        assert instance.nodes == (first, second, third)


async def test_an_update_the_gadget_rejects_keeps_the_old_instances_on_every_node_and_says_so(env: Env) -> None:
    uid = (await env.cluster.apply("trace", TRACE_EXEC))["metadata"]["uid"]
    await env.cluster.wait_phase("trace", "Running")
    before = {node: {i.id for i in instances} for node, instances in (await env.nodes.owned_by(uid)).items()}

    await env.cluster.patch_spec("trace", {"image": "no_such_gadget"})
    body = await env.cluster.wait_phase("trace", "Failed")

    assert condition(body, "Ready")["reason"] == "GadgetRejected"
    assert "no_such_gadget" in body["status"]["message"]
    after = {node: {i.id for i in instances} for node, instances in (await env.nodes.owned_by(uid)).items()}
    assert after == before  # the previous spec keeps running everywhere


async def test_an_update_that_fails_on_one_node_keeps_the_old_instance_running_there(env: Env) -> None:
    uid = (await env.cluster.apply("trace", TRACE_EXEC))["metadata"]["uid"]
    await env.cluster.wait_phase("trace", "Running")
    new_spec = {"image": "trace_open"}
    checked_on = env.dry_run_node({**TRACE_EXEC, **new_spec})
    broken = next(node for node in env.nodes.fleet.nodes if node != checked_on)
    (old,) = (await env.nodes.owned_by(uid))[broken]
    env.nodes[broken].state.manager.unknown_images = frozenset({full_image_name("trace_open")})

    await env.cluster.patch_spec("trace", new_spec)
    body = await env.cluster.wait_status(
        "trace", lambda b: b["status"].get("observedGeneration") == 2 and b["status"].get("phase") == "Degraded"
    )

    entry = next(e for e in body["status"]["nodes"] if e["node"] == broken)
    assert entry["state"] == "Failed"
    assert f"the previous spec's instance {old.id} keeps running" in entry["message"]
    healthy = [node for node in env.nodes.fleet.nodes if node != broken]
    # Per-node store: the healthy nodes changed over. Shared store: the old spec is one instance for
    # every node, so it keeps running beside the new one on the healthy nodes (README, "The two daemon
    # stores"), until the new spec runs everywhere.
    per_healthy_node = 2 if env.shared else 1
    owned = await env.nodes.wait_owned(
        uid,
        lambda owned: all(len(owned.get(node, [])) == per_healthy_node for node in healthy),
        what="the healthy nodes run the new spec",
    )
    assert old.id in {i.id for i in owned[broken]}  # still running the old spec
    assert all("trace_open" in {i.image for i in owned[node]} for node in healthy)


async def test_suspend_with_an_unreachable_node_shows_what_may_still_run_there(env: Env) -> None:
    if env.shared:
        pytest.skip("the shared store is emptied through any daemon; each daemon stops what the store drops")
    uid = (await env.cluster.apply("trace", TRACE_EXEC))["metadata"]["uid"]
    await env.cluster.wait_phase("trace", "Running")
    hung = env.cluster.node_name(2)
    env.nodes[hung].faults.hang = True

    await env.cluster.patch_spec("trace", {"suspend": True})
    body = await env.cluster.wait_status(
        "trace",
        lambda b: (
            b["status"].get("phase") == "Suspended"
            and any(e["node"] == hung and e["state"] == "Unreachable" for e in b["status"].get("nodes", []))
        ),
        what="the unreachable node listed while suspended",
    )

    entry = next(e for e in body["status"]["nodes"] if e["node"] == hung)
    assert "may still run an instance" in entry["message"]
    assert condition(body, "Degraded")["status"] == "True"
    assert "still on 1 node(s)" in body["status"]["message"]

    env.nodes[hung].release()
    body = await env.cluster.wait_status(
        "trace", lambda b: b["status"].get("phase") == "Suspended" and not b["status"].get("nodes")
    )
    assert condition(body, "Degraded")["status"] == "False"
    await env.nodes.wait_owned(uid, lambda owned: not owned, what="nothing runs while suspended")


async def test_a_node_that_left_the_cluster_while_its_daemon_lives_is_cleaned(env: Env) -> None:
    if env.shared:
        pytest.skip("IG's DaemonSet removes a node's daemon pod with the node")
    uid = (await env.cluster.apply("trace", TRACE_EXEC))["metadata"]["uid"]
    await env.cluster.wait_phase("trace", "Running")
    leaving = env.cluster.node_name(3)

    await env.cluster.remove_node(leaving)  # its standalone daemon still runs and is still configured

    await env.nodes.wait_owned(uid, lambda owned: leaving not in owned, what=f"{leaving}'s daemon cleaned")
    await env.cluster.delete("trace")
    await env.cluster.wait_gone("trace")
    assert await env.nodes.owned_by(uid) == {}


@pytest.mark.skipif(bool(E2E_KUBECONFIG), reason="reads the emulator's request log")
async def test_a_restarted_operator_asks_about_no_instance_one_by_one(env: Env) -> None:
    for name in ("a", "b", "c"):
        await env.cluster.apply(name, TRACE_EXEC)
    for name in ("a", "b", "c"):
        await env.cluster.wait_phase(name, "Running")
    assert env.emulator is not None
    before = len(env.emulator.requests)

    await env.restart_operator(crash=True)
    for name in ("a", "b", "c"):
        await env.cluster.wait_phase(name, "Running")
    await eventually(lambda: _listed_after(env, before), what="the restarted operator listed the GadgetInstances once")

    single_gets = [
        r
        for r in env.emulator.requests[before:]
        if r.user_agent.startswith("gadget-operator/") and r.resource == "gadgetinstances" and r.verb == "get"
    ]
    assert single_gets == []  # every instance's owner was known from the one list: no GET per instance


async def _listed_after(env: Env, before: int) -> bool:
    assert env.emulator is not None
    return any(
        r.user_agent.startswith("gadget-operator/") and r.resource == "gadgetinstances" and r.verb == "list"
        for r in env.emulator.requests[before:]
    )


@pytest.mark.skipif(bool(E2E_KUBECONFIG), reason="the emulator refuses the finalizer patch (as a webhook would)")
async def test_a_refused_finalizer_shows_in_the_status_and_nothing_runs_until_it_is_added(env: Env) -> None:
    assert env.emulator is not None
    env.emulator.deny("patch", "gadgetinstances")  # the finalizer's JSON patch; /status stays writable

    uid = (await env.cluster.apply("trace", TRACE_EXEC))["metadata"]["uid"]
    body = await env.cluster.wait_status(
        "trace", lambda b: condition(b, "Ready")["reason"] == "FinalizerRefused" if b.get("status") else False
    )

    assert body["status"]["phase"] == "Pending"
    assert "cannot add the cleanup finalizer" in body["status"]["message"]
    assert condition(body, "Degraded")["status"] == "True"
    assert await env.nodes.owned_by(uid) == {}
    events = (await env.cluster.core.list_namespaced_event(env.cluster.namespace)).items
    assert any(e.reason == "FinalizerRefused" and e.type == "Warning" for e in events)

    env.emulator.allow("patch", "gadgetinstances")
    body = await env.cluster.wait_phase("trace", "Running", within=40)
    assert "gadget-operator.io/cleanup" in body["metadata"]["finalizers"]
