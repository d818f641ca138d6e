//! The status store behind `herald api`: every status event from
//! `notification.status`, in ScyllaDB (tables in
//! `schemas/scylla/002_status_store.cql`).
//!
//! `ingest` reads the status topic in a consumer group of its own, so the
//! store scales and fails apart from delivery. An offset is stored only once
//! ScyllaDB has acknowledged the record's rows, so a killed store loses
//! nothing; what it writes again lands on the same rows.
//!
//! Each row holds its status event whole, as herald wrote it, and the
//! current status of a notification is worked out from all its rows by the
//! subscriber's rule ([`StatusEvent::supersedes`]), whatever order they
//! arrived in. Reads are whole partitions by key only, the CQL that behaves
//! the same on ScyllaDB and on the in-memory test server.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use futures::FutureExt;
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

use crate::backoff::Backoff;
use crate::codec;
use crate::metrics::StoreMetrics;
use crate::model::StatusEvent;

type Source = Box<dyn std::error::Error + Send + Sync>;

/// Why the status store could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the status store's tables in keyspace {keyspace} are missing or differ ({source}); run `herald migrate`")]
    Schema { keyspace: String, source: Source },
    #[error("reading the status store failed: {0}")]
    Read(Source),
    #[error("writing the status store failed: {0}")]
    Write(Source),
}

fn read_failed(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Read(Box::new(e))
}

/// The store's tables, their statements prepared once.
pub struct Store {
    session: Arc<Session>,
    insert_history: PreparedStatement,
    insert_by_user: PreparedStatement,
    select_history: PreparedStatement,
    select_by_user: PreparedStatement,
}

/// How far back a user's notifications are kept: the tables' TTL.
pub(crate) const RETENTION_DAYS: i64 = 30;

/// A notification's partition in the user's timeline, when its status
/// says enough: the UTC day of its request's `created_at`, the same for
/// every status it gets. `None` when `created_at` is missing, or too far
/// from when herald handled it to be true (a clock off by more than a day,
/// seconds taken for milliseconds, an old request replayed): its day is
/// then its first stored status's (see [`Store::write`]), so that it is
/// listed within the days a list reads.
fn plausible_day(event: &StatusEvent) -> Option<NaiveDate> {
    let created = event.created_at?;
    let plausible = created <= event.occurred_at + chrono::Duration::days(1) && created >= event.occurred_at - chrono::Duration::days(RETENTION_DAYS);
    plausible.then(|| created.date_naive())
}

impl Store {
    /// The store in `keyspace`, checked to exist.
    pub async fn open(session: Arc<Session>, keyspace: &str) -> Result<Store, StoreError> {
        let prepare = |cql: String| {
            let session = session.clone();
            async move { session.prepare(cql).await.map_err(|e| StoreError::Schema { keyspace: keyspace.to_owned(), source: e.into() }) }
        };
        let insert_history = prepare(format!(
            "INSERT INTO {keyspace}.notification_history (event_id, occurred_at, status, attempt, event) VALUES (?, ?, ?, ?, ?)"
        ))
        .await?;
        let insert_by_user = prepare(format!(
            "INSERT INTO {keyspace}.notifications_by_user_day (user_id, day, created_at, event_id, occurred_at, status, attempt, event) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .await?;
        let select_history = prepare(format!("SELECT event FROM {keyspace}.notification_history WHERE event_id = ?")).await?;
        let select_by_user =
            prepare(format!("SELECT event FROM {keyspace}.notifications_by_user_day WHERE user_id = ? AND day = ?")).await?;
        Ok(Store { session, insert_history, insert_by_user, select_history, select_by_user })
    }

    /// Writes `event` (framed as `bytes`) to both tables; done once both
    /// are acknowledged.
    pub(crate) async fn write(&self, event: &StatusEvent, bytes: &[u8]) -> Result<(), StoreError> {
        let attempt = event.attempt.min(i32::MAX as u32) as i32;
        let status = event.status.symbol();
        let created_at = event.created_at.unwrap_or(event.occurred_at);
        let day = match plausible_day(event) {
            Some(day) => day,
            // Rare: one read, so every status of it lands in one partition.
            None => self.history(&event.event_id).await.map_err(|e| StoreError::Write(Box::new(e)))?.first().map_or(event.occurred_at, |e| e.occurred_at).date_naive(),
        }
        .to_string();
        let history = self.session.execute_unpaged(&self.insert_history, (&event.event_id, event.occurred_at, status, attempt, bytes));
        let by_user = self.session.execute_unpaged(
            &self.insert_by_user,
            (&event.user_id, &day, created_at, &event.event_id, event.occurred_at, status, attempt, bytes),
        );
        let (history, by_user) = tokio::join!(history, by_user);
        history.map_err(|e| StoreError::Write(e.into()))?;
        by_user.map_err(|e| StoreError::Write(e.into()))?;
        Ok(())
    }

    /// Every status of one notification, oldest first; empty if unknown.
    pub(crate) async fn history(&self, event_id: &str) -> Result<Vec<StatusEvent>, StoreError> {
        let mut events = self.select(&self.select_history, (event_id,)).await?;
        sort(&mut events);
        Ok(events)
    }

    /// The statuses of the notifications `user_id` was sent on `day`.
    pub async fn day(&self, user_id: &str, day: NaiveDate) -> Result<Vec<StatusEvent>, StoreError> {
        self.select(&self.select_by_user, (user_id, day.to_string())).await
    }

    async fn select(&self, statement: &PreparedStatement, values: impl scylla::serialize::row::SerializeRow) -> Result<Vec<StatusEvent>, StoreError> {
        let rows = self.session.execute_unpaged(statement, values).await.map_err(read_failed)?.into_rows_result().map_err(read_failed)?;
        let mut events = Vec::new();
        for row in rows.rows::<(Vec<u8>,)>().map_err(read_failed)? {
            let (bytes,) = row.map_err(read_failed)?;
            match codec::read_status(&bytes) {
                Ok(event) => events.push(event),
                // A status from a newer herald, with a symbol this build
                // does not know: left out rather than failing the read.
                Err(error) => tracing::debug!(message = "Skipped a stored status.", %error),
            }
        }
        Ok(events)
    }
}

/// Oldest first, in the order a notification lives through them.
fn sort(events: &mut [StatusEvent]) {
    events.sort_by_key(|e| (e.attempt, e.status.phase(), e.occurred_at));
}

/// One notification as the store knows it.
#[derive(Debug, Clone)]
pub struct Notification {
    /// Oldest first, duplicates (the same status written twice) dropped.
    pub history: Vec<StatusEvent>,
}

impl Notification {
    /// The notifications among `events`, each with its history.
    pub fn group(events: Vec<StatusEvent>) -> Vec<Notification> {
        let mut by_id: HashMap<String, Vec<StatusEvent>> = HashMap::new();
        for event in events {
            let history = by_id.entry(event.event_id.clone()).or_default();
            if !history.iter().any(|e| e.is_duplicate_of(&event)) {
                history.push(event);
            }
        }
        by_id
            .into_values()
            .map(|mut history| {
                sort(&mut history);
                Notification { history }
            })
            .collect()
    }

    /// The current status: the one that supersedes every other.
    pub fn current(&self) -> &StatusEvent {
        let mut current = &self.history[0];
        for e in &self.history[1..] {
            if e.supersedes(current) {
                current = e;
            }
        }
        current
    }

    /// The notification's event id.
    pub fn event_id(&self) -> &str {
        &self.history[0].event_id
    }

    /// When the request was made: the order a user's list is in.
    pub(crate) fn created_at(&self) -> DateTime<Utc> {
        self.history.iter().find_map(|e| e.created_at).unwrap_or(self.history[0].occurred_at)
    }
}

/// Reads the status topic into `store` until `shutdown` completes. The
/// consumer stores no offset itself (`enable.auto.offset.store=false`):
/// an offset is stored once its record's rows are written.
pub(crate) async fn ingest(consumer: Arc<StoreConsumer>, store: Arc<Store>, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let metrics = consumer.context().metrics.clone();
    // The loop turns at least this often, however idle: `/healthz` tells a
    // turning loop from a stuck one.
    let mut heartbeat = tokio::time::interval(Duration::from_secs(1));
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        metrics.health.turned();
        let first = tokio::select! {
            biased;
            () = &mut shutdown => return,
            _ = heartbeat.tick() => continue,
            message = consumer.recv() => message,
        };
        // What is already fetched is written in one go, concurrently.
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match consumer.recv().now_or_never() {
                Some(message) => batch.push(message),
                None => break,
            }
        }
        let mut written = Vec::with_capacity(batch.len());
        let mut writes = Vec::with_capacity(batch.len());
        for message in &batch {
            let message = match message {
                Ok(message) => message,
                Err(error) => {
                    tracing::warn!(message = "Consumer error.", %error);
                    continue;
                }
            };
            written.push(message);
            let Some(bytes) = message.payload() else { continue };
            match codec::read_status(bytes) {
                Ok(event) => writes.push((event, bytes)),
                // Not a status herald can read: nothing to store, ever.
                Err(error) => {
                    metrics.skipped();
                    tracing::warn!(message = "Skipped a record that is not a status.", partition = message.partition(), offset = message.offset(), %error);
                }
            }
        }
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        loop {
            let all = futures::future::join_all(writes.iter().map(|(event, bytes)| store.write(event, bytes))).await;
            let Some(error) = all.into_iter().find_map(Result::err) else { break };
            metrics.write_failed();
            tracing::warn!(message = "Writing statuses failed; retrying.", %error);
            tokio::select! {
                biased;
                // Nothing of the batch is stored: its records come again.
                () = &mut shutdown => return,
                () = tokio::time::sleep(backoff.next_pause()) => {}
            }
        }
        metrics.written(writes.len());
        for message in written {
            if let Err(error) = consumer.store_offset_from_message(message) {
                tracing::warn!(message = "Storing an offset failed.", %error);
            }
        }
    }
}

/// Records written per round at most.
const BATCH: usize = 512;

/// The store's consumer: herald's consumer settings in group `group`,
/// offsets stored by [`ingest`] and committed by librdkafka.
pub(crate) fn consumer(mut config: ClientConfig, topic: &str, metrics: Arc<StoreMetrics>) -> Result<StoreConsumer, rdkafka::error::KafkaError> {
    // For the lag gauges (see `StoreContext::stats`).
    config.set("statistics.interval.ms", "5000");
    let consumer: StoreConsumer = config.create_with_context(StoreContext { metrics })?;
    consumer.subscribe(&[topic])?;
    Ok(consumer)
}

pub(crate) type StoreConsumer = StreamConsumer<StoreContext>;

/// Counts the store consumer's lag and assignment for its admin listener.
pub(crate) struct StoreContext {
    pub metrics: Arc<StoreMetrics>,
}

impl rdkafka::ClientContext for StoreContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        crate::kafka::client_error(error, reason);
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        self.metrics.set_lag(&crate::metrics::lags(&statistics, None));
    }
}

impl rdkafka::consumer::ConsumerContext for StoreContext {
    fn post_rebalance(&self, _: &rdkafka::consumer::BaseConsumer<Self>, rebalance: &rdkafka::consumer::Rebalance<'_>) {
        match rebalance {
            rdkafka::consumer::Rebalance::Assign(assigned) => self.metrics.health.set_assigned(assigned.count()),
            rdkafka::consumer::Rebalance::Revoke(_) => self.metrics.health.set_assigned(0),
            rdkafka::consumer::Rebalance::Error(_) => {}
        }
    }
}

/// `herald api`'s store, as its admin listener shows it.
pub(crate) struct StoreObserved {
    pub store: Arc<Store>,
    pub consumer: Arc<StoreConsumer>,
    pub probing: tokio::sync::Mutex<()>,
}

impl crate::admin::Observed for StoreObserved {
    fn metrics(&self, openmetrics: bool) -> String {
        self.consumer.context().metrics.encode(openmetrics)
    }

    fn liveness(&self) -> Vec<crate::admin::Check> {
        vec![crate::admin::turning("store_loop", &self.consumer.context().metrics.health)]
    }

    async fn readiness(&self) -> Vec<crate::admin::Check> {
        use crate::admin::{Check, PROBE_TIMEOUT};
        let assigned = self.consumer.context().metrics.health.assigned();
        let mut checks = vec![Check { name: "partitions_assigned", ok: assigned > 0, detail: format!("{assigned} status partitions") }];
        let consumer = self.consumer.clone();
        checks.push(crate::admin::broker(&self.probing, move |timeout| consumer.fetch_metadata(None, timeout).map(|m| m.brokers().len())).await);
        let scylla = match tokio::time::timeout(PROBE_TIMEOUT, self.store.history("herald-readiness-probe")).await {
            Ok(Ok(_)) => Check { name: "scylla", ok: true, detail: "answers".to_owned() },
            Ok(Err(error)) => Check { name: "scylla", ok: false, detail: error.to_string() },
            Err(_) => Check { name: "scylla", ok: false, detail: format!("no answer within {PROBE_TIMEOUT:?}") },
        };
        checks.push(scylla);
        checks
    }
}
