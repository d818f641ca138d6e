//! The per-record flow: decode → rate limit → route → deliver → outcome.
//!
//! `admit` runs in the consume loop, in partition order, so rate-limit
//! decisions for one user happen in the order the user's events were
//! written. Most records then resolve at once (`resolve_now`); those that
//! call a provider `deliver` concurrently, bounded by their lane. `publish`
//! hands the outcome to the producer.

use std::future::Future;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::decode::{DecodeError, Decoder};
use crate::deliver::{Delivered, DeliveryError, Prepared};
use crate::mask::Masked;
use crate::model::{Channel, Request};
use crate::outcome::{self, Consumed, Ids, Outcome, Publisher};
use crate::ratelimit::{Decision, Limiter};
use crate::registry::RegistryError;
use crate::route::Router;
use crate::topics::{Source, Topics};

pub struct Pipeline {
    pub decoder: Decoder,
    pub limiter: Limiter,
    pub router: Router,
    pub publisher: Publisher,
    pub topics: Arc<Topics>,
    pub sms_max_chars: usize,
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
    /// Decode, hold if not yet due, rate-limit. Errors only when the record
    /// cannot be judged at all (the schema registry is down): then nothing
    /// must happen to it.
    pub async fn admit(&self, record: &Consumed, source: Source, now: DateTime<Utc>) -> Result<Admitted, RegistryError> {
        let request = match self.decoder.decode(record.key.as_deref(), record.payload.as_deref()).await {
            Ok(request) => request,
            Err(DecodeError::Unavailable(e)) => return Err(e),
            Err(DecodeError::Undecodable(reason)) => {
                return Ok(Admitted::Settled { ids: None, outcome: Outcome::Undecodable(reason) })
            }
            Err(DecodeError::Invalid { event_id, user_id, reason }) => {
                let ids = Ids { event_id, user_id, channel: None };
                return Ok(Admitted::Settled { ids: Some(ids), outcome: Outcome::Invalid(reason) });
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
            return Ok(Admitted::Settled { ids: ids(), outcome });
        }
        // Only the first attempt counts: a retry was counted when it was new.
        if attempt == 1 {
            if let Decision::Deny { until } = self.limiter.check(&request.user_id, request.channel, &request.event_id, now) {
                return Ok(Admitted::Settled { ids: ids(), outcome: Outcome::RateLimited { until } });
            }
        }
        Ok(Admitted::Deliver { request, attempt })
    }

    /// The outcome, when it needs no waiting: a settled record, or a
    /// delivery its lane answers without a provider call. Otherwise the
    /// request and attempt, for [`Pipeline::deliver`].
    pub fn resolve_now(&self, record: &Consumed, admitted: Admitted) -> Result<Resolved, (Request, u32)> {
        match admitted {
            Admitted::Settled { ids, outcome } => {
                Ok(Resolved { ids, outcome, attempt: record.envelope.attempts, now: Utc::now() })
            }
            Admitted::Deliver { request, attempt } => {
                match self.router.lane(request.channel).prepare(request.channel, &request, self.sms_max_chars) {
                    Prepared::Answered(result) => Ok(self.decided(request, attempt, result)),
                    Prepared::Call(_) => Err((request, attempt)),
                }
            }
        }
    }

    /// Calls the provider, and decides.
    pub async fn deliver(&self, request: Request, attempt: u32) -> Resolved {
        let lane = self.router.lane(request.channel);
        let result = match lane.prepare(request.channel, &request, self.sms_max_chars) {
            Prepared::Answered(result) => result,
            Prepared::Call(call) => lane.call(call, &request).await,
        };
        self.decided(request, attempt, result)
    }

    fn decided(&self, request: Request, attempt: u32, result: Result<Delivered, DeliveryError>) -> Resolved {
        // One clock reading, so a status's next attempt is exactly its delay after it.
        let now = Utc::now();
        let outcome = outcome::decide(result, attempt, &self.topics, now);
        log(&request, &outcome, attempt);
        Resolved { ids: Some(ids_of(&request)), outcome, attempt, now }
    }

    /// Hands the outcome to the producer now; the future completes once it
    /// is durable.
    pub fn publish(&self, record: &Consumed, resolved: Resolved) -> impl Future<Output = ()> + Send + 'static {
        let Resolved { ids, outcome, attempt, now } = resolved;
        if let (None, Outcome::Undecodable(reason)) = (&ids, &outcome) {
            tracing::warn!(message = "Undecodable record dead-lettered.", topic = record.topic, partition = record.partition, offset = record.offset, %reason);
        }
        self.publisher.publish(record, ids.as_ref(), &outcome, attempt, now)
    }
}

/// What a record came to: its outcome, ready to publish.
pub struct Resolved {
    ids: Option<Ids>,
    outcome: Outcome,
    /// The attempt the outcome belongs to (from 1).
    attempt: u32,
    now: DateTime<Utc>,
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
