"""Reading `notification.status`: typed events, once each."""

from __future__ import annotations

import json
import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Dict, Iterator, List, Optional, Tuple

import confluent_kafka
import fastavro

from .wire import STATUS_SCHEMA, decode

log = logging.getLogger(__name__)

# Where a status stands in a notification's life (README, "At least once").
PENDING = {"SCHEDULED", "DEFERRED", "RETRY_SCHEDULED"}
RECEIPTS = {"DELIVERED", "UNDELIVERED"}
TERMINAL = {"SENT", "FAILED", "DEAD_LETTERED", "INVALID", "RATE_LIMITED", "SUPPRESSED", "CANCELLED", "DELIVERED", "UNDELIVERED"}


def _stage(status: str) -> int:
    return 0 if status in PENDING else 2 if status in RECEIPTS else 1


@dataclass(frozen=True)
class ProviderTried:
    provider: str
    error_code: str


@dataclass(frozen=True)
class StatusEvent:
    event_id: str
    user_id: str
    channel: str
    status: str
    attempt: int
    occurred_at: datetime
    provider: Optional[str] = None
    provider_message_id: Optional[str] = None
    error_code: Optional[str] = None
    error_class: Optional[str] = None
    error_message: Optional[str] = None
    next_attempt_at: Optional[datetime] = None
    recipient: Optional[str] = None
    created_at: Optional[datetime] = None
    scheduled_at: Optional[datetime] = None
    sms_segments: Optional[int] = None
    sms_encoding: Optional[str] = None
    origin: Optional[Tuple[str, int, int]] = None
    providers_tried: Tuple[ProviderTried, ...] = field(default_factory=tuple)
    locale: Optional[str] = None

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL

    def is_duplicate_of(self, other: "StatusEvent") -> bool:
        """The same outcome read twice (at least once): same event id,
        attempt and status. Never event id and attempt alone: SCHEDULED and
        the RATE_LIMITED after it share attempt 0."""
        return (self.event_id, self.attempt, self.status) == (other.event_id, other.attempt, other.status)

    def supersedes(self, other: "StatusEvent") -> bool:
        """Whether this replaces `other` as the notification's current
        state: the higher attempt; then a decision over a pending status,
        and a carrier receipt over the decision; then the later time."""
        return (self.attempt, _stage(self.status), self.occurred_at) > (other.attempt, _stage(other.status), other.occurred_at)

    @classmethod
    def from_record(cls, r: Dict) -> "StatusEvent":
        origin = r.get("origin")
        return cls(
            event_id=r["event_id"], user_id=r["user_id"], channel=r["channel"], status=r["status"], attempt=r["attempt"],
            occurred_at=r["occurred_at"], provider=r.get("provider"), provider_message_id=r.get("provider_message_id"),
            error_code=r.get("error_code"), error_class=r.get("error_class"), error_message=r.get("error_message"),
            next_attempt_at=r.get("next_attempt_at"), recipient=r.get("recipient"), created_at=r.get("created_at"),
            scheduled_at=r.get("scheduled_at"), sms_segments=r.get("sms_segments"), sms_encoding=r.get("sms_encoding"),
            origin=None if origin is None else (origin["topic"], origin["partition"], origin["offset"]),
            providers_tried=tuple(ProviderTried(t["provider"], t["error_code"]) for t in r.get("providers_tried") or ()),
            locale=r.get("locale"),
        )


class StatusConsumer:
    """Yields each status once, in the order the topic gives them.

    Duplicates (an outcome redelivered after a crash) are dropped by the
    rule above, remembering the last `remember` outcomes, and `current`
    holds the current state, by `supersedes`, of the last `remember_current`
    notifications a status came for, whatever order their statuses arrive in.

    An event's offset is committed only after the application has handled
    it: it is stored when the next event is asked for (`poll`, or the next
    turn of a `for` loop), or when a `with` block ends without an exception,
    and stored offsets are committed every few seconds and by `close`. So a
    crash, or a `close` while an event is in hand, delivers that event again
    to the group; after a restart such statuses come again, and a process
    that lives on deduplicates them by the rule above.

    The topic need not exist yet: Kafka's errors short of fatal ones (such
    as an unknown topic, while herald has not created it) are logged and
    polling goes on. `config` adds to, or overrides, the consumer settings
    below (librdkafka's names); offsets are always stored by this class.

    With `schema_registry_url`, each record's writer schema is fetched by
    id and resolved against the bundled one; without, records are read
    with the bundled schema, as herald writes them without a registry.
    """

    CONFIG = {
        "auto.offset.reset": "earliest",
        # librdkafka's 45 s session made the first status take 23 s to come,
        # waiting on the group join; 6 s makes it 3 s.
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 1000,
        "max.poll.interval.ms": 300000,
        # A consumer started before herald has created the topic finds it at
        # the next refresh: librdkafka's 5 minutes by default, 10 s here.
        "topic.metadata.refresh.interval.ms": 10000,
        "enable.auto.commit": True,
        # A library sends the broker no client metrics (KIP-714) unless asked to.
        "enable.metrics.push": False,
    }

    def __init__(self, bootstrap_servers: Optional[str] = None, group_id: Optional[str] = None, *, topic: str = "notification.status",
                 schema_registry_url: Optional[str] = None, config: Optional[Dict[str, object]] = None, remember: int = 100_000,
                 remember_current: int = 100_000):
        if not group_id:
            raise TypeError("StatusConsumer needs a group_id: the consumer group whose commits say what was handled")
        # The environment herald reads, as for `Producer`.
        bootstrap_servers = bootstrap_servers or os.environ.get("KAFKA_BROKERS", "localhost:9092")
        schema_registry_url = schema_registry_url or os.environ.get("SCHEMA_REGISTRY_URL") or None
        conf = {**self.CONFIG, "bootstrap.servers": bootstrap_servers, "group.id": group_id, **(config or {}),
                "enable.auto.offset.store": False}
        self._consumer = confluent_kafka.Consumer(conf)
        self._consumer.subscribe([topic])
        self._seen: "OrderedDict[Tuple[str, int, str], None]" = OrderedDict()
        self._remember = remember
        self.current: "OrderedDict[str, StatusEvent]" = OrderedDict()
        self._remember_current = remember_current
        self._in_hand = None  # the message of the event last returned, not yet handled
        self.duplicates = 0
        self._writer_schema_for = None
        if schema_registry_url:
            from confluent_kafka.schema_registry import SchemaRegistryClient

            registry, cache = SchemaRegistryClient({"url": schema_registry_url}), {}

            def writer_schema_for(schema_id: int):
                if schema_id not in cache:
                    # Id 0 is herald's own, written without a registry.
                    cache[schema_id] = STATUS_SCHEMA if schema_id == 0 else fastavro.parse_schema(json.loads(registry.get_schema(schema_id).schema_str))
                return cache[schema_id]

            self._writer_schema_for = writer_schema_for

    def _store(self, message) -> None:
        try:
            self._consumer.store_offsets(message=message)
        except confluent_kafka.KafkaException as e:
            # The partition went to another consumer in a rebalance, which reads it again from the last commit.
            log.info("offset of %s [%d] @ %d not stored: %s", message.topic(), message.partition(), message.offset(), e)

    def _handled(self) -> None:
        if self._in_hand is not None:
            self._store(self._in_hand)
            self._in_hand = None

    def poll(self, timeout: float = 1.0) -> Optional[StatusEvent]:
        """The next status not seen before, or None if none came within
        `timeout`. Asking for it says the previous one has been handled."""
        self._handled()
        deadline = time.monotonic() + timeout
        while True:
            message = self._consumer.poll(max(0.0, deadline - time.monotonic()))
            if message is None:
                return None
            error = message.error()
            if error is not None:
                if error.fatal():
                    raise confluent_kafka.KafkaException(error)
                # librdkafka retries these itself (an unknown topic is looked up again).
                log.warning("%s", error)
                continue
            event = StatusEvent.from_record(decode(message.value(), STATUS_SCHEMA, self._writer_schema_for))
            key = (event.event_id, event.attempt, event.status)
            if key not in self._seen:
                break
            self.duplicates += 1
            self._store(message)
        self._seen[key] = None
        if len(self._seen) > self._remember:
            self._seen.popitem(last=False)
        known = self.current.get(event.event_id)
        if known is None or event.supersedes(known):
            self.current[event.event_id] = event
        self.current.move_to_end(event.event_id)
        if len(self.current) > self._remember_current:
            self.current.popitem(last=False)
        self._in_hand = message
        return event

    def __iter__(self) -> Iterator[StatusEvent]:
        while True:
            event = self.poll()
            if event is not None:
                yield event

    def until_terminal(self, event_ids: List[str], timeout: float = 60.0) -> Dict[str, StatusEvent]:
        """Reads until each of `event_ids` has a terminal current status."""
        deadline = time.monotonic() + timeout
        while not all(e in self.current and self.current[e].is_terminal for e in event_ids):
            if time.monotonic() > deadline:
                missing = [e for e in event_ids if not (e in self.current and self.current[e].is_terminal)]
                raise TimeoutError(f"no terminal status within {timeout}s for {missing}; current: {dict(self.current)}")
            self.poll(0.5)
        return {e: self.current[e] for e in event_ids}

    def close(self) -> None:
        """Commits the offsets of handled events and leaves the group. The
        event last returned is not counted handled: the group gets it again."""
        try:
            self._consumer.commit(asynchronous=False)
        except confluent_kafka.KafkaException as e:
            if e.args[0].code() != confluent_kafka.KafkaError._NO_OFFSET:
                log.warning("committing on close: %s", e)
        self._consumer.close()

    def __enter__(self) -> "StatusConsumer":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        # Leaving the block normally means the last event was handled; by an exception, that it may not have been.
        if exc_type is None:
            self._handled()
        self.close()
