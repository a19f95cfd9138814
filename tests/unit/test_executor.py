"""The executor carries out one node's plan: creates first, removals after, every call bounded and accounted for."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from gadget_operator import errors, executor, identity, planner
from gadget_operator.daemon import model
from gadget_operator.resource import GadgetInstanceResource
from gadget_operator.status import NodeState


def gi(name: str, uid: str, **spec: Any) -> GadgetInstanceResource:
    return GadgetInstanceResource.from_body(
        {
            "metadata": {"uid": uid, "name": name, "namespace": "default", "finalizers": []},
            "spec": {"image": "trace_exec", **spec},
        }
    )


def running(desired: planner.DesiredInstance) -> model.GadgetInstance:
    return replace(desired.instance, status=model.InstanceStatus.RUNNING)


@dataclass
class InFlight:
    """Daemon calls in progress, possibly shared by several fake daemons."""

    now: int = 0
    most: int = 0


@dataclass
class FakeDaemon:
    """An in-memory gadget daemon implementing ``InstanceApi``; errors can be queued per call and instance ID."""

    instances: dict[str, model.GadgetInstance] = field(default_factory=dict)
    create_errors: dict[str, errors.DaemonError] = field(default_factory=dict)
    get_errors: dict[str, errors.DaemonError] = field(default_factory=dict)
    remove_errors: dict[str, errors.DaemonError] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    tenants: list[tuple[str, str | None]] = field(default_factory=list)
    in_flight: InFlight = field(default_factory=InFlight)
    """Calls in flight, shared with other fake daemons when given."""
    own: InFlight = field(default_factory=InFlight)
    """Calls in flight to this daemon alone."""
    tenant: str | None = None
    """The namespace the calls are made for (``on_behalf_of``); recorded with each call."""

    def on_behalf_of(self, namespace: str | None) -> FakeDaemon:
        return replace(self, tenant=namespace)

    async def _enter(self, call: str, instance_id: str) -> None:
        self.calls.append((call, instance_id))
        self.tenants.append((call, self.tenant))
        trackers = (self.in_flight, self.own)
        for tracker in trackers:
            tracker.now += 1
            tracker.most = max(tracker.most, tracker.now)
        try:
            for _ in range(5):  # let every other runnable call start before this one ends
                await asyncio.sleep(0)
        finally:
            for tracker in trackers:
                tracker.now -= 1

    async def create_instance(
        self, instance: model.GadgetInstance, *, event_buffer_length: int = 0
    ) -> model.GadgetInstance:
        await self._enter("create", instance.id)
        if instance.id in self.create_errors:
            raise self.create_errors[instance.id]
        if instance.id in self.instances:
            raise errors.InstanceAlreadyExists(f"instance with id {instance.id} already exists", address="fake")
        created = replace(instance, status=model.InstanceStatus.RUNNING)
        self.instances[instance.id] = created
        return created

    async def list_instances(self) -> list[model.GadgetInstance]:
        await self._enter("list", "")
        return list(self.instances.values())

    async def get_instance(self, instance_id: str) -> model.GadgetInstance:
        await self._enter("get", instance_id)
        if instance_id in self.get_errors:
            raise self.get_errors[instance_id]
        try:
            return self.instances[instance_id]
        except KeyError:
            raise errors.InstanceNotFound(f"{instance_id} not found", address="fake") from None

    async def remove_instance(self, instance_id: str) -> None:
        await self._enter("remove", instance_id)
        if instance_id in self.remove_errors:
            raise self.remove_errors[instance_id]
        if self.instances.pop(instance_id, None) is None:
            raise errors.InstanceNotFound(f"{instance_id} not found", address="fake")

    def called(self, call: str) -> list[str]:
        return [instance_id for name, instance_id in self.calls if name == call]


async def never_gone(owner: identity.Ownership) -> bool:
    raise AssertionError(f"owner_gone must not be asked about {owner}")


async def execute(
    plan: planner.NodePlan,
    daemon: FakeDaemon,
    actual: dict[str, model.GadgetInstance] | None = None,
    *,
    limits: executor.Limits | None = None,
    owner_gone: executor.OwnerGone = never_gone,
    proven: set[str] | None = None,
) -> executor.PassResult:
    return await executor.execute(
        plan,
        daemon,
        actual if actual is not None else dict(daemon.instances),
        limits=limits or executor.Limits(64, 8),
        owner_gone=owner_gone,
        proven=proven or set(),
    )


def plan_for(
    desired: list[planner.DesiredInstance], actual: list[model.GadgetInstance], *, known: set[str] | None = None
) -> planner.NodePlan:
    return planner.plan_node(
        "n1",
        desired,
        actual,
        known_resources=known if known is not None else {d.owner.resource_uid for d in desired},
        known_nodes={"n1"},
    )


# -- creates -------------------------------------------------------------------------------------------


async def test_missing_instances_are_created_and_reported_running() -> None:
    a = planner.desired_instance(gi("a", "uid-a"), "n1")
    b = planner.desired_instance(gi("b", "uid-b"), "n1")
    daemon = FakeDaemon()
    actual: dict[str, model.GadgetInstance] = {}
    result = await execute(plan_for([a, b], []), daemon, actual)
    assert result.created == 2
    assert result.unreachable is None
    assert result.outcomes == {
        "uid-a": executor.InstanceOutcome(NodeState.RUNNING, a.instance.id),
        "uid-b": executor.InstanceOutcome(NodeState.RUNNING, b.instance.id),
    }
    assert set(actual) == set(daemon.instances) == {a.instance.id, b.instance.id}


async def test_instances_already_running_are_reported_from_what_the_daemon_says() -> None:
    ok = planner.desired_instance(gi("ok", "uid-ok"), "n1")
    broken = planner.desired_instance(gi("broken", "uid-broken"), "n1")
    silent = planner.desired_instance(gi("silent", "uid-silent"), "n1")
    listed = [
        running(ok),
        replace(broken.instance, status=model.InstanceStatus.ERROR, message="image not found"),
        replace(silent.instance, status=model.InstanceStatus.ERROR),
    ]
    daemon = FakeDaemon({i.id: i for i in listed})
    result = await execute(plan_for([ok, broken, silent], listed), daemon)
    assert daemon.calls == []
    assert result.outcomes == {
        "uid-ok": executor.InstanceOutcome(NodeState.RUNNING, ok.instance.id),
        "uid-broken": executor.InstanceOutcome(NodeState.FAILED, broken.instance.id, "image not found"),
        "uid-silent": executor.InstanceOutcome(NodeState.FAILED, silent.instance.id, "the daemon reports an error"),
    }


async def test_a_rejected_create_fails_that_resource_only() -> None:
    a = planner.desired_instance(gi("a", "uid-a"), "n1")
    b = planner.desired_instance(gi("b", "uid-b"), "n1")
    daemon = FakeDaemon(create_errors={a.instance.id: errors.DaemonRejected("bad image", address="fake")})
    result = await execute(plan_for([a, b], []), daemon)
    assert result.outcomes["uid-a"] == executor.InstanceOutcome(NodeState.FAILED, a.instance.id, "bad image")
    assert result.outcomes["uid-b"].state is NodeState.RUNNING
    assert result.created == 1
    assert result.unreachable is None


# -- spec changes: new before old ------------------------------------------------------------------------


async def test_a_spec_change_creates_the_new_instance_and_keeps_the_old_one_until_the_new_is_proven() -> None:
    old = planner.desired_instance(gi("a", "uid-a", params={"v": "1"}), "n1")
    new = planner.desired_instance(gi("a", "uid-a", params={"v": "2"}), "n1")
    daemon = FakeDaemon({old.instance.id: running(old)})
    actual = dict(daemon.instances)
    first = await execute(plan_for([new], [running(old)]), daemon, actual)
    assert daemon.calls == [("create", new.instance.id)]
    assert (first.created, first.removed) == (1, 0)
    assert set(actual) == set(daemon.instances) == {old.instance.id, new.instance.id}

    # The next pass, once the new instance is proven running on the node: the old one goes.
    second = await execute(plan_for([new], list(actual.values())), daemon, actual, proven={new.instance.id})
    assert daemon.called("remove") == [old.instance.id]
    assert second.removed == 1
    assert set(actual) == set(daemon.instances) == {new.instance.id}
    assert second.outcomes["uid-a"] == executor.InstanceOutcome(NodeState.RUNNING, new.instance.id)


async def test_when_the_replacement_cannot_be_created_the_old_instance_keeps_running() -> None:
    old = planner.desired_instance(gi("a", "uid-a", params={"v": "1"}), "n1")
    new = planner.desired_instance(gi("a", "uid-a", params={"v": "2"}), "n1")
    daemon = FakeDaemon(
        {old.instance.id: running(old)},
        create_errors={new.instance.id: errors.DaemonRejected("unknown param v", address="fake")},
    )
    actual = dict(daemon.instances)
    result = await execute(plan_for([new], [running(old)]), daemon, actual)
    assert daemon.called("remove") == []
    assert set(actual) == set(daemon.instances) == {old.instance.id}
    assert result.removed == 0
    assert result.outcomes["uid-a"] == executor.InstanceOutcome(NodeState.FAILED, new.instance.id, "unknown param v")


# -- "already exists": adopt our own, refuse a collision -----------------------------------------------


async def test_an_existing_instance_with_our_ownership_tags_is_adopted() -> None:
    a = planner.desired_instance(gi("a", "uid-a"), "n1")
    daemon = FakeDaemon({a.instance.id: running(a)})  # created by an earlier pass we did not see
    actual: dict[str, model.GadgetInstance] = {}
    result = await execute(plan_for([a], []), daemon, actual)
    assert daemon.calls == [("create", a.instance.id), ("get", a.instance.id)]
    assert result.outcomes["uid-a"] == executor.InstanceOutcome(NodeState.RUNNING, a.instance.id)
    assert actual == {a.instance.id: running(a)}


async def test_an_existing_instance_with_someone_elses_tags_is_a_collision() -> None:
    a = planner.desired_instance(gi("a", "uid-a"), "n1")
    squatter = replace(running(a), tags=("owner=someone-else",))
    daemon = FakeDaemon({a.instance.id: squatter})
    actual: dict[str, model.GadgetInstance] = {}
    result = await execute(plan_for([a], []), daemon, actual)
    outcome = result.outcomes["uid-a"]
    assert outcome.state is NodeState.FAILED
    assert outcome.instance_id == a.instance.id
    assert "already exists" in outcome.message
    assert actual == {}
    assert daemon.instances == {a.instance.id: squatter}


async def test_an_existing_instance_owned_by_another_spec_of_the_same_resource_is_a_collision() -> None:
    a = planner.desired_instance(gi("a", "uid-a"), "n1")
    other_owner = replace(a.owner, spec_hash="0" * 16)
    impostor = replace(running(a), tags=identity.ownership_tags(other_owner))
    daemon = FakeDaemon({a.instance.id: impostor})
    result = await execute(plan_for([a], []), daemon, {})
    assert result.outcomes["uid-a"].state is NodeState.FAILED


async def test_a_daemon_that_stops_answering_while_adopting_is_unreachable_not_a_collision() -> None:
    a = planner.desired_instance(gi("a", "uid-a"), "n1")
    daemon = FakeDaemon(
        {a.instance.id: running(a)},
        get_errors={a.instance.id: errors.DaemonUnavailable("unreachable: connection refused", address="fake")},
    )
    result = await execute(plan_for([a], []), daemon, {})
    assert result.outcomes["uid-a"].state is NodeState.UNREACHABLE
    assert result.unreachable is not None


# -- unreachable daemons ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        errors.DaemonUnavailable("unreachable: connection refused", address="tcp://n1:8080"),
        errors.DaemonDeadlineExceeded("no answer within 5s", address="tcp://n1:8080"),
    ],
)
async def test_an_unreachable_create_ends_the_pass_without_any_removal(error: errors.DaemonError) -> None:
    a = planner.desired_instance(gi("a", "uid-a"), "n1")
    unwanted = planner.desired_instance(gi("b", "uid-b"), "n1")
    daemon = FakeDaemon({unwanted.instance.id: running(unwanted)}, create_errors={a.instance.id: error})
    plan = plan_for([a], [running(unwanted)], known={"uid-a", "uid-b"})
    assert [r.instance_id for r in plan.removals] == [unwanted.instance.id]
    result = await execute(plan, daemon)
    assert result.unreachable == str(error)
    assert result.outcomes["uid-a"] == executor.InstanceOutcome(NodeState.UNREACHABLE, a.instance.id, str(error))
    assert daemon.called("remove") == []
    assert unwanted.instance.id in daemon.instances


async def test_an_unreachable_removal_marks_the_pass_unreachable() -> None:
    unwanted = planner.desired_instance(gi("b", "uid-b"), "n1")
    daemon = FakeDaemon(
        {unwanted.instance.id: running(unwanted)},
        remove_errors={unwanted.instance.id: errors.DaemonDeadlineExceeded("no answer within 5s", address="f")},
    )
    actual = dict(daemon.instances)
    result = await execute(plan_for([], [running(unwanted)], known={"uid-b"}), daemon, actual)
    assert result.unreachable == "no answer within 5s (f)"
    assert result.removed == 0
    assert unwanted.instance.id in actual


# -- removals ------------------------------------------------------------------------------------------


async def test_instances_no_longer_wanted_are_removed() -> None:
    unwanted = planner.desired_instance(gi("b", "uid-b"), "n1")
    daemon = FakeDaemon({unwanted.instance.id: running(unwanted)})
    actual = dict(daemon.instances)
    result = await execute(plan_for([], [running(unwanted)], known={"uid-b"}), daemon, actual)
    assert result.removed == 1
    assert actual == daemon.instances == {}


async def test_removing_an_instance_the_daemon_no_longer_knows_counts_as_done() -> None:
    unwanted = planner.desired_instance(gi("b", "uid-b"), "n1")
    daemon = FakeDaemon()  # someone removed it since the last list
    actual = {unwanted.instance.id: running(unwanted)}
    result = await execute(plan_for([], [running(unwanted)], known={"uid-b"}), daemon, actual)
    assert daemon.called("remove") == [unwanted.instance.id]
    assert result.removed == 1
    assert actual == {}
    assert result.unreachable is None


async def test_a_rejected_removal_keeps_the_instance_and_the_pass_goes_on() -> None:
    stuck = planner.desired_instance(gi("b", "uid-b"), "n1")
    gone = planner.desired_instance(gi("c", "uid-c"), "n1")
    daemon = FakeDaemon(
        {stuck.instance.id: running(stuck), gone.instance.id: running(gone)},
        remove_errors={stuck.instance.id: errors.DaemonRejected("busy", address="fake")},
    )
    actual = dict(daemon.instances)
    result = await execute(plan_for([], list(actual.values()), known={"uid-b", "uid-c"}), daemon, actual)
    assert result.removed == 1
    assert result.unreachable is None
    assert set(actual) == {stuck.instance.id}


@pytest.mark.parametrize(("gone", "removed"), [(True, 1), (False, 0)])
async def test_an_orphan_is_removed_only_when_the_api_server_confirms_its_resource_is_gone(
    gone: bool, removed: int
) -> None:
    orphan = planner.desired_instance(gi("old", "uid-old"), "n1")
    daemon = FakeDaemon({orphan.instance.id: running(orphan)})
    asked: list[identity.Ownership] = []

    async def owner_gone(owner: identity.Ownership) -> bool:
        asked.append(owner)
        return gone

    plan = plan_for([], [running(orphan)], known=set())
    result = await execute(plan, daemon, owner_gone=owner_gone)
    assert asked == [orphan.owner]
    assert result.removed == removed
    assert (orphan.instance.id in daemon.instances) is not gone
    assert daemon.called("remove") == ([orphan.instance.id] if gone else [])


# -- bounded concurrency -------------------------------------------------------------------------------


def many(count: int, node: str = "n1") -> list[planner.DesiredInstance]:
    return [planner.desired_instance(gi(f"r{i}", f"uid-{node}-{i}"), node) for i in range(count)]


@pytest.mark.parametrize(("total", "per_node", "most"), [(3, 8, 3), (64, 2, 2), (1, 1, 1), (64, 64, 10)])
async def test_calls_in_flight_to_one_node_never_exceed_the_limits(total: int, per_node: int, most: int) -> None:
    daemon = FakeDaemon()
    result = await execute(plan_for(many(10), []), daemon, limits=executor.Limits(total, per_node))
    assert result.created == 10
    assert daemon.in_flight.most == most


async def test_the_total_limit_is_shared_by_every_node() -> None:
    shared = InFlight()
    limits = executor.Limits(total=3, per_node=2)
    daemons = {node: FakeDaemon(in_flight=shared) for node in ("n1", "n2", "n3")}
    plans = {
        node: planner.plan_node(node, many(6, node), [], known_resources=set(), known_nodes=set(daemons))
        for node in daemons
    }
    results = await asyncio.gather(
        *(executor.execute(plans[node], daemons[node], {}, limits=limits, owner_gone=never_gone) for node in daemons)
    )
    assert [result.created for result in results] == [6, 6, 6]
    assert shared.most == 3
    assert all(daemon.own.most <= 2 for daemon in daemons.values())


# -- whose calls (IG's multi-tenancy) ------------------------------------------------------------------


async def test_each_instance_is_created_on_behalf_of_its_resources_namespace_and_removed_by_the_operator() -> None:
    """The daemon authorizes the tenant of each create (``tokens``): a GadgetInstance's speak for its
    namespace, a ClusterGadgetInstance's for the operator itself; removals are the operator's (they only
    stop tracing, and must work once the tenant's account is gone)."""
    namespaced = planner.desired_instance(gi("a", "uid-a"), "n1")
    cluster = planner.desired_instance(
        GadgetInstanceResource.from_body(
            {
                "kind": "ClusterGadgetInstance",
                "metadata": {"uid": "uid-c", "name": "c", "finalizers": []},
                "spec": {"image": "trace_exec"},
            }
        ),
        "n1",
    )
    unwanted = planner.desired_instance(gi("old", "uid-old"), "n1")
    daemon = FakeDaemon({unwanted.instance.id: running(unwanted)})
    await execute(plan_for([namespaced, cluster], [running(unwanted)], known={"uid-a", "uid-c", "uid-old"}), daemon)
    assert sorted(daemon.tenants, key=str) == sorted(
        [("create", "default"), ("create", None), ("remove", None)], key=str
    )
