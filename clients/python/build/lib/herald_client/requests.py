"""Typed constructors for `notification.requested`, as the bundled schema
(schemas/notification.requested.avsc) has it."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import Dict, Mapping, Optional

E164 = re.compile(r"^\+[1-9]\d{6,14}$")


class Priority(str, Enum):
    """URGENT is sent in quiet hours; NORMAL waits until they end."""

    NORMAL = "NORMAL"
    URGENT = "URGENT"


@dataclass(frozen=True)
class AndroidOverrides:
    priority: Optional[str] = None  # "NORMAL" or "HIGH"
    ttl_seconds: Optional[int] = None
    collapse_key: Optional[str] = None
    channel_id: Optional[str] = None
    sound: Optional[str] = None
    click_action: Optional[str] = None


@dataclass(frozen=True)
class ApnsOverrides:
    headers: Mapping[str, str] = field(default_factory=dict)
    sound: Optional[str] = None
    badge: Optional[int] = None
    category: Optional[str] = None
    thread_id: Optional[str] = None
    content_available: bool = False


@dataclass(frozen=True)
class Request:
    """One notification to one user on one channel. `event_id` is herald's
    idempotency key: it is counted once against the rate limit, a copy that
    comes while another is being sent is dropped, and one that comes again
    after a crash is reported SENT without a second call."""

    event_id: str
    user_id: str
    channel: str  # "SMS" or "PUSH"
    recipient: str
    body: str = ""
    title: Optional[str] = None
    template_id: Optional[str] = None
    template_vars: Mapping[str, str] = field(default_factory=dict)
    data: Mapping[str, str] = field(default_factory=dict)
    android: Optional[AndroidOverrides] = None
    apns: Optional[ApnsOverrides] = None
    scheduled_at: Optional[datetime] = None
    created_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    time_zone: Optional[str] = None
    locale: Optional[str] = None
    priority: Optional[Priority] = None

    def to_record(self) -> Dict:
        """The Avro record, as fastavro writes it."""
        return {
            "event_id": self.event_id,
            "user_id": self.user_id,
            "channel": self.channel,
            "recipient": self.recipient,
            "content": {
                "title": self.title,
                "body": self.body,
                "template_vars": dict(self.template_vars),
                "data": dict(self.data),
                "android": None if self.android is None else vars(self.android),
                "apns": None if self.apns is None else {**vars(self.apns), "headers": dict(self.apns.headers)},
            },
            "scheduled_at": _aware(self.scheduled_at),
            "created_at": _aware(self.created_at),
            "time_zone": self.time_zone,
            "locale": self.locale,
            "priority": Priority(self.priority).value if self.priority else "UNKNOWN",
            "template_id": self.template_id,
        }


def _aware(t: Optional[datetime]) -> Optional[datetime]:
    if t is not None and t.tzinfo is None:
        raise ValueError(f"{t!r} has no time zone: give an aware datetime (UTC)")
    return t


def new_event_id() -> str:
    return str(uuid.uuid4())


def sms(user_id: str, to: str, body: str = "", *, event_id: Optional[str] = None, scheduled_at: Optional[datetime] = None,
        template_id: Optional[str] = None, template_vars: Optional[Mapping[str, str]] = None, time_zone: Optional[str] = None,
        locale: Optional[str] = None, priority: Optional[Priority] = None) -> Request:
    """An SMS to `to`, an E.164 number (`+14155550100`). Either `body` or
    `template_id` (with `template_vars`) says what it says."""
    if not E164.match(to):
        raise ValueError(f"{to!r} is not an E.164 number such as +14155550100")
    if not body.strip() and template_id is None:
        raise ValueError("an SMS needs a body or a template_id")
    return Request(event_id=event_id or new_event_id(), user_id=user_id, channel="SMS", recipient=to, body=body,
                   template_id=template_id, template_vars=dict(template_vars or {}), scheduled_at=scheduled_at,
                   time_zone=time_zone, locale=locale, priority=priority)


def push(user_id: str, token: str, title: Optional[str] = None, body: str = "", *, event_id: Optional[str] = None,
         data: Optional[Mapping[str, str]] = None, android: Optional[AndroidOverrides] = None, apns: Optional[ApnsOverrides] = None,
         scheduled_at: Optional[datetime] = None, template_id: Optional[str] = None, template_vars: Optional[Mapping[str, str]] = None,
         time_zone: Optional[str] = None, locale: Optional[str] = None, priority: Optional[Priority] = None) -> Request:
    """A push to an FCM registration token."""
    if not token.strip():
        raise ValueError("a push needs the device's FCM registration token")
    if not (body.strip() or (title or "").strip()) and template_id is None:
        raise ValueError("a push needs a title, a body or a template_id")
    return Request(event_id=event_id or new_event_id(), user_id=user_id, channel="PUSH", recipient=token, title=title, body=body,
                   data=dict(data or {}), android=android, apns=apns, scheduled_at=scheduled_at, template_id=template_id,
                   template_vars=dict(template_vars or {}), time_zone=time_zone, locale=locale, priority=priority)
