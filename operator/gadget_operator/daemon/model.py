"""Gadget instances as plain values, independent of the generated protobuf classes.

The client converts between these and ``pb.api_pb2`` at the wire; everything above the client
(planner, executor, status) sees only these.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

PROTOCOL_VERSION = 1
"""GadgetRunRequest.version every request must carry; other values put an instance in Error."""


class InstanceStatus(enum.IntEnum):
    """GadgetInstanceStatus on the wire."""

    INVALID = 0
    RUNNING = 1
    ERROR = 2


@dataclass(frozen=True, slots=True)
class GadgetInstance:
    """One gadget instance as the daemon knows it (or as the operator asks for it)."""

    id: str
    name: str
    image: str
    params: Mapping[str, str] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    nodes: tuple[str, ...] = ()
    log_level: int = 0
    version: int = PROTOCOL_VERSION
    time_created: int = 0
    status: InstanceStatus = InstanceStatus.INVALID
    message: str = ""
