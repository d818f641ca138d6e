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

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("binding 127.0.0.1:0").port()
}
