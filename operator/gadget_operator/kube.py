"""The operator's own Kubernetes API calls (the writes, and the daemon-pod watch).

kopf owns the watches of GadgetInstances and Nodes; everything the operator writes goes through this
module, so the RBAC rules in ``manifests/`` can be checked against one place:

=======================================  ==========================  ===================
call                                     resource                    verb
=======================================  ==========================  ===================
``add_finalizer`` / ``remove_finalizer``  gadgetinstances             patch (JSON patch)
``patch_status``                         gadgetinstances/status      patch (merge patch)
``annotate``                             gadgetinstances             patch (merge patch; control API intents)
``get_gadget_instance``                  gadgetinstances             get
``node_exists`` / ``list_nodes``         nodes                       get, list
``list_pods`` / ``watch_pods``           pods (daemon namespace)     list, watch
``list_config_maps`` / ``watch_config_maps`` configmaps (daemon ns)    list, watch (IG's shared store)
``post_event``                           events                      create
``open_portforward``                     pods/portforward            get, create (WebSocket)
``version``                              /version (non-resource)     get (any user)
``list_gadget_instances``                gadgetinstances             list (a new leader)
``get_lease`` / ``create_lease`` /       leases (operator namespace) get, create, update
``update_lease``                                                     (leader election only)
``served``                               discovery (non-resource)    get (any user)
=======================================  ==========================  ===================

Every call on ``gadgetinstances`` is made the same way on ``clustergadgetinstances`` for a
ClusterGadgetInstance (``resource.Kind``), at the cluster scope: paths without ``namespaces/<ns>``, and
its Events in namespace ``default`` with an involvedObject without namespace, as kubectl does.

Finalizer patches are JSON patches guarded by a ``test`` of the current list, so a concurrent change
by someone else fails with 422 (or 409) instead of being overwritten; the caller retries on the next
watch event.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import aiohttp
from kubernetes.aio import client as kclient
from kubernetes.aio import config as kconfig
from kubernetes.aio.client.rest import RESTClientObject

from gadget_operator import __version__, resource, tokens
from gadget_operator.daemon import portforward

logger = logging.getLogger(__name__)

COMPONENT = "gadget-operator"
USER_AGENT = f"gadget-operator/{__version__}"


WatchEvent = tuple[str, dict[str, Any]]
"""(event type: ADDED, MODIFIED or DELETED; the object)."""


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


async def _read_refusal(
    request: aiohttp.ClientRequest, handler: Callable[[aiohttp.ClientRequest], Awaitable[aiohttp.ClientResponse]]
) -> aiohttp.ClientResponse:
    """Tunnel session middleware: a port-forward answered with an HTTP error raises ``TunnelRefused``
    with the ``Status`` message (aiohttp's own handshake error drops the body)."""
    response = await handler(request)
    if response.status < 400:
        return response
    try:
        payload = await response.read()
        body = json.loads(payload) if payload else {}
        message = str(body.get("message") or body) if isinstance(body, dict) else str(body)
    except (ValueError, aiohttp.ClientError):
        message = ""
    finally:
        response.release()
    raise portforward.TunnelRefused(response.status, message or response.reason or "")


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
        self._ssl_context = ssl_context
        # trust_env=False: no proxy or netrc lookups per request; the API server is addressed directly.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ssl_context, limit=64), trust_env=False
        )
        # Port-forward tunnels hold their connection for as long as gRPC keeps its own open: they get a
        # session of their own (created on first use), so they can never take the connections of the
        # calls above. Their number is bounded by the PortForwarder, not by this connector.
        self._tunnel_session: aiohttp.ClientSession | None = None

    @classmethod
    async def connect(cls, server: str | None = None) -> KubeApi:
        return cls(await load_configuration(server))

    async def close(self) -> None:
        await self._session.close()
        if self._tunnel_session is not None:
            await self._tunnel_session.close()

    async def _headers(self, content_type: str | None = None) -> dict[str, str]:
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        # The client keeps a kubeconfig or service-account token under "BearerToken" (with its prefix).
        token = await self._configuration.get_api_key_with_prefix("BearerToken", alias="authorization")
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

    @staticmethod
    def _collection_path(kind: resource.Kind, namespace: str | None) -> str:
        """The objects of ``kind``: in ``namespace``, or in every namespace (None; a cluster-scoped kind)."""
        scope = f"/namespaces/{namespace}" if namespace and kind.namespaced else ""
        return f"/apis/{resource.GROUP}/{resource.VERSION}{scope}/{kind.plural}"

    def _gadget_instance_path(self, namespace: str, name: str, kind: resource.Kind = resource.GADGET_INSTANCE) -> str:
        return f"{self._collection_path(kind, namespace)}/{name}"

    def _tunnels(self) -> aiohttp.ClientSession:
        if self._tunnel_session is None:
            self._tunnel_session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl_context, limit=0),
                trust_env=False,
                # No total deadline: a tunnel lives as long as its gRPC connection. The handshake's
                # deadline is the PortForwarder's; a dead peer is found by the WebSocket heartbeat.
                timeout=aiohttp.ClientTimeout(total=None),
                middlewares=(_read_refusal,),
            )
        return self._tunnel_session

    async def open_portforward(self, namespace: str, pod: str, port: int) -> aiohttp.ClientWebSocketResponse:
        """The WebSocket of ``pods/<pod>/portforward`` (what ``kubectl port-forward`` uses).

        An HTTP error instead of the WebSocket raises ``portforward.TunnelRefused`` with the status and
        the message of the API server's ``Status`` body (e.g. the RBAC denial).
        """
        url = f"{self._host}/api/v1/namespaces/{namespace}/pods/{pod}/portforward?ports={port}"
        return await self._tunnels().ws_connect(
            url,
            headers=await self._headers(),
            protocols=(portforward.SUBPROTOCOL,),
            max_msg_size=0,
            heartbeat=30,
            timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
        )

    async def version(self) -> dict[str, Any]:
        """``GET /version``: the cheapest call there is, through the same session as every other call
        (the liveness heartbeat: it fails when that session can make no progress)."""
        return await self._call("GET", "/version")

    async def request_token(self, account: tokens.ServiceAccount, audience: str, seconds: int) -> tokens.IssuedToken:
        """TokenRequest (``serviceaccounts/token``): a token of ``account`` for ``audience`` only."""
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"audiences": [audience], "expirationSeconds": seconds},
        }
        path = f"/api/v1/namespaces/{account.namespace}/serviceaccounts/{account.name}/token"
        issued = (await self._call("POST", path, body=body))["status"]
        expires = datetime.fromisoformat(issued["expirationTimestamp"].replace("Z", "+00:00"))
        return tokens.IssuedToken(issued["token"], expires.timestamp())

    async def get_gadget_instance(
        self, namespace: str, name: str, *, kind: resource.Kind = resource.GADGET_INSTANCE
    ) -> dict[str, Any] | None:
        try:
            return await self._call("GET", self._gadget_instance_path(namespace, name, kind))
        except KubeApiError as error:
            if error.status == 404:
                return None
            raise

    async def patch_status(
        self,
        namespace: str,
        name: str,
        status: Mapping[str, Any],
        *,
        kind: resource.Kind = resource.GADGET_INSTANCE,
    ) -> dict[str, Any]:
        return await self._call(
            "PATCH",
            self._gadget_instance_path(namespace, name, kind) + "/status",
            body={"status": dict(status)},
            content_type="application/merge-patch+json",
        )

    async def annotate(
        self,
        gi: resource.GadgetInstanceResource,
        annotations: Mapping[str, str | None],
        *,
        resource_version: str | None = None,
    ) -> dict[str, Any]:
        """Set annotations on a resource (None removes one): a merge patch of its metadata, only while the
        object is at ``resource_version`` when given (else 409). Where the control API keeps intents."""
        metadata: dict[str, Any] = {"annotations": dict(annotations)}
        if resource_version:
            metadata["resourceVersion"] = resource_version
        return await self._call(
            "PATCH",
            self._gadget_instance_path(gi.namespace, gi.name, gi.kind),
            body={"metadata": metadata},
            content_type="application/merge-patch+json",
        )

    async def add_finalizer(self, gi: resource.GadgetInstanceResource) -> None:
        await self._set_finalizers(gi, [*gi.finalizers, resource.FINALIZER])

    async def remove_finalizer(self, gi: resource.GadgetInstanceResource) -> None:
        await self._set_finalizers(gi, [f for f in gi.finalizers if f != resource.FINALIZER])

    async def _set_finalizers(self, gi: resource.GadgetInstanceResource, finalizers: list[str]) -> None:
        """The whole list, on the version ``gi`` was read at: if anything changed since (another
        controller's finalizer, our own status write), the API server answers 409 Conflict and nothing
        is lost; the next watch event brings the current object. (A JSON patch ``test`` would fail with
        422, which a real server words like any invalid request.)"""
        path = self._gadget_instance_path(gi.namespace, gi.name, gi.kind)
        body = {"metadata": {"resourceVersion": gi.resource_version, "finalizers": finalizers}}
        await self._call("PATCH", path, body=body, content_type="application/merge-patch+json")

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
        return await self._list(f"/api/v1/namespaces/{namespace}/pods", selector)

    def watch_pods(self, namespace: str, selector: str, resource_version: str) -> AsyncIterator[WatchEvent]:
        return self._watch(f"/api/v1/namespaces/{namespace}/pods", selector, resource_version)

    async def list_config_maps(self, namespace: str, selector: str) -> tuple[list[dict[str, Any]], str]:
        return await self._list(f"/api/v1/namespaces/{namespace}/configmaps", selector)

    def watch_config_maps(self, namespace: str, selector: str, resource_version: str) -> AsyncIterator[WatchEvent]:
        return self._watch(f"/api/v1/namespaces/{namespace}/configmaps", selector, resource_version)

    async def _list(self, path: str, selector: str) -> tuple[list[dict[str, Any]], str]:
        """Every object at ``path`` matching ``selector``, and the list's resourceVersion."""
        body = await self._call("GET", path, params={"labelSelector": selector})
        return list(body.get("items") or []), str(body["metadata"].get("resourceVersion", ""))

    async def _watch(self, path: str, selector: str, resource_version: str) -> AsyncIterator[WatchEvent]:
        """Yield (event type, object) after ``resource_version`` until the server ends the stream."""
        params = {
            "labelSelector": selector,
            "watch": "true",
            "resourceVersion": resource_version,
            "timeoutSeconds": "300",
        }
        timeout = aiohttp.ClientTimeout(total=330)
        async with self._session.get(
            self._host + path, params=params, headers=await self._headers(), timeout=timeout
        ) as response:
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
        namespace = event_namespace(gi)
        involved: dict[str, str] = {"apiVersion": gi.kind.api_version, "kind": gi.kind.kind, "name": gi.name}
        if gi.kind.namespaced:
            involved["namespace"] = gi.namespace
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{gi.name}.{uuid.uuid4().hex[:16]}", "namespace": namespace},
            "involvedObject": involved | {"uid": gi.uid},
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
        await self._call("POST", f"/api/v1/namespaces/{namespace}/events", body=body)

    @property
    def host(self) -> str:
        """The API server's URL."""
        return self._host

    async def list_gadget_instances(
        self, namespace: str | None = None, *, kind: resource.Kind = resource.GADGET_INSTANCE
    ) -> list[dict[str, Any]]:
        """Every object of ``kind`` (a GadgetInstance in ``namespace``, else in every namespace; a
        ClusterGadgetInstance: ``namespace`` must be None): what a new leader starts from."""
        items = list((await self._call("GET", self._collection_path(kind, namespace))).get("items") or [])
        for item in items:  # a list's items carry no apiVersion and kind; a watch event's object does
            item.setdefault("apiVersion", kind.api_version)
            item.setdefault("kind", kind.kind)
        return items

    async def served(self, group: str, version: str, plural: str) -> bool:
        """Whether the API server serves ``plural`` in ``group/version`` (discovery: a CRD is listed
        there once it is established). Discovery is open to every authenticated user."""
        try:
            body = await self._call("GET", f"/apis/{group}/{version}")
        except KubeApiError as error:
            if error.status == 404:
                return False
            raise
        return any(r.get("name") == plural for r in body.get("resources") or [])

    def _lease_path(self, namespace: str, name: str = "") -> str:
        return f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases" + (f"/{name}" if name else "")

    async def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self._call("GET", self._lease_path(namespace, name))
        except KubeApiError as error:
            if error.status == 404:
                return None
            raise

    async def create_lease(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST; 409 (AlreadyExists) when another replica created it first."""
        return await self._call("POST", self._lease_path(namespace), body=dict(body))

    async def update_lease(self, namespace: str, name: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """PUT with the ``metadata.resourceVersion`` read before: 409 (Conflict) when anyone wrote it since."""
        return await self._call("PUT", self._lease_path(namespace, name), body=dict(body))


EVENTS_NAMESPACE_OF_CLUSTER_OBJECTS = "default"
"""Where the Events of a cluster-scoped object go: kubectl, client-go's recorder and the API server's
own Events use ``default`` (an Event is namespaced; ``kubectl describe cgi`` looks there)."""


def event_namespace(gi: resource.GadgetInstanceResource) -> str:
    """The namespace of the Events about ``gi``."""
    return gi.namespace if gi.kind.namespaced else EVENTS_NAMESPACE_OF_CLUSTER_OBJECTS


ListCall = Callable[[], Awaitable[tuple[list[dict[str, Any]], str]]]
WatchCall = Callable[[str], AsyncIterator[WatchEvent]]


async def list_and_watch(
    what: str,
    list_call: ListCall,
    watch_call: WatchCall,
    *,
    on_list: Callable[[list[dict[str, Any]]], None],
    on_event: Callable[[str, dict[str, Any]], None],
    retry_delay: float = 2.0,
) -> None:
    """Keep a local view of a collection, forever (cancel to stop): list, hand over the full list, then
    follow the watch from that list's resourceVersion; any failure (410 Gone included) relists after a
    pause, so the view never misses a change for longer than that."""
    while True:
        try:
            items, resource_version = await list_call()
            on_list(items)
            async for event_type, body in watch_call(resource_version):
                on_event(event_type, body)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the view must survive any API hiccup
            logger.warning("watching %s failed, relisting: %s", what, error)
        await asyncio.sleep(retry_delay)


def identify(instance: str) -> None:
    """Name this process in the User-Agent of its own API calls (``gadget-operator/<version> (<instance>)``),
    so that the API server's audit log tells replicas apart; ``instance`` is the leader-election identity."""
    global USER_AGENT
    USER_AGENT = f"gadget-operator/{__version__} ({instance})"
