//! `herald api`, built and run.

use std::future::Future;
use std::sync::Arc;

use super::store;
use crate::config::{self, Config};
use crate::cql::rate_limits::Table;
use crate::{admin, bind, cql, kafka, metrics, reachable, topics, Error, Provided};

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
    let limits = Table::open(session, &cql.keyspace, settings.rate_limits.longest(), 1).await?;
    reachable(&settings.kafka.brokers).await?;
    let topics = settings.topics.clone();
    topics::ensure(&kafka::admin(&settings.kafka)?, &topics, settings.creation, &settings.kafka.brokers).await?;
    let group = args.group_id.clone().unwrap_or_else(|| format!("{}.api", settings.kafka.group_id));
    let metrics = Arc::new(metrics::StoreMetrics::default());
    let consumer = Arc::new(store::consumer(kafka::consumer_config_in(&settings.kafka, &group), &topics.status, metrics)?);
    let api = Arc::new(super::Api {
        store: store.clone(),
        limits,
        pipeline_group: settings.kafka.group_id.clone(),
        producer: kafka::producer(&settings.kafka)?,
        cancellations: topics.cancellations.clone(),
        token,
        cancels: super::throttle(args.cancel_rate),
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

