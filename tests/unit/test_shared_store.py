"""IG's shared store: one instance per resource, read from its ConfigMaps, changed over without gaps."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import pytest

from gadget_operator import identity, inventory, planner
from gadget_operator.daemon import model
from gadget_operator.resource import GadgetInstanceResource

NODES = ("n1", "n2", "n3")


def gi(name: str, uid: str, **spec: Any) -> GadgetInstanceResource:
    return GadgetInstanceResource.from_body(
        {"metadata": {"uid": uid, "name": name, "namespace": "default"}, "spec": {"image": "trace_exec", **spec}}
    )


def store_plan(
    desired: list[planner.DesiredInstance],
    stored: list[model.GadgetInstance],
    *,
    taken_over: Collection[tuple[str, str]] = (),
    held: Collection[str] = (),
    known: Collection[str] | None = None,
    failed: Collection[tuple[str, str]] = (),
    partial: Collection[str] = (),
) -> planner.StorePlan:
    """``taken_over``: (node, ID) proven running; ``failed``: (node, ID) that failed there."""
    return planner.plan_store(
        {d.owner.resource_uid: d for d in desired},
        stored,
        held=held,
        known_resources=known if known is not None else {d.owner.resource_uid for d in desired},
        ready_nodes=NODES,
        taken_over=lambda node, instance_id, failed_counts: (
            (node, instance_id) in taken_over or (failed_counts and (node, instance_id) in failed)
        ),
        partial=partial,
    )


def test_a_resource_for_every_node_gets_one_unrestricted_instance() -> None:
    wanted = planner.desired_shared_instance(gi("trace", "uid-1"), None)
    assert wanted.instance.nodes == ()  # IG runs it on every node, including nodes that join later
    assert wanted.owner.node == identity.SHARED_NODE
    assert identity.parse_ownership(wanted.instance.tags) == wanted.owner
    assert identity.ID_PATTERN.fullmatch(wanted.instance.id)
    assert identity.NAME_PATTERN.fullmatch(wanted.instance.name)


def test_another_node_set_or_spec_is_another_instance() -> None:
    resource = gi("edge", "uid-1", nodeSelector={"matchLabels": {"tier": "edge"}})
    one = planner.desired_shared_instance(resource, frozenset({"n1"}))
    two = planner.desired_shared_instance(resource, frozenset({"n1", "n2"}))
    changed = planner.desired_shared_instance(gi("edge", "uid-1", params={"a": "b"}), frozenset({"n1"}))
    assert one.instance.nodes == ("n1",)
    assert two.instance.nodes == ("n1", "n2")
    assert len({one.instance.id, two.instance.id, changed.instance.id}) == 3
    assert planner.desired_shared_instance(resource, frozenset({"n1"})) == one  # deterministic


def test_a_missing_instance_is_created_once_for_the_whole_cluster() -> None:
    wanted = planner.desired_shared_instance(gi("trace", "uid-1"), None)
    assert store_plan([wanted], []).creates == (wanted,)
    assert store_plan([wanted], [wanted.instance]).is_noop


def test_the_old_instance_stays_until_the_new_one_has_taken_over_on_every_node_both_run_on() -> None:
    resource = gi("edge", "uid-1", nodeSelector={"matchLabels": {"tier": "edge"}})
    old = planner.desired_shared_instance(resource, frozenset({"n1", "n2"}))
    new = planner.desired_shared_instance(resource, frozenset({"n2", "n3"}))

    waiting = store_plan([new], [old.instance, new.instance])
    assert waiting.removals == ()
    assert waiting.waiting == (old.instance.id,)

    # n1 runs only the old one, n3 only the new one: n2, where both run, decides.
    done = store_plan([new], [old.instance, new.instance], taken_over={("n2", new.instance.id)})
    assert [r.instance_id for r in done.removals] == [old.instance.id]


def test_a_new_spec_that_fails_keeps_the_old_instance_but_a_new_node_set_does_not() -> None:
    old = planner.desired_shared_instance(gi("a", "uid-a"), None)
    new_spec = planner.desired_shared_instance(gi("a", "uid-a", params={"x": "1"}), None)
    everywhere = {(node, new_spec.instance.id) for node in NODES}
    assert store_plan([new_spec], [old.instance, new_spec.instance], failed=everywhere).removals == ()

    resource = gi("e", "uid-e", nodeSelector={"matchLabels": {"tier": "edge"}})
    one = planner.desired_shared_instance(resource, frozenset({"n1"}))
    two = planner.desired_shared_instance(resource, frozenset({"n1", "n2"}))
    result = store_plan([two], [one.instance, two.instance], failed={("n1", two.instance.id)})
    assert [r.instance_id for r in result.removals] == [one.instance.id]  # same spec: nothing to protect


def test_a_partial_rollout_keeps_the_older_spec_but_replaces_its_own_previous_step() -> None:
    old = planner.desired_shared_instance(gi("a", "uid-a"), None)
    spec = gi("a", "uid-a", params={"x": "1"}, updateStrategy={"type": "RollingUpdate"})
    step_one = planner.desired_shared_instance(spec, frozenset({"n1"}))
    step_two = planner.desired_shared_instance(spec, frozenset({"n1", "n2"}))
    proven = {(node, step_two.instance.id) for node in NODES}
    result = store_plan(
        [step_two], [old.instance, step_one.instance, step_two.instance], taken_over=proven, partial={"uid-a"}
    )
    assert [r.instance_id for r in result.removals] == [step_one.instance.id]
    assert result.waiting == (old.instance.id,)


def test_an_instance_of_a_resource_that_wants_none_is_removed_and_an_unknown_ones_is_verified() -> None:
    stays = planner.desired_shared_instance(gi("a", "uid-a"), None)
    suspended = planner.desired_shared_instance(gi("b", "uid-b"), None)
    orphan = planner.desired_shared_instance(gi("c", "uid-c"), None)
    result = store_plan([stays], [stays.instance, suspended.instance, orphan.instance], known={"uid-a", "uid-b"})
    removals = {r.instance_id: r for r in result.removals}
    assert set(removals) == {suspended.instance.id, orphan.instance.id}
    assert not removals[suspended.instance.id].verify_owner
    assert removals[orphan.instance.id].verify_owner


def test_a_held_resource_keeps_what_runs() -> None:
    old = planner.desired_shared_instance(gi("a", "uid-a"), None)
    assert store_plan([], [old.instance], held={"uid-a"}, known={"uid-a"}).is_noop


def test_an_instance_of_the_per_node_placement_is_replaced_node_by_node() -> None:
    resource = gi("a", "uid-a")
    legacy = planner.desired_instance(resource, "n1")  # nodes: [n1], tagged with n1
    new = planner.desired_shared_instance(resource, None)
    assert store_plan([new], [legacy.instance, new.instance]).waiting == (legacy.instance.id,)
    done = store_plan([new], [legacy.instance, new.instance], taken_over={("n1", new.instance.id)})
    assert [r.instance_id for r in done.removals] == [legacy.instance.id]


def test_foreign_instances_are_never_touched() -> None:
    foreign = model.GadgetInstance(id="f" * 32, name="by-hand", image="trace_exec", nodes=("n1",))
    assert store_plan([], [foreign]).is_noop


def config_map(instance_id: str, *, nodes: str = "", tags: str = "", name: str = "x") -> dict[str, Any]:
    return {
        "metadata": {
            "name": instance_id,
            "labels": {"type": "gadget-instance", "name": name},
            "annotations": {
                "gadgetImage": "trace_exec",
                "gadgetTags": tags,
                "gadgetNodes": nodes,
                "gadgetLogLevel": "3",
                "gadgetTimeout": "0",
            },
        },
        "data": {"operator.KubeManager.namespace": "default"},
        "immutable": True,
    }


def test_a_config_map_reads_back_as_igs_store_reads_it() -> None:
    instance = inventory.from_config_map(config_map("a" * 32, nodes="n1,n2", tags="k=v,x=y", name="trace"))
    assert (instance.id, instance.name, instance.image) == ("a" * 32, "trace", "trace_exec")
    assert instance.nodes == ("n1", "n2")
    assert instance.tags == ("k=v", "x=y")
    assert instance.params == {"operator.KubeManager.namespace": "default"}
    assert instance.log_level == 3
    assert inventory.from_config_map(config_map("b" * 32)).nodes == ()  # IG stores "no nodes" as ""


@pytest.mark.parametrize(
    ("stored_nodes", "lists_on_n2"),
    [([""], True), (["", "n1,n2"], True), (["", "n1"], False), (["n1", "n2"], False)],
)
def test_list_answers_only_on_a_node_that_runs_every_stored_instance(
    stored_nodes: list[str], lists_on_n2: bool
) -> None:
    store = inventory.StoreInventory()
    store.replace([config_map(f"{index:032x}", nodes=nodes) for index, nodes in enumerate(stored_nodes)])
    assert store.lists_on("n2") is lists_on_n2


def test_the_inventory_follows_the_watch_and_says_when_the_set_changed() -> None:
    changes: list[int] = []
    store = inventory.StoreInventory(on_change=lambda: changes.append(len(store.instances)))
    store.replace([config_map("a" * 32)])
    store.apply("ADDED", config_map("b" * 32, nodes="n1"))
    store.apply("MODIFIED", config_map("b" * 32, nodes="n1"))  # nothing new: no wake-up
    store.apply("DELETED", config_map("a" * 32))
    assert changes == [1, 2, 1]
    assert [i.id for i in store.runs_on("n2")] == []
    assert [i.id for i in store.runs_on("n1")] == ["b" * 32]
