//! Who handled an attempt, and what went wrong: providers, error codes
//! and classes, and why a request is invalid.

use std::fmt;

use super::Channel;

/// Who handled an attempt; named in status events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    Twilio,
    Vonage,
    Fcm,
    DryRun,
}

impl Provider {
    /// Every provider.
    pub const ALL: [Provider; 4] = [Provider::Twilio, Provider::Vonage, Provider::Fcm, Provider::DryRun];

    /// As status events carry it. A name this build does not know (a
    /// newer writer's provider) reads as `None`.
    pub fn from_name(name: &str) -> Option<Provider> {
        Provider::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The name statuses and metrics use.
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

/// A status's or a header's error code, stable and machine-readable: a
/// provider's own (`twilio:21211`, `fcm:UNREGISTERED`, `vonage:1`), an HTTP
/// status a provider gave no code with (`http:503`), a produce error
/// (`produce:MessageSizeTooLarge`), or one of herald's (`invalid-phone-number`,
/// `rate-limit-exceeded`, `circuit-open`, ...). Built only by these
/// constructors, or read back from a record another herald wrote.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ErrorCode(std::borrow::Cow<'static, str>);

impl ErrorCode {
    /// Over the user's rate limit.
    pub const RATE_LIMIT_EXCEEDED: ErrorCode = ErrorCode::herald("rate-limit-exceeded");
    /// Deferred until the recipient's quiet hours end.
    pub const QUIET_HOURS: ErrorCode = ErrorCode::herald("quiet-hours");
    /// Not called: the provider's circuit is open.
    pub const CIRCUIT_OPEN: ErrorCode = ErrorCode::herald("circuit-open");
    /// No answer within the HTTP timeout.
    pub const TIMEOUT: ErrorCode = ErrorCode::herald("timeout");
    /// The connection failed, or the answer was not the provider's format.
    pub const TRANSPORT: ErrorCode = ErrorCode::herald("transport");

    /// One of herald's own codes.
    pub const fn herald(code: &'static str) -> Self {
        ErrorCode(std::borrow::Cow::Borrowed(code))
    }

    /// A provider's own code for its answer.
    pub fn provider(provider: Provider, code: impl fmt::Display) -> Self {
        ErrorCode(format!("{provider}:{code}").into())
    }

    /// An HTTP status a provider answered without a code of its own.
    pub fn http(status: u16) -> Self {
        ErrorCode(format!("http:{status}").into())
    }

    /// Google's OAuth token endpoint refused the service account.
    pub fn token_exchange(status: u16) -> Self {
        ErrorCode(format!("oauth:{status}").into())
    }

    /// A produce error no retry can fix.
    pub fn produce(error: impl fmt::Display) -> Self {
        ErrorCode(format!("produce:{error}").into())
    }

    /// A code as another writer put it in a record.
    pub fn read(code: String) -> Self {
        ErrorCode(code.into())
    }

    /// The code as statuses carry it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A code reads as its text, so `Option<ErrorCode>::as_deref` gives the
/// `&str` that subscribers compare with.
impl std::ops::Deref for ErrorCode {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<&str> for ErrorCode {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How an error was classified; this alone decides what happens next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// The request itself is wrong; no attempt could succeed.
    Invalid,
    /// The provider refused it for good.
    Permanent,
    /// Worth another attempt later.
    Transient,
    /// The user's window for the channel is full.
    RateLimited,
}

impl ErrorClass {
    /// The Avro enum symbol.
    pub fn symbol(self) -> &'static str {
        match self {
            ErrorClass::Invalid => "INVALID",
            ErrorClass::Permanent => "PERMANENT",
            ErrorClass::Transient => "TRANSIENT",
            ErrorClass::RateLimited => "RATE_LIMITED",
        }
    }

    /// Every class.
    pub const ALL: [ErrorClass; 4] = [ErrorClass::Invalid, ErrorClass::Permanent, ErrorClass::Transient, ErrorClass::RateLimited];

    /// The class of an Avro enum symbol.
    pub fn from_symbol(symbol: &str) -> Option<ErrorClass> {
        Self::ALL.into_iter().find(|c| c.symbol() == symbol)
    }
}

/// Why a request can never be delivered as written. One enum for every
/// stage that judges content, so each reason has one stable code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvalidReason {
    UnknownChannel(String),
    /// No provider is configured for the channel in this deployment.
    ChannelDisabled(Channel),
    /// The record key is not the user id, so the user's events could be
    /// split across partitions and their rate limit across writers.
    KeyMismatch,
    EmptyEventId,
    EmptyUserId,
    EmptyBody,
    InvalidPhoneNumber,
    BodyTooLong { chars: usize, max: usize },
    /// The SMS template could not be filled (a variable is missing).
    Template(String),
    EmptyPushToken,
    /// A push whose notification, data and overrides exceed FCM's limit.
    PayloadTooLarge { bytes: usize, max: usize },
    /// An Android or APNs override out of its range; names the field.
    InvalidOverride(&'static str),
    /// Key, value and headers together are too large for herald to copy to
    /// a retry or dead-letter topic with its own headers.
    RecordTooLarge { bytes: usize, max: usize },
    /// `scheduled_at` is further ahead than `--max-schedule-ahead`, which
    /// bounds how long a cancel must be remembered.
    ScheduledTooFar { max: std::time::Duration },
    /// `time_zone` is not in the IANA time zone database.
    UnknownTimeZone(String),
    /// A template's request names a `locale` that is not a BCP 47 tag.
    InvalidLocale(String),
    /// No template by that id has a file for the channel in any locale of
    /// the fallback chain.
    TemplateMissing { template_id: String, locale: String },
    /// The template uses a variable the request's `template_vars` lack.
    TemplateVariableMissing { template_id: String, variables: String },
}

impl InvalidReason {
    /// Stable, machine-readable code for status events and DLQ headers.
    pub fn code(&self) -> ErrorCode {
        ErrorCode::herald(match self {
            InvalidReason::UnknownChannel(_) => "unknown-channel",
            InvalidReason::ChannelDisabled(_) => "channel-disabled",
            InvalidReason::KeyMismatch => "key-mismatch",
            InvalidReason::EmptyEventId => "empty-event-id",
            InvalidReason::EmptyUserId => "empty-user-id",
            InvalidReason::EmptyBody => "empty-body",
            InvalidReason::InvalidPhoneNumber => "invalid-phone-number",
            InvalidReason::BodyTooLong { .. } => "body-too-long",
            InvalidReason::Template(_) => "template-error",
            InvalidReason::EmptyPushToken => "empty-push-token",
            InvalidReason::PayloadTooLarge { .. } => "payload-too-large",
            InvalidReason::InvalidOverride(_) => "invalid-override",
            InvalidReason::RecordTooLarge { .. } => "record-too-large",
            InvalidReason::ScheduledTooFar { .. } => "scheduled-too-far",
            InvalidReason::UnknownTimeZone(_) => "unknown-time-zone",
            InvalidReason::InvalidLocale(_) => "invalid-locale",
            InvalidReason::TemplateMissing { .. } => "template-missing",
            InvalidReason::TemplateVariableMissing { .. } => "template-variable-missing",
        })
    }
}

/// At most 64 characters of `s`, then an ellipsis.
fn clip(s: &str) -> std::borrow::Cow<'_, str> {
    const MAX: usize = 64;
    match s.char_indices().nth(MAX) {
        None => s.into(),
        Some((at, _)) => format!("{}…", &s[..at]).into(),
    }
}

// Messages never include the recipient or the text: they end up in status
// events that many systems read.
impl fmt::Display for InvalidReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InvalidReason::UnknownChannel(symbol) => write!(f, "channel {symbol} is not one herald delivers to"),
            InvalidReason::ChannelDisabled(c) => write!(f, "no provider is configured for channel {c}"),
            InvalidReason::KeyMismatch => f.write_str("record key is not the user id"),
            InvalidReason::EmptyEventId => f.write_str("event_id is empty"),
            InvalidReason::EmptyUserId => f.write_str("user_id is empty"),
            InvalidReason::EmptyBody => f.write_str("message body is empty"),
            InvalidReason::InvalidPhoneNumber => f.write_str("recipient is not an E.164 phone number"),
            InvalidReason::BodyTooLong { chars, max } => write!(f, "body has {chars} characters; the limit is {max}"),
            InvalidReason::Template(error) => write!(f, "template: {error}"),
            InvalidReason::EmptyPushToken => f.write_str("push token is empty"),
            InvalidReason::PayloadTooLarge { bytes, max } => write!(f, "push payload is {bytes} bytes; FCM takes at most {max}"),
            InvalidReason::InvalidOverride(field) => write!(f, "push override {field} is out of range"),
            InvalidReason::RecordTooLarge { bytes, max } => {
                write!(f, "the record is {bytes} bytes; herald forwards records of at most {max}")
            }
            InvalidReason::ScheduledTooFar { max } => {
                write!(f, "scheduled_at is more than {} ahead", humantime::format_duration(*max))
            }
            // Names only, which the producer chose (clipped: a producer's
            // megabyte must not become every status's); never the values.
            InvalidReason::UnknownTimeZone(name) => write!(f, "time_zone {:?} is not in the IANA time zone database", clip(name)),
            InvalidReason::InvalidLocale(tag) => write!(f, "locale {:?} is not a BCP 47 tag such as pt-BR", clip(tag)),
            InvalidReason::TemplateMissing { template_id, locale } => write!(
                f,
                "template {:?} has no file for this channel in locale {:?}, its fallbacks or the default",
                clip(template_id),
                clip(locale)
            ),
            InvalidReason::TemplateVariableMissing { template_id, variables } => {
                write!(f, "template {:?} uses variables that template_vars does not have: {}", clip(template_id), clip(variables))
            }
        }
    }
}
