//! What a request must be before it is written, and writing it.

use std::collections::HashMap;
use std::time::Duration;

use apache_avro::Schema;
use chrono::{DateTime, Utc};
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::json::{AndroidPriorityName, ChannelName, PriorityName, SendRequest};
use crate::api::idempotency::Keys;
use crate::api::{ApiError, FieldError, MAX_ID_BYTES, STORE_TIMEOUT};
use crate::model::{AndroidOverrides, AndroidPriority, ApnsOverrides, Channel, Content, InvalidReason, Prefs, Priority, Request};
use crate::templates::{self, TemplateSet};

/// FCM's limit on a message's payload, in bytes.
const MAX_PUSH_PAYLOAD: usize = 4096;

/// The longest SMS any configuration sends (`--sms-max-chars` at most).
const MAX_SMS_CHARS: usize = 1600;

/// FCM's longest Android TTL.
const MAX_TTL_SECONDS: i64 = 28 * 24 * 3600;

/// What sending needs, besides the API's own.
pub(crate) struct Sender {
    pub producer: FutureProducer,
    pub requests: String,
    pub schema: Schema,
    /// The request schema's id in the registry; 0 without one.
    pub schema_id: u32,
    pub templates: Option<TemplateSet>,
    pub max_schedule_ahead: Duration,
    /// The pipeline's `--sms-max-chars` when it refuses longer bodies
    /// (`--sms-over-length reject`); `None` when it cuts them.
    pub sms_max_chars: Option<usize>,
    pub max_record_bytes: usize,
    pub keys: Keys,
}

/// A request checked, and its record.
pub(super) struct Checked {
    pub request: Request,
    pub record: Vec<u8>,
}

impl Sender {
    /// `given` as the request the pipeline will read, or every field that
    /// keeps it from being sent.
    pub(super) fn check(&self, given: SendRequest, derived_id: String, now: DateTime<Utc>) -> Result<Checked, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut refuse = |field: &str, message: String| errors.push(FieldError::new(field, message));
        let event_id = given.event_id.unwrap_or(derived_id);
        for (field, id) in [("event_id", &event_id), ("user_id", &given.user_id)] {
            if id.trim().is_empty() || id.len() > MAX_ID_BYTES || id.chars().any(char::is_control) {
                refuse(field, format!("must be 1 to {MAX_ID_BYTES} bytes of UTF-8 with no control characters"));
            }
        }
        let channel = match given.channel {
            ChannelName::Sms => Channel::Sms,
            ChannelName::Push => Channel::Push,
        };
        let content = given.content;
        let templated = content.template_id.is_some();
        match channel {
            Channel::Sms if !crate::model::is_e164(&given.recipient) => {
                refuse("recipient", "must be a valid phone number in E.164 form, such as +14155550100".into())
            }
            Channel::Push if given.recipient.trim().is_empty() => refuse("recipient", "a push registration token is required".into()),
            _ => {}
        }
        match channel {
            Channel::Sms if !templated && content.body.trim().is_empty() => refuse("content.body", "an SMS needs a body or a template_id".into()),
            Channel::Sms if !templated && content.body.chars().count() > self.sms_max_chars.unwrap_or(MAX_SMS_CHARS) => refuse(
                "content.body",
                format!("is {} characters; an SMS body takes at most {}", content.body.chars().count(), self.sms_max_chars.unwrap_or(MAX_SMS_CHARS)),
            ),
            Channel::Push if !templated && content.body.trim().is_empty() && content.title.as_deref().unwrap_or("").trim().is_empty() => {
                refuse("content", "a push needs a title, a body or a template_id".into())
            }
            _ => {}
        }
        if channel == Channel::Push {
            let strings = |m: &HashMap<String, String>| m.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
            let payload = content.title.as_deref().map_or(0, str::len) + content.body.len() + strings(&content.data);
            if payload > MAX_PUSH_PAYLOAD {
                refuse("content", format!("the push payload is at least {payload} bytes; FCM takes at most {MAX_PUSH_PAYLOAD}"));
            }
        }
        if let Some(ttl) = content.android.as_ref().and_then(|a| a.ttl_seconds).filter(|t| !(0..=MAX_TTL_SECONDS).contains(t)) {
            refuse("content.android.ttl_seconds", format!("{ttl} is not between 0 and {MAX_TTL_SECONDS} (28 days)"));
        }
        if content.apns.as_ref().and_then(|a| a.badge).is_some_and(|b| b < 0) {
            refuse("content.apns.badge", "must not be negative".into());
        }
        if let Some(zone) = &given.time_zone {
            if zone.parse::<chrono_tz::Tz>().is_err() && chrono_tz::Tz::from_str_insensitive(zone).is_err() {
                refuse("time_zone", format!("{:?} is not in the IANA time zone database", crate::mask::scrub(zone, 64)));
            }
        }
        if let Some(locale) = &given.locale {
            if !templates::is_locale(locale) {
                refuse("locale", format!("{:?} is not a BCP 47 language tag, such as pt-BR", crate::mask::scrub(locale, 64)));
            }
        }
        let scheduled_at = match given.scheduled_at.as_deref().map(DateTime::parse_from_rfc3339) {
            None => None,
            Some(Ok(at)) if at > now + self.max_schedule_ahead => {
                refuse("scheduled_at", format!("is more than {} ahead", humantime::format_duration(self.max_schedule_ahead)));
                None
            }
            Some(Ok(at)) => Some(at.with_timezone(&Utc)),
            Some(Err(_)) => {
                refuse("scheduled_at", "must be an RFC 3339 time with an offset, such as 2027-03-14T08:00:00-04:00".into());
                None
            }
        };
        let request = Request {
            event_id,
            user_id: given.user_id,
            channel,
            recipient: given.recipient,
            content: Content {
                title: content.title,
                body: content.body,
                template_id: content.template_id,
                template_vars: content.template_vars,
                data: content.data,
                android: content.android.map(|a| {
                    Box::new(AndroidOverrides {
                        priority: a.priority.map(|p| match p {
                            AndroidPriorityName::Normal => AndroidPriority::Normal,
                            AndroidPriorityName::High => AndroidPriority::High,
                        }),
                        ttl_seconds: a.ttl_seconds,
                        collapse_key: a.collapse_key,
                        channel_id: a.channel_id,
                        sound: a.sound,
                        click_action: a.click_action,
                    })
                }),
                apns: content.apns.map(|a| {
                    Box::new(ApnsOverrides {
                        headers: a.headers,
                        sound: a.sound,
                        badge: a.badge,
                        category: a.category,
                        thread_id: a.thread_id,
                        content_available: a.content_available,
                    })
                }),
            },
            scheduled_at,
            created_at: now,
            prefs: Prefs {
                time_zone: given.time_zone,
                locale: given.locale,
                priority: match given.priority {
                    PriorityName::Normal => Priority::Normal,
                    PriorityName::Urgent => Priority::Urgent,
                },
            },
        };
        if let (Some(template_id), Some(set), true) = (&request.content.template_id, &self.templates, errors.is_empty()) {
            if let Err(reason) = set.current().render(template_id, &request) {
                let field = match reason {
                    InvalidReason::InvalidLocale(_) => "locale",
                    InvalidReason::TemplateMissing { .. } => "content.template_id",
                    _ => "content.template_vars",
                };
                errors.push(FieldError::new(field, reason.to_string()));
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let record = crate::codec::encode_request(&self.schema, self.schema_id, &request).map_err(|e| vec![FieldError::new("", format!("does not encode: {e}"))])?;
        // The key and a little framing travel with the value.
        let size = record.len() + request.user_id.len() + 64;
        if size > self.max_record_bytes {
            return Err(vec![FieldError::new("", format!("the request is {size} bytes as a record; the requests topic takes at most {}", self.max_record_bytes))]);
        }
        Ok(Checked { request, record })
    }

    /// Writes the record, done once every in-sync replica has it.
    pub(super) async fn write(&self, checked: &Checked) -> Result<(), ApiError> {
        let record = FutureRecord::to(&self.requests).key(checked.request.user_id.as_bytes()).payload(&checked.record);
        // Bounded as a whole, so a stalled broker does not hold the caller
        // for message.timeout.ms.
        match tokio::time::timeout(STORE_TIMEOUT, self.producer.send(record, STORE_TIMEOUT)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((error, _))) => {
                tracing::warn!(message = "Writing a request failed.", %error);
                Err(ApiError::Unavailable("the requests topic cannot be written".into()))
            }
            Err(_) => Err(ApiError::Unavailable("the broker did not acknowledge the request in time; it may still be written".into())),
        }
    }
}
