"""Typed constructors for `notification.requested`, as the bundled schema
(schemas/notification.requested.avsc) has it."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import Dict, Mapping, Optional, Union
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

# fullmatch, and [0-9] not \d: "$" lets a trailing newline through, and \d
# takes any script's digits.
E164 = re.compile(r"\+[1-9][0-9]{6,14}")
# herald's own check (templates.rs, is_locale): BCP 47 in shape, at most 35 characters.
LOCALE = re.compile(r"[A-Za-z][A-Za-z0-9]{0,7}(?:[-_][A-Za-z0-9]{1,8})*")
MAX_TTL_SECONDS = 28 * 24 * 3600  # FCM's limit


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

    def __post_init__(self):
        if self.priority is not None and self.priority not in ("NORMAL", "HIGH"):
            raise ValueError(f"android priority {self.priority!r} is not NORMAL or HIGH")
        if self.ttl_seconds is not None and not (_is_int(self.ttl_seconds) and 0 <= self.ttl_seconds <= MAX_TTL_SECONDS):
            raise ValueError(f"android ttl_seconds {self.ttl_seconds!r} is not 0 to {MAX_TTL_SECONDS} (28 days)")
        for name in ("collapse_key", "channel_id", "sound", "click_action"):
            _optional_text(f"android {name}", getattr(self, name))


@dataclass(frozen=True)
class ApnsOverrides:
    headers: Mapping[str, str] = field(default_factory=dict)
    sound: Optional[str] = None
    badge: Optional[int] = None
    category: Optional[str] = None
    thread_id: Optional[str] = None
    content_available: bool = False

    def __post_init__(self):
        _strings("apns headers", self.headers)
        if self.badge is not None and not (_is_int(self.badge) and 0 <= self.badge < 2**31):
            raise ValueError(f"apns badge {self.badge!r} is not a count, 0 or more")
        for name in ("sound", "category", "thread_id"):
            _optional_text(f"apns {name}", getattr(self, name))
        if not isinstance(self.content_available, bool):
            raise ValueError(f"apns content_available {self.content_available!r} is not a bool")


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

    def __post_init__(self):
        # Checked here, so a Request built directly is held to the same rules
        # as sms() and push(): what herald would call INVALID fails now.
        _id("event_id", self.event_id)
        _id("user_id", self.user_id)
        if self.channel == "SMS":
            if not (isinstance(self.recipient, str) and E164.fullmatch(self.recipient)):
                raise ValueError(f"{self.recipient!r} is not an E.164 number such as +14155550100")
            if not _text("body", self.body).strip() and self.template_id is None:
                raise ValueError("an SMS needs a body or a template_id")
        elif self.channel == "PUSH":
            if not isinstance(self.recipient, str) or not self.recipient.strip():
                raise ValueError("a push needs the device's FCM registration token")
            if any(c.isspace() or not c.isprintable() for c in self.recipient):
                raise ValueError("an FCM registration token has no spaces or control characters")
            if not (_text("body", self.body).strip() or (_optional_text("title", self.title) or "").strip()) and self.template_id is None:
                raise ValueError("a push needs a title, a body or a template_id")
        else:
            raise ValueError(f"channel {self.channel!r} is not SMS or PUSH")
        if self.template_id is not None:
            _id("template_id", self.template_id)
        _strings("template_vars", self.template_vars)
        _strings("data", self.data)
        if self.android is not None and not isinstance(self.android, AndroidOverrides):
            raise ValueError("android must be an AndroidOverrides")
        if self.apns is not None and not isinstance(self.apns, ApnsOverrides):
            raise ValueError("apns must be an ApnsOverrides")
        _aware("scheduled_at", self.scheduled_at)
        _aware("created_at", self.created_at)
        if self.time_zone is not None:
            _time_zone(self.time_zone)
        if self.locale is not None and not (isinstance(self.locale, str) and len(self.locale) <= 35 and LOCALE.fullmatch(self.locale)):
            raise ValueError(f"locale {self.locale!r} is not a BCP 47 tag such as pt-BR")
        if self.priority is not None:
            # Priority is a str enum, so this takes Priority.URGENT and "URGENT", and not "urgent".
            if self.priority not in (Priority.NORMAL, Priority.URGENT):
                raise ValueError(f"priority {self.priority!r} is not Priority.NORMAL or Priority.URGENT (or \"NORMAL\", \"URGENT\")")
            object.__setattr__(self, "priority", Priority(self.priority))

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
            "scheduled_at": self.scheduled_at,
            "created_at": self.created_at,
            "time_zone": self.time_zone,
            "locale": self.locale,
            "priority": self.priority.value if self.priority else "UNKNOWN",
            "template_id": self.template_id,
        }


    def to_json(self) -> Dict:
        """The request as `POST /v1/notifications` takes it."""
        content: Dict[str, object] = {"body": self.body}
        for name in ("title", "template_id"):
            if getattr(self, name) is not None:
                content[name] = getattr(self, name)
        if self.template_vars:
            content["template_vars"] = dict(self.template_vars)
        if self.data:
            content["data"] = dict(self.data)
        if self.android is not None:
            content["android"] = {k: v for k, v in vars(self.android).items() if v is not None}
        if self.apns is not None:
            content["apns"] = {**{k: v for k, v in vars(self.apns).items() if v is not None}, "headers": dict(self.apns.headers)}
        out: Dict[str, object] = {"event_id": self.event_id, "user_id": self.user_id, "channel": self.channel,
                                  "recipient": self.recipient, "content": content}
        if self.scheduled_at is not None:
            out["scheduled_at"] = self.scheduled_at.isoformat()
        for name in ("time_zone", "locale"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.priority is not None:
            out["priority"] = self.priority.value
        return out


def _is_int(n) -> bool:
    return isinstance(n, int) and not isinstance(n, bool)


def _text(name: str, value) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name} {value!r} is not a string")
    return value


def _optional_text(name: str, value) -> Optional[str]:
    return None if value is None else _text(name, value)


def _id(name: str, value) -> None:
    # Ids end up in record keys, logs and other systems' lookups, where a
    # stray newline or an empty string is a bug, never an intent.
    if not _text(name, value).strip():
        raise ValueError(f"{name} is empty")
    if not value.isprintable():
        raise ValueError(f"{name} {value!r} has control characters")


def _strings(name: str, mapping) -> None:
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in dict(mapping).items()):
        raise ValueError(f"{name} must map strings to strings: {dict(mapping)!r}")


def _aware(name: str, t) -> None:
    if t is None:
        return
    if not isinstance(t, datetime):
        raise ValueError(f"{name} {t!r} is not a datetime")
    if t.utcoffset() is None:
        raise ValueError(f"{name} {t!r} has no time zone: give an aware datetime (UTC)")


def _time_zone(name) -> None:
    try:
        ZoneInfo(_text("time_zone", name))
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"time_zone {name!r} is not an IANA time zone name such as Europe/Lisbon") from None


def new_event_id() -> str:
    return str(uuid.uuid4())


def sms(user_id: str, to: str, body: str = "", *, event_id: Optional[str] = None, scheduled_at: Optional[datetime] = None,
        template_id: Optional[str] = None, template_vars: Optional[Mapping[str, str]] = None, time_zone: Optional[str] = None,
        locale: Optional[str] = None, priority: Union[Priority, str, None] = None) -> Request:
    """An SMS to `to`, an E.164 number (`+14155550100`). Either `body` or
    `template_id` (with `template_vars`) says what it says. Raises
    ValueError for what herald would call INVALID (see `Request`)."""
    return Request(event_id=new_event_id() if event_id is None else event_id, user_id=user_id, channel="SMS", recipient=to, body=body,
                   template_id=template_id, template_vars=dict(template_vars or {}), scheduled_at=scheduled_at,
                   time_zone=time_zone, locale=locale, priority=priority)


def push(user_id: str, token: str, title: Optional[str] = None, body: str = "", *, event_id: Optional[str] = None,
         data: Optional[Mapping[str, str]] = None, android: Optional[AndroidOverrides] = None, apns: Optional[ApnsOverrides] = None,
         scheduled_at: Optional[datetime] = None, template_id: Optional[str] = None, template_vars: Optional[Mapping[str, str]] = None,
         time_zone: Optional[str] = None, locale: Optional[str] = None, priority: Union[Priority, str, None] = None) -> Request:
    """A push to an FCM registration token. Raises ValueError for what
    herald would call INVALID (see `Request`)."""
    return Request(event_id=new_event_id() if event_id is None else event_id, user_id=user_id, channel="PUSH", recipient=token, title=title, body=body,
                   data=dict(data or {}), android=android, apns=apns, scheduled_at=scheduled_at, template_id=template_id,
                   template_vars=dict(template_vars or {}), time_zone=time_zone, locale=locale, priority=priority)
