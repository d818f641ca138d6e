"""The client without a broker: constructors, and StatusConsumer against a
stand-in for confluent-kafka's consumer."""

import logging
from datetime import datetime, timedelta, timezone

import confluent_kafka
import pytest

import herald_client.producer
from herald_client import AndroidOverrides, ApnsOverrides, Priority, Producer, Request, StatusConsumer, push, sms

from conftest import status_value

NUMBER = "+14155550100"
TOKEN = "dQw4w9WgXcQ:APA91bH-registration-token"
NAIVE = datetime(2030, 1, 1, 15, 0)


@pytest.mark.parametrize("make, complaint", [
    (lambda: sms("u1", NUMBER + "\n", "hi"), "E.164"),
    (lambda: sms("u1", " " + NUMBER, "hi"), "E.164"),
    (lambda: sms("u1", "+1415555\u0660100", "hi"), "E.164"),  # an Arabic-Indic zero
    (lambda: sms("u1", NUMBER, "hi", scheduled_at=NAIVE), "no time zone"),
    (lambda: push("u1", TOKEN, "hi", scheduled_at=NAIVE), "no time zone"),
    (lambda: sms("u1", NUMBER, "hi", scheduled_at="2030-01-01T15:00:00Z"), "not a datetime"),
    (lambda: Request("e1", "u1", "SMS", NUMBER, "hi", created_at=NAIVE), "no time zone"),
    (lambda: sms("u1", NUMBER, "hi", priority="urgent"), "priority 'urgent'"),
    (lambda: push("u1", TOKEN, "hi", priority="HIGH"), "priority 'HIGH'"),
    (lambda: sms("u1", NUMBER, "hi", priority="UNKNOWN"), "priority"),
    (lambda: sms("u1", NUMBER, "hi", priority=1), "priority"),
    (lambda: sms("u1", NUMBER, "hi", time_zone="Mars/Olympus_Mons"), "IANA"),
    (lambda: push("u1", TOKEN, "hi", time_zone="Europe/Lisbon\n"), "IANA"),
    (lambda: sms("u1", NUMBER, "hi", time_zone=""), "IANA"),
    (lambda: sms("u1", NUMBER, "hi", time_zone="../../etc/passwd"), "IANA"),
    (lambda: sms("u1", NUMBER, "hi", locale="pt BR"), "BCP 47"),
    (lambda: sms("", NUMBER, "hi"), "user_id is empty"),
    (lambda: push("  ", TOKEN, "hi"), "user_id is empty"),
    (lambda: sms("u1\n", NUMBER, "hi"), "user_id 'u1\\\\n' has control characters"),
    (lambda: sms("u1", NUMBER, "hi", event_id="e\x001"), "event_id .* control characters"),
    (lambda: push("u1", TOKEN, "hi", event_id=""), "event_id is empty"),
    (lambda: sms("u1", NUMBER, template_id="order\tshipped"), "template_id .* control characters"),
    (lambda: push("u1", TOKEN + "\n", "hi"), "no spaces or control characters"),
    (lambda: push("u1", "", "hi"), "registration token"),
    (lambda: push("u1", TOKEN, " ", " "), "title, a body or a template_id"),
    (lambda: sms("u1", NUMBER, template_id="order_shipped", template_vars={"order": 1042}), "strings to strings"),
    (lambda: push("u1", TOKEN, "hi", data={"order": None}), "strings to strings"),
    (lambda: Request("e1", "u1", "sms", NUMBER, "hi"), "not SMS or PUSH"),
    (lambda: Request("e1", "u1", "SMS", NUMBER + "\n", "hi"), "E.164"),
    (lambda: AndroidOverrides(priority="high"), "NORMAL or HIGH"),
    (lambda: AndroidOverrides(ttl_seconds=-1), "ttl_seconds"),
    (lambda: AndroidOverrides(ttl_seconds=29 * 24 * 3600), "ttl_seconds"),
    (lambda: ApnsOverrides(badge=-1), "badge"),
    (lambda: ApnsOverrides(headers={"apns-priority": 10}), "strings to strings"),
])
def test_constructors_refuse_what_herald_would_call_invalid(make, complaint):
    with pytest.raises(ValueError, match=complaint):
        make()


def test_constructors_take_what_herald_takes():
    assert sms("u1", NUMBER, "hi", priority="URGENT").priority is Priority.URGENT
    assert sms("u1", NUMBER, "hi", priority=Priority.NORMAL).to_record()["priority"] == "NORMAL"
    assert sms("u1", NUMBER, "hi").to_record()["priority"] == "UNKNOWN"
    lisbon = timezone(timedelta(hours=1))
    request = push("u1", TOKEN, "Shipped", scheduled_at=datetime(2030, 1, 1, 15, tzinfo=lisbon), time_zone="Europe/Lisbon",
                   locale="pt-BR", android=AndroidOverrides(priority="HIGH", ttl_seconds=0), apns=ApnsOverrides(badge=0))
    assert request.to_record()["time_zone"] == "Europe/Lisbon"
    assert sms("u1", NUMBER, template_id="order_shipped", template_vars={"name": "Ana"}, locale="pt").body == ""


class Message:
    def __init__(self, offset, value=None, error=None, topic="statuses", partition=0):
        self._offset, self._value, self._error, self._topic, self._partition = offset, value, error, topic, partition

    def error(self):
        return self._error

    def value(self):
        return self._value

    def topic(self):
        return self._topic

    def partition(self):
        return self._partition

    def offset(self):
        return self._offset


class FakeConsumer:
    """confluent_kafka.Consumer as StatusConsumer uses it: poll hands out
    `messages` in turn; stored and committed offsets are recorded."""

    made = []

    def __init__(self, conf):
        self.conf = conf
        self.messages = []
        self.stored = []  # offsets of the next message to read, as librdkafka stores them
        self.committed = []
        self.closed = False
        FakeConsumer.made.append(self)

    def subscribe(self, topics):
        self.topics = topics

    def poll(self, timeout):
        return self.messages.pop(0) if self.messages else None

    def store_offsets(self, message):
        self.stored.append(message.offset() + 1)

    def commit(self, asynchronous=True):
        self.committed.append(self.stored[-1] if self.stored else None)

    def close(self):
        self.closed = True


@pytest.fixture
def fake(monkeypatch):
    FakeConsumer.made = []
    monkeypatch.setattr(confluent_kafka, "Consumer", FakeConsumer)

    def consumer(*messages, **kwargs):
        statuses = StatusConsumer("broker:9092", "g", topic="statuses", **kwargs)
        FakeConsumer.made[-1].messages = list(messages)
        return statuses, FakeConsumer.made[-1]

    return consumer


def test_a_topic_not_there_yet_is_logged_and_polling_goes_on(fake, caplog):
    # What librdkafka hands a consumer subscribed to a topic herald has not created yet.
    unknown = confluent_kafka.KafkaError(confluent_kafka.KafkaError.UNKNOWN_TOPIC_OR_PART,
                                         "Subscribed topic not available: statuses: Broker: Unknown topic or partition")
    statuses, _ = fake(Message(-1, error=unknown), Message(-1, error=unknown), Message(0, status_value("e1")))
    with caplog.at_level(logging.WARNING, logger="herald_client"):
        assert statuses.poll(1).event_id == "e1"
    assert "Unknown topic" in caplog.text


def test_a_fatal_error_is_raised(fake):
    fatal = confluent_kafka.KafkaError(confluent_kafka.KafkaError._FENCED, "fenced by a newer instance", fatal=True)
    statuses, _ = fake(Message(-1, error=fatal))
    with pytest.raises(confluent_kafka.KafkaException, match="fenced"):
        statuses.poll(1)


def test_an_offset_is_stored_once_the_next_event_is_asked_for(fake):
    # e1 twice: the copy is skipped, and its offset stored with e2's.
    statuses, consumer = fake(*(Message(i, status_value(e)) for i, e in enumerate(["e1", "e1", "e2", "e3"])))
    assert consumer.conf["enable.auto.offset.store"] is False and consumer.conf["enable.auto.commit"] is True
    assert statuses.poll(1).event_id == "e1"
    assert consumer.stored == [], "e1 is in the application's hands"
    assert statuses.poll(1).event_id == "e2"
    assert consumer.stored == [1, 2]
    events = iter(statuses)
    assert next(events).event_id == "e3"
    assert consumer.stored == [1, 2, 3]
    statuses.close()
    assert consumer.committed == [3] and consumer.closed, "e3, in hand at close, is not committed"


def test_a_with_block_that_ends_normally_commits_its_last_event_and_one_that_raises_does_not(fake):
    with fake(Message(0, status_value("e1")))[0] as statuses:
        statuses.poll(1)
    assert FakeConsumer.made[-1].committed == [1]
    with pytest.raises(RuntimeError):
        with fake(Message(0, status_value("e1")))[0] as statuses:
            statuses.poll(1)
            raise RuntimeError("the application failed handling e1")
    assert FakeConsumer.made[-1].committed == [None] and FakeConsumer.made[-1].closed


def test_current_keeps_the_notifications_a_status_came_for_last(fake):
    values = [status_value("e1", "SCHEDULED", 0), status_value("e2"), status_value("e1"), status_value("e3")]
    statuses, _ = fake(*(Message(i, v) for i, v in enumerate(values)), remember_current=2)
    while statuses.poll(0) is not None:
        pass
    assert list(statuses.current) == ["e1", "e3"], "e2 is the least recent"
    assert statuses.current["e1"].status == "SENT"


def test_the_consumer_defaults_are_a_fast_group_and_can_be_overridden(fake):
    _, consumer = fake()
    assert consumer.conf["session.timeout.ms"] == 6000 and consumer.conf["heartbeat.interval.ms"] == 1000
    assert consumer.conf["max.poll.interval.ms"] > consumer.conf["session.timeout.ms"]
    assert consumer.conf["enable.metrics.push"] is False
    assert consumer.conf["topic.metadata.refresh.interval.ms"] <= 10000, "a topic created after the consumer is found soon"
    assert (consumer.conf["group.id"], consumer.conf["bootstrap.servers"]) == ("g", "broker:9092")
    _, consumer = fake(config={"session.timeout.ms": 10000, "enable.auto.offset.store": True})
    assert consumer.conf["session.timeout.ms"] == 10000
    assert consumer.conf["enable.auto.offset.store"] is False, "storing offsets after handling is the class's to do"


def test_the_producer_pushes_no_metrics_by_default(monkeypatch):
    made = []
    monkeypatch.setattr(herald_client.producer.confluent_kafka, "Producer", lambda conf: made.append(conf))
    Producer("broker:9092")
    Producer("broker:9092", config={"enable.metrics.push": True})
    assert [conf["enable.metrics.push"] for conf in made] == [False, True]


def test_a_request_as_json_says_what_its_avro_record_says():
    later = datetime(2030, 1, 1, 15, 0, tzinfo=timezone.utc)
    request = push("u1", TOKEN, "Title", "Body", data={"k": "v"}, scheduled_at=later, time_zone="Europe/Lisbon", locale="pt-PT",
                   priority=Priority.URGENT, android=AndroidOverrides(priority="HIGH", ttl_seconds=60),
                   apns=ApnsOverrides(headers={"apns-priority": "10"}, badge=3))
    body = request.to_json()
    record = request.to_record()
    assert {k: body[k] for k in ("event_id", "user_id", "channel", "recipient", "time_zone", "locale")} == {
        k: record[k] for k in ("event_id", "user_id", "channel", "recipient", "time_zone", "locale")}
    assert datetime.fromisoformat(body["scheduled_at"]) == later
    assert body["priority"] == "URGENT"
    assert body["content"] == {"title": "Title", "body": "Body", "data": {"k": "v"},
                               "android": {"priority": "HIGH", "ttl_seconds": 60},
                               "apns": {"headers": {"apns-priority": "10"}, "badge": 3, "content_available": False}}
    # Nothing herald would have to guess: no nulls, no created_at of the client's clock.
    plain = sms("u1", NUMBER, "hi").to_json()
    assert plain == {"event_id": plain["event_id"], "user_id": "u1", "channel": "SMS", "recipient": NUMBER, "content": {"body": "hi"}}


def test_the_http_sender_needs_a_token():
    from herald_client import HttpSender

    with pytest.raises(ValueError, match="HERALD_API_TOKEN"):
        HttpSender("http://127.0.0.1:1", None)
