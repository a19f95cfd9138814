"""The kustomize manifests: manifests/base (pods discovery) and overlays/standalone-ig (static, mTLS)."""

from __future__ import annotations

from typing import Any

import yaml

from tests.packaging.conftest import (
    NAMESPACE,
    OVERLAY,
    ROOT,
    containers_env,
    find,
    mounts_and_volumes,
    one,
    validate_all,
)


def test_base_renders_valid_objects(base: list[dict[str, Any]]) -> None:
    assert validate_all(base) == []
    assert sorted((o["kind"], o["metadata"]["name"]) for o in base) == [
        ("ClusterRole", "gadget-operator"),
        ("ClusterRoleBinding", "gadget-operator"),
        ("CustomResourceDefinition", "gadgetinstances.gadget-operator.io"),
        ("Deployment", "gadget-operator"),
        ("Namespace", NAMESPACE),
        ("Role", "gadget-operator-daemon-pods"),
        ("RoleBinding", "gadget-operator-daemon-pods"),
        ("Service", "gadget-operator-metrics"),
        ("ServiceAccount", "gadget-operator"),
    ]


def test_base_uses_the_repository_crd_unchanged(base: list[dict[str, Any]]) -> None:
    crd = yaml.safe_load((ROOT / "crds" / "gadgetinstances.gadget-operator.io.yaml").read_text())
    assert one(base, "CustomResourceDefinition") == crd


def test_base_namespaces(base: list[dict[str, Any]]) -> None:
    for obj in base:
        namespace = obj["metadata"].get("namespace")
        if obj["kind"] in ("Role", "RoleBinding"):
            assert namespace == "gadget"  # the daemon namespace, where the daemon pods are
        elif obj["kind"] in ("Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"):
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
    for rule in one(overlay, "ClusterRole")["rules"]:
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
    base_rules, overlay_rules = one(base, "ClusterRole")["rules"], one(overlay, "ClusterRole")["rules"]
    changed = [(b, o) for b, o in zip(base_rules, overlay_rules, strict=True) if b != o]
    assert changed == [
        ({**changed[0][0], "verbs": ["list", "watch"]}, {**changed[0][0], "verbs": ["get", "list", "watch"]})
    ]
    base_env = containers_env(one(base, "Deployment"))
    overlay_env = containers_env(one(overlay, "Deployment"))
    for name in ("GADGET_OPERATOR_STANDALONE", "GADGET_OPERATOR_LIVENESS", "GADGET_OPERATOR_METRICS_PORT"):
        assert overlay_env[name] == base_env[name]
