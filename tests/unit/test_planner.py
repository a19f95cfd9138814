"""The planner turns (desired, actual) for one node into creates and removals."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from gadget_operator import identity, planner
from gadget_operator.daemon import model
from gadget_operator.resource import GadgetInstanceResource


def gi(name: str, uid: str, **spec: Any) -> GadgetInstanceResource:
    return GadgetInstanceResource.from_body(
        {
            "metadata": {"uid": uid, "name": name, "namespace": "default", "finalizers": []},
            "spec": {"image": "trace_exec", **spec},
        }
    )


def listed(desired: planner.DesiredInstance, **changes: Any) -> model.GadgetInstance:
    return replace(desired.instance, status=model.InstanceStatus.RUNNING, **changes)


def plan(
    node: str, desired: list[planner.DesiredInstance], actual: list[model.GadgetInstance], **kw: Any
) -> planner.NodePlan:
    kw.setdefault("known_resources", {d.owner.resource_uid for d in desired})
    kw.setdefault("known_nodes", {node})
    return planner.plan_node(node, desired, actual, **kw)


def test_the_desired_instance_is_pinned_to_its_node_and_tagged_as_ours() -> None:
    wanted = planner.desired_instance(gi("trace", "uid-1", params={"a": "b"}, tags=["team=x"]), "node-a")
    assert wanted.instance.nodes == ("node-a",)
    assert identity.parse_ownership(wanted.instance.tags) == wanted.owner
    assert "team=x" in wanted.instance.tags
    assert wanted.instance.params == {"a": "b"}
    assert identity.ID_PATTERN.fullmatch(wanted.instance.id)


def test_missing_instances_are_created_and_present_ones_kept() -> None:
    a = planner.desired_instance(gi("a", "uid-a"), "n1")
    b = planner.desired_instance(gi("b", "uid-b"), "n1")
    result = plan("n1", [a, b], [listed(a)])
    assert result.creates == (b,)
    assert result.removals == ()
    assert [wanted for wanted, _ in result.present] == [a]


def test_foreign_instances_are_never_touched() -> None:
    foreign = model.GadgetInstance(id="f" * 32, name="by-hand", image="trace_exec", tags=("owner=me",))
    assert plan("n1", [], [foreign]).is_noop


def test_a_spec_change_removes_the_old_instance_only_once_the_new_one_is_proven() -> None:
    old = planner.desired_instance(gi("a", "uid-a", params={"v": "1"}), "n1")
    new = planner.desired_instance(gi("a", "uid-a", params={"v": "2"}), "n1")
    result = plan("n1", [new], [listed(old)])
    assert result.creates == (new,)
    assert [(r.instance_id, r.after_proven) for r in result.removals] == [(old.instance.id, new.instance.id)]


def test_a_replacement_the_daemon_lists_still_has_to_be_proven_before_the_old_instance_goes() -> None:
    old = planner.desired_instance(gi("a", "uid-a", params={"v": "1"}), "n1")
    new = planner.desired_instance(gi("a", "uid-a", params={"v": "2"}), "n1")
    result = plan("n1", [new], [listed(old), listed(new)])
    assert result.creates == ()
    assert [(r.instance_id, r.after_proven) for r in result.removals] == [(old.instance.id, new.instance.id)]


def test_instances_of_a_known_resource_no_longer_wanted_here_are_removed() -> None:
    a = planner.desired_instance(gi("a", "uid-a"), "n1")
    result = plan("n1", [], [listed(a)], known_resources={"uid-a"})
    assert [(r.instance_id, r.verify_owner) for r in result.removals] == [(a.instance.id, False)]


def test_instances_of_an_unknown_resource_are_removed_only_after_verification() -> None:
    a = planner.desired_instance(gi("a", "uid-a"), "n1")
    result = plan("n1", [], [listed(a)], known_resources=set())
    assert [(r.instance_id, r.verify_owner) for r in result.removals] == [(a.instance.id, True)]


def test_in_a_shared_store_other_nodes_instances_are_left_to_them_unless_their_node_is_gone() -> None:
    elsewhere = planner.desired_instance(gi("a", "uid-a"), "n2")
    assert plan("n1", [], [listed(elsewhere)], known_nodes={"n1", "n2"}).is_noop
    gone = plan("n1", [], [listed(elsewhere)], known_nodes={"n1"})
    # Only once the API server confirms the Node is gone: a restarted operator may not know it yet.
    assert [(r.instance_id, r.verify_node, r.verify_owner) for r in gone.removals] == [
        (elsewhere.instance.id, True, False)
    ]
