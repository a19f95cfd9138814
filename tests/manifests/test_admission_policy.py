"""The admission policy (manifests/base/admission-policy.yaml and the chart's, rendered by the real
kubectl kustomize and helm template) is a mirror of the operator's tenancy rules: for every
GadgetInstance, its CEL (evaluated with celpy, tests/manifests/admission_policy.py) denies exactly what
``tenancy.confine`` and ``tenancy.check_image`` refuse, with the same message.

A message with a line break (a parameter value can hold one) is the one exception: the API server never
shows a messageExpression value with a line break, it shows the validation's fixed ``message`` instead;
the expression's value is still the operator's message.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gadget_operator import tenancy
from gadget_operator.tenancy import ALL_NAMESPACES, NAMESPACE, Refusal
from tests.manifests import admission_policy
from tests.packaging.conftest import BASE, CHART, RELEASE, load_documents, run

POLICY = "ValidatingAdmissionPolicy"
BINDING = "ValidatingAdmissionPolicyBinding"
DEFAULT_ALLOWED = list(tenancy.DEFAULT_ALLOWED_IMAGES)
# allowedImages of the chart renders checked here, besides the default one.
ALLOWED_LISTS: dict[str, list[str]] = {
    "default": DEFAULT_ALLOWED,
    "prefixes-and-exact": [
        "ghcr.io/inspektor-gadget/gadget/*",
        "registry.example.com/gadgets/*",
        "docker.io/me/gadget:v1",
        "trace'quote\\back\"slash:1",
    ],
    "nothing": [],
    "everything": ["*"],
}

# Python's str.isspace() white space, which the operator strips; some of it is not Go's.
WHITE_SPACE = "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u200a\u2028\u2029\u202f\u205f\u3000"


# -- the shipped policies ------------------------------------------------------------------------------


def _policy_and_binding(objects: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    (policy,) = [o for o in objects if o["kind"] == POLICY]
    (binding,) = [o for o in objects if o["kind"] == BINDING]
    return dict(policy), dict(binding)


@pytest.fixture(scope="module")
def base_objects(binaries: dict[str, Path]) -> list[dict[str, Any]]:
    return load_documents(run([binaries["kubectl"], "kustomize", BASE]).stdout)


@pytest.fixture(scope="module")
def render(binaries: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Callable[..., list[dict[str, Any]]]:
    cache: dict[tuple[str, ...], list[dict[str, Any]]] = {}

    def template(*flags: str) -> list[dict[str, Any]]:
        if flags not in cache:
            command = [binaries["helm"], "template", RELEASE, CHART, "--namespace", "gadget-operator-system", *flags]
            cache[flags] = load_documents(run(command).stdout)
        return cache[flags]

    return template


def _allowed_flags(allowed: list[str]) -> tuple[str, ...]:
    return ("--set-json", f"allowedImages={json.dumps(allowed)}")


@pytest.fixture(scope="module")
def policies(
    base_objects: list[dict[str, Any]], render: Callable[..., list[dict[str, Any]]]
) -> dict[str, tuple[dict[str, Any], list[str]]]:
    """Every policy checked here, by name: (the policy, the allowed images it was made for)."""
    found = {"kustomize": (_policy_and_binding(base_objects)[0], DEFAULT_ALLOWED)}
    for name, allowed in ALLOWED_LISTS.items():
        flags = () if name == "default" else _allowed_flags(allowed)
        found[f"helm-{name}"] = (_policy_and_binding(render(*flags))[0], allowed)
    return found


WHERE = ["kustomize", *(f"helm-{name}" for name in ALLOWED_LISTS)]


# -- the operator's verdict and the policy's -----------------------------------------------------------


def gadget_instance(namespace: str, image: str, params: Mapping[str, str] | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"image": image}
    if params is not None:
        spec["params"] = dict(params)
    return {
        "apiVersion": "gadget-operator.io/v1alpha1",
        "kind": "GadgetInstance",
        "metadata": {"name": "test", "namespace": namespace},
        "spec": spec,
    }


def operator_refusals(namespace: str, image: str, params: Mapping[str, str], allowed: list[str]) -> list[Refusal]:
    """What the operator refuses, each rule once: the namespace confinement, then the image."""
    confined = tenancy.confine(namespace, params)
    refusals = [confined] if isinstance(confined, Refusal) else []
    refused_image = tenancy.check_image(image, allowed)
    return refusals + ([refused_image] if refused_image else [])


def assert_mirrors(
    policy: Mapping[str, Any], allowed: list[str], namespace: str, image: str, params: Mapping[str, str] | None
) -> None:
    obj = gadget_instance(namespace, image, params)
    denial = admission_policy.review(policy, admission_policy.request(obj))
    refusals = operator_refusals(namespace, image, params or {}, allowed)
    what = f"namespace={namespace!r} image={image!r} params={params!r} allowed={allowed!r}"
    if not refusals:
        assert denial is None, f"{what}: the operator admits it, the policy denies: {denial}"
        return
    assert denial is not None, f"{what}: the operator refuses it ({refusals[0].message}), the policy admits it"
    # The policy reports its first failing validation: the namespace rules come before the image's.
    expected = refusals[0].message
    assert denial.expression_message == expected, what
    if "\n" in expected:
        assert denial.message == _fixed_message(policy, expected), what
    else:
        assert denial.message == expected, what


def _fixed_message(policy: Mapping[str, Any], operator_message: str) -> str:
    """The fixed ``message`` of the validation that reports this (which the server shows instead)."""
    key = (
        "all-namespaces"
        if operator_message.startswith(f"a GadgetInstance traces only its own namespace: {ALL_NAMESPACES}=")
        else "namespace"
    )
    for validation in policy["spec"]["validations"]:
        if f"operator.KubeManager.{key}" in validation["message"]:
            return str(validation["message"])
    raise AssertionError(f"no validation reports {operator_message!r}")


# -- explicit cases ------------------------------------------------------------------------------------

NAMESPACE_CASES: list[tuple[str, dict[str, str] | None]] = [
    # admitted: nothing, the own namespace, all-namespaces off
    ("team-a", None),
    ("team-a", {}),
    ("team-a", {NAMESPACE: "team-a"}),
    ("team-a", {NAMESPACE: "  team-a\t"}),
    ("team-a", {NAMESPACE: "\x1cteam-a\x1f"}),  # Python's white space, not Go's
    ("team-a", {NAMESPACE: "\u3000team-a\x85"}),
    ("team-a", {NAMESPACE: ""}),
    ("team-a", {NAMESPACE: "   "}),
    ("team-a", {ALL_NAMESPACES: "false"}),
    ("team-a", {ALL_NAMESPACES: " FaLsE \n"}),
    ("team-a", {ALL_NAMESPACES: ""}),
    ("team-a", {ALL_NAMESPACES: "\x1d"}),
    ("team-a", {"operator.KubeManager.podname": "web-0", "operator.KubeManager.selector": "app=web"}),
    ("team-a", {"operator.KubeManager.containername": "nginx", "operator.filter.filter": "comm==sh"}),
    # refused: all namespaces
    ("team-a", {ALL_NAMESPACES: "true"}),
    ("team-a", {ALL_NAMESPACES: "True"}),
    ("team-a", {ALL_NAMESPACES: "1"}),
    ("team-a", {ALL_NAMESPACES: "no"}),
    ("team-a", {ALL_NAMESPACES: "false,"}),
    ("team-a", {ALL_NAMESPACES: "f alse"}),
    ("team-a", {ALL_NAMESPACES: " TRUE ", NAMESPACE: "other"}),  # one refusal, all-namespaces first
    ("team-a", {ALL_NAMESPACES: "true", NAMESPACE: "team-a"}),
    # refused: another namespace, a list, an exclusion
    ("team-a", {NAMESPACE: "payments"}),
    ("team-a", {NAMESPACE: " payments "}),
    ("team-a", {NAMESPACE: "Team-A"}),
    ("team-a", {NAMESPACE: "team-a,"}),
    ("team-a", {NAMESPACE: "team-a,team-a"}),
    ("team-a", {NAMESPACE: "team-a, payments"}),
    ("team-a", {NAMESPACE: ",,"}),
    ("team-a", {NAMESPACE: "!payments"}),
    ("team-a", {NAMESPACE: "  !payments"}),
    ("team-a", {NAMESPACE: "team-a, !kube-system"}),
    ("team-a", {NAMESPACE: "team-a,\u2003!x"}),
    ("team-a", {NAMESPACE: "team-a,\x1c!x"}),
    ("team-a", {NAMESPACE: "a!b"}),
    ("team-a", {NAMESPACE: "a , b ! c"}),
    ("team-a", {NAMESPACE: "pay\nments"}),  # a line break: the server shows the fixed message
    ("team-a", {NAMESPACE: "a,\n!b"}),
    ("team-a", {ALL_NAMESPACES: "yes\nplease"}),
    ("team-a", {NAMESPACE: "x" * 4096}),
    ("kube-system", {NAMESPACE: "default"}),
]


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize(("namespace", "params"), NAMESPACE_CASES, ids=lambda v: repr(v)[:40])
def test_namespace_rules_are_the_operators(
    policies: dict[str, tuple[dict[str, Any], list[str]]], where: str, namespace: str, params: dict[str, str] | None
) -> None:
    policy, allowed = policies[where]
    assert_mirrors(policy, allowed, namespace, "ghcr.io/inspektor-gadget/gadget/trace_exec:v0.40.0", params)


IMAGES = [
    "trace_exec",
    "trace_exec:v0.40.0",
    "trace_exec@sha256:0123",
    "ghcr.io/inspektor-gadget/gadget/trace_open",
    "ghcr.io/inspektor-gadget/gadget/trace_open:latest",
    "ghcr.io/inspektor-gadget/gadget/",
    "ghcr.io/inspektor-gadget/gadget",
    "ghcr.io/inspektor-gadget/gadgetx/trace_exec",
    "GHCR.io/inspektor-gadget/gadget/trace_exec",
    "docker.io/me/gadget:v1",
    "docker.io/me/gadget:v2",
    "docker.io/me/gadget",
    "registry.example.com/gadgets/mine:1",
    "registry.example.com/gadgetsx",
    "evil.io",
    "evil.io:5000",
    "localhost:5000",
    "my.gadget:1.0",
    "name:tag.with.dots",
    "a:b:c",
    "trace'quote\\back\"slash:1",
    "ghcr.io/inspektor-gadget/gadget/*",
    "*",
    "latest",
    ":",
    "é",
]


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("image", IMAGES)
def test_image_rules_are_the_operators(
    policies: dict[str, tuple[dict[str, Any], list[str]]], where: str, image: str
) -> None:
    policy, allowed = policies[where]
    assert_mirrors(policy, allowed, "team-a", image, {NAMESPACE: "team-a"})


def test_the_message_names_the_refusal_like_the_operator(policies: dict[str, tuple[dict[str, Any], list[str]]]) -> None:
    policy, _ = policies["kustomize"]
    obj = gadget_instance("default", "docker.io/evil/gadget", {NAMESPACE: "payments"})
    denial = admission_policy.review(policy, admission_policy.request(obj))
    assert denial is not None
    assert denial.message == (
        "a GadgetInstance traces only its own namespace: operator.KubeManager.namespace=payments is another "
        "namespace; only default is allowed; use a ClusterGadgetInstance (cluster admins) for node-wide or "
        "cross-namespace tracing"
    )
    denial = admission_policy.review(policy, admission_policy.request(gadget_instance("default", "docker.io/x", None)))
    assert denial is not None
    assert denial.message == (
        "image docker.io/x is not allowed by this operator (allowed: ghcr.io/inspektor-gadget/gadget/*); "
        "ask the cluster admin to add it to the operator's allowed images"
    )


# -- generated cases -----------------------------------------------------------------------------------

namespaces = st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,8}[a-z0-9])?\Z")
white = st.text(alphabet=WHITE_SPACE, max_size=3)


@st.composite
def padded(draw: st.DrawFn, inner: st.SearchStrategy[str]) -> str:
    return draw(white) + draw(inner) + draw(white)


@st.composite
def namespace_values(draw: st.DrawFn, own: str) -> str:
    part = st.one_of(
        st.just(own),
        namespaces,
        namespaces.map(lambda n: "!" + n),
        st.just(""),
        st.text(alphabet="a!, \t\x1c\u3000-", max_size=6),
    )
    parts = draw(st.lists(padded(part), min_size=1, max_size=3))
    return ",".join(parts)


all_namespaces_values = st.one_of(
    padded(st.sampled_from(["", "false", "FALSE", "False", "fAlSe", "true", "True", "1", "0", "no", "yes", "falsey"])),
    st.text(max_size=8),
)


@st.composite
def params_of(draw: st.DrawFn, own: str) -> dict[str, str] | None:
    if draw(st.booleans()):
        return None
    params: dict[str, str] = {}
    if draw(st.booleans()):
        params[NAMESPACE] = draw(st.one_of(namespace_values(own), st.text(max_size=12)))
    if draw(st.booleans()):
        params[ALL_NAMESPACES] = draw(all_namespaces_values)
    if draw(st.booleans()):
        params["operator.KubeManager.podname"] = draw(st.text(max_size=6))
    return params


image_parts = st.text(alphabet="abz09._-:/@*'\\\"é", min_size=1, max_size=12)
images = st.one_of(
    image_parts,
    st.sampled_from(IMAGES),
    st.sampled_from(["ghcr.io/inspektor-gadget/gadget/", "docker.io/me/", "registry.example.com/gadgets/"]).flatmap(
        lambda prefix: image_parts.map(lambda rest: prefix + rest)
    ),
)


@st.composite
def cases(draw: st.DrawFn) -> tuple[str, str, dict[str, str] | None]:
    namespace = draw(namespaces)
    return namespace, draw(images), draw(params_of(namespace))


@pytest.mark.parametrize("where", WHERE)
@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(case=cases())
@example(case=("a", "trace_exec", {NAMESPACE: " a ,", ALL_NAMESPACES: "\x1cFALSE\u3000"}))
@example(case=("a", "x.y:1/z", {NAMESPACE: "\x1f!a"}))
def test_the_policy_and_the_operator_agree(
    policies: dict[str, tuple[dict[str, Any], list[str]]], where: str, case: tuple[str, str, dict[str, str] | None]
) -> None:
    policy, allowed = policies[where]
    assert_mirrors(policy, allowed, *case)


# -- updates -------------------------------------------------------------------------------------------


def test_an_update_that_changes_the_spec_is_checked(policies: dict[str, tuple[dict[str, Any], list[str]]]) -> None:
    policy, _ = policies["kustomize"]
    old = gadget_instance("team-a", "trace_exec", None)
    new = gadget_instance("team-a", "trace_exec", {ALL_NAMESPACES: "true"})
    denial = admission_policy.review(policy, admission_policy.request(new, operation="UPDATE", old=old))
    assert denial is not None
    assert denial.message == tenancy.confine("team-a", {ALL_NAMESPACES: "true"}).message  # type: ignore[union-attr]


def test_an_update_that_keeps_the_spec_passes(policies: dict[str, tuple[dict[str, Any], list[str]]]) -> None:
    """Labels, annotations, the operator's finalizer on an object stored before the policy (or before
    the allowed images changed): it can still be relabelled and deleted; the operator reports it Failed."""
    policy, _ = policies["kustomize"]
    old = gadget_instance("team-a", "docker.io/evil/x", {NAMESPACE: "payments"})
    new = {**old, "metadata": {**old["metadata"], "finalizers": ["gadget-operator.io/cleanup"], "labels": {"a": "b"}}}
    assert admission_policy.review(policy, admission_policy.request(new, operation="UPDATE", old=old)) is None
    assert admission_policy.review(policy, admission_policy.request(new, operation="CREATE")) is not None


def test_other_kinds_and_operations_are_not_matched(policies: dict[str, tuple[dict[str, Any], list[str]]]) -> None:
    policy, _ = policies["kustomize"]
    bad = gadget_instance("team-a", "docker.io/evil/x", {ALL_NAMESPACES: "true"})
    assert admission_policy.review(policy, admission_policy.request(bad, resource="clustergadgetinstances")) is None
    assert admission_policy.review(policy, admission_policy.request(bad, operation="DELETE")) is None
    assert admission_policy.review(policy, admission_policy.request(bad, operation="CONNECT")) is None
    assert admission_policy.review(policy, admission_policy.request(bad)) is not None


# -- the objects themselves ----------------------------------------------------------------------------


def _everywhere(
    base_objects: list[dict[str, Any]], render: Callable[..., list[dict[str, Any]]]
) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    yield ("kustomize", *_policy_and_binding(base_objects))
    yield ("helm", *_policy_and_binding(render()))
    yield ("helm-other-release", *_policy_and_binding(render("--set", "fullnameOverride=ops")))


def test_the_binding_denies_with_the_policy(
    base_objects: list[dict[str, Any]], render: Callable[..., list[dict[str, Any]]]
) -> None:
    for where, policy, binding in _everywhere(base_objects, render):
        assert binding["spec"]["policyName"] == policy["metadata"]["name"], where
        assert binding["spec"]["validationActions"] == ["Deny"], where
        assert "paramRef" not in binding["spec"], where
        assert "paramKind" not in policy["spec"], where
        assert "matchResources" not in binding["spec"], where  # every namespace
        assert policy["apiVersion"] == binding["apiVersion"] == "admissionregistration.k8s.io/v1", where
        assert policy["spec"]["failurePolicy"] == "Fail", where


def test_the_policy_matches_create_and_update_of_gadgetinstances_only(
    base_objects: list[dict[str, Any]], render: Callable[..., list[dict[str, Any]]]
) -> None:
    for where, policy, _ in _everywhere(base_objects, render):
        constraints = policy["spec"]["matchConstraints"]
        assert set(constraints) == {"resourceRules"}, where
        (rule,) = constraints["resourceRules"]
        assert rule["apiGroups"] == ["gadget-operator.io"], where
        assert rule["resources"] == ["gadgetinstances"], where  # not clustergadgetinstances, no subresource
        assert sorted(rule["operations"]) == ["CREATE", "UPDATE"], where
        assert rule.get("scope", "*") in ("Namespaced", "*"), where


def test_kustomize_and_the_chart_ship_the_same_policy(
    base_objects: list[dict[str, Any]], render: Callable[..., list[dict[str, Any]]]
) -> None:
    base_policy, base_binding = _policy_and_binding(base_objects)
    chart_policy, chart_binding = _policy_and_binding(render())
    assert base_policy["spec"] == chart_policy["spec"]
    assert base_binding["spec"] == chart_binding["spec"]
    assert base_policy["metadata"]["name"] == chart_policy["metadata"]["name"] == "gadget-operator-tenancy"


def test_every_expression_compiles(policies: dict[str, tuple[dict[str, Any], list[str]]]) -> None:
    for policy, _ in policies.values():
        spec = policy["spec"]
        for item in spec["matchConditions"] + spec["variables"] + spec["validations"]:
            admission_policy.compile_expression(item["expression"])
            if "messageExpression" in item:
                admission_policy.compile_expression(item["messageExpression"])
            if "message" in item:
                assert "\n" not in item["message"]
                assert item["message"].strip()


def test_the_chart_can_turn_the_policy_off(render: Callable[..., list[dict[str, Any]]]) -> None:
    objects = render("--set", "admissionPolicy.enabled=false")
    assert not [o for o in objects if o["kind"] in (POLICY, BINDING)]


@pytest.mark.parametrize("pattern", ["ghcr.io/*/gadget", "docker.io/me/gadget:v?", "a/[ab]", "a/**"])
def test_the_chart_refuses_patterns_the_policy_cannot_mirror(binaries: dict[str, Path], pattern: str) -> None:
    from tests.packaging.conftest import run_failing

    result = run_failing([binaries["helm"], "template", RELEASE, CHART, "--set-string", f"allowedImages[0]={pattern}"])
    assert "the admission policy understands only exact image references and prefixes ending in *" in result.stderr
    # With the policy off, any shell pattern is the operator's business.
    run(
        [
            binaries["helm"],
            "template",
            RELEASE,
            CHART,
            "--set-string",
            f"allowedImages[0]={pattern}",
            "--set",
            "admissionPolicy.enabled=false",
        ]
    )
