"""IG's experimental namespace multi-tenancy (branch ``flyth/multitenancy``) for the simulated daemons.

With it every gRPC call must carry ``authorization: Bearer <token>``, a ServiceAccount token for the
audience ``inspektor-gadget``. The daemon reviews the token (TokenReview), lists the namespaces and asks
one SubjectAccessReview per namespace (default: ``create pods``) which ones the caller may use, and then
confines what the call does to them (``pkg/gadget-service/auth/tokenreview.go``). The policy functions
below are ``pkg/operators/kubemanager/policy/policy.go``, ported as pure functions:

- Create narrows the KubeManager params before anything is stored: no namespace means ``default``,
  ``all-namespaces`` becomes the allowed list, an exclusion (``!ns``) is refused, and the stored params
  say ``all-namespaces=false``, ``namespace=<list>``, ``multi-tenancy-policy=true`` (no ``k8s-namespace``);
- List hides, Get, Remove and attach refuse, the stored instances whose params name a namespace outside
  the caller's (an all-namespaces instance is refused to everyone);
- GetGadgetInfo of an image runs without the scope; a gadget the KubeManager cannot isolate fails when it
  starts (``simulator.state.isolation_error``).

A ``MultiTenancy`` given to ``Fleet(multi_tenancy=...)`` turns it on for every node of the fleet.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import aiohttp
import grpc
from kubernetes.aio import client as kclient
from kubernetes.aio.client.exceptions import ApiException

from gadget_operator.simulator.configmap_store import api_message
from gadget_operator.simulator.state import KUBE_MANAGER_PREFIX, POLICY_SCOPE_PARAM, quote

AUDIENCE = "inspektor-gadget"
"""The only audience the daemon's TokenReview accepts: an ordinary API token cannot be replayed to it."""
PARAM_NAMESPACE = "namespace"
PARAM_K8S_NAMESPACE = "k8s-namespace"
PARAM_ALL_NAMESPACES = "all-namespaces"
PARAM_POLICY_SCOPE = POLICY_SCOPE_PARAM.removeprefix(KUBE_MANAGER_PREFIX)
DEFAULT_SCOPE = ("", "pods", "create")
"""IG's ``DefaultScopeConfig``: (API group, resource, verb) of the permission asked per namespace."""

PolicyScope = tuple[str, ...]
"""The namespaces a call may use. A daemon without multi-tenancy has none at all (``None``), which is
not the same as an authenticated caller allowed no namespace (``()``)."""


class PolicyError(Exception):
    """A refusal as IG returns it (``status.Error``): the gRPC code and message the caller sees."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# -- the policy, as pure functions --------------------------------------------------------------------------


def extract_bearer(metadata: Iterable[tuple[str, Any]]) -> str:
    """IG's ``extractBearer``: the first ``authorization`` value of the form ``<bearer> <token>``
    (scheme case-insensitive, split at the first space), else ""."""
    for key, value in metadata:
        if key.lower() != "authorization" or not isinstance(value, str):
            continue
        scheme, space, token = value.partition(" ")
        if space and scheme.lower() == "bearer" and token:
            return token
    return ""


def requested_namespaces(values: Mapping[str, str], prefix: str = KUBE_MANAGER_PREFIX) -> tuple[list[str], bool]:
    """IG's ``requestedNamespaces``: (the namespaces asked for, whether all-namespaces was asked)."""
    if values.get(prefix + PARAM_ALL_NAMESPACES, "").lower() == "true":
        return [], True
    namespace = values.get(prefix + PARAM_NAMESPACE, "") or values.get(prefix + PARAM_K8S_NAMESPACE, "")
    namespace = namespace or "default"
    if "!" in namespace:
        message = f"namespace exclusions are not supported in multi-tenancy mode: {quote(namespace)}"
        raise PolicyError(grpc.StatusCode.INVALID_ARGUMENT, message)
    namespaces = [part.strip() for part in namespace.split(",")]
    if "" in namespaces:
        raise PolicyError(grpc.StatusCode.INVALID_ARGUMENT, f"invalid namespace filter {quote(namespace)}")
    return namespaces, False


def authorize_namespaces(allowed: Sequence[str], namespaces: Sequence[str]) -> None:
    """IG's ``authorizeNamespaces``; the message never names the namespace, so it reveals nothing."""
    if not allowed:
        raise PolicyError(grpc.StatusCode.PERMISSION_DENIED, "no Kubernetes namespaces are authorized for this request")
    if any(namespace not in allowed for namespace in namespaces):
        raise PolicyError(grpc.StatusCode.PERMISSION_DENIED, "requested Kubernetes namespace is not authorized")


def enforce_policy_scope(
    scope: PolicyScope | None, values: Mapping[str, str], prefix: str = KUBE_MANAGER_PREFIX
) -> dict[str, str]:
    """IG's ``EnforcePolicyScopeOnParamValues``: the params to store, narrowed to ``scope`` (unchanged
    without multi-tenancy). IG rewrites the request's map in place; this returns the rewritten copy."""
    result = dict(values)
    if scope is None:
        return result
    namespaces, everything = requested_namespaces(values, prefix)
    if everything:
        namespaces = list(scope)
    authorize_namespaces(scope, namespaces)
    result[prefix + PARAM_ALL_NAMESPACES] = "false"
    result[prefix + PARAM_NAMESPACE] = ",".join(namespaces)
    result[prefix + PARAM_POLICY_SCOPE] = "true"
    result.pop(prefix + PARAM_K8S_NAMESPACE, None)
    return result


def authorize_param_values(scope: PolicyScope | None, values: Mapping[str, str]) -> None:
    """IG's ``AuthorizeParamValues``: may a caller see and touch an instance stored with ``values``?"""
    if scope is None:
        return
    namespaces, everything = requested_namespaces(values)
    if everything:
        message = "all-namespaces gadget instances are not allowed in multi-tenancy mode"
        raise PolicyError(grpc.StatusCode.PERMISSION_DENIED, message)
    authorize_namespaces(scope, namespaces)


def visible(scope: PolicyScope | None, values: Mapping[str, str]) -> bool:
    """Whether List shows an instance: IG skips every instance ``authorize_param_values`` refuses."""
    try:
        authorize_param_values(scope, values)
    except PolicyError:
        return False
    return True


# -- authentication against the Kubernetes API ---------------------------------------------------------------

_API_FAILURES = (ApiException, aiohttp.ClientError, OSError, asyncio.TimeoutError, ValueError)
"""What a failed TokenReview, namespace list or SubjectAccessReview raises: IG fails the call closed."""


class MultiTenancy:
    """IG's multi-tenancy settings (``multi-tenancy-scope-api-group/-resource/-verb``) and its reviews.

    ``api`` is the daemons' Kubernetes client; None: the fleet's shared store's (IG's DaemonSet uses its
    in-cluster client for both). As IG does, an empty ``resource`` takes the whole default scope and an
    empty ``verb`` is refused. Counts the API requests it made, for tests of the load it puts on the API."""

    def __init__(
        self,
        api: kclient.ApiClient | None = None,
        *,
        group: str = DEFAULT_SCOPE[0],
        resource: str = DEFAULT_SCOPE[1],
        verb: str = DEFAULT_SCOPE[2],
    ) -> None:
        if not resource:
            group, resource, verb = DEFAULT_SCOPE
        if not verb:
            raise ValueError("multi-tenancy scope verb cannot be empty")
        self.api = api
        self.group, self.resource, self.verb = group, resource, verb
        self.token_reviews = 0
        self.namespace_lists = 0
        self.access_reviews = 0

    async def authenticate(self, metadata: Iterable[tuple[str, Any]]) -> PolicyScope:
        """IG's ``authenticate``: the namespaces the caller's token may use, or the refusal (UNAUTHENTICATED
        for a missing or rejected token, UNAVAILABLE when the API server fails a review)."""
        token = extract_bearer(metadata)
        if not token:
            raise PolicyError(grpc.StatusCode.UNAUTHENTICATED, "missing bearer token")
        if self.api is None:
            raise ValueError("multi-tenancy enabled but no Kubernetes client provided")
        body: Any = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": [AUDIENCE]},
        }
        self.token_reviews += 1
        try:
            review = await kclient.AuthenticationV1Api(self.api).create_token_review(body)
        except _API_FAILURES as error:
            raise PolicyError(grpc.StatusCode.UNAVAILABLE, f"token review failed: {api_message(error)}") from None
        if review.status is None or not review.status.authenticated:
            raise PolicyError(grpc.StatusCode.UNAUTHENTICATED, "token was not authenticated")
        try:
            return await self._allowed_namespaces(review.status.user or kclient.V1UserInfo())
        except _ReviewFailed as error:
            raise PolicyError(grpc.StatusCode.UNAVAILABLE, f"resolving namespace access: {error}") from None

    async def _allowed_namespaces(self, user: kclient.V1UserInfo) -> PolicyScope:
        """IG's ``allowedNamespaces``: one SubjectAccessReview per namespace, one after the other (the API has
        no bulk review); any failure fails the whole call."""
        assert self.api is not None
        self.namespace_lists += 1
        try:
            namespaces = await kclient.CoreV1Api(self.api).list_namespace()
        except _API_FAILURES as error:
            raise _ReviewFailed(f"listing namespaces: {api_message(error)}") from None
        authorization = kclient.AuthorizationV1Api(self.api)
        allowed: list[str] = []
        for item in namespaces.items:
            name = str(item.metadata.name if item.metadata else "")
            attributes = {"namespace": name, "verb": self.verb, "group": self.group, "resource": self.resource}
            spec: dict[str, Any] = {"user": user.username, "uid": user.uid, "groups": user.groups}
            spec["resourceAttributes"] = attributes
            if user.extra:
                spec["extra"] = user.extra
            body: Any = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec}
            self.access_reviews += 1
            try:
                review = await authorization.create_subject_access_review(body)
            except _API_FAILURES as error:
                raise _ReviewFailed(f"reviewing namespace {quote(name)}: {api_message(error)}") from None
            if review.status is not None and review.status.allowed:
                allowed.append(name)
        return tuple(allowed)


class _ReviewFailed(Exception):
    """An API failure while resolving the namespaces, worded with its step as IG wraps it."""
