//! Delay topics are read by pausing a partition whose head record is not
//! yet due and resuming it when it is: the poll loop never sleeps, so it
//! never exceeds `max.poll.interval.ms`, and other partitions keep flowing.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaResult;
use rdkafka::{Offset, TopicPartitionList};
use tokio::time::Instant;

use super::HeraldConsumer;

#[derive(Default)]
pub struct Pauses {
    /// Paused partitions, each with the id of its pause.
    paused: HashMap<(String, i32), u64>,
    /// When each pause ends; stale entries (the partition was revoked or
    /// paused again) are skipped by id.
    due: BinaryHeap<Reverse<(Instant, u64, String, i32)>>,
    next_id: u64,
}

impl Pauses {
    pub fn is_paused(&self, topic: &str, partition: i32) -> bool {
        self.paused.contains_key(&(topic.to_owned(), partition))
    }

    /// Pauses the partition and rewinds it to `offset`, the head record,
    /// so the record is fetched again on resume. Records already fetched
    /// behind it are discarded by the seek.
    pub fn pause(
        &mut self,
        consumer: &HeraldConsumer,
        topic: &str,
        partition: i32,
        offset: i64,
        until: Instant,
    ) -> KafkaResult<()> {
        let mut list = TopicPartitionList::new();
        list.add_partition(topic, partition);
        consumer.pause(&list)?;
        // A zero timeout makes the seek asynchronous: the loop must not block.
        consumer.seek(topic, partition, Offset::Offset(offset), Duration::ZERO)?;
        self.next_id += 1;
        self.paused.insert((topic.to_owned(), partition), self.next_id);
        self.due.push(Reverse((until, self.next_id, topic.to_owned(), partition)));
        Ok(())
    }

    pub fn next_due(&self) -> Option<Instant> {
        self.due.peek().map(|Reverse((at, ..))| *at)
    }

    pub fn resume_due(&mut self, consumer: &HeraldConsumer, now: Instant) {
        while let Some(Reverse((at, ..))) = self.due.peek() {
            if *at > now {
                break;
            }
            let Reverse((_, id, topic, partition)) = self.due.pop().expect("peeked");
            let key = (topic, partition);
            if self.paused.get(&key) != Some(&id) {
                continue;
            }
            self.paused.remove(&key);
            let mut list = TopicPartitionList::new();
            list.add_partition(&key.0, key.1);
            if let Err(error) = consumer.resume(&list) {
                tracing::warn!(message = "Resuming a partition failed.", topic = key.0, partition = key.1, %error);
            }
        }
    }

    /// A revoked partition is no longer ours to resume.
    pub fn forget(&mut self, topic: &str, partition: i32) {
        self.paused.remove(&(topic.to_owned(), partition));
    }
}
