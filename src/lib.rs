//! herald: a Kafka notification pipeline.
//!
//! Records flow through one module per stage:
//!
//! | stage | module | what it does |
//! |---|---|---|
//! | ingest | [`ingest`] | consumer group over the requests and delay topics; pauses delay partitions until due; stores offsets once outcomes are durable |
//! | decode | [`decode`], [`codec`], [`registry`] | Confluent wire format, Avro with reader-schema resolution |
//! | suppression | [`suppression`] | opted-out numbers and dead push tokens, from a compacted topic every instance follows ([`follow`]) |
//! | cancellation | [`cancel`] | notifications not to send after all, from a compacted topic every instance follows |
//! | quiet hours | [`quiet`] | a channel's quiet window in the recipient's time zone; NORMAL requests wait until it ends |
//! | rate limit | [`ratelimit`] | rolling windows per user and channel, idempotent per event id; in memory, written through to ScyllaDB |
//! | route | [`route`], [`templates`] | one lane per channel, each with bounded admission and concurrency; text from localized templates |
//! | deliver | [`deliver`] | SMS through Twilio, failing over to Vonage; FCM push; each provider guarded by a rate cap and a circuit breaker; classifies provider errors |
//! | outcome | [`outcome`] | `decide` (the one retry / dead-letter / drop decision), status events, retry and dead-letter records |
//!
//! [`pipeline`] strings the stages together per record; [`record`] is the
//! consumed record they share. [`App::build`] checks a [`Config`] and
//! connects; [`App::run`] runs until `shutdown` completes. [`run`] does both.

pub mod admin;
pub mod api;
pub mod cancel;
pub mod clock;
pub mod codec;
pub mod config;
pub mod cql;
pub mod decode;
pub mod dlq;
pub mod deliver;
pub mod follow;
pub mod ingest;
pub mod kafka;
pub mod ledger;
pub mod mask;
pub mod metrics;
pub mod model;
pub mod outcome;
pub mod pipeline;
pub mod quiet;
pub mod ratelimit;
pub mod receipts;
pub mod record;
pub mod registry;
mod backoff;
pub mod route;
mod serve;
pub mod store;
pub mod suppression;
pub mod telemetry;
pub mod templates;
pub mod topics;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::Consumer;

pub use config::Config;

use crate::config::Settings;
use crate::deliver::Calls;
use crate::model::Channel;
use crate::pipeline::Pipeline;
use crate::ratelimit::{Limiter, Store};
use crate::route::{Lane, Router};

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
    #[error("{flag} {addr}: cannot listen: {source}")]
    Listen { flag: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Follow(#[from] follow::FollowError),
    #[error("rate-limit store: {0}")]
    RateLimitStore(#[from] ratelimit::StoreError),
    #[error("ScyllaDB: {0}")]
    Cql(#[from] cql::CqlError),
    #[error(transparent)]
    Ingest(#[from] ingest::IngestError),
    #[error("dlq: {0}")]
    Dlq(#[from] dlq::DlqError),
    #[error("status store: {0}")]
    Store(#[from] store::StoreError),
    #[error("--templates-dir: {0}")]
    Templates(#[from] templates::LoadError),
}

/// What the caller hands herald instead of building it from
/// configuration: listeners (a test binds port 0, learns the port, and
/// hands the listener over), and the clock (a test moves it).
#[derive(Debug, Default)]
pub struct Provided {
    pub receipts: Option<std::net::TcpListener>,
    pub admin: Option<std::net::TcpListener>,
    /// `herald api`'s own listener (`--api-listen`).
    pub api: Option<std::net::TcpListener>,
    pub clock: clock::Clock,
}

/// herald, built: configuration checked, credentials loaded, listeners
/// bound, topics in place, the suppression list read. [`App::run`] starts
/// consuming.
pub struct App {
    settings: Settings,
    pipeline: Arc<Pipeline>,
    suppressions: Arc<suppression::Suppressions>,
    cancellations: Arc<cancel::Cancellations>,
    /// Positioned at the suppression and cancellation topics' ends, to
    /// follow them.
    readers: [kafka::Reader; 2],
    receipts: Option<(tokio::net::TcpListener, receipts::Settings)>,
    admin: Option<tokio::net::TcpListener>,
    /// Reloaded on SIGHUP while herald runs.
    templates: Option<templates::TemplateSet>,
}

/// Runs herald until `shutdown` completes, then drains in-flight work
/// within the configured deadline, flushes, commits and returns.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    App::build(config, Provided::default()).await?.run(shutdown).await
}

impl App {
    /// Checks everything that needs no connection first (flags, the SMS
    /// template, provider credentials, listeners), so a mistake there is
    /// reported at once and names its flag; then connects.
    pub async fn build(config: Config, provided: Provided) -> Result<App, Error> {
        let Checked { settings, templates, sms, push, calls, http, metrics } = check(&config)?;
        let Provided { receipts: receipts_listener, admin: admin_listener, clock, api: _ } = provided;
        let receipts = match &settings.receipts {
            Some(r) => Some((bind("--receipts-listen", r.listen, receipts_listener).await?, r.clone())),
            None => None,
        };
        let admin = match settings.admin {
            Some(addr) => Some(bind("--admin-listen", addr, admin_listener).await?),
            None => None,
        };
        drop(http);
        reachable(&settings.kafka.brokers).await?;
        let topics = Arc::new(settings.topics.clone());
        let tiers: Vec<String> = topics.waits.iter().map(|w| humantime::format_duration(w.delay).to_string()).collect();
        tracing::info!(
            message = "Timing wheel.",
            ?tiers,
            hold = %humantime::format_duration(topics.hold),
            most_copies = topics.most_copies(settings.max_schedule_ahead),
            up_to = %humantime::format_duration(settings.max_schedule_ahead)
        );
        topics::ensure(&kafka::admin(&settings.kafka)?, &topics, settings.creation, &settings.kafka.brokers).await?;
        let registry = settings.schema_registry.clone().map(|url| Arc::new(registry::Registry::new(url, settings.http_timeout)));
        // Without a registry, status events carry schema id 0: readers use
        // schemas/notification.status.avsc.
        let status_schema_id = match &registry {
            Some(r) => r.register(&format!("{}-value", topics.status), codec::STATUS_SCHEMA).await?,
            None => 0,
        };
        let suppressions = Arc::new(suppression::Suppressions::default());
        let suppression_reader = follow::load(kafka::reader(&settings.kafka)?, &topics.suppressions, &*suppressions).await?;
        let cancellations = Arc::new(cancel::Cancellations::new(topics.cancel_keep));
        let cancellation_reader = follow::load(kafka::reader(&settings.kafka)?, &topics.cancellations, &*cancellations).await?;
        metrics.health.suppressions_loaded();
        let router = Router::new(Lane::new(sms, settings.sms_lane), Lane::new(push, settings.push_lane), settings.settled_queue, settings.unconfirmed_sends, calls, templates.clone());
        let max_bytes = kafka::max_message_bytes(&settings.kafka);
        let propagated = record::Propagated::new(&settings.propagate_headers);
        let seal = settings.seal.clone().ok_or(config::ConfigError::NoEnvelopeKey)?;
        let publisher = outcome::Publisher::new(kafka::producer(&settings.kafka)?, topics.clone(), status_schema_id, max_bytes, propagated, seal, metrics.clone());
        let limits = settings.rate_limits.clone();
        let pipeline = Arc::new(Pipeline::new(pipeline::Stages {
            decoder: decode::Decoder::new(codec::Bundled::load(), registry),
            limiter: Limiter::new(|c| limits.of(c).limit.clone(), rate_limit_store(&settings, &metrics).await?),
            router,
            publisher: Arc::new(publisher.with_clock(clock.clone())),
            topics,
            suppressions: suppressions.clone(),
            cancellations: cancellations.clone(),
            max_schedule_ahead: settings.max_schedule_ahead,
            rate_limits: limits.clone(),
            postpone_spread: settings.delivery.breaker.cooldown,
            ledger: Arc::new(ledger::Ledger::new(settings.ledger_window)),
            metrics,
            quiet: settings.quiet.clone(),
            clock,
        }));
        Ok(App { settings, pipeline, suppressions, cancellations, readers: [suppression_reader, cancellation_reader], receipts, admin, templates })
    }

    /// Where delivery receipts are accepted, when they are on.
    pub fn receipts_addr(&self) -> Option<SocketAddr> {
        self.receipts.as_ref().and_then(|(listener, _)| listener.local_addr().ok())
    }

    /// Where the admin endpoints are served, when they are on.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|listener| listener.local_addr().ok())
    }

    /// Consumes until `shutdown` completes, then drains within the
    /// shutdown deadline.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let App { settings, pipeline, suppressions, cancellations, readers: [suppression_reader, cancellation_reader], receipts, admin, templates } = self;
        let topics = pipeline.topics().clone();
        // Dropping the set, however `run` returns, stops following.
        let mut following = tokio::task::JoinSet::new();
        following.spawn(follow::follow(suppression_reader, topics.suppressions.clone(), suppressions.clone()));
        following.spawn(follow::follow(cancellation_reader, topics.cancellations.clone(), cancellations));
        if let Some(templates) = templates {
            following.spawn(templates.reload_on_hangup());
        }
        let (stop_receipts, receipts_stopped) = tokio::sync::oneshot::channel::<()>();
        let receipts = receipts.map(|(listener, receipts)| {
            let stopped = async {
                let _ = receipts_stopped.await;
            };
            tokio::spawn(receipts::serve(listener, receipts, pipeline.publisher().clone(), suppressions, stopped))
        });
        let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
        let admin = admin.map(|listener| {
            let stopped = async {
                let _ = admin_stopped.await;
            };
            tokio::spawn(admin::serve(listener, Arc::new(admin::PipelineObserved { pipeline: pipeline.clone(), probing: Default::default() }), stopped))
        });
        let consumed = consume(&settings, pipeline, shutdown).await;
        let _ = stop_receipts.send(());
        let _ = stop_admin.send(());
        if let Some(server) = admin {
            if let Ok(Err(error)) = server.await {
                tracing::warn!(message = "The admin server failed.", %error);
            }
        }
        if let Some(server) = receipts {
            if let Ok(Err(error)) = server.await {
                tracing::warn!(message = "The delivery receipt server failed.", %error);
            }
        }
        following.shutdown().await;
        consumed
    }
}

/// What the pipeline checks before it connects to anything.
struct Checked {
    settings: Settings,
    templates: Option<templates::TemplateSet>,
    sms: deliver::sms::SmsStage,
    push: deliver::push::PushStage,
    calls: Calls,
    http: reqwest::Client,
    metrics: Arc<metrics::Metrics>,
}

/// Everything the pipeline can check without a connection: flags, secret
/// files, templates, the SMS template, provider credentials.
fn check(config: &Config) -> Result<Checked, Error> {
    let settings = config.settings()?;
    let templates = match &settings.templates {
        Some((dir, default_locale)) => Some(templates::TemplateSet::load(dir, default_locale)?),
        None => None,
    };
    let credentials = |source| {
        let path = settings.delivery.fcm.as_ref().map(|f| f.credentials.display().to_string()).unwrap_or_default();
        Error::Credentials { path, source }
    };
    let fcm = settings.delivery.load_fcm().map_err(credentials)?;
    let metrics = Arc::new(metrics::Metrics::new());
    let http = reqwest::Client::builder().timeout(settings.http_timeout).user_agent(USER_AGENT).build().expect("static HTTP client settings");
    let calls = Calls::default();
    let (sms, push) = deliver::stages(settings.delivery.clone(), fcm, &http, &calls, &metrics).map_err(credentials)?;
    Ok(Checked { settings, templates, sms, push, calls, http, metrics })
}

/// `herald check`: the configuration of the pipeline, or of `herald api`,
/// checked as each would at startup, with nothing connected to. Says what
/// it found on stdout.
pub fn check_config(config: &Config) -> Result<(), Error> {
    match &config.command {
        Some(config::Command::Check { program: Some(config::CheckProgram::Api(_)) }) => {
            config.settings()?;
            println!("herald api: the configuration is valid");
        }
        _ => {
            let checked = check(config)?;
            let s = &checked.settings;
            println!(
                "herald: the configuration is valid (group {}; SMS: {}; push: {})",
                s.kafka.group_id,
                checked.sms.stage.describe(),
                checked.push.stage.describe()
            );
        }
    }
    Ok(())
}

/// Joins the group and consumes until `shutdown` completes.
async fn consume(settings: &Settings, pipeline: Arc<Pipeline>, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let topics = pipeline.topics().clone();
    // The status topic is in the subscription so that each instance is
    // assigned the status partitions of its requests, and commits the
    // send ledger's marks with its offsets (see `ledger`).
    let handover = Arc::new(ingest::Handover::default());
    let handover_wait = settings.shutdown_deadline.min(kafka::max_poll_interval(&settings.kafka) / 2);
    let producer = pipeline.publisher().producer().clone();
    let delay_topics = topics.delays().map(|(_, t)| t.name.clone()).collect();
    let context = ingest::IngestContext::new(topics.status.clone(), handover.clone(), producer, handover_wait, pipeline.metrics().clone(), delay_topics);
    let consumer = kafka::consumer(&settings.kafka, context)?;
    let mut subscription = topics.inputs();
    subscription.push(&topics.status);
    consumer.subscribe(&subscription)?;
    tracing::info!(message = "Consuming.", topics = ?topics.inputs(), group = settings.kafka.group_id);
    let ledger_reader = kafka::reader_config(&settings.kafka, "ledger");
    let ingest = ingest::Settings { deadline: settings.shutdown_deadline, handover, ledger_reader, hold_records: settings.hold_records };
    Ok(ingest::consume(consumer, pipeline, ingest, shutdown).await?)
}

/// The listener a caller handed over, or one bound to `addr`.
async fn bind(flag: &'static str, addr: SocketAddr, given: Option<std::net::TcpListener>) -> Result<tokio::net::TcpListener, Error> {
    let bound = match given {
        Some(listener) => listener.set_nonblocking(true).and_then(|()| tokio::net::TcpListener::from_std(listener)),
        None => tokio::net::TcpListener::bind(addr).await,
    };
    bound.map_err(|source| Error::Listen { flag, addr, source })
}

/// `herald dlq ...`: reads the dead-letter topic of `config`, and replays
/// from it.
pub async fn dlq(config: &Config, command: dlq::DlqCommand) -> Result<(), Error> {
    let settings = config.settings()?;
    let registry = settings.schema_registry.clone().map(|url| Arc::new(registry::Registry::new(url, settings.http_timeout)));
    let context = dlq::Context { kafka: settings.kafka, dead_letter: settings.topics.dead_letter, decoder: decode::Decoder::new(codec::Bundled::load(), registry) };
    Ok(dlq::run(command, context).await?)
}

/// `herald api`: keeps the status store from the status topic, and serves
/// the API and its admin endpoints, until `shutdown` completes. Listeners
/// in `provided` replace `--api-listen` and `--admin-listen` (a test binds
/// port 0).
pub async fn api(config: &Config, args: &config::ApiArgs, provided: Provided, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let settings = config.settings()?;
    let token = args.bearer()?;
    let (cql, _) = settings.scylla.clone().ok_or(config::ConfigError::ApiWithoutScylla)?;
    let listener = bind("--api-listen", args.listen, provided.api).await?;
    let admin = match (settings.admin, provided.admin) {
        (_, Some(given)) => Some(bind("--admin-listen", given.local_addr().map_err(|source| Error::Listen { flag: "--admin-listen", addr: args.listen, source })?, Some(given)).await?),
        (Some(addr), None) => Some(bind("--admin-listen", addr, None).await?),
        (None, None) => None,
    };
    let session = cql::connect(&cql).await?;
    let store = Arc::new(store::Store::open(session.clone(), &cql.keyspace).await?);
    let limits = ratelimit::Table::open(session, &cql.keyspace, settings.rate_limits.longest(), 1).await?;
    reachable(&settings.kafka.brokers).await?;
    let topics = settings.topics.clone();
    topics::ensure(&kafka::admin(&settings.kafka)?, &topics, settings.creation, &settings.kafka.brokers).await?;
    let group = args.group_id.clone().unwrap_or_else(|| format!("{}.api", settings.kafka.group_id));
    let metrics = Arc::new(metrics::StoreMetrics::default());
    let consumer = Arc::new(store::consumer(kafka::consumer_config_in(&settings.kafka, &group), &topics.status, metrics)?);
    let api = Arc::new(api::Api {
        store: store.clone(),
        limits,
        pipeline_group: settings.kafka.group_id.clone(),
        producer: kafka::producer(&settings.kafka)?,
        cancellations: topics.cancellations.clone(),
        token,
        cancels: api::throttle(args.cancel_rate),
    });
    tracing::info!(message = "Keeping the status store.", topic = topics.status, group, keyspace = cql.keyspace);
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let server = tokio::spawn(api::serve(listener, api, stopped(stopping.clone())));
    let admin = admin.map(|listener| {
        let observed = Arc::new(store::StoreObserved { store: store.clone(), consumer: consumer.clone(), probing: Default::default() });
        tokio::spawn(admin::serve(listener, observed, stopped(stopping.clone())))
    });
    store::ingest(consumer, store, shutdown).await;
    let _ = stop.send(true);
    if let Ok(Err(error)) = server.await {
        tracing::warn!(message = "The API server failed.", %error);
    }
    if let Some(Ok(Err(error))) = match admin {
        Some(admin) => Some(admin.await),
        None => None,
    } {
        tracing::warn!(message = "The admin server failed.", %error);
    }
    Ok(())
}

/// Applies the CQL schema to `SCYLLA_URI` (`herald migrate`).
pub async fn migrate(config: &Config) -> Result<(), Error> {
    // Checked as `herald migrate`, whatever the caller parsed: the
    // pipeline's own flags (its envelope key) are not needed here.
    let config = Config { command: Some(config::Command::Migrate), ..config.clone() };
    config.settings()?;
    let cql = config.cql().ok_or(config::ConfigError::MigrateWithoutScylla)?;
    let session = cql::connect(&cql).await?;
    cql::migrate(&session, &cql.keyspace, &cql.replication).await?;
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

async fn rate_limit_store(settings: &Settings, metrics: &Arc<metrics::Metrics>) -> Result<Store, Error> {
    let limits = Channel::ALL.map(|c| (c.symbol(), settings.rate_limits.of(c).limit.windows.clone()));
    let Some((cql, max_writes)) = &settings.scylla else {
        tracing::warn!(message = "No SCYLLA_URI: rate limits are kept in memory, and reset when herald restarts or a partition moves.", ?limits);
        return Ok(Store::Memory);
    };
    let session = cql::connect(cql).await?;
    let table = ratelimit::Table::open(session, &cql.keyspace, settings.rate_limits.longest(), *max_writes).await?.with_metrics(metrics.clone());
    table.publish(&settings.kafka.group_id, &settings.rate_limits).await?;
    tracing::info!(message = "Rate limits are kept in ScyllaDB.", nodes = cql.nodes, keyspace = cql.keyspace, ?limits);
    Ok(Store::ScyllaDb(table))
}
