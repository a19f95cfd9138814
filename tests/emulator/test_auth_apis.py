"""The emulator's authentication and authorization APIs, through the official client, as a real API server answers.

TokenRequest (``serviceaccounts/<name>/token``), TokenReview and SubjectAccessReview evaluated with RBAC
over stored Roles, ClusterRoles and bindings: the daemons that authenticate their callers (IG's
multi-tenancy) are tested against these, so their answers and error messages follow the API server's
source (``pkg/registry/core/serviceaccount/storage/token.go``, ``pkg/serviceaccount``,
``plugin/pkg/auth/authorizer/rbac``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from kubernetes.aio import client as kclient
from kubernetes.aio.client.exceptions import ApiException

from gadget_operator.testing.kube_emulator import KubeEmulator

AUDIENCE = "inspektor-gadget"
RBAC = "rbac.authorization.k8s.io"


@pytest.fixture
async def emulator() -> AsyncIterator[KubeEmulator]:
    emulator = KubeEmulator()
    for namespace in ("team-a", "team-b"):
        emulator.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        emulator.put(service_account(namespace))
    await emulator.start()
    yield emulator
    await emulator.stop()


@pytest.fixture
async def api(emulator: KubeEmulator) -> AsyncIterator[kclient.ApiClient]:
    async with kclient.ApiClient(kclient.Configuration(host=emulator.url)) as api:
        yield api


def service_account(namespace: str, name: str = "ig-client") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": namespace}}


def failure(error: pytest.ExceptionInfo[ApiException]) -> tuple[int, str]:
    body = json.loads(error.value.body or "{}")
    return int(error.value.status or 0), str(body.get("message"))


async def mint(
    api: kclient.ApiClient,
    namespace: str = "team-a",
    name: str = "ig-client",
    audiences: list[str] | None = None,
    seconds: int | None = 3600,
) -> Any:
    spec: dict[str, Any] = {} if audiences is None else {"audiences": audiences}
    spec |= {} if seconds is None else {"expirationSeconds": seconds}
    body: Any = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
    return await kclient.CoreV1Api(api).create_namespaced_service_account_token(name, namespace, body)


async def review(api: kclient.ApiClient, token: str, audiences: list[str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"token": token} | ({"audiences": audiences} if audiences is not None else {})
    body: Any = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec}
    answer = await kclient.AuthenticationV1Api(api).create_token_review(body)
    status: dict[str, Any] = api.sanitize_for_serialization(answer.status)  # type: ignore[no-untyped-call]
    return status


async def may(
    api: kclient.ApiClient,
    user: str,
    namespace: str,
    *,
    groups: list[str] | None = None,
    verb: str = "create",
    resource: str = "pods",
    group: str = "",
    subresource: str = "",
    name: str = "",
) -> tuple[bool, str]:
    attributes = {"namespace": namespace, "verb": verb, "group": group, "resource": resource}
    attributes |= {"subresource": subresource, "name": name}
    spec = {"user": user, "groups": groups or [], "resourceAttributes": attributes}
    body: Any = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec}
    answer = await kclient.AuthorizationV1Api(api).create_subject_access_review(body)
    return answer.status.allowed, answer.status.reason or ""


def sa_user(namespace: str, name: str = "ig-client") -> tuple[str, list[str]]:
    """A ServiceAccount's user and groups, as a TokenReview of its token gives them."""
    groups = ["system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"]
    return f"system:serviceaccount:{namespace}:{name}", groups


async def may_sa(api: kclient.ApiClient, account_namespace: str, namespace: str, **request: str) -> tuple[bool, str]:
    """Whether ServiceAccount ``account_namespace/ig-client`` may ``request`` in ``namespace``."""
    user, groups = sa_user(account_namespace)
    return await may(api, user, namespace, groups=groups, **request)


def role(name: str, rules: list[dict[str, Any]], namespace: str | None = None) -> dict[str, Any]:
    meta = {"name": name} | ({"namespace": namespace} if namespace else {})
    kind = "Role" if namespace else "ClusterRole"
    return {"apiVersion": f"{RBAC}/v1", "kind": kind, "metadata": meta, "rules": rules}


def binding(
    name: str, role_kind: str, role_name: str, subjects: list[dict[str, Any]], namespace: str | None = None
) -> dict[str, Any]:
    meta = {"name": name} | ({"namespace": namespace} if namespace else {})
    kind = "RoleBinding" if namespace else "ClusterRoleBinding"
    ref = {"apiGroup": RBAC, "kind": role_kind, "name": role_name}
    return {"apiVersion": f"{RBAC}/v1", "kind": kind, "metadata": meta, "roleRef": ref, "subjects": subjects}


def account(namespace: str, name: str = "ig-client") -> dict[str, Any]:
    return {"kind": "ServiceAccount", "name": name, "namespace": namespace}


POD_CREATOR = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["create"]}]
ALICE = {"kind": "User", "apiGroup": RBAC, "name": "alice"}


# -- discovery ------------------------------------------------------------------------------------------------


async def test_discovery_serves_serviceaccounts_their_token_subresource_rbac_and_the_reviews(
    emulator: KubeEmulator,
) -> None:
    async with aiohttp.ClientSession(base_url=emulator.url) as http:
        core = await (await http.get("/api/v1")).json()
        authn = await (await http.get("/apis/authentication.k8s.io/v1")).json()
        authz = await (await http.get("/apis/authorization.k8s.io/v1")).json()
        rbac = await (await http.get(f"/apis/{RBAC}/v1")).json()

    resources = {r["name"]: r for r in core["resources"]}
    assert resources["serviceaccounts"]["shortNames"] == ["sa"]
    assert resources["serviceaccounts"]["namespaced"] is True
    token = resources["serviceaccounts/token"]
    assert (token["group"], token["version"], token["kind"], token["verbs"]) == (
        "authentication.k8s.io",
        "v1",
        "TokenRequest",
        ["create"],
    )
    assert [(r["name"], r["namespaced"], r["verbs"]) for r in authn["resources"]] == [
        ("tokenreviews", False, ["create"])
    ]
    assert [(r["name"], r["namespaced"], r["verbs"]) for r in authz["resources"]] == [
        ("subjectaccessreviews", False, ["create"])
    ]
    assert {(r["name"], r["namespaced"]) for r in rbac["resources"]} == {
        ("roles", True),
        ("rolebindings", True),
        ("clusterroles", False),
        ("clusterrolebindings", False),
    }


# -- TokenRequest ---------------------------------------------------------------------------------------------


async def test_a_token_request_answers_201_with_an_opaque_token_and_its_expiry(
    emulator: KubeEmulator, api: kclient.ApiClient
) -> None:
    emulator.clock = lambda: 1_800_000_000.0
    answer = await mint(api, audiences=[AUDIENCE], seconds=900)
    again = await mint(api, audiences=[AUDIENCE], seconds=900)

    (request,) = [r for r in emulator.requests if r.subresource == "token"][:1]
    assert (request.verb, request.resource, request.namespace, request.name, request.status) == (
        "create",
        "serviceaccounts",
        "team-a",
        "ig-client",
        201,
    )
    sa = emulator.get("v1", "serviceaccounts", "ig-client", "team-a")
    assert sa is not None
    assert (answer.kind, answer.metadata.name, answer.metadata.namespace) == ("TokenRequest", "ig-client", "team-a")
    assert answer.metadata.uid == sa["metadata"]["uid"]
    assert (answer.spec.audiences, answer.spec.expiration_seconds) == ([AUDIENCE], 900)
    assert answer.status.expiration_timestamp.timestamp() == 1_800_000_900
    token = answer.status.token
    assert token != again.status.token
    assert len(token) >= 40
    # Opaque: nothing of the account, the audience or a JWT's structure can be read from it.
    for readable in ("team-a", "ig-client", AUDIENCE, "system:", "."):
        assert readable not in token


async def test_a_token_request_without_audiences_or_expiry_gets_the_api_servers_and_an_hour(
    emulator: KubeEmulator, api: kclient.ApiClient
) -> None:
    answer = await mint(api, audiences=None, seconds=None)

    assert answer.spec.audiences == ["https://kubernetes.default.svc"]
    assert answer.spec.expiration_seconds == 3600


async def test_a_token_request_for_a_missing_service_account_is_404(api: kclient.ApiClient) -> None:
    with pytest.raises(ApiException) as error:
        await mint(api, name="nobody", seconds=599)  # the account is looked up before the spec is validated

    assert failure(error) == (404, 'serviceaccounts "nobody" not found')


async def test_a_token_request_shorter_than_ten_minutes_is_422_like_the_real_server(api: kclient.ApiClient) -> None:
    with pytest.raises(ApiException) as error:
        await mint(api, audiences=[AUDIENCE], seconds=599)

    assert failure(error) == (
        422,
        'TokenRequest.authentication.k8s.io "" is invalid: spec.expirationSeconds: Invalid value: 599: '
        "may not specify a duration less than 10 minutes",
    )


async def test_a_token_request_naming_another_account_in_its_body_is_422(api: kclient.ApiClient) -> None:
    body: Any = {"metadata": {"name": "other"}, "spec": {"audiences": [AUDIENCE]}}
    with pytest.raises(ApiException) as error:
        await kclient.CoreV1Api(api).create_namespaced_service_account_token("ig-client", "team-a", body)

    assert failure(error) == (
        422,
        'TokenRequest.authentication.k8s.io "ig-client" is invalid: metadata.name: Invalid value: "other": '
        "must match the service account name if specified",
    )


async def test_the_token_subresource_takes_only_post(emulator: KubeEmulator) -> None:
    async with (
        aiohttp.ClientSession(base_url=emulator.url) as http,
        http.get("/api/v1/namespaces/team-a/serviceaccounts/ig-client/token") as response,
    ):
        assert response.status == 405


async def test_a_denied_token_request_is_403_with_the_real_wording(
    emulator: KubeEmulator, api: kclient.ApiClient
) -> None:
    emulator.deny("create", "serviceaccounts", "token")

    with pytest.raises(ApiException) as error:
        await mint(api)

    assert failure(error) == (
        403,
        'serviceaccounts "ig-client" is forbidden: User "system:anonymous" cannot create resource '
        '"serviceaccounts/token" in API group "" in the namespace "team-a"',
    )


# -- TokenReview ----------------------------------------------------------------------------------------------


async def test_a_token_review_authenticates_the_service_account_for_the_tokens_audience(
    emulator: KubeEmulator, api: kclient.ApiClient
) -> None:
    token = (await mint(api, audiences=[AUDIENCE, "other"])).status.token

    status = await review(api, token, [AUDIENCE])

    sa = emulator.get("v1", "serviceaccounts", "ig-client", "team-a")
    assert sa is not None
    user, groups = sa_user("team-a")
    assert status["authenticated"] is True
    assert status["audiences"] == [AUDIENCE]
    assert (status["user"]["username"], status["user"]["uid"], status["user"]["groups"]) == (
        user,
        sa["metadata"]["uid"],
        groups,
    )
    (credential,) = status["user"]["extra"]["authentication.kubernetes.io/credential-id"]
    assert credential.startswith("JTI=")
    assert "error" not in status
    (request,) = [r for r in emulator.requests if r.resource == "tokenreviews"]
    assert (request.verb, request.group, request.status) == ("create", "authentication.k8s.io", 201)


async def test_a_token_for_another_audience_is_not_authenticated(api: kclient.ApiClient) -> None:
    token = (await mint(api, audiences=None)).status.token  # the API server's own audience

    status = await review(api, token, [AUDIENCE])

    assert status == {
        "user": {},
        "error": 'token audiences ["https://kubernetes.default.svc"] is invalid for the target audiences '
        '["inspektor-gadget"]',
    }


async def test_a_review_without_audiences_checks_the_api_servers_own(api: kclient.ApiClient) -> None:
    gadget_token = (await mint(api, audiences=[AUDIENCE])).status.token
    api_token = (await mint(api, audiences=None)).status.token

    assert "authenticated" not in await review(api, gadget_token)
    assert (await review(api, api_token))["authenticated"] is True


async def test_an_unknown_token_is_an_invalid_bearer_token(api: kclient.ApiClient) -> None:
    assert await review(api, "not-a-token", [AUDIENCE]) == {"user": {}, "error": "invalid bearer token"}


async def test_a_token_expires_after_its_lifetime_and_the_servers_leeway(
    emulator: KubeEmulator, api: kclient.ApiClient
) -> None:
    now = 1_800_000_000.0
    emulator.clock = lambda: now
    token = (await mint(api, audiences=[AUDIENCE], seconds=600)).status.token

    now += 600 + 60  # the last second go-jose's one-minute leeway still accepts
    still = await review(api, token, [AUDIENCE])
    now += 1
    expired = await review(api, token, [AUDIENCE])

    assert still["authenticated"] is True
    assert expired == {"user": {}, "error": "service account token has expired"}


async def test_a_token_of_a_deleted_or_recreated_service_account_is_not_authenticated(
    emulator: KubeEmulator, api: kclient.ApiClient
) -> None:
    token = (await mint(api, audiences=[AUDIENCE])).status.token
    await kclient.CoreV1Api(api).delete_namespaced_service_account("ig-client", "team-a")

    deleted = await review(api, token, [AUDIENCE])
    recreated_sa = emulator.put(service_account("team-a"))
    recreated = await review(api, token, [AUDIENCE])

    assert deleted == {"user": {}, "error": 'serviceaccounts "ig-client" not found'}
    assert recreated["error"].startswith(f"service account UID ({recreated_sa['metadata']['uid']}) does not match")


async def test_a_token_review_needs_a_token_and_is_never_stored(emulator: KubeEmulator) -> None:
    path = "/apis/authentication.k8s.io/v1/tokenreviews"
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {}}
    async with aiohttp.ClientSession(base_url=emulator.url) as http:  # the client refuses to send it
        async with http.post(path, json=body) as response:
            assert (response.status, (await response.json())["message"]) == (
                400,
                "token is required for TokenReview in authentication",
            )
        async with http.get(path) as response:
            assert response.status == 405


async def test_a_denied_token_review_is_403_at_the_cluster_scope(
    emulator: KubeEmulator, api: kclient.ApiClient
) -> None:
    token = (await mint(api, audiences=[AUDIENCE])).status.token
    emulator.deny("create", "tokenreviews")

    with pytest.raises(ApiException) as error:
        await review(api, token, [AUDIENCE])

    assert failure(error) == (
        403,
        'tokenreviews.authentication.k8s.io is forbidden: User "system:anonymous" cannot create resource '
        '"tokenreviews" in API group "authentication.k8s.io" at the cluster scope',
    )


async def test_a_request_with_an_issued_token_is_refused_in_that_accounts_name(emulator: KubeEmulator) -> None:
    token = emulator.issue_token("team-a", "ig-client")  # for the API server's audience
    emulator.deny("list", "pods")

    async with (
        aiohttp.ClientSession(base_url=emulator.url, headers={"Authorization": f"Bearer {token}"}) as http,
        http.get("/api/v1/namespaces/team-a/pods") as response,
    ):
        body = await response.json()

    assert response.status == 403
    assert body["message"] == (
        'pods is forbidden: User "system:serviceaccount:team-a:ig-client" cannot list resource "pods" '
        'in API group "" in the namespace "team-a"'
    )


# -- SubjectAccessReview with RBAC ----------------------------------------------------------------------------


async def test_a_role_binding_allows_its_service_account_in_its_namespace_only(
    emulator: KubeEmulator, api: kclient.ApiClient
) -> None:
    emulator.put(role("pod-creator", POD_CREATOR, "team-a"))
    emulator.put(binding("ig-client-pods", "Role", "pod-creator", [account("team-a")], "team-a"))

    assert await may_sa(api, "team-a", "team-a") == (
        True,
        'RBAC: allowed by RoleBinding "ig-client-pods/team-a" of Role "pod-creator" to '
        'ServiceAccount "ig-client/team-a"',
    )
    assert await may_sa(api, "team-a", "team-b") == (False, "")
    assert await may_sa(api, "team-a", "team-a", verb="delete") == (False, "")
    assert await may_sa(api, "team-b", "team-a") == (False, "")


async def test_a_service_account_subject_without_a_namespace_is_the_bindings_own(
    emulator: KubeEmulator, api: kclient.ApiClient
) -> None:
    emulator.put(role("pod-creator", POD_CREATOR, "team-a"))
    subject = {"kind": "ServiceAccount", "name": "ig-client"}
    emulator.put(binding("ig-client-pods", "Role", "pod-creator", [subject], "team-a"))

    assert (await may(api, "system:serviceaccount:team-a:ig-client", "team-a"))[0] is True
    assert (await may(api, "system:serviceaccount:team-b:ig-client", "team-a"))[0] is False


async def test_cluster_roles_apply_everywhere_through_a_cluster_binding_and_in_one_namespace_through_a_role_binding(
    emulator: KubeEmulator, api: kclient.ApiClient
) -> None:
    emulator.put(role("pod-creator", POD_CREATOR))
    emulator.put(binding("b-pods", "ClusterRole", "pod-creator", [account("team-b")], "team-b"))
    emulator.put(binding("alice-pods", "ClusterRole", "pod-creator", [ALICE]))

    assert (await may_sa(api, "team-b", "team-b"))[0] is True
    assert (await may_sa(api, "team-b", "team-a"))[0] is False
    assert await may(api, "alice", "team-a") == (
        True,
        'RBAC: allowed by ClusterRoleBinding "alice-pods" of ClusterRole "pod-creator" to User "alice"',
    )
    assert (await may(api, "alice", ""))[0] is True  # cluster-scoped: only cluster bindings count
    assert (await may_sa(api, "team-b", ""))[0] is False


async def test_a_group_subject_matches_the_groups_given(emulator: KubeEmulator, api: kclient.ApiClient) -> None:
    emulator.put(role("pod-creator", POD_CREATOR, "team-a"))
    group = {"kind": "Group", "apiGroup": RBAC, "name": "system:serviceaccounts:team-a"}
    emulator.put(binding("all-of-team-a", "Role", "pod-creator", [group], "team-a"))

    assert (await may(api, "system:serviceaccount:team-a:other", "team-a", groups=[group["name"]]))[0] is True
    assert (await may(api, "system:serviceaccount:team-a:other", "team-a"))[0] is False


def rule(resources: list[str], verbs: list[str], groups: tuple[str, ...] = ("",), **extra: Any) -> dict[str, Any]:
    return {"apiGroups": list(groups), "resources": resources, "verbs": verbs} | extra


GET_LOG = {"resource": "pods", "subresource": "log", "verb": "get"}


@pytest.mark.parametrize(
    ("granted", "request_", "allowed"),
    [
        (rule(["*"], ["*"], ("*",)), {"resource": "secrets", "verb": "get"}, True),
        (rule(["pods"], ["get"]), GET_LOG, False),
        (rule(["pods/log"], ["get"]), GET_LOG, True),
        (rule(["*/log"], ["get"]), GET_LOG, True),
        (rule(["*/log"], ["get"]), {"resource": "pods", "verb": "get"}, False),
        (rule(["pods"], ["get"], resourceNames=["web"]), {"resource": "pods", "verb": "get", "name": "web"}, True),
        (rule(["pods"], ["get"], resourceNames=["web"]), {"resource": "pods", "verb": "get", "name": "db"}, False),
        (rule(["pods"], ["get"], resourceNames=["web"]), {"resource": "pods", "verb": "list"}, False),
        (rule(["pods"], ["get"], ("apps",)), {"resource": "pods", "verb": "get"}, False),
        (
            rule(["traces"], ["get"], ("gadget.kinvolk.io",)),
            {"group": "gadget.kinvolk.io", "resource": "traces", "verb": "get"},
            True,
        ),
    ],
)
async def test_rbac_rules_match_like_the_api_servers(
    emulator: KubeEmulator,
    api: kclient.ApiClient,
    granted: dict[str, Any],
    request_: dict[str, str],
    allowed: bool,
) -> None:
    emulator.put(role("r", [granted], "team-a"))
    emulator.put(binding("b", "Role", "r", [ALICE], "team-a"))

    assert (await may(api, "alice", "team-a", **request_))[0] is allowed


async def test_a_binding_to_a_missing_role_is_the_reason_when_nothing_allows(
    emulator: KubeEmulator, api: kclient.ApiClient
) -> None:
    emulator.put(binding("gone", "Role", "removed", [ALICE], "team-a"))
    emulator.put(binding("gone-too", "ClusterRole", "removed-too", [ALICE]))

    assert await may(api, "alice", "team-a") == (
        False,
        'RBAC: [clusterrole.rbac.authorization.k8s.io "removed-too" not found, '
        'role.rbac.authorization.k8s.io "removed" not found]',
    )
    emulator.put(role("pods", POD_CREATOR))
    emulator.put(binding("works", "ClusterRole", "pods", [ALICE]))
    assert (await may(api, "alice", "team-a"))[0] is True


async def test_system_masters_may_do_anything_and_non_resource_urls_follow_cluster_roles(
    emulator: KubeEmulator, api: kclient.ApiClient
) -> None:
    emulator.put(role("metrics", [{"nonResourceURLs": ["/metrics", "/debug/*"], "verbs": ["get"]}]))
    emulator.put(binding("metrics", "ClusterRole", "metrics", [ALICE]))

    async def url(path: str) -> bool:
        spec = {"user": "alice", "nonResourceAttributes": {"path": path, "verb": "get"}}
        body: Any = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec}
        return bool((await kclient.AuthorizationV1Api(api).create_subject_access_review(body)).status.allowed)

    assert await may(api, "root", "team-a", groups=["system:masters"], verb="delete") == (True, "")
    assert [await url(p) for p in ("/metrics", "/debug/pprof", "/healthz")] == [True, True, False]


async def test_a_subject_access_review_without_a_subject_or_attributes_is_422(api: kclient.ApiClient) -> None:
    body: Any = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": {}}
    with pytest.raises(ApiException) as error:
        await kclient.AuthorizationV1Api(api).create_subject_access_review(body)

    assert failure(error) == (
        422,
        'SubjectAccessReview.authorization.k8s.io "" is invalid: [spec.resourceAttributes: Invalid value: null: '
        "exactly one of nonResourceAttributes or resourceAttributes must be specified, spec.user: "
        'Invalid value: "": at least one of user or group must be specified]',
    )


# -- RBAC objects ---------------------------------------------------------------------------------------------


async def test_rbac_names_are_path_segments_and_rules_and_bindings_are_validated(api: kclient.ApiClient) -> None:
    rbac = kclient.RbacAuthorizationV1Api(api)
    delegator: Any = role("system:auth-delegator", [rule(["tokenreviews"], ["create"], ("authentication.k8s.io",))])
    await rbac.create_cluster_role(delegator)
    no_verbs: Any = role("broken", [rule(["pods"], [])], "team-a")
    gadget = {"kind": "ServiceAccount", "name": "gadget"}
    sa_without_namespace: Any = binding("b", "ClusterRole", "system:auth-delegator", [gadget])

    with pytest.raises(ApiException) as rule_error:
        await rbac.create_namespaced_role("team-a", no_verbs)
    with pytest.raises(ApiException) as subject_error:
        await rbac.create_cluster_role_binding(sa_without_namespace)

    assert failure(rule_error) == (
        422,
        'Role.rbac.authorization.k8s.io "broken" is invalid: rules[0].verbs: Required value: '
        "verbs must contain at least one value",
    )
    assert failure(subject_error) == (
        422,
        'ClusterRoleBinding.rbac.authorization.k8s.io "b" is invalid: subjects[0].namespace: Required value',
    )


async def test_a_bindings_role_ref_cannot_change(api: kclient.ApiClient) -> None:
    rbac = kclient.RbacAuthorizationV1Api(api)
    body: Any = binding("b", "Role", "first", [account("team-a")], "team-a")
    await rbac.create_namespaced_role_binding("team-a", body)
    patch: Any = {"roleRef": {"apiGroup": RBAC, "kind": "Role", "name": "second"}}

    with pytest.raises(ApiException) as error:
        await rbac.patch_namespaced_role_binding("b", "team-a", patch)

    assert failure(error) == (
        422,
        'RoleBinding.rbac.authorization.k8s.io "b" is invalid: roleRef: Invalid value: '
        '{"APIGroup":"rbac.authorization.k8s.io","Kind":"Role","Name":"second"}: cannot change roleRef',
    )
