//! Making an outcome durable: the status event and the rerouted record are
//! produced, and this returns only once the broker has acknowledged both.
//! The caller stores the offset after that, never before.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

use super::{status_event, Destination, Envelope, Origin, Outcome};
use crate::codec;
use crate::model::Channel;
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

impl Publisher {
    pub fn new(producer: FutureProducer, topics: Arc<Topics>, status_schema_id: u32) -> Self {
        Publisher { producer, topics, status_schema_id }
    }

    pub fn producer(&self) -> &FutureProducer {
        &self.producer
    }

    /// Publishes what `outcome` requires. `attempt` is the attempt the
    /// outcome belongs to (from 1).
    pub async fn publish(&self, record: &Consumed, ids: Option<&Ids>, outcome: &Outcome, attempt: u32, now: DateTime<Utc>) {
        let status = ids.and_then(|ids| status_event(ids, outcome, attempt, now)).map(|event| {
            let bytes = codec::encode_status(self.status_schema_id, &event);
            (event.user_id, bytes)
        });
        let reroute = outcome.destination().map(|destination| {
            let topic = match destination {
                Destination::Retry(i) => &self.topics.retries[i].name,
                Destination::DeadLetter => &self.topics.dead_letter,
            };
            let attempts = match outcome {
                // Parking or rejecting a record is not a delivery attempt.
                Outcome::Scheduled { .. } | Outcome::Held { .. } | Outcome::Invalid(_) | Outcome::Undecodable(_) => {
                    record.envelope.attempts
                }
                _ => attempt,
            };
            let envelope = Envelope { attempts, not_before: outcome.not_before(), origin: None };
            let headers = envelope.write(record.headers.as_ref(), &record.origin(), outcome.error().as_ref());
            (topic.as_str(), headers)
        });
        let status_sent = async {
            if let Some((key, bytes)) = &status {
                self.send(&self.topics.status, Some(key.as_bytes()), Some(bytes), None).await;
            }
        };
        let rerouted = async {
            if let Some((topic, headers)) = &reroute {
                self.send(topic, record.key.as_deref(), record.payload.as_deref(), Some(headers)).await;
            }
        };
        tokio::join!(status_sent, rerouted);
    }

    /// Sends until the broker acknowledges. The idempotent producer already
    /// retries internally; an error here means its delivery timeout passed,
    /// and giving up would lose the outcome, so this keeps trying (the
    /// offset stays unstored meanwhile, and shutdown abandons it safely).
    async fn send(&self, topic: &str, key: Option<&[u8]>, payload: Option<&[u8]>, headers: Option<&OwnedHeaders>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic);
            record.key = key;
            record.payload = payload;
            record.headers = headers.cloned();
            match self.producer.send(record, Timeout::Never).await {
                Ok(_) => return,
                Err((error, _)) => {
                    tracing::error!(message = "Produce failed; retrying.", topic, %error, backoff_ms = backoff.as_millis() as u64);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}
