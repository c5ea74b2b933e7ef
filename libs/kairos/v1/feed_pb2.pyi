import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from kairos.v1 import webhook_pb2 as _webhook_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WebhookRecord(_message.Message):
    __slots__ = ("webhook", "credentials", "revision")
    WEBHOOK_FIELD_NUMBER: _ClassVar[int]
    CREDENTIALS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    webhook: _webhook_pb2.Webhook
    credentials: _containers.RepeatedCompositeFieldContainer[WebhookCredential]
    revision: int
    def __init__(self, webhook: _Optional[_Union[_webhook_pb2.Webhook, _Mapping]] = ..., credentials: _Optional[_Iterable[_Union[WebhookCredential, _Mapping]]] = ..., revision: _Optional[int] = ...) -> None: ...

class WebhookCredential(_message.Message):
    __slots__ = ("id", "digest", "sealed_signing_key", "expire_time")
    ID_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SEALED_SIGNING_KEY_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    digest: bytes
    sealed_signing_key: bytes
    expire_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., digest: _Optional[bytes] = ..., sealed_signing_key: _Optional[bytes] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ApiKeyRecord(_message.Message):
    __slots__ = ("name", "digest", "expire_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    digest: bytes
    expire_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., digest: _Optional[bytes] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class WorkspaceRecord(_message.Message):
    __slots__ = ("name", "signing_keys")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIGNING_KEYS_FIELD_NUMBER: _ClassVar[int]
    name: str
    signing_keys: _containers.RepeatedCompositeFieldContainer[SigningKey]
    def __init__(self, name: _Optional[str] = ..., signing_keys: _Optional[_Iterable[_Union[SigningKey, _Mapping]]] = ...) -> None: ...

class SigningKey(_message.Message):
    __slots__ = ("id", "sealed_key", "expire_time")
    ID_FIELD_NUMBER: _ClassVar[int]
    SEALED_KEY_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    sealed_key: bytes
    expire_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., sealed_key: _Optional[bytes] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
