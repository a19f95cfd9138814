"""Defence in depth with Inspektor Gadget's own multi-tenancy (``--ig-multi-tenancy``): the daemons
authenticate every call (a ServiceAccount token for the audience ``inspektor-gadget``) and let it trace
only the namespaces that account may use. A GadgetInstance's calls carry a token of its namespace's
tenant account, so the daemon checks the tenant's rights, not the operator's; a missing account, a
token the daemon refuses and a tenant without rights are reported on the resource, and nothing runs.

The daemons' reviews (TokenReview, SubjectAccessReview) go to the test's API server: the emulator, or a
real one with GADGET_E2E_KUBECONFIG."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes.aio import client as kclient

from gadget_operator.simulator.multitenancy import AUDIENCE, MultiTenancy
from gadget_operator.testing.kube_emulator import KubeEmulator
from tests.integration.conftest import STORES, Env, static_env
from tests.integration.harness import CGI, Cluster, eventually

OPERATOR_ACCOUNT = "gadget-operator"
TENANT_ACCOUNT = "gadget-tenant"  # the operator's default --tenant-service-account
POLICY_PARAM = "operator.KubeManager.multi-tenancy-policy"


async def create_account(cluster: Cluster, name: str) -> None:
    await cluster.core.create_namespaced_service_account(cluster.namespace, {"metadata": {"name": name}})


async def allow_daemon_scope(cluster: Cluster, account: str) -> None:
    """IG's default scope (``create pods``) in the test's namespace, for ``account`` there."""
    rbac = kclient.RbacAuthorizationV1Api(cluster.api)
    role = f"{account}-gadget-scope"
    await rbac.create_namespaced_role(
        cluster.namespace,
        {"metadata": {"name": role}, "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["create"]}]},
    )
    await rbac.create_namespaced_role_binding(
        cluster.namespace,
        {
            "metadata": {"name": role},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": cluster.namespace}],
        },
    )


def operator_args(cluster: Cluster) -> tuple[str, ...]:
    return ("--ig-multi-tenancy", "--operator-service-account", f"{cluster.namespace}/{OPERATOR_ACCOUNT}")


@pytest.fixture(params=STORES)
async def tenancy_env(
    request: pytest.FixtureRequest, cluster: tuple[Cluster, KubeEmulator | None]
) -> AsyncIterator[Env]:
    """Daemons with IG's multi-tenancy and an operator with ``--ig-multi-tenancy``, whose own account may
    use the test's namespace (to list what runs there); the tenant account is up to each test."""
    test_cluster = cluster[0]
    await create_account(test_cluster, OPERATOR_ACCOUNT)
    await allow_daemon_scope(test_cluster, OPERATOR_ACCOUNT)
    async with static_env(
        cluster, request.param, multi_tenancy=MultiTenancy(test_cluster.api), operator_args=operator_args(test_cluster)
    ) as env:
        yield env


async def mint_token(cluster: Cluster, account: str) -> str:
    request = {"spec": {"audiences": [AUDIENCE], "expirationSeconds": 600}}
    issued = await cluster.core.create_namespaced_service_account_token(account, cluster.namespace, request)
    return str(issued.status.token)


async def token_accepted(cluster: Cluster, token: str) -> bool:
    review = {"spec": {"token": token, "audiences": [AUDIENCE]}}
    reviewed = await kclient.AuthenticationV1Api(cluster.api).create_token_review(review)
    return bool(reviewed.status and reviewed.status.authenticated)


def node_messages(body: dict[str, Any]) -> list[str]:
    return [entry.get("message", "") for entry in body.get("status", {}).get("nodes", [])]


async def wait_every_node_says(env: Env, name: str, text: str, *, phase: str | None = None) -> dict[str, Any]:
    def check(body: dict[str, Any]) -> bool:
        messages = node_messages(body)
        said = len(messages) == len(env.nodes.fleet.nodes) and all(text in m for m in messages)
        return said and (phase is None or body["status"].get("phase") == phase)

    return await env.cluster.wait_status(name, check)


async def test_a_namespaced_resource_runs_as_its_tenant(tenancy_env: Env) -> None:
    env = tenancy_env
    await create_account(env.cluster, TENANT_ACCOUNT)
    await allow_daemon_scope(env.cluster, TENANT_ACCOUNT)
    uid = (await env.cluster.apply("trace", {"image": "trace_exec"}))["metadata"]["uid"]
    await env.cluster.wait_phase("trace", "Running")
    owned = await env.nodes.owned_by(uid)
    assert len(owned) == len(env.nodes.fleet.nodes)
    for instances in owned.values():
        # The daemon applied its policy to the call (a daemon without multi-tenancy leaves no such mark).
        assert [i.params.get(POLICY_PARAM) for i in instances] == ["true"]
        assert [i.params["operator.KubeManager.namespace"] for i in instances] == [env.cluster.namespace]


async def test_a_tenant_the_daemons_do_not_allow_is_denied_even_though_the_operator_may(tenancy_env: Env) -> None:
    """The operator's own account may use the namespace; the tenant's may not: the daemon denies it."""
    env = tenancy_env
    await create_account(env.cluster, TENANT_ACCOUNT)
    uid = (await env.cluster.apply("trace", {"image": "trace_exec"}))["metadata"]["uid"]
    tenant = f"{env.cluster.namespace}/{TENANT_ACCOUNT}"
    body = await wait_every_node_says(env, "trace", f"the daemon denied it of ServiceAccount {tenant}", phase="Failed")
    assert all("authorized" in message for message in node_messages(body))
    assert await env.nodes.owned_by(uid) == {}
    await allow_daemon_scope(env.cluster, TENANT_ACCOUNT)  # the admin grants it: the next pass runs it
    await env.cluster.wait_phase("trace", "Running", within=40)


async def test_without_the_tenant_account_the_resource_fails_and_says_what_to_do(tenancy_env: Env) -> None:
    env = tenancy_env
    uid = (await env.cluster.apply("trace", {"image": "trace_exec"}))["metadata"]["uid"]
    tenant = f"{env.cluster.namespace}/{TENANT_ACCOUNT}"
    body = await wait_every_node_says(env, "trace", f"no token for ServiceAccount {tenant}", phase="Failed")
    assert all("create that ServiceAccount" in message for message in node_messages(body))
    assert await env.nodes.owned_by(uid) == {}
    await create_account(env.cluster, TENANT_ACCOUNT)
    await allow_daemon_scope(env.cluster, TENANT_ACCOUNT)
    await env.cluster.wait_phase("trace", "Running", within=40)  # after the operator's retry interval


async def test_a_token_the_daemons_no_longer_accept_is_reported(tenancy_env: Env) -> None:
    """The tenant account is deleted while the operator still holds its token: the daemons' TokenReview
    refuses it, and the next change of the resource says so. Deleting the resource still works (removals
    are the operator's own calls)."""
    env = tenancy_env
    await create_account(env.cluster, TENANT_ACCOUNT)
    await allow_daemon_scope(env.cluster, TENANT_ACCOUNT)
    uid = (await env.cluster.apply("trace", {"image": "trace_exec"}))["metadata"]["uid"]
    await env.cluster.wait_phase("trace", "Running")
    running = await env.nodes.owned_by(uid)
    # A real API server caches each token's review for a few seconds: once a token reviewed after the
    # operator's last call as the tenant is refused, the operator's is too.
    witness = await mint_token(env.cluster, TENANT_ACCOUNT)
    assert await token_accepted(env.cluster, witness)
    await env.cluster.core.delete_namespaced_service_account(TENANT_ACCOUNT, env.cluster.namespace)

    async def refused() -> bool:
        return not await token_accepted(env.cluster, witness)

    await eventually(refused, within=60, what="the deleted account's tokens refused")
    await env.cluster.patch_spec("trace", {"params": {"operator.KubeManager.podname": "web"}})
    tenant = f"{env.cluster.namespace}/{TENANT_ACCOUNT}"
    body = await wait_every_node_says(env, "trace", f"the daemon did not accept the token of ServiceAccount {tenant}")
    assert all("token was not authenticated" in message for message in node_messages(body))
    assert all("keeps running" in message for message in node_messages(body)), node_messages(body)
    assert await env.nodes.owned_by(uid) == running  # nothing new, and the previous spec's instances stay
    await env.cluster.delete("trace")
    await env.cluster.wait_gone("trace")
    assert await env.nodes.owned_by(uid) == {}


async def test_a_cluster_gadget_instance_runs_as_the_operator(tenancy_env: Env) -> None:
    env = tenancy_env
    spec = {"image": "trace_exec", "params": {"operator.KubeManager.namespace": env.cluster.namespace}}
    uid = (await env.cluster.apply("cluster-trace", spec, kind=CGI))["metadata"]["uid"]
    await env.cluster.wait_phase("cluster-trace", "Running", kind=CGI)
    owned = await env.nodes.owned_by(uid)
    assert [i.params.get(POLICY_PARAM) for instances in owned.values() for i in instances] == ["true"] * len(owned)


@pytest.mark.parametrize("store", STORES)
async def test_an_operator_without_tokens_is_told_to_turn_them_on(
    cluster: tuple[Cluster, KubeEmulator | None], store: str
) -> None:
    """The dry run is refused for want of a token (not a verdict on the spec): every node waits and says
    why; once the operator sends tokens, the resource runs."""
    async with static_env(cluster, store, multi_tenancy=MultiTenancy(cluster[0].api)) as env:
        await env.cluster.apply("trace", {"image": "trace_exec"})
        body = await wait_every_node_says(env, "trace", "missing bearer token", phase="Pending")
        assert all("start the operator with --ig-multi-tenancy" in m for m in node_messages(body))
        for account in (OPERATOR_ACCOUNT, TENANT_ACCOUNT):
            await create_account(env.cluster, account)
            await allow_daemon_scope(env.cluster, account)
        await env.restart_operator(*operator_args(env.cluster))
        await env.cluster.wait_phase("trace", "Running")
