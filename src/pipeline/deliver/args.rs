//! The flags of the delivery stages: providers, their credentials, the
//! SMS rules, and the circuit breakers.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::Url;
use secrecy::SecretString;

use super::sms::{OverLength, SmsRules, StatusCallbacks};
use super::{BreakerSettings, DeliveryMode, FcmSettings, Settings, SmsProvider, TwilioAuth, TwilioSender, TwilioSettings, VonageSettings};
use crate::flags::{self, ConfigError};

/// The flags of the delivery stages.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Delivery")]
pub struct DeliveryArgs {
    /// `providers` calls Twilio and FCM; `dry-run` skips the call and reports SENT by provider dry-run.
    #[arg(long, env = "HERALD_DELIVERY", value_enum, default_value_t = DeliveryMode::Providers)]
    pub(crate) delivery: DeliveryMode,

    /// Timeout of one provider HTTP request; a timeout is a transient failure.
    #[arg(long, env = "HERALD_HTTP_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) http_timeout: Duration,

    /// Transient failures in a row that open a provider's circuit: its calls then fail at once, to the retry topics.
    #[arg(long, env = "HERALD_BREAKER_FAILURES", default_value_t = 5)]
    pub(crate) breaker_failures: u32,

    /// How long an open circuit stays open before one trial call.
    #[arg(long, env = "HERALD_BREAKER_COOLDOWN", default_value = "30s", value_parser = humantime::parse_duration)]
    pub(crate) breaker_cooldown: Duration,

    /// Longest SMS body sent, in characters (after the template). Twilio's own limit is 1600.
    #[arg(long, env = "HERALD_SMS_MAX_CHARS", default_value_t = 480)]
    pub(crate) sms_max_chars: usize,

    /// An SMS body over --sms-max-chars: reject (status INVALID, body-too-long) or truncate (ending in an ellipsis).
    #[arg(long, env = "HERALD_SMS_OVER_LENGTH", value_enum, default_value_t = OverLength::Reject)]
    pub(crate) sms_over_length: OverLength,

    /// SMS body template, e.g. "{user_name}: {message}": {message} is the request's body, other names its template variables.
    #[arg(long, env = "HERALD_SMS_TEMPLATE")]
    pub(crate) sms_template: Option<String>,

    /// SMS providers in failover order: a transient failure (or an open circuit) of one moves the send to the next. Those without credentials are left out.
    #[arg(long, env = "HERALD_SMS_PROVIDERS", value_enum, value_delimiter = ',', default_value = "twilio,vonage")]
    pub(crate) sms_providers: Vec<SmsProvider>,

    #[command(flatten)]
    pub(crate) twilio: TwilioArgs,

    #[command(flatten)]
    pub(crate) vonage: VonageArgs,

    #[command(flatten)]
    pub(crate) fcm: FcmArgs,
}

/// The flags of Twilio.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Twilio")]
pub struct TwilioArgs {
    /// Twilio API base URL.
    #[arg(long, env = "TWILIO_BASE_URL", default_value = "https://api.twilio.com")]
    pub(crate) twilio_base_url: Url,

    /// Twilio account SID. SMS is disabled without it.
    #[arg(long, env = "TWILIO_ACCOUNT_SID")]
    pub(crate) twilio_account_sid: Option<String>,

    /// Twilio auth token.
    #[arg(long, env = "TWILIO_AUTH_TOKEN", hide_env_values = true)]
    pub(crate) twilio_auth_token: Option<SecretString>,

    /// A file holding the Twilio auth token.
    #[arg(long, env = "TWILIO_AUTH_TOKEN_FILE", conflicts_with = "twilio_auth_token")]
    pub(crate) twilio_auth_token_file: Option<PathBuf>,

    /// Twilio API key SID (SK...): with its secret, authenticates requests instead of the auth token, which then only checks receipt signatures.
    #[arg(long, env = "TWILIO_API_KEY_SID")]
    pub(crate) twilio_api_key_sid: Option<String>,

    /// The API key's secret.
    #[arg(long, env = "TWILIO_API_KEY_SECRET", hide_env_values = true)]
    pub(crate) twilio_api_key_secret: Option<SecretString>,

    /// A file holding the API key's secret.
    #[arg(long, env = "TWILIO_API_KEY_SECRET_FILE", conflicts_with = "twilio_api_key_secret")]
    pub(crate) twilio_api_key_secret_file: Option<PathBuf>,

    /// Sender: an E.164 number, or a Messaging Service SID (MG...).
    #[arg(long, env = "TWILIO_FROM")]
    pub(crate) twilio_from: Option<TwilioSender>,

    /// Most Twilio requests per second (a token bucket); unlimited without it.
    #[arg(long, env = "HERALD_TWILIO_MAX_RPS")]
    pub(crate) twilio_max_rps: Option<std::num::NonZeroU32>,
}


/// The flags of Vonage.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Vonage")]
pub struct VonageArgs {
    /// Vonage SMS API base URL.
    #[arg(long, env = "VONAGE_BASE_URL", default_value = "https://rest.nexmo.com")]
    pub(crate) vonage_base_url: Url,

    /// Vonage API key. Vonage is left out without it.
    #[arg(long, env = "VONAGE_API_KEY")]
    pub(crate) vonage_api_key: Option<String>,

    /// Vonage API secret.
    #[arg(long, env = "VONAGE_API_SECRET", hide_env_values = true)]
    pub(crate) vonage_api_secret: Option<SecretString>,

    /// A file holding the Vonage API secret.
    #[arg(long, env = "VONAGE_API_SECRET_FILE", conflicts_with = "vonage_api_secret")]
    pub(crate) vonage_api_secret_file: Option<PathBuf>,

    /// Vonage sender: a number (E.164) or an alphanumeric sender id.
    #[arg(long, env = "VONAGE_FROM", value_parser = parse_vonage_sender)]
    pub(crate) vonage_from: Option<String>,

    /// Most Vonage requests per second; unlimited without it.
    #[arg(long, env = "HERALD_VONAGE_MAX_RPS")]
    pub(crate) vonage_max_rps: Option<std::num::NonZeroU32>,
}


/// The flags of FCM.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "FCM")]
pub struct FcmArgs {
    /// FCM API base URL.
    #[arg(long, env = "FCM_BASE_URL", default_value = "https://fcm.googleapis.com")]
    pub(crate) fcm_base_url: Url,

    /// Google service-account key file (JSON). Push is disabled without it.
    #[arg(long, env = "GOOGLE_APPLICATION_CREDENTIALS")]
    pub(crate) fcm_credentials: Option<PathBuf>,

    /// Firebase project id; defaults to the key file's project_id.
    #[arg(long, env = "FCM_PROJECT_ID")]
    pub(crate) fcm_project_id: Option<String>,

    /// Most FCM requests per second; unlimited without it.
    #[arg(long, env = "HERALD_FCM_MAX_RPS")]
    pub(crate) fcm_max_rps: Option<std::num::NonZeroU32>,
}


fn parse_vonage_sender(s: &str) -> Result<String, String> {
    super::sms::check_vonage_sender(s).map(|()| s.to_owned())
}

impl DeliveryArgs {
    /// The longest SMS body the pipeline takes, when it refuses longer
    /// ones rather than cutting them: what `herald api` refuses at once.
    pub(crate) fn sms_refused_over(&self) -> Option<usize> {
        (self.sms_over_length == OverLength::Reject).then_some(self.sms_max_chars)
    }

    /// The delivery stages' settings; `callbacks`, when delivery receipts
    /// are on, go with every Twilio request.
    pub(crate) fn settings(&self, callbacks: Option<StatusCallbacks>) -> Result<Settings, ConfigError> {
        self.check()?;
        let sms = SmsRules::new(self.sms_max_chars, self.sms_over_length, self.sms_template.clone()).map_err(ConfigError::SmsTemplate)?;
        Ok(Settings {
            mode: self.delivery,
            breaker: BreakerSettings { failures: self.breaker_failures, cooldown: self.breaker_cooldown },
            sms,
            sms_providers: self.sms_providers.clone(),
            twilio: self.twilio.settings(callbacks)?,
            vonage: self.vonage.settings()?,
            fcm: self.fcm.fcm_credentials.clone().map(|credentials| FcmSettings {
                base_url: self.fcm.fcm_base_url.clone(),
                credentials,
                project_id: self.fcm.fcm_project_id.clone(),
                max_rps: self.fcm.fcm_max_rps,
            }),
        })
    }

    fn check(&self) -> Result<(), ConfigError> {
        flags::counts(&[("sms-max-chars", self.sms_max_chars, false), ("breaker-failures", self.breaker_failures as usize, false)])?;
        if self.sms_max_chars > 1600 {
            return Err(ConfigError::SmsTooLong(self.sms_max_chars));
        }
        let providers = &self.sms_providers;
        if (1..providers.len()).any(|i| providers[..i].contains(&providers[i])) {
            return Err(ConfigError::DuplicateProvider);
        }
        Ok(())
    }
}

impl TwilioArgs {
    /// The auth token, read from its file when given as one: delivery
    /// receipts check their signatures with it.
    pub(crate) fn auth_token(&self) -> Result<Option<SecretString>, ConfigError> {
        flags::secret(&self.twilio_auth_token, &self.twilio_auth_token_file, "--twilio-auth-token-file")
    }

    /// Twilio's settings, when its account is configured.
    fn settings(&self, callbacks: Option<StatusCallbacks>) -> Result<Option<TwilioSettings>, ConfigError> {
        let token = self.auth_token()?;
        let key_secret = flags::secret(&self.twilio_api_key_secret, &self.twilio_api_key_secret_file, "--twilio-api-key-secret-file")?;
        match (&self.twilio_api_key_sid, &key_secret) {
            (Some(_), None) => return Err(ConfigError::TwilioApiKeyIncomplete("--twilio-api-key-secret")),
            (None, Some(_)) => return Err(ConfigError::TwilioApiKeyIncomplete("--twilio-api-key-sid")),
            _ => {}
        }
        let given = [
            ("--twilio-account-sid", self.twilio_account_sid.is_some()),
            ("--twilio-auth-token or --twilio-api-key-sid", token.is_some() || self.twilio_api_key_sid.is_some()),
            ("--twilio-from", self.twilio_from.is_some()),
        ];
        if given.iter().any(|(_, set)| *set) {
            if let Some((missing, _)) = given.iter().find(|(_, set)| !set) {
                return Err(ConfigError::TwilioIncomplete(missing));
            }
        }
        let auth = match (&self.twilio_api_key_sid, key_secret, token) {
            (Some(sid), Some(secret), _) => TwilioAuth::ApiKey { sid: sid.clone(), secret },
            (_, _, Some(token)) => TwilioAuth::AuthToken(token),
            _ => return Ok(None),
        };
        let (Some(account_sid), Some(from)) = (self.twilio_account_sid.clone(), self.twilio_from.clone()) else { return Ok(None) };
        Ok(Some(TwilioSettings { base_url: self.twilio_base_url.clone(), account_sid, auth, from, callbacks, max_rps: self.twilio_max_rps }))
    }
}

impl VonageArgs {
    /// Vonage's settings, when its account is configured.
    fn settings(&self) -> Result<Option<VonageSettings>, ConfigError> {
        let secret = flags::secret(&self.vonage_api_secret, &self.vonage_api_secret_file, "--vonage-api-secret-file")?;
        let given = [("--vonage-api-key", self.vonage_api_key.is_some()), ("--vonage-api-secret", secret.is_some()), ("--vonage-from", self.vonage_from.is_some())];
        if given.iter().any(|(_, set)| *set) {
            if let Some((missing, _)) = given.iter().find(|(_, set)| !set) {
                return Err(ConfigError::VonageIncomplete(missing));
            }
        }
        let (Some(api_key), Some(api_secret), Some(from)) = (self.vonage_api_key.clone(), secret, self.vonage_from.clone()) else { return Ok(None) };
        Ok(Some(VonageSettings { base_url: self.vonage_base_url.clone(), api_key, api_secret, from, max_rps: self.vonage_max_rps }))
    }
}
