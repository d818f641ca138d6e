//! Making sure the topics exist, with the partitions herald needs.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;

use super::Topics;

/// A topic that is missing, or does not fit the others.
#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error("topic {0:?} does not exist and topic creation is off (--create-topics false)")]
    Missing(String),
    #[error("cannot read cluster metadata from --brokers {brokers}: {error}")]
    Metadata { brokers: String, error: rdkafka::error::KafkaError },
    #[error("cannot create topic {topic:?}: {error}")]
    Create { topic: String, error: String },
    #[error(
        "the topics herald consumes, and the status topic, must have the same number of partitions, so that a \
         user's retries and statuses stay with the instance that owns the user; found {0}"
    )]
    NotCoPartitioned(String),
}

/// Whether, and how, herald creates the topics that are missing.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Creation {
    /// Off: herald refuses to start while one is missing.
    pub create: bool,
    pub partitions: i32,
    pub replication: i32,
}

/// Creates the topics that are missing, or refuses if told not to.
/// `brokers` names the cluster in errors.
pub(crate) async fn ensure(
    admin: &AdminClient<DefaultClientContext>,
    topics: &Topics,
    creation: Creation,
    brokers: &str,
) -> Result<(), TopicError> {
    let metadata = admin
        .inner()
        .fetch_metadata(None, Duration::from_secs(10))
        .map_err(|error| TopicError::Metadata { brokers: brokers.to_owned(), error })?;
    let existing: Vec<(&str, i32)> = metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| (t.name(), t.partitions().len() as i32))
        .collect();
    let partitions = |topic: &str| existing.iter().find(|(name, _)| *name == topic).map(|(_, n)| *n);
    // Status events go to their request's partition number (see `outcome`).
    let inputs: Vec<(&str, i32)> = topics
        .inputs()
        .into_iter()
        .chain([topics.status.as_str()])
        .map(|t| (t, partitions(t).unwrap_or(creation.partitions)))
        .collect();
    if inputs.iter().any(|(_, n)| *n != inputs[0].1) {
        let found = inputs.iter().map(|(t, n)| format!("{t}: {n}")).collect::<Vec<_>>().join(", ");
        return Err(TopicError::NotCoPartitioned(found));
    }
    let missing: Vec<&str> = topics.all().into_iter().filter(|t| partitions(t).is_none()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !creation.create {
        return Err(TopicError::Missing(missing[0].to_owned()));
    }
    let replication = || TopicReplication::Fixed(creation.replication);
    let retention = topics.cancel_keep.as_millis().to_string();
    let new: Vec<NewTopic> = missing
        .iter()
        .map(|t| {
            // Keyed state, read whole by every instance: compacted, and one
            // partition so that all writers' changes have one order.
            if *t == topics.suppressions {
                NewTopic::new(t, 1, replication()).set("cleanup.policy", "compact")
            } else if *t == topics.cancellations {
                // A cancel outlives its use after `cancel_keep`.
                NewTopic::new(t, 1, replication()).set("cleanup.policy", "compact,delete").set("retention.ms", &retention)
            } else {
                NewTopic::new(t, creation.partitions, replication())
            }
        })
        .collect();
    let results = admin
        .create_topics(&new, &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))))
        .await
        .map_err(|e| TopicError::Create { topic: missing.join(","), error: e.to_string() })?;
    for result in results {
        match result {
            Ok(topic) => tracing::info!(message = "Created topic.", topic),
            // Another instance won the race; that is fine.
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(TopicError::Create { topic, error: code.to_string() }),
        }
    }
    Ok(())
}
