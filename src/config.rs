//! Configuration: parsed once from flags and environment at startup, then
//! validated. Nothing below this module reads the environment.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{ArgAction, Parser, ValueEnum};
use reqwest::Url;

use crate::mask::Secret;
use crate::model::Channel;

#[derive(Debug, Clone, Parser)]
#[command(name = "herald", version, about = "Kafka notification pipeline: requests in, SMS and push out, every outcome on notification.status")]
pub struct Config {
    /// Kafka bootstrap servers (host:port,...).
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,

    /// Consumer group id; run more instances with the same id to scale out.
    #[arg(long, env = "HERALD_GROUP_ID", default_value = "herald")]
    pub group_id: String,

    /// Extra librdkafka settings for every client, as key=value (repeat, or comma-separate).
    #[arg(long = "kafka-option", env = "HERALD_KAFKA_OPTIONS", value_delimiter = ',', value_parser = parse_key_value)]
    pub kafka_options: Vec<(String, String)>,

    /// Extra librdkafka settings for the consumer only (group timeouts, fetch sizes); these win over --kafka-option.
    #[arg(long = "kafka-consumer-option", env = "HERALD_KAFKA_CONSUMER_OPTIONS", value_delimiter = ',', value_parser = parse_key_value)]
    pub kafka_consumer_options: Vec<(String, String)>,

    /// Extra librdkafka settings for the producer only (batching, compression); these win over --kafka-option.
    #[arg(long = "kafka-producer-option", env = "HERALD_KAFKA_PRODUCER_OPTIONS", value_delimiter = ',', value_parser = parse_key_value)]
    pub kafka_producer_options: Vec<(String, String)>,

    /// Topic herald consumes requests from.
    #[arg(long, env = "HERALD_TOPIC_REQUESTED", default_value = "notification.requested")]
    pub topic_requested: String,

    /// Topic herald publishes status events to.
    #[arg(long, env = "HERALD_TOPIC_STATUS", default_value = "notification.status")]
    pub topic_status: String,

    /// Topic for records that cannot be delivered: undecodable, invalid, or out of retries.
    #[arg(long, env = "HERALD_TOPIC_DEAD_LETTER", default_value = "notification.dead-letter")]
    pub topic_dead_letter: String,

    /// Retry topics, in order. A transient failure on attempt n goes to the n-th.
    #[arg(long, env = "HERALD_RETRY_TOPICS", value_delimiter = ',', default_value = "retry-10m,retry-20m,retry-40m")]
    pub retry_topics: Vec<String>,

    /// Delay of each retry topic, same order (humantime: 10m, 1h, 250ms).
    #[arg(long, env = "HERALD_RETRY_DELAYS", value_delimiter = ',', default_value = "10m,20m,40m", value_parser = humantime::parse_duration)]
    pub retry_delays: Vec<Duration>,

    /// Create missing topics at startup. With false, herald refuses to start if one is missing.
    #[arg(long, env = "HERALD_CREATE_TOPICS", default_value_t = true, action = ArgAction::Set)]
    pub create_topics: bool,

    /// Partitions for topics herald creates.
    #[arg(long, env = "HERALD_TOPIC_PARTITIONS", default_value_t = 6)]
    pub topic_partitions: i32,

    /// Replication factor for topics herald creates.
    #[arg(long, env = "HERALD_TOPIC_REPLICATION", default_value_t = 1)]
    pub topic_replication: i32,

    /// Confluent Schema Registry base URL. Without it, herald reads and writes with its bundled schemas.
    #[arg(long, env = "SCHEMA_REGISTRY_URL")]
    pub schema_registry_url: Option<Url>,

    /// SMS rate limit per user: COUNT/WINDOW (10/1h) or off.
    #[arg(long, env = "HERALD_SMS_RATE_LIMIT", default_value = "10/1h")]
    pub sms_rate_limit: RateLimit,

    /// Push rate limit per user: COUNT/WINDOW or off.
    #[arg(long, env = "HERALD_PUSH_RATE_LIMIT", default_value = "off")]
    pub push_rate_limit: RateLimit,

    /// Concurrent SMS provider requests.
    #[arg(long, env = "HERALD_SMS_CONCURRENCY", default_value_t = 32)]
    pub sms_concurrency: usize,

    /// Concurrent push provider requests.
    #[arg(long, env = "HERALD_PUSH_CONCURRENCY", default_value_t = 32)]
    pub push_concurrency: usize,

    /// Records one channel may hold (waiting plus in flight) before the consumer waits for it.
    #[arg(long, env = "HERALD_CHANNEL_QUEUE", default_value_t = 2048)]
    pub channel_queue: usize,

    /// Timeout of one provider HTTP request; a timeout is a transient failure.
    #[arg(long, env = "HERALD_HTTP_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub http_timeout: Duration,

    /// `providers` calls Twilio and FCM; `dry-run` skips the call and reports SENT by provider dry-run.
    #[arg(long, env = "HERALD_DELIVERY", value_enum, default_value_t = DeliveryMode::Providers)]
    pub delivery: DeliveryMode,

    /// Longest SMS body accepted, in characters.
    #[arg(long, env = "HERALD_SMS_MAX_CHARS", default_value_t = 480)]
    pub sms_max_chars: usize,

    /// Twilio API base URL.
    #[arg(long, env = "TWILIO_BASE_URL", default_value = "https://api.twilio.com")]
    pub twilio_base_url: Url,

    /// Twilio account SID. SMS is disabled without it.
    #[arg(long, env = "TWILIO_ACCOUNT_SID")]
    pub twilio_account_sid: Option<String>,

    /// Twilio auth token.
    #[arg(long, env = "TWILIO_AUTH_TOKEN", hide_env_values = true)]
    pub twilio_auth_token: Option<Secret>,

    /// Sender: an E.164 number, or a Messaging Service SID (MG...).
    #[arg(long, env = "TWILIO_FROM")]
    pub twilio_from: Option<String>,

    /// FCM API base URL.
    #[arg(long, env = "FCM_BASE_URL", default_value = "https://fcm.googleapis.com")]
    pub fcm_base_url: Url,

    /// Google service-account key file (JSON). Push is disabled without it.
    #[arg(long, env = "GOOGLE_APPLICATION_CREDENTIALS")]
    pub fcm_credentials: Option<PathBuf>,

    /// Firebase project id; defaults to the key file's project_id.
    #[arg(long, env = "FCM_PROJECT_ID")]
    pub fcm_project_id: Option<String>,

    /// On shutdown, how long in-flight work may take before herald gives up on it.
    #[arg(long, env = "HERALD_SHUTDOWN_DEADLINE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_deadline: Duration,

    /// Log format.
    #[arg(long, env = "HERALD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeliveryMode {
    Providers,
    DryRun,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// A rolling-window limit: at most `max` events per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimit {
    Off,
    PerWindow { max: u32, window: Duration },
}

impl FromStr for RateLimit {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("off") {
            return Ok(RateLimit::Off);
        }
        let (max, window) = s
            .split_once('/')
            .ok_or_else(|| format!("expected COUNT/WINDOW such as 10/1h, or off; got {s:?}"))?;
        let max: u32 = max.trim().parse().map_err(|_| format!("{max:?} is not a count"))?;
        let window = humantime::parse_duration(window.trim()).map_err(|e| format!("window {window:?}: {e}"))?;
        if max == 0 || window.is_zero() {
            return Err("count and window must be above zero; use off for no limit".into());
        }
        Ok(RateLimit::PerWindow { max, window })
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("--retry-topics has {topics} entries but --retry-delays has {delays}; give one delay per retry topic")]
    RetryScheduleMismatch { topics: usize, delays: usize },
    #[error("at least one retry topic is needed")]
    NoRetryTopics,
    #[error("topic {0:?} is configured for two roles; every topic must be distinct")]
    DuplicateTopic(String),
    #[error("topic names must not be empty")]
    EmptyTopic,
    #[error("--{0} must be at least 1")]
    Zero(&'static str),
    #[error("--sms-max-chars is {0}; Twilio accepts at most 1600")]
    SmsTooLong(usize),
    #[error("--twilio-account-sid, --twilio-auth-token and --twilio-from must be given together (missing {0})")]
    TwilioIncomplete(&'static str),
}

impl Config {
    /// Checks what clap cannot: relations between values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.retry_topics.is_empty() {
            return Err(ConfigError::NoRetryTopics);
        }
        if self.retry_topics.len() != self.retry_delays.len() {
            return Err(ConfigError::RetryScheduleMismatch {
                topics: self.retry_topics.len(),
                delays: self.retry_delays.len(),
            });
        }
        let mut seen = std::collections::HashSet::new();
        for topic in self.all_topics() {
            if topic.is_empty() {
                return Err(ConfigError::EmptyTopic);
            }
            if !seen.insert(topic) {
                return Err(ConfigError::DuplicateTopic(topic.to_owned()));
            }
        }
        for (name, value) in [
            ("sms-concurrency", self.sms_concurrency),
            ("push-concurrency", self.push_concurrency),
            ("channel-queue", self.channel_queue),
            ("sms-max-chars", self.sms_max_chars),
            ("topic-partitions", self.topic_partitions.max(0) as usize),
            ("topic-replication", self.topic_replication.max(0) as usize),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        if self.sms_max_chars > 1600 {
            return Err(ConfigError::SmsTooLong(self.sms_max_chars));
        }
        let twilio = [
            ("--twilio-account-sid", self.twilio_account_sid.is_some()),
            ("--twilio-auth-token", self.twilio_auth_token.is_some()),
            ("--twilio-from", self.twilio_from.is_some()),
        ];
        if twilio.iter().any(|(_, set)| *set) {
            if let Some((missing, _)) = twilio.iter().find(|(_, set)| !set) {
                return Err(ConfigError::TwilioIncomplete(missing));
            }
        }
        Ok(())
    }

    pub fn all_topics(&self) -> impl Iterator<Item = &str> {
        [&self.topic_requested, &self.topic_status, &self.topic_dead_letter]
            .into_iter()
            .chain(&self.retry_topics)
            .map(String::as_str)
    }

    pub fn rate_limit(&self, channel: Channel) -> RateLimit {
        match channel {
            Channel::Sms => self.sms_rate_limit,
            Channel::Push => self.push_rate_limit,
        }
    }

    pub fn concurrency(&self, channel: Channel) -> usize {
        match channel {
            Channel::Sms => self.sms_concurrency,
            Channel::Push => self.push_concurrency,
        }
    }
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("expected key=value, got {s:?}"))?;
    Ok((k.trim().to_owned(), v.trim().to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        Config::try_parse_from(std::iter::once("herald").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn defaults_match_the_service_herald_replaces() {
        let c = parse(&[]);
        assert_eq!(c.sms_rate_limit, RateLimit::PerWindow { max: 10, window: Duration::from_secs(3600) });
        assert_eq!(c.retry_topics, ["retry-10m", "retry-20m", "retry-40m"]);
        assert_eq!(c.retry_delays, [600, 1200, 2400].map(Duration::from_secs));
        assert_eq!(c.sms_max_chars, 480);
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn rate_limits_parse_and_reject_nonsense() {
        assert_eq!("off".parse::<RateLimit>(), Ok(RateLimit::Off));
        assert_eq!(
            "5/250ms".parse::<RateLimit>(),
            Ok(RateLimit::PerWindow { max: 5, window: Duration::from_millis(250) })
        );
        for bad in ["10", "0/1h", "10/0s", "x/1h", "10/soon"] {
            assert!(bad.parse::<RateLimit>().is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn retry_schedule_must_pair_topics_with_delays() {
        let c = parse(&["--retry-delays", "1s,2s"]);
        assert_eq!(c.validate(), Err(ConfigError::RetryScheduleMismatch { topics: 3, delays: 2 }));
    }

    #[test]
    fn a_topic_cannot_serve_two_roles() {
        let c = parse(&["--topic-status", "retry-20m"]);
        assert_eq!(c.validate(), Err(ConfigError::DuplicateTopic("retry-20m".into())));
    }

    #[test]
    fn twilio_credentials_come_together() {
        let c = parse(&["--twilio-account-sid", "AC1"]);
        assert_eq!(c.validate(), Err(ConfigError::TwilioIncomplete("--twilio-auth-token")));
    }

    #[test]
    fn the_auth_token_never_shows_in_a_config_dump() {
        let c = parse(&["--twilio-auth-token", "s3cr3t-token"]);
        assert!(!format!("{c:?}").contains("s3cr3t-token"));
    }
}
