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
use crate::model::{Attempts, Channel, Ids, InvalidReason, Request, SmsCost, Tried};
use crate::pipeline::cancel::Cancellations;
use crate::pipeline::deliver::{Attempt, Delivered, DeliveryError};
use crate::pipeline::ledger::{self, CallClaim, Ledger, Sent};
use crate::pipeline::route::SlotWait;
use crate::record::Seal;
use rdkafka::consumer::{ConsumerContext, StreamConsumer};
use rdkafka::producer::FutureProducer;
use rdkafka::ClientConfig;
use tokio::sync::OwnedSemaphorePermit;
use crate::pipeline::outcome::{self, Deferral, Outcome, ProduceError, Publisher};
use crate::pipeline::quiet::QuietHours;
use crate::pipeline::ratelimit::{self, Decision, Limiter, OverLimit, Pending, StoreError, Subject};
use crate::pipeline::route::{Prepared, Router};
use crate::pipeline::suppression::{Change, Suppressions};
use crate::record::{Consumed, Provenance};
use crate::topics::{Due, Topics};

/// The stages, strung together. Built by `App::build`; its driver (the
/// consume loop) asks it to do things, and never reaches for its parts.
pub(crate) struct Pipeline {
    pub(super) decoder: Decoder,
    pub(super) limiter: Limiter,
    pub(super) router: Router,
    pub(super) publisher: Arc<Publisher>,
    pub(super) topics: Arc<Topics>,
    pub(super) suppressions: Arc<Suppressions>,
    pub(super) cancellations: Arc<Cancellations>,
    /// Requests scheduled further ahead are INVALID.
    pub(super) max_schedule_ahead: Duration,
    /// What happens to an event over its channel's limit.
    pub(super) rate_limits: ratelimit::Settings,
    /// Records refused by an open circuit come back spread over this long
    /// after it is due to close, not all at once.
    pub(super) postpone_spread: Duration,
    /// Sends already made, read back from the status topic.
    pub(super) ledger: Arc<Ledger>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) quiet: QuietHours,
    /// The time decisions are made by.
    pub(super) clock: Clock,
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
pub(crate) enum Admitted {
    /// Ready for its channel's delivery stage, after `attempts`.
    Deliver { request: Request, prepared: Prepared, locale: Option<String>, attempts: Attempts },
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
    pub(crate) fn channel(&self) -> Option<Channel> {
        match self {
            Admitted::Deliver { request, .. } => Some(request.channel),
            Admitted::Settled { .. } | Admitted::SentAlready { .. } | Admitted::Soon { .. } => None,
        }
    }
}

impl Pipeline {
    /// The topics, by role.
    pub(crate) fn topics(&self) -> &Arc<Topics> {
        &self.topics
    }

    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The time now, as decisions see it.
    pub(crate) fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// What proves a parked record this deployment's.
    pub(crate) fn seal(&self) -> &Seal {
        self.publisher.seal()
    }

    /// The producer every outcome goes out on.
    pub(crate) fn producer(&self) -> &FutureProducer {
        self.publisher.producer()
    }

    /// Waits up to `timeout` for every outcome handed to the producer to be
    /// acknowledged.
    pub(crate) fn flush(&self, timeout: Duration) -> rdkafka::error::KafkaResult<()> {
        rdkafka::producer::Producer::flush(self.publisher.producer(), timeout)
    }

    /// Whether the rate-limit store answers within `timeout`; `None`
    /// without one (limits kept in memory).
    pub(crate) async fn store_reachable(&self, timeout: Duration) -> Option<Result<(), String>> {
        self.limiter.reachable(timeout).await
    }

    /// Reads `partitions` of the status topic into the send ledger, from
    /// the marks committed with them; answers where each ended.
    pub(crate) fn restore_ledger<C: ConsumerContext + 'static>(&self, consumer: Arc<StreamConsumer<C>>, reader: ClientConfig, partitions: Vec<i32>) -> impl Future<Output = Vec<(i32, i64)>> + Send + 'static {
        ledger::restore(consumer, reader, self.topics.status.clone(), partitions, self.ledger.clone(), self.seal().clone())
    }

    /// A partition was revoked: its users may be counted, and its sends
    /// recorded, elsewhere now.
    pub(crate) fn forget_partition(&self, partition: i32) {
        self.limiter.forget_partition(partition);
    }

    /// A status partition was revoked: its ledger is another instance's.
    pub(crate) fn forget_ledger(&self, partition: i32) {
        self.ledger.forget(partition);
    }

    /// Room for a record in `lane` (`None`: records that need no call),
    /// if there is some now.
    pub(crate) fn lane_room_now(&self, lane: Option<Channel>) -> Option<OwnedSemaphorePermit> {
        self.router.try_admit(lane)
    }

    /// Room for a record in `lane`, once there is some.
    pub(crate) async fn lane_room(&self, lane: Option<Channel>) -> OwnedSemaphorePermit {
        self.router.admit(lane).await
    }

    /// Whether `lane` has room again (a quarter of it free).
    pub(crate) fn lane_has_room(&self, lane: Option<Channel>) -> bool {
        self.router.has_room(lane)
    }

    /// A place in `channel`'s queue for a provider call, taken in the
    /// order records are read.
    pub(crate) fn queue_for_slot(&self, channel: Channel) -> SlotWait {
        self.router.queue_for_slot(channel)
    }

    /// Shutdown's deadline passed: no call starts from now on.
    pub(crate) fn stop_calls(&self) {
        self.router.stop_calls()
    }

    /// The state the scrape-time gauges show.
    pub(crate) fn state(&self) -> crate::metrics::State {
        let mut state = crate::metrics::State {
            suppressions: self.suppressions.len(),
            producer_queue: rdkafka::producer::Producer::in_flight_count(self.publisher.producer()),
            ..Default::default()
        };
        self.router.state(&mut state);
        state
    }

    /// Runs the checks in order. A counted event comes with its pending
    /// rate-limit write, which the record's offset must wait for. Errors
    /// only when the record cannot be judged at all (the schema registry or
    /// the rate-limit store is down).
    pub(crate) async fn admit(
        &self,
        record: &Consumed,
        due: Due,
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
        if let Due::ParkAgain { not_before } = due {
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
        let attempts = record.envelope.attempts;
        let mut count = None;
        if attempts.is_new() {
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
        Ok((Admitted::Deliver { request, prepared, locale, attempts }, count))
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
    pub(crate) fn resolve_now(&self, record: &Consumed, admitted: Admitted, now: DateTime<Utc>) -> Result<Resolved, ToDeliver> {
        match admitted {
            Admitted::Settled { ids, outcome } => {
                if let (Some(ids), Outcome::Invalid(reason)) = (&ids, &outcome) {
                    tracing::warn!(message = "Invalid request.", event_id = ids.event_id, channel = ids.channel.map(Channel::symbol), %reason);
                }
                Ok(Resolved { ids, outcome, attempts: record.envelope.attempts, now, suppress: None })
            }
            Admitted::Deliver { request, prepared, locale, attempts } => {
                if let Some(delivered) = self.router.answer_now(request.channel) {
                    let call = Call { attempts, partition: record.partition };
                    return Ok(self.decided(request, &prepared, locale, call, Ok(delivered), Vec::new(), now));
                }
                // In order, in the loop: of copies due together, the first
                // claims the call, and the others are dropped.
                let Some(calling) = self.ledger.begin_call(record.partition, &request.event_id) else {
                    tracing::debug!(message = "Another copy is being sent; this one is dropped.", event_id = request.event_id);
                    return Ok(Resolved { ids: None, outcome: Outcome::InFlight, attempts: record.envelope.attempts, now, suppress: None });
                };
                Err(ToDeliver { request, prepared, locale, call: Call { attempts, partition: record.partition }, calling })
            }
            // Held no longer (the hold was full): parked after all.
            Admitted::Soon(soon) => {
                let Soon { ids, otherwise, .. } = *soon;
                Ok(Resolved { ids, outcome: otherwise, attempts: record.envelope.attempts, now, suppress: None })
            }
            Admitted::SentAlready { ids, sent: Sent { delivered, attempts } } => {
                tracing::debug!(message = "Sent already; reporting it again without a call.", event_id = ids.event_id, attempt = attempts.count());
                Ok(Resolved { ids: Some(ids), outcome: Outcome::Sent(delivered), attempts, now, suppress: None })
            }
        }
    }

    /// Calls the provider, and decides. The caller holds the lane's slot.
    pub(crate) async fn deliver(&self, to: ToDeliver) -> Resolved {
        let ToDeliver { request, prepared, locale, call, calling } = to;
        let mut tried = Vec::new();
        let attempt = Attempt { number: call.attempts.next(), partition: call.partition };
        let result = self.router.call(&prepared, &request, attempt, &mut tried).await;
        let resolved = self.decided(request, &prepared, locale, call, result, tried, self.clock.now());
        if let (Outcome::Sent(delivered), Some(ids)) = (&resolved.outcome, &resolved.ids) {
            let sent = Sent { delivered: delivered.clone(), attempts: resolved.attempts };
            self.ledger.record(call.partition, &ids.event_id, sent, resolved.now);
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
        call: Call,
        result: Result<Delivered, DeliveryError>,
        tried: Vec<Tried>,
        now: DateTime<Utc>,
    ) -> Resolved {
        let jitter = self.postpone_spread.mul_f64(fastrand::f64());
        let outcome = outcome::decide(result, call.attempts, &self.topics, now, jitter);
        let attempts = call.attempts.after(outcome.called_provider());
        log(&request, &outcome, call.attempts.next());
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
    pub(crate) fn publish(&self, record: &Consumed, resolved: Resolved) -> impl Future<Output = Result<Option<i64>, ProduceError>> + Send + 'static {
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
pub(crate) struct Soon {
    pub until: DateTime<Utc>,
    ids: Option<Ids>,
    /// Parked after all, when the hold is full.
    otherwise: Outcome,
}

/// A validated request whose provider call is still to be made.
pub(crate) struct ToDeliver {
    request: Request,
    prepared: Prepared,
    locale: Option<String>,
    /// Held until the outcome is recorded in the ledger.
    calling: CallClaim,
    call: Call,
}

/// Which call a request's next is: after how many attempts, and for which
/// requests partition.
#[derive(Debug, Clone, Copy)]
struct Call {
    attempts: Attempts,
    partition: i32,
}

impl ToDeliver {
    pub(crate) fn channel(&self) -> Channel {
        self.prepared.channel()
    }

    pub(crate) fn partition(&self) -> i32 {
        self.call.partition
    }
}

/// What a record came to: its outcome, ready to publish.
#[derive(Debug)]
pub(crate) struct Resolved {
    ids: Option<Ids>,
    outcome: Outcome,
    /// Delivery attempts made once the outcome was reached: the status's
    /// `attempt`, and the next copy's `herald-attempts`.
    attempts: Attempts,
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
