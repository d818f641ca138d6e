//! Integration tests: herald against a real Kafka-protocol broker (one
//! tansu for the binary, see `Broker::shared`; or the cluster in
//! KAFKA_BROKERS) and fake providers.

mod api;
mod backpressure;
mod cancel;
mod channels;
mod configuration;
mod crash;
mod demo;
mod deploy;
mod dlq;
mod failover;
mod guard;
mod operate;
mod python_client;
mod quiet;
mod rate_limit;
mod receipts;
mod registry;
mod retry;
mod scylla;
mod send;
mod shared_topics;
mod shutdown;
mod status_event;
mod suppression;
mod templates;
mod timing;
mod tokens;
mod support;
mod topics;
mod undeliverable;
