"""GetState and Execute against a reconciler built in memory (no API server, no daemon): what the
state shows, which intents are accepted, and how rollout intents become annotations on the resource."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from gadget_operator import identity, kube, resource, validation
from gadget_operator.control import events, state
from gadget_operator.control.intents import Intents
from gadget_operator.control.pb import control_pb2
from gadget_operator.control.recorder import Recorder
from gadget_operator.daemon.client import DaemonPool
from gadget_operator.discovery import Topology
from gadget_operator.leadership import Elector
from gadget_operator.node_worker import NodeWorker
from gadget_operator.reconciler import Reconciler
from gadget_operator.resource import GadgetInstanceResource
from gadget_operator.settings import DaemonStore, DiscoveryMode, DiscoverySettings, Settings, StatusSettings
from gadget_operator.status import NodeOutcome, NodeState

NODES = {"n1": "unix:///run/n1.sock", "n2": "unix:///run/n2.sock", "n3": "unix:///run/n3.sock"}
RolloutIntent = control_pb2.RolloutIntent


class FakeApi:
    """The API server as the reconciler and the intents use it: objects by UID, annotations merged."""

    def __init__(self) -> None:
        self.bodies: dict[str, dict[str, Any]] = {}
        self.conflicts = 0
        """The next annotate calls that answer 409 (someone else wrote first)."""
        self.annotated: list[Mapping[str, str | None]] = []
        self.posted: list[str] = []

    def put(self, body: dict[str, Any]) -> dict[str, Any]:
        self.bodies[body["metadata"]["uid"]] = body
        return copy.deepcopy(body)

    async def annotate(
        self, gi: GadgetInstanceResource, annotations: Mapping[str, str | None], *, resource_version: str | None = None
    ) -> dict[str, Any]:
        if self.conflicts:
            self.conflicts -= 1
            self.bodies[gi.uid]["metadata"]["resourceVersion"] = str(int(gi.resource_version) + 1)
            raise kube.KubeApiError(409, "the object has been modified")
        body = self.bodies[gi.uid]
        assert resource_version == body["metadata"]["resourceVersion"]
        held = body["metadata"].setdefault("annotations", {})
        for key, value in annotations.items():
            if value is None:
                held.pop(key, None)
            else:
                held[key] = value
        body["metadata"]["resourceVersion"] = str(int(resource_version) + 1)
        self.annotated.append(dict(annotations))
        return copy.deepcopy(body)

    async def get_gadget_instance(
        self, namespace: str, name: str, *, kind: resource.Kind = resource.GADGET_INSTANCE
    ) -> dict[str, Any] | None:
        found = [
            b for b in self.bodies.values() if (b["metadata"]["namespace"], b["metadata"]["name"]) == (namespace, name)
        ]
        return copy.deepcopy(found[0]) if found else None

    async def post_event(self, gi: GadgetInstanceResource, *, warning: bool, reason: str, message: str) -> None:
        self.posted.append(reason)


@dataclass
class Op:
    """The runtime as the control API reads it (``state.Operator``)."""

    settings: Settings
    topology: Topology
    reconciler: Reconciler | None
    recorder: Recorder
    elector: Elector | None = None
    started: float = 1700000000.0
    api: FakeApi = field(default_factory=FakeApi)


def body(name: str, uid: str, *, generation: int = 1, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "gadget-operator.io/v1alpha1",
        "kind": "GadgetInstance",
        "metadata": {
            "name": name,
            "namespace": "team-a",
            "uid": uid,
            "generation": generation,
            "resourceVersion": "10",
            "finalizers": [resource.FINALIZER],
        },
        "spec": {"image": "trace_exec", **spec},
    }


@pytest.fixture
async def op() -> Op:
    settings = Settings(
        discovery=DiscoverySettings(mode=DiscoveryMode.STATIC, static_nodes=NODES, store=DaemonStore.PER_NODE),
        status=StatusSettings(max_node_entries=2),
    )
    topology = Topology(settings.discovery)
    topology.labels = {node: {} for node in NODES}
    api = FakeApi()
    recorder = Recorder()
    reconciler = Reconciler(settings=settings, api=api, pool=DaemonPool(), topology=topology, recorder=recorder)  # type: ignore[arg-type]
    for node in NODES:  # workers that are never started: waking one is what an intent does
        reconciler.workers[node] = NodeWorker(
            node, run_pass=_no_pass, resync_interval=30, backoff_initial=1, backoff_max=1
        )
        recorder.joined(node, NODES[node])
    return Op(settings, topology, reconciler, recorder, api=api)


async def _no_pass(worker: NodeWorker) -> None:
    raise AssertionError("no pass runs in these tests")


async def add(op: Op, name: str, uid: str, **spec: Any) -> GadgetInstanceResource:
    """A resource whose dry run passed, known to the reconciler."""
    assert op.reconciler is not None
    await op.reconciler.observe(None, op.api.put(body(name, uid, **spec)))
    gi = op.reconciler.resources[uid]
    assert gi.spec is not None
    op.reconciler.dry_runs.verdicts.put(gi.spec, validation.Verdict(accepted=True, node="n1"))
    return gi


def running_everywhere(op: Op, gi: GadgetInstanceResource) -> None:
    assert op.reconciler is not None
    assert gi.spec is not None
    for node in NODES:
        instance_id = identity.instance_id(gi.uid, node, gi.spec.digest)
        op.reconciler.set_outcome(gi.uid, node, NodeOutcome(node, NodeState.RUNNING, instance_id))


def intents(op: Op) -> Intents:
    return Intents(op, op.api)


def ref(name: str) -> control_pb2.ResourceRef:
    return control_pb2.ResourceRef(kind="GadgetInstance", namespace="team-a", name=name)


# -- GetState ---------------------------------------------------------------------------------------------


async def test_the_state_shows_every_node_of_a_resource_even_beyond_the_status_cap(op: Op) -> None:
    gi = await add(op, "trace", "uid-1")
    running_everywhere(op, gi)
    op.recorder.reached("n1")
    op.recorder.unreachable("n2", "connection refused")

    shown = state.build(op)

    (found,) = shown.resources
    assert (found.kind, found.namespace, found.name, found.uid) == ("GadgetInstance", "team-a", "trace", "uid-1")
    assert (found.phase, found.generation) == ("Running", 1)
    assert found.observed_generation == 0  # no status written yet
    assert len(found.nodes) == 3  # the status lists at most 2 (max_node_entries)
    assert all(entry.state == "Running" and entry.instance_id for entry in found.nodes)
    assert not found.HasField("rollout")
    daemons = {daemon.node: daemon for daemon in shown.daemons}
    assert set(daemons) == set(NODES)
    assert all(daemon.transport == "unix" for daemon in shown.daemons)
    assert daemons["n1"].reachable
    assert daemons["n1"].HasField("last_contact")
    assert (daemons["n2"].reachable, daemons["n2"].last_error) == (False, "connection refused")
    assert shown.operator.role == "leader"
    assert shown.operator.settings["daemon-store"] == "per-node"
    assert shown.operator.started.seconds == 1700000000


async def test_a_standby_shows_its_role_the_leader_and_no_resources(op: Op) -> None:
    class Standing:
        leading = False
        holder = "other-pod_1"

    standby = Op(op.settings, op.topology, None, Recorder(), elector=Standing())  # type: ignore[arg-type]
    shown = state.build(standby)
    assert (shown.operator.role, shown.operator.leader) == ("standby", "other-pod_1")
    assert not shown.resources
    assert {d.node for d in shown.daemons} == set(NODES)
    assert not any(d.reachable for d in shown.daemons)
    result = await intents(standby).execute(control_pb2.Intent(resync=control_pb2.ResyncIntent(all=True)))
    assert not result.accepted
    assert "other-pod_1" in result.message


@pytest.mark.parametrize(
    ("address", "mode", "shown"),
    [
        ("unix:///run/ig.sock", DiscoveryMode.STATIC, "unix"),
        ("tcp://10.0.0.1:8443", DiscoveryMode.STATIC, "tcp"),
        ("tcp://10.0.0.1:8080", DiscoveryMode.PODS, "pod-ip"),
        ("portforward://gadget/gadget-abc:8080", DiscoveryMode.PODS, "portforward"),
    ],
)
def test_how_each_daemon_is_reached(address: str, mode: DiscoveryMode, shown: str) -> None:
    assert state.transport(address, Settings(discovery=DiscoverySettings(mode=mode))) == shown


# -- resync -----------------------------------------------------------------------------------------------


async def test_resync_intents_wake_the_nodes_with_a_fresh_list_and_are_recorded(op: Op) -> None:
    assert op.reconciler is not None
    gi = await add(op, "trace", "uid-1", nodes=["n2"])
    workers = op.reconciler.workers
    for worker in workers.values():
        worker.actual = {}
        worker.wake_event.clear()

    node = await intents(op).execute(control_pb2.Intent(resync=control_pb2.ResyncIntent(node="n3")))
    assert node.accepted
    assert [n for n, w in sorted(workers.items()) if w.wake_event.is_set() and w.actual is None] == ["n3"]

    one = await intents(op).execute(control_pb2.Intent(resync=control_pb2.ResyncIntent(resource=ref(gi.name))))
    assert one.accepted
    assert "1 node" in one.message
    assert workers["n2"].wake_event.is_set()

    every = await intents(op).execute(control_pb2.Intent(resync=control_pb2.ResyncIntent(all=True)))
    assert every.accepted
    assert all(w.wake_event.is_set() and w.actual is None for w in workers.values())

    recorded = [e.payload for e in op.recorder.journal.entries() if e.payload.__class__.__name__ == "IntentEvent"]
    assert [r.result.accepted for r in recorded] == [True, True, True]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("intent", "why"),
    [
        (control_pb2.Intent(), "empty intent"),
        (control_pb2.Intent(resync=control_pb2.ResyncIntent()), "needs a target"),
        (control_pb2.Intent(resync=control_pb2.ResyncIntent(node="n9")), "n9"),
        (
            control_pb2.Intent(resync=control_pb2.ResyncIntent(resource=ref("nothing"))),
            "no GadgetInstance team-a/nothing",
        ),
        (
            control_pb2.Intent(resync=control_pb2.ResyncIntent(resource=control_pb2.ResourceRef(name="x"))),
            "no ClusterGadgetInstance x",
        ),
        (
            control_pb2.Intent(
                resync=control_pb2.ResyncIntent(resource=control_pb2.ResourceRef(kind="GadgetInstance", name="x"))
            ),
            "give its namespace",
        ),
        (control_pb2.Intent(rollout=RolloutIntent(resource=ref("trace"))), "needs an action"),
    ],
)
async def test_an_intent_that_cannot_be_carried_out_is_refused_with_the_reason(
    op: Op, intent: control_pb2.Intent, why: str
) -> None:
    await add(op, "trace", "uid-1")
    result = await intents(op).execute(intent)
    assert not result.accepted
    assert why in result.message
    (recorded,) = [e.payload for e in op.recorder.journal.entries() if e.payload.__class__.__name__ == "IntentEvent"]
    assert recorded.result == result  # type: ignore[union-attr]


# -- rollouts ---------------------------------------------------------------------------------------------

MANUAL = {"type": "Manual", "rollingUpdate": {"maxSurge": 1}}


async def rolling_out(op: Op, **strategy: Any) -> GadgetInstanceResource:
    """A resource whose new spec has started on n1, with n2 and n3 waiting."""
    gi = await add(op, "trace", "uid-1", updateStrategy=strategy)
    assert op.reconciler is not None
    plan = op.reconciler.rollouts.of(gi)
    assert plan is not None
    plan.admitted.add("n1")
    plan.waiting |= {"n2", "n3"}
    return gi


async def rollout(op: Op, action: int, name: str = "trace") -> control_pb2.IntentResult:
    return await intents(op).execute(control_pb2.Intent(rollout=RolloutIntent(action=action, resource=ref(name))))


async def test_next_grants_a_manual_rollout_one_more_batch_as_an_annotation_bound_to_its_generation(op: Op) -> None:
    assert op.reconciler is not None
    await rolling_out(op, **MANUAL)
    progress = op.reconciler.rollouts.progress(op.reconciler.resources["uid-1"])
    assert progress is not None
    assert progress.awaiting_step

    result = await rollout(op, RolloutIntent.NEXT)

    assert result.accepted, result.message
    assert op.api.annotated == [{resource.ROLLOUT_STEP_ANNOTATION: "1:1"}]
    gi = op.reconciler.resources["uid-1"]
    assert gi.controls.steps == 1  # seen at once, not when the watch event comes
    progress = op.reconciler.rollouts.progress(gi)
    assert progress is not None
    assert not progress.awaiting_step
    assert (await rollout(op, RolloutIntent.NEXT)).accepted
    assert op.api.annotated[-1] == {resource.ROLLOUT_STEP_ANNOTATION: "1:2"}


async def test_pause_and_resume_set_and_remove_the_annotation_and_are_idempotent(op: Op) -> None:
    assert op.reconciler is not None
    await rolling_out(op, type="RollingUpdate")
    assert (await rollout(op, RolloutIntent.PAUSE)).accepted
    assert op.reconciler.resources["uid-1"].controls.paused
    again = await rollout(op, RolloutIntent.PAUSE)
    assert again.accepted
    assert "already paused" in again.message
    assert (await rollout(op, RolloutIntent.RESUME)).accepted
    assert not op.reconciler.resources["uid-1"].controls.paused
    assert op.api.annotated == [
        {resource.ROLLOUT_PAUSED_ANNOTATION: "true"},
        {resource.ROLLOUT_PAUSED_ANNOTATION: None},
    ]
    recorded = [e.payload.action for e in op.recorder.journal.entries() if isinstance(e.payload, events.RolloutEvent)]
    assert recorded == [events.RolloutAction.PAUSED, events.RolloutAction.RESUMED]


async def test_a_rollout_intent_written_over_a_concurrent_change_is_decided_again_on_the_new_copy(op: Op) -> None:
    assert op.reconciler is not None
    await rolling_out(op, **MANUAL)
    op.api.conflicts = 1
    assert (await rollout(op, RolloutIntent.NEXT)).accepted
    assert op.api.annotated == [{resource.ROLLOUT_STEP_ANNOTATION: "1:1"}]


@pytest.mark.parametrize(
    ("strategy", "action", "why"),
    [
        ({}, RolloutIntent.PAUSE, "AllAtOnce"),
        ({"type": "RollingUpdate"}, RolloutIntent.NEXT, "NEXT is for Manual"),
    ],
)
async def test_rollout_intents_that_do_not_fit_the_strategy_are_refused(
    op: Op, strategy: dict[str, Any], action: int, why: str
) -> None:
    await rolling_out(op, **strategy) if strategy else await add(op, "trace", "uid-1")
    result = await rollout(op, action)
    assert not result.accepted
    assert why in result.message
    assert op.api.annotated == []


async def test_next_without_a_rollout_in_progress_is_refused(op: Op) -> None:
    await add(op, "trace", "uid-1", updateStrategy=MANUAL)
    result = await rollout(op, RolloutIntent.NEXT)
    assert not result.accepted
    assert "no rollout in progress" in result.message
