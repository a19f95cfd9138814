"""What an integration or end-to-end test stands on: an API server, simulated nodes, the real operator.

The API server is the emulator by default, or a real cluster when ``GADGET_E2E_KUBECONFIG`` is set;
the tests talk to either only through the Kubernetes API (the official client), and to the daemons
only through the project's daemon client, the way a user looks with ``kubectl`` and the IG CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from kubernetes.aio import client as kclient
from kubernetes.aio import config as kconfig
from kubernetes.aio import watch as kwatch
from kubernetes.aio.client.exceptions import ApiException

from gadget_operator import identity, resource
from gadget_operator.daemon import model
from gadget_operator.daemon.client import DaemonPool
from gadget_operator.simulator.server import Fleet, SimulatedNode
from gadget_operator.testing.operator_process import OperatorProcess

ROOT = Path(__file__).resolve().parents[2]
CRD_PATH = ROOT / "crds" / "gadgetinstances.gadget-operator.io.yaml"
CLUSTER_CRD_PATH = ROOT / "crds" / "clustergadgetinstances.gadget-operator.io.yaml"
GI = resource.GADGET_INSTANCE
CGI = resource.CLUSTER_GADGET_INSTANCE
E2E_KUBECONFIG = os.environ.get("GADGET_E2E_KUBECONFIG")
T = TypeVar("T")


class Timeout(AssertionError):
    pass


async def eventually(probe: Callable[[], Awaitable[T | None]], *, within: float = 20.0, what: str = "") -> T:
    """Poll ``probe`` until it returns something other than None or False; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    last: Any = None
    while True:
        last = await probe()
        if last is not None and last is not False:
            return last
        if time.monotonic() > deadline:
            raise Timeout(f"not true within {within}s: {what}\nlast seen: {last!r}")
        await asyncio.sleep(0.05)


@dataclass
class Cluster:
    """The API side of a test: the test's own namespace, GadgetInstances and Nodes.

    The resource helpers take ``kind=CGI`` for a ClusterGadgetInstance (cluster-scoped: its name must be
    unique across tests sharing a real cluster, so use ``unique``; the ones created are deleted after
    the test, see ``created_cluster_objects``)."""

    api: kclient.ApiClient
    namespace: str
    node_prefix: str
    server: str | None = None
    kubeconfig: str | None = None
    created_nodes: set[str] = field(default_factory=set)
    created_cluster_objects: set[str] = field(default_factory=set)

    @property
    def custom(self) -> kclient.CustomObjectsApi:
        return kclient.CustomObjectsApi(self.api)

    @property
    def core(self) -> kclient.CoreV1Api:
        return kclient.CoreV1Api(self.api)

    def node_name(self, index: int) -> str:
        return f"{self.node_prefix}{index}"

    async def add_node(self, name: str, labels: dict[str, str] | None = None) -> None:
        body = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels or {}}}
        await self.core.create_node(body)
        self.created_nodes.add(name)

    async def label_node(self, name: str, labels: dict[str, str | None]) -> None:
        await self.core.patch_node(name, {"metadata": {"labels": labels}})

    async def remove_node(self, name: str) -> None:
        await self.core.delete_node(name)
        self.created_nodes.discard(name)

    async def apply(self, name: str, spec: dict[str, Any], *, kind: resource.Kind = GI) -> dict[str, Any]:
        metadata = {"name": name, "namespace": self.namespace} if kind.namespaced else {"name": name}
        body = {"apiVersion": kind.api_version, "kind": kind.kind, "metadata": metadata, "spec": spec}
        if not kind.namespaced:
            self.created_cluster_objects.add(name)
            return await self.custom.create_cluster_custom_object(resource.GROUP, resource.VERSION, kind.plural, body)
        return await self.custom.create_namespaced_custom_object(
            resource.GROUP, resource.VERSION, self.namespace, kind.plural, body
        )

    async def patch_spec(self, name: str, spec: dict[str, Any], *, kind: resource.Kind = GI) -> dict[str, Any]:
        if not kind.namespaced:
            return await self.custom.patch_cluster_custom_object(
                resource.GROUP,
                resource.VERSION,
                kind.plural,
                name,
                {"spec": spec},
                _content_type="application/merge-patch+json",
            )
        return await self.custom.patch_namespaced_custom_object(
            resource.GROUP,
            resource.VERSION,
            self.namespace,
            kind.plural,
            name,
            {"spec": spec},
            _content_type="application/merge-patch+json",
        )

    async def get(self, name: str, *, kind: resource.Kind = GI) -> dict[str, Any] | None:
        try:
            if not kind.namespaced:
                return await self.custom.get_cluster_custom_object(resource.GROUP, resource.VERSION, kind.plural, name)
            return await self.custom.get_namespaced_custom_object(
                resource.GROUP, resource.VERSION, self.namespace, kind.plural, name
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    async def delete(self, name: str, *, kind: resource.Kind = GI) -> None:
        if not kind.namespaced:
            await self.custom.delete_cluster_custom_object(resource.GROUP, resource.VERSION, kind.plural, name)
            return
        await self.custom.delete_namespaced_custom_object(
            resource.GROUP, resource.VERSION, self.namespace, kind.plural, name
        )

    async def wait_status(
        self,
        name: str,
        check: Callable[[dict[str, Any]], bool],
        *,
        within: float = 20.0,
        what: str = "",
        kind: resource.Kind = GI,
    ) -> dict[str, Any]:
        async def probe() -> dict[str, Any] | None:
            body = await self.get(name, kind=kind)
            return body if body is not None and check(body) else None

        try:
            return await eventually(probe, within=within, what=what or f"status of {name}")
        except Timeout as timeout_error:
            raise Timeout(f"{timeout_error}\nnow: {yaml.safe_dump(await self.get(name, kind=kind))}") from None

    async def wait_phase(self, name: str, phase: str, **kwargs: Any) -> dict[str, Any]:
        def check(body: dict[str, Any]) -> bool:
            status = body.get("status") or {}
            observed = status.get("observedGeneration") == body["metadata"].get("generation")
            return observed and status.get("phase") == phase

        return await self.wait_status(name, check, what=f"{name} phase {phase}", **kwargs)

    @contextlib.asynccontextmanager
    async def statuses_of(self, name: str) -> AsyncIterator[list[dict[str, Any]]]:
        """Every status ``name`` takes while the block runs, in order, from a watch (as ``kubectl get -w``
        shows them): for asserting what was never shown, such as Ready on the way to Failed."""
        seen: list[dict[str, Any]] = []
        listed = await self.custom.list_namespaced_custom_object(
            resource.GROUP, resource.VERSION, self.namespace, resource.PLURAL
        )
        watching = kwatch.Watch()

        async def follow() -> None:
            async with watching.stream(
                self.custom.list_namespaced_custom_object,
                resource.GROUP,
                resource.VERSION,
                self.namespace,
                resource.PLURAL,
                field_selector=f"metadata.name={name}",
                resource_version=listed["metadata"]["resourceVersion"],
                timeout_seconds=300,
            ) as stream:
                async for event in stream:
                    seen.append(dict(event["object"].get("status") or {}))

        task = asyncio.create_task(follow())
        try:
            yield seen
        finally:
            watching.stop()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def wait_gone(self, name: str, *, within: float = 20.0, kind: resource.Kind = GI) -> None:
        async def gone() -> bool:
            return await self.get(name, kind=kind) is None

        await eventually(gone, within=within, what=f"{name} deleted")


@dataclass
class Nodes:
    """The simulated daemons: what each one runs (ground truth), and what its daemon lists (the IG CLI's view)."""

    fleet: Fleet
    pool: DaemonPool

    def __getitem__(self, name: str) -> SimulatedNode:
        return self.fleet[name]

    async def instances(self, node: str) -> list[model.GadgetInstance]:
        """What ``node``'s daemon answers to ListGadgetInstances (with IG's shared store this can fail)."""
        return await self.pool.get(self.fleet[node].address).list_instances()

    async def owned_by(self, uid: str) -> dict[str, list[model.GadgetInstance]]:
        """Per reachable node, the instances its local manager runs whose ownership tags name resource ``uid``.

        Read from each node's local manager (``node.running()``), not through List: it holds under both of
        IG's stores, also where List fails. A stopped node (socket closed) is left out, as unreachable."""
        result: dict[str, list[model.GadgetInstance]] = {}
        for name, node in self.fleet.nodes.items():
            if not node.serving:
                continue
            for instance in node.running().values():
                owner = identity.parse_ownership(instance.tags)
                if owner is not None and owner.resource_uid == uid:
                    result.setdefault(name, []).append(instance)
        return result

    async def wait_owned(
        self, uid: str, check: Callable[[dict[str, list[model.GadgetInstance]]], bool], *, what: str
    ) -> dict[str, list[model.GadgetInstance]]:
        async def probe() -> dict[str, list[model.GadgetInstance]] | None:
            owned = await self.owned_by(uid)
            return owned if check(owned) else None

        return await eventually(probe, what=what)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def load_crd() -> dict[str, Any]:
    return yaml.safe_load(CRD_PATH.read_text())


def load_crds() -> list[dict[str, Any]]:
    """Every CRD the operator serves: GadgetInstance and ClusterGadgetInstance."""
    return [yaml.safe_load(path.read_text()) for path in (CRD_PATH, CLUSTER_CRD_PATH)]


async def real_cluster_client() -> kclient.ApiClient:
    assert E2E_KUBECONFIG
    configuration = kclient.Configuration()
    await kconfig.load_kube_config(config_file=E2E_KUBECONFIG, client_configuration=configuration)
    return kclient.ApiClient(configuration)


def emulator_client(url: str) -> kclient.ApiClient:
    configuration = kclient.Configuration(host=url)
    return kclient.ApiClient(configuration)


__all__ = ["CGI", "GI", "Cluster", "Nodes", "OperatorProcess", "eventually", "unique"]
