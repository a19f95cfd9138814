"""Spec parsing turns every bad field into an error that names it."""

from __future__ import annotations

from typing import Any

import pytest

from gadget_operator import resource
from gadget_operator.errors import SpecError


def test_a_minimal_spec_gets_the_documented_defaults() -> None:
    spec = resource.parse_spec({"image": "trace_exec"})
    assert spec == resource.GadgetInstanceSpec(image="trace_exec")
    assert spec.nodes is None
    assert spec.targets("any-node", {})


@pytest.mark.parametrize(
    ("spec", "field", "reason"),
    [
        ({}, "spec.image", "required"),
        ({"image": ""}, "spec.image", "required"),
        ({"image": "a b"}, "spec.image", "white space"),
        ({"image": "x", "params": {"a": 1}}, "spec.params.a", "must be a string"),
        ({"image": "x", "params": ["a"]}, "spec.params", "map"),
        ({"image": "x", "params": {str(i): "v" for i in range(65)}}, "spec.params", "at most 64"),
        ({"image": "x", "nodes": ["Bad_Node"]}, "spec.nodes[0]", "not a valid node name"),
        ({"image": "x", "tags": ["gadget-operator.io/x"]}, "spec.tags[0]", "reserved"),
        ({"image": "x", "tags": ["a,b"]}, "spec.tags[0]", "comma"),
        ({"image": "x", "logLevel": 9}, "spec.logLevel", "between 0 and 6"),
        ({"image": "x", "logLevel": True}, "spec.logLevel", "integer"),
        ({"image": "x", "suspend": "yes"}, "spec.suspend", "true or false"),
        ({"image": "x", "nodeSelector": {"matchLabel": {}}}, "spec.nodeSelector", "unknown field"),
        (
            {"image": "x", "nodeSelector": {"matchExpressions": [{"key": "k", "operator": "In"}]}},
            "spec.nodeSelector.matchExpressions[0].values",
            "must not be empty",
        ),
        (
            {"image": "x", "nodeSelector": {"matchExpressions": [{"key": "k", "operator": "Is"}]}},
            "spec.nodeSelector.matchExpressions[0].operator",
            "must be one of",
        ),
    ],
)
def test_bad_fields_are_reported_by_path(spec: dict[str, Any], field: str, reason: str) -> None:
    with pytest.raises(SpecError) as caught:
        resource.parse_spec(spec)
    assert caught.value.field == field
    assert reason in caught.value.reason


def test_selector_and_node_list_must_both_agree() -> None:
    spec = resource.parse_spec(
        {
            "image": "x",
            "nodes": ["a", "b"],
            "nodeSelector": {
                "matchLabels": {"role": "worker"},
                "matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["z1"]}],
            },
        }
    )
    assert spec.targets("a", {"role": "worker", "zone": "z2"})
    assert not spec.targets("a", {"role": "worker", "zone": "z1"})
    assert not spec.targets("c", {"role": "worker"})
    assert not spec.targets("b", {})


def test_the_spec_hash_changes_with_what_the_daemon_runs_and_only_that() -> None:
    base = resource.parse_spec({"image": "x", "params": {"a": "1"}})
    assert base.hash() != resource.parse_spec({"image": "x", "params": {"a": "2"}}).hash()
    assert base.hash() == resource.parse_spec({"image": "x", "params": {"a": "1"}, "suspend": True}).hash()
    assert base.hash() == resource.parse_spec({"image": "x", "params": {"a": "1"}, "nodes": ["n"]}).hash()


def test_a_resource_body_with_a_bad_spec_still_parses_and_carries_the_error() -> None:
    body = {"metadata": {"uid": "u", "name": "n", "namespace": "ns", "generation": 2}, "spec": {"image": ""}}
    gi = resource.GadgetInstanceResource.from_body(body)
    assert gi.spec is None
    assert gi.spec_error is not None
    assert "spec.image" in gi.spec_error
    assert not gi.active


# -- the two kinds ---------------------------------------------------------------------------------


def body_of(kind: str, **metadata: Any) -> dict[str, Any]:
    return {
        "apiVersion": "gadget-operator.io/v1alpha1",
        "kind": kind,
        "metadata": {"uid": "u", "name": "trace"} | metadata,
        "spec": {"image": "trace_exec"},
    }


def test_a_gadget_instance_is_keyed_by_namespace_and_name() -> None:
    gi = resource.GadgetInstanceResource.from_body(body_of("GadgetInstance", namespace="team-a"))
    assert gi.kind is resource.GADGET_INSTANCE
    assert (gi.namespace, gi.key) == ("team-a", "team-a/trace")


def test_a_cluster_gadget_instance_is_keyed_by_its_name_and_has_no_namespace() -> None:
    # A namespace in the body (never sent by a real server for a cluster-scoped object) is ignored.
    gi = resource.GadgetInstanceResource.from_body(body_of("ClusterGadgetInstance", namespace="stray"))
    assert gi.kind is resource.CLUSTER_GADGET_INSTANCE
    assert (gi.namespace, gi.key) == ("", "trace")
    assert gi.active


def test_a_body_without_a_kind_is_a_gadget_instance() -> None:
    body = body_of("GadgetInstance", namespace="ns")
    del body["kind"]
    assert resource.GadgetInstanceResource.from_body(body).kind is resource.GADGET_INSTANCE


@pytest.mark.parametrize("kind", resource.KINDS, ids=lambda k: k.kind)
def test_a_key_locates_its_kind_namespace_and_name(kind: resource.Kind) -> None:
    namespace = "team-a" if kind.namespaced else ""
    assert resource.locate(kind.key(namespace, "my.gadget-1")) == (kind, namespace, "my.gadget-1")


def test_the_kinds_differ_in_scope_and_names_only() -> None:
    gi, cgi = resource.GADGET_INSTANCE, resource.CLUSTER_GADGET_INSTANCE
    assert (gi.kind, gi.plural, gi.short_name, gi.namespaced) == ("GadgetInstance", "gadgetinstances", "gi", True)
    assert (cgi.kind, cgi.plural, cgi.short_name, cgi.namespaced) == (
        "ClusterGadgetInstance",
        "clustergadgetinstances",
        "cgi",
        False,
    )
    assert gi.api_version == cgi.api_version == "gadget-operator.io/v1alpha1"


def _controls(annotations: dict[str, str], generation: int = 3) -> resource.Controls:
    return resource.GadgetInstanceResource.from_body(
        {
            "metadata": {
                "uid": "u",
                "name": "n",
                "namespace": "ns",
                "generation": generation,
                "annotations": annotations,
            },
            "spec": {"image": "trace_exec"},
        }
    ).controls


def test_annotations_carry_the_rollout_pause_steps_and_resync_requests() -> None:
    assert _controls({}) == resource.Controls()
    assert _controls({resource.ROLLOUT_PAUSED_ANNOTATION: "true"}).paused
    assert _controls({resource.ROLLOUT_PAUSED_ANNOTATION: "True"}).paused
    assert not _controls({resource.ROLLOUT_PAUSED_ANNOTATION: "yes"}).paused
    assert _controls({resource.ROLLOUT_STEP_ANNOTATION: "3:2"}).steps == 2
    assert _controls({resource.ROLLOUT_STEP_ANNOTATION: "2:5"}).steps == 0  # another generation's steps
    assert _controls({resource.ROLLOUT_STEP_ANNOTATION: "4"}).steps == 4  # hand-written: whatever rollout runs
    assert _controls({resource.ROLLOUT_STEP_ANNOTATION: "-1"}).steps == 0
    assert _controls({resource.ROLLOUT_STEP_ANNOTATION: "x"}).steps == 0
    assert _controls({resource.RESYNC_ANNOTATION: "now"}).resync == "now"
    assert resource.step_annotation(3, 2) == "3:2"
