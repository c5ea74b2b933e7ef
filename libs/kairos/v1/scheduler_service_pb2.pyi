import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetSchedulerStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetSchedulerStatusResponse(_message.Message):
    __slots__ = ("replicas",)
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    replicas: _containers.RepeatedCompositeFieldContainer[SchedulerReplica]
    def __init__(self, replicas: _Optional[_Iterable[_Union[SchedulerReplica, _Mapping]]] = ...) -> None: ...

class SchedulerReplica(_message.Message):
    __slots__ = ("id", "shards", "scheduled_triggers", "fire_lag_p50_ms", "fire_lag_p99_ms", "fires_published", "heartbeat_time")
    ID_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    SCHEDULED_TRIGGERS_FIELD_NUMBER: _ClassVar[int]
    FIRE_LAG_P50_MS_FIELD_NUMBER: _ClassVar[int]
    FIRE_LAG_P99_MS_FIELD_NUMBER: _ClassVar[int]
    FIRES_PUBLISHED_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    shards: _containers.RepeatedScalarFieldContainer[int]
    scheduled_triggers: int
    fire_lag_p50_ms: float
    fire_lag_p99_ms: float
    fires_published: int
    heartbeat_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., shards: _Optional[_Iterable[int]] = ..., scheduled_triggers: _Optional[int] = ..., fire_lag_p50_ms: _Optional[float] = ..., fire_lag_p99_ms: _Optional[float] = ..., fires_published: _Optional[int] = ..., heartbeat_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
