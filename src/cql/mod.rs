//! ScyllaDB: how herald connects, and `herald migrate`, which applies every
//! schema in `schemas/scylla` in order. The stores that use a session
//! (`ratelimit`, `store`) check their own tables at startup.
//!
//! Only CQL that behaves the same on ScyllaDB and on the in-memory test
//! server is used anywhere: whole-partition reads by key, plain inserts,
//! and expiry from the table default.

pub(crate) mod rate_limits;

use std::sync::Arc;
use std::time::Duration;

use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;

use crate::flags::{self, ConfigError};

/// Every schema file, in the order `herald migrate` applies them.
pub(crate) const SCHEMAS: &[(&str, &str)] = &[
    ("001_rate_limit.cql", include_str!("../../schemas/scylla/001_rate_limit.cql")),
    ("002_status_store.cql", include_str!("../../schemas/scylla/002_status_store.cql")),
    ("003_rate_limit_settings.cql", include_str!("../../schemas/scylla/003_rate_limit_settings.cql")),
    ("004_idempotency_keys.cql", include_str!("../../schemas/scylla/004_idempotency_keys.cql")),
];

/// Where and how to reach ScyllaDB.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `host:port[,host:port]`, optionally after `scylla://`.
    pub nodes: String,
    /// herald's tables live here; a CQL identifier, checked by `config`.
    pub keyspace: String,
    /// The keyspace's replication, as CQL, for `herald migrate`.
    pub replication: String,
    pub consistency: Consistency,
    /// Of one request, and of connecting.
    pub timeout: Duration,
    /// Off only for single-node test servers, which have no peers table.
    pub await_schema_agreement: bool,
    pub fetch_schema_metadata: bool,
}

/// The flags of ScyllaDB.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "ScyllaDB")]
pub struct ScyllaArgs {
    /// ScyllaDB contact points (host:port, comma-separated). Without it, rate limits are kept in memory and reset on restart.
    #[arg(long, env = "SCYLLA_URI")]
    pub(crate) scylla_uri: Option<String>,

    /// Keyspace of herald's tables.
    #[arg(long, env = "HERALD_SCYLLA_KEYSPACE", default_value = "herald")]
    pub(crate) scylla_keyspace: String,

    /// Replication of the keyspace, as CQL, used by `herald migrate` when it creates the keyspace.
    #[arg(long, env = "HERALD_SCYLLA_REPLICATION", default_value = "{'class': 'NetworkTopologyStrategy', 'replication_factor': 3}")]
    pub(crate) scylla_replication: String,

    /// Consistency of rate-limit reads and writes.
    #[arg(long, env = "HERALD_SCYLLA_CONSISTENCY", value_enum, default_value_t = Consistency::LocalQuorum)]
    pub(crate) scylla_consistency: Consistency,

    /// Timeout of one ScyllaDB request, and of connecting.
    #[arg(long, env = "HERALD_SCYLLA_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub(crate) scylla_timeout: Duration,

    /// Rate-limit writes in flight at once; when they are all pending, the consumer waits.
    #[arg(long, env = "HERALD_SCYLLA_MAX_WRITES", default_value_t = 1024)]
    pub(crate) scylla_max_writes: usize,

    /// Wait for schema agreement after schema changes (turn off only for single-node test servers).
    #[arg(long, env = "HERALD_SCYLLA_AWAIT_SCHEMA_AGREEMENT", default_value_t = true, action = clap::ArgAction::Set)]
    pub(crate) scylla_await_schema_agreement: bool,

    /// Fetch schema metadata on connect (turn off only for test servers that lack it).
    #[arg(long, env = "HERALD_SCYLLA_FETCH_SCHEMA_METADATA", default_value_t = true, action = clap::ArgAction::Set)]
    pub(crate) scylla_fetch_schema_metadata: bool,
}

impl ScyllaArgs {
    /// ScyllaDB's settings when `SCYLLA_URI` is set, with the bound on
    /// rate-limit writes in flight.
    pub fn settings(&self) -> Result<Option<(Settings, usize)>, ConfigError> {
        // Interpolated into CQL, so it must be an identifier and nothing more.
        let ks = &self.scylla_keyspace;
        let identifier = ks.len() <= 48 && ks.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && ks.chars().next().is_some_and(|c| !c.is_ascii_digit());
        if !identifier {
            return Err(ConfigError::Keyspace(ks.clone()));
        }
        flags::counts(&[("scylla-max-writes", self.scylla_max_writes, true)])?;
        let Some(nodes) = self.scylla_uri.clone() else { return Ok(None) };
        let settings = Settings {
            nodes,
            keyspace: ks.clone(),
            replication: self.scylla_replication.clone(),
            consistency: self.scylla_consistency,
            timeout: self.scylla_timeout,
            await_schema_agreement: self.scylla_await_schema_agreement,
            fetch_schema_metadata: self.scylla_fetch_schema_metadata,
        };
        Ok(Some((settings, self.scylla_max_writes)))
    }
}

/// The consistency of rate-limit reads and writes (`--scylla-consistency`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Consistency {
    One,
    LocalOne,
    Quorum,
    LocalQuorum,
    All,
}

type Source = Box<dyn std::error::Error + Send + Sync>;

/// Why ScyllaDB could not be reached or migrated.
#[derive(Debug, thiserror::Error)]
pub enum CqlError {
    #[error("cannot connect to ScyllaDB at {nodes}: {source}")]
    Connect { nodes: String, source: Source },
    #[error("migration statement failed ({statement}): {source}")]
    Migrate { statement: String, source: Source },
}

/// Connects with consistency and timeout in the default execution profile.
pub async fn connect(settings: &Settings) -> Result<Arc<Session>, CqlError> {
    let nodes: Vec<&str> =
        settings.nodes.trim_start_matches("scylla://").split(',').map(str::trim).filter(|n| !n.is_empty()).collect();
    let profile = ExecutionProfile::builder()
        .consistency(settings.consistency.into())
        .request_timeout(Some(settings.timeout))
        .build();
    let session = SessionBuilder::new()
        .known_nodes(&nodes)
        .connection_timeout(settings.timeout)
        .default_execution_profile_handle(profile.into_handle())
        .auto_await_schema_agreement(settings.await_schema_agreement)
        .fetch_schema_metadata(settings.fetch_schema_metadata)
        .build()
        .await
        .map_err(|e| CqlError::Connect { nodes: nodes.join(","), source: e.into() })?;
    Ok(Arc::new(session))
}

impl From<Consistency> for scylla::statement::Consistency {
    fn from(c: Consistency) -> Self {
        use scylla::statement::Consistency as C;
        match c {
            Consistency::One => C::One,
            Consistency::LocalOne => C::LocalOne,
            Consistency::Quorum => C::Quorum,
            Consistency::LocalQuorum => C::LocalQuorum,
            Consistency::All => C::All,
        }
    }
}

/// One schema's statements for `keyspace`, comments removed.
pub(crate) fn statements(schema: &str, keyspace: &str, replication: &str) -> Vec<String> {
    let uncommented: String =
        schema.lines().filter(|l| !l.trim_start().starts_with("--")).collect::<Vec<_>>().join("\n");
    uncommented
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.replace("{keyspace}", keyspace).replace("{replication}", replication))
        .collect()
}

/// Applies every schema. Every statement is `IF NOT EXISTS`, so running it
/// again, or from two instances at once, is harmless.
pub async fn migrate(session: &Session, keyspace: &str, replication: &str) -> Result<(), CqlError> {
    for (file, schema) in SCHEMAS {
        for statement in statements(schema, keyspace, replication) {
            session
                .query_unpaged(statement.as_str(), ())
                .await
                .map_err(|e| CqlError::Migrate { statement: first_line(&statement), source: e.into() })?;
            tracing::info!(message = "Applied.", file, statement = first_line(&statement));
        }
    }
    Ok(())
}

fn first_line(statement: &str) -> String {
    statement.lines().next().unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_splits_into_statements_for_the_keyspace() {
        let s = statements(SCHEMAS[0].1, "hk", "{'class': 'SimpleStrategy', 'replication_factor': 1}");
        assert_eq!(s.len(), 2, "{s:#?}");
        assert!(s[0].starts_with("CREATE KEYSPACE IF NOT EXISTS hk"), "{}", s[0]);
        assert!(s[0].ends_with("{'class': 'SimpleStrategy', 'replication_factor': 1}"), "{}", s[0]);
        assert!(s[1].starts_with("CREATE TABLE IF NOT EXISTS hk.rate_limit_events"), "{}", s[1]);
        assert!(s[1].contains("default_time_to_live = 172800"), "{}", s[1]);
        assert!(s.iter().all(|s| !s.contains("--")), "comments are stripped");
    }
}
