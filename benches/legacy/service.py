"""The design herald replaces, rebuilt for a side-by-side measurement: a
Django model per notification in PostgreSQL, a Celery task per SMS with
Redis as the broker, and Twilio through its official client. What the old
service did on each send, this does too:

- a rolling limit of 10 SMS per hour per user, counted in the database;
- message validation (480 characters at most) and an E.164 check;
- statuses pending -> processing -> sent / failed, on the row;
- retries of transient failures with a backoff of 300 s x 2^n, 3 attempts.

Configuration comes from the environment: DATABASE_URL parts (PGHOST,
PGPORT, PGDATABASE, PGUSER), REDIS_URL and TWILIO_BASE_URL (the nginx that
answers like Twilio).
"""

import os
import re
from datetime import timedelta

import django
from django.conf import settings

settings.configure(
    DATABASES={
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "HOST": os.environ.get("PGHOST", "127.0.0.1"),
            "PORT": os.environ.get("PGPORT", "5432"),
            "NAME": os.environ.get("PGDATABASE", "legacy"),
            "USER": os.environ.get("PGUSER", "postgres"),
            "CONN_MAX_AGE": None,
        }
    },
    INSTALLED_APPS=["notifications"],
    USE_TZ=True,
)
django.setup()

from celery import Celery  # noqa: E402
from django.utils import timezone  # noqa: E402
from twilio.base.exceptions import TwilioRestException  # noqa: E402
from twilio.rest import Client  # noqa: E402

from notifications.models import Notification  # noqa: E402

ACCOUNT_SID = "AC00000000000000000000000000000001"
AUTH_TOKEN = "test-auth-token"
FROM = "+15005550006"
RATE_LIMIT = 10
MAX_CHARS = 480
E164 = re.compile(r"^\+[1-9]\d{1,14}$")

app = Celery("service", broker=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(task_acks_late=True, task_ignore_result=True)

_twilio = None


def twilio():
    global _twilio
    if _twilio is None:
        _twilio = Client(ACCOUNT_SID, AUTH_TOKEN)
        _twilio.api.base_url = os.environ.get("TWILIO_BASE_URL", "https://api.twilio.com")
    return _twilio


def send_sms(user_id, phone_number, message):
    """The old service's entry point: a row, then a task."""
    notification = Notification.objects.create(user_id=user_id, phone_number=phone_number, message=message)
    deliver.delay(notification.id)
    return notification.id


@app.task(bind=True, max_retries=3)
def deliver(self, notification_id):
    n = Notification.objects.get(id=notification_id)
    if n.status == "cancelled":
        return
    n.status = "processing"
    n.attempts += 1
    n.save(update_fields=["status", "attempts"])
    if not E164.match(n.phone_number) or not n.message or len(n.message) > MAX_CHARS:
        Notification.objects.filter(id=n.id).update(status="failed", error="invalid")
        return
    an_hour_ago = timezone.now() - timedelta(hours=1)
    if Notification.objects.filter(user_id=n.user_id, status="sent", sent_at__gte=an_hour_ago).count() >= RATE_LIMIT:
        Notification.objects.filter(id=n.id).update(status="failed", error="rate_limited")
        return
    try:
        sent = twilio().messages.create(to=n.phone_number, from_=FROM, body=n.message)
    except TwilioRestException as error:
        if error.status >= 500 or error.status == 429:
            Notification.objects.filter(id=n.id).update(status="pending", error=str(error.code))
            raise self.retry(exc=error, countdown=300 * 2**self.request.retries)
        Notification.objects.filter(id=n.id).update(status="failed", error=str(error.code))
        return
    Notification.objects.filter(id=n.id).update(status="sent", provider_message_id=sent.sid, sent_at=timezone.now())
