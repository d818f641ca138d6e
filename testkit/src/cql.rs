//! A CQL server for a test: kassandra, an in-memory CQL v4 server, on a
//! free loopback port in a thread of its own, stopped on drop. With
//! `SCYLLA_URI` set, that cluster is used instead and nothing is started.
//!
//! kassandra ignores `USING TTL`, range predicates on clustering columns
//! and LWT conditions, and does not report a table's TTL; herald uses none
//! of them on its hot path, which is what makes a test against it count.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use kassandra_tester::kassandra::session::KassandraSession;
use kassandra_tester::KassandraTester;
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
        // kassandra serves from a LocalSet: it needs a thread and a
        // current-thread runtime of its own.
        std::thread::Builder::new()
            .name("kassandra".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
                let served = KassandraTester::new(KassandraSession::new()).in_scope(|addr| {
                    let (tx, stopped) = (tx.clone(), stopped.clone());
                    async move {
                        let _ = tx.send(addr);
                        stopped.notified().await;
                        Ok::<(), ()>(())
                    }
                });
                // Clients still connected make the tester panic as it
                // hands the session back; by then the test is over.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| runtime.block_on(served)));
            })
            .expect("starting kassandra's thread");
        let addr = rx.recv().expect("kassandra listens");
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

impl Drop for Cql {
    fn drop(&mut self) {
        if let Some(stop) = &self.stop {
            stop.notify_one();
        }
    }
}
