"""The control API in the chart and the kustomize manifests: on the pod's loopback with no Service by
default (reaching it takes a port-forward), exposed only with TLS when asked for (chart value
control.expose, component manifests/base/control-tls), and every setting a flag the operator accepts."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from gadget_operator import cli
from gadget_operator.control import server
from gadget_operator.settings import ControlSettings
from tests.packaging.conftest import (
    BASE,
    CHART,
    RELEASE,
    containers_env,
    find,
    mounts_and_volumes,
    one,
    run_failing,
    validate_all,
)

Render = Callable[..., list[dict[str, Any]]]
EXPOSED = {"control": {"expose": {"enabled": True, "tlsSecret": "control-tls", "clientAuth": True}}}


def ports(deployment: Any) -> dict[str, int]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {p["name"]: p["containerPort"] for p in container["ports"]}


def test_by_default_the_control_api_stays_on_the_pods_loopback_without_a_service(chart_default: list[Any]) -> None:
    deployment = one(chart_default, "Deployment")
    assert not {name for name in containers_env(deployment) if name.startswith("GADGET_OPERATOR_CONTROL")}
    assert {"control-grpc", "control-http"}.isdisjoint(ports(deployment))
    assert not [s for s in find(chart_default, "Service") if s["metadata"]["name"].endswith("-control")]
    server.check(ControlSettings())  # the operator's own default: loopback, no TLS needed


def test_exposed_it_listens_on_the_pod_network_with_tls_behind_a_service(helm_template: Render) -> None:
    objects = helm_template(EXPOSED)
    validate_all(objects)
    deployment = one(objects, "Deployment")
    env = containers_env(deployment)
    tls_dir = "/etc/gadget-operator/control-tls"
    assert {k: v for k, v in env.items() if k.startswith("GADGET_OPERATOR_CONTROL")} == {
        "GADGET_OPERATOR_CONTROL_ADDRESS": "0.0.0.0:50051",
        "GADGET_OPERATOR_CONTROL_HTTP_ADDRESS": "0.0.0.0:50052",
        "GADGET_OPERATOR_CONTROL_TLS_CERT": f"{tls_dir}/tls.crt",
        "GADGET_OPERATOR_CONTROL_TLS_KEY": f"{tls_dir}/tls.key",
        "GADGET_OPERATOR_CONTROL_TLS_CLIENT_CA": f"{tls_dir}/ca.crt",
    }
    assert {"control-grpc": 50051, "control-http": 50052}.items() <= ports(deployment).items()
    mounts, volumes = mounts_and_volumes(deployment)
    assert mounts["control-tls"]["mountPath"] == tls_dir
    assert volumes["control-tls"]["secret"]["secretName"] == "control-tls"
    service = one(objects, "Service", f"{RELEASE}-control")
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [
        (50051, "control-grpc"),
        (50052, "control-http"),
    ]
    # The operator accepts these settings (with files at those paths, it would start).
    settings = ControlSettings(
        address=env["GADGET_OPERATOR_CONTROL_ADDRESS"],
        http_address=env["GADGET_OPERATOR_CONTROL_HTTP_ADDRESS"],
        tls_cert=env["GADGET_OPERATOR_CONTROL_TLS_CERT"],
        tls_key=env["GADGET_OPERATOR_CONTROL_TLS_KEY"],
        tls_client_ca=env["GADGET_OPERATOR_CONTROL_TLS_CLIENT_CA"],
    )
    server.check(settings)


def test_other_ports_stay_on_the_loopback(helm_template: Render) -> None:
    env = containers_env(one(helm_template({"control": {"grpcPort": 7000, "httpPort": 7001}}), "Deployment"))
    assert env["GADGET_OPERATOR_CONTROL_ADDRESS"] == "127.0.0.1:7000"
    assert env["GADGET_OPERATOR_CONTROL_HTTP_ADDRESS"] == "127.0.0.1:7001"
    assert "GADGET_OPERATOR_CONTROL_TLS_CERT" not in env


def test_the_operator_refuses_the_chart_exposure_without_its_tls_variables() -> None:
    result = CliRunner().invoke(cli.main, ["run"], env={"GADGET_OPERATOR_CONTROL_ADDRESS": "0.0.0.0:50051"})
    assert result.exit_code == 2
    assert "needs TLS" in result.output


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--set", "control.expose.enabled=true"], "control.expose.tlsSecret"),
        (["--set", "control.grpcPort=8080"], "/control/grpcPort"),
        (["--set", "control.httpPort=50051"], "must differ"),
        (["--set", "control.grpcPort=9090"], "metrics.port"),
        (["--set", "control.expose.tls=x"], "/control/expose"),
    ],
)
def test_bad_control_values_are_refused(helm: Path, flags: list[str], message: str) -> None:
    result = run_failing([helm, "template", RELEASE, CHART, *flags])
    assert message in result.stderr, result.stderr


def test_the_kustomize_component_exposes_it_as_the_chart_does(
    helm_template: Render, kustomize: Callable[[Path], list[dict[str, Any]]], tmp_path: Path
) -> None:
    component = BASE / "control-tls"
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(BASE, tmp_path)],
                "components": [os.path.relpath(component, tmp_path)],
            }
        )
    )
    objects = kustomize(tmp_path)
    validate_all(objects)
    chart = helm_template(
        {"control": {"expose": {"enabled": True, "tlsSecret": "gadget-operator-control-tls", "clientAuth": True}}}
    )
    deployment, chart_deployment = one(objects, "Deployment"), one(chart, "Deployment")
    assert containers_env(deployment) == containers_env(chart_deployment)
    assert ports(deployment) == ports(chart_deployment)
    mounts, volumes = mounts_and_volumes(deployment)
    chart_mounts, chart_volumes = mounts_and_volumes(chart_deployment)
    assert mounts["control-tls"] == chart_mounts["control-tls"]
    assert volumes["control-tls"] == chart_volumes["control-tls"]
    service = one(objects, "Service", "gadget-operator-control")
    chart_service = one(chart, "Service", f"{RELEASE}-control")
    assert service["spec"]["ports"] == chart_service["spec"]["ports"]
