"""What the chart and the kustomize manifests must agree on, with each other and with the operator.

* the same RBAC rules (chart defaults vs. manifests/base; chart with several replicas vs.
  manifests/overlays/ha, down to the names the Lease rules are limited to);
* the same operator settings (environment) for the same set-up;
* every GADGET_OPERATOR_* variable they set is a real `gadget-operator run` flag, and the operator's
  own command-line parser accepts the values;
* every Deployment runs non-root, read-only, without privilege escalation, with probes;
* Inspektor Gadget's multi-tenancy: the chart's igMultiTenancy and the component
  manifests/base/ig-multi-tenancy grant the same token and scope rules and configure the operator alike,
  and the tenant example (examples/multi-tenancy/tenant.yaml) sets up the account and scope they expect.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from gadget_operator import cli, resource, tenancy, tokens
from tests.manifests import crd_validation
from tests.packaging.conftest import (
    CHART,
    CUSTOM_VALUES,
    NAMESPACE,
    ROOT,
    containers_env,
    find,
    load_documents,
    one,
    resolved_env,
    validate,
)

Rule = tuple[str, str, str]  # (apiGroup, resource, verb)
NamedRules = dict[tuple[str, Rule], frozenset[str]]  # (scope, rule) -> the only object names it is granted on


def rbac_rules(objects: Sequence[Mapping[str, Any]]) -> dict[str, set[Rule]]:
    """The granted (apiGroup, resource, verb) triples, per scope: "cluster" or the Role's namespace; some
    only on certain objects (``resource_names`` says which)."""
    return rbac_grants(objects)[0]


def resource_names(objects: Sequence[Mapping[str, Any]]) -> NamedRules:
    """The granted triples that are limited to some names (``resourceNames``), with those names. A triple
    another rule grants without names is not limited, so not listed."""
    return rbac_grants(objects)[1]


def rbac_grants(objects: Sequence[Mapping[str, Any]]) -> tuple[dict[str, set[Rule]], NamedRules]:
    scopes: dict[str, set[Rule]] = {}
    named: dict[tuple[str, Rule], set[str]] = {}
    unlimited: set[tuple[str, Rule]] = set()
    for role in find(objects, "ClusterRole") + find(objects, "Role"):
        if role["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "user-roles":
            continue  # roles to hand out, not the operator's (tests/manifests/test_user_roles.py)
        scope = role["metadata"].get("namespace", "cluster") if role["kind"] == "Role" else "cluster"
        bound = [
            b
            for b in find(objects, "ClusterRoleBinding") + find(objects, "RoleBinding")
            if b["roleRef"]
            == {"apiGroup": "rbac.authorization.k8s.io", "kind": role["kind"], "name": role["metadata"]["name"]}
            and b["metadata"].get("namespace") == role["metadata"].get("namespace")
        ]
        assert len(bound) == 1, f"{role['kind']} {role['metadata']['name']} is bound {len(bound)} times"
        for rule in role["rules"]:
            assert "nonResourceURLs" not in rule
            granted = {
                (group, resource, verb)
                for group in rule["apiGroups"]
                for resource in rule["resources"]
                for verb in rule["verbs"]
            }
            scopes.setdefault(scope, set()).update(granted)
            names = rule.get("resourceNames")
            for triple in granted:
                if names:
                    # Kubernetes never matches a create or deletecollection of a resource by name (a new
                    # object's name is in the body): such a rule grants nothing. A subresource's create
                    # names its object in the URL (serviceaccounts/NAME/token), so there a name limits it.
                    if "/" not in triple[1]:
                        assert triple[2] not in ("create", "deletecollection"), f"{role['metadata']['name']}: {rule}"
                    named.setdefault((scope, triple), set()).update(names)
                else:
                    unlimited.add((scope, triple))
    return scopes, {key: frozenset(names) for key, names in named.items() if key not in unlimited}


EXPECTED_RULES = {
    "cluster": {
        ("gadget-operator.io", "gadgetinstances", "get"),
        ("gadget-operator.io", "gadgetinstances", "list"),
        ("gadget-operator.io", "gadgetinstances", "watch"),
        ("gadget-operator.io", "gadgetinstances", "patch"),
        ("gadget-operator.io", "gadgetinstances/status", "patch"),
        ("gadget-operator.io", "clustergadgetinstances", "get"),
        ("gadget-operator.io", "clustergadgetinstances", "list"),
        ("gadget-operator.io", "clustergadgetinstances", "watch"),
        ("gadget-operator.io", "clustergadgetinstances", "patch"),
        ("gadget-operator.io", "clustergadgetinstances/status", "patch"),
        ("", "nodes", "list"),
        ("", "nodes", "watch"),
        ("", "events", "create"),
    },
    "gadget": {
        ("", "pods", "list"),
        ("", "pods", "watch"),
        ("", "pods/portforward", "get"),
        ("", "pods/portforward", "create"),
        ("", "configmaps", "list"),
        ("", "configmaps", "watch"),
    },
}
# Standalone daemons (the per-node store) also confirm with `get` that a Node is gone.
STATIC_CLUSTER_RULES = EXPECTED_RULES["cluster"] | {("", "nodes", "get")}


def test_chart_and_base_grant_the_same_rules(chart_default: list[dict[str, Any]], base: list[dict[str, Any]]) -> None:
    assert rbac_rules(chart_default) == rbac_rules(base) == EXPECTED_RULES
    assert resource_names(chart_default) == resource_names(base) == {}


def test_rbac_bindings_name_the_operator_service_account(
    chart_default: list[dict[str, Any]], base: list[dict[str, Any]]
) -> None:
    for objects in (chart_default, base):
        account = one(objects, "ServiceAccount")
        assert (
            one(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
            == (account["metadata"]["name"])
        )
        for binding in find(objects, "ClusterRoleBinding") + find(objects, "RoleBinding"):
            assert binding["subjects"] == [
                {
                    "kind": "ServiceAccount",
                    "name": account["metadata"]["name"],
                    "namespace": account["metadata"]["namespace"],
                }
            ]


LEASE_RULES = {("coordination.k8s.io", "leases", verb) for verb in ("get", "create", "update")}
"""Leader election: one Lease in the operator's own namespace (a Role there, nothing cluster-wide)."""
LEASE_NAMES = {
    (NAMESPACE, ("coordination.k8s.io", "leases", verb)): frozenset({"gadget-operator"}) for verb in ("get", "update")
}
"""Of which reading and renewing only the Lease named gadget-operator (create cannot be limited to a name)."""


def test_leader_election_adds_only_the_lease_rules(
    helm_template: Callable[..., list[dict[str, Any]]], chart_custom: list[dict[str, Any]]
) -> None:
    several = helm_template({"replicaCount": 3})
    assert rbac_rules(several) == EXPECTED_RULES | {NAMESPACE: LEASE_RULES}
    assert resource_names(several) == LEASE_NAMES
    requested = helm_template({"leaderElection": {"enabled": True}})
    assert (rbac_rules(requested), resource_names(requested)) == (rbac_rules(several), resource_names(several))
    namespaced = rbac_rules(chart_custom)  # static discovery: the per-node store's rules
    assert namespaced == {"cluster": STATIC_CLUSTER_RULES, NAMESPACE: LEASE_RULES}
    assert resource_names(chart_custom) == LEASE_NAMES


def test_the_lease_the_operator_renews_is_the_one_the_role_names(
    helm_template: Callable[..., list[dict[str, Any]]], ha_overlay: list[dict[str, Any]]
) -> None:
    renamed = helm_template({"replicaCount": 2, "leaderElection": {"leaseName": "gi-leader"}})
    assert containers_env(one(renamed, "Deployment"))["GADGET_OPERATOR_LEASE_NAME"] == "gi-leader"
    assert set(resource_names(renamed).values()) == {frozenset({"gi-leader"})}
    assert containers_env(one(ha_overlay, "Deployment"))["GADGET_OPERATOR_LEASE_NAME"] == "gadget-operator"
    assert set(resource_names(ha_overlay).values()) == {frozenset({"gadget-operator"})}


def test_chart_with_replicas_and_the_ha_overlay_run_alike(
    helm_template: Callable[..., list[dict[str, Any]]], ha_overlay: list[dict[str, Any]]
) -> None:
    """`kubectl apply -k manifests/overlays/ha` installs what `helm install --set replicaCount=2` does: the
    same replicas, rollout, operator settings, and the same rules, limited to the same names."""
    chart = helm_template({"replicaCount": 2})
    chart_deployment, overlay_deployment = one(chart, "Deployment"), one(ha_overlay, "Deployment")
    assert overlay_deployment["spec"]["replicas"] == chart_deployment["spec"]["replicas"] == 2
    assert overlay_deployment["spec"]["strategy"] == chart_deployment["spec"]["strategy"]
    assert containers_env(overlay_deployment) == containers_env(chart_deployment)
    assert rbac_rules(ha_overlay) == rbac_rules(chart) == EXPECTED_RULES | {NAMESPACE: LEASE_RULES}
    assert resource_names(ha_overlay) == resource_names(chart) == LEASE_NAMES
    # Rule by rule (comments aside), the Lease Roles are the same.
    chart_role = one(chart, "Role", "gadget-operator-leader-election")
    overlay_role = one(ha_overlay, "Role", "gadget-operator-leader-election")
    assert overlay_role["rules"] == chart_role["rules"]
    assert overlay_role["metadata"]["namespace"] == chart_role["metadata"]["namespace"] == NAMESPACE


def test_chart_defaults_and_base_configure_the_operator_alike(
    chart_default: list[dict[str, Any]], base: list[dict[str, Any]]
) -> None:
    assert containers_env(one(chart_default, "Deployment")) == containers_env(one(base, "Deployment"))


def test_chart_static_tls_and_overlay_configure_the_operator_alike(
    helm_template: Callable[..., list[dict[str, Any]]], overlay: list[dict[str, Any]]
) -> None:
    objects = helm_template(
        {
            "discovery": {"mode": "static", "staticNodes": {"node-1": "tcp://10.0.0.11:8443"}},
            "tls": {"existingSecret": "gadget-operator-daemon-tls"},
        }
    )
    assert containers_env(one(objects, "Deployment")) == containers_env(one(overlay, "Deployment"))
    assert rbac_rules(objects) == rbac_rules(overlay) == {"cluster": STATIC_CLUSTER_RULES}


RUN_FLAG_ENV = {f"{cli.ENV_PREFIX}_{param.name.upper()}" for param in cli.run.params if param.name}


@pytest.fixture(scope="module")
def deployments(
    chart_default: list[dict[str, Any]],
    chart_custom: list[dict[str, Any]],
    base: list[dict[str, Any]],
    overlay: list[dict[str, Any]],
    ha_overlay: list[dict[str, Any]],
    chart_multi_tenancy: list[dict[str, Any]],
    ig_multi_tenancy_overlay: list[dict[str, Any]],
) -> dict[str, Mapping[str, Any]]:
    return {
        "chart default values": one(chart_default, "Deployment"),
        "chart custom values": one(chart_custom, "Deployment"),
        "chart igMultiTenancy": one(chart_multi_tenancy, "Deployment"),
        "manifests/base": one(base, "Deployment"),
        "manifests/overlays/standalone-ig": one(overlay, "Deployment"),
        "manifests/overlays/ha": one(ha_overlay, "Deployment"),
        "manifests/base + ig-multi-tenancy": one(ig_multi_tenancy_overlay, "Deployment"),
    }


POD_FIELD_ENV = {"POD_NAMESPACE": "metadata.namespace", "SERVICE_ACCOUNT_NAME": "spec.serviceAccountName"}
"""The only other variables: pod fields from the downward API (ig-multi-tenancy's operator account is
made of them; the operator reads POD_NAMESPACE itself too)."""


def test_every_variable_is_a_run_flag(deployments: dict[str, Mapping[str, Any]]) -> None:
    assert "GADGET_OPERATOR_DISCOVERY" in RUN_FLAG_ENV  # the naming rule itself
    for where, deployment in deployments.items():
        env = resolved_env(deployment)
        assert env, where
        unknown = {name for name in env if name.startswith("GADGET_OPERATOR_")} - RUN_FLAG_ENV
        assert not unknown, f"{where}: not `gadget-operator run` flags: {sorted(unknown)}"
        others = set(env) - RUN_FLAG_ENV
        assert others <= set(POD_FIELD_ENV), f"{where}: other variables: {sorted(others)}"
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        for item in container["env"]:
            if item["name"] in others:
                assert item["valueFrom"] == {"fieldRef": {"fieldPath": POD_FIELD_ENV[item["name"]]}}, where
            else:
                assert "valueFrom" not in item, f"{where}: {item['name']}: only literal values are used"


def parse_run(env: Mapping[str, str], args: Sequence[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """What `gadget-operator run` makes of this environment and these arguments (without running).

    Files the operator needs to exist at start (TLS files) are stood in for by empty temporary files.
    """
    for name in [n for n in os.environ if n.startswith(cli.ENV_PREFIX + "_")]:
        monkeypatch.delenv(name)
    existing = {p.name for p in cli.run.params if isinstance(p.type, click.Path) and p.type.exists}
    for name, value in env.items():
        param = name.removeprefix(cli.ENV_PREFIX + "_").lower()
        if param in existing:
            stand_in = tmp_path / param
            stand_in.write_text("")
            value = str(stand_in)
        monkeypatch.setenv(name, value)
    parent = click.Context(cli.main, info_name="gadget-operator", auto_envvar_prefix=cli.ENV_PREFIX)
    try:
        context = cli.run.make_context("run", list(args), parent=parent)
    except click.ClickException as error:
        pytest.fail(f"`gadget-operator run` refuses the manifests' settings: {error.format_message()}", pytrace=False)
    return context.params


def test_the_operator_parses_the_chart_defaults(
    chart_default: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = parse_run(containers_env(one(chart_default, "Deployment")), [], tmp_path, monkeypatch)
    assert params["standalone"] is True
    assert params["namespaces"] == ()
    assert params["discovery"] == "pods"
    assert (params["daemon_namespace"], params["daemon_selector"], params["daemon_port"]) == (
        "gadget",
        "k8s-app=gadget",
        8080,
    )
    assert params["metrics_port"] == 9090
    assert params["liveness"] == "http://0.0.0.0:8080/healthz"


def test_the_operator_parses_the_chart_custom_values(
    chart_custom: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployment = one(chart_custom, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    params = parse_run(containers_env(deployment), container["args"], tmp_path, monkeypatch)
    assert params["standalone"] is False  # two replicas: leader election
    assert (params["lease_name"], params["lease_namespace"]) == ("gadget-operator", NAMESPACE)
    assert (params["lease_duration"], params["renew_deadline"], params["retry_period"]) == (10, 7.0, 2.0)
    # run() splits the comma-separated list itself.
    assert [ns for item in params["namespaces"] for ns in item.split(",")] == CUSTOM_VALUES["watchNamespaces"]
    assert params["discovery"] == "static"
    assert params["static_nodes"] == "/etc/gadget-operator/nodes.yaml"
    assert all(params[k] for k in ("tls_cert", "tls_key", "tls_ca"))
    assert params["tls_server_name"] == "ig.example.com"
    assert params["metrics_port"] == 9191
    assert params["log_format"] == "json"
    assert params["resync_interval"] == 60.0


def test_the_operator_parses_the_overlay(
    overlay: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = parse_run(containers_env(one(overlay, "Deployment")), [], tmp_path, monkeypatch)
    assert params["discovery"] == "static"
    assert params["static_nodes"] == "/etc/gadget-operator/nodes.yaml"
    assert all(params[k] for k in ("tls_cert", "tls_key", "tls_ca"))


def test_the_operator_parses_the_ha_overlay(
    ha_overlay: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = parse_run(containers_env(one(ha_overlay, "Deployment")), [], tmp_path, monkeypatch)
    assert params["standalone"] is False  # --leader-elect
    assert (params["lease_name"], params["lease_namespace"]) == ("gadget-operator", NAMESPACE)
    assert (params["lease_duration"], params["renew_deadline"], params["retry_period"]) == (10, 7.0, 2.0)
    # What `gadget-operator run` checks before it starts (else it refuses to).
    assert params["retry_period"] < params["renew_deadline"] < params["lease_duration"]
    assert params["discovery"] == "pods"


def test_the_static_nodes_file_is_one_the_operator_accepts(overlay: list[dict[str, Any]], tmp_path: Path) -> None:
    config_map = one(overlay, "ConfigMap")
    nodes_file = tmp_path / "nodes.yaml"
    nodes_file.write_text(config_map["data"]["nodes.yaml"])
    assert cli.load_static_nodes(str(nodes_file))


@pytest.mark.parametrize(
    "where",
    [
        "chart default values",
        "chart custom values",
        "chart igMultiTenancy",
        "manifests/base",
        "manifests/overlays/standalone-ig",
        "manifests/overlays/ha",
        "manifests/base + ig-multi-tenancy",
    ],
)
def test_deployment_is_locked_down(deployments: dict[str, Mapping[str, Any]], where: str) -> None:
    pod = deployments[where]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    pod_security = pod.get("securityContext", {})
    security = container["securityContext"]

    assert pod_security.get("runAsNonRoot") is True or security.get("runAsNonRoot") is True
    assert pod_security["runAsUser"] == 65532  # the image's user (Dockerfile)
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert "privileged" not in security or security["privileged"] is False
    assert (security.get("seccompProfile") or pod_security.get("seccompProfile")) == {"type": "RuntimeDefault"}
    assert not pod.get("hostNetwork")
    assert not pod.get("hostPID")
    assert not pod.get("hostIPC")
    for volume in pod["volumes"]:
        assert "hostPath" not in volume, volume

    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = resolved_env(deployments[where])
    assert env["GADGET_OPERATOR_LIVENESS"] == f"http://0.0.0.0:{ports['health']}/healthz"
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}, probe
    assert container["resources"]["limits"]["memory"]
    assert container["resources"]["requests"]["cpu"]
    assert container["resources"]["requests"]["memory"]


# -- Inspektor Gadget's multi-tenancy ----------------------------------------------------------------------

MULTI_TENANCY_RULES = {
    # Tokens of the tenant accounts (any namespace) and IG's default scope for the operator (cluster-wide).
    "cluster": {("", "serviceaccounts/token", "create"), ("", "pods", "create")},
    # A token of the operator's own account.
    NAMESPACE: {("", "serviceaccounts/token", "create")},
}
MULTI_TENANCY_NAMES = {
    ("cluster", ("", "serviceaccounts/token", "create")): frozenset({"gadget-tenant"}),
    (NAMESPACE, ("", "serviceaccounts/token", "create")): frozenset({"gadget-operator"}),
}
TENANT_EXAMPLE = ROOT / "examples" / "multi-tenancy" / "tenant.yaml"


@pytest.fixture(scope="module")
def chart_multi_tenancy(helm_template: Callable[..., list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return helm_template({"igMultiTenancy": {"enabled": True}})


def merged(*scopes: Mapping[str, set[Rule]]) -> dict[str, set[Rule]]:
    result: dict[str, set[Rule]] = {}
    for rules in scopes:
        for scope, granted in rules.items():
            result.setdefault(scope, set()).update(granted)
    return result


def test_chart_multi_tenancy_and_the_component_grant_the_same_rules(
    chart_multi_tenancy: list[dict[str, Any]], ig_multi_tenancy_overlay: list[dict[str, Any]]
) -> None:
    expected = merged(EXPECTED_RULES, MULTI_TENANCY_RULES)
    assert rbac_rules(chart_multi_tenancy) == rbac_rules(ig_multi_tenancy_overlay) == expected
    assert resource_names(chart_multi_tenancy) == resource_names(ig_multi_tenancy_overlay) == MULTI_TENANCY_NAMES
    # Rule by rule (comments aside), the new roles are the same, in the same namespaces.
    for kind, name in [
        ("ClusterRole", "gadget-operator-tenant-tokens"),
        ("ClusterRole", "gadget-operator-ig-scope"),
        ("Role", "gadget-operator-own-token"),
    ]:
        chart_role, component_role = one(chart_multi_tenancy, kind, name), one(ig_multi_tenancy_overlay, kind, name)
        assert component_role["rules"] == chart_role["rules"], name
        assert component_role["metadata"].get("namespace") == chart_role["metadata"].get("namespace"), name


def test_chart_multi_tenancy_and_the_component_configure_the_operator_alike(
    chart_multi_tenancy: list[dict[str, Any]], ig_multi_tenancy_overlay: list[dict[str, Any]]
) -> None:
    chart_env = containers_env(one(chart_multi_tenancy, "Deployment"))
    component_env = resolved_env(one(ig_multi_tenancy_overlay, "Deployment"))
    assert {k: v for k, v in component_env.items() if k not in POD_FIELD_ENV} == chart_env
    assert chart_env["GADGET_OPERATOR_OPERATOR_SERVICE_ACCOUNT"] == f"{NAMESPACE}/gadget-operator"


@pytest.mark.parametrize("where", ["chart igMultiTenancy", "manifests/base + ig-multi-tenancy"])
def test_the_operator_parses_the_multi_tenancy_settings(
    deployments: dict[str, Mapping[str, Any]], where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = parse_run(resolved_env(deployments[where]), [], tmp_path, monkeypatch)
    assert params["ig_multi_tenancy"] is True
    assert params["tenant_service_account"] == "gadget-tenant"
    assert params["token_lifetime"] == 3600
    # run() parses the account itself: NAMESPACE/NAME, the pod's own ServiceAccount.
    operator = tokens.ServiceAccount.parse(params["operator_service_account"])
    pod = deployments[where]["spec"]["template"]["spec"]
    assert operator == tokens.ServiceAccount(deployments[where]["metadata"]["namespace"], pod["serviceAccountName"])


@pytest.mark.parametrize("where", ["chart igMultiTenancy", "manifests/base + ig-multi-tenancy"])
def test_the_token_rules_name_the_accounts_the_operator_speaks_as(
    chart_multi_tenancy: list[dict[str, Any]], ig_multi_tenancy_overlay: list[dict[str, Any]], where: str
) -> None:
    objects = chart_multi_tenancy if where.startswith("chart") else ig_multi_tenancy_overlay
    env = resolved_env(one(objects, "Deployment"))
    operator = tokens.ServiceAccount.parse(env["GADGET_OPERATOR_OPERATOR_SERVICE_ACCOUNT"])
    token = ("", "serviceaccounts/token", "create")
    assert resource_names(objects)[(operator.namespace, token)] == {operator.name}
    assert resource_names(objects)[("cluster", token)] == {env["GADGET_OPERATOR_TENANT_SERVICE_ACCOUNT"]}


def test_the_tenant_example_sets_up_what_the_operator_and_the_daemons_expect(
    chart_multi_tenancy: list[dict[str, Any]],
) -> None:
    """examples/multi-tenancy/tenant.yaml: valid objects; the tenant account the operator speaks as (the
    default --tenant-service-account), granted IG's default scope (the chart's igMultiTenancy.scope) in its
    namespace, and a GadgetInstance there that the CRD admits and the operator accepts."""
    objects = load_documents(TENANT_EXAMPLE.read_text())
    assert [o["kind"] for o in objects] == ["Namespace", "ServiceAccount", "Role", "RoleBinding", "GadgetInstance"]
    (namespace,) = {o["metadata"]["name"] for o in find(objects, "Namespace")}
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == namespace, obj["metadata"]
        if obj["kind"] != resource.KIND:
            validate(obj)

    tenant = containers_env(one(chart_multi_tenancy, "Deployment"))["GADGET_OPERATOR_TENANT_SERVICE_ACCOUNT"]
    assert tenant == cli.run.params[[p.name for p in cli.run.params].index("tenant_service_account")].default
    account = one(objects, "ServiceAccount")
    assert account["metadata"]["name"] == tenant
    assert account["automountServiceAccountToken"] is False  # only the operator uses its tokens

    values = yaml.safe_load((CHART / "values.yaml").read_text())["igMultiTenancy"]
    scope = values["scope"]
    assert values["tenantServiceAccount"] == tenant
    role, binding = one(objects, "Role"), one(objects, "RoleBinding")
    assert role["rules"] == [
        {"apiGroups": [scope["apiGroup"]], "resources": [scope["resource"]], "verbs": [scope["verb"]]}
    ]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": tenant, "namespace": namespace}]
    # The operator's own scope (its ClusterRole) is the same permission.
    assert one(chart_multi_tenancy, "ClusterRole", "gadget-operator-ig-scope")["rules"] == role["rules"]

    gadget = one(objects, resource.KIND)
    assert gadget["apiVersion"] == f"{resource.GROUP}/{resource.VERSION}"
    assert crd_validation.validate(gadget) == []
    spec = resource.parse_spec(gadget["spec"])
    assert tenancy.check_image(spec.image, tenancy_allowed_images(chart_multi_tenancy)) is None
    confined = tenancy.confine(namespace, gadget["spec"].get("params", {}))
    assert not isinstance(confined, tenancy.Refusal), confined


def tenancy_allowed_images(objects: Sequence[Mapping[str, Any]]) -> list[str]:
    return containers_env(one(objects, "Deployment"))["GADGET_OPERATOR_ALLOWED_IMAGES"].split()
