//! Publishing the outcomes of records that need no provider call, on a task
//! of its own. The consume loop judges records, in partition order, and
//! hands each outcome here; this task produces them, in the order given,
//! awaits their acknowledgements, and hands each record's ticket back. So
//! the two halves of a record's work run on two cores.
//!
//! Nothing here is unbounded: every record handed over holds its lane's
//! admission permit until its ticket comes back.

use std::sync::Arc;

use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use super::offsets::Ticket;
use super::Finished;
use crate::pipeline::{Pipeline, Resolved};
use crate::ratelimit::Pending;
use crate::record::Consumed;

/// A record whose outcome is known, to publish.
pub struct Settled {
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
pub fn spawn(pipeline: Arc<Pipeline>) -> (mpsc::UnboundedSender<Vec<Settled>>, mpsc::UnboundedReceiver<Vec<Finished>>, tokio::task::JoinHandle<()>) {
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
                let mut batch = vec![done];
                while let Some(Some(done)) = acks.next().now_or_never() {
                    batch.push(done);
                }
                if finished.send(batch).is_err() {
                    return;
                }
            }
            received = records.recv(), if open => match received {
                Some(batch) => {
                    acks.extend(batch.into_iter().map(|settled| publish(&pipeline, settled)));
                    while let Ok(batch) = records.try_recv() {
                        acks.extend(batch.into_iter().map(|settled| publish(&pipeline, settled)));
                    }
                }
                None => open = false,
            },
            else => return,
        }
    }
}

/// Hands the outcome to the producer now, in the order records came; the
/// future yields the ticket once it is durable.
fn publish(pipeline: &Pipeline, settled: Settled) -> impl std::future::Future<Output = Finished> + Send + 'static {
    let Settled { record, resolved, ticket, permit, counted } = settled;
    let durable = pipeline.publish(&record, resolved);
    let counted = async move {
        if let Some(count) = counted {
            count.durable().await;
        }
    };
    // A combinator, not an async block: a block would hold `durable`
    // twice, and this future is moved for every record.
    futures::future::join(durable, counted).map(move |(published, ())| {
        drop(permit);
        (ticket, published)
    })
}
