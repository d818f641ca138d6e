//! Sending over HTTP, for services without a Kafka client: a request is
//! checked at once, for what can be checked before the pipeline sees it,
//! and written to the requests topic as any producer writes it (Avro,
//! keyed by user id, acknowledged by every in-sync replica), so the
//! pipeline neither knows nor cares where it came from. What only the
//! pipeline can judge (opt-outs, quiet hours, rate limits, a provider's
//! word) comes as statuses, like any other request's.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use apache_avro::Schema;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::idempotency::{self, Answer, Keys, Scope, Stored};
use super::{authorize, Api, ApiError, ErrorBody, FieldError, MAX_ID_BYTES, STORE_TIMEOUT};
use crate::model::{AndroidOverrides, AndroidPriority, ApnsOverrides, Channel, Content, InvalidReason, Prefs, Priority, Request};
use crate::templates::{self, TemplateSet};

/// The most requests one batch takes.
pub(crate) const MAX_BATCH: usize = 1000;

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

/// A request checked, and its record.
struct Checked {
    request: Request,
    record: Vec<u8>,
}

/// Send a notification.
#[utoipa::path(
    post,
    path = "/v1/notifications",
    request_body(content = SendRequest, content_type = "application/json"),
    params(("Idempotency-Key" = Option<String>, Header, description = "The same key and body within 24 h get the first answer and write nothing; another body is 422")),
    responses(
        (status = 202, description = "On the requests topic", body = Accepted),
        (status = 400, description = "One error per field", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 422, description = "The Idempotency-Key was used with another body", body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
pub(super) async fn send(State(api): State<Arc<Api>>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    let token = authorize(&api, &headers)?;
    let body = json(&body)?;
    let (api, body) = (&*api, &body);
    once(api, token, &headers, body, move |event_id| async move {
        let given: SendRequest = serde_json::from_value(body.clone()).map_err(|e| ApiError::BadRequest(format!("the body is not a notification request: {e}")))?;
        let checked = api.sender.check(given, event_id(0), Utc::now()).map_err(ApiError::Invalid)?;
        api.sender.write(&checked).await?;
        Ok((StatusCode::ACCEPTED, serde_json::to_value(accepted(&checked.request.event_id)).expect("serializes")))
    })
    .await
}

/// Send up to 1,000 notifications.
#[utoipa::path(
    post,
    path = "/v1/notifications/batch",
    request_body(content = Batch, content_type = "application/json"),
    params(("Idempotency-Key" = Option<String>, Header, description = "For the whole batch: the same key and body within 24 h get the first answer and write nothing")),
    responses(
        (status = 200, description = "Every request judged: each accepted one is on the requests topic", body = BatchResult),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 422, description = "The Idempotency-Key was used with another body", body = ErrorBody),
        (status = 503, description = "Some were not written; send the batch again (with its key, nothing is written twice)", body = BatchResult),
    )
)]
pub(super) async fn batch(State(api): State<Arc<Api>>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    let token = authorize(&api, &headers)?;
    let body = json(&body)?;
    let (api, body) = (&*api, &body);
    once(api, token, &headers, body, move |event_id| async move {
        let batch: Batch = serde_json::from_value(body.clone()).map_err(|e| ApiError::BadRequest(format!("the body is not a batch: {e}")))?;
        if batch.notifications.len() > MAX_BATCH {
            return Err(ApiError::BadRequest(format!("a batch takes at most {MAX_BATCH} notifications; this one has {}", batch.notifications.len())));
        }
        let now = Utc::now();
        let checked: Vec<Result<Checked, Vec<FieldError>>> = batch
            .notifications
            .into_iter()
            .enumerate()
            .map(|(index, item)| {
                let given: SendRequest = serde_json::from_value(item).map_err(|e| vec![FieldError::new("", format!("not a notification request: {e}"))])?;
                api.sender.check(given, event_id(index), now)
            })
            .collect();
        let writes = checked.iter().map(|c| async move {
            match c {
                Ok(c) => Some(api.sender.write(c).await),
                Err(_) => None,
            }
        });
        let written = futures::future::join_all(writes).await;
        let mut results = Vec::with_capacity(checked.len());
        for (index, (checked, written)) in checked.into_iter().zip(written).enumerate() {
            results.push(match (checked, written) {
                (Ok(c), Some(Ok(()))) => {
                    let a = accepted(&c.request.event_id);
                    ItemResult { index, result: "accepted".into(), event_id: Some(a.event_id), status_url: Some(a.status_url), errors: vec![] }
                }
                (Ok(c), _) => ItemResult { index, result: "unavailable".into(), event_id: Some(c.request.event_id), status_url: None, errors: vec![] },
                (Err(errors), _) => ItemResult { index, result: "invalid".into(), event_id: None, status_url: None, errors },
            });
        }
        let accepted = results.iter().filter(|r| r.result == "accepted").count();
        let unavailable = results.iter().any(|r| r.result == "unavailable");
        let answer = BatchResult { rejected: results.len() - accepted, accepted, results };
        let status = if unavailable { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
        Ok((status, serde_json::to_value(answer).expect("serializes")))
    })
    .await
}

fn json(body: &[u8]) -> Result<serde_json::Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("the body is not JSON: {e}")))
}

fn accepted(event_id: &str) -> Accepted {
    Accepted { event_id: event_id.to_owned(), status_url: format!("/v1/notifications/{}", urlencoding(event_id)) }
}

/// An event id as one path segment.
fn urlencoding(id: &str) -> String {
    id.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Answers once per Idempotency-Key: `work` runs, given how to name the
/// event ids it writes, unless the key already has an answer. Only an
/// answer that wrote everything is kept; a refusal or an outage is not,
/// so the caller may fix the request or try again under the same key.
async fn once<F, Fut>(api: &Api, token: [u8; 32], headers: &HeaderMap, body: &serde_json::Value, work: F) -> Result<Response, ApiError>
where
    F: FnOnce(Box<dyn Fn(usize) -> String + Send + Sync>) -> Fut,
    Fut: std::future::Future<Output = Result<(StatusCode, serde_json::Value), ApiError>>,
{
    let Some(key) = key(headers)? else {
        let (status, answer) = work(Box::new(|_| random_event_id())).await?;
        return Ok((status, axum::Json(answer)).into_response());
    };
    let scope = Scope { token, key };
    let _in_use = api.sender.keys.hold(&scope).await;
    let digest = idempotency::digest(body);
    if let Some(stored) = timed(api.sender.keys.get(&scope)).await? {
        if stored.body != digest {
            return Err(ApiError::KeyReused);
        }
        let status = StatusCode::from_u16(stored.answer.status).unwrap_or(StatusCode::OK);
        let mut response = (status, [(axum::http::header::CONTENT_TYPE, "application/json")], stored.answer.body).into_response();
        response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
        return Ok(response);
    }
    let named = scope.clone();
    let (status, answer) = work(Box::new(move |index| named.event_id(index))).await?;
    if status.is_success() {
        let stored = Stored { body: digest, answer: Answer { status: status.as_u16(), body: answer.to_string() } };
        // Written already: a key that could not be kept costs a retry a
        // second record with the same event ids, which the pipeline sends
        // once, not the caller an error for what was done.
        if let Err(error) = timed(api.sender.keys.put(&scope, &stored)).await {
            tracing::warn!(message = "An idempotency key could not be kept.", error = ?error);
        }
    }
    Ok((status, axum::Json(answer)).into_response())
}

async fn timed<T>(work: impl std::future::Future<Output = Result<T, super::store::StoreError>>) -> Result<T, ApiError> {
    match tokio::time::timeout(STORE_TIMEOUT, work).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(ApiError::Unavailable("the idempotency keys did not answer in time".into())),
    }
}

/// The Idempotency-Key header, if any: 1 to 255 printable ASCII characters.
fn key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(None) };
    let bad = || ApiError::BadRequest(format!("Idempotency-Key must be 1 to {} printable ASCII characters", idempotency::MAX_KEY_BYTES));
    let key = value.to_str().map_err(|_| bad())?;
    if key.is_empty() || key.len() > idempotency::MAX_KEY_BYTES || !key.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return Err(bad());
    }
    Ok(Some(key.to_owned()))
}

fn random_event_id() -> String {
    idempotency::uuid_shaped(&fastrand::u128(..).to_be_bytes())
}

impl Sender {
    /// `given` as the request the pipeline will read, or every field that
    /// keeps it from being sent.
    fn check(&self, given: SendRequest, derived_id: String, now: DateTime<Utc>) -> Result<Checked, Vec<FieldError>> {
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
    async fn write(&self, checked: &Checked) -> Result<(), ApiError> {
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
