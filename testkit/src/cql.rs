//! A CQL server for a test: kassandra, an in-memory CQL v4 server, on a
//! free loopback port in a thread of its own, stopped on drop. It serves
//! connections the way kassandra-tester does, plus TCP_NODELAY. With
//! `SCYLLA_URI` set, that cluster is used instead and nothing is started.
//!
//! kassandra ignores `USING TTL`, range predicates on clustering columns
//! and LWT conditions, and does not report a table's TTL; herald uses none
//! of them on its hot path, which is what makes a test against it count.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use futures::{SinkExt, StreamExt};
use kassandra::error::DbError;
use kassandra::frame::request::Request;
use kassandra::frame::response::error::Error;
use kassandra::frame::response::Response;
use kassandra::frame::{request_stream, response_sink};
use kassandra::session::KassandraSession;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

pub struct Cql {
    /// Contact point, host:port.
    pub uri: String,
    /// A keyspace of this server's own, so tests can share a real cluster.
    pub keyspace: String,
    /// Wakes kassandra's thread to stop; `None` for a real cluster.
    stop: Option<Arc<Notify>>,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Cql {
    pub fn start() -> Cql {
        let keyspace = format!("herald_test_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        if let Ok(uri) = std::env::var("SCYLLA_URI") {
            return Cql { uri, keyspace, stop: None };
        }
        let stop = Arc::new(Notify::new());
        let (tx, rx) = std::sync::mpsc::channel();
        let stopped = stop.clone();
        // kassandra's connections are served from a LocalSet: a thread and
        // a current-thread runtime of their own.
        std::thread::Builder::new()
            .name("kassandra".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
                let local = tokio::task::LocalSet::new();
                local.block_on(&runtime, async move {
                    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding 127.0.0.1:0");
                    let _ = tx.send(listener.local_addr().expect("bound address"));
                    let session = Arc::new(Mutex::new(KassandraSession::new()));
                    tokio::select! {
                        () = stopped.notified() => {}
                        () = accept(listener, session) => {}
                    }
                });
            })
            .expect("starting kassandra's thread");
        let addr: SocketAddr = rx.recv().expect("kassandra listens");
        Cql { uri: addr.to_string(), keyspace, stop: Some(stop) }
    }

    /// True when this is a kassandra this process started.
    pub fn is_local(&self) -> bool {
        self.stop.is_some()
    }

    /// herald's arguments for this server and keyspace. kassandra has no
    /// peers table or schema versions, so the driver must not wait on them;
    /// a real cluster keeps the driver's defaults.
    pub fn args(&self) -> Vec<String> {
        let mut args = vec!["--scylla-uri".to_owned(), self.uri.clone(), "--scylla-keyspace".to_owned(), self.keyspace.clone()];
        if self.is_local() {
            args.extend(["--scylla-await-schema-agreement", "false", "--scylla-fetch-schema-metadata", "false"].map(str::to_owned));
        } else {
            args.extend(["--scylla-replication", "{'class': 'NetworkTopologyStrategy', 'replication_factor': 1}"].map(str::to_owned));
        }
        args
    }
}

/// Serves CQL connections, one task each. Requests go to the one
/// in-memory session in arrival order.
async fn accept(listener: TcpListener, session: Arc<Mutex<KassandraSession>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        // Without it, a response that follows another within one round
        // trip waits for the client's delayed ACK: 20-40 ms per read that
        // follows a write.
        let _ = stream.set_nodelay(true);
        tokio::task::spawn_local(serve(stream, session.clone()));
    }
}

async fn serve(mut stream: TcpStream, session: Arc<Mutex<KassandraSession>>) {
    let (mut read, mut write) = stream.split();
    let mut requests = request_stream(&mut read);
    let mut responses = response_sink(&mut write);
    while let Some(Ok((frame, opcode, body))) = requests.next().await {
        let response = match Request::deserialize(opcode, &body, frame.flags) {
            Ok(request) => answer(&session, request),
            Err(_) => Response::Error(Error::new(DbError::ProtocolError, "cannot parse the request")),
        };
        if responses.send((response, frame.stream)).await.is_err() {
            return;
        }
    }
}

fn answer(session: &Mutex<KassandraSession>, request: Request) -> Response {
    let mut session = session.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let result = match request {
        Request::StartUp(_) | Request::Register { .. } => return Response::Ready,
        Request::Options => return Response::options(),
        Request::AuthResponse => return Response::Error(Error::new(DbError::ProtocolError, "no authentication here")),
        Request::Query(query) => session.process(query),
        Request::Prepare(prepare) => session.prepare(prepare),
        Request::Execute(execute) => session.execute(execute),
        Request::Batch(batch) => session.process_batch(batch),
    };
    match result {
        Ok(result) => Response::Result(result),
        Err(error) => Response::Error(error),
    }
}

impl Drop for Cql {
    fn drop(&mut self) {
        if let Some(stop) = &self.stop {
            stop.notify_one();
        }
    }
}
