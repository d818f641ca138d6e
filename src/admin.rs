//! The admin listener (`--admin-listen`): `/metrics` for Prometheus,
//! `/healthz` (the process is alive and its consume loop turning) and
//! `/readyz` (partitions assigned, the suppression list loaded, the broker
//! and ScyllaDB answering now). Both health answers are JSON naming each
//! check, with 503 when one fails.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use rdkafka::producer::Producer;
use serde::Serialize;
use tokio::net::TcpListener;

use crate::pipeline::Pipeline;
use crate::serve::{self, Limits};

/// A loop that has not turned for this long is stuck: it turns at least
/// once a second when idle.
const STUCK_AFTER: Duration = Duration::from_secs(10);
/// How long a readiness probe waits for the broker or ScyllaDB.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

struct Admin {
    pipeline: Arc<Pipeline>,
    /// One probe of the broker at a time: a flood of `/readyz` requests
    /// cannot pile up blocking metadata requests.
    probing: tokio::sync::Mutex<()>,
}

#[derive(Serialize)]
struct Check {
    ok: bool,
    detail: String,
}

#[derive(Serialize)]
struct Report {
    ok: bool,
    checks: std::collections::BTreeMap<&'static str, Check>,
}

impl Report {
    fn new(checks: Vec<(&'static str, bool, String)>) -> Report {
        let ok = checks.iter().all(|(_, ok, _)| *ok);
        Report { ok, checks: checks.into_iter().map(|(name, ok, detail)| (name, Check { ok, detail })).collect() }
    }

    fn answer(self) -> Response {
        let status = if self.ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
        (status, axum::Json(self)).into_response()
    }
}

/// Serves the admin endpoints on `listener` until `shutdown` completes.
pub async fn serve(listener: TcpListener, pipeline: Arc<Pipeline>, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    tracing::info!(message = "Admin endpoints listening.", listen = %listener.local_addr()?);
    let admin = Arc::new(Admin { pipeline, probing: tokio::sync::Mutex::new(()) });
    let app = Router::new().route("/metrics", get(metrics)).route("/healthz", get(healthz)).route("/readyz", get(readyz)).with_state(admin);
    serve::accept(listener, app, Limits::new(64), shutdown).await
}

/// OpenMetrics when the scraper asks for it, as Prometheus does; the
/// classic text format otherwise.
async fn metrics(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Response {
    let metrics = admin.pipeline.metrics();
    metrics.set_state(&admin.pipeline.state());
    let accepts = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    if accepts.contains("application/openmetrics-text") {
        ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], metrics.encode()).into_response()
    } else {
        ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], metrics.encode_classic()).into_response()
    }
}

async fn healthz(State(admin): State<Arc<Admin>>) -> Response {
    let check = match admin.pipeline.metrics().health.since_turned() {
        Some(ago) if ago < STUCK_AFTER => (true, format!("turned {} ms ago", ago.as_millis())),
        Some(ago) => (false, format!("has not turned for {} s", ago.as_secs())),
        None => (false, "not started".to_owned()),
    };
    Report::new(vec![("consume_loop", check.0, check.1)]).answer()
}

async fn readyz(State(admin): State<Arc<Admin>>) -> Response {
    let health = &admin.pipeline.metrics().health;
    let assigned = health.assigned();
    let mut checks = vec![
        ("partitions_assigned", assigned > 0, format!("{assigned} input partitions")),
        ("suppression_list", health.are_suppressions_loaded(), "read to its end at startup".to_owned()),
    ];
    let broker = {
        let _one = admin.probing.lock().await;
        let producer = admin.pipeline.publisher().producer().clone();
        let asked = tokio::task::spawn_blocking(move || producer.client().fetch_metadata(None, PROBE_TIMEOUT).map(|m| m.brokers().len()));
        match asked.await {
            Ok(Ok(brokers)) => (true, format!("metadata from {brokers} brokers")),
            Ok(Err(error)) => (false, format!("no metadata within {PROBE_TIMEOUT:?}: {error}")),
            Err(_) => (false, "the probe failed".to_owned()),
        }
    };
    checks.push(("broker", broker.0, broker.1));
    if let Some(result) = admin.pipeline.limiter().reachable(PROBE_TIMEOUT).await {
        checks.push(match result {
            Ok(()) => ("scylla", true, "answers".to_owned()),
            Err(error) => ("scylla", false, error),
        });
    }
    Report::new(checks).answer()
}
