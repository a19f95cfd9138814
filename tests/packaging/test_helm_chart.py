"""The Helm chart: lint, render with default and non-default values, schema, and what each value does."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.packaging.conftest import (
    CHART,
    CUSTOM_VALUES,
    MULTI_TENANCY_OBJECTS,
    NAMESPACE,
    RELEASE,
    ROOT,
    containers_env,
    find,
    mounts_and_volumes,
    one,
    run,
    run_failing,
    validate_all,
)

Render = Callable[..., list[dict[str, Any]]]


def test_lint_strict(helm: Path) -> None:
    result = run([helm, "lint", "--strict", CHART])
    assert "0 chart(s) failed" in result.stdout


def test_lint_strict_with_custom_values(helm: Path, tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(CUSTOM_VALUES))
    run([helm, "lint", "--strict", CHART, "--values", values])


def test_chart_crd_is_an_exact_copy_of_the_repository_crd() -> None:
    names = sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    assert names == ["clustergadgetinstances.gadget-operator.io.yaml", "gadgetinstances.gadget-operator.io.yaml"]
    for name in names:
        source, copy = ROOT / "crds" / name, CHART / "crds" / name
        assert copy.read_bytes() == source.read_bytes(), "stale chart CRD; run: python tools/crdgen.py"
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == names


def test_default_values_render_valid_objects(chart_default: list[dict[str, Any]]) -> None:
    assert validate_all(chart_default) == []  # nothing without a schema by default
    kinds = sorted(o["kind"] for o in chart_default)
    assert kinds == sorted(
        [
            "CustomResourceDefinition",
            "CustomResourceDefinition",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "Service",
            "Deployment",
            # userRoles: GadgetInstances edit and view, ClusterGadgetInstances admin (bound to nobody).
            "ClusterRole",
            "ClusterRole",
            "ClusterRole",
            # admissionPolicy
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding",
        ]
    )
    for obj in chart_default:
        if obj["kind"] not in (
            "CustomResourceDefinition",
            "ClusterRole",
            "ClusterRoleBinding",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding",
        ):
            expected = "gadget" if obj["kind"] in ("Role", "RoleBinding") else NAMESPACE
            assert obj["metadata"]["namespace"] == expected, obj["metadata"]


def test_custom_values_render_valid_objects(chart_custom: list[dict[str, Any]]) -> None:
    custom = validate_all(chart_custom)
    assert sorted((o["kind"], o["metadata"].get("namespace")) for o in custom) == [("ServiceMonitor", NAMESPACE)]
    # Static discovery: no access to the daemon pods at all; only the leader-election Lease (2 replicas).
    assert [r["metadata"]["name"] for r in find(chart_custom, "Role")] == ["gadget-operator-leader-election"]
    assert [b["metadata"]["name"] for b in find(chart_custom, "RoleBinding")] == ["gadget-operator-leader-election"]


def test_default_deployment(chart_default: list[dict[str, Any]]) -> None:
    deployment = one(chart_default, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "ghcr.io/gadget-operator/gadget-operator:0.1.0"
    assert "args" not in container
    assert pod["serviceAccountName"] == one(chart_default, "ServiceAccount")["metadata"]["name"]
    env = containers_env(deployment)
    assert env["GADGET_OPERATOR_STANDALONE"] == "true"
    assert "GADGET_OPERATOR_NAMESPACES" not in env  # every namespace
    assert env["GADGET_OPERATOR_DISCOVERY"] == "pods"
    assert container["resources"] == {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}}


def test_several_replicas_turn_on_leader_election(chart_custom: list[dict[str, Any]]) -> None:
    deployment = one(chart_custom, "Deployment")
    env = containers_env(deployment)
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert env["GADGET_OPERATOR_STANDALONE"] == "false"
    assert env["GADGET_OPERATOR_LEASE_NAME"] == "gadget-operator"
    assert env["GADGET_OPERATOR_LEASE_NAMESPACE"] == NAMESPACE
    assert env["GADGET_OPERATOR_NAMESPACES"] == "a,b"
    # The Lease lives in the release namespace whatever namespaces are watched: one Role, there.
    role = one(chart_custom, "Role", "gadget-operator-leader-election")
    assert role["metadata"]["namespace"] == NAMESPACE
    # Reads and renews only its own Lease; creating one cannot be limited to a name.
    assert role["rules"] == [
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": ["gadget-operator"],
            "verbs": ["get", "update"],
        },
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
    ]
    assert one(chart_custom, "RoleBinding", "gadget-operator-leader-election")["metadata"]["namespace"] == NAMESPACE


def test_leader_election_with_one_replica_on_request(helm_template: Render) -> None:
    objects = helm_template({"leaderElection": {"enabled": True, "leaseName": "gi-leader", "leaseDuration": 30}})
    validate_all(objects)
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    env = containers_env(deployment)
    assert env["GADGET_OPERATOR_STANDALONE"] == "false"
    assert (env["GADGET_OPERATOR_LEASE_NAME"], env["GADGET_OPERATOR_LEASE_DURATION"]) == ("gi-leader", "30")
    role = one(objects, "Role", "gadget-operator-leader-election")
    assert [rule.get("resourceNames") for rule in role["rules"]] == [["gi-leader"], None]


def test_leader_election_timings_are_checked(helm: Path) -> None:
    result = run_failing(
        [helm, "template", "x", CHART, "--set", "replicaCount=2", "--set", "leaderElection.renewDeadline=20"]
    )
    assert "renewDeadline must be shorter than leaderElection.leaseDuration" in result.stderr


def test_no_leader_election_without_replicas_or_request(chart_default: list[dict[str, Any]]) -> None:
    assert find(chart_default, "Role", "gadget-operator-leader-election") == []
    assert "GADGET_OPERATOR_LEASE_NAME" not in containers_env(one(chart_default, "Deployment"))


def test_static_discovery_with_tls(chart_custom: list[dict[str, Any]]) -> None:
    deployment = one(chart_custom, "Deployment")
    env = containers_env(deployment)
    mounts, volumes = mounts_and_volumes(deployment)

    assert env["GADGET_OPERATOR_DISCOVERY"] == "static"
    assert env["GADGET_OPERATOR_STATIC_NODES"] == "/etc/gadget-operator/nodes.yaml"
    assert not {"GADGET_OPERATOR_DAEMON_NAMESPACE", "GADGET_OPERATOR_DAEMON_SELECTOR"} & set(env)
    config_map = one(chart_custom, "ConfigMap")
    assert volumes["static-nodes"]["configMap"]["name"] == config_map["metadata"]["name"]
    assert mounts["static-nodes"]["mountPath"] == env["GADGET_OPERATOR_STATIC_NODES"]
    assert (
        yaml.safe_load(config_map["data"][mounts["static-nodes"]["subPath"]])
        == (CUSTOM_VALUES["discovery"]["staticNodes"])
    )
    assert "checksum/static-nodes" in deployment["spec"]["template"]["metadata"]["annotations"]

    assert volumes["daemon-tls"]["secret"]["secretName"] == "daemon-tls"
    tls_dir = mounts["daemon-tls"]["mountPath"]
    assert env["GADGET_OPERATOR_TLS_CERT"] == f"{tls_dir}/tls.crt"
    assert env["GADGET_OPERATOR_TLS_KEY"] == f"{tls_dir}/tls.key"
    assert env["GADGET_OPERATOR_TLS_CA"] == f"{tls_dir}/ca.crt"
    assert env["GADGET_OPERATOR_TLS_SERVER_NAME"] == "ig.example.com"


def test_other_pod_settings_are_passed_through(chart_custom: list[dict[str, Any]]) -> None:
    deployment = one(chart_custom, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["--resync-interval=60"]
    assert containers_env(deployment)["GADGET_OPERATOR_LOG_FORMAT"] == "json"
    assert deployment["spec"]["template"]["metadata"]["annotations"]["example.com/owner"] == "platform"
    assert pod["imagePullSecrets"] == [{"name": "registry"}]
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["tolerations"] == CUSTOM_VALUES["tolerations"]


def test_service_monitor_scrapes_the_metrics_service(chart_custom: list[dict[str, Any]]) -> None:
    monitor = one(chart_custom, "ServiceMonitor")
    service = one(chart_custom, "Service")
    deployment = one(chart_custom, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]

    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    # The Service reaches the container's metrics port, which is the one the operator serves on.
    (port,) = service["spec"]["ports"]
    assert port["port"] == 9191
    assert port["targetPort"] == "metrics"
    assert {"name": "metrics", "containerPort": 9191, "protocol": "TCP"} in container["ports"]
    assert containers_env(deployment)["GADGET_OPERATOR_METRICS_PORT"] == "9191"
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def test_metrics_disabled(helm_template: Render) -> None:
    objects = helm_template({"metrics": {"enabled": False}})
    validate_all(objects)
    assert find(objects, "Service") == []
    deployment = one(objects, "Deployment")
    assert containers_env(deployment)["GADGET_OPERATOR_METRICS_PORT"] == "0"  # 0 turns the server off
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert [p["name"] for p in container["ports"]] == ["health"]


def test_without_rbac_and_service_account(helm_template: Render) -> None:
    objects = helm_template(
        {
            "rbac": {"create": False},
            "serviceAccount": {"create": False, "name": "mine"},
            "userRoles": {"create": False},
            "admissionPolicy": {"enabled": False},
        }
    )
    validate_all(objects)
    assert {o["kind"] for o in objects} == {"CustomResourceDefinition", "Service", "Deployment"}
    assert one(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "mine"


def test_pods_discovery_role_follows_the_daemon_namespace(helm_template: Render) -> None:
    objects = helm_template({"discovery": {"daemonNamespace": "ig", "daemonSelector": "app=ig", "daemonPort": 9000}})
    env = containers_env(one(objects, "Deployment"))
    assert env["GADGET_OPERATOR_DAEMON_NAMESPACE"] == "ig"
    assert env["GADGET_OPERATOR_DAEMON_SELECTOR"] == "app=ig"
    assert env["GADGET_OPERATOR_DAEMON_PORT"] == "9000"
    assert one(objects, "Role")["metadata"]["namespace"] == "ig"
    binding = one(objects, "RoleBinding")
    assert binding["metadata"]["namespace"] == "ig"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": RELEASE, "namespace": NAMESPACE}]


def test_names_follow_the_release(helm: Path) -> None:
    objects = [o for o in yaml.safe_load_all(run([helm, "template", "ops", CHART, "--namespace", "tools"]).stdout) if o]
    assert one(objects, "Deployment")["metadata"]["name"] == "ops-gadget-operator"
    assert one(objects, "ClusterRoleBinding")["subjects"] == [
        {"kind": "ServiceAccount", "name": "ops-gadget-operator", "namespace": "tools"}
    ]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--set", "replicaCount=abc"], "/replicaCount"),
        (["--set", "replicaCount=0"], "/replicaCount"),
        (["--set", "unknownKey=1"], "unknownKey"),
        (["--set", "discovery.mode=magic"], "/discovery/mode"),
        (["--set", "logFormat=xml"], "/logFormat"),
        (["--set", "metrics.port=8080"], "/metrics/port"),
        (["--set", "discovery.daemonPort=70000"], "/discovery/daemonPort"),
        (["--set", "discovery.staticNodes.node-1=10.0.0.1:8443"], "/discovery/staticNodes/node-1"),
        (["--set", "watchNamespaces[0]=Not_A_Namespace"], "/watchNamespaces/0"),
        (["--set", "discovery.mode=static"], "discovery.staticNodes"),
        (["--set", "metrics.enabled=false", "--set", "metrics.serviceMonitor.enabled=true"], "metrics.enabled"),
    ],
)
def test_bad_values_are_refused_with_a_clear_message(helm: Path, flags: list[str], message: str) -> None:
    result = run_failing([helm, "template", RELEASE, CHART, *flags])
    assert message in result.stderr, result.stderr


def test_values_schema_is_draft7_and_accepts_the_defaults_and_the_custom_values() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["additionalProperties"] is False
    jsonschema.Draft7Validator.check_schema(schema)
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.Draft7Validator(schema).validate(defaults)
    # Every default value is described by the schema, and the schema has nothing values.yaml lacks
    # (but Helm's own `global`).
    assert set(schema["properties"]) - {"global"} == set(defaults)


def test_notes_render(helm: Path, tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(CUSTOM_VALUES))
    notes = run([helm, "install", RELEASE, CHART, "--dry-run=client", "--namespace", NAMESPACE, "-f", values]).stdout
    assert "kubectl get gi" in notes
    assert "Leader election is on (2 replica(s))" in notes
    assert "get lease gadget-operator" in notes
    assert "the namespaces a, b" in notes


# -- igMultiTenancy (Inspektor Gadget's multi-tenancy) -----------------------------------------------------

MULTI_TENANCY_ENV = {
    "GADGET_OPERATOR_IG_MULTI_TENANCY",
    "GADGET_OPERATOR_OPERATOR_SERVICE_ACCOUNT",
    "GADGET_OPERATOR_TENANT_SERVICE_ACCOUNT",
    "GADGET_OPERATOR_TOKEN_LIFETIME",
}


def names(objects: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(o["kind"], o["metadata"]["name"]) for o in objects}


def test_multi_tenancy_is_off_by_default(
    chart_default: list[dict[str, Any]], chart_custom: list[dict[str, Any]]
) -> None:
    for objects in (chart_default, chart_custom):
        assert not names(objects) & set(MULTI_TENANCY_OBJECTS)
        assert not MULTI_TENANCY_ENV & set(containers_env(one(objects, "Deployment")))
        for role in find(objects, "ClusterRole") + find(objects, "Role"):
            for rule in role["rules"]:
                assert "serviceaccounts/token" not in rule["resources"], role["metadata"]["name"]


def test_multi_tenancy_renders_the_settings_and_the_rbac(
    helm_template: Render, chart_default: list[dict[str, Any]]
) -> None:
    objects = helm_template({"igMultiTenancy": {"enabled": True}})
    assert validate_all(objects) == []
    assert sorted(names(objects) - names(chart_default)) == MULTI_TENANCY_OBJECTS
    env = containers_env(one(objects, "Deployment"))
    assert {k: env[k] for k in MULTI_TENANCY_ENV} == {
        "GADGET_OPERATOR_IG_MULTI_TENANCY": "true",
        "GADGET_OPERATOR_OPERATOR_SERVICE_ACCOUNT": f"{NAMESPACE}/{RELEASE}",
        "GADGET_OPERATOR_TENANT_SERVICE_ACCOUNT": "gadget-tenant",
        "GADGET_OPERATOR_TOKEN_LIFETIME": "3600",
    }
    # Everything else is as without it.
    assert {k: v for k, v in env.items() if k not in MULTI_TENANCY_ENV} == containers_env(
        one(chart_default, "Deployment")
    )
    # Tokens of the tenant accounts, in any namespace, and of the operator's own account, in its namespace.
    token = {"apiGroups": [""], "resources": ["serviceaccounts/token"], "verbs": ["create"]}
    assert one(objects, "ClusterRole", "gadget-operator-tenant-tokens")["rules"] == [
        {**token, "resourceNames": ["gadget-tenant"]}
    ]
    own = one(objects, "Role", "gadget-operator-own-token")
    assert own["metadata"]["namespace"] == NAMESPACE
    assert own["rules"] == [{**token, "resourceNames": [RELEASE]}]
    # IG's default scope, for the operator, cluster-wide.
    assert one(objects, "ClusterRole", "gadget-operator-ig-scope")["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["create"]}
    ]
    for kind, name in MULTI_TENANCY_OBJECTS:
        if kind.endswith("Binding"):
            binding = one(objects, kind, name)
            assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": kind[:-7], "name": name}
            assert binding["subjects"] == [{"kind": "ServiceAccount", "name": RELEASE, "namespace": NAMESPACE}]
            assert binding["metadata"].get("namespace") == one(objects, kind[:-7], name)["metadata"].get("namespace")


def test_multi_tenancy_values_reach_the_operator_and_its_rbac(helm: Path, tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "serviceAccount": {"name": "tracer"},
                "igMultiTenancy": {
                    "enabled": True,
                    "tenantServiceAccount": "ig-client",
                    "tokenLifetime": 1200000,
                    "scope": {"apiGroup": "gadget.kinvolk.io", "resource": "traces", "verb": "get"},
                },
            }
        )
    )
    objects = [
        o for o in yaml.safe_load_all(run([helm, "template", "ops", CHART, "-n", "tools", "-f", values]).stdout) if o
    ]
    validate_all(objects)
    env = containers_env(one(objects, "Deployment"))
    assert env["GADGET_OPERATOR_OPERATOR_SERVICE_ACCOUNT"] == "tools/tracer"
    assert env["GADGET_OPERATOR_TENANT_SERVICE_ACCOUNT"] == "ig-client"
    assert env["GADGET_OPERATOR_TOKEN_LIFETIME"] == "1200000"  # an integer, never 1.2e+06
    assert one(objects, "ClusterRole", "ops-gadget-operator-tenant-tokens")["rules"][0]["resourceNames"] == [
        "ig-client"
    ]
    own = one(objects, "Role", "ops-gadget-operator-own-token")
    assert (own["metadata"]["namespace"], own["rules"][0]["resourceNames"]) == ("tools", ["tracer"])
    assert one(objects, "ClusterRole", "ops-gadget-operator-ig-scope")["rules"] == [
        {"apiGroups": ["gadget.kinvolk.io"], "resources": ["traces"], "verbs": ["get"]}
    ]
    for binding in find(objects, "ClusterRoleBinding") + find(objects, "RoleBinding"):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "tracer", "namespace": "tools"}]


def test_multi_tenancy_without_the_operator_scope_or_any_rbac(helm_template: Render) -> None:
    own_scope = helm_template({"igMultiTenancy": {"enabled": True, "grantOperatorScope": False}})
    validate_all(own_scope)
    assert not names(own_scope) & {("ClusterRole", "gadget-operator-ig-scope")}
    assert {("ClusterRole", "gadget-operator-tenant-tokens"), ("Role", "gadget-operator-own-token")} <= names(own_scope)
    no_rbac = helm_template({"igMultiTenancy": {"enabled": True}, "rbac": {"create": False}})
    validate_all(no_rbac)
    assert not names(no_rbac) & set(MULTI_TENANCY_OBJECTS)
    assert containers_env(one(no_rbac, "Deployment"))["GADGET_OPERATOR_IG_MULTI_TENANCY"] == "true"


def test_lint_strict_with_multi_tenancy(helm: Path) -> None:
    run([helm, "lint", "--strict", CHART, "--set", "igMultiTenancy.enabled=true"])


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--set", "igMultiTenancy.tokenLifetime=599"], "/igMultiTenancy/tokenLifetime"),
        (["--set", "igMultiTenancy.tokenLifetime=3600.5"], "/igMultiTenancy/tokenLifetime"),
        (["--set", "igMultiTenancy.tenantServiceAccount=Team_A"], "/igMultiTenancy/tenantServiceAccount"),
        (["--set", "igMultiTenancy.scope.resource="], "/igMultiTenancy/scope/resource"),
        (["--set", "igMultiTenancy.scope.subresource=x"], "subresource"),
        (["--set", "igMultiTenancy.enabled=yes"], "/igMultiTenancy/enabled"),
    ],
)
def test_bad_multi_tenancy_values_are_refused(helm: Path, flags: list[str], message: str) -> None:
    result = run_failing([helm, "template", RELEASE, CHART, "--set", "igMultiTenancy.enabled=true", *flags])
    assert message in result.stderr, result.stderr


def test_values_schema_token_lifetime_minimum() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert defaults["igMultiTenancy"]["enabled"] is False
    for lifetime, valid in ((599, False), (600, True), (3600, True)):
        values = {**defaults, "igMultiTenancy": {**defaults["igMultiTenancy"], "tokenLifetime": lifetime}}
        assert validator.is_valid(values) is valid, lifetime
