//! herald's HTTP listeners (Twilio's webhooks, the admin endpoints), each
//! reachable by whoever can reach its port: everything one client can make
//! it hold is bounded.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// What one client can make a listener hold. Twilio's callbacks and
/// incoming messages are a few KB: the largest, an incoming message of 1,600
/// characters of a non-Latin script, is about 15 KB percent-encoded; the
/// admin endpoints take no body at all.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once; past it, new ones wait to be accepted.
    pub max_connections: usize,
    /// To send a request's headers, and to start the next one on a
    /// keep-alive connection.
    pub header_timeout: Duration,
    /// To send a request's body.
    pub body_timeout: Duration,
    pub max_body: usize,
    /// A connection's whole life, however busy.
    pub connection_lifetime: Duration,
}

impl Limits {
    pub fn new(max_connections: usize) -> Self {
        Limits {
            max_connections,
            header_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(5),
            max_body: 32 * 1024,
            connection_lifetime: Duration::from_secs(60),
        }
    }
}

/// Accepts connections, at most `limits.max_connections` at once, each
/// served over HTTP/1 within the limits.
pub async fn accept(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let mut connections = JoinSet::new();
    let mut warned: Option<tokio::time::Instant> = None;
    tokio::pin!(shutdown);
    loop {
        while connections.try_join_next().is_some() {}
        let permit = match open.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                // Said at most once a minute: the cap is holding, not failing.
                if warned.is_none_or(|at| at.elapsed() > Duration::from_secs(60)) {
                    tracing::warn!(message = "Webhook connection limit reached; new connections wait.", max = limits.max_connections);
                    warned = Some(tokio::time::Instant::now());
                }
                tokio::select! {
                    () = &mut shutdown => break,
                    permit = open.clone().acquire_owned() => permit.expect("never closed"),
                }
            }
        };
        let (stream, _peer): (_, SocketAddr) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of file descriptors, say: wait, and try again.
                Err(error) => {
                    tracing::warn!(message = "Accepting a webhook connection failed.", %error);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let service = TowerToHyperService::new(app.clone());
        connections.spawn(async move {
            let _permit = permit;
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_buf_size(16 * 1024)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(limits.connection_lifetime, connection).await;
        });
    }
    // Requests under way get a moment to answer; Twilio retries the rest.
    let _ = tokio::time::timeout(Duration::from_secs(2), async { while connections.join_next().await.is_some() {} }).await;
    connections.shutdown().await;
    Ok(())
}

