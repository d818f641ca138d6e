//! What the pipeline shows on its admin listener.

use std::sync::Arc;

use rdkafka::producer::Producer;

use super::Pipeline;
use crate::admin::{broker, turning, Check, Observed, PROBE_TIMEOUT};

/// The pipeline, as its admin listener shows it.
pub(crate) struct PipelineObserved {
    pub pipeline: Arc<Pipeline>,
    pub probing: tokio::sync::Mutex<()>,
}

impl Observed for PipelineObserved {
    fn metrics(&self, openmetrics: bool) -> String {
        let metrics = self.pipeline.metrics();
        metrics.set_state(&self.pipeline.state());
        if openmetrics {
            metrics.encode()
        } else {
            metrics.encode_classic()
        }
    }

    fn liveness(&self) -> Vec<Check> {
        vec![turning("consume_loop", &self.pipeline.metrics().health)]
    }

    async fn readiness(&self) -> Vec<Check> {
        let health = &self.pipeline.metrics().health;
        let assigned = health.assigned();
        let mut checks = vec![
            Check { name: "partitions_assigned", ok: assigned > 0, detail: format!("{assigned} input partitions") },
            Check { name: "suppression_list", ok: health.are_suppressions_loaded(), detail: "read to its end at startup".to_owned() },
        ];
        let producer = self.pipeline.producer().clone();
        checks.push(broker(&self.probing, move |timeout| producer.client().fetch_metadata(None, timeout).map(|m| m.brokers().len())).await);
        if let Some(result) = self.pipeline.store_reachable(PROBE_TIMEOUT).await {
            checks.push(match result {
                Ok(()) => Check { name: "scylla", ok: true, detail: "answers".to_owned() },
                Err(error) => Check { name: "scylla", ok: false, detail: error },
            });
        }
        checks
    }
}
