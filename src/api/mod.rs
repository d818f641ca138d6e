//! `herald api`: what happened to a notification, what a user was sent,
//! and cancelling, over JSON HTTP. Every answer comes from the status store
//! (see `store`) and the rate-limit table; a cancel is a record on the
//! cancellations topic (see `cancel`), which every pipeline instance
//! follows. The OpenAPI document at `/openapi.json` is generated from the
//! handlers below.

mod args;
pub mod run;
pub mod store;

pub use args::ApiArgs;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use chrono::{DateTime, NaiveDate, Utc};
use rdkafka::producer::{FutureProducer, FutureRecord};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use crate::model::Cancel;
use crate::model::{Channel, Status, StatusEvent};
use crate::cql::rate_limits::Table;
use crate::serve::{self, Limits};
use crate::api::store::{Notification, Store, RETENTION_DAYS};
const MAX_ID_BYTES: usize = 256;
const MAX_LIMIT: usize = 100;
const DEFAULT_LIMIT: usize = 20;
const STORE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Api {
    pub store: Arc<Store>,
    /// The rate-limit table, for the capacity left in each window.
    pub limits: Table,
    /// The pipeline's consumer group, whose rate limits are reported: the
    /// limits it wrote to ScyllaDB, not flags of the API's own.
    pub pipeline_group: String,
    pub producer: FutureProducer,
    pub cancellations: String,
    pub token: SecretString,
    /// Cancels per token: each is kept on a topic every instance reads.
    pub cancels: Throttle,
}

/// A rate per token, told apart by a digest of the token.
pub type Throttle = governor::DefaultKeyedRateLimiter<[u8; 32]>;

/// `quota` for each token.
pub fn throttle(quota: governor::Quota) -> Throttle {
    governor::RateLimiter::keyed(quota)
}

/// A reason is for people reading the topic, and is kept this short.
const MAX_REASON_CHARS: usize = 200;

pub async fn serve(listener: tokio::net::TcpListener, api: Arc<Api>, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    tracing::info!(message = "API listening.", listen = %listener.local_addr()?);
    serve::accept(listener, router(api), Limits::new(256), shutdown).await
}

pub fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route("/v1/notifications/{event_id}", get(notification))
        .route("/v1/notifications/{event_id}/cancel", post(cancel))
        .route("/v1/users/{user_id}/notifications", get(notifications))
        .route("/v1/users/{user_id}/stats", get(stats))
        .route("/openapi.json", get(openapi))
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(api)
}

#[derive(OpenApi)]
#[openapi(
    info(title = "herald", description = "Notification status, per-user statistics and cancellation, from herald's status store."),
    paths(notification, notifications, stats, cancel),
    components(schemas(NotificationView, StatusView, TriedView, Page, Summary, Stats, ChannelStats, WindowView, CancelRequest, CancelAccepted, ErrorBody)),
    modifiers(&Bearer)
)]
pub struct ApiDoc;

struct Bearer;

impl utoipa::Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
        openapi.security = Some(vec![SecurityRequirement::new("bearer", Vec::<String>::new())]);
    }
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], ApiDoc::openapi().to_json().expect("the document serializes")).into_response()
}

/// Every error, as `{"error": code, "message": text}`.
#[derive(Debug)]
pub enum ApiError {
    Unauthorized,
    BadRequest(String),
    NotFound(String),
    /// The notification is final already; its status.
    Final(Status),
    MethodNotAllowed,
    Unavailable(String),
    /// Over the token's rate; try again after this many seconds.
    TooManyRequests { retry_after: u64 },
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// unauthorized, bad-request, not-found, already-final, unavailable, too-many-requests.
    pub error: String,
    pub message: String,
    /// already-final: the notification's current status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (code, error, message, status) = match self {
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized", "a valid bearer token is required".to_owned(), None),
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, "bad-request", m, None),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, "not-found", m, None),
            ApiError::Final(s) => {
                (StatusCode::CONFLICT, "already-final", format!("the notification is {} already; a cancel never un-sends", s.symbol()), Some(s.symbol().to_owned()))
            }
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed", "this endpoint takes another method".to_owned(), None),
            ApiError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", m, None),
            ApiError::TooManyRequests { retry_after } => {
                let message = format!("too many cancels from this token; try again in {retry_after} s");
                let mut response = (StatusCode::TOO_MANY_REQUESTS, Json(ErrorBody { error: "too-many-requests".into(), message, status: None })).into_response();
                response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from(retry_after));
                return response;
            }
        };
        let mut response = (code, Json(ErrorBody { error: error.into(), message, status })).into_response();
        if code == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<crate::api::store::StoreError> for ApiError {
    fn from(error: crate::api::store::StoreError) -> Self {
        tracing::warn!(message = "The status store failed a read.", %error);
        ApiError::Unavailable("the status store is unavailable".into())
    }
}

/// The caller's token, as a digest that stands for it (in rate limits),
/// once it is known to be valid.
fn authorize(api: &Api, headers: &HeaderMap) -> Result<[u8; 32], ApiError> {
    // The scheme is matched whatever its case (RFC 9110, 11.1).
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map_or("", |(_, token)| token.trim_start());
    // Compared in constant time, so the token cannot be guessed a byte at
    // a time from response times.
    let expected = api.token.expose_secret().as_bytes();
    let same = given.len() == expected.len() && given.bytes().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
    if same && !expected.is_empty() {
        use sha2::Digest;
        Ok(sha2::Sha256::digest(expected).into())
    } else {
        Err(ApiError::Unauthorized)
    }
}

/// An event or user id from a path: what producers may use as one.
fn id(what: &str, path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let bad = || ApiError::BadRequest(format!("{what} must be 1 to {MAX_ID_BYTES} bytes of UTF-8 with no control characters"));
    let Path(id) = path.map_err(|_| bad())?;
    if id.is_empty() || id.len() > MAX_ID_BYTES || id.chars().any(char::is_control) {
        return Err(bad());
    }
    Ok(id)
}

async fn timed<T>(read: impl std::future::Future<Output = Result<T, crate::api::store::StoreError>>) -> Result<T, ApiError> {
    match tokio::time::timeout(STORE_TIMEOUT, read).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(ApiError::Unavailable("the status store did not answer in time".into())),
    }
}

/// One status of a notification.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StatusView {
    pub status: String,
    pub attempt: u32,
    pub occurred_at: DateTime<Utc>,
    pub provider: Option<String>,
    pub provider_message_id: Option<String>,
    pub error_code: Option<String>,
    pub error_class: Option<String>,
    pub error_message: Option<String>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Providers failed over from before `provider`.
    pub providers_tried: Vec<TriedView>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TriedView {
    pub provider: String,
    pub error_code: String,
}

impl From<&StatusEvent> for StatusView {
    fn from(e: &StatusEvent) -> Self {
        StatusView {
            status: e.status.symbol().into(),
            attempt: e.attempt,
            occurred_at: e.occurred_at,
            provider: e.provider.map(|p| p.name().into()),
            provider_message_id: e.provider_message_id.clone(),
            error_code: e.error_code.as_ref().map(|c| c.as_str().into()),
            error_class: e.error_class.map(|c| c.symbol().into()),
            error_message: e.error_message.clone(),
            next_attempt_at: e.next_attempt_at,
            providers_tried: e.tried.iter().map(|t| TriedView { provider: t.provider.name().into(), error_code: t.error_code.as_str().into() }).collect(),
        }
    }
}

/// A notification: its current status, and every status it had.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct NotificationView {
    pub event_id: String,
    pub user_id: String,
    /// SMS or PUSH; null when the request named a channel herald does not know.
    pub channel: Option<String>,
    /// The current status, worked out from the history.
    pub status: String,
    /// Delivery attempts made.
    pub attempts: u32,
    /// Masked.
    pub recipient: Option<String>,
    pub created_at: Option<DateTime<Utc>>,
    pub scheduled_at: Option<DateTime<Utc>>,
    pub sms_segments: Option<u32>,
    pub sms_encoding: Option<String>,
    /// The locale of the template the text was built from, if any.
    pub locale: Option<String>,
    /// Oldest first.
    pub history: Vec<StatusView>,
}

impl From<&Notification> for NotificationView {
    fn from(n: &Notification) -> Self {
        let current = n.current();
        let latest = |f: fn(&StatusEvent) -> Option<String>| n.history.iter().rev().find_map(f);
        NotificationView {
            event_id: current.event_id.clone(),
            user_id: current.user_id.clone(),
            channel: current.channel.map(|c| c.symbol().into()),
            status: current.status.symbol().into(),
            attempts: n.history.iter().map(|e| e.attempt).max().unwrap_or(0),
            recipient: latest(|e| e.recipient.clone()),
            created_at: n.history.iter().find_map(|e| e.created_at),
            scheduled_at: n.history.iter().find_map(|e| e.scheduled_at),
            sms_segments: n.history.iter().rev().find_map(|e| e.sms.map(|c| c.segments)),
            sms_encoding: n.history.iter().rev().find_map(|e| e.sms.map(|c| c.encoding.symbol().to_owned())),
            locale: latest(|e| e.locale.clone()),
            history: n.history.iter().map(StatusView::from).collect(),
        }
    }
}

/// What happened to one notification.
#[utoipa::path(
    get,
    path = "/v1/notifications/{event_id}",
    params(("event_id" = String, Path, description = "The request's event_id")),
    responses(
        (status = 200, description = "Its current status and history", body = NotificationView),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No status of it is stored", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    )
)]
async fn notification(State(api): State<Arc<Api>>, headers: HeaderMap, path: Result<Path<String>, PathRejection>) -> Result<Json<NotificationView>, ApiError> {
    authorize(&api, &headers)?;
    let event_id = id("event_id", path)?;
    let history = timed(api.store.history(&event_id)).await?;
    if history.is_empty() {
        return Err(ApiError::NotFound(format!("no notification {event_id:?} is known")));
    }
    Ok(Json(NotificationView::from(&Notification::group(history).remove(0))))
}

#[derive(Debug, Deserialize)]
struct ListParams {
    since: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// One of a user's notifications, in a list.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Summary {
    pub event_id: String,
    pub channel: Option<String>,
    pub status: String,
    pub attempts: u32,
    pub created_at: DateTime<Utc>,
    /// When the current status was reached.
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Page {
    /// Newest first.
    pub notifications: Vec<Summary>,
    /// Pass as `cursor` for the next page; null on the last.
    pub next_cursor: Option<String>,
}

/// Where a page ends: the last notification it listed, and the day
/// partition it was found in.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Cursor {
    day: NaiveDate,
    created_at: i64,
    event_id: String,
}

impl Cursor {
    fn encode(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).expect("a cursor serializes"))
    }

    fn decode(s: &str) -> Option<Cursor> {
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s).ok()?).ok()
    }

    /// Whether a notification comes after this cursor, newest first.
    fn before(&self, created_at: i64, event_id: &str) -> bool {
        (created_at, event_id) < (self.created_at, self.event_id.as_str())
    }
}

/// A user's notifications, newest first.
#[utoipa::path(
    get,
    path = "/v1/users/{user_id}/notifications",
    params(
        ("user_id" = String, Path, description = "The requests' user_id"),
        ("since" = Option<String>, Query, description = "RFC 3339; only notifications created at or after it (default: 30 days ago)"),
        ("limit" = Option<u32>, Query, description = "1 to 100, default 20"),
        ("cursor" = Option<String>, Query, description = "next_cursor of the page before"),
    ),
    responses(
        (status = 200, body = Page),
        (status = 400, description = "Malformed id or parameter", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
async fn notifications(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<Page>, ApiError> {
    authorize(&api, &headers)?;
    let user_id = id("user_id", path)?;
    let Query(params) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let now = Utc::now();
    let oldest = now - chrono::Duration::days(RETENTION_DAYS);
    let since = match params.since.as_deref() {
        None => oldest,
        Some(s) => DateTime::parse_from_rfc3339(s).map_err(|e| ApiError::BadRequest(format!("since {s:?} is not an RFC 3339 time: {e}")))?.to_utc().max(oldest),
    };
    let limit = match params.limit.as_deref() {
        None => DEFAULT_LIMIT,
        Some(s) => s.parse().ok().filter(|n| (1..=MAX_LIMIT).contains(n)).ok_or_else(|| ApiError::BadRequest(format!("limit {s:?} is not a number from 1 to {MAX_LIMIT}")))?,
    };
    let cursor = match params.cursor.as_deref() {
        None => None,
        Some(s) => Some(Cursor::decode(s).ok_or_else(|| ApiError::BadRequest("cursor is not one this API gave".into()))?),
    };
    // A day ahead too: a producer's clock may run ahead of herald's.
    let (newest, oldest_day) = (now.date_naive() + chrono::Days::new(1), since.date_naive());
    if cursor.as_ref().is_some_and(|c| c.day > newest || c.day < oldest_day) {
        return Err(ApiError::BadRequest("cursor is not one this API gave".into()));
    }
    let mut listed: Vec<(NaiveDate, Notification)> = Vec::new();
    let mut day = cursor.as_ref().map_or(newest, |c| c.day);
    // Day by day, newest first, until the page is full: one read each, at
    // most a day more than the store keeps.
    while day >= oldest_day && listed.len() <= limit {
        let mut found = Notification::group(timed(api.store.day(&user_id, day)).await?);
        found.retain(|n| {
            let created = n.created_at();
            // A request whose created_at is implausible is in the day of its
            // first status, and listed with that day's whatever its time.
            (created >= since || created.date_naive() != day)
                && cursor.as_ref().is_none_or(|c| c.day != day || c.before(created.timestamp_millis(), n.event_id()))
        });
        found.sort_by(|a, b| (b.created_at(), b.event_id()).cmp(&(a.created_at(), a.event_id())));
        listed.extend(found.into_iter().map(|n| (day, n)));
        day = day.pred_opt().unwrap_or(NaiveDate::MIN);
    }
    let more = listed.len() > limit;
    listed.truncate(limit);
    let next_cursor = more
        .then(|| listed.last().map(|(day, n)| Cursor { day: *day, created_at: n.created_at().timestamp_millis(), event_id: n.event_id().to_owned() }.encode()))
        .flatten();
    let listed: Vec<Notification> = listed.into_iter().map(|(_, n)| n).collect();
    let notifications = listed
        .iter()
        .map(|n| {
            let current = n.current();
            Summary {
                event_id: current.event_id.clone(),
                channel: current.channel.map(|c| c.symbol().into()),
                status: current.status.symbol().into(),
                attempts: n.history.iter().map(|e| e.attempt).max().unwrap_or(0),
                created_at: n.created_at(),
                updated_at: current.occurred_at,
            }
        })
        .collect();
    Ok(Json(Page { notifications, next_cursor }))
}

/// One rate-limit window of a channel, as the rate-limit table has it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WindowView {
    pub max: u32,
    pub length_seconds: u64,
    /// Counted in the window now.
    pub used: u32,
    pub remaining: u32,
    /// When the next slot frees up; null when one is free now.
    pub next_slot_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ChannelStats {
    pub channel: String,
    pub sent_last_hour: u32,
    /// Since midnight UTC.
    pub sent_today: u32,
    /// FAILED, DEAD_LETTERED or UNDELIVERED since midnight UTC.
    pub failed_today: u32,
    /// Scheduled, deferred, or waiting to retry.
    pub pending: u32,
    /// The limit the pipeline enforces, as it wrote it (`10/1h`, `off`);
    /// null when no pipeline of this group has written one.
    pub rate_limit: Option<String>,
    /// Empty when the channel has no limit, or it is not known.
    pub windows: Vec<WindowView>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Stats {
    pub user_id: String,
    pub at: DateTime<Utc>,
    pub channels: Vec<ChannelStats>,
}

/// How many notifications a user was sent, and how many more they may get.
#[utoipa::path(
    get,
    path = "/v1/users/{user_id}/stats",
    params(("user_id" = String, Path, description = "The requests' user_id")),
    responses((status = 200, body = Stats), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 503, body = ErrorBody))
)]
async fn stats(State(api): State<Arc<Api>>, headers: HeaderMap, path: Result<Path<String>, PathRejection>) -> Result<Json<Stats>, ApiError> {
    authorize(&api, &headers)?;
    let user_id = id("user_id", path)?;
    let now = Utc::now();
    let today = now.date_naive();
    // Every day a notification can still be pending from, and tomorrow (a
    // producer's clock ahead of herald's): one read each, side by side.
    let tomorrow = today + chrono::Days::new(1);
    let days = (0..=RETENTION_DAYS + 1).filter_map(|d| tomorrow.checked_sub_days(chrono::Days::new(d as u64)));
    let reads = futures::future::join_all(days.map(|day| timed(api.store.day(&user_id, day)))).await;
    let mut events = Vec::new();
    for read in reads {
        events.extend(read?);
    }
    let published = match tokio::time::timeout(STORE_TIMEOUT, api.limits.published(&api.pipeline_group)).await {
        Ok(Ok(limits)) => limits,
        Ok(Err(error)) => {
            tracing::warn!(message = "Reading the pipeline's rate limits failed.", %error);
            return Err(ApiError::Unavailable("the rate-limit table is unavailable".into()));
        }
        Err(_) => return Err(ApiError::Unavailable("the rate-limit table did not answer in time".into())),
    };
    let counted = match tokio::time::timeout(STORE_TIMEOUT, api.limits.load(&user_id)).await {
        Ok(Ok(rows)) => rows,
        Ok(Err(error)) => {
            tracing::warn!(message = "Reading the rate-limit table failed.", %error);
            return Err(ApiError::Unavailable("the rate-limit table is unavailable".into()));
        }
        Err(_) => return Err(ApiError::Unavailable("the rate-limit table did not answer in time".into())),
    };
    let notifications = Notification::group(events);
    let hour_ago = now - chrono::Duration::hours(1);
    let channels = Channel::ALL
        .iter()
        .map(|&channel| {
            let mine = notifications.iter().filter(|n| n.current().channel == Some(channel));
            let (mut sent_last_hour, mut sent_today, mut failed_today, mut pending) = (0, 0, 0, 0);
            for n in mine {
                if let Some(sent) = n.history.iter().find(|e| e.status == Status::Sent) {
                    sent_last_hour += u32::from(sent.occurred_at >= hour_ago);
                    sent_today += u32::from(sent.occurred_at.date_naive() == today);
                }
                let current = n.current();
                if matches!(current.status, Status::Failed | Status::DeadLettered | Status::Undelivered) && current.occurred_at.date_naive() == today {
                    failed_today += 1;
                }
                pending += u32::from(!current.status.is_terminal());
            }
            let mut ats: Vec<DateTime<Utc>> = counted.iter().filter(|(c, _)| *c == channel).map(|(_, counted)| counted.at).collect();
            ats.sort_unstable();
            let limit = published.iter().find(|(c, _)| *c == channel).map(|(_, limit)| limit);
            let windows = limit.map_or_else(Vec::new, |l| l.windows.iter().map(|w| window(w.max, w.length, &ats, now)).collect());
            let rate_limit = limit.map(ToString::to_string);
            ChannelStats { channel: channel.symbol().into(), sent_last_hour, sent_today, failed_today, pending, rate_limit, windows }
        })
        .collect();
    Ok(Json(Stats { user_id, at: now, channels }))
}

/// A window of `max` per `length`, given the counted times (sorted).
fn window(max: u32, length: Duration, ats: &[DateTime<Utc>], now: DateTime<Utc>) -> WindowView {
    let length_c = chrono::Duration::from_std(length).unwrap_or(chrono::Duration::MAX);
    let inside: Vec<&DateTime<Utc>> = ats.iter().filter(|at| **at > now - length_c).collect();
    let used = inside.len() as u32;
    // Full: a slot frees when enough of the oldest counts leave the window.
    let next_slot_at = (used >= max && max > 0).then(|| *inside[(used - max) as usize] + length_c);
    WindowView { max, length_seconds: length.as_secs(), used, remaining: max.saturating_sub(used), next_slot_at }
}

#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct CancelRequest {
    /// Why, for people reading the cancellations topic.
    pub reason: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CancelAccepted {
    pub event_id: String,
    /// Its current status, when any is stored; null for a notification
    /// not seen yet (a cancel may come before its request).
    pub status: Option<String>,
    /// "requested": every instance honours it when the notification next
    /// comes up for an attempt; a send already under way still completes.
    pub cancel: String,
}

/// Cancel a notification that has not been sent.
#[utoipa::path(
    post,
    path = "/v1/notifications/{event_id}/cancel",
    params(("event_id" = String, Path, description = "The request's event_id")),
    request_body(content = Option<CancelRequest>, content_type = "application/json"),
    responses(
        (status = 202, description = "The cancel is recorded", body = CancelAccepted),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 409, description = "Final already: sent, failed, cancelled...", body = ErrorBody),
        (status = 429, description = "Too many cancels from this token; see Retry-After", body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
async fn cancel(State(api): State<Arc<Api>>, headers: HeaderMap, path: Result<Path<String>, PathRejection>, body: Bytes) -> Result<Response, ApiError> {
    let token = authorize(&api, &headers)?;
    if let Err(not_until) = api.cancels.check_key(&token) {
        let wait = not_until.wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default()));
        return Err(ApiError::TooManyRequests { retry_after: wait.as_secs() + 1 });
    }
    let event_id = id("event_id", path)?;
    let request: CancelRequest = match body.is_empty() {
        true => CancelRequest::default(),
        false => serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("the body is not a cancel request: {e}")))?,
    };
    let history = timed(api.store.history(&event_id)).await?;
    let current = (!history.is_empty()).then(|| Notification::group(history).remove(0).current().status);
    if let Some(status) = current.filter(|s| s.is_terminal()) {
        return Err(ApiError::Final(status));
    }
    let reason = request.reason.map(|r| crate::mask::scrub(&r, MAX_REASON_CHARS));
    let value = serde_json::to_vec(&Cancel { requested_by: "api".into(), reason }).expect("a cancel serializes");
    let record = FutureRecord::to(&api.cancellations).key(event_id.as_bytes()).payload(&value);
    // The whole write is bounded, not only the wait for queue room: a
    // stalled broker must not hold the caller for message.timeout.ms.
    match tokio::time::timeout(STORE_TIMEOUT, api.producer.send(record, STORE_TIMEOUT)).await {
        Ok(Ok(_)) => {}
        Ok(Err((error, _))) => {
            tracing::warn!(message = "Writing a cancel failed.", %error);
            return Err(ApiError::Unavailable("the cancellations topic cannot be written".into()));
        }
        Err(_) => return Err(ApiError::Unavailable("the broker did not acknowledge the cancel in time; it may still be written".into())),
    }
    tracing::info!(message = "Cancel requested.", event_id, status = current.map(Status::symbol));
    let accepted = CancelAccepted { event_id, status: current.map(|s| s.symbol().into()), cancel: "requested".into() };
    Ok((StatusCode::ACCEPTED, Json(accepted)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn a_full_window_frees_when_its_oldest_count_leaves_it() {
        let hour = Duration::from_secs(3600);
        let ats = [at(0), at(100), at(200)];
        let w = window(3, hour, &ats, at(300));
        assert_eq!((w.used, w.remaining, w.next_slot_at), (3, 0, Some(at(3600))));
        let w = window(2, hour, &ats, at(300));
        assert_eq!((w.used, w.remaining, w.next_slot_at), (3, 0, Some(at(3700))), "two must leave for one slot");
        let w = window(5, hour, &ats, at(3650));
        assert_eq!((w.used, w.remaining, w.next_slot_at), (2, 3, None), "the first has left");
    }

    #[test]
    fn cursors_round_trip_and_order_newest_first() {
        let day = NaiveDate::from_ymd_opt(2026, 12, 1).unwrap();
        let c = Cursor { day, created_at: 1_000, event_id: "e/ü 1".into() };
        assert_eq!(Cursor::decode(&c.encode()), Some(Cursor { day, created_at: 1_000, event_id: "e/ü 1".into() }));
        assert!(Cursor::decode("not a cursor").is_none());
        assert!(c.before(999, "z") && c.before(1_000, "e") && !c.before(1_000, "e/ü 1") && !c.before(1_001, "a"));
    }

    #[test]
    fn the_openapi_document_names_every_endpoint_and_the_bearer_scheme() {
        let doc: serde_json::Value = serde_json::from_str(&ApiDoc::openapi().to_json().unwrap()).unwrap();
        for path in ["/v1/notifications/{event_id}", "/v1/notifications/{event_id}/cancel", "/v1/users/{user_id}/notifications", "/v1/users/{user_id}/stats"] {
            assert!(doc["paths"][path].is_object(), "{path} missing");
        }
        assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
        assert!(doc["components"]["schemas"]["NotificationView"]["properties"]["history"].is_object());
    }
}
