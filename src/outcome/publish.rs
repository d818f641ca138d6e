//! Making an outcome durable: the status event, the rerouted record and any
//! change to the suppression list are produced, and the future `publish`
//! returns completes only once the broker has acknowledged all of them.
//! The caller stores the offset after that, never before.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::OptionFuture;
use rdkafka::message::OwnedHeaders;
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;

use super::{status_event, Destination, Envelope, Origin, Outcome};
use crate::codec;
use crate::model::{Channel, StatusEvent};
use crate::suppression::Change;
use crate::topics::Topics;

/// A consumed record, owned so it can outlive the poll that returned it.
#[derive(Debug, Clone)]
pub struct Consumed {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Option<OwnedHeaders>,
    pub envelope: Envelope,
}

impl Consumed {
    /// Where the record first entered herald: kept across every hop.
    pub fn origin(&self) -> Origin {
        self.envelope.origin.clone().unwrap_or_else(|| Origin {
            topic: self.topic.clone(),
            partition: self.partition,
            offset: self.offset,
        })
    }
}

/// What a status event says about whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ids {
    pub event_id: String,
    pub user_id: String,
    pub channel: Option<Channel>,
}

pub struct Publisher {
    producer: FutureProducer,
    topics: Arc<Topics>,
    status_schema_id: u32,
}

const MAX_BACKOFF: Duration = Duration::from_secs(30);
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(10);

impl Publisher {
    pub fn new(producer: FutureProducer, topics: Arc<Topics>, status_schema_id: u32) -> Self {
        Publisher { producer, topics, status_schema_id }
    }

    pub fn producer(&self) -> &FutureProducer {
        &self.producer
    }

    /// Hands what `outcome` requires to the producer now, and returns a
    /// future that completes once the broker has acknowledged all of it.
    /// Enqueueing here rather than when the future is first polled keeps
    /// outcomes in the order the loop settled them.
    pub fn publish(
        &self,
        record: &Consumed,
        ids: Option<&Ids>,
        outcome: &Outcome,
        attempt: u32,
        now: DateTime<Utc>,
        suppress: Option<&Change>,
    ) -> impl Future<Output = ()> + Send + 'static {
        let status = ids.and_then(|ids| status_event(ids, outcome, attempt, now)).map(|event| self.status_record(event));
        let reroute = outcome.destination().map(|destination| {
            // A delay topic record keeps its partition number, so a user's
            // records stay with the one consumer that owns that partition of
            // every input topic (see `ratelimit`).
            let (topic, partition) = match destination {
                Destination::Retry(i) => (&self.topics.retries[i].name, Some(record.partition)),
                Destination::DeadLetter => (&self.topics.dead_letter, None),
            };
            let attempts = match outcome {
                // Parking or rejecting a record is not a delivery attempt.
                Outcome::Scheduled { .. }
                | Outcome::Deferred { .. }
                | Outcome::Held { .. }
                | Outcome::Invalid(_)
                | Outcome::Undecodable(_) => {
                    record.envelope.attempts
                }
                _ => attempt,
            };
            let envelope = Envelope { attempts, not_before: outcome.not_before(), origin: None };
            let headers = envelope.write(record.headers.as_ref(), &record.origin(), outcome.error().as_ref());
            Outgoing {
                topic: topic.clone(),
                key: record.key.clone(),
                partition,
                payload: record.payload.clone(),
                headers: Some(headers),
            }
        });
        let status = status.map(|out| self.durable(out));
        let reroute = reroute.map(|out| self.durable(out));
        let suppress = suppress.map(|change| self.publish_change(change));
        async move {
            tokio::join!(OptionFuture::from(status), OptionFuture::from(reroute), OptionFuture::from(suppress));
        }
    }

    /// Publishes one status event that comes from outside the pipeline (a
    /// delivery receipt); the future completes once it is acknowledged.
    pub fn publish_status(&self, event: StatusEvent) -> impl Future<Output = ()> + Send + 'static {
        self.durable(self.status_record(event))
    }

    /// Records a change to the suppression list; the future completes once
    /// it is acknowledged.
    pub fn publish_change(&self, change: &Change) -> impl Future<Output = ()> + Send + 'static {
        self.durable(Outgoing {
            topic: self.topics.suppressions.clone(),
            key: Some(change.key()),
            partition: None,
            payload: change.value(),
            headers: None,
        })
    }

    fn status_record(&self, event: StatusEvent) -> Outgoing {
        Outgoing {
            topic: self.topics.status.clone(),
            payload: Some(codec::encode_status(self.status_schema_id, &event)),
            key: Some(event.user_id.into_bytes()),
            partition: None,
            headers: None,
        }
    }

    /// Sends `out` now; the future completes when the broker acknowledges
    /// it. The idempotent producer already retries internally; an error
    /// means its delivery timeout passed, and giving up would lose the
    /// outcome, so this sends again (the offset stays unstored meanwhile,
    /// and shutdown abandons it safely).
    fn durable(&self, out: Outgoing) -> impl Future<Output = ()> + Send + 'static {
        let producer = self.producer.clone();
        let first = out.send(&producer);
        async move {
            let mut ack = first;
            let mut backoff = Duration::from_millis(100);
            loop {
                let error = match ack {
                    Ok(delivery) => match delivery.await {
                        Ok(Ok(_)) => return,
                        Ok(Err((error, _))) => error,
                        Err(_canceled) => KafkaError::Canceled,
                    },
                    Err(error) => error,
                };
                if error.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) {
                    // Backpressure, not failure: wait for the queue to drain.
                    tokio::time::sleep(QUEUE_FULL_WAIT).await;
                } else {
                    tracing::error!(message = "Produce failed; retrying.", topic = out.topic, %error, backoff_ms = backoff.as_millis() as u64);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                ack = out.send(&producer);
            }
        }
    }
}

/// One record to produce, kept until it is acknowledged so that it can be
/// sent again.
struct Outgoing {
    topic: String,
    key: Option<Vec<u8>>,
    /// `None`: the producer's partitioner picks, by key.
    partition: Option<i32>,
    payload: Option<Vec<u8>>,
    headers: Option<OwnedHeaders>,
}

impl Outgoing {
    fn send(&self, producer: &FutureProducer) -> Result<DeliveryFuture, KafkaError> {
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic);
        record.key = self.key.as_deref();
        record.partition = self.partition;
        record.payload = self.payload.as_deref();
        record.headers = self.headers.clone();
        producer.send_result(record).map_err(|(error, _)| error)
    }
}
