//! Building the `notification.status` event for an outcome.

use chrono::{DateTime, Utc};

use super::{Ids, Outcome};
use crate::model::StatusEvent;

/// The status event for `outcome`, if it has one. `attempt` is the delivery
/// attempt the outcome belongs to; it is reported as 0 when nothing was sent.
pub fn status_event(ids: &Ids, outcome: &Outcome, attempt: u32, now: DateTime<Utc>) -> Option<StatusEvent> {
    let status = outcome.status()?;
    let (provider, provider_message_id, attempted) = match outcome {
        Outcome::Sent(d) => (Some(d.provider), d.message_id.clone(), true),
        Outcome::Failed(e) | Outcome::RetryScheduled { error: e, .. } | Outcome::DeadLettered(e) => (e.provider(), None, true),
        _ => (None, None, false),
    };
    let error = outcome.error();
    Some(StatusEvent {
        event_id: ids.event_id.clone(),
        user_id: ids.user_id.clone(),
        channel: ids.channel,
        status,
        attempt: if attempted { attempt } else { 0 },
        provider: provider.map(|p| p.name().to_owned()),
        provider_message_id,
        error_class: error.as_ref().map(|(class, _, _)| *class),
        error_code: error.as_ref().map(|(_, code, _)| code.clone()),
        error_message: error.map(|(_, _, message)| message),
        occurred_at: now,
        next_attempt_at: outcome.not_before(),
    })
}
