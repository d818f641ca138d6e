//! Partitions that move: assignments and revocations applied between
//! records, delay-topic partitions rested while idle, and the send ledger
//! read back for status partitions newly assigned.

use rdkafka::consumer::Consumer;
use rdkafka::TopicPartitionList;
use tokio::time::Instant;

use super::{Assignment, Loop, Rests};
use crate::topics::Source;

impl Loop {
    pub(super) fn apply_rebalances(&mut self) {
        let topics = self.pipeline.topics().clone();
        let changes = self.consumer.context().take_changes();
        if !changes.is_empty() {
            let assigned = self.consumer.assignment().map_or(0, |l| l.elements().iter().filter(|e| topics.source(e.topic()).is_some()).count());
            self.pipeline.metrics().health.set_assigned(assigned);
        }
        for change in changes {
            match change {
                Assignment::Revoked(partitions) => {
                    for (topic, partition) in partitions {
                        if topic == topics.status {
                            self.pipeline.forget_ledger(partition);
                            self.restoring.remove(&partition);
                            self.status_end.remove(&partition);
                            self.marks.remove(&partition);
                        }
                        let Some(source) = topics.source(&topic) else { continue };
                        self.offsets.revoke(source, partition);
                        self.pauses.forget(source, partition);
                        self.hold.forget(source, partition);
                        self.rests.forget((source, partition));
                        self.pipeline.forget_partition(partition);
                    }
                }
                Assignment::Assigned(partitions) => {
                    // A partition paused under an earlier assignment starts
                    // fresh: resume it so nothing stays paused by accident.
                    // Status partitions stay paused: never fetched here.
                    let mut list = TopicPartitionList::new();
                    for (topic, partition) in partitions.iter().filter(|(t, _)| topics.source(t).is_some()) {
                        list.add_partition(topic, *partition);
                    }
                    if let Err(error) = self.consumer.resume(&list) {
                        tracing::debug!(message = "Resume after assignment failed.", %error);
                    }
                    let status: Vec<i32> = partitions.iter().filter(|(t, _)| *t == topics.status).map(|(_, p)| *p).collect();
                    if !status.is_empty() {
                        self.restore(status);
                    }
                }
            }
        }
    }

    /// Rests the delay-topic partitions that had nothing to read since the
    /// last heartbeat (see [`Rests`]).
    pub(super) fn rest_idle(&mut self) {
        let Ok(assignment) = self.consumer.assignment() else { return };
        let topics = self.pipeline.topics().clone();
        let now = Instant::now();
        for element in assignment.elements() {
            let Some(source) = topics.source(element.topic()).filter(|s| *s != Source::Requested) else { continue };
            let at = (source, element.partition());
            if self.pauses.is_paused(source, at.1) || !self.rests.may_rest(at) {
                continue;
            }
            if let Err(error) = self.pauses.rest(&self.consumer, &topics, at, now + Rests::length(&topics, source)) {
                tracing::warn!(message = "Pausing a partition failed.", topic = element.topic(), partition = at.1, %error);
            }
        }
        self.rests.swept();
    }

    /// Starts reading `partitions` of the status topic into the ledger;
    /// their records wait until it is done.
    pub(super) fn restore(&mut self, partitions: Vec<i32>) {
        self.next_restore += 1;
        for p in &partitions {
            self.restoring.insert(*p, self.next_restore);
        }
        let number = self.next_restore;
        let restore = self.pipeline.restore_ledger(self.consumer.clone(), self.ledger_reader.clone(), partitions);
        self.restores.spawn(async move { (number, restore.await) });
    }

    /// The ledger of these partitions is read: their records go ahead.
    pub(super) fn restored(&mut self, number: u64, ends: Vec<(i32, i64)>) {
        for (partition, end) in ends {
            // Revoked, or assigned again, since it started: not this one's.
            if self.restoring.get(&partition) != Some(&number) {
                continue;
            }
            self.restoring.remove(&partition);
            let known = self.status_end.entry(partition).or_default();
            *known = (*known).max(end);
            self.pauses.resume_ledger(&self.consumer, self.pipeline.topics(), partition);
        }
    }
}
