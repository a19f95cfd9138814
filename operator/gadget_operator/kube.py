"""The operator's own Kubernetes API calls (the writes, and the daemon-pod watch).

kopf owns the watches of GadgetInstances and Nodes; everything the operator writes goes through this
module, so the RBAC rules in ``manifests/`` can be checked against one place:

=======================================  ==========================  ===================
call                                     resource                    verb
=======================================  ==========================  ===================
``add_finalizer`` / ``remove_finalizer``  gadgetinstances             patch (JSON patch)
``patch_status``                         gadgetinstances/status      patch (merge patch)
``get_gadget_instance``                  gadgetinstances             get
``node_exists``                          nodes                       get
``list_pods`` / ``watch_pods``           pods (daemon namespace)     list, watch
``post_event``                           events                      create
``open_portforward``                     pods/portforward            get, create (WebSocket)
=======================================  ==========================  ===================

Finalizer patches are JSON patches guarded by a ``test`` of the current list, so a concurrent change
by someone else fails with 422 (or 409) instead of being overwritten; the caller retries on the next
watch event.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import aiohttp
from kubernetes.aio import client as kclient
from kubernetes.aio import config as kconfig

from gadget_operator import __version__, resource
from gadget_operator.daemon import portforward

logger = logging.getLogger(__name__)

COMPONENT = "gadget-operator"
USER_AGENT = f"gadget-operator/{__version__}"


class KubeApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


async def load_configuration(server: str | None) -> kclient.Configuration:
    """In-cluster credentials when running in a pod, else kubeconfig; ``server`` overrides both."""
    configuration = kclient.Configuration()
    if server:
        configuration.host = server
        configuration.verify_ssl = False
    elif os.environ.get("KUBERNETES_SERVICE_HOST"):
        kconfig.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    else:
        await kconfig.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    return configuration


class KubeApi:
    """A thin async wrapper over the Kubernetes client, speaking plain dicts."""

    def __init__(self, configuration: kclient.Configuration) -> None:
        self._configuration = configuration
        self._websockets: aiohttp.ClientSession | None = None
        self._client = kclient.ApiClient(configuration)
        self._client.user_agent = USER_AGENT  # so audit logs (and the RBAC test) tell its calls apart
        self._custom = kclient.CustomObjectsApi(self._client)
        self._core = kclient.CoreV1Api(self._client)

    @classmethod
    async def connect(cls, server: str | None = None) -> KubeApi:
        return cls(await load_configuration(server))

    async def close(self) -> None:
        if self._websockets is not None:
            await self._websockets.close()
        await self._client.close()  # type: ignore[no-untyped-call]

    async def open_portforward(self, namespace: str, pod: str, port: int) -> aiohttp.ClientWebSocketResponse:
        """The WebSocket of ``pods/<pod>/portforward`` (what ``kubectl port-forward`` uses)."""
        if self._websockets is None:
            ssl_context = self._client.rest_client.ssl_context
            self._websockets = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ssl_context))
        headers = {"User-Agent": USER_AGENT}
        token = await self._configuration.get_api_key_with_prefix("authorization")
        if token:
            headers["Authorization"] = token
        url = f"{self._configuration.host}/api/v1/namespaces/{namespace}/pods/{pod}/portforward?ports={port}"
        return await self._websockets.ws_connect(
            url, headers=headers, protocols=(portforward.SUBPROTOCOL,), max_msg_size=0, heartbeat=30
        )

    async def get_gadget_instance(self, namespace: str, name: str) -> dict[str, Any] | None:
        response = await self._custom.get_namespaced_custom_object_without_preload_content(
            resource.GROUP, resource.VERSION, namespace, resource.PLURAL, name
        )
        if response.status == 404:
            return None
        return await _json(response)

    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> dict[str, Any]:
        response = await self._custom.patch_namespaced_custom_object_status_without_preload_content(
            resource.GROUP,
            resource.VERSION,
            namespace,
            resource.PLURAL,
            name,
            {"status": dict(status)},
            _content_type="application/merge-patch+json",
        )
        return await _json(response)

    async def add_finalizer(self, gi: resource.GadgetInstanceResource) -> None:
        if gi.finalizers:
            ops: list[dict[str, Any]] = [
                {"op": "test", "path": "/metadata/finalizers", "value": list(gi.finalizers)},
                {"op": "add", "path": "/metadata/finalizers/-", "value": resource.FINALIZER},
            ]
        else:
            ops = [
                {"op": "test", "path": "/metadata/resourceVersion", "value": gi.resource_version},
                {"op": "add", "path": "/metadata/finalizers", "value": [resource.FINALIZER]},
            ]
        await self._json_patch(gi, ops)

    async def remove_finalizer(self, gi: resource.GadgetInstanceResource) -> None:
        index = gi.finalizers.index(resource.FINALIZER)
        await self._json_patch(
            gi,
            [
                {"op": "test", "path": f"/metadata/finalizers/{index}", "value": resource.FINALIZER},
                {"op": "remove", "path": f"/metadata/finalizers/{index}"},
            ],
        )

    async def _json_patch(self, gi: resource.GadgetInstanceResource, ops: Sequence[Mapping[str, Any]]) -> None:
        response = await self._custom.patch_namespaced_custom_object_without_preload_content(
            resource.GROUP,
            resource.VERSION,
            gi.namespace,
            resource.PLURAL,
            gi.name,
            [dict(op) for op in ops],
            _content_type="application/json-patch+json",
        )
        await _json(response)

    async def node_exists(self, name: str) -> bool:
        try:
            await _json(await self._core.read_node_without_preload_content(name))
        except KubeApiError as error:
            if error.status == 404:
                return False
            raise
        return True

    async def list_pods(self, namespace: str, selector: str) -> tuple[list[dict[str, Any]], str]:
        response = await self._core.list_namespaced_pod_without_preload_content(namespace, label_selector=selector)
        body = await _json(response)
        return list(body.get("items") or []), str(body["metadata"].get("resourceVersion", ""))

    async def watch_pods(
        self, namespace: str, selector: str, resource_version: str
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """Yield (event type, pod) after ``resource_version`` until the server ends the stream."""
        response = await self._core.list_namespaced_pod_without_preload_content(
            namespace,
            label_selector=selector,
            watch=True,
            resource_version=resource_version,
            timeout_seconds=300,
            _request_timeout=330,
        )
        try:
            if response.status >= 400:
                await _json(response)
            async for line in response.content:
                if not line.strip():
                    continue
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    raise KubeApiError(int(event["object"].get("code", 500)), event["object"].get("message", ""))
                if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                    yield event["type"], event["object"]
        finally:
            response.release()

    async def post_event(
        self, gi: resource.GadgetInstanceResource, *, warning: bool, reason: str, message: str
    ) -> None:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{gi.name}.{uuid.uuid4().hex[:16]}", "namespace": gi.namespace},
            "involvedObject": {
                "apiVersion": f"{resource.GROUP}/{resource.VERSION}",
                "kind": resource.KIND,
                "name": gi.name,
                "namespace": gi.namespace,
                "uid": gi.uid,
            },
            "type": "Warning" if warning else "Normal",
            "reason": reason,
            "message": message[:1024],
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": os.environ.get("HOSTNAME", COMPONENT),
            "firstTimestamp": now[:19] + "Z",
            "lastTimestamp": now[:19] + "Z",
            "eventTime": now,
            "action": reason,
            "count": 1,
        }
        response = await self._core.create_namespaced_event_without_preload_content(
            gi.namespace,
            body,  # type: ignore[arg-type]  # the client serialises plain dicts as they are
        )
        await _json(response)


async def _json(response: Any) -> dict[str, Any]:
    try:
        payload = await response.read()
    finally:
        response.release()
    body: dict[str, Any] = json.loads(payload) if payload else {}
    if response.status >= 400:
        raise KubeApiError(response.status, str(body.get("message", body)))
    return body
