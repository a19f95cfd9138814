"""The kustomize manifests: manifests/base (pods discovery), overlays/standalone-ig (static, mTLS),
overlays/ha (two replicas, leader election) and the component base/ig-multi-tenancy (Inspektor Gadget's
multi-tenancy)."""

from __future__ import annotations

from typing import Any

import yaml

from tests.packaging.conftest import (
    BASE,
    IG_MULTI_TENANCY,
    MULTI_TENANCY_OBJECTS,
    NAMESPACE,
    OVERLAY,
    ROOT,
    containers_env,
    find,
    mounts_and_volumes,
    one,
    resolved_env,
    validate_all,
)


def test_base_renders_valid_objects(base: list[dict[str, Any]]) -> None:
    assert validate_all(base) == []
    assert sorted((o["kind"], o["metadata"]["name"]) for o in base) == [
        ("ClusterRole", "gadget-operator"),
        ("ClusterRole", "gadget-operator-clustergadgetinstances-admin"),
        ("ClusterRole", "gadget-operator-gadgetinstances-edit"),
        ("ClusterRole", "gadget-operator-gadgetinstances-view"),
        ("ClusterRoleBinding", "gadget-operator"),
        ("CustomResourceDefinition", "clustergadgetinstances.gadget-operator.io"),
        ("CustomResourceDefinition", "gadgetinstances.gadget-operator.io"),
        ("Deployment", "gadget-operator"),
        ("Namespace", NAMESPACE),
        ("Role", "gadget-operator-daemon-pods"),
        ("RoleBinding", "gadget-operator-daemon-pods"),
        ("Service", "gadget-operator-metrics"),
        ("ServiceAccount", "gadget-operator"),
        ("ValidatingAdmissionPolicy", "gadget-operator-tenancy"),
        ("ValidatingAdmissionPolicyBinding", "gadget-operator-tenancy"),
    ]


def test_base_uses_the_repository_crds_unchanged(base: list[dict[str, Any]]) -> None:
    crds = [yaml.safe_load(path.read_text()) for path in sorted((ROOT / "crds").glob("*.yaml"))]
    assert len(crds) == 2
    assert sorted(find(base, "CustomResourceDefinition"), key=lambda c: c["metadata"]["name"]) == crds


def test_base_namespaces(base: list[dict[str, Any]]) -> None:
    for obj in base:
        namespace = obj["metadata"].get("namespace")
        if obj["kind"] in ("Role", "RoleBinding"):
            assert namespace == "gadget"  # the daemon namespace, where the daemon pods are
        elif obj["kind"] in (
            "Namespace",
            "CustomResourceDefinition",
            "ClusterRole",
            "ClusterRoleBinding",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding",
        ):
            assert namespace is None
        else:
            assert namespace == NAMESPACE
    for binding in find(base, "RoleBinding") + find(base, "ClusterRoleBinding"):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "gadget-operator", "namespace": NAMESPACE}]


def test_base_deployment(base: list[dict[str, Any]]) -> None:
    deployment = one(base, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert container["image"] == "ghcr.io/gadget-operator/gadget-operator:0.1.0"
    assert pod["serviceAccountName"] == one(base, "ServiceAccount")["metadata"]["name"]
    assert pod["automountServiceAccountToken"] is True
    assert container["resources"] == {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}}
    env = containers_env(deployment)
    assert env["GADGET_OPERATOR_STANDALONE"] == "true"
    assert env["GADGET_OPERATOR_DISCOVERY"] == "pods"
    assert env["GADGET_OPERATOR_DAEMON_NAMESPACE"] == one(base, "Role")["metadata"]["namespace"]


def test_base_metrics_service_reaches_the_operator(base: list[dict[str, Any]]) -> None:
    service = one(base, "Service")
    deployment = one(base, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}]
    assert {"name": "metrics", "containerPort": 9090, "protocol": "TCP"} in container["ports"]
    assert containers_env(deployment)["GADGET_OPERATOR_METRICS_PORT"] == "9090"
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= (
        deployment["spec"]["template"]["metadata"]["labels"].items()
    )


def test_overlay_renders_valid_objects(overlay: list[dict[str, Any]]) -> None:
    assert validate_all(overlay) == []


def test_overlay_drops_the_daemon_pods_access(overlay: list[dict[str, Any]]) -> None:
    assert find(overlay, "Role") == []
    assert find(overlay, "RoleBinding") == []
    for rule in one(overlay, "ClusterRole", "gadget-operator")["rules"]:
        assert "pods" not in rule["resources"]


def test_overlay_static_discovery_from_the_config_map(overlay: list[dict[str, Any]]) -> None:
    deployment = one(overlay, "Deployment")
    env = containers_env(deployment)
    mounts, volumes = mounts_and_volumes(deployment)

    assert env["GADGET_OPERATOR_DISCOVERY"] == "static"
    assert env["GADGET_OPERATOR_STATIC_NODES"] == "/etc/gadget-operator/nodes.yaml"
    # The pods-discovery settings are gone, not merely ignored.
    assert not {k for k in env if k.startswith("GADGET_OPERATOR_DAEMON_")}

    config_map = one(overlay, "ConfigMap")
    # Generated, with a hash of its content in the name, so that a change rolls the Deployment.
    assert config_map["metadata"]["name"].startswith("gadget-operator-static-nodes-")
    assert config_map["metadata"]["namespace"] == NAMESPACE
    assert volumes["static-nodes"]["configMap"]["name"] == config_map["metadata"]["name"]
    assert mounts["static-nodes"]["mountPath"] == env["GADGET_OPERATOR_STATIC_NODES"]
    nodes = yaml.safe_load(config_map["data"][mounts["static-nodes"]["subPath"]])
    assert nodes == yaml.safe_load((OVERLAY / "nodes.yaml").read_text())
    assert nodes
    assert all(isinstance(a, str) and a.startswith(("tcp://", "unix://")) for a in nodes.values())


def test_overlay_mutual_tls_from_the_secret(overlay: list[dict[str, Any]]) -> None:
    deployment = one(overlay, "Deployment")
    env = containers_env(deployment)
    mounts, volumes = mounts_and_volumes(deployment)

    assert volumes["daemon-tls"]["secret"]["secretName"] == "gadget-operator-daemon-tls"
    assert mounts["daemon-tls"] == {"name": "daemon-tls", "mountPath": "/etc/gadget-operator/tls", "readOnly": True}
    assert env["GADGET_OPERATOR_TLS_CERT"] == "/etc/gadget-operator/tls/tls.crt"
    assert env["GADGET_OPERATOR_TLS_KEY"] == "/etc/gadget-operator/tls/tls.key"
    assert env["GADGET_OPERATOR_TLS_CA"] == "/etc/gadget-operator/tls/ca.crt"
    # The key is mode 0440: readable by the operator through the pod's fsGroup.
    assert volumes["daemon-tls"]["secret"]["defaultMode"] == 0o440
    pod_security = deployment["spec"]["template"]["spec"]["securityContext"]
    assert pod_security["fsGroup"] == pod_security["runAsGroup"]


def test_overlay_keeps_the_rest_of_the_base(base: list[dict[str, Any]], overlay: list[dict[str, Any]]) -> None:
    unchanged = ("Namespace", "CustomResourceDefinition", "ServiceAccount", "ClusterRoleBinding")
    for kind in unchanged:
        assert find(overlay, kind) == find(base, kind), kind
    # The ClusterRole differs only in `get` on nodes (the per-node store confirms a node is gone).
    base_rules = one(base, "ClusterRole", "gadget-operator")["rules"]
    overlay_rules = one(overlay, "ClusterRole", "gadget-operator")["rules"]
    changed = [(b, o) for b, o in zip(base_rules, overlay_rules, strict=True) if b != o]
    assert changed == [
        ({**changed[0][0], "verbs": ["list", "watch"]}, {**changed[0][0], "verbs": ["get", "list", "watch"]})
    ]
    base_env = containers_env(one(base, "Deployment"))
    overlay_env = containers_env(one(overlay, "Deployment"))
    for name in ("GADGET_OPERATOR_STANDALONE", "GADGET_OPERATOR_LIVENESS", "GADGET_OPERATOR_METRICS_PORT"):
        assert overlay_env[name] == base_env[name]


# -- overlays/ha ----------------------------------------------------------------------------------------------

LEASE_ROLE = "gadget-operator-leader-election"


def test_ha_overlay_renders_valid_objects(base: list[dict[str, Any]], ha_overlay: list[dict[str, Any]]) -> None:
    assert validate_all(ha_overlay) == []
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in ha_overlay)
    assert kinds == sorted(
        [(o["kind"], o["metadata"]["name"]) for o in base] + [("Role", LEASE_ROLE), ("RoleBinding", LEASE_ROLE)]
    )


def test_ha_overlay_runs_two_replicas_that_elect_a_leader(ha_overlay: list[dict[str, Any]]) -> None:
    deployment = one(ha_overlay, "Deployment")
    env = containers_env(deployment)
    assert deployment["spec"]["replicas"] == 2
    # Only the Lease holder works: a rollout may run old and new replicas side by side.
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate"}
    assert env["GADGET_OPERATOR_STANDALONE"] == "false"  # --leader-elect
    assert env["GADGET_OPERATOR_LEASE_NAME"] == "gadget-operator"
    # The Lease lives where the operator runs, and where its Role is.
    assert env["GADGET_OPERATOR_LEASE_NAMESPACE"] == deployment["metadata"]["namespace"] == NAMESPACE
    assert one(ha_overlay, "Role", LEASE_ROLE)["metadata"]["namespace"] == NAMESPACE
    duration, deadline, retry = (
        float(env[f"GADGET_OPERATOR_{name}"]) for name in ("LEASE_DURATION", "RENEW_DEADLINE", "RETRY_PERIOD")
    )
    assert (duration, deadline, retry) == (10, 7, 2)
    # A standby takes over within lease duration + 2 retry periods of a crash: 14 s.
    assert duration + 2 * retry <= 15


def test_ha_overlay_role_reads_and_renews_only_its_lease(ha_overlay: list[dict[str, Any]]) -> None:
    lease = containers_env(one(ha_overlay, "Deployment"))["GADGET_OPERATOR_LEASE_NAME"]
    role = one(ha_overlay, "Role", LEASE_ROLE)
    # The operator's calls (operator/gadget_operator/leadership.py): GET and PUT of its Lease, and a POST
    # that creates it when there is none. RBAC cannot limit a create to a name.
    assert role["rules"] == [
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": [lease],
            "verbs": ["get", "update"],
        },
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
    ]


def test_ha_overlay_binds_the_lease_role_to_the_operator(ha_overlay: list[dict[str, Any]]) -> None:
    binding = one(ha_overlay, "RoleBinding", LEASE_ROLE)
    deployment = one(ha_overlay, "Deployment")
    account = one(ha_overlay, "ServiceAccount")
    assert binding["metadata"]["namespace"] == one(ha_overlay, "Role", LEASE_ROLE)["metadata"]["namespace"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": LEASE_ROLE}
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": account["metadata"]["namespace"]}
    ]
    assert account["metadata"]["namespace"] == deployment["metadata"]["namespace"]


def test_ha_overlay_keeps_the_rest_of_the_base(base: list[dict[str, Any]], ha_overlay: list[dict[str, Any]]) -> None:
    for obj in base:
        if obj["kind"] != "Deployment":
            assert one(ha_overlay, obj["kind"], obj["metadata"]["name"]) == obj
    base_deployment, ha_deployment = one(base, "Deployment"), one(ha_overlay, "Deployment")
    # Only replicas, strategy and the leader-election settings differ.
    assert {k: v for k, v in ha_deployment["spec"].items() if k not in ("replicas", "strategy", "template")} == {
        k: v for k, v in base_deployment["spec"].items() if k not in ("replicas", "strategy", "template")
    }
    base_env, ha_env = containers_env(base_deployment), containers_env(ha_deployment)
    assert {k: v for k, v in ha_env.items() if k in base_env} == base_env | {"GADGET_OPERATOR_STANDALONE": "false"}
    assert set(ha_env) - set(base_env) == {
        "GADGET_OPERATOR_LEASE_NAME",
        "GADGET_OPERATOR_LEASE_NAMESPACE",
        "GADGET_OPERATOR_LEASE_DURATION",
        "GADGET_OPERATOR_RENEW_DEADLINE",
        "GADGET_OPERATOR_RETRY_PERIOD",
    }
    (base_container,) = base_deployment["spec"]["template"]["spec"]["containers"]
    (ha_container,) = ha_deployment["spec"]["template"]["spec"]["containers"]
    assert {k: v for k, v in ha_container.items() if k != "env"} == {
        k: v for k, v in base_container.items() if k != "env"
    }
    assert ha_deployment["spec"]["template"]["metadata"] == base_deployment["spec"]["template"]["metadata"]
    assert {k: v for k, v in ha_deployment["spec"]["template"]["spec"].items() if k != "containers"} == {
        k: v for k, v in base_deployment["spec"]["template"]["spec"].items() if k != "containers"
    }


# -- the component ig-multi-tenancy -------------------------------------------------------------------------


def test_ig_multi_tenancy_component_is_a_component() -> None:
    kustomization = yaml.safe_load((IG_MULTI_TENANCY / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Component"
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1alpha1"
    # Its usage comment says how to add it, like the other component's.
    assert "components: [../../base/ig-multi-tenancy]" in (IG_MULTI_TENANCY / "kustomization.yaml").read_text()
    # The base does not add it, nor define what it adds.
    base_kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    assert "components" not in base_kustomization


def test_ig_multi_tenancy_component_renders_valid_objects(
    base: list[dict[str, Any]], ig_multi_tenancy_overlay: list[dict[str, Any]]
) -> None:
    assert validate_all(ig_multi_tenancy_overlay) == []
    before = sorted((o["kind"], o["metadata"]["name"]) for o in base)
    after = sorted((o["kind"], o["metadata"]["name"]) for o in ig_multi_tenancy_overlay)
    assert after == sorted(before + MULTI_TENANCY_OBJECTS)
    for obj in base:  # nothing else changes
        if obj["kind"] != "Deployment":
            assert one(ig_multi_tenancy_overlay, obj["kind"], obj["metadata"]["name"]) == obj


def test_ig_multi_tenancy_component_sets_the_operator_env(
    base: list[dict[str, Any]], ig_multi_tenancy_overlay: list[dict[str, Any]]
) -> None:
    base_deployment = one(base, "Deployment")
    deployment = one(ig_multi_tenancy_overlay, "Deployment")
    (base_container,) = base_deployment["spec"]["template"]["spec"]["containers"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    # The base's env comes first, unchanged, and defines neither helper variable itself.
    assert container["env"][: len(base_container["env"])] == base_container["env"]
    assert not {"POD_NAMESPACE", "SERVICE_ACCOUNT_NAME"} & {e["name"] for e in base_container["env"]}
    assert container["env"][len(base_container["env"]) :] == [
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "SERVICE_ACCOUNT_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
        {"name": "GADGET_OPERATOR_IG_MULTI_TENANCY", "value": "true"},
        # Expanded by the kubelet from the two variables above, defined earlier in the list.
        {"name": "GADGET_OPERATOR_OPERATOR_SERVICE_ACCOUNT", "value": "$(POD_NAMESPACE)/$(SERVICE_ACCOUNT_NAME)"},
        {"name": "GADGET_OPERATOR_TENANT_SERVICE_ACCOUNT", "value": "gadget-tenant"},
        {"name": "GADGET_OPERATOR_TOKEN_LIFETIME", "value": "3600"},
    ]
    env = resolved_env(deployment)
    assert env["GADGET_OPERATOR_OPERATOR_SERVICE_ACCOUNT"] == f"{NAMESPACE}/gadget-operator"
    assert {k: v for k, v in env.items() if k in containers_env(base_deployment)} == containers_env(base_deployment)
    # Only the env differs from the base's Deployment.
    assert {k: v for k, v in container.items() if k != "env"} == {k: v for k, v in base_container.items() if k != "env"}


def test_ig_multi_tenancy_component_rbac(ig_multi_tenancy_overlay: list[dict[str, Any]]) -> None:
    objects = ig_multi_tenancy_overlay
    env = resolved_env(one(objects, "Deployment"))
    operator_namespace, operator_account = env["GADGET_OPERATOR_OPERATOR_SERVICE_ACCOUNT"].split("/")
    token = {"apiGroups": [""], "resources": ["serviceaccounts/token"], "verbs": ["create"]}
    # Tokens of the tenant account in any namespace, and of the operator's own account in its namespace.
    assert one(objects, "ClusterRole", "gadget-operator-tenant-tokens")["rules"] == [
        {**token, "resourceNames": [env["GADGET_OPERATOR_TENANT_SERVICE_ACCOUNT"]]}
    ]
    own = one(objects, "Role", "gadget-operator-own-token")
    assert own["metadata"]["namespace"] == operator_namespace
    assert own["rules"] == [{**token, "resourceNames": [operator_account]}]
    # IG's default scope (apiGroup "", pods, create), for the operator, cluster-wide.
    assert one(objects, "ClusterRole", "gadget-operator-ig-scope")["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["create"]}
    ]
    account = one(objects, "ServiceAccount")["metadata"]
    assert (account["namespace"], account["name"]) == (operator_namespace, operator_account)
    for kind, name in MULTI_TENANCY_OBJECTS:
        if kind.endswith("Binding"):
            binding = one(objects, kind, name)
            role_kind = kind.removesuffix("Binding")
            assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": name}
            assert binding["metadata"].get("namespace") == one(objects, role_kind, name)["metadata"].get("namespace")
            assert binding["subjects"] == [
                {"kind": "ServiceAccount", "name": operator_account, "namespace": operator_namespace}
            ]
