"""Tenancy rules: a namespaced resource is confined to its namespace, fail closed; images allowlisted."""

from __future__ import annotations

import pytest

from gadget_operator import tenancy
from gadget_operator.tenancy import ALL_NAMESPACES, NAMESPACE, Refusal


def test_a_resource_without_a_namespace_filter_gets_its_own() -> None:
    assert tenancy.confine("payments", {"operator.KubeManager.podname": "api-0"}) == {
        "operator.KubeManager.podname": "api-0",
        NAMESPACE: "payments",
    }


@pytest.mark.parametrize("params", [{NAMESPACE: "payments"}, {NAMESPACE: " payments "}, {ALL_NAMESPACES: "false"}])
def test_its_own_namespace_or_an_explicit_false_is_fine(params: dict[str, str]) -> None:
    confined = tenancy.confine("payments", params)
    assert isinstance(confined, dict)
    assert confined[NAMESPACE] == "payments"


@pytest.mark.parametrize(
    ("params", "said"),
    [
        ({NAMESPACE: "kube-system"}, "is another namespace"),
        ({NAMESPACE: "payments,kube-system"}, "lists several namespaces"),
        ({NAMESPACE: "!kube-system"}, "excludes namespaces"),
        ({NAMESPACE: "payments,!x"}, "excludes namespaces"),
        ({ALL_NAMESPACES: "true"}, "would trace every namespace"),
        ({ALL_NAMESPACES: "TRUE", NAMESPACE: "payments"}, "would trace every namespace"),
    ],
)
def test_every_widening_is_refused_and_says_what_to_do(params: dict[str, str], said: str) -> None:
    refusal = tenancy.confine("payments", params)
    assert isinstance(refusal, Refusal)
    assert refusal.reason == "NamespaceNotAllowed"
    assert said in refusal.message
    assert "ClusterGadgetInstance" in refusal.message


def test_a_gadget_without_the_namespace_filter_cannot_be_confined() -> None:
    assert tenancy.confinable([NAMESPACE, "operator.KubeManager.podname"]) is None
    refusal = tenancy.confinable(["operator.filter.filter"])
    assert refusal is not None
    assert refusal.reason == "GadgetNotConfinable"


@pytest.mark.parametrize(
    ("image", "allowed"),
    [
        ("trace_exec", True),
        ("trace_exec:v0.40.0", True),
        ("ghcr.io/inspektor-gadget/gadget/trace_open:latest", True),
        ("ghcr.io/someone/gadget/trace_open:latest", False),
        ("docker.io/library/trace_exec", False),
    ],
)
def test_only_images_of_the_allowed_patterns_run(image: str, allowed: bool) -> None:
    refusal = tenancy.check_image(image, tenancy.DEFAULT_ALLOWED_IMAGES)
    assert (refusal is None) is allowed
    if refusal is not None:
        assert refusal.reason == "ImageNotAllowed"
        assert tenancy.full_image(image) in refusal.message


def test_an_admin_may_allow_another_registry() -> None:
    assert tenancy.check_image("registry.example.com/gadgets/trace:1", ["registry.example.com/gadgets/*"]) is None
