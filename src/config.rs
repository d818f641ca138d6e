//! Configuration: parsed once from flags and environment at startup,
//! checked, then turned into the settings each module owns
//! ([`Config::settings`]). No module below reads the environment, or this
//! module: each is handed its own settings.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, Parser};
use reqwest::Url;
use secrecy::SecretString;

use crate::cql::{self, Consistency};
use crate::pipeline::deliver::sms::{OverLength, SmsRules, StatusCallbacks};
use crate::pipeline::deliver::{self, BreakerSettings, DeliveryMode, SmsProvider, TwilioAuth, TwilioSender};
use crate::kafka;
use crate::pipeline::ratelimit::{self, ChannelLimit, OverLimit, RateLimit};
use crate::model::Channel;
use crate::pipeline::quiet::{Quiet, QuietHours};
use crate::pipeline::receipts;
use crate::pipeline::route::LaneSettings;
use crate::telemetry::LogFormat;
use crate::topics::{self, DelayTopic, Topics};

#[derive(Debug, Clone, Parser)]
#[command(name = "herald", version, about = "Kafka notification pipeline: requests in, SMS and push out, every outcome on notification.status")]
pub struct Config {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub topics: TopicArgs,
    #[command(flatten)]
    pub rate_limits: RateLimitArgs,
    #[command(flatten)]
    pub scylla: ScyllaArgs,
    #[command(flatten)]
    pub delivery: DeliveryArgs,
    #[command(flatten)]
    pub twilio: TwilioArgs,
    #[command(flatten)]
    pub vonage: VonageArgs,
    #[command(flatten)]
    pub fcm: FcmArgs,
    #[command(flatten)]
    pub receipts: ReceiptsArgs,

    /// Address of the admin endpoints (/metrics, /healthz, /readyz), or off. Loopback by default, 127.0.0.1:9464 for the pipeline and 127.0.0.1:9465 for `herald api`, so both run on one host: they need no token, and exposing them is a choice (compose and the manifests listen on 0.0.0.0).
    #[arg(long, env = "HERALD_ADMIN_LISTEN", value_parser = parse_listen)]
    pub admin_listen: Option<Listen>,

    /// On shutdown, how long in-flight work may take before herald gives up on it.
    #[arg(long, env = "HERALD_SHUTDOWN_DEADLINE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_deadline: Duration,

    /// Log format.
    #[arg(long, env = "HERALD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Kafka")]
pub struct KafkaArgs {
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

    /// The largest record herald produces (librdkafka's message.max.bytes). Apache Kafka's default limit; a consumed record too large to copy with herald's headers within it is INVALID (record-too-large), and its dead letter carries none of its bytes.
    #[arg(long, env = "HERALD_MAX_MESSAGE_BYTES", default_value_t = 1_048_588)]
    pub max_message_bytes: usize,

    /// How often stored offsets are committed; what was finished but not committed is delivered again after a crash (and not sent again: see the send ledger).
    #[arg(long, env = "HERALD_COMMIT_INTERVAL", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub commit_interval: Duration,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Topics")]
pub struct TopicArgs {
    /// Topic herald consumes requests from.
    #[arg(long, env = "HERALD_TOPIC_REQUESTED", default_value = "notification.requested")]
    pub topic_requested: String,

    /// Topic herald publishes status events to.
    #[arg(long, env = "HERALD_TOPIC_STATUS", default_value = "notification.status")]
    pub topic_status: String,

    /// Topic for records that cannot be delivered: undecodable, invalid, or out of retries.
    #[arg(long, env = "HERALD_TOPIC_DEAD_LETTER", default_value = "notification.dead-letter")]
    pub topic_dead_letter: String,

    /// Compacted topic of suppressed recipients (opted-out numbers, dead push tokens); a tombstone opts one back in.
    #[arg(long, env = "HERALD_TOPIC_SUPPRESSIONS", default_value = "notification.suppressions")]
    pub topic_suppressions: String,

    /// Compacted topic of cancels, keyed by event id; a tombstone withdraws one.
    #[arg(long, env = "HERALD_TOPIC_CANCELLATIONS", default_value = "notification.cancellations")]
    pub topic_cancellations: String,

    /// Request headers copied onto its status events and dead letters, besides traceparent and tracestate (always).
    #[arg(long, env = "HERALD_PROPAGATE_HEADERS", value_delimiter = ',')]
    pub propagate_headers: Vec<String>,

    /// The furthest ahead a request may be scheduled; later ones are INVALID (scheduled-too-far). It bounds how long a cancel is remembered.
    #[arg(long, env = "HERALD_MAX_SCHEDULE_AHEAD", default_value = "30d", value_parser = humantime::parse_duration)]
    pub max_schedule_ahead: Duration,

    /// Retry topics, in order. A transient failure on attempt n goes to the n-th.
    #[arg(long, env = "HERALD_RETRY_TOPICS", value_delimiter = ',', default_value = "retry-10m,retry-20m,retry-40m")]
    pub retry_topics: Vec<String>,

    /// Delay of each retry topic, same order (humantime: 10m, 1h, 250ms).
    #[arg(long, env = "HERALD_RETRY_DELAYS", value_delimiter = ',', default_value = "10m,20m,40m", value_parser = humantime::parse_duration)]
    pub retry_delays: Vec<Duration>,

    /// The timing wheel's tiers: topics whose records all wait one fixed time, for scheduled sends, deferrals and waits for a circuit to close. A record waits on the tiers that take it there in the fewest copies.
    #[arg(long, env = "HERALD_WAIT_TOPICS", value_delimiter = ',', default_value = topics::DEFAULT_WAIT_TOPICS)]
    pub wait_topics: Vec<String>,

    /// Delay of each tier, same order (humantime). The shortest must be at most --hold-window.
    #[arg(long, env = "HERALD_WAIT_DELAYS", value_delimiter = ',', default_value = topics::DEFAULT_WAIT_DELAYS, value_parser = humantime::parse_duration)]
    pub wait_delays: Vec<Duration>,

    /// Parked records due within this long are held in memory until their time, and the partition read on past them: a tier then serves every wait from its delay less this to its delay, on time.
    #[arg(long, env = "HERALD_HOLD_WINDOW", default_value = topics::DEFAULT_HOLD, value_parser = humantime::parse_duration)]
    pub hold_window: Duration,

    /// Parked records held in memory at most; past it, a delay topic's partition waits for room.
    #[arg(long, env = "HERALD_HOLD_RECORDS", default_value_t = 20_000)]
    pub hold_records: usize,

    /// Secret (at least 32 bytes) that signs what herald parks on its delay topics, so that a record written there by anyone else is judged as a new request. The same on every instance of a deployment; required by the pipeline.
    #[arg(long, env = "HERALD_ENVELOPE_KEY", hide_env_values = true)]
    pub envelope_key: Option<SecretString>,

    /// A file holding --envelope-key (as Kubernetes and Docker mount secrets).
    #[arg(long, env = "HERALD_ENVELOPE_KEY_FILE", conflicts_with = "envelope_key")]
    pub envelope_key_file: Option<PathBuf>,

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
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Rate limits")]
pub struct RateLimitArgs {
    /// SMS rate limit per user: COUNT/WINDOW (10/1h), several comma-separated (10/1h,50/1d), or off.
    #[arg(long, env = "HERALD_SMS_RATE_LIMIT", default_value = "10/1h")]
    pub sms_rate_limit: RateLimit,

    /// Push rate limit per user: COUNT/WINDOW[,COUNT/WINDOW] or off.
    #[arg(long, env = "HERALD_PUSH_RATE_LIMIT", default_value = "off")]
    pub push_rate_limit: RateLimit,

    /// What happens to an SMS over its limit: reject (status RATE_LIMITED) or defer (DEFERRED, sent when the window allows).
    #[arg(long, env = "HERALD_SMS_OVER_LIMIT", value_enum, default_value_t = OverLimit::Reject)]
    pub sms_over_limit: OverLimit,

    /// What happens to a push over its limit: reject or defer.
    #[arg(long, env = "HERALD_PUSH_OVER_LIMIT", value_enum, default_value_t = OverLimit::Reject)]
    pub push_over_limit: OverLimit,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "ScyllaDB")]
pub struct ScyllaArgs {
    /// ScyllaDB contact points (host:port, comma-separated). Without it, rate limits are kept in memory and reset on restart.
    #[arg(long, env = "SCYLLA_URI")]
    pub scylla_uri: Option<String>,

    /// Keyspace of herald's tables.
    #[arg(long, env = "HERALD_SCYLLA_KEYSPACE", default_value = "herald")]
    pub scylla_keyspace: String,

    /// Replication of the keyspace, as CQL, used by `herald migrate` when it creates the keyspace.
    #[arg(long, env = "HERALD_SCYLLA_REPLICATION", default_value = "{'class': 'NetworkTopologyStrategy', 'replication_factor': 3}")]
    pub scylla_replication: String,

    /// Consistency of rate-limit reads and writes.
    #[arg(long, env = "HERALD_SCYLLA_CONSISTENCY", value_enum, default_value_t = Consistency::LocalQuorum)]
    pub scylla_consistency: Consistency,

    /// Timeout of one ScyllaDB request, and of connecting.
    #[arg(long, env = "HERALD_SCYLLA_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub scylla_timeout: Duration,

    /// Rate-limit writes in flight at once; when they are all pending, the consumer waits.
    #[arg(long, env = "HERALD_SCYLLA_MAX_WRITES", default_value_t = 1024)]
    pub scylla_max_writes: usize,

    /// Wait for schema agreement after schema changes (turn off only for single-node test servers).
    #[arg(long, env = "HERALD_SCYLLA_AWAIT_SCHEMA_AGREEMENT", default_value_t = true, action = ArgAction::Set)]
    pub scylla_await_schema_agreement: bool,

    /// Fetch schema metadata on connect (turn off only for test servers that lack it).
    #[arg(long, env = "HERALD_SCYLLA_FETCH_SCHEMA_METADATA", default_value_t = true, action = ArgAction::Set)]
    pub scylla_fetch_schema_metadata: bool,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Delivery")]
pub struct DeliveryArgs {
    /// `providers` calls Twilio and FCM; `dry-run` skips the call and reports SENT by provider dry-run.
    #[arg(long, env = "HERALD_DELIVERY", value_enum, default_value_t = DeliveryMode::Providers)]
    pub delivery: DeliveryMode,

    /// Concurrent SMS provider requests.
    #[arg(long, env = "HERALD_SMS_CONCURRENCY", default_value_t = 32)]
    pub sms_concurrency: usize,

    /// Concurrent push provider requests.
    #[arg(long, env = "HERALD_PUSH_CONCURRENCY", default_value_t = 32)]
    pub push_concurrency: usize,

    /// Sends, over all channels, from before the provider call until their status is acknowledged: the most a crash can repeat.
    #[arg(long, env = "HERALD_UNCONFIRMED_SENDS", default_value_t = 64)]
    pub unconfirmed_sends: usize,

    /// Records one channel may hold (waiting plus in flight) before the consumer waits for it.
    #[arg(long, env = "HERALD_CHANNEL_QUEUE", default_value_t = 2048)]
    pub channel_queue: usize,

    /// Timeout of one provider HTTP request; a timeout is a transient failure.
    #[arg(long, env = "HERALD_HTTP_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub http_timeout: Duration,

    /// Transient failures in a row that open a provider's circuit: its calls then fail at once, to the retry topics.
    #[arg(long, env = "HERALD_BREAKER_FAILURES", default_value_t = 5)]
    pub breaker_failures: u32,

    /// How long an open circuit stays open before one trial call.
    #[arg(long, env = "HERALD_BREAKER_COOLDOWN", default_value = "30s", value_parser = humantime::parse_duration)]
    pub breaker_cooldown: Duration,

    /// How long the send ledger remembers a send after its status, or after the next attempt a status announced.
    #[arg(long, env = "HERALD_LEDGER_WINDOW", default_value = "1h", value_parser = humantime::parse_duration)]
    pub ledger_window: Duration,

    /// Longest SMS body sent, in characters (after the template). Twilio's own limit is 1600.
    #[arg(long, env = "HERALD_SMS_MAX_CHARS", default_value_t = 480)]
    pub sms_max_chars: usize,

    /// An SMS body over --sms-max-chars: reject (status INVALID, body-too-long) or truncate (ending in an ellipsis).
    #[arg(long, env = "HERALD_SMS_OVER_LENGTH", value_enum, default_value_t = OverLength::Reject)]
    pub sms_over_length: OverLength,

    /// SMS body template, e.g. "{user_name}: {message}": {message} is the request's body, other names its template variables.
    #[arg(long, env = "HERALD_SMS_TEMPLATE")]
    pub sms_template: Option<String>,

    /// SMS providers in failover order: a transient failure (or an open circuit) of one moves the send to the next. Those without credentials are left out.
    #[arg(long, env = "HERALD_SMS_PROVIDERS", value_enum, value_delimiter = ',', default_value = "twilio,vonage")]
    pub sms_providers: Vec<SmsProvider>,

    /// SMS quiet hours in the recipient's time zone, e.g. 21:00-08:00 (may cross midnight), or off: requests not URGENT are DEFERRED until they end.
    #[arg(long, env = "HERALD_SMS_QUIET_HOURS", default_value = "off")]
    pub sms_quiet_hours: Quiet,

    /// Push quiet hours, as --sms-quiet-hours.
    #[arg(long, env = "HERALD_PUSH_QUIET_HOURS", default_value = "off")]
    pub push_quiet_hours: Quiet,

    /// The time zone of requests that name none (an IANA name).
    #[arg(long, env = "HERALD_DEFAULT_TIME_ZONE", default_value = "UTC", value_parser = parse_time_zone)]
    pub default_time_zone: chrono_tz::Tz,

    /// Directory of localized templates: <template_id>/<locale>.sms, .push.title, .push.body. Loaded at startup, and again on SIGHUP.
    #[arg(long, env = "HERALD_TEMPLATES_DIR")]
    pub templates_dir: Option<std::path::PathBuf>,

    /// The locale a template falls back to when neither the request's locale nor its parents have a file.
    #[arg(long, env = "HERALD_DEFAULT_LOCALE", default_value = "en")]
    pub default_locale: String,
}

/// The environment names of the services herald replaces, where they mean
/// what one of herald's does: `TWILIO_FROM_NUMBER` (the SMS service) and
/// `TWILIO_PHONE_NUMBER` (the SMS-and-push service) are `TWILIO_FROM`, and
/// `SMS_PROVIDER` picks the first SMS provider (the others follow in
/// herald's order). Returns the variables to set. Names set alike are one
/// setting; set differently, they are an error, since either reading would
/// surprise someone.
pub fn legacy_env(get: impl Fn(&str) -> Option<String>) -> Result<Vec<(&'static str, String)>, String> {
    let mut set = Vec::new();
    let senders: Vec<(&str, String)> = ["TWILIO_FROM", "TWILIO_FROM_NUMBER", "TWILIO_PHONE_NUMBER"].into_iter().filter_map(|n| Some((n, get(n)?))).collect();
    if let Some((first, number)) = senders.first() {
        if let Some((other, _)) = senders.iter().find(|(_, v)| v != number) {
            return Err(format!("{first} and {other} are both set, and differ: set one"));
        }
        if *first != "TWILIO_FROM" {
            set.push(("TWILIO_FROM", number.clone()));
        }
    }
    if let Some(provider) = get("SMS_PROVIDER") {
        let first = match provider.trim().to_ascii_lowercase().as_str() {
            "twilio" => "twilio",
            "vonage" | "nexmo" => "vonage",
            _ => return Err(format!("SMS_PROVIDER {provider:?} is not twilio or vonage")),
        };
        let order: Vec<&str> = std::iter::once(first).chain(["twilio", "vonage"].into_iter().filter(|p| *p != first)).collect();
        match get("HERALD_SMS_PROVIDERS") {
            Some(providers) if providers.split(',').next().map(|p| p.trim().to_ascii_lowercase()) != Some(first.to_owned()) => {
                return Err(format!("SMS_PROVIDER says {first} first, and HERALD_SMS_PROVIDERS {providers:?} does not: set one"));
            }
            Some(_) => {}
            None => set.push(("HERALD_SMS_PROVIDERS", order.join(","))),
        }
    }
    Ok(set)
}

fn parse_time_zone(name: &str) -> Result<chrono_tz::Tz, String> {
    chrono_tz::Tz::from_str_insensitive(name).map_err(|_| format!("{name:?} is not an IANA time zone name, such as Europe/Lisbon"))
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Twilio")]
pub struct TwilioArgs {
    /// Twilio API base URL.
    #[arg(long, env = "TWILIO_BASE_URL", default_value = "https://api.twilio.com")]
    pub twilio_base_url: Url,

    /// Twilio account SID. SMS is disabled without it.
    #[arg(long, env = "TWILIO_ACCOUNT_SID")]
    pub twilio_account_sid: Option<String>,

    /// Twilio auth token.
    #[arg(long, env = "TWILIO_AUTH_TOKEN", hide_env_values = true)]
    pub twilio_auth_token: Option<SecretString>,

    /// A file holding the Twilio auth token.
    #[arg(long, env = "TWILIO_AUTH_TOKEN_FILE", conflicts_with = "twilio_auth_token")]
    pub twilio_auth_token_file: Option<PathBuf>,

    /// Twilio API key SID (SK...): with its secret, authenticates requests instead of the auth token, which then only checks receipt signatures.
    #[arg(long, env = "TWILIO_API_KEY_SID")]
    pub twilio_api_key_sid: Option<String>,

    /// The API key's secret.
    #[arg(long, env = "TWILIO_API_KEY_SECRET", hide_env_values = true)]
    pub twilio_api_key_secret: Option<SecretString>,

    /// A file holding the API key's secret.
    #[arg(long, env = "TWILIO_API_KEY_SECRET_FILE", conflicts_with = "twilio_api_key_secret")]
    pub twilio_api_key_secret_file: Option<PathBuf>,

    /// Sender: an E.164 number, or a Messaging Service SID (MG...).
    #[arg(long, env = "TWILIO_FROM")]
    pub twilio_from: Option<TwilioSender>,

    /// Most Twilio requests per second (a token bucket); unlimited without it.
    #[arg(long, env = "HERALD_TWILIO_MAX_RPS")]
    pub twilio_max_rps: Option<std::num::NonZeroU32>,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Vonage")]
pub struct VonageArgs {
    /// Vonage SMS API base URL.
    #[arg(long, env = "VONAGE_BASE_URL", default_value = "https://rest.nexmo.com")]
    pub vonage_base_url: Url,

    /// Vonage API key. Vonage is left out without it.
    #[arg(long, env = "VONAGE_API_KEY")]
    pub vonage_api_key: Option<String>,

    /// Vonage API secret.
    #[arg(long, env = "VONAGE_API_SECRET", hide_env_values = true)]
    pub vonage_api_secret: Option<SecretString>,

    /// A file holding the Vonage API secret.
    #[arg(long, env = "VONAGE_API_SECRET_FILE", conflicts_with = "vonage_api_secret")]
    pub vonage_api_secret_file: Option<PathBuf>,

    /// Vonage sender: a number (E.164) or an alphanumeric sender id.
    #[arg(long, env = "VONAGE_FROM", value_parser = parse_vonage_sender)]
    pub vonage_from: Option<String>,

    /// Most Vonage requests per second; unlimited without it.
    #[arg(long, env = "HERALD_VONAGE_MAX_RPS")]
    pub vonage_max_rps: Option<std::num::NonZeroU32>,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "FCM")]
pub struct FcmArgs {
    /// FCM API base URL.
    #[arg(long, env = "FCM_BASE_URL", default_value = "https://fcm.googleapis.com")]
    pub fcm_base_url: Url,

    /// Google service-account key file (JSON). Push is disabled without it.
    #[arg(long, env = "GOOGLE_APPLICATION_CREDENTIALS")]
    pub fcm_credentials: Option<PathBuf>,

    /// Firebase project id; defaults to the key file's project_id.
    #[arg(long, env = "FCM_PROJECT_ID")]
    pub fcm_project_id: Option<String>,

    /// Most FCM requests per second; unlimited without it.
    #[arg(long, env = "HERALD_FCM_MAX_RPS")]
    pub fcm_max_rps: Option<std::num::NonZeroU32>,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Delivery receipts")]
pub struct ReceiptsArgs {
    /// Address to accept Twilio status callbacks (delivery receipts) on, e.g. 0.0.0.0:8080. Off without it.
    #[arg(long, env = "HERALD_RECEIPTS_LISTEN")]
    pub receipts_listen: Option<std::net::SocketAddr>,

    /// The callback URL as Twilio reaches it (behind any proxy), e.g. https://herald.example.com/twilio/status; its path is served.
    #[arg(long, env = "HERALD_RECEIPTS_PUBLIC_URL")]
    pub receipts_public_url: Option<Url>,

    /// Key that signs the ids in callback URLs, so a callback can only name a send herald made. Derived from the auth token when not given.
    #[arg(long, env = "HERALD_RECEIPTS_KEY", hide_env_values = true)]
    pub receipts_key: Option<SecretString>,

    /// A file holding --receipts-key.
    #[arg(long, env = "HERALD_RECEIPTS_KEY_FILE", conflicts_with = "receipts_key")]
    pub receipts_key_file: Option<PathBuf>,

    /// Webhook connections open at once; more wait to be accepted.
    #[arg(long, env = "HERALD_RECEIPTS_MAX_CONNECTIONS", default_value_t = 256)]
    pub receipts_max_connections: usize,
}

/// Without a subcommand, herald runs the pipeline.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Apply the CQL schema in schemas/scylla to SCYLLA_URI (idempotent), then exit.
    Migrate,
    /// Look into the dead-letter topic, and replay from it.
    Dlq {
        #[command(subcommand)]
        command: crate::dlq::DlqCommand,
    },
    /// Keep the status store from notification.status, and serve the query and cancel API (needs SCYLLA_URI).
    Api(ApiArgs),
    /// Check the configuration as the pipeline (or `check api`, the API) would at startup, without connecting to anything; exit 0 when it would start.
    Check {
        #[command(subcommand)]
        program: Option<CheckProgram>,
    },
}

/// What `herald check` checks, besides the pipeline.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum CheckProgram {
    /// The configuration of `herald api`, with the same flags.
    Api(ApiArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// Address the API listens on: loopback by default; compose and the manifests listen on 0.0.0.0:8080.
    #[arg(long = "api-listen", env = "HERALD_API_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,

    /// Bearer token every API request must carry, at least 32 bytes.
    #[arg(long = "api-token", env = "HERALD_API_TOKEN", hide_env_values = true, required_unless_present = "token_file")]
    pub token: Option<SecretString>,

    /// A file holding --api-token.
    #[arg(long = "api-token-file", env = "HERALD_API_TOKEN_FILE", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,

    /// Cancels one token may make, as COUNT/PERIOD (10/1s): a burst of COUNT, refilled over PERIOD. Each is a record on a topic every pipeline instance reads whole at startup.
    #[arg(long = "api-cancel-rate", env = "HERALD_API_CANCEL_RATE", default_value = "10/1s", value_parser = parse_rate)]
    pub cancel_rate: governor::Quota,

    /// Consumer group of the status store; --group-id with ".api" appended by default.
    #[arg(long = "api-group-id", env = "HERALD_API_GROUP_ID")]
    pub group_id: Option<String>,
}

impl ApiArgs {
    /// The token, read from its file when given as one, and long enough.
    pub fn bearer(&self) -> Result<SecretString, ConfigError> {
        let token = match (&self.token, &self.token_file) {
            (_, Some(path)) => read_secret("--api-token-file", path)?,
            (Some(token), None) => token.clone(),
            (None, None) => SecretString::from(String::new()),
        };
        let len = secrecy::ExposeSecret::expose_secret(&token).len();
        if len < MIN_SECRET_BYTES {
            return Err(ConfigError::SecretTooShort { flag: "--api-token", len });
        }
        Ok(token)
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("--default-locale {0:?} is not a BCP 47 tag such as en or pt-BR")]
    DefaultLocale(String),
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
    #[error("--{0} is {1}; it must be at most {max}", max = tokio::sync::Semaphore::MAX_PERMITS)]
    TooLarge(&'static str, usize),
    #[error("--unconfirmed-sends ({unconfirmed}) must be more than --{lane} ({concurrency}): a provider that hangs holds the sends of its lane's calls, and the other channel needs some left")]
    UnconfirmedWithinLane { unconfirmed: usize, lane: &'static str, concurrency: usize },
    #[error("--sms-max-chars is {0}; Twilio accepts at most 1600")]
    SmsTooLong(usize),
    #[error("--twilio-account-sid, --twilio-from and credentials (--twilio-auth-token, or an API key) must be given together (missing {0})")]
    TwilioIncomplete(&'static str),
    #[error("--scylla-keyspace {0:?} is not a CQL identifier (letters, digits and _, at most 48, not starting with a digit)")]
    Keyspace(String),
    #[error("delivery receipts need Twilio credentials: their signatures are checked with the auth token")]
    ReceiptsWithoutTwilio,
    #[error("--receipts-public-url {0:?} is not an https URL (plain http only to a loopback host): Twilio's signature and herald's own travel in it")]
    ReceiptsUrl(String),
    #[error("--receipts-listen and --receipts-public-url must be given together")]
    ReceiptsIncomplete,
    #[error("--vonage-api-key, --vonage-api-secret and --vonage-from must be given together (missing {0})")]
    VonageIncomplete(&'static str),
    #[error("--twilio-api-key-sid and --twilio-api-key-secret must be given together (missing {0})")]
    TwilioApiKeyIncomplete(&'static str),
    #[error(
        "--envelope-key (or --envelope-key-file) is required: herald signs what it parks on its delay topics with it, so that a record written there by anyone else is judged as a new request. Give every instance of a deployment the same secret of at least {min} bytes, e.g. `openssl rand -base64 32`",
        min = MIN_SECRET_BYTES
    )]
    NoEnvelopeKey,
    #[error("{flag} is {len} bytes; it must be at least {min}, e.g. `openssl rand -base64 32`", min = MIN_SECRET_BYTES)]
    SecretTooShort { flag: &'static str, len: usize },
    #[error("{flag} {path}: {reason}")]
    SecretFile { flag: &'static str, path: String, reason: String },
    #[error("--retry-delays has a delay of 0; each retry must wait")]
    ZeroRetryDelay,
    #[error("--wait-topics has {topics} entries but --wait-delays has {delays}; give one delay per tier")]
    WaitScheduleMismatch { topics: usize, delays: usize },
    #[error("at least one --wait-topics tier is needed")]
    NoWaitTopics,
    #[error("the shortest --wait-delays ({shortest:?}) must be at most --hold-window ({hold:?}), and the hold more than 0: a record due sooner than the shortest tier's delay less the hold could wait behind one due later")]
    WaitBeyondHold { shortest: Duration, hold: Duration },
    #[error("--sms-template does not parse: {0}")]
    SmsTemplate(String),
    #[error("--sms-providers names a provider twice")]
    DuplicateProvider,
    #[error("`herald migrate` needs SCYLLA_URI (--scylla-uri)")]
    MigrateWithoutScylla,
    #[error("`herald api` needs SCYLLA_URI (--scylla-uri): the status store is in ScyllaDB")]
    ApiWithoutScylla,
    #[error("--max-message-bytes is {0}; it must be at least {min}", min = MIN_MESSAGE_BYTES)]
    MaxMessageBytes(usize),
}

/// Room for a request of a few KB besides the headers herald adds.
const MIN_MESSAGE_BYTES: usize = 16 * 1024;
/// The shortest key or token herald accepts: 256 bits.
pub const MIN_SECRET_BYTES: usize = 32;

/// The settings of every module, converted from a checked [`Config`].
#[derive(Debug, Clone)]
pub struct Settings {
    pub kafka: kafka::Settings,
    pub topics: Topics,
    pub creation: topics::Creation,
    pub schema_registry: Option<Url>,
    pub rate_limits: ratelimit::Settings,
    /// With the table's bound on writes in flight.
    pub scylla: Option<(cql::Settings, usize)>,
    pub sms_lane: LaneSettings,
    pub push_lane: LaneSettings,
    /// Records whose outcome needs no call, admitted at once.
    pub settled_queue: usize,
    /// The crash bound, shared by the lanes (`route::Router`).
    pub unconfirmed_sends: usize,
    /// Parked records the consume loop holds in memory at most.
    pub hold_records: usize,
    /// Of one provider HTTP request, and of schema registry requests.
    pub http_timeout: Duration,
    pub delivery: deliver::Settings,
    pub receipts: Option<receipts::Settings>,
    pub ledger_window: Duration,
    pub shutdown_deadline: Duration,
    pub max_schedule_ahead: Duration,
    pub propagate_headers: Vec<String>,
    pub quiet: QuietHours,
    /// `--templates-dir`, loaded by `App::build`, and its default locale.
    pub templates: Option<(std::path::PathBuf, String)>,
    /// Where the admin endpoints listen, if anywhere.
    pub admin: Option<std::net::SocketAddr>,
    /// Seals what the pipeline parks; only the pipeline needs it (`validate`).
    pub seal: Option<crate::record::Seal>,
}

impl Config {
    /// Parses the command line and environment. Environment values are
    /// hidden from `--help` for every flag: any of them may hold a secret
    /// (a password in a URL, `sasl.password` in Kafka options).
    ///
    /// Call it before any thread is started (`main` does, before the
    /// runtime): it sets the variables the old services' names stand for.
    pub fn from_env() -> Config {
        use clap::FromArgMatches;
        match legacy_env(|name| std::env::var(name).ok().filter(|v| !v.is_empty())) {
            Ok(set) => set.into_iter().for_each(|(name, value)| std::env::set_var(name, value)),
            Err(error) => {
                eprintln!("error: {error}");
                std::process::exit(2);
            }
        }
        let mut matches = Config::command_from_env().get_matches();
        Config::from_arg_matches_mut(&mut matches).unwrap_or_else(|e| e.exit())
    }

    /// herald's command line as `from_env` parses it: for every flag of
    /// every subcommand, environment values are hidden from `--help`, and a
    /// variable set to the empty string counts as unset, which is how
    /// Kubernetes and compose files say "not given".
    pub fn command_from_env() -> clap::Command {
        fn prepare(command: clap::Command) -> clap::Command {
            command
                .mut_args(|a| {
                    let a = a.hide_env_values(true);
                    let empty = a.get_env().is_some_and(|name| std::env::var_os(name).is_some_and(|v| v.is_empty()));
                    if empty {
                        a.env(None)
                    } else {
                        a
                    }
                })
                .mut_subcommands(prepare)
        }
        prepare(<Config as clap::CommandFactory>::command())
    }

    /// Checks what clap cannot (relations between values), then converts
    /// each group of flags into its module's settings.
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        let config = self.with_secret_files()?;
        config.validate()?;
        config.convert()
    }

    /// A copy with every secret given as a file read into its flag.
    fn with_secret_files(&self) -> Result<Config, ConfigError> {
        let mut c = self.clone();
        let files = [
            ("--envelope-key-file", &c.topics.envelope_key_file, &mut c.topics.envelope_key),
            ("--twilio-auth-token-file", &c.twilio.twilio_auth_token_file, &mut c.twilio.twilio_auth_token),
            ("--twilio-api-key-secret-file", &c.twilio.twilio_api_key_secret_file, &mut c.twilio.twilio_api_key_secret),
            ("--vonage-api-secret-file", &c.vonage.vonage_api_secret_file, &mut c.vonage.vonage_api_secret),
            ("--receipts-key-file", &c.receipts.receipts_key_file, &mut c.receipts.receipts_key),
        ];
        for (flag, file, secret) in files {
            if let Some(path) = file {
                *secret = Some(read_secret(flag, path)?);
            }
        }
        Ok(c)
    }

    fn convert(&self) -> Result<Settings, ConfigError> {
        let (k, t, d) = (&self.kafka, &self.topics, &self.delivery);
        let sms = SmsRules::new(d.sms_max_chars, d.sms_over_length, d.sms_template.clone()).map_err(ConfigError::SmsTemplate)?;
        let receipts = self.receipts_settings();
        let lane = |concurrency| LaneSettings { queue: d.channel_queue, concurrency };
        Ok(Settings {
            kafka: kafka::Settings {
                brokers: k.brokers.clone(),
                group_id: k.group_id.clone(),
                options: k.kafka_options.clone(),
                consumer_options: k.kafka_consumer_options.clone(),
                producer_options: k.kafka_producer_options.clone(),
                max_message_bytes: k.max_message_bytes,
                commit_interval: k.commit_interval,
            },
            topics: self.topic_roles(),
            creation: topics::Creation { create: t.create_topics, partitions: t.topic_partitions, replication: t.topic_replication },
            schema_registry: t.schema_registry_url.clone(),
            rate_limits: ratelimit::Settings {
                sms: ChannelLimit { limit: self.rate_limits.sms_rate_limit.clone(), over: self.rate_limits.sms_over_limit },
                push: ChannelLimit { limit: self.rate_limits.push_rate_limit.clone(), over: self.rate_limits.push_over_limit },
            },
            scylla: self.cql().map(|cql| (cql, self.scylla.scylla_max_writes)),
            sms_lane: lane(d.sms_concurrency),
            push_lane: lane(d.push_concurrency),
            settled_queue: d.channel_queue,
            unconfirmed_sends: d.unconfirmed_sends,
            hold_records: t.hold_records,
            http_timeout: d.http_timeout,
            delivery: deliver::Settings {
                mode: d.delivery,
                breaker: BreakerSettings { failures: d.breaker_failures, cooldown: d.breaker_cooldown },
                sms,
                sms_providers: d.sms_providers.clone(),
                twilio: self.twilio_settings(receipts.as_ref().map(|r| r.callbacks.clone())),
                vonage: self.vonage_settings(),
                fcm: self.fcm.fcm_credentials.clone().map(|credentials| deliver::FcmSettings {
                    base_url: self.fcm.fcm_base_url.clone(),
                    credentials,
                    project_id: self.fcm.fcm_project_id.clone(),
                    max_rps: self.fcm.fcm_max_rps,
                }),
            },
            receipts,
            ledger_window: d.ledger_window,
            shutdown_deadline: self.shutdown_deadline,
            max_schedule_ahead: t.max_schedule_ahead,
            quiet: QuietHours::new(
                |c| match c {
                    Channel::Sms => d.sms_quiet_hours,
                    Channel::Push => d.push_quiet_hours,
                },
                d.default_time_zone,
            ),
            templates: d.templates_dir.clone().map(|dir| (dir, d.default_locale.clone())),
            propagate_headers: t.propagate_headers.clone(),
            admin: match self.admin_listen.unwrap_or_else(|| self.default_admin()) {
                Listen::Off => None,
                Listen::At(address) => Some(address),
            },
            seal: t.envelope_key.as_ref().map(|key| crate::record::Seal::new(secrecy::ExposeSecret::expose_secret(key).as_bytes(), &k.group_id)),
        })
    }

    /// The longest a request can wait for an attempt, and so how long a
    /// cancel must be kept: scheduled as far ahead as allowed, deferred for
    /// the longest rate-limit window, then every retry's delay.
    fn cancel_keep(&self) -> Duration {
        let window = self.rate_limits.sms_rate_limit.longest().max(self.rate_limits.push_rate_limit.longest()).unwrap_or_default();
        self.topics.max_schedule_ahead + window + self.topics.retry_delays.iter().sum::<Duration>()
    }

    /// Where a program's admin endpoints listen when `--admin-listen` is
    /// not given: each its own port, on loopback.
    fn default_admin(&self) -> Listen {
        let port = match self.command {
            Some(Command::Api(_)) => 9465,
            _ => 9464,
        };
        Listen::At(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
    }

    /// ScyllaDB's settings, when `SCYLLA_URI` is set.
    pub fn cql(&self) -> Option<cql::Settings> {
        let s = &self.scylla;
        Some(cql::Settings {
            nodes: s.scylla_uri.clone()?,
            keyspace: s.scylla_keyspace.clone(),
            replication: s.scylla_replication.clone(),
            consistency: s.scylla_consistency,
            timeout: s.scylla_timeout,
            await_schema_agreement: s.scylla_await_schema_agreement,
            fetch_schema_metadata: s.scylla_fetch_schema_metadata,
        })
    }

    fn topic_roles(&self) -> Topics {
        let t = &self.topics;
        let roles = topics::Roles {
            requested: t.topic_requested.clone(),
            status: t.topic_status.clone(),
            dead_letter: t.topic_dead_letter.clone(),
            suppressions: t.topic_suppressions.clone(),
            cancellations: t.topic_cancellations.clone(),
            cancel_keep: self.cancel_keep(),
        };
        let delays = |names: &[String], delays: &[Duration]| names.iter().zip(delays).map(|(name, delay)| DelayTopic { name: name.clone(), delay: *delay }).collect();
        // Planned for the longest anything can wait: as long as a cancel is kept.
        Topics::new(roles, delays(&t.retry_topics, &t.retry_delays), delays(&t.wait_topics, &t.wait_delays), t.hold_window, self.cancel_keep())
    }

    fn twilio_settings(&self, callbacks: Option<StatusCallbacks>) -> Option<deliver::TwilioSettings> {
        let t = &self.twilio;
        let auth = match (&t.twilio_api_key_sid, &t.twilio_api_key_secret, &t.twilio_auth_token) {
            (Some(sid), Some(secret), _) => TwilioAuth::ApiKey { sid: sid.clone(), secret: secret.clone() },
            (_, _, Some(token)) => TwilioAuth::AuthToken(token.clone()),
            _ => return None,
        };
        Some(deliver::TwilioSettings {
            base_url: t.twilio_base_url.clone(),
            account_sid: t.twilio_account_sid.clone()?,
            auth,
            from: t.twilio_from.clone()?,
            callbacks,
            max_rps: t.twilio_max_rps,
        })
    }

    fn vonage_settings(&self) -> Option<deliver::VonageSettings> {
        let v = &self.vonage;
        Some(deliver::VonageSettings {
            base_url: v.vonage_base_url.clone(),
            api_key: v.vonage_api_key.clone()?,
            api_secret: v.vonage_api_secret.clone()?,
            from: v.vonage_from.clone()?,
            max_rps: v.vonage_max_rps,
        })
    }

    /// The receipts listener, when receipts are on (they need Twilio's
    /// auth token, which `validate` checks).
    fn receipts_settings(&self) -> Option<receipts::Settings> {
        let r = &self.receipts;
        let auth_token = self.twilio.twilio_auth_token.clone()?;
        Some(receipts::Settings {
            listen: r.receipts_listen?,
            callbacks: StatusCallbacks::new(r.receipts_public_url.clone()?, r.receipts_key.clone(), &auth_token),
            auth_token,
            limits: receipts::Limits::new(r.receipts_max_connections),
        })
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let (t, d, tw) = (&self.topics, &self.delivery, &self.twilio);
        if !crate::pipeline::templates::is_locale(&d.default_locale) {
            return Err(ConfigError::DefaultLocale(d.default_locale.clone()));
        }
        if t.retry_topics.is_empty() {
            return Err(ConfigError::NoRetryTopics);
        }
        if t.retry_topics.len() != t.retry_delays.len() {
            return Err(ConfigError::RetryScheduleMismatch { topics: t.retry_topics.len(), delays: t.retry_delays.len() });
        }
        if t.retry_delays.iter().any(Duration::is_zero) {
            return Err(ConfigError::ZeroRetryDelay);
        }
        if t.wait_topics.is_empty() {
            return Err(ConfigError::NoWaitTopics);
        }
        if t.wait_topics.len() != t.wait_delays.len() {
            return Err(ConfigError::WaitScheduleMismatch { topics: t.wait_topics.len(), delays: t.wait_delays.len() });
        }
        let shortest = t.wait_delays.iter().min().copied().unwrap_or_default();
        if shortest.is_zero() || shortest > t.hold_window || t.hold_window.is_zero() {
            return Err(ConfigError::WaitBeyondHold { shortest, hold: t.hold_window });
        }
        let mut seen = std::collections::HashSet::new();
        let all = [&t.topic_requested, &t.topic_status, &t.topic_dead_letter, &t.topic_suppressions, &t.topic_cancellations]
            .into_iter()
            .chain(&t.retry_topics)
            .chain(&t.wait_topics);
        for topic in all {
            if topic.is_empty() {
                return Err(ConfigError::EmptyTopic);
            }
            if !seen.insert(topic) {
                return Err(ConfigError::DuplicateTopic(topic.clone()));
            }
        }
        for (name, value) in [
            ("sms-concurrency", d.sms_concurrency),
            ("push-concurrency", d.push_concurrency),
            ("unconfirmed-sends", d.unconfirmed_sends),
            ("channel-queue", d.channel_queue),
            ("sms-max-chars", d.sms_max_chars),
            ("topic-partitions", t.topic_partitions.max(0) as usize),
            ("topic-replication", t.topic_replication.max(0) as usize),
            ("scylla-max-writes", self.scylla.scylla_max_writes),
            ("breaker-failures", d.breaker_failures as usize),
            ("receipts-max-connections", self.receipts.receipts_max_connections),
            ("commit-interval", self.kafka.commit_interval.as_millis() as usize),
            ("hold-records", t.hold_records),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        // Each of these sizes a semaphore, which cannot hold more.
        for (name, value) in [
            ("sms-concurrency", d.sms_concurrency),
            ("push-concurrency", d.push_concurrency),
            ("unconfirmed-sends", d.unconfirmed_sends),
            ("channel-queue", d.channel_queue),
            ("scylla-max-writes", self.scylla.scylla_max_writes),
            ("receipts-max-connections", self.receipts.receipts_max_connections),
        ] {
            if value > tokio::sync::Semaphore::MAX_PERMITS {
                return Err(ConfigError::TooLarge(name, value));
            }
        }
        for (lane, concurrency) in [("sms-concurrency", d.sms_concurrency), ("push-concurrency", d.push_concurrency)] {
            if d.unconfirmed_sends <= concurrency {
                return Err(ConfigError::UnconfirmedWithinLane { unconfirmed: d.unconfirmed_sends, lane, concurrency });
            }
        }
        if self.kafka.max_message_bytes < MIN_MESSAGE_BYTES {
            return Err(ConfigError::MaxMessageBytes(self.kafka.max_message_bytes));
        }
        if d.sms_max_chars > 1600 {
            return Err(ConfigError::SmsTooLong(d.sms_max_chars));
        }
        match (&tw.twilio_api_key_sid, &tw.twilio_api_key_secret) {
            (Some(_), None) => return Err(ConfigError::TwilioApiKeyIncomplete("--twilio-api-key-secret")),
            (None, Some(_)) => return Err(ConfigError::TwilioApiKeyIncomplete("--twilio-api-key-sid")),
            _ => {}
        }
        let twilio = [
            ("--twilio-account-sid", tw.twilio_account_sid.is_some()),
            ("--twilio-auth-token or --twilio-api-key-sid", tw.twilio_auth_token.is_some() || tw.twilio_api_key_sid.is_some()),
            ("--twilio-from", tw.twilio_from.is_some()),
        ];
        if twilio.iter().any(|(_, set)| *set) {
            if let Some((missing, _)) = twilio.iter().find(|(_, set)| !set) {
                return Err(ConfigError::TwilioIncomplete(missing));
            }
        }
        let v = &self.vonage;
        let vonage = [("--vonage-api-key", v.vonage_api_key.is_some()), ("--vonage-api-secret", v.vonage_api_secret.is_some()), ("--vonage-from", v.vonage_from.is_some())];
        if vonage.iter().any(|(_, set)| *set) {
            if let Some((missing, _)) = vonage.iter().find(|(_, set)| !set) {
                return Err(ConfigError::VonageIncomplete(missing));
            }
        }
        let providers = &d.sms_providers;
        if (1..providers.len()).any(|i| providers[..i].contains(&providers[i])) {
            return Err(ConfigError::DuplicateProvider);
        }
        if let Some(url) = self.receipts.receipts_public_url.as_ref().filter(|u| !secure_or_local(u)) {
            return Err(ConfigError::ReceiptsUrl(url.to_string()));
        }
        if self.receipts.receipts_listen.is_some() != self.receipts.receipts_public_url.is_some() {
            return Err(ConfigError::ReceiptsIncomplete);
        }
        if self.receipts.receipts_listen.is_some() && tw.twilio_auth_token.is_none() {
            return Err(ConfigError::ReceiptsWithoutTwilio);
        }
        // Interpolated into CQL, so it must be an identifier and nothing more.
        let ks = &self.scylla.scylla_keyspace;
        let identifier = ks.len() <= 48
            && ks.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && ks.chars().next().is_some_and(|c| !c.is_ascii_digit());
        if !identifier {
            return Err(ConfigError::Keyspace(ks.clone()));
        }
        if matches!(self.command, Some(Command::Migrate)) && self.scylla.scylla_uri.is_none() {
            return Err(ConfigError::MigrateWithoutScylla);
        }
        if let Some(Command::Api(api) | Command::Check { program: Some(CheckProgram::Api(api)) }) = &self.command {
            if self.scylla.scylla_uri.is_none() {
                return Err(ConfigError::ApiWithoutScylla);
            }
            api.bearer()?;
        }
        if matches!(self.command, None | Some(Command::Check { program: None })) {
            let key = t.envelope_key.as_ref().ok_or(ConfigError::NoEnvelopeKey)?;
            let len = secrecy::ExposeSecret::expose_secret(key).len();
            if len < MIN_SECRET_BYTES {
                return Err(ConfigError::SecretTooShort { flag: "--envelope-key", len });
            }
        }
        Ok(())
    }
}

/// An address to listen on, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    Off,
    At(std::net::SocketAddr),
}

/// https, or http to this host only (a test, or a proxy on the host).
fn secure_or_local(url: &Url) -> bool {
    match url.scheme() {
        "https" => true,
        "http" => match url.host() {
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        },
        _ => false,
    }
}

/// A secret from a file: the whole file but a final line break, which
/// editors and `echo` add and no secret means.
fn read_secret(flag: &'static str, path: &std::path::Path) -> Result<SecretString, ConfigError> {
    let failed = |reason: String| ConfigError::SecretFile { flag, path: path.display().to_string(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| failed(format!("cannot read it: {e}")))?;
    let text = text.strip_suffix('\n').map_or(text.as_str(), |t| t.strip_suffix('\r').unwrap_or(t));
    if text.is_empty() {
        return Err(failed("it is empty".into()));
    }
    Ok(SecretString::from(text.to_owned()))
}

/// `COUNT/PERIOD`: a burst of COUNT, one more each PERIOD/COUNT.
fn parse_rate(s: &str) -> Result<governor::Quota, String> {
    let (count, period) = s.split_once('/').ok_or_else(|| format!("{s:?}: give COUNT/PERIOD, such as 10/1s"))?;
    let count: u32 = count.trim().parse().map_err(|_| format!("{count:?} is not a count"))?;
    let count = std::num::NonZeroU32::new(count).ok_or("the count must be at least 1")?;
    let period = humantime::parse_duration(period.trim()).map_err(|e| format!("period {period:?}: {e}"))?;
    let quota = governor::Quota::with_period(period / count.get()).ok_or("the period must be longer than 0")?;
    Ok(quota.allow_burst(count))
}

fn parse_listen(s: &str) -> Result<Listen, String> {
    match s.trim() {
        "off" => Ok(Listen::Off),
        address => address.parse().map(Listen::At).map_err(|e| format!("{address:?}: {e}; give host:port, or off")),
    }
}

fn parse_vonage_sender(s: &str) -> Result<String, String> {
    deliver::sms::check_vonage_sender(s).map(|()| s.to_owned())
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("expected key=value, got {s:?}"))?;
    Ok((k.trim().to_owned(), v.trim().to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Channel;
    use crate::pipeline::ratelimit::Window;

    const KEY: &str = "an envelope key of 32 bytes or more";

    /// The pipeline's command line, with an envelope key unless `args` give one.
    fn parse(args: &[&str]) -> Config {
        let key = (!args.iter().any(|a| a.starts_with("--envelope-key"))).then_some(["--envelope-key", KEY]);
        Config::try_parse_from(std::iter::once("herald").chain(key.into_iter().flatten()).chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn the_old_services_environment_names_are_aliases() {
        let env = |pairs: &'static [(&'static str, &'static str)]| move |name: &str| pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_string());
        assert_eq!(legacy_env(env(&[])), Ok(vec![]));
        assert_eq!(legacy_env(env(&[("TWILIO_FROM_NUMBER", "+14155550100")])), Ok(vec![("TWILIO_FROM", "+14155550100".into())]));
        assert_eq!(legacy_env(env(&[("TWILIO_FROM_NUMBER", "+14155550100"), ("TWILIO_FROM", "+14155550100")])), Ok(vec![]));
        assert!(legacy_env(env(&[("TWILIO_FROM_NUMBER", "+14155550100"), ("TWILIO_FROM", "+14155550199")])).unwrap_err().contains("differ"));
        assert_eq!(legacy_env(env(&[("TWILIO_PHONE_NUMBER", "+14155550100")])), Ok(vec![("TWILIO_FROM", "+14155550100".into())]));
        assert_eq!(legacy_env(env(&[("TWILIO_PHONE_NUMBER", "+14155550100"), ("TWILIO_FROM_NUMBER", "+14155550100")])), Ok(vec![("TWILIO_FROM", "+14155550100".into())]));
        let differ = legacy_env(env(&[("TWILIO_PHONE_NUMBER", "+14155550100"), ("TWILIO_FROM_NUMBER", "+14155550199")])).unwrap_err();
        assert_eq!(differ, "TWILIO_FROM_NUMBER and TWILIO_PHONE_NUMBER are both set, and differ: set one");
        assert_eq!(legacy_env(env(&[("SMS_PROVIDER", "Vonage")])), Ok(vec![("HERALD_SMS_PROVIDERS", "vonage,twilio".into())]));
        assert_eq!(legacy_env(env(&[("SMS_PROVIDER", "twilio")])), Ok(vec![("HERALD_SMS_PROVIDERS", "twilio,vonage".into())]));
        assert_eq!(legacy_env(env(&[("SMS_PROVIDER", "vonage"), ("HERALD_SMS_PROVIDERS", "vonage")])), Ok(vec![]));
        assert!(legacy_env(env(&[("SMS_PROVIDER", "vonage"), ("HERALD_SMS_PROVIDERS", "twilio,vonage")])).unwrap_err().contains("set one"));
        assert!(legacy_env(env(&[("SMS_PROVIDER", "sns")])).unwrap_err().contains("not twilio or vonage"));
    }

    #[test]
    fn the_crash_bound_must_leave_room_beside_a_hung_lane() {
        let refused = parse(&["--unconfirmed-sends", "32"]).settings().map(drop);
        assert_eq!(refused, Err(ConfigError::UnconfirmedWithinLane { unconfirmed: 32, lane: "sms-concurrency", concurrency: 32 }));
        assert!(refused.unwrap_err().to_string().starts_with("--unconfirmed-sends (32) must be more than --sms-concurrency (32)"));
        let push = parse(&["--unconfirmed-sends", "5", "--sms-concurrency", "4"]).settings().map(drop);
        assert_eq!(push, Err(ConfigError::UnconfirmedWithinLane { unconfirmed: 5, lane: "push-concurrency", concurrency: 32 }));
        assert_eq!(parse(&["--unconfirmed-sends", "5", "--sms-concurrency", "4", "--push-concurrency", "4"]).settings().map(drop), Ok(()));
    }

    #[test]
    fn bounds_a_semaphore_cannot_hold_are_refused_not_a_panic() {
        let huge = usize::MAX.to_string();
        assert_eq!(parse(&["--unconfirmed-sends", &huge]).settings().map(drop), Err(ConfigError::TooLarge("unconfirmed-sends", usize::MAX)));
        assert_eq!(parse(&["--channel-queue", &huge]).settings().map(drop), Err(ConfigError::TooLarge("channel-queue", usize::MAX)));
        let most = tokio::sync::Semaphore::MAX_PERMITS.to_string();
        assert_eq!(parse(&["--unconfirmed-sends", &most]).settings().map(drop), Ok(()));
    }

    #[test]
    fn defaults_match_the_service_herald_replaces() {
        let c = parse(&[]);
        assert_eq!(c.rate_limits.sms_rate_limit, RateLimit::per(10, Duration::from_secs(3600)));
        assert_eq!(c.rate_limits.sms_over_limit, OverLimit::Reject);
        assert_eq!(c.topics.retry_topics, ["retry-10m", "retry-20m", "retry-40m"]);
        assert_eq!(c.topics.retry_delays, [600, 1200, 2400].map(Duration::from_secs));
        assert_eq!(c.delivery.sms_max_chars, 480);
        assert_eq!(c.settings().map(drop), Ok(()));
    }

    #[test]
    fn each_group_becomes_its_module_s_settings() {
        let s = parse(&["--brokers", "k:9092", "--sms-concurrency", "7", "--retry-delays", "1s,2s,3s", "--push-rate-limit", "5/1m"]).settings().unwrap();
        assert_eq!(s.kafka.brokers, "k:9092");
        assert_eq!((s.sms_lane.concurrency, s.push_lane.concurrency, s.sms_lane.queue, s.unconfirmed_sends), (7, 32, 2048, 64));
        assert_eq!(s.topics.retries[2], DelayTopic { name: "retry-40m".into(), delay: Duration::from_secs(3) });
        assert_eq!(s.rate_limits.of(Channel::Push).limit, RateLimit::per(5, Duration::from_secs(60)));
        assert!(s.scylla.is_none() && s.receipts.is_none() && s.delivery.twilio.is_none() && s.delivery.fcm.is_none());
    }

    #[test]
    fn rate_limits_parse_and_reject_nonsense() {
        assert_eq!("off".parse::<RateLimit>(), Ok(RateLimit::default()));
        assert_eq!("5/250ms".parse::<RateLimit>(), Ok(RateLimit::per(5, Duration::from_millis(250))));
        let daily_cap = Window { max: 50, length: Duration::from_secs(86_400) };
        assert_eq!(
            "10/1h, 50/1d".parse::<RateLimit>(),
            Ok(RateLimit { windows: vec![Window { max: 10, length: Duration::from_secs(3600) }, daily_cap] })
        );
        for bad in ["10", "0/1h", "10/0s", "x/1h", "10/soon", "10/1h,", "10/1h,off"] {
            assert!(bad.parse::<RateLimit>().is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn retry_schedule_must_pair_topics_with_delays() {
        let c = parse(&["--retry-delays", "1s,2s"]);
        assert_eq!(c.settings().map(drop), Err(ConfigError::RetryScheduleMismatch { topics: 3, delays: 2 }));
    }

    #[test]
    fn a_topic_cannot_serve_two_roles() {
        let c = parse(&["--topic-status", "retry-20m"]);
        assert_eq!(c.settings().map(drop), Err(ConfigError::DuplicateTopic("retry-20m".into())));
    }

    #[test]
    fn twilio_credentials_come_together() {
        let c = parse(&["--twilio-account-sid", "AC1"]);
        assert_eq!(c.settings().map(drop), Err(ConfigError::TwilioIncomplete("--twilio-auth-token or --twilio-api-key-sid")));
        let key = parse(&["--twilio-account-sid", "AC1", "--twilio-from", "+14155550100", "--twilio-api-key-sid", "SK1", "--twilio-api-key-secret", "s"]);
        assert_eq!(key.settings().map(drop), Ok(()), "an API key instead of the auth token");
        let no_secret = parse(&["--twilio-api-key-sid", "SK1"]).settings().map(drop);
        assert_eq!(no_secret, Err(ConfigError::TwilioApiKeyIncomplete("--twilio-api-key-secret")), "a key needs its secret");
    }

    #[test]
    fn vonage_credentials_come_together_and_providers_have_an_order() {
        let settings = |args: &[&str]| parse(args).settings().map(drop);
        assert_eq!(settings(&["--vonage-api-key", "k", "--vonage-from", "herald"]), Err(ConfigError::VonageIncomplete("--vonage-api-secret")));
        assert_eq!(settings(&["--vonage-api-key", "k", "--vonage-api-secret", "s"]), Err(ConfigError::VonageIncomplete("--vonage-from")));
        assert_eq!(settings(&["--vonage-api-secret", "s"]), Err(ConfigError::VonageIncomplete("--vonage-api-key")));
        assert_eq!(parse(&[]).delivery.sms_providers, [SmsProvider::Twilio, SmsProvider::Vonage]);
        assert_eq!(parse(&["--sms-providers", "vonage,twilio"]).delivery.sms_providers, [SmsProvider::Vonage, SmsProvider::Twilio]);
        assert_eq!(parse(&["--sms-providers", "vonage,vonage"]).settings().map(drop), Err(ConfigError::DuplicateProvider));
    }

    #[test]
    fn senders_that_would_fail_every_sms_are_refused_naming_the_flag() {
        for (flag, value) in [
            ("--twilio-from", "abc"),
            ("--twilio-from", "14155550100"),
            ("--twilio-from", "+1415"),
            ("--vonage-from", ""),
            ("--vonage-from", "+1415"),
        ] {
            let mut args = vec!["herald", flag, value];
            if flag == "--vonage-from" {
                args.extend(["--vonage-api-key", "k", "--vonage-api-secret", "s"]);
            }
            let error = Config::try_parse_from(args).expect_err(value).to_string();
            assert!(error.contains(flag), "{flag} {value:?}: {error}");
        }
        assert!(Config::try_parse_from(["herald", "--twilio-from", "MG0123456789abcdef0123456789abcdef"]).is_ok());
    }

    #[test]
    fn the_receipts_url_is_http() {
        let twilio = ["--twilio-account-sid", "AC1", "--twilio-auth-token", "t", "--twilio-from", "+14155550100"];
        let with = |url: &str| parse(&[&twilio[..], &["--receipts-listen", "127.0.0.1:8080", "--receipts-public-url", url]].concat());
        assert_eq!(with("https://herald.example.com/twilio/status").settings().map(drop), Ok(()));
        assert_eq!(with("http://127.0.0.1:8080/twilio/status").settings().map(drop), Ok(()), "a loopback proxy or a test");
        assert_eq!(with("http://localhost/twilio/status").settings().map(drop), Ok(()));
        for bad in ["mailto:ops@example.com", "http://herald.example.com/twilio/status", "http://10.0.0.1/twilio/status"] {
            assert_eq!(with(bad).settings().map(drop), Err(ConfigError::ReceiptsUrl(bad.into())), "{bad}");
        }
    }

    #[test]
    fn the_keyspace_must_be_a_plain_identifier() {
        for bad in ["herald; DROP TABLE x", "1herald", "", "a-b"] {
            assert_eq!(parse(&["--scylla-keyspace", bad]).settings().map(drop), Err(ConfigError::Keyspace(bad.into())), "{bad}");
        }
        assert_eq!(parse(&["--scylla-keyspace", "herald_2"]).settings().map(drop), Ok(()));
    }

    #[test]
    fn the_pipeline_needs_an_envelope_key_of_32_bytes_and_other_programs_do_not() {
        let without = |args: &[&str]| Config::try_parse_from(std::iter::once("herald").chain(args.iter().copied())).unwrap().settings().map(drop);
        assert_eq!(without(&[]), Err(ConfigError::NoEnvelopeKey));
        assert_eq!(without(&["check"]), Err(ConfigError::NoEnvelopeKey));
        assert_eq!(without(&["--envelope-key", "short"]), Err(ConfigError::SecretTooShort { flag: "--envelope-key", len: 5 }));
        assert_eq!(without(&["--envelope-key", KEY]), Ok(()));
        assert_eq!(without(&["--scylla-uri", "127.0.0.1:9042", "migrate"]), Ok(()));
        assert_eq!(without(&["dlq", "list"]), Ok(()));
        let s = parse(&["--group-id", "eu"]).settings().unwrap();
        assert!(format!("{:?}", s.seal).contains("eu") && !format!("{s:?}").contains(KEY), "owned by the group; the key never shows");
    }

    #[test]
    fn secrets_come_from_files_too_without_their_final_line_break() {
        let dir = std::env::temp_dir().join(format!("herald-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        };
        let key = file("key", &format!("{KEY}\n"));
        let token = file("token", "twilio-token\r\n");
        let s = parse(&["--envelope-key-file", &key, "--twilio-account-sid", "AC1", "--twilio-from", "+14155550100", "--twilio-auth-token-file", &token])
            .settings()
            .unwrap();
        match s.delivery.twilio.unwrap().auth {
            TwilioAuth::AuthToken(t) => assert_eq!(secrecy::ExposeSecret::expose_secret(&t), "twilio-token"),
            other => panic!("{other:?}"),
        }
        let empty = file("empty", "\n");
        assert!(matches!(parse(&["--envelope-key-file", &empty]).settings(), Err(ConfigError::SecretFile { flag: "--envelope-key-file", .. })));
        let missing = parse(&["--envelope-key-file", "/nonexistent/key"]).settings().map(drop).unwrap_err().to_string();
        assert!(missing.starts_with("--envelope-key-file /nonexistent/key: cannot read it"), "{missing}");
        assert!(Config::try_parse_from(["herald", "--envelope-key", KEY, "--envelope-key-file", &key]).is_err(), "one or the other");
        let api = |token: &str| Config::try_parse_from(["herald", "--scylla-uri", "h:9042", "api", "--api-token", token]).unwrap().settings().map(drop);
        assert_eq!(api("a"), Err(ConfigError::SecretTooShort { flag: "--api-token", len: 1 }));
        assert_eq!(api(KEY), Ok(()));
        let from_file = Config::try_parse_from(["herald", "--scylla-uri", "h:9042", "api", "--api-token-file", &key]).unwrap();
        assert_eq!(from_file.settings().map(drop), Ok(()));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn listeners_are_on_loopback_unless_told_otherwise_each_program_on_its_own_port() {
        let loopback = |port| Some(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
        assert_eq!(parse(&[]).settings().unwrap().admin, loopback(9464));
        let api = Config::try_parse_from(["herald", "--scylla-uri", "h:9042", "api", "--api-token", KEY]).unwrap();
        assert_eq!(api.settings().unwrap().admin, loopback(9465), "beside a pipeline on the same host");
        let Some(Command::Api(args)) = &api.command else { unreachable!() };
        assert_eq!(args.listen, loopback(8080).unwrap());
        assert_eq!(parse(&["--admin-listen", "0.0.0.0:9464"]).settings().unwrap().admin, Some("0.0.0.0:9464".parse().unwrap()));
        assert_eq!(parse(&["--admin-listen", "off"]).settings().unwrap().admin, None);
    }

    #[test]
    fn a_retry_must_wait() {
        assert_eq!(parse(&["--retry-delays", "0s,0s,0s"]).settings().map(drop), Err(ConfigError::ZeroRetryDelay));
        assert_eq!(parse(&["--retry-delays", "1s,0s,3s"]).settings().map(drop), Err(ConfigError::ZeroRetryDelay));
    }

    #[test]
    fn migrate_needs_a_scylla_uri() {
        assert_eq!(parse(&["migrate"]).settings().map(drop), Err(ConfigError::MigrateWithoutScylla));
        assert!(matches!(parse(&["--scylla-uri", "127.0.0.1:9042", "migrate"]).command, Some(Command::Migrate)));
    }

    #[test]
    fn the_auth_token_never_shows_in_a_config_dump() {
        let c = parse(&["--twilio-auth-token", "s3cr3t-token"]);
        assert!(!format!("{c:?}").contains("s3cr3t-token"));
    }
}
