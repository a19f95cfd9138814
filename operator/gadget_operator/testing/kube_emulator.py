"""A small Kubernetes API server emulator, faithful to the semantics the operator depends on.

No real API server can run on the test machines (see docs/testing.md), and a mock that merely stores
objects hides exactly the bugs a real server exposes: stale resourceVersions, the ``/status`` split,
generation bumps, finalizers, watches resumed from a resourceVersion. This emulator implements those
semantics over real HTTP, so kopf, the official client and the operator run against it unchanged, and
it records every request so tests can assert what a client did (and did not do).

Everything lives on one asyncio loop: the HTTP handlers and the synchronous helpers (``put``, ``get``,
``delete``) share in-memory state without locks. Call the helpers from the emulator's loop, before
``start()``, or through ``EmulatorThread.call`` when the emulator runs in a thread of its own.

Known simplifications (a real server does more): no server-side apply, no dryRun (refused with 400),
strategic merge patch is a plain merge patch, no conversion between CRD versions, no CEL rules, no
garbage collection or propagationPolicy, pods and namespaces are deleted at once (no kubelet grace
period, no namespace finalization), core and events.k8s.io Events are stored apart.

Authentication and authorization APIs are served as the API server answers them, for the daemons that
authenticate their own callers (IG's multi-tenancy): TokenRequest (``serviceaccounts/<name>/token``),
TokenReview and SubjectAccessReview, the latter evaluated with RBAC over the stored Roles, ClusterRoles
and their bindings. Tokens are opaque random strings (a real server issues signed JWTs) that only this
emulator can review. Not modelled: tokens bound to objects, ClusterRole aggregation (a controller fills
in the aggregated rules on a real cluster), RBAC escalation checks, the default ServiceAccount of a
namespace, and authentication of the emulator's own clients (``deny`` stands in for their RBAC).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
import logging
import math
import random
import re
import secrets
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

import jsonpatch
import yaml
from aiohttp import web

logger = logging.getLogger(__name__)

JSON = dict[str, Any]
P = ParamSpec("P")
T = TypeVar("T")

WRITE_VERBS = frozenset({"create", "update", "patch", "delete"})
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
CRD_GROUP = "apiextensions.k8s.io"
RBAC_GROUP = "rbac.authorization.k8s.io"
AUTHENTICATION_GROUP = "authentication.k8s.io"
AUTHORIZATION_GROUP = "authorization.k8s.io"
API_AUDIENCES = ("https://kubernetes.default.svc",)
"""The API server's own audiences (``--api-audiences``): a TokenRequest or TokenReview without audiences gets these."""
TOKEN_LEEWAY = 60.0
"""Seconds a token is still accepted after its expiry (go-jose's ``jwt.DefaultLeeway``, as the API server checks it)."""
MIN_TOKEN_SECONDS = 10 * 60  # the API server's ``MinTokenAgeSec``
DEFAULT_TOKEN_SECONDS = 60 * 60  # TokenRequestSpec.expirationSeconds' default in authentication.k8s.io/v1
SYSTEM_MASTERS = "system:masters"
"""The group the API server allows everything before RBAC is asked (its privileged-group authorizer)."""
_TOP = ("apiVersion", "kind", "metadata")
_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_TERM_RE = re.compile(
    r"^\s*(?P<neg>!)?\s*(?P<key>[A-Za-z0-9_./-]+)\s*"
    r"(?:(?P<op>==|!=|=|>|<)\s*(?P<value>[A-Za-z0-9_.-]*)|\s+(?P<setop>in|notin)\s*\((?P<values>[^)]*)\))?\s*$"
)
_FIELD_TERM_RE = re.compile(r"^\s*(?P<key>[A-Za-z0-9_.]+)\s*(?P<op>==|!=|=)\s*(?P<value>.*?)\s*$")
_KUBE_VERSION_RE = re.compile(r"^v(\d+)(?:(alpha|beta)(\d+))?$")
_POD_FIELDS = dict.fromkeys(
    ("spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName", "status.phase"), ""
) | {"status.podIP": "", "status.nominatedNodeName": "", "spec.hostNetwork": "false"}
_EVENT_FIELDS = dict.fromkeys(
    ["reason", "reportingComponent", "source", "type"]
    + [
        f"involvedObject.{f}"
        for f in ("kind", "namespace", "name", "uid", "apiVersion", "resourceVersion", "fieldPath")
    ],
    "",
)
# Schema bounds: (keyword, applies to, measure, +1 if the bound is a maximum, the real server's wording)
_SCHEMA_BOUNDS: tuple[tuple[str, type | tuple[type, ...], Callable[[Any], float], int, str], ...] = (
    ("minItems", list, len, -1, "should have at least {} items"),
    ("maxItems", list, len, 1, "must have at most {} items"),
    ("minProperties", dict, len, -1, "should have at least {} properties"),
    ("maxProperties", dict, len, 1, "should have at most {} properties"),
    ("minLength", str, len, -1, "should be at least {} chars long"),
    ("maxLength", str, len, 1, "may not be longer than {}"),
    ("minimum", (int, float), float, -1, "should be greater than or equal to {}"),
    ("maximum", (int, float), float, 1, "should be less than or equal to {}"),
)
_SCHEMA_TYPES: dict[str, type | tuple[type, ...]] = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "integer": int,
    "number": (int, float),
}


class ApiError(Exception):
    """An error the real API server would answer with a ``Status`` body; raised anywhere, rendered once."""

    def __init__(self, code: int, reason: str, message: str, details: JSON | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> JSON:
        body: JSON = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure"}
        body |= {"message": self.message, "reason": self.reason, "code": self.code}
        return body | ({"details": self.details} if self.details is not None else {})


def _bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def _not_allowed() -> ApiError:
    return ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")


@dataclass
class ResourceType:
    """One served group/version/resource and the server-side behaviour that differs between kinds."""

    group: str
    version: str
    plural: str
    singular: str
    kind: str
    namespaced: bool
    status_subresource: bool = False
    custom: bool = False  # served from a CRD: 415 on strategic merge patch, generation covers all but status
    tracks_generation: bool = False
    strip_status_on_create: bool = True  # nodes keep the status they are created with, the others do not
    initial_status: JSON | None = None
    create_on_update: bool = False  # PUT of a missing object creates it (leases, events)
    return_deleted_object: bool = False  # DELETE answers the object rather than a Success Status
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    fields: Mapping[str, str] = field(default_factory=dict)  # extra field-selector labels -> value when missing
    schema: JSON | None = None  # a CRD version's openAPIV3Schema: pruning, defaulting, validation
    create_only: bool = False  # a review (TokenReview, SubjectAccessReview): answered on create, never stored
    create_subresources: tuple[str, ...] = ()  # subresources that only take a POST (serviceaccounts/token)
    path_segment_names: bool = False  # RBAC objects: any name that is a valid path segment (system:auth-delegator)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_resource(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def details(self, name: str, kind: str | None = None) -> JSON:
        return {"name": name, "kind": kind or self.plural} | ({"group": self.group} if self.group else {})

    def invalid(self, name: str, causes: list[tuple[str, str]]) -> ApiError:
        """422 Invalid with field causes, worded like the real server (``Kind.group "name" is invalid: ...``)."""
        return _invalid(self.group, self.kind, name, causes)


def _aggregate(messages: list[str]) -> str:
    """apimachinery's ``utilerrors.NewAggregate(...).Error()``: one message as is, several deduplicated in brackets."""
    unique = list(dict.fromkeys(messages))
    return unique[0] if len(unique) == 1 else "[" + ", ".join(unique) + "]"


def _invalid(group: str, kind: str, name: str, causes: list[tuple[str, str]]) -> ApiError:
    """``apierrors.NewInvalid``: ``Kind.group "name" is invalid: <field: message, aggregated>``."""
    group_kind = f"{kind}.{group}" if group else kind
    message = f'{group_kind} "{name}" is invalid: ' + _aggregate([f"{f}: {m}" for f, m in causes])
    causes_doc = [{"reason": "FieldValueInvalid", "message": m, "field": f} for f, m in causes]
    details: JSON = ({"name": name} if name else {}) | ({"group": group} if group else {}) | {"kind": kind}
    return ApiError(422, "Invalid", message, details | {"causes": causes_doc})


def _forbidden(
    user: str, verb: str, group: str, plural: str, sub: str | None, namespace: str | None, name: str
) -> ApiError:
    """The API server's 403 for a request its authorizer refused (``responsewriters.Forbidden``)."""
    resource = f"{plural}/{sub}" if sub else plural
    scope = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
    reason = f'User "{user}" cannot {verb} resource "{resource}" in API group "{group}"{scope}'
    qualified = f"{plural}.{group}" if group else plural
    message = f"{qualified}{f' {_go_quote(name)}' if name else ''} is forbidden: {reason}"
    details: JSON = {"name": name} | ({"group": group} if group else {}) | {"kind": plural}
    return ApiError(403, "Forbidden", message, details)


def _go_quote(value: str) -> str:
    """Go's ``%q`` for the (printable) strings the API server quotes."""
    return json.dumps(value, ensure_ascii=False)


def _go_quote_list(values: list[str]) -> str:
    """Go's ``%q`` of a ``[]string``: ``["a" "b"]``."""
    return "[" + " ".join(_go_quote(v) for v in values) + "]"


def _builtin_types() -> list[ResourceType]:
    """The built-in resources the operator and kopf touch, with the real server's per-kind quirks."""
    core, namespaced = "", True
    return [
        ResourceType(core, "v1", "namespaces", "namespace", "Namespace", False, status_subresource=True,
                     initial_status={"phase": "Active"}, short_names=("ns",), fields={"status.phase": ""}),
        ResourceType(core, "v1", "nodes", "node", "Node", False, status_subresource=True,
                     strip_status_on_create=False, short_names=("no",), fields={"spec.unschedulable": "false"}),
        ResourceType(core, "v1", "pods", "pod", "Pod", namespaced, status_subresource=True, tracks_generation=True,
                     initial_status={"phase": "Pending"}, return_deleted_object=True, short_names=("po",),
                     categories=("all",), fields=_POD_FIELDS),
        ResourceType(core, "v1", "events", "event", "Event", namespaced, create_on_update=True,
                     short_names=("ev",), fields=_EVENT_FIELDS),
        ResourceType(core, "v1", "configmaps", "configmap", "ConfigMap", namespaced, short_names=("cm",)),
        ResourceType(core, "v1", "secrets", "secret", "Secret", namespaced, fields={"type": ""}),
        ResourceType(core, "v1", "serviceaccounts", "serviceaccount", "ServiceAccount", namespaced,
                     short_names=("sa",), create_subresources=("token",)),
        ResourceType(RBAC_GROUP, "v1", "roles", "role", "Role", namespaced, path_segment_names=True),
        ResourceType(RBAC_GROUP, "v1", "rolebindings", "rolebinding", "RoleBinding", namespaced,
                     path_segment_names=True),
        ResourceType(RBAC_GROUP, "v1", "clusterroles", "clusterrole", "ClusterRole", False, path_segment_names=True),
        ResourceType(RBAC_GROUP, "v1", "clusterrolebindings", "clusterrolebinding", "ClusterRoleBinding", False,
                     path_segment_names=True),
        ResourceType(AUTHENTICATION_GROUP, "v1", "tokenreviews", "tokenreview", "TokenReview", False,
                     create_only=True),
        ResourceType(AUTHORIZATION_GROUP, "v1", "subjectaccessreviews", "subjectaccessreview", "SubjectAccessReview",
                     False, create_only=True),
        ResourceType("events.k8s.io", "v1", "events", "event", "Event", namespaced, create_on_update=True,
                     short_names=("ev",)),
        ResourceType("coordination.k8s.io", "v1", "leases", "lease", "Lease", namespaced, create_on_update=True),
        ResourceType(CRD_GROUP, "v1", "customresourcedefinitions", "customresourcedefinition",
                     "CustomResourceDefinition", False, status_subresource=True, return_deleted_object=True,
                     short_names=("crd", "crds"), categories=("api-extensions",)),
    ]  # fmt: skip


def _crd_types(crd: Mapping[str, Any]) -> list[ResourceType]:
    """The resources a CustomResourceDefinition serves: one per served version."""
    spec, names = crd["spec"], crd["spec"]["names"]
    return [
        ResourceType(
            spec["group"],
            version["name"],
            names["plural"],
            names.get("singular") or names["kind"].lower(),
            names["kind"],
            spec.get("scope", "Namespaced") == "Namespaced",
            status_subresource="status" in (version.get("subresources") or {}),
            custom=True,
            tracks_generation=True,
            return_deleted_object=True,
            short_names=tuple(names.get("shortNames", ())),
            categories=tuple(names.get("categories", ())),
            fields={s["jsonPath"].lstrip("."): "" for s in version.get("selectableFields", ())},
            schema=(version.get("schema") or {}).get("openAPIV3Schema"),
        )
        for version in spec["versions"]
        if version.get("served", True)
    ]


@dataclass
class RecordedRequest:
    """One HTTP request as the emulator understood it, so tests can assert what clients did."""

    method: str
    path: str
    query: dict[str, str]
    verb: str = ""  # get/list/watch/create/update/patch/delete/deletecollection; "get" for discovery
    group: str | None = None  # "" for the core group, None for discovery and unknown paths
    version: str | None = None
    resource: str | None = None  # the plural, without the subresource
    subresource: str | None = None
    namespace: str | None = None
    name: str | None = None  # for create: the name of the created object
    content_type: str | None = None
    user_agent: str = ""
    authorization: str = ""  # the Authorization header as sent (tests check that clients authenticate)
    status: int = 0  # the HTTP status once answered (200 as soon as a watch stream starts)


@dataclass
class _Event:
    rv: int
    group: str
    plural: str
    type: str
    obj: JSON
    prev: JSON | None  # the object before a MODIFIED event: filtered watches see objects enter and leave


@dataclass
class _Filter:
    """What a list or watch asked for: the real server applies the same filter to both."""

    rt: ResourceType
    namespace: str | None
    name: str | None
    labels: list[tuple[str, str, frozenset[str]]]  # (operator, key, values)
    fields: list[tuple[str, bool, str]]  # (label, equal?, value)

    def matches(self, obj: Mapping[str, Any]) -> bool:
        meta = obj.get("metadata", {})
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        if self.name is not None and meta.get("name") != self.name:
            return False
        labels = meta.get("labels") or {}
        if not all(_label_matches(labels, op, key, values) for op, key, values in self.labels):
            return False
        return all((_field_value(obj, self.rt, key) == value) == equal for key, equal, value in self.fields)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _truthy(value: str | None) -> bool:
    return value in ("1", "t", "T", "true", "TRUE", "True")


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, null deletes, everything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value)
    return result


def _parse_label_selector(selector: str) -> list[tuple[str, str, frozenset[str]]]:
    """Parse the label selector grammar: =, ==, !=, in (...), notin (...), key, !key, >, <; commas AND."""
    terms: list[str] = []
    depth, current = 0, ""
    for char in selector:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            terms, current = [*terms, current], ""
        else:
            current += char
    requirements = []
    for term in filter(str.strip, [*terms, current]):
        match = _LABEL_TERM_RE.match(term)
        if not match or (match["neg"] and (match["op"] or match["setop"])):
            raise _bad_request(f"unable to parse requirement: invalid label selector term {term.strip()!r}")
        op = "!exists" if match["neg"] else match["op"] or match["setop"] or "exists"
        if op in (">", "<") and not (match["value"] or "").isdigit():
            raise _bad_request(f"unable to parse requirement: for 'gt', 'lt' operators, a number is required: {term}")
        values = match["values"].split(",") if match["values"] is not None else [match["value"] or ""]
        requirements.append(({"==": "="}.get(op, op), match["key"], frozenset(v.strip() for v in values)))
    return requirements


def _label_matches(labels: Mapping[str, str], op: str, key: str, values: frozenset[str]) -> bool:
    value = labels.get(key)
    if op in (">", "<"):
        if value is None or not value.lstrip("-").isdigit():
            return False
        bound = int(next(iter(values)))
        return int(value) > bound if op == ">" else int(value) < bound
    checks = {"exists": value is not None, "!exists": value is None, "=": value in values, "in": value in values}
    return checks.get(op, value not in values)  # != and notin also match when the label is absent


def _field_value(obj: Mapping[str, Any], rt: ResourceType, label: str) -> str:
    """A field as a field selector sees it: missing fields take the kind's default, booleans are lowercase."""
    value: Any = obj
    for part in ("source.component" if label == "source" else label).split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    if value is None:
        return rt.fields.get(label, "")
    return str(value).lower() if isinstance(value, bool) else str(value)


def _version_priority(version: str) -> tuple[int, int, int, str]:
    """Kubernetes version order: GA before beta before alpha, newer first, non-Kubernetes names last."""
    match = _KUBE_VERSION_RE.match(version)
    if not match:
        return (3, 0, 0, version)
    return ({None: 0, "beta": 1, "alpha": 2}[match[2]], -int(match[1]), -int(match[3] or 0), "")


_MISSING = object()
FieldPath = tuple[str | int, ...]  # keys and list indexes: ("spec", "params", "a.b"), not a dotted string


def _render(path: FieldPath) -> str:
    """A field path as the API server words it: ``spec.nodes[1]``."""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" if i else p for i, p in enumerate(path))


def _value_at(obj: Any, path: FieldPath) -> Any:
    """The value at a field path, or a marker if there is none."""
    for part in path:
        try:
            obj = obj[part]
        except (KeyError, IndexError, TypeError):
            return _MISSING
    return obj


def _apply_schema(schema: Mapping[str, Any], value: Any, path: FieldPath, errors: list[tuple[FieldPath, str]]) -> Any:
    """Prune unknown fields, apply defaults and validate, as the API server does with a structural schema.

    Covers type, properties, additionalProperties, items, required, enum, pattern, bounds, int32/int64
    formats, nullable, default, x-kubernetes-preserve-unknown-fields, x-kubernetes-int-or-string and
    x-kubernetes-list-type: set; CEL rules, other formats and allOf/anyOf/oneOf/not are not evaluated.
    """
    kind, shown, where = schema.get("type"), json.dumps(value), _render(path)
    if schema.get("x-kubernetes-int-or-string"):
        if not isinstance(value, (int, str)) or isinstance(value, bool):
            errors.append((path, f"Invalid value: {shown}: {where} in body must be of type int-or-string"))
        return value
    expected = _SCHEMA_TYPES.get(kind or "")
    if expected and (not isinstance(value, expected) or (kind != "boolean" and isinstance(value, bool))):
        errors.append((path, f"Invalid value: {shown}: {where} in body must be of type {kind}: {shown}"))
        return value
    if "enum" in schema and value not in schema["enum"]:
        supported = ", ".join(json.dumps(v) for v in schema["enum"])
        errors.append((path, f"Unsupported value: {shown}: supported values: {supported}"))
    if isinstance(value, str) and "pattern" in schema and not re.search(schema["pattern"], value):
        errors.append((path, f"Invalid value: {shown}: {where} in body should match '{schema['pattern']}'"))
    for keyword, types, measure, sign, wording in _SCHEMA_BOUNDS:
        applies = keyword in schema and isinstance(value, types) and not isinstance(value, bool)
        if applies and (measure(value) - schema[keyword]) * sign > 0:
            errors.append((path, f"Invalid value: {shown}: {where} in body {wording.format(schema[keyword])}"))
    bits = {"int32": 31, "int64": 63}.get(schema.get("format", ""))
    if bits and isinstance(value, int) and not -(2**bits) <= value < 2**bits:
        errors.append((path, f"Invalid value: {shown}: {where} in body must be of type {schema['format']}"))
    if isinstance(value, list) and schema.get("x-kubernetes-list-type") == "set":
        duplicates = [(i, item) for i, item in enumerate(value) if item in value[:i]]
        errors.extend(((*path, i), f"Duplicate value: {json.dumps(item)}") for i, item in duplicates)
    if isinstance(value, list) and schema.get("items"):
        return [_apply_schema(schema["items"], item, (*path, i), errors) for i, item in enumerate(value)]
    if not isinstance(value, dict):
        return value
    properties: Mapping[str, Any] = schema.get("properties") or {}
    additional = schema.get("additionalProperties")
    preserve = schema.get("x-kubernetes-preserve-unknown-fields") or additional is True
    result: JSON = {}
    for key, item in value.items():
        sub = properties.get(key, additional if isinstance(additional, dict) else None)
        if item is None and not (sub or {}).get("nullable"):
            continue  # nulls of non-nullable fields are pruned
        if sub is not None:
            result[key] = _apply_schema(sub, item, (*path, key), errors)
        elif preserve:
            result[key] = item
    for key, sub in properties.items():
        if key not in result and "default" in sub:
            result[key] = _apply_schema(sub, copy.deepcopy(sub["default"]), (*path, key), errors)
    errors.extend(((*path, key), "Required value") for key in schema.get("required", ()) if key not in result)
    return result


# -- authentication and RBAC, as the API server's authenticators and authorizer decide ---------------------


@dataclass(frozen=True, slots=True)
class _IssuedToken:
    """What the emulator remembers of a token it issued: the token itself is random and carries nothing."""

    namespace: str
    name: str
    uid: str
    audiences: tuple[str, ...]
    expires: float  # seconds since the epoch
    jti: str

    @property
    def username(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.name}"


def _timestamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _rule_allows(rule: Mapping[str, Any], attributes: Mapping[str, str]) -> bool:
    """RBAC's ``RuleAllows``: verbs, then API groups, resources (``*``, ``res/sub``, ``*/sub``) and names,
    or non-resource URLs (exact, ``*``, or a ``prefix*``) for a request without a resource."""
    verbs = rule.get("verbs") or []
    if "*" not in verbs and attributes["verb"] not in verbs:
        return False
    if "path" in attributes:
        path = attributes["path"]
        urls = rule.get("nonResourceURLs") or []
        return any(u == "*" or u == path or (u.endswith("*") and path.startswith(u.rstrip("*"))) for u in urls)
    groups = rule.get("apiGroups") or []
    if "*" not in groups and attributes["group"] not in groups:
        return False
    sub = attributes["subresource"]
    combined = f"{attributes['resource']}/{sub}" if sub else attributes["resource"]
    if not any(r in ("*", combined) or (sub and r == f"*/{sub}") for r in rule.get("resources") or []):
        return False
    names = rule.get("resourceNames") or []
    return not names or attributes["name"] in names


def _subject_applies(subject: Mapping[str, Any], user: str, groups: list[str], namespace: str) -> bool:
    """RBAC's ``appliesToUser``: a ServiceAccount subject without a namespace is the binding's own."""
    kind, name = subject.get("kind"), str(subject.get("name", ""))
    if kind == "User":
        return user == name
    if kind == "Group":
        return name in groups
    if kind == "ServiceAccount":
        account_namespace = subject.get("namespace") or namespace
        return bool(account_namespace) and user == f"system:serviceaccount:{account_namespace}:{name}"
    return False


def _describe_binding(binding: Mapping[str, Any], subject: Mapping[str, Any]) -> str:
    """How RBAC names the binding that allowed a request, in its ``reason``."""
    meta, ref = binding["metadata"], binding.get("roleRef") or {}
    namespace = meta.get("namespace") or ""
    kind = "RoleBinding" if namespace else "ClusterRoleBinding"
    name = f"{meta['name']}/{namespace}" if namespace else meta["name"]
    who = subject.get("name", "")
    if subject.get("kind") == "ServiceAccount":
        who = f"{who}/{subject.get('namespace') or namespace}"
    target = f"{subject.get('kind')} {_go_quote(who)}"
    return f"{kind} {_go_quote(name)} of {ref.get('kind')} {_go_quote(ref.get('name', ''))} to {target}"


def _path_segment_problem(name: str) -> str | None:
    """``path.IsValidPathSegmentName``, the only rule for RBAC object names."""
    if name in (".", ".."):
        return f"may not be '{name}'"
    for char in "/%":
        if char in name:
            return f"may not contain '{char}'"
    return None


def _unsupported(value: str, supported: tuple[str, ...]) -> str:
    """``field.NotSupported``'s wording."""
    return f"Unsupported value: {_go_quote(value)}: supported values: " + ", ".join(_go_quote(v) for v in supported)


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _rule_problems(kind: str, where: str, rule: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``ValidatePolicyRule``: verbs; non-resource URLs only in ClusterRoles and alone; else groups and resources."""
    problems: list[tuple[str, str]] = []
    if not rule.get("verbs"):
        problems.append((f"{where}.verbs", "Required value: verbs must contain at least one value"))
    if urls := rule.get("nonResourceURLs"):
        shown = f"Invalid value: {_compact(urls)}"
        if kind == "Role":
            problems.append(
                (f"{where}.nonResourceURLs", f"{shown}: namespaced rules cannot apply to non-resource URLs")
            )
        if rule.get("apiGroups") or rule.get("resources") or rule.get("resourceNames"):
            reason = "rules cannot apply to both regular resources and non-resource URLs"
            problems.append((f"{where}.nonResourceURLs", f"{shown}: {reason}"))
        return problems
    if not rule.get("apiGroups"):
        problems.append((f"{where}.apiGroups", "Required value: resource rules must supply at least one api group"))
    if not rule.get("resources"):
        problems.append((f"{where}.resources", "Required value: resource rules must supply at least one resource"))
    return problems


def _subject_problems(kind: str, where: str, subject: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``ValidateRoleBindingSubject``: a ClusterRoleBinding must name a ServiceAccount's namespace."""
    problems: list[tuple[str, str]] = []
    subject_kind, group = subject.get("kind", ""), subject.get("apiGroup", "")
    if not subject.get("name"):
        problems.append((f"{where}.name", "Required value"))
    if subject_kind == "ServiceAccount":
        if group:
            problems.append((f"{where}.apiGroup", _unsupported(group, ("",))))
        if kind == "ClusterRoleBinding" and not subject.get("namespace"):
            problems.append((f"{where}.namespace", "Required value"))
    elif subject_kind in ("User", "Group"):
        if group != RBAC_GROUP:
            problems.append((f"{where}.apiGroup", _unsupported(group, (RBAC_GROUP,))))
    else:
        problems.append((f"{where}.kind", _unsupported(subject_kind, ("ServiceAccount", "User", "Group"))))
    return problems


def _rbac_problems(kind: str, obj: Mapping[str, Any], old: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """The RBAC API's validation (``pkg/apis/rbac/validation``) of a Role, ClusterRole or binding."""
    problems: list[tuple[str, str]] = []
    if kind in ("Role", "ClusterRole"):
        for i, rule in enumerate(obj.get("rules") or []):
            problems += _rule_problems(kind, f"rules[{i}]", rule)
        aggregation = obj.get("aggregationRule")
        if kind == "ClusterRole" and aggregation is not None and not aggregation.get("clusterRoleSelectors"):
            reason = "Required value: at least one clusterRoleSelector required if aggregationRule is non-nil"
            problems.append(("aggregationRule.clusterRoleSelectors", reason))
        return problems
    ref = obj.get("roleRef") or {}
    if ref.get("apiGroup", "") != RBAC_GROUP:
        problems.append(("roleRef.apiGroup", _unsupported(ref.get("apiGroup", ""), (RBAC_GROUP,))))
    kinds = ("Role", "ClusterRole") if kind == "RoleBinding" else ("ClusterRole",)
    if ref.get("kind", "") not in kinds:
        problems.append(("roleRef.kind", _unsupported(ref.get("kind", ""), kinds)))
    if not ref.get("name"):
        problems.append(("roleRef.name", "Required value"))
    for i, subject in enumerate(obj.get("subjects") or []):
        problems += _subject_problems(kind, f"subjects[{i}]", subject)
    if old is not None and old.get("roleRef") != obj.get("roleRef"):
        # The internal RoleRef has no JSON tags: the server shows its Go field names.
        shown = _compact(
            {"APIGroup": ref.get("apiGroup", ""), "Kind": ref.get("kind", ""), "Name": ref.get("name", "")}
        )
        problems.append(("roleRef", f"Invalid value: {shown}: cannot change roleRef"))
    return problems


PORT_ANNOTATION_PREFIX = "kube-emulator.gadget-operator.io/port-"
"""Pod annotation naming where the emulator's port-forward reaches a pod's port (it has no pod network)."""
_PORTFORWARD_PATH = re.compile(r"/api/v1/namespaces/(?P<namespace>[^/]+)/pods/(?P<pod>[^/]+)/portforward")


class KubeEmulator:
    """The emulated API server: discovery, CRUD, patch, finalizers, list and watch, over real HTTP."""

    def __init__(self) -> None:
        self.url = ""
        self.requests: list[RecordedRequest] = []
        self.history_limit = 10_000  # watch events kept for resumption; older resourceVersions answer 410
        self.bookmark_interval = 30.0  # seconds between BOOKMARKs on the watches that allow them
        self.require_namespaces = False  # True: creating in a missing namespace answers 404, as a real server
        self._types: dict[tuple[str, str, str], ResourceType] = {}
        self._objects: dict[tuple[str, str], dict[tuple[str, str], JSON]] = {}  # (group, plural) -> (ns, name)
        self._history: deque[_Event] = deque()
        self._history_floor = 0  # the newest resourceVersion no longer in the history
        self._rv = 0
        self._watchers: set[tuple[str, str, asyncio.Queue[_Event | None]]] = set()
        self._runner: web.AppRunner | None = None
        self._denied: set[tuple[str, str, str | None]] = set()  # (verb, resource, subresource)
        self.portforwards_open = 0  # port-forward streams open now, and the most ever open at once
        self.portforwards_peak = 0
        self.api_audiences: tuple[str, ...] = API_AUDIENCES
        self.clock: Callable[[], float] = time.time
        """Now, in seconds since the epoch, for tokens' lifetimes: a test moves it on instead of waiting."""
        self._tokens: dict[str, _IssuedToken] = {}
        for rt in _builtin_types():
            self.add_resource_type(rt)
        for namespace in ("default", "kube-system", "kube-public", "kube-node-lease"):
            self.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (port 0: any free one) and return the base URL."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # Handler cancellation ends watches whose client went away; a short shutdown keeps stop() prompt.
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        self.url = f"http://{host}:{self._runner.addresses[0][1]}"
        return self.url

    async def stop(self) -> None:
        """End every watch stream cleanly, then close the server."""
        for _, _, queue in list(self._watchers):
            queue.put_nowait(None)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- synchronous helpers for tests and the demo ------------------------------------------------

    def register_crd(self, crd: Mapping[str, Any]) -> None:
        """Store a CustomResourceDefinition and serve its resources, as if it had been applied."""
        body = copy.deepcopy(dict(crd))
        spec = body.get("spec", {})
        body.setdefault("metadata", {}).setdefault("name", f"{spec['names']['plural']}.{spec['group']}")
        self.put(body | {"apiVersion": f"{CRD_GROUP}/v1", "kind": "CustomResourceDefinition"})

    def add_resource_type(self, rt: ResourceType) -> None:
        """Serve one more built-in resource (e.g. apps/v1 daemonsets) that the defaults lack."""
        self._types[(rt.group, rt.version, rt.plural)] = rt

    def put(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Create or replace an object as stored state, status included, emitting watch events.

        Unlike the HTTP API this keeps the given status and needs no resourceVersion: it seeds the world
        a test starts from (nodes, daemon pods). Server-managed metadata is assigned as usual.
        """
        rt = self._type_of(str(obj.get("apiVersion", "")), str(obj.get("kind", "")))
        body = copy.deepcopy(dict(obj))
        meta = body.setdefault("metadata", {})
        meta.pop("resourceVersion", None)
        namespace = meta.get("namespace") if rt.namespaced else None
        if rt.namespaced and not namespace:
            raise ValueError(f"{rt.kind} {meta.get('name')!r} needs metadata.namespace")
        old = self._bucket(rt).get((namespace or "", str(meta.get("name", ""))))
        if old is None:
            return self._present(rt, self._create(rt, namespace, body, keep_status=True))
        return self._present(rt, self._commit(rt, old, body, subresource=None, keep_status=True))

    def get(self, api_version: str, kind_plural: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        """The stored object, or None; ``kind_plural`` is the resource's plural (``pods``)."""
        rt = self._type_at(api_version, kind_plural)
        obj = self._bucket(rt).get(((namespace or "") if rt.namespaced else "", name))
        return self._present(rt, obj) if obj is not None else None

    def list_objects(self, api_version: str, kind_plural: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """All stored objects of a resource (in one namespace if given), in the server's key order."""
        rt = self._type_at(api_version, kind_plural)
        return [self._present(rt, obj) for (ns, _), obj in sorted(self._bucket(rt).items()) if namespace in (None, ns)]

    def delete(self, api_version: str, kind_plural: str, name: str, namespace: str | None = None) -> None:
        """Delete as a client would: with finalizers, the object is only marked as being deleted."""
        rt = self._type_at(api_version, kind_plural)
        self._delete(rt, namespace if rt.namespaced else None, name, {})

    def deny(self, verb: str, resource: str, subresource: str | None = None) -> None:
        """Make the requester's RBAC deny ``verb`` on ``resource[/subresource]``: 403 Forbidden.

        Honoured by every resource request, and by ``pods/portforward`` (a WebSocket GET that Kubernetes
        1.35 authorizes as both get and create, so denying either refuses it); ``allow`` undoes it.
        """
        self._denied.add((verb, resource, subresource))

    def allow(self, verb: str, resource: str, subresource: str | None = None) -> None:
        self._denied.discard((verb, resource, subresource))

    def writes(self, plural: str, name: str, namespace: str | None = None, subresource: str | None = None) -> int:
        """Successful create/update/patch/delete requests to one object (``subresource`` None: the main resource).

        ``namespace`` None counts the writes in any namespace. No-op writes count too: they were requests.
        """
        return sum(
            1
            for r in self.requests
            if r.verb in WRITE_VERBS and 200 <= r.status < 300 and (r.resource, r.name) == (plural, name)
            if namespace in (None, r.namespace) and r.subresource == subresource
        )

    # -- state -------------------------------------------------------------------------------------

    def _type_of(self, api_version: str, kind: str) -> ResourceType:
        for rt in self._types.values():
            if (rt.api_version, rt.kind) == (api_version, kind):
                return rt
        raise KeyError(f"no resource of kind {kind!r} is served in {api_version!r}")

    def _type_at(self, api_version: str, plural: str) -> ResourceType:
        group, _, version = api_version.rpartition("/")
        if (group, version, plural) not in self._types:
            raise KeyError(f"no resource {plural!r} is served in {api_version!r}")
        return self._types[(group, version, plural)]

    def _bucket(self, rt: ResourceType) -> dict[tuple[str, str], JSON]:
        return self._objects.setdefault((rt.group, rt.plural), {})

    @staticmethod
    def _present(rt: ResourceType, obj: Mapping[str, Any]) -> JSON:
        """A copy for the outside world, with the apiVersion and kind of the version it was asked through."""
        body = {k: v for k, v in copy.deepcopy(dict(obj)).items() if k not in ("apiVersion", "kind")}
        return {"apiVersion": rt.api_version, "kind": rt.kind} | body

    def _store(self, rt: ResourceType, kind: str, obj: JSON, prev: JSON | None) -> JSON:
        """Write at the next resourceVersion and tell the watches; the only place state changes."""
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        key = (obj["metadata"].get("namespace") or "", obj["metadata"]["name"])
        if kind == "DELETED":
            del self._bucket(rt)[key]
        else:
            self._bucket(rt)[key] = obj
        event = _Event(self._rv, rt.group, rt.plural, kind, obj, prev)
        while len(self._history) >= self.history_limit:
            self._history_floor = self._history.popleft().rv
        self._history.append(event)
        for group, plural, queue in self._watchers:
            if (group, plural) == (rt.group, rt.plural):
                queue.put_nowait(event)
        if rt.group == CRD_GROUP:
            self._serve_crd(obj, served=kind != "DELETED")
        return obj

    def _serve_crd(self, crd: Mapping[str, Any], *, served: bool) -> None:
        """(Re)serve a CRD's resources; a deleted CRD takes its custom resources with it, as on a real server."""
        group, plural = crd["spec"]["group"], crd["spec"]["names"]["plural"]
        previous = [rt for (g, _, p), rt in self._types.items() if (g, p) == (group, plural)]
        if not served and previous:
            for obj in list(self._bucket(previous[0]).values()):
                self._store(previous[0], "DELETED", copy.deepcopy(obj), None)
        self._types = {key: rt for key, rt in self._types.items() if (key[0], key[2]) != (group, plural)}
        for rt in _crd_types(crd) if served else []:
            self.add_resource_type(rt)

    def _lookup(self, rt: ResourceType, namespace: str | None, name: str) -> JSON:
        obj = self._bucket(rt).get((namespace or "", name))
        if obj is None:
            raise ApiError(404, "NotFound", f'{rt.group_resource} "{name}" not found', rt.details(name))
        return obj

    @staticmethod
    def _metadata_of(rt: ResourceType, obj: Any) -> JSON:
        """The checks every written body goes through (an object, of this kind); returns a copy of its metadata."""
        if not isinstance(obj, Mapping) or not isinstance(obj.get("metadata", {}), Mapping):
            raise _bad_request("the body of the request is not a Kubernetes object")
        for key, expected in (("apiVersion", rt.api_version), ("kind", rt.kind)):
            if obj.get(key) and obj[key] != expected:
                raise _bad_request(f"the {key} of the object ({obj[key]}) does not match the expected {expected}")
        return copy.deepcopy(dict(obj.get("metadata") or {}))

    def _mutate(self, rt: ResourceType, obj: JSON, old: JSON | None) -> None:
        """Server-side changes on every write: a CRD's status; a custom resource's schema pruning and defaults."""
        name = obj["metadata"]["name"]
        if (rt.group, rt.plural) == ("", "events"):
            # As the real server validates a core/v1 Event: about a cluster-scoped object (no involvedObject
            # namespace) it lives in "default"; about a namespaced one, in that object's namespace.
            involved = (obj.get("involvedObject") or {}).get("namespace") or ""
            namespace = obj["metadata"].get("namespace") or ""
            if namespace != involved and not (not involved and namespace == "default"):
                raise rt.invalid(
                    name, [("involvedObject.namespace", f'Invalid value: "{involved}": does not match event.namespace')]
                )
        if rt.group == RBAC_GROUP and (problems := _rbac_problems(rt.kind, obj, old)):
            raise rt.invalid(name, problems)
        if rt.group == CRD_GROUP:
            spec = obj.get("spec") or {}
            names = spec.get("names") or {}
            if not (spec.get("group") and names.get("plural") and names.get("kind") and spec.get("versions")):
                raise rt.invalid(name, [("spec", "Required value: group, names and versions are required")])
            if name != f"{names['plural']}.{spec['group']}":
                raise rt.invalid(name, [("metadata.name", 'Invalid value: must be spec.names.plural+"."+spec.group')])
            previous = ((old or {}).get("status") or {}).get("storedVersions", [])
            stored = [v["name"] for v in spec["versions"] if v.get("storage") and v["name"] not in previous]
            condition = {"status": "True", "lastTransitionTime": obj["metadata"]["creationTimestamp"]}
            obj["status"] = {
                "acceptedNames": {"singular": names["kind"].lower()} | names,
                "conditions": [
                    condition | {"type": "NamesAccepted", "reason": "NoConflicts", "message": "no conflicts found"},
                    condition | {"type": "Established", "reason": "InitialNamesAccepted", "message": "accepted"},
                ],
                "storedVersions": previous + stored,
            }
        if rt.custom and rt.schema:
            errors: list[tuple[FieldPath, str]] = []
            pruned = _apply_schema(rt.schema, {k: v for k, v in obj.items() if k not in _TOP}, (), errors)
            errors = [(path, message) for path, message in errors if path[:1] not in [(k,) for k in _TOP]]
            if old is not None:
                # Validation ratcheting (GA in Kubernetes 1.33): an update may keep a value that fails a
                # rule added since it was stored; only changed values are judged. Missing required fields
                # are still reported (the conservative reading: a real server is at least this strict).
                ratcheted = [
                    e for e in errors if e[1] != "Required value" and _value_at(obj, e[0]) == _value_at(old, e[0])
                ]
                errors = [error for error in errors if error not in ratcheted]
            if errors:
                raise rt.invalid(name, [(_render(path), message) for path, message in errors])
            for key in [k for k in obj if k not in _TOP]:
                del obj[key]
            obj.update(pruned)

    def _create(self, rt: ResourceType, namespace: str | None, body: Any, *, keep_status: bool) -> JSON:
        meta = self._metadata_of(rt, body)
        obj: JSON = copy.deepcopy(dict(body)) | {"apiVersion": rt.api_version, "kind": rt.kind}
        if not rt.namespaced:
            meta.pop("namespace", None)
        elif meta.setdefault("namespace", namespace) != namespace:
            raise _bad_request("the namespace of the provided object does not match the namespace sent on the request")
        elif self.require_namespaces and ("", namespace) not in self._bucket(self._type_at("v1", "namespaces")):
            raise ApiError(
                404, "NotFound", f'namespaces "{namespace}" not found', {"name": namespace, "kind": "namespaces"}
            )
        if meta.get("resourceVersion"):
            raise ApiError(500, "InternalError", "resourceVersion should not be set on objects to be created")
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise rt.invalid("", [("metadata.name", "Required value: name or generateName is required")])
            while not meta.get("name") or (namespace or "", meta["name"]) in self._bucket(rt):
                meta["name"] = meta["generateName"] + "".join(random.choices("bcdfghjklmnpqrstvwxz2456789", k=5))
        name = meta["name"]
        dns_label = rt.plural == "namespaces"  # namespace names are DNS labels, the others DNS subdomains
        if rt.path_segment_names:
            if (problem := _path_segment_problem(name)) is not None:
                raise rt.invalid(name, [("metadata.name", f"Invalid value: {_go_quote(name)}: {problem}")])
        elif not _NAME_RE.match(name) or len(name) > (63 if dns_label else 253) or (dns_label and "." in name):
            reason = "a lowercase RFC 1123 name must consist of lower case alphanumeric characters, '-' or '.'"
            raise rt.invalid(name, [("metadata.name", f'Invalid value: "{name}": {reason}')])
        if (namespace or "", name) in self._bucket(rt):
            raise ApiError(409, "AlreadyExists", f'{rt.group_resource} "{name}" already exists', rt.details(name))
        for key in ("deletionTimestamp", "deletionGracePeriodSeconds", "generation"):
            meta.pop(key, None)
        meta |= {"uid": str(uuid.uuid4()), "creationTimestamp": _now()}
        meta |= {"generation": 1} if rt.tracks_generation or rt.custom else {}
        obj["metadata"] = meta
        if rt.status_subresource and ((rt.strip_status_on_create and not keep_status) or "status" not in obj):
            obj.pop("status", None)
            obj |= {"status": copy.deepcopy(rt.initial_status)} if rt.initial_status is not None else {}
        self._mutate(rt, obj, None)
        return self._store(rt, "ADDED", obj, None)

    def _commit(
        self, rt: ResourceType, old: JSON, candidate: Any, *, subresource: str | None, keep_status: bool = False
    ) -> JSON:
        """Apply an update (a PUT, or a patch's result) with the real server's rules; a no-op changes nothing."""
        meta = self._metadata_of(rt, candidate)
        old_meta, name = old["metadata"], old["metadata"]["name"]
        if meta.get("name") != name:
            raise _bad_request(
                f"the name of the object ({meta.get('name')}) does not match the name on the URL ({name})"
            )
        if rt.namespaced and (meta.get("namespace") or old_meta["namespace"]) != old_meta["namespace"]:
            raise _bad_request("the namespace of the provided object does not match the namespace sent on the request")
        if meta.get("resourceVersion") and meta["resourceVersion"] != old_meta["resourceVersion"]:
            message = (
                f'Operation cannot be fulfilled on {rt.group_resource} "{name}": the object has been modified; '
                "please apply your changes to the latest version and try again"
            )
            raise ApiError(409, "Conflict", message, rt.details(name))
        if meta.get("uid") and meta["uid"] != old_meta["uid"]:
            raise rt.invalid(name, [("metadata.uid", f'Invalid value: "{meta["uid"]}": field is immutable')])
        system = ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation")
        meta = {k: v for k, v in meta.items() if k not in system} | {k: old_meta[k] for k in system if k in old_meta}
        meta |= {"namespace": old_meta.get("namespace"), "resourceVersion": old_meta["resourceVersion"]}
        new: JSON = copy.deepcopy(dict(candidate)) | {"apiVersion": old["apiVersion"], "kind": rt.kind}
        new["metadata"] = {k: v for k, v in meta.items() if v is not None}
        if rt.status_subresource and subresource == "status":  # the status, and nothing else, from the body
            new = {k: v for k, v in copy.deepcopy(old).items() if k != "status"} | (
                {"status": new["status"]} if new.get("status") is not None else {}
            )
        elif rt.status_subresource and not keep_status:  # anything but the status from the body
            new = {k: v for k, v in new.items() if k != "status"} | (
                {"status": copy.deepcopy(old["status"])} if "status" in old else {}
            )
        added = set(new["metadata"].get("finalizers") or []) - set(old_meta.get("finalizers") or [])
        if old_meta.get("deletionTimestamp") and added:
            cause = "Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers"
            raise rt.invalid(name, [("metadata.finalizers", f"{cause} {sorted(added)}")])
        self._mutate(rt, new, old)
        if (rt.custom or rt.tracks_generation) and self._spec_of(rt, new) != self._spec_of(rt, old):
            new["metadata"]["generation"] = old_meta.get("generation", 0) + 1
        if new == old:
            return old
        if old_meta.get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            # The last finalizer is gone: the object goes, as its last stored state (so a real server does).
            return self._store(rt, "DELETED", copy.deepcopy(old), None)
        return self._store(rt, "MODIFIED", new, old)

    @staticmethod
    def _spec_of(rt: ResourceType, obj: Mapping[str, Any]) -> JSON:
        """What generation tracks: for CRDs all but metadata (and status if a subresource), else the spec."""
        if not rt.custom:
            return {"spec": obj.get("spec")}
        return {k: v for k, v in obj.items() if k not in _TOP and (k != "status" or not rt.status_subresource)}

    def _delete(self, rt: ResourceType, namespace: str | None, name: str, options: Mapping[str, Any]) -> JSON:
        old = self._lookup(rt, namespace, name)
        meta = old["metadata"]
        preconditions = options.get("preconditions") or {}
        for key, label in (("uid", "UID"), ("resourceVersion", "ResourceVersion")):
            if preconditions.get(key) and preconditions[key] != meta.get(key):
                message = f"{label} in precondition: {preconditions[key]}, {label} in object meta: {meta.get(key)}"
                raise ApiError(409, "Conflict", f"Precondition failed: {message}", rt.details(name))
        if meta.get("deletionTimestamp"):
            return old
        new = copy.deepcopy(old)
        if not meta.get("finalizers"):
            return self._store(rt, "DELETED", new, None)
        new["metadata"] |= {"deletionTimestamp": _now(), "deletionGracePeriodSeconds": 0}
        if new["metadata"].get("generation", 0) > 0:
            new["metadata"]["generation"] += 1
        return self._store(rt, "MODIFIED", new, old)

    # -- authentication and authorization ----------------------------------------------------------

    def issue_token(
        self,
        namespace: str,
        name: str,
        audiences: tuple[str, ...] = (),
        expiration_seconds: int = DEFAULT_TOKEN_SECONDS,
    ) -> str:
        """A token of ServiceAccount ``namespace/name``, as a TokenRequest through the API would give."""
        spec: JSON = {"expirationSeconds": expiration_seconds} | ({"audiences": list(audiences)} if audiences else {})
        return str(self._token_request(namespace, name, {"spec": spec})["status"]["token"])

    def review_token(self, token: str, audiences: tuple[str, ...] = ()) -> JSON:
        """A TokenReview's status for ``token``, as the API server's authenticators decide it."""
        requested = list(audiences or self.api_audiences)
        issued = self._tokens.get(token)
        if issued is None:
            # Not a token any authenticator recognizes: the bearer-token authenticator's own error.
            return {"user": {}, "error": "invalid bearer token"}
        chosen = [a for a in requested if a in issued.audiences]  # authenticator.Audiences.Intersect
        if not chosen:
            invalid = f"{_go_quote_list(list(issued.audiences))} is invalid for the target audiences"
            return {"user": {}, "error": f"token audiences {invalid} {_go_quote_list(requested)}"}
        now = self.clock()
        if now - TOKEN_LEEWAY > issued.expires:
            return {"user": {}, "error": "service account token has expired"}
        rt = self._type_at("v1", "serviceaccounts")
        account = self._bucket(rt).get((issued.namespace, issued.name))
        if account is None:
            return {"user": {}, "error": f'serviceaccounts "{issued.name}" not found'}
        meta = account["metadata"]
        if meta["uid"] != issued.uid:
            return {"user": {}, "error": f"service account UID ({meta['uid']}) does not match claim ({issued.uid})"}
        deleted = meta.get("deletionTimestamp")
        if deleted and datetime.fromisoformat(deleted.replace("Z", "+00:00")).timestamp() < now - TOKEN_LEEWAY:
            return {"user": {}, "error": f"service account {issued.namespace}/{issued.name} has been deleted"}
        groups = ["system:serviceaccounts", f"system:serviceaccounts:{issued.namespace}", "system:authenticated"]
        extra = {"authentication.kubernetes.io/credential-id": [f"JTI={issued.jti}"]}
        user = {"username": issued.username, "uid": issued.uid, "groups": groups, "extra": extra}
        return {"authenticated": True, "user": user, "audiences": chosen}

    def access_allowed(self, user: str, groups: list[str], attributes: Mapping[str, str]) -> tuple[bool, str]:
        """The authorizer's decision and reason for ``attributes`` (``verb``, ``namespace``, ``group``,
        ``resource``, ``subresource``, ``name``; or ``verb`` and ``path``): system:masters, then RBAC."""
        if SYSTEM_MASTERS in groups:
            return True, ""
        namespace = attributes.get("namespace", "")
        errors: list[str] = []
        role_bindings = self._bucket(self._type_at(f"{RBAC_GROUP}/v1", "clusterrolebindings"))
        bindings = [b for _, b in sorted(role_bindings.items())]
        if namespace:
            role_bindings = self._bucket(self._type_at(f"{RBAC_GROUP}/v1", "rolebindings"))
            bindings += [b for (ns, _), b in sorted(role_bindings.items()) if ns == namespace]
        for binding in bindings:  # the cluster's bindings first, as RBAC visits them
            binding_namespace = binding["metadata"].get("namespace") or ""
            subjects = binding.get("subjects") or []
            subject = next((s for s in subjects if _subject_applies(s, user, groups, binding_namespace)), None)
            if subject is None:
                continue
            rules, error = self._role_rules(binding.get("roleRef") or {}, binding_namespace)
            if error:
                errors.append(error)
            elif any(_rule_allows(rule, attributes) for rule in rules):
                return True, f"RBAC: allowed by {_describe_binding(binding, subject)}"
        # RBAC has no opinion; a missing role is the only thing it says why.
        return False, f"RBAC: {_aggregate(errors)}" if errors else ""

    def _role_rules(self, ref: Mapping[str, Any], namespace: str) -> tuple[list[JSON], str]:
        """A binding's rules, or the error its role lister gives (singular resource names, as listers word them)."""
        kind, name = ref.get("kind"), ref.get("name", "")
        if kind not in ("Role", "ClusterRole"):
            return [], f"unsupported role reference kind: {_go_quote(str(kind))}"
        plural = "roles" if kind == "Role" else "clusterroles"
        role = self._bucket(self._type_at(f"{RBAC_GROUP}/v1", plural)).get((namespace if kind == "Role" else "", name))
        if role is None:
            return [], f'{str(kind).lower()}.{RBAC_GROUP} "{name}" not found'
        return list(role.get("rules") or []), ""

    def _authorize(
        self, request: web.Request, verb: str, rt: ResourceType, sub: str | None, namespace: str | None, name: str
    ) -> None:
        """The requester's RBAC, as ``deny`` set it: 403 with the real server's message."""
        if (verb, rt.plural, sub) in self._denied:
            raise _forbidden(self._requester(request), verb, rt.group, rt.plural, sub, namespace, name)

    def _requester(self, request: web.Request) -> str:
        """Who a request's credential names: a ServiceAccount token this emulator issued, else a stand-in."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if not scheme:
            return "system:anonymous"
        issued = self._tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if issued is not None and self.review_token(token.strip()).get("authenticated"):
            return issued.username
        return "emulator-user"

    def _token_request(self, namespace: str, name: str, body: Any) -> JSON:
        """``POST serviceaccounts/<name>/token``: the checks and their order are the API server's ``TokenREST``."""
        if not isinstance(body, Mapping) or not isinstance(body.get("metadata") or {}, Mapping):
            raise _bad_request("the body of the request is not a TokenRequest")
        expected = {"apiVersion": f"{AUTHENTICATION_GROUP}/v1", "kind": "TokenRequest"}
        for key, value in expected.items():
            if body.get(key) and body[key] != value:
                raise _bad_request(f"the {key} of the object ({body[key]}) does not match the expected {value}")
        meta = dict(body.get("metadata") or {})
        for key in ("name", "namespace"):
            if meta.get(key) and meta[key] != {"name": name, "namespace": namespace}[key]:
                reason = f"must match the service account {key} if specified"
                problem = (f"metadata.{key}", f"Invalid value: {_go_quote(meta[key])}: {reason}")
                raise _invalid(AUTHENTICATION_GROUP, "TokenRequest", name, [problem])
        account = self._lookup(self._type_at("v1", "serviceaccounts"), namespace, name)["metadata"]
        spec = dict(body.get("spec") or {})
        audiences = [str(a) for a in spec.get("audiences") or self.api_audiences]
        seconds = spec.get("expirationSeconds")
        seconds = DEFAULT_TOKEN_SECONDS if seconds is None else seconds
        if not isinstance(seconds, int) or isinstance(seconds, bool):
            raise _bad_request(f"spec.expirationSeconds must be an integer, not {_compact(seconds)}")
        problems = []
        if seconds < MIN_TOKEN_SECONDS:
            reason = "may not specify a duration less than 10 minutes"
            problems.append(("spec.expirationSeconds", f"Invalid value: {seconds}: {reason}"))
        if seconds > 1 << 32:
            reason = "may not specify a duration larger than 2^32 seconds"
            problems.append(("spec.expirationSeconds", f"Invalid value: {seconds}: {reason}"))
        if problems:  # the server validates after filling in the name: yet it reports an empty one
            raise _invalid(AUTHENTICATION_GROUP, "TokenRequest", "", problems)
        if spec.get("boundObjectRef"):
            raise _bad_request("the kube emulator does not bind tokens to objects")
        now = self.clock()
        token = secrets.token_urlsafe(32)
        issued = _IssuedToken(namespace, name, account["uid"], tuple(audiences), now + seconds, str(uuid.uuid4()))
        self._tokens[token] = issued
        return {
            "kind": "TokenRequest",
            "apiVersion": f"{AUTHENTICATION_GROUP}/v1",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": account["uid"],
                "creationTimestamp": _timestamp(now),
            },
            "spec": {"audiences": audiences, "expirationSeconds": seconds, "boundObjectRef": None},
            "status": {"token": token, "expirationTimestamp": _timestamp(now + seconds)},
        }

    def _review(self, rt: ResourceType, body: Any) -> JSON:
        """A TokenReview or SubjectAccessReview: the request, answered with a status, and stored nowhere."""
        meta = self._metadata_of(rt, body)
        spec = dict(body.get("spec") or {})
        if rt.kind == "TokenReview":
            if not spec.get("token"):
                raise _bad_request("token is required for TokenReview in authentication")
            status = self.review_token(str(spec["token"]), tuple(spec.get("audiences") or ()))
        else:
            status = self._access_review(rt, spec, meta)
        return {"kind": rt.kind, "apiVersion": rt.api_version, "metadata": {"creationTimestamp": None}} | {
            "spec": spec,
            "status": status,
        }

    def _access_review(self, rt: ResourceType, spec: Mapping[str, Any], meta: Mapping[str, Any]) -> JSON:
        """``ValidateSubjectAccessReview``, then the authorizer's decision for the user and groups given."""
        resource, non_resource = spec.get("resourceAttributes"), spec.get("nonResourceAttributes")
        problems: list[tuple[str, str]] = []
        if resource is not None and non_resource is not None:
            reason = "cannot be specified in combination with resourceAttributes"
            problems.append(("spec.nonResourceAttributes", f"Invalid value: {_compact(non_resource)}: {reason}"))
        if resource is None and non_resource is None:
            reason = "exactly one of nonResourceAttributes or resourceAttributes must be specified"
            problems.append(("spec.resourceAttributes", f"Invalid value: null: {reason}"))
        if not spec.get("user") and not spec.get("groups"):
            reason = "at least one of user or group must be specified"
            problems.append(("spec.user", f"Invalid value: {_go_quote(spec.get('user') or '')}: {reason}"))
        if set_fields := {k: v for k, v in meta.items() if v not in (None, "", {}, [])}:
            problems.append(("metadata", f"Invalid value: {_compact(set_fields)}: must be empty"))
        if problems:
            raise rt.invalid("", problems)
        if resource is not None:
            keys = ("namespace", "verb", "group", "resource", "subresource", "name")
            attributes = {key: str(resource.get(key) or "") for key in keys}
        else:
            attributes = {key: str((non_resource or {}).get(key) or "") for key in ("verb", "path")}
        allowed, reason = self.access_allowed(str(spec.get("user") or ""), list(spec.get("groups") or []), attributes)
        return {"allowed": allowed} | ({"reason": reason} if reason else {})

    # -- HTTP --------------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        record = RecordedRequest(request.method, request.path, dict(request.query))
        record.content_type = request.headers.get("Content-Type")
        record.user_agent = request.headers.get("User-Agent", "")
        record.authorization = request.headers.get("Authorization", "")
        self.requests.append(record)
        forward = _PORTFORWARD_PATH.fullmatch(request.path)
        if forward is not None and request.method == "GET":
            return await self._portforward(request, record, forward["namespace"], forward["pod"])
        try:
            response = await self._dispatch(request, record)
        except ApiError as error:
            response = web.json_response(error.status(), status=error.code)
        except Exception as error:  # an emulator bug must still answer like a server, and show in the logs
            logger.exception("kube emulator failed on %s %s", request.method, request.path_qs)
            response = web.json_response(ApiError(500, "InternalError", repr(error)).status(), status=500)
        record.status = record.status or response.status
        logger.debug("%s %s -> %s", request.method, request.path_qs, record.status)
        return response

    async def _portforward(
        self, request: web.Request, record: RecordedRequest, namespace: str, pod_name: str
    ) -> web.StreamResponse:
        """``pods/<pod>/portforward`` over WebSocket (``v4.channel.k8s.io``), as kubectl port-forward uses it.

        The emulator has no pod network: a pod's port P is reached at the address in its annotation
        ``PORT_ANNOTATION_PREFIX + P`` (``tcp://host:port`` or ``unix:///path``), e.g. a simulated daemon.
        """
        record.verb, record.group, record.version = "get", "", "v1"
        record.resource, record.subresource, record.namespace, record.name = "pods", "portforward", namespace, pod_name
        # Authorization comes first, as on a real server: a denied request learns nothing of the pod.
        for verb in ("create", "get"):
            if (verb, "pods", "portforward") in self._denied:
                record.status = 403
                refusal = _forbidden(self._requester(request), verb, "", "pods", "portforward", namespace, pod_name)
                return web.json_response(refusal.status(), status=403)
        pod = self._bucket(self._type_at("v1", "pods")).get((namespace, pod_name))
        ports = request.query.get("ports", "")
        if pod is None:
            record.status = 404
            return web.json_response(ApiError(404, "NotFound", f'pods "{pod_name}" not found').status(), status=404)
        if not ports.isdigit():
            record.status = 400
            return web.json_response(_bad_request("query parameter ports must be one port number").status(), status=400)
        port = int(ports)
        ws = web.WebSocketResponse(protocols=("v4.channel.k8s.io",), max_msg_size=0)
        await ws.prepare(request)
        record.status = 101
        self.portforwards_open += 1
        self.portforwards_peak = max(self.portforwards_peak, self.portforwards_open)
        try:
            return await self._forward(ws, pod, pod_name, port)
        finally:
            self.portforwards_open -= 1

    async def _forward(self, ws: web.WebSocketResponse, pod: JSON, pod_name: str, port: int) -> web.WebSocketResponse:
        """Pump one port-forward stream between the WebSocket and the pod port's stand-in."""
        header = port.to_bytes(2, "little")
        await ws.send_bytes(b"\x00" + header)
        await ws.send_bytes(b"\x01" + header)
        target = (pod["metadata"].get("annotations") or {}).get(f"{PORT_ANNOTATION_PREFIX}{port}", "")
        try:
            if target.startswith("unix://"):
                reader, writer = await asyncio.open_unix_connection(target.removeprefix("unix://"))
            else:
                host, _, target_port = target.removeprefix("tcp://").rpartition(":")
                reader, writer = await asyncio.open_connection(host, int(target_port))
        except (OSError, ValueError) as error:
            await ws.send_bytes(b"\x01" + f"error forwarding port {port} to pod {pod_name}: {error}".encode())
            await ws.close()
            return ws

        async def pod_to_client() -> None:
            while data := await reader.read(65536):
                await ws.send_bytes(b"\x00" + data)

        async def client_to_pod() -> None:
            async for message in ws:
                if message.type is web.WSMsgType.BINARY and message.data[:1] == b"\x00":
                    writer.write(message.data[1:])
                    await writer.drain()

        tasks = [asyncio.ensure_future(pod_to_client()), asyncio.ensure_future(client_to_pod())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            writer.close()  # before any await: a second cancellation must not skip it
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            await ws.close()
        return ws

    def _discovery(self, parts: list[str]) -> JSON | None:
        """The documents of /version, /api, /apis and the group/version resource lists; None elsewhere."""
        groups: dict[str, list[str]] = {}
        for group, version, _ in self._types:
            groups[group] = sorted({*groups.get(group, []), version}, key=_version_priority)

        def group_doc(name: str) -> JSON:
            versions = [{"groupVersion": f"{name}/{v}", "version": v} for v in groups[name]]
            return {"name": name, "versions": versions, "preferredVersion": versions[0]}

        if parts == ["version"]:
            return {"major": "1", "minor": "35", "gitVersion": "v1.35.0-emulator", "platform": "linux/amd64"}
        if parts in (["healthz"], ["livez"], ["readyz"]):
            return {"status": "ok"}
        if parts == ["api"]:
            return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
        if parts == ["apis"]:
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [group_doc(g) for g in groups if g]}
        if len(parts) == 2 and parts[0] == "apis" and parts[1] in groups:
            return {"kind": "APIGroup", "apiVersion": "v1"} | group_doc(parts[1])
        if len(parts) == {"api": 2, "apis": 3}.get(parts[0] if parts else "", -1):
            group, version = ("", parts[1]) if parts[0] == "api" else (parts[1], parts[2])
            if version not in groups.get(group, []):
                return None
            resources: list[JSON] = []
            for rt in [rt for (g, v, _), rt in self._types.items() if (g, v) == (group, version)]:
                all_verbs = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
                resources.append(
                    {"name": rt.plural, "singularName": rt.singular, "namespaced": rt.namespaced, "kind": rt.kind}
                    | {"verbs": ["create"] if rt.create_only else all_verbs}
                    | ({"shortNames": list(rt.short_names)} if rt.short_names else {})
                    | ({"categories": list(rt.categories)} if rt.categories else {})
                )
                for sub in rt.create_subresources:  # serviceaccounts/token: a TokenRequest of another group
                    token = {"name": f"{rt.plural}/{sub}", "singularName": "", "namespaced": rt.namespaced}
                    token |= {"group": AUTHENTICATION_GROUP, "version": "v1", "kind": "TokenRequest"}
                    resources.append(token | {"verbs": ["create"]})
                if rt.status_subresource:
                    status = {"name": f"{rt.plural}/status", "singularName": "", "namespaced": rt.namespaced}
                    resources.append(status | {"kind": rt.kind, "verbs": ["get", "patch", "update"]})
            group_version = f"{group}/{version}" if group else version
            return {
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": group_version,
                "resources": resources,
            }
        return None

    def _resolve(
        self, parts: list[str], record: RecordedRequest
    ) -> tuple[ResourceType, str | None, str | None, str | None]:
        """Map a resource path to (type, namespace, name, subresource), or answer 404 like the real server."""
        not_found = ApiError(404, "NotFound", "the server could not find the requested resource", {})
        if len(parts) >= 3 and parts[0] == "api":
            group, version, rest = "", parts[1], parts[2:]
        elif len(parts) >= 4 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise not_found
        namespace = None
        if rest[0] == "namespaces" and len(rest) >= 3 and not (len(rest) == 3 and rest[2] in ("status", "finalize")):
            namespace, rest = rest[1], rest[2:]
        plural, name, sub = rest[0], rest[1] if len(rest) > 1 else None, rest[2] if len(rest) > 2 else None
        record.group, record.version, record.resource = group, version, plural
        record.namespace, record.name, record.subresource = namespace, name, sub
        rt = self._types.get((group, version, plural))
        if rt is None or len(rest) > 3 or (namespace is not None and not rt.namespaced):
            raise not_found
        served = sub is None or (sub == "status" and rt.status_subresource) or sub in rt.create_subresources
        if (rt.namespaced and namespace is None and name is not None) or not served:
            raise not_found
        return rt, namespace, name, sub

    async def _dispatch(self, request: web.Request, record: RecordedRequest) -> web.StreamResponse:
        parts = [p for p in request.path.split("/") if p]
        record.verb = "get"
        if request.method == "GET" and (doc := self._discovery(parts)) is not None:
            return web.json_response(doc)
        rt, namespace, name, sub = self._resolve(parts, record)
        query = request.query
        if sub is not None and sub in rt.create_subresources:
            record.verb = "create"
            if request.method != "POST":
                raise _not_allowed()
            self._authorize(request, "create", rt, sub, namespace, name or "")
            if "dryRun" in query:
                raise _bad_request("dryRun is not supported by the kube emulator")
            body = await self._body(request, "create")
            return web.json_response(self._token_request(namespace or "", name or "", body), status=201)
        verbs = {
            "GET": "watch" if _truthy(query.get("watch")) else "get" if name else "list",
            "POST": "create",
            "PUT": "update",
            "PATCH": "patch",
            "DELETE": "delete" if name else "deletecollection",
        }
        record.verb = verb = verbs.get(request.method, "")
        if not verb or (name is None) == (verb in ("get", "update", "patch", "delete")) or (verb == "create" and name):
            raise _not_allowed()
        if (sub and verb not in ("get", "update", "patch")) or (
            verb in ("create", "deletecollection") and rt.namespaced and namespace is None
        ):
            raise _not_allowed()
        if rt.create_only and verb != "create":
            raise _not_allowed()
        self._authorize(request, verb, rt, sub, namespace, name or "")
        if "dryRun" in query:
            raise _bad_request("dryRun is not supported by the kube emulator")
        if verb == "get":
            return web.json_response(self._present(rt, self._lookup(rt, namespace, name or "")))
        if verb == "list":
            return web.json_response(self._list(rt, self._filter(rt, namespace, None, query), query))
        if verb == "watch":
            return await self._watch(request, record, rt, self._filter(rt, namespace, name, query))
        if verb == "deletecollection":
            listed = self._list(rt, self._filter(rt, namespace, None, query), {})
            items = [self._present(rt, self._delete(rt, namespace, o["metadata"]["name"], {})) for o in listed["items"]]
            return web.json_response(listed | {"items": items})
        body = await self._body(request, verb)
        if verb == "create" and rt.create_only:
            return web.json_response(self._review(rt, body), status=201)
        if verb == "create":
            obj = self._create(rt, namespace, body, keep_status=False)
            record.name = obj["metadata"]["name"]
            return web.json_response(self._present(rt, obj), status=201)
        if verb == "delete":
            obj = self._delete(rt, namespace, name or "", body if isinstance(body, Mapping) else {})
            if obj["metadata"].get("deletionTimestamp") or rt.return_deleted_object:
                return web.json_response(self._present(rt, obj))
            details = rt.details(obj["metadata"]["name"]) | {"uid": obj["metadata"]["uid"]}
            return web.json_response(
                {"kind": "Status", "apiVersion": "v1", "metadata": {}} | {"status": "Success", "details": details}
            )
        name = name or ""
        if verb == "update" and not sub and rt.create_on_update and (namespace or "", name) not in self._bucket(rt):
            if self._metadata_of(rt, body).get("name") != name:
                raise _bad_request(f"the name of the object does not match the name on the URL ({name})")
            return web.json_response(
                self._present(rt, self._create(rt, namespace, body, keep_status=False)), status=201
            )
        old = self._lookup(rt, namespace, name)
        candidate = body if verb == "update" else self._patched(rt, old, body, request.content_type)
        return web.json_response(self._present(rt, self._commit(rt, old, candidate, subresource=sub)))

    @staticmethod
    async def _body(request: web.Request, verb: str) -> Any:
        raw = await request.read()
        if not raw:
            if verb == "delete":
                return {}
            raise _bad_request("the body of the request is empty")
        try:
            if request.content_type in ("application/yaml", "application/apply-patch+yaml"):
                return yaml.safe_load(raw)
            return json.loads(raw)
        except (ValueError, yaml.YAMLError) as error:
            raise _bad_request(f"the body of the request could not be decoded: {error}") from error

    def _patched(self, rt: ResourceType, old: JSON, patch: Any, content_type: str) -> Any:
        """The object a patch makes of the stored one; the update rules then apply to it."""
        current = self._present(rt, old)
        if content_type == MERGE_PATCH or (content_type == STRATEGIC_PATCH and not rt.custom):
            if not isinstance(patch, dict):
                raise _bad_request("a merge patch must be a JSON object")
            return _merge_patch(current, patch)
        if content_type == JSON_PATCH:
            if not isinstance(patch, list):
                raise _bad_request("a JSON patch must be a list of operations")
            try:
                return jsonpatch.JsonPatch(patch).apply(current)
            except Exception as error:  # failed test ops, missing paths, malformed ops: all 422 on a real server
                details = rt.details(old["metadata"]["name"])
                raise ApiError(422, "Invalid", str(error) or type(error).__name__, details) from error
        accepted = f"{JSON_PATCH}, {MERGE_PATCH}" + ("" if rt.custom else f", {STRATEGIC_PATCH}")
        message = f"the body of the request was in an unknown format - accepted media types include: {accepted}"
        raise ApiError(415, "UnsupportedMediaType", message)

    @staticmethod
    def _filter(rt: ResourceType, namespace: str | None, name: str | None, query: Mapping[str, str]) -> _Filter:
        fields: list[tuple[str, bool, str]] = []
        for term in filter(str.strip, query.get("fieldSelector", "").split(",")):
            match = _FIELD_TERM_RE.match(term)
            if not match:
                raise _bad_request(f"invalid field selector: {term!r}")
            if match["key"] not in ("metadata.name", "metadata.namespace", *rt.fields):
                raise _bad_request(f"field label not supported: {match['key']}")
            fields.append((match["key"], match["op"] != "!=", match["value"]))
        return _Filter(rt, namespace, name, _parse_label_selector(query.get("labelSelector", "")), fields)

    def _list(self, rt: ResourceType, flt: _Filter, query: Mapping[str, str]) -> JSON:
        """A list at the current resourceVersion, paged by ``limit``/``continue`` in the server's key order."""
        try:
            limit = int(query.get("limit") or 0)
            token = json.loads(base64.urlsafe_b64decode(query["continue"])) if query.get("continue") else None
            list_rv, after = (str(token["rv"]), tuple(token["after"])) if token else (str(self._rv), None)
        except (ValueError, KeyError, TypeError) as error:
            raise _bad_request(f"invalid limit or continue token: {error}") from error
        keyed = [(key, obj) for key, obj in sorted(self._bucket(rt).items()) if flt.matches(obj)]
        keyed = [(key, obj) for key, obj in keyed if after is None or key > after]
        page = keyed[:limit] if limit > 0 else keyed
        meta: JSON = {"resourceVersion": list_rv}
        if len(page) < len(keyed):
            token_json = json.dumps({"rv": list_rv, "after": page[-1][0]}).encode()
            meta |= {
                "continue": base64.urlsafe_b64encode(token_json).decode(),
                "remainingItemCount": len(keyed) - len(page),
            }
        items = [self._present(rt, obj) for _, obj in page]
        return {"kind": f"{rt.kind}List", "apiVersion": rt.api_version, "metadata": meta, "items": items}

    @staticmethod
    def _seen_by(flt: _Filter, event: _Event) -> tuple[str, JSON] | None:
        """How a filtered watch sees an event: objects entering the filter are ADDED, leaving it DELETED."""
        now = flt.matches(event.obj)
        before = event.prev is not None and flt.matches(event.prev)
        if event.type != "MODIFIED":
            return (event.type, event.obj) if now else None
        if now:
            return ("MODIFIED" if before else "ADDED", event.obj)
        return ("DELETED", event.obj) if before else None

    async def _watch(
        self, request: web.Request, record: RecordedRequest, rt: ResourceType, flt: _Filter
    ) -> web.StreamResponse:
        """Stream JSON-line events: the current state (or the history after ``resourceVersion``), then live ones."""
        query = request.query
        try:
            timeout = float(query["timeoutSeconds"]) if query.get("timeoutSeconds") else math.inf
            since = int(query["resourceVersion"]) if query.get("resourceVersion", "0") != "0" else None
        except ValueError as error:
            raise _bad_request(f"invalid resourceVersion or timeoutSeconds: {error}") from error
        bookmarks, initial_events = _truthy(query.get("allowWatchBookmarks")), _truthy(query.get("sendInitialEvents"))
        if initial_events and not bookmarks:
            raise rt.invalid("", [("allowWatchBookmarks", "Required value: sendInitialEvents requires bookmarks")])
        # Take the backlog and subscribe with no await in between, so no event is lost or seen twice.
        backlog: list[tuple[str, JSON]] = []
        if since is None or initial_events:
            backlog = [("ADDED", obj) for _, obj in sorted(self._bucket(rt).items()) if flt.matches(obj)]
        elif since < self._history_floor:
            message = f"too old resource version: {since} ({self._history_floor + 1})"
            backlog = [("ERROR", ApiError(410, "Expired", message).status())]
        else:
            mine = (e for e in self._history if e.rv > since and (e.group, e.plural) == (rt.group, rt.plural))
            backlog = [seen for e in mine if (seen := self._seen_by(flt, e)) is not None]
        if initial_events:
            marker = {"resourceVersion": str(self._rv), "annotations": {"k8s.io/initial-events-end": "true"}}
            backlog.append(("BOOKMARK", {"metadata": marker}))
        queue: asyncio.Queue[_Event | None] = asyncio.Queue()
        subscription = (rt.group, rt.plural, queue)
        if not backlog or backlog[0][0] != "ERROR":
            self._watchers.add(subscription)
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            await response.prepare(request)
            record.status = 200
            for kind, obj in backlog:
                await self._send(response, rt, kind, obj)
            while subscription in self._watchers and loop.time() < deadline:
                wait = min(deadline - loop.time(), self.bookmark_interval if bookmarks else math.inf)
                try:
                    async with asyncio.timeout(None if wait == math.inf else wait):
                        event = await queue.get()
                except TimeoutError:
                    if bookmarks and loop.time() < deadline:
                        await self._send(response, rt, "BOOKMARK", {"metadata": {"resourceVersion": str(self._rv)}})
                    continue
                if event is None:
                    break
                if (seen := self._seen_by(flt, event)) is not None:
                    await self._send(response, rt, *seen)
            await response.write_eof()
        except ConnectionError:  # the client went away: nothing left to tell it
            pass
        finally:
            self._watchers.discard(subscription)
        return response

    async def _send(self, response: web.StreamResponse, rt: ResourceType, kind: str, obj: JSON) -> None:
        shown = obj if kind == "ERROR" else self._present(rt, obj)
        await response.write(json.dumps({"type": kind, "object": shown}).encode() + b"\n")


class EmulatorThread:
    """Runs a KubeEmulator on a thread and loop of its own, for clients that own the calling thread's loop.

    kopf's KopfRunner runs the operator in its own thread and loop; a test's loop may be busy or absent.
    The emulator's state must only be touched from its loop: use ``call`` (and ``run`` for coroutines).
    """

    def __init__(self, emulator: KubeEmulator | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.emulator = emulator or KubeEmulator()
        self.url = ""
        self._host, self._port = host, port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name="kube-emulator", daemon=True)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        finally:
            self._loop.close()

    def __enter__(self) -> EmulatorThread:
        self._thread.start()
        self.url = self.run(self.emulator.start(self._host, self._port))
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        try:
            self.run(self.emulator.stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        """Run a coroutine on the emulator's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Call ``fn`` on the emulator's loop (e.g. ``call(emulator.put, obj)``) and return its result."""

        async def invoke() -> T:
            return fn(*args, **kwargs)

        return self.run(invoke())
