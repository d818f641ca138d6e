//! herald: a Kafka notification pipeline.
//!
//! Records flow through one module per stage:
//!
//! | stage | module | what it does |
//! |---|---|---|
//! | ingest | [`ingest`] | consumer group over the requests and delay topics; pauses delay partitions until due; stores offsets once outcomes are durable |
//! | decode | [`decode`], [`codec`], [`registry`] | Confluent wire format, Avro with reader-schema resolution |
//! | suppression | [`suppression`] | opted-out numbers and dead push tokens, from a compacted topic every instance follows |
//! | rate limit | [`ratelimit`] | rolling windows per user and channel, idempotent per event id; in memory, written through to ScyllaDB |
//! | route | [`route`] | one lane per channel, each with bounded admission and concurrency |
//! | deliver | [`deliver`] | SMS through Twilio, failing over to Vonage; FCM push; each provider guarded by a rate cap and a circuit breaker; classifies provider errors |
//! | outcome | [`outcome`] | `decide` (the one retry / dead-letter / drop decision), status events, retry and dead-letter records |
//!
//! [`pipeline`] strings the stages together per record; [`record`] is the
//! consumed record they share. [`App::build`] checks a [`Config`] and
//! connects; [`App::run`] runs until `shutdown` completes. [`run`] does both.

pub mod codec;
pub mod config;
pub mod decode;
pub mod deliver;
pub mod ingest;
pub mod kafka;
pub mod ledger;
pub mod mask;
pub mod model;
pub mod outcome;
pub mod pipeline;
pub mod ratelimit;
pub mod receipts;
pub mod record;
pub mod registry;
pub mod route;
pub mod suppression;
pub mod telemetry;
pub mod topics;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::Consumer;

pub use config::Config;

use crate::deliver::{Calls, Fcm, Gateway, Guarded, Sender, ServiceAccount, Twilio, TwilioAuth, Vonage};
use crate::mask::Secret;
use crate::model::Channel;
use crate::pipeline::Pipeline;
use crate::ratelimit::{Limiter, Store};
use crate::route::{Lane, Router};
use crate::topics::Topics;

/// Every request herald makes says who it is.
pub const USER_AGENT: &str = concat!("herald/", env!("CARGO_PKG_VERSION"));

/// Why herald could not start, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration: {0}")]
    Config(#[from] config::ConfigError),
    #[error("--brokers {brokers}: {reason}")]
    Brokers { brokers: String, reason: String },
    #[error("kafka client: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("topics: {0}")]
    Topics(#[from] topics::TopicError),
    #[error("--fcm-credentials {path}: {source}")]
    Credentials { path: String, source: deliver::push::CredentialsError },
    #[error("schema registry: {0}")]
    Registry(#[from] registry::RegistryError),
    #[error("--receipts-listen {addr}: cannot listen: {source}")]
    Receipts { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Suppressions(#[from] suppression::SuppressionError),
    #[error("rate-limit store: {0}")]
    RateLimitStore(#[from] ratelimit::StoreError),
    #[error(transparent)]
    Ingest(#[from] ingest::IngestError),
}

/// Listeners bound by the caller instead of from configuration: a test
/// binds port 0, learns the port, and hands the listener over.
#[derive(Debug, Default)]
pub struct Listeners {
    pub receipts: Option<std::net::TcpListener>,
}

/// herald, built: configuration checked, credentials loaded, listeners
/// bound, topics in place, the suppression list read. [`App::run`] starts
/// consuming.
pub struct App {
    config: Config,
    pipeline: Arc<Pipeline>,
    topics: Arc<Topics>,
    suppressions: Arc<suppression::Suppressions>,
    /// Positioned at the suppression topic's end, to follow it.
    suppression_reader: kafka::Reader,
    receipts: Option<(tokio::net::TcpListener, receipts::Endpoint, Secret)>,
}

/// Runs herald until `shutdown` completes, then drains in-flight work
/// within the configured deadline, flushes, commits and returns.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    App::build(config, Listeners::default()).await?.run(shutdown).await
}

impl App {
    /// Checks everything that needs no connection first (flags, the SMS
    /// template, provider credentials, listeners), so a mistake there is
    /// reported at once and names its flag; then connects.
    pub async fn build(config: Config, listeners: Listeners) -> Result<App, Error> {
        config.validate()?;
        let sms = deliver::SmsRules::new(config.sms_max_chars, config.sms_over_length, config.sms_template.clone())
            .map_err(config::ConfigError::SmsTemplate)?;
        let fcm = match (&config.fcm_credentials, config.delivery) {
            (Some(path), config::DeliveryMode::Providers) => {
                let credentials = |source| Error::Credentials { path: path.display().to_string(), source };
                let account = Fcm::load_credentials(path).map_err(credentials)?;
                Fcm::check_key(&account).map_err(credentials)?;
                Some(account)
            }
            _ => None,
        };
        let receipts = match (config.receipts(), &config.twilio_auth_token, config.receipts_listen) {
            (Some(endpoint), Some(token), Some(addr)) => {
                let bound = match listeners.receipts {
                    Some(listener) => listener.set_nonblocking(true).and_then(|()| tokio::net::TcpListener::from_std(listener)),
                    None => tokio::net::TcpListener::bind(addr).await,
                };
                Some((bound.map_err(|source| Error::Receipts { addr, source })?, endpoint, token.clone()))
            }
            _ => None,
        };
        let http = reqwest::Client::builder()
            .timeout(config.http_timeout)
            .user_agent(USER_AGENT)
            .build()
            .expect("static HTTP client settings");
        let calls = Calls::default();
        let mut senders = senders(&config, &http, fcm, &calls)?;

        reachable(&config.brokers).await?;
        let topics = Arc::new(Topics::from_config(&config));
        topics::ensure(&kafka::admin(&config)?, &topics, &config).await?;
        let registry = config.schema_registry_url.clone().map(|url| Arc::new(registry::Registry::new(url, config.http_timeout)));
        // Without a registry, status events carry schema id 0: readers use
        // schemas/notification.status.avsc.
        let status_schema_id = match &registry {
            Some(r) => r.register(&format!("{}-value", topics.status), codec::STATUS_SCHEMA).await?,
            None => 0,
        };
        let suppressions = Arc::new(suppression::Suppressions::default());
        let suppression_reader = suppression::load(kafka::reader(&config)?, &topics.suppressions, &suppressions).await?;
        let router = Router::new(
            |channel| {
                let sender = std::mem::replace(&mut senders[channel.index()], Sender::Disabled);
                Lane::new(sender, config.channel_queue, config.concurrency(channel))
            },
            config.channel_queue,
            calls,
        );
        let publisher = outcome::Publisher::new(kafka::producer(&config)?, topics.clone(), status_schema_id, kafka::max_message_bytes(&config));
        let pipeline = Arc::new(Pipeline {
            decoder: decode::Decoder::new(codec::Bundled::load(), registry),
            limiter: Limiter::new(|c| config.rate_limit(c).clone(), rate_limit_store(&config).await?),
            router,
            publisher: Arc::new(publisher),
            topics: topics.clone(),
            sms,
            suppressions: suppressions.clone(),
            over_limit: Channel::ALL.map(|c| config.over_limit(c)),
            postpone_spread: config.breaker_cooldown,
            ledger: Arc::new(ledger::Ledger::new(config.ledger_window)),
        });
        Ok(App { config, pipeline, topics, suppressions, suppression_reader, receipts })
    }

    /// Where delivery receipts are accepted, when they are on.
    pub fn receipts_addr(&self) -> Option<SocketAddr> {
        self.receipts.as_ref().and_then(|(listener, ..)| listener.local_addr().ok())
    }

    /// Consumes until `shutdown` completes, then drains within the
    /// shutdown deadline.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let App { config, pipeline, topics, suppressions, suppression_reader, receipts } = self;
        // Dropping the set, however `run` returns, stops following.
        let mut following = tokio::task::JoinSet::new();
        following.spawn(suppression::follow(suppression_reader, topics.suppressions.clone(), suppressions.clone()));
        // The status topic is in the subscription so that each instance is
        // assigned the status partitions of its requests, and commits the
        // send ledger's marks with its offsets (see `ledger`).
        let handover = Arc::new(ingest::Handover::default());
        let handover_wait = config.shutdown_deadline.min(kafka::max_poll_interval(&config) / 2);
        let context = ingest::IngestContext::new(topics.status.clone(), handover.clone(), pipeline.publisher.producer().clone(), handover_wait);
        let consumer = kafka::consumer(&config, context)?;
        let mut subscription = topics.inputs();
        subscription.push(&topics.status);
        consumer.subscribe(&subscription)?;
        tracing::info!(message = "Consuming.", topics = ?topics.inputs(), group = config.group_id);
        let (stop_receipts, receipts_stopped) = tokio::sync::oneshot::channel::<()>();
        let receipts = receipts.map(|(listener, endpoint, token)| {
            let stopped = async {
                let _ = receipts_stopped.await;
            };
            let limits = receipts::Limits::new(config.receipts_max_connections);
            tokio::spawn(receipts::serve(listener, endpoint, token, limits, pipeline.publisher.clone(), suppressions, stopped))
        });
        let settings = ingest::Settings { deadline: config.shutdown_deadline, handover, ledger_reader: kafka::reader_config(&config, "ledger") };
        let consumed = ingest::consume(consumer, pipeline, settings, shutdown).await;
        let _ = stop_receipts.send(());
        if let Some(server) = receipts {
            if let Ok(Err(error)) = server.await {
                tracing::warn!(message = "The delivery receipt server failed.", %error);
            }
        }
        following.shutdown().await;
        consumed?;
        Ok(())
    }
}

/// Applies the CQL schema to `SCYLLA_URI` (`herald migrate`).
pub async fn migrate(config: &Config) -> Result<(), Error> {
    config.validate()?;
    let session = ratelimit::connect(config).await?;
    ratelimit::migrate(&session, &config.scylla_keyspace, &config.scylla_replication).await?;
    Ok(())
}

/// Whether any bootstrap server accepts a connection, tried at once
/// rather than after the Kafka client's own retries: a wrong address is a
/// configuration mistake, and the error should say so and name it.
async fn reachable(brokers: &str) -> Result<(), Error> {
    const TIMEOUT: Duration = Duration::from_secs(5);
    let failed = |reason: String| Error::Brokers { brokers: brokers.to_owned(), reason };
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

async fn rate_limit_store(config: &Config) -> Result<Store, Error> {
    let limits = Channel::ALL.map(|c| (c.symbol(), config.rate_limit(c).windows.clone()));
    let Some(uri) = &config.scylla_uri else {
        tracing::warn!(message = "No SCYLLA_URI: rate limits are kept in memory, and reset when herald restarts or a partition moves.", ?limits);
        return Ok(Store::Memory);
    };
    let session = ratelimit::connect(config).await?;
    let longest = Channel::ALL.iter().filter_map(|c| config.rate_limit(*c).longest()).max();
    let table = ratelimit::Table::open(session, &config.scylla_keyspace, longest, config.scylla_max_writes).await?;
    tracing::info!(message = "Rate limits are kept in ScyllaDB.", nodes = uri, keyspace = config.scylla_keyspace, ?limits);
    Ok(Store::ScyllaDb(table))
}

fn senders(
    config: &Config,
    http: &reqwest::Client,
    fcm: Option<ServiceAccount>,
    calls: &Calls,
) -> Result<[Sender; Channel::ALL.len()], Error> {
    use config::DeliveryMode;
    let guarded = |gateway: Gateway| {
        let breaker = deliver::breaker::Breaker::new(config.breaker_failures, config.breaker_cooldown);
        let max_rps = config.max_rps(gateway.provider());
        Guarded::new(gateway, max_rps, breaker, calls.clone())
    };
    let providers = |gateways: Vec<Gateway>| match gateways.is_empty() {
        true => Sender::Disabled,
        false => Sender::Providers(gateways.into_iter().map(guarded).collect()),
    };
    let (sms, push) = match config.delivery {
        DeliveryMode::DryRun => (Sender::DryRun, Sender::DryRun),
        DeliveryMode::Providers => {
            let sms = config.sms_providers.iter().filter_map(|p| sms_gateway(config, http, *p)).collect();
            let push = match fcm {
                Some(account) => {
                    let path = config.fcm_credentials.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
                    let fcm = Fcm::new(http.clone(), &config.fcm_base_url, account, config.fcm_project_id.clone())
                        .map_err(|source| Error::Credentials { path, source })?;
                    vec![Gateway::Fcm(fcm)]
                }
                None => vec![],
            };
            (providers(sms), providers(push))
        }
    };
    for (channel, sender) in Channel::ALL.iter().zip([&sms, &push]) {
        match sender {
            Sender::Disabled => {
                tracing::warn!(message = "No provider configured; requests for this channel are reported invalid.", %channel)
            }
            Sender::Providers(p) => {
                let order: Vec<_> = p.iter().map(|g| g.gateway().provider().name()).collect();
                tracing::info!(message = "Providers, in failover order.", %channel, providers = ?order);
            }
            Sender::DryRun => {}
        }
    }
    Ok([sms, push])
}

/// The client for an SMS provider, when its credentials are configured.
fn sms_gateway(config: &Config, http: &reqwest::Client, provider: config::SmsProvider) -> Option<Gateway> {
    match provider {
        config::SmsProvider::Twilio => {
            let auth = match (&config.twilio_api_key_sid, &config.twilio_api_key_secret, &config.twilio_auth_token) {
                (Some(key), Some(secret), _) => TwilioAuth::ApiKey { sid: key.clone(), secret: secret.clone() },
                (_, _, Some(token)) => TwilioAuth::AuthToken(token.clone()),
                _ => return None,
            };
            let (sid, from) = (config.twilio_account_sid.clone()?, config.twilio_from.clone()?);
            Some(Gateway::Twilio(Twilio::new(http.clone(), &config.twilio_base_url, sid, auth, from, config.receipts())))
        }
        config::SmsProvider::Vonage => {
            let (key, secret, from) = (config.vonage_api_key.clone()?, config.vonage_api_secret.clone()?, config.vonage_from.as_ref()?);
            Some(Gateway::Vonage(Vonage::new(http.clone(), &config.vonage_base_url, key, secret, from)))
        }
    }
}
