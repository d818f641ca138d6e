//! The topics' flags: names, the retry ladder, the timing wheel, and
//! whether herald creates what is missing.

use std::time::Duration;

use clap::ArgAction;

use super::{Creation, DelayTopic, Roles, Topics, DEFAULT_HOLD, DEFAULT_WAIT_DELAYS, DEFAULT_WAIT_TOPICS};
use crate::flags::{self, ConfigError};

/// The flags of the topics.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Topics")]
pub struct TopicArgs {
    /// Topic herald consumes requests from.
    #[arg(long, env = "HERALD_TOPIC_REQUESTED", default_value = "notification.requested")]
    pub(crate) topic_requested: String,

    /// Topic herald publishes status events to.
    #[arg(long, env = "HERALD_TOPIC_STATUS", default_value = "notification.status")]
    pub(crate) topic_status: String,

    /// Topic for records that cannot be delivered: undecodable, invalid, or out of retries.
    #[arg(long, env = "HERALD_TOPIC_DEAD_LETTER", default_value = "notification.dead-letter")]
    pub(crate) topic_dead_letter: String,

    /// Compacted topic of suppressed recipients (opted-out numbers, dead push tokens); a tombstone opts one back in.
    #[arg(long, env = "HERALD_TOPIC_SUPPRESSIONS", default_value = "notification.suppressions")]
    pub(crate) topic_suppressions: String,

    /// Compacted topic of cancels, keyed by event id; a tombstone withdraws one.
    #[arg(long, env = "HERALD_TOPIC_CANCELLATIONS", default_value = "notification.cancellations")]
    pub(crate) topic_cancellations: String,

    /// Retry topics, in order. A transient failure on attempt n goes to the n-th.
    #[arg(long, env = "HERALD_RETRY_TOPICS", value_delimiter = ',', default_value = "retry-10m,retry-20m,retry-40m")]
    pub(crate) retry_topics: Vec<String>,

    /// Delay of each retry topic, same order (humantime: 10m, 1h, 250ms).
    #[arg(long, env = "HERALD_RETRY_DELAYS", value_delimiter = ',', default_value = "10m,20m,40m", value_parser = humantime::parse_duration)]
    pub(crate) retry_delays: Vec<Duration>,

    /// The timing wheel's tiers: topics whose records all wait one fixed time, for scheduled sends, deferrals and waits for a circuit to close. A record waits on the tiers that take it there in the fewest copies.
    #[arg(long, env = "HERALD_WAIT_TOPICS", value_delimiter = ',', default_value = DEFAULT_WAIT_TOPICS)]
    pub(crate) wait_topics: Vec<String>,

    /// Delay of each tier, same order (humantime). The shortest must be at most --hold-window.
    #[arg(long, env = "HERALD_WAIT_DELAYS", value_delimiter = ',', default_value = DEFAULT_WAIT_DELAYS, value_parser = humantime::parse_duration)]
    pub(crate) wait_delays: Vec<Duration>,

    /// Parked records due within this long are held in memory until their time, and the partition read on past them: a tier then serves every wait from its delay less this to its delay, on time.
    #[arg(long, env = "HERALD_HOLD_WINDOW", default_value = DEFAULT_HOLD, value_parser = humantime::parse_duration)]
    pub(crate) hold_window: Duration,

    /// Parked records held in memory at most; past it, a delay topic's partition waits for room.
    #[arg(long, env = "HERALD_HOLD_RECORDS", default_value_t = 20_000)]
    pub(crate) hold_records: usize,

    /// Create missing topics at startup. With false, herald refuses to start if one is missing.
    #[arg(long, env = "HERALD_CREATE_TOPICS", default_value_t = true, action = ArgAction::Set)]
    pub(crate) create_topics: bool,

    /// Partitions for topics herald creates.
    #[arg(long, env = "HERALD_TOPIC_PARTITIONS", default_value_t = 6)]
    pub topic_partitions: i32,

    /// Replication factor for topics herald creates.
    #[arg(long, env = "HERALD_TOPIC_REPLICATION", default_value_t = 1)]
    pub(crate) topic_replication: i32,
}

impl TopicArgs {
    /// The topics, their wheel planned for waits up to `longest` (how long
    /// anything can wait, which is how long a cancel is kept).
    pub(crate) fn topics(&self, longest: Duration) -> Result<Topics, ConfigError> {
        self.check()?;
        let roles = Roles {
            requested: self.topic_requested.clone(),
            status: self.topic_status.clone(),
            dead_letter: self.topic_dead_letter.clone(),
            suppressions: self.topic_suppressions.clone(),
            cancellations: self.topic_cancellations.clone(),
            cancel_keep: longest,
        };
        let delays = |names: &[String], delays: &[Duration]| names.iter().zip(delays).map(|(name, delay)| DelayTopic { name: name.clone(), delay: *delay }).collect();
        Ok(Topics::new(roles, delays(&self.retry_topics, &self.retry_delays), delays(&self.wait_topics, &self.wait_delays), self.hold_window, longest))
    }

    pub(crate) fn creation(&self) -> Creation {
        Creation { create: self.create_topics, partitions: self.topic_partitions, replication: self.topic_replication }
    }

    fn check(&self) -> Result<(), ConfigError> {
        if self.retry_topics.is_empty() {
            return Err(ConfigError::NoRetryTopics);
        }
        if self.retry_topics.len() != self.retry_delays.len() {
            return Err(ConfigError::RetryScheduleMismatch { topics: self.retry_topics.len(), delays: self.retry_delays.len() });
        }
        if self.retry_delays.iter().any(Duration::is_zero) {
            return Err(ConfigError::ZeroRetryDelay);
        }
        if self.wait_topics.is_empty() {
            return Err(ConfigError::NoWaitTopics);
        }
        if self.wait_topics.len() != self.wait_delays.len() {
            return Err(ConfigError::WaitScheduleMismatch { topics: self.wait_topics.len(), delays: self.wait_delays.len() });
        }
        let shortest = self.wait_delays.iter().min().copied().unwrap_or_default();
        if shortest.is_zero() || shortest > self.hold_window || self.hold_window.is_zero() {
            return Err(ConfigError::WaitBeyondHold { shortest, hold: self.hold_window });
        }
        let mut seen = std::collections::HashSet::new();
        let all = [&self.topic_requested, &self.topic_status, &self.topic_dead_letter, &self.topic_suppressions, &self.topic_cancellations]
            .into_iter()
            .chain(&self.retry_topics)
            .chain(&self.wait_topics);
        for topic in all {
            if topic.is_empty() {
                return Err(ConfigError::EmptyTopic);
            }
            if !seen.insert(topic) {
                return Err(ConfigError::DuplicateTopic(topic.clone()));
            }
        }
        flags::counts(&[
            ("topic-partitions", self.topic_partitions.max(0) as usize, false),
            ("topic-replication", self.topic_replication.max(0) as usize, false),
            ("hold-records", self.hold_records, false),
        ])
    }
}
