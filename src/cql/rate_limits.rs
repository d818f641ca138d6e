//! The ScyllaDB store of counted events: the startup check of its table,
//! and the two statements the limiter runs. Windows are decided in herald
//! from the stored timestamps, never by the server.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use tokio::sync::Semaphore;

use crate::backoff::Backoff;
use crate::metrics::{CqlOperation, Metrics};
use crate::model::{Channel, RateLimit};

/// The table of counted sends, one row per send in a window.
pub const TABLE: &str = "rate_limit_events";

/// One counted event, as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counted {
    pub at: DateTime<Utc>,
    pub event_id: String,
}
/// The limits each pipeline enforces, by consumer group.
pub(crate) const SETTINGS_TABLE: &str = "rate_limit_settings";

type Source = Box<dyn std::error::Error + Send + Sync>;

/// Why the rate-limit table could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("table {keyspace}.{TABLE} does not exist; run `herald migrate` first")]
    NoTable { keyspace: String },
    #[error("table {keyspace}.{TABLE} does not match herald's schema ({source}); run `herald migrate`, or fix the table by hand")]
    Mismatch { keyspace: String, source: Source },
    #[error(
        "rows of {keyspace}.{TABLE} expire after {ttl_secs} s, before the longest rate-limit window ({window_secs} s) ends; \
         raise the table's default_time_to_live"
    )]
    TtlTooShort { keyspace: String, ttl_secs: i64, window_secs: u64 },
    #[error("table {keyspace}.{SETTINGS_TABLE} is missing or differs ({source}); run `herald migrate`")]
    NoSettingsTable { keyspace: String, source: Source },
    #[error("writing this pipeline's rate limits failed: {0}")]
    Publish(Source),
    #[error("reading a user's counted events failed: {0}")]
    Read(Source),
    #[error("writing a counted event failed: {0}")]
    Write(Source),
}

fn read_failed(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Read(Box::new(e))
}

/// The table of counted events, its statements prepared once.
pub struct Table {
    session: Arc<Session>,
    select: PreparedStatement,
    insert: PreparedStatement,
    publish: PreparedStatement,
    published: PreparedStatement,
    /// Bounds writes in flight; the consume loop waits when it is empty.
    writes: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

impl Table {
    /// Checks that the schema is in place, that rows outlive `longest`
    /// window, and prepares the statements.
    pub async fn open(
        session: Arc<Session>,
        keyspace: &str,
        longest: Option<Duration>,
        max_writes: usize,
    ) -> Result<Table, StoreError> {
        // The keyspace is the partition key of system_schema.tables; the
        // table name is matched here rather than in CQL.
        let tables = session
            .query_unpaged(
                "SELECT table_name, default_time_to_live FROM system_schema.tables WHERE keyspace_name = ?",
                (keyspace,),
            )
            .await
            .map_err(read_failed)?
            .into_rows_result()
            .map_err(read_failed)?;
        let mut ttl = None;
        let mut found = false;
        for row in tables.rows::<(String, Option<i32>)>().map_err(read_failed)? {
            let (name, default_ttl) = row.map_err(read_failed)?;
            if name == TABLE {
                found = true;
                ttl = default_ttl;
            }
        }
        if !found {
            return Err(StoreError::NoTable { keyspace: keyspace.to_owned() });
        }
        check_ttl(keyspace, ttl, longest)?;
        let prepare = |cql: String| {
            let session = session.clone();
            async move {
                session
                    .prepare(cql)
                    .await
                    .map_err(|e| StoreError::Mismatch { keyspace: keyspace.to_owned(), source: e.into() })
            }
        };
        let select = prepare(format!("SELECT channel, event_id, at FROM {keyspace}.{TABLE} WHERE user_id = ?")).await?;
        let insert =
            prepare(format!("INSERT INTO {keyspace}.{TABLE} (user_id, channel, event_id, at) VALUES (?, ?, ?, ?)"))
                .await?;
        let settings = |cql: String| {
            let session = session.clone();
            async move { session.prepare(cql).await.map_err(|e| StoreError::NoSettingsTable { keyspace: keyspace.to_owned(), source: e.into() }) }
        };
        let publish = settings(format!("INSERT INTO {keyspace}.{SETTINGS_TABLE} (group_id, channel, rate_limit, written_at) VALUES (?, ?, ?, ?)")).await?;
        let published = settings(format!("SELECT channel, rate_limit FROM {keyspace}.{SETTINGS_TABLE} WHERE group_id = ?")).await?;
        Ok(Table { session, select, insert, publish, published, writes: Arc::new(Semaphore::new(max_writes)), metrics: Arc::default() })
    }

    /// Records the limits the pipeline of consumer group `group` enforces,
    /// for `herald api` to report.
    pub(crate) async fn publish(&self, group: &str, limits: impl Fn(Channel) -> RateLimit) -> Result<(), StoreError> {
        for channel in Channel::ALL {
            let limit = limits(channel).to_string();
            let values = (group, channel.symbol(), limit.as_str(), Utc::now());
            self.session.execute_unpaged(&self.publish, values).await.map_err(|e| StoreError::Publish(Box::new(e)))?;
        }
        Ok(())
    }

    /// The limits the pipeline of `group` said it enforces, by channel;
    /// a channel it has not written is absent.
    pub(crate) async fn published(&self, group: &str) -> Result<Vec<(Channel, RateLimit)>, StoreError> {
        let rows = self.session.execute_unpaged(&self.published, (group,)).await.map_err(read_failed)?.into_rows_result().map_err(read_failed)?;
        let mut limits = Vec::new();
        for row in rows.rows::<(String, String)>().map_err(read_failed)? {
            let (channel, limit) = row.map_err(read_failed)?;
            if let (Some(channel), Ok(limit)) = (Channel::from_symbol(&channel), limit.parse()) {
                limits.push((channel, limit));
            }
        }
        Ok(limits)
    }

    /// Counts its requests in `metrics`.
    pub(crate) fn with_metrics(self, metrics: Arc<Metrics>) -> Table {
        Table { metrics, ..self }
    }

    /// Whether ScyllaDB answers a read of the table now.
    pub(crate) async fn ping(&self, timeout: Duration) -> Result<(), String> {
        let started = std::time::Instant::now();
        let read = self.session.execute_unpaged(&self.select, ("herald-readiness-probe",));
        let result = match tokio::time::timeout(timeout, read).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("no answer within {timeout:?}")),
        };
        self.metrics.cql(CqlOperation::Ping, started.elapsed(), result.is_ok());
        result
    }

    /// A user's counted events on every channel. Rows of a channel this
    /// build does not know are skipped.
    pub async fn load(&self, user_id: &str) -> Result<Vec<(Channel, Counted)>, StoreError> {
        let started = std::time::Instant::now();
        let result = self.session.execute_unpaged(&self.select, (user_id,)).await;
        self.metrics.cql(CqlOperation::Read, started.elapsed(), result.is_ok());
        let result = result
            .map_err(read_failed)?
            .into_rows_result()
            .map_err(read_failed)?;
        let mut rows = Vec::new();
        for row in result.rows::<(String, String, DateTime<Utc>)>().map_err(read_failed)? {
            let (channel, event_id, at) = row.map_err(read_failed)?;
            if let Some(channel) = Channel::from_symbol(&channel) {
                rows.push((channel, Counted { at, event_id }));
            }
        }
        Ok(rows)
    }

    /// Waits for room among the writes in flight, then starts writing one
    /// count. The returned handle completes once ScyllaDB has it.
    pub async fn write(&self, user_id: &str, channel: Channel, counted: Counted) -> Pending {
        let permit = self.writes.clone().acquire_owned().await.expect("the write semaphore is never closed");
        let (session, insert, metrics) = (self.session.clone(), self.insert.clone(), self.metrics.clone());
        let user_id = user_id.to_owned();
        Pending(tokio::spawn(async move {
            let values = (user_id.as_str(), channel.symbol(), counted.event_id.as_str(), counted.at);
            let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(10));
            // The row is keyed by event id, so writing it again is harmless;
            // giving up would lose the count.
            loop {
                let started = std::time::Instant::now();
                let result = session.execute_unpaged(&insert, values).await;
                metrics.cql(CqlOperation::Write, started.elapsed(), result.is_ok());
                let Err(error) = result else { break };
                let pause = backoff.next_pause();
                tracing::error!(message = "Rate-limit write failed; retrying.", %error, backoff_ms = pause.as_millis() as u64);
                tokio::time::sleep(pause).await;
            }
            drop(permit);
        }))
    }
}

/// Rows must outlive the longest window, or expired counts would let too
/// much through. `ttl` is `None` where the server does not report it.
fn check_ttl(keyspace: &str, ttl: Option<i32>, longest: Option<Duration>) -> Result<(), StoreError> {
    match (ttl, longest) {
        (None, _) | (_, None) => Ok(()),
        (Some(0), _) => {
            tracing::warn!(message = "Rate-limit rows never expire (default_time_to_live is 0); storage will grow.", keyspace);
            Ok(())
        }
        (Some(ttl), Some(window)) if i64::from(ttl) < window.as_secs() as i64 => Err(StoreError::TtlTooShort {
            keyspace: keyspace.to_owned(),
            ttl_secs: ttl.into(),
            window_secs: window.as_secs(),
        }),
        _ => Ok(()),
    }
}

/// A count on its way to ScyllaDB. The record it belongs to is finished
/// (its offset may be stored) only after this completes.
pub struct Pending(tokio::task::JoinHandle<()>);

impl Pending {
    /// Waits until the count is written, or its write has failed (and been logged).
    pub async fn durable(self) {
        // A panicked write leaves the record unfinished, so its offset is
        // never stored and it is redelivered after the next rebalance.
        if let Err(error) = self.0.await {
            tracing::error!(message = "A rate-limit write task failed.", %error);
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_must_outlive_the_longest_window() {
        let hour = Some(Duration::from_secs(3600));
        assert!(check_ttl("k", Some(172_800), hour).is_ok());
        assert!(check_ttl("k", Some(3600), hour).is_ok(), "exactly the window");
        assert!(matches!(
            check_ttl("k", Some(3599), hour),
            Err(StoreError::TtlTooShort { ttl_secs: 3599, window_secs: 3600, .. })
        ));
        assert!(check_ttl("k", Some(0), hour).is_ok(), "never expiring is allowed, with a warning");
        assert!(check_ttl("k", None, hour).is_ok(), "not reported");
        assert!(check_ttl("k", Some(60), None).is_ok(), "no limits at all");
    }
}
