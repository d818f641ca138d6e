//! The admin listener (`--admin-listen`) of each long-running program:
//! `/metrics` for Prometheus, `/healthz` (the process is alive and its
//! consume loop turning) and `/readyz` (what it needs is there and
//! answering now). Both health answers are JSON naming each check, with 503
//! when one fails. Each program says what it shows by implementing
//! [`Observed`]: the pipeline in `pipeline::observed`, the status store in
//! `api::store`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use axum::routing::get;
use serde::Serialize;
use tokio::net::TcpListener;

use crate::metrics::Health;
use crate::serve::{self, Limits};

/// A loop that has not turned for this long is stuck: it turns at least
/// once a second when idle.
const STUCK_AFTER: Duration = Duration::from_secs(10);
/// How long a readiness probe waits for the broker or ScyllaDB.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// One named check of a health answer.
pub(crate) struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

/// What a program shows on its admin listener.
pub(crate) trait Observed: Send + Sync + 'static {
    /// Its metrics: OpenMetrics, or the classic text format.
    fn metrics(&self, openmetrics: bool) -> String;
    /// Whether it is alive.
    fn liveness(&self) -> Vec<Check>;
    /// Whether it can do its work now.
    fn readiness(&self) -> impl Future<Output = Vec<Check>> + Send;
}

#[derive(Serialize)]
struct Answer {
    ok: bool,
    detail: String,
}

#[derive(Serialize)]
struct Report {
    ok: bool,
    checks: std::collections::BTreeMap<&'static str, Answer>,
}

impl Report {
    fn answer(checks: Vec<Check>) -> Response {
        let ok = checks.iter().all(|c| c.ok);
        let report = Report { ok, checks: checks.into_iter().map(|c| (c.name, Answer { ok: c.ok, detail: c.detail })).collect() };
        let status = if report.ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
        (status, axum::Json(report)).into_response()
    }
}

/// Serves the admin endpoints of `observed` on `listener` until
/// `shutdown` completes.
pub(crate) async fn serve<O: Observed>(listener: TcpListener, observed: Arc<O>, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    tracing::info!(message = "Admin endpoints listening.", listen = %listener.local_addr()?);
    let app = Router::new().route("/metrics", get(metrics::<O>)).route("/healthz", get(healthz::<O>)).route("/readyz", get(readyz::<O>)).with_state(observed);
    serve::accept(listener, app, Limits::new(64), shutdown).await
}

/// OpenMetrics when the scraper asks for it, as Prometheus does; the
/// classic text format otherwise.
async fn metrics<O: Observed>(State(observed): State<Arc<O>>, headers: HeaderMap) -> Response {
    let accepts = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    if accepts.contains("application/openmetrics-text") {
        ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], observed.metrics(true)).into_response()
    } else {
        ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], observed.metrics(false)).into_response()
    }
}

async fn healthz<O: Observed>(State(observed): State<Arc<O>>) -> Response {
    Report::answer(observed.liveness())
}

async fn readyz<O: Observed>(State(observed): State<Arc<O>>) -> Response {
    Report::answer(observed.readiness().await)
}

/// A consume loop's liveness, from when it last turned.
pub(crate) fn turning(name: &'static str, health: &Health) -> Check {
    let (ok, detail) = match health.since_turned() {
        Some(ago) if ago < STUCK_AFTER => (true, format!("turned {} ms ago", ago.as_millis())),
        Some(ago) => (false, format!("has not turned for {} s", ago.as_secs())),
        None => (false, "not started".to_owned()),
    };
    Check { name, ok, detail }
}

/// Whether the cluster answers a metadata request now: `brokers` asks it,
/// within the timeout it is given, and counts the brokers. One probe at a
/// time (`one`): a flood of `/readyz` requests cannot pile up blocking
/// metadata requests.
pub(crate) async fn broker(one: &tokio::sync::Mutex<()>, brokers: impl FnOnce(Duration) -> rdkafka::error::KafkaResult<usize> + Send + 'static) -> Check {
    let _one = one.lock().await;
    let asked = tokio::task::spawn_blocking(move || brokers(PROBE_TIMEOUT));
    let (ok, detail) = match asked.await {
        Ok(Ok(brokers)) => (true, format!("metadata from {brokers} brokers")),
        Ok(Err(error)) => (false, format!("no metadata within {PROBE_TIMEOUT:?}: {error}")),
        Err(_) => (false, "the probe failed".to_owned()),
    };
    Check { name: "broker", ok, detail }
}
