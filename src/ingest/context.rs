//! The consumer context: records rebalances for the consume loop to apply.
//! It never panics and does no work itself; rebalance callbacks run inside
//! librdkafka's poll.

use std::sync::Mutex;

use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::ClientContext;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assignment {
    Assigned(Vec<(String, i32)>),
    Revoked(Vec<(String, i32)>),
}

#[derive(Default)]
pub struct IngestContext {
    changes: Mutex<Vec<Assignment>>,
}

impl IngestContext {
    pub fn take_changes(&self) -> Vec<Assignment> {
        std::mem::take(&mut *self.changes.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }
}

impl ClientContext for IngestContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        crate::kafka::client_error(error, reason);
    }
}

impl ConsumerContext for IngestContext {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let list = |tpl: &rdkafka::TopicPartitionList| {
            tpl.elements().iter().map(|e| (e.topic().to_owned(), e.partition())).collect::<Vec<_>>()
        };
        let change = match rebalance {
            Rebalance::Assign(tpl) => Assignment::Assigned(list(tpl)),
            Rebalance::Revoke(tpl) => Assignment::Revoked(list(tpl)),
            Rebalance::Error(error) => {
                tracing::warn!(message = "Rebalance error.", %error);
                return;
            }
        };
        tracing::info!(message = "Rebalance.", ?change);
        self.changes.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(change);
    }
}
