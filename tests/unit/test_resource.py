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
