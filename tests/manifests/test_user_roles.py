"""The ClusterRoles to hand out (manifests/base/user-roles.yaml, the chart's templates/user-roles.yaml),
evaluated statically the way Kubernetes' RBAC authorizer does: a namespace editor can create
GadgetInstances in that namespace and never a ClusterGadgetInstance; the view role writes nothing; with
aggregation off (the default) the built-in edit/admin/view roles gain nothing, and with it on they never
gain ClusterGadgetInstances.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.packaging.conftest import BASE, CHART, RELEASE, load_documents, run

GROUP = "gadget-operator.io"
EDIT, VIEW, CLUSTER_ADMIN = (
    "gadget-operator-gadgetinstances-edit",
    "gadget-operator-gadgetinstances-view",
    "gadget-operator-clustergadgetinstances-admin",
)
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection", "escalate", "bind", "impersonate", "*"}
CLUSTER_SCOPED = {"clustergadgetinstances", "clustergadgetinstances/status"}
# Kubernetes' built-in user-facing roles and the label each aggregates (rbac bootstrap policy); their own
# rules never mention this API group, so what they grant here is what they aggregate.
BUILT_IN = {
    "admin": "rbac.authorization.k8s.io/aggregate-to-admin",
    "edit": "rbac.authorization.k8s.io/aggregate-to-edit",
    "view": "rbac.authorization.k8s.io/aggregate-to-view",
}
# Labels the built-in roles themselves carry: view's rules flow into edit, edit's into admin.
BUILT_IN_LABELS = {"view": {BUILT_IN["edit"]}, "edit": {BUILT_IN["admin"]}, "admin": set()}


# -- a static RBAC authorizer --------------------------------------------------------------------------


@dataclass(frozen=True)
class Binding:
    role: str
    namespace: str | None  # None: a ClusterRoleBinding


def _rule_allows(rule: Mapping[str, Any], group: str, resource: str, verb: str) -> bool:
    def listed(value: str, values: Iterable[str]) -> bool:
        values = list(values)
        return "*" in values or value in values

    return (
        "nonResourceURLs" not in rule
        and not rule.get("resourceNames")
        and listed(group, rule.get("apiGroups", []))
        and listed(resource, rule.get("resources", []))
        and listed(verb, rule.get("verbs", []))
    )


def allowed(
    roles: Mapping[str, Sequence[Mapping[str, Any]]],
    bindings: Iterable[Binding],
    *,
    verb: str,
    resource: str,
    namespace: str | None,
) -> bool:
    """Whether a user with these bindings may ``verb`` ``resource`` (in ``namespace``; None for a
    cluster-scoped resource or a request across all namespaces). A RoleBinding grants its ClusterRole's
    rules only inside its namespace, so never for a cluster-scoped resource."""
    for binding in bindings:
        if binding.namespace is not None and binding.namespace != namespace:
            continue
        if any(_rule_allows(rule, GROUP, resource, verb) for rule in roles.get(binding.role, [])):
            return True
    return False


def cluster_roles(objects: Sequence[Mapping[str, Any]], prefix: str = "gadget-operator") -> dict[str, Any]:
    """The rendered ClusterRoles by name (a release prefix other than gadget-operator made the same)."""
    found = {}
    for obj in objects:
        if obj["kind"] == "ClusterRole":
            found["gadget-operator" + obj["metadata"]["name"].removeprefix(prefix)] = obj
    return found


def aggregated(objects: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """The rules the built-in admin, edit and view ClusterRoles gain from these objects, as Kubernetes'
    aggregation controller computes them (selected by label; view flows into edit, edit into admin)."""
    gained: dict[str, list[Mapping[str, Any]]] = {}
    for name in ("view", "edit", "admin"):
        label = BUILT_IN[name]
        rules = [
            rule
            for role in cluster_roles(objects).values()
            if role["metadata"].get("labels", {}).get(label) == "true"
            for rule in role["rules"]
        ]
        for other, labels in BUILT_IN_LABELS.items():
            if label in labels:
                rules += gained.get(other, [])
        gained[name] = rules
    return gained


# -- the shipped roles ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kustomize(binaries: dict[str, Path]) -> Callable[[Path], list[dict[str, Any]]]:
    return lambda directory: load_documents(run([binaries["kubectl"], "kustomize", directory]).stdout)


@pytest.fixture(scope="module")
def helm(binaries: dict[str, Path]) -> Callable[..., list[dict[str, Any]]]:
    def template(*flags: str, release: str = RELEASE) -> list[dict[str, Any]]:
        return load_documents(run([binaries["helm"], "template", release, CHART, *flags]).stdout)

    return template


@pytest.fixture(scope="module")
def shipped(
    kustomize: Callable[[Path], list[dict[str, Any]]], helm: Callable[..., list[dict[str, Any]]]
) -> dict[str, list[dict[str, Any]]]:
    return {"kustomize": kustomize(BASE), "helm": helm()}


@pytest.fixture(scope="module")
def aggregating(
    kustomize: Callable[[Path], list[dict[str, Any]]],
    helm: Callable[..., list[dict[str, Any]]],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, list[dict[str, Any]]]:
    """With aggregation turned on: an overlay with the documented component; the chart's value."""
    overlay = tmp_path_factory.mktemp("aggregating")
    base = os.path.relpath(BASE, overlay)  # kustomize takes no absolute paths
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources: [{base}]\ncomponents: [{base}/aggregate-to-default-roles]\n"
    )
    return {"kustomize": kustomize(overlay), "helm": helm("--set", "userRoles.aggregateToDefaultRoles=true")}


WHERE = ["kustomize", "helm"]


@pytest.mark.parametrize("where", WHERE)
def test_the_three_roles_are_shipped(shipped: dict[str, list[dict[str, Any]]], where: str) -> None:
    roles = cluster_roles(shipped[where])
    assert {EDIT, VIEW, CLUSTER_ADMIN} <= set(roles)
    for name in (EDIT, VIEW, CLUSTER_ADMIN):
        for rule in roles[name]["rules"]:
            assert rule["apiGroups"] == [GROUP], (name, rule)
            assert "*" not in rule["resources"], (name, rule)
            assert "*" not in rule["verbs"], (name, rule)
    # Bound to nobody: handing them out is the cluster admin's decision.
    for binding in [o for o in shipped[where] if o["kind"] in ("ClusterRoleBinding", "RoleBinding")]:
        assert binding["roleRef"]["name"] not in (EDIT, VIEW, CLUSTER_ADMIN)


@pytest.mark.parametrize("where", WHERE)
def test_a_namespace_editor_edits_gadgetinstances_of_that_namespace_only(
    shipped: dict[str, list[dict[str, Any]]], where: str
) -> None:
    roles = {name: role["rules"] for name, role in cluster_roles(shipped[where]).items()}
    editor = [Binding(EDIT, "team-a")]
    for verb in ("create", "update", "patch", "delete", "get", "list", "watch"):
        assert allowed(roles, editor, verb=verb, resource="gadgetinstances", namespace="team-a"), verb
        assert not allowed(roles, editor, verb=verb, resource="gadgetinstances", namespace="team-b"), verb
        assert not allowed(roles, editor, verb=verb, resource="gadgetinstances", namespace=None), verb
    # The status is the operator's to write.
    for verb in ("update", "patch"):
        assert not allowed(roles, editor, verb=verb, resource="gadgetinstances/status", namespace="team-a")


@pytest.mark.parametrize("where", WHERE)
def test_a_namespace_editor_cannot_create_clustergadgetinstances(
    shipped: dict[str, list[dict[str, Any]]], where: str
) -> None:
    roles = {name: role["rules"] for name, role in cluster_roles(shipped[where]).items()}
    # No rule of the edit or view role names them at all.
    for name in (EDIT, VIEW):
        assert not CLUSTER_SCOPED & {r for rule in roles[name] for r in rule["resources"]}, name
    editor = [Binding(EDIT, "team-a"), Binding(VIEW, "team-a")]
    for verb in ("create", "update", "patch", "delete", "get", "list", "watch"):
        for namespace in (None, "team-a"):
            assert not allowed(roles, editor, verb=verb, resource="clustergadgetinstances", namespace=namespace)
    # Even the clustergadgetinstances role, handed out by mistake through a RoleBinding, grants nothing:
    # a ClusterGadgetInstance is cluster-scoped and a RoleBinding grants only inside its namespace.
    mistaken = [Binding(CLUSTER_ADMIN, "team-a")]
    assert not allowed(roles, mistaken, verb="create", resource="clustergadgetinstances", namespace=None)
    # Through a ClusterRoleBinding (cluster admins), it does.
    admin = [Binding(CLUSTER_ADMIN, None)]
    for verb in ("create", "update", "patch", "delete", "get", "list", "watch"):
        assert allowed(roles, admin, verb=verb, resource="clustergadgetinstances", namespace=None), verb
    assert not allowed(roles, admin, verb="create", resource="gadgetinstances", namespace="team-a")


@pytest.mark.parametrize("where", WHERE)
def test_the_view_role_grants_no_write_verb(shipped: dict[str, list[dict[str, Any]]], where: str) -> None:
    view = cluster_roles(shipped[where])[VIEW]
    verbs = {verb for rule in view["rules"] for verb in rule["verbs"]}
    assert verbs == {"get", "list", "watch"}
    assert not verbs & WRITE_VERBS
    resources = {r for rule in view["rules"] for r in rule["resources"]}
    assert resources == {"gadgetinstances", "gadgetinstances/status"}


@pytest.mark.parametrize("where", WHERE)
def test_aggregation_is_off_by_default_so_built_in_roles_gain_nothing(
    shipped: dict[str, list[dict[str, Any]]], where: str
) -> None:
    for role in cluster_roles(shipped[where]).values():
        labels = role["metadata"].get("labels", {})
        assert not {k for k in labels if k.startswith("rbac.authorization.k8s.io/aggregate-to-")}, labels
    assert aggregated(shipped[where]) == {"view": [], "edit": [], "admin": []}
    # So a namespace's built-in editors (a RoleBinding of `edit`) may not touch GadgetInstances.
    gained = {name: list(rules) for name, rules in aggregated(shipped[where]).items()}
    for name in ("edit", "admin", "view"):
        assert not allowed(
            gained, [Binding(name, "team-a")], verb="get", resource="gadgetinstances", namespace="team-a"
        )


@pytest.mark.parametrize("where", WHERE)
def test_aggregation_on_request_never_hands_out_clustergadgetinstances(
    aggregating: dict[str, list[dict[str, Any]]], where: str
) -> None:
    gained = aggregated(aggregating[where])
    for name in ("edit", "admin"):
        user = [Binding(name, "team-a")]
        assert allowed(gained, user, verb="create", resource="gadgetinstances", namespace="team-a"), name
        assert allowed(gained, user, verb="get", resource="gadgetinstances/status", namespace="team-a"), name
    viewer = [Binding("view", "team-a")]
    assert allowed(gained, viewer, verb="list", resource="gadgetinstances", namespace="team-a")
    assert not any(allowed(gained, viewer, verb=v, resource="gadgetinstances", namespace="team-a") for v in WRITE_VERBS)
    for name in ("view", "edit", "admin"):
        resources = {r for rule in gained[name] for r in rule["resources"]}
        assert not resources & CLUSTER_SCOPED, name
        # Not even through a ClusterRoleBinding of the built-in role.
        user = [Binding(name, None)]
        assert not allowed(gained, user, verb="create", resource="clustergadgetinstances", namespace=None), name
    labels = cluster_roles(aggregating[where])[CLUSTER_ADMIN]["metadata"].get("labels", {})
    assert not {k for k in labels if k.startswith("rbac.authorization.k8s.io/")}


def test_the_chart_names_the_roles_after_the_release_and_can_leave_them_out(
    helm: Callable[..., list[dict[str, Any]]],
) -> None:
    names = sorted(role["metadata"]["name"] for role in cluster_roles(helm(release="ops")).values())
    assert {"ops-gadget-operator-gadgetinstances-edit", "ops-gadget-operator-clustergadgetinstances-admin"} <= set(
        names
    )
    roles = cluster_roles(helm("--set", "userRoles.create=false"))
    assert set(roles) == {"gadget-operator"}  # the operator's own


def test_kustomize_and_the_chart_grant_the_same(shipped: dict[str, list[dict[str, Any]]]) -> None:
    base, chart = (cluster_roles(shipped[where]) for where in WHERE)
    for name in (EDIT, VIEW, CLUSTER_ADMIN):
        assert base[name]["rules"] == chart[name]["rules"], name
