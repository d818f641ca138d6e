//! Stage 0: the consume loop. It reads the requests topic and the delay
//! topics with one consumer-group member, hands records to the pipeline,
//! and stores an offset only once the outcome of that record and of every
//! record before it in the partition is durable.

mod context;
mod offsets;
mod pauses;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::Producer;
use rdkafka::TopicPartitionList;
use tokio::task::JoinSet;
use tokio::time::Instant;

pub use context::{Assignment, IngestContext};
use offsets::{Offsets, Ticket};
use pauses::Pauses;

use crate::decode::Undecodable;
use crate::outcome::{Consumed, Envelope, Outcome};
use crate::pipeline::{AdmitError, Admitted, Pipeline};
use crate::topics::Source;

pub type HeraldConsumer = StreamConsumer<IngestContext>;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("cannot judge records: {0}")]
    Admit(#[from] AdmitError),
}

struct Loop {
    consumer: Arc<HeraldConsumer>,
    pipeline: Arc<Pipeline>,
    offsets: Offsets,
    pauses: Pauses,
    /// Records whose delivery waits on a provider, each a task that yields
    /// its ticket once the record's outcome is durable.
    tasks: JoinSet<Ticket>,
    /// Records settled without waiting (rate limited, invalid, a sender
    /// that answers at once): only their produce acks are awaited, here,
    /// which costs far less than a task per record.
    acks: FuturesUnordered<Acked>,
}

/// Completes with a record's ticket once its outcome is durable.
type Acked = Pin<Box<dyn Future<Output = Ticket> + Send>>;

pub async fn consume(
    consumer: HeraldConsumer,
    pipeline: Arc<Pipeline>,
    shutdown: impl Future<Output = ()>,
    deadline: Duration,
) -> Result<(), IngestError> {
    let mut l = Loop {
        consumer: Arc::new(consumer),
        pipeline,
        offsets: Offsets::default(),
        pauses: Pauses::default(),
        tasks: JoinSet::new(),
        acks: FuturesUnordered::new(),
    };
    let result = l.run(shutdown).await;
    l.drain(deadline).await;
    result
}

impl Loop {
    async fn run(&mut self, shutdown: impl Future<Output = ()>) -> Result<(), IngestError> {
        tokio::pin!(shutdown);
        loop {
            let resume_at = self.pauses.next_due();
            // The message borrows the consumer; a local handle keeps `self` free.
            let consumer = self.consumer.clone();
            tokio::select! {
                biased;
                () = &mut shutdown => return Ok(()),
                Some(joined) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    self.finished(joined);
                    while let Some(joined) = self.tasks.try_join_next() {
                        self.finished(joined);
                    }
                    self.store_offsets();
                }
                Some(ticket) = self.acks.next(), if !self.acks.is_empty() => {
                    self.offsets.finish(ticket);
                    while let Some(Some(ticket)) = self.acks.next().now_or_never() {
                        self.offsets.finish(ticket);
                    }
                    self.store_offsets();
                }
                () = tokio::time::sleep_until(resume_at.unwrap_or_else(Instant::now)), if resume_at.is_some() => {
                    self.pauses.resume_due(&*self.consumer, Instant::now());
                }
                message = consumer.recv() => {
                    match message {
                        Ok(message) => self.handle(&consumer, &message).await?,
                        Err(error) => tracing::warn!(message = "Consumer error.", %error),
                    }
                }
            }
        }
    }

    async fn handle(&mut self, consumer: &HeraldConsumer, message: &BorrowedMessage<'_>) -> Result<(), IngestError> {
        self.apply_rebalances();
        let (topic, partition, offset) = (message.topic(), message.partition(), message.offset());
        let Some(source) = self.pipeline.topics.source(topic) else { return Ok(()) };
        if self.pauses.is_paused(topic, partition) {
            // Fetched before the pause took effect; the seek brings it back.
            return Ok(());
        }
        let headers = message.headers().map(|h| h.detach());
        let envelope = Envelope::read(headers.as_ref());
        let now = Utc::now();
        if let (Source::Retry(i), Ok(Envelope { not_before: Some(not_before), .. })) = (source, &envelope) {
            // Released when due, or when it has waited its topic's delay,
            // whichever is first; a record released early is parked again.
            let appended = message.timestamp().to_millis().and_then(|ms| Utc.timestamp_millis_opt(ms).single());
            let delay = chrono::Duration::from_std(self.pipeline.topics.retries[i].delay).unwrap_or(chrono::Duration::MAX);
            let release = appended.map_or(*not_before, |t| (*not_before).min(t + delay));
            if release > now {
                let until = Instant::now() + (release - now).to_std().unwrap_or_default();
                if let Err(error) = self.pauses.pause(consumer, topic, partition, offset, until) {
                    tracing::warn!(message = "Pausing a partition failed.", topic, partition, %error);
                }
                return Ok(());
            }
        }
        let ticket = self.offsets.register(topic, partition, offset);
        let (envelope, bad_envelope) = match envelope {
            Ok(e) => (e, None),
            Err(e) => (Envelope::default(), Some(e)),
        };
        let record = Consumed {
            topic: topic.to_owned(),
            partition,
            offset,
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            headers,
            envelope,
        };
        let (admitted, count) = match bad_envelope {
            Some(e) => (Admitted::Settled { ids: None, outcome: Outcome::Undecodable(Undecodable::Envelope(e)) }, None),
            None => self.pipeline.admit(&record, source, now).await?,
        };
        // The record is finished only once its rate-limit count, if any, is
        // durable too.
        let counted = async move {
            if let Some(count) = count {
                count.durable().await;
            }
        };
        let pipeline = self.pipeline.clone();
        let mut finished = false;
        let permit = loop {
            tokio::select! {
                biased;
                permit = pipeline.router.admit(admitted.channel()) => break permit,
                // Records settled in the loop give their permits back only
                // as their acks are polled, so waiting must poll them too.
                Some(ticket) = self.acks.next(), if !self.acks.is_empty() => {
                    self.offsets.finish(ticket);
                    finished = true;
                }
            }
        };
        if finished {
            self.store_offsets();
        }
        match pipeline.resolve_now(&record, admitted) {
            // Most records: only their produce acks are awaited, in the loop.
            Ok(resolved) => {
                let durable = pipeline.publish(&record, resolved);
                self.acks.push(Box::pin(async move {
                    tokio::join!(durable, counted);
                    drop(permit);
                    ticket
                }));
            }
            Err(to_deliver) => {
                // Boxed: a provider call's future is kilobytes, and the
                // runtime would otherwise copy it several times.
                self.tasks.spawn(Box::pin(async move {
                    let resolved = pipeline.deliver(to_deliver).await;
                    tokio::join!(pipeline.publish(&record, resolved), counted);
                    drop(permit);
                    ticket
                }));
            }
        }
        Ok(())
    }

    fn finished(&mut self, joined: Result<Ticket, tokio::task::JoinError>) {
        match joined {
            Ok(ticket) => self.offsets.finish(ticket),
            // Its offset is never stored, so the record is redelivered.
            Err(error) => tracing::error!(message = "A record's task failed.", %error),
        }
    }

    fn apply_rebalances(&mut self) {
        for change in self.consumer.context().take_changes() {
            match change {
                Assignment::Revoked(partitions) => {
                    for (topic, partition) in partitions {
                        self.offsets.revoke(&topic, partition);
                        self.pauses.forget(&topic, partition);
                        self.pipeline.limiter.forget_partition(partition);
                    }
                }
                Assignment::Assigned(partitions) => {
                    // A partition paused under an earlier assignment starts
                    // fresh: resume it so nothing stays paused by accident.
                    let mut list = TopicPartitionList::new();
                    for (topic, partition) in &partitions {
                        list.add_partition(topic, *partition);
                    }
                    if let Err(error) = self.consumer.resume(&list) {
                        tracing::debug!(message = "Resume after assignment failed.", %error);
                    }
                }
            }
        }
    }

    fn store_offsets(&mut self) {
        self.apply_rebalances();
        if let Some(list) = self.offsets.take_storable() {
            if let Err(error) = self.consumer.store_offsets(&list) {
                // Typically a partition revoked meanwhile: its new owner
                // re-reads from the last commit. Duplicates, never loss.
                tracing::debug!(message = "Storing offsets failed.", %error);
            }
        }
    }

    /// Stop fetching, let in-flight records finish within `deadline`, flush
    /// and commit what finished.
    async fn drain(&mut self, deadline: Duration) {
        let in_flight = self.tasks.len() + self.acks.len();
        tracing::info!(message = "Shutting down: finishing in-flight records.", in_flight);
        let drained = tokio::time::timeout(deadline, async {
            while let Some(joined) = self.tasks.join_next().await {
                self.finished(joined);
            }
            while let Some(ticket) = self.acks.next().await {
                self.offsets.finish(ticket);
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                message = "Shutdown deadline passed; unfinished records will be redelivered.",
                unfinished = self.tasks.len() + self.acks.len()
            );
            self.tasks.abort_all();
            self.acks.clear();
        }
        self.store_offsets();
        if let Err(error) = self.pipeline.publisher.producer().flush(deadline) {
            tracing::warn!(message = "Producer flush failed.", %error);
        }
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => {}
            Err(rdkafka::error::KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {}
            Err(error) => tracing::warn!(message = "Final commit failed.", %error),
        }
        tracing::info!(message = "Stopped.", uncommitted = self.offsets.in_flight());
    }
}
