//! Stage 4: one delivery stage per channel. Each validates the request for
//! its channel, then calls its provider. Errors are classified here, once,
//! into `ErrorClass`; `outcome::decide` turns the class into what happens.

pub mod breaker;
pub mod push;
pub mod sms;

use std::fmt;
use std::time::Duration;

pub use push::{Fcm, ServiceAccount};
pub use sms::{SmsRules, Text, Twilio, TwilioAuth};

use crate::model::{Channel, ErrorClass, InvalidReason, Request};

/// Who handled an attempt; named in status events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Twilio,
    Fcm,
    DryRun,
}

impl Provider {
    pub fn name(self) -> &'static str {
        match self {
            Provider::Twilio => "twilio",
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
    /// The provider could not take it now; it may later.
    #[error("{provider} unavailable ({code}): {message}")]
    Unavailable { provider: Provider, code: String, message: String, retry_after: Option<Duration> },
}

impl DeliveryError {
    pub fn class(&self) -> ErrorClass {
        match self {
            DeliveryError::Invalid(_) => ErrorClass::Invalid,
            DeliveryError::Rejected { .. } => ErrorClass::Permanent,
            DeliveryError::Unavailable { .. } => ErrorClass::Transient,
        }
    }

    pub fn code(&self) -> String {
        match self {
            DeliveryError::Invalid(reason) => reason.code().to_owned(),
            DeliveryError::Rejected { code, .. } | DeliveryError::Unavailable { code, .. } => code.clone(),
        }
    }

    pub fn provider(&self) -> Option<Provider> {
        match self {
            DeliveryError::Invalid(_) => None,
            DeliveryError::Rejected { provider, .. } | DeliveryError::Unavailable { provider, .. } => Some(*provider),
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            DeliveryError::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Transport failures (timeouts, refused connections) are transient.
    fn transport(provider: Provider, error: &reqwest::Error) -> Self {
        let code = if error.is_timeout() { "timeout" } else { "transport" };
        DeliveryError::Unavailable {
            provider,
            code: code.to_owned(),
            // reqwest's Display includes the URL, which holds no personal data here.
            message: error.to_string(),
            retry_after: None,
        }
    }
}

/// The stage behind one channel.
pub enum Sender {
    Twilio(Twilio),
    Fcm(Fcm),
    /// Validates, then reports success without calling anyone.
    DryRun,
    /// No provider configured: requests for the channel are invalid here.
    Disabled,
}

/// A request's validation done: the answer, or the provider call to make.
pub enum Prepared<'a> {
    Answered(Result<Delivered, DeliveryError>),
    Call(Call<'a>),
}

/// A provider request still to be made.
pub enum Call<'a> {
    Twilio(&'a Twilio, Text),
    Fcm(&'a Fcm),
}

/// What validation produced for a call, owned, so that it can travel to
/// the task that makes the call without validating again.
pub enum Payload {
    Sms(Text),
    Push,
}

impl Sender {
    /// The call for a payload this sender prepared.
    pub fn call(&self, payload: Payload) -> Call<'_> {
        match (self, payload) {
            (Sender::Twilio(twilio), Payload::Sms(text)) => Call::Twilio(twilio, text),
            (Sender::Fcm(fcm), Payload::Push) => Call::Fcm(fcm),
            _ => unreachable!("a payload goes back to the sender that prepared it"),
        }
    }

    /// Validates `request` for `channel`. Invalid requests, dry runs and
    /// disabled channels are answered at once, without waiting.
    pub fn prepare(&self, channel: Channel, request: &Request, sms: &SmsRules) -> Prepared<'_> {
        let valid = match channel {
            Channel::Sms => sms.prepare(request).map(Payload::Sms),
            Channel::Push => push::validate(request).map(|()| Payload::Push),
        };
        let payload = match valid {
            Ok(payload) => payload,
            Err(reason) => return Prepared::Answered(Err(DeliveryError::Invalid(reason))),
        };
        match self {
            Sender::Twilio(_) | Sender::Fcm(_) => Prepared::Call(self.call(payload)),
            Sender::DryRun => Prepared::Answered(Ok(Delivered { provider: Provider::DryRun, message_id: None })),
            Sender::Disabled => Prepared::Answered(Err(DeliveryError::Invalid(InvalidReason::ChannelDisabled(channel)))),
        }
    }
}

impl<'a> Call<'a> {
    pub fn into_payload(self) -> Payload {
        match self {
            Call::Twilio(_, text) => Payload::Sms(text),
            Call::Fcm(_) => Payload::Push,
        }
    }

    pub fn provider(&self) -> Provider {
        match self {
            Call::Twilio(..) => Provider::Twilio,
            Call::Fcm(_) => Provider::Fcm,
        }
    }

    /// `attempt` (from 1) is passed on to the provider where it reports back.
    pub async fn send(self, request: &Request, attempt: u32) -> Result<Delivered, DeliveryError> {
        match self {
            Call::Twilio(twilio, text) => twilio.send(request, &text, attempt).await,
            Call::Fcm(fcm) => fcm.send(request).await,
        }
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
