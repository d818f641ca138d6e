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

    /// Bearer token every API request must carry, at least 32 bytes.
    #[arg(long = "api-token", env = "HERALD_API_TOKEN", hide_env_values = true, required_unless_present = "token_file")]
    pub(crate) token: Option<SecretString>,

    /// A file holding --api-token.
    #[arg(long = "api-token-file", env = "HERALD_API_TOKEN_FILE", conflicts_with = "token")]
    pub(crate) token_file: Option<PathBuf>,

    /// Cancels one token may make, as COUNT/PERIOD (10/1s): a burst of COUNT, refilled over PERIOD. Each is a record on a topic every pipeline instance reads whole at startup.
    #[arg(long = "api-cancel-rate", env = "HERALD_API_CANCEL_RATE", default_value = "10/1s", value_parser = parse_rate)]
    pub(crate) cancel_rate: governor::Quota,

    /// Consumer group of the status store; --group-id with ".api" appended by default.
    #[arg(long = "api-group-id", env = "HERALD_API_GROUP_ID")]
    pub(crate) group_id: Option<String>,
}

impl ApiArgs {
    /// The token, read from its file when given as one, and long enough.
    pub(crate) fn bearer(&self) -> Result<SecretString, ConfigError> {
        let token = flags::secret(&self.token, &self.token_file, "--api-token-file")?.unwrap_or_else(|| SecretString::from(String::new()));
        flags::long_enough("--api-token", &token)?;
        Ok(token)
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
