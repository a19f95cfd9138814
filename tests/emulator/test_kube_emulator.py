"""The Kubernetes API emulator's own semantics, checked over real HTTP against what a real API server does.

The operator's integration tests are only as honest as this emulator; every rule in docs/testing.md
("The Kubernetes API emulator must behave like the real API server") has a test here.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import kopf
import pytest
from kopf.testing import KopfRunner
from kubernetes.aio import client as kclient
from kubernetes.aio.client.exceptions import ApiException

from gadget_operator.testing.kube_emulator import EmulatorThread, KubeEmulator

WIDGETS = "/apis/example.test/v1/namespaces/default/widgets"
PODS = "/api/v1/namespaces/default/pods"
WIDGET_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.example.test"},
    "spec": {
        "group": "example.test",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"]},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "properties": {
                                    "size": {"type": "integer", "minimum": 0},
                                    "color": {"type": "string", "enum": ["blue", "red"], "default": "blue"},
                                    "tags": {
                                        "type": "array",
                                        "items": {"type": "string"},
                                        "x-kubernetes-list-type": "set",
                                    },
                                },
                            },
                            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                        },
                    }
                },
            }
        ],
    },
}

Reply = tuple[int, dict[str, Any]]


@pytest.fixture
async def emulator() -> AsyncIterator[KubeEmulator]:
    emulator = KubeEmulator()
    emulator.register_crd(WIDGET_CRD)
    await emulator.start()
    yield emulator
    await emulator.stop()


@pytest.fixture
async def http(emulator: KubeEmulator) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=emulator.url) as session:
        yield session


async def call(
    http: aiohttp.ClientSession, method: str, path: str, body: Any = None, content_type: str = "application/json"
) -> Reply:
    data = None if body is None else json.dumps(body)
    async with http.request(method, path, data=data, headers={"Content-Type": content_type}) as response:
        return response.status, await response.json()


async def create_widget(http: aiohttp.ClientSession, name: str, **extra: Any) -> dict[str, Any]:
    status, body = await call(http, "POST", WIDGETS, {"metadata": {"name": name}, "spec": {"size": 1}} | extra)
    assert status == 201, body
    return body


async def next_events(response: aiohttp.ClientResponse, count: int, within: float = 5.0) -> list[dict[str, Any]]:
    """The next ``count`` watch events, failing after ``within`` seconds instead of hanging."""
    events = []
    async with asyncio.timeout(within):
        while len(events) < count:
            line = await response.content.readline()
            assert line, f"the stream ended after {events}"
            events.append(json.loads(line))
    return events


def summary(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["type"], e["object"]["metadata"].get("name", "")) for e in events]


async def watch_until(
    url: str, path: str, predicate: Callable[[str, dict[str, Any]], bool], rv: str = "", within: float = 30.0
) -> dict[str, Any]:
    """Watch ``path`` until an event satisfies ``predicate``: waits on the server's own events, with a deadline."""
    params = {"watch": "true"} | ({"resourceVersion": rv} if rv else {})
    async with (
        asyncio.timeout(within),
        aiohttp.ClientSession() as session,
        session.get(url + path, params=params) as r,
    ):
        async for line in r.content:
            event = json.loads(line)
            if predicate(event["type"], event["object"]):
                return dict(event["object"])
    raise AssertionError("the watch ended before the condition held")


# -- discovery ---------------------------------------------------------------------------------------------


async def test_discovery_serves_builtins_and_crd_groups(http: aiohttp.ClientSession) -> None:
    assert (await call(http, "GET", "/version"))[1]["major"] == "1"
    assert (await call(http, "GET", "/api"))[1]["versions"] == ["v1"]

    core = {r["name"]: r for r in (await call(http, "GET", "/api/v1"))[1]["resources"]}
    assert core["pods"]["namespaced"] is True
    assert core["pods"]["kind"] == "Pod"
    assert core["nodes"]["namespaced"] is False
    assert {"pods/status", "nodes/status", "events", "namespaces", "configmaps"} <= set(core)

    groups = {g["name"]: g for g in (await call(http, "GET", "/apis"))[1]["groups"]}
    assert {"events.k8s.io", "coordination.k8s.io", "apiextensions.k8s.io", "example.test"} <= set(groups)
    assert groups["example.test"]["preferredVersion"] == {"groupVersion": "example.test/v1", "version": "v1"}

    status, listing = await call(http, "GET", "/apis/example.test/v1")
    assert status == 200
    assert listing["kind"] == "APIResourceList"
    assert listing["groupVersion"] == "example.test/v1"
    widgets = {r["name"]: r for r in listing["resources"]}
    assert widgets["widgets"]["singularName"] == "widget"
    assert widgets["widgets"]["kind"] == "Widget"
    assert widgets["widgets"]["namespaced"] is True
    assert widgets["widgets"]["shortNames"] == ["wd"]
    assert "watch" in widgets["widgets"]["verbs"]
    assert widgets["widgets/status"]["verbs"] == ["get", "patch", "update"]

    status, missing = await call(http, "GET", "/apis/nothing.example/v1")
    assert status == 404
    assert missing["kind"] == "Status"
    assert missing["reason"] == "NotFound"


async def test_crd_objects_are_served_and_a_crd_posted_over_http_serves_its_resources(
    http: aiohttp.ClientSession,
) -> None:
    status, crds = await call(http, "GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions")
    assert status == 200
    assert [c["metadata"]["name"] for c in crds["items"]] == ["widgets.example.test"]
    established = {c["type"]: c["status"] for c in crds["items"][0]["status"]["conditions"]}
    assert established["Established"] == "True"

    gadget_crd = json.loads(json.dumps(WIDGET_CRD).replace("widget", "gizmo").replace("Widget", "Gizmo"))
    gadget_crd["spec"]["scope"] = "Cluster"
    status, _ = await call(http, "POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", gadget_crd)
    assert status == 201
    status, gizmo = await call(http, "POST", "/apis/example.test/v1/gizmos", {"metadata": {"name": "g"}})
    assert status == 201
    assert "namespace" not in gizmo["metadata"]
    assert (await call(http, "GET", "/apis/example.test/v1/namespaces/default/gizmos/g"))[0] == 404

    status, _ = await call(
        http, "DELETE", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/gizmos.example.test"
    )
    assert status == 200
    assert (await call(http, "GET", "/apis/example.test/v1/gizmos/g"))[0] == 404
    names = [r["name"] for r in (await call(http, "GET", "/apis/example.test/v1"))[1]["resources"]]
    assert "gizmos" not in names
    assert "widgets" in names


# -- create, get ------------------------------------------------------------------------------------------


async def test_create_assigns_server_fields_and_strips_status(http: aiohttp.ClientSession) -> None:
    first = await create_widget(http, "one", status={"ready": True})
    meta = first["metadata"]
    assert first["apiVersion"] == "example.test/v1"
    assert first["kind"] == "Widget"
    assert meta["namespace"] == "default"
    assert meta["generation"] == 1
    assert uuid.UUID(meta["uid"]).version == 4
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", meta["creationTimestamp"])
    assert "status" not in first  # the status subresource is enabled: status in a create body is dropped

    second = await create_widget(http, "two")
    assert int(second["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])

    status, error = await call(http, "POST", WIDGETS, {"metadata": {"name": "one"}})
    assert status == 409
    assert error["reason"] == "AlreadyExists"
    assert error["code"] == 409
    assert error["message"] == 'widgets.example.test "one" already exists'

    status, error = await call(http, "POST", WIDGETS, {"metadata": {"name": "x", "namespace": "other"}})
    assert status == 400
    assert error["reason"] == "BadRequest"
    assert error["kind"] == "Status"

    status, generated = await call(http, "POST", WIDGETS, {"metadata": {"generateName": "gen-"}})
    assert status == 201
    assert re.fullmatch(r"gen-[a-z0-9]{5}", generated["metadata"]["name"])

    status, error = await call(http, "POST", WIDGETS, {"metadata": {}})
    assert status == 422
    assert error["reason"] == "Invalid"

    status, error = await call(http, "POST", "/api/v1/pods", {"metadata": {"name": "p"}})
    assert status == 405
    assert error["reason"] == "MethodNotAllowed"


async def test_builtin_kinds_get_their_server_side_defaults(http: aiohttp.ClientSession) -> None:
    status, pod = await call(http, "POST", PODS, {"metadata": {"name": "p"}, "status": {"phase": "Running"}})
    assert status == 201
    assert pod["status"] == {"phase": "Pending"}
    status, node = await call(http, "POST", "/api/v1/nodes", {"metadata": {"name": "n1"}, "status": {"phase": "x"}})
    assert status == 201
    assert node["status"] == {"phase": "x"}
    assert "namespace" not in node["metadata"]
    assert (await call(http, "GET", "/api/v1/namespaces/default/nodes/n1"))[0] == 404
    status, namespace = await call(http, "GET", "/api/v1/namespaces/default")
    assert status == 200
    assert namespace["kind"] == "Namespace"
    assert namespace["status"]["phase"] == "Active"


async def test_get_of_a_missing_object_answers_a_not_found_status(http: aiohttp.ClientSession) -> None:
    status, body = await call(http, "GET", f"{WIDGETS}/x")
    assert status == 404
    assert body == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'widgets.example.test "x" not found',
        "reason": "NotFound",
        "details": {"name": "x", "group": "example.test", "kind": "widgets"},
        "code": 404,
    }


async def test_schema_prunes_unknown_fields_applies_defaults_and_rejects_invalid_values(
    http: aiohttp.ClientSession,
) -> None:
    widget = await create_widget(http, "w", spec={"size": 2, "unknown": "x"}, extra=1)
    assert widget["spec"] == {"size": 2, "color": "blue"}
    assert "extra" not in widget

    status, error = await call(http, "POST", WIDGETS, {"metadata": {"name": "bad"}, "spec": {"size": "big"}})
    assert status == 422
    assert error["reason"] == "Invalid"
    assert error["message"].startswith('Widget.example.test "bad" is invalid: spec.size: Invalid value')
    assert error["details"]["causes"][0]["field"] == "spec.size"
    status, error = await call(http, "POST", WIDGETS, {"metadata": {"name": "bad"}, "spec": {"color": "green"}})
    assert status == 422
    assert "spec.color: Unsupported value" in error["message"]
    status, error = await call(http, "POST", WIDGETS, {"metadata": {"name": "bad"}, "spec": {"tags": ["a", "a"]}})
    assert status == 422
    assert 'spec.tags[1]: Duplicate value: "a"' in error["message"]


async def test_updates_may_keep_values_that_fail_rules_added_since(
    emulator: KubeEmulator, http: aiohttp.ClientSession
) -> None:
    merge = "application/merge-patch+json"
    loose = copy.deepcopy(WIDGET_CRD)
    loose["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["size"].pop("minimum")
    emulator.register_crd(loose)
    await create_widget(http, "w", spec={"size": -1})
    emulator.register_crd(WIDGET_CRD)

    status, _ = await call(http, "PATCH", f"{WIDGETS}/w/status", {"status": {"seen": True}}, merge)
    assert status == 200  # validation ratcheting: the unchanged invalid size does not block other writes
    status, _ = await call(http, "PATCH", f"{WIDGETS}/w", {"metadata": {"labels": {"a": "b"}}}, merge)
    assert status == 200
    status, error = await call(http, "PATCH", f"{WIDGETS}/w", {"spec": {"size": -2}}, merge)
    assert status == 422
    assert "spec.size: Invalid value: -2" in error["message"]


# -- update -----------------------------------------------------------------------------------------------


async def test_update_rules_for_resource_version_status_and_generation(http: aiohttp.ClientSession) -> None:
    widget = await create_widget(http, "w")
    rv = widget["metadata"]["resourceVersion"]

    labelled = widget | {"metadata": widget["metadata"] | {"labels": {"a": "b"}}, "status": {"ignored": True}}
    status, updated = await call(http, "PUT", f"{WIDGETS}/w", labelled)
    assert status == 200
    assert updated["metadata"]["labels"] == {"a": "b"}
    assert "status" not in updated
    assert updated["metadata"]["generation"] == 1
    assert int(updated["metadata"]["resourceVersion"]) > int(rv)

    status, error = await call(http, "PUT", f"{WIDGETS}/w", labelled)  # the resourceVersion is stale now
    assert status == 409
    assert error["reason"] == "Conflict"
    assert "the object has been modified" in error["message"]

    resized = updated | {"spec": {"size": 5}}
    status, resized = await call(http, "PUT", f"{WIDGETS}/w", resized)
    assert status == 200
    assert resized["metadata"]["generation"] == 2

    to_status = resized | {"spec": {"size": 9}, "status": {"ready": True}}
    status, with_status = await call(http, "PUT", f"{WIDGETS}/w/status", to_status)
    assert status == 200
    assert with_status["status"] == {"ready": True}
    assert with_status["spec"]["size"] == 5
    assert with_status["metadata"]["generation"] == 2

    unconditional = {"metadata": {"name": "w"}, "spec": {"size": 6}}  # no resourceVersion: last write wins
    status, replaced = await call(http, "PUT", f"{WIDGETS}/w", unconditional)
    assert status == 200
    assert replaced["status"] == {"ready": True}
    assert replaced["metadata"]["generation"] == 3

    status, error = await call(http, "PUT", f"{WIDGETS}/w", {"metadata": {"name": "other"}})
    assert status == 400


async def test_a_no_op_write_keeps_the_resource_version_and_emits_no_event(
    emulator: KubeEmulator, http: aiohttp.ClientSession
) -> None:
    widget = await create_widget(http, "w")
    rv = widget["metadata"]["resourceVersion"]
    async with http.get(WIDGETS, params={"watch": "true", "resourceVersion": rv}) as stream:
        status, same = await call(http, "PUT", f"{WIDGETS}/w", widget)
        assert status == 200
        assert same["metadata"]["resourceVersion"] == rv
        status, same = await call(http, "PATCH", f"{WIDGETS}/w", {"spec": {"size": 1}}, "application/merge-patch+json")
        assert status == 200
        assert same["metadata"]["resourceVersion"] == rv
        await call(http, "PATCH", f"{WIDGETS}/w", {"spec": {"size": 2}}, "application/merge-patch+json")
        (event,) = await next_events(stream, 1)
    assert event["type"] == "MODIFIED"
    assert event["object"]["spec"]["size"] == 2
    assert emulator.writes("widgets", "w", "default") == 4


# -- patch ------------------------------------------------------------------------------------------------


async def test_merge_patch_semantics(http: aiohttp.ClientSession) -> None:
    merge = "application/merge-patch+json"
    widget = await create_widget(http, "w", metadata={"name": "w", "labels": {"a": "1", "b": "2"}})
    status, patched = await call(http, "PATCH", f"{WIDGETS}/w", {"metadata": {"labels": {"a": None, "c": "3"}}}, merge)
    assert status == 200
    assert patched["metadata"]["labels"] == {"b": "2", "c": "3"}

    stale = {"metadata": {"resourceVersion": widget["metadata"]["resourceVersion"]}, "spec": {"size": 3}}
    status, error = await call(http, "PATCH", f"{WIDGETS}/w", stale, merge)
    assert status == 409
    assert error["reason"] == "Conflict"

    status, patched = await call(http, "PATCH", f"{WIDGETS}/w", {"status": {"ready": True}, "spec": {"size": 4}}, merge)
    assert status == 200
    assert "status" not in patched
    assert patched["spec"]["size"] == 4
    status, patched = await call(
        http, "PATCH", f"{WIDGETS}/w/status", {"status": {"ready": True}, "spec": {"size": 7}}, merge
    )
    assert status == 200
    assert patched["status"] == {"ready": True}
    assert patched["spec"]["size"] == 4


async def test_json_patch_semantics(http: aiohttp.ClientSession) -> None:
    json_patch = "application/json-patch+json"
    widget = await create_widget(http, "w")
    rv = widget["metadata"]["resourceVersion"]
    ops = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": rv},
        {"op": "add", "path": "/metadata/finalizers", "value": ["example.test/f"]},
    ]
    status, patched = await call(http, "PATCH", f"{WIDGETS}/w", ops, json_patch)
    assert status == 200
    assert patched["metadata"]["finalizers"] == ["example.test/f"]

    status, error = await call(http, "PATCH", f"{WIDGETS}/w", ops, json_patch)  # the test op now fails
    assert status == 422
    assert error["kind"] == "Status"
    assert error["reason"] == "Invalid"
    assert error["code"] == 422
    status, error = await call(http, "PATCH", f"{WIDGETS}/w", [{"op": "remove", "path": "/spec/nothing"}], json_patch)
    assert status == 422
    status, error = await call(http, "PATCH", f"{WIDGETS}/w", {"op": "remove"}, json_patch)
    assert status == 400


async def test_patch_content_types(http: aiohttp.ClientSession) -> None:
    await create_widget(http, "w")
    status, error = await call(http, "PATCH", f"{WIDGETS}/w", {"spec": {}}, "application/strategic-merge-patch+json")
    assert status == 415
    assert error["reason"] == "UnsupportedMediaType"
    status, error = await call(http, "PATCH", f"{WIDGETS}/w", {"spec": {}}, "application/json")
    assert status == 415

    await call(http, "POST", PODS, {"metadata": {"name": "p"}})
    status, pod = await call(
        http, "PATCH", f"{PODS}/p", {"metadata": {"labels": {"x": "y"}}}, "application/strategic-merge-patch+json"
    )
    assert status == 200
    assert pod["metadata"]["labels"] == {"x": "y"}


# -- delete -----------------------------------------------------------------------------------------------


async def test_deletion_waits_for_finalizers(emulator: KubeEmulator, http: aiohttp.ClientSession) -> None:
    widget = await create_widget(http, "w", metadata={"name": "w", "finalizers": ["example.test/f"]})
    rv = widget["metadata"]["resourceVersion"]
    async with http.get(WIDGETS, params={"watch": "1", "resourceVersion": rv}) as stream:
        status, deleting = await call(http, "DELETE", f"{WIDGETS}/w")
        assert status == 200
        assert deleting["metadata"]["deletionTimestamp"].endswith("Z")
        assert deleting["metadata"]["deletionGracePeriodSeconds"] == 0
        assert (await call(http, "GET", f"{WIDGETS}/w"))[0] == 200

        more = {"metadata": {"finalizers": ["example.test/f", "example.test/g"]}}
        status, error = await call(http, "PATCH", f"{WIDGETS}/w", more, "application/merge-patch+json")
        assert status == 422
        assert "no new finalizers can be added if the object is being deleted" in error["message"]

        none = {"metadata": {"finalizers": None}}
        status, _ = await call(http, "PATCH", f"{WIDGETS}/w", none, "application/merge-patch+json")
        assert status == 200
        events = await next_events(stream, 2)
    assert summary(events) == [("MODIFIED", "w"), ("DELETED", "w")]
    assert (await call(http, "GET", f"{WIDGETS}/w"))[0] == 404
    assert (await call(http, "DELETE", f"{WIDGETS}/w"))[0] == 404
    assert emulator.get("example.test/v1", "widgets", "w", "default") is None


async def test_deletion_without_finalizers_is_immediate(http: aiohttp.ClientSession) -> None:
    widget = await create_widget(http, "w")
    async with http.get(
        WIDGETS, params={"watch": "true", "resourceVersion": widget["metadata"]["resourceVersion"]}
    ) as s:
        status, gone = await call(http, "DELETE", f"{WIDGETS}/w")
        assert status == 200
        assert gone["metadata"]["name"] == "w"
        (event,) = await next_events(s, 1)
    assert event["type"] == "DELETED"
    assert int(event["object"]["metadata"]["resourceVersion"]) > int(widget["metadata"]["resourceVersion"])
    await call(http, "POST", "/api/v1/namespaces/default/configmaps", {"metadata": {"name": "c"}})
    status, body = await call(
        http, "DELETE", "/api/v1/namespaces/default/configmaps/c", {"preconditions": {"uid": "not-the-uid"}}
    )
    assert status == 409
    assert body["reason"] == "Conflict"
    status, body = await call(http, "DELETE", "/api/v1/namespaces/default/configmaps/c")
    assert status == 200
    assert body["kind"] == "Status"
    assert body["status"] == "Success"


# -- list -------------------------------------------------------------------------------------------------


async def seed_pods(emulator: KubeEmulator) -> None:
    for name, namespace, labels, node, phase in [
        ("a", "default", {"app": "ig", "tier": "1"}, "n1", "Running"),
        ("b", "default", {"app": "ig"}, "n2", "Pending"),
        ("c", "default", {"app": "web", "tier": "2"}, "n1", "Running"),
        ("d", "other", {"app": "ig"}, "n1", "Running"),
    ]:
        metadata = {"name": name, "namespace": namespace, "labels": labels}
        emulator.put(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": metadata,
                "spec": {"nodeName": node},
                "status": {"phase": phase},
            }
        )


@pytest.mark.parametrize(
    ("params", "names"),
    [
        ({"labelSelector": "app=ig"}, ["a", "b"]),
        ({"labelSelector": "app==ig,tier"}, ["a"]),
        ({"labelSelector": "app!=ig"}, ["c"]),
        ({"labelSelector": "tier in (1, 2)"}, ["a", "c"]),
        ({"labelSelector": "tier notin (1)"}, ["b", "c"]),
        ({"labelSelector": "!tier"}, ["b"]),
        ({"labelSelector": "app in (ig,web),!tier"}, ["b"]),
        ({"fieldSelector": "metadata.name=b"}, ["b"]),
        ({"fieldSelector": "spec.nodeName=n1"}, ["a", "c"]),
        ({"fieldSelector": "status.phase!=Running"}, ["b"]),
        ({"fieldSelector": "spec.nodeName=n1,status.phase=Running", "labelSelector": "app=ig"}, ["a"]),
        ({"fieldSelector": "metadata.namespace=default"}, ["a", "b", "c"]),
    ],
)
async def test_list_with_selectors(
    emulator: KubeEmulator, http: aiohttp.ClientSession, params: dict[str, str], names: list[str]
) -> None:
    await seed_pods(emulator)
    async with http.get(PODS, params=params) as response:
        assert response.status == 200
        listing = await response.json()
    assert [p["metadata"]["name"] for p in listing["items"]] == names


async def test_list_shape_scope_and_paging(emulator: KubeEmulator, http: aiohttp.ClientSession) -> None:
    await seed_pods(emulator)
    _, latest = await call(http, "POST", "/api/v1/namespaces/default/configmaps", {"metadata": {"name": "c"}})
    _, listing = await call(http, "GET", PODS)
    assert listing["kind"] == "PodList"
    assert listing["apiVersion"] == "v1"
    # The list's resourceVersion is the server's latest, whatever resource that write was to.
    assert listing["metadata"]["resourceVersion"] == latest["metadata"]["resourceVersion"]
    assert all(p["kind"] == "Pod" and p["apiVersion"] == "v1" for p in listing["items"])
    status, everywhere = await call(http, "GET", "/api/v1/pods?labelSelector=app%3Dig")
    assert [(p["metadata"]["namespace"], p["metadata"]["name"]) for p in everywhere["items"]] == [
        ("default", "a"),
        ("default", "b"),
        ("other", "d"),
    ]
    status, page = await call(http, "GET", "/api/v1/pods?limit=3")
    assert len(page["items"]) == 3
    assert page["metadata"]["remainingItemCount"] == 1
    async with http.get("/api/v1/pods", params={"limit": "3", "continue": page["metadata"]["continue"]}) as rest:
        assert [p["metadata"]["name"] for p in (await rest.json())["items"]] == ["d"]

    status, error = await call(http, "GET", f"{PODS}?fieldSelector=spec.image%3Dx")
    assert status == 400
    assert error["message"] == "field label not supported: spec.image"
    status, error = await call(http, "GET", f"{PODS}?labelSelector=a%20in%20b")
    assert status == 400


# -- watch ------------------------------------------------------------------------------------------------


async def test_watch_from_a_resource_version_replays_nothing_older(http: aiohttp.ClientSession) -> None:
    await create_widget(http, "old")
    _, listing = await call(http, "GET", WIDGETS)
    rv = listing["metadata"]["resourceVersion"]
    await create_widget(http, "new")
    await call(http, "PATCH", f"{WIDGETS}/old", {"spec": {"size": 2}}, "application/merge-patch+json")
    params = {"watch": "true", "allowWatchBookmarks": "true", "resourceVersion": rv, "timeoutSeconds": "30"}
    async with http.get(WIDGETS, params=params) as stream:
        assert stream.headers["Content-Type"].startswith("application/json")
        events = await next_events(stream, 2)
        await create_widget(http, "live")
        events += await next_events(stream, 1)
    assert summary(events) == [("ADDED", "new"), ("MODIFIED", "old"), ("ADDED", "live")]
    assert all(e["object"]["kind"] == "Widget" and e["object"]["apiVersion"] == "example.test/v1" for e in events)


async def test_watch_without_resource_version_starts_with_the_current_state(http: aiohttp.ClientSession) -> None:
    await create_widget(http, "a")
    await create_widget(http, "b")
    async with http.get(WIDGETS, params={"watch": "true", "resourceVersion": "0"}) as stream:
        events = await next_events(stream, 2)
        await call(http, "DELETE", f"{WIDGETS}/a")
        events += await next_events(stream, 1)
    assert summary(events) == [("ADDED", "a"), ("ADDED", "b"), ("DELETED", "a")]


async def test_watch_applies_selectors_as_objects_enter_and_leave_them(
    emulator: KubeEmulator, http: aiohttp.ClientSession
) -> None:
    await seed_pods(emulator)
    merge = "application/merge-patch+json"
    params = {"watch": "true", "labelSelector": "app=ig", "fieldSelector": "spec.nodeName=n1"}
    async with http.get(PODS, params=params) as stream:
        events = await next_events(stream, 1)
        await call(http, "PATCH", f"{PODS}/a", {"metadata": {"labels": {"app": "web"}}}, merge)
        await call(http, "PATCH", f"{PODS}/c", {"metadata": {"labels": {"app": "ig"}}}, merge)
        await call(http, "PATCH", f"{PODS}/b", {"metadata": {"labels": {"x": "y"}}}, merge)  # not on n1: unseen
        await call(http, "PATCH", f"{PODS}/c", {"metadata": {"labels": {"y": "z"}}}, merge)
        events += await next_events(stream, 3)
    assert summary(events) == [("ADDED", "a"), ("DELETED", "a"), ("ADDED", "c"), ("MODIFIED", "c")]


async def test_watch_from_a_forgotten_resource_version_answers_410(
    emulator: KubeEmulator, http: aiohttp.ClientSession
) -> None:
    emulator.history_limit = 3
    first = await create_widget(http, "w0")
    for index in range(1, 5):
        await create_widget(http, f"w{index}")
    params = {"watch": "true", "resourceVersion": first["metadata"]["resourceVersion"]}
    async with http.get(WIDGETS, params=params) as stream:
        (event,) = await next_events(stream, 1)
        assert await stream.content.read() == b""  # and the stream ends
    assert event["type"] == "ERROR"
    assert event["object"]["kind"] == "Status"
    assert event["object"]["code"] == 410


async def test_watch_ends_after_timeout_seconds_and_sends_bookmarks(
    emulator: KubeEmulator, http: aiohttp.ClientSession
) -> None:
    emulator.bookmark_interval = 0.05
    params = {"watch": "true", "allowWatchBookmarks": "true", "timeoutSeconds": "1"}
    async with asyncio.timeout(10), http.get(WIDGETS, params=params) as stream:
        body = await stream.content.read()  # returns only when the server ends the stream
    events = [json.loads(line) for line in body.splitlines()]
    assert events
    assert {e["type"] for e in events} == {"BOOKMARK"}
    _, listing = await call(http, "GET", WIDGETS)
    assert events[-1]["object"]["metadata"]["resourceVersion"] == listing["metadata"]["resourceVersion"]


async def test_watch_with_initial_events_ends_them_with_a_bookmark(http: aiohttp.ClientSession) -> None:
    await create_widget(http, "a")
    params = {"watch": "true", "sendInitialEvents": "true", "allowWatchBookmarks": "true"}
    async with http.get(WIDGETS, params=params | {"resourceVersionMatch": "NotOlderThan"}) as stream:
        added, bookmark = await next_events(stream, 2)
    assert summary([added]) == [("ADDED", "a")]
    assert bookmark["type"] == "BOOKMARK"
    assert bookmark["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


async def test_stop_ends_open_watches(emulator: KubeEmulator, http: aiohttp.ClientSession) -> None:
    async with http.get(WIDGETS, params={"watch": "true"}) as stream:
        assert stream.status == 200
        async with asyncio.timeout(10):
            await emulator.stop()
            assert await stream.content.read() == b""


async def test_sync_helpers_share_state_with_http_and_emit_events(
    emulator: KubeEmulator, http: aiohttp.ClientSession
) -> None:
    async with http.get("/api/v1/nodes", params={"watch": "true"}) as stream:
        node = emulator.put({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}, "status": {"x": 1}})
        (event,) = await next_events(stream, 1)
        again = emulator.put(node | {"metadata": {"name": "n1", "labels": {"l": "v"}}})
        (changed,) = await next_events(stream, 1)
    assert event["type"] == "ADDED"
    assert event["object"]["status"] == {"x": 1}
    assert changed["type"] == "MODIFIED"
    assert again["metadata"]["uid"] == node["metadata"]["uid"]
    assert (await call(http, "GET", "/api/v1/nodes/n1"))[1]["metadata"]["labels"] == {"l": "v"}
    assert emulator.get("v1", "nodes", "n1") == again


async def test_requests_are_recorded_and_writes_counted(emulator: KubeEmulator, http: aiohttp.ClientSession) -> None:
    merge = "application/merge-patch+json"
    await create_widget(http, "w")
    await call(http, "PATCH", f"{WIDGETS}/w/status", {"status": {"a": 1}}, merge)
    await call(http, "PATCH", f"{WIDGETS}/w/status", {"status": {"a": 2}}, merge)
    await call(http, "GET", f"{WIDGETS}/w")
    await call(http, "PUT", f"{WIDGETS}/w", {"metadata": {"name": "w", "resourceVersion": "1"}})  # a failed write
    patch = next(r for r in emulator.requests if r.verb == "patch")
    assert (patch.group, patch.resource, patch.subresource, patch.namespace, patch.name) == (
        "example.test",
        "widgets",
        "status",
        "default",
        "w",
    )
    assert patch.status == 200
    assert patch.content_type == merge
    assert emulator.writes("widgets", "w", "default") == 1  # the create; the failed PUT does not count
    assert emulator.writes("widgets", "w", "default", subresource="status") == 2
    assert [r.verb for r in emulator.requests][-2:] == ["get", "update"]


# -- real clients -----------------------------------------------------------------------------------------


async def test_the_official_async_client_works_against_the_emulator(emulator: KubeEmulator) -> None:
    configuration = kclient.Configuration(host=emulator.url)
    async with kclient.ApiClient(configuration) as api:
        core = kclient.CoreV1Api(api)
        container = kclient.V1Container(name="c", image="busybox")
        for name, app in (("p1", "ig"), ("p2", "web")):
            pod = kclient.V1Pod(
                metadata=kclient.V1ObjectMeta(name=name, labels={"app": app}),
                spec=kclient.V1PodSpec(containers=[container]),
            )
            created = await core.create_namespaced_pod("default", pod)
            assert created.metadata.uid
            assert created.status.phase == "Pending"
        pods = await core.list_namespaced_pod("default", label_selector="app=ig")
        assert [p.metadata.name for p in pods.items] == ["p1"]
        with pytest.raises(ApiException) as missing:
            await core.read_namespaced_pod("nope", "default")
        assert missing.value.status == 404


def test_a_kopf_operator_runs_against_the_emulator() -> None:
    """kopf lists, watches from a resourceVersion, patches (merge and JSON), posts events and finalizes."""
    registry = kopf.OperatorRegistry()
    deleted = threading.Event()
    seen: list[tuple[str, str]] = []
    with EmulatorThread() as cluster:
        cluster.call(cluster.emulator.register_crd, WIDGET_CRD)
        url = cluster.url

        @kopf.on.login(registry=registry)
        def login(**_: Any) -> kopf.ConnectionInfo:
            return kopf.ConnectionInfo(server=url, insecure=True)

        @kopf.on.startup(registry=registry)
        def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
            settings.scanning.disabled = True
            settings.watching.server_timeout = 10

        @kopf.on.event("example.test", "v1", "widgets", registry=registry)
        def on_event(type: str, name: str, **_: Any) -> None:
            seen.append((type, name))

        @kopf.on.create("example.test", "v1", "widgets", id="created", registry=registry)
        def created(spec: kopf.Spec, patch: kopf.Patch, body: kopf.Body, **_: Any) -> dict[str, str]:
            patch.metadata.annotations["example.test/size"] = str(spec["size"])
            kopf.info(body, reason="Sized", message=f"size {spec['size']}")
            return {"message": "created"}

        @kopf.on.delete("example.test", "v1", "widgets", registry=registry)
        def removed(**_: Any) -> None:
            deleted.set()

        def handled(_: str, obj: dict[str, Any]) -> bool:
            annotations = obj["metadata"].get("annotations", {})
            return annotations.get("example.test/size") == "3" and "created" in obj.get("status", {})

        async def request(method: str, path: str, body: Any = None) -> Reply:
            async with aiohttp.ClientSession(base_url=url) as session:
                return await call(session, method, path, body)

        with KopfRunner(["run", "--standalone", "--all-namespaces"], registry=registry, timeout=60) as runner:
            status, _ = cluster.run(request("POST", WIDGETS, {"metadata": {"name": "w"}, "spec": {"size": 3}}))
            assert status == 201
            widget = cluster.run(watch_until(url, WIDGETS, handled))
            assert widget["status"]["created"] == {"message": "created"}
            assert widget["metadata"]["finalizers"]  # kopf's, as it has a deletion handler
            event = cluster.run(watch_until(url, "/api/v1/namespaces/default/events", lambda kind, obj: True))
            assert event["reason"] == "Sized"
            assert event["involvedObject"]["name"] == "w"
            assert event["metadata"]["name"].startswith("kopf-event-")  # kopf posted it with a generateName

            status, deleting = cluster.run(request("DELETE", f"{WIDGETS}/w"))
            assert status == 200
            assert "deletionTimestamp" in deleting["metadata"]
            rv = deleting["metadata"]["resourceVersion"]
            cluster.run(watch_until(url, WIDGETS, lambda kind, obj: kind == "DELETED", rv=rv))
            assert deleted.is_set()

        assert runner.exception is None, runner.output
        assert runner.exit_code == 0, runner.output
        assert ("ADDED", "w") in seen or (None, "w") in seen
        watches = [r for r in cluster.emulator.requests if r.verb == "watch" and r.resource == "widgets"]
        assert any(r.query.get("resourceVersion") for r in watches)  # kopf resumed from its list's version


# -- leases (leader election) ------------------------------------------------------------------------------

LEASES = "/apis/coordination.k8s.io/v1/namespaces/default/leases"


async def test_leases_are_served_with_optimistic_concurrency(http: aiohttp.ClientSession) -> None:
    """What leader election relies on: one create wins, and an update based on a stale read answers 409."""
    status, group = await call(http, "GET", "/apis/coordination.k8s.io/v1")
    assert status == 200
    assert {"leases"} <= {r["name"] for r in group["resources"]}

    lease = {"metadata": {"name": "lock"}, "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}}
    status, created = await call(http, "POST", LEASES, lease)
    assert status == 201, created
    status, error = await call(http, "POST", LEASES, lease | {"spec": {"holderIdentity": "b"}})
    assert (status, error["reason"]) == (409, "AlreadyExists")

    read = created  # both candidates read this version, then both try to take it
    taken_by_b = read | {"spec": read["spec"] | {"holderIdentity": "b"}}
    status, taken = await call(http, "PUT", f"{LEASES}/lock", taken_by_b)
    assert status == 200, taken
    assert int(taken["metadata"]["resourceVersion"]) > int(read["metadata"]["resourceVersion"])
    taken_by_c = read | {"spec": read["spec"] | {"holderIdentity": "c"}}
    status, error = await call(http, "PUT", f"{LEASES}/lock", taken_by_c)
    assert (status, error["reason"]) == (409, "Conflict")
    status, now = await call(http, "GET", f"{LEASES}/lock")
    assert now["spec"]["holderIdentity"] == "b"

    # A PUT of a missing Lease creates it (client-go's resource locks rely on GET + create, this is a bonus).
    status, other = await call(http, "PUT", f"{LEASES}/other", {"metadata": {"name": "other"}, "spec": {}})
    assert status == 201, other


async def test_denied_verbs_answer_403_before_anything_else(
    emulator: KubeEmulator, http: aiohttp.ClientSession
) -> None:
    status, created = await call(http, "POST", LEASES, {"metadata": {"name": "lock"}, "spec": {}})
    assert status == 201
    emulator.deny("update", "leases")
    status, error = await call(http, "PUT", f"{LEASES}/lock", created)
    assert (status, error["reason"]) == (403, "Forbidden")
    assert 'cannot update resource "leases"' in error["message"]
    status, error = await call(http, "PUT", f"{LEASES}/missing", {"metadata": {"name": "missing"}})
    assert status == 403  # authorization first: a denied create-on-update learns nothing
    status, _ = await call(http, "GET", f"{LEASES}/lock")
    assert status == 200  # other verbs are still allowed
    emulator.allow("update", "leases")
    status, _ = await call(http, "PUT", f"{LEASES}/lock", created)
    assert status == 200


# -- cluster-scoped custom resources (a CRD with scope: Cluster) ---------------------------------------

GADGETS = "/apis/example.test/v1/gadgets"


def cluster_crd() -> dict[str, Any]:
    crd = copy.deepcopy(WIDGET_CRD)
    crd["metadata"]["name"] = "gadgets.example.test"
    crd["spec"]["scope"] = "Cluster"
    crd["spec"]["names"] = {"plural": "gadgets", "singular": "gadget", "kind": "Gadget", "shortNames": ["gd"]}
    return crd


async def test_a_cluster_scoped_crd_is_served_without_namespaces(
    emulator: KubeEmulator, http: aiohttp.ClientSession
) -> None:
    emulator.register_crd(cluster_crd())
    _, discovery = await call(http, "GET", "/apis/example.test/v1")
    scopes = {r["name"]: r["namespaced"] for r in discovery["resources"]}
    assert scopes["gadgets"] is False
    assert scopes["gadgets/status"] is False
    assert scopes["widgets"] is True

    # A namespace in the body is dropped (as the real server does); the object has none.
    body = {"metadata": {"name": "g", "namespace": "default"}, "spec": {"size": 1}, "status": {"x": 1}}
    status, created = await call(http, "POST", GADGETS, body)
    assert status == 201, created
    assert "namespace" not in created["metadata"]
    assert "status" not in created
    assert created["spec"] == {"size": 1, "color": "blue"}  # the schema's defaults apply too
    # Under a namespace, a cluster-scoped resource does not exist.
    assert (await call(http, "GET", "/apis/example.test/v1/namespaces/default/gadgets/g"))[0] == 404
    assert (await call(http, "POST", "/apis/example.test/v1/namespaces/default/gadgets", body))[0] == 404
    status, listed = await call(http, "GET", GADGETS)
    assert (status, [o["metadata"]["name"] for o in listed["items"]]) == (200, ["g"])
    assert emulator.get("example.test/v1", "gadgets", "g") is not None
    assert emulator.get("example.test/v1", "gadgets", "g", "default") is not None  # a namespace is ignored


async def test_a_cluster_scoped_resource_has_a_status_subresource_and_generation(
    emulator: KubeEmulator, http: aiohttp.ClientSession
) -> None:
    emulator.register_crd(cluster_crd())
    status, _ = await call(http, "POST", GADGETS, {"metadata": {"name": "g"}, "spec": {"size": 1}})
    assert status == 201
    merge = "application/merge-patch+json"
    status, patched = await call(http, "PATCH", f"{GADGETS}/g/status", {"status": {"phase": "Running"}}, merge)
    assert status == 200
    assert patched["status"] == {"phase": "Running"}
    assert patched["metadata"]["generation"] == 1  # a status write is no spec change
    # The main resource ignores status; a spec change bumps generation.
    status, patched = await call(http, "PATCH", f"{GADGETS}/g", {"spec": {"size": 2}, "status": {"phase": "X"}}, merge)
    assert status == 200
    assert (patched["metadata"]["generation"], patched["status"]) == (2, {"phase": "Running"})


async def test_a_cluster_scoped_resource_waits_for_its_finalizers(
    emulator: KubeEmulator, http: aiohttp.ClientSession
) -> None:
    emulator.register_crd(cluster_crd())
    body = {"metadata": {"name": "g", "finalizers": ["example.test/f"]}, "spec": {"size": 1}}
    status, created = await call(http, "POST", GADGETS, body)
    assert status == 201
    rv = created["metadata"]["resourceVersion"]
    async with http.get(GADGETS, params={"watch": "1", "resourceVersion": rv}) as stream:
        status, deleting = await call(http, "DELETE", f"{GADGETS}/g")
        assert status == 200
        assert deleting["metadata"]["deletionTimestamp"]
        assert (await call(http, "GET", f"{GADGETS}/g"))[0] == 200
        remove = [
            {"op": "test", "path": "/metadata/finalizers/0", "value": "example.test/f"},
            {"op": "remove", "path": "/metadata/finalizers/0"},
        ]
        status, _ = await call(http, "PATCH", f"{GADGETS}/g", remove, "application/json-patch+json")
        assert status == 200
        events = await next_events(stream, 2)
    assert summary(events) == [("MODIFIED", "g"), ("DELETED", "g")]
    assert (await call(http, "GET", f"{GADGETS}/g"))[0] == 404
    assert emulator.get("example.test/v1", "gadgets", "g") is None


async def test_an_event_about_a_cluster_scoped_object_lives_in_default(http: aiohttp.ClientSession) -> None:
    def event(namespace: str, involved: dict[str, str]) -> dict[str, Any]:
        return {
            "metadata": {"name": f"e.{uuid.uuid4().hex[:8]}", "namespace": namespace},
            "involvedObject": {"kind": "Gadget", "name": "g"} | involved,
            "reason": "Running",
        }

    ok, _ = await call(http, "POST", "/api/v1/namespaces/default/events", event("default", {}))
    assert ok == 201
    status, error = await call(http, "POST", "/api/v1/namespaces/kube-system/events", event("kube-system", {}))
    assert status == 422
    assert "involvedObject.namespace" in error["message"]
    status, _ = await call(http, "POST", "/api/v1/namespaces/default/events", event("default", {"namespace": "x"}))
    assert status == 422
    same = await call(
        http, "POST", "/api/v1/namespaces/kube-system/events", event("kube-system", {"namespace": "kube-system"})
    )
    assert same[0] == 201
