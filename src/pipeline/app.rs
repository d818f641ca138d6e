//! The pipeline, built and run: [`App::build`] checks a [`Config`] and
//! connects; [`App::run`] consumes until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use rdkafka::consumer::Consumer;

use super::cancel;
use super::deliver::{self, Calls};
use super::ingest;
use super::ratelimit::{Limiter, Store};
use super::receipts;
use super::route::{Lane, Router};
use super::suppression;
use super::templates;
use super::{follow, ledger, outcome, Pipeline};
use crate::config::{self, Config, Settings};
use crate::model::Channel;
use crate::{admin, bind, codec, cql, kafka, metrics, reachable, record, topics, Error, Provided};

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
        let router = Router::new(Lane::new(sms, settings.sms_lane), Lane::new(push, settings.push_lane), settings.settled_queue, settings.unconfirmed_sends, calls, templates.clone());
        let max_bytes = kafka::max_message_bytes(&settings.kafka);
        let propagated = record::Propagated::new(&settings.propagate_headers);
        let seal = settings.seal.clone().ok_or(config::ConfigError::NoEnvelopeKey)?;
        let publisher = outcome::Publisher::new(kafka::producer(&settings.kafka)?, topics.clone(), status_schema_id, max_bytes, propagated, seal, metrics.clone());
        let limits = settings.rate_limits.clone();
        let pipeline = Arc::new(Pipeline::new(super::Stages {
            decoder: codec::decode::Decoder::new(codec::Bundled::load(), registry),
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
    let http = reqwest::Client::builder().timeout(settings.http_timeout).user_agent(crate::USER_AGENT).build().expect("static HTTP client settings");
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

async fn rate_limit_store(settings: &Settings, metrics: &Arc<metrics::Metrics>) -> Result<Store, Error> {
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
