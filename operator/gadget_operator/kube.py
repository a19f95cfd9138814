"""The operator's own Kubernetes API calls (the writes, and the daemon-pod watch).

kopf owns the watches of GadgetInstances and Nodes; everything the operator writes goes through this
module, so the RBAC rules in ``manifests/`` can be checked against one place:

=======================================  ==========================  ===================
call                                     resource                    verb
=======================================  ==========================  ===================
``add_finalizer`` / ``remove_finalizer``  gadgetinstances             patch (JSON patch)
``patch_status``                         gadgetinstances/status      patch (merge patch)
``get_gadget_instance``                  gadgetinstances             get
``node_exists`` / ``list_nodes``         nodes                       get, list
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
from kubernetes.aio.client.rest import RESTClientObject

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
    """The operator's own API calls, as plain JSON over one aiohttp session.

    The official client provides the configuration (kubeconfig, in-cluster token, TLS); requests go out
    directly, because the generated API classes validate every argument with pydantic, which cost a
    tenth of the operator's CPU at scale for calls whose bodies are plain dicts anyway.
    """

    def __init__(self, configuration: kclient.Configuration) -> None:
        self._configuration = configuration
        self._host = configuration.host.rstrip("/")
        ssl_context = RESTClientObject(configuration).ssl_context
        # trust_env=False: no proxy or netrc lookups per request; the API server is addressed directly.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ssl_context, limit=64), trust_env=False
        )

    @classmethod
    async def connect(cls, server: str | None = None) -> KubeApi:
        return cls(await load_configuration(server))

    async def close(self) -> None:
        await self._session.close()

    async def _headers(self, content_type: str | None = None) -> dict[str, str]:
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        token = await self._configuration.get_api_key_with_prefix("authorization")
        if token:
            headers["Authorization"] = token
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    async def _call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str = "application/json",
        params: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        data = None if body is None else json.dumps(body)
        headers = await self._headers(content_type if body is not None else None)
        async with self._session.request(
            method, self._host + path, data=data, headers=headers, params=params
        ) as response:
            payload = await response.read()
            result: dict[str, Any] = json.loads(payload) if payload else {}
            if response.status >= 400:
                raise KubeApiError(response.status, str(result.get("message", result)))
            return result

    def _gadget_instance_path(self, namespace: str, name: str) -> str:
        return f"/apis/{resource.GROUP}/{resource.VERSION}/namespaces/{namespace}/{resource.PLURAL}/{name}"

    async def open_portforward(self, namespace: str, pod: str, port: int) -> aiohttp.ClientWebSocketResponse:
        """The WebSocket of ``pods/<pod>/portforward`` (what ``kubectl port-forward`` uses)."""
        url = f"{self._host}/api/v1/namespaces/{namespace}/pods/{pod}/portforward?ports={port}"
        return await self._session.ws_connect(
            url, headers=await self._headers(), protocols=(portforward.SUBPROTOCOL,), max_msg_size=0, heartbeat=30
        )

    async def get_gadget_instance(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self._call("GET", self._gadget_instance_path(namespace, name))
        except KubeApiError as error:
            if error.status == 404:
                return None
            raise

    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> dict[str, Any]:
        return await self._call(
            "PATCH",
            self._gadget_instance_path(namespace, name) + "/status",
            body={"status": dict(status)},
            content_type="application/merge-patch+json",
        )

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
        path = self._gadget_instance_path(gi.namespace, gi.name)
        await self._call("PATCH", path, body=[dict(op) for op in ops], content_type="application/json-patch+json")

    async def node_exists(self, name: str) -> bool:
        try:
            await self._call("GET", f"/api/v1/nodes/{name}")
        except KubeApiError as error:
            if error.status == 404:
                return False
            raise
        return True

    async def list_nodes(self) -> list[dict[str, Any]]:
        return list((await self._call("GET", "/api/v1/nodes")).get("items") or [])

    async def list_pods(self, namespace: str, selector: str) -> tuple[list[dict[str, Any]], str]:
        body = await self._call("GET", f"/api/v1/namespaces/{namespace}/pods", params={"labelSelector": selector})
        return list(body.get("items") or []), str(body["metadata"].get("resourceVersion", ""))

    async def watch_pods(
        self, namespace: str, selector: str, resource_version: str
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """Yield (event type, pod) after ``resource_version`` until the server ends the stream."""
        params = {
            "labelSelector": selector,
            "watch": "true",
            "resourceVersion": resource_version,
            "timeoutSeconds": "300",
        }
        url = f"{self._host}/api/v1/namespaces/{namespace}/pods"
        timeout = aiohttp.ClientTimeout(total=330)
        async with self._session.get(url, params=params, headers=await self._headers(), timeout=timeout) as response:
            if response.status >= 400:
                body = await response.json(content_type=None)
                raise KubeApiError(response.status, str(body.get("message", body)))
            async for line in response.content:
                if not line.strip():
                    continue
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    raise KubeApiError(int(event["object"].get("code", 500)), event["object"].get("message", ""))
                if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                    yield event["type"], event["object"]

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
        await self._call("POST", f"/api/v1/namespaces/{gi.namespace}/events", body=body)
