"""What IG's shared store holds: every stored instance of the cluster, read from its ConfigMaps.

In IG's DaemonSet deployment every instance is one ConfigMap in the daemon namespace (labels
``type=gadget-instance`` and ``name=<instance name>``, the parameters as data, the rest as
annotations; inspektor-gadget.md, "IG's DaemonSet store"). ListGadgetInstances cannot stand in for
this: a daemon answers it only when it runs *every* stored instance, so one instance restricted to
other nodes makes it fail (docs/upstream-list-bug.md). The ConfigMaps are the one complete view, and
the one IG's own daemons follow; the operator only reads them (list and watch in the daemon
namespace, which the ``pods/portforward`` right there already outranks) and writes through the
daemons' gRPC API, never to the ConfigMaps.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gadget_operator import kube
from gadget_operator.daemon import model

logger = logging.getLogger(__name__)

STORE_SELECTOR = "type=gadget-instance"
_IMAGE, _TAGS, _NODES, _LOG_LEVEL = "gadgetImage", "gadgetTags", "gadgetNodes", "gadgetLogLevel"


def split_list(joined: str) -> tuple[str, ...]:
    """IG joins tags and nodes with commas; an empty list is stored as ``""``."""
    return tuple(item for item in joined.split(",") if item)


def from_config_map(body: Mapping[str, Any]) -> model.GadgetInstance:
    """An instance as IG's store reads it back (``configMapToGadgetInstance``); the run state is not
    stored anywhere but in each daemon's memory."""
    metadata = body.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    log_level = str(annotations.get(_LOG_LEVEL, "0"))
    return model.GadgetInstance(
        id=str(metadata.get("name", "")),
        name=str((metadata.get("labels") or {}).get("name", "")),
        image=str(annotations.get(_IMAGE, "")),
        params={str(k): str(v) for k, v in (body.get("data") or {}).items()},
        tags=split_list(str(annotations.get(_TAGS, ""))),
        nodes=split_list(str(annotations.get(_NODES, ""))),
        log_level=int(log_level) if log_level.isdigit() else 0,
    )


@dataclass(slots=True)
class StoreInventory:
    """The shared store's instances by ID, as last seen, plus the operator's own calls since."""

    on_change: Callable[[], None] = field(default=lambda: None)
    instances: dict[str, model.GadgetInstance] = field(default_factory=dict)
    listed: bool = False
    """Whether the store has been listed once: no orphan is judged before that."""

    def replace(self, config_maps: Iterable[Mapping[str, Any]]) -> None:
        instances = {instance.id: instance for instance in map(from_config_map, config_maps)}
        changed = not self.listed or instances.keys() != self.instances.keys()
        self.instances = instances
        self.listed = True
        if changed:
            self.on_change()

    def apply(self, event_type: str, config_map: Mapping[str, Any]) -> None:
        instance = from_config_map(config_map)
        if event_type == "DELETED":
            changed = self.instances.pop(instance.id, None) is not None
        else:
            changed = instance.id not in self.instances
            self.instances[instance.id] = instance
        if changed:
            self.on_change()

    def created(self, instance: model.GadgetInstance) -> None:
        """Our own create went through: count it before the watch shows it."""
        self.instances[instance.id] = instance

    def removed(self, instance_id: str) -> None:
        self.instances.pop(instance_id, None)

    def runs_on(self, node: str) -> list[model.GadgetInstance]:
        """The stored instances IG starts on ``node``: ``nodes`` empty or naming it."""
        return [i for i in self.instances.values() if not i.nodes or node in i.nodes]

    def lists_on(self, node: str) -> bool:
        """Whether ListGadgetInstances can answer on ``node``: only if that daemon runs every stored
        instance (IG fails the whole call on the first one it does not run)."""
        return all(not i.nodes or node in i.nodes for i in self.instances.values())


async def follow(api: kube.KubeApi, namespace: str, inventory: StoreInventory) -> None:
    """Keep ``inventory`` equal to the store's ConfigMaps, forever (cancel to stop)."""
    await kube.list_and_watch(
        f"IG's instance store (configmaps in {namespace})",
        lambda: api.list_config_maps(namespace, STORE_SELECTOR),
        lambda version: api.watch_config_maps(namespace, STORE_SELECTOR, version),
        on_list=inventory.replace,
        on_event=inventory.apply,
    )
