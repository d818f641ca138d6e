//! The domain types that flow between stages. Avro mapping lives in
//! `decode` (requests) and `outcome::status` (status events).

use std::collections::HashMap;
use std::fmt;

use chrono::{DateTime, Utc};

/// A delivery channel. Adding one means a variant here, a symbol in both
/// schemas, and a stage in `deliver`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    Sms,
    Push,
}

impl Channel {
    pub const ALL: [Channel; 2] = [Channel::Sms, Channel::Push];

    /// The Avro enum symbol.
    pub fn symbol(self) -> &'static str {
        match self {
            Channel::Sms => "SMS",
            Channel::Push => "PUSH",
        }
    }

    pub fn from_symbol(symbol: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.symbol() == symbol)
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl Request {
    pub fn ids(&self) -> Ids {
        Ids {
            event_id: self.event_id.clone(),
            user_id: self.user_id.clone(),
            ..self.ids_but_names()
        }
    }

    /// [`Request::ids`], taking the ids rather than copying them, for a
    /// request that is done with.
    pub fn into_ids(self) -> Ids {
        let rest = self.ids_but_names();
        Ids { event_id: self.event_id, user_id: self.user_id, ..rest }
    }

    fn ids_but_names(&self) -> Ids {
        Ids {
            event_id: String::new(),
            user_id: String::new(),
            channel: Some(self.channel),
            recipient: Some(crate::mask::Masked(&self.recipient).into_string()),
            created_at: Some(self.created_at),
            scheduled_at: self.scheduled_at,
            sms: None,
            tried: Vec::new(),
            locale: None,
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.symbol())
    }
}

/// Whom a status event is about. The channel is `None` only when the
/// request named one herald does not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ids {
    pub event_id: String,
    pub user_id: String,
    pub channel: Option<Channel>,
    /// What the status event reports about the request besides its ids:
    /// the recipient masked, its times, what the SMS costs once checked,
    /// and the providers failed over from.
    pub recipient: Option<String>,
    pub created_at: Option<DateTime<Utc>>,
    pub scheduled_at: Option<DateTime<Utc>>,
    pub sms: Option<SmsCost>,
    pub tried: Vec<Tried>,
    /// The locale of the template the text was built from, if any.
    pub locale: Option<String>,
}

impl Ids {
    /// Only the ids: for a request that could not be read whole.
    pub fn bare(event_id: String, user_id: String, channel: Option<Channel>) -> Ids {
        Ids { event_id, user_id, channel, recipient: None, created_at: None, scheduled_at: None, sms: None, tried: Vec::new(), locale: None }
    }
}

/// Where a record first entered herald: on the requests topic, or
/// wherever a dead letter was replayed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// How an SMS body is encoded, which decides its segments and cost. In
/// the schema's symbol order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Gsm7,
    Ucs2,
}

impl Encoding {
    pub const ALL: [Encoding; 2] = [Encoding::Gsm7, Encoding::Ucs2];

    pub fn symbol(self) -> &'static str {
        match self {
            Encoding::Gsm7 => "GSM7",
            Encoding::Ucs2 => "UCS2",
        }
    }
}

/// What an SMS costs: its segments, in its encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmsCost {
    pub segments: u32,
    pub encoding: Encoding,
}

/// A provider tried before the one that gave the outcome, and why it was
/// passed over (failover).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tried {
    pub provider: Provider,
    pub error_code: ErrorCode,
}

/// A decoded `notification.requested` event.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub event_id: String,
    pub user_id: String,
    pub channel: Channel,
    pub recipient: String,
    pub content: Content,
    pub scheduled_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub prefs: Prefs,
}

/// The recipient's clock and language, and how urgent the request is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Prefs {
    /// An IANA name such as `Europe/Lisbon`; `None`: `--default-time-zone`.
    pub time_zone: Option<String>,
    /// A BCP 47 tag such as `pt-BR`; `None`: `--default-locale`.
    pub locale: Option<String>,
    pub priority: Priority,
}

/// URGENT requests (one-time codes, security alerts) are sent in quiet
/// hours; the others wait. In the schema's symbol order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Priority {
    Normal,
    Urgent,
    /// Not given, or a symbol this reader does not know: as NORMAL.
    #[default]
    Unknown,
}

impl Priority {
    /// In the schema's symbol order, before UNKNOWN.
    pub const KNOWN: [Priority; 2] = [Priority::Normal, Priority::Urgent];

    pub fn symbol(self) -> &'static str {
        match self {
            Priority::Normal => "NORMAL",
            Priority::Urgent => "URGENT",
            Priority::Unknown => "UNKNOWN",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Content {
    pub title: Option<String>,
    pub body: String,
    /// A template in `--templates-dir` to build the text from, instead of
    /// `body` (and `title`).
    pub template_id: Option<String>,
    pub template_vars: HashMap<String, String>,
    pub data: HashMap<String, String>,
    /// Push only: FCM's `message.android`. Boxed, as is `apns`: few
    /// requests have them, and inline they were half the size of every
    /// request, which is moved from stage to stage.
    pub android: Option<Box<AndroidOverrides>>,
    /// Push only: FCM's `message.apns`.
    pub apns: Option<Box<ApnsOverrides>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AndroidOverrides {
    pub priority: Option<AndroidPriority>,
    pub ttl_seconds: Option<i64>,
    pub collapse_key: Option<String>,
    pub channel_id: Option<String>,
    pub sound: Option<String>,
    pub click_action: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AndroidPriority {
    Normal,
    High,
}

impl AndroidPriority {
    /// In the schema's symbol order (then UNKNOWN).
    pub const ALL: [AndroidPriority; 2] = [AndroidPriority::Normal, AndroidPriority::High];

    /// The Avro symbol, which is also FCM's value.
    pub fn symbol(self) -> &'static str {
        match self {
            AndroidPriority::Normal => "NORMAL",
            AndroidPriority::High => "HIGH",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ApnsOverrides {
    pub headers: HashMap<String, String>,
    pub sound: Option<String>,
    pub badge: Option<i32>,
    pub category: Option<String>,
    pub thread_id: Option<String>,
    pub content_available: bool,
}

/// The `status` symbol of a status event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    Sent,
    RateLimited,
    RetryScheduled,
    Failed,
    DeadLettered,
    Invalid,
    Scheduled,
    Deferred,
    /// From a delivery receipt: the carrier delivered the message.
    Delivered,
    /// From a delivery receipt: the carrier could not deliver it.
    Undelivered,
    /// Not sent: the recipient opted out, or its push token is dead.
    Suppressed,
    /// Not sent: cancelled while it waited (see `cancel`).
    Cancelled,
}

impl Status {
    pub const ALL: [Status; 12] = [
        Status::Sent,
        Status::RateLimited,
        Status::RetryScheduled,
        Status::Failed,
        Status::DeadLettered,
        Status::Invalid,
        Status::Scheduled,
        Status::Deferred,
        Status::Delivered,
        Status::Undelivered,
        Status::Suppressed,
        Status::Cancelled,
    ];

    pub fn from_symbol(symbol: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.symbol() == symbol)
    }

    pub fn symbol(self) -> &'static str {
        match self {
            Status::Sent => "SENT",
            Status::RateLimited => "RATE_LIMITED",
            Status::RetryScheduled => "RETRY_SCHEDULED",
            Status::Failed => "FAILED",
            Status::DeadLettered => "DEAD_LETTERED",
            Status::Invalid => "INVALID",
            Status::Scheduled => "SCHEDULED",
            Status::Deferred => "DEFERRED",
            Status::Delivered => "DELIVERED",
            Status::Undelivered => "UNDELIVERED",
            Status::Suppressed => "SUPPRESSED",
            Status::Cancelled => "CANCELLED",
        }
    }

    /// No further status follows a terminal one from herald's pipeline for
    /// the same event; a delivery receipt may still follow SENT.
    pub fn is_terminal(self) -> bool {
        self.stage() != Stage::Pending
    }

    pub fn stage(self) -> Stage {
        match self {
            Status::RetryScheduled | Status::Scheduled | Status::Deferred => Stage::Pending,
            Status::Delivered | Status::Undelivered => Stage::Receipt,
            _ => Stage::Outcome,
        }
    }
}

/// Where a status stands in a notification's life, in order: waiting for
/// an attempt, decided, and (SMS with receipts) reported by the carrier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    Pending,
    Outcome,
    Receipt,
}

/// Who handled an attempt; named in status events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    Twilio,
    Vonage,
    Fcm,
    DryRun,
}

impl Provider {
    pub const ALL: [Provider; 4] = [Provider::Twilio, Provider::Vonage, Provider::Fcm, Provider::DryRun];

    /// As status events carry it. A name this build does not know (a
    /// newer writer's provider) reads as `None`.
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

/// A status's or a header's error code, stable and machine-readable: a
/// provider's own (`twilio:21211`, `fcm:UNREGISTERED`, `vonage:1`), an HTTP
/// status a provider gave no code with (`http:503`), a produce error
/// (`produce:MessageSizeTooLarge`), or one of herald's (`invalid-phone-number`,
/// `rate-limit-exceeded`, `circuit-open`, ...). Built only by these
/// constructors, or read back from a record another herald wrote.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ErrorCode(std::borrow::Cow<'static, str>);

impl ErrorCode {
    pub const RATE_LIMIT_EXCEEDED: ErrorCode = ErrorCode::herald("rate-limit-exceeded");
    pub const QUIET_HOURS: ErrorCode = ErrorCode::herald("quiet-hours");
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
    pub fn symbol(self) -> &'static str {
        match self {
            ErrorClass::Invalid => "INVALID",
            ErrorClass::Permanent => "PERMANENT",
            ErrorClass::Transient => "TRANSIENT",
            ErrorClass::RateLimited => "RATE_LIMITED",
        }
    }

    pub const ALL: [ErrorClass; 4] = [ErrorClass::Invalid, ErrorClass::Permanent, ErrorClass::Transient, ErrorClass::RateLimited];

    pub fn from_symbol(symbol: &str) -> Option<ErrorClass> {
        Self::ALL.into_iter().find(|c| c.symbol() == symbol)
    }
}

/// One `notification.status` event.
///
/// Delivery is at least once, so a subscriber may read an event twice, and
/// an event's statuses may interleave with a redelivered copy's. The rule
/// for subscribers, implemented by [`StatusEvent::is_duplicate_of`] and
/// [`StatusEvent::supersedes`]:
/// - two statuses with the same event id, attempt and status are the same
///   outcome: keep one;
/// - the current state of a notification is its status with the highest
///   attempt; at the same attempt a decided status replaces a pending one
///   and a carrier receipt replaces the decision; what is still tied goes
///   to the later `occurred_at`.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusEvent {
    pub event_id: String,
    pub user_id: String,
    /// `None` when the request named a channel herald does not know.
    pub channel: Option<Channel>,
    pub status: Status,
    pub attempt: u32,
    pub provider: Option<Provider>,
    pub provider_message_id: Option<String>,
    pub error_code: Option<ErrorCode>,
    pub error_class: Option<ErrorClass>,
    pub error_message: Option<String>,
    pub occurred_at: DateTime<Utc>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// The recipient, masked as in logs (see `mask`).
    pub recipient: Option<String>,
    pub created_at: Option<DateTime<Utc>>,
    pub scheduled_at: Option<DateTime<Utc>>,
    pub sms: Option<SmsCost>,
    /// Where the request entered herald, to find it on the dead-letter topic.
    pub origin: Option<Origin>,
    /// Providers failed over from, in order, before `provider`.
    pub tried: Vec<Tried>,
    /// The locale of the template the text was built from.
    pub locale: Option<String>,
}

impl StatusEvent {
    pub fn is_duplicate_of(&self, other: &StatusEvent) -> bool {
        (&self.event_id, self.attempt, self.status) == (&other.event_id, other.attempt, other.status)
    }

    /// Whether this status replaces `other`, of the same notification, as
    /// its current state.
    pub fn supersedes(&self, other: &StatusEvent) -> bool {
        (self.attempt, self.status.stage(), self.occurred_at) > (other.attempt, other.status.stage(), other.occurred_at)
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

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn status(event_id: &str, status: Status, attempt: u32, at: i64) -> StatusEvent {
        StatusEvent {
            locale: None,
            event_id: event_id.into(),
            user_id: "u".into(),
            channel: Some(Channel::Sms),
            status,
            attempt,
            provider: None,
            provider_message_id: None,
            error_code: None,
            error_class: None,
            error_message: None,
            occurred_at: Utc.timestamp_opt(1_700_000_000 + at, 0).unwrap(),
            next_attempt_at: None,
            recipient: None,
            created_at: None,
            scheduled_at: None,
            sms: None,
            origin: None,
            tried: Vec::new(),
        }
    }

    /// The subscriber's fold: duplicates dropped, then the current status.
    fn follow(stream: &[StatusEvent]) -> (Vec<StatusEvent>, HashMap<String, Status>) {
        let mut kept: Vec<StatusEvent> = vec![];
        let mut current: HashMap<String, StatusEvent> = HashMap::new();
        for e in stream {
            if kept.iter().any(|k| e.is_duplicate_of(k)) {
                continue;
            }
            kept.push(e.clone());
            if current.get(&e.event_id).is_none_or(|c| e.supersedes(c)) {
                current.insert(e.event_id.clone(), e.clone());
            }
        }
        (kept, current.into_iter().map(|(id, e)| (id, e.status)).collect())
    }

    #[test]
    fn the_subscriber_rule_keeps_every_outcome_and_finds_the_current_one() {
        use Status::*;
        // Every pair that "deduplicate on event id and attempt" got wrong,
        // each followed by a redelivered duplicate, some out of order.
        let stream = [
            status("scheduled-invalid", Scheduled, 0, 0),
            status("scheduled-invalid", Invalid, 0, 5),
            status("scheduled-limited", Scheduled, 0, 0),
            status("scheduled-limited", RateLimited, 0, 5),
            status("scheduled-limited", Scheduled, 0, 6),
            status("sent-delivered", Sent, 1, 0),
            status("sent-delivered", Delivered, 1, 9),
            status("sent-delivered", Sent, 1, 10),
            status("sent-undelivered", Undelivered, 1, 9),
            status("sent-undelivered", Sent, 1, 0),
            status("retried", RetryScheduled, 1, 0),
            status("retried", RetryScheduled, 2, 600),
            status("retried", Sent, 3, 1800),
            status("retried", RetryScheduled, 2, 601),
            status("suppressed-on-retry", RetryScheduled, 1, 0),
            status("suppressed-on-retry", Suppressed, 1, 600),
            // A crash: the first attempt's outcome was lost, the redelivery succeeded.
            status("redelivered", RetryScheduled, 1, 0),
            status("redelivered", Sent, 1, 3),
        ];
        let (kept, current) = follow(&stream);
        assert_eq!(kept.len(), stream.len() - 3, "the three exact duplicates, and nothing else, dropped");
        let expected = [
            ("scheduled-invalid", Invalid),
            ("scheduled-limited", RateLimited),
            ("sent-delivered", Delivered),
            ("sent-undelivered", Undelivered),
            ("retried", Sent),
            ("suppressed-on-retry", Suppressed),
            ("redelivered", Sent),
        ];
        assert_eq!(current, expected.into_iter().map(|(id, s)| (id.to_owned(), s)).collect::<HashMap<_, _>>());
        // The old rule, the first status per (event id, attempt), loses these.
        let mut first: HashMap<(&str, u32), Status> = HashMap::new();
        for e in &stream {
            first.entry((&e.event_id, e.attempt)).or_insert(e.status);
        }
        assert_eq!(first[&("scheduled-invalid", 0)], Scheduled);
        assert_eq!(first[&("sent-delivered", 1)], Sent);
    }
}
