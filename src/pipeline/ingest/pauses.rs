//! Partitions the loop has paused, and why. A partition is paused instead
//! of the loop waiting, so the loop keeps polling (it never comes near
//! `max.poll.interval.ms`) and other partitions keep flowing:
//! - a delay topic's partition whose head record is not due yet, until it is;
//! - a partition whose next record needs a lane that stayed full, until the
//!   lane has room again;
//! - a newly assigned partition, until its send ledger is read;
//! - a delay topic's partition that has had nothing to read for a while:
//!   it rests (see [`Rests`]).
//!
//! Pausing rewinds the partition to the record that could not go ahead, so
//! it is fetched again on resume; records already fetched behind it are
//! discarded by the seek, and skipped by the loop meanwhile. A rest has no
//! record to rewind to (see [`Pauses::rest`]).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use foldhash::{HashMap, HashSet};
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaResult;
use rdkafka::{Offset, TopicPartitionList};
use tokio::time::Instant;

use super::HeraldConsumer;
use crate::model::Channel;
use crate::topics::{Source, Topics};

/// What a paused partition waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Until {
    Due(Instant),
    /// Room in a channel's lane (`None`: among records that settle without
    /// a provider).
    Room(Option<Channel>),
    /// The restore of its partition number's send ledger.
    Ledger(i32),
    /// A delay-topic partition with nothing to read, resting until then.
    Rest(Instant),
    /// A delay-topic partition whose next record is due within the hold
    /// window, while the hold is full.
    Hold,
}

#[derive(Default)]
pub(super) struct Pauses {
    /// Paused partitions, each with the id of its pause and what it waits for.
    paused: HashMap<(Source, i32), (u64, Until)>,
    /// When each timed pause ends; stale entries (the partition was revoked
    /// or paused again) are skipped by id.
    due: BinaryHeap<Reverse<(Instant, u64, Source, i32)>>,
    next_id: u64,
    /// How many of `paused` wait for room, so that every record need not
    /// look through the resting delay partitions to learn that none do.
    for_room: usize,
}

impl Pauses {
    pub(super) fn is_paused(&self, source: Source, partition: i32) -> bool {
        self.paused.contains_key(&(source, partition))
    }

    /// Pauses the partition and rewinds it to `offset`, the record that
    /// cannot go ahead yet.
    pub(super) fn pause(
        &mut self,
        consumer: &HeraldConsumer,
        topics: &Topics,
        (source, partition): (Source, i32),
        offset: i64,
        until: Until,
    ) -> KafkaResult<()> {
        let topic = topics.name(source);
        let mut list = TopicPartitionList::new();
        list.add_partition(topic, partition);
        consumer.pause(&list)?;
        // A zero timeout makes the seek asynchronous: the loop must not block.
        consumer.seek(topic, partition, Offset::Offset(offset), Duration::ZERO)?;
        self.record(source, partition, until);
        Ok(())
    }

    /// Pauses an idle delay-topic partition without a seek. librdkafka
    /// resumes a paused partition from the record after the last one it
    /// handed over (or, if none, where the assignment started), so nothing
    /// fetched meanwhile is lost. A record handed over before the pause took
    /// effect is read as usual: see [`Pauses::wake`].
    pub(super) fn rest(&mut self, consumer: &HeraldConsumer, topics: &Topics, (source, partition): (Source, i32), until: Instant) -> KafkaResult<()> {
        let mut list = TopicPartitionList::new();
        list.add_partition(topics.name(source), partition);
        consumer.pause(&list)?;
        self.record(source, partition, Until::Rest(until));
        Ok(())
    }

    /// Ends the rest of a partition that turned out to have a record; false
    /// if it is not resting (paused for another reason, or not at all).
    pub(super) fn wake(&mut self, consumer: &HeraldConsumer, topics: &Topics, source: Source, partition: i32) -> bool {
        let resting = matches!(self.paused.get(&(source, partition)), Some((_, Until::Rest(_))));
        if resting {
            self.resume(consumer, topics, source, partition);
        }
        resting
    }

    fn record(&mut self, source: Source, partition: i32, until: Until) {
        self.next_id += 1;
        let before = self.paused.insert((source, partition), (self.next_id, until));
        self.counted(before.map(|(_, until)| until), Some(until));
        if let Until::Due(at) | Until::Rest(at) = until {
            self.due.push(Reverse((at, self.next_id, source, partition)));
        }
    }

    pub(super) fn next_due(&self) -> Option<Instant> {
        self.due.peek().map(|Reverse((at, ..))| *at)
    }

    pub(super) fn resume_due(&mut self, consumer: &HeraldConsumer, topics: &Topics, now: Instant) {
        while let Some(Reverse((at, ..))) = self.due.peek() {
            if *at > now {
                break;
            }
            let Reverse((_, id, source, partition)) = self.due.pop().expect("peeked");
            if self.paused.get(&(source, partition)).is_some_and(|(current, _)| *current == id) {
                self.resume(consumer, topics, source, partition);
            }
        }
    }

    /// Whether any partition waits for room in `lane`.
    pub(super) fn waiting_for(&self, lane: Option<Channel>) -> bool {
        self.for_room > 0 && self.paused.values().any(|(_, until)| *until == Until::Room(lane))
    }

    /// Keeps `for_room` right when a pause is replaced or removed.
    fn counted(&mut self, removed: Option<Until>, added: Option<Until>) {
        let room = |u: Option<Until>| matches!(u, Some(Until::Room(_))) as usize;
        self.for_room = self.for_room + room(added) - room(removed);
    }

    /// Resumes every partition that waits for room in `lane`.
    pub(super) fn resume_room(&mut self, consumer: &HeraldConsumer, topics: &Topics, lane: Option<Channel>) {
        self.resume_waiting(consumer, topics, Until::Room(lane));
    }

    /// Resumes the partitions that wait for room in the hold.
    pub(super) fn resume_hold(&mut self, consumer: &HeraldConsumer, topics: &Topics) {
        if self.paused.values().any(|(_, until)| *until == Until::Hold) {
            self.resume_waiting(consumer, topics, Until::Hold);
        }
    }

    /// Resumes the partitions of number `partition` that wait for its ledger.
    pub(super) fn resume_ledger(&mut self, consumer: &HeraldConsumer, topics: &Topics, partition: i32) {
        self.resume_waiting(consumer, topics, Until::Ledger(partition));
    }

    fn resume_waiting(&mut self, consumer: &HeraldConsumer, topics: &Topics, what: Until) {
        let waiting: Vec<(Source, i32)> = self.paused.iter().filter(|(_, (_, until))| *until == what).map(|(key, _)| *key).collect();
        for (source, partition) in waiting {
            self.resume(consumer, topics, source, partition);
        }
    }

    fn resume(&mut self, consumer: &HeraldConsumer, topics: &Topics, source: Source, partition: i32) {
        self.forget(source, partition);
        let topic = topics.name(source);
        let mut list = TopicPartitionList::new();
        list.add_partition(topic, partition);
        if let Err(error) = consumer.resume(&list) {
            tracing::warn!(message = "Resuming a partition failed.", topic, partition, %error);
        }
    }

    /// A revoked partition is no longer ours to resume.
    pub(super) fn forget(&mut self, source: Source, partition: i32) {
        let removed = self.paused.remove(&(source, partition));
        self.counted(removed.map(|(_, until)| until), None);
    }
}

/// Which delay-topic partitions may rest. A delay topic is mostly empty,
/// yet an unpaused partition is fetched as often as the requests topic
/// (every `fetch.wait.max.ms` when there is nothing to return), and on a
/// broker whose cost grows with the partitions in a fetch that slows the
/// requests topic: at 40,000 requests/s on tansu, herald's p99 was 208 ms
/// with its 18 delay partitions fetched, 76 ms without. A record in a delay
/// topic waits at least the topic's delay, so seeing it a twentieth of that
/// later changes nothing that matters.
#[derive(Default)]
pub(super) struct Rests {
    /// Partitions that gave a record since the last sweep.
    heard: HashSet<(Source, i32)>,
    /// Partitions put to rest at some sweep and not heard from since: once
    /// resumed, each gets a full sweep's interval to be fetched before it
    /// may rest again.
    rested: HashSet<(Source, i32)>,
}

impl Rests {
    /// How long a partition of the delay topic `source` rests at a time. A
    /// retry waits its rung's whole delay: a twentieth of it is nothing. A
    /// record on a tier of the wheel may be due as soon as the tier's delay
    /// less the hold after it lands, and must be read before: half of that,
    /// and a quarter of a second at least, for the tier that takes the
    /// records due at once.
    pub(super) fn length(topics: &Topics, source: Source) -> Duration {
        const MOST: Duration = Duration::from_secs(5);
        match (source, topics.delay(source)) {
            (Source::Wait(_), Some(delay)) => (delay.saturating_sub(topics.hold) / 2).clamp(Duration::from_millis(250), MOST),
            (_, delay) => (delay.unwrap_or_default() / 20).min(MOST),
        }
    }

    pub(super) fn heard(&mut self, at: (Source, i32)) {
        self.heard.insert(at);
    }

    /// Whether the unpaused partition `at` has been idle since the last
    /// sweep and may rest now. Called once per sweep for each one.
    pub(super) fn may_rest(&mut self, at: (Source, i32)) -> bool {
        if self.heard.contains(&at) {
            self.rested.remove(&at);
            return false;
        }
        if self.rested.remove(&at) {
            return false;
        }
        self.rested.insert(at);
        true
    }

    /// Called at the end of every sweep.
    pub(super) fn swept(&mut self) {
        self.heard.clear();
    }

    pub(super) fn forget(&mut self, at: (Source, i32)) {
        self.heard.remove(&at);
        self.rested.remove(&at);
    }
}
