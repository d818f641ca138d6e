//! Topic roles, the retry schedule, and making sure the topics exist.

use std::time::Duration;

use chrono::{DateTime, Utc};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;


/// A delay topic: records wait in it until their not-before time, and no
/// record is held in it longer than `delay` past its append time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryTopic {
    pub name: String,
    pub delay: Duration,
}

#[derive(Debug, Clone)]
pub struct Topics {
    pub requested: String,
    pub status: String,
    pub dead_letter: String,
    /// Compacted, one partition: see `suppression`.
    pub suppressions: String,
    /// Compacted, one partition: see `cancel`.
    pub cancellations: String,
    /// How long a cancel is kept: the longest a request can wait for an
    /// attempt (see `Settings::cancel_keep`).
    pub cancel_keep: Duration,
    /// In schedule order: a transient failure on attempt n goes to `retries[n - 1]`.
    pub retries: Vec<RetryTopic>,
}

/// Whether a consumed record may be worked on now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Its time has come, or it never had one.
    Now,
    /// Not yet: it waits until `release`, its time or the end of its
    /// topic's delay, whichever comes first.
    Wait { release: DateTime<Utc> },
    /// Its topic's delay ran out before its time: it is parked again, in
    /// the delay topic that suits the time left.
    ParkAgain { not_before: DateTime<Utc> },
}

/// Where a consumed record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    Requested,
    Retry(usize),
}

impl Topics {
    /// herald's default names and retry schedule.
    pub fn defaults() -> Self {
        let retry = |name: &str, minutes: u64| RetryTopic { name: name.to_owned(), delay: Duration::from_secs(60 * minutes) };
        Topics {
            requested: "notification.requested".into(),
            status: "notification.status".into(),
            dead_letter: "notification.dead-letter".into(),
            suppressions: "notification.suppressions".into(),
            cancellations: "notification.cancellations".into(),
            cancel_keep: Duration::from_secs(31 * 86_400),
            retries: vec![retry("retry-10m", 10), retry("retry-20m", 20), retry("retry-40m", 40)],
        }
    }

    /// The topics herald consumes.
    pub fn inputs(&self) -> Vec<&str> {
        std::iter::once(self.requested.as_str()).chain(self.retries.iter().map(|r| r.name.as_str())).collect()
    }

    pub fn all(&self) -> Vec<&str> {
        let mut all = self.inputs();
        all.extend([self.status.as_str(), self.dead_letter.as_str(), self.suppressions.as_str(), self.cancellations.as_str()]);
        all
    }

    pub fn name(&self, source: Source) -> &str {
        match source {
            Source::Requested => &self.requested,
            Source::Retry(i) => &self.retries[i].name,
        }
    }

    pub fn source(&self, topic: &str) -> Option<Source> {
        if topic == self.requested {
            return Some(Source::Requested);
        }
        self.retries.iter().position(|r| r.name == topic).map(Source::Retry)
    }

    /// Whether a record from `source` that is due at `not_before` and was
    /// appended at `appended` may be worked on at `now`. No record is held
    /// in a delay topic longer than that topic's delay, however far off its
    /// time is; records of the requests topic are always due (a scheduled
    /// request is parked first, by the pipeline).
    pub fn due(&self, source: Source, not_before: Option<DateTime<Utc>>, appended: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Due {
        let (Source::Retry(i), Some(not_before)) = (source, not_before) else { return Due::Now };
        let delay = chrono::Duration::from_std(self.retries[i].delay).unwrap_or(chrono::Duration::MAX);
        let release = appended.map_or(not_before, |t| not_before.min(t + delay));
        match (release > now, not_before > now) {
            (true, _) => Due::Wait { release },
            (false, true) => Due::ParkAgain { not_before },
            (false, false) => Due::Now,
        }
    }

    /// The retry topic after a transient failure on `attempt` (from 1), or
    /// `None` when the schedule is exhausted.
    pub fn retry_after_attempt(&self, attempt: u32) -> Option<usize> {
        let index = attempt.checked_sub(1)? as usize;
        (index < self.retries.len()).then_some(index)
    }

    /// The delay topic that should hold a record due in `remaining`: the
    /// longest delay that does not overshoot it, so the record hops forward
    /// in as few steps as possible and is never released late by more than
    /// the shortest delay.
    pub fn hold_for(&self, remaining: Duration) -> usize {
        self.retries
            .iter()
            .enumerate()
            .filter(|(_, r)| r.delay <= remaining)
            .max_by_key(|(_, r)| r.delay)
            .map_or_else(|| self.shortest(), |(i, _)| i)
    }

    fn shortest(&self) -> usize {
        self.retries.iter().enumerate().min_by_key(|(_, r)| r.delay).map_or(0, |(i, _)| i)
    }
}

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
pub struct Creation {
    /// Off: herald refuses to start while one is missing.
    pub create: bool,
    pub partitions: i32,
    pub replication: i32,
}

/// Creates the topics that are missing, or refuses if told not to.
/// `brokers` names the cluster in errors.
pub async fn ensure(
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

#[cfg(test)]
mod tests {
    use super::*;

    fn topics() -> Topics {
        Topics::defaults()
    }

    #[test]
    fn each_transient_failure_moves_one_topic_down_the_schedule() {
        let t = topics();
        assert_eq!(t.retry_after_attempt(1), Some(0));
        assert_eq!(t.retry_after_attempt(2), Some(1));
        assert_eq!(t.retry_after_attempt(3), Some(2));
        assert_eq!(t.retry_after_attempt(4), None);
        assert_eq!(t.retry_after_attempt(0), None);
    }

    #[test]
    fn scheduled_records_wait_in_the_longest_topic_that_does_not_overshoot() {
        let t = topics();
        let min = |m: u64| Duration::from_secs(60 * m);
        assert_eq!(t.hold_for(min(1)), 0, "shorter than every delay: the shortest");
        assert_eq!(t.hold_for(min(15)), 0);
        assert_eq!(t.hold_for(min(20)), 1);
        assert_eq!(t.hold_for(min(39)), 1);
        assert_eq!(t.hold_for(min(24 * 60)), 2);
    }

    #[test]
    fn a_parked_record_waits_for_its_time_or_its_topic_s_delay() {
        use chrono::TimeZone;
        let t = topics();
        let at = |m: i64| Utc.timestamp_opt(1_700_000_000, 0).unwrap() + chrono::Duration::minutes(m);
        let retry = Source::Retry(0);
        assert_eq!(t.due(Source::Requested, Some(at(5)), Some(at(0)), at(0)), Due::Now, "a request is always due");
        assert_eq!(t.due(retry, None, Some(at(0)), at(0)), Due::Now, "no time: due");
        assert_eq!(t.due(retry, Some(at(5)), Some(at(0)), at(1)), Due::Wait { release: at(5) });
        assert_eq!(t.due(retry, Some(at(5)), Some(at(0)), at(5)), Due::Now);
        assert_eq!(t.due(retry, Some(at(60)), Some(at(0)), at(1)), Due::Wait { release: at(10) }, "the topic's delay first");
        assert_eq!(t.due(retry, Some(at(60)), Some(at(0)), at(10)), Due::ParkAgain { not_before: at(60) });
        assert_eq!(t.due(retry, Some(at(60)), None, at(10)), Due::Wait { release: at(60) }, "no append time: its own time");
    }

    #[test]
    fn sources_are_recognised_by_topic_name() {
        let t = topics();
        assert_eq!(t.source("notification.requested"), Some(Source::Requested));
        assert_eq!(t.source("retry-40m"), Some(Source::Retry(2)));
        assert_eq!(t.source("notification.status"), None);
    }
}
