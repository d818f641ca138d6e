//! The pipeline, built and run: [`App::build`] checks its [`Settings`]
//! and connects; [`App::run`] consumes until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::Consumer;

use super::cancel;
use super::deliver::{self, Calls};
use super::ingest;
use super::quiet::QuietHours;
use super::ratelimit::{Limiter, Store};
use super::ratelimit;
use super::receipts;
use super::route::RouteSettings;
use super::route::{Lane, Router};
use super::suppression;
use crate::templates;
use super::{follow, ledger, outcome, Pipeline};
use crate::kafka::{reachable, Unreachable};
use crate::model::Channel;
use crate::record::Seal;
use crate::serve::{bind, ListenError, Provided};
use crate::{admin, codec, cql, kafka, metrics, record, topics};

/// The pipeline's own flags, besides those of its stages.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Pipeline")]
pub struct PipelineArgs {
    /// The furthest ahead a request may be scheduled; later ones are INVALID (scheduled-too-far). It bounds how long a cancel is remembered.
    #[arg(long, env = "HERALD_MAX_SCHEDULE_AHEAD", default_value = "30d", value_parser = humantime::parse_duration)]
    pub(crate) max_schedule_ahead: Duration,

    /// Request headers copied onto its status events and dead letters, besides traceparent and tracestate (always).
    #[arg(long, env = "HERALD_PROPAGATE_HEADERS", value_delimiter = ',')]
    pub(crate) propagate_headers: Vec<String>,

    /// How long the send ledger remembers a send after its status, or after the next attempt a status announced.
    #[arg(long, env = "HERALD_LEDGER_WINDOW", default_value = "1h", value_parser = humantime::parse_duration)]
    pub(crate) ledger_window: Duration,
}

/// What the pipeline is built from: each module's settings, converted
/// from the flags by `config`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub kafka: kafka::Settings,
    pub topics: topics::Topics,
    pub(crate) creation: topics::Creation,
    pub(crate) schema_registry: Option<reqwest::Url>,
    pub(crate) rate_limits: ratelimit::Settings,
    /// With the table's bound on writes in flight; rate limits are kept in
    /// memory without it.
    pub(crate) scylla: Option<(cql::Settings, usize)>,
    pub(crate) route: RouteSettings,
    /// Parked records the consume loop holds in memory at most.
    pub(crate) hold_records: usize,
    /// Of one provider HTTP request, and of schema registry requests.
    pub http_timeout: Duration,
    pub(crate) delivery: deliver::Settings,
    pub(crate) receipts: Option<receipts::Settings>,
    pub(crate) ledger_window: Duration,
    pub(crate) shutdown_deadline: Duration,
    pub(crate) max_schedule_ahead: Duration,
    pub(crate) propagate_headers: Vec<String>,
    pub(crate) quiet: QuietHours,
    /// `--templates-dir`, loaded by `App::build`, and its default locale.
    pub(crate) templates: Option<(std::path::PathBuf, String)>,
    /// Where the admin endpoints listen, if anywhere.
    pub(crate) admin: Option<SocketAddr>,
    /// Seals what the pipeline parks on its delay topics.
    pub(crate) seal: Seal,
}

/// Why the pipeline could not start, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Brokers(#[from] Unreachable),
    #[error("kafka client: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("topics: {0}")]
    Topics(#[from] topics::TopicError),
    #[error("--fcm-credentials {path}: {source}")]
    Credentials { path: String, source: deliver::push::CredentialsError },
    #[error("schema registry: {0}")]
    Registry(#[from] codec::registry::RegistryError),
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error(transparent)]
    Follow(#[from] follow::FollowError),
    #[error("rate-limit store: {0}")]
    RateLimitStore(#[from] cql::rate_limits::StoreError),
    #[error("ScyllaDB: {0}")]
    Cql(#[from] cql::CqlError),
    #[error(transparent)]
    Ingest(#[from] ingest::IngestError),
    #[error("--templates-dir: {0}")]
    Templates(#[from] templates::LoadError),
}

/// herald, built: configuration checked, credentials loaded, listeners
/// bound, topics in place, the suppression list read. [`App::run`] starts
/// consuming.
pub struct App {
    settings: Settings,
    pipeline: Arc<Pipeline>,
    /// Delivery receipts publish their statuses with it too.
    publisher: Arc<outcome::Publisher>,
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

impl App {
    /// Checks everything that needs no connection first (flags, the SMS
    /// template, provider credentials, listeners), so a mistake there is
    /// reported at once and names its flag; then connects.
    pub async fn build(settings: Settings, provided: Provided) -> Result<App, PipelineError> {
        let Prepared { settings, templates, sms, push, calls, http, metrics } = prepare(settings)?;
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
        let registry = settings.schema_registry.clone().map(|url| Arc::new(codec::registry::Registry::new(url, settings.http_timeout)));
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
        let router = Router::new(Lane::new(sms, settings.route.sms_lane), Lane::new(push, settings.route.push_lane), settings.route.settled_queue, settings.route.unconfirmed_sends, calls, templates.clone());
        let max_bytes = kafka::max_message_bytes(&settings.kafka);
        let propagated = record::Propagated::new(&settings.propagate_headers);
        let publisher = outcome::Publisher::new(kafka::producer(&settings.kafka)?, topics.clone(), status_schema_id, max_bytes, propagated, settings.seal.clone(), metrics.clone());
        let publisher = Arc::new(publisher.with_clock(clock.clone()));
        let limits = settings.rate_limits.clone();
        let pipeline = Arc::new(Pipeline {
            decoder: codec::decode::Decoder::new(codec::Bundled::load(), registry),
            limiter: Limiter::new(|c| limits.of(c).limit.clone(), rate_limit_store(&settings, &metrics).await?),
            router,
            publisher: publisher.clone(),
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
        });
        Ok(App { settings, pipeline, publisher, suppressions, cancellations, readers: [suppression_reader, cancellation_reader], receipts, admin, templates })
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
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), PipelineError> {
        let App { settings, pipeline, publisher, suppressions, cancellations, readers: [suppression_reader, cancellation_reader], receipts, admin, templates } = self;
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
            tokio::spawn(receipts::serve(listener, receipts, publisher, suppressions, stopped))
        });
        let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
        let admin = admin.map(|listener| {
            let stopped = async {
                let _ = admin_stopped.await;
            };
            tokio::spawn(admin::serve(listener, Arc::new(super::observed::PipelineObserved { pipeline: pipeline.clone(), probing: Default::default() }), stopped))
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
struct Prepared {
    settings: Settings,
    templates: Option<templates::TemplateSet>,
    sms: deliver::sms::SmsStage,
    push: deliver::push::PushStage,
    calls: Calls,
    http: reqwest::Client,
    metrics: Arc<metrics::Metrics>,
}

/// Everything the pipeline can check without a connection: templates,
/// provider credentials, the stages built from them.
fn prepare(settings: Settings) -> Result<Prepared, PipelineError> {
    let templates = match &settings.templates {
        Some((dir, default_locale)) => Some(templates::TemplateSet::load(dir, default_locale)?),
        None => None,
    };
    let credentials = |source| {
        let path = settings.delivery.fcm.as_ref().map(|f| f.credentials.display().to_string()).unwrap_or_default();
        PipelineError::Credentials { path, source }
    };
    let fcm = settings.delivery.load_fcm().map_err(credentials)?;
    let metrics = Arc::new(metrics::Metrics::new());
    let http = reqwest::Client::builder().timeout(settings.http_timeout).user_agent(deliver::USER_AGENT).build().expect("static HTTP client settings");
    let calls = Calls::default();
    let (sms, push) = deliver::stages(settings.delivery.clone(), fcm, &http, &calls, &metrics).map_err(credentials)?;
    Ok(Prepared { settings, templates, sms, push, calls, http, metrics })
}

/// `herald check`: what [`App::build`] checks before it connects, with
/// nothing connected to; says what the pipeline would run with.
pub(crate) fn check(settings: Settings) -> Result<String, PipelineError> {
    let prepared = prepare(settings)?;
    Ok(format!(
        "group {}; SMS: {}; push: {}",
        prepared.settings.kafka.group_id,
        prepared.sms.describe(),
        prepared.push.describe()
    ))
}

/// Joins the group and consumes until `shutdown` completes.
async fn consume(settings: &Settings, pipeline: Arc<Pipeline>, shutdown: impl Future<Output = ()>) -> Result<(), PipelineError> {
    let topics = pipeline.topics().clone();
    // The status topic is in the subscription so that each instance is
    // assigned the status partitions of its requests, and commits the
    // send ledger's marks with its offsets (see `ledger`).
    let handover = Arc::new(ingest::Handover::default());
    let handover_wait = settings.shutdown_deadline.min(kafka::max_poll_interval(&settings.kafka) / 2);
    let producer = pipeline.producer().clone();
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

async fn rate_limit_store(settings: &Settings, metrics: &Arc<metrics::Metrics>) -> Result<Store, PipelineError> {
    let limits = Channel::ALL.map(|c| (c.symbol(), settings.rate_limits.of(c).limit.windows.clone()));
    let Some((cql, max_writes)) = &settings.scylla else {
        tracing::warn!(message = "No SCYLLA_URI: rate limits are kept in memory, and reset when herald restarts or a partition moves.", ?limits);
        return Ok(Store::Memory);
    };
    let session = cql::connect(cql).await?;
    let table = cql::rate_limits::Table::open(session, &cql.keyspace, settings.rate_limits.longest(), *max_writes).await?.with_metrics(metrics.clone());
    table.publish(&settings.kafka.group_id, |c| settings.rate_limits.of(c).limit.clone()).await?;
    tracing::info!(message = "Rate limits are kept in ScyllaDB.", nodes = cql.nodes, keyspace = cql.keyspace, ?limits);
    Ok(Store::ScyllaDb(table))
}
