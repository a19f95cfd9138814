"""Spec updates that protect what runs: ``updateStrategy: RollingUpdate`` against both daemon stores.

A node keeps its old instance until the new one is proven there; a rolling update also starts the new
spec on ``maxSurge`` nodes at a time and halts while one of them fails. What a user sees is asserted:
the resource's status (``kubectl get gi -o yaml``) and what each node's daemon runs.
"""

from __future__ import annotations

from typing import Any

from gadget_operator.simulator.state import RunTiming, full_image_name
from tests.integration.conftest import NODE_COUNT, Env

ROLLING = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}
V1 = {"image": "trace_exec", "params": {"operator.KubeManager.podname": "api-0"}, "updateStrategy": ROLLING}


def rollout_of(body: dict[str, Any]) -> dict[str, Any] | None:
    return (body.get("status") or {}).get("rollout")


def condition(body: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in body["status"]["conditions"] if c["type"] == kind)


def at_generation(body: dict[str, Any], generation: int) -> bool:
    return (body.get("status") or {}).get("observedGeneration") == generation


async def images_by_node(env: Env, uid: str) -> dict[str, set[str]]:
    """The images of the resource's instances each node runs (as ``gadget list`` on each node shows)."""
    owned = await env.nodes.owned_by(uid)
    return {node: {i.image for i in owned.get(node, [])} for node in env.nodes.fleet.nodes}


def the_dry_run_node(env: Env, change: dict[str, Any]) -> str:
    """The daemon the operator asks first to dry-run ``change`` (so it must be able to run it)."""
    return env.dry_run_node({**V1, **change})


async def test_a_rolling_update_with_a_broken_image_stops_after_the_first_batch_and_resumes_when_fixed(
    env: Env,
) -> None:
    uid = (await env.cluster.apply("trace", V1))["metadata"]["uid"]
    await env.cluster.wait_phase("trace", "Running")
    broken = {"image": "trace_open"}
    checked_on = the_dry_run_node(env, broken)
    for node in env.nodes.fleet.nodes:
        if node != checked_on:  # the image passes the dry run but cannot be pulled anywhere else
            env.nodes[node].state.manager.unknown_images = frozenset({full_image_name("trace_open")})

    await env.cluster.patch_spec("trace", broken)
    body = await env.cluster.wait_status(
        "trace", lambda b: at_generation(b, 2) and bool((rollout_of(b) or {}).get("halted")), what="a halted rollout"
    )

    rollout = rollout_of(body)
    assert rollout is not None
    assert (rollout["maxSurge"], rollout["updatingNodes"]) == (1, 1)
    assert rollout["waitingNodes"] >= 1
    assert body["status"]["phase"] == "Degraded"
    assert (condition(body, "Progressing")["status"], condition(body, "Progressing")["reason"]) == (
        "False",
        "RolloutHalted",
    )
    failed = [e for e in body["status"]["nodes"] if e["state"] == "Failed"]
    assert len(failed) == 1
    assert "keeps running" in failed[0]["message"]
    waiting = [e for e in body["status"]["nodes"] if "until its turn in the rolling update" in e.get("message", "")]
    assert len(waiting) == rollout["waitingNodes"]
    images = await images_by_node(env, uid)
    assert sum("trace_open" in found for found in images.values()) <= 2  # the batch, and the dry-run node
    for entry in waiting:
        assert images[entry["node"]] == {"trace_exec"}, "a waiting node keeps the previous spec only"
    assert "trace_exec" in images[failed[0]["node"]], "the failed node keeps the previous spec"

    fixed = {"image": "trace_exec", "params": {"operator.KubeManager.podname": "api-1"}}
    await env.cluster.patch_spec("trace", fixed)
    body = await env.cluster.wait_status(
        "trace", lambda b: at_generation(b, 3) and b["status"].get("phase") == "Running", what="the fixed spec runs"
    )
    assert rollout_of(body) is None
    owned = await env.nodes.wait_owned(
        uid,
        lambda owned: len(owned) == NODE_COUNT and all(len(i) == 1 for i in owned.values()),
        what="one instance of the fixed spec per node",
    )
    assert all(i.params["operator.KubeManager.podname"] == "api-1" for found in owned.values() for i in found)


async def test_a_rolling_update_starts_max_surge_nodes_at_a_time_and_shows_its_progress(env: Env) -> None:
    uid = (await env.cluster.apply("trace", V1))["metadata"]["uid"]
    await env.cluster.wait_phase("trace", "Running")
    change = {"params": {"operator.KubeManager.podname": "api-1"}}
    fast = the_dry_run_node(env, change)
    slow = [node for node in env.nodes.fleet.nodes if node != fast]
    for node in slow:  # the new spec starts only when the test lets it
        env.nodes[node].state.manager.timing = RunTiming(init_delay=3600)

    def starting(node: str) -> list[str]:
        return [i for i in env.nodes[node].running() if not env.nodes[node].initialized(i)]

    reached: list[set[str]] = []  # after each step: the slow nodes that have started the new spec
    async with env.cluster.statuses_of("trace") as seen:
        await env.cluster.patch_spec("trace", change)
        released = 0
        while True:
            body = await env.cluster.wait_status(
                "trace",
                lambda b: (
                    at_generation(b, 2)
                    and (
                        b["status"].get("phase") == "Running"
                        if rollout_of(b) is None
                        else rollout_of(b)["updatingNodes"] == 1 and any(starting(n) for n in slow)
                    )
                ),
                what="the next batch starting, or the rollout done",
            )
            if rollout_of(body) is None:
                break
            reached.append({node for node in slow if starting(node)} | (reached[-1] if reached else set()))
            before = reached[-2] if len(reached) > 1 else set()
            assert len(reached[-1] - before) <= 1, "at most one more node per step starts the new spec"
            if not env.shared:  # (in the shared store each step is a new instance on every admitted node)
                assert sum(bool(starting(node)) for node in slow) == 1
            for node in slow:
                for instance_id in starting(node):
                    env.nodes[node].state.manager.advance(instance_id)
                    released += 1
    shown = [s["rollout"] for s in seen if s.get("observedGeneration") == 2 and "rollout" in s]
    assert shown, "the status showed the rollout while it ran"
    assert all(r["updatingNodes"] <= r["maxSurge"] == 1 for r in shown)
    assert [r["updatedNodes"] for r in shown] == sorted(r["updatedNodes"] for r in shown)
    assert released >= len(slow)
    owned = await env.nodes.wait_owned(
        uid,
        lambda owned: len(owned) == NODE_COUNT and all(len(i) == 1 for i in owned.values()),
        what="the previous spec removed everywhere",
    )
    assert all(i.params["operator.KubeManager.podname"] == "api-1" for found in owned.values() for i in found)


async def test_a_node_without_a_daemon_does_not_hold_up_a_rolling_update(env: Env) -> None:
    """A Node that runs no gadget daemon (IG not scheduled there, or its pod gone) runs nothing to
    protect: the rollout goes through the nodes that have one, and ends."""
    await env.cluster.add_node(env.cluster.node_name(NODE_COUNT + 1), {"gadget-test/role": "worker"})
    uid = (await env.cluster.apply("trace", V1))["metadata"]["uid"]
    await env.cluster.wait_phase("trace", "Running")
    await env.cluster.patch_spec("trace", {"params": {"operator.KubeManager.podname": "api-1"}})
    body = await env.cluster.wait_phase("trace", "Running", within=40)
    assert rollout_of(body) is None
    owned = await env.nodes.wait_owned(
        uid,
        lambda owned: len(owned) == NODE_COUNT and all(len(i) == 1 for i in owned.values()),
        what="the previous spec removed everywhere",
    )
    assert {i.params["operator.KubeManager.podname"] for instances in owned.values() for i in instances} == {"api-1"}
