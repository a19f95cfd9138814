"""Conversion between ``model.GadgetInstance`` and the generated protobuf messages.

Shared by the client and the simulator so that both sides of the wire agree by construction.
"""

from __future__ import annotations

from gadget_operator.daemon import model
from gadget_operator.daemon.pb import api_pb2


def to_pb(instance: model.GadgetInstance) -> api_pb2.GadgetInstance:
    return api_pb2.GadgetInstance(
        id=instance.id,
        name=instance.name,
        gadgetConfig=api_pb2.GadgetRunRequest(
            imageName=instance.image,
            paramValues=dict(instance.params),
            version=instance.version,
            logLevel=instance.log_level,
        ),
        tags=list(instance.tags),
        nodes=list(instance.nodes),
        timeCreated=instance.time_created,
        state=api_pb2.GadgetInstanceState(status=int(instance.status), message=instance.message),  # type: ignore[arg-type]
    )


def from_pb(message: api_pb2.GadgetInstance) -> model.GadgetInstance:
    config = message.gadgetConfig
    status = message.state.status
    return model.GadgetInstance(
        id=message.id,
        name=message.name,
        image=config.imageName,
        params=dict(config.paramValues),
        tags=tuple(message.tags),
        nodes=tuple(message.nodes),
        log_level=config.logLevel,
        version=config.version,
        time_created=message.timeCreated,
        status=model.InstanceStatus(status)
        if status in model.InstanceStatus._value2member_map_
        else model.InstanceStatus.INVALID,
        message=message.state.message,
    )
