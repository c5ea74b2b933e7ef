import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TriggerState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRIGGER_STATE_UNSPECIFIED: _ClassVar[TriggerState]
    TRIGGER_STATE_DRAFT: _ClassVar[TriggerState]
    TRIGGER_STATE_ACTIVE: _ClassVar[TriggerState]
    TRIGGER_STATE_PAUSED: _ClassVar[TriggerState]

class SourceKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SOURCE_KIND_UNSPECIFIED: _ClassVar[SourceKind]
    SOURCE_KIND_SCHEDULE: _ClassVar[SourceKind]
    SOURCE_KIND_WEBHOOK: _ClassVar[SourceKind]
    SOURCE_KIND_EVENT: _ClassVar[SourceKind]

class DstGapRule(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DST_GAP_RULE_UNSPECIFIED: _ClassVar[DstGapRule]
    DST_GAP_RULE_SHIFT: _ClassVar[DstGapRule]
    DST_GAP_RULE_SKIP: _ClassVar[DstGapRule]

class DstOverlapRule(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DST_OVERLAP_RULE_UNSPECIFIED: _ClassVar[DstOverlapRule]
    DST_OVERLAP_RULE_FIRST: _ClassVar[DstOverlapRule]
    DST_OVERLAP_RULE_LAST: _ClassVar[DstOverlapRule]
    DST_OVERLAP_RULE_BOTH: _ClassVar[DstOverlapRule]

class AgentVersion(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AGENT_VERSION_UNSPECIFIED: _ClassVar[AgentVersion]
    AGENT_VERSION_STABLE: _ClassVar[AgentVersion]
    AGENT_VERSION_DRAFT: _ClassVar[AgentVersion]

class OverlapPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OVERLAP_POLICY_UNSPECIFIED: _ClassVar[OverlapPolicy]
    OVERLAP_POLICY_ALLOW: _ClassVar[OverlapPolicy]
    OVERLAP_POLICY_SKIP: _ClassVar[OverlapPolicy]
    OVERLAP_POLICY_BUFFER_ONE: _ClassVar[OverlapPolicy]
    OVERLAP_POLICY_CANCEL_OTHER: _ClassVar[OverlapPolicy]

class CatchupMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CATCHUP_MODE_UNSPECIFIED: _ClassVar[CatchupMode]
    CATCHUP_MODE_LATEST: _ClassVar[CatchupMode]
    CATCHUP_MODE_ALL: _ClassVar[CatchupMode]
    CATCHUP_MODE_NONE: _ClassVar[CatchupMode]
TRIGGER_STATE_UNSPECIFIED: TriggerState
TRIGGER_STATE_DRAFT: TriggerState
TRIGGER_STATE_ACTIVE: TriggerState
TRIGGER_STATE_PAUSED: TriggerState
SOURCE_KIND_UNSPECIFIED: SourceKind
SOURCE_KIND_SCHEDULE: SourceKind
SOURCE_KIND_WEBHOOK: SourceKind
SOURCE_KIND_EVENT: SourceKind
DST_GAP_RULE_UNSPECIFIED: DstGapRule
DST_GAP_RULE_SHIFT: DstGapRule
DST_GAP_RULE_SKIP: DstGapRule
DST_OVERLAP_RULE_UNSPECIFIED: DstOverlapRule
DST_OVERLAP_RULE_FIRST: DstOverlapRule
DST_OVERLAP_RULE_LAST: DstOverlapRule
DST_OVERLAP_RULE_BOTH: DstOverlapRule
AGENT_VERSION_UNSPECIFIED: AgentVersion
AGENT_VERSION_STABLE: AgentVersion
AGENT_VERSION_DRAFT: AgentVersion
OVERLAP_POLICY_UNSPECIFIED: OverlapPolicy
OVERLAP_POLICY_ALLOW: OverlapPolicy
OVERLAP_POLICY_SKIP: OverlapPolicy
OVERLAP_POLICY_BUFFER_ONE: OverlapPolicy
OVERLAP_POLICY_CANCEL_OTHER: OverlapPolicy
CATCHUP_MODE_UNSPECIFIED: CatchupMode
CATCHUP_MODE_LATEST: CatchupMode
CATCHUP_MODE_ALL: CatchupMode
CATCHUP_MODE_NONE: CatchupMode

class Trigger(_message.Message):
    __slots__ = ("name", "display_name", "description", "source", "action", "policies", "state", "state_note", "info", "etag", "revision", "create_time", "update_time", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STATE_NOTE_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    name: str
    display_name: str
    description: str
    source: TriggerSource
    action: Action
    policies: Policies
    state: TriggerState
    state_note: str
    info: TriggerInfo
    etag: str
    revision: int
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    labels: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., display_name: _Optional[str] = ..., description: _Optional[str] = ..., source: _Optional[_Union[TriggerSource, _Mapping]] = ..., action: _Optional[_Union[Action, _Mapping]] = ..., policies: _Optional[_Union[Policies, _Mapping]] = ..., state: _Optional[_Union[TriggerState, str]] = ..., state_note: _Optional[str] = ..., info: _Optional[_Union[TriggerInfo, _Mapping]] = ..., etag: _Optional[str] = ..., revision: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class TriggerSource(_message.Message):
    __slots__ = ("schedule", "webhook", "event")
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    schedule: ScheduleSource
    webhook: WebhookSource
    event: EventSource
    def __init__(self, schedule: _Optional[_Union[ScheduleSource, _Mapping]] = ..., webhook: _Optional[_Union[WebhookSource, _Mapping]] = ..., event: _Optional[_Union[EventSource, _Mapping]] = ...) -> None: ...

class ScheduleSource(_message.Message):
    __slots__ = ("cron", "interval", "one_shot", "timezone", "jitter", "dst_gap_rule", "dst_overlap_rule")
    CRON_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_FIELD_NUMBER: _ClassVar[int]
    ONE_SHOT_FIELD_NUMBER: _ClassVar[int]
    TIMEZONE_FIELD_NUMBER: _ClassVar[int]
    JITTER_FIELD_NUMBER: _ClassVar[int]
    DST_GAP_RULE_FIELD_NUMBER: _ClassVar[int]
    DST_OVERLAP_RULE_FIELD_NUMBER: _ClassVar[int]
    cron: CronSpec
    interval: IntervalSpec
    one_shot: OneShotSpec
    timezone: str
    jitter: _duration_pb2.Duration
    dst_gap_rule: DstGapRule
    dst_overlap_rule: DstOverlapRule
    def __init__(self, cron: _Optional[_Union[CronSpec, _Mapping]] = ..., interval: _Optional[_Union[IntervalSpec, _Mapping]] = ..., one_shot: _Optional[_Union[OneShotSpec, _Mapping]] = ..., timezone: _Optional[str] = ..., jitter: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., dst_gap_rule: _Optional[_Union[DstGapRule, str]] = ..., dst_overlap_rule: _Optional[_Union[DstOverlapRule, str]] = ...) -> None: ...

class CronSpec(_message.Message):
    __slots__ = ("expression", "canonical_expression", "description")
    EXPRESSION_FIELD_NUMBER: _ClassVar[int]
    CANONICAL_EXPRESSION_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    expression: str
    canonical_expression: str
    description: str
    def __init__(self, expression: _Optional[str] = ..., canonical_expression: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class IntervalSpec(_message.Message):
    __slots__ = ("every", "start_time", "end_time", "start_now")
    EVERY_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    START_NOW_FIELD_NUMBER: _ClassVar[int]
    every: _duration_pb2.Duration
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    start_now: bool
    def __init__(self, every: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_now: _Optional[bool] = ...) -> None: ...

class OneShotSpec(_message.Message):
    __slots__ = ("fire_time",)
    FIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    fire_time: _timestamp_pb2.Timestamp
    def __init__(self, fire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class WebhookSource(_message.Message):
    __slots__ = ("webhooks",)
    WEBHOOKS_FIELD_NUMBER: _ClassVar[int]
    webhooks: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, webhooks: _Optional[_Iterable[str]] = ...) -> None: ...

class EventSource(_message.Message):
    __slots__ = ("event_type", "filter")
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    event_type: str
    filter: _containers.RepeatedCompositeFieldContainer[FieldCondition]
    def __init__(self, event_type: _Optional[str] = ..., filter: _Optional[_Iterable[_Union[FieldCondition, _Mapping]]] = ...) -> None: ...

class FieldCondition(_message.Message):
    __slots__ = ("path", "equals", "exists")
    PATH_FIELD_NUMBER: _ClassVar[int]
    EQUALS_FIELD_NUMBER: _ClassVar[int]
    IN_FIELD_NUMBER: _ClassVar[int]
    EXISTS_FIELD_NUMBER: _ClassVar[int]
    path: str
    equals: _struct_pb2.Value
    exists: bool
    def __init__(self, path: _Optional[str] = ..., equals: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., exists: _Optional[bool] = ..., **kwargs) -> None: ...

class Action(_message.Message):
    __slots__ = ("agent", "agent_version", "owner", "prompt", "input_template", "runner")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    INPUT_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    RUNNER_FIELD_NUMBER: _ClassVar[int]
    agent: str
    agent_version: AgentVersion
    owner: str
    prompt: str
    input_template: _struct_pb2.Struct
    runner: Runner
    def __init__(self, agent: _Optional[str] = ..., agent_version: _Optional[_Union[AgentVersion, str]] = ..., owner: _Optional[str] = ..., prompt: _Optional[str] = ..., input_template: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., runner: _Optional[_Union[Runner, _Mapping]] = ...) -> None: ...

class Runner(_message.Message):
    __slots__ = ("http", "nats", "python")
    HTTP_FIELD_NUMBER: _ClassVar[int]
    NATS_FIELD_NUMBER: _ClassVar[int]
    PYTHON_FIELD_NUMBER: _ClassVar[int]
    http: HttpRunner
    nats: NatsRunner
    python: PythonRunner
    def __init__(self, http: _Optional[_Union[HttpRunner, _Mapping]] = ..., nats: _Optional[_Union[NatsRunner, _Mapping]] = ..., python: _Optional[_Union[PythonRunner, _Mapping]] = ...) -> None: ...

class HttpRunner(_message.Message):
    __slots__ = ("url",)
    URL_FIELD_NUMBER: _ClassVar[int]
    url: str
    def __init__(self, url: _Optional[str] = ...) -> None: ...

class NatsRunner(_message.Message):
    __slots__ = ("subject",)
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    subject: str
    def __init__(self, subject: _Optional[str] = ...) -> None: ...

class PythonRunner(_message.Message):
    __slots__ = ("entry_point",)
    ENTRY_POINT_FIELD_NUMBER: _ClassVar[int]
    entry_point: str
    def __init__(self, entry_point: _Optional[str] = ...) -> None: ...

class Policies(_message.Message):
    __slots__ = ("overlap", "catchup", "retry", "attempt_deadline", "max_runs_per_day", "pause_after_failures", "notify_url")
    OVERLAP_FIELD_NUMBER: _ClassVar[int]
    CATCHUP_FIELD_NUMBER: _ClassVar[int]
    RETRY_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_DEADLINE_FIELD_NUMBER: _ClassVar[int]
    MAX_RUNS_PER_DAY_FIELD_NUMBER: _ClassVar[int]
    PAUSE_AFTER_FAILURES_FIELD_NUMBER: _ClassVar[int]
    NOTIFY_URL_FIELD_NUMBER: _ClassVar[int]
    overlap: OverlapPolicy
    catchup: CatchupPolicy
    retry: RetryPolicy
    attempt_deadline: _duration_pb2.Duration
    max_runs_per_day: int
    pause_after_failures: int
    notify_url: str
    def __init__(self, overlap: _Optional[_Union[OverlapPolicy, str]] = ..., catchup: _Optional[_Union[CatchupPolicy, _Mapping]] = ..., retry: _Optional[_Union[RetryPolicy, _Mapping]] = ..., attempt_deadline: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_runs_per_day: _Optional[int] = ..., pause_after_failures: _Optional[int] = ..., notify_url: _Optional[str] = ...) -> None: ...

class CatchupPolicy(_message.Message):
    __slots__ = ("window", "mode", "max_fires")
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    MAX_FIRES_FIELD_NUMBER: _ClassVar[int]
    window: _duration_pb2.Duration
    mode: CatchupMode
    max_fires: int
    def __init__(self, window: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., mode: _Optional[_Union[CatchupMode, str]] = ..., max_fires: _Optional[int] = ...) -> None: ...

class RetryPolicy(_message.Message):
    __slots__ = ("max_attempts", "initial_backoff", "max_backoff", "backoff_multiplier")
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    INITIAL_BACKOFF_FIELD_NUMBER: _ClassVar[int]
    MAX_BACKOFF_FIELD_NUMBER: _ClassVar[int]
    BACKOFF_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    max_attempts: int
    initial_backoff: _duration_pb2.Duration
    max_backoff: _duration_pb2.Duration
    backoff_multiplier: float
    def __init__(self, max_attempts: _Optional[int] = ..., initial_backoff: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_backoff: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., backoff_multiplier: _Optional[float] = ...) -> None: ...

class TriggerInfo(_message.Message):
    __slots__ = ("next_fire_time", "last_fire_time", "fire_count", "skipped_fire_count", "consecutive_failures")
    NEXT_FIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    LAST_FIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    FIRE_COUNT_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIRE_COUNT_FIELD_NUMBER: _ClassVar[int]
    CONSECUTIVE_FAILURES_FIELD_NUMBER: _ClassVar[int]
    next_fire_time: _timestamp_pb2.Timestamp
    last_fire_time: _timestamp_pb2.Timestamp
    fire_count: int
    skipped_fire_count: int
    consecutive_failures: int
    def __init__(self, next_fire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_fire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., fire_count: _Optional[int] = ..., skipped_fire_count: _Optional[int] = ..., consecutive_failures: _Optional[int] = ...) -> None: ...
