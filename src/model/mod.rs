//! The domain types that flow between stages, and the vocabulary every
//! program shares: channels, providers, statuses, error codes. Avro
//! mapping lives in `codec`.

mod attempts;
mod errors;
mod rate_limit;
mod request;
mod status;

use std::fmt;

use chrono::{DateTime, Utc};

pub use attempts::Attempts;
#[cfg(test)]
pub(crate) use attempts::MAX_ATTEMPTS;
pub use errors::ErrorClass;
pub use errors::ErrorCode;
pub use errors::InvalidReason;
pub use errors::Provider;
pub use rate_limit::{RateLimit, Window};
pub use request::AndroidOverrides;
pub use request::AndroidPriority;
pub use request::ApnsOverrides;
pub use request::Content;
pub use request::Prefs;
pub use request::Priority;
pub use request::Request;
pub(crate) use request::is_e164;
pub(crate) use status::Phase;
pub use status::Status;
pub use status::StatusEvent;

/// A delivery channel. Adding one means a variant here, a symbol in both
/// schemas, and a stage in `deliver`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    Sms,
    Push,
}

impl Channel {
    /// Every channel herald delivers to.
    pub const ALL: [Channel; 2] = [Channel::Sms, Channel::Push];

    /// The Avro enum symbol.
    pub fn symbol(self) -> &'static str {
        match self {
            Channel::Sms => "SMS",
            Channel::Push => "PUSH",
        }
    }

    /// The channel of an Avro enum symbol, if herald delivers to it.
    pub fn from_symbol(symbol: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.symbol() == symbol)
    }

    /// A dense index, for per-channel arrays.
    pub fn index(self) -> usize {
        self as usize
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
    /// Both encodings.
    pub const ALL: [Encoding; 2] = [Encoding::Gsm7, Encoding::Ucs2];

    /// The Avro enum symbol.
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

/// A cancel's value on the cancellations topic, as herald writes it; other
/// producers may write anything (see `pipeline::cancel`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Cancel {
    /// Who asked, for people reading the topic: `api`.
    pub requested_by: String,
    pub reason: Option<String>,
}
