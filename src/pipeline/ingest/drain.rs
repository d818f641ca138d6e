//! Shutdown: in-flight records finished within the deadline, then the
//! flush, the final commit and leaving the group, each within its share.

use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::KafkaError;
use tokio::time::Instant;

use super::Loop;

impl Loop {
    /// Stop fetching, let in-flight records finish within `deadline`, flush
    /// and commit what finished. Whatever the queues hold and whatever the
    /// broker does, this returns within `deadline`, and leaves the close
    /// its share of it; it returns when that deadline is.
    pub(super) async fn drain(&mut self, deadline: Duration) -> Instant {
        let until = Instant::now() + deadline;
        // The end of the deadline is kept for the flush, the final commit
        // and leaving the group, a third each, so that they get a chance
        // even when in-flight records use up the rest: a quarter of it, at
        // most a second. Each stops at its own share's end: waiting past
        // them on a stalled broker overran the deadline by 1.2 s.
        let reserve = (deadline / 4).min(Duration::from_secs(1));
        let (drained_by, flushed_by, committed_by) = (until - reserve, until - reserve * 2 / 3, until - reserve / 3);
        self.hand_over();
        let in_flight = self.tasks.len() + self.at_acker;
        tracing::info!(message = "Shutting down: finishing in-flight records.", in_flight);
        let drained = tokio::time::timeout_at(drained_by, async {
            while let Some(joined) = self.tasks.join_next().await {
                let _ = self.joined(joined);
            }
            while self.at_acker > 0 {
                let Some(finished) = self.acked.recv().await else { break };
                let _ = self.acknowledged(finished);
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                message = "Shutdown deadline passed; unfinished records will be redelivered.",
                unfinished = self.tasks.len() + self.at_acker
            );
            // First, so that no call starts in a slot an aborted call frees.
            self.pipeline.stop_calls();
            self.tasks.abort_all();
            while self.tasks.join_next().await.is_some() {}
        }
        self.acker.abort();
        self.store_offsets();
        if let Err(error) = self.pipeline.flush(flushed_by.saturating_duration_since(Instant::now())) {
            tracing::warn!(message = "Producer flush failed.", %error);
        }
        // Synchronous commits and the consumer's close wait on the broker;
        // off the runtime, and for no longer than the deadline allows.
        let consumer = self.consumer.clone();
        let commit = tokio::task::spawn_blocking(move || match consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) | Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {}
            Err(error) => tracing::warn!(message = "Final commit failed.", %error),
        });
        if tokio::time::timeout_at(committed_by, commit).await.is_err() {
            tracing::warn!(message = "Final commit did not finish within the shutdown deadline; the broker will see the last automatic commit.");
        }
        tracing::info!(message = "Stopped.", uncommitted = self.offsets.in_flight());
        until
    }
}
