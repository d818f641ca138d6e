//! The consumer context: records rebalances for the consume loop to apply,
//! and hands partitions over cleanly on a revoke. It never panics; its
//! callbacks run inside librdkafka's poll.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::{ClientContext, TopicPartitionList};

use crate::metrics::Metrics;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Assignment {
    Assigned(Vec<(String, i32)>),
    Revoked(Vec<(String, i32)>),
}

/// The consumer's context: rebalances, statistics, and the handover of revoked partitions.
pub struct IngestContext {
    changes: Mutex<Vec<Assignment>>,
    /// Whether `changes` has any, so the loop can look without locking.
    changed: std::sync::atomic::AtomicBool,
    /// Status partitions are in the assignment only so that their offsets
    /// (the ledger's marks) are committed with the inputs': never fetched.
    status_topic: String,
    handover: Arc<Handover>,
    producer: FutureProducer,
    /// How long a revoke may wait for provider calls under way.
    handover_wait: Duration,
    metrics: Arc<Metrics>,
    /// Whose lag is also counted as records waiting on a delay topic.
    delay_topics: Vec<String>,
}

impl IngestContext {
    /// The context of a consumer that reads `status_topic` paused and `delay_topics` with rests.
    pub fn new(status_topic: String, handover: Arc<Handover>, producer: FutureProducer, handover_wait: Duration, metrics: Arc<Metrics>, delay_topics: Vec<String>) -> Self {
        IngestContext {
            changes: Mutex::default(),
            changed: Default::default(),
            status_topic,
            handover,
            producer,
            handover_wait,
            metrics,
            delay_topics,
        }
    }

    pub(crate) fn take_changes(&self) -> Vec<Assignment> {
        use std::sync::atomic::Ordering;
        if !self.changed.swap(false, Ordering::AcqRel) {
            return Vec::new();
        }
        std::mem::take(&mut *self.changes.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }
}

impl ClientContext for IngestContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        crate::kafka::client_error(error, reason);
    }

    /// librdkafka's statistics (`statistics.interval.ms`): the lag of each
    /// assigned partition, from the fetch responses' high watermarks.
    fn stats(&self, statistics: rdkafka::Statistics) {
        self.metrics.set_lag(&crate::metrics::lags(&statistics, Some(&self.status_topic)), &self.delay_topics);
    }
}

fn list(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements().iter().map(|e| (e.topic().to_owned(), e.partition())).collect()
}

impl ConsumerContext for IngestContext {
    fn commit_callback(&self, result: rdkafka::error::KafkaResult<()>, offsets: &TopicPartitionList) {
        let committed = offsets.elements().iter().filter(|e| e.error().is_ok() && matches!(e.offset(), rdkafka::Offset::Offset(_))).count();
        self.metrics.committed(committed, result.is_ok() || matches!(result, Err(rdkafka::error::KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset))));
    }

    /// Before partitions go: no new provider call starts for them, the
    /// calls under way publish their outcomes, and the producer flushes, so
    /// that the next owner's ledger holds every send made here. librdkafka
    /// then commits the stored offsets.
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else { return };
        let started = Instant::now();
        let mut partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        partitions.sort_unstable();
        partitions.dedup();
        if !self.handover.revoke(&partitions, self.handover_wait) {
            tracing::warn!(message = "Provider calls still under way when their partitions were handed over; their records may be sent again.", waited_ms = self.handover_wait.as_millis() as u64);
        }
        let remaining = self.handover_wait.saturating_sub(started.elapsed()).max(Duration::from_millis(100));
        if let Err(error) = self.producer.flush(remaining) {
            tracing::warn!(message = "Flushing before a handover failed.", %error);
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let change = match rebalance {
            Rebalance::Assign(tpl) => {
                let mut status = TopicPartitionList::new();
                for e in tpl.elements().iter().filter(|e| e.topic() == self.status_topic) {
                    status.add_partition(e.topic(), e.partition());
                }
                if status.count() > 0 {
                    if let Err(error) = consumer.pause(&status) {
                        tracing::warn!(message = "Pausing the status partitions failed.", %error);
                    }
                }
                Assignment::Assigned(list(tpl))
            }
            Rebalance::Revoke(tpl) => Assignment::Revoked(list(tpl)),
            Rebalance::Error(error) => {
                tracing::warn!(message = "Rebalance error.", %error);
                return;
            }
        };
        tracing::info!(message = "Rebalance.", ?change);
        self.changes.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(change);
        self.changed.store(true, std::sync::atomic::Ordering::Release);
    }
}

/// What lets a revoke wait for the provider calls of the partitions it
/// takes away, and stops the calls not yet started.
#[derive(Default)]
pub struct Handover {
    state: Mutex<HandoverState>,
    idle: Condvar,
}

#[derive(Default)]
struct HandoverState {
    /// Per partition number, how many times it was revoked.
    revocations: HashMap<i32, u64>,
    /// Provider calls under way whose outcome is not yet with the producer.
    calling: usize,
}

impl Handover {
    fn state(&self) -> std::sync::MutexGuard<'_, HandoverState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Which assignment of `partition` a record belongs to.
    pub(crate) fn generation(&self, partition: i32) -> u64 {
        self.state().revocations.get(&partition).copied().unwrap_or(0)
    }

    /// Before a provider call: `None` when the record's partition was
    /// revoked since it was read, so its next owner makes the call instead.
    pub(crate) fn begin(self: &Arc<Self>, partition: i32, generation: u64) -> Option<CallUnderWay> {
        let mut state = self.state();
        if state.revocations.get(&partition).copied().unwrap_or(0) != generation {
            return None;
        }
        state.calling += 1;
        Some(CallUnderWay(self.clone()))
    }

    /// Marks `partitions` revoked and waits, at most `wait`, until no call
    /// is under way; says whether none is.
    pub(crate) fn revoke(&self, partitions: &[i32], wait: Duration) -> bool {
        let mut state = self.state();
        for p in partitions {
            *state.revocations.entry(*p).or_default() += 1;
        }
        let (state, timeout) = self.idle.wait_timeout_while(state, wait, |s| s.calling > 0).unwrap_or_else(|p| p.into_inner());
        drop(state);
        !timeout.timed_out()
    }
}

/// A provider call under way; dropped once its outcome is with the
/// producer.
pub(crate) struct CallUnderWay(Arc<Handover>);

impl Drop for CallUnderWay {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.calling -= 1;
        if state.calling == 0 {
            self.0.idle.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revoke_stops_calls_not_started_and_waits_for_those_under_way() {
        let handover = Arc::new(Handover::default());
        let (old, other) = (handover.generation(1), handover.generation(2));
        let calling = handover.begin(1, old).expect("not revoked yet");
        let waiter = {
            let handover = handover.clone();
            std::thread::spawn(move || handover.revoke(&[1], Duration::from_secs(10)))
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!waiter.is_finished(), "waits for the call under way");
        drop(calling);
        assert!(waiter.join().unwrap(), "then returns");
        assert!(handover.begin(1, old).is_none(), "a record read before the revoke calls nobody");
        assert!(handover.begin(1, handover.generation(1)).is_some(), "one read after it does");
        assert!(handover.begin(2, other).is_some(), "other partitions are not affected");
    }

    #[test]
    fn a_revoke_waits_no_longer_than_it_may() {
        let handover = Arc::new(Handover::default());
        let _calling = handover.begin(1, 0).unwrap();
        let started = Instant::now();
        assert!(!handover.revoke(&[1], Duration::from_millis(100)));
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
