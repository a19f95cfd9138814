import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StateRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class State(_message.Message):
    __slots__ = ("operator", "resources", "daemons")
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    DAEMONS_FIELD_NUMBER: _ClassVar[int]
    operator: OperatorInfo
    resources: _containers.RepeatedCompositeFieldContainer[ResourceState]
    daemons: _containers.RepeatedCompositeFieldContainer[DaemonState]
    def __init__(self, operator: _Optional[_Union[OperatorInfo, _Mapping]] = ..., resources: _Optional[_Iterable[_Union[ResourceState, _Mapping]]] = ..., daemons: _Optional[_Iterable[_Union[DaemonState, _Mapping]]] = ...) -> None: ...

class OperatorInfo(_message.Message):
    __slots__ = ("version", "role", "identity", "started", "settings", "leader")
    class SettingsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    version: str
    role: str
    identity: str
    started: _timestamp_pb2.Timestamp
    settings: _containers.ScalarMap[str, str]
    leader: str
    def __init__(self, version: _Optional[str] = ..., role: _Optional[str] = ..., identity: _Optional[str] = ..., started: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., settings: _Optional[_Mapping[str, str]] = ..., leader: _Optional[str] = ...) -> None: ...

class ResourceState(_message.Message):
    __slots__ = ("kind", "namespace", "name", "uid", "generation", "observed_generation", "phase", "message", "nodes", "rollout")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_GENERATION_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    kind: str
    namespace: str
    name: str
    uid: str
    generation: int
    observed_generation: int
    phase: str
    message: str
    nodes: _containers.RepeatedCompositeFieldContainer[NodeEntry]
    rollout: RolloutState
    def __init__(self, kind: _Optional[str] = ..., namespace: _Optional[str] = ..., name: _Optional[str] = ..., uid: _Optional[str] = ..., generation: _Optional[int] = ..., observed_generation: _Optional[int] = ..., phase: _Optional[str] = ..., message: _Optional[str] = ..., nodes: _Optional[_Iterable[_Union[NodeEntry, _Mapping]]] = ..., rollout: _Optional[_Union[RolloutState, _Mapping]] = ...) -> None: ...

class NodeEntry(_message.Message):
    __slots__ = ("node", "state", "instance_id", "message")
    NODE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    node: str
    state: str
    instance_id: str
    message: str
    def __init__(self, node: _Optional[str] = ..., state: _Optional[str] = ..., instance_id: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class RolloutState(_message.Message):
    __slots__ = ("strategy", "max_surge", "updated_nodes", "updating_nodes", "waiting_nodes", "halted", "paused", "awaiting_step", "steps")
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    MAX_SURGE_FIELD_NUMBER: _ClassVar[int]
    UPDATED_NODES_FIELD_NUMBER: _ClassVar[int]
    UPDATING_NODES_FIELD_NUMBER: _ClassVar[int]
    WAITING_NODES_FIELD_NUMBER: _ClassVar[int]
    HALTED_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    AWAITING_STEP_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    strategy: str
    max_surge: int
    updated_nodes: int
    updating_nodes: int
    waiting_nodes: int
    halted: bool
    paused: bool
    awaiting_step: bool
    steps: int
    def __init__(self, strategy: _Optional[str] = ..., max_surge: _Optional[int] = ..., updated_nodes: _Optional[int] = ..., updating_nodes: _Optional[int] = ..., waiting_nodes: _Optional[int] = ..., halted: _Optional[bool] = ..., paused: _Optional[bool] = ..., awaiting_step: _Optional[bool] = ..., steps: _Optional[int] = ...) -> None: ...

class DaemonState(_message.Message):
    __slots__ = ("node", "address", "transport", "reachable", "last_contact", "last_error", "instances")
    NODE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    REACHABLE_FIELD_NUMBER: _ClassVar[int]
    LAST_CONTACT_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    node: str
    address: str
    transport: str
    reachable: bool
    last_contact: _timestamp_pb2.Timestamp
    last_error: str
    instances: int
    def __init__(self, node: _Optional[str] = ..., address: _Optional[str] = ..., transport: _Optional[str] = ..., reachable: _Optional[bool] = ..., last_contact: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_error: _Optional[str] = ..., instances: _Optional[int] = ...) -> None: ...

class EventsRequest(_message.Message):
    __slots__ = ("follow",)
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    follow: bool
    def __init__(self, follow: _Optional[bool] = ...) -> None: ...

class LogEntry(_message.Message):
    __slots__ = ("timestamp", "sequence", "dropped", "summary", "instance", "node", "resource", "rollout", "leadership", "intent")
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    LEADERSHIP_FIELD_NUMBER: _ClassVar[int]
    INTENT_FIELD_NUMBER: _ClassVar[int]
    timestamp: _timestamp_pb2.Timestamp
    sequence: int
    dropped: int
    summary: str
    instance: InstanceEvent
    node: NodeEvent
    resource: ResourceEvent
    rollout: RolloutEvent
    leadership: LeadershipEvent
    intent: IntentEvent
    def __init__(self, timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., sequence: _Optional[int] = ..., dropped: _Optional[int] = ..., summary: _Optional[str] = ..., instance: _Optional[_Union[InstanceEvent, _Mapping]] = ..., node: _Optional[_Union[NodeEvent, _Mapping]] = ..., resource: _Optional[_Union[ResourceEvent, _Mapping]] = ..., rollout: _Optional[_Union[RolloutEvent, _Mapping]] = ..., leadership: _Optional[_Union[LeadershipEvent, _Mapping]] = ..., intent: _Optional[_Union[IntentEvent, _Mapping]] = ...) -> None: ...

class ResourceRef(_message.Message):
    __slots__ = ("kind", "namespace", "name")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    kind: str
    namespace: str
    name: str
    def __init__(self, kind: _Optional[str] = ..., namespace: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class InstanceEvent(_message.Message):
    __slots__ = ("action", "resource", "node", "instance_id", "message")
    class Action(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ACTION_UNSPECIFIED: _ClassVar[InstanceEvent.Action]
        CREATED: _ClassVar[InstanceEvent.Action]
        RUNNING: _ClassVar[InstanceEvent.Action]
        FAILED: _ClassVar[InstanceEvent.Action]
        REMOVED: _ClassVar[InstanceEvent.Action]
    ACTION_UNSPECIFIED: InstanceEvent.Action
    CREATED: InstanceEvent.Action
    RUNNING: InstanceEvent.Action
    FAILED: InstanceEvent.Action
    REMOVED: InstanceEvent.Action
    ACTION_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    action: InstanceEvent.Action
    resource: ResourceRef
    node: str
    instance_id: str
    message: str
    def __init__(self, action: _Optional[_Union[InstanceEvent.Action, str]] = ..., resource: _Optional[_Union[ResourceRef, _Mapping]] = ..., node: _Optional[str] = ..., instance_id: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class NodeEvent(_message.Message):
    __slots__ = ("action", "node", "address", "message")
    class Action(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ACTION_UNSPECIFIED: _ClassVar[NodeEvent.Action]
        JOINED: _ClassVar[NodeEvent.Action]
        LEFT: _ClassVar[NodeEvent.Action]
        UNREACHABLE: _ClassVar[NodeEvent.Action]
        REACHABLE: _ClassVar[NodeEvent.Action]
    ACTION_UNSPECIFIED: NodeEvent.Action
    JOINED: NodeEvent.Action
    LEFT: NodeEvent.Action
    UNREACHABLE: NodeEvent.Action
    REACHABLE: NodeEvent.Action
    ACTION_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    action: NodeEvent.Action
    node: str
    address: str
    message: str
    def __init__(self, action: _Optional[_Union[NodeEvent.Action, str]] = ..., node: _Optional[str] = ..., address: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class ResourceEvent(_message.Message):
    __slots__ = ("resource", "phase", "previous_phase", "message")
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_PHASE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    resource: ResourceRef
    phase: str
    previous_phase: str
    message: str
    def __init__(self, resource: _Optional[_Union[ResourceRef, _Mapping]] = ..., phase: _Optional[str] = ..., previous_phase: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class RolloutEvent(_message.Message):
    __slots__ = ("action", "resource", "updated_nodes", "total_nodes", "nodes")
    class Action(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ACTION_UNSPECIFIED: _ClassVar[RolloutEvent.Action]
        STEP: _ClassVar[RolloutEvent.Action]
        HALTED: _ClassVar[RolloutEvent.Action]
        PAUSED: _ClassVar[RolloutEvent.Action]
        RESUMED: _ClassVar[RolloutEvent.Action]
        COMPLETE: _ClassVar[RolloutEvent.Action]
    ACTION_UNSPECIFIED: RolloutEvent.Action
    STEP: RolloutEvent.Action
    HALTED: RolloutEvent.Action
    PAUSED: RolloutEvent.Action
    RESUMED: RolloutEvent.Action
    COMPLETE: RolloutEvent.Action
    ACTION_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    UPDATED_NODES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_NODES_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    action: RolloutEvent.Action
    resource: ResourceRef
    updated_nodes: int
    total_nodes: int
    nodes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, action: _Optional[_Union[RolloutEvent.Action, str]] = ..., resource: _Optional[_Union[ResourceRef, _Mapping]] = ..., updated_nodes: _Optional[int] = ..., total_nodes: _Optional[int] = ..., nodes: _Optional[_Iterable[str]] = ...) -> None: ...

class LeadershipEvent(_message.Message):
    __slots__ = ("role", "identity")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    role: str
    identity: str
    def __init__(self, role: _Optional[str] = ..., identity: _Optional[str] = ...) -> None: ...

class IntentEvent(_message.Message):
    __slots__ = ("intent", "result", "source")
    INTENT_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    intent: Intent
    result: IntentResult
    source: str
    def __init__(self, intent: _Optional[_Union[Intent, _Mapping]] = ..., result: _Optional[_Union[IntentResult, _Mapping]] = ..., source: _Optional[str] = ...) -> None: ...

class Intent(_message.Message):
    __slots__ = ("resync", "rollout")
    RESYNC_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    resync: ResyncIntent
    rollout: RolloutIntent
    def __init__(self, resync: _Optional[_Union[ResyncIntent, _Mapping]] = ..., rollout: _Optional[_Union[RolloutIntent, _Mapping]] = ...) -> None: ...

class ResyncIntent(_message.Message):
    __slots__ = ("all", "resource", "node")
    ALL_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    all: bool
    resource: ResourceRef
    node: str
    def __init__(self, all: _Optional[bool] = ..., resource: _Optional[_Union[ResourceRef, _Mapping]] = ..., node: _Optional[str] = ...) -> None: ...

class RolloutIntent(_message.Message):
    __slots__ = ("action", "resource")
    class Action(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ACTION_UNSPECIFIED: _ClassVar[RolloutIntent.Action]
        NEXT: _ClassVar[RolloutIntent.Action]
        PAUSE: _ClassVar[RolloutIntent.Action]
        RESUME: _ClassVar[RolloutIntent.Action]
    ACTION_UNSPECIFIED: RolloutIntent.Action
    NEXT: RolloutIntent.Action
    PAUSE: RolloutIntent.Action
    RESUME: RolloutIntent.Action
    ACTION_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    action: RolloutIntent.Action
    resource: ResourceRef
    def __init__(self, action: _Optional[_Union[RolloutIntent.Action, str]] = ..., resource: _Optional[_Union[ResourceRef, _Mapping]] = ...) -> None: ...

class IntentResult(_message.Message):
    __slots__ = ("accepted", "message")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    message: str
    def __init__(self, accepted: _Optional[bool] = ..., message: _Optional[str] = ...) -> None: ...
