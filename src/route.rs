//! Stage 3: each channel is a lane with its own sender and its own bounds,
//! so a slow provider fills its own lane before it slows anyone else. Each
//! provider has its own guard (`deliver::Guarded`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures::FutureExt;
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};

use crate::deliver::{Attempt, Calls, Delivered, DeliveryError, Payload, Sender, SmsRules};
use crate::model::{Channel, InvalidReason, Request};

pub struct Lane {
    sender: Sender,
    /// Records admitted to the lane (waiting or in flight). When it is
    /// full, the consume loop waits: that is the backpressure that keeps
    /// memory bounded whatever the backlog.
    admission: Arc<Semaphore>,
    capacity: usize,
    /// Provider calls whose outcome is not yet durable. A slot is held from
    /// before the call until its status is acknowledged, so a crash can
    /// repeat at most this many sends.
    concurrency: Arc<Semaphore>,
}

impl Lane {
    pub fn new(sender: Sender, queue: usize, concurrency: usize) -> Self {
        Lane {
            sender,
            admission: Arc::new(Semaphore::new(queue)),
            capacity: queue,
            concurrency: Arc::new(Semaphore::new(concurrency)),
        }
    }

    /// The payload to send for `request`, or why it never can be.
    pub fn validate(&self, channel: Channel, request: &Request, sms: &SmsRules) -> Result<Payload, InvalidReason> {
        self.sender.validate(channel, request, sms)
    }

    /// The answer of a lane that calls nobody (a dry run).
    pub fn answer_now(&self) -> Option<Delivered> {
        self.sender.answer_now()
    }

    /// Joins the queue for a provider slot now. Slots are given in the
    /// order records joined, which is their order in the partition, so a
    /// partition's oldest record is not left behind later ones (and with it
    /// the offsets that can be committed).
    pub fn queue_for_slot(&self) -> SlotWait {
        let mut acquire: Acquire = Box::pin(self.concurrency.clone().acquire_owned());
        // Polling once takes a free slot, or joins the semaphore's queue.
        match (&mut acquire).now_or_never() {
            Some(result) => SlotWait::Ready(result),
            None => SlotWait::Queued(acquire),
        }
    }

    /// Sends a payload this lane's [`Lane::validate`] returned; the caller
    /// holds a [`Lane::slot`].
    pub async fn call(&self, payload: &Payload, request: &Request, attempt: Attempt) -> Result<Delivered, DeliveryError> {
        self.sender.send(payload, request, attempt).await
    }
}

type Acquire = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

/// A place in a lane's queue for a provider slot.
pub enum SlotWait {
    Ready(Result<OwnedSemaphorePermit, AcquireError>),
    Queued(Acquire),
}

impl SlotWait {
    /// Waits for the slot. Once calls are stopped (shutdown's deadline), it
    /// never completes: the task waiting is being aborted, and must not
    /// call anyone.
    pub async fn slot(self) -> OwnedSemaphorePermit {
        let result = match self {
            SlotWait::Ready(result) => result,
            SlotWait::Queued(acquire) => acquire.await,
        };
        match result {
            Ok(slot) => slot,
            Err(_closed) => std::future::pending().await,
        }
    }
}

pub struct Router {
    lanes: [Lane; Channel::ALL.len()],
    /// Bounds records whose outcome needs no delivery (invalid, rate
    /// limited, scheduled) while their outcome is published.
    settled: Arc<Semaphore>,
    settled_capacity: usize,
    calls: Calls,
}

impl Router {
    pub fn new(lane_for: impl FnMut(Channel) -> Lane, settled: usize, calls: Calls) -> Self {
        Router {
            lanes: Channel::ALL.map(lane_for),
            settled: Arc::new(Semaphore::new(settled)),
            settled_capacity: settled,
            calls,
        }
    }

    pub fn lane(&self, channel: Channel) -> &Lane {
        &self.lanes[channel.index()]
    }

    fn admission(&self, channel: Option<Channel>) -> (&Arc<Semaphore>, usize) {
        match channel {
            Some(c) => (&self.lane(c).admission, self.lane(c).capacity),
            None => (&self.settled, self.settled_capacity),
        }
    }

    /// Waits for room for one record: in `channel`'s lane, or among the
    /// settled ones when `None`.
    pub async fn admit(&self, channel: Option<Channel>) -> OwnedSemaphorePermit {
        let (semaphore, _) = self.admission(channel);
        semaphore.clone().acquire_owned().await.expect("admission semaphores are never closed")
    }

    /// Room for one record now, if there is some.
    pub fn try_admit(&self, channel: Option<Channel>) -> Option<OwnedSemaphorePermit> {
        let (semaphore, _) = self.admission(channel);
        semaphore.clone().try_acquire_owned().ok()
    }

    /// Whether at least a quarter of the lane is free again.
    pub fn has_room(&self, channel: Option<Channel>) -> bool {
        let (semaphore, capacity) = self.admission(channel);
        semaphore.available_permits() * 4 >= capacity.max(1)
    }

    /// Shutdown's deadline has passed: no provider call may start from now
    /// on, even in a slot that an aborted call frees.
    pub fn stop_calls(&self) {
        self.calls.stop();
        for lane in &self.lanes {
            lane.concurrency.close();
        }
    }
}
