//! Publishing the outcomes of records that need no provider call, on a task
//! of its own. The consume loop judges records, in partition order, and
//! hands each outcome here; this task produces them, in the order given,
//! awaits their acknowledgements, and hands each record's ticket back. So
//! the two halves of a record's work run on two cores.
//!
//! Nothing here is unbounded: every record handed over holds its lane's
//! admission permit until its ticket comes back.

use std::sync::Arc;

use futures::future::Either;
use futures::FutureExt;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use super::Finished;
use super::offsets::Ticket;
use crate::pipeline::ratelimit::Pending;
use crate::pipeline::{Pipeline, Resolved};
use crate::record::Consumed;

/// A record whose outcome is known, to publish.
pub(super) struct Settled {
    pub record: Consumed,
    pub resolved: Resolved,
    pub ticket: Ticket,
    /// Its lane's admission, given back once the outcome is durable.
    pub permit: OwnedSemaphorePermit,
    /// Its rate-limit count, which must be durable too.
    pub counted: Option<Pending>,
}

/// Starts the task; returns where to hand records, and where their
/// tickets come back. Both ways go in batches: a hand-over wakes the other
/// thread, and at hundreds of thousands of records a second, waking it
/// for each one would cost more than the work it hands over.
pub(super) fn spawn(pipeline: Arc<Pipeline>) -> (mpsc::UnboundedSender<Vec<Settled>>, mpsc::UnboundedReceiver<Vec<Finished>>, tokio::task::JoinHandle<()>) {
    let (settled, records) = mpsc::unbounded_channel();
    let (finished, tickets) = mpsc::unbounded_channel();
    (settled, tickets, tokio::spawn(run(pipeline, records, finished)))
}

async fn run(pipeline: Arc<Pipeline>, mut records: mpsc::UnboundedReceiver<Vec<Settled>>, finished: mpsc::UnboundedSender<Vec<Finished>>) {
    let mut acks = FuturesUnordered::new();
    let mut open = true;
    loop {
        tokio::select! {
            biased;
            Some(done) = acks.next(), if !acks.is_empty() => {
                let mut done: Vec<Finished> = done;
                while let Some(Some(more)) = acks.next().now_or_never() {
                    done.extend(more);
                }
                if finished.send(done).is_err() {
                    return;
                }
            }
            received = records.recv(), if open => match received {
                Some(batch) => {
                    acks.push(durable(&pipeline, batch));
                    while let Ok(batch) = records.try_recv() {
                        acks.push(durable(&pipeline, batch));
                    }
                }
                None => open = false,
            },
            else => return,
        }
    }
}

/// Publishes a batch, and yields its tickets once all of it is durable.
/// One future a batch, not one a record: the batch was produced at once,
/// so its acknowledgements come together, and awaiting them in turn
/// mostly finds each one in already; a future of its own for each record,
/// woken and polled apart, cost a fifth of a record's work. A record
/// whose produce is retried holds back the rest of its batch (at most a
/// burst of the loop), which only delays storing their offsets.
fn durable(pipeline: &Pipeline, batch: Vec<Settled>) -> impl std::future::Future<Output = Vec<Finished>> + Send + 'static {
    let pending: Vec<_> = batch.into_iter().map(|settled| publish(pipeline, settled)).collect();
    async move {
        let mut finished = Vec::with_capacity(pending.len());
        for record in pending {
            finished.push(record.await);
        }
        finished
    }
}

/// Hands the outcome to the producer now, in the order records came; the
/// future yields the ticket once it is durable.
fn publish(pipeline: &Pipeline, settled: Settled) -> impl std::future::Future<Output = Finished> + Send + 'static {
    let Settled { record, resolved, ticket, permit, counted } = settled;
    let durable = pipeline.publish(&record, resolved);
    // Combinators, not an async block: a block would hold `durable` twice,
    // and this future is moved for every record. Without a rate-limit
    // write to wait for (an in-memory store), there is nothing to join.
    match counted {
        None => Either::Left(durable.map(move |published| {
            drop(permit);
            (ticket, published)
        })),
        Some(count) => Either::Right(futures::future::join(durable, count.durable()).map(move |(published, ())| {
            drop(permit);
            (ticket, published)
        })),
    }
}
