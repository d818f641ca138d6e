//! What `herald api`'s status store counts.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{classic, Health, PartitionLabels};

/// What `herald api`'s status store counts (its own registry: the API runs
/// apart from the pipeline).
pub(crate) struct StoreMetrics {
    registry: Registry,
    written: Counter,
    write_errors: Counter,
    skipped: Counter,
    lag: Family<PartitionLabels, Gauge>,
    pub health: Health,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("herald");
        let written = Counter::default();
        registry.register("store_statuses_written", "Status events written to the status store", written.clone());
        let write_errors = Counter::default();
        registry.register("store_write_errors", "Writes of status events that ScyllaDB failed (each batch is tried again)", write_errors.clone());
        let skipped = Counter::default();
        registry.register("store_skipped_records", "Records on the status topic that are not status events: not stored", skipped.clone());
        let lag = Family::<PartitionLabels, Gauge>::default();
        registry.register("store_consumer_lag", "Status events behind the end of each assigned status partition (librdkafka's statistics)", lag.clone());
        StoreMetrics { registry, written, write_errors, skipped, lag, health: Health::default() }
    }
}

impl StoreMetrics {
    pub(crate) fn written(&self, statuses: usize) {
        self.written.inc_by(statuses as u64);
    }

    pub(crate) fn write_failed(&self) {
        self.write_errors.inc();
    }

    pub(crate) fn skipped(&self) {
        self.skipped.inc();
    }

    /// The lag of every assigned status partition, replacing the last.
    pub(crate) fn set_lag(&self, lags: &[(String, i32, i64)]) {
        self.lag.clear();
        for (topic, partition, lag) in lags {
            self.lag.get_or_create(&PartitionLabels { topic: topic.clone(), partition: partition.to_string() }).set(*lag);
        }
    }

    pub(crate) fn encode(&self, openmetrics: bool) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        if openmetrics {
            out
        } else {
            classic(&out)
        }
    }
}
