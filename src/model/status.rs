//! Statuses, and the status event that reports each.

use chrono::{DateTime, Utc};

use super::{Channel, ErrorClass, ErrorCode, Origin, Provider, SmsCost, Tried};

/// The `status` symbol of a status event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    Sent,
    RateLimited,
    RetryScheduled,
    Failed,
    DeadLettered,
    Invalid,
    Scheduled,
    Deferred,
    /// From a delivery receipt: the carrier delivered the message.
    Delivered,
    /// From a delivery receipt: the carrier could not deliver it.
    Undelivered,
    /// Not sent: the recipient opted out, or its push token is dead.
    Suppressed,
    /// Not sent: cancelled while it waited (see `cancel`).
    Cancelled,
}

impl Status {
    pub(crate) const ALL: [Status; 12] = [
        Status::Sent,
        Status::RateLimited,
        Status::RetryScheduled,
        Status::Failed,
        Status::DeadLettered,
        Status::Invalid,
        Status::Scheduled,
        Status::Deferred,
        Status::Delivered,
        Status::Undelivered,
        Status::Suppressed,
        Status::Cancelled,
    ];

    pub(crate) fn from_symbol(symbol: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.symbol() == symbol)
    }

    /// The Avro enum symbol.
    pub fn symbol(self) -> &'static str {
        match self {
            Status::Sent => "SENT",
            Status::RateLimited => "RATE_LIMITED",
            Status::RetryScheduled => "RETRY_SCHEDULED",
            Status::Failed => "FAILED",
            Status::DeadLettered => "DEAD_LETTERED",
            Status::Invalid => "INVALID",
            Status::Scheduled => "SCHEDULED",
            Status::Deferred => "DEFERRED",
            Status::Delivered => "DELIVERED",
            Status::Undelivered => "UNDELIVERED",
            Status::Suppressed => "SUPPRESSED",
            Status::Cancelled => "CANCELLED",
        }
    }

    /// No further status follows a terminal one from herald's pipeline for
    /// the same event; a delivery receipt may still follow SENT.
    pub fn is_terminal(self) -> bool {
        self.phase() != Phase::Pending
    }

    pub(crate) fn phase(self) -> Phase {
        match self {
            Status::RetryScheduled | Status::Scheduled | Status::Deferred => Phase::Pending,
            Status::Delivered | Status::Undelivered => Phase::Receipt,
            _ => Phase::Outcome,
        }
    }
}

/// Where a status stands in a notification's life, in order: waiting for
/// an attempt, decided, and (SMS with receipts) reported by the carrier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Phase {
    Pending,
    Outcome,
    Receipt,
}

/// One `notification.status` event.
///
/// Delivery is at least once, so a subscriber may read an event twice, and
/// an event's statuses may interleave with a redelivered copy's. The rule
/// for subscribers, implemented by `StatusEvent::is_duplicate_of` and
/// [`StatusEvent::supersedes`]:
/// - two statuses with the same event id, attempt and status are the same
///   outcome: keep one;
/// - the current state of a notification is its status with the highest
///   attempt; at the same attempt a decided status replaces a pending one
///   and a carrier receipt replaces the decision; what is still tied goes
///   to the later `occurred_at`.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusEvent {
    pub event_id: String,
    pub user_id: String,
    /// `None` when the request named a channel herald does not know.
    pub channel: Option<Channel>,
    pub status: Status,
    pub attempt: u32,
    pub provider: Option<Provider>,
    pub provider_message_id: Option<String>,
    pub error_code: Option<ErrorCode>,
    pub error_class: Option<ErrorClass>,
    pub error_message: Option<String>,
    pub occurred_at: DateTime<Utc>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// The recipient, masked as in logs (see `mask`).
    pub recipient: Option<String>,
    pub created_at: Option<DateTime<Utc>>,
    pub scheduled_at: Option<DateTime<Utc>>,
    pub sms: Option<SmsCost>,
    /// Where the request entered herald, to find it on the dead-letter topic.
    pub origin: Option<Origin>,
    /// Providers failed over from, in order, before `provider`.
    pub tried: Vec<Tried>,
    /// The locale of the template the text was built from.
    pub locale: Option<String>,
}

impl StatusEvent {
    /// A status with its ids, kind, attempt and time, and nothing else:
    /// the start of one built field by field, as
    /// `StatusEvent { provider: Some(..), ..StatusEvent::new(..) }`.
    pub fn new(event_id: impl Into<String>, user_id: impl Into<String>, status: Status, attempt: u32, occurred_at: DateTime<Utc>) -> StatusEvent {
        StatusEvent {
            event_id: event_id.into(),
            user_id: user_id.into(),
            channel: None,
            status,
            attempt,
            provider: None,
            provider_message_id: None,
            error_code: None,
            error_class: None,
            error_message: None,
            occurred_at,
            next_attempt_at: None,
            recipient: None,
            created_at: None,
            scheduled_at: None,
            sms: None,
            origin: None,
            tried: Vec::new(),
            locale: None,
        }
    }

    pub(crate) fn is_duplicate_of(&self, other: &StatusEvent) -> bool {
        (&self.event_id, self.attempt, self.status) == (&other.event_id, other.attempt, other.status)
    }

    /// Whether this status replaces `other`, of the same notification, as
    /// its current state.
    pub fn supersedes(&self, other: &StatusEvent) -> bool {
        (self.attempt, self.status.phase(), self.occurred_at) > (other.attempt, other.status.phase(), other.occurred_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use chrono::TimeZone;

    fn status(event_id: &str, status: Status, attempt: u32, at: i64) -> StatusEvent {
        let occurred_at = Utc.timestamp_opt(1_700_000_000 + at, 0).unwrap();
        StatusEvent { channel: Some(Channel::Sms), ..StatusEvent::new(event_id, "u", status, attempt, occurred_at) }
    }

    /// The subscriber's fold: duplicates dropped, then the current status.
    fn follow(stream: &[StatusEvent]) -> (Vec<StatusEvent>, HashMap<String, Status>) {
        let mut kept: Vec<StatusEvent> = vec![];
        let mut current: HashMap<String, StatusEvent> = HashMap::new();
        for e in stream {
            if kept.iter().any(|k| e.is_duplicate_of(k)) {
                continue;
            }
            kept.push(e.clone());
            if current.get(&e.event_id).is_none_or(|c| e.supersedes(c)) {
                current.insert(e.event_id.clone(), e.clone());
            }
        }
        (kept, current.into_iter().map(|(id, e)| (id, e.status)).collect())
    }

    #[test]
    fn the_subscriber_rule_keeps_every_outcome_and_finds_the_current_one() {
        use Status::*;
        // Every pair that "deduplicate on event id and attempt" got wrong,
        // each followed by a redelivered duplicate, some out of order.
        let stream = [
            status("scheduled-invalid", Scheduled, 0, 0),
            status("scheduled-invalid", Invalid, 0, 5),
            status("scheduled-limited", Scheduled, 0, 0),
            status("scheduled-limited", RateLimited, 0, 5),
            status("scheduled-limited", Scheduled, 0, 6),
            status("sent-delivered", Sent, 1, 0),
            status("sent-delivered", Delivered, 1, 9),
            status("sent-delivered", Sent, 1, 10),
            status("sent-undelivered", Undelivered, 1, 9),
            status("sent-undelivered", Sent, 1, 0),
            status("retried", RetryScheduled, 1, 0),
            status("retried", RetryScheduled, 2, 600),
            status("retried", Sent, 3, 1800),
            status("retried", RetryScheduled, 2, 601),
            status("suppressed-on-retry", RetryScheduled, 1, 0),
            status("suppressed-on-retry", Suppressed, 1, 600),
            // A crash: the first attempt's outcome was lost, the redelivery succeeded.
            status("redelivered", RetryScheduled, 1, 0),
            status("redelivered", Sent, 1, 3),
        ];
        let (kept, current) = follow(&stream);
        assert_eq!(kept.len(), stream.len() - 3, "the three exact duplicates, and nothing else, dropped");
        let expected = [
            ("scheduled-invalid", Invalid),
            ("scheduled-limited", RateLimited),
            ("sent-delivered", Delivered),
            ("sent-undelivered", Undelivered),
            ("retried", Sent),
            ("suppressed-on-retry", Suppressed),
            ("redelivered", Sent),
        ];
        assert_eq!(current, expected.into_iter().map(|(id, s)| (id.to_owned(), s)).collect::<HashMap<_, _>>());
        // The old rule, the first status per (event id, attempt), loses these.
        let mut first: HashMap<(&str, u32), Status> = HashMap::new();
        for e in &stream {
            first.entry((&e.event_id, e.attempt)).or_insert(e.status);
        }
        assert_eq!(first[&("scheduled-invalid", 0)], Scheduled);
        assert_eq!(first[&("sent-delivered", 1)], Sent);
    }
}
