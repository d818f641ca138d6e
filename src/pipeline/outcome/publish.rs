//! Making an outcome durable: the status event, the rerouted record and any
//! change to the suppression list are produced, and the future `publish`
//! returns completes only once the broker has acknowledged all of them.
//! The caller stores the offset after that, never before.
//!
//! A produce error is one of three kinds. Most are transient, and the
//! record is sent again with backoff. Some concern the record and would
//! fail the same way forever (too large, refused by a topic policy): the
//! copy falls back to one without the producer's bytes, on the dead-letter
//! topic. The rest mean no record can be written at all (a topic deleted,
//! access revoked, the idempotent producer fenced): herald stops, and the
//! record is delivered again after the operator has fixed it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::{Either, OptionFuture};
use futures::FutureExt;
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;

use super::{status_event, Destination, Outcome};
use crate::backoff::Backoff;
use crate::clock::Clock;
use crate::codec;
use crate::metrics::Metrics;
use crate::model::{Attempts, ErrorClass, ErrorCode, Ids, Status, StatusEvent};
use crate::pipeline::suppression::Change;
use crate::record::{Consumed, Envelope, ErrorHeaders, Origin, Propagated, Seal, MAX_PROPAGATED_BYTES};
use crate::topics::Topics;

/// What herald's own headers may add to a copy (see `record::envelope`,
/// which keeps them within it). A record fits when its own bytes leave
/// this much room under the producer's limit.
pub const HEADER_ROOM: usize = 2048 + MAX_PROPAGATED_BYTES;
/// A copy without the producer's bytes still keeps a key this short: it
/// is the user id, which tells an operator whose request it was.
const MAX_STRIPPED_KEY: usize = 1024;

const MAX_BACKOFF: Duration = Duration::from_secs(30);
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(10);

/// A produce that can never succeed.
#[derive(Debug, thiserror::Error)]
#[error("cannot produce to topic {topic:?}: {error}")]
pub struct ProduceError {
    pub topic: String,
    pub error: KafkaError,
}

/// A produce under way.
type Pending = std::pin::Pin<Box<dyn Future<Output = Result<i64, Failure>> + Send>>;

/// Why a produce gave up.
enum Failure {
    /// This record can never be written; others can.
    Record(ProduceError),
    /// Nothing can be written until an operator acts.
    Fatal(ProduceError),
}

pub(crate) struct Publisher {
    producer: FutureProducer,
    metrics: Arc<Metrics>,
    topics: Arc<Topics>,
    status_schema_id: u32,
    /// The producer's `message.max.bytes`.
    max_message_bytes: usize,
    propagated: Propagated,
    /// Marks every copy as this deployment's, provably (see `record::seal`).
    seal: Seal,
    /// Stamps the records herald writes, when a test moves the clock: a
    /// parked record's due time is reckoned from its timestamp.
    clock: Clock,
}

impl Publisher {
    pub(crate) fn new(
        producer: FutureProducer,
        topics: Arc<Topics>,
        status_schema_id: u32,
        max_message_bytes: usize,
        propagated: Propagated,
        seal: Seal,
        metrics: Arc<Metrics>,
    ) -> Self {
        Publisher { producer, metrics, topics, status_schema_id, max_message_bytes, propagated, seal, clock: Clock::system() }
    }

    pub(crate) fn seal(&self) -> &Seal {
        &self.seal
    }

    pub(crate) fn with_clock(self, clock: Clock) -> Self {
        Publisher { clock, ..self }
    }

    pub(crate) fn producer(&self) -> &FutureProducer {
        &self.producer
    }

    /// The largest record (key, value and headers) herald copies whole.
    pub(crate) fn max_record_bytes(&self) -> usize {
        self.max_message_bytes.saturating_sub(HEADER_ROOM)
    }

    /// Whether `record` can be copied whole with herald's headers added.
    pub(crate) fn fits(&self, record: &Consumed) -> bool {
        record.size() <= self.max_record_bytes()
    }

    /// Hands what `outcome` requires to the producer now, and returns a
    /// future that completes once the broker has acknowledged all of it.
    /// Enqueueing here rather than when the future is first polled keeps
    /// outcomes in the order the loop settled them. `attempts` is the
    /// number of delivery attempts made once the outcome was reached. The
    /// future yields the offset of the status event, if there was one.
    pub(crate) fn publish(
        &self,
        record: &Consumed,
        ids: Option<Ids>,
        outcome: &Outcome,
        attempts: Attempts,
        now: DateTime<Utc>,
        suppress: Option<&Change>,
    ) -> impl Future<Output = Result<Option<i64>, ProduceError>> + Send + 'static {
        let error = outcome.error();
        let status = ids.and_then(|ids| status_event(ids, outcome, error.as_ref(), attempts, now, record.origin()));
        let trace = self.propagated.of(record.headers.as_ref());
        if let (None, Some(error)) = (&status, &error) {
            self.metrics.error(error.code.as_str(), error.class);
        }
        let reroute = outcome.reroute(attempts, error, &record.envelope).map(|(destination, envelope)| {
            let copy = self.copy(record, destination, &envelope, trace.as_ref());
            // If the copy can never be written, a stripped copy goes to the
            // dead letters instead, and a record that was to be retried says so.
            let retried = matches!(destination, Destination::Retry(_) | Destination::Wait(_));
            let dead = status.as_ref().filter(|_| retried).map(|s| StatusEvent { status: Status::DeadLettered, ..s.clone() });
            let fallback = Fallback {
                producer: self.producer.clone(),
                status: dead.map(|event| (self.topics.status.clone(), self.status_schema_id, event, record.partition)),
                trace: trace.clone(),
                dead_letter: self.topics.dead_letter.clone(),
                key: stripped_key(record),
                seal: self.seal.clone(),
                envelope,
                origin: record.origin(),
                size: record.size(),
            };
            (copy, fallback)
        });
        let status = status.map(|event| self.durable(self.status_record(event, Some(record.partition), trace)));
        if reroute.is_none() && suppress.is_none() {
            // Most records: one status event, and a future a fraction of
            // the size of the joins below (each record's is moved a few
            // times on its way).
            return Either::Left(OptionFuture::from(status).map(|acked| acked.map_or(Ok(None), settle)));
        }
        let suppress = suppress.map(|change| -> Pending { Box::pin(self.durable(self.change_record(change))) });
        let reroute = reroute.map(|(copy, fallback)| -> Pending {
            let copy = self.durable(copy);
            Box::pin(async move {
                match copy.await {
                    Err(Failure::Record(error)) => fallback.dead_letter(error).await,
                    other => other,
                }
            })
        });
        Either::Right(Box::pin(async move {
            let (status, reroute, suppress) =
                tokio::join!(OptionFuture::from(status), OptionFuture::from(reroute), OptionFuture::from(suppress));
            for result in [reroute, suppress].into_iter().flatten() {
                settle(result)?;
            }
            status.map(settle).transpose().map(Option::flatten)
        }))
    }

    /// Publishes one status event that comes from outside the pipeline (a
    /// delivery receipt), to `partition`, the one the request was read
    /// from, when known; the future completes once it is acknowledged.
    pub(crate) fn publish_status(&self, event: StatusEvent, partition: Option<i32>) -> impl Future<Output = Result<(), ProduceError>> + Send + 'static {
        let ack = self.durable(self.status_record(event, partition, None));
        async move { settle(ack.await).map(drop) }
    }

    /// Records a change to the suppression list; the future completes once
    /// it is acknowledged.
    pub(crate) fn publish_change(&self, change: &Change) -> impl Future<Output = Result<(), ProduceError>> + Send + 'static {
        let ack = self.durable(self.change_record(change));
        async move { settle(ack.await).map(drop) }
    }

    fn change_record(&self, change: &Change) -> Outgoing {
        Outgoing { topic: self.topics.suppressions.clone(), key: Some(change.key()), partition: None, payload: change.value(), headers: None, sealed: false, timestamp: None }
    }

    /// Status events go to the partition number their request came from,
    /// whatever partitioner the request's producer used, so that each
    /// status partition belongs to the instance that owns those requests.
    fn status_record(&self, event: StatusEvent, partition: Option<i32>, trace: Option<OwnedHeaders>) -> Outgoing {
        self.metrics.status(&event);
        let payload = codec::encode_status(self.status_schema_id, &event);
        Outgoing::new(self.topics.status.clone(), Some(event.user_id.into_bytes()), partition, Some(payload), self.seal.own(trace))
    }

    /// The record's copy for `destination`: whole when it fits, else
    /// stripped.
    fn copy(&self, record: &Consumed, destination: Destination, envelope: &Envelope, trace: Option<&OwnedHeaders>) -> Outgoing {
        // A delay topic record keeps its partition number, so a user's
        // records stay with the one consumer that owns that partition of
        // every input topic (see `ratelimit`).
        let (topic, partition) = match destination {
            Destination::Retry(i) => (&self.topics.retries[i].name, Some(record.partition)),
            Destination::Wait(i) => (&self.topics.waits[i].name, Some(record.partition)),
            Destination::DeadLetter => (&self.topics.dead_letter, None),
        };
        if !self.fits(record) {
            return stripped(&self.seal, self.topics.dead_letter.clone(), stripped_key(record), envelope, &record.origin(), record.size(), trace);
        }
        let headers = envelope.write(record.headers.as_ref(), &record.origin(), None);
        let headers = self.seal.seal(record.key.as_deref(), record.payload.as_deref(), headers);
        Outgoing::new(topic.clone(), record.key.clone(), partition, record.payload.clone(), headers)
    }

    fn durable(&self, out: Outgoing) -> impl Future<Output = Result<i64, Failure>> + Send + 'static {
        let timestamp = self.clock.stamp();
        durable(self.producer.clone(), Outgoing { timestamp, ..out })
    }
}

fn stripped_key(record: &Consumed) -> Option<Vec<u8>> {
    record.key.clone().filter(|k| k.len() <= MAX_STRIPPED_KEY)
}

/// A dead-letter copy with none of the producer's value, and of its
/// headers only the propagated ones (`trace`): herald's headers, the
/// original size, and the key if it is short.
fn stripped(seal: &Seal, topic: String, key: Option<Vec<u8>>, envelope: &Envelope, origin: &Origin, size: usize, trace: Option<&OwnedHeaders>) -> Outgoing {
    let headers = seal.seal(key.as_deref(), None, envelope.write(trace, origin, Some(size)));
    Outgoing::new(topic, key, None, None, headers)
}

/// What a rerouted copy becomes when it can never be written: a stripped
/// copy on the dead-letter topic, and, if the record was to be retried, a
/// DEAD_LETTERED status that says it will not be.
struct Fallback {
    producer: FutureProducer,
    /// Topic, schema id, event and partition of that status.
    status: Option<(String, u32, StatusEvent, i32)>,
    trace: Option<OwnedHeaders>,
    dead_letter: String,
    key: Option<Vec<u8>>,
    seal: Seal,
    envelope: Envelope,
    origin: Origin,
    size: usize,
}

impl Fallback {
    async fn dead_letter(self, error: ProduceError) -> Result<i64, Failure> {
        tracing::error!(message = "A copy can never be written; dead-lettering it without the producer's bytes.", topic = error.topic, %error.error);
        let code = ErrorCode::produce(error.error.rdkafka_error_code().map_or_else(|| "unknown".to_owned(), |c| format!("{c:?}")));
        let reason = ErrorHeaders { class: ErrorClass::Permanent, code: code.clone(), message: format!("herald cannot write the record to {}", error.topic) };
        let envelope = Envelope { error: Some(reason), ..self.envelope };
        let copy = durable(self.producer.clone(), stripped(&self.seal, self.dead_letter, self.key, &envelope, &self.origin, self.size, self.trace.as_ref()));
        let status = self.status.map(|(topic, schema_id, event, partition)| {
            let event = StatusEvent { error_class: Some(ErrorClass::Permanent), error_code: Some(code), ..event };
            let payload = codec::encode_status(schema_id, &event);
            durable(self.producer.clone(), Outgoing::new(topic, Some(event.user_id.clone().into_bytes()), Some(partition), Some(payload), self.seal.own(self.trace)))
        });
        let (copy, status) = tokio::join!(copy, OptionFuture::from(status));
        let offset = settle(copy).map_err(Failure::Fatal)?;
        status.map_or(Ok(()), |s| settle(s).map(drop).map_err(Failure::Fatal))?;
        Ok(offset.unwrap_or(-1))
    }
}

/// A record failure is logged and the record finishes: retrying could
/// never succeed, and holding its offset would stall the partition. The
/// offset of what was written, if it was.
fn settle(result: Result<i64, Failure>) -> Result<Option<i64>, ProduceError> {
    match result {
        Ok(offset) => Ok(Some(offset)),
        Err(Failure::Record(error)) => {
            tracing::error!(message = "A record can never be written; given up.", topic = error.topic, %error.error);
            Ok(None)
        }
        Err(Failure::Fatal(error)) => Err(error),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Disposition {
    /// The producer's queue is full: wait for it to drain.
    Backpressure,
    Retry,
    Record,
    Fatal,
}

fn disposition(error: &KafkaError) -> Disposition {
    use RDKafkaErrorCode as C;
    match error.rdkafka_error_code() {
        Some(C::QueueFull) => Disposition::Backpressure,
        Some(
            C::MessageSizeTooLarge
            | C::MessageBatchTooLarge
            | C::InvalidMessageSize
            | C::InvalidMessage
            | C::InvalidRecord
            | C::InvalidTimestamp
            | C::UnsupportedForMessageFormat
            | C::PolicyViolation,
        ) => Disposition::Record,
        // herald checked at startup that its topics exist with the right
        // partitions; now missing, they were deleted or shrunk.
        Some(
            C::UnknownTopic
            | C::UnknownPartition
            | C::InvalidTopic
            | C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::Fatal,
        ) => Disposition::Fatal,
        _ => Disposition::Retry,
    }
}

/// Sends `out` now; the future completes when the broker acknowledges it.
/// The idempotent producer already retries internally; a transient error
/// means its delivery timeout passed, and giving up would lose the
/// outcome, so this sends again (the offset stays unstored meanwhile, and
/// shutdown abandons it safely).
fn durable(producer: FutureProducer, mut out: Outgoing) -> impl Future<Output = Result<i64, Failure>> + Send + 'static {
    let first = out.send(&producer);
    async move {
        let error = match acknowledged(first).await {
            Ok(offset) => return Ok(offset),
            Err((error, headers)) => {
                out.headers = out.headers.take().or(headers);
                error
            }
        };
        // Boxed: the retry loop's timers would make every produce's future
        // several times larger, and each one is moved a few times.
        Box::pin(resend(producer, out, error)).await
    }
}

async fn resend(producer: FutureProducer, mut out: Outgoing, mut error: KafkaError) -> Result<i64, Failure> {
    let mut backoff = Backoff::new(Duration::from_millis(100), MAX_BACKOFF);
    loop {
        let failed = || ProduceError { topic: out.topic.clone(), error: error.clone() };
        // A record that lost its headers with its delivery report (only
        // a producer going away drops one) cannot be sent as it was: a
        // status without its owner, a copy without its seal.
        if out.sealed && out.headers.is_none() {
            return Err(Failure::Fatal(failed()));
        }
        match disposition(&error) {
            Disposition::Backpressure => tokio::time::sleep(QUEUE_FULL_WAIT).await,
            Disposition::Retry => {
                let pause = backoff.next_pause();
                tracing::warn!(message = "Produce failed; retrying.", topic = out.topic, %error, backoff_ms = pause.as_millis() as u64);
                tokio::time::sleep(pause).await;
            }
            Disposition::Record => return Err(Failure::Record(failed())),
            Disposition::Fatal => return Err(Failure::Fatal(failed())),
        }
        let sent = out.send(&producer);
        match acknowledged(sent).await {
            Ok(offset) => return Ok(offset),
            Err((again, headers)) => {
                out.headers = out.headers.take().or(headers);
                error = again;
            }
        }
    }
}

/// The offset the broker gave a record sent, or why it has none, with the
/// headers it went with when they came back.
async fn acknowledged(sent: Result<DeliveryFuture, KafkaError>) -> Result<i64, (KafkaError, Option<OwnedHeaders>)> {
    use rdkafka::Message as _;
    match sent.map_err(|error| (error, None))?.await {
        Ok(Ok(delivered)) => Ok(delivered.offset),
        Ok(Err((error, message))) => Err((error, message.headers().cloned())),
        Err(_canceled) => Err((KafkaError::Canceled, None)),
    }
}

/// One record to produce, kept until it is acknowledged so that it can be
/// sent again. Its headers go with each send rather than a copy of them
/// (librdkafka takes them, and copying and freeing them was a tenth of a
/// record's cost); a send that fails gives them back.
struct Outgoing {
    topic: String,
    key: Option<Vec<u8>>,
    /// `None`: the producer's partitioner picks, by key.
    partition: Option<i32>,
    payload: Option<Vec<u8>>,
    headers: Option<OwnedHeaders>,
    /// Whether it was made with headers, which a retry must send too.
    sealed: bool,
    /// `None`: the producer stamps it.
    timestamp: Option<i64>,
}

impl Outgoing {
    fn new(topic: String, key: Option<Vec<u8>>, partition: Option<i32>, payload: Option<Vec<u8>>, headers: OwnedHeaders) -> Outgoing {
        Outgoing { topic, key, partition, payload, headers: Some(headers), sealed: true, timestamp: None }
    }

    /// Sends it, with its headers; they come back if it is not queued.
    fn send(&mut self, producer: &FutureProducer) -> Result<DeliveryFuture, KafkaError> {
        let Outgoing { topic, key, partition, payload, headers, timestamp, .. } = self;
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic);
        record.key = key.as_deref();
        record.partition = *partition;
        record.payload = payload.as_deref();
        record.headers = headers.take();
        record.timestamp = *timestamp;
        producer.send_result(record).map_err(|(error, record)| {
            *headers = record.headers;
            error
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_that_can_never_succeed_are_not_retried() {
        use RDKafkaErrorCode as C;
        let rows = [
            (C::QueueFull, Disposition::Backpressure),
            (C::MessageSizeTooLarge, Disposition::Record),
            (C::MessageBatchTooLarge, Disposition::Record),
            (C::InvalidRecord, Disposition::Record),
            (C::PolicyViolation, Disposition::Record),
            (C::TopicAuthorizationFailed, Disposition::Fatal),
            (C::UnknownTopic, Disposition::Fatal),
            (C::Fatal, Disposition::Fatal),
            (C::MessageTimedOut, Disposition::Retry),
            (C::NotEnoughReplicas, Disposition::Retry),
            (C::UnknownTopicOrPartition, Disposition::Retry),
            (C::AllBrokersDown, Disposition::Retry),
        ];
        for (code, expected) in rows {
            assert_eq!(disposition(&KafkaError::MessageProduction(code)), expected, "{code:?}");
        }
    }
}
