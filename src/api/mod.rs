//! `herald api`: sending, what happened to a notification, what a user
//! was sent, and cancelling, over JSON HTTP. A send is a record on the
//! requests topic (see `send`), so the pipeline does not change. Every answer comes from the status store
//! (see `store`) and the rate-limit table; a cancel is a record on the
//! cancellations topic (see `cancel`), which every pipeline instance
//! follows. The OpenAPI document at `/openapi.json` is generated from the
//! handlers below.

mod args;
mod cancel;
mod idempotency;
mod notifications;
pub(crate) mod run;
mod send;
pub(crate) mod tokens;
mod stats;
pub mod store;

pub use run::{ServiceError, Settings};
pub use args::ApiArgs;
pub(crate) use cancel::CancelAccepted;
pub(crate) use cancel::CancelRequest;
pub(crate) use notifications::NotificationView;
pub(crate) use notifications::Page;
pub(crate) use notifications::StatusView;
pub(crate) use notifications::Summary;
pub(crate) use notifications::TriedView;
pub(crate) use stats::ChannelStats;
pub(crate) use stats::Stats;
pub(crate) use stats::WindowView;
use cancel::cancel;
use notifications::{notification, notifications};
use stats::stats;
use send::{batch, send};
pub(crate) use send::{Accepted, AndroidJson, AndroidPriorityName, ApnsJson, Batch, BatchResult, ChannelName, ItemResult, PriorityName, SendContent, SendRequest, Sender};
pub(crate) use idempotency::Keys;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::PathRejection;
use axum::extract::Path;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rdkafka::producer::FutureProducer;
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use crate::model::Status;
use crate::cql::rate_limits::Table;
use crate::serve::{self, Limits};
use crate::api::store::Store;
const MAX_ID_BYTES: usize = 256;
const MAX_LIMIT: usize = 100;
const DEFAULT_LIMIT: usize = 20;
const STORE_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) struct Api {
    pub store: Arc<Store>,
    /// The rate-limit table, for the capacity left in each window.
    pub limits: Table,
    /// The pipeline's consumer group, whose rate limits are reported: the
    /// limits it wrote to ScyllaDB, not flags of the API's own.
    pub pipeline_group: String,
    pub producer: FutureProducer,
    pub cancellations: String,
    pub tokens: Arc<tokens::Tokens>,
    /// Cancels per token: each is kept on a topic every instance reads.
    pub cancels: Throttle,
    pub sender: Sender,
}

/// A rate per token, told apart by a digest of the token.
pub(crate) type Throttle = governor::DefaultKeyedRateLimiter<[u8; 32]>;

/// `quota` for each token.
pub(crate) fn throttle(quota: governor::Quota) -> Throttle {
    governor::RateLimiter::keyed(quota)
}

/// A reason is for people reading the topic, and is kept this short.
const MAX_REASON_CHARS: usize = 200;

pub(crate) async fn serve(listener: tokio::net::TcpListener, api: Arc<Api>, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    tracing::info!(message = "API listening.", listen = %listener.local_addr()?);
    // A batch of 1,000 requests is about 400 KB; every other body, a
    // single request's included, fits the usual 32 KB.
    let limits = Limits { large_body: Some(("/v1/notifications/batch", 2 * 1024 * 1024)), ..Limits::new(256) };
    serve::accept(listener, router(api), limits, shutdown).await
}

pub(crate) fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route("/v1/notifications", post(send))
        .route("/v1/notifications/batch", post(batch))
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
    info(title = "herald", description = "Sending notifications, their status, per-user statistics and cancellation."),
    paths(send::send, send::batch, notifications::notification, notifications::notifications, stats::stats, cancel::cancel),
    components(schemas(SendRequest, SendContent, ChannelName, PriorityName, AndroidJson, AndroidPriorityName, ApnsJson, Accepted, Batch, BatchResult, ItemResult, FieldError, NotificationView, StatusView, TriedView, Page, Summary, Stats, ChannelStats, WindowView, CancelRequest, CancelAccepted, ErrorBody)),
    modifiers(&Bearer)
)]
pub(crate) struct ApiDoc;

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
pub(crate) enum ApiError {
    Unauthorized,
    /// A known token without the scope the endpoint needs.
    Forbidden(tokens::Scope),
    BadRequest(String),
    /// A request that cannot be sent: why, field by field.
    Invalid(Vec<FieldError>),
    /// An Idempotency-Key already used with another body.
    KeyReused,
    NotFound(String),
    /// The notification is final already; its status.
    Final(Status),
    MethodNotAllowed,
    Unavailable(String),
    /// Over the token's rate; try again after this many seconds.
    TooManyRequests { retry_after: u64 },
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct ErrorBody {
    /// unauthorized, forbidden, bad-request, invalid, idempotency-key-reused, not-found, already-final, unavailable, too-many-requests.
    pub error: String,
    pub message: String,
    /// already-final: the notification's current status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// invalid: one error per field.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub fields: Vec<FieldError>,
}

/// What is wrong with one field of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub(crate) struct FieldError {
    /// The field's path, such as `content.body`; empty for the request as a whole.
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub(crate) fn new(field: &str, message: String) -> Self {
        FieldError { field: field.to_owned(), message }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (code, error, message, status) = match self {
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized", "a valid bearer token is required".to_owned(), None),
            ApiError::Forbidden(scope) => (StatusCode::FORBIDDEN, "forbidden", format!("this token lacks the {} scope this endpoint needs", scope.name()), None),
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, "bad-request", m, None),
            ApiError::Invalid(fields) => {
                let message = format!("the request cannot be sent: {}", fields.iter().map(|f| if f.field.is_empty() { f.message.clone() } else { format!("{} {}", f.field, f.message) }).collect::<Vec<_>>().join("; "));
                return (StatusCode::BAD_REQUEST, Json(ErrorBody { error: "invalid".into(), message, status: None, fields })).into_response();
            }
            ApiError::KeyReused => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                "this Idempotency-Key was used with another body in the last 24 hours; use a new key for a new request".to_owned(),
                None,
            ),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, "not-found", m, None),
            ApiError::Final(s) => {
                (StatusCode::CONFLICT, "already-final", format!("the notification is {} already; a cancel never un-sends", s.symbol()), Some(s.symbol().to_owned()))
            }
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed", "this endpoint takes another method".to_owned(), None),
            ApiError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", m, None),
            ApiError::TooManyRequests { retry_after } => {
                let message = format!("too many cancels from this token; try again in {retry_after} s");
                let mut response = (StatusCode::TOO_MANY_REQUESTS, Json(ErrorBody { error: "too-many-requests".into(), message, status: None, fields: vec![] })).into_response();
                response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from(retry_after));
                return response;
            }
        };
        let mut response = (code, Json(ErrorBody { error: error.into(), message, status, fields: vec![] })).into_response();
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

/// The caller's token, as the digest that stands for it (in rate limits
/// and idempotency keys), once it is known and has `scope`.
fn authorize(api: &Api, headers: &HeaderMap, scope: tokens::Scope) -> Result<[u8; 32], ApiError> {
    // The scheme is matched whatever its case (RFC 9110, 11.1).
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map_or("", |(_, token)| token.trim_start());
    if given.is_empty() {
        return Err(ApiError::Unauthorized);
    }
    match api.tokens.grant(given) {
        None => Err(ApiError::Unauthorized),
        Some((_, grant)) if !grant.allows(scope) => Err(ApiError::Forbidden(scope)),
        Some((digest, _)) => Ok(digest),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_document_names_every_endpoint_and_the_bearer_scheme() {
        let doc: serde_json::Value = serde_json::from_str(&ApiDoc::openapi().to_json().unwrap()).unwrap();
        for path in ["/v1/notifications", "/v1/notifications/batch", "/v1/notifications/{event_id}", "/v1/notifications/{event_id}/cancel", "/v1/users/{user_id}/notifications", "/v1/users/{user_id}/stats"] {
            assert!(doc["paths"][path].is_object(), "{path} missing");
        }
        assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
        assert!(doc["components"]["schemas"]["NotificationView"]["properties"]["history"].is_object());
    }
}
