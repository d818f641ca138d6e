//! A notification's history, and the notifications a user was sent, newest
//! first, a page at a time.

use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::Json;
use base64::Engine;
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{authorize, id, timed, Api, ApiError, ErrorBody, DEFAULT_LIMIT, MAX_LIMIT};
use crate::api::store::{Notification, RETENTION_DAYS};
use crate::model::StatusEvent;

/// One status of a notification.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct StatusView {
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
pub(crate) struct TriedView {
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
pub(crate) struct NotificationView {
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
pub(super) async fn notification(State(api): State<Arc<Api>>, headers: HeaderMap, path: Result<Path<String>, PathRejection>) -> Result<Json<NotificationView>, ApiError> {
    authorize(&api, &headers, super::tokens::Scope::Read)?;
    let event_id = id("event_id", path)?;
    let history = timed(api.store.history(&event_id)).await?;
    if history.is_empty() {
        return Err(ApiError::NotFound(format!("no notification {event_id:?} is known")));
    }
    Ok(Json(NotificationView::from(&Notification::group(history).remove(0))))
}

#[derive(Debug, Deserialize)]
pub(super) struct ListParams {
    since: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// One of a user's notifications, in a list.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct Summary {
    pub event_id: String,
    pub channel: Option<String>,
    pub status: String,
    pub attempts: u32,
    pub created_at: DateTime<Utc>,
    /// When the current status was reached.
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct Page {
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
        (status = 403, description = "The token lacks the scope", body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
pub(super) async fn notifications(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<Page>, ApiError> {
    authorize(&api, &headers, super::tokens::Scope::Read)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_order_newest_first() {
        let day = NaiveDate::from_ymd_opt(2026, 12, 1).unwrap();
        let c = Cursor { day, created_at: 1_000, event_id: "e/ü 1".into() };
        assert_eq!(Cursor::decode(&c.encode()), Some(Cursor { day, created_at: 1_000, event_id: "e/ü 1".into() }));
        assert!(Cursor::decode("not a cursor").is_none());
        assert!(c.before(999, "z") && c.before(1_000, "e") && !c.before(1_000, "e/ü 1") && !c.before(1_001, "a"));
    }
}
