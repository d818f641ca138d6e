"""herald's Python client: publish `notification.requested` (through Kafka,
or over HTTP to `herald api`), read `notification.status`. See
clients/python/README.md."""

from .http import Accepted, BatchItem, HttpSender, Refused, Unavailable
from .producer import DeliveryFailed, Producer
from .requests import AndroidOverrides, ApnsOverrides, Priority, Request, new_event_id, push, sms
from .status import StatusConsumer, StatusEvent

__all__ = [
    "Accepted", "AndroidOverrides", "ApnsOverrides", "BatchItem", "DeliveryFailed", "HttpSender", "Refused", "Unavailable", "Priority", "Producer", "Request", "StatusConsumer", "StatusEvent",
    "new_event_id", "push", "sms",
]
