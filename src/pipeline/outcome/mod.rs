//! Stage 5: what happens to a record once its fate is known, and making
//! that durable in Kafka (status event, retry, dead letter).

mod publish;
mod status;

use std::time::Duration;

use chrono::{DateTime, Utc};

pub use publish::ProduceError;
pub(crate) use publish::Publisher;
pub use publish::HEADER_ROOM;
pub(crate) use status::status_event;

use crate::codec::decode::Undecodable;
use crate::pipeline::deliver::{Delivered, DeliveryError};
use crate::model::{Attempts, ErrorClass, ErrorCode, InvalidReason, Status};
use crate::record::{Envelope, ErrorHeaders};
use crate::pipeline::suppression::{Entry, Reason};
use crate::topics::Topics;

/// The fate of one record. Every variant says which status (if any) is
/// emitted and where (if anywhere) the record goes next.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Sent(Delivered),
    /// Permanently refused by the provider; not retried.
    Failed(DeliveryError),
    /// Transient failure: to retry topic `retry`, due at `not_before`.
    RetryScheduled { retry: usize, not_before: DateTime<Utc>, error: DeliveryError },
    /// No provider was called (each one's circuit was open), so no attempt
    /// was used: parked on tier `hold` of the timing wheel until
    /// `not_before`, spread out after the circuit is due to close.
    Postponed { hold: usize, not_before: DateTime<Utc>, error: DeliveryError },
    /// Transient failure with the schedule exhausted.
    DeadLettered(DeliveryError),
    /// Never deliverable as written: reported, and kept on the dead-letter topic.
    Invalid(InvalidReason),
    RateLimited { until: DateTime<Utc> },
    /// Not to be sent before `not_before`: parked on tier `hold` and
    /// checked again then.
    Deferred { hold: usize, not_before: DateTime<Utc>, why: Deferral },
    /// A request scheduled for later, first parked on tier `hold`.
    Scheduled { hold: usize, not_before: DateTime<Utc> },
    /// A parked record released early by its topic's delay, parked again.
    Held { hold: usize, not_before: DateTime<Utc> },
    /// Not sent: the recipient is on the suppression list.
    Suppressed(Reason),
    /// Not sent: cancelled before its attempt.
    Cancelled,
    /// Not a request; dead-lettered with the reason, no status (no ids).
    Undecodable(Undecodable),
    /// Another copy of this event is being sent at this moment: this one is
    /// dropped, with no status and no copy, and that one's outcome stands.
    InFlight,
    /// Parked by another deployment on the same delay topic: that one acts
    /// on it; this one skips it, with no status and no copy.
    Foreign,
}

/// Why a request waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deferral {
    /// Over the limit, with the deferring policy: until the window has room.
    Window,
    /// In its channel's quiet hours, in this zone: until they end.
    QuietHours(chrono_tz::Tz),
}

/// Where a record goes besides its status event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Destination {
    /// A rung of the retry ladder.
    Retry(usize),
    /// A tier of the timing wheel.
    Wait(usize),
    DeadLetter,
}

/// A provider's `Retry-After` is honoured up to this; beyond it the retry
/// schedule decides.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// The one place that turns a delivery result into retry, dead letter or
/// drop. `attempts` were made before the attempt that produced `result`;
/// `jitter` spreads out records that wait for a circuit to close.
pub fn decide(
    result: Result<Delivered, DeliveryError>,
    attempts: Attempts,
    topics: &Topics,
    now: DateTime<Utc>,
    jitter: Duration,
) -> Outcome {
    let error = match result {
        Ok(delivered) => return Outcome::Sent(delivered),
        Err(DeliveryError::Invalid(reason)) => return Outcome::Invalid(reason),
        Err(error) => error,
    };
    if let DeliveryError::CircuitOpen { retry_after, .. } = &error {
        let wait = *retry_after + jitter;
        return Outcome::Postponed { hold: topics.wait_for(wait), not_before: now + wait, error };
    }
    match (error.class(), topics.retry_after_attempt(attempts.next())) {
        (ErrorClass::Transient, Some(retry)) => {
            let wait = topics.retries[retry].delay.max(error.retry_after().unwrap_or_default().min(MAX_RETRY_AFTER));
            Outcome::RetryScheduled { retry, not_before: now + wait, error }
        }
        (ErrorClass::Transient, None) => Outcome::DeadLettered(error),
        _ => Outcome::Failed(error),
    }
}

impl Outcome {
    pub(crate) fn status(&self) -> Option<Status> {
        Some(match self {
            Outcome::Sent(_) => Status::Sent,
            Outcome::Failed(_) => Status::Failed,
            Outcome::RetryScheduled { .. } | Outcome::Postponed { .. } => Status::RetryScheduled,
            Outcome::DeadLettered(_) => Status::DeadLettered,
            Outcome::Invalid(_) => Status::Invalid,
            Outcome::RateLimited { .. } => Status::RateLimited,
            Outcome::Scheduled { .. } => Status::Scheduled,
            Outcome::Deferred { .. } => Status::Deferred,
            Outcome::Suppressed(_) => Status::Suppressed,
            Outcome::Cancelled => Status::Cancelled,
            Outcome::Held { .. } | Outcome::Undecodable(_) | Outcome::InFlight | Outcome::Foreign => return None,
        })
    }

    pub(crate) fn destination(&self) -> Option<Destination> {
        match self {
            Outcome::RetryScheduled { retry, .. } => Some(Destination::Retry(*retry)),
            Outcome::Postponed { hold, .. }
            | Outcome::Scheduled { hold, .. }
            | Outcome::Deferred { hold, .. }
            | Outcome::Held { hold, .. } => Some(Destination::Wait(*hold)),
            Outcome::DeadLettered(_) | Outcome::Invalid(_) | Outcome::Undecodable(_) => Some(Destination::DeadLetter),
            Outcome::Sent(_)
            | Outcome::Failed(_)
            | Outcome::RateLimited { .. }
            | Outcome::Suppressed(_)
            | Outcome::Cancelled
            | Outcome::InFlight
            | Outcome::Foreign => None,
        }
    }

    pub(crate) fn not_before(&self) -> Option<DateTime<Utc>> {
        match self {
            Outcome::RetryScheduled { not_before, .. }
            | Outcome::Postponed { not_before, .. }
            | Outcome::Scheduled { not_before, .. }
            | Outcome::Deferred { not_before, .. }
            | Outcome::Held { not_before, .. } => Some(*not_before),
            _ => None,
        }
    }

    /// When the next attempt may come: a parked record's time, or when a
    /// rate-limited user's window frees up.
    pub(crate) fn next_attempt_at(&self) -> Option<DateTime<Utc>> {
        match self {
            Outcome::RateLimited { until } => Some(*until),
            _ => self.not_before(),
        }
    }

    /// Whether a provider was called to reach this outcome, which uses up
    /// one delivery attempt.
    pub(crate) fn called_provider(&self) -> bool {
        matches!(self, Outcome::Sent(_) | Outcome::Failed(_) | Outcome::RetryScheduled { .. } | Outcome::DeadLettered(_))
    }

    /// The suppression this outcome records: the provider said the
    /// recipient cannot be reached again.
    pub(crate) fn suppresses(&self) -> Option<Entry> {
        match self {
            Outcome::Failed(e @ DeliveryError::RecipientGone { reason, .. }) => Some(Entry { reason: *reason, cause: e.code().to_string() }),
            _ => None,
        }
    }

    /// Where the record goes next, and the envelope its copy carries there.
    /// `error` is this outcome's [`Outcome::error`]; a parked record with
    /// none keeps the error that parked it (`parked`'s).
    pub(crate) fn reroute(&self, attempts: Attempts, error: Option<ErrorHeaders>, parked: &Envelope) -> Option<(Destination, Envelope)> {
        let destination = self.destination()?;
        let error = error.or_else(|| parked.error.clone());
        Some((destination, Envelope { attempts, not_before: self.not_before(), origin: None, error }))
    }

    /// The error behind this outcome, free of personal data.
    pub(crate) fn error(&self) -> Option<ErrorHeaders> {
        let (class, code, message) = match self {
            Outcome::Failed(e)
            | Outcome::RetryScheduled { error: e, .. }
            | Outcome::Postponed { error: e, .. }
            | Outcome::DeadLettered(e) => (e.class(), e.code(), e.to_string()),
            Outcome::Invalid(reason) => (ErrorClass::Invalid, reason.code(), reason.to_string()),
            Outcome::RateLimited { until } | Outcome::Deferred { not_before: until, why: Deferral::Window, .. } => {
                (ErrorClass::RateLimited, ErrorCode::RATE_LIMIT_EXCEEDED, format!("window full until {}", until.to_rfc3339()))
            }
            // Not a failure; transient in the sense that a later attempt goes.
            Outcome::Deferred { not_before, why: Deferral::QuietHours(zone), .. } => {
                let local = not_before.with_timezone(zone).format("%Y-%m-%d %H:%M %Z");
                (ErrorClass::Transient, ErrorCode::QUIET_HOURS, format!("quiet hours in {zone} until {local} ({})", not_before.to_rfc3339()))
            }
            Outcome::Suppressed(reason) => (ErrorClass::Permanent, reason.code(), reason.to_string()),
            Outcome::Undecodable(u) => (ErrorClass::Invalid, u.code(), u.to_string()),
            Outcome::Sent(_) | Outcome::Scheduled { .. } | Outcome::Held { .. } | Outcome::Cancelled | Outcome::InFlight | Outcome::Foreign => {
                return None
            }
        };
        Some(ErrorHeaders { class, code, message })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::deliver::Provider;
    use chrono::TimeZone;

    fn topics() -> Topics {
        Topics::defaults()
    }

    fn now() -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000, 0).unwrap()
    }

    fn unavailable(retry_after: Option<u64>) -> DeliveryError {
        DeliveryError::Unavailable {
            provider: Provider::Twilio,
            code: ErrorCode::http(503),
            message: "down".into(),
            retry_after: retry_after.map(Duration::from_secs),
        }
    }

    fn rejected() -> DeliveryError {
        DeliveryError::Rejected { provider: Provider::Twilio, code: ErrorCode::provider(Provider::Twilio, 21211), message: "bad".into() }
    }

    fn opted_out() -> DeliveryError {
        DeliveryError::RecipientGone {
            provider: Provider::Twilio,
            code: ErrorCode::provider(Provider::Twilio, 21610),
            message: "unsubscribed".into(),
            reason: Reason::OptedOut,
        }
    }

    fn circuit_open(secs: u64) -> DeliveryError {
        DeliveryError::CircuitOpen { provider: Provider::Twilio, retry_after: Duration::from_secs(secs) }
    }

    #[test]
    fn only_a_recipient_gone_for_good_is_suppressed() {
        let entry = Entry { reason: Reason::OptedOut, cause: "twilio:21610".into() };
        assert_eq!(Outcome::Failed(opted_out()).suppresses(), Some(entry));
        assert_eq!(Outcome::Failed(rejected()).suppresses(), None);
        assert_eq!(Outcome::DeadLettered(unavailable(None)).suppresses(), None);
    }

    #[test]
    fn decision_table() {
        let t = topics();
        let mins = |m: i64| now() + chrono::Duration::minutes(m);
        let secs = |s: i64| now() + chrono::Duration::seconds(s);
        let sent = Delivered { provider: Provider::Fcm, message_id: Some("m".into()) };
        let rows: Vec<(Result<Delivered, DeliveryError>, u32, Outcome)> = vec![
            (Ok(sent.clone()), 1, Outcome::Sent(sent)),
            (Err(rejected()), 1, Outcome::Failed(rejected())),
            (Err(rejected()), 3, Outcome::Failed(rejected())),
            (Err(opted_out()), 1, Outcome::Failed(opted_out())),
            (
                Err(DeliveryError::Invalid(InvalidReason::InvalidPhoneNumber)),
                1,
                Outcome::Invalid(InvalidReason::InvalidPhoneNumber),
            ),
            (Err(unavailable(None)), 1, Outcome::RetryScheduled { retry: 0, not_before: mins(10), error: unavailable(None) }),
            (Err(unavailable(None)), 2, Outcome::RetryScheduled { retry: 1, not_before: mins(20), error: unavailable(None) }),
            (Err(unavailable(None)), 3, Outcome::RetryScheduled { retry: 2, not_before: mins(40), error: unavailable(None) }),
            (Err(unavailable(None)), 4, Outcome::DeadLettered(unavailable(None))),
            // Retry-After longer than the topic's delay wins, up to the clamp.
            (
                Err(unavailable(Some(900))),
                1,
                Outcome::RetryScheduled { retry: 0, not_before: mins(15), error: unavailable(Some(900)) },
            ),
            (
                Err(unavailable(Some(86_400))),
                1,
                Outcome::RetryScheduled { retry: 0, not_before: mins(60), error: unavailable(Some(86_400)) },
            ),
            // Shorter than the delay: the schedule wins.
            (
                Err(unavailable(Some(5))),
                1,
                Outcome::RetryScheduled { retry: 0, not_before: mins(10), error: unavailable(Some(5)) },
            ),
            // An open circuit called nobody: no attempt is used, and even the
            // last attempt waits for the circuit rather than dead-lettering.
            // The jitter (2 s here) is added to when the circuit closes.
            (Err(circuit_open(30)), 1, Outcome::Postponed { hold: 0, not_before: secs(32), error: circuit_open(30) }),
            (Err(circuit_open(30)), 4, Outcome::Postponed { hold: 0, not_before: secs(32), error: circuit_open(30) }),
        ];
        for (result, attempt, expected) in rows {
            let outcome = decide(result.clone(), Attempts::made(attempt - 1).unwrap(), &t, now(), Duration::from_secs(2));
            assert_eq!(outcome, expected, "{result:?} on attempt {attempt}");
        }
    }

    #[test]
    fn each_outcome_has_its_status_and_destination() {
        let rows = [
            (Outcome::Failed(rejected()), Some(Status::Failed), None),
            (Outcome::DeadLettered(unavailable(None)), Some(Status::DeadLettered), Some(Destination::DeadLetter)),
            (Outcome::Invalid(InvalidReason::EmptyBody), Some(Status::Invalid), Some(Destination::DeadLetter)),
            (Outcome::RateLimited { until: now() }, Some(Status::RateLimited), None),
            (Outcome::Scheduled { hold: 2, not_before: now() }, Some(Status::Scheduled), Some(Destination::Wait(2))),
            (Outcome::Deferred { hold: 0, not_before: now(), why: Deferral::Window }, Some(Status::Deferred), Some(Destination::Wait(0))),
            (Outcome::Held { hold: 1, not_before: now() }, None, Some(Destination::Wait(1))),
            (
                Outcome::Postponed { hold: 1, not_before: now(), error: circuit_open(1) },
                Some(Status::RetryScheduled),
                Some(Destination::Wait(1)),
            ),
            (
                Outcome::RetryScheduled { retry: 1, not_before: now(), error: unavailable(None) },
                Some(Status::RetryScheduled),
                Some(Destination::Retry(1)),
            ),
            (Outcome::Suppressed(Reason::OptedOut), Some(Status::Suppressed), None),
        ];
        for (outcome, status, destination) in rows {
            assert_eq!((outcome.status(), outcome.destination()), (status, destination), "{outcome:?}");
        }
    }
}
