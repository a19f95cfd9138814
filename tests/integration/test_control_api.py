"""The operator's control API (``proto/control/v1/control.proto``), as a client generated from the .proto
sees it while the real operator works: GetState, the Events stream (replay, then live) and Execute, over
gRPC and over HTTP/JSON, against both daemon stores.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import aiohttp
import grpc.aio
from google.protobuf import json_format

from gadget_operator import resource
from gadget_operator.control.pb import control_pb2, control_pb2_grpc
from gadget_operator.testing.operator_process import OperatorProcess
from tests.integration.conftest import NODE_COUNT, Env
from tests.integration.harness import eventually
from tests.integration.test_leader_election import HA, ha  # noqa: F401 (the fixture)

TRACE_EXEC = {"image": "trace_exec", "params": {"operator.KubeManager.podname": "api-0"}}
Entry = control_pb2.LogEntry
Match = Callable[[Entry], bool]


@contextlib.asynccontextmanager
async def control(operator: OperatorProcess) -> AsyncIterator[control_pb2_grpc.ControlServiceAsyncStub]:
    """A client of the operator's control API, generated from the .proto."""
    async with grpc.aio.insecure_channel(operator.control_address) as channel:
        yield control_pb2_grpc.ControlServiceStub(channel)


class Follower:
    """An Events stream followed from the moment it is opened: every entry, as received."""

    def __init__(self, stub: control_pb2_grpc.ControlServiceAsyncStub) -> None:
        self.entries: list[Entry] = []
        self._call = stub.Events(control_pb2.EventsRequest(follow=True))
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            async for entry in self._call:
                self.entries.append(entry)

    async def wait_for(self, match: Match, *, what: str, within: float = 20.0) -> Entry:
        async def seen() -> Entry | None:
            return next((entry for entry in self.entries if match(entry)), None)

        return await eventually(seen, within=within, what=f"{what}\nsummaries: {summaries(self.entries)}")

    async def close(self) -> None:
        self._call.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


def summaries(entries: Sequence[Entry]) -> list[str]:
    return [f"{entry.sequence}: {entry.summary}" for entry in entries]


def index_of(entries: Sequence[Entry], match: Match, *, after: int = -1, what: str) -> int:
    """The index of the first entry after ``after`` that matches; fails with the whole story."""
    for index in range(after + 1, len(entries)):
        if match(entries[index]):
            return index
    raise AssertionError(f"no {what} after entry {after}: {summaries(entries)}")


def instance(action: int, node: str | None = None, name: str = "trace") -> Match:
    def match(entry: Entry) -> bool:
        if entry.WhichOneof("event") != "instance":
            return False
        event = entry.instance
        return event.action == action and event.resource.name == name and (node is None or event.node == node)

    return match


def node_event(action: int, node: str) -> Match:
    return lambda entry: entry.WhichOneof("event") == "node" and (entry.node.action, entry.node.node) == (action, node)


def phase(name: str, value: str, *, previous: str | None = None) -> Match:
    def match(entry: Entry) -> bool:
        if entry.WhichOneof("event") != "resource":
            return False
        event = entry.resource
        return (event.resource.name, event.phase) == (name, value) and (
            previous is None or event.previous_phase == previous
        )

    return match


def rollout_event(action: int, name: str = "trace") -> Match:
    return lambda entry: (
        entry.WhichOneof("event") == "rollout" and (entry.rollout.action, entry.rollout.resource.name) == (action, name)
    )


def the_resource(state: control_pb2.State, name: str) -> control_pb2.ResourceState:
    return next(r for r in state.resources if r.name == name)


async def state_where(
    stub: control_pb2_grpc.ControlServiceAsyncStub, check: Callable[[control_pb2.State], bool], *, what: str
) -> control_pb2.State:
    last: list[control_pb2.State] = []

    async def probe() -> control_pb2.State | None:
        state = await stub.GetState(control_pb2.StateRequest(), timeout=5)
        last[:] = [state]
        return state if check(state) else None

    try:
        return await eventually(probe, what=what)
    except AssertionError as error:
        raise AssertionError(f"{error}\nstate: {last}") from None


async def http_state(operator: OperatorProcess) -> control_pb2.State:
    async with aiohttp.ClientSession() as session, session.get(f"{operator.control_http_url}/v1/state") as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        return json_format.Parse(await response.text(), control_pb2.State())


def without_contact_times(state: control_pb2.State) -> control_pb2.State:
    """The state but for when each daemon last answered (it moves with every drift check)."""
    copy = control_pb2.State()
    copy.CopyFrom(state)
    for daemon in copy.daemons:
        daemon.ClearField("last_contact")
    return copy


async def execute(stub: control_pb2_grpc.ControlServiceAsyncStub, **intent: Any) -> control_pb2.IntentResult:
    return await stub.Execute(control_pb2.Intent(**intent), timeout=10)


def ref(name: str, namespace: str) -> control_pb2.ResourceRef:
    return control_pb2.ResourceRef(kind="GadgetInstance", namespace=namespace, name=name)


# -- state and events through a lifecycle ---------------------------------------------------------------


async def test_a_client_follows_create_daemon_failure_repair_and_delete_in_order_and_a_late_replay_matches(
    env: Env,
) -> None:
    InstanceEvent, NodeEvent = control_pb2.InstanceEvent, control_pb2.NodeEvent
    nodes = sorted(env.nodes.fleet.nodes)
    down = env.cluster.node_name(2)
    async with control(env.operator) as stub:
        follower = Follower(stub)
        try:
            created = await env.cluster.apply("trace", TRACE_EXEC)
            uid = created["metadata"]["uid"]
            await env.cluster.wait_phase("trace", "Running")
            await follower.wait_for(phase("trace", "Running"), what="the Running phase")

            # GetState: the resource with each node's instance, the daemons, the operator itself.
            state = await state_where(
                stub,
                lambda s: len(s.daemons) == NODE_COUNT and all(d.reachable and d.instances == 1 for d in s.daemons),
                what="every daemon reached, each running one instance",
            )
            assert (state.operator.role, state.operator.settings["daemon-store"]) == ("leader", env.store)
            assert state.operator.identity
            found = the_resource(state, "trace")
            assert (found.kind, found.namespace, found.uid) == ("GadgetInstance", env.cluster.namespace, uid)
            assert (found.phase, found.generation, found.observed_generation) == ("Running", 1, 1)
            assert not found.HasField("rollout")
            owned = await env.nodes.owned_by(uid)
            assert {(n.node, n.state, n.instance_id) for n in found.nodes} == {
                (node, "Running", instances[0].id) for node, instances in owned.items()
            }
            assert [(d.node, d.transport) for d in state.daemons] == [(node, "unix") for node in nodes]
            assert all(d.HasField("last_contact") and not d.last_error for d in state.daemons)
            # The same state over HTTP/JSON, from the same definitions.
            assert without_contact_times(await http_state(env.operator)) == without_contact_times(
                await stub.GetState(control_pb2.StateRequest(), timeout=5)
            )

            # A daemon fails: unreachable, the resource degraded; it comes back: repaired.
            await env.nodes[down].stop()
            await env.cluster.wait_phase("trace", "Degraded")
            state = await state_where(
                stub,
                lambda s: (
                    the_resource(s, "trace").phase == "Degraded"
                    and any(d.node == down and not d.reachable and d.last_error for d in s.daemons)
                ),
                what=f"{down} unreachable in the state",
            )
            assert {n.node: n.state for n in the_resource(state, "trace").nodes}[down] == "Unreachable"
            await env.nodes[down].start()
            await env.cluster.wait_status(
                "trace", lambda b: b["status"].get("phase") == "Running" and b["status"].get("ready") == "3/3"
            )
            await follower.wait_for(phase("trace", "Running", previous="Degraded"), what="Running again")

            await env.cluster.delete("trace")
            await env.cluster.wait_gone("trace")
            for node in [""] if env.shared else nodes:
                await follower.wait_for(instance(InstanceEvent.REMOVED, node), what=f"the instance removed ({node})")
        finally:
            await follower.close()

        seen = follower.entries
        assert [e.sequence for e in seen] == list(range(1, len(seen) + 1)), "numbered from 1, no gap"
        assert seen[0].dropped == 0
        assert seen[0].WhichOneof("event") == "leadership"
        assert seen[0].leadership.role == "leader"
        assert all(e.summary and e.HasField("timestamp") for e in seen)
        assert [e.timestamp.ToNanoseconds() for e in seen] == sorted(e.timestamp.ToNanoseconds() for e in seen)

        # Each step in order.
        joined = max(index_of(seen, node_event(NodeEvent.JOINED, n), what=f"{n} joined") for n in nodes)
        running = []
        for node in nodes:
            made = index_of(seen, instance(InstanceEvent.CREATED, "" if env.shared else node), what=f"created {node}")
            assert made > joined
            running.append(index_of(seen, instance(InstanceEvent.RUNNING, node), after=made, what=f"running {node}"))
        ready = index_of(seen, phase("trace", "Running"), what="phase Running")
        assert ready > max(running)
        lost = index_of(seen, node_event(NodeEvent.UNREACHABLE, down), after=ready, what=f"{down} unreachable")
        degraded = index_of(seen, phase("trace", "Degraded", previous="Running"), after=lost, what="Degraded")
        back = index_of(seen, node_event(NodeEvent.REACHABLE, down), after=degraded, what=f"{down} reachable")
        rerun = index_of(seen, instance(InstanceEvent.RUNNING, down), after=back, what=f"running again on {down}")
        repaired = index_of(seen, phase("trace", "Running", previous="Degraded"), after=rerun, what="repaired")
        for node in [""] if env.shared else nodes:
            index_of(seen, instance(InstanceEvent.REMOVED, node), after=repaired, what=f"removed ({node})")
        assert seen[lost].node.message, "why the node is unreachable"
        ids = {e.instance.instance_id for e in seen if instance(InstanceEvent.RUNNING)(e)}
        assert {n.instance_id for n in found.nodes} <= ids

        # A client that connects late gets the same story from the replay, entry for entry.
        replay = [e async for e in stub.Events(control_pb2.EventsRequest(follow=False), timeout=10)]
        assert replay[: len(seen)] == seen
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{env.operator.control_http_url}/v1/events", params={"follow": "false"}) as response,
        ):
            assert response.content_type == "application/x-ndjson"
            lines = [line for line in (await response.text()).splitlines() if line]
        over_http = [json_format.Parse(line, control_pb2.LogEntry()) for line in lines]
        assert over_http[: len(seen)] == seen


# -- intents ----------------------------------------------------------------------------------------------


def calls(env: Env, node: str) -> int:
    return sum(env.nodes[node].calls.values())


async def test_resync_intents_and_the_resync_annotation_look_at_the_nodes_again_now(env: Env) -> None:
    # Drift checks once an hour: whatever the daemons are asked next is the intents' doing.
    await env.restart_operator("--resync-interval", "3600")
    uid = (await env.cluster.apply("trace", TRACE_EXEC))["metadata"]["uid"]
    await env.cluster.wait_phase("trace", "Running")
    first = env.cluster.node_name(1)
    namespace = env.cluster.namespace
    async with control(env.operator) as stub:
        follower = Follower(stub)
        try:
            before = calls(env, first)
            result = await execute(stub, resync=control_pb2.ResyncIntent(node=first))
            assert result.accepted, result.message
            await until(lambda: calls(env, first) > before, what=f"{first} asked again")

            before_all = {node: calls(env, node) for node in env.nodes.fleet.nodes}
            assert (await execute(stub, resync=control_pb2.ResyncIntent(all=True))).accepted
            await until(lambda: all(calls(env, n) > count for n, count in before_all.items()), what="every node asked")

            if not env.shared:  # an instance removed by hand comes back at once, not at the next drift check
                (removed,) = (await env.nodes.owned_by(uid))[first]
                await env.nodes.pool.get(env.nodes[first].address).remove_instance(removed.id)
                result = await execute(stub, resync=control_pb2.ResyncIntent(resource=ref("trace", namespace)))
                assert result.accepted, result.message
                await env.nodes.wait_owned(uid, lambda owned: first in owned, what="the instance re-created")

            # The Kubernetes-native twin: a new value of the annotation, honoured once.
            before_all = {node: calls(env, node) for node in env.nodes.fleet.nodes}
            await _annotate(env, "trace", {resource.RESYNC_ANNOTATION: "2024-01-01T00:00:00Z"})
            await until(
                lambda: all(calls(env, n) > count for n, count in before_all.items()),
                what="every node of the resource asked again",
            )
            by_annotation = await follower.wait_for(
                lambda e: e.WhichOneof("event") == "intent" and e.intent.source == "annotation",
                what="the annotation's resync in the event log",
            )
            assert by_annotation.intent.result.accepted

            # What cannot be done is refused with a reason, and recorded too.
            unknown = await execute(stub, resync=control_pb2.ResyncIntent(resource=ref("nothing", namespace)))
            assert not unknown.accepted
            assert "nothing" in unknown.message
            assert not (await execute(stub, resync=control_pb2.ResyncIntent(node="no-such-node"))).accepted
            assert not (await execute(stub)).accepted
            await follower.wait_for(
                lambda e: e.WhichOneof("event") == "intent" and not e.intent.result.accepted, what="a refusal recorded"
            )
        finally:
            await follower.close()
    events = await env.cluster.core.list_namespaced_event(namespace, field_selector=f"involvedObject.uid={uid}")
    assert any(e.reason == "ResyncRequested" for e in events.items)


async def until(condition: Callable[[], bool], *, what: str) -> None:
    async def probe() -> bool:
        return condition()

    await eventually(probe, what=what)


async def _annotate(env: Env, name: str, annotations: dict[str, str | None]) -> None:
    await env.cluster.custom.patch_namespaced_custom_object(
        resource.GROUP,
        resource.VERSION,
        env.cluster.namespace,
        resource.PLURAL,
        name,
        {"metadata": {"annotations": annotations}},
        _content_type="application/merge-patch+json",
    )


MANUAL = {"type": "Manual", "rollingUpdate": {"maxSurge": 1}}
V1 = {**TRACE_EXEC, "updateStrategy": MANUAL}
V2 = {"params": {"operator.KubeManager.podname": "api-1"}}


async def new_spec_nodes(env: Env, uid: str) -> set[str]:
    """The nodes that run the new spec (podname api-1), as their daemons show it."""
    owned = await env.nodes.owned_by(uid)
    return {
        node
        for node, found in owned.items()
        if any(i.params.get("operator.KubeManager.podname") == "api-1" for i in found)
    }


def rollout_of(body: dict[str, Any]) -> dict[str, Any]:
    return (body.get("status") or {}).get("rollout") or {}


async def test_a_manual_rollout_takes_a_step_per_next_intent_pauses_and_resumes_and_the_pause_survives_a_restart(
    env: Env,
) -> None:
    RolloutIntent, RolloutEvent = control_pb2.RolloutIntent, control_pb2.RolloutEvent
    namespace = env.cluster.namespace
    trace = ref("trace", namespace)
    # The test's nodes only: on a real cluster shared with other tests, every Node would be a target.
    uid = (await env.cluster.apply("trace", {**V1, "nodes": sorted(env.nodes.fleet.nodes)}))["metadata"]["uid"]
    await env.cluster.wait_phase("trace", "Running")

    async with control(env.operator) as stub:
        result = await execute(stub, rollout=control_pb2.RolloutIntent(action=RolloutIntent.NEXT, resource=trace))
        assert not result.accepted
        assert "no rollout in progress" in result.message

        await env.cluster.patch_spec("trace", V2)
        body = await env.cluster.wait_status(
            "trace",
            lambda b: rollout_of(b).get("awaitingStep") is True and rollout_of(b).get("updatedNodes") == 1,
            what="the first batch done, waiting for the next step",
        )
        assert rollout_of(body)["strategy"] == "Manual"
        assert rollout_of(body)["waitingNodes"] == NODE_COUNT - 1
        progressing = next(c for c in body["status"]["conditions"] if c["type"] == "Progressing")
        assert (progressing["status"], progressing["reason"]) == ("False", "AwaitingNextStep")
        assert len(await new_spec_nodes(env, uid)) == 1
        state = await stub.GetState(control_pb2.StateRequest(), timeout=5)
        rollout = the_resource(state, "trace").rollout
        assert (rollout.strategy, rollout.awaiting_step, rollout.steps, rollout.waiting_nodes) == ("Manual", True, 0, 2)

        result = await execute(stub, rollout=control_pb2.RolloutIntent(action=RolloutIntent.NEXT, resource=trace))
        assert result.accepted, result.message
        body = await env.cluster.wait_status(
            "trace",
            lambda b: rollout_of(b).get("awaitingStep") is True and rollout_of(b).get("updatedNodes") == 2,
            what="the second step done",
        )
        annotations = body["metadata"]["annotations"]
        assert annotations[resource.ROLLOUT_STEP_ANNOTATION] == f"{body['metadata']['generation']}:1"
        assert len(await new_spec_nodes(env, uid)) == 2

        # Paused: a step asked for meanwhile waits for the resume, across a restart of the operator.
        result = await execute(stub, rollout=control_pb2.RolloutIntent(action=RolloutIntent.PAUSE, resource=trace))
        assert result.accepted, result.message
        assert (
            await execute(stub, rollout=control_pb2.RolloutIntent(action=RolloutIntent.NEXT, resource=trace))
        ).accepted
        body = await env.cluster.wait_status(
            "trace", lambda b: rollout_of(b).get("paused") is True, what="the rollout shown paused"
        )
        assert body["metadata"]["annotations"][resource.ROLLOUT_PAUSED_ANNOTATION] == "true"
        assert rollout_of(body)["waitingNodes"] == 1
        assert len(await new_spec_nodes(env, uid)) == 2
    await env.restart_operator()
    async with control(env.operator) as stub:
        state = await state_where(
            stub,
            lambda s: any(r.name == "trace" and r.rollout.paused for r in s.resources),
            what="still paused after the restart",
        )
        assert the_resource(state, "trace").rollout.steps == 2
        assert len(await new_spec_nodes(env, uid)) == 2
        follower = Follower(stub)
        try:
            result = await execute(stub, rollout=control_pb2.RolloutIntent(action=RolloutIntent.RESUME, resource=trace))
            assert result.accepted, result.message
            body = await env.cluster.wait_status(
                "trace",
                lambda b: b["status"].get("phase") == "Running" and not rollout_of(b),
                what="the rollout complete",
            )
            assert resource.ROLLOUT_PAUSED_ANNOTATION not in (body["metadata"].get("annotations") or {})
            assert len(await new_spec_nodes(env, uid)) == NODE_COUNT
            step = await follower.wait_for(rollout_event(RolloutEvent.STEP), what="the last step")
            assert len(step.rollout.nodes) == 1
            await follower.wait_for(rollout_event(RolloutEvent.RESUMED), what="resumed")
            await follower.wait_for(rollout_event(RolloutEvent.COMPLETE), what="complete")
        finally:
            await follower.close()
    events = await env.cluster.core.list_namespaced_event(namespace, field_selector=f"involvedObject.uid={uid}")
    reasons = {e.reason for e in events.items}
    assert {"RolloutStep", "RolloutPaused", "RolloutResumed", "RolloutComplete"} <= reasons


async def test_rollout_intents_that_do_not_apply_are_refused(env: Env) -> None:
    RolloutIntent = control_pb2.RolloutIntent
    await env.cluster.apply("plain", TRACE_EXEC)
    await env.cluster.apply("rolling", {**TRACE_EXEC, "updateStrategy": {"type": "RollingUpdate"}})
    await env.cluster.wait_phase("rolling", "Running")
    async with control(env.operator) as stub:
        plain = ref("plain", env.cluster.namespace)
        rolling = ref("rolling", env.cluster.namespace)
        result = await execute(stub, rollout=RolloutIntent(action=RolloutIntent.PAUSE, resource=plain))
        assert not result.accepted
        assert "AllAtOnce" in result.message
        result = await execute(stub, rollout=RolloutIntent(action=RolloutIntent.NEXT, resource=rolling))
        assert not result.accepted
        assert "Manual" in result.message
        assert not (await execute(stub, rollout=RolloutIntent(resource=rolling))).accepted
        # A RollingUpdate may be paused ahead of a change, and the pause is an annotation.
        assert (await execute(stub, rollout=RolloutIntent(action=RolloutIntent.PAUSE, resource=rolling))).accepted
        body = await env.cluster.get("rolling")
        assert body is not None
        assert body["metadata"]["annotations"][resource.ROLLOUT_PAUSED_ANNOTATION] == "true"


# -- leader election ------------------------------------------------------------------------------------------


async def test_a_standby_reports_its_role_refuses_intents_and_logs_when_it_takes_over(ha: HA) -> None:  # noqa: F811
    first = await ha.start("replica-a")
    assert await ha.leader() is first
    second = await ha.start("replica-b")
    async with control(first.process) as stub:
        state = await stub.GetState(control_pb2.StateRequest(), timeout=5)
        assert state.operator.role == "leader"
        assert state.operator.leader == state.operator.identity
    async with control(second.process) as stub:
        follower = Follower(stub)
        try:
            state = await stub.GetState(control_pb2.StateRequest(), timeout=5)
            assert state.operator.role == "standby"
            assert state.operator.leader.startswith("replica-a_")
            assert not state.resources
            result = await execute(stub, resync=control_pb2.ResyncIntent(all=True))
            assert not result.accepted
            assert "stands by" in result.message

            await first.process.kill()
            assert await ha.leader() is second
            took_over = await follower.wait_for(
                lambda e: e.WhichOneof("event") == "leadership" and e.leadership.role == "leader",
                what="the standby becoming the leader",
            )
            state = await stub.GetState(control_pb2.StateRequest(), timeout=5)
            assert state.operator.role == "leader"
            assert (await execute(stub, resync=control_pb2.ResyncIntent(all=True))).accepted
        finally:
            await follower.close()
        roles = [e.leadership.role for e in follower.entries if e.WhichOneof("event") == "leadership"]
        assert roles == ["standby", "leader"]
        assert follower.entries[0].leadership.role == "standby"
        assert took_over.leadership.identity == state.operator.identity
