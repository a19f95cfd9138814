"""The instance semantics of a real gadget daemon, without the wire.

Each rule here follows ``shared/docs/inspektor-gadget.md`` and is tested on its own in
``tests/daemon/test_simulator_semantics.py``.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from gadget_operator.daemon import convert, model
from gadget_operator.daemon.pb import api_pb2

_ID = re.compile(r"^[a-f0-9]{32}$")
_NAME = re.compile(r"^[a-z0-9-_]{1,32}$")
_IMAGE_PREFIX = "ghcr.io/inspektor-gadget/gadget/"


class DaemonCallError(Exception):
    """A failed call, as the real daemon reports it: gRPC code UNKNOWN with a text message."""


def full_image_name(image: str) -> str:
    """IG expands a short name like ``trace_exec`` to its ghcr.io reference with ``:latest``."""
    if "/" in image or "." in image.split(":")[0]:
        return image
    return f"{_IMAGE_PREFIX}{image}" + ("" if ":" in image else ":latest")


@dataclass
class DaemonState:
    """Instances held by one daemon, with an optional file store like ``ig daemon``'s."""

    node: str
    store: Path | None = None
    """Directory of one file per instance; None means instances live only in memory."""
    unknown_images: frozenset[str] = frozenset()
    """Images (short or full) that cannot be pulled: Create succeeds, the instance goes to Error."""
    instances: dict[str, model.GadgetInstance] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.unknown_images = frozenset(full_image_name(image) for image in self.unknown_images)
        if self.store is not None:
            self.store.mkdir(parents=True, exist_ok=True)
            self.load()

    def load(self) -> None:
        """Resume stored instances, as ``ig daemon`` does at start; their state is recomputed."""
        self.instances.clear()
        assert self.store is not None
        for path in sorted(self.store.glob("*.pb")):
            stored = convert.from_pb(api_pb2.GadgetInstance.FromString(path.read_bytes()))
            self.instances[stored.id] = self._started(stored)

    def create(self, requested: model.GadgetInstance) -> model.GadgetInstance:
        instance_id = requested.id or secrets.token_hex(16)
        if not _ID.match(instance_id):
            raise DaemonCallError(f"invalid gadget instance id {instance_id!r}: must match {_ID.pattern}")
        name = requested.name or f"gadget-{secrets.token_hex(4)}"
        if not _NAME.match(name):
            raise DaemonCallError(f"invalid gadget instance name {name!r}: must match {_NAME.pattern}")
        if instance_id in self.instances:
            raise DaemonCallError(f'gadget with id "{instance_id}" already exists')
        if any(existing.name == name for existing in self.instances.values()):
            raise DaemonCallError(f'gadget with name "{name}" already exists')
        created = self._started(replace(requested, id=instance_id, name=name, time_created=time.time_ns()))
        self.instances[instance_id] = created
        if self.store is not None:
            # What is stored is the request, not the run state: state lives only in memory.
            stored = replace(created, status=model.InstanceStatus.INVALID, message="")
            (self.store / f"{instance_id}.pb").write_bytes(convert.to_pb(stored).SerializeToString())
        return created

    def list(self) -> list[model.GadgetInstance]:
        return list(self.instances.values())

    def get(self, instance_id: str) -> model.GadgetInstance:
        try:
            return self.instances[instance_id]
        except KeyError:
            raise DaemonCallError(f'gadget instance "{instance_id}" not found') from None

    def remove(self, instance_id: str) -> tuple[int, str]:
        """Answer like the real RemoveGadgetInstance: OK with result 1 for an unknown ID."""
        if self.instances.pop(instance_id, None) is None:
            return 1, f'gadget instance "{instance_id}" not found'
        if self.store is not None:
            (self.store / f"{instance_id}.pb").unlink(missing_ok=True)
        return 0, ""

    def lose_memory(self) -> None:
        """A restart: memory is gone; with a store the instances come back, without it they do not."""
        self.instances.clear()
        if self.store is not None:
            self.load()

    def _started(self, instance: model.GadgetInstance) -> model.GadgetInstance:
        if instance.version != model.PROTOCOL_VERSION:
            return replace(instance, status=model.InstanceStatus.ERROR, message="expected version to be 1")
        image = full_image_name(instance.image)
        if image in self.unknown_images:
            return replace(
                instance,
                status=model.InstanceStatus.ERROR,
                message=f"fetching gadget information: pulling image {image!r}: not found",
            )
        return replace(instance, status=model.InstanceStatus.RUNNING, message="")
