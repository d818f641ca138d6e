//! What herald's tests, benchmarks and demo need around herald: a real
//! Kafka-protocol broker on a free loopback port, an in-memory CQL server,
//! fake providers that check
//! requests the way the real APIs do and record them, and Kafka helpers.
//!
//! It does not depend on herald, so herald's own types stay out of it.

pub mod broker;
pub mod cql;
pub mod fake;
pub mod kafka;
pub mod providers;

pub use broker::Broker;
pub use cql::Cql;
pub use providers::Providers;

/// The envelope key herald is given wherever the testkit runs it: a secret
/// only in name, long enough to be accepted.
pub const ENVELOPE_KEY: &str = "testkit-envelope-key-0123456789abcdef";
/// The API token of `herald api` wherever the testkit runs it.
pub const API_TOKEN: &str = "testkit-api-token-0123456789abcdefghij";

/// A free TCP port on 127.0.0.1, for a server that must be told its port
/// before it starts (tansu). It is below the kernel's ephemeral range
/// (32768 and up), so no outgoing connection takes it between now and its
/// use, as a port from binding port 0 could be; and one process never gets
/// the same port twice. Servers that can take a bound listener, or bind
/// port 0 and report it, should do that instead.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    const FIRST: u16 = 20_000;
    const SPAN: u16 = 12_000;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    // Processes start apart, so concurrent test binaries rarely meet.
    let start = (std::process::id() % 600) as u16 * 20;
    for _ in 0..SPAN {
        let port = FIRST + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {FIRST} and {}", FIRST + SPAN)
}
