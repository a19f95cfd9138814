"""Tenancy: a namespaced GadgetInstance observes only its own namespace, fail closed; only allowed
images run. What a user sees: the resource's status, and what the daemons run (nothing, when refused)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.conftest import Env


def condition(body: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in body["status"]["conditions"] if c["type"] == kind)


async def test_a_namespaced_resource_runs_with_its_own_namespace_filter(env: Env) -> None:
    spec = {"image": "trace_open", "params": {"operator.KubeManager.namespace": env.cluster.namespace}}
    uid = (await env.cluster.apply("own", spec))["metadata"]["uid"]
    await env.cluster.wait_phase("own", "Running")
    owned = await env.nodes.owned_by(uid)
    assert owned
    for instances in owned.values():
        assert [i.params["operator.KubeManager.namespace"] for i in instances] == [env.cluster.namespace]


@pytest.mark.parametrize(
    ("params", "said"),
    [
        ({"operator.KubeManager.namespace": "kube-system"}, "is another namespace"),
        ({"operator.KubeManager.namespace": "kube-system,default"}, "lists several namespaces"),
        ({"operator.KubeManager.namespace": "!kube-system"}, "excludes namespaces"),
        ({"operator.KubeManager.all-namespaces": "true"}, "would trace every namespace"),
    ],
    ids=["other", "list", "exclusion", "all-namespaces"],
)
async def test_each_widening_is_failed_with_its_message_and_creates_nothing(
    env: Env, params: dict[str, str], said: str
) -> None:
    uid = (await env.cluster.apply("wide", {"image": "trace_open", "params": params}))["metadata"]["uid"]
    body = await env.cluster.wait_phase("wide", "Failed")
    assert condition(body, "Ready")["reason"] == "NamespaceNotAllowed"
    assert said in body["status"]["message"]
    assert "ClusterGadgetInstance" in body["status"]["message"]
    assert await env.nodes.owned_by(uid) == {}


async def test_a_widened_update_removes_what_ran_confined(env: Env) -> None:
    uid = (await env.cluster.apply("trace", {"image": "trace_open"}))["metadata"]["uid"]
    await env.cluster.wait_phase("trace", "Running")
    await env.cluster.patch_spec("trace", {"params": {"operator.KubeManager.all-namespaces": "true"}})
    await env.cluster.wait_phase("trace", "Failed")
    await env.nodes.wait_owned(uid, lambda owned: not owned, what="nothing runs once the spec asks for more")


async def test_a_gadget_that_cannot_be_confined_is_refused_to_a_namespaced_resource(env: Env) -> None:
    uid = (await env.cluster.apply("host", {"image": "profile_blockio"}))["metadata"]["uid"]
    body = await env.cluster.wait_phase("host", "Failed")
    assert condition(body, "Ready")["reason"] == "GadgetNotConfinable"
    assert "cannot be confined" in body["status"]["message"]
    assert await env.nodes.owned_by(uid) == {}


async def test_an_image_outside_the_allowlist_is_refused(env: Env) -> None:
    spec = {"image": "registry.example.com/someone/trace_exec:1.0"}
    uid = (await env.cluster.apply("foreign", spec))["metadata"]["uid"]
    body = await env.cluster.wait_phase("foreign", "Failed")
    assert condition(body, "Ready")["reason"] == "ImageNotAllowed"
    assert "registry.example.com/someone/trace_exec:1.0 is not allowed" in body["status"]["message"]
    assert await env.nodes.owned_by(uid) == {}


async def test_an_image_the_admin_allows_runs(env: Env) -> None:
    await env.restart_operator(
        "--allowed-image", "ghcr.io/inspektor-gadget/*", "--allowed-image", "registry.example.com/*"
    )
    await env.cluster.apply("mirror", {"image": "registry.example.com/mirror/trace_exec:1.0"})
    await env.cluster.wait_phase("mirror", "Running")
