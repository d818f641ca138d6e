//! Stage 4: one delivery stage per channel. A stage checks a request
//! against its channel's rules and turns it into that channel's message
//! (`sms::Text`, `push::PushMessage`), once; its providers send that
//! message, in failover order, each behind its guard. Provider answers are
//! classified here, once, into a [`DeliveryError`]; `outcome::decide` turns
//! the class into what happens.

mod args;
pub(crate) mod breaker;
mod build;
mod guard;
pub(crate) mod push;
pub(crate) mod sms;

use std::future::Future;
use std::time::Duration;

pub use args::DeliveryArgs;
pub use args::FcmArgs;
pub use args::TwilioArgs;
pub use args::VonageArgs;
pub use push::CredentialsError;
pub(crate) use build::stages;
pub(crate) use build::BreakerSettings;
pub(crate) use build::DeliveryMode;
pub(crate) use build::FcmSettings;
pub(crate) use build::Settings;
pub(crate) use build::SmsProvider;
pub(crate) use build::TwilioSettings;
pub(crate) use build::VonageSettings;
pub(crate) use guard::Calls;
pub(crate) use guard::Guarded;
pub(crate) use push::PushMessage;
pub(crate) use push::PushStage;
pub(crate) use push::ServiceAccount;
pub(crate) use sms::SmsStage;
pub(crate) use sms::Text;
pub(crate) use sms::TwilioAuth;
pub(crate) use sms::TwilioSender;

pub use crate::model::Provider;

/// Every request herald makes to a provider says who it is.
pub const USER_AGENT: &str = concat!("herald/", env!("CARGO_PKG_VERSION"));

use crate::model::{Channel, ErrorClass, ErrorCode, InvalidReason, Request, Tried};
use crate::pipeline::suppression::Reason;

/// Which attempt a call is, and where its request came from: a provider
/// that reports back (Twilio's callbacks) is told both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Attempt {
    /// From 1.
    pub number: u32,
    /// The requests partition the record was read from.
    pub partition: i32,
}

/// What a provider call is told besides its channel's message.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Call<'a> {
    pub request: &'a Request,
    pub attempt: Attempt,
}

/// A provider accepted the message.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivered {
    pub provider: Provider,
    pub message_id: Option<String>,
}

/// Why a send did not happen, classified once for `outcome::decide`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DeliveryError {
    #[error("invalid: {0}")]
    Invalid(InvalidReason),
    /// The provider refused this message for good.
    #[error("{provider} rejected the message ({code}): {message}")]
    Rejected { provider: Provider, code: ErrorCode, message: String },
    /// The provider refused it because the recipient cannot be reached
    /// again (an opted-out number, an unregistered token): later sends to
    /// the recipient are suppressed.
    #[error("{provider} will not deliver to this recipient ({code}): {message}")]
    RecipientGone { provider: Provider, code: ErrorCode, message: String, reason: Reason },
    /// The provider could not take it now; it may later.
    #[error("{provider} unavailable ({code}): {message}")]
    Unavailable { provider: Provider, code: ErrorCode, message: String, retry_after: Option<Duration> },
    /// The provider was not called: it failed repeatedly, and its circuit
    /// is open for `retry_after` more.
    #[error("{provider} was not called: it failed repeatedly, and its circuit is open")]
    CircuitOpen { provider: Provider, retry_after: Duration },
}

impl DeliveryError {
    pub(crate) fn class(&self) -> ErrorClass {
        match self {
            DeliveryError::Invalid(_) => ErrorClass::Invalid,
            DeliveryError::Rejected { .. } | DeliveryError::RecipientGone { .. } => ErrorClass::Permanent,
            DeliveryError::Unavailable { .. } | DeliveryError::CircuitOpen { .. } => ErrorClass::Transient,
        }
    }

    pub(crate) fn code(&self) -> ErrorCode {
        match self {
            DeliveryError::Invalid(reason) => reason.code(),
            DeliveryError::Rejected { code, .. }
            | DeliveryError::RecipientGone { code, .. }
            | DeliveryError::Unavailable { code, .. } => code.clone(),
            DeliveryError::CircuitOpen { .. } => ErrorCode::CIRCUIT_OPEN,
        }
    }

    pub(crate) fn provider(&self) -> Option<Provider> {
        match self {
            DeliveryError::Invalid(_) => None,
            DeliveryError::Rejected { provider, .. }
            | DeliveryError::RecipientGone { provider, .. }
            | DeliveryError::Unavailable { provider, .. }
            | DeliveryError::CircuitOpen { provider, .. } => Some(*provider),
        }
    }

    pub(crate) fn retry_after(&self) -> Option<Duration> {
        match self {
            DeliveryError::Unavailable { retry_after, .. } => *retry_after,
            DeliveryError::CircuitOpen { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// A transient failure with herald's code and sentence.
    fn unavailable(provider: Provider, code: ErrorCode, message: &str) -> Self {
        DeliveryError::Unavailable { provider, code, message: message.to_owned(), retry_after: None }
    }

    /// Transport failures (timeouts, refused connections) are transient.
    /// The message is herald's: reqwest's would name the URL.
    fn transport(provider: Provider, error: &reqwest::Error) -> Self {
        if error.is_timeout() {
            DeliveryError::unavailable(provider, ErrorCode::TIMEOUT, "no answer within the HTTP timeout")
        } else if error.is_connect() {
            DeliveryError::unavailable(provider, ErrorCode::TRANSPORT, "cannot connect")
        } else if error.is_decode() || error.is_body() {
            DeliveryError::unavailable(provider, ErrorCode::TRANSPORT, "the answer was cut short or is not the provider's format")
        } else {
            DeliveryError::unavailable(provider, ErrorCode::TRANSPORT, "the connection failed before an answer")
        }
    }
}

/// A provider's client, for the messages of one channel: the type of its
/// message is the channel's, so no provider can be handed another
/// channel's message.
pub(crate) trait Gateway: Send + Sync + 'static {
    type Message: Send + Sync;

    fn provider(&self) -> Provider;

    fn send(&self, message: &Self::Message, call: Call<'_>) -> impl Future<Output = Result<Delivered, DeliveryError>> + Send;
}

/// What a channel's stage does with the requests it checked.
pub(crate) enum Dispatch<G: Gateway> {
    /// In failover order: a transient failure of one provider, or its open
    /// circuit, moves the call on to the next. Never empty.
    Providers(Vec<Guarded<G>>),
    /// Checks, then reports success without calling anyone.
    DryRun,
    /// No provider configured: requests for the channel are invalid here.
    Disabled,
}

impl<G: Gateway> Dispatch<G> {
    /// Why no request for `channel` can be sent here, if none can.
    pub(super) fn refuses(&self, channel: Channel) -> Option<InvalidReason> {
        matches!(self, Dispatch::Disabled).then_some(InvalidReason::ChannelDisabled(channel))
    }

    /// What a stage that calls nobody answers; `None` when a provider must
    /// be called.
    pub(crate) fn answer_now(&self) -> Option<Delivered> {
        match self {
            Dispatch::DryRun => Some(Delivered { provider: Provider::DryRun, message_id: None }),
            Dispatch::Providers(_) | Dispatch::Disabled => None,
        }
    }

    /// Each provider's circuit, now.
    pub(crate) fn circuits(&self) -> Vec<(Provider, breaker::CircuitState)> {
        match self {
            Dispatch::Providers(providers) => providers.iter().map(|g| (g.gateway().provider(), g.circuit())).collect(),
            Dispatch::DryRun | Dispatch::Disabled => vec![],
        }
    }

    /// The providers in failover order, for people.
    pub(crate) fn describe(&self) -> String {
        match self {
            Dispatch::Providers(_) => self.providers().iter().map(|p| p.name()).collect::<Vec<_>>().join(", "),
            Dispatch::DryRun => "dry run".into(),
            Dispatch::Disabled => "off (no provider configured)".into(),
        }
    }

    pub(crate) fn providers(&self) -> Vec<Provider> {
        match self {
            Dispatch::Providers(providers) => providers.iter().map(|g| g.gateway().provider()).collect(),
            Dispatch::DryRun | Dispatch::Disabled => vec![],
        }
    }

    /// Sends `message`, failing over from one provider to the next on
    /// transient failures. A permanent refusal is final: another provider
    /// would refuse it too, or should not be asked (an opted-out number).
    /// The error returned is the last provider's.
    ///
    /// When no provider was called at all (each circuit open), the error
    /// says so, with the soonest time one closes: the attempt is not used.
    /// When some were, the last real failure is returned. `tried` gets each
    /// provider failed over from, before the one whose answer is returned.
    pub(crate) async fn send(&self, message: &G::Message, call: Call<'_>, tried: &mut Vec<Tried>) -> Result<Delivered, DeliveryError> {
        let providers = match self {
            Dispatch::Providers(providers) => providers,
            Dispatch::DryRun => return Ok(Delivered { provider: Provider::DryRun, message_id: None }),
            Dispatch::Disabled => return Err(DeliveryError::Invalid(InvalidReason::ChannelDisabled(call.request.channel))),
        };
        let (mut failed, mut refused) = (None, None::<DeliveryError>);
        for (i, provider) in providers.iter().enumerate() {
            match provider.call(message, call).await {
                Err(error @ DeliveryError::CircuitOpen { .. }) => {
                    if refused.as_ref().is_none_or(|r| error.retry_after() < r.retry_after()) {
                        refused = Some(error);
                    }
                }
                Err(error @ DeliveryError::Unavailable { .. }) => {
                    if let Some(next) = providers.get(i + 1) {
                        tracing::debug!(message = "Provider unavailable; failing over.", event_id = call.request.event_id, from = %provider.gateway().provider(), to = %next.gateway().provider(), %error);
                    }
                    tried.push(Tried { provider: provider.gateway().provider(), error_code: error.code() });
                    failed = Some(error);
                }
                result => return result,
            }
        }
        if failed.is_some() {
            // Its answer is the one returned, not one failed over from.
            tried.pop();
        }
        Err(failed.or(refused).expect("a provider stage has at least one provider"))
    }
}

/// A provider's HTTP answer, with the header every classifier reads.
struct Answer {
    provider: Provider,
    status: reqwest::StatusCode,
    retry_after: Option<Duration>,
    response: reqwest::Response,
}

impl Answer {
    /// Sends `request`. Not getting an answer (timeout, refused connection)
    /// is a transient failure.
    async fn of(provider: Provider, request: reqwest::RequestBuilder) -> Result<Answer, DeliveryError> {
        let response = request.send().await.map_err(|e| DeliveryError::transport(provider, &e))?;
        Ok(Answer { provider, status: response.status(), retry_after: retry_after(response.headers()), response })
    }

    /// The body of a success; one cut short or garbled is transient too.
    async fn body<T: serde::de::DeserializeOwned>(self) -> Result<T, DeliveryError> {
        let provider = self.provider;
        self.response.json().await.map_err(|e| DeliveryError::transport(provider, &e))
    }

    /// The body of a failure, when it is in the provider's error format.
    async fn error<T: serde::de::DeserializeOwned>(self) -> Option<T> {
        self.response.json().await.ok()
    }
}

/// Whether an HTTP error status is worth another attempt, when the
/// provider's own error code does not say otherwise.
fn http_is_transient(status: reqwest::StatusCode) -> bool {
    use reqwest::StatusCode as S;
    match status {
        // Bad credentials affect every message; retrying keeps them until an
        // operator fixes the account, where failing would drop them all.
        S::TOO_MANY_REQUESTS | S::UNAUTHORIZED | S::FORBIDDEN => true,
        s => !s.is_client_error(),
    }
}

/// `Retry-After`, as seconds or as an HTTP date. `outcome::decide` clamps
/// it; a date in the past means now.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    parse_retry_after(headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?, chrono::Utc::now())
}

fn parse_retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    // IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT") is RFC 2822 syntax.
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    Some((at.with_timezone(&chrono::Utc) - now).to_std().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let now = chrono::Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap();
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("Mon, 23 Nov 2026 12:05:00 GMT", now), Some(Duration::from_secs(300)));
        assert_eq!(parse_retry_after("Mon, 23 Nov 2026 11:00:00 GMT", now), Some(Duration::ZERO), "in the past: now");
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }
}
