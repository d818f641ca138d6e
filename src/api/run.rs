//! `herald api`, built and run.

use std::future::Future;
use std::sync::Arc;

use super::store;
use crate::cql::rate_limits::Table;
use crate::kafka::{reachable, Unreachable};
use crate::serve::{bind, ListenError, Provided};
use crate::{admin, cql, kafka, metrics, topics};

/// How long the schema registry has to answer at startup.
const REGISTRY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What `herald api` runs with, converted from its flags by `config`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub kafka: kafka::Settings,
    pub(crate) topics: topics::Topics,
    pub(crate) creation: topics::Creation,
    pub(crate) cql: cql::Settings,
    /// The longest rate-limit window of the pipeline: how long the
    /// rate-limit table keeps counts.
    pub(crate) longest_window: Option<std::time::Duration>,
    pub(crate) listen: std::net::SocketAddr,
    /// `--api-token`: every scope.
    pub(crate) token: Option<secrecy::SecretString>,
    pub(crate) tokens_file: Option<std::path::PathBuf>,
    pub(crate) cancel_rate: governor::Quota,
    pub(crate) send: SendSettings,
    /// The status store's consumer group.
    pub(crate) group_id: String,
    /// Where the admin endpoints listen, if anywhere.
    pub(crate) admin: Option<std::net::SocketAddr>,
}

/// What `POST /v1/notifications` checks a request against: the pipeline's
/// own flags, read from the same command line and environment.
#[derive(Debug, Clone)]
pub(crate) struct SendSettings {
    pub schema_registry: Option<url::Url>,
    /// `--templates-dir` and `--default-locale`, when templates are on.
    pub templates: Option<(std::path::PathBuf, String)>,
    pub max_schedule_ahead: std::time::Duration,
    /// See `DeliveryArgs::sms_refused_over`.
    pub sms_max_chars: Option<usize>,
}

/// Why `herald api` could not start, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Brokers(#[from] Unreachable),
    #[error("kafka client: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("topics: {0}")]
    Topics(#[from] topics::TopicError),
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error("rate-limit store: {0}")]
    RateLimitStore(#[from] cql::rate_limits::StoreError),
    #[error("ScyllaDB: {0}")]
    Cql(#[from] cql::CqlError),
    #[error("status store: {0}")]
    Store(#[from] store::StoreError),
    #[error("schema registry: {0}")]
    Registry(#[from] crate::codec::RegistryError),
    #[error(transparent)]
    Templates(#[from] crate::templates::LoadError),
    #[error("--api-tokens-file {0}")]
    Tokens(String),
}

/// `herald api`: keeps the status store from the status topic, and serves
/// the API and its admin endpoints, until `shutdown` completes. Listeners
/// in `provided` replace `--api-listen` and `--admin-listen` (a test binds
/// port 0).
pub(crate) async fn api(settings: Settings, provided: Provided, shutdown: impl Future<Output = ()>) -> Result<(), ServiceError> {
    let cql = &settings.cql;
    let listener = bind("--api-listen", settings.listen, provided.api).await?;
    let admin = match (settings.admin, provided.admin) {
        (_, Some(given)) => {
            let addr = given.local_addr().map_err(|source| ListenError { flag: "--admin-listen", addr: settings.listen, source })?;
            Some(bind("--admin-listen", addr, Some(given)).await?)
        }
        (Some(addr), None) => Some(bind("--admin-listen", addr, None).await?),
        (None, None) => None,
    };
    let session = cql::connect(cql).await?;
    let store = Arc::new(store::Store::open(session.clone(), &cql.keyspace).await?);
    let limits = Table::open(session.clone(), &cql.keyspace, settings.longest_window, 1).await?;
    reachable(&settings.kafka.brokers).await?;
    let topics = settings.topics.clone();
    topics::ensure(&kafka::admin(&settings.kafka)?, &topics, settings.creation, &settings.kafka.brokers).await?;
    let group = settings.group_id.clone();
    let metrics = Arc::new(metrics::StoreMetrics::default());
    let consumer = Arc::new(store::consumer(kafka::consumer_config_in(&settings.kafka, &group), &topics.status, metrics)?);
    let send = &settings.send;
    let schema_id = match &send.schema_registry {
        Some(url) => crate::codec::registry::Registry::new(url.clone(), REGISTRY_TIMEOUT).register(&format!("{}-value", topics.requested), crate::codec::REQUEST_SCHEMA).await?,
        None => 0,
    };
    let templates = send.templates.as_ref().map(|(dir, locale)| crate::templates::TemplateSet::load(dir, locale)).transpose()?;
    if let Some(templates) = &templates {
        tokio::spawn(templates.clone().reload_on_hangup());
    }
    let sender = super::Sender {
        producer: kafka::producer(&settings.kafka)?,
        requests: topics.requested.clone(),
        schema: crate::codec::Bundled::load().request,
        schema_id,
        templates,
        max_schedule_ahead: send.max_schedule_ahead,
        sms_max_chars: send.sms_max_chars,
        max_record_bytes: kafka::max_message_bytes(&settings.kafka),
        keys: super::Keys::open(session.clone(), &cql.keyspace).await?,
    };
    let tokens = Arc::new(super::tokens::Tokens::new(settings.token.as_ref(), settings.tokens_file.as_deref()).map_err(ServiceError::Tokens)?);
    if let Some(reload) = tokens.clone().reload_on_hangup() {
        tokio::spawn(reload);
    }
    let api = Arc::new(super::Api {
        store: store.clone(),
        limits,
        pipeline_group: settings.kafka.group_id.clone(),
        producer: kafka::producer(&settings.kafka)?,
        cancellations: topics.cancellations.clone(),
        tokens: tokens.clone(),
        cancels: super::throttle(settings.cancel_rate),
        sender,
    });
    tracing::info!(message = "Keeping the status store.", topic = topics.status, group, keyspace = cql.keyspace);
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let server = tokio::spawn(super::serve(listener, api, stopped(stopping.clone())));
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

