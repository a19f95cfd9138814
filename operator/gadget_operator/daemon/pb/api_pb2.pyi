from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GadgetInstanceStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    StatusInvalid: _ClassVar[GadgetInstanceStatus]
    StatusRunning: _ClassVar[GadgetInstanceStatus]
    StatusError: _ClassVar[GadgetInstanceStatus]
StatusInvalid: GadgetInstanceStatus
StatusRunning: GadgetInstanceStatus
StatusError: GadgetInstanceStatus

class GadgetRunRequest(_message.Message):
    __slots__ = ("imageName", "paramValues", "args", "version", "logLevel", "timeout")
    class ParamValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    IMAGENAME_FIELD_NUMBER: _ClassVar[int]
    PARAMVALUES_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LOGLEVEL_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    imageName: str
    paramValues: _containers.ScalarMap[str, str]
    args: _containers.RepeatedScalarFieldContainer[str]
    version: int
    logLevel: int
    timeout: int
    def __init__(self, imageName: _Optional[str] = ..., paramValues: _Optional[_Mapping[str, str]] = ..., args: _Optional[_Iterable[str]] = ..., version: _Optional[int] = ..., logLevel: _Optional[int] = ..., timeout: _Optional[int] = ...) -> None: ...

class GadgetInstanceState(_message.Message):
    __slots__ = ("status", "message")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    status: GadgetInstanceStatus
    message: str
    def __init__(self, status: _Optional[_Union[GadgetInstanceStatus, str]] = ..., message: _Optional[str] = ...) -> None: ...

class GadgetInstance(_message.Message):
    __slots__ = ("id", "gadgetConfig", "tags", "timeCreated", "nodes", "name", "state")
    ID_FIELD_NUMBER: _ClassVar[int]
    GADGETCONFIG_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    TIMECREATED_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    id: str
    gadgetConfig: GadgetRunRequest
    tags: _containers.RepeatedScalarFieldContainer[str]
    timeCreated: int
    nodes: _containers.RepeatedScalarFieldContainer[str]
    name: str
    state: GadgetInstanceState
    def __init__(self, id: _Optional[str] = ..., gadgetConfig: _Optional[_Union[GadgetRunRequest, _Mapping]] = ..., tags: _Optional[_Iterable[str]] = ..., timeCreated: _Optional[int] = ..., nodes: _Optional[_Iterable[str]] = ..., name: _Optional[str] = ..., state: _Optional[_Union[GadgetInstanceState, _Mapping]] = ...) -> None: ...

class CreateGadgetInstanceRequest(_message.Message):
    __slots__ = ("gadgetInstance", "eventBufferLength")
    GADGETINSTANCE_FIELD_NUMBER: _ClassVar[int]
    EVENTBUFFERLENGTH_FIELD_NUMBER: _ClassVar[int]
    gadgetInstance: GadgetInstance
    eventBufferLength: int
    def __init__(self, gadgetInstance: _Optional[_Union[GadgetInstance, _Mapping]] = ..., eventBufferLength: _Optional[int] = ...) -> None: ...

class CreateGadgetInstanceResponse(_message.Message):
    __slots__ = ("result", "gadgetInstance")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    GADGETINSTANCE_FIELD_NUMBER: _ClassVar[int]
    result: int
    gadgetInstance: GadgetInstance
    def __init__(self, result: _Optional[int] = ..., gadgetInstance: _Optional[_Union[GadgetInstance, _Mapping]] = ...) -> None: ...

class ListGadgetInstancesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListGadgetInstanceResponse(_message.Message):
    __slots__ = ("gadgetInstances",)
    GADGETINSTANCES_FIELD_NUMBER: _ClassVar[int]
    gadgetInstances: _containers.RepeatedCompositeFieldContainer[GadgetInstance]
    def __init__(self, gadgetInstances: _Optional[_Iterable[_Union[GadgetInstance, _Mapping]]] = ...) -> None: ...

class GadgetInstanceId(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("result", "message")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    result: int
    message: str
    def __init__(self, result: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class GetGadgetInfoRequest(_message.Message):
    __slots__ = ("paramValues", "imageName", "version", "flags", "requestExtraInfo")
    class ParamValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PARAMVALUES_FIELD_NUMBER: _ClassVar[int]
    IMAGENAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    REQUESTEXTRAINFO_FIELD_NUMBER: _ClassVar[int]
    paramValues: _containers.ScalarMap[str, str]
    imageName: str
    version: int
    flags: int
    requestExtraInfo: bool
    def __init__(self, paramValues: _Optional[_Mapping[str, str]] = ..., imageName: _Optional[str] = ..., version: _Optional[int] = ..., flags: _Optional[int] = ..., requestExtraInfo: _Optional[bool] = ...) -> None: ...

class GetGadgetInfoResponse(_message.Message):
    __slots__ = ("gadgetInfo",)
    GADGETINFO_FIELD_NUMBER: _ClassVar[int]
    gadgetInfo: GadgetInfo
    def __init__(self, gadgetInfo: _Optional[_Union[GadgetInfo, _Mapping]] = ...) -> None: ...

class DataSource(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ExtraInfo(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Param(_message.Message):
    __slots__ = ("key", "description", "defaultValue", "typeHint", "title", "alias", "tags", "valueHint", "possibleValues", "isMandatory", "prefix", "alternativeKey")
    KEY_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    DEFAULTVALUE_FIELD_NUMBER: _ClassVar[int]
    TYPEHINT_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    VALUEHINT_FIELD_NUMBER: _ClassVar[int]
    POSSIBLEVALUES_FIELD_NUMBER: _ClassVar[int]
    ISMANDATORY_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    ALTERNATIVEKEY_FIELD_NUMBER: _ClassVar[int]
    key: str
    description: str
    defaultValue: str
    typeHint: str
    title: str
    alias: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    valueHint: str
    possibleValues: _containers.RepeatedScalarFieldContainer[str]
    isMandatory: bool
    prefix: str
    alternativeKey: str
    def __init__(self, key: _Optional[str] = ..., description: _Optional[str] = ..., defaultValue: _Optional[str] = ..., typeHint: _Optional[str] = ..., title: _Optional[str] = ..., alias: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ..., valueHint: _Optional[str] = ..., possibleValues: _Optional[_Iterable[str]] = ..., isMandatory: _Optional[bool] = ..., prefix: _Optional[str] = ..., alternativeKey: _Optional[str] = ...) -> None: ...

class GadgetInfo(_message.Message):
    __slots__ = ("name", "imageName", "dataSources", "annotations", "metadata", "params", "id", "extraInfo")
    class AnnotationsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    IMAGENAME_FIELD_NUMBER: _ClassVar[int]
    DATASOURCES_FIELD_NUMBER: _ClassVar[int]
    ANNOTATIONS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    EXTRAINFO_FIELD_NUMBER: _ClassVar[int]
    name: str
    imageName: str
    dataSources: _containers.RepeatedCompositeFieldContainer[DataSource]
    annotations: _containers.ScalarMap[str, str]
    metadata: bytes
    params: _containers.RepeatedCompositeFieldContainer[Param]
    id: str
    extraInfo: ExtraInfo
    def __init__(self, name: _Optional[str] = ..., imageName: _Optional[str] = ..., dataSources: _Optional[_Iterable[_Union[DataSource, _Mapping]]] = ..., annotations: _Optional[_Mapping[str, str]] = ..., metadata: _Optional[bytes] = ..., params: _Optional[_Iterable[_Union[Param, _Mapping]]] = ..., id: _Optional[str] = ..., extraInfo: _Optional[_Union[ExtraInfo, _Mapping]] = ...) -> None: ...

class GadgetStopRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GadgetAttachRequest(_message.Message):
    __slots__ = ("id", "version")
    ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    id: str
    version: int
    def __init__(self, id: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class GadgetControlRequest(_message.Message):
    __slots__ = ("runRequest", "stopRequest", "attachRequest")
    RUNREQUEST_FIELD_NUMBER: _ClassVar[int]
    STOPREQUEST_FIELD_NUMBER: _ClassVar[int]
    ATTACHREQUEST_FIELD_NUMBER: _ClassVar[int]
    runRequest: GadgetRunRequest
    stopRequest: GadgetStopRequest
    attachRequest: GadgetAttachRequest
    def __init__(self, runRequest: _Optional[_Union[GadgetRunRequest, _Mapping]] = ..., stopRequest: _Optional[_Union[GadgetStopRequest, _Mapping]] = ..., attachRequest: _Optional[_Union[GadgetAttachRequest, _Mapping]] = ...) -> None: ...

class GadgetEvent(_message.Message):
    __slots__ = ("type", "seq", "payload", "dataSourceID")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    DATASOURCEID_FIELD_NUMBER: _ClassVar[int]
    type: int
    seq: int
    payload: bytes
    dataSourceID: int
    def __init__(self, type: _Optional[int] = ..., seq: _Optional[int] = ..., payload: _Optional[bytes] = ..., dataSourceID: _Optional[int] = ...) -> None: ...
