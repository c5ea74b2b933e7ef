import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from kairos.v1 import trigger_pb2 as _trigger_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SkipReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SKIP_REASON_UNSPECIFIED: _ClassVar[SkipReason]
    SKIP_REASON_OVERLAP: _ClassVar[SkipReason]
    SKIP_REASON_DAILY_CAP: _ClassVar[SkipReason]
    SKIP_REASON_PAUSED: _ClassVar[SkipReason]

class TriggerType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRIGGER_TYPE_UNSPECIFIED: _ClassVar[TriggerType]
    TRIGGER_TYPE_SCHEDULE: _ClassVar[TriggerType]
    TRIGGER_TYPE_WEBHOOK: _ClassVar[TriggerType]
    TRIGGER_TYPE_EVENT: _ClassVar[TriggerType]
    TRIGGER_TYPE_MANUAL: _ClassVar[TriggerType]

class RunStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_STATUS_UNSPECIFIED: _ClassVar[RunStatus]
    RUN_STATUS_PENDING: _ClassVar[RunStatus]
    RUN_STATUS_RUNNING: _ClassVar[RunStatus]
    RUN_STATUS_COMPLETED: _ClassVar[RunStatus]
    RUN_STATUS_FAILED: _ClassVar[RunStatus]
    RUN_STATUS_CANCELLED: _ClassVar[RunStatus]
    RUN_STATUS_TIMED_OUT: _ClassVar[RunStatus]
    RUN_STATUS_SKIPPED: _ClassVar[RunStatus]
SKIP_REASON_UNSPECIFIED: SkipReason
SKIP_REASON_OVERLAP: SkipReason
SKIP_REASON_DAILY_CAP: SkipReason
SKIP_REASON_PAUSED: SkipReason
TRIGGER_TYPE_UNSPECIFIED: TriggerType
TRIGGER_TYPE_SCHEDULE: TriggerType
TRIGGER_TYPE_WEBHOOK: TriggerType
TRIGGER_TYPE_EVENT: TriggerType
TRIGGER_TYPE_MANUAL: TriggerType
RUN_STATUS_UNSPECIFIED: RunStatus
RUN_STATUS_PENDING: RunStatus
RUN_STATUS_RUNNING: RunStatus
RUN_STATUS_COMPLETED: RunStatus
RUN_STATUS_FAILED: RunStatus
RUN_STATUS_CANCELLED: RunStatus
RUN_STATUS_TIMED_OUT: RunStatus
RUN_STATUS_SKIPPED: RunStatus

class Run(_message.Message):
    __slots__ = ("name", "trigger", "trigger_type", "status", "status_reason", "fire_id", "attempt", "scheduled_time", "fire_time", "start_time", "end_time", "duration_ms", "input", "output", "error_message", "agent", "agent_version", "owner", "payload", "webhook", "event_type", "skip_reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_TYPE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STATUS_REASON_FIELD_NUMBER: _ClassVar[int]
    FIRE_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    SCHEDULED_TIME_FIELD_NUMBER: _ClassVar[int]
    FIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    SKIP_REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    trigger: str
    trigger_type: TriggerType
    status: RunStatus
    status_reason: str
    fire_id: str
    attempt: int
    scheduled_time: _timestamp_pb2.Timestamp
    fire_time: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    duration_ms: int
    input: _struct_pb2.Struct
    output: _struct_pb2.Value
    error_message: str
    agent: str
    agent_version: _trigger_pb2.AgentVersion
    owner: str
    payload: _struct_pb2.Value
    webhook: str
    event_type: str
    skip_reason: SkipReason
    def __init__(self, name: _Optional[str] = ..., trigger: _Optional[str] = ..., trigger_type: _Optional[_Union[TriggerType, str]] = ..., status: _Optional[_Union[RunStatus, str]] = ..., status_reason: _Optional[str] = ..., fire_id: _Optional[str] = ..., attempt: _Optional[int] = ..., scheduled_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., fire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., duration_ms: _Optional[int] = ..., input: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., output: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., error_message: _Optional[str] = ..., agent: _Optional[str] = ..., agent_version: _Optional[_Union[_trigger_pb2.AgentVersion, str]] = ..., owner: _Optional[str] = ..., payload: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., webhook: _Optional[str] = ..., event_type: _Optional[str] = ..., skip_reason: _Optional[_Union[SkipReason, str]] = ...) -> None: ...

class TraceEvent(_message.Message):
    __slots__ = ("id", "type", "source", "fire_id", "run", "trigger", "time", "attempt", "duration_ms", "error_message", "status", "count", "skip_reason")
    ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    FIRE_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SKIP_REASON_FIELD_NUMBER: _ClassVar[int]
    id: str
    type: str
    source: str
    fire_id: str
    run: str
    trigger: str
    time: _timestamp_pb2.Timestamp
    attempt: int
    duration_ms: int
    error_message: str
    status: RunStatus
    count: int
    skip_reason: SkipReason
    def __init__(self, id: _Optional[str] = ..., type: _Optional[str] = ..., source: _Optional[str] = ..., fire_id: _Optional[str] = ..., run: _Optional[str] = ..., trigger: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., attempt: _Optional[int] = ..., duration_ms: _Optional[int] = ..., error_message: _Optional[str] = ..., status: _Optional[_Union[RunStatus, str]] = ..., count: _Optional[int] = ..., skip_reason: _Optional[_Union[SkipReason, str]] = ...) -> None: ...
