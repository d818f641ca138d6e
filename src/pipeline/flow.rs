//! The per-record flow: decode → suppression → rate limit → route →
//! deliver → outcome.
//!
//! `admit` runs in the consume loop, in partition order, so rate-limit
//! decisions for one user happen in the order the user's events were
//! written. Most records then resolve at once (`resolve_now`); those that
//! call a provider `deliver` concurrently, bounded by their lane. `publish`
//! hands the outcome to the producer.
//!
//! The checks run in this order, each for a reason:
//! 0. provenance: a record another deployment parked on a shared delay
//!    topic is that deployment's to act on, and is skipped; one whose
//!    seal does not prove it herald's is judged as new (see
//!    `record::seal`), so the checks below see it as a fresh request;
//! 1. size: a record herald cannot copy with its headers can go nowhere
//!    but the dead letters, stripped;
//! 2. a parked record that is not due yet goes back to wait, unchecked;
//! 3. an event the send ledger says was sent already is reported SENT
//!    again, with no other check: what happened cannot change;
//! 4. validation (its time zone too), so that a request that can never be
//!    sent is reported INVALID at once (a scheduled one too), and never
//!    uses up a window;
//! 5. cancellation, at every attempt, so a cancel finds a request wherever
//!    it waits;
//! 6. a request scheduled for later, that herald has not parked yet, is
//!    parked;
//! 7. suppression, at every attempt, since a number may opt out while its
//!    retry waits, and before the rate limit, so a skipped send uses no
//!    window; before quiet hours too, so a request that will never be sent
//!    does not wait all night first;
//! 8. quiet hours, at every attempt (a retry that comes due at night waits
//!    too), unless URGENT; before the rate limit, so the window counts
//!    sends when they happen: a night's requests are counted in the
//!    morning, and a full window then defers or rejects them as usual;
//! 9. the rate limit, on the first attempt only.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::clock::Clock;
use crate::codec::decode::{DecodeError, Decoder, Undecodable};
use crate::codec::registry::RegistryError;
use crate::mask::Masked;
use crate::metrics::Metrics;
use crate::model::{Channel, Ids, InvalidReason, Request, SmsCost, Tried};
use crate::pipeline::cancel::Cancellations;
use crate::pipeline::deliver::{Attempt, Delivered, DeliveryError};
use crate::pipeline::ledger::{Calling, Ledger, Sent};
use crate::pipeline::outcome::{self, Deferral, Outcome, ProduceError, Publisher};
use crate::pipeline::quiet::QuietHours;
use crate::pipeline::ratelimit::{self, Decision, Limiter, OverLimit, Pending, StoreError, Subject};
use crate::pipeline::route::{Prepared, Router};
use crate::pipeline::suppression::{Change, Suppressions};
use crate::record::{Consumed, Provenance};
use crate::topics::{Due, Source, Topics};

/// The stages, strung together.
pub struct Pipeline {
    decoder: Decoder,
    limiter: Limiter,
    router: Router,
    publisher: Arc<Publisher>,
    topics: Arc<Topics>,
    suppressions: Arc<Suppressions>,
    cancellations: Arc<Cancellations>,
    max_schedule_ahead: Duration,
    rate_limits: ratelimit::Settings,
    postpone_spread: Duration,
    ledger: Arc<Ledger>,
    metrics: Arc<Metrics>,
    quiet: QuietHours,
    clock: Clock,
}

/// What a [`Pipeline`] is made of.
pub struct Stages {
    pub decoder: Decoder,
    pub limiter: Limiter,
    pub router: Router,
    pub publisher: Arc<Publisher>,
    pub topics: Arc<Topics>,
    pub suppressions: Arc<Suppressions>,
    pub cancellations: Arc<Cancellations>,
    /// Requests scheduled further ahead are INVALID.
    pub max_schedule_ahead: Duration,
    /// What happens to an event over its channel's limit.
    pub rate_limits: ratelimit::Settings,
    /// Records refused by an open circuit come back spread over this long
    /// after it is due to close, not all at once.
    pub postpone_spread: Duration,
    /// Sends already made, read back from the status topic.
    pub ledger: Arc<Ledger>,
    pub metrics: Arc<Metrics>,
    pub quiet: QuietHours,
    /// The time decisions are made by.
    pub clock: Clock,
}

/// Why a record could not be judged at all; nothing must happen to it.
#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    #[error("schema registry: {0}")]
    Registry(#[from] RegistryError),
    #[error("rate-limit store: {0}")]
    RateLimit(#[from] StoreError),
}

/// A record after the in-order steps. Moved, never copied: boxing the
/// request would cost an allocation per record.
#[allow(clippy::large_enum_variant)]
pub enum Admitted {
    /// Ready for its channel's delivery stage; `made` attempts were made
    /// before this one.
    Deliver { request: Request, prepared: Prepared, locale: Option<String>, made: u32 },
    /// Its outcome is already known.
    Settled { ids: Option<Ids>, outcome: Outcome },
    /// A provider accepted it already: its recorded SENT is reported again.
    SentAlready { ids: Ids, sent: Sent },
    /// Due too soon to be parked and read back in time: held in memory by
    /// the loop, and judged again then, with no copy and no status. Boxed:
    /// rare, and every record's `Admitted` is moved a few times.
    Soon(Box<Soon>),
}

impl Admitted {
    pub fn channel(&self) -> Option<Channel> {
        match self {
            Admitted::Deliver { request, .. } => Some(request.channel),
            Admitted::Settled { .. } | Admitted::SentAlready { .. } | Admitted::Soon { .. } => None,
        }
    }
}

impl Pipeline {
    pub fn new(stages: Stages) -> Self {
        let Stages {
            decoder,
            limiter,
            router,
            publisher,
            topics,
            suppressions,
            cancellations,
            max_schedule_ahead,
            rate_limits,
            postpone_spread,
            ledger,
            metrics,
            quiet,
            clock,
        } = stages;
        Pipeline {
            decoder,
            limiter,
            router,
            publisher,
            topics,
            suppressions,
            cancellations,
            max_schedule_ahead,
            rate_limits,
            postpone_spread,
            ledger,
            metrics,
            quiet,
            clock,
        }
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    pub fn topics(&self) -> &Arc<Topics> {
        &self.topics
    }

    pub fn router(&self) -> &Router {
        &self.router
    }

    pub fn publisher(&self) -> &Arc<Publisher> {
        &self.publisher
    }

    pub fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn limiter(&self) -> &Limiter {
        &self.limiter
    }

    /// The state the scrape-time gauges show.
    pub fn state(&self) -> crate::metrics::State {
        let mut state = crate::metrics::State {
            suppressions: self.suppressions.len(),
            producer_queue: rdkafka::producer::Producer::in_flight_count(self.publisher.producer()),
            ..Default::default()
        };
        self.router.state(&mut state);
        state
    }

    /// A requests partition was revoked: its users may be counted
    /// elsewhere now.
    pub fn forget_counts(&self, partition: i32) {
        self.limiter.forget_partition(partition);
    }

    /// Runs the checks in order. A counted event comes with its pending
    /// rate-limit write, which the record's offset must wait for. Errors
    /// only when the record cannot be judged at all (the schema registry or
    /// the rate-limit store is down).
    pub async fn admit(
        &self,
        record: &Consumed,
        source: Source,
        now: DateTime<Utc>,
    ) -> Result<(Admitted, Option<Pending>), AdmitError> {
        let settled = |ids, outcome| Ok((Admitted::Settled { ids, outcome }, None));
        match record.provenance {
            Provenance::Foreign => {
                self.metrics.foreign(record.topic.as_str());
                return settled(None, Outcome::Foreign);
            }
            Provenance::Unsealed(why) => self.metrics.unsealed(why),
            Provenance::Request | Provenance::Own => {}
        }
        if let Some(error) = &record.unreadable {
            return settled(None, Outcome::Undecodable(Undecodable::Envelope(error.clone())));
        }
        let request = match self.decoder.decode(record.key.as_deref(), record.payload.as_deref()).await {
            Ok(request) => request,
            Err(DecodeError::Unavailable(e)) => return Err(e.into()),
            Err(DecodeError::Undecodable(reason)) => return settled(None, Outcome::Undecodable(reason)),
            Err(DecodeError::Invalid { ids, reason }) => return settled(Some(ids), Outcome::Invalid(reason)),
        };
        let ids = || Some(request.ids());
        if !self.publisher.fits(record) {
            let reason = InvalidReason::RecordTooLarge { bytes: record.size(), max: self.publisher.max_record_bytes() };
            return settled(ids(), Outcome::Invalid(reason));
        }
        // The loop let it through (see `ingest`), so it is due, or its
        // topic's delay ran out first.
        if let Due::ParkAgain { not_before } = self.topics.due(source, record.envelope.not_before, record.appended, now) {
            // Only just short of its time (a timer and the wall clock a
            // hair apart): held, not copied again.
            return self.wait(None, Outcome::Held { hold: self.hold_for(not_before, now), not_before }, now);
        }
        // Sent already, before a crash or by this partition's last owner:
        // before every other check, since none of them may change what
        // happened (a template removed, quiet hours begun, a late cancel).
        if let Some(sent) = self.ledger.sent(record.partition, &request.event_id) {
            return Ok((Admitted::SentAlready { ids: request.into_ids(), sent }, None));
        }
        let (prepared, locale) = match self.router.prepare(&request) {
            Ok(prepared) => prepared,
            Err(reason) => return settled(ids(), Outcome::Invalid(reason)),
        };
        let zone = match self.quiet.zone(&request) {
            Ok(zone) => zone,
            Err(reason) => return settled(ids(), Outcome::Invalid(reason)),
        };
        let ids = || Some(about(request.ids(), &prepared, locale.clone(), Vec::new()));
        if request.scheduled_at.is_some_and(|t| (t - now).to_std().is_ok_and(|ahead| ahead > self.max_schedule_ahead)) {
            return settled(ids(), Outcome::Invalid(InvalidReason::ScheduledTooFar { max: self.max_schedule_ahead }));
        }
        if self.cancellations.is_cancelled(&request.event_id) {
            return settled(ids(), Outcome::Cancelled);
        }
        if let (false, Some(not_before)) = (record.parked_by_us(), request.scheduled_at.filter(|t| *t > now)) {
            return self.wait(ids(), Outcome::Scheduled { hold: self.hold_for(not_before, now), not_before }, now);
        }
        if let Some(reason) = self.suppressions.check(request.channel, &request.recipient) {
            return settled(ids(), Outcome::Suppressed(reason));
        }
        if let Some(until) = self.quiet.until(&request, zone, now) {
            let outcome = Outcome::Deferred { hold: self.hold_for(until, now), not_before: until, why: Deferral::QuietHours(zone) };
            return self.wait(ids(), outcome, now);
        }
        let made = record.envelope.attempts;
        // Only the first attempt counts: a retry was counted when it was new.
        let mut count = None;
        if made == 0 {
            let subject = Subject {
                user_id: &request.user_id,
                channel: request.channel,
                event_id: &request.event_id,
                partition: record.partition,
            };
            match self.limiter.check(subject, now).await? {
                (Decision::Allow, pending) => count = pending,
                (Decision::Deny { until }, _) => {
                    self.metrics.rate_limited(request.channel);
                    let outcome = match self.rate_limits.of(request.channel).over {
                        OverLimit::Reject => Outcome::RateLimited { until },
                        OverLimit::Defer => Outcome::Deferred { hold: self.hold_for(until, now), not_before: until, why: Deferral::Window },
                    };
                    return self.wait(ids(), outcome, now);
                }
            }
        }
        Ok((Admitted::Deliver { request, prepared, locale, made }, count))
    }

    /// A record that must wait: parked with `outcome`, unless it is due
    /// so soon that a copy could not be written and read back in time.
    fn wait(&self, ids: Option<Ids>, outcome: Outcome, now: DateTime<Utc>) -> Result<(Admitted, Option<Pending>), AdmitError> {
        match outcome.not_before() {
            Some(until) if (until - now).to_std().is_ok_and(|wait| wait <= self.topics.soon()) => {
                Ok((Admitted::Soon(Box::new(Soon { until, ids, otherwise: outcome })), None))
            }
            _ => Ok((Admitted::Settled { ids, outcome }, None)),
        }
    }

    fn hold_for(&self, not_before: DateTime<Utc>, now: DateTime<Utc>) -> usize {
        self.topics.wait_for((not_before - now).to_std().unwrap_or_default())
    }

    /// The outcome, when it needs no waiting: a settled record, or a
    /// delivery its lane answers without a provider call. Otherwise the
    /// request, for [`Pipeline::deliver`].
    #[allow(clippy::result_large_err)]
    pub fn resolve_now(&self, record: &Consumed, admitted: Admitted, now: DateTime<Utc>) -> Result<Resolved, ToDeliver> {
        match admitted {
            Admitted::Settled { ids, outcome } => {
                if let (Some(ids), Outcome::Invalid(reason)) = (&ids, &outcome) {
                    tracing::warn!(message = "Invalid request.", event_id = ids.event_id, channel = ids.channel.map(Channel::symbol), %reason);
                }
                Ok(Resolved { ids, outcome, attempts: record.envelope.attempts, now, suppress: None })
            }
            Admitted::Deliver { request, prepared, locale, made } => {
                // `made` is bounded by the envelope (`MAX_ATTEMPTS`).
                let attempt = Attempt { number: made.saturating_add(1), partition: record.partition };
                if let Some(delivered) = self.router.answer_now(request.channel) {
                    return Ok(self.decided(request, &prepared, locale, attempt, Ok(delivered), Vec::new(), now));
                }
                // In order, in the loop: of copies due together, the first
                // claims the call, and the others are dropped.
                let Some(calling) = self.ledger.begin_call(record.partition, &request.event_id) else {
                    tracing::debug!(message = "Another copy is being sent; this one is dropped.", event_id = request.event_id);
                    return Ok(Resolved { ids: None, outcome: Outcome::InFlight, attempts: record.envelope.attempts, now, suppress: None });
                };
                Err(ToDeliver { request, prepared, locale, attempt, calling })
            }
            // Held no longer (the hold was full): parked after all.
            Admitted::Soon(soon) => {
                let Soon { ids, otherwise, .. } = *soon;
                Ok(Resolved { ids, outcome: otherwise, attempts: record.envelope.attempts, now, suppress: None })
            }
            Admitted::SentAlready { ids, sent: Sent { delivered, attempt } } => {
                tracing::debug!(message = "Sent already; reporting it again without a call.", event_id = ids.event_id, attempt);
                Ok(Resolved { ids: Some(ids), outcome: Outcome::Sent(delivered), attempts: attempt, now, suppress: None })
            }
        }
    }

    /// Calls the provider, and decides. The caller holds the lane's slot.
    pub async fn deliver(&self, to: ToDeliver) -> Resolved {
        let ToDeliver { request, prepared, locale, attempt, calling } = to;
        let mut tried = Vec::new();
        let result = self.router.call(&prepared, &request, attempt, &mut tried).await;
        let resolved = self.decided(request, &prepared, locale, attempt, result, tried, self.clock.now());
        if let (Outcome::Sent(delivered), Some(ids)) = (&resolved.outcome, &resolved.ids) {
            let sent = Sent { delivered: delivered.clone(), attempt: resolved.attempts };
            self.ledger.record(attempt.partition, &ids.event_id, sent, resolved.now);
        }
        // The outcome is recorded: another copy finds it from here on.
        drop(calling);
        resolved
    }

    /// `now` is the one clock reading, so a status's next attempt is
    /// exactly its delay after it.
    #[allow(clippy::too_many_arguments)]
    fn decided(
        &self,
        request: Request,
        prepared: &Prepared,
        locale: Option<String>,
        attempt: Attempt,
        result: Result<Delivered, DeliveryError>,
        tried: Vec<Tried>,
        now: DateTime<Utc>,
    ) -> Resolved {
        let jitter = self.postpone_spread.mul_f64(fastrand::f64());
        let outcome = outcome::decide(result, attempt.number, &self.topics, now, jitter);
        let attempts = outcome.attempts_after(attempt.number);
        log(&request, &outcome, attempt.number);
        let suppress = outcome.suppresses().map(|entry| {
            let change = Change { channel: request.channel, recipient: request.recipient.clone(), entry: Some(entry) };
            // At once, so this instance's next send to the recipient is
            // skipped without waiting for the topic to come round.
            self.suppressions.apply(&change);
            change
        });
        Resolved { ids: Some(about(request.into_ids(), prepared, locale, tried)), outcome, attempts, now, suppress }
    }

    /// Hands the outcome to the producer now; the future completes once it
    /// is durable, or fails when nothing can be written any more.
    pub fn publish(&self, record: &Consumed, resolved: Resolved) -> impl Future<Output = Result<Option<i64>, ProduceError>> + Send + 'static {
        let Resolved { ids, outcome, attempts, now, suppress } = resolved;
        if let (None, Outcome::Undecodable(reason)) = (&ids, &outcome) {
            tracing::warn!(message = "Undecodable record dead-lettered.", topic = record.topic, partition = record.partition, offset = record.offset, %reason);
        }
        self.publisher.publish(record, ids, &outcome, attempts, now, suppress.as_ref())
    }
}

/// What the status events of a checked request say about it.
fn about(ids: Ids, prepared: &Prepared, locale: Option<String>, tried: Vec<Tried>) -> Ids {
    let sms = match prepared {
        Prepared::Sms(text) => Some(SmsCost { segments: text.segments.parts as u32, encoding: text.segments.encoding }),
        Prepared::Push(_) => None,
    };
    Ids { sms, tried, locale, ..ids }
}

/// A record due too soon to be parked.
pub struct Soon {
    pub until: DateTime<Utc>,
    ids: Option<Ids>,
    /// Parked after all, when the hold is full.
    otherwise: Outcome,
}

/// A validated request whose provider call is still to be made.
pub struct ToDeliver {
    request: Request,
    prepared: Prepared,
    locale: Option<String>,
    /// Held until the outcome is recorded in the ledger.
    calling: Calling,
    attempt: Attempt,
}

impl ToDeliver {
    pub fn channel(&self) -> Channel {
        self.prepared.channel()
    }

    pub fn partition(&self) -> i32 {
        self.attempt.partition
    }
}

/// What a record came to: its outcome, ready to publish.
#[derive(Debug)]
pub struct Resolved {
    ids: Option<Ids>,
    outcome: Outcome,
    /// Delivery attempts made once the outcome was reached: the status's
    /// `attempt`, and the next copy's `herald-attempts`.
    attempts: u32,
    now: DateTime<Utc>,
    /// A recipient to add to the suppression list, durably with the outcome.
    suppress: Option<Change>,
}

fn log(request: &Request, outcome: &Outcome, attempt: u32) {
    let recipient = Masked(&request.recipient);
    let (event_id, channel) = (request.event_id.as_str(), request.channel.symbol());
    match outcome {
        Outcome::Sent(d) => tracing::debug!(message = "Delivered.", event_id, channel, %recipient, attempt, provider = %d.provider),
        Outcome::RetryScheduled { error, not_before, .. } => {
            tracing::info!(message = "Delivery failed; retry scheduled.", event_id, channel, %recipient, attempt, %error, next_attempt_at = %not_before)
        }
        Outcome::Postponed { error, not_before, .. } => {
            tracing::debug!(message = "Provider not called; postponed.", event_id, channel, %recipient, %error, next_attempt_at = %not_before)
        }
        Outcome::Failed(error) | Outcome::DeadLettered(error) => {
            tracing::warn!(message = "Delivery failed for good.", event_id, channel, %recipient, attempt, %error)
        }
        _ => {}
    }
}
