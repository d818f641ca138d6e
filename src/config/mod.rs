//! Configuration: parsed once from flags and environment at startup. Each
//! module owns its group of flags and turns it into its own settings
//! (`kafka::KafkaArgs`, `topics::TopicArgs`, `deliver::DeliveryArgs`, ...);
//! this module only assembles them into one command line, and checks what
//! relates one group to another. No module below reads the environment.

use std::time::Duration;

use clap::Parser;
use reqwest::Url;

use crate::api;
use crate::cql;
use crate::flags::parse_listen;
use crate::kafka;
use crate::pipeline;
use crate::telemetry::LogFormat;
use crate::topics::{self, Topics};

pub use crate::api::ApiArgs;
pub use crate::codec::registry::RegistryArgs;
pub use crate::cql::ScyllaArgs;
pub use crate::flags::{ConfigError, Listen};
pub use crate::kafka::KafkaArgs;
pub use crate::pipeline::app::PipelineArgs;
pub use crate::pipeline::deliver::{DeliveryArgs, FcmArgs, TwilioArgs, VonageArgs};
pub use crate::pipeline::quiet::QuietArgs;
pub use crate::pipeline::ratelimit::RateLimitArgs;
pub use crate::pipeline::receipts::ReceiptsArgs;
pub use crate::pipeline::route::RouteArgs;
pub use crate::templates::TemplateArgs;
pub use crate::record::SealArgs;
pub use crate::topics::TopicArgs;

/// herald's command line: every flag, grouped by the module that owns it, and the subcommand.
#[derive(Debug, Clone, Parser)]
#[command(name = "herald", version, about = "Kafka notification pipeline: requests in, SMS and push out, every outcome on notification.status")]
pub struct Config {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub registry: RegistryArgs,
    #[command(flatten)]
    pub topics: TopicArgs,
    #[command(flatten)]
    pub seal: SealArgs,
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    #[command(flatten)]
    pub rate_limits: RateLimitArgs,
    #[command(flatten)]
    pub scylla: ScyllaArgs,
    #[command(flatten)]
    pub route: RouteArgs,
    #[command(flatten)]
    pub delivery: DeliveryArgs,
    #[command(flatten)]
    pub quiet: QuietArgs,
    #[command(flatten)]
    pub templates: TemplateArgs,
    #[command(flatten)]
    pub receipts: ReceiptsArgs,

    /// Address of the admin endpoints (/metrics, /healthz, /readyz), or off. Loopback by default, 127.0.0.1:9464 for the pipeline and 127.0.0.1:9465 for `herald api`, so both run on one host: they need no token, and exposing them is a choice (compose and the manifests listen on 0.0.0.0).
    #[arg(long, env = "HERALD_ADMIN_LISTEN", value_parser = parse_listen, help_heading = "Operations")]
    pub admin_listen: Option<Listen>,

    /// On shutdown, how long in-flight work may take before herald gives up on it.
    #[arg(long, env = "HERALD_SHUTDOWN_DEADLINE", default_value = "30s", value_parser = humantime::parse_duration, help_heading = "Operations")]
    pub shutdown_deadline: Duration,

    /// Log format.
    #[arg(long, env = "HERALD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, help_heading = "Operations")]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Without a subcommand, herald runs the pipeline.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Apply the CQL schema in schemas/scylla to SCYLLA_URI (idempotent), then exit.
    Migrate,
    /// Look into the dead-letter topic, and replay from it.
    Dlq {
        #[command(subcommand)]
        command: crate::dlq::DlqCommand,
    },
    /// Keep the status store from notification.status, and serve the query and cancel API (needs SCYLLA_URI).
    Api(ApiArgs),
    /// Check the configuration as the pipeline (or `check api`, the API) would at startup, without connecting to anything; exit 0 when it would start.
    Check {
        #[command(subcommand)]
        program: Option<CheckProgram>,
    },
}

/// What `herald check` checks, besides the pipeline.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum CheckProgram {
    /// The configuration of `herald api`, with the same flags.
    Api(ApiArgs),
}

impl Config {
    /// Parses the command line and environment. Environment values are
    /// hidden from `--help` for every flag: any of them may hold a secret
    /// (a password in a URL, `sasl.password` in Kafka options). The old
    /// services' variable names stand in for herald's own where those are
    /// unset (see [`legacy_env`]); the environment itself is left as it is.
    pub fn from_env() -> Config {
        use clap::FromArgMatches;
        let legacy = legacy_env(|name| std::env::var(name).ok().filter(|v| !v.is_empty())).unwrap_or_else(|error| {
            eprintln!("error: {error}");
            std::process::exit(2);
        });
        let command = legacy.into_iter().fold(Config::command_from_env(), |command, (name, value)| {
            command.mut_args(|arg| if arg.get_env() == Some(std::ffi::OsStr::new(name)) { arg.default_value(value.clone()) } else { arg })
        });
        let mut matches = command.get_matches();
        Config::from_arg_matches_mut(&mut matches).unwrap_or_else(|e| e.exit())
    }

    /// herald's command line as `from_env` parses it: for every flag of
    /// every subcommand, environment values are hidden from `--help`, and a
    /// variable set to the empty string counts as unset, which is how
    /// Kubernetes and compose files say "not given".
    pub fn command_from_env() -> clap::Command {
        fn prepare(command: clap::Command) -> clap::Command {
            command
                .mut_args(|a| {
                    let a = a.hide_env_values(true);
                    let empty = a.get_env().is_some_and(|name| std::env::var_os(name).is_some_and(|v| v.is_empty()));
                    if empty {
                        a.env(None)
                    } else {
                        a
                    }
                })
                .mut_subcommands(prepare)
        }
        prepare(<Config as clap::CommandFactory>::command())
    }

    /// The pipeline's settings: each group of flags checked and converted
    /// into its module's settings, then what relates the groups.
    pub fn pipeline(&self) -> Result<pipeline::app::Settings, ConfigError> {
        let shared = self.shared()?;
        let receipts = self.receipts.settings(self.delivery.twilio.auth_token()?)?;
        Ok(pipeline::app::Settings {
            route: self.route.settings()?,
            delivery: self.delivery.settings(receipts.as_ref().map(|r| r.callbacks.clone()))?,
            receipts,
            templates: self.templates.settings()?,
            seal: self.seal.seal(&shared.kafka.group_id)?,
            schema_registry: self.registry.schema_registry_url.clone(),
            rate_limits: self.rate_limits.settings(),
            hold_records: self.topics.hold_records,
            http_timeout: self.delivery.http_timeout,
            ledger_window: self.pipeline.ledger_window,
            shutdown_deadline: self.shutdown_deadline,
            max_schedule_ahead: self.pipeline.max_schedule_ahead,
            propagate_headers: self.pipeline.propagate_headers.clone(),
            quiet: self.quiet.settings(),
            kafka: shared.kafka,
            topics: shared.topics,
            creation: shared.creation,
            scylla: shared.scylla,
            admin: shared.admin,
        })
    }

    /// `herald api`'s settings, with the flags given after `api`.
    pub fn api(&self, args: &ApiArgs) -> Result<api::run::Settings, ConfigError> {
        let shared = self.shared()?;
        let (cql, _) = shared.scylla.ok_or(ConfigError::ApiWithoutScylla)?;
        Ok(api::run::Settings {
            tokens_file: args.tokens_file(args.bearer()?.as_ref())?,
            token: args.bearer()?,
            group_id: args.group_id.clone().unwrap_or_else(|| format!("{}.api", shared.kafka.group_id)),
            listen: args.listen,
            cancel_rate: args.cancel_rate,
            longest_window: self.rate_limits.settings().longest(),
            send: api::run::SendSettings {
                schema_registry: self.registry.schema_registry_url.clone(),
                templates: self.templates.settings()?,
                max_schedule_ahead: self.pipeline.max_schedule_ahead,
                sms_max_chars: self.delivery.sms_refused_over(),
            },
            kafka: shared.kafka,
            topics: shared.topics,
            creation: shared.creation,
            cql,
            admin: shared.admin,
        })
    }

    /// What `herald dlq` reads: the Kafka client's settings, the
    /// dead-letter topic, and the schema registry, if any.
    pub fn dlq(&self) -> Result<(kafka::Settings, String, Option<Url>), ConfigError> {
        let shared = self.shared()?;
        Ok((shared.kafka, shared.topics.dead_letter, self.registry.schema_registry_url.clone()))
    }

    /// Where `herald migrate` applies the schema.
    pub fn migrate(&self) -> Result<cql::Settings, ConfigError> {
        let (cql, _) = self.scylla.settings()?.ok_or(ConfigError::MigrateWithoutScylla)?;
        Ok(cql)
    }

    /// The settings of the program the command line runs, checked and
    /// converted, and dropped: what `herald check` and tests ask.
    pub fn check(&self) -> Result<(), ConfigError> {
        match &self.command {
            None | Some(Command::Check { program: None }) => self.pipeline().map(drop),
            Some(Command::Api(args) | Command::Check { program: Some(CheckProgram::Api(args)) }) => self.api(args).map(drop),
            Some(Command::Dlq { .. }) => self.dlq().map(drop),
            Some(Command::Migrate) => self.migrate().map(drop),
        }
    }

    /// What every program that reads the topics shares.
    fn shared(&self) -> Result<Shared, ConfigError> {
        Ok(Shared {
            kafka: self.kafka.settings()?,
            topics: self.topics.topics(self.cancel_keep())?,
            creation: self.topics.creation(),
            scylla: self.scylla.settings()?,
            admin: match self.admin_listen.unwrap_or_else(|| self.default_admin()) {
                Listen::Off => None,
                Listen::At(address) => Some(address),
            },
        })
    }

    /// The longest a request can wait for an attempt, and so how long a
    /// cancel must be kept: scheduled as far ahead as allowed, deferred for
    /// the longest rate-limit window, then every retry's delay.
    fn cancel_keep(&self) -> Duration {
        let window = self.rate_limits.sms_rate_limit.longest().max(self.rate_limits.push_rate_limit.longest()).unwrap_or_default();
        self.pipeline.max_schedule_ahead + window + self.topics.retry_delays.iter().sum::<Duration>()
    }

    /// Where a program's admin endpoints listen when `--admin-listen` is
    /// not given: each its own port, on loopback.
    fn default_admin(&self) -> Listen {
        let port = match self.command {
            Some(Command::Api(_)) => 9465,
            _ => 9464,
        };
        Listen::At(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
    }
}

/// The environment names of the services herald replaces, where they mean
/// what one of herald's does: `TWILIO_FROM_NUMBER` (the SMS service) and
/// `TWILIO_PHONE_NUMBER` (the SMS-and-push service) are `TWILIO_FROM`, and
/// `SMS_PROVIDER` picks the first SMS provider (the others follow in
/// herald's order). Returns herald's variables they stand for, with their
/// values. Names set alike are one setting; set differently, they are an
/// error, since either reading would surprise someone.
pub fn legacy_env(get: impl Fn(&str) -> Option<String>) -> Result<Vec<(&'static str, String)>, String> {
    let mut set = Vec::new();
    let senders: Vec<(&str, String)> = ["TWILIO_FROM", "TWILIO_FROM_NUMBER", "TWILIO_PHONE_NUMBER"].into_iter().filter_map(|n| Some((n, get(n)?))).collect();
    if let Some((first, number)) = senders.first() {
        if let Some((other, _)) = senders.iter().find(|(_, v)| v != number) {
            return Err(format!("{first} and {other} are both set, and differ: set one"));
        }
        if *first != "TWILIO_FROM" {
            set.push(("TWILIO_FROM", number.clone()));
        }
    }
    if let Some(provider) = get("SMS_PROVIDER") {
        let first = match provider.trim().to_ascii_lowercase().as_str() {
            "twilio" => "twilio",
            "vonage" | "nexmo" => "vonage",
            _ => return Err(format!("SMS_PROVIDER {provider:?} is not twilio or vonage")),
        };
        let order: Vec<&str> = std::iter::once(first).chain(["twilio", "vonage"].into_iter().filter(|p| *p != first)).collect();
        match get("HERALD_SMS_PROVIDERS") {
            Some(providers) if providers.split(',').next().map(|p| p.trim().to_ascii_lowercase()) != Some(first.to_owned()) => {
                return Err(format!("SMS_PROVIDER says {first} first, and HERALD_SMS_PROVIDERS {providers:?} does not: set one"));
            }
            Some(_) => {}
            None => set.push(("HERALD_SMS_PROVIDERS", order.join(","))),
        }
    }
    Ok(set)
}

/// The settings every program that reads the topics needs.
struct Shared {
    kafka: kafka::Settings,
    topics: Topics,
    creation: topics::Creation,
    scylla: Option<(cql::Settings, usize)>,
    admin: Option<std::net::SocketAddr>,
}

#[cfg(test)]
mod tests;
