//! What every group of flags shares: the one error a check returns, and
//! the helpers that read secrets and parse the values several groups take.
//! Each module that owns flags defines them beside the code that uses
//! them, with their checks (`kafka::KafkaArgs`, `topics::TopicArgs`, ...);
//! `config` assembles them.

use std::path::Path;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use url::Url;

/// Room for a request of a few KB besides the headers herald adds.
pub(crate) const MIN_MESSAGE_BYTES: usize = 16 * 1024;
/// The shortest key or token herald accepts: 256 bits.
pub(crate) const MIN_SECRET_BYTES: usize = 32;

/// A configuration mistake, naming the flag it is in.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("--default-locale {0:?} is not a BCP 47 tag such as en or pt-BR")]
    DefaultLocale(String),
    #[error("--retry-topics has {topics} entries but --retry-delays has {delays}; give one delay per retry topic")]
    RetryScheduleMismatch { topics: usize, delays: usize },
    #[error("at least one retry topic is needed")]
    NoRetryTopics,
    #[error("topic {0:?} is configured for two roles; every topic must be distinct")]
    DuplicateTopic(String),
    #[error("topic names must not be empty")]
    EmptyTopic,
    #[error("--{0} must be at least 1")]
    Zero(&'static str),
    #[error("--{0} is {1}; it must be at most {max}", max = tokio::sync::Semaphore::MAX_PERMITS)]
    TooLarge(&'static str, usize),
    #[error("--unconfirmed-sends ({unconfirmed}) must be more than --{lane} ({concurrency}): a provider that hangs holds the sends of its lane's calls, and the other channel needs some left")]
    UnconfirmedWithinLane { unconfirmed: usize, lane: &'static str, concurrency: usize },
    #[error("--sms-max-chars is {0}; Twilio accepts at most 1600")]
    SmsTooLong(usize),
    #[error("--twilio-account-sid, --twilio-from and credentials (--twilio-auth-token, or an API key) must be given together (missing {0})")]
    TwilioIncomplete(&'static str),
    #[error("--scylla-keyspace {0:?} is not a CQL identifier (letters, digits and _, at most 48, not starting with a digit)")]
    Keyspace(String),
    #[error("delivery receipts need Twilio credentials: their signatures are checked with the auth token")]
    ReceiptsWithoutTwilio,
    #[error("--receipts-public-url {0:?} is not an https URL (plain http only to a loopback host): Twilio's signature and herald's own travel in it")]
    ReceiptsUrl(String),
    #[error("--receipts-listen and --receipts-public-url must be given together")]
    ReceiptsIncomplete,
    #[error("--vonage-api-key, --vonage-api-secret and --vonage-from must be given together (missing {0})")]
    VonageIncomplete(&'static str),
    #[error("--twilio-api-key-sid and --twilio-api-key-secret must be given together (missing {0})")]
    TwilioApiKeyIncomplete(&'static str),
    #[error(
        "--envelope-key (or --envelope-key-file) is required: herald signs what it parks on its delay topics with it, so that a record written there by anyone else is judged as a new request. Give every instance of a deployment the same secret of at least {min} bytes, e.g. `openssl rand -base64 32`",
        min = MIN_SECRET_BYTES
    )]
    NoEnvelopeKey,
    #[error("{flag} is {len} bytes; it must be at least {min}, e.g. `openssl rand -base64 32`", min = MIN_SECRET_BYTES)]
    SecretTooShort { flag: &'static str, len: usize },
    #[error("{flag} {path}: {reason}")]
    SecretFile { flag: &'static str, path: String, reason: String },
    #[error("--retry-delays has a delay of 0; each retry must wait")]
    ZeroRetryDelay,
    #[error("--wait-topics has {topics} entries but --wait-delays has {delays}; give one delay per tier")]
    WaitScheduleMismatch { topics: usize, delays: usize },
    #[error("at least one --wait-topics tier is needed")]
    NoWaitTopics,
    #[error("the shortest --wait-delays ({shortest:?}) must be at most --hold-window ({hold:?}), and the hold more than 0: a record due sooner than the shortest tier's delay less the hold could wait behind one due later")]
    WaitBeyondHold { shortest: Duration, hold: Duration },
    #[error("--sms-template does not parse: {0}")]
    SmsTemplate(String),
    #[error("--sms-providers names a provider twice")]
    DuplicateProvider,
    #[error("`herald migrate` needs SCYLLA_URI (--scylla-uri)")]
    MigrateWithoutScylla,
    #[error("`herald api` needs SCYLLA_URI (--scylla-uri): the status store is in ScyllaDB")]
    ApiWithoutScylla,
    #[error("--api-tokens-file {0}")]
    TokensFile(String),
    #[error("--max-message-bytes is {0}; it must be at least {min}", min = MIN_MESSAGE_BYTES)]
    MaxMessageBytes(usize),
}

/// A secret given as a value, or as a file (`file_flag`): the file's, when
/// one is given (clap refuses both).
pub(crate) fn secret(value: &Option<SecretString>, file: &Option<std::path::PathBuf>, file_flag: &'static str) -> Result<Option<SecretString>, ConfigError> {
    match file {
        Some(path) => read_secret(file_flag, path).map(Some),
        None => Ok(value.clone()),
    }
}

/// A secret from a file: the whole file but a final line break, which
/// editors and `echo` add and no secret means.
pub(crate) fn read_secret(flag: &'static str, path: &Path) -> Result<SecretString, ConfigError> {
    let failed = |reason: String| ConfigError::SecretFile { flag, path: path.display().to_string(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| failed(format!("cannot read it: {e}")))?;
    let text = text.strip_suffix('\n').map_or(text.as_str(), |t| t.strip_suffix('\r').unwrap_or(t));
    if text.is_empty() {
        return Err(failed("it is empty".into()));
    }
    Ok(SecretString::from(text.to_owned()))
}

/// A key or token long enough to be one.
pub(crate) fn long_enough(flag: &'static str, secret: &SecretString) -> Result<(), ConfigError> {
    let len = secret.expose_secret().len();
    if len < MIN_SECRET_BYTES {
        return Err(ConfigError::SecretTooShort { flag, len });
    }
    Ok(())
}

/// Counts that must be at least 1 and, where they size a semaphore, fit
/// one: `(flag, value, sizes a semaphore)`.
pub(crate) fn counts(counts: &[(&'static str, usize, bool)]) -> Result<(), ConfigError> {
    for (name, value, semaphore) in counts {
        if *value == 0 {
            return Err(ConfigError::Zero(name));
        }
        if *semaphore && *value > tokio::sync::Semaphore::MAX_PERMITS {
            return Err(ConfigError::TooLarge(name, *value));
        }
    }
    Ok(())
}

/// https, or http to this host only (a test, or a proxy on the host).
pub(crate) fn secure_or_local(url: &Url) -> bool {
    match url.scheme() {
        "https" => true,
        "http" => match url.host() {
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        },
        _ => false,
    }
}

/// An address to listen on, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    Off,
    At(std::net::SocketAddr),
}

pub(crate) fn parse_listen(s: &str) -> Result<Listen, String> {
    match s.trim() {
        "off" => Ok(Listen::Off),
        address => address.parse().map(Listen::At).map_err(|e| format!("{address:?}: {e}; give host:port, or off")),
    }
}

pub(crate) fn parse_key_value(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("expected key=value, got {s:?}"))?;
    Ok((k.trim().to_owned(), v.trim().to_owned()))
}
