"""The client against tansu and a real herald binary."""

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import confluent_kafka
import pytest
from confluent_kafka.admin import AdminClient

import herald_client
from herald_client import Priority, Producer, StatusConsumer, push, sms
from herald_client.status import StatusEvent
from herald_client.wire import STATUS_SCHEMA, STATUS_SCHEMA_TEXT, frame, unframe

from conftest import API_TOKEN, CLIENT, ROOT, status_value


def wait_topics(broker, *topics, timeout=30):
    admin = AdminClient({"bootstrap.servers": broker, **CLIENT})
    deadline = time.time() + timeout
    while time.time() < deadline:
        known = admin.list_topics(timeout=5).topics
        if all(t in known and known[t].partitions for t in topics):
            return
        time.sleep(0.2)
    raise TimeoutError(f"herald did not create {topics}")


def clients(broker, herald, registry_url=None):
    wait_topics(broker, herald.topics["requested"], herald.topics["status"], herald.topics["cancellations"])
    # The client's own defaults, as a user has them.
    producer = Producer(broker, topic=herald.topics["requested"], cancellations_topic=herald.topics["cancellations"],
                        schema_registry_url=registry_url)
    statuses = StatusConsumer(broker, f"reader-{uuid.uuid4().hex[:6]}", topic=herald.topics["status"],
                              schema_registry_url=registry_url)
    return producer, statuses


def test_the_bundled_schemas_are_herald_s():
    import importlib.resources

    package = importlib.resources.files("herald_client") / "schemas"
    for name in ("notification.requested.avsc", "notification.status.avsc"):
        assert (package / name).read_text() == (ROOT / "schemas" / name).read_text(), f"{name}: copy schemas/ into the package"


def test_constructors_refuse_what_herald_would_call_invalid():
    with pytest.raises(ValueError, match="E.164"):
        sms("u1", "555-0100", "hi")
    with pytest.raises(ValueError, match="body or a template_id"):
        sms("u1", "+14155550100", "  ")
    with pytest.raises(ValueError, match="registration token"):
        push("u1", " ", "title")
    with pytest.raises(ValueError, match="no time zone"):
        sms("u1", "+14155550100", "hi", scheduled_at=datetime(2030, 1, 1)).to_record()
    assert sms("u1", "+14155550100", template_id="order_shipped").to_record()["priority"] == "UNKNOWN"
    assert sms("u1", "+14155550100", "x", priority=Priority.URGENT).to_record()["priority"] == "URGENT"


def test_an_sms_is_sent_and_its_statuses_read_without_a_registry(broker, twilio, start_herald):
    herald = start_herald()
    producer, statuses = clients(broker, herald)
    first = sms("ada", "+14155550100", "Your code is 123456", priority=Priority.URGENT, time_zone="Europe/Lisbon")
    later = sms("ada", "+14155550101", "See you at 3", scheduled_at=datetime.now(timezone.utc) + timedelta(seconds=4))
    producer.send(first)
    producer.send(later)
    producer.flush()
    # Cancelled while it waits for its time: never sent.
    producer.cancel(later.event_id, reason="plans changed")
    producer.flush()
    done = statuses.until_terminal([first.event_id, later.event_id])
    assert done[first.event_id].status == "SENT" and done[first.event_id].provider == "twilio"
    assert done[first.event_id].recipient == "+*******0100" and done[first.event_id].sms_segments == 1
    assert done[later.event_id].status == "CANCELLED"
    assert twilio.bodies() == ["Your code is 123456"]
    statuses.close()


def test_with_a_schema_registry_both_sides_register_and_resolve(broker, twilio, registry, start_herald, monkeypatch):
    herald = start_herald("--schema-registry-url", registry.url)
    # Given as herald is given it, in the environment.
    monkeypatch.setenv("SCHEMA_REGISTRY_URL", registry.url)
    producer, statuses = clients(broker, herald)
    request = sms("bob", "+14155550102", "via the registry")
    producer.send(request)
    producer.flush()
    done = statuses.until_terminal([request.event_id])
    assert done[request.event_id].status == "SENT"
    assert f"{herald.topics['requested']}-value" in registry.subjects, registry.subjects
    assert f"{herald.topics['status']}-value" in registry.subjects, registry.subjects
    statuses.close()


def test_a_redelivered_status_is_yielded_once_and_the_current_one_wins(broker):
    topic = f"statuses-{uuid.uuid4().hex[:6]}"
    base = {"event_id": "e1", "user_id": "u1", "channel": "SMS", "attempt": 0, "provider": None, "provider_message_id": None,
            "error_code": None, "error_class": None, "error_message": None, "next_attempt_at": None,
            "occurred_at": datetime(2026, 12, 1, 10, 0, tzinfo=timezone.utc)}
    scheduled = frame(0, STATUS_SCHEMA, {**base, "status": "SCHEDULED"})
    sent = frame(0, STATUS_SCHEMA, {**base, "status": "SENT", "attempt": 1, "provider": "twilio",
                                    "occurred_at": datetime(2026, 12, 1, 10, 5, tzinfo=timezone.utc)})
    limited = frame(0, STATUS_SCHEMA, {**base, "event_id": "e2", "status": "RATE_LIMITED"})
    scheduled2 = frame(0, STATUS_SCHEMA, {**base, "event_id": "e2", "status": "SCHEDULED"})
    producer = confluent_kafka.Producer({"bootstrap.servers": broker, **CLIENT})
    # A crash's redelivery: the same outcomes again, and an older one after a newer one.
    for value in (scheduled, sent, scheduled, sent, scheduled2, limited, scheduled2):
        producer.produce(topic, key=b"u1", value=value)
    producer.flush(30)
    statuses = StatusConsumer(broker, "dedup", topic=topic)
    seen = []
    deadline = time.time() + 30
    while len(seen) < 4 and time.time() < deadline:
        event = statuses.poll(0.5)
        if event is not None:
            seen.append((event.event_id, event.status))
    assert seen == [("e1", "SCHEDULED"), ("e1", "SENT"), ("e2", "SCHEDULED"), ("e2", "RATE_LIMITED")]
    while statuses.poll(2) is not None:
        pass
    assert statuses.duplicates == 3
    assert statuses.current["e1"].status == "SENT", "attempt 1 wins"
    assert statuses.current["e2"].status == "RATE_LIMITED", "a decision replaces a pending status at the same attempt"
    statuses.close()


def test_a_status_written_before_the_enrichment_reads_with_defaults():
    old = {"event_id": "e", "user_id": "u", "channel": "PUSH", "status": "SENT", "attempt": 1, "provider": "fcm",
           "provider_message_id": "m", "error_code": None, "error_class": None, "error_message": None,
           "occurred_at": datetime(2026, 1, 1, tzinfo=timezone.utc), "next_attempt_at": None}
    older_schema = json.loads(STATUS_SCHEMA_TEXT)
    names = [f["name"] for f in older_schema["fields"]]
    older_schema["fields"] = [f for f in older_schema["fields"] if f["name"] in old]
    assert len(older_schema["fields"]) < len(names)
    import fastavro
    data = frame(7, fastavro.parse_schema(older_schema), old)
    from herald_client.wire import decode
    event = StatusEvent.from_record(decode(data, STATUS_SCHEMA, lambda _id: fastavro.parse_schema(older_schema)))
    assert (event.status, event.recipient, event.providers_tried, event.locale) == ("SENT", None, (), None)
    assert unframe(data)[0] == 7


def produce(broker, topic, *values):
    producer = confluent_kafka.Producer({"bootstrap.servers": broker, **CLIENT})
    for value in values:
        producer.produce(topic, key=b"u1", value=value)
    assert producer.flush(30) == 0


def next_event(statuses, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        event = statuses.poll(0.5)
        if event is not None:
            return event.event_id
    raise TimeoutError(f"no status within {timeout}s")


def test_a_consumer_started_before_its_topic_exists_reads_on_once_it_does(broker, caplog):
    topic = f"statuses-{uuid.uuid4().hex[:6]}"
    statuses = StatusConsumer(broker, "early", topic=topic)
    # tansu answers a consumer's metadata request for a missing topic with
    # UNKNOWN_TOPIC_OR_PART (it creates topics only for producers): wait to see it.
    deadline = time.monotonic() + 60
    with caplog.at_level(logging.WARNING, logger="herald_client"):
        while "UNKNOWN_TOPIC_OR_PART" not in caplog.text:
            assert time.monotonic() < deadline, "the consumer was never told the topic is missing"
            assert statuses.poll(0.5) is None
    produce(broker, topic, status_value("e1"))
    assert next_event(statuses) == "e1"
    statuses.close()


def test_an_event_in_hand_at_close_comes_again_and_handled_ones_do_not(broker):
    topic, group = f"statuses-{uuid.uuid4().hex[:6]}", f"g-{uuid.uuid4().hex[:6]}"
    produce(broker, topic, *(status_value(e) for e in ("e1", "e2", "e3")))
    first = StatusConsumer(broker, group, topic=topic)
    assert [next_event(first), next_event(first)] == ["e1", "e2"]
    first.close()  # e2 is still in hand
    with StatusConsumer(broker, group, topic=topic) as second:
        assert [next_event(second), next_event(second)] == ["e2", "e3"]
    # The block ended normally: e3 was handled.
    produce(broker, topic, status_value("e4"))
    third = StatusConsumer(broker, group, topic=topic)
    assert next_event(third) == "e4"
    third.close()


DIES_HOLDING_E2 = """
import sys
from herald_client import StatusConsumer

statuses = StatusConsumer(sys.argv[1], sys.argv[2], topic=sys.argv[3])
assert [statuses.poll(60).event_id, statuses.poll(60).event_id] == ["e1", "e2"]
# What auto-commit does every 5 s, at once; then the process dies with e2 in hand.
statuses._consumer.commit(asynchronous=False)
print("holding e2", flush=True)
sys.stdin.read()
"""


def test_an_event_in_hand_when_the_process_dies_comes_again(broker):
    topic, group = f"statuses-{uuid.uuid4().hex[:6]}", f"g-{uuid.uuid4().hex[:6]}"
    produce(broker, topic, *(status_value(e) for e in ("e1", "e2", "e3")))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(herald_client.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-c", DIES_HOLDING_E2, broker, group, topic], env=env,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "holding e2"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    # It joins once the dead member's session has expired.
    statuses = StatusConsumer(broker, group, topic=topic)
    assert [next_event(statuses), next_event(statuses)] == ["e2", "e3"]
    statuses.close()


def test_the_readme_example_runs_as_written(broker, twilio, start_herald):
    herald = start_herald(topics={"requested": "notification.requested", "status": "notification.status",
                                  "cancellations": "notification.cancellations"})
    wait_topics(broker, *herald.topics.values())
    readme = (ROOT / "clients" / "python" / "README.md").read_text()
    example = re.findall(r"```python\n(.*?)```", readme, re.S)[0]
    env = {**os.environ, "KAFKA_BROKERS": broker,
           "PYTHONPATH": os.pathsep.join([str(Path(herald_client.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    # The timeout only ends a hung example; it stops by itself after its three notifications.
    run = subprocess.run([sys.executable, "-c", example], env=env, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr
    statuses = {line.split()[1] for line in run.stdout.splitlines()}
    # The code is sent, the reminder cancelled, and the push INVALID: this herald has no FCM credentials.
    assert {"SENT", "CANCELLED", "INVALID"} <= statuses, run.stdout
    assert twilio.bodies() == ["Your code is 123456"]


def test_the_readme_http_example_runs_as_written(herald_api, twilio):
    readme = (ROOT / "clients" / "python" / "README.md").read_text()
    example = re.findall(r"```python\n(.*?)```", readme, re.S)[1]
    assert "HttpSender" in example
    env = {**os.environ, "HERALD_API_URL": herald_api, "HERALD_API_TOKEN": API_TOKEN,
           "PYTHONPATH": os.pathsep.join([str(Path(herald_client.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-c", example], env=env, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr
    event_id, status_url = run.stdout.split()
    assert status_url == f"/v1/notifications/{event_id}"
    deadline = time.time() + 60
    while twilio.bodies() != ["Your code is 123456"]:
        assert time.time() < deadline, twilio.bodies()
        time.sleep(0.2)


def test_the_top_readme_quick_start_runs_as_written(broker, twilio, registry, start_herald):
    # The quick start's own topic names, and a registry, as compose runs them.
    herald = start_herald("--schema-registry-url", registry.url,
                          topics={"requested": "notification.requested", "status": "notification.status",
                                  "cancellations": "notification.cancellations"})
    wait_topics(broker, *herald.topics.values())
    readme = (ROOT / "README.md").read_text()
    (quick_start,) = re.findall(r"```python\n(.*?)```", readme, re.S)
    env = {**os.environ, "KAFKA_BROKERS": broker, "SCHEMA_REGISTRY_URL": registry.url,
           "PYTHONPATH": os.pathsep.join([str(Path(herald_client.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-c", quick_start], env=env, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr
    event_id, status, provider, attempt = run.stdout.split()
    assert (status, provider, attempt) == ("SENT", "twilio", "1"), run.stdout
    assert "Your code is 123456" in twilio.bodies()


def test_over_http_a_request_is_sent_once_per_key_and_its_status_read_back(herald_api, twilio):
    from herald_client import HttpSender, Refused, Unavailable

    sender = HttpSender(herald_api, API_TOKEN)
    request = sms("py-http-user", "+14155550100", "Sent over HTTP")
    first = sender.send(request, idempotency_key="py-order-1")
    assert first.event_id == request.event_id
    assert first.status_url == f"/v1/notifications/{request.event_id}"
    # Sent again under its key, as after a timeout: the same answer, and
    # one SMS.
    assert sender.send(request, idempotency_key="py-order-1") == first
    deadline = time.time() + 60
    while True:
        try:
            if sender.status(request.event_id)["status"] == "SENT":
                break
        except Refused as e:
            assert e.status == 404, e
        assert time.time() < deadline, "never SENT"
        time.sleep(0.2)
    assert twilio.bodies() == ["Sent over HTTP"]
    # Another body under the same key is refused; so is what herald would
    # call INVALID, field by field, and a wrong token.
    with pytest.raises(Refused) as reused:
        sender.send(sms("py-http-user", "+14155550100", "Another text"), idempotency_key="py-order-1")
    assert (reused.value.status, reused.value.error) == (422, "idempotency-key-reused")
    too_far = sms("py-http-user", "+14155550100", "Later", scheduled_at=datetime.now(timezone.utc) + timedelta(days=60))
    with pytest.raises(Refused) as invalid:
        sender.send(too_far)
    assert invalid.value.status == 400
    assert [f["field"] for f in invalid.value.fields] == ["scheduled_at"]
    with pytest.raises(Refused) as unauthorized:
        HttpSender(herald_api, "not-a-token").send(request)
    assert unauthorized.value.status == 401
    # A batch: one result each, in order.
    batch = [sms("py-http-user", "+14155550100", f"Batch {i}") for i in range(3)]
    items = sender.send_batch(batch, idempotency_key="py-batch-1")
    assert [(i.index, i.result, i.event_id) for i in items] == [(n, "accepted", r.event_id) for n, r in enumerate(batch)]
    # Nothing listening: nothing certain was written, so it says to retry.
    with pytest.raises(Unavailable):
        HttpSender("http://127.0.0.1:9", API_TOKEN, timeout=5).send(request, idempotency_key="py-order-1")
