"""The Argo CD health check (manifests/argocd/gadgetinstance-health.lua), run in real Lua interpreters.

Argo CD runs health checks in gopher-lua, a Lua 5.1: the script is run in Lua 5.1 and, to catch
anything version-specific, in Lua 5.4. Argo CD sets the global `obj` to the live object and reads
`status` and `message` from the table the script returns.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import lupa.lua51
import lupa.lua54
import pytest
import yaml

from gadget_operator import resource
from tests.packaging.conftest import ROOT

SCRIPT = ROOT / "manifests" / "argocd" / "gadgetinstance-health.lua"
CM_PATCH = ROOT / "manifests" / "argocd" / "argocd-cm-patch.yaml"
CM_KEY = "resource.customizations.health.gadget-operator.io_GadgetInstance"
CM_KEYS = [f"resource.customizations.health.gadget-operator.io_{kind.kind}" for kind in resource.KINDS]
ARGO_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}


def to_lua(runtime: Any, value: Any) -> Any:
    """Python data (as decoded from JSON) to Lua values: dicts and lists become tables, recursively."""
    if isinstance(value, Mapping):
        return runtime.table_from({key: to_lua(runtime, item) for key, item in value.items()})
    if isinstance(value, list):
        return runtime.table_from([to_lua(runtime, item) for item in value])  # 1-based, as Argo CD does
    return value


@pytest.fixture(params=["lua51", "lua54"])
def health(request: pytest.FixtureRequest) -> Any:
    module = {"lua51": lupa.lua51, "lua54": lupa.lua54}[request.param]
    script = SCRIPT.read_text()

    def check(obj: Mapping[str, Any]) -> dict[str, Any]:
        runtime = module.LuaRuntime()
        runtime.globals().obj = to_lua(runtime, obj)
        result = runtime.execute(script)
        outcome = dict(result.items())
        assert outcome["status"] in ARGO_STATUSES
        assert isinstance(outcome.get("message"), str)
        return outcome

    return check


def condition(kind: str, status: str, reason: str, message: str, generation: int = 3) -> dict[str, Any]:
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": "2025-01-01T00:00:00Z",
    }


READY: dict[str, Any] = {
    "apiVersion": "gadget-operator.io/v1alpha1",
    "kind": "GadgetInstance",
    "metadata": {"name": "trace-exec", "namespace": "default", "generation": 3},
    "spec": {"image": "trace_exec"},
    "status": {
        "observedGeneration": 3,
        "phase": "Running",
        "ready": "3/3",
        "message": "Running on 3 of 3 nodes",
        "desiredNodes": 3,
        "runningNodes": 3,
        "failedNodes": 0,
        "pendingNodes": 0,
        "conditions": [
            condition("Ready", "True", "AllNodesRunning", "Running on 3 of 3 nodes"),
            condition("Progressing", "False", "Done", ""),
            condition("Degraded", "False", "NoFailures", ""),
        ],
    },
}


def variant(**status_changes: Any) -> dict[str, Any]:
    obj = copy.deepcopy(READY)
    obj["status"].update(status_changes)
    return obj


def test_ready_is_healthy(health: Any) -> None:
    assert health(READY) == {"status": "Healthy", "message": "Running on 3 of 3 nodes"}


def test_status_of_an_older_generation_is_progressing(health: Any) -> None:
    obj = variant(observedGeneration=2)  # the user changed the spec; the operator has not seen it yet
    assert health(obj) == {"status": "Progressing", "message": "Waiting for the operator to observe generation 3"}


def test_missing_status_is_progressing(health: Any) -> None:
    obj = copy.deepcopy(READY)
    del obj["status"]
    assert health(obj) == {"status": "Progressing", "message": "Waiting for the operator to observe generation 3"}


def test_status_without_observed_generation_is_progressing(health: Any) -> None:
    obj = copy.deepcopy(READY)
    del obj["status"]["observedGeneration"]
    assert health(obj)["status"] == "Progressing"


def test_degraded_condition_is_degraded_with_its_message(health: Any) -> None:
    message = "node-2: image ghcr.io/x/unknown cannot be pulled"
    obj = variant(
        phase="Degraded",
        message="Running on 2 of 3 nodes; 1 failed",
        conditions=[
            condition("Ready", "False", "NodesFailed", "Running on 2 of 3 nodes"),
            condition("Progressing", "False", "Done", ""),
            condition("Degraded", "True", "NodesFailed", message),
        ],
    )
    assert health(obj) == {"status": "Degraded", "message": message}


def test_failed_phase_is_degraded(health: Any) -> None:
    obj = variant(
        phase="Failed",
        message="no node runs the gadget: every daemon refused it",
        conditions=[condition("Ready", "False", "Failed", "Running on 0 of 3 nodes")],
    )
    assert health(obj) == {"status": "Degraded", "message": "no node runs the gadget: every daemon refused it"}


def test_suspended(health: Any) -> None:
    obj = variant(phase="Suspended", message="Suspended", conditions=[condition("Ready", "False", "Suspended", "")])
    obj["spec"]["suspend"] = True
    assert health(obj) == {"status": "Suspended", "message": "Suspended"}


def test_suspend_not_yet_observed_is_progressing(health: Any) -> None:
    obj = copy.deepcopy(READY)
    obj["spec"]["suspend"] = True
    obj["metadata"]["generation"] = 4
    assert health(obj)["status"] == "Progressing"


def test_not_ready_yet_is_progressing_with_the_ready_message(health: Any) -> None:
    obj = variant(
        phase="Pending",
        message="Starting on 3 nodes",
        conditions=[
            condition("Ready", "False", "NodesPending", "Running on 1 of 3 nodes"),
            condition("Progressing", "True", "Creating", "Creating on 2 nodes"),
            condition("Degraded", "False", "NoFailures", ""),
        ],
    )
    assert health(obj) == {"status": "Progressing", "message": "Running on 1 of 3 nodes"}


def test_no_conditions_yet_is_progressing(health: Any) -> None:
    obj = variant(phase="Pending", message="")
    del obj["status"]["conditions"]
    assert health(obj) == {"status": "Progressing", "message": "Waiting for the gadget to run on its nodes"}


def test_the_config_map_patch_carries_the_same_script() -> None:
    patch = yaml.safe_load(CM_PATCH.read_text())
    assert (patch["apiVersion"], patch["kind"]) == ("v1", "ConfigMap")
    assert patch["metadata"]["name"] == "argocd-cm"
    assert patch["data"][CM_KEY] == SCRIPT.read_text()


def test_the_config_map_patch_covers_every_kind_with_the_same_script() -> None:
    """Argo CD looks a health check up by group and kind: the cluster kind needs its own key."""
    patch = yaml.safe_load(CM_PATCH.read_text())
    assert sorted(patch["data"]) == sorted(CM_KEYS)
    assert all(patch["data"][key] == SCRIPT.read_text() for key in CM_KEYS)


def test_a_cluster_gadget_instance_is_judged_like_a_gadget_instance(health: Any) -> None:
    cluster = copy.deepcopy(READY) | {"kind": "ClusterGadgetInstance"}
    cluster["metadata"] = {"name": "trace-all", "generation": 3}  # no namespace
    assert health(cluster) == health(READY) == {"status": "Healthy", "message": "Running on 3 of 3 nodes"}
    cluster["status"]["phase"] = "Failed"
    cluster["status"]["conditions"] = [condition("Ready", "False", "Failed", "the gadget rejected this spec")]
    cluster["status"]["message"] = "the gadget rejected this spec"
    assert health(cluster) == {"status": "Degraded", "message": "the gadget rejected this spec"}
