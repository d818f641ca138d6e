"""herald's Python client: publish `notification.requested`, read
`notification.status`. See clients/python/README.md."""

from .producer import DeliveryFailed, Producer
from .requests import AndroidOverrides, ApnsOverrides, Priority, Request, new_event_id, push, sms
from .status import StatusConsumer, StatusEvent

__all__ = [
    "AndroidOverrides", "ApnsOverrides", "DeliveryFailed", "Priority", "Producer", "Request", "StatusConsumer", "StatusEvent",
    "new_event_id", "push", "sms",
]
