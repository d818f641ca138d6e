//! Stage 0: the consume loop. It reads the requests topic and the delay
//! topics with one consumer-group member, hands records to the pipeline,
//! and stores an offset only once the outcome of that record and of every
//! record before it in the partition is durable.
//!
//! The loop never waits on anything unbounded: not on a provider (a lane
//! that stays full pauses its partitions instead), and never without
//! racing shutdown.

mod acker;
mod context;
mod drain;
mod finish;
mod hold;
mod offsets;
mod pauses;
mod rebalance;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use foldhash::HashMap;
use futures::FutureExt;
use prometheus_client::metrics::counter::Counter;
use rdkafka::ClientConfig;
use rdkafka::consumer::StreamConsumer;
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::task::JoinSet;
use tokio::time::Instant;

pub(crate) use context::Assignment;
pub use context::Handover;
pub use context::IngestContext;
use hold::{Held, Hold};
use offsets::{Offsets, Ticket};
use pauses::{Pauses, Rests, Until};

use crate::model::Channel;
use crate::pipeline::outcome::ProduceError;
use crate::pipeline::{AdmitError, Pipeline, ToDeliver};
use crate::pipeline::ratelimit::Pending;
use crate::record::Consumed;
use crate::topics::{Due, Source};

pub(crate) type HeraldConsumer = StreamConsumer<IngestContext>;

/// How long a record waits for room in a full lane before its partition
/// is paused instead. Room usually comes within a provider call; a lane
/// that stays full this long has a provider that hangs, and the loop must
/// go back to polling.
const LANE_WAIT: Duration = Duration::from_secs(1);
/// Records handled per turn of the loop at most, when that many are
/// already fetched: enough to spread a turn's cost, few enough that timers
/// and finished records are seen within a millisecond or so.
const BURST: usize = 256;

/// Why the consume loop stopped.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("cannot judge records: {0}")]
    Admit(#[from] AdmitError),
    #[error(transparent)]
    Produce(#[from] ProduceError),
}

/// A record's ticket once its outcome is durable, with the offset of its
/// status event if it had one; or why it never will be.
type Finished = (Ticket, Result<Option<i64>, ProduceError>);

struct Loop {
    consumer: Arc<HeraldConsumer>,
    pipeline: Arc<Pipeline>,
    /// Records read, per source (the requests topic, then each delay topic).
    consumed: Vec<Counter>,
    offsets: Offsets,
    pauses: Pauses,
    rests: Rests,
    /// Parked records due within the hold window, until their time.
    hold: Hold,
    /// Records whose delivery waits on a provider, each a task that yields
    /// its ticket once the record's outcome is durable.
    tasks: JoinSet<Finished>,
    /// Records settled without waiting (rate limited, invalid, a sender
    /// that answers at once) go to the acker, which publishes them and
    /// sends their tickets back; far cheaper than a task per record.
    settled: mpsc::UnboundedSender<Vec<acker::Settled>>,
    /// Settled records of the current burst, handed over at its end.
    batch: Vec<acker::Settled>,
    acked: mpsc::UnboundedReceiver<Vec<Finished>>,
    acker: tokio::task::JoinHandle<()>,
    /// Records with the acker.
    at_acker: usize,
    /// A produce error no retry can fix, seen while waiting for room; the
    /// loop stops on it at its next turn.
    failed: Option<ProduceError>,
    /// Per partition number: where its status partition ends, as far as
    /// this instance knows (its own statuses acknowledged, or the end the
    /// ledger's restore found). Records are marked with it.
    status_end: HashMap<i32, i64>,
    /// Per partition number, the status offset last stored.
    marks: HashMap<i32, i64>,
    /// Partition numbers whose ledger is being restored, with the restore's
    /// number: their records wait.
    restoring: HashMap<i32, u64>,
    restores: JoinSet<(u64, Vec<(i32, i64)>)>,
    next_restore: u64,
    handover: Arc<Handover>,
    /// The settings of the reader that restores the ledger.
    ledger_reader: ClientConfig,
}

/// What the loop needs besides the consumer and the pipeline.
pub(crate) struct Settings {
    /// How long in-flight work may take once shutdown is asked for.
    pub deadline: Duration,
    pub handover: Arc<Handover>,
    pub ledger_reader: ClientConfig,
    /// Parked records held in memory at most (see `hold`).
    pub hold_records: usize,
}

/// Consumes until `shutdown` completes (or a produce error that no retry
/// can fix), then drains within `deadline`.
pub(crate) async fn consume(
    consumer: HeraldConsumer,
    pipeline: Arc<Pipeline>,
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) -> Result<(), IngestError> {
    let (settled, acked, acker) = acker::spawn(pipeline.clone());
    let topics = pipeline.topics().clone();
    let consumed = topics.inputs().iter().map(|t| pipeline.metrics().consumed(t)).collect();
    let mut l = Loop {
        consumer: Arc::new(consumer),
        consumed,
        pipeline,
        offsets: Offsets::default(),
        pauses: Pauses::default(),
        rests: Rests::default(),
        hold: Hold::new(settings.hold_records),
        tasks: JoinSet::new(),
        settled,
        batch: Vec::new(),
        acked,
        acker,
        at_acker: 0,
        failed: None,
        status_end: HashMap::default(),
        marks: HashMap::default(),
        restoring: HashMap::default(),
        restores: JoinSet::new(),
        next_restore: 0,
        handover: settings.handover,
        ledger_reader: settings.ledger_reader,
    };
    let result = l.run(shutdown).await;
    let until = l.drain(settings.deadline).await;
    // Closing the consumer leaves the group, which waits on the broker.
    let closed = tokio::task::spawn_blocking(move || drop(l));
    if tokio::time::timeout_at(until, closed).await.is_err() {
        tracing::warn!(message = "The consumer did not close within the shutdown deadline.");
    }
    result
}

impl Loop {
    async fn run(&mut self, shutdown: impl Future<Output = ()>) -> Result<(), IngestError> {
        tokio::pin!(shutdown);
        // One timer, moved when the next due pause changes: select!
        // evaluates every branch's future on every turn, used or not.
        let timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(timer);
        let mut timer_at = None;
        // The loop turns at least this often, however idle: `/healthz`
        // tells a turning loop from a stuck one.
        let mut heartbeat = tokio::time::interval(Duration::from_secs(1));
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let health = &self.pipeline.metrics().clone().health;
        loop {
            health.turned();
            if let Some(error) = self.failed.take() {
                return Err(error.into());
            }
            let resume_at = match (self.pauses.next_due(), self.hold.next_due()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if resume_at != timer_at {
                if let Some(at) = resume_at {
                    timer.as_mut().reset(at);
                }
                timer_at = resume_at;
            }
            // The message borrows the consumer; a local handle keeps `self` free.
            let consumer = self.consumer.clone();
            tokio::select! {
                biased;
                () = &mut shutdown => return Ok(()),
                Some(joined) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    self.joined(joined)?;
                    while let Some(joined) = self.tasks.try_join_next() {
                        self.joined(joined)?;
                    }
                    self.progress();
                }
                Some(finished) = self.acked.recv(), if self.at_acker > 0 => {
                    self.acknowledged(finished)?;
                    while let Ok(finished) = self.acked.try_recv() {
                        self.acknowledged(finished)?;
                    }
                    self.progress();
                }
                // An idle instance learns of its assignment here.
                _ = heartbeat.tick() => {
                    self.apply_rebalances();
                    self.rest_idle();
                }
                () = &mut timer, if resume_at.is_some() => {
                    timer_at = None;
                    self.pauses.resume_due(&self.consumer, self.pipeline.topics(), Instant::now());
                    self.release_held().await?;
                }
                Some(restored) = self.restores.join_next(), if !self.restores.is_empty() => {
                    if let Ok((number, ends)) = restored {
                        self.restored(number, ends);
                    }
                }
                message = consumer.recv() => {
                    // The records already fetched are handled in one go,
                    // without a turn of this select for each.
                    let mut next = Some(message);
                    let mut handled = 0;
                    while let Some(message) = next.take() {
                        match message {
                            // Shutdown is raced only by a record that has to
                            // wait: polling it for every record cost more
                            // than a tenth of a record's work. One asked for
                            // meanwhile is seen at the end of the burst.
                            Ok(message) => {
                                let handled = self.handle(&consumer, &message);
                                tokio::pin!(handled);
                                match futures::poll!(&mut handled) {
                                    std::task::Poll::Ready(result) => result?,
                                    std::task::Poll::Pending => tokio::select! {
                                        biased;
                                        () = &mut shutdown => return Ok(()),
                                        result = &mut handled => result?,
                                    },
                                }
                            }
                            Err(KafkaError::PartitionEOF(_)) => {}
                            Err(error) => tracing::warn!(message = "Consumer error.", %error),
                        }
                        handled += 1;
                        if handled < BURST {
                            next = consumer.recv().now_or_never();
                        }
                    }
                    self.hand_over();
                }
            }
        }
    }

    async fn handle(&mut self, consumer: &HeraldConsumer, message: &BorrowedMessage<'_>) -> Result<(), IngestError> {
        self.apply_rebalances();
        let (partition, offset) = (message.partition(), message.offset());
        // A status record: its partition was fetched before the pause in
        // the rebalance took effect. The ledger is read by its own reader.
        let Some(source) = self.pipeline.topics().source(message.topic()) else { return Ok(()) };
        if self.pauses.is_paused(source, partition) && !self.pauses.wake(consumer, self.pipeline.topics(), source, partition) {
            // Fetched before the pause took effect; the seek brings it back.
            return Ok(());
        }
        if source != Source::Requested {
            self.rests.heard((source, partition));
        }
        if self.restoring.contains_key(&partition) {
            self.pause(consumer, (source, partition), offset, Until::Ledger(partition));
            return Ok(());
        }
        let parked = (source != Source::Requested).then(|| self.pipeline.seal());
        let record = Consumed::read(message, parked);
        self.consumed[self.pipeline.topics().index(source)].inc();
        let now = self.pipeline.now();
        let due = self.pipeline.topics().due(source, record.envelope.not_before, record.appended, now);
        if let Due::Wait { release } = due {
            let wait = (release - now).to_std().unwrap_or_default();
            // A tier's records may be due up to the hold window apart, and
            // are held that far ahead. A rung's come due in the order they
            // were written, and are held only a little ahead: pausing on
            // each of a burst in turn made the last of it seconds late.
            let hold = match source {
                Source::Wait(_) => self.pipeline.topics().hold,
                Source::Requested | Source::Retry(_) => self.pipeline.topics().soon(),
            };
            if wait > hold {
                // Nothing behind it is due before the window reaches it.
                self.pause(consumer, (source, partition), offset, Until::Due(Instant::now() + (wait - hold)));
            } else if self.hold.has_room() {
                let ticket = self.ticket(source, partition, offset);
                self.hold.add(Instant::now() + wait, Held { record, source, ticket });
                self.pipeline.metrics().held(self.hold.len());
            } else {
                self.pause(consumer, (source, partition), offset, Until::Hold);
            }
            return Ok(());
        }
        let (admitted, count) = self.pipeline.admit(&record, due, now).await?;
        if let crate::pipeline::Admitted::Soon(soon) = &admitted {
            if self.hold.has_room() {
                let at = Instant::now() + (soon.until - now).to_std().unwrap_or_default();
                let ticket = self.ticket(source, partition, offset);
                self.hold.add(at, Held { record, source, ticket });
                self.pipeline.metrics().held(self.hold.len());
                return Ok(());
            }
        }
        let lane = admitted.channel();
        let Some(permit) = self.room(lane).await else {
            // Its rate-limit count, if any, is kept: the record comes back,
            // and finds its event id already counted.
            self.pause(consumer, (source, partition), offset, Until::Room(lane));
            return Ok(());
        };
        let ticket = self.ticket(source, partition, offset);
        self.go(record, admitted, count, ticket, permit, now);
        Ok(())
    }

    /// A record's place in its partition's offsets, taken in read order.
    fn ticket(&mut self, source: Source, partition: i32, offset: i64) -> Ticket {
        let mark = self.status_end.get(&partition).copied().unwrap_or(0);
        self.offsets.register(source, partition, offset, mark)
    }

    /// An admitted record, with room in its lane: resolved now, or sent
    /// to its provider.
    fn go(&mut self, record: Consumed, admitted: crate::pipeline::Admitted, count: Option<Pending>, ticket: Ticket, permit: OwnedSemaphorePermit, now: chrono::DateTime<chrono::Utc>) {
        let pipeline = self.pipeline.clone();
        match pipeline.resolve_now(&record, admitted, now) {
            // Most records: published, and their acks awaited, by the acker.
            Ok(resolved) => {
                self.batch.push(acker::Settled { record, resolved, ticket, permit, counted: count });
            }
            Err(to_deliver) => self.deliver(record, to_deliver, ticket, permit, count),
        }
    }

    /// Works on the held records whose time has come. One whose lane has
    /// no room now is held a little longer: its partition has been read
    /// past it, so it cannot be paused on.
    async fn release_held(&mut self) -> Result<(), IngestError> {
        const AGAIN: Duration = Duration::from_millis(20);
        for Held { record, source, ticket } in self.hold.take_due(Instant::now()) {
            let now = self.pipeline.now();
            // Held until its time: due now, or at most a timer's slack
            // ahead, which `admit` lets through as due.
            let due = self.pipeline.topics().due(source, record.envelope.not_before, record.appended, now);
            let (admitted, count) = self.pipeline.admit(&record, due, now).await?;
            if let crate::pipeline::Admitted::Soon(soon) = &admitted {
                // Its time is not quite here, by the wall clock.
                let at = Instant::now() + (soon.until - now).to_std().unwrap_or_default();
                self.hold.add(at, Held { record, source, ticket });
                continue;
            }
            match self.pipeline.lane_room_now(admitted.channel()) {
                Some(permit) => self.go(record, admitted, count, ticket, permit, now),
                None => self.hold.add(Instant::now() + AGAIN, Held { record, source, ticket }),
            }
        }
        self.hand_over();
        self.pipeline.metrics().held(self.hold.len());
        if self.hold.has_room() {
            self.pauses.resume_hold(&self.consumer, self.pipeline.topics());
        }
        Ok(())
    }

    /// Calls the provider on a task of its own, then publishes. The slot is
    /// queued for here, in the loop, so in partition order (see
    /// `Router::queue_for_slot`).
    fn deliver(&mut self, record: Consumed, to_deliver: ToDeliver, ticket: Ticket, permit: OwnedSemaphorePermit, count: Option<Pending>) {
        let pipeline = self.pipeline.clone();
        // The record is finished only once its rate-limit count, if any, is
        // durable too.
        let counted = async move {
            if let Some(count) = count {
                count.durable().await;
            }
        };
        let (handover, generation) = (self.handover.clone(), self.handover.generation(record.partition));
        let slot = pipeline.queue_for_slot(to_deliver.channel());
        // Boxed: a provider call's future is kilobytes, and the runtime
        // would otherwise copy it several times.
        self.tasks.spawn(Box::pin(async move {
            let slot = slot.slot().await;
            // Revoked meanwhile: the partition's next owner sends it.
            let Some(calling) = handover.begin(to_deliver.partition(), generation) else {
                return (ticket, Ok(None));
            };
            let resolved = pipeline.deliver(to_deliver).await;
            let unconfirmed = slot.answered();
            let published = pipeline.publish(&record, resolved);
            // The outcome is with the producer: a revoke may go on.
            drop(calling);
            let published = published.await;
            drop(unconfirmed);
            counted.await;
            drop(permit);
            (ticket, published)
        }));
    }

    /// Room for one record in `lane`, waiting at most [`LANE_WAIT`]; `None`
    /// when the lane is already known to be full, or stays full.
    async fn room(&mut self, lane: Option<Channel>) -> Option<OwnedSemaphorePermit> {
        if self.pauses.waiting_for(lane) {
            return None;
        }
        if let Some(permit) = self.pipeline.lane_room_now(lane) {
            return Some(permit);
        }
        // The records waiting to be handed over hold permits too.
        self.hand_over();
        let pipeline = self.pipeline.clone();
        let admit = pipeline.lane_room(lane);
        let give_up = tokio::time::sleep(LANE_WAIT);
        tokio::pin!(admit, give_up);
        loop {
            tokio::select! {
                biased;
                permit = &mut admit => return Some(permit),
                // Tickets keep coming back meanwhile; their offsets move on.
                Some(finished) = self.acked.recv(), if self.at_acker > 0 => {
                    if let Err(error) = self.acknowledged(finished) {
                        self.failed = Some(error);
                    }
                }
                () = &mut give_up => return None,
            }
        }
    }

    fn pause(&mut self, consumer: &HeraldConsumer, at: (Source, i32), offset: i64, until: Until) {
        if let Err(error) = self.pauses.pause(consumer, self.pipeline.topics(), at, offset, until) {
            tracing::warn!(message = "Pausing a partition failed.", topic = self.pipeline.topics().name(at.0), partition = at.1, %error);
        }
        if let Until::Room(lane) = until {
            tracing::debug!(message = "Lane full; partition paused until it has room.", lane = lane.map(Channel::symbol), partition = at.1);
        }
    }
}
