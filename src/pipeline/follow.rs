//! Keyed state that every instance holds whole: the suppression list and
//! the cancellations. Each lives in a compacted topic; startup reads it to
//! its end before any request is judged, then a task follows it.
//!
//! The end is where each partition's fetch reports it (librdkafka's
//! partition EOF), not the broker's ListOffsets answer, which some brokers
//! get wrong.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::{Offset, TopicPartitionList};

use crate::kafka::Reader;

/// How long startup may take to read a topic before herald gives up: a
/// safety net for a broker that stops answering, not a wait.
const LOAD_TIMEOUT: Duration = Duration::from_secs(120);

/// State built from a followed topic's records.
pub trait Followed: Send + Sync + 'static {
    /// What the topic holds, for logs: "suppression list".
    const WHAT: &'static str;
    /// Applies one record. A record that makes no sense is logged and
    /// skipped: one bad record must not stop every delivery.
    fn apply(&self, message: &BorrowedMessage<'_>);
    /// Entries held.
    fn len(&self) -> usize;

    /// Whether none are held.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a compacted topic could not be read whole.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error("cannot read the topic {topic:?}: {error}")]
    Kafka { topic: String, error: KafkaError },
    #[error("the topic {0:?} was not read to its end within {LOAD_TIMEOUT:?}")]
    Timeout(String),
}

/// Reads `topic` to its end into `state`, so no request is judged against
/// a partial one; returns the consumer, positioned to follow it. The
/// consumer must have `enable.partition.eof` on (`kafka::reader` does).
pub async fn load<F: Followed>(consumer: Reader, topic: &str, state: &F) -> Result<Reader, FollowError> {
    let kafka = |error| FollowError::Kafka { topic: topic.to_owned(), error };
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).map_err(kafka)?;
    let mut reading: Vec<i32> = metadata.topics().iter().flat_map(|t| t.partitions().iter().map(|p| p.id())).collect();
    let mut assignment = TopicPartitionList::new();
    for p in &reading {
        assignment.add_partition_offset(topic, *p, Offset::Beginning).map_err(kafka)?;
    }
    consumer.assign(&assignment).map_err(kafka)?;
    let read = async {
        let mut stream = consumer.stream();
        while !reading.is_empty() {
            let Some(message) = stream.next().await else { break };
            match message {
                Ok(message) => state.apply(&message),
                Err(KafkaError::PartitionEOF(p)) => reading.retain(|partition| *partition != p),
                Err(error) => return Err(kafka(error)),
            }
        }
        Ok::<(), FollowError>(())
    };
    tokio::time::timeout(LOAD_TIMEOUT, read).await.map_err(|_| FollowError::Timeout(topic.to_owned()))??;
    tracing::info!(message = "Topic loaded.", what = F::WHAT, topic, entries = state.len());
    Ok(consumer)
}

/// Applies every later record to `state`, until the task is dropped.
pub(crate) async fn follow<F: Followed>(consumer: Reader, topic: String, state: Arc<F>) {
    let mut stream = consumer.stream();
    while let Some(message) = stream.next().await {
        match message {
            Ok(message) => state.apply(&message),
            Err(KafkaError::PartitionEOF(_)) => {}
            Err(error) => tracing::warn!(message = "Error following a topic.", what = F::WHAT, topic, %error),
        }
    }
}
