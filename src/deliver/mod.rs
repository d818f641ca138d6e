//! Stage 4: one delivery stage per channel. Each validates the request for
//! its channel, then calls its provider. Errors are classified here, once,
//! into `ErrorClass`; `outcome::decide` turns the class into what happens.

pub mod breaker;
mod guard;
pub mod push;
pub mod sms;

use std::fmt;
use std::time::Duration;

pub use push::{Fcm, ServiceAccount};
pub use guard::{Calls, Guarded};
pub use sms::{SmsRules, Text, Twilio, TwilioAuth, TwilioSender, Vonage};

use crate::model::{Channel, ErrorClass, InvalidReason, Request};
use crate::suppression::Reason;

/// Who handled an attempt; named in status events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Twilio,
    Vonage,
    Fcm,
    DryRun,
}

impl Provider {
    pub const ALL: [Provider; 4] = [Provider::Twilio, Provider::Vonage, Provider::Fcm, Provider::DryRun];

    pub fn from_name(name: &str) -> Option<Provider> {
        Provider::ALL.into_iter().find(|p| p.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Provider::Twilio => "twilio",
            Provider::Vonage => "vonage",
            Provider::Fcm => "fcm",
            Provider::DryRun => "dry-run",
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which attempt a call is, and where its request came from: a provider
/// that reports back (Twilio's callbacks) is told both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// From 1.
    pub number: u32,
    /// The requests partition the record was read from.
    pub partition: i32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Delivered {
    pub provider: Provider,
    pub message_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DeliveryError {
    #[error("invalid: {0}")]
    Invalid(InvalidReason),
    /// The provider refused this message for good.
    #[error("{provider} rejected the message ({code}): {message}")]
    Rejected { provider: Provider, code: String, message: String },
    /// The provider refused it because the recipient cannot be reached
    /// again (an opted-out number, an unregistered token): later sends to
    /// the recipient are suppressed.
    #[error("{provider} will not deliver to this recipient ({code}): {message}")]
    RecipientGone { provider: Provider, code: String, message: String, reason: Reason },
    /// The provider could not take it now; it may later.
    #[error("{provider} unavailable ({code}): {message}")]
    Unavailable { provider: Provider, code: String, message: String, retry_after: Option<Duration> },
    /// The provider was not called: it failed repeatedly, and its circuit
    /// is open for `retry_after` more.
    #[error("{provider} was not called: it failed repeatedly, and its circuit is open")]
    CircuitOpen { provider: Provider, retry_after: Duration },
}

impl DeliveryError {
    pub fn class(&self) -> ErrorClass {
        match self {
            DeliveryError::Invalid(_) => ErrorClass::Invalid,
            DeliveryError::Rejected { .. } | DeliveryError::RecipientGone { .. } => ErrorClass::Permanent,
            DeliveryError::Unavailable { .. } | DeliveryError::CircuitOpen { .. } => ErrorClass::Transient,
        }
    }

    pub fn code(&self) -> String {
        match self {
            DeliveryError::Invalid(reason) => reason.code().to_owned(),
            DeliveryError::Rejected { code, .. }
            | DeliveryError::RecipientGone { code, .. }
            | DeliveryError::Unavailable { code, .. } => code.clone(),
            DeliveryError::CircuitOpen { .. } => "circuit-open".to_owned(),
        }
    }

    pub fn provider(&self) -> Option<Provider> {
        match self {
            DeliveryError::Invalid(_) => None,
            DeliveryError::Rejected { provider, .. }
            | DeliveryError::RecipientGone { provider, .. }
            | DeliveryError::Unavailable { provider, .. }
            | DeliveryError::CircuitOpen { provider, .. } => Some(*provider),
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            DeliveryError::Unavailable { retry_after, .. } => *retry_after,
            DeliveryError::CircuitOpen { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// Transport failures (timeouts, refused connections) are transient.
    /// The message is herald's: reqwest's would name the URL.
    fn transport(provider: Provider, error: &reqwest::Error) -> Self {
        let (code, message) = if error.is_timeout() {
            ("timeout", "no answer within the HTTP timeout")
        } else if error.is_connect() {
            ("transport", "cannot connect")
        } else if error.is_decode() || error.is_body() {
            ("transport", "the answer was cut short or is not the provider's format")
        } else {
            ("transport", "the connection failed before an answer")
        };
        DeliveryError::Unavailable { provider, code: code.to_owned(), message: message.to_owned(), retry_after: None }
    }
}

/// One provider's client.
pub enum Gateway {
    Twilio(Twilio),
    Vonage(Vonage),
    Fcm(Fcm),
}

impl Gateway {
    pub fn provider(&self) -> Provider {
        match self {
            Gateway::Twilio(_) => Provider::Twilio,
            Gateway::Vonage(_) => Provider::Vonage,
            Gateway::Fcm(_) => Provider::Fcm,
        }
    }

    async fn send(&self, payload: &Payload, request: &Request, attempt: Attempt) -> Result<Delivered, DeliveryError> {
        match (self, payload) {
            (Gateway::Twilio(twilio), Payload::Sms(text)) => twilio.send(request, text, attempt).await,
            (Gateway::Vonage(vonage), Payload::Sms(text)) => vonage.send(request, text).await,
            (Gateway::Fcm(fcm), Payload::Push) => fcm.send(request).await,
            (gateway, _) => unreachable!("{} was given another channel's payload", gateway.provider()),
        }
    }
}

/// The stage behind one channel.
pub enum Sender {
    /// In failover order: a transient failure of one provider, or its open
    /// circuit, moves the call on to the next. Never empty.
    Providers(Vec<Guarded>),
    /// Validates, then reports success without calling anyone.
    DryRun,
    /// No provider configured: requests for the channel are invalid here.
    Disabled,
}

/// What validation produced for a call, owned, so that it can travel to
/// the task that makes the call without validating again.
pub enum Payload {
    Sms(Text),
    /// FCM's body is written from the request when it is sent.
    Push,
}

impl Payload {
    fn channel(&self) -> Channel {
        match self {
            Payload::Sms(_) => Channel::Sms,
            Payload::Push => Channel::Push,
        }
    }
}

impl Sender {
    /// Checks `request` against `channel`'s rules: the payload to send, or
    /// why it can never be sent in this deployment.
    pub fn validate(&self, channel: Channel, request: &Request, sms: &SmsRules) -> Result<Payload, InvalidReason> {
        if let Sender::Disabled = self {
            return Err(InvalidReason::ChannelDisabled(channel));
        }
        match channel {
            Channel::Sms => sms.prepare(request).map(Payload::Sms),
            Channel::Push => push::validate(request).map(|()| Payload::Push),
        }
    }

    /// What a sender that calls nobody answers; `None` when a provider
    /// must be called.
    pub fn answer_now(&self) -> Option<Delivered> {
        match self {
            Sender::DryRun => Some(Delivered { provider: Provider::DryRun, message_id: None }),
            Sender::Providers(_) | Sender::Disabled => None,
        }
    }

    /// Sends a payload [`Sender::validate`] returned, failing over from one
    /// provider to the next on transient failures. A permanent refusal is
    /// final: another provider would refuse it too, or should not be asked
    /// (an opted-out number). The error returned is the last provider's.
    ///
    /// When no provider was called at all (each circuit open), the error
    /// says so, with the soonest time one closes: the attempt is not used.
    /// When some were, the last real failure is returned.
    pub async fn send(&self, payload: &Payload, request: &Request, attempt: Attempt) -> Result<Delivered, DeliveryError> {
        let providers = match self {
            Sender::Providers(providers) => providers,
            Sender::DryRun => return Ok(Delivered { provider: Provider::DryRun, message_id: None }),
            Sender::Disabled => return Err(DeliveryError::Invalid(InvalidReason::ChannelDisabled(payload.channel()))),
        };
        let (mut failed, mut refused) = (None, None::<DeliveryError>);
        for (i, provider) in providers.iter().enumerate() {
            match provider.call(payload, request, attempt).await {
                Err(error @ DeliveryError::CircuitOpen { .. }) => {
                    if refused.as_ref().is_none_or(|r| error.retry_after() < r.retry_after()) {
                        refused = Some(error);
                    }
                }
                Err(error @ DeliveryError::Unavailable { .. }) => {
                    if let Some(next) = providers.get(i + 1) {
                        tracing::debug!(message = "Provider unavailable; failing over.", event_id = request.event_id, from = %provider.gateway().provider(), to = %next.gateway().provider(), %error);
                    }
                    failed = Some(error);
                }
                result => return result,
            }
        }
        Err(failed.or(refused).expect("a provider sender has at least one provider"))
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
