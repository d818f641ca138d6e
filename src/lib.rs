//! herald: a Kafka notification pipeline, and the programs around it.
//!
//! Three programs stand on shared ground:
//!
//! | program | module | entry point |
//! |---|---|---|
//! | `herald`: requests in, SMS and push out, every outcome on the status topic | [`pipeline`] | [`run`], or [`App::build`] then [`App::run`] |
//! | `herald api`: the status store and the JSON API | [`api`] | [`api()`] |
//! | `herald dlq`: the dead letters, listed, shown and replayed | [`dlq`] | [`dlq()`] |
//!
//! and `herald migrate` ([`migrate`]) and `herald check` ([`check_config`]).
//! The shared ground: configuration read once at the edge ([`config`]),
//! the domain types ([`model`]), Kafka clients ([`kafka`]), topics and
//! the timing wheel ([`topics`]), the consumed record and its sealed
//! envelope ([`record`]), the wire format ([`codec`]), ScyllaDB ([`cql`]),
//! metrics and the admin listener ([`metrics`], [`admin`]). No program's
//! module imports another's.

// The shared ground.
pub mod admin;
mod backoff;
pub mod clock;
pub mod codec;
pub mod config;
pub mod cql;
pub mod kafka;
pub mod mask;
pub mod metrics;
pub mod model;
pub mod record;
mod serve;
pub mod telemetry;
pub mod topics;

// The programs.
pub mod api;
pub mod dlq;
pub mod pipeline;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use api::run::api;
pub use config::Config;
pub use pipeline::app::{check_config, run, App};

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
    Credentials { path: String, source: pipeline::deliver::push::CredentialsError },
    #[error("schema registry: {0}")]
    Registry(#[from] codec::registry::RegistryError),
    #[error("{flag} {addr}: cannot listen: {source}")]
    Listen { flag: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Follow(#[from] pipeline::follow::FollowError),
    #[error("rate-limit store: {0}")]
    RateLimitStore(#[from] cql::rate_limits::StoreError),
    #[error("ScyllaDB: {0}")]
    Cql(#[from] cql::CqlError),
    #[error(transparent)]
    Ingest(#[from] pipeline::ingest::IngestError),
    #[error("dlq: {0}")]
    Dlq(#[from] dlq::DlqError),
    #[error("status store: {0}")]
    Store(#[from] api::store::StoreError),
    #[error("--templates-dir: {0}")]
    Templates(#[from] pipeline::templates::LoadError),
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

/// The listener a caller handed over, or one bound to `addr`.
pub(crate) async fn bind(flag: &'static str, addr: SocketAddr, given: Option<std::net::TcpListener>) -> Result<tokio::net::TcpListener, Error> {
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
    let registry = settings.schema_registry.clone().map(|url| Arc::new(codec::registry::Registry::new(url, settings.http_timeout)));
    let context = dlq::Context { kafka: settings.kafka, dead_letter: settings.topics.dead_letter, decoder: codec::decode::Decoder::new(codec::Bundled::load(), registry) };
    Ok(dlq::run(command, context).await?)
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
pub(crate) async fn reachable(brokers: &str) -> Result<(), Error> {
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

