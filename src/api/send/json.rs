//! The bodies `POST /v1/notifications` and its batch take and give.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::FieldError;

/// A request, as `notification.requested` has it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SendRequest {
    /// Yours to choose, at most 256 bytes. Without it: derived from the
    /// Idempotency-Key, so a retry has the same one, or else random.
    pub event_id: Option<String>,
    pub user_id: String,
    pub channel: ChannelName,
    /// An E.164 number for SMS, a registration token for push.
    pub recipient: String,
    #[serde(default)]
    pub content: SendContent,
    /// Not sent before this time: RFC 3339, with an offset.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub scheduled_at: Option<String>,
    /// The recipient's IANA time zone, for quiet hours.
    pub time_zone: Option<String>,
    /// A BCP 47 tag, for templates.
    pub locale: Option<String>,
    #[serde(default)]
    pub priority: PriorityName,
}

#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub(crate) enum ChannelName {
    Sms,
    Push,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub(crate) enum PriorityName {
    #[default]
    Normal,
    /// Sent in quiet hours too: one-time codes, security alerts.
    Urgent,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SendContent {
    /// Push only.
    pub title: Option<String>,
    #[serde(default)]
    pub body: String,
    /// A template in `--templates-dir`, instead of `body` and `title`.
    pub template_id: Option<String>,
    #[serde(default)]
    pub template_vars: HashMap<String, String>,
    /// Push only: the data payload.
    #[serde(default)]
    pub data: HashMap<String, String>,
    pub android: Option<AndroidJson>,
    pub apns: Option<ApnsJson>,
}

/// FCM's `message.android`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AndroidJson {
    pub priority: Option<AndroidPriorityName>,
    pub ttl_seconds: Option<i64>,
    pub collapse_key: Option<String>,
    pub channel_id: Option<String>,
    pub sound: Option<String>,
    pub click_action: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub(crate) enum AndroidPriorityName {
    Normal,
    High,
}

/// FCM's `message.apns`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApnsJson {
    #[serde(default)]
    pub headers: HashMap<String, String>,
    pub sound: Option<String>,
    pub badge: Option<i32>,
    pub category: Option<String>,
    pub thread_id: Option<String>,
    #[serde(default)]
    pub content_available: bool,
}

/// A request on its way: on the requests topic once the broker said so.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct Accepted {
    pub event_id: String,
    /// Where its statuses are read.
    pub status_url: String,
}

/// Many requests in one call.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Batch {
    /// At most 1,000.
    #[schema(value_type = Vec<SendRequest>)]
    pub notifications: Vec<serde_json::Value>,
}

/// Each request of a batch, in the order given.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct BatchResult {
    pub results: Vec<ItemResult>,
    pub accepted: usize,
    pub rejected: usize,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct ItemResult {
    pub index: usize,
    /// accepted, invalid, or unavailable (not written: send the batch again).
    pub result: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_url: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub errors: Vec<FieldError>,
}

