//! Sending over HTTP, for services without a Kafka client: a request is
//! checked at once, for what can be checked before the pipeline sees it,
//! and written to the requests topic as any producer writes it (Avro,
//! keyed by user id, acknowledged by every in-sync replica), so the
//! pipeline neither knows nor cares where it came from. What only the
//! pipeline can judge (opt-outs, quiet hours, rate limits, a provider's
//! word) comes as statuses, like any other request's.

mod check;
mod json;

pub(crate) use check::Sender;
pub(crate) use json::{Accepted, AndroidJson, AndroidPriorityName, ApnsJson, Batch, BatchResult, ChannelName, ItemResult, PriorityName, SendContent, SendRequest};

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;

use super::idempotency::{self, Answer, Key, Stored};
use super::{authorize, Api, ApiError, ErrorBody, FieldError, STORE_TIMEOUT};
use check::Checked;

/// The most requests one batch takes.
pub(crate) const MAX_BATCH: usize = 1000;

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
        (status = 403, description = "The token lacks the scope", body = ErrorBody),
        (status = 422, description = "The Idempotency-Key was used with another body", body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
pub(super) async fn send(State(api): State<Arc<Api>>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    let token = authorize(&api, &headers, super::tokens::Scope::Send)?;
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
        (status = 403, description = "The token lacks the scope", body = ErrorBody),
        (status = 422, description = "The Idempotency-Key was used with another body", body = ErrorBody),
        (status = 503, description = "Some were not written; send the batch again (with its key, nothing is written twice)", body = BatchResult),
    )
)]
pub(super) async fn batch(State(api): State<Arc<Api>>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    let token = authorize(&api, &headers, super::tokens::Scope::Send)?;
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
    let keyed = Key { token, key };
    let _in_use = api.sender.keys.hold(&keyed).await;
    let digest = idempotency::digest(body);
    if let Some(stored) = timed(api.sender.keys.get(&keyed)).await? {
        if stored.body != digest {
            return Err(ApiError::KeyReused);
        }
        let status = StatusCode::from_u16(stored.answer.status).unwrap_or(StatusCode::OK);
        let mut response = (status, [(axum::http::header::CONTENT_TYPE, "application/json")], stored.answer.body).into_response();
        response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
        return Ok(response);
    }
    let named = keyed.clone();
    let (status, answer) = work(Box::new(move |index| named.event_id(index))).await?;
    if status.is_success() {
        let stored = Stored { body: digest, answer: Answer { status: status.as_u16(), body: answer.to_string() } };
        // Written already: a key that could not be kept costs a retry a
        // second record with the same event ids, which the pipeline sends
        // once, not the caller an error for what was done.
        if let Err(error) = timed(api.sender.keys.put(&keyed, &stored)).await {
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

