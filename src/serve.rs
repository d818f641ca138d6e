//! herald's HTTP listeners (Twilio's webhooks, the admin endpoints), each
//! reachable by whoever can reach its port: everything one client can make
//! it hold is bounded.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// What one client can make a listener hold. Twilio's callbacks and
/// incoming messages are a few KB: the largest, an incoming message of 1,600
/// characters of a non-Latin script, is about 15 KB percent-encoded; the
/// admin endpoints take no body at all.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Connections open at once; past it, a new one takes the place of the
    /// oldest idle one (see `accept`), or waits.
    pub max_connections: usize,
    /// To send a request's headers, and to start the next one on a
    /// keep-alive connection.
    pub header_timeout: Duration,
    /// To send a request's body.
    pub body_timeout: Duration,
    pub max_body: usize,
    /// One path whose bodies may be larger, and how large (a batch).
    pub large_body: Option<(&'static str, usize)>,
    /// A connection's whole life, however busy.
    pub connection_lifetime: Duration,
}

impl Limits {
    pub(crate) fn new(max_connections: usize) -> Self {
        Limits {
            max_connections,
            header_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(5),
            max_body: 32 * 1024,
            large_body: None,
            connection_lifetime: Duration::from_secs(60),
        }
    }
}

/// What the caller hands herald instead of building it from
/// configuration: listeners (a test binds port 0, learns the port, and
/// hands the listener over), and the clock (a test moves it).
#[derive(Debug, Default)]
pub struct Provided {
    pub receipts: Option<std::net::TcpListener>,
    pub admin: Option<std::net::TcpListener>,
    /// `herald api`'s own listener (`--api-listen`).
    pub api: Option<std::net::TcpListener>,
    pub clock: crate::clock::Clock,
}

/// A listener could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("{flag} {addr}: cannot listen: {source}")]
pub struct ListenError {
    pub flag: &'static str,
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

/// The listener a caller handed over, or one bound to `addr`.
pub(crate) async fn bind(flag: &'static str, addr: SocketAddr, given: Option<std::net::TcpListener>) -> Result<TcpListener, ListenError> {
    let bound = match given {
        Some(listener) => listener.set_nonblocking(true).and_then(|()| TcpListener::from_std(listener)),
        None => TcpListener::bind(addr).await,
    };
    bound.map_err(|source| ListenError { flag, addr, source })
}

/// Accepts connections, at most `limits.max_connections` at once, each
/// served over HTTP/1 within the limits.
pub(crate) async fn accept(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let mut connections = JoinSet::new();
    let mut live: HashMap<tokio::task::Id, Connection> = HashMap::new();
    let mut warned: Option<tokio::time::Instant> = None;
    let epoch = tokio::time::Instant::now();
    tokio::pin!(shutdown);
    'serve: loop {
        while let Some(done) = connections.try_join_next_with_id() {
            live.remove(&done.map_or_else(|e| e.id(), |(id, ())| id));
        }
        let (stream, _peer): (_, SocketAddr) = tokio::select! {
            () = &mut shutdown => break 'serve,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of file descriptors, say: wait, and try again.
                Err(error) => {
                    tracing::warn!(message = "Accepting a connection failed.", %error);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let permit = match open.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                // Said at most once a minute: the cap is holding, not failing.
                if warned.is_none_or(|at| at.elapsed() > Duration::from_secs(60)) {
                    tracing::warn!(message = "Connection limit reached; the oldest idle connection makes room.", max = limits.max_connections);
                    warned = Some(tokio::time::Instant::now());
                }
                // A connection that is not in a request (slowly sending
                // headers, or idle between requests) gives its place to the
                // new one, oldest first: clients that hold connections open
                // cannot keep a real request out. With every connection in
                // a request, the new one waits.
                loop {
                    let idle = live.iter().filter(|(_, c)| c.idle_for(epoch) >= IDLE_GRACE).min_by_key(|(_, c)| c.since).map(|(id, _)| *id);
                    if let Some(evicted) = idle.and_then(|id| live.remove(&id)) {
                        evicted.abort.abort();
                    }
                    tokio::select! {
                        () = &mut shutdown => break 'serve,
                        permit = open.clone().acquire_owned() => break permit.expect("never closed"),
                        // Someone may have become idle long enough.
                        () = tokio::time::sleep(Duration::from_millis(50)) => {}
                    }
                }
            }
        };
        let activity = Arc::new(Activity::default());
        activity.idle(epoch);
        let seen = activity.clone();
        let app = app.clone();
        let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            let (seen, app) = (seen.clone(), app.clone());
            async move {
                // The body is read whole, within its size and time, before
                // the request counts as one: a client that sends a body
                // slowly is as evictable as one that sends headers slowly,
                // and no handler ever waits on a client.
                let request = match buffered(request, limits).await {
                    Ok(request) => request,
                    Err(refused) => return Ok(refused),
                };
                seen.requests.fetch_add(1, Ordering::AcqRel);
                let answer = tower::ServiceExt::oneshot(app, request).await;
                if seen.requests.fetch_sub(1, Ordering::AcqRel) == 1 {
                    seen.idle(epoch);
                }
                answer
            }
        });
        let abort = connections.spawn(async move {
            let _permit = permit;
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_buf_size(16 * 1024)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(limits.connection_lifetime, connection).await;
        });
        live.insert(abort.id(), Connection { abort, activity, since: tokio::time::Instant::now() });
    }
    // Requests under way get a moment to answer; clients retry the rest.
    let _ = tokio::time::timeout(Duration::from_secs(2), async { while connections.join_next().await.is_some() {} }).await;
    connections.shutdown().await;
    Ok(())
}

/// `request` with its body read into memory: at most `limits.max_body`
/// bytes (or the larger bound of its path) within `limits.body_timeout`;
/// otherwise the answer to give.
async fn buffered(request: hyper::Request<hyper::body::Incoming>, limits: Limits) -> Result<hyper::Request<Body>, Response> {
    let (parts, body) = request.into_parts();
    let limits = match limits.large_body {
        Some((path, max_body)) if parts.uri.path() == path => Limits { max_body, ..limits },
        _ => limits,
    };
    let announced = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let too_large = || refuse(StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large", format!("a request body is at most {} bytes", limits.max_body));
    if announced.is_some_and(|n| n > limits.max_body as u64) {
        return Err(too_large());
    }
    match tokio::time::timeout(limits.body_timeout, axum::body::to_bytes(Body::new(body), limits.max_body)).await {
        Err(_) => Err(refuse(StatusCode::REQUEST_TIMEOUT, "request-timeout", format!("the body must arrive within {:?}", limits.body_timeout))),
        Ok(Err(_)) => Err(too_large()),
        Ok(Ok(bytes)) => Ok(hyper::Request::from_parts(parts, Body::from(bytes))),
    }
}

/// A refusal, with a JSON body like every other error herald's listeners
/// give; the connection is closed after it.
fn refuse(code: StatusCode, error: &str, message: String) -> Response {
    let mut response = (code, axum::Json(serde_json::json!({ "error": error, "message": message }))).into_response();
    response.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
    response
}

/// How long a connection must have been out of any request before it may
/// give its place to a new one: long enough for an answer just given (a
/// 413, say) to be written out.
const IDLE_GRACE: Duration = Duration::from_millis(250);

/// A connection being served, as the accept loop sees it.
struct Connection {
    abort: tokio::task::AbortHandle,
    activity: Arc<Activity>,
    since: tokio::time::Instant,
}

impl Connection {
    fn idle_for(&self, epoch: tokio::time::Instant) -> Duration {
        if self.activity.requests.load(Ordering::Acquire) > 0 {
            return Duration::ZERO;
        }
        let since = Duration::from_millis(self.activity.idle_since_ms.load(Ordering::Acquire));
        epoch.elapsed().saturating_sub(since)
    }
}

#[derive(Default)]
struct Activity {
    /// Requests it is in now: 0 while it sends headers or waits idle.
    requests: AtomicUsize,
    /// Since when it has been in none, in ms after the loop's epoch.
    idle_since_ms: AtomicU64,
}

impl Activity {
    fn idle(&self, epoch: tokio::time::Instant) {
        self.idle_since_ms.store(epoch.elapsed().as_millis() as u64, Ordering::Release);
    }
}
