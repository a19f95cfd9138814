"""Instance IDs, names and ownership tags, by Inspektor Gadget's rules.

One gadget instance exists per (GadgetInstance resource, node, spec). Its ID is derived from those
three, so every pass of every operator process (including a restarted one) computes the same ID and a
repeated create is recognisably the same instance. A spec change yields a new ID, which is how the
operator creates the new instance before removing the old one.

Rules (inspektor-gadget.md): an ID is 32 lowercase hex characters; a name matches
``^[a-z0-9-_]{1,32}$``. In the DaemonSet deployment names and IDs are cluster-wide, so both embed the
derived ID.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gadget_operator.errors import InvalidInstanceError

ID_PATTERN = re.compile(r"^[a-f0-9]{32}$")
NAME_PATTERN = re.compile(r"^[a-z0-9\-_]{1,32}$")
_NAME_UNSAFE = re.compile(r"[^a-z0-9\-_]+")

TAG_PREFIX = "gadget-operator.io/"
TAG_OWNER_UID = TAG_PREFIX + "owner-uid"
TAG_RESOURCE = TAG_PREFIX + "resource"
TAG_NODE = TAG_PREFIX + "node"
TAG_SPEC_HASH = TAG_PREFIX + "spec-hash"

NAME_ID_CHARS = 16
"""How much of the ID a name carries: 64 bits keeps names unique; the rest is the resource name."""


def validate_instance_id(instance_id: str) -> str:
    if not ID_PATTERN.fullmatch(instance_id):
        raise InvalidInstanceError(f"invalid gadget instance id {instance_id!r}: must be 32 lowercase hex characters")
    return instance_id


def validate_instance_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise InvalidInstanceError(f"invalid gadget instance name {name!r}: must match ^[a-z0-9-_]{{1,32}}$")
    return name


def spec_hash(payload: Mapping[str, object]) -> str:
    """A short stable hash of what is sent to the daemon (key order does not matter)."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=1 << 16)  # asked for every (resource, node) on every status render
def instance_id(resource_uid: str, node: str, spec_digest: str) -> str:
    """The deterministic 32-hex ID of the instance of one resource on one node for one spec."""
    digest = hashlib.sha256(f"{resource_uid}\x00{node}\x00{spec_digest}".encode()).hexdigest()
    return validate_instance_id(digest[:32])


def instance_name(resource_name: str, derived_id: str) -> str:
    """A readable unique name: the resource's name (made safe) and the first 16 hex of the ID."""
    prefix_room = 32 - NAME_ID_CHARS - 1
    prefix = _NAME_UNSAFE.sub("-", resource_name.lower()).strip("-_")[:prefix_room].rstrip("-_")
    suffix = derived_id[:NAME_ID_CHARS]
    return validate_instance_name(f"{prefix}-{suffix}" if prefix else suffix)


SHARED_NODE = "*"
"""The node tag of an instance in IG's shared store: it runs on the nodes its ``nodes`` names (or all)."""


def node_set_key(nodes: Iterable[str] | None) -> str:
    """Stands for a node set in a shared-store instance's ID: a new set is a new instance."""
    if nodes is None:
        return SHARED_NODE
    return SHARED_NODE + hashlib.sha256(",".join(sorted(nodes)).encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Ownership:
    """What an instance's tags say about which resource, node and spec it was made for."""

    resource_uid: str
    resource: str
    """The resource's key: ``namespace/name`` for a GadgetInstance, ``name`` for a ClusterGadgetInstance
    (``resource.locate`` tells them apart; Kubernetes names never hold a ``/``, and no ``,`` either,
    which IG's shared store joins tags with)."""
    node: str
    spec_hash: str

    @property
    def tenant(self) -> str | None:
        """The namespace whose tenant the instance's calls speak for (``tokens``): a GadgetInstance's;
        None for a ClusterGadgetInstance, whose calls are the operator's own."""
        namespace, sep, _ = self.resource.partition("/")
        return namespace if sep else None


def ownership_tags(owner: Ownership) -> tuple[str, ...]:
    return (
        f"{TAG_OWNER_UID}={owner.resource_uid}",
        f"{TAG_RESOURCE}={owner.resource}",
        f"{TAG_NODE}={owner.node}",
        f"{TAG_SPEC_HASH}={owner.spec_hash}",
    )


def parse_ownership(tags: Iterable[str]) -> Ownership | None:
    """The ownership recorded in an instance's tags, or None if this operator did not make it."""
    return _parse_ownership(tags if isinstance(tags, tuple) else tuple(tags))


@functools.lru_cache(maxsize=1 << 16)  # every pass reads every listed instance's tags several times
def _parse_ownership(tags: tuple[str, ...]) -> Ownership | None:
    values: dict[str, str] = {}
    for tag in tags:
        key, sep, value = tag.partition("=")
        if sep and key.startswith(TAG_PREFIX):
            values[key] = value
    try:
        return Ownership(
            resource_uid=values[TAG_OWNER_UID],
            resource=values[TAG_RESOURCE],
            node=values[TAG_NODE],
            spec_hash=values[TAG_SPEC_HASH],
        )
    except KeyError:
        return None
