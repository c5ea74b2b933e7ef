import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from kairos.v1 import run_pb2 as _run_pb2
from kairos.v1 import trigger_pb2 as _trigger_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FireRequest(_message.Message):
    __slots__ = ("fire_id", "trigger", "trigger_type", "scheduled_time", "fire_time", "action", "policies", "timezone", "input_overrides", "payload", "webhook", "event_type", "trigger_revision", "payload_json")
    FIRE_ID_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_TYPE_FIELD_NUMBER: _ClassVar[int]
    SCHEDULED_TIME_FIELD_NUMBER: _ClassVar[int]
    FIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    TIMEZONE_FIELD_NUMBER: _ClassVar[int]
    INPUT_OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_REVISION_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_JSON_FIELD_NUMBER: _ClassVar[int]
    fire_id: str
    trigger: str
    trigger_type: _run_pb2.TriggerType
    scheduled_time: _timestamp_pb2.Timestamp
    fire_time: _timestamp_pb2.Timestamp
    action: _trigger_pb2.Action
    policies: _trigger_pb2.Policies
    timezone: str
    input_overrides: _struct_pb2.Struct
    payload: _struct_pb2.Value
    webhook: str
    event_type: str
    trigger_revision: int
    payload_json: bytes
    def __init__(self, fire_id: _Optional[str] = ..., trigger: _Optional[str] = ..., trigger_type: _Optional[_Union[_run_pb2.TriggerType, str]] = ..., scheduled_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., fire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., action: _Optional[_Union[_trigger_pb2.Action, _Mapping]] = ..., policies: _Optional[_Union[_trigger_pb2.Policies, _Mapping]] = ..., timezone: _Optional[str] = ..., input_overrides: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., payload: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., webhook: _Optional[str] = ..., event_type: _Optional[str] = ..., trigger_revision: _Optional[int] = ..., payload_json: _Optional[bytes] = ...) -> None: ...
