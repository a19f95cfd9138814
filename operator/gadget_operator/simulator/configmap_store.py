"""IG's DaemonSet mode: one ConfigMap store for the whole cluster, on a real Kubernetes API.

``ConfigMapStore`` writes and deletes ConfigMaps exactly as IG's ``k8s-configmap-store`` does and keeps
one shared watch on them (IG has one informer per daemon; one watch per fleet, fanned out with a
per-daemon lag, behaves the same). ``SharedStoreDaemon`` is one daemon of the DaemonSet: IG's service
over its own informer cache, running every stored instance whose ``nodes`` is empty or names it.

IG's quirks are kept on purpose: List fails as a whole on the first stored instance the daemon does not
run (``getting instance status for "<id>": gadget not found``), also right after a create before the
daemon's worker has started it; the duplicate-name check sees only the creating daemon's cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from kubernetes.aio import client as kclient
from kubernetes.aio.client.exceptions import ApiException
from kubernetes.aio.watch import Watch

from gadget_operator.daemon import model
from gadget_operator.simulator.state import (
    DEFAULT_TIMING,
    Daemon,
    DaemonCallError,
    RunTiming,
    new_identity,
    quote,
)

JSON = dict[str, Any]
GADGET_INSTANCE = "gadget-instance"
LABEL_SELECTOR = f"type={GADGET_INSTANCE}"
ANNOTATIONS = ("gadgetImage", "gadgetTags", "gadgetTimeout", "gadgetLogLevel", "gadgetNodes")
_INT = re.compile(r"^[+-]?[0-9]+$")
log = logging.getLogger(__name__)


def instance_to_configmap(instance: model.GadgetInstance, namespace: str, *, timeout: int = 0) -> JSON:
    """The ConfigMap IG's ``Store.CreateGadgetInstance`` writes. Not kept: version, args, event buffer."""
    body: JSON = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": instance.id,
            "namespace": namespace,
            "labels": {"type": GADGET_INSTANCE, "name": instance.name},
            "annotations": {
                "gadgetImage": instance.image,
                "gadgetTags": ",".join(instance.tags),
                "gadgetTimeout": str(timeout),
                "gadgetLogLevel": str(instance.log_level),
                "gadgetNodes": ",".join(instance.nodes),
            },
        },
        "immutable": True,
    }
    if instance.params:  # Go leaves an empty map out of the JSON
        body["data"] = dict(instance.params)
    return body


def _parse_int(configmap: str, annotation: str, value: str, *, unsigned_bits: int = 0) -> int:
    """``strconv.ParseInt``/``ParseUint`` as IG applies them to an annotation; "" reads as 0."""
    if value == "":
        return 0
    function = "strconv.ParseUint" if unsigned_bits else "strconv.ParseInt"
    problem = None
    if not _INT.match(value) or (unsigned_bits and value[0] in "+-"):
        problem = "invalid syntax"
    elif (unsigned_bits and int(value) >= 1 << unsigned_bits) or not -(1 << 63) <= int(value) < 1 << 63:
        problem = "value out of range"
    if problem is not None:
        raise DaemonCallError(
            f"parsing {annotation} annotation for {quote(configmap)}: {function}: parsing {quote(value)}: {problem}"
        )
    return int(value)


def configmap_to_instance(configmap: JSON) -> model.GadgetInstance:
    """IG's ``configMapToGadgetInstance``: the version reads back as 1, "no tags" as ``[""]``."""
    meta = configmap["metadata"]
    name = meta["name"]
    annotations = meta.get("annotations") or {}
    _parse_int(name, "gadgetTimeout", annotations.get("gadgetTimeout", ""))
    log_level = _parse_int(name, "gadgetLogLevel", annotations.get("gadgetLogLevel", ""), unsigned_bits=32)
    nodes = annotations.get("gadgetNodes", "").split(",")
    created = meta.get("creationTimestamp")
    return model.GadgetInstance(
        id=name,
        name=(meta.get("labels") or {}).get("name", ""),
        image=annotations.get("gadgetImage", ""),
        params=dict(configmap.get("data") or {}),
        tags=tuple(annotations.get("gadgetTags", "").split(",")),
        nodes=() if nodes == [""] else tuple(nodes),
        log_level=log_level,
        version=model.PROTOCOL_VERSION,
        time_created=int(datetime.fromisoformat(str(created)).timestamp()) if created else 0,
    )


def api_message(error: Exception) -> str:
    """What client-go's ``err.Error()`` says: the API server's Status message."""
    if isinstance(error, ApiException):
        with contextlib.suppress(ValueError, TypeError, KeyError):
            return str(json.loads(error.body or "")["message"])
        return f"({error.status}) {error.reason}"
    return str(error) or type(error).__name__


class ConfigMapStore:
    """IG's gadget-instance ConfigMaps in ``namespace``, written through ``api`` and watched once."""

    def __init__(self, api: kclient.ApiClient, namespace: str = "gadget", *, retry_interval: float = 0.2) -> None:
        self.api = api
        self.namespace = namespace
        self.retry_interval = retry_interval
        """Seconds before the shared watch tries again after the API server failed it."""
        self.core = kclient.CoreV1Api(api)
        self.objects: dict[str, JSON] = {}
        """The ConfigMaps as the shared watch last saw them, by name (instance ID)."""
        self._daemons: list[SharedStoreDaemon] = []
        self._resource_version = ""
        self._task: asyncio.Task[None] | None = None
        self._starting: asyncio.Lock = asyncio.Lock()

    # -- writes, as IG's store makes them --------------------------------------------------------------

    async def create(self, instance: model.GadgetInstance, *, gadget_timeout: int = 0) -> None:
        """Write the instance's ConfigMap; the API server's error (e.g. AlreadyExists) comes back as is."""
        body: Any = instance_to_configmap(instance, self.namespace, timeout=gadget_timeout)
        try:
            await self.core.create_namespaced_config_map(self.namespace, body)
        except (ApiException, OSError, TimeoutError) as error:
            raise DaemonCallError(api_message(error)) from None

    async def delete(self, instance_id: str) -> tuple[int, str]:
        """IG's ``Store.RemoveGadgetInstance``: ``(1, <the API's message>)`` on any error."""
        try:
            await self.core.delete_namespaced_config_map(instance_id, self.namespace)
        except (ApiException, OSError, TimeoutError) as error:
            return 1, api_message(error)
        return 0, ""

    # -- the shared watch --------------------------------------------------------------------------------

    async def start(self) -> None:
        """List, then watch from the list's resourceVersion; idempotent."""
        async with self._starting:
            if self._task is not None:
                return
            await self._relist()
            self._task = asyncio.get_running_loop().create_task(self._watch(), name="configmap store watch")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def subscribe(self, daemon: SharedStoreDaemon) -> dict[str, JSON]:
        """Register ``daemon`` for every later event; returns what the watch holds now (its initial list)."""
        self._daemons.append(daemon)
        return dict(self.objects)

    def unsubscribe(self, daemon: SharedStoreDaemon) -> None:
        with contextlib.suppress(ValueError):
            self._daemons.remove(daemon)

    async def _relist(self) -> None:
        listed = await self.core.list_namespaced_config_map(self.namespace, label_selector=LABEL_SELECTOR)
        body: JSON = self.api.sanitize_for_serialization(listed)  # type: ignore[no-untyped-call]
        objects = {item["metadata"]["name"]: item for item in body.get("items") or []}
        for name in [name for name in self.objects if name not in objects]:
            self._publish("DELETED", name, None)
        for name, obj in objects.items():
            known = self.objects.get(name)
            if known is None or known["metadata"].get("resourceVersion") != obj["metadata"].get("resourceVersion"):
                self._publish("MODIFIED" if known else "ADDED", name, obj)
        self._resource_version = body["metadata"].get("resourceVersion", "")

    def _publish(self, kind: str, name: str, obj: JSON | None) -> None:
        if obj is None:
            self.objects.pop(name, None)
        else:
            self.objects[name] = obj
        for daemon in list(self._daemons):
            daemon.deliver(name, obj)

    async def _watch(self) -> None:
        while True:
            try:
                async with Watch() as watch:  # type: ignore[no-untyped-call]
                    stream = watch.stream(
                        self.core.list_namespaced_config_map,
                        self.namespace,
                        label_selector=LABEL_SELECTOR,
                        resource_version=self._resource_version,
                        allow_watch_bookmarks=True,
                    )
                    async for event in stream:
                        obj = event["raw_object"]
                        self._resource_version = obj["metadata"].get("resourceVersion", self._resource_version)
                        if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                            name = obj["metadata"]["name"]
                            self._publish(event["type"], name, None if event["type"] == "DELETED" else obj)
            except asyncio.CancelledError:
                raise
            except ApiException as error:
                if error.status == 410:  # too old a resourceVersion: list again, publish the difference
                    with contextlib.suppress(ApiException, OSError, TimeoutError):
                        await self._relist()
                        continue
                log.warning("configmap watch failed: %s", api_message(error))
                await asyncio.sleep(self.retry_interval)
            except Exception as error:  # the API server went away, a broken stream: watch again
                log.warning("configmap watch failed: %s", api_message(error))
                await asyncio.sleep(self.retry_interval)


class SharedStoreDaemon(Daemon):
    """One daemon of IG's DaemonSet (``NODE_NAME`` = ``node``) on the shared ``ConfigMapStore``.

    Its informer cache follows the store ``informer_lag`` seconds behind the API server; its single
    worker reconciles each changed key ``worker_delay`` seconds after the cache has it: stop any local
    run, then run the instance if ``nodes`` is empty or names this node. Both delays may be changed per
    daemon at any time."""

    def __init__(
        self,
        node: str,
        store: ConfigMapStore,
        *,
        timing: RunTiming = DEFAULT_TIMING,
        unknown_images: Iterable[str] = (),
    ) -> None:
        super().__init__(node, timing=timing, unknown_images=unknown_images)
        self.store = store
        self.informer_lag = timing.informer_lag
        self.worker_delay = timing.worker_delay
        self.cache: dict[str, JSON] = {}
        """This daemon's informer cache: the ConfigMaps it knows, by name (instance ID)."""
        self._events: asyncio.Queue[tuple[float, str, JSON | None]] = asyncio.Queue()
        self._work: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []

    # -- the informer and the worker -------------------------------------------------------------------

    async def start(self) -> None:
        await self.store.start()
        if self._tasks:
            return
        self._events, self._work, self._queued = asyncio.Queue(), asyncio.Queue(), set()
        self.cache = self.store.subscribe(self)  # the initial list: every ConfigMap is an Add
        for name in self.cache:
            self._enqueue(name)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._informer(), name=f"{self.node} informer"),
            loop.create_task(self._worker(), name=f"{self.node} worker"),
        ]

    def deliver(self, name: str, obj: JSON | None) -> None:
        """A watch event (``obj`` None: deleted); the informer applies it ``informer_lag`` later."""
        self._events.put_nowait((asyncio.get_running_loop().time(), name, obj))

    async def _informer(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            arrived, name, obj = await self._events.get()
            wait = arrived + self.informer_lag - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if obj is None:
                self.cache.pop(name, None)
            else:
                self.cache[name] = obj
            self._enqueue(name)

    def _enqueue(self, name: str) -> None:
        if name not in self._queued:  # a workqueue holds a key once
            self._queued.add(name)
            self._work.put_nowait(name)

    async def _worker(self) -> None:
        while True:
            name = await self._work.get()
            if self.worker_delay > 0:
                await asyncio.sleep(self.worker_delay)
            self._queued.discard(name)
            self.reconcile(name)

    def reconcile(self, name: str) -> None:
        """IG's ``Store.reconcile``: stop, then run again if the ConfigMap is still there and meant for us."""
        self.manager.remove(name)
        configmap = self.cache.get(name)
        if configmap is None:
            return
        try:
            instance = configmap_to_instance(configmap)
        except DaemonCallError as error:
            log.warning("%s: converting configMap to gadgetInstance: %s", self.node, error)
            return
        if instance.nodes and self.node not in instance.nodes:
            return
        self.manager.run(instance)

    async def close(self) -> None:
        self.store.unsubscribe(self)
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.cache = {}
        await self.manager.stop_all()

    async def restart(self) -> None:
        """The pod restarts: local runs and the cache are gone; the ConfigMaps are listed and run again."""
        await self.close()
        await self.start()

    # -- the service ---------------------------------------------------------------------------------------

    def stored_instances(self) -> list[model.GadgetInstance]:
        """IG's ``Store.ListGadgetInstances``: the informer cache, converted, without state."""
        try:
            return [configmap_to_instance(configmap) for configmap in self.cache.values()]
        except DaemonCallError as error:
            raise DaemonCallError(
                f"listing gadget instances: converting configMap to gadgetInstance: {error}"
            ) from None

    async def create_instance(
        self, requested: model.GadgetInstance, *, gadget_timeout: int = 0
    ) -> model.GadgetInstance:
        created = new_identity(requested)
        if any(existing.name == created.name for existing in self.stored_instances()):
            raise DaemonCallError(f"gadget instance with name '{created.name}' already exists")
        await self.store.create(created, gadget_timeout=gadget_timeout)
        return created

    def load_stored(self, instance_id: str) -> model.GadgetInstance:
        """IG's ``Store.GetGadgetInstance``: from this daemon's informer cache, so not yet after a create."""
        configmap = self.cache.get(instance_id)
        if configmap is None:
            raise DaemonCallError("getting gadget instance from store: not found")
        try:
            return configmap_to_instance(configmap)
        except DaemonCallError as error:
            raise DaemonCallError(f"getting gadget instance from store: {error}") from None

    async def remove_stored(self, instance_id: str) -> tuple[int, str]:
        return await self.store.delete(instance_id)
