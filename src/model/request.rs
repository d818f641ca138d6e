//! A request, as read from `notification.requested`.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::{Channel, Ids};

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

    /// The Avro enum symbol.
    pub fn symbol(self) -> &'static str {
        match self {
            Priority::Normal => "NORMAL",
            Priority::Urgent => "URGENT",
            Priority::Unknown => "UNKNOWN",
        }
    }
}

/// What is sent: the body, a push title, template and data.
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

/// FCM's Android options of a push.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AndroidOverrides {
    pub priority: Option<AndroidPriority>,
    pub ttl_seconds: Option<i64>,
    pub collapse_key: Option<String>,
    pub channel_id: Option<String>,
    pub sound: Option<String>,
    pub click_action: Option<String>,
}

/// FCM's Android delivery priority.
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

/// FCM's APNs options of a push.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ApnsOverrides {
    pub headers: HashMap<String, String>,
    pub sound: Option<String>,
    pub badge: Option<i32>,
    pub category: Option<String>,
    pub thread_id: Option<String>,
    pub content_available: bool,
}

impl Request {
    /// The ids a status of this request carries.
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

/// A number in E.164 form exactly (`+`, country code, subscriber number,
/// no spaces), and valid for its country by libphonenumber's metadata.
pub(crate) fn is_e164(number: &str) -> bool {
    let Ok(parsed) = phonenumber::parse(None, number) else { return false };
    phonenumber::is_valid(&parsed) && parsed.format().mode(phonenumber::Mode::E164).to_string() == number
}
