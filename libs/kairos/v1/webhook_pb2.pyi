import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WebhookAuthMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WEBHOOK_AUTH_MODE_UNSPECIFIED: _ClassVar[WebhookAuthMode]
    WEBHOOK_AUTH_MODE_BEARER_TOKEN: _ClassVar[WebhookAuthMode]
    WEBHOOK_AUTH_MODE_STANDARD_WEBHOOKS: _ClassVar[WebhookAuthMode]
    WEBHOOK_AUTH_MODE_SHARED_SECRET_HEADER: _ClassVar[WebhookAuthMode]
WEBHOOK_AUTH_MODE_UNSPECIFIED: WebhookAuthMode
WEBHOOK_AUTH_MODE_BEARER_TOKEN: WebhookAuthMode
WEBHOOK_AUTH_MODE_STANDARD_WEBHOOKS: WebhookAuthMode
WEBHOOK_AUTH_MODE_SHARED_SECRET_HEADER: WebhookAuthMode

class Webhook(_message.Message):
    __slots__ = ("name", "trigger", "display_name", "owner", "disabled", "auth_mode", "accepted_event_types", "field_mapping", "rate_limit", "path", "secrets", "etag", "create_time", "update_time")
    class FieldMappingEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    DISABLED_FIELD_NUMBER: _ClassVar[int]
    AUTH_MODE_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_EVENT_TYPES_FIELD_NUMBER: _ClassVar[int]
    FIELD_MAPPING_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    SECRETS_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    trigger: str
    display_name: str
    owner: str
    disabled: bool
    auth_mode: WebhookAuthMode
    accepted_event_types: _containers.RepeatedScalarFieldContainer[str]
    field_mapping: _containers.ScalarMap[str, str]
    rate_limit: RateLimit
    path: str
    secrets: _containers.RepeatedCompositeFieldContainer[WebhookSecretInfo]
    etag: str
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., trigger: _Optional[str] = ..., display_name: _Optional[str] = ..., owner: _Optional[str] = ..., disabled: _Optional[bool] = ..., auth_mode: _Optional[_Union[WebhookAuthMode, str]] = ..., accepted_event_types: _Optional[_Iterable[str]] = ..., field_mapping: _Optional[_Mapping[str, str]] = ..., rate_limit: _Optional[_Union[RateLimit, _Mapping]] = ..., path: _Optional[str] = ..., secrets: _Optional[_Iterable[_Union[WebhookSecretInfo, _Mapping]]] = ..., etag: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RateLimit(_message.Message):
    __slots__ = ("requests_per_second", "burst")
    REQUESTS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    BURST_FIELD_NUMBER: _ClassVar[int]
    requests_per_second: float
    burst: int
    def __init__(self, requests_per_second: _Optional[float] = ..., burst: _Optional[int] = ...) -> None: ...

class WebhookSecretInfo(_message.Message):
    __slots__ = ("id", "hint", "create_time", "expire_time")
    ID_FIELD_NUMBER: _ClassVar[int]
    HINT_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    hint: str
    create_time: _timestamp_pb2.Timestamp
    expire_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., hint: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
