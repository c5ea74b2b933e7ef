"""The Python client for the whole suite: one object with a typed stub per service and an API key."""

from kairos.client.builders import equals, event_trigger, exists, one_of, schedule_trigger, webhook_trigger
from kairos.client.client import KairosClient, RpcErrorDetails, error_details

__all__ = [
    "KairosClient",
    "RpcErrorDetails",
    "equals",
    "error_details",
    "event_trigger",
    "exists",
    "one_of",
    "schedule_trigger",
    "webhook_trigger",
]
