//! librdkafka client settings, in one place.

use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaResult;
use rdkafka::producer::FutureProducer;

use crate::config::Config;
use crate::ingest::{HeraldConsumer, IngestContext};

fn base(config: &Config) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.brokers)
        // Client telemetry push is not needed and not every broker wants it.
        .set("enable.metrics.push", "false");
    c
}

/// Operator-supplied settings win over herald's defaults.
fn with_overrides(mut c: ClientConfig, config: &Config) -> ClientConfig {
    for (key, value) in &config.kafka_options {
        c.set(key, value);
    }
    c
}

pub fn consumer(config: &Config) -> KafkaResult<HeraldConsumer> {
    let mut c = base(config);
    c.set("group.id", &config.group_id)
        // Offsets are stored by the loop once outcomes are durable, and
        // committed in the background from what was stored.
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        // The loop never blocks longer than a provider timeout.
        .set("max.poll.interval.ms", "60000");
    with_overrides(c, config).create_with_context(IngestContext::default())
}

pub fn producer(config: &Config) -> KafkaResult<FutureProducer> {
    let mut c = base(config);
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("compression.type", "lz4");
    with_overrides(c, config).create()
}

pub fn admin(config: &Config) -> KafkaResult<AdminClient<DefaultClientContext>> {
    with_overrides(base(config), config).create()
}
