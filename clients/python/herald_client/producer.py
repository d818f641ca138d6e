"""Publishing requests (and cancels) the way herald reads them."""

from __future__ import annotations

import json
import os
from typing import Dict, List, Optional

import confluent_kafka

from .requests import Request
from .wire import REQUEST_SCHEMA, REQUEST_SCHEMA_TEXT, frame


class DeliveryFailed(Exception):
    """The broker did not take some records; nothing is lost silently."""


class Producer:
    """Writes `notification.requested` records keyed by user id, so one
    user's requests share a partition (herald refuses a key that is not
    the user id).

    With `schema_registry_url`, records are written by confluent-kafka's
    `AvroSerializer` with the bundled schema, registered under
    `<topic>-value`; herald then needs the same `--schema-registry-url`.
    Without one, they carry schema id 0 and the bundled schema, which is
    what herald reads when it has no registry.

    Both default to the environment herald itself reads: `KAFKA_BROKERS`
    (else localhost:9092) and `SCHEMA_REGISTRY_URL` (else none).
    """

    def __init__(self, bootstrap_servers: Optional[str] = None, *, topic: str = "notification.requested",
                 cancellations_topic: str = "notification.cancellations", schema_registry_url: Optional[str] = None,
                 config: Optional[Dict[str, object]] = None):
        bootstrap_servers = bootstrap_servers or os.environ.get("KAFKA_BROKERS", "localhost:9092")
        schema_registry_url = schema_registry_url or os.environ.get("SCHEMA_REGISTRY_URL") or None
        # A library sends the broker no client metrics (KIP-714) unless asked to.
        conf = {"bootstrap.servers": bootstrap_servers, "enable.idempotence": True, "acks": "all", "linger.ms": 5,
                "enable.metrics.push": False}
        conf.update(config or {})
        self._producer = confluent_kafka.Producer(conf)
        self.topic = topic
        self.cancellations_topic = cancellations_topic
        self._failed: List[str] = []
        if schema_registry_url:
            from confluent_kafka.schema_registry import SchemaRegistryClient
            from confluent_kafka.schema_registry.avro import AvroSerializer
            from confluent_kafka.serialization import MessageField, SerializationContext

            serializer = AvroSerializer(SchemaRegistryClient({"url": schema_registry_url}), REQUEST_SCHEMA_TEXT,
                                        to_dict=lambda record, _ctx: record)
            context = SerializationContext(topic, MessageField.VALUE)
            self._serialize = lambda record: serializer(record, context)
        else:
            self._serialize = lambda record: frame(0, REQUEST_SCHEMA, record)

    def _delivered(self, error, message):
        if error is not None:
            self._failed.append(f"{message.topic()} key {message.key()!r}: {error}")

    def send(self, request: Request) -> None:
        """Queues one request; `flush` waits for the broker's acknowledgement."""
        value = self._serialize(request.to_record())
        self._produce(self.topic, request.user_id.encode(), value)

    def cancel(self, event_id: str, *, requested_by: str = "python", reason: Optional[str] = None) -> None:
        """Asks herald not to send `event_id` after all. It takes effect when
        the request next comes up for an attempt, and never un-sends."""
        value = json.dumps({"requested_by": requested_by, "reason": reason}).encode()
        self._produce(self.cancellations_topic, event_id.encode(), value)

    def withdraw_cancel(self, event_id: str) -> None:
        """A tombstone: the cancel no longer applies."""
        self._produce(self.cancellations_topic, event_id.encode(), None)

    def _produce(self, topic: str, key: bytes, value: Optional[bytes]) -> None:
        while True:
            try:
                self._producer.produce(topic, key=key, value=value, on_delivery=self._delivered)
                break
            except BufferError:
                # The local queue is full: let deliveries drain it.
                self._producer.poll(0.1)
        self._producer.poll(0)

    def flush(self, timeout: float = 30.0) -> None:
        """Waits until every queued record is acknowledged; raises
        `DeliveryFailed` for any the broker did not take."""
        left = self._producer.flush(timeout)
        failed, self._failed = self._failed, []
        if left:
            failed.append(f"{left} records not acknowledged within {timeout}s")
        if failed:
            raise DeliveryFailed("; ".join(failed))

    def __enter__(self) -> "Producer":
        return self

    def __exit__(self, *exc) -> None:
        self.flush()
