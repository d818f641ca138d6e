//! The per-record flow: decode → suppression → rate limit → route →
//! deliver → outcome.
//!
//! `admit` runs in the consume loop, in partition order, so rate-limit
//! decisions for one user happen in the order the user's events were
//! written. Most records then resolve at once (`resolve_now`); those that
//! call a provider `deliver` concurrently, bounded by their lane. `publish`
//! hands the outcome to the producer.

use std::future::Future;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::config::OverLimit;
use crate::decode::{DecodeError, Decoder};
use crate::deliver::{Delivered, DeliveryError, Payload, Prepared, SmsRules};
use crate::mask::Masked;
use crate::model::{Channel, Request};
use crate::outcome::{self, Consumed, Ids, Outcome, Publisher};
use crate::ratelimit::{Decision, Limiter, Pending, StoreError, Subject};
use crate::registry::RegistryError;
use crate::route::Router;
use crate::suppression::{Change, Suppressions};
use crate::topics::{Source, Topics};

pub struct Pipeline {
    pub decoder: Decoder,
    pub limiter: Limiter,
    pub router: Router,
    pub publisher: Arc<Publisher>,
    pub topics: Arc<Topics>,
    pub sms: SmsRules,
    pub suppressions: Arc<Suppressions>,
    /// Per channel, what happens to an event over its limit.
    pub over_limit: [OverLimit; Channel::ALL.len()],
}

/// Why a record could not be judged at all; nothing must happen to it.
#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    #[error("schema registry: {0}")]
    Registry(#[from] RegistryError),
    #[error("rate-limit store: {0}")]
    RateLimit(#[from] StoreError),
}

/// A record after the in-order steps.
pub enum Admitted {
    /// Ready for its channel's delivery stage, as delivery attempt `attempt`.
    Deliver { request: Request, attempt: u32 },
    /// Its outcome is already known.
    Settled { ids: Option<Ids>, outcome: Outcome },
}

impl Admitted {
    pub fn channel(&self) -> Option<Channel> {
        match self {
            Admitted::Deliver { request, .. } => Some(request.channel),
            Admitted::Settled { .. } => None,
        }
    }
}

impl Pipeline {
    /// Decode, hold if not yet due, rate-limit. A counted event comes with
    /// its pending rate-limit write, which the record's offset must wait
    /// for. Errors only when the record cannot be judged at all (the schema
    /// registry or the rate-limit store is down).
    pub async fn admit(
        &self,
        record: &Consumed,
        source: Source,
        now: DateTime<Utc>,
    ) -> Result<(Admitted, Option<Pending>), AdmitError> {
        let settled = |ids, outcome| Ok((Admitted::Settled { ids, outcome }, None));
        let request = match self.decoder.decode(record.key.as_deref(), record.payload.as_deref()).await {
            Ok(request) => request,
            Err(DecodeError::Unavailable(e)) => return Err(e.into()),
            Err(DecodeError::Undecodable(reason)) => return settled(None, Outcome::Undecodable(reason)),
            Err(DecodeError::Invalid { event_id, user_id, reason }) => {
                return settled(Some(Ids { event_id, user_id, channel: None }), Outcome::Invalid(reason));
            }
        };
        let ids = || Some(ids_of(&request));
        let attempt = record.envelope.attempts + 1;
        let due = match source {
            Source::Requested => request.scheduled_at,
            Source::Retry(_) => record.envelope.not_before,
        };
        if let Some(not_before) = due.filter(|t| *t > now) {
            let hold = self.topics.hold_for((not_before - now).to_std().unwrap_or_default());
            let outcome = match source {
                Source::Requested => Outcome::Scheduled { hold, not_before },
                Source::Retry(_) => Outcome::Held { hold, not_before },
            };
            return settled(ids(), outcome);
        }
        // Checked at every attempt: a number may opt out while its retry waits.
        // Before the rate limit, so a skipped send does not use the window.
        if let Some(reason) = self.suppressions.check(request.channel, &request.recipient) {
            return settled(ids(), Outcome::Suppressed(reason));
        }
        // Only the first attempt counts: a retry was counted when it was new.
        let mut count = None;
        if attempt == 1 {
            let subject = Subject {
                user_id: &request.user_id,
                channel: request.channel,
                event_id: &request.event_id,
                partition: record.partition,
            };
            match self.limiter.check(subject, now).await? {
                (Decision::Allow, pending) => count = pending,
                (Decision::Deny { until }, _) => {
                    let outcome = match self.over_limit[request.channel.index()] {
                        OverLimit::Reject => Outcome::RateLimited { until },
                        OverLimit::Defer => {
                            let hold = self.topics.hold_for((until - now).to_std().unwrap_or_default());
                            Outcome::Deferred { hold, not_before: until }
                        }
                    };
                    return settled(ids(), outcome);
                }
            }
        }
        Ok((Admitted::Deliver { request, attempt }, count))
    }

    /// The outcome, when it needs no waiting: a settled record, or a
    /// delivery its lane answers without a provider call. Otherwise the
    /// validated request, for [`Pipeline::deliver`].
    pub fn resolve_now(&self, record: &Consumed, admitted: Admitted) -> Result<Resolved, ToDeliver> {
        match admitted {
            Admitted::Settled { ids, outcome } => {
                Ok(Resolved { ids, outcome, attempt: record.envelope.attempts, now: Utc::now(), suppress: None })
            }
            Admitted::Deliver { request, attempt } => {
                match self.router.lane(request.channel).prepare(request.channel, &request, &self.sms) {
                    Prepared::Answered(result) => Ok(self.decided(request, attempt, result)),
                    Prepared::Call(payload) => Err(ToDeliver { payload, request, attempt }),
                }
            }
        }
    }

    /// Calls the provider, and decides.
    pub async fn deliver(&self, to: ToDeliver) -> Resolved {
        let ToDeliver { request, attempt, payload } = to;
        let result = self.router.lane(request.channel).call(&payload, &request, attempt).await;
        self.decided(request, attempt, result)
    }

    fn decided(&self, request: Request, attempt: u32, result: Result<Delivered, DeliveryError>) -> Resolved {
        // One clock reading, so a status's next attempt is exactly its delay after it.
        let now = Utc::now();
        let outcome = outcome::decide(result, attempt, &self.topics, now);
        log(&request, &outcome, attempt);
        let suppress = outcome.suppresses().map(|entry| {
            let change = Change { channel: request.channel, recipient: request.recipient.clone(), entry: Some(entry) };
            // At once, so this instance's next send to the recipient is
            // skipped without waiting for the topic to come round.
            self.suppressions.apply(&change);
            change
        });
        Resolved { ids: Some(ids_of(&request)), outcome, attempt, now, suppress }
    }

    /// Hands the outcome to the producer now; the future completes once it
    /// is durable.
    pub fn publish(&self, record: &Consumed, resolved: Resolved) -> impl Future<Output = ()> + Send + 'static {
        let Resolved { ids, outcome, attempt, now, suppress } = resolved;
        if let (None, Outcome::Undecodable(reason)) = (&ids, &outcome) {
            tracing::warn!(message = "Undecodable record dead-lettered.", topic = record.topic, partition = record.partition, offset = record.offset, %reason);
        }
        self.publisher.publish(record, ids.as_ref(), &outcome, attempt, now, suppress.as_ref())
    }
}

/// A validated request whose provider call is still to be made.
pub struct ToDeliver {
    request: Request,
    attempt: u32,
    payload: Payload,
}

/// What a record came to: its outcome, ready to publish.
pub struct Resolved {
    ids: Option<Ids>,
    outcome: Outcome,
    /// The attempt the outcome belongs to (from 1).
    attempt: u32,
    now: DateTime<Utc>,
    /// A recipient to add to the suppression list, durably with the outcome.
    suppress: Option<Change>,
}

fn ids_of(request: &Request) -> Ids {
    Ids { event_id: request.event_id.clone(), user_id: request.user_id.clone(), channel: Some(request.channel) }
}

fn log(request: &Request, outcome: &Outcome, attempt: u32) {
    let recipient = Masked(&request.recipient);
    let (event_id, channel) = (request.event_id.as_str(), request.channel.symbol());
    match outcome {
        Outcome::Sent(d) => tracing::debug!(message = "Delivered.", event_id, channel, %recipient, attempt, provider = %d.provider),
        Outcome::RetryScheduled { error, not_before, .. } => {
            tracing::info!(message = "Delivery failed; retry scheduled.", event_id, channel, %recipient, attempt, %error, next_attempt_at = %not_before)
        }
        Outcome::Failed(error) | Outcome::DeadLettered(error) => {
            tracing::warn!(message = "Delivery failed for good.", event_id, channel, %recipient, attempt, %error)
        }
        Outcome::Invalid(reason) => tracing::warn!(message = "Invalid request.", event_id, channel, %recipient, %reason),
        _ => {}
    }
}
