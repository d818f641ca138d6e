#![warn(unreachable_pub, unnameable_types)]
//! herald: a Kafka notification pipeline, and the programs around it.
//!
//! Three programs stand on shared ground:
//!
//! | program | module | entry point |
//! |---|---|---|
//! | `herald`: requests in, SMS and push out, every outcome on the status topic | [`pipeline`] | [`run`], or [`App::build`] then [`App::run`] |
//! | `herald api`: the status store and the JSON API | [`mod@api`] | [`fn@api`] |
//! | `herald dlq`: the dead letters, listed, shown and replayed | [`mod@dlq`] | [`fn@dlq`] |
//!
//! and `herald migrate` ([`migrate`]) and `herald check` ([`check_config`]).
//!
//! The edge: this module's entry points, and [`config`], which assembles
//! the flags each module owns into one command line and converts them
//! into each program's settings. Only the edge imports a program.
//!
//! The shared ground: the domain types ([`model`]), Kafka clients
//! ([`kafka`]), topics and the timing wheel ([`topics`]), the consumed
//! record and its sealed envelope ([`record`]), the wire format
//! ([`codec`]), ScyllaDB ([`cql`]), metrics and the admin listener
//! ([`metrics`], `admin`), localized templates (`templates`: the
//! pipeline renders them, the API checks a request's against them), what
//! flags share (`flags`). No program's
//! module imports another's, and the shared ground imports none.

// The edge.
pub mod config;

// The shared ground.
mod admin;
mod backoff;
pub mod clock;
pub mod codec;
pub mod cql;
mod flags;
pub mod kafka;
mod mask;
pub mod metrics;
pub mod model;
pub mod record;
mod serve;
pub mod telemetry;
pub(crate) mod templates;
pub mod topics;

// The programs.
pub mod api;
pub mod dlq;
pub mod pipeline;

use std::sync::Arc;

pub use config::Config;
pub use pipeline::app::App;
pub use pipeline::deliver::USER_AGENT;
pub use serve::{ListenError, Provided};

/// Why a program of herald's could not start, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration: {0}")]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Pipeline(#[from] pipeline::app::PipelineError),
    #[error(transparent)]
    Api(#[from] api::run::ServiceError),
    #[error("dlq: {0}")]
    Dlq(#[from] dlq::DlqError),
    #[error("ScyllaDB: {0}")]
    Cql(#[from] cql::CqlError),
}

/// Runs the pipeline until `shutdown` completes, then drains in-flight
/// work within the configured deadline, flushes, commits and returns.
pub async fn run(config: Config, shutdown: impl std::future::Future<Output = ()>) -> Result<(), Error> {
    let app = App::build(config.pipeline()?, Provided::default()).await?;
    Ok(app.run(shutdown).await?)
}

/// `herald api`: the status store and the API, until `shutdown` completes.
/// Listeners in `provided` replace `--api-listen` and `--admin-listen`.
pub async fn api(config: &Config, args: &api::ApiArgs, provided: Provided, shutdown: impl std::future::Future<Output = ()>) -> Result<(), Error> {
    Ok(api::run::api(config.api(args)?, provided, shutdown).await?)
}

/// `herald dlq ...`: reads the dead-letter topic of `config`, and replays
/// from it.
pub async fn dlq(config: &Config, command: dlq::DlqCommand) -> Result<(), Error> {
    let (kafka, dead_letter, registry) = config.dlq()?;
    let timeout = config.delivery.http_timeout;
    let registry = registry.map(|url| Arc::new(codec::registry::Registry::new(url, timeout)));
    let context = dlq::Context { kafka, dead_letter, decoder: codec::decode::Decoder::new(codec::Bundled::load(), registry) };
    Ok(dlq::run(command, context).await?)
}

/// Applies the CQL schema to `SCYLLA_URI` (`herald migrate`).
pub async fn migrate(config: &Config) -> Result<(), Error> {
    let cql = config.migrate()?;
    let session = cql::connect(&cql).await?;
    cql::migrate(&session, &cql.keyspace, &cql.replication).await?;
    Ok(())
}

/// `herald check`: the configuration of the pipeline, or of `herald api`,
/// checked as each would at startup, with nothing connected to. Says what
/// it found on stdout.
pub fn check_config(config: &Config) -> Result<(), Error> {
    match &config.command {
        Some(config::Command::Check { program: Some(config::CheckProgram::Api(args)) }) => {
            config.api(args)?;
            println!("herald api: the configuration is valid");
        }
        _ => {
            let found = pipeline::app::check(config.pipeline()?)?;
            println!("herald: the configuration is valid ({found})");
        }
    }
    Ok(())
}
