//! The flags of `herald api`, given after the subcommand.

use std::path::PathBuf;

use secrecy::SecretString;

use crate::flags::{self, ConfigError};

/// The flags of `herald api`.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiArgs {
    /// Address the API listens on: loopback by default; compose and the manifests listen on 0.0.0.0:8080.
    #[arg(long = "api-listen", env = "HERALD_API_LISTEN", default_value = "127.0.0.1:8080")]
    pub(crate) listen: std::net::SocketAddr,

    /// A bearer token with every scope, at least 32 bytes.
    #[arg(long = "api-token", env = "HERALD_API_TOKEN", hide_env_values = true, required_unless_present_any = ["token_file", "tokens_file"])]
    pub(crate) token: Option<SecretString>,

    /// A file holding --api-token.
    #[arg(long = "api-token-file", env = "HERALD_API_TOKEN_FILE", conflicts_with = "token")]
    pub(crate) token_file: Option<PathBuf>,

    /// A file of tokens, one a line: a name, its scopes (send, read, cancel, admin) and the token's SHA-256 as sha256:HEX. Read again on SIGHUP.
    #[arg(long = "api-tokens-file", env = "HERALD_API_TOKENS_FILE")]
    pub(crate) tokens_file: Option<PathBuf>,

    /// Cancels one token may make, as COUNT/PERIOD (10/1s): a burst of COUNT, refilled over PERIOD. Each is a record on a topic every pipeline instance reads whole at startup.
    #[arg(long = "api-cancel-rate", env = "HERALD_API_CANCEL_RATE", default_value = "10/1s", value_parser = parse_rate)]
    pub(crate) cancel_rate: governor::Quota,

    /// Consumer group of the status store; --group-id with ".api" appended by default.
    #[arg(long = "api-group-id", env = "HERALD_API_GROUP_ID")]
    pub(crate) group_id: Option<String>,
}

impl ApiArgs {
    /// The single token, read from its file when given as one, and long
    /// enough, if there is one.
    pub(crate) fn bearer(&self) -> Result<Option<SecretString>, ConfigError> {
        let token = flags::secret(&self.token, &self.token_file, "--api-token-file")?;
        if let Some(token) = &token {
            flags::long_enough("--api-token", token)?;
        }
        Ok(token)
    }

    /// The tokens file, checked as `herald api` loads it beside `bearer`,
    /// if there is one.
    pub(crate) fn tokens_file(&self, bearer: Option<&SecretString>) -> Result<Option<PathBuf>, ConfigError> {
        if let Some(path) = &self.tokens_file {
            super::tokens::Tokens::new(bearer, Some(path)).map_err(ConfigError::TokensFile)?;
        }
        Ok(self.tokens_file.clone())
    }
}

/// `COUNT/PERIOD`: a burst of COUNT, one more each PERIOD/COUNT.
fn parse_rate(s: &str) -> Result<governor::Quota, String> {
    let (count, period) = s.split_once('/').ok_or_else(|| format!("{s:?}: give COUNT/PERIOD, such as 10/1s"))?;
    let count: u32 = count.trim().parse().map_err(|_| format!("{count:?} is not a count"))?;
    let count = std::num::NonZeroU32::new(count).ok_or("the count must be at least 1")?;
    let period = humantime::parse_duration(period.trim()).map_err(|e| format!("period {period:?}: {e}"))?;
    let quota = governor::Quota::with_period(period / count.get()).ok_or("the period must be longer than 0")?;
    Ok(quota.allow_burst(count))
}
