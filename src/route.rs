//! Stage 3: each channel is a lane with its own sender and its own bounds,
//! so a slow provider fills its own lane before it slows anyone else. Each
//! provider has its own guard (`deliver::Guarded`).

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::deliver::{Delivered, DeliveryError, Payload, Prepared, Sender, SmsRules};
use crate::model::{Channel, Request};

pub struct Lane {
    sender: Sender,
    /// Records admitted to the lane (waiting or in flight). When it is
    /// full, the consume loop waits: that is the backpressure that keeps
    /// memory bounded whatever the backlog.
    admission: Arc<Semaphore>,
    /// Provider requests in flight at once.
    concurrency: Semaphore,
}

impl Lane {
    pub fn new(sender: Sender, queue: usize, concurrency: usize) -> Self {
        Lane { sender, admission: Arc::new(Semaphore::new(queue)), concurrency: Semaphore::new(concurrency) }
    }

    /// Validates the request and, when it needs no provider call, answers.
    pub fn prepare(&self, channel: Channel, request: &Request, sms: &SmsRules) -> Prepared {
        self.sender.prepare(channel, request, sms)
    }

    /// Sends a payload this lane's [`Lane::prepare`] returned, within the
    /// lane's concurrency.
    pub async fn call(&self, payload: &Payload, request: &Request, attempt: u32) -> Result<Delivered, DeliveryError> {
        let _slot = self.concurrency.acquire().await.expect("lane semaphores are never closed");
        self.sender.send(payload, request, attempt).await
    }
}

pub struct Router {
    lanes: [Lane; Channel::ALL.len()],
    /// Bounds records whose outcome needs no delivery (invalid, rate
    /// limited, scheduled) while their outcome is published.
    settled: Arc<Semaphore>,
}

impl Router {
    pub fn new(lane_for: impl FnMut(Channel) -> Lane, settled: usize) -> Self {
        Router { lanes: Channel::ALL.map(lane_for), settled: Arc::new(Semaphore::new(settled)) }
    }

    pub fn lane(&self, channel: Channel) -> &Lane {
        &self.lanes[channel.index()]
    }

    /// Waits for room for one record: in `channel`'s lane, or among the
    /// settled ones when `None`.
    pub async fn admit(&self, channel: Option<Channel>) -> OwnedSemaphorePermit {
        let semaphore = match channel {
            Some(c) => &self.lane(c).admission,
            None => &self.settled,
        };
        semaphore.clone().acquire_owned().await.expect("lane semaphores are never closed")
    }
}
