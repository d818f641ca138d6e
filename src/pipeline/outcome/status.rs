//! Building the `notification.status` event for an outcome.

use chrono::{DateTime, Utc};

use super::Outcome;
use crate::model::{Attempts, Ids, Origin, StatusEvent};
use crate::record::ErrorHeaders;

/// The status event for `outcome`, if it has one. `error` is the outcome's
/// [`Outcome::error`]; `attempts` is the number of delivery attempts made
/// once the outcome was reached; `origin` is
/// where the request entered herald.
pub(crate) fn status_event(ids: Ids, outcome: &Outcome, error: Option<&ErrorHeaders>, attempts: Attempts, now: DateTime<Utc>, origin: Origin) -> Option<StatusEvent> {
    let status = outcome.status()?;
    let (provider, provider_message_id) = match outcome {
        Outcome::Sent(d) => (Some(d.provider), d.message_id.clone()),
        Outcome::Failed(e) | Outcome::RetryScheduled { error: e, .. } | Outcome::Postponed { error: e, .. } | Outcome::DeadLettered(e) => {
            (e.provider(), None)
        }
        _ => (None, None),
    };
    Some(StatusEvent {
        event_id: ids.event_id,
        user_id: ids.user_id,
        channel: ids.channel,
        status,
        attempt: attempts.count(),
        provider,
        provider_message_id,
        error_class: error.map(|e| e.class),
        error_code: error.map(|e| e.code.clone()),
        error_message: error.map(|e| e.message.clone()),
        occurred_at: now,
        next_attempt_at: outcome.next_attempt_at(),
        recipient: ids.recipient,
        created_at: ids.created_at,
        scheduled_at: ids.scheduled_at,
        sms: ids.sms,
        origin: Some(origin),
        tried: ids.tried,
        locale: ids.locale,
    })
}
