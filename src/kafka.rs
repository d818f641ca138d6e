//! librdkafka client settings, in one place.

use std::time::Duration;

use rdkafka::admin::AdminClient;
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::producer::FutureProducer;

use crate::flags::{self, ConfigError};

/// The flags of herald's Kafka clients.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Kafka")]
pub struct KafkaArgs {
    /// Kafka bootstrap servers (host:port,...).
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub(crate) brokers: String,

    /// Consumer group id; run more instances with the same id to scale out.
    #[arg(long, env = "HERALD_GROUP_ID", default_value = "herald")]
    pub(crate) group_id: String,

    /// Extra librdkafka settings for every client, as key=value (repeat, or comma-separate).
    #[arg(long = "kafka-option", env = "HERALD_KAFKA_OPTIONS", value_delimiter = ',', value_parser = flags::parse_key_value)]
    pub(crate) kafka_options: Vec<(String, String)>,

    /// Extra librdkafka settings for the consumer only (group timeouts, fetch sizes); these win over --kafka-option.
    #[arg(long = "kafka-consumer-option", env = "HERALD_KAFKA_CONSUMER_OPTIONS", value_delimiter = ',', value_parser = flags::parse_key_value)]
    pub(crate) kafka_consumer_options: Vec<(String, String)>,

    /// Extra librdkafka settings for the producer only (batching, compression); these win over --kafka-option.
    #[arg(long = "kafka-producer-option", env = "HERALD_KAFKA_PRODUCER_OPTIONS", value_delimiter = ',', value_parser = flags::parse_key_value)]
    pub(crate) kafka_producer_options: Vec<(String, String)>,

    /// The largest record herald produces (librdkafka's message.max.bytes). Apache Kafka's default limit; a consumed record too large to copy with herald's headers within it is INVALID (record-too-large), and its dead letter carries none of its bytes.
    #[arg(long, env = "HERALD_MAX_MESSAGE_BYTES", default_value_t = 1_048_588)]
    pub(crate) max_message_bytes: usize,

    /// How often stored offsets are committed; what was finished but not committed is delivered again after a crash (and not sent again: see the send ledger).
    #[arg(long, env = "HERALD_COMMIT_INTERVAL", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub(crate) commit_interval: Duration,
}


impl KafkaArgs {
    /// The clients' settings, checked.
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        if self.max_message_bytes < flags::MIN_MESSAGE_BYTES {
            return Err(ConfigError::MaxMessageBytes(self.max_message_bytes));
        }
        flags::counts(&[("commit-interval", self.commit_interval.as_millis() as usize, false)])?;
        Ok(Settings {
            brokers: self.brokers.clone(),
            group_id: self.group_id.clone(),
            options: self.kafka_options.clone(),
            consumer_options: self.kafka_consumer_options.clone(),
            producer_options: self.kafka_producer_options.clone(),
            max_message_bytes: self.max_message_bytes,
            commit_interval: self.commit_interval,
        })
    }
}

/// How herald's Kafka clients connect, and the operator's own settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub brokers: String,
    pub group_id: String,
    /// For every client.
    pub options: Vec<(String, String)>,
    /// For the group's consumer; these win over `options`.
    pub consumer_options: Vec<(String, String)>,
    /// For the producer; these win over `options`.
    pub producer_options: Vec<(String, String)>,
    /// The largest record herald produces.
    pub max_message_bytes: usize,
    /// How often stored offsets are committed.
    pub commit_interval: Duration,
}

fn base(config: &Settings) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.brokers)
        // Client telemetry push is not needed and not every broker wants it.
        .set("enable.metrics.push", "false");
    c
}

/// Operator-supplied settings win over herald's defaults, and settings for
/// one kind of client win over those for every client.
fn with_overrides(mut c: ClientConfig, config: &Settings, specific: &[(String, String)]) -> ClientConfig {
    for (key, value) in config.options.iter().chain(specific) {
        c.set(key, value);
    }
    c
}

/// A consumer in herald's group, with herald's settings and the operator's.
pub fn consumer<C: ConsumerContext + 'static>(config: &Settings, context: C) -> KafkaResult<StreamConsumer<C>> {
    consumer_config(config).create_with_context(context)
}

/// The consumer's `max.poll.interval.ms`, as it will have it.
pub(crate) fn max_poll_interval(config: &Settings) -> Duration {
    let ms = consumer_config(config).get("max.poll.interval.ms").and_then(|v| v.parse().ok()).unwrap_or(300_000);
    Duration::from_millis(ms)
}

/// The settings of herald's consumer, in another group: offsets stored
/// by the caller, committed in the background.
pub(crate) fn consumer_config_in(config: &Settings, group: &str) -> ClientConfig {
    let mut c = consumer_config(config);
    // No lag metrics there: rdkafka's default context would log every
    // statistics report, at info, every five seconds.
    c.set("group.id", group).set("statistics.interval.ms", "0");
    c
}

fn consumer_config(config: &Settings) -> ClientConfig {
    let mut c = base(config);
    c.set("group.id", &config.group_id)
        // Offsets are stored by the loop once outcomes are durable, and
        // committed in the background from what was stored, often: what
        // was finished but not committed is delivered again after a crash.
        // librdkafka also commits them when partitions are revoked.
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", config.commit_interval.as_millis().to_string())
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // Range gives one member the same partition number of every input
        // topic. herald keeps a user's delayed records on the partition
        // number they came from, so each user has a single consumer, which
        // the rate limiter's cache relies on.
        .set("partition.assignment.strategy", "range")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        // The loop never blocks longer than a provider timeout.
        .set("max.poll.interval.ms", "60000")
        // Prefetch at most 16 MB (librdkafka's default is 64 MB): at
        // herald's rates that is still a fraction of a second of work, and
        // it keeps memory flat whatever the backlog. Past the limit,
        // librdkafka waits this long before fetching again (1 s by default,
        // long enough for the queue to run dry).
        .set("queued.max.messages.kbytes", "16384")
        // Each partition's lag for the metrics (see `ingest::IngestContext`).
        .set("statistics.interval.ms", "5000")
        .set("fetch.queue.backoff.ms", "100");
    with_overrides(c, config, &config.consumer_options)
}

/// Reports librdkafka's errors, except partition EOF: herald turns EOF on
/// to find where a topic ends, and librdkafka also reports each one as a
/// client error, which here it is not.
pub(crate) fn client_error(error: KafkaError, reason: &str) {
    if error.rdkafka_error_code() != Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF) {
        tracing::error!(message = "Kafka client error.", %error, reason);
    }
}

/// The context of a [`reader`].
#[derive(Default)]
pub struct ReaderContext;

impl ClientContext for ReaderContext {
    fn error(&self, error: KafkaError, reason: &str) {
        client_error(error, reason);
    }
}

impl ConsumerContext for ReaderContext {}

pub(crate) type Reader = StreamConsumer<ReaderContext>;

/// A consumer outside the group, for reading a whole topic (the
/// suppression list) by assignment; it commits nothing. The
/// consumer-specific options are for the group's consumer and its load,
/// not for this one, which is idle most of the time.
pub fn reader(config: &Settings) -> KafkaResult<Reader> {
    reader_config(config, "reader").create_with_context(ReaderContext)
}

/// A [`reader`]'s settings; `role` names its group id's suffix.
pub(crate) fn reader_config(config: &Settings, role: &str) -> ClientConfig {
    let mut c = base(config);
    c.set("group.id", format!("{}.{role}", config.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // The end of a partition is where a fetch finds it, which does not
        // depend on the broker's ListOffsets.
        .set("enable.partition.eof", "true")
        // The list is small; a short wait keeps a broker that answers a
        // fetch only when the wait runs out from slowing startup.
        .set("fetch.wait.max.ms", "100");
    with_overrides(c, config, &[])
}

/// The producer's `message.max.bytes`, as the producer will have it: an
/// operator's `--kafka-producer-option` wins over `--max-message-bytes`.
pub(crate) fn max_message_bytes(config: &Settings) -> usize {
    producer_config(config).get("message.max.bytes").and_then(|v| v.parse().ok()).unwrap_or(config.max_message_bytes)
}

/// An idempotent producer with herald's settings and the operator's.
pub fn producer(config: &Settings) -> KafkaResult<FutureProducer> {
    producer_config(config).create()
}

fn producer_config(config: &Settings) -> ClientConfig {
    let mut c = base(config);
    c.set("message.max.bytes", config.max_message_bytes.to_string())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // A provider call's slot is held until its status is acknowledged
        // (the crash bound of the send ledger), so the linger is paid on
        // every call: at 5 ms it halved the calls a second. At herald's bulk
        // rates, 1 ms still fills batches of hundreds.
        .set("linger.ms", "1")
        .set("compression.type", "lz4");
    with_overrides(c, config, &config.producer_options)
}

pub(crate) fn admin(config: &Settings) -> KafkaResult<AdminClient<DefaultClientContext>> {
    with_overrides(base(config), config, &[]).create()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_specific_options_apply_to_their_client_only_and_win() {
        let pairs = |p: &[(&str, &str)]| p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let config = Settings {
            brokers: "127.0.0.1:9092".into(),
            group_id: "herald".into(),
            options: pairs(&[("client.id", "all"), ("session.timeout.ms", "7000")]),
            consumer_options: pairs(&[("session.timeout.ms", "6000")]),
            producer_options: pairs(&[("linger.ms", "20")]),
            max_message_bytes: 1_048_588,
            commit_interval: Duration::from_millis(500),
        };
        let (consumer, producer) = (consumer_config(&config), producer_config(&config));
        assert_eq!(consumer.get("session.timeout.ms"), Some("6000"));
        assert_eq!(consumer.get("linger.ms"), None);
        assert_eq!(producer.get("linger.ms"), Some("20"));
        assert_eq!(producer.get("session.timeout.ms"), Some("7000"), "--kafka-option is for every client");
        assert_eq!((consumer.get("client.id"), producer.get("client.id")), (Some("all"), Some("all")));
        // Offsets are stored by herald, and committed every --commit-interval.
        let every = Settings { commit_interval: Duration::from_millis(200), ..config };
        let consumer = consumer_config(&every);
        assert_eq!((consumer.get("auto.commit.interval.ms"), consumer.get("enable.auto.offset.store")), (Some("200"), Some("false")));
    }
}

/// No bootstrap server of `--brokers` accepts a connection.
#[derive(Debug, thiserror::Error)]
#[error("--brokers {brokers}: {reason}")]
pub struct Unreachable {
    pub brokers: String,
    pub reason: String,
}

/// Whether any bootstrap server accepts a connection, tried at once
/// rather than after the Kafka client's own retries: a wrong address is a
/// configuration mistake, and the error should say so and name it.
pub(crate) async fn reachable(brokers: &str) -> Result<(), Unreachable> {
    const TIMEOUT: Duration = Duration::from_secs(5);
    let failed = |reason: String| Unreachable { brokers: brokers.to_owned(), reason };
    let addresses: Vec<String> = brokers
        .split(',')
        .map(|b| b.trim().rsplit_once("://").map_or(b.trim(), |(_, a)| a).to_owned())
        .filter(|b| !b.is_empty())
        .map(|b| if b.contains(':') { b } else { format!("{b}:9092") })
        .collect();
    if addresses.is_empty() {
        return Err(failed("no bootstrap server given".into()));
    }
    let attempts = addresses.iter().map(|address| async move {
        match tokio::time::timeout(TIMEOUT, tokio::net::TcpStream::connect(address.as_str())).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(format!("{address}: {error}")),
            Err(_) => Err(format!("{address}: no answer within {TIMEOUT:?}")),
        }
    });
    let results = futures::future::join_all(attempts).await;
    if results.iter().any(Result::is_ok) {
        return Ok(());
    }
    let reasons: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    Err(failed(format!("no bootstrap server accepts connections ({})", reasons.join("; "))))
}
