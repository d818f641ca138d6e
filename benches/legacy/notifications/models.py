from django.db import models


class Notification(models.Model):
    STATUSES = [(s, s) for s in ("pending", "processing", "sent", "failed", "cancelled")]

    user_id = models.CharField(max_length=64, db_index=True)
    phone_number = models.CharField(max_length=16)
    message = models.TextField()
    status = models.CharField(max_length=16, choices=STATUSES, default="pending", db_index=True)
    provider_message_id = models.CharField(max_length=64, blank=True)
    error = models.CharField(max_length=64, blank=True)
    attempts = models.IntegerField(default=0)
    scheduled_at = models.DateTimeField(null=True)
    created_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, db_index=True)

    class Meta:
        app_label = "notifications"
        indexes = [models.Index(fields=["user_id", "status", "sent_at"])]
