//! Cancelling: a record on the cancellations topic, which every pipeline
//! instance follows.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use axum::response::{IntoResponse, Response};
use rdkafka::producer::FutureRecord;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{authorize, id, timed, Api, ApiError, ErrorBody, MAX_REASON_CHARS, STORE_TIMEOUT};
use crate::api::store::Notification;
use crate::model::Cancel;
use crate::model::Status;

#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
pub(crate) struct CancelRequest {
    /// Why, for people reading the cancellations topic.
    pub reason: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct CancelAccepted {
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
        (status = 403, description = "The token lacks the scope", body = ErrorBody),
        (status = 409, description = "Final already: sent, failed, cancelled...", body = ErrorBody),
        (status = 429, description = "Too many cancels from this token; see Retry-After", body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
pub(super) async fn cancel(State(api): State<Arc<Api>>, headers: HeaderMap, path: Result<Path<String>, PathRejection>, body: Bytes) -> Result<Response, ApiError> {
    let token = authorize(&api, &headers, super::tokens::Scope::Cancel)?;
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
