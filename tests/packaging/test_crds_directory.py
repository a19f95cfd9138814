"""crds/: every CRD generated from its one source, and `kubectl apply -f crds/` applies the CRDs only.

`kubectl apply -f DIR` reads every .yaml, .yml and .json file of the directory, whatever it holds: a
kustomization file there would be sent to the API server as an object and fail ("no matches for kind
Kustomization"). The kustomization is therefore named `Kustomization`, which kustomize accepts and
kubectl skips. Checked with the real kubectl (a client-side dry run against the kube emulator, which
serves the discovery and the CRD lookups kubectl makes), so a future file in crds/ cannot break it.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from gadget_operator.testing.kube_emulator import EmulatorThread
from tests.packaging.conftest import ROOT, run, run_failing

CRDS = ROOT / "crds"
EXPECTED = [
    "customresourcedefinition.apiextensions.k8s.io/clustergadgetinstances.gadget-operator.io",
    "customresourcedefinition.apiextensions.k8s.io/gadgetinstances.gadget-operator.io",
]


def _load_crdgen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gadget_operator_tools_crdgen", ROOT / "tools" / "crdgen.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


crdgen = _load_crdgen()


def kubeconfig(directory: Path, server: str) -> Path:
    path = directory / "kubeconfig"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "emulator", "cluster": {"server": server}}],
        "users": [{"name": "user", "user": {"token": "test"}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "user"}}],
        "current-context": "emulator",
    }
    path.write_text(yaml.safe_dump(config))
    return path


def dry_run_apply(kubectl: Path, directory: Path, tmp_path: Path, *, succeed: bool = True) -> tuple[list[str], str]:
    """What `kubectl apply -f DIRECTORY --dry-run=client -o name` would apply, and its stderr.

    --validate=false: the emulator serves no OpenAPI documents (the CRDs' validity is checked against
    the Kubernetes schemas in tests/manifests)."""
    with EmulatorThread() as server:
        command: list[str | Path] = [kubectl, "--kubeconfig", kubeconfig(tmp_path, server.url), "apply"]
        command += ["-f", f"{directory}/", "--dry-run=client", "-o", "name", "--validate=false"]
        result = run(command) if succeed else run_failing(command)
    return sorted(result.stdout.split()), result.stderr


def test_the_generated_crd_files_are_current() -> None:
    assert crdgen.stale() == [], "stale CRD files; run: python tools/crdgen.py"


def test_kubectl_apply_of_the_crds_directory_applies_every_crd_and_nothing_else(kubectl: Path, tmp_path: Path) -> None:
    applied, _ = dry_run_apply(kubectl, CRDS, tmp_path)
    assert applied == EXPECTED


def test_a_kustomization_yaml_in_the_directory_would_break_kubectl_apply(kubectl: Path, tmp_path: Path) -> None:
    """Why the kustomization has no extension: the same directory with `kustomization.yaml` fails."""
    broken = tmp_path / "crds"
    broken.mkdir()
    for path in CRDS.iterdir():
        target = broken / ("kustomization.yaml" if path.name == "Kustomization" else path.name)
        target.write_bytes(path.read_bytes())
    _, stderr = dry_run_apply(kubectl, broken, tmp_path, succeed=False)
    assert 'no matches for kind "Kustomization"' in stderr


def test_kustomize_of_the_crds_directory_renders_every_crd(
    kustomize: Callable[[Path], list[dict[str, Any]]],
) -> None:
    rendered = kustomize(CRDS)
    files = [yaml.safe_load(path.read_text()) for path in sorted(CRDS.glob("*.yaml"))]
    assert sorted(rendered, key=lambda crd: crd["metadata"]["name"]) == files
    assert [f"customresourcedefinition.apiextensions.k8s.io/{crd['metadata']['name']}" for crd in files] == EXPECTED
